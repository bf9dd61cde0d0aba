//! Starts an instance's containers and stops them.
//!
//! An instance is what Kubernetes calls a pod: the serving container, which
//! publishes its port (and every probed port) on 127.0.0.1, and the
//! sidecars, which join its network namespace. Each instance also gets a
//! folder with the files of its `secret`, `configMap` and `projected`
//! volumes and its `emptyDir` volumes, removed with it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::query_parameters::{
    CreateContainerOptions, LogsOptions, RemoveContainerOptions, StopContainerOptions,
    WaitContainerOptions,
};
use futures::StreamExt as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::engine::{Engine, EngineConnector};
use super::image::{self, ImageRef, engine_message};
use super::reason;
use super::spec::{self, InstancePlan};
use crate::api::pod::{ContainerNetwork, VolumeSource};
use crate::serving::runtime::config::{self, ConfigObjects};
use crate::serving::runtime::local::output::{Output, Stream};
use crate::serving::runtime::local::{
    ConditionReport, Launched, Launcher, LocalWorkload, check_config, free_port,
};
use crate::serving::runtime::{ContainerImage, RuntimeCondition};

/// How long a crash report waits for the last lines of output.
const DRAIN_WAIT: Duration = Duration::from_millis(500);

pub(super) struct ContainerLauncher {
    workload: Arc<LocalWorkload>,
    connector: Arc<EngineConnector>,
    objects: watch::Receiver<Arc<ConfigObjects>>,
    /// The network of instances whose template does not choose one.
    network: ContainerNetwork,
    /// Where instances' volume folders go.
    volumes_dir: PathBuf,
    /// Set by `prepare`: the engine and each container's image id.
    prepared: Mutex<Option<(Arc<Engine>, Vec<String>)>>,
}

impl ContainerLauncher {
    pub(super) fn new(
        workload: Arc<LocalWorkload>,
        connector: Arc<EngineConnector>,
        objects: watch::Receiver<Arc<ConfigObjects>>,
        network: ContainerNetwork,
        volumes_dir: PathBuf,
    ) -> Self {
        ContainerLauncher {
            workload,
            connector,
            objects,
            network,
            volumes_dir,
            prepared: Mutex::new(None),
        }
    }
}

#[async_trait::async_trait]
impl Launcher for ContainerLauncher {
    fn check(&self) -> Result<(), RuntimeCondition> {
        check_config(&self.workload, &self.objects)
    }

    fn prepares(&self) -> bool {
        true
    }

    /// Connects the engine and makes every container's image present.
    async fn prepare(&self, report: &ConditionReport) -> Result<(), RuntimeCondition> {
        let objects = self.objects.borrow().clone();
        let engine = self
            .connector
            .engine()
            .await
            .map_err(|message| RuntimeCondition::failed(reason::ENGINE_UNAVAILABLE, message))?;
        let pod = &self.workload.pod;
        let namespace = &self.workload.service.namespace;
        let mut ids = Vec::with_capacity(pod.containers.len());
        let mut images = Vec::with_capacity(pod.containers.len());
        let mut notes = Vec::new();
        for container in &pod.containers {
            let written = container.image.as_deref().unwrap_or_default();
            let reference = ImageRef::parse(written);
            let credentials = config::registry_credentials(
                &pod.image_pull_secrets,
                &objects,
                namespace,
                &reference.registry,
            )
            .map_err(|message| RuntimeCondition::failed(reason::IMAGE_PULL_FAILED, message))?;
            let prepared = image::prepare(
                &engine,
                &reference,
                container.pull_policy,
                credentials,
                report,
            )
            .await?;
            images.push(ContainerImage {
                name: container.name.clone(),
                image_digest: prepared.digest,
            });
            notes.extend(prepared.offline);
            ids.push(prepared.id);
        }
        report.set_images(images);
        report.set(
            (!notes.is_empty())
                .then(|| RuntimeCondition::note(reason::IMAGE_NOT_PULLED, notes.join("; "))),
        );
        *self.prepared.lock().unwrap_or_else(PoisonError::into_inner) = Some((engine, ids));
        Ok(())
    }

