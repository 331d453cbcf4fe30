//! Access control, admission limits and retention, against the real binary.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{TestApp, orphan_chunks};
use serde_json::{Value, json};

on_both_stores! {
async fn the_api_token_guards_v1_and_leaves_health_open(backend: Backend) {
    let mut app = TestApp::spawn_on(backend, &["--api-token", "s3cret token"]).await;
    let anonymous = app.client.clone();
    let get = |client: &reqwest::Client, path: &str, token: Option<&str>| {
        let mut request = client.get(format!("{}{path}", app.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    for token in [None, Some("wrong"), Some("s3cret"), Some("s3cret token2")] {
        let response = get(&anonymous, "/v1/jobs", token).await.unwrap();
        assert_eq!(response.status(), 401, "token {token:?}");
        assert_eq!(
            response.headers()["www-authenticate"],
            r#"Bearer realm="poold""#
        );
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], "unauthorized");
    }
    let response = get(&anonymous, "/v1/jobs", Some("s3cret token"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    for open in ["/healthz", "/readyz", "/openapi.json"] {
        let response = get(&anonymous, open, None).await.unwrap();
        assert_eq!(response.status(), 200, "{open}");
    }

    // With the token, the whole API works.
    app.use_token("s3cret token");
    let id = app
        .submit(json!({"function": "square", "items": [1, 2, 3]}))
        .await;
    assert_eq!(app.wait_job(&id).await["done"], 3);
}
}

#[test]
fn binding_beyond_loopback_needs_a_token_or_an_explicit_opt_out() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(common::BIN)
        .args(["serve", "--bind", "0.0.0.0:0", "--database"])
        .arg(dir.path().join("poold.db"))
        .env_remove("POOLD_API_TOKEN")
        .env_remove("POOLD_ALLOW_UNAUTHENTICATED")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("POOLD_API_TOKEN") && stderr.contains("--allow-unauthenticated"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("poold.db").exists(),
        "refused before touching anything"
    );
}

on_both_stores! {
async fn beyond_max_queued_items_new_jobs_get_429_with_retry_after(backend: Backend) {
    let app = TestApp::spawn_on(backend, &["--workers", "1", "--max-queued-items", "10"]).await;
    let first = app
        .submit(json!({"function": "sleep", "items": vec![10; 8]}))
        .await;
    let response = app
        .post_job(&json!({"function": "square", "items": [1, 2, 3]}))
        .await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "5");
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "too_many_queued_items");
    assert!(
        problem["detail"].as_str().unwrap().contains("limit of 10"),
        "{problem}"
    );
    // What fits is accepted, and cancelling frees room.
    let second = app
        .submit(json!({"function": "square", "items": [1, 2]}))
        .await;
    assert_eq!(
        app.post(&format!("/v1/jobs/{first}/cancel")).await.status(),
        200
    );
    assert_eq!(app.wait_job(&second).await["status"], "completed");
    app.submit(json!({"function": "square", "items": vec![1; 10]}))
        .await;
}
}

on_both_stores! {
async fn finished_jobs_are_deleted_after_the_retention_period(backend: Backend) {
    let app = TestApp::spawn_on(backend, &["--retention", "1s"]).await;
    let finished = app
        .submit(json!({"function": "square", "items": [1, 2]}))
        .await;
    app.wait_job(&finished).await;
    let running = app.submit(json!({"function": "sleep", "items": [4]})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = app.get(&format!("/v1/jobs/{finished}")).await.status();
        if status == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "job was never deleted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        app.get(&format!("/v1/jobs/{finished}/results"))
            .await
            .status(),
        404
    );
    assert_eq!(orphan_chunks(&app.db).await, 0, "its chunks went with it");
    // A job that is still running is kept, and kept for the period after it finishes.
    assert_eq!(app.job(&running).await["status"], "running");
    assert_eq!(app.wait_job(&running).await["status"], "completed");
    assert_eq!(app.get(&format!("/v1/jobs/{running}")).await.status(), 200);
}
}
