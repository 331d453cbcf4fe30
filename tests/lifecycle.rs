//! Starting, stopping and restarting the real server: clean SIGTERM, no orphaned workers,
//! and jobs that survive a restart on the same database.

mod common;

use std::time::Duration;

use common::{TestApp, wait_dead};
use serde_json::json;

#[tokio::test]
async fn sigterm_exits_zero_and_leaves_no_worker() {
    let mut app = TestApp::spawn().await;
    let id = app
        .submit(json!({"function": "sleep", "items": vec![0.05; 40], "chunksize": 1}))
        .await;
    app.wait_any_busy().await;
    let pids = app.worker_pids().await;
    assert_eq!(pids.len(), 2);
    let status = app.terminate();
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        app.log_text()
    );
    assert!(
        wait_dead(&pids, Duration::from_secs(1)).await.is_empty(),
        "workers outlived poold"
    );

    // The job was not lost: a restart on the same database finishes it, each item once.
    let app = TestApp::start(&app.db.clone(), &[]).await;
    let job = app.wait_job(&id).await;
    assert_eq!(
        (job["status"].as_str(), job["done"].as_u64()),
        (Some("completed"), Some(40))
    );
    let results = app.results(&id).await;
    let indices: Vec<u64> = results
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indices, (0..40).collect::<Vec<_>>());
}

#[tokio::test]
async fn workers_exit_by_themselves_when_poold_is_killed() {
    let mut app = TestApp::spawn().await;
    let id = app
        .submit(
            json!({"function": "square", "items": (0..500).collect::<Vec<_>>(), "chunksize": 1}),
        )
        .await;
    let pids = app.worker_pids().await;
    app.kill9();
    assert!(
        wait_dead(&pids, Duration::from_secs(5)).await.is_empty(),
        "workers outlived a killed poold"
    );

    let app = TestApp::start(&app.db.clone(), &[]).await;
    let job = app.wait_job(&id).await;
    assert_eq!(
        (
            job["status"].as_str(),
            job["done"].as_u64(),
            job["failed"].as_u64()
        ),
        (Some("completed"), Some(500), Some(0))
    );
    let results = app.results(&id).await;
    assert_eq!(results.len(), 500);
    assert!(
        results
            .iter()
            .enumerate()
            .all(|(i, r)| r["index"] == i && r["value"] == i * i)
    );
}
