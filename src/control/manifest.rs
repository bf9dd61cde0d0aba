//! Loading Knative manifests from YAML files and folders: each document is
//! parsed on its own (`api::manifest`), so one bad document refuses one
//! object and the rest still load.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::api::broker::BrokerClass;
use crate::api::manifest::{ManifestError, Manifests, Origin, load_text};

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

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Two mistakes of Knative's docs examples: refused, with where the
    /// field belongs, the file, the object and the field.
    #[test]
    fn docs_mistakes_are_refused_with_what_was_meant() {
        let dir = tempfile::tempdir().expect("tmp");
        let source = dir.path().join("ping.yaml");
        std::fs::write(
            &source,
            "apiVersion: sources.knative.dev/v1\nkind: PingSource\nmetadata:\n  name: beat\nspec:\n  schedule: \"* * * * *\"\n  sink:\n    apiVersion: serving.knative.dev/v1\n    kind: Service\n    name: event-display\n",
        )
        .expect("write");
        let service = dir.path().join("service.yaml");
        std::fs::write(
            &service,
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: hello\n  namespace: shop\nspec:\n  template:\n    containers:\n      - image: ghcr.io/knative/helloworld-go:latest\n",
        )
        .expect("write");
        let m = load(&[dir.path().to_owned()], BrokerClass::Log);
        let errors: Vec<String> = m.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            [
                format!(
                    "{}:1: PingSource default/beat: field spec.sink.apiVersion: not a field of a Destination; did you mean spec.sink.ref.apiVersion?",
                    source.display()
                ),
                format!(
                    "{}:1: Service shop/hello: field spec.template.containers: not a field of a revision template; did you mean spec.template.spec.containers?",
                    service.display()
                ),
            ]
        );
    }
}
