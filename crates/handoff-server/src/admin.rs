//! Server administration (`/admin/…`, admins only): accounts (disable, enable, promote, quotas), team quotas,
//! every file, and the whole audit log. Also `GET /audit`, the events on the caller's own things.
//!
//! The first account created on a server is an admin, as is any username listed in `auth.admins`. Disabling an
//! account revokes its refresh tokens, and its access tokens stop working on their next request (every request
//! reads the account).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use handoff_core::{Account, AuditScope, Quota, TeamId, User, UserId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::audit::{AuditQuery, Event, EventList};
use crate::auth::{AuthUser, UsageView, user_named};
use crate::error::{ApiError, ApiJson, ApiQuery, ApiResult, Problem};
use crate::files::{FileList, ListQuery};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(my_audit))
        .routes(routes!(list_users))
        .routes(routes!(update_user))
        .routes(routes!(update_team))
        .routes(routes!(all_files))
        .routes(routes!(all_audit))
}

fn require_admin(user: &User) -> ApiResult<()> {
    if user.is_admin {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_only",
            "only server admins may do this",
        ))
    }
}

/// Events on your files, your links and your account, newest first.
#[utoipa::path(get, path = "/audit", tag = "audit", security(("bearer" = [])), params(AuditQuery),
    responses(
        (status = 200, description = "Events, newest first", body = EventList),
        (status = 400, description = "Bad cursor or limit", body = Problem, content_type = "application/problem+json"),
    ))]
async fn my_audit(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> ApiResult<Json<EventList>> {
    crate::audit::page(&state, AuditScope::Owner(user.id), query).await
}

/// An account as an admin sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminUserView {
    id: String,
    username: String,
    email: Option<String>,
    is_admin: bool,
    disabled: bool,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    created_at: OffsetDateTime,
    usage: UsageView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AdminUserList {
    users: Vec<AdminUserView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsersQuery {
    cursor: Option<String>,
    limit: Option<u32>,
}

/// A quota; a `null` field falls back to the server's default.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaUpdate {
    bytes: Option<u64>,
    files: Option<u64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserUpdate {
    disabled: Option<bool>,
    is_admin: Option<bool>,
    /// Replaces the account's own quota.
    quota: Option<QuotaUpdate>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TeamUpdate {
    /// Replaces the team's own quota.
    quota: QuotaUpdate,
}

async fn admin_view(state: &AppState, user: &User) -> ApiResult<AdminUserView> {
    let account = Account::User(user.id);
    let usage = state
        .meta
        .usage(account, state.config.quotas.default_for(account))
        .await?;
    Ok(AdminUserView {
        id: user.id.to_string(),
        username: user.username.to_string(),
        email: user.email.clone(),
        is_admin: user.is_admin,
        disabled: user.disabled,
        created_at: user.created_at,
        usage: usage.into(),
    })
}

/// Every account, by id.
#[utoipa::path(get, path = "/admin/users", tag = "admin", security(("bearer" = [])), params(UsersQuery),
    responses(
        (status = 200, description = "A page of accounts", body = AdminUserList),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_users(
    State(state): State<AppState>,
    AuthUser(admin): AuthUser,
    ApiQuery(query): ApiQuery<UsersQuery>,
) -> ApiResult<Json<AdminUserList>> {
    require_admin(&admin)?;
    let limit = crate::files::page_limit(&state, query.limit)?;
    let after = query
        .cursor
        .map(|c| {
            uuid::Uuid::parse_str(&c)
                .map(UserId)
                .map_err(|_| ApiError::bad_request("invalid_cursor", "the cursor is not one this server issued"))
        })
        .transpose()?;
    let mut users = state.meta.users_page(after, limit.saturating_add(1)).await?;
    let next_cursor = if users.len() > limit as usize {
        users.truncate(limit as usize);
        users.last().map(|u| u.id.to_string())
    } else {
        None
    };
    let mut views = Vec::with_capacity(users.len());
    for user in &users {
        views.push(admin_view(&state, user).await?);
    }
    Ok(Json(AdminUserList {
        users: views,
        next_cursor,
    }))
}

/// Disable or enable an account, make it an admin or not, or set its quota.
#[utoipa::path(patch, path = "/admin/users/{username}", tag = "admin", security(("bearer" = [])),
    request_body = UserUpdate,
    params(("username" = String, Path, description = "The account")),
    responses(
        (status = 200, description = "The updated account", body = AdminUserView),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Admins cannot disable or demote themselves", body = Problem, content_type = "application/problem+json"),
    ))]
async fn update_user(
    State(state): State<AppState>,
    AuthUser(admin): AuthUser,
    Path(username): Path<String>,
    ApiJson(req): ApiJson<UserUpdate>,
) -> ApiResult<Json<AdminUserView>> {
    require_admin(&admin)?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "user_not_found", "no such user");
    let user = user_named(&state, &username).await?;
    if user.id == admin.id && (req.disabled == Some(true) || req.is_admin == Some(false)) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "cannot_change_self",
            "admins cannot disable or demote themselves",
        ));
    }
    if let Some(quota) = &req.quota {
        let quota = Quota {
            bytes: quota.bytes,
            files: quota.files,
        };
        state.meta.set_quota(Account::User(user.id), quota).await?;
    }
    let user = if req.disabled.is_some() || req.is_admin.is_some() {
        state
            .meta
            .set_user_flags(user.id, req.disabled, req.is_admin)
            .await?
            .ok_or_else(not_found)?
    } else {
        user
    };
    let mut event = Event::new("admin.user_update")
        .by(&admin)
        .owner(user.id)
        .with("username", user.username.as_str());
    if let Some(disabled) = req.disabled {
        event = event.with("disabled", disabled);
    }
    if let Some(is_admin) = req.is_admin {
        event = event.with("is_admin", is_admin);
    }
    if let Some(quota) = &req.quota {
        event = event.with("quota_bytes", quota.bytes).with("quota_files", quota.files);
    }
    state.audit.record(event).await;
    Ok(Json(admin_view(&state, &user).await?))
}

