//! Streaming ingest (`POST /v1/jobs` with an NDJSON body) against the real binary: work starts
//! before the upload ends, `total` is null until it ends, and bad lines fail the job cleanly.

mod common;

use std::time::{Duration, Instant};

use common::TestApp;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

type Lines = mpsc::Sender<Result<String, std::io::Error>>;

/// Start a chunked NDJSON upload whose lines the test sends one by one.
fn start_upload(app: &TestApp) -> (Lines, JoinHandle<reqwest::Response>) {
    let (tx, rx) = mpsc::channel(16);
    let request = app
        .client
        .post(format!("{}/v1/jobs", app.url))
        .header("content-type", "application/x-ndjson")
        .body(reqwest::Body::wrap_stream(ReceiverStream::new(rx)));
    let response = tokio::spawn(async move { request.send().await.expect("POST /v1/jobs") });
    (tx, response)
}

async fn send(lines: &Lines, line: impl std::fmt::Display) {
    lines
        .send(Ok(format!("{line}\n")))
        .await
        .expect("upload open");
}

async fn post_ndjson(app: &TestApp, body: &str) -> (u16, Value) {
    let response = app
        .post_body("application/x-ndjson", body.to_string())
        .await;
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON answer"))
}

/// The ids of all jobs, newest first.
async fn job_ids(app: &TestApp) -> Vec<String> {
    let list: Value = app.get("/v1/jobs").await.json().await.expect("list");
    list["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| j["id"].as_str().expect("id").to_string())
        .collect()
}

async fn wait_for<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

on_both_stores! {
async fn results_are_recorded_while_a_slow_upload_is_still_open(backend: Backend) {
    let app = TestApp::spawn_on(backend, &[]).await;
    let (lines, response) = start_upload(&app);
    send(&lines, json!({"function": "square", "chunksize": 1})).await;
    for i in 0..3 {
        send(&lines, i).await;
    }
    let id = wait_for("the streamed job to be listed", async || {
        job_ids(&app).await.into_iter().next()
    })
    .await;
    let early = wait_for("results of the first items", async || {
        let results = app.results(&id).await;
        (results.len() == 3).then_some(results)
    })
    .await;
    assert_eq!(
        early,
        vec![
            json!({"index": 0, "value": 0}),
            json!({"index": 1, "value": 1}),
            json!({"index": 2, "value": 4})
        ]
    );
    // The upload is still open: the total is unknown and the job cannot be complete.
    let job = app.job(&id).await;
    assert_eq!(job["total"], Value::Null, "{job}");
    assert_eq!(job["status"], "running", "{job}");
    assert_eq!(job["done"], 3);
    assert!(!response.is_finished(), "answered before the upload ended");

    for i in 3..10 {
        send(&lines, i).await;
    }
    drop(lines); // end of the body
    let response = response.await.expect("upload task");
    assert_eq!(response.status(), 201);
    assert_eq!(
        response
            .headers()
            .get("location")
            .and_then(|l| l.to_str().ok()),
        Some(format!("/v1/jobs/{id}").as_str())
    );
    let answered: Value = response.json().await.expect("job");
    assert_eq!(
        (answered["id"].as_str(), answered["total"].as_u64()),
        (Some(id.as_str()), Some(10))
    );

    let job = app.wait_job(&id).await;
    assert_eq!(
        (job["status"].as_str(), job["done"].as_u64()),
        (Some("completed"), Some(10))
    );
    let results = app.results(&id).await;
    let expected: Vec<Value> = (0..10)
        .map(|i| json!({"index": i, "value": i * i}))
        .collect();
    assert_eq!(results, expected);
}
}

on_both_stores! {
async fn a_malformed_line_mid_stream_is_named_and_leaves_no_runnable_job(backend: Backend) {
    let app = TestApp::spawn_on(backend, &[]).await;
    let (lines, response) = start_upload(&app);
    send(&lines, json!({"function": "sleep", "chunksize": 1})).await;
    for _ in 0..3 {
        send(&lines, 0.05).await;
    }
    send(&lines, "{\"oops\"").await; // line 5
    for _ in 0..20 {
        send(&lines, 0.05).await;
    }
    drop(lines);
    let response = response.await.expect("upload task");
    assert_eq!(response.status(), 400);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let problem: Value = response.json().await.expect("problem");
    assert_eq!(problem["code"], "invalid_request", "{problem}");
    let detail = problem["detail"].as_str().expect("detail");
    assert!(detail.contains("line 5"), "{detail}");

    let ids = job_ids(&app).await;
    assert_eq!(ids.len(), 1, "one partial job");
    let job = app.wait_job(&ids[0]).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(
        job["error"].as_str().unwrap_or("").contains("line 5"),
        "{job}"
    );
    assert!(
        job["total"].as_u64().expect("a failed upload has a total") <= 3,
        "{job}"
    );
    assert!(
        detail.contains(ids[0].as_str()),
        "the detail names the job: {detail}"
    );
    // Nothing of it is queued or runs any more.
    let pool = app
        .wait_pool("no queued chunks and idle workers", |p| {
            p["queued_chunks"] == 0
                && p["workers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|w| w["state"] == "idle")
        })
        .await;
    assert_eq!(pool["queued_chunks"], 0);
    assert!(app.job(&ids[0]).await["done"].as_u64().unwrap() <= 3);
}
}

on_both_stores! {
async fn the_items_limit_applies_to_streams_and_names_the_line(backend: Backend) {
    let app = TestApp::spawn_on(backend, &["--max-items-per-job", "3"]).await;
    let body = "{\"function\": \"square\"}\n1\n2\n3\n4\n5\n";
    let (status, problem) = post_ndjson(&app, body).await;
    assert_eq!(status, 413, "{problem}");
    assert_eq!(problem["code"], "payload_too_large");
    assert!(
        problem["detail"].as_str().unwrap().contains("line 5"),
        "{problem}"
    );
    let ids = job_ids(&app).await;
    assert_eq!(app.job(&ids[0]).await["status"], "failed");

    // At the limit is fine.
    let (status, job) = post_ndjson(&app, "{\"function\": \"square\"}\n1\n2\n3\n").await;
    assert_eq!((status, job["total"].as_u64()), (201, Some(3)), "{job}");
    assert_eq!(job["chunksize"], 100, "the documented default for streams");
    let job = app.wait_job(job["id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "completed");
}
}

on_both_stores! {
async fn bad_first_lines_are_refused_without_creating_a_job(backend: Backend) {
    let app = TestApp::spawn_on(backend, &[]).await;
    for (body, expected) in [
        ("", "line 1"),
        ("{\"function\": \"square\", \"items\": [1]}\n2\n", "items"),
        (
            "{\"function\": \"square\", \"chunk_size\": 3}\n1\n",
            "chunk_size",
        ),
        ("not json\n1\n", "line 1"),
    ] {
        let (status, problem) = post_ndjson(&app, body).await;
        assert_eq!(status, 400, "{body:?}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(expected),
            "{body:?}: {problem}"
        );
    }
    let (status, problem) = post_ndjson(&app, "{\"function\": \"nope\"}\n1\n").await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (422, Some("unknown_function"))
    );
    let response = app
        .client
        .post(format!("{}/v1/jobs", app.url))
        .header("content-type", "application/x-ndjson")
        .header("idempotency-key", "k1")
        .body("{\"function\": \"square\"}\n1\n")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(job_ids(&app).await.is_empty());
}
}

on_both_stores! {
async fn streamed_items_are_checked_and_an_empty_stream_completes_at_once(backend: Backend) {
    let app = TestApp::spawn_on(backend, &[]).await;
    let (status, job) = post_ndjson(&app, "{\"function\": \"square\"}\n\n").await;
    assert_eq!(status, 201, "{job}");
    assert_eq!(
        (job["status"].as_str(), job["total"].as_u64()),
        (Some("completed"), Some(0))
    );

    let (status, problem) = post_ndjson(
        &app,
        "{\"function\": \"add\", \"star\": true}\n[1, 2]\n\n3\n",
    )
    .await;
    assert_eq!(status, 400, "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("line 4") && detail.contains("star"),
        "{detail}"
    );

    let (status, job) = post_ndjson(
        &app,
        "{\"function\": \"add\", \"star\": true, \"chunksize\": 2}\r\n[1, 2]\r\n[3, 4]\r\n[5, 6]",
    )
    .await;
    assert_eq!((status, job["total"].as_u64()), (201, Some(3)), "{job}");
    let id = job["id"].as_str().unwrap();
    app.wait_job(id).await;
    let values: Vec<Value> = app
        .results(id)
        .await
        .iter()
        .map(|r| r["value"].clone())
        .collect();
    assert_eq!(values, vec![json!(3), json!(7), json!(11)]);
}
}

on_both_stores! {
async fn a_job_cancelled_during_its_upload_stops_taking_items(backend: Backend) {
    let app = TestApp::spawn_on(backend, &[]).await;
    let (lines, response) = start_upload(&app);
    send(&lines, json!({"function": "square", "chunksize": 1})).await;
    send(&lines, 1).await;
    let id = wait_for("the streamed job", async || {
        job_ids(&app).await.into_iter().next()
    })
    .await;
    let cancelled: Value = app
        .post(&format!("/v1/jobs/{id}/cancel"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    for i in 0..50 {
        send(&lines, i).await;
    }
    drop(lines);
    let response = response.await.unwrap();
    assert_eq!(response.status(), 201);
    let job: Value = response.json().await.unwrap();
    assert_eq!(job["status"], "cancelled", "{job}");
    assert!(job["total"].as_u64().unwrap() <= 1, "{job}");
    assert_eq!(app.pool().await["queued_chunks"], 0);
}
}

/// Start an upload of a few items and return the job's id once it is listed.
async fn open_upload(app: &TestApp) -> (Lines, JoinHandle<reqwest::Response>, String) {
    let (lines, response) = start_upload(app);
    send(&lines, json!({"function": "square", "chunksize": 1})).await;
    send(&lines, 1).await;
    send(&lines, 2).await;
    let id = wait_for("the streamed job", async || {
        let id = job_ids(app).await.into_iter().next()?;
        (app.job(&id).await["done"] == 2).then_some(id)
    })
    .await;
    (lines, response, id)
}

on_both_stores! {
async fn a_client_that_breaks_off_its_upload_leaves_a_failed_job(backend: Backend) {
    let app = TestApp::spawn_on(backend, &[]).await;
    let (lines, response, id) = open_upload(&app).await;
    lines
        .send(Err(std::io::Error::other("the client gave up")))
        .await
        .unwrap();
    drop(lines);
    let _ = response.await; // the request itself fails
    let job = app.wait_job(&id).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(job["error"].as_str().unwrap().contains("upload"), "{job}");
    assert_eq!(
        (job["total"].as_u64(), job["done"].as_u64()),
        (Some(2), Some(2))
    );
}
}

on_both_stores! {
async fn shutdown_during_an_upload_fails_the_job_and_does_not_hang(backend: Backend) {
    let mut app = TestApp::spawn_on(backend, &[]).await;
    let (lines, response, id) = open_upload(&app).await;
    let status = app.terminate(); // bounded: panics if poold does not exit in time
    assert!(status.success(), "{status:?}");
    drop(lines);
    let answer = response.await.unwrap();
    assert_eq!(answer.status(), 503);

    let app = TestApp::start(&app.db.clone(), &[]).await;
    let job = app.job(&id).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(
        job["error"].as_str().unwrap().contains("shutting down"),
        "{job}"
    );
}
}

on_both_stores! {
async fn an_upload_cut_off_by_a_crash_is_failed_on_restart(backend: Backend) {
    let (_dir, db) = common::fresh_database(backend).await;
    let mut app = TestApp::start(&db, &[]).await;
    let (lines, _response, id) = open_upload(&app).await;
    app.kill9();
    drop(lines);

    // The same node restarted: the same address (and so the same default node name). On
    // PostgreSQL a node of another name would be another node, whose uploads fail once the
    // crashed node's lease runs out (see tests/cluster.rs).
    let address = app.url.trim_start_matches("http://").to_string();
    let app = TestApp::start(&db, &["--bind", &address]).await;
    let job = app.job(&id).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(job["error"].as_str().unwrap().contains("uploaded"), "{job}");
    assert_eq!(
        job["total"], 2,
        "a failed upload shows the items it stored: {job}"
    );
    assert_eq!(app.pool().await["queued_chunks"], 0);
    assert_eq!(
        app.results(&id).await.len(),
        2,
        "recorded results stay readable"
    );
}
}
