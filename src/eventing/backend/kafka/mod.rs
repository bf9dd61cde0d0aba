//! The `Kafka` broker class (as knative-extensions/eventing-kafka-broker):
//! one topic per broker (`knative-broker-{namespace}-{name}`), events in the
//! CloudEvents Kafka binding's binary mode ([`binding`]), one consumer group
//! per trigger (`knative-trigger-{namespace}-{name}`).
//!
//! - `append` answers only after every record is acknowledged by Kafka with
//!   `acks=all` (idempotent producer, so retries neither duplicate nor
//!   reorder); a failure is [`AppendError::Unavailable`] (503 + Retry-After).
//! - Lanes are partitions: the one dispatcher delivers ordered triggers one
//!   event at a time per partition, unordered ones concurrently.
//! - Offsets are committed up to the contiguous done prefix per partition
//!   ([`offsets`], [`consumer`]): a crash redelivers, never skips. Rebalances
//!   split partitions between pilotlight processes sharing the Kafka.
//! - Starting fails (and is tried again) until Kafka answers; a started
//!   backend probes Kafka through its producer, and the broker is not Ready
//!   while the probe fails, with librdkafka's words for why ([`health`]).

pub(crate) mod binding;
pub(crate) mod config;
pub(crate) mod consumer;
pub(crate) mod health;
pub(crate) mod offsets;
pub(crate) mod reset;
mod tail;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

pub(crate) use config::KafkaConfig;
use consumer::{GroupConsumer, GroupHandle, InitialOffset, Shared};
use health::{ClientErrors, ErrorsContext, Prober, TopicCheck};

use super::{
    Acknowledge, AppendError, BACKEND_UNAVAILABLE, Backend, BackendError, BackendPlan, Delivery,
    PlanContext, RewindError, RewindTo, Rewound, StartError, Subscription, SubscriptionLag,
    SubscriptionSpec, TailError, TailStart, TailStream, same_plan,
};
use crate::api::ObjectKey;
use crate::api::broker::BrokerClass;
use crate::api::filter::Filter;
use crate::cloudevent::Event;
use crate::eventing::health::{Health, HealthCell};

/// How long a record may wait to be acknowledged before the append fails.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(15);
/// Timeout of topic creation and deletion.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);
/// What a client is told to wait after Kafka failed an append.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// A Kafka broker's backend.
pub(crate) struct KafkaBackend {
    config: KafkaConfig,
    producer: FutureProducer<ErrorsContext>,
    subscriptions: tokio::sync::Mutex<HashMap<ObjectKey, GroupHandle>>,
    lags: Mutex<HashMap<ObjectKey, Arc<Shared>>>,
    /// Whether the producer reaches Kafka, kept by `prober`.
    health: Arc<HealthCell>,
    prober: tokio::task::JoinHandle<()>,
    /// Set at shutdown: the tails end.
    stopping: tokio::sync::watch::Sender<bool>,
}

/// The probe task holds a clone of the producer: it ends with the backend.
impl Drop for KafkaBackend {
    fn drop(&mut self) {
        self.prober.abort();
        self.stopping.send_replace(true);
    }
}

/// The consumer group of a trigger, as Knative names it.
pub(crate) fn trigger_group(trigger: &ObjectKey) -> String {
    format!("knative-trigger-{}-{}", trigger.namespace, trigger.name)
}

impl KafkaConfig {
    /// The consumer group of one of this store's subscriptions: a
    /// trigger's, or on a KafkaChannel's topic `{topic}.{subscription}`
    /// (so that a Subscription and a Trigger of one name never share a
    /// group).
    fn group(&self, subscription: &ObjectKey) -> String {
        if self.channel {
            format!("{}.{}", self.topic, subscription.name)
        } else {
            trigger_group(subscription)
        }
    }
}

pub(crate) fn plan(context: &PlanContext<'_>) -> Result<Box<dyn BackendPlan>, String> {
    if context.channel_topic.is_some() && context.kafka_bootstrap_servers.is_none() {
        // A KafkaChannel has no spec.config to name its Kafka.
        return Err(
            "a KafkaChannel keeps its events on pilotlight's Kafka: start pilotlight with --kafka-bootstrap-servers (PILOTLIGHT_KAFKA_BOOTSTRAP_SERVERS)"
                .to_owned(),
        );
    }
    let mut config = config::resolve(
        context.key,
        context.broker,
        context.index,
        context.kafka_bootstrap_servers,
    )?;
    config.member = static_member(context.replica);
    if let Some(topic) = context.channel_topic {
        config.topic = topic.name.clone();
        config.partitions = topic.partitions;
        config.replication_factor = topic.replication_factor;
        config.retention_ms = Some(topic.retention_ms);
        config.channel = true;
    }
    Ok(Box::new(config))
}

