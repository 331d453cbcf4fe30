//! The SQL of each write on PostgreSQL, applied by the writer thread (`store::writer`,
//! through `writer`). Never a statement per item or per chunk, and most batches in one round
//! trip: job creations, job starts and chunk records — what a busy server's batches are made
//! of — go in together through one call of the server-side function `poold_write`
//! (`migrations-postgres/0003_write_batch.sql`, which holds their SQL), a statement that
//! commits on its own. A batch with anything else is one transaction, its other ops one at a
//! time and in order. A chunk's outcomes are one text each, never parsed by PostgreSQL.
//!
//! Each batch also tells the other nodes what it changed (`cluster::notify`, delivered at
//! commit): jobs whose state moved, jobs that ended, jobs with new unclaimed chunks. A chunk
//! is recorded only under this node's claim of it (`owner`, `lease`).

use std::collections::HashSet;

use serde_json::json;
use sqlx::Connection;
use sqlx::postgres::PgConnection;

use super::cluster::{self, NoticeKind};
use crate::model::JobStatus;
use crate::store::format_time;
use crate::store::writer::{Op, Outcome};
use crate::store::{DeleteOutcome, Error, Result};

/// Apply a batch of ops in order for `node`, and notify the other nodes: in one call of
/// `poold_write` when it holds only creations, starts and records, else in one transaction.
/// One outcome per op.
pub async fn apply_batch(conn: &mut PgConnection, node: &str, ops: &[&Op]) -> Result<Vec<Outcome>> {
    let notices = notices(node, ops);
    if ops.iter().copied().all(is_written_together) {
        return write_together(conn, node, ops, &notices).await;
    }
    let mut tx = conn.begin().await?;
    let mut outcomes = Vec::with_capacity(ops.len());
    for run in ops.chunk_by(|a, b| is_written_together(a) && is_written_together(b)) {
        if is_written_together(run[0]) {
            outcomes.extend(write_together(&mut tx, node, run, &[]).await?);
        } else {
            for op in run {
                outcomes.push(apply(&mut tx, node, op).await?);
            }
        }
    }
    cluster::notify(&mut tx, &notices).await?;
    tx.commit().await?;
    Ok(outcomes)
}

/// Whether `poold_write` takes the op: a new job, a job start, a chunk record.
fn is_written_together(op: &Op) -> bool {
    matches!(op, Op::CreateJob(_)) || op.is_progress()
}

/// What a batch tells the other nodes, by kind (each job once per kind).
fn notices(node: &str, ops: &[&Op]) -> Vec<String> {
    let (mut changed, mut ended, mut work) = (Vec::new(), Vec::new(), Vec::new());
    for op in ops {
        let Some(id) = op.job_id() else { continue };
        changed.push(id);
        match op {
            Op::CreateJob(new) if new.claim.is_none() => work.push(id),
            Op::AppendChunks { .. } => work.push(id),
            Op::FinishJob { .. } => ended.push(id),
            Op::RecordChunk { record, .. } if record.fail_job.is_some() => ended.push(id),
            _ => {}
        }
    }
    let mut payloads = Vec::new();
    for (kind, mut jobs) in [
        (NoticeKind::Changed, changed),
        (NoticeKind::Ended, ended),
        (NoticeKind::Work, work),
    ] {
        jobs.sort_unstable();
        jobs.dedup();
        payloads.extend(cluster::payloads(node, kind, &jobs));
    }
    payloads
}

