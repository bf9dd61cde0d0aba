//! A trigger's dispatcher: takes events from the trigger's subscription and
//! delivers each to the subscriber, with the trigger's delivery policy. A
//! channel's Subscription runs on the same dispatcher: its replies go to
//! its `reply` rather than back into the store, and without a subscriber
//! every event goes straight to `reply`.
//!
//! - Unordered (default): up to `max_in_flight` deliveries at once.
//! - Ordered: one delivery at a time per lane (the whole log for the embedded
//!   backends, a partition for Kafka), in order.
//!
//! An event is acknowledged to the backend only when the subscriber accepted it
//! (and its reply, if any, is stored in the broker), or when it was accepted by
//! the dead-letter sink, or when delivery failed with no dead-letter sink
//! configured (Knative drops it then; pilotlight logs and counts it).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::StatusCode;
use metrics::{Counter, Histogram};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::api::ObjectKey;
use crate::api::filter::Filter;
use crate::auth::{Gate, SenderIdentity};
use crate::backoff::Backoff;
use crate::cloudevent::Event;
use crate::eventing::backend::{Delivery, Subscription};
use crate::eventing::broker::BrokerHandle;
use crate::eventing::delivery::{
    DeliveryPolicy, EventSender, Failure, Outcome, Target, dead_letter_event, deliver_with_retries,
};
use crate::eventing::health::{Health, HealthCell};
use crate::telemetry::trace::{Hop, Parent};
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

use super::journal::{AttemptRecord, DeliveryJournal, DeliveryOutcome, DeliveryRecord};

/// Deliveries queued per lane of an ordered trigger before reading pauses.
const LANE_QUEUE: usize = 64;
/// The reason of a trigger's Ready condition while its dead-letter sink
/// does not take dead letters (they stay queued and are tried again).
pub(crate) const DEAD_LETTER_SINK_UNREACHABLE: &str = "DeadLetterSinkUnreachable";
/// Longest pause between tries when the dead-letter sink itself fails.
const DEAD_LETTER_PAUSE_MAX: Duration = Duration::from_secs(60);

/// Everything a dispatcher needs, resolved by the control plane. Two plans
/// that compare equal run the same way, so an unchanged trigger keeps running
/// across a reload.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TriggerPlan {
    pub key: ObjectKey,
    pub broker: ObjectKey,
    /// Where replies go: the broker's ingress, named in a dead letter when
    /// the broker refuses one.
    pub broker_url: String,
    pub filter: Arc<Filter>,
    /// None: a Subscription without one, whose events go to `reply` as
    /// they are.
    pub subscriber: Option<Target>,
    pub reply: ReplyTo,
    pub delivery: DeliveryPolicy,
    pub ordered: bool,
    pub max_in_flight: usize,
    /// With authentication on: who it sends as, and the audiences of its
    /// destinations (its requests carry tokens for them; its replies into
    /// the broker are authorized as this subject).
    pub identity: Option<Arc<SenderIdentity>>,
}

/// Where a subscriber's replies go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReplyTo {
    /// Into the store the event came from (a Trigger's broker).
    Store,
    /// To a destination (a Subscription's `reply`), with the delivery policy.
    Destination(Target),
    /// Nowhere: a Subscription without `reply` drops them, as Knative does.
    Drop,
}

