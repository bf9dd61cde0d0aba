//! Serving with real processes (`pilotlight hello` instances): cold start from
//! zero, a burst at zero, traffic splits and tags, scale to zero, crash and
//! restart, revision updates, upgrades, and events to a service at zero.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use pilotlight::server::ServerConfig;
use support::{TestServer, broker, request, send, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(20);
const HELLO: &str = env!("CARGO_BIN_EXE_pilotlight");

/// A Service running `pilotlight hello`, with template annotations and
/// extra template spec lines.
fn service(name: &str, annotations: &[(&str, &str)], extra: &str) -> String {
    let mut text = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n"
    );
    if !annotations.is_empty() {
        text.push_str("    metadata:\n      annotations:\n");
        for (k, v) in annotations {
            text.push_str(&format!("        autoscaling.knative.dev/{k}: \"{v}\"\n"));
        }
    }
    text.push_str(&format!(
        "    spec:\n      containers:\n        - command: [\"{HELLO}\", hello]\n{extra}"
    ));
    text
}

const AT_ZERO: &[(&str, &str)] = &[("initial-scale", "0")];

fn fast_scale_down(config: &mut ServerConfig) {
    let autoscaler = &mut config.serving.autoscaler;
    autoscaler.stable_window = Duration::from_secs(6);
    autoscaler.scale_to_zero_grace_period = Duration::from_secs(1);
    autoscaler.tick_interval = Duration::from_millis(500);
}

fn pid_alive(pid: i32) -> bool {
    // Signal 0 checks existence; a zombie is reaped by the runtime.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[tokio::test]
async fn a_request_at_zero_starts_an_instance_and_is_answered() {
    let s = TestServer::start(&[("hello.yaml", &service("hello", AT_ZERO, ""))]).await;
    let before = s.revisions().await;
    assert_eq!(before["hello-00001"]["actualReplicas"], 0, "{before:?}");
    assert_eq!(before["hello-00001"]["conditions"][0]["status"], "True");

    let reply = s.get_host("hello.default.localhost", "/").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body, "Hello World!\n");
    assert_eq!(reply.headers["k-revision"], "hello-00001");
    let after = s.revisions().await;
    assert_eq!(after["hello-00001"]["actualReplicas"], 1, "{after:?}");

    let unknown = s.get_host("nope.default.localhost:8080", "/").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(
        unknown.body.contains("{service}.{namespace}.localhost"),
        "{}",
        unknown.body
    );
    s.server.shutdown().await;
}

#[tokio::test]
async fn a_burst_at_zero_starts_one_instance_and_every_request_is_answered() {
    let s = TestServer::start(&[("hello.yaml", &service("hello", AT_ZERO, ""))]).await;
    let requests = (0..30).map(|_| s.get_host("hello.default.localhost", "/sleep?ms=100"));
    let replies = futures::future::join_all(requests).await;
    let pids: std::collections::BTreeSet<String> = replies
        .iter()
        .map(|r| {
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            r.headers["x-instance-pid"]
                .to_str()
                .expect("pid")
                .to_owned()
        })
        .collect();
    assert_eq!(pids.len(), 1, "one instance serves the burst: {pids:?}");
    s.server.shutdown().await;
}

#[tokio::test]
async fn traffic_splits_by_percent_and_tags_get_their_own_host() {
    let first = service("hello", &[], "");
    let s = TestServer::start(&[("hello.yaml", &first)]).await;
    wait_until("hello-00001 is ready", WAIT, async || {
        s.revisions().await["hello-00001"]["actualReplicas"] == 1
    })
    .await;
    // A new template (TARGET changes) makes hello-00002; split 30/70.
    let second = service(
        "hello",
        &[],
        "          env:\n            - name: TARGET\n              value: v2\n",
    ) + "  traffic:\n    - revisionName: hello-00001\n      percent: 30\n      tag: old\n    - latestRevision: true\n      percent: 70\n      tag: new\n";
    std::fs::write(s.manifests.join("hello.yaml"), second).expect("write");
    s.reapply().await;
    wait_until("hello-00002 is ready", WAIT, async || {
        s.revisions().await["hello-00002"]["actualReplicas"] == 1
    })
    .await;

    let mut counts = BTreeMap::new();
    for _ in 0..100 {
        let reply = s.get_host("hello.default.localhost", "/").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        let revision = reply.headers["k-revision"]
            .to_str()
            .expect("text")
            .to_owned();
        *counts.entry(revision).or_insert(0) += 1;
    }
    assert_eq!(counts.get("hello-00001"), Some(&30), "{counts:?}");
    assert_eq!(counts.get("hello-00002"), Some(&70), "{counts:?}");

    let old = s.get_host("old-hello.default.localhost", "/").await;
    assert_eq!(old.headers["k-revision"], "hello-00001");
    assert_eq!(old.body, "Hello World!\n");
    let new = s.get_host("new-hello.default.localhost", "/").await;
    assert_eq!(new.headers["k-revision"], "hello-00002");
    assert_eq!(new.body, "Hello v2!\n");

    let routes = request(Method::GET, &s.admin_url("/api/v1/services"), &[], "").await;
    assert!(
        routes.body.contains("http://old-hello.default.localhost:"),
        "{}",
        routes.body
    );
    s.server.shutdown().await;
}

