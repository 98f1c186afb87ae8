//! [`UploadStore`] on PostgreSQL. The lease is taken by one conditional `UPDATE … RETURNING`, atomic across
//! every node sharing the database; the per-user session limit is checked under a row lock on the user.

use async_trait::async_trait;
use handoff_core::{
    Account, BlobId, FileKey, FileName, LeaseToken, LinkReservation, StoreError, StoreResult, TeamId, UploadId,
    UploadLinkId, UploadProgress, UploadSession, UploadStore, UserId, Visibility,
};
use sqlx::Row as _;
use sqlx::postgres::PgRow;
use time::OffsetDateTime;

use super::{PostgresStore, optional_uuid, size_i64, text_uuid};
use crate::{from_micros, micros, store_error};

const COLUMNS: &str = "id, owner_id::text AS owner_id, blob_id::text AS blob_id, file_key, upload_length, \
                       upload_offset, metadata, name, content_type, visibility, store_state, hash_state, completed, \
                       created_at, expires_at, team_id::text AS team_id, upload_link_id::text AS upload_link_id";

fn session_from_row(row: &PgRow) -> StoreResult<UploadSession> {
    let id: String = row.try_get("id").map_err(store_error)?;
    let key: String = row.try_get("file_key").map_err(store_error)?;
    let visibility: String = row.try_get("visibility").map_err(store_error)?;
    let length: Option<i64> = row.try_get("upload_length").map_err(store_error)?;
    let offset: i64 = row.try_get("upload_offset").map_err(store_error)?;
    let unsigned = |v: i64| u64::try_from(v).map_err(|_| StoreError::Corrupt("negative upload size".into()));
    Ok(UploadSession {
        id: UploadId::parse(&id).ok_or_else(|| StoreError::Corrupt("upload id".into()))?,
        owner: UserId(text_uuid(row, "owner_id")?),
        team: optional_uuid(row, "team_id")?.map(TeamId),
        upload_link: optional_uuid(row, "upload_link_id")?.map(UploadLinkId),
        blob: BlobId(text_uuid(row, "blob_id")?),
        file_key: FileKey::parse(&key).ok_or_else(|| StoreError::Corrupt("file key".into()))?,
        length: length.map(unsigned).transpose()?,
        offset: unsigned(offset)?,
        metadata: row.try_get("metadata").map_err(store_error)?,
        name: FileName::from_trusted(row.try_get("name").map_err(store_error)?),
        content_type: row.try_get("content_type").map_err(store_error)?,
        visibility: Visibility::parse(&visibility)
            .ok_or_else(|| StoreError::Corrupt(format!("visibility {visibility}")))?,
        store_state: row.try_get("store_state").map_err(store_error)?,
        hash_state: row.try_get("hash_state").map_err(store_error)?,
        completed: row.try_get("completed").map_err(store_error)?,
        created_at: from_micros(row.try_get("created_at").map_err(store_error)?)?,
        expires_at: from_micros(row.try_get("expires_at").map_err(store_error)?)?,
    })
}

#[async_trait]
impl UploadStore for PostgresStore {
    async fn create_upload(&self, s: &UploadSession, max_open: u32, now: OffsetDateTime) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        // The owner's row lock serialises creates of one user (and of their links) across nodes, so the count
        // below stays true until the insert commits. The scope counted is the link's sessions for a link upload,
        // else the owner's own ones.
        sqlx::query("SELECT 1 FROM users WHERE id = $1::uuid FOR UPDATE")
            .bind(s.owner.0.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?;
        let (scope, scope_id) = match s.upload_link {
            Some(link) => ("upload_link_id = $1::uuid", link.0.to_string()),
            None => ("owner_id = $1::uuid AND upload_link_id IS NULL", s.owner.0.to_string()),
        };
        let count =
            format!("SELECT COUNT(*) AS n FROM upload_sessions WHERE {scope} AND NOT completed AND expires_at > $2");
        let open: i64 = sqlx::query(sqlx::AssertSqlSafe(count))
            .bind(scope_id)
            .bind(micros(now))
            .fetch_one(&mut *tx)
            .await
            .map_err(store_error)?
            .try_get("n")
            .map_err(store_error)?;
        if open >= i64::from(max_open) {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO upload_sessions (id, owner_id, blob_id, file_key, upload_length, upload_offset, metadata, \
             name, content_type, visibility, store_state, hash_state, completed, created_at, expires_at, team_id, \
             upload_link_id)
             VALUES ($1, $2::uuid, $3::uuid, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16::uuid, $17::uuid)",
        )
        .bind(s.id.as_str())
        .bind(s.owner.0.to_string())
        .bind(s.blob.0.to_string())
        .bind(s.file_key.as_str())
        .bind(s.length.map(size_i64).transpose()?)
        .bind(size_i64(s.offset)?)
        .bind(&s.metadata)
        .bind(s.name.as_str())
        .bind(&s.content_type)
        .bind(s.visibility.as_str())
        .bind(&s.store_state)
        .bind(&s.hash_state)
        .bind(s.completed)
        .bind(micros(s.created_at))
        .bind(micros(s.expires_at))
        .bind(s.team.map(|t| t.0.to_string()))
        .bind(s.upload_link.map(|l| l.0.to_string()))
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(true)
    }

    async fn upload_by_id(&self, id: &UploadId) -> StoreResult<Option<UploadSession>> {
        let sql = format!("SELECT {COLUMNS} FROM upload_sessions WHERE id = $1");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?
            .map(|row| session_from_row(&row))
            .transpose()
    }

