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
        write_line(
            &mut out,
            &WorkerMessage::Result {
                id: task.id,
                results,
            },
        )?;
    }
    Ok(())
}

fn write_line(out: &mut impl Write, message: &WorkerMessage) -> io::Result<()> {
    serde_json::to_writer(&mut *out, message)?;
    out.write_all(b"\n")?;
    out.flush()
}

fn run_task(task: &Task) -> Vec<ItemOutcome> {
    // poold never sends a codec this worker did not advertise; refuse one all the same.
    let codec = task.codec.as_deref().unwrap_or(JSON_CODEC);
    task.items
        .iter()
        .map(|item| {
            if codec != JSON_CODEC {
                return ItemOutcome::error(
                    "TypeError",
                    format!("the built-in worker accepts the json codec only, not {codec:?}"),
                );
            }
            let args = match (task.star, item.clone()) {
                (true, Value::Array(args)) => Ok(args),
                (true, other) => Err(ItemError::new(
                    "TypeError",
                    format!("star=true needs each item to be an array of arguments, got {other}"),
                )),
                (false, item) => Ok(vec![item]),
            };
            let outcome = args.and_then(|args| builtins::call(&task.function, args, &task.kwargs));
            match outcome {
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
            }
        })
        .collect()
}
