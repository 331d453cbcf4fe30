//! `poold healthcheck` (the image's `HEALTHCHECK`) against the real server: exit 0 only when
//! `/readyz` answers 200, exit 1 when not ready, not listening, or silent past the timeout.

mod common;

use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{BIN, TestApp};

fn healthcheck(args: &[&str], bind_env: Option<&str>) -> Output {
    let mut command = Command::new(BIN);
    command
        .arg("healthcheck")
        .args(args)
        .env_remove("POOLD_BIND");
    if let Some(bind) = bind_env {
        command.env("POOLD_BIND", bind);
    }
    command.output().expect("run poold healthcheck")
}

fn port(app: &TestApp) -> u16 {
    app.url.rsplit(':').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn ready_server_passes_by_flag_and_by_wildcard_env() {
    let app = TestApp::spawn().await;
    let port = port(&app);

    let out = healthcheck(&["--bind", &format!("127.0.0.1:{port}")], None);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("200"),
        "{out:?}"
    );

    // The container sets POOLD_BIND=0.0.0.0:8080; the check reaches it on loopback.
    let out = healthcheck(&[], Some(&format!("0.0.0.0:{port}")));
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test]
async fn listening_but_not_ready_fails() {
    let dir = tempfile::tempdir().unwrap();
    // `cat` never says hello, so no worker is ever ready and /readyz answers 503.
    let app = TestApp::launch(
        &dir.path().join("poold.db"),
        &["--workers", "1", "--worker-command", "cat"],
    );
    assert_eq!(app.get("/readyz").await.status(), 503);
    let out = healthcheck(&["--bind", &format!("127.0.0.1:{}", port(&app))], None);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("503"),
        "{out:?}"
    );
}

#[tokio::test]
async fn stopped_server_fails() {
    let mut app = TestApp::spawn().await;
    let bind = format!("127.0.0.1:{}", port(&app));
    assert!(healthcheck(&["--bind", &bind], None).status.success());
    app.terminate_cleanly();
    let out = healthcheck(&["--bind", &bind], None);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

#[test]
fn silent_server_fails_within_the_timeout() {
    // Accepts the connection (the kernel does, via the backlog) but never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let bind = silent.local_addr().unwrap().to_string();
    let started = Instant::now();
    let out = healthcheck(&["--bind", &bind, "--timeout", "0.5"], None);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/readyz"),
        "{out:?}"
    );
    // Bounded: a hung server must not hang Docker's health check.
    assert!(started.elapsed() < Duration::from_secs(10), "{out:?}");
}
