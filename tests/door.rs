//! Bad input at the door (the hardening issue, items 1–3, 9, 12, 13): each request here once
//! crashed, wedged or hung poold, or got a 500. Now each gets a 4xx naming what is wrong, and a
//! canary job still completes after it.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::TestApp;
use serde_json::{Value, json};

/// A 400 whose detail names `what`.
async fn assert_rejected(app: &TestApp, body: Value, what: &str) {
    let response = app.post_job(&body).await;
    let status = response.status();
    let problem: Value = response.json().await.expect("problem JSON");
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["code"], "invalid_request", "{problem}");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(what),
        "detail {detail:?} should name {what:?}"
    );
}

/// A small job submitted after the bad request still completes: the pool is alive.
async fn assert_canary_completes(app: &TestApp) {
    let id = app
        .submit(json!({"function": "square", "items": [1, 2, 3]}))
        .await;
    let job = app.wait_job(&id).await;
    assert_eq!(job["status"], "completed", "canary: {job}");
    assert_eq!(
        app.results(&id).await,
        [
            json!({"index": 0, "value": 1}),
            json!({"index": 1, "value": 4}),
            json!({"index": 2, "value": 9})
        ]
    );
}

fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

#[tokio::test]
async fn item_1_an_unbounded_timeout_is_a_400_and_the_pool_survives() {
    let app = TestApp::spawn().await;
    for timeout in [
        json!(1e300),
        json!(1e20),
        json!(604801),
        json!(0),
        json!(-1),
    ] {
        assert_rejected(
            &app,
            json!({"function": "square", "items": [1, 2, 3], "timeout_s": timeout}),
            "timeout_s",
        )
        .await;
    }
    // The bound itself is fine, even with the largest chunk: no overflow when it is multiplied.
    let id = app
        .submit(json!({"function": "square", "items": [1, 2], "timeout_s": 604800, "chunksize": 1000000}))
        .await;
    assert_eq!(app.wait_job(&id).await["status"], "completed");
    assert_canary_completes(&app).await;
}

