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
/// `Variant(type) in [apiVersions] as Role;`.
macro_rules! kinds {
    ($( $(#[$doc:meta])* $name:ident($ty:ty) in [$($version:literal),+] as $role:ident; )*) => {
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
                parse: |value, context| {
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

kinds! {
    Broker(super::broker::Broker) in ["eventing.knative.dev/v1"] as Broker;
    Trigger(super::trigger::Trigger) in ["eventing.knative.dev/v1"] as Trigger;
    Service(super::service::Service) in ["serving.knative.dev/v1"] as Service;
    PingSource(super::sources::ping::PingSource) in ["sources.knative.dev/v1"] as Source;
    ApiServerSource(super::sources::apiserver::ApiServerSource) in ["sources.knative.dev/v1"] as Source;
    /// Both versions have the same schema.
    KafkaSource(super::sources::kafka::KafkaSource)
        in ["sources.knative.dev/v1beta1", "sources.knative.dev/v1"] as Source;
    ConfigMap(super::config::ConfigMap) in ["v1"] as Referenced;
    Secret(super::config::Secret) in ["v1"] as Referenced;
    RabbitmqBrokerConfig(super::rabbitmq::RabbitmqBrokerConfig)
        in ["eventing.knative.dev/v1alpha1"] as Referenced;
    RabbitmqSource(super::sources::rabbitmq::RabbitmqSource)
        in ["sources.knative.dev/v1alpha1"] as Source;
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
}
