//! Where jobs, their chunks and the chunks' outcomes are kept: the only module that knows a
//! database. Everything above it (the job service, the supervisor, the API's readers,
//! retention) uses [`Store`] and the types here, and nothing of a backend leaks through them.
//!
//! The storage model, the same for every backend:
//! - a job row, keyed internally by an integer (the public id is its UUIDv7);
//! - one row per chunk: its first item's index (`start`), its items until it has run, and —
//!   once it has run — all its outcomes as one JSON array (see `crate::outcomes`), written in the same statement
//!   that marks it done, so that a chunk is recorded exactly once. Results by index, pages,
//!   completion order and downloads are read from those rows ([`pages`]).
//!
//! Writes that someone waits for (a new job, a cancel, a delete) answer once committed;
//! the supervisor's job starts and chunk records are sent without waiting and committed in
//! order. After each commit the store calls its [`CommitHook`] with the jobs that changed:
//! persist first, publish second; one writer ([`writer`]) does this for every backend.
//! Backends: [`sqlite`] (embedded, one machine: one node runs everything) and [`postgres`] (a
//! database server that several nodes share), chosen by [`DatabaseLocation`]. On a shared
//! store each node claims the chunks it runs ([`Store::claim_chunks`]) and records a chunk
//! only under its claim; [`Store::cluster`] is the rest of what nodes share (heartbeats,
//! re-queues of a lost node's chunks, notifications between nodes).

mod location;
mod pages;
pub mod postgres;
mod rows;
pub mod sqlite;
mod writer;

use std::time::Duration;

use time::OffsetDateTime;

pub use location::DatabaseLocation;
pub use pages::{CompletionCursor, ResultsPage};
pub use postgres::cluster::{Cluster, Notice, NoticeKind};
pub use rows::format_time;

use crate::model::{Chunk, Job, JobId, JobStatus};
use crate::outcomes::ChunkOutcomes;
use writer::{Op, Outcome};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The store was closed (at shutdown).
    #[error("the database is closed")]
    Closed,
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the database writer has stopped")]
    WriterGone,
    /// The database cannot be written now (`full`: the disk is full); see `store::writer`.
    #[error("the database cannot be written: {message}")]
    Storage { full: bool, message: String },
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Jobs deleted per transaction by retention.
const PURGE_BATCH: u32 = 100;

/// Called after each commit with the jobs whose stored state changed.
pub type CommitHook = Box<dyn Fn(&[JobId]) + Send + Sync>;

/// A job to insert with its first chunks. With `job.ingesting`, more come through
/// [`Store::append_chunks`].
pub struct NewJob {
    pub job: Job,
    /// The chunks in pieces of about 1 MiB each (a backend parses each piece on its own, so a
    /// big job never costs one huge parse): JSON arrays of `[start, size, "items"]`, where
    /// "items" is the chunk's JSON array of items as a JSON string (see
    /// `crate::jobs::ChunkBatcher`).
    pub pieces: Vec<String>,
    /// The client's `Idempotency-Key` and the hash of its request.
    pub idempotency: Option<Idempotency>,
    /// Its chunks are handed to this node's supervisor with the news of the job, under this
    /// lease (`Cluster::reserve_lease`; 0 on SQLite): on a shared store they are stored claimed by
    /// this node, so that no other node runs them.
    pub claim: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    pub request_hash: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    NotFound,
    NotFinished,
}

/// A chunk's outcomes to record: applied only while the chunk is still queued.
#[derive(Debug)]
pub struct ChunkRecord {
    pub id: JobId,
    /// The chunk's first item.
    pub start: u64,
    pub outcomes: ChunkOutcomes,
    /// `fail_fast` tripped on this chunk: the job fails with this reason in the same
    /// transaction (so a job whose last item fails ends `failed`, not `completed`).
    pub fail_job: Option<String>,
    /// The claim it ran under (`Chunk::lease`): on a shared store, the record is refused
    /// unless this node still holds that claim.
    pub lease: u64,
}

