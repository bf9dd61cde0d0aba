//! Reconciling brokers, triggers and sources: the loaded objects in, running
//! backends, dispatchers and sources out, with each object's status.
//!
//! Each step is the same shape: [`plan`] decides, as plain functions, what
//! should run and what to do about what runs ([`plan::broker_action`],
//! [`plan::trigger_action`]); the controller carries the actions out.
//! Idempotent: an object whose resolved plan did not change keeps running
//! untouched, so a reload loses nothing and restarts nothing it need not.

pub(crate) mod plan;
pub(crate) mod policies;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::api::broker::{BrokerClass, CLASS_ANNOTATION};
use crate::api::index::ObjectIndex;
use crate::api::manifest::Loaded;
use crate::api::status::{
    MessagingStatus, ObjectView, PhysicalSubscription, Status, SubscriberStatus,
};
use crate::api::subscription::Subscription;
use crate::api::{Broker, ObjectKey, Resource, Trigger};
use crate::auth::Gate;
use crate::cloudevent::Event;
use crate::desired::take_gone;
use crate::eventing::backend::log::LogConfig;
use crate::eventing::backend::memory::MemoryConfig;
use crate::eventing::backend::{
    self, BACKEND_FAILED, BACKEND_UNAVAILABLE, Backend, BackendPlan, ChannelTopic, PlanContext,
    RewindError, RewindTo, Rewound, SubscriptionSpec,
};
use crate::eventing::broker::{BrokerEntry, BrokerHandle, BrokerRegistry};
use crate::eventing::delivery::EventSender;
use crate::eventing::health::{Health, HealthCell};
use crate::eventing::source::controller::{DesiredSource, SourceController};
use crate::eventing::source::{self, BuildContext, PingClock, Replication};
use crate::eventing::trigger::dispatcher::{self, Dispatcher, ReplyTo, TriggerPlan};
use crate::eventing::trigger::journal::{DeliveryJournal, EventDeliveries};
use crate::eventing::{channel, flows};
use plan::Addresses;
use plan::{BrokerAction, Destinations, RunningDispatcher, TriggerAction, TriggerBroker};

/// A Broker as `get brokers` shows it: with its class annotation filled in
/// when it has none, as Knative's webhook defaults it, so the class is
/// always visible (and `KafkaNamespaced` stays itself, though it runs as
/// `Kafka`).
fn broker_view(
    loaded: &Loaded,
    broker: &Broker,
    status: Status,
    default_class: BrokerClass,
) -> ObjectView {
    let mut view = ObjectView::of(loaded, status);
    view.metadata.annotations.insert(
        CLASS_ANNOTATION.to_owned(),
        BrokerClass::name_of(broker, default_class),
    );
    view
}

/// The reasons of an apply's broker whose backend did not start: it is
/// tried again later. (A started backend that loses its server shows
/// BackendUnavailable live, and is not started again: it reconnects.)
const START_FAILED: [&str; 2] = [BACKEND_FAILED, BACKEND_UNAVAILABLE];
/// How long shutdown lets in-flight deliveries finish, so that a clean stop
/// does not deliver them twice.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long a replay lets the deliveries in flight finish before it moves
/// the position back (what is still in flight then comes again anyway).
const REPLAY_GRACE: Duration = Duration::from_secs(2);

/// What a replay moves back: a Trigger, or a channel's Subscription (both
/// run on the same dispatchers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivering {
    Trigger,
    Subscription,
}

impl Delivering {
    fn noun(self) -> &'static str {
        match self {
            Delivering::Trigger => "trigger",
            Delivering::Subscription => "subscription",
        }
    }
}

/// Why a replay did not happen.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReplayError {
    /// No such trigger or subscription runs.
    #[error("{0}")]
    Unknown(String),
    #[error(transparent)]
    Rewind(#[from] RewindError),
}

/// Settings of the eventing half.
#[derive(Debug, Clone)]
pub(crate) struct EventingSettings {
    pub data_dir: PathBuf,
    /// Base URL of the ingress, for broker addresses (`http://127.0.0.1:8080`),
    /// in https when the transport-encryption level serves it.
    pub ingress_url: String,
    /// The main listener's transport-encryption level: which of the
    /// ingress's addresses status shows.
    pub transport: crate::tls::TransportEncryption,
    pub default_class: BrokerClass,
    pub log: LogConfig,
    pub memory: MemoryConfig,
    /// The largest event a broker takes, from the ingress or as a reply
    /// (`--max-event-size`).
    pub max_event_bytes: usize,
    /// Deliveries in flight per unordered trigger, unless annotated.
    pub max_in_flight: usize,
    /// The RabbitMQ of RabbitMQBrokers without `spec.config` and of
    /// RabbitmqSources without a cluster reference (`--rabbitmq-uri`).
    pub rabbitmq_uri: Option<String>,
    /// Bootstrap servers of Kafka brokers without `spec.config`.
    pub kafka_bootstrap_servers: Option<String>,
    /// The API server of ApiServerSources (`--kubeconfig`); None for kube's
    /// inference.
    pub kubeconfig: Option<PathBuf>,
    /// The clock PingSources tick on.
    pub ping_clock: PingClock,
    /// This replica's stable name (the pod's, or one kept in the data
    /// folder), for Kafka's static group membership.
    pub replica: String,
}

/// The objects of one apply that this controller reconciles.
#[derive(Default)]
pub(crate) struct EventingObjects<'a> {
    pub brokers: BTreeMap<ObjectKey, &'a Loaded>,
    pub triggers: BTreeMap<ObjectKey, &'a Loaded>,
    pub sources: Vec<&'a Loaded>,
    /// Every channel kind, with the channels flows made.
    pub channels: Vec<&'a Loaded>,
    pub subscriptions: BTreeMap<ObjectKey, &'a Loaded>,
    pub flows: Vec<&'a Loaded>,
    /// Objects addressed by a channel they own (JobSinks), with that
    /// channel.
    pub addressed: Vec<(&'a Loaded, ObjectKey)>,
    /// EventPolicies.
    pub policies: Vec<&'a Loaded>,
}

struct RunningBroker {
    broker: Broker,
    plan: Box<dyn BackendPlan>,
    handle: Arc<BrokerHandle>,
}

