//! Channels (messaging.knative.dev): `InMemoryChannel`, `KafkaChannel`
//! (v1beta1) and the generic `Channel`, whose `spec.channelTemplate` names
//! the kind that backs it. Every channel is an address that stores events
//! and hands each to every Subscription of it.

use serde::{Deserialize, Serialize};

use super::duck::DeliverySpec;
use super::{Invalid, ObjectMeta};

/// pilotlight's annotation choosing where a channel keeps its events:
/// `Memory` (InMemoryChannel's default, as Knative) or `Log` (the durable
/// on-disk log). On a Channel, Sequence or Parallel it reaches the channels
/// made from it.
pub(crate) const CHANNEL_CLASS_ANNOTATION: &str = "pilotlight.dev/channel.class";

/// The suffix of the broker a channel runs as, and so of its address
/// (`eventing::channel`); no Broker's name may end with it.
pub(crate) const STORE_SUFFIX: &str = "-kn-channel";

/// The kinds of channel pilotlight runs, as `channelTemplate.kind` or a
/// Subscription's `spec.channel.kind` names them.
pub(crate) const CHANNEL_KINDS: [(&str, &str); 3] = [
    ("messaging.knative.dev/v1", "InMemoryChannel"),
    ("messaging.knative.dev/v1beta1", "KafkaChannel"),
    ("messaging.knative.dev/v1", "Channel"),
];

/// Whether `(apiVersion, kind)` names a channel kind pilotlight runs.
pub(crate) fn is_channel_kind(api_version: &str, kind: &str) -> bool {
    CHANNEL_KINDS.contains(&(api_version, kind))
}

/// `spec.subscribers`, which Knative's Subscription controller writes into
/// a channel: accepted so that `kubectl get -o yaml` output loads, and
/// ignored (pilotlight reads the Subscriptions themselves).
type Subscribers = Option<serde_json::Value>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InMemoryChannel {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: InMemoryChannelSpec,
    #[serde(default, skip_serializing)]
    pub status: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InMemoryChannelSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
    #[serde(default, skip_serializing)]
    pub subscribers: Subscribers,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaChannel {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: KafkaChannelSpec,
    #[serde(default, skip_serializing)]
    pub status: Option<serde_json::Value>,
}

/// Knative's KafkaChannel: the topic's partitions and replication factor
/// (both 1 unless set) and retention (`retentionDuration`, ISO 8601,
/// Knative's default a week).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaChannelSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_partitions: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<i16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_duration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
    #[serde(default, skip_serializing)]
    pub subscribers: Subscribers,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Channel {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ChannelSpec,
    #[serde(default, skip_serializing)]
    pub status: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChannelSpec {
    /// The kind that backs the channel; the cluster default
    /// (InMemoryChannel) when absent, as Knative's webhook defaults it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_template: Option<ChannelTemplate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
    #[serde(default, skip_serializing)]
    pub subscribers: Subscribers,
}

/// `ChannelTemplateSpec`: the kind of a channel to make, and its spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChannelTemplate {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<serde_json::Value>,
}

impl ChannelTemplate {
    /// Knative's default channel: an InMemoryChannel.
    pub(crate) fn in_memory() -> Self {
        ChannelTemplate {
            api_version: "messaging.knative.dev/v1".into(),
            kind: "InMemoryChannel".into(),
            spec: None,
        }
    }

    /// Checks that pilotlight runs the kind and that the spec is that
    /// kind's.
    pub(crate) fn validate(&self, field: &str) -> Result<(), Invalid> {
        if !matches!(
            (self.api_version.as_str(), self.kind.as_str()),
            ("messaging.knative.dev/v1", "InMemoryChannel")
                | ("messaging.knative.dev/v1beta1", "KafkaChannel")
        ) {
            return Err(Invalid::new(
                field,
                format!(
                    "{} ({}) is not a channel kind pilotlight runs: use InMemoryChannel (messaging.knative.dev/v1) or KafkaChannel (messaging.knative.dev/v1beta1)",
                    self.kind, self.api_version
                ),
            ));
        }
        self.backing(&ObjectMeta::default())
            .map(|_| ())
            .map_err(|e| Invalid::new(format!("{field}.spec{}", e.field), e.reason))
    }

    /// The channel this template makes, with `metadata`: its spec parsed
    /// as the template's kind. A field error's path starts at the spec
    /// (`.numPartitions`).
    pub(crate) fn backing(&self, metadata: &ObjectMeta) -> Result<BackingChannel, Invalid> {
        let spec = self.spec.clone().unwrap_or_else(|| serde_json::json!({}));
        let wrong = |e: serde_path_to_error::Error<serde_json::Error>| {
            let path = e.path().to_string();
            let field = if path == "." {
                String::new()
            } else {
                format!(".{path}")
            };
            Invalid::new(field, e.inner().to_string())
        };
        if self.kind == "KafkaChannel" {
            let spec: KafkaChannelSpec = serde_path_to_error::deserialize(spec).map_err(wrong)?;
            Ok(BackingChannel::Kafka(Box::new(KafkaChannel {
                api_version: self.api_version.clone(),
                kind: self.kind.clone(),
                metadata: metadata.clone(),
                spec,
                status: None,
            })))
        } else {
            let spec: InMemoryChannelSpec =
                serde_path_to_error::deserialize(spec).map_err(wrong)?;
            Ok(BackingChannel::InMemory(Box::new(InMemoryChannel {
                api_version: self.api_version.clone(),
                kind: self.kind.clone(),
                metadata: metadata.clone(),
                spec,
                status: None,
            })))
        }
    }
}

/// The channel that backs a generic Channel, Sequence or Parallel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BackingChannel {
    InMemory(Box<InMemoryChannel>),
    Kafka(Box<KafkaChannel>),
}

