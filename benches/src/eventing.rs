//! `pilotlight-bench eventing`: ingress throughput and end-to-end latency of the memory
//! and log backends, measured against a raw hyper server in the same run.
//!
//! Absolute figures from a shared machine mean little: a noisy neighbour can
//! halve them from one run to the next. So every backend is measured as a
//! ratio to a raw hyper server that answers 202 and nothing else, driven by
//! the same load generator, in the same process, right before the backend's
//! own throughput phase (raw, memory, raw, log). Whatever slows the machine
//! during a pair slows both sides of its ratio alike.
//!
//! HTTPS ingress (`https`) is measured the same way against its own
//! baseline: one memory broker on a pilotlight serving both schemes on one
//! port (transport-encryption permissive, a certificate made in the run),
//! sent to over plain HTTP (`http`) and then over TLS on keep-alive
//! connections, by the same generator: the ratio is what TLS costs.
//!
//! Phases, each with a 1 s warm-up that is not counted:
//! - throughput: N keep-alive connections sending back to back (closed loop);
//! - latency: an open-loop generator ([`crate::open_loop`], as wrk2) at half
//!   the backend's measured max rate, on a core of its own, stamping each
//!   event with the time it was due (`ce-benchts`) so an in-process
//!   subscriber records due-to-delivery latency, and reporting how late the
//!   generator itself was beside it.
//!
//! Between phases the bench waits until the subscriber has received every
//! accepted event, so one phase's backlog does not slow the next.
//!
//! `memory-oidc` is the memory broker again with `--authentication-oidc`:
//! an issuer in this process (discovery and JWKS over HTTP), and every
//! event sent with a bearer token that pilotlight verifies (the same token
//! each time, as a sender reuses its token until it expires). Its target
//! is a ratio to the memory broker's, each measured against the raw phase
//! just before it: (memory-oidc / its raw) / (memory / its raw).
//!
//! `pilotlight-bench serving` measures serving instead (cold start, proxy
//! overhead, idle memory); see [`crate::serving`].

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use serde_json::json;

use pilotlight::auth::AuthConfig;
use pilotlight::server::Server;

use crate::http_server::HttpServer;
use crate::issuer::BenchIssuer;
use crate::load::{
    BENCH_TS, Load, Shape, Tally, WARMUP, Window, connect, exchange, nanos_since, new_histogram,
    record, run_load,
};
use crate::open_loop::{OpenLoop, run_open_loop};
use crate::pinning::Split;
use crate::report::{Check, checks_json, ms, quantile_ms, write_checks};
use crate::workdir::{NAMESPACE, TriggerSubscriber, WorkDir, server_config, trigger_yaml};

/// Longest wait, with no new delivery, for the subscriber to receive every
/// accepted event (a long backlog that still drains is fine).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const BROKER: &str = "bench";

/// Targets of the issue, met or not (a missed target does not fail the run).
const MEMORY_MIN_RATIO: f64 = 0.85;
const LOG_MIN_RATIO: f64 = 0.7;
const MEMORY_MAX_E2E_P99_MS: f64 = 2.0;
const LOG_MAX_E2E_P99_MS: f64 = 5.0;
/// memory-oidc's throughput against memory's, each over its raw phase.
const OIDC_MIN_RATIO: f64 = 0.9;
/// HTTPS ingress throughput as a ratio to plain HTTP on the same broker.
const HTTPS_MIN_RATIO: f64 = 0.8;

#[derive(Debug, Args)]
pub struct EventingArgs {
    /// Seconds each phase is measured, after a 1 s warm-up that is not counted.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Concurrent HTTP/1.1 keep-alive connections of the load generator.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Size of each event's data, in bytes.
    #[arg(long, default_value_t = 1024)]
    pub payload_bytes: usize,
    /// Also print the results as one JSON object (after the table).
    #[arg(long)]
    pub json: bool,
    /// Measure on a broker without a trigger: the ingress alone, without
    /// delivery and the in-process subscriber sharing the cores. The latency
    /// phase then reports ingress latency only (no end-to-end figure).
    #[arg(long)]
    pub ingress_only: bool,
    /// Measure only these targets (repeatable). A backend always gets its
    /// adjacent raw baseline, which its ratio needs. The scale phases
    /// (`triggers`, `backlog`) run only when named here.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Target>,
    /// Do not pin the latency phases' generator and the server to separate
    /// cores.
    #[arg(long)]
    pub no_pin: bool,
    /// Triggers on the broker of the `triggers` scale phase.
    #[arg(long, default_value_t = 10_000)]
    pub triggers: usize,
    /// Events published before the trigger of the `backlog` phase reads.
    #[arg(long, default_value_t = 1_000_000)]
    pub backlog_events: u64,
    /// Trace pilotlight's hops, keeping this share of traces (0.01, 1),
    /// exported over OTLP to a collector in this process that counts what
    /// it receives: what traces cost, against a run without this flag.
    #[arg(long, value_name = "RATIO")]
    pub trace_sampling: Option<f64>,
}

