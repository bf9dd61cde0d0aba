//! The eventing suite's scale phases, each measured side by side with its
//! baseline in one run (`--only triggers`, `--only backlog`).
//!
//! - **triggers**: a memory broker with 10 triggers, then one with 10,000
//!   (`--triggers`), each trigger with a distinct exact filter (`type:
//!   t.N`); the load's events cycle through three types, so each matches one
//!   trigger and three triggers receive, on both brokers. Reported: the
//!   closed-loop ingress throughput of the many against the few (target ≥
//!   0.5×), the process's RSS growth from starting each broker, divided by
//!   its triggers, and how long each took to start.
//! - **backlog**: a log broker without a trigger takes 1,000,000 events
//!   (`--backlog-events`) closed loop (its ingress rate is the baseline);
//!   then a trigger is added and replayed from offset 0 through the admin
//!   API, and its catch-up to the subscriber is timed while the process's
//!   RSS is sampled. Retention is off for the phase, so the whole backlog
//!   stays. Reported: catch-up events/s against the ingress rate, and the
//!   peak RSS growth during catch-up (target: bounded by the in-memory tail's
//!   size, 64 MiB, whatever the backlog).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use serde_json::json;

use crate::eventing::{BROKER, Deployment, Phase, Settings, Subscriber, Target, manifest};
use crate::load::{Load, connect, exchange};
use crate::report::Check;
use crate::workdir::{NAMESPACE, TriggerSubscriber, trigger_yaml};

/// The brokers compared: this many triggers against `--triggers`.
const FEW_TRIGGERS: usize = 10;
/// The event types the load cycles through: each matches one trigger.
const MATCHED_TYPES: usize = 3;
/// Target: throughput with many triggers against few.
const TRIGGERS_MIN_RATIO: f64 = 0.5;
/// Target: RSS growth while catching up, at most the log's in-memory tail.
const BACKLOG_MAX_GROWTH_BYTES: u64 = 64 << 20;
/// Longest wait without a new delivery while catching up.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// RSS is sampled this often while catching up (the kernel's high-water mark
/// is read too, so a peak between samples still counts).
const RSS_SAMPLE: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------
// 10,000 triggers
// ---------------------------------------------------------------------------

/// One broker of the comparison.
pub(crate) struct TriggersRun {
    triggers: usize,
    phase: Phase,
    /// RSS before starting the broker and once it served its first event.
    rss_before: u64,
    rss_started: u64,
    start: Duration,
}

impl TriggersRun {
    fn rss_growth(&self) -> u64 {
        self.rss_started.saturating_sub(self.rss_before)
    }

    fn bytes_per_trigger(&self) -> f64 {
        self.rss_growth() as f64 / self.triggers as f64
    }
}

pub(crate) struct TriggersScale {
    few: TriggersRun,
    many: TriggersRun,
}

pub(crate) async fn bench_triggers(
    settings: &Settings,
    many: usize,
) -> anyhow::Result<TriggersScale> {
    if many < MATCHED_TYPES {
        bail!("--triggers must be at least {MATCHED_TYPES}");
    }
    let few = with_triggers(settings, FEW_TRIGGERS).await?;
    let many = with_triggers(settings, many).await?;
    Ok(TriggersScale { few, many })
}

/// Starts a memory broker with `triggers` triggers, measures what that took,
/// then its closed-loop throughput (each event delivered to one trigger).
async fn with_triggers(settings: &Settings, triggers: usize) -> anyhow::Result<TriggersRun> {
    let rss_before = rss_bytes()?;
    let subscriber = Subscriber::start(settings.origin).await?;
    let yaml = triggers_manifest(triggers, subscriber.addr());
    let types: Arc<[String]> = (0..MATCHED_TYPES).map(|n| format!("t.{n}")).collect();
    let started = Instant::now();
    let mut deployment = Deployment::start_with(
        settings,
        Target::Triggers,
        Some(subscriber),
        &yaml,
        Some(types),
        |_| {},
    )
    .await
    .with_context(|| format!("starting a broker with {triggers} triggers"))?;
    let start = started.elapsed();
    let rss_started = rss_bytes()?;
    let measured = deployment.closed_loop(settings).await;
    deployment.stop().await;
    Ok(TriggersRun {
        triggers,
        phase: measured?,
        rss_before,
        rss_started,
        start,
    })
}

