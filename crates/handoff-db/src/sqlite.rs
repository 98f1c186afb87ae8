//! SQLite backend: the self-hosted default. One file in the data directory, WAL journal, `synchronous=FULL` so an
//! acknowledged commit survives power loss. Writes go through a single-connection pool (SQLite allows one writer
//! at a time; queueing in the pool is cheaper and fairer than SQLITE_BUSY retries), reads through a small pool that
//! runs beside it thanks to WAL. Multi-statement writes use `BEGIN IMMEDIATE`. A connection of its own checkpoints
//! the WAL into the database beside the writer ([`CHECKPOINT_EVERY`]), so commits do not wait for that work.

use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use handoff_core::model::NewRefreshToken;
use handoff_core::{
    Account, BlobId, FileCursor, FileKey, FileName, FilePatch, FileRecord, MetadataStore, NewUser, Quota,
    RefreshOutcome, SigningKeyRecord, StoreError, StoreResult, TeamId, UploadLinkId, User, UserId, Username,
    Visibility,
};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{ConnectOptions as _, Row, SqlitePool};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{ConnectError, from_micros, micros, store_error};

#[path = "sqlite_cache.rs"]
mod cache;
#[path = "sqlite_group.rs"]
mod group;
mod identity;
#[path = "sqlite_uploads.rs"]
mod uploads;

fn migrator() -> Migrator {
    crate::migrator!("sqlite")
}

#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// Concurrent `commit_files` calls share one transaction (see `sqlite_group.rs`).
    group: std::sync::Arc<group::GroupCommit>,
    /// `user_by_id` and `file_by_key`, the lookups behind every download, from memory (see `sqlite_cache.rs`).
    users: std::sync::Arc<cache::RowCache<UserId, User>>,
    files: std::sync::Arc<cache::RowCache<FileKey, FileRecord>>,
    /// Each account's own quota, so that an upload into an unlimited account reads no usage at all.
    quotas: std::sync::Arc<cache::RowCache<Account, Quota>>,
    /// Dropped with the last clone of the store, which ends the checkpointer task.
    _stop_checkpoints: std::sync::Arc<tokio::sync::oneshot::Sender<()>>,
}

/// A passive checkpoint every [`CHECKPOINT_EVERY`] (it never waits for the writer, nor the writer for it), until
/// the store is dropped. `database` is the database file itself.
async fn run_checkpointer(
    mut conn: sqlx::SqliteConnection,
    database: Option<std::sync::Arc<std::fs::File>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut ticks = tokio::time::interval(CHECKPOINT_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut progress = (0, 0);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = ticks.tick() => {}
        }
        // Busy (the writer's own checkpoint is running) or failed: the next round, or that checkpoint, catches up.
        let checkpoint: Result<(i64, i64, i64), _> = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&mut conn)
            .await;
        match checkpoint {
            // SQLite syncs the database only after a checkpoint that caught up with the WAL's end, which under
            // steady writes none here does; the writer's own checkpoint would then sync every page copied since.
            // Syncing here keeps that writeback off the writer. An extra sync never harms SQLite's guarantees.
            // The counts are the WAL's frames and those copied so far: unchanged, nothing new was copied (an idle
            // server syncs nothing).
            Ok((_, frames, copied)) if copied > 0 && (frames, copied) != progress && database.is_some() => {
                progress = (frames, copied);
                let database = database.clone();
                let sync = move || database.as_deref().map_or(Ok(()), std::fs::File::sync_data);
                if let Ok(Err(e)) = tokio::task::spawn_blocking(sync).await {
                    tracing::debug!(error = %e, "database sync after a checkpoint failed");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "checkpoint skipped"),
        }
    }
    let _ = sqlx::Connection::close(conn).await;
}

/// How often a connection of its own copies the WAL into the database, beside the writer. SQLite's default, a
/// checkpoint inside the commit that pushes the WAL past 1,000 pages, stalled the writer (and every upload waiting
/// on its group commit) for milliseconds several times a second under load (bench/RESULTS.md).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(50);
/// WAL pages after which a commit checkpoints after all: the bound on the WAL when the checkpointer falls behind.
/// A WAL can start over only once a checkpoint has caught up with every frame, which under steady writes only the
/// writer's own checkpoint does; most frames are copied by then.
const WRITER_CHECKPOINT_PAGES: &str = "8192";

const FILE_COLUMNS: &str = "key, blob_id, owner_id, name, size, sha256, content_type, visibility, created_at, \
                            updated_at, team_id, expires_at, upload_link_id";
