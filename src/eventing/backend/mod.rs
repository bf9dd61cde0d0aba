//! Broker backends: where a broker's events live between ingress and delivery.
//!
//! One trait for every backend (`log`, `memory`, `kafka`, `rabbitmq`),
//! with Vector's end-to-end acknowledgement contract:
//! - [`Backend::append`] returns only once the events are stored as durably as
//!   the backend can store them; the ingress answers 202 after that and not before.
//! - Each trigger has a [`Subscription`]. A [`Delivery`] it hands out stays the
//!   trigger's until [`Delivery::ack`] is called, which the dispatcher does only
//!   after the subscriber accepted the event or it went to the dead-letter sink.
//!   A delivery dropped without an ack is delivered again after a restart or a
//!   resubscribe (at-least-once, nothing lost).
//!
//! Lanes model Kafka partitions: ordered delivery means one event in flight per
//! lane. Backends without partitions use a single lane 0.

pub(crate) mod kafka;
mod local;
pub(crate) mod log;
pub(crate) mod memory;
pub mod rabbitmq;

use std::any::Any;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::api::broker::BrokerClass;
use crate::api::filter::Filter;
use crate::api::index::ObjectIndex;
use crate::api::{Broker, ObjectKey, Trigger};
use crate::cloudevent::Event;
use crate::eventing::health::Health;

/// The reason of a broker whose backend cannot reach its server (its
/// RabbitMQ or Kafka refuses or does not answer), at start or since; the
/// message has the server's own words.
pub(crate) const BACKEND_UNAVAILABLE: &str = "BackendUnavailable";
/// The reason of a broker whose backend did not start for another cause (a
/// folder that cannot be made, a setting the client refuses).
pub(crate) const BACKEND_FAILED: &str = "BackendFailed";

/// Why a backend did not start. The control plane tries it again either way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// Its server did not answer or refused the connection.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Failed(String),
}

impl StartError {
    /// The reason of the broker's Ready condition.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            StartError::Unavailable(_) => BACKEND_UNAVAILABLE,
            StartError::Failed(_) => BACKEND_FAILED,
        }
    }
}

/// A broker's backend resolved from the Broker, the objects it refers to
/// and pilotlight's settings: what the broker controller starts, and keeps
/// across a reload while the plan stays the same. Each backend implements
/// it in its folder, for its own settings type; [`plan`] lists them.
#[async_trait]
pub trait BackendPlan: fmt::Debug + Send + Sync + 'static {
    fn class(&self) -> BrokerClass;

    async fn start(&self) -> Result<Arc<dyn Backend>, StartError>;

    /// Whether `other` is this same plan (same class, same settings).
    fn same_as(&self, other: &dyn BackendPlan) -> bool;

    fn as_any(&self) -> &dyn Any;

    /// How many of a trigger's deliveries are in flight at once, and whether
    /// in order, when the broker class decides that rather than the
    /// trigger's own annotations (eventing-rabbitmq's parallelism).
    fn trigger_concurrency(&self, _trigger: &Trigger) -> Option<Concurrency> {
        None
    }
}

/// A trigger's deliveries in flight at most, and whether one at a time in
/// order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concurrency {
    pub ordered: bool,
    pub max_in_flight: usize,
}

/// [`BackendPlan::same_as`] for a plan type compared whole.
pub fn same_plan<T: PartialEq + 'static>(plan: &T, other: &dyn BackendPlan) -> bool {
    other.as_any().downcast_ref::<T>() == Some(plan)
}

/// What resolving a broker's plan may read.
pub(crate) struct PlanContext<'a> {
    pub key: &'a ObjectKey,
    pub broker: &'a Broker,
    /// The loaded objects, for `spec.config` and the Secrets it names.
    pub index: &'a ObjectIndex<'a>,
    /// pilotlight's data folder (`--data-dir`).
    pub data_dir: &'a Path,
    pub log: &'a log::LogConfig,
    pub memory: &'a memory::MemoryConfig,
    /// `--rabbitmq-uri`, for RabbitMQBrokers without `spec.config`.
    pub rabbitmq_uri: Option<&'a str>,
    /// `--kafka-bootstrap-servers`, for Kafka brokers without `spec.config`.
    pub kafka_bootstrap_servers: Option<&'a str>,
    /// This replica's stable name, for Kafka's static group membership.
    pub replica: &'a str,
    /// A KafkaChannel's topic, in place of the broker's.
    pub channel_topic: Option<&'a ChannelTopic>,
}

/// A KafkaChannel's topic as Knative names it (`knative-messaging-kafka.
/// {namespace}.{name}`), with the partitions, replication factor and
/// retention of its spec rather than a broker ConfigMap's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChannelTopic {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// `retentionDuration`, as the topic's `retention.ms`.
    pub retention_ms: i64,
}

