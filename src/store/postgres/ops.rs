//! The SQL of each write on PostgreSQL, applied by the writer thread (`store::writer`,
//! through `writer`) in one transaction per batch. Never a statement per item or per chunk:
//! a piece of chunks is one `json_array_elements` insert, and job starts and chunk records go
//! in together by a few statements over arrays (`unnest`) whatever their number. A chunk's
//! outcomes are one text each, never parsed by PostgreSQL.
//!
//! Each batch also tells the other nodes what it changed (`cluster::notify`, delivered at
//! commit): jobs whose state moved, jobs that ended, jobs with new unclaimed chunks. A chunk
//! is recorded only under this node's claim of it (`owner`, `lease`).

use std::collections::{HashMap, HashSet};

use sqlx::postgres::PgConnection;

use super::cluster::{self, NoticeKind};
use crate::model::JobStatus;
use crate::store::format_time;
use crate::store::writer::{Op, Outcome};
use crate::store::{DeleteOutcome, Error, NewJob, Result};

/// Apply ops in order for `node` (the caller holds the transaction), and notify the other
/// nodes; one outcome per op.
pub async fn apply_all(conn: &mut PgConnection, node: &str, ops: &[&Op]) -> Result<Vec<Outcome>> {
    let mut outcomes = Vec::with_capacity(ops.len());
    // Consecutive job starts and chunk records go together; other ops one at a time, in order.
    for run in ops.chunk_by(|a, b| a.is_progress() && b.is_progress()) {
        if run[0].is_progress() {
            outcomes.extend(record_progress(conn, node, run).await?);
        } else {
            for op in run {
                outcomes.push(apply(conn, node, op).await?);
            }
        }
    }
    cluster::notify(conn, &notices(node, ops)).await?;
    Ok(outcomes)
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

/// Move the started jobs ($1 ids, $2 times) to running.
const START_JOBS: &str = "update jobs set status = 'running', started_at = s.at
     from unnest($1::text[], $2::text[]) as s(id, at)
     where jobs.id = s.id and jobs.status = 'queued'";

/// Completion numbers for the records of each job ($1 ids, $2 how many), taken from the job's
/// row under its lock (held to the commit; jobs locked in one order, so two nodes never wait
/// on each other in a circle): a job's chunks become visible in the order of their numbers,
/// whichever node records them. Returns each job's id and the last number it had before.
const NEXT_SEQS: &str =
    "with n as (select id, n from unnest($1::text[], $2::bigint[]) as n(id, n)),
     locked as (select key, id from jobs where id = any($1::text[]) order by key for update)
     update jobs set recorded = jobs.recorded + n.n
     from locked join n on n.id = locked.id
     where jobs.key = locked.key
     returning jobs.id, jobs.recorded - n.n";

/// Mark the recorded chunks that are still queued done, with their outcomes and completion
/// numbers, and move their jobs' counters by what was marked (completing a job at its total,
/// failing one whose record says `fail_fast` tripped) — in one statement, so that only the
/// chunks this statement marked count. A chunk already recorded (after a restart ran it
/// again) or of a job that ended is skipped. $1..$6: per record its job's id, start, item
/// errors, seq, outcomes, `fail_fast` reason and lease ($8); $7 the time, $9 this node (a
/// chunk whose claim this node no longer holds is skipped: it was re-queued meanwhile). The
/// owner is compared through `coalesce` so that the planner finds the chunks by their
/// primary key: on the index of claims (whose statistics lag behind a new job's chunks) it
/// once matched every claim against every record, 100 ms a batch.
const RECORD_CHUNKS: &str = "with h as (
         select j.key as job, h.start, h.failed, h.seq, h.outcomes, h.fail, h.lease
         from unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[],
                     $6::text[], $8::bigint[]) as h(id, start, failed, seq, outcomes, fail, lease)
         join jobs as j on j.id = h.id),
     marked as (
         update chunks set state = 1, seq = h.seq, failed = h.failed, outcomes = h.outcomes,
                           items = '', owner = null, lease = null
         from h
         where chunks.job = h.job and chunks.start = h.start and chunks.state = 0
           and coalesce(chunks.owner, '') = $9 and chunks.lease = h.lease
         returning chunks.job, chunks.size, h.failed, h.fail),
     c as (
         select job, sum(size)::bigint as items, sum(failed)::bigint as errors,
                max(fail) as fail
         from marked group by job),
     counted as (update jobs set
        done = jobs.done + c.items,
        failed = jobs.failed + c.errors,
        status = case when jobs.status not in ('queued', 'running') then jobs.status
                      when c.fail is not null then 'failed'
                      when jobs.done + c.items >= jobs.total and not jobs.ingesting then 'completed'
                      else jobs.status end,
        error = case when jobs.status in ('queued', 'running') and c.fail is not null
                     then c.fail else jobs.error end,
        ingesting = case when c.fail is not null then false else jobs.ingesting end,
        finished_at = case when jobs.status in ('queued', 'running')
                                and (c.fail is not null
                                     or (jobs.done + c.items >= jobs.total and not jobs.ingesting))
                           then $7 else jobs.finished_at end
     from c
     where jobs.key = c.job)
     select count(*) from marked";