/// A running dispatcher. Dropping it aborts the dispatcher at once: in-flight
/// deliveries stop and come again through the next subscription.
pub(crate) struct Dispatcher {
    task: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl Dispatcher {
    pub(crate) fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops taking events and lets in-flight deliveries finish (and be
    /// acknowledged) for up to `grace`, then aborts what is left.
    pub(crate) async fn drain(mut self, grace: Duration) {
        self.stop.send_replace(true);
        if tokio::time::timeout(grace, &mut self.task).await.is_err() {
            self.task.abort();
        }
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the dispatcher.
pub(crate) fn spawn(
    plan: Arc<TriggerPlan>,
    subscription: Box<dyn Subscription>,
    broker: Arc<BrokerHandle>,
    sender: EventSender,
    journal: Arc<DeliveryJournal>,
    gate: Arc<Gate>,
    dead_letter_health: Arc<HealthCell>,
) -> Dispatcher {
    let mut context = Context::new(plan, broker, sender, journal);
    context.gate = Some(gate);
    context.dead_letter_health = dead_letter_health;
    let context = Arc::new(context);
    let (stop, stopping) = watch::channel(false);
    let task = tokio::spawn(async move {
        if context.plan.ordered {
            run_ordered(context, subscription, stopping).await
        } else {
            run_unordered(context, subscription, stopping).await
        }
    });
    Dispatcher { task, stop }
}

/// The next delivery, or `None` once the subscription ends or a stop is asked.
async fn next_or_stop(
    subscription: &mut Box<dyn Subscription>,
    stopping: &mut watch::Receiver<bool>,
) -> Option<Delivery> {
    if *stopping.borrow() {
        return None;
    }
    tokio::select! {
        delivery = subscription.next() => delivery,
        _ = stopping.wait_for(|stop| *stop) => None,
    }
}

struct Context {
    plan: Arc<TriggerPlan>,
    broker: Arc<BrokerHandle>,
    sender: EventSender,
    journal: Arc<DeliveryJournal>,
    /// Authorizes replies into the broker as the trigger's identity.
    gate: Option<Arc<Gate>>,
    attempt_seconds: Histogram,
    dead_lettered: Counter,
    /// Tries at the dead-letter sink that failed (the event stays queued).
    dead_letter_failures: Counter,
    /// Whether the dead-letter sink took the last event sent to it; the
    /// trigger's status shows it.
    dead_letter_health: Arc<HealthCell>,
    dropped: Counter,
    /// Delivery counters by response code (`None`: no response), registered once.
    deliveries: RwLock<HashMap<Option<u16>, Counter>>,
}

impl Context {
    fn new(
        plan: Arc<TriggerPlan>,
        broker: Arc<BrokerHandle>,
        sender: EventSender,
        journal: Arc<DeliveryJournal>,
    ) -> Self {
        let trigger = plan.key.to_string();
        Context {
            attempt_seconds: metrics::histogram!("pilotlight_trigger_delivery_seconds", "trigger" => trigger.clone()),
            dead_lettered: metrics::counter!("pilotlight_trigger_dead_lettered_total", "trigger" => trigger.clone()),
            dead_letter_failures: metrics::counter!("pilotlight_trigger_dead_letter_failures_total", "trigger" => trigger.clone()),
            dead_letter_health: Arc::default(),
            dropped: metrics::counter!("pilotlight_trigger_dropped_total", "trigger" => trigger),
            deliveries: RwLock::default(),
            plan,
            broker,
            sender,
            journal,
            gate: None,
        }
    }

    fn observe(&self, status: Option<StatusCode>, took: Duration) {
        self.attempt_seconds.record(took);
        let code = status.map(|s| s.as_u16());
        let cached = self
            .deliveries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&code)
            .cloned();
        let counter = cached.unwrap_or_else(|| {
            let label = code.map_or_else(|| "none".to_owned(), |c| c.to_string());
            let counter = metrics::counter!("pilotlight_trigger_deliveries_total", "trigger" => self.plan.key.to_string(), "code" => label);
            self.deliveries.write().unwrap_or_else(|e| e.into_inner()).insert(code, counter.clone());
            counter
        });
        counter.increment(1);
    }
}

async fn run_unordered(
    context: Arc<Context>,
    mut subscription: Box<dyn Subscription>,
    mut stopping: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(context.plan.max_in_flight.max(1)));
    let mut in_flight = JoinSet::new();
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            _ = stopping.wait_for(|stop| *stop) => break,
        };
        let Ok(slot) = slot else { break };
        while in_flight.try_join_next().is_some() {}
        let Some(delivery) = next_or_stop(&mut subscription, &mut stopping).await else {
            break;
        };
        let context = context.clone();
        in_flight.spawn(async move {
            process(&context, delivery).await;
            drop(slot);
        });
    }
    while in_flight.join_next().await.is_some() {}
}

async fn run_ordered(
    context: Arc<Context>,
    mut subscription: Box<dyn Subscription>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut lanes: HashMap<u32, mpsc::Sender<Delivery>> = HashMap::new();
    let mut workers = JoinSet::new();
    while let Some(delivery) = next_or_stop(&mut subscription, &mut stopping).await {
        let lane = lanes.entry(delivery.lane).or_insert_with(|| {
            let (queue, mut deliveries) = mpsc::channel::<Delivery>(LANE_QUEUE);
            let context = context.clone();
            let stopping = stopping.clone();
            workers.spawn(async move {
                // On stop, finish the delivery at hand; queued ones come again.
                while let Some(delivery) = deliveries.recv().await {
                    if *stopping.borrow() {
                        break;
                    }
                    process(&context, delivery).await;
                }
            });
            queue
        });
        tokio::select! {
            sent = lane.send(delivery) => if sent.is_err() { break },
            _ = stopping.wait_for(|stop| *stop) => break,
        }
    }
    drop(lanes);
    while workers.join_next().await.is_some() {}
}

