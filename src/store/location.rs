//! Where the store lives: `--database` as `config` parses it, and what `Store::open` opens.

use std::path::PathBuf;

/// Where the store lives, as `--database` names it: a `postgres://` (or `postgresql://`) URL
/// selects PostgreSQL, anything else is the path of a SQLite file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseLocation {
    Sqlite(PathBuf),
    /// The URL as given (it may carry a password: never log it whole, see [`Self::redacted`]).
    Postgres(String),
}

impl std::str::FromStr for DatabaseLocation {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let Some((scheme, rest)) = text.split_once("://") else {
            if text.is_empty() {
                return Err("the database path is empty".into());
            }
            return Ok(Self::Sqlite(PathBuf::from(text)));
        };
        if !matches!(scheme, "postgres" | "postgresql") {
            return Err(format!(
                "unknown database URL scheme {scheme:?}: give a SQLite file path or a \
                 postgres://USER@HOST:PORT/DB URL"
            ));
        }
        // What sqlx will parse at open; checked here so that a typo fails before anything
        // starts, naming the problem (but not the password).
        let host_and_db = rest.rsplit_once('@').map_or(rest, |(_, after)| after);
        let (host, db) = host_and_db.split_once('/').unwrap_or((host_and_db, ""));
        let db = db.split('?').next().unwrap_or("");
        if db.is_empty() {
            return Err(format!(
                "the PostgreSQL URL names no database: expected postgres://USER@HOST:PORT/DB, \
                 got {}",
                redact(text)
            ));
        }
        if host.is_empty() && !rest.contains("host=") {
            return Err(format!(
                "the PostgreSQL URL names no host: expected postgres://USER@HOST:PORT/DB, got {}",
                redact(text)
            ));
        }
        if let Some((_, port)) = host.rsplit_once(':')
            && !host.ends_with(']')
            && port.parse::<u16>().is_err()
        {
            return Err(format!(
                "the PostgreSQL URL's port {port:?} is not a number from 0 to 65535"
            ));
        }
        Ok(Self::Postgres(text.to_string()))
    }
}

impl DatabaseLocation {
    /// For messages and logs: the path, or the URL without its password.
    pub fn redacted(&self) -> String {
        match self {
            Self::Sqlite(path) => path.display().to_string(),
            Self::Postgres(url) => redact(url),
        }
    }
}

/// A URL with the password of its user info replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((user_info, host)) if user_info.contains(':') => {
            let user = user_info.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_string(),
    }
}
