//! A running revision and its activator: requests wait here (bounded) until
//! one of the revision's instances has room, and a request arriving at zero
//! instances asks the autoscaler for one at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::autoscaler::{RevisionStats, ScalerHandle};
use super::request_metrics::RequestMetrics;
use super::runtime::{Deployment, Endpoint, StartState};
use crate::api::ObjectKey;

/// A revision that can take requests.
pub(crate) struct Revision {
    /// Namespace and revision name (`default/hello-00001`).
    pub key: ObjectKey,
    /// Requests one instance takes at once; 0 is unlimited.
    pub container_concurrency: u32,
    /// `timeoutSeconds`: the longest a request may wait for its response to start.
    pub timeout: Duration,
    /// Every request to the revision, counted for the autoscaler.
    pub stats: Arc<RevisionStats>,
    /// Its requests' latency and count, and their waits in the queue.
    pub requests: RequestMetrics,
    pub deployment: Arc<dyn Deployment>,
    pub scaler: ScalerHandle,
    endpoints: watch::Receiver<Arc<[Endpoint]>>,
    /// Woken when a request ends while others wait for room.
    room: Notify,
    queued: AtomicUsize,
    queue_limit: usize,
    /// Set once an instance has been ready: the revision is then Ready and
    /// `latestRevision` traffic may move to it.
    has_been_ready: AtomicBool,
    /// Rotates which of equally loaded instances gets the next request.
    rotation: AtomicUsize,
}

/// Why the activator gave up on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unavailable {
    /// More requests wait than the queue holds (503 + Retry-After).
    QueueFull,
    /// No instance had room within `timeoutSeconds` (504).
    TimedOut,
    /// The revision was removed while the request waited (503).
    Gone,
    /// No instance can start until something is fixed, such as an image
    /// that cannot be pulled (503, with why).
    CannotStart(Arc<str>),
}

/// A request's hold on one instance; dropping it frees the slot.
pub(crate) struct Lease {
    pub endpoint: Endpoint,
    /// How long it waited for the instance; None when one had room at once.
    pub waited: Option<Waited>,
    revision: Arc<Revision>,
}

/// A request's wait in the activator queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Waited {
    /// From joining the queue to getting an instance.
    pub queue: Duration,
    /// The part of it spent while no instance was ready (the revision was
    /// at zero, or its instances were all gone): the cold start this
    /// request waited for. None when instances were ready but busy.
    pub cold_start: Option<Duration>,
    /// When it got the instance: for a cold start, about when the instance
    /// became ready, where the start's `first_byte` phase begins.
    pub leased_at: Instant,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.endpoint.load.end();
        if self.revision.queued.load(Ordering::SeqCst) > 0 {
            self.revision.room.notify_waiters();
        }
    }
}

pub(crate) struct RevisionParts {
    pub key: ObjectKey,
    pub container_concurrency: u32,
    pub timeout: Duration,
    pub queue_limit: usize,
    pub stats: Arc<RevisionStats>,
    pub deployment: Arc<dyn Deployment>,
    pub scaler: ScalerHandle,
}

impl Revision {
    pub(crate) fn new(parts: RevisionParts) -> Self {
        let endpoints = parts.deployment.endpoints();
        Revision {
            requests: RequestMetrics::new(parts.key.to_string()),
            key: parts.key,
            container_concurrency: parts.container_concurrency,
            timeout: parts.timeout,
            stats: parts.stats,
            deployment: parts.deployment,
            scaler: parts.scaler,
            endpoints,
            room: Notify::new(),
            queued: AtomicUsize::new(0),
            queue_limit: parts.queue_limit,
            has_been_ready: AtomicBool::new(false),
            rotation: AtomicUsize::new(0),
        }
    }

    /// Ready instances now.
    pub(crate) fn endpoints(&self) -> Arc<[Endpoint]> {
        self.endpoints.borrow().clone()
    }

    /// A receiver that sees every change of the ready instances.
    pub(crate) fn watch_endpoints(&self) -> watch::Receiver<Arc<[Endpoint]>> {
        self.endpoints.clone()
    }

    pub(crate) fn has_been_ready(&self) -> bool {
        self.has_been_ready.load(Ordering::Acquire)
    }

    pub(crate) fn mark_ready(&self) {
        self.has_been_ready.store(true, Ordering::Release);
    }

