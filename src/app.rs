//! Wires the parts together and runs them: `run(config, listener, shutdown)`.
//!
//! Called by `main` (and usable from tests). Order on start: open the store (migrations; on
//! PostgreSQL this node registers among the nodes), start the supervisor (which resumes
//! unfinished jobs), start the node's heartbeat and listener (`cluster`, PostgreSQL only),
//! serve HTTP. On shutdown (the token is
//! cancelled): new jobs get 503, streams and long-polls end, the supervisor drains running
//! chunks within the grace period and stops every worker; then HTTP stops (requests still open
//! after another grace period are dropped) and the writer flushes and closes.
//!
//! The supervisor and the writer are the core: if either ends while poold is not shutting
//! down (a bug), poold shuts down (so `/readyz` fails at once) and `run` returns an error, so
//! that the process exits non-zero and Docker or systemd restarts it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState, ConnectionLimits};
use crate::cluster::{self, Node};
use crate::config::ServeArgs;
use crate::events::EventBus;
use crate::jobs::{self, JobService};
use crate::pool::{self, PoolConfig};
use crate::retention;
use crate::store::Store;

pub async fn run(
    config: ServeArgs,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let events = EventBus::default();
    let notify = events.clone();
    let node = Arc::new(Node::new(
        config.node_name.clone(),
        listener.local_addr()?,
        config.node_lease(),
    ));
    let shared = matches!(
        config.database,
        crate::config::DatabaseLocation::Postgres(_)
    );
    crate::metrics::install(shared.then_some(node.name.as_str()));
    let (store, writer) = Store::open(
        &config.database,
        &node.row(config.pool_size()),
        Box::new(move |jobs| notify.notify(jobs)),
    )
    .await
    .with_context(|| format!("cannot open database {}", config.database.redacted()))?;
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
    let jobs = JobService::new(
        store.clone(),
        pool.clone(),
        events.clone(),
        jobs::Limits {
            max_items_per_job: config.max_items_per_job,
            max_queued_items: config.max_queued_items,
            default_timeout_s: config.task_timeout,
            workers: config.pool_size(),
        },
        shutdown.clone(),
    );
    let state = AppState::new(api::Shared {
        jobs,
        store: store.clone(),
        pool,
        events,
        max_body_bytes: config.max_body_bytes,
        body_budget: Arc::new(Semaphore::new(config.max_buffered_bytes)),
        shutdown: shutdown.clone(),
        api_token: config.api_token.as_deref().map(api::token_digest),
        node: node.clone(),
    });
    // On a shared store: heartbeats and notifications from the other nodes (until the
    // supervisor has drained).
    let cluster_stop = CancellationToken::new();
    let cluster_tasks = cluster::start(
        &store,
        &node,
        state.pool.clone(),
        state.events.clone(),
        shutdown.clone(),
        cluster_stop.clone(),
    );
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
    let limits = ConnectionLimits {
        max_connections: config.max_connections,
        header_timeout: config.header_timeout(),
        grace: config.shutdown_grace() + Duration::from_secs(1),
    };
    let server = tokio::spawn(api::serve(
        listener,
        api::router(state),
        limits,
        http_stop.clone(),
    ));
    let mut server = Core::new("the HTTP server", server);
    let mut supervisor = Core::new("the supervisor", supervisor);
    let mut writer = Core::new("the database writer", writer);
    // Shutdown first: once it is asked for, the supervisor may drain and end before this select
    // is polled again, and that is no failure.
    let failed = tokio::select! {
        biased;
        _ = shutdown.cancelled() => None,
        ended = server.ended() => Some(ended),
        ended = supervisor.ended() => Some(ended),
        ended = writer.ended() => Some(ended),
    };
    if let Some(part) = failed {
        tracing::error!("{part} stopped unexpectedly; shutting down");
        shutdown.cancel();
    }
    supervisor.finish(Duration::from_secs(60)).await;
    cluster_stop.cancel();
    for task in cluster_tasks {
        let _ = task.await;
    }
    if let Err(e) = store.leave().await {
        tracing::warn!(error = %e, "could not hand this node's claims back; other nodes re-queue them after its lease");
    }
    http_stop.cancel();
    server.finish(Duration::from_secs(60)).await;
    store.close();
    drop(store);
    writer.finish(Duration::from_secs(10)).await;
    tracing::info!("poold stopped");
    if let Some(part) = failed {
        bail!("{part} stopped unexpectedly");
    }
    Ok(())
}

/// One of the long-lived tasks poold cannot run without.
struct Core {
    name: &'static str,
    /// None once it has ended (a finished task must not be awaited again).
    task: Option<JoinHandle<()>>,
}

impl Core {
    fn new(name: &'static str, task: JoinHandle<()>) -> Self {
        Self {
            name,
            task: Some(task),
        }
    }

    /// Wait until it ends (it should not, before shutdown); log how. Returns its name.
    async fn ended(&mut self) -> &'static str {
        if let Some(task) = &mut self.task {
            let ended = task.await;
            self.task = None;
            if let Err(e) = ended {
                tracing::error!(error = %e, "{} failed", self.name);
            }
        }
        self.name
    }

    /// Wait (bounded) for it to end at shutdown.
    async fn finish(&mut self, limit: Duration) {
        if self.task.is_none() {
            return;
        }
        if tokio::time::timeout(limit, self.ended()).await.is_err() {
            tracing::error!("{} did not finish in time", self.name);
        }
    }
}
