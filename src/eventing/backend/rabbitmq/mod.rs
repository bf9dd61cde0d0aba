//! The `rabbitmq` backend (broker class `RabbitMQBroker`), after
//! knative-extensions/eventing-rabbitmq:
//!
//! - one durable **headers exchange** per broker, `pilotlight/{namespace}/{broker}`;
//! - one durable queue per trigger (quorum by default),
//!   `pilotlight/{namespace}/{broker}/{trigger}`, bound with `x-match: all` and
//!   the trigger's exact attribute filters, so RabbitMQ routes only matching
//!   events to it; the rest of the filter (prefix, suffix, not, any, CESQL) is
//!   evaluated here before a delivery is handed out. `/` cannot occur in
//!   Kubernetes names, so the names are unambiguous and stable across restarts.
//! - **append** publishes in binary mode (see [`binding`]) on a confirm-mode
//!   channel and returns only after RabbitMQ confirmed every event; a nack,
//!   an error or no connection is [`AppendError::Unavailable`] (503 +
//!   Retry-After at the ingress). Attributes travel in one AMQP frame, so an
//!   event whose attributes are over `frame_max` is [`AppendError::TooLarge`]
//!   (413), checked before publishing: RabbitMQ would close the connection.
//! - **subscriptions** consume with manual acks and prefetch = the trigger's
//!   parallelism; the dispatcher acks after delivery or dead-lettering.
//! - the connection is one per broker, re-established with backoff, and the
//!   exchange and queues are redeclared before appends are accepted again
//!   (see [`connection`]).
//!
//! There is no dead-letter exchange: the dispatcher sends to the trigger's
//! dead-letter sink itself, as for every backend.

pub mod binding;
pub(crate) mod config;
pub mod connection;
pub(crate) mod settle;
mod subscription;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use lapin::options::{BasicPublishOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::types::ShortString;
use lapin::{Channel, Confirmation};
use tokio::sync::watch;

use self::config::RabbitConnectionConfig;
use self::connection::{Link, Topology, declare_queue, short};
use self::subscription::RabbitSubscription;
use super::{
    AppendError, Backend, BackendError, BackendPlan, Concurrency, PlanContext, RewindError,
    RewindTo, Rewound, StartError, Subscription, SubscriptionLag, SubscriptionSpec, TailError,
    TailStart, TailStream, same_plan,
};
use crate::api::broker::BrokerClass;
use crate::api::filter::Filter;
use crate::api::{ObjectKey, Trigger};
use crate::cloudevent::Event;
use crate::eventing::health::Health;

/// How long a client should wait while RabbitMQ is unreachable.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long starting a broker waits for its first connection attempt (one
/// to an unanswering host) before it serves, with 503s until connected.
const FIRST_CONNECT: Duration = Duration::from_secs(5);
/// AMQP names are at most 255 bytes.
const MAX_NAME: usize = 255;

/// The exchange of a broker.
pub fn exchange_name(broker: &ObjectKey) -> String {
    fit(format!("pilotlight/{}/{}", broker.namespace, broker.name))
}

/// The queue of a trigger of a broker.
pub fn queue_name(broker: &ObjectKey, trigger: &str) -> String {
    fit(format!(
        "pilotlight/{}/{}/{trigger}",
        broker.namespace, broker.name
    ))
}

/// Shortens a name over 255 bytes to a prefix and a hash of the whole name,
/// which stays the same across restarts.
fn fit(name: String) -> String {
    if name.len() <= MAX_NAME {
        return name;
    }
    let forward = crc32fast::hash(name.as_bytes());
    let backward = crc32fast::hash(&name.bytes().rev().collect::<Vec<_>>());
    let mut cut = MAX_NAME - 18;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~{forward:08x}{backward:08x}", &name[..cut])
}

/// The exact attribute matches every event passing `filter` satisfies: the
/// conjunction RabbitMQ can evaluate with a headers binding. `datacontenttype`
/// is left to pilotlight (it travels as the content-type property).
pub(crate) fn exact_conjunction(filter: &Filter) -> Vec<(String, String)> {
    match filter {
        Filter::Exact { attribute, value } if attribute != "datacontenttype" => {
            vec![(attribute.clone(), value.clone())]
        }
        Filter::All(filters) => filters.iter().flat_map(exact_conjunction).collect(),
        _ => Vec::new(),
    }
}

/// A RabbitMQBroker: its name (for the exchange) and its connection.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RabbitMqPlan {
    pub broker: ObjectKey,
    pub connection: RabbitConnectionConfig,
}

pub(crate) fn plan(context: &PlanContext<'_>) -> Result<Box<dyn BackendPlan>, String> {
    Ok(Box::new(RabbitMqPlan {
        broker: context.key.clone(),
        connection: config::broker_connection(context.broker, context.index, context.rabbitmq_uri)?,
    }))
}

#[async_trait]
impl BackendPlan for RabbitMqPlan {
    fn class(&self) -> BrokerClass {
        BrokerClass::RabbitMq
    }

