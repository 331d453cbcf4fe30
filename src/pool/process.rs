//! One worker OS process: spawn, pipes, stop, reap.
//!
//! [`spawn`] starts the worker command in its own process group and runs three small tasks:
//! one writes queued lines to its stdin, one logs its stderr (keeping a bounded tail for crash
//! reports), and one owns the `Child`: it parses stdout into protocol messages for the
//! supervisor, and on [`WorkerProcess::stop`] sends SIGTERM to the group, then SIGKILL after a
//! grace period. That task always reaps the child and reports one [`Event::Exited`], so no
//! worker is ever left a zombie and the supervisor learns of every exit. If poold itself dies
//! (even `kill -9`), the kernel kills each worker at once (a parent-death signal set before
//! exec), so no worker lives on to run a chunk that the next start runs again; a worker also
//! exits by itself when its stdin closes.

use std::collections::VecDeque;
use std::fmt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use nix::sys::prctl::set_pdeathsig;
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, getppid};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, LinesCodec};

use crate::model::JobId;
use crate::protocol::{Decoded, MAX_LINE_BYTES, MessageCodec, WorkerMessage};

/// How many stderr lines of a worker are kept for its crash report.
const STDERR_TAIL_LINES: usize = 20;
/// Longest stderr line kept; longer ones are cut.
const STDERR_MAX_LINE: usize = 4096;

/// The program that runs as each worker, with its arguments; resolved to a real executable.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// Which process an event is about: the slot and the slot's spawn generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub slot: usize,
    pub generation: u64,
}

#[derive(Debug)]
pub enum Event {
    Message(Origin, WorkerMessage),
    /// It wrote a stdout line over the protocol's limit (dropped).
    Overlong(Origin),
    Exited(Origin, Exit),
}

/// How a worker process ended.
#[derive(Debug, Clone)]
pub struct Exit {
    pub how: ExitKind,
    /// The last lines it wrote to stderr.
    pub stderr_tail: String,
}

/// How a process ended, as the kernel reports it. Shown as "exit code 3", "signal 9 (SIGKILL)".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    Code(i32),
    Signal(i32),
    /// Not known (it could not be waited for).
    Unknown,
}

impl fmt::Display for ExitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Code(code) => write!(f, "exit code {code}"),
            Self::Signal(signal) => match Signal::try_from(signal) {
                Ok(name) => write!(f, "signal {signal} ({name})"),
                Err(_) => write!(f, "signal {signal}"),
            },
            Self::Unknown => f.write_str("unknown exit status"),
        }
    }
}

pub struct WorkerProcess {
    pub pid: u32,
    stdin: mpsc::UnboundedSender<String>,
    stop: Option<oneshot::Sender<()>>,
    /// The job of the chunk it runs (or last ran), named on each of its stderr lines.
    job: Arc<Mutex<Option<JobId>>>,
}

impl WorkerProcess {
    /// Queue one protocol line (with its trailing newline) for the worker's stdin.
    pub fn send(&self, line: String) -> bool {
        self.stdin.send(line).is_ok()
    }

    /// The job whose chunk it runs now, for the attribution of its stderr.
    pub fn set_job(&self, job: Option<JobId>) {
        *self.job.lock().expect("current job") = job;
    }

