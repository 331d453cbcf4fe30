//! Per-job change notifications, fed by the store's commit hook and read by the API's
//! long-polls and SSE streams.
//!
//! A notification carries no data: it says "this job's stored state moved". Readers then read
//! the store from where they are (the store is the truth; results are committed before anyone
//! is told). A `watch` channel coalesces bursts, so a slow reader never lags or loses events:
//! it just reads a bigger page next time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::model::JobId;

#[derive(Clone, Default)]
pub struct EventBus {
    jobs: Arc<Mutex<HashMap<JobId, watch::Sender<u64>>>>,
}

impl EventBus {
    /// Watch a job. Subscribe *before* reading the store so no change is missed.
    pub fn subscribe(&self, id: JobId) -> watch::Receiver<u64> {
        let mut jobs = self.jobs.lock().expect("event bus lock");
        // Jobs that finished while watched are never notified again: sweep them now and then.
        if jobs.len() >= 1024 {
            jobs.retain(|_, sender| sender.receiver_count() > 0);
        }
        jobs.entry(id)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Wake everyone watching these jobs; forget jobs nobody watches any more.
    pub fn notify(&self, ids: &[JobId]) {
        let mut jobs = self.jobs.lock().expect("event bus lock");
        for id in ids {
            if let Some(sender) = jobs.get(id) {
                if sender.receiver_count() == 0 {
                    jobs.remove(id);
                } else {
                    sender.send_modify(|version| *version += 1);
                }
            }
        }
    }

    /// Wake everyone watching any job (after notifications from other nodes may have been
    /// lost: see `crate::cluster`).
    pub fn notify_all(&self) {
        let jobs = self.jobs.lock().expect("event bus lock");
        for sender in jobs.values() {
            sender.send_modify(|version| *version += 1);
        }
    }

    /// How many streams and long-polls are watching some job.
    pub fn subscribers(&self) -> usize {
        let jobs = self.jobs.lock().expect("event bus lock");
        jobs.values().map(|s| s.receiver_count()).sum()
    }
}
