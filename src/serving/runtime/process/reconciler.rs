//! One task per deployment that moves the instance set toward the wanted
//! count. It alone changes the set, the endpoints and the status, so none of
//! them needs more than a short lock.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::instance::{self, Event, Instance};
use super::{ProcessConfig, Target};
use crate::serving::runtime::{DeploymentStatus, Endpoint, InstanceLoad, Workload};

/// An instance the reconciler knows about, from spawn until it has exited.
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

pub(super) struct Reconciler {
    workload: Arc<Workload>,
    config: ProcessConfig,
    target: watch::Receiver<Target>,
    endpoints: watch::Sender<Arc<[Endpoint]>>,
    status: Arc<Mutex<DeploymentStatus>>,
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    /// Keyed by ordinal, so ids (`<revision>-<ordinal>`) are never reused.
    instances: BTreeMap<u64, Tracked>,
    next_ordinal: u64,
    backoff: Backoff,
    restarts: u32,
    last_failure: Option<String>,
}

impl Reconciler {
    pub(super) fn new(
        workload: Arc<Workload>,
        config: ProcessConfig,
        target: watch::Receiver<Target>,
        endpoints: watch::Sender<Arc<[Endpoint]>>,
        status: Arc<Mutex<DeploymentStatus>>,
    ) -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        Reconciler {
            workload,
            config,
            target,
            endpoints,
            status,
            events_tx,
            events,
            instances: BTreeMap::new(),
            next_ordinal: 1,
            backoff: Backoff::new(&config),
            restarts: 0,
            last_failure: None,
        }
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
            let restart_at = self.backoff.not_before.filter(|at| *at > Instant::now());
            tokio::select! {
                changed = self.target.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                Some(event) = self.events.recv() => self.handle(event),
                () = sleep_until(restart_at), if restart_at.is_some() => {}
            }
        }
        self.stop_all().await;
    }

    fn converge(&mut self, desired: u32) {
        let active = self.instances.values().filter(|i| !i.is_stopping()).count();
        let desired = desired as usize;
        if active < desired && self.backoff.may_start(Instant::now()) {
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
    /// then drains, and reports [`Event::Stopped`] once its process is gone.
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
        let delay = self.backoff.crashed(uptime, Instant::now());
        tracing::warn!(
            service = %self.workload.service,
            revision = %self.workload.revision,
            instance = id,
            restart_in = ?delay,
            "{failure}"
        );
        self.restarts = self.restarts.saturating_add(1);
        metrics::counter!("pilotlight_instance_restarts_total", "revision" => self.workload.revision.clone())
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
        status.restarts = self.restarts;
        status.last_failure.clone_from(&self.last_failure);
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

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Delays restarts after crashes: initial, doubling, capped; back to initial
/// once a crashing instance had stayed up a while (as the kubelet does for
/// CrashLoopBackOff).
#[derive(Debug)]
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    /// No instance starts before this, after a crash.
    not_before: Option<Instant>,
}

impl Backoff {
    fn new(config: &ProcessConfig) -> Self {
        Backoff {
            initial: config.restart_backoff_initial,
            max: config.restart_backoff_max,
            next: config.restart_backoff_initial,
            not_before: None,
        }
    }

    /// An instance that ran for twice the longest backoff counts as having
    /// recovered: its crash starts a fresh backoff.
    fn stable_uptime(&self) -> Duration {
        self.max.saturating_mul(2)
    }

    /// Records a crash; returns how long until the replacement starts.
    fn crashed(&mut self, uptime: Duration, now: Instant) -> Duration {
        if uptime >= self.stable_uptime() {
            self.next = self.initial;
        }
        let delay = self.next.min(self.max);
        self.not_before = Some(now + delay);
        self.next = self.next.saturating_mul(2).min(self.max);
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

    fn backoff() -> Backoff {
        Backoff::new(&ProcessConfig {
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
