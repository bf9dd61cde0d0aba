//! `pilotlight run` assembled: the main listener (service hosts to the
//! serving proxy, everything else to the broker ingress), the admin
//! listener, the control plane and hot reload. Integration tests and the
//! benchmark start it in process.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::autoscaling::AutoscalerDefaults;
use crate::api::broker::BrokerClass;
use crate::api::pod::ContainerNetwork;
use crate::auth::{AuthConfig, Gate, Issuer, IssuerSource};
use crate::control::admin::{self, AdminState, Peers};
use crate::control::kubernetes::leader::LeaderElector;
use crate::control::kubernetes::peers::{self, PeerToken};
use crate::control::kubernetes::tls_secret::{self, TlsSecret};
use crate::control::kubernetes::{self, KubernetesControl, KubernetesSettings};
use crate::control::manifest;
use crate::control::reconcile::ControlPlane;
use crate::eventing::backend::log::LogConfig;
use crate::eventing::backend::memory::MemoryConfig;
use crate::eventing::broker::BrokerRegistry;
pub use crate::eventing::broker::ingress::IngressLimits;
use crate::eventing::broker::ingress::{self, IngressState};
use crate::eventing::controller::{EventingController, EventingSettings};
use crate::eventing::delivery::{EventSender, MainListenerService};
use crate::eventing::source::cluster_state::ClusterState;
use crate::eventing::source::{PingClock, Replication};
use crate::http_util::text;
pub use crate::listener::ListenerLimits;
use crate::listener::serve_listener;
use crate::serving::autoscaler::ClusterStats;
use crate::serving::controller::{PublicAddress, ServingController, ServingSettings};
use crate::serving::jobs::{JobRuntime, JobSettings, JobSinks, KubernetesJobs, LocalJobs};
use crate::serving::proxy::{Peer, Proxy};
use crate::serving::router::{HostMatch, Router};
use crate::serving::runtime::config::ConfigObjects;
use crate::serving::runtime::container::engine::EngineConnector;
use crate::serving::runtime::container::{ContainerConfig, ContainerRuntime};
use crate::serving::runtime::kubernetes::KubernetesRuntime;
use crate::serving::runtime::local::LocalConfig;
use crate::serving::runtime::process::ProcessRuntime;
use crate::serving::runtime::{LocalRuntimes, Runtime};
use crate::tls::{CertFiles, CertStore, ClientTls, ListenerTls, TransportEncryption};

/// Everything `pilotlight run` is configured with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub paths: Vec<PathBuf>,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub data_dir: PathBuf,
    pub max_event_bytes: usize,
    pub default_class: BrokerClass,
    pub log: LogConfig,
    pub memory: MemoryConfig,
    pub max_in_flight: usize,
    /// The default RabbitMQ (`--rabbitmq-uri`).
    pub rabbitmq_uri: Option<String>,
    /// Bootstrap servers of Kafka brokers without `spec.config`.
    pub kafka_bootstrap_servers: Option<String>,
    /// Re-apply manifests when their files change.
    pub watch: bool,
    pub serving: ServingConfig,
    /// Where clients reach the ingress, for broker addresses in status; None
    /// for the main listener's own address.
    pub ingress_url: Option<String>,
    /// Read the objects from the API server instead of `paths`, and run
    /// revisions as Deployments.
    pub kubernetes: Option<KubernetesSettings>,
    /// The clock PingSources tick on: the system's, but for tests.
    pub ping_clock: PingClock,
    /// `--kubeconfig` in file mode: the API server ApiServerSources watch.
    /// In Kubernetes mode the kubeconfig of [`KubernetesSettings`] serves
    /// them when this is None.
    pub kubeconfig: Option<PathBuf>,
    /// This replica's stable name (the pod's name in Kubernetes mode), for
    /// Kafka's static group membership; None for an id kept in the data
    /// folder.
    pub replica: Option<String>,
    /// `--admin-token`: lets requests that carry it replay through an
    /// admin listener that is not on loopback.
    pub admin_token: Option<String>,
    /// OIDC authentication and EventPolicies (`--authentication-oidc`).
    pub auth: AuthConfig,
    /// HTTPS on the listeners: the transport-encryption level and the
    /// certificates.
    pub tls: TlsConfig,
    /// What the main listener allows each client (the admin listener the
    /// same, without the connection limit).
    pub listener: ListenerLimits,
    /// What the broker ingress allows each request.
    pub ingress: IngressLimits,
    /// Deliveries to pilotlight's own Services and brokers are handed to
    /// the main listener's service in process, without a socket (on unless
    /// a benchmark measures what the socket would cost).
    pub in_process_hops: bool,
}