/// A node sharing the store, as the nodes table holds it (see `crate::cluster`).
#[derive(Debug, Clone)]
pub struct NodeRow {
    pub id: String,
    pub name: String,
    pub address: String,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339, the database server's clock.
    pub heartbeat_at: String,
    /// Its `--node-lease`.
    pub lease: Duration,
    pub workers: usize,
    /// `alive`, `draining`, `stopped` or `lost`.
    pub state: String,
    /// Its pool's last snapshot, as `crate::cluster` wrote it (JSON).
    pub pool: String,
}

/// The store, whichever backend holds it. A cheap clone.
#[derive(Clone)]
pub enum Store {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

/// Run `$body` with `$store` bound to the backend.
macro_rules! backend {
    ($self:expr, $store:ident => $body:expr) => {
        match $self {
            Store::Sqlite($store) => $body,
            Store::Postgres($store) => $body,
        }
    };
}

impl Store {
    /// Open the database at `location` (a SQLite file is created if needed), apply migrations
    /// and start the writer; on a shared store, register `node` among the nodes. The task
    /// handle ends once every clone of the store is dropped.
    pub async fn open(
        location: &DatabaseLocation,
        node: &NodeRow,
        on_commit: CommitHook,
    ) -> Result<(Self, tokio::task::JoinHandle<()>)> {
        Ok(match location {
            DatabaseLocation::Sqlite(path) => {
                let (store, task) = sqlite::SqliteStore::open(path, on_commit).await?;
                (Self::Sqlite(store), task)
            }
            DatabaseLocation::Postgres(url) => {
                let (store, task) = postgres::PgStore::open(url, node, on_commit).await?;
                (Self::Postgres(store), task)
            }
        })
    }

    /// What nodes sharing the store share besides jobs (None on SQLite: one node).
    pub fn cluster(&self) -> Option<&Cluster> {
        match self {
            Store::Sqlite(_) => None,
            Store::Postgres(s) => Some(s.cluster()),
        }
    }

    /// Stop reading (at shutdown); the writer stops once every clone is dropped.
    pub fn close(&self) {
        backend!(self, s => s.close())
    }

    pub async fn ping(&self) -> Result<()> {
        backend!(self, s => s.ping().await)
    }

    /// Why the database cannot be written, while writes fail for that reason; None while they
    /// succeed.
    pub fn write_failure(&self) -> Option<String> {
        backend!(self, s => s.writer().failure())
    }

    /// Bytes of items and results sent to the writer and not yet committed.
    pub fn write_backlog(&self) -> usize {
        backend!(self, s => s.writer().backlog())
    }

    // ---- writes of the job service ----

    /// The writer every write goes through (see `writer`).
    fn writer(&self) -> &writer::Writer {
        backend!(self, s => s.writer())
    }

    pub async fn create_job(&self, job: NewJob) -> Result<()> {
        self.writer()
            .call(Op::CreateJob(Box::new(job)))
            .await
            .map(drop)
    }

    /// Store more chunks of a job whose upload is open (`piece` as in [`NewJob::pieces`], of
    /// `items` items); `close` ends the upload, making the total final. Returns false, storing
    /// nothing, when the job already ended (cancelled, failed).
    pub async fn append_chunks(
        &self,
        id: JobId,
        piece: String,
        items: u64,
        close: bool,
    ) -> Result<bool> {
        let op = Op::AppendChunks {
            id,
            piece,
            items,
            close,
            at: OffsetDateTime::now_utc(),
        };
        match self.writer().call(op).await? {
            Outcome::Changed(appended) => Ok(appended),
            other => unreachable!("append_chunks answered {other:?}"),
        }
    }

