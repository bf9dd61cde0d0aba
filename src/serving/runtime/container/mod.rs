//! The container runtime: runs each instance of a revision as containers in
//! a Docker or Podman engine on this machine, through the Docker Engine API
//! ([`engine`]). Images are pulled when the revision is made ([`image`]),
//! so a cold start is a container start; an instance is the serving
//! container plus its sidecars in one network namespace, as a pod
//! ([`launcher`], [`spec`]).
//!
//! The instance set, readiness, restarts and output are the local runtimes'
//! shared machinery ([`super::local`]).

pub mod engine;
pub(crate) mod image;
pub(crate) mod launcher;
pub(crate) mod spec;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;

use super::config::ConfigObjects;
use super::local::{LocalConfig, LocalDeployment, LocalWorkload};
use super::{CannotRun, Deployment, Runtime, Workload};
use crate::api::pod::{ContainerNetwork, RUNTIME_ANNOTATION};
use engine::EngineConnector;

/// The reasons of a revision's Ready condition that this runtime gives.
mod reason {
    /// No engine answers (False).
    pub(crate) const ENGINE_UNAVAILABLE: &str = "ContainerEngineUnavailable";
    /// An image is being pulled (Unknown).
    pub(crate) const IMAGE_PULLING: &str = "ImagePulling";
    /// An image cannot be pulled, nor is it on this machine (False).
    pub(crate) const IMAGE_PULL_FAILED: &str = "ImagePullFailed";
    /// An image could not be pulled and the local copy runs (True, a note).
    pub(crate) const IMAGE_NOT_PULLED: &str = "ImageNotPulled";
}

/// How the container runtime finds its engine and networks its instances.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerConfig {
    /// The engine's socket (`--container-engine`); None to look for one.
    pub engine: Option<String>,
    /// The network of instances whose template does not choose one
    /// (`--container-network`).
    pub network: ContainerNetwork,
}

/// Runs workloads as containers.
pub(crate) struct ContainerRuntime {
    connector: Arc<EngineConnector>,
    objects: watch::Receiver<Arc<ConfigObjects>>,
    network: ContainerNetwork,
    /// Where instances' volume folders go.
    volumes_dir: PathBuf,
    local: LocalConfig,
}

impl ContainerRuntime {
    /// The containers it makes are labelled with `data_dir`, so that the next
    /// run with the same folder can remove what a killed run left behind.
    pub(crate) fn new(
        config: ContainerConfig,
        local: LocalConfig,
        data_dir: &Path,
        objects: watch::Receiver<Arc<ConfigObjects>>,
    ) -> Self {
        let owner = std::fs::canonicalize(data_dir)
            .unwrap_or_else(|_| data_dir.to_owned())
            .to_string_lossy()
            .into_owned();
        let volumes_dir = data_dir.join("serving").join("volumes");
        // Folders of instances that a killed run could not remove (they may
        // hold Secrets' files).
        let _ = std::fs::remove_dir_all(&volumes_dir);
        let marker = data_dir.join("serving").join("container-engine");
        ContainerRuntime {
            connector: Arc::new(EngineConnector::new(config.engine, owner).with_marker(marker)),
            objects,
            network: config.network,
            volumes_dir,
            local,
        }
    }

    /// The engine connection, shared with the job runner: one connection,
    /// and one cleanup of what a killed run left behind.
    pub(crate) fn connector(&self) -> Arc<EngineConnector> {
        self.connector.clone()
    }

    /// The network of instances whose template does not choose one.
    pub(crate) fn network(&self) -> ContainerNetwork {
        self.network
    }

    /// Connects to the engine now, in the background, when this data folder
    /// ran containers before: the containers of a killed run go at start, not
    /// when the first image revision needs the engine. No engine is no error
    /// here.
    pub(crate) fn connect_in_background(&self) {
        if !self.connector.used_before() {
            return;
        }
        let connector = self.connector.clone();
        tokio::spawn(async move {
            if let Err(why) = connector.engine().await {
                tracing::debug!("no container engine yet: {why}");
            }
        });
    }
}

#[async_trait::async_trait]
impl Runtime for ContainerRuntime {
    fn name_for(&self, _workload: &Workload) -> &'static str {
        "container"
    }

    fn deploy(&self, workload: Workload) -> Result<Arc<dyn Deployment>, CannotRun> {
        let workload = Arc::new(LocalWorkload::of(&workload)?);
        check_runnable(&workload)?;
        let launcher = Arc::new(launcher::ContainerLauncher::new(
            workload.clone(),
            self.connector.clone(),
            self.objects.clone(),
            self.network,
            self.volumes_dir.clone(),
        ));
        Ok(Arc::new(LocalDeployment::start(
            "container",
            workload,
            launcher,
            self.local,
            self.objects.clone(),
        )?))
    }

    /// Removes every container still there (an instance that was still
    /// draining when pilotlight gave up waiting), so none outlives it.
    async fn exit(&self) {
        self.connector.remove_all().await;
    }
}

/// Every container needs an image.
fn check_runnable(workload: &LocalWorkload) -> Result<(), CannotRun> {
    for container in &workload.pod.containers {
        if container.image.is_none() {
            return Err(CannotRun(format!(
                "{} has no image: the container runtime runs images; give it one, or set the \
                 annotation {RUNTIME_ANNOTATION}: process to run its command as a local process",
                container.field
            )));
        }
    }
    Ok(())
}
