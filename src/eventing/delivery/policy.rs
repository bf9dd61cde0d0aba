//! The delivery policy resolved from a `DeliverySpec`.

use std::time::Duration;

use super::Target;

use crate::api::duck::{BackoffPolicy, DeliveryFormat, DeliverySpec, parse_duration};

/// Per-attempt timeout when `spec.delivery.timeout` is not set.
pub(super) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Knative's backoff delay when `retry` is set without `backoffDelay`.
const DEFAULT_BACKOFF_DELAY: Duration = Duration::from_millis(200);

/// How to deliver: resolved, validated and ready to use.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DeliveryPolicy {
    /// Retries after the first attempt.
    pub retry: u32,
    pub backoff_policy: BackoffPolicy,
    pub backoff_delay: Duration,
    pub timeout: Duration,
    /// Caps a subscriber's Retry-After; `None`: honoured as sent.
    pub retry_after_max: Option<Duration>,
    pub dead_letter_sink: Option<Target>,
    /// The HTTP mode of every attempt, to the destination and to the
    /// dead-letter sink alike (Knative forces it for both).
    pub format: DeliveryFormat,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        DeliveryPolicy {
            retry: 0,
            backoff_policy: BackoffPolicy::Exponential,
            backoff_delay: DEFAULT_BACKOFF_DELAY,
            timeout: DEFAULT_TIMEOUT,
            retry_after_max: None,
            dead_letter_sink: None,
            format: DeliveryFormat::Binary,
        }
    }
}

impl DeliveryPolicy {
    /// Resolves a spec whose durations and format were validated at load; the dead-letter
    /// sink's URI is resolved by the caller (it may be a reference).
    pub(crate) fn from_spec(spec: Option<&DeliverySpec>, dead_letter_sink: Option<Target>) -> Self {
        let Some(spec) = spec else {
            return DeliveryPolicy::default();
        };
        let duration = |text: &Option<String>| text.as_deref().and_then(|t| parse_duration(t).ok());
        DeliveryPolicy {
            retry: spec.retry.map_or(0, |r| r.max(0) as u32),
            backoff_policy: spec.backoff_policy.unwrap_or_default(),
            backoff_delay: duration(&spec.backoff_delay).unwrap_or(DEFAULT_BACKOFF_DELAY),
            timeout: duration(&spec.timeout).unwrap_or(DEFAULT_TIMEOUT),
            retry_after_max: duration(&spec.retry_after_max),
            dead_letter_sink,
            format: spec.format().unwrap_or_default(),
        }
    }

    /// The wait before retry number `retry` (1-based), as Knative computes it:
    /// linear `delay × n`, exponential `delay × 2^n`.
    pub(crate) fn backoff(&self, retry: u32) -> Duration {
        match self.backoff_policy {
            BackoffPolicy::Linear => self.backoff_delay.saturating_mul(retry),
            BackoffPolicy::Exponential => self
                .backoff_delay
                .saturating_mul(2u32.saturating_pow(retry.min(31))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_follows_knative() {
        let mut p = DeliveryPolicy {
            backoff_delay: Duration::from_millis(100),
            ..Default::default()
        };
        assert_eq!(p.backoff(1), Duration::from_millis(200));
        assert_eq!(p.backoff(3), Duration::from_millis(800));
        p.backoff_policy = BackoffPolicy::Linear;
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(3), Duration::from_millis(300));
        p.backoff_policy = BackoffPolicy::Exponential;
        assert!(p.backoff(200) >= Duration::from_secs(1 << 20));
    }

    #[test]
    fn spec_defaults_match_knative() {
        let spec = DeliverySpec {
            retry: Some(3),
            ..Default::default()
        };
        let p = DeliveryPolicy::from_spec(Some(&spec), None);
        assert_eq!(p.retry, 3);
        assert_eq!(p.backoff_policy, BackoffPolicy::Exponential);
        assert_eq!(p.backoff_delay, Duration::from_millis(200));
        let spec = DeliverySpec {
            backoff_policy: Some(BackoffPolicy::Linear),
            backoff_delay: Some("PT1S".into()),
            timeout: Some("PT5S".into()),
            retry_after_max: Some("PT30S".into()),
            ..Default::default()
        };
        let p = DeliveryPolicy::from_spec(Some(&spec), None);
        assert_eq!(
            (p.backoff_delay, p.timeout, p.retry_after_max),
            (
                Duration::from_secs(1),
                Duration::from_secs(5),
                Some(Duration::from_secs(30))
            )
        );
        assert_eq!(DeliveryPolicy::from_spec(None, None).retry, 0);
        assert_eq!(p.format, DeliveryFormat::Binary);
        let spec = DeliverySpec {
            format: Some("json".into()),
            ..Default::default()
        };
        let p = DeliveryPolicy::from_spec(Some(&spec), None);
        assert_eq!(p.format, DeliveryFormat::Json);
    }
}
