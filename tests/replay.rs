//! Replay (`POST /api/v1/triggers/{ns}/{name}/replay`, `pilotlight
//! replay`): a trigger's events come again, through its filter, from a
//! time or an offset; on the log, on Kafka (tansu in CI), and refused on
//! RabbitMQ; and only with the admin token off loopback.

mod support;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::{Method, StatusCode};
use support::{KAFKA, RABBITMQ, Subscriber, TestServer, request, send, trigger, wait_accepted};

const WAIT: Duration = Duration::from_secs(30);
const BIN: &str = env!("CARGO_BIN_EXE_pilotlight");
const KEEP: &str = "  filter:\n    attributes:\n      type: keep\n";

fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..10])
}

/// Posts a replay request; the status and the JSON answer (or the text).
async fn replay(
    admin: SocketAddr,
    trigger: &str,
    body: serde_json::Value,
    token: Option<&str>,
) -> (StatusCode, serde_json::Value, String) {
    let url = format!("http://{admin}/api/v1/triggers/{trigger}/replay");
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(bearer) = &bearer {
        headers.push(("authorization", bearer.as_str()));
    }
    let reply = request(Method::POST, &url, &headers, body.to_string()).await;
    let json = serde_json::from_str(&reply.body).unwrap_or_default();
    (reply.status, json, reply.body)
}

/// Waits until a dry run counts `n` events from `body`'s position: the
/// trigger acknowledged everything before it.
async fn wait_dry_run(admin: SocketAddr, trigger: &str, mut body: serde_json::Value, n: u64) {
    body["dryRun"] = true.into();
    let mut last = serde_json::Value::Null;
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        let (status, json, text) = replay(admin, trigger, body.clone(), None).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        if json["events"] == n {
            return;
        }
        last = json;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("a dry run never counted {n} events: {last}");
}

fn ids_of_type(s: &Subscriber) -> Vec<(String, String)> {
    s.events()
        .iter()
        .map(|e| (e.id().to_owned(), e.ty().to_owned()))
        .collect()
}

