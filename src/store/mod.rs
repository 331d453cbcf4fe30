//! SQLite storage of jobs, chunks and results: the only module that knows sqlx.
//!
//! [`Store`] is a cheap clone handed to the API (reads, job creation, cancel, delete) and to
//! the supervisor (chunk fetches, result recording). Reads go to a pool of read-only
//! connections ([`readers`]); every write goes through the single writer task in [`writer`],
//! which batches them into one transaction (group commit) and tells the `on_commit` hook which
//! jobs changed only after the commit: persist first, publish second. A small job's chunks are
//! also kept in memory from its creation until the supervisor's first fetch (`fresh`).

mod ops;
mod readers;
mod rows;
mod writer;

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::value::RawValue;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection};
use time::OffsetDateTime;

use crate::model::{Chunk, ItemResult, Job, JobId, JobStatus};
use readers::Readers;
pub use rows::format_time;
use rows::{ChunkRow, JobRow, ResultRow};
pub use writer::{DeleteOutcome, Idempotency, NewJob};
use writer::{Op, Outcome, Writer};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the database writer has stopped")]
    WriterGone,
    /// The database cannot be written now (`full`: the disk is full); see `writer`.
    #[error("the database cannot be written: {message}")]
    Storage { full: bool, message: String },
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// Read-only connections: concurrent readers (SSE streams, long-polls, chunk fetches).
const READERS: usize = 4;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Called after each commit with the jobs whose stored state changed.
pub type CommitHook = Box<dyn Fn(&[JobId]) + Send + Sync>;

/// Jobs whose chunks are this small (in JSON bytes) are kept in memory from their creation
/// until the supervisor's first fetch.
const FRESH_BYTES: usize = 16 * 1024;
/// At most this many such jobs are kept.
const FRESH_JOBS: usize = 1024;

#[derive(Clone)]
pub struct Store {
    reader: Arc<Readers>,
    writer: Writer,
    /// The chunks of small jobs just created, for the supervisor's first fetch: a job of a
    /// few items then runs without a read (a hand-off to a connection thread, during which
    /// the supervisor waits). Taken once; a job cancelled before it ran is dropped here, and
    /// the whole cache is dropped if it grows past [`FRESH_JOBS`] (the store has them all).
    fresh: Arc<Mutex<HashMap<JobId, Vec<Chunk>>>>,
}

impl Store {
    /// Open (creating if needed) the database file, apply migrations and start the writer.
    pub async fn open(
        path: &Path,
        on_commit: CommitHook,
    ) -> Result<(Self, tokio::task::JoinHandle<()>)> {
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            .disable_statement_logging();
        let mut conn = options.connect().await?;
        sqlx::migrate!("./migrations").run(&mut conn).await?;
        fail_interrupted_uploads(&mut conn).await?;
        let reader = Arc::new(Readers::open(&options.clone().read_only(true), READERS).await?);
        let (writer, task) = Writer::start(conn, options, on_commit);
        let fresh = Arc::default();
        Ok((
            Self {
                reader,
                writer,
                fresh,
            },
            task,
        ))
    }

    /// Close the reader pool; the writer stops once every `Store` clone is dropped.
    pub async fn close(&self) {
        self.reader.close().await;
    }

    pub async fn ping(&self) -> Result<()> {
        self.reader.acquire().await?.ping().await?;
        Ok(())
    }

    // ---- writes (through the writer task) ----

    pub async fn create_job(&self, job: NewJob) -> Result<()> {
        let id = job.job.id;
        let fresh = fresh_chunks(&job);
        self.writer
            .call(Op::CreateJob(Box::new(job)))
            .await
            .map(drop)?;
        if let Some(chunks) = fresh {
            let mut cache = self.fresh.lock().expect("fresh chunks lock");
            if cache.len() >= FRESH_JOBS {
                cache.clear(); // jobs cancelled before they ran; the store still has them
            }
            cache.insert(id, chunks);
        }
        Ok(())
    }

    /// Store more chunks of a job whose upload is open (`chunks`: a JSON array of
    /// `[first item index, [items]]`, numbered from `first_chunk`); `close` ends the upload,
    /// making the total final. Returns false, storing nothing, when the job already ended
    /// (cancelled, failed).
    pub async fn append_chunks(
        &self,
        id: JobId,
        first_chunk: u64,
        chunks: String,
        items: u64,
        close: bool,
    ) -> Result<bool> {
        let op = Op::AppendChunks {
            id,
            first_chunk,
            chunks,
            items,
            close,
            at: now(),
        };
        match self.writer.call(op).await? {
            Outcome::Changed(appended) => Ok(appended),
            other => unreachable!("append_chunks answered {other:?}"),
        }
    }

