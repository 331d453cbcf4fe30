//! The worker protocol, shared by the supervisor (`pool`) and the built-in worker (`worker`).
//!
//! JSON lines on the worker's stdin/stdout, one message per line. The worker speaks first with
//! a `hello`; poold then sends `task`s and the worker answers each with one `result`, in the
//! order the tasks were sent. Several tasks may be in flight (pipelining). Stdout belongs to the
//! protocol; anything a worker wants to log goes to stderr. The full description for people
//! writing workers in other languages is in `docs/worker-protocol.md`.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The major protocol version this build speaks. A worker that says another is refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest line either side accepts (a task carries a whole chunk of items).
pub const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;

/// A function a worker offers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FunctionInfo {
    pub name: String,
    #[serde(default)]
    pub doc: String,
}

/// Messages from the worker to poold. Parse with [`WorkerMessage::parse`]: serde's internally
/// tagged enums cannot carry raw JSON values, so the `type` field is read first.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerMessage {
    Hello {
        protocol: u32,
        pid: u32,
        functions: Vec<FunctionInfo>,
    },
    /// The outcome of one task: exactly one entry per item, in item order.
    Result { id: u64, results: Vec<ItemOutcome> },
}

#[derive(Deserialize)]
struct Tag<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
}

#[derive(Deserialize)]
struct HelloFields {
    protocol: u32,
    pid: u32,
    functions: Vec<FunctionInfo>,
}

#[derive(Deserialize)]
struct ResultFields {
    id: u64,
    results: Vec<ItemOutcome>,
}

impl WorkerMessage {
    pub fn parse(line: &str) -> Result<Self, serde_json::Error> {
        let tag: Tag = serde_json::from_str(line)?;
        match &*tag.kind {
            "hello" => {
                let HelloFields {
                    protocol,
                    pid,
                    functions,
                } = serde_json::from_str(line)?;
                Ok(Self::Hello {
                    protocol,
                    pid,
                    functions,
                })
            }
            "result" => {
                let ResultFields { id, results } = serde_json::from_str(line)?;
                Ok(Self::Result { id, results })
            }
            other => Err(serde::de::Error::custom(format!(
                "unknown message type {other:?}"
            ))),
        }
    }
}

/// A task from poold to the worker: run `function` over `items`. Serialized with
/// `"type": "task"`; the worker side reads it as a plain struct (see [`Task`]).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PooldMessage<'a> {
    Task {
        id: u64,
        function: &'a str,
        kwargs: &'a RawValue,
        star: bool,
        items: &'a RawValue,
    },
}

/// A `task` message as a worker reads it.
#[derive(Debug, Deserialize)]
pub struct Task {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: u64,
    pub function: String,
    #[serde(default)]
    pub kwargs: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub star: bool,
    pub items: Vec<serde_json::Value>,
}

/// The most log text kept per item; the rest is cut and [`LOG_TRUNCATED`] appended.
pub const MAX_ITEM_LOG_BYTES: usize = 64 * 1024;

/// Appended to an item log that was cut at [`MAX_ITEM_LOG_BYTES`].
pub const LOG_TRUNCATED: &str = "\n…[truncated]";

/// One item's outcome: `{"value": …}` or `{"error": {"type","message","traceback"}}`, with
/// an optional `"log"`: what the function printed while it ran (an extension of version 1
/// that older workers simply never send).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ItemOutcome {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ItemError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
}

/// An item error, shaped like a Python exception.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ItemError {
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    #[serde(default)]
    pub traceback: Option<String>,
}

impl ItemOutcome {
    pub fn error(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            value: None,
            error: Some(ItemError::new(kind, message)),
            log: None,
        }
    }

    /// Drop an empty log and cut a long one to [`MAX_ITEM_LOG_BYTES`] (on a character
    /// boundary), marking the cut: a chatty function must not bloat the database.
    pub fn bound_log(&mut self) {
        match &mut self.log {
            Some(log) if log.is_empty() => self.log = None,
            Some(log) if log.len() > MAX_ITEM_LOG_BYTES => {
                let mut end = MAX_ITEM_LOG_BYTES;
                while !log.is_char_boundary(end) {
                    end -= 1;
                }
                log.truncate(end);
                log.push_str(LOG_TRUNCATED);
            }
            _ => {}
        }
    }
}

impl ItemError {
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            message: message.into(),
            traceback: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_with_raw_values_round_trips() {
        let line = r#"{"type":"result","id":7,"results":[{"value":{"a":[1,2]}},{"error":{"type":"ValueError","message":"m","traceback":null}},{"value":null}]}"#;
        let WorkerMessage::Result { id, results } = WorkerMessage::parse(line).unwrap() else {
            panic!("not a result")
        };
        assert_eq!(id, 7);
        assert_eq!(results[0].value.as_ref().unwrap().get(), r#"{"a":[1,2]}"#);
        assert_eq!(results[1].error.as_ref().unwrap().kind, "ValueError");
        assert!(results[2].value.is_none() && results[2].error.is_none());
        assert!(WorkerMessage::parse(r#"{"type":"nope"}"#).is_err());
    }

    #[test]
    fn item_logs_are_optional_and_bounded() {
        let line = r#"{"type":"result","id":1,"results":[{"value":1,"log":"hi\n"},{"value":2,"log":""},{"value":3}]}"#;
        let WorkerMessage::Result { mut results, .. } = WorkerMessage::parse(line).unwrap() else {
            panic!("not a result")
        };
        results.iter_mut().for_each(ItemOutcome::bound_log);
        let logs: Vec<_> = results.iter().map(|r| r.log.as_deref()).collect();
        assert_eq!(logs, [Some("hi\n"), None, None]);

        // A multi-byte character straddling the limit is not split.
        let mut long = ItemOutcome::error("E", "m");
        long.log = Some(format!(
            "{}é{}",
            "a".repeat(MAX_ITEM_LOG_BYTES - 1),
            "b".repeat(10)
        ));
        long.bound_log();
        let log = long.log.unwrap();
        assert_eq!(
            log,
            format!("{}{LOG_TRUNCATED}", "a".repeat(MAX_ITEM_LOG_BYTES - 1))
        );
    }

    #[test]
    fn task_serializes_for_workers() {
        let kwargs = RawValue::from_string("{\"exp\":3}".into()).unwrap();
        let items = RawValue::from_string("[1,2]".into()).unwrap();
        let line = serde_json::to_string(&PooldMessage::Task {
            id: 1,
            function: "pow",
            kwargs: &kwargs,
            star: false,
            items: &items,
        })
        .unwrap();
        let task: Task = serde_json::from_str(&line).unwrap();
        assert_eq!(
            (task.kind.as_str(), task.function.as_str(), task.items.len()),
            ("task", "pow", 2)
        );
        assert_eq!(task.kwargs["exp"], 3);
    }
}
