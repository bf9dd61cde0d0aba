//! Property tests of the manifest loader: any text, and the shipped examples
//! mutated line by line and byte by byte, load or give errors that say where
//! and why, never a panic; YAML and the API server's JSON give the same
//! objects; hostile YAML (deep nesting, alias bombs) is refused quickly.

use proptest::prelude::*;

use super::{Manifests, documents, parse_document, parse_value};
use crate::api::broker::BrokerClass;
use crate::properties::{CI_CASES, allocation_bound, config, mutate, peak_allocation, text};

/// The example manifests shipped in `examples/`, as users start from them.
const EXAMPLES: &[&str] = &[
    include_str!("../../../examples/containersource/broker.yaml"),
    include_str!("../../../examples/containersource/display.yaml"),
    include_str!("../../../examples/containersource/source.yaml"),
    include_str!("../../../examples/flows/parallel.yaml"),
    include_str!("../../../examples/flows/sequence.yaml"),
    include_str!("../../../examples/flows/services.yaml"),
    include_str!("../../../examples/jobsink/jobsink.yaml"),
    include_str!("../../../examples/jobsink/ping.yaml"),
    include_str!("../../../examples/kafka/broker.yaml"),
    include_str!("../../../examples/kafka/source.yaml"),
    include_str!("../../../examples/rabbitmq/broker.yaml"),
    include_str!("../../../examples/rabbitmq/source.yaml"),
    include_str!("../../../examples/rabbitmq/triggers.yaml"),
];

fn example() -> impl Strategy<Value = &'static str> {
    prop::sample::select(EXAMPLES)
}

/// A line-level edit: delete, duplicate, swap with the next, indent or
/// dedent, or replace by arbitrary text.
#[derive(Debug, Clone)]
enum LineEdit {
    Delete,
    Duplicate,
    Swap,
    Indent,
    Dedent,
    Replace(String),
}

fn line_edit() -> impl Strategy<Value = (usize, LineEdit)> {
    let edit = prop_oneof![
        Just(LineEdit::Delete),
        Just(LineEdit::Duplicate),
        Just(LineEdit::Swap),
        Just(LineEdit::Indent),
        Just(LineEdit::Dedent),
        text(16).prop_map(LineEdit::Replace),
        prop::sample::select(
            &[
                "---",
                "- ",
                ": ",
                "&a [*a, *a]",
                "*a",
                "!!binary x",
                "{",
                "[",
                "? ",
                "|",
                "'",
                "spec: null",
                "metadata: []",
                "name: 1",
                "uri: ':'",
            ][..]
        )
        .prop_map(|s| LineEdit::Replace(s.to_owned())),
    ];
    (any::<usize>(), edit)
}

fn edit_lines(text: &str, edits: &[(usize, LineEdit)]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for (at, edit) in edits {
        if lines.is_empty() {
            break;
        }
        let at = at % lines.len();
        match edit {
            LineEdit::Delete => {
                lines.remove(at);
            }
            LineEdit::Duplicate => lines.insert(at, lines[at].clone()),
            LineEdit::Swap if at + 1 < lines.len() => lines.swap(at, at + 1),
            LineEdit::Swap => {}
            LineEdit::Indent => lines[at].insert_str(0, "  "),
            LineEdit::Dedent => lines[at] = lines[at].trim_start().to_owned(),
            LineEdit::Replace(with) => lines[at].clone_from(with),
        }
    }
    lines.join("\n")
}

/// A manifest text: arbitrary, or an example edited by lines or bytes.
fn manifest_text() -> impl Strategy<Value = String> {
    prop_oneof![
        text(128),
        (example(), prop::collection::vec(line_edit(), 1..4))
            .prop_map(|(e, edits)| edit_lines(e, &edits)),
        (
            example(),
            prop::collection::vec(any::<(usize, u8, u8)>(), 1..4)
        )
            .prop_map(|(e, edits)| String::from_utf8_lossy(&mutate(
                e.as_bytes().to_vec(),
                &edits
            ))
            .into_owned()),
    ]
}

