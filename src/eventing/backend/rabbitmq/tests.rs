//! Unit tests of the parts that need no RabbitMQ: names, filter push-down,
//! the AMQP binding and the connection settings. The backend against a real
//! RabbitMQ is tested in tests/rabbitmq.rs.

use bytes::Bytes;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use super::config::{RabbitConnectionConfig, parse_uri};
use super::*;
use crate::api::broker::BrokerClass;
use crate::api::manifest::{Manifests, parse_document};
use crate::api::rabbitmq::{QueueType, RabbitmqBrokerConfig};
use crate::cloudevent::test_event;

fn manifests(docs: &[&str]) -> Manifests {
    let mut manifests = Manifests::default();
    for doc in docs {
        let resource = parse_document(doc, BrokerClass::Log)
            .expect("valid manifest")
            .expect("a resource");
        manifests.objects.push(crate::api::manifest::Loaded {
            origin: crate::api::manifest::Origin {
                file: "test.yaml".into(),
                line: 1,
            },
            resource,
        });
    }
    manifests
}

const CONFIG: &str = "apiVersion: eventing.knative.dev/v1alpha1\nkind: RabbitmqBrokerConfig\nmetadata:\n  name: rabbit\nspec:\n  queueType: classic\n  vhost: orders\n  rabbitmqClusterReference:\n    connectionSecret:\n      name: creds\n";

fn config_of(manifests: &Manifests) -> &RabbitmqBrokerConfig {
    manifests
        .objects
        .iter()
        .find_map(|l| match &l.resource {
            crate::api::Resource::RabbitmqBrokerConfig(c) => Some(&**c),
            _ => None,
        })
        .expect("config")
}

#[test]
fn names_are_derived_from_namespace_and_name_and_fit_amqp() {
    let broker = ObjectKey::new("team-a", "orders");
    assert_eq!(exchange_name(&broker), "pilotlight/team-a/orders");
    assert_eq!(queue_name(&broker, "ship"), "pilotlight/team-a/orders/ship");
    // A dot in a trigger name cannot make two triggers share a queue.
    assert_ne!(
        queue_name(&ObjectKey::new("ns", "a.b"), "c"),
        queue_name(&ObjectKey::new("ns", "a"), "b.c")
    );
    let long = "t".repeat(253);
    let name = queue_name(&ObjectKey::new("ns", "b".repeat(253)), &long);
    assert!(name.len() <= 255, "{}", name.len());
    assert_eq!(
        name,
        queue_name(&ObjectKey::new("ns", "b".repeat(253)), &long)
    );
    assert_ne!(
        name,
        queue_name(&ObjectKey::new("ns", "b".repeat(253)), &"u".repeat(253))
    );
}

#[test]
fn only_the_exact_conjunction_is_pushed_down() {
    let exact = |a: &str, v: &str| Filter::Exact {
        attribute: a.into(),
        value: v.into(),
    };
    let filter = Filter::All(vec![
        exact("type", "order"),
        Filter::All(vec![exact("source", "/shop")]),
        Filter::Prefix {
            attribute: "subject".into(),
            prefix: "a".into(),
        },
        Filter::Any(vec![exact("team", "x"), exact("team", "y")]),
        Filter::Not(Box::new(exact("team", "z"))),
        exact("datacontenttype", "application/json"),
    ]);
    assert_eq!(
        exact_conjunction(&filter),
        [
            ("type".to_owned(), "order".to_owned()),
            ("source".to_owned(), "/shop".to_owned())
        ]
    );
    assert!(exact_conjunction(&Filter::Everything).is_empty());
    let arguments = binding::binding_arguments(&exact_conjunction(&filter));
    assert_eq!(
        arguments.inner().get("x-match"),
        Some(&AMQPValue::LongString(LongString::from("all")))
    );
    assert_eq!(
        arguments.inner().get("cloudEvents:type"),
        Some(&AMQPValue::LongString(LongString::from("order")))
    );
    assert_eq!(arguments.inner().len(), 3);
}

