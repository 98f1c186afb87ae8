//! Teams: shared spaces with members and roles (`owner`, `admin`, `member`, `viewer`). Membership management
//! follows [`TeamRole::manages`]; the store refuses, atomically, anything that would leave a team without an owner.
//! What each role may do to team files is decided by the access policy (`handoff_core::file_access`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use handoff_core::{Account, AuditScope, FileName, MembershipChange, StoreError, Team, TeamId, TeamRole, User};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::audit::{AuditQuery, Event, EventList};
use crate::auth::{AuthUser, UsageView, user_named};
use crate::error::{ApiError, ApiJson, ApiQuery, ApiResult, Problem};
use crate::files::{FileList, ListQuery, parse_team_id, role_insufficient, team_not_found, team_role};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_team, list_teams))
        .routes(routes!(get_team, rename_team, delete_team))
        .routes(routes!(add_member))
        .routes(routes!(change_member, remove_member))
        .routes(routes!(transfer))
        .routes(routes!(team_files))
        .routes(routes!(team_audit))
}

const MAX_TEAM_NAME_BYTES: usize = 100;

fn team_name(raw: &str) -> ApiResult<String> {
    FileName::parse(raw, MAX_TEAM_NAME_BYTES)
        .map(|n| n.as_str().to_owned())
        .map_err(|_| ApiError::bad_request("invalid_team_name", "a team name is 1 to 100 bytes"))
}

fn parse_role(raw: &str) -> ApiResult<TeamRole> {
    TeamRole::parse(raw)
        .ok_or_else(|| ApiError::bad_request("invalid_role", "role must be one of owner, admin, member, viewer"))
}

fn last_owner() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "last_owner",
        "a team must keep an owner: make someone else owner first",
    )
}

fn member_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "member_not_found", "no such member in this team")
}

