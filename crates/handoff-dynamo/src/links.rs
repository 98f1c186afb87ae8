//! Share links, their grants, and upload links. Each link is one item with a claim item for its token hash; the
//! owner's `ROSTER#LINKS` lists the links that may still be live, for the live-link cap (see `roster.rs`).
//!
//! - A share's files are a list in its item, in link order. A file deleted later simply stops being listed (the
//!   SQL backends cascade the same way): reads keep only keys whose file row still exists.
//! - A download is counted by one conditional `ADD` (`download_count < max_downloads`), so a link allowing n
//!   downloads grants exactly n.
//! - Pruning finds candidates in GSI5 under `SHARESWEEP`, keyed by the earliest time the link may go (its expiry,
//!   or the time it was revoked), and deletes each on the condition that it still qualifies.
//! - An upload link keeps `files_left`/`bytes_left` beside its counters when it has limits: the commit's
//!   condition compares them with what it takes, since conditions cannot add.

use aws_sdk_dynamodb::types::AttributeValue;
use handoff_core::{
    FileKey, Share, ShareId, SharePatch, StoreError, StoreResult, TeamId, UploadLink, UploadLinkId, UserId,
};
use time::OffsetDateTime;

use crate::client::{ATTEMPTS, DynamoStore, Query, SkCondition, backoff, conditional, contended};
use crate::core::{delete, file_pk, put_new, update, user_pk, values};
use crate::item::{Item, ItemBuilder, Row, flag, hash_hex, key, n, s, time, ts_key, ts_upto};
use crate::roster::{Roster, roster_add, roster_remove};

const ROSTER: &str = "ROSTER#LINKS";

fn share_pk(id: ShareId) -> String {
    format!("SHARE#{id}")
}

pub(crate) fn link_pk(id: UploadLinkId) -> String {
    format!("ULINK#{id}")
}

