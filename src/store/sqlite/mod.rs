//! The SQLite backend: embedded, one machine, one database file (WAL).
//!
//! SQLite is driven synchronously through rusqlite: reads on a few read-only connections
//! ([`readers`]: a row on the caller's thread, pages on the blocking pool); every write goes
//! through the store's single writer thread (`store::writer`; here [`writer`] its connection,
//! SQL in [`ops`]), which folds whatever is
//! waiting into one transaction (group commit) and calls the commit hook only after the
//! commit. Pages of results are read as one row (SQLite folds the chunks into one text).
//! Migrations are applied at open by sqlx's migrator (`migrations/`, recorded in
//! `_sqlx_migrations` as by every earlier version), on a connection closed before anything
//! else opens one.

mod ops;
mod readers;
mod writer;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{ConnectOptions, Connection as _};
use time::OffsetDateTime;

use super::rows::{JobRow, format_time, parse_chunks, parse_completion_sizes, unfinished_jobs};
use super::writer::Writer;
use super::{CommitHook, Error, Result};
use crate::model::{Chunk, Job, JobId, JobStatus};
use readers::Readers;
use writer::SqliteWriter;

/// Read-only connections: concurrent readers (SSE streams, long-polls, chunk fetches).
const READERS: usize = 4;

// Every `limit` below is `limit +?N`, not `limit ?N`: SQLite plans with the value bound to a
// bare `LIMIT ?` and then prepares the statement again whenever the parameter is bound anew —
// once per page, an eighth of a replay's time (the plan is the same for any limit here).

