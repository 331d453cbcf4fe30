//! Where a chunk's outcomes go, and how a chunk that goes wrong is narrowed down.
//!
//! A finished chunk's outcomes are recorded through the store's writer (and may trip
//! `fail_fast`). A chunk whose worker ran past its time budget, or kept dying on it, is split
//! into single-item *pieces* that run on their own, so that only the guilty item fails
//! (`timeout`, `worker_exited`) while the others complete. Pieces are assembled here and
//! recorded as the original chunk, so a chunk is still recorded exactly once. Item logs (what
//! a function printed) are bounded here, before they reach the store.

use serde_json::value::RawValue;
use tokio::time::Instant;

use super::Supervisor;
use crate::model::{Chunk, JobId, JobStatus, OnError};
use crate::pool::ExitReason;
use crate::pool::queue::Pending;
use crate::protocol::{ItemOutcome, PooldError};

/// A chunk whose pieces are running: the outcomes gathered so far, by item.
pub(super) struct Split {
    parent: Chunk,
    outcomes: Vec<Option<ItemOutcome>>,
}

impl Supervisor {
    /// A chunk or piece finished (the caller already took it out of flight): record it,
    /// assembling pieces, and apply `fail_fast`.
    pub(super) fn chunk_done(
        &mut self,
        job_id: JobId,
        pending: Pending,
        mut outcomes: Vec<ItemOutcome>,
    ) {
        let Some(job) = self.queue.get_mut(job_id) else {
            return;
        };
        let _span = job.span.clone().entered();
        for outcome in &mut outcomes {
            outcome.bound_log();
            outcome.check_value();
        }
        let fail_fast = job.spec.on_error == OnError::FailFast;
        let first_error = outcomes.iter().position(|o| o.error.is_some()).map(|i| {
            let error = outcomes[i].error.as_ref().expect("position found an error");
            (
                pending.chunk.start_index + i as u64,
                format!("{}: {}", error.kind, error.message),
            )
        });
        let whole = if pending.piece {
            self.add_piece(job_id, &pending.chunk, outcomes)
        } else {
            Some((pending.chunk, outcomes))
        };
        if let Some((chunk, outcomes)) = whole {
            crate::metrics::items_finished(&outcomes);
            let failed = outcomes.iter().filter(|o| o.error.is_some()).count() as u64;
            let outcomes = serde_json::to_string(&outcomes).expect("outcomes serialize");
            self.store.record_chunk(job_id, &chunk, outcomes, failed);
        }
        match first_error {
            Some((index, error)) if fail_fast => {
                let message = format!("item {index} failed ({error}); on_error is fail_fast");
                self.store
                    .finish_job_later(job_id, JobStatus::Failed, Some(message));
                self.drop_job(job_id);
            }
            _ => {
                self.queue.retire_if_done(job_id);
            }
        }
    }

    /// Keep a piece's outcome; once every piece is in, return the whole chunk to record.
    fn add_piece(
        &mut self,
        job_id: JobId,
        piece: &Chunk,
        outcomes: Vec<ItemOutcome>,
    ) -> Option<(Chunk, Vec<ItemOutcome>)> {
        let key = (job_id, piece.chunk_index);
        let split = self.splits.get_mut(&key)?;
        let at = (piece.start_index - split.parent.start_index) as usize;
        split.outcomes[at] = outcomes.into_iter().next();
        if split.outcomes.iter().any(Option::is_none) {
            return None;
        }
        let split = self.splits.remove(&key).expect("present above");
        Some((
            split.parent,
            split
                .outcomes
                .into_iter()
                .map(|o| o.expect("all present"))
                .collect(),
        ))
    }

    /// Run each item of a chunk on its own (the caller already took it out of flight).
    pub(super) fn split(&mut self, job_id: JobId, chunk: Chunk) {
        let items: Vec<Box<RawValue>> =
            serde_json::from_str(chunk.items.get()).expect("a stored chunk is a JSON array");
        tracing::info!(job.id = %job_id, chunk = chunk.chunk_index, items = items.len(), "splitting chunk to isolate a bad item");
        // Requeueing puts each piece at the front: go backwards to keep item order.
        for (i, item) in items.iter().enumerate().rev() {
            let piece = Chunk {
                chunk_index: chunk.chunk_index,
                start_index: chunk.start_index + i as u64,
                size: 1,
                items: RawValue::from_string(format!("[{}]", item.get()))
                    .expect("an item in brackets is JSON"),
            };
            self.queue.requeue(
                job_id,
                Pending {
                    chunk: piece,
                    attempts: 0,
                    piece: true,
                },
            );
        }
        let outcomes = vec![None; items.len()];
        self.splits.insert(
            (job_id, chunk.chunk_index),
            Split {
                parent: chunk,
                outcomes,
            },
        );
    }

    /// A chunk is over its time budget, or its worker died on it for the last time: narrow it
    /// down to the guilty item, or fail that item with `kind` and `message`.
    pub(super) fn chunk_went_wrong(
        &mut self,
        job_id: JobId,
        pending: Pending,
        kind: PooldError,
        message: String,
    ) {
        if pending.chunk.size > 1 {
            self.split(job_id, pending.chunk);
        } else {
            let outcome = ItemOutcome::failed(kind, message);
            self.chunk_done(job_id, pending, vec![outcome]);
        }
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|s| s.in_flight.front().and_then(|f| f.deadline))
            .min()
    }

    /// Stop workers whose running chunk is past its deadline, and deal with that chunk.
    pub(super) fn expire_deadlines(&mut self) {
        let now = Instant::now();
        for index in 0..self.slots.len() {
            let slot = &mut self.slots[index];
            if slot
                .in_flight
                .front()
                .and_then(|f| f.deadline)
                .is_none_or(|d| d > now)
            {
                continue;
            }
            let flight = slot.in_flight.pop_front().expect("checked above");
            self.stop_slot(index, ExitReason::Timeout); // puts back the chunks behind it
            let Some(job) = self.queue.landed(flight.job) else {
                continue;
            };
            let limit = job.spec.timeout_s.unwrap_or_default();
            tracing::warn!(worker = index, job.id = %flight.job, chunk = flight.pending.chunk.chunk_index, timeout_s = limit, "chunk ran past its time limit; stopping its worker");
            let message = format!(
                "the item ran longer than its limit of {limit} s (timeout_s); its worker was stopped"
            );
            self.chunk_went_wrong(flight.job, flight.pending, PooldError::Timeout, message);
        }
    }
}
