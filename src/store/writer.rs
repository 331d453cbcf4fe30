//! The single writer, shared by every backend: one thread applies every write, in order.
//!
//! Callers (the backends' `create_job`, `record_chunk`, …, on behalf of the job service, the
//! supervisor and retention) send [`Op`]s over a channel, either waiting for the commit
//! ([`Writer::call`]) or not ([`Writer::send`]: job starts and chunk records from the
//! supervisor). The thread takes all that are waiting (group commit) and hands them to its
//! [`Backend`], which applies them in one transaction (its SQL is its own: `sqlite::ops`,
//! `postgres::ops`). Only after the commit does it answer the callers and call the commit
//! hook with the jobs that changed: persist first, publish second.
//!
//! When a write fails, what happens depends on why (see [`Backend::is_storage_failure`]):
//! - **The database cannot be written** (disk full, I/O error, read-only, locked, the server
//!   unreachable): nothing is lost. The backend drops its connection (a failed commit can leave
//!   it unusable) and opens a new one for the next batch, waited writes get [`Error::Storage`]
//!   at once (the API answers 507 or 503), and unwaited ones are kept, in order, and retried
//!   with a growing back-off until they go in; until then the store reports the failure
//!   ([`Writer::failure`], `/readyz`). Retrying is safe: a chunk is recorded only while it is
//!   still queued. The supervisor stops dispatching while the kept writes grow (they count in
//!   [`Writer::backlog`]).
//! - **The database refuses the data** (a malformed value): the batch's ops are applied one by
//!   one so that the bad one fails alone. A chunk record the database refuses is recorded
//!   again with every item failed as `unstorable_result`, so the job still ends.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::sync::oneshot;

use crate::model::{JobId, JobStatus};
use crate::outcomes::ChunkOutcomes;
use crate::protocol::PooldError;
use crate::store::{ChunkRecord, CommitHook, DeleteOutcome, Error, NewJob, Result};

/// The most ops folded into one transaction…
const MAX_BATCH: usize = 1024;
/// …and the most bytes of items and results they may carry: a batch's statements parse its
/// JSON at once, so this bounds the writer's memory however far behind it falls (larger
/// batches measured no faster).
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Batches that start with a chunk record are taken at most this often: while chunks are
/// short, a commit costs more than the records it carries.
const RECORD_INTERVAL: Duration = Duration::from_micros(250);
/// Back-off between retries of kept writes while the database cannot be written.
const MIN_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(2);

pub enum Op {
    CreateJob(Box<NewJob>),
    /// More chunks of a job whose upload is open (a piece as in [`NewJob::pieces`]); `close`
    /// ends the upload (the total is then final). Skipped when the job has ended meanwhile.
    AppendChunks {
        id: JobId,
        piece: String,
        items: u64,
        close: bool,
        at: OffsetDateTime,
    },
    MarkStarted {
        id: JobId,
        at: OffsetDateTime,
    },
    RecordChunk {
        record: Box<ChunkRecord>,
        at: OffsetDateTime,
    },
    FinishJob {
        id: JobId,
        status: JobStatus,
        error: Option<String>,
        at: OffsetDateTime,
    },
    DeleteJob {
        id: JobId,
    },
    /// Delete every job finished before `before` (retention).
    PurgeFinished {
        before: OffsetDateTime,
        /// At most this many jobs (one transaction stays short).
        limit: u32,
    },
    /// This node stops: on a shared store, give back the claims of chunks it did not run and
    /// mark it stopped — after every record sent before (the writer applies ops in order).
    Leave,
    /// On a shared store, give back this node's claims made under a lease up to `up_to`, but
    /// those of the chunks `held` (job, chunk start) and those made under the leases `kept` —
    /// after every record sent before (see `Store::release_unheld`).
    ReleaseUnheld {
        held: Vec<(JobId, u64)>,
        kept: Vec<u64>,
        up_to: u64,
    },
}

#[derive(Debug)]
pub enum Outcome {
    Done,
    Changed(bool),
    Deleted(DeleteOutcome),
    Purged(u64),
    /// The jobs whose chunks went back (`Op::ReleaseUnheld`).
    Released(Vec<JobId>),
}

