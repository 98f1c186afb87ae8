//! [`handoff_core::CollaborationStore`] for both backends from one body of SQL. The statements are written in the
//! common dialect of SQLite and PostgreSQL (`$n` placeholders, `RETURNING`, `ON CONFLICT`); the few differences are
//! template slots filled per backend:
//!
//! - `{uuid}`: the id column type to cast parameters to (`TEXT` / `uuid`); ids are always read back as text;
//! - `{for_update}` / `{skip_locked}`: row locks, which PostgreSQL needs for decisions that span statements and
//!   SQLite does not (its writer is serialised by `BEGIN IMMEDIATE`);
//! - `{files}` / `{users}`: the backend's column lists, decoded by its own `file_from_row` / `user_from_row`.
//!
//! One difference is a macro argument instead: `anonymous_parameters`, for the multi-row audit `INSERT`, whose
//! hundreds of parameters SQLite binds far faster as `?` than as `$n`.
//!
//! The macro is expanded inside each backend's module, so it uses that module's row decoders and pools:
//! `self.read()`, `self.write()` and `self.begin_write()`.

/// Fills the template slots of `sql`.
pub(crate) fn render(sql: &str, uuid: &str, for_update: &str, skip_locked: &str, files: &str, users: &str) -> String {
    sql.replace("{uuid}", uuid)
        .replace("{for_update}", for_update)
        .replace("{skip_locked}", skip_locked)
        .replace("{files}", files)
        .replace("{users}", users)
}

pub(crate) fn opt_u64(v: Option<u64>) -> Option<i64> {
    v.map(|n| i64::try_from(n).unwrap_or(i64::MAX))
}

pub(crate) fn to_u64(v: i64, what: &str) -> Result<u64, handoff_core::StoreError> {
    u64::try_from(v).map_err(|_| handoff_core::StoreError::Corrupt(format!("negative {what}")))
}

pub(crate) fn parse_uuid(s: &str, what: &str) -> Result<uuid::Uuid, handoff_core::StoreError> {
    uuid::Uuid::parse_str(s).map_err(|e| handoff_core::StoreError::Corrupt(format!("{what}: {e}")))
}

