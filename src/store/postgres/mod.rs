//! The PostgreSQL backend: one database server, reached over the network, shared by any number
//! of poold nodes ([`cluster`]: claims, heartbeats, re-queues, notifications).
//!
//! Reads run on the caller's task, on a connection lent by [`readers`]. Every write goes
//! through the store's single writer thread (`store::writer`; here [`writer`] its connection,
//! SQL in [`ops`]), exactly as on SQLite: group commit, the commit hook after the commit,
//! kept writes retried while the server cannot be written. Reads of chunks fold their rows
//! into one text, as `store::pages` reads it (the same texts as SQLite's). Migrations (`migrations-postgres/`)
//! are applied at open by sqlx's migrator, which holds a PostgreSQL advisory lock while it
//! runs: several nodes starting at once apply each migration once, the others wait for it.
//! Called by `store::Store`, which picks this backend for a `postgres://` `--database`.

pub mod cluster;
mod ops;
mod readers;
mod writer;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Row};

use super::rows::{JobRow, parse_completion_sizes, unfinished_jobs};
use super::writer::Writer;
use super::{CommitHook, Error, NodeRow, Result};
use crate::model::{Job, JobId, JobStatus};
use cluster::Cluster;
use readers::Readers;
use writer::PgWriter;

/// How long the `LISTEN` connection's pool waits for a connection before it fails.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `/readyz` waits for the server (container health checks give up after 3 s).
const PING_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct PgStore {
    readers: Readers,
    writer: Writer,
    cluster: Cluster,
    /// The one connection `LISTEN` holds (see [`PgStore::listener`]).
    listen: PgPool,
}

