//! The SQL of each write, applied by the writer thread (`store::writer`, through `writer`): a
//! batch of ops in one transaction, on the writer's own connection, statement by statement
//! (each prepared once and cached; a statement costs no hand-off between threads here, so a
//! chunk record is one bound statement, and its outcomes text is never parsed by SQLite).

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

use crate::model::{JobId, JobStatus};
use crate::store::format_time;
use crate::store::writer::{Op, Outcome};
use crate::store::{DeleteOutcome, Error, NewJob, Result};

/// Apply ops in one transaction; one outcome per op, or the first error (the transaction is
/// then rolled back). Chunk records get their completion numbers from `next_seq`.
pub fn apply_batch(conn: &Connection, ops: &[&Op], next_seq: &mut u64) -> Result<Vec<Outcome>> {
    conn.prepare_cached("begin immediate")?.execute([])?;
    match apply_all(conn, ops, next_seq).and_then(|outcomes| {
        conn.prepare_cached("commit")?.execute([])?;
        Ok(outcomes)
    }) {
        Ok(outcomes) => Ok(outcomes),
        Err(e) => {
            let _ = conn.execute_batch("rollback");
            Err(e)
        }
    }
}

fn apply_all(conn: &Connection, ops: &[&Op], next_seq: &mut u64) -> Result<Vec<Outcome>> {
    let mut outcomes = Vec::with_capacity(ops.len());
    // Consecutive job starts and chunk records go together; other ops one at a time, in order.
    for run in ops.chunk_by(|a, b| a.is_progress() && b.is_progress()) {
        if run[0].is_progress() {
            outcomes.extend(record_progress(conn, run, next_seq)?);
        } else {
            for op in run {
                outcomes.push(apply(conn, op)?);
            }
        }
    }
    Ok(outcomes)
}

/// Mark a chunk (of job ?1, at ?2) done with its completion number ?3, item errors ?4 and
/// outcomes ?5 — only while it is still queued, so that it is recorded once.
const MARK_CHUNK: &str =
    "update chunks set state = 1, seq = ?3, failed = ?4, outcomes = ?5, items = ''
     where job = (select key from jobs where id = ?1) and start = ?2 and state = 0";

/// Move a job's (?1) counters by the items ?2 and item errors ?3 of the chunks just marked,
/// completing it at its total, failing it with ?4 when its record says `fail_fast` tripped;
/// ?5 is the time. A job started or with chunks recorded runs: a queued one becomes running,
/// with its start time ?6 (its start op's), else ?5. (Every expression reads the row as it was
/// before this update.)
const COUNT_CHUNKS: &str = "update jobs set
        done = done + ?2,
        failed = failed + ?3,
        status = case when status not in ('queued', 'running') then status
                      when ?4 is not null then 'failed'
                      when done + ?2 >= total and ingesting = 0 then 'completed'
                      else 'running' end,
        error = case when status in ('queued', 'running') and ?4 is not null then ?4
                     else error end,
        ingesting = case when ?4 is not null then 0 else ingesting end,
        started_at = case when status in ('queued', 'running')
                          then coalesce(started_at, ?6, ?5) else started_at end,
        finished_at = case when status in ('queued', 'running')
                                and (?4 is not null or (done + ?2 >= total and ingesting = 0))
                           then ?5 else finished_at end
     where id = ?1";

/// Drop the queued chunks of a job (?1) that failed.
const DROP_FAILED: &str = "update chunks set state = 2
     where state = 0 and job = (select key from jobs where id = ?1 and status = 'failed')";

/// What the starts and the chunks marked in a batch do to their job.
#[derive(Default)]
struct Counted {
    items: u64,
    errors: u64,
    fail: Option<String>,
    /// The time of its last record.
    at: Option<String>,
    /// The time of its start, when its start op is in the batch.
    started: Option<String>,
}

/// Job starts and chunk records, in the order sent: each record is a prepared statement (the
/// writer drives SQLite directly: a statement costs no hand-off, and binding a record's
/// outcomes as a parameter spares SQLite a JSON parse), each start is only noted. A chunk
/// already recorded (after a restart ran it again) or of a job that ended is skipped. Then
/// each job's row changes once, by one count: its start (a short job's usually comes in the
/// same batch as its chunk's record) and what was marked.
fn record_progress(conn: &Connection, run: &[&Op], next_seq: &mut u64) -> Result<Vec<Outcome>> {
    let mut counted: HashMap<JobId, Counted> = HashMap::new();
    for op in run {
        match op {
            Op::MarkStarted { id, at } => {
                counted.entry(*id).or_default().started = Some(format_time(*at));
            }
            Op::RecordChunk { record, at } => {
                let seq = *next_seq;
                *next_seq += 1;
                let marked = conn.prepare_cached(MARK_CHUNK)?.execute(params![
                    record.id.to_string(),
                    record.start as i64,
                    seq as i64,
                    record.outcomes.failed as i64,
                    record.outcomes.json,
                ])?;
                if marked == 0 {
                    continue;
                }
                // The outcomes were checked against the chunk's size when they arrived.
                let job = counted.entry(record.id).or_default();
                job.items += record.outcomes.size;
                job.errors += record.outcomes.failed;
                job.at = Some(format_time(*at));
                if job.fail.is_none() {
                    job.fail = record.fail_job.clone();
                }
            }
            _ => unreachable!("only starts and chunk records are grouped"),
        }
    }
    for (id, job) in &counted {
        let id = id.to_string();
        let at = job.at.as_ref().or(job.started.as_ref());
        conn.prepare_cached(COUNT_CHUNKS)?.execute(params![
            id,
            job.items as i64,
            job.errors as i64,
            job.fail,
            at,
            job.started,
        ])?;
        if job.fail.is_some() {
            conn.prepare_cached(DROP_FAILED)?.execute([&id])?;
        }
    }
    // Nobody waits on these (see `Store::mark_started` and `Store::record_chunk`).
    Ok(run.iter().map(|_| Outcome::Done).collect())
}