    async fn launch(&self, instance: &Arc<str>) -> Result<Box<dyn Launched>, String> {
        let prepared = self
            .prepared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some((engine, images)) = prepared else {
            return Err(format!(
                "instance {instance}: the images are not prepared yet"
            ));
        };
        let mut starting = Starting {
            docker: engine.docker.clone(),
            instance: instance.clone(),
            created: Vec::new(),
            containers: Vec::new(),
            dir: None,
        };
        match self.start(&mut starting, &engine, &images).await {
            Ok(address) => Ok(Box::new(starting.into_launched(address))),
            Err(failure) => {
                starting.remove().await;
                Err(format!("instance {instance} cannot start: {failure}"))
            }
        }
    }
}

impl ContainerLauncher {
    /// Writes the volumes, then creates and starts the serving container and
    /// the sidecars. What it made is in `starting`, for the caller to remove
    /// on failure.
    async fn start(
        &self,
        starting: &mut Starting,
        engine: &Engine,
        images: &[String],
    ) -> Result<Addresses, String> {
        let workload = &self.workload;
        let pod = &workload.pod;
        let instance = starting.instance.clone();
        let objects = self.objects.borrow().clone();
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let suffix = &suffix[..6];

        let dir = self.volumes_dir.join(format!("{instance}-{suffix}"));
        starting.dir = Some(dir.clone());
        let volume_dirs = write_volumes(workload, &dir, &objects)?;

        let network = pod.network.unwrap_or(self.network);
        let serving = pod.serving_container();
        // None for a daemon's pod: nothing to publish or to send to.
        let serving_port = serving.port;
        let container_port = serving_port.unwrap_or(crate::api::pod::DEFAULT_PORT);
        let (port, published) = match network {
            ContainerNetwork::Host => (
                free_port().map_err(|e| format!("no free port: {e}"))?,
                BTreeMap::new(),
            ),
            ContainerNetwork::Bridge => (container_port, publish(workload, serving_port)?),
        };
        let owner = self.connector.owner().to_owned();
        let mut plan = InstancePlan {
            instance: &instance,
            owner: &owner,
            network,
            port,
            published: &published,
            volume_dirs: &volume_dirs,
            join: None,
        };
        let context = Context {
            engine,
            images,
            objects: &objects,
            suffix,
        };
        // The serving container first: it holds the network the others join.
        let serving_id = self
            .create_and_start(starting, &context, pod.serving, &plan)
            .await?;
        let addresses = match network {
            ContainerNetwork::Host => Addresses::Host { port },
            ContainerNetwork::Bridge => {
                let ip = match engine.rootless {
                    true => None,
                    false => container_ip(&engine.docker, &serving_id).await,
                };
                match ip {
                    Some(ip) => Addresses::Container { ip, port },
                    None => Addresses::Published {
                        published: published.clone(),
                        port,
                    },
                }
            }
        };
        plan.join = Some(&serving_id);
        let sidecars: Vec<usize> = (0..pod.containers.len())
            .filter(|i| *i != pod.serving)
            .collect();
        for &index in &sidecars {
            self.create_and_start(starting, &context, index, &plan)
                .await?;
        }
        // Only now: each watch is two more requests to the engine, which
        // would slow the inspect above on the cold start's path. A container
        // that exited meanwhile is still seen (its output is kept, and it
        // is "not running").
        for (id, index) in starting
            .created
            .clone()
            .into_iter()
            .zip(std::iter::once(pod.serving).chain(sidecars))
        {
            let sidecar = (index != pod.serving).then(|| pod.containers[index].name.clone());
            let output = Output::new(workload, &instance, sidecar.as_deref());
            starting
                .containers
                .push(RunningContainer::watch(&engine.docker, id, sidecar, output));
        }
        Ok(addresses)
    }
}

/// What every container of one instance is made with.
struct Context<'a> {
    engine: &'a Engine,
    images: &'a [String],
    objects: &'a ConfigObjects,
    /// Makes the names of this instance's containers unique on the engine.
    suffix: &'a str,
}

