//! PostgreSQL goes away under a running job and comes back (a test binary of its own: it stops
//! the server the binary's tests share). Meanwhile new jobs get 503 with `Retry-After`,
//! `/readyz` says why, reads answer 503 instead of hanging, and the running job's results wait
//! in memory; once the server is back, poold carries on by itself and the job completes with
//! every index recorded exactly once. Two nodes share the database: both reconnect, and the
//! job's chunks ran on both.

mod common;

use std::time::{Duration, Instant};

use common::{Backend, TestApp, postgres};
use serde_json::json;

#[tokio::test]
async fn a_postgres_outage_mid_job_loses_nothing_and_answers_503_meanwhile() {
    if !postgres::available() {
        return;
    }
    // The outage outlasts the nodes' lease: when the server is back, every heartbeat is late,
    // and neither node may strand the other's claims (each gives back what it does not hold).
    let app = TestApp::spawn_on(Backend::Postgres, &["--workers", "2", "--node-lease", "3"]).await;
    let other = TestApp::start(
        &app.db,
        &[
            "--workers",
            "1",
            "--node-name",
            "other",
            "--node-lease",
            "3",
        ],
    )
    .await;
    let items: Vec<f64> = vec![0.02; 300];
    let id = app
        .submit(json!({"function": "sleep", "items": items, "chunksize": 2}))
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.job(&id).await["done"].as_u64().unwrap() < 20 {
        assert!(Instant::now() < deadline, "the job never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    postgres::stop();
    let created = app
        .post_job(&json!({"function": "square", "items": [1, 2, 3]}))
        .await;
    assert_eq!(
        created.status(),
        503,
        "a new job while the database is down"
    );
    assert!(created.headers().contains_key("retry-after"));
    let problem: serde_json::Value = created.json().await.unwrap();
    assert_eq!(problem["code"], "storage_unavailable", "{problem}");

    let asked = Instant::now();
    let read = app.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(read.status(), 503, "a read while the database is down");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "a read waited {:?}",
        asked.elapsed()
    );
    let asked = Instant::now();
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "/readyz answered after {:?}, longer than a health check waits",
        asked.elapsed()
    );
    // Workers finish chunks meanwhile: their results are kept until the database is back.
    tokio::time::sleep(Duration::from_secs(1)).await;

    postgres::restart();
    let job = app.wait_job(&id).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(
        (job["done"].as_u64(), job["failed"].as_u64()),
        (Some(300), Some(0))
    );
    let results = app.results(&id).await;
    let indices: Vec<u64> = results
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indices, (0..300).collect::<Vec<_>>(), "every index once");
    let events = app.events(&id, "?order=completion", None).await;
    let streamed = events.iter().filter(|e| e.event == "result").count();
    assert_eq!(streamed, 300, "every result once in completion order");

    // And it takes new work again.
    let after = app
        .submit(json!({"function": "square", "items": [1, 2, 3]}))
        .await;
    assert_eq!(app.wait_job(&after).await["status"], "completed");
    assert_eq!(app.get("/readyz").await.status(), 200);

    // Both nodes came back: alive, and the job's chunks ran on both.
    assert_eq!(other.get("/readyz").await.status(), 200);
    let nodes: serde_json::Value = other.get("/v1/nodes").await.json().await.unwrap();
    let alive = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["state"] == "alive")
        .count();
    assert_eq!(alive, 2, "{nodes}");
    let pool = app.pool().await;
    let mut ran = std::collections::BTreeMap::<String, u64>::new();
    for worker in pool["workers"].as_array().unwrap() {
        *ran.entry(worker["node"].as_str().unwrap().to_string())
            .or_default() += worker["tasks_completed"].as_u64().unwrap();
    }
    assert_eq!(ran.len(), 2, "{pool}");
    assert!(
        ran.values().all(|&n| n > 0),
        "chunks ran on both nodes: {ran:?}"
    );
}
