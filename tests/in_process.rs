//! Deliveries to pilotlight's own Services and brokers are handed over in
//! process: they arrive with the same semantics (a Service at zero starts,
//! a dead-letter sink that is a broker stores the event with its Knative
//! error attributes) and open no connection to the main listener.
//!
//! One test per file: the connection count is a process-wide metric, so no
//! other server may run in this test binary meanwhile.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, StatusCode};
use support::{Subscriber, TestServer, broker, request, send, trigger, wait_until};

const WAIT: Duration = Duration::from_secs(20);
const HELLO: &str = env!("CARGO_BIN_EXE_pilotlight");

/// Connections the main listener accepted so far (every server in this
/// process counts here; this file runs one).
async fn accepted_connections(admin: SocketAddr) -> f64 {
    let text = request(Method::GET, &format!("http://{admin}/metrics"), &[], "")
        .await
        .body;
    text.lines()
        .filter(|l| l.starts_with("pilotlight_http_connections_accepted_total{"))
        .filter(|l| l.contains("listener=\"main\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn deliveries_to_own_services_and_brokers_open_no_connection() {
    let failing = Subscriber::failing().await;
    let dead_letters = Subscriber::accepting().await;
    let hello = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: hello\nspec:\n  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/initial-scale: \"0\"\n    spec:\n      containers:\n        - command: [\"{HELLO}\", hello]\n"
    );
    let to_hello = "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: to-hello\nspec:\n  broker: default\n  filter:\n    attributes:\n      type: to.service\n  subscriber:\n    ref:\n      apiVersion: serving.knative.dev/v1\n      kind: Service\n      name: hello\n";
    let dead_letter_to_broker = "  filter:\n    attributes:\n      type: to.failing\n  delivery:\n    retry: 1\n    backoffDelay: PT0.01S\n    deadLetterSink:\n      ref:\n        apiVersion: eventing.knative.dev/v1\n        kind: Broker\n        name: dead\n";
    let s = TestServer::start(&[
        ("default.yaml", &broker("default", "")),
        ("dead.yaml", &broker("dead", "")),
        ("hello.yaml", &hello),
        ("to-hello.yaml", to_hello),
        (
            "to-failing.yaml",
            &trigger(
                "to-failing",
                "default",
                &failing.url("/"),
                dead_letter_to_broker,
            ),
        ),
        (
            "dead-letters.yaml",
            &trigger("dead-letters", "dead", &dead_letters.url("/"), ""),
        ),
    ])
    .await;
    let admin = s.server.admin;
    let ingress = s.broker_url("default", "default");

    // A Service at zero: started by the delivery, which waited for it.
    let before = accepted_connections(admin).await;
    assert_eq!(
        send(&ingress, "s1", "to.service").await.status,
        StatusCode::ACCEPTED
    );
    wait_until("the event reaches the Service", WAIT, async || {
        s.revisions().await["hello-00001"]["actualReplicas"] == 1
            && support::admin_list(admin, "triggers")
                .await
                .iter()
                .any(|t| t["metadata"]["name"] == "to-hello" && t["status"]["backlog"] == 0)
    })
    .await;
    assert_eq!(
        accepted_connections(admin).await - before,
        1.0,
        "only the test's own send connected to the main listener"
    );

    // A dead-letter sink that is a broker: stored there, with the reason.
    let before = accepted_connections(admin).await;
    assert_eq!(
        send(&ingress, "f1", "to.failing").await.status,
        StatusCode::ACCEPTED
    );
    let events = dead_letters.wait_for(1, WAIT).await;
    assert_eq!(events[0].id(), "f1");
    assert_eq!(
        events[0].attribute("knativeerrorcode"),
        Some("500"),
        "the dead letter carries Knative's error attributes"
    );
    assert_eq!(failing.count(), 2, "one try and one retry");
    assert_eq!(
        accepted_connections(admin).await - before,
        1.0,
        "the dead letter went to the broker in process"
    );
    s.server.shutdown().await;
}
