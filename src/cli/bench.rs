//! `pilotlight bench`: ingress throughput and end-to-end latency of the memory
//! and log backends, measured against a raw hyper server in the same run.
//!
//! Absolute figures from a shared machine mean little: a noisy neighbour can
//! halve them from one run to the next. So every backend is measured as a
//! ratio to a raw hyper server that answers 202 and nothing else, driven by
//! the same load generator, in the same process, right before the backend's
//! own throughput phase (raw, memory, raw, log). Whatever slows the machine
//! during a pair slows both sides of its ratio alike.
//!
//! Phases, each with a 1 s warm-up that is not counted:
//! - throughput: N keep-alive connections sending back to back (closed loop);
//! - latency: the same connections paced to half the backend's measured max
//!   rate, stamping each event with its send time (`ce-benchts`) so an
//!   in-process subscriber records ingress-to-delivery latency.
//!
//! Between phases the bench waits until the subscriber has received every
//! accepted event, so one phase's backlog does not slow the next.
//!
//! `pilotlight bench serving` measures serving instead (cold start, proxy
//! overhead, idle memory); see [`crate::cli::bench_serving`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::server::{Server, ServerConfig};

/// Not counted at the start of every phase: connections, caches and the
/// log's first segment settle.
pub(super) const WARMUP: Duration = Duration::from_secs(1);
/// Time given to the connections to connect before a phase starts.
const CONNECT_GRACE: Duration = Duration::from_millis(200);
/// Longest wait, with no new delivery, for the subscriber to receive every
/// accepted event (a long backlog that still drains is fine).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The extension carrying the send time, in ns since the bench's origin.
const BENCH_TS: &str = "ce-benchts";
pub(super) const NAMESPACE: &str = "default";
const BROKER: &str = "bench";

/// Targets of the issue, met or not (a missed target does not fail the run).
const MEMORY_MIN_RATIO: f64 = 0.85;
const LOG_MIN_RATIO: f64 = 0.7;
const MEMORY_MAX_E2E_P99_MS: f64 = 2.0;
const LOG_MAX_E2E_P99_MS: f64 = 5.0;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    /// Another suite than the eventing benchmark (which runs without one).
    #[command(subcommand)]
    pub suite: Option<Suite>,
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
    /// adjacent raw baseline, which its ratio needs.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Target>,
}

/// The benchmark suites besides eventing's.
#[derive(Debug, clap::Subcommand)]
pub enum Suite {
    /// Serving: cold-start overhead, warm proxy overhead and idle memory,
    /// each against a baseline without pilotlight in the same run.
    Serving(crate::cli::bench_serving::ServingArgs),
    /// CESQL: evaluations per second of a typical filter against the same
    /// logic as a Rust closure.
    Cesql(crate::cli::bench_cesql::CesqlArgs),
    /// RabbitMQ: events/s through a RabbitMQBroker against a raw lapin
    /// publisher with confirms plus a consumer, on the same RabbitMQ.
    Rabbitmq(crate::cli::bench_rabbitmq::RabbitmqArgs),
    /// Kafka: events/s through a Kafka broker (ingress to subscriber)
    /// against a raw rdkafka producer and consumer on the same Kafka.
    Kafka(crate::cli::bench_kafka::KafkaBenchArgs),
}

