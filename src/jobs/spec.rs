//! What a client asks for ([`JobRequest`]) and how it becomes a job's spec: every field checked
//! against `crate::limits` and defaulted, each item checked as it is added. Errors are messages
//! naming the field or item, for a 400.

use std::collections::BTreeMap;

use serde_json::value::RawValue;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::limits;
use crate::model::{Codec, Job, JobSpec, JobStatus, OnError, auto_chunksize};

/// Chunk size of a streamed job that names none (its length is unknown).
pub const STREAM_CHUNKSIZE: u32 = 100;

/// A job as a client asks for it, before any check: every field but the items.
#[derive(Debug, Default)]
pub struct JobRequest {
    pub function: String,
    pub kwargs: Option<Box<RawValue>>,
    pub star: bool,
    pub chunksize: Option<i64>,
    pub timeout_s: Option<f64>,
    pub max_attempts: Option<i64>,
    pub on_error: Option<OnError>,
    pub priority: Option<i32>,
    pub metadata: Option<Box<RawValue>>,
    pub codec: Option<Codec>,
    pub max_concurrency: Option<i64>,
}

/// Check a request and apply defaults. `items` is the number of items when known (a JSON
/// body), for the automatic chunksize; `workers` the pool's size, for the same;
/// `default_timeout_s` the server's `--task-timeout`.
pub fn validate(
    request: JobRequest,
    items: Option<u64>,
    workers: usize,
    default_timeout_s: Option<f64>,
) -> Result<JobSpec, String> {
    check_function_name(&request.function)?;
    let kwargs = json_object(request.kwargs, "kwargs", limits::MAX_KWARGS_BYTES)?;
    let metadata = json_object(request.metadata, "metadata", limits::MAX_METADATA_BYTES)?;
    let codec = request.codec.unwrap_or(Codec::Json);
    if codec == Codec::Pickle {
        let values: BTreeMap<String, &RawValue> =
            serde_json::from_str(kwargs.get()).expect("kwargs is a JSON object");
        if let Some((name, value)) = values.iter().find(|(_, v)| !is_base64_string(v)) {
            return Err(format!(
                "codec is pickle, so every kwargs value must be a base64 string (a pickle); kwargs[{name:?}] is {}",
                excerpt(value.get())
            ));
        }
    }
    let max_concurrency = match request.max_concurrency {
        None => None,
        Some(n) if (1..=i64::from(limits::MAX_CONCURRENCY)).contains(&n) => Some(n as u32),
        Some(n) => {
            return Err(format!(
                "max_concurrency must be between 1 and {}, got {n}",
                limits::MAX_CONCURRENCY
            ));
        }
    };
    let chunksize = match (request.chunksize, items) {
        (None, Some(n)) => auto_chunksize(n as usize, workers),
        (None, None) => STREAM_CHUNKSIZE,
        (Some(c), _) if (1..=i64::from(limits::MAX_CHUNKSIZE)).contains(&c) => c as u32,
        (Some(c), _) => {
            return Err(format!(
                "chunksize must be between 1 and {}, got {c}",
                limits::MAX_CHUNKSIZE
            ));
        }
    };
    if let Some(t) = request.timeout_s {
        limits::check_timeout(t)?;
    }
    let max_attempts = request.max_attempts.unwrap_or(1);
    if !(1..=i64::from(limits::MAX_ATTEMPTS)).contains(&max_attempts) {
        return Err(format!(
            "max_attempts must be between 1 and {}, got {max_attempts}",
            limits::MAX_ATTEMPTS
        ));
    }
    Ok(JobSpec {
        function: request.function,
        kwargs,
        star: request.star,
        chunksize,
        timeout_s: request.timeout_s.or(default_timeout_s),
        max_attempts: max_attempts as u32,
        on_error: request.on_error.unwrap_or(OnError::Continue),
        priority: request.priority.unwrap_or(0),
        metadata,
        codec,
        max_concurrency,
    })
}

/// One item's own check: nested at most `limits::MAX_DEPTH` deep; with `codec: pickle`, a
/// base64 string; else, with `star`, an array of arguments.
pub fn check_item(spec: &JobSpec, index: u64, item: &RawValue) -> Result<(), String> {
    if spec.codec == Codec::Pickle {
        if !is_base64_string(item) {
            return Err(format!(
                "codec is pickle, so every item must be a base64 string (a pickle); item {index} is {}",
                excerpt(item.get())
            ));
        }
    } else if spec.star && !item.get().starts_with('[') {
        return Err(format!(
            "star is true, so every item must be an array of arguments; item {index} is {}",
            excerpt(item.get())
        ));
    }
    limits::check_depth(&format!("item {index}"), item.get())
}

/// A job about to be stored with `total` items; `ingesting`: more will be uploaded.
pub fn new_job(spec: JobSpec, total: u64, ingesting: bool) -> Job {
    let now = OffsetDateTime::now_utc();
    // An empty map is done at once, like `pool.map(f, [])`.
    let empty = total == 0 && !ingesting;
    let finished = empty.then_some(now);
    Job {
        id: Uuid::now_v7(),
        spec,
        status: if empty {
            JobStatus::Completed
        } else {
            JobStatus::Queued
        },
        total,
        ingesting,
        done: 0,
        failed: 0,
        error: None,
        created_at: now,
        started_at: finished,
        finished_at: finished,
    }
}

/// A function name is 1 to 255 characters, none of them a control character.
fn check_function_name(name: &str) -> Result<(), String> {
    let length = name.chars().count();
    if !(1..=limits::MAX_FUNCTION_NAME).contains(&length) {
        return Err(format!(
            "function must be 1 to {} characters long, got {length}",
            limits::MAX_FUNCTION_NAME,
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("function must not contain control characters".into());
    }
    Ok(())
}

/// `kwargs` or `metadata`: a JSON object (default `{}`) within its size and nesting limits.
fn json_object(
    value: Option<Box<RawValue>>,
    name: &str,
    max_bytes: usize,
) -> Result<Box<RawValue>, String> {
    let Some(value) = value else {
        return Ok(RawValue::from_string("{}".into()).expect("valid JSON"));
    };
    if !value.get().starts_with('{') {
        return Err(format!(
            "{name} must be a JSON object, got {}",
            excerpt(value.get())
        ));
    }
    if value.get().len() > max_bytes {
        return Err(format!(
            "{name} is {} bytes of JSON; the most is {max_bytes}",
            value.get().len()
        ));
    }
    limits::check_depth(name, value.get())?;
    Ok(value)
}

/// A JSON string of base64 characters only: the shape of a pickle under `codec: pickle`
/// (poold never decodes it).
fn is_base64_string(value: &RawValue) -> bool {
    let text = value.get().as_bytes();
    text.len() >= 2
        && text[0] == b'"'
        && text[text.len() - 1] == b'"'
        && text[1..text.len() - 1]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
}

/// The start of a JSON text, for an error message (an item may be megabytes).
fn excerpt(text: &str) -> String {
    const MAX: usize = 80;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}
