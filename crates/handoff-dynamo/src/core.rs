//! [`MetadataStore`] itself: accounts (with the username claim and the first-account rule), signing keys, refresh
//! token families, and file rows with their blob references; plus the item codecs of users and files that the
//! other modules share.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{ConditionCheck, Delete, Put, TransactWriteItem, Update};
use handoff_core::model::NewRefreshToken;
use handoff_core::{
    Account, BlobId, FileCursor, FileKey, FileName, FilePatch, FileRecord, MetadataStore, NewUser, RefreshOutcome,
    SigningKeyRecord, StoreError, StoreResult, TeamId, UploadLinkId, User, UserId, Username, Visibility,
};
use time::OffsetDateTime;

use crate::client::{ATTEMPTS, DynamoStore, Query, SkCondition, Tx, backoff, conditional, contended, other};
use crate::item::{Item, ItemBuilder, Row, flag, hash_hex, key, n, s, time, ts_key, ts_upto};

pub(crate) fn user_pk(id: UserId) -> String {
    format!("USER#{id}")
}

pub(crate) fn file_pk(key: &FileKey) -> String {
    format!("FILE#{key}")
}

pub(crate) fn blob_pk(blob: BlobId) -> String {
    format!("BLOB#{blob}")
}

pub(crate) fn team_pk(id: TeamId) -> String {
    format!("TEAM#{id}")
}

/// The item holding an account's usage and quota: the user's or the team's own item.
pub(crate) fn account_key(account: Account) -> (String, &'static str) {
    match account {
        Account::User(u) => (user_pk(u), "USER"),
        Account::Team(t) => (team_pk(t), "TEAM"),
    }
}

pub(crate) fn user_item(user: &User) -> Item {
    ItemBuilder::new(user_pk(user.id), "USER")
        .str("user_id", user.id.to_string())
        .str("user_name", user.username.as_str())
        .opt_str("email_addr", user.email.clone())
        .opt_str("password_hash", user.password_hash.clone())
        .flag("is_admin", user.is_admin)
        .flag("is_disabled", user.disabled)
        .at("created_at", user.created_at)
        .num("used_bytes", 0)
        .num("used_files", 0)
        .num("api_token_count", 0)
        .str("GSI3PK", "USERS")
        .str("GSI3SK", user.id.to_string())
        .build()
}

pub(crate) fn user_from(item: &Item) -> StoreResult<User> {
    let r = Row(item);
    Ok(User {
        id: UserId(r.uuid("user_id")?),
        username: Username::from_trusted(r.str("user_name")?.to_owned()),
        email: r.opt_str("email_addr")?.map(str::to_owned),
        password_hash: r.opt_str("password_hash")?.map(str::to_owned),
        is_admin: r.flag("is_admin")?,
        disabled: r.flag("is_disabled")?,
        created_at: r.time("created_at")?,
    })
}

pub(crate) fn file_item(f: &FileRecord) -> Item {
    let listing = ts_key(f.created_at, f.key.as_str());
    let owner_partition = match f.team {
        Some(team) => format!("TEAM#{team}"),
        None => format!("OWNER#{}", f.owner),
    };
    let mut item = ItemBuilder::new(file_pk(&f.key), "FILE")
        .str("file_key", f.key.as_str())
        .str("blob_id", f.blob.to_string())
        .str("owner_id", f.owner.to_string())
        .str("file_name", f.name.as_str())
        .num("size_bytes", f.size)
        .str("sha256", f.sha256.as_str())
        .str("content_type", f.content_type.as_str())
        .str("file_visibility", f.visibility.as_str())
        .at("created_at", f.created_at)
        .at("updated_at", f.updated_at)
        .opt_str("team_id", f.team.map(|t| t.to_string()))
        .opt_at("expires_at", f.expires_at)
        .opt_str("upload_link_id", f.upload_link.map(|l| l.to_string()))
        .str("GSI1PK", owner_partition)
        .str("GSI1SK", listing.clone())
        .str("GSI2PK", "FILES")
        .str("GSI2SK", listing.clone())
        .str("GSI3PK", "FILEKEYS")
        .str("GSI3SK", f.key.as_str());
    if let Some(link) = f.upload_link {
        item = item.str("GSI4PK", format!("LINKFILES#{link}")).str("GSI4SK", listing);
    }
    if let Some(expires) = f.expires_at {
        item = item
            .str("GSI5PK", "FILEEXP")
            .str("GSI5SK", ts_key(expires, f.key.as_str()));
    }
    item.build()
}

