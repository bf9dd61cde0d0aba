//! The machinery shared by the embedded backends (`log` and `memory`).
//!
//! Events live in a [`Store`] (the on-disk log, or nothing for `memory`) and, for
//! the most recent ones, in an in-memory tail. Each tail entry carries the set of
//! triggers it matched, computed once at ingress by the [`FilterIndex`], so a
//! trigger reading the tail tests one bit per event instead of its filter. A
//! trigger that falls behind the tail reads the store and tests its filter itself.
//!
//! A trigger that has read everything parks, and only an event that matched it
//! wakes it (its own [`Notify`]): with thousands of triggers on a broker, an
//! event wakes the few it matched, not every one. A parked trigger is at the
//! head for its cursor, since nothing published while it slept was for it.
//!
//! Each trigger has a cursor: every event before it was delivered, dead-lettered
//! or filtered out. Cursors advance only on acknowledgement and are persisted
//! periodically, so a crash redelivers at most the last moments' work.
//!
//! Durable stores get one writer thread: appends that arrive while it is
//! syncing are written together and share the next fsync (group commit).

mod group_commit;
mod subscription;
mod tail;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{Notify, watch};

use super::{
    AppendError, Backend, BackendError, LanePosition, RewindError, RewindTo, Rewound, Subscription,
    SubscriptionLag, SubscriptionSpec, TailError, TailStart, TailStream,
};
use crate::api::ObjectKey;
use crate::api::filter::Filter;
use crate::cloudevent::Event;
use crate::eventing::trigger::filter::{FilterIndex, MatchSet};
use group_commit::GroupCommit;
use subscription::LocalSubscription;

/// A failure of the store under a local backend.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Corrupt(String),
}

impl StoreError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }

    /// Why an append failed, as the sender reads it in a 503: a full disk
    /// says so and that it passes once space is freed.
    pub(crate) fn append_reason(&self) -> String {
        match self {
            StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull => {
                format!(
                    "the disk under the log is full ({self}); events are accepted again once space is freed there"
                )
            }
            _ => self.to_string(),
        }
    }
}

/// Storage under a local backend: events numbered by offset, plus the cursors.
///
/// `append` and `sync` are called from one writer thread only; `read` from any
/// thread (through `spawn_blocking`); all calls may block on I/O.
pub(crate) trait Store: Send + Sync + 'static {
    /// Whether appends survive a crash. Non-durable stores skip the writer thread.
    const DURABLE: bool;

    /// Appends events (durable only after the next `sync`); returns the offset
    /// given to the first one. Offsets are consecutive.
    fn append(&self, events: &[Arc<Event>]) -> Result<u64, StoreError>;

    /// Makes every event appended so far durable.
    fn sync(&self) -> Result<(), StoreError>;

    /// Up to `max` events from offset `from` on. Events before the oldest kept
    /// offset are gone (retention); the result then starts later than `from`.
    fn read(&self, from: u64, max: usize) -> Result<Vec<(u64, Event)>, StoreError>;

    /// The oldest offset kept and the next offset to be given.
    fn bounds(&self) -> (u64, u64);

    /// The first offset kept that was stored at or after `time_ms` (ms since
    /// the epoch), or the next offset to be given when none was.
    fn offset_at(&self, time_ms: i64) -> Result<u64, StoreError>;

    /// Drops what retention no longer keeps.
    fn enforce_retention(&self) -> Result<(), StoreError>;

    /// The cursors saved by [`Store::save_cursors`], by trigger key.
    fn load_cursors(&self) -> Result<HashMap<String, u64>, StoreError>;

    /// Saves the cursors atomically: after a crash, the old set or the new.
    fn save_cursors(&self, cursors: &HashMap<String, u64>) -> Result<(), StoreError>;

    /// Removes everything the store keeps.
    fn destroy(&self) -> Result<(), StoreError>;
}