/// What a phase sends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// The raw hyper baseline.
    Raw,
    /// A broker on the memory backend.
    Memory,
    /// A broker on the durable log backend.
    Log,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Raw => "raw",
            Target::Memory => "memory",
            Target::Log => "log",
        }
    }

    /// The broker class annotation for the backends.
    fn class_annotation(self) -> &'static str {
        match self {
            Target::Raw | Target::Log => "MTChannelBasedBroker",
            Target::Memory => "Memory",
        }
    }

    fn min_ratio(self) -> f64 {
        match self {
            Target::Raw | Target::Memory => MEMORY_MIN_RATIO,
            Target::Log => LOG_MIN_RATIO,
        }
    }

    fn max_e2e_p99_ms(self) -> f64 {
        match self {
            Target::Raw | Target::Memory => MEMORY_MAX_E2E_P99_MS,
            Target::Log => LOG_MAX_E2E_P99_MS,
        }
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.suite {
        Some(Suite::Serving(serving)) => return crate::cli::bench_serving::run(serving).await,
        Some(Suite::Cesql(cesql)) => return crate::cli::bench_cesql::run(cesql),
        Some(Suite::Rabbitmq(rabbitmq)) => {
            return crate::cli::bench_rabbitmq::run(rabbitmq).await;
        }
        Some(Suite::Kafka(kafka)) => return crate::cli::bench_kafka::run(kafka).await,
        None => {}
    }
    let settings = Settings::from_args(&args)?;
    let raw = HttpServer::start(raw_service, true, "the raw baseline").await?;
    let backends: Vec<Target> = [Target::Memory, Target::Log]
        .into_iter()
        .filter(|t| args.only.is_empty() || args.only.contains(t))
        .collect();
    let mut report = Report::default();
    if backends.is_empty() {
        report
            .throughput
            .push(closed_loop(&settings, Target::Raw, raw.addr, "/").await?);
    }
    for backend in backends {
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
    println!("{}", report.table(&settings));
    if args.json {
        println!("{}", report.json(&settings));
    }
    report.verdict()
}

/// What every phase shares.
struct Settings {
    connections: usize,
    duration: Duration,
    payload: Bytes,
    /// Send times are stamped as nanoseconds since this instant, which the
    /// subscriber (same process) compares with its own clock.
    origin: Instant,
    ingress_only: bool,
}

impl Settings {
    fn from_args(args: &BenchArgs) -> anyhow::Result<Self> {
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
        })
    }

    fn load(&self, target: Target, addr: SocketAddr, path: &str, rate: Option<f64>) -> Load {
        Load {
            addr,
            path: path.to_owned(),
            payload: self.payload.clone(),
            connections: self.connections,
            duration: self.duration,
            rate,
            origin: self.origin,
            id_prefix: format!("{}-{}", target.name(), uuid::Uuid::new_v4().simple()),
            shape: Shape::CloudEvent,
        }
    }
}

