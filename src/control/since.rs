//! The `since` of `tail` and `replay`: where to start, as an RFC 3339
//! time or a duration back from now, in one syntax for both.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Why a `since` was not understood.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SinceError {
    #[error(
        "'{0}' is neither an RFC 3339 time (2025-01-31T10:00:00Z) nor a duration back from now (90s, 10m, 1h30m, 2d, 500ms, PT10M)"
    )]
    Unrecognized(String),
    /// An ISO-8601 duration that does not parse, with why.
    #[error("{0}")]
    Iso(String),
    #[error("'{0}' is too far back")]
    TooFar(String),
}

/// An RFC 3339 time, or the time a duration before `now`: `90s`, `10m`,
/// `1h30m`, `2d`, `500ms` (numbers each with a unit), or ISO-8601 such as
/// `PT10M`.
pub(crate) fn parse_since(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, SinceError> {
    let text = text.trim();
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    let ago = if text.starts_with('P') {
        crate::api::duck::parse_duration(text).map_err(SinceError::Iso)?
    } else {
        short_duration(text).ok_or_else(|| SinceError::Unrecognized(text.to_owned()))?
    };
    chrono::TimeDelta::from_std(ago)
        .ok()
        .and_then(|delta| now.checked_sub_signed(delta))
        .ok_or_else(|| SinceError::TooFar(text.to_owned()))
}

/// `1h30m`, `10m`, `90s`, `500ms`, `2d`: numbers each with a unit.
fn short_duration(text: &str) -> Option<Duration> {
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let value: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let millis = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return None,
        };
        total = total.checked_add(Duration::from_millis(value.checked_mul(millis)?))?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2025-01-31T10:00:00Z")
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn since_takes_times_and_durations_back_from_now() {
        let at = |s: &str| parse_since(s, now()).map(|t| t.to_rfc3339());
        assert_eq!(
            at("2025-01-31T09:00:00Z").as_deref(),
            Ok("2025-01-31T09:00:00+00:00")
        );
        assert_eq!(
            at("2025-01-31T10:00:00+01:00").as_deref(),
            Ok("2025-01-31T09:00:00+00:00")
        );
        assert_eq!(at("10m").as_deref(), Ok("2025-01-31T09:50:00+00:00"));
        assert_eq!(at("1h30m").as_deref(), Ok("2025-01-31T08:30:00+00:00"));
        assert_eq!(at("1d").as_deref(), Ok("2025-01-30T10:00:00+00:00"));
        assert_eq!(at("90s").as_deref(), Ok("2025-01-31T09:58:30+00:00"));
        assert_eq!(at("PT10M").as_deref(), Ok("2025-01-31T09:50:00+00:00"));
        let ms = parse_since("500ms", now()).map(|t| t.timestamp_millis());
        assert_eq!(ms, Ok(now().timestamp_millis() - 500));
    }

    #[test]
    fn since_refuses_what_is_neither_and_says_what_it_takes() {
        for bad in [
            "",
            "yesterday",
            "10",
            "m10",
            "10x",
            "10 minutes",
            "-5m",
            "2025-13-01T00:00:00Z",
        ] {
            let error = parse_since(bad, now()).expect_err(bad).to_string();
            assert!(error.contains("RFC 3339"), "{bad}: {error}");
        }
        assert!(matches!(
            parse_since("PT10X", now()),
            Err(SinceError::Iso(_))
        ));
        assert!(matches!(
            parse_since("9999999999d", now()),
            Err(SinceError::TooFar(_))
        ));
    }
}
