//! Replay through the admin API: delivering a trigger's (or a channel
//! Subscription's) events again from a point in time or an offset.
//!
//! `POST /api/v1/triggers/{namespace}/{name}/replay` (and
//! `/api/v1/subscriptions/...`) with a JSON body:
//!
//! - `{"since": "2025-01-31T10:00:00Z" | "10m" | "PT10M"}`: from the first
//!   event stored at or after that time (a duration counts back from now:
//!   `90s`, `10m`, `1h30m`, `2d`, or ISO-8601);
//! - or `{"fromOffset": N}`: from offset N of the log (of every partition
//!   for Kafka);
//! - `"dryRun": true` only counts.
//!
//! The answer (200) is `{"trigger": "ns/name", "dryRun": …, "events": N,
//! "upperBound": true, "positions": [{"lane", "from", "to"}], "note"?}`:
//! `events` are those between the new position and the old, delivered again
//! through the trigger's filter (so an upper bound: it counts the events the
//! filter skips, as the backlog does). Refusals: 400 for a body, time or
//! offset that is wrong (beyond the log, removed by retention, after the
//! trigger's position), 403 without the admin token when the listener is not
//! on loopback, 404 for a trigger that does not run, 409 for a backend that
//! cannot deliver again (RabbitMQ), 502 when the backend failed.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;

use super::reconcile::ControlPlane;
use crate::api::ObjectKey;
use crate::eventing::backend::{LanePosition, RewindError, RewindTo};
use crate::eventing::controller::{Delivering, ReplayError};

/// Who may replay: anyone who reaches a loopback admin listener, else only
/// a request with the admin token (`--admin-token`).
#[derive(Clone)]
pub(crate) struct ReplayAccess {
    pub loopback: bool,
    pub token: Option<Arc<str>>,
}

impl ReplayAccess {
    /// Whether the request may replay, or the message of the 403.
    fn admits(&self, headers: &HeaderMap) -> Result<(), String> {
        if self.loopback {
            return Ok(());
        }
        let Some(token) = &self.token else {
            return Err("replay is refused: the admin listener is not on loopback and pilotlight runs without --admin-token (PILOTLIGHT_ADMIN_TOKEN); start it with one and send it as 'Authorization: Bearer TOKEN'".into());
        };
        let given = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            // Constant time in the token's content (its length is not secret).
            Some(given) if bool::from(given.as_bytes().ct_eq(token.as_bytes())) => Ok(()),
            Some(_) => Err("replay is refused: the admin token in 'Authorization' is not this pilotlight's --admin-token".into()),
            None => Err("replay is refused: the admin listener is not on loopback, so send the admin token (--admin-token / PILOTLIGHT_ADMIN_TOKEN) as 'Authorization: Bearer TOKEN'".into()),
        }
    }
}

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ReplayRequest {
    since: Option<String>,
    from_offset: Option<u64>,
    #[serde(default)]
    dry_run: bool,
}

/// The answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ReplayAnswer {
    trigger: String,
    dry_run: bool,
    events: u64,
    /// Always true: `events` counts the events the filter skips too.
    upper_bound: bool,
    positions: Vec<LanePosition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

fn refuse(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, format!("{message}\n")).into_response()
}

