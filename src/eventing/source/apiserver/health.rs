//! The source's status: one health per watched kind folded into one, and
//! what a failure tells the user to do.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use crate::eventing::health::Health;
use crate::eventing::source::SourceContext;

/// The status of several watches folded into one.
pub(crate) struct Reporter {
    ctx: SourceContext,
    states: Mutex<Vec<Health>>,
    pub failed_sends: AtomicU64,
}

impl Reporter {
    pub(crate) fn new(ctx: SourceContext, watches: usize) -> Self {
        Reporter {
            ctx,
            states: Mutex::new(vec![Health::Unknown; watches]),
            failed_sends: AtomicU64::new(0),
        }
    }

    /// Records one watch's health; the source is Ready when all are, and
    /// NotReady as soon as one is.
    pub(crate) fn set(&self, index: usize, health: Health) {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = states.get_mut(index) {
            *slot = health;
        }
        let folded = states
            .iter()
            .find(|h| matches!(h, Health::NotReady { .. }))
            .cloned()
            .unwrap_or_else(|| {
                if states.iter().all(|h| *h == Health::Ready) {
                    Health::Ready
                } else {
                    Health::Unknown
                }
            });
        self.ctx.set_status(folded);
    }

    /// Sets every watch's health (client creation failing concerns all).
    pub(crate) fn set_all(&self, health: Health) {
        let len = self.states.lock().unwrap_or_else(|e| e.into_inner()).len();
        for i in 0..len.max(1) {
            self.set(i, health.clone());
        }
    }
}

/// A NotReady health for a kube error, with what to do about it.
pub(crate) fn not_ready(error: &kube::Error, what: &str, cluster_url: &str) -> Health {
    let (reason, message) = match error {
        kube::Error::Api(status) if status.code == 401 => (
            "Unauthorized",
            format!(
                "the API server at {cluster_url} did not accept the credentials while {what}: {}; refresh the kubeconfig",
                status.message
            ),
        ),
        kube::Error::Api(status) if status.code == 403 => (
            "Forbidden",
            format!(
                "the API server at {cluster_url} refused {what}: {}; grant get, list and watch on it",
                status.message
            ),
        ),
        kube::Error::Api(status) if status.code == 404 => (
            "KindNotFound",
            format!(
                "the API server at {cluster_url} does not serve it ({what}): {}; check spec.resources",
                status.message
            ),
        ),
        kube::Error::Discovery(e) => (
            "KindNotFound",
            format!("{what} at {cluster_url}: {e}; check spec.resources apiVersion and kind"),
        ),
        kube::Error::Api(status) => (
            "ApiServerError",
            format!(
                "the API server at {cluster_url} failed {what}: {} (code {}); retrying",
                status.message, status.code
            ),
        ),
        other => (
            "ApiServerUnreachable",
            format!(
                "cannot reach the API server at {cluster_url} ({what}): {other}; check that it is up and that the kubeconfig points at it; retrying"
            ),
        ),
    };
    Health::NotReady {
        reason: reason.to_string(),
        message,
    }
}

/// NotReady while no client configuration can be read: from pilotlight's
/// `--kubeconfig` when it was `given`, else by kube's inference.
pub(crate) fn missing_kubeconfig(error: &dyn std::fmt::Display, given: bool) -> Health {
    let message = if given {
        format!("cannot read pilotlight's --kubeconfig ({error}); retrying")
    } else {
        format!(
            "no Kubernetes configuration found ({error}): pass pilotlight --kubeconfig, set KUBECONFIG or write ~/.kube/config, or run pilotlight inside a cluster; retrying"
        )
    };
    Health::NotReady {
        reason: "KubeconfigMissing".to_string(),
        message,
    }
}
