//! Brokers: the handle of a running broker, the registry the ingress looks
//! brokers up in, and the HTTP ingress.

pub(crate) mod ingress;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use chrono::{SecondsFormat, Utc};
use metrics::Counter;

use crate::api::ObjectKey;
use crate::cloudevent::Event;
use crate::eventing::backend::{AppendError, Backend};
use crate::telemetry::trace::Hop;
use opentelemetry::trace::SpanKind;

/// A running broker: its backend, its limit and its ingress counters.
///
/// [`BrokerHandle::publish`] is the one way into a broker: the ingress and
/// replies both come through it, so both meet the same limit and the same
/// answers.
pub(crate) struct BrokerHandle {
    pub key: ObjectKey,
    pub backend: Arc<dyn Backend>,
    /// The largest event stored, data and attributes (`--max-event-size`).
    max_event_bytes: usize,
    received: Counter,
    accepted: Counter,
    /// Ingress requests being read, checked or stored right now.
    requests: AtomicUsize,
}

/// One ingress request counted against its broker's limit, until dropped.
pub(crate) struct RequestSlot<'a>(&'a AtomicUsize);

impl Drop for RequestSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl BrokerHandle {
    pub(crate) fn new(key: ObjectKey, backend: Arc<dyn Backend>, max_event_bytes: usize) -> Self {
        let label = key.to_string();
        BrokerHandle {
            received: metrics::counter!("pilotlight_broker_events_received_total", "broker" => label.clone()),
            accepted: metrics::counter!("pilotlight_broker_events_accepted_total", "broker" => label),
            key,
            backend,
            max_event_bytes,
            requests: AtomicUsize::new(0),
        }
    }

    /// A slot for one more ingress request, or None when `limit` are in
    /// flight already: the body of each is held in memory until it is
    /// stored, so the limit bounds what one broker's ingress holds.
    pub(crate) fn request_slot(&self, limit: usize) -> Option<RequestSlot<'_>> {
        let before = self.requests.fetch_add(1, Ordering::Relaxed);
        let slot = RequestSlot(&self.requests);
        (before < limit).then_some(slot)
    }

    /// The largest event this broker takes, and so the largest request body
    /// its ingress reads.
    pub(crate) fn max_event_bytes(&self) -> usize {
        self.max_event_bytes
    }

    /// Stamps `knativearrivaltime` and stores the events, all or none; used
    /// by the ingress and by replies re-entering the broker. An event over
    /// the limit refuses the whole batch, before anything is stored.
    ///
    /// `hop` is the span that brought them (the ingress, or the delivery
    /// that replied): an event without a trace context gets this one, so
    /// its deliveries continue this trace.
    pub(crate) async fn publish(
        &self,
        mut events: Vec<Event>,
        hop: &Hop,
    ) -> Result<(), AppendError> {
        let count = events.len() as u64;
        self.received.increment(count);
        if let Err(e) = self.check_sizes(&events) {
            reject_metric(&self.key.to_string(), e.reason());
            return Err(e);
        }
        let now = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
        for event in &mut events {
            event.set_attribute("knativearrivaltime", now.as_str());
            hop.stamp_if_absent(event);
            // The backends keep recent events in memory (the log's and the
            // memory broker's tail): each must hold its own bytes only.
            event.own_data();
        }
        let store = hop.child("broker.store", SpanKind::Internal, Vec::new);
        let stored = self.backend.append(events).await;
        if let Err(e) = &stored {
            store.fail(|| e.to_string());
        }
        drop(store);
        match &stored {
            Ok(()) => self.accepted.increment(count),
            Err(e) => reject_metric(&self.key.to_string(), e.reason()),
        }
        stored
    }

    fn check_sizes(&self, events: &[Event]) -> Result<(), AppendError> {
        match events.iter().find(|e| e.size() > self.max_event_bytes) {
            Some(event) => Err(AppendError::TooLarge(format!(
                "event {} is {} bytes (data and attributes), over the limit of {} bytes of broker {} (set with --max-event-size)",
                event.id(),
                event.size(),
                self.max_event_bytes,
                self.key
            ))),
            None => Ok(()),
        }
    }
}

/// Counts an event the broker turned away, by reason.
pub(crate) fn reject_metric(broker: &str, reason: &'static str) {
    metrics::counter!("pilotlight_broker_events_rejected_total", "broker" => broker.to_owned(), "reason" => reason)
        .increment(1);
}

