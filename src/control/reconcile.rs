//! Reconciling desired state (the loaded manifests) into running brokers and
//! trigger dispatchers, idempotently: an object whose resolved plan did not
//! change keeps running untouched, so a reload loses nothing and restarts
//! nothing it need not.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::Uri;
use tokio::sync::watch;

use super::serving::ServingControl;
use super::sources::{DesiredSource, SourceControl};
use crate::api::ObjectKey;
use crate::api::broker::BrokerClass;
use crate::api::duck::Destination;
use crate::api::index::ObjectIndex;
use crate::api::manifest::{Loaded, ManifestError, Manifests};
use crate::api::trigger::DeliveryOrder;
use crate::api::{Broker, Resource, Trigger};

type BuildSource = Box<dyn FnOnce() -> Box<dyn crate::eventing::source::Source> + Send>;
use crate::api::pod::ConfigKind;
use crate::api::rabbitmq::QueueType;
use crate::api::status::{Address, ObjectList, ObjectView, Status, ViewMeta};
use crate::backoff::Backoff;
use crate::eventing::backend::kafka::{self as kafka_backend, KafkaConfig};
use crate::eventing::backend::log::{self as log_backend, LogConfig};
use crate::eventing::backend::memory::{self as memory_backend, MemoryConfig};
use crate::eventing::backend::rabbitmq::config::{self as rabbitmq_config, RabbitConnectionConfig};
use crate::eventing::backend::rabbitmq::{self as rabbitmq_backend};
use crate::eventing::backend::{Backend, SubscriptionSpec};
use crate::eventing::broker::{BrokerEntry, BrokerHandle, BrokerRegistry};
use crate::eventing::delivery::{DeliveryPolicy, EventSender};
use crate::eventing::trigger::dispatcher::{self, Dispatcher, TriggerPlan};
use crate::serving::runtime::config::{ConfigData, ConfigObjects};

/// Settings that apply to every object.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    /// Base URL of the ingress, for broker addresses (`http://127.0.0.1:8080`).
    pub ingress_url: String,
    pub default_class: BrokerClass,
    pub log: LogConfig,
    pub memory: MemoryConfig,
    /// Deliveries in flight per unordered trigger, unless annotated.
    pub max_in_flight: usize,
    /// The RabbitMQ of RabbitMQBrokers without `spec.config` and of
    /// RabbitmqSources without a cluster reference (`--rabbitmq-uri`).
    pub rabbitmq_uri: Option<String>,
    /// Bootstrap servers of Kafka brokers without `spec.config`.
    pub kafka_bootstrap_servers: Option<String>,
}

struct RunningBroker {
    broker: Broker,
    class: BrokerClass,
    plan: BackendPlan,
    handle: Arc<BrokerHandle>,
}

/// Where and how a broker's backend runs, resolved from its class, its
/// `spec.config` and pilotlight's settings. A broker whose plan did not change
/// keeps its backend across a reload.
#[derive(Debug, Clone, PartialEq)]
enum BackendPlan {
    Log {
        dir: PathBuf,
    },
    Memory,
    RabbitMq {
        broker: ObjectKey,
        connection: RabbitConnectionConfig,
    },
    Kafka(KafkaConfig),
}

/// Dropping one aborts its dispatcher (see [`Dispatcher`]).
struct RunningTrigger {
    plan: Arc<TriggerPlan>,
    broker: Arc<BrokerHandle>,
    dispatcher: Dispatcher,
}

/// The reason of a broker whose backend did not start: tried again later.
const BACKEND_FAILED: &str = "BackendFailed";
/// First and longest pause before starting failed backends again.
const BACKEND_RETRY_START: Duration = Duration::from_secs(1);
const BACKEND_RETRY_MAX: Duration = Duration::from_secs(30);
/// How long shutdown lets in-flight deliveries finish, so that a clean stop
/// does not deliver them twice.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Running {
    brokers: BTreeMap<ObjectKey, RunningBroker>,
    triggers: BTreeMap<ObjectKey, RunningTrigger>,
}

#[derive(Default)]
struct Board {
    brokers: BTreeMap<ObjectKey, ObjectView>,
    triggers: BTreeMap<ObjectKey, ObjectView>,
    errors: Vec<ManifestError>,
}

