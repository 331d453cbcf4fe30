//! The worker pool: a supervisor actor that owns N worker processes and runs jobs' chunks on
//! them. The only module that spawns processes.
//!
//! [`start`] spawns the [`supervisor`] task and returns a [`PoolHandle`], the cheap clone the
//! API holds: it tells the supervisor about stored chunks (of new jobs, and of jobs whose items
//! are still being uploaded) and about cancelled jobs, asks for snapshots, and
//! reads what the workers offer (their functions and codecs). On a store shared by several
//! nodes, `crate::cluster` also tells it of other nodes' work and ends, and has it audit its
//! claims (see `queue` for how much a node claims). Chunks come from the store, results go
//! back to it; [`queue`] decides which job's chunk runs next; [`process`] owns one OS process.

mod process;
mod queue;
mod supervisor;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

pub use process::WorkerCommand;

use crate::model::{Chunk, Codec, Job, JobId};
use crate::protocol::FunctionInfo;
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub size: usize,
    pub command: WorkerCommand,
    /// How long running chunks may take to finish on shutdown before workers are stopped.
    pub drain_grace: Duration,
    /// Between SIGTERM and SIGKILL when a worker is stopped.
    pub kill_grace: Duration,
    /// Replace a worker after this many chunks (Pool's `maxtasksperchild`).
    pub max_tasks_per_worker: Option<u64>,
    /// Address-space limit (RLIMIT_AS) of each worker process, in MiB.
    pub memory_limit_mb: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the worker pool has stopped")]
    Stopped,
}

/// Why a worker process exited, as `poold_worker_exits_total` counts it: it crashed (`Exit`,
/// `Signal`, `Oom`), or poold stopped it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// It exited by itself with a status code.
    Exit,
    /// A signal poold did not send killed it.
    Signal,
    /// It died of an allocation failure over `--worker-memory-mb`.
    Oom,
    /// Its chunk ran past its time limit.
    Timeout,
    /// `--max-tasks-per-worker` was reached.
    Recycle,
    /// The job of its chunk was cancelled or failed.
    Cancel,
    /// It broke the worker protocol.
    Protocol,
    /// Its hello named another protocol version.
    Refused,
    /// poold is shutting down.
    Shutdown,
}

impl ExitReason {
    pub const ALL: [ExitReason; 9] = [
        Self::Exit,
        Self::Signal,
        Self::Oom,
        Self::Timeout,
        Self::Recycle,
        Self::Cancel,
        Self::Protocol,
        Self::Refused,
        Self::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exit => "exit",
            Self::Signal => "signal",
            Self::Oom => "oom",
            Self::Timeout => "timeout",
            Self::Recycle => "recycle",
            Self::Cancel => "cancel",
            Self::Protocol => "protocol",
            Self::Refused => "refused",
            Self::Shutdown => "shutdown",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    Starting,
    Idle,
    Busy,
}

/// One worker slot, as `GET /v1/pool` shows it (and as a node's heartbeat stores it for the
/// other nodes: see `crate::cluster`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WorkerInfo {
    pub id: usize,
    pub pid: Option<u32>,
    pub state: WorkerState,
    pub job_id: Option<JobId>,
    pub tasks_completed: u64,
    /// Items whose outcome a process of this slot returned (values and item errors).
    pub items_completed: u64,
    pub restarts: u64,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PoolSnapshot {
    pub size: usize,
    /// Chunks this node holds for its workers that have not started (on SQLite: every queued
    /// chunk; on a shared store, those it claimed).
    pub queued_chunks: u64,
    pub workers: Vec<WorkerInfo>,
    /// Why workers cannot start, if they cannot (bad command, protocol mismatch).
    pub last_error: Option<String>,
    /// What its workers offer, once one has said hello (a node without workers learns it
    /// from another node's snapshot: see `crate::cluster`).
    #[serde(default)]
    pub offer: Option<WorkerOffer>,
}

/// What the workers offer, as the latest `hello` said (every slot runs the same command).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WorkerOffer {
    pub functions: Vec<FunctionInfo>,
    /// Codecs of item values they accept (`json` always).
    pub codecs: Vec<String>,
}

impl WorkerOffer {
    /// Whether the workers serve `function`, by its name or one of its aliases.
    pub fn serves(&self, function: &str) -> bool {
        self.functions.iter().any(|f| f.answers_to(function))
    }

    pub fn accepts(&self, codec: Codec) -> bool {
        self.codecs.iter().any(|c| c == codec.as_str())
    }
}

enum Command {
    ChunksStored(Box<Job>, u64, Option<Vec<Chunk>>),
    JobEnded(JobId),
    WorkAvailable(Vec<JobId>),
    AuditClaims { lost: bool },
    Snapshot(oneshot::Sender<PoolSnapshot>),
}

#[derive(Clone)]
pub struct PoolHandle {
    commands: mpsc::Sender<Command>,
    offer: watch::Receiver<Option<Arc<WorkerOffer>>>,
    /// The supervisor's sender of `offer`, for a node without workers (see
    /// [`PoolHandle::adopt_offer`]).
    offer_tx: Arc<watch::Sender<Option<Arc<WorkerOffer>>>>,
    accepting: Arc<AtomicBool>,
    /// How many times this node closed or opened the pool itself (see
    /// [`PoolHandle::adopt_accepting`]); changes of `accepting` are made under this lock.
    accepting_sets: Arc<std::sync::Mutex<u64>>,
    /// Workers of every live node, as the last heartbeat counted them (0: not known, or
    /// one node): what `Pool.map`'s automatic chunksize divides by.
    cluster_workers: Arc<AtomicUsize>,
    /// This node's workers that are ready and have nothing to run, as the supervisor left
    /// them after its last turn.
    idle_workers: Arc<AtomicUsize>,
}