/// Delivers one event to the end: subscriber, reply, dead-letter sink;
/// then records how it went in the journal.
async fn process(context: &Context, delivery: Delivery) {
    let plan = &context.plan;
    let hop = delivery_span(plan, &delivery.event);
    let mut attempts = Vec::new();
    let outcome = match &plan.subscriber {
        Some(subscriber) => {
            deliver_with_retries(
                &context.sender,
                subscriber,
                &delivery.event,
                &plan.delivery,
                &hop,
                |status, took| {
                    attempts.push(AttemptRecord {
                        code: status.map(|s| s.as_u16()),
                    });
                    context.observe(status, took)
                },
            )
            .await
        }
        None => Outcome::Delivered {
            reply: Some((*delivery.event).clone()),
        },
    };
    let ended = match (outcome, &plan.reply) {
        (Outcome::Delivered { reply: None }, _) | (Outcome::Delivered { .. }, ReplyTo::Drop) => {
            DeliveryOutcome::Delivered
        }
        (Outcome::Delivered { reply: Some(reply) }, ReplyTo::Store) => {
            match store_reply(context, reply, &hop).await {
                Ok(()) => DeliveryOutcome::Replied,
                Err(refused) => {
                    let broker = &context.plan.broker_url;
                    dead_letter(context, &delivery.event, broker, &refused, &hop).await
                }
            }
        }
        (Outcome::Delivered { reply: Some(reply) }, ReplyTo::Destination(to)) => {
            match forward_reply(context, to, &reply, &hop).await {
                Ok(()) => DeliveryOutcome::Replied,
                Err(failed) => dead_letter(context, &delivery.event, to, &failed, &hop).await,
            }
        }
        (Outcome::Failed(failure), _) => {
            let subscriber = plan.subscriber.as_ref().map(ToString::to_string);
            let subscriber = subscriber.unwrap_or_default();
            dead_letter(context, &delivery.event, &subscriber, &failure, &hop).await
        }
    };
    hop.set(|| KeyValue::new("pilotlight.outcome", ended.as_str()));
    if matches!(
        ended,
        DeliveryOutcome::DeadLettered | DeliveryOutcome::Dropped
    ) {
        hop.fail(|| format!("the event was {}", ended.as_str()));
    }
    let record = DeliveryRecord {
        trigger: plan.key.to_string(),
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        attempts,
        outcome: ended,
    };
    context
        .journal
        .record(&plan.broker, &delivery.event, record);
    delivery.ack().await;
}

/// The span of one event's delivery by a trigger, continuing the trace the
/// event was stored with (its distributed-tracing extension): an hour
/// later, after a restart, or on another replica alike.
fn delivery_span(plan: &TriggerPlan, event: &Event) -> Hop {
    Hop::start(
        "trigger.deliver",
        SpanKind::Consumer,
        || Parent::from_event(event),
        || {
            let mut attributes = vec![
                KeyValue::new("messaging.system", "pilotlight"),
                KeyValue::new("messaging.operation.type", "process"),
                KeyValue::new("messaging.destination.name", plan.broker.to_string()),
                KeyValue::new("pilotlight.trigger", plan.key.to_string()),
                KeyValue::new("cloudevents.event_id", event.id().to_owned()),
                KeyValue::new("cloudevents.event_type", event.ty().to_owned()),
            ];
            if let Some(subscriber) = &plan.subscriber {
                attributes.push(KeyValue::new(
                    "pilotlight.subscriber",
                    subscriber.to_string(),
                ));
            }
            attributes
        },
    )
}

/// Sends a reply on to a Subscription's `reply`, with its delivery policy;
/// what that destination answers is not read. A reply it fails to take
/// sends the original event to the dead-letter sink, as Knative's channel
/// dispatcher does.
async fn forward_reply(
    context: &Context,
    to: &Target,
    reply: &Event,
    hop: &Hop,
) -> Result<(), Failure> {
    let plan = &context.plan;
    let forward = hop.child("trigger.reply", SpanKind::Producer, Vec::new);
    let outcome = deliver_with_retries(
        &context.sender,
        to,
        reply,
        &plan.delivery,
        &forward,
        |s, t| context.observe(s, t),
    )
    .await;
    match outcome {
        Outcome::Delivered { .. } => Ok(()),
        Outcome::Failed(failure) => Err(failure),
    }
}

