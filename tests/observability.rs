//! `/metrics` and logs, against the real binary: counters move with real work, and a worker's
//! stderr lines name the worker and the job.

mod common;

use std::time::{Duration, Instant};

use common::TestApp;
use serde_json::{Value, json};

/// The value of the sample whose name-and-labels text is exactly `series`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

async fn metrics(app: &TestApp) -> String {
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    response.text().await.unwrap()
}

#[tokio::test]
async fn metrics_count_items_jobs_workers_requests_and_streams() {
    let mut app = TestApp::spawn_with(&["--api-token", "t"]).await;
    let before = metrics(&app).await; // open without the token
    assert_eq!(
        sample(&before, r#"poold_jobs{status="completed"}"#),
        Some(0.0)
    );

    app.use_token("t");
    let failing = app
        .submit(json!({"function": "fail", "items": ["a", "b"]}))
        .await;
    let squares = app
        .submit(json!({"function": "square", "items": (0..10).collect::<Vec<_>>()}))
        .await;
    let crash = app.submit(json!({"function": "crash", "items": [5]})).await;
    let sleeper = app
        .submit(json!({"function": "sleep", "items": [30]}))
        .await;
    for id in [&failing, &squares, &crash] {
        let done = app.wait_job(id).await;
        assert_eq!(done["status"], "completed", "{done}");
    }
    // An open event stream on the sleeping job, once its start is stored (the start of a chunk
    // is written after it is sent to the worker, without waiting).
    let stream = app.get(&format!("/v1/jobs/{sleeper}/events")).await;
    assert_eq!(stream.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = metrics(&app).await;
        if sample(&text, "poold_sse_subscribers") == Some(1.0)
            && sample(&text, r#"poold_jobs{status="running"}"#) == Some(1.0)
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no SSE subscriber counted, or the sleeping job not running:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for (series, value) in [
        (r#"poold_items_total{outcome="ok"}"#, 10.0),
        (r#"poold_items_total{outcome="error"}"#, 2.0),
        (r#"poold_items_total{outcome="worker_exited"}"#, 1.0),
        (r#"poold_jobs{status="completed"}"#, 3.0),
        (r#"poold_jobs{status="running"}"#, 1.0),
        ("poold_queued_items", 1.0),
        (
            r#"poold_http_requests_total{route="/v1/jobs",status="201"}"#,
            4.0,
        ),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series}\n{text}");
    }
    for (series, at_least) in [
        ("poold_oldest_unfinished_job_age_seconds", 0.0),
        ("poold_item_duration_seconds_count", 12.0),
        (r#"poold_worker_exits_total{reason="exit"}"#, 1.0),
        (
            r#"poold_http_requests_total{route="/metrics",status="200"}"#,
            1.0,
        ),
    ] {
        assert!(
            sample(&text, series).is_some_and(|v| v >= at_least),
            "{series} < {at_least}\n{text}"
        );
    }
    drop(stream);
    assert_eq!(
        app.post(&format!("/v1/jobs/{sleeper}/cancel"))
            .await
            .status(),
        200
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = metrics(&app).await;
        let stopped = sample(&text, r#"poold_worker_exits_total{reason="cancel"}"#);
        if stopped == Some(1.0) && sample(&text, "poold_sse_subscribers") == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "cancel not counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn worker_stderr_lines_name_the_worker_and_the_job_in_json_logs() {
    let dir = tempfile::tempdir().unwrap();
    let command = common::python_worker(
        dir.path(),
        "chatty.py",
        r#"
import json, os, sys
print(json.dumps({"type": "hello", "protocol": 1, "pid": os.getpid(),
                  "functions": [{"name": "chat", "doc": ""}]}), flush=True)
for line in sys.stdin:
    task = json.loads(line)
    for item in task["items"]:
        print(f"chatting about {item}", file=sys.stderr, flush=True)
    print(json.dumps({"type": "result", "id": task["id"],
                      "results": [{"value": i} for i in task["items"]]}), flush=True)
"#,
    );
    let app = TestApp::spawn_with(&[
        "--workers",
        "1",
        "--log-format",
        "json",
        "--worker-command",
        &command,
    ])
    .await;
    let id = app
        .submit(json!({"function": "chat", "items": ["cats"]}))
        .await;
    app.wait_job(&id).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let line: Value = loop {
        let log = app.log_text();
        let found = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| {
                l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("chatting about cats"))
            });
        if let Some(found) = found {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "no stderr line in the log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(line["fields"]["job.id"], id.as_str(), "{line}");
    assert_eq!(line["fields"]["worker"], 0, "{line}");
    assert!(line["fields"]["pid"].as_u64().is_some(), "{line}");
}
