//! Where a chunk's outcomes go, and how a chunk that goes wrong is narrowed down.
//!
//! A finished chunk's outcomes are recorded through the store's writer (and may trip
//! `fail_fast`). A chunk whose worker ran past its time budget, or kept dying on it, is split
//! into single-item *pieces* that run on their own, so that only the guilty item fails
//! (`timeout`, `worker_exited`) while the others complete. Pieces are assembled here and
//! recorded as the original chunk, so a chunk is still recorded exactly once. A worker's
//! outcomes were checked (and bounded) on arrival (`crate::outcomes`).

use serde_json::value::RawValue;
use tokio::time::Instant;

use super::Supervisor;
use crate::model::{Chunk, JobId, OnError};
use crate::outcomes::ChunkOutcomes;
use crate::pool::ExitReason;
use crate::pool::queue::Pending;
use crate::protocol::PooldError;
use crate::store::ChunkRecord;

/// A chunk whose pieces are running: the outcomes gathered so far, by item.
pub(super) struct Split {
    parent: Chunk,
    outcomes: Vec<Option<ChunkOutcomes>>,
}

impl Supervisor {
    /// A chunk or piece finished (the caller already took it out of flight): record it,
    /// assembling pieces, and apply `fail_fast` (in the same write as the record).
    pub(super) fn chunk_done(&mut self, job_id: JobId, pending: Pending, outcomes: ChunkOutcomes) {
        let Some(job) = self.queue.get_mut(job_id) else {
            return;
        };
        let _span = job.span.clone().entered();
        let fail_fast = job.spec.on_error == OnError::FailFast;
        let whole = match pending.piece_of {
            Some(parent) => self.add_piece(job_id, parent, &pending.chunk, outcomes),
            None => Some((pending.chunk, outcomes)),
        };
        let Some((chunk, outcomes)) = whole else {
            return;
        };
        crate::metrics::items_finished(&outcomes);
        let fail_job = match &outcomes.first_error {
            Some((at, error)) if fail_fast => Some(format!(
                "item {} failed ({error}); on_error is fail_fast",
                chunk.start_index + at
            )),
            _ => None,
        };
        let failing = fail_job.is_some();
        self.store.record_chunk(ChunkRecord {
            id: job_id,
            start: chunk.start_index,
            outcomes,
            fail_job,
            lease: chunk.lease,
        });
        if failing {
            self.drop_job(job_id);
        } else {
            self.queue.retire_if_done(job_id);
        }
    }

    /// Keep a piece's outcome; once every piece is in, return the whole chunk to record.
    fn add_piece(
        &mut self,
        job_id: JobId,
        parent: u64,
        piece: &Chunk,
        outcomes: ChunkOutcomes,
    ) -> Option<(Chunk, ChunkOutcomes)> {
        let key = (job_id, parent);
        let split = self.splits.get_mut(&key)?;
        let at = (piece.start_index - parent) as usize;
        split.outcomes[at] = Some(outcomes);
        if split.outcomes.iter().any(Option::is_none) {
            return None;
        }
        let split = self.splits.remove(&key).expect("present above");
        let pieces: Vec<ChunkOutcomes> = split.outcomes.into_iter().flatten().collect();
        Some((split.parent, ChunkOutcomes::join(&pieces)))
    }

    /// Run each item of a chunk on its own (the caller already took it out of flight).
    pub(super) fn split(&mut self, job_id: JobId, chunk: Chunk) {
        let items: Vec<&RawValue> =
            serde_json::from_str(chunk.items.get()).expect("a chunk's items are a JSON array");
        tracing::info!(job.id = %job_id, chunk = chunk.start_index, items = items.len(), "splitting chunk to isolate a bad item");
        // Requeueing puts each piece at the front: go backwards to keep item order.
        for (i, item) in items.iter().enumerate().rev() {
            let piece = Chunk {
                start_index: chunk.start_index + i as u64,
                size: 1,
                items: RawValue::from_string(format!("[{}]", item.get()))
                    .expect("an item in brackets is JSON"),
                lease: chunk.lease,
                attempts: 0,
            };
            self.queue.requeue(
                job_id,
                Pending {
                    chunk: piece,
                    attempts: 0,
                    piece_of: Some(chunk.start_index),
                },
            );
        }
        let outcomes = (0..items.len()).map(|_| None).collect();
        drop(items);
        self.splits.insert(
            (job_id, chunk.start_index),
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
            let outcomes = ChunkOutcomes::all_failed(1, kind, &message);
            self.chunk_done(job_id, pending, outcomes);
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
            tracing::warn!(worker = index, job.id = %flight.job, chunk = flight.pending.chunk.start_index, timeout_s = limit, "chunk ran past its time limit; stopping its worker");
            let message = format!(
                "the item ran longer than its limit of {limit} s (timeout_s); its worker was stopped"
            );
            self.chunk_went_wrong(flight.job, flight.pending, PooldError::Timeout, message);
        }
    }
}
