//! Overload: the `pilotlight` executable (so that its RSS is its own) with a
//! log broker whose one trigger delivers to a subscriber that accepts
//! connections and never answers, so the backlog grows on disk the whole
//! run. Two phases on the same process:
//!
//! 1. **capacity**: `--connections` (64) closed-loop keep-alive connections,
//!    the most the machine serves: events/s and latency.
//! 2. **flood**: `--flood-connections` (2,000: 31 times as many) clients that
//!    never back off: each sends again at once whatever the answer, and
//!    connects again when its connection is closed. pilotlight runs with
//!    `--max-connections` 1,000 and `--max-requests-per-broker` 256, so it
//!    must shed (503 for the connections past the limit, 429 for the
//!    requests past the broker's) while it keeps storing.
//!
//! Measured: the flood's goodput (202s/s) as a ratio to the capacity phase,
//! the answers by status, the p99 of the 202s, the process's RSS sampled
//! every 100 ms and its peak (`VmHWM`), the admin listener's `/readyz`
//! latency during the flood (probes must answer), and whether the process
//! is alive at the end. Targets: RSS peak ≤ 256 MiB, p99 of the 202s ≤ 1 s,
//! every probe answered, no crash. The goodput is reported, not a target:
//! clients that ignore `Retry-After` spend the cores on refusals, their own
//! included (they run on the same machine).
//!
//! `cargo build --release && cargo run --release -p pilotlight-bench -- overload`

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use http_body_util::BodyExt as _;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::app::{free_port, loopback};
use crate::load::{Load, Shape, Tally, Window, connect, new_histogram, record, run_load};
use crate::report::{Check, checks_json, quantile_ms, write_checks};
use crate::serving::{Rss, pilotlight_exe, read_rss, readyz, run_command, wait_ready};
use crate::workdir::WorkDir;

const MAX_RSS_MIB: f64 = 256.0;
const MAX_ACCEPTED_P99_MS: f64 = 1000.0;
/// How often the RSS is sampled and the admin listener probed.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, Args)]
pub struct OverloadArgs {
    /// Seconds each phase is measured, after a 1 s warm-up that is not counted.
    #[arg(long, default_value_t = 8)]
    pub duration_secs: u64,
    /// Connections of the capacity phase.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Clients of the flood phase.
    #[arg(long, default_value_t = 2000)]
    pub flood_connections: usize,
    /// pilotlight's --max-connections.
    #[arg(long, default_value_t = 1000)]
    pub max_connections: usize,
    /// pilotlight's --max-requests-per-broker.
    #[arg(long, default_value_t = 256)]
    pub max_requests_per_broker: usize,
    /// Size of each event's data, in bytes.
    #[arg(long, default_value_t = 1024)]
    pub payload_bytes: usize,
    /// The pilotlight executable (default: the one next to this benchmark).
    #[arg(long)]
    pub pilotlight: Option<std::path::PathBuf>,
    /// Also print the results as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: OverloadArgs) -> anyhow::Result<()> {
    if args.connections == 0 || args.flood_connections == 0 || args.duration_secs == 0 {
        bail!("--connections, --flood-connections and --duration-secs must be at least 1");
    }
    let exe = pilotlight_exe(args.pilotlight.as_deref())?;
    let stalled = StalledSubscriber::start().await?;
    let dir = WorkDir::create("overload")?;
    std::fs::write(
        dir.manifests().join("overload.yaml"),
        manifest(stalled.addr),
    )
    .with_context(|| format!("cannot write the manifest in {}", dir.path.display()))?;
    let (listen, admin) = (loopback(free_port()?), loopback(free_port()?));
    let mut child = run_command(&exe, &dir, listen, admin)
        .arg("--max-connections")
        .arg(args.max_connections.to_string())
        .arg("--max-requests-per-broker")
        .arg(args.max_requests_per_broker.to_string())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {} run", exe.display()))?;
    let pid = child.id().context("pilotlight run exited at once")?;
    wait_ready(&mut child, admin).await?;

    let payload = Bytes::from(vec![b'x'; args.payload_bytes]);
    let duration = Duration::from_secs(args.duration_secs);
    let load = |connections, label: &str| Load {
        addr: listen,
        path: "/default/default".into(),
        payload: payload.clone(),
        connections,
        duration,
        rate: None,
        origin: Instant::now(),
        id_prefix: format!("{label}-{}", uuid::Uuid::new_v4().simple()),
        shape: Shape::CloudEvent,
        tls: None,
    };
    let (capacity, capacity_window) = run_load(load(args.connections, "capacity")).await?;
    let capacity_rate = capacity.accepted as f64 / capacity_window.measured().as_secs_f64();
    let before_flood = read_rss("pilotlight run, after the capacity phase", pid)?;