impl ContainerLauncher {
    /// Creates and starts `containers[index]`; returns its id.
    async fn create_and_start(
        &self,
        starting: &mut Starting,
        context: &Context<'_>,
        index: usize,
        plan: &InstancePlan<'_>,
    ) -> Result<String, String> {
        let workload = &self.workload;
        let pod = &workload.pod;
        let namespace = &workload.service.namespace;
        let instance = &starting.instance;
        let container = &pod.containers[index];
        let serving = index == pod.serving;
        let env = config::environment(container, context.objects, namespace, instance)?;
        let body = spec::create_body(workload, index, &context.images[index], env, plan);
        let suffix = context.suffix;
        let name = match serving {
            true => format!("pl-{namespace}-{instance}-{suffix}"),
            false => format!("pl-{namespace}-{instance}-{}-{suffix}", container.name),
        };
        let docker = &context.engine.docker;
        let options = CreateContainerOptions {
            name: Some(name),
            ..Default::default()
        };
        let created = docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| {
                format!(
                    "creating container {}: {}",
                    container.name,
                    engine_message(&e)
                )
            })?;
        // Removed on failure from here on, started or not.
        starting.created.push(created.id.clone());
        docker
            .start_container(&created.id, None)
            .await
            .map_err(|e| {
                format!(
                    "starting container {}: {}",
                    container.name,
                    engine_message(&e)
                )
            })?;
        Ok(created.id)
    }
}

/// Host ports for the serving port (when there is one) and every other
/// probed port.
fn publish(
    workload: &LocalWorkload,
    container_port: Option<u16>,
) -> Result<BTreeMap<u16, u16>, String> {
    let mut ports: Vec<u16> = container_port.into_iter().collect();
    ports.extend(
        workload
            .pod
            .containers
            .iter()
            .filter_map(|c| c.readiness.as_ref()?.port()),
    );
    ports
        .into_iter()
        .map(|port| Ok((port, free_port().map_err(|e| format!("no free port: {e}"))?)))
        .collect()
}

/// The container's address on the engine's network: a bridge's addresses
/// are reachable from the host, so pilotlight talks to the container
/// directly rather than through the engine's port proxy.
async fn container_ip(docker: &Docker, id: &str) -> Option<IpAddr> {
    let inspected = docker.inspect_container(id, None).await.ok()?;
    inspected
        .network_settings?
        .networks?
        .into_values()
        .filter_map(|n| n.ip_address)
        .find_map(|ip| ip.parse().ok())
}

/// Writes the instance's volume folders: files from Secrets and ConfigMaps,
/// and empty folders for `emptyDir`.
pub(crate) fn write_volumes(
    workload: &LocalWorkload,
    dir: &Path,
    objects: &ConfigObjects,
) -> Result<BTreeMap<String, PathBuf>, String> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let pod = &workload.pod;
    let mounted: Vec<&str> = pod
        .containers
        .iter()
        .flat_map(|c| c.volume_mounts.iter().map(|m| m.name.as_str()))
        .collect();
    let mut dirs = BTreeMap::new();
    let needed: Vec<_> = pod
        .volumes
        .iter()
        .enumerate()
        .filter(|(_, v)| mounted.contains(&v.name.as_str()))
        .collect();
    if needed.is_empty() {
        return Ok(dirs);
    }
    // Only pilotlight's user may read the files of Secrets on the host.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    for (index, volume) in needed {
        let field = format!("spec.template.spec.volumes[{index}]");
        let path = dir.join(&volume.name);
        let (mode, files) = match &volume.source {
            VolumeSource::Files {
                sources,
                default_mode,
            } => (0o755, Some((sources, *default_mode))),
            // World-writable, as Kubernetes makes an emptyDir.
            VolumeSource::EmptyDir { .. } => (0o777, None),
            VolumeSource::Claim { .. } => continue,
        };
        std::fs::create_dir(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("cannot set the mode of {}: {e}", path.display()))?;
        if let Some((sources, default_mode)) = files {
            config::write_files(
                &path,
                &field,
                sources,
                default_mode,
                objects,
                &workload.service.namespace,
            )?;
        }
        dirs.insert(volume.name.clone(), path);
    }
    Ok(dirs)
}

/// Where the instance's ports are reached from pilotlight.
#[derive(Debug, Clone)]
enum Addresses {
    /// On the host's network: every port is the host's.
    Host { port: u16 },
    /// On a bridge, directly at the container's address.
    Container { ip: IpAddr, port: u16 },
    /// Through the ports published on 127.0.0.1 (a rootless engine).
    Published {
        published: BTreeMap<u16, u16>,
        port: u16,
    },
}