fn role_schema() -> utoipa::openapi::schema::Schema {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(["owner", "admin", "member", "viewer"]))
        .into()
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TeamCreate {
    #[schema(example = "Design")]
    name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TeamSummary {
    id: String,
    name: String,
    /// Your role in the team.
    #[schema(schema_with = role_schema)]
    role: TeamRole,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    created_at: OffsetDateTime,
}

impl TeamSummary {
    fn new(team: &Team, role: TeamRole) -> Self {
        Self {
            id: team.id.to_string(),
            name: team.name.clone(),
            role,
            created_at: team.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TeamList {
    teams: Vec<TeamSummary>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberView {
    username: String,
    #[schema(schema_with = role_schema)]
    role: TeamRole,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    added_at: OffsetDateTime,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TeamView {
    #[serde(flatten)]
    team: TeamSummary,
    members: Vec<MemberView>,
    usage: UsageView,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberAdd {
    username: String,
    /// Default `member`.
    #[schema(schema_with = role_schema)]
    role: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleChange {
    #[schema(schema_with = role_schema)]
    role: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    /// The member who becomes an owner; you become an admin.
    username: String,
}

async fn team_view(state: &AppState, team: &Team, role: TeamRole) -> ApiResult<TeamView> {
    let members = state.meta.members(team.id).await?;
    let account = Account::Team(team.id);
    let usage = state
        .meta
        .usage(account, state.config.quotas.default_for(account))
        .await?;
    Ok(TeamView {
        team: TeamSummary::new(team, role),
        members: members
            .into_iter()
            .map(|m| MemberView {
                username: m.username.to_string(),
                role: m.role,
                added_at: m.added_at,
            })
            .collect(),
        usage: usage.into(),
    })
}

/// The team and the caller's role in it; 404 for teams the caller is not in.
async fn my_team(state: &AppState, raw_id: &str, user: &User) -> ApiResult<(Team, TeamRole)> {
    let id = parse_team_id(raw_id)?;
    let role = team_role(state, id, user).await?;
    let team = state.meta.team(id).await?.ok_or_else(team_not_found)?;
    Ok((team, role))
}

async fn member_role(state: &AppState, team: TeamId, user: &User) -> ApiResult<TeamRole> {
    state.meta.role_in(team, user.id).await?.ok_or_else(member_not_found)
}

/// Create a team; you become its owner.
#[utoipa::path(post, path = "/teams", tag = "teams", security(("bearer" = [])), request_body = TeamCreate,
    responses(
        (status = 201, description = "Created", body = TeamView),
        (status = 400, description = "Invalid name", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
    ))]
async fn create_team(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiJson(req): ApiJson<TeamCreate>,
) -> ApiResult<impl IntoResponse> {
    let now = handoff_core::now();
    let team = Team {
        id: TeamId::generate(),
        name: team_name(&req.name)?,
        created_at: now,
    };
    state.meta.create_team(&team, user.id, now).await?;
    state
        .audit
        .record(
            Event::new("team.create")
                .by(&user)
                .team(team.id)
                .with("name", team.name.as_str()),
        )
        .await;
    Ok((
        StatusCode::CREATED,
        Json(team_view(&state, &team, TeamRole::Owner).await?),
    ))
}

/// The teams you are in, with your role in each.
#[utoipa::path(get, path = "/teams", tag = "teams", security(("bearer" = [])),
    responses(
        (status = 200, description = "Your teams", body = TeamList),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_teams(State(state): State<AppState>, AuthUser(user): AuthUser) -> ApiResult<Json<TeamList>> {
    let teams = state.meta.teams_of(user.id).await?;
    Ok(Json(TeamList {
        teams: teams.iter().map(|(t, r)| TeamSummary::new(t, *r)).collect(),
    }))
}

/// A team with its members and usage (members only).
#[utoipa::path(get, path = "/teams/{id}", tag = "teams", security(("bearer" = [])),
    params(("id" = String, Path, description = "Team id")),
    responses(
        (status = 200, description = "The team", body = TeamView),
        (status = 404, description = "No such team among yours", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_team(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<TeamView>> {
    let (team, role) = my_team(&state, &id, &user).await?;
    Ok(Json(team_view(&state, &team, role).await?))
}

/// Rename a team (owners and admins).
#[utoipa::path(patch, path = "/teams/{id}", tag = "teams", security(("bearer" = [])), request_body = TeamCreate,
    params(("id" = String, Path, description = "Team id")),
    responses(
        (status = 200, description = "Renamed", body = TeamView),
        (status = 400, description = "Invalid name", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Your role does not allow it", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such team among yours", body = Problem, content_type = "application/problem+json"),
    ))]
async fn rename_team(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<TeamCreate>,
) -> ApiResult<Json<TeamView>> {
    let (team, role) = my_team(&state, &id, &user).await?;
    if role > TeamRole::Admin {
        return Err(role_insufficient("only owners and admins rename a team"));
    }
    let name = team_name(&req.name)?;
    let renamed = state
        .meta
        .rename_team(team.id, &name)
        .await?
        .ok_or_else(team_not_found)?;
    state
        .audit
        .record(Event::new("team.rename").by(&user).team(team.id).with("name", name))
        .await;
    Ok(Json(team_view(&state, &renamed, role).await?))
}

/// Delete a team with all its files, links and memberships (owners only).
#[utoipa::path(delete, path = "/teams/{id}", tag = "teams", security(("bearer" = [])),
    params(("id" = String, Path, description = "Team id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Only owners delete a team", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such team among yours", body = Problem, content_type = "application/problem+json"),
    ))]
async fn delete_team(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let (team, role) = my_team(&state, &id, &user).await?;
    if role != TeamRole::Owner {
        return Err(role_insufficient("only owners delete a team"));
    }
    let files = state.meta.delete_team(team.id).await?;
    for file in &files {
        if let Err(e) = state.blobs.delete(file.blob).await {
            tracing::warn!(blob = %file.blob, error = %e, "blob of a deleted team file left for the collector");
        }
    }
    state
        .audit
        .record(
            Event::new("team.delete")
                .by(&user)
                .owner(user.id)
                .with("name", team.name.as_str())
                .with("files", files.len()),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Add a member (owners add anyone; admins add members and viewers).
#[utoipa::path(post, path = "/teams/{id}/members", tag = "teams", security(("bearer" = [])), request_body = MemberAdd,
    params(("id" = String, Path, description = "Team id")),
    responses(
        (status = 201, description = "Added; the team", body = TeamView),
        (status = 400, description = "Invalid role", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Your role does not allow it", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such team among yours, or no such user", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already a member", body = Problem, content_type = "application/problem+json"),
    ))]
async fn add_member(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<MemberAdd>,
) -> ApiResult<impl IntoResponse> {
    let (team, role) = my_team(&state, &id, &user).await?;
    let new_role = req.role.as_deref().map_or(Ok(TeamRole::Member), parse_role)?;
    if !role.manages(new_role) {
        return Err(role_insufficient("your role cannot grant this role"));
    }
    let member = user_named(&state, &req.username).await?;
    state
        .meta
        .add_member(team.id, member.id, new_role, handoff_core::now())
        .await
        .map_err(|e| match e {
            StoreError::Conflict => ApiError::new(StatusCode::CONFLICT, "already_member", "already a member"),
            other => other.into(),
        })?;
    state
        .audit
        .record(
            Event::new("team.member_add")
                .by(&user)
                .team(team.id)
                .with("username", member.username.as_str())
                .with("role", new_role.as_str()),
        )
        .await;
    Ok((StatusCode::CREATED, Json(team_view(&state, &team, role).await?)))
}

/// Change a member's role. Owners change anyone's (their own too, if another owner remains); admins move members
/// and viewers between those two roles.
#[utoipa::path(patch, path = "/teams/{id}/members/{username}", tag = "teams", security(("bearer" = [])),
    request_body = RoleChange,
    params(("id" = String, Path, description = "Team id"), ("username" = String, Path, description = "The member")),
    responses(
        (status = 200, description = "Changed; the team", body = TeamView),
        (status = 400, description = "Invalid role", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Your role does not allow it", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such team among yours, or no such member", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "That would leave the team without an owner", body = Problem, content_type = "application/problem+json"),
    ))]
async fn change_member(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path((id, username)): Path<(String, String)>,
    ApiJson(req): ApiJson<RoleChange>,
) -> ApiResult<Json<TeamView>> {
    let (team, role) = my_team(&state, &id, &user).await?;
    let new_role = parse_role(&req.role)?;
    let member = user_named(&state, &username).await.map_err(|_| member_not_found())?;
    let current = member_role(&state, team.id, &member).await?;
    if !(role.manages(current) && role.manages(new_role)) {
        return Err(role_insufficient("your role cannot make this change"));
    }
    match state.meta.set_role(team.id, member.id, new_role).await? {
        MembershipChange::Done => {}
        MembershipChange::NotMember => return Err(member_not_found()),
        MembershipChange::LastOwner => return Err(last_owner()),
    }
    state
        .audit
        .record(
            Event::new("team.member_role")
                .by(&user)
                .team(team.id)
                .with("username", member.username.as_str())
                .with("role", new_role.as_str()),
        )
        .await;
    let my_role = if member.id == user.id { new_role } else { role };
    Ok(Json(team_view(&state, &team, my_role).await?))
}

/// Remove a member, or leave (your own username). The last owner cannot leave.
#[utoipa::path(delete, path = "/teams/{id}/members/{username}", tag = "teams", security(("bearer" = [])),
    params(("id" = String, Path, description = "Team id"), ("username" = String, Path, description = "The member")),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "Your role does not allow it", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such team among yours, or no such member", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The last owner cannot leave", body = Problem, content_type = "application/problem+json"),
    ))]
async fn remove_member(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path((id, username)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let (team, role) = my_team(&state, &id, &user).await?;
    let member = user_named(&state, &username).await.map_err(|_| member_not_found())?;
    let current = member_role(&state, team.id, &member).await?;
    if member.id != user.id && !role.manages(current) {
        return Err(role_insufficient("your role cannot remove this member"));
    }
    match state.meta.remove_member(team.id, member.id).await? {
        MembershipChange::Done => {}
        MembershipChange::NotMember => return Err(member_not_found()),
        MembershipChange::LastOwner => return Err(last_owner()),
    }
    state
        .audit
        .record(
            Event::new("team.member_remove")
                .by(&user)
                .team(team.id)
                .with("username", member.username.as_str()),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Hand the team over: the named member becomes an owner and you become an admin (owners only).
#[utoipa::path(post, path = "/teams/{id}/transfer", tag = "teams", security(("bearer" = [])), request_body = Transfer,
    params(("id" = String, Path, description = "Team id")),
    responses(
        (status = 200, description = "Transferred; the team", body = TeamView),
        (status = 403, description = "Only owners transfer a team", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such team among yours, or no such member", body = Problem, content_type = "application/problem+json"),
    ))]
async fn transfer(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<Transfer>,
) -> ApiResult<Json<TeamView>> {
    let (team, role) = my_team(&state, &id, &user).await?;
    if role != TeamRole::Owner {
        return Err(role_insufficient("only owners transfer a team"));
    }
    let member = user_named(&state, &req.username)
        .await
        .map_err(|_| member_not_found())?;
    member_role(&state, team.id, &member).await?;
    // Promote first, then step down: the team has an owner at every moment.
    if state.meta.set_role(team.id, member.id, TeamRole::Owner).await? != MembershipChange::Done {
        return Err(member_not_found());
    }
    let mine = if member.id == user.id {
        TeamRole::Owner
    } else {
        match state.meta.set_role(team.id, user.id, TeamRole::Admin).await? {
            MembershipChange::Done => TeamRole::Admin,
            MembershipChange::NotMember => return Err(team_not_found()),
            MembershipChange::LastOwner => return Err(last_owner()),
        }
    };
    state
        .audit
        .record(
            Event::new("team.transfer")
                .by(&user)
                .team(team.id)
                .with("username", member.username.as_str()),
        )
        .await;
    Ok(Json(team_view(&state, &team, mine).await?))
}

/// The team's files, newest first (every role).
#[utoipa::path(get, path = "/teams/{id}/files", tag = "teams", security(("bearer" = [])),
    params(("id" = String, Path, description = "Team id"), ListQuery),
    responses(
        (status = 200, description = "A page of the team's files", body = FileList),
        (status = 400, description = "Bad cursor or limit", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such team among yours", body = Problem, content_type = "application/problem+json"),
    ))]
async fn team_files(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<FileList>> {
    let (team, _role) = my_team(&state, &id, &user).await?;
    let (limit, after) = query.page(&state)?;
    let files = state
        .meta
        .list_team_files(team.id, after.as_ref(), limit.saturating_add(1))
        .await?;
    Ok(Json(FileList::page(files, limit)))
}

/// The team's audit log (owners and admins).
#[utoipa::path(get, path = "/teams/{id}/audit", tag = "teams", security(("bearer" = [])),
    params(("id" = String, Path, description = "Team id"), AuditQuery),
    responses(
        (status = 200, description = "Events, newest first", body = EventList),
        (status = 403, description = "Your role does not allow it", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such team among yours", body = Problem, content_type = "application/problem+json"),
    ))]
async fn team_audit(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> ApiResult<Json<EventList>> {
    let (team, role) = my_team(&state, &id, &user).await?;
    if role > TeamRole::Admin {
        return Err(role_insufficient("only owners and admins read the team's audit log"));
    }
    crate::audit::page(&state, AuditScope::Team(team.id), query).await
}