/// The control plane of `pilotlight run`.
pub struct ControlPlane {
    settings: Settings,
    registry: Arc<BrokerRegistry>,
    sender: EventSender,
    serving: Arc<ServingControl>,
    sources: SourceControl,
    running: tokio::sync::Mutex<Running>,
    board: RwLock<Board>,
    /// Whether the last apply left a broker whose backend failed to start
    /// (its Kafka not up yet, say); [`ControlPlane::retry_failed_backends`]
    /// applies again while it does.
    backends_failed: watch::Sender<bool>,
    /// Held through each apply, so that applies never interleave and none
    /// starts after shutdown.
    applying: tokio::sync::Mutex<Applying>,
}

/// What the apply lock guards.
#[derive(Default)]
struct Applying {
    /// The manifests of the last apply, for a retry.
    latest: Option<Arc<Manifests>>,
    stopped: bool,
}

impl ControlPlane {
    pub fn new(
        settings: Settings,
        registry: Arc<BrokerRegistry>,
        sender: EventSender,
        serving: Arc<ServingControl>,
    ) -> Self {
        ControlPlane {
            sources: SourceControl::new(sender.clone(), settings.data_dir.clone()),
            settings,
            registry,
            sender,
            serving,
            running: tokio::sync::Mutex::new(Running::default()),
            backends_failed: watch::channel(false).0,
            applying: tokio::sync::Mutex::default(),
            board: RwLock::new(Board::default()),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn serving(&self) -> &Arc<ServingControl> {
        &self.serving
    }

    /// Whether the last apply left a broker whose backend failed to start.
    fn has_failed_backends(&self) -> bool {
        *self.backends_failed.borrow()
    }

    /// Applies the latest manifests again while a broker's backend fails to
    /// start (a Kafka that comes up after pilotlight, say), with backoff,
    /// until they all started or the control plane stops. Neither the
    /// files nor the API server change then, so nothing else would.
    pub fn retry_failed_backends(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let control = Arc::downgrade(self);
        let mut failed = self.backends_failed.subscribe();
        tokio::spawn(async move {
            let mut backoff = Backoff::new(BACKEND_RETRY_START, BACKEND_RETRY_MAX);
            loop {
                if failed.wait_for(|failed| *failed).await.is_err() {
                    return;
                }
                tokio::time::sleep(backoff.next_delay()).await;
                let Some(control) = control.upgrade() else {
                    return;
                };
                let mut applying = control.applying.lock().await;
                if applying.stopped {
                    return;
                }
                if let Some(latest) = applying.latest.clone()
                    && control.has_failed_backends()
                {
                    tracing::info!("starting the backends that failed to start again");
                    control.apply_locked(&mut applying, latest).await;
                }
                if !control.has_failed_backends() {
                    backoff.reset();
                }
            }
        })
    }

    /// Brings the running state to the manifests.
    pub async fn apply(&self, manifests: Arc<Manifests>) {
        for error in &manifests.errors {
            tracing::error!("manifest refused: {error}");
        }
        let mut applying = self.applying.lock().await;
        if applying.stopped {
            return;
        }
        self.apply_locked(&mut applying, manifests).await;
    }

    /// [`ControlPlane::apply`] under the apply lock; a retry of failed
    /// backends comes here too, without logging the refusals again.
    async fn apply_locked(&self, applying: &mut Applying, manifests: Arc<Manifests>) {
        applying.latest = Some(manifests.clone());
        let manifests = &*manifests;
        let mut brokers = BTreeMap::new();
        let mut triggers = BTreeMap::new();
        let mut services = Vec::new();
        let mut sources = Vec::new();
        for loaded in &manifests.objects {
            match &loaded.resource {
                Resource::Broker(b) => {
                    brokers.insert(b.metadata.key(), loaded);
                }
                Resource::Trigger(t) => {
                    triggers.insert(t.metadata.key(), loaded);
                }
                Resource::Service(_) => services.push(loaded),
                Resource::PingSource(_)
                | Resource::ApiServerSource(_)
                | Resource::RabbitmqSource(_)
                | Resource::KafkaSource(_) => sources.push(loaded),
                // Read through the object index by whatever refers to them.
                Resource::ConfigMap(_)
                | Resource::Secret(_)
                | Resource::RabbitmqBrokerConfig(_) => {}
            };
        }
        // Services first, so that triggers can resolve references to them.
        self.serving
            .apply(&services, config_objects(manifests))
            .await;
        let index = ObjectIndex::new(manifests);
        let mut running = self.running.lock().await;
        self.remove_brokers(&mut running, &brokers).await;
        let mut broker_views = BTreeMap::new();
        let mut backends_failed = false;
        for (key, loaded) in &brokers {
            let Resource::Broker(broker) = &loaded.resource else {
                continue;
            };
            let status = self
                .reconcile_broker(&mut running, key, broker, &index)
                .await;
            backends_failed |= status.has_reason(BACKEND_FAILED);
            broker_views.insert(key.clone(), view(loaded, status));
        }
        self.backends_failed.send_replace(backends_failed);
        self.remove_triggers(&mut running, &triggers).await;
        let mut trigger_views = BTreeMap::new();
        for (key, loaded) in &triggers {
            let Resource::Trigger(trigger) = &loaded.resource else {
                continue;
            };
            let status = self
                .reconcile_trigger(&mut running, key, trigger, &brokers)
                .await;
            trigger_views.insert(key.clone(), view(loaded, status));
        }
        let desired = sources
            .iter()
            .filter_map(|loaded| self.desired_source(loaded, &brokers, &index))
            .collect();
        self.sources.apply(desired).await;
        let mut board = self.board.write().unwrap_or_else(|e| e.into_inner());
        carry_times(&mut broker_views, &board.brokers);
        carry_times(&mut trigger_views, &board.triggers);
        *board = Board {
            brokers: broker_views,
            triggers: trigger_views,
            errors: manifests.errors.clone(),
        };
    }

    async fn remove_brokers(&self, running: &mut Running, desired: &BTreeMap<ObjectKey, &Loaded>) {
        let gone: Vec<ObjectKey> = running
            .brokers
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            running.triggers.retain(|_, t| t.plan.broker != key);
            self.registry.remove(&key);
            if let Some(old) = running.brokers.remove(&key) {
                tracing::info!(broker = %key, "broker deleted; removing its events");
                if let Err(e) = old.handle.backend.destroy().await {
                    tracing::error!(broker = %key, error = %e, "removing the broker's data failed");
                }
            }
        }
    }

    async fn reconcile_broker(
        &self,
        running: &mut Running,
        key: &ObjectKey,
        broker: &Broker,
        index: &ObjectIndex<'_>,
    ) -> Status {
        // Classes were validated at load.
        let class = BrokerClass::of(broker, self.settings.default_class)
            .unwrap_or(self.settings.default_class);
        let plan = match self.backend_plan(key, broker, class, index) {
            Ok(plan) => plan,
            Err(reason) => {
                if let Some(current) = running.brokers.get_mut(key) {
                    // Keep what was accepted flowing until the config is fixed.
                    current.broker = broker.clone();
                    return Status::not_ready(
                        "BrokerConfigInvalid",
                        format!("{reason} (the broker keeps running with its previous config)"),
                    );
                }
                self.registry.insert(
                    key,
                    BrokerEntry::NotReady {
                        reason: reason.clone(),
                    },
                );
                return Status::not_ready("BrokerConfigInvalid", reason);
            }
        };
        if let Some(current) = running.brokers.get_mut(key) {
            if current.plan == plan {
                current.broker = broker.clone();
                return self.broker_status(key);
            }
            running.triggers.retain(|_, t| t.plan.broker != *key);
            if let Some(old) = running.brokers.remove(key) {
                if old.class == class {
                    tracing::info!(broker = %key, "broker config changed; restarting its backend");
                    old.handle.backend.shutdown().await;
                } else {
                    tracing::warn!(broker = %key, "broker class changed; its stored events are removed");
                    let _ = old.handle.backend.destroy().await;
                }
            }
        }
        match self.start_backend(&plan).await {
            Ok(backend) => {
                let handle = Arc::new(BrokerHandle::new(key.clone(), backend));
                self.registry
                    .insert(key, BrokerEntry::Ready(handle.clone()));
                running.brokers.insert(
                    key.clone(),
                    RunningBroker {
                        broker: broker.clone(),
                        class,
                        plan,
                        handle,
                    },
                );
                tracing::info!(broker = %key, class = ?class, "broker ready");
                self.broker_status(key)
            }
            Err(reason) => {
                tracing::error!(broker = %key, error = %reason, "broker failed to start");
                self.registry.insert(
                    key,
                    BrokerEntry::NotReady {
                        reason: reason.clone(),
                    },
                );
                Status::not_ready(BACKEND_FAILED, reason)
            }
        }
    }

    /// Resolves the broker's backend settings; an error names the field or
    /// reference that is wrong.
    fn backend_plan(
        &self,
        key: &ObjectKey,
        broker: &Broker,
        class: BrokerClass,
        index: &ObjectIndex<'_>,
    ) -> Result<BackendPlan, String> {
        Ok(match class {
            BrokerClass::Log => BackendPlan::Log {
                dir: self
                    .settings
                    .data_dir
                    .join("brokers")
                    .join(&key.namespace)
                    .join(&key.name),
            },
            BrokerClass::Memory => BackendPlan::Memory,
            BrokerClass::RabbitMq => BackendPlan::RabbitMq {
                broker: key.clone(),
                connection: self.rabbitmq_connection(broker, index)?,
            },
            BrokerClass::Kafka => BackendPlan::Kafka(kafka_backend::config::resolve(
                key,
                broker,
                index,
                self.settings.kafka_bootstrap_servers.as_deref(),
            )?),
        })
    }

    /// A RabbitMQBroker's connection: its `spec.config` RabbitmqBrokerConfig,
    /// or pilotlight's `--rabbitmq-uri`.
    fn rabbitmq_connection(
        &self,
        broker: &Broker,
        index: &ObjectIndex<'_>,
    ) -> Result<RabbitConnectionConfig, String> {
        let default_uri = self.settings.rabbitmq_uri.as_deref();
        let Some(reference) = &broker.spec.config else {
            let uri = default_uri.ok_or(
                "a RabbitMQBroker needs a RabbitMQ: set spec.config to a RabbitmqBrokerConfig (eventing.knative.dev/v1alpha1), or start pilotlight with --rabbitmq-uri (PILOTLIGHT_RABBITMQ_URI)",
            )?;
            return RabbitConnectionConfig::from_uri(uri, QueueType::default())
                .map_err(|e| format!("--rabbitmq-uri: {e}"));
        };
        if reference.kind != crate::api::rabbitmq::KIND
            || reference.api_version != crate::api::rabbitmq::API_VERSION
        {
            return Err(format!(
                "spec.config: a RabbitMQBroker's config is a {} ({}), not {} ({})",
                crate::api::rabbitmq::KIND,
                crate::api::rabbitmq::API_VERSION,
                reference.kind,
                reference.api_version
            ));
        }
        let namespace = reference
            .namespace
            .clone()
            .unwrap_or_else(|| broker.metadata.namespace().to_owned());
        let config = index
            .rabbitmq_broker_config(&ObjectKey::new(namespace, reference.name.clone()))
            .map_err(|e| format!("spec.config: {e}"))?;
        config.resolve(index, default_uri)
    }

    async fn start_backend(&self, plan: &BackendPlan) -> Result<Arc<dyn Backend>, String> {
        match plan {
            BackendPlan::Log { dir } => log_backend::start(dir, &self.settings.log)
                .map(|b| Arc::new(b) as Arc<dyn Backend>)
                .map_err(|e| e.to_string()),
            BackendPlan::Memory => memory_backend::start(&self.settings.memory)
                .map(|b| Arc::new(b) as Arc<dyn Backend>)
                .map_err(|e| e.to_string()),
            BackendPlan::RabbitMq { broker, connection } => {
                rabbitmq_backend::start(broker, connection.clone())
                    .await
                    .map(|b| Arc::new(b) as Arc<dyn Backend>)
            }
            BackendPlan::Kafka(config) => kafka_backend::start(config)
                .await
                .map(|b| Arc::new(b) as Arc<dyn Backend>)
                .map_err(|e| e.to_string()),
        }
    }

    fn broker_status(&self, key: &ObjectKey) -> Status {
        let mut status = Status::ready();
        status.address = Some(Address {
            url: self.broker_url(key),
        });
        status
    }

    fn broker_url(&self, key: &ObjectKey) -> String {
        format!(
            "{}/{}/{}",
            self.settings.ingress_url, key.namespace, key.name
        )
    }

    async fn remove_triggers(&self, running: &mut Running, desired: &BTreeMap<ObjectKey, &Loaded>) {
        let gone: Vec<ObjectKey> = running
            .triggers
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(old) = running.triggers.remove(&key) {
                tracing::info!(trigger = %key, "trigger deleted");
                if let Err(e) = old.broker.backend.unsubscribe(&key).await {
                    tracing::error!(trigger = %key, error = %e, "removing the trigger's subscription failed");
                }
            }
        }
    }

