//! CESQL through a real server and the real binary: a Trigger's `cesql`
//! filter picks events, a bad expression refuses the Trigger with line and
//! column, and `pilotlight cesql` prints the evaluation as JSON.

mod support;

use std::process::Command;
use std::time::Duration;

use http::{Method, StatusCode};
use support::{
    Subscriber, TYPED_EXTENSION_FILTER, TestServer, broker, request, send, trigger,
    typed_extensions_reach_the_filter,
};

const BIN: &str = env!("CARGO_BIN_EXE_pilotlight");

fn cesql_trigger(name: &str, url: &str, expression: &str) -> String {
    trigger(
        name,
        "default",
        url,
        &format!("  filters:\n    - cesql: \"{expression}\"\n"),
    )
}

#[tokio::test]
async fn a_cesql_filter_delivers_only_matching_events() {
    let sub = Subscriber::accepting().await;
    let s = TestServer::start(&[
        ("broker.yaml", &broker("default", "")),
        (
            "trigger.yaml",
            &cesql_trigger(
                "orders",
                &sub.url("/"),
                "type LIKE 'com.example.%' AND id IN ('1', '3')",
            ),
        ),
    ])
    .await;
    for (id, ty) in [
        ("1", "com.example.a"),
        ("2", "com.example.b"),
        ("3", "org.other"),
        ("4", "com.example.c"),
    ] {
        let reply = send(&s.broker_url("default", "default"), id, ty).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED);
    }
    let events = sub.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids: Vec<String> = sub.events().iter().map(|e| e.id().to_owned()).collect();
    assert_eq!(ids, vec!["1".to_owned()], "{events:?}");
    s.server.shutdown().await;
}

/// A Boolean and an Integer extension from a structured-mode ingress keep
/// their types through the broker to the filter, for the durable log (the
/// default class) and the memory class; tests/kafka.rs and tests/rabbitmq.rs
/// do the same through a topic and an exchange.
#[tokio::test]
async fn typed_extensions_keep_their_types_through_the_log_and_memory_brokers() {
    for (name, class) in [
        ("log", ""),
        (
            "mem",
            "  annotations:\n    eventing.knative.dev/broker.class: Memory\n",
        ),
    ] {
        let sub = Subscriber::accepting().await;
        let s = TestServer::start(&[
            ("broker.yaml", &broker(name, class)),
            (
                "trigger.yaml",
                &trigger("typed", name, &sub.url("/"), TYPED_EXTENSION_FILTER),
            ),
        ])
        .await;
        typed_extensions_reach_the_filter(&s.broker_url("default", name), &sub).await;
        s.server.shutdown().await;
    }
}

#[tokio::test]
async fn a_cesql_expression_that_does_not_parse_refuses_the_trigger() {
    let s = TestServer::start(&[
        ("broker.yaml", &broker("default", "")),
        (
            "bad.yaml",
            &cesql_trigger("bad", "http://127.0.0.1:1/", "type = 'a' AND"),
        ),
    ])
    .await;
    let list = request(Method::GET, &s.admin_url("/api/v1/triggers"), &[], "").await;
    let body: serde_json::Value = serde_json::from_str(&list.body).expect("json");
    let error = body["errors"][0].as_str().unwrap_or_default();
    assert!(
        error.contains(
            "bad.yaml:1: Trigger default/bad: field spec.filters[0].cesql: line 1, column"
        ),
        "{error}"
    );
    s.server.shutdown().await;
}

fn cesql(args: &[&str]) -> (i32, serde_json::Value) {
    let out = Command::new(BIN)
        .arg("cesql")
        .args(args)
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    (out.status.code().unwrap_or(-1), json)
}

