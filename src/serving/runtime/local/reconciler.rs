//! One task per deployment that moves the instance set toward the wanted
//! count. It alone changes the set, the endpoints and the status, so none of
//! them needs more than a short lock.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::LocalWorkload;
use super::instance::{self, Event, Instance};
use super::{ConditionReport, Launcher, LocalConfig, Target};
use crate::serving::runtime::config::ConfigObjects;
use crate::serving::runtime::{
    ConditionState, DeploymentStatus, Endpoint, InstanceLoad, RuntimeCondition, StartState,
};

/// An instance the reconciler knows about, from launch until it has exited.
struct Tracked {
    id: Arc<str>,
    load: Arc<InstanceLoad>,
    /// Tells the instance to drain and stop; taken once that is asked.
    stop: Option<oneshot::Sender<()>>,
    /// Where it listens, once it is ready.
    address: Option<SocketAddr>,
}

impl Tracked {
    fn is_stopping(&self) -> bool {
        self.stop.is_none()
    }

    fn is_ready(&self) -> bool {
        self.address.is_some() && !self.is_stopping()
    }
}

/// How the reconciler talks to its deployment and the control plane.
pub(super) struct Links {
    /// What the deployment asks for.
    pub target: watch::Receiver<Target>,
    /// The ready instances, for the activator.
    pub endpoints: watch::Sender<Arc<[Endpoint]>>,
    /// Counts and conditions, for `status`.
    pub status: Arc<Mutex<DeploymentStatus>>,
    /// Whether instances can start.
    pub start_state: watch::Sender<StartState>,
    /// The loaded Secrets and ConfigMaps.
    pub objects: watch::Receiver<Arc<ConfigObjects>>,
}

/// Where [`Launcher::prepare`] stands.
enum Preparation {
    Running(JoinHandle<Result<(), RuntimeCondition>>),
    /// Failed; tried again at this instant.
    RetryAt(Instant),
    Done,
}

pub(super) struct Reconciler {
    workload: Arc<LocalWorkload>,
    launcher: Arc<dyn Launcher>,
    config: LocalConfig,
    target: watch::Receiver<Target>,
    endpoints: watch::Sender<Arc<[Endpoint]>>,
    status: Arc<Mutex<DeploymentStatus>>,
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    /// Keyed by ordinal, so ids (`<revision>-<ordinal>`) are never reused.
    instances: BTreeMap<u64, Tracked>,
    next_ordinal: u64,
    preparation: Preparation,
    prepare_backoff: crate::backoff::Backoff,
    restarts: RestartBackoff,
    restart_count: u32,
    last_failure: Option<String>,
    /// The loaded Secrets and ConfigMaps: a change retries a failed
    /// preparation at once.
    objects: watch::Receiver<Arc<ConfigObjects>>,
    objects_open: bool,
    /// Whether instances can start, for the activator and the control plane.
    start_state: watch::Sender<StartState>,
}

impl Reconciler {
    pub(super) fn new(
        workload: Arc<LocalWorkload>,
        launcher: Arc<dyn Launcher>,
        config: LocalConfig,
        links: Links,
    ) -> Self {
        let Links {
            target,
            endpoints,
            status,
            start_state,
            objects,
        } = links;
        let (events_tx, events) = mpsc::unbounded_channel();
        let mut reconciler = Reconciler {
            workload,
            launcher,
            config,
            target,
            endpoints,
            status,
            events_tx,
            events,
            instances: BTreeMap::new(),
            next_ordinal: 1,
            preparation: Preparation::Done,
            // As the kubelet backs off image pulls: up to five minutes.
            prepare_backoff: crate::backoff::Backoff::new(
                Duration::from_secs(1),
                Duration::from_secs(300),
            ),
            restarts: RestartBackoff::new(&config),
            restart_count: 0,
            last_failure: None,
            objects,
            objects_open: true,
            start_state,
        };
        // Synchronously, so that a deployment that needs no preparation can
        // start at once, and says so before `deploy` returns.
        reconciler.begin_preparation();
        reconciler.publish();
        reconciler
    }