/// Drop the queued chunks of the jobs ($1 ids) whose `fail_fast` tripped and that failed.
const DROP_FAILED: &str = "update chunks set state = 2
     where state = 0 and job in (select key from jobs
                                 where id = any($1::text[]) and status = 'failed')";

/// Job starts and chunk records (see [`RECORD_CHUNKS`]).
async fn record_progress(conn: &mut PgConnection, node: &str, run: &[&Op]) -> Result<Vec<Outcome>> {
    let (mut start_ids, mut start_times) = (Vec::new(), Vec::new());
    let mut records = Vec::new();
    let mut at = None;
    let mut seen = HashSet::new();
    for op in run {
        match op {
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
            _ => unreachable!("only starts and chunk records are grouped"),
        }
    }
    if !start_ids.is_empty() {
        sqlx::query(START_JOBS)
            .bind(start_ids)
            .bind(start_times)
            .execute(&mut *conn)
            .await?;
    }
    if !records.is_empty() {
        // Numbers in the order the records were sent, per job (a number spent on a chunk
        // that turns out recorded already, or no longer this node's, is simply skipped: only
        // the order matters).
        let mut per_job: HashMap<String, i64> = HashMap::new();
        let ids: Vec<String> = records.iter().map(|r| r.id.to_string()).collect();
        for id in &ids {
            *per_job.entry(id.clone()).or_default() += 1;
        }
        let (job_ids, counts): (Vec<String>, Vec<i64>) = per_job.into_iter().unzip();
        let mut next: HashMap<String, i64> = sqlx::query_as(NEXT_SEQS)
            .bind(job_ids)
            .bind(counts)
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .collect();
        let seqs: Vec<i64> = ids
            .iter()
            .map(|id| {
                // A job deleted meanwhile has no row: its records are skipped below anyway.
                let last = next.entry(id.clone()).or_default();
                *last += 1;
                *last
            })
            .collect();
        let starts: Vec<i64> = records.iter().map(|r| r.start as i64).collect();
        let failed: Vec<i64> = records.iter().map(|r| r.outcomes.failed as i64).collect();
        let outcomes: Vec<&str> = records.iter().map(|r| r.outcomes.json.as_str()).collect();
        let fails: Vec<Option<&str>> = records.iter().map(|r| r.fail_job.as_deref()).collect();
        let leases: Vec<i64> = records.iter().map(|r| r.lease as i64).collect();
        let failing: Vec<String> = records
            .iter()
            .filter(|r| r.fail_job.is_some())
            .map(|r| r.id.to_string())
            .collect();
        let sent = records.len() as i64;
        let marked: i64 = sqlx::query_scalar(RECORD_CHUNKS)
            .bind(ids)
            .bind(starts)
            .bind(failed)
            .bind(seqs)
            .bind(outcomes)
            .bind(fails)
            .bind(at.map(format_time))
            .bind(leases)
            .bind(node)
            .fetch_one(&mut *conn)
            .await?;
        if marked < sent {
            // Normal after a restart or a cancel; after a pause past the lease, the chunks
            // went to other nodes (see `cluster`).
            tracing::info!(
                refused = sent - marked,
                "chunk records refused: recorded already, their job ended, or no longer this \
                 node's claim"
            );
        }
        if !failing.is_empty() {
            sqlx::query(DROP_FAILED)
                .bind(failing)
                .execute(&mut *conn)
                .await?;
        }
    }
    // Nobody waits on these (see `Store::mark_started` and `Store::record_chunk`).
    Ok(run.iter().map(|_| Outcome::Done).collect())
}

