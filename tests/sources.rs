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

fn ready_condition(body: &serde_json::Value, name: &str) -> serde_json::Value {
    body["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["metadata"]["name"] == name)
        .and_then(|i| i["status"]["conditions"].as_array())
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or_default()
}

/// A KafkaSource whose `spec.net` names a Secret that is not there is
/// NotReady with the field and the Secret; each change of the Secret
/// restarts it on reload (no Kafka needed: the reason says how far it got).
#[tokio::test]
async fn a_kafka_source_waits_for_its_secret_and_restarts_when_it_appears() {
    let source = "apiVersion: sources.knative.dev/v1beta1\nkind: KafkaSource\nmetadata:\n  name: secure\nspec:\n  bootstrapServers: [127.0.0.1:1]\n  topics: [t]\n  net:\n    tls:\n      enable: true\n      caCert:\n        secretKeyRef:\n          name: kafka-ca\n          key: ca.crt\n  sink:\n    uri: http://127.0.0.1:1/\n";
    let s = TestServer::start(&[("source.yaml", source)]).await;
    let mut ready = serde_json::Value::Null;
    support::wait_until("the source is NotReady", WAIT, async || {
        ready = ready_condition(&sources(&s).await, "secure");
        ready["reason"] == "InvalidSpec"
    })
    .await;
    assert_eq!(ready["status"], "False");
    assert_eq!(
        ready["message"],
        "spec.net.tls.caCert.secretKeyRef: Secret default/kafka-ca does not exist: create it, or fix the reference"
    );

    // A value librdkafka cannot read: the source says so, naming the
    // setting, instead of waiting for a Kafka.
    let secret = |ca: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: kafka-ca\nstringData:\n  ca.crt: {ca:?}\n"
        )
    };
    let secret_file = s.manifests.join("secret.yaml");
    std::fs::write(&secret_file, secret("not a certificate")).expect("write the Secret");
    s.reapply().await;
    support::wait_until("the source refuses the CA", WAIT, async || {
        ready = ready_condition(&sources(&s).await, "secure");
        ready["message"]
            .as_str()
            .is_some_and(|m| m.contains("ssl.ca.pem"))
    })
    .await;
    assert_eq!(ready["reason"], "InvalidSpec", "{ready}");
    assert!(
        ready["message"]
            .as_str()
            .is_some_and(|m| m.ends_with("check spec.net and the values of the Secrets it names")),
        "{ready}"
    );

    // A CA that reads: the source starts again and goes on to Kafka (there
    // is none at 127.0.0.1:1, so it is not Ready, for that reason).
    let ca = include_str!("../src/eventing/source/kafka/testdata/ca.pem");
    std::fs::write(&secret_file, secret(ca)).expect("write the Secret");
    s.reapply().await;
    support::wait_until("the source restarted with its Secret", WAIT, async || {
        ready = ready_condition(&sources(&s).await, "secure");
        ready["reason"] != "InvalidSpec"
    })
    .await;
    s.server.shutdown().await;
}
