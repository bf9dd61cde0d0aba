//! Sources: something outside (a schedule, the Kubernetes API server, a queue)
//! turned into CloudEvents sent to a sink.
//!
//! Each source kind is a folder with its manifest type, its [`Source`]
//! implementation and its tests. The control plane resolves `spec.sink` to a
//! URI and runs the source with a [`SourceContext`], which is all a source
//! sees of pilotlight: [`SourceContext::send`] delivers with the same client
//! and retry loop as triggers, [`SourceContext::set_status`] reports
//! its [`Health`], [`SourceContext::stopped`] says when to end, and
//! [`SourceContext::state_dir`] keeps what must survive a restart.
//!
//! With several replicas (Kubernetes mode), a source kind says where it runs
//! ([`SourceConfig::placement`]): PingSource and ApiServerSource on the
//! leader only, so that each tick and each API change becomes one event;
//! KafkaSource and RabbitmqSource on every replica, since their consumer
//! group or shared queue already gives each message to one of them.

pub mod apiserver;
pub(crate) mod cluster_state;
pub(crate) mod controller;
mod kafka;
mod ping;
mod rabbitmq;

pub use ping::PingClock;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use tokio::sync::watch;

use crate::api::duck::{CeOverrides, Destination};
use crate::api::index::ObjectIndex;
use crate::api::{ObjectKey, Resource};
use crate::cloudevent::Event;
use crate::eventing::delivery::{
    DeliveryPolicy, EventSender, Outcome, Target, deliver_with_retries,
};
use crate::eventing::health::{Health, HealthCell};
use crate::telemetry::trace::{Hop, Parent};
use cluster_state::ClusterState;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

/// How sources deliver: Knative's sources retry a failed send; here 10
/// retries, exponential from 0.2 s (about 3.5 minutes in all), honouring
/// Retry-After.
pub(crate) fn source_delivery_policy() -> DeliveryPolicy {
    DeliveryPolicy {
        retry: 10,
        backoff_policy: crate::api::duck::BackoffPolicy::Exponential,
        backoff_delay: Duration::from_millis(200),
        ..DeliveryPolicy::default()
    }
}

impl CeOverrides {
    /// Sets the extensions on an event; [`CeOverrides::validate`] checked
    /// the names when the manifest loaded.
    pub(crate) fn apply(&self, event: &mut Event) {
        for (name, value) in &self.extensions {
            event.set_attribute(name, value.clone());
        }
    }
}

/// What a source kind's object gives the source controller: where its
/// events go and how to build the running source. Each kind implements it
/// in its folder; [`config_of`] is the one list of source kinds.
pub(crate) trait SourceConfig {
    fn sink(&self) -> &Destination;

    /// Which replicas run the source; every one unless the kind says so.
    fn placement(&self) -> Placement {
        Placement::EveryReplica
    }

    /// The builder of the running source, called on the source's own task
    /// when the controller starts it, with what pilotlight's settings and
    /// the other objects give it.
    fn builder(&self, context: &BuildContext<'_>) -> SourceBuild;
}

/// Which replicas run a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Every replica: the source's server shares the work out (a Kafka
    /// consumer group, a RabbitMQ queue's competing consumers).
    EveryReplica,
    /// The leader only: on every replica, each event would be sent once
    /// per replica (a PingSource's tick, an ApiServerSource's change).
    Leader,
}

/// How this replica's sources share the work with other replicas: what the
/// server gives the eventing controller.
#[derive(Clone)]
pub(crate) struct Replication {
    /// Whether this replica leads. Sources placed on the leader run only
    /// while it does. Always true in file mode.
    pub leading: watch::Receiver<bool>,
    /// Kubernetes mode: where sources keep what the next leader resumes
    /// from. None in file mode: the data folder.
    pub state: Option<Arc<ClusterState>>,
}

impl Replication {
    /// One replica, always leading (file mode).
    pub(crate) fn single() -> Self {
        Replication {
            leading: watch::channel(true).1,
            state: None,
        }
    }
}

/// Builds a running source.
pub(crate) type BuildSource = Box<dyn FnOnce() -> Box<dyn Source> + Send>;

/// A source's builder, with a digest of what it read from other objects
/// (the values of the Secrets it names). A source whose digest changed on a
/// reload starts again, as one whose spec changed does, so that a Secret
/// created or fixed after the source is picked up.
pub(crate) struct SourceBuild {
    pub build: BuildSource,
    pub inputs: u64,
}

