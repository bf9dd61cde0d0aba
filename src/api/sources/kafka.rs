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
    /// TLS and SASL, with values from Secrets in the source's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<KafkaNetSpec>,
    pub sink: Destination,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ce_overrides: Option<CeOverrides>,
}

/// `spec.net`, as Knative's `KafkaNetSpec`: a section is used only when it
/// is enabled (`enable: true`), and each value is a key of a Secret.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaNetSpec {
    #[serde(default)]
    pub sasl: KafkaSaslSpec,
    #[serde(default)]
    pub tls: KafkaTlsSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaSaslSpec {
    #[serde(default)]
    pub enable: bool,
    #[serde(default)]
    pub user: SecretValueFromSource,
    #[serde(default)]
    pub password: SecretValueFromSource,
    /// The mechanism's name (`PLAIN`, the default, `SCRAM-SHA-256`,
    /// `SCRAM-SHA-512`), itself read from a Secret as in Knative.
    #[serde(default, rename = "type")]
    pub mechanism: SecretValueFromSource,
    /// Knative's Amazon MSK IAM token fields (OAUTHBEARER): accepted empty,
    /// as the API server returns them, and refused when set.
    #[serde(default, rename = "roleARN")]
    pub role_arn: SecretValueFromSource,
    #[serde(default)]
    pub token_provider: SecretValueFromSource,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaTlsSpec {
    #[serde(default)]
    pub enable: bool,
    /// The client certificate (PEM), with `key`.
    #[serde(default)]
    pub cert: SecretValueFromSource,
    /// The client certificate's private key (PEM).
    #[serde(default)]
    pub key: SecretValueFromSource,
    /// The CA that signed Kafka's certificate (PEM); without it, the
    /// system's CAs.
    #[serde(default)]
    pub ca_cert: SecretValueFromSource,
}

/// A value read from a Secret; empty (`{}`) means not set, as the API
/// server writes unset values back.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretValueFromSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeySelector>,
}

/// A key of a Secret in the referring object's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeySelector {
    #[serde(default)]
    pub name: String,
    pub key: String,
}

impl KafkaNetSpec {
    /// The shape Knative needs before any Secret is read: names and keys
    /// given, SASL with a user and password, a certificate with its key.
    pub(crate) fn validate(&self, field: &str) -> Result<(), Invalid> {
        let sasl = &self.sasl;
        let tls = &self.tls;
        for (name, value) in [
            ("sasl.user", &sasl.user),
            ("sasl.password", &sasl.password),
            ("sasl.type", &sasl.mechanism),
            ("tls.cert", &tls.cert),
            ("tls.key", &tls.key),
            ("tls.caCert", &tls.ca_cert),
        ] {
            value.validate(&format!("{field}.{name}"))?;
        }
        for (name, value) in [
            ("roleARN", &sasl.role_arn),
            ("tokenProvider", &sasl.token_provider),
        ] {
            if value.secret_key_ref.is_some() {
                return Err(Invalid::new(
                    format!("{field}.sasl.{name}"),
                    "is for Amazon MSK IAM (OAUTHBEARER), which pilotlight does not support: use PLAIN or SCRAM with user and password",
                ));
            }
        }
        if sasl.enable {
            for (name, value) in [("user", &sasl.user), ("password", &sasl.password)] {
                if value.secret_key_ref.is_none() {
                    return Err(Invalid::new(
                        format!("{field}.sasl.{name}"),
                        format!(
                            "is required when {field}.sasl.enable is true: a secretKeyRef with name and key"
                        ),
                    ));
                }
            }
        }
        if tls.enable && tls.cert.secret_key_ref.is_some() != tls.key.secret_key_ref.is_some() {
            let missing = if tls.cert.secret_key_ref.is_none() {
                "cert"
            } else {
                "key"
            };
            return Err(Invalid::new(
                format!("{field}.tls.{missing}"),
                "is required with the other: a client certificate is a cert and its key",
            ));
        }
        Ok(())
    }
}

impl SecretValueFromSource {
    fn validate(&self, field: &str) -> Result<(), Invalid> {
        let Some(selector) = &self.secret_key_ref else {
            return Ok(());
        };
        if selector.name.is_empty() {
            return Err(Invalid::new(
                format!("{field}.secretKeyRef.name"),
                "is required: the Secret's name",
            ));
        }
        if selector.key.is_empty() {
            return Err(Invalid::new(
                format!("{field}.secretKeyRef.key"),
                "is required: the key in the Secret",
            ));
        }
        Ok(())
    }
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
        if let Some(net) = &spec.net {
            net.validate("spec.net")?;
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