#[tokio::test]
async fn an_update_keeps_the_old_revision_serving_until_the_new_one_is_ready() {
    let s = TestServer::start(&[("hello.yaml", &service("hello", &[], ""))]).await;
    wait_until("hello-00001 is ready", WAIT, async || {
        s.revisions().await["hello-00001"]["actualReplicas"] == 1
    })
    .await;
    // The new revision takes a second and a half to listen.
    let slow = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: hello\nspec:\n  template:\n    spec:\n      containers:\n        - command: [sh, -c, \"sleep 1.5; exec '{HELLO}' hello\"]\n"
    );
    std::fs::write(s.manifests.join("hello.yaml"), slow).expect("write");
    s.reapply().await;
    let during = s.get_host("hello.default.localhost", "/").await;
    assert_eq!(during.headers["k-revision"], "hello-00001");
    wait_until("traffic moves to hello-00002", WAIT, async || {
        s.get_host("hello.default.localhost", "/").await.headers["k-revision"] == "hello-00002"
    })
    .await;
    let list = request(Method::GET, &s.admin_url("/api/v1/services"), &[], "").await;
    let body: serde_json::Value = serde_json::from_str(&list.body).expect("json");
    assert_eq!(
        body["items"][0]["status"]["latestReadyRevisionName"],
        "hello-00002"
    );
    s.server.shutdown().await;
}

#[tokio::test]
async fn an_idle_revision_scales_back_to_zero_and_its_process_exits() {
    let s = TestServer::start_with(
        &[("hello.yaml", &service("hello", AT_ZERO, ""))],
        fast_scale_down,
    )
    .await;
    let reply = s.get_host("hello.default.localhost", "/").await;
    let pid: i32 = reply.headers["x-instance-pid"]
        .to_str()
        .expect("text")
        .parse()
        .expect("pid");
    assert!(pid_alive(pid));
    wait_until("the revision is back at zero", WAIT, async || {
        s.revisions().await["hello-00001"]["actualReplicas"] == 0
    })
    .await;
    wait_until("the instance process is gone", WAIT, async || {
        !pid_alive(pid)
    })
    .await;
    // And it comes back on the next request.
    let again = s.get_host("hello.default.localhost", "/").await;
    assert_eq!(again.status, StatusCode::OK);
    assert_ne!(
        again.headers["x-instance-pid"].to_str().ok(),
        Some(pid.to_string().as_str())
    );
    s.server.shutdown().await;
}

#[tokio::test]
async fn a_crashed_instance_is_restarted_and_the_reason_shows_in_status() {
    let s = TestServer::start(&[("hello.yaml", &service("hello", &[], ""))]).await;
    wait_until("hello-00001 is ready", WAIT, async || {
        s.revisions().await["hello-00001"]["actualReplicas"] == 1
    })
    .await;
    let crash = s.get_host("hello.default.localhost", "/exit?code=3").await;
    assert_eq!(crash.status, StatusCode::BAD_GATEWAY, "{}", crash.body);
    wait_until("the crash shows in status", WAIT, async || {
        s.revisions().await["hello-00001"]["restarts"] == 1
    })
    .await;
    let status = &s.revisions().await["hello-00001"];
    let message = status["conditions"][0]["message"].as_str().unwrap_or("");
    assert!(message.contains("code 3"), "{status}");
    assert!(message.contains("exiting with code 3 as asked"), "{status}");
    let after = s.get_host("hello.default.localhost", "/").await;
    assert_eq!(after.status, StatusCode::OK, "{}", after.body);
    s.server.shutdown().await;
}

#[tokio::test]
async fn bodies_stream_both_ways_and_forwarded_headers_are_set() {
    let s = TestServer::start(&[("hello.yaml", &service("hello", AT_ZERO, ""))]).await;
    let body = "x".repeat(256 * 1024);
    let echo = request(
        Method::POST,
        &format!("http://{}/echo", s.server.listen),
        &[
            ("host", "hello.default.localhost"),
            ("content-type", "text/plain"),
        ],
        body.clone(),
    )
    .await;
    assert_eq!(echo.status, StatusCode::OK);
    assert_eq!(echo.body.len(), body.len());
    let headers = request(
        Method::GET,
        &format!("http://{}/headers", s.server.listen),
        &[
            ("host", "hello.default.localhost:8080"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "secret"),
            ("x-forwarded-for", "10.1.2.3"),
        ],
        "",
    )
    .await;
    let text = headers.body.to_ascii_lowercase();
    assert!(
        text.contains("x-forwarded-for: 10.1.2.3, 127.0.0.1"),
        "{text}"
    );
    assert!(
        text.contains("x-forwarded-host: hello.default.localhost:8080"),
        "{text}"
    );
    assert!(text.contains("x-forwarded-proto: http"), "{text}");
    assert!(!text.contains("x-hop"), "{text}");
    s.server.shutdown().await;
}