impl SourceBuild {
    /// A source that reads nothing but its own object.
    pub(crate) fn new(build: BuildSource) -> Self {
        SourceBuild { build, inputs: 0 }
    }

    /// A source that read `inputs` from other objects (hashed, so that
    /// credentials are compared without being kept; `DefaultHasher::new`
    /// hashes alike on every apply).
    pub(crate) fn reading(build: BuildSource, inputs: &impl std::hash::Hash) -> Self {
        use std::hash::{DefaultHasher, Hasher};
        let mut hasher = DefaultHasher::new();
        inputs.hash(&mut hasher);
        SourceBuild {
            build,
            inputs: hasher.finish(),
        }
    }
}

/// What a source may need beyond its own object when it is built.
pub(crate) struct BuildContext<'a> {
    /// The loaded objects, for references (a RabbitmqCluster's Secret).
    pub index: &'a ObjectIndex<'a>,
    /// `--kubeconfig`, for sources that talk to the API server.
    pub kubeconfig: Option<&'a Path>,
    /// `--rabbitmq-uri`, for RabbitMQ sources without a cluster reference.
    pub rabbitmq_uri: Option<&'a str>,
    /// The clock PingSources tick on.
    pub ping_clock: &'a PingClock,
    /// Kubernetes mode: the cluster's source state, where PingSources record
    /// their ticks for the next leader.
    pub cluster_state: Option<&'a Arc<ClusterState>>,
}

/// The object as a source, if its kind is one: adding a source kind is its
/// folder and one line here.
pub(crate) fn config_of(resource: &Resource) -> Option<&dyn SourceConfig> {
    Some(match resource {
        Resource::PingSource(source) => &**source,
        Resource::ApiServerSource(source) => &**source,
        Resource::RabbitmqSource(source) => &**source,
        Resource::KafkaSource(source) => &**source,
        _ => return None,
    })
}

/// A running source.
#[async_trait::async_trait]
pub trait Source: Send + 'static {
    /// Runs until [`SourceContext::stopped`] resolves.
    async fn run(self: Box<Self>, context: SourceContext);
}

/// Why a send gave up.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    #[error("the sink {sink} refused the event: {message}")]
    Refused { sink: String, message: String },
    #[error("the source is stopping")]
    Stopping,
}

/// Everything a source gets from pilotlight.
#[derive(Clone)]
pub struct SourceContext {
    /// The source object: `namespace/name`.
    pub key: ObjectKey,
    /// The resolved `spec.sink` (with its `CACerts`).
    pub sink: Target,
    sender: EventSender,
    policy: Arc<DeliveryPolicy>,
    health: Arc<HealthCell>,
    stop: watch::Receiver<bool>,
    state_dir: PathBuf,
}

impl SourceContext {
    pub fn new(
        key: ObjectKey,
        sink: Uri,
        sender: EventSender,
        state_dir: PathBuf,
    ) -> (SourceContext, SourceHandle) {
        let (stop_tx, stop) = watch::channel(false);
        let health = Arc::new(HealthCell::default());
        let context = SourceContext {
            key,
            sink: Target::from(sink),
            sender,
            policy: Arc::new(source_delivery_policy()),
            health: health.clone(),
            stop,
            state_dir,
        };
        (
            context,
            SourceHandle {
                stop: stop_tx,
                health,
            },
        )
    }

    /// Delivers one event to the sink, with retries; gives up early when the
    /// source is stopping.
    pub(crate) async fn send(&self, event: &Event) -> Result<(), SendError> {
        self.send_with(event, &self.policy).await
    }

    /// [`SourceContext::send`] with the source's own delivery policy (a
    /// source whose manifest has `spec.delivery`).
    pub(crate) async fn send_with(
        &self,
        event: &Event,
        policy: &DeliveryPolicy,
    ) -> Result<(), SendError> {
        match self.deliver(&self.sink, event, policy).await? {
            Outcome::Delivered { .. } => Ok(()),
            Outcome::Failed(failure) => Err(SendError::Refused {
                sink: self.sink.to_string(),
                message: failure.message,
            }),
        }
    }

    /// [`SourceContext::send`] for an event that must not be lost to a
    /// stop (a PingSource's tick, already recorded as fired): once the
    /// source is stopping, the delivery still has `grace` to finish.
    pub(crate) async fn send_finishing(
        &self,
        event: &Event,
        grace: Duration,
    ) -> Result<(), SendError> {
        match self
            .deliver_within(&self.sink, event, &self.policy, grace)
            .await?
        {
            Outcome::Delivered { .. } => Ok(()),
            Outcome::Failed(failure) => Err(SendError::Refused {
                sink: self.sink.to_string(),
                message: failure.message,
            }),
        }
    }