/// The broker classes, each with how it resolves its plan: adding a backend
/// is its folder and one line here (and its class in `api::broker`). An
/// error names the field or reference that is wrong.
pub(crate) fn plan(
    class: BrokerClass,
    context: &PlanContext<'_>,
) -> Result<Box<dyn BackendPlan>, String> {
    match class {
        BrokerClass::Log => log::plan(context),
        BrokerClass::Memory => memory::plan(context),
        BrokerClass::RabbitMq => rabbitmq::plan(context),
        BrokerClass::Kafka => kafka::plan(context),
    }
}

/// What a trigger asks of its backend when it subscribes.
#[derive(Clone)]
pub struct SubscriptionSpec {
    pub trigger: ObjectKey,
    /// The trigger's filter, so backends that can filter at the source (the
    /// local fan-out index, RabbitMQ bindings) do so. The dispatcher does not
    /// filter again.
    pub filter: Arc<Filter>,
    /// Deliveries the dispatcher keeps in flight at most; backends use it as
    /// their prefetch.
    pub max_in_flight: usize,
}

/// A subscription's position, for status and the backlog metric.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SubscriptionLag {
    /// Events stored but not yet delivered or dead-lettered (an upper bound:
    /// it also counts events the trigger's filter will skip).
    pub backlog: u64,
    /// Events that retention removed before this trigger read them.
    pub lost_to_retention: u64,
}

/// Why the backend did not take events. Each maps to an ingress status code.
/// The first two pass (send again later); the last two never do, so nothing
/// may retry them: the ingress answers 4xx and a reply goes to the
/// dead-letter sink.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Too much is waiting to be stored: the client should slow down (429).
    #[error("the broker is busy: {0} appends are already waiting to be stored")]
    Overloaded(usize),
    /// The backend cannot store right now (disk error, lost connection) (503).
    #[error("the broker cannot store events right now: {reason}")]
    Unavailable {
        reason: String,
        retry_after: Duration,
    },
    /// An event is over what the broker or its backend stores (413).
    #[error("{0}")]
    TooLarge(String),
    /// The backend refuses the event as it is, every time (400).
    #[error("{0}")]
    Refused(String),
}

impl AppendError {
    pub(crate) fn retry_after(&self) -> Duration {
        match self {
            AppendError::Overloaded(_) => Duration::from_secs(1),
            AppendError::Unavailable { retry_after, .. } => *retry_after,
            AppendError::TooLarge(_) | AppendError::Refused(_) => Duration::ZERO,
        }
    }

    /// Whether sending the same events again can never succeed.
    pub(crate) fn is_permanent(&self) -> bool {
        matches!(self, AppendError::TooLarge(_) | AppendError::Refused(_))
    }

    /// The `reason` label of `pilotlight_broker_events_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            AppendError::Overloaded(_) => "overloaded",
            AppendError::Unavailable { .. } => "unavailable",
            AppendError::TooLarge(_) => "too_large",
            AppendError::Refused(_) => "refused",
        }
    }

    /// The status the broker's ingress answers with, also what a refused
    /// reply's `knativeerrorcode` says.
    pub(crate) fn status(&self) -> http::StatusCode {
        match self {
            AppendError::Overloaded(_) => http::StatusCode::TOO_MANY_REQUESTS,
            AppendError::Unavailable { .. } => http::StatusCode::SERVICE_UNAVAILABLE,
            AppendError::TooLarge(_) => http::StatusCode::PAYLOAD_TOO_LARGE,
            AppendError::Refused(_) => http::StatusCode::BAD_REQUEST,
        }
    }
}

/// Where a replay moves a subscription back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewindTo {
    /// The first event stored at or after this time, in ms since the epoch
    /// (the log's append time, Kafka's record timestamp).
    Time(i64),
    /// This offset of the log (lane 0); for Kafka, of every partition.
    Offset(u64),
}

/// What a replay does (or would do, on a dry run).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rewound {
    /// Events between the new position and the old one: delivered again.
    /// An upper bound, like [`SubscriptionLag::backlog`]: it also counts
    /// events the trigger's filter skips.
    pub events: u64,
    /// The new position of each lane (Kafka: partition).
    pub positions: Vec<LanePosition>,
    /// What the backend could not take back, in words (a memory broker
    /// holds only what some trigger still needs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A lane's (partition's) offset before and after a replay.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LanePosition {
    pub lane: u32,
    pub from: u64,
    pub to: u64,
}

