//! Handoff's metadata store: implementations of [`handoff_core::MetadataStore`] on sqlx, chosen by URL:
//!
//! - `sqlite://PATH` → [`SqliteStore`], the self-hosted default (one file, WAL, one writer connection);
//! - `postgres://…` or `postgresql://…` → [`PostgresStore`], for several nodes sharing one database (row locks
//!   for multi-statement decisions, a bounded pool that fails fast when the server is unreachable).
//!
//! Each backend has its own append-only migrations under `migrations/<backend>/`, embedded in the binary and
//! applied at start-up (or by `handoff migrate`). Every backend passes the same contract suite
//! (`tests/contract.rs`).

use std::sync::Arc;

use handoff_core::{MetadataStore, StoreError};

mod collab;
mod direct;
mod postgres;
mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// The embedded migrations of one backend (`migrations/<backend>/NNNN_<name>.sql`), in order. Both backends
/// ship the same list, so adding a migration means adding one line here and one file per backend.
/// `Migrator::DEFAULT` keeps `locking: true`: on PostgreSQL the migrator holds an advisory lock while it runs, so
/// several nodes starting at once apply each migration exactly once.
macro_rules! migrator {
    ($backend:literal) => {{
        use sqlx::SqlSafeStr as _;
        let migration = |version: i64, name: &'static str, sql: &'static str| {
            sqlx::migrate::Migration::new(
                version,
                std::borrow::Cow::Borrowed(name),
                sqlx::migrate::MigrationType::Simple,
                sql.into_sql_str(),
                false,
            )
        };
        let migrations = vec![
            migration(
                1,
                "init",
                include_str!(concat!("../migrations/", $backend, "/0001_init.sql")),
            ),
            migration(
                2,
                "sharing",
                include_str!(concat!("../migrations/", $backend, "/0002_sharing.sql")),
            ),
            migration(
                3,
                "uploads",
                include_str!(concat!("../migrations/", $backend, "/0003_uploads.sql")),
            ),
            migration(
                4,
                "identity",
                include_str!(concat!("../migrations/", $backend, "/0004_identity.sql")),
            ),
            migration(
                5,
                "upload_link_sessions",
                include_str!(concat!("../migrations/", $backend, "/0005_upload_link_sessions.sql")),
            ),
            migration(
                6,
                "direct_uploads",
                include_str!(concat!("../migrations/", $backend, "/0006_direct_uploads.sql")),
            ),
            migration(
                7,
                "direct_verification",
                include_str!(concat!("../migrations/", $backend, "/0007_direct_verification.sql")),
            ),
        ];
        sqlx::migrate::Migrator {
            migrations: std::borrow::Cow::Owned(migrations),
            ..sqlx::migrate::Migrator::DEFAULT
        }
    }};
}
pub(crate) use migrator;

/// Errors opening a store; once open, operations report [`StoreError`].
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("unsupported database URL scheme (expected sqlite://…, postgres://… or postgresql://…): {0}")]
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
        "postgres" | "postgresql" => Ok(Arc::new(PostgresStore::open(url).await?)),
        other => Err(ConnectError::UnsupportedScheme(other.to_owned())),
    }
}

/// Translates a driver error once, for every query: uniqueness → `Conflict`, connectivity → `Unavailable`.
/// A refused connection surfaces as `PoolTimedOut` once the pool's acquire timeout has passed retrying it.
pub(crate) fn store_error(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
        sqlx::Error::RowNotFound => StoreError::NotFound,
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
        sqlx::Error::Database(db) => match db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
            Some(pg) => {
                let code = pg.code().to_owned();
                postgres_error(&code, e)
            }
            None if db.code().as_deref() == Some("13") => StoreError::Full, // SQLITE_FULL
            None => StoreError::other(e),
        },
        _ => StoreError::other(e),
    }
}

/// PostgreSQL SQLSTATEs (Appendix A of its manual) that mean something other than a bug in the query.
fn postgres_error(code: &str, e: sqlx::Error) -> StoreError {
    match code {
        "53100" => StoreError::Full, // disk_full
        // connection_exception (08…), out_of_memory, too_many_connections, admin_shutdown, crash_shutdown,
        // cannot_connect_now, database_dropped, read_only_sql_transaction (a standby, e.g. during a failover),
        // and serialization_failure / deadlock_detected that outlived the caller's own retries: all transient.
        c if c.starts_with("08") => StoreError::Unavailable(e.to_string()),
        // 55000 is also what a database that refuses new connections (ALLOW_CONNECTIONS false) answers.
        "53200" | "53300" | "57P01" | "57P02" | "57P03" | "57P04" | "25006" | "40001" | "40P01" | "55000" => {
            StoreError::Unavailable(e.to_string())
        }
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
