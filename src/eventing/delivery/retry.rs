//! The retry loop around [`EventSender::send`], and the dead-letter event.

use std::time::{Duration, Instant};

use base64::Engine as _;
use http::StatusCode;

use super::DeliveryPolicy;
use super::sender::{Attempt, ERROR_DATA_MAX, EventSender, Failure, Target};
use crate::cloudevent::Event;
use crate::telemetry::trace::Hop;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

/// The end of a delivery with retries.
#[derive(Debug)]
pub(crate) enum Outcome {
    Delivered {
        reply: Option<Event>,
    },
    /// Every attempt failed (or the first failure was not retryable).
    Failed(Failure),
}

/// Sends until the destination accepts, a failure is not retryable, or the
/// policy's retries are used up. Waits between attempts follow the backoff
/// policy, stretched to the destination's Retry-After (capped by
/// `retryAfterMax` when set).
///
/// `observe` sees every attempt's HTTP status (`None`: no response) and
/// duration. Each attempt is a span under `trace`, and its request carries
/// that span's `traceparent`.
pub(crate) async fn deliver_with_retries(
    sender: &EventSender,
    target: &Target,
    event: &Event,
    policy: &DeliveryPolicy,
    trace: &Hop,
    mut observe: impl FnMut(Option<StatusCode>, Duration),
) -> Outcome {
    let mut retry = 0;
    loop {
        let started = Instant::now();
        let span = attempt_span(trace, target, retry);
        let attempt = sender
            .send(target, event, policy.format, policy.timeout, &span)
            .await;
        let failure = match attempt {
            Attempt::Delivered { reply, status } => {
                span.set(|| status_attribute(Some(status)));
                observe(Some(status), started.elapsed());
                return Outcome::Delivered { reply };
            }
            Attempt::Failed(failure) => failure,
        };
        span.set(|| status_attribute(failure.status));
        span.fail(|| failure.message.clone());
        drop(span);
        observe(failure.status, started.elapsed());
        if !failure.retryable || retry >= policy.retry {
            return Outcome::Failed(failure);
        }
        retry += 1;
        tokio::time::sleep(wait_before(policy, retry, failure.retry_after)).await;
    }
}

/// One attempt's span: where it went and which retry it is (0: the first try).
fn attempt_span(trace: &Hop, target: &Target, retry: u32) -> Hop {
    trace.child("delivery.attempt", SpanKind::Client, || {
        vec![
            KeyValue::new("url.full", target.uri.to_string()),
            KeyValue::new("pilotlight.retry", i64::from(retry)),
        ]
    })
}

/// The response's status code; 0 when nothing answered.
fn status_attribute(status: Option<StatusCode>) -> KeyValue {
    let code = status.map_or(0, |s| s.as_u16());
    KeyValue::new("http.response.status_code", i64::from(code))
}

fn wait_before(policy: &DeliveryPolicy, retry: u32, retry_after: Option<Duration>) -> Duration {
    let backoff = policy.backoff(retry);
    let asked = retry_after.map(|asked| match policy.retry_after_max {
        Some(max) => asked.min(max),
        None => asked,
    });
    asked.map_or(backoff, |asked| asked.max(backoff))
}

/// The event as it goes to a dead-letter sink: Knative's error extensions
/// added (the response body base64-encoded and truncated, as Knative does).
pub(crate) fn dead_letter_event(
    event: &Event,
    destination: &impl std::fmt::Display,
    failure: &Failure,
) -> Event {
    let mut dead = event.clone();
    dead.set_attribute("knativeerrordest", destination.to_string());
    // Knative reports a failure without a response as 500.
    let code = failure.status.map_or(500, |s| s.as_u16());
    dead.set_attribute("knativeerrorcode", code.to_string());
    let data = &failure.data[..failure.data.len().min(ERROR_DATA_MAX)];
    dead.set_attribute(
        "knativeerrordata",
        base64::engine::general_purpose::STANDARD.encode(data),
    );
    dead
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_stretches_backoff_up_to_the_cap() {
        let mut p = DeliveryPolicy {
            backoff_delay: Duration::from_millis(100),
            ..Default::default()
        };
        assert_eq!(wait_before(&p, 1, None), Duration::from_millis(200));
        assert_eq!(
            wait_before(&p, 1, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        p.retry_after_max = Some(Duration::from_secs(1));
        assert_eq!(
            wait_before(&p, 1, Some(Duration::from_secs(3))),
            Duration::from_secs(1)
        );
        // Retry-After never shortens the backoff.
        assert_eq!(
            wait_before(&p, 4, Some(Duration::from_millis(1))),
            Duration::from_millis(1600)
        );
    }

    #[test]
    fn dead_letter_event_carries_knative_extensions() {
        let event = crate::cloudevent::test_event("1", "t", None);
        let failure = Failure {
            status: Some(http::StatusCode::BAD_REQUEST),
            retryable: false,
            retry_after: None,
            data: bytes::Bytes::from(vec![b'x'; 5000]),
            message: String::new(),
        };
        let uri: http::Uri = "http://sub.example/x".parse().expect("uri");
        let dead = dead_letter_event(&event, &uri, &failure);
        assert_eq!(
            dead.attribute("knativeerrordest"),
            Some("http://sub.example/x")
        );
        assert_eq!(dead.attribute("knativeerrorcode"), Some("400"));
        let data = base64::engine::general_purpose::STANDARD
            .decode(dead.attribute("knativeerrordata").expect("data"))
            .expect("base64");
        assert_eq!(data.len(), ERROR_DATA_MAX);
    }
}