/// HTTPS on the listeners.
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// The main listener's level (`--transport-encryption`): disabled
    /// serves plain HTTP, permissive both on the one port, strict HTTPS
    /// only.
    pub level: TransportEncryption,
    /// The main listener's certificate (`--tls-cert/--tls-key`); it or
    /// `main_secret` is needed unless the level is disabled.
    pub main: Option<CertFiles>,
    /// Kubernetes mode: the main listener's certificate from a
    /// `kubernetes.io/tls` Secret (`--tls-secret`), followed as it changes.
    pub main_secret: Option<TlsSecret>,
    /// The level was not given (no `--transport-encryption`): the
    /// `transport-encryption` key of Knative's `config-features` ConfigMap
    /// (`knative-eventing`), when the manifests or the cluster have one,
    /// sets it at start.
    pub level_from_features: bool,
    /// The admin listener's (`--admin-tls-cert/--admin-tls-key`): with
    /// one, the admin listener serves HTTPS and plain HTTP on its port
    /// (its own clients, probes and replicas keep working); without, plain
    /// HTTP.
    pub admin: Option<CertFiles>,
}

impl TlsConfig {
    /// Checks that a level other than disabled has a certificate.
    pub fn check(&self) -> anyhow::Result<()> {
        let certificate = self.main.is_some() || self.main_secret.is_some();
        if self.level.https() && !certificate {
            anyhow::bail!(
                "--transport-encryption {} needs the main listener's certificate: give --tls-cert FILE and --tls-key FILE (PEM), or --tls-secret NAMESPACE/NAME in Kubernetes mode",
                self.level
            );
        }
        if self.main.is_some() && self.main_secret.is_some() {
            anyhow::bail!("give --tls-cert/--tls-key or --tls-secret, not both");
        }
        if !self.level.https() && certificate {
            anyhow::bail!(
                "--tls-cert and --tls-key are given but --transport-encryption is disabled: set it to permissive (HTTPS and HTTP) or strict (HTTPS only), or leave the certificate out"
            );
        }
        Ok(())
    }
}

impl ServerConfig {
    /// The defaults of `pilotlight run`, on free loopback ports and without
    /// watching files: what the integration tests and the benchmarks start.
    pub fn on_free_ports(manifests: PathBuf, data_dir: PathBuf) -> Self {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        ServerConfig {
            paths: vec![manifests],
            listen: any_port,
            admin: any_port,
            data_dir,
            max_event_bytes: crate::eventing::broker::ingress::DEFAULT_MAX_EVENT_BYTES,
            default_class: BrokerClass::Log,
            log: LogConfig::default(),
            memory: MemoryConfig::default(),
            max_in_flight: 100,
            rabbitmq_uri: None,
            kafka_bootstrap_servers: None,
            watch: false,
            serving: ServingConfig::default(),
            ingress_url: None,
            kubernetes: None,
            ping_clock: PingClock::default(),
            kubeconfig: None,
            replica: None,
            admin_token: None,
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            listener: ListenerLimits::default(),
            ingress: IngressLimits::default(),
            in_process_hops: true,
        }
    }
}

impl ServerConfig {
    /// Where clients reach the ingress: `--ingress-url` without a trailing
    /// slash, else the main listener's own address; in https when the
    /// transport-encryption level serves it (the address destinations
    /// resolve to prefers HTTPS, as Knative's resolver does).
    fn ingress_url(&self, listen: SocketAddr) -> String {
        let url = self.ingress_url.as_ref().map_or_else(
            || format!("http://{listen}"),
            |url| url.trim_end_matches('/').to_owned(),
        );
        match url.strip_prefix("http://") {
            Some(rest) if self.tls.level.https() => {
                // The same port: the listener (or the Service in front of
                // it) serves both schemes there.
                let has_port = url
                    .parse::<http::Uri>()
                    .is_ok_and(|uri| uri.port_u16().is_some());
                let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                match has_port {
                    true => format!("https://{rest}"),
                    false => format!("https://{authority}:80{path}"),
                }
            }
            _ => url,
        }
    }

