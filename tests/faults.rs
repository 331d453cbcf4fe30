//! Items that hang or kill their worker: per-item timeouts and poison items, against the real
//! binary. Only the guilty item fails; the rest of its chunk completes.

mod common;

use std::time::{Duration, Instant};

use common::{Backend, TestApp};
use serde_json::{Value, json};

on_both_stores! {
async fn an_item_over_its_timeout_fails_as_timeout_and_its_worker_is_replaced(backend: Backend) {
    let app = TestApp::spawn_on(backend, &["--workers", "1", "--kill-grace", "1"]).await;
    let before = app.worker_pids().await;
    let started = Instant::now();
    let id = app
        .submit(json!({"function": "sleep", "items": [30], "timeout_s": 1}))
        .await;
    let job = app.wait_job(&id).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        (job["status"].as_str(), job["failed"].as_u64()),
        (Some("completed"), Some(1)),
        "{job}"
    );
    let results = app.results(&id).await;
    assert_eq!(results[0]["error"]["type"], "timeout", "{}", results[0]);
    assert!(
        results[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("timeout_s")
    );
    let after = app.wait_workers("idle").await;
    assert_ne!(after, before, "the hung worker was replaced");
    assert!(
        common::wait_dead(&before, Duration::from_secs(5))
            .await
            .is_empty()
    );
}
}

on_both_stores! {
async fn a_slow_item_in_a_chunk_fails_alone(backend: Backend) {
    let app = TestApp::spawn_on(backend, &["--kill-grace", "1"]).await;
    let id = app
        .submit(json!({"function": "sleep", "items": [0.01, 30, 0.02, 0.03], "chunksize": 4, "timeout_s": 1}))
        .await;
    let job = app.wait_job(&id).await;
    assert_eq!(
        (job["status"].as_str(), job["failed"].as_u64()),
        (Some("completed"), Some(1)),
        "{job}"
    );
    let results = app.results(&id).await;
    let values: Vec<&Value> = results.iter().map(|r| &r["value"]).collect();
    assert_eq!(
        values,
        [&json!(0.01), &Value::Null, &json!(0.02), &json!(0.03)]
    );
    assert_eq!(results[1]["error"]["type"], "timeout");
}
}

