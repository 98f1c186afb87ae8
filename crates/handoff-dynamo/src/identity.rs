//! [`IdentityStore`] on DynamoDB: external identities (a claim item per `(issuer, subject)`, plus the pair on the
//! account item so each account has at most one) and API tokens (the record in the owner's partition, a claim
//! item per hash, and a per-account count that the insert's condition bounds).

use async_trait::async_trait;
use aws_sdk_dynamodb::types::ReturnValue;
use handoff_core::{
    ApiTokenRecord, ApiTokenScope, IdentityStore, NewApiToken, NewExternalUser, StoreError, StoreResult, User, UserId,
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::client::{ATTEMPTS, DynamoStore, Query, SkCondition, backoff, conditional, contended};
use crate::core::{delete, put, put_new, update, user_from, user_item, user_pk, values};
use crate::item::{Item, ItemBuilder, Row, hash_hex, key, micros, n, s, time};

/// `last_used_at` is written only when older than this, so a busy token costs one write a minute.
const TOUCH_INTERVAL_MICROS: i64 = 60_000_000;

/// The claim of an external identity. The issuer's length keeps `(issuer, subject)` pairs apart whatever they
/// contain.
fn identity_pk(issuer: &str, subject: &str) -> String {
    format!("EXTID#{}#{issuer}{subject}", issuer.len())
}

fn token_sk(id: Uuid) -> String {
    format!("APITOKEN#{id}")
}

fn token_item(token: &NewApiToken) -> Item {
    let r = &token.record;
    ItemBuilder::new(user_pk(r.user), token_sk(r.id))
        .str("token_id", r.id.to_string())
        .str("user_id", r.user.to_string())
        .str("token_name", r.name.as_str())
        .bytes("token_hash", &token.hash)
        .str("token_scope", r.scope.as_str())
        .at("created_at", r.created_at)
        .at("expires_at", r.expires_at)
        .opt_at("last_used_at", r.last_used_at)
        .build()
}

fn token_claim(token: &NewApiToken) -> Item {
    ItemBuilder::new(format!("APITOK#{}", hash_hex(&token.hash)), "APITOK")
        .str("user_id", token.record.user.to_string())
        .str("token_id", token.record.id.to_string())
        .build()
}

fn token_from(item: &Item) -> StoreResult<NewApiToken> {
    let r = Row(item);
    let scope = r.str("token_scope")?;
    Ok(NewApiToken {
        record: ApiTokenRecord {
            id: r.uuid("token_id")?,
            user: UserId(r.uuid("user_id")?),
            name: r.str("token_name")?.to_owned(),
            scope: ApiTokenScope::parse(scope).ok_or_else(|| StoreError::Corrupt(format!("token scope {scope}")))?,
            created_at: r.time("created_at")?,
            expires_at: r.time("expires_at")?,
            last_used_at: r.opt_time("last_used_at")?,
        },
        hash: r
            .bytes("token_hash")?
            .try_into()
            .map_err(|_| StoreError::Corrupt("token hash length".into()))?,
    })
}

impl DynamoStore {
    async fn tokens_of(&self, user: UserId) -> StoreResult<Vec<NewApiToken>> {
        let items = self
            .query(Query::table(user_pk(user)).sk(SkCondition::BeginsWith("APITOKEN#".into())))
            .await?;
        let mut tokens = items.iter().map(token_from).collect::<StoreResult<Vec<_>>>()?;
        tokens.sort_by_key(|t| (t.record.created_at, t.record.id));
        Ok(tokens)
    }

    /// Writes a token with its hash claim, counting it on the account; `limit` bounds the count in the same
    /// transaction. `Ok(false)` when the limit (or, for imports, the id) refused it.
    async fn store_token(&self, token: &NewApiToken, limit: Option<u32>) -> StoreResult<bool> {
        let (condition, vals) = match limit {
            Some(max) => (
                "attribute_exists(PK) AND (attribute_not_exists(api_token_count) OR api_token_count < :max)",
                values([(":one", n(1)), (":max", n(max))]),
            ),
            None => ("attribute_exists(PK)", values([(":one", n(1))])),
        };
        for attempt in 0..ATTEMPTS {
            let tx = self
                .transact(vec![
                    update(
                        &self.table,
                        user_pk(token.record.user),
                        "USER",
                        "ADD api_token_count :one",
                        Some(condition),
                        vals.clone(),
                    )?,
                    put_new(&self.table, token_item(token))?,
                    put_new(&self.table, token_claim(token))?,
                ])
                .await?;
            if tx.done() {
                return Ok(true);
            }
            if tx.failed(1) && limit.is_none() {
                return Ok(false);
            }
            if tx.failed(1) || tx.failed(2) {
                return Err(StoreError::Conflict);
            }
            if tx.failed(0) {
                return match limit {
                    Some(_) => Ok(false),
                    None => Err(StoreError::NotFound),
                };
            }
            backoff(attempt).await;
        }
        Err(contended("storing an API token"))
    }
}

#[async_trait]
impl IdentityStore for DynamoStore {
    async fn user_by_identity(&self, issuer: &str, subject: &str) -> StoreResult<Option<User>> {
        let Some(claim) = self.get(identity_pk(issuer, subject), "EXTID").await? else {
            return Ok(None);
        };
        let id = UserId(Row(&claim).uuid("user_id")?);
        self.get(user_pk(id), "USER").await?.as_ref().map(user_from).transpose()
    }

    async fn create_external_user(&self, new: &NewExternalUser) -> StoreResult<User> {
        let claim_pk = identity_pk(&new.issuer, &new.subject);
        if self.get(claim_pk.as_str(), "EXTID").await?.is_some() {
            return Err(StoreError::Conflict);
        }
        let mut candidates = new.usernames.iter();
        let mut username = candidates.next().ok_or(StoreError::Conflict)?;
        for attempt in 0..ATTEMPTS * 2 {
            let user = User {
                id: UserId::generate(),
                username: username.clone(),
                email: new.email.clone(),
                password_hash: None,
                is_admin: new.is_admin,
                disabled: false,
                created_at: handoff_core::now(),
            };
            let mut account = user_item(&user);
            account.insert("ext_issuer".into(), s(new.issuer.as_str()));
            account.insert("ext_subject".into(), s(new.subject.as_str()));
            let tx = self
                .transact(vec![
                    put_new(
                        &self.table,
                        ItemBuilder::new(claim_pk.as_str(), "EXTID")
                            .str("user_id", user.id.to_string())
                            .str("issuer", new.issuer.as_str())
                            .str("subject", new.subject.as_str())
                            .at("created_at", user.created_at)
                            .build(),
                    )?,
                    put_new(&self.table, account)?,
                    put_new(
                        &self.table,
                        ItemBuilder::new(format!("UNAME#{}", user.username.as_str()), "UNAME")
                            .str("user_id", user.id.to_string())
                            .build(),
                    )?,
                    put(&self.table, ItemBuilder::new("META", "FIRSTUSER").build(), None)?,
                ])
                .await?;
            if tx.done() {
                return Ok(user);
            }
            if tx.failed(0) {
                // Another request provisioned this identity first.
                return Err(StoreError::Conflict);
            }
            if tx.failed(2) {
                username = candidates.next().ok_or(StoreError::Conflict)?;
                continue;
            }
            backoff(attempt).await;
        }
        Err(contended("provisioning an external account"))
    }

    async fn update_external_profile(
        &self,
        user: UserId,
        email: Option<&str>,
        is_admin: Option<bool>,
    ) -> StoreResult<()> {
        let mut sets = Vec::new();
        let mut vals = Item::new();
        if let Some(email) = email {
            sets.push("email_addr = :email");
            vals.insert(":email".into(), s(email));
        }
        if let Some(admin) = is_admin {
            sets.push("is_admin = :admin");
            vals.insert(":admin".into(), crate::item::flag(admin));
        }
        let mut expression = String::new();
        if !sets.is_empty() {
            expression = format!("SET {}", sets.join(", "));
        }
        if email.is_none() {
            expression.push_str(" REMOVE email_addr");
        }
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(user_pk(user), "USER")))
            .update_expression(expression.trim())
            .condition_expression("attribute_exists(PK)")
            .set_expression_attribute_values((!vals.is_empty()).then_some(vals))
            .send()
            .await;
        conditional(result).map(|_| ())
    }

    async fn insert_api_token(&self, token: &NewApiToken, max_per_user: u32) -> StoreResult<bool> {
        self.store_token(token, Some(max_per_user)).await
    }

    async fn api_tokens(&self, user: UserId) -> StoreResult<Vec<ApiTokenRecord>> {
        Ok(self.tokens_of(user).await?.into_iter().map(|t| t.record).collect())
    }

    async fn api_token_by_hash(
        &self,
        hash: &[u8; 32],
        now: OffsetDateTime,
    ) -> StoreResult<Option<(ApiTokenRecord, User)>> {
        let Some(claim) = self.get(format!("APITOK#{}", hash_hex(hash)), "APITOK").await? else {
            return Ok(None);
        };
        let claim = Row(&claim);
        let user_id = UserId(claim.uuid("user_id")?);
        let token_id = claim.uuid("token_id")?;
        let Some(item) = self.get(user_pk(user_id), token_sk(token_id)).await? else {
            return Ok(None);
        };
        let token = token_from(&item)?.record;
        if token.expires_at <= now {
            return Ok(None);
        }
        let Some(user) = self
            .get(user_pk(user_id), "USER")
            .await?
            .as_ref()
            .map(user_from)
            .transpose()?
        else {
            return Ok(None);
        };
        if token
            .last_used_at
            .is_none_or(|t| micros(now) - micros(t) >= TOUCH_INTERVAL_MICROS)
        {
            // Best effort: a failed bookkeeping write must not fail the request it accompanies.
            let _ = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key(user_pk(user_id), token_sk(token_id))))
                .update_expression("SET last_used_at = :now")
                .condition_expression("attribute_exists(PK)")
                .expression_attribute_values(":now", time(now))
                .return_values(ReturnValue::None)
                .send()
                .await;
        }
        Ok(Some((token, user)))
    }

    async fn delete_api_token(&self, user: UserId, id: Uuid) -> StoreResult<bool> {
        for attempt in 0..ATTEMPTS {
            let Some(item) = self.get(user_pk(user), token_sk(id)).await? else {
                return Ok(false);
            };
            let token = token_from(&item)?;
            let tx = self
                .transact(vec![
                    delete(
                        &self.table,
                        user_pk(user),
                        token_sk(id),
                        Some(("attribute_exists(PK)", Item::new())),
                    )?,
                    delete(&self.table, format!("APITOK#{}", hash_hex(&token.hash)), "APITOK", None)?,
                    update(
                        &self.table,
                        user_pk(user),
                        "USER",
                        "ADD api_token_count :minus",
                        Some("attribute_exists(PK)"),
                        values([(":minus", n(-1))]),
                    )?,
                ])
                .await?;
            if tx.done() {
                return Ok(true);
            }
            backoff(attempt).await;
        }
        Err(contended("deleting an API token"))
    }

    async fn external_identity_of(&self, user: UserId) -> StoreResult<Option<(String, String)>> {
        let Some(item) = self.get(user_pk(user), "USER").await? else {
            return Ok(None);
        };
        let r = Row(&item);
        Ok(match (r.opt_str("ext_issuer")?, r.opt_str("ext_subject")?) {
            (Some(issuer), Some(subject)) => Some((issuer.to_owned(), subject.to_owned())),
            _ => None,
        })
    }

    async fn import_external_identity(&self, issuer: &str, subject: &str, user: UserId) -> StoreResult<bool> {
        let tx = self
            .transact(vec![
                put_new(
                    &self.table,
                    ItemBuilder::new(identity_pk(issuer, subject), "EXTID")
                        .str("user_id", user.to_string())
                        .str("issuer", issuer)
                        .str("subject", subject)
                        .at("created_at", handoff_core::now())
                        .build(),
                )?,
                update(
                    &self.table,
                    user_pk(user),
                    "USER",
                    "SET ext_issuer = :i, ext_subject = :s",
                    Some("attribute_exists(PK) AND attribute_not_exists(ext_issuer)"),
                    values([(":i", s(issuer)), (":s", s(subject))]),
                )?,
            ])
            .await?;
        Ok(tx.done())
    }

    async fn export_api_tokens(&self, user: UserId) -> StoreResult<Vec<NewApiToken>> {
        self.tokens_of(user).await
    }

    async fn import_api_token(&self, token: &NewApiToken) -> StoreResult<bool> {
        self.store_token(token, None).await
    }
}
