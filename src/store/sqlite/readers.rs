//! The read-only connections: a minimal pool, one query (or page) per checkout.
//!
//! A read of one row (a job, a count) runs on the caller's thread ([`Readers::read`]): it
//! takes microseconds, less than a hand-off to another thread would cost, and the long-poll
//! of every one-item job makes one. A read of many rows (pages of results, a window of queued
//! chunks, job lists) runs on tokio's blocking pool ([`Readers::read_blocking`]) so that a
//! large page never holds up the async workers. The connections are local files opened
//! read-only (WAL: a reader never waits for the writer) and never hold a transaction open, so
//! one can simply be taken and put back.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use tokio::sync::Semaphore;

use super::{Error, Result, connection};

pub struct Readers {
    idle: Mutex<Vec<Connection>>,
    /// One permit per idle connection; closed by [`Readers::close`].
    permits: Arc<Semaphore>,
}

impl Readers {
    pub fn open(path: &Path, count: usize) -> Result<Self> {
        let idle = (0..count)
            .map(|_| connection(path, true))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            idle: Mutex::new(idle),
            permits: Arc::new(Semaphore::new(count)),
        })
    }

    /// Run a read of a row or two on this thread.
    pub async fn read<T>(&self, read: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let _permit = self.permits.acquire().await.map_err(|_| Error::Closed)?;
        let conn = self.take();
        let result = read(&conn);
        self.put(conn);
        result
    }

    /// Run a read of many rows on the blocking pool.
    pub async fn read_blocking<T: Send + 'static>(
        self: &Arc<Self>,
        read: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        // The permit goes with the connection: if this future is dropped midway, the
        // connection is still in use until the read ends.
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Closed)?;
        let conn = self.take();
        let readers = self.clone();
        tokio::task::spawn_blocking(move || {
            let result = read(&conn);
            readers.put(conn);
            drop(permit);
            result
        })
        .await
        .map_err(|e| Error::Corrupt(format!("a database read panicked: {e}")))?
    }

    fn take(&self) -> Connection {
        self.idle
            .lock()
            .expect("reader pool lock")
            .pop()
            .expect("a permit means an idle connection")
    }

    /// Put a connection back (the permit is released after this, so an acquire always finds
    /// one); once closed, it is dropped instead.
    fn put(&self, conn: Connection) {
        if !self.permits.is_closed() {
            self.idle.lock().expect("reader pool lock").push(conn);
        }
    }

    /// Refuse new reads and close the idle connections (busy ones close when put back).
    pub fn close(&self) {
        self.permits.close();
        self.idle.lock().expect("reader pool lock").clear();
    }
}