    /// Bytes of items and results sent to the writer and not yet committed.
    pub fn write_backlog(&self) -> usize {
        self.writer.backlog()
    }

    /// Why the database cannot be written, while writes fail for that reason (disk full, I/O
    /// errors); None while they succeed.
    pub fn write_failure(&self) -> Option<String> {
        self.writer.failure()
    }

    /// Move a queued job to running. Fire-and-forget: ordered before later writes.
    pub fn mark_started(&self, id: JobId) {
        self.writer.send(Op::MarkStarted { id, at: now() });
    }

    /// Record a chunk's outcomes (a JSON array of `{"value"}`/`{"error"}`, each with an
    /// optional `"log"`), unless the chunk is already recorded or cancelled.
    /// Fire-and-forget: ordered before later writes.
    pub fn record_chunk(&self, id: JobId, chunk: &Chunk, outcomes: String, failed: u64) {
        self.writer.send(Op::RecordChunk {
            id,
            chunk_index: chunk.chunk_index,
            start_index: chunk.start_index,
            size: chunk.size,
            outcomes,
            failed,
            at: now(),
        });
    }

    /// End an unfinished job as failed or cancelled and drop its queued chunks.
    /// Returns false when the job was already finished (or does not exist).
    pub async fn finish_job(
        &self,
        id: JobId,
        status: JobStatus,
        error: Option<String>,
    ) -> Result<bool> {
        self.forget_fresh(id);
        match self
            .writer
            .call(Op::FinishJob {
                id,
                status,
                error,
                at: now(),
            })
            .await?
        {
            Outcome::Changed(changed) => Ok(changed),
            other => unreachable!("finish_job answered {other:?}"),
        }
    }

    pub async fn delete_job(&self, id: JobId) -> Result<DeleteOutcome> {
        self.forget_fresh(id);
        match self.writer.call(Op::DeleteJob { id }).await? {
            Outcome::Deleted(outcome) => Ok(outcome),
            other => unreachable!("delete_job answered {other:?}"),
        }
    }

    /// Delete the jobs (with their chunks and results) finished more than `age` ago.
    /// Returns how many were deleted.
    pub async fn purge_finished(&self, age: Duration) -> Result<u64> {
        let before = now() - age;
        match self.writer.call(Op::PurgeFinished { before }).await? {
            Outcome::Purged(n) => Ok(n),
            other => unreachable!("purge_finished answered {other:?}"),
        }
    }

    // ---- reads ----

