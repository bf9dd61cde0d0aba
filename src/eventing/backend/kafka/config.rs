//! Where a Kafka broker's events go: bootstrap servers, its topic, topic
//! settings and credentials, resolved from the Broker's `spec.config`
//! ConfigMap (Knative's `kafka-broker-config` keys) and the Secret it names,
//! or from pilotlight's `--kafka-bootstrap-servers` default.

use std::collections::BTreeMap;
use std::fmt;

use rdkafka::ClientConfig;

use crate::api::ObjectKey;
use crate::api::index::ObjectIndex;
use crate::api::{Broker, Secret};

/// Broker annotation naming a topic that exists already (Knative's
/// eventing-kafka-broker): the broker uses it, never creates nor deletes it.
pub(crate) const EXTERNAL_TOPIC_ANNOTATION: &str = "kafka.eventing.knative.dev/external.topic";
/// pilotlight's broker annotation: `"true"` keeps the broker's topic (and
/// its events) when the Broker is deleted. Without it the topic is deleted,
/// as Knative does.
pub(crate) const KEEP_TOPIC_ANNOTATION: &str = "pilotlight.dev/kafka-keep-topic";

/// ConfigMap keys, as Knative's `kafka-broker-config`.
pub(crate) const BOOTSTRAP_SERVERS: &str = "bootstrap.servers";
pub(crate) const PARTITIONS: &str = "default.topic.partitions";
pub(crate) const REPLICATION_FACTOR: &str = "default.topic.replication.factor";
pub(crate) const AUTH_SECRET: &str = "auth.secret.ref.name";

/// Topic settings when the ConfigMap has none (or there is no ConfigMap).
pub(crate) const DEFAULT_PARTITIONS: i32 = 10;
pub(crate) const DEFAULT_REPLICATION_FACTOR: i32 = 1;

/// A resolved Kafka broker. Compared whole by the control plane: any change
/// restarts the broker's backend.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct KafkaConfig {
    pub bootstrap_servers: String,
    pub topic: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// The topic belongs to someone else: not created, not deleted.
    pub external_topic: bool,
    /// Keep the topic when the Broker is deleted.
    pub keep_topic: bool,
    pub auth: KafkaAuth,
    /// This replica's `group.instance.id` in its triggers' consumer groups
    /// (Kafka's static membership, KIP-345); None for dynamic members.
    pub member: Option<String>,
    /// A KafkaChannel's store: its subscriptions' groups are named after
    /// its topic.
    pub channel: bool,
    /// The topic's `retention.ms` when pilotlight creates it; None for the
    /// Kafka's default (brokers).
    pub retention_ms: Option<i64>,
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("topic", &self.topic)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("external_topic", &self.external_topic)
            .field("keep_topic", &self.keep_topic)
            .field("auth", &self.auth)
            .field("member", &self.member)
            .field("channel", &self.channel)
            .field("retention_ms", &self.retention_ms)
            .finish()
    }
}

impl KafkaConfig {
    /// The client settings every producer, consumer and admin client of this
    /// broker starts from.
    pub(crate) fn client(&self) -> ClientConfig {
        self.auth.client(&self.bootstrap_servers)
    }
}

/// librdkafka security properties, from a Knative auth Secret (brokers) or
/// a KafkaSource's `spec.net`. Debug output never shows their values.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub(crate) struct KafkaAuth {
    properties: BTreeMap<&'static str, String>,
}

impl fmt::Debug for KafkaAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.properties.keys()).finish()
    }
}

/// How a Kafka client authenticates, whichever way it was written: SASL,
/// TLS, both (SASL_SSL) or neither (PLAINTEXT).
#[derive(Default)]
pub(crate) struct Security {
    pub sasl: Option<Sasl>,
    pub tls: Option<Tls>,
}

pub(crate) struct Sasl {
    /// One of [`SASL_MECHANISMS`].
    pub mechanism: &'static str,
    pub user: String,
    pub password: String,
}

/// PEM text. Without a CA, the system's CAs; a client certificate comes
/// with its key or not at all (checked where they are read, to name the
/// field).
#[derive(Default)]
pub(crate) struct Tls {
    pub ca: Option<String>,
    pub certificate: Option<String>,
    pub key: Option<String>,
}

