//! What poold accepts: the bounds on a job's fields and on the JSON values it stores, in one
//! place. The API checks requests against them at the door (400 naming the field), the
//! supervisor checks workers' results against them before they reach the store, and the
//! supervisor checks stored jobs against them again when it resumes them (a job stored by an
//! older version that no longer fits is failed with the reason, never run).
//!
//! Why these numbers: every JSON value poold stores must be readable by every client and by the
//! store itself. serde_json (the built-in worker, Rust clients) stops at 128 levels of nesting,
//! SQLite's JSON functions at 1000, Python's `json` near its recursion limit; a value sits a few
//! levels deep inside a message, so [`MAX_DEPTH`] leaves room for the envelope.

use std::time::Duration;

/// Deepest nesting of arrays and objects in an item, kwargs, metadata or a result value.
pub const MAX_DEPTH: usize = 100;

/// Longest per-item time limit (`timeout_s`, `--task-timeout`): seven days.
pub const MAX_TIMEOUT_S: f64 = 7.0 * 24.0 * 3600.0;

/// Largest `chunksize` a job may name.
pub const MAX_CHUNKSIZE: u32 = 1_000_000;

/// Most runs of a chunk whose worker dies (`max_attempts`).
pub const MAX_ATTEMPTS: u32 = 100;

/// Largest `max_concurrency` a job may name.
pub const MAX_CONCURRENCY: u32 = 1_000_000;

/// A chunk holds at most `chunksize` items and at most this many bytes of item JSON (a
/// chunk's first item is always taken, however big): a task line to a worker stays small, so
/// memory stays bounded whatever the chunksize, and its result line stays far below the
/// worker protocol's line limit.
pub const MAX_CHUNK_BYTES: usize = 256 * 1024;

/// Largest `kwargs` (JSON text): they travel with every chunk's task.
pub const MAX_KWARGS_BYTES: usize = 1 << 20;

/// Largest `metadata` (JSON text).
pub const MAX_METADATA_BYTES: usize = 64 * 1024;

/// Longest function name, in characters.
pub const MAX_FUNCTION_NAME: usize = 255;

/// The deepest nesting of arrays and objects in a JSON text that is already known to be valid
/// (a scalar is 0, `[1]` is 1). A linear scan: no recursion, so no input can overflow a stack.
pub fn json_depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'"' => {
                // Skip the string, escapes included.
                while let Some(b) = bytes.next() {
                    match b {
                        b'\\' => {
                            bytes.next();
                        }
                        b'"' => break,
                        _ => {}
                    }
                }
            }
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// `Err` naming what is wrong when a JSON value nests deeper than [`MAX_DEPTH`].
pub fn check_depth(what: &str, json: &str) -> Result<(), String> {
    let depth = json_depth(json);
    if depth > MAX_DEPTH {
        return Err(format!(
            "{what} is nested {depth} levels deep; the most is {MAX_DEPTH}"
        ));
    }
    Ok(())
}

/// `Err` naming the problem when `timeout_s` is not a number of seconds poold can keep.
pub fn check_timeout(seconds: f64) -> Result<(), String> {
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= MAX_TIMEOUT_S) {
        return Err(format!(
            "timeout_s must be a number of seconds above 0 and at most {MAX_TIMEOUT_S} (7 days), got {seconds}"
        ));
    }
    Ok(())
}

/// `Err` naming the problem when a stored job's spec is outside these limits (a job stored by
/// an older version, or by hand): the supervisor fails such a job instead of running it.
pub fn check_stored(spec: &crate::model::JobSpec) -> Result<(), String> {
    if let Some(t) = spec.timeout_s {
        check_timeout(t)?;
    }
    if !(1..=MAX_CHUNKSIZE).contains(&spec.chunksize) {
        return Err(format!("chunksize {} is out of range", spec.chunksize));
    }
    if !(1..=MAX_ATTEMPTS).contains(&spec.max_attempts) {
        return Err(format!(
            "max_attempts {} is out of range",
            spec.max_attempts
        ));
    }
    Ok(())
}

/// How long a chunk of `items` items may run: `timeout_s` for each of them. Saturates instead
/// of overflowing, so no stored value can make it panic.
pub fn chunk_budget(timeout_s: Option<f64>, items: u64) -> Option<Duration> {
    let seconds = timeout_s? * items as f64;
    Some(Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn depth_counts_brackets_outside_strings() {
        assert_eq!(json_depth("1"), 0);
        assert_eq!(json_depth("\"[[[\""), 0);
        assert_eq!(json_depth("[1, [2, {\"a\": [3]}]]"), 4);
        assert_eq!(json_depth(r#"["\"[", {"k\\": "]]"}]"#), 2);
        let deep = "[".repeat(5000) + &"]".repeat(5000);
        assert_eq!(json_depth(&deep), 5000);
        assert!(check_depth("item 3", &deep).unwrap_err().contains("item 3"));
    }

    #[test]
    fn timeouts_are_bounded_and_budgets_never_overflow() {
        assert!(check_timeout(1e300).is_err());
        assert!(check_timeout(f64::NAN).is_err());
        assert!(check_timeout(0.0).is_err());
        assert!(check_timeout(-0.0).is_err());
        assert!(check_timeout(MAX_TIMEOUT_S).is_ok());
        assert_eq!(chunk_budget(Some(1e300), 1_000_000), Some(Duration::MAX));
        assert_eq!(chunk_budget(Some(0.5), 4), Some(Duration::from_secs(2)));
        assert_eq!(chunk_budget(None, 4), None);
    }

    proptest! {
        #[test]
        fn depth_matches_serde(value in arb_json()) {
            let text = value.to_string();
            prop_assert_eq!(json_depth(&text), depth_of(&value));
        }
    }

    fn depth_of(value: &serde_json::Value) -> usize {
        match value {
            serde_json::Value::Array(items) => 1 + items.iter().map(depth_of).max().unwrap_or(0),
            serde_json::Value::Object(map) => 1 + map.values().map(depth_of).max().unwrap_or(0),
            _ => 0,
        }
    }

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<i64>().prop_map(serde_json::Value::from),
            ".*".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(8, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                prop::collection::btree_map(".*", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