const USER_COLUMNS: &str = "id, username, email, password_hash, is_admin, disabled, created_at";

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` and applies migrations.
    pub async fn open(url: &str) -> Result<Self, ConnectError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| ConnectError::InvalidUrl(e.to_string()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        // No ping before each use (sqlx's default): a connection to a local file cannot go stale, and the ping is
        // a round trip to the connection's worker thread, as costly as the query it guards.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(
                options
                    .clone()
                    .pragma("wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)
                    // Statement journals in memory: a multi-row INSERT inside a transaction journals every page it
                    // changes, so that it can be undone alone, and SQLite spills that journal to a temporary file
                    // past 64 KiB: a third of the writer's `pwrite`s under small uploads (bench/RESULTS.md). The
                    // memory is the pages one statement changes, released when it ends.
                    .pragma("temp_store", "MEMORY"),
            )
            .await
            .map_err(ConnectError::Open)?;
        migrator().run(&writer).await.map_err(ConnectError::Migrate)?;
        let checkpointer = options.connect().await.map_err(ConnectError::Open)?;
        // `None` for a database that is not a file (`:memory:`), which has nothing to sync.
        let database = std::fs::File::open(options.get_filename())
            .ok()
            .map(std::sync::Arc::new);
        let (stop_checkpoints, stopped) = tokio::sync::oneshot::channel();
        tokio::spawn(run_checkpointer(checkpointer, database, stopped));
        let reader = SqlitePoolOptions::new()
            .max_connections(8)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.read_only(true))
            .await
            .map_err(ConnectError::Open)?;
        Ok(Self {
            writer,
            reader,
            group: std::sync::Arc::default(),
            users: std::sync::Arc::new(cache::RowCache::new(10_000)),
            files: std::sync::Arc::new(cache::RowCache::new(10_000)),
            quotas: std::sync::Arc::new(cache::RowCache::new(10_000)),
            _stop_checkpoints: std::sync::Arc::new(stop_checkpoints),
        })
    }

    /// After a change to `user`'s row has committed (see `sqlite_cache.rs`).
    fn user_changed(&self, user: UserId) {
        self.users.forget(&user);
    }

    /// After a change to any number of file rows has committed (see `sqlite_cache.rs`).
    fn files_changed(&self) {
        self.files.forget_all();
    }

    /// The account's own quota from memory, or the generation to hand to `remember_quota` after reading it.
    fn cached_quota(&self, account: Account) -> Result<Quota, u64> {
        match self.quotas.get(&account) {
            cache::Cached::Hit(quota) => Ok(quota),
            cache::Cached::Miss(generation) => Err(generation),
        }
    }

    fn remember_quota(&self, account: Account, quota: Quota, generation: u64) {
        self.quotas.put(account, &quota, generation);
    }

    /// After a change to `account`'s own quota has committed.
    fn quota_changed(&self, account: Account) {
        self.quotas.forget(&account);
    }

    fn read(&self) -> &SqlitePool {
        &self.reader
    }

    fn write(&self) -> &SqlitePool {
        &self.writer
    }

    /// `BEGIN IMMEDIATE`: takes the write lock up front, so a transaction never fails half-way on a lock upgrade.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.writer.begin_with("BEGIN IMMEDIATE").await
    }
}

crate::collab::collaboration_store!(
    super::SqliteStore,
    db = sqlx::Sqlite,
    row = super::SqliteRow,
    uuid = "TEXT",
    for_update = "",
    skip_locked = "",
    anonymous_parameters = true
);

crate::direct::direct_upload_store!(
    super::SqliteStore,
    db = sqlx::Sqlite,
    row = super::SqliteRow,
    uuid = "TEXT",
    for_update = ""
);

fn text_uuid(row: &SqliteRow, column: &str) -> StoreResult<Uuid> {
    let text: String = row.try_get(column).map_err(store_error)?;
    Uuid::parse_str(&text).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

fn user_from_row(row: &SqliteRow) -> StoreResult<User> {
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

fn file_from_row(row: &SqliteRow) -> StoreResult<FileRecord> {
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

fn optional_uuid(row: &SqliteRow, column: &str) -> StoreResult<Option<Uuid>> {
    let text: Option<String> = row.try_get(column).map_err(store_error)?;
    text.map(|t| Uuid::parse_str(&t).map_err(|e| StoreError::Corrupt(format!("{column}: {e}"))))
        .transpose()
}

fn size_i64(size: u64) -> StoreResult<i64> {
    i64::try_from(size).map_err(|_| StoreError::Corrupt("size beyond i64".into()))
}

#[async_trait]
impl MetadataStore for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map_err(store_error)?;
        Ok(())
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
        // The first account administers the server; the single writer makes "first" exact.
        let row = sqlx::query(
            "INSERT INTO users (id, username, email, password_hash, is_admin, disabled, created_at)
             VALUES (?, ?, ?, ?, NOT EXISTS (SELECT 1 FROM users), 0, ?) RETURNING is_admin",
        )
        .bind(user.id.0.to_string())
        .bind(user.username.as_str())
        .bind(user.email.as_deref())
        .bind(user.password_hash.as_deref())
        .bind(micros(user.created_at))
        .fetch_one(&self.writer)
        .await
        .map_err(store_error)?;
        user.is_admin = row.try_get("is_admin").map_err(store_error)?;
        Ok(user)
    }

    async fn user_by_username(&self, username: &Username) -> StoreResult<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE username = ?");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(username.as_str())
            .fetch_optional(&self.reader)
            .await
            .map_err(store_error)?
            .map(|row| user_from_row(&row))
            .transpose()
    }

    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<User>> {
        // Once per authenticated request: the statement text is built once, not per call.
        static SQL: LazyLock<String> = LazyLock::new(|| format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?"));
        let generation = match self.users.get(&id) {
            cache::Cached::Hit(user) => return Ok(Some(user)),
            cache::Cached::Miss(generation) => generation,
        };
        let user = sqlx::query(SQL.as_str())
            .bind(id.0.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(store_error)?
            .map(|row| user_from_row(&row))
            .transpose()?;
        if let Some(user) = &user {
            self.users.put(id, user, generation);
        }
        Ok(user)
    }

    async fn users_page(&self, after: Option<UserId>, limit: u32) -> StoreResult<Vec<User>> {
        // Ids are lower-case hyphenated UUID text, so text order is UUID order.
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id > ? ORDER BY id LIMIT ?");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(after.map_or_else(String::new, |id| id.0.to_string()))
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await
            .map_err(store_error)?;
        rows.iter().map(user_from_row).collect()
    }

    async fn import_user(&self, user: &User) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO users (id, username, email, password_hash, is_admin, disabled, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(user.id.0.to_string())
        .bind(user.username.as_str())
        .bind(user.email.as_deref())
        .bind(user.password_hash.as_deref())
        .bind(user.is_admin)
        .bind(user.disabled)
        .bind(micros(user.created_at))
        .execute(&self.writer)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn signing_keys(&self) -> StoreResult<Vec<SigningKeyRecord>> {
        let rows = sqlx::query(
            "SELECT kid, algorithm, private_der, public_raw, created_at FROM signing_keys
             ORDER BY created_at DESC, kid DESC",
        )
        .fetch_all(&self.reader)
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
            "INSERT INTO signing_keys (kid, algorithm, private_der, public_raw, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&key.kid)
        .bind(&key.algorithm)
        .bind(&key.private_der)
        .bind(&key.public_raw)
        .bind(micros(key.created_at))
        .execute(&self.writer)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn insert_first_signing_key(&self, key: &SigningKeyRecord) -> StoreResult<bool> {
        // One statement on the single writer connection: atomic.
        let done = sqlx::query(
            "INSERT INTO signing_keys (kid, algorithm, private_der, public_raw, created_at)
             SELECT ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM signing_keys)",
        )
        .bind(&key.kid)
        .bind(&key.algorithm)
        .bind(&key.private_der)
        .bind(&key.public_raw)
        .bind(micros(key.created_at))
        .execute(&self.writer)
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected() == 1)
    }

    async fn insert_refresh_token(&self, token: &NewRefreshToken) -> StoreResult<()> {
        sqlx::query("INSERT INTO refresh_tokens (hash, family, user_id, expires_at) VALUES (?, ?, ?, ?)")
            .bind(&token.hash[..])
            .bind(token.family.to_string())
            .bind(token.user.0.to_string())
            .bind(micros(token.expires_at))
            .execute(&self.writer)
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
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(store_error)?;
        let Some(row) =
            sqlx::query("SELECT family, user_id, expires_at, spent, revoked FROM refresh_tokens WHERE hash = ?")
                .bind(&presented[..])
                .fetch_optional(&mut *tx)
                .await
                .map_err(store_error)?
        else {
            return Ok(RefreshOutcome::Invalid);
        };
        let family: String = row.try_get("family").map_err(store_error)?;
        let spent: bool = row.try_get("spent").map_err(store_error)?;
        let revoked: bool = row.try_get("revoked").map_err(store_error)?;
        if revoked {
            // Signed out, or already caught being reused: simply no longer valid.
            return Ok(RefreshOutcome::Invalid);
        }
        if spent {
            sqlx::query("UPDATE refresh_tokens SET revoked = 1 WHERE family = ?")
                .bind(&family)
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
            tx.commit().await.map_err(store_error)?;
            return Ok(RefreshOutcome::Reused);
        }
        let expires_at: i64 = row.try_get("expires_at").map_err(store_error)?;
        if expires_at <= micros(now) {
            return Ok(RefreshOutcome::Invalid);
        }
        let user = UserId(text_uuid(&row, "user_id")?);
        sqlx::query("UPDATE refresh_tokens SET spent = 1 WHERE hash = ?")
            .bind(&presented[..])
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        sqlx::query("INSERT INTO refresh_tokens (hash, family, user_id, expires_at) VALUES (?, ?, ?, ?)")
            .bind(&successor_hash[..])
            .bind(&family)
            .bind(user.0.to_string())
            .bind(micros(successor_expires_at))
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(RefreshOutcome::Rotated { user })
    }

    async fn revoke_refresh_family(&self, presented: &[u8; 32]) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE refresh_tokens SET revoked = 1
             WHERE family = (SELECT family FROM refresh_tokens WHERE hash = ?)",
        )
        .bind(&presented[..])
        .execute(&self.writer)
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn file_by_key(&self, key: &FileKey) -> StoreResult<Option<FileRecord>> {
        static SQL: LazyLock<String> = LazyLock::new(|| format!("SELECT {FILE_COLUMNS} FROM files WHERE key = ?"));
        let generation = match self.files.get(key) {
            cache::Cached::Hit(file) => return Ok(Some(file)),
            cache::Cached::Miss(generation) => generation,
        };
        let file = sqlx::query(SQL.as_str())
            .bind(key.as_str())
            .fetch_optional(&self.reader)
            .await
            .map_err(store_error)?
            .map(|row| file_from_row(&row))
            .transpose()?;
        if let Some(file) = &file {
            self.files.put(key.clone(), file, generation);
        }
        Ok(file)
    }

    async fn files_page(&self, after: Option<&FileKey>, limit: u32) -> StoreResult<Vec<FileRecord>> {
        let sql = format!("SELECT {FILE_COLUMNS} FROM files WHERE key > ? ORDER BY key LIMIT ?");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(after.map_or("", FileKey::as_str))
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await
            .map_err(store_error)?;
        rows.iter().map(file_from_row).collect()
    }

    async fn list_files(&self, owner: UserId, after: Option<&FileCursor>, limit: u32) -> StoreResult<Vec<FileRecord>> {
        let rows = match after {
            None => {
                let sql = format!(
                    "SELECT {FILE_COLUMNS} FROM files WHERE team_id IS NULL AND owner_id = ?
                     ORDER BY created_at DESC, key DESC LIMIT ?"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(owner.0.to_string())
                    .bind(i64::from(limit))
                    .fetch_all(&self.reader)
                    .await
            }
            Some(cursor) => {
                let sql = format!(
                    "SELECT {FILE_COLUMNS} FROM files WHERE team_id IS NULL AND owner_id = ? AND (created_at, key) < (?, ?)
                     ORDER BY created_at DESC, key DESC LIMIT ?"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(owner.0.to_string())
                    .bind(micros(cursor.created_at))
                    .bind(cursor.key.as_str())
                    .bind(i64::from(limit))
                    .fetch_all(&self.reader)
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
            "UPDATE files SET name = COALESCE(?, name), visibility = COALESCE(?, visibility), updated_at = ?
             WHERE key = ? RETURNING {FILE_COLUMNS}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(patch.name.as_ref().map(FileName::as_str))
            .bind(patch.visibility.map(Visibility::as_str))
            .bind(micros(now))
            .bind(key.as_str())
            .fetch_optional(&self.writer)
            .await;
        self.files.forget(key);
        row.map_err(store_error)?.map(|row| file_from_row(&row)).transpose()
    }

    async fn delete_file(&self, key: &FileKey) -> StoreResult<Option<FileRecord>> {
        let mut tx = self.begin_write().await.map_err(store_error)?;
        let sql = format!("DELETE FROM files WHERE key = ? RETURNING {FILE_COLUMNS}");
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
        let sql = format!("UPDATE {table} SET used_bytes = used_bytes - ?, used_files = used_files - 1 WHERE id = ?");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(size_i64(file.size)?)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        let committed = tx.commit().await;
        self.files.forget(key);
        committed.map_err(store_error)?;
        Ok(Some(file))
    }

    async fn blob_is_referenced(&self, blob: BlobId) -> StoreResult<bool> {
        let row = sqlx::query("SELECT EXISTS (SELECT 1 FROM files WHERE blob_id = ?) AS referenced")
            .bind(blob.0.to_string())
            .fetch_one(&self.reader)
            .await
            .map_err(store_error)?;
        row.try_get("referenced").map_err(store_error)
    }
}
