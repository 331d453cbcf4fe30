//! Workers other than the built-in one, through `--worker-command`: the minimal Python worker
//! from docs/worker-protocol.md, and a worker that speaks another protocol version.

mod common;

use std::time::{Duration, Instant};

use common::TestApp;
use serde_json::{Value, json};

/// The minimal worker of docs/worker-protocol.md, verbatim.
fn doc_worker() -> String {
    let doc = include_str!("../docs/worker-protocol.md");
    let start = doc.find("```python\n").expect("python block") + "```python\n".len();
    let end = start + doc[start..].find("```").expect("block end");
    doc[start..end].to_string()
}

#[tokio::test]
async fn the_documented_minimal_python_worker_runs_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("my_worker.py");
    std::fs::write(&script, doc_worker()).unwrap();
    let command = format!("python3 {}", script.display());
    let app = TestApp::spawn_with(&["--worker-command", &command]).await;
    let functions: Value = app.get("/v1/functions").await.json().await.unwrap();
    assert_eq!(functions["functions"][0]["name"], "square");
    let id = app
        .submit(json!({"function": "square", "items": [1, 2, 3, "x"], "chunksize": 2}))
        .await;
    let job = app.wait_job(&id).await;
    assert_eq!(
        (job["status"].as_str(), job["failed"].as_u64()),
        (Some("completed"), Some(1))
    );
    let results = app.results(&id).await;
    assert_eq!(
        results[..3],
        [
            json!({"index": 0, "value": 1}),
            json!({"index": 1, "value": 4}),
            json!({"index": 2, "value": 9})
        ]
    );
    assert_eq!(results[3]["error"]["type"], "TypeError");
}

#[tokio::test]
async fn a_worker_speaking_another_protocol_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("v2_worker.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho '{\"type\":\"hello\",\"protocol\":2,\"pid\":'$$',\"functions\":[]}'\nexec cat >/dev/null\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let app = TestApp::launch(
        &dir.path().join("poold.db"),
        &[
            "--workers",
            "1",
            "--worker-command",
            script.to_str().unwrap(),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let problem = loop {
        let response = app.get("/readyz").await;
        assert_eq!(
            response.status(),
            503,
            "a refused worker must not make poold ready"
        );
        let problem: Value = response.json().await.unwrap();
        if problem["detail"]
            .as_str()
            .unwrap()
            .contains("protocol version 2")
        {
            break problem;
        }
        assert!(Instant::now() < deadline, "no clear error: {problem}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(problem["code"], "not_ready");
    let pool = app.pool().await;
    assert!(
        pool["last_error"]
            .as_str()
            .unwrap()
            .contains("poold speaks 1"),
        "{pool}"
    );
    // Refused workers are retried with a back-off, not in a tight loop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pool = app.pool().await;
    assert!(
        pool["workers"][0]["restarts"].as_u64().unwrap() <= 5,
        "{pool}"
    );
}
