//! `/healthz` (the process answers), `/readyz` (database reachable, a worker ready) and
//! `/metrics` (Prometheus text format; see `crate::metrics`).

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState};
use crate::pool::WorkerState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_health))
        .routes(routes!(get_readiness))
        .routes(routes!(get_metrics))
}

/// Prometheus metrics in the text exposition format: items by outcome, item run time, queued
/// items and the oldest unfinished job's age, jobs by status, worker exits by reason, HTTP
/// requests by route and status, open event streams.
#[utoipa::path(get, path = "/metrics", tag = "health", responses(
    (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain; version=0.0.4"),
))]
async fn get_metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let (jobs, oldest_age) = state.store.metrics_snapshot().await?;
    let queued = state.store.unfinished_items().await?;
    crate::metrics::set_store_gauges(&jobs, queued, oldest_age);
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(),
    ))
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `ready`.
    status: &'static str,
    /// Workers that said hello and can take work (readiness only).
    #[serde(skip_serializing_if = "Option::is_none")]
    workers_ready: Option<usize>,
}

/// Liveness: the server answers.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
async fn get_health() -> Json<Health> {
    Json(Health {
        status: "ok",
        workers_ready: None,
    })
}

/// Readiness: the database answers, writes to it succeed (not while the disk is full) and at
/// least one worker is ready.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, body = Health),
    (status = 503, description = "Not ready; `detail` says why", body = super::Problem, content_type = "application/problem+json"),
))]
async fn get_readiness(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    if state.shutdown.is_cancelled() {
        return Err(ApiError::ShuttingDown);
    }
    state
        .store
        .ping()
        .await
        .map_err(|e| ApiError::NotReady(format!("database unreachable: {e}")))?;
    if let Some(failure) = state.store.write_failure() {
        return Err(ApiError::NotReady(format!(
            "database writes are failing: {failure}"
        )));
    }
    let pool = state.pool.snapshot().await?;
    let ready = pool
        .workers
        .iter()
        .filter(|w| w.state != WorkerState::Starting)
        .count();
    // A node without workers (`--workers 0`, PostgreSQL) serves the API for the other nodes.
    if ready == 0 && pool.size > 0 {
        let why = pool
            .last_error
            .unwrap_or_else(|| "workers are starting".into());
        return Err(ApiError::NotReady(format!("no worker is ready: {why}")));
    }
    Ok(Json(Health {
        status: "ready",
        workers_ready: Some(ready),
    }))
}
