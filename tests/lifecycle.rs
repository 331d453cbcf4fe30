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

#[tokio::test]
async fn during_the_shutdown_drain_new_jobs_get_503_and_running_chunks_finish() {
    let mut app = TestApp::spawn().await;
    let id = app
        .submit(json!({"function": "sleep", "items": vec![1.0; 6], "chunksize": 1}))
        .await;
    app.wait_workers("busy").await;
    common::signal(app.pid(), "TERM");
    // Wait until poold has seen the signal (readiness turns 503), then submit.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while app.get("/readyz").await.status() != 503 {
        assert!(
            std::time::Instant::now() < deadline,
            "readyz never reported shutting down"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let response = app
        .post_job(&json!({"function": "square", "items": [1]}))
        .await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "shutting_down");
    let status = app.wait_exit(Duration::from_secs(15));
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        app.log_text()
    );

    // Chunks that were running when SIGTERM came finished and were recorded before exit.
    let app = TestApp::start(&app.db.clone(), &[]).await;
    let job = app.job(&id).await;
    assert!(
        job["done"].as_u64().unwrap() >= 2,
        "running chunks drained: {job}"
    );
    let job = app.wait_job(&id).await;
    assert_eq!(
        (job["status"].as_str(), job["done"].as_u64()),
        (Some("completed"), Some(6))
    );
}

#[tokio::test]
async fn a_job_survives_repeated_kill_9_of_the_server_with_every_item_recorded_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("poold.db");
    let mut app = TestApp::start(&db, &[]).await;
    let total = 2000;
    let id = app
        .submit(json!({"function": "sleep", "items": vec![0.003; total], "chunksize": 4}))
        .await;
    // Kill at varied moments: during recovery, early, mid-chunk, later.
    for delay_ms in [300, 20, 450, 120, 600, 0] {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let pids = app.worker_pids().await;
        eprintln!("kill -9 at done = {}", app.job(&id).await["done"]);
        let status = app.kill9();
        assert!(!status.success());
        assert!(
            wait_dead(&pids, Duration::from_secs(5)).await.is_empty(),
            "workers outlived a killed poold"
        );
        app = TestApp::start(&db, &[]).await;
    }
    let job = app.wait_job(&id).await;
    assert_eq!(
        (
            job["status"].as_str(),
            job["total"].as_u64(),
            job["done"].as_u64(),
            job["failed"].as_u64()
        ),
        (
            Some("completed"),
            Some(total as u64),
            Some(total as u64),
            Some(0)
        ),
        "{job}"
    );
    let results = app.results(&id).await;
    let indices: Vec<u64> = results
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indices, (0..total as u64).collect::<Vec<_>>());
    assert!(results.iter().all(|r| r["value"] == 0.003));
}
