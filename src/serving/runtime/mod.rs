//! Runtimes run a revision's instances.
//!
//! The router, activator and autoscaler see a runtime only through
//! [`Runtime`] and [`Deployment`]: the autoscaler sets a replica count
//! ([`Deployment::scale`]) and the activator forwards to the ready
//! [`Endpoint`]s the deployment publishes. That is the same contract as a
//! Kubernetes Deployment plus its EndpointSlices, so a Kubernetes runtime fits
//! behind it without touching either.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::{Notify, watch};

use crate::control::ObjectKey;

pub mod kubernetes;
pub mod process;

/// One revision's workload, as a runtime needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// The Service's namespace and name (`K_SERVICE`; also `K_CONFIGURATION`).
    pub service: ObjectKey,
    /// The revision's name (`K_REVISION`), such as `hello-00001`.
    pub revision: String,
    pub container: ContainerSpec,
    /// How long a stopping instance may take to finish its in-flight requests
    /// before it is sent SIGTERM (the revision's `timeoutSeconds`).
    pub drain_timeout: std::time::Duration,
    /// `spec.template` as the user wrote it (labels, annotations and every
    /// pod field), for runtimes that run pods.
    pub template: serde_json::Value,
}

/// `spec.template.spec.containers[0]`, reduced to what runtimes use.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContainerSpec {
    pub image: Option<String>,
    /// `command` then `args`; empty when the container has only an image.
    pub command: Vec<String>,
    pub args: Vec<String>,
    /// `env` with inline values, in order (later entries win, as in
    /// Kubernetes).
    pub env: Vec<(String, String)>,
    /// `env` entries whose value comes from the cluster (`valueFrom`: a
    /// Secret, a ConfigMap, a field of the pod) as (index in `env`, name);
    /// they are not in [`ContainerSpec::env`].
    pub env_from_cluster: Vec<(usize, String)>,
    pub working_dir: Option<PathBuf>,
    /// `ports[0].containerPort`: a hint; local processes get a free `PORT`.
    pub container_port: Option<u16>,
    pub readiness: Probe,
}

/// How a runtime decides an instance is ready.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Probe {
    /// Ready once a TCP connection to the port succeeds (Knative's default).
    #[default]
    TcpDefault,
    /// `readinessProbe.tcpSocket`; `port` None means the instance's port.
    Tcp { port: Option<u16> },
    /// `readinessProbe.httpGet`: ready on a 2xx or 3xx answer.
    Http {
        path: String,
        port: Option<u16>,
        headers: Vec<(String, String)>,
    },
}

/// The runtime refused a workload it cannot run; the message goes to the
/// revision's status as is.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct CannotRun(pub String);

/// Runs workloads. One per `pilotlight run`.
pub trait Runtime: Send + Sync + 'static {
    /// A short name for logs and status, such as `process`.
    fn name(&self) -> &'static str;

    /// Prepares to run a revision with zero instances. Fails when this runtime
    /// can never run the workload (for example a process runtime given an image
    /// and no command).
    fn deploy(&self, workload: Workload) -> Result<Arc<dyn Deployment>, CannotRun>;
}

/// A revision's set of instances, scaled by the autoscaler.
#[async_trait::async_trait]
pub trait Deployment: Send + Sync + 'static {
    /// Sets how many instances should run. Returns at once; instances start or
    /// stop in the background. Scaling down picks idle instances first, takes
    /// them out of [`Deployment::endpoints`], lets their in-flight requests
    /// finish ([`InstanceLoad::wait_idle`]), then stops them.
    fn scale(&self, replicas: u32);

    /// The instances that are ready for requests. Changes whenever one becomes
    /// ready or goes away.
    fn endpoints(&self) -> watch::Receiver<Arc<[Endpoint]>>;

    /// Counts and the last failure, for the revision's status.
    fn status(&self) -> DeploymentStatus;

    /// pilotlight is stopping: lets go of the instances. Local processes
    /// cannot outlive pilotlight, so they drain and stop (SIGTERM, then
    /// SIGKILL after the grace period); a Kubernetes Deployment keeps running
    /// for the next leader. Returns when done.
    async fn shutdown(&self);

    /// The revision is gone for good (its Service was deleted, or it was
    /// retired): stops its instances and removes whatever the runtime made
    /// for it. Returns when done.
    async fn retire(&self);
}

/// A ready instance.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Unique within the revision, such as `hello-00001-1`.
    pub id: Arc<str>,
    pub address: SocketAddr,
    /// Shared with the proxy, which counts requests in flight to it.
    pub load: Arc<InstanceLoad>,
}

/// What a [`Deployment`] reports for status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeploymentStatus {
    /// The replica count last asked for.
    pub desired: u32,
    /// Instances that exist (starting, ready or stopping).
    pub actual: u32,
    /// Instances that are ready.
    pub ready: u32,
    /// Restarts after crashes since the deployment was created, where the
    /// runtime counts them (the process runtime; 0 for Deployments).
    pub restarts: u32,
    /// Why the last instance failed (exit code and last stderr lines), cleared
    /// once an instance becomes ready again.
    pub last_failure: Option<String>,
}

/// Requests in flight to one instance.
///
/// The proxy calls [`InstanceLoad::try_begin`] before sending to the instance
/// and [`InstanceLoad::end`] after the response body is done. A runtime that
/// stops the instance first calls [`InstanceLoad::start_draining`] and then
/// waits for [`InstanceLoad::wait_idle`]: after that no new request can begin,
/// because `try_begin` re-checks the flag after counting itself (both sides
/// use sequentially consistent operations, so one of them sees the other).
#[derive(Debug, Default)]
pub struct InstanceLoad {
    in_flight: AtomicUsize,
    draining: AtomicBool,
    idle: Notify,
}

impl InstanceLoad {
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Counts a request; false (and nothing counted) if the instance is draining.
    pub fn try_begin(&self) -> bool {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.draining.load(Ordering::SeqCst) {
            self.end();
            return false;
        }
        true
    }

    /// Ends a request counted by a successful [`InstanceLoad::try_begin`].
    pub fn end(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Resolves once no request is in flight.
    pub async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            idle.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn draining_refuses_new_requests_and_waits_for_old_ones() {
        let load = Arc::new(InstanceLoad::default());
        assert!(load.try_begin());
        load.start_draining();
        assert!(!load.try_begin());
        assert_eq!(load.in_flight(), 1);
        let waiter = tokio::spawn({
            let load = load.clone();
            async move { load.wait_idle().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        load.end();
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("wait_idle returns once idle")
            .expect("no panic");
    }
}