impl Addresses {
    fn of(&self, port: Option<u16>) -> SocketAddr {
        let local = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        match self {
            Addresses::Host { port: own } => local(port.unwrap_or(*own)),
            Addresses::Container { ip, port: own } => SocketAddr::new(*ip, port.unwrap_or(*own)),
            Addresses::Published {
                published,
                port: own,
            } => {
                let port = port.unwrap_or(*own);
                local(published.get(&port).copied().unwrap_or(port))
            }
        }
    }
}

/// One container of an instance, watched.
struct RunningContainer {
    /// The container's name when it is a sidecar.
    sidecar: Option<String>,
    output: Output,
    /// How it ended, once it has.
    exit: watch::Receiver<Option<String>>,
    logs: JoinHandle<()>,
    waiter: JoinHandle<()>,
}

impl RunningContainer {
    /// Starts following its output and waiting for its exit.
    fn watch(docker: &Docker, id: String, sidecar: Option<String>, output: Output) -> Self {
        let (exit_tx, exit) = watch::channel(None);
        let logs = tokio::spawn(follow_logs(docker.clone(), id.clone(), output.clone()));
        let waiter = tokio::spawn(wait_exit(docker.clone(), id, exit_tx));
        RunningContainer {
            sidecar,
            output,
            exit,
            logs,
            waiter,
        }
    }
}

/// Follows a running container's logs into `output` until it stops.
pub(crate) async fn follow_logs(docker: Docker, id: String, output: Output) {
    let options = LogsOptions {
        follow: true,
        stdout: true,
        stderr: true,
        tail: "all".into(),
        ..Default::default()
    };
    forward_output(docker.logs(&id, Some(options)), output).await;
}

/// Copies a container's output (its logs, or an attach stream) into
/// `output`, line by line, until the stream ends.
pub(crate) async fn forward_output(
    mut stream: impl futures::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Unpin,
    output: Output,
) {
    let mut stdout = output.lines(Stream::Stdout);
    let mut stderr = output.lines(Stream::Stderr);
    while let Some(Ok(chunk)) = stream.next().await {
        match chunk {
            LogOutput::StdErr { message } => stderr.push(&message),
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                stdout.push(&message);
            }
            LogOutput::StdIn { .. } => {}
        }
    }
    stdout.finish();
    stderr.finish();
}

/// Waits until the container stops running, then reports how it ended. A
/// wait request that fails while the container still runs (a timeout of
/// the connection) is made again.
async fn wait_exit(docker: Docker, id: String, exit: watch::Sender<Option<String>>) {
    let how = match wait_stopped(&docker, &id).await {
        Ok(state) => describe_exit(state.as_ref()),
        Err(gone) => gone,
    };
    let _ = exit.send(Some(how));
}

