//! An upload: a job whose items arrive over time (NDJSON streaming ingest; the API reads the
//! lines and calls this).
//!
//! The job is stored as soon as it is opened, with `ingesting` set (its total is not final and
//! it cannot complete). Items are cut into chunks; full chunks are stored (and the supervisor
//! told) in batches of at most [`BATCH_CHUNKS`] chunks or a piece's worth of bytes, and
//! whenever the client pauses ([`Upload::flush`], called by the reader when no line is
//! ready), so that workers start on what has arrived at once. Memory is one batch plus one
//! chunk, whatever the job's size. [`Upload::close`] stores the last chunk with the end of the upload in one
//! transaction; [`Upload::fail`] fails the job; [`Upload::stop`] is a client's own stop: what
//! it sent runs, then the job fails with its reason.

use serde_json::value::RawValue;

use super::batch::{ChunkBatcher, PIECE_BYTES};
use super::{Error, JobRequest, JobService, Result, spec};
use crate::model::Job;
use crate::store::NewJob;

/// A batch is stored once it holds this many full chunks (or a piece's worth of bytes).
const BATCH_CHUNKS: u64 = 64;

pub struct Upload {
    service: JobService,
    job: Job,
    batcher: ChunkBatcher,
}

impl JobService {
    /// Check a job whose items will follow (like [`JobService::prepare`], its length unknown)
    /// and store it with its upload open.
    pub async fn open_upload(&self, request: JobRequest) -> Result<Upload> {
        self.check_open()?;
        let spec = self.check_request(request, None).await?;
        // Its length is unknown: admitted if the queue is not full already.
        self.admit(0).await?;
        let job = spec::new_job(spec, 0, true);
        self.inner
            .store
            .create_job(NewJob {
                job: job.clone(),
                pieces: Vec::new(),
                idempotency: None,
                claim: None,
            })
            .await?;
        tracing::debug!(job.id = %job.id, function = %job.spec.function, "streamed job accepted; its items are arriving");
        Ok(Upload {
            service: self.clone(),
            batcher: ChunkBatcher::new(job.spec.chunksize, false),
            job,
        })
    }
}

impl Upload {
    pub fn job(&self) -> &Job {
        &self.job
    }

    /// Items added so far.
    pub fn items(&self) -> u64 {
        self.batcher.items()
    }

    /// Add the next item. `Ok(false)` when the job ended meanwhile (cancelled, failed fast):
    /// the rest of the upload can be dropped.
    pub async fn push(&mut self, item: &RawValue) -> Result<bool> {
        if self.items() >= self.service.inner.limits.max_items_per_job as u64 {
            return Err(self.service.too_many_items());
        }
        spec::check_item(&self.job.spec, self.items(), item).map_err(Error::Invalid)?;
        self.batcher.push(item.get());
        if self.batcher.full_bytes() >= PIECE_BYTES || self.batcher.full_chunks() >= BATCH_CHUNKS {
            return self.flush().await;
        }
        Ok(true)
    }

    /// Whether full chunks wait to be stored.
    pub fn has_full(&self) -> bool {
        self.batcher.has_full()
    }

    /// Store the full chunks now. `Ok(false)` when the job ended meanwhile.
    pub async fn flush(&mut self) -> Result<bool> {
        self.store(false).await
    }

    /// The upload ended: store every chunk and make the total final, in one write. The job
    /// as it is then.
    pub async fn close(mut self) -> Result<Job> {
        self.batcher.close();
        self.store(true).await?;
        self.service.get(self.job.id).await
    }

    /// The upload failed (a bad line, the client went away, shutdown): fail the job with
    /// `reason`; what already ran stays readable.
    pub async fn fail(self, reason: String) -> Result<()> {
        self.service.fail(self.job.id, reason).await.map(drop)
    }

    /// The client stopped its upload because its input failed: store the items it sent (the
    /// last chunk partial), wait until they have run, then fail the job with its reason. The
    /// upload stays open meanwhile, so the job cannot complete. At shutdown it is failed at
    /// once. The job as it is then.
    pub async fn stop(mut self, reason: &str) -> Result<Job> {
        let id = self.job.id;
        self.batcher.close();
        if !self.store(false).await? {
            return self.service.get(id).await;
        }
        let items = self.items();
        tracing::info!(job.id = %id, items, reason, "the client stopped its upload; the job fails once its items have run");
        let inner = &self.service.inner;
        let mut changes = inner.events.subscribe(id);
        loop {
            changes.borrow_and_update();
            let job = self.service.get(id).await?;
            if job.status.is_finished() {
                return Ok(job);
            }
            if job.done >= items {
                break;
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = inner.shutdown.cancelled() => break,
            }
        }
        let message = format!("its client stopped the upload after {items} items: {reason}");
        self.service.fail(id, message).await?;
        self.service.get(id).await
    }

    /// Store the full chunks (with `close`, end the upload too), then tell the supervisor.
    /// `Ok(false)` when the job has ended: nothing was stored.
    async fn store(&mut self, close: bool) -> Result<bool> {
        let piece = self.batcher.take_full();
        let (json, chunks, items) = match piece {
            Some(piece) => (piece.json, piece.chunks, piece.items),
            None if close => ("[]".to_string(), 0, 0),
            None => return Ok(true),
        };
        let inner = &self.service.inner;
        let id = self.job.id;
        if !inner.store.append_chunks(id, json, items, close).await? {
            // Ended meanwhile; make sure the supervisor has not kept it scheduled.
            let _ = inner.pool.job_ended(id).await; // gone at shutdown: fine
            return Ok(false);
        }
        if close {
            self.job.ingesting = false;
        }
        if chunks > 0 || close {
            inner.pool.chunks_stored(&self.job, chunks, None).await?;
        }
        Ok(true)
    }
}