/// The SASL mechanisms Knative names and librdkafka has built in (Kerberos
/// needs the `gssapi` feature and is not one of Knative's).
pub(crate) const SASL_MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// A SASL mechanism's name as librdkafka takes it, or why not.
pub(crate) fn sasl_mechanism(text: &str) -> Result<&'static str, String> {
    SASL_MECHANISMS
        .into_iter()
        .find(|m| *m == text)
        .ok_or_else(|| format!("'{text}' is not one of {}", SASL_MECHANISMS.join(", ")))
}

impl KafkaAuth {
    /// Reads Knative's Secret keys: `protocol` (PLAINTEXT, SSL,
    /// SASL_PLAINTEXT, SASL_SSL), `sasl.mechanism` (PLAIN, SCRAM-SHA-256,
    /// SCRAM-SHA-512), `user`, `password`, `ca.crt`, `user.crt`, `user.key`.
    /// Errors name the Secret and key.
    pub(crate) fn from_secret(secret: &Secret) -> Result<KafkaAuth, String> {
        let name = secret.metadata.key();
        let protocol = secret
            .value("protocol")
            .unwrap_or_else(|| "PLAINTEXT".into())
            .to_ascii_uppercase();
        let (sasl, tls) = match protocol.as_str() {
            "PLAINTEXT" => (false, false),
            "SSL" => (false, true),
            "SASL_PLAINTEXT" => (true, false),
            "SASL_SSL" => (true, true),
            other => {
                return Err(format!(
                    "Secret {name}: protocol '{other}' is not one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"
                ));
            }
        };
        let mut security = Security::default();
        if sasl {
            let mechanism = secret
                .value("sasl.mechanism")
                .unwrap_or_else(|| "PLAIN".into());
            let mechanism = sasl_mechanism(&mechanism)
                .map_err(|e| format!("Secret {name}: sasl.mechanism {e}"))?;
            let required = |key: &str| {
                secret.value(key).ok_or_else(|| {
                    format!("Secret {name}: protocol {protocol} needs the key '{key}'")
                })
            };
            security.sasl = Some(Sasl {
                mechanism,
                user: required("user")?,
                password: required("password")?,
            });
        }
        if tls {
            let tls = Tls {
                ca: secret.value("ca.crt"),
                certificate: secret.value("user.crt"),
                key: secret.value("user.key"),
            };
            if tls.certificate.is_some() != tls.key.is_some() {
                return Err(format!(
                    "Secret {name}: set both user.crt and user.key for a client certificate, or neither"
                ));
            }
            security.tls = Some(tls);
        }
        Ok(KafkaAuth::new(security))
    }

    /// librdkafka's properties for `security`.
    pub(crate) fn new(security: Security) -> KafkaAuth {
        let protocol = match (&security.sasl, &security.tls) {
            (None, None) => "PLAINTEXT",
            (None, Some(_)) => "SSL",
            (Some(_), None) => "SASL_PLAINTEXT",
            (Some(_), Some(_)) => "SASL_SSL",
        };
        let mut properties = BTreeMap::new();
        properties.insert("security.protocol", protocol.to_owned());
        if let Some(sasl) = security.sasl {
            properties.insert("sasl.mechanisms", sasl.mechanism.to_owned());
            properties.insert("sasl.username", sasl.user);
            properties.insert("sasl.password", sasl.password);
        }
        if let Some(tls) = security.tls {
            for (property, value) in [
                ("ssl.ca.pem", tls.ca),
                ("ssl.certificate.pem", tls.certificate),
                ("ssl.key.pem", tls.key),
            ] {
                if let Some(value) = value {
                    properties.insert(property, value);
                }
            }
            // OpenSSL is built in (ssl-vendored), so its compiled-in
            // certificate folder is not the system's: without a CA given,
            // librdkafka looks in the usual system locations.
            if !properties.contains_key("ssl.ca.pem") {
                properties.insert("ssl.ca.location", "probe".into());
            }
        }
        KafkaAuth { properties }
    }

    pub(crate) fn client(&self, bootstrap_servers: &str) -> ClientConfig {
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", bootstrap_servers);
        for (key, value) in &self.properties {
            client.set(*key, value);
        }
        client
    }
}