    /// Checks, then prepares in the background if the launcher needs to.
    fn begin_preparation(&mut self) {
        if let Err(condition) = self.launcher.check() {
            self.failed(condition);
            return;
        }
        if !self.launcher.prepares() {
            self.prepared(Ok(()));
            return;
        }
        let launcher = self.launcher.clone();
        let report = self.report();
        self.preparation =
            Preparation::Running(tokio::spawn(async move { launcher.prepare(&report).await }));
    }

    /// Runs until shutdown is asked or the deployment is dropped, then stops
    /// every instance and returns once all have exited.
    pub(super) async fn run(mut self) {
        loop {
            let target = *self.target.borrow_and_update();
            if target.shutting_down {
                break;
            }
            self.converge(target.replicas);
            self.publish();
            // Only a restart still to come needs a timer: one already due was
            // handled by `converge` above.
            let wake_at = self.wake_at().filter(|at| *at > Instant::now());
            tokio::select! {
                changed = self.target.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                Some(event) = self.events.recv() => self.handle(event),
                prepared = prepared(&mut self.preparation) => self.prepared(prepared),
                changed = self.objects.changed(), if self.objects_open => {
                    if changed.is_err() {
                        // No more changes will come; backoff alone retries.
                        self.objects_open = false;
                    } else if let Preparation::RetryAt(_) = self.preparation {
                        self.preparation = Preparation::RetryAt(Instant::now());
                    }
                }
                () = sleep_until(wake_at), if wake_at.is_some() => {}
            }
        }
        if let Preparation::Running(task) = &self.preparation {
            task.abort();
        }
        self.stop_all().await;
    }

