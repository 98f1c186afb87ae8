//! PostgreSQL backend: for several nodes sharing one database. Same tables and the same semantics as the SQLite
//! backend (see `migrations/postgres/`); ids are `UUID` columns, times BIGINT Unix microseconds. One pool of up to
//! 16 connections with a short acquire timeout, so that an unreachable server turns into a fast
//! [`StoreError::Unavailable`] instead of a hung request. Multi-statement writes run in `READ COMMITTED`
//! transactions that take row locks (`SELECT … FOR UPDATE`) on what they decide from, which makes them correct
//! across processes, not only within one.
//!
//! Queries are built at run time (not `query!`), so the crate compiles without a database and one contract suite
//! checks both backends. UUIDs cross the wire as text (`$n::uuid` in, `col::text` out), so sqlx's `uuid` feature
//! is not needed.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use handoff_core::model::NewRefreshToken;
use handoff_core::{
    Account, BlobId, FileCursor, FileKey, FileName, FilePatch, FileRecord, MetadataStore, NewUser, Quota,
    RefreshOutcome, SigningKeyRecord, StoreError, StoreResult, TeamId, UploadLinkId, User, UserId, Username,
    Visibility,
};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{Connection as _, PgPool, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{ConnectError, from_micros, micros, store_error};

mod identity;
#[path = "postgres_uploads.rs"]
mod uploads;

/// Connections per node. PostgreSQL's default `max_connections` is 100, so a handful of nodes fit.
const MAX_CONNECTIONS: u32 = 16;
/// How long a query waits for a connection (and `open` for the server) before reporting `Unavailable`.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts at a refresh-token rotation that PostgreSQL aborted as a deadlock (two reuse detections revoking
/// the same family from two different tokens) before giving up.
const ROTATE_ATTEMPTS: u32 = 5;

fn migrator() -> Migrator {
    crate::migrator!("postgres")
}

/// Advisory-lock key that serialises the creation of a cluster's first signing key ("hndfkey" in ASCII).
const FIRST_SIGNING_KEY_LOCK: i64 = 0x68_6e_64_66_6b_65_79;

#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

const FILE_COLUMNS: &str = "key, blob_id::text AS blob_id, owner_id::text AS owner_id, name, size, sha256, \
                            content_type, visibility, created_at, updated_at, team_id::text AS team_id, expires_at, \
                            upload_link_id::text AS upload_link_id";
const USER_COLUMNS: &str = "id::text AS id, username, email, password_hash, is_admin, disabled, created_at";

impl PostgresStore {
    /// Accounts and files are read from the database every time (several nodes may change them): nothing to
    /// forget.
    fn user_changed(&self, _user: UserId) {}

    fn files_changed(&self) {}

    fn cached_quota(&self, _account: Account) -> Result<Quota, u64> {
        Err(0)
    }

    fn remember_quota(&self, _account: Account, _quota: Quota, _generation: u64) {}

    fn quota_changed(&self, _account: Account) {}

    /// Connects to the database at `url` (`postgres://` or `postgresql://`) and applies migrations. The database
    /// itself must exist. Fails with `Open(PoolTimedOut)` after about five seconds if the server does not answer.
    pub async fn open(url: &str) -> Result<Self, ConnectError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| ConnectError::InvalidUrl(e.to_string()))?
            .application_name("handoff");
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(ConnectError::Open)?;
        migrator().run(&pool).await.map_err(ConnectError::Migrate)?;
        Ok(Self { pool })
    }

    fn read(&self) -> &PgPool {
        &self.pool
    }

    fn write(&self) -> &PgPool {
        &self.pool
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.pool.begin().await
    }

    /// `commit_files` in a transaction of its own: PostgreSQL commits concurrent transactions in parallel (and
    /// groups their WAL flushes itself), so there is nothing to gain from batching them here.
    async fn commit_files_durably(
        &self,
        files: &[handoff_core::FileRecord],
        rules: &handoff_core::CommitRules,
    ) -> StoreResult<handoff_core::CommitOutcome> {
        let mut tx = self.begin_write().await.map_err(store_error)?;
        let outcome = collab_impl::commit_files_in(&mut tx, files, rules).await?;
        if outcome == handoff_core::CommitOutcome::Committed {
            tx.commit().await.map_err(store_error)?;
        }
        Ok(outcome)
    }
}

crate::collab::collaboration_store!(
    super::PostgresStore,
    db = sqlx::Postgres,
    row = super::PgRow,
    uuid = "uuid",
    for_update = "FOR UPDATE",
    skip_locked = "FOR UPDATE SKIP LOCKED",
    anonymous_parameters = false
);

crate::direct::direct_upload_store!(
    super::PostgresStore,
    db = sqlx::Postgres,
    row = super::PgRow,
    uuid = "uuid",
    for_update = "FOR UPDATE"
);

