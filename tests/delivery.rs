//! Trigger delivery over real HTTP: filters, retries, dead-letter sinks,
//! Retry-After, replies and ordered delivery.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::StatusCode;
use support::{Subscriber, TestServer, broker, send, trigger, with_dead_letters};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn events_reach_matching_subscribers_unchanged() {
    let orders = Subscriber::accepting().await;
    let everything = Subscriber::accepting().await;
    let s = TestServer::start(&[
        ("broker.yaml", &broker("default", "")),
        (
            "orders.yaml",
            &trigger(
                "orders",
                "default",
                &orders.url("/orders"),
                "  filter:\n    attributes:\n      type: order.created\n",
            ),
        ),
        (
            "all.yaml",
            &trigger("all", "default", &everything.url("/"), ""),
        ),
    ])
    .await;
    let url = s.broker_url("default", "default");
    for (id, ty) in [
        ("1", "order.created"),
        ("2", "other"),
        ("3", "order.created"),
    ] {
        assert_eq!(send(&url, id, ty).await.status, StatusCode::ACCEPTED);
    }
    let got = orders.wait_for(2, WAIT).await;
    everything.wait_for(3, WAIT).await;
    let mut ids: Vec<_> = got.iter().map(|e| e.id().to_owned()).collect();
    ids.sort();
    assert_eq!(ids, ["1", "3"]);
    let first = got.iter().find(|e| e.id() == "1").expect("event 1");
    assert_eq!(first.source(), "/test");
    assert_eq!(first.datacontenttype(), Some("application/json"));
    assert_eq!(first.data().map(|d| &d[..]), Some(&b"{\"id\":\"1\"}"[..]));
    assert!(first.attribute("knativearrivaltime").is_some());
    let prefer = orders.received.lock().expect("lock")[0].headers["prefer"].clone();
    assert_eq!(prefer, "reply");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        orders.count(),
        2,
        "the non-matching event must not be delivered"
    );
    s.server.shutdown().await;
}

#[tokio::test]
async fn retries_then_dead_letter_sink_with_knative_extensions() {
    let failing = Subscriber::failing().await;
    let dls = Subscriber::accepting().await;
    let delivery = with_dead_letters(2, &dls.url("/dead"));
    let s = TestServer::start(&[
        ("broker.yaml", &broker("default", "")),
        (
            "t.yaml",
            &trigger("t", "default", &failing.url("/sub"), &delivery),
        ),
    ])
    .await;
    send(&s.broker_url("default", "default"), "e1", "t").await;
    let dead = dls.wait_for(1, WAIT).await;
    assert_eq!(failing.count(), 3, "one attempt and two retries");
    let e = &dead[0];
    assert_eq!(e.id(), "e1");
    assert_eq!(e.attribute("knativeerrorcode"), Some("500"));
    assert_eq!(
        e.attribute("knativeerrordest"),
        Some(failing.url("/sub").as_str())
    );
    let data = base64::engine::general_purpose::STANDARD
        .decode(e.attribute("knativeerrordata").expect("data"))
        .expect("base64");
    assert_eq!(data, b"boom");
    s.server.shutdown().await;
}

#[tokio::test]
async fn other_4xx_are_not_retried() {
    let rejecting = Subscriber::start(
        |_, _| (StatusCode::BAD_REQUEST, vec![], Bytes::new()),
        Duration::ZERO,
    )
    .await;
    let dls = Subscriber::accepting().await;
    let broker_delivery = format!(
        "spec:\n  delivery:\n    retry: 5\n    backoffDelay: PT0.01S\n    deadLetterSink:\n      uri: {}\n",
        dls.url("/")
    );
    let s = TestServer::start(&[
        ("broker.yaml", &broker("default", &broker_delivery)),
        ("t.yaml", &trigger("t", "default", &rejecting.url("/"), "")),
    ])
    .await;
    send(&s.broker_url("default", "default"), "e1", "t").await;
    let dead = dls.wait_for(1, WAIT).await;
    assert_eq!(dead[0].attribute("knativeerrorcode"), Some("400"));
    assert_eq!(
        rejecting.count(),
        1,
        "a 400 is final: the broker's delivery applies, without retries"
    );
    s.server.shutdown().await;
}

