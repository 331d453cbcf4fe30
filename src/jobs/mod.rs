//! The job service: the job lifecycle, between the API and the store and the pool.
//!
//! It is the one place that writes a job to the store and then tells the pool: a submitted
//! job (JSON body: [`JobService::prepare`], then [`JobService::submit`]), an upload (NDJSON:
//! [`JobService::open_upload`], see [`upload`]), a cancel, a delete. It checks what a job asks
//! for ([`spec`]), whether the pool takes it (open, not shutting down, the function served, the
//! codec accepted) and whether the queue has room (admission control), and cuts items into
//! chunks ([`batch`]). A small job's chunks go to the supervisor with the news of the job, so
//! it runs them without reading them back. Its errors ([`Error`]) say what went wrong in the
//! job's terms; the API turns them into problems. Called by the API's handlers; readers of
//! results go to the store directly.

mod batch;
pub mod spec;
mod upload;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use batch::ChunkBatcher;
pub use spec::JobRequest;
pub use upload::Upload;

use crate::events::EventBus;
use crate::model::{Job, JobId, JobSpec, JobStatus};
use crate::pool::PoolHandle;
use crate::store::{DeleteOutcome, Idempotency, NewJob, Store};

/// Longest `wait` a long-poll may ask for, in seconds.
pub const MAX_WAIT_S: f64 = 300.0;

/// How long a count of queued items is trusted for admission control before it is read again
/// (the items of jobs admitted meanwhile are added to it).
const ADMISSION_REFRESH: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("no worker offers a function named {0:?}; see GET /v1/functions")]
    UnknownFunction(String),
    #[error("no worker accepts the {0} codec")]
    UnsupportedCodec(&'static str),
    #[error("this Idempotency-Key was used for job {0} with another request body")]
    IdempotencyKeyReused(JobId),
    #[error("no job with id {0}")]
    NotFound(String),
    #[error("job {0} is not finished; cancel it first")]
    NotFinished(JobId),
    #[error("{0}")]
    TooManyQueued(String),
    #[error("the pool is closed to new jobs (POST /v1/pool/open reopens it)")]
    PoolClosed,
    #[error("poold is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    NotReady(String),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error(transparent)]
    Pool(#[from] crate::pool::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The bounds the service applies besides `crate::limits` (server flags).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_items_per_job: usize,
    /// Items queued or running across all jobs beyond which new jobs get 429.
    pub max_queued_items: u64,
    /// `timeout_s` for jobs that set none (`--task-timeout`).
    pub default_timeout_s: Option<f64>,
    /// This node's workers (for the automatic chunksize on one node; on a shared store, the
    /// workers of every live node count, see `PoolHandle::cluster_workers`).
    pub workers: usize,
}

#[derive(Clone)]
pub struct JobService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    pool: PoolHandle,
    events: EventBus,
    limits: Limits,
    shutdown: CancellationToken,
    /// Queued items as last read (when), and the items admitted since.
    admission: Mutex<(Option<Instant>, u64, u64)>,
}

/// A job being prepared from a JSON body: its spec checked, its items added one by one.
pub struct Submission {
    spec: JobSpec,
    batcher: ChunkBatcher,
    pieces: Vec<String>,
    chunks: u64,
}

impl Submission {
    /// Add the next item (checked as `spec::check_item` says).
    pub fn push(&mut self, item: &RawValue) -> Result<()> {
        spec::check_item(&self.spec, self.batcher.items(), item).map_err(Error::Invalid)?;
        self.batcher.push(item.get());
        if self.batcher.full_bytes() >= batch::PIECE_BYTES {
            self.take_piece();
        }
        Ok(())
    }

    fn take_piece(&mut self) {
        if let Some(piece) = self.batcher.take_full() {
            self.pieces.push(piece.json);
            self.chunks += piece.chunks;
        }
    }
}

