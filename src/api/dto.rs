//! JSON shapes shared by several endpoints: the Job and one item's result.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

use crate::model::{Codec, Job, JobStatus, OnError};
use crate::store::format_time;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum JobStatusDto {
    Queued,
    Running,
    /// Every item has a result (some may be item errors, counted in `failed`).
    Completed,
    /// `fail_fast` tripped, or the job could not run.
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnErrorDto {
    /// Record item errors and go on.
    Continue,
    /// The first item error fails the job; its remaining chunks never run.
    FailFast,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CodecDto {
    /// Items, kwargs values and values are plain JSON.
    Json,
    /// Every item, every kwargs value and every value is a JSON string holding a base64 pickle
    /// (Python to Python, for values JSON cannot hold). poold stores them as opaque strings and
    /// never unpickles; only workers started with `--allow-pickle` accept them.
    Pickle,
}

impl From<CodecDto> for Codec {
    fn from(codec: CodecDto) -> Self {
        match codec {
            CodecDto::Json => Self::Json,
            CodecDto::Pickle => Self::Pickle,
        }
    }
}

impl From<Codec> for CodecDto {
    fn from(codec: Codec) -> Self {
        match codec {
            Codec::Json => Self::Json,
            Codec::Pickle => Self::Pickle,
        }
    }
}

/// A map job and its progress.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobDto {
    #[schema(value_type = String, format = Uuid)]
    pub id: uuid::Uuid,
    pub status: JobStatusDto,
    pub function: String,
    #[schema(value_type = Object)]
    pub kwargs: Box<RawValue>,
    pub star: bool,
    pub chunksize: u32,
    pub timeout_s: Option<f64>,
    pub max_attempts: u32,
    pub on_error: OnErrorDto,
    pub priority: i32,
    pub codec: CodecDto,
    /// At most this many of its chunks run at once; `null`: no cap.
    #[schema(required = true)]
    pub max_concurrency: Option<u32>,
    /// Number of items; `null` while a streamed job's items are still being uploaded
    /// (NDJSON ingest), final once the upload has ended. Always a number for JSON bodies.
    #[schema(required = true)]
    pub total: Option<u64>,
    /// Items with a result, errors included.
    pub done: u64,
    /// Items whose result is an error.
    pub failed: u64,
    #[schema(value_type = Object)]
    pub metadata: Box<RawValue>,
    /// RFC 3339.
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Why the job failed, when it did.
    pub error: Option<String>,
}

/// One item's outcome: `value`, or `error` as `{"type","message","traceback"}`; and `log`
/// when the function printed something.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResultDto {
    pub index: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Any JSON value (`null` included); absent when the item failed.
    #[schema(value_type = Option<serde_json::Value>)]
    pub value: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<ItemErrorDto>)]
    pub error: Option<Box<RawValue>>,
    /// What the function printed while it ran on this item (its stdout, as sent by the
    /// worker), cut at 64 KiB with a `…[truncated]` marker. Absent when it printed nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
}

/// Data of an SSE `log` event: an item's log, sent just before that item's `result` event.
#[derive(Debug, Serialize, ToSchema)]
pub struct ItemLogDto {
    pub index: u64,
    /// The same text as the `log` of the item's result.
    pub log: String,
}

/// An item error, shaped like a Python exception.
#[derive(Debug, Serialize, ToSchema)]
pub struct ItemErrorDto {
    /// Exception type, e.g. `ValueError`, or `worker_exited` when the worker process died.
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    pub traceback: Option<String>,
    /// `pickle` jobs only, when the worker could pickle it: the exception itself as a base64
    /// pickle, so that a Python client can raise it with its own type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pickle: Option<String>,
}

impl From<JobStatus> for JobStatusDto {
    fn from(status: JobStatus) -> Self {
        match status {
            JobStatus::Queued => Self::Queued,
            JobStatus::Running => Self::Running,
            JobStatus::Completed => Self::Completed,
            JobStatus::Failed => Self::Failed,
            JobStatus::Cancelled => Self::Cancelled,
        }
    }
}

impl From<JobStatusDto> for JobStatus {
    fn from(status: JobStatusDto) -> Self {
        match status {
            JobStatusDto::Queued => Self::Queued,
            JobStatusDto::Running => Self::Running,
            JobStatusDto::Completed => Self::Completed,
            JobStatusDto::Failed => Self::Failed,
            JobStatusDto::Cancelled => Self::Cancelled,
        }
    }
}

impl From<OnErrorDto> for OnError {
    fn from(on_error: OnErrorDto) -> Self {
        match on_error {
            OnErrorDto::Continue => Self::Continue,
            OnErrorDto::FailFast => Self::FailFast,
        }
    }
}

impl From<Job> for JobDto {
    fn from(job: Job) -> Self {
        let spec = job.spec;
        JobDto {
            id: job.id,
            status: job.status.into(),
            function: spec.function,
            kwargs: spec.kwargs,
            star: spec.star,
            chunksize: spec.chunksize,
            timeout_s: spec.timeout_s,
            max_attempts: spec.max_attempts,
            on_error: match spec.on_error {
                OnError::Continue => OnErrorDto::Continue,
                OnError::FailFast => OnErrorDto::FailFast,
            },
            priority: spec.priority,
            codec: spec.codec.into(),
            max_concurrency: spec.max_concurrency,
            total: (!job.ingesting).then_some(job.total),
            done: job.done,
            failed: job.failed,
            metadata: spec.metadata,
            created_at: format_time(job.created_at),
            started_at: job.started_at.map(format_time),
            finished_at: job.finished_at.map(format_time),
            error: job.error,
        }
    }
}
