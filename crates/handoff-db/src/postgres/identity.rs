//! [`IdentityStore`] on PostgreSQL: external identities and API tokens (tables of `0004_identity.sql`). Races
//! between nodes end in a unique violation (`Conflict`) or wait on a row lock, never in a duplicate.

use async_trait::async_trait;
use handoff_core::{
    ApiTokenRecord, ApiTokenScope, IdentityStore, NewApiToken, NewExternalUser, StoreError, StoreResult, User, UserId,
};
use sqlx::Row;
use sqlx::postgres::PgRow;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{PostgresStore, text_uuid, user_from_row};
use crate::{from_micros, micros, store_error};

/// `last_used_at` is written only when older than this, so a busy token costs one write a minute, not one per
/// request.
const TOUCH_INTERVAL_MICROS: i64 = 60_000_000;

const TOKEN_COLUMNS: &str = "t.id::text AS t_id, t.user_id::text AS t_user_id, t.name AS t_name, \
                             t.scope AS t_scope, t.created_at AS t_created_at, t.expires_at AS t_expires_at, \
                             t.last_used_at AS t_last_used_at";
const JOINED_USER_COLUMNS: &str = "u.id::text AS id, u.username, u.email, u.password_hash, u.is_admin, \
                                   u.disabled, u.created_at";

fn token_from_row(row: &PgRow) -> StoreResult<ApiTokenRecord> {
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
impl IdentityStore for PostgresStore {
    async fn user_by_identity(&self, issuer: &str, subject: &str) -> StoreResult<Option<User>> {
        let sql = format!(
            "SELECT {JOINED_USER_COLUMNS} FROM external_identities i JOIN users u ON u.id = i.user_id
             WHERE i.issuer = $1 AND i.subject = $2"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(issuer)
            .bind(subject)
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?
            .map(|row| user_from_row(&row))
            .transpose()
    }

    async fn create_external_user(&self, new: &NewExternalUser) -> StoreResult<User> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        let linked = sqlx::query("SELECT 1 FROM external_identities WHERE issuer = $1 AND subject = $2")
            .bind(&new.issuer)
            .bind(&new.subject)
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?;
        if linked.is_some() {
            return Err(StoreError::Conflict);
        }
        let names: Vec<&str> = new.usernames.iter().map(|u| u.as_str()).collect();
        let taken: Vec<String> = sqlx::query_scalar("SELECT username FROM users WHERE username = ANY($1)")
            .bind(&names)
            .fetch_all(&mut *tx)
            .await
            .map_err(store_error)?;
        let username = new
            .usernames
            .iter()
            .find(|u| !taken.iter().any(|t| t == u.as_str()))
            .cloned()
            .ok_or(StoreError::Conflict)?;
        let user = User {
            id: UserId::generate(),
            username,
            email: new.email.clone(),
            password_hash: None,
            is_admin: new.is_admin,
            disabled: false,
            created_at: handoff_core::now(),
        };
        // A node racing us to the same name or identity makes one of these inserts fail as `Conflict`; the caller
        // re-reads the identity and tries again.
        sqlx::query(
            "INSERT INTO users (id, username, email, password_hash, is_admin, disabled, created_at)
             VALUES ($1::uuid, $2, $3, NULL, $4, FALSE, $5)",
        )
        .bind(user.id.0.to_string())
        .bind(user.username.as_str())
        .bind(user.email.as_deref())
        .bind(user.is_admin)
        .bind(micros(user.created_at))
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        sqlx::query(
            "INSERT INTO external_identities (issuer, subject, user_id, created_at) VALUES ($1, $2, $3::uuid, $4)",
        )
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
        sqlx::query("UPDATE users SET email = $1, is_admin = COALESCE($2, is_admin) WHERE id = $3::uuid")
            .bind(email)
            .bind(is_admin)
            .bind(user.0.to_string())
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn insert_api_token(&self, token: &NewApiToken, max_per_user: u32) -> StoreResult<bool> {
        let record = &token.record;
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        // The owner's row lock serialises token creation per user across nodes, so the count below stays true
        // until the insert commits.
        let owner = sqlx::query("SELECT 1 FROM users WHERE id = $1::uuid FOR UPDATE")
            .bind(record.user.0.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?;
        if owner.is_none() {
            return Err(StoreError::NotFound);
        }
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_tokens WHERE user_id = $1::uuid")
            .bind(record.user.0.to_string())
            .fetch_one(&mut *tx)
            .await
            .map_err(store_error)?;
        if count >= i64::from(max_per_user) {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO api_tokens (id, user_id, name, hash, scope, created_at, expires_at, last_used_at)
             VALUES ($1::uuid, $2::uuid, $3, $4, $5, $6, $7, NULL)",
        )
        .bind(record.id.to_string())
        .bind(record.user.0.to_string())
        .bind(&record.name)
        .bind(&token.hash[..])
        .bind(record.scope.as_str())
        .bind(micros(record.created_at))
        .bind(micros(record.expires_at))
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(true)
    }

    async fn api_tokens(&self, user: UserId) -> StoreResult<Vec<ApiTokenRecord>> {
        let sql =
            format!("SELECT {TOKEN_COLUMNS} FROM api_tokens t WHERE t.user_id = $1::uuid ORDER BY t.created_at, t.id");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user.0.to_string())
            .fetch_all(&self.pool)
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
        let sql = format!(
            "SELECT {TOKEN_COLUMNS}, {JOINED_USER_COLUMNS} FROM api_tokens t JOIN users u ON u.id = t.user_id
             WHERE t.hash = $1 AND t.expires_at > $2"
        );
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&hash[..])
            .bind(micros(now))
            .fetch_optional(&self.pool)
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
            let _ = sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2::uuid")
                .bind(micros(now))
                .bind(token.id.to_string())
                .execute(&self.pool)
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
        let deleted = sqlx::query("DELETE FROM api_tokens WHERE id = $1::uuid AND user_id = $2::uuid")
            .bind(id.to_string())
            .bind(user.0.to_string())
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(deleted.rows_affected() == 1)
    }
}

/// Export and import (`migrate-storage`), delegated from `impl IdentityStore` above.
impl PostgresStore {
    pub(super) async fn identity_of(&self, user: UserId) -> StoreResult<Option<(String, String)>> {
        let row = sqlx::query("SELECT issuer, subject FROM external_identities WHERE user_id = $1::uuid")
            .bind(user.0.to_string())
            .fetch_optional(&self.pool)
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
            "INSERT INTO external_identities (issuer, subject, user_id, created_at) VALUES ($1, $2, $3::uuid, $4)
             ON CONFLICT DO NOTHING",
        )
        .bind(issuer)
        .bind(subject)
        .bind(user.0.to_string())
        .bind(micros(handoff_core::now()))
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected() == 1)
    }

    pub(super) async fn tokens_with_hashes(&self, user: UserId) -> StoreResult<Vec<NewApiToken>> {
        let sql = format!("SELECT {TOKEN_COLUMNS}, t.hash AS t_hash FROM api_tokens t WHERE t.user_id = $1::uuid");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user.0.to_string())
            .fetch_all(&self.pool)
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
             VALUES ($1::uuid, $2::uuid, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING",
        )
        .bind(r.id.to_string())
        .bind(r.user.0.to_string())
        .bind(&r.name)
        .bind(&token.hash[..])
        .bind(r.scope.as_str())
        .bind(micros(r.created_at))
        .bind(micros(r.expires_at))
        .bind(r.last_used_at.map(micros))
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected() == 1)
    }
}