    let sampler = Sampler::start(pid, admin);
    let window = Window::starting_now(duration);
    let flood = run_flood(load(args.flood_connections, "flood"), window).await?;
    let samples = sampler.stop().await?;
    let alive = child
        .try_wait()
        .context("cannot check pilotlight run")?
        .is_none();
    let peak = read_rss("pilotlight run, after the flood", pid)?;
    let _ = child.start_kill();
    let _ = child.wait().await;
    drop(stalled);

    let report = Report {
        args: &args,
        capacity_rate,
        capacity,
        flood_rate: flood.accepted as f64 / window.measured().as_secs_f64(),
        flood,
        samples,
        before_flood,
        peak,
        alive,
    };
    println!("{}", report.table());
    if args.json {
        println!("{}", report.json());
    }
    match report.checks().iter().all(|c| c.met) {
        true => Ok(()),
        false => bail!("a target was missed"),
    }
}

/// A broker on the log with one trigger to the stalled subscriber.
fn manifest(subscriber: SocketAddr) -> String {
    format!(
        "apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: default
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: stalled
spec:
  broker: default
  subscriber:
    uri: http://{subscriber}/
"
    )
}

/// Accepts connections and never reads or answers: every delivery waits
/// for its timeout, and the trigger's backlog grows.
struct StalledSubscriber {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl StalledSubscriber {
    async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot bind the stalled subscriber")?;
        let addr = listener.local_addr().context("no local address")?;
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        Ok(StalledSubscriber { addr, task })
    }
}

impl Drop for StalledSubscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The flood: one task per client, each sending back to back over the
/// window whatever the answer, connecting again when closed. A connection
/// the kernel refuses (the listen backlog full) is a transport error.
async fn run_flood(load: Load, window: Window) -> anyhow::Result<Tally> {
    let load = Arc::new(load);
    let mut tasks = JoinSet::new();
    for index in 0..load.connections {
        tasks.spawn(flood_client(load.clone(), window, index));
    }
    let mut total = Tally::new(load.expected())?;
    while let Some(joined) = tasks.join_next().await {
        total.merge(joined.context("a flood client panicked")??)?;
    }
    Ok(total)
}

async fn flood_client(load: Arc<Load>, window: Window, index: usize) -> anyhow::Result<Tally> {
    let mut tally = Tally::new(load.expected())?;
    tokio::time::sleep_until(window.start.into()).await;
    let mut seq = 0u64;
    while Instant::now() < window.end {
        let mut sender = match connect(load.addr).await {
            Ok(sender) => sender,
            Err(e) => {
                tally.transport_error(format!("{e:#}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // One connection until the server closes it.
        while Instant::now() < window.end {
            if sender.ready().await.is_err() {
                break;
            }
            let sent_at = Instant::now();
            let Ok(response) = sender
                .send_request(load.request(index, seq, sent_at)?)
                .await
            else {
                break;
            };
            seq += 1;
            let status = response.status();
            let _ = response.into_body().collect().await;
            let done = Instant::now();
            tally.record(status, done.duration_since(sent_at), window.counts(done));
        }
    }
    Ok(tally)
}

/// RSS every [`SAMPLE_EVERY`], and the admin listener's `/readyz` timed.
struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<anyhow::Result<Samples>>,
}

struct Samples {
    max_rss_kib: u64,
    probes: u64,
    unanswered: u64,
    probe_latency: Histogram<u64>,
}

impl Sampler {
    fn start(pid: u32, admin: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            let mut samples = Samples {
                max_rss_kib: 0,
                probes: 0,
                unanswered: 0,
                probe_latency: new_histogram()?,
            };
            while !stopping.load(Ordering::Relaxed) {
                let rss = read_rss("pilotlight run, during the flood", pid)?;
                samples.max_rss_kib = samples.max_rss_kib.max(rss.rss_kib);
                let started = Instant::now();
                samples.probes += 1;
                // A probe slower than a second counts as unanswered.
                match readyz(admin).await {
                    true => record(
                        &mut samples.probe_latency,
                        u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
                    ),
                    false => samples.unanswered += 1,
                }
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
            Ok(samples)
        });
        Sampler { stop, task }
    }

    async fn stop(self) -> anyhow::Result<Samples> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.context("the sampler panicked")?
    }
}

struct Report<'a> {
    args: &'a OverloadArgs,
    capacity_rate: f64,
    capacity: Tally,
    flood_rate: f64,
    flood: Tally,
    samples: Samples,
    before_flood: Rss,
    peak: Rss,
    alive: bool,
}