/// Sizing of the in-memory tail and the append queue.
#[derive(Debug, Clone)]
pub(crate) struct LocalConfig {
    /// The tail keeps at most this many bytes of events. For `memory` this is
    /// the whole store (its retention by size).
    pub tail_bytes: usize,
    /// For `memory`: events older than this are dropped even if undelivered.
    pub max_age: Option<Duration>,
    /// Appends waiting for the writer beyond this are refused with 429.
    pub max_pending_appends: usize,
    /// How often cursors are saved and retention is applied.
    pub flush_interval: Duration,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            tail_bytes: 64 << 20,
            max_age: None,
            max_pending_appends: 4096,
            flush_interval: Duration::from_millis(200),
        }
    }
}

/// A backend over a [`Store`]: see the module documentation.
pub(crate) struct LocalBackend<S: Store> {
    shared: Arc<Shared<S>>,
    writer: Option<GroupCommit>,
    background: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct Shared<S: Store> {
    store: Arc<S>,
    config: LocalConfig,
    state: Mutex<State>,
    /// The index used at ingress; rebuilt by the first append after the
    /// subscriptions changed.
    index: RwLock<Arc<FilterIndex>>,
    /// The version the index must have (`State::index_version`), readable at
    /// ingress without the state lock.
    wanted_index: AtomicU64,
    /// The next offset to be published; subscriptions wait on its changes.
    head: watch::Sender<u64>,
    /// Held across a cursor snapshot and its save, so an older snapshot never
    /// lands after a newer one.
    saving: Mutex<()>,
    /// Tells the background loop to stop.
    stopping: watch::Sender<bool>,
}

struct TailEntry {
    event: Arc<Event>,
    matches: MatchSet,
    stored_at: Instant,
}

struct State {
    tail: VecDeque<TailEntry>,
    /// Offset of `tail[0]`.
    tail_start: u64,
    tail_bytes: usize,
    subscriptions: HashMap<String, SubscriptionState>,
    /// Trigger key per index slot; `None` for a free slot.
    slots: Vec<Option<String>>,
    index_version: u64,
    /// Cursors loaded at start for triggers not subscribed yet.
    saved_cursors: HashMap<String, u64>,
    cursors_dirty: bool,
}

struct SubscriptionState {
    slot: usize,
    filter: Arc<Filter>,
    /// Tail entries matched against an older index are tested directly.
    since_index_version: u64,
    /// Bumped by every resubscribe: stale subscriptions and acks are ignored.
    generation: u64,
    /// Offsets handed out and not yet acknowledged.
    pending: BTreeSet<u64>,
    /// The next offset the subscription will read.
    read_up_to: u64,
    lost_to_retention: u64,
    /// The reader has read up to the head and waits on `wake`: every event
    /// published since then did not match it (one that did unparks it).
    parked: bool,
    /// Wakes the reader: an event matched it, or it was replaced or stopped.
    wake: Arc<Notify>,
}

impl SubscriptionState {
    /// Every event before this offset is done for the trigger; `head` is the
    /// backend's, which a parked subscription has in effect reached.
    fn cursor(&self, head: u64) -> u64 {
        let read = if self.parked { head } else { self.read_up_to };
        self.pending.first().copied().unwrap_or(read)
    }

    /// Wakes the reader for an event at `offset` or later. A parked reader
    /// skips what was published before it, none of which matched it.
    fn unpark(&mut self, offset: u64) {
        if self.parked {
            self.parked = false;
            self.read_up_to = self.read_up_to.max(offset);
        }
        self.wake.notify_one();
    }
}

impl State {
    fn head(&self) -> u64 {
        self.tail_start + self.tail.len() as u64
    }

    fn publish(&mut self, events: Vec<Arc<Event>>, matches: Vec<MatchSet>, tail_bytes: usize) {
        let now = Instant::now();
        for (event, matches) in events.into_iter().zip(matches) {
            self.wake_matched(self.head(), &matches);
            self.tail_bytes += event.size();
            self.tail.push_back(TailEntry {
                event,
                matches,
                stored_at: now,
            });
        }
        while self.tail_bytes > tail_bytes && self.tail.len() > 1 {
            self.pop_tail();
        }
    }