impl Op {
    /// The job whose stored state the op changes (a purge changes only jobs that are gone).
    pub fn job_id(&self) -> Option<JobId> {
        match self {
            Op::CreateJob(new) => Some(new.job.id),
            Op::RecordChunk { record, .. } => Some(record.id),
            Op::AppendChunks { id, .. }
            | Op::MarkStarted { id, .. }
            | Op::FinishJob { id, .. }
            | Op::DeleteJob { id } => Some(*id),
            Op::PurgeFinished { .. } | Op::Leave | Op::ReleaseUnheld { .. } => None,
        }
    }

    /// Roughly the bytes of JSON this op hands to the database.
    pub fn payload_bytes(&self) -> usize {
        match self {
            Op::CreateJob(new) => new.pieces.iter().map(String::len).sum(),
            Op::AppendChunks { piece, .. } => piece.len(),
            Op::RecordChunk { record, .. } => record.outcomes.json.len(),
            Op::MarkStarted { .. }
            | Op::FinishJob { .. }
            | Op::DeleteJob { .. }
            | Op::PurgeFinished { .. }
            | Op::Leave
            | Op::ReleaseUnheld { .. } => 64,
        }
    }

    /// Job starts and chunk records: applied together, a few statements for any number of them
    /// (see the backends' `ops`).
    pub fn is_progress(&self) -> bool {
        matches!(self, Op::MarkStarted { .. } | Op::RecordChunk { .. })
    }
}

/// What a backend gives the writer: its connection and its SQL.
pub trait Backend: Send + 'static {
    /// Apply `ops` in one transaction and commit; one outcome per op, or the first error
    /// (the transaction is then rolled back). After a storage failure the backend drops its
    /// connection and opens a new one on the next call (a failed commit can leave a connection
    /// unusable). Runs on the writer's own thread (not an async task): it may block.
    fn apply_batch(&mut self, ops: &[&Op]) -> Result<Vec<Outcome>>;

    /// Whether a write failed because the database cannot be written now (disk full, I/O
    /// error, read-only, locked, unreachable), as opposed to refusing this write's data. The
    /// first kind passes; the second does not.
    fn is_storage_failure(&self, e: &Error) -> bool;

    /// Close the connection at shutdown.
    fn close(self);
}

struct Request {
    op: Op,
    reply: Option<oneshot::Sender<Result<Outcome>>>,
}

#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Request>,
    /// Bytes of JSON sent and not yet applied (see [`Writer::backlog`]).
    backlog: Arc<AtomicUsize>,
    /// Why writes are failing, while they are.
    failure: Arc<Mutex<Option<String>>>,
}

impl Writer {
    /// Start the thread on `backend`. The handle ends once every sender is gone.
    pub fn start<B: Backend>(
        backend: B,
        on_commit: CommitHook,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel();
        let writer = Self {
            tx,
            backlog: Arc::default(),
            failure: Arc::default(),
        };
        let task = Task {
            backend: Some(backend),
            rx,
            on_commit,
            backlog: writer.backlog.clone(),
            failure: writer.failure.clone(),
            kept: VecDeque::new(),
            retry_at: None,
            retry_after: MIN_RETRY,
            last_records: Instant::now(),
        };
        (writer, tokio::task::spawn_blocking(move || task.run()))
    }

    /// Bytes of items and results waiting for the writer (kept writes included). The channel
    /// is unbounded (senders never block), so the supervisor checks this and stops dispatching
    /// while it is high.
    pub fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }

    /// Why the database cannot be written, while the last write failed for that reason.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().expect("writer failure").clone()
    }

    fn enqueue(&self, request: Request) -> Result<(), Request> {
        let bytes = request.op.payload_bytes();
        self.backlog.fetch_add(bytes, Ordering::Relaxed);
        self.tx.send(request).map_err(|e| {
            self.backlog.fetch_sub(bytes, Ordering::Relaxed);
            e.0
        })
    }

    /// Apply `op` and wait for its commit.
    pub(super) async fn call(&self, op: Op) -> Result<Outcome> {
        let (reply, rx) = oneshot::channel();
        self.enqueue(Request {
            op,
            reply: Some(reply),
        })
        .map_err(|_| Error::WriterGone)?;
        rx.await.map_err(|_| Error::WriterGone)?
    }

    /// Queue `op` without waiting; it commits before any op sent after it.
    pub(super) fn send(&self, op: Op) {
        if self.enqueue(Request { op, reply: None }).is_err() {
            tracing::error!("database writer has stopped; a write was dropped");
        }
    }
}