#[tokio::test]
async fn an_upgrade_passes_through_to_the_instance() {
    let s = TestServer::start(&[("hello.yaml", &service("hello", AT_ZERO, ""))]).await;
    let mut stream = tokio::net::TcpStream::connect(s.server.listen)
        .await
        .expect("connect");
    stream
        .write_all(b"GET /upgrade HTTP/1.1\r\nHost: hello.default.localhost\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.expect("read head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
        .write_all(b"ping over the upgraded connection")
        .await
        .expect("write");
    let mut echoed = [0u8; 33];
    tokio::time::timeout(WAIT, stream.read_exact(&mut echoed))
        .await
        .expect("echo in time")
        .expect("read");
    assert_eq!(&echoed, b"ping over the upgraded connection");
    drop(stream);
    s.server.shutdown().await;
}

#[tokio::test]
async fn an_image_without_a_command_cannot_run_as_a_process_and_says_why() {
    let manifest = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  template:\n    metadata:\n      annotations:\n        pilotlight.dev/runtime: process\n    spec:\n      containers:\n        - image: nginx\n";
    let s = TestServer::start(&[("web.yaml", manifest)]).await;
    let list = request(Method::GET, &s.admin_url("/api/v1/services"), &[], "").await;
    let body: serde_json::Value = serde_json::from_str(&list.body).expect("json");
    let condition = &body["items"][0]["status"]["conditions"][0];
    assert_eq!(condition["status"], "False", "{body}");
    let message = condition["message"].as_str().unwrap_or("");
    assert!(
        message.contains("image 'nginx'") && message.contains("command"),
        "{message}"
    );
    let reply = s.get_host("web.default.localhost", "/").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.body);
    s.server.shutdown().await;
}

