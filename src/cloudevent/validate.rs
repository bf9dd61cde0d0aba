//! The CloudEvents v1.0 (and v0.3) rules an event must satisfy to be accepted.

use super::{AttributeType, CONTEXT_ATTRIBUTES, Event, SPEC_VERSIONS};

/// Why an event is not a valid CloudEvent. The message names the attribute.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("missing required attribute '{0}'")]
    Missing(&'static str),
    #[error("attribute '{0}' must not be empty")]
    Empty(String),
    #[error("attribute 'specversion': unknown version '{0}' (accepted: 1.0, 0.3)")]
    UnknownSpecVersion(String),
    #[error("attribute 'time': '{value}' is not an RFC 3339 timestamp ({reason})")]
    BadTime { value: String, reason: String },
    #[error(
        "attribute name '{0}' is invalid: extension names are 1 to 20 characters of a-z and 0-9"
    )]
    BadName(String),
    #[error("attribute '{0}' is set twice")]
    Duplicate(String),
    #[error(
        "attribute 'datacontenttype': '{0}' is not a media type: it must be printable ASCII, as it travels in the content-type header"
    )]
    BadContentType(String),
    #[error("attribute '{0}' must be a String (in JSON, a string)")]
    NotAString(String),
    #[error("attribute '{name}': '{value}' is not {expected}")]
    BadTypedValue {
        name: String,
        value: String,
        expected: &'static str,
    },
}

const REQUIRED: [&str; 4] = ["specversion", "id", "source", "type"];

pub(super) fn validate(event: &Event) -> Result<(), ValidationError> {
    for name in REQUIRED {
        match event.attribute(name) {
            None => return Err(ValidationError::Missing(name)),
            Some("") => return Err(ValidationError::Empty(name.to_owned())),
            Some(_) => {}
        }
    }
    let version = event.specversion();
    if !SPEC_VERSIONS.contains(&version) {
        return Err(ValidationError::UnknownSpecVersion(version.to_owned()));
    }
    for (i, attribute) in event.attributes.iter().enumerate() {
        let name = &attribute.name;
        if !is_valid_name(name) {
            return Err(ValidationError::BadName(name.clone()));
        }
        if event.attributes[..i].iter().any(|a| a.name == *name) {
            return Err(ValidationError::Duplicate(name.clone()));
        }
        let context = CONTEXT_ATTRIBUTES.contains(&name.as_str());
        // Optional context attributes, when present, must be non-empty (spec 1.0).
        if attribute.value.is_empty() && context {
            return Err(ValidationError::Empty(name.clone()));
        }
        check_type(name, &attribute.value, attribute.ty, context)?;
    }
    // Binary mode sends it as the content-type header, which cannot carry
    // other bytes: without this check the header was left out and the
    // event delivered without its content type (found by the property
    // tests).
    if let Some(content_type) = event.attribute("datacontenttype")
        && !content_type
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        return Err(ValidationError::BadContentType(content_type.to_owned()));
    }
    if let Some(time) = event.attribute("time") {
        chrono::DateTime::parse_from_rfc3339(time).map_err(|e| ValidationError::BadTime {
            value: time.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

/// A typed value's text must be the type's canonical form, which is what
/// binary mode sends and CESQL reads; the context attributes the spec defines
/// are all Strings (or URIs and Timestamps, which formats carry as strings).
fn check_type(
    name: &str,
    value: &str,
    ty: AttributeType,
    context: bool,
) -> Result<(), ValidationError> {
    let bad = |expected| ValidationError::BadTypedValue {
        name: name.to_owned(),
        value: value.to_owned(),
        expected,
    };
    match ty {
        AttributeType::String => Ok(()),
        _ if context => Err(ValidationError::NotAString(name.to_owned())),
        AttributeType::Boolean if value == "true" || value == "false" => Ok(()),
        AttributeType::Boolean => Err(bad("a Boolean (true or false)")),
        AttributeType::Integer if value.parse::<i32>().is_ok() && !value.starts_with('+') => Ok(()),
        AttributeType::Integer => Err(bad(
            "an Integer (a whole number from -2147483648 to 2147483647)",
        )),
    }
}

/// Attribute names: lower-case ASCII letters and digits, at most 20 of them.
pub(crate) fn is_valid_name(name: &str) -> bool {
    (1..=20).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = [
            ("specversion", "1.0"),
            ("id", "1"),
            ("source", "/s"),
            ("type", "t"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        for (n, val) in extra {
            match v.iter_mut().find(|(k, _)| k == n) {
                Some(slot) => slot.1 = val.to_string(),
                None => v.push((n.to_string(), val.to_string())),
            }
        }
        v
    }

    fn err(extra: &[(&str, &str)]) -> String {
        Event::new(attrs(extra), None)
            .expect_err("should be invalid")
            .to_string()
    }

    #[test]
    fn minimal_event_is_valid() {
        assert!(Event::new(attrs(&[]), None).is_ok());
    }

    #[test]
    fn each_required_attribute_is_named_when_missing() {
        for name in REQUIRED {
            let mut a = attrs(&[]);
            a.retain(|(n, _)| n != name);
            let e = Event::new(a, None).expect_err("missing");
            assert_eq!(
                e.to_string(),
                format!("missing required attribute '{name}'")
            );
        }
    }

    #[test]
    fn empty_required_attribute_is_rejected() {
        assert_eq!(err(&[("id", "")]), "attribute 'id' must not be empty");
        assert_eq!(
            err(&[("subject", "")]),
            "attribute 'subject' must not be empty"
        );
    }

    #[test]
    fn unknown_specversion_is_rejected() {
        assert!(err(&[("specversion", "2.0")]).contains("unknown version '2.0'"));
        assert!(Event::new(attrs(&[("specversion", "0.3")]), None).is_ok());
    }

    #[test]
    fn time_must_be_rfc3339() {
        assert!(err(&[("time", "yesterday")]).starts_with("attribute 'time': 'yesterday'"));
        assert!(Event::new(attrs(&[("time", "2026-11-21T10:00:00.5Z")]), None).is_ok());
        assert!(Event::new(attrs(&[("time", "2026-11-21T10:00:00+09:00")]), None).is_ok());
    }

    #[test]
    fn extension_names_are_checked() {
        assert!(err(&[("Bad", "x")]).contains("'Bad' is invalid"));
        assert!(err(&[("a-b", "x")]).contains("'a-b' is invalid"));
        assert!(err(&[("abcdefghijklmnopqrstu", "x")]).contains("is invalid"));
        assert!(Event::new(attrs(&[("abcdefghijklmnopqrst", "x")]), None).is_ok());
    }

    #[test]
    fn duplicate_attribute_is_rejected() {
        let mut a = attrs(&[]);
        a.push(("id".into(), "2".into()));
        assert_eq!(
            Event::new(a, None).expect_err("dup").to_string(),
            "attribute 'id' is set twice"
        );
    }
}
