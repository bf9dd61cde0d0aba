//! The running KafkaSource: `spec.consumers` group members, each handing
//! its records to per-partition workers (ordered) or to concurrent sends
//! (unordered), acknowledging a record only once the sink or the
//! dead-letter sink took it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use super::mapping;
use super::{KafkaSource, UNORDERED_IN_FLIGHT};
use crate::api::Invalid;
use crate::api::sources::kafka::KeyType;
use crate::cloudevent::Event;
use crate::eventing::backend::kafka::config::KafkaAuth;
use crate::eventing::backend::kafka::consumer::{
    ConsumerError, GroupConsumer, GroupHandle, InitialOffset, Shared,
};
use crate::eventing::backend::kafka::health::keep_health;
use crate::eventing::backend::kafka::offsets::OffsetToken;
use crate::eventing::delivery::{DeliveryPolicy, Outcome, Target, dead_letter_event};
use crate::eventing::health::Health;
use crate::eventing::source::{CeOverrides, Source, SourceContext};

/// The reason of a KafkaSource whose Kafka does not answer.
const KAFKA_UNAVAILABLE: &str = "KafkaUnavailable";
/// Pause before trying again to join Kafka after a failure.
const RETRY_PAUSE: Duration = Duration::from_secs(5);
/// Records queued per partition of an ordered source before reading pauses.
const LANE_QUEUE: usize = 64;

/// Everything resolved from the manifest.
pub(crate) struct KafkaRunner {
    client: ClientConfig,
    group: String,
    topics: Vec<String>,
    initial: InitialOffset,
    consumers: usize,
    ordered: bool,
    key_type: KeyType,
    policy: DeliveryPolicy,
    dead_letter_sink: Option<Target>,
    overrides: CeOverrides,
}

impl KafkaRunner {
    /// The runner of a source, connecting with `auth` (its `spec.net`).
    pub(crate) fn new(source: &KafkaSource, auth: &KafkaAuth) -> Result<KafkaRunner, Invalid> {
        source.validate()?;
        let ca_certs = source
            .spec
            .delivery
            .as_ref()
            .and_then(|d| d.dead_letter_sink.as_ref())
            .and_then(|d| d.ca_certs.as_deref());
        let dead_letter_sink = source
            .dead_letter_sink()?
            .map(|uri| Target::new(uri, ca_certs));
        let client = auth.client(&source.spec.bootstrap_servers.join(","));
        let policy = match &source.spec.delivery {
            Some(spec) => DeliveryPolicy::from_spec(Some(spec), dead_letter_sink.clone()),
            None => crate::eventing::source::source_delivery_policy(),
        };
        Ok(KafkaRunner {
            client,
            group: source.consumer_group(),
            topics: source.spec.topics.clone(),
            initial: source.initial_offset()?,
            consumers: source.spec.consumers.unwrap_or(1).max(1) as usize,
            ordered: source.ordered()?,
            key_type: source.key_type()?,
            policy,
            dead_letter_sink,
            overrides: source.spec.ce_overrides.clone().unwrap_or_default(),
        })
    }

    fn bootstrap_servers(&self) -> &str {
        self.client.get("bootstrap.servers").unwrap_or_default()
    }

