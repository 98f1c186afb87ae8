//! [`DirectUploadStore`] on DynamoDB: one item per direct upload session (`DIRECT#<id>` / `DIRECT`), written once;
//! afterwards only its claim changes, by a conditional `UpdateItem`, and whoever holds the claim records the
//! verification's progress (`verified_bytes`, `hash_state`) and the completion (`completed_at`). While a session
//! is open (exists and has not completed), `BLOB#<blob>` /
//! `DIRECT` names its blob (for the orphan collector), the owner's `ROSTER#DIRECT` lists it (the per-owner cap,
//! counted and written in one transaction conditioned on the roster's version, see `roster.rs`) and the paying
//! account's `ROSTER#DIRECTBYTES` lists it (the bytes a quota keeps free for it). Expired sessions are found
//! through GSI5 (`DIRECTEXP`, sorted by expiry).

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{ReturnValue, TransactWriteItem};
use handoff_core::{
    Account, BlobId, DirectUpload, DirectUploadStore, FileKey, FileName, LeaseToken, StoreError, StoreResult, TeamId,
    UploadId, UserId, Verification, Visibility,
};
use time::OffsetDateTime;

use crate::client::{ATTEMPTS, DynamoStore, backoff, conditional, contended};
use crate::core::{blob_pk, delete, put_new, team_pk, update, user_pk, values};
use crate::item::{Item, ItemBuilder, Row, b, key, n, s, time, ts_key};
use crate::roster::{roster_add, roster_remove};

const SK: &str = "DIRECT";
const ROSTER: &str = "ROSTER#DIRECT";
const RESERVED: &str = "ROSTER#DIRECTBYTES";

fn direct_pk(id: &UploadId) -> String {
    format!("DIRECT#{id}")
}

fn account_pk(account: Account) -> String {
    match account {
        Account::User(user) => user_pk(user),
        Account::Team(team) => team_pk(team),
    }
}

fn direct_item(x: &DirectUpload) -> Item {
    ItemBuilder::new(direct_pk(&x.id), SK)
        .str("upload_id", x.id.as_str())
        .str("owner_id", x.owner.to_string())
        .opt_str("team_id", x.team.map(|t| t.to_string()))
        .str("blob_id", x.blob.to_string())
        .str("file_key", x.file_key.as_str())
        .str("file_name", x.name.as_str())
        .str("content_type", x.content_type.as_str())
        .str("file_visibility", x.visibility.as_str())
        .opt_at("file_expires_at", x.file_expires_at)
        .num("size", x.size)
        .opt_str("sha256", x.sha256.clone())
        .num("part_size", x.part_size)
        .num("part_count", x.part_count)
        .opt_str("store_state", Some(x.store_state.as_str()).filter(|m| !m.is_empty()))
        .at("created_at", x.created_at)
        .at("expires_at", x.expires_at)
        .str("GSI5PK", "DIRECTEXP")
        .str("GSI5SK", ts_key(x.expires_at, x.id.as_str()))
        .build()
}

fn direct_from(item: &Item) -> StoreResult<DirectUpload> {
    let r = Row(item);
    let visibility = r.str("file_visibility")?;
    let part_count = r.u64("part_count")?;
    let hash_state = r.bytes("hash_state")?;
    Ok(DirectUpload {
        id: UploadId::parse(r.str("upload_id")?).ok_or_else(|| StoreError::Corrupt("direct upload id".into()))?,
        owner: UserId(r.uuid("owner_id")?),
        team: r.opt_uuid("team_id")?.map(TeamId),
        blob: BlobId(r.uuid("blob_id")?),
        file_key: FileKey::parse(r.str("file_key")?).ok_or_else(|| StoreError::Corrupt("file key".into()))?,
        name: FileName::from_trusted(r.str("file_name")?.to_owned()),
        content_type: r.str("content_type")?.to_owned(),
        visibility: Visibility::parse(visibility)
            .ok_or_else(|| StoreError::Corrupt(format!("visibility {visibility}")))?,
        file_expires_at: r.opt_time("file_expires_at")?,
        size: r.u64("size")?,
        sha256: r.opt_str("sha256")?.map(str::to_owned),
        part_size: r.u64("part_size")?,
        part_count: u32::try_from(part_count).map_err(|_| StoreError::Corrupt("part count".into()))?,
        store_state: r.opt_str("store_state")?.unwrap_or_default().to_owned(),
        created_at: r.time("created_at")?,
        expires_at: r.time("expires_at")?,
        // A serialized hasher is never empty: an absent attribute means "not joined yet".
        verification: if hash_state.is_empty() {
            None
        } else {
            Some(Verification {
                verified: r.count("verified_bytes")?,
                hash_state,
            })
        },
        completed_at: r.opt_time("completed_at")?,
    })
}

fn direct_key(id: &str) -> Option<Item> {
    UploadId::parse(id).map(|id| key(direct_pk(&id), SK))
}

impl DynamoStore {
    /// Writes `change` to the session's item (conditioned on the caller's claim) in one transaction with what ends
    /// the session's holds: its blob marker and its places in the owner's cap and the reservation rosters. `false`
    /// when the session is gone or the claim is not the caller's.
    async fn end_holds(
        &self,
        id: &UploadId,
        change: impl Fn() -> StoreResult<TransactWriteItem>,
        doing: &str,
    ) -> StoreResult<bool> {
        for attempt in 0..ATTEMPTS {
            let Some(item) = self.get(direct_pk(id), SK).await? else {
                return Ok(false);
            };
            let session = direct_from(&item)?;
            let tx = self
                .transact(vec![
                    change()?,
                    delete(&self.table, blob_pk(session.blob), SK, None)?,
                    roster_remove(&self.table, user_pk(session.owner), ROSTER, id.as_str())?,
                    roster_remove(&self.table, account_pk(session.account()), RESERVED, id.as_str())?,
                ])
                .await?;
            if tx.done() {
                return Ok(true);
            }
            if tx.failed(0) {
                return Ok(false);
            }
            backoff(attempt).await;
        }
        Err(contended(doing))
    }

