//! Retention: deletes finished jobs (with their chunks and results) once they have been
//! finished for longer than `--retention`. Started by `app::run` unless retention is `0s`;
//! the deletes go through the store's single writer like every other write.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// Purge at most this often, and at least this often for short retentions (tests use seconds).
const MAX_PERIOD: Duration = Duration::from_secs(60);
const MIN_PERIOD: Duration = Duration::from_millis(500);

pub async fn run(store: Store, retention: Duration, shutdown: CancellationToken) {
    let period = (retention / 4).clamp(MIN_PERIOD, MAX_PERIOD);
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match store.purge_finished(retention).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(jobs = n, retention = %humantime::format_duration(retention), "deleted expired jobs")
            }
            Err(e) => tracing::error!(error = %e, "could not delete expired jobs"),
        }
    }
}