/// Dropping one aborts its dispatcher (see [`Dispatcher`]).
struct RunningTrigger {
    plan: Arc<TriggerPlan>,
    broker: Arc<BrokerHandle>,
    dispatcher: Dispatcher,
    /// Whether its dead-letter sink takes events, as its dispatcher last
    /// found it: the trigger's status shows a sink that does not.
    dead_letter_health: Arc<HealthCell>,
}

#[derive(Default)]
struct Running {
    /// Brokers, and channels under their store keys
    /// ([`channel::store_key`]).
    brokers: BTreeMap<ObjectKey, RunningBroker>,
    triggers: BTreeMap<ObjectKey, RunningTrigger>,
    subscriptions: BTreeMap<ObjectKey, RunningTrigger>,
}

/// What the last apply said of each broker and trigger, and the backends
/// it left running, whose live health a broker's status shows.
#[derive(Default)]
struct Views {
    brokers: BTreeMap<ObjectKey, ObjectView>,
    triggers: BTreeMap<ObjectKey, ObjectView>,
    backends: BTreeMap<ObjectKey, Arc<dyn Backend>>,
    /// Each trigger's broker, whose live health its status shows too.
    trigger_brokers: BTreeMap<ObjectKey, ObjectKey>,
    /// Each running trigger's dead-letter sink health, shown in its status.
    dead_letters: BTreeMap<ObjectKey, Arc<HealthCell>>,
    /// Channels by kind and key, subscriptions by key; their live health
    /// is their store's, under [`channel::store_key`].
    channels: BTreeMap<(String, ObjectKey), ObjectView>,
    subscriptions: BTreeMap<ObjectKey, ObjectView>,
    /// Each subscription's channel.
    subscription_channels: BTreeMap<ObjectKey, ObjectKey>,
    /// Flows with their addresses; their status is read from their parts'.
    flows: Vec<(Resource, ObjectView)>,
    /// EventPolicies, with what they resolved to.
    policies: BTreeMap<ObjectKey, ObjectView>,
}

impl Views {
    /// A broker's status as the apply left it, with the live health of its
    /// backend: a broker whose RabbitMQ or Kafka went away since is not
    /// Ready, and is again once it is back.
    fn broker_status(&self, key: &ObjectKey, applied: &Status) -> Status {
        match self.backends.get(key) {
            Some(backend) => backend.health().overlay(applied.clone(), "broker"),
            None => applied.clone(),
        }
    }

    /// A trigger's status as the apply left it, not Ready while its broker's
    /// backend is not (Knative's trigger shows its broker's readiness): a
    /// trigger whose RabbitMQ or Kafka went away delivers nothing.
    fn trigger_status(&self, key: &ObjectKey, applied: &Status) -> Status {
        let Some(broker) = self.trigger_brokers.get(key) else {
            return applied.clone();
        };
        let what = format!("broker {broker}");
        let status = self.delivery_status(broker, &what, "BrokerNotReady", applied, "trigger");
        match self.dead_letters.get(key).map(|cell| cell.get()) {
            Some(health @ Health::NotReady { .. }) => health.overlay(status, "trigger"),
            _ => status,
        }
    }

    fn subscription_status(&self, key: &ObjectKey, applied: &Status) -> Status {
        let Some(channel) = self.subscription_channels.get(key) else {
            return applied.clone();
        };
        let what = format!("channel {channel}");
        let store = channel::store_key(channel);
        self.delivery_status(&store, &what, "ChannelNotReady", applied, "subscription")
    }

    /// A trigger's or subscription's status, not Ready (`reason`, naming
    /// `what` it delivers from) while the backend of that store is not.
    fn delivery_status(
        &self,
        store: &ObjectKey,
        what: &str,
        reason: &str,
        applied: &Status,
        kind: &str,
    ) -> Status {
        match self.backends.get(store).map(|backend| backend.health()) {
            Some(Health::NotReady { message, .. }) => {
                Health::not_ready(reason, format!("{what} is not ready: {message}"))
                    .overlay(applied.clone(), kind)
            }
            _ => applied.clone(),
        }
    }

    /// A channel's status: its store's, with each Subscription of it.
    fn channel_status(&self, kind: &str, key: &ObjectKey) -> Option<Status> {
        let view = self.channels.get(&(kind.to_owned(), key.clone()))?;
        let mut status = self.broker_status(&channel::store_key(key), &view.status);
        status.messaging = view.status.messaging.clone();
        Some(status)
    }

    /// A flow's status from its parts' as they are now.
    fn flow_status(&self, resource: &Resource, view: &ObjectView) -> Status {
        let address = view
            .status
            .address
            .as_ref()
            .map(|a| a.url.clone())
            .unwrap_or_default();
        let mut status = flows::status(resource, address, &FlowParts(self));
        status.addresses = view.status.addresses.clone();
        if view.status.addresses.is_some() {
            status.address = view.status.address.clone();
        }
        status
    }
}

/// A flow's parts as [`Views`] has them.
struct FlowParts<'a>(&'a Views);

impl flows::PartStatuses for FlowParts<'_> {
    fn channel(&self, key: &ObjectKey) -> Option<Status> {
        let views = self.0;
        let (kind, _) = views.channels.keys().find(|(_, channel)| channel == key)?;
        views.channel_status(kind, key)
    }

    fn subscription(&self, key: &ObjectKey) -> Option<Status> {
        let view = self.0.subscriptions.get(key)?;
        Some(self.0.subscription_status(key, &view.status))
    }
}

/// The eventing half of the control plane.
pub(crate) struct EventingController {
    settings: EventingSettings,
    registry: Arc<BrokerRegistry>,
    sender: EventSender,
    sources: SourceController,
    /// Kubernetes mode: the cluster's source state, for PingSources.
    cluster_state: Option<Arc<source::cluster_state::ClusterState>>,
    running: tokio::sync::Mutex<Running>,
    views: RwLock<Views>,
    /// How the last deliveries went, for the console.
    journal: Arc<DeliveryJournal>,
    /// Authentication and EventPolicies: the ingress reads the targets
    /// each apply resolves.
    gate: Arc<Gate>,
}

