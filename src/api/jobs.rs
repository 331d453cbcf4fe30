//! `/v1/jobs`: submit, list, read, long-poll, cancel and delete map jobs. Their results are in
//! `results.rs`, their event streams in `events.rs`; NDJSON streaming ingest in `ingest.rs`.
//!
//! A JSON body is validated, cut into chunks by [`super::ingest::ChunkBatcher`] and stored in
//! one transaction; an NDJSON body takes the same validation and the same batcher, a batch at
//! a time as it arrives.

use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::dto::{CodecDto, JobDto, JobStatusDto, OnErrorDto};
use super::error::Query;
use super::{ApiError, AppState, Problem};
use crate::limits;
use crate::model::{Codec, Job, JobId, JobSpec, JobStatus, OnError, auto_chunksize};
use crate::store::{DeleteOutcome, Idempotency, NewJob};

/// Longest `wait` a long-poll may ask for, in seconds.
pub const MAX_WAIT_S: f64 = 300.0;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_job))
        .routes(routes!(list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(delete_job))
        .routes(routes!(cancel_job))
}

/// A map job: `pool.map(function, items, chunksize)` with `functools.partial`-style kwargs.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJob<'a> {
    /// A function the workers advertise (GET /v1/functions), by its name or one of its
    /// aliases; names may be qualified as `module:qualname` (e.g. `time:sleep`). 1 to 255
    /// characters, none of them a control character.
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]+$"
    )]
    function: String,
    /// The iterable: any JSON values, each nested at most 100 levels deep. With `star`, each
    /// item is an array of positional arguments. With `codec: pickle`, each item is a base64
    /// string (a pickle; with `star`, of the sequence of positional arguments).
    /// Required in a JSON body; absent from line 1 of an NDJSON body (the items follow it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Vec<serde_json::Value>, required = true)]
    // Borrowed from the request body: no allocation per item.
    #[serde(borrow)]
    pub(super) items: Option<Vec<&'a RawValue>>,
    /// Fixed keyword arguments, like `functools.partial`: a JSON object of at most 1 MiB,
    /// nested at most 100 levels deep. Default `{}`. With `codec: pickle`, each value is a
    /// base64 string (a pickle).
    #[schema(value_type = Option<Object>)]
    kwargs: Option<Box<RawValue>>,
    /// Each item is an array of positional arguments (`starmap`). Default false.
    #[serde(default)]
    star: bool,
    /// Most items per chunk sent to a worker (1 to 1000000). Default: automatic, like
    /// `Pool.map` (`ceil(len / (4 * workers))`, at most 1000). A chunk also ends once it holds
    /// 256 KiB of item JSON, so a chunk of large items may hold fewer.
    #[schema(minimum = 1, maximum = 1000000)]
    #[serde(default, deserialize_with = "integer")]
    chunksize: Option<i64>,
    /// Per-item time limit in seconds, above 0 and at most 604800 (7 days); default: the
    /// server's `--task-timeout`, if any. An item over it fails with a `timeout` error and
    /// its worker is stopped (SIGTERM, then SIGKILL) and replaced; the rest of its chunk completes.
    #[schema(exclusive_minimum = 0, maximum = 604800)]
    timeout_s: Option<f64>,
    /// Runs per chunk when its worker dies (1 to 100). Default 1. A chunk that still kills its
    /// worker is split so that only the guilty item fails (`worker_exited`).
    #[schema(minimum = 1, maximum = 100)]
    #[serde(default, deserialize_with = "integer")]
    max_attempts: Option<i64>,
    /// Default `continue`.
    on_error: Option<OnErrorDto>,
    /// Higher runs first; equal priorities share the pool fairly. Default 0.
    #[serde(default, deserialize_with = "integer")]
    priority: Option<i32>,
    /// Free-form labels, returned as given: a JSON object of at most 64 KiB, nested at most
    /// 100 levels deep. Default `{}`.
    #[schema(value_type = Option<Object>)]
    metadata: Option<Box<RawValue>>,
    /// At most this many of the job's chunks run at once across all workers, pipelined ones
    /// included (1 to 1000000), like `Pool(processes=N)`. Default: no cap.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "integer"
    )]
    #[schema(minimum = 1, maximum = 1_000_000)]
    max_concurrency: Option<i64>,
    /// How items, kwargs values and values travel: `json` (default) or `pickle` (base64
    /// pickles, opaque to poold). A codec no worker accepts is a 422 `unsupported_codec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    codec: Option<CodecDto>,
}

