//! The metrics' current values, readable inside the process: the console's
//! live numbers are the very counters `/metrics` exports, read here rather
//! than parsed back out of the Prometheus text.
//!
//! A `metrics` recorder installed beside the Prometheus one (both get every
//! update). Counters and gauges keep their value; a gauge also keeps its
//! recent changes (instances over time); a histogram keeps its count, its
//! sum and its last few values (the last cold starts). Nothing runs in the
//! background: values change when the code records them, and are read when
//! the console asks.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use metrics::{
    Counter, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

/// Changes a gauge remembers.
const GAUGE_HISTORY: usize = 720;
/// Values a histogram remembers.
const HISTOGRAM_RECENT: usize = 8;

/// Milliseconds since the Unix epoch, the time of a remembered value.
pub(crate) type UnixMillis = i64;

fn now_millis() -> UnixMillis {
    chrono::Utc::now().timestamp_millis()
}

/// Every metric recorded in this process, by name and labels.
#[derive(Default)]
pub(crate) struct Readings {
    metrics: RwLock<HashMap<Key, Reading>>,
}

#[derive(Clone)]
enum Reading {
    Counter(Arc<AtomicU64>),
    Gauge(Arc<TrackedGauge>),
    Histogram(Arc<Summary>),
}

/// A gauge's value (as `f64` bits) and its last changes.
#[derive(Default)]
struct TrackedGauge {
    bits: AtomicU64,
    history: Mutex<VecDeque<(UnixMillis, f64)>>,
}

impl TrackedGauge {
    fn value(&self) -> f64 {
        f64::from_bits(self.bits.load(Ordering::Acquire))
    }

    fn update(&self, change: impl Fn(f64) -> f64) {
        let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        let old = self.value();
        let new = change(old);
        self.bits.store(new.to_bits(), Ordering::Release);
        if new != old || history.is_empty() {
            if history.len() == GAUGE_HISTORY {
                history.pop_front();
            }
            history.push_back((now_millis(), new));
        }
    }
}

impl GaugeFn for TrackedGauge {
    fn increment(&self, value: f64) {
        self.update(|old| old + value);
    }

    fn decrement(&self, value: f64) {
        self.update(|old| old - value);
    }

    fn set(&self, value: f64) {
        self.update(|_| value);
    }
}

/// A histogram's count, sum (in millionths, so it adds atomically) and last
/// values.
#[derive(Default)]
struct Summary {
    count: AtomicU64,
    sum_micros: AtomicU64,
    recent: Mutex<VecDeque<(UnixMillis, f64)>>,
}

impl HistogramFn for Summary {
    fn record(&self, value: f64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        // Negative values do not occur in pilotlight's histograms (times,
        // sizes); they would count as zero.
        let micros = (value.max(0.0) * 1e6) as u64;
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if recent.len() == HISTOGRAM_RECENT {
            recent.pop_front();
        }
        recent.push_back((now_millis(), value));
    }
}

/// One series: the value of one label, and its reading.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Series<T> {
    /// The value of the label asked for; empty when the series lacks it.
    pub label: String,
    pub value: T,
}

/// A gauge's reading.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct GaugeReading {
    pub value: f64,
    /// Its last changes with when they happened, oldest first.
    pub changes: Vec<(UnixMillis, f64)>,
}

/// A histogram's reading.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct HistogramReading {
    pub count: u64,
    pub sum: f64,
    /// The last values with when they were recorded, oldest first.
    pub recent: Vec<(UnixMillis, f64)>,
}

impl Readings {
    /// The readings of the process's recorder (see `super::metrics_handle`).
    pub(crate) fn global() -> Arc<Readings> {
        super::installed_readings()
    }

    fn entry(&self, key: &Key, make: impl FnOnce() -> Reading) -> Reading {
        if let Some(reading) = self
            .metrics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
        {
            return reading.clone();
        }
        let mut metrics = self.metrics.write().unwrap_or_else(PoisonError::into_inner);
        metrics.entry(key.clone()).or_insert_with(make).clone()
    }

    fn series<T>(
        &self,
        name: &str,
        label: &str,
        read: impl Fn(&Key, &Reading) -> Option<T>,
    ) -> Vec<Series<T>> {
        let metrics = self.metrics.read().unwrap_or_else(PoisonError::into_inner);
        metrics
            .iter()
            .filter(|(key, _)| key.name() == name)
            .filter_map(|(key, reading)| {
                let value = read(key, reading)?;
                let label = key
                    .labels()
                    .find(|l| l.key() == label)
                    .map(|l| l.value().to_owned())
                    .unwrap_or_default();
                Some(Series { label, value })
            })
            .collect()
    }