    /// The eventing half's part of the configuration.
    fn eventing_settings(&self, listen: SocketAddr) -> EventingSettings {
        EventingSettings {
            data_dir: self.data_dir.clone(),
            ingress_url: self.ingress_url(listen),
            transport: self.tls.level,
            default_class: self.default_class,
            log: self.log.clone(),
            memory: self.memory.clone(),
            max_event_bytes: self.max_event_bytes,
            max_in_flight: self.max_in_flight,
            rabbitmq_uri: self.rabbitmq_uri.clone(),
            kafka_bootstrap_servers: self.kafka_bootstrap_servers.clone(),
            kubeconfig: self.source_kubeconfig(),
            ping_clock: self.ping_clock.clone(),
            replica: self.replica.clone().unwrap_or_default(),
        }
    }

    /// The kubeconfig ApiServerSources connect with: `--kubeconfig` in
    /// either mode, the one of `--kubernetes` otherwise; None for kube's
    /// inference.
    fn source_kubeconfig(&self) -> Option<PathBuf> {
        self.kubeconfig
            .clone()
            .or_else(|| self.kubernetes.as_ref()?.kubeconfig.clone())
    }

    /// The serving half's part of the configuration.
    fn serving_settings(&self, listen: SocketAddr, cluster: Arc<ClusterStats>) -> ServingSettings {
        ServingSettings {
            cluster,
            domain: self.serving.domain.clone(),
            public: PublicAddress::of(Some(&self.ingress_url(listen)), listen),
            data_dir: self.data_dir.clone(),
            autoscaler: self.serving.autoscaler.clone(),
            queue_limit: self.serving.queue_limit,
            retained_revisions: self.serving.retained_revisions,
        }
    }
}

/// The serving half's settings.
#[derive(Debug, Clone)]
pub struct ServingConfig {
    /// Services answer to `{service}.{namespace}.{domain}`.
    pub domain: String,
    pub autoscaler: AutoscalerDefaults,
    /// Requests one revision holds while no instance has room.
    pub queue_limit: usize,
    /// Revisions without traffic kept per service.
    pub retained_revisions: usize,
    /// How local instances (processes and containers) stop and restart.
    pub local: LocalConfig,
    /// Where the container engine is and how instances are networked.
    pub container: ContainerConfig,
    /// JobSinks' jobs: the default concurrency limit (`--max-running-jobs`)
    /// and the retry backoff (`data_dir` is the server's).
    pub jobs: JobSettings,
    /// Tell clients in a `Server-Timing` header how long their request
    /// waited for a cold start and in the activator (`--server-timing`).
    pub server_timing: bool,
}

impl Default for ServingConfig {
    fn default() -> Self {
        ServingConfig {
            domain: "localhost".into(),
            autoscaler: AutoscalerDefaults::default(),
            queue_limit: 1000,
            retained_revisions: 20,
            local: LocalConfig::default(),
            container: ContainerConfig::default(),
            jobs: JobSettings::default(),
            server_timing: false,
        }
    }
}

/// How long stopping waits for the leader Lease to be given up.
const LEASE_RELEASE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A running server.
pub struct Server {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub control: Arc<ControlPlane>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _watcher: Option<notify::RecommendedWatcher>,
    kubernetes: Option<KubernetesControl>,
    /// Kubernetes mode: the leader election, which gives the Lease up on stop.
    election: Option<tokio::task::JoinHandle<()>>,
}

/// Where a replica without a name of its own (one-machine mode) keeps the
/// one it made up, so that it keeps it across restarts.
const REPLICA_FILE: &str = "replica-id";