    /// Never Unavailable: a broker whose RabbitMQ is away starts, answers
    /// 503 and shows the link's health until it connects.
    async fn start(&self) -> Result<Arc<dyn Backend>, StartError> {
        Ok(Arc::new(
            start(&self.broker, self.connection.clone())
                .await
                .map_err(StartError::Failed)?,
        ))
    }

    fn same_as(&self, other: &dyn BackendPlan) -> bool {
        same_plan(self, other)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    /// eventing-rabbitmq's parallelism: the prefetch and the deliveries in
    /// flight; 1 (the default) delivers in order.
    fn trigger_concurrency(&self, trigger: &Trigger) -> Option<Concurrency> {
        let parallelism = trigger.rabbitmq_parallelism().unwrap_or(1);
        Some(Concurrency {
            ordered: parallelism == 1,
            max_in_flight: parallelism,
        })
    }
}

/// A broker stored in RabbitMQ.
pub(crate) struct RabbitMqBackend {
    broker: ObjectKey,
    link: Arc<Link>,
    exchange: ShortString,
    /// Each trigger's live subscription, told when it is replaced.
    subscriptions: Mutex<HashMap<ObjectKey, watch::Sender<bool>>>,
}

/// Starts the broker's connection; waits for the first attempt (a few
/// seconds at most), then serves anyway (appends answer 503 until RabbitMQ
/// is reachable).
pub(crate) async fn start(
    broker: &ObjectKey,
    config: RabbitConnectionConfig,
) -> Result<RabbitMqBackend, String> {
    let exchange = exchange_name(broker);
    let link = Link::start(
        config,
        format!("pilotlight broker {broker}"),
        Topology {
            exchange: exchange.clone(),
            ..Topology::default()
        },
    );
    if !link.wait_first_attempt(FIRST_CONNECT).await {
        tracing::warn!(broker = %broker, error = %link.last_error(), "RabbitMQ is not reachable yet; the broker answers 503 until it is");
    }
    Ok(RabbitMqBackend {
        broker: broker.clone(),
        exchange: short(&exchange)?,
        link,
        subscriptions: Mutex::default(),
    })
}

impl RabbitMqBackend {
    fn unavailable(&self, reason: impl Into<String>) -> AppendError {
        AppendError::Unavailable {
            reason: reason.into(),
            retry_after: RETRY_AFTER,
        }
    }

    /// A short-lived channel for declarations and deletions, so that an error
    /// there closes it and not the publishing channel.
    async fn admin_channel(&self) -> Result<Channel, BackendError> {
        let session = self.link.current().ok_or_else(|| {
            BackendError(format!(
                "RabbitMQ is not connected: {}",
                self.link.last_error()
            ))
        })?;
        session
            .connection
            .create_channel()
            .await
            .map_err(|e| BackendError(format!("cannot open a RabbitMQ channel: {e}")))
    }

    /// Tells the trigger's current subscription (if any) that it ended.
    fn end_subscription(&self, trigger: &ObjectKey) {
        let mut subscriptions = self.subscriptions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(replaced) = subscriptions.remove(trigger) {
            replaced.send_replace(true);
        }
    }

    fn end_all_subscriptions(&self) {
        let mut subscriptions = self.subscriptions.lock().unwrap_or_else(|e| e.into_inner());
        for (_, replaced) in subscriptions.drain() {
            replaced.send_replace(true);
        }
    }
}

#[async_trait]
impl Backend for RabbitMqBackend {
    /// Refused: a queue hands a message to one consumer and forgets it once
    /// acknowledged, so there is nothing left to deliver again.
    async fn rewind(
        &self,
        subscription: &ObjectKey,
        _to: RewindTo,
        _dry_run: bool,
    ) -> Result<Rewound, RewindError> {
        Err(RewindError::Unsupported(format!(
            "{subscription} runs on a RabbitMQ broker: its queue {} removed each event once \
             the subscriber acknowledged it, so there is nothing to deliver again (replay needs \
             a broker class that keeps events: the log, or Kafka)",
            queue_name(&self.broker, &subscription.name)
        )))
    }

