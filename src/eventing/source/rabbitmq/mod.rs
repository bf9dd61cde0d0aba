//! `RabbitmqSource` (sources.knative.dev/v1alpha1), as eventing-rabbitmq
//! defines it: messages from a RabbitMQ queue sent to a sink.
//!
//! - A message that is a CloudEvent in the AMQP binding (binary: headers
//!   `cloudEvents:*`; structured: content type `application/cloudevents+json`)
//!   is sent as that event.
//! - Any other message becomes an event of type `dev.knative.rabbitmq.event`,
//!   source `/apis/v1/namespaces/{namespace}/rabbitmqsources/{name}#{queue}`,
//!   id = the message's `message-id` property (a fresh UUID when it has none),
//!   `datacontenttype` = its `content-type` property, data = its body.
//!
//! A message is acked once the sink accepted it, after `spec.delivery`'s
//! retries and backoff. When the sink refuses it to the end, it is rejected
//! without requeueing (RabbitMQ dead-letters it if the queue has a
//! dead-letter exchange). Messages in flight when the source stops or the
//! connection drops are not acked, so RabbitMQ delivers them again.
//! `parallelism` (1 to 1000, default 1 = in order) is the prefetch and the
//! number of messages sent at once.

mod source;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

use crate::control::resources::duck::{DeliverySpec, Destination};
use crate::control::resources::{Invalid, ObjectMeta};
use crate::eventing::backend::rabbitmq::config::{RabbitmqClusterReference, redacted};
use crate::eventing::delivery::DeliveryPolicy;
use crate::eventing::source::{CeOverrides, Source, source_delivery_policy};

pub use source::{RABBITMQ_EVENT_TYPE, message_event};

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
    pub fn validate(&self) -> Result<(), Invalid> {
        self.metadata.validate()?;
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
    pub fn parallelism(&self) -> Result<u16, Invalid> {
        match self.spec.rabbitmq_resources_config.parallelism {
            None => Ok(1),
            Some(n) if (1..=1000).contains(&n) => Ok(n as u16),
            Some(n) => Err(Invalid::new(
                "spec.rabbitmqResourcesConfig.parallelism",
                format!("{n} must be from 1 to 1000"),
            )),
        }
    }

    /// How each message is sent to the sink: `spec.delivery`, or the
    /// sources' default retries when it is not set.
    pub fn delivery_policy(&self) -> DeliveryPolicy {
        match &self.spec.delivery {
            Some(spec) => DeliveryPolicy::from_spec(Some(spec), None),
            None => source_delivery_policy(),
        }
    }

    /// The running source, given the connection URI the control plane
    /// resolved (or why it could not). A source that does not validate or
    /// has no URI runs as one that only reports NotReady.
    pub fn into_source(&self, uri: Result<lapin::uri::AMQPUri, String>) -> Box<dyn Source> {
        let vhost = self.spec.rabbitmq_resources_config.vhost.clone();
        let built = self
            .validate()
            .map_err(|e| e.to_string())
            .and(uri)
            .map(|mut uri| {
                if let Some(vhost) = vhost {
                    uri.vhost = vhost;
                }
                uri
            });
        match built {
            Ok(uri) => {
                tracing::debug!(source = %self.metadata.key(), uri = %redacted(&uri), "RabbitmqSource resolved");
                Box::new(source::RabbitmqRunner::new(self, uri))
            }
            Err(message) => Box::new(crate::eventing::source::InvalidSource { message }),
        }
    }
}
