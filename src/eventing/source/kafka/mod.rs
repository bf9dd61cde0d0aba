//! `KafkaSource` (sources.knative.dev/v1beta1 and v1): the records of Kafka
//! topics sent to a sink as CloudEvents.
//!
//! - A consumer group (`spec.consumerGroup`, default
//!   `knative-kafka-source-{namespace}-{name}`) with `spec.consumers` members
//!   in this process; several pilotlight processes with the same source
//!   split the partitions between them.
//! - `spec.initialOffset` (`latest`, the default, or `earliest`) applies to a
//!   group that has committed nothing yet; afterwards it resumes from its
//!   commits. Offsets are committed only up to what the sink (or the
//!   dead-letter sink) accepted, so a crash redelivers and never skips.
//! - `spec.ordering`: `ordered` (the default) sends one record at a time per
//!   partition; `unordered` up to [`UNORDERED_IN_FLIGHT`] at once.
//! - Records that are CloudEvents (binary or structured binding) are sent as
//!   they are; others are mapped (see [`mapping`]).
//! - `spec.delivery`: retries and backoff as on triggers; the dead-letter
//!   sink must be a `uri` (references are resolved only for `spec.sink`).
//!
//! Not supported: `spec.net` (TLS/SASL for sources): such a manifest is
//! refused by name, not run without its credentials.

pub mod mapping;
pub mod source;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

use crate::control::resources::duck::{DeliverySpec, Destination};
use crate::control::resources::{Invalid, ObjectMeta};
use crate::eventing::source::{CeOverrides, Source};

pub use mapping::KeyType;

/// The API versions of KafkaSource pilotlight reads (the same schema).
pub const API_VERSIONS: [&str; 2] = ["sources.knative.dev/v1beta1", "sources.knative.dev/v1"];
/// The label that says how to read record keys.
pub const KEY_TYPE_LABEL: &str = "kafkasources.sources.knative.dev/key-type";
/// Records in flight per consumer of an unordered source.
pub const UNORDERED_IN_FLIGHT: usize = 100;
/// Most consumers one source may ask for.
pub const MAX_CONSUMERS: i32 = 64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaSource {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: KafkaSourceSpec,
    #[serde(default, skip_serializing)]
    pub status: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaSourceSpec {
    pub bootstrap_servers: Vec<String>,
    pub topics: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_offset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumers: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
    pub sink: Destination,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ce_overrides: Option<CeOverrides>,
}

/// Where a new consumer group starts.
pub use crate::eventing::backend::kafka::consumer::InitialOffset;

impl KafkaSource {
    pub fn validate(&self) -> Result<(), Invalid> {
        self.metadata.validate()?;
        let spec = &self.spec;
        if spec.bootstrap_servers.iter().all(|s| s.trim().is_empty()) {
            return Err(Invalid::new(
                "spec.bootstrapServers",
                "is required: list the Kafka bootstrap servers (host:port)",
            ));
        }
        if spec.topics.is_empty() {
            return Err(Invalid::new(
                "spec.topics",
                "is required: name at least one topic",
            ));
        }
        for (i, topic) in spec.topics.iter().enumerate() {
            if !is_valid_topic(topic) {
                return Err(Invalid::new(
                    format!("spec.topics[{i}]"),
                    format!("'{topic}' is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)"),
                ));
            }
        }
        if spec
            .consumer_group
            .as_deref()
            .is_some_and(|g| g.trim().is_empty())
        {
            return Err(Invalid::new("spec.consumerGroup", "must not be empty"));
        }
        self.initial_offset()?;
        self.ordered()?;
        if let Some(n) = spec.consumers
            && !(1..=MAX_CONSUMERS).contains(&n)
        {
            return Err(Invalid::new(
                "spec.consumers",
                format!("{n} is not between 1 and {MAX_CONSUMERS}"),
            ));
        }
        if let Some(delivery) = &spec.delivery {
            delivery.validate("spec.delivery")?;
            self.dead_letter_sink()?;
        }
        spec.sink.validate("spec.sink")?;
        if let Some(overrides) = &spec.ce_overrides {
            overrides.validate("spec.ceOverrides")?;
        }
        self.key_type()?;
        Ok(())
    }

    pub fn initial_offset(&self) -> Result<InitialOffset, Invalid> {
        match self.spec.initial_offset.as_deref() {
            None | Some("latest") => Ok(InitialOffset::Latest),
            Some("earliest") => Ok(InitialOffset::Earliest),
            Some(other) => Err(Invalid::new(
                "spec.initialOffset",
                format!("'{other}' is not earliest or latest"),
            )),
        }
    }

    /// True for `ordered` (the default).
    pub fn ordered(&self) -> Result<bool, Invalid> {
        match self.spec.ordering.as_deref() {
            None | Some("ordered") => Ok(true),
            Some("unordered") => Ok(false),
            Some(other) => Err(Invalid::new(
                "spec.ordering",
                format!("'{other}' is not ordered or unordered"),
            )),
        }
    }

    pub fn key_type(&self) -> Result<KeyType, Invalid> {
        match self.metadata.labels.get(KEY_TYPE_LABEL) {
            None => Ok(KeyType::String),
            Some(text) => KeyType::parse(text).ok_or_else(|| {
                Invalid::new(
                    format!("metadata.labels.{KEY_TYPE_LABEL}"),
                    format!("'{text}' is not one of string, int, float, byte-array"),
                )
            }),
        }
    }

    pub fn consumer_group(&self) -> String {
        self.spec.consumer_group.clone().unwrap_or_else(|| {
            format!(
                "knative-kafka-source-{}-{}",
                self.metadata.namespace(),
                self.metadata.name
            )
        })
    }

    /// `spec.delivery.deadLetterSink` as a URI.
    pub fn dead_letter_sink(&self) -> Result<Option<http::Uri>, Invalid> {
        let Some(sink) = self
            .spec
            .delivery
            .as_ref()
            .and_then(|d| d.dead_letter_sink.as_ref())
        else {
            return Ok(None);
        };
        let field = "spec.delivery.deadLetterSink";
        if sink.reference.is_some() {
            return Err(Invalid::new(
                format!("{field}.ref"),
                "a KafkaSource's dead-letter sink must be a uri in pilotlight",
            ));
        }
        let uri = sink.uri.as_deref().unwrap_or_default();
        uri.parse()
            .map(Some)
            .map_err(|e| Invalid::new(format!("{field}.uri"), format!("'{uri}' is not a URI: {e}")))
    }

    /// The running source. Call after [`KafkaSource::validate`]; a source
    /// that does not validate runs as one that only reports NotReady.
    pub fn into_source(&self) -> Box<dyn Source> {
        match source::KafkaRunner::new(self) {
            Ok(runner) => Box::new(runner),
            Err(invalid) => Box::new(crate::eventing::source::InvalidSource {
                message: invalid.to_string(),
            }),
        }
    }
}

/// Kafka's rule for topic names.
fn is_valid_topic(topic: &str) -> bool {
    (1..=249).contains(&topic.len())
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