    async fn reconcile_trigger(
        &self,
        running: &mut Running,
        key: &ObjectKey,
        trigger: &Trigger,
        brokers: &BTreeMap<ObjectKey, &Loaded>,
    ) -> Status {
        let plan = match self.plan(key, trigger, running, brokers) {
            Ok(plan) => plan,
            Err(status) => {
                // Stop delivering but keep the cursor: the trigger resumes where
                // it stopped once its problem is fixed.
                running.triggers.remove(key);
                return *status;
            }
        };
        let Some(broker) = running.brokers.get(&plan.broker).map(|b| b.handle.clone()) else {
            return Status::not_ready(
                "BrokerNotReady",
                format!("broker {} is not ready", plan.broker),
            );
        };
        let unchanged = running.triggers.get(key).is_some_and(|t| {
            *t.plan == plan && Arc::ptr_eq(&t.broker, &broker) && !t.dispatcher.is_finished()
        });
        if !unchanged {
            // Stop the old dispatcher before resubscribing: its unacknowledged
            // deliveries come again through the new subscription.
            running.triggers.remove(key);
            let spec = SubscriptionSpec {
                trigger: key.clone(),
                filter: plan.filter.clone(),
                max_in_flight: plan.max_in_flight,
            };
            let subscription = match broker.backend.subscribe(spec).await {
                Ok(s) => s,
                Err(e) => return Status::not_ready("SubscribeFailed", e.to_string()),
            };
            let plan = Arc::new(plan.clone());
            let task = dispatcher::spawn(
                plan.clone(),
                subscription,
                broker.clone(),
                self.sender.clone(),
            );
            tracing::info!(trigger = %key, subscriber = %plan.subscriber, "trigger ready");
            running.triggers.insert(
                key.clone(),
                RunningTrigger {
                    plan,
                    broker,
                    dispatcher: task,
                },
            );
        }
        let mut status = Status::ready();
        status.subscriber_uri = Some(plan.subscriber.to_string());
        status
    }

