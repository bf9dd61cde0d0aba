//! `Broker` (eventing.knative.dev/v1).

use serde::{Deserialize, Serialize};

use super::duck::{DeliverySpec, KReference};
use super::{Invalid, ObjectMeta};

/// The annotation that picks a broker's backend.
pub(crate) const CLASS_ANNOTATION: &str = "eventing.knative.dev/broker.class";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Broker {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: BrokerSpec,
    #[serde(default, skip_serializing)]
    pub status: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BrokerSpec {
    /// Backend-specific configuration (a ConfigMap for Kafka, a
    /// RabbitmqBrokerConfig for RabbitMQ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<KReference>,
    /// The default delivery of the broker's triggers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

/// Where a broker keeps its events, from its class annotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerClass {
    /// The durable on-disk log (also what Knative's default class,
    /// `MTChannelBasedBroker`, means here).
    Log,
    /// In memory: no durability.
    Memory,
    /// RabbitMQ (`RabbitMQBroker`): an exchange per broker, a queue per trigger.
    #[serde(rename = "rabbitmq")]
    RabbitMq,
    /// A Kafka topic per broker (Knative's eventing-kafka-broker class).
    Kafka,
}

impl BrokerClass {
    /// The class a broker asks for; `default` when it has no annotation.
    pub(crate) fn of(broker: &Broker, default: BrokerClass) -> Result<BrokerClass, Invalid> {
        let Some(class) = broker.metadata.annotations.get(CLASS_ANNOTATION) else {
            return Ok(default);
        };
        match class.as_str() {
            "MTChannelBasedBroker" | "Log" | "log" => Ok(BrokerClass::Log),
            "Memory" | "memory" => Ok(BrokerClass::Memory),
            "RabbitMQBroker" => Ok(BrokerClass::RabbitMq),
            "Kafka" => Ok(BrokerClass::Kafka),
            other => Err(Invalid::new(
                format!("metadata.annotations.{CLASS_ANNOTATION}"),
                format!(
                    "unknown broker class '{other}'; known classes: MTChannelBasedBroker (durable log, the default), Memory, Kafka, RabbitMQBroker"
                ),
            )),
        }
    }
}

impl Broker {
    pub(crate) fn validate(&self, default_class: BrokerClass) -> Result<(), Invalid> {
        self.metadata.validate()?;
        BrokerClass::of(self, default_class)?;
        if let Some(delivery) = &self.spec.delivery {
            delivery.validate("spec.delivery")?;
        }
        Ok(())
    }
}

impl crate::api::kinds::Kind for Broker {
    fn check(&self, context: &crate::api::kinds::LoadContext) -> Result<(), Invalid> {
        self.validate(context.default_class)
    }
}
