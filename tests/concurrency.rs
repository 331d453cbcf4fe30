//! `max_concurrency` (`Pool(processes=N)`) against the real binary: a job never has more than
//! that many chunks running at once, read from `GET /v1/pool` while it runs, whatever its
//! priority; the other workers serve other jobs meanwhile.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::TestApp;
use serde_json::{Value, json};

/// How many workers run each job, in one look at the pool.
async fn running(app: &TestApp) -> HashMap<String, usize> {
    let mut on = HashMap::new();
    for worker in app.pool().await["workers"].as_array().unwrap() {
        if let Some(job) = worker["job_id"].as_str() {
            *on.entry(job.to_string()).or_default() += 1;
        }
    }
    on
}

fn finished(job: &Value) -> bool {
    ["completed", "failed", "cancelled"].contains(&job["status"].as_str().unwrap_or(""))
}

#[tokio::test]
async fn a_job_never_runs_more_chunks_than_its_max_concurrency() {
    let app = TestApp::spawn_with(&["--workers", "3"]).await;
    // Capped at 2, and first in line: higher priority than the job submitted after it.
    let capped = app
        .submit(
            json!({"function": "sleep", "items": vec![0.05; 24], "chunksize": 1,
                       "max_concurrency": 2, "priority": 5}),
        )
        .await;
    let other = app
        .submit(json!({"function": "sleep", "items": vec![0.05; 12], "chunksize": 1}))
        .await;
    let (mut most, mut side_by_side) = (0, false);
    while !finished(&app.job(&capped).await) {
        let on = running(&app).await;
        let n = on.get(&capped).copied().unwrap_or(0);
        assert!(n <= 2, "{n} chunks of the capped job ran at once");
        most = most.max(n);
        side_by_side |= n == 2 && on.contains_key(&other);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(most, 2, "the cap should be reached");
    assert!(
        side_by_side,
        "the third worker should run the other job meanwhile"
    );
    let job = app.wait_job(&capped).await;
    assert_eq!(
        (job["done"].as_u64(), job["max_concurrency"].as_u64()),
        (Some(24), Some(2))
    );
    assert_eq!(app.wait_job(&other).await["status"], "completed");
}

#[tokio::test]
async fn max_concurrency_is_checked_and_works_for_streamed_jobs() {
    let app = TestApp::spawn().await;
    for bad in [json!(0), json!(-1), json!(1_000_001), json!("2")] {
        let response = app
            .post_job(&json!({"function": "square", "items": [1], "max_concurrency": bad}))
            .await;
        assert_eq!(response.status(), 400, "{bad}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], "invalid_request");
    }
    let body = format!(
        "{}\n{}",
        json!({"function": "sleep", "chunksize": 1, "max_concurrency": 1}),
        "0.05\n".repeat(8)
    );
    let response = app.post_body("application/x-ndjson", body).await;
    assert_eq!(response.status(), 201);
    let job: Value = response.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(job["max_concurrency"], 1);
    while !finished(&app.job(&id).await) {
        assert!(running(&app).await.get(&id).copied().unwrap_or(0) <= 1);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(app.wait_job(&id).await["done"], 8);
}
