//! The load the proxy counts for one revision, sampled by the scaler.
//!
//! Like Knative's queue-proxy, concurrency is reported as the exact
//! time-weighted average of requests in flight between two samples (the
//! integral of in-flight over time, divided by the time), so a burst shorter
//! than the sampling period still counts for what it was. Requests waiting in
//! the activator for an instance count too, as Knative's activator reports
//! them: waiting demand is what scales a revision up from zero.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// One sample of a revision's load since the previous sample.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Sample {
    /// Time-weighted average of requests in flight.
    pub average_concurrency: f64,
    /// Requests started per second.
    pub requests_per_second: f64,
}

/// Request counts for one revision, shared (`Arc`) by the proxy and the scaler.
#[derive(Debug)]
pub(crate) struct RevisionStats {
    // An uncontended mutex costs about as much as a couple of atomics, and
    // keeps the integral exact; it is never held across an await.
    inner: Mutex<Integral>,
}

#[derive(Debug)]
struct Integral {
    in_flight: usize,
    /// When `in_flight` last changed (or was last integrated).
    since: Instant,
    /// ∫ in_flight dt since the previous sample, in request-seconds.
    area: f64,
    started: u64,
    previous_sample: Instant,
    /// Kept for the unit tests only.
    #[cfg(test)]
    last_request_at: Option<Instant>,
}

impl Integral {
    fn advance(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.since);
        self.area += self.in_flight as f64 * dt.as_secs_f64();
        self.since = self.since.max(now);
    }
}

impl Default for RevisionStats {
    fn default() -> Self {
        Self::new(Instant::now())
    }
}

impl RevisionStats {
    pub(crate) fn new(now: Instant) -> Self {
        RevisionStats {
            inner: Mutex::new(Integral {
                in_flight: 0,
                since: now,
                area: 0.0,
                started: 0,
                previous_sample: now,
                #[cfg(test)]
                last_request_at: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Integral> {
        // The critical sections only do arithmetic, so a poisoned lock still
        // holds consistent numbers.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request to the revision began (or began waiting for an instance).
    pub(crate) fn request_started(&self) {
        let now = Instant::now();
        let mut s = self.lock();
        s.advance(now);
        s.in_flight += 1;
        s.started += 1;
        #[cfg(test)]
        {
            s.last_request_at = Some(now);
        }
    }

    /// A request counted by [`RevisionStats::request_started`] is done.
    pub(crate) fn request_finished(&self) {
        let now = Instant::now();
        let mut s = self.lock();
        s.advance(now);
        s.in_flight = s.in_flight.saturating_sub(1);
        #[cfg(test)]
        {
            s.last_request_at = Some(now);
        }
    }

    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// When a request last started or finished; None if none ever did.
    #[cfg(test)]
    pub(crate) fn last_request_at(&self) -> Option<Instant> {
        self.lock().last_request_at
    }

    /// The load since the previous sample, and starts a new one.
    pub(crate) fn take_sample(&self, now: Instant) -> Sample {
        let mut s = self.lock();
        s.advance(now);
        let elapsed = now.saturating_duration_since(s.previous_sample);
        let sample = if elapsed < Duration::from_micros(1) {
            // Two samples at the same instant: the current count is the only
            // honest answer, and no time passed for a rate.
            Sample {
                average_concurrency: s.in_flight as f64,
                requests_per_second: 0.0,
            }
        } else {
            let secs = elapsed.as_secs_f64();
            Sample {
                average_concurrency: s.area / secs,
                requests_per_second: s.started as f64 / secs,
            }
        };
        s.area = 0.0;
        s.started = 0;
        s.previous_sample = s.previous_sample.max(now);
        sample
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    #[tokio::test(start_paused = true)]
    async fn sample_is_the_time_weighted_average_of_in_flight() {
        let stats = RevisionStats::new(Instant::now());
        stats.request_started();
        stats.request_started();
        advance(Duration::from_millis(250)).await;
        stats.request_finished();
        advance(Duration::from_millis(250)).await;
        stats.request_finished();
        assert_eq!(stats.in_flight(), 0);
        advance(Duration::from_millis(500)).await;
        // 2 for 0.25s + 1 for 0.25s over 1s.
        let s = stats.take_sample(Instant::now());
        assert!((s.average_concurrency - 0.75).abs() < 1e-9, "{s:?}");
        assert!((s.requests_per_second - 2.0).abs() < 1e-9, "{s:?}");

        // A request still in flight carries over into the next sample.
        stats.request_started();
        advance(Duration::from_secs(2)).await;
        let s = stats.take_sample(Instant::now());
        assert!((s.average_concurrency - 1.0).abs() < 1e-9, "{s:?}");
        assert!((s.requests_per_second - 0.5).abs() < 1e-9, "{s:?}");
        advance(Duration::from_secs(1)).await;
        let s = stats.take_sample(Instant::now());
        assert!((s.average_concurrency - 1.0).abs() < 1e-9, "{s:?}");
        assert_eq!(s.requests_per_second, 0.0);
        assert_eq!(
            stats.last_request_at(),
            Some(Instant::now() - Duration::from_secs(3))
        );
    }
}
