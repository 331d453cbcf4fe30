//! Map jobs end to end against the real binary: results, ordering, SSE, calling conventions,
//! item errors, cancel, delete, pool close/open, and bad input.

mod common;

use std::time::{Duration, Instant};

use common::{TestApp, orphan_chunks, pid_alive, wait_dead};
use serde_json::{Value, json};

fn assert_indices_in_order(results: &[Value], expected: std::ops::Range<u64>) {
    let indices: Vec<u64> = results
        .iter()
        .map(|r| r["index"].as_u64().expect("index"))
        .collect();
    assert_eq!(indices, expected.collect::<Vec<_>>());
}

on_both_stores! {
async fn square_over_1000_items_in_order_from_results_and_events(backend: Backend) {
    let app = TestApp::spawn_on(backend, &[]).await;
    let id = app
        .submit(
            json!({"function": "square", "items": (0..1000).collect::<Vec<_>>(), "chunksize": 7}),
        )
        .await;
    let events = app.events(&id, "", None).await;

    let results: Vec<Value> = events
        .iter()
        .filter(|e| e.event == "result")
        .map(|e| e.data.clone())
        .collect();
    assert_indices_in_order(&results, 0..1000);
    for (event, result) in events.iter().filter(|e| e.event == "result").zip(&results) {
        assert_eq!(
            event.id.as_deref(),
            Some(result["index"].to_string().as_str())
        );
        let i = result["index"].as_i64().unwrap();
        assert_eq!(result["value"], json!(i * i));
    }
    let progress: Vec<&Value> = events
        .iter()
        .filter(|e| e.event == "progress")
        .map(|e| &e.data)
        .collect();
    assert!(!progress.is_empty());
    for pair in progress.windows(2) {
        assert!(
            pair[1]["done"].as_u64() >= pair[0]["done"].as_u64(),
            "progress went back: {pair:?}"
        );
    }
    let last = progress.last().unwrap();
    assert_eq!(
        (last["done"].as_u64(), last["total"].as_u64()),
        (Some(1000), Some(1000))
    );
    let end = events.last().expect("events");
    assert_eq!(end.event, "end");
    assert_eq!(end.data["status"], "completed");
    assert_eq!(end.data["chunksize"], 7);

    let results = app.results(&id).await;
    assert_indices_in_order(&results, 0..1000);
    assert!(
        results
            .iter()
            .all(|r| r["value"] == json!(r["index"].as_i64().unwrap().pow(2)))
    );
    let job = app.job(&id).await;
    assert_eq!(
        (
            job["status"].as_str(),
            job["done"].as_u64(),
            job["failed"].as_u64()
        ),
        (Some("completed"), Some(1000), Some(0))
    );
    assert!(job["started_at"].is_string() && job["finished_at"].is_string());
}
}

on_both_stores! {
/// A job's times are in order: created, started (its first chunk sent), finished. One-item
/// jobs exercise the store's folding of a start into the record of the job's only chunk.
async fn a_jobs_times_are_in_order(backend: Backend) {
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;
    let app = TestApp::spawn_on(backend, &[]).await;
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(app.submit(json!({"function": "square", "items": [i]})).await);
    }
    ids.push(app.submit(json!({"function": "square", "items": (0..50).collect::<Vec<_>>(), "chunksize": 3})).await);
    for id in &ids {
        let job = app.wait_job(id).await;
        assert_eq!(job["status"], "completed", "{job}");
        let time = |field: &str| {
            let text = job[field].as_str().unwrap_or_else(|| panic!("no {field} in {job}"));
            OffsetDateTime::parse(text, &Rfc3339).expect("an RFC 3339 time")
        };
        let (created, started, finished) =
            (time("created_at"), time("started_at"), time("finished_at"));
        assert!(created <= started && started <= finished, "{job}");
    }
}
}

