//! [`IdentityStore`] on SQLite: external identities and API tokens (tables of `0004_identity.sql`).

use async_trait::async_trait;
use handoff_core::{
    ApiTokenRecord, ApiTokenScope, IdentityStore, NewApiToken, NewExternalUser, StoreError, StoreResult, User, UserId,
};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{SqliteStore, USER_COLUMNS, text_uuid, user_from_row};
use crate::{from_micros, micros, store_error};

/// `last_used_at` is written only when older than this, so a busy token costs one write a minute, not one per
/// request.
const TOUCH_INTERVAL_MICROS: i64 = 60_000_000;

const TOKEN_COLUMNS: &str = "t.id AS t_id, t.user_id AS t_user_id, t.name AS t_name, t.scope AS t_scope, \
                             t.created_at AS t_created_at, t.expires_at AS t_expires_at, \
                             t.last_used_at AS t_last_used_at";

fn token_from_row(row: &SqliteRow) -> StoreResult<ApiTokenRecord> {
    let scope: String = row.try_get("t_scope").map_err(store_error)?;
    let last_used: Option<i64> = row.try_get("t_last_used_at").map_err(store_error)?;
    Ok(ApiTokenRecord {
        id: text_uuid(row, "t_id")?,
        user: UserId(text_uuid(row, "t_user_id")?),
        name: row.try_get("t_name").map_err(store_error)?,
        scope: ApiTokenScope::parse(&scope).ok_or_else(|| StoreError::Corrupt(format!("token scope {scope}")))?,
        created_at: from_micros(row.try_get("t_created_at").map_err(store_error)?)?,
        expires_at: from_micros(row.try_get("t_expires_at").map_err(store_error)?)?,
        last_used_at: last_used.map(from_micros).transpose()?,
    })
}