/// Every op but job starts and chunk records (see [`record_progress`]).
fn apply(conn: &Connection, op: &Op) -> Result<Outcome> {
    match op {
        Op::CreateJob(new) => create_job(conn, new),
        Op::AppendChunks {
            id,
            piece,
            items,
            close,
            at,
        } => {
            let id = id.to_string();
            let open = conn
                .prepare_cached(
                    "update jobs set total = total + ?2, ingesting = not ?3
                     where id = ?1 and ingesting = 1 and status in ('queued', 'running')",
                )?
                .execute(params![id, *items as i64, *close])?;
            if open == 0 {
                return Ok(Outcome::Changed(false)); // cancelled or failed during the upload
            }
            conn.prepare_cached(INSERT_CHUNKS)?
                .execute(params![id, piece])?;
            if *close {
                // Every item may already have its result.
                conn.prepare_cached(
                    "update jobs set status = 'completed', started_at = coalesce(started_at, ?2),
                            finished_at = ?2
                     where id = ?1 and status in ('queued', 'running') and done >= total",
                )?
                .execute(params![id, format_time(*at)])?;
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
            let id = id.to_string();
            let ended = conn
                .prepare_cached(
                    "update jobs set status = ?2, error = ?3, finished_at = ?4, ingesting = 0
                     where id = ?1 and status in ('queued', 'running')",
                )?
                .execute(params![
                    id,
                    status.as_str(),
                    error.as_deref(),
                    format_time(*at)
                ])?;
            if ended == 0 {
                return Ok(Outcome::Changed(false));
            }
            conn.prepare_cached(
                "update chunks set state = 2
                 where job = (select key from jobs where id = ?1) and state = 0",
            )?
            .execute([&id])?;
            Ok(Outcome::Changed(true))
        }
        Op::DeleteJob { id } => {
            let id = id.to_string();
            let status: Option<String> = conn
                .prepare_cached("select status from jobs where id = ?1")?
                .query_row([&id], |row| row.get(0))
                .optional()?;
            let Some(status) = status else {
                return Ok(Outcome::Deleted(DeleteOutcome::NotFound));
            };
            if !status
                .parse::<JobStatus>()
                .map_err(Error::Corrupt)?
                .is_finished()
            {
                return Ok(Outcome::Deleted(DeleteOutcome::NotFinished));
            }
            conn.prepare_cached(
                "delete from chunks where job = (select key from jobs where id = ?1)",
            )?
            .execute([&id])?;
            conn.prepare_cached("delete from jobs where id = ?1")?
                .execute([&id])?;
            Ok(Outcome::Deleted(DeleteOutcome::Deleted))
        }
        Op::Leave => Ok(Outcome::Done), // one node: nothing is claimed
        Op::ReleaseUnheld { .. } => Ok(Outcome::Released(Vec::new())),
        Op::PurgeFinished { before, limit } => {
            // The expired jobs' chunks first, then the jobs: the same (oldest) jobs, at most
            // `limit`, picked the same way twice in one transaction.
            let cutoff = format_time(*before);
            let expired = "select key from jobs
                 where status in ('completed', 'failed', 'cancelled')
                   and julianday(finished_at) < julianday(?1)
                 order by key limit ?2";
            conn.prepare_cached(&format!("delete from chunks where job in ({expired})"))?
                .execute(rusqlite::params![&cutoff, limit])?;
            let jobs = conn
                .prepare_cached(&format!("delete from jobs where key in ({expired})"))?
                .execute(rusqlite::params![&cutoff, limit])?;
            Ok(Outcome::Purged(jobs as u64))
        }
    }
}

/// Chunks from a piece (`[start, size, "items"]` entries, ?2) of the job ?1.
const INSERT_CHUNKS: &str = "insert into chunks (job, start, size, items, state)
     select (select key from jobs where id = ?1), value ->> 0, value ->> 1, value ->> 2, 0
     from json_each(?2)";

const INSERT_JOB: &str = "insert into jobs (id, function, kwargs, star, chunksize, timeout_s,
                       max_attempts, on_error, priority, metadata, status, total, created_at,
                       started_at, finished_at, idempotency_key, request_hash, ingesting,
                       codec, max_concurrency)
     values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
             ?19, ?20)";

/// A new job: its row, then its chunks, a piece per statement.
fn create_job(conn: &Connection, new: &NewJob) -> Result<Outcome> {
    let NewJob {
        job,
        pieces,
        claim: _, // one node runs everything
        idempotency,
    } = new;
    let spec = &job.spec;
    let id = job.id.to_string();
    conn.prepare_cached(INSERT_JOB)?.execute(params![
        id,
        spec.function,
        spec.kwargs.get(),
        spec.star,
        spec.chunksize,
        spec.timeout_s,
        spec.max_attempts,
        spec.on_error.as_str(),
        spec.priority,
        spec.metadata.get(),
        job.status.as_str(),
        job.total as i64,
        format_time(job.created_at),
        job.started_at.map(format_time),
        job.finished_at.map(format_time),
        idempotency.as_ref().map(|i| i.key.as_str()),
        idempotency.as_ref().map(|i| i.request_hash.as_str()),
        job.ingesting,
        spec.codec.as_str(),
        spec.max_concurrency,
    ])?;
    let mut insert = conn.prepare_cached(INSERT_CHUNKS)?;
    for piece in pieces {
        insert.execute(params![id, piece])?;
    }
    Ok(Outcome::Done)
}
