//! `pilotlight-bench console`: what a browser watching the console costs
//! pilotlight while events flow.
//!
//! `pilotlight run` (the product binary, as a child process) serves 1
//! broker on the log with 100 Triggers: one delivers every event to a raw
//! hyper subscriber in this process, 99 filter on other types (each is
//! evaluated for every event). The load generator posts `--rate` events/s
//! (default 1,000) for `--duration-secs` after a 1 s warm-up. Rounds
//! alternate two sides, so drift hits both:
//! - *alone*: no browser;
//! - *watched*: headless Chromium (Debian's `chromium`) has the console
//!   open on the broker's tail (`/#tail=…`, with the live figures on as
//!   well) from before the phase until after it.
//!
//! Measured per phase: pilotlight's CPU (user + system time from
//! `/proc/<pid>/stat` over the measured window) in % of one core, and
//! Chromium's (every process of its tree). Reported: the median of each
//! side, the **added CPU** (watched − alone, in points of one core) and the
//! ratio; the events the page showed are its own business (the tail sends
//! at most 50 a second, the live figures one frame a second).
//!
//! `cargo build --release && cargo run --release -p pilotlight-bench --
//! console` (`--chromium PATH` if it is not `/usr/bin/chromium`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Args;
use http::Response;
use http_body_util::Empty;

use crate::app::{free_port, loopback};
use crate::http_server::HttpServer;
use crate::load::{Load, Shape, WARMUP, Window, run_load_in};
use crate::report::median;
use crate::serving::{pilotlight_exe, run_command, wait_ready};
use crate::workdir::{NAMESPACE, WorkDir};

/// Triggers of the manifest; one matches the load's events.
const TRIGGERS: usize = 100;
/// Time the page gets to open its streams before a phase.
const PAGE_SETTLE: Duration = Duration::from_secs(3);

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// Rounds per side.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds each phase is measured, after a 1 s warm-up.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Events per second posted to the broker.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// The pilotlight executable [default: next to this one].
    #[arg(long, env = "PILOTLIGHT_BIN", value_name = "PATH")]
    pub pilotlight: Option<PathBuf>,
    /// The browser.
    #[arg(long, default_value = "/usr/bin/chromium")]
    pub chromium: PathBuf,
}

/// One phase's CPU, in % of one core.
#[derive(Debug, Clone, Copy)]
struct Phase {
    pilotlight: f64,
    chromium: Option<f64>,
}

pub async fn run(args: ConsoleArgs) -> anyhow::Result<()> {
    if args.rounds == 0 || args.duration_secs == 0 || args.rate <= 0.0 {
        bail!("--rounds, --duration-secs and --rate must be positive");
    }
    if !args.chromium.is_file() {
        bail!(
            "no browser at {}: `apt-get install chromium`, or pass --chromium PATH",
            args.chromium.display()
        );
    }
    let exe = pilotlight_exe(args.pilotlight.as_deref())?;
    let subscriber = HttpServer::start(
        |_| async {
            Ok(Response::builder()
                .status(202)
                .body(Empty::<Bytes>::new())
                .unwrap_or_default())
        },
        true,
        "the subscriber",
    )
    .await?;
    let dir = WorkDir::create("console")?;
    std::fs::write(dir.manifests().join("mesh.yaml"), manifest(&subscriber))
        .context("cannot write the bench's manifest")?;
    let listen = loopback(free_port()?);
    let admin = loopback(free_port()?);
    let mut child = run_command(&exe, &dir, listen, admin)
        .spawn()
        .with_context(|| format!("cannot start {} run", exe.display()))?;
    let pid = child.id().context("pilotlight run exited at once")?;
    wait_ready(&mut child, admin).await?;

    let page = format!("http://{admin}/#tail=/api/v1/brokers/{NAMESPACE}/default/events");
    let mut alone = Vec::new();
    let mut watched = Vec::new();
    for round in 0..args.rounds * 2 {
        // Alternate which side goes first.
        let with_browser = (round % 2 == 1) ^ (round / 2 % 2 == 1);
        let browser = match with_browser {
            true => Some(Chromium::open(&args.chromium, &page, &dir.path).await?),
            false => None,
        };
        let phase = measure(pid, browser.as_ref(), listen, &args).await?;
        if let Some(browser) = browser {
            browser.close().await;
        }
        if with_browser {
            &mut watched
        } else {
            &mut alone
        }
        .push(phase);
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
    println!("{}", report(&args, &alone, &watched));
    Ok(())
}

/// 1 broker, a trigger to the subscriber for the load's events, and 99 for
/// other types.
fn manifest(subscriber: &HttpServer) -> String {
    let mut yaml = format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: default\n  namespace: {NAMESPACE}\n"
    );
    for index in 0..TRIGGERS {
        let ty = match index {
            0 => "dev.pilotlight.bench".to_owned(),
            _ => format!("dev.pilotlight.other.{index}"),
        };
        let _ = write!(
            yaml,
            "---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t-{index}\n  namespace: {NAMESPACE}\nspec:\n  broker: default\n  filter:\n    attributes:\n      type: {ty}\n  subscriber:\n    uri: http://{}/\n",
            subscriber.addr
        );
    }
    yaml
}

