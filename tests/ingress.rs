//! The broker ingress over real HTTP: every status code it answers.

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use support::{Subscriber, TestServer, broker, request, send, trigger};

const BINARY: [(&str, &str); 4] = [
    ("ce-specversion", "1.0"),
    ("ce-id", "1"),
    ("ce-source", "/s"),
    ("ce-type", "t"),
];

async fn server() -> TestServer {
    TestServer::start_with(&[("broker.yaml", &broker("default", ""))], |c| {
        c.max_event_bytes = 4096
    })
    .await
}

#[tokio::test]
async fn accepts_binary_structured_and_batched_events() {
    let s = server().await;
    let url = s.broker_url("default", "default");
    let r = request(Method::POST, &url, &BINARY, "hello").await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let structured = r#"{"specversion":"1.0","id":"2","source":"/s","type":"t","data":{"a":1}}"#;
    let r = request(
        Method::POST,
        &url,
        &[("content-type", "application/cloudevents+json")],
        structured,
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let batch = format!("[{structured},{structured}]");
    let r = request(
        Method::POST,
        &url,
        &[("content-type", "application/cloudevents-batch+json")],
        batch,
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let v03 = [
        ("ce-specversion", "0.3"),
        ("ce-id", "3"),
        ("ce-source", "/s"),
        ("ce-type", "t"),
    ];
    assert_eq!(
        request(Method::POST, &url, &v03, "").await.status,
        StatusCode::ACCEPTED
    );
    s.server.shutdown().await;
}

#[tokio::test]
async fn invalid_events_get_400_naming_the_attribute() {
    let s = server().await;
    let url = s.broker_url("default", "default");
    let r = request(Method::POST, &url, &BINARY[..3], "").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.body.contains("missing required attribute 'type'"),
        "{}",
        r.body
    );
    let mut bad_time = BINARY.to_vec();
    bad_time.push(("ce-time", "tuesday"));
    let r = request(Method::POST, &url, &bad_time, "").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("attribute 'time'"), "{}", r.body);
    let batch = r#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"9.9","id":"2","source":"/s","type":"t"}]"#;
    let r = request(
        Method::POST,
        &url,
        &[("content-type", "application/cloudevents-batch+json")],
        batch,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.body.contains("batch event 1") && r.body.contains("specversion"),
        "{}",
        r.body
    );
    let r = request(
        Method::POST,
        &url,
        &[("content-type", "text/plain")],
        "not an event",
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("ce-specversion"), "{}", r.body);
    s.server.shutdown().await;
}

#[tokio::test]
async fn rejected_batch_stores_nothing() {
    let sub = Subscriber::accepting().await;
    let s = TestServer::start(&[
        ("broker.yaml", &broker("default", "")),
        (
            "trigger.yaml",
            &trigger("all", "default", &sub.url("/"), ""),
        ),
    ])
    .await;
    let url = s.broker_url("default", "default");
    let batch = r#"[{"specversion":"1.0","id":"good","source":"/s","type":"t"},{"specversion":"1.0","id":"bad","type":"t"}]"#;
    let r = request(
        Method::POST,
        &url,
        &[("content-type", "application/cloudevents-batch+json")],
        batch,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(send(&url, "after", "t").await.status, StatusCode::ACCEPTED);
    let events = sub.wait_for(1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sub.count(), 1);
    assert_eq!(events[0].id(), "after");
    s.server.shutdown().await;
}

#[tokio::test]
async fn unknown_broker_wrong_method_and_handshake() {
    let s = server().await;
    let r = request(Method::POST, &s.broker_url("default", "nope"), &BINARY, "").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(
        r.body.contains("default/nope") && r.body.contains("pilotlight get brokers"),
        "{}",
        r.body
    );
    let r = request(
        Method::POST,
        &format!("http://{}/default", s.server.listen),
        &BINARY,
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.body.contains("/{namespace}/{broker}"), "{}", r.body);
    let url = s.broker_url("default", "default");
    let r = request(Method::GET, &url, &[], "").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers["allow"], "POST, OPTIONS");
    let r = request(
        Method::OPTIONS,
        &url,
        &[("webhook-request-origin", "example.com")],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["webhook-allowed-origin"], "example.com");
    s.server.shutdown().await;
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let s = server().await;
    let url = s.broker_url("default", "default");
    let r = request(Method::POST, &url, &BINARY, vec![b'x'; 5000]).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.body.contains("4096"), "{}", r.body);
    assert_eq!(
        request(Method::POST, &url, &BINARY, vec![b'x'; 4000])
            .await
            .status,
        StatusCode::ACCEPTED
    );
    s.server.shutdown().await;
}

#[tokio::test]
async fn a_broker_that_cannot_start_answers_503_with_retry_after() {
    let s = TestServer::start_with(&[("broker.yaml", &broker("default", ""))], |c| {
        // A file where the broker's folder must go: the log cannot open.
        let blocked = c.data_dir.join("brokers").join("default");
        std::fs::create_dir_all(blocked.parent().expect("parent")).expect("dirs");
        std::fs::write(&blocked, "not a folder").expect("file");
    })
    .await;
    let r = request(
        Method::POST,
        &s.broker_url("default", "default"),
        &BINARY,
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers.contains_key("retry-after"));
    assert!(r.body.contains("not ready"), "{}", r.body);
    let list = request(Method::GET, &s.admin_url("/api/v1/brokers"), &[], "").await;
    assert!(list.body.contains("BackendFailed"), "{}", list.body);
    s.server.shutdown().await;
}

#[tokio::test]
async fn metrics_count_accepted_and_rejected_events() {
    let s = server().await;
    let url = s.broker_url("default", "default");
    send(&url, "m1", "t").await;
    request(Method::POST, &url, &BINARY[..2], "").await;
    let r = request(Method::GET, &s.admin_url("/metrics"), &[], "").await;
    assert!(
        r.body
            .contains("pilotlight_broker_events_accepted_total{broker=\"default/default\"}"),
        "{}",
        r.body
    );
    assert!(r.body.contains("reason=\"invalid\""), "{}", r.body);
    assert_eq!(
        request(Method::GET, &s.admin_url("/healthz"), &[], "")
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        request(Method::GET, &s.admin_url("/readyz"), &[], "")
            .await
            .status,
        StatusCode::OK
    );
    s.server.shutdown().await;
}

#[tokio::test]
async fn the_admin_api_names_its_collections_for_an_unknown_one() {
    let s = server().await;
    let r = request(Method::GET, &s.admin_url("/api/v1/brokerz"), &[], "").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(
        r.body.contains("'brokerz'") && r.body.contains("brokers, triggers"),
        "{}",
        r.body
    );
    let known = request(Method::GET, &s.admin_url("/api/v1/sources"), &[], "").await;
    assert_eq!(known.status, StatusCode::OK);
    s.server.shutdown().await;
}
