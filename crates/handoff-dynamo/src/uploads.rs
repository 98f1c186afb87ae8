//! [`UploadStore`] on DynamoDB: one item per tus session (`UPLOAD#<id>`), every later change a conditional
//! `UpdateItem` on the lease token. The session is a plain attribute map written by [`session_item`] and read by
//! [`session_from`]: a new kind of session or a new field (an upload link, a team) is a new attribute there, and
//! items written before it simply lack it. While a session is open, `BLOB#<blob>` / `UPLOAD` names its blob (for
//! the orphan collector), a *cap roster* `ROSTER#UPLOADS` lists it (the owner's for their own uploads, the upload
//! link's for uploads through a link: the per-owner and per-link caps, and a link's reserved room), and the
//! paying account's `ROSTER#RESERVED` lists it too (the user's, or the team's: the bytes held against a quota).

use async_trait::async_trait;
use aws_sdk_dynamodb::types::ReturnValue;
use handoff_core::{
    Account, BlobId, FileKey, FileName, LeaseToken, LinkReservation, StoreError, StoreResult, TeamId, UploadId,
    UploadLinkId, UploadProgress, UploadSession, UploadStore, UserId, Visibility,
};
use time::OffsetDateTime;

use crate::client::{ATTEMPTS, DynamoStore, backoff, conditional, contended};
use crate::core::{blob_pk, delete, put_new, team_pk, update, user_pk, values};
use crate::item::{Item, ItemBuilder, Row, b, flag, key, n, s, time, ts_key};
use crate::links::link_pk;
use crate::roster::{Roster, roster_add, roster_remove};

const ROSTER: &str = "ROSTER#UPLOADS";
const RESERVED: &str = "ROSTER#RESERVED";

/// The partition of the roster that caps how many sessions may be open: the link's for a link upload (so that
/// senders cannot use up the owner's allowance), else the owner's.
fn cap_pk(x: &UploadSession) -> String {
    match x.upload_link {
        Some(link) => link_pk(link),
        None => user_pk(x.owner),
    }
}

fn account_pk(account: Account) -> String {
    match account {
        Account::User(user) => user_pk(user),
        Account::Team(team) => team_pk(team),
    }
}

/// Who the finished file will be charged to: the team it goes to, else the owner.
fn paying_account(x: &UploadSession) -> Account {
    match x.team {
        Some(team) => Account::Team(team),
        None => Account::User(x.owner),
    }
}

fn upload_pk(id: &UploadId) -> String {
    format!("UPLOAD#{id}")
}

fn session_item(x: &UploadSession) -> Item {
    ItemBuilder::new(upload_pk(&x.id), "UPLOAD")
        .str("upload_id", x.id.as_str())
        .str("owner_id", x.owner.to_string())
        .opt_str("team_id", x.team.map(|t| t.to_string()))
        .opt_str("upload_link_id", x.upload_link.map(|l| l.to_string()))
        .str("blob_id", x.blob.to_string())
        .str("file_key", x.file_key.as_str())
        .opt_num("upload_length", x.length)
        .num("upload_offset", x.offset)
        .opt_str("upload_metadata", Some(x.metadata.as_str()).filter(|m| !m.is_empty()))
        .str("file_name", x.name.as_str())
        .str("content_type", x.content_type.as_str())
        .str("file_visibility", x.visibility.as_str())
        .opt_str("store_state", Some(x.store_state.as_str()).filter(|m| !m.is_empty()))
        .opt_bytes("hash_state", Some(x.hash_state.as_slice()).filter(|h| !h.is_empty()))
        .flag("is_complete", x.completed)
        .at("created_at", x.created_at)
        .at("expires_at", x.expires_at)
        .str("GSI5PK", "UPLOADEXP")
        .str("GSI5SK", ts_key(x.expires_at, x.id.as_str()))
        .build()
}

fn session_from(item: &Item) -> StoreResult<UploadSession> {
    let r = Row(item);
    let visibility = r.str("file_visibility")?;
    Ok(UploadSession {
        id: UploadId::parse(r.str("upload_id")?).ok_or_else(|| StoreError::Corrupt("upload id".into()))?,
        owner: UserId(r.uuid("owner_id")?),
        team: r.opt_uuid("team_id")?.map(TeamId),
        upload_link: r.opt_uuid("upload_link_id")?.map(UploadLinkId),
        blob: BlobId(r.uuid("blob_id")?),
        file_key: FileKey::parse(r.str("file_key")?).ok_or_else(|| StoreError::Corrupt("file key".into()))?,
        length: r.opt_u64("upload_length")?,
        offset: r.u64("upload_offset")?,
        metadata: r.opt_str("upload_metadata")?.unwrap_or_default().to_owned(),
        name: FileName::from_trusted(r.str("file_name")?.to_owned()),
        content_type: r.str("content_type")?.to_owned(),
        visibility: Visibility::parse(visibility)
            .ok_or_else(|| StoreError::Corrupt(format!("visibility {visibility}")))?,
        store_state: r.opt_str("store_state")?.unwrap_or_default().to_owned(),
        hash_state: r.bytes("hash_state")?,
        completed: r.flag("is_complete")?,
        created_at: r.time("created_at")?,
        expires_at: r.time("expires_at")?,
    })
}