/// The `group.instance.id` of this replica in its triggers' groups, one
/// member per group: with it a restarted replica takes its partitions back
/// at once (Kafka's static membership, KIP-345) instead of after the old
/// member's session times out. Kafka takes at most 249 characters of
/// a-z, A-Z, 0-9, '.', '_' and '-'; None without a name.
pub(crate) fn static_member(replica: &str) -> Option<String> {
    let name: String = replica
        .trim()
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '-',
        })
        .take(249)
        .collect();
    (!name.is_empty()).then_some(name)
}

/// A Kafka broker's plan is its resolved settings (topic, servers, auth).
#[async_trait]
impl BackendPlan for KafkaConfig {
    fn class(&self) -> BrokerClass {
        BrokerClass::Kafka
    }

    async fn start(&self) -> Result<Arc<dyn Backend>, StartError> {
        Ok(Arc::new(start(self).await?))
    }

    fn same_as(&self, other: &dyn BackendPlan) -> bool {
        same_plan(self, other)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Why a consumer group was not deleted.
enum GroupDeletion {
    /// A member is still in it (`NON_EMPTY_GROUP`).
    StillHasMembers,
    Failed(String),
}

/// Deletes `group` and its committed offsets; a group that does not exist
/// (never joined, or deleted already) is as good as deleted.
async fn delete_group(config: &KafkaConfig, group: &str) -> Result<(), GroupDeletion> {
    let admin = admin(config).map_err(|e| GroupDeletion::Failed(e.to_string()))?;
    let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    let results = tokio::time::timeout(ADMIN_TIMEOUT, admin.delete_groups(&[group], &options))
        .await
        .map_err(|_| {
            GroupDeletion::Failed(format!(
                "deleting consumer group {group}: Kafka did not answer within {ADMIN_TIMEOUT:?}"
            ))
        })?
        .map_err(|e| {
            GroupDeletion::Failed(format!("deleting consumer group {group} failed: {e}"))
        })?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::GroupIdNotFound)) => {}
            Err((_, RDKafkaErrorCode::NonEmptyGroup)) => {
                return Err(GroupDeletion::StillHasMembers);
            }
            Err((_, code)) => {
                return Err(GroupDeletion::Failed(format!(
                    "deleting consumer group {group} failed: {code}"
                )));
            }
        }
    }
    Ok(())
}

/// Deletes the group of a removed trigger once this replica's static member
/// has timed out of it, trying every 2 s for a little longer than a session.
async fn delete_group_once_empty(config: KafkaConfig, group: String) {
    let deadline =
        tokio::time::Instant::now() + consumer::SESSION_TIMEOUT + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        match delete_group(&config, &group).await {
            Ok(()) => return,
            Err(GroupDeletion::StillHasMembers) if tokio::time::Instant::now() < deadline => {}
            Err(GroupDeletion::StillHasMembers) => {
                tracing::warn!(group = %group, "the deleted trigger's consumer group still has members (another pilotlight process runs it?); its offsets stay in Kafka");
                return;
            }
            Err(GroupDeletion::Failed(reason)) => {
                tracing::warn!(group = %group, error = %reason, "cannot delete the deleted trigger's consumer group; its offsets stay in Kafka");
                return;
            }
        }
    }
}