#[tokio::test]
async fn network_errors_are_retried_and_dead_lettered_as_500() {
    // A port nobody listens on: port 1 (tcpmux), below the range tests bind.
    // A freed ephemeral port was reused by a parallel test's subscriber,
    // which then accepted the event instead of refusing the connection.
    let port = 1;
    let dls = Subscriber::accepting().await;
    let delivery = with_dead_letters(1, &dls.url("/"));
    let s = TestServer::start(&[
        ("broker.yaml", &broker("default", "")),
        (
            "t.yaml",
            &trigger(
                "t",
                "default",
                &format!("http://127.0.0.1:{port}/"),
                &delivery,
            ),
        ),
    ])
    .await;
    send(&s.broker_url("default", "default"), "e1", "t").await;
    let dead = dls.wait_for(1, WAIT).await;
    assert_eq!(dead[0].attribute("knativeerrorcode"), Some("500"));
    let data = base64::engine::general_purpose::STANDARD
        .decode(dead[0].attribute("knativeerrordata").expect("data"))
        .expect("base64");
    assert!(
        String::from_utf8_lossy(&data).starts_with("dispatch error"),
        "{}",
        String::from_utf8_lossy(&data)
    );
    s.server.shutdown().await;
}

#[tokio::test]
async fn retry_after_is_honoured_up_to_retry_after_max() {
    let busy = Subscriber::start(
        |_, n| match n {
            0 => (
                StatusCode::TOO_MANY_REQUESTS,
                vec![("retry-after", "1".into())],
                Bytes::new(),
            ),
            1 => (
                StatusCode::SERVICE_UNAVAILABLE,
                vec![("retry-after", "30".into())],
                Bytes::new(),
            ),
            _ => (StatusCode::ACCEPTED, vec![], Bytes::new()),
        },
        Duration::ZERO,
    )
    .await;
    let delivery =
        "  delivery:\n    retry: 3\n    backoffDelay: PT0.01S\n    retryAfterMax: PT0.3S\n";
    let s = TestServer::start(&[
        ("broker.yaml", &broker("default", "")),
        ("t.yaml", &trigger("t", "default", &busy.url("/"), delivery)),
    ])
    .await;
    send(&s.broker_url("default", "default"), "e1", "t").await;
    busy.wait_for(3, WAIT).await;
    let times: Vec<_> = busy
        .received
        .lock()
        .expect("lock")
        .iter()
        .map(|r| r.at)
        .collect();
    let first_gap = times[1] - times[0];
    let second_gap = times[2] - times[1];
    assert!(
        first_gap >= Duration::from_millis(290),
        "Retry-After: 1 capped at 0.3 s, waited {first_gap:?}"
    );
    assert!(
        second_gap < Duration::from_secs(5),
        "Retry-After: 30 capped at 0.3 s, waited {second_gap:?}"
    );
    s.server.shutdown().await;
}

#[tokio::test]
async fn replies_re_enter_the_broker() {
    let replier = Subscriber::replying(|_| Bytes::from("thanks")).await;
    let replies = Subscriber::accepting().await;
    let s = TestServer::start(&[
        ("broker.yaml", &broker("default", "")),
        (
            "ask.yaml",
            &trigger(
                "ask",
                "default",
                &replier.url("/"),
                "  filter:\n    attributes:\n      type: ask\n",
            ),
        ),
        (
            "answers.yaml",
            &trigger(
                "answers",
                "default",
                &replies.url("/"),
                "  filter:\n    attributes:\n      type: reply\n",
            ),
        ),
    ])
    .await;
    send(&s.broker_url("default", "default"), "q1", "ask").await;
    let got = replies.wait_for(1, WAIT).await;
    assert_eq!(got[0].id(), "reply-q1");
    assert_eq!(got[0].source(), "/replier");
    assert_eq!(got[0].data().map(|d| &d[..]), Some(&b"thanks"[..]));
    assert!(got[0].attribute("knativearrivaltime").is_some());
    s.server.shutdown().await;
}

#[tokio::test]
async fn a_malformed_reply_counts_as_a_failure() {
    let bad = Subscriber::start(
        |_, _| {
            (
                StatusCode::OK,
                vec![("ce-specversion", "1.0".into()), ("ce-id", "x".into())],
                Bytes::new(),
            )
        },
        Duration::ZERO,
    )
    .await;
    let dls = Subscriber::accepting().await;
    let delivery = with_dead_letters(1, &dls.url("/"));
    let s = TestServer::start(&[
        ("broker.yaml", &broker("default", "")),
        ("t.yaml", &trigger("t", "default", &bad.url("/"), &delivery)),
    ])
    .await;
    send(&s.broker_url("default", "default"), "e1", "t").await;
    let dead = dls.wait_for(1, WAIT).await;
    assert_eq!(bad.count(), 2);
    let data = base64::engine::general_purpose::STANDARD
        .decode(dead[0].attribute("knativeerrordata").expect("data"))
        .expect("base64");
    assert!(
        String::from_utf8_lossy(&data).contains("not a valid CloudEvent"),
        "{}",
        String::from_utf8_lossy(&data)
    );
    s.server.shutdown().await;
}