    /// The sessions a roster lists that still exist.
    async fn direct_sessions(&self, pk: String, sk: &str) -> StoreResult<Vec<DirectUpload>> {
        let roster = self.roster(pk, sk).await?;
        let items = self.roster_items(&roster, direct_key).await?;
        items.iter().map(direct_from).collect()
    }
}

#[async_trait]
impl DirectUploadStore for DynamoStore {
    async fn create_direct_upload(&self, x: &DirectUpload, max_open: u32, now: OffsetDateTime) -> StoreResult<bool> {
        for attempt in 0..ATTEMPTS {
            let roster = self.roster(user_pk(x.owner), ROSTER).await?;
            let items = self.roster_items(&roster, direct_key).await?;
            let open = items.iter().map(direct_from).collect::<StoreResult<Vec<_>>>()?;
            if open.iter().filter(|o| o.expires_at > now).count() >= max_open as usize {
                return Ok(false);
            }
            let mut ids: Vec<String> = open.iter().map(|o| o.id.as_str().to_owned()).collect();
            ids.push(x.id.as_str().to_owned());
            let tx = self
                .transact(vec![
                    put_new(&self.table, direct_item(x))?,
                    put_new(
                        &self.table,
                        ItemBuilder::new(blob_pk(x.blob), SK)
                            .str("upload_id", x.id.as_str())
                            .build(),
                    )?,
                    roster.replace(&self.table, ids)?,
                    roster_add(&self.table, account_pk(x.account()), RESERVED, x.id.as_str())?,
                ])
                .await?;
            if tx.done() {
                return Ok(true);
            }
            if tx.failed(0) || tx.failed(1) {
                return Err(StoreError::Conflict);
            }
            backoff(attempt).await;
        }
        Err(contended("creating a direct upload session"))
    }

    async fn direct_upload(&self, id: &UploadId) -> StoreResult<Option<DirectUpload>> {
        self.get(direct_pk(id), SK).await?.as_ref().map(direct_from).transpose()
    }

    async fn claim_direct_upload(
        &self,
        id: &UploadId,
        token: &LeaseToken,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> StoreResult<Option<DirectUpload>> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(direct_pk(id), SK)))
            .update_expression("SET claim_token = :token, claim_until = :until")
            .condition_expression("attribute_exists(PK) AND (attribute_not_exists(claim_until) OR claim_until <= :now)")
            .set_expression_attribute_values(Some(values([
                (":token", s(token.as_str())),
                (":until", time(until)),
                (":now", time(now)),
            ])))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        conditional(result)?
            .and_then(|out| out.attributes)
            .as_ref()
            .map(direct_from)
            .transpose()
    }

    async fn release_direct_upload(&self, id: &UploadId, token: &LeaseToken) -> StoreResult<()> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(direct_pk(id), SK)))
            .update_expression("REMOVE claim_token, claim_until")
            .condition_expression("claim_token = :token")
            .set_expression_attribute_values(Some(values([(":token", s(token.as_str()))])))
            .send()
            .await;
        conditional(result)?;
        Ok(())
    }

    async fn record_direct_verification(
        &self,
        id: &UploadId,
        token: &LeaseToken,
        progress: &Verification,
    ) -> StoreResult<bool> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(direct_pk(id), SK)))
            .update_expression("SET verified_bytes = :verified, hash_state = :hash")
            .condition_expression("claim_token = :token")
            .set_expression_attribute_values(Some(values([
                (":verified", n(progress.verified)),
                (":hash", b(&progress.hash_state)),
                (":token", s(token.as_str())),
            ])))
            .send()
            .await;
        Ok(conditional(result)?.is_some())
    }

    async fn mark_direct_upload_completed(
        &self,
        id: &UploadId,
        token: &LeaseToken,
        now: OffsetDateTime,
    ) -> StoreResult<bool> {
        // The file protects the blob from here on; the item stays, marked, until it expires.
        let mark = || {
            update(
                &self.table,
                direct_pk(id),
                SK,
                "SET completed_at = :now REMOVE hash_state, verified_bytes, claim_token, claim_until",
                Some("claim_token = :token"),
                values([(":now", time(now)), (":token", s(token.as_str()))]),
            )
        };
        self.end_holds(id, mark, "completing a direct upload session").await
    }

    async fn delete_direct_upload(&self, id: &UploadId, token: &LeaseToken) -> StoreResult<bool> {
        let remove = || {
            delete(
                &self.table,
                direct_pk(id),
                SK,
                Some(("claim_token = :token", values([(":token", s(token.as_str()))]))),
            )
        };
        self.end_holds(id, remove, "removing a direct upload session").await
    }

    async fn expired_direct_uploads(&self, now: OffsetDateTime, limit: u32) -> StoreResult<Vec<DirectUpload>> {
        // Claimed sessions are skipped: someone is completing or reclaiming them.
        self.due_unheld("DIRECTEXP", "claim_until", now, limit, direct_from)
            .await
    }

    async fn open_direct_bytes(&self, account: Account, now: OffsetDateTime) -> StoreResult<u64> {
        let open = self.direct_sessions(account_pk(account), RESERVED).await?;
        Ok(open.iter().filter(|x| x.expires_at > now).map(|x| x.size).sum())
    }

    async fn blob_in_direct_upload(&self, blob: BlobId) -> StoreResult<bool> {
        Ok(self.get(blob_pk(blob), SK).await?.is_some())
    }
}