    /// Requests waiting in the activator.
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// Waits until an instance has room, or gives up at `deadline`.
    pub(crate) async fn acquire(self: &Arc<Self>, deadline: Instant) -> Result<Lease, Unavailable> {
        if let Some(lease) = self.try_acquire() {
            return Ok(lease);
        }
        let _place = QueuePlace::take(self)?;
        let mut wait = QueueWait::new();
        let mut endpoints = self.endpoints.clone();
        let mut start_state = self.deployment.start_state();
        let mut start_state_open = true;
        loop {
            // Register for wake-ups before looking, so a change between the
            // look and the wait is not missed.
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            let at_zero = endpoints.borrow_and_update().is_empty();
            wait.saw(at_zero);
            if let Some(mut lease) = self.try_acquire() {
                let waited = wait.done();
                self.requests.record_queue(waited.queue);
                lease.waited = Some(waited);
                return Ok(lease);
            }
            if at_zero {
                if let StartState::Blocked(why) = &*start_state.borrow_and_update() {
                    return Err(Unavailable::CannotStart(why.clone()));
                }
                self.scaler.poke();
            }
            tokio::select! {
                changed = endpoints.changed() => if changed.is_err() {
                    return Err(Unavailable::Gone);
                },
                changed = start_state.changed(), if start_state_open => if changed.is_err() {
                    start_state_open = false;
                },
                () = &mut room => {}
                () = tokio::time::sleep_until(deadline) => return Err(Unavailable::TimedOut),
            }
        }
    }

    /// Takes a slot on the least-loaded ready instance that has room.
    fn try_acquire(self: &Arc<Self>) -> Option<Lease> {
        let endpoints = self.endpoints();
        // An instance may start draining between the pick and try_begin; then
        // pick again among the rest.
        for _ in 0..endpoints.len() {
            let endpoint = self.least_loaded(&endpoints)?;
            if endpoint.load.try_begin() {
                return Some(Lease {
                    endpoint: endpoint.clone(),
                    waited: None,
                    revision: self.clone(),
                });
            }
        }
        None
    }

    fn least_loaded<'a>(&self, endpoints: &'a [Endpoint]) -> Option<&'a Endpoint> {
        let n = endpoints.len();
        if n == 0 {
            return None;
        }
        let start = self.rotation.fetch_add(1, Ordering::Relaxed) % n;
        let limit = self.container_concurrency as usize;
        (0..n)
            .map(|i| &endpoints[(start + i) % n])
            .filter(|e| !e.load.is_draining())
            .filter(|e| limit == 0 || e.load.in_flight() < limit)
            .min_by_key(|e| e.load.in_flight())
    }
}

/// A request's place in the activator queue, given back on drop.
struct QueuePlace<'a>(&'a Revision);

impl<'a> QueuePlace<'a> {
    fn take(revision: &'a Revision) -> Result<Self, Unavailable> {
        let before = revision.queued.fetch_add(1, Ordering::SeqCst);
        let place = QueuePlace(revision);
        if before >= revision.queue_limit {
            return Err(Unavailable::QueueFull);
        }
        Ok(place)
    }
}

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Times one request's wait in the queue, and the part of it while no
/// instance was ready.
struct QueueWait {
    queued_at: Instant,
    /// Since when no instance has been ready, while that lasts.
    zero_since: Option<Instant>,
    /// The time spent at zero, summed over every stretch of it.
    at_zero: Duration,
    saw_zero: bool,
}

impl QueueWait {
    fn new() -> Self {
        QueueWait {
            queued_at: Instant::now(),
            zero_since: None,
            at_zero: Duration::ZERO,
            saw_zero: false,
        }
    }

    /// One look at the ready instances: none (`at_zero`) or some.
    fn saw(&mut self, at_zero: bool) {
        let now = Instant::now();
        match (at_zero, self.zero_since) {
            (true, None) => {
                self.zero_since = Some(now);
                self.saw_zero = true;
            }
            (false, Some(since)) => {
                self.at_zero += now - since;
                self.zero_since = None;
            }
            _ => {}
        }
    }

    fn done(mut self) -> Waited {
        self.saw(false);
        let leased_at = Instant::now();
        Waited {
            queue: leased_at - self.queued_at,
            cold_start: self.saw_zero.then_some(self.at_zero),
            leased_at,
        }
    }
}
