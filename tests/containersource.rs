//! ContainerSource and SinkBinding in a real server with real processes:
//! a source's program gets K_SINK and K_CE_OVERRIDES and its events reach a
//! subscriber through a broker; it is restarted when it exits, restarted on
//! a spec change and stopped when deleted; a SinkBinding puts the sink into
//! a Service's instances and a changed sink rolls a new revision; and the
//! status says what is missing.

mod support;

use std::path::Path;
use std::time::Duration;

use http::{Method, StatusCode};
use support::{Subscriber, TestServer, broker, request, trigger, wait_until};

const WAIT: Duration = Duration::from_secs(20);

const TO_BROKER: &str = "    ref:\n      apiVersion: eventing.knative.dev/v1\n      kind: Broker\n      name: default\n";

/// Posts one CloudEvent in binary mode to `$K_SINK`, with the extensions of
/// `$K_CE_OVERRIDES` as `ce-` headers, then runs `then` (Python).
fn post_event(then: &str) -> String {
    format!(
        r#"import json, os, urllib.request
ext = json.loads(os.environ.get("K_CE_OVERRIDES") or "{{}}").get("extensions", {{}})
headers = {{"ce-specversion": "1.0", "ce-id": "beat-%d" % os.getpid(), "ce-source": "/heartbeats", "ce-type": "dev.pilotlight.heartbeat", "content-type": "application/json"}}
headers.update({{"ce-" + k: v for k, v in ext.items()}})
request = urllib.request.Request(os.environ["K_SINK"], data=b'{{"beat": 1}}', headers=headers, method="POST")
urllib.request.urlopen(request).read()
{then}"#
    )
}

/// A ContainerSource running `python` (a Python program) as a process.
fn container_source(name: &str, python: &str, env: &[(&str, &str)], sink: &str) -> String {
    let mut text = format!(
        "apiVersion: sources.knative.dev/v1\nkind: ContainerSource\nmetadata:\n  name: {name}\nspec:\n  template:\n    spec:\n      containers:\n        - name: beats\n          command: [python3, -c, {python:?}]\n"
    );
    if !env.is_empty() {
        text.push_str("          env:\n");
        for (k, v) in env {
            text.push_str(&format!(
                "            - name: {k}\n              value: {v:?}\n"
            ));
        }
    }
    text.push_str(&format!(
        "  ceOverrides:\n    extensions:\n      team: blue\n  sink:\n{sink}"
    ));
    text
}

