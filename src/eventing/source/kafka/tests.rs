use rdkafka::Timestamp;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};

use super::mapping::{KAFKA_EVENT_TYPE, header_extension, to_event};
use crate::api::ObjectKey;
use crate::api::broker::BrokerClass;
use crate::api::manifest::parse_document;
use crate::api::sources::kafka::{API_VERSIONS, InitialOffset, KEY_TYPE_LABEL, KeyType};

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
        ("  net:\n    tls:\n      enable: true\n", "spec.net"),
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
