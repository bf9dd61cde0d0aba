//! Revision names that survive restarts: each Service's revisions, numbered
//! in the order their templates appeared, saved under the data directory.
//! Restarting pilotlight with an unchanged template keeps `hello-00003`;
//! changing it makes `hello-00004`, as Knative numbers by generation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::api::ObjectKey;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RecordedRevision {
    pub name: String,
    /// The template the revision was made from (`spec.template`, as JSON).
    pub template: serde_json::Value,
    pub created: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    /// `namespace/service` → revisions, oldest first.
    services: BTreeMap<String, ServiceHistory>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct ServiceHistory {
    /// The generation the next generated name uses.
    next_number: u32,
    revisions: Vec<RecordedRevision>,
}

/// The revisions of every Service, persisted as one JSON file.
pub(crate) struct RevisionHistory {
    path: PathBuf,
    saved: Saved,
}

/// A template reused a revision name that already has another template.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "revision {name} already exists with a different template; give spec.template.metadata.name a new name (or remove it to have names generated)"
)]
pub(crate) struct NameTaken {
    pub name: String,
}

impl RevisionHistory {
    /// Loads the history; a missing or unreadable file starts empty (with a
    /// warning for the latter: revision numbers then restart).
    pub(crate) fn load(dir: &Path) -> Self {
        let path = dir.join("revisions.json");
        let saved = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "revision history unreadable; numbering restarts");
                Saved::default()
            }),
            Err(_) => Saved::default(),
        };
        RevisionHistory { path, saved }
    }

    /// The revision for this template: the existing one if the template is
    /// the latest's, else a new one (named, or numbered next).
    ///
    /// `generation` is the Service's `metadata.generation` when the API
    /// server keeps it (Kubernetes mode): a new revision is numbered by it,
    /// so that every replica, however long it has been running, gives the
    /// same template the same name.
    pub(crate) fn revision_for(
        &mut self,
        service: &ObjectKey,
        template: &serde_json::Value,
        given_name: Option<&str>,
        generation: Option<i64>,
    ) -> Result<(RecordedRevision, bool), NameTaken> {
        let history = self.saved.services.entry(service.to_string()).or_default();
        if let Some(name) = given_name
            && let Some(existing) = history.revisions.iter().find(|r| r.name == name)
        {
            if existing.template != *template {
                return Err(NameTaken { name: name.into() });
            }
            return Ok((existing.clone(), false));
        }
        if given_name.is_none()
            && let Some(latest) = history.revisions.last()
            && latest.template == *template
        {
            return Ok((latest.clone(), false));
        }
        history.next_number = history.next_number.max(1);
        let name = match (given_name, generation) {
            (Some(name), _) => name.to_owned(),
            // The API server's count, not this replica's: every replica names
            // the template alike, whatever its own history holds.
            (None, Some(generation)) => format!("{}-{generation:05}", service.name),
            (None, None) => format!("{}-{:05}", service.name, history.next_number),
        };
        history.next_number += 1;
        let revision = RecordedRevision {
            name,
            template: template.clone(),
            created: chrono::Utc::now(),
        };
        // A name from the API server's count may be one this replica gave
        // another template before: the count wins, so one record per name.
        history.revisions.retain(|r| r.name != revision.name);
        history.revisions.push(revision.clone());
        Ok((revision, true))
    }

    /// A service's revisions, oldest first.
    pub(crate) fn revisions(&self, service: &ObjectKey) -> &[RecordedRevision] {
        self.saved
            .services
            .get(&service.to_string())
            .map_or(&[], |h| h.revisions.as_slice())
    }

    /// Forgets revisions (retention) or a whole service (deleted).
    pub(crate) fn retain(&mut self, service: &ObjectKey, keep: impl Fn(&RecordedRevision) -> bool) {
        if let Some(history) = self.saved.services.get_mut(&service.to_string()) {
            history.revisions.retain(|r| keep(r));
        }
    }

    pub(crate) fn forget_service(&mut self, service: &ObjectKey) {
        self.saved.services.remove(&service.to_string());
    }

    /// Writes the file atomically (temp file, then rename).
    pub(crate) fn save(&self) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let temp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(&self.saved).map_err(std::io::Error::other)?;
        std::fs::write(&temp, bytes)?;
        std::fs::rename(&temp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_number_revisions_and_names_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = ObjectKey::new("default", "hello");
        let v1 = serde_json::json!({"spec": 1});
        let v2 = serde_json::json!({"spec": 2});
        let mut history = RevisionHistory::load(dir.path());
        let (first, created) = history.revision_for(&key, &v1, None, None).expect("ok");
        assert_eq!((first.name.as_str(), created), ("hello-00001", true));
        let (same, created) = history.revision_for(&key, &v1, None, None).expect("ok");
        assert_eq!((same.name.as_str(), created), ("hello-00001", false));
        let (second, _) = history.revision_for(&key, &v2, None, None).expect("ok");
        assert_eq!(second.name, "hello-00002");
        history.save().expect("save");

        let mut reloaded = RevisionHistory::load(dir.path());
        let (again, created) = reloaded.revision_for(&key, &v2, None, None).expect("ok");
        assert_eq!((again.name.as_str(), created), ("hello-00002", false));
        // Going back to an older template is a new generation, as in Knative.
        let (back, _) = reloaded.revision_for(&key, &v1, None, None).expect("ok");
        assert_eq!(back.name, "hello-00003");
    }

    #[test]
    fn a_given_name_cannot_change_its_template() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = ObjectKey::new("default", "hello");
        let mut history = RevisionHistory::load(dir.path());
        history
            .revision_for(&key, &serde_json::json!(1), Some("hello-blue"), None)
            .expect("new");
        let err = history
            .revision_for(&key, &serde_json::json!(2), Some("hello-blue"), None)
            .expect_err("taken");
        assert!(
            err.to_string()
                .contains("revision hello-blue already exists")
        );
    }

    #[test]
    fn the_api_servers_generation_numbers_new_revisions_alike_on_every_replica() {
        let key = ObjectKey::new("default", "hello");
        let dir = tempfile::tempdir().expect("dir");
        let mut long_running = RevisionHistory::load(&dir.path().join("a"));
        let (first, _) = long_running
            .revision_for(&key, &serde_json::json!(1), None, Some(1))
            .expect("ok");
        assert_eq!(first.name, "hello-00001");
        // A traffic-only change bumped the generation in between.
        let (third, _) = long_running
            .revision_for(&key, &serde_json::json!(2), None, Some(3))
            .expect("ok");
        assert_eq!(third.name, "hello-00003");
        let mut started_later = RevisionHistory::load(&dir.path().join("b"));
        let (same, _) = started_later
            .revision_for(&key, &serde_json::json!(2), None, Some(3))
            .expect("ok");
        assert_eq!(same.name, third.name);
        // Even one whose own count ran ahead (a Service deleted and made
        // again while it was down).
        let mut ahead = RevisionHistory::load(&dir.path().join("c"));
        for n in 10..15 {
            ahead
                .revision_for(&key, &serde_json::json!(n), None, None)
                .expect("ok");
        }
        let (agreed, _) = ahead
            .revision_for(&key, &serde_json::json!(2), None, Some(3))
            .expect("ok");
        assert_eq!(agreed.name, third.name);
        let named = |history: &RevisionHistory, name: &str| {
            history
                .revisions(&key)
                .iter()
                .filter(|r| r.name == name)
                .map(|r| r.template.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(named(&ahead, &agreed.name), [serde_json::json!(2)]);
    }
}
