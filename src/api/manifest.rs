//! Knative objects from YAML documents or API server objects: each one
//! parsed on its own into a kind of the registry ([`super::kinds`]), so one
//! bad document refuses one object and the rest still load. Errors name the
//! origin, the object (kind namespace/name) and the field. Reading files and
//! folders is the control plane's (`control::manifest`).

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use super::ObjectKey;
use super::broker::BrokerClass;
use super::kinds::{self, KINDS, LoadContext, Resource};

/// Where an object came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Origin {
    pub file: PathBuf,
    /// 1-based line where the document starts; 0 when there is none (a
    /// file that cannot be read, an object from the API server).
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Line 0: the whole file, or an object read from the API server.
        match self.line {
            0 => write!(f, "{}", self.file.display()),
            line => write!(f, "{}:{line}", self.file.display()),
        }
    }
}

/// A refused document or object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ManifestError {
    pub origin: Origin,
    /// `Kind namespace/name`, when the document got that far.
    pub object: Option<String>,
    pub field: Option<String>,
    pub reason: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(object) = &self.object {
            write!(f, ": {object}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field {field}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ManifestError {}

/// An accepted object and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub origin: Origin,
    pub resource: Resource,
}

/// Everything read from a set of paths.
#[derive(Debug, Default)]
pub struct Manifests {
    pub objects: Vec<Loaded>,
    pub errors: Vec<ManifestError>,
    /// The files read, for watching.
    pub files: Vec<PathBuf>,
}

fn refuse(
    object: Option<String>,
    field: Option<String>,
    reason: impl Into<String>,
) -> ManifestError {
    ManifestError {
        origin: Origin {
            file: PathBuf::new(),
            line: 0,
        },
        object,
        field,
        reason: reason.into(),
    }
}

/// Parses one YAML document into a known resource; `Ok(None)` for an empty one.
pub(crate) fn parse_document(
    doc: &str,
    default_class: BrokerClass,
) -> Result<Option<Resource>, ManifestError> {
    let value: serde_json::Value = serde_saphyr::from_str_with_options(doc, yaml_options())
        .map_err(|e| refuse(None, None, format!("not valid YAML: {e}")))?;
    if value.is_null() {
        return Ok(None);
    }
    parse_value(value, default_class).map(Some)
}

/// The YAML parser's limits for one manifest document, tighter than its
/// defaults (a million events, 64 MiB of text), which let a 400-byte alias
/// bomb hold 85 MB before it was refused (measured by the property tests).
/// A Kubernetes object is at most about 1.5 MiB (etcd's limit), so these
/// leave every real manifest room.
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_events: 100_000,
            max_nodes: 50_000,
            max_total_scalar_bytes: 4 << 20,
        },
    }
}

/// Parses one object (a YAML document, or an object read from the API
/// server) into a known resource, with the same checks for both.
pub(crate) fn parse_value(
    value: serde_json::Value,
    default_class: BrokerClass,
) -> Result<Resource, ManifestError> {
    let Some(object) = value.as_object() else {
        return Err(refuse(
            None,
            None,
            "a manifest is a mapping with apiVersion, kind, metadata and spec",
        ));
    };
    let text = |field: &str| {
        object
            .get(field)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_owned()
    };
    let (api_version, kind) = (text("apiVersion"), text("kind"));
    let meta = object.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(|v| v.as_str())
        .unwrap_or("<no name>");
    let namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    let label = format!("{kind} {namespace}/{name}");
    if kind.is_empty() || api_version.is_empty() {
        let missing = if kind.is_empty() {
            "kind"
        } else {
            "apiVersion"
        };
        return Err(refuse(Some(label), Some(missing.into()), "is required"));
    }
    let Some(known) = kinds::find(&kind) else {
        return Err(refuse(
            Some(label),
            Some("kind".into()),
            format!("unknown kind '{kind}'; pilotlight knows {}", known_kinds()),
        ));
    };
    if !known.api_versions.contains(&api_version.as_str()) {
        return Err(refuse(
            Some(label),
            Some("apiVersion".into()),
            format!(
                "'{api_version}' is not a version of {kind}: use '{}'",
                known.api_versions.join("' or '")
            ),
        ));
    }
    known
        .parse(value, &LoadContext { default_class })
        .map_err(|(field, reason)| refuse(Some(label), field, reason))
}

