//! The supervisor actor: the one task that owns the worker slots and the run queue.
//!
//! It `select!`s over commands from [`super::PoolHandle`]s, events from worker processes
//! (hello, results, exits), restart timers and shutdown. Dispatch keeps up to [`PIPELINE`]
//! chunks in flight per worker so pipes never idle — but only while those ahead are known to
//! be done within [`PIPELINE_BELOW`], so a chunk never waits long while a worker is idle — and
//! pauses while the store's writer is behind (so unrecorded results cannot pile up in memory).
//! Results go to the store's writer (which publishes after commit); a dead worker is replaced,
//! and its running chunk is retried up to the job's `max_attempts`, then narrowed down to the
//! guilty item (see `lifecycle` and `outcomes`). Metrics are recorded here (`crate::metrics`).
//! After each turn it publishes how many workers sit idle ([`super::PoolHandle::idle_workers`]:
//! on a shared store the job service claims a small job for this node only while they can
//! start it).

mod lifecycle;
mod outcomes;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::process::{Event, WorkerProcess};
use super::queue::{Pending, Queue};
use super::{Command, ExitReason, PoolConfig, PoolSnapshot, WorkerInfo, WorkerOffer, WorkerState};
use crate::model::{Codec, JobId, JobStatus};
use crate::outcomes::ChunkOutcomes;
use crate::protocol::{PooldError, PooldMessage, WorkerMessage, WorkerResults};
use crate::store::Store;

/// Chunks in flight per worker at most: one running, the rest already in its pipe.
const PIPELINE: usize = 8;
/// More chunks wait in a worker's pipe only while the chunks ahead of them are known to be done
/// within this (from their jobs' average chunk time): pipelining hides the round trip of short
/// chunks and lets a worker and poold each handle several at one wake-up, but behind long ones
/// it would hold a chunk back that an idle worker could run (or a job of higher priority
/// submitted meanwhile).
const PIPELINE_BELOW: Duration = Duration::from_millis(20);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Dispatch pauses while more than this many bytes of results wait for the database writer,
/// so that fast workers and a slow disk cannot fill memory with unrecorded results…
const MAX_WRITE_BACKLOG: usize = 2 << 20;
/// …and checks again this often.
const THROTTLE_RECHECK: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

struct InFlight {
    task_id: u64,
    job: JobId,
    pending: Pending,
    /// The job's `timeout_s` times the chunk's items: exceeding it proves an item ran too long.
    budget: Option<Duration>,
    /// Set when the chunk reaches the head of its worker's queue, i.e. starts running.
    deadline: Option<Instant>,
    /// When it started running (reached the head of its worker's queue).
    started: Option<Instant>,
}

#[derive(PartialEq)]
enum SlotState {
    /// Spawned, waiting for its hello.
    Starting,
    Ready,
    /// Told to stop; its exit will be followed by a fresh spawn.
    Stopping,
    /// No process; respawn at the instant.
    Down(Instant),
}

struct Slot {
    generation: u64,
    state: SlotState,
    process: Option<WorkerProcess>,
    in_flight: VecDeque<InFlight>,
    tasks_completed: u64,
    /// Items of those chunks (what `GET /v1/pool` reports as `items_completed`).
    items_completed: u64,
    /// Chunks sent to its current process (for `--max-tasks-per-worker`).
    tasks_sent: u64,
    restarts: u64,
    backoff: Duration,
    /// Its process was refused (protocol mismatch): respawn only after the back-off.
    refused: bool,
    /// Why poold told its process to stop (for the exit metric), until it exits.
    stop_reason: Option<ExitReason>,
}

struct Supervisor {
    config: PoolConfig,
    store: Store,
    slots: Vec<Slot>,
    queue: Queue,
    events: mpsc::UnboundedSender<Event>,
    offer: Arc<watch::Sender<Option<Arc<WorkerOffer>>>>,
    next_task_id: u64,
    last_error: Option<String>,
    draining: bool,
    /// Dispatch paused for the writer's backlog (see [`MAX_WRITE_BACKLOG`]).
    throttled: bool,
    /// Chunks split into single-item pieces, by (job, chunk index).
    splits: std::collections::HashMap<(JobId, u64), outcomes::Split>,
}