    async fn lease_upload(
        &self,
        id: &UploadId,
        token: &LeaseToken,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> StoreResult<Option<UploadSession>> {
        let sql = format!(
            "UPDATE upload_sessions SET lease_token = $1, lease_until = $2
             WHERE id = $3 AND NOT completed AND expires_at > $4 AND (lease_until IS NULL OR lease_until <= $4)
             RETURNING {COLUMNS}"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(token.as_str())
            .bind(micros(until))
            .bind(id.as_str())
            .bind(micros(now))
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?
            .map(|row| session_from_row(&row))
            .transpose()
    }

    async fn renew_upload_lease(&self, id: &UploadId, token: &LeaseToken, until: OffsetDateTime) -> StoreResult<bool> {
        let done = sqlx::query("UPDATE upload_sessions SET lease_until = $1 WHERE id = $2 AND lease_token = $3")
            .bind(micros(until))
            .bind(id.as_str())
            .bind(token.as_str())
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(done.rows_affected() == 1)
    }

    async fn record_upload_progress(&self, id: &UploadId, token: &LeaseToken, p: &UploadProgress) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE upload_sessions SET upload_offset = $1, upload_length = $2, store_state = $3, hash_state = $4,
             expires_at = $5 WHERE id = $6 AND lease_token = $7 AND NOT completed",
        )
        .bind(size_i64(p.offset)?)
        .bind(p.length.map(size_i64).transpose()?)
        .bind(&p.store_state)
        .bind(&p.hash_state)
        .bind(micros(p.expires_at))
        .bind(id.as_str())
        .bind(token.as_str())
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_upload(&self, id: &UploadId, token: &LeaseToken) -> StoreResult<()> {
        sqlx::query(
            "UPDATE upload_sessions SET lease_token = NULL, lease_until = NULL WHERE id = $1 AND lease_token = $2",
        )
        .bind(id.as_str())
        .bind(token.as_str())
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn complete_upload(&self, id: &UploadId, token: &LeaseToken) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE upload_sessions SET completed = TRUE, store_state = '', hash_state = '\\x', lease_token = NULL,
             lease_until = NULL WHERE id = $1 AND lease_token = $2",
        )
        .bind(id.as_str())
        .bind(token.as_str())
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_upload(&self, id: &UploadId, token: Option<&LeaseToken>) -> StoreResult<bool> {
        let query = match token {
            Some(token) => sqlx::query("DELETE FROM upload_sessions WHERE id = $1 AND lease_token = $2")
                .bind(id.as_str())
                .bind(token.as_str()),
            None => sqlx::query("DELETE FROM upload_sessions WHERE id = $1 AND completed").bind(id.as_str()),
        };
        let done = query.execute(&self.pool).await.map_err(store_error)?;
        Ok(done.rows_affected() == 1)
    }

    async fn expired_uploads(&self, now: OffsetDateTime, limit: u32) -> StoreResult<Vec<UploadSession>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM upload_sessions
             WHERE expires_at <= $1 AND (lease_until IS NULL OR lease_until <= $1) ORDER BY expires_at LIMIT $2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(micros(now))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        rows.iter().map(session_from_row).collect()
    }

    async fn delete_expired_upload(&self, id: &UploadId, now: OffsetDateTime) -> StoreResult<bool> {
        let done = sqlx::query(
            "DELETE FROM upload_sessions
             WHERE id = $1 AND expires_at <= $2 AND (lease_until IS NULL OR lease_until <= $2)",
        )
        .bind(id.as_str())
        .bind(micros(now))
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected() == 1)
    }

    async fn blob_in_open_upload(&self, blob: BlobId) -> StoreResult<bool> {
        let row = sqlx::query(
            "SELECT EXISTS (SELECT 1 FROM upload_sessions WHERE blob_id = $1::uuid AND NOT completed) AS open",
        )
        .bind(blob.0.to_string())
        .fetch_one(&self.pool)
        .await
        .map_err(store_error)?;
        row.try_get("open").map_err(store_error)
    }

    async fn open_upload_bytes(&self, account: Account) -> StoreResult<u64> {
        let (scope, id) = match account {
            Account::User(user) => ("owner_id = $1::uuid AND team_id IS NULL", user.0.to_string()),
            Account::Team(team) => ("team_id = $1::uuid", team.0.to_string()),
        };
        let sql = format!(
            "SELECT COALESCE(SUM(COALESCE(upload_length, upload_offset)), 0)::BIGINT AS total FROM upload_sessions
             WHERE {scope} AND NOT completed"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .map_err(store_error)?;
        let total: i64 = row.try_get("total").map_err(store_error)?;
        u64::try_from(total).map_err(|_| StoreError::Corrupt("negative total".into()))
    }

    async fn open_link_uploads(&self, link: UploadLinkId, now: OffsetDateTime) -> StoreResult<LinkReservation> {
        let row = sqlx::query(
            "SELECT COUNT(*)::BIGINT AS files, COALESCE(SUM(COALESCE(upload_length, upload_offset)), 0)::BIGINT AS bytes
             FROM upload_sessions WHERE upload_link_id = $1::uuid AND NOT completed AND expires_at > $2",
        )
        .bind(link.0.to_string())
        .bind(micros(now))
        .fetch_one(&self.pool)
        .await
        .map_err(store_error)?;
        let unsigned = |column: &str| -> StoreResult<u64> {
            let v: i64 = row.try_get(column).map_err(store_error)?;
            u64::try_from(v).map_err(|_| StoreError::Corrupt("negative total".into()))
        };
        Ok(LinkReservation {
            files: unsigned("files")?,
            bytes: unsigned("bytes")?,
        })
    }
}
