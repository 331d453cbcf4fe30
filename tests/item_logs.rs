//! Item logs: a worker may send what a function printed as each item's `"log"`; poold stores it
//! bounded and shows it in results, the NDJSON download and as SSE `log` events.

mod common;

use common::TestApp;
use serde_json::{Value, json};

/// A worker in the style of docs/worker-protocol.md's minimal one, whose results carry logs:
/// `shout(x)` logs for even numbers (and raises on "boom", after logging), `flood(n)` logs
/// `n` bytes.
const LOGGING_WORKER: &str = r#"
import json, os, sys
def shout(x):
    if x == "boom":
        return None, "about to fail\n", ValueError("boom")
    return x, (f"got {x}\n" if x % 2 == 0 else None), None
def flood(n):
    return n, "x" * n, None
FUNCS = {"shout": shout, "flood": flood}
print(json.dumps({"type": "hello", "protocol": 1, "pid": os.getpid(),
                  "functions": [{"name": n, "doc": ""} for n in FUNCS]}), flush=True)
for line in sys.stdin:
    task = json.loads(line)
    out = []
    for item in task["items"]:
        value, log, error = FUNCS[task["function"]](item)
        entry = {"value": value} if error is None else {
            "error": {"type": type(error).__name__, "message": str(error), "traceback": None}}
        if log is not None:
            entry["log"] = log
        out.append(entry)
    print(json.dumps({"type": "result", "id": task["id"], "results": out}), flush=True)
"#;

async fn spawn_logging_app(dir: &tempfile::TempDir) -> TestApp {
    let script = dir.path().join("logging_worker.py");
    std::fs::write(&script, LOGGING_WORKER).unwrap();
    let command = format!("python3 {}", script.display());
    TestApp::spawn_with(&["--worker-command", &command]).await
}

fn expected_log(index: usize) -> Option<String> {
    match index {
        6 => Some("about to fail\n".into()),
        i if i % 2 == 0 => Some(format!("got {i}\n")),
        _ => None,
    }
}

#[tokio::test]
async fn item_logs_show_in_results_ndjson_and_as_sse_log_events() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_logging_app(&dir).await;
    let items = json!([0, 1, 2, 3, 4, 5, "boom", 7]);
    let id = app
        .submit(json!({"function": "shout", "items": items, "chunksize": 3}))
        .await;
    app.wait_job(&id).await;

    // Paged results: "log" exactly when the function logged, errors included.
    let results = app.results(&id).await;
    assert_eq!(results.len(), 8);
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result["index"], i);
        assert_eq!(
            result
                .get("log")
                .and_then(Value::as_str)
                .map(str::to_string),
            expected_log(i),
            "{result}"
        );
    }
    assert_eq!(results[6]["error"]["type"], "ValueError");
    assert_eq!(
        results[2],
        json!({"index": 2, "value": 2, "log": "got 2\n"})
    );
    assert_eq!(results[3], json!({"index": 3, "value": 3}));

    // The NDJSON download has the same entries.
    let ndjson = app.results_ndjson(&id).await.text().await.unwrap();
    let lines: Vec<Value> = ndjson
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, results);

    // SSE: each logged item's `log` event (no id) comes right before its `result`.
    let events = app.events(&id, "", None).await;
    let items: Vec<_> = events
        .iter()
        .filter(|e| e.event == "log" || e.event == "result")
        .collect();
    let mut at = 0;
    for (i, result) in results.iter().enumerate() {
        if let Some(log) = expected_log(i) {
            let event = items[at];
            assert_eq!(
                (event.event.as_str(), event.id.as_deref()),
                ("log", None),
                "{event:?}"
            );
            assert_eq!(event.data, json!({"index": i, "log": log}));
            at += 1;
        }
        let event = items[at];
        assert_eq!(event.event, "result", "{event:?}");
        assert_eq!(event.id.as_deref(), Some(i.to_string().as_str()));
        assert_eq!(&event.data, result);
        at += 1;
    }
    assert_eq!(at, items.len());

    // Resuming after result 3 sends neither an earlier log nor an earlier result.
    let resumed = app.events(&id, "", Some(3)).await;
    let kinds: Vec<(String, u64)> = resumed
        .iter()
        .filter(|e| e.event == "log" || e.event == "result")
        .map(|e| (e.event.clone(), e.data["index"].as_u64().unwrap()))
        .collect();
    let expected: Vec<(String, u64)> = [
        ("log", 4),
        ("result", 4),
        ("result", 5),
        ("log", 6),
        ("result", 6),
        ("result", 7),
    ]
    .into_iter()
    .map(|(k, i)| (k.to_string(), i))
    .collect();
    assert_eq!(kinds, expected);

    // Completion order carries the logs too.
    let unordered = app.events(&id, "?order=completion", None).await;
    let logs = unordered.iter().filter(|e| e.event == "log").count();
    assert_eq!(logs, (0..8).filter_map(expected_log).count());
}

#[tokio::test]
async fn a_long_item_log_is_cut_at_64_kib_with_a_marker() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_logging_app(&dir).await;
    let id = app
        .submit(json!({"function": "flood", "items": [100, 200_000]}))
        .await;
    app.wait_job(&id).await;
    let results = app.results(&id).await;
    assert_eq!(results[0]["log"].as_str().unwrap(), "x".repeat(100));
    let long = results[1]["log"].as_str().unwrap();
    assert_eq!(long, format!("{}\n…[truncated]", "x".repeat(64 * 1024)));
    assert_eq!(results[1]["value"], 200_000);
}