/// What a phase sends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// The raw hyper baseline.
    Raw,
    /// A broker on the memory backend.
    Memory,
    /// The memory broker with `--authentication-oidc`: every event carries
    /// a bearer token the ingress verifies.
    #[value(name = "memory-oidc")]
    MemoryOidc,
    /// A broker on the durable log backend.
    Log,
    /// An InMemoryChannel with one Subscription: what each step of a
    /// Sequence costs, next to the memory broker's trigger.
    Channel,
    /// A memory broker over HTTPS (keep-alive TLS connections); its ratio
    /// is to the same broker over plain HTTP, measured just before.
    Https,
    /// The HTTPS phase's baseline: the same broker over plain HTTP.
    #[value(skip)]
    Http,
    /// Scale: a memory broker with 10,000 triggers (distinct exact
    /// filters) against the same broker with 10, side by side.
    Triggers,
    /// Scale: a log broker's trigger catching up on a backlog of 1,000,000
    /// events, against the ingress rate that published them.
    Backlog,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Raw => "raw",
            Target::Memory => "memory",
            Target::MemoryOidc => "memory-oidc",
            Target::Log => "log",
            Target::Channel => "channel",
            Target::Https => "https",
            Target::Http => "http",
            Target::Triggers => "triggers",
            Target::Backlog => "backlog",
        }
    }

    /// The phase a target's ratio is to, run right before it.
    fn baseline(self) -> Target {
        match self {
            Target::Https => Target::Http,
            _ => Target::Raw,
        }
    }

    fn is_baseline(self) -> bool {
        matches!(self, Target::Raw | Target::Http)
    }

    /// The broker class annotation for the backends.
    fn class_annotation(self) -> &'static str {
        match self {
            Target::Raw | Target::Log | Target::Backlog => "MTChannelBasedBroker",
            Target::Triggers
            | Target::Memory
            | Target::MemoryOidc
            | Target::Channel
            | Target::Https
            | Target::Http => "Memory",
        }
    }

    fn min_ratio(self) -> f64 {
        match self {
            Target::Raw
            | Target::Memory
            | Target::MemoryOidc
            | Target::Channel
            | Target::Http
            | Target::Triggers => MEMORY_MIN_RATIO,
            Target::Log | Target::Backlog => LOG_MIN_RATIO,
            Target::Https => HTTPS_MIN_RATIO,
        }
    }

    fn max_e2e_p99_ms(self) -> f64 {
        match self {
            Target::Raw
            | Target::Memory
            | Target::MemoryOidc
            | Target::Channel
            | Target::Https
            | Target::Http
            | Target::Triggers => MEMORY_MAX_E2E_P99_MS,
            Target::Log | Target::Backlog => LOG_MAX_E2E_P99_MS,
        }
    }
}

pub async fn run(args: EventingArgs) -> anyhow::Result<()> {
    let settings = Settings::from_args(&args)?;
    let collector = match args.trace_sampling {
        Some(share) => Some(crate::collector::Collector::install(share).await?),
        None => None,
    };
    let raw = HttpServer::start(raw_service, true, "the raw baseline").await?;
    let backends: Vec<Target> = [
        Target::Memory,
        Target::MemoryOidc,
        Target::Log,
        Target::Channel,
        Target::Https,
    ]
    .into_iter()
    .filter(|t| args.only.is_empty() || args.only.contains(t))
    .collect();
    let scale_only = !args.only.is_empty()
        && args
            .only
            .iter()
            .all(|t| matches!(t, Target::Triggers | Target::Backlog));
    let mut report = Report::default();
    if backends.is_empty() && !scale_only {
        report
            .throughput
            .push(closed_loop(&settings, Target::Raw, raw.addr, "/").await?);
    }
    for backend in backends {
        if backend == Target::Https {
            match bench_https(&settings).await {
                Ok((http, https)) => report.throughput.extend([http, https]),
                Err(e) => report.failures.push(format!("https: {e:#}")),
            }
            continue;
        }
        let baseline = closed_loop(&settings, Target::Raw, raw.addr, "/").await?;
        report.throughput.push(baseline);
        match bench_backend(&settings, backend, raw.addr).await {
            Ok(run) => {
                report.throughput.push(run.max);
                report.latency.push(run.raw_latency);
                report.latency.push(run.latency);
            }
            Err(e) => report.failures.push(format!("{}: {e:#}", backend.name())),
        }
    }
    drop(raw);
    if args.only.contains(&Target::Triggers) {
        match crate::scale::bench_triggers(&settings, args.triggers).await {
            Ok(scale) => report.triggers = Some(scale),
            Err(e) => report.failures.push(format!("triggers: {e:#}")),
        }
    }
    if args.only.contains(&Target::Backlog) {
        match crate::scale::bench_backlog(&settings, args.backlog_events).await {
            Ok(scale) => report.backlog = Some(scale),
            Err(e) => report.failures.push(format!("backlog: {e:#}")),
        }
    }
    println!("{}", report.table(&settings));
    if let Some(collector) = &collector {
        println!("{}", collector.summary());
    }
    if args.json {
        println!("{}", report.json(&settings));
    }
    report.verdict()
}

/// What every phase shares.
pub(crate) struct Settings {
    pub(crate) connections: usize,
    pub(crate) duration: Duration,
    pub(crate) payload: Bytes,
    /// Send times are stamped as nanoseconds since this instant, which the
    /// subscriber (same process) compares with its own clock.
    pub(crate) origin: Instant,
    ingress_only: bool,
    /// The latency phases' cores: the generator's and the rest's; `None`
    /// with `--no-pin` or a single core.
    split: Option<Split>,
}