/// This replica's stable name: the one configured (the pod's), else the one
/// kept in the data folder, made up at the first start.
fn replica_name(config: &ServerConfig) -> anyhow::Result<String> {
    if let Some(name) = config.replica.as_ref().filter(|n| !n.trim().is_empty()) {
        return Ok(name.trim().to_owned());
    }
    let path = config.data_dir.join(REPLICA_FILE);
    match std::fs::read_to_string(&path) {
        Ok(kept) if !kept.trim().is_empty() => return Ok(kept.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => anyhow::bail!("cannot read {}: {e} (--data-dir)", path.display()),
    }
    let made = format!(
        "pilotlight-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    std::fs::write(&path, format!("{made}\n"))
        .with_context(|| format!("cannot write {} (--data-dir)", path.display()))?;
    Ok(made)
}

impl Server {
    /// Binds both listeners, applies the manifests and starts serving.
    pub async fn start(config: ServerConfig) -> anyhow::Result<Server> {
        let mut config = config;
        if config.tls.level_from_features
            && let Some(level) = features_level(&config).await?
        {
            tracing::info!(%level, "transport-encryption from the config-features ConfigMap");
            config.tls.level = level;
        }
        config.tls.check()?;
        if config.tls.main_secret.is_some() && config.kubernetes.is_none() {
            anyhow::bail!(
                "--tls-secret reads the certificate from the API server: it needs --kubernetes"
            );
        }
        let (mut main_tls, admin_tls) = listener_tls(&config.tls)?;
        let (listener, admin_listener) = bind(&config).await?;
        let listen = listener.local_addr()?;
        let admin = admin_listener.local_addr()?;
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!(
                "cannot create the data directory {} (--data-dir)",
                config.data_dir.display()
            )
        })?;
        let mut config = config;
        config.replica = Some(replica_name(&config)?);

        let (stop, stopped) = watch::channel(false);
        let cluster = match &config.kubernetes {
            Some(settings) => Some(Cluster::connect(settings, admin, stopped.clone()).await?),
            None => None,
        };
        let mut secret_follower = None;
        if let (Some(at), Some(cluster)) = (&config.tls.main_secret, &cluster) {
            let store = tls_secret::load(cluster.client.clone(), at).await?;
            secret_follower = Some(tls_secret::follow(
                cluster.client.clone(),
                at.clone(),
                store.clone(),
                stopped.clone(),
            ));
            main_tls = ListenerTls::new(config.tls.level, store);
        }
        let gate = gate(&config, admin, cluster.as_ref())?;
        let registry = Arc::new(BrokerRegistry::default());
        let client_tls = ClientTls::default();
        for store in [main_tls.store(), admin_tls.store()].into_iter().flatten() {
            client_tls.trust_own(store.clone());
        }
        let sender =
            EventSender::with_local_domain(&config.serving.domain, listen).with_tls(client_tls);
        let (control, router) = control_plane(
            &config,
            listen,
            admin,
            cluster.as_ref(),
            registry.clone(),
            gate.clone(),
            sender.clone(),
        );
        let ready = Arc::new(AtomicBool::new(false));

        let main = Arc::new(MainService {
            ingress: IngressState {
                brokers: registry,
                gate: gate.clone(),
                limits: config.ingress,
            },
            router,
            proxy: Proxy::new(config.serving.server_timing),
            own_peer: Peer::new(listen),
        });
        if config.in_process_hops {
            let service: Arc<dyn MainListenerService> = main.clone();
            sender.hand_over_in_process(&service, config.tls.level == TransportEncryption::Strict);
        }
        let admin_router = admin::router(AdminState {
            control: control.clone(),
            metrics: crate::telemetry::metrics_handle(),
            ready: ready.clone(),
            peers: cluster.as_ref().and_then(Cluster::peers),
            replay: crate::control::replay::ReplayAccess {
                loopback: admin.ip().is_loopback(),
                token: config.admin_token.as_deref().map(Arc::from),
            },
            issuer: gate.issuer().cloned(),
        });
        let mut tasks = vec![
            control.retry_failed_backends(),
            control.follow_leadership(),
            tokio::spawn(crate::telemetry::upkeep(stopped.clone())),
        ];
        tasks.extend(secret_follower);
        for tls in [&main_tls, &admin_tls] {
            if let Some(store) = tls.store() {
                tasks.push(CertStore::watch_files(store, stopped.clone()));
            }
        }
        let main_service = move |address| {
            let main = main.clone();
            let peer = Peer::new(address);
            hyper::service::service_fn(move |request| {
                let (main, peer) = (main.clone(), peer.clone());
                async move { Ok::<_, std::convert::Infallible>(main.serve(request, &peer).await) }
            })
        };
        let admin_service =
            move |_| hyper_util::service::TowerToHyperService::new(admin_router.clone());
        tasks.push(tokio::spawn(serve_listener(
            "main",
            listener,
            main_tls,
            config.listener,
            main_service,
            stopped.clone(),
        )));
        tasks.push(tokio::spawn(serve_listener(
            "admin",
            admin_listener,
            admin_tls,
            config.listener.unbounded_connections(),
            admin_service,
            stopped,
        )));

        let objects = feed_objects(&config, &control, cluster, listen, admin).await?;
        ready.store(true, Ordering::Release);
        Ok(Server {
            listen,
            admin,
            control,
            stop,
            tasks,
            _watcher: objects.watcher,
            kubernetes: objects.kubernetes,
            election: objects.election,
        })
    }

    /// Stops listening, stops dispatchers and saves cursors.
    pub async fn shutdown(mut self) {
        // No reconcile may apply once the control plane below has stopped.
        drop(self.kubernetes.take());
        let _ = self.stop.send(true);
        self.control.shutdown().await;
        // Let the next leader take over at once, not after the lease ran out.
        if let Some(election) = self.election.take() {
            let _ = tokio::time::timeout(LEASE_RELEASE_GRACE, election).await;
        }
        for task in self.tasks {
            task.abort();
        }
    }
}

