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

/// A function a worker offers. `name` may be qualified (`module:qualname`, e.g. `time:sleep`);
/// `aliases` are other names the worker also accepts for it (e.g. the bare `square` of
/// `mymodule:square`), an extension of version 1 that older workers never send.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FunctionInfo {
    pub name: String,
    #[serde(default)]
    pub doc: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

impl FunctionInfo {
    /// Whether a job naming `function` means this one.
    pub fn answers_to(&self, function: &str) -> bool {
        self.name == function || self.aliases.iter().any(|a| a == function)
    }
}

/// The codec every worker accepts, and the one a `hello` without `codecs` means.
pub const JSON_CODEC: &str = "json";

/// Messages from the worker to poold. Parse with [`WorkerMessage::parse`]: serde's internally
/// tagged enums cannot carry raw JSON values, so the `type` field is read first.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerMessage {
    Hello {
        protocol: u32,
        pid: u32,
        functions: Vec<FunctionInfo>,
        /// The codecs of item values it accepts (`json`, `pickle`); a hello without them
        /// means `["json"]`.
        codecs: Vec<String>,
    },
    /// The outcome of one task, one entry per item in item order, kept as the JSON array the
    /// worker sent (checked by `crate::outcomes::ChunkOutcomes::from_worker`).
    Result { id: u64, results: WorkerResults },
}

/// A `result` message's entries: `results` (an outcome object per item) or, when every item
/// succeeded and printed nothing, the short form `values` (just the values).
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerResults {
    Results(Box<RawValue>),
    Values(Box<RawValue>),
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
    #[serde(default = "json_only")]
    codecs: Vec<String>,
}

fn json_only() -> Vec<String> {
    vec![JSON_CODEC.to_string()]
}

#[derive(Deserialize)]
struct ResultFields {
    id: u64,
    results: Option<Box<RawValue>>,
    values: Option<Box<RawValue>>,
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
                    codecs,
                } = serde_json::from_str(line)?;
                Ok(Self::Hello {
                    protocol,
                    pid,
                    functions,
                    codecs,
                })
            }
            "result" => {
                let fields: ResultFields = serde_json::from_str(line)?;
                let results = match (fields.results, fields.values) {
                    (Some(results), None) => WorkerResults::Results(results),
                    (None, Some(values)) => WorkerResults::Values(values),
                    _ => {
                        return Err(serde::de::Error::custom(
                            "a result has either `results` or `values`",
                        ));
                    }
                };
                Ok(Self::Result {
                    id: fields.id,
                    results,
                })
            }
            other => Err(serde::de::Error::custom(format!(
                "unknown message type {other:?}"
            ))),
        }
    }
}

/// What the worker's stdout yields, line by line: a message, or a line that is not one (to log
/// and skip). Never fails on content — invalid JSON, non-UTF-8 and over-long lines are all
/// [`Decoded::Garbage`] — so one bad line cannot take the stream down.
#[derive(Debug)]
pub enum Decoded {
    Message(WorkerMessage),
    Garbage {
        error: String,
        /// The start of the line, lossily decoded, for the log.
        excerpt: String,
    },
    /// A line longer than the limit, dropped up to its newline. Unlike other garbage it is most
    /// likely a result too big to take, so the supervisor does not just skip it.
    Overlong {
        /// The start of the line, lossily decoded, for the log.
        excerpt: String,
    },
}

/// Splits a worker's stdout into lines of at most `max_line` bytes and parses each one.
/// Used by `pool::process` with `FramedRead`.
#[derive(Debug)]
pub struct MessageCodec {
    max_line: usize,
    /// How far the buffer was already searched for a newline.
    scanned: usize,
    /// Dropping the rest of an over-long line, up to its newline.
    discarding: bool,
}

impl MessageCodec {
    pub fn new(max_line: usize) -> Self {
        Self {
            max_line,
            scanned: 0,
            discarding: false,
        }
    }

    fn decode_line(line: &[u8]) -> Decoded {
        let excerpt = || String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned();
        match std::str::from_utf8(line) {
            Ok(text) => match WorkerMessage::parse(text.trim_end_matches('\r')) {
                Ok(message) => Decoded::Message(message),
                Err(e) => Decoded::Garbage {
                    error: e.to_string(),
                    excerpt: excerpt(),
                },
            },
            Err(e) => Decoded::Garbage {
                error: format!("not UTF-8: {e}"),
                excerpt: excerpt(),
            },
        }
    }
}

impl tokio_util::codec::Decoder for MessageCodec {
    type Item = Decoded;
    type Error = std::io::Error;