impl Settings {
    fn from_args(args: &EventingArgs) -> anyhow::Result<Self> {
        if args.connections == 0 {
            bail!("--connections must be at least 1");
        }
        if args.duration_secs == 0 {
            bail!("--duration-secs must be at least 1");
        }
        if args.payload_bytes > (1 << 20) {
            bail!("--payload-bytes must be at most 1 MiB (the ingress limit)");
        }
        // Printable bytes: the data is opaque to pilotlight, but readable in a
        // debugger or a packet capture.
        let payload: Vec<u8> = (0..args.payload_bytes)
            .map(|i| b'a' + (i % 26) as u8)
            .collect();
        Ok(Settings {
            connections: args.connections,
            duration: Duration::from_secs(args.duration_secs),
            payload: Bytes::from(payload),
            origin: Instant::now(),
            ingress_only: args.ingress_only,
            split: (!args.no_pin).then(Split::plan).flatten(),
        })
    }

    pub(crate) fn load(
        &self,
        target: Target,
        addr: SocketAddr,
        path: &str,
        rate: Option<f64>,
    ) -> Load {
        self.signed_load(target, addr, path, rate, None)
    }

    /// [`Settings::load`], each event with `authorization` when given.
    fn signed_load(
        &self,
        target: Target,
        addr: SocketAddr,
        path: &str,
        rate: Option<f64>,
        authorization: Option<&http::HeaderValue>,
    ) -> Load {
        Load {
            addr,
            path: path.to_owned(),
            payload: self.payload.clone(),
            connections: self.connections,
            duration: self.duration,
            rate,
            origin: self.origin,
            id_prefix: format!("{}-{}", target.name(), uuid::Uuid::new_v4().simple()),
            shape: match authorization {
                Some(authorization) => Shape::SignedCloudEvent {
                    authorization: authorization.clone(),
                },
                None => Shape::CloudEvent,
            },
            tls: None,
        }
    }
}

// ---------------------------------------------------------------------------
// Phases
// ---------------------------------------------------------------------------

/// One phase's outcome.
pub(crate) struct Phase {
    pub(crate) target: Target,
    /// The paced rate asked for; `None` for a closed-loop (max) phase.
    rate: Option<f64>,
    window: Window,
    pub(crate) tally: Tally,
    /// End-to-end latency (due send time to subscriber receipt), latency
    /// phases only.
    e2e: Option<Histogram<u64>>,
    /// Open-loop phases: how late the generator woke and sent.
    lateness: Option<Lateness>,
}

/// How late an open-loop generator was, next to the latencies it measured.
struct Lateness {
    woke_late: Histogram<u64>,
    sent_late: Histogram<u64>,
    waited_for_connection: u64,
}

impl Phase {
    /// A closed-loop phase's outcome.
    pub(crate) fn closed(target: Target, window: Window, tally: Tally) -> Self {
        Phase {
            target,
            rate: None,
            window,
            tally,
            e2e: None,
            lateness: None,
        }
    }

    /// An open-loop phase's outcome.
    fn open(target: Target, rate: f64, window: Window, run: OpenLoop) -> Self {
        Phase {
            target,
            rate: Some(rate),
            window,
            tally: run.tally,
            e2e: None,
            lateness: Some(Lateness {
                woke_late: run.woke_late,
                sent_late: run.sent_late,
                waited_for_connection: run.waited_for_connection,
            }),
        }
    }

    /// Accepted events per second over the measured window.
    pub(crate) fn events_per_second(&self) -> f64 {
        self.tally.accepted as f64 / self.window.measured().as_secs_f64()
    }
}

/// Closed-loop phase: the most events per second the target accepts.
async fn closed_loop(
    settings: &Settings,
    target: Target,
    addr: SocketAddr,
    path: &str,
) -> anyhow::Result<Phase> {
    let (tally, window) = run_load(settings.load(target, addr, path, None)).await?;
    Ok(Phase::closed(target, window, tally))
}

/// Open-loop phase without a subscriber (the raw baseline's latency floor).
async fn paced(
    settings: &Settings,
    target: Target,
    addr: SocketAddr,
    path: &str,
    rate: f64,
) -> anyhow::Result<Phase> {
    let window = Window::starting_now(settings.duration);
    let load = settings.load(target, addr, path, Some(rate));
    let run = run_open_loop(load, window, settings.split.as_ref()).await?;
    Ok(Phase::open(target, rate, window, run))
}

/// A backend's three phases.
struct BackendRun {
    max: Phase,
    /// The raw server paced at the backend's latency rate, run just before
    /// it: the latency floor of the harness and machine at that moment.
    raw_latency: Phase,
    latency: Phase,
}

/// Throughput at max, then latency at half that rate (raw first, then the
/// backend). Every server started is shut down again, also on failure.
async fn bench_backend(
    settings: &Settings,
    backend: Target,
    raw: SocketAddr,
) -> anyhow::Result<BackendRun> {
    let mut first = Deployment::start(settings, backend, !settings.ingress_only, None).await?;
    let max = match first.closed_loop(settings).await {
        Ok(max) => max,
        Err(e) => {
            first.stop().await;
            return Err(e);
        }
    };
    // With --ingress-only the latency phase runs on the same trigger-less
    // broker: half of the ingress-only maximum would overload delivery.
    let measured = latency_phases(settings, &mut first, raw, &max).await;
    first.stop().await;
    let (raw_latency, latency) = measured?;
    Ok(BackendRun {
        max,
        raw_latency,
        latency,
    })
}