    pub async fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        let row: Option<JobRow> = sqlx::query_as("select * from jobs where id = ?1")
            .bind(id.to_string())
            .fetch_optional(&mut *self.reader.acquire().await?)
            .await?;
        row.map(Job::try_from).transpose()
    }

    /// The job created with this `Idempotency-Key`, and the hash of the request that created it.
    pub async fn job_by_idempotency_key(&self, key: &str) -> Result<Option<(Job, String)>> {
        let id: Option<(String, String)> =
            sqlx::query_as("select id, request_hash from jobs where idempotency_key = ?1")
                .bind(key)
                .fetch_optional(&mut *self.reader.acquire().await?)
                .await?;
        let Some((id, hash)) = id else {
            return Ok(None);
        };
        let id = id
            .parse()
            .map_err(|e: uuid::Error| Error::Corrupt(e.to_string()))?;
        Ok(self.get_job(id).await?.map(|job| (job, hash)))
    }

    /// Newest first; `before` is the id of the last job of the previous page.
    pub async fn list_jobs(
        &self,
        status: Option<JobStatus>,
        before: Option<JobId>,
        limit: u32,
    ) -> Result<Vec<Job>> {
        let rows: Vec<JobRow> = sqlx::query_as(
            "select * from jobs
             where (?1 is null or status = ?1) and (?2 is null or id < ?2)
             order by id desc limit ?3",
        )
        .bind(status.map(JobStatus::as_str))
        .bind(before.map(|id| id.to_string()))
        .bind(limit)
        .fetch_all(&mut *self.reader.acquire().await?)
        .await?;
        rows.into_iter().map(Job::try_from).collect()
    }

    /// Items of unfinished jobs that have no outcome yet (queued or running).
    pub async fn unfinished_items(&self) -> Result<u64> {
        let (n,): (i64,) = sqlx::query_as(
            "select coalesce(sum(total - done), 0) from jobs where status in ('queued', 'running')",
        )
        .fetch_one(&mut *self.reader.acquire().await?)
        .await?;
        Ok(n.max(0) as u64)
    }

    /// For `/metrics`: jobs by status, and the age in seconds of the oldest unfinished job.
    pub async fn metrics_snapshot(&self) -> Result<(Vec<(String, u64)>, f64)> {
        let mut conn = self.reader.acquire().await?;
        let by_status: Vec<(String, i64)> =
            sqlx::query_as("select status, count(*) from jobs group by status")
                .fetch_all(&mut *conn)
                .await?;
        let (age,): (Option<f64>,) = sqlx::query_as(
            "select (julianday('now') - julianday(min(created_at))) * 86400.0
             from jobs where status in ('queued', 'running')",
        )
        .fetch_one(&mut *conn)
        .await?;
        Ok((
            by_status
                .into_iter()
                .map(|(s, n)| (s, n.max(0) as u64))
                .collect(),
            age.unwrap_or(0.0).max(0.0),
        ))
    }

    /// Jobs the supervisor must run: queued or running, highest priority first. A row that
    /// cannot be read as a job comes as its id and why.
    pub async fn unfinished_jobs(&self) -> Result<Vec<Result<Job, (JobId, String)>>> {
        let rows: Vec<JobRow> = sqlx::query_as(
            "select * from jobs where status in ('queued', 'running') order by priority desc, id",
        )
        .fetch_all(&mut *self.reader.acquire().await?)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|row| {
                let Some(id) = row.id() else {
                    tracing::error!("a stored job has an unreadable id; it is left alone");
                    return None;
                };
                Some(Job::try_from(row).map_err(|e| (id, e.to_string())))
            })
            .collect())
    }

    /// Up to `limit` queued chunks of a job with index above `after`, in order.
    pub async fn queued_chunks(
        &self,
        id: JobId,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<Chunk>> {
        if after.is_none() {
            let mut cache = self.fresh.lock().expect("fresh chunks lock");
            if let Some(chunks) = cache.remove(&id)
                && chunks.len() <= limit as usize
            {
                return Ok(chunks);
            }
        }
        let rows: Vec<ChunkRow> = sqlx::query_as(
            "select chunk_index, start_index, size, items from chunks
             where job_id = ?1 and status = 'queued' and chunk_index > ?2
             order by chunk_index limit ?3",
        )
        .bind(id.to_string())
        .bind(after.map_or(-1, |a| a as i64))
        .bind(limit)
        .fetch_all(&mut *self.reader.acquire().await?)
        .await?;
        rows.into_iter().map(Chunk::try_from).collect()
    }

    pub async fn count_queued_chunks(&self, id: JobId) -> Result<u64> {
        let (count,): (i64,) =
            sqlx::query_as("select count(*) from chunks where job_id = ?1 and status = 'queued'")
                .bind(id.to_string())
                .fetch_one(&mut *self.reader.acquire().await?)
                .await?;
        Ok(count as u64)
    }

    /// Results with index >= `from`, in index order.
    pub async fn results_by_index(
        &self,
        id: JobId,
        from: u64,
        limit: u32,
    ) -> Result<Vec<ItemResult>> {
        self.results_page(
            "select json_group_array(json_array(item_index, value, error, log) order by item_index)
             from (select item_index, value, error, log from results
                   where job_id = ?1 and item_index >= ?2 order by item_index limit ?3)",
            id,
            from,
            limit,
        )
        .await
    }

    /// Like [`Store::results_by_index`], only the items whose result is an error.
    pub async fn failed_results_by_index(
        &self,
        id: JobId,
        from: u64,
        limit: u32,
    ) -> Result<Vec<ItemResult>> {
        self.results_page(
            "select json_group_array(json_array(item_index, value, error, log) order by item_index)
             from (select item_index, value, error, log from results
                   where job_id = ?1 and item_index >= ?2 and error is not null
                   order by item_index limit ?3)",
            id,
            from,
            limit,
        )
        .await
    }

    /// Results in the order they were recorded: after `cursor` (from the previous page; None
    /// to start from the beginning), skipping the first `skip` of those. Returns the page and
    /// the cursor after its last result (None when the page is empty). Paging goes by the
    /// cursor, so reading a job in completion order costs the same per page however far in.
    pub async fn results_by_completion(
        &self,
        id: JobId,
        cursor: Option<u64>,
        skip: u64,
        limit: u32,
    ) -> Result<(Vec<ItemResult>, Option<u64>)> {
        let mut conn = self.reader.acquire().await?;
        let after = match cursor {
            Some(cursor) => cursor as i64,
            None => {
                let (first,): (Option<i64>,) =
                    sqlx::query_as("select min(rowid) from results where job_id = ?1")
                        .bind(id.to_string())
                        .fetch_one(&mut *conn)
                        .await?;
                first.map_or(i64::MAX, |first| first - 1)
            }
        };
        // A range scan of the table by rowid (`not indexed`: the job's index would mean a sort
        // of all its results per page), skipping other jobs' rows as it goes.
        let (rows,): (String,) = sqlx::query_as(
            "select json_group_array(json_array(item_index, value, error, log, position) order by position)
             from (select item_index, value, error, log, rowid as position from results not indexed
                   where rowid > ?2 and job_id = ?1 order by rowid limit ?3 offset ?4)",
        )
        .bind(id.to_string())
        .bind(after)
        .bind(limit)
        .bind(skip as i64)
        .fetch_one(&mut *conn)
        .await?;
        let rows: Vec<ResultRow> =
            serde_json::from_str(&rows).map_err(|e| Error::Corrupt(e.to_string()))?;
        let cursor = rows.last().and_then(|row| row.4).map(|c| c as u64);
        let results = rows
            .into_iter()
            .map(ItemResult::try_from)
            .collect::<Result<_>>()?;
        Ok((results, cursor))
    }

    /// A page of results read as one row: `sql` folds the page into a JSON array of
    /// `[index, value, error, log]` (value and error are JSON text inside strings), so a page
    /// costs one hand-off from the connection's thread instead of one per result.
    async fn results_page(
        &self,
        sql: &'static str,
        id: JobId,
        from: u64,
        limit: u32,
    ) -> Result<Vec<ItemResult>> {
        let (rows,): (String,) = sqlx::query_as(sql)
            .bind(id.to_string())
            .bind(from as i64)
            .bind(limit)
            .fetch_one(&mut *self.reader.acquire().await?)
            .await?;
        let rows: Vec<ResultRow> =
            serde_json::from_str(&rows).map_err(|e| Error::Corrupt(e.to_string()))?;
        rows.into_iter().map(ItemResult::try_from).collect()
    }
}