    /// Wakes the subscriptions an event at `offset` is for: those it matched
    /// and, when it was matched against an older index than a subscription's
    /// (just after triggers changed), that subscription, which tests its
    /// filter itself.
    fn wake_matched(&mut self, offset: u64, matches: &MatchSet) {
        for slot in matches.slots() {
            let key = self.slots.get(slot).and_then(Option::as_ref);
            if let Some(sub) = key.and_then(|k| self.subscriptions.get_mut(k)) {
                sub.unpark(offset);
            }
        }
        if matches.index_version < self.index_version {
            self.subscriptions
                .values_mut()
                .filter(|sub| sub.since_index_version > matches.index_version)
                .for_each(|sub| sub.unpark(offset));
        }
    }

    /// Wakes every reader, so each finds out it was replaced or stopped.
    fn wake_all(&self) {
        for sub in self.subscriptions.values() {
            sub.wake.notify_one();
        }
    }

    fn pop_tail(&mut self) -> Option<TailEntry> {
        let entry = self.tail.pop_front()?;
        self.tail_bytes -= entry.event.size();
        self.tail_start += 1;
        Some(entry)
    }

    /// Marks the index out of date after the triggers changed: the next
    /// append rebuilds it, once however many changed in between (a broker
    /// starting with 10,000 triggers builds it once, not 10,000 times).
    /// Returns the version that will include the change.
    fn index_changed(&mut self) -> u64 {
        self.index_version += 1;
        self.index_version
    }

    fn build_index(&self) -> FilterIndex {
        let filters = self
            .slots
            .iter()
            .map(|key| {
                key.as_ref()
                    .and_then(|k| self.subscriptions.get(k))
                    .map(|s| s.filter.clone())
            })
            .collect();
        FilterIndex::new(self.index_version, filters)
    }
}

impl<S: Store> LocalBackend<S> {
    /// Starts a backend over an opened store.
    pub(crate) fn start(store: S, config: LocalConfig) -> Result<Self, StoreError> {
        let store = Arc::new(store);
        let saved_cursors = store.load_cursors()?;
        let (_, next) = store.bounds();
        let shared = Arc::new(Shared {
            store: store.clone(),
            config: config.clone(),
            state: Mutex::new(State {
                tail: VecDeque::new(),
                tail_start: next,
                tail_bytes: 0,
                subscriptions: HashMap::new(),
                slots: Vec::new(),
                index_version: 0,
                saved_cursors,
                cursors_dirty: false,
            }),
            index: RwLock::new(Arc::new(FilterIndex::default())),
            wanted_index: AtomicU64::new(0),
            head: watch::channel(next).0,
            saving: Mutex::new(()),
            stopping: watch::channel(false).0,
        });
        let writer =
            S::DURABLE.then(|| GroupCommit::start(shared.clone(), config.max_pending_appends));
        let background = tokio::spawn(background_loop(Arc::downgrade(&shared)));
        Ok(LocalBackend {
            shared,
            writer,
            background: Mutex::new(Some(background)),
        })
    }
}

impl<S: Store> Shared<S> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The index to match events against, rebuilt first when the
    /// subscriptions changed since it was built.
    fn index(&self) -> Arc<FilterIndex> {
        let current = self.index.read().unwrap_or_else(|e| e.into_inner()).clone();
        if current.version() >= self.wanted_index.load(Ordering::Acquire) {
            return current;
        }
        let rebuilt = {
            let state = self.lock();
            Arc::new(state.build_index())
        };
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        // Two appends may rebuild at once: the newer index stays.
        if index.version() < rebuilt.version() {
            *index = rebuilt.clone();
        }
        rebuilt
    }

    /// Records that the subscriptions changed (under the state lock): the
    /// next append rebuilds the index. Returns the version including it.
    fn index_changed(&self, state: &mut State) -> u64 {
        let version = state.index_changed();
        self.wanted_index.store(version, Ordering::Release);
        version
    }

