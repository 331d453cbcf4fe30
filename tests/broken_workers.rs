//! Workers that break the rules and results poold cannot keep (the hardening issue, items 2–4
//! and 7): every accepted item still reaches an outcome, and no worker outlives poold.

mod common;

use std::time::Duration;

use common::{TestApp, wait_dead};
use serde_json::{Value, json};

/// A Python worker whose functions return what poold cannot take as it is, and which can be
/// told to answer out of protocol.
const BROKEN_WORKER: &str = r#"
import json, os, sys

def deep(n):
    value = 1
    for _ in range(n):
        value = [value]
    return value

def huge(mb):
    return "x" * (mb * 1024 * 1024)

def ok(x):
    return x

FUNCS = {"deep": deep, "huge": huge, "ok": ok, "wrong_id": ok}
sys.setrecursionlimit(10000)
print(json.dumps({"type": "hello", "protocol": 1, "pid": os.getpid(),
                  "functions": [{"name": n, "doc": ""} for n in FUNCS]}), flush=True)
for line in sys.stdin:
    task = json.loads(line)
    out = [{"value": FUNCS[task["function"]](item)} for item in task["items"]]
    answer = task["id"] + (1000 if task["function"] == "wrong_id" else 0)
    sys.stdout.write(json.dumps({"type": "result", "id": answer, "results": out}) + "\n")
    sys.stdout.flush()
"#;

async fn spawn_broken(workers: &str) -> (tempfile::TempDir, TestApp) {
    let dir = tempfile::tempdir().unwrap();
    let command = common::python_worker(dir.path(), "broken.py", BROKEN_WORKER);
    let app = TestApp::spawn_with(&["--workers", workers, "--worker-command", &command]).await;
    (dir, app)
}

fn assert_job(job: &Value, status: &str, done: u64, failed: u64) {
    assert_eq!(
        (
            job["status"].as_str(),
            job["done"].as_u64(),
            job["failed"].as_u64()
        ),
        (Some(status), Some(done), Some(failed)),
        "{job}"
    );
}

#[tokio::test]
async fn item_2_a_worker_answering_out_of_protocol_uses_up_the_attempts_and_the_job_ends() {
    let (_dir, app) = spawn_broken("1").await;
    // Two chunks: the second waits in the pipe behind the first, as in the issue.
    let id = app
        .submit(json!({"function": "wrong_id", "items": [1, 2, 3, 4], "chunksize": 2, "max_attempts": 2}))
        .await;
    let job = app.wait_job(&id).await;
    assert_job(&job, "completed", 4, 4);
    for result in app.results(&id).await {
        assert_eq!(result["error"]["type"], "protocol_error", "{result}");
    }
    let exits = app.get("/metrics").await.text().await.unwrap();
    assert!(
        exits.contains(r#"poold_worker_exits_total{reason="protocol"}"#),
        "{exits}"
    );
}

#[tokio::test]
async fn item_3_a_result_over_the_line_limit_fails_only_its_item() {
    let (_dir, app) = spawn_broken("1").await;
    // The middle item's result (65 MiB) is over the protocol's 64 MiB line limit.
    let id = app
        .submit(json!({"function": "huge", "items": [0, 65, 0], "chunksize": 3}))
        .await;
    let job = app.wait_job(&id).await;
    assert_job(&job, "completed", 3, 1);
    let results = app.results(&id).await;
    assert_eq!(results[0]["value"], "");
    assert_eq!(results[2]["value"], "");
    assert_eq!(
        results[1]["error"]["type"], "result_too_large",
        "{}",
        results[1]
    );
}

#[tokio::test]
async fn item_4_a_result_nested_too_deep_fails_its_item_and_the_job_ends() {
    let (_dir, app) = spawn_broken("1").await;
    let id = app
        .submit(json!({"function": "deep", "items": [3, 997, 100, 2000], "chunksize": 4}))
        .await;
    let job = app.wait_job(&id).await;
    assert_job(&job, "completed", 4, 2);
    let results = app.results(&id).await;
    assert_eq!(results[0]["value"], json!([[[1]]]));
    assert!(results[2]["value"].is_array(), "depth 100 is kept");
    for bad in [1, 3] {
        let error = &results[bad]["error"];
        assert_eq!(error["type"], "invalid_result", "{error}");
        assert!(
            error["message"].as_str().unwrap().contains("nested"),
            "{error}"
        );
    }
}

#[tokio::test]
async fn item_7_busy_workers_die_with_a_killed_poold_and_the_chunk_runs_once_more() {
    let mut app = TestApp::spawn().await;
    let id = app
        .submit(json!({"function": "sleep", "items": [60, 60], "chunksize": 1}))
        .await;
    let pids = app
        .wait_pool("both workers busy", |p| {
            p["workers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|w| w["state"] == "busy")
        })
        .await["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].as_u64().unwrap() as u32)
        .collect::<Vec<_>>();
    app.kill9();
    assert!(
        wait_dead(&pids, Duration::from_secs(2)).await.is_empty(),
        "busy workers outlived a kill -9 of poold: {pids:?}"
    );
    // After a restart the job's chunks run again, on new workers only.
    let app = TestApp::start(&app.db.clone(), &[]).await;
    app.wait_any_busy().await;
    let now = app.worker_pids().await;
    assert!(now.iter().all(|p| !pids.contains(p)), "{now:?} vs {pids:?}");
    let cancelled = app.post(&format!("/v1/jobs/{id}/cancel")).await;
    assert_eq!(cancelled.status(), 200);
}
