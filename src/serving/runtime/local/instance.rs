//! One instance: launch it, wait until every readiness probe passes, watch
//! it, and stop it (drain, then the launcher's SIGTERM and SIGKILL) when
//! asked.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::LocalWorkload;
use super::readiness;
use super::{Launched, Launcher, LocalConfig};
use crate::serving::request_metrics::{START_PHASE_SECONDS, START_SECONDS};
use crate::serving::runtime::{InstanceLoad, Probe};

/// What an instance tells the reconciler.
#[derive(Debug)]
pub(super) enum Event {
    /// Its readiness probes passed.
    Ready { ordinal: u64, address: SocketAddr },
    /// It exited (or never started) without being asked to.
    Exited {
        ordinal: u64,
        failure: String,
        uptime: Duration,
    },
    /// It stopped as asked.
    Stopped { ordinal: u64 },
}

/// Everything one instance needs to run.
pub(super) struct Instance {
    pub ordinal: u64,
    /// `<revision>-<ordinal>`, as in logs and endpoints.
    pub id: Arc<str>,
    pub workload: Arc<LocalWorkload>,
    pub launcher: Arc<dyn Launcher>,
    pub config: LocalConfig,
    pub load: Arc<InstanceLoad>,
}

/// Runs the instance until it exits or is stopped, then reports how it ended.
/// The report is sent even if this task panics or is cancelled, so the
/// reconciler never waits for an instance that is gone.
pub(super) async fn run(
    instance: Instance,
    stop: oneshot::Receiver<()>,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut report = FinalReport {
        ordinal: instance.ordinal,
        events: events.clone(),
        event: None,
    };
    report.event = Some(lifecycle(&instance, stop, &events).await);
}

struct FinalReport {
    ordinal: u64,
    events: mpsc::UnboundedSender<Event>,
    event: Option<Event>,
}

impl Drop for FinalReport {
    fn drop(&mut self) {
        let event = self.event.take().unwrap_or(Event::Stopped {
            ordinal: self.ordinal,
        });
        let _ = self.events.send(event);
    }
}

async fn lifecycle(
    instance: &Instance,
    mut stop: oneshot::Receiver<()>,
    events: &mpsc::UnboundedSender<Event>,
) -> Event {
    let launched_at = Instant::now();
    // A stop asked while launching is seen below, once there is something
    // to stop.
    let mut launched = match instance.launcher.launch(&instance.id).await {
        Ok(launched) => launched,
        Err(failure) => return instance.exited(failure, launched_at),
    };
    let spawned_at = Instant::now();
    let probes = probes(&instance.workload, launched.as_ref());
    tokio::select! {
        _ = &mut stop => return instance.stop(launched).await,
        failure = launched.exited() => return instance.crashed(launched, failure, launched_at).await,
        () = ready(&probes) => {}
    }
    let ready_at = Instant::now();
    record_start(
        &instance.workload.metric_label(),
        launched_at,
        spawned_at,
        ready_at,
    );
    let address = launched.address(None);
    tracing::debug!(instance = %instance.id, %address, after = ?ready_at - launched_at, launch = ?spawned_at - launched_at, "instance is ready");
    let _ = events.send(Event::Ready {
        ordinal: instance.ordinal,
        address,
    });
    tokio::select! {
        _ = &mut stop => instance.stop(launched).await,
        failure = launched.exited() => instance.crashed(launched, failure, launched_at).await,
    }
}

/// The start's time, whole and in its two phases: `launch` (pilotlight's
/// part: a port, the environment, the spawn and exec, or the engine's
/// create and start) and `ready` (the app's own start, and noticing its
/// probes pass). Per revision, so a cold start's phases can be told apart;
/// the proxy adds the third, `first_byte`.
fn record_start(revision: &str, launched_at: Instant, spawned_at: Instant, ready_at: Instant) {
    metrics::histogram!(START_SECONDS, "revision" => revision.to_owned())
        .record((ready_at - launched_at).as_secs_f64());
    for (phase, took) in [
        ("launch", spawned_at - launched_at),
        ("ready", ready_at - spawned_at),
    ] {
        metrics::histogram!(START_PHASE_SECONDS, "revision" => revision.to_owned(), "phase" => phase)
            .record(took.as_secs_f64());
    }
}

/// Every container's readiness probe (the serving container always has one;
/// a sidecar when it declares one), with where it is sent.
fn probes<'a>(
    workload: &'a LocalWorkload,
    launched: &dyn Launched,
) -> Vec<(&'a Probe, SocketAddr)> {
    workload
        .pod
        .containers
        .iter()
        .filter_map(|c| c.readiness.as_ref())
        .map(|probe| (probe, launched.address(probe.port())))
        .collect()
}

/// Resolves once every probe passes.
async fn ready(probes: &[(&Probe, SocketAddr)]) {
    let waits = probes
        .iter()
        .map(|(probe, address)| readiness::wait_until_ready(probe, *address));
    futures::future::join_all(waits).await;
}

impl Instance {
    fn exited(&self, failure: String, launched_at: Instant) -> Event {
        Event::Exited {
            ordinal: self.ordinal,
            failure,
            uptime: launched_at.elapsed(),
        }
    }

    /// It ended on its own: what is left of it goes (a sidecar still
    /// running, the exited container) before the reconciler hears of it,
    /// so a replacement never runs beside it.
    async fn crashed(
        &self,
        launched: Box<dyn Launched>,
        failure: String,
        launched_at: Instant,
    ) -> Event {
        let event = self.exited(failure, launched_at);
        launched.stop(Duration::ZERO).await;
        event
    }

    /// Drains the instance (up to the revision's timeout, or until it
    /// exits), then has the launcher stop it.
    async fn stop(&self, mut launched: Box<dyn Launched>) -> Event {
        let drained = tokio::time::timeout(self.workload.drain_timeout, self.load.wait_idle());
        tokio::select! {
            _ = drained => {}
            _ = launched.exited() => {}
        }
        launched.stop(self.config.stop_grace).await;
        tracing::debug!(instance = %self.id, "instance stopped");
        Event::Stopped {
            ordinal: self.ordinal,
        }
    }
}