#[test]
fn binary_mode_keeps_the_types_of_boolean_and_integer_extensions() {
    let event = crate::cloudevent::test_typed_event("1");
    let (properties, body) = binding::encode(&event);
    let headers = properties.headers().clone().unwrap_or_default();
    // Text in the attribute's header, for the exchange's bindings to match.
    assert_eq!(
        headers.inner().get("cloudEvents:flag"),
        Some(&AMQPValue::LongString("true".into()))
    );
    let back = binding::decode(&properties, Bytes::copy_from_slice(body)).expect("decodes");
    // An AMQP table is ordered by key, so compare attribute by attribute.
    for (name, _, _) in event.attributes_with_types() {
        assert_eq!(
            back.attribute_value(name),
            event.attribute_value(name),
            "{name}"
        );
    }
    assert_eq!(
        back.attributes_with_types().count(),
        event.attributes_with_types().count()
    );
    assert!(
        binding::header_frame_bytes(&event)
            > binding::header_frame_bytes(&crate::cloudevent::test_event("1", "t", None))
    );
}

#[test]
fn amqp_booleans_and_integers_from_other_clients_are_typed_as_the_amqp_binding_maps_them() {
    let mut headers = FieldTable::default();
    for (name, value) in [
        ("specversion", AMQPValue::LongString("1.0".into())),
        // A client that sends the id as a number still gives a String id.
        ("id", AMQPValue::LongLongInt(7)),
        ("source", AMQPValue::LongString("/s".into())),
        ("type", AMQPValue::LongString("t".into())),
        ("flag", AMQPValue::Boolean(false)),
        ("count", AMQPValue::LongInt(-3)),
        ("big", AMQPValue::LongLongInt(1 << 40)),
    ] {
        headers.insert(ShortString::from(format!("cloudEvents:{name}")), value);
    }
    let properties = BasicProperties::default().with_headers(headers);
    let event = binding::decode(&properties, Bytes::new()).expect("decodes");
    use crate::cloudevent::AttributeValue;
    assert_eq!(
        event.attribute_value("id"),
        Some(AttributeValue::String("7"))
    );
    assert_eq!(
        event.attribute_value("flag"),
        Some(AttributeValue::Boolean(false))
    );
    assert_eq!(
        event.attribute_value("count"),
        Some(AttributeValue::Integer(-3))
    );
    assert_eq!(
        event.attribute_value("big"),
        Some(AttributeValue::String("1099511627776"))
    );
}

#[test]
fn binary_mode_round_trips_attributes_and_data_bytes() {
    let mut event = test_event("1", "order", Some(Bytes::from_static(b"{ \"a\" : 1 }")));
    event.set_attribute("datacontenttype", "application/json");
    event.set_attribute("team", "blue");
    let (properties, body) = binding::encode(&event);
    assert_eq!(
        properties.content_type().as_ref().map(|c| c.as_str()),
        Some("application/json")
    );
    assert_eq!(properties.delivery_mode(), &Some(2), "persistent");
    let headers = properties.headers().as_ref().expect("headers");
    assert!(headers.contains_key("cloudEvents:team"));
    assert!(!headers.contains_key("cloudEvents:datacontenttype"));
    let back = binding::decode(&properties, Bytes::copy_from_slice(body)).expect("decodes");
    assert_eq!(back.data(), event.data());
    for (name, value) in event.attributes() {
        assert_eq!(back.attribute(name), Some(value), "{name}");
    }
    assert_eq!(back.attributes().count(), event.attributes().count());
}

#[test]
fn structured_and_legacy_prefixed_messages_decode_and_plain_ones_do_not() {
    let structured = BasicProperties::default().with_content_type(ShortString::from(
        "application/cloudevents+json; charset=utf-8",
    ));
    let event = binding::decode(
        &structured,
        Bytes::from_static(
            br#"{"specversion":"1.0","id":"s","source":"/x","type":"t","data":[1]}"#,
        ),
    )
    .expect("structured");
    assert_eq!(event.data().map(|d| &d[..]), Some(&b"[1]"[..]));

    let mut headers = FieldTable::default();
    for (k, v) in [
        ("cloudEvents_specversion", "1.0"),
        ("cloudEvents_id", "l"),
        ("cloudEvents_source", "/x"),
        ("cloudEvents_type", "t"),
    ] {
        headers.insert(k.into(), AMQPValue::LongString(v.into()));
    }
    headers.insert("cloudEvents_count".into(), AMQPValue::LongInt(3));
    let legacy = BasicProperties::default().with_headers(headers);
    let event = binding::decode(&legacy, Bytes::new()).expect("legacy prefix");
    assert_eq!((event.id(), event.attribute("count")), ("l", Some("3")));
    assert_eq!(event.data(), None);

    let plain = BasicProperties::default().with_content_type("text/plain".into());
    assert!(matches!(
        binding::decode(&plain, Bytes::from_static(b"hi")),
        Err(binding::DecodeError::NotAnEvent)
    ));
    // Claims to be an event but is not a valid one: the error says why.
    let mut headers = FieldTable::default();
    headers.insert(
        "cloudEvents:specversion".into(),
        AMQPValue::LongString("1.0".into()),
    );
    let broken = BasicProperties::default().with_headers(headers);
    let err = binding::decode(&broken, Bytes::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("id"), "{err}");
}

