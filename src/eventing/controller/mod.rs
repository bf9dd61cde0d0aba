//! Reconciling brokers, triggers and sources: the loaded objects in, running
//! backends, dispatchers and sources out, with each object's status.
//!
//! Each step is the same shape: [`plan`] decides, as plain functions, what
//! should run and what to do about what runs ([`plan::broker_action`],
//! [`plan::trigger_action`]); the controller carries the actions out.
//! Idempotent: an object whose resolved plan did not change keeps running
//! untouched, so a reload loses nothing and restarts nothing it need not.

pub(crate) mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::api::broker::{BrokerClass, CLASS_ANNOTATION};
use crate::api::index::ObjectIndex;
use crate::api::manifest::Loaded;
use crate::api::status::{Address, ObjectView, Status};
use crate::api::{Broker, ObjectKey, Resource, Trigger};
use crate::desired::take_gone;
use crate::eventing::backend::log::LogConfig;
use crate::eventing::backend::memory::MemoryConfig;
use crate::eventing::backend::{
    self, BACKEND_FAILED, BACKEND_UNAVAILABLE, Backend, BackendPlan, PlanContext, SubscriptionSpec,
};
use crate::eventing::broker::{BrokerEntry, BrokerHandle, BrokerRegistry};
use crate::eventing::delivery::EventSender;
use crate::eventing::health::Health;
use crate::eventing::source::controller::{DesiredSource, SourceController};
use crate::eventing::source::{self, BuildContext, PingClock, Replication};
use crate::eventing::trigger::dispatcher::{self, Dispatcher, TriggerPlan};
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

/// Settings of the eventing half.
#[derive(Debug, Clone)]
pub(crate) struct EventingSettings {
    pub data_dir: PathBuf,
    /// Base URL of the ingress, for broker addresses (`http://127.0.0.1:8080`).
    pub ingress_url: String,
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
}

#[derive(Default)]
struct Running {
    brokers: BTreeMap<ObjectKey, RunningBroker>,
    triggers: BTreeMap<ObjectKey, RunningTrigger>,
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
        let health = self
            .trigger_brokers
            .get(key)
            .and_then(|broker| Some((broker, self.backends.get(broker)?.health())));
        match health {
            Some((broker, Health::NotReady { message, .. })) => Health::not_ready(
                "BrokerNotReady",
                format!("broker {broker} is not ready: {message}"),
            )
            .overlay(applied.clone(), "trigger"),
            _ => applied.clone(),
        }
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
}

impl EventingController {
    /// `replication` says whether this replica leads, for the sources that
    /// run on the leader only.
    pub(crate) fn new(
        settings: EventingSettings,
        registry: Arc<BrokerRegistry>,
        sender: EventSender,
        replication: Replication,
    ) -> Self {
        EventingController {
            cluster_state: replication.state.clone(),
            sources: SourceController::new(sender.clone(), settings.data_dir.clone(), replication),
            settings,
            registry,
            sender,
            running: tokio::sync::Mutex::new(Running::default()),
            views: RwLock::new(Views::default()),
        }
    }

    pub(crate) fn settings(&self) -> &EventingSettings {
        &self.settings
    }

    /// Whether this replica leads (always true in file mode).
    pub(crate) fn leading(&self) -> tokio::sync::watch::Receiver<bool> {
        self.sources.leading()
    }

    /// Brings brokers, triggers and sources to `objects`; `services` gives a
    /// loaded Service's URL, for destinations that refer to one. Returns
    /// whether a broker's backend failed to start (to be tried again).
    pub(crate) async fn apply(
        &self,
        objects: &EventingObjects<'_>,
        index: &ObjectIndex<'_>,
        services: &(dyn Fn(&ObjectKey) -> Option<String> + Sync),
    ) -> bool {
        let loaded_brokers: BTreeSet<ObjectKey> = objects.brokers.keys().cloned().collect();
        let destinations = Destinations {
            ingress_url: &self.settings.ingress_url,
            brokers: &loaded_brokers,
            services,
        };
        let mut running = self.running.lock().await;
        self.remove_brokers(&mut running, &objects.brokers).await;
        let mut broker_views = BTreeMap::new();
        let mut backends_failed = false;
        for (key, loaded) in &objects.brokers {
            let Resource::Broker(broker) = &loaded.resource else {
                continue;
            };
            let status = self
                .reconcile_broker(&mut running, key, broker, index)
                .await;
            backends_failed |= START_FAILED.iter().any(|r| status.has_reason(r));
            let view = broker_view(loaded, broker, status, self.settings.default_class);
            broker_views.insert(key.clone(), view);
        }
        self.remove_triggers(&mut running, &objects.triggers).await;
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
        let backends = running
            .brokers
            .iter()
            .map(|(key, broker)| (key.clone(), broker.handle.backend.clone()))
            .collect();
        drop(running);
        let desired = objects
            .sources
            .iter()
            .filter_map(|loaded| self.desired_source(loaded, &destinations, index))
            .collect();
        self.sources.apply(desired).await;
        let mut views = self.views.write().unwrap_or_else(|e| e.into_inner());
        carry_times(&mut broker_views, &views.brokers);
        carry_times(&mut trigger_views, &views.triggers);
        *views = Views {
            brokers: broker_views,
            triggers: trigger_views,
            backends,
            trigger_brokers,
        };
        backends_failed
    }

