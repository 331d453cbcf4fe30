//! Request bodies of `POST /v1/jobs`: which media type a body is, and reading a JSON body
//! into memory within the server's bounds (used by `jobs::create_job`; NDJSON bodies are
//! streamed by `ingest` instead).
//!
//! A JSON body is held whole while it is parsed, so two bounds apply: one body is at most
//! `--max-body-bytes` (a declared `Content-Length` over it is refused before anything is
//! read), and all bodies held at once are at most `--max-buffered-bytes` (past it, 503
//! `server_busy` at once, never a queue): each byte held takes a permit of the state's
//! `body_budget`, given back when the job is stored.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use http_body_util::BodyExt;
use tokio::sync::OwnedSemaphorePermit;

use super::{ApiError, AppState};

/// The request's media type (`Content-Type` without parameters), lowercase.
fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next()?.trim().to_ascii_lowercase())
}

pub fn is_ndjson(headers: &HeaderMap) -> bool {
    media_type(headers).is_some_and(|m| m == "application/x-ndjson")
}

/// `application/json` or any `application/*+json`, as axum's `Json` extractor accepts.
pub fn is_json(headers: &HeaderMap) -> bool {
    media_type(headers).is_some_and(|m| {
        m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
    })
}

/// A JSON body read into memory, with the budget it holds.
pub struct JsonBody {
    pub bytes: Bytes,
    _held: OwnedSemaphorePermit,
}

/// Read a JSON body within the bounds of the module doc.
pub async fn read_json(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<JsonBody, ApiError> {
    let limit = state.max_body_bytes;
    let too_large = || {
        ApiError::PayloadTooLarge(format!(
            "the request body is larger than the server's limit of {limit} bytes (--max-body-bytes)"
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    // Refused at once, but the rest of the body is read and dropped meanwhile: a client
    // still sending it would otherwise see its connection reset, not the answer.
    let busy = |mut body: Body| {
        let read = async move { while let Some(Ok(_)) = body.frame().await {} };
        drain_behind(read, state.shutdown.clone());
        ApiError::ServerBusy(
            "the server holds as many request bodies as it takes (--max-buffered-bytes); retry later"
                .into(),
        )
    };
    // Take the declared length at once; a body of unknown length takes its bytes as they come.
    let Ok(mut held) = state
        .body_budget
        .clone()
        .try_acquire_many_owned(declared.unwrap_or(0) as u32)
    else {
        return Err(busy(body));
    };
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0) as usize);
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::InvalidRequest(format!("the request body could not be read: {e}"))
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if bytes.len() + data.len() > limit {
            return Err(too_large());
        }
        bytes.extend_from_slice(&data);
        let more = bytes.len().saturating_sub(held.num_permits());
        if more > 0 {
            match state
                .body_budget
                .clone()
                .try_acquire_many_owned(more as u32)
            {
                Ok(extra) => held.merge(extra),
                Err(_) => return Err(busy(body)),
            }
        }
    }
    Ok(JsonBody {
        bytes: Bytes::from(bytes),
        _held: held,
    })
}

/// Read and drop the rest of a refused request body behind the answer (`read` does it), for
/// at most [`DRAIN_LIMIT`] and not past shutdown: a client that sends its whole body before it
/// reads still gets to read the answer. Used here and by `ingest`.
pub fn drain_behind(
    read: impl std::future::Future<Output = ()> + Send + 'static,
    shutdown: tokio_util::sync::CancellationToken,
) {
    tokio::spawn(async move {
        tokio::select! {
            _ = read => {}
            _ = tokio::time::sleep(DRAIN_LIMIT) => {}
            _ = shutdown.cancelled() => {}
        }
    });
}

/// The longest a refused body is read for (then the connection is closed).
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);
