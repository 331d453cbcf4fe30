//! `/v1/jobs`: submit, list, read, long-poll, cancel and delete map jobs. Their results are in
//! `results.rs`, their event streams in `events.rs`; an NDJSON body goes to `ingest.rs`.
//!
//! The handlers translate HTTP into calls of the job service (`crate::jobs`), which owns the
//! job lifecycle, and its answers and errors back into HTTP. A JSON body is read as in
//! `create.rs`: its fields, then its items one by one into the service.

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::create::{CreateJob, for_each_item};
use super::dto::{JobDto, JobStatusDto};
use super::error::Query;
use super::{ApiError, AppState, Problem};
use crate::model::{Job, JobId};
use crate::store::Idempotency;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_job))
        .routes(routes!(list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(delete_job))
        .routes(routes!(cancel_job))
}

/// Submit a map job.
///
/// With an `Idempotency-Key` header, a repeat of the same request returns the job the first one
/// created (200) instead of creating another; the same key with another body is a 422
/// `idempotency_key_reused`.
///
/// **Streaming ingest**: with `Content-Type: application/x-ndjson`, line 1 is the job (every
/// field but `items`) and each further line is one item (blank lines are skipped). The job is
/// stored when line 1 arrives and its items in chunks as they arrive, so workers start before
/// the upload ends; until it ends the job shows `total: null` and cannot complete. Without a
/// `chunksize` a streamed job uses chunks of 100 items (its length is unknown). The body limit
/// applies to each line, `--max-items-per-job` to the item count. The answer (201 with the
/// job, `total` final) comes when the upload ends. A bad line N is a 400 whose detail names
/// line N; the job is then failed with that error (its queued chunks never run; results of
/// chunks that already ran stay readable). If the job ends during the upload (cancel,
/// `fail_fast`) the rest of the body is read and dropped, and the answer is the job as it is.
/// `Idempotency-Key` is not supported with NDJSON (400).
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs",
    request_body(content(
        (CreateJob = "application/json"),
        (String = "application/x-ndjson"),
    ), description = "A CreateJob as JSON; or, as NDJSON, line 1 a CreateJob without `items` and then one JSON item per line"),
    params(("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters (JSON bodies only)", pattern = "^[!-~]{1,255}$")),
    responses(
    (status = 201, description = "Stored; `Location` names it. For NDJSON, after the upload ended", body = JobDto,
     headers(("Location" = String, description = "/v1/jobs/{id}"))),
    (status = 200, description = "A repeat of an earlier request with the same Idempotency-Key", body = JobDto,
     headers(("Location" = String, description = "/v1/jobs/{id}"))),
    (status = 400, description = "Malformed JSON, invalid fields, or (NDJSON) a bad line, named in `detail`", body = Problem, content_type = "application/problem+json"),
    (status = 413, description = "Body or item count over the limit", body = Problem, content_type = "application/problem+json"),
    (status = 415, body = Problem, content_type = "application/problem+json"),
    (status = 429, description = "`too_many_queued_items`: the server's queue is full; see `Retry-After`", body = Problem, content_type = "application/problem+json",
     headers(("Retry-After" = String, description = "Seconds to wait"))),
    (status = 422, description = "`unknown_function`, `unsupported_codec` (no worker accepts the job's codec), `idempotency_key_reused`", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "`pool_closed`, `shutting_down`, `not_ready` (no worker has started), `server_busy` (too many request bodies held at once) or `storage_unavailable` (the database cannot be written); see `Retry-After`", body = Problem, content_type = "application/problem+json",
     headers(("Retry-After" = String, description = "Seconds to wait"))),
    (status = 507, description = "`insufficient_storage`: the database's disk is full; poold goes on by itself once there is room", body = Problem, content_type = "application/problem+json",
     headers(("Retry-After" = String, description = "Seconds to wait"))),
))]
async fn create_job(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    if super::body::is_ndjson(request.headers()) {
        if request.headers().contains_key("idempotency-key") {
            return Err(ApiError::InvalidRequest(
                "Idempotency-Key is not supported with NDJSON streaming ingest; send a JSON body to use it".into(),
            ));
        }
        return super::ingest::create_streamed_job(state, request.into_body()).await;
    }
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    if !super::body::is_json(&headers) {
        return Err(ApiError::UnsupportedMediaType(
            "send the body as Content-Type: application/json (or application/x-ndjson to stream items)"
                .into(),
        ));
    }
    let body = super::body::read_json(&state, &headers, body).await?;
    let request: CreateJob = serde_json::from_slice(&body.bytes).map_err(|e| {
        ApiError::InvalidRequest(format!(
            "Failed to deserialize the JSON body into the target type: {e}"
        ))
    })?;
    let Some(count) = request.item_count() else {
        return Err(ApiError::InvalidRequest("missing field `items`".into()));
    };
    let idempotency = idempotency(&headers, &request, &body.bytes)?;
    if let Some(earlier) = state.jobs.earlier(idempotency.as_ref()).await? {
        return Ok(job_response(StatusCode::OK, earlier));
    }
    let mut submission = state.jobs.prepare(request.into_request(), count).await?;
    let mut failed = None;
    for_each_item(&body.bytes, |item| {
        submission.push(item).map_err(|e| {
            let message = e.to_string();
            failed = Some(e);
            message
        })
    })
    .map_err(|message| failed.map_or(ApiError::InvalidRequest(message), ApiError::from))?;
    drop(body); // the items are copied into the submission: free the body before the insert
    let (job, created) = state.jobs.submit(submission, idempotency).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(job_response(status, job))
}