    async fn remove_brokers(&self, running: &mut Running, desired: &BTreeMap<ObjectKey, &Loaded>) {
        for (key, old) in take_gone(&mut running.brokers, |key| desired.contains_key(key)) {
            running.triggers.retain(|_, t| t.plan.broker != key);
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
        index: &ObjectIndex<'_>,
    ) -> Status {
        // Classes were validated at load.
        let class = BrokerClass::of(broker, self.settings.default_class)
            .unwrap_or(self.settings.default_class);
        let plan = backend::plan(class, &self.plan_context(key, broker, index));
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
        }
    }

    fn broker_status(&self, key: &ObjectKey) -> Status {
        let mut status = Status::ready();
        status.address = Some(Address {
            url: plan::broker_url(&self.settings.ingress_url, key),
        });
        status
    }

    async fn remove_triggers(&self, running: &mut Running, desired: &BTreeMap<ObjectKey, &Loaded>) {
        for (key, old) in take_gone(&mut running.triggers, |key| desired.contains_key(key)) {
            tracing::info!(trigger = %key, "trigger deleted");
            if let Err(e) = old.broker.backend.unsubscribe(&key).await {
                tracing::error!(trigger = %key, error = %e, "removing the trigger's subscription failed");
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
        let broker = running.brokers.get(&broker_key);
        let plan = plan::trigger_plan(
            &self.settings,
            key,
            trigger,
            broker.map(|b| TriggerBroker {
                broker: &b.broker,
                plan: &*b.plan,
            }),
            destinations.brokers.contains(&broker_key),
            destinations,
        );
        let handle = broker.map(|b| b.handle.clone());
        let current = running.triggers.get(key).map(|t| RunningDispatcher {
            plan: &t.plan,
            same_broker: handle.as_ref().is_some_and(|h| Arc::ptr_eq(&t.broker, h)),
            finished: t.dispatcher.is_finished(),
        });
        match (plan::trigger_action(&plan, current), plan, handle) {
            (TriggerAction::Stop(status), _, _) => {
                running.triggers.remove(key);
                *status
            }
            (TriggerAction::Keep, Ok(plan), _) => trigger_status(&plan),
            (TriggerAction::Start, Ok(plan), Some(broker)) => {
                // Stop the old dispatcher before resubscribing: its
                // unacknowledged deliveries come again through the new
                // subscription.
                running.triggers.remove(key);
                match self.start_trigger(key, plan.clone(), broker).await {
                    Ok(trigger) => {
                        running.triggers.insert(key.clone(), trigger);
                        trigger_status(&plan)
                    }
                    Err(status) => status,
                }
            }
            (_, _, _) => Status::not_ready(
                "BrokerNotReady",
                format!("broker {broker_key} is not ready"),
            ),
        }
    }

    async fn start_trigger(
        &self,
        key: &ObjectKey,
        plan: TriggerPlan,
        broker: Arc<BrokerHandle>,
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
            self.sender.clone(),
        );
        tracing::info!(trigger = %key, subscriber = %plan.subscriber, "trigger ready");
        Ok(RunningTrigger {
            plan,
            broker,
            dispatcher,
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
        Some(DesiredSource {
            kind: resource.kind(),
            api_version: resource.api_version().to_owned(),
            annotations: metadata.annotations.clone(),
            origin: loaded.origin.to_string(),
            spec: resource.to_json()["spec"].clone(),
            sink: destinations.resolve(source.sink(), &key.namespace),
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

    /// Sources with their live status.
    pub(crate) async fn sources(&self, namespace: Option<&str>) -> Vec<ObjectView> {
        self.sources.views(namespace).await
    }

    /// The status the last apply gave one Broker (with its backend's live
    /// health) or Trigger (without its backlog, so no lock on the running
    /// state). None for other kinds.
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
            _ => None,
        }
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
        let draining = std::mem::take(&mut running.triggers)
            .into_values()
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
    status.subscriber_uri = Some(plan.subscriber.to_string());
    status
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

fn carry_times(new: &mut BTreeMap<ObjectKey, ObjectView>, old: &BTreeMap<ObjectKey, ObjectView>) {
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