/// Set a team's quota.
#[utoipa::path(patch, path = "/admin/teams/{id}", tag = "admin", security(("bearer" = [])), request_body = TeamUpdate,
    params(("id" = String, Path, description = "Team id")),
    responses(
        (status = 200, description = "The team's usage and quota", body = UsageView),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such team", body = Problem, content_type = "application/problem+json"),
    ))]
async fn update_team(
    State(state): State<AppState>,
    AuthUser(admin): AuthUser,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<TeamUpdate>,
) -> ApiResult<Json<UsageView>> {
    require_admin(&admin)?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "team_not_found", "no such team");
    let team = uuid::Uuid::parse_str(&id).map(TeamId).map_err(|_| not_found())?;
    let account = Account::Team(team);
    let quota = Quota {
        bytes: req.quota.bytes,
        files: req.quota.files,
    };
    if !state.meta.set_quota(account, quota).await? {
        return Err(not_found());
    }
    state
        .audit
        .record(
            Event::new("admin.team_update")
                .by(&admin)
                .team(team)
                .with("quota_bytes", quota.bytes)
                .with("quota_files", quota.files),
        )
        .await;
    let usage = state
        .meta
        .usage(account, state.config.quotas.default_for(account))
        .await?;
    Ok(Json(usage.into()))
}

/// Every file on the server, newest first. Admins may delete any file with `DELETE /files/{key}`, but not read
/// the bytes of private ones.
#[utoipa::path(get, path = "/admin/files", tag = "admin", security(("bearer" = [])), params(ListQuery),
    responses(
        (status = 200, description = "A page of files", body = FileList),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
    ))]
async fn all_files(
    State(state): State<AppState>,
    AuthUser(admin): AuthUser,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<FileList>> {
    require_admin(&admin)?;
    let (limit, after) = query.page(&state)?;
    let files = state
        .meta
        .list_all_files(after.as_ref(), limit.saturating_add(1))
        .await?;
    Ok(Json(FileList::page(files, limit)))
}

/// The whole audit log, newest first.
#[utoipa::path(get, path = "/admin/audit", tag = "admin", security(("bearer" = [])), params(AuditQuery),
    responses(
        (status = 200, description = "Events, newest first", body = EventList),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
    ))]
async fn all_audit(
    State(state): State<AppState>,
    AuthUser(admin): AuthUser,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> ApiResult<Json<EventList>> {
    require_admin(&admin)?;
    crate::audit::page(&state, AuditScope::Everything, query).await
}