    /// Joins the group with every consumer, or says why not.
    async fn join(&self) -> Result<Vec<(GroupConsumer, GroupHandle)>, ConsumerError> {
        let mut members = Vec::with_capacity(self.consumers);
        for _ in 0..self.consumers {
            match GroupConsumer::start(&self.client, &self.group, None, &self.topics, self.initial)
                .await
            {
                Ok(member) => members.push(member),
                Err(e) => {
                    for (_, handle) in members {
                        handle.stop().await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(members)
    }
}

#[async_trait::async_trait]
impl Source for KafkaRunner {
    async fn run(self: Box<Self>, context: SourceContext) {
        let runner = Arc::new(*self);
        let members = loop {
            // Joining waits for Kafka (up to librdkafka's timeouts): a
            // source told to stop meanwhile ends now; members that joined
            // have consumed nothing, so there is nothing to commit.
            let joined = tokio::select! {
                joined = runner.join() => joined,
                _ = context.stopped() => return,
            };
            match joined {
                Ok(members) => break members,
                Err(e) if e.settings_refused => {
                    // The same settings fail the same way: wait for new
                    // ones (a fixed Secret restarts the source).
                    context.set_status(Health::NotReady {
                        reason: "InvalidSpec".into(),
                        message: format!(
                            "{e}; check spec.net and the values of the Secrets it names"
                        ),
                    });
                    context.stopped().await;
                    return;
                }
                Err(e) => {
                    let message = e.to_string();
                    tracing::warn!(source = %context.key, error = %message, "KafkaSource cannot join Kafka; retrying in {RETRY_PAUSE:?}");
                    context.set_status(Health::not_ready(
                        KAFKA_UNAVAILABLE,
                        format!("{message}; check spec.bootstrapServers and spec.topics (pilotlight retries every {RETRY_PAUSE:?})"),
                    ));
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY_PAUSE) => continue,
                        _ = context.stopped() => return,
                    }
                }
            }
        };
        // Joining need not have reached Kafka (a group reading from the
        // earliest offset asks nothing of it first): the probe says whether
        // the source is Ready, and keeps saying it while the source runs.
        if let Some((first, _)) = members.first() {
            let prober = first.prober(
                &runner.topics,
                format!("Kafka at {}", runner.bootstrap_servers()),
                "spec.bootstrapServers and spec.topics, and that Kafka is running there",
            );
            let stopped = context.clone();
            tokio::spawn(keep_health(
                prober,
                context.health().clone(),
                KAFKA_UNAVAILABLE,
                async move { stopped.stopped().await },
            ));
        }
        let mut consumers = JoinSet::new();
        let mut handles = Vec::new();
        for (consumer, handle) in members {
            handles.push(handle);
            consumers.spawn(consume(runner.clone(), consumer, context.clone()));
        }
        context.stopped().await;
        // Consumers stop handing out records; deliveries in progress end
        // (unacknowledged, so they come again) and the done prefix is committed.
        for handle in handles {
            handle.stop().await;
        }
        while consumers.join_next().await.is_some() {}
    }
}

/// One record to send, with what acknowledges it.
struct Job {
    event: Event,
    token: OffsetToken,
}

async fn consume(runner: Arc<KafkaRunner>, mut consumer: GroupConsumer, context: SourceContext) {
    let shared = consumer.shared().clone();
    let slots = Arc::new(Semaphore::new(UNORDERED_IN_FLIGHT));
    let mut lanes: HashMap<(String, i32), mpsc::Sender<Job>> = HashMap::new();
    let mut workers = JoinSet::new();
    let key = context.key.clone();
    let key_type = runner.key_type;
    loop {
        let next = consumer.next(|message| match mapping::to_event(&key, key_type, message) {
            Ok(event) => Some(event),
            Err(reason) => {
                use rdkafka::Message;
                tracing::warn!(source = %key, topic = message.topic(), partition = message.partition(), offset = message.offset(), error = %reason, "skipping a record that claims to be a CloudEvent but is not a valid one");
                None
            }
        });
        let Some((event, token, _)) = next.await else {
            break;
        };
        let job = Job { event, token };
        if runner.ordered {
            let lane = (job.token.topic.clone(), job.token.partition);
            let queue = lanes.entry(lane).or_insert_with(|| {
                let (queue, mut jobs) = mpsc::channel::<Job>(LANE_QUEUE);
                let (runner, context, shared) = (runner.clone(), context.clone(), shared.clone());
                workers.spawn(async move {
                    while let Some(job) = jobs.recv().await {
                        if !process(&runner, &context, &shared, job).await {
                            return;
                        }
                    }
                });
                queue
            });
            if queue.send(job).await.is_err() {
                break;
            }
        } else {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            while workers.try_join_next().is_some() {}
            let (runner, context, shared) = (runner.clone(), context.clone(), shared.clone());
            workers.spawn(async move {
                process(&runner, &context, &shared, job).await;
                drop(slot);
            });
        }
    }
    drop(lanes);
    while workers.join_next().await.is_some() {}
}

/// Sends one record's event (then to the dead-letter sink if it fails) and
/// acknowledges it. False when the source is stopping (not acknowledged).
async fn process(runner: &KafkaRunner, context: &SourceContext, shared: &Shared, job: Job) -> bool {
    let mut event = job.event;
    runner.overrides.apply(&mut event);
    let failure = match context.deliver(&context.sink, &event, &runner.policy).await {
        Err(_) => return false,
        Ok(Outcome::Delivered { .. }) => None,
        Ok(Outcome::Failed(failure)) => Some(failure),
    };
    if let Some(failure) = failure {
        match &runner.dead_letter_sink {
            None => {
                tracing::warn!(source = %context.key, id = event.id(), error = %failure.message, "the sink refused the event and the source has no dead-letter sink, so it is dropped; set spec.delivery.deadLetterSink to keep such events")
            }
            Some(sink) => {
                let dead = dead_letter_event(&event, &context.sink, &failure);
                loop {
                    match context.deliver(sink, &dead, &runner.policy).await {
                        Err(_) => return false,
                        Ok(Outcome::Delivered { .. }) => break,
                        Ok(Outcome::Failed(f)) => {
                            tracing::error!(source = %context.key, id = event.id(), error = %f.message, "the dead-letter sink failed too; trying again in {RETRY_PAUSE:?}");
                            tokio::select! {
                                _ = tokio::time::sleep(RETRY_PAUSE) => {}
                                _ = context.stopped() => return false,
                            }
                        }
                    }
                }
            }
        }
    }
    shared.done(job.token);
    true
}