pub(super) fn job_response(status: StatusCode, job: Job) -> Response {
    let location = format!("/v1/jobs/{}", job.id);
    (
        status,
        [(header::LOCATION, location)],
        axum::Json(JobDto::from(job)),
    )
        .into_response()
}

/// The `Idempotency-Key` header with the hash of the request it came with.
fn idempotency(
    headers: &HeaderMap,
    request: &CreateJob,
    body: &[u8],
) -> Result<Option<Idempotency>, ApiError> {
    let Some(key) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = key
        .to_str()
        .ok()
        .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::InvalidRequest(
                "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
            )
        })?;
    let request_hash = request
        .request_hash(body)
        .map_err(ApiError::InvalidRequest)?;
    Ok(Some(Idempotency {
        key: key.to_string(),
        request_hash,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListJobsQuery {
    /// Only jobs in this status.
    status: Option<JobStatusDto>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<Uuid>,
}

#[derive(Debug, serde::Serialize, ToSchema)]
pub struct JobList {
    jobs: Vec<JobDto>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[schema(value_type = Option<String>)]
    next_cursor: Option<Uuid>,
}

/// List jobs, newest first.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(ListJobsQuery), responses(
    (status = 200, body = JobList),
    (status = 400, body = Problem, content_type = "application/problem+json"),
))]
async fn list_jobs(
    State(state): State<AppState>,
    Query(query): Query<ListJobsQuery>,
) -> Result<axum::Json<JobList>, ApiError> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::InvalidRequest(format!(
            "limit must be between 1 and 1000, got {limit}"
        )));
    }
    let jobs = state
        .store
        .list_jobs(query.status.map(Into::into), query.cursor, limit)
        .await?;
    let next_cursor = (jobs.len() == limit as usize)
        .then(|| jobs.last().map(|j| j.id))
        .flatten();
    Ok(axum::Json(JobList {
        jobs: jobs.into_iter().map(JobDto::from).collect(),
        next_cursor,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Long-poll: wait up to this many seconds (at most 300) for the job to finish.
    #[param(minimum = 0)]
    wait: Option<f64>,
}

/// Read a job; with `wait`, long-poll until it finishes.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path), WaitQuery), responses(
    (status = 200, body = JobDto),
    (status = 400, description = "`wait` is not a number of seconds", body = Problem, content_type = "application/problem+json"),
    (status = 404, body = Problem, content_type = "application/problem+json"),
))]
async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<WaitQuery>,
) -> Result<axum::Json<JobDto>, ApiError> {
    let id = parse_id(&id)?;
    let job = wait_for_job(&state, id, query.wait).await?;
    Ok(axum::Json(job.into()))
}

pub fn parse_id(id: &str) -> Result<JobId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::JobNotFound(id.to_string()))
}

pub async fn load_job(state: &AppState, id: JobId) -> Result<Job, ApiError> {
    Ok(state.jobs.get(id).await?)
}

/// The job, once finished or after `wait` seconds (or at shutdown), whichever comes first.
pub async fn wait_for_job(state: &AppState, id: JobId, wait: Option<f64>) -> Result<Job, ApiError> {
    Ok(state.jobs.wait(id, wait).await?)
}

/// Cancel a job: queued chunks never run, running ones are stopped, recorded results stay.
/// Cancelling a finished job changes nothing and returns it as it is.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs", params(("id" = String, Path)), responses(
    (status = 200, body = JobDto),
    (status = 404, body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "`storage_unavailable`: the database cannot be written now", body = Problem, content_type = "application/problem+json",
     headers(("Retry-After" = String, description = "Seconds to wait"))),
    (status = 507, description = "`insufficient_storage`: the database's disk is full", body = Problem, content_type = "application/problem+json",
     headers(("Retry-After" = String, description = "Seconds to wait"))),
))]
async fn cancel_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<JobDto>, ApiError> {
    let id = parse_id(&id)?;
    Ok(axum::Json(state.jobs.cancel(id).await?.into()))
}

/// Delete a finished job and its results.
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path)), responses(
    (status = 204, description = "Deleted"),
    (status = 404, body = Problem, content_type = "application/problem+json"),
    (status = 409, description = "`job_not_finished`: cancel it first", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "`storage_unavailable`: the database cannot be written now", body = Problem, content_type = "application/problem+json",
     headers(("Retry-After" = String, description = "Seconds to wait"))),
    (status = 507, description = "`insufficient_storage`: the database's disk is full", body = Problem, content_type = "application/problem+json",
     headers(("Retry-After" = String, description = "Seconds to wait"))),
))]
async fn delete_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    state.jobs.delete(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// OpenAPI links from a created job (`POST /v1/jobs`, 201) to the operations on it, so that
/// clients and tools that follow them (schemathesis) use real ids.
pub struct LinksFromCreate;

impl utoipa::Modify for LinksFromCreate {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::RefOr;
        use utoipa::openapi::link::LinkBuilder;
        let targets = [
            ("GetJob", "get_job"),
            ("CancelJob", "cancel_job"),
            ("DeleteJob", "delete_job"),
            ("ListResults", "list_results"),
            ("StreamJobEvents", "stream_job_events"),
        ];
        let Some(create) = openapi
            .paths
            .paths
            .get_mut("/v1/jobs")
            .and_then(|item| item.post.as_mut())
        else {
            return;
        };
        for status in ["200", "201"] {
            if let Some(RefOr::T(response)) = create.responses.responses.get_mut(status) {
                for (name, operation) in targets {
                    let link = LinkBuilder::new()
                        .operation_id(operation)
                        .parameter("id", "$response.body#/id")
                        .build();
                    response.links.insert(name.to_string(), link.into());
                }
            }
        }
    }
}
