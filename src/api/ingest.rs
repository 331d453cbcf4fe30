//! Streaming ingest: `POST /v1/jobs` with `Content-Type: application/x-ndjson`, called by
//! `jobs::create_job`. The HTTP side of an upload: reading the body's lines
//! (`upload_body`) and naming the line of any error; the job service's `Upload` stores the
//! job and its items (see `crate::jobs::Upload`).
//!
//! Line 1 is the job (a `CreateJob` without `items`, checked like a JSON body); each further
//! line is one item, blank lines skipped. The answer (201 with the job, `total` final) comes
//! when the body ends. A bad line fails the job and is answered at once (400 or 413 naming the
//! line); the rest of the body is read and dropped behind the answer, so a client that reads
//! while it sends stops early and one that sends everything first still gets to read it. A
//! client whose own input fails says so in a trailer (`upload_body`): the items it sent run,
//! then the job fails with its reason.
//!
//! The upload runs in a task of its own, so that if the client goes away mid-upload (axum then
//! drops the handler) the job is still failed rather than left open.

use std::io;

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use futures::{FutureExt, StreamExt};
use serde_json::value::RawValue;
use tokio_util::codec::LinesCodecError;

use super::create::CreateJob;
use super::jobs::job_response;
use super::upload_body::{self, Lines};
use super::{ApiError, AppState};
use crate::jobs::{self, Upload};