async fn latency_phases(
    settings: &Settings,
    deployment: &mut Deployment,
    raw: SocketAddr,
    max: &Phase,
) -> anyhow::Result<(Phase, Phase)> {
    let max_rate = max.events_per_second();
    if max_rate < 2.0 {
        bail!(
            "the broker accepted {} events in {:?}: too few to pace a latency phase",
            max.tally.accepted,
            settings.duration
        );
    }
    let rate = max_rate / 2.0;
    let raw_latency = paced(settings, Target::Raw, raw, "/", rate).await?;
    let latency = deployment.paced(settings, rate).await?;
    Ok((raw_latency, latency))
}

/// The HTTPS phase and its baseline: one memory broker on a pilotlight
/// serving HTTP and HTTPS on one port, sent to over plain HTTP, then over
/// TLS, with the same connections and payload.
async fn bench_https(settings: &Settings) -> anyhow::Result<(Phase, Phase)> {
    let certs = WorkDir::create("https-certs")?;
    let (server_tls, client_tls) = bench_certificates(&certs)?;
    let mut deployment = Deployment::start(
        settings,
        Target::Https,
        !settings.ingress_only,
        Some(server_tls),
    )
    .await?;
    let http = deployment
        .closed_loop_over(settings, Target::Http, None)
        .await;
    let https = match &http {
        Ok(_) => {
            deployment
                .closed_loop_over(settings, Target::Https, Some(client_tls))
                .await
        }
        Err(_) => Err(anyhow::anyhow!("the HTTP baseline failed")),
    };
    deployment.stop().await;
    drop(certs);
    Ok((http?, https?))
}

/// A CA and a `localhost` certificate it signs, written to `dir`: the
/// server's TLS settings (permissive), and a client that trusts the CA.
fn bench_certificates(
    dir: &WorkDir,
) -> anyhow::Result<(pilotlight::server::TlsConfig, Arc<rustls::ClientConfig>)> {
    let ca_key = rcgen::KeyPair::generate().context("a CA key")?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).context("CA params")?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "pilotlight-bench CA");
    let ca_cert = ca.self_signed(&ca_key).context("the CA certificate")?;
    let key = rcgen::KeyPair::generate().context("a key")?;
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .context("params")?
        .signed_by(&key, &rcgen::Issuer::from_params(&ca, &ca_key))
        .context("the server certificate")?;
    let files = pilotlight::tls::CertFiles {
        cert: dir.path.join("tls.crt"),
        key: dir.path.join("tls.key"),
        flags: "--tls-cert/--tls-key",
    };
    std::fs::write(&files.cert, leaf.pem()).context("writing the certificate")?;
    std::fs::write(&files.key, key.serialize_pem()).context("writing the key")?;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ca_cert.der().clone())
        .context("trusting the bench CA")?;
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS versions")?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let server = pilotlight::server::TlsConfig {
        level: pilotlight::tls::TransportEncryption::Permissive,
        main: Some(files),
        ..pilotlight::server::TlsConfig::default()
    };
    Ok((server, Arc::new(client)))
}

/// A running pilotlight with one broker of the backend (`default/bench`) and,
/// optionally, a trigger delivering to an in-process subscriber.
pub(crate) struct Deployment {
    backend: Target,
    pub(crate) server: Server,
    pub(crate) subscriber: Option<Subscriber>,
    /// Events the broker accepted so far, which the subscriber must receive.
    pub(crate) accepted: u64,
    /// memory-oidc: the issuer pilotlight trusts, and the header every
    /// event carries.
    issuer: Option<(BenchIssuer, http::HeaderValue)>,
    /// The `type`s the events cycle through (`None`: the bench's one type).
    types: Option<Arc<[String]>>,
    /// Removed last, after the server let go of the log.
    pub(crate) dir: WorkDir,
}

impl Deployment {
    async fn start(
        settings: &Settings,
        backend: Target,
        with_trigger: bool,
        tls: Option<pilotlight::server::TlsConfig>,
    ) -> anyhow::Result<Self> {
        let subscriber = match with_trigger {
            true => Some(Subscriber::start(settings.origin).await?),
            false => None,
        };
        let yaml = manifest(backend, subscriber.as_ref().map(Subscriber::addr));
        Deployment::start_with(settings, backend, subscriber, &yaml, None, |config| {
            if let Some(tls) = tls {
                config.tls = tls;
            }
        })
        .await
    }

    /// A pilotlight on these manifests (`configure` adjusts its settings),
    /// sent one probe event before it counts as started.
    pub(crate) async fn start_with(
        settings: &Settings,
        backend: Target,
        subscriber: Option<Subscriber>,
        yaml: &str,
        types: Option<Arc<[String]>>,
        configure: impl FnOnce(&mut pilotlight::server::ServerConfig),
    ) -> anyhow::Result<Self> {
        let dir = WorkDir::create(backend.name())?;
        std::fs::write(dir.manifests().join("bench.yaml"), yaml)
            .with_context(|| format!("cannot write the manifest in {}", dir.path.display()))?;
        let mut config = server_config(&dir);
        configure(&mut config);
        let issuer = match backend {
            Target::MemoryOidc => {
                let issuer = BenchIssuer::start().await?;
                config.auth = AuthConfig {
                    enabled: true,
                    issuers: vec![issuer.url.clone()],
                    ..AuthConfig::default()
                };
                let token = issuer.token(
                    &format!("system:serviceaccount:{NAMESPACE}:bench"),
                    &format!("eventing.knative.dev/broker/{NAMESPACE}/{BROKER}"),
                )?;
                let header = http::HeaderValue::try_from(format!("Bearer {token}"))
                    .context("the bench token as a header")?;
                Some((issuer, header))
            }
            _ => None,
        };
        let server = Server::start(config)
            .await
            .with_context(|| format!("starting pilotlight with a {} broker", backend.name()))?;
        let mut deployment = Deployment {
            backend,
            server,
            subscriber,
            accepted: 0,
            issuer,
            types,
            dir,
        };
        match deployment.probe(settings).await {
            Ok(()) => Ok(deployment),
            Err(e) => {
                deployment.stop().await;
                Err(e)
            }
        }
    }