/// A headless Chromium with one page open, and its own profile folder.
struct Chromium {
    child: tokio::process::Child,
    profile: PathBuf,
}

impl Chromium {
    async fn open(binary: &Path, url: &str, under: &Path) -> anyhow::Result<Chromium> {
        let profile = under.join(format!("chromium-{}", uuid::Uuid::new_v4().simple()));
        let child = tokio::process::Command::new(binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
            ])
            .arg("--remote-debugging-port=0")
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        tokio::time::sleep(PAGE_SETTLE).await;
        Ok(Chromium { child, profile })
    }

    /// CPU ticks of every process of the browser (found by its profile
    /// folder on their command lines).
    fn ticks(&self) -> u64 {
        let marker = self.profile.display().to_string();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return 0;
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&marker))
            })
            .filter_map(cpu_ticks)
            .sum()
    }

    async fn close(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        // Its helpers go with it; give them a moment before the next phase.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// User + system CPU ticks of a process, from `/proc/<pid>/stat`.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: count fields
    // after its closing one (utime and stime are fields 14 and 15).
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(user + system)
}

/// `/proc`'s clock ticks per second (USER_HZ: 100 on Linux, asked anyway).
fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .filter(|ticks: &f64| *ticks > 0.0)
        .unwrap_or(100.0)
}

async fn measure(
    pid: u32,
    browser: Option<&Chromium>,
    listen: std::net::SocketAddr,
    args: &ConsoleArgs,
) -> anyhow::Result<Phase> {
    let window = Window::starting_now(Duration::from_secs(args.duration_secs));
    let load = Load {
        addr: listen,
        path: format!("/{NAMESPACE}/default"),
        payload: Bytes::from_static(br#"{"order": 42}"#),
        connections: 4,
        duration: Duration::from_secs(args.duration_secs),
        rate: Some(args.rate),
        origin: Instant::now(),
        id_prefix: uuid::Uuid::new_v4().simple().to_string(),
        shape: Shape::CloudEvent,
        tls: None,
    };
    let sampler = async {
        tokio::time::sleep_until(window.measure_from.into()).await;
        let started = (cpu_ticks(pid), browser.map(Chromium::ticks), Instant::now());
        tokio::time::sleep_until(window.end.into()).await;
        (cpu_ticks(pid), browser.map(Chromium::ticks), started)
    };
    let (tally, (after, browser_after, (before, browser_before, at))) =
        tokio::join!(run_load_in(load, window), sampler);
    let tally = tally?;
    if tally.errors() > 0 {
        bail!("the load failed: {}", tally.describe_errors());
    }
    let seconds = at.elapsed().as_secs_f64().max(WARMUP.as_secs_f64());
    let percent = |after: u64, before: u64| {
        after.saturating_sub(before) as f64 / ticks_per_second() / seconds * 100.0
    };
    let (Some(after), Some(before)) = (after, before) else {
        bail!("pilotlight run (pid {pid}) went away during the phase");
    };
    Ok(Phase {
        pilotlight: percent(after, before),
        chromium: browser_after
            .zip(browser_before)
            .map(|(a, b)| percent(a, b)),
    })
}

fn report(args: &ConsoleArgs, alone: &[Phase], watched: &[Phase]) -> String {
    let alone_cpu = median(alone.iter().map(|p| p.pilotlight).collect());
    let watched_cpu = median(watched.iter().map(|p| p.pilotlight).collect());
    let chromium = median(watched.iter().filter_map(|p| p.chromium).collect());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "console: {} events/s into 1 broker with {TRIGGERS} triggers, {} s phases, {} rounds per side",
        args.rate, args.duration_secs, args.rounds
    );
    let list = |phases: &[Phase]| {
        phases
            .iter()
            .map(|p| format!("{:.1}", p.pilotlight))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        out,
        "  pilotlight CPU, no browser:        {alone_cpu:6.1} % of a core  ({})",
        list(alone)
    );
    let _ = writeln!(
        out,
        "  pilotlight CPU, console open:      {watched_cpu:6.1} % of a core  ({})",
        list(watched)
    );
    let _ = writeln!(
        out,
        "  added by the console:              {:+6.1} points ({:.3}×)",
        watched_cpu - alone_cpu,
        watched_cpu / alone_cpu.max(f64::EPSILON)
    );
    let _ = writeln!(
        out,
        "  the browser itself (all processes): {chromium:6.1} % of a core"
    );
    out
}
