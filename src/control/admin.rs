//! The admin listener: the browser console at `/` (see `console`),
//! `/metrics`, `/healthz`, `/readyz`, the API that
//! `pilotlight get` reads (`/api/v1/{brokers,triggers,services,revisions,routes,sources,jobsinks}`),
//! replay (`POST /api/v1/triggers/{namespace}/{name}/replay` and
//! `POST /api/v1/subscriptions/{namespace}/{name}/replay`, which `pilotlight
//! replay` calls; the body, answer and refusals are in the `replay` module:
//! refused with 403 unless this listener is on loopback or the request
//! carries `Authorization: Bearer` with `--admin-token`), and the job
//! endpoint JobSinks' events are delivered to
//! (`POST /internal/v1/jobsinks/{namespace}/{name}`; its contract is in
//! `serving::jobs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http::HeaderMap;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;

use super::board::Collection;
use super::kubernetes::peers::PeerToken;
use super::reconcile::ControlPlane;
use super::replay::{self, ReplayAccess};
use crate::api::ObjectKey;
use crate::cloudevent::{Event, Mode, parse_http};
use crate::eventing::controller::Delivering;
use crate::serving::autoscaler::ClusterStats;
use crate::serving::autoscaler::peers::{STATS_PATH, StatsReport};
use crate::serving::jobs::{JobError, JobSinks};

#[derive(Clone)]
pub(crate) struct AdminState {
    pub control: Arc<ControlPlane>,
    pub metrics: PrometheusHandle,
    /// Set once the manifests were first applied.
    pub ready: Arc<AtomicBool>,
    /// Kubernetes mode: where the other replicas' autoscaling samples go
    /// while this replica leads.
    pub peers: Option<Peers>,
    /// Who may replay.
    pub replay: ReplayAccess,
    /// With authentication on: pilotlight's own OIDC issuer, whose
    /// discovery document and JWKS this listener serves.
    pub issuer: Option<Arc<crate::auth::Issuer>>,
}

/// What the leader needs to take the other replicas' samples.
#[derive(Clone)]
pub(crate) struct Peers {
    pub cluster: Arc<ClusterStats>,
    pub token: PeerToken,
}

pub(crate) fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/{collection}", get(list))
        .route(
            "/api/v1/{collection}/{namespace}/{name}/replay",
            post(replay_delivering),
        )
        .route(
            "/api/v1/brokers/{namespace}/{name}/events",
            get(super::tail::broker_events),
        )
        .route(
            "/api/v1/channels/{namespace}/{name}/events",
            get(super::tail::channel_events),
        )
        .route(STATS_PATH, post(receive_stats))
        .route(crate::auth::issuer::DISCOVERY_PATH, get(oidc_discovery))
        .route(crate::auth::issuer::JWKS_PATH, get(oidc_jwks))
        .route(
            &format!("{JOBSINKS_PATH}/{{namespace}}/{{name}}"),
            post(run_job),
        )
        .merge(super::console::router())
        .with_state(state)
}

/// pilotlight's OIDC discovery document (authentication on), so that
/// subscribers verify the tokens of its deliveries as any issuer's.
async fn oidc_discovery(State(state): State<AdminState>) -> Response {
    match &state.issuer {
        Some(issuer) => axum::Json(issuer.discovery()).into_response(),
        None => no_issuer(),
    }
}

/// pilotlight's JWKS: the public key of its tokens.
async fn oidc_jwks(State(state): State<AdminState>) -> Response {
    match &state.issuer {
        Some(issuer) => axum::Json(issuer.jwks()).into_response(),
        None => no_issuer(),
    }
}