    /// SIGTERM the process group now, SIGKILL it after the grace period. Idempotent.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn spawn(
    command: &WorkerCommand,
    origin: Origin,
    events: mpsc::UnboundedSender<Event>,
    kill_grace: Duration,
    memory_limit_mb: Option<u64>,
) -> std::io::Result<WorkerProcess> {
    let mut builder = Command::new(&command.program);
    builder
        .args(&command.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let memory_limit = memory_limit_mb.map(|mb| mb.saturating_mul(1024 * 1024));
    let poold = Pid::this();
    // SAFETY: between fork and exec the closure only makes system calls that are
    // async-signal-safe (prctl, getppid, setrlimit) and allocates nothing.
    unsafe {
        builder.pre_exec(move || {
            // Die with poold, even when it is killed with SIGKILL. (The signal follows the
            // thread that forked: a tokio worker thread, which lives as long as poold's runtime.)
            set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            if getppid() != poold {
                return Err(std::io::Error::other("poold exited during the spawn"));
            }
            if let Some(bytes) = memory_limit {
                setrlimit(Resource::RLIMIT_AS, bytes, bytes).map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
    let mut child = builder.spawn()?;
    let pid = child.id().expect("a just-spawned child has a pid");
    let stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");

    let (line_tx, line_rx) = mpsc::unbounded_channel();
    tokio::spawn(write_stdin(stdin, line_rx));

    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let job = Arc::new(Mutex::new(None));
    let stderr_done = tokio::spawn(read_stderr(
        stderr,
        origin.slot,
        pid,
        tail.clone(),
        job.clone(),
    ));

    let (stop_tx, stop_rx) = oneshot::channel();
    tokio::spawn(async move {
        let status = own_child(child, stdout, origin, &events, stop_rx, kill_grace).await;
        // The group may still hold grandchildren: they go with their parent.
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        let _ = tokio::time::timeout(Duration::from_secs(1), stderr_done).await;
        let stderr_tail = tail
            .lock()
            .expect("stderr tail")
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n");
        let _ = events.send(Event::Exited(
            origin,
            Exit {
                how: describe(status),
                stderr_tail,
            },
        ));
    });

    Ok(WorkerProcess {
        pid,
        stdin: line_tx,
        stop: Some(stop_tx),
        job,
    })
}

/// Read protocol messages until stdout closes or a stop is asked; return the reaped status.
async fn own_child(
    mut child: Child,
    stdout: tokio::process::ChildStdout,
    origin: Origin,
    events: &mpsc::UnboundedSender<Event>,
    mut stop: oneshot::Receiver<()>,
    kill_grace: Duration,
) -> std::io::Result<ExitStatus> {
    let pid = Pid::from_raw(child.id().unwrap_or(0) as i32);
    let mut lines = FramedRead::new(stdout, MessageCodec::new(MAX_LINE_BYTES));
    let stop_asked = loop {
        tokio::select! {
            _ = &mut stop => break true,
            line = lines.next() => match line {
                Some(Ok(Decoded::Message(message))) => { let _ = events.send(Event::Message(origin, message)); }
                Some(Ok(Decoded::Garbage { error, excerpt })) => tracing::warn!(worker = origin.slot, %error, line = %excerpt, "skipping a stdout line that is not a protocol message"),
                Some(Ok(Decoded::Overlong { excerpt })) => {
                    tracing::warn!(worker = origin.slot, line = %excerpt, limit = MAX_LINE_BYTES, "a stdout line is over the protocol's limit; dropped");
                    let _ = events.send(Event::Overlong(origin));
                }
                Some(Err(e)) => {
                    tracing::error!(worker = origin.slot, error = %e, "worker stdout unreadable; stopping it");
                    break true;
                }
                None => break false,
            },
        }
    };
    if !stop_asked {
        // Stdout closed: the worker is exiting. Give it the grace period, unless stopped.
        tokio::select! {
            status = child.wait() => return status,
            _ = &mut stop => {}
            _ = tokio::time::sleep(kill_grace) => {}
        }
    }
    let _ = killpg(pid, Signal::SIGTERM);
    tokio::select! {
        status = child.wait() => status,
        _ = tokio::time::sleep(kill_grace) => {
            let _ = killpg(pid, Signal::SIGKILL);
            child.wait().await
        }
    }
}

async fn write_stdin(mut stdin: ChildStdin, mut lines: mpsc::UnboundedReceiver<String>) {
    let mut batch = Vec::new();
    while lines.recv_many(&mut batch, 64).await > 0 {
        for line in batch.drain(..) {
            if stdin.write_all(line.as_bytes()).await.is_err() {
                return; // the worker is gone; its exit is reported by the owner task
            }
        }
        if stdin.flush().await.is_err() {
            return;
        }
    }
    // Every sender dropped: closing stdin tells the worker to exit.
}

async fn read_stderr(
    stderr: tokio::process::ChildStderr,
    slot: usize,
    pid: u32,
    tail: Arc<Mutex<VecDeque<String>>>,
    job: Arc<Mutex<Option<JobId>>>,
) {
    let mut lines = FramedRead::new(stderr, LinesCodec::new_with_max_length(STDERR_MAX_LINE));
    while let Some(line) = lines.next().await {
        let line = match line {
            Ok(line) => line,
            Err(tokio_util::codec::LinesCodecError::MaxLineLengthExceeded) => {
                "[line too long, cut]".to_string()
            }
            Err(_) => break,
        };
        let job = *job.lock().expect("current job");
        match job {
            Some(job) => tracing::info!(worker = slot, pid, job.id = %job, "worker stderr: {line}"),
            None => tracing::info!(worker = slot, pid, "worker stderr: {line}"),
        }
        let mut tail = tail.lock().expect("stderr tail");
        if tail.len() == STDERR_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

fn describe(status: std::io::Result<ExitStatus>) -> ExitKind {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => ExitKind::Code(code),
            (None, Some(signal)) => ExitKind::Signal(signal),
            (None, None) => ExitKind::Unknown,
        },
        Err(e) => {
            tracing::error!(error = %e, "a worker could not be waited for");
            ExitKind::Unknown
        }
    }
}
