//! The SQL of each write, applied by the writer task (`writer`): a batch of ops in one
//! transaction. Every query is a round trip to sqlx's connection thread, so the fewer the
//! better: job starts and chunk records go in together by one query whatever their number (a
//! chunk's outcomes are one JSON string each, never parsed by SQLite), and a batch of nothing
//! but those, or of one new job, is a single query that begins and commits its own transaction.

use std::fmt::Write;

use sqlx::{Connection, SqliteConnection};

use super::rows::format_time;
use super::writer::{Op, Outcome};
use crate::model::JobStatus;
use crate::store::{DeleteOutcome, Error, NewJob, Result};

/// Apply ops in one transaction; one outcome per op, or the first error. Chunk records get
/// their completion numbers from `next_seq`.
pub async fn apply_batch(
    conn: &mut SqliteConnection,
    ops: &[&Op],
    next_seq: &mut u64,
) -> Result<Vec<Outcome>> {
    if ops.iter().all(|op| op.is_progress()) {
        // The common batch while jobs run: its transaction is part of the one query.
        return record_progress(conn, ops, next_seq, Wrap::Transaction).await;
    }
    if let [Op::CreateJob(new)] = ops
        && new.pieces.len() <= 1
    {
        // A small new job: one query, transaction included.
        return create_job(conn, new, Wrap::Transaction)
            .await
            .map(|o| vec![o]);
    }
    let mut tx = conn.begin_with("begin immediate").await?;
    let mut outcomes = Vec::with_capacity(ops.len());
    // Consecutive chunk records go together; other ops one at a time, in order.
    let runs = ops.chunk_by(|a, b| a.is_progress() && b.is_progress());
    for run in runs {
        if run[0].is_progress() {
            outcomes.extend(record_progress(&mut tx, run, next_seq, Wrap::None).await?);
        } else {
            for op in run {
                outcomes.push(apply(&mut tx, op).await?);
            }
        }
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// Whether a query runs inside the caller's transaction or begins and commits its own (then
/// it rolls back on failure).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wrap {
    None,
    Transaction,
}

/// A constant query, alone or wrapped in its own transaction: both variants stay in sqlx's
/// statement cache. sqlx binds a statement's parameters by their numbers, but fills a
/// statement's *unused* lower numbers positionally (and may stop binding there), so every
/// statement uses ?1.
macro_rules! wrapped {
    ($wrap:expr, $sql:expr) => {
        match $wrap {
            Wrap::None => $sql,
            Wrap::Transaction => concat!("begin immediate;\n", $sql, "\ncommit;"),
        }
    };
}

/// Run a query that may carry its own transaction; on failure, leave no transaction open (the
/// writer also drops the connection after a failure).
async fn execute(
    conn: &mut SqliteConnection,
    wrap: Wrap,
    query: sqlx::query::Query<'_, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
) -> Result<u64> {
    match query.execute(&mut *conn).await {
        Ok(done) => Ok(done.rows_affected()),
        Err(e) => {
            if wrap == Wrap::Transaction {
                let _ = sqlx::query("rollback").execute(&mut *conn).await;
            }
            Err(e.into())
        }
    }
}

/// Job starts and chunk records, in one query of four statements: move the started jobs to
/// running; move the counters of the jobs whose chunks are still queued (completing a job at
/// its total, failing one whose record says `fail_fast` tripped); mark those chunks done with
/// their outcomes and completion numbers; drop the queued chunks of jobs that failed. A chunk
/// already recorded (after a restart ran it again) or of a job that ended is skipped.
///
/// ?1, small: `{"at", "starts": [[job, started_at], …], "heads": [[job, start, failed, seq,
/// fail], …]}`; ?2: the outcomes, one JSON string per head.
macro_rules! progress_sql {
    () => {
        "update jobs set status = 'running', started_at = s.value ->> 1
     from json_each(?1, '$.starts') as s
     where jobs.id = s.value ->> 0 and jobs.status = 'queued';

     with h as materialized (
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
     where jobs.key = c.job;

     with h as materialized (
         select key as n, (select key from jobs where id = value ->> 0) as job,
                value ->> 1 as start, value ->> 2 as failed, value ->> 3 as seq
         from json_each(?1, '$.heads')),
     o as materialized (select key as n, value as outcomes from json_each(?2) where ?1 is not null)
     update chunks set state = 1, seq = h.seq, failed = h.failed, outcomes = o.outcomes,
                       items = ''
     from h join o on o.n = h.n
     where chunks.job = h.job and chunks.start = h.start and chunks.state = 0;

     update chunks set state = 2
     where state = 0 and job in (
         select j.key from json_each(?1, '$.heads') as h join jobs as j on j.id = h.value ->> 0
         where h.value ->> 4 is not null and j.status = 'failed');"
    };
}

async fn record_progress(
    conn: &mut SqliteConnection,
    run: &[&Op],
    next_seq: &mut u64,
    wrap: Wrap,
) -> Result<Vec<Outcome>> {
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
    let query = sqlx::query(wrapped!(wrap, progress_sql!()))
        .bind(small)
        .bind(outcomes);
    execute(conn, wrap, query).await?;
    // Nobody waits on these (see `Store::mark_started` and `Store::record_chunk`).
    Ok(run.iter().map(|_| Outcome::Done).collect())
}

/// Every op but job starts and chunk records (see [`record_progress`]).
async fn apply(conn: &mut SqliteConnection, op: &Op) -> Result<Outcome> {
    match op {
        Op::CreateJob(new) => create_job(conn, new, Wrap::None).await,
        Op::AppendChunks {
            id,
            piece,
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
            sqlx::query(INSERT_CHUNKS)
                .bind(&id)
                .bind(piece)
                .execute(&mut *conn)
                .await?;
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
                "update chunks set state = 2
                 where job = (select key from jobs where id = ?1) and state = 0",
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
            sqlx::query(
                "delete from chunks where job = (select key from jobs where id = ?1);
                 delete from jobs where id = ?1",
            )
            .bind(&id)
            .execute(&mut *conn)
            .await?;
            Ok(Outcome::Deleted(DeleteOutcome::Deleted))
        }
        Op::PurgeFinished { before } => {
            // The expired jobs' chunks first, then the jobs, with one cutoff.
            let cutoff = format_time(*before);
            sqlx::query(
                "delete from chunks where job in (select key from jobs
                    where status in ('completed', 'failed', 'cancelled')
                      and julianday(finished_at) < julianday(?1))",
            )
            .bind(&cutoff)
            .execute(&mut *conn)
            .await?;
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

/// Chunks from a piece (`[start, size, "items"]` entries, the parameter ?N) of the job ?1.
macro_rules! insert_chunks {
    ($piece:literal) => {
        concat!(
            "insert into chunks (job, start, size, items, state)
             select (select key from jobs where id = ?1), value ->> 0, value ->> 1, value ->> 2, 0
             from json_each(", $piece, ");"
        )
    };
}
const INSERT_CHUNKS: &str = insert_chunks!("?2");

/// The job row, followed by `$then`.
macro_rules! insert_job {
    ($then:expr) => {
        concat!(
            "insert into jobs (id, function, kwargs, star, chunksize, timeout_s, max_attempts,
                               on_error, priority, metadata, status, total, created_at,
                               started_at, finished_at, idempotency_key, request_hash,
                               ingesting, codec, max_concurrency)
             values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                     ?18, ?19, ?20);\n",
            $then
        )
    };
}

/// A new job: its row and first piece of chunks in one query (with `Wrap::Transaction`, the
/// whole write); further pieces one query each.
async fn create_job(conn: &mut SqliteConnection, new: &NewJob, wrap: Wrap) -> Result<Outcome> {
    let NewJob {
        job,
        pieces,
        idempotency,
    } = new;
    let spec = &job.spec;
    let id = job.id.to_string();
    let sql = match pieces.first() {
        None => wrapped!(wrap, insert_job!("")),
        Some(_) => wrapped!(wrap, insert_job!(insert_chunks!("?21"))),
    };
    let mut query = sqlx::query(sql)
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
        .bind(spec.max_concurrency);
    if let Some(first) = pieces.first() {
        query = query.bind(first.as_str());
    }
    execute(conn, wrap, query).await?;
    for piece in pieces.iter().skip(1) {
        sqlx::query(INSERT_CHUNKS)
            .bind(&id)
            .bind(piece.as_str())
            .execute(&mut *conn)
            .await?;
    }
    Ok(Outcome::Done)
}
