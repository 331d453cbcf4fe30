//! The SQL of each write, applied by the writer task (`writer`): a batch of ops in one
//! transaction, consecutive job starts and chunk records in one query whatever their number
//! (results go in through `json_each`, never one statement per item). Every query is a round
//! trip to sqlx's connection thread, so the fewer the better: a batch of nothing but starts and
//! records (the usual one while jobs run) is a single query that begins and commits its own
//! transaction.

use std::fmt::Write;

use sqlx::{Connection, SqliteConnection};

use super::rows::format_time;
use super::writer::{DeleteOutcome, NewJob, Op, Outcome};
use super::{Error, Result};
use crate::model::JobStatus;

/// Apply requests in one transaction; one outcome per request, or the first error.
pub async fn apply_batch(conn: &mut SqliteConnection, ops: &[&Op]) -> Result<Vec<Outcome>> {
    if ops.iter().all(|op| op.is_progress()) {
        // The common batch while jobs run: its transaction is part of the one query.
        return record_progress(conn, ops, Wrap::Transaction).await;
    }
    let mut tx = conn.begin_with("begin immediate").await?;
    let mut outcomes = Vec::with_capacity(ops.len());
    // Consecutive chunk records go together; other ops one at a time, in order.
    let runs = ops.chunk_by(|a, b| a.is_progress() && b.is_progress());
    for run in runs {
        if run[0].is_progress() {
            outcomes.extend(record_progress(&mut tx, run, Wrap::None).await?);
        } else {
            for op in run {
                outcomes.push(apply(&mut tx, op).await?);
            }
        }
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// Whether [`record_progress`] runs inside the caller's transaction or brings its own.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wrap {
    None,
    Transaction,
}

/// The progress query (see [`record_progress`]), optionally in its own transaction: a
/// constant string either way, so both stay in sqlx's statement cache. sqlx binds a
/// statement's parameters by their numbers, but fills a statement's *unused* lower numbers
/// positionally (and may stop binding there), so every statement uses ?1.
macro_rules! progress_sql {
    ($begin:literal, $commit:literal) => {
        concat!(
            $begin,
            "update jobs set status = 'running', started_at = s.value ->> 1
             from json_each(?1, '$.starts') as s
             where jobs.id = s.value ->> 0 and jobs.status = 'queued';

             -- `r` is materialized, so each chunk's object is parsed once, not once per item.
             with r as materialized (
                 select value ->> 'job' as job, value ->> 'chunk' as chunk, value ->> 'start' as start,
                        value -> 'outcomes' as outcomes
                 from json_each(?2) where ?1 is not null)
             insert into results (job_id, item_index, value, error, log)
             select r.job, r.start + o.key,
                    case when o.value -> 'error' is null then coalesce(o.value -> 'value', 'null') end,
                    o.value -> 'error',
                    o.value ->> 'log'
             from r
             join chunks as c on c.job_id = r.job and c.chunk_index = r.chunk and c.status = 'queued',
                  json_each(r.outcomes) as o;

             update jobs set
                done = jobs.done + c.items,
                failed = jobs.failed + c.errors,
                status = case when jobs.done + c.items >= jobs.total and jobs.status in ('queued', 'running')
                                   and jobs.ingesting = 0
                              then 'completed' else jobs.status end,
                finished_at = case when jobs.done + c.items >= jobs.total and jobs.status in ('queued', 'running')
                                   and jobs.ingesting = 0
                                   then ?1 ->> '$.at' else jobs.finished_at end
             from (select h.value ->> 0 as job_id, sum(h.value ->> 2) as items, sum(h.value ->> 3) as errors
                   from json_each(?1, '$.heads') as h
                   join chunks as q on q.job_id = h.value ->> 0 and q.chunk_index = h.value ->> 1
                                    and q.status = 'queued'
                   group by 1) as c
             where jobs.id = c.job_id;

             update chunks set status = 'done'
             where status = 'queued'
               and (job_id, chunk_index) in (select value ->> 0, value ->> 1 from json_each(?1, '$.heads'));",
            $commit
        )
    };
}

/// Apply a run of job starts and chunk records in one round trip to the connection's thread,
/// whatever their number: one query of four statements that move the started jobs to running,
/// insert the results of the chunks that are still queued (a chunk already recorded, or of a
/// job that ended, is skipped), move their jobs' counters (completing a job at its total), and
/// only then mark those chunks done. The starts go first: that keeps each job's order, as a job
/// is started before any of its chunks is sent to a worker. A chunk recorded twice in one run
/// fails the batch on the results' unique index, and the one-by-one retry then skips the second.
///
/// With [`Wrap::Transaction`] the query also begins and commits the transaction (two round
/// trips fewer), and rolls it back if a statement fails.
async fn record_progress(
    conn: &mut SqliteConnection,
    run: &[&Op],
    wrap: Wrap,
) -> Result<Vec<Outcome>> {
    // ?1, small: {"at": recorded_at, "starts": [[job, started_at], …],
    // "heads": [[job, chunk, size, failed], …]} for the starts, the counters and the claim.
    // ?2: the outcomes, with each chunk's key and first item index, for the results.
    let mut at = None;
    let mut starts = String::new();
    let mut heads = String::new();
    let mut outcomes = String::from("[");
    for op in run {
        match op {
            Op::MarkStarted { id, at } => {
                if !starts.is_empty() {
                    starts.push(',');
                }
                let _ = write!(starts, r#"["{id}","{}"]"#, format_time(*at));
            }
            Op::RecordChunk {
                id,
                chunk_index,
                start_index,
                size,
                outcomes: chunk_outcomes,
                failed,
                at: when,
            } => {
                at = Some(*when);
                if !heads.is_empty() {
                    heads.push(',');
                    outcomes.push(',');
                }
                let _ = write!(heads, r#"["{id}",{chunk_index},{size},{failed}]"#);
                let _ = write!(
                    outcomes,
                    r#"{{"job":"{id}","chunk":{chunk_index},"start":{start_index},"outcomes":{chunk_outcomes}}}"#
                );
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
    let sql = match wrap {
        Wrap::None => progress_sql!("", ""),
        Wrap::Transaction => progress_sql!("begin immediate;\n", "\ncommit;"),
    };
    let applied = sqlx::query(sql)
        .bind(&small)
        .bind(&outcomes)
        .execute(&mut *conn)
        .await;
    if let Err(e) = applied {
        if wrap == Wrap::Transaction {
            // A failed statement leaves the transaction open (or none was begun: then this
            // fails too, harmlessly; the writer reconnects after a failure anyway).
            let _ = sqlx::query("rollback").execute(&mut *conn).await;
        }
        return Err(e.into());
    }
    // Nobody waits on these (see `Store::mark_started` and `Store::record_chunk`).
    Ok(run.iter().map(|_| Outcome::Done).collect())
}

/// Every op but job starts and chunk records (see [`record_progress`]).
async fn apply(conn: &mut SqliteConnection, op: &Op) -> Result<Outcome> {
    match op {
        Op::CreateJob(new) => create_job(conn, new).await,
        Op::AppendChunks {
            id,
            first_chunk,
            chunks,
            items,
            close,
            at,
        } => {
            let id = id.to_string();
            let open = sqlx::query(
                "update jobs set total = total + ?2, ingesting = not ?3
                 where id = ?1 and ingesting = 1 and status in ('queued', 'running')",
            )
            .bind(&id)
            .bind(*items as i64)
            .bind(*close)
            .execute(&mut *conn)
            .await?;
            if open.rows_affected() == 0 {
                return Ok(Outcome::Changed(false)); // cancelled or failed during the upload
            }
            insert_chunks(conn, &id, *first_chunk, chunks).await?;
            if *close {
                // Every item may already have its result.
                sqlx::query(
                    "update jobs set status = 'completed', started_at = coalesce(started_at, ?2),
                            finished_at = ?2
                     where id = ?1 and status in ('queued', 'running') and done >= total",
                )
                .bind(&id)
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
            let id = id.to_string();
            let ended = sqlx::query(
                "update jobs set status = ?2, error = ?3, finished_at = ?4, ingesting = 0
                 where id = ?1 and status in ('queued', 'running')",
            )
            .bind(&id)
            .bind(status.as_str())
            .bind(error.as_deref())
            .bind(format_time(*at))
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
        Op::PurgeFinished { before } => {
            // The expired jobs' results and chunks first, then the jobs, with one cutoff.
            let cutoff = format_time(*before);
            for sql in [
                "delete from results where job_id in (select id from jobs
                    where status in ('completed', 'failed', 'cancelled')
                      and julianday(finished_at) < julianday(?1))",
                "delete from chunks where job_id in (select id from jobs
                    where status in ('completed', 'failed', 'cancelled')
                      and julianday(finished_at) < julianday(?1))",
            ] {
                sqlx::query(sql).bind(&cutoff).execute(&mut *conn).await?;
            }
            let jobs = sqlx::query(
                "delete from jobs where status in ('completed', 'failed', 'cancelled')
                   and julianday(finished_at) < julianday(?1)",
            )
            .bind(&cutoff)
            .execute(&mut *conn)
            .await?;
            Ok(Outcome::Purged(jobs.rows_affected()))
        }
    }
}

async fn create_job(conn: &mut SqliteConnection, new: &NewJob) -> Result<Outcome> {
    let NewJob {
        job,
        chunks,
        idempotency,
    } = new;
    let spec = &job.spec;
    let id = job.id.to_string();
    sqlx::query(
        "insert into jobs (id, function, kwargs, star, chunksize, timeout_s, max_attempts, on_error,
                           priority, metadata, status, total, created_at, started_at, finished_at,
                           idempotency_key, request_hash, ingesting, codec, max_concurrency)
         values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
                 ?19, ?20)",
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
    .bind(job.started_at.map(format_time))
    .bind(job.finished_at.map(format_time))
    .bind(idempotency.as_ref().map(|i| i.key.as_str()))
    .bind(idempotency.as_ref().map(|i| i.request_hash.as_str()))
    .bind(job.ingesting)
    .bind(spec.codec.as_str())
    .bind(spec.max_concurrency)
    .execute(&mut *conn)
    .await?;
    for (first_chunk, piece) in chunks {
        insert_chunks(conn, &id, *first_chunk, piece).await?;
    }
    Ok(Outcome::Done)
}

/// Insert a JSON array of `[first item index, [items]]` chunks as chunks `first_chunk`,
/// `first_chunk + 1`, …
async fn insert_chunks(
    conn: &mut SqliteConnection,
    id: &str,
    first_chunk: u64,
    chunks: &str,
) -> Result<()> {
    sqlx::query(
        "insert into chunks (job_id, chunk_index, start_index, size, items, status)
         select ?1, ?2 + key, value ->> 0, json_array_length(value, '$[1]'), value -> 1, 'queued'
         from json_each(?3)",
    )
    .bind(id)
    .bind(first_chunk as i64)
    .bind(chunks)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