#[tokio::test]
async fn a_trigger_delivers_to_a_service_at_zero() {
    let trigger = "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: to-hello\nspec:\n  broker: default\n  subscriber:\n    ref:\n      apiVersion: serving.knative.dev/v1\n      kind: Service\n      name: hello\n";
    let s = TestServer::start(&[
        ("broker.yaml", &broker("default", "")),
        ("hello.yaml", &service("hello", AT_ZERO, "")),
        ("trigger.yaml", trigger),
    ])
    .await;
    let triggers = request(Method::GET, &s.admin_url("/api/v1/triggers"), &[], "").await;
    assert!(
        triggers
            .body
            .contains("\"subscriberUri\":\"http://hello.default.localhost:"),
        "{}",
        triggers.body
    );
    assert_eq!(s.revisions().await["hello-00001"]["actualReplicas"], 0);
    let reply = send(
        &s.broker_url("default", "default"),
        "e1",
        "com.example.test",
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    wait_until("the event is delivered", WAIT, async || {
        let list = request(Method::GET, &s.admin_url("/api/v1/triggers"), &[], "").await;
        let body: serde_json::Value = serde_json::from_str(&list.body).expect("json");
        body["items"][0]["status"]["backlog"] == 0
    })
    .await;
    assert_eq!(s.revisions().await["hello-00001"]["actualReplicas"], 1);
    s.server.shutdown().await;
}

#[tokio::test]
async fn a_request_waits_at_most_timeout_seconds_and_the_queue_is_bounded() {
    // An app that never listens: the revision never gets a ready instance.
    let never = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: stuck\nspec:\n  template:\n    spec:\n      timeoutSeconds: 1\n      containers:\n        - command: [sleep, \"60\"]\n";
    let s = TestServer::start_with(&[("stuck.yaml", never)], |c| c.serving.queue_limit = 2).await;
    let started = Instant::now();
    let replies =
        futures::future::join_all((0..3).map(|_| s.get_host("stuck.default.localhost", "/"))).await;
    let mut statuses: Vec<StatusCode> = replies.iter().map(|r| r.status).collect();
    statuses.sort();
    assert_eq!(
        statuses,
        [
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::GATEWAY_TIMEOUT,
            StatusCode::GATEWAY_TIMEOUT
        ]
    );
    let full = replies
        .iter()
        .find(|r| r.status == StatusCode::SERVICE_UNAVAILABLE)
        .expect("503");
    assert_eq!(full.headers["retry-after"], "1");
    assert!(full.body.contains("requests waiting"), "{}", full.body);
    let timed_out = replies
        .iter()
        .find(|r| r.status == StatusCode::GATEWAY_TIMEOUT)
        .expect("504");
    assert!(
        timed_out.body.contains("timeoutSeconds (1s)"),
        "{}",
        timed_out.body
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    s.server.shutdown().await;
}

#[tokio::test]
async fn container_concurrency_makes_requests_wait_for_room() {
    let one_at_a_time = service(
        "hello",
        &[("min-scale", "1"), ("max-scale", "1")],
        "      containerConcurrency: 1\n",
    );
    let s = TestServer::start(&[("hello.yaml", &one_at_a_time)]).await;
    wait_until("hello-00001 is ready", WAIT, async || {
        s.revisions().await["hello-00001"]["actualReplicas"] == 1
    })
    .await;
    let started = Instant::now();
    let replies = futures::future::join_all(
        (0..3).map(|_| s.get_host("hello.default.localhost", "/sleep?ms=300")),
    )
    .await;
    assert!(replies.iter().all(|r| r.status == StatusCode::OK));
    // One at a time: three 300 ms requests take at least 900 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    s.server.shutdown().await;
}

/// The values of `series` (a histogram's `_count`, a counter) in
/// `/metrics`, one per line that carries every one of `labels`.
async fn metric_values(s: &TestServer, series: &str, labels: &[&str]) -> Vec<f64> {
    let scrape = request(Method::GET, &s.admin_url("/metrics"), &[], "").await;
    scrape
        .body
        .lines()
        .filter(|line| line.starts_with(&format!("{series}{{")))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect()
}

/// A `Server-Timing` entry's `dur`, in milliseconds.
fn timing_dur(header: &str, name: &str) -> Option<f64> {
    header
        .split(',')
        .map(str::trim)
        .find_map(|entry| entry.strip_prefix(name)?.strip_prefix(";dur="))
        .and_then(|dur| dur.parse().ok())
}

#[tokio::test]
async fn a_request_that_waited_for_a_cold_start_is_told_apart() {
    // Names of their own: the metrics are the test process's, shared with
    // the other tests' servers.
    let s = TestServer::start_with(&[("timed.yaml", &service("timed", AT_ZERO, ""))], |c| {
        c.serving.server_timing = true;
    })
    .await;
    let cold = s.get_host("timed.default.localhost", "/").await;
    assert_eq!(cold.status, StatusCode::OK, "{}", cold.body);
    let header = cold
        .headers
        .get("server-timing")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let waited = timing_dur(header, "cold-start").expect("a cold-start entry");
    let queued = timing_dur(header, "activator-queue").expect("an activator-queue entry");
    assert!(waited > 0.0 && queued >= waited, "{header}");

    let warm = s.get_host("timed.default.localhost", "/").await;
    assert_eq!(warm.status, StatusCode::OK);
    assert!(
        !warm.headers.contains_key("server-timing"),
        "{:?}",
        warm.headers
    );

    let revision = "revision=\"default/timed-00001\"";
    let count = "pilotlight_revision_request_seconds_count";
    wait_until("both requests are in the metrics", WAIT, async || {
        let cold = metric_values(&s, count, &[revision, "cold_start=\"true\""]).await;
        let warm = metric_values(&s, count, &[revision, "cold_start=\"false\""]).await;
        cold == [1.0] && warm == [1.0]
    })
    .await;
    let ok = ["response_code_class=\"2xx\"", revision];
    assert_eq!(
        metric_values(&s, "pilotlight_revision_requests_total", &ok).await,
        [2.0]
    );
    assert_eq!(
        metric_values(&s, "pilotlight_activator_queue_seconds_count", &[revision]).await,
        [1.0]
    );
    let first_byte = [revision, "phase=\"first_byte\""];
    assert_eq!(
        metric_values(
            &s,
            "pilotlight_instance_start_phase_seconds_count",
            &first_byte
        )
        .await,
        [1.0]
    );
    s.server.shutdown().await;

    // Off (the default): no header, cold or not.
    let s = TestServer::start(&[("untimed.yaml", &service("untimed", AT_ZERO, ""))]).await;
    let cold = s.get_host("untimed.default.localhost", "/").await;
    assert_eq!(cold.status, StatusCode::OK, "{}", cold.body);
    assert!(
        !cold.headers.contains_key("server-timing"),
        "{:?}",
        cold.headers
    );
    let revision = "revision=\"default/untimed-00001\"";
    wait_until("the request counts as cold", WAIT, async || {
        metric_values(&s, count, &[revision, "cold_start=\"true\""]).await == [1.0]
    })
    .await;
    s.server.shutdown().await;
}
