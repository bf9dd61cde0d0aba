//! The running RabbitmqSource: consume, map, send, ack. The rules are in the
//! [module doc](super).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::RabbitmqSource;
use crate::api::ObjectKey;
use crate::backoff::Backoff;
use crate::cloudevent::{Event, ValidationError};
use crate::eventing::backend::rabbitmq::binding::{self, DecodeError};
use crate::eventing::backend::rabbitmq::connection::{connect_failure, short};
use crate::eventing::backend::rabbitmq::settle::{Settlement, Settler};
use crate::eventing::delivery::DeliveryPolicy;
use crate::eventing::health::Health;
use crate::eventing::source::{CeOverrides, SendError, Source, SourceContext};

/// The type of events made from messages that are not CloudEvents.
pub(crate) const RABBITMQ_EVENT_TYPE: &str = "dev.knative.rabbitmq.event";

const RETRY_START: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The event a message stands for: the CloudEvent it carries, or a
/// `dev.knative.rabbitmq.event` wrapping its body. `Err` for a message that
/// claims to be a CloudEvent but is not a valid one.
pub(crate) fn message_event(
    properties: &BasicProperties,
    body: Bytes,
    event_source: &str,
) -> Result<Event, String> {
    // A clone of `Bytes` shares the buffer.
    match binding::decode(properties, body.clone()) {
        Ok(event) => Ok(event),
        Err(DecodeError::NotAnEvent) => {
            wrap_message(properties, body, event_source).map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

fn wrap_message(
    properties: &BasicProperties,
    body: Bytes,
    event_source: &str,
) -> Result<Event, ValidationError> {
    let id = properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned())
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut attributes = vec![
        ("specversion".to_owned(), "1.0".to_owned()),
        ("id".to_owned(), id),
        ("source".to_owned(), event_source.to_owned()),
        ("type".to_owned(), RABBITMQ_EVENT_TYPE.to_owned()),
    ];
    if let Some(content_type) = properties.content_type() {
        attributes.push(("datacontenttype".to_owned(), content_type.to_string()));
    }
    if let Some(time) = properties
        .timestamp()
        .and_then(|t| chrono::DateTime::from_timestamp(t as i64, 0))
    {
        attributes.push((
            "time".to_owned(),
            time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ));
    }
    let data = (!body.is_empty()).then_some(body);
    Event::new(attributes, data)
}

/// The event source of a RabbitmqSource's plain messages.
pub(super) fn event_source(key: &ObjectKey, queue: &str) -> String {
    format!(
        "/apis/v1/namespaces/{}/rabbitmqsources/{}#{queue}",
        key.namespace, key.name
    )
}

pub(super) struct RabbitmqRunner {
    uri: AMQPUri,
    queue: String,
    exchange: Option<String>,
    predeclared: bool,
    parallelism: u16,
    policy: Arc<DeliveryPolicy>,
    overrides: Option<CeOverrides>,
}

impl RabbitmqRunner {
    pub(super) fn new(source: &RabbitmqSource, uri: AMQPUri) -> Self {
        let resources = &source.spec.rabbitmq_resources_config;
        RabbitmqRunner {
            uri,
            queue: resources.queue_name.clone(),
            exchange: resources.exchange_name.clone().filter(|e| !e.is_empty()),
            predeclared: resources.predeclared,
            parallelism: source.parallelism().unwrap_or(1),
            policy: Arc::new(source.delivery_policy()),
            overrides: source.spec.ce_overrides.clone(),
        }
    }

    /// Connects and consumes until the connection is lost (`Err`) or the
    /// source stops (`Ok`).
    async fn consume(&self, context: &SourceContext) -> Result<(), String> {
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("pilotlight RabbitmqSource {}", context.key).into());
        let connection = Connection::connect_uri(self.uri.clone(), properties)
            .await
            .map_err(|e| {
                format!(
                    "{}; the URI comes from the Secret of spec.rabbitmqClusterReference (or --rabbitmq-uri), the vhost from spec.rabbitmqResourcesConfig.vhost if set; retrying",
                    connect_failure(&self.uri, &e)
                )
            })?;
        let result = self.consume_on(&connection, context).await;
        let _ = connection.close(200, "source stopping".into()).await;
        result
    }

    async fn consume_on(
        &self,
        connection: &Connection,
        context: &SourceContext,
    ) -> Result<(), String> {
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| format!("cannot open a channel: {e}"))?;
        if !self.predeclared {
            self.declare(&channel).await?;
        }
        channel
            .basic_qos(self.parallelism, BasicQosOptions::default())
            .await
            .map_err(|e| format!("cannot set the prefetch: {e}"))?;
        let mut consumer = channel
            .basic_consume(
                short(&self.queue)?,
                short(&format!("pilotlight {}", context.key))?,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                format!(
                    "cannot consume from queue '{}': {e}; with predeclared: true the queue must exist already; retrying",
                    self.queue
                )
            })?;
        context.set_status(Health::Ready);
        let settler = Settler::start(channel.clone());
        let event_source = Arc::new(event_source(&context.key, &self.queue));
        let slots = Arc::new(Semaphore::new(self.parallelism.into()));
        let mut in_flight = JoinSet::new();
        let outcome = loop {
            // A slot first, so that at most `parallelism` messages are sent at once.
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => slot,
                _ = context.stopped() => break Ok(()),
            };
            let Ok(slot) = slot else { break Ok(()) };
            while in_flight.try_join_next().is_some() {}
            let message = tokio::select! {
                message = consumer.next() => message,
                _ = context.stopped() => break Ok(()),
            };
            let message = match message {
                Some(Ok(message)) => message,
                Some(Err(e)) => break Err(format!("lost the RabbitMQ connection: {e}")),
                None => break Err("the RabbitMQ consumer was cancelled".to_owned()),
            };
            let settlement = settler.track(message.delivery_tag);
            let context = context.clone();
            let policy = self.policy.clone();
            let event_source = event_source.clone();
            let overrides = self.overrides.clone();
            in_flight.spawn(async move {
                forward(
                    &context,
                    &policy,
                    &event_source,
                    overrides.as_ref(),
                    message,
                    settlement,
                )
                .await;
                drop(slot);
            });
        };
        // Sends end early when the source stops; unacked messages come again.
        while in_flight.join_next().await.is_some() {}
        settler.close().await;
        outcome
    }

    /// Declares the queue (durable, classic), and the exchange with a
    /// binding of every message when `exchangeName` is set.
    async fn declare(&self, channel: &Channel) -> Result<(), String> {
        channel
            .queue_declare(
                short(&self.queue)?,
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("cannot declare queue '{}': {e}; if it exists with other settings, set predeclared: true", self.queue))?;
        let Some(exchange) = &self.exchange else {
            return Ok(());
        };
        channel
            .exchange_declare(
                short(exchange)?,
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("cannot declare fanout exchange '{exchange}': {e}; if it exists with another type, set predeclared: true and bind the queue yourself"))?;
        channel
            .queue_bind(
                short(&self.queue)?,
                short(exchange)?,
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("cannot bind queue '{}' to '{exchange}': {e}", self.queue))
    }
}

