//! The SQLite backend: embedded, one machine, one database file (WAL).
//!
//! Reads go to a few read-only connections ([`readers`]); every write goes through the single
//! writer task ([`writer`], SQL in [`ops`]), which folds whatever is waiting into one
//! transaction (group commit) and calls the commit hook only after the commit. Pages of
//! results are read as one row (SQLite folds the chunks into one text), so a page costs one
//! hand-off from a connection's thread however many chunks it spans.

mod ops;
mod readers;
mod rows;
mod writer;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection};
use time::OffsetDateTime;

use super::{ChunkRecord, CommitHook, DeleteOutcome, Error, NewJob, Result};
use crate::model::{Chunk, Job, JobId, JobStatus};
use readers::Readers;
use rows::JobRow;
pub use rows::format_time;
use writer::{Op, Outcome, Writer};

/// Read-only connections: concurrent readers (SSE streams, long-polls, chunk fetches).
const READERS: usize = 4;

/// The job's key, from its id (inside a query).
const KEY: &str = "(select key from jobs where id = ?1)";

// Every `limit` below is `limit +?N`, not `limit ?N`: SQLite plans with the value bound to a
// bare `LIMIT ?` and then prepares the statement again whenever the parameter is bound anew —
// once per page, an eighth of a replay's time (the plan is the same for any limit here).

#[derive(Clone)]
pub struct SqliteStore {
    reader: Arc<Readers>,
    writer: Writer,
}

impl SqliteStore {
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
        let (last_seq,): (Option<i64>,) = sqlx::query_as("select max(seq) from chunks")
            .fetch_one(&mut conn)
            .await?;
        let reader = Arc::new(Readers::open(&options.clone().read_only(true), READERS).await?);
        let (writer, task) = Writer::start(conn, options, on_commit, last_seq.unwrap_or(0) as u64);
        Ok((Self { reader, writer }, task))
    }

    pub async fn close(&self) {
        self.reader.close().await;
    }

    pub async fn ping(&self) -> Result<()> {
        self.reader.acquire().await?.ping().await?;
        Ok(())
    }

    pub fn write_backlog(&self) -> usize {
        self.writer.backlog()
    }

    pub fn write_failure(&self) -> Option<String> {
        self.writer.failure()
    }

    // ---- writes (through the writer task) ----

    pub async fn create_job(&self, job: NewJob) -> Result<()> {
        self.writer
            .call(Op::CreateJob(Box::new(job)))
            .await
            .map(drop)
    }

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
            at: now(),
        };
        match self.writer.call(op).await? {
            Outcome::Changed(appended) => Ok(appended),
            other => unreachable!("append_chunks answered {other:?}"),
        }
    }

    pub fn mark_started(&self, id: JobId) {
        self.writer.send(Op::MarkStarted { id, at: now() });
    }

    pub fn record_chunk(&self, record: ChunkRecord) {
        self.writer.send(Op::RecordChunk {
            record: Box::new(record),
            at: now(),
        });
    }

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
            at: now(),
        };
        match self.writer.call(op).await? {
            Outcome::Changed(changed) => Ok(changed),
            other => unreachable!("finish_job answered {other:?}"),
        }
    }

    pub async fn delete_job(&self, id: JobId) -> Result<DeleteOutcome> {
        match self.writer.call(Op::DeleteJob { id }).await? {
            Outcome::Deleted(outcome) => Ok(outcome),
            other => unreachable!("delete_job answered {other:?}"),
        }
    }

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

    pub async fn job_by_idempotency_key(&self, key: &str) -> Result<Option<(Job, String)>> {
        let row: Option<JobRow> = sqlx::query_as("select * from jobs where idempotency_key = ?1")
            .bind(key)
            .fetch_optional(&mut *self.reader.acquire().await?)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let hash = row.request_hash().unwrap_or_default().to_string();
        Ok(Some((Job::try_from(row)?, hash)))
    }

    pub async fn list_jobs(
        &self,
        status: Option<JobStatus>,
        before: Option<JobId>,
        limit: u32,
    ) -> Result<Vec<Job>> {
        let rows: Vec<JobRow> = sqlx::query_as(
            "select * from jobs
             where (?1 is null or status = ?1)
               and (?2 is null or key < (select key from jobs where id = ?2))
             order by key desc limit +?3",
        )
        .bind(status.map(JobStatus::as_str))
        .bind(before.map(|id| id.to_string()))
        .bind(limit)
        .fetch_all(&mut *self.reader.acquire().await?)
        .await?;
        rows.into_iter().map(Job::try_from).collect()
    }

    pub async fn unfinished_items(&self) -> Result<u64> {
        let (n,): (i64,) = sqlx::query_as(
            "select coalesce(sum(total - done), 0) from jobs where status in ('queued', 'running')",
        )
        .fetch_one(&mut *self.reader.acquire().await?)
        .await?;
        Ok(n.max(0) as u64)
    }

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

    pub async fn unfinished_jobs(&self) -> Result<Vec<Result<Job, (JobId, String)>>> {
        let rows: Vec<JobRow> = sqlx::query_as(
            "select * from jobs where status in ('queued', 'running') order by priority desc, key",
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

    /// Queued chunks, folded by SQLite into one text (one hand-off for the whole window).
    pub async fn queued_chunks(
        &self,
        id: JobId,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<Chunk>> {
        let (text,): (Option<String>,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select group_concat(start || ' ' || size || ' ' || items, char(31) order by start)
             from (select start, size, items from chunks
                   where job = {KEY} and state = 0 and start > ?2 order by start limit +?3)"
        )))
        .bind(id.to_string())
        .bind(after.map_or(-1, |a| a as i64))
        .bind(limit)
        .fetch_one(&mut *self.reader.acquire().await?)
        .await?;
        let Some(text) = text else {
            return Ok(Vec::new());
        };
        text.split('\u{1f}')
            .map(|entry| {
                let mut fields = entry.splitn(3, ' ');
                let mut number = || {
                    fields
                        .next()
                        .and_then(|f| f.parse::<u64>().ok())
                        .ok_or_else(|| Error::Corrupt(format!("a queued chunk: {entry:.80}")))
                };
                let (start_index, size) = (number()?, number()?);
                let items = fields
                    .next()
                    .and_then(|items| RawValue::from_string(items.to_string()).ok())
                    .ok_or_else(|| {
                        Error::Corrupt(format!("a queued chunk's items: {entry:.80}"))
                    })?;
                Ok(Chunk {
                    start_index,
                    size,
                    items,
                })
            })
            .collect()
    }

    pub async fn count_queued_chunks(&self, id: JobId) -> Result<u64> {
        let (count,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select count(*) from chunks where job = {KEY} and state = 0"
        )))
        .bind(id.to_string())
        .fetch_one(&mut *self.reader.acquire().await?)
        .await?;
        Ok(count as u64)
    }

    /// Up to `limit` done chunks holding item `from` or after, in index order, as the text of
    /// `store::pages` (with `only_failed`, only chunks with item errors).
    pub async fn done_chunks(
        &self,
        id: JobId,
        from: u64,
        limit: u32,
        only_failed: bool,
    ) -> Result<String> {
        let sql = if only_failed {
            DONE_FAILED_CHUNKS
        } else {
            DONE_CHUNKS
        };
        let (text,): (Option<String>,) = sqlx::query_as(sql)
            .bind(id.to_string())
            .bind(from as i64)
            .bind(limit)
            .fetch_one(&mut *self.reader.acquire().await?)
            .await?;
        Ok(text.unwrap_or_default())
    }

    /// Up to `limit` done chunks recorded after the one of seq `after`, in completion order.
    pub async fn completed_chunks(
        &self,
        id: JobId,
        after: Option<u64>,
        limit: u32,
    ) -> Result<String> {
        let (text,): (Option<String>,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select group_concat({ENTRY}, char(31) order by seq)
             from (select start, size, failed, seq, outcomes from chunks
                   where job = {KEY} and seq > ?2 order by seq limit +?3)"
        )))
        .bind(id.to_string())
        .bind(after.map_or(-1, |a| a as i64))
        .bind(limit)
        .fetch_one(&mut *self.reader.acquire().await?)
        .await?;
        Ok(text.unwrap_or_default())
    }

    /// Every done chunk's `(seq, size)`, in completion order (to resume a stream at a position).
    pub async fn completion_sizes(&self, id: JobId) -> Result<Vec<(u64, u64)>> {
        let (text,): (Option<String>,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select group_concat(seq || ' ' || size, ',' order by seq)
             from chunks where job = {KEY} and seq is not null"
        )))
        .bind(id.to_string())
        .fetch_one(&mut *self.reader.acquire().await?)
        .await?;
        let Some(text) = text else {
            return Ok(Vec::new());
        };
        text.split(',')
            .map(|pair| {
                let (seq, size) = pair
                    .split_once(' ')
                    .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                    .ok_or_else(|| Error::Corrupt(format!("a chunk's seq and size: {pair}")))?;
                Ok((seq, size))
            })
            .collect()
    }
}