/// Authentication and EventPolicies as configured: off, or on with
/// pilotlight's own issuer (its URL `--oidc-issuer-url`, else the admin
/// listener's), the `--oidc-issuer`s and, in Kubernetes mode, the API
/// server's service-account issuer. The issuers' keys are read in the
/// background from the start.
fn gate(
    config: &ServerConfig,
    admin: SocketAddr,
    cluster: Option<&Cluster>,
) -> anyhow::Result<Arc<Gate>> {
    let auth = &config.auth;
    if !auth.enabled {
        return Ok(Arc::new(Gate::off()));
    }
    let url = auth
        .own_issuer_url
        .clone()
        .unwrap_or_else(|| local_url(admin));
    let issuer = Issuer::load(&url, auth.signing_key.as_deref(), &config.data_dir)
        .context("authentication (--authentication-oidc) cannot start")?;
    let mut sources: Vec<IssuerSource> = auth
        .issuers
        .iter()
        .map(|url| IssuerSource::Url(url.clone()))
        .collect();
    if let Some(cluster) = cluster {
        sources.push(IssuerSource::Kubernetes(cluster.client.clone()));
    }
    tracing::info!(issuer = %issuer.url(), trusted = ?sources, mode = auth.default_mode.name(), "OIDC authentication is on");
    let gate = Arc::new(Gate::on(auth.default_mode, Arc::new(issuer), sources));
    let prefetching = gate.clone();
    tokio::spawn(async move {
        if let Some(verifier) = prefetching.verifier() {
            verifier.prefetch().await;
        }
    });
    Ok(gate)
}