/// Store a job from an NDJSON body as it arrives (see the module doc).
pub async fn create_streamed_job(state: AppState, body: Body) -> Result<Response, ApiError> {
    match tokio::spawn(ingest(state, body)).await {
        Ok(answer) => answer,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// How the reading of an upload's lines ended.
enum Ended {
    /// The body ended: every item is read.
    Complete,
    /// The job ended (cancelled, failed fast) during the upload.
    JobFinished,
    /// Its client stopped it, with this reason (see `upload_body`).
    StoppedByClient(String),
}

async fn ingest(state: AppState, body: Body) -> Result<Response, ApiError> {
    let mut lines = upload_body::lines(body, state.max_body_bytes);
    let opened = match first_line(&state, &mut lines).await {
        Ok(request) => state
            .jobs
            .open_upload(request)
            .await
            .map_err(ApiError::from),
        Err(error) => Err(error),
    };
    let mut upload = match opened {
        Ok(upload) => upload,
        Err(error) => {
            drain_behind(lines, &state);
            return Err(error);
        }
    };
    match read(&state, &mut upload, &mut lines).await {
        Ok(Ended::Complete) => {
            let job = upload.close().await?;
            tracing::debug!(job.id = %job.id, total = job.total, "upload complete");
            Ok(job_response(StatusCode::CREATED, job))
        }
        Ok(Ended::JobFinished) => {
            // Answer with the job as it is.
            drain_behind(lines, &state);
            let job = state.jobs.get(upload.job().id).await?;
            Ok(job_response(StatusCode::CREATED, job))
        }
        Ok(Ended::StoppedByClient(reason)) => {
            let job = upload.stop(&reason).await?;
            Ok(job_response(StatusCode::CREATED, job))
        }
        Err(error) => {
            let id = upload.job().id;
            let reason = match &error {
                ApiError::Store(_) | ApiError::Pool(_) => "an internal error".to_string(),
                other => other.to_string(),
            };
            tracing::warn!(job.id = %id, error = %error, "upload failed; failing the job");
            upload
                .fail(format!("the upload of its items failed: {reason}"))
                .await?;
            if !matches!(error, ApiError::ShuttingDown) {
                drain_behind(lines, &state);
            }
            Err(match error {
                ApiError::InvalidRequest(detail) => ApiError::InvalidRequest(format!(
                    "{detail}; job {id} was failed and none of its remaining items will run"
                )),
                ApiError::PayloadTooLarge(detail) => ApiError::PayloadTooLarge(format!(
                    "{detail}; job {id} was failed and none of its remaining items will run"
                )),
                other => other,
            })
        }
    }
}

/// Read line 1, the job.
async fn first_line(state: &AppState, lines: &mut Lines) -> Result<jobs::JobRequest, ApiError> {
    let first = tokio::select! {
        first = lines.next() => first,
        _ = state.shutdown.cancelled() => return Err(ApiError::ShuttingDown),
    };
    let first = match first {
        None => {
            return Err(ApiError::InvalidRequest(
                "the NDJSON body is empty; line 1 must be the job (every field but `items`)".into(),
            ));
        }
        Some(line) => line.map_err(|e| line_error(1, e, state.max_body_bytes))?,
    };
    let request: CreateJob = serde_json::from_str(&first)
        .map_err(|e| ApiError::InvalidRequest(format!("line 1 (the job): {e}")))?;
    if request.item_count().is_some() {
        return Err(ApiError::InvalidRequest(
            "line 1 (the job) must not have `items`: send one item per line after it".into(),
        ));
    }
    Ok(request.into_request())
}

/// Read item lines to the end of the body into the upload. Full chunks are stored whenever
/// the client pauses (no line is ready), so workers start on what has arrived, and in
/// batches while lines keep coming (see `jobs::Upload`).
async fn read(state: &AppState, upload: &mut Upload, lines: &mut Lines) -> Result<Ended, ApiError> {
    let mut number = 1;
    loop {
        if state.shutdown.is_cancelled() {
            return Err(ApiError::ShuttingDown);
        }
        let next = match lines.next().now_or_never() {
            Some(next) => next,
            None => {
                if upload.has_full() && !upload.flush().await? {
                    return Ok(Ended::JobFinished);
                }
                tokio::select! {
                    biased;
                    _ = state.shutdown.cancelled() => return Err(ApiError::ShuttingDown),
                    next = lines.next() => next,
                }
            }
        };
        let Some(line) = next else {
            return Ok(Ended::Complete);
        };
        number += 1;
        if let Err(e) = &line
            && let Some(reason) = upload_body::client_stopped(e)
        {
            return Ok(Ended::StoppedByClient(reason.to_string()));
        }
        let line = line.map_err(|e| line_error(number, e, state.max_body_bytes))?;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let item: &RawValue = serde_json::from_str(text).map_err(|e| {
            let reason = e.to_string();
            let reason = reason.split(" at line ").next().unwrap_or_default();
            ApiError::InvalidRequest(format!(
                "line {number} is not a JSON item: {reason} at column {}",
                e.column()
            ))
        })?;
        match upload.push(item).await {
            Ok(true) => {}
            Ok(false) => return Ok(Ended::JobFinished),
            Err(jobs::Error::Invalid(detail)) => {
                return Err(ApiError::InvalidRequest(format!("line {number}: {detail}")));
            }
            Err(jobs::Error::TooLarge(detail)) => {
                return Err(ApiError::PayloadTooLarge(format!(
                    "line {number}: {detail}"
                )));
            }
            Err(other) => return Err(other.into()),
        }
    }
}

fn line_error(line: u64, error: LinesCodecError, max_line: usize) -> ApiError {
    match error {
        LinesCodecError::MaxLineLengthExceeded => ApiError::PayloadTooLarge(format!(
            "line {line} is longer than the limit of {max_line} bytes"
        )),
        LinesCodecError::Io(e) if e.kind() == io::ErrorKind::InvalidData => {
            ApiError::InvalidRequest(format!("line {line} is not valid UTF-8"))
        }
        LinesCodecError::Io(e) => {
            ApiError::InvalidRequest(format!("the upload broke off at line {line}: {e}"))
        }
    }
}

/// Read and drop the rest of the body behind the answer (see `body::drain_behind`).
fn drain_behind(lines: Lines, state: &AppState) {
    let mut rest = lines.into_inner();
    let read = async move {
        let _ = tokio::io::copy(&mut rest, &mut tokio::io::sink()).await;
    };
    super::body::drain_behind(read, state.shutdown.clone());
}
