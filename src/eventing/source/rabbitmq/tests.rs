//! Unit tests of the RabbitmqSource manifest and message mapping; consuming
//! from a real RabbitMQ is tested in tests/rabbitmq.rs.

use bytes::Bytes;
use lapin::BasicProperties;

use super::source::{RABBITMQ_EVENT_TYPE, event_source, message_event};
use super::*;
use crate::api::ObjectKey;
use crate::api::Resource;
use crate::api::broker::BrokerClass;
use crate::api::manifest::parse_document;

fn source(resources: &str, extra: &str) -> Result<RabbitmqSource, (Option<String>, String)> {
    let doc = format!(
        "apiVersion: sources.knative.dev/v1alpha1\nkind: RabbitmqSource\nmetadata:\n  name: s\n  namespace: ns\nspec:\n  rabbitmqResourcesConfig:\n{resources}  sink:\n    uri: http://127.0.0.1:1/\n{extra}"
    );
    match parse_document(&doc, BrokerClass::Log) {
        Ok(Some(Resource::RabbitmqSource(s))) => Ok(*s),
        Ok(_) => panic!("not a source"),
        Err(e) => Err((e.field, e.reason)),
    }
}

#[test]
fn a_full_eventing_rabbitmq_manifest_loads() {
    let s = source(
        "    queueName: q\n    exchangeName: x\n    vhost: v\n    parallelism: 10\n    predeclared: true\n",
        "  delivery:\n    retry: 3\n    backoffPolicy: linear\n    backoffDelay: PT1S\n  serviceAccountName: sa\n",
    )
    .expect("loads");
    assert_eq!(s.parallelism(), Ok(10));
    let policy = s.delivery_policy();
    assert_eq!(policy.retry, 3);
    assert_eq!(policy.backoff_delay, std::time::Duration::from_secs(1));
    let default = source("    queueName: q\n", "").expect("loads");
    assert_eq!(default.parallelism(), Ok(1));
    assert_eq!(default.delivery_policy(), source_delivery_policy());
}

#[test]
fn bad_sources_are_refused_with_the_field() {
    let field = |r: Result<RabbitmqSource, (Option<String>, String)>| r.unwrap_err().0;
    assert_eq!(
        field(source("    exchangeName: x\n", "")).as_deref(),
        Some("spec.rabbitmqResourcesConfig.queueName")
    );
    assert_eq!(
        field(source("    queueName: \"\"\n", "")).as_deref(),
        Some("spec.rabbitmqResourcesConfig.queueName")
    );
    assert_eq!(
        field(source("    queueName: q\n    parallelism: 1001\n", "")).as_deref(),
        Some("spec.rabbitmqResourcesConfig.parallelism")
    );
    assert_eq!(
        field(source(
            "    queueName: q\n",
            "  delivery:\n    deadLetterSink:\n      uri: http://x/\n"
        ))
        .as_deref(),
        Some("spec.delivery.deadLetterSink")
    );
    assert_eq!(
        field(source("    queueName: q\n    queue: typo\n", "")).as_deref(),
        Some("spec.rabbitmqResourcesConfig.queue")
    );
}

#[test]
fn plain_messages_become_rabbitmq_events() {
    let key = ObjectKey::new("ns", "s");
    let origin = event_source(&key, "q");
    assert_eq!(origin, "/apis/v1/namespaces/ns/rabbitmqsources/s#q");
    let properties = BasicProperties::default()
        .with_message_id("m1".into())
        .with_content_type("application/json".into())
        .with_timestamp(1_700_000_000);
    let event =
        message_event(&properties, Bytes::from_static(br#"{"a":1}"#), &origin).expect("event");
    assert_eq!(event.ty(), RABBITMQ_EVENT_TYPE);
    assert_eq!(event.id(), "m1");
    assert_eq!(event.source(), origin);
    assert_eq!(event.datacontenttype(), Some("application/json"));
    assert_eq!(event.attribute("time"), Some("2023-11-14T22:13:20Z"));
    assert_eq!(event.data().map(|d| &d[..]), Some(&br#"{"a":1}"#[..]));
    // Without a message id, each message gets a fresh one.
    let a = message_event(
        &BasicProperties::default(),
        Bytes::from_static(b"x"),
        &origin,
    )
    .expect("event");
    let b = message_event(
        &BasicProperties::default(),
        Bytes::from_static(b"x"),
        &origin,
    )
    .expect("event");
    assert_ne!(a.id(), b.id());
    // A message that claims to be a CloudEvent but is broken is an error.
    let broken =
        BasicProperties::default().with_content_type("application/cloudevents+json".into());
    assert!(message_event(&broken, Bytes::from_static(b"{"), &origin).is_err());
}
