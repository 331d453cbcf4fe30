//! Test fixture: starts the real `poold` binary on a free loopback port with a temporary
//! SQLite file (or a fresh PostgreSQL database, [`postgres`]) and real worker processes, and
//! talks to it over HTTP. One method per endpoint. [`on_both_stores!`] runs a test against
//! each backend.
#![allow(dead_code)] // each test binary uses a different subset

pub mod postgres;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_poold");

/// The server binary the tests run: this build's, or `POOLD_TEST_BIN` (to run the same tests
/// against another build, e.g. to see a new test fail on an older version).
pub fn bin() -> String {
    std::env::var("POOLD_TEST_BIN").unwrap_or_else(|_| BIN.to_string())
}

/// The store a test's server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Turn `async fn name(backend: Backend) { … }` into the function and a module `name` of two
/// tests, `name::sqlite` and `name::postgres`, that run it against each store (the PostgreSQL
/// one skips, saying why, where PostgreSQL is not installed; see [`postgres::available`]).
#[macro_export]
macro_rules! on_both_stores {
    ($(#[$meta:meta])* async fn $name:ident($backend:ident: Backend $(,)?) $body:block) => {
        $(#[$meta])*
        async fn $name($backend: $crate::common::Backend) $body

        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name($crate::common::Backend::Sqlite).await
            }

            #[tokio::test]
            async fn postgres() {
                if $crate::common::postgres::available() {
                    super::$name($crate::common::Backend::Postgres).await
                }
            }
        }
    };
}

pub struct TestApp {
    pub url: String,
    pub client: reqwest::Client,
    pub child: Child,
    /// The `--database` it runs on: a SQLite file, or a `postgres://` URL.
    pub db: PathBuf,
    pub log: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: Value,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    /// Start poold with extra `serve` arguments (2 workers and a free port unless they say
    /// otherwise).
    pub async fn spawn_with(args: &[&str]) -> Self {
        Self::spawn_with_env(args, &[]).await
    }