impl EventingController {
    /// `replication` says whether this replica leads, for the sources that
    /// run on the leader only.
    pub(crate) fn new(
        settings: EventingSettings,
        registry: Arc<BrokerRegistry>,
        sender: EventSender,
        replication: Replication,
        gate: Arc<Gate>,
    ) -> Self {
        let sender = sender.with_issuer(gate.issuer().cloned());
        EventingController {
            cluster_state: replication.state.clone(),
            sources: SourceController::new(sender.clone(), settings.data_dir.clone(), replication),
            settings,
            registry,
            sender,
            running: tokio::sync::Mutex::new(Running::default()),
            views: RwLock::new(Views::default()),
            journal: Arc::default(),
            gate,
        }
    }

    pub(crate) fn settings(&self) -> &EventingSettings {
        &self.settings
    }

    /// The running broker `namespace/name`, as its ingress sees it.
    pub(crate) fn broker(&self, namespace: &str, name: &str) -> Option<BrokerEntry> {
        self.registry.get(namespace, name)
    }

    /// Whether this replica leads (always true in file mode).
    pub(crate) fn leading(&self) -> tokio::sync::watch::Receiver<bool> {
        self.sources.leading()
    }

    /// Brings brokers, triggers and sources to `objects`; `addresses` are
    /// theirs ([`EventingController::addresses`]) and `services` gives a
    /// loaded Service's URL, for destinations that refer to one. Returns
    /// whether a broker's backend failed to start (to be tried again).
    pub(crate) async fn apply(
        &self,
        objects: &EventingObjects<'_>,
        addresses: &Addresses,
        index: &ObjectIndex<'_>,
        services: &(dyn Fn(&ObjectKey) -> Option<String> + Sync),
    ) -> bool {
        // Before any dispatcher starts: every delivery trusts the bundles.
        if self.sender.tls().set_trust_bundles(index.trust_bundles()) {
            tracing::info!("trust bundles changed: HTTPS deliveries verify with the new set");
        }
        let loaded_brokers: BTreeSet<ObjectKey> = objects.brokers.keys().cloned().collect();
        let destinations = Destinations {
            ingress_url: &self.settings.ingress_url,
            brokers: &loaded_brokers,
            services,
            addresses,
        };
        let (stores, mut channel_views) = self.stores(objects);
        // Policies first: the ingress and the senders' tokens read the
        // targets' audiences and policies.
        let targets = policies::targets(&stores, objects);
        let mut resolved = policies::resolve(objects, &targets, index);
        let target_auth: BTreeMap<ObjectKey, (String, Vec<String>)> = targets
            .iter()
            .map(|t| {
                let applied = resolved
                    .applied
                    .get(&(t.kind.to_owned(), t.key.clone()))
                    .cloned()
                    .unwrap_or_default();
                (t.path.clone(), (t.audience.clone(), applied))
            })
            .collect();
        drop(targets);
        self.gate.set_targets(std::mem::take(&mut resolved.targets));
        let policy_views: BTreeMap<ObjectKey, ObjectView> = objects
            .policies
            .iter()
            .map(|loaded| {
                let key = loaded.resource.metadata().key();
                let outcome = resolved.policies.get(&key).cloned().unwrap_or_default();
                let view = policies::policy_view(loaded, &outcome, self.gate.enabled());
                (key, view)
            })
            .collect();
        // The channels that run (not refused for a name another kind took).
        let running_channels: BTreeSet<(String, ObjectKey)> =
            stores.values().filter_map(|s| s.channel.clone()).collect();
        let mut running = self.running.lock().await;
        self.remove_brokers(&mut running, &stores).await;
        let mut broker_views = BTreeMap::new();
        let mut backends_failed = false;
        for (key, store) in &stores {
            let status = self
                .reconcile_broker(
                    &mut running,
                    key,
                    &store.broker,
                    store.topic.as_ref(),
                    index,
                )
                .await;
            backends_failed |= START_FAILED.iter().any(|r| status.has_reason(r));
            let mut status = status;
            if let Some((audience, applied)) = target_auth.get(key) {
                policies::decorate_target(
                    &mut status,
                    audience,
                    applied,
                    &resolved,
                    &key.namespace,
                    &self.gate,
                );
            }
            match store.channel {
                None => {
                    let view = broker_view(
                        store.loaded,
                        &store.broker,
                        status,
                        self.settings.default_class,
                    );
                    broker_views.insert(key.clone(), view);
                }
                Some(ref channel) => {
                    channel_views.insert(channel.clone(), ObjectView::of(store.loaded, status));
                }
            }
        }
        self.remove_deliveries(&mut running.triggers, &objects.triggers)
            .await;
        let mut trigger_views = BTreeMap::new();
        let mut trigger_brokers = BTreeMap::new();
        for (key, loaded) in &objects.triggers {
            let Resource::Trigger(trigger) = &loaded.resource else {
                continue;
            };
            let status = self
                .reconcile_trigger(&mut running, key, trigger, &destinations)
                .await;
            trigger_views.insert(key.clone(), ObjectView::of(loaded, status));
            let broker = ObjectKey::new(key.namespace.clone(), trigger.spec.broker.clone());
            trigger_brokers.insert(key.clone(), broker);
        }
        self.remove_deliveries(&mut running.subscriptions, &objects.subscriptions)
            .await;
        let mut subscription_views = BTreeMap::new();
        let mut subscription_channels = BTreeMap::new();
        for (key, loaded) in &objects.subscriptions {
            let Resource::Subscription(subscription) = &loaded.resource else {
                continue;
            };
            let reference = &subscription.spec.channel;
            let channel = ObjectKey::new(key.namespace.clone(), reference.name.clone());
            let of_kind = (reference.kind.clone(), channel.clone());
            let state = ChannelState {
                loaded: channel_views.contains_key(&of_kind),
                runs: running_channels.contains(&of_kind),
            };
            let status = self
                .reconcile_subscription(&mut running, key, subscription, state, &destinations)
                .await;
            subscription_views.insert(key.clone(), ObjectView::of(loaded, status));
            subscription_channels.insert(key.clone(), channel);
        }
        list_subscribers(&mut channel_views, &subscription_views, objects);
        let backends = running
            .brokers
            .iter()
            .map(|(key, broker)| (key.clone(), broker.handle.backend.clone()))
            .collect();
        let dead_letters = running
            .triggers
            .iter()
            .map(|(key, t)| (key.clone(), t.dead_letter_health.clone()))
            .collect();
        drop(running);
        let desired = objects
            .sources
            .iter()
            .filter_map(|loaded| self.desired_source(loaded, &destinations, index))
            .collect();
        self.sources.apply(desired).await;
        let flows = objects
            .flows
            .iter()
            .map(|loaded| {
                let mut status = Status::default();
                if let Some(entry) = flows::entry_channel(&loaded.resource) {
                    let url = channel::channel_url(&self.settings.ingress_url, &entry);
                    status.set_addresses(&url, self.settings.transport);
                }
                (loaded.resource.clone(), ObjectView::of(loaded, status))
            })
            .collect();
        let mut views = self.views.write().unwrap_or_else(|e| e.into_inner());
        carry_times(&mut broker_views, &views.brokers);
        carry_times(&mut trigger_views, &views.triggers);
        carry_times(&mut channel_views, &views.channels);
        carry_times(&mut subscription_views, &views.subscriptions);
        *views = Views {
            brokers: broker_views,
            triggers: trigger_views,
            backends,
            trigger_brokers,
            dead_letters,
            channels: channel_views,
            subscriptions: subscription_views,
            subscription_channels,
            flows,
            policies: policy_views,
        };
        backends_failed
    }