pub(crate) fn file_from(item: &Item) -> StoreResult<FileRecord> {
    let r = Row(item);
    let visibility = r.str("file_visibility")?;
    Ok(FileRecord {
        key: FileKey::parse(r.str("file_key")?).ok_or_else(|| StoreError::Corrupt("file key".into()))?,
        blob: BlobId(r.uuid("blob_id")?),
        owner: UserId(r.uuid("owner_id")?),
        name: FileName::from_trusted(r.str("file_name")?.to_owned()),
        size: r.u64("size_bytes")?,
        sha256: r.str("sha256")?.to_owned(),
        content_type: r.str("content_type")?.to_owned(),
        visibility: Visibility::parse(visibility)
            .ok_or_else(|| StoreError::Corrupt(format!("visibility {visibility}")))?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
        team: r.opt_uuid("team_id")?.map(TeamId),
        expires_at: r.opt_time("expires_at")?,
        upload_link: r.opt_uuid("upload_link_id")?.map(UploadLinkId),
    })
}

pub(crate) fn put(table: &str, item: Item, condition: Option<&str>) -> StoreResult<TransactWriteItem> {
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .set_condition_expression(condition.map(str::to_owned))
        .build()
        .map_err(other)?;
    Ok(TransactWriteItem::builder().put(put).build())
}

/// A `Put` that fails when the item exists: a uniqueness claim.
pub(crate) fn put_new(table: &str, item: Item) -> StoreResult<TransactWriteItem> {
    put(table, item, Some("attribute_not_exists(PK)"))
}

pub(crate) fn delete(
    table: &str,
    pk: impl Into<String>,
    sk: impl Into<String>,
    condition: Option<(&str, Item)>,
) -> StoreResult<TransactWriteItem> {
    let (expr, values) = condition.map_or((None, None), |(e, v)| {
        (Some(e.to_owned()), (!v.is_empty()).then_some(v))
    });
    let delete = Delete::builder()
        .table_name(table)
        .set_key(Some(key(pk, sk)))
        .set_condition_expression(expr)
        .set_expression_attribute_values(values)
        .build()
        .map_err(other)?;
    Ok(TransactWriteItem::builder().delete(delete).build())
}

pub(crate) fn update(
    table: &str,
    pk: impl Into<String>,
    sk: impl Into<String>,
    expression: &str,
    condition: Option<&str>,
    values: Item,
) -> StoreResult<TransactWriteItem> {
    let update = Update::builder()
        .table_name(table)
        .set_key(Some(key(pk, sk)))
        .update_expression(expression)
        .set_condition_expression(condition.map(str::to_owned))
        .set_expression_attribute_values((!values.is_empty()).then_some(values))
        .build()
        .map_err(other)?;
    Ok(TransactWriteItem::builder().update(update).build())
}

pub(crate) fn check(
    table: &str,
    pk: impl Into<String>,
    sk: impl Into<String>,
    condition: &str,
    values: Item,
) -> StoreResult<TransactWriteItem> {
    let check = ConditionCheck::builder()
        .table_name(table)
        .set_key(Some(key(pk, sk)))
        .condition_expression(condition)
        .set_expression_attribute_values((!values.is_empty()).then_some(values))
        .build()
        .map_err(other)?;
    Ok(TransactWriteItem::builder().condition_check(check).build())
}