    fn plan(
        &self,
        key: &ObjectKey,
        trigger: &Trigger,
        running: &Running,
        brokers: &BTreeMap<ObjectKey, &Loaded>,
    ) -> Result<TriggerPlan, Box<Status>> {
        let broker_key = ObjectKey::new(key.namespace.clone(), trigger.spec.broker.clone());
        let Some(broker) = running.brokers.get(&broker_key) else {
            return Err(Box::new(if brokers.contains_key(&broker_key) {
                Status::not_ready(
                    "BrokerNotReady",
                    format!("broker {broker_key} is not ready"),
                )
            } else {
                Status::not_ready(
                    "BrokerDoesNotExist",
                    format!("broker {broker_key} does not exist: create it, or fix spec.broker"),
                )
            }));
        };
        let subscriber = self
            .resolve(&trigger.spec.subscriber, &key.namespace, brokers)
            .map_err(|m| {
                Box::new(Status::not_ready(
                    "SubscriberResolveFailed",
                    format!("spec.subscriber: {m}"),
                ))
            })?;
        let delivery_spec = trigger
            .spec
            .delivery
            .as_ref()
            .or(broker.broker.spec.delivery.as_ref());
        let dead_letter_sink = match delivery_spec.and_then(|d| d.dead_letter_sink.as_ref()) {
            None => None,
            Some(sink) => Some(self.resolve(sink, &key.namespace, brokers).map_err(|m| {
                Box::new(Status::not_ready(
                    "DeadLetterSinkResolveFailed",
                    format!("deadLetterSink: {m}"),
                ))
            })?),
        };
        // Validated at load, so these cannot fail here.
        let filter = trigger
            .compile_filter()
            .map_err(|e| Box::new(Status::not_ready("InvalidFilter", e.to_string())))?;
        let mut ordered = trigger
            .delivery_order()
            .is_ok_and(|o| o == DeliveryOrder::Ordered);
        let mut max_in_flight = trigger
            .max_in_flight(self.settings.max_in_flight)
            .unwrap_or(self.settings.max_in_flight);
        if broker.class == BrokerClass::RabbitMq {
            // eventing-rabbitmq's parallelism: prefetch and concurrent
            // deliveries; 1 (the default) delivers in order.
            let parallelism = trigger.rabbitmq_parallelism().unwrap_or(1);
            ordered = parallelism == 1;
            max_in_flight = parallelism;
        }
        Ok(TriggerPlan {
            key: key.clone(),
            broker: broker_key,
            filter: Arc::new(filter),
            subscriber,
            delivery: DeliveryPolicy::from_spec(delivery_spec, dead_letter_sink),
            ordered,
            max_in_flight,
        })
    }