/// Why a subscription was not moved back.
#[derive(Debug, thiserror::Error)]
pub enum RewindError {
    /// The backend cannot deliver again what was acknowledged.
    #[error("{0}")]
    Unsupported(String),
    /// The position asked for is not in what the backend holds.
    #[error("{0}")]
    OutOfRange(String),
    /// The trigger has no subscription on this backend (yet).
    #[error("{0}")]
    NotSubscribed(String),
    /// The backend failed (I/O, Kafka did not answer).
    #[error("{0}")]
    Failed(String),
}

/// A backend failure outside the append path (subscribe, delete).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

/// The storage of one broker.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Stores the events in order; returns once they are durable.
    async fn append(&self, events: Vec<Event>) -> Result<(), AppendError>;

    /// Opens the trigger's subscription at its last acknowledged position (a new
    /// trigger starts at the newest event, as in Knative). Subscribing again
    /// replaces the previous subscription: deliveries it had not acked come again.
    async fn subscribe(
        &self,
        spec: SubscriptionSpec,
    ) -> Result<Box<dyn Subscription>, BackendError>;

    /// Forgets a deleted trigger and everything kept for it.
    async fn unsubscribe(&self, trigger: &ObjectKey) -> Result<(), BackendError>;

    /// Moves the subscription's position back to `to`, so that the events
    /// from there are delivered again (through the trigger's filter); with
    /// `dry_run`, only says how many that is. The caller stops the
    /// subscription's dispatcher first and subscribes again after: the new
    /// subscription starts at the new position.
    async fn rewind(
        &self,
        subscription: &ObjectKey,
        to: RewindTo,
        dry_run: bool,
    ) -> Result<Rewound, RewindError>;

    /// Where the trigger stands, if it is subscribed.
    fn lag(&self, trigger: &ObjectKey) -> Option<SubscriptionLag>;

    /// Whether the backend can store and deliver now, or why not: a backend
    /// that talks to a server (RabbitMQ, Kafka) reports its connection,
    /// NotReady with [`BACKEND_UNAVAILABLE`]. The broker's status shows it
    /// between applies. Local backends are Ready while they run.
    fn health(&self) -> Health {
        Health::Ready
    }

    /// Persists what must survive a restart (cursors) and stops background work.
    async fn shutdown(&self);

    /// Removes everything the backend stored for this broker (Broker deleted).
    async fn destroy(&self) -> Result<(), BackendError>;

    /// Follows the broker's events as they are stored, from `from`, for
    /// `pilotlight tail` and the console: a reader of its own that
    /// acknowledges and commits nothing, so it changes no trigger's position
    /// and never makes an append wait. A backend that cannot be read this
    /// way says why with [`TailError::Unsupported`].
    async fn tail(&self, from: TailStart) -> Result<Box<dyn TailStream>, TailError>;
}

/// Where a tail starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailStart {
    /// With the next event stored after the tail opened.
    Now,
    /// With the oldest event the backend still holds that was stored at or
    /// after this time (its append time, not the event's `time`).
    Since(chrono::DateTime<chrono::Utc>),
}

/// What a tail reads next.
#[derive(Debug, Clone)]
pub enum TailItem {
    Event(Arc<Event>),
    /// This many events were stored but are gone before the tail read them
    /// (retention, or the memory backend dropped them once delivered).
    Skipped(u64),
}

/// A broker's events as they are stored; see [`Backend::tail`].
#[async_trait]
pub trait TailStream: Send {
    /// The next item, waiting until there is one. `None` once the backend
    /// stopped (the broker was deleted or changed backend). Cancel-safe: a
    /// call dropped before it returned loses nothing.
    async fn next(&mut self) -> Option<TailItem>;
}

/// Why a tail could not open.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// This backend cannot be followed this way; the message says why.
    #[error("{0}")]
    Unsupported(String),
    /// The backend could not open a reader now (its server, its disk).
    #[error("{0}")]
    Unavailable(String),
}

/// The stream of events for one trigger.
#[async_trait]
pub trait Subscription: Send {
    /// The next event for the trigger, waiting until there is one. `None` once
    /// the subscription was replaced or the backend shut down.
    async fn next(&mut self) -> Option<Delivery>;
}

/// An event handed to a trigger's dispatcher, owed an acknowledgement.
pub struct Delivery {
    pub event: Arc<Event>,
    /// Ordering domain: events of one lane are delivered one at a time when
    /// the trigger is ordered.
    pub lane: u32,
    ack: Box<dyn Acknowledge>,
}

impl Delivery {
    pub(crate) fn new(event: Arc<Event>, lane: u32, ack: Box<dyn Acknowledge>) -> Self {
        Delivery { event, lane, ack }
    }

    /// Marks the event done for this trigger (delivered or dead-lettered).
    pub(crate) async fn ack(self) {
        self.ack.ack().await
    }
}

/// How a backend learns that a delivery is done.
#[async_trait]
pub trait Acknowledge: Send + Sync {
    async fn ack(self: Box<Self>);
}