    async fn append(&self, events: Vec<Event>) -> Result<(), AppendError> {
        let session = self.link.current().ok_or_else(|| {
            self.unavailable(format!(
                "RabbitMQ is not connected ({}); retry shortly",
                self.link.last_error()
            ))
        })?;
        let frame_max = session.connection.configuration().frame_max() as usize;
        if let Some((event, bytes)) = events
            .iter()
            .map(|e| (e, binding::header_frame_bytes(e)))
            .find(|(_, bytes)| *bytes > frame_max)
        {
            return Err(AppendError::TooLarge(format!(
                "the attributes of event {} take {bytes} bytes in AMQP's header frame, over the \
                 {frame_max} bytes RabbitMQ's frame_max allows: move large values into the \
                 event's data, which has no such limit, or raise frame_max in RabbitMQ's \
                 configuration",
                event.id(),
            )));
        }
        let mut confirms = Vec::with_capacity(events.len());
        for event in &events {
            let (properties, body) = binding::encode(event);
            let confirm = session
                .publisher
                .basic_publish(
                    self.exchange.clone(),
                    ShortString::default(),
                    BasicPublishOptions::default(),
                    body,
                    properties,
                )
                .await
                .map_err(|e| self.unavailable(format!("publishing to RabbitMQ failed: {e}")))?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            match confirm.await {
                Ok(Confirmation::Ack(_)) => {}
                Ok(Confirmation::Nack(_)) => {
                    return Err(self.unavailable("RabbitMQ did not confirm the event (nack)"));
                }
                Ok(Confirmation::NotRequested) => {
                    return Err(self.unavailable("the publishing channel lost confirm mode"));
                }
                Err(e) => {
                    return Err(
                        self.unavailable(format!("RabbitMQ did not confirm the event: {e}"))
                    );
                }
            }
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        spec: SubscriptionSpec,
    ) -> Result<Box<dyn Subscription>, BackendError> {
        let queue = queue_name(&self.broker, &spec.trigger.name);
        let binding = binding::binding_arguments(&exact_conjunction(&spec.filter));
        self.end_subscription(&spec.trigger);
        let previous = self.link.disown_queue(&queue);
        if self.link.current().is_some() {
            let channel = self.admin_channel().await?;
            // A changed filter: remove the old binding so only the new one routes.
            if let Some(old) = previous.filter(|old| *old != binding) {
                let _ = channel
                    .queue_unbind(
                        short(&queue).map_err(BackendError)?,
                        self.exchange.clone(),
                        ShortString::default(),
                        old,
                    )
                    .await;
            }
            let declared = declare_queue(
                &channel,
                self.exchange.as_str(),
                &queue,
                self.link.queue_type(),
                binding.clone(),
            )
            .await;
            let _ = channel.close(200, "declared".into()).await;
            declared.map_err(BackendError)?;
        }
        self.link.own_queue(&queue, binding);
        let (replaced_tx, replaced) = watch::channel(false);
        self.subscriptions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(spec.trigger.clone(), replaced_tx);
        Ok(Box::new(RabbitSubscription {
            link: self.link.clone(),
            trigger: spec.trigger,
            queue,
            filter: spec.filter,
            prefetch: spec.max_in_flight.clamp(1, u16::MAX as usize) as u16,
            replaced,
            consuming: None,
        }))
    }

    async fn unsubscribe(&self, trigger: &ObjectKey) -> Result<(), BackendError> {
        self.end_subscription(trigger);
        let queue = queue_name(&self.broker, &trigger.name);
        self.link.disown_queue(&queue);
        let channel = self.admin_channel().await?;
        let deleted = channel
            .queue_delete(
                short(&queue).map_err(BackendError)?,
                QueueDeleteOptions::default(),
            )
            .await;
        let _ = channel.close(200, "deleted".into()).await;
        deleted
            .map(|_| ())
            .map_err(|e| BackendError(format!("cannot delete queue '{queue}': {e}")))
    }

    fn lag(&self, _trigger: &ObjectKey) -> Option<SubscriptionLag> {
        // The backlog lives in RabbitMQ (see its management UI); reading it
        // would take a round trip per status request.
        None
    }

    fn health(&self) -> Health {
        self.link.health()
    }

    async fn shutdown(&self) {
        self.end_all_subscriptions();
        self.link.stop().await;
    }

    async fn destroy(&self) -> Result<(), BackendError> {
        self.end_all_subscriptions();
        let topology = self.link.topology();
        let result = async {
            let channel = self.admin_channel().await?;
            for queue in topology.queues.keys() {
                channel
                    .queue_delete(
                        short(queue).map_err(BackendError)?,
                        QueueDeleteOptions::default(),
                    )
                    .await
                    .map_err(|e| BackendError(format!("cannot delete queue '{queue}': {e}")))?;
            }
            channel
                .exchange_delete(self.exchange.clone(), ExchangeDeleteOptions::default())
                .await
                .map_err(|e| {
                    BackendError(format!("cannot delete exchange '{}': {e}", self.exchange))
                })?;
            let _ = channel.close(200, "destroyed".into()).await;
            Ok(())
        }
        .await;
        self.link.stop().await;
        result
    }

    /// Refused: a RabbitMQ broker keeps its events in its triggers' queues,
    /// and a message read from a queue is gone for its trigger; a queue of
    /// the tail's own would hold only what arrives after it is bound, and
    /// RabbitMQ keeps no history to start `--since` from.
    async fn tail(&self, _from: TailStart) -> Result<Box<dyn TailStream>, TailError> {
        Err(TailError::Unsupported(format!(
            "broker class RabbitMQBroker cannot be tailed: its events live in its triggers' \
             queues (exchange '{}'), and a queue cannot be read twice without taking the \
             events from the trigger; RabbitMQ keeps no history to start from either. Tail \
             the trigger's subscriber instead (pilotlight event-display), or use a log, \
             memory or Kafka broker",
            self.exchange
        )))
    }
}