/// A memory broker and `triggers` triggers, the n-th filtering on `type:
/// t.n`, all to the subscriber.
fn triggers_manifest(triggers: usize, subscriber: SocketAddr) -> String {
    let mut yaml = manifest(Target::Triggers, None);
    for n in 0..triggers {
        yaml.push_str(&trigger_yaml(
            &format!("t-{n}"),
            BROKER,
            Some(&format!("t.{n}")),
            TriggerSubscriber::Uri(subscriber),
        ));
    }
    yaml
}

impl TriggersScale {
    fn ratio(&self) -> f64 {
        let few = self.few.phase.events_per_second();
        if few > 0.0 {
            self.many.phase.events_per_second() / few
        } else {
            0.0
        }
    }

    pub(crate) fn phases(&self) -> impl Iterator<Item = &Phase> {
        [&self.few.phase, &self.many.phase].into_iter()
    }

    pub(crate) fn checks(&self) -> Vec<Check> {
        let ratio = self.ratio();
        vec![Check {
            name: format!(
                "{} triggers >= {TRIGGERS_MIN_RATIO}x {}",
                self.many.triggers, self.few.triggers
            ),
            figure: format!("{ratio:.2}x"),
            met: ratio >= TRIGGERS_MIN_RATIO,
        }]
    }

    pub(crate) fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nscale: one memory broker with N triggers, distinct exact filters (type: t.N), events cycling through {MATCHED_TYPES} matched types\n(closed loop; RSS growth = the process's RSS once the broker served its first event, minus before it started;\nthe 10-trigger broker runs first and also pays the process's one-time costs)"
        );
        let _ = writeln!(
            out,
            "{:>9} {:>10} {:>7}  {:>22}  {:>9}  {:>15}  {:>14}",
            "triggers",
            "events/s",
            "ratio",
            "ingress p50/p99 (ms)",
            "start (s)",
            "RSS growth (MiB)",
            "per trigger (KiB)"
        );
        for run in [&self.few, &self.many] {
            let first = run.triggers == self.few.triggers;
            let ratio = if first {
                "-".to_owned()
            } else {
                format!("{:.2}x", self.ratio())
            };
            // The first broker of the process also pays its one-time costs
            // (runtime, metrics, caches): its growth is no per-trigger figure.
            let per_trigger = if first {
                "-".to_owned()
            } else {
                format!("{:.2}", run.bytes_per_trigger() / 1024.0)
            };
            let _ = writeln!(
                out,
                "{:>9} {:>10.0} {:>7}  {:>22}  {:>9.2}  {:>15.1}  {:>14}",
                run.triggers,
                run.phase.events_per_second(),
                ratio,
                format!(
                    "{:.2} / {:.2}",
                    crate::report::quantile_ms(&run.phase.tally.latency, 0.5),
                    crate::report::quantile_ms(&run.phase.tally.latency, 0.99)
                ),
                run.start.as_secs_f64(),
                run.rss_growth() as f64 / f64::from(1 << 20),
                per_trigger
            );
        }
        out
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        let run = |r: &TriggersRun| {
            json!({
                "triggers": r.triggers,
                "events_per_second": r.phase.events_per_second(),
                "start_secs": r.start.as_secs_f64(),
                "rss_growth_bytes": r.rss_growth(),
                "rss_bytes_per_trigger": r.bytes_per_trigger(),
            })
        };
        json!({
            "few": run(&self.few),
            "many": run(&self.many),
            "ratio": self.ratio(),
        })
    }
}

// ---------------------------------------------------------------------------
// 1,000,000 events of backlog
// ---------------------------------------------------------------------------

pub(crate) struct BacklogScale {
    events: u64,
    payload_bytes: usize,
    /// Publishing the backlog, closed loop.
    ingress: Duration,
    /// From the replay request to the last delivery.
    catch_up: Duration,
    rss_before: u64,
    rss_peak: u64,
}