    /// The next instant something is due: a restart after a crash, or the
    /// next try of a failed preparation.
    fn wake_at(&self) -> Option<Instant> {
        let retry = match self.preparation {
            Preparation::RetryAt(at) => Some(at),
            _ => None,
        };
        match (self.restarts.not_before, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn prepared(&mut self, result: Result<(), RuntimeCondition>) {
        match result {
            Ok(()) => {
                self.preparation = Preparation::Done;
                self.prepare_backoff.reset();
            }
            Err(condition) => self.failed(condition),
        }
    }

    /// Holds instances back with `condition` until the next try.
    fn failed(&mut self, condition: RuntimeCondition) {
        let delay = self.prepare_backoff.next_delay();
        let repeated = self
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .condition
            .as_ref()
            .is_some_and(|c| c.message == condition.message);
        if !repeated {
            tracing::warn!(
                service = %self.workload.service,
                revision = %self.workload.revision,
                retry_in = ?delay,
                "{}",
                condition.message
            );
        }
        self.report().set(Some(condition));
        self.preparation = Preparation::RetryAt(Instant::now() + delay);
    }

    fn report(&self) -> ConditionReport {
        ConditionReport {
            status: self.status.clone(),
        }
    }

    fn converge(&mut self, desired: u32) {
        if let Preparation::RetryAt(at) = self.preparation
            && at <= Instant::now()
        {
            self.begin_preparation();
        }
        let active = self.instances.values().filter(|i| !i.is_stopping()).count();
        let desired = desired as usize;
        let prepared = matches!(self.preparation, Preparation::Done);
        if active < desired && prepared && self.restarts.may_start(Instant::now()) {
            for _ in active..desired {
                self.start_instance();
            }
        }
        if active > desired {
            for ordinal in self.surplus(active - desired) {
                self.stop_instance(ordinal);
            }
        }
    }

    /// The instances to stop when scaling down: not-ready ones first, then
    /// those with the fewest requests in flight, so draining is short.
    fn surplus(&self, count: usize) -> Vec<u64> {
        let mut candidates: Vec<(bool, usize, u64)> = self
            .instances
            .iter()
            .filter(|(_, i)| !i.is_stopping())
            .map(|(ordinal, i)| (i.is_ready(), i.load.in_flight(), *ordinal))
            .collect();
        candidates.sort_unstable();
        candidates
            .into_iter()
            .take(count)
            .map(|(_, _, ordinal)| ordinal)
            .collect()
    }

    fn start_instance(&mut self) {
        let ordinal = self.next_ordinal;
        self.next_ordinal += 1;
        let id: Arc<str> = Arc::from(format!("{}-{ordinal}", self.workload.revision));
        let load = Arc::new(InstanceLoad::default());
        let (stop, stop_rx) = oneshot::channel();
        let instance = Instance {
            ordinal,
            id: id.clone(),
            workload: self.workload.clone(),
            launcher: self.launcher.clone(),
            config: self.config,
            load: load.clone(),
        };
        tokio::spawn(instance::run(instance, stop_rx, self.events_tx.clone()));
        self.instances.insert(
            ordinal,
            Tracked {
                id,
                load,
                stop: Some(stop),
                address: None,
            },
        );
    }

    /// Takes the instance out of the endpoints at once; the instance itself
    /// then drains, and reports [`Event::Stopped`] once it is gone.
    fn stop_instance(&mut self, ordinal: u64) {
        let Some(tracked) = self.instances.get_mut(&ordinal) else {
            return;
        };
        tracked.address = None;
        tracked.load.start_draining();
        if let Some(stop) = tracked.stop.take() {
            let _ = stop.send(());
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Ready { ordinal, address } => {
                if let Some(tracked) = self.instances.get_mut(&ordinal)
                    && !tracked.is_stopping()
                {
                    tracked.address = Some(address);
                    self.last_failure = None;
                }
            }
            Event::Stopped { ordinal } => {
                self.instances.remove(&ordinal);
            }
            Event::Exited {
                ordinal,
                failure,
                uptime,
            } => {
                let Some(tracked) = self.instances.remove(&ordinal) else {
                    return;
                };
                // Asked to stop and exited first: not a crash.
                if !tracked.is_stopping() {
                    self.crashed(&tracked.id, failure, uptime);
                }
            }
        }
    }

    fn crashed(&mut self, id: &str, failure: String, uptime: Duration) {
        let delay = self.restarts.crashed(uptime, Instant::now());
        tracing::warn!(
            service = %self.workload.service,
            revision = %self.workload.revision,
            instance = id,
            restart_in = ?delay,
            "{failure}"
        );
        self.restart_count = self.restart_count.saturating_add(1);
        metrics::counter!("pilotlight_instance_restarts_total", "revision" => self.workload.metric_label())
            .increment(1);
        self.last_failure = Some(failure);
    }

    /// Publishes the ready instances (only when the set changed, so watchers
    /// wake only for real changes) and the counts for `status`.
    fn publish(&mut self) {
        let ready: Vec<Endpoint> = self
            .instances
            .values()
            .filter_map(|tracked| {
                let address = tracked.address.filter(|_| tracked.is_ready())?;
                Some(Endpoint {
                    id: tracked.id.clone(),
                    address,
                    load: tracked.load.clone(),
                })
            })
            .collect();
        self.endpoints.send_if_modified(|current| {
            let same = current.len() == ready.len()
                && current.iter().zip(&ready).all(|(a, b)| a.id == b.id);
            if !same {
                *current = Arc::from(ready.as_slice());
            }
            !same
        });
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        status.actual = count(self.instances.len());
        status.ready = count(self.instances.values().filter(|i| i.is_ready()).count());
        status.restarts = self.restart_count;
        status.last_failure.clone_from(&self.last_failure);
        // A preparation that failed earlier and has since succeeded leaves
        // no failure behind (a note, such as a local image, stays).
        if matches!(self.preparation, Preparation::Done)
            && status
                .condition
                .as_ref()
                .is_some_and(|c| c.state != ConditionState::Note)
        {
            status.condition = None;
        }
        let failed = status
            .condition
            .as_ref()
            .filter(|c| c.state == ConditionState::Failed);
        let state = match (&self.preparation, failed) {
            (Preparation::Done, _) => StartState::Ready,
            (_, Some(condition)) => StartState::Blocked(Arc::from(condition.message.as_str())),
            (_, None) => StartState::Preparing,
        };
        self.start_state.send_if_modified(|current| {
            let changed = *current != state;
            if changed {
                *current = state;
            }
            changed
        });
    }

    /// Stops every instance concurrently (each drains, then SIGTERM, then
    /// SIGKILL) and waits until all have exited.
    async fn stop_all(&mut self) {
        let ordinals: Vec<u64> = self.instances.keys().copied().collect();
        for ordinal in ordinals {
            self.stop_instance(ordinal);
        }
        self.publish();
        while !self.instances.is_empty() {
            let Some(event) = self.events.recv().await else {
                break;
            };
            if let Event::Stopped { ordinal } | Event::Exited { ordinal, .. } = event {
                self.instances.remove(&ordinal);
            }
            self.publish();
        }
    }
}

/// Resolves with the preparation's result once it ends; never while it is
/// not running.
async fn prepared(preparation: &mut Preparation) -> Result<(), RuntimeCondition> {
    let Preparation::Running(task) = preparation else {
        return std::future::pending().await;
    };
    match task.await {
        Ok(result) => result,
        Err(e) => Err(RuntimeCondition::failed(
            "PrepareFailed",
            format!("preparing the revision's instances failed: {e}"),
        )),
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Delays restarts after crashes, doubling up to a cap; back to the start
/// once a crashing instance had stayed up a while (as the kubelet does for
/// CrashLoopBackOff).
#[derive(Debug)]
struct RestartBackoff {
    delays: crate::backoff::Backoff,
    /// An instance that ran this long counts as having recovered.
    stable_uptime: Duration,
    /// No instance starts before this, after a crash.
    not_before: Option<Instant>,
}

impl RestartBackoff {
    fn new(config: &LocalConfig) -> Self {
        RestartBackoff {
            delays: crate::backoff::Backoff::new(
                config.restart_backoff_initial,
                config.restart_backoff_max,
            ),
            stable_uptime: config.restart_backoff_max.saturating_mul(2),
            not_before: None,
        }
    }

    /// Records a crash; returns how long until the replacement starts.
    fn crashed(&mut self, uptime: Duration, now: Instant) -> Duration {
        if uptime >= self.stable_uptime {
            self.delays.reset();
        }
        let delay = self.delays.next_delay();
        self.not_before = Some(now + delay);
        delay
    }

    fn may_start(&mut self, now: Instant) -> bool {
        match self.not_before {
            Some(at) if now < at => false,
            _ => {
                self.not_before = None;
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff() -> RestartBackoff {
        RestartBackoff::new(&LocalConfig {
            stop_grace: Duration::from_secs(1),
            restart_backoff_initial: Duration::from_secs(1),
            restart_backoff_max: Duration::from_secs(5),
        })
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut backoff = backoff();
        let now = Instant::now();
        let delays: Vec<u64> = (0..5)
            .map(|_| backoff.crashed(Duration::ZERO, now).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 5, 5]);
    }

    #[test]
    fn backoff_resets_after_a_long_uptime() {
        let mut backoff = backoff();
        let now = Instant::now();
        backoff.crashed(Duration::ZERO, now);
        backoff.crashed(Duration::ZERO, now);
        let delay = backoff.crashed(Duration::from_secs(10), now);
        assert_eq!(delay, Duration::from_secs(1));
    }

    #[test]
    fn no_start_before_the_backoff_ends() {
        let mut backoff = backoff();
        let now = Instant::now();
        assert!(backoff.may_start(now));
        backoff.crashed(Duration::ZERO, now);
        assert!(!backoff.may_start(now));
        assert!(backoff.may_start(now + Duration::from_secs(1)));
        assert!(backoff.not_before.is_none());
    }
}
