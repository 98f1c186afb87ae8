//! [`CollaborationStore`] on DynamoDB: the commit (files, blob references, usage and upload-link counters in one
//! transaction), usage and quotas, the file listings, retention, the audit log and account flags. Teams live in
//! `teams.rs`, share and upload links in `links.rs`; this impl delegates to them.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::ReturnValue;
use handoff_core::{
    Account, AuditEvent, AuditId, AuditScope, CollaborationStore, CommitOutcome, CommitRules, FileCursor, FileKey,
    FileRecord, Membership, MembershipChange, Quota, Share, ShareId, SharePatch, StoreError, StoreResult, Team, TeamId,
    TeamRole, UploadLink, UploadLinkId, Usage, User, UserId,
};
use time::OffsetDateTime;

use crate::MAX_FILES_PER_COMMIT;
use crate::client::{ATTEMPTS, DynamoStore, Query, SkCondition, backoff, conditional, contended};
use crate::core::{account_key, blob_pk, due_files, file_item, put_new, update, user_from, user_pk, values};
use crate::item::{Item, ItemBuilder, Row, flag, key, n, time};

/// What a commit reads of an account before deciding, and the condition that keeps the decision valid.
#[derive(Debug)]
struct AccountState {
    used_bytes: u64,
    used_files: u64,
    own: Quota,
}

fn account_state(item: &Item) -> StoreResult<AccountState> {
    let r = Row(item);
    Ok(AccountState {
        used_bytes: r.count("used_bytes")?,
        used_files: r.count("used_files")?,
        own: Quota {
            bytes: r.opt_u64("quota_bytes")?,
            files: r.opt_u64("quota_files")?,
        },
    })
}

/// The condition under which charging `(bytes, files)` keeps the account within the quota it was checked
/// against: the quota attribute is still what was read (or still absent, when the default applied), and the
/// usage leaves room. DynamoDB conditions cannot add, so `used + charge <= quota` is written `used <= quota -
/// charge`, computed here.
fn quota_condition(state: &AccountState, default: Quota, bytes: u64, files: u64, vals: &mut Item) -> Option<String> {
    let mut parts = vec!["attribute_exists(PK)".to_owned()];
    for (attr, used_attr, own, default, charge, tag) in [
        ("quota_bytes", "used_bytes", state.own.bytes, default.bytes, bytes, "b"),
        ("quota_files", "used_files", state.own.files, default.files, files, "f"),
    ] {
        match own {
            Some(q) => {
                parts.push(format!("{attr} = :q{tag}"));
                vals.insert(format!(":q{tag}"), n(q));
            }
            None => parts.push(format!("attribute_not_exists({attr})")),
        }
        if let Some(limit) = own.or(default) {
            let room = limit.checked_sub(charge)?;
            parts.push(format!(
                "(attribute_not_exists({used_attr}) OR {used_attr} <= :room{tag})"
            ));
            vals.insert(format!(":room{tag}"), n(room));
        }
    }
    Some(parts.join(" AND "))
}

/// Bytes and files per account, in a fixed order.
fn per_account(files: &[FileRecord]) -> Vec<(Account, u64, u64)> {
    let mut totals: std::collections::BTreeMap<(u8, uuid::Uuid), (Account, u64, u64)> =
        std::collections::BTreeMap::new();
    for file in files {
        let account = file.account();
        let k = match account {
            Account::Team(t) => (0, t.0),
            Account::User(u) => (1, u.0),
        };
        let entry = totals.entry(k).or_insert((account, 0, 0));
        entry.1 += file.size;
        entry.2 += 1;
    }
    totals.into_values().collect()
}