async fn source_status(s: &TestServer, name: &str) -> serde_json::Value {
    let list = request(Method::GET, &s.admin_url("/api/v1/sources"), &[], "").await;
    assert_eq!(list.status, StatusCode::OK);
    let body: serde_json::Value = serde_json::from_str(&list.body).expect("json");
    body["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["metadata"]["name"] == name))
        .map(|i| i["status"].clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_container_source_sends_to_its_sink_with_its_overrides_and_is_restarted_when_it_exits() {
    let sub = Subscriber::accepting().await;
    // Sends one event, then exits: each run is one event.
    let program = post_event("raise SystemExit(3)");
    let s = TestServer::start(&[
        ("broker.yaml", &broker("default", "")),
        (
            "trigger.yaml",
            &trigger("all", "default", &sub.url("/"), ""),
        ),
        (
            "source.yaml",
            &container_source("heartbeats", &program, &[], TO_BROKER),
        ),
    ])
    .await;
    // Two runs, so it was restarted after it exited.
    let events = sub.wait_for(2, WAIT).await;
    for event in &events[..2] {
        assert_eq!(event.ty(), "dev.pilotlight.heartbeat");
        assert_eq!(event.attribute("team"), Some("blue"));
    }
    assert_ne!(events[0].id(), events[1].id(), "two processes");
    let status = source_status(&s, "heartbeats").await;
    assert_eq!(status["sinkUri"], s.broker_url("default", "default"));
    assert_eq!(status["runtime"], "process");
    assert!(status["restarts"].as_u64() >= Some(1), "{status}");
    s.server.shutdown().await;
}

/// Writes its pid to `$PIDS/$MARK`, then runs until stopped.
const RECORD_PID: &str = r#"import os, time
with open(os.path.join(os.environ["PIDS"], os.environ["MARK"]), "w") as f:
    f.write(str(os.getpid()))
time.sleep(100000)"#;

fn pid_alive(pid: i32) -> bool {
    // Signal 0 checks existence; a zombie is reaped by the runtime.
    unsafe { libc::kill(pid, 0) == 0 }
}

async fn recorded_pid(dir: &Path, mark: &str) -> i32 {
    let path = dir.join(mark);
    let mut pid = None;
    wait_until(
        &format!("{} is written", path.display()),
        WAIT,
        async || {
            pid = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| t.trim().parse().ok());
            pid.is_some()
        },
    )
    .await;
    pid.unwrap_or_default()
}

#[tokio::test]
async fn a_changed_container_source_restarts_and_a_deleted_one_stops() {
    let pids = tempfile::tempdir().expect("temp dir");
    let dir = pids.path().to_string_lossy().into_owned();
    let source = |mark: &str| {
        container_source(
            "runner",
            RECORD_PID,
            &[("PIDS", dir.as_str()), ("MARK", mark)],
            "    uri: http://127.0.0.1:9/\n",
        )
    };
    let s = TestServer::start(&[("source.yaml", &source("first"))]).await;
    let first = recorded_pid(pids.path(), "first").await;
    s.wait_ready_condition("sources", "runner", "True", &[], WAIT)
        .await;
    assert!(pid_alive(first));

    std::fs::write(s.manifests.join("source.yaml"), source("second")).expect("write");
    s.reapply().await;
    let second = recorded_pid(pids.path(), "second").await;
    assert_ne!(first, second);
    wait_until("the first process is stopped", WAIT, async || {
        !pid_alive(first)
    })
    .await;

    std::fs::remove_file(s.manifests.join("source.yaml")).expect("remove");
    s.reapply().await;
    wait_until("the second process is stopped", WAIT, async || {
        !pid_alive(second)
    })
    .await;
    assert!(
        source_status(&s, "runner").await.is_null(),
        "no longer listed"
    );
    s.server.shutdown().await;
}

/// A Service whose instances answer with their K_SINK and K_CE_OVERRIDES.
const SINK_ECHO: &str = r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: app
spec:
  template:
    spec:
      containers:
        - command:
            - python3
            - -c
            - |
              import http.server, os
              class Handler(http.server.BaseHTTPRequestHandler):
                  def do_GET(self):
                      body = (os.environ.get("K_SINK", "") + "\n" + os.environ.get("K_CE_OVERRIDES", "")).encode()
                      self.send_response(200)
                      self.send_header("content-length", str(len(body)))
                      self.end_headers()
                      self.wfile.write(body)
              http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

fn sink_binding(name: &str, subject: &str, sink: &str) -> String {
    format!(
        "apiVersion: sources.knative.dev/v1\nkind: SinkBinding\nmetadata:\n  name: {name}\nspec:\n  subject:\n    apiVersion: serving.knative.dev/v1\n    kind: Service\n    name: {subject}\n  sink:\n{sink}  ceOverrides:\n    extensions:\n      sink: bound\n"
    )
}

#[tokio::test]
async fn a_sink_binding_puts_the_sink_in_a_services_instances_and_a_new_sink_rolls_a_revision() {
    let s = TestServer::start(&[
        ("broker.yaml", &broker("default", "")),
        ("app.yaml", SINK_ECHO),
        ("binding.yaml", &sink_binding("bind-app", "app", TO_BROKER)),
    ])
    .await;
    let reply = s.get_host("app.default.localhost", "/").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(
        reply.body,
        format!(
            "{}\n{{\"extensions\":{{\"sink\":\"bound\"}}}}",
            s.broker_url("default", "default")
        )
    );
    let status = source_status(&s, "bind-app").await;
    assert_eq!(status["conditions"][0]["status"], "True", "{status}");
    assert_eq!(status["sinkUri"], s.broker_url("default", "default"));
    assert_eq!(
        s.revisions().await.keys().collect::<Vec<_>>(),
        ["app-00001"]
    );

    std::fs::write(
        s.manifests.join("binding.yaml"),
        sink_binding("bind-app", "app", "    uri: http://events.example.com/in\n"),
    )
    .expect("write");
    s.reapply().await;
    assert!(
        s.revisions().await.contains_key("app-00002"),
        "a new revision"
    );
    wait_until("the new revision answers", WAIT, async || {
        s.get_host("app.default.localhost", "/")
            .await
            .body
            .starts_with("http://events.example.com/in\n")
    })
    .await;
    s.server.shutdown().await;
}

#[tokio::test]
async fn a_missing_subject_or_sink_is_not_ready_and_says_which() {
    let s = TestServer::start(&[
        ("binding.yaml", &sink_binding("orphan", "nope", TO_BROKER)),
        (
            "source.yaml",
            &container_source("lost", RECORD_PID, &[], TO_BROKER),
        ),
    ])
    .await;
    let condition = s
        .wait_ready_condition("sources", "orphan", "False", &["SubjectMissing"], WAIT)
        .await;
    assert_eq!(
        condition["message"],
        "spec.subject: Service default/nope does not exist: create it, or fix spec.subject.name"
    );
    let condition = s
        .wait_ready_condition("sources", "lost", "False", &["SinkNotFound"], WAIT)
        .await;
    assert_eq!(
        condition["message"],
        "spec.sink: broker default/default does not exist"
    );
    s.server.shutdown().await;
}
