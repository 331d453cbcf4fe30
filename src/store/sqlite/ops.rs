//! The SQL of each write, applied by the writer thread (`store::writer`, through `writer`): a batch of ops in one
//! transaction, on the writer's own connection, statement by statement (each is prepared
//! once and cached). Job starts and chunk records go in together by four statements whatever
//! their number (a chunk's outcomes are one JSON string each, never parsed by SQLite).

use std::fmt::Write;

use rusqlite::{Connection, OptionalExtension, params};

use crate::model::JobStatus;
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

/// Job starts and chunk records. A chunk already recorded (after a restart ran it again) or
/// of a job that ended is skipped. Each statement's parameters: ?1, small: `{"at", "starts":
/// [[job, started_at], …], "heads": [[job, start, failed, seq, fail], …]}`; ?2: the
/// outcomes, one JSON string per head.
/// Move the started jobs to running.
const START_JOBS: &str = "update jobs set status = 'running', started_at = s.value ->> 1
     from json_each(?1, '$.starts') as s
     where jobs.id = s.value ->> 0 and jobs.status = 'queued'";

/// Move the counters of the jobs whose chunks are still queued (completing a job at its
/// total, failing one whose record says `fail_fast` tripped).
const COUNT_CHUNKS: &str = "with h as materialized (
         select (select key from jobs where id = value ->> 0) as job, value ->> 1 as start,
                value ->> 2 as failed, value ->> 4 as fail
         from json_each(?1, '$.heads'))
     update jobs set
        done = jobs.done + c.items,
        failed = jobs.failed + c.errors,
        status = case when jobs.status not in ('queued', 'running') then jobs.status
                      when c.fail is not null then 'failed'
                      when jobs.done + c.items >= jobs.total and jobs.ingesting = 0 then 'completed'
                      else jobs.status end,
        error = case when jobs.status in ('queued', 'running') and c.fail is not null
                     then c.fail else jobs.error end,
        ingesting = case when c.fail is not null then 0 else jobs.ingesting end,
        finished_at = case when jobs.status in ('queued', 'running')
                                and (c.fail is not null
                                     or (jobs.done + c.items >= jobs.total and jobs.ingesting = 0))
                           then ?1 ->> '$.at' else jobs.finished_at end
     from (select h.job, sum(q.size) as items, sum(h.failed) as errors, max(h.fail) as fail
           from h join chunks as q on q.job = h.job and q.start = h.start and q.state = 0
           group by h.job) as c
     where jobs.key = c.job";

/// Mark those chunks done with their outcomes and completion numbers.
const RECORD_CHUNKS: &str = "with h as materialized (
         select key as n, (select key from jobs where id = value ->> 0) as job,
                value ->> 1 as start, value ->> 2 as failed, value ->> 3 as seq
         from json_each(?1, '$.heads')),
     o as materialized (select key as n, value as outcomes from json_each(?2) where ?1 is not null)
     update chunks set state = 1, seq = h.seq, failed = h.failed, outcomes = o.outcomes,
                       items = ''
     from h join o on o.n = h.n
     where chunks.job = h.job and chunks.start = h.start and chunks.state = 0";

/// Drop the queued chunks of jobs that failed.
const DROP_FAILED: &str = "update chunks set state = 2
     where state = 0 and job in (
         select j.key from json_each(?1, '$.heads') as h join jobs as j on j.id = h.value ->> 0
         where h.value ->> 4 is not null and j.status = 'failed')";

fn record_progress(conn: &Connection, run: &[&Op], next_seq: &mut u64) -> Result<Vec<Outcome>> {
    let mut at = None;
    let mut starts = String::new();
    let mut heads = String::new();
    let mut outcomes = String::from("[");
    let mut seen = std::collections::HashSet::new();
    for op in run {
        match op {
            Op::MarkStarted { id, at } => {
                if !starts.is_empty() {
                    starts.push(',');
                }
                let _ = write!(starts, r#"["{id}","{}"]"#, format_time(*at));
            }
            Op::RecordChunk { record, at: when } => {
                // The same chunk twice in one batch would count twice: keep the first.
                if !seen.insert((record.id, record.start)) {
                    continue;
                }
                at = Some(*when);
                if !heads.is_empty() {
                    heads.push(',');
                    outcomes.push(',');
                }
                let fail = record.fail_job.as_deref().map_or_else(
                    || "null".to_string(),
                    |f| serde_json::to_string(f).expect("a string"),
                );
                let _ = write!(
                    heads,
                    r#"["{}",{},{},{},{fail}]"#,
                    record.id, record.start, record.outcomes.failed, *next_seq
                );
                *next_seq += 1;
                outcomes.push_str(&serde_json::to_string(&record.outcomes.json).expect("a string"));
            }
            _ => unreachable!("only starts and chunk records are grouped"),
        }
    }
    outcomes.push(']');
    let at = at.map_or_else(
        || "null".to_string(),
        |at| format!(r#""{}""#, format_time(at)),
    );
    let small = format!(r#"{{"at":{at},"starts":[{starts}],"heads":[{heads}]}}"#);
    if !starts.is_empty() {
        conn.prepare_cached(START_JOBS)?.execute([&small])?;
    }
    if !heads.is_empty() {
        conn.prepare_cached(COUNT_CHUNKS)?.execute([&small])?;
        conn.prepare_cached(RECORD_CHUNKS)?
            .execute([&small, &outcomes])?;
        conn.prepare_cached(DROP_FAILED)?.execute([&small])?;
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
        Op::PurgeFinished { before } => {
            // The expired jobs' chunks first, then the jobs, with one cutoff.
            let cutoff = format_time(*before);
            conn.prepare_cached(
                "delete from chunks where job in (select key from jobs
                    where status in ('completed', 'failed', 'cancelled')
                      and julianday(finished_at) < julianday(?1))",
            )?
            .execute([&cutoff])?;
            let jobs = conn
                .prepare_cached(
                    "delete from jobs where status in ('completed', 'failed', 'cancelled')
                       and julianday(finished_at) < julianday(?1)",
                )?
                .execute([&cutoff])?;
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