pub(crate) fn values<const N: usize>(pairs: [(&str, aws_sdk_dynamodb::types::AttributeValue); N]) -> Item {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

impl DynamoStore {
    /// Writes a new account with its username claim. `first` also claims the "first account" marker (so the
    /// account is the admin); `mark` writes the marker unconditionally (every later account).
    pub(crate) async fn insert_user(&self, user: &User, first: bool) -> StoreResult<Tx> {
        let marker = ItemBuilder::new("META", "FIRSTUSER").build();
        self.transact(vec![
            put_new(&self.table, user_item(user))?,
            put_new(
                &self.table,
                ItemBuilder::new(format!("UNAME#{}", user.username.as_str()), "UNAME")
                    .str("user_id", user.id.to_string())
                    .build(),
            )?,
            if first {
                put_new(&self.table, marker)?
            } else {
                put(&self.table, marker, None)?
            },
        ])
        .await
    }

    pub(crate) async fn users_by_ids(&self, ids: &[UserId]) -> StoreResult<Vec<User>> {
        let keys = ids.iter().map(|id| key(user_pk(*id), "USER")).collect();
        self.batch_get(keys).await?.iter().map(user_from).collect()
    }

    /// Files of a newest-first index partition, strictly after `after`.
    pub(crate) async fn files_newest_first(
        &self,
        index: &str,
        partition: String,
        after: Option<&FileCursor>,
        limit: u32,
    ) -> StoreResult<Vec<FileRecord>> {
        let sk = after.map_or(SkCondition::Any, |c| {
            SkCondition::Lt(ts_key(c.created_at, c.key.as_str()))
        });
        let items = self
            .query(Query::index(index, partition).sk(sk).backwards().limit(limit))
            .await?;
        items.iter().map(file_from).collect()
    }

    /// Deletes a file row with its blob reference and refunds its account, as one transaction; `None` when the
    /// row is gone (someone else deleted it first). `expected_expiry` makes the delete conditional on the file
    /// still being due (the retention sweep).
    pub(crate) async fn remove_file(
        &self,
        key: &FileKey,
        due_by: Option<OffsetDateTime>,
    ) -> StoreResult<Option<FileRecord>> {
        let mut refund = true;
        for attempt in 0..ATTEMPTS {
            let Some(item) = self.get(file_pk(key), "FILE").await? else {
                return Ok(None);
            };
            let file = file_from(&item)?;
            let (condition, vals) = match due_by {
                Some(now) => (
                    "attribute_exists(PK) AND expires_at <= :now",
                    values([(":now", time(now))]),
                ),
                None => ("attribute_exists(PK)", Item::new()),
            };
            let mut items = vec![
                delete(&self.table, file_pk(key), "FILE", Some((condition, vals)))?,
                delete(&self.table, blob_pk(file.blob), "FILE", None)?,
            ];
            if refund {
                let (pk, sk) = account_key(file.account());
                items.push(update(
                    &self.table,
                    pk,
                    sk,
                    "ADD used_bytes :bytes, used_files :files",
                    Some("attribute_exists(PK)"),
                    values([(":bytes", n(-i128::from(file.size))), (":files", n(-1))]),
                )?);
            }
            let tx = self.transact(items).await?;
            if tx.done() {
                return Ok(Some(file));
            }
            if tx.failed(2) && !tx.failed(0) {
                // The account is gone (its team was deleted): nothing to refund.
                refund = false;
                continue;
            }
            if tx.failed(0) && due_by.is_some() {
                return Ok(None);
            }
            backoff(attempt).await;
        }
        Err(contended("deleting a file"))
    }

    async fn revoke_family(&self, family: &str) -> StoreResult<()> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(format!("RTFAM#{family}"), "RTFAM")))
            .update_expression("SET is_revoked = :t")
            .condition_expression("attribute_exists(PK)")
            .expression_attribute_values(":t", flag(true))
            .send()
            .await;
        conditional(result).map(|_| ())
    }

    /// Revokes every refresh-token family of `user` (when the account is disabled).
    pub(crate) async fn revoke_families_of(&self, user: UserId) -> StoreResult<()> {
        let families = self.query(Query::index("GSI1", format!("RTFAMS#{user}"))).await?;
        for item in &families {
            let family = Row(item).str("family_id")?;
            self.revoke_family(family).await?;
        }
        Ok(())
    }
}

fn signing_key_from(item: &Item) -> StoreResult<SigningKeyRecord> {
    let r = Row(item);
    Ok(SigningKeyRecord {
        kid: r.str("kid")?.to_owned(),
        algorithm: r.str("algorithm")?.to_owned(),
        private_der: r.bytes("private_der")?,
        public_raw: r.bytes("public_raw")?,
        created_at: r.time("created_at")?,
    })
}

fn signing_key_item(key: &SigningKeyRecord) -> Item {
    ItemBuilder::new("SIGNKEYS", format!("KEY#{}", ts_key(key.created_at, &key.kid)))
        .str("kid", key.kid.as_str())
        .str("algorithm", key.algorithm.as_str())
        .bytes("private_der", &key.private_der)
        .bytes("public_raw", &key.public_raw)
        .at("created_at", key.created_at)
        .build()
}

#[async_trait]
impl MetadataStore for DynamoStore {
    async fn ping(&self) -> StoreResult<()> {
        self.get("META", "PING").await.map(|_| ())
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
        for attempt in 0..ATTEMPTS {
            // The first account administers the server: whoever claims the marker first.
            let first = self.get("META", "FIRSTUSER").await?.is_none();
            user.is_admin = first;
            let tx = self.insert_user(&user, first).await?;
            if tx.done() {
                return Ok(user);
            }
            if tx.failed(1) || tx.failed(0) {
                return Err(StoreError::Conflict);
            }
            backoff(attempt).await;
        }
        Err(contended("creating an account"))
    }