/// Loads `text` and checks what came out: each error says where (a line
/// inside the text) and why.
fn load_and_check(text: &str) -> Result<Manifests, TestCaseError> {
    let manifests = Manifests::from_text(text, BrokerClass::Log);
    let lines = text.lines().count() + 1;
    for error in &manifests.errors {
        prop_assert!(!error.reason.is_empty(), "an error without a reason");
        prop_assert!(
            (1..=lines + 1).contains(&error.origin.line),
            "error at line {} of a {lines}-line text: {error}",
            error.origin.line
        );
        if let Some(field) = &error.field {
            prop_assert!(!field.is_empty());
        }
    }
    Ok(manifests)
}

proptest! {
    #![proptest_config(config(CI_CASES))]

    /// Any text, and damaged examples: objects, or errors that say where and
    /// why; allocations bounded by the text's size.
    #[test]
    fn any_text_loads_or_says_where_and_why(text in manifest_text()) {
        let len = text.len();
        let (result, peak) = peak_allocation(|| load_and_check(&text));
        result?;
        prop_assert!(peak <= allocation_bound(len), "held {peak} bytes for {len} bytes of YAML");
    }

    /// Each document of an example, as the API server would send it (JSON),
    /// gives the same object as its YAML; the JSON damaged gives an object
    /// or an error naming the object.
    #[test]
    fn json_from_the_api_server_reads_as_its_yaml(
        example in example(),
        which in any::<prop::sample::Index>(),
        edits in prop::collection::vec(any::<(usize, u8, u8)>(), 0..4),
    ) {
        let docs: Vec<String> = documents(example).into_iter().map(|(_, d)| d).collect();
        let doc = which.get(&docs);
        let Ok(value) = serde_saphyr::from_str::<serde_json::Value>(doc) else {
            return Err(TestCaseError::fail("an example is not YAML"));
        };
        if value.is_null() {
            return Ok(());
        }
        let json = serde_json::to_vec(&value).expect("serialises");
        if edits.is_empty() {
            let from_yaml = parse_document(doc, BrokerClass::Log).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let from_json = parse_value(value, BrokerClass::Log).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(from_yaml, Some(from_json));
            return Ok(());
        }
        let damaged = mutate(json, &edits);
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&damaged)
            && let Err(error) = parse_value(value, BrokerClass::Log)
        {
            prop_assert!(!error.reason.is_empty());
        }
    }
}

/// The examples load without an error (the mutations start from valid
/// manifests).
#[test]
fn baseline_the_examples_load() {
    for example in EXAMPLES {
        let manifests = Manifests::from_text(example, BrokerClass::Log);
        assert!(manifests.errors.is_empty(), "{:?}", manifests.errors);
        assert!(!manifests.objects.is_empty());
    }
}

/// Nesting ten thousand levels deep is an error, not a stack overflow.
#[test]
fn hostile_deeply_nested_yaml_is_refused() {
    for deep in [
        format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
        format!("{}{}", "{a: ".repeat(10_000), "}".repeat(10_000)),
        "- ".repeat(10_000),
    ] {
        let manifests = Manifests::from_text(&deep, BrokerClass::Log);
        assert_eq!(manifests.errors.len(), 1, "{:?}", manifests.objects);
    }
}

/// An alias bomb ("billion laughs"): each level refers to the one before
/// nine times; expanded it would be 9^9 strings. It must be refused (or
/// loaded) without expanding it.
#[test]
fn hostile_an_alias_bomb_is_refused_without_expanding_it() {
    let mut bomb = String::from("a0: &a0 [lol]\n");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 9].join(", ");
        bomb.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    let started = std::time::Instant::now();
    let (manifests, peak) = peak_allocation(|| Manifests::from_text(&bomb, BrokerClass::Log));
    assert_eq!(manifests.errors.len(), 1);
    // With the YAML parser's default budget it held 85 MB before refusing
    // the document; with the loader's (100,000 events) about 14 MB.
    assert!(peak < 32 << 20, "held {peak} bytes");
    assert!(
        started.elapsed().as_secs() < 5,
        "took {:?}",
        started.elapsed()
    );
}
