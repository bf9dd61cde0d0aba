//! The console's live numbers and its Services panel.
//!
//! `GET /api/v1/console/live` is a Server-Sent Events stream with one
//! `event: figures` a second: events/s into each broker (and channel),
//! deliveries/s and failures/s of each trigger (and subscription) with its
//! backlog, dead-lettered and dropped, and each Service's instances,
//! requests/s and mean latency. The numbers are the metrics `/metrics`
//! exports (read through `telemetry::readings`), turned into rates per
//! client from one frame to the next: a browser gets one small frame a
//! second however many events flow, and nothing runs while no one watches.
//!
//! `GET /api/v1/console/services` lists each Service with its revisions,
//! traffic, instances over time, last cold starts and last failure.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;

use super::super::admin::AdminState;
use super::super::board::Collection;
use crate::api::status::ObjectView;
use crate::serving::REQUEST_SECONDS;
use crate::serving::controller::READY_INSTANCES_GAUGE;
use crate::telemetry::readings::{Readings, UnixMillis};

const FRAME_EVERY: Duration = Duration::from_secs(1);
/// How far back the instances chart goes.
const HISTORY: Duration = Duration::from_secs(600);
/// Cold starts shown per service.
const COLD_STARTS: usize = 8;

const ACCEPTED: &str = "pilotlight_broker_events_accepted_total";
const REJECTED: &str = "pilotlight_broker_events_rejected_total";
const DELIVERIES: &str = "pilotlight_trigger_deliveries_total";
const DEAD_LETTERED: &str = "pilotlight_trigger_dead_lettered_total";
const DROPPED: &str = "pilotlight_trigger_dropped_total";
const INSTANCE_START: &str = "pilotlight_instance_start_seconds";
/// The annotation a revision view names its Service by.
const SERVICE_ANNOTATION: &str = "serving.knative.dev/service";

/// The counters a frame's rates are computed from.
#[derive(Default)]
struct Totals {
    accepted: HashMap<String, u64>,
    rejected: HashMap<String, u64>,
    /// By trigger: (delivered, failed) attempts.
    deliveries: HashMap<String, (u64, u64)>,
    dead_lettered: HashMap<String, u64>,
    dropped: HashMap<String, u64>,
    /// By revision `namespace/name`: requests and their total seconds.
    requests: HashMap<String, (u64, f64)>,
}

impl Totals {
    fn read(readings: &Readings) -> Totals {
        let mut deliveries: HashMap<String, (u64, u64)> = HashMap::new();
        for series in readings.counters(DELIVERIES, "trigger", "code") {
            let (code, n) = series.value;
            let entry = deliveries.entry(series.label).or_default();
            if code.starts_with('2') {
                entry.0 += n;
            } else {
                entry.1 += n;
            }
        }
        Totals {
            accepted: readings.counter_totals(ACCEPTED, "broker"),
            rejected: readings.counter_totals(REJECTED, "broker"),
            deliveries,
            dead_lettered: readings.counter_totals(DEAD_LETTERED, "trigger"),
            dropped: readings.counter_totals(DROPPED, "trigger"),
            requests: requests_by_revision(readings),
        }
    }
}

