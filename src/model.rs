//! Domain types shared by the store, the supervisor and the API: what a job is, independent of
//! how it is stored (`store`) or shown over HTTP (`api`, which has its own DTOs).

use std::fmt;
use std::str::FromStr;

use serde_json::value::RawValue;
use time::OffsetDateTime;
use uuid::Uuid;

pub type JobId = Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] = [
        Self::Queued,
        Self::Running,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// A finished job never changes again (but may be deleted).
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

impl FromStr for JobStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown job status {s:?}"))
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Record item errors and go on (`completed` with `failed` > 0).
    Continue,
    /// The first item error fails the job; its remaining chunks never run.
    FailFast,
}

impl OnError {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Continue => "continue",
            Self::FailFast => "fail_fast",
        }
    }
}

impl FromStr for OnError {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "continue" => Ok(Self::Continue),
            "fail_fast" => Ok(Self::FailFast),
            other => Err(format!("unknown on_error {other:?}")),
        }
    }
}

/// How a job's items, kwargs values and item values travel between client and worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Plain JSON values.
    Json,
    /// Each item, each kwargs value and each value is a JSON string holding a base64 pickle
    /// (Python to Python). poold stores and shows them as opaque strings and never unpickles.
    Pickle,
}

impl Codec {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Pickle => "pickle",
        }
    }
}

impl FromStr for Codec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "json" => Ok(Self::Json),
            "pickle" => Ok(Self::Pickle),
            other => Err(format!("unknown codec {other:?}")),
        }
    }
}

/// How to run a job's items: what the client asked for, after defaults were applied.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub function: String,
    /// A JSON object: fixed keyword arguments, like `functools.partial`.
    pub kwargs: Box<RawValue>,
    /// Each item is an array of positional arguments (`starmap`).
    pub star: bool,
    pub chunksize: u32,
    pub timeout_s: Option<f64>,
    pub max_attempts: u32,
    pub on_error: OnError,
    pub priority: i32,
    /// A JSON object of free-form labels, returned as given.
    pub metadata: Box<RawValue>,
    pub codec: Codec,
    /// At most this many of its chunks in flight at once (`Pool(processes=N)`); `None`: no cap.
    pub max_concurrency: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Job {
    pub id: JobId,
    pub spec: JobSpec,
    pub status: JobStatus,
    /// Items stored. Final once `ingesting` is false; until then a running count.
    pub total: u64,
    /// The job's items are still being uploaded (streaming ingest): it cannot complete yet.
    pub ingesting: bool,
    pub done: u64,
    pub failed: u64,
    pub error: Option<String>,
    pub created_at: OffsetDateTime,
    pub started_at: Option<OffsetDateTime>,
    pub finished_at: Option<OffsetDateTime>,
}

/// A slice of a job's items, the unit of dispatch to a worker, named by its first item.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub start_index: u64,
    pub size: u64,
    /// JSON array of the chunk's items.
    pub items: Box<RawValue>,
    /// The claim this node runs it under, checked when it is recorded (on a store shared by
    /// several nodes; 0 on SQLite, where one node runs everything and nothing is claimed).
    pub lease: u64,
    /// Runs of it lost with a node that stopped heartbeating (they count as attempts).
    pub attempts: u32,
}

/// Pool.map's automatic chunksize, `ceil(len / (4 * workers))`, capped so that a large job
/// still streams its first results early and shares the pool with others.
pub fn auto_chunksize(total: usize, workers: usize) -> u32 {
    const MAX_AUTO_CHUNKSIZE: usize = 1000;
    let chunks = 4 * workers.max(1);
    total.div_ceil(chunks).clamp(1, MAX_AUTO_CHUNKSIZE) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_chunksize_follows_pool_map() {
        assert_eq!(auto_chunksize(0, 2), 1);
        assert_eq!(auto_chunksize(3, 2), 1);
        assert_eq!(auto_chunksize(100, 2), 13);
        assert_eq!(auto_chunksize(1_000_000, 2), 1000);
    }

    #[test]
    fn statuses_round_trip() {
        for status in JobStatus::ALL {
            assert_eq!(status.as_str().parse::<JobStatus>(), Ok(status));
        }
        assert!("nope".parse::<JobStatus>().is_err());
    }
}