pub(crate) async fn bench_backlog(
    settings: &Settings,
    events: u64,
) -> anyhow::Result<BacklogScale> {
    let mut deployment = Deployment::start_with(
        settings,
        Target::Backlog,
        None,
        &manifest(Target::Backlog, None),
        None,
        // The whole backlog stays: retention by size would cut it.
        |config| config.log.retention_bytes = None,
    )
    .await?;
    let measured = publish_then_catch_up(settings, &mut deployment, events).await;
    deployment.stop().await;
    measured
}

async fn publish_then_catch_up(
    settings: &Settings,
    deployment: &mut Deployment,
    events: u64,
) -> anyhow::Result<BacklogScale> {
    let load = deployment.load(settings, None);
    let started = Instant::now();
    let accepted = publish_count(Arc::new(load), events).await?;
    let ingress = started.elapsed();
    deployment.accepted += accepted;
    let subscriber = Subscriber::start(settings.origin).await?;
    add_trigger(deployment, subscriber.addr()).await?;
    deployment.subscriber = Some(subscriber);
    let rss_before = rss_bytes()?;
    reset_peak_rss();
    let started = Instant::now();
    replay_from_start(deployment.server.admin).await?;
    let rss_peak = wait_for_catch_up(deployment).await?;
    let catch_up = started.elapsed();
    Ok(BacklogScale {
        events: accepted,
        payload_bytes: settings.payload.len(),
        ingress,
        catch_up,
        rss_before,
        rss_peak: rss_peak.max(rss_before),
    })
}

/// Sends `total` events on the load's connections, back to back; the 202s.
async fn publish_count(load: Arc<Load>, total: u64) -> anyhow::Result<u64> {
    let next = Arc::new(AtomicU64::new(0));
    let mut connections = tokio::task::JoinSet::new();
    for index in 0..load.connections {
        let (load, next) = (load.clone(), next.clone());
        connections.spawn(async move {
            let mut sender = connect(load.addr).await?;
            let mut accepted = 0u64;
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= total {
                    return anyhow::Ok(accepted);
                }
                sender
                    .ready()
                    .await
                    .context("the broker closed the connection")?;
                let response = sender
                    .send_request(load.request(index, seq, Instant::now())?)
                    .await
                    .context("publishing the backlog")?;
                let status = response.status();
                let _ = response.into_body().collect().await;
                if status != StatusCode::ACCEPTED {
                    bail!("the broker answered {status} while taking the backlog");
                }
                accepted += 1;
            }
        });
    }
    let mut accepted = 0;
    while let Some(joined) = connections.join_next().await {
        accepted += joined.context("a publishing connection panicked")??;
    }
    Ok(accepted)
}

/// Adds the trigger to the manifests and applies them; a new trigger starts
/// at the head, after the backlog.
async fn add_trigger(deployment: &Deployment, subscriber: SocketAddr) -> anyhow::Result<()> {
    let folder = deployment.dir.manifests();
    std::fs::write(
        folder.join("bench.yaml"),
        manifest(Target::Backlog, Some(subscriber)),
    )
    .context("writing the trigger's manifest")?;
    // The bench's servers keep the default class; the manifest names its
    // class anyway.
    let manifests =
        pilotlight::control::manifest::load(&[folder], pilotlight::api::broker::BrokerClass::Log);
    deployment.server.control.apply(Arc::new(manifests)).await;
    Ok(())
}

/// Sends the trigger back to offset 0 through the admin API, as `pilotlight
/// replay --from-offset 0 --yes` does.
async fn replay_from_start(admin: SocketAddr) -> anyhow::Result<()> {
    let mut sender = connect(admin).await?;
    let body = serde_json::to_vec(&json!({"dryRun": false, "fromOffset": 0}))?;
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("/api/v1/triggers/{NAMESPACE}/bench/replay"))
        .header(header::HOST, admin.to_string())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .context("building the replay request")?;
    let (status, answer) = exchange(&mut sender, request, "the replay request").await?;
    if !status.is_success() {
        bail!(
            "the replay was refused ({status}): {}",
            String::from_utf8_lossy(&answer).trim()
        );
    }
    Ok(())
}