fn audit_item(e: &AuditEvent) -> Item {
    let id = e.id.to_string();
    let mut item = ItemBuilder::new(format!("AUDIT#{id}"), "AUDIT")
        .str("audit_id", id.as_str())
        .at("event_at", e.at)
        .str("event_action", e.action.as_str())
        .opt_str("actor_id", e.actor.map(|u| u.to_string()))
        .opt_str("owner_id", e.owner.map(|u| u.to_string()))
        .opt_str("team_id", e.team.map(|t| t.to_string()))
        .opt_str("file_key", e.file.as_ref().map(|k| k.as_str().to_owned()))
        .opt_str("event_detail", e.detail.clone())
        .str("GSI3PK", "AUDIT")
        .str("GSI3SK", id.as_str());
    if let Some(owner) = e.owner {
        item = item
            .str("GSI1PK", format!("AUDOWNER#{owner}"))
            .str("GSI1SK", id.as_str());
    }
    if let Some(team) = e.team {
        item = item.str("GSI2PK", format!("AUDTEAM#{team}")).str("GSI2SK", id.as_str());
    }
    item.build()
}

fn audit_from(item: &Item) -> StoreResult<AuditEvent> {
    let r = Row(item);
    Ok(AuditEvent {
        id: AuditId(r.uuid("audit_id")?),
        at: r.time("event_at")?,
        action: r.str("event_action")?.to_owned(),
        actor: r.opt_uuid("actor_id")?.map(UserId),
        owner: r.opt_uuid("owner_id")?.map(UserId),
        team: r.opt_uuid("team_id")?.map(TeamId),
        file: r.opt_str("file_key")?.and_then(FileKey::parse),
        detail: r.opt_str("event_detail")?.map(str::to_owned),
    })
}

impl DynamoStore {
    async fn commit_once(&self, files: &[FileRecord], rules: &CommitRules) -> StoreResult<Option<CommitOutcome>> {
        let mut items = Vec::new();
        if let Some(link) = rules.upload_link {
            let count = files.len() as u64;
            let bytes: u64 = files.iter().map(|f| f.size).sum();
            let Some(item) = self.get(format!("ULINK#{link}"), "ULINK").await? else {
                return Ok(Some(CommitOutcome::LinkExhausted));
            };
            let r = Row(&item);
            let files_left = r.opt_u64("files_left")?;
            let bytes_left = r.opt_u64("bytes_left")?;
            if r.flag("is_revoked")?
                || r.opt_time("expires_at")?.is_some_and(|at| at <= rules.now)
                || files_left.is_some_and(|left| left < count)
                || bytes_left.is_some_and(|left| left < bytes)
            {
                return Ok(Some(CommitOutcome::LinkExhausted));
            }
            let mut vals = values([
                (":n", n(count)),
                (":b", n(bytes)),
                (":no", flag(false)),
                (":now", time(rules.now)),
            ]);
            let mut condition =
                "is_revoked = :no AND (attribute_not_exists(expires_at) OR expires_at > :now)".to_owned();
            let mut expression = "ADD files_received :n, bytes_received :b".to_owned();
            let mut sets = Vec::new();
            if files_left.is_some() {
                condition.push_str(" AND files_left >= :n");
                sets.push("files_left = files_left - :n");
            }
            if bytes_left.is_some() {
                condition.push_str(" AND bytes_left >= :b");
                sets.push("bytes_left = bytes_left - :b");
            }
            if !sets.is_empty() {
                expression = format!("SET {} {expression}", sets.join(", "));
            }
            vals.retain(|k, _| condition.contains(k.as_str()) || expression.contains(k.as_str()));
            items.push(update(
                &self.table,
                format!("ULINK#{link}"),
                "ULINK",
                &expression,
                Some(&condition),
                vals,
            )?);
        }
        let link_items = items.len();
        for (account, bytes, count) in per_account(files) {
            let (pk, sk) = account_key(account);
            let Some(item) = self.get(pk.as_str(), sk).await? else {
                return Ok(Some(CommitOutcome::QuotaExceeded));
            };
            let state = account_state(&item)?;
            let mut vals = values([(":b", n(bytes)), (":n", n(count))]);
            let condition = if rules.enforce_quota {
                let fits = |used: u64, charge: u64, limit: Option<u64>| {
                    limit.is_none_or(|max| used.checked_add(charge).is_some_and(|total| total <= max))
                };
                let bytes_limit = state.own.bytes.or(rules.default_quota.bytes);
                let files_limit = state.own.files.or(rules.default_quota.files);
                if !fits(state.used_bytes, bytes, bytes_limit) || !fits(state.used_files, count, files_limit) {
                    return Ok(Some(CommitOutcome::QuotaExceeded));
                }
                match quota_condition(&state, rules.default_quota, bytes, count, &mut vals) {
                    Some(c) => c,
                    None => return Ok(Some(CommitOutcome::QuotaExceeded)),
                }
            } else {
                "attribute_exists(PK)".to_owned()
            };
            items.push(update(
                &self.table,
                pk,
                sk,
                "ADD used_bytes :b, used_files :n",
                Some(&condition),
                vals,
            )?);
        }
        let first_file = items.len();
        for file in files {
            items.push(put_new(&self.table, file_item(file))?);
            items.push(put_new(
                &self.table,
                ItemBuilder::new(blob_pk(file.blob), "FILE")
                    .str("file_key", file.key.as_str())
                    .build(),
            )?);
        }
        let tx = self.transact(items).await?;
        if tx.done() {
            return Ok(Some(CommitOutcome::Committed));
        }
        if (first_file..first_file + 2 * files.len()).any(|i| tx.failed(i)) {
            // A key or blob that is already a file: the caller recognises a finished commit by this.
            return Err(StoreError::Conflict);
        }
        if link_items > 0 && tx.failed(0) {
            return Ok(Some(CommitOutcome::LinkExhausted));
        }
        // An account changed between the read and the write: decide again.
        Ok(None)
    }
}

