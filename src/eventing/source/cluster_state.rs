//! State that sources keep in the API server in Kubernetes mode, so that the
//! replica that leads next resumes where the last leader stopped (a
//! PingSource's last fired tick).
//!
//! One ConfigMap, [`STATE_CONFIGMAP`] in the leader Lease's namespace, holds
//! one entry per source (`pingsource.{namespace}.{name}`). Every change is a
//! compare-and-set: the ConfigMap is read, the entry changed, and the
//! ConfigMap written back with the resourceVersion read. Of two replicas
//! changing it at once (two leaders for a moment during a hand-over) one
//! gets 409 Conflict, reads again and decides again on what the other wrote.
//!
//! The ConfigMap is labelled [`STATE_LABEL`], and pilotlight's own watch of
//! ConfigMaps leaves it out: a write per tick is not a change of the desired
//! state.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

use crate::api::ObjectKey;

/// The ConfigMap holding every source's state.
pub(crate) const STATE_CONFIGMAP: &str = "pilotlight-source-state";
/// The label that marks it, so that pilotlight's watch of ConfigMaps skips it.
pub(crate) const STATE_LABEL: &str = "pilotlight.dev/source-state";
/// Conflicts in a row before a change gives up (and is retried by its caller).
const MAX_CONFLICTS: usize = 5;

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StateError {
    #[error(
        "cannot read or write ConfigMap {namespace}/{STATE_CONFIGMAP}: {source} (deploy/rbac.yaml's Role grants create, and get, update and patch of it, in pilotlight's namespace)"
    )]
    Api {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "ConfigMap {namespace}/{STATE_CONFIGMAP} changed under every one of {MAX_CONFLICTS} writes in a row: does something besides pilotlight's leader write it?"
    )]
    Contended { namespace: String },
}

/// What a change does to one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// Leave the entry as it is: nothing is written.
    Keep,
    Set(String),
    Remove,
}

/// The outcome of [`ClusterState::update`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Updated {
    /// Whether this call wrote its change (false for [`Change::Keep`]).
    pub written: bool,
    /// The entry's value once the call was done.
    pub value: Option<String>,
}

/// The state ConfigMap of one cluster.
pub(crate) struct ClusterState {
    api: Api<ConfigMap>,
    namespace: String,
    /// This replica's changes go one at a time: they share one ConfigMap,
    /// and would otherwise conflict with each other at every tick that
    /// several PingSources share.
    writes: tokio::sync::Mutex<()>,
}

impl ClusterState {
    /// The state in `namespace`: the leader Lease's.
    pub(crate) fn new(client: kube::Client, namespace: &str) -> Self {
        ClusterState {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            writes: tokio::sync::Mutex::new(()),
        }
    }

    /// The entry of one source: its kind, namespace and name, joined by dots
    /// (a namespace has none, so the key is unambiguous; a ConfigMap key
    /// allows letters, digits, `-`, `_` and `.`).
    pub(crate) fn entry(kind: &str, key: &ObjectKey) -> String {
        format!(
            "{}.{}.{}",
            kind.to_ascii_lowercase(),
            key.namespace,
            key.name
        )
    }

    /// Changes one entry: `change` sees its current value and says what to
    /// do. On a conflict it is called again with what the other writer left.
    pub(crate) async fn update(
        &self,
        entry: &str,
        change: impl Fn(Option<&str>) -> Change,
    ) -> Result<Updated, StateError> {
        let _one_at_a_time = self.writes.lock().await;
        for _ in 0..MAX_CONFLICTS {
            let current = self
                .api
                .get_opt(STATE_CONFIGMAP)
                .await
                .map_err(|e| self.api_error(e))?;
            let value = current.as_ref().and_then(|m| value_of(m, entry));
            let wanted = change(value.as_deref());
            let after = match &wanted {
                Change::Keep => {
                    return Ok(Updated {
                        written: false,
                        value,
                    });
                }
                Change::Set(v) => Some(v.clone()),
                Change::Remove if value.is_none() => {
                    return Ok(Updated {
                        written: false,
                        value,
                    });
                }
                Change::Remove => None,
            };
            let written = match current {
                Some(map) => self.replace(map, entry, after.clone()).await,
                None => self.create(entry, after.clone()).await,
            };
            match written {
                Ok(()) => {
                    return Ok(Updated {
                        written: true,
                        value: after,
                    });
                }
                // Another replica wrote first (409 Conflict on a stale
                // resourceVersion, or AlreadyExists on a create): decide
                // again on what it wrote.
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    tracing::debug!(entry, "source state changed meanwhile; reading it again");
                }
                Err(e) => return Err(self.api_error(e)),
            }
        }
        Err(StateError::Contended {
            namespace: self.namespace.clone(),
        })
    }

    /// Writes the ConfigMap as read, with the entry changed: the
    /// resourceVersion it carries makes the write fail if it changed since.
    async fn replace(
        &self,
        mut map: ConfigMap,
        entry: &str,
        value: Option<String>,
    ) -> Result<(), kube::Error> {
        let data = map.data.get_or_insert_with(BTreeMap::new);
        match value {
            Some(value) => data.insert(entry.to_owned(), value),
            None => data.remove(entry),
        };
        self.api
            .replace(STATE_CONFIGMAP, &PostParams::default(), &map)
            .await
            .map(drop)
    }

    async fn create(&self, entry: &str, value: Option<String>) -> Result<(), kube::Error> {
        let map = ConfigMap {
            metadata: ObjectMeta {
                name: Some(STATE_CONFIGMAP.to_owned()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([
                    ("app.kubernetes.io/name".to_owned(), "pilotlight".to_owned()),
                    (STATE_LABEL.to_owned(), "true".to_owned()),
                ])),
                ..ObjectMeta::default()
            },
            data: Some(value.map(|v| (entry.to_owned(), v)).into_iter().collect()),
            ..ConfigMap::default()
        };
        self.api
            .create(&PostParams::default(), &map)
            .await
            .map(drop)
    }

    fn api_error(&self, source: kube::Error) -> StateError {
        StateError::Api {
            namespace: self.namespace.clone(),
            source,
        }
    }
}

fn value_of(map: &ConfigMap, entry: &str) -> Option<String> {
    map.data.as_ref()?.get(entry).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_name_kind_namespace_and_name() {
        assert_eq!(
            ClusterState::entry("PingSource", &ObjectKey::new("team", "every.minute")),
            "pingsource.team.every.minute"
        );
    }
}
