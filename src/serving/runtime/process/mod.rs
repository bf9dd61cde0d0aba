//! The process runtime: runs each instance of a revision as local child
//! processes (the serving container's `command` with `PORT` set, and each
//! sidecar's beside it), the embedded default that needs neither a
//! container engine nor Kubernetes.
//!
//! Children never outlive pilotlight: each runs in its own process group,
//! which is killed when pilotlight dies (by the [`guardian`], or
//! `PR_SET_PDEATHSIG` without one), when its handle is dropped
//! (`kill_on_drop`), and by [`Deployment::shutdown`].

mod guardian;
pub(crate) mod launcher;

use std::sync::Arc;

use tokio::sync::watch;

use super::config::ConfigObjects;
use super::local::{LocalConfig, LocalDeployment, LocalWorkload};
use super::{CannotRun, Deployment, Runtime, Workload};
use crate::api::pod::RUNTIME_ANNOTATION;

/// Runs workloads as local processes: `command` plus `args`, with `PORT` and
/// Knative's `K_*` variables set.
#[derive(Debug, Clone)]
pub(crate) struct ProcessRuntime {
    config: LocalConfig,
    /// The loaded Secrets and ConfigMaps, read when an instance starts.
    objects: watch::Receiver<Arc<ConfigObjects>>,
}

impl ProcessRuntime {
    pub(crate) fn new(config: LocalConfig, objects: watch::Receiver<Arc<ConfigObjects>>) -> Self {
        ProcessRuntime { config, objects }
    }
}

#[async_trait::async_trait]
impl Runtime for ProcessRuntime {
    fn name_for(&self, _workload: &Workload) -> &'static str {
        "process"
    }

    fn deploy(&self, workload: Workload) -> Result<Arc<dyn Deployment>, CannotRun> {
        let workload = Arc::new(LocalWorkload::of(&workload)?);
        check_runnable(&workload)?;
        let launcher = Arc::new(launcher::ProcessLauncher::new(
            workload.clone(),
            self.objects.clone(),
        ));
        Ok(Arc::new(LocalDeployment::start(
            "process",
            workload,
            launcher,
            self.config,
            self.objects.clone(),
        )?))
    }
}

/// Refuses workloads a process cannot run: a container without a command,
/// or one that mounts volumes (a process has no file system of its own to
/// mount them in).
fn check_runnable(workload: &LocalWorkload) -> Result<(), CannotRun> {
    for container in &workload.pod.containers {
        let field = &container.field;
        if container.command.is_empty() {
            let has = match &container.image {
                Some(image) => format!("has image '{image}' and no command"),
                None => "has no command".to_owned(),
            };
            return Err(CannotRun(format!(
                "{field} {has}: the process runtime runs commands, not images; add command \
                 (and args) to run it as a local process, or remove the annotation \
                 {RUNTIME_ANNOTATION}: process to run the image in a container engine"
            )));
        }
        if let Some(mount) = container.volume_mounts.first() {
            return Err(CannotRun(format!(
                "{field}.volumeMounts: a process cannot mount volume '{}' at {}; run the \
                 revision in a container engine (give the container an image), or read the \
                 values through env",
                mount.name, mount.mount_path
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