/// Chunks from a piece (`[start, size, "items"]` entries, $2) of the job of key $1; claimed
/// by node $3 under lease $4 when they are not null (a new job's chunks handed to its node).
const INSERT_CHUNKS: &str = "insert into chunks (job, start, size, items, state, owner, lease)
     select $1, (e ->> 0)::bigint, (e ->> 1)::bigint, e ->> 2, 0, $3::text, $4::bigint
     from json_array_elements($2::json) as e";

/// Every op but job starts and chunk records (see [`record_progress`]).
async fn apply(conn: &mut PgConnection, node: &str, op: &Op) -> Result<Outcome> {
    match op {
        Op::CreateJob(new) => create_job(conn, node, new).await,
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
                .bind(None::<&str>)
                .bind(None::<i64>)
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
        Op::MarkStarted { .. } | Op::RecordChunk { .. } => {
            unreachable!("job starts and chunk records go through record_progress")
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
            // Its chunks go with it (`on delete cascade`).
            sqlx::query("delete from jobs where key = $1")
                .bind(key)
                .execute(&mut *conn)
                .await?;
            Ok(Outcome::Deleted(DeleteOutcome::Deleted))
        }
        Op::Leave => {
            cluster::release(conn, node, &[]).await?;
            sqlx::query("update nodes set state = 'stopped' where id = $1")
                .bind(node)
                .execute(&mut *conn)
                .await?;
            Ok(Outcome::Done)
        }
        Op::PurgeFinished { before, limit } => {
            // Their chunks go with them (`on delete cascade`). Jobs another node is deleting
            // right now are skipped, not waited for.
            let jobs = sqlx::query(
                "delete from jobs where key in (
                     select key from jobs
                     where status in ('completed', 'failed', 'cancelled')
                       and finished_at::timestamptz < $1::timestamptz
                     order by key limit $2 for update skip locked)",
            )
            .bind(format_time(*before))
            .bind(*limit as i64)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            Ok(Outcome::Purged(jobs))
        }
    }
}

const INSERT_JOB: &str = "insert into jobs (id, function, kwargs, star, chunksize, timeout_s,
                       max_attempts, on_error, priority, metadata, status, total, created_at,
                       started_at, finished_at, idempotency_key, request_hash, ingesting,
                       codec, max_concurrency, upload_node)
     values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
             $19, $20, case when $18 then $21 end)
     returning key";

/// A new job: its row, then its chunks, a piece per statement. An upload is this node's (see
/// `cluster::requeue_lost`); chunks handed to this node's supervisor are claimed by it.
async fn create_job(conn: &mut PgConnection, node: &str, new: &NewJob) -> Result<Outcome> {
    let NewJob {
        job,
        pieces,
        idempotency,
        claim,
    } = new;
    let spec = &job.spec;
    let key: i64 = sqlx::query_scalar(INSERT_JOB)
        .bind(job.id.to_string())
        .bind(spec.function.as_str())
        .bind(spec.kwargs.get())
        .bind(spec.star)
        .bind(i64::from(spec.chunksize))
        .bind(spec.timeout_s)
        .bind(i64::from(spec.max_attempts))
        .bind(spec.on_error.as_str())
        .bind(i64::from(spec.priority))
        .bind(spec.metadata.get())
        .bind(job.status.as_str())
        .bind(job.total as i64)
        .bind(format_time(job.created_at))
        .bind(job.started_at.map(format_time))
        .bind(job.finished_at.map(format_time))
        .bind(idempotency.as_ref().map(|i| i.key.as_str()))
        .bind(idempotency.as_ref().map(|i| i.request_hash.as_str()))
        .bind(job.ingesting)
        .bind(spec.codec.as_str())
        .bind(spec.max_concurrency.map(i64::from))
        .bind(node)
        .fetch_one(&mut *conn)
        .await?;
    for piece in pieces {
        sqlx::query(INSERT_CHUNKS)
            .bind(key)
            .bind(piece.as_str())
            .bind(claim.map(|_| node))
            .bind(claim.map(|lease| lease as i64))
            .execute(&mut *conn)
            .await?;
    }
    Ok(Outcome::Done)
}