on_both_stores! {
async fn kwargs_like_partial_and_star_like_starmap(backend: Backend) {
    let app = TestApp::spawn_on(backend, &[]).await;
    let pow = app
        .submit(json!({"function": "pow", "items": [1, 2, 3], "kwargs": {"exp": 3}}))
        .await;
    let add = app
        .submit(json!({"function": "add", "items": [[1, 2], [10, 20], ["a", "b"]], "star": true}))
        .await;
    app.wait_job(&pow).await;
    app.wait_job(&add).await;
    let values = |results: Vec<Value>| {
        results
            .into_iter()
            .map(|r| r["value"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        values(app.results(&pow).await),
        vec![json!(1), json!(8), json!(27)]
    );
    assert_eq!(
        values(app.results(&add).await),
        vec![json!(3), json!(30), json!("ab")]
    );
    let job = app.job(&pow).await;
    assert_eq!(job["kwargs"], json!({"exp": 3}));
}
}

on_both_stores! {
async fn item_errors_under_continue_complete_the_job(backend: Backend) {
    let app = TestApp::spawn_on(backend, &[]).await;
    let id = app
        .submit(json!({"function": "fail", "items": ["boom"], "metadata": {"team": "x"}}))
        .await;
    let job = app.wait_job(&id).await;
    assert_eq!(
        (
            job["status"].as_str(),
            job["done"].as_u64(),
            job["failed"].as_u64()
        ),
        (Some("completed"), Some(1), Some(1))
    );
    assert_eq!(job["metadata"], json!({"team": "x"}));
    let results = app.results(&id).await;
    assert_eq!(results[0]["error"]["type"], "ValueError");
    assert_eq!(results[0]["error"]["message"], "boom");

    // Wrong argument types are item errors; the other items still succeed.
    let id = app
        .submit(json!({"function": "square", "items": [2, "x", 4], "chunksize": 3}))
        .await;
    let job = app.wait_job(&id).await;
    assert_eq!(
        (job["status"].as_str(), job["failed"].as_u64()),
        (Some("completed"), Some(1))
    );
    let results = app.results(&id).await;
    assert_eq!(
        (results[0]["value"].as_i64(), results[2]["value"].as_i64()),
        (Some(4), Some(16))
    );
    assert_eq!(results[1]["error"]["type"], "TypeError");
}
}

on_both_stores! {
async fn fail_fast_fails_the_job_and_skips_remaining_chunks(backend: Backend) {
    let app = TestApp::spawn_on(backend, &[]).await;
    let items: Vec<String> = (0..200).map(|i| format!("bad {i}")).collect();
    let id = app
        .submit(
            json!({"function": "fail", "items": items, "chunksize": 1, "on_error": "fail_fast"}),
        )
        .await;
    let job = app.wait_job(&id).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(
        job["error"].as_str().unwrap().contains("fail_fast"),
        "{job}"
    );
    let done = job["done"].as_u64().unwrap();
    assert!(
        (1..=10).contains(&done),
        "remaining chunks must not run, but {done} of 200 items ran"
    );
    assert_eq!(app.results(&id).await.len() as u64, done);
    // The pool still works.
    let next = app
        .submit(json!({"function": "square", "items": [3]}))
        .await;
    assert_eq!(app.wait_job(&next).await["status"], "completed");
}
}

on_both_stores! {
async fn bad_requests_are_problem_documents(backend: Backend) {
    let app = TestApp::spawn_on(backend, &["--max-body-bytes", "2000"]).await;
    let post_raw = |body: &'static str| {
        app.client
            .post(format!("{}/v1/jobs", app.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases = [
        (
            post_raw(r#"{"function": "nope", "items": [1]}"#)
                .await
                .unwrap(),
            422,
            "unknown_function",
        ),
        (
            post_raw(r#"{"function": "square", "items": [1"#)
                .await
                .unwrap(),
            400,
            "invalid_request",
        ),
        (
            post_raw(r#"{"function": "square", "items": 5}"#)
                .await
                .unwrap(),
            400,
            "invalid_request",
        ),
        (
            post_raw(r#"{"function": "square", "items": [1], "chunksize": -1}"#)
                .await
                .unwrap(),
            400,
            "invalid_request",
        ),
        (
            post_raw(r#"{"function": "add", "items": [1], "star": true}"#)
                .await
                .unwrap(),
            400,
            "invalid_request",
        ),
        (
            post_raw(r#"{"function": "square", "items": [1], "chunk_size": 2}"#)
                .await
                .unwrap(),
            400,
            "invalid_request",
        ),
        (
            app.post_job(&json!({"function": "square", "items": vec![12345; 1000]}))
                .await,
            413,
            "payload_too_large",
        ),
        (
            app.get("/v1/jobs/0190a4b2-0000-7000-8000-000000000000")
                .await,
            404,
            "job_not_found",
        ),
        (
            app.get("/v1/jobs/not-an-id/results").await,
            404,
            "job_not_found",
        ),
        (app.get("/v1/jobs?limit=0").await, 400, "invalid_request"),
        (app.get("/v1/nowhere").await, 404, "not_found"),
        (
            app.client
                .put(format!("{}/v1/pool", app.url))
                .send()
                .await
                .unwrap(),
            405,
            "method_not_allowed",
        ),
        (
            app.client
                .post(format!("{}/v1/jobs", app.url))
                .body("{}")
                .send()
                .await
                .unwrap(),
            415,
            "unsupported_media_type",
        ),
    ];
    for (response, status, code) in cases {
        assert_eq!(response.status(), status, "expected {code}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], code, "{problem}");
        assert_eq!(problem["status"], status);
        assert!(
            problem["title"].is_string()
                && problem["detail"].is_string()
                && problem["type"].is_string()
        );
    }
}
}

on_both_stores! {
async fn sse_resumes_after_last_event_id_without_gap_or_duplicate(backend: Backend) {
    let app = TestApp::spawn_on(backend, &[]).await;
    let id = app
        .submit(
            json!({"function": "echo", "items": (0..1000).collect::<Vec<_>>(), "chunksize": 13}),
        )
        .await;
    let events = app.events(&id, "", Some(499)).await;
    let results: Vec<Value> = events
        .iter()
        .filter(|e| e.event == "result")
        .map(|e| e.data.clone())
        .collect();
    assert_indices_in_order(&results, 500..1000);
    let events = app.events(&id, "?after=997", None).await;
    let results: Vec<Value> = events
        .iter()
        .filter(|e| e.event == "result")
        .map(|e| e.data.clone())
        .collect();
    assert_indices_in_order(&results, 998..1000);
}
}

on_both_stores! {
async fn completion_order_and_progress_only_streams(backend: Backend) {
    let app = TestApp::spawn_on(backend, &[]).await;
    let id = app
        .submit(
            json!({"function": "square", "items": (0..300).collect::<Vec<_>>(), "chunksize": 10}),
        )
        .await;
    let events = app.events(&id, "?order=completion", None).await;
    let results: Vec<&common::SseEvent> = events.iter().filter(|e| e.event == "result").collect();
    let mut indices: Vec<u64> = results
        .iter()
        .map(|e| e.data["index"].as_u64().unwrap())
        .collect();
    let ids: Vec<String> = results.iter().map(|e| e.id.clone().unwrap()).collect();
    assert_eq!(
        ids,
        (0..300).map(|i| i.to_string()).collect::<Vec<_>>(),
        "completion ids count up"
    );
    indices.sort();
    assert_eq!(indices, (0..300).collect::<Vec<_>>());
    // Resume in completion order: exactly the rest.
    let rest = app.events(&id, "?order=completion&after=249", None).await;
    assert_eq!(rest.iter().filter(|e| e.event == "result").count(), 50);

    let events = app.events(&id, "?results=false", None).await;
    assert!(events.iter().all(|e| e.event != "result"));
    assert_eq!(events.last().unwrap().event, "end");
    assert_eq!(events.iter().rev().nth(1).unwrap().data["done"], 300);
}
}

on_both_stores! {
async fn cancel_stops_running_workers_and_the_pool_goes_on(backend: Backend) {
    let app = TestApp::spawn_on(backend, &[]).await;
    let id = app
        .submit(json!({"function": "sleep", "items": vec![30; 20], "chunksize": 1}))
        .await;
    let busy = app.wait_workers("busy").await;

    let started = Instant::now();
    let response = app.post(&format!("/v1/jobs/{id}/cancel")).await;
    assert_eq!(response.status(), 200);
    let job = app.wait_job(&id).await;
    assert_eq!(job["status"], "cancelled");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "cancel took {:?}",
        started.elapsed()
    );
    assert_eq!(job["done"], 0);
    assert!(
        wait_dead(&busy, Duration::from_secs(5)).await.is_empty(),
        "cancelled job's workers still run"
    );

    let next = app
        .submit(json!({"function": "square", "items": [1, 2, 3]}))
        .await;
    assert_eq!(app.wait_job(&next).await["status"], "completed");
    // Cancelling again changes nothing.
    let again: Value = app
        .post(&format!("/v1/jobs/{id}/cancel"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["status"], "cancelled");
}
}

on_both_stores! {
async fn a_crashing_worker_is_replaced_and_other_jobs_are_unaffected(backend: Backend) {
    let app = TestApp::spawn_on(backend, &[]).await;
    let before = app.worker_pids().await;
    let other = app
        .submit(
            json!({"function": "square", "items": (0..2000).collect::<Vec<_>>(), "chunksize": 5}),
        )
        .await;
    let crash = app.submit(json!({"function": "crash", "items": [7]})).await;
    let job = app.wait_job(&crash).await;
    assert_eq!(
        (job["status"].as_str(), job["failed"].as_u64()),
        (Some("completed"), Some(1))
    );
    let results = app.results(&crash).await;
    assert_eq!(results[0]["error"]["type"], "worker_exited");
    assert!(
        results[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exit code 7"),
        "{}",
        results[0]
    );

    let other = app.wait_job(&other).await;
    assert_eq!(
        (
            other["status"].as_str(),
            other["done"].as_u64(),
            other["failed"].as_u64()
        ),
        (Some("completed"), Some(2000), Some(0))
    );
    let pids = app.wait_workers("idle").await;
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|&p| pid_alive(p)), "{pids:?}");
    let pool = app.pool().await;
    assert_ne!(pids, before, "the crashed worker was replaced");
    assert!(
        pool["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["restarts"].as_u64().unwrap())
            .sum::<u64>()
            >= 1
    );
}
}

on_both_stores! {
async fn small_job_is_not_stuck_behind_a_big_one(backend: Backend) {
    let app = TestApp::spawn_on(backend, &[]).await;
    let big = app
        .submit(json!({"function": "sleep", "items": vec![0.002; 5000], "chunksize": 5}))
        .await;
    app.wait_any_busy().await;
    let small = app
        .submit(json!({"function": "square", "items": [1, 2, 3]}))
        .await;
    assert_eq!(app.wait_job(&small).await["status"], "completed");
    let big_job = app.job(&big).await;
    assert_eq!(
        big_job["status"], "running",
        "the small job finished long before the big one"
    );
    assert!(big_job["done"].as_u64().unwrap() < 5000);
    app.post(&format!("/v1/jobs/{big}/cancel")).await;
}
}

on_both_stores! {
async fn priority_runs_first(backend: Backend) {
    let app = TestApp::spawn_on(backend, &["--workers", "1"]).await;
    let blocker = app
        .submit(json!({"function": "sleep", "items": [0.3, 0.3, 0.3], "chunksize": 1}))
        .await;
    let low = app
        .submit(json!({"function": "sleep", "items": [0.01, 0.01], "chunksize": 1, "priority": 0}))
        .await;
    let high = app
        .submit(json!({"function": "sleep", "items": [0.01], "priority": 10}))
        .await;
    let high = app.wait_job(&high).await;
    let low = app.wait_job(&low).await;
    assert!(
        high["finished_at"].as_str() < low["finished_at"].as_str(),
        "high {high} low {low}"
    );
    app.wait_job(&blocker).await;
}
}

on_both_stores! {
async fn long_poll_list_delete_and_empty_jobs(backend: Backend) {
    let app = TestApp::spawn_on(backend, &[]).await;
    let slow = app
        .submit(json!({"function": "sleep", "items": [0.5]}))
        .await;
    let response = app
        .client
        .delete(format!("{}/v1/jobs/{slow}", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    let job: Value = app
        .get(&format!("/v1/jobs/{slow}?wait=20"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        job["status"], "completed",
        "wait returns once the job is finished"
    );
    // Results with wait are Pool.map.
    let id = app
        .submit(json!({"function": "cube", "items": [1, 2]}))
        .await;
    let page: Value = app
        .get(&format!("/v1/jobs/{id}/results?wait=20"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        page["results"],
        json!([{"index": 0, "value": 1}, {"index": 1, "value": 8}])
    );
    assert_eq!(page["next_offset"], Value::Null);
    // NDJSON download.
    let ndjson = app.results_ndjson(&id).await;
    assert_eq!(ndjson.headers()["content-type"], "application/x-ndjson");
    let lines: Vec<Value> = ndjson
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        vec![
            json!({"index": 0, "value": 1}),
            json!({"index": 1, "value": 8})
        ]
    );

    let empty = app.submit(json!({"function": "square", "items": []})).await;
    assert_eq!(app.job(&empty).await["status"], "completed");

    let page: Value = app.get("/v1/jobs?limit=2").await.json().await.unwrap();
    let first: Vec<&str> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(first, vec![empty.as_str(), id.as_str()], "newest first");
    let cursor = page["next_cursor"].as_str().unwrap();
    let page: Value = app
        .get(&format!("/v1/jobs?limit=2&cursor={cursor}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["jobs"][0]["id"], slow.as_str());
    assert_eq!(page["next_cursor"], Value::Null);
    let page: Value = app
        .get("/v1/jobs?status=completed&limit=100")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["jobs"].as_array().unwrap().len(), 3);

    let response = app
        .client
        .delete(format!("{}/v1/jobs/{slow}", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(app.get(&format!("/v1/jobs/{slow}")).await.status(), 404);
    assert_eq!(
        app.get(&format!("/v1/jobs/{slow}/results")).await.status(),
        404
    );
    assert_eq!(orphan_chunks(&app.db).await, 0, "its chunks went with it");
}
}

on_both_stores! {
async fn pool_close_open_functions_health_and_docs(backend: Backend) {
    let app = TestApp::spawn_on(backend, &[]).await;
    let closed: Value = app.post("/v1/pool/close").await.json().await.unwrap();
    assert_eq!(closed["accepting"], false);
    let response = app
        .post_job(&json!({"function": "square", "items": [1]}))
        .await;
    assert_eq!(response.status(), 503);
    assert_eq!(
        response.json::<Value>().await.unwrap()["code"],
        "pool_closed"
    );
    let open: Value = app.post("/v1/pool/open").await.json().await.unwrap();
    assert_eq!(open["accepting"], true);
    app.submit(json!({"function": "square", "items": [1]}))
        .await;

    let pool = app.pool().await;
    assert_eq!(pool["size"], 2);
    assert_eq!(pool["workers"].as_array().unwrap().len(), 2);

    let functions: Value = app.get("/v1/functions").await.json().await.unwrap();
    let names: Vec<&str> = functions["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    for name in [
        "square",
        "cube",
        "pow",
        "add",
        "echo",
        "sleep",
        "fail",
        "crash",
        "sha256",
        "count_primes",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    assert!(
        functions["functions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| !f["doc"].as_str().unwrap().is_empty())
    );

    assert_eq!(app.get("/healthz").await.status(), 200);
    let ready: Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["status"], "ready");
    let spec: Value = app.get("/openapi.json").await.json().await.unwrap();
    assert!(spec["paths"]["/v1/jobs"].is_object());
    let docs = app.get("/docs/").await;
    assert_eq!(docs.status(), 200);
    assert!(
        docs.text().await.unwrap().contains("swagger"),
        "/docs serves the Swagger UI"
    );
}
}

on_both_stores! {
async fn idempotency_key_returns_the_same_job_for_the_same_body(backend: Backend) {
    let app = TestApp::spawn_on(backend, &[]).await;
    let post = |key: &'static str, body: Value| {
        app.client
            .post(format!("{}/v1/jobs", app.url))
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let body = json!({"function": "square", "items": [1, 2, 3]});
    let first = post("order-42", body.clone()).await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = post("order-42", body.clone()).await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(
        again.headers()["location"],
        format!("/v1/jobs/{}", first["id"].as_str().unwrap())
    );
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);

    let other = post(
        "order-42",
        json!({"function": "square", "items": [1, 2, 4]}),
    )
    .await
    .unwrap();
    assert_eq!(other.status(), 422);
    assert_eq!(
        other.json::<Value>().await.unwrap()["code"],
        "idempotency_key_reused"
    );
    let bad = post(" ", body.clone()).await.unwrap();
    assert_eq!(bad.status(), 400);

    let new = post("order-43", body).await.unwrap();
    assert_eq!(new.status(), 201);
    assert_ne!(new.json::<Value>().await.unwrap()["id"], first["id"]);
    let page: Value = app.get("/v1/jobs").await.json().await.unwrap();
    assert_eq!(
        page["jobs"].as_array().unwrap().len(),
        2,
        "the repeat created no job"
    );
}
}

on_both_stores! {
async fn a_chunk_never_waits_behind_a_long_item_while_a_worker_is_free(backend: Backend) {
    let app = TestApp::spawn_on(backend, &[]).await;
    let long = app
        .submit(json!({"function": "sleep", "items": [30]}))
        .await;
    app.wait_any_busy().await;
    let id = app
        .submit(json!({"function": "square", "items": (0..20).collect::<Vec<_>>(), "chunksize": 1}))
        .await;
    let job: Value = app
        .get(&format!("/v1/jobs/{id}?wait=10"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        job["status"],
        "completed",
        "{job}\nserver log:\n{}",
        app.log_text()
    );
    assert_eq!(
        app.post(&format!("/v1/jobs/{long}/cancel")).await.status(),
        200
    );
}
}

on_both_stores! {
async fn numbers_come_back_exactly_as_sent(backend: Backend) {
    let app = TestApp::spawn_on(backend, &[]).await;
    // Floats whose shortest form needs 17 digits, integers beyond 2^53, big exponents.
    let items = r#"[0.0010040000000000001, 0.30000000000000004, 9007199254740993, -1e-300, 1.7976931348623157e308, 5e-324]"#;
    let body = format!(r#"{{"function": "echo", "items": {items}}}"#);
    let response = app.post_body("application/json", body).await;
    assert_eq!(response.status(), 201);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.wait_job(&id).await;
    let text = app.results_ndjson(&id).await.text().await.unwrap();
    let values: Vec<&str> = text
        .lines()
        .map(|line| {
            let start = line.find("\"value\":").expect("a value") + 8;
            line[start..line.len() - 1].trim()
        })
        .collect();
    assert_eq!(
        values,
        [
            "0.0010040000000000001",
            "0.30000000000000004",
            "9007199254740993",
            "-1e-300",
            "1.7976931348623157e+308", // the same number, written as serde_json writes it
            "5e-324"
        ]
    );
}
}

on_both_stores! {
async fn one_poold_is_one_node_running_every_worker(backend: Backend) {
    let app = TestApp::spawn_on(backend, &["--workers", "2", "--node-name", "node-a"]).await;
    app.wait_workers("idle").await;
    let response = app.get("/v1/nodes").await;
    assert_eq!(response.status(), 200);
    let nodes: Value = response.json().await.unwrap();
    let nodes = nodes["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    let node = &nodes[0];
    assert_eq!(node["name"], "node-a");
    assert_eq!(node["address"], app.url.trim_start_matches("http://"));
    assert_eq!(node["workers"], 2);
    assert_eq!(node["state"], "alive");
    let id = node["id"].as_str().expect("id");
    assert!(uuid_like(id), "{id}");
    for field in ["started_at", "heartbeat_at"] {
        assert!(node[field].as_str().unwrap().ends_with('Z'), "{node}");
    }
    let pool = app.pool().await;
    let workers = pool["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    assert!(workers.iter().all(|w| w["node"] == id), "{pool}");

    // Without --node-name: the host name and the port.
    let unnamed = TestApp::spawn_on(backend, &[]).await;
    let nodes: Value = unnamed.get("/v1/nodes").await.json().await.unwrap();
    let port = unnamed.url.rsplit(':').next().unwrap();
    let name = nodes["nodes"][0]["name"].as_str().unwrap();
    assert!(
        name.ends_with(&format!(":{port}")) && name.len() > port.len() + 1,
        "{name}"
    );
}
}

fn uuid_like(text: &str) -> bool {
    text.len() == 36 && text.chars().filter(|&c| c == '-').count() == 4
}
