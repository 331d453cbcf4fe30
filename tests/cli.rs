//! The `poold` command-line client end to end: the real binary as the client, against the real
//! server. The tests' stderr is a pipe, so the client shows plain progress lines, no bar.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{BIN, TestApp};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Run `poold ARGS` against `app`, with `stdin` as its input (bounded in time).
async fn poold(app: &TestApp, args: &[&str], stdin: Option<&str>) -> Run {
    let mut command = tokio::process::Command::new(BIN);
    command
        .args(args)
        .env("POOLD_URL", &app.url)
        .env_remove("POOLD_API_TOKEN")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("start the client");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input.as_bytes()).await.expect("write stdin");
        drop(pipe);
    }
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("poold {args:?} did not finish in time"))
        .expect("client output");
    Run {
        code: output.status.code().expect("exit code"),
        stdout: String::from_utf8(output.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(output.stderr).expect("utf-8 stderr"),
    }
}

fn ndjson(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).expect("an NDJSON line"))
        .collect()
}

fn squares(n: i64) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"index": i, "value": i * i}))
        .collect()
}

fn assert_no_control_characters(run: &Run) {
    for (name, text) in [("stdout", &run.stdout), ("stderr", &run.stderr)] {
        assert!(
            !text.contains('\x1b') && !text.contains('\r'),
            "{name} has control characters: {text:?}"
        );
    }
}