impl Store {
    fn forget_fresh(&self, id: JobId) {
        self.fresh.lock().expect("fresh chunks lock").remove(&id);
    }
}

/// A small job's chunks as the store will hold them (all queued), or None.
fn fresh_chunks(new: &NewJob) -> Option<Vec<Chunk>> {
    let [(0, json)] = new.chunks.as_slice() else {
        return None; // big (several pieces) or streamed (none yet)
    };
    if json.len() > FRESH_BYTES {
        return None;
    }
    let chunks: Vec<(u64, Box<RawValue>)> = serde_json::from_str(json).ok()?;
    if chunks.is_empty() {
        return None; // a streamed job: its chunks come later, through `append_chunks`
    }
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, (start_index, items))| {
            let size = serde_json::from_str::<Vec<&RawValue>>(items.get())
                .ok()?
                .len() as u64;
            Some(Chunk {
                chunk_index: i as u64,
                start_index,
                size,
                items,
            })
        })
        .collect()
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// On start, before anything runs: a job whose upload was still open when poold stopped can
/// never get the rest of its items (that connection is gone), so it fails and its queued
/// chunks are dropped; the results of chunks that already ran stay readable.
async fn fail_interrupted_uploads(conn: &mut sqlx::SqliteConnection) -> Result<()> {
    let mut tx = conn.begin().await?;
    sqlx::query(
        "update chunks set status = 'cancelled' where status = 'queued' and job_id in
             (select id from jobs where ingesting = 1 and status in ('queued', 'running'))",
    )
    .execute(&mut *tx)
    .await?;
    let failed = sqlx::query(
        "update jobs set status = 'failed', ingesting = 0, finished_at = ?1,
                error = 'poold stopped while the job''s items were being uploaded'
         where ingesting = 1 and status in ('queued', 'running')",
    )
    .bind(format_time(now()))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    if failed.rows_affected() > 0 {
        tracing::warn!(
            jobs = failed.rows_affected(),
            "failed jobs whose upload was cut off by a restart"
        );
    }
    Ok(())
}

impl Store {
    /// Like [`Store::finish_job`] without waiting; ordered after writes already sent.
    pub fn finish_job_later(&self, id: JobId, status: JobStatus, error: Option<String>) {
        self.writer.send(Op::FinishJob {
            id,
            status,
            error,
            at: now(),
        });
    }
}
