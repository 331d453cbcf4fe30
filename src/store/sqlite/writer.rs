//! The SQLite side of the store's single writer (`store::writer`): the one read-write
//! connection, reopened after a failure, and the completion numbers (`seq`) it hands out.
//! The writer thread calls [`SqliteWriter::apply_batch`]; the SQL is in `ops`.

use std::path::PathBuf;

use rusqlite::Connection;

use super::{connection, ops};
use crate::store::writer::{Backend, Op, Outcome};
use crate::store::{Error, Result};

pub struct SqliteWriter {
    /// None after a failure, until it is reopened.
    conn: Option<Connection>,
    path: PathBuf,
    /// The completion number the next recorded chunk gets (a number spent on a chunk that
    /// turns out recorded already is simply skipped: only the order matters). One writer per
    /// database file, so a counter in memory is enough.
    next_seq: u64,
}

impl SqliteWriter {
    /// On `conn`; `path` reopens it after a failure; `last_seq` is the highest completion
    /// number recorded so far.
    pub fn new(conn: Connection, path: PathBuf, last_seq: u64) -> Self {
        Self {
            conn: Some(conn),
            path,
            next_seq: last_seq + 1,
        }
    }
}

impl Backend for SqliteWriter {
    fn apply_batch(&mut self, ops: &[&Op]) -> Result<Vec<Outcome>> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(connection(&self.path, false)?),
        };
        let applied = ops::apply_batch(conn, ops, &mut self.next_seq);
        if applied.is_err() {
            // A failed commit (a full disk) can leave the connection in a state of its own:
            // start afresh.
            self.conn = None;
        }
        applied
    }

    fn is_storage_failure(&self, e: &Error) -> bool {
        use rusqlite::ErrorCode;
        match e {
            Error::Sqlite(rusqlite::Error::SqliteFailure(failure, _)) => matches!(
                failure.code,
                ErrorCode::DatabaseBusy
                    | ErrorCode::DatabaseLocked
                    | ErrorCode::OutOfMemory
                    | ErrorCode::ReadOnly
                    | ErrorCode::SystemIoFailure
                    | ErrorCode::DatabaseCorrupt
                    | ErrorCode::DiskFull
                    | ErrorCode::CannotOpen
                    | ErrorCode::FileLockingProtocolFailed
            ),
            _ => false,
        }
    }

    fn close(mut self) {
        if let Some(conn) = self.conn.take()
            && let Err((_, e)) = conn.close()
        {
            tracing::warn!(error = %e, "closing the database writer connection");
        }
    }
}
