//! What an unknown field probably meant, for the mistakes that Knative's
//! own docs make: such a manifest is refused (Knative refuses it too), and
//! the refusal says where the field belongs.
//!
//! The hints are recognised by the refused field's name and by the fields
//! serde expected in its place, which identify the type it was written in.

/// One common mistake: `fields` written directly in a type whose expected
/// fields include all of `parent`, where they belong one level down, under
/// `under`.
struct Mistake {
    fields: &'static [&'static str],
    parent: &'static [&'static str],
    /// What the parent is, for the message.
    parent_name: &'static str,
    under: &'static str,
}

const MISTAKES: &[Mistake] = &[
    // `sink: {apiVersion, kind, name}` for `sink: {ref: {...}}`.
    Mistake {
        fields: &["apiVersion", "kind", "name", "namespace", "address"],
        parent: &["ref", "uri"],
        parent_name: "a Destination",
        under: "ref",
    },
    // `template: {containers}` for `template: {spec: {containers}}`.
    Mistake {
        fields: &[
            "containers",
            "containerConcurrency",
            "timeoutSeconds",
            "serviceAccountName",
            "volumes",
            "imagePullSecrets",
        ],
        parent: &["metadata", "spec"],
        parent_name: "a revision template",
        under: "spec",
    },
];

/// The refusal of the unknown field at `path` (`spec.sink.apiVersion`),
/// when it is a known mistake; `expected` is serde's list of the fields
/// the type has.
pub(crate) fn unknown_field(path: &str, expected: &[&str]) -> Option<String> {
    let (parent_path, field) = match path.rsplit_once('.') {
        Some((parent, field)) => (Some(parent), field),
        None => (None, path),
    };
    let mistake = MISTAKES
        .iter()
        .find(|m| m.fields.contains(&field) && m.parent.iter().all(|p| expected.contains(p)))?;
    let meant = match parent_path {
        Some(parent) => format!("{parent}.{}.{field}", mistake.under),
        None => format!("{}.{field}", mistake.under),
    };
    Some(format!(
        "not a field of {}; did you mean {meant}?",
        mistake.parent_name
    ))
}

/// The field names in serde's "expected one of `a`, `b`" (or "expected
/// `a` or `b`") text.
pub(crate) fn expected_fields(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_fields_belong_under_ref() {
        let expected = expected_fields(", expected one of `ref`, `uri`, `CACerts`, `audience`");
        assert_eq!(expected, ["ref", "uri", "CACerts", "audience"]);
        assert_eq!(
            unknown_field("spec.sink.apiVersion", &expected).as_deref(),
            Some("not a field of a Destination; did you mean spec.sink.ref.apiVersion?")
        );
        assert_eq!(unknown_field("spec.sink.urii", &expected), None);
    }

    #[test]
    fn revision_fields_belong_under_the_template_spec() {
        let expected = expected_fields(", expected `metadata` or `spec`");
        assert_eq!(
            unknown_field("spec.template.containers", &expected).as_deref(),
            Some("not a field of a revision template; did you mean spec.template.spec.containers?")
        );
        // The same name elsewhere is only unknown.
        assert_eq!(
            unknown_field("spec.containers", &["template", "traffic"]),
            None
        );
    }
}