struct Task<B> {
    /// Taken at shutdown only.
    backend: Option<B>,
    rx: mpsc::Receiver<Request>,
    on_commit: CommitHook,
    backlog: Arc<AtomicUsize>,
    failure: Arc<Mutex<Option<String>>>,
    /// Unwaited writes that failed because the database could not be written, oldest first:
    /// retried (at `retry_at`) before anything newer is applied.
    kept: VecDeque<Request>,
    retry_at: Option<Instant>,
    retry_after: Duration,
    /// When the last batch that started with a chunk record was taken.
    last_records: Instant,
}

impl<B: Backend> Task<B> {
    fn run(mut self) {
        while let Some(batch) = self.next_batch() {
            self.apply(batch);
        }
        if !self.kept.is_empty() {
            // Shutting down: one last try, then the chunks of what is left run again after
            // the next start (they are still queued in the database).
            let batch = std::mem::take(&mut self.kept).into();
            self.apply(batch);
            if !self.kept.is_empty() {
                tracing::error!(
                    writes = self.kept.len(),
                    "database still not writable at shutdown; the chunks of results not \
                     stored will run again after the next start"
                );
            }
        }
        if let Some(backend) = self.backend.take() {
            backend.close();
        }
    }

    /// The next batch: kept writes first (at their retry time; waited writes that arrive
    /// meanwhile are answered with the failure at once), then whatever is waiting. None when
    /// every sender is gone.
    fn next_batch(&mut self) -> Option<Vec<Request>> {
        while !self.kept.is_empty() {
            let at = self.retry_at.unwrap_or_else(Instant::now);
            match self
                .rx
                .recv_timeout(at.saturating_duration_since(Instant::now()))
            {
                Err(RecvTimeoutError::Timeout) => {
                    let mut batch = Vec::new();
                    let mut bytes = 0;
                    while let Some(request) = self.kept.pop_front() {
                        bytes += request.op.payload_bytes();
                        batch.push(request);
                        if batch.len() >= MAX_BATCH || bytes >= MAX_BATCH_BYTES {
                            break;
                        }
                    }
                    return Some(batch);
                }
                Err(RecvTimeoutError::Disconnected) => return None,
                Ok(request) => {
                    if request.reply.is_some() {
                        let failure = self.failure.lock().expect("writer failure").clone();
                        let failure =
                            failure.unwrap_or_else(|| "the database cannot be written".into());
                        self.done(request, Err(storage_error(&failure)));
                    } else {
                        self.kept.push_back(request);
                    }
                }
            }
        }
        let first = self.rx.recv().ok()?;
        if matches!(first.op, Op::RecordChunk { .. }) {
            // Nobody waits for chunk records: while they come fast, they are taken at most
            // every RECORD_INTERVAL, many to a transaction (writes that someone waits for may
            // wait that long behind them).
            let now = Instant::now();
            let until = self.last_records + RECORD_INTERVAL;
            if now < until {
                std::thread::sleep(until - now);
            }
            self.last_records = Instant::now();
        }
        let mut bytes = first.op.payload_bytes();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            let Ok(next) = self.rx.try_recv() else { break };
            bytes += next.op.payload_bytes();
            batch.push(next);
        }
        Some(batch)
    }

    /// Apply a batch in one transaction; on failure, see the module doc.
    fn apply(&mut self, batch: Vec<Request>) {
        match self.try_apply(&batch) {
            Ok(outcomes) => self.applied(batch, outcomes),
            Err(e) if self.is_storage_failure(&e) => {
                self.storage_failed(&e);
                // Keep the unwaited writes in their order, ahead of anything newer.
                for request in batch.into_iter().rev() {
                    self.fail(request, storage_error(&e.to_string()));
                }
            }
            Err(e) if batch.len() == 1 => {
                let request = batch.into_iter().next().expect("one request");
                self.refused(request, e);
            }
            Err(e) => {
                tracing::warn!(error = %e, ops = batch.len(), "write batch failed; applying its ops one by one");
                for request in batch {
                    self.apply(vec![request]);
                }
            }
        }
    }

    fn try_apply(&mut self, batch: &[Request]) -> Result<Vec<Outcome>> {
        let ops: Vec<&Op> = batch.iter().map(|r| &r.op).collect();
        self.backend
            .as_mut()
            .expect("the backend until shutdown")
            .apply_batch(&ops)
    }

    fn is_storage_failure(&self, e: &Error) -> bool {
        matches!(e, Error::Storage { .. } | Error::WriterGone)
            || self
                .backend
                .as_ref()
                .is_some_and(|b| b.is_storage_failure(e))
    }

    fn applied(&mut self, batch: Vec<Request>, outcomes: Vec<Outcome>) {
        if self
            .failure
            .lock()
            .expect("writer failure")
            .take()
            .is_some()
        {
            tracing::info!("database writes succeed again");
        }
        self.retry_after = MIN_RETRY;
        let changed: BTreeSet<JobId> = batch.iter().filter_map(|r| r.op.job_id()).collect();
        if !changed.is_empty() {
            (self.on_commit)(&changed.into_iter().collect::<Vec<_>>());
        }
        for (request, outcome) in batch.into_iter().zip(outcomes) {
            self.done(request, Ok(outcome));
        }
    }

    /// The database could not be written: report it and schedule the retry of kept writes.
    fn storage_failed(&mut self, e: &Error) {
        let mut failure = self.failure.lock().expect("writer failure");
        if failure.is_none() {
            tracing::error!(error = %e, "the database cannot be written; new jobs are refused \
                and results are kept in memory until it can");
        }
        *failure = Some(e.to_string());
        self.retry_at = Some(Instant::now() + self.retry_after);
        self.retry_after = (self.retry_after * 2).min(MAX_RETRY);
    }

    /// A write of a batch that failed because the database cannot be written: a waited one
    /// gets the error; an unwaited one is kept for the retry (at the front: it is older than
    /// any kept write).
    fn fail(&mut self, request: Request, error: Error) {
        if request.reply.is_some() {
            self.done(request, Err(error));
        } else {
            self.kept.push_front(request);
        }
    }

    /// A single write the database refused for its data. A waited one gets the error; a chunk
    /// record is recorded again with every item failed (and if even that is refused, its job
    /// fails), so that the job still ends; anything else is dropped (and logged).
    fn refused(&mut self, request: Request, e: Error) {
        tracing::error!(error = %e, job.id = ?request.op.job_id(), "database write refused");
        if request.reply.is_some() {
            return self.done(request, Err(e));
        }
        let fallbacks = match &request.op {
            Op::RecordChunk { record, at } => vec![
                unstorable(record, &e, *at),
                Op::FinishJob {
                    id: record.id,
                    status: JobStatus::Failed,
                    error: Some(format!("its results could not be stored: {e}")),
                    at: *at,
                },
            ],
            _ => Vec::new(),
        };
        self.done(request, Err(e));
        for op in fallbacks {
            self.backlog
                .fetch_add(op.payload_bytes(), Ordering::Relaxed);
            let batch = vec![Request { op, reply: None }];
            match self.try_apply(&batch) {
                Ok(outcomes) => return self.applied(batch, outcomes),
                Err(e) if self.is_storage_failure(&e) => {
                    self.storage_failed(&e);
                    return self.kept.extend(batch);
                }
                Err(e) => {
                    tracing::error!(error = %e, "database write refused");
                    batch
                        .into_iter()
                        .for_each(|r| self.done(r, Ok(Outcome::Done)));
                }
            }
        }
    }

    /// The write is finished with (applied, or failed for good): answer it, uncount it.
    fn done(&self, request: Request, outcome: Result<Outcome>) {
        self.backlog
            .fetch_sub(request.op.payload_bytes(), Ordering::Relaxed);
        if let Some(reply) = request.reply {
            let _ = reply.send(outcome);
        }
    }
}

/// The record of a chunk whose every item failed as `unstorable_result`.
fn unstorable(record: &ChunkRecord, e: &Error, at: OffsetDateTime) -> Op {
    let message = format!("the database refused this item's chunk of results: {e}");
    Op::RecordChunk {
        record: Box::new(ChunkRecord {
            id: record.id,
            start: record.start,
            outcomes: ChunkOutcomes::all_failed(
                record.outcomes.size,
                PooldError::UnstorableResult,
                &message,
            ),
            fail_job: record.fail_job.clone(),
            lease: record.lease,
        }),
        at,
    }
}

/// The error a waited write gets while the database cannot be written: `full` when the disk
/// is (SQLite's and PostgreSQL's words for it).
fn storage_error(message: &str) -> Error {
    Error::Storage {
        full: message.contains("database or disk is full")
            || message.contains("No space left on device"),
        message: message.to_string(),
    }
}