#[test]
fn the_cesql_command_prints_results_and_errors_as_json() {
    let (code, out) = cesql(&["type = 'dev.pilotlight.cesql' AND EXISTS id"]);
    assert_eq!(code, 0);
    assert_eq!(out, serde_json::json!({"result": true, "error": null}));

    let (code, out) = cesql(&["LENGTH(source) + 1"]);
    assert_eq!(code, 0);
    assert_eq!(out["result"], 18);

    let (code, out) = cesql(&["1 / 0"]);
    assert_eq!(code, 0, "an evaluation error still evaluates");
    assert_eq!(out["error"]["kind"], "math");

    let (code, out) = cesql(&["EXISTS subject AND subject = 'x'"]);
    assert_eq!(code, 0);
    assert_eq!(out["result"], false);

    let (code, out) = cesql(&["type = "]);
    assert_eq!(code, 2);
    assert_eq!(out["error"]["kind"], "parse");
    assert!(out["result"].is_null());

    let dir = tempfile::tempdir().expect("temp dir");
    let event = dir.path().join("event.json");
    std::fs::write(
        &event,
        r#"{"specversion":"1.0","id":"7","source":"/shop","type":"order","subject":"42"}"#,
    )
    .expect("write");
    let (code, out) = cesql(&["subject = 42", "--event", event.to_str().expect("utf-8")]);
    assert_eq!(code, 0);
    assert_eq!(out, serde_json::json!({"result": true, "error": null}));
}

#[test]
fn the_cesql_command_takes_an_expression_that_starts_with_a_minus() {
    for (args, result) in [
        (&["-10"][..], serde_json::json!(-10)),
        (&["-5 < 0"][..], serde_json::json!(true)),
        (&["--", "--5"][..], serde_json::json!(5)),
        (&["--", "-missing"][..], serde_json::json!(0)),
    ] {
        let (code, out) = cesql(args);
        assert_eq!(code, 0, "{args:?}: {out}");
        assert_eq!(out["result"], result, "{args:?}");
    }
}

#[test]
fn the_cesql_command_sees_the_types_of_a_structured_events_extensions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let event = dir.path().join("event.json");
    std::fs::write(
        &event,
        r#"{"specversion":"1.0","id":"7","source":"/shop","type":"order","urgent":true,"retries":3}"#,
    )
    .expect("write");
    let path = event.to_str().expect("utf-8");
    let (_, out) = cesql(&["--event", path, "--", "urgent"]);
    assert_eq!(out["result"], true);
    let (_, out) = cesql(&["--event", path, "--", "retries + 1"]);
    assert_eq!(out["result"], 4);
}

/// The Python CloudEvents SDK as the producer: it writes `urgent=True` and
/// `retries=3` as a JSON boolean and number in structured mode, and a
/// filter that needs the Boolean and the Integer sees them.
#[tokio::test]
async fn typed_extensions_from_the_python_sdk_reach_the_filter() {
    if !support::python_has("cloudevents.http", "cloudevents==1.13.0") {
        return;
    }
    let sub = Subscriber::accepting().await;
    let s = TestServer::start(&[
        ("broker.yaml", &broker("default", "")),
        (
            "trigger.yaml",
            &trigger("typed", "default", &sub.url("/"), TYPED_EXTENSION_FILTER),
        ),
    ])
    .await;
    let script = r#"
import sys, urllib.request
from cloudevents.conversion import to_structured
from cloudevents.http import CloudEvent
for id, urgent, retries in (("typed", True, 3), ("other", False, 3)):
    event = CloudEvent({"id": id, "type": "t", "source": "/python", "urgent": urgent, "retries": retries}, {"n": 1})
    headers, body = to_structured(event)
    request = urllib.request.Request(sys.argv[1], data=body, headers=headers, method="POST")
    print(urllib.request.urlopen(request).status)
"#;
    // Blocking, so off the runtime the server answers on.
    let url = s.broker_url("default", "default");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(["-c", script, &url])
            .output()
            .expect("python3 runs")
    })
    .await
    .expect("joins");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "202\n202\n");
    let events = sub.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids: Vec<String> = sub.events().iter().map(|e| e.id().to_owned()).collect();
    assert_eq!(ids, ["typed"], "{events:?}");
    s.server.shutdown().await;
}
