//! The wall clock PingSources tick on.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// Where the wall clock comes from. Ticks are wall-clock instants; sleeping
/// uses tokio time, so a test clock derived from `tokio::time::Instant`
/// makes the loop run on paused time.
pub(crate) trait Clock: Send + Sync + 'static {
    fn now_utc(&self) -> DateTime<Utc>;

    /// How long to sleep for `wall` of this clock's time to pass.
    fn sleep_for(&self, wall: Duration) -> Duration {
        wall
    }
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now_utc(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The system clock sped up `factor` times from `origin`: with 60, a
/// per-minute schedule ticks every second. Replicas given the same origin
/// and factor agree on the time, as replicas on the system clock do.
#[derive(Debug, Clone, Copy)]
struct Accelerated {
    origin: DateTime<Utc>,
    factor: u32,
}

impl Clock for Accelerated {
    fn now_utc(&self) -> DateTime<Utc> {
        let factor = i32::try_from(self.factor).unwrap_or(i32::MAX);
        self.origin + (Utc::now() - self.origin) * factor
    }

    fn sleep_for(&self, wall: Duration) -> Duration {
        wall / self.factor.max(1)
    }
}

/// The clock PingSources tick on ([`PingClock::default`]: the system's). A
/// setting of the server, so that tests of several replicas can run a
/// per-minute schedule in seconds.
#[derive(Clone)]
pub struct PingClock(Arc<dyn Clock>);

impl PingClock {
    /// The system clock sped up `factor` times from now (tests and demos:
    /// give every replica a clone of the same one).
    pub fn accelerated(factor: u32) -> PingClock {
        PingClock(Arc::new(Accelerated {
            origin: Utc::now(),
            factor: factor.max(1),
        }))
    }

    pub(crate) fn clock(&self) -> Arc<dyn Clock> {
        self.0.clone()
    }
}

impl Default for PingClock {
    fn default() -> Self {
        PingClock(Arc::new(SystemClock))
    }
}

impl std::fmt::Debug for PingClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PingClock")
    }
}
