//! Hops: what a trigger costs when its subscriber is one of pilotlight's own
//! Services, against the same trigger delivering to the same app run
//! straight (an external subscriber that answers at once).
//!
//! One in-process pilotlight with a memory broker and two triggers, told
//! apart by event type: `to-app` delivers to `pilotlight hello` started
//! straight by the bench, `to-service` to a Service running the same app
//! (kept warm: `min-scale: 1`), so its deliveries go through the activator
//! and the serving proxy. Each round sends `--events` events of one type
//! over `--connections` keep-alive connections and times from the first
//! send until the trigger's backlog is empty: delivered events/s. Rounds
//! alternate the two targets, so a noisy machine moves both alike; the
//! figure is the median of the rounds' ratios `service / app`.
//!
//! `--over-tcp` runs a second pilotlight whose deliveries to its own
//! Services go over loopback TCP (as before the in-process hand-over), so
//! the same run shows what the socket costs.
//!
//! `cargo build --release && cargo run --release -p pilotlight-bench -- hops`

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Args;
use http::{Method, Request, StatusCode, header};
use http_body_util::Full;
use pilotlight::server::Server;
use serde_json::json;
use tokio::task::JoinSet;

use crate::app::{App, AppRuntime};
use crate::load::{connect, exchange};
use crate::report::{Check, checks_json, median, write_checks};
use crate::serving::pilotlight_exe;
use crate::workdir::{NAMESPACE, TriggerSubscriber, WorkDir, server_config, trigger_yaml};

/// The target: a trigger to a Service within 0.8× of the same
/// trigger to the app straight.
const MIN_SERVICE_RATIO: f64 = 0.8;
const BROKER: &str = "hops";
/// How long a round may take to drain before the bench gives up.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Args)]
pub struct HopsArgs {
    /// Events per round.
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// Keep-alive connections the events are sent over.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Rounds per target (alternating).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Also run a pilotlight that delivers to its own Services over TCP.
    #[arg(long)]
    pub over_tcp: bool,
    /// The pilotlight executable (the app); default: next to this one.
    #[arg(long)]
    pub pilotlight: Option<PathBuf>,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Where a trigger delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    App,
    Service,
}

impl Target {
    fn trigger(self) -> &'static str {
        match self {
            Target::App => "to-app",
            Target::Service => "to-service",
        }
    }

    fn event_type(self) -> &'static str {
        match self {
            Target::App => "hops.app",
            Target::Service => "hops.service",
        }
    }
}

/// One pilotlight with both triggers.
struct Deployment {
    server: Server,
    _dir: WorkDir,
}

impl Deployment {
    async fn start(
        exe: &std::path::Path,
        app: SocketAddr,
        in_process: bool,
    ) -> anyhow::Result<Self> {
        let dir = WorkDir::create("hops")?;
        std::fs::write(dir.manifests().join("hops.yaml"), manifest(exe, app))
            .with_context(|| format!("cannot write the manifest in {}", dir.path.display()))?;
        let mut config = server_config(&dir);
        config.in_process_hops = in_process;
        let server = Server::start(config)
            .await
            .context("starting pilotlight for the hops bench")?;
        let deployment = Deployment { server, _dir: dir };
        // The first event of each starts connections and the Service's
        // instance; not counted.
        for target in [Target::App, Target::Service] {
            deployment.round(target, 1, 1).await?;
        }
        Ok(deployment)
    }

    /// Sends `events` of the target's type and waits until its trigger
    /// delivered them all: events/s from the first send to the last ack.
    async fn round(
        &self,
        target: Target,
        events: usize,
        connections: usize,
    ) -> anyhow::Result<f64> {
        let started = Instant::now();
        send_all(self.server.listen, target, events, connections).await?;
        self.wait_drained(target).await?;
        Ok(events as f64 / started.elapsed().as_secs_f64())
    }