impl JobService {
    pub fn new(
        store: Store,
        pool: PoolHandle,
        events: EventBus,
        limits: Limits,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                pool,
                events,
                limits,
                shutdown,
                admission: Mutex::new((None, 0, 0)),
            }),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Check a job of `items` items (known from a JSON body) before its items are added: the
    /// pool takes jobs, the spec is valid, the function and codec are served, the queue has
    /// room. Then add the items with [`Submission::push`] and store it with
    /// [`JobService::submit`].
    pub async fn prepare(&self, request: JobRequest, items: u64) -> Result<Submission> {
        self.check_open()?;
        if items > self.inner.limits.max_items_per_job as u64 {
            return Err(self.too_many_items());
        }
        let spec = self.check_request(request, Some(items)).await?;
        self.admit(items).await?;
        Ok(Submission {
            batcher: ChunkBatcher::new(spec.chunksize, true),
            spec,
            pieces: Vec::new(),
            chunks: 0,
        })
    }

    /// Store a prepared job (one write), then hand it to the pool. With an `Idempotency-Key`,
    /// a concurrent request with the same key may have won: then that job is returned.
    pub async fn submit(
        &self,
        mut submission: Submission,
        idempotency: Option<Idempotency>,
    ) -> Result<(Job, bool)> {
        submission.batcher.close();
        submission.take_piece();
        // A small job's chunks go to this node's supervisor with the news of the job. On a
        // shared store they are then claimed by this node, so only when its workers can start
        // them all at once: a bigger job's chunks spread over every node's workers, and while
        // this node's workers are busy and other nodes have workers, any of those may take
        // them. The supervisor says when it has them (`Cluster::reserve_lease`); if they
        // never reach it, this does.
        let cluster = self.inner.store.cluster();
        let kept = submission
            .batcher
            .kept()
            .filter(|chunks| cluster.is_none() || self.can_start_here(chunks.len()));
        let claim = kept
            .as_ref()
            .map(|_| cluster.map_or(0, |c| c.reserve_lease()));
        let never_handed = || {
            if let (Some(cluster), Some(lease)) = (cluster, claim) {
                cluster.lease_handed_over(lease);
            }
        };
        let kept = kept.map(|mut chunks| {
            for chunk in &mut chunks {
                chunk.lease = claim.unwrap_or_default();
            }
            chunks
        });
        let total = submission.batcher.items();
        let job = spec::new_job(submission.spec, total, false);
        let new = NewJob {
            job: job.clone(),
            pieces: submission.pieces,
            idempotency: idempotency.clone(),
            claim,
        };
        if let Err(e) = self.inner.store.create_job(new).await {
            never_handed();
            return match self.earlier(idempotency.as_ref()).await? {
                Some(earlier) => Ok((earlier, false)),
                None => Err(e.into()),
            };
        }
        tracing::debug!(job.id = %job.id, function = %job.spec.function, total, "job accepted");
        if let Err(e) = self
            .inner
            .pool
            .chunks_stored(&job, submission.chunks, kept)
            .await
        {
            never_handed();
            return Err(e.into());
        }
        Ok((job, true))
    }

    /// The job an earlier request with this `Idempotency-Key` created, if this is a repeat of
    /// it; an error if the key was used with another request.
    pub async fn earlier(&self, idempotency: Option<&Idempotency>) -> Result<Option<Job>> {
        let Some(idempotency) = idempotency else {
            return Ok(None);
        };
        match self
            .inner
            .store
            .job_by_idempotency_key(&idempotency.key)
            .await?
        {
            Some((job, hash)) if hash == idempotency.request_hash => Ok(Some(job)),
            Some((job, _)) => Err(Error::IdempotencyKeyReused(job.id)),
            None => Ok(None),
        }
    }

    /// Cancel a job: queued chunks never run, running ones are stopped, recorded results
    /// stay. A finished job is returned as it is.
    pub async fn cancel(&self, id: JobId) -> Result<Job> {
        self.get(id).await?;
        if self
            .inner
            .store
            .finish_job(id, JobStatus::Cancelled, None)
            .await?
        {
            tracing::info!(job.id = %id, "job cancelled");
            self.inner.pool.job_ended(id).await?;
        }
        self.get(id).await
    }

    /// Fail an unfinished job with `reason` (its queued chunks never run); false if it had
    /// finished already. At shutdown the pool may be gone: then nothing of the job runs anyway.
    pub async fn fail(&self, id: JobId, reason: String) -> Result<bool> {
        let failed = self
            .inner
            .store
            .finish_job(id, JobStatus::Failed, Some(reason))
            .await?;
        if failed {
            let _ = self.inner.pool.job_ended(id).await;
        }
        Ok(failed)
    }

    /// Delete a finished job and its results.
    pub async fn delete(&self, id: JobId) -> Result<()> {
        match self.inner.store.delete_job(id).await? {
            DeleteOutcome::Deleted => Ok(()),
            DeleteOutcome::NotFound => Err(Error::NotFound(id.to_string())),
            DeleteOutcome::NotFinished => Err(Error::NotFinished(id)),
        }
    }

    pub async fn get(&self, id: JobId) -> Result<Job> {
        self.inner
            .store
            .get_job(id)
            .await?
            .ok_or_else(|| Error::NotFound(id.to_string()))
    }

    /// The job once finished, or after `wait` seconds (or at shutdown), whichever comes first.
    pub async fn wait(&self, id: JobId, wait: Option<f64>) -> Result<Job> {
        let wait = match wait {
            None => 0.0,
            Some(w) if w.is_finite() && w >= 0.0 => w.min(MAX_WAIT_S),
            Some(w) => {
                return Err(Error::Invalid(format!(
                    "wait must be a non-negative number of seconds, got {w}"
                )));
            }
        };
        let deadline = Instant::now() + Duration::from_secs_f64(wait);
        let mut changes = self.inner.events.subscribe(id);
        loop {
            changes.borrow_and_update();
            let job = self.get(id).await?;
            if job.status.is_finished() || Instant::now() >= deadline {
                return Ok(job);
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = self.inner.shutdown.cancelled() => return Ok(job),
            }
        }
    }

    /// On a shared store: whether this node's workers can start `chunks` at once. A node
    /// alone (or whose peers have no workers) runs everything itself, so there it is enough
    /// that it has that many workers.
    fn can_start_here(&self, chunks: usize) -> bool {
        let here = self.inner.limits.workers;
        let everywhere = self.inner.pool.cluster_workers().unwrap_or(here);
        chunks <= here && (everywhere <= here || chunks <= self.inner.pool.idle_workers())
    }

    // ---- checks ----

    /// New jobs are taken: not shutting down, the pool not closed.
    fn check_open(&self) -> Result<()> {
        if self.inner.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        if !self.inner.pool.accepting() {
            return Err(Error::PoolClosed);
        }
        Ok(())
    }

    /// The spec of a request, checked, and served by the workers (waiting a little for the
    /// first worker to say what it serves).
    async fn check_request(&self, request: JobRequest, items: Option<u64>) -> Result<JobSpec> {
        let limits = &self.inner.limits;
        let workers = self.inner.pool.cluster_workers().unwrap_or(limits.workers);
        let spec = spec::validate(request, items, workers, limits.default_timeout_s)
            .map_err(Error::Invalid)?;
        let offer = self
            .inner
            .pool
            .offer(Duration::from_secs(10))
            .await
            .ok_or_else(|| Error::NotReady("no worker has started yet; see GET /readyz".into()))?;
        if !offer.serves(&spec.function) {
            return Err(Error::UnknownFunction(spec.function));
        }
        if !offer.accepts(spec.codec) {
            return Err(Error::UnsupportedCodec(spec.codec.as_str()));
        }
        Ok(spec)
    }

    fn too_many_items(&self) -> Error {
        Error::TooLarge(format!(
            "more items than the limit of {} per job",
            self.inner.limits.max_items_per_job
        ))
    }

    /// Admission control: refuse (429) a job that would take the items queued or running
    /// across all jobs over `--max-queued-items`. A streamed job (length unknown) is admitted
    /// with `items` = 0, i.e. when the queue is not full already. The count is read from the
    /// store at most every [`ADMISSION_REFRESH`] (jobs admitted meanwhile are added to it), and
    /// always before a refusal.
    async fn admit(&self, items: u64) -> Result<()> {
        let limit = self.inner.limits.max_queued_items;
        let cached = {
            let admission = self.inner.admission.lock().expect("admission");
            match admission.0 {
                Some(at) if at.elapsed() < ADMISSION_REFRESH => Some(admission.1 + admission.2),
                _ => None,
            }
        };
        // A cached count only admits; a refusal is made on a fresh one (a job that just
        // ended frees its room at once).
        let queued = match cached {
            Some(queued) if queued.saturating_add(items) <= limit => queued,
            _ => {
                let queued = self.inner.store.unfinished_items().await?;
                *self.inner.admission.lock().expect("admission") =
                    (Some(Instant::now()), queued, 0);
                queued
            }
        };
        if queued.saturating_add(items) > limit {
            return Err(Error::TooManyQueued(format!(
                "{queued} items are queued or running and this job adds {items}, over the limit of \
                 {limit}; retry later"
            )));
        }
        self.inner.admission.lock().expect("admission").2 += items;
        Ok(())
    }
}