#[async_trait]
impl CollaborationStore for DynamoStore {
    async fn commit_files(&self, files: &[FileRecord], rules: &CommitRules) -> StoreResult<CommitOutcome> {
        if files.len() > MAX_FILES_PER_COMMIT {
            return Err(StoreError::Other(
                format!(
                    "a commit on DynamoDB holds at most {MAX_FILES_PER_COMMIT} files (one transaction), not {}",
                    files.len()
                )
                .into(),
            ));
        }
        if files.is_empty() {
            return Ok(CommitOutcome::Committed);
        }
        for attempt in 0..ATTEMPTS {
            if let Some(outcome) = self.commit_once(files, rules).await? {
                return Ok(outcome);
            }
            backoff(attempt).await;
        }
        Err(contended("committing files"))
    }

    async fn usage(&self, account: Account, default_quota: Quota) -> StoreResult<Usage> {
        let (pk, sk) = account_key(account);
        let item = self.get(pk, sk).await?.ok_or(StoreError::NotFound)?;
        let state = account_state(&item)?;
        Ok(Usage {
            bytes: state.used_bytes,
            files: state.used_files,
            quota: Quota {
                bytes: state.own.bytes.or(default_quota.bytes),
                files: state.own.files.or(default_quota.files),
            },
        })
    }

