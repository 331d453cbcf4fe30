//! Worker lifecycle for the supervisor: spawning slots, the hello handshake, stopping workers,
//! handling their exits (retrying or failing the chunk a dead worker was running), back-off
//! for workers that cannot start, and the final stop of every worker at shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{InFlight, MAX_BACKOFF, MIN_BACKOFF, SlotState, Supervisor};
use crate::pool::process::{self, Event, Exit, ExitKind, Origin};
use crate::pool::{ExitReason, WorkerOffer};
use crate::protocol::{PROTOCOL_VERSION, PooldError};

impl Supervisor {
    pub(super) fn next_restart(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|s| match s.state {
                SlotState::Down(at) => Some(at),
                _ => None,
            })
            .min()
    }

    pub(super) fn restart_due(&mut self) {
        let now = Instant::now();
        for slot in 0..self.slots.len() {
            if matches!(self.slots[slot].state, SlotState::Down(at) if at <= now) && !self.draining
            {
                self.spawn(slot);
            }
        }
    }

    pub(super) fn spawn(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        slot.generation += 1;
        let origin = Origin {
            slot: index,
            generation: slot.generation,
        };
        match process::spawn(
            &self.config.command,
            origin,
            self.events.clone(),
            self.config.kill_grace,
            self.config.memory_limit_mb,
        ) {
            Ok(process) => {
                tracing::debug!(worker = index, pid = process.pid, "worker spawned");
                slot.process = Some(process);
                slot.state = SlotState::Starting;
                slot.tasks_sent = 0;
            }
            Err(e) => {
                let error = format!(
                    "cannot start worker command {:?}: {e}",
                    self.config.command.program
                );
                tracing::error!(worker = index, "{error}");
                self.last_error = Some(error);
                slot.state = SlotState::Down(Instant::now() + slot.backoff);
                slot.backoff = (slot.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// Stop a worker on purpose (`reason` is counted when it exits); its other jobs' chunks go
    /// back to their queues.
    pub(super) fn stop_slot(&mut self, index: usize, reason: ExitReason) {
        let slot = &mut self.slots[index];
        if let Some(process) = slot.process.as_mut() {
            process.stop();
        }
        slot.stop_reason.get_or_insert(reason);
        slot.state = SlotState::Stopping;
        for flight in slot.in_flight.drain(..) {
            self.queue.put_back(flight.job, flight.pending);
        }
    }

    pub(super) fn on_hello(&mut self, index: usize, protocol: u32, pid: u32, offer: WorkerOffer) {
        if protocol != PROTOCOL_VERSION {
            let error = format!(
                "worker command {:?} speaks protocol version {protocol}, poold speaks {PROTOCOL_VERSION}",
                self.config.command.program
            );
            tracing::error!(worker = index, pid, "{error}");
            self.last_error = Some(error);
            self.slots[index].refused = true;
            self.stop_slot(index, ExitReason::Refused);
            return;
        }
        tracing::info!(
            worker = index,
            pid,
            functions = offer.functions.len(),
            codecs = ?offer.codecs,
            "worker ready"
        );
        let slot = &mut self.slots[index];
        slot.state = SlotState::Ready;
        slot.backoff = MIN_BACKOFF;
        self.last_error = None;
        self.offer.send_if_modified(|current| {
            let changed = current.as_deref() != Some(&offer);
            if changed {
                *current = Some(Arc::new(offer));
            }
            changed
        });
    }

    pub(super) fn on_exit(&mut self, index: usize, exit: Exit) {
        let out_of_memory = self.out_of_memory(&exit).is_some();
        let slot = &mut self.slots[index];
        let pid = slot.process.take().map(|p| p.pid);
        let expected = slot.state == SlotState::Stopping || self.draining;
        let died_starting = slot.state == SlotState::Starting || std::mem::take(&mut slot.refused);
        let mut flights = std::mem::take(&mut slot.in_flight);
        let stop_reason = slot.stop_reason.take();
        crate::metrics::worker_exited(match stop_reason {
            Some(reason) => reason,
            None if self.draining => ExitReason::Shutdown,
            None if out_of_memory => ExitReason::Oom,
            None if matches!(exit.how, ExitKind::Signal(_)) => ExitReason::Signal,
            None => ExitReason::Exit,
        });
        if expected {
            tracing::info!(worker = index, pid, how = %exit.how, "worker stopped");
        } else {
            tracing::warn!(worker = index, pid, how = %exit.how, stderr = %exit.stderr_tail, "worker exited");
        }
        slot.restarts += 1;
        if died_starting {
            let error = format!(
                "worker exited before its hello ({}): {}",
                exit.how, exit.stderr_tail
            );
            self.last_error.get_or_insert(error);
            slot.state = SlotState::Down(Instant::now() + slot.backoff);
            slot.backoff = (slot.backoff * 2).min(MAX_BACKOFF);
        } else {
            slot.state = SlotState::Down(Instant::now());
        }
        // The chunk it was running is the suspect; the ones queued behind it are innocent.
        if !expected && let Some(culprit) = flights.pop_front() {
            self.chunk_crashed(culprit, &exit);
        }
        for flight in flights {
            self.queue.put_back(flight.job, flight.pending);
        }
        if !self.draining {
            self.restart_due();
        }
    }

    /// A worker died running this chunk: retry it, or narrow it down to the item that kills
    /// workers and fail that one as `worker_exited` (or `out_of_memory`).
    fn chunk_crashed(&mut self, flight: InFlight, exit: &Exit) {
        let (kind, mut message) = match self.out_of_memory(exit) {
            Some(mb) => (
                PooldError::OutOfMemory,
                format!(
                    "the worker process ran out of memory (its limit is {mb} MiB, \
                     --worker-memory-mb) and exited ({}) while running this item's chunk",
                    exit.how
                ),
            ),
            None => (
                PooldError::WorkerExited,
                format!(
                    "the worker process exited ({}) while running this item's chunk",
                    exit.how
                ),
            ),
        };
        if !exit.stderr_tail.is_empty() {
            message.push_str("; its stderr ended with:\n");
            message.push_str(&exit.stderr_tail);
        }
        self.chunk_failed_attempt(flight, kind, message);
    }

    /// A run of this chunk failed through no fault of an item's own result (its worker died or
    /// broke the protocol): count the attempt and retry it, or, out of attempts, narrow it
    /// down to the guilty item and fail that one with `kind` and `message`.
    pub(super) fn chunk_failed_attempt(
        &mut self,
        mut flight: InFlight,
        kind: PooldError,
        message: String,
    ) {
        let Some(job) = self.queue.landed(flight.job) else {
            return;
        };
        let _span = job.span.clone().entered();
        flight.pending.attempts += 1;
        if flight.pending.attempts < job.spec.max_attempts {
            tracing::info!(job.id = %flight.job, chunk = flight.pending.chunk.start_index, attempts = flight.pending.attempts, "retrying chunk");
            self.queue.requeue(flight.job, flight.pending);
            return;
        }
        self.chunk_went_wrong(flight.job, flight.pending, kind, message);
    }

    /// The memory limit (MiB) a dead worker ran out of: set only with `--worker-memory-mb` and
    /// when its stderr shows an allocation failure.
    fn out_of_memory(&self, exit: &Exit) -> Option<u64> {
        self.config.memory_limit_mb.filter(|_| {
            OUT_OF_MEMORY_SIGNS
                .iter()
                .any(|sign| exit.stderr_tail.contains(sign))
        })
    }

    /// A worker that has run `--max-tasks-per-worker` chunks and has none left in flight is
    /// replaced, like Pool's `maxtasksperchild`.
    pub(super) fn recycle_if_spent(&mut self, index: usize) {
        let slot = &self.slots[index];
        let spent = self
            .config
            .max_tasks_per_worker
            .is_some_and(|max| slot.tasks_sent >= max);
        if spent && slot.in_flight.is_empty() && slot.state == SlotState::Ready {
            tracing::info!(worker = index, tasks = slot.tasks_sent, "recycling worker");
            self.stop_slot(index, ExitReason::Recycle);
        }
    }

    /// Stop every worker and wait (bounded) until each one has been reaped.
    pub(super) async fn stop_all(&mut self, events: &mut mpsc::UnboundedReceiver<Event>) {
        self.draining = true;
        let mut alive = 0;
        for slot in &mut self.slots {
            if let Some(process) = slot.process.as_mut() {
                process.stop();
                alive += 1;
            }
        }
        let deadline = Instant::now() + self.config.kill_grace + Duration::from_secs(2);
        while alive > 0 {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(Event::Exited(origin, _)))
                    if self.slots[origin.slot].generation == origin.generation =>
                {
                    self.slots[origin.slot].process = None;
                    alive -= 1;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        if alive > 0 {
            tracing::error!(alive, "some workers did not exit in time");
        }
        tracing::info!("all workers stopped");
    }
}

/// Signs of an allocation failure in a worker's last stderr lines (Python's `MemoryError`,
/// Rust's "memory allocation of N bytes failed", C's ENOMEM, C++'s `bad_alloc`).
const OUT_OF_MEMORY_SIGNS: [&str; 5] = [
    "MemoryError",
    "memory allocation of",
    "Cannot allocate memory",
    "out of memory",
    "bad_alloc",
];
