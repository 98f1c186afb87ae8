//! Teams and memberships. The team item (`TEAM#<id>` / `TEAM`) carries its name, usage, quota and
//! `owner_count`; memberships sit in the team's partition (`MEMBER#<user>`, so a team's members are one strongly
//! consistent query) and in GSI1 under `USERTEAMS#<user>` (a user's teams). The last-owner rule is a condition on
//! `owner_count` in the same transaction as the membership change.

use aws_sdk_dynamodb::types::ReturnValue;
use handoff_core::{
    FileKey, FileRecord, Membership, MembershipChange, StoreError, StoreResult, Team, TeamId, TeamRole, UserId,
};
use time::OffsetDateTime;

use crate::client::{ATTEMPTS, DynamoStore, Query, SkCondition, backoff, conditional, contended};
use crate::core::{check, delete, put_new, team_pk, update, values};
use crate::item::{Item, ItemBuilder, Row, key, n, s};

fn member_sk(user: UserId) -> String {
    format!("MEMBER#{user}")
}

fn team_from(item: &Item) -> StoreResult<Team> {
    let r = Row(item);
    Ok(Team {
        id: TeamId(r.uuid("team_id")?),
        name: r.str("team_name")?.to_owned(),
        created_at: r.time("created_at")?,
    })
}

fn role_of(item: &Item) -> StoreResult<TeamRole> {
    let role = Row(item).str("team_role")?;
    TeamRole::parse(role).ok_or_else(|| StoreError::Corrupt(format!("role {role}")))
}

fn member_item(team: TeamId, user: UserId, role: TeamRole, now: OffsetDateTime) -> Item {
    ItemBuilder::new(team_pk(team), member_sk(user))
        .str("team_id", team.to_string())
        .str("user_id", user.to_string())
        .str("team_role", role.as_str())
        .at("added_at", now)
        .str("GSI1PK", format!("USERTEAMS#{user}"))
        .str("GSI1SK", team.to_string())
        .build()
}

impl DynamoStore {
    pub(crate) async fn insert_team(&self, team: &Team, owner: UserId, now: OffsetDateTime) -> StoreResult<()> {
        let tx = self
            .transact(vec![
                put_new(
                    &self.table,
                    ItemBuilder::new(team_pk(team.id), "TEAM")
                        .str("team_id", team.id.to_string())
                        .str("team_name", team.name.as_str())
                        .at("created_at", team.created_at)
                        .num("used_bytes", 0)
                        .num("used_files", 0)
                        .num("owner_count", 1)
                        .build(),
                )?,
                put_new(&self.table, member_item(team.id, owner, TeamRole::Owner, now))?,
            ])
            .await?;
        match tx {
            t if t.done() => Ok(()),
            t if t.failed(0) || t.failed(1) => Err(StoreError::Conflict),
            _ => Err(contended("creating a team")),
        }
    }

    pub(crate) async fn team_by_id(&self, id: TeamId) -> StoreResult<Option<Team>> {
        self.get(team_pk(id), "TEAM").await?.as_ref().map(team_from).transpose()
    }

