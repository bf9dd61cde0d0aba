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
    /// A Kafka topic per broker (Knative's eventing-kafka-broker classes
    /// `Kafka` and `KafkaNamespaced`).
    Kafka,
}

/// Knative's per-namespace Kafka data plane. In one process there is one
/// data plane either way, so it is the `Kafka` class with Knative's one
/// extra rule: its ConfigMap is in the broker's namespace.
pub(crate) const KAFKA_NAMESPACED: &str = "KafkaNamespaced";

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
            "Kafka" | KAFKA_NAMESPACED => Ok(BrokerClass::Kafka),
            other => Err(Invalid::new(
                format!("metadata.annotations.{CLASS_ANNOTATION}"),
                format!(
                    "unknown broker class '{other}'; known classes: MTChannelBasedBroker (durable log, the default), Memory, Kafka, KafkaNamespaced, RabbitMQBroker"
                ),
            )),
        }
    }

    /// The class annotation's value that means this class, as Knative's
    /// webhook writes it on Brokers that have none.
    pub(crate) fn annotation_value(self) -> &'static str {
        match self {
            BrokerClass::Log => "MTChannelBasedBroker",
            BrokerClass::Memory => "Memory",
            BrokerClass::RabbitMq => "RabbitMQBroker",
            BrokerClass::Kafka => "Kafka",
        }
    }

    /// The broker's class as its annotation names it (`KafkaNamespaced`
    /// stays itself), or the default class's name when it has none.
    pub(crate) fn name_of(broker: &Broker, default: BrokerClass) -> String {
        broker
            .metadata
            .annotations
            .get(CLASS_ANNOTATION)
            .cloned()
            .unwrap_or_else(|| default.annotation_value().to_owned())
    }
}

impl Broker {
    pub(crate) fn validate(&self, default_class: BrokerClass) -> Result<(), Invalid> {
        BrokerClass::of(self, default_class)?;
        if self.metadata.name.ends_with(super::channel::STORE_SUFFIX) {
            return Err(Invalid::new(
                "metadata.name",
                format!(
                    "'{}' ends with '{}', which pilotlight keeps for the addresses of channels: rename the broker",
                    self.metadata.name,
                    super::channel::STORE_SUFFIX
                ),
            ));
        }
        self.check_namespaced_config()?;
        if let Some(delivery) = &self.spec.delivery {
            delivery.validate("spec.delivery")?;
        }
        Ok(())
    }
}

impl Broker {
    /// A `KafkaNamespaced` broker reads its ConfigMap from its own
    /// namespace, as Knative's webhook requires.
    fn check_namespaced_config(&self) -> Result<(), Invalid> {
        let namespaced = self
            .metadata
            .annotations
            .get(CLASS_ANNOTATION)
            .map(String::as_str)
            == Some(KAFKA_NAMESPACED);
        let config_namespace = self
            .spec
            .config
            .as_ref()
            .and_then(|c| c.namespace.as_deref())
            .filter(|ns| !ns.is_empty());
        match config_namespace {
            Some(ns) if namespaced && ns != self.metadata.namespace() => Err(Invalid::new(
                "spec.config.namespace",
                format!(
                    "a {KAFKA_NAMESPACED} broker's ConfigMap is in its own namespace '{}', not '{ns}': copy the ConfigMap there, or use the class Kafka",
                    self.metadata.namespace()
                ),
            )),
            _ => Ok(()),
        }
    }
}

impl crate::api::kinds::Kind for Broker {
    fn check(&self, context: &crate::api::kinds::LoadContext) -> Result<(), Invalid> {
        self.validate(context.default_class)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Resource;
    use crate::api::manifest::parse_document;

    fn broker(class: &str, spec: &str) -> Result<Broker, String> {
        let doc = format!(
            "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: b\n  namespace: shop\n  annotations:\n    eventing.knative.dev/broker.class: {class}\n{spec}"
        );
        match parse_document(&doc, BrokerClass::Log) {
            Ok(Some(Resource::Broker(b))) => Ok(*b),
            Ok(other) => panic!("not a broker: {other:?}"),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn kafka_namespaced_is_the_kafka_class_and_keeps_its_name() {
        let b = broker("KafkaNamespaced", "").expect("loads");
        assert_eq!(
            BrokerClass::of(&b, BrokerClass::Log),
            Ok(BrokerClass::Kafka)
        );
        assert_eq!(
            BrokerClass::name_of(&b, BrokerClass::Log),
            "KafkaNamespaced"
        );
        let mut plain = b.clone();
        plain.metadata.annotations.clear();
        assert_eq!(
            BrokerClass::name_of(&plain, BrokerClass::Log),
            "MTChannelBasedBroker"
        );
    }

    #[test]
    fn kafka_namespaced_config_must_be_in_the_broker_namespace() {
        let spec = |ns: &str| {
            format!(
                "spec:\n  config:\n    apiVersion: v1\n    kind: ConfigMap\n    name: kafka-broker-config\n    namespace: {ns}\n"
            )
        };
        assert!(broker("KafkaNamespaced", &spec("shop")).is_ok());
        assert!(broker("Kafka", &spec("knative-eventing")).is_ok());
        let err = broker("KafkaNamespaced", &spec("knative-eventing")).expect_err("other ns");
        assert!(
            err.contains("Broker shop/b: field spec.config.namespace: a KafkaNamespaced broker's ConfigMap is in its own namespace 'shop'"),
            "{err}"
        );
    }
}