/// A done chunk as `store::pages` reads it.
const ENTRY: &str = "start || ' ' || size || ' ' || failed || ' ' || seq || ' ' || outcomes";

/// Done chunks from the one holding item ?2 on (the anchor is found through the primary key).
const DONE_CHUNKS: &str = "select group_concat(start || ' ' || size || ' ' || failed || ' ' || seq || ' ' || outcomes, char(31) order by start)
     from (select start, size, failed, seq, outcomes from chunks
           where job = (select key from jobs where id = ?1) and state = 1
             and start >= coalesce((select max(start) from chunks
                                    where job = (select key from jobs where id = ?1) and start <= ?2), 0)
           order by start limit +?3)";

/// The same, only chunks with item errors (through the partial index on them).
const DONE_FAILED_CHUNKS: &str = "select group_concat(start || ' ' || size || ' ' || failed || ' ' || seq || ' ' || outcomes, char(31) order by start)
     from (select start, size, failed, seq, outcomes from chunks
           where job = (select key from jobs where id = ?1) and failed > 0
             and start >= coalesce((select max(start) from chunks
                                    where job = (select key from jobs where id = ?1) and start <= ?2), 0)
           order by start limit +?3)";

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// On start, before anything runs: a job whose upload was still open when poold stopped can
/// never get the rest of its items (that connection is gone), so it fails and its queued
/// chunks are dropped; the results of chunks that already ran stay readable.
async fn fail_interrupted_uploads(conn: &mut sqlx::SqliteConnection) -> Result<()> {
    let mut tx = conn.begin().await?;
    sqlx::query(
        "update chunks set state = 2 where state = 0 and job in
             (select key from jobs where ingesting = 1 and status in ('queued', 'running'))",
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