/// Handles one replay request for the trigger or subscription `key`.
pub(crate) async fn replay(
    control: &ControlPlane,
    access: &ReplayAccess,
    which: Delivering,
    key: ObjectKey,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(message) = access.admits(headers) {
        return refuse(StatusCode::FORBIDDEN, message);
    }
    let request: ReplayRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!(
                    "body: {e}; send {{\"since\": \"10m\" or an RFC 3339 time}} or {{\"fromOffset\": N}}, with \"dryRun\": true to only count"
                ),
            );
        }
    };
    let to = match (&request.since, request.from_offset) {
        (Some(since), None) => match parse_since(since, chrono::Utc::now()) {
            Ok(ms) => RewindTo::Time(ms),
            Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("since: {e}")),
        },
        (None, Some(offset)) => RewindTo::Offset(offset),
        _ => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "give exactly one of \"since\" and \"fromOffset\"",
            );
        }
    };
    match control
        .eventing()
        .replay(which, &key, to, request.dry_run)
        .await
    {
        Ok(rewound) => Json(ReplayAnswer {
            trigger: key.to_string(),
            dry_run: request.dry_run,
            events: rewound.events,
            upper_bound: true,
            positions: rewound.positions,
            note: rewound.note,
        })
        .into_response(),
        Err(e) => {
            let status = match &e {
                ReplayError::Unknown(_) => StatusCode::NOT_FOUND,
                ReplayError::Rewind(RewindError::OutOfRange(_)) => StatusCode::BAD_REQUEST,
                ReplayError::Rewind(
                    RewindError::Unsupported(_) | RewindError::NotSubscribed(_),
                ) => StatusCode::CONFLICT,
                ReplayError::Rewind(RewindError::Failed(_)) => StatusCode::BAD_GATEWAY,
            };
            refuse(status, e)
        }
    }
}

/// `since`: an RFC 3339 time, or a duration back from `now` (`90s`, `10m`,
/// `1h30m`, `2d`, `500ms`, or ISO-8601 such as `PT10M`), as ms since the
/// epoch.
pub(crate) fn parse_since(text: &str, now: chrono::DateTime<chrono::Utc>) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(time.timestamp_millis());
    }
    let ago = if text.starts_with('P') {
        crate::api::duck::parse_duration(text)?
    } else {
        short_duration(text).ok_or_else(|| {
            format!(
                "'{text}' is neither an RFC 3339 time (2025-01-31T10:00:00Z) nor a duration back from now (90s, 10m, 1h30m, 2d, PT10M)"
            )
        })?
    };
    let ago = i64::try_from(ago.as_millis()).map_err(|_| format!("'{text}' is too long"))?;
    Ok(now.timestamp_millis().saturating_sub(ago))
}

/// `1h30m`, `10m`, `90s`, `500ms`, `2d`: numbers each with a unit.
fn short_duration(text: &str) -> Option<Duration> {
    let mut rest = text;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return None;
    }
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

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339("2025-01-31T10:00:00Z")
            .expect("time")
            .with_timezone(&chrono::Utc)
    }

    #[test]
    fn since_takes_times_and_durations_back_from_now() {
        let base = now().timestamp_millis();
        assert_eq!(
            parse_since("2025-01-31T09:00:00Z", now()),
            Ok(base - 3_600_000)
        );
        assert_eq!(parse_since("10m", now()), Ok(base - 600_000));
        assert_eq!(parse_since("1h30m", now()), Ok(base - 5_400_000));
        assert_eq!(parse_since("500ms", now()), Ok(base - 500));
        assert_eq!(parse_since("PT10M", now()), Ok(base - 600_000));
    }

    #[test]
    fn since_refuses_what_is_neither_and_says_what_it_takes() {
        for bad in ["", "yesterday", "10", "m10", "10x", "2025-13-01T00:00:00Z"] {
            let error = parse_since(bad, now()).expect_err(bad);
            assert!(
                error.contains("RFC 3339") || error.contains("ISO"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn the_token_is_needed_off_loopback_only() {
        let token = |t: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_str(&format!("Bearer {t}")).expect("header"),
            );
            headers
        };
        let loopback = ReplayAccess {
            loopback: true,
            token: None,
        };
        assert!(loopback.admits(&HeaderMap::new()).is_ok());
        let open = ReplayAccess {
            loopback: false,
            token: None,
        };
        assert!(open.admits(&token("x")).is_err());
        let guarded = ReplayAccess {
            loopback: false,
            token: Some("s3cret-token".into()),
        };
        assert!(guarded.admits(&HeaderMap::new()).is_err());
        assert!(guarded.admits(&token("wrong")).is_err());
        assert!(guarded.admits(&token("s3cret-token")).is_ok());
    }
}
