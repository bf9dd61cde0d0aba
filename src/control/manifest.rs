//! Loading Knative manifests from YAML files and folders.
//!
//! Each document is parsed on its own, so one bad document refuses one object
//! and the rest still load. Errors name the file, the document's line, the
//! object (kind namespace/name) and the field.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::ObjectKey;
use super::resources::broker::BrokerClass;
use super::resources::{
    ApiServerSource, Broker, ConfigMap, KNOWN_KINDS, KafkaSource, PingSource, RabbitmqBrokerConfig,
    RabbitmqSource, Resource, Secret, Service, Trigger,
};

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

/// Reads every `.yaml`/`.yml` file under the given files and folders.
pub fn load(paths: &[PathBuf], default_class: BrokerClass) -> Manifests {
    let mut manifests = Manifests::default();
    let mut files = Vec::new();
    for path in paths {
        if let Err(e) = collect_files(path, &mut files) {
            manifests.errors.push(ManifestError {
                origin: Origin {
                    file: path.clone(),
                    line: 0,
                },
                object: None,
                field: None,
                reason: e,
            });
        }
    }
    let mut seen = HashSet::new();
    for file in &files {
        match std::fs::read_to_string(file) {
            Ok(text) => load_text(file, &text, default_class, &mut seen, &mut manifests),
            Err(e) => manifests.errors.push(ManifestError {
                origin: Origin {
                    file: file.clone(),
                    line: 0,
                },
                object: None,
                field: None,
                reason: format!("cannot read the file: {e}"),
            }),
        }
    }
    manifests.files = files;
    manifests
}

