//! The single writer: one task owns the one read-write connection and applies every write.
//!
//! Callers send [`Op`]s over a channel. The task takes all that are waiting (group commit),
//! applies each inside a savepoint of one `BEGIN IMMEDIATE` transaction, commits, and only
//! then answers the callers and calls the commit hook with the jobs that changed. A failing op
//! rolls back its own savepoint and fails alone. Each statement works on a whole chunk (items
//! and results go in through `json_each`), never one statement per item.

use std::collections::BTreeSet;

use sqlx::{Connection, SqliteConnection};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use super::rows::format_time;
use super::{CommitHook, Error, Result};
use crate::model::{Job, JobId, JobStatus};

/// The most ops folded into one transaction.
const MAX_BATCH: usize = 1024;

/// A job to insert with its chunks: `chunks` is a JSON array of arrays of items.
pub struct NewJob {
    pub job: Job,
    pub chunks: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    NotFound,
    NotFinished,
}

pub enum Op {
    CreateJob(Box<NewJob>),
    MarkStarted {
        id: JobId,
        at: OffsetDateTime,
    },
    RecordChunk {
        id: JobId,
        chunk_index: u64,
        start_index: u64,
        size: u64,
        outcomes: String,
        failed: u64,
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
}

#[derive(Debug)]
pub enum Outcome {
    Done,
    Changed(bool),
    Deleted(DeleteOutcome),
}

struct Request {
    op: Op,
    reply: Option<oneshot::Sender<Result<Outcome>>>,
}

#[derive(Clone)]
pub struct Writer {
    tx: mpsc::UnboundedSender<Request>,
}

impl Writer {
    pub fn start(
        conn: SqliteConnection,
        on_commit: CommitHook,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(conn, rx, on_commit));
        (Self { tx }, task)
    }

    /// Apply `op` and wait for its commit.
    pub async fn call(&self, op: Op) -> Result<Outcome> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request {
                op,
                reply: Some(reply),
            })
            .map_err(|_| Error::WriterGone)?;
        rx.await.map_err(|_| Error::WriterGone)?
    }

    /// Queue `op` without waiting; it commits before any op sent after it.
    pub fn send(&self, op: Op) {
        if self.tx.send(Request { op, reply: None }).is_err() {
            tracing::error!("database writer has stopped; a write was dropped");
        }
    }
}

async fn run(
    mut conn: SqliteConnection,
    mut rx: mpsc::UnboundedReceiver<Request>,
    on_commit: CommitHook,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut changed = BTreeSet::new();
        let mut replies = Vec::with_capacity(batch.len());
        let committed = apply_batch(&mut conn, batch.drain(..), &mut changed, &mut replies).await;
        match committed {
            Ok(()) => {
                if !changed.is_empty() {
                    on_commit(&changed.into_iter().collect::<Vec<_>>());
                }
                for (reply, outcome) in replies {
                    let _ = reply.send(outcome);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "database write batch failed");
                for (reply, _) in replies {
                    let _ = reply.send(Err(Error::Commit(e.to_string())));
                }
            }
        }
    }
    if let Err(e) = conn.close().await {
        tracing::warn!(error = %e, "closing the database writer connection");
    }
}

type Replies = Vec<(oneshot::Sender<Result<Outcome>>, Result<Outcome>)>;

async fn apply_batch(
    conn: &mut SqliteConnection,
    batch: impl Iterator<Item = Request>,
    changed: &mut BTreeSet<JobId>,
    replies: &mut Replies,
) -> Result<()> {
    let mut tx = conn.begin_with("begin immediate").await?;
    for Request { op, reply } in batch {
        let job = op.job_id();
        let mut savepoint = tx.begin().await?;
        let outcome = apply(&mut savepoint, op).await;
        match &outcome {
            Ok(_) => {
                savepoint.commit().await?;
                changed.insert(job);
            }
            Err(e) => {
                tracing::error!(error = %e, job.id = %job, "database write failed");
                savepoint.rollback().await?;
            }
        }
        if let Some(reply) = reply {
            replies.push((reply, outcome));
        }
    }
    tx.commit().await?;
    Ok(())
}

impl Op {
    fn job_id(&self) -> JobId {
        match self {
            Op::CreateJob(new) => new.job.id,
            Op::MarkStarted { id, .. }
            | Op::RecordChunk { id, .. }
            | Op::FinishJob { id, .. }
            | Op::DeleteJob { id } => *id,
        }
    }
}