impl PgStore {
    /// Connect to the database at `url`, apply migrations, register `node` among the nodes
    /// (re-queueing what lost nodes held) and start the writer.
    pub async fn open(
        url: &str,
        node: &NodeRow,
        on_commit: CommitHook,
    ) -> Result<(Self, tokio::task::JoinHandle<()>)> {
        // Every statement of poold finds its rows by a key, an id or an index; but the plans
        // PostgreSQL caches for prepared statements are made from the statistics of the moment,
        // and while tables grow faster than autovacuum analyzes them (a new deployment, a
        // burst of jobs) those say the tables are tiny, so the cached plans scan them whole:
        // one-item jobs went 4× slower as their number grew. Without sequential scans the
        // planner takes the indexes whatever the statistics say. That penalty (a cost of 1e10
        // on the scans of tables too small for an index, like `nodes`) also lifts those plans
        // over the threshold of just-in-time compilation, which then spent 0.2-0.7 s of the
        // server's CPU on each heartbeat statement: no JIT (poold's statements are all short).
        let options = PgConnectOptions::from_str(url)?
            .application_name("poold")
            .options([("enable_seqscan", "off"), ("jit", "off")])
            .disable_statement_logging();
        // The writer's connection first: a server out of reach fails the start with the
        // reason (the pool would only say it timed out).
        let mut backend = PgWriter::connect(options.clone(), &node.id).await?;
        // Under the migrator's advisory lock (see the module doc).
        sqlx::migrate!("./migrations-postgres")
            .run(backend.connection())
            .await?;
        let listen = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options.clone());
        let readers = Readers::new(options);
        let cluster = Cluster::new(readers.clone(), &node.id);
        cluster.register(node).await?;
        let lost = cluster.requeue_lost().await?;
        if !lost.is_empty() {
            tracing::warn!(nodes = ?lost, "nodes stopped heartbeating; their chunks were re-queued");
        }
        let (writer, task) = Writer::start(backend, on_commit);
        Ok((
            Self {
                readers,
                writer,
                cluster,
                listen,
            },
            task,
        ))
    }

    pub fn close(&self) {
        // Marks the pool closed at once (reads fail from now on); the connections close in
        // the background.
        self.readers.close();
        let listen = self.listen.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { listen.close().await });
        }
    }

    /// For `/readyz`: answers within [`PING_TIMEOUT`] even while the server is out of reach
    /// (other reads wait up to 5 s for a connection: see `readers`).
    pub async fn ping(&self) -> Result<()> {
        let ping = self.readers.run(async |c| {
            sqlx::query("select 1").execute(c).await?;
            Ok(())
        });
        match tokio::time::timeout(PING_TIMEOUT, ping).await {
            Ok(answered) => answered,
            Err(_) => Err(Error::Storage {
                full: false,
                message: format!("PostgreSQL did not answer within {PING_TIMEOUT:?}"),
            }),
        }
    }

    /// The writer every write goes through (see `store::writer`).
    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// A connection of its own for `LISTEN` (see `crate::cluster`).
    pub async fn listener(&self) -> Result<sqlx::postgres::PgListener> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.listen).await?;
        listener.listen(cluster::CHANNEL).await?;
        Ok(listener)
    }

    // ---- reads ----

    pub async fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        let row = self
            .readers
            .run(async |c| {
                Ok(sqlx::query("select * from jobs where id = $1")
                    .bind(id.to_string())
                    .fetch_optional(c)
                    .await?)
            })
            .await?;
        row.map(|row| job_row(&row).and_then(Job::try_from))
            .transpose()
    }

    pub async fn job_by_idempotency_key(&self, key: &str) -> Result<Option<(Job, String)>> {
        let row = self
            .readers
            .run(async |c| {
                Ok(sqlx::query("select * from jobs where idempotency_key = $1")
                    .bind(key)
                    .fetch_optional(c)
                    .await?)
            })
            .await?;
        let Some(row) = row else { return Ok(None) };
        let row = job_row(&row)?;
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
            .readers
            .run(async |c| {
                Ok(sqlx::query(
                    "select * from jobs
                     where ($1::text is null or status = $1)
                       and ($2::text is null or key < (select key from jobs where id = $2))
                     order by key desc limit $3",
                )
                .bind(status.map(JobStatus::as_str))
                .bind(before.map(|id| id.to_string()))
                .bind(i64::from(limit))
                .fetch_all(c)
                .await?)
            })
            .await?;
        rows.iter()
            .map(|row| job_row(row).and_then(Job::try_from))
            .collect()
    }

    pub async fn unfinished_items(&self) -> Result<u64> {
        let n: i64 = self
            .readers
            .run(async |c| {
                Ok(sqlx::query_scalar(
                    "select coalesce(sum(total - done), 0)::bigint from jobs
                     where status in ('queued', 'running')",
                )
                .fetch_one(c)
                .await?)
            })
            .await?;
        Ok(n.max(0) as u64)
    }

    pub async fn metrics_snapshot(&self) -> Result<(Vec<(String, u64)>, f64)> {
        let (by_status, age) = self
            .readers
            .run(async |c| {
                let by_status: Vec<(String, i64)> =
                    sqlx::query_as("select status, count(*) from jobs group by status")
                        .fetch_all(&mut *c)
                        .await?;
                let age: Option<f64> = sqlx::query_scalar(
                    "select extract(epoch from now() - min(created_at::timestamptz))::float8
                     from jobs where status in ('queued', 'running')",
                )
                .fetch_one(&mut *c)
                .await?;
                Ok((by_status, age))
            })
            .await?;
        Ok((
            by_status
                .into_iter()
                .map(|(status, n)| (status, n.max(0) as u64))
                .collect(),
            age.unwrap_or(0.0).max(0.0),
        ))
    }

    pub async fn unfinished_jobs(&self) -> Result<Vec<Result<Job, (JobId, String)>>> {
        let rows = self
            .readers
            .run(async |c| {
                Ok(sqlx::query(
                    "select * from jobs where status in ('queued', 'running')
                     order by priority desc, key",
                )
                .fetch_all(c)
                .await?)
            })
            .await?;
        let rows = rows.iter().map(job_row).collect::<Result<Vec<_>>>()?;
        Ok(unfinished_jobs(rows))
    }

    pub async fn count_queued_chunks(&self, id: JobId) -> Result<u64> {
        let count: i64 = self
            .readers
            .run(async |c| {
                Ok(sqlx::query_scalar(
                    "select count(*) from chunks
                     where job = (select key from jobs where id = $1) and state = 0 and owner is null",
                )
                .bind(id.to_string())
                .fetch_one(c)
                .await?)
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
        match self.text(COMPLETION_SIZES, id, None).await? {
            Some(text) => parse_completion_sizes(&text),
            None => Ok(Vec::new()),
        }
    }

    /// The one text a query of chunks folds its rows into: the job's id is $1, then `from`
    /// ($2) and `limit` ($3) when given.
    async fn text(
        &self,
        sql: &'static str,
        id: JobId,
        from_and_limit: Option<(i64, u32)>,
    ) -> Result<Option<String>> {
        self.readers
            .run(async |c| {
                let mut query = sqlx::query_scalar(sql).bind(id.to_string());
                if let Some((from, limit)) = from_and_limit {
                    query = query.bind(from).bind(i64::from(limit));
                }
                Ok(query.fetch_one(c).await?)
            })
            .await
    }
}

/// Done chunks recorded after the one of seq $2, at most $3, in completion order.
const COMPLETED_CHUNKS: &str = "select string_agg(start || ' ' || size || ' ' || failed || ' ' || seq || ' ' || outcomes, chr(31) order by seq)
     from (select start, size, failed, seq, outcomes from chunks
           where job = (select key from jobs where id = $1) and seq > $2 order by seq limit $3) as c";

/// Every done chunk's `seq size`, in completion order.
const COMPLETION_SIZES: &str = "select string_agg(seq || ' ' || size, ',' order by seq)
     from chunks where job = (select key from jobs where id = $1) and seq is not null";

// The queries of done chunks fold them into one text of `start size failed seq outcomes`
// entries, as `store::pages` reads it.

/// Done chunks from the one holding item $2 on (the anchor is found through the primary key).
const DONE_CHUNKS: &str = "select string_agg(start || ' ' || size || ' ' || failed || ' ' || seq || ' ' || outcomes, chr(31) order by start)
     from (select start, size, failed, seq, outcomes from chunks
           where job = (select key from jobs where id = $1) and state = 1
             and start >= coalesce((select max(start) from chunks
                                    where job = (select key from jobs where id = $1) and start <= $2), 0)
           order by start limit $3) as c";

/// The same, only chunks with item errors (through the partial index on them).
const DONE_FAILED_CHUNKS: &str = "select string_agg(start || ' ' || size || ' ' || failed || ' ' || seq || ' ' || outcomes, chr(31) order by start)
     from (select start, size, failed, seq, outcomes from chunks
           where job = (select key from jobs where id = $1) and failed > 0
             and start >= coalesce((select max(start) from chunks
                                    where job = (select key from jobs where id = $1) and start <= $2), 0)
           order by start limit $3) as c";

/// A row of `jobs`, read by column name (queries select `*`).
fn job_row(row: &PgRow) -> Result<JobRow> {
    Ok(JobRow {
        id: row.try_get("id")?,
        function: row.try_get("function")?,
        kwargs: row.try_get("kwargs")?,
        star: row.try_get("star")?,
        chunksize: row.try_get("chunksize")?,
        timeout_s: row.try_get("timeout_s")?,
        max_attempts: row.try_get("max_attempts")?,
        on_error: row.try_get("on_error")?,
        priority: row.try_get("priority")?,
        metadata: row.try_get("metadata")?,
        codec: row.try_get("codec")?,
        max_concurrency: row.try_get("max_concurrency")?,
        status: row.try_get("status")?,
        total: row.try_get("total")?,
        ingesting: row.try_get("ingesting")?,
        done: row.try_get("done")?,
        failed: row.try_get("failed")?,
        error: row.try_get("error")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        request_hash: row.try_get("request_hash")?,
    })
}