fn collect_files(path: &Path, files: &mut Vec<PathBuf>) -> Result<(), String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.is_file() {
        files.push(path.to_owned());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| format!("cannot list {}: {e}", path.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for entry in entries {
        let is_yaml = entry.extension().is_some_and(|x| x == "yaml" || x == "yml");
        if entry.is_dir() {
            collect_files(&entry, files)?;
        } else if is_yaml {
            files.push(entry);
        }
    }
    Ok(())
}

/// Splits a multi-document YAML text at `---` lines: (first line, text).
fn documents(text: &str) -> Vec<(usize, String)> {
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

fn load_text(
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
pub fn parse_document(
    doc: &str,
    default_class: BrokerClass,
) -> Result<Option<Resource>, ManifestError> {
    let value: serde_json::Value = serde_saphyr::from_str(doc)
        .map_err(|e| refuse(None, None, format!("not valid YAML: {e}")))?;
    if value.is_null() {
        return Ok(None);
    }
    parse_value(value, default_class).map(Some)
}

/// Parses one object (a YAML document, or an object read from the API
/// server) into a known resource, with the same checks for both.
pub fn parse_value(
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
    // A kind may be known in several versions (KafkaSource).
    let known = KNOWN_KINDS
        .iter()
        .find(|(v, k)| *k == kind && *v == api_version)
        .or_else(|| KNOWN_KINDS.iter().find(|(_, k)| *k == kind));
    match known {
        None => Err(refuse(
            Some(label),
            Some("kind".into()),
            format!("unknown kind '{kind}'; pilotlight knows {}", known_kinds()),
        )),
        Some((version, _)) if *version != api_version => Err(refuse(
            Some(label),
            Some("apiVersion".into()),
            format!("'{api_version}' is not a version of {kind}: use '{version}'"),
        )),
        Some(_) => typed(value, &kind, default_class)
            .map_err(|(field, reason)| refuse(Some(label), field, reason)),
    }
}

fn known_kinds() -> String {
    KNOWN_KINDS
        .iter()
        .map(|(v, k)| format!("{k} ({v})"))
        .collect::<Vec<_>>()
        .join(", ")
}

type Refusal = (Option<String>, String);

fn typed(
    value: serde_json::Value,
    kind: &str,
    default_class: BrokerClass,
) -> Result<Resource, Refusal> {
    let invalid = |e: super::resources::Invalid| (Some(e.field), e.reason);
    match kind {
        "Broker" => {
            let broker: Broker = deserialize(value)?;
            broker.validate(default_class).map_err(invalid)?;
            Ok(Resource::Broker(broker))
        }
        "ApiServerSource" => {
            let source: ApiServerSource = deserialize(value)?;
            source.validate().map_err(invalid)?;
            Ok(Resource::ApiServerSource(Box::new(source)))
        }
        "KafkaSource" => {
            let source: KafkaSource = deserialize(value)?;
            source.validate().map_err(invalid)?;
            Ok(Resource::KafkaSource(Box::new(source)))
        }
        "PingSource" => {
            let source: PingSource = deserialize(value)?;
            source.validate().map_err(invalid)?;
            Ok(Resource::PingSource(Box::new(source)))
        }
        "Service" => {
            let service: Service = deserialize(value)?;
            service.validate().map_err(invalid)?;
            Ok(Resource::Service(Box::new(service)))
        }
        "ConfigMap" => {
            let config_map: ConfigMap = deserialize(value)?;
            config_map.validate().map_err(invalid)?;
            Ok(Resource::ConfigMap(Box::new(config_map)))
        }
        "Secret" => {
            let secret: Secret = deserialize(value)?;
            secret.validate().map_err(invalid)?;
            Ok(Resource::Secret(Box::new(secret)))
        }
        "RabbitmqBrokerConfig" => {
            let config: RabbitmqBrokerConfig = deserialize(value)?;
            config.validate().map_err(invalid)?;
            Ok(Resource::RabbitmqBrokerConfig(Box::new(config)))
        }
        "RabbitmqSource" => {
            let source: RabbitmqSource = deserialize(value)?;
            source.validate().map_err(invalid)?;
            Ok(Resource::RabbitmqSource(Box::new(source)))
        }
        _ => {
            let trigger: Trigger = deserialize(value)?;
            trigger.validate().map_err(invalid)?;
            Ok(Resource::Trigger(trigger))
        }
    }
}

/// Deserialises with the path of the failing field.
fn deserialize<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, Refusal> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        // The path already ends with an unknown field's name.
        if let Some(rest) = message.strip_prefix("unknown field `")
            && let Some((_, expected)) = rest.split_once('`')
        {
            return (Some(path), format!("unknown field{expected}"));
        }
        if let Some(field) = message
            .strip_prefix("missing field `")
            .and_then(|r| r.strip_suffix('`'))
        {
            let full = if path == "." {
                field.to_owned()
            } else {
                format!("{path}.{field}")
            };
            return (Some(full), "is required".to_owned());
        }
        ((path != ".").then_some(path), message)
    })
}

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

    #[test]
    fn one_bad_document_does_not_stop_the_others() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("all.yaml");
        std::fs::write(
            &file,
            "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: a\n---\napiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: Bad_Name\n---\n# just a comment\n---\napiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: c\n",
        )
        .expect("write");
        let m = load(&[dir.path().to_owned()], BrokerClass::Log);
        assert_eq!(m.objects.len(), 2);
        assert_eq!(m.errors.len(), 1);
        let e = &m.errors[0];
        assert_eq!(e.origin.line, 6);
        assert_eq!(e.field.as_deref(), Some("metadata.name"));
        assert!(e.to_string().starts_with(&format!(
            "{}:6: Broker default/Bad_Name: field metadata.name:",
            file.display()
        )));
    }

    #[test]
    fn duplicates_and_missing_paths_are_reported() {
        let dir = tempfile::tempdir().expect("tmp");
        let doc = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: a\n";
        std::fs::write(dir.path().join("a.yaml"), doc).expect("write");
        std::fs::write(dir.path().join("b.yml"), doc).expect("write");
        std::fs::write(dir.path().join("notes.txt"), "ignored").expect("write");
        let m = load(
            &[dir.path().to_owned(), dir.path().join("nope")],
            BrokerClass::Log,
        );
        assert_eq!(m.objects.len(), 1);
        assert_eq!(m.errors.len(), 2);
        assert!(
            m.errors
                .iter()
                .any(|e| e.reason.contains("defined more than once"))
        );
        assert!(m.errors.iter().any(|e| e.reason.contains("nope")));
    }
}