macro_rules! collaboration_store {
    (
        $store:ty,
        db = $db:ty,
        row = $row:ty,
        uuid = $uuid:literal,
        for_update = $for_update:literal,
        skip_locked = $skip_locked:literal,
        anonymous_parameters = $anonymous_parameters:literal
    ) => {
        mod collab_impl {
            use async_trait::async_trait;
            use handoff_core::{
                Account, AuditEvent, AuditId, AuditScope, CollaborationStore, CommitOutcome, CommitRules, FileCursor,
                FileKey, FileRecord, Membership, MembershipChange, Quota, Share, ShareId, SharePatch, StoreError,
                StoreResult, Team, TeamId, TeamRole, UploadLink, UploadLinkId, Usage, User, UserId, Username,
            };
            use sqlx::Row as _;
            use time::OffsetDateTime;

            use super::{FILE_COLUMNS, USER_COLUMNS, file_from_row, user_from_row};
            use crate::collab::{opt_u64, parse_uuid, to_u64};
            use crate::{from_micros, micros, store_error};

            /// Every template rendered once: rendering is five searches and copies of the whole statement, which
            /// cost more than the rest of a simple query's client side. The set of templates is fixed by the code
            /// (the audit insert adds one per chunk length), so the map stays small.
            static RENDERED: std::sync::LazyLock<
                std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<str>>>,
            > = std::sync::LazyLock::new(Default::default);

            fn q(sql: &str) -> sqlx::AssertSqlSafe<std::sync::Arc<str>> {
                let mut rendered = RENDERED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some(done) = rendered.get(sql) {
                    return sqlx::AssertSqlSafe(done.clone());
                }
                let done: std::sync::Arc<str> = crate::collab::render(
                    sql,
                    $uuid,
                    $for_update,
                    $skip_locked,
                    FILE_COLUMNS,
                    USER_COLUMNS,
                )
                .into();
                rendered.insert(sql.to_owned(), done.clone());
                sqlx::AssertSqlSafe(done)
            }

            /// Rows per audit `INSERT` (8 parameters each: far below both backends' parameter limits).
            const AUDIT_ROWS_PER_INSERT: usize = 64;

            fn opt_time(v: Option<i64>) -> StoreResult<Option<OffsetDateTime>> {
                v.map(from_micros).transpose()
            }

            pub(super) fn size(v: u64) -> StoreResult<i64> {
                i64::try_from(v).map_err(|_| StoreError::Corrupt("size beyond i64".into()))
            }

            /// Bytes and files per account, in one fixed order (teams, then users, each by id), so that two
            /// transactions touching the same accounts lock their rows in the same order and cannot deadlock.
            fn per_account(files: &[FileRecord]) -> Vec<(Account, u64, u64)> {
                let mut totals: std::collections::BTreeMap<(u8, uuid::Uuid), (Account, u64, u64)> =
                    std::collections::BTreeMap::new();
                for file in files {
                    let account = file.account();
                    let key = match account {
                        Account::Team(t) => (0, t.0),
                        Account::User(u) => (1, u.0),
                    };
                    let entry = totals.entry(key).or_insert((account, 0, 0));
                    entry.1 += file.size;
                    entry.2 += 1;
                }
                totals.into_values().collect()
            }

            /// An account's used bytes and files and its own quota (no default applied); `NotFound` without it.
            async fn read_usage(store: &$store, account: Account) -> StoreResult<(u64, u64, Quota)> {
                let (table, id) = account_sql(account);
                let row = sqlx::query(q(&format!(
                    "SELECT used_bytes, used_files, quota_bytes, quota_files
                     FROM {table} WHERE id = CAST($1 AS {{uuid}})"
                )))
                .bind(id)
                .fetch_optional(store.read())
                .await
                .map_err(store_error)?
                .ok_or(StoreError::NotFound)?;
                let limit = |column| -> StoreResult<Option<u64>> {
                    get::<Option<i64>>(&row, column)?.map(|v| to_u64(v, "quota")).transpose()
                };
                let own = Quota {
                    bytes: limit("quota_bytes")?,
                    files: limit("quota_files")?,
                };
                Ok((
                    to_u64(get(&row, "used_bytes")?, "used bytes")?,
                    to_u64(get(&row, "used_files")?, "used files")?,
                    own,
                ))
            }

            pub(super) fn account_sql(account: Account) -> (&'static str, String) {
                match account {
                    Account::User(id) => ("users", id.0.to_string()),
                    Account::Team(id) => ("teams", id.0.to_string()),
                }
            }

            fn get<'r, T>(row: &'r $row, column: &str) -> StoreResult<T>
            where
                T: sqlx::Decode<'r, $db> + sqlx::Type<$db>,
            {
                row.try_get(column).map_err(store_error)
            }

            fn team_from_row(row: &$row) -> StoreResult<Team> {
                let id: String = get(&row, "id")?;
                Ok(Team {
                    id: TeamId(parse_uuid(&id, "team id")?),
                    name: get(&row, "name")?,
                    created_at: from_micros(get(&row, "created_at")?)?,
                })
            }

            fn share_from_row(row: &$row, files: Vec<FileKey>) -> StoreResult<Share> {
                let id: String = get(&row, "id")?;
                let owner: String = get(&row, "owner_id")?;
                Ok(Share {
                    id: ShareId(parse_uuid(&id, "share id")?),
                    owner: UserId(parse_uuid(&owner, "share owner")?),
                    files,
                    note: get(&row, "note")?,
                    password_hash: get(&row, "password_hash")?,
                    expires_at: opt_time(get(&row, "expires_at")?)?,
                    max_downloads: get::<Option<i64>>(&row, "max_downloads")?
                        .map(|v: i64| to_u64(v, "max downloads"))
                        .transpose()?,
                    downloads: to_u64(get(&row, "downloads")?, "downloads")?,
                    revoked: get(&row, "revoked")?,
                    created_at: from_micros(get(&row, "created_at")?)?,
                    updated_at: from_micros(get(&row, "updated_at")?)?,
                })
            }

            fn upload_link_from_row(row: &$row) -> StoreResult<UploadLink> {
                let id: String = get(&row, "id")?;
                let owner: String = get(&row, "owner_id")?;
                let team: Option<String> = get(&row, "team_id")?;
                Ok(UploadLink {
                    id: UploadLinkId(parse_uuid(&id, "upload link id")?),
                    owner: UserId(parse_uuid(&owner, "upload link owner")?),
                    team: team.map(|t| parse_uuid(&t, "upload link team").map(TeamId)).transpose()?,
                    note: get(&row, "note")?,
                    password_hash: get(&row, "password_hash")?,
                    expires_at: opt_time(get(&row, "expires_at")?)?,
                    max_files: get::<Option<i64>>(&row, "max_files")?.map(|v: i64| to_u64(v, "max files")).transpose()?,
                    max_bytes: get::<Option<i64>>(&row, "max_bytes")?.map(|v: i64| to_u64(v, "max bytes")).transpose()?,
                    files_received: to_u64(get(&row, "files_received")?, "files received")?,
                    bytes_received: to_u64(get(&row, "bytes_received")?, "bytes received")?,
                    revoked: get(&row, "revoked")?,
                    created_at: from_micros(get(&row, "created_at")?)?,
                })
            }

            fn audit_from_row(row: &$row) -> StoreResult<AuditEvent> {
                let id: String = get(&row, "id")?;
                let uuid_of = |v: Option<String>, what: &str| v.map(|v| parse_uuid(&v, what)).transpose();
                let file: Option<String> = get(&row, "file_key")?;
                Ok(AuditEvent {
                    id: AuditId(parse_uuid(&id, "audit id")?),
                    at: from_micros(get(&row, "at")?)?,
                    action: get(&row, "action")?,
                    actor: uuid_of(get(&row, "actor_id")?, "audit actor")?.map(UserId),
                    owner: uuid_of(get(&row, "owner_id")?, "audit owner")?.map(UserId),
                    team: uuid_of(get(&row, "team_id")?, "audit team")?.map(TeamId),
                    file: file.and_then(|k| FileKey::parse(&k)),
                    detail: get(&row, "detail")?,
                })
            }

            const TEAM_COLUMNS: &str = "CAST(id AS TEXT) AS id, name, created_at";
            const SHARE_COLUMNS: &str = "CAST(id AS TEXT) AS id, CAST(owner_id AS TEXT) AS owner_id, note, \
                password_hash, expires_at, max_downloads, downloads, revoked, created_at, updated_at";
            const LINK_COLUMNS: &str = "CAST(id AS TEXT) AS id, CAST(owner_id AS TEXT) AS owner_id, \
                CAST(team_id AS TEXT) AS team_id, note, password_hash, expires_at, max_files, max_bytes, \
                files_received, bytes_received, revoked, created_at";
            const AUDIT_COLUMNS: &str = "CAST(id AS TEXT) AS id, at, action, CAST(actor_id AS TEXT) AS actor_id, \
                CAST(owner_id AS TEXT) AS owner_id, CAST(team_id AS TEXT) AS team_id, file_key, detail";

            impl $store {
                /// The files of the given links, grouped by link id, in link order.
                async fn share_files(&self, ids: &[ShareId]) -> StoreResult<std::collections::HashMap<ShareId, Vec<FileKey>>> {
                    let mut out: std::collections::HashMap<ShareId, Vec<FileKey>> = std::collections::HashMap::new();
                    for id in ids {
                        let rows = sqlx::query(q(
                            "SELECT file_key FROM share_files WHERE share_id = CAST($1 AS {uuid}) ORDER BY position",
                        ))
                        .bind(id.0.to_string())
                        .fetch_all(self.read())
                        .await
                        .map_err(store_error)?;
                        let mut keys = Vec::with_capacity(rows.len());
                        for row in rows {
                            let key: String = get(&row, "file_key")?;
                            keys.push(FileKey::parse(&key).ok_or_else(|| StoreError::Corrupt("share file key".into()))?);
                        }
                        out.insert(*id, keys);
                    }
                    Ok(out)
                }

                async fn shares_where(&self, condition: &str, bind: Vec<u8>, bind_text: Option<String>) -> StoreResult<Vec<Share>> {
                    let sql = format!("SELECT {SHARE_COLUMNS} FROM shares WHERE {condition} ORDER BY created_at DESC, id DESC LIMIT 1000");
                    let query = sqlx::query(q(&sql));
                    let query = match bind_text {
                        Some(text) => query.bind(text),
                        None => query.bind(bind),
                    };
                    let rows = query.fetch_all(self.read()).await.map_err(store_error)?;
                    let mut ids = Vec::with_capacity(rows.len());
                    for row in &rows {
                        let id: String = get(&row, "id")?;
                        ids.push(ShareId(parse_uuid(&id, "share id")?));
                    }
                    let mut files = self.share_files(&ids).await?;
                    rows.iter()
                        .zip(&ids)
                        .map(|(row, id)| share_from_row(row, files.remove(id).unwrap_or_default()))
                        .collect()
                }
            }

            /// The statements of `commit_files`, in a transaction (or savepoint) the caller owns and commits only
            /// when the outcome is `Committed`; any other outcome or error means the caller must roll back.
            pub(super) async fn commit_files_in(
                conn: &mut <$db as sqlx::Database>::Connection,
                files: &[FileRecord],
                rules: &CommitRules,
            ) -> StoreResult<CommitOutcome> {
                if let Some(link) = rules.upload_link {
                    let bytes = size(files.iter().map(|f| f.size).sum())?;
                    let count = size(files.len() as u64)?;
                    let charged = sqlx::query(q(
                        "UPDATE upload_links SET files_received = files_received + $1,
                             bytes_received = bytes_received + $2
                         WHERE id = CAST($3 AS {uuid}) AND NOT revoked
                           AND (expires_at IS NULL OR expires_at > $4)
                           AND (max_files IS NULL OR files_received + $1 <= max_files)
                           AND (max_bytes IS NULL OR bytes_received + $2 <= max_bytes)",
                    ))
                    .bind(count)
                    .bind(bytes)
                    .bind(link.0.to_string())
                    .bind(micros(rules.now))
                    .execute(&mut *conn)
                    .await
                    .map_err(store_error)?;
                    if charged.rows_affected() == 0 {
                        return Ok(CommitOutcome::LinkExhausted);
                    }
                }
                // Usage per account (an upload has one; an import may carry many).
                for (account, bytes, count) in per_account(files) {
                    let (table, id) = account_sql(account);
                    let charged = sqlx::query(q(&format!(
                        "UPDATE {table} SET used_bytes = used_bytes + $1, used_files = used_files + $2
                         WHERE id = CAST($3 AS {{uuid}})
                           AND (NOT $4 OR COALESCE(quota_bytes, $5) IS NULL OR used_bytes + $1 <= COALESCE(quota_bytes, $5))
                           AND (NOT $4 OR COALESCE(quota_files, $6) IS NULL OR used_files + $2 <= COALESCE(quota_files, $6))"
                    )))
                    .bind(size(bytes)?)
                    .bind(size(count)?)
                    .bind(id)
                    .bind(rules.enforce_quota)
                    .bind(opt_u64(rules.default_quota.bytes))
                    .bind(opt_u64(rules.default_quota.files))
                    .execute(&mut *conn)
                    .await
                    .map_err(store_error)?;
                    if charged.rows_affected() == 0 {
                        return Ok(CommitOutcome::QuotaExceeded);
                    }
                }
                for file in files {
                    bind_file_columns(sqlx::query(q(
                        "INSERT INTO files (key, blob_id, owner_id, name, size, sha256, content_type, visibility,
                             created_at, updated_at, team_id, expires_at, upload_link_id)
                         VALUES ($1, CAST($2 AS {uuid}), CAST($3 AS {uuid}), $4, $5, $6, $7, $8, $9, $10,
                             CAST($11 AS {uuid}), $12, CAST($13 AS {uuid}))",
                    )), file)?
                    .bind(file.upload_link.map(|l| l.0.to_string()))
                    .execute(&mut *conn)
                    .await
                    .map_err(store_error)?;
                }
                Ok(CommitOutcome::Committed)
            }

            /// Binds a file row's twelve columns in the order of `INSERT INTO files (key, …, expires_at)` (as
            /// `$1`–`$12`, or as the row's twelve `?`): the general commit and SQLite's one-file commits
            /// (`sqlite_group.rs`) insert the same row.
            pub(super) fn bind_file_columns<'q>(
                query: sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments>,
                file: &'q FileRecord,
            ) -> StoreResult<sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments>> {
                Ok(query
                    .bind(file.key.as_str())
                    .bind(file.blob.0.to_string())
                    .bind(file.owner.0.to_string())
                    .bind(file.name.as_str())
                    .bind(size(file.size)?)
                    .bind(&file.sha256)
                    .bind(&file.content_type)
                    .bind(file.visibility.as_str())
                    .bind(micros(file.created_at))
                    .bind(micros(file.updated_at))
                    .bind(file.team.map(|t| t.0.to_string()))
                    .bind(file.expires_at.map(micros)))
            }

            #[async_trait]
            impl CollaborationStore for $store {
                async fn commit_files(&self, files: &[FileRecord], rules: &CommitRules) -> StoreResult<CommitOutcome> {
                    // SQLite groups concurrent commits into one transaction; PostgreSQL runs one each.
                    self.commit_files_durably(files, rules).await
                }

                async fn usage(&self, account: Account, default_quota: Quota) -> StoreResult<Usage> {
                    let (bytes, files, own) = read_usage(self, account).await?;
                    Ok(Usage {
                        bytes,
                        files,
                        quota: own.or(default_quota),
                    })
                }

                async fn usage_if_limited(
                    &self,
                    account: Account,
                    default_quota: Quota,
                ) -> StoreResult<Option<Usage>> {
                    let generation = match self.cached_quota(account) {
                        Ok(own) if own.or(default_quota) == Quota::UNLIMITED => return Ok(None),
                        Ok(_) => None,
                        Err(generation) => Some(generation),
                    };
                    let (bytes, files, own) = read_usage(self, account).await?;
                    if let Some(generation) = generation {
                        self.remember_quota(account, own, generation);
                    }
                    let quota = own.or(default_quota);
                    if quota == Quota::UNLIMITED {
                        return Ok(None);
                    }
                    Ok(Some(Usage { bytes, files, quota }))
                }

                async fn set_quota(&self, account: Account, quota: Quota) -> StoreResult<bool> {
                    let (table, id) = account_sql(account);
                    let done = sqlx::query(q(&format!(
                        "UPDATE {table} SET quota_bytes = $2, quota_files = $3 WHERE id = CAST($1 AS {{uuid}})"
                    )))
                    .bind(id)
                    .bind(opt_u64(quota.bytes))
                    .bind(opt_u64(quota.files))
                    .execute(self.write())
                    .await
                    .map_err(store_error)?;
                    self.quota_changed(account);
                    Ok(done.rows_affected() > 0)
                }

                async fn list_team_files(
                    &self,
                    team: TeamId,
                    after: Option<&FileCursor>,
                    limit: u32,
                ) -> StoreResult<Vec<FileRecord>> {
                    let rows = match after {
                        None => sqlx::query(q(
                            "SELECT {files} FROM files WHERE team_id = CAST($1 AS {uuid})
                             ORDER BY created_at DESC, key DESC LIMIT $2",
                        ))
                        .bind(team.0.to_string())
                        .bind(i64::from(limit))
                        .fetch_all(self.read())
                        .await,
                        Some(cursor) => sqlx::query(q(
                            "SELECT {files} FROM files WHERE team_id = CAST($1 AS {uuid})
                               AND (created_at < $2 OR (created_at = $2 AND key < $3))
                             ORDER BY created_at DESC, key DESC LIMIT $4",
                        ))
                        .bind(team.0.to_string())
                        .bind(micros(cursor.created_at))
                        .bind(cursor.key.as_str())
                        .bind(i64::from(limit))
                        .fetch_all(self.read())
                        .await,
                    }
                    .map_err(store_error)?;
                    rows.iter().map(file_from_row).collect()
                }

                async fn list_all_files(&self, after: Option<&FileCursor>, limit: u32) -> StoreResult<Vec<FileRecord>> {
                    let rows = match after {
                        None => sqlx::query(q("SELECT {files} FROM files ORDER BY created_at DESC, key DESC LIMIT $1"))
                            .bind(i64::from(limit))
                            .fetch_all(self.read())
                            .await,
                        Some(cursor) => sqlx::query(q(
                            "SELECT {files} FROM files WHERE (created_at < $1 OR (created_at = $1 AND key < $2))
                             ORDER BY created_at DESC, key DESC LIMIT $3",
                        ))
                        .bind(micros(cursor.created_at))
                        .bind(cursor.key.as_str())
                        .bind(i64::from(limit))
                        .fetch_all(self.read())
                        .await,
                    }
                    .map_err(store_error)?;
                    rows.iter().map(file_from_row).collect()
                }

                async fn list_upload_link_files(&self, link: UploadLinkId, limit: u32) -> StoreResult<Vec<FileRecord>> {
                    let rows = sqlx::query(q(
                        "SELECT {files} FROM files WHERE upload_link_id = CAST($1 AS {uuid})
                         ORDER BY created_at DESC, key DESC LIMIT $2",
                    ))
                    .bind(link.0.to_string())
                    .bind(i64::from(limit))
                    .fetch_all(self.read())
                    .await
                    .map_err(store_error)?;
                    rows.iter().map(file_from_row).collect()
                }

                async fn delete_expired_files(&self, now: OffsetDateTime, limit: u32) -> StoreResult<Vec<FileRecord>> {
                    let mut tx = self.begin_write().await.map_err(store_error)?;
                    let rows = sqlx::query(q(
                        "DELETE FROM files WHERE key IN (
                             SELECT key FROM files WHERE expires_at IS NOT NULL AND expires_at <= $1
                             ORDER BY expires_at LIMIT $2 {skip_locked})
                         RETURNING {files}",
                    ))
                    .bind(micros(now))
                    .bind(i64::from(limit))
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(store_error)?;
                    let files = rows.iter().map(file_from_row).collect::<StoreResult<Vec<_>>>()?;
                    for (account, bytes, count) in per_account(&files) {
                        let (table, id) = account_sql(account);
                        sqlx::query(q(&format!(
                            "UPDATE {table} SET used_bytes = used_bytes - $1, used_files = used_files - $2
                             WHERE id = CAST($3 AS {{uuid}})"
                        )))
                        .bind(size(bytes)?)
                        .bind(size(count)?)
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .map_err(store_error)?;
                    }
                    let committed = tx.commit().await;
                    self.files_changed();
                    committed.map_err(store_error)?;
                    Ok(files)
                }

                async fn create_team(&self, team: &Team, owner: UserId, now: OffsetDateTime) -> StoreResult<()> {
                    let mut tx = self.begin_write().await.map_err(store_error)?;
                    sqlx::query(q("INSERT INTO teams (id, name, created_at) VALUES (CAST($1 AS {uuid}), $2, $3)"))
                        .bind(team.id.0.to_string())
                        .bind(&team.name)
                        .bind(micros(team.created_at))
                        .execute(&mut *tx)
                        .await
                        .map_err(store_error)?;
                    sqlx::query(q(
                        "INSERT INTO team_members (team_id, user_id, role, added_at)
                         VALUES (CAST($1 AS {uuid}), CAST($2 AS {uuid}), 'owner', $3)",
                    ))
                    .bind(team.id.0.to_string())
                    .bind(owner.0.to_string())
                    .bind(micros(now))
                    .execute(&mut *tx)
                    .await
                    .map_err(store_error)?;
                    tx.commit().await.map_err(store_error)
                }

                async fn team(&self, id: TeamId) -> StoreResult<Option<Team>> {
                    sqlx::query(q(&format!("SELECT {TEAM_COLUMNS} FROM teams WHERE id = CAST($1 AS {{uuid}})")))
                        .bind(id.0.to_string())
                        .fetch_optional(self.read())
                        .await
                        .map_err(store_error)?
                        .map(|row| team_from_row(&row))
                        .transpose()
                }

                async fn rename_team(&self, id: TeamId, name: &str) -> StoreResult<Option<Team>> {
                    sqlx::query(q(&format!(
                        "UPDATE teams SET name = $2 WHERE id = CAST($1 AS {{uuid}}) RETURNING {TEAM_COLUMNS}"
                    )))
                    .bind(id.0.to_string())
                    .bind(name)
                    .fetch_optional(self.write())
                    .await
                    .map_err(store_error)?
                    .map(|row| team_from_row(&row))
                    .transpose()
                }

                async fn delete_team(&self, id: TeamId) -> StoreResult<Vec<FileRecord>> {
                    let mut tx = self.begin_write().await.map_err(store_error)?;
                    let rows = sqlx::query(q("DELETE FROM files WHERE team_id = CAST($1 AS {uuid}) RETURNING {files}"))
                        .bind(id.0.to_string())
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(store_error)?;
                    let files = rows.iter().map(file_from_row).collect::<StoreResult<Vec<_>>>()?;
                    sqlx::query(q("DELETE FROM teams WHERE id = CAST($1 AS {uuid})"))
                        .bind(id.0.to_string())
                        .execute(&mut *tx)
                        .await
                        .map_err(store_error)?;
                    let committed = tx.commit().await;
                    self.files_changed();
                    committed.map_err(store_error)?;
                    Ok(files)
                }

                async fn teams_of(&self, user: UserId) -> StoreResult<Vec<(Team, TeamRole)>> {
                    let rows = sqlx::query(q(
                        "SELECT CAST(t.id AS TEXT) AS id, t.name AS name, t.created_at AS created_at, m.role AS role
                         FROM team_members m JOIN teams t ON t.id = m.team_id
                         WHERE m.user_id = CAST($1 AS {uuid}) ORDER BY t.name, t.id",
                    ))
                    .bind(user.0.to_string())
                    .fetch_all(self.read())
                    .await
                    .map_err(store_error)?;
                    rows.iter()
                        .map(|row| {
                            let role: String = get(&row, "role")?;
                            let role = TeamRole::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("role {role}")))?;
                            Ok((team_from_row(row)?, role))
                        })
                        .collect()
                }

                async fn members(&self, team: TeamId) -> StoreResult<Vec<Membership>> {
                    let rows = sqlx::query(q(
                        "SELECT CAST(u.id AS TEXT) AS id, u.username AS username, m.role AS role, m.added_at AS added_at
                         FROM team_members m JOIN users u ON u.id = m.user_id
                         WHERE m.team_id = CAST($1 AS {uuid}) ORDER BY u.username",
                    ))
                    .bind(team.0.to_string())
                    .fetch_all(self.read())
                    .await
                    .map_err(store_error)?;
                    rows.iter()
                        .map(|row| {
                            let id: String = get(&row, "id")?;
                            let role: String = get(&row, "role")?;
                            Ok(Membership {
                                user: UserId(parse_uuid(&id, "member id")?),
                                username: Username::from_trusted(get(&row, "username")?),
                                role: TeamRole::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("role {role}")))?,
                                added_at: from_micros(get(&row, "added_at")?)?,
                            })
                        })
                        .collect()
                }

                async fn role_in(&self, team: TeamId, user: UserId) -> StoreResult<Option<TeamRole>> {
                    let row = sqlx::query(q(
                        "SELECT role FROM team_members WHERE team_id = CAST($1 AS {uuid}) AND user_id = CAST($2 AS {uuid})",
                    ))
                    .bind(team.0.to_string())
                    .bind(user.0.to_string())
                    .fetch_optional(self.read())
                    .await
                    .map_err(store_error)?;
                    match row {
                        None => Ok(None),
                        Some(row) => {
                            let role: String = get(&row, "role")?;
                            TeamRole::parse(&role)
                                .map(Some)
                                .ok_or_else(|| StoreError::Corrupt(format!("role {role}")))
                        }
                    }
                }

                async fn add_member(
                    &self,
                    team: TeamId,
                    user: UserId,
                    role: TeamRole,
                    now: OffsetDateTime,
                ) -> StoreResult<()> {
                    sqlx::query(q(
                        "INSERT INTO team_members (team_id, user_id, role, added_at)
                         VALUES (CAST($1 AS {uuid}), CAST($2 AS {uuid}), $3, $4)",
                    ))
                    .bind(team.0.to_string())
                    .bind(user.0.to_string())
                    .bind(role.as_str())
                    .bind(micros(now))
                    .execute(self.write())
                    .await
                    .map_err(store_error)?;
                    Ok(())
                }

                async fn set_role(&self, team: TeamId, user: UserId, role: TeamRole) -> StoreResult<MembershipChange> {
                    self.change_membership(team, user, Some(role)).await
                }

                async fn remove_member(&self, team: TeamId, user: UserId) -> StoreResult<MembershipChange> {
                    self.change_membership(team, user, None).await
                }

                async fn create_share(&self, share: &Share, token_hash: &[u8; 32]) -> StoreResult<()> {
                    self.create_share_within(share, token_hash, u64::MAX, share.created_at).await.map(|_| ())
                }

                async fn create_share_within(
                    &self,
                    share: &Share,
                    token_hash: &[u8; 32],
                    max_live: u64,
                    now: OffsetDateTime,
                ) -> StoreResult<bool> {
                    let owner = share.owner;
                    let mut tx = self.begin_write().await.map_err(store_error)?;
                    if max_live < u64::MAX && self.live_links(&mut tx, owner, now).await? >= max_live {
                        return Ok(false);
                    }
                    sqlx::query(q(
                        "INSERT INTO shares (id, token_hash, owner_id, note, password_hash, expires_at, max_downloads,
                             downloads, revoked, created_at, updated_at)
                         VALUES (CAST($1 AS {uuid}), $2, CAST($3 AS {uuid}), $4, $5, $6, $7, 0, FALSE, $8, $9)",
                    ))
                    .bind(share.id.0.to_string())
                    .bind(&token_hash[..])
                    .bind(share.owner.0.to_string())
                    .bind(share.note.as_deref())
                    .bind(share.password_hash.as_deref())
                    .bind(share.expires_at.map(micros))
                    .bind(opt_u64(share.max_downloads))
                    .bind(micros(share.created_at))
                    .bind(micros(share.updated_at))
                    .execute(&mut *tx)
                    .await
                    .map_err(store_error)?;
                    for (position, key) in share.files.iter().enumerate() {
                        sqlx::query(q(
                            "INSERT INTO share_files (share_id, position, file_key) VALUES (CAST($1 AS {uuid}), $2, $3)",
                        ))
                        .bind(share.id.0.to_string())
                        .bind(i64::try_from(position).unwrap_or(i64::MAX))
                        .bind(key.as_str())
                        .execute(&mut *tx)
                        .await
                        .map_err(store_error)?;
                    }
                    tx.commit().await.map_err(store_error)?;
                    Ok(true)
                }

                async fn share(&self, id: ShareId) -> StoreResult<Option<Share>> {
                    Ok(self
                        .shares_where("id = CAST($1 AS {uuid})", Vec::new(), Some(id.0.to_string()))
                        .await?
                        .pop())
                }

                async fn share_by_token(&self, token_hash: &[u8; 32]) -> StoreResult<Option<Share>> {
                    Ok(self.shares_where("token_hash = $1", token_hash.to_vec(), None).await?.pop())
                }

                async fn shares_of(&self, owner: UserId) -> StoreResult<Vec<Share>> {
                    self.shares_where("owner_id = CAST($1 AS {uuid})", Vec::new(), Some(owner.0.to_string()))
                        .await
                }

                async fn update_share(&self, id: ShareId, patch: &SharePatch, now: OffsetDateTime) -> StoreResult<Option<Share>> {
                    // Each setting is either kept (flag false) or replaced, possibly by NULL.
                    let done = sqlx::query(q(
                        "UPDATE shares SET
                             note = CASE WHEN $2 THEN $3 ELSE note END,
                             password_hash = CASE WHEN $4 THEN $5 ELSE password_hash END,
                             expires_at = CASE WHEN $6 THEN $7 ELSE expires_at END,
                             max_downloads = CASE WHEN $8 THEN $9 ELSE max_downloads END,
                             updated_at = $10
                         WHERE id = CAST($1 AS {uuid})",
                    ))
                    .bind(id.0.to_string())
                    .bind(patch.note.is_some())
                    .bind(patch.note.clone().flatten())
                    .bind(patch.password_hash.is_some())
                    .bind(patch.password_hash.clone().flatten())
                    .bind(patch.expires_at.is_some())
                    .bind(patch.expires_at.flatten().map(micros))
                    .bind(patch.max_downloads.is_some())
                    .bind(opt_u64(patch.max_downloads.flatten()))
                    .bind(micros(now))
                    .execute(self.write())
                    .await
                    .map_err(store_error)?;
                    if done.rows_affected() == 0 {
                        return Ok(None);
                    }
                    self.share(id).await
                }

                async fn revoke_share(&self, id: ShareId, now: OffsetDateTime) -> StoreResult<bool> {
                    let done = sqlx::query(q(
                        "UPDATE shares SET revoked = TRUE, updated_at = $2 WHERE id = CAST($1 AS {uuid})",
                    ))
                    .bind(id.0.to_string())
                    .bind(micros(now))
                    .execute(self.write())
                    .await
                    .map_err(store_error)?;
                    Ok(done.rows_affected() > 0)
                }

                async fn count_share_download(&self, id: ShareId, now: OffsetDateTime) -> StoreResult<bool> {
                    let done = sqlx::query(q(
                        "UPDATE shares SET downloads = downloads + 1
                         WHERE id = CAST($1 AS {uuid}) AND NOT revoked
                           AND (expires_at IS NULL OR expires_at > $2)
                           AND (max_downloads IS NULL OR downloads < max_downloads)",
                    ))
                    .bind(id.0.to_string())
                    .bind(micros(now))
                    .execute(self.write())
                    .await
                    .map_err(store_error)?;
                    Ok(done.rows_affected() == 1)
                }

                async fn insert_share_grant(
                    &self,
                    grant_hash: &[u8; 32],
                    share: ShareId,
                    position: u32,
                    expires_at: OffsetDateTime,
                ) -> StoreResult<()> {
                    sqlx::query(q(
                        "INSERT INTO share_grants (hash, share_id, position, expires_at)
                         VALUES ($1, CAST($2 AS {uuid}), $3, $4)",
                    ))
                    .bind(&grant_hash[..])
                    .bind(share.0.to_string())
                    .bind(i64::from(position))
                    .bind(micros(expires_at))
                    .execute(self.write())
                    .await
                    .map_err(store_error)?;
                    Ok(())
                }

                async fn share_grant(&self, grant_hash: &[u8; 32], now: OffsetDateTime) -> StoreResult<Option<(ShareId, u32)>> {
                    let row = sqlx::query(q(
                        "SELECT CAST(share_id AS TEXT) AS share_id, position FROM share_grants
                         WHERE hash = $1 AND expires_at > $2",
                    ))
                    .bind(&grant_hash[..])
                    .bind(micros(now))
                    .fetch_optional(self.read())
                    .await
                    .map_err(store_error)?;
                    match row {
                        None => Ok(None),
                        Some(row) => {
                            let id: String = get(&row, "share_id")?;
                            let position: i64 = get(&row, "position")?;
                            Ok(Some((
                                ShareId(parse_uuid(&id, "grant share")?),
                                u32::try_from(position).map_err(|_| StoreError::Corrupt("grant position".into()))?,
                            )))
                        }
                    }
                }

                async fn prune_shares(&self, before: OffsetDateTime) -> StoreResult<u64> {
                    let mut tx = self.begin_write().await.map_err(store_error)?;
                    sqlx::query(q("DELETE FROM share_grants WHERE expires_at <= $1"))
                        .bind(micros(before))
                        .execute(&mut *tx)
                        .await
                        .map_err(store_error)?;
                    let done = sqlx::query(q(
                        "DELETE FROM shares WHERE (expires_at IS NOT NULL AND expires_at <= $1)
                             OR (revoked AND updated_at <= $1)",
                    ))
                    .bind(micros(before))
                    .execute(&mut *tx)
                    .await
                    .map_err(store_error)?;
                    tx.commit().await.map_err(store_error)?;
                    Ok(done.rows_affected())
                }

                async fn create_upload_link(&self, link: &UploadLink, token_hash: &[u8; 32]) -> StoreResult<()> {
                    self.create_upload_link_within(link, token_hash, u64::MAX, link.created_at).await.map(|_| ())
                }

                async fn create_upload_link_within(
                    &self,
                    link: &UploadLink,
                    token_hash: &[u8; 32],
                    max_live: u64,
                    now: OffsetDateTime,
                ) -> StoreResult<bool> {
                    let owner = link.owner;
                    let mut tx = self.begin_write().await.map_err(store_error)?;
                    if max_live < u64::MAX && self.live_links(&mut tx, owner, now).await? >= max_live {
                        return Ok(false);
                    }
                    sqlx::query(q(
                        "INSERT INTO upload_links (id, token_hash, owner_id, team_id, note, password_hash, expires_at,
                             max_files, max_bytes, files_received, bytes_received, revoked, created_at)
                         VALUES (CAST($1 AS {uuid}), $2, CAST($3 AS {uuid}), CAST($4 AS {uuid}), $5, $6, $7, $8, $9,
                             0, 0, FALSE, $10)",
                    ))
                    .bind(link.id.0.to_string())
                    .bind(&token_hash[..])
                    .bind(link.owner.0.to_string())
                    .bind(link.team.map(|t| t.0.to_string()))
                    .bind(link.note.as_deref())
                    .bind(link.password_hash.as_deref())
                    .bind(link.expires_at.map(micros))
                    .bind(opt_u64(link.max_files))
                    .bind(opt_u64(link.max_bytes))
                    .bind(micros(link.created_at))
                    .execute(&mut *tx)
                    .await
                    .map_err(store_error)?;
                    tx.commit().await.map_err(store_error)?;
                    Ok(true)
                }

                async fn upload_link(&self, id: UploadLinkId) -> StoreResult<Option<UploadLink>> {
                    sqlx::query(q(&format!("SELECT {LINK_COLUMNS} FROM upload_links WHERE id = CAST($1 AS {{uuid}})")))
                        .bind(id.0.to_string())
                        .fetch_optional(self.read())
                        .await
                        .map_err(store_error)?
                        .map(|row| upload_link_from_row(&row))
                        .transpose()
                }

                async fn upload_link_by_token(&self, token_hash: &[u8; 32]) -> StoreResult<Option<UploadLink>> {
                    sqlx::query(q(&format!("SELECT {LINK_COLUMNS} FROM upload_links WHERE token_hash = $1")))
                        .bind(&token_hash[..])
                        .fetch_optional(self.read())
                        .await
                        .map_err(store_error)?
                        .map(|row| upload_link_from_row(&row))
                        .transpose()
                }

                async fn upload_links_of(&self, owner: UserId) -> StoreResult<Vec<UploadLink>> {
                    let rows = sqlx::query(q(&format!(
                        "SELECT {LINK_COLUMNS} FROM upload_links WHERE owner_id = CAST($1 AS {{uuid}})
                         ORDER BY created_at DESC, id DESC LIMIT 1000"
                    )))
                    .bind(owner.0.to_string())
                    .fetch_all(self.read())
                    .await
                    .map_err(store_error)?;
                    rows.iter().map(upload_link_from_row).collect()
                }

                async fn revoke_upload_link(&self, id: UploadLinkId) -> StoreResult<bool> {
                    let done = sqlx::query(q("UPDATE upload_links SET revoked = TRUE WHERE id = CAST($1 AS {uuid})"))
                        .bind(id.0.to_string())
                        .execute(self.write())
                        .await
                        .map_err(store_error)?;
                    Ok(done.rows_affected() > 0)
                }

                async fn append_audit(&self, events: &[AuditEvent]) -> StoreResult<()> {
                    if events.is_empty() {
                        return Ok(());
                    }
                    let mut tx = self.begin_write().await.map_err(store_error)?;
                    // Many rows per statement: on SQLite every statement is a round trip to the connection's
                    // worker thread, and a busy server queues hundreds of events per batch.
                    let mut rest = events;
                    while !rest.is_empty() {
                        // Chunks of 64, then powers of two: a handful of distinct statements, each prepared once
                        // and then reused from the connection's statement cache.
                        let n = if rest.len() >= AUDIT_ROWS_PER_INSERT {
                            AUDIT_ROWS_PER_INSERT
                        } else {
                            1 << rest.len().ilog2()
                        };
                        let (chunk, tail) = rest.split_at(n);
                        rest = tail;
                        let mut sql = String::from(
                            "INSERT INTO audit_events (id, at, action, actor_id, owner_id, team_id, file_key, detail) VALUES ",
                        );
                        for i in 0..chunk.len() {
                            if i > 0 {
                                sql.push_str(", ");
                            }
                            // Bound in order. SQLite gets anonymous `?`: sqlx asks SQLite for each numbered
                            // parameter's name, a scan of every name before it, which for 512 parameters was a
                            // few µs per event on the writer (bench/RESULTS.md).
                            let p: [String; 8] = std::array::from_fn(|k| {
                                if $anonymous_parameters { "?".to_owned() } else { format!("${}", i * 8 + k + 1) }
                            });
                            sql.push_str(&format!(
                                "(CAST({} AS {{uuid}}), {}, {}, CAST({} AS {{uuid}}), CAST({} AS {{uuid}}), \
                                 CAST({} AS {{uuid}}), {}, {})",
                                p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]
                            ));
                        }
                        let sql = q(&sql);
                        let mut query = sqlx::query(sql);
                        for event in chunk {
                            query = query
                                .bind(event.id.0.to_string())
                                .bind(micros(event.at))
                                .bind(event.action.as_str())
                                .bind(event.actor.map(|u| u.0.to_string()))
                                .bind(event.owner.map(|u| u.0.to_string()))
                                .bind(event.team.map(|t| t.0.to_string()))
                                .bind(event.file.as_ref().map(|k| k.as_str()))
                                .bind(event.detail.as_deref());
                        }
                        query.execute(&mut *tx).await.map_err(store_error)?;
                    }
                    tx.commit().await.map_err(store_error)
                }

                async fn audit_page(&self, scope: AuditScope, before: Option<AuditId>, limit: u32) -> StoreResult<Vec<AuditEvent>> {
                    let (condition, bound) = match scope {
                        AuditScope::Owner(user) => ("owner_id = CAST($1 AS {uuid})", Some(user.0.to_string())),
                        AuditScope::Team(team) => ("team_id = CAST($1 AS {uuid})", Some(team.0.to_string())),
                        AuditScope::Everything => ("($1 IS NULL OR TRUE)", None),
                    };
                    let sql = format!(
                        "SELECT {AUDIT_COLUMNS} FROM audit_events
                         WHERE {condition} AND ($2 IS NULL OR id < CAST($2 AS {{uuid}}))
                         ORDER BY id DESC LIMIT $3"
                    );
                    let rows = sqlx::query(q(&sql))
                        .bind(bound)
                        .bind(before.map(|id| id.0.to_string()))
                        .bind(i64::from(limit))
                        .fetch_all(self.read())
                        .await
                        .map_err(store_error)?;
                    rows.iter().map(audit_from_row).collect()
                }

                async fn set_user_flags(
                    &self,
                    user: UserId,
                    disabled: Option<bool>,
                    is_admin: Option<bool>,
                ) -> StoreResult<Option<User>> {
                    let mut tx = self.begin_write().await.map_err(store_error)?;
                    let row = sqlx::query(q(
                        "UPDATE users SET disabled = COALESCE($2, disabled), is_admin = COALESCE($3, is_admin)
                         WHERE id = CAST($1 AS {uuid}) RETURNING {users}",
                    ))
                    .bind(user.0.to_string())
                    .bind(disabled)
                    .bind(is_admin)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(store_error)?;
                    if disabled == Some(true) {
                        // Refresh tokens of a disabled account die with it; access tokens stop at the next request.
                        sqlx::query(q("UPDATE refresh_tokens SET revoked = TRUE WHERE user_id = CAST($1 AS {uuid})"))
                            .bind(user.0.to_string())
                            .execute(&mut *tx)
                            .await
                            .map_err(store_error)?;
                    }
                    tx.commit().await.map_err(store_error)?;
                    self.user_changed(user);
                    row.map(|row| user_from_row(&row)).transpose()
                }
            }

            impl $store {
                /// The owner's live share and upload links, counted under a lock on the owner's row so that two
                /// concurrent creations cannot both pass a limit.
                async fn live_links(
                    &self,
                    tx: &mut sqlx::Transaction<'static, $db>,
                    owner: UserId,
                    now: OffsetDateTime,
                ) -> StoreResult<u64> {
                    sqlx::query(q("SELECT CAST(id AS TEXT) AS id FROM users WHERE id = CAST($1 AS {uuid}) {for_update}"))
                        .bind(owner.0.to_string())
                        .fetch_optional(&mut **tx)
                        .await
                        .map_err(store_error)?;
                    let row = sqlx::query(q(
                        "SELECT
                             (SELECT COUNT(*) FROM shares WHERE owner_id = CAST($1 AS {uuid}) AND NOT revoked
                                 AND (expires_at IS NULL OR expires_at > $2)
                                 AND (max_downloads IS NULL OR downloads < max_downloads)) AS shares,
                             (SELECT COUNT(*) FROM upload_links WHERE owner_id = CAST($1 AS {uuid}) AND NOT revoked
                                 AND (expires_at IS NULL OR expires_at > $2)
                                 AND (max_files IS NULL OR files_received < max_files)
                                 AND (max_bytes IS NULL OR bytes_received < max_bytes)) AS uploads",
                    ))
                    .bind(owner.0.to_string())
                    .bind(micros(now))
                    .fetch_one(&mut **tx)
                    .await
                    .map_err(store_error)?;
                    let shares: i64 = get(&row, "shares")?;
                    let uploads: i64 = get(&row, "uploads")?;
                    Ok(to_u64(shares, "live shares")? + to_u64(uploads, "live upload links")?)
                }

                /// Sets a member's role (`Some`) or removes them (`None`), refusing to leave the team without an
                /// owner. The team row is locked first, so two owners demoting each other cannot both succeed.
                async fn change_membership(
                    &self,
                    team: TeamId,
                    user: UserId,
                    role: Option<TeamRole>,
                ) -> StoreResult<MembershipChange> {
                    let mut tx = self.begin_write().await.map_err(store_error)?;
                    sqlx::query(q("SELECT CAST(id AS TEXT) AS id FROM teams WHERE id = CAST($1 AS {uuid}) {for_update}"))
                        .bind(team.0.to_string())
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(store_error)?;
                    let current = sqlx::query(q(
                        "SELECT role FROM team_members WHERE team_id = CAST($1 AS {uuid}) AND user_id = CAST($2 AS {uuid})",
                    ))
                    .bind(team.0.to_string())
                    .bind(user.0.to_string())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(store_error)?;
                    let Some(current) = current else {
                        return Ok(MembershipChange::NotMember);
                    };
                    let current: String = get(&current, "role")?;
                    if current == TeamRole::Owner.as_str() && role != Some(TeamRole::Owner) {
                        let owners = sqlx::query(q(
                            "SELECT COUNT(*) AS owners FROM team_members WHERE team_id = CAST($1 AS {uuid}) AND role = 'owner'",
                        ))
                        .bind(team.0.to_string())
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(store_error)?;
                        let owners: i64 = get(&owners, "owners")?;
                        if owners <= 1 {
                            return Ok(MembershipChange::LastOwner);
                        }
                    }
                    let statement = match role {
                        Some(_) => "UPDATE team_members SET role = $3 WHERE team_id = CAST($1 AS {uuid}) AND user_id = CAST($2 AS {uuid})",
                        None => "DELETE FROM team_members WHERE team_id = CAST($1 AS {uuid}) AND user_id = CAST($2 AS {uuid}) AND $3 IS NULL",
                    };
                    sqlx::query(q(statement))
                        .bind(team.0.to_string())
                        .bind(user.0.to_string())
                        .bind(role.map(TeamRole::as_str))
                        .execute(&mut *tx)
                        .await
                        .map_err(store_error)?;
                    tx.commit().await.map_err(store_error)?;
                    Ok(MembershipChange::Done)
                }
            }
        }
    };
}

pub(crate) use collaboration_store;