    async fn wait_drained(&self, target: Target) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if backlog(self.server.admin, target.trigger()).await? == 0 {
                return Ok(());
            }
            if started.elapsed() > DRAIN_TIMEOUT {
                bail!(
                    "trigger {} did not drain within {DRAIN_TIMEOUT:?}",
                    target.trigger()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

fn manifest(exe: &std::path::Path, app: SocketAddr) -> String {
    let service = AppRuntime::process(exe).service("hello", &[("min-scale", "1")]);
    let trigger = |target: Target, subscriber| {
        trigger_yaml(
            target.trigger(),
            BROKER,
            Some(target.event_type()),
            subscriber,
        )
    };
    let mut yaml = format!(
        "apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: {BROKER}
  namespace: {NAMESPACE}
  annotations:
    eventing.knative.dev/broker.class: memory
"
    );
    yaml.push_str(&service);
    yaml.push_str(&trigger(Target::App, TriggerSubscriber::Uri(app)));
    yaml.push_str(&trigger(
        Target::Service,
        TriggerSubscriber::Service("hello"),
    ));
    yaml
}

/// Sends `events` events of the target's type over `connections`
/// keep-alive connections, each waiting for its 202 before the next.
async fn send_all(
    listen: SocketAddr,
    target: Target,
    events: usize,
    connections: usize,
) -> anyhow::Result<()> {
    let connections = connections.clamp(1, events.max(1));
    let mut senders = JoinSet::new();
    for connection in 0..connections {
        let share = events / connections + usize::from(connection < events % connections);
        senders.spawn(async move {
            let mut client = connect(listen).await?;
            for seq in 0..share {
                let request = Request::builder()
                    .method(Method::POST)
                    .uri(format!("/{NAMESPACE}/{BROKER}"))
                    .header(header::HOST, listen.to_string())
                    .header("ce-specversion", "1.0")
                    .header(
                        "ce-id",
                        format!("{connection}-{seq}-{}", uuid::Uuid::new_v4().simple()),
                    )
                    .header("ce-source", "/pilotlight/bench/hops")
                    .header("ce-type", target.event_type())
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    .body(Full::new(Bytes::from_static(&[b'x'; 1024])))
                    .context("building an event")?;
                let (status, body) = exchange(&mut client, request, "an event").await?;
                if status != StatusCode::ACCEPTED {
                    bail!(
                        "the broker answered {status}: {}",
                        String::from_utf8_lossy(&body).trim()
                    );
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(sent) = senders.join_next().await {
        sent.context("a sender panicked")??;
    }
    Ok(())
}

/// The trigger's backlog, as `GET /api/v1/triggers` reports it.
async fn backlog(admin: SocketAddr, trigger: &str) -> anyhow::Result<u64> {
    let mut client = connect(admin).await?;
    let request = Request::builder()
        .uri("/api/v1/triggers")
        .header(header::HOST, admin.to_string())
        .body(Full::new(Bytes::new()))
        .context("building the status request")?;
    let (_, body) = exchange(&mut client, request, "the triggers' status").await?;
    let list: serde_json::Value = serde_json::from_slice(&body).context("the triggers as JSON")?;
    let item = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["metadata"]["name"] == trigger)
        .with_context(|| format!("no trigger {trigger} in the list"))?;
    item["status"]["backlog"]
        .as_u64()
        .with_context(|| format!("trigger {trigger} reports no backlog: {}", item["status"]))
}

/// The delivered rates of one deployment, round by round.
struct Rates {
    label: &'static str,
    app: Vec<f64>,
    service: Vec<f64>,
}

impl Rates {
    fn ratios(&self) -> Vec<f64> {
        self.service
            .iter()
            .zip(&self.app)
            .map(|(s, a)| s / a)
            .collect()
    }

    fn median_ratio(&self) -> f64 {
        median(self.ratios())
    }
}

async fn measure(
    args: &HopsArgs,
    exe: &std::path::Path,
    app: SocketAddr,
    in_process: bool,
) -> anyhow::Result<Rates> {
    let deployment = Deployment::start(exe, app, in_process).await?;
    let mut rates = Rates {
        label: if in_process { "in process" } else { "over TCP" },
        app: Vec::new(),
        service: Vec::new(),
    };
    for _ in 0..args.rounds {
        rates.app.push(
            deployment
                .round(Target::App, args.events, args.connections)
                .await?,
        );
        rates.service.push(
            deployment
                .round(Target::Service, args.events, args.connections)
                .await?,
        );
    }
    deployment.server.shutdown().await;
    Ok(rates)
}

pub async fn run(args: HopsArgs) -> anyhow::Result<()> {
    let exe = pilotlight_exe(args.pilotlight.as_deref())?;
    let app = AppRuntime::process(&exe).start().await?;
    let result = run_with(&args, &exe, &app).await;
    app.stop().await;
    result
}

async fn run_with(args: &HopsArgs, exe: &std::path::Path, app: &App) -> anyhow::Result<()> {
    let mut all = vec![measure(args, exe, app.addr, true).await?];
    if args.over_tcp {
        all.push(measure(args, exe, app.addr, false).await?);
    }
    let ratio = all[0].median_ratio();
    let checks = vec![Check {
        name: format!("trigger to a Service / to the app straight ≥ {MIN_SERVICE_RATIO}x"),
        figure: format!("{ratio:.2}x"),
        met: ratio >= MIN_SERVICE_RATIO,
    }];
    if args.json {
        let runs: Vec<_> = all
            .iter()
            .map(|r| {
                json!({
                    "deliveries": r.label,
                    "app_events_per_s": r.app,
                    "service_events_per_s": r.service,
                    "ratios": r.ratios(),
                    "median_ratio": r.median_ratio(),
                })
            })
            .collect();
        println!(
            "{}",
            json!({ "events": args.events, "connections": args.connections, "runs": runs, "checks": checks_json(&checks) })
        );
        return Ok(());
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "a trigger delivering {} events ({} connections, 1 KiB, memory broker), delivered events/s by round",
        args.events, args.connections
    );
    let _ = writeln!(
        out,
        "  deliveries   round   to the app   to the Service   ratio"
    );
    for rates in &all {
        for (round, ((app, service), ratio)) in rates
            .app
            .iter()
            .zip(&rates.service)
            .zip(rates.ratios())
            .enumerate()
        {
            let _ = writeln!(
                out,
                "  {:<11} {:>5}   {app:>10.0}   {service:>14.0}   {ratio:.2}x",
                rates.label,
                round + 1
            );
        }
        let _ = writeln!(
            out,
            "  {:<11} median ratio {:.2}x",
            rates.label,
            rates.median_ratio()
        );
    }
    let _ = writeln!(out, "\ntargets");
    write_checks(&mut out, &checks, &[], (58, 8));
    print!("{out}");
    Ok(())
}
