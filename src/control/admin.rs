//! The admin listener: `/metrics`, `/healthz`, `/readyz`, and the API that
//! `pilotlight get` reads (`/api/v1/{brokers,triggers,services,revisions,routes,sources}`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;

use super::board::Collection;
use super::reconcile::ControlPlane;

#[derive(Clone)]
pub(crate) struct AdminState {
    pub control: Arc<ControlPlane>,
    pub metrics: PrometheusHandle,
    /// Set once the manifests were first applied.
    pub ready: Arc<AtomicBool>,
}

pub(crate) fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/{collection}", get(list))
        .with_state(state)
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
