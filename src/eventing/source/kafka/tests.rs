use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::{ClientConfig, Timestamp};

use super::mapping::{KAFKA_EVENT_TYPE, header_extension, to_event};
use crate::api::ObjectKey;
use crate::api::broker::BrokerClass;
use crate::api::index::ObjectIndex;
use crate::api::manifest::parse_document;
use crate::api::sources::kafka::{
    API_VERSIONS, InitialOffset, KEY_TYPE_LABEL, KafkaSource, KeyType,
};

fn manifest(version: &str, labels: &str, spec: &str) -> String {
    format!(
        "apiVersion: {version}\nkind: KafkaSource\nmetadata:\n  name: orders\n  namespace: shop\n{labels}spec:\n  bootstrapServers: [127.0.0.1:9092]\n  topics: [orders]\n  sink:\n    uri: http://127.0.0.1:1/\n{spec}"
    )
}

fn parse(yaml: &str) -> Result<crate::api::Resource, String> {
    match parse_document(yaml, BrokerClass::Log) {
        Ok(Some(resource)) => Ok(resource),
        Ok(None) => Err("empty".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn refusal(yaml: &str) -> String {
    match parse(yaml) {
        Err(e) => e,
        Ok(r) => panic!("accepted: {r:?}"),
    }
}

#[test]
fn both_api_versions_load_with_knative_defaults() {
    for version in API_VERSIONS {
        let resource = parse(&manifest(version, "", "")).expect("loads");
        let crate::api::Resource::KafkaSource(source) = resource else {
            panic!("a KafkaSource");
        };
        assert_eq!(source.initial_offset().unwrap(), InitialOffset::Latest);
        assert!(source.ordered().unwrap());
        assert_eq!(source.key_type().unwrap(), KeyType::String);
        assert_eq!(source.consumer_group(), "knative-kafka-source-shop-orders");
    }
    let other = refusal(&manifest("sources.knative.dev/v2", "", ""));
    assert!(other.contains("apiVersion"), "{other}");
}

#[test]
fn bad_fields_are_refused_by_name() {
    let cases = [
        ("  initialOffset: newest\n", "spec.initialOffset"),
        ("  ordering: random\n", "spec.ordering"),
        ("  consumers: 0\n", "spec.consumers"),
        (
            "  delivery:\n    deadLetterSink:\n      ref:\n        apiVersion: v1\n        kind: Service\n        name: x\n",
            "spec.delivery.deadLetterSink.ref",
        ),
        (
            "  ceOverrides:\n    extensions:\n      id: x\n",
            "spec.ceOverrides.extensions.id",
        ),
        (
            "  net:\n    sasl:\n      enable: true\n      password:\n        secretKeyRef: {name: s, key: p}\n",
            "spec.net.sasl.user",
        ),
        (
            "  net:\n    tls:\n      enable: true\n      cert:\n        secretKeyRef: {name: s, key: c}\n",
            "spec.net.tls.key",
        ),
        (
            "  net:\n    tls:\n      caCert:\n        secretKeyRef: {name: \"\", key: ca.crt}\n",
            "spec.net.tls.caCert.secretKeyRef.name",
        ),
        (
            "  net:\n    sasl:\n      roleARN:\n        secretKeyRef: {name: s, key: arn}\n",
            "spec.net.sasl.roleARN",
        ),
        (
            "  net:\n    tls:\n      enabled: true\n",
            "spec.net.tls.enabled",
        ),
    ];
    for (spec, field) in cases {
        let message = refusal(&manifest("sources.knative.dev/v1beta1", "", spec));
        assert!(message.contains(field), "{field}: {message}");
    }
    let bad_label = refusal(&manifest(
        "sources.knative.dev/v1",
        "  labels:\n    kafkasources.sources.knative.dev/key-type: uuid\n",
        "",
    ));
    assert!(bad_label.contains(KEY_TYPE_LABEL), "{bad_label}");
    let bad_topic =
        refusal(&manifest("sources.knative.dev/v1", "", "").replace("[orders]", "[\"a b\"]"));
    assert!(bad_topic.contains("spec.topics[0]"), "{bad_topic}");
}

fn record(key: Option<&[u8]>, headers: &[(&str, &[u8])], value: &[u8]) -> OwnedMessage {
    let mut owned = OwnedHeaders::new();
    for (name, value) in headers {
        owned = owned.insert(Header {
            key: name,
            value: Some(*value),
        });
    }
    OwnedMessage::new(
        Some(value.to_vec()),
        key.map(<[u8]>::to_vec),
        "orders".into(),
        Timestamp::CreateTime(1_700_000_000_123),
        2,
        41,
        Some(owned),
    )
}

#[test]
fn a_plain_record_is_mapped_as_knative_does() {
    let source = ObjectKey::new("shop", "orders");
    let message = record(Some(b"user-1"), &[("Trace-Id", b"abc")], b"{\"n\":1}");
    let event = to_event(&source, KeyType::String, &message).expect("maps");
    assert_eq!(event.ty(), KAFKA_EVENT_TYPE);
    assert_eq!(
        event.source(),
        "/apis/v1/namespaces/shop/kafkasources/orders#orders"
    );
    assert_eq!(event.id(), "partition:2/offset:41");
    assert_eq!(event.attribute("subject"), Some("partition:2#41"));
    assert_eq!(event.attribute("key"), Some("user-1"));
    assert_eq!(event.attribute("kafkaheadertraceid"), Some("abc"));
    assert_eq!(event.attribute("time"), Some("2023-11-14T22:13:20.123Z"));
    assert_eq!(event.datacontenttype(), Some("application/json"));
    assert_eq!(event.data().map(|d| &d[..]), Some(&b"{\"n\":1}"[..]));
}

#[test]
fn key_types_read_keys() {
    assert_eq!(KeyType::Int.read(&42i32.to_be_bytes()).unwrap(), "42");
    assert_eq!(KeyType::Int.read(&(-7i64).to_be_bytes()).unwrap(), "-7");
    assert_eq!(KeyType::Float.read(&1.5f64.to_be_bytes()).unwrap(), "1.5");
    assert_eq!(KeyType::Float.read(&2.25f32.to_be_bytes()).unwrap(), "2.25");
    assert_eq!(KeyType::ByteArray.read(&[0, 255]).unwrap(), "AP8=");
    assert!(KeyType::Int.read(&[1, 2, 3]).is_err());
    assert!(KeyType::String.read(&[0xff]).is_err());
    // A key that does not read as its type is left out, the event still goes.
    let message = record(Some(&[1, 2, 3]), &[], b"x");
    let event = to_event(&ObjectKey::new("a", "b"), KeyType::Int, &message).expect("maps");
    assert_eq!(event.attribute("key"), None);
    assert_eq!(event.datacontenttype(), None, "x is not JSON");
}

#[test]
fn cloudevent_records_pass_through_in_both_bindings() {
    let source = ObjectKey::new("shop", "orders");
    let binary = record(
        Some(b"k"),
        &[
            ("ce_specversion", b"1.0"),
            ("ce_id", b"e-1"),
            ("ce_source", b"/app"),
            ("ce_type", b"order.created"),
            ("content-type", b"text/plain"),
        ],
        b"hello",
    );
    let event = to_event(&source, KeyType::String, &binary).expect("binary");
    assert_eq!((event.id(), event.ty()), ("e-1", "order.created"));
    assert_eq!(event.datacontenttype(), Some("text/plain"));
    assert_eq!(event.attribute("key"), None, "passed through unchanged");
    let structured = record(
        None,
        &[("content-type", b"application/cloudevents+json")],
        br#"{"specversion":"1.0","id":"e-2","source":"/app","type":"t","data":"hi","datacontenttype":"text/plain"}"#,
    );
    let event = to_event(&source, KeyType::String, &structured).expect("structured");
    assert_eq!(event.id(), "e-2");
    assert_eq!(event.data().map(|d| &d[..]), Some(&b"hi"[..]));
}

#[test]
fn header_names_become_extension_names() {
    assert_eq!(header_extension("X-Trace_ID"), "kafkaheaderxtraceid");
    let long = record(None, &[("a-very-long-header-name", b"v")], b"x");
    let event = to_event(&ObjectKey::new("a", "b"), KeyType::String, &long).expect("maps");
    assert_eq!(
        event
            .attributes()
            .filter(|(n, _)| n.starts_with("kafkaheader"))
            .count(),
        0,
        "too long for an extension name: left out, the event still goes"
    );
}

/// A KafkaSource with `spec.net` and the Secrets it names, as loaded.
fn net_manifests(net: &str, secrets: &str) -> crate::api::manifest::Manifests {
    let yaml = format!(
        "{}  net:\n{net}{secrets}",
        manifest("sources.knative.dev/v1", "", "")
    );
    let manifests = crate::api::manifest::Manifests::from_text(&yaml, BrokerClass::Log);
    assert!(manifests.errors.is_empty(), "{:?}", manifests.errors);
    manifests
}

fn source_of(manifests: &crate::api::manifest::Manifests) -> KafkaSource {
    manifests
        .objects
        .iter()
        .find_map(|l| match &l.resource {
            crate::api::Resource::KafkaSource(s) => Some((**s).clone()),
            _ => None,
        })
        .expect("a KafkaSource")
}

/// `spec.net` resolved against the loaded Secrets, as a client config.
fn resolved(net: &str, secrets: &str) -> Result<ClientConfig, String> {
    let manifests = net_manifests(net, secrets);
    let index = ObjectIndex::new(&manifests);
    let source = source_of(&manifests);
    super::net::resolve(source.spec.net.as_ref(), "shop", &index)
        .map(|auth| auth.client(&source.spec.bootstrap_servers.join(",")))
}

fn secret(name: &str, pairs: &[(&str, &str)]) -> String {
    let mut doc = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: shop\nstringData:\n"
    );
    for (key, value) in pairs {
        let value = serde_json::to_string(value).expect("a JSON string is YAML");
        doc.push_str(&format!("  {key}: {value}\n"));
    }
    doc
}

fn reference(field: &str, name: &str, key: &str) -> String {
    format!("      {field}:\n        secretKeyRef:\n          name: {name}\n          key: {key}\n")
}

// Test-only CA, client certificate and key (P-256, made with openssl for
// these tests; they protect nothing).
const CA: &str = include_str!("testdata/ca.pem");
const CLIENT_CERT: &str = include_str!("testdata/client.pem");
const CLIENT_KEY: &str = include_str!("testdata/client.key");

#[test]
fn tls_with_a_ca_secret_builds_an_ssl_client_that_rdkafka_takes() {
    // Knative's docs example: TLS with a client certificate and a CA.
    let net = format!(
        "    tls:\n      enable: true\n{}{}{}",
        reference("cert", "kafka-secret", "tls.crt"),
        reference("key", "kafka-secret", "tls.key"),
        reference("caCert", "cacert", "caroot.pem"),
    );
    let secrets = secret(
        "kafka-secret",
        &[("tls.crt", CLIENT_CERT), ("tls.key", CLIENT_KEY)],
    ) + &secret("cacert", &[("caroot.pem", CA)]);
    let client = resolved(&net, &secrets).expect("resolves");
    assert_eq!(client.get("bootstrap.servers"), Some("127.0.0.1:9092"));
    assert_eq!(client.get("security.protocol"), Some("SSL"));
    assert_eq!(client.get("ssl.ca.pem"), Some(CA));
    assert_eq!(client.get("ssl.certificate.pem"), Some(CLIENT_CERT));
    assert_eq!(client.get("ssl.key.pem"), Some(CLIENT_KEY));
    assert_eq!(client.get("ssl.ca.location"), None);
    assert_eq!(client.get("sasl.mechanisms"), None);
    // librdkafka parses the PEMs when the client is made (no connection).
    let consumer: Result<BaseConsumer, _> = client.create();
    assert!(consumer.is_ok(), "{:?}", consumer.err());
    // A CA that is not PEM is refused there: the settings do reach it.
    let client_secret = secret(
        "kafka-secret",
        &[("tls.crt", CLIENT_CERT), ("tls.key", CLIENT_KEY)],
    );
    let bad_ca = secret("cacert", &[("caroot.pem", "not a certificate")]);
    let bad = resolved(&net, &(client_secret + &bad_ca)).expect("resolves");
    let refused: Result<BaseConsumer, _> = bad.create();
    let error = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("ssl.ca.pem"), "{error}");
}

#[test]
fn sasl_and_tls_map_to_librdkafka_settings() {
    // Knative's SASL example: user, password and the mechanism from a
    // Secret, TLS with only a CA.
    let net = format!(
        "    sasl:\n      enable: true\n{}{}{}    tls:\n      enable: true\n{}",
        reference("user", "creds", "user"),
        reference("password", "creds", "password"),
        reference("type", "creds", "saslType"),
        reference("caCert", "creds", "ca.crt"),
    );
    let secrets = secret(
        "creds",
        &[
            ("user", "alice"),
            ("password", "s3cret"),
            ("saslType", "SCRAM-SHA-512\n"),
            ("ca.crt", CA),
        ],
    );
    let client = resolved(&net, &secrets).expect("resolves");
    assert_eq!(client.get("security.protocol"), Some("SASL_SSL"));
    assert_eq!(client.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
    assert_eq!(client.get("sasl.username"), Some("alice"));
    assert_eq!(client.get("sasl.password"), Some("s3cret"));
    assert_eq!(client.get("ssl.ca.pem"), Some(CA));
    let consumer: Result<BaseConsumer, _> = client.create();
    assert!(consumer.is_ok(), "{:?}", consumer.err());

    // SASL alone, no type: SASL_PLAINTEXT with PLAIN. TLS alone without a
    // CA: the system's CAs.
    let sasl_only = format!(
        "    sasl:\n      enable: true\n{}{}",
        reference("user", "creds", "user"),
        reference("password", "creds", "password"),
    );
    let client = resolved(&sasl_only, &secrets).expect("resolves");
    assert_eq!(client.get("security.protocol"), Some("SASL_PLAINTEXT"));
    assert_eq!(client.get("sasl.mechanisms"), Some("PLAIN"));
    assert_eq!(client.get("ssl.ca.location"), None);
    let client = resolved("    tls:\n      enable: true\n", "").expect("resolves");
    assert_eq!(client.get("security.protocol"), Some("SSL"));
    assert_eq!(client.get("ssl.ca.location"), Some("probe"));
}

#[test]
fn sections_that_are_not_enabled_are_not_read() {
    // As the API server returns an unset spec.net: empty values.
    let net = "    sasl:\n      user: {}\n      password: {}\n      type: {}\n      roleARN: {}\n      tokenProvider: {}\n    tls:\n      cert: {}\n      key: {}\n      caCert:\n        secretKeyRef: {name: nowhere, key: ca.crt}\n";
    let client = resolved(net, "").expect("nothing to read");
    assert_eq!(client.get("security.protocol"), Some("PLAINTEXT"));
    assert_eq!(client.get("ssl.ca.pem"), None);
}

#[test]
fn missing_secrets_keys_and_values_name_the_field_secret_and_key() {
    let tls = format!(
        "    tls:\n      enable: true\n{}",
        reference("caCert", "cacert", "ca.crt")
    );
    let err = resolved(&tls, "").expect_err("no Secret");
    assert_eq!(
        err,
        "spec.net.tls.caCert.secretKeyRef: Secret shop/cacert does not exist: create it, or fix the reference"
    );
    let err = resolved(&tls, &secret("cacert", &[("other", "x")])).expect_err("no key");
    assert_eq!(
        err,
        "spec.net.tls.caCert.secretKeyRef: Secret shop/cacert has no key 'ca.crt' (in data or stringData)"
    );
    let err = resolved(&tls, &secret("cacert", &[("ca.crt", "")])).expect_err("empty");
    assert!(err.ends_with("key 'ca.crt' is empty"), "{err}");
    let sasl = format!(
        "    sasl:\n      enable: true\n{}{}{}",
        reference("user", "creds", "user"),
        reference("password", "creds", "password"),
        reference("type", "creds", "type"),
    );
    let err = resolved(
        &sasl,
        &secret(
            "creds",
            &[("user", "a"), ("password", "b"), ("type", "GSSAPI")],
        ),
    )
    .expect_err("mechanism");
    assert_eq!(
        err,
        "spec.net.sasl.type: the SASL mechanism 'GSSAPI' is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"
    );
}

/// The whole path: the controller's builder reads the Secrets, and a
/// source whose Secret is missing runs as NotReady with the reason; with
/// the Secret, the build reads differently, so a reload restarts it.
#[tokio::test]
async fn a_source_without_its_secret_is_not_ready_and_restarts_when_it_appears() {
    use crate::eventing::health::Health;
    use crate::eventing::source::{BuildContext, SourceConfig, SourceContext};
    let tls = format!(
        "    tls:\n      enable: true\n{}",
        reference("caCert", "cacert", "ca.crt")
    );
    let build = |secrets: &str| {
        let manifests = net_manifests(&tls, secrets);
        let index = ObjectIndex::new(&manifests);
        let context = BuildContext {
            index: &index,
            kubeconfig: None,
            rabbitmq_uri: None,
            ping_clock: &crate::eventing::source::PingClock::default(),
            cluster_state: None,
        };
        source_of(&manifests).builder(&context)
    };
    let without = build("");
    let with = build(&secret("cacert", &[("ca.crt", CA)]));
    assert_ne!(
        without.inputs, with.inputs,
        "a new Secret restarts the source"
    );
    assert_eq!(
        without.inputs,
        build("").inputs,
        "the same inputs keep it running"
    );

    let dir = tempfile::tempdir().expect("tmp");
    let (context, handle) = SourceContext::new(
        ObjectKey::new("shop", "orders"),
        "http://127.0.0.1:1/".parse().expect("uri"),
        crate::eventing::delivery::EventSender::new(),
        dir.path().to_owned(),
    );
    let task = tokio::spawn((without.build)().run(context));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while handle.health() == Health::Unknown && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        handle.health(),
        Health::NotReady {
            reason: "InvalidSpec".into(),
            message: "spec.net.tls.caCert.secretKeyRef: Secret shop/cacert does not exist: create it, or fix the reference".into(),
        }
    );
    handle.stop();
    let _ = task.await;
}