#[async_trait]
impl IdentityStore for SqliteStore {
    async fn user_by_identity(&self, issuer: &str, subject: &str) -> StoreResult<Option<User>> {
        let columns = USER_COLUMNS
            .split(", ")
            .map(|c| format!("u.{c} AS {c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {columns} FROM external_identities i JOIN users u ON u.id = i.user_id
             WHERE i.issuer = ? AND i.subject = ?"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(issuer)
            .bind(subject)
            .fetch_optional(&self.reader)
            .await
            .map_err(store_error)?
            .map(|row| user_from_row(&row))
            .transpose()
    }

    async fn create_external_user(&self, new: &NewExternalUser) -> StoreResult<User> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(store_error)?;
        let linked = sqlx::query("SELECT 1 FROM external_identities WHERE issuer = ? AND subject = ?")
            .bind(&new.issuer)
            .bind(&new.subject)
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?;
        if linked.is_some() {
            return Err(StoreError::Conflict);
        }
        let mut free = None;
        for candidate in &new.usernames {
            let taken = sqlx::query("SELECT 1 FROM users WHERE username = ?")
                .bind(candidate.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(store_error)?;
            if taken.is_none() {
                free = Some(candidate.clone());
                break;
            }
        }
        let username = free.ok_or(StoreError::Conflict)?;
        let user = User {
            id: UserId::generate(),
            username,
            email: new.email.clone(),
            password_hash: None,
            is_admin: new.is_admin,
            disabled: false,
            created_at: handoff_core::now(),
        };
        sqlx::query(
            "INSERT INTO users (id, username, email, password_hash, is_admin, disabled, created_at)
             VALUES (?, ?, ?, NULL, ?, 0, ?)",
        )
        .bind(user.id.0.to_string())
        .bind(user.username.as_str())
        .bind(user.email.as_deref())
        .bind(user.is_admin)
        .bind(micros(user.created_at))
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        sqlx::query("INSERT INTO external_identities (issuer, subject, user_id, created_at) VALUES (?, ?, ?, ?)")
            .bind(&new.issuer)
            .bind(&new.subject)
            .bind(user.id.0.to_string())
            .bind(micros(user.created_at))
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(user)
    }

    async fn update_external_profile(
        &self,
        user: UserId,
        email: Option<&str>,
        is_admin: Option<bool>,
    ) -> StoreResult<()> {
        sqlx::query("UPDATE users SET email = ?, is_admin = COALESCE(?, is_admin) WHERE id = ?")
            .bind(email)
            .bind(is_admin)
            .bind(user.0.to_string())
            .execute(&self.writer)
            .await
            .map_err(store_error)?;
        self.user_changed(user);
        Ok(())
    }

    async fn insert_api_token(&self, token: &NewApiToken, max_per_user: u32) -> StoreResult<bool> {
        let record = &token.record;
        // One statement on the single writer connection: the count and the insert cannot interleave with another.
        let inserted = sqlx::query(
            "INSERT INTO api_tokens (id, user_id, name, hash, scope, created_at, expires_at, last_used_at)
             SELECT ?, ?, ?, ?, ?, ?, ?, NULL
             WHERE (SELECT COUNT(*) FROM api_tokens WHERE user_id = ?) < ?",
        )
        .bind(record.id.to_string())
        .bind(record.user.0.to_string())
        .bind(&record.name)
        .bind(&token.hash[..])
        .bind(record.scope.as_str())
        .bind(micros(record.created_at))
        .bind(micros(record.expires_at))
        .bind(record.user.0.to_string())
        .bind(i64::from(max_per_user))
        .execute(&self.writer)
        .await
        .map_err(store_error)?;
        Ok(inserted.rows_affected() == 1)
    }

    async fn api_tokens(&self, user: UserId) -> StoreResult<Vec<ApiTokenRecord>> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens t WHERE t.user_id = ? ORDER BY t.created_at, t.id");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user.0.to_string())
            .fetch_all(&self.reader)
            .await
            .map_err(store_error)?
            .iter()
            .map(token_from_row)
            .collect()
    }

    async fn api_token_by_hash(
        &self,
        hash: &[u8; 32],
        now: OffsetDateTime,
    ) -> StoreResult<Option<(ApiTokenRecord, User)>> {
        let columns = USER_COLUMNS
            .split(", ")
            .map(|c| format!("u.{c} AS {c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {TOKEN_COLUMNS}, {columns} FROM api_tokens t JOIN users u ON u.id = t.user_id
             WHERE t.hash = ? AND t.expires_at > ?"
        );
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&hash[..])
            .bind(micros(now))
            .fetch_optional(&self.reader)
            .await
            .map_err(store_error)?
        else {
            return Ok(None);
        };
        let token = token_from_row(&row)?;
        let user = user_from_row(&row)?;
        if token
            .last_used_at
            .is_none_or(|t| micros(now) - micros(t) >= TOUCH_INTERVAL_MICROS)
        {
            // Best effort: a failed bookkeeping write must not fail the request it accompanies.
            let _ = sqlx::query("UPDATE api_tokens SET last_used_at = ? WHERE id = ?")
                .bind(micros(now))
                .bind(token.id.to_string())
                .execute(&self.writer)
                .await;
        }
        Ok(Some((token, user)))
    }

    async fn external_identity_of(&self, user: UserId) -> StoreResult<Option<(String, String)>> {
        self.identity_of(user).await
    }

    async fn import_external_identity(&self, issuer: &str, subject: &str, user: UserId) -> StoreResult<bool> {
        self.link_identity(issuer, subject, user).await
    }

    async fn export_api_tokens(&self, user: UserId) -> StoreResult<Vec<NewApiToken>> {
        self.tokens_with_hashes(user).await
    }

    async fn import_api_token(&self, token: &NewApiToken) -> StoreResult<bool> {
        self.insert_exported_token(token).await
    }

    async fn delete_api_token(&self, user: UserId, id: Uuid) -> StoreResult<bool> {
        let deleted = sqlx::query("DELETE FROM api_tokens WHERE id = ? AND user_id = ?")
            .bind(id.to_string())
            .bind(user.0.to_string())
            .execute(&self.writer)
            .await
            .map_err(store_error)?;
        Ok(deleted.rows_affected() == 1)
    }
}

/// Export and import (`migrate-storage`), delegated from `impl IdentityStore` above.
impl SqliteStore {
    pub(super) async fn identity_of(&self, user: UserId) -> StoreResult<Option<(String, String)>> {
        let row = sqlx::query("SELECT issuer, subject FROM external_identities WHERE user_id = ?")
            .bind(user.0.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(store_error)?;
        row.map(|r| {
            Ok((
                r.try_get("issuer").map_err(store_error)?,
                r.try_get("subject").map_err(store_error)?,
            ))
        })
        .transpose()
    }

    pub(super) async fn link_identity(&self, issuer: &str, subject: &str, user: UserId) -> StoreResult<bool> {
        let done = sqlx::query(
            "INSERT INTO external_identities (issuer, subject, user_id, created_at) VALUES (?, ?, ?, ?)
             ON CONFLICT DO NOTHING",
        )
        .bind(issuer)
        .bind(subject)
        .bind(user.0.to_string())
        .bind(micros(handoff_core::now()))
        .execute(&self.writer)
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected() == 1)
    }

    pub(super) async fn tokens_with_hashes(&self, user: UserId) -> StoreResult<Vec<NewApiToken>> {
        let sql = format!("SELECT {TOKEN_COLUMNS}, t.hash AS t_hash FROM api_tokens t WHERE t.user_id = ?");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user.0.to_string())
            .fetch_all(&self.reader)
            .await
            .map_err(store_error)?;
        rows.iter()
            .map(|row| {
                let hash: Vec<u8> = row.try_get("t_hash").map_err(store_error)?;
                Ok(NewApiToken {
                    record: token_from_row(row)?,
                    hash: hash
                        .try_into()
                        .map_err(|_| StoreError::Corrupt("token hash length".into()))?,
                })
            })
            .collect()
    }

    pub(super) async fn insert_exported_token(&self, token: &NewApiToken) -> StoreResult<bool> {
        let r = &token.record;
        let done = sqlx::query(
            "INSERT INTO api_tokens (id, user_id, name, hash, scope, created_at, expires_at, last_used_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
        )
        .bind(r.id.to_string())
        .bind(r.user.0.to_string())
        .bind(&r.name)
        .bind(&token.hash[..])
        .bind(r.scope.as_str())
        .bind(micros(r.created_at))
        .bind(micros(r.expires_at))
        .bind(r.last_used_at.map(micros))
        .execute(&self.writer)
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected() == 1)
    }
}