/// The `transport-encryption` of Knative's `config-features` ConfigMap: in
/// the manifests (file mode) or the cluster (Kubernetes mode), read once at
/// start; None when there is none.
async fn features_level(config: &ServerConfig) -> anyhow::Result<Option<TransportEncryption>> {
    use crate::api::{FEATURES_NAME, FEATURES_NAMESPACE};
    if let Some(settings) = &config.kubernetes {
        let client = kubernetes::client(settings.kubeconfig.as_deref()).await?;
        return tls_secret::features_level(client).await;
    }
    let paths = config.paths.clone();
    let class = config.default_class;
    let manifests = tokio::task::spawn_blocking(move || manifest::load(&paths, class)).await?;
    let found = manifests
        .objects
        .iter()
        .find_map(|loaded| match &loaded.resource {
            crate::api::Resource::ConfigMap(map) => map.transport_encryption(),
            _ => None,
        });
    // A level Knative does not know is refused at load, with its file and
    // line: it decides how the listener serves, so it stops the start too.
    let object = format!("ConfigMap {FEATURES_NAMESPACE}/{FEATURES_NAME}:");
    if let Some(refused) = manifests
        .errors
        .iter()
        .map(ToString::to_string)
        .find(|e| e.contains(&object) && e.contains(crate::api::TRANSPORT_ENCRYPTION_KEY))
    {
        anyhow::bail!("{refused} (or give --transport-encryption)");
    }
    match found {
        Some(Ok(level)) => Ok(Some(level)),
        // Refused at load with its file and line too; named here because
        // it decides how the listener serves.
        Some(Err(e)) => anyhow::bail!(
            "ConfigMap {FEATURES_NAMESPACE}/{FEATURES_NAME}: {e} (or give --transport-encryption)"
        ),
        None => Ok(None),
    }
}

/// How each listener treats its connections, with the certificates loaded
/// (a certificate that does not load stops `run` here, naming its flag).
fn listener_tls(tls: &TlsConfig) -> anyhow::Result<(ListenerTls, ListenerTls)> {
    let main = match &tls.main {
        Some(files) if tls.level.https() => {
            ListenerTls::new(tls.level, CertStore::from_files(files.clone())?)
        }
        _ => ListenerTls::plain(),
    };
    let admin = match &tls.admin {
        Some(files) => ListenerTls::new(
            TransportEncryption::Permissive,
            CertStore::from_files(files.clone())?,
        ),
        None => ListenerTls::plain(),
    };
    Ok((main, admin))
}

/// Binds the main and admin listeners first, so that a port in use fails
/// `run` before anything else starts.
async fn bind(config: &ServerConfig) -> anyhow::Result<(TcpListener, TcpListener)> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", config.listen))?;
    let admin_listener = TcpListener::bind(config.admin)
        .await
        .with_context(|| format!("cannot listen on {} (--admin)", config.admin))?;
    Ok((listener, admin_listener))
}

/// Both halves under one [`ControlPlane`]: serving runs revisions on the
/// cluster (Kubernetes mode) or on this machine, and eventing sends with
/// `sender` (which reaches service hosts on the main listener). Also
/// returns serving's host router, which the main listener consults on
/// every request.
fn control_plane(
    config: &ServerConfig,
    listen: SocketAddr,
    admin: SocketAddr,
    cluster: Option<&Cluster>,
    registry: Arc<BrokerRegistry>,
    gate: Arc<Gate>,
    sender: EventSender,
) -> (Arc<ControlPlane>, Arc<Router>) {
    let (config_objects, objects) = watch::channel(Arc::new(ConfigObjects::default()));
    let job_settings = JobSettings {
        data_dir: config.data_dir.clone(),
        ..config.serving.jobs.clone()
    };
    let (runtime, job_runtime): (Arc<dyn Runtime>, Arc<dyn JobRuntime>) = match cluster {
        Some(cluster) => (
            cluster.runtime(),
            Arc::new(KubernetesJobs::new(cluster.client.clone())),
        ),
        None => {
            let (runtime, connector, network) = local_runtimes(config, objects.clone());
            let jobs = LocalJobs::new(job_settings.clone(), objects, connector, network);
            (runtime, Arc::new(jobs))
        }
    };
    let jobs = JobSinks::new(job_settings, job_runtime, local_url(admin));
    let stats = cluster.map_or_else(ClusterStats::alone, |cluster| cluster.stats.clone());
    let serving = ServingController::new(
        config.serving_settings(listen, stats),
        runtime,
        config_objects,
        jobs,
    );
    let router = serving.router();
    let eventing = EventingController::new(
        config.eventing_settings(listen),
        registry,
        sender,
        cluster.map_or_else(Replication::single, Cluster::replication),
        gate,
    );
    (Arc::new(ControlPlane::new(eventing, serving)), router)
}