pub async fn run(
    config: PoolConfig,
    store: Store,
    mut commands: mpsc::Receiver<Command>,
    offer: Arc<watch::Sender<Option<Arc<WorkerOffer>>>>,
    idle_workers: Arc<AtomicUsize>,
    shutdown: CancellationToken,
) {
    let (events, mut events_rx) = mpsc::unbounded_channel();
    let mut sup = Supervisor {
        slots: (0..config.size)
            .map(|_| Slot {
                generation: 0,
                state: SlotState::Down(Instant::now()),
                process: None,
                in_flight: VecDeque::new(),
                tasks_completed: 0,
                items_completed: 0,
                tasks_sent: 0,
                restarts: 0,
                backoff: MIN_BACKOFF,
                refused: false,
                stop_reason: None,
            })
            .collect(),
        config,
        store,
        queue: Queue::default(),
        events,
        offer,
        next_task_id: 0,
        last_error: None,
        draining: false,
        throttled: false,
        splits: Default::default(),
    };
    sup.resume_unfinished_jobs().await;
    for slot in 0..sup.slots.len() {
        sup.spawn(slot);
    }

    let far = || Instant::now() + Duration::from_secs(3600);
    let mut drain_deadline = far();
    loop {
        let next_restart = sup.next_restart().unwrap_or_else(far);
        let next_deadline = sup.next_deadline().unwrap_or_else(far);
        tokio::select! {
            _ = shutdown.cancelled(), if !sup.draining => {
                tracing::info!(in_flight = sup.in_flight(), "pool draining");
                sup.draining = true;
                drain_deadline = Instant::now() + sup.config.drain_grace;
            }
            Some(command) = commands.recv() => sup.handle_command(command).await,
            Some(event) = events_rx.recv() => sup.handle_event(event).await,
            _ = tokio::time::sleep_until(next_restart) => sup.restart_due(),
            _ = tokio::time::sleep_until(next_deadline) => sup.expire_deadlines(),
            _ = tokio::time::sleep_until(drain_deadline), if sup.draining => break,
            _ = tokio::time::sleep(THROTTLE_RECHECK), if sup.throttled => {}
        }
        if sup.draining {
            if sup.in_flight() == 0 {
                break;
            }
        } else {
            sup.dispatch().await;
        }
        idle_workers.store(sup.idle_workers(), Ordering::Relaxed);
    }
    idle_workers.store(0, Ordering::Relaxed);
    sup.stop_all(&mut events_rx).await;
}

impl Slot {
    /// Tell the process which job it is running now, for its stderr lines. An idle worker
    /// keeps its last job: its stderr and stdout are separate pipes, so the last lines it
    /// wrote for a chunk may be read after the chunk's result.
    fn show_current_job(&self) {
        if let (Some(process), Some(front)) = (&self.process, self.in_flight.front()) {
            process.set_job(Some(front.job));
        }
    }
}