    /// The addresses of the loaded channels and flows, for destinations
    /// that refer to them.
    pub(crate) fn addresses(&self, objects: &EventingObjects<'_>) -> Addresses {
        let ingress = &self.settings.ingress_url;
        let channels = objects.channels.iter().map(|loaded| {
            let key = loaded.resource.metadata().key();
            let url = channel::channel_url(ingress, &key);
            ((loaded.resource.kind().to_owned(), key), url)
        });
        let flows = objects.flows.iter().filter_map(|loaded| {
            let entry = flows::entry_channel(&loaded.resource)?;
            let key = loaded.resource.metadata().key();
            let url = channel::channel_url(ingress, &entry);
            Some(((loaded.resource.kind().to_owned(), key), url))
        });
        let addressed = objects.addressed.iter().map(|(loaded, entry)| {
            let key = loaded.resource.metadata().key();
            let url = channel::channel_url(ingress, entry);
            ((loaded.resource.kind().to_owned(), key), url)
        });
        channels.chain(flows).chain(addressed).collect()
    }

    /// What runs on a broker backend: each Broker under its key and each
    /// channel under its store key. A channel whose name another channel
    /// kind took first (they share an address, as in Knative) gets a view
    /// that says so, and does not run.
    fn stores<'a>(
        &self,
        objects: &EventingObjects<'a>,
    ) -> (
        BTreeMap<ObjectKey, Store<'a>>,
        BTreeMap<(String, ObjectKey), ObjectView>,
    ) {
        let mut stores = BTreeMap::new();
        for (key, loaded) in &objects.brokers {
            if let Resource::Broker(broker) = &loaded.resource {
                let store = Store {
                    loaded,
                    broker: (**broker).clone(),
                    topic: None,
                    channel: None,
                };
                stores.insert(key.clone(), store);
            }
        }
        let mut refused = BTreeMap::new();
        for loaded in &objects.channels {
            let Some(store) = channel::store_of(&loaded.resource) else {
                continue;
            };
            let kind = loaded.resource.kind().to_owned();
            let key = loaded.resource.metadata().key();
            if let Some(taken) = stores.get(&store.key) {
                let by = taken.loaded.resource.kind();
                let status = Status::not_ready(
                    "ChannelNameTaken",
                    format!(
                        "{by} {key} has this name, and so this channel's address: rename one of them"
                    ),
                );
                refused.insert((kind, key), ObjectView::of(loaded, status));
                continue;
            }
            let entry = Store {
                loaded,
                broker: store.broker,
                topic: store.topic,
                channel: Some((kind, key)),
            };
            stores.insert(store.key, entry);
        }
        (stores, refused)
    }

    async fn remove_brokers(
        &self,
        running: &mut Running,
        desired: &BTreeMap<ObjectKey, Store<'_>>,
    ) {
        for (key, old) in take_gone(&mut running.brokers, |key| desired.contains_key(key)) {
            running.triggers.retain(|_, t| t.plan.broker != key);
            running.subscriptions.retain(|_, t| t.plan.broker != key);
            self.registry.remove(&key);
            tracing::info!(broker = %key, "broker deleted; removing its events");
            if let Err(e) = old.handle.backend.destroy().await {
                tracing::error!(broker = %key, error = %e, "removing the broker's data failed");
            }
        }
    }

    async fn reconcile_broker(
        &self,
        running: &mut Running,
        key: &ObjectKey,
        broker: &Broker,
        topic: Option<&ChannelTopic>,
        index: &ObjectIndex<'_>,
    ) -> Status {
        // Classes were validated at load.
        let class = BrokerClass::of(broker, self.settings.default_class)
            .unwrap_or(self.settings.default_class);
        let mut context = self.plan_context(key, broker, index);
        context.channel_topic = topic;
        let plan = backend::plan(class, &context);
        let action = plan::broker_action(
            plan.as_deref().map_err(String::as_str),
            running.brokers.get(key).map(|r| &*r.plan),
        );
        match (action, plan) {
            (BrokerAction::Keep, _) => {
                if let Some(current) = running.brokers.get_mut(key) {
                    current.broker = broker.clone();
                }
                self.broker_status(key)
            }
            (BrokerAction::KeepPrevious(reason), _) => {
                if let Some(current) = running.brokers.get_mut(key) {
                    // Keep what was accepted flowing until the config is fixed.
                    current.broker = broker.clone();
                }
                Status::not_ready(
                    "BrokerConfigInvalid",
                    format!("{reason} (the broker keeps running with its previous config)"),
                )
            }
            (BrokerAction::Refuse(reason), _) | (_, Err(reason)) => {
                self.registry.insert(
                    key,
                    BrokerEntry::NotReady {
                        reason: reason.clone(),
                    },
                );
                Status::not_ready("BrokerConfigInvalid", reason)
            }
            (action, Ok(plan)) => {
                if action != BrokerAction::Start {
                    self.stop_broker(running, key, action == BrokerAction::Replace)
                        .await;
                }
                self.start_broker(running, key, broker, plan).await
            }
        }
    }

    /// Stops a broker's backend and its triggers; `remove_events` for a
    /// class change, whose old events the new backend cannot read.
    async fn stop_broker(&self, running: &mut Running, key: &ObjectKey, remove_events: bool) {
        running.triggers.retain(|_, t| t.plan.broker != *key);
        running.subscriptions.retain(|_, t| t.plan.broker != *key);
        let Some(old) = running.brokers.remove(key) else {
            return;
        };
        if remove_events {
            tracing::warn!(broker = %key, "broker class changed; its stored events are removed");
            let _ = old.handle.backend.destroy().await;
        } else {
            tracing::info!(broker = %key, "broker config changed; restarting its backend");
            old.handle.backend.shutdown().await;
        }
    }

    async fn start_broker(
        &self,
        running: &mut Running,
        key: &ObjectKey,
        broker: &Broker,
        plan: Box<dyn BackendPlan>,
    ) -> Status {
        match plan.start().await {
            Ok(backend) => {
                let handle = Arc::new(BrokerHandle::new(
                    key.clone(),
                    backend,
                    self.settings.max_event_bytes,
                ));
                self.registry
                    .insert(key, BrokerEntry::Ready(handle.clone()));
                let class = plan.class();
                running.brokers.insert(
                    key.clone(),
                    RunningBroker {
                        broker: broker.clone(),
                        plan,
                        handle,
                    },
                );
                tracing::info!(broker = %key, class = ?class, "broker ready");
                self.broker_status(key)
            }
            Err(error) => {
                tracing::error!(broker = %key, %error, "broker failed to start; trying again later");
                self.registry.insert(
                    key,
                    BrokerEntry::NotReady {
                        reason: error.to_string(),
                    },
                );
                Status::not_ready(error.reason(), error.to_string())
            }
        }
    }

    /// What a broker's backend plan is resolved from.
    fn plan_context<'a>(
        &'a self,
        key: &'a ObjectKey,
        broker: &'a Broker,
        index: &'a ObjectIndex<'a>,
    ) -> PlanContext<'a> {
        PlanContext {
            key,
            broker,
            index,
            data_dir: &self.settings.data_dir,
            log: &self.settings.log,
            memory: &self.settings.memory,
            rabbitmq_uri: self.settings.rabbitmq_uri.as_deref(),
            kafka_bootstrap_servers: self.settings.kafka_bootstrap_servers.as_deref(),
            replica: &self.settings.replica,
            channel_topic: None,
        }
    }

    fn broker_status(&self, key: &ObjectKey) -> Status {
        let mut status = Status::ready();
        let url = plan::broker_url(&self.settings.ingress_url, key);
        status.set_addresses(&url, self.settings.transport);
        status
    }

    /// Stops the dispatchers of triggers or subscriptions no longer loaded
    /// and removes their subscriptions (cursors, queues, groups).
    async fn remove_deliveries(
        &self,
        running: &mut BTreeMap<ObjectKey, RunningTrigger>,
        desired: &BTreeMap<ObjectKey, &Loaded>,
    ) {
        for (key, old) in take_gone(running, |key| desired.contains_key(key)) {
            tracing::info!(key = %key, store = %old.plan.broker, "trigger or subscription deleted");
            if let Err(e) = old.broker.backend.unsubscribe(&key).await {
                tracing::error!(key = %key, error = %e, "removing the subscription to the store failed");
            }
        }
    }

    async fn reconcile_trigger(
        &self,
        running: &mut Running,
        key: &ObjectKey,
        trigger: &Trigger,
        destinations: &Destinations<'_>,
    ) -> Status {
        let broker_key = ObjectKey::new(key.namespace.clone(), trigger.spec.broker.clone());
        let loaded = destinations.brokers.contains(&broker_key);
        // Only a loaded Broker: a channel's store is no trigger's broker.
        let broker = running.brokers.get(&broker_key).filter(|_| loaded);
        let plan = plan::trigger_plan(
            &self.settings,
            key,
            trigger,
            broker.map(|b| TriggerBroker {
                broker: &b.broker,
                plan: &*b.plan,
            }),
            loaded,
            destinations,
        );
        let plan = plan.map(|mut plan| {
            let dead_letter = trigger
                .spec
                .delivery
                .as_ref()
                .or(broker.and_then(|b| b.broker.spec.delivery.as_ref()));
            let dead_letter_audience = dead_letter
                .and_then(|d| d.dead_letter_sink.as_ref())
                .and_then(|d| d.audience.as_deref());
            plan.identity = policies::sender_identity(
                &self.gate,
                &self.settings.ingress_url,
                "Trigger",
                key,
                &[
                    (
                        plan.subscriber.as_ref().map(|t| &t.uri),
                        trigger.spec.subscriber.audience.as_deref(),
                    ),
                    (
                        plan.delivery.dead_letter_sink.as_ref().map(|t| &t.uri),
                        dead_letter_audience,
                    ),
                ],
            );
            plan
        });
        let handle = broker.map(|b| b.handle.clone());
        let not_ready = || {
            Status::not_ready(
                "BrokerNotReady",
                format!("broker {broker_key} is not ready"),
            )
        };
        let started = self
            .reconcile_delivery(&mut running.triggers, key, plan, handle)
            .await;
        match started {
            Ok(Some(plan)) => Status {
                auth: policies::auth_status("Trigger", key, &self.gate),
                ..trigger_status(&plan)
            },
            Ok(None) => not_ready(),
            Err(status) => status,
        }
    }

    async fn reconcile_subscription(
        &self,
        running: &mut Running,
        key: &ObjectKey,
        subscription: &Subscription,
        state: ChannelState,
        destinations: &Destinations<'_>,
    ) -> Status {
        let reference = &subscription.spec.channel;
        let channel = ObjectKey::new(key.namespace.clone(), reference.name.clone());
        // Only the store of this very channel: another kind's of the same
        // name is not this subscription's.
        let store = running
            .brokers
            .get(&channel::store_key(&channel))
            .filter(|_| state.runs);
        let plan = plan::subscription_plan(
            &self.settings,
            key,
            subscription,
            store.map(|b| TriggerBroker {
                broker: &b.broker,
                plan: &*b.plan,
            }),
            state.loaded,
            destinations,
        );
        let plan = plan.map(|mut plan| {
            let spec = &subscription.spec;
            let dead_letter = spec
                .delivery
                .as_ref()
                .or(store.and_then(|b| b.broker.spec.delivery.as_ref()))
                .and_then(|d| d.dead_letter_sink.as_ref())
                .and_then(|d| d.audience.as_deref());
            let reply_uri = match &plan.reply {
                ReplyTo::Destination(uri) => Some(uri.clone()),
                _ => None,
            };
            plan.identity = policies::sender_identity(
                &self.gate,
                &self.settings.ingress_url,
                "Subscription",
                key,
                &[
                    (
                        plan.subscriber.as_ref().map(|t| &t.uri),
                        spec.subscriber.as_ref().and_then(|d| d.audience.as_deref()),
                    ),
                    (
                        reply_uri.as_ref().map(|t| &t.uri),
                        spec.reply.as_ref().and_then(|d| d.audience.as_deref()),
                    ),
                    (
                        plan.delivery.dead_letter_sink.as_ref().map(|t| &t.uri),
                        dead_letter,
                    ),
                ],
            );
            plan
        });
        let handle = store.map(|b| b.handle.clone());
        let started = self
            .reconcile_delivery(&mut running.subscriptions, key, plan, handle)
            .await;
        match started {
            Ok(Some(plan)) => Status {
                auth: policies::auth_status("Subscription", key, &self.gate),
                ..subscription_status(&plan)
            },
            Ok(None) => Status::not_ready(
                "ChannelNotReady",
                format!("{} {channel} is not ready", reference.kind),
            ),
            Err(status) => status,
        }
    }

    /// Keeps, starts or stops the dispatcher of a trigger or subscription
    /// by its plan: the plan it runs with, None when its store is not
    /// ready, or the status that says why it cannot run.
    async fn reconcile_delivery(
        &self,
        running: &mut BTreeMap<ObjectKey, RunningTrigger>,
        key: &ObjectKey,
        plan: Result<TriggerPlan, Box<Status>>,
        store: Option<Arc<BrokerHandle>>,
    ) -> Result<Option<TriggerPlan>, Status> {
        let current = running.get(key).map(|t| RunningDispatcher {
            plan: &t.plan,
            same_broker: store.as_ref().is_some_and(|h| Arc::ptr_eq(&t.broker, h)),
            finished: t.dispatcher.is_finished(),
        });
        match (plan::trigger_action(&plan, current), plan, store) {
            (TriggerAction::Stop(status), _, _) => {
                running.remove(key);
                Err(*status)
            }
            (TriggerAction::Keep, Ok(plan), _) => Ok(Some(plan)),
            (TriggerAction::Start, Ok(plan), Some(store)) => {
                // Stop the old dispatcher before resubscribing: its
                // unacknowledged deliveries come again through the new
                // subscription.
                running.remove(key);
                let health = Arc::new(HealthCell::default());
                let started = self.start_trigger(key, plan.clone(), store, health).await?;
                running.insert(key.clone(), started);
                Ok(Some(plan))
            }
            (_, _, _) => Ok(None),
        }
    }

    async fn start_trigger(
        &self,
        key: &ObjectKey,
        plan: TriggerPlan,
        broker: Arc<BrokerHandle>,
        dead_letter_health: Arc<HealthCell>,
    ) -> Result<RunningTrigger, Status> {
        let spec = SubscriptionSpec {
            trigger: key.clone(),
            filter: plan.filter.clone(),
            max_in_flight: plan.max_in_flight,
        };
        let subscription = broker
            .backend
            .subscribe(spec)
            .await
            .map_err(|e| Status::not_ready("SubscribeFailed", e.to_string()))?;
        let plan = Arc::new(plan);
        let dispatcher = dispatcher::spawn(
            plan.clone(),
            subscription,
            broker.clone(),
            self.sender.as_identity(plan.identity.clone()),
            self.journal.clone(),
            self.gate.clone(),
            dead_letter_health.clone(),
        );
        let subscriber = plan.subscriber.as_ref().map(ToString::to_string);
        tracing::info!(key = %key, store = %plan.broker, subscriber = subscriber.as_deref().unwrap_or("none"), "delivering");
        Ok(RunningTrigger {
            plan,
            broker,
            dispatcher,
            dead_letter_health,
        })
    }

    /// A source object as the source controller runs it, with its sink
    /// resolved.
    fn desired_source(
        &self,
        loaded: &Loaded,
        destinations: &Destinations<'_>,
        index: &ObjectIndex<'_>,
    ) -> Option<DesiredSource> {
        let resource = &loaded.resource;
        let source = source::config_of(resource)?;
        let context = BuildContext {
            index,
            kubeconfig: self.settings.kubeconfig.as_deref(),
            rabbitmq_uri: self.settings.rabbitmq_uri.as_deref(),
            ping_clock: &self.settings.ping_clock,
            cluster_state: self.cluster_state.as_ref(),
        };
        let metadata = resource.metadata();
        let key = metadata.key();
        let sink = destinations.target(source.sink(), &key.namespace);
        let identity = policies::sender_identity(
            &self.gate,
            &self.settings.ingress_url,
            resource.kind(),
            &key,
            &[(
                sink.as_ref().ok().map(|t| &t.uri),
                source.sink().audience.as_deref(),
            )],
        );
        Some(DesiredSource {
            kind: resource.kind(),
            api_version: resource.api_version().to_owned(),
            annotations: metadata.annotations.clone(),
            origin: loaded.origin.to_string(),
            spec: resource.to_json()["spec"].clone(),
            sink,
            identity,
            placement: source.placement(),
            build: source.builder(&context),
            key,
        })
    }

    /// Brokers as the last apply left them, with their backends' live
    /// health.
    pub(crate) fn brokers(&self, namespace: Option<&str>) -> Vec<ObjectView> {
        let views = self.views.read().unwrap_or_else(|e| e.into_inner());
        in_namespace(&views.brokers, namespace)
            .map(|view| {
                let key =
                    ObjectKey::new(view.metadata.namespace.clone(), view.metadata.name.clone());
                ObjectView {
                    status: views.broker_status(&key, &view.status),
                    ..view.clone()
                }
            })
            .collect()
    }

    /// Triggers as the last apply left them, with their live backlog.
    pub(crate) async fn triggers(&self, namespace: Option<&str>) -> Vec<ObjectView> {
        let lags: BTreeMap<ObjectKey, _> = {
            let running = self.running.lock().await;
            running
                .triggers
                .iter()
                .filter_map(|(k, t)| Some((k.clone(), t.broker.backend.lag(k)?)))
                .collect()
        };
        let views = self.views.read().unwrap_or_else(|e| e.into_inner());
        in_namespace(&views.triggers, namespace)
            .map(|view| {
                let mut view = view.clone();
                let key =
                    ObjectKey::new(view.metadata.namespace.clone(), view.metadata.name.clone());
                view.status = views.trigger_status(&key, &view.status);
                if let Some(lag) = lags.get(&key) {
                    view.status.backlog = Some(lag.backlog);
                    view.status.lost_to_retention = Some(lag.lost_to_retention);
                }
                view
            })
            .collect()
    }

    /// Channels of every kind, with their stores' live health.
    pub(crate) fn channels(&self, namespace: Option<&str>) -> Vec<ObjectView> {
        let views = self.views.read().unwrap_or_else(|e| e.into_inner());
        views
            .channels
            .iter()
            .filter(|((_, key), _)| namespace.is_none_or(|ns| key.namespace == ns))
            .filter_map(|((kind, key), view)| {
                let status = views.channel_status(kind, key)?;
                Some(ObjectView {
                    status,
                    ..view.clone()
                })
            })
            .collect()
    }

    /// Subscriptions, not Ready while their channel's store is not.
    pub(crate) fn subscriptions(&self, namespace: Option<&str>) -> Vec<ObjectView> {
        let views = self.views.read().unwrap_or_else(|e| e.into_inner());
        in_namespace(&views.subscriptions, namespace)
            .map(|view| {
                let key =
                    ObjectKey::new(view.metadata.namespace.clone(), view.metadata.name.clone());
                ObjectView {
                    status: views.subscription_status(&key, &view.status),
                    ..view.clone()
                }
            })
            .collect()
    }

    /// Sequences or Parallels (`kind`), with status read from their parts'.
    pub(crate) fn flows(&self, kind: &str, namespace: Option<&str>) -> Vec<ObjectView> {
        let views = self.views.read().unwrap_or_else(|e| e.into_inner());
        views
            .flows
            .iter()
            .filter(|(resource, _)| resource.kind() == kind)
            .filter(|(_, view)| namespace.is_none_or(|ns| view.metadata.namespace == ns))
            .map(|(resource, view)| ObjectView {
                status: views.flow_status(resource, view),
                ..view.clone()
            })
            .collect()
    }

    /// EventPolicies with what they resolved to.
    pub(crate) fn event_policies(&self, namespace: Option<&str>) -> Vec<ObjectView> {
        let views = self.views.read().unwrap_or_else(|e| e.into_inner());
        in_namespace(&views.policies, namespace).cloned().collect()
    }

    /// Sources with their live status.
    pub(crate) async fn sources(&self, namespace: Option<&str>) -> Vec<ObjectView> {
        self.sources.views(namespace).await
    }

    /// The status the last apply gave one Broker (with its backend's live
    /// health), Trigger (without its backlog, so no lock on the running
    /// state), channel, Subscription or flow. None for other kinds.
    pub(crate) fn applied_status(&self, kind: &str, key: &ObjectKey) -> Option<Status> {
        let views = self.views.read().unwrap_or_else(|e| e.into_inner());
        match kind {
            "Broker" => views
                .brokers
                .get(key)
                .map(|view| views.broker_status(key, &view.status)),
            "Trigger" => views
                .triggers
                .get(key)
                .map(|view| views.trigger_status(key, &view.status)),
            "InMemoryChannel" | "KafkaChannel" | "Channel" => views.channel_status(kind, key),
            "Subscription" => views
                .subscriptions
                .get(key)
                .map(|view| views.subscription_status(key, &view.status)),
            "EventPolicy" => views.policies.get(key).map(|view| view.status.clone()),
            "Sequence" | "Parallel" => views
                .flows
                .iter()
                .find(|(resource, _)| resource.kind() == kind && resource.metadata().key() == *key)
                .map(|(resource, view)| views.flow_status(resource, view)),
            _ => None,
        }
    }

    /// Delivers a trigger's (or subscription's) events again from `to`:
    /// its dispatcher stops (in-flight deliveries get [`REPLAY_GRACE`] to
    /// finish), the backend moves its position back, and the dispatcher
    /// starts again with the same plan, subscribing at the new position,
    /// as a plan change restarts it. A dry run only counts. Holds the
    /// running set's lock throughout, so no apply interleaves.
    pub(crate) async fn replay(
        &self,
        which: Delivering,
        key: &ObjectKey,
        to: RewindTo,
        dry_run: bool,
    ) -> Result<Rewound, ReplayError> {
        let mut running = self.running.lock().await;
        let map = match which {
            Delivering::Trigger => &mut running.triggers,
            Delivering::Subscription => &mut running.subscriptions,
        };
        let unknown = || {
            ReplayError::Unknown(format!(
                "no {} {key} is delivering: is it loaded, and its broker or channel Ready? (pilotlight get {}s)",
                which.noun(),
                which.noun()
            ))
        };
        if dry_run {
            let current = map.get(key).ok_or_else(unknown)?;
            return Ok(current.broker.backend.rewind(key, to, true).await?);
        }
        let current = map.remove(key).ok_or_else(unknown)?;
        let RunningTrigger {
            plan,
            broker,
            dispatcher,
            dead_letter_health,
        } = current;
        dispatcher.drain(REPLAY_GRACE).await;
        let rewound = broker.backend.rewind(key, to, false).await;
        let restarted = self
            .start_trigger(key, (*plan).clone(), broker, dead_letter_health)
            .await;
        match restarted {
            Ok(started) => {
                map.insert(key.clone(), started);
            }
            // The next apply starts it (nothing runs for the key now).
            Err(status) => {
                tracing::error!(key = %key, reason = ?status.conditions.first().map(|c| &c.message), "resubscribing after a replay failed")
            }
        }
        Ok(rewound?)
    }

    /// For each trigger delivering from the store `store` (a broker's, or
    /// each subscription of the channel whose store it is): whether its
    /// filter lets `event` through, and how its deliveries of it went, as
    /// far as the journal still remembers.
    pub(crate) async fn deliveries_of(
        &self,
        store: &ObjectKey,
        event: &Event,
    ) -> Vec<EventDeliveries> {
        let journalled = self.journal.deliveries(store, event);
        let running = self.running.lock().await;
        let delivering = running
            .triggers
            .values()
            .chain(running.subscriptions.values());
        let mut answer: Vec<EventDeliveries> = delivering
            .filter(|trigger| trigger.plan.broker == *store)
            .map(|trigger| {
                let name = trigger.plan.key.to_string();
                EventDeliveries {
                    matched: trigger.plan.filter.matches(event),
                    deliveries: journalled
                        .iter()
                        .filter(|d| d.trigger == name)
                        .cloned()
                        .collect(),
                    trigger: name,
                }
            })
            .collect();
        answer.sort_by(|a, b| a.trigger.cmp(&b.trigger));
        answer
    }

    /// Each trigger's and subscription's backlog, where its backend knows
    /// it (keyed `namespace/name`; a trigger and a subscription of one
    /// name share a key, as in the metrics).
    pub(crate) async fn backlogs(&self) -> BTreeMap<String, u64> {
        let running = self.running.lock().await;
        let delivering = running.triggers.iter().chain(running.subscriptions.iter());
        delivering
            .filter_map(|(key, trigger)| {
                Some((key.to_string(), trigger.broker.backend.lag(key)?.backlog))
            })
            .collect()
    }

    /// Publishes each trigger's backlog as a gauge.
    pub(crate) async fn record_backlog(&self) {
        let running = self.running.lock().await;
        for (key, trigger) in &running.triggers {
            if let Some(lag) = trigger.broker.backend.lag(key) {
                metrics::gauge!("pilotlight_trigger_backlog", "trigger" => key.to_string())
                    .set(lag.backlog as f64);
            }
        }
    }

    /// Stops the sources, then every dispatcher (letting in-flight
    /// deliveries finish for a few seconds) and backend, saving cursors.
    pub(crate) async fn shutdown(&self) {
        // Sources first: they send to brokers that stop below.
        self.sources.shutdown().await;
        let mut running = self.running.lock().await;
        let triggers = std::mem::take(&mut running.triggers);
        let subscriptions = std::mem::take(&mut running.subscriptions);
        let draining = triggers
            .into_values()
            .chain(subscriptions.into_values())
            .map(|t| t.dispatcher.drain(SHUTDOWN_GRACE));
        futures::future::join_all(draining).await;
        for (key, broker) in std::mem::take(&mut running.brokers) {
            self.registry.remove(&key);
            broker.handle.backend.shutdown().await;
        }
    }
}