/// `select` of a job row's columns, in the order [`job_row`] reads them, from `jobs` and then
/// the rest of the query. (They are read by position: rusqlite finds a column by name by
/// scanning every column's name, a cost per field that showed in the read of each long-poll.)
macro_rules! select_jobs {
    ($rest:literal) => {
        concat!(
            "select id, function, kwargs, star, chunksize, timeout_s, max_attempts, on_error, ",
            "priority, metadata, codec, max_concurrency, status, total, ingesting, done, failed, ",
            "error, created_at, started_at, finished_at, request_hash from jobs ",
            $rest
        )
    };
}

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
            .busy_timeout(Duration::from_secs(10))
            .disable_statement_logging();
        let mut migrating = options.connect().await?;
        sqlx::migrate!("./migrations").run(&mut migrating).await?;
        migrating.close().await?;
        let path = path.to_path_buf();
        let conn = connection(&path, false)?;
        fail_interrupted_uploads(&conn)?;
        let last_seq: Option<i64> =
            conn.query_row("select max(seq) from chunks", [], |row| row.get(0))?;
        let reader = Arc::new(Readers::open(&path, READERS)?);
        let backend = SqliteWriter::new(conn, path, last_seq.unwrap_or(0) as u64);
        let (writer, task) = Writer::start(backend, on_commit);
        Ok((Self { reader, writer }, task))
    }

    pub fn close(&self) {
        self.reader.close();
    }

    pub async fn ping(&self) -> Result<()> {
        self.reader
            .read(|conn| Ok(conn.query_row("select 1", [], |_| Ok(()))?))
            .await
    }

    /// The writer every write goes through (see `store::writer`).
    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    // ---- reads ----

    pub async fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        let row = self
            .reader
            .read(|conn| {
                Ok(conn
                    .prepare_cached(select_jobs!("where id = ?1"))?
                    .query_row([id.to_string()], job_row)
                    .optional()?)
            })
            .await?;
        row.map(Job::try_from).transpose()
    }

    pub async fn job_by_idempotency_key(&self, key: &str) -> Result<Option<(Job, String)>> {
        let row = self
            .reader
            .read(|conn| {
                Ok(conn
                    .prepare_cached(select_jobs!("where idempotency_key = ?1"))?
                    .query_row([key], job_row)
                    .optional()?)
            })
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
        let rows = self
            .reader
            .read_blocking(move |conn| {
                let mut query = conn.prepare_cached(select_jobs!(
                    "where (?1 is null or status = ?1)
                       and (?2 is null or key < (select key from jobs where id = ?2))
                     order by key desc limit +?3"
                ))?;
                let rows = query.query_map(
                    params![
                        status.map(JobStatus::as_str),
                        before.map(|id| id.to_string()),
                        limit
                    ],
                    job_row,
                )?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .await?;
        rows.into_iter().map(Job::try_from).collect()
    }

    pub async fn unfinished_items(&self) -> Result<u64> {
        let n: i64 = self
            .reader
            .read(|conn| {
                Ok(conn
                    .prepare_cached(
                        "select coalesce(sum(total - done), 0) from jobs
                         where status in ('queued', 'running')",
                    )?
                    .query_row([], |row| row.get(0))?)
            })
            .await?;
        Ok(n.max(0) as u64)
    }

    pub async fn metrics_snapshot(&self) -> Result<(Vec<(String, u64)>, f64)> {
        self.reader
            .read_blocking(|conn| {
                let by_status = conn
                    .prepare_cached("select status, count(*) from jobs group by status")?
                    .query_map([], |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, i64>(1)?.max(0) as u64,
                        ))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let age: Option<f64> = conn
                    .prepare_cached(
                        "select (julianday('now') - julianday(min(created_at))) * 86400.0
                         from jobs where status in ('queued', 'running')",
                    )?
                    .query_row([], |row| row.get(0))?;
                Ok((by_status, age.unwrap_or(0.0).max(0.0)))
            })
            .await
    }

    pub async fn unfinished_jobs(&self) -> Result<Vec<Result<Job, (JobId, String)>>> {
        let rows = self
            .reader
            .read_blocking(|conn| {
                Ok(conn
                    .prepare_cached(select_jobs!(
                        "where status in ('queued', 'running') order by priority desc, key"
                    ))?
                    .query_map([], job_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .await?;
        Ok(unfinished_jobs(rows))
    }

    /// Queued chunks, folded by SQLite into one text.
    pub async fn queued_chunks(
        &self,
        id: JobId,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<Chunk>> {
        let text = self
            .text(
                QUEUED_CHUNKS,
                id,
                Some((after.map_or(-1, |a| a as i64), limit)),
            )
            .await?;
        let Some(text) = text else {
            return Ok(Vec::new());
        };
        parse_chunks(&text, 0)
    }

    pub async fn count_queued_chunks(&self, id: JobId) -> Result<u64> {
        let count: i64 = self
            .reader
            .read_blocking(move |conn| {
                Ok(conn
                    .prepare_cached(
                        "select count(*) from chunks
                         where job = (select key from jobs where id = ?1) and state = 0",
                    )?
                    .query_row([id.to_string()], |row| row.get(0))?)
            })
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
        let text = self.text(sql, id, Some((from as i64, limit))).await?;
        Ok(text.unwrap_or_default())
    }

    /// Up to `limit` done chunks recorded after the one of seq `after`, in completion order.
    pub async fn completed_chunks(
        &self,
        id: JobId,
        after: Option<u64>,
        limit: u32,
    ) -> Result<String> {
        let after = after.map_or(-1, |a| a as i64);
        let text = self
            .text(COMPLETED_CHUNKS, id, Some((after, limit)))
            .await?;
        Ok(text.unwrap_or_default())
    }

    /// Every done chunk's `(seq, size)`, in completion order (to resume a stream at a position).
    pub async fn completion_sizes(&self, id: JobId) -> Result<Vec<(u64, u64)>> {
        let Some(text) = self.text(COMPLETION_SIZES, id, None).await? else {
            return Ok(Vec::new());
        };
        parse_completion_sizes(&text)
    }

    /// The one text a query of chunks folds its rows into, on the blocking pool: the job's
    /// id is ?1, then `from` (?2) and `limit` (?3) when given.
    async fn text(
        &self,
        sql: &'static str,
        id: JobId,
        from_and_limit: Option<(i64, u32)>,
    ) -> Result<Option<String>> {
        self.reader
            .read_blocking(move |conn| {
                let mut query = conn.prepare_cached(sql)?;
                let id = id.to_string();
                let text = match from_and_limit {
                    Some((from, limit)) => {
                        query.query_row(params![id, from, limit], |row| row.get(0))
                    }
                    None => query.query_row([id], |row| row.get(0)),
                };
                Ok(text?)
            })
            .await
    }
}

/// Queued chunks after item ?2, at most ?3, as `start size attempts items` entries (no attempts
/// on one node: always 0; see `rows::parse_chunks`).
const QUEUED_CHUNKS: &str =
    "select group_concat(start || ' ' || size || ' 0 ' || items, char(31) order by start)
     from (select start, size, items from chunks
           where job = (select key from jobs where id = ?1) and state = 0 and start > ?2
           order by start limit +?3)";

/// Done chunks recorded after the one of seq ?2, at most ?3, in completion order.
const COMPLETED_CHUNKS: &str = "select group_concat(start || ' ' || size || ' ' || failed || ' ' || seq || ' ' || outcomes, char(31) order by seq)
     from (select start, size, failed, seq, outcomes from chunks
           where job = (select key from jobs where id = ?1) and seq > ?2 order by seq limit +?3)";

/// Every done chunk's `seq size`, in completion order.
const COMPLETION_SIZES: &str = "select group_concat(seq || ' ' || size, ',' order by seq)
     from chunks where job = (select key from jobs where id = ?1) and seq is not null";

// The queries of done chunks fold them into one text of `start size failed seq outcomes`
// entries, as `store::pages` reads it.

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

/// A row of `jobs` as `select_jobs!` selects it, read by position.
fn job_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        id: row.get(0)?,
        function: row.get(1)?,
        kwargs: row.get(2)?,
        star: row.get(3)?,
        chunksize: row.get(4)?,
        timeout_s: row.get(5)?,
        max_attempts: row.get(6)?,
        on_error: row.get(7)?,
        priority: row.get(8)?,
        metadata: row.get(9)?,
        codec: row.get(10)?,
        max_concurrency: row.get(11)?,
        status: row.get(12)?,
        total: row.get(13)?,
        ingesting: row.get(14)?,
        done: row.get(15)?,
        failed: row.get(16)?,
        error: row.get(17)?,
        created_at: row.get(18)?,
        started_at: row.get(19)?,
        finished_at: row.get(20)?,
        request_hash: row.get(21)?,
    })
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// On start, before anything runs: a job whose upload was still open when poold stopped can
/// never get the rest of its items (that connection is gone), so it fails and its queued
/// chunks are dropped; the results of chunks that already ran stay readable.
fn fail_interrupted_uploads(conn: &Connection) -> Result<()> {
    conn.execute_batch("begin immediate")?;
    conn.execute(
        "update chunks set state = 2 where state = 0 and job in
             (select key from jobs where ingesting = 1 and status in ('queued', 'running'))",
        [],
    )?;
    let failed = conn.execute(
        "update jobs set status = 'failed', ingesting = 0, finished_at = ?1,
                error = 'poold stopped while the job''s items were being uploaded'
         where ingesting = 1 and status in ('queued', 'running')",
        [format_time(now())],
    )?;
    conn.execute_batch("commit")?;
    if failed > 0 {
        tracing::warn!(
            jobs = failed,
            "failed jobs whose upload was cut off by a restart"
        );
    }
    Ok(())
}

/// A connection to the database file: the writer's (`read_only` false) or a reader's. WAL
/// with `synchronous = NORMAL` (a kill of poold loses nothing committed), foreign keys, a
/// 10 s busy timeout; readers keep a small page cache each (they mostly read pages once).
fn connection(path: &Path, read_only: bool) -> Result<Connection> {
    use rusqlite::OpenFlags;
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
    } | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.set_prepared_statement_cache_capacity(32);
    conn.pragma_update(None, "foreign_keys", true)?;
    if read_only {
        conn.pragma_update(None, "cache_size", -512)?;
    } else {
        let mode: String = conn.query_row("pragma journal_mode = wal", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Corrupt(format!(
                "the database stays in journal mode {mode}"
            )));
        }
        conn.pragma_update(None, "synchronous", "normal")?;
    }
    Ok(conn)
}
