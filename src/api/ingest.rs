//! Streaming ingest: `POST /v1/jobs` with `Content-Type: application/x-ndjson`, called by
//! `jobs::create_job`. Also owns [`ChunkBatcher`], which cuts items into chunks for the store
//! whatever the body's type.
//!
//! Line 1 is the job (a `CreateJob` without `items`, validated like a JSON body); the job is
//! stored as soon as it parses, with `ingesting` set. Each further line is one item. Items are
//! batched into full chunks, and a batch is stored (and the supervisor told) when it holds
//! [`BATCH_CHUNKS`] chunks or [`BATCH_BYTES`] bytes, or when a full chunk has waited
//! [`BATCH_WAIT`] for more, so that workers start on a slow upload's first chunks at once.
//! Memory is bounded by one batch plus one line, whatever the job's size. At the end of the
//! body the last (partial) chunk is stored with the upload's close in one transaction: `total`
//! becomes final and the job may complete.
//!
//! The upload runs in a task of its own, so that if the client goes away mid-upload (axum then
//! drops the handler) the job is still failed rather than left open. A client whose own input
//! fails mid-upload says so in a trailer (`upload_body`): the items it sent run, then the job
//! fails with its reason. An error is answered at once; the rest of the body is read and
//! dropped behind the answer, so a client that reads while it sends stops early and one that
//! sends everything first still gets to read it.

use std::io;
use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use futures::StreamExt;
use serde_json::value::RawValue;
use tokio::time::Instant;
use tokio_util::codec::LinesCodecError;

use super::jobs::{
    CreateJob, admit, check_item, check_offer, job_response, load_job, new_job, too_many_items,
    validate,
};
use super::upload_body::{self, Lines};
use super::{ApiError, AppState};
use crate::limits;
use crate::model::{Job, JobStatus};
use crate::store::NewJob;

/// A batch is stored once it holds this many full chunks…
const BATCH_CHUNKS: u64 = 64;
/// …or this many bytes of items… (A JSON body's chunks go to the store in pieces of this size
/// too, so that SQLite never parses one huge document.)
pub(super) const BATCH_BYTES: usize = 1 << 20;
/// …or once a full chunk has waited this long for more items.
const BATCH_WAIT: Duration = Duration::from_millis(50);

/// Cuts items (JSON text) into chunks of at most `chunksize` items and about
/// [`limits::MAX_CHUNK_BYTES`] of JSON, as the JSON array of `[first item index, [items]]`
/// pairs that the store inserts with `json_each`.
pub struct ChunkBatcher {
    chunksize: u32,
    /// Items pushed so far: the index the next item gets.
    next_index: u64,
    /// Full chunks: `[[0,[…]],[2,[…]]` without its closing bracket; empty when there are none.
    full: String,
    full_chunks: u64,
    full_items: u64,
    /// The chunk being filled: `[a,b` without its closing bracket.
    current: String,
    current_start: u64,
    current_items: u32,
}

impl ChunkBatcher {
    pub fn new(chunksize: u32) -> Self {
        Self {
            chunksize: chunksize.max(1),
            next_index: 0,
            full: String::new(),
            full_chunks: 0,
            full_items: 0,
            current: String::new(),
            current_start: 0,
            current_items: 0,
        }
    }

    /// Add one item (valid JSON text).
    pub fn push(&mut self, item: &str) {
        if self.current_items == 0 {
            self.current.push('[');
            self.current_start = self.next_index;
        } else {
            self.current.push(',');
        }
        self.current.push_str(item);
        self.current_items += 1;
        self.next_index += 1;
        if self.current_items == self.chunksize || self.current.len() >= limits::MAX_CHUNK_BYTES {
            self.close_current();
        }
    }

    fn close_current(&mut self) {
        use std::fmt::Write;
        self.full.push(if self.full.is_empty() { '[' } else { ',' });
        let _ = write!(self.full, "[{},{}]]", self.current_start, self.current);
        self.current.clear();
        self.full_chunks += 1;
        self.full_items += u64::from(self.current_items);
        self.current_items = 0;
    }