/// Advisory-lock key that makes "the first account becomes admin" exact across nodes ("hndadmn" in ASCII).
const FIRST_ADMIN_LOCK: i64 = 0x68_6e_64_61_64_6d_6e;

fn text_uuid(row: &PgRow, column: &str) -> StoreResult<Uuid> {
    let text: String = row.try_get(column).map_err(store_error)?;
    Uuid::parse_str(&text).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

fn user_from_row(row: &PgRow) -> StoreResult<User> {
    Ok(User {
        id: UserId(text_uuid(row, "id")?),
        username: Username::from_trusted(row.try_get("username").map_err(store_error)?),
        email: row.try_get("email").map_err(store_error)?,
        password_hash: row.try_get("password_hash").map_err(store_error)?,
        is_admin: row.try_get("is_admin").map_err(store_error)?,
        disabled: row.try_get("disabled").map_err(store_error)?,
        created_at: from_micros(row.try_get("created_at").map_err(store_error)?)?,
    })
}

fn file_from_row(row: &PgRow) -> StoreResult<FileRecord> {
    let key: String = row.try_get("key").map_err(store_error)?;
    let visibility: String = row.try_get("visibility").map_err(store_error)?;
    let size: i64 = row.try_get("size").map_err(store_error)?;
    Ok(FileRecord {
        key: FileKey::parse(&key).ok_or_else(|| StoreError::Corrupt("file key".into()))?,
        blob: BlobId(text_uuid(row, "blob_id")?),
        owner: UserId(text_uuid(row, "owner_id")?),
        name: FileName::from_trusted(row.try_get("name").map_err(store_error)?),
        size: u64::try_from(size).map_err(|_| StoreError::Corrupt("negative size".into()))?,
        sha256: row.try_get("sha256").map_err(store_error)?,
        content_type: row.try_get("content_type").map_err(store_error)?,
        visibility: Visibility::parse(&visibility)
            .ok_or_else(|| StoreError::Corrupt(format!("visibility {visibility}")))?,
        created_at: from_micros(row.try_get("created_at").map_err(store_error)?)?,
        updated_at: from_micros(row.try_get("updated_at").map_err(store_error)?)?,
        team: optional_uuid(row, "team_id")?.map(TeamId),
        expires_at: row
            .try_get::<Option<i64>, _>("expires_at")
            .map_err(store_error)?
            .map(from_micros)
            .transpose()?,
        upload_link: optional_uuid(row, "upload_link_id")?.map(UploadLinkId),
    })
}

fn optional_uuid(row: &PgRow, column: &str) -> StoreResult<Option<Uuid>> {
    let text: Option<String> = row.try_get(column).map_err(store_error)?;
    text.map(|t| Uuid::parse_str(&t).map_err(|e| StoreError::Corrupt(format!("{column}: {e}"))))
        .transpose()
}

fn size_i64(size: u64) -> StoreResult<i64> {
    i64::try_from(size).map_err(|_| StoreError::Corrupt("size beyond i64".into()))
}

/// Whether PostgreSQL aborted the transaction so that it can simply be retried: deadlock_detected or
/// serialization_failure.
fn is_retryable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40P01" | "40001")))
}

impl PostgresStore {
    /// One attempt at [`MetadataStore::rotate_refresh_token`]. The presented token's row is locked
    /// (`FOR UPDATE`) for the whole decision, so of several callers presenting the same token, on any number of
    /// nodes, exactly one sees it unspent; the others wait for its commit, then see it spent.
    async fn rotate_once(
        &self,
        presented: &[u8; 32],
        successor_hash: &[u8; 32],
        successor_expires_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<RefreshOutcome, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let Some(row) = sqlx::query(
            "SELECT family::text AS family, user_id::text AS user_id, expires_at, spent, revoked
             FROM refresh_tokens WHERE hash = $1 FOR UPDATE",
        )
        .bind(&presented[..])
        .fetch_optional(&mut *tx)
        .await?
        else {
            tx.rollback().await?;
            return Ok(RefreshOutcome::Invalid);
        };
        let family: String = row.try_get("family")?;
        let spent: bool = row.try_get("spent")?;
        let revoked: bool = row.try_get("revoked")?;
        if revoked {
            // Signed out, or already caught being reused: simply no longer valid.
            tx.rollback().await?;
            return Ok(RefreshOutcome::Invalid);
        }
        if spent {
            sqlx::query("UPDATE refresh_tokens SET revoked = TRUE WHERE family = $1::uuid")
                .bind(&family)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(RefreshOutcome::Reused);
        }
        let expires_at: i64 = row.try_get("expires_at")?;
        if expires_at <= micros(now) {
            tx.rollback().await?;
            return Ok(RefreshOutcome::Invalid);
        }
        let user_id: String = row.try_get("user_id")?;
        let user = Uuid::parse_str(&user_id).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        sqlx::query("UPDATE refresh_tokens SET spent = TRUE WHERE hash = $1")
            .bind(&presented[..])
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO refresh_tokens (hash, family, user_id, expires_at) VALUES ($1, $2::uuid, $3::uuid, $4)",
        )
        .bind(&successor_hash[..])
        .bind(&family)
        .bind(&user_id)
        .bind(micros(successor_expires_at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(RefreshOutcome::Rotated { user: UserId(user) })
    }
}

#[async_trait]
impl MetadataStore for PostgresStore {
    async fn ping(&self) -> StoreResult<()> {
        // A protocol-level Sync round trip: no parsing, no planning.
        let mut conn = self.pool.acquire().await.map_err(store_error)?;
        conn.ping().await.map_err(store_error)
    }