/// An integer field: a JSON integer, or a number without a fractional part (`2.0`), which JSON
/// Schema counts as an integer too.
fn integer<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    use serde::de::Error;
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let whole = number.as_i64().or_else(|| {
        number
            .as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18)
            .map(|f| f as i64)
    });
    let whole =
        whole.ok_or_else(|| D::Error::custom(format!("expected an integer, got {number}")))?;
    T::try_from(whole)
        .map(Some)
        .map_err(|_| D::Error::custom(format!("{whole} is out of range")))
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
    if state.shutdown.is_cancelled() {
        return Err(ApiError::ShuttingDown);
    }
    if !state.pool.accepting() {
        return Err(ApiError::PoolClosed);
    }
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
    let mut request: CreateJob = serde_json::from_slice(&body.bytes).map_err(|e| {
        ApiError::InvalidRequest(format!(
            "Failed to deserialize the JSON body into the target type: {e}"
        ))
    })?;
    let idempotency = idempotency(&headers, &request)?;
    if let Some(earlier) = earlier_job(&state, idempotency.as_ref()).await? {
        return Ok(earlier);
    }
    let Some(items) = request.items.take() else {
        return Err(ApiError::InvalidRequest("missing field `items`".into()));
    };
    if items.len() > state.limits.max_items_per_job {
        return Err(too_many_items(&state));
    }
    let spec = validate(&state, request, Some(items.len()))?;
    admit(&state, items.len() as u64).await?;
    check_offer(&state, &spec).await?;
    let mut batcher = super::ingest::ChunkBatcher::new(spec.chunksize);
    let mut chunks = Vec::new();
    let mut chunk_count = 0;
    for (index, item) in items.iter().enumerate() {
        check_item(&spec, index as u64, item).map_err(ApiError::InvalidRequest)?;
        batcher.push(item.get());
        if batcher.full_bytes() >= super::ingest::BATCH_BYTES {
            let (piece, n, _) = batcher.take_full();
            chunks.push((chunk_count, piece));
            chunk_count += n;
        }
    }
    let total = items.len() as u64;
    drop(items);
    drop(body); // the items are copied into `chunks`: free the body before the insert
    let (piece, n, _) = batcher.finish();
    if n > 0 {
        chunks.push((chunk_count, piece));
        chunk_count += n;
    }
    let job = new_job(spec, total, false);
    let new = NewJob {
        job: job.clone(),
        chunks,
        idempotency: idempotency.clone(),
    };
    if let Err(e) = state.store.create_job(new).await {
        // A concurrent request with the same key may have won the insert.
        return match earlier_job(&state, idempotency.as_ref()).await? {
            Some(earlier) => Ok(earlier),
            None => Err(e.into()),
        };
    }
    tracing::info!(job.id = %job.id, function = %job.spec.function, total = job.total, "job accepted");
    state.pool.chunks_stored(&job, chunk_count).await?;
    Ok(job_response(StatusCode::CREATED, job))
}

pub(super) fn too_many_items(state: &AppState) -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "more items than the limit of {} per job",
        state.limits.max_items_per_job
    ))
}

/// The function must be one the workers advertise, and the codec one they accept (waiting a
/// little for the first worker).
pub(super) async fn check_offer(state: &AppState, spec: &JobSpec) -> Result<(), ApiError> {
    let offer = state
        .pool
        .offer(Duration::from_secs(10))
        .await
        .ok_or_else(|| ApiError::NotReady("no worker has started yet; see GET /readyz".into()))?;
    if !offer.serves(&spec.function) {
        return Err(ApiError::UnknownFunction(spec.function.clone()));
    }
    if !offer.accepts(spec.codec) {
        return Err(ApiError::UnsupportedCodec(spec.codec.as_str()));
    }
    Ok(())
}

/// One item's own check: nested at most `limits::MAX_DEPTH` deep; with `codec: pickle`, a
/// base64 string; else, with `star`, an array of arguments.
pub(super) fn check_item(spec: &JobSpec, index: u64, item: &RawValue) -> Result<(), String> {
    if spec.codec == Codec::Pickle {
        if !is_base64_string(item) {
            return Err(format!(
                "codec is pickle, so every item must be a base64 string (a pickle); item {index} is {}",
                excerpt(item.get())
            ));
        }
    } else if spec.star && !item.get().starts_with('[') {
        return Err(format!(
            "star is true, so every item must be an array of arguments; item {index} is {}",
            excerpt(item.get())
        ));
    }
    limits::check_depth(&format!("item {index}"), item.get())
}