    async fn user_by_username(&self, username: &Username) -> StoreResult<Option<User>> {
        let Some(claim) = self.get(format!("UNAME#{}", username.as_str()), "UNAME").await? else {
            return Ok(None);
        };
        let id = UserId(Row(&claim).uuid("user_id")?);
        self.user_by_id(id).await
    }

    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<User>> {
        self.get(user_pk(id), "USER").await?.as_ref().map(user_from).transpose()
    }

    async fn users_page(&self, after: Option<UserId>, limit: u32) -> StoreResult<Vec<User>> {
        let sk = after.map_or(SkCondition::Any, |id| SkCondition::Gt(id.to_string()));
        let items = self.query(Query::index("GSI3", "USERS").sk(sk).limit(limit)).await?;
        items.iter().map(user_from).collect()
    }

    async fn import_user(&self, user: &User) -> StoreResult<()> {
        match self.insert_user(user, false).await? {
            Tx::Done => Ok(()),
            tx if tx.failed(0) || tx.failed(1) => Err(StoreError::Conflict),
            _ => Err(contended("importing an account")),
        }
    }

    async fn signing_keys(&self) -> StoreResult<Vec<SigningKeyRecord>> {
        let items = self
            .query(
                Query::table("SIGNKEYS")
                    .sk(SkCondition::BeginsWith("KEY#".into()))
                    .backwards(),
            )
            .await?;
        items.iter().map(signing_key_from).collect()
    }

    async fn insert_signing_key(&self, key: &SigningKeyRecord) -> StoreResult<()> {
        let tx = self
            .transact(vec![
                put_new(&self.table, signing_key_item(key))?,
                put(&self.table, ItemBuilder::new("SIGNKEYS", "FIRST").build(), None)?,
            ])
            .await?;
        match tx {
            Tx::Done => Ok(()),
            tx if tx.failed(0) => Err(StoreError::Conflict),
            _ => Err(contended("storing a signing key")),
        }
    }

    async fn insert_first_signing_key(&self, key: &SigningKeyRecord) -> StoreResult<bool> {
        for attempt in 0..ATTEMPTS {
            let tx = self
                .transact(vec![
                    put_new(&self.table, signing_key_item(key))?,
                    put_new(&self.table, ItemBuilder::new("SIGNKEYS", "FIRST").build())?,
                ])
                .await?;
            if tx.done() {
                return Ok(true);
            }
            if tx.failed(1) || tx.failed(0) {
                return Ok(false);
            }
            backoff(attempt).await;
        }
        Err(contended("storing the first signing key"))
    }

    async fn insert_refresh_token(&self, token: &NewRefreshToken) -> StoreResult<()> {
        let family = token.family.to_string();
        let tx = self
            .transact(vec![
                put_new(
                    &self.table,
                    ItemBuilder::new(format!("RT#{}", hash_hex(&token.hash)), "RT")
                        .str("family_id", family.as_str())
                        .str("user_id", token.user.to_string())
                        .at("expires_at", token.expires_at)
                        .flag("is_spent", false)
                        .build(),
                )?,
                update(
                    &self.table,
                    format!("RTFAM#{family}"),
                    "RTFAM",
                    "SET family_id = :f, user_id = :u, GSI1PK = :gpk, GSI1SK = :f, \
                     is_revoked = if_not_exists(is_revoked, :no)",
                    None,
                    values([
                        (":f", s(family.as_str())),
                        (":u", s(token.user.to_string())),
                        (":gpk", s(format!("RTFAMS#{}", token.user))),
                        (":no", flag(false)),
                    ]),
                )?,
            ])
            .await?;
        match tx {
            Tx::Done => Ok(()),
            tx if tx.failed(0) => Err(StoreError::Conflict),
            _ => Err(contended("storing a refresh token")),
        }
    }

