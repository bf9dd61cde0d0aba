//! `RabbitmqBrokerConfig` (eventing.knative.dev/v1alpha1), the object a
//! RabbitMQBroker's `spec.config` points at, and eventing-rabbitmq's cluster
//! reference, which a RabbitmqSource uses too. How they resolve to a
//! connection is `eventing::backend::rabbitmq::config`.

use serde::{Deserialize, Serialize};

use crate::api::{Invalid, ObjectKey, ObjectMeta};

pub(crate) const API_VERSION: &str = "eventing.knative.dev/v1alpha1";
pub(crate) const KIND: &str = "RabbitmqBrokerConfig";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RabbitmqBrokerConfig {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: RabbitmqBrokerConfigSpec,
    #[serde(default, skip_serializing)]
    pub status: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RabbitmqBrokerConfigSpec {
    /// Where RabbitMQ is. Without it, pilotlight's `--rabbitmq-uri` is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rabbitmq_cluster_reference: Option<RabbitmqClusterReference>,
    /// The type of the trigger queues (default quorum).
    #[serde(default)]
    pub queue_type: QueueType,
    /// The virtual host; overrides the one in the URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<String>,
}

/// eventing-rabbitmq's reference to a cluster. pilotlight reads only the
/// connection Secret (it has no RabbitmqCluster objects to look up).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RabbitmqClusterReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_secret: Option<SecretReference>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretReference {
    pub name: String,
}

impl RabbitmqClusterReference {
    /// A reference pilotlight can follow names a connection Secret.
    pub(crate) fn validate(&self, field: &str) -> Result<(), Invalid> {
        match &self.connection_secret {
            Some(secret) if !secret.name.is_empty() => Ok(()),
            Some(_) => Err(Invalid::new(
                format!("{field}.connectionSecret.name"),
                "must not be empty",
            )),
            None => Err(Invalid::new(
                format!("{field}.connectionSecret"),
                "is required: pilotlight reads the RabbitMQ address from a Secret with key 'uri' (and optionally 'username', 'password'); it cannot look up RabbitmqCluster objects by name",
            )),
        }
    }

    /// The Secret's key, in the reference's namespace or else `namespace`.
    pub(crate) fn secret_key(&self, namespace: &str) -> Option<ObjectKey> {
        let secret = self.connection_secret.as_ref()?;
        Some(ObjectKey::new(
            self.namespace.as_deref().unwrap_or(namespace),
            secret.name.clone(),
        ))
    }
}

/// `x-queue-type` of the queues pilotlight declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Replicated and durable: RabbitMQ's recommendation, eventing-rabbitmq's default.
    #[default]
    Quorum,
    Classic,
}

impl QueueType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
    }
}

impl RabbitmqBrokerConfig {
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        if let Some(reference) = &self.spec.rabbitmq_cluster_reference {
            reference.validate("spec.rabbitmqClusterReference")?;
        }
        if self.spec.vhost.as_deref() == Some("") {
            return Err(Invalid::new(
                "spec.vhost",
                "must not be empty: leave it out for the URI's vhost, or use '/'",
            ));
        }
        Ok(())
    }
}

impl crate::api::kinds::Kind for RabbitmqBrokerConfig {
    fn check(&self, _context: &crate::api::kinds::LoadContext) -> Result<(), Invalid> {
        self.validate()
    }
}