/// When a share link becomes prunable: at its expiry, or once revoked at its last update.
fn sweep_at(expires_at: Option<OffsetDateTime>, revoked_at: Option<OffsetDateTime>) -> Option<OffsetDateTime> {
    match (expires_at, revoked_at) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn share_item(share: &Share, token_hash: &[u8; 32]) -> Item {
    let id = share.id.to_string();
    let mut item = ItemBuilder::new(share_pk(share.id), "SHARE")
        .str("share_id", id.as_str())
        .str("owner_id", share.owner.to_string())
        .set(
            "file_keys",
            AttributeValue::L(share.files.iter().map(|k| s(k.as_str())).collect()),
        )
        .opt_str("note_text", share.note.clone())
        .opt_str("password_hash", share.password_hash.clone())
        .opt_at("expires_at", share.expires_at)
        .opt_num("max_downloads", share.max_downloads)
        .num("download_count", share.downloads)
        .flag("is_revoked", share.revoked)
        .at("created_at", share.created_at)
        .at("updated_at", share.updated_at)
        .str("token_hash", hash_hex(token_hash))
        .num("share_rev", 0)
        .str("GSI1PK", format!("SHARES#{}", share.owner))
        .str("GSI1SK", ts_key(share.created_at, &id));
    if let Some(at) = sweep_at(share.expires_at, share.revoked.then_some(share.updated_at)) {
        item = item.str("GSI5PK", "SHARESWEEP").str("GSI5SK", ts_key(at, &id));
    }
    item.build()
}

fn share_from(item: &Item, files: Vec<FileKey>) -> StoreResult<Share> {
    let r = Row(item);
    Ok(Share {
        id: ShareId(r.uuid("share_id")?),
        owner: UserId(r.uuid("owner_id")?),
        files,
        note: r.opt_str("note_text")?.map(str::to_owned),
        password_hash: r.opt_str("password_hash")?.map(str::to_owned),
        expires_at: r.opt_time("expires_at")?,
        max_downloads: r.opt_u64("max_downloads")?,
        downloads: r.count("download_count")?,
        revoked: r.flag("is_revoked")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}

fn share_keys(item: &Item) -> StoreResult<Vec<FileKey>> {
    Row(item)
        .strings("file_keys")?
        .iter()
        .map(|k| FileKey::parse(k).ok_or_else(|| StoreError::Corrupt("share file key".into())))
        .collect()
}

fn link_item(link: &UploadLink, token_hash: &[u8; 32]) -> Item {
    let id = link.id.to_string();
    let mut item = ItemBuilder::new(link_pk(link.id), "ULINK")
        .str("link_id", id.as_str())
        .str("owner_id", link.owner.to_string())
        .opt_str("team_id", link.team.map(|t| t.to_string()))
        .opt_str("note_text", link.note.clone())
        .opt_str("password_hash", link.password_hash.clone())
        .opt_at("expires_at", link.expires_at)
        .opt_num("max_files", link.max_files)
        .opt_num("max_bytes", link.max_bytes)
        .num("files_received", link.files_received)
        .num("bytes_received", link.bytes_received)
        .opt_num(
            "files_left",
            link.max_files.map(|m| m.saturating_sub(link.files_received)),
        )
        .opt_num(
            "bytes_left",
            link.max_bytes.map(|m| m.saturating_sub(link.bytes_received)),
        )
        .flag("is_revoked", link.revoked)
        .at("created_at", link.created_at)
        .str("token_hash", hash_hex(token_hash))
        .str("GSI1PK", format!("ULINKS#{}", link.owner))
        .str("GSI1SK", ts_key(link.created_at, &id));
    if let Some(team) = link.team {
        item = item
            .str("GSI2PK", format!("TEAMLINKS#{team}"))
            .str("GSI2SK", id.as_str());
    }
    item.build()
}

fn link_from(item: &Item) -> StoreResult<UploadLink> {
    let r = Row(item);
    Ok(UploadLink {
        id: UploadLinkId(r.uuid("link_id")?),
        owner: UserId(r.uuid("owner_id")?),
        team: r.opt_uuid("team_id")?.map(TeamId),
        note: r.opt_str("note_text")?.map(str::to_owned),
        password_hash: r.opt_str("password_hash")?.map(str::to_owned),
        expires_at: r.opt_time("expires_at")?,
        max_files: r.opt_u64("max_files")?,
        max_bytes: r.opt_u64("max_bytes")?,
        files_received: r.count("files_received")?,
        bytes_received: r.count("bytes_received")?,
        revoked: r.flag("is_revoked")?,
        created_at: r.time("created_at")?,
    })
}

/// Roster members are `S#<share id>` and `U#<upload link id>`.
fn roster_member_key(member: &str) -> Option<Item> {
    let (kind, id) = member.split_once('#')?;
    let id = uuid::Uuid::parse_str(id).ok()?;
    match kind {
        "S" => Some(key(share_pk(ShareId(id)), "SHARE")),
        "U" => Some(key(link_pk(UploadLinkId(id)), "ULINK")),
        _ => None,
    }
}

impl DynamoStore {
    /// The roster members that are live at `now`.
    async fn live_links(&self, roster: &Roster, now: OffsetDateTime) -> StoreResult<Vec<String>> {
        let mut live = Vec::new();
        for item in self.roster_items(roster, roster_member_key).await? {
            let sk = Row(&item).str("SK")?;
            if sk == "SHARE" {
                let share = share_from(&item, Vec::new())?;
                if share.is_live(now) {
                    live.push(format!("S#{}", share.id));
                }
            } else {
                let link = link_from(&item)?;
                if link.is_live(now) {
                    live.push(format!("U#{}", link.id));
                }
            }
        }
        Ok(live)
    }

    /// Writes a link item and its token claim, within the owner's live-link cap when `max_live` is given.
    async fn insert_link(
        &self,
        owner: UserId,
        member: String,
        items: [Item; 2],
        max_live: Option<u64>,
        now: OffsetDateTime,
    ) -> StoreResult<bool> {
        let max_live = max_live.filter(|m| *m < u64::MAX);
        for attempt in 0..ATTEMPTS {
            let roster_write = match max_live {
                None => roster_add(&self.table, user_pk(owner), ROSTER, &member)?,
                Some(max) => {
                    let roster = self.roster(user_pk(owner), ROSTER).await?;
                    let mut live = self.live_links(&roster, now).await?;
                    if live.len() as u64 >= max {
                        return Ok(false);
                    }
                    live.push(member.clone());
                    roster.replace(&self.table, live)?
                }
            };
            let [record, claim] = items.clone();
            let tx = self
                .transact(vec![
                    put_new(&self.table, record)?,
                    put_new(&self.table, claim)?,
                    roster_write,
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
        Err(contended("creating a link"))
    }

    /// The keys among `keys` whose file still exists, in their order.
    async fn existing_files(&self, keys: Vec<FileKey>) -> StoreResult<Vec<FileKey>> {
        if keys.is_empty() {
            return Ok(keys);
        }
        let found: std::collections::HashSet<String> = self
            .batch_get(keys.iter().map(|k| key(file_pk(k), "FILE")).collect())
            .await?
            .iter()
            .map(|i| Row(i).str("file_key").map(str::to_owned))
            .collect::<StoreResult<_>>()?;
        Ok(keys.into_iter().filter(|k| found.contains(k.as_str())).collect())
    }

    pub(crate) async fn insert_share(
        &self,
        share: &Share,
        token_hash: &[u8; 32],
        max_live: Option<u64>,
        now: OffsetDateTime,
    ) -> StoreResult<bool> {
        let claim = ItemBuilder::new(format!("SHARETOK#{}", hash_hex(token_hash)), "SHARETOK")
            .str("share_id", share.id.to_string())
            .build();
        self.insert_link(
            share.owner,
            format!("S#{}", share.id),
            [share_item(share, token_hash), claim],
            max_live,
            now,
        )
        .await
    }

    pub(crate) async fn share_by_id(&self, id: ShareId) -> StoreResult<Option<Share>> {
        let Some(item) = self.get(share_pk(id), "SHARE").await? else {
            return Ok(None);
        };
        let files = self.existing_files(share_keys(&item)?).await?;
        share_from(&item, files).map(Some)
    }

    pub(crate) async fn share_with_token(&self, token_hash: &[u8; 32]) -> StoreResult<Option<Share>> {
        let Some(claim) = self
            .get(format!("SHARETOK#{}", hash_hex(token_hash)), "SHARETOK")
            .await?
        else {
            return Ok(None);
        };
        self.share_by_id(ShareId(Row(&claim).uuid("share_id")?)).await
    }

    pub(crate) async fn shares_of_owner(&self, owner: UserId) -> StoreResult<Vec<Share>> {
        let items = self
            .query(Query::index("GSI1", format!("SHARES#{owner}")).backwards().limit(1000))
            .await?;
        let all: Vec<FileKey> = items.iter().map(share_keys).collect::<StoreResult<Vec<_>>>()?.concat();
        let existing: std::collections::HashSet<FileKey> = self.existing_files(all).await?.into_iter().collect();
        items
            .iter()
            .map(|item| {
                let files = share_keys(item)?.into_iter().filter(|k| existing.contains(k)).collect();
                share_from(item, files)
            })
            .collect()
    }

    pub(crate) async fn patch_share(
        &self,
        id: ShareId,
        patch: &SharePatch,
        now: OffsetDateTime,
    ) -> StoreResult<Option<Share>> {
        for attempt in 0..ATTEMPTS {
            let Some(item) = self.get(share_pk(id), "SHARE").await? else {
                return Ok(None);
            };
            let current = share_from(&item, Vec::new())?;
            let rev = Row(&item).count("share_rev")?;
            let expires_at = patch.expires_at.unwrap_or(current.expires_at);
            let mut sets = vec!["updated_at = :now".to_owned(), "share_rev = :next".to_owned()];
            let mut removes = Vec::new();
            let mut vals = values([(":now", time(now)), (":next", n(rev + 1)), (":rev", n(rev))]);
            let mut field = |attr: &str, tag: &str, v: Option<Option<AttributeValue>>| match v {
                None => {}
                Some(Some(v)) => {
                    sets.push(format!("{attr} = {tag}"));
                    vals.insert(tag.to_owned(), v);
                }
                Some(None) => removes.push(attr.to_owned()),
            };
            field("note_text", ":note", patch.note.clone().map(|v| v.map(s)));
            field("password_hash", ":pw", patch.password_hash.clone().map(|v| v.map(s)));
            field("expires_at", ":exp", patch.expires_at.map(|v| v.map(time)));
            field("max_downloads", ":max", patch.max_downloads.map(|v| v.map(n)));
            let sweep = sweep_at(expires_at, current.revoked.then_some(now));
            field("GSI5SK", ":sweep", Some(sweep.map(|at| s(ts_key(at, &id.to_string())))));
            field("GSI5PK", ":sweeppk", Some(sweep.map(|_| s("SHARESWEEP"))));
            let mut expression = format!("SET {}", sets.join(", "));
            if !removes.is_empty() {
                expression.push_str(&format!(" REMOVE {}", removes.join(", ")));
            }
            let tx = self
                .transact(vec![
                    update(
                        &self.table,
                        share_pk(id),
                        "SHARE",
                        &expression,
                        Some("share_rev = :rev"),
                        vals,
                    )?,
                    // A link made live again (a later expiry, more downloads) counts against the cap again.
                    roster_add(&self.table, user_pk(current.owner), ROSTER, &format!("S#{id}"))?,
                ])
                .await?;
            if tx.done() {
                return self.share_by_id(id).await;
            }
            backoff(attempt).await;
        }
        Err(contended("updating a share link"))
    }

    pub(crate) async fn set_share_revoked(&self, id: ShareId, now: OffsetDateTime) -> StoreResult<bool> {
        for attempt in 0..ATTEMPTS {
            let Some(item) = self.get(share_pk(id), "SHARE").await? else {
                return Ok(false);
            };
            let current = share_from(&item, Vec::new())?;
            let rev = Row(&item).count("share_rev")?;
            let sweep = sweep_at(current.expires_at, Some(now)).unwrap_or(now);
            let result = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key(share_pk(id), "SHARE")))
                .update_expression(
                    "SET is_revoked = :yes, updated_at = :now, share_rev = :next, GSI5PK = :pk, GSI5SK = :sweep",
                )
                .condition_expression("share_rev = :rev")
                .set_expression_attribute_values(Some(values([
                    (":yes", flag(true)),
                    (":now", time(now)),
                    (":next", n(rev + 1)),
                    (":rev", n(rev)),
                    (":pk", s("SHARESWEEP")),
                    (":sweep", s(ts_key(sweep, &id.to_string()))),
                ])))
                .send()
                .await;
            if conditional(result)?.is_some() {
                return Ok(true);
            }
            backoff(attempt).await;
        }
        Err(contended("revoking a share link"))
    }

    pub(crate) async fn count_download(&self, id: ShareId, now: OffsetDateTime) -> StoreResult<bool> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(share_pk(id), "SHARE")))
            .update_expression("ADD download_count :one")
            .condition_expression(
                "attribute_exists(PK) AND is_revoked = :no \
                 AND (attribute_not_exists(expires_at) OR expires_at > :now) \
                 AND (attribute_not_exists(max_downloads) OR download_count < max_downloads)",
            )
            .set_expression_attribute_values(Some(values([
                (":one", n(1)),
                (":no", flag(false)),
                (":now", time(now)),
            ])))
            .send()
            .await;
        Ok(conditional(result)?.is_some())
    }

    pub(crate) async fn put_grant(
        &self,
        grant_hash: &[u8; 32],
        share: ShareId,
        position: u32,
        expires_at: OffsetDateTime,
    ) -> StoreResult<()> {
        let hex = hash_hex(grant_hash);
        let item = ItemBuilder::new(format!("GRANT#{hex}"), "GRANT")
            .str("share_id", share.to_string())
            .num("file_position", position)
            .at("expires_at", expires_at)
            .str("GSI5PK", "GRANTEXP")
            .str("GSI5SK", ts_key(expires_at, &hex))
            .build();
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(PK)")
            .send()
            .await;
        conditional(result)?.map(|_| ()).ok_or(StoreError::Conflict)
    }

    pub(crate) async fn grant(
        &self,
        grant_hash: &[u8; 32],
        now: OffsetDateTime,
    ) -> StoreResult<Option<(ShareId, u32)>> {
        let Some(item) = self.get(format!("GRANT#{}", hash_hex(grant_hash)), "GRANT").await? else {
            return Ok(None);
        };
        let r = Row(&item);
        if r.time("expires_at")? <= now {
            return Ok(None);
        }
        let share = ShareId(r.uuid("share_id")?);
        // Grants go with their link (the SQL backends cascade).
        if self.get(share_pk(share), "SHARE").await?.is_none() {
            return Ok(None);
        }
        let position =
            u32::try_from(r.u64("file_position")?).map_err(|_| StoreError::Corrupt("grant position".into()))?;
        Ok(Some((share, position)))
    }

    pub(crate) async fn prune(&self, before: OffsetDateTime) -> StoreResult<u64> {
        let grants = self
            .query(Query::index("GSI5", "GRANTEXP").sk(SkCondition::Le(ts_upto(before))))
            .await?;
        for item in &grants {
            let pk = Row(item).str("PK")?;
            let result = self
                .client
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(key(pk, "GRANT")))
                .condition_expression("expires_at <= :b")
                .expression_attribute_values(":b", time(before))
                .send()
                .await;
            conditional(result)?;
        }
        let shares = self
            .query(Query::index("GSI5", "SHARESWEEP").sk(SkCondition::Le(ts_upto(before))))
            .await?;
        let mut pruned = 0;
        for item in &shares {
            let r = Row(item);
            let id = ShareId(r.uuid("share_id")?);
            let owner = UserId(r.uuid("owner_id")?);
            let tx = self
                .transact(vec![
                    delete(
                        &self.table,
                        share_pk(id),
                        "SHARE",
                        Some((
                            "(attribute_exists(expires_at) AND expires_at <= :b) \
                             OR (is_revoked = :yes AND updated_at <= :b)",
                            values([(":b", time(before)), (":yes", flag(true))]),
                        )),
                    )?,
                    delete(
                        &self.table,
                        format!("SHARETOK#{}", r.str("token_hash")?),
                        "SHARETOK",
                        None,
                    )?,
                    roster_remove(&self.table, user_pk(owner), ROSTER, &format!("S#{id}"))?,
                ])
                .await?;
            if tx.done() {
                pruned += 1;
            }
        }
        Ok(pruned)
    }

    pub(crate) async fn insert_upload_link(
        &self,
        link: &UploadLink,
        token_hash: &[u8; 32],
        max_live: Option<u64>,
        now: OffsetDateTime,
    ) -> StoreResult<bool> {
        let claim = ItemBuilder::new(format!("ULTOK#{}", hash_hex(token_hash)), "ULTOK")
            .str("link_id", link.id.to_string())
            .build();
        self.insert_link(
            link.owner,
            format!("U#{}", link.id),
            [link_item(link, token_hash), claim],
            max_live,
            now,
        )
        .await
    }

    pub(crate) async fn upload_link_by_id(&self, id: UploadLinkId) -> StoreResult<Option<UploadLink>> {
        self.get(link_pk(id), "ULINK")
            .await?
            .as_ref()
            .map(link_from)
            .transpose()
    }

    pub(crate) async fn upload_link_with_token(&self, token_hash: &[u8; 32]) -> StoreResult<Option<UploadLink>> {
        let Some(claim) = self.get(format!("ULTOK#{}", hash_hex(token_hash)), "ULTOK").await? else {
            return Ok(None);
        };
        self.upload_link_by_id(UploadLinkId(Row(&claim).uuid("link_id")?)).await
    }

    pub(crate) async fn upload_links_of_owner(&self, owner: UserId) -> StoreResult<Vec<UploadLink>> {
        let items = self
            .query(Query::index("GSI1", format!("ULINKS#{owner}")).backwards().limit(1000))
            .await?;
        items.iter().map(link_from).collect()
    }

    pub(crate) async fn set_upload_link_revoked(&self, id: UploadLinkId) -> StoreResult<bool> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(link_pk(id), "ULINK")))
            .update_expression("SET is_revoked = :yes")
            .condition_expression("attribute_exists(PK)")
            .expression_attribute_values(":yes", flag(true))
            .send()
            .await;
        Ok(conditional(result)?.is_some())
    }

    /// Deletes an upload link with its token claim (when its team goes).
    pub(crate) async fn remove_upload_link(&self, id: UploadLinkId) -> StoreResult<()> {
        let Some(item) = self.get(link_pk(id), "ULINK").await? else {
            return Ok(());
        };
        let r = Row(&item);
        let owner = UserId(r.uuid("owner_id")?);
        self.transact(vec![
            delete(&self.table, link_pk(id), "ULINK", None)?,
            delete(&self.table, format!("ULTOK#{}", r.str("token_hash")?), "ULTOK", None)?,
            roster_remove(&self.table, user_pk(owner), ROSTER, &format!("U#{id}"))?,
        ])
        .await?;
        Ok(())
    }
}
