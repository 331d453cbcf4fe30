//! The `poold` command-line client: `submit`, `jobs`, `status`, `watch`, `results`, `cancel`,
//! `pool` and `functions`, subcommands of the server's own binary. Called by `main`.
//!
//! It speaks only the public HTTP contract (it uses none of the server's modules), to the
//! server at `--url` / `POOLD_URL`, sending `POOLD_API_TOKEN` (when set) as a Bearer token.
//! [`client`] does the HTTP and turns problem documents into errors, [`items`] streams items
//! from a file or stdin as an NDJSON upload, [`follow`] follows a job's event stream (progress
//! bar or plain lines, results written in order, re-attaching after a dropped connection) and
//! [`show`] prints tables.
//!
//! Exit status: 0 on success; 1 when a followed job failed, was cancelled or has item errors;
//! 2 for a usage error; 3 when poold could not be reached or refused the request.

mod client;
mod follow;
mod items;
mod show;

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use client::Client;

/// Exit status when the server could not be reached or refused a request.
const EXIT_ERROR: i32 = 3;
/// Exit status when a followed job did not complete cleanly.
const EXIT_JOB_FAILED: i32 = 1;

#[derive(Debug, Clone, Args)]
pub struct Server {
    /// poold's address (its token, if it needs one, comes from POOLD_API_TOKEN).
    #[arg(long, env = "POOLD_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Submit a map job (like pool.map); with --follow, show its progress until it ends.
    Submit(Box<SubmitArgs>),
    /// List jobs, newest first.
    Jobs {
        #[command(flatten)]
        server: Server,
        /// Only jobs in this status (queued, running, completed, failed, cancelled).
        #[arg(long)]
        status: Option<String>,
        /// How many jobs.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Print the server's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one job.
    Status {
        #[command(flatten)]
        server: Server,
        id: String,
        /// Print the server's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Follow a job's progress until it ends (re-attaches if the connection drops).
    Watch {
        #[command(flatten)]
        server: Server,
        id: String,
        /// Also write its results, in order, to this file as NDJSON (`-`: stdout).
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Print a job's results as NDJSON, in index order.
    Results {
        #[command(flatten)]
        server: Server,
        id: String,
        /// First wait up to this many seconds for the job to finish.
        #[arg(long, value_name = "SECONDS")]
        wait: Option<f64>,
    },
    /// Cancel a job: queued chunks never run, running ones are stopped.
    Cancel {
        #[command(flatten)]
        server: Server,
        id: String,
    },
    /// Show the worker pool.
    Pool {
        #[command(flatten)]
        server: Server,
        /// Print the server's JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the functions the workers offer.
    Functions {
        #[command(flatten)]
        server: Server,
        /// Print the server's JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OnErrorArg {
    /// Record item errors and go on.
    Continue,
    /// The first item error fails the job.
    #[value(name = "fail_fast", alias = "fail-fast")]
    FailFast,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub server: Server,
    /// A function the workers offer (see `poold functions`).
    pub function: String,
    /// `-`: read the items from stdin (JSON lines, or one JSON array).
    #[arg(value_name = "-", conflicts_with_all = ["items", "items_file"])]
    pub stdin: Option<String>,
    /// The items as a JSON array, e.g. '[1, 2, 3]'.
    #[arg(long, value_name = "JSON", conflicts_with = "items_file")]
    pub items: Option<String>,
    /// Read the items from a file: one JSON item per line, or one JSON array. Streamed.
    #[arg(long, value_name = "FILE")]
    pub items_file: Option<PathBuf>,
    /// Fixed keyword arguments as a JSON object (functools.partial), e.g. '{"exp": 3}'.
    #[arg(long, value_name = "JSON")]
    pub kwargs: Option<String>,
    /// Each item is an array of positional arguments (starmap).
    #[arg(long)]
    pub star: bool,
    /// Items per chunk [default: automatic; 100 for files and stdin].
    #[arg(long)]
    pub chunksize: Option<u32>,
    /// Per-item time limit in seconds.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// Runs per chunk when its worker dies.
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// What an item error does to the job.
    #[arg(long, value_enum)]
    pub on_error: Option<OnErrorArg>,
    /// Higher runs first.
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// At most N of the job's chunks run at once across all workers (Pool(processes=N)).
    #[arg(long, value_name = "N")]
    pub max_concurrency: Option<u32>,
    /// Free-form labels as a JSON object.
    #[arg(long, value_name = "JSON")]
    pub metadata: Option<String>,
    /// Show the job's progress until it ends; the exit status says whether it completed cleanly.
    #[arg(long)]
    pub follow: bool,
    /// Write the results, in order as they arrive, to this file as NDJSON (`-`: stdout).
    /// Implies --follow.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Run a client command; returns the process exit status.
pub fn run(command: ClientCommand) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return EXIT_ERROR;
        }
    };
    let code = match runtime.block_on(dispatch(command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            EXIT_ERROR
        }
    };
    let _ = std::io::stdout().flush();
    code
}

async fn dispatch(command: ClientCommand) -> anyhow::Result<i32> {
    match command {
        ClientCommand::Submit(args) => submit(*args).await,
        ClientCommand::Jobs {
            server,
            status,
            limit,
            json,
        } => {
            let mut path = format!("/v1/jobs?limit={limit}");
            if let Some(status) = status {
                path.push_str(&format!("&status={status}"));
            }
            let list = Client::new(&server)?.get_json(&path).await?;
            show::print(json, &list, show::jobs_table);
            Ok(0)
        }
        ClientCommand::Status { server, id, json } => {
            let job = Client::new(&server)?
                .get_json(&format!("/v1/jobs/{id}"))
                .await?;
            show::print(json, &job, show::job_details);
            Ok(0)
        }
        ClientCommand::Watch { server, id, output } => {
            let client = Client::new(&server)?;
            let job = follow::follow(&client, &id, output.as_deref()).await?;
            Ok(job_exit_status(&job))
        }
        ClientCommand::Results { server, id, wait } => {
            let mut path = format!("/v1/jobs/{id}/results");
            if let Some(wait) = wait {
                path.push_str(&format!("?wait={wait}"));
            }
            Client::new(&server)?
                .copy_ndjson(&path, &mut std::io::stdout().lock())
                .await?;
            Ok(0)
        }
        ClientCommand::Cancel { server, id } => {
            let job = Client::new(&server)?
                .post_json(&format!("/v1/jobs/{id}/cancel"), None)
                .await?;
            println!("{}", show::job_summary(&job));
            Ok(0)
        }
        ClientCommand::Pool { server, json } => {
            let pool = Client::new(&server)?.get_json("/v1/pool").await?;
            show::print(json, &pool, show::pool_table);
            Ok(0)
        }
        ClientCommand::Functions { server, json } => {
            let functions = Client::new(&server)?.get_json("/v1/functions").await?;
            show::print(json, &functions, show::functions_table);
            Ok(0)
        }
    }
}

/// 0 when the job completed with no item errors, else [`EXIT_JOB_FAILED`].
fn job_exit_status(job: &Value) -> i32 {
    let clean = job["status"] == "completed" && job["failed"].as_u64() == Some(0);
    if clean { 0 } else { EXIT_JOB_FAILED }
}

async fn submit(args: SubmitArgs) -> anyhow::Result<i32> {
    let client = Client::new(&args.server)?;
    let spec = job_spec(&args)?;
    let follow = args.follow || args.output.is_some();
    let job = match (&args.items, &args.items_file, &args.stdin) {
        (Some(items), _, _) => {
            let items: Value = serde_json::from_str(items)
                .map_err(|e| anyhow::anyhow!("--items is not JSON: {e}"))?;
            anyhow::ensure!(items.is_array(), "--items must be a JSON array");
            let mut body = spec;
            body["items"] = items;
            client.post_json("/v1/jobs", Some(&body)).await?
        }
        (None, Some(path), _) => {
            let file = std::fs::File::open(path)
                .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
            items::upload(&client, &spec, Box::new(file), follow).await?
        }
        (None, None, Some(dash)) if dash == "-" => {
            items::upload(&client, &spec, Box::new(std::io::stdin()), follow).await?
        }
        (None, None, Some(other)) => {
            anyhow::bail!(
                "unexpected argument {other:?}: use --items, --items-file FILE or - (stdin)"
            )
        }
        (None, None, None) => {
            anyhow::bail!("no items: give --items JSON, --items-file FILE, or - to read stdin")
        }
    };
    let id = job["id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("the server answered without a job id: {job}"))?
        .to_string();
    if !follow {
        println!("{id}");
        return Ok(0);
    }
    eprintln!("submitted job {id}");
    let job = follow::follow(&client, &id, args.output.as_deref()).await?;
    Ok(job_exit_status(&job))
}

/// The job's fields but `items`, from the flags.
fn job_spec(args: &SubmitArgs) -> anyhow::Result<Value> {
    let object = |flag: &str, text: &Option<String>| -> anyhow::Result<Option<Value>> {
        let Some(text) = text else { return Ok(None) };
        let value: Value =
            serde_json::from_str(text).map_err(|e| anyhow::anyhow!("--{flag} is not JSON: {e}"))?;
        anyhow::ensure!(value.is_object(), "--{flag} must be a JSON object");
        Ok(Some(value))
    };
    let mut spec = json!({"function": args.function});
    let fields = [
        ("kwargs", object("kwargs", &args.kwargs)?),
        ("metadata", object("metadata", &args.metadata)?),
        ("star", args.star.then_some(json!(true))),
        ("chunksize", args.chunksize.map(|c| json!(c))),
        ("timeout_s", args.timeout.map(|t| json!(t))),
        ("max_attempts", args.max_attempts.map(|m| json!(m))),
        (
            "on_error",
            args.on_error.map(|o| match o {
                OnErrorArg::Continue => json!("continue"),
                OnErrorArg::FailFast => json!("fail_fast"),
            }),
        ),
        ("priority", args.priority.map(|p| json!(p))),
        ("max_concurrency", args.max_concurrency.map(|n| json!(n))),
    ];
    for (name, value) in fields {
        if let Some(value) = value {
            spec[name] = value;
        }
    }
    Ok(spec)
}