/// Waits until the subscriber has every accepted event, sampling RSS; the
/// highest RSS seen (samples and the kernel's high-water mark).
async fn wait_for_catch_up(deployment: &Deployment) -> anyhow::Result<u64> {
    let subscriber = deployment
        .subscriber
        .as_ref()
        .context("the backlog phase has no subscriber")?;
    let mut peak = 0;
    let mut last = subscriber.received();
    let mut stalled_since = Instant::now();
    while subscriber.received() < deployment.accepted {
        tokio::time::sleep(RSS_SAMPLE).await;
        peak = peak.max(rss_bytes()?);
        let received = subscriber.received();
        if received != last {
            last = received;
            stalled_since = Instant::now();
        } else if stalled_since.elapsed() > STALL_TIMEOUT {
            bail!(
                "the trigger delivered {received} of {} events and nothing more for {STALL_TIMEOUT:?}",
                deployment.accepted
            );
        }
    }
    Ok(peak.max(peak_rss_bytes().unwrap_or(0)))
}

impl BacklogScale {
    fn ingress_rate(&self) -> f64 {
        self.events as f64 / self.ingress.as_secs_f64()
    }

    fn catch_up_rate(&self) -> f64 {
        self.events as f64 / self.catch_up.as_secs_f64()
    }

    fn growth(&self) -> u64 {
        self.rss_peak.saturating_sub(self.rss_before)
    }

    pub(crate) fn checks(&self) -> Vec<Check> {
        let growth = self.growth();
        vec![Check {
            name: format!(
                "backlog RSS growth <= {} MiB",
                BACKLOG_MAX_GROWTH_BYTES >> 20
            ),
            figure: format!("{:.1} MiB", growth as f64 / f64::from(1 << 20)),
            met: growth <= BACKLOG_MAX_GROWTH_BYTES,
        }]
    }

    pub(crate) fn table(&self) -> String {
        let mib = |b: u64| b as f64 / f64::from(1 << 20);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nscale: a log broker's trigger catching up on {} events of {} bytes (published closed loop with no trigger, then replayed from offset 0)",
            self.events, self.payload_bytes
        );
        let _ = writeln!(
            out,
            "{:<22} {:>10} {:>7} {:>9}",
            "", "events/s", "ratio", "secs"
        );
        let _ = writeln!(
            out,
            "{:<22} {:>10.0} {:>7} {:>9.1}",
            "ingress (publishing)",
            self.ingress_rate(),
            "-",
            self.ingress.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "{:<22} {:>10.0} {:>7} {:>9.1}",
            "catch-up (delivering)",
            self.catch_up_rate(),
            format!("{:.2}x", self.catch_up_rate() / self.ingress_rate()),
            self.catch_up.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "RSS before catch-up {:.1} MiB, peak during it {:.1} MiB (growth {:.1} MiB; the backlog is {:.0} MiB of event data)",
            mib(self.rss_before),
            mib(self.rss_peak),
            mib(self.growth()),
            mib(self.events * self.payload_bytes as u64)
        );
        out
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        json!({
            "events": self.events,
            "payload_bytes": self.payload_bytes,
            "ingress_events_per_second": self.ingress_rate(),
            "catch_up_events_per_second": self.catch_up_rate(),
            "catch_up_ratio_to_ingress": self.catch_up_rate() / self.ingress_rate(),
            "rss_before_bytes": self.rss_before,
            "rss_peak_bytes": self.rss_peak,
            "rss_growth_bytes": self.growth(),
        })
    }
}

// ---------------------------------------------------------------------------
// The process's memory
// ---------------------------------------------------------------------------

/// A `kB` field of /proc/self/status, in bytes.
fn status_field(name: &str) -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .with_context(|| format!("no {name} in /proc/self/status"))
}

fn rss_bytes() -> anyhow::Result<u64> {
    status_field("VmRSS:")
}

fn peak_rss_bytes() -> anyhow::Result<u64> {
    status_field("VmHWM:")
}

/// Resets the kernel's RSS high-water mark (`VmHWM`) to the current RSS;
/// without it the peak is the process's since it started.
fn reset_peak_rss() {
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        tracing::warn!(error = %e, "cannot reset the peak RSS; the samples alone give it");
    }
}