    async fn create_user(&self, new: NewUser) -> StoreResult<User> {
        let mut user = User {
            id: UserId::generate(),
            username: new.username,
            email: new.email,
            password_hash: Some(new.password_hash),
            is_admin: false,
            disabled: false,
            created_at: handoff_core::now(),
        };
        // The first account administers the server; the advisory lock makes "first" exact across nodes.
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(FIRST_ADMIN_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        let row = sqlx::query(
            "INSERT INTO users (id, username, email, password_hash, is_admin, disabled, created_at)
             VALUES ($1::uuid, $2, $3, $4, NOT EXISTS (SELECT 1 FROM users), FALSE, $5) RETURNING is_admin",
        )
        .bind(user.id.0.to_string())
        .bind(user.username.as_str())
        .bind(user.email.as_deref())
        .bind(user.password_hash.as_deref())
        .bind(micros(user.created_at))
        .fetch_one(&mut *tx)
        .await
        .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        user.is_admin = row.try_get("is_admin").map_err(store_error)?;
        Ok(user)
    }

    async fn user_by_username(&self, username: &Username) -> StoreResult<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE username = $1");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(username.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?
            .map(|row| user_from_row(&row))
            .transpose()
    }

    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1::uuid");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.0.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?
            .map(|row| user_from_row(&row))
            .transpose()
    }

    async fn users_page(&self, after: Option<UserId>, limit: u32) -> StoreResult<Vec<User>> {
        let rows = match after {
            None => {
                let sql = format!("SELECT {USER_COLUMNS} FROM users ORDER BY users.id LIMIT $1");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await
            }
            Some(after) => {
                let sql =
                    format!("SELECT {USER_COLUMNS} FROM users WHERE users.id > $1::uuid ORDER BY users.id LIMIT $2");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(after.0.to_string())
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await
            }
        }
        .map_err(store_error)?;
        rows.iter().map(user_from_row).collect()
    }