    fn decode(
        &mut self,
        buf: &mut tokio_util::bytes::BytesMut,
    ) -> Result<Option<Decoded>, std::io::Error> {
        loop {
            let newline = buf[self.scanned..].iter().position(|&b| b == b'\n');
            match (newline, self.discarding) {
                (Some(at), true) => {
                    let _ = buf.split_to(self.scanned + at + 1);
                    self.scanned = 0;
                    self.discarding = false;
                }
                (Some(at), false) => {
                    let line = buf.split_to(self.scanned + at + 1);
                    self.scanned = 0;
                    return Ok(Some(Self::decode_line(&line[..line.len() - 1])));
                }
                (None, true) => {
                    buf.clear();
                    self.scanned = 0;
                    return Ok(None);
                }
                (None, false) if buf.len() > self.max_line => {
                    let excerpt = String::from_utf8_lossy(&buf[..buf.len().min(200)]).into_owned();
                    buf.clear();
                    self.scanned = 0;
                    self.discarding = true;
                    return Ok(Some(Decoded::Overlong { excerpt }));
                }
                (None, false) => {
                    self.scanned = buf.len();
                    return Ok(None);
                }
            }
        }
    }

    fn decode_eof(
        &mut self,
        buf: &mut tokio_util::bytes::BytesMut,
    ) -> Result<Option<Decoded>, std::io::Error> {
        match self.decode(buf)? {
            Some(decoded) => Ok(Some(decoded)),
            None if buf.is_empty() || self.discarding => {
                buf.clear();
                Ok(None)
            }
            None => {
                // A last line without its newline.
                let line = buf.split();
                self.scanned = 0;
                Ok(Some(Self::decode_line(&line)))
            }
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
        /// Sent only when it is not `json`, so that workers written before codecs existed
        /// see the tasks they always saw.
        #[serde(skip_serializing_if = "Option::is_none")]
        codec: Option<&'a str>,
    },
}

/// A `task` message as a worker reads it. Its kwargs and items stay raw JSON text here, so a
/// value this worker cannot take (nested too deep for its parser) fails that item, not the
/// whole task: every task gets its result.
#[derive(Debug, Deserialize)]
pub struct Task {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: u64,
    pub function: String,
    #[serde(default)]
    pub kwargs: Option<Box<RawValue>>,
    #[serde(default)]
    pub star: bool,
    pub items: Vec<Box<RawValue>>,
    /// Absent means `json`.
    #[serde(default)]
    pub codec: Option<String>,
}

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

/// The item errors poold itself reports, as the error's `type` (an error raised by a function
/// carries its own exception type instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PooldError {
    /// The item ran past its `timeout_s`; its worker was stopped.
    Timeout,
    /// The worker process died while running the item's chunk, on every attempt.
    WorkerExited,
    /// Like `WorkerExited`, with an allocation failure over `--worker-memory-mb`.
    OutOfMemory,
    /// The worker answered out of protocol while running the item's chunk, on every attempt.
    ProtocolError,
    /// The item's result line was longer than the protocol allows.
    ResultTooLarge,
    /// The item's result cannot be stored as it is (nested too deep).
    InvalidResult,
    /// The database refused the item's result.
    UnstorableResult,
}

impl PooldError {
    pub const ALL: [PooldError; 7] = [
        Self::Timeout,
        Self::WorkerExited,
        Self::OutOfMemory,
        Self::ProtocolError,
        Self::ResultTooLarge,
        Self::InvalidResult,
        Self::UnstorableResult,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::WorkerExited => "worker_exited",
            Self::OutOfMemory => "out_of_memory",
            Self::ProtocolError => "protocol_error",
            Self::ResultTooLarge => "result_too_large",
            Self::InvalidResult => "invalid_result",
            Self::UnstorableResult => "unstorable_result",
        }
    }
}

/// An item error, shaped like a Python exception.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ItemError {
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    #[serde(default)]
    pub traceback: Option<String>,
    /// In `pickle` jobs, the exception itself as a base64 pickle, so that a Python client can
    /// raise it with its own type. Opaque to poold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pickle: Option<String>,
}

impl ItemOutcome {
    /// An error poold reports for the item itself.
    pub fn failed(kind: PooldError, message: impl Into<String>) -> Self {
        Self {
            value: None,
            error: Some(ItemError::new(kind.as_str(), message)),
            log: None,
        }
    }
}

impl ItemError {
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            message: message.into(),
            traceback: None,
            pickle: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio_util::bytes::BytesMut;
    use tokio_util::codec::Decoder;

    const HELLO: &str = r#"{"type":"hello","protocol":1,"pid":7,"functions":[]}"#;

    /// Feed `input` to a codec in the given piece sizes, then end the stream.
    fn decode_all(input: &[u8], pieces: &[usize], max_line: usize) -> Vec<Decoded> {
        let mut codec = MessageCodec::new(max_line);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut rest = input;
        for &n in pieces.iter().chain(std::iter::repeat(&usize::MAX)) {
            if rest.is_empty() {
                break;
            }
            let (piece, tail) = rest.split_at(n.clamp(1, rest.len()));
            rest = tail;
            buf.extend_from_slice(piece);
            while let Some(d) = codec.decode(&mut buf).unwrap() {
                out.push(d);
            }
        }
        while let Some(d) = codec.decode_eof(&mut buf).unwrap() {
            out.push(d);
        }
        out
    }