fn nanos_since(origin: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(origin).as_nanos()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------
// Phases
// ---------------------------------------------------------------------------

/// One phase's outcome.
struct Phase {
    target: Target,
    /// The paced rate asked for; `None` for a closed-loop (max) phase.
    rate: Option<f64>,
    window: Window,
    tally: Tally,
    /// End-to-end latency (ingress send to subscriber receipt), latency phases only.
    e2e: Option<Histogram<u64>>,
}

impl Phase {
    /// Accepted events per second over the measured window.
    fn events_per_second(&self) -> f64 {
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
    Ok(Phase {
        target,
        rate: None,
        window,
        tally,
        e2e: None,
    })
}

/// Paced phase without a subscriber (the raw baseline's latency floor).
async fn paced(
    settings: &Settings,
    target: Target,
    addr: SocketAddr,
    path: &str,
    rate: f64,
) -> anyhow::Result<Phase> {
    let (tally, window) = run_load(settings.load(target, addr, path, Some(rate))).await?;
    Ok(Phase {
        target,
        rate: Some(rate),
        window,
        tally,
        e2e: None,
    })
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
    let mut first = Deployment::start(settings, backend, !settings.ingress_only).await?;
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

/// A running pilotlight with one broker of the backend (`default/bench`) and,
/// optionally, a trigger delivering to an in-process subscriber.
struct Deployment {
    backend: Target,
    server: Server,
    subscriber: Option<Subscriber>,
    /// Events the broker accepted so far, which the subscriber must receive.
    accepted: u64,
    /// Removed last, after the server let go of the log.
    dir: WorkDir,
}

impl Deployment {
    async fn start(
        settings: &Settings,
        backend: Target,
        with_trigger: bool,
    ) -> anyhow::Result<Self> {
        let dir = WorkDir::create(backend.name())?;
        let subscriber = match with_trigger {
            true => Some(Subscriber::start(settings.origin).await?),
            false => None,
        };
        std::fs::write(
            dir.manifests().join("bench.yaml"),
            manifest(backend, subscriber.as_ref().map(Subscriber::addr)),
        )
        .with_context(|| format!("cannot write the manifest in {}", dir.path.display()))?;
        let server = Server::start(server_config(&dir))
            .await
            .with_context(|| format!("starting pilotlight with a {} broker", backend.name()))?;
        let mut deployment = Deployment {
            backend,
            server,
            subscriber,
            accepted: 0,
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

    fn path() -> String {
        format!("/{NAMESPACE}/{BROKER}")
    }

    async fn probe(&mut self, settings: &Settings) -> anyhow::Result<()> {
        self.accepted += probe(settings, self.backend, self.server.listen, &Self::path()).await?;
        self.drain().await
    }

    async fn closed_loop(&mut self, settings: &Settings) -> anyhow::Result<Phase> {
        let phase = closed_loop(settings, self.backend, self.server.listen, &Self::path()).await?;
        self.accepted += phase.tally.sent_accepted;
        self.drain().await?;
        Ok(phase)
    }

    /// Paced phase. With a trigger, the subscriber records the end-to-end
    /// latency of events sent inside the measured window; without one, only
    /// the ingress latency is measured.
    async fn paced(&mut self, settings: &Settings, rate: f64) -> anyhow::Result<Phase> {
        let load = settings.load(self.backend, self.server.listen, &Self::path(), Some(rate));
        let window = Window::starting_now(settings.duration);
        if let Some(subscriber) = &self.subscriber {
            subscriber.record_between(
                nanos_since(settings.origin, window.measure_from),
                nanos_since(settings.origin, window.end),
            );
        }
        let tally = run_load_in(load, window).await?;
        self.accepted += tally.sent_accepted;
        self.drain().await?;
        Ok(Phase {
            target: self.backend,
            rate: Some(rate),
            window,
            tally,
            e2e: self.subscriber.as_ref().map(Subscriber::take_e2e),
        })
    }

    /// Waits until the subscriber has every accepted event, so that one
    /// phase's backlog does not slow the next.
    async fn drain(&self) -> anyhow::Result<()> {
        match &self.subscriber {
            Some(subscriber) => subscriber.wait_for(self.accepted, self.backend).await,
            None => Ok(()),
        }
    }

    /// Shuts the server down (dispatchers, cursors), then the subscriber; the
    /// temporary folder goes last.
    async fn stop(self) {
        let Deployment {
            server,
            subscriber,
            dir,
            ..
        } = self;
        server.shutdown().await;
        drop(subscriber);
        drop(dir);
    }
}

/// One event before the phases: fails early and clearly when the broker is
/// not serving (a bad manifest, a backend that did not start).
async fn probe(
    settings: &Settings,
    backend: Target,
    addr: SocketAddr,
    path: &str,
) -> anyhow::Result<u64> {
    let load = settings.load(backend, addr, path, None);
    let mut sender = connect(addr).await?;
    sender
        .ready()
        .await
        .context("the probe connection closed")?;
    let response = sender
        .send_request(load.request(0, 0, Instant::now())?)
        .await
        .context("sending the probe event")?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .context("reading the probe's answer")?
        .to_bytes();
    if status != StatusCode::ACCEPTED {
        bail!(
            "the broker answered the probe event with {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    Ok(1)
}

pub(super) fn server_config(dir: &WorkDir) -> ServerConfig {
    ServerConfig::on_free_ports(dir.manifests(), dir.path.join("data"))
}

/// One broker of the backend's class and, with a subscriber, one trigger to it.
fn manifest(backend: Target, subscriber: Option<SocketAddr>) -> String {
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
        let _ = write!(
            yaml,
            "---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: bench
  namespace: {NAMESPACE}
spec:
  broker: {BROKER}
  subscriber:
    uri: http://{subscriber}/
"
        );
    }
    yaml
}

/// A temporary folder for manifests and the log, removed when dropped.
pub(super) struct WorkDir {
    pub(super) path: PathBuf,
}

impl WorkDir {
    pub(super) fn create(label: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "pilotlight-bench-{label}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let dir = WorkDir { path };
        std::fs::create_dir_all(dir.manifests())
            .with_context(|| format!("cannot create {}", dir.path.display()))?;
        Ok(dir)
    }

    pub(super) fn manifests(&self) -> PathBuf {
        self.path.join("manifests")
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(dir = %self.path.display(), error = %e, "could not remove the bench's temporary folder");
        }
    }
}

// ---------------------------------------------------------------------------
// Load generator (one implementation for every target)
// ---------------------------------------------------------------------------

/// What one phase sends, and how fast.
pub(super) struct Load {
    pub(super) addr: SocketAddr,
    pub(super) path: String,
    pub(super) payload: Bytes,
    pub(super) connections: usize,
    pub(super) duration: Duration,
    /// Total events/s to pace to; `None`: back to back (closed loop).
    pub(super) rate: Option<f64>,
    pub(super) origin: Instant,
    /// Makes every `ce-id` of the run unique.
    pub(super) id_prefix: String,
    pub(super) shape: Shape,
}

/// The requests of a load.
pub(super) enum Shape {
    /// Binary-mode CloudEvents POSTed with the payload; a 202 is success.
    CloudEvent,
    /// `GET {path}` with this Host header and no body (a Service, or an app
    /// directly); a 200 is success.
    Get { host: String },
}

impl Load {
    /// The answer that counts as success.
    fn expected(&self) -> StatusCode {
        match self.shape {
            Shape::CloudEvent => StatusCode::ACCEPTED,
            Shape::Get { .. } => StatusCode::OK,
        }
    }

    /// A binary-mode CloudEvent stamped with its send time, or a GET.
    fn request(
        &self,
        connection: usize,
        seq: u64,
        sent_at: Instant,
    ) -> anyhow::Result<Request<Full<Bytes>>> {
        if let Shape::Get { host } = &self.shape {
            return Request::builder()
                .method(Method::GET)
                .uri(self.path.as_str())
                .header(header::HOST, host.as_str())
                .body(Full::new(Bytes::new()))
                .context("building a bench request");
        }
        Request::builder()
            .method(Method::POST)
            .uri(self.path.as_str())
            .header(header::HOST, self.addr.to_string())
            .header("ce-specversion", "1.0")
            .header("ce-id", format!("{}-{connection}-{seq}", self.id_prefix))
            .header("ce-source", "/pilotlight/bench")
            .header("ce-type", "dev.pilotlight.bench")
            .header(BENCH_TS, nanos_since(self.origin, sent_at))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Full::new(self.payload.clone()))
            .context("building a bench request")
    }

    /// Time between two sends of one connection when paced.
    fn interval(&self) -> Option<Duration> {
        self.rate
            .map(|rate| Duration::from_secs_f64(self.connections as f64 / rate))
    }
}

/// When a phase starts, starts counting, and ends.
#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    start: Instant,
    measure_from: Instant,
    end: Instant,
}

impl Window {
    fn starting_now(duration: Duration) -> Self {
        let start = Instant::now() + CONNECT_GRACE;
        Window {
            start,
            measure_from: start + WARMUP,
            end: start + WARMUP + duration,
        }
    }

    pub(super) fn measured(&self) -> Duration {
        self.end.duration_since(self.measure_from)
    }

    fn counts(&self, at: Instant) -> bool {
        at >= self.measure_from && at <= self.end
    }
}

/// What connections saw. Answers other than the expected one (202 for
/// events, 200 for GETs) are kept apart: a benchmark that counted errors as
/// throughput would flatter a failing server.
pub(super) struct Tally {
    /// The answer that counts as success.
    expected: StatusCode,
    /// 202s at any time, warm-up included: what the subscriber must receive.
    pub(super) sent_accepted: u64,
    /// 202s completed inside the measured window.
    pub(super) accepted: u64,
    /// Other answers, by status code.
    rejected: BTreeMap<u16, u64>,
    transport_errors: u64,
    first_error: Option<String>,
    /// Ingress latency (send to 202) of the measured 202s, in ns.
    pub(super) latency: Histogram<u64>,
    /// Paced phases: how late the generator sent, at worst (it competes for
    /// the same cores, and a late send is load the server did not see).
    max_lag: Duration,
}

impl Tally {
    fn new(expected: StatusCode) -> anyhow::Result<Self> {
        Ok(Tally {
            expected,
            sent_accepted: 0,
            accepted: 0,
            rejected: BTreeMap::new(),
            transport_errors: 0,
            first_error: None,
            latency: new_histogram()?,
            max_lag: Duration::ZERO,
        })
    }

    fn record(&mut self, status: StatusCode, took: Duration, counted: bool) {
        if status != self.expected {
            *self.rejected.entry(status.as_u16()).or_default() += 1;
            return;
        }
        self.sent_accepted += 1;
        if counted {
            self.accepted += 1;
            record(
                &mut self.latency,
                u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            );
        }
    }

    fn transport_error(&mut self, error: String) {
        self.transport_errors += 1;
        self.first_error.get_or_insert(error);
    }

    fn merge(&mut self, other: Tally) -> anyhow::Result<()> {
        self.sent_accepted += other.sent_accepted;
        self.accepted += other.accepted;
        for (status, n) in other.rejected {
            *self.rejected.entry(status).or_default() += n;
        }
        self.transport_errors += other.transport_errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latency
            .add(&other.latency)
            .context("merging latency histograms")?;
        self.max_lag = self.max_lag.max(other.max_lag);
        Ok(())
    }

    pub(super) fn errors(&self) -> u64 {
        self.rejected.values().sum::<u64>() + self.transport_errors
    }

    pub(super) fn describe_errors(&self) -> String {
        let mut out = String::new();
        for (status, n) in &self.rejected {
            let _ = write!(out, "{n} answered {status}; ");
        }
        if self.transport_errors > 0 {
            let _ = write!(
                out,
                "{} connection errors (first: {})",
                self.transport_errors,
                self.first_error.as_deref().unwrap_or("?")
            );
        }
        out.trim_end_matches("; ").to_owned()
    }
}

pub(super) fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::<u64>::new(3).context("creating a latency histogram")
}

/// Records a latency in ns. The histograms grow as needed (`saturating_record`
/// would clamp to the initial tiny range instead).
pub(super) fn record(histogram: &mut Histogram<u64>, nanos: u64) {
    if histogram.record(nanos).is_err() {
        histogram.saturating_record(nanos);
    }
}

/// Runs a phase that starts as soon as the connections are up.
pub(super) async fn run_load(load: Load) -> anyhow::Result<(Tally, Window)> {
    let window = Window::starting_now(load.duration);
    Ok((run_load_in(load, window).await?, window))
}

/// Runs one task per connection over the window and adds up what they saw.
async fn run_load_in(load: Load, window: Window) -> anyhow::Result<Tally> {
    let load = Arc::new(load);
    let mut tasks = JoinSet::new();
    for index in 0..load.connections {
        tasks.spawn(connection(load.clone(), window, index));
    }
    let mut total = Tally::new(load.expected())?;
    while let Some(joined) = tasks.join_next().await {
        total.merge(joined.context("a load generator connection panicked")??)?;
    }
    Ok(total)
}

/// One connection's share of the phase. A failure ends the connection and is
/// counted, not hidden.
async fn connection(load: Arc<Load>, window: Window, index: usize) -> anyhow::Result<Tally> {
    let mut tally = Tally::new(load.expected())?;
    if let Err(e) = drive(&load, window, index, &mut tally).await {
        tally.transport_error(format!("{e:#}"));
    }
    Ok(tally)
}

async fn drive(load: &Load, window: Window, index: usize, tally: &mut Tally) -> anyhow::Result<()> {
    let mut sender = connect(load.addr).await?;
    tokio::time::sleep_until(window.start.into()).await;
    let interval = load.interval();
    // Spread the connections over one interval so paced sends do not come
    // in bursts of N.
    let offset = interval.map_or(Duration::ZERO, |i| {
        i.mul_f64(index as f64 / load.connections as f64)
    });
    for seq in 0u64.. {
        if let Some(interval) = interval {
            // Fixed deadlines, not a fixed gap: a late send does not lower
            // the rate, the next ones catch up.
            let due = window.start + offset + interval.mul_f64(seq as f64);
            if due >= window.end {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
            let now = Instant::now();
            if window.counts(now) {
                tally.max_lag = tally.max_lag.max(now.duration_since(due));
            }
        }
        if Instant::now() >= window.end {
            break;
        }
        sender
            .ready()
            .await
            .context("the server closed the connection")?;
        let sent_at = Instant::now();
        let response = sender
            .send_request(load.request(index, seq, sent_at)?)
            .await
            .context("sending an event")?;
        let status = response.status();
        response
            .into_body()
            .collect()
            .await
            .context("reading an answer")?;
        let done = Instant::now();
        tally.record(status, done.duration_since(sent_at), window.counts(done));
    }
    Ok(())
}

/// A bare HTTP/1.1 connection (no pool: one in flight, kept alive).
pub(super) async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true).context("cannot set TCP_NODELAY")?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP/1.1 handshake with {addr}"))?;
    // Ends when the sender is dropped; its errors surface through the sender.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

// ---------------------------------------------------------------------------
// In-process servers: the raw baseline and the subscriber
// ---------------------------------------------------------------------------

/// An HTTP server on 127.0.0.1 with any port, serving until stopped.
pub(super) struct HttpServer {
    pub(super) addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl HttpServer {
    /// Serves with hyper-util's auto builder, as `axum::serve` does for the
    /// ingress, so the raw baseline differs from pilotlight only in the work
    /// done per request. `nodelay` mirrors the ingress listener (on) for the
    /// baseline.
    pub(super) async fn start<S, F>(service: S, nodelay: bool, what: &str) -> anyhow::Result<Self>
    where
        S: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Result<Response<Empty<Bytes>>, Infallible>> + Send + 'static,
    {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .with_context(|| format!("cannot listen for {what}"))?;
        let addr = listener
            .local_addr()
            .with_context(|| format!("no local address for {what}"))?;
        let accept = tokio::spawn(accept_loop(listener, service, nodelay));
        Ok(HttpServer { addr, accept })
    }
}

impl Drop for HttpServer {
    /// Stops accepting; open connections end when their clients close them.
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop<S, F>(listener: TcpListener, service: S, nodelay: bool)
where
    S: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Empty<Bytes>>, Infallible>> + Send + 'static,
{
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: do not spin.
                tracing::warn!(error = %e, "bench server: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if nodelay {
            let _ = stream.set_nodelay(true);
        }
        let service = service.clone();
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service_fn(service))
                .await;
        });
    }
}

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
struct Subscriber {
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
    async fn start(origin: Instant) -> anyhow::Result<Self> {
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

    fn addr(&self) -> SocketAddr {
        self.server.addr
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
    async fn wait_for(&self, expected: u64, backend: Target) -> anyhow::Result<()> {
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
}

/// A target of the issue and how the run fared.
pub(super) struct Check {
    pub name: String,
    pub figure: String,
    pub met: bool,
}

impl Check {
    fn verdict(&self) -> &'static str {
        if self.met { "met" } else { "MISSED" }
    }
}

/// The targets table and the failures, at the end of a report; the column
/// widths fit each suite's target names.
pub(super) fn write_checks(
    out: &mut String,
    checks: &[Check],
    failures: &[String],
    widths: (usize, usize),
) {
    let (name_width, figure_width) = widths;
    for check in checks {
        let _ = writeln!(
            out,
            "  {:<name_width$} {:<figure_width$} {}",
            check.name,
            check.figure,
            check.verdict()
        );
    }
    for failure in failures {
        let _ = writeln!(out, "  FAILED {failure}");
    }
}

/// The targets as the `--json` reports list them.
pub(super) fn checks_json(checks: &[Check]) -> serde_json::Value {
    checks
        .iter()
        .map(|c| json!({"target": c.name, "figure": c.figure, "met": c.met}))
        .collect()
}

pub(super) fn ms(nanos: u64) -> f64 {
    nanos as f64 / 1e6
}

pub(super) fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    ms(h.value_at_quantile(q))
}

impl Report {
    /// The raw phase run right before a backend's phase, for its ratio.
    fn ratio(&self, index: usize) -> Option<f64> {
        let phase = &self.throughput[index];
        if phase.target == Target::Raw || index == 0 {
            return None;
        }
        let raw = &self.throughput[index - 1];
        (raw.target == Target::Raw && raw.events_per_second() > 0.0)
            .then(|| phase.events_per_second() / raw.events_per_second())
    }

