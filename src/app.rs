//! Wires the parts together and runs them: `run(config, listener, shutdown)`.
//!
//! Called by `main` (and usable from tests). Order on start: open the store (migrations), start
//! the supervisor (which resumes unfinished jobs), serve HTTP. On shutdown (the token is
//! cancelled): new jobs get 503, streams and long-polls end, the supervisor drains running
//! chunks within the grace period and stops every worker; then HTTP stops and the writer
//! flushes and closes.

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState, Limits};
use crate::config::ServeArgs;
use crate::events::EventBus;
use crate::pool::{self, PoolConfig};
use crate::retention;
use crate::store::Store;

pub async fn run(
    config: ServeArgs,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    crate::metrics::install();
    let events = EventBus::default();
    let notify = events.clone();
    let (store, writer) = Store::open(&config.database, Box::new(move |jobs| notify.notify(jobs)))
        .await
        .with_context(|| format!("cannot open database {}", config.database.display()))?;
    let pool_config = PoolConfig {
        size: config.pool_size(),
        command: config.worker_command()?,
        drain_grace: config.shutdown_grace(),
        kill_grace: config.kill_grace(),
        max_tasks_per_worker: config.max_tasks_per_worker,
        memory_limit_mb: config.worker_memory_mb,
    };
    tracing::info!(workers = pool_config.size, command = ?pool_config.command, "starting pool");
    let (pool, supervisor) = pool::start(pool_config, store.clone(), shutdown.clone());
    let state = AppState {
        store: store.clone(),
        pool,
        events,
        limits: Arc::new(Limits {
            max_body_bytes: config.max_body_bytes,
            max_items_per_job: config.max_items_per_job,
            max_queued_items: config.max_queued_items,
            default_timeout_s: config.task_timeout,
        }),
        pool_size: config.pool_size(),
        shutdown: shutdown.clone(),
        api_token: config.api_token.as_deref().map(api::token_digest),
    };
    if !config.retention.is_zero() {
        tokio::spawn(retention::run(
            store.clone(),
            config.retention,
            shutdown.clone(),
        ));
    }
    // HTTP outlives the drain: new jobs get 503 `shutting_down` while running chunks finish.
    // Streams and long-polls watch `shutdown` itself and end at once.
    let http_stop = CancellationToken::new();
    // No Nagle delay: an SSE event or a small JSON answer leaves at once, not 40 ms later.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let server = axum::serve(listener, api::router(state))
        .with_graceful_shutdown(http_stop.clone().cancelled_owned());
    let mut server = tokio::spawn(server.into_future());
    let early = tokio::select! {
        served = &mut server => {
            shutdown.cancel(); // the server stopped on its own
            Some(served)
        }
        _ = shutdown.cancelled() => None,
    };
    if let Err(e) = supervisor.await {
        tracing::error!(error = %e, "supervisor task failed");
    }
    http_stop.cancel();
    let served = match early {
        Some(served) => served,
        None => server.await,
    };
    store.close().await;
    drop(store);
    if tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .is_err()
    {
        tracing::error!("database writer did not finish in time");
    }
    tracing::info!("poold stopped");
    served
        .context("HTTP server task failed")?
        .context("HTTP server failed")
}
