//! Manifests: refused objects are reported and the rest load; changes on disk
//! are applied without a restart and without losing events.

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use support::{Subscriber, TestServer, broker, request, send, trigger};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn an_invalid_trigger_is_refused_and_the_others_load() {
    let sub = Subscriber::accepting().await;
    let bad = trigger(
        "bad",
        "default",
        &sub.url("/"),
        "  delivery:\n    timeout: 10s\n",
    );
    let s = TestServer::start(&[
        ("broker.yaml", &broker("default", "")),
        ("good.yaml", &trigger("good", "default", &sub.url("/"), "")),
        ("bad.yaml", &bad),
        (
            "orphan.yaml",
            &trigger("orphan", "missing", &sub.url("/"), ""),
        ),
    ])
    .await;
    let list = request(Method::GET, &s.admin_url("/api/v1/triggers"), &[], "").await;
    let body: serde_json::Value = serde_json::from_str(&list.body).expect("json");
    let errors = body["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "{errors:?}");
    let error = errors[0].as_str().expect("text");
    assert!(error.contains("bad.yaml:1: Trigger default/bad: field spec.delivery.timeout: '10s' does not start with P; write an ISO-8601 duration such as PT0.5S"), "{error}");
    let items = body["items"].as_array().expect("items");
    let status = |name: &str| {
        items
            .iter()
            .find(|i| i["metadata"]["name"] == name)
            .map(|i| i["status"]["conditions"][0].clone())
            .expect("listed")
    };
    assert_eq!(status("good")["status"], "True");
    assert_eq!(status("orphan")["status"], "False");
    assert_eq!(status("orphan")["reason"], "BrokerDoesNotExist");
    send(&s.broker_url("default", "default"), "1", "t").await;
    sub.wait_for(1, WAIT).await;
    s.server.shutdown().await;
}

#[tokio::test]
async fn triggers_added_changed_and_removed_on_disk_lose_no_event() {
    let first = Subscriber::accepting().await;
    let second = Subscriber::accepting().await;
    let s = TestServer::start_with(
        &[
            ("broker.yaml", &broker("default", "")),
            ("t.yaml", &trigger("t", "default", &first.url("/"), "")),
        ],
        |c| c.watch = true,
    )
    .await;
    let url = s.broker_url("default", "default");
    send(&url, "before", "t").await;
    first.wait_for(1, WAIT).await;

    // Point the trigger at another subscriber and add a second trigger.
    std::fs::write(
        s.manifests.join("t.yaml"),
        trigger("t", "default", &second.url("/"), ""),
    )
    .expect("write");
    std::fs::write(
        s.manifests.join("extra.yaml"),
        trigger("extra", "default", &first.url("/extra"), ""),
    )
    .expect("write");
    let triggers = s.admin_url("/api/v1/triggers");
    let second_url = second.url("/");
    wait_for_listing(&triggers, |body| {
        body.contains(&second_url) && body.contains("\"extra\"")
    })
    .await;
    for i in 0..20 {
        assert_eq!(
            send(&url, &format!("after-{i}"), "t").await.status,
            StatusCode::ACCEPTED
        );
    }
    second.wait_for(20, WAIT).await;
    first.wait_for(21, WAIT).await; // "before" plus 20 through "extra"

    // Remove the trigger: nothing more reaches its subscriber.
    std::fs::remove_file(s.manifests.join("t.yaml")).expect("remove");
    wait_for_listing(&triggers, |body| !body.contains(&second_url)).await;
    send(&url, "last", "t").await;
    first.wait_for(22, WAIT).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(second.count(), 20);
    s.server.shutdown().await;
}

#[tokio::test]
async fn changing_the_subscriber_of_a_failing_trigger_redelivers_to_the_new_one() {
    // The first subscriber is down: events wait in the trigger's queue.
    // Port 1: nothing listens there, and no parallel test can take it.
    let down = "http://127.0.0.1:1/".to_owned();
    let up = Subscriber::accepting().await;
    let retry =
        "  delivery:\n    retry: 1000\n    backoffDelay: PT0.05S\n    backoffPolicy: linear\n";
    let s = TestServer::start_with(
        &[
            ("broker.yaml", &broker("default", "")),
            ("t.yaml", &trigger("t", "default", &down, retry)),
        ],
        |c| c.watch = true,
    )
    .await;
    let url = s.broker_url("default", "default");
    for i in 0..10 {
        send(&url, &format!("{i}"), "t").await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(
        s.manifests.join("t.yaml"),
        trigger("t", "default", &up.url("/"), retry),
    )
    .expect("write");
    let got = up.wait_for(10, WAIT).await;
    let mut ids: Vec<_> = got.iter().map(|e| e.id().to_owned()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10, "every event reaches the new subscriber");
    s.server.shutdown().await;
}

#[tokio::test]
async fn cursors_survive_a_restart() {
    let sub = Subscriber::accepting().await;
    let files = [
        ("broker.yaml", broker("default", "")),
        ("t.yaml", trigger("t", "default", &sub.url("/"), "")),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let s = TestServer::start(&files).await;
    let url = s.broker_url("default", "default");
    for i in 0..5 {
        send(&url, &format!("a{i}"), "t").await;
    }
    sub.wait_for(5, WAIT).await;
    let TestServer {
        server,
        manifests,
        dir,
    } = s;
    server.shutdown().await;
    // Same data dir, new server: only new events are delivered.
    let mut config = support::config(&manifests, &dir.path().join("data"));
    config.watch = false;
    let server = pilotlight::server::Server::start(config)
        .await
        .expect("restart");
    let url = format!("http://{}/default/default", server.listen);
    send(&url, "b0", "t").await;
    sub.wait_for(6, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids: Vec<_> = sub.events().iter().map(|e| e.id().to_owned()).collect();
    assert_eq!(ids, ["a0", "a1", "a2", "a3", "a4", "b0"]);
    server.shutdown().await;
}

/// Polls the admin API until its answer satisfies `done`.
async fn wait_for_listing(url: &str, done: impl Fn(&str) -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let body = request(Method::GET, url, &[], "").await.body;
        if done(&body) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "reload not applied: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A broker whose backend cannot start (here a file stands where its data
/// directory belongs; in life, a Kafka that is not up yet) is started again,
/// with backoff, without any change to the manifests.
#[tokio::test]
async fn a_backend_that_failed_to_start_is_started_again() {
    let sub = Subscriber::accepting().await;
    let mut blocker = std::path::PathBuf::new();
    let s = TestServer::start_with(
        &[
            ("broker.yaml", &broker("default", "")),
            ("trigger.yaml", &trigger("t", "default", &sub.url("/"), "")),
        ],
        |config| {
            let brokers = config.data_dir.join("brokers");
            std::fs::create_dir_all(&brokers).expect("brokers dir");
            blocker = brokers.join("default");
            std::fs::write(&blocker, "not a directory").expect("blocking file");
        },
    )
    .await;
    let url = s.broker_url("default", "default");
    let early = send(&url, "early", "t").await;
    assert_eq!(
        early.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        early.body
    );
    std::fs::remove_file(&blocker).expect("unblock");
    support::wait_accepted(&url, "late", WAIT).await;
    let events = sub.wait_for(1, WAIT).await;
    assert_eq!(events[0].id(), "late");
    s.server.shutdown().await;
}