    /// Makes stored events visible to subscriptions, in offset order, under
    /// one lock and with one wake-up of the waiting subscriptions. Each batch
    /// comes with the offset the store gave its first event (`None`: no store).
    fn publish(
        &self,
        batches: impl IntoIterator<Item = (Option<u64>, Vec<Arc<Event>>, Vec<MatchSet>)>,
    ) {
        let head = {
            let mut state = self.lock();
            for (first_offset, events, matches) in batches {
                if let Some(first) = first_offset
                    && first != state.head()
                {
                    // The store skipped offsets (a write rolled back after an
                    // error): restart the tail there; triggers behind it read
                    // the store.
                    tracing::warn!(
                        expected = state.head(),
                        got = first,
                        "log offsets moved; resetting the in-memory tail"
                    );
                    state.tail.clear();
                    state.tail_bytes = 0;
                    state.tail_start = first;
                }
                state.publish(events, matches, self.config.tail_bytes);
            }
            state.head()
        };
        self.head.send_replace(head);
    }

    fn save_cursors(&self) -> Result<(), StoreError> {
        let _saving = self.saving.lock().unwrap_or_else(|e| e.into_inner());
        let cursors = {
            let mut state = self.lock();
            if !state.cursors_dirty {
                return Ok(());
            }
            state.cursors_dirty = false;
            let mut cursors = state.saved_cursors.clone();
            let head = state.head();
            for (key, sub) in &state.subscriptions {
                cursors.insert(key.clone(), sub.cursor(head));
            }
            cursors
        };
        self.store.save_cursors(&cursors).inspect_err(|_| {
            self.lock().cursors_dirty = true;
        })
    }

    /// For `memory`: the first offset of the tail stored at or after
    /// `time_ms`, or the head when none was.
    pub(super) fn tail_offset_at(&self, time_ms: i64) -> u64 {
        let state = self.lock();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let ago = Duration::from_millis(u64::try_from(now.saturating_sub(time_ms)).unwrap_or(0));
        let Some(since) = Instant::now().checked_sub(ago) else {
            return state.tail_start;
        };
        let first = state.tail.partition_point(|e| e.stored_at < since);
        state.tail_start + first as u64
    }

    /// For `memory`: drop what every trigger is done with, and what is too old.
    /// Entries are taken out under the lock and freed after it, so ingress and
    /// acks do not wait for the deallocation.
    fn evict_consumed(&self) {
        let mut evicted = Vec::new();
        {
            let mut state = self.lock();
            let head = state.head();
            let done_up_to = state
                .subscriptions
                .values()
                .map(|sub| sub.cursor(head))
                .min()
                .unwrap_or(head);
            let deadline = self
                .config
                .max_age
                .and_then(|a| Instant::now().checked_sub(a));
            while let Some(front) = state.tail.front() {
                let consumed = state.tail_start < done_up_to;
                let expired = deadline.is_some_and(|d| front.stored_at < d);
                if !(consumed || expired) {
                    break;
                }
                if let Some(entry) = state.pop_tail() {
                    evicted.push(entry);
                }
            }
        }
        drop(evicted);
    }
}

/// Saves cursors and applies retention until the backend stops.
async fn background_loop<S: Store>(shared: std::sync::Weak<Shared<S>>) {
    let (interval, mut stopping) = match shared.upgrade() {
        Some(s) => (s.config.flush_interval, s.stopping.subscribe()),
        None => return,
    };
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stopping.wait_for(|stop| *stop) => return,
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        ticks += 1;
        if !S::DURABLE {
            shared.evict_consumed();
            continue;
        }
        let retention_due = ticks.is_multiple_of(50);
        let result = tokio::task::spawn_blocking(move || {
            if let Err(e) = shared.save_cursors() {
                tracing::error!(error = %e, "saving trigger cursors failed");
            }
            if retention_due && let Err(e) = shared.store.enforce_retention() {
                tracing::error!(error = %e, "applying log retention failed");
            }
        })
        .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "the cursor and retention task failed");
        }
    }
}

#[async_trait]
impl<S: Store> Backend for LocalBackend<S> {
    async fn append(&self, events: Vec<Event>) -> Result<(), AppendError> {
        let index = self.shared.index();
        let matches: Vec<MatchSet> = events.iter().map(|e| index.matches(e)).collect();
        let events: Vec<Arc<Event>> = events.into_iter().map(Arc::new).collect();
        match &self.writer {
            Some(writer) => writer.append(events, matches).await,
            None => {
                self.shared.publish([(None, events, matches)]);
                Ok(())
            }
        }
    }

