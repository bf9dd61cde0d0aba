//! A trigger's reader over a local backend: the tail when it is caught up, the
//! store when it has fallen behind.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{Shared, State, Store, SubscriptionState};
use crate::api::filter::Filter;
use crate::cloudevent::Event;
use crate::eventing::backend::{Acknowledge, Delivery, Subscription};

/// Events taken from the tail or the store per lock or read.
const READ_BATCH: usize = 256;

pub(super) struct LocalSubscription<S: Store> {
    shared: Arc<Shared<S>>,
    key: Arc<str>,
    generation: u64,
    filter: Arc<Filter>,
    since_index_version: u64,
    next_offset: u64,
    /// Notified when an event matched this subscription, or when it was
    /// replaced or stopped; see [`SubscriptionState::unpark`].
    wake: Arc<Notify>,
    buffer: VecDeque<Delivery>,
}

/// What the reader does next.
enum Step {
    /// Events wait from `next_offset` on.
    Read,
    /// Everything was read: wait for a wake-up.
    Park,
}

/// The subscription was replaced or the backend shut down.
struct Stale;

impl<S: Store> LocalSubscription<S> {
    pub(super) fn new(
        shared: Arc<Shared<S>>,
        key: String,
        generation: u64,
        filter: Arc<Filter>,
        since_index_version: u64,
        start: u64,
        wake: Arc<Notify>,
    ) -> Self {
        LocalSubscription {
            shared,
            key: key.into(),
            generation,
            filter,
            since_index_version,
            next_offset: start,
            wake,
            buffer: VecDeque::new(),
        }
    }

    fn own_state<'a>(&self, state: &'a mut State) -> Result<&'a mut SubscriptionState, Stale> {
        state
            .subscriptions
            .get_mut(&*self.key)
            .filter(|s| s.generation == self.generation)
            .ok_or(Stale)
    }

    fn delivery(&self, offset: u64, event: Arc<Event>) -> Delivery {
        let ack = LocalAck {
            shared: self.shared.clone(),
            key: self.key.clone(),
            generation: self.generation,
            offset,
        };
        Delivery::new(event, 0, Box::new(ack))
    }

    /// Takes the next batch from the tail. `Ok(false)`: the subscription is
    /// behind the tail and must read the store.
    fn read_tail(&mut self) -> Result<bool, Stale> {
        let shared = self.shared.clone();
        let mut guard = shared.lock();
        let state = &mut *guard;
        if self.next_offset < state.tail_start {
            return Ok(false);
        }
        let end = state.head().min(self.next_offset + READ_BATCH as u64);
        let slot = self.own_state(state)?.slot;
        let mut taken = Vec::new();
        for offset in self.next_offset..end {
            let entry = &state.tail[(offset - state.tail_start) as usize];
            let matched = if entry.matches.index_version >= self.since_index_version {
                entry.matches.contains(slot)
            } else {
                self.filter.matches(&entry.event)
            };
            if matched {
                taken.push((offset, entry.event.clone()));
            }
        }
        let sub = self.own_state(state)?;
        sub.pending.extend(taken.iter().map(|(o, _)| *o));
        sub.read_up_to = end;
        state.cursors_dirty = true;
        drop(guard);
        self.next_offset = end;
        for (offset, event) in taken {
            let delivery = self.delivery(offset, event);
            self.buffer.push_back(delivery);
        }
        Ok(true)
    }

    /// Reads the next batch from the store (the trigger is behind the tail).
    async fn read_store(&mut self) -> Result<(), Stale> {
        let from = self.next_offset;
        let records = if S::DURABLE {
            let store = self.shared.store.clone();
            match tokio::task::spawn_blocking(move || store.read(from, READ_BATCH)).await {
                Ok(Ok(records)) => records,
                Ok(Err(e)) => return self.retry_later(&e.to_string()).await,
                Err(e) => return self.retry_later(&e.to_string()).await,
            }
        } else {
            Vec::new()
        };
        let mut guard = self.shared.lock();
        let state = &mut *guard;
        // Where reading resumes when the store had nothing at `from`: the oldest
        // kept offset (durable), or the tail (memory keeps only the tail).
        let resume_at = if S::DURABLE {
            self.shared.store.bounds().0.min(state.head())
        } else {
            state.tail_start
        };
        let mut expected = from;
        let mut lost = 0;
        let mut taken = Vec::new();
        for (offset, event) in records {
            lost += offset.saturating_sub(expected);
            expected = offset + 1;
            if self.filter.matches(&event) {
                taken.push((offset, Arc::new(event)));
            }
        }
        if expected == from && resume_at > from {
            lost += resume_at - from;
            expected = resume_at;
        }
        let sub = self.own_state(state)?;
        sub.pending.extend(taken.iter().map(|(o, _)| *o));
        sub.read_up_to = expected;
        sub.lost_to_retention += lost;
        state.cursors_dirty = true;
        drop(guard);
        if lost > 0 {
            tracing::warn!(trigger = %self.key, lost, "trigger fell behind retention; events were removed before it read them");
            metrics::counter!("pilotlight_trigger_events_lost_to_retention_total", "trigger" => self.key.to_string()).increment(lost);
        }
        self.next_offset = expected;
        for (offset, event) in taken {
            let delivery = self.delivery(offset, event);
            self.buffer.push_back(delivery);
        }
        Ok(())
    }

    async fn retry_later(&self, error: &str) -> Result<(), Stale> {
        tracing::error!(trigger = %self.key, error, "reading the log failed; retrying in 1s");
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(())
    }

    /// Reads on or parks, under the lock so no wake-up falls in between: a
    /// parked subscription is woken by the next event that matches it. A
    /// subscription that was parked skips what was published meanwhile (none
    /// of it matched), up to where the event that woke it was published.
    fn read_or_park(&mut self) -> Result<Step, Stale> {
        let shared = self.shared.clone();
        let mut guard = shared.lock();
        let state = &mut *guard;
        let head = state.head();
        let sub = self.own_state(state)?;
        if sub.parked {
            sub.read_up_to = sub.read_up_to.max(head);
        }
        self.next_offset = self.next_offset.max(sub.read_up_to);
        if self.next_offset >= head {
            sub.parked = true;
            return Ok(Step::Park);
        }
        sub.parked = false;
        Ok(Step::Read)
    }
}

#[async_trait]
impl<S: Store> Subscription for LocalSubscription<S> {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            if let Some(delivery) = self.buffer.pop_front() {
                return Some(delivery);
            }
            match self.read_or_park() {
                Ok(Step::Read) => {}
                Ok(Step::Park) => {
                    self.wake.notified().await;
                    continue;
                }
                Err(Stale) => return None,
            }
            let read = match self.read_tail() {
                Ok(true) => Ok(()),
                Ok(false) => self.read_store().await,
                Err(stale) => Err(stale),
            };
            if read.is_err() {
                return None;
            }
        }
    }
}

struct LocalAck<S: Store> {
    shared: Arc<Shared<S>>,
    key: Arc<str>,
    generation: u64,
    offset: u64,
}

#[async_trait]
impl<S: Store> Acknowledge for LocalAck<S> {
    async fn ack(self: Box<Self>) {
        let mut state = self.shared.lock();
        let state = &mut *state;
        if let Some(sub) = state
            .subscriptions
            .get_mut(&*self.key)
            .filter(|s| s.generation == self.generation)
        {
            sub.pending.remove(&self.offset);
            state.cursors_dirty = true;
        }
    }
}