/// Requests and their total seconds by revision, over every series of a
/// revision (they are split by cold start and response code class).
fn requests_by_revision(readings: &Readings) -> HashMap<String, (u64, f64)> {
    let mut requests: HashMap<String, (u64, f64)> = HashMap::new();
    for series in readings.histograms(REQUEST_SECONDS, "revision") {
        let entry = requests.entry(series.label).or_default();
        entry.0 += series.value.count;
        entry.1 += series.value.sum;
    }
    requests
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Frame {
    time: String,
    brokers: BTreeMap<String, BrokerFigures>,
    triggers: BTreeMap<String, TriggerFigures>,
    services: BTreeMap<String, ServiceFigures>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BrokerFigures {
    received_per_sec: f64,
    received: u64,
    rejected: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TriggerFigures {
    delivered_per_sec: f64,
    failed_per_sec: f64,
    delivered: u64,
    failed: u64,
    dead_lettered: u64,
    dropped: u64,
    backlog: Option<u64>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceFigures {
    instances: u32,
    desired: u32,
    requests_per_sec: f64,
    latency_ms: Option<f64>,
}

/// A rate from two readings `seconds` apart (0 for a counter that went
/// back, as after a restart of what counts).
fn rate(now: u64, before: u64, seconds: f64) -> f64 {
    let per_second = now.saturating_sub(before) as f64 / seconds;
    (per_second * 10.0).round() / 10.0
}

/// One client's stream: the totals of its previous frame.
struct LiveStream {
    state: AdminState,
    readings: std::sync::Arc<Readings>,
    previous: Totals,
    at: Instant,
}

impl LiveStream {
    async fn frame(&mut self) -> Frame {
        let totals = Totals::read(&self.readings);
        let now = Instant::now();
        let seconds = now.duration_since(self.at).as_secs_f64().max(0.001);
        let before = std::mem::take(&mut self.previous);
        let brokers = totals
            .accepted
            .iter()
            .map(|(broker, &received)| {
                let figures = BrokerFigures {
                    received_per_sec: rate(
                        received,
                        before.accepted.get(broker).copied().unwrap_or(received),
                        seconds,
                    ),
                    received,
                    rejected: totals.rejected.get(broker).copied().unwrap_or(0),
                };
                (broker.clone(), figures)
            })
            .collect();
        let backlogs = self.state.control.eventing().backlogs().await;
        let triggers = totals
            .deliveries
            .iter()
            .map(|(trigger, &(delivered, failed))| {
                let (was_delivered, was_failed) = before
                    .deliveries
                    .get(trigger)
                    .copied()
                    .unwrap_or((delivered, failed));
                let figures = TriggerFigures {
                    delivered_per_sec: rate(delivered, was_delivered, seconds),
                    failed_per_sec: rate(failed, was_failed, seconds),
                    delivered,
                    failed,
                    dead_lettered: totals.dead_lettered.get(trigger).copied().unwrap_or(0),
                    dropped: totals.dropped.get(trigger).copied().unwrap_or(0),
                    backlog: backlogs.get(trigger).copied(),
                };
                (trigger.clone(), figures)
            })
            .chain(
                backlogs
                    .iter()
                    .filter(|(t, _)| !totals.deliveries.contains_key(*t))
                    .map(|(trigger, &backlog)| {
                        let figures = TriggerFigures {
                            delivered_per_sec: 0.0,
                            failed_per_sec: 0.0,
                            delivered: 0,
                            failed: 0,
                            dead_lettered: 0,
                            dropped: 0,
                            backlog: Some(backlog),
                        };
                        (trigger.clone(), figures)
                    }),
            )
            .collect();
        let revisions = self
            .state
            .control
            .board()
            .list(Collection::Revisions, None)
            .await
            .items;
        let services = service_figures(&revisions, &totals, &before, seconds);
        self.previous = totals;
        self.at = now;
        Frame {
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            brokers,
            triggers,
            services,
        }
    }
}

/// The Service a revision view belongs to, `namespace/name`.
fn service_of(revision: &ObjectView) -> Option<String> {
    let service = revision.metadata.annotations.get(SERVICE_ANNOTATION)?;
    Some(format!("{}/{service}", revision.metadata.namespace))
}

fn revision_key(revision: &ObjectView) -> String {
    format!("{}/{}", revision.metadata.namespace, revision.metadata.name)
}

fn service_figures(
    revisions: &[ObjectView],
    totals: &Totals,
    before: &Totals,
    seconds: f64,
) -> BTreeMap<String, ServiceFigures> {
    let mut services: BTreeMap<String, (ServiceFigures, u64, f64)> = BTreeMap::new();
    for revision in revisions {
        let Some(service) = service_of(revision) else {
            continue;
        };
        let (figures, requests, busy) = services.entry(service).or_default();
        if let Some(serving) = &revision.status.serving {
            figures.instances += serving.actual_replicas.unwrap_or(0);
            figures.desired += serving.desired_replicas.unwrap_or(0);
        }
        let key = revision_key(revision);
        let (count, sum) = totals.requests.get(&key).copied().unwrap_or_default();
        let (was_count, was_sum) = before.requests.get(&key).copied().unwrap_or((count, sum));
        *requests += count.saturating_sub(was_count);
        *busy += (sum - was_sum).max(0.0);
    }
    services
        .into_iter()
        .map(|(service, (mut figures, requests, busy))| {
            figures.requests_per_sec = rate(requests, 0, seconds);
            figures.latency_ms = (requests > 0).then(|| {
                let ms = busy * 1000.0 / requests as f64;
                (ms * 100.0).round() / 100.0
            });
            (service, figures)
        })
        .collect()
}

/// `GET /api/v1/console/live`.
pub(crate) async fn live(State(state): State<AdminState>) -> Response {
    let readings = Readings::global();
    let stream = LiveStream {
        previous: Totals::read(&readings),
        at: Instant::now(),
        readings,
        state,
    };
    let body = futures::stream::unfold((stream, true), |(mut stream, first)| async move {
        if !first {
            tokio::time::sleep(FRAME_EVERY).await;
        }
        let frame = stream.frame().await;
        let json = serde_json::to_string(&frame).unwrap_or_default();
        let bytes = Bytes::from(format!("event: figures\ndata: {json}\n\n"));
        Some((Ok::<_, std::convert::Infallible>(bytes), (stream, false)))
    });
    (
        [
            (http::header::CONTENT_TYPE, "text/event-stream"),
            (http::header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

#[derive(Debug, Serialize)]
pub(crate) struct ServicesPanel {
    services: Vec<ServicePanel>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ServicePanel {
    namespace: String,
    name: String,
    url: Option<String>,
    ready: String,
    reason: Option<String>,
    message: Option<String>,
    revisions: Vec<RevisionPanel>,
    /// `[unix ms, ready instances]` at each change in the last ten minutes
    /// (the first point is the count at its start).
    instances_history: Vec<(UnixMillis, u32)>,
    /// The last instance start times, newest first.
    cold_starts_ms: Vec<f64>,
    /// Since pilotlight started (the live frames give the current rate).
    requests: u64,
    latency_ms: Option<f64>,
    last_failure: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RevisionPanel {
    name: String,
    percent: Option<u32>,
    tag: Option<String>,
    latest: bool,
    instances: u32,
    desired: u32,
    ready: String,
    message: Option<String>,
}

/// `GET /api/v1/console/services`.
pub(crate) async fn services(State(state): State<AdminState>) -> Json<ServicesPanel> {
    let board = state.control.board();
    let services = board.list(Collection::Services, None).await.items;
    let revisions = board.list(Collection::Revisions, None).await.items;
    let readings = Readings::global();
    let now = chrono::Utc::now().timestamp_millis();
    let panels = services
        .iter()
        .map(|service| service_panel(service, &revisions, &readings, now))
        .collect();
    Json(ServicesPanel { services: panels })
}

fn ready_of(view: &ObjectView) -> (String, Option<String>, Option<String>) {
    match view.status.ready_condition() {
        Some(c) => (c.status.clone(), c.reason.clone(), c.message.clone()),
        None => ("Unknown".into(), None, None),
    }
}

fn service_panel(
    service: &ObjectView,
    revisions: &[ObjectView],
    readings: &Readings,
    now: UnixMillis,
) -> ServicePanel {
    let key = format!("{}/{}", service.metadata.namespace, service.metadata.name);
    let serving = service.status.serving.as_deref();
    let traffic = serving.and_then(|s| s.traffic.clone()).unwrap_or_default();
    let own: Vec<&ObjectView> = revisions
        .iter()
        .filter(|r| service_of(r).as_deref() == Some(key.as_str()))
        .collect();
    let revision_panels: Vec<RevisionPanel> = own
        .iter()
        .map(|revision| {
            let name = revision.metadata.name.clone();
            let target = traffic.iter().find(|t| t.revision_name == name);
            let counts = revision.status.serving.as_deref();
            let (ready, _, message) = ready_of(revision);
            RevisionPanel {
                percent: target.map(|t| t.percent),
                tag: target.and_then(|t| t.tag.clone()),
                latest: serving.and_then(|s| s.latest_created_revision_name.as_deref())
                    == Some(name.as_str()),
                instances: counts.and_then(|c| c.actual_replicas).unwrap_or(0),
                desired: counts.and_then(|c| c.desired_replicas).unwrap_or(0),
                ready,
                message,
                name,
            }
        })
        .collect();
    let keys: Vec<String> = own.iter().map(|r| revision_key(r)).collect();
    let history = readings
        .gauges(READY_INSTANCES_GAUGE, "revision")
        .into_iter()
        .filter(|s| keys.contains(&s.label))
        .map(|s| s.value.changes)
        .collect();
    let mut starts: Vec<(UnixMillis, f64)> = readings
        .histograms(INSTANCE_START, "revision")
        .into_iter()
        .filter(|s| keys.contains(&s.label))
        .flat_map(|s| s.value.recent)
        .collect();
    starts.sort_by_key(|start| std::cmp::Reverse(start.0));
    let (requests, seconds) = readings
        .histograms(REQUEST_SECONDS, "revision")
        .into_iter()
        .filter(|s| keys.contains(&s.label))
        .fold((0, 0.0), |(n, sum), s| {
            (n + s.value.count, sum + s.value.sum)
        });
    let (ready, reason, message) = ready_of(service);
    let last_failure = own
        .iter()
        .filter_map(|r| {
            let (ready, _, message) = ready_of(r);
            (ready == "False").then_some(message).flatten()
        })
        .next()
        .or_else(|| (ready == "False").then(|| message.clone()).flatten());
    ServicePanel {
        namespace: service.metadata.namespace.clone(),
        name: service.metadata.name.clone(),
        url: serving.and_then(|s| s.url.clone()),
        ready,
        reason,
        message,
        revisions: revision_panels,
        instances_history: instances_over_time(history, now),
        cold_starts_ms: starts
            .iter()
            .take(COLD_STARTS)
            .map(|(_, seconds)| (seconds * 1e5).round() / 100.0)
            .collect(),
        requests,
        latency_ms: (requests > 0).then(|| (seconds * 1e5 / requests as f64).round() / 100.0),
        last_failure,
    }
}

/// The service's ready instances over the last [`HISTORY`]: the sum of
/// its revisions' at each change of any of them.
fn instances_over_time(
    revisions: Vec<Vec<(UnixMillis, f64)>>,
    now: UnixMillis,
) -> Vec<(UnixMillis, u32)> {
    let mut changes: Vec<(UnixMillis, usize, f64)> = revisions
        .iter()
        .enumerate()
        .flat_map(|(i, history)| history.iter().map(move |&(at, n)| (at, i, n)))
        .collect();
    changes.sort_by_key(|change| change.0);
    let start = now - HISTORY.as_millis() as i64;
    let mut current = vec![0.0; revisions.len()];
    let mut points: Vec<(UnixMillis, u32)> = Vec::new();
    for (at, revision, n) in changes {
        current[revision] = n;
        let total = current.iter().sum::<f64>().max(0.0) as u32;
        let at = at.max(start);
        // Changes before the window collapse into its first point.
        match points.last_mut() {
            Some(last) if last.0 == at => last.1 = total,
            _ => points.push((at, total)),
        }
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_over_time_sums_the_revisions_at_each_change() {
        let now = 1_000_000_000;
        let a = vec![(now - 5000, 0.0), (now - 3000, 1.0), (now - 1000, 0.0)];
        let b = vec![(now - 2000, 2.0)];
        let points = instances_over_time(vec![a, b], now);
        assert_eq!(
            points,
            [
                (now - 5000, 0),
                (now - 3000, 1),
                (now - 2000, 3),
                (now - 1000, 2)
            ]
        );
    }

    #[test]
    fn changes_before_the_window_start_it() {
        let now = 1_000_000_000;
        let old = now - 2 * HISTORY.as_millis() as i64;
        let points = instances_over_time(vec![vec![(old, 1.0), (old + 1, 2.0), (now, 0.0)]], now);
        let start = now - HISTORY.as_millis() as i64;
        assert_eq!(points, [(start, 2), (now, 0)]);
    }

    #[test]
    fn rates_are_per_second_and_never_negative() {
        assert_eq!(rate(150, 100, 2.0), 25.0);
        assert_eq!(rate(5, 10, 1.0), 0.0);
    }
}
