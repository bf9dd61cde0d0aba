//! Sources in a real server: a PingSource's catch-up event reaching a
//! subscriber through a broker and a trigger, its status, and manifest errors.

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use support::{Subscriber, TestServer, broker, request, trigger};

const WAIT: Duration = Duration::from_secs(10);

fn ping(name: &str, schedule: &str, sink: &str) -> String {
    format!(
        "apiVersion: sources.knative.dev/v1\nkind: PingSource\nmetadata:\n  name: {name}\nspec:\n  schedule: \"{schedule}\"\n  timezone: Asia/Tokyo\n  contentType: application/json\n  data: '{{\"hello\": \"ping\"}}'\n  ceOverrides:\n    extensions:\n      team: blue\n  sink:\n{sink}"
    )
}

const TO_BROKER: &str = "    ref:\n      apiVersion: eventing.knative.dev/v1\n      kind: Broker\n      name: default\n";

async fn sources(s: &TestServer) -> serde_json::Value {
    let list = request(Method::GET, &s.admin_url("/api/v1/sources"), &[], "").await;
    assert_eq!(list.status, StatusCode::OK);
    serde_json::from_str(&list.body).expect("json")
}

#[tokio::test]
async fn a_missed_tick_sends_one_catch_up_event_through_the_broker() {
    let sub = Subscriber::accepting().await;
    // The manifests and the state of a source that last fired ten minutes ago:
    // pilotlight was down for nine ticks.
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir
        .path()
        .join("data/sources/pingsource/default/every-minute");
    std::fs::create_dir_all(&state).expect("state dir");
    let last = chrono::Utc::now() - chrono::Duration::minutes(10);
    std::fs::write(state.join("last-tick"), last.to_rfc3339()).expect("last tick");

    let started_minute = chrono::Utc::now().timestamp() / 60;
    let s = TestServer::start_with(
        &[
            ("broker.yaml", &broker("default", "")),
            (
                "trigger.yaml",
                &trigger("all", "default", &sub.url("/"), ""),
            ),
            ("ping.yaml", &ping("every-minute", "* * * * *", TO_BROKER)),
        ],
        |config| config.data_dir = state.ancestors().nth(4).expect("data dir").to_owned(),
    )
    .await;
    let events = sub.wait_for(1, WAIT).await;
    let event = &events[0];
    assert_eq!(event.ty(), "dev.knative.sources.ping");
    assert_eq!(
        event.source(),
        "/apis/v1/namespaces/default/pingsources/every-minute"
    );
    assert_eq!(event.attribute("team"), Some("blue"));
    assert_eq!(
        event.data().map(|d| d.as_ref()),
        Some(&b"{\"hello\": \"ping\"}"[..])
    );
    // The catch-up is for the latest missed tick, not a burst of nine.
    let time = chrono::DateTime::parse_from_rfc3339(event.attribute("time").expect("time"))
        .expect("rfc3339");
    assert!(time > last + chrono::Duration::minutes(8), "{time}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A real minute may begin while the test runs and fire its own tick.
    let minutes_begun = chrono::Utc::now().timestamp() / 60 - started_minute;
    assert!(
        sub.count() as i64 <= 1 + minutes_begun,
        "one catch-up event, not one per missed tick: {} events, {minutes_begun} new minutes",
        sub.count()
    );

    let body = sources(&s).await;
    let item = &body["items"][0];
    assert_eq!(item["kind"], "PingSource");
    assert_eq!(
        item["status"]["sinkUri"],
        s.broker_url("default", "default")
    );
    let conditions = item["status"]["conditions"].as_array().expect("conditions");
    assert!(
        conditions
            .iter()
            .any(|c| c["type"] == "SinkProvided" && c["status"] == "True"),
        "{conditions:?}"
    );
    assert!(
        conditions
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True"),
        "{conditions:?}"
    );
    s.server.shutdown().await;
}

#[tokio::test]
async fn a_sink_that_does_not_resolve_shows_in_status() {
    let s = TestServer::start(&[("ping.yaml", &ping("lost", "@hourly", TO_BROKER))]).await;
    let body = sources(&s).await;
    let status = &body["items"][0]["status"];
    let ready = status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Ready")
        .expect("Ready")
        .clone();
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "SinkNotFound");
    assert!(
        ready["message"]
            .as_str()
            .is_some_and(|m| m.contains("broker default/default does not exist")),
        "{ready}"
    );
    s.server.shutdown().await;
}

#[tokio::test]
async fn an_invalid_schedule_is_refused_with_the_field_in_error() {
    let s = TestServer::start(&[(
        "ping.yaml",
        &ping("bad", "0 25 * * *", "    uri: http://127.0.0.1:1/\n"),
    )])
    .await;
    let body = sources(&s).await;
    assert_eq!(body["items"].as_array().map(Vec::len), Some(0));
    let error = body["errors"][0].as_str().unwrap_or_default().to_owned();
    assert!(
        error.contains("ping.yaml:1: PingSource default/bad: field spec.schedule:")
            && error.contains("hour")
            && error.contains("25"),
        "{error}"
    );
    s.server.shutdown().await;
}