/// A reply the broker can never store (over --max-event-size) is not
/// retried: the event that caused it goes to the dead-letter sink with 413
/// and the broker as the destination, and the ordered trigger moves on.
#[tokio::test]
async fn an_oversized_reply_is_dead_lettered_and_does_not_stall_an_ordered_trigger() {
    let replier =
        Subscriber::replying(|id| Bytes::from(vec![b'x'; if id == "e1" { 4096 } else { 10 }]))
            .await;
    let replies = Subscriber::accepting().await;
    let dls = Subscriber::accepting().await;
    let ordered = "  annotations:\n    kafka.eventing.knative.dev/delivery.order: ordered\n";
    let ask = trigger(
        "ask",
        "default",
        &replier.url("/"),
        &format!(
            "  filter:\n    attributes:\n      type: ask\n{}",
            with_dead_letters(3, &dls.url("/"))
        ),
    )
    .replacen("  name: ask\n", &format!("  name: ask\n{ordered}"), 1);
    let answers = trigger(
        "answers",
        "default",
        &replies.url("/"),
        "  filter:\n    attributes:\n      type: reply\n",
    );
    let files = [
        ("broker.yaml", broker("default", "")),
        ("ask.yaml", ask),
        ("answers.yaml", answers),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let s = TestServer::start_with(&files, |c| c.max_event_bytes = 1024).await;
    let url = s.broker_url("default", "default");
    assert_eq!(send(&url, "e1", "ask").await.status, StatusCode::ACCEPTED);
    assert_eq!(send(&url, "e2", "ask").await.status, StatusCode::ACCEPTED);
    let dead = dls.wait_for(1, WAIT).await;
    assert_eq!(dead[0].id(), "e1");
    assert_eq!(dead[0].attribute("knativeerrorcode"), Some("413"));
    assert_eq!(dead[0].attribute("knativeerrordest"), Some(url.as_str()));
    let data = base64::engine::general_purpose::STANDARD
        .decode(dead[0].attribute("knativeerrordata").expect("data"))
        .expect("base64");
    let data = String::from_utf8_lossy(&data);
    assert!(
        data.contains("reply-e1") && data.contains("--max-event-size"),
        "{data}"
    );
    let got = replies.wait_for(1, WAIT).await;
    assert_eq!(got[0].id(), "reply-e2");
    assert_eq!(replier.count(), 2, "the oversized reply is not retried");
    assert_eq!(dls.count(), 1);
    s.server.shutdown().await;
}

#[tokio::test]
async fn ordered_triggers_deliver_one_at_a_time_in_order() {
    let slow = Subscriber::start(
        |_, _| (StatusCode::ACCEPTED, vec![], Bytes::new()),
        Duration::from_millis(5),
    )
    .await;
    let fast = Subscriber::start(
        |_, _| (StatusCode::ACCEPTED, vec![], Bytes::new()),
        Duration::from_millis(20),
    )
    .await;
    let ordered = "  annotations:\n    kafka.eventing.knative.dev/delivery.order: ordered\n";
    let ordered_trigger = trigger("ordered", "default", &slow.url("/"), "").replacen(
        "  name: ordered\n",
        &format!("  name: ordered\n{ordered}"),
        1,
    );
    let s = TestServer::start(&[
        ("broker.yaml", &broker("default", "")),
        ("ordered.yaml", &ordered_trigger),
        (
            "unordered.yaml",
            &trigger("unordered", "default", &fast.url("/"), ""),
        ),
    ])
    .await;
    let url = s.broker_url("default", "default");
    let sends = (0..40).map(|i| {
        let url = url.clone();
        async move { send(&url, &format!("{i:03}"), "t").await }
    });
    // Sent one after another so that log order is id order.
    for send in sends {
        assert_eq!(send.await.status, StatusCode::ACCEPTED);
    }
    let got = slow.wait_for(40, WAIT).await;
    let ids: Vec<_> = got.iter().map(|e| e.id().to_owned()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "ordered trigger delivered out of order");
    assert_eq!(slow.max_in_flight.load(Ordering::SeqCst), 1);
    fast.wait_for(40, WAIT).await;
    assert!(
        fast.max_in_flight.load(Ordering::SeqCst) > 1,
        "unordered triggers deliver concurrently"
    );
    s.server.shutdown().await;
}

#[tokio::test]
async fn a_subscriber_ref_to_a_broker_resolves_to_its_ingress() {
    let sink = Subscriber::accepting().await;
    let to_other = "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: forward\nspec:\n  broker: first\n  subscriber:\n    ref:\n      apiVersion: eventing.knative.dev/v1\n      kind: Broker\n      name: second\n";
    let s = TestServer::start(&[
        (
            "brokers.yaml",
            &format!("{}---\n{}", broker("first", ""), broker("second", "")),
        ),
        ("forward.yaml", to_other),
        ("sink.yaml", &trigger("sink", "second", &sink.url("/"), "")),
    ])
    .await;
    send(&s.broker_url("default", "first"), "hop", "t").await;
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got[0].id(), "hop");
    s.server.shutdown().await;
}

