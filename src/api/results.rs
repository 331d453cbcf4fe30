//! `/v1/jobs/{id}/results`: a job's results in index order, as pages or as one NDJSON stream
//! (read a page at a time from the store, so memory stays bounded whatever the job's size).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::dto::ResultDto;
use super::error::Query;
use super::jobs::{parse_id, wait_for_job};
use super::{ApiError, AppState, Problem};
use crate::model::{ItemResult, JobId};

const DEFAULT_PAGE: u32 = 1000;
const MAX_PAGE: u32 = 10_000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_results))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ResultsQuery {
    /// First item index to return, 0 to 9223372036854775807 (default 0).
    #[param(minimum = 0, maximum = 9223372036854775807_i64)]
    offset: Option<u64>,
    /// Page size, 1 to 10000 (default 1000). Ignored for NDJSON, which streams every result.
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<u32>,
    /// First wait up to this many seconds (at most 300) for the job to finish: `Pool.map`.
    wait: Option<f64>,
    /// `true`: only the items whose result is an error (still in index order; `offset` and
    /// `next_offset` are still item indexes). Default false. Applies to NDJSON too.
    failed: Option<bool>,
}

#[derive(Debug, serde::Serialize, ToSchema)]
pub struct ResultPage {
    /// In index order; only items that have a result.
    results: Vec<ResultDto>,
    /// Pass as `offset` for the next page; null when the job is finished and nothing follows.
    next_offset: Option<u64>,
}

/// Results in index order, paged; or every result as NDJSON with `Accept: application/x-ndjson`.
///
/// `failed=true` keeps only the item errors (the dashboard's "latest failed items"), with the
/// same page shape: `next_offset` is the item index after the last one returned.
#[utoipa::path(get, path = "/v1/jobs/{id}/results", tag = "jobs", params(("id" = String, Path), ResultsQuery), responses(
    (status = 200, body = ResultPage, content_type = "application/json"),
    (status = 200, description = "One ResultDto per line", body = ResultDto, content_type = "application/x-ndjson"),
    (status = 400, description = "`offset`, `limit` or `wait` out of range", body = Problem, content_type = "application/problem+json"),
    (status = 404, body = Problem, content_type = "application/problem+json"),
))]
async fn list_results(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<ResultsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let offset = query.offset.unwrap_or(0);
    if offset > i64::MAX as u64 {
        return Err(ApiError::InvalidRequest(format!(
            "offset must be an item index from 0 to {}, got {offset}",
            i64::MAX
        )));
    }
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::InvalidRequest(format!(
            "limit must be between 1 and {MAX_PAGE}, got {limit}"
        )));
    }
    let job = wait_for_job(&state, id, query.wait).await?;
    let wants_ndjson = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/x-ndjson"));
    let only_failed = query.failed.unwrap_or(false);
    if wants_ndjson {
        return Ok(ndjson_results(state, id, offset, only_failed));
    }
    let results = results_page(&state, id, offset, limit, only_failed).await?;
    let after = results.last().map_or(offset, |r| r.index + 1);
    let more = results.len() == limit as usize || !job.status.is_finished();
    let next_offset = more.then_some(after);
    let results = results.into_iter().map(ResultDto::from).collect();
    Ok(axum::Json(ResultPage {
        results,
        next_offset,
    })
    .into_response())
}

/// Results with index >= `from`, in index order; with `only_failed`, the item errors only.
async fn results_page(
    state: &AppState,
    id: JobId,
    from: u64,
    limit: u32,
    only_failed: bool,
) -> Result<Vec<ItemResult>, crate::store::Error> {
    if only_failed {
        state.store.failed_results_by_index(id, from, limit).await
    } else {
        state.store.results_by_index(id, from, limit).await
    }
}

/// Stream every result from `offset` on, a page at a time: memory stays bounded.
fn ndjson_results(state: AppState, id: JobId, offset: u64, only_failed: bool) -> Response {
    let pages = futures::stream::unfold(Some(offset), move |from| {
        let state = state.clone();
        async move {
            let from = from?;
            if state.shutdown.is_cancelled() {
                // An error, not an end: the client sees the download cut short, not complete.
                let cut = std::io::Error::other("poold is shutting down");
                return Some((Err(cut), None));
            }
            match results_page(&state, id, from, DEFAULT_PAGE, only_failed).await {
                Ok(page) if page.is_empty() => None,
                Ok(page) => {
                    let next = (page.len() == DEFAULT_PAGE as usize)
                        .then(|| page.last().map(|r| r.index + 1))
                        .flatten();
                    let mut body = String::new();
                    for result in page {
                        body.push_str(
                            &serde_json::to_string(&ResultDto::from(result))
                                .expect("result serializes"),
                        );
                        body.push('\n');
                    }
                    Some((Ok(body), next))
                }
                Err(e) => Some((Err(std::io::Error::other(e)), None)),
            }
        }
    });
    let body = axum::body::Body::from_stream(pages);
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}
