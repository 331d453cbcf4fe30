//! `poold worker`: the built-in worker process.
//!
//! Spawned by the supervisor (`pool`), one process per pool slot. It speaks the JSON-lines
//! protocol of [`crate::protocol`] on stdin/stdout, runs each task's items one after another
//! with the functions of [`builtins`], and exits when its stdin closes. It is plain blocking
//! code on purpose: a worker runs one item at a time and needs no runtime. It accepts the
//! `json` codec only (pickles are Python's).

mod builtins;

use std::io::{self, BufRead, BufWriter, Write};

use serde_json::Value;
use serde_json::value::RawValue;

use crate::protocol::{ItemError, ItemOutcome, JSON_CODEC, PROTOCOL_VERSION, Task, WorkerMessage};

/// Serve tasks until stdin closes. Returns an error only when stdout is gone.
pub fn run() -> anyhow::Result<()> {
    let stdin = io::stdin().lock();
    let mut out = BufWriter::new(io::stdout().lock());
    let hello = WorkerMessage::Hello {
        protocol: PROTOCOL_VERSION,
        pid: std::process::id(),
        functions: builtins::functions(),
        codecs: vec![JSON_CODEC.to_string()],
    };
    write_line(&mut out, &hello)?;

    for line in stdin.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let task = match serde_json::from_str::<Task>(&line) {
            Ok(task) if task.kind == "task" => task,
            Ok(other) => {
                eprintln!("poold worker: skipping a message of type {:?}", other.kind);
                continue;
            }
            Err(e) => {
                eprintln!("poold worker: skipping a line that is not a task: {e}");
                continue;
            }
        };
        let results = run_task(&task);
        write_result(&mut out, task.id, &results)?;
    }
    Ok(())
}

/// A `result` message, written straight from the outcomes.
fn write_result(out: &mut impl Write, id: u64, results: &[ItemOutcome]) -> io::Result<()> {
    write!(out, "{{\"type\":\"result\",\"id\":{id},\"results\":")?;
    serde_json::to_writer(&mut *out, results)?;
    out.write_all(b"}\n")?;
    out.flush()
}

fn write_line(out: &mut impl Write, message: &WorkerMessage) -> io::Result<()> {
    serde_json::to_writer(&mut *out, message)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Run each item of a task. Items and kwargs are parsed here, one by one, so that one this
/// worker cannot read fails alone, as an item error.
fn run_task(task: &Task) -> Vec<ItemOutcome> {
    // poold never sends a codec this worker did not advertise; refuse one all the same.
    let codec = task.codec.as_deref().unwrap_or(JSON_CODEC);
    let kwargs = match task
        .kwargs
        .as_deref()
        .map(|k| serde_json::from_str(k.get()))
    {
        _ if codec != JSON_CODEC => Err(ItemError::new(
            "TypeError",
            format!("the built-in worker accepts the json codec only, not {codec:?}"),
        )),
        None => Ok(serde_json::Map::new()),
        Some(Ok(kwargs)) => Ok(kwargs),
        Some(Err(e)) => Err(ItemError::new(
            "ValueError",
            format!("the job's kwargs cannot be read: {e}"),
        )),
    };
    task.items
        .iter()
        .map(|item| {
            let kwargs = kwargs.as_ref().map_err(Clone::clone)?;
            let item: Value = serde_json::from_str(item.get()).map_err(|e| {
                ItemError::new("ValueError", format!("the item cannot be read: {e}"))
            })?;
            let args = match (task.star, item) {
                (true, Value::Array(args)) => args,
                (true, other) => {
                    return Err(ItemError::new(
                        "TypeError",
                        format!(
                            "star=true needs each item to be an array of arguments, got {other}"
                        ),
                    ));
                }
                (false, item) => vec![item],
            };
            builtins::call(&task.function, args, kwargs)
        })
        .map(|outcome| match outcome {
            Ok(value) => ItemOutcome {
                value: Some(RawValue::from_string(value.to_string()).expect("valid JSON")),
                error: None,
                log: None,
            },
            Err(error) => ItemOutcome {
                value: None,
                error: Some(error),
                log: None,
            },
        })
        .collect()
}
