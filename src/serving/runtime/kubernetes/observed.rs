//! Watches a revision's Deployment: its replica counts and a failing
//! condition become the revision's status, and its `spec.replicas` tells a
//! follower whether the revision is at zero.

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

/// The Deployment as last seen; all default while it does not exist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Observed {
    pub resource_version: Option<String>,
    pub spec_replicas: Option<u32>,
    /// Pods that exist (`status.replicas`).
    pub replicas: u32,
    pub ready: u32,
    /// Why the Deployment cannot make progress, from its conditions.
    pub failure: Option<String>,
}

impl Observed {
    fn of(deployment: Option<&Deployment>) -> Observed {
        let Some(deployment) = deployment else {
            return Observed::default();
        };
        let count = |n: Option<i32>| n.and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
        let status = deployment.status.as_ref();
        Observed {
            resource_version: deployment.metadata.resource_version.clone(),
            spec_replicas: deployment.spec.replicas.and_then(|n| u32::try_from(n).ok()),
            replicas: count(status.and_then(|s| s.replicas)),
            ready: count(status.and_then(|s| s.ready_replicas)),
            failure: failure(deployment),
        }
    }
}

/// A condition saying the Deployment cannot create pods or stopped making
/// progress (Kubernetes' own words, with its reason).
fn failure(deployment: &Deployment) -> Option<String> {
    let conditions = deployment.status.as_ref()?.conditions.as_ref()?;
    conditions.iter().find_map(|c| {
        let failing = match (c.type_.as_deref(), c.status.as_deref()) {
            (Some("ReplicaFailure"), Some("True")) => true,
            (Some("Progressing"), Some("False")) => {
                c.reason.as_deref() == Some("ProgressDeadlineExceeded")
            }
            _ => false,
        };
        failing.then(|| {
            let reason = c
                .reason
                .as_deref()
                .or(c.type_.as_deref())
                .unwrap_or_default();
            match c.message.as_deref() {
                Some(message) => format!("{reason}: {message}"),
                None => reason.to_owned(),
            }
        })
    })
}

/// Publishes the Deployment named `name` until the task is aborted.
pub(super) async fn observe(api: Api<Deployment>, name: String, observed: watch::Sender<Observed>) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut current: Option<Deployment> = None;
    // Filled during a (re)list, which replaces `current` once complete.
    let mut listed: Option<Deployment> = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => listed = None,
            Ok(watcher::Event::InitApply(deployment)) => listed = Some(deployment),
            Ok(watcher::Event::InitDone) => current = listed.take(),
            Ok(watcher::Event::Apply(deployment)) => current = Some(deployment),
            Ok(watcher::Event::Delete(_)) => current = None,
            Err(error) => {
                super::watch_error::log(
                    &error,
                    "the revision's Deployment",
                    "list and watch apps deployments in this namespace",
                    &name,
                );
                continue;
            }
        }
        let now = Observed::of(current.as_ref());
        observed.send_if_modified(|last| {
            let changed = *last != now;
            *last = now;
            changed
        });
    }
}