    /// The counter `name`'s series, by the value of `label`, with every
    /// other label's value (such as a delivery's `code`) as asked by `other`.
    pub(crate) fn counters(
        &self,
        name: &str,
        label: &str,
        other: &str,
    ) -> Vec<Series<(String, u64)>> {
        self.series(name, label, |key, reading| match reading {
            Reading::Counter(value) => {
                let other = key
                    .labels()
                    .find(|l| l.key() == other)
                    .map(|l| l.value().to_owned())
                    .unwrap_or_default();
                Some((other, value.load(Ordering::Relaxed)))
            }
            _ => None,
        })
    }

    /// The counter `name`, summed by the value of `label`.
    pub(crate) fn counter_totals(&self, name: &str, label: &str) -> HashMap<String, u64> {
        let mut totals = HashMap::new();
        for series in self.counters(name, label, "") {
            *totals.entry(series.label).or_default() += series.value.1;
        }
        totals
    }

    /// The gauge `name`'s series by `label`: its value and its changes.
    pub(crate) fn gauges(&self, name: &str, label: &str) -> Vec<Series<GaugeReading>> {
        self.series(name, label, |_, reading| match reading {
            Reading::Gauge(gauge) => {
                let history = gauge.history.lock().unwrap_or_else(PoisonError::into_inner);
                Some(GaugeReading {
                    value: gauge.value(),
                    changes: history.iter().copied().collect(),
                })
            }
            _ => None,
        })
    }

    /// The histogram `name`'s series by `label`.
    pub(crate) fn histograms(&self, name: &str, label: &str) -> Vec<Series<HistogramReading>> {
        self.series(name, label, |_, reading| match reading {
            Reading::Histogram(summary) => {
                let recent = summary
                    .recent
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                Some(HistogramReading {
                    count: summary.count.load(Ordering::Relaxed),
                    sum: summary.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
                    recent: recent.iter().copied().collect(),
                })
            }
            _ => None,
        })
    }
}

/// The recorder: the shared readings, registered beside Prometheus.
pub(crate) struct ReadingsRecorder(pub Arc<Readings>);

impl Recorder for ReadingsRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        match self.0.entry(key, || Reading::Counter(Arc::default())) {
            Reading::Counter(value) => Counter::from_arc(value),
            // The same name registered as another type: keep the first.
            _ => Counter::noop(),
        }
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        match self.0.entry(key, || Reading::Gauge(Arc::default())) {
            Reading::Gauge(gauge) => Gauge::from_arc(gauge),
            _ => Gauge::noop(),
        }
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        match self.0.entry(key, || Reading::Histogram(Arc::default())) {
            Reading::Histogram(summary) => Histogram::from_arc(summary),
            _ => Histogram::noop(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder() -> (Arc<Readings>, ReadingsRecorder) {
        let readings = Arc::new(Readings::default());
        (readings.clone(), ReadingsRecorder(readings))
    }

    #[test]
    fn counters_sum_by_label() {
        let (readings, recorder) = recorder();
        metrics::with_local_recorder(&recorder, || {
            metrics::counter!("deliveries", "trigger" => "a", "code" => "200").increment(3);
            metrics::counter!("deliveries", "trigger" => "a", "code" => "503").increment(1);
            metrics::counter!("deliveries", "trigger" => "b", "code" => "200").increment(2);
        });
        let totals = readings.counter_totals("deliveries", "trigger");
        assert_eq!(totals.get("a"), Some(&4));
        assert_eq!(totals.get("b"), Some(&2));
        let mut a: Vec<_> = readings
            .counters("deliveries", "trigger", "code")
            .into_iter()
            .filter(|s| s.label == "a")
            .map(|s| s.value)
            .collect();
        a.sort();
        assert_eq!(a, [("200".to_owned(), 3), ("503".to_owned(), 1)]);
    }

    #[test]
    fn a_gauge_remembers_its_changes_only() {
        let (readings, recorder) = recorder();
        metrics::with_local_recorder(&recorder, || {
            let gauge = metrics::gauge!("instances", "revision" => "r");
            gauge.set(0.0);
            gauge.set(0.0);
            gauge.set(1.0);
            gauge.increment(1.0);
            gauge.set(2.0);
        });
        let series = readings.gauges("instances", "revision");
        let reading = &series[0].value;
        assert_eq!(reading.value, 2.0);
        let values: Vec<f64> = reading.changes.iter().map(|(_, v)| *v).collect();
        assert_eq!(values, [0.0, 1.0, 2.0]);
    }

    #[test]
    fn a_histogram_keeps_count_sum_and_its_last_values() {
        let (readings, recorder) = recorder();
        metrics::with_local_recorder(&recorder, || {
            let histogram = metrics::histogram!("start_seconds", "revision" => "r");
            for i in 0..10 {
                histogram.record(f64::from(i) * 0.5);
            }
        });
        let reading = &readings.histograms("start_seconds", "revision")[0].value;
        assert_eq!(reading.count, 10);
        assert!((reading.sum - 22.5).abs() < 1e-6);
        let recent: Vec<f64> = reading.recent.iter().map(|(_, v)| *v).collect();
        assert_eq!(recent, [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5]);
    }
}
