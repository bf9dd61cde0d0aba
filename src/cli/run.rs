//! `pilotlight run`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use crate::api::autoscaling::AutoscalerDefaults;
use crate::api::broker::BrokerClass;
use crate::api::pod::ContainerNetwork;
use crate::auth::{AuthConfig, AuthorizationMode};
use crate::control::kubernetes::KubernetesSettings;
use crate::control::kubernetes::leader::LeaseSettings;
use crate::control::kubernetes::tls_secret::TlsSecret;
use crate::eventing::backend::log::LogConfig;
use crate::eventing::backend::memory::MemoryConfig;
use crate::eventing::broker::ingress::{
    DEFAULT_BODY_TIMEOUT, DEFAULT_MAX_EVENT_BYTES, DEFAULT_MAX_REQUESTS_PER_BROKER, IngressLimits,
};
use crate::listener::{
    DEFAULT_HEADER_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HEADER_BYTES, ListenerLimits,
};
use crate::server::{Server, ServerConfig, ServingConfig, TlsConfig};
use crate::serving::jobs::JobSettings;
use crate::serving::runtime::container::ContainerConfig;
use crate::serving::runtime::container::engine::socket_path;
use crate::telemetry::trace::{self, TraceSettings};
use crate::tls::{CertFiles, TransportEncryption};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClassArg {
    /// The durable on-disk log.
    Log,
    /// In memory, lost on exit.
    Memory,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NetworkArg {
    /// The engine's bridge network; the port is published on 127.0.0.1.
    Bridge,
    /// The host's network.
    Host,
}

/// Knative's transport-encryption levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportArg {
    /// Plain HTTP only.
    Disabled,
    /// HTTPS and plain HTTP on the same port; addresses list HTTPS first.
    Permissive,
    /// HTTPS only; plain HTTP is refused (426) with a message that says so.
    Strict,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Manifest files or folders (multi-document YAML). Repeatable.
    #[arg(short = 'f', long = "filename", env = "PILOTLIGHT_FILENAME", value_delimiter = ',', default_values = ["brokers", "triggers"], conflicts_with = "kubernetes")]
    pub paths: Vec<PathBuf>,
    /// Address of the main listener (broker ingress at /{namespace}/{broker}).
    #[arg(long, env = "PILOTLIGHT_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Address of the admin listener (/metrics, /healthz, /readyz, the API of `pilotlight get`).
    #[arg(long, env = "PILOTLIGHT_ADMIN", default_value = "127.0.0.1:9090")]
    pub admin: SocketAddr,
    /// A secret that lets `pilotlight replay` (the admin API's replay) move a
    /// trigger back when --admin is not a loopback address; without it, replay
    /// is refused there. Send it as `Authorization: Bearer TOKEN`.
    #[arg(long, env = "PILOTLIGHT_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Where the log backend keeps events and trigger cursors.
    #[arg(long, env = "PILOTLIGHT_DATA_DIR", default_value = ".pilotlight")]
    pub data_dir: PathBuf,
    /// Largest event a broker stores, in bytes (data and attributes), from
    /// the ingress or as a reply; also the largest request body the ingress reads.
    #[arg(long = "max-event-size", env = "PILOTLIGHT_MAX_EVENT_SIZE", default_value_t = DEFAULT_MAX_EVENT_BYTES)]
    pub max_event_bytes: usize,
    /// Backend of brokers without a class annotation.
    #[arg(
        long,
        env = "PILOTLIGHT_DEFAULT_BROKER_CLASS",
        value_enum,
        default_value = "log"
    )]
    pub default_broker_class: ClassArg,
    /// Log backend: keep at most this many bytes per broker (oldest segments go first).
    #[arg(long, env = "PILOTLIGHT_RETENTION_BYTES", default_value_t = 1 << 30)]
    pub retention_bytes: u64,
    /// Log backend: start a new segment file once the active one is past
    /// this many bytes (Kafka's segment.bytes); retention removes whole segments.
    #[arg(long, env = "PILOTLIGHT_SEGMENT_BYTES", default_value_t = 64 << 20)]
    pub segment_bytes: u64,
    /// Log backend: keep events at most this many hours.
    #[arg(long, env = "PILOTLIGHT_RETENTION_HOURS", default_value_t = 168)]
    pub retention_hours: u64,
    /// Open connections the main listener serves at once; one more is
    /// answered 503 with Retry-After and closed.
    #[arg(long, env = "PILOTLIGHT_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,
    /// Largest request head (request line and headers) in bytes, on both
    /// listeners: 431 past it. At least 8192 (hyper's smallest HTTP/1
    /// read buffer).
    #[arg(long, env = "PILOTLIGHT_MAX_HEADER_BYTES", default_value_t = DEFAULT_MAX_HEADER_BYTES as u64, value_parser = clap::value_parser!(u64).range(8192..))]
    pub max_header_bytes: u64,
    /// Seconds a client has to send a request's head (the line and the
    /// headers), counted on a kept-alive connection from the previous
    /// response: past it the connection is closed (slow clients, idle
    /// connections). Keep it above clients' pool idle timeouts.
    #[arg(long, env = "PILOTLIGHT_HEADER_TIMEOUT", default_value_t = DEFAULT_HEADER_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout: u64,
    /// Seconds a request to a broker has for its whole body: 408 past it.
    #[arg(long, env = "PILOTLIGHT_REQUEST_BODY_TIMEOUT", default_value_t = DEFAULT_BODY_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    pub request_body_timeout: u64,
    /// Requests a broker's ingress handles at once (each holds its body
    /// until stored): 429 with Retry-After past it.
    #[arg(long, env = "PILOTLIGHT_MAX_REQUESTS_PER_BROKER", default_value_t = DEFAULT_MAX_REQUESTS_PER_BROKER as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_requests_per_broker: u64,
    /// Deliveries in flight per unordered trigger (annotation pilotlight.dev/max-in-flight overrides).
    #[arg(long, env = "PILOTLIGHT_MAX_IN_FLIGHT", default_value_t = 100)]
    pub max_in_flight: usize,
    /// The RabbitMQ of RabbitMQBrokers without spec.config and RabbitmqSources
    /// without a cluster reference, e.g. amqp://guest:guest@127.0.0.1:5672/%2f.
    #[arg(long, env = "PILOTLIGHT_RABBITMQ_URI")]
    pub rabbitmq_uri: Option<String>,
    /// Kafka bootstrap servers (host:port,...) for brokers of class Kafka
    /// without spec.config.
    #[arg(long, env = "PILOTLIGHT_KAFKA_BOOTSTRAP_SERVERS")]
    pub kafka_bootstrap_servers: Option<String>,
    /// Do not re-apply manifests when their files change.
    #[arg(long, env = "PILOTLIGHT_NO_WATCH", conflicts_with = "kubernetes")]
    pub no_watch: bool,
    /// Services answer to {service}.{namespace}.{domain} on the main listener.
    #[arg(long, env = "PILOTLIGHT_DOMAIN", default_value = "localhost")]
    pub domain: String,
    /// A YAML file of autoscaler defaults, with Knative's config-autoscaler
    /// keys (stable-window: 60s, scale-to-zero-grace-period: 30s, ...).
    #[arg(long, env = "PILOTLIGHT_AUTOSCALER_CONFIG")]
    pub autoscaler_config: Option<PathBuf>,
    /// One autoscaler default as KEY=VALUE (config-autoscaler keys, such as
    /// scale-to-zero-grace-period=10s); overrides the file. Repeatable.
    #[arg(long = "autoscaler", value_name = "KEY=VALUE")]
    pub autoscaler: Vec<String>,
    /// Requests one revision holds while no instance has room; more get 503.
    #[arg(long, env = "PILOTLIGHT_MAX_QUEUED_REQUESTS", default_value_t = 1000)]
    pub max_queued_requests: usize,
    /// Add a W3C Server-Timing header to the response of every request that
    /// waited in the activator: `cold-start;dur=<ms>` (its wait while no
    /// instance was ready) and `activator-queue;dur=<ms>` (its whole wait).
    /// Off by default: it tells clients about the server's state.
    #[arg(long, env = "PILOTLIGHT_SERVER_TIMING")]
    pub server_timing: bool,
    /// Jobs of one JobSink that run at once; more events wait, stored (the
    /// annotation pilotlight.dev/max-running-jobs overrides).
    #[arg(long, env = "PILOTLIGHT_MAX_RUNNING_JOBS", default_value_t = 4)]
    pub max_running_jobs: usize,
    /// Revisions without traffic kept per service; older ones are removed.
    #[arg(long, env = "PILOTLIGHT_REVISION_RETENTION", default_value_t = 20)]
    pub revision_retention: usize,
    /// The container engine's socket (dockerd or Podman), such as
    /// unix:///run/podman/podman.sock. Default: DOCKER_HOST, else
    /// /var/run/docker.sock, then Podman's rootful and rootless sockets.
    #[arg(long, env = "PILOTLIGHT_CONTAINER_ENGINE", value_name = "SOCKET")]
    pub container_engine: Option<String>,
    /// How container instances are networked: bridge (the engine's network,
    /// the port published on 127.0.0.1) or host (the host's network, faster
    /// to start). The annotation pilotlight.dev/container-network overrides.
    #[arg(
        long,
        env = "PILOTLIGHT_CONTAINER_NETWORK",
        value_enum,
        default_value = "bridge"
    )]
    pub container_network: NetworkArg,
    /// Where clients reach the ingress (such as
    /// http://pilotlight-ingress.pilotlight.svc.cluster.local), for broker
    /// addresses in status. Default: the main listener's address.
    #[arg(long, env = "PILOTLIGHT_INGRESS_URL")]
    pub ingress_url: Option<String>,
    /// Export traces over OTLP/HTTP to this collector (such as
    /// http://localhost:4318; spans go to its /v1/traces). Without it and
    /// without OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, no traces are made.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// The share of traces kept, from 0 to 1 (0.01: one in a hundred); a
    /// request that arrives with a `traceparent` keeps its sender's choice.
    /// Default: OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG, else all.
    #[arg(long, value_name = "RATIO")]
    pub trace_sampling: Option<f64>,
    /// Read Brokers, Triggers, sources and Services from the Kubernetes API
    /// server (in-cluster, or a kubeconfig) instead of files, write their
    /// status there, and run revisions as Deployments.
    #[arg(long, env = "PILOTLIGHT_KUBERNETES")]
    pub kubernetes: bool,
    /// The kubeconfig of --kubernetes and of ApiServerSources (in file mode
    /// too, for sources that watch a cluster); without it: KUBECONFIG (or
    /// ~/.kube/config), then the in-cluster service account.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of the leader-election Lease of --kubernetes (the pod's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// This replica's name (the pod's name): in the leader election, with a
    /// random suffix that keeps a restarted replica distinct, and as its
    /// Kafka static member id (group.instance.id), without one.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Where the other replicas of --kubernetes reach this one's admin
    /// listener: while it leads, they send it their autoscaling samples
    /// there. Default: http://$POD_IP with the --admin port, or the --admin
    /// address when it is a specific one.
    #[arg(long, env = "PILOTLIGHT_PEER_URL", requires = "kubernetes")]
    pub peer_url: Option<String>,
    /// Senders must authenticate with an OIDC bearer token for the broker's
    /// or channel's audience, and EventPolicies decide who may send
    /// (Knative's config-features authentication-oidc: enabled).
    /// pilotlight's own senders get tokens it signs.
    #[arg(long, env = "PILOTLIGHT_AUTHENTICATION_OIDC")]
    pub authentication_oidc: bool,
    /// An OIDC issuer whose tokens are trusted (its discovery document is at
    /// URL/.well-known/openid-configuration). Repeatable, or
    /// comma-separated. pilotlight's own issuer is always trusted, and in
    /// Kubernetes mode the API server's service-account issuer too.
    #[arg(
        long = "oidc-issuer",
        env = "PILOTLIGHT_OIDC_ISSUER",
        value_delimiter = ',',
        value_name = "URL",
        requires = "authentication_oidc"
    )]
    pub oidc_issuers: Vec<String>,
    /// Who may send to a broker or channel that no EventPolicy applies to:
    /// allow-all, allow-same-namespace (service accounts of its namespace;
    /// Knative's default) or deny-all.
    #[arg(long, env = "PILOTLIGHT_DEFAULT_AUTHORIZATION_MODE", default_value = "allow-same-namespace", value_parser = parse_mode)]
    pub default_authorization_mode: AuthorizationMode,
    /// The issuer URL (`iss`) of the tokens pilotlight signs for its own
    /// senders, where subscribers find its discovery document and JWKS.
    /// Default: the admin listener's address.
    #[arg(
        long,
        env = "PILOTLIGHT_OIDC_ISSUER_URL",
        value_name = "URL",
        requires = "authentication_oidc"
    )]
    pub oidc_issuer_url: Option<String>,
    /// pilotlight's token signing key: a P-256 private key, PKCS#8 PEM or
    /// DER (the same on every replica). Default: one made once and kept in
    /// the data folder (oidc/signing-key.p8).
    #[arg(
        long,
        env = "PILOTLIGHT_OIDC_SIGNING_KEY",
        value_name = "FILE",
        requires = "authentication_oidc"
    )]
    pub oidc_signing_key: Option<PathBuf>,
    /// Knative's transport-encryption level of the main listener: disabled
    /// (plain HTTP), permissive (HTTPS and HTTP on the one port) or strict
    /// (HTTPS only). Default: the transport-encryption key of Knative's
    /// config-features ConfigMap (knative-eventing) when there is one, else
    /// strict with --tls-cert or --tls-secret, else disabled.
    #[arg(long, env = "PILOTLIGHT_TRANSPORT_ENCRYPTION", value_enum)]
    pub transport_encryption: Option<TransportArg>,
    /// The main listener's certificate chain (PEM, leaf first); reloaded
    /// when the file changes.
    #[arg(
        long,
        env = "PILOTLIGHT_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key",
        conflicts_with = "tls_secret"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        env = "PILOTLIGHT_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Kubernetes mode: the main listener's certificate from a
    /// kubernetes.io/tls Secret (tls.crt, tls.key), as NAMESPACE/NAME;
    /// followed as it changes.
    #[arg(
        long,
        env = "PILOTLIGHT_TLS_SECRET",
        value_name = "NAMESPACE/NAME",
        requires = "kubernetes"
    )]
    pub tls_secret: Option<TlsSecret>,
    /// The admin listener's certificate chain (PEM): with it the admin
    /// listener serves HTTPS beside plain HTTP on its port.
    #[arg(
        long,
        env = "PILOTLIGHT_ADMIN_TLS_CERT",
        value_name = "FILE",
        requires = "admin_tls_key"
    )]
    pub admin_tls_cert: Option<PathBuf>,
    /// The private key of --admin-tls-cert (PEM).
    #[arg(
        long,
        env = "PILOTLIGHT_ADMIN_TLS_KEY",
        value_name = "FILE",
        requires = "admin_tls_cert"
    )]
    pub admin_tls_key: Option<PathBuf>,
}