    /// A source object as the source control runs it, with its sink resolved.
    fn desired_source(
        &self,
        loaded: &Loaded,
        brokers: &BTreeMap<ObjectKey, &Loaded>,
        index: &ObjectIndex<'_>,
    ) -> Option<DesiredSource> {
        let (kind, api_version, metadata, sink, spec, build): (_, _, _, _, _, BuildSource) =
            match &loaded.resource {
                Resource::PingSource(p) => {
                    let source = p.clone();
                    (
                        "PingSource",
                        &p.api_version,
                        &p.metadata,
                        &p.spec.sink,
                        serde_json::to_value(&p.spec),
                        Box::new(move || source.into_source()),
                    )
                }
                Resource::ApiServerSource(a) => {
                    let source = a.clone();
                    (
                        "ApiServerSource",
                        &a.api_version,
                        &a.metadata,
                        &a.spec.sink,
                        serde_json::to_value(&a.spec),
                        Box::new(move || source.into_source()),
                    )
                }
                Resource::RabbitmqSource(r) => {
                    let source = r.clone();
                    let uri = rabbitmq_config::resolve_uri(
                        r.spec.rabbitmq_cluster_reference.as_ref(),
                        r.metadata.namespace(),
                        None,
                        index,
                        self.settings.rabbitmq_uri.as_deref(),
                    );
                    (
                        "RabbitmqSource",
                        &r.api_version,
                        &r.metadata,
                        &r.spec.sink,
                        serde_json::to_value(&r.spec),
                        Box::new(move || source.into_source(uri)),
                    )
                }
                Resource::KafkaSource(k) => {
                    let source = k.clone();
                    (
                        "KafkaSource",
                        &k.api_version,
                        &k.metadata,
                        &k.spec.sink,
                        serde_json::to_value(&k.spec),
                        Box::new(move || source.into_source()),
                    )
                }
                _ => return None,
            };
        let key = metadata.key();
        Some(DesiredSource {
            kind,
            api_version: api_version.clone(),
            annotations: metadata.annotations.clone(),
            origin: loaded.origin.to_string(),
            spec: spec.unwrap_or_default(),
            sink: self.resolve(sink, &key.namespace, brokers),
            key,
            build,
        })
    }

