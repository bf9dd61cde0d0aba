//! Manifest validation, the firing decision, and the loop against a real
//! HTTP sink on 127.0.0.1.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use http::HeaderMap;

use super::record::{
    Binding, claim_change, read_last_tick, recorded_tick, start_change, write_last_tick,
};
use super::source::{CatchUp, Decision, catch_up, decide, tick_id};
use super::*;
use crate::api::ObjectKey;
use crate::eventing::delivery::EventSender;
use crate::eventing::health::Health;
use crate::eventing::source::cluster_state::Change;
use crate::eventing::source::{SourceContext, SourceHandle};

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
        .single()
        .expect("valid test time")
}

fn manifest(spec: serde_json::Value) -> PingSource {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "sources.knative.dev/v1",
        "kind": "PingSource",
        "metadata": {"name": "ping", "namespace": "team"},
        "spec": spec,
    }))
    .expect("a PingSource manifest")
}

fn basic_spec() -> serde_json::Value {
    serde_json::json!({
        "schedule": "*/5 * * * *",
        "sink": {"uri": "http://127.0.0.1:1/"},
    })
}

fn invalid(spec: serde_json::Value) -> String {
    manifest(spec).validate().expect_err("invalid").to_string()
}

fn with(mut spec: serde_json::Value, key: &str, value: serde_json::Value) -> serde_json::Value {
    spec[key] = value;
    spec
}

// ---- manifest ----