    pub(crate) async fn set_team_name(&self, id: TeamId, name: &str) -> StoreResult<Option<Team>> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(team_pk(id), "TEAM")))
            .update_expression("SET team_name = :name")
            .condition_expression("attribute_exists(PK)")
            .expression_attribute_values(":name", s(name))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        conditional(result)?
            .and_then(|out| out.attributes)
            .as_ref()
            .map(team_from)
            .transpose()
    }

    /// Deletes the team item first (so no commit can charge it any more), then its files, links and
    /// memberships.
    pub(crate) async fn remove_team(&self, id: TeamId) -> StoreResult<Vec<FileRecord>> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(team_pk(id), "TEAM")))
            .send()
            .await
            .map_err(crate::client::sdk_error)?;
        let mut files = Vec::new();
        let listed = self.query(Query::index("GSI1", format!("TEAM#{id}"))).await?;
        for item in &listed {
            let key =
                FileKey::parse(Row(item).str("file_key")?).ok_or_else(|| StoreError::Corrupt("file key".into()))?;
            if let Some(file) = self.remove_file(&key, None).await? {
                files.push(file);
            }
        }
        let links = self.query(Query::index("GSI2", format!("TEAMLINKS#{id}"))).await?;
        for item in &links {
            let link = handoff_core::UploadLinkId(Row(item).uuid("link_id")?);
            self.remove_upload_link(link).await?;
        }
        let members = self
            .query(Query::table(team_pk(id)).sk(SkCondition::BeginsWith("MEMBER#".into())))
            .await?;
        for item in &members {
            let user = UserId(Row(item).uuid("user_id")?);
            self.client
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(key(team_pk(id), member_sk(user))))
                .send()
                .await
                .map_err(crate::client::sdk_error)?;
        }
        Ok(files)
    }

    pub(crate) async fn teams_of_user(&self, user: UserId) -> StoreResult<Vec<(Team, TeamRole)>> {
        let memberships = self.query(Query::index("GSI1", format!("USERTEAMS#{user}"))).await?;
        let mut roles = std::collections::HashMap::new();
        for item in &memberships {
            roles.insert(Row(item).uuid("team_id")?, role_of(item)?);
        }
        let keys = roles.keys().map(|t| key(team_pk(TeamId(*t)), "TEAM")).collect();
        let mut teams = Vec::new();
        for item in self.batch_get(keys).await? {
            let team = team_from(&item)?;
            if let Some(role) = roles.get(&team.id.0) {
                teams.push((team, *role));
            }
        }
        teams.sort_by(|(a, _), (b, _)| (a.name.as_str(), a.id).cmp(&(b.name.as_str(), b.id)));
        Ok(teams)
    }

    pub(crate) async fn team_members(&self, team: TeamId) -> StoreResult<Vec<Membership>> {
        let items = self
            .query(Query::table(team_pk(team)).sk(SkCondition::BeginsWith("MEMBER#".into())))
            .await?;
        let mut entries = Vec::new();
        for item in &items {
            entries.push((
                UserId(Row(item).uuid("user_id")?),
                role_of(item)?,
                Row(item).time("added_at")?,
            ));
        }
        let ids: Vec<UserId> = entries.iter().map(|(u, _, _)| *u).collect();
        let users: std::collections::HashMap<UserId, handoff_core::Username> = self
            .users_by_ids(&ids)
            .await?
            .into_iter()
            .map(|u| (u.id, u.username))
            .collect();
        let mut members: Vec<Membership> = entries
            .into_iter()
            .filter_map(|(user, role, added_at)| {
                users.get(&user).map(|username| Membership {
                    user,
                    username: username.clone(),
                    role,
                    added_at,
                })
            })
            .collect();
        members.sort_by(|a, b| a.username.as_str().cmp(b.username.as_str()));
        Ok(members)
    }

    pub(crate) async fn member_role(&self, team: TeamId, user: UserId) -> StoreResult<Option<TeamRole>> {
        self.get(team_pk(team), member_sk(user))
            .await?
            .as_ref()
            .map(role_of)
            .transpose()
    }

    pub(crate) async fn insert_member(
        &self,
        team: TeamId,
        user: UserId,
        role: TeamRole,
        now: OffsetDateTime,
    ) -> StoreResult<()> {
        let team_item = if role == TeamRole::Owner {
            update(
                &self.table,
                team_pk(team),
                "TEAM",
                "ADD owner_count :one",
                Some("attribute_exists(PK)"),
                values([(":one", n(1))]),
            )?
        } else {
            check(&self.table, team_pk(team), "TEAM", "attribute_exists(PK)", Item::new())?
        };
        for attempt in 0..ATTEMPTS {
            let tx = self
                .transact(vec![
                    put_new(&self.table, member_item(team, user, role, now))?,
                    team_item.clone(),
                    check(
                        &self.table,
                        crate::core::user_pk(user),
                        "USER",
                        "attribute_exists(PK)",
                        Item::new(),
                    )?,
                ])
                .await?;
            if tx.done() {
                return Ok(());
            }
            if tx.failed(0) {
                return Err(StoreError::Conflict);
            }
            if tx.failed(1) || tx.failed(2) {
                return Err(StoreError::NotFound);
            }
            backoff(attempt).await;
        }
        Err(contended("adding a member"))
    }

    /// Sets a member's role (`Some`) or removes them (`None`), refusing to leave the team without an owner: the
    /// change and the team's `owner_count` move in one transaction, conditioned on the role that was read and on
    /// another owner remaining.
    pub(crate) async fn change_membership(
        &self,
        team: TeamId,
        user: UserId,
        role: Option<TeamRole>,
    ) -> StoreResult<MembershipChange> {
        for attempt in 0..ATTEMPTS {
            let Some(item) = self.get(team_pk(team), member_sk(user)).await? else {
                return Ok(MembershipChange::NotMember);
            };
            let current = role_of(&item)?;
            let was_owner = current == TeamRole::Owner;
            let is_owner = role == Some(TeamRole::Owner);
            let same = values([(":current", s(current.as_str()))]);
            let mut items = vec![match role {
                Some(role) => {
                    let mut vals = same.clone();
                    vals.insert(":role".into(), s(role.as_str()));
                    update(
                        &self.table,
                        team_pk(team),
                        member_sk(user),
                        "SET team_role = :role",
                        Some("team_role = :current"),
                        vals,
                    )?
                }
                None => delete(
                    &self.table,
                    team_pk(team),
                    member_sk(user),
                    Some(("team_role = :current", same.clone())),
                )?,
            }];
            if was_owner && !is_owner {
                items.push(update(
                    &self.table,
                    team_pk(team),
                    "TEAM",
                    "ADD owner_count :minus",
                    Some("owner_count > :one"),
                    values([(":minus", n(-1)), (":one", n(1))]),
                )?);
            } else if is_owner && !was_owner {
                items.push(update(
                    &self.table,
                    team_pk(team),
                    "TEAM",
                    "ADD owner_count :one",
                    Some("attribute_exists(PK)"),
                    values([(":one", n(1))]),
                )?);
            }
            let tx = self.transact(items).await?;
            if tx.done() {
                return Ok(MembershipChange::Done);
            }
            if was_owner && !is_owner && tx.failed(1) && !tx.failed(0) {
                return Ok(MembershipChange::LastOwner);
            }
            backoff(attempt).await;
        }
        Err(contended("changing a membership"))
    }
}