    fn messages(decoded: &[Decoded]) -> usize {
        decoded
            .iter()
            .filter(|d| matches!(d, Decoded::Message(_)))
            .count()
    }

    proptest! {
        /// Garbage of any kind, cut anywhere, never panics and never fails the stream.
        #[test]
        fn decoder_survives_any_bytes(
            input in proptest::collection::vec(any::<u8>(), 0..4096),
            pieces in proptest::collection::vec(1usize..300, 0..40),
            max_line in 1usize..512,
        ) {
            decode_all(&input, &pieces, max_line);
        }

        /// Valid messages around garbage lines (non-UTF-8, bad JSON, over-long, partial
        /// writes) all come through, in order.
        #[test]
        fn messages_survive_garbage_between_them(
            garbage in proptest::collection::vec(
                proptest::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 0..600),
                1..8),
            pieces in proptest::collection::vec(1usize..97, 0..60),
        ) {
            let mut input = Vec::new();
            for g in &garbage {
                input.extend_from_slice(HELLO.as_bytes());
                input.push(b'\n');
                input.extend_from_slice(g);
                input.push(b'\n');
            }
            input.extend_from_slice(HELLO.as_bytes()); // the last line has no newline
            let decoded = decode_all(&input, &pieces, 256);
            prop_assert!(messages(&decoded) > garbage.len());
        }
    }

    #[test]
    fn long_lines_are_dropped_and_the_stream_goes_on() {
        let mut input = vec![b'x'; 10_000];
        input.push(b'\n');
        input.extend_from_slice(&[0xff, 0xfe, b'\n']);
        input.extend_from_slice(HELLO.as_bytes());
        input.push(b'\n');
        let decoded = decode_all(&input, &[1000], 512);
        assert!(matches!(&decoded[0], Decoded::Overlong { excerpt } if excerpt.starts_with("xxx")));
        assert!(matches!(&decoded[1], Decoded::Garbage { error, .. } if error.contains("UTF-8")));
        assert!(matches!(
            &decoded[2],
            Decoded::Message(WorkerMessage::Hello { pid: 7, .. })
        ));
        assert_eq!(decoded.len(), 3);
    }

    #[test]
    fn result_with_raw_values_round_trips() {
        let line = r#"{"type":"result","id":7,"results":[{"value":{"a":[1,2]}},{"error":{"type":"ValueError","message":"m","traceback":null}},{"value":null}]}"#;
        let WorkerMessage::Result { id, results } = WorkerMessage::parse(line).unwrap() else {
            panic!("not a result")
        };
        assert_eq!(id, 7);
        let WorkerResults::Results(results) = results else {
            panic!("not the long form")
        };
        assert!(results.get().starts_with(r#"[{"value":{"a":[1,2]}}"#));
        assert!(WorkerMessage::parse(r#"{"type":"nope"}"#).is_err());
        let short = r#"{"type":"result","id":8,"values":[1,{"b":2}]}"#;
        let Ok(WorkerMessage::Result {
            id: 8,
            results: WorkerResults::Values(values),
        }) = WorkerMessage::parse(short)
        else {
            panic!("not the short form")
        };
        assert_eq!(values.get(), r#"[1,{"b":2}]"#);
        let both = r#"{"type":"result","id":9,"values":[1],"results":[{"value":1}]}"#;
        assert!(WorkerMessage::parse(both).is_err());
        assert!(WorkerMessage::parse(r#"{"type":"result","id":9}"#).is_err());
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
            codec: None,
        })
        .unwrap();
        assert!(
            !line.contains("codec"),
            "json tasks look as they always did: {line}"
        );
        let task: Task = serde_json::from_str(&line).unwrap();
        assert_eq!(
            (task.kind.as_str(), task.function.as_str(), task.items.len()),
            ("task", "pow", 2)
        );
        assert_eq!(task.kwargs.unwrap().get(), r#"{"exp":3}"#);
    }

    #[test]
    fn hello_codecs_default_to_json_and_aliases_are_optional() {
        let WorkerMessage::Hello {
            codecs, functions, ..
        } = WorkerMessage::parse(HELLO).unwrap()
        else {
            panic!("not a hello")
        };
        assert_eq!(codecs, [JSON_CODEC]);
        assert!(functions.is_empty());

        let line = r#"{"type":"hello","protocol":1,"pid":7,"codecs":["json","pickle"],
            "functions":[{"name":"m:square","doc":"","aliases":["square"]},{"name":"time:sleep"}]}"#;
        let WorkerMessage::Hello {
            codecs, functions, ..
        } = WorkerMessage::parse(line).unwrap()
        else {
            panic!("not a hello")
        };
        assert_eq!(codecs, ["json", "pickle"]);
        assert!(functions[0].answers_to("square") && functions[0].answers_to("m:square"));
        assert!(functions[1].answers_to("time:sleep") && !functions[1].answers_to("sleep"));
    }
}
