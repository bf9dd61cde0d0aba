//! A revision's request metrics: latency and count by response code class,
//! latency split by whether the request waited for a cold start, and the
//! time requests spend in the activator queue (see docs/observability.md).
//!
//! The label values are few and fixed (two cold-start values, five code
//! classes), so each series' handle is made once, on first use, and kept:
//! a request then costs no key hashing or label allocation, and a series
//! appears in `/metrics` only once it has something to show.

use std::sync::OnceLock;
use std::time::Duration;

use http::StatusCode;
use metrics::{Counter, Histogram};

/// Each request's time from arrival to the end of its response body,
/// waiting for an instance included.
pub(crate) const REQUEST_SECONDS: &str = "pilotlight_revision_request_seconds";
/// Requests answered, by response code class.
pub(crate) const REQUESTS_TOTAL: &str = "pilotlight_revision_requests_total";
/// How long a request that found no instance with room waited for one.
pub(crate) const QUEUE_SECONDS: &str = "pilotlight_activator_queue_seconds";

/// The histogram of instance starts, from launch to ready.
pub(crate) const START_SECONDS: &str = "pilotlight_instance_start_seconds";
/// The histogram of each instance start's phases: `launch` and `ready`
/// (recorded by the local runtimes' instances) and `first_byte` (here).
pub(crate) const START_PHASE_SECONDS: &str = "pilotlight_instance_start_phase_seconds";

/// The response code class label, named as Knative names it.
const CODE_CLASS_LABEL: &str = "response_code_class";
/// Whether the request waited while no instance was ready.
const COLD_START_LABEL: &str = "cold_start";

/// Knative's classes; a code outside them counts as `5xx`, as Knative's do.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The series of one revision.
pub(crate) struct RequestMetrics {
    revision: String,
    /// By `[cold_start as usize][class]`.
    seconds: [[OnceLock<Histogram>; CLASSES.len()]; 2],
    /// By class.
    count: [OnceLock<Counter>; CLASSES.len()],
    /// Registered at once, so that a dashboard has the series (empty) for
    /// every revision from the start.
    queue_seconds: Histogram,
}

impl RequestMetrics {
    /// `revision` is `namespace/name`, the label the console reads by.
    pub(crate) fn new(revision: String) -> Self {
        RequestMetrics {
            queue_seconds: metrics::histogram!(QUEUE_SECONDS, "revision" => revision.clone()),
            revision,
            seconds: Default::default(),
            count: Default::default(),
        }
    }

    /// Records one finished request. `status` is None when the client went
    /// away before any response was made: it counts as `4xx`, as nginx's
    /// 499 (client closed request) would, so a client's impatience is not
    /// a server error.
    pub(crate) fn record(&self, took: Duration, cold_start: bool, status: Option<StatusCode>) {
        let class = status.map_or(3, class_index);
        let cold = usize::from(cold_start);
        self.seconds[cold][class]
            .get_or_init(|| {
                metrics::histogram!(
                    REQUEST_SECONDS,
                    "revision" => self.revision.clone(),
                    COLD_START_LABEL => if cold_start { "true" } else { "false" },
                    CODE_CLASS_LABEL => CLASSES[class]
                )
            })
            .record(took.as_secs_f64());
        self.count[class]
            .get_or_init(|| {
                metrics::counter!(
                    REQUESTS_TOTAL,
                    "revision" => self.revision.clone(),
                    CODE_CLASS_LABEL => CLASSES[class]
                )
            })
            .increment(1);
    }

    /// Records the `first_byte` phase of a cold start: from the activator
    /// handing the request that waited for it to the new instance (as soon
    /// as it is ready) to the instance's response head. The app's own
    /// first work (lazy initialisation, a first connection) shows here.
    pub(crate) fn record_first_byte(&self, took: Duration) {
        metrics::histogram!(START_PHASE_SECONDS, "revision" => self.revision.clone(), "phase" => "first_byte")
            .record(took.as_secs_f64());
    }

    /// Records a wait in the activator queue.
    pub(crate) fn record_queue(&self, waited: Duration) {
        self.queue_seconds.record(waited.as_secs_f64());
    }
}

/// The index in [`CLASSES`] of a status code's class.
fn class_index(status: StatusCode) -> usize {
    match status.as_u16() / 100 {
        1 => 0,
        2 => 1,
        3 => 2,
        4 => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::readings::{Readings, ReadingsRecorder};
    use std::sync::Arc;

    #[test]
    fn code_classes_are_knatives() {
        let class =
            |code: u16| CLASSES[class_index(StatusCode::from_u16(code).expect("a valid code"))];
        assert_eq!(class(101), "1xx");
        assert_eq!(class(204), "2xx");
        assert_eq!(class(307), "3xx");
        assert_eq!(class(404), "4xx");
        assert_eq!(class(503), "5xx");
        assert_eq!(class(999), "5xx");
    }

    #[test]
    fn requests_are_split_by_cold_start_and_class() {
        let readings = Arc::new(Readings::default());
        let recorder = ReadingsRecorder(readings.clone());
        metrics::with_local_recorder(&recorder, || {
            let requests = RequestMetrics::new("default/hello-00001".into());
            requests.record(Duration::from_millis(800), true, Some(StatusCode::OK));
            requests.record(Duration::from_millis(2), false, Some(StatusCode::OK));
            requests.record(Duration::from_millis(3), false, Some(StatusCode::OK));
            requests.record(Duration::from_millis(1), false, None);
            requests.record_queue(Duration::from_millis(790));
        });
        let by_cold = readings.histograms(REQUEST_SECONDS, COLD_START_LABEL);
        let count = |cold: &str| -> u64 {
            by_cold
                .iter()
                .filter(|s| s.label == cold)
                .map(|s| s.value.count)
                .sum()
        };
        assert_eq!((count("true"), count("false")), (1, 3));
        let totals = readings.counter_totals(REQUESTS_TOTAL, CODE_CLASS_LABEL);
        assert_eq!(totals.get("2xx"), Some(&3));
        assert_eq!(totals.get("4xx"), Some(&1));
        // The console sums every series of a revision.
        let revision: u64 = readings
            .histograms(REQUEST_SECONDS, "revision")
            .iter()
            .filter(|s| s.label == "default/hello-00001")
            .map(|s| s.value.count)
            .sum();
        assert_eq!(revision, 4);
        let queue = readings.histograms(QUEUE_SECONDS, "revision");
        assert_eq!(queue.len(), 1);
        assert_eq!(queue[0].value.count, 1);
    }
}