/// A reply enters the trigger's broker as a new event. The subscriber has
/// done its work, so a reply the broker cannot take now is tried again until
/// stored rather than the event being sent again. One the broker refuses for
/// good (too large, say) fails the delivery: the event goes to the
/// dead-letter sink, as Knative does when forwarding a reply fails, and an
/// ordered trigger moves on.
async fn store_reply(context: &Context, reply: Event, hop: &Hop) -> Result<(), Failure> {
    authorize_reply(context, &reply)?;
    // The reply re-enters the broker under this delivery: its own
    // deliveries continue the trace (unless it carries a context already).
    let into_broker = hop.child("trigger.reply", SpanKind::Producer, || {
        vec![KeyValue::new("cloudevents.event_id", reply.id().to_owned())]
    });
    let mut backoff = Backoff::new(Duration::from_millis(100), DEAD_LETTER_PAUSE_MAX);
    loop {
        let Err(e) = context
            .broker
            .publish(vec![reply.clone()], &into_broker)
            .await
        else {
            return Ok(());
        };
        if e.is_permanent() {
            let message = format!(
                "the reply {} was refused by broker {}: {e}",
                reply.id(),
                context.plan.broker
            );
            return Err(Failure {
                status: Some(e.status()),
                retryable: false,
                retry_after: None,
                data: message.clone().into(),
                message,
            });
        }
        tracing::warn!(trigger = %context.plan.key, error = %e, "storing a reply failed; retrying");
        let pause = backoff.next_delay();
        tokio::time::sleep(pause.max(e.retry_after().min(DEAD_LETTER_PAUSE_MAX))).await;
    }
}

/// A reply enters the broker as the trigger sends it: with authentication
/// on, the broker's EventPolicies decide, as for a request to its ingress
/// with the trigger's token (Knative sends replies to the broker's ingress
/// with it). A refused reply fails the delivery for good (403).
fn authorize_reply(context: &Context, reply: &Event) -> Result<(), Failure> {
    let (Some(gate), Some(identity)) = (&context.gate, &context.plan.identity) else {
        return Ok(());
    };
    let broker = &context.plan.broker;
    let decided = gate.authorize(
        &broker.namespace,
        &broker.name,
        &identity.subject,
        1,
        &|filter, _| filter.matches(reply),
        &|_| reply.id().to_owned(),
    );
    decided.map_err(|forbidden| {
        let message = format!(
            "the reply {} was refused by broker {broker}: {forbidden}",
            reply.id()
        );
        Failure {
            status: Some(StatusCode::FORBIDDEN),
            retryable: false,
            retry_after: None,
            data: message.clone().into(),
            message,
        }
    })
}

/// Sends the event to the trigger's dead-letter sink, with the failure at
/// `destination` in Knative's error extensions; drops it (counted) when the
/// trigger has none. Says which of the two it did.
async fn dead_letter(
    context: &Context,
    event: &Event,
    destination: &impl std::fmt::Display,
    failure: &Failure,
    hop: &Hop,
) -> DeliveryOutcome {
    let plan = &context.plan;
    let Some(sink) = &plan.delivery.dead_letter_sink else {
        tracing::warn!(trigger = %plan.key, id = event.id(), error = %failure.message, "delivery failed and the trigger has no dead-letter sink, so the event is dropped; set spec.delivery.deadLetterSink (trigger or broker) to keep such events");
        context.dropped.increment(1);
        return DeliveryOutcome::Dropped;
    };
    let dead = dead_letter_event(event, destination, failure);
    let span = hop.child("trigger.dead_letter", SpanKind::Internal, Vec::new);
    let mut backoff = Backoff::new(Duration::from_secs(1), DEAD_LETTER_PAUSE_MAX);
    loop {
        let outcome = deliver_with_retries(
            &context.sender,
            sink,
            &dead,
            &plan.delivery,
            &span,
            |s, t| context.observe(s, t),
        )
        .await;
        match outcome {
            Outcome::Delivered { .. } => {
                context.dead_lettered.increment(1);
                context.dead_letter_health.set(Health::Ready);
                return DeliveryOutcome::DeadLettered;
            }
            Outcome::Failed(f) => {
                context.dead_letter_failures.increment(1);
                context.dead_letter_health.set(Health::not_ready(
                    DEAD_LETTER_SINK_UNREACHABLE,
                    format!(
                        "the dead-letter sink {sink} did not take a dead letter ({}); events whose delivery failed stay queued and are tried again",
                        f.message
                    ),
                ));
                let pause = backoff.next_delay();
                tracing::error!(trigger = %plan.key, id = event.id(), error = %f.message, "the dead-letter sink failed too; the event stays queued and is tried again in {pause:?}");
                tokio::time::sleep(pause).await;
            }
        }
    }
}