#[test]
fn a_config_reads_its_secret_and_applies_credentials_and_vhost() {
    let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\nstringData:\n  uri: amqp://10.1.2.3:5673\n  username: alice\n  password: s3cret\n";
    let m = manifests(&[CONFIG, secret]);
    let index = crate::api::index::ObjectIndex::new(&m);
    let resolved = config_of(&m).resolve(&index, None).expect("resolves");
    assert_eq!(resolved.queue_type, QueueType::Classic);
    let uri = &resolved.uri;
    assert_eq!(uri.authority.host, "10.1.2.3", "an IP host is kept");
    assert_eq!(uri.authority.port, 5673);
    assert_eq!(uri.authority.userinfo.username, "alice");
    assert_eq!(uri.authority.userinfo.password, "s3cret");
    assert_eq!(uri.vhost, "orders");
    assert!(
        !format!("{resolved:?}").contains("s3cret"),
        "password redacted"
    );
}

#[test]
fn a_management_url_in_the_secret_becomes_the_amqp_address() {
    // The messaging-topology-operator's secrets hold the management URL.
    let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\ndata:\n  uri: aHR0cDovL3JhYmJpdC5ucy5zdmM6MTU2NzI=\n  port: NTY3Mg==\n";
    let m = manifests(&[CONFIG, secret]);
    let index = crate::api::index::ObjectIndex::new(&m);
    let uri = config_of(&m).resolve(&index, None).expect("resolves").uri;
    assert_eq!(
        (uri.authority.host.as_str(), uri.authority.port),
        ("rabbit.ns.svc", 5672)
    );
}

#[test]
fn missing_secrets_keys_and_defaults_are_named() {
    let m = manifests(&[CONFIG]);
    let index = crate::api::index::ObjectIndex::new(&m);
    let err = config_of(&m).resolve(&index, None).unwrap_err();
    assert!(
        err.contains("RabbitmqBrokerConfig default/rabbit")
            && err.contains("Secret default/creds does not exist"),
        "{err}"
    );
    let secret =
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\nstringData:\n  username: bob\n";
    let m = manifests(&[CONFIG, secret]);
    let index = crate::api::index::ObjectIndex::new(&m);
    let err = config_of(&m).resolve(&index, None).unwrap_err();
    assert!(err.contains("has no key 'uri'"), "{err}");

    let bare = "apiVersion: eventing.knative.dev/v1alpha1\nkind: RabbitmqBrokerConfig\nmetadata:\n  name: bare\n";
    let m = manifests(&[bare]);
    let index = crate::api::index::ObjectIndex::new(&m);
    let err = config_of(&m).resolve(&index, None).unwrap_err();
    assert!(err.contains("--rabbitmq-uri"), "{err}");
    let uri = config_of(&m)
        .resolve(&index, Some("amqp://guest:guest@127.0.0.1:5672/%2f"))
        .expect("default")
        .uri;
    assert_eq!(
        (uri.vhost.as_str(), uri.authority.host.as_str()),
        ("/", "127.0.0.1")
    );
}