#[test]
fn manifest_round_trips_in_camel_case() {
    let ping = manifest(serde_json::json!({
        "schedule": "0 9 * * MON-FRI",
        "timezone": "Asia/Tokyo",
        "contentType": "application/json",
        "data": "{\"hello\":\"world\"}",
        "sink": {"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "default"}},
        "ceOverrides": {"extensions": {"team": "a"}},
    }));
    ping.validate().expect("valid");
    let text = serde_json::to_value(&ping).expect("serialises");
    assert_eq!(text["spec"]["contentType"], "application/json");
    assert_eq!(text["spec"]["ceOverrides"]["extensions"]["team"], "a");
    let back: PingSource = serde_json::from_value(text).expect("round trip");
    assert_eq!(back, ping);
}

#[test]
fn unknown_fields_are_rejected() {
    let result: Result<PingSource, _> = serde_json::from_value(serde_json::json!({
        "apiVersion": "sources.knative.dev/v1",
        "kind": "PingSource",
        "metadata": {"name": "ping"},
        "spec": {"schedule": "* * * * *", "sink": {"uri": "http://a/"}, "jsonData": "{}"},
    }));
    assert!(result.is_err());
}

#[test]
fn validation_names_the_field() {
    assert_eq!(
        invalid(with(basic_spec(), "schedule", "0 25 * * *".into())),
        "spec.schedule: field 2 (hour) '25' is out of range 0-23"
    );
    assert!(
        invalid(with(basic_spec(), "timezone", "Tokyo".into()))
            .starts_with("spec.timezone: 'Tokyo' is not an IANA time zone name such as Asia/Tokyo")
    );
    let both = with(
        with(basic_spec(), "data", "x".into()),
        "dataBase64",
        "eA==".into(),
    );
    assert_eq!(
        invalid(both),
        "spec.dataBase64: set data or dataBase64, not both"
    );
    assert!(
        invalid(with(basic_spec(), "dataBase64", "not base64!".into()))
            .starts_with("spec.dataBase64: is not valid base64")
    );
    assert_eq!(
        invalid(with(basic_spec(), "sink", serde_json::json!({}))),
        "spec.sink: set 'ref' or 'uri'"
    );
    assert!(
        invalid(with(
            basic_spec(),
            "ceOverrides",
            serde_json::json!({"extensions": {"Bad-Name": "x"}})
        ))
        .starts_with("spec.ceOverrides.extensions.Bad-Name:")
    );
    // Names are checked by the registry, for every kind (api::kinds).
}

#[test]
fn data_base64_is_decoded() {
    let ping = manifest(with(basic_spec(), "dataBase64", "aGVsbG8=".into()));
    ping.validate().expect("valid");
    assert_eq!(
        ping.data().expect("decodes").as_deref(),
        Some(&b"hello"[..])
    );
}

#[tokio::test]
async fn an_invalid_manifest_runs_as_not_ready() {
    let ping = manifest(with(basic_spec(), "schedule", "@sometimes".into()));
    let dir = tempfile::tempdir().expect("tempdir");
    let (context, handle) = SourceContext::new(
        ObjectKey::new("team", "ping"),
        "http://127.0.0.1:1/".parse().expect("uri"),
        EventSender::new(),
        dir.path().join("state"),
    );
    let task = tokio::spawn(ping.build_source().run(context));
    wait_for(|| matches!(handle.health(), Health::NotReady { .. })).await;
    match handle.health() {
        Health::NotReady { reason, message } => {
            assert_eq!(reason, "InvalidSpec");
            assert!(message.contains("'@sometimes' is not a macro"), "{message}");
        }
        other => panic!("unexpected health {other:?}"),
    }
    handle.stop();
    task.await.expect("stops");
}

// ---- decision ----

#[test]
fn decide_fires_only_the_latest_missed_tick() {
    let schedule = Schedule::parse("*/5 * * * *", None).expect("valid");
    // Nothing missed: wait for the next tick.
    assert_eq!(
        decide(
            &schedule,
            utc(2026, 1, 5, 12, 0, 0),
            utc(2026, 1, 5, 12, 3, 0)
        ),
        Decision::WaitUntil(utc(2026, 1, 5, 12, 5, 0))
    );
    // The next tick is exactly now: fire it.
    assert_eq!(
        decide(
            &schedule,
            utc(2026, 1, 5, 12, 0, 0),
            utc(2026, 1, 5, 12, 5, 0)
        ),
        Decision::Fire(utc(2026, 1, 5, 12, 5, 0))
    );
    // Down for an hour and a bit: one event, for 13:05.
    assert_eq!(
        decide(
            &schedule,
            utc(2026, 1, 5, 12, 0, 0),
            utc(2026, 1, 5, 13, 7, 30)
        ),
        Decision::Fire(utc(2026, 1, 5, 13, 5, 0))
    );
    // After firing 13:05 the next decision waits for 13:10.
    assert_eq!(
        decide(
            &schedule,
            utc(2026, 1, 5, 13, 5, 0),
            utc(2026, 1, 5, 13, 7, 30)
        ),
        Decision::WaitUntil(utc(2026, 1, 5, 13, 10, 0))
    );
}

#[test]
fn catch_up_fires_the_missed_ticks_oldest_first_up_to_the_limit() {
    let schedule = Schedule::parse("* * * * *", None).expect("valid");
    let minute = |m| utc(2026, 1, 5, 12, m, 0);
    // A hand-over from 12:00 to 12:02:30: 12:01 and 12:02 were missed.
    assert_eq!(
        catch_up(&schedule, minute(0), utc(2026, 1, 5, 12, 2, 30), 5),
        CatchUp {
            ticks: vec![minute(1), minute(2)],
            skipped_older: false,
        }
    );
    // A tick due exactly now is missed too; the last fired one is not.
    assert_eq!(
        catch_up(&schedule, minute(1), minute(2), 5).ticks,
        [minute(2)]
    );
    // Nothing missed.
    assert_eq!(
        catch_up(&schedule, minute(2), utc(2026, 1, 5, 12, 2, 59), 5),
        CatchUp {
            ticks: vec![],
            skipped_older: false,
        }
    );
    // Down from 12:00 to 12:20:10: only the newest five, and the rest said.
    assert_eq!(
        catch_up(&schedule, minute(0), utc(2026, 1, 5, 12, 20, 10), 5),
        CatchUp {
            ticks: (16..=20).map(minute).collect(),
            skipped_older: true,
        }
    );
    // File mode's limit of one is the latest missed tick, as `decide` says.
    let one = catch_up(&schedule, minute(0), utc(2026, 1, 5, 12, 20, 10), 1);
    assert_eq!(one.ticks, [minute(20)]);
    assert_eq!(
        decide(&schedule, minute(0), utc(2026, 1, 5, 12, 20, 10)),
        Decision::Fire(minute(20))
    );
}

#[test]
fn catch_up_follows_the_schedule_and_its_time_zone() {
    // 09:00 Tokyo on weekdays: Friday's and Monday's were missed over a
    // long weekend, Saturday and Sunday have none.
    let schedule = Schedule::parse("0 9 * * MON-FRI", Some("Asia/Tokyo")).expect("valid");
    let missed = catch_up(
        &schedule,
        utc(2026, 1, 8, 0, 0, 0),
        utc(2026, 1, 12, 1, 0, 0),
        5,
    );
    assert_eq!(
        missed.ticks,
        [utc(2026, 1, 9, 0, 0, 0), utc(2026, 1, 12, 0, 0, 0)]
    );
}

#[test]
fn tick_ids_are_the_same_for_a_tick_and_differ_between_ticks_and_sources() {
    let source = "/apis/v1/namespaces/team/pingsources/ping";
    let noon = utc(2026, 1, 5, 12, 0, 0);
    let id = tick_id(source, "uid-1", noon);
    assert_eq!(id, tick_id(source, "uid-1", noon), "deterministic");
    let parsed = uuid::Uuid::parse_str(&id).expect("a UUID");
    assert_eq!(parsed.get_version_num(), 5);
    let others = [
        tick_id(source, "uid-1", utc(2026, 1, 5, 12, 1, 0)),
        tick_id(source, "uid-2", noon),
        tick_id("/apis/v1/namespaces/team/pingsources/other", "uid-1", noon),
    ];
    assert!(others.iter().all(|other| *other != id), "{others:?}");
}

#[test]
fn a_tick_is_claimed_once_and_never_before_a_later_one() {
    let binding = Binding {
        uid: "uid-1".into(),
        schedule: "* * * * *".into(),
        timezone: String::new(),
    };
    let noon = utc(2026, 1, 5, 12, 0, 0);
    let Change::Set(recorded) = claim_change(None, &binding, noon) else {
        panic!("a first claim records the tick");
    };
    assert_eq!(recorded_tick(Some(&recorded), &binding), Some(noon));
    // Claimed already, by this replica or another: not again, nor earlier.
    assert_eq!(claim_change(Some(&recorded), &binding, noon), Change::Keep);
    let before = noon - chrono::Duration::minutes(1);
    assert_eq!(
        claim_change(Some(&recorded), &binding, before),
        Change::Keep
    );
    let next = noon + chrono::Duration::minutes(1);
    assert!(matches!(
        claim_change(Some(&recorded), &binding, next),
        Change::Set(_)
    ));
    // A record of another schedule or object (deleted, created again) is
    // not this source's: claims go through, and a start begins afresh.
    let other = Binding {
        schedule: "@hourly".into(),
        ..binding.clone()
    };
    assert_eq!(recorded_tick(Some(&recorded), &other), None);
    assert!(matches!(
        claim_change(Some(&recorded), &other, before),
        Change::Set(_)
    ));
    let Change::Set(started) = start_change(Some(&recorded), &other, next) else {
        panic!("a start records where it began");
    };
    assert_eq!(recorded_tick(Some(&started), &other), Some(next));
    assert_eq!(start_change(Some(&recorded), &binding, next), Change::Keep);
    assert_eq!(recorded_tick(Some("garbage"), &binding), None);
}

#[tokio::test]
async fn an_accelerated_clock_runs_a_minute_a_second() {
    let clock = PingClock::accelerated(60).clock();
    let start = clock.now_utc();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let elapsed = clock.now_utc() - start;
    assert!(elapsed >= chrono::Duration::seconds(6), "{elapsed}");
    assert_eq!(
        clock.sleep_for(Duration::from_secs(60)),
        Duration::from_secs(1)
    );
}

#[test]
fn decide_never_for_an_impossible_date() {
    let schedule = Schedule::parse("0 0 30 2 *", None).expect("parses");
    assert_eq!(
        decide(
            &schedule,
            utc(2026, 1, 5, 12, 0, 0),
            utc(2026, 1, 5, 12, 0, 0)
        ),
        Decision::Never
    );
}

#[test]
fn last_tick_round_trips_and_survives_garbage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("nested").join("state");
    assert_eq!(read_last_tick(&state), None);
    write_last_tick(&state, utc(2026, 1, 5, 12, 0, 0)).expect("writes");
    assert_eq!(read_last_tick(&state), Some(utc(2026, 1, 5, 12, 0, 0)));
    assert!(!state.join("last-tick.tmp").exists());
    std::fs::write(state.join("last-tick"), "yesterday").expect("write");
    assert_eq!(read_last_tick(&state), None);
}

