//! Row structs as SQLite returns them, converted to domain types at the store's boundary.

use serde_json::value::RawValue;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::Error;
use crate::model::{Job, JobSpec};

/// A row of `jobs`, read by column name (queries select `*`).
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
    pub fn read(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: row.get("id")?,
            function: row.get("function")?,
            kwargs: row.get("kwargs")?,
            star: row.get("star")?,
            chunksize: row.get("chunksize")?,
            timeout_s: row.get("timeout_s")?,
            max_attempts: row.get("max_attempts")?,
            on_error: row.get("on_error")?,
            priority: row.get("priority")?,
            metadata: row.get("metadata")?,
            codec: row.get("codec")?,
            max_concurrency: row.get("max_concurrency")?,
            status: row.get("status")?,
            total: row.get("total")?,
            ingesting: row.get("ingesting")?,
            done: row.get("done")?,
            failed: row.get("failed")?,
            error: row.get("error")?,
            created_at: row.get("created_at")?,
            started_at: row.get("started_at")?,
            finished_at: row.get("finished_at")?,
            request_hash: row.get("request_hash")?,
        })
    }

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
