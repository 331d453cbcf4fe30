//! The PostgreSQL side of the store's single writer (`store::writer`): one connection of its
//! own (not from the read pool, so a burst of reads never holds up a commit), reconnected
//! after a failure. The writer thread is a plain thread (on tokio's blocking pool), so it
//! drives sqlx's async API with the runtime's [`Handle::block_on`] (poold's runtime is the
//! multi-threaded one, whose workers drive the I/O meanwhile); the SQL is in `ops`.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, Error as SqlxError};
use tokio::runtime::Handle;

use super::ops;
use crate::store::writer::{Backend, Op, Outcome};
use crate::store::{Error, Result};

/// A batch (or a connect) that takes longer fails as a storage failure: its writes are kept
/// and retried on a new connection, so a server that stopped answering cannot wedge the
/// writer. Retrying is safe (see `store::writer`).
const BATCH_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct PgWriter {
    /// The node it writes for (see `ops`).
    node: String,
    /// None after a failure, until it is reconnected.
    conn: Option<PgConnection>,
    options: PgConnectOptions,
    runtime: Handle,
}

impl PgWriter {
    /// Connect (on the current runtime, which then drives the writer's queries).
    pub async fn connect(options: PgConnectOptions, node: &str) -> Result<Self> {
        let conn = connect(&options, CONNECT_TIMEOUT).await?;
        Ok(Self {
            node: node.to_string(),
            conn: Some(conn),
            options,
            runtime: Handle::current(),
        })
    }

    /// The connection, before the writer starts (for the migrations at open).
    pub fn connection(&mut self) -> &mut PgConnection {
        self.conn
            .as_mut()
            .expect("connected until the writer starts")
    }
}

/// A new connection, or a storage failure if connecting takes longer than `limit` (also used
/// by `readers`).
pub(super) async fn connect(options: &PgConnectOptions, limit: Duration) -> Result<PgConnection> {
    match tokio::time::timeout(limit, PgConnection::connect_with(options)).await {
        Ok(conn) => Ok(conn?),
        Err(_) => Err(timed_out("connecting to PostgreSQL", limit)),
    }
}

pub(super) fn timed_out(what: &str, limit: Duration) -> Error {
    Error::Storage {
        full: false,
        message: format!("{what} took longer than {limit:?}"),
    }
}

impl Backend for PgWriter {
    fn apply_batch(&mut self, ops: &[&Op]) -> Result<Vec<Outcome>> {
        let Self {
            node,
            conn,
            options,
            runtime,
        } = self;
        let applied = runtime.block_on(async {
            let conn = match conn {
                Some(conn) => conn,
                None => conn.insert(connect(options, CONNECT_TIMEOUT).await?),
            };
            match tokio::time::timeout(BATCH_TIMEOUT, ops::apply_batch(conn, node, ops)).await {
                Ok(applied) => applied,
                Err(_) => Err(timed_out("a write batch", BATCH_TIMEOUT)),
            }
        });
        if let Err(e) = &applied
            && self.is_storage_failure(e)
        {
            // The connection may be gone or mid-transaction: start afresh. (After an error
            // over the data, the transaction was rolled back and the connection is fine.)
            self.conn = None;
        }
        applied
    }

    fn is_storage_failure(&self, e: &Error) -> bool {
        match e {
            Error::Database(e) => is_unavailable(e),
            Error::Storage { .. } => true,
            _ => false,
        }
    }

    fn close(mut self) {
        if let Some(conn) = self.conn.take()
            && let Err(e) = self.runtime.block_on(conn.close())
        {
            tracing::warn!(error = %e, "closing the database writer connection");
        }
    }
}

/// Whether PostgreSQL cannot be written (or read) now, as opposed to refusing this query's
/// data: the connection broke or was refused, the server is shutting down or out of disk or
/// memory, a lock or serialization conflict. SQLSTATE classes 08 (connection), 53
/// (insufficient resources: 53100 is a full disk), 57 (operator intervention: shutdown,
/// cancel), 58 (system error: I/O) and 40 (rollbacks), and 55P03, 25006 (read only).
pub fn is_unavailable(e: &SqlxError) -> bool {
    match e {
        SqlxError::Io(_)
        | SqlxError::Tls(_)
        | SqlxError::Protocol(_)
        | SqlxError::PoolTimedOut
        | SqlxError::PoolClosed
        | SqlxError::WorkerCrashed
        | SqlxError::BeginFailed => true,
        SqlxError::Database(db) => db.code().is_some_and(|code| {
            ["08", "53", "57", "58", "40"]
                .iter()
                .any(|class| code.starts_with(class))
                || code == "55P03"
                || code == "25006"
        }),
        _ => false,
    }
}
