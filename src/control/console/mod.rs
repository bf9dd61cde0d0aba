//! The browser console, served by the admin listener at `/`: the mesh as a
//! picture with live numbers, the Services, a tail with CESQL filters and
//! per-event delivery outcomes, and replay.
//!
//! The page is four files embedded in the binary (`assets/`), plain
//! JavaScript modules and SVG with no library and no build step: nothing to
//! fetch, nothing to keep up to date, and it works with no network. What it
//! reads is the admin API (`pilotlight get`'s lists, tail, replay) and the
//! endpoints here:
//!
//! - `GET /api/v1/console/mesh`: the graph ([`mesh`]), refused manifests
//!   first.
//! - `GET /api/v1/console/live`: one frame of figures a second ([`live`]).
//! - `GET /api/v1/console/services`: the Services panel ([`live`]).
//! - `GET /api/v1/cesql/check?expression=…`: whether a CESQL expression
//!   parses: `{"ok": true}`, or `{"ok": false, "error", "line", "column"}`
//!   (always 200: the page checks as the user types).
//! - `POST /api/v1/{brokers,channels}/{namespace}/{name}/deliveries` with
//!   one event (structured JSON, as the tail sends it): for each trigger
//!   (subscription) of that broker (channel), whether its filter passes
//!   the event and how its deliveries of it went, from the dispatchers'
//!   journal (`eventing::trigger::journal`).
//!
//! Everything is read-only but replay, which keeps its own guard (the
//! admin token off loopback). No Secret's data is in any view.

mod live;
mod mesh;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http::HeaderMap;
use serde::{Deserialize, Serialize};

use super::admin::{AdminState, one_event};
use super::board::Collection;
use crate::api::ObjectKey;
use crate::cesql::parser;
use crate::eventing::EventDeliveries;
use crate::eventing::channel;
use mesh::{Mesh, MeshViews};

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/console.js");
const LAYOUT: &str = include_str!("assets/layout.js");
const STYLE: &str = include_str!("assets/console.css");

/// The console's routes, merged into the admin listener's.
pub(crate) fn router() -> Router<AdminState> {
    Router::new()
        .route("/", get(|| asset("text/html; charset=utf-8", INDEX)))
        .route(
            "/console/console.js",
            get(|| asset("text/javascript; charset=utf-8", SCRIPT)),
        )
        .route(
            "/console/layout.js",
            get(|| asset("text/javascript; charset=utf-8", LAYOUT)),
        )
        .route(
            "/console/console.css",
            get(|| asset("text/css; charset=utf-8", STYLE)),
        )
        .route("/api/v1/console/mesh", get(mesh))
        .route("/api/v1/console/live", get(live::live))
        .route("/api/v1/console/services", get(live::services))
        .route("/api/v1/cesql/check", get(check_cesql))
        .route(
            "/api/v1/{collection}/{namespace}/{name}/deliveries",
            post(deliveries),
        )
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (http::header::CONTENT_TYPE, content_type),
            // The page is part of the binary: a new pilotlight, a new page.
            (http::header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn mesh(State(state): State<AdminState>) -> Json<Mesh> {
    let board = state.control.board();
    let list = |collection| async move { board.list(collection, None).await.items };
    let mut flows = list(Collection::Sequences).await;
    flows.extend(list(Collection::Parallels).await);
    let views = MeshViews {
        brokers: list(Collection::Brokers).await,
        triggers: list(Collection::Triggers).await,
        sources: list(Collection::Sources).await,
        services: list(Collection::Services).await,
        channels: list(Collection::Channels).await,
        subscriptions: list(Collection::Subscriptions).await,
        flows,
        jobsinks: list(Collection::JobSinks).await,
        refused: board.refused(),
    };
    Json(Mesh::build(&views))
}

#[derive(Deserialize)]
struct CheckQuery {
    expression: Option<String>,
}

#[derive(Debug, PartialEq, Serialize)]
struct CheckAnswer {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    column: Option<usize>,
}

fn check(expression: &str) -> CheckAnswer {
    match parser::parse(expression) {
        Ok(_) => CheckAnswer {
            ok: true,
            error: None,
            line: None,
            column: None,
        },
        Err(e) => CheckAnswer {
            ok: false,
            error: Some(e.message.clone()),
            line: Some(e.line),
            column: Some(e.column),
        },
    }
}

/// `GET /api/v1/cesql/check?expression=…`.
async fn check_cesql(Query(query): Query<CheckQuery>) -> Response {
    match query.expression {
        Some(expression) => Json(check(&expression)).into_response(),
        None => (
            StatusCode::BAD_REQUEST,
            "query parameter 'expression': the CESQL expression to check\n",
        )
            .into_response(),
    }
}

#[derive(Serialize)]
struct DeliveriesAnswer {
    triggers: Vec<EventDeliveries>,
}

/// `POST /api/v1/{brokers,channels}/{namespace}/{name}/deliveries`.
async fn deliveries(
    State(state): State<AdminState>,
    Path((collection, namespace, name)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = ObjectKey::new(namespace, name);
    let store = match collection.as_str() {
        "brokers" => key,
        "channels" => channel::store_key(&key),
        other => {
            let message = format!(
                "no deliveries for {other}: POST /api/v1/brokers/{{namespace}}/{{name}}/deliveries or /api/v1/channels/...\n"
            );
            return (StatusCode::NOT_FOUND, message).into_response();
        }
    };
    let event = match one_event(&headers, body) {
        Ok(event) => event,
        Err(message) => return (StatusCode::BAD_REQUEST, message).into_response(),
    };
    let triggers = state.control.eventing().deliveries_of(&store, &event).await;
    Json(DeliveriesAnswer { triggers }).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cesql_error_names_its_line_and_column() {
        assert!(check("type = 'a'").ok);
        let answer = check("type = 'a' AND (source = 'b'");
        assert!(!answer.ok);
        assert_eq!(answer.line, Some(1));
        assert!(answer.column.is_some_and(|c| c > 1), "{answer:?}");
        assert!(answer.error.is_some());
    }
}
