//! The app of `pilotlight-bench serving`: `pilotlight hello` (the product
//! binary), run either as a local process or in a container engine, both
//! straight (the baseline) and as a Knative Service through pilotlight.
//!
//! For containers the bench builds an image of that binary and the shared
//! libraries it loads (no registry needed), and the straight side does what
//! the container runtime does: create with the port published on
//! 127.0.0.1, start, read the container's address, connect there. The
//! difference between the two sides is then pilotlight's own work.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{ListContainersOptions, RemoveContainerOptions};

use crate::workdir::NAMESPACE;
use pilotlight::api::pod::ContainerNetwork;
use pilotlight::cli::images::ImageBuilder;
use pilotlight::serving::runtime::container::engine::{Engine, EngineConnector};

/// Longest wait for an app to start or answer.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the straight side tries to connect to the starting app: on
/// average it notices the port half of this late, which flatters the
/// overhead by as much, so it is kept near pilotlight's own readiness
/// polling (50 to 200 µs).
const CONNECT_POLL: Duration = Duration::from_micros(100);
/// The image the bench builds for the container runtime.
const IMAGE: &str = "localhost/pilotlight-bench/hello:1";
/// Labels the bench's own containers, so a run that was cut short leaves
/// nothing the next run does not remove.
const BENCH_LABEL: &str = "dev.pilotlight.bench";

/// How the app runs.
pub(crate) enum AppRuntime {
    Process {
        exe: PathBuf,
    },
    Container {
        engine: Arc<Engine>,
        network: ContainerNetwork,
    },
}

impl AppRuntime {
    pub(crate) fn process(exe: &Path) -> Self {
        AppRuntime::Process {
            exe: exe.to_owned(),
        }
    }

