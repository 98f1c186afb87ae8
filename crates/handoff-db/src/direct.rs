//! [`handoff_core::DirectUploadStore`] for both backends from one body of SQL (table `direct_uploads`, migrations
//! 0006 and 0007), in the dialect they share, with the slots of [`crate::collab::render`] (`{uuid}`,
//! `{for_update}`).
//!
//! Sessions are written once; afterwards only the claim changes, by one conditional `UPDATE … WHERE claim_until
//! IS NULL OR claim_until <= now RETURNING …`, atomic on either backend, and whoever holds the claim records the
//! verification's progress and the completion (`completed_at`; completed rows are left out of every count). The per-owner session limit is a count
//! and an insert in one write transaction, serialised by a row lock on the user (PostgreSQL) or by SQLite's
//! single writer.

macro_rules! direct_upload_store {
    ($store:ty, db = $db:ty, row = $row:ty, uuid = $uuid:literal, for_update = $for_update:literal) => {
        mod direct_impl {
            use async_trait::async_trait;
            use handoff_core::{
                Account, BlobId, DirectUpload, DirectUploadStore, FileKey, FileName, LeaseToken, StoreError,
                StoreResult, TeamId, UploadId, UserId, Verification, Visibility,
            };
            use sqlx::Row as _;
            use time::OffsetDateTime;

            use crate::collab::{parse_uuid, to_u64};
            use crate::{from_micros, micros, store_error};

            const COLUMNS: &str = "id, CAST(owner_id AS TEXT) AS owner_id, CAST(team_id AS TEXT) AS team_id, \
                                   CAST(blob_id AS TEXT) AS blob_id, file_key, name, content_type, visibility, \
                                   file_expires_at, size, sha256, part_size, part_count, store_state, created_at, \
                                   expires_at, verified_bytes, hash_state, completed_at";

            fn q(sql: &str) -> sqlx::AssertSqlSafe<String> {
                sqlx::AssertSqlSafe(
                    crate::collab::render(sql, $uuid, $for_update, "", "", "").replace("{columns}", COLUMNS),
                )
            }

            fn get<'r, T>(row: &'r $row, column: &str) -> StoreResult<T>
            where
                T: sqlx::Decode<'r, $db> + sqlx::Type<$db>,
            {
                row.try_get(column).map_err(store_error)
            }

            fn size(v: u64) -> StoreResult<i64> {
                i64::try_from(v).map_err(|_| StoreError::Corrupt("size beyond i64".into()))
            }

            fn from_row(row: &$row) -> StoreResult<DirectUpload> {
                let id: String = get(row, "id")?;
                let key: String = get(row, "file_key")?;
                let visibility: String = get(row, "visibility")?;
                let team: Option<String> = get(row, "team_id")?;
                let owner: String = get(row, "owner_id")?;
                let blob: String = get(row, "blob_id")?;
                let file_expires_at: Option<i64> = get(row, "file_expires_at")?;
                let part_count: i32 = get(row, "part_count")?;
                let hash_state: Option<Vec<u8>> = get(row, "hash_state")?;
                let completed_at: Option<i64> = get(row, "completed_at")?;
                Ok(DirectUpload {
                    id: UploadId::parse(&id).ok_or_else(|| StoreError::Corrupt("direct upload id".into()))?,
                    owner: UserId(parse_uuid(&owner, "owner_id")?),
                    team: team.map(|t| parse_uuid(&t, "team_id").map(TeamId)).transpose()?,
                    blob: BlobId(parse_uuid(&blob, "blob_id")?),
                    file_key: FileKey::parse(&key).ok_or_else(|| StoreError::Corrupt("file key".into()))?,
                    name: FileName::from_trusted(get(row, "name")?),
                    content_type: get(row, "content_type")?,
                    visibility: Visibility::parse(&visibility)
                        .ok_or_else(|| StoreError::Corrupt(format!("visibility {visibility}")))?,
                    file_expires_at: file_expires_at.map(from_micros).transpose()?,
                    size: to_u64(get(row, "size")?, "size")?,
                    sha256: get(row, "sha256")?,
                    part_size: to_u64(get(row, "part_size")?, "part size")?,
                    part_count: u32::try_from(part_count)
                        .map_err(|_| StoreError::Corrupt("negative part count".into()))?,
                    store_state: get(row, "store_state")?,
                    created_at: from_micros(get(row, "created_at")?)?,
                    expires_at: from_micros(get(row, "expires_at")?)?,
                    verification: hash_state
                        .map(|hash_state| -> StoreResult<Verification> {
                            Ok(Verification {
                                verified: to_u64(get(row, "verified_bytes")?, "verified bytes")?,
                                hash_state,
                            })
                        })
                        .transpose()?,
                    completed_at: completed_at.map(from_micros).transpose()?,
                })
            }

            #[async_trait]
            impl DirectUploadStore for $store {
                async fn create_direct_upload(
                    &self,
                    s: &DirectUpload,
                    max_open: u32,
                    now: OffsetDateTime,
                ) -> StoreResult<bool> {
                    let mut tx = self.begin_write().await.map_err(store_error)?;
                    // Serialises creates of one owner across nodes (SQLite's single writer does so anyway).
                    let owner = sqlx::query(q(
                        "SELECT CAST(id AS TEXT) AS id FROM users WHERE id = CAST($1 AS {uuid}) {for_update}",
                    ))
                    .bind(s.owner.0.to_string())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(store_error)?;
                    if owner.is_none() {
                        return Err(StoreError::NotFound);
                    }
                    let row = sqlx::query(q(
                        "SELECT COUNT(*) AS open FROM direct_uploads
                         WHERE owner_id = CAST($1 AS {uuid}) AND expires_at > $2 AND completed_at IS NULL",
                    ))
                    .bind(s.owner.0.to_string())
                    .bind(micros(now))
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(store_error)?;
                    let open: i64 = get(&row, "open")?;
                    if open >= i64::from(max_open) {
                        return Ok(false);
                    }
                    sqlx::query(q(
                        "INSERT INTO direct_uploads (id, owner_id, team_id, blob_id, file_key, name, content_type,
                             visibility, file_expires_at, size, sha256, part_size, part_count, store_state, created_at,
                             expires_at)
                         VALUES ($1, CAST($2 AS {uuid}), CAST($3 AS {uuid}), CAST($4 AS {uuid}), $5, $6, $7, $8, $9,
                             $10, $11, $12, $13, $14, $15, $16)",
                    ))
                    .bind(s.id.as_str())
                    .bind(s.owner.0.to_string())
                    .bind(s.team.map(|t| t.0.to_string()))
                    .bind(s.blob.0.to_string())
                    .bind(s.file_key.as_str())
                    .bind(s.name.as_str())
                    .bind(&s.content_type)
                    .bind(s.visibility.as_str())
                    .bind(s.file_expires_at.map(micros))
                    .bind(size(s.size)?)
                    .bind(s.sha256.as_deref())
                    .bind(size(s.part_size)?)
                    .bind(i32::try_from(s.part_count).map_err(|_| StoreError::Corrupt("part count".into()))?)
                    .bind(&s.store_state)
                    .bind(micros(s.created_at))
                    .bind(micros(s.expires_at))
                    .execute(&mut *tx)
                    .await
                    .map_err(store_error)?;
                    tx.commit().await.map_err(store_error)?;
                    Ok(true)
                }

                async fn direct_upload(&self, id: &UploadId) -> StoreResult<Option<DirectUpload>> {
                    sqlx::query(q("SELECT {columns} FROM direct_uploads WHERE id = $1"))
                        .bind(id.as_str())
                        .fetch_optional(self.read())
                        .await
                        .map_err(store_error)?
                        .map(|row| from_row(&row))
                        .transpose()
                }

                async fn claim_direct_upload(
                    &self,
                    id: &UploadId,
                    token: &LeaseToken,
                    until: OffsetDateTime,
                    now: OffsetDateTime,
                ) -> StoreResult<Option<DirectUpload>> {
                    sqlx::query(q(
                        "UPDATE direct_uploads SET claim_token = $1, claim_until = $2
                         WHERE id = $3 AND (claim_until IS NULL OR claim_until <= $4)
                         RETURNING {columns}",
                    ))
                    .bind(token.as_str())
                    .bind(micros(until))
                    .bind(id.as_str())
                    .bind(micros(now))
                    .fetch_optional(self.write())
                    .await
                    .map_err(store_error)?
                    .map(|row| from_row(&row))
                    .transpose()
                }

                async fn release_direct_upload(&self, id: &UploadId, token: &LeaseToken) -> StoreResult<()> {
                    sqlx::query(q(
                        "UPDATE direct_uploads SET claim_token = NULL, claim_until = NULL
                         WHERE id = $1 AND claim_token = $2",
                    ))
                    .bind(id.as_str())
                    .bind(token.as_str())
                    .execute(self.write())
                    .await
                    .map_err(store_error)?;
                    Ok(())
                }

                async fn record_direct_verification(
                    &self,
                    id: &UploadId,
                    token: &LeaseToken,
                    progress: &Verification,
                ) -> StoreResult<bool> {
                    let done = sqlx::query(q(
                        "UPDATE direct_uploads SET verified_bytes = $1, hash_state = $2
                         WHERE id = $3 AND claim_token = $4",
                    ))
                    .bind(size(progress.verified)?)
                    .bind(progress.hash_state.as_slice())
                    .bind(id.as_str())
                    .bind(token.as_str())
                    .execute(self.write())
                    .await
                    .map_err(store_error)?;
                    Ok(done.rows_affected() == 1)
                }

                async fn mark_direct_upload_completed(
                    &self,
                    id: &UploadId,
                    token: &LeaseToken,
                    now: OffsetDateTime,
                ) -> StoreResult<bool> {
                    let done = sqlx::query(q(
                        "UPDATE direct_uploads
                         SET completed_at = $1, hash_state = NULL, claim_token = NULL, claim_until = NULL
                         WHERE id = $2 AND claim_token = $3",
                    ))
                    .bind(micros(now))
                    .bind(id.as_str())
                    .bind(token.as_str())
                    .execute(self.write())
                    .await
                    .map_err(store_error)?;
                    Ok(done.rows_affected() == 1)
                }

                async fn delete_direct_upload(&self, id: &UploadId, token: &LeaseToken) -> StoreResult<bool> {
                    let done = sqlx::query(q("DELETE FROM direct_uploads WHERE id = $1 AND claim_token = $2"))
                        .bind(id.as_str())
                        .bind(token.as_str())
                        .execute(self.write())
                        .await
                        .map_err(store_error)?;
                    Ok(done.rows_affected() == 1)
                }

                async fn expired_direct_uploads(
                    &self,
                    now: OffsetDateTime,
                    limit: u32,
                ) -> StoreResult<Vec<DirectUpload>> {
                    let rows = sqlx::query(q(
                        "SELECT {columns} FROM direct_uploads
                         WHERE expires_at <= $1 AND (claim_until IS NULL OR claim_until <= $1)
                         ORDER BY expires_at LIMIT $2",
                    ))
                    .bind(micros(now))
                    .bind(i64::from(limit))
                    .fetch_all(self.read())
                    .await
                    .map_err(store_error)?;
                    rows.iter().map(from_row).collect()
                }

                async fn open_direct_bytes(&self, account: Account, now: OffsetDateTime) -> StoreResult<u64> {
                    let (filter, id) = match account {
                        Account::User(UserId(id)) => ("owner_id = CAST($1 AS {uuid}) AND team_id IS NULL", id),
                        Account::Team(TeamId(id)) => ("team_id = CAST($1 AS {uuid})", id),
                    };
                    let row = sqlx::query(q(&format!(
                        "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) AS total FROM direct_uploads
                         WHERE {filter} AND expires_at > $2 AND completed_at IS NULL"
                    )))
                    .bind(id.to_string())
                    .bind(micros(now))
                    .fetch_one(self.read())
                    .await
                    .map_err(store_error)?;
                    to_u64(get(&row, "total")?, "total")
                }

                async fn blob_in_direct_upload(&self, blob: BlobId) -> StoreResult<bool> {
                    let row = sqlx::query(q(
                        "SELECT COUNT(*) AS n FROM direct_uploads
                         WHERE blob_id = CAST($1 AS {uuid}) AND completed_at IS NULL",
                    ))
                    .bind(blob.0.to_string())
                    .fetch_one(self.read())
                    .await
                    .map_err(store_error)?;
                    let n: i64 = get(&row, "n")?;
                    Ok(n > 0)
                }
            }
        }
    };
}
pub(crate) use direct_upload_store;
