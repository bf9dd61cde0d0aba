//! The RabbitMQBroker and the RabbitmqSource against a real RabbitMQ
//! (127.0.0.1:5672, or PILOTLIGHT_TEST_RABBITMQ_URI): filters bound in
//! RabbitMQ, ordered delivery, dead-letter sink, replies, source mapping, and
//! a RabbitMQ restart under load.
//!
//! Every test uses its own namespace (random suffix) and deletes what it
//! declared. The restart test stops RabbitMQ's app, so it takes the write
//! side of [`RABBIT`] and the others the read side.

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use pilotlight::api::ObjectKey;
use pilotlight::cloudevent::Event;
use pilotlight::eventing::backend::rabbitmq::{binding, exchange_name, queue_name};
use support::{Subscriber, TestServer, request, with_dead_letters};

const WAIT: Duration = Duration::from_secs(20);

/// Tests share one RabbitMQ; the restart test must run alone.
static RABBIT: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

fn rabbit_broker(ns: &str, name: &str, extra: &str) -> String {
    format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: {name}\n  namespace: {ns}\n  annotations:\n    eventing.knative.dev/broker.class: RabbitMQBroker\n{extra}"
    )
}

fn rabbit_trigger(ns: &str, name: &str, broker: &str, subscriber: &str, extra: &str) -> String {
    format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: {name}\n  namespace: {ns}\n{extra}spec:\n  broker: {broker}\n  subscriber:\n    uri: {subscriber}\n"
    )
}

/// A trigger with extra spec (filters, delivery) after `subscriber`.
fn rabbit_trigger_spec(
    ns: &str,
    name: &str,
    broker: &str,
    subscriber: &str,
    annotations: &str,
    spec: &str,
) -> String {
    format!(
        "{}{spec}",
        rabbit_trigger(ns, name, broker, subscriber, annotations)
    )
}

async fn server(addr: &str, files: &[(&str, &str)]) -> TestServer {
    let uri = addr.to_owned();
    TestServer::start_with(files, move |c| c.rabbitmq_uri = Some(uri)).await
}

async fn connect(addr: &str) -> (Connection, Channel) {
    let connection = Connection::connect(addr, ConnectionProperties::default())
        .await
        .expect("connect to RabbitMQ");
    let channel = connection.create_channel().await.expect("channel");
    (connection, channel)
}

/// Messages ready in a queue (not counting unacked ones).
async fn ready_messages(addr: &str, queue: &str) -> u32 {
    let (connection, channel) = connect(addr).await;
    let queue = passive_declare(&channel, queue)
        .await
        .expect("queue exists");
    let _ = connection.close(200, "done".into()).await;
    queue.message_count()
}

/// Declares a queue passively: its counts if it exists, an error if not.
async fn passive_declare(channel: &Channel, queue: &str) -> lapin::Result<lapin::Queue> {
    channel
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

/// Deletes a broker's exchange and its triggers' queues.
async fn cleanup(addr: &str, broker: &ObjectKey, triggers: &[&str]) {
    let queues: Vec<String> = triggers.iter().map(|t| queue_name(broker, t)).collect();
    delete(addr, &queues, &[exchange_name(broker)]).await;
}

/// Deletes queues and exchanges a test declared.
async fn delete(addr: &str, queues: &[String], exchanges: &[String]) {
    let (connection, channel) = connect(addr).await;
    for queue in queues {
        let _ = channel
            .queue_delete(
                ShortString::from(queue.as_str()),
                QueueDeleteOptions::default(),
            )
            .await;
    }
    for exchange in exchanges {
        let _ = channel
            .exchange_delete(
                ShortString::from(exchange.as_str()),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
    let _ = connection.close(200, "done".into()).await;
}

/// Stops the server and checks that nothing is left ready in `queue`: every
/// message was acked, none is redelivered after the stop. The pauses let
/// in-flight acks, then the requeue of unacked messages, reach RabbitMQ.
async fn stop_and_expect_drained(s: TestServer, addr: &str, queue: &str) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.server.shutdown().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        ready_messages(addr, queue).await,
        0,
        "messages left in {queue}"
    );
}

/// Posts a binary-mode event into a broker.
async fn post(url: &str, id: &str, ty: &str) -> StatusCode {
    support::send(url, id, ty).await.status
}

fn ids(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.id().to_owned()).collect()
}

