//! What brokers and triggers should run, resolved from their objects and
//! pilotlight's settings as plain functions: what to do about a broker given
//! its backend plan (each backend resolves its own, `backend::plan`), a
//! trigger's delivery plan, a destination's URI, and what to do about each
//! given what runs. The controller carries the actions out.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use http::Uri;

use super::EventingSettings;
use crate::api::duck::{DeliverySpec, Destination};
use crate::api::filter::Filter;
use crate::api::status::Status;
use crate::api::subscription::Subscription;
use crate::api::trigger::DeliveryOrder;
use crate::api::{Broker, ObjectKey, Trigger};
use crate::eventing::backend::BackendPlan;
use crate::eventing::delivery::{DeliveryPolicy, Target};
use crate::eventing::trigger::dispatcher::{ReplyTo, TriggerPlan};

/// What to do about one broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BrokerAction {
    /// It runs as planned: only its object is updated.
    Keep,
    /// Start its backend (nothing runs).
    Start,
    /// Its settings changed within its class: stop the backend (its stored
    /// events stay) and start it again.
    Restart,
    /// Its class changed: the old backend's events are removed, the new one
    /// starts.
    Replace,
    /// Its new settings are wrong: it keeps running with the previous ones
    /// until they are fixed.
    KeepPrevious(String),
    /// Its settings are wrong and nothing runs: the ingress answers 503.
    Refuse(String),
}

/// What to do about a broker, given its plan (or why it has none) and the
/// plan its backend runs with.
pub(crate) fn broker_action(
    plan: Result<&dyn BackendPlan, &str>,
    running: Option<&dyn BackendPlan>,
) -> BrokerAction {
    match (plan, running) {
        (Err(reason), Some(_)) => BrokerAction::KeepPrevious(reason.to_owned()),
        (Err(reason), None) => BrokerAction::Refuse(reason.to_owned()),
        (Ok(_), None) => BrokerAction::Start,
        (Ok(plan), Some(current)) if current.same_as(plan) => BrokerAction::Keep,
        (Ok(plan), Some(current)) if current.class() == plan.class() => BrokerAction::Restart,
        (Ok(_), Some(_)) => BrokerAction::Replace,
    }
}

/// The addressable kinds besides Brokers and Services that a destination
/// may refer to: each loaded object of them has an address in
/// [`Destinations::addresses`].
pub(crate) const ADDRESSABLE_KINDS: [(&str, &str); 6] = [
    ("messaging.knative.dev/v1", "InMemoryChannel"),
    ("messaging.knative.dev/v1beta1", "KafkaChannel"),
    ("messaging.knative.dev/v1", "Channel"),
    ("flows.knative.dev/v1", "Sequence"),
    ("flows.knative.dev/v1", "Parallel"),
    ("sinks.knative.dev/v1alpha1", "JobSink"),
];

/// The addresses of loaded objects of [`ADDRESSABLE_KINDS`], by kind and key.
pub(crate) type Addresses = BTreeMap<(String, ObjectKey), String>;

/// Resolves destinations (`uri`, or a reference to a Broker, a Service, a
/// channel or a flow with `uri` appended as a path, Knative's rule).
pub(crate) struct Destinations<'a> {
    /// Base URL of the ingress (`http://127.0.0.1:8080`).
    pub ingress_url: &'a str,
    /// The brokers loaded (running or not).
    pub brokers: &'a BTreeSet<ObjectKey>,
    /// A Service's URL, when one of that name is loaded.
    pub services: &'a (dyn Fn(&ObjectKey) -> Option<String> + Sync),
    /// Channels and flows loaded (running or not).
    pub addresses: &'a Addresses,
}

