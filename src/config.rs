//! Command-line interface and configuration: every `serve` flag is also an environment
//! variable. Parsed once in `main`; `app::run` receives the result. The client subcommands'
//! flags live with the client, in `cli`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::pool::WorkerCommand;

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
    Serve(ServeArgs),
    /// Run the built-in worker (spawned by `serve`; speaks the worker protocol on stdin/stdout).
    Worker,
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
    /// SQLite database file (created if missing).
    #[arg(long, env = "POOLD_DATABASE", default_value = "poold.db")]
    pub database: PathBuf,
    /// Worker processes [default: the number of CPUs].
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
    /// Seconds running chunks get to finish on shutdown before workers are stopped.
    #[arg(long, env = "POOLD_SHUTDOWN_GRACE", default_value_t = 5.0)]
    pub shutdown_grace: f64,
    /// Seconds between SIGTERM and SIGKILL when a worker is stopped.
    #[arg(long, env = "POOLD_KILL_GRACE", default_value_t = 2.0)]
    pub kill_grace: f64,
    /// Log format.
    #[arg(long, env = "POOLD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl ServeArgs {
    pub fn pool_size(&self) -> usize {
        self.workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
            .max(1)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs_f64(self.shutdown_grace.max(0.0))
    }

    pub fn kill_grace(&self) -> Duration {
        Duration::from_secs_f64(self.kill_grace.max(0.0))
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
        Ok(WorkerCommand {
            program,
            args: args.to_vec(),
        })
    }
}
