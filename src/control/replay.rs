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

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;

use super::reconcile::ControlPlane;
use super::since::parse_since;
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
            Ok(time) => RewindTo::Time(time.timestamp_millis()),
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

#[cfg(test)]
mod tests {
    use super::*;

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