/// Connects to Kafka, creates the broker's topic if missing, and starts
/// probing. [`StartError::Unavailable`], with librdkafka's reason, while
/// Kafka does not answer.
pub(crate) async fn start(config: &KafkaConfig) -> Result<KafkaBackend, StartError> {
    let context = ErrorsContext::default();
    let errors = context.errors.clone();
    let producer: FutureProducer<ErrorsContext> = config
        .client()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        // A few ms of batching: concurrent appends share produce requests.
        .set("linger.ms", "2")
        .set(
            "message.timeout.ms",
            PRODUCE_TIMEOUT.as_millis().to_string(),
        )
        // Probing the topic's metadata must not create it with the
        // cluster's defaults before `create_topic` sets its partitions.
        .set("allow.auto.create.topics", "false")
        .create_with_context(context)
        .map_err(|e| StartError::Failed(format!("cannot create a Kafka producer: {e}")))?;
    first_contact(config, &producer, &errors).await?;
    if !config.external_topic {
        // Kafka answered just now: a failure here is about the topic.
        create_topic(config)
            .await
            .map_err(|e| StartError::Failed(e.to_string()))?;
    }
    let health = Arc::new(HealthCell::default());
    let prober = Prober {
        probe: producer_probe(&producer, &config.topic, TopicCheck::Exists),
        errors,
        kafka: format!("Kafka at {}", config.bootstrap_servers),
        check: "spec.config's bootstrap.servers and auth Secret (or --kafka-bootstrap-servers), and that the broker's topic exists",
    };
    let prober = tokio::spawn(health::keep_health(
        prober,
        health.clone(),
        BACKEND_UNAVAILABLE,
        std::future::pending(),
    ));
    Ok(KafkaBackend {
        config: config.clone(),
        producer,
        subscriptions: tokio::sync::Mutex::default(),
        lags: Mutex::default(),
        health,
        prober,
        stopping: tokio::sync::watch::channel(false).0,
    })
}

/// A probe of `topic` through the producer's connections.
fn producer_probe(
    producer: &FutureProducer<ErrorsContext>,
    topic: &str,
    check: TopicCheck,
) -> Arc<dyn Fn() -> Result<(), String> + Send + Sync> {
    let producer = producer.clone();
    let topics = vec![topic.to_owned()];
    Arc::new(move || health::probe(producer.client(), &topics, check))
}

/// Waits until Kafka answers the producer: at once when it does, failing
/// at once when librdkafka reports every bootstrap server down, and after
/// [`health::PROBE_TIMEOUT`] when nothing answers. An external topic must
/// exist; the broker's own is created next.
async fn first_contact(
    config: &KafkaConfig,
    producer: &FutureProducer<ErrorsContext>,
    errors: &ClientErrors,
) -> Result<(), StartError> {
    let check = if config.external_topic {
        TopicCheck::Exists
    } else {
        TopicCheck::Contact
    };
    let probe = producer_probe(producer, &config.topic, check);
    let answered = tokio::select! {
        result = tokio::task::spawn_blocking(move || probe()) => {
            result.unwrap_or_else(|e| Err(format!("the probe failed: {e}")))
        }
        _ = errors.all_down() => Err("every bootstrap server is down".to_owned()),
    };
    answered.map_err(|e| {
        StartError::Unavailable(format!(
            "Kafka at {}: {}; check spec.config's bootstrap.servers and auth Secret (or --kafka-bootstrap-servers), and that Kafka is running there",
            config.bootstrap_servers,
            errors.explain(e)
        ))
    })
}

fn admin(config: &KafkaConfig) -> Result<AdminClient<DefaultClientContext>, BackendError> {
    config
        .client()
        .create()
        .map_err(|e| BackendError(format!("cannot create a Kafka admin client: {e}")))
}

async fn create_topic(config: &KafkaConfig) -> Result<(), BackendError> {
    let admin = admin(config)?;
    let retention = config.retention_ms.map(|ms| ms.to_string());
    let mut topic = NewTopic::new(
        &config.topic,
        config.partitions,
        TopicReplication::Fixed(config.replication_factor),
    );
    if let Some(retention) = &retention {
        topic = topic.set("retention.ms", retention);
    }
    let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    let created = tokio::time::timeout(ADMIN_TIMEOUT, admin.create_topics([&topic], &options))
        .await
        .map_err(|_| {
            BackendError(format!(
                "Kafka at {} did not answer within {ADMIN_TIMEOUT:?} (creating topic {})",
                config.bootstrap_servers, config.topic
            ))
        })?
        .map_err(|e| {
            BackendError(format!(
                "creating topic {} on Kafka at {} failed: {e}",
                config.topic, config.bootstrap_servers
            ))
        })?;
    for result in created {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(BackendError(format!(
                    "creating topic {topic} on Kafka at {} failed: {code}",
                    config.bootstrap_servers
                )));
            }
        }
    }
    Ok(())
}

impl KafkaBackend {
    fn record<'a>(&'a self, record: &'a binding::OutRecord) -> FutureRecord<'a, str, [u8]> {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (key, value) in &record.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let mut out = FutureRecord::to(&self.config.topic).headers(headers);
        if let Some(value) = &record.value {
            out = out.payload(&value[..]);
        }
        if let Some(key) = &record.key {
            out = out.key(key.as_str());
        }
        out
    }