fn trigger_status(plan: &TriggerPlan) -> Status {
    let mut status = Status::ready();
    status.subscriber_uri = plan.subscriber.as_ref().map(ToString::to_string);
    status.dead_letter_sink_uri = plan
        .delivery
        .dead_letter_sink
        .as_ref()
        .map(ToString::to_string);
    status
}

/// A running subscription's status: its destinations, resolved.
fn subscription_status(plan: &TriggerPlan) -> Status {
    let mut status = Status::ready();
    let reply_uri = match &plan.reply {
        ReplyTo::Destination(uri) => Some(uri.to_string()),
        ReplyTo::Store | ReplyTo::Drop => None,
    };
    status.messaging = Some(Box::new(MessagingStatus {
        physical_subscription: Some(PhysicalSubscription {
            subscriber_uri: plan.subscriber.as_ref().map(ToString::to_string),
            reply_uri,
            dead_letter_sink_uri: plan
                .delivery
                .dead_letter_sink
                .as_ref()
                .map(ToString::to_string),
        }),
        ..Default::default()
    }));
    status
}

/// Whether a subscription's channel is loaded, and whether it runs.
#[derive(Clone, Copy)]
struct ChannelState {
    loaded: bool,
    runs: bool,
}

/// A broker or a channel, as the broker machinery runs it.
struct Store<'a> {
    loaded: &'a Loaded,
    broker: Broker,
    topic: Option<ChannelTopic>,
    /// A channel's kind and key; None for a Broker.
    channel: Option<(String, ObjectKey)>,
}

