//! Knative's API as pilotlight reads it: every kind's serde type (refusing
//! unknown fields) and the checks serde cannot express, the duck types,
//! object metadata and status, and one registry of kinds ([`kinds`]).
//!
//! This is the bottom layer: `eventing` and `serving` build on it, `control`
//! on all three, and nothing here depends on them (a test checks).

pub(crate) mod autoscaling;
pub mod broker;
pub(crate) mod channel;
mod config;
pub mod duck;
mod duration;
pub mod eventpolicy;
pub mod filter;
pub(crate) mod flows;
mod hint;
pub(crate) mod index;
pub mod jobsink;
pub mod kinds;
pub(crate) mod manifest;
mod meta;
pub mod pod;
mod quantity;
pub(crate) mod rabbitmq;
pub mod service;
pub mod sources;
pub(crate) mod status;
pub(crate) mod subscription;
pub(crate) mod trigger;

use std::fmt;

use serde::{Deserialize, Serialize};

pub(crate) use broker::Broker;
pub(crate) use config::{
    ConfigMap, FEATURES_NAME, FEATURES_NAMESPACE, Secret, TRANSPORT_ENCRYPTION_KEY,
};
pub use kinds::Resource;
pub(crate) use meta::ObjectMeta;
pub(crate) use rabbitmq::RabbitmqBrokerConfig;
pub(crate) use trigger::Trigger;

/// The identity of a namespaced object of one kind: `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A field whose value is wrong, and why. `field` is a path such as
/// `spec.delivery.retry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

impl Invalid {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
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
