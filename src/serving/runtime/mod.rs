//! Runtimes run a revision's instances.
//!
//! The router, activator and autoscaler see a runtime only through
//! [`Runtime`] and [`Deployment`]: the autoscaler sets a replica count
//! ([`Deployment::scale`]) and the activator forwards to the ready
//! [`Endpoint`]s the deployment publishes. That is the same contract as a
//! Kubernetes Deployment plus its EndpointSlices, so a Kubernetes runtime fits
//! behind it without touching either.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::{Notify, watch};

use crate::api::ObjectKey;
pub(crate) use crate::api::pod::{ContainerSpec, PodSpec, Probe};
use crate::api::service::RevisionTemplate;
use crate::serving::upstream::IdleConnections;

pub(crate) mod config;
pub mod container;
pub mod kubernetes;
pub(crate) mod local;
pub(crate) mod process;
mod select;

pub(crate) use select::LocalRuntimes;

/// One revision's workload, as a runtime needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// The Service's namespace and name (`K_SERVICE`; also `K_CONFIGURATION`).
    pub service: ObjectKey,
    /// The revision's name (`K_REVISION`), such as `hello-00001`.
    pub revision: String,
    /// `spec.template` as the user wrote it (labels, annotations and every
    /// pod field); each runtime reads what it runs from it.
    pub template: RevisionTemplate,
    /// How long a stopping instance may take to finish its in-flight requests
    /// before it is sent SIGTERM (the revision's `timeoutSeconds`).
    pub drain_timeout: std::time::Duration,
    /// Whether its instances serve requests.
    pub kind: WorkloadKind,
}

/// What a workload's instances are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WorkloadKind {
    /// A revision: instances serve requests on a port (`PORT`, the `K_*`
    /// variables) and are ready once their readiness probes pass.
    #[default]
    Revision,
    /// A long-running program with no port (a ContainerSource's pod): no
    /// `PORT`, no probes, ready while it runs; in Kubernetes a Deployment
    /// with no Service. `service` is then the owning object, `revision`
    /// the name of this version of its pod template.
    Daemon,
}

/// The runtime refused a workload it cannot run; the message goes to the
/// revision's status as is.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct CannotRun(pub String);

/// Runs workloads. One per `pilotlight run`.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// The short name of the runtime that runs `workload` (`process`,
    /// `container`, `kubernetes`), for logs and the revision's status.
    fn name_for(&self, workload: &Workload) -> &'static str;

    /// Prepares to run a revision with zero instances. Fails when this runtime
    /// can never run the workload (for example a process runtime given an image
    /// and no command).
    fn deploy(&self, workload: Workload) -> Result<Arc<dyn Deployment>, CannotRun>;

    /// pilotlight exits, after its deployments were shut down (or gave up
    /// draining): removes what must not outlive it.
    async fn exit(&self) {}
}

