//! Command-line interface and configuration: every `serve` flag is also an environment
//! variable. Parsed once in `main`; `app::run` receives the result. The client subcommands'
//! flags live with the client, in `cli`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::pool::WorkerCommand;
pub use crate::store::DatabaseLocation;

#[derive(Debug, Parser)]
#[command(
    name = "poold",
    version,
    about = "Python's multiprocessing.Pool as a network service"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: CliCommand,
}

#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Run the HTTP service and its worker pool.
    Serve(Box<ServeArgs>),
    /// Run the built-in worker (spawned by `serve`; speaks the worker protocol on stdin/stdout).
    Worker,
    /// Exit 0 if the server answers `GET /readyz` with 200, else 1 (for container health checks).
    Healthcheck(HealthcheckArgs),
    #[command(flatten)]
    Client(crate::cli::ClientCommand),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "POOLD_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// The database: a SQLite file (created if missing) or a PostgreSQL URL
    /// (`postgres://USER@HOST:PORT/DB`).
    #[arg(long, env = "POOLD_DATABASE", default_value = "poold.db", value_parser = DatabaseParser)]
    pub database: DatabaseLocation,
    /// Worker processes [default: the number of CPUs]. 0 (PostgreSQL only): this node serves
    /// the API and the other nodes' workers run the jobs.
    #[arg(long, env = "POOLD_WORKERS")]
    pub workers: Option<usize>,
    /// Program (and arguments) to run as each worker [default: this binary's `worker`].
    #[arg(long, env = "POOLD_WORKER_COMMAND")]
    pub worker_command: Option<String>,
    /// Largest request body, in bytes.
    #[arg(long, env = "POOLD_MAX_BODY_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Most items in one job.
    #[arg(long, env = "POOLD_MAX_ITEMS_PER_JOB", default_value_t = 1_000_000)]
    pub max_items_per_job: usize,
    /// Most bytes of JSON request bodies held in memory at once, across all requests; past it
    /// a new JSON body gets 503 `server_busy` with `Retry-After` (at least `--max-body-bytes`).
    #[arg(long, env = "POOLD_MAX_BUFFERED_BYTES", default_value_t = 128 * 1024 * 1024)]
    pub max_buffered_bytes: usize,
    /// Most open client connections; past it a new connection gets 503 and is closed.
    #[arg(long, env = "POOLD_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers, and that an idle keep-alive
    /// connection stays open.
    #[arg(long, env = "POOLD_HEADER_TIMEOUT", default_value_t = 10.0)]
    pub header_timeout: f64,
    /// Seconds running chunks get to finish on shutdown before workers are stopped.
    #[arg(long, env = "POOLD_SHUTDOWN_GRACE", default_value_t = 5.0)]
    pub shutdown_grace: f64,
    /// Seconds between SIGTERM and SIGKILL when a worker is stopped.
    #[arg(long, env = "POOLD_KILL_GRACE", default_value_t = 2.0)]
    pub kill_grace: f64,
    /// Most items queued or running across all jobs; beyond it new jobs get 429 with
    /// `Retry-After`.
    #[arg(long, env = "POOLD_MAX_QUEUED_ITEMS", default_value_t = 10_000_000)]
    pub max_queued_items: u64,
    /// Default per-item time limit in seconds for jobs that set no `timeout_s` [default: none].
    #[arg(long, env = "POOLD_TASK_TIMEOUT")]
    pub task_timeout: Option<f64>,
    /// Replace a worker after it has run this many chunks, like Pool's `maxtasksperchild`
    /// [default: never].
    #[arg(long, env = "POOLD_MAX_TASKS_PER_WORKER")]
    pub max_tasks_per_worker: Option<u64>,
    /// Address-space limit of each worker process in MiB (RLIMIT_AS); a worker that dies over
    /// it fails its item as `out_of_memory` [default: none].
    #[arg(long, env = "POOLD_WORKER_MEMORY_MB")]
    pub worker_memory_mb: Option<u64>,
    /// Delete finished jobs and their results this long after they finished ("7d", "12h",
    /// "30m"; "0s" keeps them forever).
    #[arg(long, env = "POOLD_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub retention: Duration,
    /// Bearer token required on `/v1/*` (health, metrics and docs stay open).
    #[arg(long, env = "POOLD_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Allow binding a non-loopback address without `--api-token`.
    #[arg(long, env = "POOLD_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,
    /// This node's name in `GET /v1/nodes` [default: the host name and the port].
    #[arg(long, env = "POOLD_NODE_NAME")]
    pub node_name: Option<String>,
    /// Seconds a node's heartbeat may be silent before the other nodes sharing its
    /// PostgreSQL re-queue the chunks it was running (they run again: at least once). A node
    /// heartbeats every third of it.
    #[arg(long, env = "POOLD_NODE_LEASE", default_value_t = 10.0)]
    pub node_lease: f64,
    /// Log format.
    #[arg(long, env = "POOLD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Parses `--database` with errors that do not repeat the value (clap's own do: a URL may