fn no_issuer() -> Response {
    (
        StatusCode::NOT_FOUND,
        "authentication is off: pilotlight signs no tokens (start it with --authentication-oidc)\n",
    )
        .into_response()
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        "ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "loading manifests\n").into_response()
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    state.control.board().record_metrics().await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// A follower's autoscaling samples ([`StatsReport`]): 204 when taken, 401
/// without the replicas' token, 409 when this replica does not lead (the
/// sender looks the leader up again), 404 with one replica.
async fn receive_stats(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(peers) = &state.peers else {
        return (StatusCode::NOT_FOUND, "one replica: no samples to take\n").into_response();
    };
    let authorization = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !peers.token.admits(authorization) {
        return (
            StatusCode::UNAUTHORIZED,
            "header 'authorization': the replicas' bearer token is required\n",
        )
            .into_response();
    }
    let report: StatsReport = match serde_json::from_slice(&body) {
        Ok(report) => report,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("body: not a stats report: {e}\n"),
            )
                .into_response();
        }
    };
    if peers.cluster.receive(report, tokio::time::Instant::now()) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (StatusCode::CONFLICT, "this replica does not lead\n").into_response()
    }
}

/// `POST /api/v1/{triggers,subscriptions}/{namespace}/{name}/replay`.
async fn replay_delivering(
    State(state): State<AdminState>,
    Path((collection, namespace, name)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let delivering = match collection.as_str() {
        "triggers" => Delivering::Trigger,
        "subscriptions" => Delivering::Subscription,
        other => {
            let message = format!(
                "no replay for {other}: POST /api/v1/triggers/{{namespace}}/{{name}}/replay or /api/v1/subscriptions/...\n"
            );
            return (StatusCode::NOT_FOUND, message).into_response();
        }
    };
    let key = ObjectKey::new(namespace, name);
    replay::replay(
        &state.control,
        &state.replay,
        delivering,
        key,
        &headers,
        body,
    )
    .await
}

/// Where the job endpoint is: `{JOBSINKS_PATH}/{namespace}/{name}`.
const JOBSINKS_PATH: &str = "/internal/v1/jobsinks";

/// The path of a JobSink's job endpoint on the admin listener.
pub(crate) fn jobsink_path(key: &ObjectKey) -> String {
    format!("{JOBSINKS_PATH}/{}/{}", key.namespace, key.name)
}

/// The URL of a JobSink's job endpoint, as this process reaches its own
/// admin listener.
pub(crate) fn jobsink_url(jobs: &JobSinks, key: &ObjectKey) -> String {
    format!("{}{}", jobs.endpoint_base(), jobsink_path(key))
}

/// Runs the job of the one CloudEvent in the request and answers once it
/// ended: 200 with its record (succeeded or failed), 400 for no valid
/// event, 404 for an unknown JobSink, 503 when jobs cannot start (see
/// `serving::jobs`).
async fn run_job(
    State(state): State<AdminState>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = ObjectKey::new(namespace, name);
    let event = match one_event(&headers, body) {
        Ok(event) => event,
        Err(message) => return (StatusCode::BAD_REQUEST, message).into_response(),
    };
    match state.control.jobs().run(&key, event).await {
        Ok(record) => Json(record).into_response(),
        Err(e @ JobError::UnknownSink(_)) => {
            (StatusCode::NOT_FOUND, format!("{e}\n")).into_response()
        }
        Err(e @ (JobError::CannotStart { .. } | JobError::Stopping)) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response()
        }
    }
}

/// The one CloudEvent of a request (binary or structured mode), or why
/// there is not exactly one (the message of a 400).
pub(crate) fn one_event(headers: &HeaderMap, body: Bytes) -> Result<Event, String> {
    match parse_http(headers, body) {
        Ok((Mode::Batch, _)) => Err("a batch of events: send one event per request\n".into()),
        Ok((_, mut events)) if events.len() == 1 => Ok(events.remove(0)),
        Ok(_) => Err("send exactly one event\n".into()),
        Err(e) => Err(format!("{e}\n")),
    }
}

#[derive(Deserialize)]
struct NamespaceQuery {
    namespace: Option<String>,
}

async fn list(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    Query(q): Query<NamespaceQuery>,
) -> Response {
    let Some(collection) = Collection::named(&name) else {
        return (
            StatusCode::NOT_FOUND,
            format!(
                "no collection '{name}' in /api/v1/: it lists {}\n",
                Collection::names()
            ),
        )
            .into_response();
    };
    let board = state.control.board();
    Json(board.list(collection, q.namespace.as_deref()).await).into_response()
}