/// A revision's set of instances, scaled by the autoscaler.
#[async_trait::async_trait]
pub trait Deployment: Send + Sync + 'static {
    /// Sets how many instances should run. Returns at once; instances start or
    /// stop in the background. Scaling down picks idle instances first, takes
    /// them out of [`Deployment::endpoints`], lets their in-flight requests
    /// finish ([`InstanceLoad::wait_idle`]), then stops them.
    fn scale(&self, replicas: u32);

    /// Like [`Deployment::scale`], for a request that waits here with no
    /// instance to go to: where several pilotlight replicas share the
    /// deployment, a replica that does not decide its scale may still wake
    /// it from zero for such a request (and only then).
    fn wake(&self, replicas: u32) {
        self.scale(replicas);
    }

    /// The instances that are ready for requests. Changes whenever one becomes
    /// ready or goes away.
    fn endpoints(&self) -> watch::Receiver<Arc<[Endpoint]>>;

    /// Counts and the last failure, for the revision's status.
    fn status(&self) -> DeploymentStatus;

    /// Whether instances can start: the activator answers at once while
    /// they cannot until something is fixed, instead of holding requests
    /// until they time out, and a revision at zero is Ready only once they
    /// can.
    fn start_state(&self) -> watch::Receiver<StartState> {
        watch::channel(StartState::Ready).1
    }

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
    /// The count the platform holds for the deployment, where others can
    /// change it: a Kubernetes Deployment's `spec.replicas`, which another
    /// pilotlight replica raises from zero for a request it holds. None
    /// where only this process scales (the local runtimes: `desired`).
    pub spec_replicas: Option<u32>,
    /// Instances that exist (starting, ready or stopping).
    pub actual: u32,
    /// Instances that are ready.
    pub ready: u32,
    /// Restarts after crashes since the deployment was created, where the
    /// runtime counts them (the local runtimes; 0 for Deployments).
    pub restarts: u32,
    /// Why the last instance failed (exit code and last output lines),
    /// cleared once an instance becomes ready again.
    pub last_failure: Option<String>,
    /// What holds instances back, or a note on how they run: the image is
    /// being pulled, its pull failed, no container engine answers.
    pub condition: Option<RuntimeCondition>,
    /// The image each container runs, by digest once known (Knative's
    /// `status.containerStatuses`).
    pub images: Vec<ContainerImage>,
}

/// Whether a deployment's instances can start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartState {
    /// Not yet: what they need is being prepared (an image is pulled).
    Preparing,
    /// They start when asked.
    Ready,
    /// Not until something is fixed (an image that cannot be pulled, no
    /// engine, a missing Secret; tried again meanwhile): why.
    Blocked(Arc<str>),
}

/// A condition a runtime reports for a revision, beside its instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeCondition {
    pub state: ConditionState,
    /// A CamelCase word, as Kubernetes reasons are (`ImagePullFailed`).
    pub reason: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionState {
    /// Still getting ready (an image is being pulled): the revision is
    /// `Ready=Unknown`.
    Pending,
    /// Instances cannot start until this is fixed (retried with backoff):
    /// the revision is `Ready=False` with this reason.
    Failed,
    /// Instances run, with something the user should know (the image could
    /// not be pulled and the local copy runs).
    Note,
}

impl RuntimeCondition {
    pub(crate) fn pending(reason: &'static str, message: impl Into<String>) -> Self {
        RuntimeCondition {
            state: ConditionState::Pending,
            reason,
            message: message.into(),
        }
    }

    pub(crate) fn failed(reason: &'static str, message: impl Into<String>) -> Self {
        RuntimeCondition {
            state: ConditionState::Failed,
            reason,
            message: message.into(),
        }
    }

    pub(crate) fn note(reason: &'static str, message: impl Into<String>) -> Self {
        RuntimeCondition {
            state: ConditionState::Note,
            reason,
            message: message.into(),
        }
    }
}

/// `status.containerStatuses[]` of a Knative Revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerImage {
    pub name: String,
    /// `repository@sha256:...`, or the image id when it has no repository
    /// digest (an image loaded from a file).
    pub image_digest: String,
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
    /// The proxy's kept-alive connections to the instance: they live and
    /// go with it, so a stopped instance's connections close with it and
    /// a request never looks them up by address.
    connections: Arc<IdleConnections>,
    /// A request that waited for this instance's cold start has had its
    /// first byte timed: the start's `first_byte` phase is timed once.
    first_byte_timed: AtomicBool,
}

impl InstanceLoad {
    /// True for the first caller only: the request whose first byte ends
    /// this instance's cold start.
    pub(crate) fn claim_first_byte(&self) -> bool {
        !self.first_byte_timed.swap(true, Ordering::Relaxed)
    }

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
    pub(crate) fn end(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// The proxy's idle connections to the instance.
    pub(crate) fn idle_connections(&self) -> &Arc<IdleConnections> {
        &self.connections
    }

    /// Resolves once no request is in flight.
    pub(crate) async fn wait_idle(&self) {
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