    /// Start poold with extra `serve` arguments and environment variables (which its
    /// workers inherit, e.g. `PYTHONPATH`).
    pub async fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("poold.db");
        let mut app = Self::launch_with_env(&db, args, env);
        app.wait_ready().await;
        app._dir = Some(dir);
        app
    }

    /// Start poold on `backend` (a temporary SQLite file or a fresh PostgreSQL database) with
    /// extra `serve` arguments, as [`TestApp::spawn_with`].
    pub async fn spawn_on(backend: Backend, args: &[&str]) -> Self {
        match backend {
            Backend::Sqlite => Self::spawn_with(args).await,
            Backend::Postgres => {
                let url = postgres::database_url().await;
                Self::start(Path::new(&url), args).await
            }
        }
    }

    /// Start poold on an existing database (a file, or a `postgres://` URL; to test restarts)
    /// and wait until it is ready.
    pub async fn start(db: &Path, args: &[&str]) -> Self {
        let app = Self::launch(db, args);
        app.wait_ready().await;
        app
    }

    /// Start poold and return once it listens, ready or not.
    pub fn launch(db: &Path, args: &[&str]) -> Self {
        Self::launch_with_env(db, args, &[])
    }

    fn launch_with_env(db: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let log = if db.to_str().is_some_and(|d| d.starts_with("postgres://")) {
            postgres::log_dir().join(format!("poold-{}.log", uuid_like()))
        } else {
            db.with_extension(format!("{}.log", uuid_like()))
        };
        let mut command = Command::new(bin());
        command.args(["serve", "--database"]).arg(db);
        if !args.contains(&"--bind") {
            command.args(["--bind", "127.0.0.1:0"]);
        }
        if !args.contains(&"--workers") {
            command.args(["--workers", "2"]);
        }
        let mut child = command
            .args(args)
            .envs(env.iter().copied())
            .env("POOLD_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start poold");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let url = line
            .trim()
            .strip_prefix("poold listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "unexpected first line {line:?}; log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_string();
        TestApp {
            url,
            client: reqwest::Client::new(),
            child,
            db: db.to_path_buf(),
            log,
            _dir: None,
        }
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = self.client.get(format!("{}/readyz", self.url)).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "poold not ready in time; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send `Authorization: Bearer <token>` with every request from now on.
    pub fn use_token(&mut self, token: &str) {
        let mut headers = reqwest::header::HeaderMap::new();
        let value = format!("Bearer {token}").parse().expect("header value");
        headers.insert(reqwest::header::AUTHORIZATION, value);
        self.client = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .expect("client");
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("GET")
    }

    pub async fn post(&self, path: &str) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.url))
            .send()
            .await
            .expect("POST")
    }

    pub async fn post_job(&self, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/jobs", self.url))
            .json(body)
            .send()
            .await
            .expect("POST /v1/jobs")
    }

    /// `POST /v1/jobs` with a body as given (a JSON text, or NDJSON lines) and its content type.
    pub async fn post_body(
        &self,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/jobs", self.url))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("POST /v1/jobs")
    }

    /// Submit a job and return its id, asserting 201.
    pub async fn submit(&self, body: Value) -> String {
        let response = self.post_job(&body).await;
        let status = response.status();
        let job: Value = response.json().await.expect("job JSON");
        assert_eq!(status, 201, "submit {body}: {job}");
        job["id"].as_str().expect("job id").to_string()
    }

    pub async fn job(&self, id: &str) -> Value {
        let response = self.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(response.status(), 200);
        response.json().await.expect("job JSON")
    }

    /// Long-poll until the job is finished (bounded).
    pub async fn wait_job(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let job: Value = self
                .get(&format!("/v1/jobs/{id}?wait=10"))
                .await
                .json()
                .await
                .expect("job JSON");
            if ["completed", "failed", "cancelled"].contains(&job["status"].as_str().unwrap_or(""))
            {
                return job;
            }
            assert!(Instant::now() < deadline, "job {id} did not finish: {job}");
        }
    }

    /// Every result of a job, following `next_offset` pages.
    pub async fn results(&self, id: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut offset = 0;
        loop {
            let page: Value = self
                .get(&format!("/v1/jobs/{id}/results?offset={offset}"))
                .await
                .json()
                .await
                .expect("page");
            let results = page["results"].as_array().expect("results array");
            all.extend(results.iter().cloned());
            match page["next_offset"].as_u64() {
                Some(next) if !results.is_empty() => offset = next,
                _ => return all,
            }
        }
    }

    /// `GET /v1/jobs/{id}/results` with `Accept: application/x-ndjson`: every result, a line each.
    pub async fn results_ndjson(&self, id: &str) -> reqwest::Response {
        self.client
            .get(format!("{}/v1/jobs/{id}/results", self.url))
            .header("accept", "application/x-ndjson")
            .send()
            .await
            .expect("GET results as NDJSON")
    }

    /// Read an SSE stream to its end (bounded by a deadline).
    pub async fn events(&self, id: &str, query: &str, last_event_id: Option<u64>) -> Vec<SseEvent> {
        let mut request = self
            .client
            .get(format!("{}/v1/jobs/{id}/events{query}", self.url));
        if let Some(k) = last_event_id {
            request = request.header("Last-Event-ID", k.to_string());
        }
        let response = request.send().await.expect("GET events");
        assert_eq!(response.status(), 200);
        let mut body = String::new();
        let mut stream = response.bytes_stream();
        let read = async {
            while let Some(chunk) = stream.next().await {
                body.push_str(std::str::from_utf8(&chunk.expect("stream chunk")).expect("utf-8"));
            }
        };
        tokio::time::timeout(Duration::from_secs(120), read)
            .await
            .expect("event stream ended in time");
        parse_sse(&body)
    }

    pub async fn pool(&self) -> Value {
        self.get("/v1/pool").await.json().await.expect("pool JSON")
    }

    pub async fn worker_pids(&self) -> Vec<u32> {
        let pool = self.pool().await;
        pool["workers"]
            .as_array()
            .expect("workers")
            .iter()
            .filter_map(|w| w["pid"].as_u64())
            .map(|p| p as u32)
            .collect()
    }

    /// Wait until some worker is running a chunk.
    pub async fn wait_any_busy(&self) {
        self.wait_pool("a busy worker", |p| {
            p["workers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w["state"] == "busy")
        })
        .await;
    }

    /// Wait until every worker is in `state` (`idle`, `busy`); returns their pids.
    pub async fn wait_workers(&self, state: &str) -> Vec<u32> {
        let pool = self
            .wait_pool(&format!("all workers {state}"), |p| {
                p["workers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|w| w["state"] == state)
            })
            .await;
        pool["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["pid"].as_u64().unwrap() as u32)
            .collect()
    }

    /// Wait for a condition on the pool, with a deadline.
    pub async fn wait_pool(&self, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let pool = self.pool().await;
            if ok(&pool) {
                return pool;
            }
            assert!(Instant::now() < deadline, "pool never got {what}: {pool}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Send SIGTERM and wait for the process to exit (bounded).
    pub fn terminate(&mut self) -> ExitStatus {
        signal(self.child.id(), "TERM");
        self.wait_exit(Duration::from_secs(20))
    }

    /// SIGTERM, and assert that poold shut down cleanly (exit code 0), showing its log if not.
    pub fn terminate_cleanly(&mut self) {
        let status = self.terminate();
        assert!(
            status.success(),
            "poold exited with {status} on SIGTERM; log:\n{}",
            self.log_text()
        );
    }

    pub fn kill9(&mut self) -> ExitStatus {
        signal(self.child.id(), "KILL");
        self.wait_exit(Duration::from_secs(5))
    }

    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "poold did not exit in time; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// poold whose workers run the Python SDK's worker (`python -m poold.worker TARGETS`, as users
/// run it), with more `serve` arguments.
pub async fn spawn_sdk_workers(targets: &str, args: &[&str]) -> TestApp {
    let command = format!("{} -m poold.worker {targets}", python());
    let mut all = vec!["--worker-command", &command];
    all.extend_from_slice(args);
    TestApp::spawn_with_env(&all, &[("PYTHONPATH", &python_sdk_dir())]).await
}

/// The SDK's package directory (`python/`), for `PYTHONPATH`.
pub fn python_sdk_dir() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .display()
        .to_string()
}

pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name} {pid}");
}

/// Alive and not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

/// Wait until none of these pids is alive (bounded); returns the ones still alive.
pub async fn wait_dead(pids: &[u32], limit: Duration) -> Vec<u32> {
    let deadline = Instant::now() + limit;
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|&p| pid_alive(p)).collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn parse_sse(body: &str) -> Vec<SseEvent> {
    body.split("\n\n")
        .filter_map(|block| {
            let (mut event, mut id, mut data) = (None, None, String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            let event = event?;
            Some(SseEvent {
                event,
                id,
                data: serde_json::from_str(&data).unwrap_or(json!(null)),
            })
        })
        .collect()
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Run SQL on a stopped server's database: the state an older version, or an operator, left.
pub async fn sqlite_exec(db: &Path, sql: &str) {
    use sqlx::{ConnectOptions, Connection};
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .connect()
        .await
        .expect("open the database");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    conn.close().await.expect("close the database");
}

/// The real Python interpreter (not a version-manager shim, which is slow to start).
pub fn python() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "python3 failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Write a worker script (Python, speaking the worker protocol) into `dir` and return the
/// `--worker-command` that runs it.
pub fn python_worker(dir: &Path, name: &str, source: &str) -> String {
    let script = dir.join(name);
    std::fs::write(&script, source).expect("write worker script");
    format!("{} {}", python(), script.display())
}

/// Run a query that returns one row of one text column holding JSON (build it with
/// `json_object`/`json_group_array`) on a stopped server's database, and parse it: what poold
/// left on disk, e.g. a job's counters at the moment it was killed.
pub async fn sqlite_json(db: &Path, sql: &str) -> Value {
    use sqlx::{ConnectOptions, Connection};
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .connect()
        .await
        .expect("open the database");
    let (text,): (String,) = sqlx::query_as(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    conn.close().await.expect("close the database");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{sql} gave {text:?}: {e}"))
}

/// A database for [`TestApp::start`] on `backend` (to restart a server on it): a SQLite file
/// in a temporary directory (keep the directory while the file is used), or a fresh
/// PostgreSQL database.
pub async fn fresh_database(backend: Backend) -> (Option<tempfile::TempDir>, PathBuf) {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            let db = dir.path().join("poold.db");
            (Some(dir), db)
        }
        Backend::Postgres => (None, PathBuf::from(postgres::database_url().await)),
    }
}

/// A stopped server's stored counters of a job: `{"status", "done", "failed", "total"}`
/// (from either store).
pub async fn stored_job(db: &Path, id: &str) -> Value {
    if let Some(url) = db.to_str().filter(|d| d.starts_with("postgres://")) {
        return postgres::query_json(
            url,
            &format!(
                "select json_build_object('status', status, 'done', done, 'failed', failed,
                                          'total', total)::text
                 from jobs where id = '{id}'"
            ),
        )
        .await;
    }
    sqlite_json(
        db,
        &format!(
            "select json_object('status', status, 'done', done, 'failed', failed, 'total', total)
             from jobs where id = '{id}'"
        ),
    )
    .await
}

/// How many stored chunks belong to no stored job (on either store, running or stopped): a
/// deleted job's chunks must go with it.
pub async fn orphan_chunks(db: &Path) -> i64 {
    let sql = "select count(*) from chunks where job not in (select key from jobs)";
    let count = if let Some(url) = db.to_str().filter(|d| d.starts_with("postgres://")) {
        postgres::query_json(url, &format!("select ({sql})::text")).await
    } else {
        sqlite_json(db, &format!("select cast(({sql}) as text)")).await
    };
    count.as_i64().expect("a count")
}

impl TestApp {
    /// Read an SSE stream until `enough` says so (or it ends), then drop the connection:
    /// the events a client saw before it went away.
    pub async fn events_until(
        &self,
        id: &str,
        query: &str,
        enough: impl Fn(&[SseEvent]) -> bool,
    ) -> Vec<SseEvent> {
        let response = self
            .client
            .get(format!("{}/v1/jobs/{id}/events{query}", self.url))
            .send()
            .await
            .expect("GET events");
        assert_eq!(response.status(), 200);
        let mut body = String::new();
        let mut stream = response.bytes_stream();
        let read = async {
            while let Some(chunk) = stream.next().await {
                body.push_str(std::str::from_utf8(&chunk.expect("stream chunk")).expect("utf-8"));
                // Only whole events: up to the last blank line.
                let whole = body.rfind("\n\n").map_or("", |end| &body[..end + 2]);
                let events = parse_sse(whole);
                if enough(&events) {
                    return events;
                }
            }
            parse_sse(&body)
        };
        tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .expect("enough events in time")
    }
}