#[tokio::test]
async fn item_1_an_unbounded_task_timeout_flag_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr");
    let mut child = std::process::Command::new(common::bin())
        .args(["serve", "--bind", "127.0.0.1:0", "--task-timeout", "1e300"])
        .arg("--database")
        .arg(dir.path().join("poold.db"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("run poold");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("poold started with --task-timeout 1e300");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(stderr.contains("--task-timeout"), "{stderr}");
}

#[tokio::test]
async fn item_1_a_stored_job_poold_cannot_run_is_failed_at_start_not_crash_looped() {
    let mut app = TestApp::spawn().await;
    let id = app
        .submit(json!({"function": "sleep", "items": [30], "chunksize": 1}))
        .await;
    app.wait_any_busy().await;
    app.terminate_cleanly();
    // As a version without the bound would have stored it.
    let db = app.db.clone();
    common::sqlite_exec(
        &db,
        &format!("update jobs set timeout_s = 1e300, status = 'running' where id = '{id}'"),
    )
    .await;

    let app = TestApp::start(&db, &[]).await;
    let job = app.wait_job(&id).await;
    assert_eq!(job["status"], "failed", "{job}");
    let error = job["error"].as_str().unwrap_or_default();
    assert!(error.contains("timeout_s"), "{error}");
    assert_canary_completes(&app).await;
}

#[tokio::test]
async fn item_2_items_nested_too_deep_are_a_400_naming_the_item() {
    let app = TestApp::spawn().await;
    for depth in [101, 130, 1001, 100_000] {
        let body = format!(r#"{{"function": "echo", "items": [0, {}]}}"#, nested(depth));
        let response = app.post_body("application/json", body).await;
        let status = response.status();
        let problem: Value = response.json().await.unwrap();
        assert_eq!(status, 400, "depth {depth}: {problem}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains("item 1"), "depth {depth}: {detail}");
    }
    for field in ["kwargs", "metadata"] {
        let body = format!(
            r#"{{"function": "echo", "items": [1], "{field}": {{"a": {}}}}}"#,
            nested(200)
        );
        let response = app.post_body("application/json", body).await;
        assert_eq!(response.status(), 400, "{field}");
    }
    // At the limit, echo gives the item back whole.
    let item: Value = serde_json::from_str(&nested(100)).unwrap();
    let id = app
        .submit(json!({"function": "echo", "items": [item.clone()]}))
        .await;
    assert_eq!(app.wait_job(&id).await["status"], "completed");
    assert_eq!(app.results(&id).await[0]["value"], item);
    assert_canary_completes(&app).await;
}

#[tokio::test]
async fn item_2_a_deep_ndjson_line_fails_its_upload_with_a_400_naming_the_line() {
    let app = TestApp::spawn().await;
    let body = format!("{{\"function\": \"echo\"}}\n1\n{}\n2\n", nested(300));
    let response = app.post_body("application/x-ndjson", body).await;
    let status = response.status();
    let problem: Value = response.json().await.unwrap();
    assert_eq!(status, 400, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("line 3"),
        "{problem}"
    );
    assert_canary_completes(&app).await;
}

#[tokio::test]
async fn item_3_a_chunk_of_a_million_items_is_cut_by_bytes_and_completes() {
    // The issue's case: 1,000,000 strings of 60 bytes in "one" chunk, whose result line (73 MB)
    // was over the protocol's 64 MiB limit, so the job ran forever. Chunks now also end at
    // 256 KiB of items, so no task or result line comes near the limit.
    let app = TestApp::spawn().await;
    let items: Vec<String> = (0..1_000_000).map(|i| format!("{i:060}")).collect();
    let id = app
        .submit(json!({"function": "echo", "items": items, "chunksize": 1000000}))
        .await;
    let job = app.wait_job(&id).await;
    assert_eq!(
        (
            job["status"].as_str(),
            job["done"].as_u64(),
            job["failed"].as_u64()
        ),
        (Some("completed"), Some(1_000_000), Some(0)),
        "{job}"
    );
    let page: Value = app
        .get(&format!("/v1/jobs/{id}/results?offset=654321&limit=2"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        page["results"],
        json!([
            {"index": 654321, "value": format!("{:060}", 654321)},
            {"index": 654322, "value": format!("{:060}", 654322)},
        ])
    );
}

#[tokio::test]
async fn item_9_a_declared_body_over_the_limit_is_answered_before_it_is_sent() {
    let app = TestApp::spawn_with(&["--max-body-bytes", "1048576"]).await;
    let address = app.url.trim_start_matches("http://").to_string();
    let answer = tokio::task::spawn_blocking(move || {
        let mut tcp = TcpStream::connect(address).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let head = "POST /v1/jobs HTTP/1.1\r\nhost: poold\r\ncontent-type: application/json\r\n\
                    content-length: 1073741824\r\n\r\n";
        tcp.write_all(head.as_bytes()).unwrap();
        tcp.write_all(&[b' '; 4096]).unwrap();
        let started = Instant::now();
        let mut answer = vec![0; 4096];
        let n = tcp.read(&mut answer).unwrap_or(0);
        (
            String::from_utf8_lossy(&answer[..n]).into_owned(),
            started.elapsed(),
        )
    })
    .await
    .unwrap();
    let (answer, took) = answer;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    assert_canary_completes(&app).await;
}

#[tokio::test]
async fn item_12_event_ids_and_offsets_never_wrap() {
    let app = TestApp::spawn().await;
    let id = app
        .submit(json!({"function": "square", "items": [1, 2, 3]}))
        .await;
    app.wait_job(&id).await;
    let events = |query: String, header: Option<&'static str>| {
        let mut request = app
            .client
            .get(format!("{}/v1/jobs/{id}/events{query}", app.url));
        if let Some(h) = header {
            request = request.header("Last-Event-ID", h);
        }
        request.send()
    };
    for (query, header) in [
        (String::new(), Some("18446744073709551615")),
        (String::new(), Some("9223372036854775807")),
        ("?after=18446744073709551615".to_string(), None),
    ] {
        let response = events(query.clone(), header).await.unwrap();
        assert_eq!(response.status(), 400, "{query} {header:?}");
    }
    // The largest id is fine: nothing comes after it but the end.
    let all = app.events(&id, "?after=9223372036854775806", None).await;
    assert!(all.iter().all(|e| e.event != "result"), "{all:?}");
    assert_eq!(all.last().unwrap().event, "end");

    let page = app
        .get(&format!("/v1/jobs/{id}/results?offset=9223372036854775808"))
        .await;
    assert_eq!(page.status(), 400);
    let page: Value = app
        .get(&format!("/v1/jobs/{id}/results?offset=9223372036854775807"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["results"], json!([]), "{page}");
}

#[tokio::test]
async fn item_13_the_bearer_scheme_is_case_insensitive() {
    let mut app = TestApp::spawn_with(&["--api-token", "s3cret"]).await;
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let response = app
            .client
            .get(format!("{}/v1/pool", app.url))
            .header("authorization", format!("{scheme} s3cret"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{scheme}");
    }
    let response = app
        .client
        .get(format!("{}/v1/pool", app.url))
        .header("authorization", "bearer wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    app.use_token("s3cret");
    assert_canary_completes(&app).await;
}
