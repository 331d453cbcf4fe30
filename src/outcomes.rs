//! A chunk's outcomes as one JSON text: the format poold stores and reads results in.
//!
//! A worker answers a task with a JSON array of outcomes, one per item in item order:
//! `{"value": …}` or `{"error": {"type", "message", "traceback"}}`, either with an optional
//! `"log"` — or, when every item succeeded and printed nothing, with just the values (the short
//! form `values`, written out here as `{"value": …}` entries). The supervisor (`pool`) checks that array once, without copying it
//! ([`ChunkOutcomes::from_worker`]), and the store keeps it as the chunk's `outcomes`, so
//! poold never parses and re-serializes what a worker sent only to store it. Values nested too
//! deep and logs over the limit are the exceptions: then the array is rebuilt with the value
//! replaced by an `invalid_result` error, the log cut (see `crate::limits` and
//! [`MAX_ITEM_LOG_BYTES`]). Readers (`api`) walk a stored array item by item with
//! [`each_outcome`], borrowing every value from the stored text.

use std::borrow::Cow;
use std::fmt::Write;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::protocol::{ItemOutcome, PooldError, WorkerResults};

/// The most log text kept per item; the rest is cut and [`LOG_TRUNCATED`] appended.
pub const MAX_ITEM_LOG_BYTES: usize = 64 * 1024;

/// Appended to an item log that was cut at [`MAX_ITEM_LOG_BYTES`].
pub const LOG_TRUNCATED: &str = "\n…[truncated]";

/// One stored or sent outcome, borrowed from its JSON text.
#[derive(Debug, Deserialize)]
pub struct OutcomeRef<'a> {
    #[serde(borrow, default)]
    value: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
    #[serde(borrow, default)]
    log: Option<Cow<'a, str>>,
}

/// An item error as it must look: an object with a `type` and a `message` (other fields, such
/// as `traceback`, are kept as the worker sent them).
#[derive(Deserialize)]
struct ErrorShape<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    message: Cow<'a, str>,
}

impl<'a> OutcomeRef<'a> {
    /// The item's value (JSON `null` when the worker sent none), unless it failed.
    pub fn value(&self) -> Option<&'a RawValue> {
        match self.error {
            Some(_) => None,
            None => Some(self.value.unwrap_or(NULL)),
        }
    }

    /// The item's error object, if it failed.
    pub fn error(&self) -> Option<&'a RawValue> {
        self.error
    }

    /// What the function printed, if anything.
    pub fn log(&self) -> Option<&str> {
        self.log.as_deref().filter(|log| !log.is_empty())
    }
}

const NULL: &RawValue = RawValue::NULL;

/// Call `each(i, outcome)` for every outcome of a stored (already checked) array.
pub fn each_outcome<'a>(
    outcomes: &'a str,
    mut each: impl FnMut(u64, OutcomeRef<'a>),
) -> Result<(), serde_json::Error> {
    let items: Vec<OutcomeRef<'a>> = serde_json::from_str(outcomes)?;
    for (i, outcome) in items.into_iter().enumerate() {
        each(i as u64, outcome);
    }
    Ok(())
}

/// A chunk's outcomes, checked and ready to store.
#[derive(Debug, Clone)]
pub struct ChunkOutcomes {
    /// The JSON array, one entry per item.
    pub json: String,
    /// Items.
    pub size: u64,
    /// Items whose outcome is an error.
    pub failed: u64,
    /// The first error: its position in the chunk and `type: message`, for `fail_fast`.
    pub first_error: Option<(u64, String)>,
    /// How many errors of each type poold names itself (for the metrics); other errors are
    /// counted in `failed` only.
    pub pooled: Vec<(PooldError, u64)>,
}