/// The topic of a broker, as Knative names it.
pub(crate) fn topic_name(broker: &ObjectKey) -> String {
    format!("knative-broker-{}-{}", broker.namespace, broker.name)
}

/// Resolves a Kafka broker. `default_bootstrap` is pilotlight's
/// `--kafka-bootstrap-servers`, used when the broker has no `spec.config`.
pub(crate) fn resolve(
    key: &ObjectKey,
    broker: &Broker,
    index: &ObjectIndex<'_>,
    default_bootstrap: Option<&str>,
) -> Result<KafkaConfig, String> {
    let annotations = &broker.metadata.annotations;
    let external = annotations
        .get(EXTERNAL_TOPIC_ANNOTATION)
        .filter(|t| !t.is_empty());
    let mut config = KafkaConfig {
        bootstrap_servers: String::new(),
        topic: external.cloned().unwrap_or_else(|| topic_name(key)),
        partitions: DEFAULT_PARTITIONS,
        replication_factor: DEFAULT_REPLICATION_FACTOR,
        external_topic: external.is_some(),
        keep_topic: match annotations.get(KEEP_TOPIC_ANNOTATION).map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(format!(
                    "metadata.annotations.{KEEP_TOPIC_ANNOTATION}: '{other}' is not true or false"
                ));
            }
        },
        auth: KafkaAuth::default(),
        member: None,
        channel: false,
        retention_ms: None,
    };
    let Some(reference) = &broker.spec.config else {
        config.bootstrap_servers = default_bootstrap
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| {
                "spec.config: a Kafka broker needs a ConfigMap with bootstrap.servers here, or pilotlight's --kafka-bootstrap-servers (PILOTLIGHT_KAFKA_BOOTSTRAP_SERVERS)".to_owned()
            })?
            .to_owned();
        return Ok(config);
    };
    if reference.kind != "ConfigMap" {
        return Err(format!(
            "spec.config: a Kafka broker's config is a ConfigMap (apiVersion v1), not {}",
            reference.kind
        ));
    }
    let namespace = reference.namespace.as_deref().unwrap_or(&key.namespace);
    let map_key = ObjectKey::new(namespace, reference.name.clone());
    let map = index
        .config_map(&map_key)
        .map_err(|e| format!("spec.config: {e}"))?;
    let data = &map.data;
    config.bootstrap_servers = data
        .get(BOOTSTRAP_SERVERS)
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| format!("ConfigMap {map_key}: data.{BOOTSTRAP_SERVERS} is required"))?
        .clone();
    config.partitions = number(data, &map_key, PARTITIONS, DEFAULT_PARTITIONS)?;
    config.replication_factor = number(
        data,
        &map_key,
        REPLICATION_FACTOR,
        DEFAULT_REPLICATION_FACTOR,
    )?;
    if let Some(secret_name) = data.get(AUTH_SECRET).filter(|s| !s.is_empty()) {
        let secret_key = ObjectKey::new(namespace, secret_name.clone());
        let secret = index
            .secret(&secret_key)
            .map_err(|e| format!("ConfigMap {map_key}: data.{AUTH_SECRET}: {e}"))?;
        config.auth = KafkaAuth::from_secret(secret)?;
    }
    Ok(config)
}

