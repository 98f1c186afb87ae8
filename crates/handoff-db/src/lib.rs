//! Handoff's metadata store: implementations of [`handoff_core::MetadataStore`] on sqlx, chosen by URL.
//! Each backend has its own append-only migrations under `migrations/<backend>/`, embedded in the binary and
//! applied at start-up (or by `handoff migrate`). Every backend passes the same contract suite
//! (`tests/contract.rs`).

use std::sync::Arc;

use handoff_core::{MetadataStore, StoreError};

mod sqlite;

pub use sqlite::SqliteStore;

/// Errors opening a store; once open, operations report [`StoreError`].
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("unsupported database URL scheme (expected sqlite://…): {0}")]
    UnsupportedScheme(String),
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    #[error("could not open the database: {0}")]
    Open(#[source] sqlx::Error),
    #[error("could not apply migrations: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

/// Opens the store named by `url` and applies pending migrations.
pub async fn connect(url: &str) -> Result<Arc<dyn MetadataStore>, ConnectError> {
    let scheme = url.split_once(':').map_or(url, |(scheme, _)| scheme);
    match scheme {
        "sqlite" => Ok(Arc::new(SqliteStore::open(url).await?)),
        other => Err(ConnectError::UnsupportedScheme(other.to_owned())),
    }
}

/// Translates a driver error once, for every query: uniqueness → `Conflict`, connectivity → `Unavailable`.
pub(crate) fn store_error(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
        sqlx::Error::RowNotFound => StoreError::NotFound,
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            StoreError::Unavailable(e.to_string())
        }
        sqlx::Error::Database(db) if db.code().as_deref() == Some("13") => StoreError::Full, // SQLITE_FULL
        _ => StoreError::other(e),
    }
}

pub(crate) fn micros(t: time::OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

pub(crate) fn from_micros(us: i64) -> Result<time::OffsetDateTime, StoreError> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000)
        .map_err(|e| StoreError::Corrupt(format!("timestamp {us}: {e}")))
}