fn session_key(id: &str) -> Option<Item> {
    UploadId::parse(id).map(|id| key(upload_pk(&id), "UPLOAD"))
}

impl DynamoStore {
    /// The owner's sessions that are still incomplete (expired ones included), from the roster.
    async fn open_sessions(&self, roster: &Roster) -> StoreResult<Vec<UploadSession>> {
        let items = self.roster_items(roster, session_key).await?;
        let mut open = Vec::new();
        for item in &items {
            let session = session_from(item)?;
            if !session.completed {
                open.push(session);
            }
        }
        Ok(open)
    }

    /// A conditional update of one session; `Some(new item)` when it applied.
    async fn update_session(
        &self,
        id: &UploadId,
        expression: &str,
        condition: &str,
        vals: Item,
    ) -> StoreResult<Option<Item>> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(upload_pk(id), "UPLOAD")))
            .update_expression(expression)
            .condition_expression(condition)
            .set_expression_attribute_values(Some(vals))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        Ok(conditional(result)?.and_then(|out| out.attributes))
    }

    /// Removes a session with its blob claim and roster entry, if `condition` holds.
    async fn remove_session(&self, id: &UploadId, condition: &str, vals: Item) -> StoreResult<bool> {
        for attempt in 0..ATTEMPTS {
            let Some(item) = self.get(upload_pk(id), "UPLOAD").await? else {
                return Ok(false);
            };
            let session = session_from(&item)?;
            let tx = self
                .transact(vec![
                    delete(&self.table, upload_pk(id), "UPLOAD", Some((condition, vals.clone())))?,
                    delete(&self.table, blob_pk(session.blob), "UPLOAD", None)?,
                    roster_remove(&self.table, cap_pk(&session), ROSTER, id.as_str())?,
                    roster_remove(&self.table, account_pk(paying_account(&session)), RESERVED, id.as_str())?,
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
        Err(contended("removing an upload session"))
    }
}

#[async_trait]
impl UploadStore for DynamoStore {
    async fn create_upload(&self, x: &UploadSession, max_open: u32, now: OffsetDateTime) -> StoreResult<bool> {
        for attempt in 0..ATTEMPTS {
            let roster = self.roster(cap_pk(x), ROSTER).await?;
            let open = self.open_sessions(&roster).await?;
            let live = open.iter().filter(|o| o.expires_at > now).count();
            if live >= max_open as usize {
                return Ok(false);
            }
            let mut ids: Vec<String> = open.iter().map(|o| o.id.as_str().to_owned()).collect();
            ids.push(x.id.as_str().to_owned());
            let tx = self
                .transact(vec![
                    put_new(&self.table, session_item(x))?,
                    put_new(
                        &self.table,
                        ItemBuilder::new(blob_pk(x.blob), "UPLOAD")
                            .str("upload_id", x.id.as_str())
                            .build(),
                    )?,
                    roster.replace(&self.table, ids)?,
                    roster_add(&self.table, account_pk(paying_account(x)), RESERVED, x.id.as_str())?,
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
        Err(contended("creating an upload session"))
    }

    async fn upload_by_id(&self, id: &UploadId) -> StoreResult<Option<UploadSession>> {
        self.get(upload_pk(id), "UPLOAD")
            .await?
            .as_ref()
            .map(session_from)
            .transpose()
    }

    async fn lease_upload(
        &self,
        id: &UploadId,
        token: &LeaseToken,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> StoreResult<Option<UploadSession>> {
        let item = self
            .update_session(
                id,
                "SET lease_token = :token, lease_until = :until",
                "attribute_exists(PK) AND is_complete = :no AND expires_at > :now \
                 AND (attribute_not_exists(lease_until) OR lease_until <= :now)",
                values([
                    (":token", s(token.as_str())),
                    (":until", time(until)),
                    (":now", time(now)),
                    (":no", flag(false)),
                ]),
            )
            .await?;
        item.as_ref().map(session_from).transpose()
    }

    async fn renew_upload_lease(&self, id: &UploadId, token: &LeaseToken, until: OffsetDateTime) -> StoreResult<bool> {
        let item = self
            .update_session(
                id,
                "SET lease_until = :until",
                "lease_token = :token",
                values([(":token", s(token.as_str())), (":until", time(until))]),
            )
            .await?;
        Ok(item.is_some())
    }

    async fn record_upload_progress(&self, id: &UploadId, token: &LeaseToken, p: &UploadProgress) -> StoreResult<bool> {
        let mut vals = values([
            (":token", s(token.as_str())),
            (":no", flag(false)),
            (":offset", n(p.offset)),
            (":expires", time(p.expires_at)),
            (":sweep", s(ts_key(p.expires_at, id.as_str()))),
        ]);
        let mut sets = vec!["upload_offset = :offset", "expires_at = :expires", "GSI5SK = :sweep"];
        let mut removes = Vec::new();
        match p.length {
            Some(length) => {
                sets.push("upload_length = :length");
                vals.insert(":length".into(), n(length));
            }
            None => removes.push("upload_length"),
        }
        if p.hash_state.is_empty() {
            removes.push("hash_state");
        } else {
            sets.push("hash_state = :hash");
            vals.insert(":hash".into(), b(&p.hash_state));
        }
        if p.store_state.is_empty() {
            removes.push("store_state");
        } else {
            sets.push("store_state = :state");
            vals.insert(":state".into(), s(p.store_state.as_str()));
        }
        let mut expression = format!("SET {}", sets.join(", "));
        if !removes.is_empty() {
            expression.push_str(&format!(" REMOVE {}", removes.join(", ")));
        }
        let item = self
            .update_session(id, &expression, "lease_token = :token AND is_complete = :no", vals)
            .await?;
        Ok(item.is_some())
    }

    async fn release_upload(&self, id: &UploadId, token: &LeaseToken) -> StoreResult<()> {
        self.update_session(
            id,
            "REMOVE lease_token, lease_until",
            "lease_token = :token",
            values([(":token", s(token.as_str()))]),
        )
        .await?;
        Ok(())
    }

    async fn complete_upload(&self, id: &UploadId, token: &LeaseToken) -> StoreResult<bool> {
        for attempt in 0..ATTEMPTS {
            let Some(item) = self.get(upload_pk(id), "UPLOAD").await? else {
                return Ok(false);
            };
            let session = session_from(&item)?;
            let tx = self
                .transact(vec![
                    update(
                        &self.table,
                        upload_pk(id),
                        "UPLOAD",
                        "SET is_complete = :yes REMOVE hash_state, store_state, lease_token, lease_until",
                        Some("lease_token = :token"),
                        values([(":yes", flag(true)), (":token", s(token.as_str()))]),
                    )?,
                    delete(&self.table, blob_pk(session.blob), "UPLOAD", None)?,
                    roster_remove(&self.table, cap_pk(&session), ROSTER, id.as_str())?,
                    roster_remove(&self.table, account_pk(paying_account(&session)), RESERVED, id.as_str())?,
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
        Err(contended("completing an upload session"))
    }

    async fn delete_upload(&self, id: &UploadId, token: Option<&LeaseToken>) -> StoreResult<bool> {
        match token {
            Some(token) => {
                self.remove_session(id, "lease_token = :token", values([(":token", s(token.as_str()))]))
                    .await
            }
            None => {
                self.remove_session(id, "is_complete = :yes", values([(":yes", flag(true))]))
                    .await
            }
        }
    }

    async fn expired_uploads(&self, now: OffsetDateTime, limit: u32) -> StoreResult<Vec<UploadSession>> {
        // Leased sessions are skipped; a leased session is being appended to, which moves its expiry forward, so
        // few due ones are leased.
        self.due_unheld("UPLOADEXP", "lease_until", now, limit, session_from)
            .await
    }

    async fn delete_expired_upload(&self, id: &UploadId, now: OffsetDateTime) -> StoreResult<bool> {
        self.remove_session(
            id,
            "expires_at <= :now AND (attribute_not_exists(lease_until) OR lease_until <= :now)",
            values([(":now", time(now))]),
        )
        .await
    }

    async fn blob_in_open_upload(&self, blob: BlobId) -> StoreResult<bool> {
        Ok(self.get(blob_pk(blob), "UPLOAD").await?.is_some())
    }

    async fn open_upload_bytes(&self, account: Account) -> StoreResult<u64> {
        let roster = self.roster(account_pk(account), RESERVED).await?;
        let open = self.open_sessions(&roster).await?;
        Ok(open.iter().map(|x| x.length.unwrap_or(x.offset)).sum())
    }

    async fn open_link_uploads(&self, link: UploadLinkId, now: OffsetDateTime) -> StoreResult<LinkReservation> {
        let roster = self.roster(link_pk(link), ROSTER).await?;
        let open = self.open_sessions(&roster).await?;
        let live = open.iter().filter(|x| x.expires_at > now);
        Ok(LinkReservation {
            files: live.clone().count() as u64,
            bytes: live.map(|x| x.length.unwrap_or(x.offset)).sum(),
        })
    }
}