    async fn stop_subscription(&self, trigger: &ObjectKey) {
        let handle = self.subscriptions.lock().await.remove(trigger);
        if let Some(handle) = handle {
            handle.stop().await;
        }
        self.lags
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(trigger);
    }
}

impl KafkaBackend {
    /// What a failed produce means for the sender: a record over a size
    /// limit or one Kafka rejects as malformed fails the same way every
    /// time (permanent: 413 or 400, a reply goes to the dead-letter sink);
    /// anything else may pass later (503 with Retry-After).
    fn append_error(&self, error: KafkaError, what: &str) -> AppendError {
        let code = error.rdkafka_error_code();
        let servers = &self.config.bootstrap_servers;
        let topic = &self.config.topic;
        match code {
            Some(RDKafkaErrorCode::MessageSizeTooLarge) => AppendError::TooLarge(format!(
                "Kafka at {servers} {what}: it is over the largest message the producer or \
                 topic {topic} accepts (the client's message.max.bytes, 1000000 by default, \
                 and the topic's max.message.bytes): {error}"
            )),
            Some(
                RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidMessageSize,
            ) => AppendError::Refused(format!(
                "Kafka at {servers} {what} for topic {topic}: {error}"
            )),
            _ => unavailable(format!("Kafka at {servers} {what}: {error}")),
        }
    }
}

fn unavailable(reason: String) -> AppendError {
    AppendError::Unavailable {
        reason,
        retry_after: RETRY_AFTER,
    }
}

#[async_trait]
impl Backend for KafkaBackend {
    async fn append(&self, events: Vec<Event>) -> Result<(), AppendError> {
        // Kafka has been away past the health's grace: say so at once rather
        // than after librdkafka's delivery timeout (15 s), and keep nothing
        // in the producer's memory that a 202 would have promised.
        if let Health::NotReady { message, .. } = self.health.get() {
            return Err(unavailable(message));
        }
        let records: Vec<binding::OutRecord> = events.iter().map(binding::encode).collect();
        // Enqueue all first (in order: the idempotent producer keeps it per
        // partition), then wait for every acknowledgement.
        let mut pending = Vec::with_capacity(records.len());
        for record in &records {
            match self.producer.send_result(self.record(record)) {
                Ok(delivery) => pending.push(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    return Err(AppendError::Overloaded(
                        self.producer.in_flight_count().max(0) as usize,
                    ));
                }
                Err((e, _)) => return Err(self.append_error(e, "refused the record")),
            }
        }
        for delivery in pending {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    return Err(self.append_error(e, "did not acknowledge the record"));
                }
                Err(_) => return Err(unavailable("the Kafka producer stopped".into())),
            }
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        spec: SubscriptionSpec,
    ) -> Result<Box<dyn Subscription>, BackendError> {
        self.stop_subscription(&spec.trigger).await;
        let group = self.config.group(&spec.trigger);
        let (consumer, handle) = GroupConsumer::start(
            &self.config.client(),
            &group,
            self.config.member.as_deref(),
            std::slice::from_ref(&self.config.topic),
            InitialOffset::Latest,
        )
        .await
        .map_err(|e| BackendError(e.to_string()))?;
        self.lags
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(spec.trigger.clone(), handle.shared.clone());
        self.subscriptions
            .lock()
            .await
            .insert(spec.trigger.clone(), handle);
        Ok(Box::new(KafkaSubscription {
            consumer,
            filter: spec.filter,
            trigger: spec.trigger,
        }))
    }

    async fn unsubscribe(&self, trigger: &ObjectKey) -> Result<(), BackendError> {
        self.stop_subscription(trigger).await;
        // The group's committed offsets go with the trigger, as in Knative.
        let group = self.config.group(trigger);
        match delete_group(&self.config, &group).await {
            Err(GroupDeletion::StillHasMembers) if self.config.member.is_some() => {
                // A static member does not leave its group when it closes:
                // the group empties when its session times out.
                tokio::spawn(delete_group_once_empty(self.config.clone(), group));
                Ok(())
            }
            Err(GroupDeletion::StillHasMembers) => Err(BackendError(format!(
                "deleting consumer group {group}: it still has members (another pilotlight process runs the trigger)"
            ))),
            Err(GroupDeletion::Failed(reason)) => Err(BackendError(reason)),
            Ok(()) => Ok(()),
        }
    }

    /// As `kafka-consumer-groups --reset-offsets` (`--to-datetime`, or
    /// `--to-offset` on every partition): the group's member here stops
    /// first, with a last commit of what is done, then the new offsets are
    /// committed for the group; see [`reset`].
    async fn rewind(
        &self,
        subscription: &ObjectKey,
        to: RewindTo,
        dry_run: bool,
    ) -> Result<Rewound, RewindError> {
        if !dry_run {
            self.stop_subscription(subscription).await;
        }
        let group = self.config.group(subscription);
        reset::reset(&self.config, &group, to, dry_run).await
    }

    fn lag(&self, trigger: &ObjectKey) -> Option<SubscriptionLag> {
        let lags = self.lags.lock().unwrap_or_else(|e| e.into_inner());
        lags.get(trigger).map(|shared| SubscriptionLag {
            backlog: shared.backlog(),
            lost_to_retention: 0,
        })
    }

    fn health(&self) -> Health {
        self.health.get()
    }

    async fn shutdown(&self) {
        self.prober.abort();
        self.stopping.send_replace(true);
        let handles: Vec<GroupHandle> = self
            .subscriptions
            .lock()
            .await
            .drain()
            .map(|(_, h)| h)
            .collect();
        futures::future::join_all(handles.into_iter().map(GroupHandle::stop)).await;
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(PRODUCE_TIMEOUT)).await;
    }

    async fn destroy(&self) -> Result<(), BackendError> {
        self.shutdown().await;
        if self.config.external_topic || self.config.keep_topic {
            return Ok(());
        }
        let admin = admin(&self.config)?;
        let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        let deleted = tokio::time::timeout(
            ADMIN_TIMEOUT,
            admin.delete_topics(&[&self.config.topic], &options),
        )
        .await
        .map_err(|_| {
            BackendError(format!(
                "deleting topic {}: Kafka did not answer within {ADMIN_TIMEOUT:?}",
                self.config.topic
            ))
        })?
        .map_err(|e| BackendError(format!("deleting topic {} failed: {e}", self.config.topic)))?;
        for result in deleted {
            if let Err((topic, code)) = result
                && code != RDKafkaErrorCode::UnknownTopicOrPartition
            {
                return Err(BackendError(format!(
                    "deleting topic {topic} failed: {code}"
                )));
            }
        }
        Ok(())
    }
    async fn tail(&self, from: TailStart) -> Result<Box<dyn TailStream>, TailError> {
        let tail = tail::KafkaTail::open(&self.config, from, self.stopping.subscribe()).await?;
        Ok(Box::new(tail))
    }
}