/// Fills each channel's `status.subscribers` with the Subscriptions of it.
fn list_subscribers(
    channels: &mut BTreeMap<(String, ObjectKey), ObjectView>,
    subscriptions: &BTreeMap<ObjectKey, ObjectView>,
    objects: &EventingObjects<'_>,
) {
    for (key, loaded) in &objects.subscriptions {
        let Resource::Subscription(subscription) = &loaded.resource else {
            continue;
        };
        let reference = &subscription.spec.channel;
        let channel = (
            reference.kind.clone(),
            ObjectKey::new(key.namespace.clone(), reference.name.clone()),
        );
        let (Some(view), Some(subscribed)) = (channels.get_mut(&channel), subscriptions.get(key))
        else {
            continue;
        };
        let ready = subscribed.status.ready_condition();
        let entry = SubscriberStatus {
            name: key.name.clone(),
            ready: ready.map_or("Unknown", |c| c.status.as_str()).to_owned(),
            message: ready.and_then(|c| c.message.clone()),
        };
        view.status
            .messaging
            .get_or_insert_default()
            .subscribers
            .get_or_insert_default()
            .push(entry);
    }
}

fn in_namespace<'a>(
    views: &'a BTreeMap<ObjectKey, ObjectView>,
    namespace: Option<&'a str>,
) -> impl Iterator<Item = &'a ObjectView> {
    views
        .iter()
        .filter(move |(key, _)| namespace.is_none_or(|ns| key.namespace == ns))
        .map(|(_, view)| view)
}

fn carry_times<K: Ord>(new: &mut BTreeMap<K, ObjectView>, old: &BTreeMap<K, ObjectView>) {
    for (key, view) in new.iter_mut() {
        view.status
            .carry_transition_times(old.get(key).map(|v| &v.status));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::manifest::Manifests;

    #[test]
    fn broker_views_show_the_class_as_written_or_defaulted() {
        let manifests = Manifests::from_text(
            "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: k\n  annotations:\n    eventing.knative.dev/broker.class: KafkaNamespaced\n---\napiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: plain\n",
            BrokerClass::Log,
        );
        let classes: Vec<String> = manifests
            .objects
            .iter()
            .map(|loaded| {
                let Resource::Broker(broker) = &loaded.resource else {
                    panic!("a broker");
                };
                let view = broker_view(loaded, broker, Status::ready(), BrokerClass::Memory);
                view.metadata.annotations[CLASS_ANNOTATION].clone()
            })
            .collect();
        assert_eq!(classes, ["KafkaNamespaced", "Memory"]);
    }
}