fn number(
    data: &BTreeMap<String, String>,
    map: &ObjectKey,
    key: &str,
    default: i32,
) -> Result<i32, String> {
    match data.get(key) {
        None => Ok(default),
        Some(text) => text
            .trim()
            .parse::<i32>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                format!("ConfigMap {map}: data.{key}: '{text}' is not a positive number")
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::manifest::Manifests;

    fn load(yaml: &str) -> Manifests {
        Manifests::from_text(yaml, crate::api::broker::BrokerClass::Log)
    }

    fn broker_of(manifests: &Manifests) -> (ObjectKey, Broker) {
        manifests
            .objects
            .iter()
            .find_map(|l| match &l.resource {
                crate::api::Resource::Broker(b) => Some((b.metadata.key(), (**b).clone())),
                _ => None,
            })
            .expect("a broker")
    }

    const BROKER: &str = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: orders\n  namespace: shop\n  annotations:\n    eventing.knative.dev/broker.class: Kafka\n";

    #[test]
    fn without_spec_config_the_pilotlight_default_is_used_or_named() {
        let manifests = load(BROKER);
        let index = ObjectIndex::new(&manifests);
        let (key, broker) = broker_of(&manifests);
        let config = resolve(&key, &broker, &index, Some("k:9092")).unwrap();
        assert_eq!(config.bootstrap_servers, "k:9092");
        assert_eq!(config.topic, "knative-broker-shop-orders");
        assert!(!config.external_topic && !config.keep_topic);
        let err = resolve(&key, &broker, &index, None).unwrap_err();
        assert!(
            err.contains("spec.config") && err.contains("--kafka-bootstrap-servers"),
            "{err}"
        );
    }

    #[test]
    fn config_map_and_sasl_ssl_secret_resolve() {
        let yaml = format!(
            "{BROKER}spec:\n  config:\n    apiVersion: v1\n    kind: ConfigMap\n    name: kafka-broker-config\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: kafka-broker-config\n  namespace: shop\ndata:\n  bootstrap.servers: a:9093,b:9093\n  default.topic.partitions: \"3\"\n  default.topic.replication.factor: \"2\"\n  auth.secret.ref.name: kafka-auth\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: kafka-auth\n  namespace: shop\nstringData:\n  protocol: SASL_SSL\n  sasl.mechanism: SCRAM-SHA-512\n  user: alice\n  password: s3cret\n  ca.crt: CERT\n"
        );
        let manifests = load(&yaml);
        assert!(manifests.errors.is_empty(), "{:?}", manifests.errors);
        let index = ObjectIndex::new(&manifests);
        let (key, broker) = broker_of(&manifests);
        let config = resolve(&key, &broker, &index, None).unwrap();
        assert_eq!(config.bootstrap_servers, "a:9093,b:9093");
        assert_eq!((config.partitions, config.replication_factor), (3, 2));
        let client = config.client();
        assert_eq!(client.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(client.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
        assert_eq!(client.get("sasl.username"), Some("alice"));
        assert_eq!(client.get("ssl.ca.pem"), Some("CERT"));
        assert_eq!(client.get("ssl.ca.location"), None);
        assert!(
            !format!("{config:?}").contains("s3cret"),
            "debug hides secrets"
        );
    }

    /// librdkafka refuses, when a client is created, a SASL mechanism or
    /// TLS that it was built without: this checks the build itself (no
    /// system SASL library, OpenSSL from source) against each mechanism.
    #[test]
    fn the_build_supports_sasl_plain_scram_and_tls_without_cyrus_sasl() {
        use rdkafka::producer::BaseProducer;
        for (protocol, mechanism) in [
            ("SASL_SSL", "PLAIN"),
            ("SASL_SSL", "SCRAM-SHA-256"),
            ("SASL_PLAINTEXT", "SCRAM-SHA-512"),
            ("SSL", ""),
        ] {
            let yaml = format!(
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: auth\n  namespace: shop\nstringData:\n  protocol: {protocol}\n  sasl.mechanism: {mechanism}\n  user: alice\n  password: s3cret\n"
            );
            let yaml = yaml.replace("  sasl.mechanism: \n", "");
            let manifests = load(&yaml);
            let index = ObjectIndex::new(&manifests);
            let secret = index
                .secret(&ObjectKey::new("shop", "auth"))
                .expect("the Secret is in the manifests");
            let auth = KafkaAuth::from_secret(secret).unwrap();
            let client = auth.client("127.0.0.1:1");
            if protocol == "SSL" {
                assert_eq!(client.get("ssl.ca.location"), Some("probe"));
            }
            let created: Result<BaseProducer, _> = client.create();
            assert!(
                created.is_ok(),
                "{protocol} {mechanism}: {:?}",
                created.err()
            );
        }
    }

    #[test]
    fn bad_references_and_values_name_the_field() {
        let missing = format!(
            "{BROKER}spec:\n  config:\n    apiVersion: v1\n    kind: ConfigMap\n    name: nope\n"
        );
        let manifests = load(&missing);
        let index = ObjectIndex::new(&manifests);
        let (key, broker) = broker_of(&manifests);
        let err = resolve(&key, &broker, &index, Some("x:1")).unwrap_err();
        assert!(
            err.starts_with("spec.config: ConfigMap shop/nope does not exist"),
            "{err}"
        );

        let bad = format!(
            "{BROKER}spec:\n  config:\n    apiVersion: v1\n    kind: ConfigMap\n    name: c\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  namespace: shop\ndata:\n  bootstrap.servers: a:1\n  default.topic.partitions: many\n"
        );
        let manifests = load(&bad);
        let index = ObjectIndex::new(&manifests);
        let (key, broker) = broker_of(&manifests);
        let err = resolve(&key, &broker, &index, None).unwrap_err();
        assert!(err.contains("data.default.topic.partitions"), "{err}");

        let sasl = format!(
            "{BROKER}spec:\n  config:\n    apiVersion: v1\n    kind: ConfigMap\n    name: c\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  namespace: shop\ndata:\n  bootstrap.servers: a:1\n  auth.secret.ref.name: s\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: s\n  namespace: shop\nstringData:\n  protocol: SASL_PLAINTEXT\n  user: bob\n"
        );
        let manifests = load(&sasl);
        let index = ObjectIndex::new(&manifests);
        let (key, broker) = broker_of(&manifests);
        let err = resolve(&key, &broker, &index, None).unwrap_err();
        assert!(
            err.contains("Secret shop/s") && err.contains("'password'"),
            "{err}"
        );
    }

    #[test]
    fn external_topic_and_keep_annotations() {
        let yaml = BROKER.replace(
            "broker.class: Kafka\n",
            "broker.class: Kafka\n    kafka.eventing.knative.dev/external.topic: existing\n    pilotlight.dev/kafka-keep-topic: \"true\"\n",
        );
        let manifests = load(&yaml);
        let index = ObjectIndex::new(&manifests);
        let (key, broker) = broker_of(&manifests);
        let config = resolve(&key, &broker, &index, Some("k:1")).unwrap();
        assert_eq!(config.topic, "existing");
        assert!(config.external_topic && config.keep_topic);
    }

    /// Knative's per-namespace class is the Kafka backend here: the same
    /// ConfigMap keys, the same plan.
    #[test]
    fn a_kafka_namespaced_broker_is_planned_as_the_kafka_backend() {
        use crate::api::broker::BrokerClass;
        use crate::eventing::backend::{PlanContext, log::LogConfig, memory::MemoryConfig, plan};
        let yaml = format!(
            "{}spec:\n  config:\n    apiVersion: v1\n    kind: ConfigMap\n    name: kafka-broker-config\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: kafka-broker-config\n  namespace: shop\ndata:\n  bootstrap.servers: a:9092\n",
            BROKER.replace("broker.class: Kafka", "broker.class: KafkaNamespaced")
        );
        let manifests = load(&yaml);
        assert!(manifests.errors.is_empty(), "{:?}", manifests.errors);
        let index = ObjectIndex::new(&manifests);
        let (key, broker) = broker_of(&manifests);
        let class = BrokerClass::of(&broker, BrokerClass::Log).expect("a known class");
        assert_eq!(class, BrokerClass::Kafka);
        let dir = std::path::Path::new("/nonexistent");
        let (log, memory) = (LogConfig::default(), MemoryConfig::default());
        let context = PlanContext {
            key: &key,
            broker: &broker,
            index: &index,
            data_dir: dir,
            log: &log,
            memory: &memory,
            rabbitmq_uri: None,
            kafka_bootstrap_servers: None,
            replica: "pod-0",
            channel_topic: None,
        };
        let planned = plan(class, &context).expect("planned");
        assert_eq!(planned.class(), BrokerClass::Kafka);
        let kafka = planned
            .as_any()
            .downcast_ref::<KafkaConfig>()
            .expect("the Kafka backend's plan");
        assert_eq!(kafka.bootstrap_servers, "a:9092");
        assert_eq!(kafka.topic, "knative-broker-shop-orders");
        // The replica's static member id in its triggers' groups.
        assert_eq!(kafka.member.as_deref(), Some("pod-0"));
    }
}
