//! The connections that reads run on (and the cluster's own statements: heartbeats, claims,
//! re-queues), outside the writer: up to [`READERS`] at once, each lent to one statement or
//! transaction at a time through [`Readers::run`]. Used by `PgStore`'s reads and by
//! `cluster::Cluster`.
//!
//! Not sqlx's `PgPool`: it sends the server a round trip before it lends a connection and
//! another when the connection comes back (to find connections that broke, or that a dropped
//! query left mid-answer), so a read of one row cost three round trips; on one-item jobs
//! (workload 7 of `benches/run.py`) those were two of the three wake-ups of the read
//! connections' server processes per job. Here a connection comes back only from a statement
//! that ran to its end, over its data or with a result; a statement whose caller went away
//! takes its connection with it (dropped, so the server ends that session), and so does one
//! that failed on the connection. A connection idle for more than [`PING_IDLE`] is pinged
//! before it is lent (the server may have restarted meanwhile), as sqlx's documentation
//! suggests for its own pool.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout_at};

use super::writer::{connect, is_unavailable, timed_out};
use crate::store::{Error, Result};

/// Connections for reads (SSE streams, long-polls, pages, the supervisor's chunk fetches) and
/// the cluster's statements.
pub const READERS: usize = 8;
/// How long a statement waits for a connection (and for a new one to connect) before it fails
/// as a storage failure (503), e.g. while the server is down.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection idle for longer is pinged before it is lent.
const PING_IDLE: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Readers(Arc<Inner>);

struct Inner {
    options: PgConnectOptions,
    /// Connections not lent now, with when each came back.
    idle: Mutex<Vec<(PgConnection, Instant)>>,
    /// One per connection that may be lent; closed by [`Readers::close`].
    permits: Semaphore,
}

impl Readers {
    /// Connections to the server of `options`, made as they are first needed.
    pub fn new(options: PgConnectOptions) -> Self {
        Self(Arc::new(Inner {
            options,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(READERS),
        }))
    }

    /// Run `statement` on a connection of its own, and take the connection back if it ran to
    /// its end other than by a failure of the connection. A failure to reach the server
    /// (within [`ACQUIRE_TIMEOUT`], or on the connection) is a storage failure.
    pub async fn run<T>(
        &self,
        statement: impl AsyncFnOnce(&mut PgConnection) -> Result<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + ACQUIRE_TIMEOUT;
        let _permit = match timeout_at(deadline, self.0.permits.acquire()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(unavailable("the database connections are closed")),
            Err(_) => {
                return Err(timed_out(
                    "waiting for a database connection",
                    ACQUIRE_TIMEOUT,
                ));
            }
        };
        let mut conn = self.connection(deadline).await?;
        let result = statement(&mut conn).await.map_err(storage_failure);
        if !matches!(result, Err(Error::Storage { .. })) && !self.0.permits.is_closed() {
            let mut idle = self.0.idle.lock().expect("readers' lock");
            idle.push((conn, Instant::now()));
        }
        result
    }

    /// An idle connection (the one that came back last, pinged if it idled long), or a new one.
    async fn connection(&self, deadline: Instant) -> Result<PgConnection> {
        loop {
            let idle = self.0.idle.lock().expect("readers' lock").pop();
            let Some((mut conn, since)) = idle else { break };
            if since.elapsed() < PING_IDLE {
                return Ok(conn);
            }
            if let Ok(Ok(())) = timeout_at(deadline, conn.ping()).await {
                return Ok(conn);
            }
            // Broken (or the server too slow to answer): dropped; try the next.
        }
        let left = deadline.saturating_duration_since(Instant::now());
        connect(&self.0.options, left)
            .await
            .map_err(storage_failure)
    }

    /// Fail every statement from now on and close the idle connections (in the background).
    pub fn close(&self) {
        self.0.permits.close();
        let idle = std::mem::take(&mut *self.0.idle.lock().expect("readers' lock"));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                for (conn, _) in idle {
                    let _ = conn.close().await;
                }
            });
        }
    }
}

/// The server out of reach is a storage failure (the API answers 503 with `Retry-After`);
/// other errors stay as they are.
pub fn storage_failure(e: Error) -> Error {
    match e {
        Error::Database(e) if is_unavailable(&e) => unavailable(e.to_string()),
        e => e,
    }
}

fn unavailable(message: impl Into<String>) -> Error {
    Error::Storage {
        full: false,
        message: message.into(),
    }
}