    /// End an unfinished job as failed or cancelled and drop its queued chunks. Returns false
    /// when the job was already finished (or does not exist).
    pub async fn finish_job(
        &self,
        id: JobId,
        status: JobStatus,
        error: Option<String>,
    ) -> Result<bool> {
        let op = Op::FinishJob {
            id,
            status,
            error,
            at: OffsetDateTime::now_utc(),
        };
        match self.writer().call(op).await? {
            Outcome::Changed(changed) => Ok(changed),
            other => unreachable!("finish_job answered {other:?}"),
        }
    }

    pub async fn delete_job(&self, id: JobId) -> Result<DeleteOutcome> {
        match self.writer().call(Op::DeleteJob { id }).await? {
            Outcome::Deleted(outcome) => Ok(outcome),
            other => unreachable!("delete_job answered {other:?}"),
        }
    }

    /// Delete the jobs (with their chunks) finished more than `age` ago; how many. A batch of
    /// [`PURGE_BATCH`] jobs per transaction, so that neither the writer nor the database
    /// holds one long delete (and other writes go in between).
    pub async fn purge_finished(&self, age: Duration) -> Result<u64> {
        let before = OffsetDateTime::now_utc() - age;
        let mut purged = 0;
        loop {
            let op = Op::PurgeFinished {
                before,
                limit: PURGE_BATCH,
            };
            match self.writer().call(op).await? {
                Outcome::Purged(n) => {
                    purged += n;
                    if n < u64::from(PURGE_BATCH) {
                        return Ok(purged);
                    }
                }
                other => unreachable!("purge_finished answered {other:?}"),
            }
        }
    }

    /// This node stops (after its supervisor has drained): on a shared store, the chunks it
    /// claimed and did not run go back to the other nodes at once, once everything it
    /// recorded is committed. Nothing on SQLite.
    pub async fn leave(&self) -> Result<()> {
        self.writer().call(Op::Leave).await.map(drop)
    }

    /// On a shared store, give back this node's claims that no one holds: all but those of
    /// the chunks its supervisor holds (`held`: waiting or running) and those of new jobs on
    /// their way to it (see `Cluster::reserve_lease`). A claim is in no one's hands when the
    /// node dropped it after it was declared lost, or when the answer to a claim was lost with
    /// its connection; the supervisor runs this now and then, so that no claimed chunk is
    /// stranded on a live node. It goes through the writer, after every record sent before:
    /// a chunk that ran and whose record is not committed yet keeps its claim. Claims made
    /// after the call are kept too. Returns the jobs whose chunks went back (the other nodes
    /// are told). Nothing on SQLite.
    pub async fn release_unheld(&self, held: Vec<(JobId, u64)>) -> Result<Vec<JobId>> {
        let Some(cluster) = self.cluster() else {
            return Ok(Vec::new());
        };
        let (kept, up_to) = cluster.audit_marks();
        match self
            .writer()
            .call(Op::ReleaseUnheld { held, kept, up_to })
            .await?
        {
            Outcome::Released(jobs) => Ok(jobs),
            other => unreachable!("release_unheld answered {other:?}"),
        }
    }

    // ---- writes of the supervisor (not waited for; committed in order) ----

    /// The job's first chunk was sent to a worker.
    pub fn mark_started(&self, id: JobId) {
        self.writer().send(Op::MarkStarted {
            id,
            at: OffsetDateTime::now_utc(),
        });
    }

    pub fn record_chunk(&self, record: ChunkRecord) {
        self.writer().send(Op::RecordChunk {
            record: Box::new(record),
            at: OffsetDateTime::now_utc(),
        });
    }

    // ---- reads ----

    pub async fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        backend!(self, s => s.get_job(id).await)
    }

    /// The job created with this `Idempotency-Key`, and the hash of the request that created it.
    pub async fn job_by_idempotency_key(&self, key: &str) -> Result<Option<(Job, String)>> {
        backend!(self, s => s.job_by_idempotency_key(key).await)
    }

