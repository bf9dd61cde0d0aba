//! What the two runtimes of one machine share: the instance set of a
//! revision, its readiness probes, crash restarts and the instances' output.
//!
//! A runtime says only how one instance starts and stops, through
//! [`Launcher`] and [`Launched`]: the process runtime spawns children, the
//! container runtime creates containers. Everything else, the same for both,
//! lives here:
//! - each deployment has one background task, the [`reconciler`], that owns
//!   the instance set. [`Deployment::scale`] only writes the wanted count into
//!   a watch channel, so it never blocks the autoscaler; the reconciler runs
//!   [`Launcher::prepare`] once (pulling an image happens when the revision
//!   is made, not on its first request), starts instances (all at once, not
//!   one after another), restarts crashed ones after a backoff, drains and
//!   stops surplus ones, and publishes the ready ones as endpoints;
//! - [`instance`] takes one instance from launch through readiness to stop;
//! - [`readiness`] probes fast while a request waits at zero;
//! - [`output`] prints what instances write, a line at a time, with a short
//!   prefix that names the instance.

mod instance;
pub(crate) mod output;
mod readiness;
mod reconciler;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use super::config::ConfigObjects;
use super::{
    CannotRun, Deployment, DeploymentStatus, Endpoint, PodSpec, RuntimeCondition, StartState,
    Workload, WorkloadKind,
};
use crate::api::ObjectKey;

/// A workload as the local runtimes run it: its template converted to a
/// [`PodSpec`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LocalWorkload {
    pub service: ObjectKey,
    pub revision: String,
    pub pod: PodSpec,
    pub drain_timeout: Duration,
}

impl LocalWorkload {
    /// `namespace/revision`: the `revision` label of its instances'
    /// metrics, as the request metrics and instance gauges have it, so a
    /// dashboard joins them on one value.
    pub(crate) fn metric_label(&self) -> String {
        format!("{}/{}", self.service.namespace, self.revision)
    }

    /// Converts; a template that cannot run on one machine is refused with
    /// its field.
    pub(crate) fn of(workload: &Workload) -> Result<LocalWorkload, CannotRun> {
        let mut pod =
            PodSpec::from_template(&workload.template).map_err(|e| CannotRun(e.to_string()))?;
        if workload.kind == WorkloadKind::Daemon {
            // Nothing listens: no port to give it, none to probe; it is
            // ready while it runs.
            for container in &mut pod.containers {
                container.port = None;
                container.readiness = None;
            }
        }
        Ok(LocalWorkload {
            service: workload.service.clone(),
            revision: workload.revision.clone(),
            pod,
            drain_timeout: workload.drain_timeout,
        })
    }
}

/// The reason of a revision whose environment or volumes name a Secret,
/// ConfigMap or key that is not loaded (Kubernetes' word for it).
pub(crate) const CONFIG_ERROR: &str = "CreateContainerConfigError";

/// How the local runtimes stop and restart instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalConfig {
    /// How long an instance may take to exit after SIGTERM before SIGKILL.
    pub stop_grace: Duration,
    /// The wait before restarting after the first crash; it doubles with each
    /// further crash.
    pub restart_backoff_initial: Duration,
    /// The longest wait before a restart.
    pub restart_backoff_max: Duration,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            stop_grace: Duration::from_secs(10),
            restart_backoff_initial: Duration::from_secs(1),
            restart_backoff_max: Duration::from_secs(30),
        }
    }
}

/// Starts instances of one workload.
///
/// Before the first instance starts, the deployment checks ([`Launcher::check`])
/// and prepares ([`Launcher::prepare`]) once; a failure holds instances
/// back, shows in status, and is tried again with backoff (and at once when
/// the loaded Secrets and ConfigMaps change).
#[async_trait::async_trait]
pub(crate) trait Launcher: Send + Sync + 'static {
    /// What can be checked at once, such as the Secrets and ConfigMaps the
    /// pod reads being loaded.
    fn check(&self) -> Result<(), RuntimeCondition> {
        Ok(())
    }

    /// Whether [`Launcher::prepare`] has work to do.
    fn prepares(&self) -> bool {
        false
    }

    /// Gets what takes time (the container runtime finds its engine and
    /// pulls the images). Progress goes to `report`.
    async fn prepare(&self, report: &ConditionReport) -> Result<(), RuntimeCondition> {
        let _ = report;
        Ok(())
    }

    /// Starts one instance and returns once it runs (not once it is ready).
    /// Errors are worded for the revision's status.
    async fn launch(&self, instance: &Arc<str>) -> Result<Box<dyn Launched>, String>;
}

/// A running instance.
#[async_trait::async_trait]
pub(crate) trait Launched: Send + Sync {
    /// Where pilotlight reaches one of the instance's ports: `None` for the
    /// serving port.
    fn address(&self, port: Option<u16>) -> SocketAddr;

    /// Resolves once the instance ended without being asked, with why (exit
    /// code, out of memory, its last output lines). Cancel-safe.
    async fn exited(&mut self) -> String;