    pub fn full_chunks(&self) -> u64 {
        self.full_chunks
    }

    pub fn full_bytes(&self) -> usize {
        self.full.len()
    }

    /// Take the full chunks: (JSON array of chunks, chunks, items).
    pub fn take_full(&mut self) -> (String, u64, u64) {
        let mut chunks = std::mem::take(&mut self.full);
        chunks.push(if chunks.is_empty() { '[' } else { ']' });
        if chunks == "[" {
            chunks.push(']');
        }
        let taken = (chunks, self.full_chunks, self.full_items);
        self.full_chunks = 0;
        self.full_items = 0;
        taken
    }

    /// Take every chunk, the last one possibly partial.
    pub fn finish(mut self) -> (String, u64, u64) {
        if self.current_items > 0 {
            self.close_current();
        }
        self.take_full()
    }
}

/// Store a job from an NDJSON body as it arrives (see the module doc).
pub async fn create_streamed_job(state: AppState, body: Body) -> Result<Response, ApiError> {
    match tokio::spawn(ingest(state, body)).await {
        Ok(answer) => answer,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// How an upload ended.
enum Ended {
    /// The body ended and every item is stored: the job may complete.
    Complete,
    /// The job ended (cancelled, failed fast) during the upload.
    JobFinished,
    /// Its client stopped it (see `upload_body`): the job was failed with the client's reason
    /// once the items it sent had run.
    StoppedByClient,
}

async fn ingest(state: AppState, body: Body) -> Result<Response, ApiError> {
    let mut lines = upload_body::lines(body, state.limits.max_body_bytes);
    let job = match create_from_first_line(&state, &mut lines).await {
        Ok(job) => job,
        Err(error) => {
            drain_behind(lines, &state);
            return Err(error);
        }
    };
    tracing::info!(job.id = %job.id, function = %job.spec.function, "streamed job accepted; its items are arriving");
    let mut upload = Upload {
        batcher: ChunkBatcher::new(job.spec.chunksize),
        state,
        job,
        next_chunk: 0,
        items: 0,
        line: 1,
    };
    let outcome = match upload.read(&mut lines).await {
        // The last chunk goes in with the upload's close, in one transaction.
        Ok(Ended::Complete) => match upload.store(true).await {
            Ok(true) => Ok(Ended::Complete),
            Ok(false) => Ok(Ended::JobFinished),
            Err(e) => Err(e),
        },
        other => other,
    };
    match outcome {
        Ok(Ended::Complete) => {
            let job = load_job(&upload.state, upload.job.id).await?;
            tracing::info!(job.id = %job.id, total = job.total, "upload complete");
            Ok(job_response(StatusCode::CREATED, job))
        }
        Ok(ended @ (Ended::JobFinished | Ended::StoppedByClient)) => {
            // Answer with the job as it is.
            if matches!(ended, Ended::JobFinished) {
                drain_behind(lines, &upload.state);
            }
            Ok(job_response(
                StatusCode::CREATED,
                load_job(&upload.state, upload.job.id).await?,
            ))
        }
        Err(error) => {
            let id = upload.job.id;
            let reason = match &error {
                ApiError::Store(_) | ApiError::Pool(_) => "an internal error".to_string(),
                other => other.to_string(),
            };
            tracing::warn!(job.id = %id, error = %error, "upload failed; failing the job");
            let state = &upload.state;
            let message = format!("the upload of its items failed: {reason}");
            if state
                .store
                .finish_job(id, JobStatus::Failed, Some(message))
                .await?
            {
                // At shutdown the supervisor may be gone already: nothing of it runs then.
                let _ = state.pool.job_ended(id).await;
            }
            if !matches!(error, ApiError::ShuttingDown) {
                drain_behind(lines, state);
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

/// Read line 1 (the job), check it like a JSON body, and store the job with its upload open.
async fn create_from_first_line(state: &AppState, lines: &mut Lines) -> Result<Job, ApiError> {
    let max_line = state.limits.max_body_bytes;
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
        Some(line) => line.map_err(|e| line_error(1, e, max_line))?,
    };
    let request: CreateJob = serde_json::from_str(&first)
        .map_err(|e| ApiError::InvalidRequest(format!("line 1 (the job): {e}")))?;
    if request.items.is_some() {
        return Err(ApiError::InvalidRequest(
            "line 1 (the job) must not have `items`: send one item per line after it".into(),
        ));
    }
    let spec = validate(state, request, None)?;
    // Its length is unknown: admitted if the queue is not full already.
    admit(state, 0).await?;
    check_offer(state, &spec).await?;
    let job = new_job(spec, 0, true);
    state
        .store
        .create_job(NewJob {
            job: job.clone(),
            chunks: Vec::new(),
            idempotency: None,
        })
        .await?;
    Ok(job)
}

/// An open upload: the job and where its items stand.
struct Upload {
    state: AppState,
    job: Job,
    batcher: ChunkBatcher,
    /// Index of the next chunk to store.
    next_chunk: u64,
    /// Items read so far.
    items: u64,
    /// Number of the line last read (1-based; line 1 is the job).
    line: u64,
}

impl Upload {
    /// Read item lines to the end of the body, storing full chunks in batches. At the end of
    /// the body the last partial chunk is left for [`Upload::store`]`(true)`; if the client
    /// stopped the upload, it is handled here ([`Upload::stop`]).
    async fn read(&mut self, lines: &mut Lines) -> Result<Ended, ApiError> {
        let max_line = self.state.limits.max_body_bytes;
        let limit = self.state.limits.max_items_per_job as u64;
        let shutdown = self.state.shutdown.clone();
        let mut store_at = Instant::now();
        loop {
            let waiting = self.batcher.full_chunks() > 0;
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Err(ApiError::ShuttingDown),
                next = lines.next() => next,
                _ = tokio::time::sleep_until(store_at), if waiting => {
                    if !self.store(false).await? {
                        return Ok(Ended::JobFinished);
                    }
                    continue;
                }
            };
            let Some(line) = next else {
                return Ok(Ended::Complete);
            };
            self.line += 1;
            if let Err(e) = &line
                && let Some(reason) = upload_body::client_stopped(e)
            {
                return self.stop(reason).await;
            }
            let line = line.map_err(|e| line_error(self.line, e, max_line))?;
            let text = line.trim();
            if text.is_empty() {
                continue;
            }
            let item: &RawValue = serde_json::from_str(text).map_err(|e| {
                let reason = e.to_string();
                let reason = reason.split(" at line ").next().unwrap_or_default();
                ApiError::InvalidRequest(format!(
                    "line {} is not a JSON item: {reason} at column {}",
                    self.line,
                    e.column()
                ))
            })?;
            if self.items >= limit {
                let ApiError::PayloadTooLarge(detail) = too_many_items(&self.state) else {
                    unreachable!("too_many_items is a PayloadTooLarge")
                };
                return Err(ApiError::PayloadTooLarge(format!(
                    "line {}: {detail}",
                    self.line
                )));
            }
            check_item(&self.job.spec, self.items, item)
                .map_err(|e| ApiError::InvalidRequest(format!("line {}: {e}", self.line)))?;
            let had_full = waiting;
            self.batcher.push(item.get());
            self.items += 1;
            if !had_full && self.batcher.full_chunks() > 0 {
                store_at = Instant::now() + BATCH_WAIT;
            }
            if (self.batcher.full_chunks() >= BATCH_CHUNKS
                || self.batcher.full_bytes() >= BATCH_BYTES)
                && !self.store(false).await?
            {
                return Ok(Ended::JobFinished);
            }
        }
    }

    /// The client stopped its upload because its input failed: store the items it sent (the
    /// last chunk partial), wait until they have run, then fail the job with its reason. The
    /// upload stays open meanwhile, so the job cannot complete. At shutdown it is failed at
    /// once.
    async fn stop(&mut self, reason: &str) -> Result<Ended, ApiError> {
        let id = self.job.id;
        let (chunks, count, items) =
            std::mem::replace(&mut self.batcher, ChunkBatcher::new(1)).finish();
        let store = &self.state.store;
        if !store
            .append_chunks(id, self.next_chunk, chunks, items, false)
            .await?
        {
            let _ = self.state.pool.job_ended(id).await;
            return Ok(Ended::JobFinished);
        }
        self.next_chunk += count;
        if count > 0 {
            self.state.pool.chunks_stored(&self.job, count).await?;
        }
        tracing::info!(job.id = %id, items = self.items, reason, "the client stopped its upload; the job fails once its items have run");
        let mut changes = self.state.events.subscribe(id);
        loop {
            changes.borrow_and_update();
            let job = load_job(&self.state, id).await?;
            if job.status.is_finished() {
                return Ok(Ended::JobFinished);
            }
            if job.done >= self.items {
                break;
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = self.state.shutdown.cancelled() => break,
            }
        }
        let message = format!(
            "its client stopped the upload after {} items: {reason}",
            self.items
        );
        if store
            .finish_job(id, JobStatus::Failed, Some(message))
            .await?
        {
            let _ = self.state.pool.job_ended(id).await; // gone at shutdown: fine
        }
        Ok(Ended::StoppedByClient)
    }

    /// Store the full chunks (with `close`, every chunk, and end the upload), then tell the
    /// supervisor. `Ok(false)` when the job has ended: nothing was stored.
    async fn store(&mut self, close: bool) -> Result<bool, ApiError> {
        let (chunks, count, items) = if close {
            std::mem::replace(&mut self.batcher, ChunkBatcher::new(1)).finish()
        } else {
            self.batcher.take_full()
        };
        let id = self.job.id;
        let stored = self
            .state
            .store
            .append_chunks(id, self.next_chunk, chunks, items, close)
            .await?;
        if !stored {
            // Ended meanwhile; make sure the supervisor has not kept it scheduled.
            let _ = self.state.pool.job_ended(id).await; // gone at shutdown: fine
            return Ok(false);
        }
        self.next_chunk += count;
        if close {
            self.job.ingesting = false;
        }
        if count > 0 || close {
            self.state.pool.chunks_stored(&self.job, count).await?;
        }
        Ok(true)
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

#[cfg(test)]
mod tests {
    use super::ChunkBatcher;

    #[test]
    fn batcher_cuts_full_chunks_and_a_partial_last_one() {
        let mut batcher = ChunkBatcher::new(2);
        assert_eq!(batcher.take_full(), ("[]".to_string(), 0, 0));
        for item in ["1", "\"a\"", "[3]"] {
            batcher.push(item);
        }
        assert_eq!(batcher.take_full(), (r#"[[0,[1,"a"]]]"#.to_string(), 1, 2));
        batcher.push("{}");
        batcher.push("5");
        assert_eq!(batcher.full_chunks(), 1);
        assert_eq!(
            batcher.finish(),
            ("[[2,[[3],{}]],[4,[5]]]".to_string(), 2, 3)
        );
        assert_eq!(ChunkBatcher::new(3).finish(), ("[]".to_string(), 0, 0));
    }

    #[test]
    fn batcher_ends_a_chunk_at_its_byte_limit() {
        let big = format!("\"{}\"", "x".repeat(crate::limits::MAX_CHUNK_BYTES / 2));
        let mut batcher = ChunkBatcher::new(1000);
        for _ in 0..3 {
            batcher.push(&big);
        }
        batcher.push("1");
        let (chunks, count, items) = batcher.finish();
        assert_eq!((count, items), (2, 4));
        let chunks: Vec<(u64, Vec<serde_json::Value>)> = serde_json::from_str(&chunks).unwrap();
        let shape: Vec<(u64, usize)> = chunks.iter().map(|(s, c)| (*s, c.len())).collect();
        assert_eq!(shape, [(0, 2), (2, 2)]);
    }
}