/// New jobs (their rows and chunks; an upload is this node's, see `cluster::requeue_lost`;
/// chunks handed to this node's supervisor are claimed by it), job starts and chunk records,
/// with `notices`, in one call of `poold_write` (its SQL says what each step does).
async fn write_together(
    conn: &mut PgConnection,
    node: &str,
    ops: &[&Op],
    notices: &[String],
) -> Result<Vec<Outcome>> {
    let mut jobs = Vec::new();
    let (mut piece_jobs, mut pieces, mut piece_leases) = (Vec::new(), Vec::new(), Vec::new());
    let (mut start_ids, mut start_times) = (Vec::new(), Vec::new());
    let mut records = Vec::new();
    let mut at = None;
    let mut seen = HashSet::new();
    for op in ops {
        match op {
            Op::CreateJob(new) => {
                let (job, spec) = (&new.job, &new.job.spec);
                let id = job.id.to_string();
                jobs.push(json!({
                    "id": id,
                    "function": spec.function,
                    "kwargs": spec.kwargs.get(),
                    "star": spec.star,
                    "chunksize": spec.chunksize,
                    "timeout_s": spec.timeout_s,
                    "max_attempts": spec.max_attempts,
                    "on_error": spec.on_error.as_str(),
                    "priority": spec.priority,
                    "metadata": spec.metadata.get(),
                    "status": job.status.as_str(),
                    "total": job.total,
                    "created_at": format_time(job.created_at),
                    "started_at": job.started_at.map(format_time),
                    "finished_at": job.finished_at.map(format_time),
                    "idempotency_key": new.idempotency.as_ref().map(|i| &i.key),
                    "request_hash": new.idempotency.as_ref().map(|i| &i.request_hash),
                    "ingesting": job.ingesting,
                    "codec": spec.codec.as_str(),
                    "max_concurrency": spec.max_concurrency,
                    "upload_node": job.ingesting.then_some(node),
                }));
                for piece in &new.pieces {
                    piece_jobs.push(id.clone());
                    pieces.push(piece.as_str());
                    piece_leases.push(new.claim.map(|lease| lease as i64));
                }
            }
            Op::MarkStarted { id, at } => {
                start_ids.push(id.to_string());
                start_times.push(format_time(*at));
            }
            Op::RecordChunk { record, at: when } => {
                // The same chunk twice in one batch would count twice: keep the first.
                if seen.insert((record.id, record.start)) {
                    at = Some(*when);
                    records.push(record);
                }
            }
            _ => unreachable!("poold_write takes only creations, starts and records"),
        }
    }
    let sent = records.len() as i64;
    let marked: i64 = sqlx::query_scalar(
        "select poold_write($1, $2::json, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
                            $15)",
    )
    .bind(node)
    .bind(serde_json::Value::Array(jobs).to_string())
    .bind(piece_jobs)
    .bind(pieces)
    .bind(piece_leases)
    .bind(start_ids)
    .bind(start_times)
    .bind(records.iter().map(|r| r.id.to_string()).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.start as i64).collect::<Vec<_>>())
    .bind(
        records
            .iter()
            .map(|r| r.outcomes.failed as i64)
            .collect::<Vec<_>>(),
    )
    .bind(
        records
            .iter()
            .map(|r| r.outcomes.json.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        records
            .iter()
            .map(|r| r.fail_job.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(records.iter().map(|r| r.lease as i64).collect::<Vec<_>>())
    .bind(at.map(format_time))
    .bind(notices)
    .fetch_one(&mut *conn)
    .await?;
    if marked < sent {
        // Normal after a restart or a cancel; after a pause past the lease, the chunks went
        // to other nodes (see `cluster`).
        tracing::info!(
            refused = sent - marked,
            "chunk records refused: recorded already, their job ended, or no longer this \
             node's claim"
        );
    }
    // Nobody waits on starts and records (see `Store::mark_started` and
    // `Store::record_chunk`); a creation is done once this commits.
    Ok(ops.iter().map(|_| Outcome::Done).collect())
}

/// More chunks of an open upload: a piece (`[start, size, "items"]` entries, $2) of the job of
/// key $1.
const INSERT_CHUNKS: &str = "insert into chunks (job, start, size, items, state)
     select $1, (e ->> 0)::bigint, (e ->> 1)::bigint, e ->> 2, 0
     from json_array_elements($2::json) as e";

/// Every op but creations, job starts and chunk records (see [`write_together`]).
async fn apply(conn: &mut PgConnection, node: &str, op: &Op) -> Result<Outcome> {
    match op {
        Op::AppendChunks {
            id,
            piece,
            items,
            close,
            at,
        } => {
            let key: Option<i64> = sqlx::query_scalar(
                "update jobs set total = total + $2, ingesting = not $3,
                        upload_node = case when $3 then null else upload_node end
                 where id = $1 and ingesting and status in ('queued', 'running')
                 returning key",
            )
            .bind(id.to_string())
            .bind(*items as i64)
            .bind(*close)
            .fetch_optional(&mut *conn)
            .await?;
            let Some(key) = key else {
                return Ok(Outcome::Changed(false)); // cancelled or failed during the upload
            };
            sqlx::query(INSERT_CHUNKS)
                .bind(key)
                .bind(piece.as_str())
                .execute(&mut *conn)
                .await?;
            if *close {
                // Every item may already have its result.
                sqlx::query(
                    "update jobs set status = 'completed',
                            started_at = coalesce(started_at, $2), finished_at = $2
                     where key = $1 and status in ('queued', 'running') and done >= total",
                )
                .bind(key)
                .bind(format_time(*at))
                .execute(&mut *conn)
                .await?;
            }
            Ok(Outcome::Changed(true))
        }
        Op::CreateJob(_) | Op::MarkStarted { .. } | Op::RecordChunk { .. } => {
            unreachable!("creations, job starts and chunk records go through write_together")
        }
        Op::FinishJob {
            id,
            status,
            error,
            at,
        } => {
            debug_assert!(matches!(status, JobStatus::Failed | JobStatus::Cancelled));
            let key: Option<i64> = sqlx::query_scalar(
                "update jobs set status = $2, error = $3, finished_at = $4, ingesting = false
                 where id = $1 and status in ('queued', 'running')
                 returning key",
            )
            .bind(id.to_string())
            .bind(status.as_str())
            .bind(error.as_deref())
            .bind(format_time(*at))
            .fetch_optional(&mut *conn)
            .await?;
            let Some(key) = key else {
                return Ok(Outcome::Changed(false));
            };
            sqlx::query("update chunks set state = 2 where job = $1 and state = 0")
                .bind(key)
                .execute(&mut *conn)
                .await?;
            Ok(Outcome::Changed(true))
        }
        Op::DeleteJob { id } => {
            let row: Option<(i64, String)> =
                sqlx::query_as("select key, status from jobs where id = $1 for update")
                    .bind(id.to_string())
                    .fetch_optional(&mut *conn)
                    .await?;
            let Some((key, status)) = row else {
                return Ok(Outcome::Deleted(DeleteOutcome::NotFound));
            };
            if !status
                .parse::<JobStatus>()
                .map_err(Error::Corrupt)?
                .is_finished()
            {
                return Ok(Outcome::Deleted(DeleteOutcome::NotFinished));
            }
            sqlx::query(
                "with j as (delete from jobs where key = $1)
                 delete from chunks where job = $1",
            )
            .bind(key)
            .execute(&mut *conn)
            .await?;
            Ok(Outcome::Deleted(DeleteOutcome::Deleted))
        }
        Op::Leave => {
            cluster::release(conn, node, &[], &[], u64::MAX).await?;
            sqlx::query("update nodes set state = 'stopped' where id = $1")
                .bind(node)
                .execute(&mut *conn)
                .await?;
            Ok(Outcome::Done)
        }
        Op::ReleaseUnheld { held, kept, up_to } => {
            let released = cluster::release(conn, node, held, kept, *up_to).await?;
            Ok(Outcome::Released(released))
        }
        Op::PurgeFinished { before, limit } => {
            // Their chunks with them. Jobs another node is deleting right now are skipped,
            // not waited for.
            let jobs: i64 = sqlx::query_scalar(
                "with j as (
                     delete from jobs where key in (
                         select key from jobs
                         where status in ('completed', 'failed', 'cancelled')
                           and finished_at::timestamptz < $1::timestamptz
                         order by key limit $2 for update skip locked)
                     returning key),
                 c as (delete from chunks where job in (select key from j))
                 select count(*) from j",
            )
            .bind(format_time(*before))
            .bind(*limit as i64)
            .fetch_one(&mut *conn)
            .await?;
            Ok(Outcome::Purged(jobs as u64))
        }
    }
}
