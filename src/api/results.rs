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
use crate::model::Job;
use crate::outcomes;

const DEFAULT_PAGE: u32 = 1000;
const MAX_PAGE: u32 = 10_000;
/// Results read from the store per piece of an NDJSON download.
const NDJSON_PAGE: usize = 5000;

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
    #[param(minimum = 0)]
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
        return Ok(ndjson_results(state, job, offset, only_failed));
    }
    let page = state
        .store
        .results_by_index(&job, offset, limit as usize, only_failed)
        .await?;
    // The page is written as text straight from the stored outcomes (a `ResultPage`).
    let mut body = String::from("{\"results\":[");
    let mut after = offset;
    let count = page.for_each(|_, index, outcome| {
        if after > offset {
            body.push(',');
        }
        outcomes::write_result(&mut body, index, outcome);
        after = index + 1;
    })?;
    let more = count == limit as usize || !job.status.is_finished();
    match more {
        true => body.push_str(&format!("],\"next_offset\":{after}}}")),
        false => body.push_str("],\"next_offset\":null}"),
    }
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Stream every result from `offset` on, a page at a time: memory stays bounded.
fn ndjson_results(state: AppState, job: Job, offset: u64, only_failed: bool) -> Response {
    let pages = futures::stream::unfold(Some(offset), move |from| {
        let state = state.clone();
        let job = job.clone();
        async move {
            let from = from?;
            if state.shutdown.is_cancelled() {
                // An error, not an end: the client sees the download cut short, not complete.
                let cut = std::io::Error::other("poold is shutting down");
                return Some((Err(cut), None));
            }
            let page = match state
                .store
                .results_by_index(&job, from, NDJSON_PAGE, only_failed)
                .await
            {
                Ok(page) => page,
                Err(e) => return Some((Err(std::io::Error::other(e)), None)),
            };
            let mut body = String::new();
            let mut next = from;
            let count = match page.for_each(|_, index, outcome| {
                outcomes::write_result(&mut body, index, outcome);
                body.push('\n');
                next = index + 1;
            }) {
                Ok(count) => count,
                Err(e) => return Some((Err(std::io::Error::other(e)), None)),
            };
            if count == 0 {
                return None;
            }
            Some((Ok(body), (count == NDJSON_PAGE).then_some(next)))
        }
    });
    let body = axum::body::Body::from_stream(pages);
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}