    /// A destination's URI: its `uri`, or its reference's address with `uri`
    /// appended as a path (Knative's rule).
    fn resolve(
        &self,
        destination: &Destination,
        namespace: &str,
        brokers: &BTreeMap<ObjectKey, &Loaded>,
    ) -> Result<Uri, String> {
        let Some(reference) = &destination.reference else {
            let uri = destination.uri.as_deref().unwrap_or_default();
            return uri
                .parse()
                .map_err(|e| format!("'{uri}' is not a URI: {e}"));
        };
        let ref_namespace = reference.namespace.as_deref().unwrap_or(namespace);
        let key = ObjectKey::new(ref_namespace, reference.name.clone());
        let base = match (reference.api_version.as_str(), reference.kind.as_str()) {
            ("eventing.knative.dev/v1", "Broker") if brokers.contains_key(&key) => {
                self.broker_url(&key)
            }
            ("eventing.knative.dev/v1", "Broker") => {
                return Err(format!("broker {key} does not exist"));
            }
            ("serving.knative.dev/v1", "Service") => match self.serving.service_url(&key) {
                Some(url) => url,
                None => return Err(format!("service {key} does not exist")),
            },
            (api_version, kind) => {
                return Err(format!(
                    "cannot resolve a reference to {kind} ({api_version}) {key}: pilotlight resolves references to Brokers (eventing.knative.dev/v1) and Services (serving.knative.dev/v1); use 'uri' for other destinations"
                ));
            }
        };
        let path = destination.uri.as_deref().unwrap_or("");
        let joined = match (base.ends_with('/'), path.starts_with('/')) {
            (true, true) => format!("{base}{}", &path[1..]),
            (false, false) if !path.is_empty() => format!("{base}/{path}"),
            _ => format!("{base}{path}"),
        };
        joined
            .parse()
            .map_err(|e| format!("'{joined}' is not a URI: {e}"))
    }