impl Channel {
    /// The template, or Knative's default.
    pub(crate) fn template(&self) -> ChannelTemplate {
        self.spec
            .channel_template
            .clone()
            .unwrap_or_else(ChannelTemplate::in_memory)
    }
}

fn check_delivery(delivery: Option<&DeliverySpec>) -> Result<(), Invalid> {
    delivery.map_or(Ok(()), |d| d.validate("spec.delivery"))
}

/// The class annotation's value, if it is one pilotlight knows.
fn check_class(metadata: &ObjectMeta) -> Result<(), Invalid> {
    match metadata
        .annotations
        .get(CHANNEL_CLASS_ANNOTATION)
        .map(String::as_str)
    {
        None | Some("Memory" | "Log") => Ok(()),
        Some(other) => Err(Invalid::new(
            format!("metadata.annotations.{CHANNEL_CLASS_ANNOTATION}"),
            format!("'{other}' is not a channel class: use Memory or Log"),
        )),
    }
}

impl KafkaChannelSpec {
    fn validate(&self) -> Result<(), Invalid> {
        if self.num_partitions.is_some_and(|n| n < 1) {
            return Err(Invalid::new("spec.numPartitions", "must be at least 1"));
        }
        if self.replication_factor.is_some_and(|n| n < 1) {
            return Err(Invalid::new("spec.replicationFactor", "must be at least 1"));
        }
        if let Some(retention) = &self.retention_duration {
            super::duration::parse_duration(retention)
                .map_err(|e| Invalid::new("spec.retentionDuration", e))?;
        }
        check_delivery(self.delivery.as_ref())
    }
}

impl crate::api::kinds::Kind for InMemoryChannel {
    fn check(&self, _context: &crate::api::kinds::LoadContext) -> Result<(), Invalid> {
        check_class(&self.metadata)?;
        check_delivery(self.spec.delivery.as_ref())
    }
}

impl crate::api::kinds::Kind for KafkaChannel {
    fn check(&self, _context: &crate::api::kinds::LoadContext) -> Result<(), Invalid> {
        self.spec.validate()
    }
}

impl crate::api::kinds::Kind for Channel {
    fn check(&self, _context: &crate::api::kinds::LoadContext) -> Result<(), Invalid> {
        check_class(&self.metadata)?;
        if let Some(template) = &self.spec.channel_template {
            template.validate("spec.channelTemplate")?;
        }
        check_delivery(self.spec.delivery.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use crate::api::Resource;
    use crate::api::kinds::parse_yaml as load;

    #[test]
    fn knatives_documented_channels_load() {
        // From Knative's docs (channels, KafkaChannel).
        let imc = load(
            "apiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\nmetadata:\n  name: my-channel\n",
        );
        assert!(matches!(imc, Ok(Resource::InMemoryChannel(_))), "{imc:?}");
        let generic = load(
            "apiVersion: messaging.knative.dev/v1\nkind: Channel\nmetadata:\n  name: my-channel\nspec:\n  channelTemplate:\n    apiVersion: messaging.knative.dev/v1\n    kind: InMemoryChannel\n",
        );
        assert!(matches!(generic, Ok(Resource::Channel(_))), "{generic:?}");
        let kafka = load(
            "apiVersion: messaging.knative.dev/v1beta1\nkind: KafkaChannel\nmetadata:\n  name: my-kafka-channel\nspec:\n  numPartitions: 3\n  replicationFactor: 1\n  retentionDuration: PT168H\n",
        );
        assert!(matches!(kafka, Ok(Resource::KafkaChannel(_))), "{kafka:?}");
    }

    #[test]
    fn a_wrong_template_or_class_names_the_field() {
        let err = load(
            "apiVersion: messaging.knative.dev/v1\nkind: Channel\nmetadata:\n  name: c\nspec:\n  channelTemplate:\n    apiVersion: messaging.knative.dev/v1alpha1\n    kind: NatssChannel\n",
        )
        .expect_err("refused");
        assert!(
            err.contains("spec.channelTemplate") && err.contains("NatssChannel"),
            "{err}"
        );
        let err = load(
            "apiVersion: messaging.knative.dev/v1\nkind: Channel\nmetadata:\n  name: c\nspec:\n  channelTemplate:\n    apiVersion: messaging.knative.dev/v1beta1\n    kind: KafkaChannel\n    spec:\n      numPartitions: many\n",
        )
        .expect_err("refused");
        assert!(
            err.contains("spec.channelTemplate.spec.numPartitions"),
            "{err}"
        );
        let err = load(
            "apiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\nmetadata:\n  name: c\n  annotations:\n    pilotlight.dev/channel.class: Disk\n",
        )
        .expect_err("refused");
        assert!(err.contains("not a channel class"), "{err}");
        let err = load(
            "apiVersion: messaging.knative.dev/v1beta1\nkind: KafkaChannel\nmetadata:\n  name: c\nspec:\n  numPartitions: 0\n",
        )
        .expect_err("refused");
        assert!(err.contains("spec.numPartitions"), "{err}");
    }
}
