//! The process runtime: runs each instance of a revision as a local child
//! process, the embedded default that needs neither Docker nor Kubernetes.
//!
//! Every deployment has one background task, the [`reconciler`], that owns
//! the instance set. [`Deployment::scale`] only writes the wanted count into a
//! watch channel, so it never blocks the autoscaler; the reconciler starts
//! instances (all at once, not one after another), restarts crashed ones
//! after a backoff, drains and stops surplus ones, and publishes the ready
//! ones as endpoints.
//!
//! Children never outlive pilotlight: each runs in its own process group, is
//! killed when pilotlight dies (`PR_SET_PDEATHSIG`), when its handle is dropped
//! (`kill_on_drop`), and by [`Deployment::shutdown`].

mod instance;
mod logs;
mod readiness;
mod reconciler;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use super::{CannotRun, Deployment, DeploymentStatus, Endpoint, Runtime, Workload};

/// How the process runtime stops and restarts instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessConfig {
    /// How long an instance may take to exit after SIGTERM before SIGKILL.
    pub stop_grace: Duration,
    /// The wait before restarting after the first crash; it doubles with each
    /// further crash.
    pub restart_backoff_initial: Duration,
    /// The longest wait before a restart.
    pub restart_backoff_max: Duration,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        ProcessConfig {
            stop_grace: Duration::from_secs(10),
            restart_backoff_initial: Duration::from_secs(1),
            restart_backoff_max: Duration::from_secs(30),
        }
    }
}

/// Runs workloads as local processes: `command` plus `args`, with `PORT` and
/// Knative's `K_*` variables set.
#[derive(Debug, Clone, Default)]
pub struct ProcessRuntime {
    config: ProcessConfig,
}

impl ProcessRuntime {
    pub fn new(config: ProcessConfig) -> Self {
        ProcessRuntime { config }
    }
}

impl Runtime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    fn deploy(&self, workload: Workload) -> Result<Arc<dyn Deployment>, CannotRun> {
        check_runnable(&workload)?;
        // The reconciler is a task; deploy is called from the control plane,
        // which always runs inside the async runtime.
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            CannotRun(
                "the process runtime can only deploy from inside pilotlight's async runtime".into(),
            )
        })?;
        Ok(Arc::new(ProcessDeployment::start(
            &runtime,
            workload,
            self.config,
        )))
    }
}

/// Refuses workloads that name only an image (a local process needs a
/// command) or take environment values from the cluster.
fn check_runnable(workload: &Workload) -> Result<(), CannotRun> {
    if let Some((index, name)) = workload.container.env_from_cluster.first() {
        return Err(CannotRun(format!(
            "spec.template.spec.containers[0].env[{index}].valueFrom ({name}) is not available \
             to local processes; give the value inline, or run pilotlight with the Kubernetes \
             runtime"
        )));
    }
    if !workload.container.command.is_empty() {
        return Ok(());
    }
    let image = match &workload.container.image {
        Some(image) => format!("has image '{image}' and no command"),
        None => "has no command".to_owned(),
    };
    Err(CannotRun(format!(
        "containers[0] {image}: the process runtime runs commands, not images; \
         add command (and args) to run it as a local process, \
         or run pilotlight with the Kubernetes runtime to run the image"
    )))
}

/// What the deployment asks of its reconciler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Target {
    replicas: u32,
    shutting_down: bool,
}

/// A revision's instances as local processes. Dropping it stops them in the
/// background, as [`Deployment::shutdown`] does.
pub struct ProcessDeployment {
    target: watch::Sender<Target>,
    endpoints: watch::Receiver<Arc<[Endpoint]>>,
    /// Written by the reconciler after every change, so `status` never waits.
    status: Arc<Mutex<DeploymentStatus>>,
    /// Becomes true once the reconciler has stopped every instance.
    finished: watch::Receiver<bool>,
}

impl ProcessDeployment {
    fn start(runtime: &tokio::runtime::Handle, workload: Workload, config: ProcessConfig) -> Self {
        let (target, target_rx) = watch::channel(Target::default());
        let (endpoints_tx, endpoints) = watch::channel(Arc::from(Vec::new()));
        let (finished_tx, finished) = watch::channel(false);
        let status = Arc::new(Mutex::new(DeploymentStatus::default()));
        let reconciler = reconciler::Reconciler::new(
            Arc::new(workload),
            config,
            target_rx,
            endpoints_tx,
            status.clone(),
        );
        runtime.spawn(async move {
            reconciler.run().await;
            let _ = finished_tx.send(true);
        });
        ProcessDeployment {
            target,
            endpoints,
            status,
            finished,
        }
    }
}

#[async_trait::async_trait]
impl Deployment for ProcessDeployment {
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

    async fn retire(&self) {
        // Nothing of a process outlives it.
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

#[cfg(test)]
mod tests;
