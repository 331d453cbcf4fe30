//! Which chunk runs next. Owned by the supervisor; no locking, no I/O but chunk fetches.
//!
//! Each unfinished job keeps a small window of its queued chunks in memory (fetched from the
//! store in order, a few thousand items at most), never its whole item list. The next chunk
//! comes from the highest-priority job with work; among equals, from the one with the fewest
//! chunks in flight, then the fewest dispatched so far — so a 3-item job submitted behind a
//! 100,000-item job gets the next free worker instead of waiting for the big one. A job with
//! `max_concurrency` is passed over while that many of its chunks are in flight (pipelined
//! ones included), whatever its priority.
//!
//! On a store shared by several nodes the window holds chunks this node *claimed*: only as many
//! as its free workers will start within about [`CLAIM_AHEAD`], so that a job's chunks spread
//! over every node's workers while short chunks still come in batches.

use std::cmp::Reverse;
use std::collections::VecDeque;

use crate::model::{Chunk, Job, JobId, JobSpec};
use crate::store::Store;

/// Items fetched per refill of a job's window (at least a few chunks).
const WINDOW_ITEMS: u32 = 4096;
/// On a shared store, a claim takes the chunks free workers will start within this time (as
/// the job's chunks have run so far), at least one per free worker.
const CLAIM_AHEAD: f64 = 0.05;
/// The most chunks one claim takes.
const MAX_CLAIM: u32 = 256;

/// A chunk waiting to run, with the runs it already had.
#[derive(Debug)]
pub struct Pending {
    pub chunk: Chunk,
    pub attempts: u32,
    /// One item of a chunk that was split (see `supervisor::outcomes`): that chunk's start.
    pub piece_of: Option<u64>,
}

impl Pending {
    /// A chunk to run, with the runs it lost with nodes (see `Chunk::attempts`).
    pub fn new(chunk: Chunk) -> Self {
        Self {
            attempts: chunk.attempts,
            chunk,
            piece_of: None,
        }
    }
}

pub struct ActiveJob {
    pub id: JobId,
    pub spec: JobSpec,
    /// Whether the store has been told the job is running.
    pub started: bool,
    /// Its items are still being uploaded: more chunks may come, so it stays scheduled (and
    /// keeps its place in the chunk order) even when it has caught up with the upload.
    open: bool,
    pub in_flight: u32,
    /// Moving average of its chunks' run time in seconds, once one has finished.
    pub chunk_secs: Option<f64>,
    /// The job's span: the supervisor enters it around what it logs about the job.
    pub span: tracing::Span,
    ready: VecDeque<Pending>,
    last_fetched: Option<u64>,
    unfetched: u64,
    dispatched: u64,
}

impl ActiveJob {
    fn has_work(&self) -> bool {
        !self.ready.is_empty() || self.unfetched > 0
    }

    /// Whether another of its chunks may start now (its `max_concurrency` is not reached).
    fn below_cap(&self) -> bool {
        self.spec
            .max_concurrency
            .is_none_or(|cap| self.in_flight < cap)
    }
}

#[derive(Default)]
pub struct Queue {
    jobs: Vec<ActiveJob>,
}

impl Queue {
    /// Schedule `count` more queued chunks of a job: a new one, one resumed on start, or one
    /// whose upload stored another batch or ended (`job.ingesting` says which). `chunks` are
    /// those chunks when the job service handed them over (a small new job): they run without
    /// a read. A count that turns out too high costs one empty fetch.
    pub fn add(&mut self, job: &Job, count: u64, chunks: Option<Vec<Chunk>>) {
        let (ready, unfetched) = match chunks {
            Some(chunks) => {
                let last = chunks.last().map(|c| c.start_index);
                let fetched = chunks.len() as u64;
                (Some((chunks, last)), count.saturating_sub(fetched))
            }
            None => (None, count),
        };
        if let Some(active) = self.get_mut(job.id) {
            active.unfetched += unfetched;
            active.open = job.ingesting;
            if let Some((chunks, last)) = ready {
                active.ready.extend(chunks.into_iter().map(Pending::new));
                active.last_fetched = last.or(active.last_fetched);
            }
            return;
        }
        let (ready, last_fetched) = match ready {
            Some((chunks, last)) => (chunks.into_iter().map(Pending::new).collect(), last),
            None => (VecDeque::new(), None),
        };
        self.jobs.push(ActiveJob {
            id: job.id,
            spec: job.spec.clone(),
            started: job.status != crate::model::JobStatus::Queued,
            open: job.ingesting,
            in_flight: 0,
            chunk_secs: None,
            span: tracing::info_span!("job", job.id = %job.id, function = %job.spec.function),
            ready,
            last_fetched,
            unfetched,
            dispatched: 0,
        });
    }

    /// Another node stored (or re-queued) chunks of a scheduled job: claim again.
    pub fn more_work(&mut self, id: JobId) -> bool {
        match self.get_mut(id) {
            Some(job) => {
                job.unfetched = job.unfetched.max(1);
                true
            }
            None => false,
        }
    }

