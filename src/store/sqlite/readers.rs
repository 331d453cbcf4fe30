//! The read-only connections: a minimal pool, one query (or page) per checkout.
//!
//! sqlx's `SqlitePool` pings a connection before handing it out and again when it comes back.
//! Each ping is a round trip to that connection's thread, so a one-row read cost three
//! hand-offs instead of one. These connections are local files opened read-only, never in a
//! transaction, and sqlx resets a statement whenever its row iterator ends (also when a query
//! future is dropped midway), so a connection can simply be taken and put back.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use sqlx::SqliteConnection;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};
use tokio::sync::{Semaphore, SemaphorePermit};

use super::Result;

pub struct Readers {
    idle: Mutex<Vec<SqliteConnection>>,
    /// One permit per idle connection; closed by [`Readers::close`].
    permits: Semaphore,
}

/// A checked-out connection; goes back to the pool when dropped.
pub struct Reader<'a> {
    readers: &'a Readers,
    conn: Option<SqliteConnection>,
    _permit: SemaphorePermit<'a>,
}

impl Readers {
    pub async fn open(options: &SqliteConnectOptions, count: usize) -> Result<Self> {
        // Readers mostly read pages once (a chunk's items, a page of results): a small page
        // cache each is enough, and keeps the server's memory small (SQLite's default is 2 MiB).
        let options = options.clone().pragma("cache_size", "-512");
        let mut idle = Vec::with_capacity(count);
        for _ in 0..count {
            idle.push(options.connect().await?);
        }
        Ok(Self {
            idle: Mutex::new(idle),
            permits: Semaphore::new(count),
        })
    }

    /// Wait for a free connection. Fails once the pool is closed.
    pub async fn acquire(&self) -> Result<Reader<'_>> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        let conn = self
            .idle
            .lock()
            .expect("reader pool lock")
            .pop()
            .expect("a permit means an idle connection");
        Ok(Reader {
            readers: self,
            conn: Some(conn),
            _permit: permit,
        })
    }

    /// Refuse new reads and close the idle connections (busy ones close when put back).
    pub async fn close(&self) {
        self.permits.close();
        let idle = std::mem::take(&mut *self.idle.lock().expect("reader pool lock"));
        for conn in idle {
            if let Err(e) = conn.close().await {
                tracing::warn!(error = %e, "closing a database reader connection");
            }
        }
    }
}

impl Deref for Reader<'_> {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        self.conn.as_ref().expect("present until dropped")
    }
}

impl DerefMut for Reader<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.conn.as_mut().expect("present until dropped")
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        let conn = self.conn.take().expect("present until dropped");
        if !self.readers.permits.is_closed() {
            self.readers
                .idle
                .lock()
                .expect("reader pool lock")
                .push(conn);
        }
        // The permit is released after this, so an acquire always finds the connection.
    }
}
