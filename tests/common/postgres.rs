//! A throwaway PostgreSQL for the tests: ONE server per test binary, started on first use from
//! the server binaries of Debian's `postgresql` package (`/usr/lib/postgresql/<version>/bin`,
//! the highest version), and a fresh database per test ([`database_url`]).
//!
//! The server runs from a temporary directory (`initdb`, then `postgres` on a free loopback
//! port, fsync off: nothing here must survive a crash), as `nobody` when the tests run as root
//! (PostgreSQL refuses to run as root). It gets a parent-death signal, so it dies with the test
//! process however that ends; the directories of servers whose test process is gone are
//! removed by the next run. Without the binaries the PostgreSQL tests skip, saying how to
//! enable them ([`available`]) — except under `CI=true`, where that is a failure.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The running server: its port (the data directory is removed by a later run).
struct Server {
    port: u16,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();

/// Where Debian's server binaries are, the highest version first.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// Whether the PostgreSQL tests can run: false (with a message) when the server binaries are
/// missing; under `CI=true` their absence fails the test instead.
pub fn available() -> bool {
    if bin_dir().is_some() {
        return true;
    }
    let message = "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin; \
                   `apt-get install postgresql` to run the PostgreSQL tests";
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{message} (required under CI=true)");
    }
    eprintln!("skipped: {message}");
    false
}

/// A fresh, empty database on the shared server, as a `postgres://` URL for `--database`.
pub async fn database_url() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let server = SERVER
        .get_or_init(start)
        .as_ref()
        .unwrap_or_else(|e| panic!("PostgreSQL did not start: {e}"));
    let name = format!("t_{}", NEXT.fetch_add(1, Ordering::SeqCst));
    let admin = format!("postgres://poold@127.0.0.1:{}/postgres", server.port);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match create_database(&admin, &name).await {
            Ok(()) => break,
            // Until the server accepts connections.
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot create database {name}: {e}"),
        }
    }
    format!("postgres://poold@127.0.0.1:{}/{name}", server.port)
}

async fn create_database(admin: &str, name: &str) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(admin).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create database {name}")))
        .execute(&mut conn)
        .await?;
    conn.close().await
}

/// Start the server from a thread that lives as long as the test process: the parent-death
/// signal fires when the thread that spawned the child ends, not only the process.
fn start() -> Result<Server, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let started = start_here();
        let failed = started.is_err();
        let _ = tx.send(started);
        if !failed {
            loop {
                std::thread::park();
            }
        }
    });
    rx.recv()
        .map_err(|_| "the thread starting PostgreSQL died".to_string())?
}

fn start_here() -> Result<Server, String> {
    let bin = bin_dir().ok_or("no PostgreSQL server binaries")?;
    remove_stale_directories();
    let dir = log_dir();
    let data = dir.join("data");
    std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
    // PostgreSQL refuses to run as root: then it runs as `nobody`, which owns its directory.
    let user = if id("-u", None)? == 0 {
        let (uid, gid) = (id("-u", Some("nobody"))?, id("-g", Some("nobody"))?);
        for path in [&dir, &data] {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", path.display()))?;
        }
        Some((uid, gid))
    } else {
        None
    };
    let run = |program: &str| {
        let mut command = Command::new(bin.join(program));
        if let Some((uid, gid)) = user {
            command.uid(uid).gid(gid);
        }
        command
    };
    let initdb = run("initdb")
        .args([
            "--auth=trust",
            "--username=poold",
            "--encoding=UTF8",
            "--no-sync",
        ])
        .arg("-D")
        .arg(&data)
        .stdout(Stdio::null())
        .output()
        .map_err(|e| format!("initdb: {e}"))?;
    if !initdb.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        ));
    }
    let port = free_port()?;
    let log = std::fs::File::create(dir.join("postgres.log")).map_err(|e| e.to_string())?;
    let mut command = run("postgres");
    command
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-k"])
        .arg(&dir)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=300",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // SAFETY: the closure only calls prctl(2), which is async-signal-safe. It runs after the
    // uid change (which would clear the signal), just before exec.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGQUIT)
                .map_err(std::io::Error::from)
        });
    }
    let mut child: Child = command.spawn().map_err(|e| format!("postgres: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
            return Err(format!("postgres exited ({status}): {log}"));
        }
        if Instant::now() > deadline {
            return Err("postgres did not listen within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The child is never waited for: it lives as long as this process.
    std::mem::forget(child);
    Ok(Server { port })
}

/// The server's directory (its data, socket and log), where the tests' poold logs go too: it
/// is removed by the first run after this process ends.
pub fn log_dir() -> PathBuf {
    std::env::temp_dir().join(format!("poold-pg-{}", std::process::id()))
}

/// `id -u` (this process's user) or `id -g nobody` and the like.
fn id(flag: &str, user: Option<&str>) -> Result<u32, String> {
    let out = Command::new("id")
        .arg(flag)
        .args(user)
        .output()
        .map_err(|e| format!("id: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|e| format!("id {flag} {user:?}: {e}"))
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

/// Directories of servers whose test process has ended.
fn remove_stale_directories() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("poold-pg-"))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