    /// The broker's address, or the channel's (`{name}-kn-channel`).
    pub(crate) fn path(&self) -> String {
        match self.backend {
            Target::Channel => format!("/{NAMESPACE}/{BROKER}-kn-channel"),
            _ => format!("/{NAMESPACE}/{BROKER}"),
        }
    }

    /// The header memory-oidc's events carry.
    fn authorization(&self) -> Option<&http::HeaderValue> {
        self.issuer.as_ref().map(|(_, header)| header)
    }

    /// What the phases send: the backend's events, signed for memory-oidc,
    /// of the deployment's types; paced at `rate`, or closed loop.
    pub(crate) fn load(&self, settings: &Settings, rate: Option<f64>) -> Load {
        let mut load = settings.signed_load(
            self.backend,
            self.server.listen,
            &self.path(),
            rate,
            self.authorization(),
        );
        if let Some(types) = &self.types {
            load.shape = Shape::TypedCloudEvent {
                types: types.clone(),
            };
        }
        load
    }

    async fn probe(&mut self, settings: &Settings) -> anyhow::Result<()> {
        self.accepted += probe(&self.load(settings, None)).await?;
        self.drain().await
    }

    pub(crate) async fn closed_loop(&mut self, settings: &Settings) -> anyhow::Result<Phase> {
        let load = self.load(settings, None);
        let (tally, window) = run_load(load).await?;
        let phase = Phase::closed(self.backend, window, tally);
        self.accepted += phase.tally.sent_accepted;
        self.drain().await?;
        Ok(phase)
    }