    /// Newest first; `before` is the id of the last job of the previous page.
    pub async fn list_jobs(
        &self,
        status: Option<JobStatus>,
        before: Option<JobId>,
        limit: u32,
    ) -> Result<Vec<Job>> {
        backend!(self, s => s.list_jobs(status, before, limit).await)
    }

    /// Items of unfinished jobs that have no outcome yet (queued or running).
    pub async fn unfinished_items(&self) -> Result<u64> {
        backend!(self, s => s.unfinished_items().await)
    }

    /// For `/metrics`: jobs by status, and the age in seconds of the oldest unfinished job.
    pub async fn metrics_snapshot(&self) -> Result<(Vec<(String, u64)>, f64)> {
        backend!(self, s => s.metrics_snapshot().await)
    }

    /// Jobs the supervisor must run: queued or running, highest priority first. A row that
    /// cannot be read as a job comes as its id and why.
    pub async fn unfinished_jobs(&self) -> Result<Vec<Result<Job, (JobId, String)>>> {
        backend!(self, s => s.unfinished_jobs().await)
    }

    /// Up to `limit` queued chunks of a job for this node to run, in order. On SQLite, those
    /// whose first item comes after `after` (this node runs all of them); on a shared store,
    /// chunks no node has claimed, which this node now claims (whatever `after`).
    pub async fn claim_chunks(
        &self,
        id: JobId,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<Chunk>> {
        match self {
            Store::Sqlite(s) => s.queued_chunks(id, after, limit).await,
            Store::Postgres(s) => s.cluster().claim(id, limit).await,
        }
    }

    /// Queued chunks of a job that this node may run: all of them on SQLite; on a shared
    /// store, those no node has claimed.
    pub async fn count_queued_chunks(&self, id: JobId) -> Result<u64> {
        backend!(self, s => s.count_queued_chunks(id).await)
    }

    /// Up to `limit` results of `job` with index `from` or above, in index order (with
    /// `only_failed`, only item errors). Reads whole chunks, about as many as `limit` items
    /// need, so a page costs one or two reads whatever the chunksize.
    pub async fn results_by_index(
        &self,
        job: &Job,
        from: u64,
        limit: usize,
        only_failed: bool,
    ) -> Result<ResultsPage> {
        let mut page = ResultsPage::by_index(from, limit, only_failed);
        // Chunks hold at most `chunksize` items (fewer when they are large): ask for enough.
        let per_chunk = u64::from(job.spec.chunksize).max(1);
        loop {
            let wanted = page.missing() as u64;
            let chunks = (wanted.div_ceil(per_chunk) + 1).clamp(2, 2000) as u32;
            let after = page.next_start();
            let rows =
                backend!(self, s => s.done_chunks(job.id, after, chunks, only_failed).await)?;
            if !page.add(rows, chunks)? {
                return Ok(page);
            }
        }
    }

    /// Results in the order they were recorded (`imap_unordered`): up to `limit` from
    /// `cursor`, which the page moves on. Reading a job this way costs the same per page
    /// however far in.
    pub async fn results_by_completion(
        &self,
        job: &Job,
        cursor: &mut CompletionCursor,
        limit: usize,
    ) -> Result<ResultsPage> {
        if let Some(position) = cursor.unresolved() {
            let sizes = backend!(self, s => s.completion_sizes(job.id).await)?;
            cursor.resolve(position, &sizes);
        }
        let mut page = ResultsPage::by_completion(cursor.clone(), limit);
        let per_chunk = u64::from(job.spec.chunksize).max(1);
        loop {
            let wanted = page.missing() as u64;
            let chunks = (wanted.div_ceil(per_chunk) + 1).clamp(2, 2000) as u32;
            let after = page.next_seq();
            let rows = backend!(self, s => s.completed_chunks(job.id, after, chunks).await)?;
            if !page.add(rows, chunks)? {
                *cursor = page.cursor_after();
                return Ok(page);
            }
        }
    }
}
