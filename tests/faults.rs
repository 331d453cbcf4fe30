//! Items that hang or kill their worker: per-item timeouts and poison items, against the real
//! binary. Only the guilty item fails; the rest of its chunk completes.

mod common;

use std::time::{Duration, Instant};

use common::TestApp;
use serde_json::{Value, json};

#[tokio::test]
async fn an_item_over_its_timeout_fails_as_timeout_and_its_worker_is_replaced() {
    let app = TestApp::spawn_with(&["--workers", "1", "--kill-grace", "1"]).await;
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

#[tokio::test]
async fn a_slow_item_in_a_chunk_fails_alone() {
    let app = TestApp::spawn_with(&["--kill-grace", "1"]).await;
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

#[tokio::test]
async fn a_poison_item_fails_alone_and_the_other_nine_succeed() {
    let app = TestApp::spawn().await;
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
