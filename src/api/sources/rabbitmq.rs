//! `RabbitmqSource` (sources.knative.dev/v1alpha1), as eventing-rabbitmq
//! defines it: messages from a RabbitMQ queue sent to a sink. The running
//! source is `eventing::source::rabbitmq`.

use serde::{Deserialize, Serialize};

use crate::api::duck::{CeOverrides, DeliverySpec, Destination};
use crate::api::rabbitmq::RabbitmqClusterReference;
use crate::api::{Invalid, ObjectMeta};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RabbitmqSource {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: RabbitmqSourceSpec,
    #[serde(default, skip_serializing)]
    pub status: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RabbitmqSourceSpec {
    /// Where RabbitMQ is; without it, pilotlight's `--rabbitmq-uri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rabbitmq_cluster_reference: Option<RabbitmqClusterReference>,
    pub rabbitmq_resources_config: RabbitmqResourcesConfig,
    /// Retries and backoff of each send to the sink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
    /// Accepted so that eventing-rabbitmq manifests load; unused here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    pub sink: Destination,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ce_overrides: Option<CeOverrides>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RabbitmqResourcesConfig {
    /// Overrides the vhost of the connection URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<String>,
    pub queue_name: String,
    /// When the source declares its queue, it binds it to this exchange.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<i64>,
    /// The queue (and exchange) exist already: declare nothing.
    #[serde(default)]
    pub predeclared: bool,
}

/// Longest AMQP name.
const MAX_NAME: usize = 255;

impl RabbitmqSource {
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        let resources = &self.spec.rabbitmq_resources_config;
        let field = "spec.rabbitmqResourcesConfig";
        if resources.queue_name.is_empty() {
            return Err(Invalid::new(format!("{field}.queueName"), "is required"));
        }
        for (name, value) in [
            ("queueName", Some(&resources.queue_name)),
            ("exchangeName", resources.exchange_name.as_ref()),
        ] {
            if value.is_some_and(|v| v.len() > MAX_NAME) {
                return Err(Invalid::new(
                    format!("{field}.{name}"),
                    "is longer than RabbitMQ's 255 bytes",
                ));
            }
        }
        if resources.vhost.as_deref() == Some("") {
            return Err(Invalid::new(
                format!("{field}.vhost"),
                "must not be empty: leave it out for the URI's vhost, or use '/'",
            ));
        }
        self.parallelism()?;
        if let Some(reference) = &self.spec.rabbitmq_cluster_reference {
            reference.validate("spec.rabbitmqClusterReference")?;
        }
        if let Some(delivery) = &self.spec.delivery {
            delivery.validate("spec.delivery")?;
            if delivery.dead_letter_sink.is_some() {
                return Err(Invalid::new(
                    "spec.delivery.deadLetterSink",
                    "is not supported by RabbitmqSource: a message the sink refuses is rejected, so give the queue a dead-letter exchange in RabbitMQ",
                ));
            }
        }
        self.spec.sink.validate("spec.sink")?;
        if let Some(overrides) = &self.spec.ce_overrides {
            overrides.validate("spec.ceOverrides")?;
        }
        Ok(())
    }

    /// Messages sent at once (and the prefetch): 1 to 1000, default 1.
    pub(crate) fn parallelism(&self) -> Result<u16, Invalid> {
        match self.spec.rabbitmq_resources_config.parallelism {
            None => Ok(1),
            Some(n) if (1..=1000).contains(&n) => Ok(n as u16),
            Some(n) => Err(Invalid::new(
                "spec.rabbitmqResourcesConfig.parallelism",
                format!("{n} must be from 1 to 1000"),
            )),
        }
    }
}

impl crate::api::kinds::Kind for RabbitmqSource {
    fn check(&self, _context: &crate::api::kinds::LoadContext) -> Result<(), Invalid> {
        self.validate()
    }
}
