//! Running sources: each source object becomes a task with its resolved
//! sink. A source whose spec, sink and referenced values (the Secrets it
//! reads) are unchanged keeps running across a reload; a changed one is stopped and started again with the same state
//! folder, so it resumes where it was (a PingSource does not fire a tick
//! twice).
//!
//! A source placed on the leader ([`Placement::Leader`]) runs only while
//! this replica leads; the control plane applies again when that changes
//! (`ControlPlane::follow_leadership`), which starts or stops it here.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::api::ObjectKey;
use crate::api::status::{Condition, ObjectView, Status, ViewMeta};
use crate::auth::SenderIdentity;
use crate::desired::take_gone;
use crate::eventing::delivery::{EventSender, Target};
use crate::eventing::source::cluster_state::{Change, ClusterState};
use crate::eventing::source::{Placement, Replication, SourceBuild, SourceContext, SourceHandle};

/// One source kind's entries are keyed by kind and object.
type SourceId = (&'static str, ObjectKey);

/// How long a stopping source may take to finish what it is sending.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A source object as loaded, with its sink resolved (or why not).
pub(crate) struct DesiredSource {
    pub kind: &'static str,
    pub api_version: String,
    pub key: ObjectKey,
    pub annotations: BTreeMap<String, String>,
    /// `file:line` it was loaded from.
    pub origin: String,
    /// The spec as JSON: a change restarts the source.
    pub spec: serde_json::Value,
    pub sink: Result<Target, String>,
    /// With authentication on: who it sends as, and its sink's audience.
    pub identity: Option<Arc<SenderIdentity>>,
    pub placement: Placement,
    pub build: SourceBuild,
}

struct RunningSource {
    spec: serde_json::Value,
    /// [`SourceBuild::inputs`] of the build that runs.
    inputs: u64,
    sink: Target,
    identity: Option<Arc<SenderIdentity>>,
    handle: SourceHandle,
    task: tokio::task::JoinHandle<()>,
}

struct Entry {
    api_version: String,
    annotations: BTreeMap<String, String>,
    origin: String,
    spec: serde_json::Value,
    sink: Result<Target, String>,
    placement: Placement,
    running: Option<RunningSource>,
}

/// Runs the loaded sources.
pub(crate) struct SourceController {
    sender: EventSender,
    data_dir: PathBuf,
    /// Whether this replica leads, and the cluster's source state.
    replication: Replication,
    entries: tokio::sync::Mutex<BTreeMap<SourceId, Entry>>,
}

impl SourceController {
    pub(crate) fn new(sender: EventSender, data_dir: PathBuf, replication: Replication) -> Self {
        SourceController {
            sender,
            data_dir,
            replication,
            entries: tokio::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// Whether this replica leads, for whoever must follow it.
    pub(crate) fn leading(&self) -> watch::Receiver<bool> {
        self.replication.leading.clone()
    }

    fn leads(&self) -> bool {
        *self.replication.leading.borrow()
    }

    /// Whether a source of this placement runs on this replica now.
    fn runs_here(&self, placement: Placement) -> bool {
        placement == Placement::EveryReplica || self.leads()
    }

    fn state_dir(&self, kind: &str, key: &ObjectKey) -> PathBuf {
        self.data_dir
            .join("sources")
            .join(kind.to_ascii_lowercase())
            .join(&key.namespace)
            .join(&key.name)
    }

    /// Brings running sources to the desired ones.
    pub(crate) async fn apply(&self, desired: Vec<DesiredSource>) {
        let mut entries = self.entries.lock().await;
        let wanted: Vec<SourceId> = desired.iter().map(|d| (d.kind, d.key.clone())).collect();
        for (id, entry) in take_gone(&mut entries, |id| wanted.contains(id)) {
            tracing::info!(kind = id.0, source = %id.1, "source deleted");
            stop(entry.running).await;
            self.forget(id.0, &id.1).await;
        }
        for source in desired {
            let id = (source.kind, source.key.clone());
            let previous = entries.remove(&id);
            let entry = self.reconcile(source, previous).await;
            entries.insert(id, entry);
        }
    }

    /// Removes a deleted source's state: its folder, and (on the leader,
    /// which alone writes it) its entry in the cluster's source state.
    async fn forget(&self, kind: &str, key: &ObjectKey) {
        let dir = self.state_dir(kind, key);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a deleted source's state");
        }
        if let Some(state) = cluster_state(&self.replication, self.leads()) {
            let entry = ClusterState::entry(kind, key);
            if let Err(e) = state.update(&entry, |_| Change::Remove).await {
                tracing::warn!(source = %key, error = %e, "cannot remove a deleted source's state from the cluster");
            }
        }
    }

    async fn reconcile(&self, source: DesiredSource, previous: Option<Entry>) -> Entry {
        let DesiredSource {
            kind,
            api_version,
            key,
            annotations,
            origin,
            spec,
            sink,
            identity,
            placement,
            build,
        } = source;
        let mut running = previous.and_then(|p| p.running);
        let unchanged = running.as_ref().is_some_and(|r| {
            r.spec == spec
                && r.inputs == build.inputs
                && sink.as_ref().is_ok_and(|s| *s == r.sink)
                && r.identity == identity
                && !r.task.is_finished()
        });
        if !self.runs_here(placement) {
            if running.is_some() {
                tracing::info!(kind, source = %key, "this replica no longer leads; stopping the source");
            }
            stop(running.take()).await;
        } else if !unchanged {
            stop(running.take()).await;
            if let Ok(uri) = &sink {
                let (mut context, handle) = SourceContext::new(
                    key.clone(),
                    uri.uri.clone(),
                    self.sender.as_identity(identity.clone()),
                    self.state_dir(kind, &key),
                );
                context.sink = uri.clone();
                tracing::info!(kind, source = %key, sink = %uri, "source started");
                running = Some(RunningSource {
                    spec: spec.clone(),
                    inputs: build.inputs,
                    sink: uri.clone(),
                    identity: identity.clone(),
                    handle,
                    task: tokio::spawn((build.build)().run(context)),
                });
            }
        }
        Entry {
            api_version,
            annotations,
            origin,
            spec,
            sink,
            placement,
            running,
        }
    }

    /// Every source with its status, for the admin API.
    pub(crate) async fn views(&self, namespace: Option<&str>) -> Vec<ObjectView> {
        let leads = self.leads();
        let entries = self.entries.lock().await;
        entries
            .iter()
            .filter(|((_, key), _)| namespace.is_none_or(|ns| key.namespace == ns))
            .map(|((kind, key), entry)| ObjectView {
                api_version: entry.api_version.clone(),
                kind: (*kind).to_owned(),
                metadata: ViewMeta {
                    name: key.name.clone(),
                    namespace: key.namespace.clone(),
                    annotations: entry.annotations.clone(),
                    source: entry.origin.clone(),
                    owner_references: Vec::new(),
                },
                spec: entry.spec.clone(),
                status: status(entry, leads),
            })
            .collect()
    }

    pub(crate) async fn shutdown(&self) {
        let mut entries = self.entries.lock().await;
        let running: Vec<_> = entries
            .values_mut()
            .filter_map(|e| e.running.take())
            .collect();
        futures::future::join_all(running.into_iter().map(|r| stop(Some(r)))).await;
    }
}

async fn stop(running: Option<RunningSource>) {
    let Some(running) = running else { return };
    running.handle.stop();
    let mut task = running.task;
    if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
        task.abort();
    }
}

/// The cluster's source state, when this replica may write it: only the
/// leader does.
fn cluster_state(replication: &Replication, leads: bool) -> Option<&Arc<ClusterState>> {
    replication.state.as_ref().filter(|_| leads)
}

/// Knative's two source conditions: SinkProvided, then Ready. A source that
/// runs on the leader, seen on another replica, is neither Ready nor not:
/// the leader's status is the one written to the object.
fn status(entry: &Entry, leads: bool) -> Status {
    let sink_condition = match &entry.sink {
        Ok(_) => Condition::new("SinkProvided", "True", None, None),
        Err(message) => Condition::new(
            "SinkProvided",
            "False",
            Some("NotFound"),
            Some(message.clone()),
        ),
    };
    let mut status = match (&entry.sink, &entry.running) {
        (Err(message), _) => Status::not_ready("SinkNotFound", format!("spec.sink: {message}")),
        (Ok(_), None) if entry.placement == Placement::Leader => standby(leads),
        (Ok(_), None) => Status::not_ready("NotRunning", "the source is not running"),
        (Ok(_), Some(running)) => running.handle.health().status("source"),
    };
    status.sink_uri = entry.sink.as_ref().ok().map(ToString::to_string);
    status.conditions.push(sink_condition);
    status
}

/// The Ready condition of a source placed on the leader that does not run
/// here: this replica follows, or has just become the leader and starts it.
fn standby(leads: bool) -> Status {
    if leads {
        Status::unknown(
            "Starting",
            "this replica has just become the leader; the source is starting",
        )
    } else {
        Status::unknown(
            "NotLeader",
            "the source runs on the leader replica only; this replica takes it over if it becomes the leader",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(placement: Placement) -> Entry {
        Entry {
            api_version: "sources.knative.dev/v1".into(),
            annotations: BTreeMap::new(),
            origin: "ping.yaml:1".into(),
            spec: serde_json::json!({}),
            sink: Ok(Target::from(
                "http://127.0.0.1:1/".parse::<http::Uri>().expect("uri"),
            )),
            placement,
            running: None,
        }
    }

    fn ready(status: &Status) -> (String, Option<String>) {
        let ready = status
            .conditions
            .iter()
            .find(|c| c.kind == "Ready")
            .expect("a Ready condition");
        (ready.status.clone(), ready.reason.clone())
    }

    #[test]
    fn a_leader_only_source_on_a_follower_is_unknown_not_failed() {
        let follower = status(&waiting(Placement::Leader), false);
        assert_eq!(
            ready(&follower),
            ("Unknown".into(), Some("NotLeader".into()))
        );
        assert_eq!(follower.sink_uri.as_deref(), Some("http://127.0.0.1:1/"));
        let new_leader = status(&waiting(Placement::Leader), true);
        assert_eq!(
            ready(&new_leader),
            ("Unknown".into(), Some("Starting".into()))
        );
        // A source meant to run everywhere that does not run is a failure.
        let stopped = status(&waiting(Placement::EveryReplica), false);
        assert_eq!(ready(&stopped), ("False".into(), Some("NotRunning".into())));
    }

    #[tokio::test]
    async fn a_leader_only_source_runs_only_while_this_replica_leads() {
        let (lead, leading) = watch::channel(false);
        let dir = tempfile::tempdir().expect("tempdir");
        let controller = SourceController::new(
            EventSender::new(),
            dir.path().to_owned(),
            Replication {
                leading,
                state: None,
            },
        );
        let desired = |placement| DesiredSource {
            kind: "PingSource",
            api_version: "sources.knative.dev/v1".into(),
            key: ObjectKey::new("team", "ping"),
            annotations: BTreeMap::new(),
            origin: "ping.yaml:1".into(),
            spec: serde_json::json!({"schedule": "@yearly"}),
            sink: Ok(Target::from(
                "http://127.0.0.1:1/".parse::<http::Uri>().expect("uri"),
            )),
            identity: None,
            placement,
            build: SourceBuild::new(Box::new(|| {
                Box::new(crate::eventing::source::InvalidSource {
                    message: "stands in for a source".into(),
                })
            })),
        };
        let running = async |controller: &SourceController| {
            let entries = controller.entries.lock().await;
            entries.values().filter(|e| e.running.is_some()).count()
        };
        controller.apply(vec![desired(Placement::Leader)]).await;
        assert_eq!(running(&controller).await, 0, "a follower stands by");
        lead.send_replace(true);
        controller.apply(vec![desired(Placement::Leader)]).await;
        assert_eq!(running(&controller).await, 1, "the leader runs it");
        lead.send_replace(false);
        controller.apply(vec![desired(Placement::Leader)]).await;
        assert_eq!(running(&controller).await, 0, "stopped on losing the lead");
        controller
            .apply(vec![desired(Placement::EveryReplica)])
            .await;
        assert_eq!(running(&controller).await, 1, "others run everywhere");
        controller.shutdown().await;
    }
}