    /// A closed-loop phase reported as `target`, over TLS with `tls`.
    async fn closed_loop_over(
        &mut self,
        settings: &Settings,
        target: Target,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> anyhow::Result<Phase> {
        let mut load = settings.load(target, self.server.listen, &self.path(), None);
        load.tls = tls;
        let (tally, window) = run_load(load).await?;
        self.accepted += tally.sent_accepted;
        self.drain().await?;
        Ok(Phase::closed(target, window, tally))
    }

    /// Open-loop phase. With a trigger, the subscriber records the
    /// end-to-end latency of events due inside the measured window; without
    /// one, only the ingress latency is measured.
    async fn paced(&mut self, settings: &Settings, rate: f64) -> anyhow::Result<Phase> {
        let load = self.load(settings, Some(rate));
        let window = Window::starting_now(settings.duration);
        if let Some(subscriber) = &self.subscriber {
            subscriber.record_between(
                nanos_since(settings.origin, window.measure_from),
                nanos_since(settings.origin, window.end),
            );
        }
        let run = run_open_loop(load, window, settings.split.as_ref()).await?;
        self.accepted += run.tally.sent_accepted;
        self.drain().await?;
        let mut phase = Phase::open(self.backend, rate, window, run);
        phase.e2e = self.subscriber.as_ref().map(Subscriber::take_e2e);
        Ok(phase)
    }

    /// Waits until the subscriber has every accepted event, so that one
    /// phase's backlog does not slow the next.
    pub(crate) async fn drain(&self) -> anyhow::Result<()> {
        match &self.subscriber {
            Some(subscriber) => subscriber.wait_for(self.accepted, self.backend).await,
            None => Ok(()),
        }
    }

    /// Shuts the server down (dispatchers, cursors), then the subscriber; the
    /// temporary folder goes last.
    pub(crate) async fn stop(self) {
        let Deployment {
            server,
            subscriber,
            issuer,
            dir,
            ..
        } = self;
        server.shutdown().await;
        drop(subscriber);
        drop(issuer);
        drop(dir);
    }
}

/// One event before the phases: fails early and clearly when the broker is
/// not serving (a bad manifest, a backend that did not start).
async fn probe(load: &Load) -> anyhow::Result<u64> {
    let mut sender = connect(load.addr).await?;
    let request = load.request(0, 0, Instant::now())?;
    let (status, body) = exchange(&mut sender, request, "the probe event").await?;
    if status != StatusCode::ACCEPTED {
        bail!(
            "the broker answered the probe event with {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    Ok(1)
}

/// One broker of the backend's class and, with a subscriber, one trigger to
/// it; or one InMemoryChannel and a Subscription.
pub(crate) fn manifest(backend: Target, subscriber: Option<SocketAddr>) -> String {
    if backend == Target::Channel {
        return channel_manifest(subscriber);
    }
    let class = backend.class_annotation();
    let mut yaml = format!(
        "apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: {BROKER}
  namespace: {NAMESPACE}
  annotations:
    eventing.knative.dev/broker.class: {class}
"
    );
    if let Some(subscriber) = subscriber {
        yaml.push_str(&trigger_yaml(
            "bench",
            BROKER,
            None,
            TriggerSubscriber::Uri(subscriber),
        ));
    }
    yaml
}

fn channel_manifest(subscriber: Option<SocketAddr>) -> String {
    let mut yaml = format!(
        "apiVersion: messaging.knative.dev/v1
kind: InMemoryChannel
metadata:
  name: {BROKER}
  namespace: {NAMESPACE}
"
    );
    if let Some(subscriber) = subscriber {
        let _ = write!(
            yaml,
            "---
apiVersion: messaging.knative.dev/v1
kind: Subscription
metadata:
  name: bench
  namespace: {NAMESPACE}
spec:
  channel:
    apiVersion: messaging.knative.dev/v1
    kind: InMemoryChannel
    name: {BROKER}
  subscriber:
    uri: http://{subscriber}/
"
        );
    }
    yaml
}

// ---------------------------------------------------------------------------
// In-process servers: the raw baseline and the subscriber
// ---------------------------------------------------------------------------

fn accepted() -> Response<Empty<Bytes>> {
    let mut response = Response::new(Empty::new());
    *response.status_mut() = StatusCode::ACCEPTED;
    response
}

/// The baseline: read the body, answer 202, nothing else.
async fn raw_service(request: Request<Incoming>) -> Result<Response<Empty<Bytes>>, Infallible> {
    let _ = request.into_body().collect().await;
    Ok(accepted())
}

/// The trigger's subscriber: counts deliveries and, inside the latency
/// phase's window, records send-to-receipt latency.
pub(crate) struct Subscriber {
    state: Arc<SubscriberState>,
    server: HttpServer,
}

struct SubscriberState {
    origin: Instant,
    received: AtomicU64,
    /// Deliveries without a readable `ce-benchts` (should stay 0).
    unstamped: AtomicU64,
    /// Events sent in [from, to) (ns since origin) are recorded.
    record_from: AtomicU64,
    record_to: AtomicU64,
    e2e: Mutex<Histogram<u64>>,
}

impl Subscriber {
    pub(crate) async fn start(origin: Instant) -> anyhow::Result<Self> {
        let state = Arc::new(SubscriberState {
            origin,
            received: AtomicU64::new(0),
            unstamped: AtomicU64::new(0),
            record_from: AtomicU64::new(u64::MAX),
            record_to: AtomicU64::new(0),
            e2e: Mutex::new(new_histogram()?),
        });
        let shared = state.clone();
        let service = move |request: Request<Incoming>| {
            let state = shared.clone();
            async move {
                state.receive(request).await;
                Ok::<_, Infallible>(accepted())
            }
        };
        // The subscriber is part of the harness: no Nagle delay on its side.
        let server = HttpServer::start(service, true, "the bench subscriber").await?;
        Ok(Subscriber { state, server })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// Deliveries so far.
    pub(crate) fn received(&self) -> u64 {
        self.state.received.load(Ordering::Acquire)
    }

    fn record_between(&self, from_ns: u64, to_ns: u64) {
        self.state.record_to.store(to_ns, Ordering::Release);
        self.state.record_from.store(from_ns, Ordering::Release);
    }

    /// The recorded end-to-end latencies; recording stops.
    fn take_e2e(&self) -> Histogram<u64> {
        self.state.record_from.store(u64::MAX, Ordering::Release);
        let mut e2e = self.state.e2e.lock().unwrap_or_else(|e| e.into_inner());
        let taken = e2e.clone();
        e2e.reset();
        taken
    }

    /// Waits until `expected` events arrived, so phases do not overlap.
    pub(crate) async fn wait_for(&self, expected: u64, backend: Target) -> anyhow::Result<()> {
        let mut last = self.state.received.load(Ordering::Acquire);
        let mut deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            let received = self.state.received.load(Ordering::Acquire);
            if received != last {
                last = received;
                deadline = Instant::now() + DRAIN_TIMEOUT;
            }
            if received >= expected {
                let unstamped = self.state.unstamped.load(Ordering::Acquire);
                if unstamped > 0 {
                    bail!(
                        "the subscriber got {unstamped} deliveries without a '{BENCH_TS}' header"
                    );
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the subscriber received {received} of the {expected} events the {} broker accepted, and nothing more for {DRAIN_TIMEOUT:?}: events were lost or delivery stalled",
                    backend.name()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl SubscriberState {
    async fn receive(&self, request: Request<Incoming>) {
        let sent_ns = request
            .headers()
            .get(BENCH_TS)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        // Read the whole body, as a real subscriber would.
        let _ = request.into_body().collect().await;
        let now_ns = nanos_since(self.origin, Instant::now());
        match sent_ns {
            Some(sent)
                if sent >= self.record_from.load(Ordering::Acquire)
                    && sent < self.record_to.load(Ordering::Acquire) =>
            {
                let mut e2e = self.e2e.lock().unwrap_or_else(|e| e.into_inner());
                record(&mut e2e, now_ns.saturating_sub(sent));
            }
            Some(_) => {}
            None => {
                self.unstamped.fetch_add(1, Ordering::AcqRel);
            }
        }
        self.received.fetch_add(1, Ordering::AcqRel);
    }
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Report {
    /// In run order: raw, memory, raw, log.
    throughput: Vec<Phase>,
    latency: Vec<Phase>,
    /// Backends whose measurement broke (lost events, errors).
    failures: Vec<String>,
    /// `--only triggers`: 10 against 10,000 triggers.
    triggers: Option<crate::scale::TriggersScale>,
    /// `--only backlog`: catching up on a backlog.
    backlog: Option<crate::scale::BacklogScale>,
}

impl Report {
    /// The raw phase run right before a backend's phase, for its ratio.
    fn ratio(&self, index: usize) -> Option<f64> {
        let phase = &self.throughput[index];
        if phase.target.is_baseline() || index == 0 {
            return None;
        }
        let baseline = &self.throughput[index - 1];
        (baseline.target == phase.target.baseline() && baseline.events_per_second() > 0.0)
            .then(|| phase.events_per_second() / baseline.events_per_second())
    }

    /// memory-oidc's throughput as a ratio to memory's, each over the raw
    /// phase run just before it.
    fn oidc_ratio(&self) -> Option<f64> {
        let of = |target: Target| {
            let index = self.throughput.iter().position(|p| p.target == target)?;
            self.ratio(index)
        };
        let (memory, oidc) = (of(Target::Memory)?, of(Target::MemoryOidc)?);
        (memory > 0.0).then(|| oidc / memory)
    }

    fn checks(&self) -> Vec<Check> {
        let mut checks = Vec::new();
        if let Some(relative) = self.oidc_ratio() {
            checks.push(Check {
                name: format!("memory-oidc >= {OIDC_MIN_RATIO:.2}x memory"),
                figure: format!("{relative:.2}x"),
                met: relative >= OIDC_MIN_RATIO,
            });
        }
        for (index, phase) in self.throughput.iter().enumerate() {
            if phase.target == Target::MemoryOidc {
                continue;
            }
            if let Some(ratio) = self.ratio(index) {
                let min = phase.target.min_ratio();
                checks.push(Check {
                    name: format!(
                        "{} >= {min:.2}x {}",
                        phase.target.name(),
                        phase.target.baseline().name()
                    ),
                    figure: format!("{ratio:.2}x"),
                    met: ratio >= min,
                });
            }
        }
        for (index, phase) in self.latency.iter().enumerate() {
            if let Some(e2e) = &phase.e2e {
                let max = phase.target.max_e2e_p99_ms();
                let p99 = quantile_ms(e2e, 0.99);
                // The raw server's ingress p99 at the same rate, just before:
                // when it alone is near the target, the machine decides.
                let floor = index
                    .checked_sub(1)
                    .and_then(|i| self.latency.get(i))
                    .filter(|raw| raw.target == Target::Raw)
                    .map_or_else(String::new, |raw| {
                        format!(" (raw {:.2})", quantile_ms(&raw.tally.latency, 0.99))
                    });
                let late = phase.lateness.as_ref().map_or_else(String::new, |l| {
                    format!(" (gen late {:.2})", quantile_ms(&l.woke_late, 0.99))
                });
                checks.push(Check {
                    name: format!("{} e2e p99 <= {max} ms", phase.target.name()),
                    figure: format!("{p99:.2} ms{floor}{late}"),
                    met: !e2e.is_empty() && p99 <= max,
                });
            }
        }
        if let Some(triggers) = &self.triggers {
            checks.extend(triggers.checks());
        }
        if let Some(backlog) = &self.backlog {
            checks.extend(backlog.checks());
        }
        checks
    }

    fn table(&self, settings: &Settings) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\npilotlight-bench eventing: {} connections, {}-byte binary events, {} s per phase after a {} s warm-up\n",
            settings.connections,
            settings.payload.len(),
            settings.duration.as_secs(),
            WARMUP.as_secs()
        );
        self.write_throughput(&mut out, settings);
        if !self.latency.is_empty() {
            self.write_latency(&mut out, settings);
        }
        if let Some(triggers) = &self.triggers {
            out.push_str(&triggers.table());
        }
        if let Some(backlog) = &self.backlog {
            out.push_str(&backlog.table());
        }
        let _ = writeln!(
            out,
            "\ntargets: memory >= {MEMORY_MIN_RATIO}x raw, memory-oidc >= {OIDC_MIN_RATIO}x memory (token verification on), log >= {LOG_MIN_RATIO}x raw, https >= {HTTPS_MIN_RATIO}x http, e2e p99 <= {MEMORY_MAX_E2E_P99_MS} ms (memory), <= {LOG_MAX_E2E_P99_MS} ms (log)"
        );
        write_checks(&mut out, &self.checks(), &self.failures, (30, 28));
        out
    }

    fn write_throughput(&self, out: &mut String, settings: &Settings) {
        if self.throughput.is_empty() {
            return;
        }
        let fanout = if settings.ingress_only {
            "ingress only: the broker has no trigger"
        } else {
            "the trigger delivers to an in-process subscriber meanwhile"
        };
        let _ = writeln!(
            out,
            "throughput (closed loop; {fanout}; each raw row ran just before the backend below it,\nthe http row just before https: the same memory broker over plain HTTP, then TLS)"
        );
        let _ = writeln!(
            out,
            "{:<11} {:>10} {:>7}  {:>22}  {:>8}",
            "target", "events/s", "ratio", "ingress p50/p99 (ms)", "errors"
        );
        for (index, phase) in self.throughput.iter().enumerate() {
            let ratio = self
                .ratio(index)
                .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x"));
            let _ = writeln!(
                out,
                "{:<11} {:>10.0} {:>7}  {:>22}  {:>8}",
                phase.target.name(),
                phase.events_per_second(),
                ratio,
                format!(
                    "{:.2} / {:.2}",
                    quantile_ms(&phase.tally.latency, 0.5),
                    quantile_ms(&phase.tally.latency, 0.99)
                ),
                phase.tally.errors()
            );
        }
    }

    fn write_latency(&self, out: &mut String, settings: &Settings) {
        {
            let pinning = settings.split.as_ref().map_or_else(
                || "not pinned (--no-pin, or a single core)".to_owned(),
                Split::describe,
            );
            let _ = writeln!(
                out,
                "\nlatency at half of each backend's max rate, open loop (raw rows: the raw server at the same rate, just before;\nevery latency from the time the send was due; e2e = due -> subscriber receipt;\ngen late = how late the generator woke for a send, its own floor; sent late = that plus waiting for a free connection)\npinning: {pinning}"
            );
            let _ = writeln!(
                out,
                "{:<11} {:>9} {:>9}  {:>20}  {:>24}  {:>8} {:>6}  {:>24}  {:>18}",
                "target",
                "rate/s",
                "got/s",
                "ingress p50/p99 (ms)",
                "e2e p50/p99/max (ms)",
                "samples",
                "errors",
                "gen late p50/p99/max (ms)",
                "sent late p99 (ms)"
            );
            for phase in &self.latency {
                let e2e = phase.e2e.as_ref();
                let e2e_text = e2e.map_or_else(
                    || "-".to_owned(),
                    |h| {
                        format!(
                            "{:.2} / {:.2} / {:.2}",
                            quantile_ms(h, 0.5),
                            quantile_ms(h, 0.99),
                            ms(h.max())
                        )
                    },
                );
                let (woke, sent) = phase.lateness.as_ref().map_or_else(
                    || ("-".to_owned(), "-".to_owned()),
                    |l| {
                        (
                            format!(
                                "{:.3} / {:.3} / {:.2}",
                                quantile_ms(&l.woke_late, 0.5),
                                quantile_ms(&l.woke_late, 0.99),
                                ms(l.woke_late.max())
                            ),
                            format!("{:.3}", quantile_ms(&l.sent_late, 0.99)),
                        )
                    },
                );
                let _ = writeln!(
                    out,
                    "{:<11} {:>9.0} {:>9.0}  {:>20}  {:>24}  {:>8} {:>6}  {:>24}  {:>18}",
                    phase.target.name(),
                    phase.rate.unwrap_or_default(),
                    phase.events_per_second(),
                    format!(
                        "{:.2} / {:.2}",
                        quantile_ms(&phase.tally.latency, 0.5),
                        quantile_ms(&phase.tally.latency, 0.99)
                    ),
                    e2e_text,
                    e2e.map_or(0, Histogram::len),
                    phase.tally.errors(),
                    woke,
                    sent
                );
            }
        }
    }

    fn json(&self, settings: &Settings) -> serde_json::Value {
        let phase_json = |index: Option<usize>, phase: &Phase| {
            let e2e = phase.e2e.as_ref().map(|h| {
                json!({
                    "p50_ms": quantile_ms(h, 0.5),
                    "p99_ms": quantile_ms(h, 0.99),
                    "max_ms": ms(h.max()),
                    "samples": h.len(),
                })
            });
            json!({
                "target": phase.target.name(),
                "paced_rate": phase.rate,
                "events_per_second": phase.events_per_second(),
                "ratio_to_raw": index.and_then(|i| self.ratio(i)),
                "accepted": phase.tally.accepted,
                "accepted_incl_warmup": phase.tally.sent_accepted,
                "rejected": phase.tally.rejected,
                "connection_errors": phase.tally.transport_errors,
                "ingress_p50_ms": quantile_ms(&phase.tally.latency, 0.5),
                "ingress_p99_ms": quantile_ms(&phase.tally.latency, 0.99),
                "ingress_max_ms": ms(phase.tally.latency.max()),
                "generator": phase.lateness.as_ref().map(|l| json!({
                    "woke_late_p50_ms": quantile_ms(&l.woke_late, 0.5),
                    "woke_late_p99_ms": quantile_ms(&l.woke_late, 0.99),
                    "woke_late_max_ms": ms(l.woke_late.max()),
                    "sent_late_p99_ms": quantile_ms(&l.sent_late, 0.99),
                    "sent_late_max_ms": ms(l.sent_late.max()),
                    "sends_that_waited_for_a_connection": l.waited_for_connection,
                })),
                "e2e": e2e,
            })
        };
        json!({
            "connections": settings.connections,
            "payload_bytes": settings.payload.len(),
            "duration_secs": settings.duration.as_secs(),
            "warmup_secs": WARMUP.as_secs(),
            "throughput": self.throughput.iter().enumerate().map(|(i, p)| phase_json(Some(i), p)).collect::<Vec<_>>(),
            "latency": self.latency.iter().map(|p| phase_json(None, p)).collect::<Vec<_>>(),
            "oidc_ratio_to_memory": self.oidc_ratio(),
            "pinning": settings.split.as_ref().map(Split::describe),
            "triggers_scale": self.triggers.as_ref().map(crate::scale::TriggersScale::json),
            "backlog_scale": self.backlog.as_ref().map(crate::scale::BacklogScale::json),
            "targets": checks_json(&self.checks()),
            "failures": self.failures,
        })
    }

    /// Missed targets are reported, not fatal; a broken measurement is.
    fn verdict(&self) -> anyhow::Result<()> {
        let mut problems = self.failures.clone();
        let scale = self
            .triggers
            .iter()
            .flat_map(crate::scale::TriggersScale::phases);
        for phase in self.throughput.iter().chain(&self.latency).chain(scale) {
            if phase.tally.errors() > 0 {
                problems.push(format!(
                    "{}: {}",
                    phase.target.name(),
                    phase.tally.describe_errors()
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("the benchmark is not valid: {}", problems.join("; "))
        }
    }
}
