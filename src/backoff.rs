//! Exponential backoff for whatever retries a remote peer: a watch of the
//! API server, a write of a Deployment, a RabbitMQ connection or consumer,
//! a dead-letter sink, a broker backend that failed to start.

use std::time::Duration;

/// Delays doubling from `base` up to `max`; [`Backoff::reset`] after a
/// success starts again from `base`.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    base: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            next: base,
            base,
            max,
        }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.base;
    }
}

/// 1 s doubling to 60 s.
impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_secs(1), Duration::from_secs(60))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_one_second_to_a_minute_and_resets() {
        let mut backoff = Backoff::default();
        let delays: Vec<u64> = (0..8).map(|_| backoff.next_delay().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_secs(1));
    }
}
