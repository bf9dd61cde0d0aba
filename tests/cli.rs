//! The commands, run as a user runs them: the real binary against a real server.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Subscriber, TestServer, broker, trigger};

const BIN: &str = env!("CARGO_BIN_EXE_pilotlight");

/// Runs the binary off the async runtime; returns (success, stdout, stderr).
async fn pilotlight(args: Vec<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(BIN).args(&args).output().expect("binary runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("join")
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn get_lists_objects_with_status_and_refused_manifests() {
    let sub = Subscriber::accepting().await;
    let s = TestServer::start(&[
        ("broker.yaml", &broker("default", "")),
        ("t.yaml", &trigger("t", "default", &sub.url("/"), "")),
        ("lost.yaml", &trigger("lost", "nowhere", &sub.url("/"), "")),
        ("bad.yaml", "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: bad\nspec:\n  brokr: x\n"),
    ])
    .await;
    let admin = s.server.admin.to_string();
    let (ok, out, err) = pilotlight(args(&["get", "brokers", "--admin", &admin])).await;
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("NAMESPACE")
            && lines[0].contains("CLASS")
            && lines[0].contains("URL")
            && lines[0].contains("READY"),
        "{out}"
    );
    assert!(
        lines[1].contains(&s.broker_url("default", "default"))
            && lines[1].contains("True")
            && lines[1].contains("MTChannelBasedBroker"),
        "{out}"
    );
    assert!(
        err.contains("bad.yaml:1: Trigger default/bad: field spec.brokr: unknown field"),
        "{err}"
    );

    let (ok, out, _) = pilotlight(args(&[
        "get", "triggers", "-n", "default", "--admin", &admin,
    ]))
    .await;
    assert!(ok);
    let lost = out
        .lines()
        .find(|l| l.contains("lost"))
        .expect("lost listed");
    assert!(
        lost.contains("False") && lost.contains("BrokerDoesNotExist"),
        "{out}"
    );

    let (ok, out, _) =
        pilotlight(args(&["get", "triggers", "-o", "json", "--admin", &admin])).await;
    assert!(ok);
    let items: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(items.as_array().map(Vec::len), Some(2));
    let (ok, out, _) = pilotlight(args(&["get", "brokers", "-o", "yaml", "--admin", &admin])).await;
    assert!(
        ok && out.contains("kind: Broker") && out.contains("status:"),
        "{out}"
    );
    s.server.shutdown().await;
}

/// The benchmarks are their own crate (benches/, `pilotlight-bench`), not
/// commands of the product.
#[tokio::test(flavor = "multi_thread")]
async fn help_lists_the_product_commands_without_the_benchmarks() {
    let (ok, out, err) = pilotlight(args(&["--help"])).await;
    assert!(ok, "{err}");
    for command in [
        "run",
        "get",
        "ready",
        "replay",
        "send",
        "tail",
        "event-display",
        "cesql",
        "hello",
    ] {
        assert!(
            out.lines().any(|l| l.trim_start().starts_with(command)),
            "{command}: {out}"
        );
    }
    assert!(
        !out.lines().any(|l| l.trim_start().starts_with("bench")),
        "{out}"
    );
    let (ok, _, err) = pilotlight(args(&["bench", "cesql"])).await;
    assert!(!ok && err.contains("unrecognized subcommand"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn get_says_when_no_server_answers() {
    // Port 1: nothing listens there, and no parallel test can take it.
    let admin = "127.0.0.1:1".to_owned();
    let (ok, _, err) = pilotlight(args(&["get", "brokers", "--admin", &admin])).await;
    assert!(!ok);
    assert!(
        err.contains(&format!("is pilotlight running with --admin {admin}?")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn send_delivers_in_both_modes_and_refuses_bad_input() {
    let sub = Subscriber::accepting().await;
    let s = TestServer::start(&[
        ("broker.yaml", &broker("default", "")),
        ("t.yaml", &trigger("t", "default", &sub.url("/"), "")),
    ])
    .await;
    let listen = s.server.listen.to_string();
    let (ok, _, err) = pilotlight(args(&[
        "send",
        "--broker",
        "default/default",
        "--listen",
        &listen,
        "--type",
        "a.b",
        "--source",
        "/cli",
        "--id",
        "one",
        "--data",
        "{\"n\":1}",
        "-e",
        "color=red",
    ]))
    .await;
    assert!(ok, "{err}");
    let url = s.broker_url("default", "default");
    let (ok, _, err) = pilotlight(args(&[
        "send",
        "--to",
        &url,
        "--type",
        "a.b",
        "--source",
        "/cli",
        "--id",
        "two",
        "--mode",
        "structured",
        "--data",
        "[1,2]",
    ]))
    .await;
    assert!(ok, "{err}");
    let got = sub.wait_for(2, Duration::from_secs(10)).await;
    let one = got.iter().find(|e| e.id() == "one").expect("one");
    assert_eq!(one.attribute("color"), Some("red"));
    assert_eq!(one.data().map(|d| &d[..]), Some(&b"{\"n\":1}"[..]));
    let two = got.iter().find(|e| e.id() == "two").expect("two");
    assert_eq!(two.data().map(|d| &d[..]), Some(&b"[1,2]"[..]));

    let (ok, _, err) = pilotlight(args(&[
        "send", "--to", &url, "--type", "a", "--source", "/s", "-e", "Bad=1",
    ]))
    .await;
    assert!(!ok);
    assert!(err.contains("'Bad' is invalid"), "{err}");
    let (ok, _, err) = pilotlight(args(&[
        "send", "--to", &url, "--type", "a", "--source", "/s", "--data", "{oops",
    ]))
    .await;
    assert!(!ok);
    assert!(err.contains("--data is not JSON"), "{err}");
    let (ok, _, err) = pilotlight(args(&[
        "send",
        "--broker",
        "default/missing",
        "--listen",
        &listen,
        "--type",
        "a",
        "--source",
        "/s",
    ]))
    .await;
    assert!(!ok);
    assert!(
        err.contains("404") && err.contains("default/missing"),
        "{err}"
    );
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn event_display_prints_what_a_trigger_delivers() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut display = Command::new(BIN)
        .args(["event-display", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("event-display starts");
    let mut ready = BufReader::new(display.stderr.take().expect("stderr"));
    let mut line = String::new();
    ready.read_line(&mut line).expect("banner");
    assert!(line.contains("listening"), "{line}");
    let s = TestServer::start(&[
        ("broker.yaml", &broker("default", "")),
        (
            "t.yaml",
            &trigger("t", "default", &format!("http://127.0.0.1:{port}/"), ""),
        ),
    ])
    .await;
    support::send(
        &s.broker_url("default", "default"),
        "shown",
        "com.example.shown",
    )
    .await;
    let stdout = display.stdout.take().expect("stdout");
    let printed = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("line");
            text.push_str(&line);
            text.push('\n');
            if line.trim_start().starts_with("\"id\"") {
                break;
            }
        }
        text
    });
    let printed = tokio::time::timeout(Duration::from_secs(10), printed)
        .await
        .expect("printed in time")
        .expect("join");
    let _ = display.kill();
    let _ = display.wait();
    assert!(printed.starts_with("☁️  cloudevents.Event"), "{printed}");
    assert!(printed.contains("  type: com.example.shown"), "{printed}");
    assert!(printed.contains("  id: shown"), "{printed}");
    assert!(printed.contains("knativearrivaltime:"), "{printed}");
    assert!(printed.contains("\"id\": \"shown\""), "{printed}");
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn get_lists_services_revisions_and_routes() {
    let service = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: hello\nspec:\n  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/initial-scale: \"0\"\n    spec:\n      containers:\n        - command: [\"{BIN}\", hello]\n  traffic:\n    - latestRevision: true\n      percent: 100\n      tag: current\n"
    );
    let bad = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: split\nspec:\n  template:\n    spec:\n      containers:\n        - command: [x]\n  traffic:\n    - latestRevision: true\n      percent: 60\n";
    let s = TestServer::start(&[("hello.yaml", &service), ("split.yaml", bad)]).await;
    let admin = s.server.admin.to_string();
    let port = s.server.listen.port();

    let (ok, out, err) = pilotlight(args(&["get", "ksvc", "--admin", &admin])).await;
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .next()
            .is_some_and(|l| l.contains("LATESTREADY")),
        "{out}"
    );
    assert!(
        out.contains(&format!("http://hello.default.localhost:{port}"))
            && out.contains("hello-00001"),
        "{out}"
    );
    assert!(
        err.contains("split.yaml:1: Service default/split: field spec.traffic: percents add up to 60; they must add up to 100"),
        "{err}"
    );

    let (ok, out, _) = pilotlight(args(&["get", "revisions", "--admin", &admin])).await;
    assert!(ok);
    let row = out.lines().nth(1).unwrap_or_default();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells[..8],
        [
            "default",
            "hello-00001",
            "hello",
            "process",
            "0",
            "0",
            "0",
            "True"
        ],
        "{out}"
    );

    let (ok, out, _) = pilotlight(args(&["get", "routes", "--admin", &admin])).await;
    assert!(ok);
    assert!(out.contains("100% -> hello-00001 (tag current)"), "{out}");
    s.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_exits_0_only_when_readyz_answers_200() {
    let s = TestServer::start(&[("broker.yaml", &broker("default", ""))]).await;
    let admin = s.server.admin.to_string();
    let (ok, _, err) = pilotlight(args(&["ready", "--admin", &admin])).await;
    assert!(ok, "{err}");
    s.server.shutdown().await;

    // A server still loading its manifests answers 503, as pilotlight does.
    let loading = Subscriber::start(
        |_, _| {
            (
                http::StatusCode::SERVICE_UNAVAILABLE,
                vec![],
                bytes::Bytes::from_static(b"loading manifests\n"),
            )
        },
        Duration::ZERO,
    )
    .await;
    let (ok, _, err) = pilotlight(args(&["ready", "--admin", &loading.addr.to_string()])).await;
    assert!(!ok);
    assert!(
        err.contains("not ready") && err.contains("503") && err.contains("loading manifests"),
        "{err}"
    );
    assert_eq!(loading.received.lock().expect("lock").len(), 1);

    // Port 1: nothing listens there.
    let (ok, _, err) = pilotlight(args(&["ready", "--admin", "127.0.0.1:1"])).await;
    assert!(!ok);
    assert!(
        err.contains("is pilotlight running with --admin 127.0.0.1:1?"),
        "{err}"
    );
}