// ---- the loop against a real sink ----

/// Wall-clock time that moves with tokio time from `base`: works with real
/// and paused tokio time.
struct TestClock {
    base: DateTime<Utc>,
    start: tokio::time::Instant,
}

impl TestClock {
    fn at(base: DateTime<Utc>) -> Arc<TestClock> {
        Arc::new(TestClock {
            base,
            start: tokio::time::Instant::now(),
        })
    }
}

impl Clock for TestClock {
    fn now_utc(&self) -> DateTime<Utc> {
        self.base + chrono::Duration::from_std(self.start.elapsed()).unwrap_or_default()
    }
}

type Received = Arc<Mutex<Vec<(HeaderMap, bytes::Bytes)>>>;

/// An HTTP sink on 127.0.0.1 that records every request and answers 202.
async fn recording_sink() -> (String, Received) {
    let received: Received = Arc::default();
    let store = received.clone();
    let app = axum::Router::new().fallback(move |headers: HeaderMap, body: bytes::Bytes| {
        let store = store.clone();
        async move {
            store
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((headers, body));
            http::StatusCode::ACCEPTED
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/"), received)
}

fn count(received: &Received) -> usize {
    received.lock().unwrap_or_else(|e| e.into_inner()).len()
}

fn header(received: &Received, index: usize, name: &str) -> Option<String> {
    received.lock().unwrap_or_else(|e| e.into_inner())[index]
        .0
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn wait_for(mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting");
}

struct Running {
    handle: SourceHandle,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.handle.stop();
        self.task.await.expect("source task");
    }
}

fn start(ping: &PingSource, sink: &str, state: &std::path::Path, clock: Arc<dyn Clock>) -> Running {
    let (context, handle) = SourceContext::new(
        ping.metadata.key(),
        sink.parse().expect("sink uri"),
        EventSender::new(),
        state.to_path_buf(),
    );
    let task = tokio::spawn(ping.build_source_with_clock(clock).run(context));
    Running { handle, task }
}

fn every_minute(sink: &str) -> PingSource {
    manifest(serde_json::json!({
        "schedule": "* * * * *",
        "contentType": "application/json",
        "data": "{\"hello\":\"world\"}",
        "sink": {"uri": sink},
        "ceOverrides": {"extensions": {"team": "blue"}},
    }))
}

#[tokio::test]
async fn first_run_sends_the_next_tick_with_its_attributes() {
    let (sink, received) = recording_sink().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let ping = every_minute(&sink);
    // 200 ms before 12:00:00.
    let clock = TestClock::at(utc(2026, 1, 5, 12, 0, 0) - chrono::Duration::milliseconds(200));
    let running = start(&ping, &sink, &state, clock);
    wait_for(|| count(&received) == 1).await;
    assert_eq!(running.handle.health(), Health::Ready);
    running.stop().await;

    assert_eq!(
        header(&received, 0, "ce-type").as_deref(),
        Some("dev.knative.sources.ping")
    );
    assert_eq!(
        header(&received, 0, "ce-source").as_deref(),
        Some("/apis/v1/namespaces/team/pingsources/ping")
    );
    assert_eq!(
        header(&received, 0, "ce-time").as_deref(),
        Some("2026-01-05T12:00:00Z")
    );
    assert_eq!(
        header(&received, 0, "ce-specversion").as_deref(),
        Some("1.0")
    );
    assert_eq!(header(&received, 0, "ce-team").as_deref(), Some("blue"));
    assert_eq!(
        header(&received, 0, "content-type").as_deref(),
        Some("application/json")
    );
    let id = header(&received, 0, "ce-id").expect("id");
    // The tick's own id: a file's PingSource has no uid.
    assert_eq!(
        id,
        tick_id(
            "/apis/v1/namespaces/team/pingsources/ping",
            "",
            utc(2026, 1, 5, 12, 0, 0)
        )
    );
    assert_eq!(
        &received.lock().unwrap_or_else(|e| e.into_inner())[0].1[..],
        b"{\"hello\":\"world\"}"
    );
    assert_eq!(read_last_tick(&state), Some(utc(2026, 1, 5, 12, 0, 0)));
}

#[tokio::test]
async fn a_first_run_sends_nothing_for_the_past() {
    let (sink, received) = recording_sink().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let running = start(
        &every_minute(&sink),
        &sink,
        &state,
        TestClock::at(utc(2026, 1, 5, 12, 0, 30)),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.stop().await;
    assert_eq!(count(&received), 0);
    assert_eq!(read_last_tick(&state), None);
}

#[tokio::test]
async fn a_restart_after_missed_ticks_sends_exactly_one_catch_up() {
    let (sink, received) = recording_sink().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    write_last_tick(&state, utc(2026, 1, 5, 11, 50, 0)).expect("seed state");
    // Down from 11:50 to 12:03:30: 13 ticks missed, one is sent (12:03).
    let running = start(
        &every_minute(&sink),
        &sink,
        &state,
        TestClock::at(utc(2026, 1, 5, 12, 3, 30)),
    );
    wait_for(|| count(&received) >= 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.stop().await;
    assert_eq!(count(&received), 1);
    assert_eq!(
        header(&received, 0, "ce-time").as_deref(),
        Some("2026-01-05T12:03:00Z")
    );
    assert_eq!(read_last_tick(&state), Some(utc(2026, 1, 5, 12, 3, 0)));
}

#[tokio::test]
async fn a_restart_before_the_next_tick_sends_nothing_twice() {
    let (sink, received) = recording_sink().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let ping = every_minute(&sink);
    // First life: fires 12:00.
    let base = utc(2026, 1, 5, 12, 0, 0) - chrono::Duration::milliseconds(100);
    let running = start(&ping, &sink, &state, TestClock::at(base));
    wait_for(|| count(&received) == 1).await;
    running.stop().await;
    // Reload at 12:00:00.5 with the same state folder: 12:00 is not sent again.
    let running = start(
        &ping,
        &sink,
        &state,
        TestClock::at(utc(2026, 1, 5, 12, 0, 0) + chrono::Duration::milliseconds(500)),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.stop().await;
    assert_eq!(count(&received), 1);
}

#[tokio::test(start_paused = true)]
async fn paused_time_runs_an_hourly_schedule_in_virtual_time() {
    let (sink, received) = recording_sink().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let ping = manifest(serde_json::json!({
        "schedule": "@hourly",
        "timezone": "Asia/Tokyo",
        "sink": {"uri": sink},
    }));
    let running = start(
        &ping,
        &sink,
        &state,
        TestClock::at(utc(2026, 1, 5, 12, 0, 5)),
    );
    // Two ticks, an hour apart, without waiting two hours.
    for _ in 0..2_000 {
        if count(&received) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    running.stop().await;
    assert_eq!(count(&received), 2);
    assert_eq!(
        header(&received, 0, "ce-time").as_deref(),
        Some("2026-01-05T13:00:00Z")
    );
    assert_eq!(
        header(&received, 1, "ce-time").as_deref(),
        Some("2026-01-05T14:00:00Z")
    );
    // No contentType in the spec: no datacontenttype, no data.
    assert_eq!(header(&received, 0, "content-type"), None);
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_sink_is_reported_not_ready() {
    // A port nothing listens on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let dead = format!("http://{}/", closed.local_addr().expect("addr"));
    drop(closed);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let ping = manifest(serde_json::json!({
        "schedule": "@hourly",
        "sink": {"uri": dead},
    }));
    let running = start(
        &ping,
        &dead,
        &state,
        TestClock::at(utc(2026, 1, 5, 12, 59, 59)),
    );
    for _ in 0..2_000 {
        if matches!(running.handle.health(), Health::NotReady { .. }) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    match running.handle.health() {
        Health::NotReady { reason, .. } => assert_eq!(reason, "SinkUnreachable"),
        other => panic!("unexpected health {other:?}"),
    }
    // The tick was recorded before sending: a restart will not resend it.
    assert_eq!(read_last_tick(&state), Some(utc(2026, 1, 5, 13, 0, 0)));
    running.stop().await;
}