    /// Delivers one event to `sink` with `policy` (a source's own
    /// `spec.delivery`, a dead-letter sink), counting it; gives up early
    /// (with [`SendError::Stopping`]) when the source is stopping.
    pub(crate) async fn deliver(
        &self,
        sink: &Target,
        event: &Event,
        policy: &DeliveryPolicy,
    ) -> Result<Outcome, SendError> {
        self.deliver_within(sink, event, policy, Duration::ZERO)
            .await
    }

    /// [`SourceContext::deliver`], whose delivery goes on for `grace` once
    /// the source is stopping.
    async fn deliver_within(
        &self,
        sink: &Target,
        event: &Event,
        policy: &DeliveryPolicy,
        grace: Duration,
    ) -> Result<Outcome, SendError> {
        let hop = self.send_span(event);
        let stamped;
        let event = if hop.is_on() {
            // The source made the event: its trace starts here, and the
            // deliveries it leads to, stored or not, continue it.
            let mut copy = event.clone();
            hop.stamp_if_absent(&mut copy);
            stamped = copy;
            &stamped
        } else {
            event
        };
        let delivery = deliver_with_retries(&self.sender, sink, event, policy, &hop, |_, _| {});
        tokio::pin!(delivery);
        let finished = tokio::select! {
            outcome = &mut delivery => Some(outcome),
            () = self.stopped() => None,
        };
        let outcome = match finished {
            Some(outcome) => outcome,
            None if grace.is_zero() => return Err(SendError::Stopping),
            None => tokio::time::timeout(grace, delivery)
                .await
                .map_err(|_| SendError::Stopping)?,
        };
        let counter = match &outcome {
            Outcome::Delivered { .. } => "pilotlight_source_sent_total",
            Outcome::Failed(_) => "pilotlight_source_failed_total",
        };
        metrics::counter!(counter, "source" => self.key.to_string()).increment(1);
        Ok(outcome)
    }

    /// The span of sending one event: under the event's own trace context
    /// when it came with one (a Kafka record's), else a new trace.
    fn send_span(&self, event: &Event) -> Hop {
        Hop::start(
            "source.send",
            SpanKind::Producer,
            || Parent::from_event(event),
            || {
                vec![
                    KeyValue::new("pilotlight.source", self.key.to_string()),
                    KeyValue::new("cloudevents.event_id", event.id().to_owned()),
                    KeyValue::new("cloudevents.event_type", event.ty().to_owned()),
                ]
            },
        )
    }

    /// Sets the source's health, shown at once.
    pub(crate) fn set_status(&self, health: Health) {
        self.health.set(health);
    }

    /// Reports a failure that may pass by itself (a dropped connection,
    /// one failed attempt to reconnect): a Ready source shows it only if it
    /// lasts (see [`HealthCell::failing`]).
    pub(crate) fn set_failing(&self, reason: &str, message: impl Into<String>) {
        self.health.failing(reason, message);
    }

    /// The source's health cell, for a task of the source that reports on
    /// its own.
    pub(crate) fn health(&self) -> &Arc<HealthCell> {
        &self.health
    }

    /// Resolves when the source must stop (deleted, changed, or pilotlight exits).
    pub(crate) async fn stopped(&self) {
        let mut stop = self.stop.clone();
        let _ = stop.wait_for(|s| *s).await;
    }

    pub(crate) fn is_stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// A folder for this source's state that must survive restarts (created
    /// on first use by the source).
    pub(crate) fn state_dir(&self) -> &std::path::Path {
        &self.state_dir
    }
}

/// The control plane's side of a running source.
pub struct SourceHandle {
    stop: watch::Sender<bool>,
    health: Arc<HealthCell>,
}

impl SourceHandle {
    pub fn health(&self) -> Health {
        self.health.get()
    }

    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for SourceHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What runs for a source whose manifest does not validate or whose
/// connection settings do not resolve: it only reports why, as `InvalidSpec`,
/// until it is stopped. Every source kind uses it.
pub(crate) struct InvalidSource {
    pub(crate) message: String,
}

#[async_trait::async_trait]
impl Source for InvalidSource {
    async fn run(self: Box<Self>, context: SourceContext) {
        context.set_status(Health::not_ready("InvalidSpec", self.message));
        context.stopped().await;
    }
}