    /// Stops it: SIGTERM to everything it runs, SIGKILL after `grace`, then
    /// removes what it made. Returns when it is gone.
    async fn stop(self: Box<Self>, grace: Duration);
}

/// Where [`Launcher::prepare`] reports progress and notes for status.
#[derive(Debug, Clone)]
pub(crate) struct ConditionReport {
    status: Arc<Mutex<DeploymentStatus>>,
}

impl ConditionReport {
    /// A report that no deployment reads: for a job's image pull, whose
    /// progress only the log shows.
    pub(crate) fn detached() -> Self {
        ConditionReport {
            status: Arc::default(),
        }
    }

    pub(crate) fn set(&self, condition: Option<RuntimeCondition>) {
        self.lock().condition = condition;
    }

    /// The images the containers run, for status.
    pub(crate) fn set_images(&self, images: Vec<super::ContainerImage>) {
        self.lock().images = images;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DeploymentStatus> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What the deployment asks of its reconciler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Target {
    replicas: u32,
    shutting_down: bool,
}

/// A revision's instances on this machine. Dropping it stops them in the
/// background, as [`Deployment::shutdown`] does.
pub(crate) struct LocalDeployment {
    target: watch::Sender<Target>,
    endpoints: watch::Receiver<Arc<[Endpoint]>>,
    /// Written by the reconciler after every change, so `status` never waits.
    status: Arc<Mutex<DeploymentStatus>>,
    /// Becomes true once the reconciler has stopped every instance.
    finished: watch::Receiver<bool>,
    start_state: watch::Receiver<StartState>,
}

impl LocalDeployment {
    /// Starts the deployment's reconciler on the current async runtime.
    /// `runtime` names the runtime in errors.
    /// A failed [`Launcher::prepare`] is tried again at once when
    /// `objects` changes (a missing Secret was added), else after a backoff.
    pub(crate) fn start(
        runtime: &'static str,
        workload: Arc<LocalWorkload>,
        launcher: Arc<dyn Launcher>,
        config: LocalConfig,
        objects: watch::Receiver<Arc<ConfigObjects>>,
    ) -> Result<Self, CannotRun> {
        // The reconciler is a task; deploy is called from the control plane,
        // which always runs inside the async runtime.
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            CannotRun(format!(
                "the {runtime} runtime can only deploy from inside pilotlight's async runtime"
            ))
        })?;
        let (target, target_rx) = watch::channel(Target::default());
        let (endpoints_tx, endpoints) = watch::channel(Arc::from(Vec::new()));
        let (finished_tx, finished) = watch::channel(false);
        let (start_state_tx, start_state) = watch::channel(StartState::Preparing);
        let status = Arc::new(Mutex::new(DeploymentStatus::default()));
        let links = reconciler::Links {
            target: target_rx,
            endpoints: endpoints_tx,
            status: status.clone(),
            start_state: start_state_tx,
            objects,
        };
        let reconciler = reconciler::Reconciler::new(workload, launcher, config, links);
        handle.spawn(async move {
            reconciler.run().await;
            let _ = finished_tx.send(true);
        });
        Ok(LocalDeployment {
            target,
            endpoints,
            status,
            finished,
            start_state,
        })
    }
}

#[async_trait::async_trait]
impl Deployment for LocalDeployment {
    fn scale(&self, replicas: u32) {
        self.target.send_if_modified(|target| {
            let changed = target.replicas != replicas;
            target.replicas = replicas;
            changed
        });
    }

    fn endpoints(&self) -> watch::Receiver<Arc<[Endpoint]>> {
        self.endpoints.clone()
    }

    fn status(&self) -> DeploymentStatus {
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        status.desired = self.target.borrow().replicas;
        status
    }

    fn start_state(&self) -> watch::Receiver<StartState> {
        self.start_state.clone()
    }

    async fn retire(&self) {
        // Nothing of a local instance outlives it.
        self.shutdown().await;
    }

    async fn shutdown(&self) {
        self.target
            .send_modify(|target| target.shutting_down = true);
        let mut finished = self.finished.clone();
        // An error means the reconciler is gone, so nothing is left to wait for.
        let _ = finished.wait_for(|done| *done).await;
    }
}

/// Checks that every Secret, ConfigMap and key the pod reads is loaded
/// (Kubernetes' `CreateContainerConfigError` otherwise): both local
/// runtimes' [`Launcher::check`].
pub(crate) fn check_config(
    workload: &LocalWorkload,
    objects: &watch::Receiver<Arc<ConfigObjects>>,
) -> Result<(), RuntimeCondition> {
    let objects = objects.borrow().clone();
    super::config::check(&workload.pod, &objects, &workload.service.namespace)
        .map_err(|message| RuntimeCondition::failed(CONFIG_ERROR, message))
}

/// A port that was free a moment ago: bind port 0 and let it go. Another
/// process could take it in between; the instance then fails and restarts
/// on a new port.
pub(crate) fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}