/// hold a password).
#[derive(Clone)]
struct DatabaseParser;

impl clap::builder::TypedValueParser for DatabaseParser {
    type Value = DatabaseLocation;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<DatabaseLocation, clap::Error> {
        use clap::error::ErrorKind;
        let invalid = |kind, message: String| {
            clap::Error::raw(kind, format!("invalid --database: {message}\n")).with_cmd(cmd)
        };
        let text = value
            .to_str()
            .ok_or_else(|| invalid(ErrorKind::InvalidUtf8, "it is not valid UTF-8".into()))?;
        text.parse()
            .map_err(|e| invalid(ErrorKind::ValueValidation, e))
    }
}

impl ServeArgs {
    pub fn node_lease(&self) -> Duration {
        Duration::from_secs_f64(self.node_lease)
    }

    /// Worker processes; 0 only on PostgreSQL (see [`ServeArgs::check`]).
    pub fn pool_size(&self) -> usize {
        self.workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
    }

    /// Refuse settings that would be unsafe or meaningless, before anything starts.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.api_token.as_deref() == Some("") {
            bail!("--api-token / POOLD_API_TOKEN is set but empty");
        }
        if !self.bind.ip().is_loopback() && self.api_token.is_none() && !self.allow_unauthenticated
        {
            bail!(
                "refusing to listen on {} without an API token: set POOLD_API_TOKEN \
                 (or pass --allow-unauthenticated if the network is trusted)",
                self.bind
            );
        }
        if let Some(t) = self.task_timeout {
            crate::limits::check_timeout(t).map_err(|e| anyhow::anyhow!("--task-timeout: {e}"))?;
        }
        for (name, seconds) in [
            ("--shutdown-grace", self.shutdown_grace),
            ("--kill-grace", self.kill_grace),
        ] {
            if !(seconds.is_finite() && (0.0..=3600.0).contains(&seconds)) {
                bail!("{name} must be 0 to 3600 seconds, got {seconds}");
            }
        }
        if !(self.header_timeout.is_finite() && (0.1..=3600.0).contains(&self.header_timeout)) {
            bail!(
                "--header-timeout must be 0.1 to 3600 seconds, got {}",
                self.header_timeout
            );
        }
        if self.max_connections == 0 {
            bail!("--max-connections must be at least 1");
        }
        if self.workers == Some(0) && matches!(self.database, DatabaseLocation::Sqlite(_)) {
            bail!(
                "--workers 0 needs a PostgreSQL --database shared with nodes that have workers \
                 (on SQLite nothing would run the jobs)"
            );
        }
        if !(self.node_lease.is_finite() && (0.5..=3600.0).contains(&self.node_lease)) {
            bail!(
                "--node-lease must be 0.5 to 3600 seconds, got {}",
                self.node_lease
            );
        }
        if self.max_body_bytes == 0 || self.max_body_bytes > u32::MAX as usize {
            bail!(
                "--max-body-bytes must be 1 to {} bytes, got {}",
                u32::MAX,
                self.max_body_bytes
            );
        }
        if self.max_buffered_bytes < self.max_body_bytes {
            bail!(
                "--max-buffered-bytes ({}) must be at least --max-body-bytes ({})",
                self.max_buffered_bytes,
                self.max_body_bytes
            );
        }
        if self.max_tasks_per_worker == Some(0) {
            bail!("--max-tasks-per-worker must be at least 1");
        }
        if self.worker_memory_mb == Some(0) {
            bail!("--worker-memory-mb must be at least 1");
        }
        Ok(())
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs_f64(self.shutdown_grace)
    }

    pub fn kill_grace(&self) -> Duration {
        Duration::from_secs_f64(self.kill_grace)
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.header_timeout)
    }

    /// The worker command with its program resolved to a real executable, so no shell or
    /// `PATH` lookup happens per spawn.
    pub fn worker_command(&self) -> anyhow::Result<WorkerCommand> {
        let Some(line) = &self.worker_command else {
            let program = std::env::current_exe().context("cannot find poold's own executable")?;
            return Ok(WorkerCommand {
                program,
                args: vec!["worker".into()],
            });
        };
        let Some(words) = shlex::split(line) else {
            bail!("--worker-command {line:?} has unbalanced quotes");
        };
        let Some((program, args)) = words.split_first() else {
            bail!("--worker-command is empty");
        };
        let program = which::which(program)
            .with_context(|| format!("worker command {program:?} not found"))?;
        let program = real_python(program);
        Ok(WorkerCommand {
            program,
            args: args.to_vec(),
        })
    }
}