#[tokio::test]
async fn submit_from_a_file_follows_and_writes_every_result_in_order() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let items = dir.path().join("items.jsonl");
    let lines: String = (0..500).map(|i| format!("{i}\n")).collect();
    std::fs::write(&items, lines).unwrap();
    let output = dir.path().join("results.ndjson");
    let run = poold(
        &app,
        &[
            "submit",
            "square",
            "--items-file",
            items.to_str().unwrap(),
            "--chunksize",
            "7",
            "--follow",
            "--output",
            output.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let written = std::fs::read_to_string(&output).unwrap();
    assert_eq!(ndjson(&written), squares(500));
    assert!(
        run.stderr.contains("completed: 500/500 done, 0 failed"),
        "{}",
        run.stderr
    );
    assert_no_control_characters(&run);
}

#[tokio::test]
async fn submit_reads_a_json_array_from_stdin_and_can_write_results_to_stdout() {
    let app = TestApp::spawn().await;
    let run = poold(
        &app,
        &[
            "submit",
            "pow",
            "--kwargs",
            r#"{"exp": 3}"#,
            "--output",
            "-",
            "-",
        ],
        Some("[\n  1,\n  2,\n  3\n]\n"),
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        ndjson(&run.stdout),
        vec![
            json!({"index": 0, "value": 1}),
            json!({"index": 1, "value": 8}),
            json!({"index": 2, "value": 27})
        ]
    );

    // Without --follow, the job id alone, for scripts.
    let run = poold(&app, &["submit", "square", "-"], Some("4\n5\n")).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let id = run.stdout.trim();
    let job = app.wait_job(id).await;
    assert_eq!(
        (job["total"].as_u64(), job["status"].as_str()),
        (Some(2), Some("completed"))
    );
}

#[tokio::test]
async fn item_failures_and_failed_jobs_make_the_exit_status_non_zero() {
    let app = TestApp::spawn().await;
    let run = poold(
        &app,
        &["submit", "fail", "--items", r#"["x", "y"]"#, "--follow"],
        None,
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("2/2 done, 2 failed"), "{}", run.stderr);

    let run = poold(
        &app,
        &[
            "submit",
            "fail",
            "--items",
            r#"["x", "y", "z"]"#,
            "--chunksize",
            "1",
            "--on-error",
            "fail_fast",
            "--follow",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(" failed: ") && run.stderr.contains("fail_fast"),
        "the job failed: {}",
        run.stderr
    );

    let run = poold(
        &app,
        &["submit", "square", "--items", "[2]", "--follow"],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
}

#[tokio::test]
async fn progress_without_a_terminal_is_plain_lines() {
    let app = TestApp::spawn().await;
    let items = serde_json::to_string(&vec![0.25; 12]).unwrap();
    let run = poold(
        &app,
        &[
            "submit",
            "sleep",
            "--items",
            &items,
            "--chunksize",
            "1",
            "--follow",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_no_control_characters(&run);
    // 12 × 0.25 s on 2 workers lasts over a second: more than one periodic line.
    let progress = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("progress: "))
        .count();
    assert!(progress >= 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("completed: 12/12 done, 0 failed"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn watch_follows_a_running_job_to_its_end() {
    let app = TestApp::spawn().await;
    let id = app
        .submit(json!({"function": "sleep", "items": vec![0.2; 10], "chunksize": 1}))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while app.job(&id).await["status"] != "running" {
        assert!(std::time::Instant::now() < deadline, "the job never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let run = poold(&app, &["watch", &id, "--output", "-"], None).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("completed: 10/10 done, 0 failed"),
        "{}",
        run.stderr
    );
    let results = ndjson(&run.stdout);
    let expected: Vec<Value> = (0..10).map(|i| json!({"index": i, "value": 0.2})).collect();
    assert_eq!(results, expected);
    assert_no_control_characters(&run);
}

#[tokio::test]
async fn cancel_stops_a_job_and_watching_it_then_fails() {
    let app = TestApp::spawn().await;
    let id = app
        .submit(json!({"function": "sleep", "items": vec![5; 6], "chunksize": 1}))
        .await;
    app.wait_any_busy().await;
    let run = poold(&app, &["cancel", &id], None).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains(&format!("job {id} cancelled")),
        "{}",
        run.stdout
    );
    assert_eq!(app.job(&id).await["status"], "cancelled");
    app.wait_workers("idle").await;

    let run = poold(&app, &["watch", &id], None).await;
    assert_eq!(
        run.code, 1,
        "a cancelled job is not a success: {}",
        run.stderr
    );
}

#[tokio::test]
async fn jobs_status_results_pool_and_functions_show_the_server_state() {
    let app = TestApp::spawn().await;
    let id = app
        .submit(json!({"function": "square", "items": [1, 2, 3]}))
        .await;
    app.wait_job(&id).await;

    let run = poold(&app, &["jobs"], None).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let header = run.stdout.lines().next().unwrap();
    assert!(
        header.starts_with("ID") && header.contains("STATUS"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains(&id) && run.stdout.contains("3/3"),
        "{}",
        run.stdout
    );

    let run = poold(&app, &["status", &id], None).await;
    assert!(run.stdout.contains("completed") && run.stdout.contains("3/3 done, 0 failed"));
    let run = poold(&app, &["status", &id, "--json"], None).await;
    let job: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(job["id"], id.as_str());

    let run = poold(&app, &["results", &id], None).await;
    let expected: Vec<Value> = (0..3)
        .map(|i| json!({"index": i, "value": (i + 1) * (i + 1)}))
        .collect();
    assert_eq!(ndjson(&run.stdout), expected);

    let run = poold(&app, &["pool"], None).await;
    assert!(
        run.stdout.starts_with("2 workers, accepting jobs"),
        "{}",
        run.stdout
    );
    assert_eq!(
        run.stdout.lines().count(),
        4,
        "summary, header, 2 workers: {}",
        run.stdout
    );

    let run = poold(&app, &["functions"], None).await;
    assert!(
        run.stdout.lines().any(|l| l.starts_with("square ")),
        "{}",
        run.stdout
    );
}

#[tokio::test]
async fn errors_name_the_problem_and_exit_with_status_3() {
    let app = TestApp::spawn().await;
    let run = poold(
        &app,
        &["status", "0193c2a1-0000-7000-8000-000000000000"],
        None,
    )
    .await;
    assert_eq!(run.code, 3);
    assert!(run.stderr.contains("job_not_found"), "{}", run.stderr);

    let run = poold(&app, &["submit", "nope", "--items", "[1]"], None).await;
    assert_eq!(run.code, 3);
    assert!(run.stderr.contains("unknown_function"), "{}", run.stderr);

    let run = poold(&app, &["submit", "square", "-"], Some("1\n{oops\n")).await;
    assert_eq!(run.code, 3);
    assert!(run.stderr.contains("line 2"), "{}", run.stderr);

    let mut offline = poold(&app, &["jobs", "--url", "http://127.0.0.1:9"], None).await;
    assert_eq!(offline.code, 3);
    offline.stderr.make_ascii_lowercase();
    assert!(
        offline.stderr.contains("cannot reach poold"),
        "{}",
        offline.stderr
    );
}

/// A TCP proxy in front of the server whose open connections the test can cut.
struct Proxy {
    url: String,
    cut: tokio::sync::watch::Sender<u32>,
    connections: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

async fn proxy(app: &TestApp) -> Proxy {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let upstream = app.url.trim_start_matches("http://").to_string();
    let (cut, cuts) = tokio::sync::watch::channel(0u32);
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let upstream = upstream.clone();
            let mut cuts = cuts.clone();
            cuts.borrow_and_update();
            tokio::spawn(async move {
                let mut server = tokio::net::TcpStream::connect(upstream).await.unwrap();
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    _ = cuts.changed() => {} // dropping both ends cuts the connection
                }
            });
        }
    });
    Proxy {
        url,
        cut,
        connections,
    }
}

#[tokio::test]
async fn watch_re_attaches_after_a_dropped_connection_without_losing_or_repeating_results() {
    let app = TestApp::spawn().await;
    let proxy = proxy(&app).await;
    let id = app
        .submit(json!({"function": "sleep", "items": vec![0.2; 30], "chunksize": 1}))
        .await;
    let mut command = tokio::process::Command::new(BIN);
    command
        .args(["watch", &id, "--output", "-", "--url", &proxy.url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().unwrap();
    // Cut the stream once the client is attached and the job a fifth done (30 × 0.2 s on 2
    // workers leaves it at least 2 s more).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while app.job(&id).await["done"].as_u64().unwrap() < 6
        || proxy.connections.load(std::sync::atomic::Ordering::SeqCst) == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the job did not progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.cut.send_modify(|n| *n += 1);
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("watch ended in time")
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("re-attaching"),
        "the connection was cut: {stderr}"
    );
    let results = ndjson(&String::from_utf8(output.stdout).unwrap());
    let expected: Vec<Value> = (0..30).map(|i| json!({"index": i, "value": 0.2})).collect();
    assert_eq!(results, expected);
}

#[tokio::test]
async fn submit_passes_max_concurrency_and_status_shows_it() {
    let app = TestApp::spawn().await;
    let args = [
        "submit",
        "square",
        "--items",
        "[1, 2, 3]",
        "--max-concurrency",
        "1",
    ];
    let run = poold(&app, &args, None).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let id = run.stdout.trim().to_string();
    let job = app.wait_job(&id).await;
    assert_eq!(
        (job["max_concurrency"].as_u64(), job["done"].as_u64()),
        (Some(1), Some(3))
    );
    let run = poold(&app, &["status", &id], None).await;
    assert!(run.stdout.contains("max_concurrency 1\n"), "{}", run.stdout);
    assert!(
        run.stdout.contains("codec           json\n"),
        "{}",
        run.stdout
    );
}
