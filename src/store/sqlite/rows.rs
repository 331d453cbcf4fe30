//! Row structs as SQLite returns them, converted to domain types at the store's boundary.

use serde_json::value::RawValue;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::Error;
use crate::model::{Job, JobSpec};

#[derive(sqlx::FromRow)]
pub struct JobRow {
    id: String,
    function: String,
    kwargs: String,
    star: bool,
    chunksize: i64,
    timeout_s: Option<f64>,
    max_attempts: i64,
    on_error: String,
    priority: i64,
    metadata: String,
    codec: String,
    max_concurrency: Option<i64>,
    status: String,
    total: i64,
    ingesting: bool,
    done: i64,
    failed: i64,
    error: Option<String>,
    created_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
    request_hash: Option<String>,
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