impl ChunkOutcomes {
    /// Check a worker's `results` array for a chunk of `size` items. Kept as sent unless a value
    /// nests too deep or a log is too long (then rebuilt). `Err` says why the array is not a
    /// valid answer (wrong length, an entry that is not an outcome): a protocol breach.
    pub fn from_worker(results: &WorkerResults, size: u64) -> Result<Self, String> {
        let results = match results {
            WorkerResults::Results(results) => results,
            WorkerResults::Values(values) => return Self::from_values(values, size),
        };
        let entries: Vec<OutcomeRef> = serde_json::from_str(results.get())
            .map_err(|e| format!("the results are not outcomes: {e}"))?;
        if entries.len() as u64 != size {
            return Err(format!(
                "{} results for a chunk of {size} items",
                entries.len()
            ));
        }
        let mut rebuild = false;
        for entry in &entries {
            if let Some(error) = entry.error {
                serde_json::from_str::<ErrorShape>(error.get())
                    .map_err(|e| format!("an error is not {{\"type\", \"message\", …}}: {e}"))?;
            } else if let Some(value) = entry.value
                && crate::limits::json_depth(value.get()) > crate::limits::MAX_DEPTH
            {
                rebuild = true;
            }
            if entry
                .log
                .as_ref()
                .is_some_and(|log| log.len() > MAX_ITEM_LOG_BYTES)
            {
                rebuild = true;
            }
        }
        if !rebuild {
            return Ok(Self::summarize(results.get().to_string(), &entries));
        }
        let owned: Vec<ItemOutcome> = entries.iter().map(to_owned_outcome).collect();
        Ok(Self::from_outcomes(&owned))
    }

    /// A worker's short form (`values`: every item succeeded and printed nothing), written
    /// as outcomes: each value is copied once, never parsed into a tree.
    fn from_values(values: &RawValue, size: u64) -> Result<Self, String> {
        let values: Vec<&RawValue> = serde_json::from_str(values.get())
            .map_err(|e| format!("the values are not a JSON array: {e}"))?;
        if values.len() as u64 != size {
            return Err(format!(
                "{} values for a chunk of {size} items",
                values.len()
            ));
        }
        let entries = values.iter().map(|&value| OutcomeRef {
            value: Some(value),
            error: None,
            log: None,
        });
        if values
            .iter()
            .any(|v| crate::limits::json_depth(v.get()) > crate::limits::MAX_DEPTH)
        {
            let owned: Vec<ItemOutcome> = entries.map(|e| to_owned_outcome(&e)).collect();
            return Ok(Self::from_outcomes(&owned));
        }
        let bytes: usize = values.iter().map(|v| v.get().len() + 11).sum();
        let mut json = String::with_capacity(bytes + 2);
        json.push('[');
        for (i, value) in values.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            json.push_str("{\"value\":");
            json.push_str(value.get());
            json.push('}');
        }
        json.push(']');
        Ok(Self {
            json,
            size,
            failed: 0,
            first_error: None,
            pooled: Vec::new(),
        })
    }

    /// The outcomes poold made itself (a failed item, errors of a whole chunk), or a checked
    /// rebuild of a worker's.
    pub fn from_outcomes(outcomes: &[ItemOutcome]) -> Self {
        let json = serde_json::to_string(outcomes).expect("outcomes serialize");
        let entries: Vec<OutcomeRef> =
            serde_json::from_str(&json).expect("serialized outcomes read back");
        let summary = Self::summarize(String::new(), &entries);
        Self { json, ..summary }
    }

    /// Every item of a chunk of `size` failed with `kind` and `message`.
    pub fn all_failed(size: u64, kind: PooldError, message: &str) -> Self {
        let outcome = ItemOutcome::failed(kind, message);
        Self::from_outcomes(&vec![outcome; size as usize])
    }

    /// The outcomes of a chunk's single-item pieces, in item order, as the chunk's.
    pub fn join(pieces: &[ChunkOutcomes]) -> Self {
        let mut json = String::from("[");
        for (i, piece) in pieces.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            let inner = piece.json.trim();
            json.push_str(inner[1..inner.len() - 1].trim());
        }
        json.push(']');
        let mut joined = Self {
            json,
            size: 0,
            failed: 0,
            first_error: None,
            pooled: Vec::new(),
        };
        for piece in pieces {
            if joined.first_error.is_none()
                && let Some((_, error)) = &piece.first_error
            {
                joined.first_error = Some((joined.size, error.clone()));
            }
            joined.size += piece.size;
            joined.failed += piece.failed;
            for &(kind, n) in &piece.pooled {
                joined.add_pooled(kind, n);
            }
        }
        joined
    }

    fn summarize(json: String, entries: &[OutcomeRef]) -> Self {
        let mut summary = Self {
            json,
            size: entries.len() as u64,
            failed: 0,
            first_error: None,
            pooled: Vec::new(),
        };
        for (i, entry) in entries.iter().enumerate() {
            let Some(error) = entry.error else { continue };
            summary.failed += 1;
            let Ok(shape) = serde_json::from_str::<ErrorShape>(error.get()) else {
                continue;
            };
            if summary.first_error.is_none() {
                summary.first_error =
                    Some((i as u64, format!("{}: {}", shape.kind, shape.message)));
            }
            if let Some(kind) = PooldError::ALL
                .into_iter()
                .find(|k| k.as_str() == shape.kind)
            {
                summary.add_pooled(kind, 1);
            }
        }
        summary
    }

    fn add_pooled(&mut self, kind: PooldError, n: u64) {
        match self.pooled.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, count)) => *count += n,
            None => self.pooled.push((kind, n)),
        }
    }
}