impl Report<'_> {
    fn goodput_ratio(&self) -> f64 {
        self.flood_rate / self.capacity_rate.max(1.0)
    }

    fn checks(&self) -> Vec<Check> {
        let peak_mib = Rss::mib(self.peak.peak_kib);
        let p99 = quantile_ms(&self.flood.latency, 0.99);
        vec![
            Check {
                name: format!("RSS peak <= {MAX_RSS_MIB} MiB"),
                figure: format!("{peak_mib:.1} MiB"),
                met: peak_mib <= MAX_RSS_MIB,
            },
            Check {
                name: format!("p99 of 202s <= {MAX_ACCEPTED_P99_MS} ms"),
                figure: format!("{p99:.1} ms"),
                met: p99 <= MAX_ACCEPTED_P99_MS,
            },
            Check {
                name: "every /readyz probe answered".into(),
                figure: format!(
                    "{} of {}",
                    self.samples.probes - self.samples.unanswered,
                    self.samples.probes
                ),
                met: self.samples.unanswered == 0,
            },
            Check {
                name: "pilotlight alive at the end".into(),
                figure: self.alive.to_string(),
                met: self.alive,
            },
        ]
    }

    fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "phase       clients   202/s      p50/p99 of 202s (ms)   other answers"
        );
        for (name, clients, rate, tally) in [
            (
                "capacity",
                self.args.connections,
                self.capacity_rate,
                &self.capacity,
            ),
            (
                "flood",
                self.args.flood_connections,
                self.flood_rate,
                &self.flood,
            ),
        ] {
            let _ = writeln!(
                out,
                "{name:<11} {clients:>7} {rate:>7.0}   {:>9.2} / {:<9.2}     {}",
                quantile_ms(&tally.latency, 0.5),
                quantile_ms(&tally.latency, 0.99),
                tally.describe_errors()
            );
        }
        let _ = writeln!(
            out,
            "\nflood goodput: {:.2}x capacity (clients that ignore Retry-After, on the same cores)",
            self.goodput_ratio()
        );
        let _ = writeln!(
            out,
            "RSS before the flood (after the capacity phase): {:.1} MiB (anon {:.1})",
            Rss::mib(self.before_flood.rss_kib),
            Rss::mib(self.before_flood.anon_kib),
        );
        let _ = writeln!(
            out,
            "RSS during the flood: max {:.1} MiB sampled, peak {:.1} MiB (VmHWM); /readyz p99 {:.1} ms over {} probes",
            Rss::mib(self.samples.max_rss_kib),
            Rss::mib(self.peak.peak_kib),
            quantile_ms(&self.samples.probe_latency, 0.99),
            self.samples.probes
        );
        let _ = writeln!(
            out,
            "limits: --max-connections {}, --max-requests-per-broker {}; the trigger's subscriber never answers\n\ntargets:",
            self.args.max_connections, self.args.max_requests_per_broker
        );
        write_checks(&mut out, &self.checks(), &[], (34, 14));
        out
    }

    fn json(&self) -> serde_json::Value {
        let phase = |rate: f64, tally: &Tally| {
            json!({
                "accepted_per_second": rate,
                "p50_ms": quantile_ms(&tally.latency, 0.5),
                "p99_ms": quantile_ms(&tally.latency, 0.99),
                "other_answers": tally.describe_errors(),
            })
        };
        json!({
            "capacity": phase(self.capacity_rate, &self.capacity),
            "flood": phase(self.flood_rate, &self.flood),
            "goodput_ratio": self.goodput_ratio(),
            "rss_before_flood_mib": Rss::mib(self.before_flood.rss_kib),
            "rss_max_sampled_mib": Rss::mib(self.samples.max_rss_kib),
            "rss_peak_mib": Rss::mib(self.peak.peak_kib),
            "readyz_p99_ms": quantile_ms(&self.samples.probe_latency, 0.99),
            "probes": self.samples.probes,
            "unanswered_probes": self.samples.unanswered,
            "alive": self.alive,
            "checks": checks_json(&self.checks()),
        })
    }
}
