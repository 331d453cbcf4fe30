//! Prometheus metrics: every metric name lives in this file.
//!
//! [`install`] puts the global recorder in place once per process (called by `app::run`); the
//! supervisor, the API middleware and the SSE handler record through the small functions here;
//! `GET /metrics` (in `api::health`) refreshes the gauges that are read from the store
//! ([`set_store_gauges`]) and renders the text format with [`render`].

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::model::JobStatus;
use crate::outcomes::ChunkOutcomes;
use crate::pool::ExitReason;

const ITEMS: &str = "poold_items_total";
const ITEM_SECONDS: &str = "poold_item_duration_seconds";
const QUEUED_ITEMS: &str = "poold_queued_items";
const OLDEST_AGE: &str = "poold_oldest_unfinished_job_age_seconds";
const JOBS: &str = "poold_jobs";
const WORKER_EXITS: &str = "poold_worker_exits_total";
const HTTP_REQUESTS: &str = "poold_http_requests_total";
const SSE_SUBSCRIBERS: &str = "poold_sse_subscribers";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often recorded histogram samples are folded into their buckets. Until then each
/// sample is kept (a chunk records one per item), so this bounds their memory.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// Install the recorder (idempotent: a second server in the same process shares it) and start
/// its upkeep on the current runtime. With `node` (a node among several on PostgreSQL), every
/// metric carries its name as the `node` label, so that one Prometheus can scrape them all.
pub fn install(node: Option<&str>) {
    HANDLE.get_or_init(|| {
        tokio::spawn(async {
            let mut ticks = tokio::time::interval(UPKEEP_EVERY);
            loop {
                ticks.tick().await;
                if let Some(handle) = HANDLE.get() {
                    handle.run_upkeep();
                }
            }
        });
        let buckets = [
            0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0,
        ];
        let mut builder = PrometheusBuilder::new();
        if let Some(node) = node {
            builder = builder.add_global_label("node", node);
        }
        let handle = builder
            .set_buckets_for_metric(Matcher::Full(ITEM_SECONDS.into()), &buckets)
            .expect("bucket list is not empty")
            .install_recorder()
            .expect("no other metrics recorder is installed");
        describe_counter!(ITEMS, "Items whose outcome was recorded, by outcome: ok, error (raised by the function), or the error poold reported: timeout, worker_exited, out_of_memory, protocol_error, result_too_large, invalid_result.");
        describe_histogram!(ITEM_SECONDS, metrics::Unit::Seconds, "Run time per item (a chunk's run time divided by its items).");
        describe_gauge!(QUEUED_ITEMS, "Items of unfinished jobs without an outcome yet.");
        describe_gauge!(OLDEST_AGE, metrics::Unit::Seconds, "Age of the oldest unfinished job.");
        describe_gauge!(JOBS, "Stored jobs by status.");
        describe_counter!(WORKER_EXITS, "Worker process exits by reason: exit, signal, oom (crashes); timeout, recycle, cancel, protocol, refused, shutdown (stopped by poold).");
        describe_counter!(HTTP_REQUESTS, "HTTP requests by route and status.");
        describe_gauge!(SSE_SUBSCRIBERS, "Open event streams.");
        handle
    });
}

/// The Prometheus text format of every metric.
pub fn render() -> String {
    HANDLE
        .get()
        .map(PrometheusHandle::render)
        .unwrap_or_default()
}

/// A chunk's outcomes were handed to the store.
pub fn items_finished(outcomes: &ChunkOutcomes) {
    let mut other_errors = outcomes.failed;
    for &(kind, n) in &outcomes.pooled {
        counter!(ITEMS, "outcome" => kind.as_str()).increment(n);
        other_errors -= n;
    }
    if other_errors > 0 {
        counter!(ITEMS, "outcome" => "error").increment(other_errors);
    }
    counter!(ITEMS, "outcome" => "ok").increment(outcomes.size - outcomes.failed);
}

/// A chunk of `items` items ran for `elapsed` on a worker.
pub fn chunk_ran(elapsed: Duration, items: u64) {
    if items > 0 {
        histogram!(ITEM_SECONDS).record_many(elapsed.as_secs_f64() / items as f64, items as usize);
    }
}

pub fn worker_exited(reason: ExitReason) {
    counter!(WORKER_EXITS, "reason" => reason.as_str()).increment(1);
}

pub fn http_request(route: String, status: u16) {
    counter!(HTTP_REQUESTS, "route" => route, "status" => status.to_string()).increment(1);
}

/// Counts an open event stream for as long as it is alive.
pub struct SseSubscriber(());

impl SseSubscriber {
    pub fn open() -> Self {
        gauge!(SSE_SUBSCRIBERS).increment(1.0);
        Self(())
    }
}

impl Drop for SseSubscriber {
    fn drop(&mut self) {
        gauge!(SSE_SUBSCRIBERS).decrement(1.0);
    }
}

/// Gauges read from the store at scrape time.
pub fn set_store_gauges(jobs_by_status: &[(String, u64)], queued_items: u64, oldest_age: f64) {
    for status in JobStatus::ALL.map(JobStatus::as_str) {
        let n = jobs_by_status
            .iter()
            .find(|(s, _)| s == status)
            .map_or(0, |(_, n)| *n);
        gauge!(JOBS, "status" => status).set(n as f64);
    }
    gauge!(QUEUED_ITEMS).set(queued_items as f64);
    gauge!(OLDEST_AGE).set(oldest_age);
}
