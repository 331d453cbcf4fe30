//! The HTTP API: the only module that knows axum and utoipa.
//!
//! Each submodule owns its routes, DTOs and handlers; this file merges their routers, adds
//! the layers (body limit, tracing), the problem+json fallbacks, `/openapi.json` and `/docs`
//! (Swagger UI, vendored so it works offline) and the web dashboard (`ui.rs`: `/` and
//! `/ui/...`, not part of the spec). [`openapi`] builds the spec that `openapi/openapi.json`
//! must match (see `tests/openapi.rs`).

mod auth;
mod body;
mod create;
mod dto;
mod error;
mod events;
mod health;
mod ingest;
mod jobs;
mod pool;
mod results;
mod server;
mod ui;
mod upload_body;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::extract::MatchedPath;
use tokio_util::sync::CancellationToken;
use tower_http::trace::{DefaultMakeSpan, DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

pub use crate::cluster::Node;
pub use auth::token_digest;
pub use error::{ApiError, Problem};
pub use server::{ConnectionLimits, serve};

use crate::events::EventBus;
use crate::jobs::JobService;
use crate::pool::PoolHandle;
use crate::store::Store;

/// What every handler can reach: the [`Shared`] parts behind one `Arc` (the router, the
/// middleware and each handler clone the state of every request).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    /// The job lifecycle: every write of a job goes through it.
    pub jobs: JobService,
    /// For the readers (results, event streams, lists).
    pub store: Store,
    pub pool: PoolHandle,
    pub events: EventBus,
    /// Largest request body (for NDJSON: line), `--max-body-bytes`.
    pub max_body_bytes: usize,
    /// One permit per byte of JSON request bodies held in memory (`--max-buffered-bytes`).
    pub body_budget: Arc<tokio::sync::Semaphore>,
    /// Cancelled when poold shuts down: long-polls and streams end.
    pub shutdown: CancellationToken,
    /// SHA-256 of the bearer token required on `/v1/*`, when one is set.
    pub api_token: Option<[u8; 32]>,
    /// This poold process, as `GET /v1/nodes` shows it.
    pub node: Arc<Node>,
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
    components(schemas(Problem, dto::ItemLogDto, events::Order))
)]
struct ApiDoc;

/// The routes with their spec, complete (the bearer requirement is added once all paths are in).
fn routes() -> (axum::Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut spec) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(jobs::router())
        .merge(results::router())
        .merge(events::router())
        .merge(pool::router())
        .merge(health::router())
        .split_for_parts();
    utoipa::Modify::modify(&auth::BearerOnV1, &mut spec);
    utoipa::Modify::modify(&jobs::LinksFromCreate, &mut spec);
    (router, spec)
}

/// The OpenAPI document of this build.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().1
}

pub fn router(state: AppState) -> axum::Router {
    let (router, spec) = routes();
    let body_limit = state.max_body_bytes;
    router
        .merge(SwaggerUi::new("/docs").url("/openapi.json", spec))
        .merge(ui::router())
        .fallback(error::route_not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(axum::middleware::from_fn(count_requests))
        .layer(
            // A span per request (method, URI) around every log line a handler writes; no
            // line per request (that is what /metrics counts), a warning per 5xx.
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
                .on_request(())
                .on_response(DefaultOnResponse::new().level(Level::DEBUG))
                .on_failure(DefaultOnFailure::new().level(Level::WARN)),
        )
        .with_state(state)
}

/// Count each request by route template (not by concrete path, to bound the label set).
async fn count_requests(
    path: Option<MatchedPath>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = path.map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    crate::metrics::http_request(route, response.status().as_u16());
    response
}