    /// Finds the engine (as `pilotlight run` does, or at `socket`), removes
    /// what an earlier bench left, and loads the image of `exe`.
    pub(crate) async fn container(
        exe: &Path,
        socket: Option<String>,
        network: ContainerNetwork,
    ) -> anyhow::Result<Self> {
        let connector = EngineConnector::new(socket, "pilotlight-bench".into());
        let engine = connector
            .engine()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        remove_bench_containers(&engine).await;
        ImageBuilder::new(IMAGE)
            .host_binary(exe, "pilotlight")?
            .cmd(&["/pilotlight", "hello", "--host", "0.0.0.0"])
            .load(&engine.docker)
            .await?;
        Ok(AppRuntime::Container { engine, network })
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            AppRuntime::Process { .. } => "process",
            AppRuntime::Container {
                network: ContainerNetwork::Bridge,
                ..
            } => "container (bridge network)",
            AppRuntime::Container {
                network: ContainerNetwork::Host,
                ..
            } => "container (host network)",
        }
    }

    /// Arguments `pilotlight run` needs to reach the same engine.
    pub(crate) fn run_args(&self) -> Vec<String> {
        match self {
            AppRuntime::Process { .. } => Vec::new(),
            AppRuntime::Container { engine, .. } => vec![
                "--container-engine".into(),
                format!("unix://{}", engine.socket.display()),
            ],
        }
    }

    /// One Service of the app, `---` first, with autoscaling annotations.
    pub(crate) fn service(&self, name: &str, annotations: &[(&str, &str)]) -> String {
        let mut yaml = format!(
            "---
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: {name}
  namespace: {NAMESPACE}
spec:
  template:
    metadata:
      annotations:
"
        );
        for (key, value) in annotations {
            let _ = writeln!(yaml, "        autoscaling.knative.dev/{key}: \"{value}\"");
        }
        match self {
            AppRuntime::Process { exe } => {
                let _ = write!(
                    yaml,
                    "    spec:
      containers:
        - command: [{exe}, hello]
",
                    // JSON strings are valid YAML flow scalars, whatever the path holds.
                    exe = serde_json::Value::from(exe.to_string_lossy().into_owned())
                );
            }
            AppRuntime::Container { network, .. } => {
                let network = match network {
                    ContainerNetwork::Bridge => "bridge",
                    ContainerNetwork::Host => "host",
                };
                let _ = write!(
                    yaml,
                    "        pilotlight.dev/container-network: {network}
    spec:
      containers:
        - image: {IMAGE}
"
                );
            }
        }
        yaml
    }

    /// Starts the app straight and times it: start until it accepts a
    /// connection, and until it answered `GET /` on it. The app is gone
    /// when this returns.
    pub(crate) async fn cold_start(&self) -> anyhow::Result<StraightStart> {
        match self {
            AppRuntime::Process { exe } => {
                let exe = exe.clone();
                // A blocking thread: tokio's timer rounds sleeps up to whole
                // milliseconds, too coarse to poll every 0.1 ms.
                tokio::task::spawn_blocking(move || process_cold_start(&exe))
                    .await
                    .context("the straight cold start panicked")?
            }
            AppRuntime::Container { engine, network } => {
                let started = Instant::now();
                let container = StraightContainer::start(engine, *network).await?;
                let address = container.address;
                let measured = tokio::task::spawn_blocking(move || {
                    let stream = connect_when_listening(address, started, || Ok(()))?;
                    let listening = started.elapsed();
                    answer_blocking(stream)?;
                    Ok(StraightStart {
                        spawned: None,
                        listening,
                        answered: started.elapsed(),
                    })
                })
                .await
                .context("the straight cold start panicked")?;
                container.remove().await;
                measured
            }
        }
    }

    /// Starts the app straight and waits until it listens.
    pub(crate) async fn start(&self) -> anyhow::Result<App> {
        match self {
            AppRuntime::Process { exe } => App::process(exe).await,
            AppRuntime::Container { engine, network } => {
                let container = StraightContainer::start(engine, *network).await?;
                let started = Instant::now();
                while tokio::net::TcpStream::connect(container.address)
                    .await
                    .is_err()
                {
                    if started.elapsed() > START_TIMEOUT {
                        let address = container.address;
                        container.remove().await;
                        bail!(
                            "the app's container did not listen on {address} within {START_TIMEOUT:?}"
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Ok(App {
                    addr: container.address,
                    running: Running::Container(container),
                })
            }
        }
    }
}

/// An app started straight.
pub(crate) struct App {
    pub(crate) addr: SocketAddr,
    running: Running,
}

enum Running {
    Process(tokio::process::Child),
    Container(StraightContainer),
}

impl App {
    async fn process(exe: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut child = tokio::process::Command::new(exe)
            .arg("hello")
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {} hello", exe.display()))?;
        let addr = loopback(port);
        let started = Instant::now();
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if let Some(status) = child.try_wait().context("cannot check the app")? {
                bail!("the app exited before listening on {addr}: {status}");
            }
            if started.elapsed() > START_TIMEOUT {
                bail!("the app did not listen on {addr} within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(App {
            addr,
            running: Running::Process(child),
        })
    }

    /// The process to read memory of, for a process app.
    pub(crate) fn pid(&self) -> anyhow::Result<u32> {
        match &self.running {
            Running::Process(child) => child.id().context("the app has exited"),
            Running::Container(_) => bail!("a container's memory is the engine's to report"),
        }
    }

    pub(crate) async fn stop(self) {
        match self.running {
            Running::Process(mut child) => {
                let _ = child.kill().await;
            }
            Running::Container(container) => container.remove().await,
        }
    }
}

/// A container of the app made straight through the engine's API, as the
/// container runtime makes one.
struct StraightContainer {
    engine: Arc<Engine>,
    id: String,
    address: SocketAddr,
}

impl StraightContainer {
    async fn start(engine: &Arc<Engine>, network: ContainerNetwork) -> anyhow::Result<Self> {
        let docker = &engine.docker;
        let host_port = free_port()?;
        let (port, host_config) = match network {
            ContainerNetwork::Bridge => (
                8080,
                HostConfig {
                    network_mode: Some("bridge".into()),
                    port_bindings: Some(
                        [(
                            "8080/tcp".to_owned(),
                            Some(vec![PortBinding {
                                host_ip: Some("127.0.0.1".into()),
                                host_port: Some(host_port.to_string()),
                            }]),
                        )]
                        .into(),
                    ),
                    ..HostConfig::default()
                },
            ),
            ContainerNetwork::Host => (
                host_port,
                HostConfig {
                    network_mode: Some("host".into()),
                    ..HostConfig::default()
                },
            ),
        };
        let body = ContainerCreateBody {
            image: Some(IMAGE.into()),
            env: Some(vec![format!("PORT={port}")]),
            labels: Some([(BENCH_LABEL.to_owned(), "1".to_owned())].into()),
            exposed_ports: Some(vec!["8080/tcp".into()]),
            host_config: Some(host_config),
            ..ContainerCreateBody::default()
        };
        let created = docker
            .create_container(None, body)
            .await
            .context("creating the app's container")?;
        let mut container = StraightContainer {
            engine: engine.clone(),
            id: created.id,
            address: loopback(port),
        };
        let started = async {
            docker
                .start_container(&container.id, None)
                .await
                .context("starting the app's container")?;
            if network == ContainerNetwork::Bridge {
                let inspected = docker
                    .inspect_container(&container.id, None)
                    .await
                    .context("inspecting the app's container")?;
                let ip: IpAddr = inspected
                    .network_settings
                    .and_then(|n| n.networks)
                    .into_iter()
                    .flatten()
                    .find_map(|(_, n)| n.ip_address?.parse().ok())
                    .context("the app's container has no address")?;
                container.address = SocketAddr::new(ip, port);
            }
            anyhow::Ok(())
        };
        if let Err(e) = started.await {
            container.remove().await;
            return Err(e);
        }
        Ok(container)
    }

    async fn remove(self) {
        let _ = self
            .engine
            .docker
            .remove_container(
                &self.id,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
    }
}

async fn remove_bench_containers(engine: &Engine) {
    let options = ListContainersOptions {
        all: true,
        filters: Some([("label".to_owned(), vec![BENCH_LABEL.to_owned()])].into()),
        ..Default::default()
    };
    for container in engine
        .docker
        .list_containers(Some(options))
        .await
        .unwrap_or_default()
    {
        if let Some(id) = container.id {
            let _ = engine
                .docker
                .remove_container(
                    &id,
                    Some(RemoveContainerOptions {
                        force: true,
                        ..Default::default()
                    }),
                )
                .await;
        }
    }
}

/// The straight side of one cold start, each from the start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StraightStart {
    /// Until `spawn()` returned (a process only): fork or posix_spawn, and
    /// exec.
    pub(crate) spawned: Option<Duration>,
    /// Until the app accepted a connection.
    pub(crate) listening: Duration,
    /// Until it answered `GET /` on that connection.
    pub(crate) answered: Duration,
}

/// Spawn-to-listening and spawn-to-first-answer of one `pilotlight hello`.
fn process_cold_start(exe: &Path) -> anyhow::Result<StraightStart> {
    let port = free_port()?;
    let started = Instant::now();
    let mut child = std::process::Command::new(exe)
        .arg("hello")
        .env("PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {} hello", exe.display()))?;
    let spawned = started.elapsed();
    let measured = (|| {
        let stream = connect_when_listening(loopback(port), started, || {
            match child.try_wait().context("cannot check the app")? {
                Some(status) => bail!("the app exited before listening: {status}"),
                None => Ok(()),
            }
        })?;
        let listening = started.elapsed();
        answer_blocking(stream)?;
        Ok(StraightStart {
            spawned: Some(spawned),
            listening,
            answered: started.elapsed(),
        })
    })();
    let _ = child.kill();
    let _ = child.wait();
    measured
}

/// Connects every [`CONNECT_POLL`] until the app listens; `alive` says
/// whether to go on.
fn connect_when_listening(
    addr: SocketAddr,
    started: Instant,
    mut alive: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<std::net::TcpStream> {
    loop {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(stream) => return Ok(stream),
            Err(e) => {
                alive()?;
                if started.elapsed() > START_TIMEOUT {
                    bail!("the app did not listen on {addr} within {START_TIMEOUT:?}: {e}");
                }
                std::thread::sleep(CONNECT_POLL);
            }
        }
    }
}

/// `GET /` on a fresh connection, read to the end (the app closes it).
fn answer_blocking(mut stream: std::net::TcpStream) -> anyhow::Result<()> {
    stream.set_nodelay(true).context("cannot set TCP_NODELAY")?;
    stream
        .set_read_timeout(Some(START_TIMEOUT))
        .context("cannot set a read timeout")?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: hello\r\nConnection: close\r\n\r\n")
        .context("sending GET / to the app")?;
    let mut answer = Vec::with_capacity(256);
    stream
        .read_to_end(&mut answer)
        .context("reading the app's answer")?;
    if !answer.starts_with(b"HTTP/1.1 200") {
        let line = answer.split(|b| *b == b'\r').next().unwrap_or_default();
        bail!(
            "the app answered GET / with '{}'",
            String::from_utf8_lossy(line)
        );
    }
    Ok(())
}

/// A port that was free a moment ago (bind port 0 and let it go).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    let listener =
        std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot bind a free port")?;
    Ok(listener
        .local_addr()
        .context("no local address for a free port")?
        .port())
}

pub(crate) fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}
