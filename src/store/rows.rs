//! A job row as every backend reads it (each fills [`JobRow`] from its own row type, by
//! column name), converted to the domain's [`Job`] at the store's boundary; times are stored as
//! RFC 3339 text on every backend ([`format_time`]).

use serde_json::value::RawValue;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::Error;
use crate::model::{Chunk, Job, JobSpec};

/// A row of `jobs` (queries select `*`).
pub struct JobRow {
    pub(super) id: String,
    pub(super) function: String,
    pub(super) kwargs: String,
    pub(super) star: bool,
    pub(super) chunksize: i64,
    pub(super) timeout_s: Option<f64>,
    pub(super) max_attempts: i64,
    pub(super) on_error: String,
    pub(super) priority: i64,
    pub(super) metadata: String,
    pub(super) codec: String,
    pub(super) max_concurrency: Option<i64>,
    pub(super) status: String,
    pub(super) total: i64,
    pub(super) ingesting: bool,
    pub(super) done: i64,
    pub(super) failed: i64,
    pub(super) error: Option<String>,
    pub(super) created_at: String,
    pub(super) started_at: Option<String>,
    pub(super) finished_at: Option<String>,
    pub(super) request_hash: Option<String>,
}

fn corrupt(what: impl std::fmt::Display) -> Error {
    Error::Corrupt(what.to_string())
}

fn json(text: String) -> Result<Box<RawValue>, Error> {
    RawValue::from_string(text).map_err(corrupt)
}

pub fn format_time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).expect("a UTC time formats as RFC 3339")
}

fn parse_time(text: &str) -> Result<OffsetDateTime, Error> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(corrupt)
}

impl JobRow {
    /// The hash of the request that created the job, when it had an `Idempotency-Key`.
    pub fn request_hash(&self) -> Option<&str> {
        self.request_hash.as_deref()
    }

    /// The job's id, if it is readable.
    pub fn id(&self) -> Option<crate::model::JobId> {
        self.id.parse().ok()
    }
}

impl TryFrom<JobRow> for Job {
    type Error = Error;
    fn try_from(row: JobRow) -> Result<Self, Error> {
        Ok(Job {
            id: row.id.parse().map_err(corrupt)?,
            spec: JobSpec {
                function: row.function,
                kwargs: json(row.kwargs)?,
                star: row.star,
                chunksize: row.chunksize as u32,
                timeout_s: row.timeout_s,
                max_attempts: row.max_attempts as u32,
                on_error: row.on_error.parse().map_err(corrupt)?,
                priority: row.priority as i32,
                metadata: json(row.metadata)?,
                codec: row.codec.parse().map_err(corrupt)?,
                max_concurrency: row.max_concurrency.map(|n| n as u32),
            },
            status: row.status.parse().map_err(corrupt)?,
            total: row.total as u64,
            ingesting: row.ingesting,
            done: row.done as u64,
            failed: row.failed as u64,
            error: row.error,
            created_at: parse_time(&row.created_at)?,
            started_at: row.started_at.as_deref().map(parse_time).transpose()?,
            finished_at: row.finished_at.as_deref().map(parse_time).transpose()?,
        })
    }
}

// The texts a backend folds rows of chunks into (one hand-off for many rows; done chunks are
// read by `store::pages`).

/// Chunks to run as `start size attempts items` entries separated by U+001F, all under
/// `lease` (0 on SQLite, where nothing is claimed and `attempts` is always 0; on PostgreSQL
/// see `postgres::cluster`).
pub(super) fn parse_chunks(text: &str, lease: u64) -> Result<Vec<Chunk>, Error> {
    text.split('\u{1f}')
        .map(|entry| {
            let mut fields = entry.splitn(4, ' ');
            let mut number = || {
                fields
                    .next()
                    .and_then(|f| f.parse::<u64>().ok())
                    .ok_or_else(|| Error::Corrupt(format!("a queued chunk: {entry:.80}")))
            };
            let (start_index, size, attempts) = (number()?, number()?, number()?);
            let items = fields
                .next()
                .and_then(|items| RawValue::from_string(items.to_string()).ok())
                .ok_or_else(|| Error::Corrupt(format!("a queued chunk's items: {entry:.80}")))?;
            Ok(Chunk {
                start_index,
                size,
                items,
                lease,
                attempts: attempts.min(u64::from(u32::MAX)) as u32,
            })
        })
        .collect()
}

/// Done chunks' `seq size` pairs separated by commas.
pub(super) fn parse_completion_sizes(text: &str) -> Result<Vec<(u64, u64)>, Error> {
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

/// Rows of unfinished jobs as the supervisor takes them: a row that cannot be read as a job
/// comes as its id and why; one whose very id is unreadable is logged and left alone.
pub fn unfinished_jobs(rows: Vec<JobRow>) -> Vec<Result<Job, (crate::model::JobId, String)>> {
    rows.into_iter()
        .filter_map(|row| {
            let Some(id) = row.id() else {
                tracing::error!("a stored job has an unreadable id; it is left alone");
                return None;
            };
            Some(Job::try_from(row).map_err(|e| (id, e.to_string())))
        })
        .collect()
}