    async fn set_quota(&self, account: Account, quota: Quota) -> StoreResult<bool> {
        let (pk, sk) = account_key(account);
        let mut sets = Vec::new();
        let mut removes = Vec::new();
        let mut vals = Item::new();
        for (attr, v, tag) in [("quota_bytes", quota.bytes, ":qb"), ("quota_files", quota.files, ":qf")] {
            match v {
                Some(v) => {
                    sets.push(format!("{attr} = {tag}"));
                    vals.insert(tag.to_owned(), n(v));
                }
                None => removes.push(attr),
            }
        }
        let mut expression = String::new();
        if !sets.is_empty() {
            expression.push_str(&format!("SET {} ", sets.join(", ")));
        }
        if !removes.is_empty() {
            expression.push_str(&format!("REMOVE {}", removes.join(", ")));
        }
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, sk)))
            .update_expression(expression.trim())
            .condition_expression("attribute_exists(PK)")
            .set_expression_attribute_values((!vals.is_empty()).then_some(vals))
            .send()
            .await;
        Ok(conditional(result)?.is_some())
    }

    async fn list_team_files(
        &self,
        team: TeamId,
        after: Option<&FileCursor>,
        limit: u32,
    ) -> StoreResult<Vec<FileRecord>> {
        self.files_newest_first("GSI1", format!("TEAM#{team}"), after, limit)
            .await
    }

    async fn list_all_files(&self, after: Option<&FileCursor>, limit: u32) -> StoreResult<Vec<FileRecord>> {
        self.files_newest_first("GSI2", "FILES".to_owned(), after, limit).await
    }

    async fn list_upload_link_files(&self, link: UploadLinkId, limit: u32) -> StoreResult<Vec<FileRecord>> {
        self.files_newest_first("GSI4", format!("LINKFILES#{link}"), None, limit)
            .await
    }

    async fn delete_expired_files(&self, now: OffsetDateTime, limit: u32) -> StoreResult<Vec<FileRecord>> {
        let mut deleted = Vec::new();
        for key in due_files(self, now, limit).await? {
            // Conditional on the row still being there and due: of several sweepers, one gets each file.
            if let Some(file) = self.remove_file(&key, Some(now)).await? {
                deleted.push(file);
            }
        }
        Ok(deleted)
    }

    async fn create_team(&self, team: &Team, owner: UserId, now: OffsetDateTime) -> StoreResult<()> {
        self.insert_team(team, owner, now).await
    }

    async fn team(&self, id: TeamId) -> StoreResult<Option<Team>> {
        self.team_by_id(id).await
    }

    async fn rename_team(&self, id: TeamId, name: &str) -> StoreResult<Option<Team>> {
        self.set_team_name(id, name).await
    }

    async fn delete_team(&self, id: TeamId) -> StoreResult<Vec<FileRecord>> {
        self.remove_team(id).await
    }

    async fn teams_of(&self, user: UserId) -> StoreResult<Vec<(Team, TeamRole)>> {
        self.teams_of_user(user).await
    }

    async fn members(&self, team: TeamId) -> StoreResult<Vec<Membership>> {
        self.team_members(team).await
    }

    async fn role_in(&self, team: TeamId, user: UserId) -> StoreResult<Option<TeamRole>> {
        self.member_role(team, user).await
    }

    async fn add_member(&self, team: TeamId, user: UserId, role: TeamRole, now: OffsetDateTime) -> StoreResult<()> {
        self.insert_member(team, user, role, now).await
    }

    async fn set_role(&self, team: TeamId, user: UserId, role: TeamRole) -> StoreResult<MembershipChange> {
        self.change_membership(team, user, Some(role)).await
    }

    async fn remove_member(&self, team: TeamId, user: UserId) -> StoreResult<MembershipChange> {
        self.change_membership(team, user, None).await
    }

    async fn create_share(&self, share: &Share, token_hash: &[u8; 32]) -> StoreResult<()> {
        self.insert_share(share, token_hash, None, share.created_at)
            .await
            .map(|_| ())
    }

    async fn create_share_within(
        &self,
        share: &Share,
        token_hash: &[u8; 32],
        max_live: u64,
        now: OffsetDateTime,
    ) -> StoreResult<bool> {
        self.insert_share(share, token_hash, Some(max_live), now).await
    }

    async fn share(&self, id: ShareId) -> StoreResult<Option<Share>> {
        self.share_by_id(id).await
    }

    async fn share_by_token(&self, token_hash: &[u8; 32]) -> StoreResult<Option<Share>> {
        self.share_with_token(token_hash).await
    }

    async fn shares_of(&self, owner: UserId) -> StoreResult<Vec<Share>> {
        self.shares_of_owner(owner).await
    }

    async fn update_share(&self, id: ShareId, patch: &SharePatch, now: OffsetDateTime) -> StoreResult<Option<Share>> {
        self.patch_share(id, patch, now).await
    }

    async fn revoke_share(&self, id: ShareId, now: OffsetDateTime) -> StoreResult<bool> {
        self.set_share_revoked(id, now).await
    }

    async fn count_share_download(&self, id: ShareId, now: OffsetDateTime) -> StoreResult<bool> {
        self.count_download(id, now).await
    }

    async fn insert_share_grant(
        &self,
        grant_hash: &[u8; 32],
        share: ShareId,
        position: u32,
        expires_at: OffsetDateTime,
    ) -> StoreResult<()> {
        self.put_grant(grant_hash, share, position, expires_at).await
    }

    async fn share_grant(&self, grant_hash: &[u8; 32], now: OffsetDateTime) -> StoreResult<Option<(ShareId, u32)>> {
        self.grant(grant_hash, now).await
    }

    async fn prune_shares(&self, before: OffsetDateTime) -> StoreResult<u64> {
        self.prune(before).await
    }

    async fn create_upload_link(&self, link: &UploadLink, token_hash: &[u8; 32]) -> StoreResult<()> {
        self.insert_upload_link(link, token_hash, None, link.created_at)
            .await
            .map(|_| ())
    }

    async fn create_upload_link_within(
        &self,
        link: &UploadLink,
        token_hash: &[u8; 32],
        max_live: u64,
        now: OffsetDateTime,
    ) -> StoreResult<bool> {
        self.insert_upload_link(link, token_hash, Some(max_live), now).await
    }

    async fn upload_link(&self, id: UploadLinkId) -> StoreResult<Option<UploadLink>> {
        self.upload_link_by_id(id).await
    }

    async fn upload_link_by_token(&self, token_hash: &[u8; 32]) -> StoreResult<Option<UploadLink>> {
        self.upload_link_with_token(token_hash).await
    }

    async fn upload_links_of(&self, owner: UserId) -> StoreResult<Vec<UploadLink>> {
        self.upload_links_of_owner(owner).await
    }

    async fn revoke_upload_link(&self, id: UploadLinkId) -> StoreResult<bool> {
        self.set_upload_link_revoked(id).await
    }

    async fn append_audit(&self, events: &[AuditEvent]) -> StoreResult<()> {
        // One transaction per 100 events (the server appends a handful at a time): all or nothing within it.
        for chunk in events.chunks(100) {
            let items = chunk
                .iter()
                .map(|e| put_new(&self.table, audit_item(e)))
                .collect::<StoreResult<Vec<_>>>()?;
            let mut done = false;
            for attempt in 0..ATTEMPTS {
                let tx = self.transact(items.clone()).await?;
                if tx.done() {
                    done = true;
                    break;
                }
                if (0..items.len()).any(|i| tx.failed(i)) {
                    return Err(StoreError::Conflict);
                }
                backoff(attempt).await;
            }
            if !done {
                return Err(contended("appending to the audit log"));
            }
        }
        Ok(())
    }

    async fn audit_page(&self, scope: AuditScope, before: Option<AuditId>, limit: u32) -> StoreResult<Vec<AuditEvent>> {
        let query = match scope {
            AuditScope::Owner(user) => Query::index("GSI1", format!("AUDOWNER#{user}")),
            AuditScope::Team(team) => Query::index("GSI2", format!("AUDTEAM#{team}")),
            AuditScope::Everything => Query::index("GSI3", "AUDIT"),
        };
        let sk = before.map_or(SkCondition::Any, |id| SkCondition::Lt(id.to_string()));
        let items = self.query(query.sk(sk).backwards().limit(limit)).await?;
        items.iter().map(audit_from).collect()
    }

    async fn set_user_flags(
        &self,
        user: UserId,
        disabled: Option<bool>,
        is_admin: Option<bool>,
    ) -> StoreResult<Option<User>> {
        let mut sets = vec!["user_id = user_id".to_owned()];
        let mut vals = Item::new();
        if let Some(d) = disabled {
            sets.push("is_disabled = :d".into());
            vals.insert(":d".into(), flag(d));
        }
        if let Some(a) = is_admin {
            sets.push("is_admin = :a".into());
            vals.insert(":a".into(), flag(a));
        }
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(user_pk(user), "USER")))
            .update_expression(format!("SET {}", sets.join(", ")))
            .condition_expression("attribute_exists(PK)")
            .set_expression_attribute_values((!vals.is_empty()).then_some(vals))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        let Some(item) = conditional(result)?.and_then(|out| out.attributes) else {
            return Ok(None);
        };
        if disabled == Some(true) {
            // Refresh tokens of a disabled account die with it; access tokens stop at the next request.
            self.revoke_families_of(user).await?;
        }
        user_from(&item).map(Some)
    }
}
