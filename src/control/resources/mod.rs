//! The Knative kinds pilotlight accepts, as serde types that refuse unknown
//! fields, plus the checks serde cannot express.

pub mod broker;
pub mod config;
pub mod duck;
pub mod meta;
pub mod pod;
pub mod quantity;
pub mod service;
pub mod trigger;

use std::fmt;

pub use crate::eventing::backend::rabbitmq::config::RabbitmqBrokerConfig;
pub use crate::eventing::source::apiserver::ApiServerSource;
pub use crate::eventing::source::kafka::KafkaSource;
pub use crate::eventing::source::ping::PingSource;
pub use crate::eventing::source::rabbitmq::RabbitmqSource;
pub use broker::Broker;
pub use config::{ConfigMap, Secret};
pub use meta::ObjectMeta;
pub use service::Service;
pub use trigger::Trigger;

/// A field whose value is wrong, and why. `field` is a path such as
/// `spec.delivery.retry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// One accepted object of a known kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    Broker(Broker),
    Trigger(Trigger),
    Service(Box<Service>),
    PingSource(Box<PingSource>),
    ApiServerSource(Box<ApiServerSource>),
    KafkaSource(Box<KafkaSource>),
    ConfigMap(Box<ConfigMap>),
    Secret(Box<Secret>),
    RabbitmqBrokerConfig(Box<RabbitmqBrokerConfig>),
    RabbitmqSource(Box<RabbitmqSource>),
}

impl Resource {
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::Broker(_) => "Broker",
            Resource::Trigger(_) => "Trigger",
            Resource::Service(_) => "Service",
            Resource::PingSource(_) => "PingSource",
            Resource::ApiServerSource(_) => "ApiServerSource",
            Resource::KafkaSource(_) => "KafkaSource",
            Resource::ConfigMap(_) => "ConfigMap",
            Resource::Secret(_) => "Secret",
            Resource::RabbitmqBrokerConfig(_) => "RabbitmqBrokerConfig",
            Resource::RabbitmqSource(_) => "RabbitmqSource",
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Resource::Broker(b) => &b.metadata,
            Resource::Trigger(t) => &t.metadata,
            Resource::Service(s) => &s.metadata,
            Resource::PingSource(p) => &p.metadata,
            Resource::ApiServerSource(a) => &a.metadata,
            Resource::KafkaSource(k) => &k.metadata,
            Resource::ConfigMap(c) => &c.metadata,
            Resource::Secret(s) => &s.metadata,
            Resource::RabbitmqBrokerConfig(c) => &c.metadata,
            Resource::RabbitmqSource(r) => &r.metadata,
        }
    }
}

/// The kinds pilotlight knows: (apiVersion, kind).
pub const KNOWN_KINDS: &[(&str, &str)] = &[
    ("eventing.knative.dev/v1", "Broker"),
    ("eventing.knative.dev/v1", "Trigger"),
    ("serving.knative.dev/v1", "Service"),
    ("sources.knative.dev/v1", "PingSource"),
    ("sources.knative.dev/v1", "ApiServerSource"),
    // Both versions of KafkaSource have the same schema.
    ("sources.knative.dev/v1beta1", "KafkaSource"),
    ("sources.knative.dev/v1", "KafkaSource"),
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("eventing.knative.dev/v1alpha1", "RabbitmqBrokerConfig"),
    ("sources.knative.dev/v1alpha1", "RabbitmqSource"),
];