    async fn rotate_refresh_token(
        &self,
        presented: &[u8; 32],
        successor_hash: &[u8; 32],
        successor_expires_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> StoreResult<RefreshOutcome> {
        let pk = format!("RT#{}", hash_hex(presented));
        for attempt in 0..ATTEMPTS {
            let Some(item) = self.get(pk.as_str(), "RT").await? else {
                return Ok(RefreshOutcome::Invalid);
            };
            let r = Row(&item);
            let family = r.str("family_id")?.to_owned();
            let family_item = self.get(format!("RTFAM#{family}"), "RTFAM").await?;
            if family_item
                .as_ref()
                .is_none_or(|f| Row(f).flag("is_revoked").unwrap_or(true))
            {
                // Signed out, or already caught being reused: simply no longer valid.
                return Ok(RefreshOutcome::Invalid);
            }
            if r.flag("is_spent")? {
                self.revoke_family(&family).await?;
                return Ok(RefreshOutcome::Reused);
            }
            if r.time("expires_at")? <= now {
                return Ok(RefreshOutcome::Invalid);
            }
            let user = UserId(r.uuid("user_id")?);
            let tx = self
                .transact(vec![
                    update(
                        &self.table,
                        pk.as_str(),
                        "RT",
                        "SET is_spent = :t",
                        Some("is_spent = :f"),
                        values([(":t", flag(true)), (":f", flag(false))]),
                    )?,
                    check(
                        &self.table,
                        format!("RTFAM#{family}"),
                        "RTFAM",
                        "is_revoked = :f",
                        values([(":f", flag(false))]),
                    )?,
                    put_new(
                        &self.table,
                        ItemBuilder::new(format!("RT#{}", hash_hex(successor_hash)), "RT")
                            .str("family_id", family.as_str())
                            .str("user_id", user.to_string())
                            .at("expires_at", successor_expires_at)
                            .flag("is_spent", false)
                            .build(),
                    )?,
                ])
                .await?;
            if tx.done() {
                return Ok(RefreshOutcome::Rotated { user });
            }
            if tx.failed(2) {
                return Err(StoreError::Conflict);
            }
            // Someone spent it or revoked the family meanwhile: decide again from what is stored now.
            backoff(attempt).await;
        }
        Err(contended("rotating a refresh token"))
    }

    async fn revoke_refresh_family(&self, presented: &[u8; 32]) -> StoreResult<bool> {
        let Some(item) = self.get(format!("RT#{}", hash_hex(presented)), "RT").await? else {
            return Ok(false);
        };
        self.revoke_family(Row(&item).str("family_id")?).await?;
        Ok(true)
    }

    async fn file_by_key(&self, key: &FileKey) -> StoreResult<Option<FileRecord>> {
        self.get(file_pk(key), "FILE")
            .await?
            .as_ref()
            .map(file_from)
            .transpose()
    }

    async fn files_page(&self, after: Option<&FileKey>, limit: u32) -> StoreResult<Vec<FileRecord>> {
        let sk = after.map_or(SkCondition::Any, |k| SkCondition::Gt(k.as_str().to_owned()));
        let items = self.query(Query::index("GSI3", "FILEKEYS").sk(sk).limit(limit)).await?;
        items.iter().map(file_from).collect()
    }

    async fn list_files(&self, owner: UserId, after: Option<&FileCursor>, limit: u32) -> StoreResult<Vec<FileRecord>> {
        self.files_newest_first("GSI1", format!("OWNER#{owner}"), after, limit)
            .await
    }

    async fn update_file(
        &self,
        key: &FileKey,
        patch: &FilePatch,
        now: OffsetDateTime,
    ) -> StoreResult<Option<FileRecord>> {
        let mut sets = vec!["updated_at = :now"];
        let mut vals = values([(":now", time(now))]);
        if let Some(name) = &patch.name {
            sets.push("file_name = :name");
            vals.insert(":name".into(), s(name.as_str()));
        }
        if let Some(visibility) = patch.visibility {
            sets.push("file_visibility = :vis");
            vals.insert(":vis".into(), s(visibility.as_str()));
        }
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(crate::item::key(file_pk(key), "FILE")))
            .update_expression(format!("SET {}", sets.join(", ")))
            .condition_expression("attribute_exists(PK)")
            .set_expression_attribute_values(Some(vals))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await;
        conditional(result)?
            .and_then(|out| out.attributes)
            .as_ref()
            .map(file_from)
            .transpose()
    }

    async fn delete_file(&self, key: &FileKey) -> StoreResult<Option<FileRecord>> {
        self.remove_file(key, None).await
    }

    async fn blob_is_referenced(&self, blob: BlobId) -> StoreResult<bool> {
        Ok(self.get(blob_pk(blob), "FILE").await?.is_some())
    }
}

/// Due files, oldest expiry first (the retention sweep's candidates; each is re-checked when deleted).
pub(crate) async fn due_files(store: &DynamoStore, now: OffsetDateTime, limit: u32) -> StoreResult<Vec<FileKey>> {
    let items = store
        .query(
            Query::index("GSI5", "FILEEXP")
                .sk(SkCondition::Le(ts_upto(now)))
                .limit(limit),
        )
        .await?;
    items
        .iter()
        .map(|i| FileKey::parse(Row(i).str("file_key")?).ok_or_else(|| StoreError::Corrupt("file key".into())))
        .collect()
}