fn known_kinds() -> String {
    KINDS
        .iter()
        .flat_map(|k| {
            k.api_versions
                .iter()
                .map(move |v| format!("{} ({v})", k.kind))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Splits a multi-document YAML text at `---` lines: (first line, text).
pub(crate) fn documents(text: &str) -> Vec<(usize, String)> {
    let mut documents = vec![(1, String::new())];
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("---") && line[3..].trim().is_empty() {
            documents.push((i + 2, String::new()));
            continue;
        }
        if let Some((_, doc)) = documents.last_mut() {
            doc.push_str(line);
            doc.push('\n');
        }
    }
    documents
}

/// Parses every document of `text` (read from `file`) into `manifests`;
/// `seen` holds the objects already loaded, so a second definition of one
/// is refused.
pub(crate) fn load_text(
    file: &Path,
    text: &str,
    default_class: BrokerClass,
    seen: &mut HashSet<(&'static str, ObjectKey)>,
    manifests: &mut Manifests,
) {
    for (line, doc) in documents(text) {
        let origin = Origin {
            file: file.to_owned(),
            line,
        };
        match parse_document(&doc, default_class) {
            Ok(None) => {}
            Ok(Some(resource)) => {
                let key = (resource.kind(), resource.metadata().key());
                if !seen.insert(key.clone()) {
                    manifests.errors.push(ManifestError {
                        origin,
                        object: Some(format!("{} {}", key.0, key.1)),
                        field: None,
                        reason: "defined more than once; the first definition is used".into(),
                    });
                    continue;
                }
                manifests.objects.push(Loaded { origin, resource });
            }
            Err(mut e) => {
                e.origin = origin;
                manifests.errors.push(e);
            }
        }
    }
}

impl Manifests {
    /// The objects of one multi-document YAML text, as if read from a file
    /// named `<text>` (tests, and objects given inline).
    #[cfg(test)]
    pub(crate) fn from_text(text: &str, default_class: BrokerClass) -> Manifests {
        let mut manifests = Manifests::default();
        load_text(
            Path::new("<text>"),
            text,
            default_class,
            &mut HashSet::new(),
            &mut manifests,
        );
        manifests
    }
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(doc: &str) -> Result<Option<Resource>, ManifestError> {
        parse_document(doc, BrokerClass::Log)
    }

    #[test]
    fn config_maps_and_secrets_load_and_a_bad_secret_names_its_key() {
        let r = parse("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: kafka-broker-config\ndata:\n  bootstrap.servers: 127.0.0.1:9092\n")
            .expect("ok")
            .expect("some");
        assert_eq!(r.kind(), "ConfigMap");
        let err = parse("apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\ndata:\n  password: not*base64\n")
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("Secret default/creds") && text.contains("data.password"),
            "{text}"
        );
    }

    #[test]
    fn broker_with_defaults_loads() {
        let r = parse(
            "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: default\n",
        )
        .expect("ok")
        .expect("some");
        assert_eq!(r.metadata().key(), ObjectKey::new("default", "default"));
    }

    #[test]
    fn unknown_field_is_named_with_its_path() {
        let err = parse("apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t\n  namespace: ns\nspec:\n  broker: b\n  subscriber:\n    uri: http://x/\n    urii: http://y/\n")
            .expect_err("unknown");
        assert_eq!(err.object.as_deref(), Some("Trigger ns/t"));
        assert_eq!(err.field.as_deref(), Some("spec.subscriber.urii"));
        assert!(err.reason.starts_with("unknown field"), "{}", err.reason);
    }

    #[test]
    fn missing_and_mistyped_fields_are_named() {
        let err = parse("apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t\nspec:\n  subscriber:\n    uri: http://x/\n")
            .expect_err("missing");
        assert_eq!(err.field.as_deref(), Some("spec.broker"));
        assert_eq!(err.reason, "is required");
        let err = parse("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: b\nspec:\n  delivery:\n    retry: many\n")
            .expect_err("type");
        assert_eq!(err.field.as_deref(), Some("spec.delivery.retry"));
    }

    #[test]
    fn unknown_kind_and_version_are_refused() {
        let err = parse("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n").expect_err("kind");
        assert_eq!(err.field.as_deref(), Some("kind"));
        assert!(err.reason.contains("Broker (eventing.knative.dev/v1)"));
        let err =
            parse("apiVersion: eventing.knative.dev/v1beta1\nkind: Broker\nmetadata:\n  name: b\n")
                .expect_err("version");
        assert_eq!(err.field.as_deref(), Some("apiVersion"));
    }
}