/// A broker as the ingress sees it.
#[derive(Clone)]
pub(crate) enum BrokerEntry {
    Ready(Arc<BrokerHandle>),
    /// Declared but not serving (backend starting or failed): 503.
    NotReady {
        reason: String,
    },
}

/// The brokers the ingress serves, by namespace then name (looked up without
/// allocating on every request).
#[derive(Default)]
pub(crate) struct BrokerRegistry {
    brokers: RwLock<HashMap<String, HashMap<String, BrokerEntry>>>,
}

impl BrokerRegistry {
    pub(crate) fn get(&self, namespace: &str, name: &str) -> Option<BrokerEntry> {
        let brokers = self.brokers.read().unwrap_or_else(|e| e.into_inner());
        brokers.get(namespace)?.get(name).cloned()
    }

    pub(crate) fn insert(&self, key: &ObjectKey, entry: BrokerEntry) {
        let mut brokers = self.brokers.write().unwrap_or_else(|e| e.into_inner());
        brokers
            .entry(key.namespace.clone())
            .or_default()
            .insert(key.name.clone(), entry);
    }

    pub(crate) fn remove(&self, key: &ObjectKey) -> Option<BrokerEntry> {
        let mut brokers = self.brokers.write().unwrap_or_else(|e| e.into_inner());
        let namespace = brokers.get_mut(&key.namespace)?;
        let removed = namespace.remove(&key.name);
        if namespace.is_empty() {
            brokers.remove(&key.namespace);
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use bytes::Bytes;

    use super::*;
    use crate::cloudevent::test_event;
    use crate::eventing::backend::{BackendError, Subscription, SubscriptionLag, SubscriptionSpec};

    /// Keeps what it is given, so a test sees what reached the backend.
    #[derive(Default)]
    struct Recording(Mutex<Vec<Event>>);

    #[async_trait]
    impl Backend for Recording {
        async fn append(&self, events: Vec<Event>) -> Result<(), AppendError> {
            self.0.lock().unwrap().extend(events);
            Ok(())
        }
        async fn subscribe(
            &self,
            _: SubscriptionSpec,
        ) -> Result<Box<dyn Subscription>, BackendError> {
            Err(BackendError("not in this test".into()))
        }
        async fn unsubscribe(&self, _: &ObjectKey) -> Result<(), BackendError> {
            Ok(())
        }
        async fn rewind(
            &self,
            _: &ObjectKey,
            _: crate::eventing::backend::RewindTo,
            _: bool,
        ) -> Result<crate::eventing::backend::Rewound, crate::eventing::backend::RewindError>
        {
            Err(crate::eventing::backend::RewindError::Unsupported(
                "not in this test".into(),
            ))
        }
        fn lag(&self, _: &ObjectKey) -> Option<SubscriptionLag> {
            None
        }
        async fn shutdown(&self) {}
        async fn destroy(&self) -> Result<(), BackendError> {
            Ok(())
        }
        async fn tail(
            &self,
            _: crate::eventing::backend::TailStart,
        ) -> Result<
            Box<dyn crate::eventing::backend::TailStream>,
            crate::eventing::backend::TailError,
        > {
            Err(crate::eventing::backend::TailError::Unsupported(
                "not in this test".into(),
            ))
        }
    }

    #[tokio::test]
    async fn an_event_over_the_limit_refuses_the_batch_before_anything_is_stored() {
        let backend = Arc::new(Recording::default());
        let broker = BrokerHandle::new(ObjectKey::new("shop", "orders"), backend.clone(), 200);
        let small = test_event("small", "t", Some(Bytes::from_static(b"{}")));
        let big = test_event("big", "t", Some(Bytes::from(vec![b'x'; 300])));
        let refused = broker
            .publish(vec![small.clone(), big], &Hop::default())
            .await
            .unwrap_err();
        assert!(refused.is_permanent());
        let message = refused.to_string();
        for part in [
            "event big",
            "limit of 200 bytes",
            "shop/orders",
            "--max-event-size",
        ] {
            assert!(message.contains(part), "{part}: {message}");
        }
        assert!(backend.0.lock().unwrap().is_empty(), "all or none");
        broker.publish(vec![small], &Hop::default()).await.unwrap();
        let stored = backend.0.lock().unwrap();
        assert_eq!(stored.len(), 1);
        assert!(stored[0].attribute("knativearrivaltime").is_some());
    }
}