impl Destinations<'_> {
    pub(crate) fn broker_url(&self, key: &ObjectKey) -> String {
        broker_url(self.ingress_url, key)
    }

    /// Where a delivery to `destination` goes: its URI (see
    /// [`Destinations::resolve`]) with its `CACerts`.
    pub(crate) fn target(
        &self,
        destination: &Destination,
        namespace: &str,
    ) -> Result<Target, String> {
        let uri = self.resolve(destination, namespace)?;
        Ok(Target::new(uri, destination.ca_certs.as_deref()))
    }

    pub(crate) fn resolve(
        &self,
        destination: &Destination,
        namespace: &str,
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
            ("eventing.knative.dev/v1", "Broker") if self.brokers.contains(&key) => {
                self.broker_url(&key)
            }
            ("eventing.knative.dev/v1", "Broker") => {
                return Err(format!("broker {key} does not exist"));
            }
            ("serving.knative.dev/v1", "Service") => match (self.services)(&key) {
                Some(url) => url,
                None => return Err(format!("service {key} does not exist")),
            },
            (api_version, kind) if ADDRESSABLE_KINDS.contains(&(api_version, kind)) => {
                match self.addresses.get(&(kind.to_owned(), key.clone())) {
                    Some(url) => url.clone(),
                    None => return Err(format!("{kind} {key} does not exist")),
                }
            }
            (api_version, kind) => {
                let kinds: Vec<String> = ADDRESSABLE_KINDS
                    .iter()
                    .map(|(version, kind)| format!("{kind}s ({version})"))
                    .collect();
                return Err(format!(
                    "cannot resolve a reference to {kind} ({api_version}) {key}: pilotlight resolves references to Brokers (eventing.knative.dev/v1), Services (serving.knative.dev/v1), {}; use 'uri' for other destinations",
                    kinds.join(", ")
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
}

/// A broker's address: `{ingress}/{namespace}/{name}`.
pub(crate) fn broker_url(ingress_url: &str, key: &ObjectKey) -> String {
    format!("{ingress_url}/{}/{}", key.namespace, key.name)
}

/// The broker a trigger delivers from, as it runs.
pub(crate) struct TriggerBroker<'a> {
    pub broker: &'a Broker,
    pub plan: &'a dyn BackendPlan,
}

/// A trigger's delivery plan, or the status that says why it cannot run.
/// `broker` is its broker when that runs; `broker_loaded` whether one of
/// that name is loaded at all.
pub(crate) fn trigger_plan(
    settings: &EventingSettings,
    key: &ObjectKey,
    trigger: &Trigger,
    broker: Option<TriggerBroker<'_>>,
    broker_loaded: bool,
    destinations: &Destinations<'_>,
) -> Result<TriggerPlan, Box<Status>> {
    let broker_key = ObjectKey::new(key.namespace.clone(), trigger.spec.broker.clone());
    let Some(broker) = broker else {
        return Err(Box::new(if broker_loaded {
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
    let subscriber = destinations
        .target(&trigger.spec.subscriber, &key.namespace)
        .map_err(|m| {
            Box::new(Status::not_ready(
                "SubscriberResolveFailed",
                format!("spec.subscriber: {m}"),
            ))
        })?;
    let delivery = delivery_policy(
        trigger.spec.delivery.as_ref(),
        broker.broker,
        destinations,
        &key.namespace,
    )?;
    // Validated at load, so these cannot fail here.
    let filter = trigger
        .compile_filter()
        .map_err(|e| Box::new(Status::not_ready("InvalidFilter", e.to_string())))?;
    let mut ordered = trigger
        .delivery_order()
        .is_ok_and(|o| o == DeliveryOrder::Ordered);
    let mut max_in_flight = trigger
        .max_in_flight(settings.max_in_flight)
        .unwrap_or(settings.max_in_flight);
    if let Some(class_decides) = broker.plan.trigger_concurrency(trigger) {
        ordered = class_decides.ordered;
        max_in_flight = class_decides.max_in_flight;
    }
    Ok(TriggerPlan {
        key: key.clone(),
        broker_url: broker_url(&settings.ingress_url, &broker_key),
        broker: broker_key,
        filter: Arc::new(filter),
        subscriber: Some(subscriber),
        reply: ReplyTo::Store,
        delivery,
        ordered,
        max_in_flight,
        identity: None,
    })
}

/// The delivery policy of a trigger or subscription: its own `delivery`,
/// else its broker's or channel's, with the dead-letter sink resolved.
fn delivery_policy(
    own: Option<&DeliverySpec>,
    store: &Broker,
    destinations: &Destinations<'_>,
    namespace: &str,
) -> Result<DeliveryPolicy, Box<Status>> {
    let spec = own.or(store.spec.delivery.as_ref());
    let dead_letter_sink = match spec.and_then(|d| d.dead_letter_sink.as_ref()) {
        None => None,
        Some(sink) => Some(destinations.target(sink, namespace).map_err(|m| {
            Box::new(Status::not_ready(
                "DeadLetterSinkResolveFailed",
                format!("deadLetterSink: {m}"),
            ))
        })?),
    };
    Ok(DeliveryPolicy::from_spec(spec, dead_letter_sink))
}

/// A Subscription's delivery plan on its channel's store, or the status
/// that says why it cannot run. `channel` is the store when it runs;
/// `channel_loaded` whether a channel of that name is loaded at all.
pub(crate) fn subscription_plan(
    settings: &EventingSettings,
    key: &ObjectKey,
    subscription: &Subscription,
    channel: Option<TriggerBroker<'_>>,
    channel_loaded: bool,
    destinations: &Destinations<'_>,
) -> Result<TriggerPlan, Box<Status>> {
    let reference = &subscription.spec.channel;
    let channel_key = ObjectKey::new(key.namespace.clone(), reference.name.clone());
    let Some(channel) = channel else {
        return Err(Box::new(if channel_loaded {
            Status::not_ready(
                "ChannelNotReady",
                format!("{} {channel_key} is not ready", reference.kind),
            )
        } else {
            Status::not_ready(
                "ChannelDoesNotExist",
                format!(
                    "{} {channel_key} does not exist: create it, or fix spec.channel",
                    reference.kind
                ),
            )
        }));
    };
    let resolve = |destination: Option<&Destination>, field: &str, reason: &str| {
        destination
            .map(|d| destinations.target(d, &key.namespace))
            .transpose()
            .map_err(|m| Box::new(Status::not_ready(reason, format!("{field}: {m}"))))
    };
    let subscriber = resolve(
        subscription.spec.subscriber.as_ref(),
        "spec.subscriber",
        "SubscriberResolveFailed",
    )?;
    let reply = resolve(
        subscription.spec.reply.as_ref(),
        "spec.reply",
        "ReplyResolveFailed",
    )?;
    let delivery = delivery_policy(
        subscription.spec.delivery.as_ref(),
        channel.broker,
        destinations,
        &key.namespace,
    )?;
    Ok(TriggerPlan {
        key: key.clone(),
        broker_url: broker_url(&settings.ingress_url, &channel.broker.metadata.key()),
        broker: channel.broker.metadata.key(),
        filter: Arc::new(Filter::Everything),
        subscriber,
        reply: reply.map_or(ReplyTo::Drop, ReplyTo::Destination),
        delivery,
        ordered: false,
        max_in_flight: subscription
            .max_in_flight(settings.max_in_flight)
            .unwrap_or(settings.max_in_flight),
        identity: None,
    })
}

/// What to do about one trigger.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TriggerAction {
    /// Its dispatcher runs this plan on this broker: nothing to do.
    Keep,
    /// Subscribe and start a dispatcher (stopping one that runs first: its
    /// unacknowledged deliveries come again through the new subscription).
    Start,
    /// It cannot run: stop its dispatcher but keep its cursor, so it resumes
    /// where it stopped once the problem is fixed.
    Stop(Box<Status>),
}

/// A trigger's dispatcher as it runs.
pub(crate) struct RunningDispatcher<'a> {
    pub plan: &'a TriggerPlan,
    /// Whether it still delivers from the broker the plan names (a broker
    /// restarted since is another broker).
    pub same_broker: bool,
    pub finished: bool,
}

pub(crate) fn trigger_action(
    plan: &Result<TriggerPlan, Box<Status>>,
    running: Option<RunningDispatcher<'_>>,
) -> TriggerAction {
    match (plan, running) {
        (Err(status), _) => TriggerAction::Stop(status.clone()),
        (Ok(plan), Some(r)) if r.plan == plan && r.same_broker && !r.finished => {
            TriggerAction::Keep
        }
        (Ok(_), _) => TriggerAction::Start,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    use crate::eventing::backend::log::{LogConfig, LogPlan};
    use crate::eventing::backend::memory::MemoryConfig;

    fn log(name: &str) -> LogPlan {
        LogPlan {
            dir: PathBuf::from(name),
            config: LogConfig::default(),
        }
    }

    #[test]
    fn a_broker_is_kept_restarted_or_replaced_by_what_changed() {
        let a = log("a");
        let b = log("b");
        let memory = MemoryConfig::default();
        assert_eq!(broker_action(Ok(&a), None), BrokerAction::Start);
        assert_eq!(broker_action(Ok(&a), Some(&a)), BrokerAction::Keep);
        assert_eq!(broker_action(Ok(&log("a")), Some(&a)), BrokerAction::Keep);
        assert_eq!(broker_action(Ok(&b), Some(&a)), BrokerAction::Restart);
        assert_eq!(broker_action(Ok(&memory), Some(&a)), BrokerAction::Replace);
        assert_eq!(broker_action(Ok(&a), Some(&memory)), BrokerAction::Replace);
        assert_eq!(
            broker_action(Err("bad config"), Some(&a)),
            BrokerAction::KeepPrevious("bad config".into())
        );
        assert_eq!(
            broker_action(Err("bad config"), None),
            BrokerAction::Refuse("bad config".into())
        );
    }

    fn plan(subscriber: &str) -> TriggerPlan {
        TriggerPlan {
            key: ObjectKey::new("ns", "t"),
            broker: ObjectKey::new("ns", "b"),
            broker_url: "http://127.0.0.1:8080/ns/b".into(),
            filter: Arc::new(Filter::Everything),
            subscriber: Some(Target::from(subscriber.parse::<Uri>().expect("uri"))),
            reply: ReplyTo::Store,
            delivery: DeliveryPolicy::from_spec(None, None),
            ordered: false,
            max_in_flight: 1,
            identity: None,
        }
    }

    #[test]
    fn a_trigger_restarts_only_when_its_plan_or_broker_changed_or_its_dispatcher_ended() {
        let current = plan("http://a/");
        let running = |same_broker, finished| {
            Some(RunningDispatcher {
                plan: &current,
                same_broker,
                finished,
            })
        };
        assert_eq!(
            trigger_action(&Ok(plan("http://a/")), running(true, false)),
            TriggerAction::Keep
        );
        assert_eq!(
            trigger_action(&Ok(plan("http://b/")), running(true, false)),
            TriggerAction::Start
        );
        assert_eq!(
            trigger_action(&Ok(plan("http://a/")), running(false, false)),
            TriggerAction::Start
        );
        assert_eq!(
            trigger_action(&Ok(plan("http://a/")), running(true, true)),
            TriggerAction::Start
        );
        assert_eq!(
            trigger_action(&Ok(plan("http://a/")), None),
            TriggerAction::Start
        );
        let refused = Box::new(Status::not_ready("BrokerDoesNotExist", "no"));
        assert_eq!(
            trigger_action(&Err(refused.clone()), running(true, false)),
            TriggerAction::Stop(refused)
        );
    }

    #[test]
    fn destinations_resolve_uris_brokers_and_services_with_a_path() {
        let brokers: BTreeSet<ObjectKey> = [ObjectKey::new("ns", "default")].into();
        let services = |key: &ObjectKey| {
            (key.name == "hello").then(|| "http://hello.ns.localhost:8080".to_owned())
        };
        let addresses = Addresses::from([(
            ("InMemoryChannel".to_owned(), ObjectKey::new("ns", "c")),
            "http://127.0.0.1:8080/ns/c-kn-channel".to_owned(),
        )]);
        let destinations = Destinations {
            ingress_url: "http://127.0.0.1:8080",
            brokers: &brokers,
            services: &services,
            addresses: &addresses,
        };
        let destination =
            |yaml: &str| -> Destination { serde_saphyr::from_str(yaml).expect("a destination") };
        assert_eq!(
            destinations
                .resolve(
                    &destination(
                        "ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}"
                    ),
                    "ns"
                )
                .map(|u| u.to_string()),
            Ok("http://127.0.0.1:8080/ns/default".to_owned())
        );
        assert_eq!(
            destinations
                .resolve(&destination("ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: hello}\nuri: /orders"), "ns")
                .map(|u| u.to_string()),
            Ok("http://hello.ns.localhost:8080/orders".to_owned())
        );
        let missing = destinations
            .resolve(
                &destination(
                    "ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: nope}",
                ),
                "ns",
            )
            .expect_err("no such service");
        assert_eq!(missing, "service ns/nope does not exist");
        let channel = destinations
            .resolve(
                &destination(
                    "ref: {apiVersion: messaging.knative.dev/v1, kind: InMemoryChannel, name: c}",
                ),
                "ns",
            )
            .map(|u| u.to_string());
        assert_eq!(
            channel,
            Ok("http://127.0.0.1:8080/ns/c-kn-channel".to_owned())
        );
        let missing = destinations
            .resolve(
                &destination("ref: {apiVersion: flows.knative.dev/v1, kind: Sequence, name: s}"),
                "ns",
            )
            .expect_err("no such sequence");
        assert_eq!(missing, "Sequence ns/s does not exist");
    }
}
