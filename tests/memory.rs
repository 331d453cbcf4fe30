//! The memory check (ignored by default: it takes a while): a real server with the built-in
//! workers ingests 1,000,000 items over NDJSON, runs them, then streams every result as NDJSON
//! and over SSE; its peak RSS (VmHWM) must stay under [`BOUND_KB`]. Run it with
//!
//! ```sh
//! cargo test --release --test memory -- --ignored --nocapture
//! ```

mod common;

use std::time::{Duration, Instant};

use common::TestApp;
use futures::StreamExt;
use serde_json::{Value, json};

/// Items in the job; `POOLD_MEMORY_ITEMS` overrides it (a multiple of 10,000), to see that the
/// peak does not grow with the job.
fn items() -> u64 {
    std::env::var("POOLD_MEMORY_ITEMS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000)
}
/// The stated bound on the server's peak resident memory: 60 MiB.
const BOUND_KB: u64 = 60 * 1024;

fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

/// Count complete lines of a streamed body that satisfy `count`, keeping only a partial line.
async fn count_lines(response: reqwest::Response, mut count: impl FnMut(&str)) {
    let mut body = response.bytes_stream();
    let mut carry = Vec::new();
    while let Some(bytes) = body.next().await {
        carry.extend_from_slice(&bytes.expect("body"));
        let mut start = 0;
        while let Some(end) = carry[start..].iter().position(|&b| b == b'\n') {
            count(std::str::from_utf8(&carry[start..start + end]).expect("utf-8"));
            start += end + 1;
        }
        carry.drain(..start);
    }
}

#[tokio::test]
#[ignore = "slow; run with: cargo test --release --test memory -- --ignored --nocapture"]
async fn peak_rss_stays_bounded_ingesting_and_streaming_a_million_items() {
    let items = items();
    let app = TestApp::spawn_with(&["--max-items-per-job", &items.to_string()]).await;
    let pid = app.pid();
    let before = peak_rss_kb(pid);

    // Upload: the items are generated as the body is sent, 10,000 lines at a time.
    let started = Instant::now();
    let spec = json!({"function": "square", "chunksize": 1000}).to_string() + "\n";
    let pieces = futures::stream::iter(0..items / 10_000).map(|piece| {
        let lines: String = (piece * 10_000..(piece + 1) * 10_000)
            .map(|i| format!("{i}\n"))
            .collect();
        Ok::<_, std::io::Error>(lines)
    });
    let body = futures::stream::once(async { Ok(spec) }).chain(pieces);
    let response = app
        .post_body("application/x-ndjson", reqwest::Body::wrap_stream(body))
        .await;
    assert_eq!(response.status(), 201);
    let job: Value = response.json().await.unwrap();
    assert_eq!(job["total"], items);
    let id = job["id"].as_str().unwrap().to_string();
    let uploaded = started.elapsed();
    let after_ingest = peak_rss_kb(pid);

    let deadline = Instant::now() + Duration::from_secs(1200);
    let job = loop {
        let job = app.job(&format!("{id}?wait=30")).await;
        if job["status"] != "queued" && job["status"] != "running" {
            break job;
        }
        assert!(Instant::now() < deadline, "the job did not finish: {job}");
    };
    assert_eq!(
        (job["status"].as_str(), job["done"].as_u64()),
        (Some("completed"), Some(items))
    );
    let ran = started.elapsed();

    // Every result as NDJSON, in order.
    let response = app.results_ndjson(&id).await;
    let mut next = 0u64;
    count_lines(response, |line| {
        let result: Value = serde_json::from_str(line).expect("a result line");
        assert_eq!(result["index"], next);
        next += 1;
    })
    .await;
    assert_eq!(next, items);

    // Every result again over SSE (a replay of a finished job).
    let response = app
        .client
        .get(format!("{}/v1/jobs/{id}/events", app.url))
        .send()
        .await
        .unwrap();
    let mut results = 0u64;
    count_lines(response, |line| {
        if line == "event: result" {
            results += 1;
        }
    })
    .await;
    assert_eq!(results, items);

    let peak = peak_rss_kb(pid);
    println!(
        "{items} items: uploaded in {:.1}s, all run after {:.1}s, streamed back as NDJSON and SSE after {:.1}s",
        uploaded.as_secs_f64(),
        ran.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "server peak RSS (VmHWM): {before} kB after start, {after_ingest} kB after the upload, {peak} kB at the end (bound {BOUND_KB} kB)"
    );
    assert!(
        peak <= BOUND_KB,
        "peak RSS {peak} kB is over the bound of {BOUND_KB} kB"
    );
}

/// The hardening issue, item 8: a huge `chunksize` once made the server hold a whole NDJSON
/// upload as one chunk (725 MB for 80 MB of items). Chunks end at 1 MiB of items too, so the
/// bound holds whatever the chunksize.
#[tokio::test]
async fn ndjson_with_a_huge_chunksize_stays_within_the_bound() {
    const LINES: u64 = 400_000;
    let app = TestApp::spawn().await;
    let pid = app.pid();
    let spec = json!({"function": "echo", "chunksize": 1_000_000}).to_string() + "\n";
    let pieces = futures::stream::iter(0..LINES / 10_000).map(|piece| {
        let lines: String = (piece * 10_000..(piece + 1) * 10_000)
            .map(|i| format!("\"{i:098}\"\n"))
            .collect();
        Ok::<_, std::io::Error>(lines)
    });
    let body = futures::stream::once(async { Ok(spec) }).chain(pieces);
    let response = app
        .post_body("application/x-ndjson", reqwest::Body::wrap_stream(body))
        .await;
    assert_eq!(response.status(), 201);
    let job: Value = response.json().await.unwrap();
    let job = app.wait_job(job["id"].as_str().unwrap()).await;
    assert_eq!(
        (job["status"].as_str(), job["done"].as_u64()),
        (Some("completed"), Some(LINES)),
        "{job}"
    );
    let peak = peak_rss_kb(pid);
    println!("peak RSS {peak} kB for {LINES} lines of 100 bytes with chunksize 1000000");
    assert!(peak <= BOUND_KB, "peak RSS {peak} kB is over {BOUND_KB} kB");
}

/// The hardening issue, item 8: eight concurrent 61 MB JSON bodies once all sat in memory at
/// once (730 MB). Past `--max-buffered-bytes` a body is refused at once with 503.
#[tokio::test]
async fn concurrent_large_json_bodies_are_capped() {
    const BODY_MB: usize = 30;
    let app = TestApp::spawn_with(&[
        "--max-body-bytes",
        &(32 << 20).to_string(),
        "--max-buffered-bytes",
        &(64 << 20).to_string(),
    ])
    .await;
    let pid = app.pid();
    // ~30 MB of items: 300,000 strings of 100 bytes.
    let items: Vec<String> = (0..BODY_MB * 10_000).map(|i| format!("{i:098}")).collect();
    let body = json!({"function": "echo", "items": items}).to_string();
    let posts = (0..8).map(|_| {
        let body = body.clone();
        let client = app.client.clone();
        let url = format!("{}/v1/jobs", app.url);
        tokio::spawn(async move {
            let response = client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("POST");
            let status = response.status().as_u16();
            let retry = response.headers().contains_key("retry-after");
            let answer: Value = response.json().await.expect("JSON answer");
            (status, retry, answer)
        })
    });
    let answers = futures::future::join_all(posts).await;
    let mut created = Vec::new();
    let mut busy = 0;
    for answer in answers {
        let (status, retry, answer) = answer.unwrap();
        match status {
            201 => created.push(answer["id"].as_str().unwrap().to_string()),
            503 => {
                assert_eq!(answer["code"], "server_busy", "{answer}");
                assert!(retry, "a 503 carries Retry-After");
                busy += 1;
            }
            other => panic!("unexpected {other}: {answer}"),
        }
    }
    assert!(busy > 0, "no body was refused: all eight were held at once");
    assert!(!created.is_empty(), "no body got through");
    let peak = peak_rss_kb(pid);
    println!(
        "{} created, {busy} refused; peak RSS {peak} kB",
        created.len()
    );
    assert!(peak < 400 * 1024, "peak RSS {peak} kB");
    for id in created {
        let job = app.wait_job(&id).await;
        assert_eq!(job["status"], "completed", "{job}");
    }
}