/// Sends one message's event to the sink and settles the message.
async fn forward(
    context: &SourceContext,
    policy: &DeliveryPolicy,
    event_source: &str,
    overrides: Option<&CeOverrides>,
    mut message: lapin::message::Delivery,
    settlement: Settlement,
) {
    let body = Bytes::from(std::mem::take(&mut message.data));
    let mut event = match message_event(&message.properties, body, event_source) {
        Ok(event) => event,
        Err(e) => {
            tracing::warn!(source = %context.key, error = %e, "a message is an invalid CloudEvent; rejecting it");
            settlement.reject();
            return;
        }
    };
    if let Some(overrides) = overrides {
        overrides.apply(&mut event);
    }
    match context.send_with(&event, policy).await {
        Ok(()) => settlement.ack(),
        Err(SendError::Refused { sink, message: why }) => {
            tracing::warn!(source = %context.key, id = event.id(), sink, error = %why, "the sink refused the event after all retries; rejecting the message");
            settlement.reject();
        }
        // Not acked: RabbitMQ delivers it again when the source runs again.
        Err(SendError::Stopping) => {}
    }
}

#[async_trait::async_trait]
impl Source for RabbitmqRunner {
    async fn run(self: Box<Self>, context: SourceContext) {
        let mut backoff = Backoff::new(RETRY_START, RETRY_MAX);
        while !context.is_stopped() {
            let started = tokio::time::Instant::now();
            let message = match self.consume(&context).await {
                Ok(()) => return,
                Err(message) => message,
            };
            // A connection that lived a while starts the backoff afresh.
            if started.elapsed() > RETRY_MAX {
                backoff.reset();
            }
            let pause = backoff.next_delay();
            tracing::warn!(source = %context.key, error = %message, "RabbitmqSource is not consuming; retrying in {pause:?}");
            // A consumer that was running and drops may be back at once.
            context.set_failing("RabbitmqUnavailable", message);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = context.stopped() => return,
            }
        }
    }
}