    /// Brokers with status, for the admin API.
    pub fn brokers(&self, namespace: Option<&str>) -> ObjectList {
        let board = self.board.read().unwrap_or_else(|e| e.into_inner());
        let items = board
            .brokers
            .iter()
            .filter(|(k, _)| in_namespace(k, namespace))
            .map(|(_, v)| v.clone())
            .collect();
        ObjectList::new(items, &board.errors)
    }

    /// The status the last apply gave one Broker or Trigger, without live
    /// figures (no backlog, so no lock on the running state): what a status
    /// write in Kubernetes mode needs. None for other kinds.
    pub fn applied_status(&self, kind: &str, key: &ObjectKey) -> Option<Status> {
        let board = self.board.read().unwrap_or_else(|e| e.into_inner());
        let views = match kind {
            "Broker" => &board.brokers,
            "Trigger" => &board.triggers,
            _ => return None,
        };
        views.get(key).map(|view| view.status.clone())
    }

    /// Serving objects with the refused manifests, for the admin API.
    pub fn serving_list(&self, items: Vec<ObjectView>) -> ObjectList {
        let board = self.board.read().unwrap_or_else(|e| e.into_inner());
        ObjectList::new(items, &board.errors)
    }

    /// Triggers with status and live backlog, for the admin API.
    pub async fn triggers(&self, namespace: Option<&str>) -> ObjectList {
        let lags: BTreeMap<ObjectKey, _> = {
            let running = self.running.lock().await;
            running
                .triggers
                .iter()
                .filter_map(|(k, t)| Some((k.clone(), t.broker.backend.lag(k)?)))
                .collect()
        };
        let board = self.board.read().unwrap_or_else(|e| e.into_inner());
        let items = board
            .triggers
            .iter()
            .filter(|(k, _)| in_namespace(k, namespace))
            .map(|(k, v)| {
                let mut v = v.clone();
                if let Some(lag) = lags.get(k) {
                    v.status.backlog = Some(lag.backlog);
                    v.status.lost_to_retention = Some(lag.lost_to_retention);
                }
                v
            })
            .collect();
        ObjectList::new(items, &board.errors)
    }

    /// Publishes each trigger's backlog as a gauge.
    pub async fn record_backlog(&self) {
        let running = self.running.lock().await;
        for (key, trigger) in &running.triggers {
            if let Some(lag) = trigger.broker.backend.lag(key) {
                metrics::gauge!("pilotlight_trigger_backlog", "trigger" => key.to_string())
                    .set(lag.backlog as f64);
            }
        }
    }