/// The start of a JSON text, for an error message (an item may be megabytes).
fn excerpt(text: &str) -> String {
    const MAX: usize = 80;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// A JSON string of base64 characters only: the shape of a pickle under `codec: pickle`
/// (poold never decodes it).
fn is_base64_string(value: &RawValue) -> bool {
    let text = value.get().as_bytes();
    text.len() >= 2
        && text[0] == b'"'
        && text[text.len() - 1] == b'"'
        && text[1..text.len() - 1]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
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
fn idempotency(headers: &HeaderMap, request: &CreateJob) -> Result<Option<Idempotency>, ApiError> {
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
    let normalized = serde_json::to_vec(request).expect("a parsed request serializes");
    let request_hash = format!("{:x}", Sha256::digest(&normalized));
    Ok(Some(Idempotency {
        key: key.to_string(),
        request_hash,
    }))
}

/// The response for a repeat of an earlier request with the same key, if this is one.
async fn earlier_job(
    state: &AppState,
    idempotency: Option<&Idempotency>,
) -> Result<Option<Response>, ApiError> {
    let Some(idempotency) = idempotency else {
        return Ok(None);
    };
    match state.store.job_by_idempotency_key(&idempotency.key).await? {
        Some((job, hash)) if hash == idempotency.request_hash => {
            Ok(Some(job_response(StatusCode::OK, job)))
        }
        Some((job, _)) => Err(ApiError::IdempotencyKeyReused(job.id)),
        None => Ok(None),
    }
}

/// Admission control: refuse (429, `Retry-After`) a job that would take the items queued or
/// running across all jobs over `--max-queued-items`. A streamed job (length unknown) is
/// admitted with `items` = 0, i.e. when the queue is not full already.
pub(super) async fn admit(state: &AppState, items: u64) -> Result<(), ApiError> {
    let limit = state.limits.max_queued_items;
    let queued = state.store.unfinished_items().await?;
    if queued.saturating_add(items) > limit {
        return Err(ApiError::TooManyQueued(format!(
            "{queued} items are queued or running and this job adds {items}, over the limit of \
             {limit}; retry later"
        )));
    }
    Ok(())
}

/// Chunk size of a streamed job that names none (its length is unknown).
pub const STREAM_CHUNKSIZE: u32 = 100;

/// Check the request (its items taken out) against `crate::limits` and apply defaults. `items`
/// is the number of items when known (a JSON body), for the automatic chunksize.
pub(super) fn validate(
    state: &AppState,
    request: CreateJob,
    items: Option<usize>,
) -> Result<JobSpec, ApiError> {
    let invalid = |msg: String| Err(ApiError::InvalidRequest(msg));
    check_function_name(&request.function).map_err(ApiError::InvalidRequest)?;
    let kwargs = json_object(request.kwargs, "kwargs", limits::MAX_KWARGS_BYTES)?;
    let metadata = json_object(request.metadata, "metadata", limits::MAX_METADATA_BYTES)?;
    let codec = request.codec.map_or(Codec::Json, Codec::from);
    if codec == Codec::Pickle {
        let values: std::collections::BTreeMap<String, &RawValue> =
            serde_json::from_str(kwargs.get()).expect("kwargs is a JSON object");
        if let Some((name, value)) = values.iter().find(|(_, v)| !is_base64_string(v)) {
            return invalid(format!(
                "codec is pickle, so every kwargs value must be a base64 string (a pickle); kwargs[{name:?}] is {}",
                excerpt(value.get())
            ));
        }
    }
    let max_concurrency = match request.max_concurrency {
        None => None,
        Some(n) if (1..=i64::from(limits::MAX_CONCURRENCY)).contains(&n) => Some(n as u32),
        Some(n) => {
            return invalid(format!(
                "max_concurrency must be between 1 and {}, got {n}",
                limits::MAX_CONCURRENCY
            ));
        }
    };
    let chunksize = match (request.chunksize, items) {
        (None, Some(n)) => auto_chunksize(n, state.pool_size),
        (None, None) => STREAM_CHUNKSIZE,
        (Some(c), _) if (1..=i64::from(limits::MAX_CHUNKSIZE)).contains(&c) => c as u32,
        (Some(c), _) => {
            return invalid(format!(
                "chunksize must be between 1 and {}, got {c}",
                limits::MAX_CHUNKSIZE
            ));
        }
    };
    if let Some(t) = request.timeout_s {
        limits::check_timeout(t).map_err(ApiError::InvalidRequest)?;
    }
    let max_attempts = request.max_attempts.unwrap_or(1);
    if !(1..=i64::from(limits::MAX_ATTEMPTS)).contains(&max_attempts) {
        return invalid(format!(
            "max_attempts must be between 1 and {}, got {max_attempts}",
            limits::MAX_ATTEMPTS
        ));
    }
    Ok(JobSpec {
        function: request.function,
        kwargs,
        star: request.star,
        chunksize,
        timeout_s: request.timeout_s.or(state.limits.default_timeout_s),
        max_attempts: max_attempts as u32,
        on_error: request.on_error.map_or(OnError::Continue, OnError::from),
        priority: request.priority.unwrap_or(0),
        metadata,
        codec,
        max_concurrency,
    })
}

/// A function name is 1 to 255 characters, none of them a control character.
fn check_function_name(name: &str) -> Result<(), String> {
    let length = name.chars().count();
    if !(1..=limits::MAX_FUNCTION_NAME).contains(&length) {
        return Err(format!(
            "function must be 1 to {} characters long, got {length}",
            limits::MAX_FUNCTION_NAME,
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("function must not contain control characters".into());
    }
    Ok(())
}

/// `kwargs` or `metadata`: a JSON object (default `{}`) within its size and nesting limits.
fn json_object(
    value: Option<Box<RawValue>>,
    name: &str,
    max_bytes: usize,
) -> Result<Box<RawValue>, ApiError> {
    let invalid = |msg: String| Err(ApiError::InvalidRequest(msg));
    let Some(value) = value else {
        return Ok(RawValue::from_string("{}".into()).expect("valid JSON"));
    };
    if !value.get().starts_with('{') {
        return invalid(format!("{name} must be a JSON object, got {}", value.get()));
    }
    if value.get().len() > max_bytes {
        return invalid(format!(
            "{name} is {} bytes of JSON; the most is {max_bytes}",
            value.get().len()
        ));
    }
    limits::check_depth(name, value.get()).map_err(ApiError::InvalidRequest)?;
    Ok(value)
}

/// A job about to be stored with `total` items; `ingesting`: more will be uploaded.
pub(super) fn new_job(spec: JobSpec, total: u64, ingesting: bool) -> Job {
    let now = OffsetDateTime::now_utc();
    // An empty map is done at once, like `pool.map(f, [])`.
    let empty = total == 0 && !ingesting;
    let finished = empty.then_some(now);
    Job {
        id: Uuid::now_v7(),
        spec,
        status: if empty {
            JobStatus::Completed
        } else {
            JobStatus::Queued
        },
        total,
        ingesting,
        done: 0,
        failed: 0,
        error: None,
        created_at: now,
        started_at: finished,
        finished_at: finished,
    }
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
    state
        .store
        .get_job(id)
        .await?
        .ok_or_else(|| ApiError::JobNotFound(id.to_string()))
}

/// The job, once finished or after `wait` seconds (or at shutdown), whichever comes first.
pub async fn wait_for_job(state: &AppState, id: JobId, wait: Option<f64>) -> Result<Job, ApiError> {
    let wait = match wait {
        None => 0.0,
        Some(w) if w.is_finite() && w >= 0.0 => w.min(MAX_WAIT_S),
        Some(w) => {
            return Err(ApiError::InvalidRequest(format!(
                "wait must be a non-negative number of seconds, got {w}"
            )));
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(wait);
    let mut changes = state.events.subscribe(id);
    loop {
        changes.borrow_and_update();
        let job = load_job(state, id).await?;
        if job.status.is_finished() || tokio::time::Instant::now() >= deadline {
            return Ok(job);
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = state.shutdown.cancelled() => return Ok(job),
        }
    }
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
    load_job(&state, id).await?;
    if state
        .store
        .finish_job(id, JobStatus::Cancelled, None)
        .await?
    {
        tracing::info!(job.id = %id, "job cancelled");
        state.pool.job_ended(id).await?;
    }
    Ok(axum::Json(load_job(&state, id).await?.into()))
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
    match state.store.delete_job(id).await? {
        DeleteOutcome::Deleted => Ok(StatusCode::NO_CONTENT),
        DeleteOutcome::NotFound => Err(ApiError::JobNotFound(id.to_string())),
        DeleteOutcome::NotFinished => Err(ApiError::JobNotFinished(id)),
    }
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