/// What keeps objects coming in; the server holds it until it stops.
struct ObjectFeed {
    /// File mode with `watch`: the manifest paths' watcher.
    watcher: Option<notify::RecommendedWatcher>,
    /// Kubernetes mode: the informers feeding the control plane.
    kubernetes: Option<KubernetesControl>,
    /// Kubernetes mode: the leader election, which gives the Lease up on stop.
    election: Option<tokio::task::JoinHandle<()>>,
}

/// Starts feeding the control plane its objects: from the API server in
/// Kubernetes mode, else from the manifest files (applied once before this
/// returns, so the server is ready with them).
async fn feed_objects(
    config: &ServerConfig,
    control: &Arc<ControlPlane>,
    cluster: Option<Cluster>,
    listen: SocketAddr,
    admin: SocketAddr,
) -> anyhow::Result<ObjectFeed> {
    Ok(match cluster {
        Some(cluster) => {
            tracing::info!(%listen, %admin, "reading objects from the Kubernetes API server");
            let kubernetes =
                KubernetesControl::start(cluster.client, control.clone(), cluster.leader).await;
            ObjectFeed {
                watcher: None,
                kubernetes: Some(kubernetes),
                election: Some(cluster.election),
            }
        }
        None => ObjectFeed {
            watcher: load_and_watch(config, control).await?,
            kubernetes: None,
            election: None,
        },
    })
}

/// How this process reaches one of its own listeners: the bound address,
/// or loopback when it listens on every address.
fn local_url(address: SocketAddr) -> String {
    let ip = match address.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
        }
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, address.port()))
}

/// One machine's runtimes: processes, and containers in an engine (which is
/// connected at start when this data folder ran containers before, so that
/// what a killed run left goes at once). Also returns the engine
/// connection and the default container network, which jobs share.
fn local_runtimes(
    config: &ServerConfig,
    objects: watch::Receiver<Arc<ConfigObjects>>,
) -> (Arc<dyn Runtime>, Arc<EngineConnector>, ContainerNetwork) {
    let serving = &config.serving;
    let container = ContainerRuntime::new(
        serving.container.clone(),
        serving.local,
        &config.data_dir,
        objects.clone(),
    );
    container.connect_in_background();
    let connector = container.connector();
    let network = container.network();
    let runtime = Arc::new(LocalRuntimes {
        process: ProcessRuntime::new(serving.local, objects),
        container,
    });
    (runtime, connector, network)
}

/// File mode: applies the manifests, then (with `watch`) re-applies them
/// when their files change, as long as the returned watcher lives.
async fn load_and_watch(
    config: &ServerConfig,
    control: &Arc<ControlPlane>,
) -> anyhow::Result<Option<notify::RecommendedWatcher>> {
    let paths = config.paths.clone();
    let class = config.default_class;
    let manifests = tokio::task::spawn_blocking(move || manifest::load(&paths, class)).await?;
    tracing::info!(
        objects = manifests.objects.len(),
        refused = manifests.errors.len(),
        "manifests loaded"
    );
    control.apply(Arc::new(manifests)).await;
    if !config.watch {
        return Ok(None);
    }
    Ok(crate::control::watch::watch(config.paths.clone(), control.clone())
        .map_err(|e| tracing::warn!(error = %e, "hot reload is off: cannot watch the manifest paths"))
        .ok())
}

/// The API server connection of Kubernetes mode, this replica's part in
/// the leader election, and the state sources keep for the next leader.
struct Cluster {
    client: kube::Client,
    leader: watch::Receiver<bool>,
    election: tokio::task::JoinHandle<()>,
    /// Every replica's autoscaling samples, summed on the leader.
    stats: Arc<ClusterStats>,
    /// None when the token's Secret cannot be had: no exchange then.
    token: Option<PeerToken>,
    source_state: Arc<ClusterState>,
}

