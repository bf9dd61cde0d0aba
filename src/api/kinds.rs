//! The one registry of the kinds pilotlight knows: each kind's name, the
//! apiVersions it is read in, what pilotlight does with it, and how an
//! object of it is parsed and checked.
//!
//! Adding a kind is a file in `api/` (its serde type, with an impl of
//! [`Kind`]) and one line in [`kinds!`] below: the [`Resource`] enum, the
//! manifest loader, Kubernetes mode's watches and the control plane's
//! sorting all read this table. A kind that is not here is refused by name.

use serde::de::DeserializeOwned;

use super::broker::BrokerClass;
use super::meta::{NameRule, check_names};
use super::{Invalid, ObjectMeta};

/// What the registry asks of each kind's type, beyond its serde shape.
pub(crate) trait Kind: DeserializeOwned {
    /// The checks serde cannot express (names, ranges, references between
    /// fields), naming the field that is wrong.
    fn check(&self, context: &LoadContext) -> Result<(), Invalid>;
}

/// What a check may depend on beyond the object itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadContext {
    /// The class of Brokers without the class annotation
    /// (`--default-broker-class`).
    pub default_class: BrokerClass,
}

/// What pilotlight does with objects of a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Runs it as a broker.
    Broker,
    /// Delivers a broker's events by it.
    Trigger,
    /// Serves it from zero.
    Service,
    /// Runs it as a source of events.
    Source,
    /// Runs it as a channel: an address whose events go to every
    /// subscription of it.
    Channel,
    /// Delivers a channel's events by it.
    Subscription,
    /// Wires channels and subscriptions from it (Sequence, Parallel).
    Flow,
    /// Binds a sink into the pods of another object (SinkBinding): changes
    /// what that object runs, so it is applied before everything else.
    Binding,
    /// Receives events and acts on each (a JobSink runs a job per event).
    Sink,
    /// Decides who may send events to brokers and channels (EventPolicy).
    Policy,
    /// Only reads it where another object refers to it (a Broker's
    /// `spec.config`, a Secret with credentials): no status, no finalizer.
    Referenced,
}

impl Role {
    /// Whether pilotlight reconciles objects of this role (writes their
    /// status, holds a finalizer on them in Kubernetes mode).
    pub(crate) fn is_reconciled(self) -> bool {
        self != Role::Referenced
    }
}

/// A refusal while parsing: the field (when known) and why.
pub(crate) type Refusal = (Option<String>, String);

/// One registered kind.
#[derive(Debug, Clone, Copy)]
pub struct KindInfo {
    pub kind: &'static str,
    /// The apiVersions objects of this kind are read in (the same schema);
    /// Kubernetes mode watches the last one.
    pub api_versions: &'static [&'static str],
    pub role: Role,
    /// What the names of its objects must look like.
    pub names: NameRule,
    parse: fn(serde_json::Value, &LoadContext) -> Result<Resource, Refusal>,
}

impl KindInfo {
    /// Parses and checks an object of this kind.
    pub(crate) fn parse(
        &self,
        value: serde_json::Value,
        context: &LoadContext,
    ) -> Result<Resource, Refusal> {
        (self.parse)(value, context)
    }
}

/// The kind named `kind`, if pilotlight knows it.
pub(crate) fn find(kind: &str) -> Option<&'static KindInfo> {
    KINDS.iter().find(|k| k.kind == kind)
}