#[tokio::test]
async fn exact_filters_are_bound_in_rabbitmq_and_the_rest_is_filtered_in_pilotlight() {
    let Some(addr) = support::RABBITMQ.address().await else {
        return;
    };
    let _shared = RABBIT.read().await;
    let ns = unique("filters");
    let key = ObjectKey::new(ns.clone(), "events");
    let exact = Subscriber::accepting().await;
    let prefix = Subscriber::accepting().await;
    // The broker reads its RabbitMQ from a RabbitmqBrokerConfig and a Secret,
    // as eventing-rabbitmq does; pilotlight has no default here.
    let config = format!(
        "apiVersion: eventing.knative.dev/v1alpha1\nkind: RabbitmqBrokerConfig\nmetadata:\n  name: rabbit\n  namespace: {ns}\nspec:\n  queueType: quorum\n  rabbitmqClusterReference:\n    connectionSecret:\n      name: rabbit-creds\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: rabbit-creds\n  namespace: {ns}\nstringData:\n  uri: {addr}\n"
    );
    let spec_config = "spec:\n  config:\n    apiVersion: eventing.knative.dev/v1alpha1\n    kind: RabbitmqBrokerConfig\n    name: rabbit\n";
    let files = [
        ("config.yaml", config),
        ("broker.yaml", rabbit_broker(&ns, "events", spec_config)),
        (
            "exact.yaml",
            rabbit_trigger_spec(
                &ns,
                "exact",
                "events",
                &exact.url("/"),
                "",
                "  filter:\n    attributes:\n      type: com.example.order\n      source: /test\n",
            ),
        ),
        (
            "prefix.yaml",
            rabbit_trigger_spec(
                &ns,
                "prefix",
                "events",
                &prefix.url("/"),
                "",
                "  filters:\n    - prefix:\n        type: com.example.pay\n",
            ),
        ),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let s = TestServer::start(&files).await;
    let url = s.broker_url(&ns, "events");
    for (id, ty) in [
        ("1", "com.example.order"),
        ("2", "com.example.payment"),
        ("3", "com.example.other"),
        ("4", "com.example.order"),
    ] {
        assert_eq!(post(&url, id, ty).await, StatusCode::ACCEPTED);
    }
    assert_eq!(ids(&exact.wait_for(2, WAIT).await), ["1", "4"]);
    assert_eq!(ids(&prefix.wait_for(1, WAIT).await), ["2"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!((exact.count(), prefix.count()), (2, 1));
    s.server.shutdown().await;

    // With pilotlight stopped, publish straight to the broker's exchange:
    // RabbitMQ itself routes only the exact match to the exact trigger's
    // queue, and everything to the queue whose filter has no exact part.
    let (connection, channel) = connect(&addr).await;
    for (id, ty) in [("5", "com.example.order"), ("6", "com.example.other")] {
        let event = Event::new(
            [
                ("specversion", "1.0"),
                ("id", id),
                ("source", "/test"),
                ("type", ty),
            ]
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
            None,
        )
        .expect("event");
        let (properties, body) = binding::encode(&event);
        channel
            .basic_publish(
                ShortString::from(exchange_name(&key)),
                ShortString::default(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .expect("publish");
    }
    let _ = connection.close(200, "done".into()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ready_messages(&addr, &queue_name(&key, "exact")).await, 1);
    assert_eq!(ready_messages(&addr, &queue_name(&key, "prefix")).await, 2);
    cleanup(&addr, &key, &["exact", "prefix"]).await;
}

#[tokio::test]
async fn parallelism_one_delivers_in_order_and_more_delivers_concurrently() {
    let Some(addr) = support::RABBITMQ.address().await else {
        return;
    };
    let _shared = RABBIT.read().await;
    let ns = unique("order");
    let key = ObjectKey::new(ns.clone(), "b");
    let ordered = Subscriber::start(
        |_, _| (StatusCode::ACCEPTED, vec![], Bytes::new()),
        Duration::from_millis(5),
    )
    .await;
    let parallel = Subscriber::start(
        |_, _| (StatusCode::ACCEPTED, vec![], Bytes::new()),
        Duration::from_millis(200),
    )
    .await;
    let files = [
        ("broker.yaml", rabbit_broker(&ns, "b", "")),
        (
            "ordered.yaml",
            rabbit_trigger(&ns, "ordered", "b", &ordered.url("/"), ""),
        ),
        (
            "parallel.yaml",
            rabbit_trigger(
                &ns,
                "parallel",
                "b",
                &parallel.url("/"),
                "  annotations:\n    rabbitmq.eventing.knative.dev/parallelism: \"10\"\n",
            ),
        ),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let s = server(&addr, &files).await;
    let url = s.broker_url(&ns, "b");
    let sent: Vec<String> = (0..40).map(|i| format!("e{i:02}")).collect();
    for id in &sent {
        assert_eq!(post(&url, id, "t").await, StatusCode::ACCEPTED);
    }
    assert_eq!(ids(&ordered.wait_for(40, WAIT).await), sent);
    assert_eq!(
        ordered
            .max_in_flight
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    parallel.wait_for(40, WAIT).await;
    let most = parallel
        .max_in_flight
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (2..=10).contains(&most),
        "parallelism 10 gave {most} at once"
    );
    s.server.shutdown().await;
    cleanup(&addr, &key, &["ordered", "parallel"]).await;
}

/// pilotlight acks in batches (one `multiple` ack for a settled run, single
/// acks for deliveries held behind a slow one). Deliveries that finish out of
/// order must all be acked exactly once: a lost ack leaves the message in the
/// queue after the stop, a repeated one makes RabbitMQ close the channel, and
/// the redelivery shows up as a duplicate.
#[tokio::test]
async fn deliveries_finishing_out_of_order_are_each_acked_once() {
    let Some(addr) = support::RABBITMQ.address().await else {
        return;
    };
    let _shared = RABBIT.read().await;
    let ns = unique("acks");
    let key = ObjectKey::new(ns.clone(), "b");
    // 0 to 35 ms, in a scrambled order, so later deliveries often finish first.
    let subscriber = Subscriber::start_with_delays(
        |_, _| (StatusCode::ACCEPTED, vec![], Bytes::new()),
        |index| Duration::from_millis(index as u64 * 7919 % 36),
    )
    .await;
    let files = [
        ("broker.yaml", rabbit_broker(&ns, "b", "")),
        (
            "trigger.yaml",
            rabbit_trigger(
                &ns,
                "t",
                "b",
                &subscriber.url("/"),
                "  annotations:\n    rabbitmq.eventing.knative.dev/parallelism: \"20\"\n",
            ),
        ),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let s = server(&addr, &files).await;
    let url = s.broker_url(&ns, "b");
    let sent: HashSet<String> = (0..300).map(|i| format!("e{i:03}")).collect();
    let posts = sent.iter().map(|id| post(&url, id, "t"));
    for status in futures::future::join_all(posts).await {
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    let received = ids(&subscriber.wait_for(sent.len(), WAIT).await);
    assert_eq!(received.iter().cloned().collect::<HashSet<_>>(), sent);
    stop_and_expect_drained(s, &addr, &queue_name(&key, "t")).await;
    assert_eq!(subscriber.count(), sent.len(), "an event came twice");
    cleanup(&addr, &key, &["t"]).await;
}

/// A Boolean and an Integer extension keep their types through the
/// exchange (whose bindings match on the attribute's text: the exact filter
/// `urgent: "true"` routes both events, the CESQL filter tells them apart).
#[tokio::test]
async fn typed_extensions_keep_their_types_through_the_exchange() {
    let Some(addr) = support::RABBITMQ.address().await else {
        return;
    };
    let _shared = RABBIT.read().await;
    let ns = unique("typed");
    let key = ObjectKey::new(ns.clone(), "b");
    let subscriber = Subscriber::accepting().await;
    let filters = format!(
        "  filter:\n    attributes:\n      urgent: \"true\"\n{}",
        support::TYPED_EXTENSION_FILTER
    );
    let files = [
        ("broker.yaml", rabbit_broker(&ns, "b", "")),
        (
            "t.yaml",
            rabbit_trigger_spec(&ns, "t", "b", &subscriber.url("/"), "", &filters),
        ),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let s = server(&addr, &files).await;
    support::typed_extensions_reach_the_filter(&s.broker_url(&ns, "b"), &subscriber).await;
    stop_and_expect_drained(s, &addr, &queue_name(&key, "t")).await;
    cleanup(&addr, &key, &["t"]).await;
}

#[tokio::test]
async fn failed_events_go_to_the_dead_letter_sink_and_are_acked() {
    let Some(addr) = support::RABBITMQ.address().await else {
        return;
    };
    let _shared = RABBIT.read().await;
    let ns = unique("dls");
    let key = ObjectKey::new(ns.clone(), "b");
    let failing = Subscriber::failing().await;
    let dead = Subscriber::accepting().await;
    let delivery = with_dead_letters(2, &dead.url("/dls"));
    let files = [
        ("broker.yaml", rabbit_broker(&ns, "b", "")),
        (
            "t.yaml",
            rabbit_trigger_spec(&ns, "t", "b", &failing.url("/"), "", &delivery),
        ),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let s = server(&addr, &files).await;
    assert_eq!(
        post(&s.broker_url(&ns, "b"), "x1", "t").await,
        StatusCode::ACCEPTED
    );
    let got = dead.wait_for(1, WAIT).await;
    assert_eq!(failing.count(), 3, "the first try and two retries");
    assert_eq!(got[0].id(), "x1");
    assert_eq!(got[0].attribute("knativeerrorcode"), Some("500"));
    assert_eq!(
        got[0].attribute("knativeerrordest"),
        Some(failing.url("/").as_str())
    );
    assert!(got[0].attribute("knativeerrordata").is_some());
    // Acked once dead-lettered: nothing is left to redeliver after a stop.
    stop_and_expect_drained(s, &addr, &queue_name(&key, "t")).await;
    cleanup(&addr, &key, &["t"]).await;
}

#[tokio::test]
async fn replies_re_enter_the_broker() {
    let Some(addr) = support::RABBITMQ.address().await else {
        return;
    };
    let _shared = RABBIT.read().await;
    let ns = unique("reply");
    let key = ObjectKey::new(ns.clone(), "b");
    let replier = Subscriber::replying(|_| Bytes::from("answer")).await;
    let replies = Subscriber::accepting().await;
    let files = [
        ("broker.yaml", rabbit_broker(&ns, "b", "")),
        (
            "ask.yaml",
            rabbit_trigger_spec(
                &ns,
                "ask",
                "b",
                &replier.url("/"),
                "",
                "  filter:\n    attributes:\n      type: question\n",
            ),
        ),
        (
            "answers.yaml",
            rabbit_trigger_spec(
                &ns,
                "answers",
                "b",
                &replies.url("/"),
                "",
                "  filter:\n    attributes:\n      type: reply\n",
            ),
        ),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let s = server(&addr, &files).await;
    assert_eq!(
        post(&s.broker_url(&ns, "b"), "q1", "question").await,
        StatusCode::ACCEPTED
    );
    let got = replies.wait_for(1, WAIT).await;
    assert_eq!(got[0].id(), "reply-q1");
    assert_eq!(got[0].datacontenttype(), Some("text/plain"));
    assert_eq!(got[0].data().map(|d| &d[..]), Some(&b"answer"[..]));
    assert!(got[0].attribute("knativearrivaltime").is_some());
    assert_eq!(replier.count(), 1);
    s.server.shutdown().await;
    cleanup(&addr, &key, &["ask", "answers"]).await;
}

/// AMQP carries an event's attributes in one frame of at most `frame_max`
/// bytes (128 KiB by default) and RabbitMQ closes the connection on a
/// bigger one: such an event is 413 before it is published, and the
/// broker's connection keeps working for the next one.
#[tokio::test]
async fn attributes_over_the_amqp_frame_are_413_and_the_broker_goes_on() {
    let Some(addr) = support::RABBITMQ.address().await else {
        return;
    };
    let _shared = RABBIT.read().await;
    let ns = unique("frame");
    let key = ObjectKey::new(ns.clone(), "b");
    let subscriber = Subscriber::accepting().await;
    let files = [
        ("broker.yaml", rabbit_broker(&ns, "b", "")),
        (
            "t.yaml",
            rabbit_trigger(&ns, "t", "b", &subscriber.url("/"), ""),
        ),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let s = server(&addr, &files).await;
    let url = s.broker_url(&ns, "b");
    let big = serde_json::json!({
        "specversion": "1.0", "id": "big", "source": "/t", "type": "t",
        "bigext": "x".repeat(200 * 1024),
    });
    let refused = request(
        Method::POST,
        &url,
        &[("content-type", "application/cloudevents+json")],
        big.to_string(),
    )
    .await;
    assert_eq!(
        refused.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        refused.body
    );
    assert!(refused.body.contains("frame_max"), "{}", refused.body);
    assert_eq!(post(&url, "small", "t").await, StatusCode::ACCEPTED);
    let got = subscriber.wait_for(1, WAIT).await;
    assert_eq!(ids(&got), ["small"]);
    s.server.shutdown().await;
    cleanup(&addr, &key, &["t"]).await;
}

#[tokio::test]
async fn a_rabbitmq_broker_without_a_rabbitmq_is_not_ready_and_says_why() {
    // No RabbitMQ needed: nothing tells pilotlight where one is.
    let broker = rabbit_broker("default", "b", "");
    let s = TestServer::start(&[("broker.yaml", &broker)]).await;
    let reply = request(Method::GET, &s.admin_url("/api/v1/brokers"), &[], "").await;
    assert!(
        reply.body.contains("BrokerConfigInvalid") && reply.body.contains("--rabbitmq-uri"),
        "{}",
        reply.body
    );
    let post = support::send(&s.broker_url("default", "b"), "1", "t").await;
    assert_eq!(post.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(post.body.contains("RabbitmqBrokerConfig"), "{}", post.body);
}

/// A RabbitMQ that refuses connections does not hold up the start (the
/// broker waits for the first attempt, not for the full first-connect
/// timeout): the broker serves at once, with 503 and the reason.
#[tokio::test]
async fn a_refused_rabbitmq_does_not_hold_up_the_start() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let files = [
        ("one.yaml", rabbit_broker("default", "one", "")),
        ("two.yaml", rabbit_broker("default", "two", "")),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let started = Instant::now();
    let s = TestServer::start_with(&files, |config| {
        config.rabbitmq_uri = Some(format!("amqp://guest:guest@127.0.0.1:{port}/%2f"));
    })
    .await;
    // Two brokers, each once waiting 5 s for its first connection.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "start took {:?}",
        started.elapsed()
    );
    let post = support::send(&s.broker_url("default", "one"), "1", "t").await;
    assert_eq!(post.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        post.body.contains("cannot connect to RabbitMQ"),
        "{}",
        post.body
    );
    s.server.shutdown().await;
}

/// Publishes raw messages to an exchange with confirms.
async fn publish_raw(channel: &Channel, exchange: &str, messages: Vec<(BasicProperties, Vec<u8>)>) {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    for (properties, body) in messages {
        channel
            .basic_publish(
                ShortString::from(exchange),
                ShortString::default(),
                BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("confirmed");
    }
}

#[tokio::test]
async fn the_source_passes_cloudevents_through_and_wraps_other_messages() {
    let Some(addr) = support::RABBITMQ.address().await else {
        return;
    };
    let _shared = RABBIT.read().await;
    let ns = unique("source");
    let queue = format!("{ns}-queue");
    let exchange = format!("{ns}-exchange");
    let sink = Subscriber::accepting().await;
    let source = format!(
        "apiVersion: sources.knative.dev/v1alpha1\nkind: RabbitmqSource\nmetadata:\n  name: orders\n  namespace: {ns}\nspec:\n  rabbitmqClusterReference:\n    connectionSecret:\n      name: creds\n  rabbitmqResourcesConfig:\n    queueName: {queue}\n    exchangeName: {exchange}\n    parallelism: 1\n  delivery:\n    retry: 3\n    backoffDelay: PT0.01S\n  sink:\n    uri: {}\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\n  namespace: {ns}\nstringData:\n  uri: {addr}\n",
        sink.url("/")
    );
    let s = TestServer::start(&[("source.yaml", &source)]).await;
    // The source declares its queue and exchange once it runs.
    let deadline = Instant::now() + WAIT;
    loop {
        let list = request(Method::GET, &s.admin_url("/api/v1/sources"), &[], "").await;
        let body: serde_json::Value = serde_json::from_str(&list.body).expect("json");
        let ready = body["items"][0]["status"]["conditions"]
            .as_array()
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "source not ready: {}", list.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut headers = FieldTable::default();
    for (name, value) in [
        ("cloudEvents:specversion", "1.0"),
        ("cloudEvents:id", "ce-1"),
        ("cloudEvents:source", "/orders"),
        ("cloudEvents:type", "order.created"),
    ] {
        headers.insert(
            ShortString::from(name),
            AMQPValue::LongString(LongString::from(value)),
        );
    }
    let binary = (
        BasicProperties::default()
            .with_headers(headers)
            .with_content_type("application/json".into()),
        br#"{"n":1}"#.to_vec(),
    );
    let structured = (
        BasicProperties::default().with_content_type("application/cloudevents+json".into()),
        br#"{"specversion":"1.0","id":"ce-2","source":"/orders","type":"order.paid","data":{"n":2}}"#
            .to_vec(),
    );
    let plain = (
        BasicProperties::default()
            .with_content_type("text/plain".into())
            .with_message_id("m-3".into()),
        b"hello".to_vec(),
    );
    let (connection, channel) = connect(&addr).await;
    publish_raw(&channel, &exchange, vec![binary, structured, plain]).await;
    let got = sink.wait_for(3, WAIT).await;
    assert_eq!(
        ids(&got),
        ["ce-1", "ce-2", "m-3"],
        "in order with parallelism 1"
    );
    assert_eq!(
        (got[0].ty(), got[0].source(), got[0].datacontenttype()),
        ("order.created", "/orders", Some("application/json"))
    );
    assert_eq!(got[0].data().map(|d| &d[..]), Some(&br#"{"n":1}"#[..]));
    assert_eq!(got[1].ty(), "order.paid");
    assert_eq!(got[1].data().map(|d| &d[..]), Some(&br#"{"n":2}"#[..]));
    assert_eq!(got[2].ty(), "dev.knative.rabbitmq.event");
    assert_eq!(
        got[2].source(),
        format!("/apis/v1/namespaces/{ns}/rabbitmqsources/orders#{queue}")
    );
    assert_eq!(got[2].datacontenttype(), Some("text/plain"));
    assert_eq!(got[2].data().map(|d| &d[..]), Some(&b"hello"[..]));
    // Acked after the sink accepted: the queue is empty once the source stops.
    stop_and_expect_drained(s, &addr, &queue).await;
    delete(&addr, &[queue], &[exchange]).await;
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test]
async fn the_source_leaves_a_message_queued_until_the_sink_accepts_it() {
    let Some(addr) = support::RABBITMQ.address().await else {
        return;
    };
    let _shared = RABBIT.read().await;
    let ns = unique("srcretry");
    let queue = format!("{ns}-queue");
    // The sink refuses the first three tries; the source retries (spec.delivery).
    let sink = Subscriber::start(
        |_, n| {
            if n < 3 {
                (StatusCode::SERVICE_UNAVAILABLE, vec![], Bytes::new())
            } else {
                (StatusCode::ACCEPTED, vec![], Bytes::new())
            }
        },
        Duration::ZERO,
    )
    .await;
    let source = format!(
        "apiVersion: sources.knative.dev/v1alpha1\nkind: RabbitmqSource\nmetadata:\n  name: retry\n  namespace: {ns}\nspec:\n  rabbitmqResourcesConfig:\n    queueName: {queue}\n  delivery:\n    retry: 5\n    backoffDelay: PT0.05S\n  sink:\n    uri: {}\n",
        sink.url("/")
    );
    let (connection, channel) = connect(&addr).await;
    channel
        .queue_declare(
            ShortString::from(queue.as_str()),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare");
    // The default exchange routes by queue name.
    channel
        .basic_publish(
            ShortString::default(),
            ShortString::from(queue.as_str()),
            BasicPublishOptions::default(),
            b"payload",
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    let s = server(&addr, &[("source.yaml", &source)]).await;
    sink.wait_for(4, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.count(), 4, "three refusals, then accepted once");
    stop_and_expect_drained(s, &addr, &queue).await;
    delete(&addr, &[queue], &[]).await;
    let _ = connection.close(200, "done".into()).await;
}

/// Runs `rabbitmqctl` with the given arguments; its output, or `Err` when
/// it cannot.
fn rabbitmqctl(args: &[&str]) -> Result<String, String> {
    let output = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run rabbitmqctl: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "rabbitmqctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Whether rabbitmqctl manages the RabbitMQ at `addr`, which a test needs
/// for `what`. Under `CI=true` it must; elsewhere the test is skipped after
/// saying why.
fn rabbitmqctl_works(addr: &str, what: &str) -> bool {
    let Err(e) = rabbitmqctl(&["await_startup"]) else {
        return true;
    };
    let message = format!("{what} needs rabbitmqctl for the RabbitMQ at {addr}: {e}");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message}");
    }
    eprintln!("skipping: {message}");
    false
}

/// Starts RabbitMQ's app again however the test ends.
struct StartAppAgain;

impl Drop for StartAppAgain {
    fn drop(&mut self) {
        if let Err(e) = rabbitmqctl(&["start_app"]) {
            eprintln!("could not start RabbitMQ again: {e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_restart_under_load_loses_no_accepted_event() {
    let Some(addr) = support::RABBITMQ.address().await else {
        return;
    };
    let _alone = RABBIT.write().await;
    if !rabbitmqctl_works(&addr, "the restart test") {
        return;
    }
    let ns = unique("restart");
    let key = ObjectKey::new(ns.clone(), "b");
    let sub = Subscriber::accepting().await;
    let files = [
        ("broker.yaml", rabbit_broker(&ns, "b", "")),
        (
            "t.yaml",
            rabbit_trigger(
                &ns,
                "t",
                "b",
                &sub.url("/"),
                "  annotations:\n    rabbitmq.eventing.knative.dev/parallelism: \"20\"\n",
            ),
        ),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let s = server(&addr, &files).await;
    let url = s.broker_url(&ns, "b");

    // Four clients send until told to stop, recording every answer.
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let statuses = Arc::new(Mutex::new(Vec::<(Instant, StatusCode)>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..4 {
        let (url, accepted, statuses, stop) = (
            url.clone(),
            accepted.clone(),
            statuses.clone(),
            stop.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let id = format!("c{client}-{n}");
                n += 1;
                let status = post(&url, &id, "load").await;
                statuses.lock().unwrap().push((Instant::now(), status));
                if status == StatusCode::ACCEPTED {
                    accepted.lock().unwrap().push(id);
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restarted;
    {
        let _guard = StartAppAgain;
        rabbitmqctl(&["stop_app"]).expect("stop_app");
        tokio::time::sleep(Duration::from_secs(2)).await;
        restarted = Instant::now();
        // `_guard` starts the app here, and on any panic above.
    }
    // Load continues until the ingress has accepted again for a while.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let back = statuses
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, s)| *at > restarted && *s == StatusCode::ACCEPTED)
            .count();
        if back >= 50 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ingress did not accept again after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for client in clients {
        client.await.unwrap();
    }
    let statuses = statuses.lock().unwrap().clone();
    let unavailable = statuses
        .iter()
        .filter(|(_, s)| *s == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    let others: Vec<_> = statuses
        .iter()
        .filter(|(_, s)| *s != StatusCode::SERVICE_UNAVAILABLE && *s != StatusCode::ACCEPTED)
        .collect();
    assert!(
        unavailable > 0,
        "the ingress answered 503 while RabbitMQ was down"
    );
    assert!(others.is_empty(), "only 202 or 503: {others:?}");

    // Every accepted event arrives at least once.
    let accepted: HashSet<String> = accepted.lock().unwrap().iter().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let delivered: HashSet<String> = ids(&sub.events()).into_iter().collect();
        let missing: Vec<_> = accepted.difference(&delivered).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} accepted events never arrived, e.g. {:?}",
            missing.len(),
            accepted.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "restart: {} accepted, {} answered 503 during the outage, {} deliveries",
        accepted.len(),
        unavailable,
        sub.count()
    );
    s.server.shutdown().await;
    cleanup(&addr, &key, &["t"]).await;
}

/// Whether a queue (or, with `exchange`, an exchange) exists: a passive
/// declaration on a fresh channel.
async fn exists(addr: &str, name: &str, exchange: bool) -> bool {
    let (connection, channel) = connect(addr).await;
    let found = if exchange {
        channel
            .exchange_declare(
                ShortString::from(name),
                lapin::ExchangeKind::Headers,
                lapin::options::ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .is_ok()
    } else {
        passive_declare(&channel, name).await.is_ok()
    };
    let _ = connection.close(200, "done".into()).await;
    found
}

async fn wait_until_gone(addr: &str, name: &str, exchange: bool) {
    let deadline = Instant::now() + WAIT;
    while exists(addr, name, exchange).await {
        assert!(Instant::now() < deadline, "{name} was not deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn deleting_a_trigger_deletes_its_queue_and_deleting_the_broker_its_exchange() {
    let Some(addr) = support::RABBITMQ.address().await else {
        return;
    };
    let _shared = RABBIT.read().await;
    let ns = unique("delete");
    let key = ObjectKey::new(ns.clone(), "b");
    let sub = Subscriber::accepting().await;
    let broker = rabbit_broker(&ns, "b", "");
    let keep = rabbit_trigger(&ns, "keep", "b", &sub.url("/"), "");
    let gone = rabbit_trigger(&ns, "gone", "b", &sub.url("/"), "");
    let uri = addr.clone();
    let s = TestServer::start_with(
        &[
            ("broker.yaml", &broker),
            ("keep.yaml", &keep),
            ("gone.yaml", &gone),
        ],
        move |c| {
            c.rabbitmq_uri = Some(uri);
            c.watch = true;
        },
    )
    .await;
    let (keep_queue, gone_queue) = (queue_name(&key, "keep"), queue_name(&key, "gone"));
    assert!(exists(&addr, &gone_queue, false).await);
    std::fs::remove_file(s.manifests.join("gone.yaml")).expect("remove trigger");
    wait_until_gone(&addr, &gone_queue, false).await;
    assert!(
        exists(&addr, &keep_queue, false).await,
        "the other trigger keeps its queue"
    );
    std::fs::remove_file(s.manifests.join("broker.yaml")).expect("remove broker");
    wait_until_gone(&addr, &exchange_name(&key), true).await;
    wait_until_gone(&addr, &keep_queue, false).await;
    s.server.shutdown().await;
    cleanup(&addr, &key, &["keep", "gone"]).await;
}

// --- Status that tells the truth: RabbitMQ's refusals show in the Ready
// condition, and the object is Ready once RabbitMQ lets it in.

/// `addr` with its path (the vhost) replaced by `path`.
fn with_path(addr: &str, path: &str) -> String {
    let (scheme, rest) = addr.split_once("://").expect("an AMQP URI");
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    format!("{scheme}://{authority}{path}")
}

/// The user of `addr` (guest for the default).
fn user_of(addr: &str) -> String {
    let rest = addr.split_once("://").map_or(addr, |(_, rest)| rest);
    match rest.split('/').next().unwrap_or(rest).rsplit_once('@') {
        Some((userinfo, _)) => userinfo.split(':').next().unwrap_or("guest").to_owned(),
        None => "guest".to_owned(),
    }
}

/// `addr` with `password` for its user, and no path (the default vhost).
fn with_password(addr: &str, password: &str) -> String {
    let (scheme, rest) = addr.split_once("://").expect("an AMQP URI");
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    format!("{scheme}://{}:{password}@{host}", user_of(addr))
}

/// A vhost the test creates for `user`, deleted (with everything in it)
/// however the test ends.
struct Vhost(String);

impl Vhost {
    fn create(name: &str, user: &str) -> Vhost {
        let vhost = Vhost(name.to_owned());
        rabbitmqctl(&["add_vhost", name]).expect("add_vhost");
        rabbitmqctl(&["set_permissions", "-p", name, user, ".*", ".*", ".*"])
            .expect("set_permissions");
        vhost
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        if let Err(e) = rabbitmqctl(&["delete_vhost", &self.0]) {
            eprintln!("could not delete vhost {}: {e}", self.0);
        }
    }
}

#[tokio::test]
async fn a_broker_whose_vhost_does_not_exist_is_not_ready_with_rabbitmqs_reason_until_it_does() {
    let Some(addr) = support::RABBITMQ.address().await else {
        return;
    };
    let _shared = RABBIT.read().await;
    if !rabbitmqctl_works(&addr, "creating a vhost") {
        return;
    }
    let ns = unique("novhost");
    let vhost = unique("pilotlight-test");
    let trigger = rabbit_trigger(&ns, "t", "b", "http://127.0.0.1:1/", "");
    let s = server(
        &with_path(&addr, &format!("/{vhost}")),
        &[
            ("broker.yaml", &rabbit_broker(&ns, "b", "")),
            ("trigger.yaml", &trigger),
        ],
    )
    .await;
    // RabbitMQ's own words: "NOT_ALLOWED - vhost pilotlight-test-… not found".
    let refused = s
        .wait_ready_condition(
            "brokers",
            "b",
            "False",
            &[
                "BackendUnavailable",
                "NOT_ALLOWED",
                &vhost,
                "rabbitmqctl add_vhost",
            ],
            WAIT,
        )
        .await;
    assert!(
        !refused["message"].to_string().contains(":guest@"),
        "password hidden: {refused}"
    );
    // Its trigger delivers nothing meanwhile, and says why (as Knative's).
    s.wait_ready_condition(
        "triggers",
        "t",
        "False",
        &["BrokerNotReady", "NOT_ALLOWED"],
        WAIT,
    )
    .await;
    let url = s.broker_url(&ns, "b");
    assert_eq!(
        post(&url, "early", "t").await,
        StatusCode::SERVICE_UNAVAILABLE
    );

    // Neither a restart nor an apply: the broker reconnects by itself.
    let _vhost = Vhost::create(&vhost, &user_of(&addr));
    s.wait_ready_condition("brokers", "b", "True", &[], WAIT)
        .await;
    s.wait_ready_condition("triggers", "t", "True", &[], WAIT)
        .await;
    support::wait_accepted(&url, "late", WAIT).await;
    s.server.shutdown().await;
}

/// A RabbitmqBrokerConfig whose Secret holds `uri`.
fn broker_config(ns: &str, uri: &str) -> String {
    format!(
        "apiVersion: eventing.knative.dev/v1alpha1\nkind: RabbitmqBrokerConfig\nmetadata:\n  name: rabbit\n  namespace: {ns}\nspec:\n  queueType: classic\n  rabbitmqClusterReference:\n    connectionSecret:\n      name: rabbit-creds\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: rabbit-creds\n  namespace: {ns}\nstringData:\n  uri: {uri}\n"
    )
}

#[tokio::test]
async fn a_broker_refused_for_its_credentials_says_so_and_is_ready_once_the_secret_is_fixed() {
    let Some(addr) = support::RABBITMQ.address().await else {
        return;
    };
    let _shared = RABBIT.read().await;
    let ns = unique("badcreds");
    let key = ObjectKey::new(ns.clone(), "b");
    let spec_config = "spec:\n  config:\n    apiVersion: eventing.knative.dev/v1alpha1\n    kind: RabbitmqBrokerConfig\n    name: rabbit\n";
    let files = [
        (
            "config.yaml",
            broker_config(&ns, &with_password(&addr, "not-the-password")),
        ),
        ("broker.yaml", rabbit_broker(&ns, "b", spec_config)),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let s = TestServer::start(&files).await;
    let refused = s
        .wait_ready_condition(
            "brokers",
            "b",
            "False",
            &[
                "BackendUnavailable",
                "ACCESS_REFUSED",
                "username and password",
            ],
            WAIT,
        )
        .await;
    assert!(
        !refused["message"].to_string().contains("not-the-password"),
        "password hidden: {refused}"
    );

    // Fixed, in the form RabbitMQ's tutorials write: a trailing slash for
    // the default vhost.
    let fixed = with_path(&addr, "/");
    assert!(fixed.ends_with(":5672/") || fixed.ends_with('/'), "{fixed}");
    std::fs::write(s.manifests.join("config.yaml"), broker_config(&ns, &fixed))
        .expect("write config");
    s.reapply().await;
    s.wait_ready_condition("brokers", "b", "True", &[], WAIT)
        .await;
    support::wait_accepted(&s.broker_url(&ns, "b"), "1", WAIT).await;
    s.server.shutdown().await;
    cleanup(&addr, &key, &[]).await;
}

#[tokio::test]
async fn a_trailing_slash_uri_is_the_default_vhost_for_broker_and_source() {
    let Some(addr) = support::RABBITMQ.address().await else {
        return;
    };
    let _shared = RABBIT.read().await;
    let trailing = with_path(&addr, "/");
    let ns = unique("slash");
    let key = ObjectKey::new(ns.clone(), "b");
    let queue = format!("{ns}-queue");
    let sub = Subscriber::accepting().await;
    let sink = Subscriber::accepting().await;
    // The broker reads --rabbitmq-uri; the source its Secret.
    let source = format!(
        "apiVersion: sources.knative.dev/v1alpha1\nkind: RabbitmqSource\nmetadata:\n  name: slash\n  namespace: {ns}\nspec:\n  rabbitmqClusterReference:\n    connectionSecret:\n      name: creds\n  rabbitmqResourcesConfig:\n    queueName: {queue}\n  sink:\n    uri: {}\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\n  namespace: {ns}\nstringData:\n  uri: {trailing}\n",
        sink.url("/")
    );
    let files = [
        ("broker.yaml", rabbit_broker(&ns, "b", "")),
        ("t.yaml", rabbit_trigger(&ns, "t", "b", &sub.url("/"), "")),
        ("source.yaml", source),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let s = server(&trailing, &files).await;
    s.wait_ready_condition("brokers", "b", "True", &[], WAIT)
        .await;
    s.wait_ready_condition("sources", "slash", "True", &[], WAIT)
        .await;
    support::wait_accepted(&s.broker_url(&ns, "b"), "via-broker", WAIT).await;
    assert_eq!(ids(&sub.wait_for(1, WAIT).await), ["via-broker"]);
    // The source's queue is in the default vhost, where `addr` publishes.
    let (connection, channel) = connect(&addr).await;
    channel
        .basic_publish(
            ShortString::default(),
            ShortString::from(queue.as_str()),
            BasicPublishOptions::default(),
            b"hello",
            BasicProperties::default().with_message_id("via-source".into()),
        )
        .await
        .expect("publish");
    assert_eq!(ids(&sink.wait_for(1, WAIT).await), ["via-source"]);
    s.server.shutdown().await;
    cleanup(&addr, &key, &["t"]).await;
    delete(&addr, &[queue], &[]).await;
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test]
async fn a_source_whose_vhost_does_not_exist_is_not_ready_with_rabbitmqs_reason_until_it_does() {
    let Some(addr) = support::RABBITMQ.address().await else {
        return;
    };
    let _shared = RABBIT.read().await;
    if !rabbitmqctl_works(&addr, "creating a vhost") {
        return;
    }
    let ns = unique("srcvhost");
    let vhost = unique("pilotlight-test");
    let queue = format!("{ns}-queue");
    let sink = Subscriber::accepting().await;
    let source = format!(
        "apiVersion: sources.knative.dev/v1alpha1\nkind: RabbitmqSource\nmetadata:\n  name: orders\n  namespace: {ns}\nspec:\n  rabbitmqResourcesConfig:\n    queueName: {queue}\n    vhost: {vhost}\n  sink:\n    uri: {}\n",
        sink.url("/")
    );
    let s = server(&addr, &[("source.yaml", &source)]).await;
    s.wait_ready_condition(
        "sources",
        "orders",
        "False",
        &["RabbitmqUnavailable", "NOT_ALLOWED", &vhost],
        WAIT,
    )
    .await;

    let _vhost = Vhost::create(&vhost, &user_of(&addr));
    s.wait_ready_condition("sources", "orders", "True", &[], WAIT)
        .await;
    let (connection, channel) = connect(&with_path(&addr, &format!("/{vhost}"))).await;
    channel
        .basic_publish(
            ShortString::default(),
            ShortString::from(queue.as_str()),
            BasicPublishOptions::default(),
            b"hello",
            BasicProperties::default().with_message_id("in-vhost".into()),
        )
        .await
        .expect("publish");
    assert_eq!(ids(&sink.wait_for(1, WAIT).await), ["in-vhost"]);
    let _ = connection.close(200, "done".into()).await;
    s.server.shutdown().await;
}

#[tokio::test]
async fn a_dropped_connection_that_comes_back_at_once_does_not_flap_the_broker_status() {
    let Some(addr) = support::RABBITMQ.address().await else {
        return;
    };
    let _shared = RABBIT.read().await;
    if !rabbitmqctl_works(&addr, "closing a vhost's connections") {
        return;
    }
    // A vhost of its own, so that closing its connections touches no other test.
    let vhost = unique("pilotlight-flap");
    let _vhost = Vhost::create(&vhost, &user_of(&addr));
    let ns = unique("flap");
    let s = server(
        &with_path(&addr, &format!("/{vhost}")),
        &[("broker.yaml", &rabbit_broker(&ns, "b", ""))],
    )
    .await;
    s.wait_ready_condition("brokers", "b", "True", &[], WAIT)
        .await;
    let closed = rabbitmqctl(&[
        "close_all_connections",
        "--vhost",
        &vhost,
        "pilotlight test",
    ])
    .expect("close_all_connections");
    assert!(!closed.contains("Closed 0"), "nothing was closed: {closed}");
    // The broker reconnects within a fraction of a second: its status never
    // leaves Ready meanwhile.
    let watching = Instant::now();
    while watching.elapsed() < Duration::from_secs(3) {
        let condition = s.ready_condition("brokers", "b").await;
        assert_eq!(condition["status"], "True", "flapped: {condition}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    support::wait_accepted(&s.broker_url(&ns, "b"), "after", WAIT).await;
    s.server.shutdown().await;
}
