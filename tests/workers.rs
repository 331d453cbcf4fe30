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

    let mut command = std::process::Command::new(common::BIN);
    let db = dir.path().join("poold.db");
    let mut child = command
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--worker-command",
        ])
        .arg(&script)
        .arg("--database")
        .arg(&db)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let url = line
        .trim()
        .strip_prefix("poold listening on ")
        .unwrap()
        .to_string();
    let client = reqwest::Client::new();

    let deadline = Instant::now() + Duration::from_secs(20);
    let problem = loop {
        let response = client.get(format!("{url}/readyz")).send().await.unwrap();
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
    let pool: Value = client
        .get(format!("{url}/v1/pool"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        pool["last_error"]
            .as_str()
            .unwrap()
            .contains("poold speaks 1"),
        "{pool}"
    );
    // Refused workers are retried with a back-off, not in a tight loop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pool: Value = client
        .get(format!("{url}/v1/pool"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        pool["workers"][0]["restarts"].as_u64().unwrap() <= 5,
        "{pool}"
    );
    let _ = child.kill();
    let _ = child.wait();
}