/// Waits until the container stops running (a wait request that fails
/// while it still runs is made again), then returns its final state; or
/// why it cannot be read ("is gone (...)").
pub(crate) async fn wait_stopped(
    docker: &Docker,
    id: &str,
) -> Result<Option<bollard::models::ContainerState>, String> {
    use bollard::errors::Error;
    loop {
        let options = WaitContainerOptions {
            condition: "not-running".into(),
        };
        let mut wait = docker.wait_container(id, Some(options));
        match wait.next().await {
            Some(Ok(_) | Err(Error::DockerContainerWaitError { .. })) => break,
            _ => {
                let running = docker
                    .inspect_container(id, None)
                    .await
                    .ok()
                    .and_then(|c| c.state?.running);
                if running != Some(true) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    match docker.inspect_container(id, None).await {
        Ok(inspected) => Ok(inspected.state),
        Err(e) => Err(format!("is gone ({})", engine_message(&e))),
    }
}

/// "exited with code 137 (OOMKilled: over its memory limit)".
pub(crate) fn describe_exit(state: Option<&bollard::models::ContainerState>) -> String {
    let Some(state) = state else {
        return "exited".into();
    };
    let mut how = match state.exit_code {
        Some(code) => format!("exited with code {code}"),
        None => "exited".to_owned(),
    };
    if state.oom_killed == Some(true) {
        how.push_str(" (OOMKilled: over its memory limit)");
    }
    if let Some(error) = state.error.as_deref().filter(|e| !e.is_empty()) {
        how.push_str(&format!(" ({error})"));
    }
    how
}

/// An instance being made: what exists so far, to remove on failure.
struct Starting {
    docker: Docker,
    instance: Arc<str>,
    /// Every container created, serving container first.
    created: Vec<String>,
    /// Those started and watched.
    containers: Vec<RunningContainer>,
    dir: Option<PathBuf>,
}

impl Starting {
    fn into_launched(self, addresses: Addresses) -> LaunchedContainers {
        LaunchedContainers {
            docker: self.docker,
            instance: self.instance,
            created: self.created,
            containers: self.containers,
            dir: self.dir,
            addresses,
        }
    }

    async fn remove(self) {
        let launched = self.into_launched(Addresses::Host { port: 0 });
        launched.remove().await;
    }
}

struct LaunchedContainers {
    docker: Docker,
    instance: Arc<str>,
    /// Every container's id.
    created: Vec<String>,
    containers: Vec<RunningContainer>,
    dir: Option<PathBuf>,
    addresses: Addresses,
}

impl LaunchedContainers {
    async fn remove_container(&self, id: &str) {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        if let Err(e) = self.docker.remove_container(id, Some(options)).await {
            tracing::warn!(instance = %self.instance, "cannot remove a container: {}", engine_message(&e));
        }
    }

    /// Removes the containers (killing what still runs) and the volume
    /// folder: the sidecars first, since Podman keeps a container whose
    /// network others still join.
    async fn remove(self) {
        if let Some((serving, sidecars)) = self.created.split_first() {
            let sidecars = sidecars.iter().map(|id| self.remove_container(id));
            futures::future::join_all(sidecars).await;
            self.remove_container(serving).await;
        }
        for container in &self.containers {
            container.logs.abort();
            container.waiter.abort();
        }
        if let Some(dir) = &self.dir {
            let _ = tokio::fs::remove_dir_all(dir).await;
        }
    }
}

#[async_trait::async_trait]
impl Launched for LaunchedContainers {
    fn address(&self, port: Option<u16>) -> SocketAddr {
        self.addresses.of(port)
    }

    async fn exited(&mut self) -> String {
        let exits = self.containers.iter().map(|c| {
            let mut exit = c.exit.clone();
            Box::pin(async move {
                match exit.wait_for(Option::is_some).await {
                    Ok(how) => how.clone().unwrap_or_default(),
                    Err(_) => "is gone".to_owned(),
                }
            })
        });
        let (how, index, _) = futures::future::select_all(exits).await;
        let container = &mut self.containers[index];
        // Let the last lines arrive before quoting them.
        let _ = tokio::time::timeout(DRAIN_WAIT, &mut container.logs).await;
        let mut failure = match &container.sidecar {
            Some(name) => format!("instance {}: container {name} {how}", self.instance),
            None => format!("instance {} {how}", self.instance),
        };
        let tail = container.output.tail();
        if !tail.is_empty() {
            failure.push_str(": ");
            failure.push_str(&tail.join("\n"));
        }
        failure
    }

    async fn stop(self: Box<Self>, grace: Duration) {
        // The engine sends SIGTERM, then SIGKILL after `t` seconds.
        let t = i32::try_from(grace.as_secs_f64().ceil() as u64).unwrap_or(i32::MAX);
        let stops = self.created.iter().map(|id| {
            self.docker.stop_container(
                id,
                Some(StopContainerOptions {
                    t: Some(t),
                    ..Default::default()
                }),
            )
        });
        futures::future::join_all(stops).await;
        self.remove().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_described_with_code_and_oom() {
        let state = bollard::models::ContainerState {
            exit_code: Some(137),
            oom_killed: Some(true),
            ..Default::default()
        };
        assert_eq!(
            describe_exit(Some(&state)),
            "exited with code 137 (OOMKilled: over its memory limit)"
        );
    }

    #[test]
    fn addresses_map_ports() {
        let published = Addresses::Published {
            published: BTreeMap::from([(8080, 40000), (9090, 40001)]),
            port: 8080,
        };
        assert_eq!(published.of(None).port(), 40000);
        assert_eq!(published.of(Some(9090)).port(), 40001);
        let ip: IpAddr = "172.17.0.2".parse().expect("ip");
        let direct = Addresses::Container { ip, port: 8080 };
        assert_eq!(direct.of(Some(9090)), SocketAddr::new(ip, 9090));
        assert_eq!(Addresses::Host { port: 41000 }.of(None).port(), 41000);
    }
}
