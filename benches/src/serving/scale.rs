//! The serving bench's scale figure: `pilotlight run` with 1,000 Services
//! at zero against the same with 10, run one after the other in one
//! session. Each side is a real child process (the product binary, as the
//! idle-RSS figure runs it) with one more Service, `warm`, pinned at one
//! instance. Per side:
//!
//! - **start-up**: from spawning `pilotlight run` until `/readyz` answers
//!   200 (polled every millisecond, a new connection each time);
//! - **idle RSS**, `--settle-secs` after ready;
//! - **cost per request**: a closed loop of keep-alive `GET /` to `warm`
//!   at one connection (the load generator of the warm figure): requests/s
//!   and p50. The router looks every request's Host up among all Services,
//!   so its cost shows as the ratio of the 1,000 side to the 10 side.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;

use super::{Rss, WarmPhase, first_answer, read_rss, readyz, run_command};
use crate::app::{AppRuntime, START_TIMEOUT, free_port, loopback};
use crate::load::{Load, Shape, run_load};
use crate::workdir::{NAMESPACE, WorkDir};

/// Services at zero on each side: the small and the large.
pub(super) const SIDES: [(usize, &str); 2] = [
    (10, "pilotlight run, 10 services at zero + 1 warm"),
    (1_000, "pilotlight run, 1,000 services at zero + 1 warm"),
];

/// One side of the scale figure.
pub(super) struct ScaleSide {
    pub(super) services: usize,
    /// Spawn until `/readyz` answered 200.
    pub(super) startup: Duration,
    pub(super) rss: Rss,
    /// `GET /` to `warm` at one connection.
    pub(super) warm: WarmPhase,
}

/// Both sides, small first.
pub(super) async fn measure(
    exe: &Path,
    app: &AppRuntime,
    settle: Duration,
    duration: Duration,
) -> anyhow::Result<Vec<ScaleSide>> {
    let mut sides = Vec::with_capacity(SIDES.len());
    for (services, what) in SIDES {
        sides.push(
            measure_side(exe, app, services, what, settle, duration)
                .await
                .with_context(|| format!("with {services} services"))?,
        );
    }
    Ok(sides)
}

async fn measure_side(
    exe: &Path,
    app: &AppRuntime,
    services: usize,
    what: &'static str,
    settle: Duration,
    duration: Duration,
) -> anyhow::Result<ScaleSide> {
    let dir = WorkDir::create(&format!("scale-{services}"))?;
    std::fs::write(dir.manifests().join("scale.yaml"), manifest(app, services))
        .with_context(|| format!("cannot write the manifest in {}", dir.path.display()))?;
    let listen = loopback(free_port()?);
    let admin = loopback(free_port()?);
    let started = Instant::now();
    let mut child = run_command(exe, &dir, listen, admin)
        .args(app.run_args())
        .spawn()
        .with_context(|| format!("cannot start {} run", exe.display()))?;
    let pid = child.id().context("pilotlight run exited at once")?;
    let startup = until_ready(&mut child, admin, started).await?;
    tokio::time::sleep(settle).await;
    let rss = read_rss(what, pid)?;
    let host = format!("warm.{NAMESPACE}.localhost");
    // The activator holds this one until `warm`'s instance is ready.
    first_answer(listen, &host).await?;
    let warm = warm_phase(listen, host, duration).await?;
    let _ = child.start_kill();
    let _ = child.wait().await;
    drop(dir);
    Ok(ScaleSide {
        services,
        startup,
        rss,
        warm,
    })
}

/// `services` Services at zero and `warm` at one instance.
fn manifest(app: &AppRuntime, services: usize) -> String {
    let mut yaml = String::new();
    for index in 0..services {
        yaml.push_str(&app.service(&format!("scale-{index}"), &[("initial-scale", "0")]));
    }
    yaml.push_str(&app.service("warm", &[("min-scale", "1"), ("max-scale", "1")]));
    yaml
}

/// Time from `started` until `/readyz` answers 200, polled every
/// millisecond.
pub(super) async fn until_ready(
    child: &mut tokio::process::Child,
    admin: SocketAddr,
    started: Instant,
) -> anyhow::Result<Duration> {
    loop {
        if readyz(admin).await {
            return Ok(started.elapsed());
        }
        if let Some(status) = child.try_wait().context("cannot check pilotlight run")? {
            bail!("pilotlight run exited before it was ready: {status}");
        }
        if started.elapsed() > START_TIMEOUT {
            bail!(
                "pilotlight run's /readyz on {admin} did not answer 200 within {START_TIMEOUT:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn warm_phase(
    listen: SocketAddr,
    host: String,
    duration: Duration,
) -> anyhow::Result<WarmPhase> {
    let (tally, window) = run_load(Load {
        addr: listen,
        path: "/".into(),
        payload: Bytes::new(),
        connections: 1,
        duration,
        rate: None,
        origin: Instant::now(),
        id_prefix: String::new(),
        shape: Shape::Get { host },
        tls: None,
    })
    .await?;
    Ok(WarmPhase { tally, window })
}
