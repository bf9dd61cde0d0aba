//! Daemons: workloads with no port that run for as long as their object
//! exists (a ContainerSource's pod), on the same runtimes as revisions.
//!
//! Each version of a daemon's pod template is deployed once, at one
//! replica, and never scaled: the runtime restarts what exits (with
//! backoff, as it restarts crashed instances), and the daemon is ready while
//! it runs. A changed template is a new version: the old one is retired
//! (stopped, its Deployment deleted) and the new one deployed. Versions are
//! named by a hash of the template, so every replica and every restart of
//! pilotlight names the same version alike: in Kubernetes mode a new leader
//! adopts the Deployment that runs instead of making another.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sha2::Digest as _;

use crate::api::ObjectKey;
use crate::api::service::RevisionTemplate;
use crate::api::status::{ServingStatus, Status};
use crate::desired::take_gone;
use crate::serving::runtime::{ConditionState, Deployment, Runtime, Workload, WorkloadKind};

/// How long a stopping daemon may take after SIGTERM (Kubernetes' default
/// `terminationGracePeriodSeconds`): it has no requests to drain.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// A daemon as the control plane wants it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DesiredDaemon {
    /// The owning object (a ContainerSource).
    pub key: ObjectKey,
    /// Its pod template, with everything the control plane adds (`K_SINK`).
    pub template: RevisionTemplate,
}

struct RunningDaemon {
    /// `{name}-{hash of the template}`.
    version: String,
    /// The runtime that runs it (`process`, `container`, `kubernetes`).
    runtime: &'static str,
    /// Why the runtime refused it, when it did.
    deployment: Result<Arc<dyn Deployment>, String>,
}

/// The daemons of one `pilotlight run`.
pub(crate) struct Daemons {
    runtime: Arc<dyn Runtime>,
    running: tokio::sync::Mutex<BTreeMap<ObjectKey, RunningDaemon>>,
}

impl Daemons {
    pub(crate) fn new(runtime: Arc<dyn Runtime>) -> Self {
        Daemons {
            runtime,
            running: tokio::sync::Mutex::default(),
        }
    }

    /// Brings the running daemons to `desired`: deleted ones and old
    /// versions are retired first (so a source never runs twice), then new
    /// versions are deployed.
    pub(crate) async fn apply(&self, desired: Vec<DesiredDaemon>) {
        let mut running = self.running.lock().await;
        let mut retiring: Vec<RunningDaemon> = Vec::new();
        for (key, gone) in take_gone(&mut *running, |key| desired.iter().any(|d| &d.key == key)) {
            tracing::info!(daemon = %key, "deleted; stopping it");
            retiring.push(gone);
        }
        let mut start = Vec::new();
        for daemon in desired {
            let version = version_name(&daemon.key, &daemon.template);
            let current = running.get(&daemon.key).map(|d| d.version.as_str());
            if current == Some(version.as_str()) {
                continue;
            }
            if current.is_some() {
                tracing::info!(daemon = %daemon.key, %version, "its template changed; restarting it");
                retiring.extend(running.remove(&daemon.key));
            }
            start.push((daemon, version));
        }
        retire_all(retiring).await;
        for (daemon, version) in start {
            let started = self.deploy(&daemon, &version);
            running.insert(daemon.key, started);
        }
    }

    fn deploy(&self, daemon: &DesiredDaemon, version: &str) -> RunningDaemon {
        let workload = Workload {
            service: daemon.key.clone(),
            revision: version.to_owned(),
            template: daemon.template.clone(),
            drain_timeout: STOP_GRACE,
            kind: WorkloadKind::Daemon,
        };
        let runtime = self.runtime.name_for(&workload);
        let deployment = self.runtime.deploy(workload).map_err(|e| e.to_string());
        match &deployment {
            Ok(deployment) => {
                tracing::info!(daemon = %daemon.key, version, runtime, "starting");
                deployment.scale(1);
            }
            Err(message) => {
                tracing::error!(daemon = %daemon.key, version, runtime, "cannot run: {message}");
            }
        }
        RunningDaemon {
            version: version.to_owned(),
            runtime,
            deployment,
        }
    }

    /// The live status of the daemon of `key`: Ready while it runs; why not
    /// otherwise. None when no daemon of that key is wanted.
    pub(crate) async fn status(&self, key: &ObjectKey) -> Option<Status> {
        let running = self.running.lock().await;
        running.get(key).map(daemon_status)
    }

    /// pilotlight exits: local daemons stop, Kubernetes Deployments keep
    /// running for the next leader.
    pub(crate) async fn shutdown(&self) {
        let all = std::mem::take(&mut *self.running.lock().await);
        let deployments: Vec<_> = all
            .into_values()
            .filter_map(|d| d.deployment.ok())
            .collect();
        futures::future::join_all(deployments.iter().map(|d| d.shutdown())).await;
    }
}

async fn retire_all(daemons: Vec<RunningDaemon>) {
    let deployments: Vec<_> = daemons
        .into_iter()
        .filter_map(|d| d.deployment.ok())
        .collect();
    futures::future::join_all(deployments.iter().map(|d| d.retire())).await;
}

/// `{name}-{first 8 hex digits of the template's SHA-256}`: the same on
/// every replica and across restarts, unlike Rust's `DefaultHasher`.
fn version_name(key: &ObjectKey, template: &RevisionTemplate) -> String {
    let json = serde_json::to_vec(template).unwrap_or_default();
    let digest = sha2::Sha256::digest(&json);
    let hash: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("{}-{hash}", key.name)
}

/// Ready while an instance runs; else why not: it cannot run, what holds it
/// back (an image pull), or how it last exited while it waits to restart.
fn daemon_status(daemon: &RunningDaemon) -> Status {
    let mut serving = ServingStatus {
        runtime: Some(daemon.runtime.to_owned()),
        ..ServingStatus::default()
    };
    let deployment = match &daemon.deployment {
        Ok(deployment) => deployment,
        Err(message) => {
            let mut status = Status::not_ready("CannotRun", message.clone());
            status.serving = Some(Box::new(serving));
            return status;
        }
    };
    let live = deployment.status();
    serving.restarts = (live.restarts > 0).then_some(live.restarts);
    serving.actual_replicas = Some(live.ready);
    let condition = live.condition.as_ref();
    let state = condition.map(|c| c.state);
    let mut status = if live.ready > 0 {
        Status::ready()
    } else if let Some(c) = condition.filter(|_| state == Some(ConditionState::Failed)) {
        Status::not_ready(c.reason, c.message.clone())
    } else if let Some(failure) = &live.last_failure {
        Status::not_ready(
            "ContainerFailed",
            format!("{failure}; restarted after a backoff"),
        )
    } else if let Some(c) = condition.filter(|_| state == Some(ConditionState::Pending)) {
        Status::unknown(c.reason, c.message.clone())
    } else {
        Status::unknown("Starting", "waiting for its pod to run")
    };
    status.serving = Some(Box::new(serving));
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_named_by_the_template_alone() {
        let key = ObjectKey::new("default", "heartbeats");
        let mut template = RevisionTemplate::default();
        let first = version_name(&key, &template);
        assert_eq!(first, version_name(&key, &template.clone()));
        assert!(first.starts_with("heartbeats-") && first.len() == "heartbeats-".len() + 8);
        template
            .metadata
            .labels
            .insert("changed".into(), "yes".into());
        assert_ne!(first, version_name(&key, &template));
    }
}