    /// This node's claims were taken away (it was declared lost): forget every chunk not yet
    /// running, and claim again. Pieces of a split chunk stay (their chunk is held while it is
    /// split; see `supervisor::outcomes`).
    pub fn drop_claims(&mut self) {
        for job in &mut self.jobs {
            job.ready.retain(|pending| pending.piece_of.is_some());
            job.unfetched = job.unfetched.max(1);
            job.last_fetched = None;
        }
    }

    /// The chunks waiting in the windows, as (job, chunk start).
    pub fn held(&self) -> impl Iterator<Item = (JobId, u64)> + '_ {
        self.jobs.iter().flat_map(|job| {
            job.ready
                .iter()
                .map(move |p| (job.id, p.piece_of.unwrap_or(p.chunk.start_index)))
        })
    }

    pub fn remove(&mut self, id: JobId) -> Option<ActiveJob> {
        let at = self.jobs.iter().position(|job| job.id == id)?;
        Some(self.jobs.remove(at))
    }

    pub fn get(&self, id: JobId) -> Option<&ActiveJob> {
        self.jobs.iter().find(|job| job.id == id)
    }

    pub fn get_mut(&mut self, id: JobId) -> Option<&mut ActiveJob> {
        self.jobs.iter_mut().find(|job| job.id == id)
    }

    pub fn queued_chunks(&self) -> u64 {
        self.jobs
            .iter()
            .map(|job| job.ready.len() as u64 + job.unfetched)
            .sum()
    }

    /// A chunk of this job is out of flight (its result came, its worker died or was stopped):
    /// the job, if it is still scheduled, for what happens to the chunk next.
    pub fn landed(&mut self, id: JobId) -> Option<&mut ActiveJob> {
        let job = self.get_mut(id)?;
        job.in_flight -= 1;
        Some(job)
    }

    /// Take a chunk out of flight and put it back at the front of its job's window, with its
    /// attempts unchanged (its worker was stopped for a reason that is not the chunk's fault).
    pub fn put_back(&mut self, id: JobId, pending: Pending) {
        if let Some(job) = self.landed(id) {
            job.ready.push_front(pending);
        }
    }

    /// Put a chunk that is not in flight at the front of its job's window (a retry, a piece).
    pub fn requeue(&mut self, id: JobId, pending: Pending) {
        if let Some(job) = self.get_mut(id) {
            job.ready.push_front(pending);
        }
    }

    /// Forget a job that has nothing left to run or wait for. Returns whether it was dropped.
    pub fn retire_if_done(&mut self, id: JobId) -> bool {
        match self.get_mut(id) {
            Some(job) if !job.has_work() && job.in_flight == 0 && !job.open => {
                self.remove(id).is_some()
            }
            _ => false,
        }
    }

    /// Take the next chunk to run, refilling a job's window from the store when it is empty
    /// (`free`: how many workers can take a chunk now). The caller counts it in flight.
    pub async fn next(&mut self, store: &Store, free: u32) -> Option<(JobId, Pending)> {
        let shared = store.cluster().is_some();
        loop {
            let job = self
                .jobs
                .iter_mut()
                .filter(|job| job.has_work() && job.below_cap())
                .max_by_key(|job| {
                    (
                        job.spec.priority,
                        Reverse(job.in_flight),
                        Reverse(job.dispatched),
                    )
                })?;
            if job.ready.is_empty() {
                let limit = if shared {
                    let per_worker = job
                        .chunk_secs
                        .map_or(1.0, |secs| (CLAIM_AHEAD / secs.max(1e-6)).ceil().max(1.0));
                    (f64::from(free.max(1)) * per_worker).min(f64::from(MAX_CLAIM)) as u32
                } else {
                    (WINDOW_ITEMS / job.spec.chunksize.max(1)).clamp(4, 256)
                };
                let id = job.id;
                match store.claim_chunks(id, job.last_fetched, limit).await {
                    Ok(chunks) => {
                        let fetched = chunks.len() as u64;
                        job.unfetched = if fetched < u64::from(limit) {
                            0
                        } else {
                            job.unfetched.saturating_sub(fetched).max(1)
                        };
                        job.last_fetched =
                            chunks.last().map(|c| c.start_index).or(job.last_fetched);
                        job.ready.extend(chunks.into_iter().map(Pending::new));
                        if fetched == 0 {
                            // Nothing left for this node (done, or other nodes have the rest):
                            // forget the job unless it still waits for chunks; news of more
                            // work schedules it again.
                            self.retire_if_done(id);
                        }
                    }
                    Err(e) => {
                        tracing::error!(job.id = %job.id, error = %e, "could not fetch chunks; will retry");
                        return None;
                    }
                }
                continue;
            }
            let pending = job.ready.pop_front().expect("window is not empty");
            job.dispatched += 1;
            return Some((job.id, pending));
        }
    }
}