/// A trigger's stream: the records of its group's partitions that decode as
/// CloudEvents and match its filter.
struct KafkaSubscription {
    consumer: GroupConsumer,
    filter: Arc<Filter>,
    trigger: ObjectKey,
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn next(&mut self) -> Option<Delivery> {
        let (filter, trigger) = (&self.filter, &self.trigger);
        let (event, token, _) = self
            .consumer
            .next(|message| decode_event(message, trigger).filter(|e| filter.matches(e)))
            .await?;
        let lane = token.partition as u32;
        Some(Delivery::new(
            Arc::new(event),
            lane,
            Box::new(KafkaAck {
                shared: self.consumer.shared().clone(),
                token,
            }),
        ))
    }
}

/// The CloudEvent a broker record holds; a record that is not one (written
/// to the topic by something else) is logged, for `reader` (a trigger, a
/// tail), and skipped.
pub(super) fn decode_event(
    message: &rdkafka::message::OwnedMessage,
    reader: &dyn std::fmt::Display,
) -> Option<Event> {
    use rdkafka::Message;
    use rdkafka::message::Headers;
    let headers: Vec<(&str, Option<&[u8]>)> = message
        .headers()
        .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
        .unwrap_or_default();
    match binding::decode(headers, message.payload()) {
        Ok(binding::Decoded::Event(event)) => Some(event),
        Ok(binding::Decoded::NotAnEvent) => {
            tracing::warn!(reader = %reader, partition = message.partition(), offset = message.offset(), "skipping a record that is not a CloudEvent");
            None
        }
        Err(e) => {
            tracing::warn!(reader = %reader, partition = message.partition(), offset = message.offset(), error = %e, "skipping an invalid CloudEvent record");
            None
        }
    }
}

struct KafkaAck {
    shared: Arc<Shared>,
    token: offsets::OffsetToken,
}

#[async_trait]
impl Acknowledge for KafkaAck {
    async fn ack(self: Box<Self>) {
        self.shared.done(self.token);
    }
}