impl Supervisor {
    /// Schedule the stored unfinished jobs. A job that cannot be read, or that is outside
    /// today's limits (see `crate::limits::check_stored`), is failed with the reason rather
    /// than run (or left to fail every start).
    async fn resume_unfinished_jobs(&mut self) {
        let jobs = match self.store.unfinished_jobs().await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::error!(error = %e, "could not load unfinished jobs");
                return;
            }
        };
        for job in jobs {
            let job = job.and_then(|job| match crate::limits::check_stored(&job.spec) {
                Ok(()) => Ok(job),
                Err(why) => Err((job.id, why)),
            });
            let job = match job {
                Ok(job) => job,
                Err((id, why)) => {
                    tracing::error!(job.id = %id, reason = %why, "failing a stored job that cannot run");
                    let error = format!("the stored job cannot run: {why}");
                    if let Err(e) = self
                        .store
                        .finish_job(id, JobStatus::Failed, Some(error))
                        .await
                    {
                        tracing::error!(job.id = %id, error = %e, "could not fail the job");
                    }
                    continue;
                }
            };
            match self.store.count_queued_chunks(job.id).await {
                Ok(queued) => {
                    tracing::info!(job.id = %job.id, queued_chunks = queued, "resuming job");
                    self.queue.add(&job, queued, None);
                }
                Err(e) => tracing::error!(job.id = %job.id, error = %e, "could not resume job"),
            }
        }
    }

    /// Schedule a job another node stored (its chunks are claimed as workers free up).
    async fn schedule_stored(&mut self, id: JobId) {
        match self.store.get_job(id).await {
            Ok(Some(job)) if !job.status.is_finished() => {
                if let Err(why) = crate::limits::check_stored(&job.spec) {
                    tracing::warn!(job.id = %id, reason = %why, "not running a job outside this node's limits");
                    return;
                }
                self.queue.add(&job, 1, None);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(job.id = %id, error = %e, "could not read a job with work"),
        }
    }

    /// Give back the claims this node does not hold: not waiting in a window, not running,
    /// not split into pieces (see `PoolHandle::audit_claims` and `Store::release_unheld`).
    async fn audit_claims(&mut self) {
        if self.store.cluster().is_none() {
            return;
        }
        let running = self.slots.iter().flat_map(|slot| {
            slot.in_flight.iter().map(|f| {
                let start = f.pending.piece_of.unwrap_or(f.pending.chunk.start_index);
                (f.job, start)
            })
        });
        let held: Vec<(JobId, u64)> = self
            .queue
            .held()
            .chain(running)
            .chain(self.splits.keys().copied())
            .collect();
        match self.store.release_unheld(held).await {
            Ok(released) => {
                if !released.is_empty() {
                    tracing::info!(
                        jobs = released.len(),
                        "gave back claims this node no longer held"
                    );
                }
                for id in released {
                    self.queue.more_work(id);
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not check this node's claims; will retry"),
        }
    }

    /// Ready workers with nothing in flight (after a dispatch: nothing queued here fits them).
    fn idle_workers(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.state == SlotState::Ready && s.in_flight.is_empty())
            .count()
    }

    fn in_flight(&self) -> usize {
        self.slots.iter().map(|s| s.in_flight.len()).sum()
    }

    async fn handle_command(&mut self, command: Command) {
        match command {
            Command::ChunksStored(job, count, chunks) => {
                // A new job's chunks claimed at its creation are in hand from now on.
                let lease = chunks.as_ref().and_then(|c| c.first()).map(|c| c.lease);
                if !job.status.is_finished() {
                    self.queue.add(&job, count, chunks);
                    self.queue.retire_if_done(job.id); // an upload that ended with no new chunk
                }
                if let (Some(cluster), Some(lease)) = (self.store.cluster(), lease) {
                    cluster.lease_handed_over(lease);
                }
            }
            Command::JobEnded(id) => self.drop_job(id),
            Command::WorkAvailable(ids) => {
                for id in ids {
                    if !self.queue.more_work(id) {
                        self.schedule_stored(id).await;
                    }
                }
            }
            Command::AuditClaims { lost } => {
                if lost {
                    self.queue.drop_claims();
                }
                self.audit_claims().await;
            }
            Command::Snapshot(reply) => {
                let _ = reply.send(self.snapshot());
            }
        }
    }

    /// The job ended in the store (cancelled, failed): forget it and stop its running chunks.
    fn drop_job(&mut self, id: JobId) {
        self.queue.remove(id);
        self.splits.retain(|(job, _), _| *job != id);
        for slot in 0..self.slots.len() {
            if self.slots[slot].in_flight.iter().any(|f| f.job == id) {
                self.stop_slot(slot, ExitReason::Cancel);
            }
        }
    }

    async fn handle_event(&mut self, event: Event) {
        let origin = match &event {
            Event::Message(origin, _) | Event::Overlong(origin) | Event::Exited(origin, _) => {
                *origin
            }
        };
        let slot = &self.slots[origin.slot];
        if slot.generation != origin.generation {
            return; // about a process this slot already replaced
        }
        if slot.state == SlotState::Stopping && !matches!(event, Event::Exited(..)) {
            return; // its chunks went back to their queues when it was told to stop
        }
        match event {
            Event::Message(
                _,
                WorkerMessage::Hello {
                    protocol,
                    pid,
                    functions,
                    codecs,
                },
            ) => self.on_hello(
                origin.slot,
                protocol,
                pid,
                WorkerOffer { functions, codecs },
            ),
            Event::Message(_, WorkerMessage::Result { id, results }) => {
                self.on_result(origin.slot, id, results)
            }
            Event::Overlong(_) => self.on_overlong(origin.slot),
            Event::Exited(_, exit) => self.on_exit(origin.slot, exit),
        }
    }

    fn on_result(&mut self, index: usize, task_id: u64, results: WorkerResults) {
        let slot = &mut self.slots[index];
        let Some(flight) = slot.in_flight.front() else {
            tracing::error!(
                worker = index,
                task_id,
                "result for no task; stopping worker"
            );
            return self.stop_slot(index, ExitReason::Protocol);
        };
        if flight.task_id != task_id {
            let what = format!(
                "the worker answered task {task_id} while it was running task {}",
                flight.task_id
            );
            return self.protocol_failure(index, PooldError::ProtocolError, what);
        }
        let outcomes = match ChunkOutcomes::from_worker(&results, flight.pending.chunk.size) {
            Ok(outcomes) => outcomes,
            Err(why) => {
                let what = format!("the worker's answer to task {task_id} is not valid: {why}");
                return self.protocol_failure(index, PooldError::ProtocolError, what);
            }
        };
        drop(results);
        let flight = self.take_head(index).expect("checked above");
        let slot = &mut self.slots[index];
        slot.tasks_completed += 1;
        slot.items_completed += outcomes.size;
        let Some(job) = self.queue.landed(flight.job) else {
            return; // the job ended meanwhile
        };
        if let Some(started) = flight.started {
            let took = Instant::now() - started;
            crate::metrics::chunk_ran(took, flight.pending.chunk.size);
            let secs = took.as_secs_f64();
            job.chunk_secs = Some(job.chunk_secs.map_or(secs, |avg| 0.8 * avg + 0.2 * secs));
        }
        self.chunk_done(flight.job, flight.pending, outcomes);
        self.recycle_if_spent(index);
    }

    /// Take the chunk a worker is running off it (the caller lands it); the next one in its
    /// pipe starts running now.
    fn take_head(&mut self, index: usize) -> Option<InFlight> {
        let slot = &mut self.slots[index];
        let flight = slot.in_flight.pop_front()?;
        let now = Instant::now();
        if let Some(next) = slot.in_flight.front_mut() {
            next.deadline = next.budget.and_then(|b| now.checked_add(b));
            next.started = Some(now);
        }
        slot.show_current_job();
        Some(flight)
    }

    /// A worker wrote a line over the protocol's limit: most likely the result of the chunk it
    /// runs, too big to take. The worker is replaced and the chunk narrowed down to its items,
    /// so that only an item whose own result is too big fails.
    fn on_overlong(&mut self, index: usize) {
        let what = format!(
            "the worker's result was longer than the protocol's limit of {} bytes",
            crate::protocol::MAX_LINE_BYTES
        );
        self.protocol_failure(index, PooldError::ResultTooLarge, what);
    }

    /// The worker broke the protocol while running its head chunk: stop it. The chunks behind
    /// the head are innocent and go back to their queues; the head is the suspect. A result
    /// too large is narrowed down at once (running it again would not help); any other
    /// breach counts as an attempt, like a crash.
    fn protocol_failure(&mut self, index: usize, kind: PooldError, what: String) {
        tracing::error!(worker = index, "{what}; stopping the worker");
        let head = self.take_head(index);
        self.stop_slot(index, ExitReason::Protocol);
        let Some(flight) = head else { return };
        match kind {
            PooldError::ResultTooLarge => {
                if self.queue.landed(flight.job).is_some() {
                    self.chunk_went_wrong(flight.job, flight.pending, kind, what);
                }
            }
            _ => self.chunk_failed_attempt(flight, kind, what),
        }
    }

    /// Whether the chunks a worker holds are known to be done within [`PIPELINE_BELOW`].
    fn runs_short(&self, in_flight: &VecDeque<InFlight>) -> bool {
        let mut secs = 0.0;
        for flight in in_flight {
            match self.queue.get(flight.job).and_then(|job| job.chunk_secs) {
                Some(chunk) => secs += chunk,
                None => return false,
            }
        }
        secs < PIPELINE_BELOW.as_secs_f64()
    }

    /// Fill every ready worker's pipeline from the queue.
    async fn dispatch(&mut self) {
        self.throttled = false;
        loop {
            if self.store.write_backlog() > MAX_WRITE_BACKLOG {
                self.throttled = true;
                return;
            }
            let free: Vec<usize> = (0..self.slots.len())
                .filter(|&i| {
                    let slot = &self.slots[i];
                    slot.state == SlotState::Ready
                        && (slot.in_flight.is_empty()
                            || (slot.in_flight.len() < PIPELINE
                                && self.runs_short(&slot.in_flight)))
                        && self
                            .config
                            .max_tasks_per_worker
                            .is_none_or(|max| slot.tasks_sent < max)
                })
                .collect();
            let Some(&index) = free.iter().min_by_key(|&&i| self.slots[i].in_flight.len()) else {
                return;
            };
            let Some((job_id, pending)) = self.queue.next(&self.store, free.len() as u32).await
            else {
                return;
            };
            let job = self
                .queue
                .get_mut(job_id)
                .expect("next() returns a queued job");
            if !job.started {
                job.started = true;
                self.store.mark_started(job_id);
            }
            job.in_flight += 1;
            self.next_task_id += 1;
            let task_id = self.next_task_id;
            let message = PooldMessage::Task {
                id: task_id,
                function: &job.spec.function,
                kwargs: &job.spec.kwargs,
                star: job.spec.star,
                items: &pending.chunk.items,
                codec: (job.spec.codec != Codec::Json).then_some(job.spec.codec.as_str()),
            };
            let budget = crate::limits::chunk_budget(job.spec.timeout_s, pending.chunk.size);
            let mut line = serde_json::to_string(&message).expect("task serializes");
            line.push('\n');
            let slot = &mut self.slots[index];
            let starts_now = slot.in_flight.is_empty();
            if starts_now && let Some(process) = &slot.process {
                // Before the task is sent: the worker may write to stderr at once.
                process.set_job(Some(job_id));
            }
            let sent = slot.process.as_ref().is_some_and(|p| p.send(line));
            slot.tasks_sent += 1;
            let now = Instant::now();
            slot.in_flight.push_back(InFlight {
                task_id,
                job: job_id,
                pending,
                budget,
                deadline: budget
                    .filter(|_| starts_now)
                    .and_then(|b| now.checked_add(b)),
                started: starts_now.then_some(now),
            });
            if !sent {
                // Its stdin is closed: it is exiting, and on_exit will requeue the chunk.
                slot.state = SlotState::Stopping;
            }
        }
    }

    fn snapshot(&self) -> PoolSnapshot {
        let workers = self
            .slots
            .iter()
            .enumerate()
            .map(|(id, slot)| WorkerInfo {
                id,
                pid: slot.process.as_ref().map(|p| p.pid),
                state: match (&slot.state, slot.in_flight.front()) {
                    (SlotState::Ready, None) => WorkerState::Idle,
                    (SlotState::Ready, Some(_)) => WorkerState::Busy,
                    _ => WorkerState::Starting,
                },
                job_id: slot.in_flight.front().map(|f| f.job),
                tasks_completed: slot.tasks_completed,
                items_completed: slot.items_completed,
                restarts: slot.restarts,
            })
            .collect();
        PoolSnapshot {
            size: self.slots.len(),
            queued_chunks: self.queue.queued_chunks(),
            workers,
            last_error: self.last_error.clone(),
            offer: self.offer.borrow().as_deref().cloned(),
        }
    }
}
