//! How the last deliveries went, event by event: the console shows, for an
//! event it tails, what each trigger's delivery of it answered and how it
//! ended. Bounded (the oldest records go first), so a busy broker costs a
//! fixed amount of memory; an idle one costs nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use serde::Serialize;

use crate::api::ObjectKey;
use crate::cloudevent::Event;

/// Deliveries remembered across every trigger and subscription.
const CAPACITY: usize = 8192;

/// One event in one store (a broker, or a channel's): CloudEvents identify
/// an event by `source` and `id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct EventRef {
    store: ObjectKey,
    source: String,
    id: String,
}

impl EventRef {
    fn of(store: &ObjectKey, event: &Event) -> Self {
        EventRef {
            store: store.clone(),
            source: event.source().to_owned(),
            id: event.id().to_owned(),
        }
    }
}

/// One delivery of one event by one trigger (or subscription), to its end.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeliveryRecord {
    /// `namespace/name` of the trigger or subscription.
    pub trigger: String,
    /// When it ended, RFC 3339.
    pub at: String,
    /// The subscriber's answers, one per try: `None` when none came
    /// (refused connection, timeout).
    pub attempts: Vec<AttemptRecord>,
    pub outcome: DeliveryOutcome,
}

/// What one trigger (or subscription) did with one event: whether its
/// filter lets the event through, and its deliveries of it so far.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct EventDeliveries {
    pub trigger: String,
    pub matched: bool,
    pub deliveries: Vec<DeliveryRecord>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct AttemptRecord {
    pub code: Option<u16>,
}

/// How a delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum DeliveryOutcome {
    /// The subscriber took it (any reply was dropped, or there was none).
    Delivered,
    /// The subscriber took it and its reply went on (into the broker, or
    /// to a subscription's `reply`).
    Replied,
    /// The subscriber (or the reply's destination) failed and the
    /// dead-letter sink took it.
    DeadLettered,
    /// It failed and there was no dead-letter sink: dropped, as Knative does.
    Dropped,
}

impl DeliveryOutcome {
    /// As the journal's JSON names it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::Replied => "replied",
            DeliveryOutcome::DeadLettered => "deadLettered",
            DeliveryOutcome::Dropped => "dropped",
        }
    }
}

#[derive(Default)]
struct Entries {
    by_event: HashMap<EventRef, Vec<DeliveryRecord>>,
    /// One entry per record, oldest first, to know what to forget.
    order: VecDeque<EventRef>,
}

/// The last [`CAPACITY`] deliveries.
#[derive(Default)]
pub(crate) struct DeliveryJournal {
    entries: Mutex<Entries>,
}

impl DeliveryJournal {
    pub(crate) fn record(&self, store: &ObjectKey, event: &Event, record: DeliveryRecord) {
        let key = EventRef::of(store, event);
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .by_event
            .entry(key.clone())
            .or_default()
            .push(record);
        entries.order.push_back(key);
        if entries.order.len() > CAPACITY
            && let Some(oldest) = entries.order.pop_front()
            && let Some(records) = entries.by_event.get_mut(&oldest)
        {
            records.remove(0);
            if records.is_empty() {
                entries.by_event.remove(&oldest);
            }
        }
    }

    /// The deliveries of the event `source`/`id` stored in `store`, oldest
    /// first.
    pub(crate) fn deliveries(&self, store: &ObjectKey, event: &Event) -> Vec<DeliveryRecord> {
        let key = EventRef::of(store, event);
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.by_event.get(&key).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_names_are_the_journal_json_names() {
        use DeliveryOutcome::*;
        for outcome in [Delivered, Replied, DeadLettered, Dropped] {
            let json = serde_json::to_value(outcome).expect("serializes");
            assert_eq!(json, outcome.as_str());
        }
    }

    fn event(id: &str) -> Event {
        let attributes = [
            ("specversion", "1.0"),
            ("id", id),
            ("source", "/test"),
            ("type", "com.example.test"),
        ];
        let attributes = attributes.map(|(n, v)| (n.to_owned(), v.to_owned()));
        Event::new(attributes.into(), None).expect("a valid event")
    }

    fn record(trigger: &str) -> DeliveryRecord {
        DeliveryRecord {
            trigger: trigger.into(),
            at: "2026-12-06T00:00:00Z".into(),
            attempts: vec![AttemptRecord { code: Some(200) }],
            outcome: DeliveryOutcome::Delivered,
        }
    }

    #[test]
    fn keeps_each_events_deliveries_per_store() {
        let journal = DeliveryJournal::default();
        let broker = ObjectKey::new("default", "b");
        let other = ObjectKey::new("default", "c");
        journal.record(&broker, &event("1"), record("default/t1"));
        journal.record(&broker, &event("1"), record("default/t2"));
        journal.record(&other, &event("1"), record("default/t3"));
        let kept = journal.deliveries(&broker, &event("1"));
        let triggers: Vec<_> = kept.iter().map(|r| r.trigger.as_str()).collect();
        assert_eq!(triggers, ["default/t1", "default/t2"]);
        assert!(journal.deliveries(&broker, &event("2")).is_empty());
    }

    #[test]
    fn forgets_the_oldest_beyond_its_capacity() {
        let journal = DeliveryJournal::default();
        let broker = ObjectKey::new("default", "b");
        for i in 0..=CAPACITY {
            journal.record(&broker, &event(&i.to_string()), record("default/t"));
        }
        assert!(journal.deliveries(&broker, &event("0")).is_empty());
        assert_eq!(journal.deliveries(&broker, &event("1")).len(), 1);
        let entries = journal.entries.lock().unwrap();
        assert_eq!(entries.order.len(), CAPACITY);
        assert_eq!(entries.by_event.len(), CAPACITY);
    }
}
