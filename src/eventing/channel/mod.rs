//! Channels: each runs on a broker backend of its own, with no filter, and
//! each Subscription of it is a dispatcher on that backend. A channel is
//! the same store a broker is (202 once stored, the same ingress, the same
//! backends), so it is one: the control plane starts a broker for it under
//! the channel's store key, `{name}-kn-channel` in its namespace (the name
//! of the Service that fronts a channel in Knative), which is also its
//! address: `{ingress}/{namespace}/{name}-kn-channel`. Broker names with
//! that suffix are refused at load, so the two never meet.
//!
//! Where the events live: InMemoryChannel in memory (as Knative), or in
//! the durable log with the `pilotlight.dev/channel.class: Log`
//! annotation; KafkaChannel in a Kafka topic of its own; a generic
//! Channel as its `channelTemplate` says.

use std::collections::BTreeMap;

use crate::api::broker::{BrokerClass, CLASS_ANNOTATION};
pub(crate) use crate::api::channel::STORE_SUFFIX;
use crate::api::channel::{BackingChannel, CHANNEL_CLASS_ANNOTATION, KafkaChannel};
use crate::api::{Broker, ObjectKey, ObjectMeta, Resource};
use crate::eventing::backend::ChannelTopic;

/// The key a channel's store runs under, and its address's last segment.
pub(crate) fn store_key(channel: &ObjectKey) -> ObjectKey {
    ObjectKey::new(
        channel.namespace.clone(),
        format!("{}{STORE_SUFFIX}", channel.name),
    )
}

/// A channel as the broker machinery runs it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ChannelStore {
    /// See [`store_key`].
    pub key: ObjectKey,
    /// A broker of the channel's class, with the channel's delivery as its
    /// subscriptions' default.
    pub broker: Broker,
    /// A KafkaChannel's topic.
    pub topic: Option<ChannelTopic>,
}

/// The store of a channel object; None for other kinds.
pub(crate) fn store_of(resource: &Resource) -> Option<ChannelStore> {
    let (metadata, backing) = match resource {
        Resource::InMemoryChannel(channel) => {
            (&channel.metadata, BackingChannel::InMemory(channel.clone()))
        }
        Resource::KafkaChannel(channel) => {
            (&channel.metadata, BackingChannel::Kafka(channel.clone()))
        }
        Resource::Channel(channel) => {
            let mut backing = channel.template().backing(&channel.metadata).ok()?;
            // The generic channel's own delivery applies unless its
            // template sets one.
            match &mut backing {
                BackingChannel::InMemory(c) if c.spec.delivery.is_none() => {
                    c.spec.delivery = channel.spec.delivery.clone();
                }
                BackingChannel::Kafka(c) if c.spec.delivery.is_none() => {
                    c.spec.delivery = channel.spec.delivery.clone();
                }
                _ => {}
            }
            (&channel.metadata, backing)
        }
        _ => return None,
    };
    let key = store_key(&metadata.key());
    let (class, delivery, topic) = match &backing {
        BackingChannel::InMemory(channel) => {
            let class = match metadata
                .annotations
                .get(CHANNEL_CLASS_ANNOTATION)
                .map(String::as_str)
            {
                Some("Log") => BrokerClass::Log,
                _ => BrokerClass::Memory,
            };
            (class, channel.spec.delivery.clone(), None)
        }
        BackingChannel::Kafka(channel) => (
            BrokerClass::Kafka,
            channel.spec.delivery.clone(),
            Some(kafka_topic(&metadata.key(), channel)),
        ),
    };
    let broker = Broker {
        api_version: "eventing.knative.dev/v1".into(),
        kind: "Broker".into(),
        metadata: ObjectMeta {
            name: key.name.clone(),
            namespace: Some(key.namespace.clone()),
            annotations: BTreeMap::from([(
                CLASS_ANNOTATION.to_owned(),
                class.annotation_value().to_owned(),
            )]),
            ..Default::default()
        },
        spec: crate::api::broker::BrokerSpec {
            config: None,
            delivery,
        },
        status: None,
    };
    Some(ChannelStore { key, broker, topic })
}

/// A KafkaChannel's topic, named as Knative's KafkaChannel names it, with
/// its partitions and replication factor (1 each unless set) and its
/// retention (Knative's default a week; checked at load).
fn kafka_topic(channel: &ObjectKey, kafka: &KafkaChannel) -> ChannelTopic {
    let retention = kafka
        .spec
        .retention_duration
        .as_deref()
        .and_then(|text| crate::api::duck::parse_duration(text).ok())
        .unwrap_or(DEFAULT_RETENTION);
    ChannelTopic {
        retention_ms: i64::try_from(retention.as_millis()).unwrap_or(i64::MAX),
        name: format!(
            "knative-messaging-kafka.{}.{}",
            channel.namespace, channel.name
        ),
        partitions: kafka.spec.num_partitions.unwrap_or(1),
        replication_factor: kafka.spec.replication_factor.map_or(1, i32::from),
    }
}

/// Knative's KafkaChannel `retentionDuration` when it is not set: PT168H.
const DEFAULT_RETENTION: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// A channel's address.
pub(crate) fn channel_url(ingress_url: &str, channel: &ObjectKey) -> String {
    let store = store_key(channel);
    format!("{ingress_url}/{}/{}", store.namespace, store.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::manifest::Manifests;

    fn store(yaml: &str) -> ChannelStore {
        let manifests = Manifests::from_text(yaml, BrokerClass::Memory);
        assert!(manifests.errors.is_empty(), "{:?}", manifests.errors);
        store_of(&manifests.objects[0].resource).expect("a channel")
    }

    fn class(store: &ChannelStore) -> &str {
        &store.broker.metadata.annotations[CLASS_ANNOTATION]
    }

    #[test]
    fn each_channel_kind_runs_on_its_backend() {
        let memory = store(
            "apiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\nmetadata:\n  name: c\n  namespace: ns\n",
        );
        assert_eq!(memory.key, ObjectKey::new("ns", "c-kn-channel"));
        assert_eq!(class(&memory), "Memory");
        let log = store(
            "apiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\nmetadata:\n  name: c\n  annotations:\n    pilotlight.dev/channel.class: Log\n",
        );
        assert_eq!(class(&log), "MTChannelBasedBroker");
        let kafka = store(
            "apiVersion: messaging.knative.dev/v1beta1\nkind: KafkaChannel\nmetadata:\n  name: k\n  namespace: ns\nspec:\n  numPartitions: 3\n",
        );
        assert_eq!(class(&kafka), "Kafka");
        assert_eq!(
            kafka.topic,
            Some(ChannelTopic {
                name: "knative-messaging-kafka.ns.k".into(),
                partitions: 3,
                replication_factor: 1,
                retention_ms: 7 * 24 * 3600 * 1000,
            })
        );
        let generic = store(
            "apiVersion: messaging.knative.dev/v1\nkind: Channel\nmetadata:\n  name: g\nspec:\n  channelTemplate:\n    apiVersion: messaging.knative.dev/v1beta1\n    kind: KafkaChannel\n    spec:\n      numPartitions: 2\n  delivery:\n    retry: 4\n",
        );
        assert_eq!(class(&generic), "Kafka");
        assert_eq!(generic.topic.map(|t| t.partitions), Some(2));
        assert_eq!(generic.broker.spec.delivery.and_then(|d| d.retry), Some(4));
        assert_eq!(
            channel_url("http://127.0.0.1:8080", &ObjectKey::new("ns", "c")),
            "http://127.0.0.1:8080/ns/c-kn-channel"
        );
    }
}