/// Version managers (pyenv, asdf) put a shell-script shim named `python3` first on `PATH`,
/// which costs tens of milliseconds per worker start. Ask such an interpreter once for the
/// real executable; anything else is used as found.
fn real_python(program: PathBuf) -> PathBuf {
    let is_python = program
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("python"));
    if !is_python {
        return program;
    }
    let asked = std::process::Command::new(&program)
        .args(["-c", "import sys; print(sys.executable)"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    match asked {
        Ok(out) if out.status.success() => {
            let real = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if real.is_file() { real } else { program }
        }
        _ => program,
    }
}

#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// The address poold serves on; a wildcard (`0.0.0.0`, `::`) is reached on loopback.
    #[arg(long, env = "POOLD_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// Seconds the whole check may take (connect, request, status line).
    #[arg(long, default_value_t = 3.0)]
    pub timeout: f64,
}

impl HealthcheckArgs {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout.max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::DatabaseLocation;
    use std::path::PathBuf;

    #[test]
    fn database_locations_are_a_sqlite_path_or_a_postgres_url() {
        let parse = |s: &str| s.parse::<DatabaseLocation>();
        assert_eq!(
            parse("poold.db"),
            Ok(DatabaseLocation::Sqlite(PathBuf::from("poold.db")))
        );
        assert_eq!(
            parse("/data/poold.db"),
            Ok(DatabaseLocation::Sqlite(PathBuf::from("/data/poold.db")))
        );
        let url = "postgres://poold@db.example:5432/poold";
        assert_eq!(parse(url), Ok(DatabaseLocation::Postgres(url.into())));
        assert!(parse("postgresql://u:secret@[::1]:5432/d?sslmode=disable").is_ok());
        for bad in [
            "postgres://poold@db.example:5432",
            "postgres://poold@db.example:54x2/poold",
            "postgres:///poold",
            "mysql://poold@db/poold",
            "",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
        let err = parse("postgres://u:secret@h:5432").unwrap_err();
        assert!(!err.contains("secret"), "{err}");
        assert_eq!(
            DatabaseLocation::Postgres("postgres://u:secret@h/d".into()).redacted(),
            "postgres://u:***@h/d"
        );
    }
}