    async fn subscribe(
        &self,
        spec: SubscriptionSpec,
    ) -> Result<Box<dyn Subscription>, BackendError> {
        let key = spec.trigger.to_string();
        let (generation, since, start, wake) = {
            let mut state = self.shared.lock();
            let head = state.head();
            let (first_kept, _) = self.shared.store.bounds();
            let previous = state.subscriptions.remove(&key);
            let saved = state.saved_cursors.remove(&key);
            let start = match (&previous, saved) {
                (Some(p), _) => p.cursor(head),
                (None, Some(c)) => c.clamp(first_kept.min(head), head),
                (None, None) => head,
            };
            // Retention removed events while pilotlight was down.
            let lost_while_down = match (&previous, saved) {
                (None, Some(c)) if c < start => start - c,
                _ => 0,
            };
            if lost_while_down > 0 {
                tracing::warn!(trigger = %key, lost = lost_while_down, "retention removed events before this trigger read them");
                metrics::counter!("pilotlight_trigger_events_lost_to_retention_total", "trigger" => key.clone()).increment(lost_while_down);
            }
            let slot = match &previous {
                Some(p) => p.slot,
                None => free_slot(&mut state.slots, &key),
            };
            let generation = previous.as_ref().map_or(1, |p| p.generation + 1);
            // Events matched against an older index are tested by the
            // subscription itself.
            let since = self.shared.index_changed(&mut state);
            let wake = Arc::new(Notify::new());
            let sub = SubscriptionState {
                slot,
                filter: spec.filter.clone(),
                since_index_version: since,
                generation,
                pending: BTreeSet::new(),
                read_up_to: start,
                lost_to_retention: previous
                    .as_ref()
                    .map_or(lost_while_down, |p| p.lost_to_retention),
                parked: false,
                wake: wake.clone(),
            };
            // The replaced reader wakes, finds itself stale and ends.
            if let Some(previous) = &previous {
                previous.wake.notify_one();
            }
            state.subscriptions.insert(key.clone(), sub);
            state.cursors_dirty = true;
            (generation, since, start, wake)
        };
        Ok(Box::new(LocalSubscription::new(
            self.shared.clone(),
            key,
            generation,
            spec.filter,
            since,
            start,
            wake,
        )))
    }

    async fn unsubscribe(&self, trigger: &ObjectKey) -> Result<(), BackendError> {
        let key = trigger.to_string();
        {
            let mut state = self.shared.lock();
            state.saved_cursors.remove(&key);
            let Some(sub) = state.subscriptions.remove(&key) else {
                return Ok(());
            };
            sub.wake.notify_one();
            if let Some(slot) = state.slots.get_mut(sub.slot) {
                *slot = None;
            }
            state.cursors_dirty = true;
            self.shared.index_changed(&mut state);
        }
        Ok(())
    }