/// Defines [`Resource`] and [`KINDS`] from one line per kind:
/// `Variant(type) in [apiVersions] as Role, named NameRule;`.
macro_rules! kinds {
    ($( $(#[$doc:meta])* $name:ident($ty:ty) in [$($version:literal),+] as $role:ident, named $names:ident; )*) => {
        /// One accepted object of a known kind.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Resource {
            $( $(#[$doc])* $name(Box<$ty>), )*
        }

        impl Resource {
            pub(crate) fn kind(&self) -> &'static str {
                match self {
                    $( Resource::$name(_) => stringify!($name), )*
                }
            }

            pub(crate) fn metadata(&self) -> &ObjectMeta {
                match self {
                    $( Resource::$name(object) => &object.metadata, )*
                }
            }

            /// The apiVersion it was written in.
            pub(crate) fn api_version(&self) -> &str {
                match self {
                    $( Resource::$name(object) => &object.api_version, )*
                }
            }

            /// The object as JSON, as it was loaded.
            pub(crate) fn to_json(&self) -> serde_json::Value {
                let json = match self {
                    $( Resource::$name(object) => serde_json::to_value(object), )*
                };
                json.unwrap_or_default()
            }

            pub(crate) fn role(&self) -> Role {
                match self {
                    $( Resource::$name(_) => Role::$role, )*
                }
            }
        }

        /// Every kind pilotlight knows, in the order `get` and errors list them.
        pub const KINDS: &[KindInfo] = &[
            $( KindInfo {
                kind: stringify!($name),
                api_versions: &[$($version),+],
                role: Role::$role,
                names: NameRule::$names,
                parse: |value, context| {
                    check_names(&value, NameRule::$names)
                        .map_err(|e| (Some(e.field), e.reason))?;
                    let object: $ty = deserialize(value)?;
                    object
                        .check(context)
                        .map_err(|e| (Some(e.field), e.reason))?;
                    Ok(Resource::$name(Box::new(object)))
                },
            }, )*
        ];
    };
}

// Names: the API server's DNS-1123 subdomain unless Knative's webhook asks
// for more; only Knative Serving does (its names become host labels).
kinds! {
    Broker(super::broker::Broker) in ["eventing.knative.dev/v1"] as Broker, named Subdomain;
    Trigger(super::trigger::Trigger) in ["eventing.knative.dev/v1"] as Trigger, named Subdomain;
    Service(super::service::Service) in ["serving.knative.dev/v1"] as Service, named Dns1035Label;
    PingSource(super::sources::ping::PingSource) in ["sources.knative.dev/v1"] as Source, named Subdomain;
    ApiServerSource(super::sources::apiserver::ApiServerSource)
        in ["sources.knative.dev/v1"] as Source, named Subdomain;
    /// Both versions have the same schema.
    KafkaSource(super::sources::kafka::KafkaSource)
        in ["sources.knative.dev/v1beta1", "sources.knative.dev/v1"] as Source, named Subdomain;
    ConfigMap(super::config::ConfigMap) in ["v1"] as Referenced, named Subdomain;
    Secret(super::config::Secret) in ["v1"] as Referenced, named Subdomain;
    RabbitmqBrokerConfig(super::rabbitmq::RabbitmqBrokerConfig)
        in ["eventing.knative.dev/v1alpha1"] as Referenced, named Subdomain;
    RabbitmqSource(super::sources::rabbitmq::RabbitmqSource)
        in ["sources.knative.dev/v1alpha1"] as Source, named Subdomain;
    InMemoryChannel(super::channel::InMemoryChannel)
        in ["messaging.knative.dev/v1"] as Channel, named Subdomain;
    KafkaChannel(super::channel::KafkaChannel)
        in ["messaging.knative.dev/v1beta1"] as Channel, named Subdomain;
    Channel(super::channel::Channel) in ["messaging.knative.dev/v1"] as Channel, named Subdomain;
    Subscription(super::subscription::Subscription)
        in ["messaging.knative.dev/v1"] as Subscription, named Subdomain;
    Sequence(super::flows::Sequence) in ["flows.knative.dev/v1"] as Flow, named Subdomain;
    Parallel(super::flows::Parallel) in ["flows.knative.dev/v1"] as Flow, named Subdomain;
    ContainerSource(super::sources::container::ContainerSource)
        in ["sources.knative.dev/v1"] as Source, named Subdomain;
    SinkBinding(super::sources::sinkbinding::SinkBinding)
        in ["sources.knative.dev/v1"] as Binding, named Subdomain;
    JobSink(super::jobsink::JobSink) in ["sinks.knative.dev/v1alpha1"] as Sink, named Subdomain;
    EventPolicy(super::eventpolicy::EventPolicy)
        in ["eventing.knative.dev/v1alpha1"] as Policy, named Subdomain;
}

/// Parses one object of a known kind from YAML, as the loader does, with
/// a refusal as `field: reason` (for the kinds' tests).
#[cfg(test)]
pub(crate) fn parse_yaml(yaml: &str) -> Result<Resource, String> {
    let value: serde_json::Value = serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
    let kind = value["kind"].as_str().unwrap_or_default().to_owned();
    let context = LoadContext {
        default_class: BrokerClass::Memory,
    };
    find(&kind)
        .ok_or_else(|| format!("unknown kind {kind}"))?
        .parse(value, &context)
        .map_err(|(field, reason)| format!("{}: {reason}", field.unwrap_or_default()))
}

/// Deserialises with the path of the failing field.
fn deserialize<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, Refusal> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        // The path already ends with an unknown field's name.
        if let Some(rest) = message.strip_prefix("unknown field `")
            && let Some((_, expected)) = rest.split_once('`')
        {
            let reason = super::hint::unknown_field(&path, &super::hint::expected_fields(expected))
                .unwrap_or_else(|| format!("unknown field{expected}"));
            return (Some(path), reason);
        }
        if let Some(field) = message
            .strip_prefix("missing field `")
            .and_then(|r| r.strip_suffix('`'))
        {
            let full = if path == "." {
                field.to_owned()
            } else {
                format!("{path}.{field}")
            };
            return (Some(full), "is required".to_owned());
        }
        ((path != ".").then_some(path), message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_registered_once_with_its_versions() {
        let mut names: Vec<&str> = KINDS.iter().map(|k| k.kind).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), KINDS.len(), "a kind is registered twice");
        let kafka = find("KafkaSource").expect("registered");
        assert_eq!(kafka.api_versions.last(), Some(&"sources.knative.dev/v1"));
        assert!(!find("Secret").expect("registered").role.is_reconciled());
        assert!(find("Pod").is_none());
    }

    /// A minimal object of `kind` named `name`: enough to reach the name
    /// check, which runs before the kind's own.
    fn object(kind: &KindInfo, name: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": kind.api_versions[0],
            "kind": kind.kind,
            "metadata": {"name": name, "namespace": "default"},
        })
    }

    /// Whether `kind` refuses `name` for its name (other refusals, of the
    /// minimal object's empty spec, do not count).
    fn refuses_name(kind: &KindInfo, name: &str) -> Option<String> {
        let context = LoadContext {
            default_class: BrokerClass::Memory,
        };
        match kind.parse(object(kind, name), &context) {
            Err((Some(field), reason)) if field == "metadata.name" => Some(reason),
            _ => None,
        }
    }

    #[test]
    fn each_kind_checks_names_by_its_rule() {
        let label_only = ["Service"];
        for kind in KINDS {
            let want = if label_only.contains(&kind.kind) {
                NameRule::Dns1035Label
            } else {
                NameRule::Subdomain
            };
            assert_eq!(kind.names, want, "{}", kind.kind);
            for name in ["orders", "a-1", "x9"] {
                assert_eq!(refuses_name(kind, name), None, "{} {name}", kind.kind);
            }
            for name in ["Orders", "-a", "a-", "a_b", "a..b", ".a", &"a".repeat(254)] {
                assert!(refuses_name(kind, name).is_some(), "{} {name}", kind.kind);
            }
            // Dots: the API server's names for ConfigMaps, Secrets and
            // custom resources; not a host label.
            for name in ["orders.v1", "kube-root-ca.crt", "sh.helm.release.v1.x.v1"] {
                let refused = refuses_name(kind, name);
                assert_eq!(
                    refused.is_some(),
                    want == NameRule::Dns1035Label,
                    "{} {name}",
                    kind.kind
                );
            }
            // Longer than a label, within a subdomain.
            let long = format!("{}.{}", "a".repeat(70), "b".repeat(70));
            let refused = refuses_name(kind, &long);
            assert_eq!(
                refused.is_some(),
                want == NameRule::Dns1035Label,
                "{} long",
                kind.kind
            );
            // A label must start with a letter for Knative Serving only.
            let refused = refuses_name(kind, "1st");
            assert_eq!(
                refused.is_some(),
                want == NameRule::Dns1035Label,
                "{} 1st",
                kind.kind
            );
        }
    }

    #[test]
    fn a_refused_name_says_the_rule() {
        let service = find("Service").expect("registered");
        let reason = refuses_name(service, "orders.v1").expect("refused");
        assert!(
            reason.starts_with("'orders.v1' must be a DNS-1035 label, as Knative requires"),
            "{reason}"
        );
        let trigger = find("Trigger").expect("registered");
        let reason = refuses_name(trigger, "Orders").expect("refused");
        assert!(
            reason.starts_with("'Orders' must be a DNS-1123 subdomain: at most 253 characters"),
            "{reason}"
        );
    }

    #[test]
    fn namespaces_are_labels_for_every_kind() {
        let context = LoadContext {
            default_class: BrokerClass::Memory,
        };
        for kind in KINDS {
            let mut value = object(kind, "ok");
            value["metadata"]["namespace"] = "team.a".into();
            let refused = kind.parse(value, &context).expect_err("a dotted namespace");
            assert_eq!(
                refused.0.as_deref(),
                Some("metadata.namespace"),
                "{}",
                kind.kind
            );
        }
    }
}