/// `--default-authorization-mode`, in Knative's spellings.
fn parse_mode(text: &str) -> Result<AuthorizationMode, String> {
    AuthorizationMode::parse(text)
        .ok_or_else(|| format!("'{text}' is not one of allow-all, allow-same-namespace, deny-all"))
}

/// An issuer URL: http(s) with a host.
fn issuer_url(flag: &str, url: &str) -> anyhow::Result<String> {
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("{flag} '{url}' is not a URL"))?;
    anyhow::ensure!(
        crate::http_util::is_http_url(&uri),
        "{flag} '{url}': give an http or https URL with a host, such as https://issuer.example.com"
    );
    Ok(url.trim_end_matches('/').to_owned())
}

/// `--peer-url`: an http URL with a host (the admin listener speaks plain
/// HTTP).
fn peer_url(url: &str) -> anyhow::Result<String> {
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("--peer-url '{url}' is not a URL"))?;
    anyhow::ensure!(
        uri.scheme_str() == Some("http") && uri.host().is_some(),
        "--peer-url '{url}': give an http URL with a host and the admin port, such as http://10.0.0.7:9090"
    );
    Ok(url.trim_end_matches('/').to_owned())
}

impl RunArgs {
    pub(crate) fn server_config(&self) -> anyhow::Result<ServerConfig> {
        let serving = ServingConfig {
            domain: self.domain.trim_matches('.').to_ascii_lowercase(),
            autoscaler: self.autoscaler_defaults()?,
            queue_limit: self.max_queued_requests.max(1),
            server_timing: self.server_timing,
            retained_revisions: self.revision_retention,
            container: self.container_config()?,
            jobs: JobSettings {
                max_running_jobs: self.max_running_jobs.max(1),
                ..JobSettings::default()
            },
            ..ServingConfig::default()
        };
        Ok(ServerConfig {
            listener: ListenerLimits {
                max_connections: Some(usize::try_from(self.max_connections).unwrap_or(usize::MAX)),
                max_header_bytes: usize::try_from(self.max_header_bytes).unwrap_or(usize::MAX),
                header_timeout: Duration::from_secs(self.header_timeout),
            },
            ingress: IngressLimits {
                max_requests_per_broker: usize::try_from(self.max_requests_per_broker)
                    .unwrap_or(usize::MAX),
                body_timeout: Duration::from_secs(self.request_body_timeout),
            },
            paths: self.paths.clone(),
            listen: self.listen,
            admin: self.admin,
            data_dir: self.data_dir.clone(),
            max_event_bytes: self.max_event_bytes,
            default_class: match self.default_broker_class {
                ClassArg::Log => BrokerClass::Log,
                ClassArg::Memory => BrokerClass::Memory,
            },
            log: LogConfig {
                retention_bytes: Some(self.retention_bytes),
                retention_age: Some(Duration::from_secs(self.retention_hours * 3600)),
                // Below a few records a segment, rolls would outnumber writes.
                segment_bytes: self.segment_bytes.max(4096),
            },
            memory: MemoryConfig::default(),
            max_in_flight: self.max_in_flight.max(1),
            rabbitmq_uri: self.rabbitmq_uri.clone(),
            kafka_bootstrap_servers: self.kafka_bootstrap_servers.clone(),
            watch: !self.no_watch,
            serving,
            ingress_url: self.ingress_url()?,
            kubernetes: self
                .kubernetes
                .then(|| self.kubernetes_settings())
                .transpose()?,
            ping_clock: crate::eventing::source::PingClock::default(),
            kubeconfig: self.kubeconfig.clone(),
            replica: self.kubernetes.then(|| self.pod_name()),
            admin_token: self
                .admin_token
                .as_ref()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty()),
            auth: AuthConfig {
                enabled: self.authentication_oidc,
                issuers: self
                    .oidc_issuers
                    .iter()
                    .filter(|u| !u.trim().is_empty())
                    .map(|u| issuer_url("--oidc-issuer", u.trim()))
                    .collect::<anyhow::Result<_>>()?,
                default_mode: self.default_authorization_mode,
                own_issuer_url: self
                    .oidc_issuer_url
                    .as_deref()
                    .map(|u| issuer_url("--oidc-issuer-url", u))
                    .transpose()?,
                signing_key: self.oidc_signing_key.clone(),
            },
            tls: self.tls_config()?,
            in_process_hops: true,
        })
    }

    /// `--transport-encryption` and the certificates, checked together.
    fn tls_config(&self) -> anyhow::Result<TlsConfig> {
        let pair = |cert: &Option<PathBuf>, key: &Option<PathBuf>, flags| {
            Some(CertFiles {
                cert: cert.clone()?,
                key: key.clone()?,
                flags,
            })
        };
        let main = pair(&self.tls_cert, &self.tls_key, "--tls-cert/--tls-key");
        let certificate = main.is_some() || self.tls_secret.is_some();
        let level = match self.transport_encryption {
            Some(TransportArg::Disabled) => TransportEncryption::Disabled,
            Some(TransportArg::Permissive) => TransportEncryption::Permissive,
            Some(TransportArg::Strict) => TransportEncryption::Strict,
            None if certificate => TransportEncryption::Strict,
            None => TransportEncryption::Disabled,
        };
        let tls = TlsConfig {
            level,
            main,
            main_secret: self.tls_secret.clone(),
            level_from_features: self.transport_encryption.is_none(),
            admin: pair(
                &self.admin_tls_cert,
                &self.admin_tls_key,
                "--admin-tls-cert/--admin-tls-key",
            ),
        };
        tls.check()?;
        Ok(tls)
    }

    /// `--container-engine` (checked: a unix socket) and `--container-network`.
    fn container_config(&self) -> anyhow::Result<ContainerConfig> {
        if let Some(engine) = &self.container_engine {
            socket_path(engine).map_err(|e| anyhow::anyhow!("--container-engine: {e}"))?;
        }
        Ok(ContainerConfig {
            engine: self.container_engine.clone(),
            network: match self.container_network {
                NetworkArg::Bridge => ContainerNetwork::Bridge,
                NetworkArg::Host => ContainerNetwork::Host,
            },
        })
    }

    /// `--ingress-url`, checked: an http(s) URL with a host.
    fn ingress_url(&self) -> anyhow::Result<Option<String>> {
        let Some(url) = &self.ingress_url else {
            return Ok(None);
        };
        let uri: http::Uri = url
            .parse()
            .with_context(|| format!("--ingress-url '{url}' is not a URL"))?;
        anyhow::ensure!(
            crate::http_util::is_http_url(&uri),
            "--ingress-url '{url}': give an http or https URL with a host, such as http://pilotlight-ingress.pilotlight.svc.cluster.local"
        );
        Ok(Some(url.clone()))
    }

    /// This replica's name in a cluster: `--identity` (POD_NAME), else the
    /// host name, which is the pod's.
    fn pod_name(&self) -> String {
        self.identity
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "pilotlight".into())
    }

    fn kubernetes_settings(&self) -> anyhow::Result<KubernetesSettings> {
        let name = self.pod_name();
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let mut lease =
            LeaseSettings::new(&self.lease_namespace, format!("{name}_{}", &suffix[..8]));
        lease.peer_url = self.peer_url.as_deref().map(peer_url).transpose()?;
        Ok(KubernetesSettings {
            kubeconfig: self.kubeconfig.clone(),
            lease,
        })
    }

    /// The defaults (Knative's, see `AutoscalerDefaults`), then the file,
    /// then each --autoscaler flag.
    fn autoscaler_defaults(&self) -> anyhow::Result<AutoscalerDefaults> {
        let mut settings = serde_json::Map::new();
        if let Some(path) = &self.autoscaler_config {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {} (--autoscaler-config)", path.display()))?;
            let file: serde_json::Map<String, serde_json::Value> = serde_saphyr::from_str(&text)
                .with_context(|| {
                    format!(
                        "{} (--autoscaler-config) is not a YAML map of config-autoscaler keys",
                        path.display()
                    )
                })?;
            settings.extend(file);
        }
        for flag in &self.autoscaler {
            let (key, value) = flag.split_once('=').with_context(|| {
                format!("--autoscaler {flag}: write KEY=VALUE, such as stable-window=30s")
            })?;
            // YAML scalars, so that 2 is a number and true a boolean.
            let value: serde_json::Value = serde_saphyr::from_str(value)
                .unwrap_or_else(|_| serde_json::Value::String(value.to_owned()));
            settings.insert(key.trim().to_owned(), value);
        }
        serde_path_to_error::deserialize(serde_json::Value::Object(settings)).map_err(|e| {
            let source = match &self.autoscaler_config {
                Some(path) => format!("{} or --autoscaler", path.display()),
                None => "--autoscaler".into(),
            };
            anyhow::anyhow!("autoscaler setting {} ({source}): {}", e.path(), e.inner())
        })
    }
}

pub(crate) async fn run(args: RunArgs) -> anyhow::Result<()> {
    let traces = TraceSettings {
        endpoint: args.otlp_endpoint.clone(),
        sampling: args.trace_sampling,
    };
    if trace::install(&traces, tokio::runtime::Handle::current())? {
        tracing::info!(endpoint = ?traces.endpoint, "exporting traces over OTLP");
    }
    let server = Server::start(args.server_config()?).await?;
    tracing::info!(listen = %server.listen, admin = %server.admin, "pilotlight is running; Ctrl-C stops it");
    shutdown_signal().await;
    tracing::info!("stopping: saving trigger cursors");
    server.shutdown().await;
    // The spans of the last events, queued for the next batch.
    tokio::task::spawn_blocking(trace::shutdown).await.ok();
    Ok(())
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
