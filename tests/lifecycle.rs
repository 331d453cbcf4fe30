//! Starting, stopping and restarting the real server: clean SIGTERM, no orphaned workers,
//! and jobs that survive a restart on the same database.

mod common;

use std::time::Duration;

use common::{TestApp, wait_dead};
use serde_json::{Value, json};

on_both_stores! {
async fn sigterm_exits_zero_and_leaves_no_worker(backend: Backend) {
    let mut app = TestApp::spawn_on(backend, &[]).await;
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
}

on_both_stores! {
async fn workers_exit_by_themselves_when_poold_is_killed(backend: Backend) {
    let mut app = TestApp::spawn_on(backend, &[]).await;
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
}

on_both_stores! {
async fn during_the_shutdown_drain_new_jobs_get_503_and_running_chunks_finish(backend: Backend) {
    let mut app = TestApp::spawn_on(backend, &[]).await;
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
}

on_both_stores! {
async fn a_job_survives_repeated_kill_9_of_the_server_with_every_item_recorded_once(backend: Backend) {
    let (_dir, db) = common::fresh_database(backend).await;
    let mut app = TestApp::start(&db, &[]).await;
    let total = 2000;
    let id = app
        .submit(json!({"function": "sleep", "items": vec![0.003; total], "chunksize": 4}))
        .await;
    // Kill at varied moments: during recovery, early, mid-chunk, later.
    for delay_ms in [300, 20, 450, 120, 600, 0] {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let pids = app.worker_pids().await;
        let status = app.kill9();
        assert!(!status.success());
        assert!(
            wait_dead(&pids, Duration::from_secs(5)).await.is_empty(),
            "workers outlived a killed poold"
        );
        // What the kill left on disk: each kill must land mid-job, or it tests nothing.
        let stored = common::stored_job(&db, &id).await;
        eprintln!("kill -9 after {delay_ms} ms: {stored}");
        let done = stored["done"].as_u64().unwrap();
        assert!(
            0 < done && done < total as u64,
            "the kill after {delay_ms} ms did not land mid-job: {stored}"
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
}

/// Item `i` of the job killed under: every 50th from 17 on is not a number (an item error).
fn bad_item(i: u64) -> bool {
    i % 50 == 17
}

on_both_stores! {
async fn after_kill_9_a_job_with_item_errors_completes_with_each_result_once_and_ended_jobs_stay_ended(
    backend: Backend,
) {
    let (_dir, db) = common::fresh_database(backend).await;
    let mut app = TestApp::start(&db, &[]).await;

    // Two jobs that end before the kill: one cancelled mid-run, one failed by fail_fast.
    let cancelled = app
        .submit(json!({"function": "sleep", "items": vec![0.05; 100], "chunksize": 1}))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while app.job(&cancelled).await["done"].as_u64().unwrap() < 4 {
        assert!(std::time::Instant::now() < deadline, "the job never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        app.post(&format!("/v1/jobs/{cancelled}/cancel"))
            .await
            .status(),
        200
    );
    let mut items = vec![json!(0.01); 100];
    items[6] = json!("bad");
    let failed_fast = app
        .submit(
            json!({"function": "sleep", "items": items, "chunksize": 1, "on_error": "fail_fast"}),
        )
        .await;
    let mut ended = Vec::new();
    for id in [&cancelled, &failed_fast] {
        let job = app.wait_job(id).await;
        let results = app.results(id).await;
        ended.push((id.clone(), job, results));
    }
    assert_eq!(ended[0].1["status"], "cancelled");
    assert_eq!(ended[1].1["status"], "failed");
    for (_, job, results) in &ended {
        assert!(job["done"].as_u64().unwrap() < 100, "{job}");
        assert_eq!(results.len() as u64, job["done"].as_u64().unwrap());
    }

    let total = 1200u64;
    let items: Vec<Value> = (0..total)
        .map(|i| {
            if bad_item(i) {
                json!("bad")
            } else {
                json!(0.004)
            }
        })
        .collect();
    let bad = (0..total).filter(|&i| bad_item(i)).count() as u64;
    let id = app
        .submit(json!({"function": "sleep", "items": items, "chunksize": 4}))
        .await;
    // A client sees some results, errors among them, before poold dies.
    let seen = app
        .events_until(&id, "", |events| {
            let results: Vec<_> = events.iter().filter(|e| e.event == "result").collect();
            results.len() >= 100 && results.iter().any(|e| e.data.get("error").is_some())
        })
        .await;
    let seen: Vec<Value> = seen
        .into_iter()
        .filter(|e| e.event == "result")
        .map(|e| e.data)
        .collect();
    assert!(seen.len() >= 100);
    let pids = app.worker_pids().await;
    app.kill9();
    assert!(wait_dead(&pids, Duration::from_secs(5)).await.is_empty());
    let stored = common::stored_job(&db, &id).await;
    let (done, failed) = (
        stored["done"].as_u64().unwrap(),
        stored["failed"].as_u64().unwrap(),
    );
    assert!(
        stored["status"] == "running" && done < total && failed >= 1,
        "the kill landed mid-job, after an item error: {stored}"
    );

    let app = TestApp::start(&db, &[]).await;
    let job = app.wait_job(&id).await;
    assert_eq!(
        (
            job["status"].as_str(),
            job["done"].as_u64(),
            job["failed"].as_u64()
        ),
        (Some("completed"), Some(total), Some(bad)),
        "{job}"
    );
    let results = app.results(&id).await;
    let indices: Vec<u64> = results
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indices, (0..total).collect::<Vec<_>>(), "each index once");
    for (i, r) in results.iter().enumerate() {
        if bad_item(i as u64) {
            assert_eq!(r["error"]["type"], "TypeError", "{r}");
            assert!(r.get("value").is_none(), "{r}");
        } else {
            assert_eq!(r, &json!({"index": i, "value": 0.004}));
        }
    }
    for r in &seen {
        let i = r["index"].as_u64().unwrap() as usize;
        assert_eq!(&results[i], r, "a result seen before the kill changed");
    }
    // The stream agrees: each result once.
    let events = app.events(&id, "", None).await;
    let streamed: Vec<Value> = events
        .into_iter()
        .filter(|e| e.event == "result")
        .map(|e| e.data)
        .collect();
    assert_eq!(streamed, results);

    // The ended jobs were not resumed: same state, same results.
    app.wait_workers("idle").await;
    for (id, job, results) in &ended {
        assert_eq!(
            &app.job(id).await,
            job,
            "an ended job changed after restart"
        );
        assert_eq!(&app.results(id).await, results);
    }
}
}