    async fn rewind(
        &self,
        subscription: &ObjectKey,
        to: RewindTo,
        dry_run: bool,
    ) -> Result<Rewound, RewindError> {
        let key = subscription.to_string();
        let by_time = match to {
            RewindTo::Time(ms) if S::DURABLE => {
                let store = self.shared.store.clone();
                let found = tokio::task::spawn_blocking(move || store.offset_at(ms))
                    .await
                    .map_err(|e| RewindError::Failed(format!("searching the log by time: {e}")))?
                    .map_err(|e| RewindError::Failed(format!("searching the log by time: {e}")))?;
                Some(found)
            }
            RewindTo::Time(ms) => Some(self.shared.tail_offset_at(ms)),
            RewindTo::Offset(_) => None,
        };
        let mut state = self.shared.lock();
        let head = state.head();
        // What can be read again: the log keeps what retention keeps; memory
        // only its tail (events every trigger was done with are dropped).
        let oldest = if S::DURABLE {
            self.shared.store.bounds().0.min(head)
        } else {
            state.tail_start
        };
        let Some(sub) = state.subscriptions.get_mut(&key) else {
            return Err(RewindError::NotSubscribed(format!(
                "{key} is not subscribed to its broker (is its broker ready?)"
            )));
        };
        let cursor = sub.cursor(head);
        let mut note = None;
        let target = match (to, by_time) {
            (RewindTo::Offset(offset), _) => {
                if offset > head {
                    return Err(RewindError::OutOfRange(format!(
                        "offset {offset} is beyond the log: its next offset is {head}"
                    )));
                }
                if offset < oldest {
                    return Err(RewindError::OutOfRange(if S::DURABLE {
                        format!(
                            "offset {offset} is gone: retention removed it; the oldest offset kept is {oldest}"
                        )
                    } else {
                        format!(
                            "offset {offset} is gone: a memory broker keeps an event only until every trigger is done with it; the oldest it holds is {oldest}"
                        )
                    }));
                }
                if offset > cursor {
                    return Err(RewindError::OutOfRange(format!(
                        "offset {offset} is after {key}'s position {cursor}: replay delivers events again, it does not skip any"
                    )));
                }
                offset
            }
            (RewindTo::Time(_), found) => {
                let found = found.unwrap_or(head);
                if !S::DURABLE && oldest > 0 && found <= oldest {
                    note = Some(format!(
                        "a memory broker keeps an event only until every trigger is done with it: it holds offsets {oldest} to {head}, so earlier events cannot come again"
                    ));
                }
                found.clamp(oldest, cursor.max(oldest))
            }
        };
        let target = target.min(cursor);
        if !dry_run {
            // The subscription (whose dispatcher the caller stopped) is
            // replaced: its reader and acks are stale, and the next
            // subscribe starts at `target`.
            sub.generation += 1;
            sub.pending.clear();
            sub.read_up_to = target;
            sub.parked = false;
            sub.wake.notify_one();
            state.cursors_dirty = true;
            drop(state);
            self.shared.head.send_modify(|_| {});
            tracing::info!(trigger = %key, from = cursor, to = target, "replay: moved the trigger's position back");
        }
        Ok(Rewound {
            events: cursor - target,
            positions: vec![LanePosition {
                lane: 0,
                from: cursor,
                to: target,
            }],
            note,
        })
    }

    fn lag(&self, trigger: &ObjectKey) -> Option<SubscriptionLag> {
        let state = self.shared.lock();
        let sub = state.subscriptions.get(&trigger.to_string())?;
        Some(SubscriptionLag {
            backlog: state.head().saturating_sub(sub.cursor(state.head())),
            lost_to_retention: sub.lost_to_retention,
        })
    }

    async fn shutdown(&self) {
        if let Some(writer) = &self.writer {
            writer.stop().await;
        }
        // Wait for a flush in progress, so no save runs after ours.
        self.shared.stopping.send_replace(true);
        let background = self
            .background
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(background) = background {
            let _ = background.await;
        }
        {
            let mut state = self.shared.lock();
            state
                .subscriptions
                .values_mut()
                .for_each(|s| s.generation += 1);
            state.cursors_dirty = true;
            state.wake_all();
        }
        // Closing the head channel's receivers wakes waiting subscriptions.
        self.shared.head.send_modify(|_| {});
        let shared = self.shared.clone();
        let saved = tokio::task::spawn_blocking(move || shared.save_cursors()).await;
        if let Ok(Err(e)) = saved {
            tracing::error!(error = %e, "saving trigger cursors at shutdown failed");
        }
    }

    async fn tail(&self, from: TailStart) -> Result<Box<dyn TailStream>, TailError> {
        Ok(Box::new(
            tail::LocalTail::open(self.shared.clone(), from).await?,
        ))
    }

    async fn destroy(&self) -> Result<(), BackendError> {
        self.shutdown().await;
        let store = self.shared.store.clone();
        tokio::task::spawn_blocking(move || store.destroy())
            .await
            .map_err(|e| BackendError(e.to_string()))?
            .map_err(|e| BackendError(e.to_string()))
    }
}

impl<S: Store> Drop for LocalBackend<S> {
    fn drop(&mut self) {
        self.shared.stopping.send_replace(true);
        // Tails wait on the head: wake them, so they end and let go of the store.
        self.shared.head.send_modify(|_| {});
    }
}

