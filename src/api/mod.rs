//! The HTTP API: the only module that knows axum and utoipa.
//!
//! Each submodule owns its routes, DTOs and handlers; this file merges their routers, adds
//! the layers (body limit, tracing), the problem+json fallbacks, `/openapi.json` and `/docs`
//! (Swagger UI, vendored so it works offline). [`openapi`] builds the spec that
//! `openapi/openapi.json` must match (see `tests/openapi.rs`).

mod dto;
mod error;
mod events;
mod health;
mod ingest;
mod jobs;
mod pool;
mod results;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

pub use error::{ApiError, Problem};

use crate::events::EventBus;
use crate::pool::PoolHandle;
use crate::store::Store;

/// Limits on what a request may ask for.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_items_per_job: usize,
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub pool: PoolHandle,
    pub events: EventBus,
    pub limits: Arc<Limits>,
    /// Workers in the pool (for the automatic chunksize).
    pub pool_size: usize,
    /// Cancelled when poold shuts down: long-polls and streams end.
    pub shutdown: CancellationToken,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "poold",
        description = "Python's multiprocessing.Pool as a network service: map jobs over HTTP, \
                       stored in SQLite, run on a pool of worker processes. Errors are RFC 9457 \
                       problem documents (`application/problem+json`) with a stable `code`.",
        license(name = "MIT")
    ),
    tags(
        (name = "jobs", description = "Map jobs, their results and their event streams"),
        (name = "pool", description = "The worker pool and its functions"),
        (name = "health", description = "Liveness and readiness"),
    ),
    components(schemas(Problem))
)]
struct ApiDoc;

fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(jobs::router())
        .merge(results::router())
        .merge(events::router())
        .merge(pool::router())
        .merge(health::router())
}

/// The OpenAPI document of this build.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
}

pub fn router(state: AppState) -> axum::Router {
    let (router, spec) = routes().split_for_parts();
    let body_limit = state.limits.max_body_bytes;
    router
        .merge(SwaggerUi::new("/docs").url("/openapi.json", spec))
        .fallback(error::route_not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
