//! [`UploadStore`] on SQLite. Every write is one statement on the single writer connection, so each
//! conditional update (take the lease, record progress under it) is atomic without a transaction.

use async_trait::async_trait;
use handoff_core::{
    Account, BlobId, FileKey, FileName, LeaseToken, LinkReservation, StoreError, StoreResult, TeamId, UploadId,
    UploadLinkId, UploadProgress, UploadSession, UploadStore, UserId, Visibility,
};
use sqlx::Row as _;
use sqlx::sqlite::SqliteRow;
use time::OffsetDateTime;

use super::{SqliteStore, optional_uuid, size_i64, text_uuid};
use crate::{from_micros, micros, store_error};

const COLUMNS: &str = "id, owner_id, blob_id, file_key, upload_length, upload_offset, metadata, name, content_type, \
                       visibility, store_state, hash_state, completed, created_at, expires_at, team_id, \
                       upload_link_id";

fn session_from_row(row: &SqliteRow) -> StoreResult<UploadSession> {
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
impl UploadStore for SqliteStore {
    async fn create_upload(&self, s: &UploadSession, max_open: u32, now: OffsetDateTime) -> StoreResult<bool> {
        // One statement on the single writer: the count and the insert cannot interleave with another create.
        // The scope counted is the link's sessions for a link upload, else the owner's own ones.
        let scope = match s.upload_link {
            Some(_) => "upload_link_id = ?",
            None => "owner_id = ? AND upload_link_id IS NULL",
        };
        let sql = format!(
            "INSERT INTO upload_sessions ({COLUMNS})
             SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?
             WHERE (SELECT COUNT(*) FROM upload_sessions
                    WHERE {scope} AND completed = 0 AND expires_at > ?) < ?"
        );
        let scope_id = match s.upload_link {
            Some(link) => link.0.to_string(),
            None => s.owner.0.to_string(),
        };
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
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
            .bind(scope_id)
            .bind(micros(now))
            .bind(i64::from(max_open))
            .execute(&self.writer)
            .await
            .map_err(store_error)?;
        Ok(done.rows_affected() == 1)
    }

    async fn upload_by_id(&self, id: &UploadId) -> StoreResult<Option<UploadSession>> {
        let sql = format!("SELECT {COLUMNS} FROM upload_sessions WHERE id = ?");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.as_str())
            .fetch_optional(&self.reader)
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
            "UPDATE upload_sessions SET lease_token = ?, lease_until = ?
             WHERE id = ? AND completed = 0 AND expires_at > ? AND (lease_until IS NULL OR lease_until <= ?)
             RETURNING {COLUMNS}"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(token.as_str())
            .bind(micros(until))
            .bind(id.as_str())
            .bind(micros(now))
            .bind(micros(now))
            .fetch_optional(&self.writer)
            .await
            .map_err(store_error)?
            .map(|row| session_from_row(&row))
            .transpose()
    }

    async fn renew_upload_lease(&self, id: &UploadId, token: &LeaseToken, until: OffsetDateTime) -> StoreResult<bool> {
        let done = sqlx::query("UPDATE upload_sessions SET lease_until = ? WHERE id = ? AND lease_token = ?")
            .bind(micros(until))
            .bind(id.as_str())
            .bind(token.as_str())
            .execute(&self.writer)
            .await
            .map_err(store_error)?;
        Ok(done.rows_affected() == 1)
    }

    async fn record_upload_progress(&self, id: &UploadId, token: &LeaseToken, p: &UploadProgress) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE upload_sessions SET upload_offset = ?, upload_length = ?, store_state = ?, hash_state = ?,
             expires_at = ? WHERE id = ? AND lease_token = ? AND completed = 0",
        )
        .bind(size_i64(p.offset)?)
        .bind(p.length.map(size_i64).transpose()?)
        .bind(&p.store_state)
        .bind(&p.hash_state)
        .bind(micros(p.expires_at))
        .bind(id.as_str())
        .bind(token.as_str())
        .execute(&self.writer)
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_upload(&self, id: &UploadId, token: &LeaseToken) -> StoreResult<()> {
        sqlx::query(
            "UPDATE upload_sessions SET lease_token = NULL, lease_until = NULL WHERE id = ? AND lease_token = ?",
        )
        .bind(id.as_str())
        .bind(token.as_str())
        .execute(&self.writer)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn complete_upload(&self, id: &UploadId, token: &LeaseToken) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE upload_sessions SET completed = 1, store_state = '', hash_state = X'', lease_token = NULL,
             lease_until = NULL WHERE id = ? AND lease_token = ?",
        )
        .bind(id.as_str())
        .bind(token.as_str())
        .execute(&self.writer)
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_upload(&self, id: &UploadId, token: Option<&LeaseToken>) -> StoreResult<bool> {
        let query = match token {
            Some(token) => sqlx::query("DELETE FROM upload_sessions WHERE id = ? AND lease_token = ?")
                .bind(id.as_str())
                .bind(token.as_str()),
            None => sqlx::query("DELETE FROM upload_sessions WHERE id = ? AND completed = 1").bind(id.as_str()),
        };
        let done = query.execute(&self.writer).await.map_err(store_error)?;
        Ok(done.rows_affected() == 1)
    }

    async fn expired_uploads(&self, now: OffsetDateTime, limit: u32) -> StoreResult<Vec<UploadSession>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM upload_sessions
             WHERE expires_at <= ? AND (lease_until IS NULL OR lease_until <= ?) ORDER BY expires_at LIMIT ?"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(micros(now))
            .bind(micros(now))
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await
            .map_err(store_error)?;
        rows.iter().map(session_from_row).collect()
    }

    async fn delete_expired_upload(&self, id: &UploadId, now: OffsetDateTime) -> StoreResult<bool> {
        let done = sqlx::query(
            "DELETE FROM upload_sessions
             WHERE id = ? AND expires_at <= ? AND (lease_until IS NULL OR lease_until <= ?)",
        )
        .bind(id.as_str())
        .bind(micros(now))
        .bind(micros(now))
        .execute(&self.writer)
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected() == 1)
    }

    async fn blob_in_open_upload(&self, blob: BlobId) -> StoreResult<bool> {
        let row =
            sqlx::query("SELECT EXISTS (SELECT 1 FROM upload_sessions WHERE blob_id = ? AND completed = 0) AS open")
                .bind(blob.0.to_string())
                .fetch_one(&self.reader)
                .await
                .map_err(store_error)?;
        row.try_get("open").map_err(store_error)
    }

    async fn open_upload_bytes(&self, account: Account) -> StoreResult<u64> {
        let (scope, id) = match account {
            Account::User(user) => ("owner_id = ? AND team_id IS NULL", user.0.to_string()),
            Account::Team(team) => ("team_id = ?", team.0.to_string()),
        };
        let sql = format!(
            "SELECT COALESCE(SUM(COALESCE(upload_length, upload_offset)), 0) AS total FROM upload_sessions
             WHERE {scope} AND completed = 0"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_one(&self.reader)
            .await
            .map_err(store_error)?;
        let total: i64 = row.try_get("total").map_err(store_error)?;
        u64::try_from(total).map_err(|_| StoreError::Corrupt("negative total".into()))
    }

    async fn open_link_uploads(&self, link: UploadLinkId, now: OffsetDateTime) -> StoreResult<LinkReservation> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS files, COALESCE(SUM(COALESCE(upload_length, upload_offset)), 0) AS bytes
             FROM upload_sessions WHERE upload_link_id = ? AND completed = 0 AND expires_at > ?",
        )
        .bind(link.0.to_string())
        .bind(micros(now))
        .fetch_one(&self.reader)
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