/// `spec.delivery.format`: `json` sends structured mode, `binary` (and no
/// format) binary mode; a trigger without `delivery` takes its broker's.
#[tokio::test]
async fn delivery_format_picks_structured_or_binary_mode() {
    let json = Subscriber::accepting().await;
    let binary = Subscriber::accepting().await;
    let inherited = Subscriber::accepting().await;
    let s = TestServer::start(&[
        (
            "broker.yaml",
            &broker("default", "spec:\n  delivery:\n    format: json\n"),
        ),
        (
            "json.yaml",
            &trigger(
                "json",
                "default",
                &json.url("/"),
                "  delivery:\n    format: json\n",
            ),
        ),
        (
            "binary.yaml",
            &trigger(
                "binary",
                "default",
                &binary.url("/"),
                "  delivery:\n    format: binary\n",
            ),
        ),
        (
            "inherited.yaml",
            &trigger("inherited", "default", &inherited.url("/"), ""),
        ),
    ])
    .await;
    let url = s.broker_url("default", "default");
    assert_eq!(send(&url, "f1", "t.x").await.status, StatusCode::ACCEPTED);
    for (subscriber, structured) in [(&json, true), (&binary, false), (&inherited, true)] {
        let got = subscriber.wait_for(1, WAIT).await;
        assert_eq!(got[0].id(), "f1");
        assert_eq!(got[0].data().map(|d| &d[..]), Some(&b"{\"id\":\"f1\"}"[..]));
        let headers = subscriber.received.lock().expect("lock")[0].headers.clone();
        let content_type = headers["content-type"].to_str().expect("ascii");
        if structured {
            assert_eq!(content_type, "application/cloudevents+json");
            assert!(headers.get("ce-id").is_none(), "{headers:?}");
        } else {
            assert_eq!(content_type, "application/json");
            assert_eq!(headers["ce-id"], "f1");
        }
    }
}

/// Structured delivery sends a Boolean or Integer extension as the JSON
/// boolean or number it arrived as; binary mode can only send its text.
#[tokio::test]
async fn structured_delivery_sends_typed_extensions_as_they_came() {
    let json = Subscriber::accepting().await;
    let binary = Subscriber::accepting().await;
    let s = TestServer::start(&[
        ("broker.yaml", &broker("default", "")),
        (
            "json.yaml",
            &trigger(
                "json",
                "default",
                &json.url("/"),
                "  delivery:\n    format: json\n",
            ),
        ),
        (
            "binary.yaml",
            &trigger("binary", "default", &binary.url("/"), ""),
        ),
    ])
    .await;
    let event = r#"{"specversion":"1.0","id":"typed","source":"/s","type":"t","urgent":true,"retries":3,"data":{"n" : 1}}"#;
    let reply = support::request(
        http::Method::POST,
        &s.broker_url("default", "default"),
        &[("content-type", "application/cloudevents+json")],
        event,
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    use pilotlight::cloudevent::AttributeValue;
    let got = json.wait_for(1, WAIT).await;
    assert_eq!(
        got[0].attribute_value("urgent"),
        Some(AttributeValue::Boolean(true))
    );
    assert_eq!(
        got[0].attribute_value("retries"),
        Some(AttributeValue::Integer(3))
    );
    // The JSON data is sent as the bytes that arrived.
    assert_eq!(got[0].data().map(|d| &d[..]), Some(&b"{\"n\" : 1}"[..]));
    let got = binary.wait_for(1, WAIT).await;
    assert_eq!(
        got[0].attribute_value("urgent"),
        Some(AttributeValue::String("true"))
    );
    s.server.shutdown().await;
}

#[tokio::test]
async fn an_unknown_delivery_format_is_refused_with_its_field() {
    let sub = Subscriber::accepting().await;
    let s = TestServer::start(&[
        ("broker.yaml", &broker("default", "")),
        (
            "xml.yaml",
            &trigger(
                "xml",
                "default",
                &sub.url("/"),
                "  delivery:\n    format: xml\n",
            ),
        ),
    ])
    .await;
    let reply =
        support::request(http::Method::GET, &s.admin_url("/api/v1/triggers"), &[], "").await;
    assert!(
        reply.body.contains("xml.yaml:1: Trigger default/xml: field spec.delivery.format: 'xml' is not one of json, binary"),
        "{}",
        reply.body
    );
}