/// Sends keep-1, skip-1, keep-2, skip-2, keep-3 (offsets 0 to 4 of a new
/// log) and waits until the trigger that keeps `keep` got its three.
async fn five_events(s: &TestServer, broker: &str, subscriber: &Subscriber) {
    let url = s.broker_url("default", broker);
    let deadline = std::time::Instant::now() + WAIT;
    // The broker starts in its own time.
    while send(&url, "keep-1", "keep").await.status != StatusCode::ACCEPTED {
        assert!(
            std::time::Instant::now() < deadline,
            "{url} never took keep-1"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (id, ty) in [
        ("skip-1", "skip"),
        ("keep-2", "keep"),
        ("skip-2", "skip"),
        ("keep-3", "keep"),
    ] {
        assert_eq!(send(&url, id, ty).await.status, StatusCode::ACCEPTED);
    }
    subscriber.wait_for(3, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_trigger_gets_its_events_again_since_a_time_through_its_filter() {
    let subscriber = Subscriber::accepting().await;
    let since = chrono::Utc::now() - chrono::Duration::seconds(1);
    let s = TestServer::start(&[
        ("broker.yaml", &support::broker("b", "")),
        ("t.yaml", &trigger("t", "b", &subscriber.url("/"), KEEP)),
    ])
    .await;
    let admin = s.server.admin;
    five_events(&s, "b", &subscriber).await;
    let body = serde_json::json!({ "since": since.to_rfc3339() });
    // Counts every event since then, the skipped ones too (an upper bound).
    wait_dry_run(admin, "default/t", body.clone(), 5).await;
    // A dry run moved nothing: the next event is the only one that comes.
    let url = s.broker_url("default", "b");
    assert_eq!(
        send(&url, "keep-4", "keep").await.status,
        StatusCode::ACCEPTED
    );
    subscriber.wait_for(4, WAIT).await;
    wait_dry_run(admin, "default/t", body.clone(), 6).await;
    assert_eq!(subscriber.count(), 4, "{:?}", ids_of_type(&subscriber));

    let (status, json, text) = replay(admin, "default/t", body, None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(json["events"], 6, "{json}");
    assert_eq!(json["upperBound"], true, "{json}");
    assert_eq!(json["positions"][0]["to"], 0, "{json}");
    // The four kept events again, then one sent after the replay: the
    // skipped ones (read before it) never come.
    subscriber.wait_for(8, WAIT).await;
    assert_eq!(
        send(&url, "keep-5", "keep").await.status,
        StatusCode::ACCEPTED
    );
    subscriber.wait_for(9, WAIT).await;
    let got = ids_of_type(&subscriber);
    assert!(got.iter().all(|(_, ty)| ty == "keep"), "{got:?}");
    let again: Vec<&str> = got[4..8].iter().map(|(id, _)| id.as_str()).collect();
    let again: HashSet<&str> = again.into_iter().collect();
    assert_eq!(
        again,
        HashSet::from(["keep-1", "keep-2", "keep-3", "keep-4"]),
        "{got:?}"
    );
    assert_eq!(got.len(), 9, "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_trigger_replays_from_an_offset_and_refuses_what_is_wrong() {
    let subscriber = Subscriber::accepting().await;
    let s = TestServer::start(&[
        ("broker.yaml", &support::broker("b", "")),
        ("t.yaml", &trigger("t", "b", &subscriber.url("/"), KEEP)),
    ])
    .await;
    let admin = s.server.admin;
    five_events(&s, "b", &subscriber).await;
    wait_dry_run(admin, "default/t", serde_json::json!({"fromOffset": 0}), 5).await;

    // Offsets 3 (skip-2) and 4 (keep-3): one event comes again.
    let (status, json, text) = replay(
        admin,
        "default/t",
        serde_json::json!({"fromOffset": 3}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(json["events"], 2, "{json}");
    subscriber.wait_for(4, WAIT).await;
    let url = s.broker_url("default", "b");
    assert_eq!(
        send(&url, "keep-4", "keep").await.status,
        StatusCode::ACCEPTED
    );
    subscriber.wait_for(5, WAIT).await;
    let got: Vec<String> = ids_of_type(&subscriber)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(got[3..], ["keep-3", "keep-4"], "{got:?}");

    for (body, status, says) in [
        (
            serde_json::json!({"fromOffset": 99}),
            StatusCode::BAD_REQUEST,
            "beyond the log",
        ),
        (
            serde_json::json!({"since": "last tuesday"}),
            StatusCode::BAD_REQUEST,
            "RFC 3339",
        ),
        (
            serde_json::json!({"since": "1h", "fromOffset": 0}),
            StatusCode::BAD_REQUEST,
            "exactly one",
        ),
        (
            serde_json::json!({"dryRun": true}),
            StatusCode::BAD_REQUEST,
            "exactly one",
        ),
    ] {
        let (got, _, text) = replay(admin, "default/t", body.clone(), None).await;
        assert_eq!(got, status, "{body}: {text}");
        assert!(text.contains(says), "{body}: {text}");
    }
    let (got, _, text) = replay(
        admin,
        "default/nope",
        serde_json::json!({"since": "1h"}),
        None,
    )
    .await;
    assert_eq!(got, StatusCode::NOT_FOUND, "{text}");
    assert!(text.contains("default/nope"), "{text}");
}

/// An address of this machine that is not loopback (where the default
/// route leaves from; no packet is sent).
fn own_address() -> IpAddr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp socket");
    socket
        .connect("192.0.2.1:9")
        .expect("a route off this machine");
    let ip = socket.local_addr().expect("local address").ip();
    assert!(!ip.is_loopback(), "{ip}");
    ip
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_replay_needs_the_admin_token() {
    let subscriber = Subscriber::accepting().await;
    let ip = own_address();
    let s = TestServer::start_with(
        &[
            ("broker.yaml", &support::broker("b", "")),
            ("t.yaml", &trigger("t", "b", &subscriber.url("/"), "")),
        ],
        move |c| {
            c.admin = SocketAddr::new(ip, 0);
            c.admin_token = Some("a-long-admin-token".into());
        },
    )
    .await;
    let admin = s.server.admin;
    assert_eq!(admin.ip(), ip);
    wait_accepted(&s.broker_url("default", "b"), "e1", WAIT).await;
    let body = serde_json::json!({"since": "1h", "dryRun": true});
    let (status, _, text) = replay(admin, "default/t", body.clone(), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    assert!(text.contains("--admin-token"), "{text}");
    let (status, _, text) = replay(admin, "default/t", body.clone(), Some("wrong")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    let (status, json, text) = replay(admin, "default/t", body, Some("a-long-admin-token")).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(json["events"].is_u64(), "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_replays_with_yes_and_says_how_many() {
    let subscriber = Subscriber::accepting().await;
    let s = TestServer::start(&[
        ("broker.yaml", &support::broker("b", "")),
        ("t.yaml", &trigger("t", "b", &subscriber.url("/"), KEEP)),
    ])
    .await;
    five_events(&s, "b", &subscriber).await;
    wait_dry_run(
        s.server.admin,
        "default/t",
        serde_json::json!({"since": "1h"}),
        5,
    )
    .await;
    let admin = s.server.admin.to_string();
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(BIN)
                .args(args)
                .env_remove("PILOTLIGHT_ADMIN_TOKEN")
                .stdin(std::process::Stdio::null())
                .output()
                .expect("binary runs")
        })
    };
    let args = |extra: &[&str]| {
        let mut args: Vec<String> = ["replay", "default/t", "--since", "1h", "--admin", &admin]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    // Without --yes and no terminal to ask on: nothing happens.
    let out = run(args(&[])).await.expect("join");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("--yes"), "{stderr}");
    assert!(
        stdout.contains("5 events will be delivered again"),
        "{stdout}"
    );

    let out = run(args(&["--yes"])).await.expect("join");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("5 events will be delivered again"),
        "{stdout}"
    );
    subscriber.wait_for(6, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_trigger_gets_its_events_again_since_a_time() {
    let Some(kafka) = KAFKA.address().await else {
        return;
    };
    let name = unique("replay");
    let subscriber = Subscriber::accepting().await;
    let broker = support::broker(
        &name,
        "  annotations:\n    eventing.knative.dev/broker.class: Kafka\n",
    );
    let s = TestServer::start_with(
        &[
            ("broker.yaml", &broker),
            ("t.yaml", &trigger(&name, &name, &subscriber.url("/"), KEEP)),
        ],
        move |c| c.kafka_bootstrap_servers = Some(kafka),
    )
    .await;
    let admin = s.server.admin;
    let trigger_key = format!("default/{name}");
    let since = chrono::Utc::now() - chrono::Duration::seconds(1);
    five_events(&s, &name, &subscriber).await;
    let body = serde_json::json!({ "since": since.to_rfc3339() });
    // The committed offsets catch up with the deliveries.
    wait_dry_run(admin, &trigger_key, body.clone(), 5).await;
    let (status, json, text) = replay(admin, &trigger_key, body, None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(json["events"], 5, "{json}");
    subscriber.wait_for(6, Duration::from_secs(60)).await;
    let url = s.broker_url("default", &name);
    assert_eq!(
        send(&url, "keep-4", "keep").await.status,
        StatusCode::ACCEPTED
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !ids_of_type(&subscriber)
        .iter()
        .any(|(id, _)| id == "keep-4")
    {
        assert!(std::time::Instant::now() < deadline, "keep-4 never came");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = ids_of_type(&subscriber);
    assert!(got.iter().all(|(_, ty)| ty == "keep"), "{got:?}");
    let again: HashSet<&str> = got[3..6].iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        again,
        HashSet::from(["keep-1", "keep-2", "keep-3"]),
        "{got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_trigger_refuses_replay_and_says_why() {
    let Some(rabbitmq) = RABBITMQ.address().await else {
        return;
    };
    let name = unique("replay");
    let subscriber = Subscriber::accepting().await;
    let broker = support::broker(
        &name,
        "  annotations:\n    eventing.knative.dev/broker.class: RabbitMQBroker\n",
    );
    let s = TestServer::start_with(
        &[
            ("broker.yaml", &broker),
            ("t.yaml", &trigger(&name, &name, &subscriber.url("/"), "")),
        ],
        move |c| c.rabbitmq_uri = Some(rabbitmq),
    )
    .await;
    wait_accepted(&s.broker_url("default", &name), "e1", WAIT).await;
    subscriber.wait_for(1, WAIT).await;
    let (status, _, text) = replay(
        s.server.admin,
        &format!("default/{name}"),
        serde_json::json!({"since": "1h", "dryRun": true}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{text}");
    assert!(
        text.contains("RabbitMQ") && text.contains("acknowledged"),
        "{text}"
    );
    subscriber.wait_for(1, WAIT).await;
    assert_eq!(subscriber.count(), 1);
}

/// A channel's Subscription runs on the same dispatcher as a trigger, so
/// it replays the same way, through `/api/v1/subscriptions/...`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channels_subscription_on_the_log_gets_its_events_again() {
    let subscriber = Subscriber::accepting().await;
    let since = chrono::Utc::now() - chrono::Duration::seconds(1);
    let channel = "apiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\nmetadata:\n  name: c\n  annotations:\n    pilotlight.dev/channel.class: Log\n";
    let subscription = format!(
        "apiVersion: messaging.knative.dev/v1\nkind: Subscription\nmetadata:\n  name: sub\nspec:\n  channel:\n    apiVersion: messaging.knative.dev/v1\n    kind: InMemoryChannel\n    name: c\n  subscriber:\n    uri: {}\n",
        subscriber.url("/")
    );
    let s = TestServer::start(&[("c.yaml", channel), ("sub.yaml", &subscription)]).await;
    let url = s.broker_url("default", "c-kn-channel");
    wait_accepted(&url, "a", WAIT).await;
    assert_eq!(send(&url, "b", "t").await.status, StatusCode::ACCEPTED);
    subscriber.wait_for(2, WAIT).await;
    let endpoint = format!(
        "http://{}/api/v1/subscriptions/default/sub/replay",
        s.server.admin
    );
    let body = serde_json::json!({ "since": since.to_rfc3339() }).to_string();
    let headers = [("content-type", "application/json")];
    let reply = request(Method::POST, &endpoint, &headers, body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let got = subscriber.wait_for(4, WAIT).await;
    let ids: Vec<&str> = got.iter().map(|e| e.id()).collect();
    assert_eq!(ids.iter().filter(|id| **id == "b").count(), 2, "{ids:?}");
}