impl Cluster {
    /// Connects, joins the election (writing where this replica's admin
    /// listener is, `admin` unless `--peer-url` says otherwise) and starts
    /// the exchange of autoscaling samples with the other replicas.
    async fn connect(
        settings: &KubernetesSettings,
        admin: SocketAddr,
        stopped: watch::Receiver<bool>,
    ) -> anyhow::Result<Cluster> {
        let client = kubernetes::client(settings.kubeconfig.as_deref()).await?;
        let mut lease = settings.lease.clone();
        lease.peer_url = lease.peer_url.or_else(|| peers::default_peer_url(admin));
        if lease.peer_url.is_none() {
            tracing::warn!(
                "no address for the other replicas to reach this one: set --peer-url (or POD_IP); while this replica leads, it autoscales on its own traffic only"
            );
        }
        // Without the token the replicas cannot trust each other's samples:
        // each then autoscales on its own traffic, as before there was an
        // exchange, rather than not starting for an RBAC rule.
        let token = peers::peer_token(client.clone(), &lease.namespace)
            .await
            .map_err(|e| tracing::warn!(error = %e, "the replicas do not exchange autoscaling samples; the leader autoscales on its own traffic only"))
            .ok();
        let identity = lease.identity.clone();
        let elector = LeaderElector::new(client.clone(), lease);
        let leader_url = elector.leader_url();
        let (leader, election) = elector.spawn(stopped.clone());
        let stats = ClusterStats::replicated();
        let source_state = Arc::new(ClusterState::new(client.clone(), &settings.lease.namespace));
        if let Some(token) = &token {
            tokio::spawn(peers::exchange(
                stats.clone(),
                identity,
                leader.clone(),
                leader_url,
                token.clone(),
                stopped,
            ));
        }
        Ok(Cluster {
            client,
            leader,
            election,
            stats,
            token,
            source_state,
        })
    }

    fn peers(&self) -> Option<Peers> {
        Some(Peers {
            cluster: self.stats.clone(),
            token: self.token.clone()?,
        })
    }

    /// Sources run on the leader only follow the election, and keep their
    /// state in the Lease's namespace.
    fn replication(&self) -> Replication {
        Replication {
            leading: self.leader.clone(),
            state: Some(self.source_state.clone()),
        }
    }

    /// Revisions run as Deployments, scaled by the leader.
    fn runtime(&self) -> Arc<dyn Runtime> {
        Arc::new(KubernetesRuntime::new(
            self.client.clone(),
            self.leader.clone(),
        ))
    }
}

/// The main listener's service: a request for a service host goes to the
/// serving proxy, anything else to the broker ingress.
#[derive(Clone)]
struct MainService {
    ingress: IngressState,
    router: Arc<Router>,
    proxy: Proxy,
    /// The listener's own address, as the peer of requests handed over in
    /// process.
    own_peer: Peer,
}

/// pilotlight's own deliveries to its Services and brokers, without a
/// socket (see `eventing::delivery`'s `in_process`).
impl MainListenerService for MainService {
    fn call(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Response<Body>> + Send + 'static>> {
        let main = self.clone();
        Box::pin(async move { main.serve(request, &main.own_peer).await })
    }
}

impl MainService {
    async fn serve<B>(&self, request: Request<B>, peer: &Peer) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let host = request
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri().host())
            .unwrap_or_default();
        match self.router.lookup(host) {
            HostMatch::Route(route) => self.proxy.serve(&route, request, peer).await,
            HostMatch::Unknown => text(
                http::StatusCode::NOT_FOUND,
                self.router.unknown_host_message(host),
            ),
            HostMatch::NotServing => ingress::serve(&self.ingress, request).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_tls_the_ingress_url_is_https_at_the_port_it_had() {
        let mut config = ServerConfig::on_free_ports("m".into(), "d".into());
        let listen: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        assert_eq!(config.ingress_url(listen), "http://127.0.0.1:8080");
        config.tls.level = TransportEncryption::Permissive;
        assert_eq!(config.ingress_url(listen), "https://127.0.0.1:8080");
        config.ingress_url = Some("http://ingress.ns.svc/".into());
        assert_eq!(config.ingress_url(listen), "https://ingress.ns.svc:80");
        config.ingress_url = Some("http://ingress.ns.svc/base".into());
        assert_eq!(config.ingress_url(listen), "https://ingress.ns.svc:80/base");
        config.ingress_url = Some("https://events.example.com".into());
        assert_eq!(config.ingress_url(listen), "https://events.example.com");
    }
}