    /// Stops every dispatcher and backend, saving cursors. No apply runs
    /// after it.
    pub async fn shutdown(&self) {
        self.applying.lock().await.stopped = true;
        // Sources first: they send to brokers and services that stop below.
        self.sources.shutdown().await;
        let mut running = self.running.lock().await;
        let draining = std::mem::take(&mut running.triggers)
            .into_values()
            .map(|t| t.dispatcher.drain(SHUTDOWN_GRACE));
        futures::future::join_all(draining).await;
        for (key, broker) in std::mem::take(&mut running.brokers) {
            self.registry.remove(&key);
            broker.handle.backend.shutdown().await;
        }
        self.serving.shutdown().await;
    }

    /// Sources with status, for the admin API.
    pub async fn sources(&self, namespace: Option<&str>) -> ObjectList {
        let items = self.sources.views(namespace).await;
        self.serving_list(items)
    }
}

fn in_namespace(key: &ObjectKey, namespace: Option<&str>) -> bool {
    namespace.is_none_or(|ns| key.namespace == ns)
}

fn view(loaded: &Loaded, status: Status) -> ObjectView {
    let (api_version, kind, metadata, spec) = match &loaded.resource {
        Resource::Broker(b) => (
            &b.api_version,
            &b.kind,
            &b.metadata,
            serde_json::to_value(&b.spec),
        ),
        Resource::Trigger(t) => (
            &t.api_version,
            &t.kind,
            &t.metadata,
            serde_json::to_value(&t.spec),
        ),
        Resource::Service(s) => (
            &s.api_version,
            &s.kind,
            &s.metadata,
            serde_json::to_value(&s.spec),
        ),
        Resource::PingSource(p) => (
            &p.api_version,
            &p.kind,
            &p.metadata,
            serde_json::to_value(&p.spec),
        ),
        Resource::ApiServerSource(a) => (
            &a.api_version,
            &a.kind,
            &a.metadata,
            serde_json::to_value(&a.spec),
        ),
        Resource::KafkaSource(k) => (
            &k.api_version,
            &k.kind,
            &k.metadata,
            serde_json::to_value(&k.spec),
        ),
        Resource::ConfigMap(c) => (
            &c.api_version,
            &c.kind,
            &c.metadata,
            serde_json::to_value(&c.data),
        ),
        // Never show a secret's values.
        Resource::Secret(s) => (&s.api_version, &s.kind, &s.metadata, Ok(Default::default())),
        Resource::RabbitmqBrokerConfig(c) => (
            &c.api_version,
            &c.kind,
            &c.metadata,
            serde_json::to_value(&c.spec),
        ),
        Resource::RabbitmqSource(r) => (
            &r.api_version,
            &r.kind,
            &r.metadata,
            serde_json::to_value(&r.spec),
        ),
    };
    ObjectView {
        api_version: api_version.clone(),
        kind: kind.clone(),
        metadata: ViewMeta {
            name: metadata.name.clone(),
            namespace: metadata.namespace().to_owned(),
            annotations: metadata.annotations.clone(),
            source: loaded.origin.to_string(),
        },
        spec: spec.unwrap_or_default(),
        status,
    }
}

fn carry_times(new: &mut BTreeMap<ObjectKey, ObjectView>, old: &BTreeMap<ObjectKey, ObjectView>) {
    for (key, view) in new.iter_mut() {
        view.status
            .carry_transition_times(old.get(key).map(|v| &v.status));
    }
}

/// The loaded Secrets and ConfigMaps, as the local runtimes read them.
fn config_objects(manifests: &Manifests) -> ConfigObjects {
    let mut objects = ConfigObjects::default();
    for loaded in &manifests.objects {
        let (kind, data) = match &loaded.resource {
            Resource::Secret(secret) => (
                ConfigKind::Secret,
                ConfigData {
                    entries: secret.entries(),
                    secret_type: secret.secret_type.clone(),
                },
            ),
            Resource::ConfigMap(map) => (
                ConfigKind::ConfigMap,
                ConfigData {
                    entries: map.entries(),
                    secret_type: None,
                },
            ),
            _ => continue,
        };
        objects.insert(kind, loaded.resource.metadata().key(), data);
    }
    objects
}