fn free_slot(slots: &mut Vec<Option<String>>, key: &str) -> usize {
    match slots.iter().position(Option::is_none) {
        Some(i) => {
            slots[i] = Some(key.to_owned());
            i
        }
        None => {
            slots.push(Some(key.to_owned()));
            slots.len() - 1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventing::backend::{Backend, Delivery};

    /// A durable store whose `sync` waits until released, to fill the queue.
    struct GatedStore {
        next: Mutex<u64>,
        gate: Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl Store for GatedStore {
        const DURABLE: bool = true;
        fn append(&self, events: &[Arc<Event>]) -> Result<u64, StoreError> {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let first = *next;
            *next += events.len() as u64;
            Ok(first)
        }
        fn sync(&self) -> Result<(), StoreError> {
            let _ = self.gate.lock().unwrap_or_else(|e| e.into_inner()).recv();
            Ok(())
        }
        fn read(&self, _: u64, _: usize) -> Result<Vec<(u64, Event)>, StoreError> {
            Ok(Vec::new())
        }
        fn bounds(&self) -> (u64, u64) {
            (0, *self.next.lock().unwrap_or_else(|e| e.into_inner()))
        }
        fn offset_at(&self, _: i64) -> Result<u64, StoreError> {
            Ok(self.bounds().1)
        }
        fn enforce_retention(&self) -> Result<(), StoreError> {
            Ok(())
        }
        fn load_cursors(&self) -> Result<HashMap<String, u64>, StoreError> {
            Ok(HashMap::new())
        }
        fn save_cursors(&self, _: &HashMap<String, u64>) -> Result<(), StoreError> {
            Ok(())
        }
        fn destroy(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    fn event(id: &str) -> Event {
        crate::cloudevent::test_event(id, "t", None)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_full_write_queue_refuses_appends_instead_of_waiting() {
        let (release, gate) = std::sync::mpsc::channel();
        let store = GatedStore {
            next: Mutex::new(0),
            gate: Mutex::new(gate),
        };
        let config = LocalConfig {
            max_pending_appends: 1,
            ..LocalConfig::default()
        };
        let backend = Arc::new(LocalBackend::start(store, config).expect("start"));
        // The first append is taken by the writer and blocks in sync; the
        // second waits in the queue; the third finds the queue full.
        let first = tokio::spawn({
            let b = backend.clone();
            async move { b.append(vec![event("1")]).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let second = tokio::spawn({
            let b = backend.clone();
            async move { b.append(vec![event("2")]).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let third = backend.append(vec![event("3")]).await;
        assert!(
            matches!(third, Err(AppendError::Overloaded(1))),
            "{third:?}"
        );
        for _ in 0..2 {
            release.send(()).expect("release");
        }
        assert!(first.await.expect("join").is_ok());
        assert!(second.await.expect("join").is_ok());
        drop(release);
        backend.shutdown().await;
    }

    fn typed(id: &str, ty: &str) -> Event {
        crate::cloudevent::test_event(id, ty, None)
    }

    fn on_type(name: &str, ty: &str) -> SubscriptionSpec {
        SubscriptionSpec {
            trigger: ObjectKey::new("default", name),
            filter: Arc::new(Filter::Exact {
                attribute: "type".into(),
                value: ty.into(),
            }),
            max_in_flight: 16,
        }
    }

    fn memory_backend() -> LocalBackend<crate::eventing::backend::memory::MemoryStore> {
        let config = LocalConfig {
            flush_interval: Duration::from_millis(10),
            ..LocalConfig::default()
        };
        LocalBackend::start(crate::eventing::backend::memory::MemoryStore, config).expect("start")
    }

    async fn next_within(sub: &mut Box<dyn Subscription>, wait: Duration) -> Option<Delivery> {
        tokio::time::timeout(wait, sub.next()).await.ok().flatten()
    }

    /// A trigger none of whose events come is parked at the head: it holds
    /// nothing back (memory evicts what the others are done with, its lag
    /// is 0), is not woken, and still gets the one event that matches it,
    /// at its offset, when it comes.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_parked_trigger_holds_nothing_back_and_wakes_for_its_event() {
        let backend = memory_backend();
        let mut busy = backend.subscribe(on_type("busy", "a")).await.expect("a");
        let mut idle = backend.subscribe(on_type("idle", "b")).await.expect("b");
        assert!(
            next_within(&mut idle, Duration::from_millis(50))
                .await
                .is_none()
        );
        let others: Vec<Event> = (0..300).map(|n| typed(&format!("a{n}"), "a")).collect();
        backend.append(others).await.expect("append");
        for _ in 0..300 {
            let delivery = next_within(&mut busy, Duration::from_secs(5)).await;
            delivery.expect("the busy trigger's event").ack().await;
        }
        let idle_key = ObjectKey::new("default", "idle");
        let lag = backend.lag(&idle_key).expect("subscribed");
        assert_eq!(lag.backlog, 0, "a parked trigger is at the head");
        {
            let state = backend.shared.lock();
            assert!(state.subscriptions[&idle_key.to_string()].parked);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            backend.shared.lock().tail.len(),
            0,
            "memory keeps nothing for a parked trigger"
        );
        backend
            .append(vec![typed("a-last", "a"), typed("b0", "b")])
            .await
            .expect("append");
        let delivery = next_within(&mut idle, Duration::from_secs(5)).await;
        let delivery = delivery.expect("the idle trigger's event");
        assert_eq!(delivery.event.id(), "b0");
        delivery.ack().await;
        assert!(
            next_within(&mut idle, Duration::from_millis(50))
                .await
                .is_none()
        );
        assert_eq!(backend.lag(&idle_key).expect("subscribed").backlog, 0);
        backend.shutdown().await;
    }

    /// A parked reader ends when its trigger is unsubscribed, replaced or
    /// the backend shuts down: each wakes it.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_parked_reader_ends_when_it_is_replaced_or_stopped() {
        let backend = memory_backend();
        let mut first = backend.subscribe(on_type("t", "a")).await.expect("first");
        assert!(
            next_within(&mut first, Duration::from_millis(20))
                .await
                .is_none()
        );
        let mut second = backend.subscribe(on_type("t", "a")).await.expect("second");
        let ended = tokio::time::timeout(Duration::from_secs(5), first.next()).await;
        assert!(matches!(ended, Ok(None)), "the replaced reader ends");
        assert!(
            next_within(&mut second, Duration::from_millis(20))
                .await
                .is_none()
        );
        backend.shutdown().await;
        let ended = tokio::time::timeout(Duration::from_secs(5), second.next()).await;
        assert!(matches!(ended, Ok(None)), "shutdown ends the reader");
    }

    /// Subscribing does not rebuild the ingress index: the next append
    /// does, once for all the triggers added since, and every trigger gets
    /// its events from then on (a trigger added later too).
    #[tokio::test(flavor = "multi_thread")]
    async fn the_index_is_rebuilt_once_by_the_next_append() {
        let backend = memory_backend();
        let mut subs = Vec::new();
        for n in 0..50 {
            let sub = backend
                .subscribe(on_type(&format!("t{n}"), &format!("t.{n}")))
                .await;
            subs.push(sub.expect("subscribe"));
        }
        let built = |backend: &LocalBackend<_>| {
            let index: &RwLock<Arc<FilterIndex>> = &backend.shared.index;
            index.read().expect("index").version()
        };
        assert_eq!(built(&backend), 0, "subscribing does not build the index");
        backend
            .append(vec![typed("e7", "t.7")])
            .await
            .expect("append");
        assert_eq!(built(&backend), 50, "one build covers the 50 subscriptions");
        let delivery = next_within(&mut subs[7], Duration::from_secs(5)).await;
        assert_eq!(delivery.expect("t7's event").event.id(), "e7");
        assert!(
            next_within(&mut subs[8], Duration::from_millis(20))
                .await
                .is_none()
        );
        let mut late = backend
            .subscribe(on_type("late", "t.7"))
            .await
            .expect("late");
        backend
            .append(vec![typed("e7b", "t.7")])
            .await
            .expect("append");
        assert_eq!(built(&backend), 51);
        let delivery = next_within(&mut late, Duration::from_secs(5)).await;
        assert_eq!(
            delivery.expect("the late trigger's event").event.id(),
            "e7b"
        );
        backend.shutdown().await;
    }
}
