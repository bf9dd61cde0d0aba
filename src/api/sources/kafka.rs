//! `KafkaSource` (sources.knative.dev/v1beta1 and v1): the records of Kafka
//! topics sent to a sink as CloudEvents. The running source is
//! `eventing::source::kafka`.

use serde::{Deserialize, Serialize};

use crate::api::duck::{CeOverrides, DeliverySpec, Destination};
use crate::api::{Invalid, ObjectMeta};

/// The API versions of KafkaSource pilotlight reads (the same schema).
#[cfg(test)]
pub(crate) const API_VERSIONS: [&str; 2] =
    ["sources.knative.dev/v1beta1", "sources.knative.dev/v1"];
/// The label that says how to read record keys.
pub(crate) const KEY_TYPE_LABEL: &str = "kafkasources.sources.knative.dev/key-type";
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

/// Where a consumer group with no committed offsets starts
/// (`spec.initialOffset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialOffset {
    Earliest,
    Latest,
}

/// How record keys are read (the label [`KEY_TYPE_LABEL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// UTF-8 text (the default).
    String,
    /// A big-endian integer of 4 or 8 bytes, as decimal text.
    Int,
    /// A big-endian IEEE 754 float of 4 or 8 bytes, as decimal text.
    Float,
    /// Any bytes, as base64.
    ByteArray,
}

impl KeyType {
    pub(crate) fn parse(text: &str) -> Option<KeyType> {
        match text {
            "string" => Some(KeyType::String),
            "int" => Some(KeyType::Int),
            "float" => Some(KeyType::Float),
            "byte-array" => Some(KeyType::ByteArray),
            _ => None,
        }
    }
}

impl KafkaSource {
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
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

    pub(crate) fn initial_offset(&self) -> Result<InitialOffset, Invalid> {
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
    pub(crate) fn ordered(&self) -> Result<bool, Invalid> {
        match self.spec.ordering.as_deref() {
            None | Some("ordered") => Ok(true),
            Some("unordered") => Ok(false),
            Some(other) => Err(Invalid::new(
                "spec.ordering",
                format!("'{other}' is not ordered or unordered"),
            )),
        }
    }

    pub(crate) fn key_type(&self) -> Result<KeyType, Invalid> {
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

    pub(crate) fn consumer_group(&self) -> String {
        self.spec.consumer_group.clone().unwrap_or_else(|| {
            format!(
                "knative-kafka-source-{}-{}",
                self.metadata.namespace(),
                self.metadata.name
            )
        })
    }

    /// `spec.delivery.deadLetterSink` as a URI.
    pub(crate) fn dead_letter_sink(&self) -> Result<Option<http::Uri>, Invalid> {
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

impl crate::api::kinds::Kind for KafkaSource {
    fn check(&self, _context: &crate::api::kinds::LoadContext) -> Result<(), Invalid> {
        self.validate()
    }
}