/// An owned outcome with the limits applied (value depth, log length).
fn to_owned_outcome(entry: &OutcomeRef) -> ItemOutcome {
    let mut outcome = match (entry.error, entry.value) {
        (Some(error), _) => ItemOutcome {
            value: None,
            error: serde_json::from_str(error.get()).ok(),
            log: None,
        },
        (None, value) => ItemOutcome {
            value: Some(value.unwrap_or(NULL).to_owned()),
            error: None,
            log: None,
        },
    };
    outcome.log = entry.log.as_ref().map(|log| bound_log(log));
    if let Some(value) = &outcome.value
        && let Err(why) = crate::limits::check_depth("the result", value.get())
    {
        let log = outcome.log.take();
        outcome = ItemOutcome::failed(PooldError::InvalidResult, why);
        outcome.log = log;
    }
    outcome
}

/// A log cut to [`MAX_ITEM_LOG_BYTES`] (on a character boundary), the cut marked.
pub fn bound_log(log: &str) -> String {
    if log.len() <= MAX_ITEM_LOG_BYTES {
        return log.to_string();
    }
    let mut end = MAX_ITEM_LOG_BYTES;
    while !log.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{LOG_TRUNCATED}", &log[..end])
}

/// Write one result as the API shows it: `{"index":i,"value":…}` or `{"index":i,"error":…}`,
/// with `"log"` when the function printed something.
pub fn write_result(out: &mut String, index: u64, outcome: &OutcomeRef) {
    let _ = write!(out, "{{\"index\":{index},");
    match outcome.error() {
        Some(error) => {
            out.push_str("\"error\":");
            out.push_str(error.get());
        }
        None => {
            out.push_str("\"value\":");
            out.push_str(outcome.value().unwrap_or(NULL).get());
        }
    }
    if let Some(log) = outcome.log() {
        out.push_str(",\"log\":");
        out.push_str(&serde_json::to_string(log).expect("a string serializes"));
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> WorkerResults {
        WorkerResults::Results(RawValue::from_string(text.to_string()).unwrap())
    }

    fn values(text: &str) -> WorkerResults {
        WorkerResults::Values(RawValue::from_string(text.to_string()).unwrap())
    }

    #[test]
    fn the_short_form_is_written_as_outcomes() {
        let outcomes = ChunkOutcomes::from_worker(&values(r#"[1, {"a": [2]}, null]"#), 3).unwrap();
        assert_eq!(
            outcomes.json,
            r#"[{"value":1},{"value":{"a": [2]}},{"value":null}]"#
        );
        assert_eq!((outcomes.size, outcomes.failed), (3, 0));
        assert!(ChunkOutcomes::from_worker(&values("[1]"), 2).is_err());
        assert!(ChunkOutcomes::from_worker(&values(r#"{"value": 1}"#), 1).is_err());
        let deep = format!("[2, {}{}]", "[".repeat(200), "]".repeat(200));
        let outcomes = ChunkOutcomes::from_worker(&values(&deep), 2).unwrap();
        assert_eq!((outcomes.size, outcomes.failed), (2, 1));
        assert_eq!(outcomes.pooled, [(PooldError::InvalidResult, 1)]);
    }

    #[test]
    fn a_clean_array_is_kept_as_sent() {
        let sent = r#"[{"value": [1, 2]}, {"error": {"type": "ValueError", "message": "m", "traceback": "t", "extra": 1}}, {"value": null, "log": "hi"}]"#;
        let outcomes = ChunkOutcomes::from_worker(&raw(sent), 3).unwrap();
        assert_eq!(outcomes.json, sent);
        assert_eq!((outcomes.size, outcomes.failed), (3, 1));
        assert_eq!(outcomes.first_error, Some((1, "ValueError: m".to_string())));
        let mut lines = Vec::new();
        each_outcome(&outcomes.json, |i, o| {
            let mut line = String::new();
            write_result(&mut line, 10 + i, &o);
            lines.push(line);
        })
        .unwrap();
        assert_eq!(
            lines,
            [
                r#"{"index":10,"value":[1, 2]}"#,
                r#"{"index":11,"error":{"type": "ValueError", "message": "m", "traceback": "t", "extra": 1}}"#,
                r#"{"index":12,"value":null,"log":"hi"}"#,
            ]
        );
    }

    #[test]
    fn wrong_shapes_are_refused() {
        assert!(ChunkOutcomes::from_worker(&raw(r#"[{"value": 1}]"#), 2).is_err());
        assert!(ChunkOutcomes::from_worker(&raw(r#"[{"error": "boom"}]"#), 1).is_err());
        assert!(ChunkOutcomes::from_worker(&raw(r#"[{"error": {"type": "E"}}]"#), 1).is_err());
        assert!(ChunkOutcomes::from_worker(&raw(r#"{"value": 1}"#), 1).is_err());
    }

    #[test]
    fn deep_values_and_long_logs_are_rebuilt() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let long = "é".repeat(MAX_ITEM_LOG_BYTES);
        let sent = format!(r#"[{{"value": {deep}, "log": "x"}}, {{"value": 2, "log": "{long}"}}]"#);
        let outcomes = ChunkOutcomes::from_worker(&raw(&sent), 2).unwrap();
        assert_eq!((outcomes.size, outcomes.failed), (2, 1));
        assert_eq!(outcomes.pooled, [(PooldError::InvalidResult, 1)]);
        let mut seen = Vec::new();
        each_outcome(&outcomes.json, |_, o| {
            seen.push((o.error().is_some(), o.log().map(str::len)))
        })
        .unwrap();
        assert_eq!(seen[0], (true, Some(1)));
        let cut = MAX_ITEM_LOG_BYTES / 2 * 2 + LOG_TRUNCATED.len();
        assert_eq!(seen[1], (false, Some(cut)));
    }

    #[test]
    fn pieces_join_into_their_chunk() {
        let a = ChunkOutcomes::from_worker(&raw(r#"[ {"value":1} ]"#), 1).unwrap();
        let b = ChunkOutcomes::all_failed(1, PooldError::Timeout, "slow");
        let c = ChunkOutcomes::from_worker(&raw(r#"[{"value":3}]"#), 1).unwrap();
        let joined = ChunkOutcomes::join(&[a, b, c]);
        assert_eq!((joined.size, joined.failed), (3, 1));
        assert_eq!(joined.first_error.as_ref().map(|e| e.0), Some(1));
        assert_eq!(joined.pooled, [(PooldError::Timeout, 1)]);
        let values: Vec<serde_json::Value> = serde_json::from_str(&joined.json).unwrap();
        assert_eq!(values[0]["value"], 1);
        assert_eq!(values[1]["error"]["type"], "timeout");
        assert_eq!(values[2]["value"], 3);
    }
}