on_both_stores! {
async fn a_poison_item_fails_alone_and_the_other_nine_succeed(backend: Backend) {
    let app = TestApp::spawn_on(backend, &[]).await;
    let items = json!([0, 0, 0, 0, 9, 0, 0, 0, 0, 0]);
    let id = app
        .submit(json!({"function": "crash", "items": items, "chunksize": 10, "max_attempts": 2}))
        .await;
    let job = app.wait_job(&id).await;
    assert_eq!(
        (
            job["status"].as_str(),
            job["done"].as_u64(),
            job["failed"].as_u64()
        ),
        (Some("completed"), Some(10), Some(1)),
        "{job}"
    );
    let results = app.results(&id).await;
    for (i, result) in results.iter().enumerate() {
        if i == 4 {
            assert_eq!(result["error"]["type"], "worker_exited", "{result}");
            assert!(
                result["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("exit code 9"),
                "{result}"
            );
        } else {
            assert_eq!(result, &json!({"index": i, "value": null}));
        }
    }
    let pool = app.pool().await;
    let restarts: u64 = pool["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["restarts"].as_u64().unwrap())
        .sum();
    assert!(
        restarts >= 3,
        "2 runs of the whole chunk and 2 of the poison piece kill workers: {pool}"
    );
}
}

/// A Python worker whose functions misbehave on purpose: one leaves a grandchild behind and
/// hangs, one allocates until its memory limit stops it, one names its process. Unlike the
/// SDK worker it catches nothing, so an exception kills it (as an allocation failure does).
const UNRULY_WORKER: &str = r#"
import json, os, subprocess, sys, time

def spawn_and_hang(pidfile):
    child = subprocess.Popen(["sleep", "300"])
    with open(pidfile, "w") as f:
        f.write(str(child.pid))
    time.sleep(300)

def hog(mb):
    block = bytearray(mb * 1024 * 1024)
    return len(block)

def pid(_):
    return os.getpid()

FUNCS = {"spawn_and_hang": spawn_and_hang, "hog": hog, "pid": pid}
print(json.dumps({"type": "hello", "protocol": 1, "pid": os.getpid(),
                  "functions": [{"name": n, "doc": ""} for n in FUNCS]}), flush=True)
for line in sys.stdin:
    task = json.loads(line)
    out = [{"value": FUNCS[task["function"]](item)} for item in task["items"]]
    print(json.dumps({"type": "result", "id": task["id"], "results": out}), flush=True)
"#;

/// One worker running [`UNRULY_WORKER`], with extra `serve` flags; the directory holds it.
async fn spawn_unruly(backend: Backend, args: &[&str]) -> (tempfile::TempDir, TestApp) {
    let dir = tempfile::tempdir().unwrap();
    let command = common::python_worker(dir.path(), "unruly.py", UNRULY_WORKER);
    let mut all = vec!["--workers", "1", "--worker-command", &command];
    all.extend_from_slice(args);
    let app = TestApp::spawn_on(backend, &all).await;
    (dir, app)
}

on_both_stores! {
async fn a_timed_out_worker_leaves_no_grandchild_behind(backend: Backend) {
    let (dir, app) = spawn_unruly(backend, &["--kill-grace", "1"]).await;
    let pidfile = dir.path().join("grandchild.pid");
    let id = app
        .submit(json!({"function": "spawn_and_hang", "items": [pidfile], "timeout_s": 1}))
        .await;
    let job = app.wait_job(&id).await;
    assert_eq!(job["failed"], 1, "{job}");
    assert_eq!(app.results(&id).await[0]["error"]["type"], "timeout");
    let grandchild: u32 = std::fs::read_to_string(&pidfile)
        .expect("the worker wrote its grandchild's pid")
        .parse()
        .unwrap();
    assert!(
        common::wait_dead(&[grandchild], Duration::from_secs(5))
            .await
            .is_empty(),
        "grandchild {grandchild} survived its worker's timeout"
    );
}
}

on_both_stores! {
async fn a_worker_over_its_memory_limit_fails_the_item_as_out_of_memory(backend: Backend) {
    let (_dir, app) = spawn_unruly(backend, &["--worker-memory-mb", "300"]).await;
    let id = app
        .submit(json!({"function": "hog", "items": [1, 2000, 2], "chunksize": 3}))
        .await;
    let job = app.wait_job(&id).await;
    assert_eq!(
        (job["status"].as_str(), job["failed"].as_u64()),
        (Some("completed"), Some(1)),
        "{job}"
    );
    let results = app.results(&id).await;
    assert_eq!(results[0]["value"], 1024 * 1024);
    assert_eq!(results[2]["value"], 2 * 1024 * 1024);
    let error = &results[1]["error"];
    assert_eq!(error["type"], "out_of_memory", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("300 MiB") && message.contains("MemoryError"),
        "{message}"
    );
}
}

on_both_stores! {
async fn workers_are_recycled_after_max_tasks_per_worker(backend: Backend) {
    let (_dir, app) = spawn_unruly(backend, &["--max-tasks-per-worker", "2"]).await;
    let id = app
        .submit(json!({"function": "pid", "items": (0..10).collect::<Vec<_>>(), "chunksize": 1}))
        .await;
    let job = app.wait_job(&id).await;
    assert_eq!(
        (job["status"].as_str(), job["failed"].as_u64()),
        (Some("completed"), Some(0)),
        "{job}"
    );
    let pids: Vec<u64> = app
        .results(&id)
        .await
        .iter()
        .map(|r| r["value"].as_u64().unwrap())
        .collect();
    // Ten one-item chunks, two per process: five processes, each running two in a row.
    for pair in pids.chunks(2) {
        assert_eq!(pair[0], pair[1], "{pids:?}");
    }
    let mut distinct = pids.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 5, "{pids:?}");
}
}

on_both_stores! {
async fn the_server_default_timeout_applies_to_jobs_without_one(backend: Backend) {
    let app =
        TestApp::spawn_on(backend, &["--workers", "1", "--kill-grace", "1", "--task-timeout", "1"]).await;
    let id = app
        .submit(json!({"function": "sleep", "items": [30, 0.01]}))
        .await;
    let job = app.wait_job(&id).await;
    assert_eq!(job["timeout_s"], 1.0, "{job}");
    let results = app.results(&id).await;
    assert_eq!(results[0]["error"]["type"], "timeout", "{}", results[0]);
    assert_eq!(results[1]["value"], 0.01);
    // A job's own timeout_s wins over the default.
    let id = app
        .submit(json!({"function": "sleep", "items": [1.5], "timeout_s": 5}))
        .await;
    assert_eq!(app.wait_job(&id).await["failed"], 0);
}
}

on_both_stores! {
async fn a_worker_killed_mid_chunk_is_replaced_and_the_chunk_retried(backend: Backend) {
    let app = TestApp::spawn_on(backend, &["--workers", "1"]).await;
    let items = vec![0.2; 10];
    let id = app
        .submit(json!({"function": "sleep", "items": items, "chunksize": 10, "max_attempts": 2}))
        .await;
    app.wait_any_busy().await;
    let victim = app.worker_pids().await[0];
    common::signal(victim, "KILL");
    let job = app.wait_job(&id).await;
    assert_eq!(
        (
            job["status"].as_str(),
            job["done"].as_u64(),
            job["failed"].as_u64()
        ),
        (Some("completed"), Some(10), Some(0)),
        "{job}"
    );
    assert!(app.results(&id).await.iter().all(|r| r["value"] == 0.2));
    let now = app.wait_workers("idle").await;
    assert_ne!(now, vec![victim], "the killed worker was replaced");
}
}

on_both_stores! {
async fn a_chunk_that_keeps_killing_workers_fails_with_the_exit_and_stderr(backend: Backend) {
    let app = TestApp::spawn_on(backend, &["--workers", "1"]).await;
    let id = app
        .submit(json!({"function": "crash", "items": [7], "max_attempts": 2}))
        .await;
    let job = app.wait_job(&id).await;
    assert_eq!(job["failed"], 1, "{job}");
    let error = &app.results(&id).await[0]["error"];
    assert_eq!(error["type"], "worker_exited", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("exit code 7"),
        "{error}"
    );
    let pool = app.pool().await;
    assert!(
        pool["workers"][0]["restarts"].as_u64().unwrap() >= 2,
        "{pool}"
    );
}
}