/// Start the supervisor. It first resumes the store's unfinished jobs, then runs until
/// `shutdown` is cancelled, drains, stops every worker and returns.
pub fn start(
    config: PoolConfig,
    store: Store,
    shutdown: CancellationToken,
) -> (PoolHandle, tokio::task::JoinHandle<()>) {
    let (commands, commands_rx) = mpsc::channel(1024);
    let (offer_tx, offer) = watch::channel(None);
    let offer_tx = Arc::new(offer_tx);
    let idle_workers = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn(supervisor::run(
        config,
        store,
        commands_rx,
        offer_tx.clone(),
        idle_workers.clone(),
        shutdown,
    ));
    let handle = PoolHandle {
        commands,
        offer,
        offer_tx,
        accepting: Arc::new(AtomicBool::new(true)),
        accepting_sets: Arc::default(),
        cluster_workers: Arc::default(),
        idle_workers,
    };
    (handle, task)
}

impl PoolHandle {
    /// `count` more chunks of `job` were committed to the store (all of a new job's, or the
    /// next batch of an upload): schedule them. `chunks`, when given, are those chunks (a
    /// small job's, handed over so that they run without a read). While `job.ingesting`, the
    /// job stays scheduled between batches; the call for an upload's last batch (even of no
    /// chunk) clears it.
    pub async fn chunks_stored(
        &self,
        job: &Job,
        count: u64,
        chunks: Option<Vec<Chunk>>,
    ) -> Result<(), Error> {
        self.commands
            .send(Command::ChunksStored(Box::new(job.clone()), count, chunks))
            .await
            .map_err(|_| Error::Stopped)
    }

    /// The job was cancelled or failed in the store: stop its running chunks, drop the rest.
    pub async fn job_ended(&self, id: JobId) -> Result<(), Error> {
        self.commands
            .send(Command::JobEnded(id))
            .await
            .map_err(|_| Error::Stopped)
    }

    /// These jobs have chunks no node has claimed (another node stored them, or re-queued
    /// them from a lost node): schedule them, reading a job this node does not know yet.
    pub async fn work_available(&self, ids: Vec<JobId>) -> Result<(), Error> {
        self.commands
            .send(Command::WorkAvailable(ids))
            .await
            .map_err(|_| Error::Stopped)
    }

    /// On a shared store: give back the claims the supervisor does not hold (none should be
    /// left, but the answer to a claim can be lost with its connection). With `lost` (this
    /// node was declared lost: the chunks it claimed and has not started may be running
    /// elsewhere), first forget the chunks not yet running, and claim again.
    pub async fn audit_claims(&self, lost: bool) -> Result<(), Error> {
        self.commands
            .send(Command::AuditClaims { lost })
            .await
            .map_err(|_| Error::Stopped)
    }

    pub async fn snapshot(&self) -> Result<PoolSnapshot, Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Snapshot(tx))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// What the workers offer, waiting up to `wait` for the first worker to say hello.
    /// `None` when no worker has started in that time.
    pub async fn offer(&self, wait: Duration) -> Option<Arc<WorkerOffer>> {
        let mut offer = self.offer.clone();
        let ready = tokio::time::timeout(wait, offer.wait_for(Option::is_some)).await;
        match ready {
            Ok(Ok(offer)) => offer.clone(),
            _ => None,
        }
    }

    /// A node without workers (`--workers 0`, on a shared store) serves what the other nodes'
    /// workers offer: `crate::cluster` hands it over from their heartbeats.
    pub fn adopt_offer(&self, offer: WorkerOffer) {
        self.offer_tx.send_if_modified(|current| {
            let changed = current.as_deref() != Some(&offer);
            if changed {
                *current = Some(Arc::new(offer));
            }
            changed
        });
    }

    /// Workers of every live node sharing the store, when the heartbeat has counted them.
    pub fn cluster_workers(&self) -> Option<usize> {
        match self.cluster_workers.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    pub fn set_cluster_workers(&self, workers: usize) {
        self.cluster_workers.store(workers, Ordering::Relaxed);
    }

    /// This node's workers that could start a chunk now (ready, nothing in their pipe, and
    /// nothing queued here for them), as of the supervisor's last turn.
    pub fn idle_workers(&self) -> usize {
        self.idle_workers.load(Ordering::Relaxed)
    }

    /// `Pool.close()`: whether new jobs are accepted (on a shared store, as the cluster last
    /// said: see `crate::cluster`).
    pub fn accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    /// This node closes or opens the pool (`POST /v1/pool/close`, `/open`).
    pub fn set_accepting(&self, accepting: bool) {
        let mut sets = self.accepting_sets();
        *sets += 1;
        self.accepting.store(accepting, Ordering::SeqCst);
    }

    /// A mark to read the cluster's flag after ([`PoolHandle::adopt_accepting`]).
    pub fn accepting_mark(&self) -> u64 {
        *self.accepting_sets()
    }

    /// The cluster's flag as read after `mark`: taken unless this node closed or opened the
    /// pool since, when the reading may be older than that change and would undo it.
    pub fn adopt_accepting(&self, accepting: bool, mark: u64) {
        let sets = self.accepting_sets();
        if *sets == mark {
            self.accepting.store(accepting, Ordering::SeqCst);
        }
    }

    fn accepting_sets(&self) -> std::sync::MutexGuard<'_, u64> {
        self.accepting_sets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}