async fn apply(conn: &mut SqliteConnection, op: Op) -> Result<Outcome> {
    match op {
        Op::CreateJob(new) => create_job(conn, *new).await,
        Op::MarkStarted { id, at } => {
            sqlx::query("update jobs set status = 'running', started_at = ?2 where id = ?1 and status = 'queued'")
                .bind(id.to_string())
                .bind(format_time(at))
                .execute(&mut *conn)
                .await?;
            Ok(Outcome::Done)
        }
        Op::RecordChunk {
            id,
            chunk_index,
            start_index,
            size,
            outcomes,
            failed,
            at,
        } => {
            let id = id.to_string();
            let claimed = sqlx::query(
                "update chunks set status = 'done'
                 where job_id = ?1 and chunk_index = ?2 and status = 'queued'",
            )
            .bind(&id)
            .bind(chunk_index as i64)
            .execute(&mut *conn)
            .await?;
            if claimed.rows_affected() == 0 {
                // Already recorded, or the job was cancelled or failed meanwhile.
                return Ok(Outcome::Changed(false));
            }
            sqlx::query(
                "insert into results (job_id, item_index, value, error)
                 select ?1, ?2 + key,
                        case when value -> '$.error' is null then coalesce(value -> '$.value', 'null') end,
                        value -> '$.error'
                 from json_each(?3)",
            )
            .bind(&id)
            .bind(start_index as i64)
            .bind(outcomes)
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "update jobs set
                    done = done + ?2,
                    failed = failed + ?3,
                    status = case when done + ?2 >= total then 'completed' else status end,
                    finished_at = case when done + ?2 >= total then ?4 else finished_at end
                 where id = ?1",
            )
            .bind(&id)
            .bind(size as i64)
            .bind(failed as i64)
            .bind(format_time(at))
            .execute(&mut *conn)
            .await?;
            Ok(Outcome::Changed(true))
        }
        Op::FinishJob {
            id,
            status,
            error,
            at,
        } => {
            debug_assert!(matches!(status, JobStatus::Failed | JobStatus::Cancelled));
            let id = id.to_string();
            let ended = sqlx::query(
                "update jobs set status = ?2, error = ?3, finished_at = ?4
                 where id = ?1 and status in ('queued', 'running')",
            )
            .bind(&id)
            .bind(status.as_str())
            .bind(error)
            .bind(format_time(at))
            .execute(&mut *conn)
            .await?;
            if ended.rows_affected() == 0 {
                return Ok(Outcome::Changed(false));
            }
            sqlx::query(
                "update chunks set status = 'cancelled' where job_id = ?1 and status = 'queued'",
            )
            .bind(&id)
            .execute(&mut *conn)
            .await?;
            Ok(Outcome::Changed(true))
        }
        Op::DeleteJob { id } => {
            let id = id.to_string();
            let status: Option<(String,)> = sqlx::query_as("select status from jobs where id = ?1")
                .bind(&id)
                .fetch_optional(&mut *conn)
                .await?;
            let Some((status,)) = status else {
                return Ok(Outcome::Deleted(DeleteOutcome::NotFound));
            };
            if !status
                .parse::<JobStatus>()
                .map_err(Error::Corrupt)?
                .is_finished()
            {
                return Ok(Outcome::Deleted(DeleteOutcome::NotFinished));
            }
            for sql in [
                "delete from results where job_id = ?1",
                "delete from chunks where job_id = ?1",
                "delete from jobs where id = ?1",
            ] {
                sqlx::query(sql).bind(&id).execute(&mut *conn).await?;
            }
            Ok(Outcome::Deleted(DeleteOutcome::Deleted))
        }
    }
}

async fn create_job(conn: &mut SqliteConnection, new: NewJob) -> Result<Outcome> {
    let NewJob { job, chunks } = new;
    let spec = &job.spec;
    let id = job.id.to_string();
    sqlx::query(
        "insert into jobs (id, function, kwargs, star, chunksize, timeout_s, max_attempts, on_error,
                           priority, metadata, status, total, created_at, finished_at)
         values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )
    .bind(&id)
    .bind(&spec.function)
    .bind(spec.kwargs.get())
    .bind(spec.star)
    .bind(spec.chunksize)
    .bind(spec.timeout_s)
    .bind(spec.max_attempts)
    .bind(spec.on_error.as_str())
    .bind(spec.priority)
    .bind(spec.metadata.get())
    .bind(job.status.as_str())
    .bind(job.total as i64)
    .bind(format_time(job.created_at))
    .bind(job.finished_at.map(format_time))
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "insert into chunks (job_id, chunk_index, start_index, size, items, status)
         select ?1, key, key * ?2, json_array_length(value), value, 'queued' from json_each(?3)",
    )
    .bind(&id)
    .bind(spec.chunksize)
    .bind(chunks)
    .execute(&mut *conn)
    .await?;
    Ok(Outcome::Done)
}
