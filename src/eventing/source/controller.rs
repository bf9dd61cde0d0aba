//! Running sources: each source object becomes a task with its resolved
//! sink. A source whose spec, sink and referenced values (the Secrets it
//! reads) are unchanged keeps running across a reload; a changed one is stopped and started again with the same state
//! folder, so it resumes where it was (a PingSource does not fire a tick
//! twice).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;

use crate::api::ObjectKey;
use crate::api::status::{Condition, ObjectView, Status, ViewMeta};
use crate::desired::take_gone;
use crate::eventing::delivery::EventSender;
use crate::eventing::source::{SourceBuild, SourceContext, SourceHandle};

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
    pub sink: Result<Uri, String>,
    pub build: SourceBuild,
}

struct RunningSource {
    spec: serde_json::Value,
    /// [`SourceBuild::inputs`] of the build that runs.
    inputs: u64,
    sink: Uri,
    handle: SourceHandle,
    task: tokio::task::JoinHandle<()>,
}

struct Entry {
    api_version: String,
    annotations: BTreeMap<String, String>,
    origin: String,
    spec: serde_json::Value,
    sink: Result<Uri, String>,
    running: Option<RunningSource>,
}

/// Runs the loaded sources.
pub(crate) struct SourceController {
    sender: EventSender,
    data_dir: PathBuf,
    entries: tokio::sync::Mutex<BTreeMap<SourceId, Entry>>,
}

impl SourceController {
    pub(crate) fn new(sender: EventSender, data_dir: PathBuf) -> Self {
        SourceController {
            sender,
            data_dir,
            entries: tokio::sync::Mutex::new(BTreeMap::new()),
        }
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
            let dir = self.state_dir(id.0, &id.1);
            if let Err(e) = std::fs::remove_dir_all(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a deleted source's state");
            }
        }
        for source in desired {
            let id = (source.kind, source.key.clone());
            let previous = entries.remove(&id);
            let entry = self.reconcile(source, previous).await;
            entries.insert(id, entry);
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
            build,
        } = source;
        let mut running = previous.and_then(|p| p.running);
        let unchanged = running.as_ref().is_some_and(|r| {
            r.spec == spec
                && r.inputs == build.inputs
                && sink.as_ref().is_ok_and(|s| *s == r.sink)
                && !r.task.is_finished()
        });
        if !unchanged {
            stop(running.take()).await;
            if let Ok(uri) = &sink {
                let (context, handle) = SourceContext::new(
                    key.clone(),
                    uri.clone(),
                    self.sender.clone(),
                    self.state_dir(kind, &key),
                );
                tracing::info!(kind, source = %key, sink = %uri, "source started");
                running = Some(RunningSource {
                    spec: spec.clone(),
                    inputs: build.inputs,
                    sink: uri.clone(),
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
            running,
        }
    }

    /// Every source with its status, for the admin API.
    pub(crate) async fn views(&self, namespace: Option<&str>) -> Vec<ObjectView> {
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
                },
                spec: entry.spec.clone(),
                status: status(entry),
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

/// Knative's two source conditions: SinkProvided, then Ready.
fn status(entry: &Entry) -> Status {
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
        (Ok(_), None) => Status::not_ready("NotRunning", "the source is not running"),
        (Ok(_), Some(running)) => running.handle.health().status("source"),
    };
    status.sink_uri = entry.sink.as_ref().ok().map(ToString::to_string);
    status.conditions.push(sink_condition);
    status
}