#[test]
fn bad_configs_are_refused_with_the_field() {
    let refuse = |doc: &str| parse_document(doc, BrokerClass::Log).unwrap_err();
    let err = refuse(
        "apiVersion: eventing.knative.dev/v1alpha1\nkind: RabbitmqBrokerConfig\nmetadata:\n  name: c\nspec:\n  queueType: stream\n",
    );
    assert_eq!(err.field.as_deref(), Some("spec.queueType"), "{err}");
    let err = refuse(
        "apiVersion: eventing.knative.dev/v1alpha1\nkind: RabbitmqBrokerConfig\nmetadata:\n  name: c\nspec:\n  rabbitmqClusterReference:\n    name: my-cluster\n",
    );
    assert_eq!(
        err.field.as_deref(),
        Some("spec.rabbitmqClusterReference.connectionSecret")
    );
    assert!(err.reason.contains("Secret"), "{err}");
    let err = refuse(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t\n  annotations:\n    rabbitmq.eventing.knative.dev/parallelism: \"0\"\nspec:\n  broker: b\n  subscriber:\n    uri: http://x/\n",
    );
    assert_eq!(
        err.field.as_deref(),
        Some("metadata.annotations.rabbitmq.eventing.knative.dev/parallelism")
    );
    assert!(
        RabbitConnectionConfig::from_uri("http://x", QueueType::Quorum)
            .unwrap_err()
            .to_string()
            .contains("not an AMQP URI")
    );
    let err = parse_uri("amqp://u:pw@host:notaport/").unwrap_err();
    assert!(!err.to_string().contains("pw@"), "password hidden: {err}");
}

/// The vhost of each URI form, by [`super::config::uri_vhost`]'s rule.
fn vhost(uri: &str) -> String {
    parse_uri(uri).expect("parses").vhost
}

#[test]
fn a_uri_without_a_path_names_the_default_vhost() {
    assert_eq!(vhost("amqp://guest:guest@127.0.0.1:5672"), "/");
    assert_eq!(vhost("amqp://rabbit?heartbeat=10"), "/");
}

#[test]
fn a_uri_ending_in_a_bare_slash_names_the_default_vhost_not_the_empty_one() {
    // As RabbitMQ's tutorials and Go and Python clients write it; the empty
    // vhost the spec's letter gives would be refused by RabbitMQ.
    assert_eq!(vhost("amqp://guest:guest@127.0.0.1:5672/"), "/");
    assert_eq!(vhost("amqps://rabbit.example/"), "/");
    assert_eq!(vhost("amqp://rabbit/?heartbeat=10"), "/");
    assert_eq!(vhost("amqp://[::1]:5672/"), "/");
}

#[test]
fn a_uri_path_is_the_percent_decoded_vhost() {
    assert_eq!(vhost("amqp://rabbit/%2f"), "/");
    assert_eq!(vhost("amqp://rabbit/%2F"), "/");
    assert_eq!(vhost("amqp://rabbit/orders"), "orders");
    assert_eq!(vhost("amqp://rabbit/a%2Fb?frame_max=8192"), "a/b");
    assert_eq!(vhost("amqp://u:p@rabbit:5673/team%20a"), "team a");
    let err = parse_uri("amqp://u:secret@rabbit/%ff")
        .unwrap_err()
        .to_string();
    assert!(err.contains("vhost") && !err.contains("secret"), "{err}");
}

#[test]
fn every_place_that_reads_a_rabbitmq_uri_follows_the_vhost_rule() {
    let trailing = "amqp://guest:guest@127.0.0.1:5672/";
    // --rabbitmq-uri, for a RabbitMQBroker without spec.config.
    let flag = RabbitConnectionConfig::from_uri(trailing, QueueType::Quorum).expect("flag");
    assert_eq!(flag.uri.vhost, "/");
    // A connection Secret's `uri`, for a RabbitmqBrokerConfig (no vhost of
    // its own) and for a RabbitmqSource's cluster reference.
    let config = "apiVersion: eventing.knative.dev/v1alpha1\nkind: RabbitmqBrokerConfig\nmetadata:\n  name: rabbit\nspec:\n  rabbitmqClusterReference:\n    connectionSecret:\n      name: creds\n";
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\nstringData:\n  uri: {trailing}\n"
    );
    let m = manifests(&[config, &secret]);
    let index = crate::api::index::ObjectIndex::new(&m);
    let broker = config_of(&m).resolve(&index, None).expect("secret");
    assert_eq!(broker.uri.vhost, "/");
    let reference = config_of(&m).spec.rabbitmq_cluster_reference.clone();
    let source = super::config::resolve_uri(reference.as_ref(), "default", None, &index, None)
        .expect("source's secret");
    assert_eq!(source.vhost, "/");
    // A RabbitmqSource without a reference reads --rabbitmq-uri.
    let source = super::config::resolve_uri(None, "default", None, &index, Some(trailing))
        .expect("source's default");
    assert_eq!(source.vhost, "/");
}
