//! CESQL through a real server and the real binary: a Trigger's `cesql`
//! filter picks events, a bad expression refuses the Trigger with line and
//! column, and `pilotlight cesql` prints the evaluation as JSON.

mod support;

use std::process::Command;
use std::time::Duration;

use http::{Method, StatusCode};
use support::{Subscriber, TestServer, broker, request, send, trigger};

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