    fn checks(&self) -> Vec<Check> {
        let mut checks = Vec::new();
        for (index, phase) in self.throughput.iter().enumerate() {
            if let Some(ratio) = self.ratio(index) {
                let min = phase.target.min_ratio();
                checks.push(Check {
                    name: format!("{} >= {min:.2}x raw", phase.target.name()),
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
                        format!(
                            " (raw alone {:.2} ms)",
                            quantile_ms(&raw.tally.latency, 0.99)
                        )
                    });
                checks.push(Check {
                    name: format!("{} e2e p99 <= {max} ms", phase.target.name()),
                    figure: format!("{p99:.2} ms{floor}"),
                    met: !e2e.is_empty() && p99 <= max,
                });
            }
        }
        checks
    }

    fn table(&self, settings: &Settings) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\npilotlight bench: {} connections, {}-byte binary events, {} s per phase after a {} s warm-up\n",
            settings.connections,
            settings.payload.len(),
            settings.duration.as_secs(),
            WARMUP.as_secs()
        );
        let fanout = if settings.ingress_only {
            "ingress only: the broker has no trigger"
        } else {
            "the trigger delivers to an in-process subscriber meanwhile"
        };
        let _ = writeln!(
            out,
            "throughput (closed loop; {fanout}; each raw row ran just before the backend below it)"
        );
        let _ = writeln!(
            out,
            "{:<8} {:>10} {:>7}  {:>22}  {:>8}",
            "target", "events/s", "ratio", "ingress p50/p99 (ms)", "errors"
        );
        for (index, phase) in self.throughput.iter().enumerate() {
            let ratio = self
                .ratio(index)
                .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x"));
            let _ = writeln!(
                out,
                "{:<8} {:>10.0} {:>7}  {:>22}  {:>8}",
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
        if !self.latency.is_empty() {
            let _ = writeln!(
                out,
                "\nlatency at half of each backend's max rate (raw rows: the raw server at the same rate, just before;\ne2e = ingress send -> subscriber receipt; gen lag = how late the generator sent, at worst)"
            );
            let _ = writeln!(
                out,
                "{:<8} {:>9} {:>9}  {:>20}  {:>24}  {:>8} {:>6}  {:>12}",
                "target",
                "rate/s",
                "got/s",
                "ingress p50/p99 (ms)",
                "e2e p50/p99/max (ms)",
                "samples",
                "errors",
                "gen lag (ms)"
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
                let _ = writeln!(
                    out,
                    "{:<8} {:>9.0} {:>9.0}  {:>20}  {:>24}  {:>8} {:>6}  {:>12.2}",
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
                    phase.tally.max_lag.as_secs_f64() * 1e3
                );
            }
        }
        let _ = writeln!(
            out,
            "\ntargets: memory >= {MEMORY_MIN_RATIO}x raw, log >= {LOG_MIN_RATIO}x raw, e2e p99 <= {MEMORY_MAX_E2E_P99_MS} ms (memory), <= {LOG_MAX_E2E_P99_MS} ms (log)"
        );
        write_checks(&mut out, &self.checks(), &self.failures, (24, 28));
        out
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
                "generator_max_lag_ms": phase.tally.max_lag.as_secs_f64() * 1e3,
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
            "targets": checks_json(&self.checks()),
            "failures": self.failures,
        })
    }

    /// Missed targets are reported, not fatal; a broken measurement is.
    fn verdict(&self) -> anyhow::Result<()> {
        let mut problems = self.failures.clone();
        for phase in self.throughput.iter().chain(&self.latency) {
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