    async fn import_user(&self, user: &User) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO users (id, username, email, password_hash, is_admin, disabled, created_at)
             VALUES ($1::uuid, $2, $3, $4, $5, $6, $7)",
        )
        .bind(user.id.0.to_string())
        .bind(user.username.as_str())
        .bind(user.email.as_deref())
        .bind(user.password_hash.as_deref())
        .bind(user.is_admin)
        .bind(user.disabled)
        .bind(micros(user.created_at))
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn signing_keys(&self) -> StoreResult<Vec<SigningKeyRecord>> {
        let rows = sqlx::query(
            "SELECT kid, algorithm, private_der, public_raw, created_at FROM signing_keys
             ORDER BY created_at DESC, kid DESC",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter()
            .map(|row| {
                Ok(SigningKeyRecord {
                    kid: row.try_get("kid").map_err(store_error)?,
                    algorithm: row.try_get("algorithm").map_err(store_error)?,
                    private_der: row.try_get("private_der").map_err(store_error)?,
                    public_raw: row.try_get("public_raw").map_err(store_error)?,
                    created_at: from_micros(row.try_get("created_at").map_err(store_error)?)?,
                })
            })
            .collect()
    }

    async fn insert_signing_key(&self, key: &SigningKeyRecord) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO signing_keys (kid, algorithm, private_der, public_raw, created_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&key.kid)
        .bind(&key.algorithm)
        .bind(&key.private_der)
        .bind(&key.public_raw)
        .bind(micros(key.created_at))
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn insert_first_signing_key(&self, key: &SigningKeyRecord) -> StoreResult<bool> {
        // Under READ COMMITTED two nodes could both see an empty table: serialise them on an advisory lock held
        // until the transaction ends.
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(FIRST_SIGNING_KEY_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        let done = sqlx::query(
            "INSERT INTO signing_keys (kid, algorithm, private_der, public_raw, created_at)
             SELECT $1, $2, $3, $4, $5 WHERE NOT EXISTS (SELECT 1 FROM signing_keys)",
        )
        .bind(&key.kid)
        .bind(&key.algorithm)
        .bind(&key.private_der)
        .bind(&key.public_raw)
        .bind(micros(key.created_at))
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(done.rows_affected() == 1)
    }

    async fn insert_refresh_token(&self, token: &NewRefreshToken) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO refresh_tokens (hash, family, user_id, expires_at) VALUES ($1, $2::uuid, $3::uuid, $4)",
        )
        .bind(&token.hash[..])
        .bind(token.family.to_string())
        .bind(token.user.0.to_string())
        .bind(micros(token.expires_at))
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn rotate_refresh_token(
        &self,
        presented: &[u8; 32],
        successor_hash: &[u8; 32],
        successor_expires_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> StoreResult<RefreshOutcome> {
        let mut attempt = 1;
        loop {
            match self
                .rotate_once(presented, successor_hash, successor_expires_at, now)
                .await
            {
                Err(e) if attempt < ROTATE_ATTEMPTS && is_retryable(&e) => {
                    tracing::debug!(attempt, error = %e, "refresh-token rotation aborted by the database; retrying");
                    attempt += 1;
                }
                result => return result.map_err(store_error),
            }
        }
    }

    async fn revoke_refresh_family(&self, presented: &[u8; 32]) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE refresh_tokens SET revoked = TRUE
             WHERE family = (SELECT family FROM refresh_tokens WHERE hash = $1)",
        )
        .bind(&presented[..])
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn file_by_key(&self, key: &FileKey) -> StoreResult<Option<FileRecord>> {
        let sql = format!("SELECT {FILE_COLUMNS} FROM files WHERE key = $1");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(key.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?
            .map(|row| file_from_row(&row))
            .transpose()
    }

    async fn files_page(&self, after: Option<&FileKey>, limit: u32) -> StoreResult<Vec<FileRecord>> {
        // `key` is declared COLLATE "C": byte order, as in SQLite.
        let sql = format!("SELECT {FILE_COLUMNS} FROM files WHERE key > $1 ORDER BY key LIMIT $2");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(after.map_or("", FileKey::as_str))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        rows.iter().map(file_from_row).collect()
    }

    async fn list_files(&self, owner: UserId, after: Option<&FileCursor>, limit: u32) -> StoreResult<Vec<FileRecord>> {
        // `key` is declared COLLATE "C", so both the comparison and the order are byte order, as in SQLite.
        let rows = match after {
            None => {
                let sql = format!(
                    "SELECT {FILE_COLUMNS} FROM files WHERE team_id IS NULL AND owner_id = $1::uuid
                     ORDER BY created_at DESC, key DESC LIMIT $2"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(owner.0.to_string())
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await
            }
            Some(cursor) => {
                let sql = format!(
                    "SELECT {FILE_COLUMNS} FROM files WHERE team_id IS NULL AND owner_id = $1::uuid AND (created_at, key) < ($2, $3)
                     ORDER BY created_at DESC, key DESC LIMIT $4"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(owner.0.to_string())
                    .bind(micros(cursor.created_at))
                    .bind(cursor.key.as_str())
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await
            }
        }
        .map_err(store_error)?;
        rows.iter().map(file_from_row).collect()
    }

    async fn update_file(
        &self,
        key: &FileKey,
        patch: &FilePatch,
        now: OffsetDateTime,
    ) -> StoreResult<Option<FileRecord>> {
        let sql = format!(
            "UPDATE files SET name = COALESCE($1, name), visibility = COALESCE($2, visibility), updated_at = $3
             WHERE key = $4 RETURNING {FILE_COLUMNS}"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(patch.name.as_ref().map(FileName::as_str))
            .bind(patch.visibility.map(Visibility::as_str))
            .bind(micros(now))
            .bind(key.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?
            .map(|row| file_from_row(&row))
            .transpose()
    }

    async fn delete_file(&self, key: &FileKey) -> StoreResult<Option<FileRecord>> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        let sql = format!("DELETE FROM files WHERE key = $1 RETURNING {FILE_COLUMNS}");
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(key.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?
        else {
            return Ok(None);
        };
        let file = file_from_row(&row)?;
        let (table, id) = match file.account() {
            Account::User(u) => ("users", u.0.to_string()),
            Account::Team(t) => ("teams", t.0.to_string()),
        };
        let sql =
            format!("UPDATE {table} SET used_bytes = used_bytes - $1, used_files = used_files - 1 WHERE id = $2::uuid");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(size_i64(file.size)?)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(Some(file))
    }

    async fn blob_is_referenced(&self, blob: BlobId) -> StoreResult<bool> {
        let row = sqlx::query("SELECT EXISTS (SELECT 1 FROM files WHERE blob_id = $1::uuid) AS referenced")
            .bind(blob.0.to_string())
            .fetch_one(&self.pool)
            .await
            .map_err(store_error)?;
        row.try_get("referenced").map_err(store_error)
    }
}
