//! Share links and upload links: the owner's side (`/shares`, `/upload-links`) and the public side that works
//! without an account (`/s/{token}`, `/u/{token}`).
//!
//! A link's token is 192 random bits, shown once at creation and stored only as its SHA-256. A password, when set,
//! travels in the `X-Link-Password` header (never in a URL) and is checked with argon2id. The public side never
//! shows a file's key, the owner's id or any internal id: files are numbered within the link.
//!
//! Download limits are exact: `GET /s/{token}/files/{n}` counts one download atomically in the store and
//! redirects to a grant URL, `/s/{token}/files/{n}/{grant}`, where the same download can be resumed with `Range`
//! requests for a while without counting again. Unknown tokens answer `404 link_not_found`; expired, exhausted and
//! revoked links all answer `410 link_unavailable`.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use handoff_core::{
    Access, Account, Actor, FileAction, FileKey, FileRecord, LinkToken, Password, Share, ShareId, SharePatch, TeamRole,
    UploadLink, UploadLinkId, User, Visibility, file_access,
};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::audit::Event;
use crate::auth::AuthUser;
use crate::error::{ApiError, ApiJson, ApiResult, Problem};
use crate::files::upload::{self, Destination, link_unavailable, quota_exceeded};
use crate::files::{Binary, FileList, check_file, download, live_file, parse_team_id, role_insufficient, team_role};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_share, list_shares))
        .routes(routes!(get_share, update_share, revoke_share))
        .routes(routes!(open_share))
        .routes(routes!(start_download))
        .routes(routes!(granted_download))
        .routes(routes!(create_upload_link, list_upload_links))
        .routes(routes!(get_upload_link, revoke_upload_link))
        .routes(routes!(open_upload_link, upload_through_link))
}

const PASSWORD_HEADER: &str = "x-link-password";
const MAX_NOTE_BYTES: usize = 1000;

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn link_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "link_not_found", "no such link")
}

fn share_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "share_not_found",
        "no such share link among yours",
    )
}

/// The files being sent do not fit what the link still accepts (the link itself stays open for smaller ones).
fn link_limit_exceeded() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "link_limit_exceeded",
        "these files do not fit in what this upload link still accepts",
    )
}

fn upload_link_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "upload_link_not_found",
        "no such upload link among yours",
    )
}

/// `Some(None)` for an explicit `null`, `None` for an absent field (with `#[serde(default)]`).
fn explicit<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

fn note(raw: Option<String>) -> ApiResult<Option<String>> {
    match raw {
        Some(n) if n.len() > MAX_NOTE_BYTES => Err(ApiError::bad_request(
            "note_too_long",
            format!("a note is at most {MAX_NOTE_BYTES} bytes"),
        )),
        Some(n) if n.trim().is_empty() => Ok(None),
        other => Ok(other),
    }
}

async fn password_hash(state: &AppState, raw: Option<String>) -> ApiResult<Option<String>> {
    match raw {
        None => Ok(None),
        Some(raw) => {
            let password = Password::parse(&raw)?;
            Ok(Some(state.passwords.hash(&password).await?))
        }
    }
}

fn parse_time(raw: &str) -> ApiResult<OffsetDateTime> {
    OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
        .map_err(|_| ApiError::bad_request("invalid_expiry", "expires_at must be an RFC 3339 time"))
}

/// A link's expiry from `expires_at` or `expires_in` (seconds), which must lie in the future.
fn link_expiry(expires_at: Option<&str>, expires_in: Option<u64>) -> ApiResult<Option<OffsetDateTime>> {
    let now = handoff_core::now();
    let at = match (expires_at, expires_in) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_expiry",
                "give expires_at or expires_in, not both",
            ));
        }
        (Some(raw), None) => Some(parse_time(raw)?),
        (None, Some(secs)) => Some(crate::files::after_seconds(now, secs)?),
        (None, None) => None,
    };
    match at {
        Some(at) if at <= now => Err(ApiError::bad_request(
            "invalid_expiry",
            "the expiry must be in the future",
        )),
        other => Ok(other),
    }
}

fn positive(value: Option<u64>, field: &'static str) -> ApiResult<Option<u64>> {
    match value {
        Some(0) => Err(ApiError::bad_request(
            "invalid_limit",
            format!("{field} must be at least 1"),
        )),
        other => Ok(other),
    }
}

/// Checks the `X-Link-Password` header against a link's password, if it has one. The answer never says anything
/// about the link's files.
async fn check_password(state: &AppState, headers: &HeaderMap, stored: Option<&str>) -> ApiResult<()> {
    let Some(stored) = stored else {
        return Ok(());
    };
    let presented = headers
        .get(PASSWORD_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|p| p.len() <= 1024);
    let Some(presented) = presented else {
        // Not a bearer-token challenge: no `WWW-Authenticate`.
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "password_required",
            "this link needs its password in the X-Link-Password header",
        ));
    };
    if state.passwords.verify(presented, Some(stored)).await? {
        Ok(())
    } else {
        Err(ApiError::unauthorized(
            "password_invalid",
            "wrong password for this link",
            false,
        ))
    }
}

/// How a link stands now, for its owner.
fn status(revoked: bool, expires_at: Option<OffsetDateTime>, exhausted: bool) -> &'static str {
    if revoked {
        "revoked"
    } else if expires_at.is_some_and(|at| at <= handoff_core::now()) {
        "expired"
    } else if exhausted {
        "exhausted"
    } else {
        "active"
    }
}

fn status_schema() -> utoipa::openapi::schema::Schema {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(["active", "expired", "exhausted", "revoked"]))
        .into()
}

// ---------------------------------------------------------------------------------------------------------------
// Share links: the owner's side.

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShareCreate {
    /// Keys of the files to share (you must be allowed to share each), in the order the link shows them.
    files: Vec<String>,
    note: Option<String>,
    /// Anyone opening the link must send it in `X-Link-Password`.
    password: Option<String>,
    /// RFC 3339 time after which the link stops working.
    expires_at: Option<String>,
    /// Alternatively, seconds from now.
    expires_in: Option<u64>,
    /// Downloads allowed through the link (each file download counts one).
    max_downloads: Option<u64>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShareUpdate {
    /// `null` removes the note.
    #[serde(default, deserialize_with = "explicit")]
    #[schema(value_type = Option<String>)]
    note: Option<Option<String>>,
    /// `null` removes the password.
    #[serde(default, deserialize_with = "explicit")]
    #[schema(value_type = Option<String>)]
    password: Option<Option<String>>,
    /// `null` removes the expiry.
    #[serde(default, deserialize_with = "explicit")]
    #[schema(value_type = Option<String>)]
    expires_at: Option<Option<String>>,
    /// Alternatively, a new expiry in seconds from now.
    expires_in: Option<u64>,
    /// `null` removes the limit.
    #[serde(default, deserialize_with = "explicit")]
    #[schema(value_type = Option<u64>)]
    max_downloads: Option<Option<u64>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SharedFileView {
    key: String,
    name: String,
    size: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ShareView {
    id: String,
    files: Vec<SharedFileView>,
    note: Option<String>,
    has_password: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<OffsetDateTime>,
    max_downloads: Option<u64>,
    downloads: u64,
    #[schema(schema_with = status_schema)]
    status: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    created_at: OffsetDateTime,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ShareCreated {
    #[serde(flatten)]
    share: ShareView,
    /// The link's secret, shown only now.
    token: String,
    /// Path of the public page: `GET` it (no account needed).
    #[schema(example = "/s/3n0x…")]
    url: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ShareList {
    shares: Vec<ShareView>,
}

async fn share_view(state: &AppState, share: &Share) -> ApiResult<ShareView> {
    let mut files = Vec::with_capacity(share.files.len());
    for key in &share.files {
        if let Some(f) = live_file(state, key).await? {
            files.push(SharedFileView {
                key: f.key.to_string(),
                name: f.name.as_str().to_owned(),
                size: f.size,
            });
        }
    }
    Ok(ShareView {
        id: share.id.to_string(),
        files,
        note: share.note.clone(),
        has_password: share.password_hash.is_some(),
        expires_at: share.expires_at,
        max_downloads: share.max_downloads,
        downloads: share.downloads,
        status: status(
            share.revoked,
            share.expires_at,
            share.max_downloads.is_some_and(|m| share.downloads >= m),
        ),
        created_at: share.created_at,
    })
}

async fn my_share(state: &AppState, user: &User, raw_id: &str) -> ApiResult<Share> {
    let id = uuid::Uuid::parse_str(raw_id)
        .map(ShareId)
        .map_err(|_| share_not_found())?;
    state
        .meta
        .share(id)
        .await?
        .filter(|s| s.owner == user.id)
        .ok_or_else(share_not_found)
}

fn too_many_links(state: &AppState) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "too_many_links",
        format!(
            "at most {} live links per user: revoke some first",
            state.config.sharing.max_links_per_user
        ),
    )
}

/// Create a share link for one or more files.
#[utoipa::path(post, path = "/shares", tag = "shares", security(("bearer" = [])), request_body = ShareCreate,
    responses(
        (status = 201, description = "Created; the token is shown only now", body = ShareCreated),
        (status = 400, description = "No files, duplicates, bad expiry, limit or password", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "You may not share one of the files", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "One of the files is not available to you", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Too many links", body = Problem, content_type = "application/problem+json"),
    ))]
async fn create_share(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiJson(req): ApiJson<ShareCreate>,
) -> ApiResult<impl IntoResponse> {
    let max = state.config.sharing.max_files_per_share;
    if req.files.is_empty() || req.files.len() > max {
        return Err(ApiError::bad_request(
            "invalid_files",
            format!("share 1 to {max} files"),
        ));
    }
    let mut keys = Vec::with_capacity(req.files.len());
    for raw in &req.files {
        let key = FileKey::parse(raw).ok_or_else(ApiError::file_not_found)?;
        if keys.contains(&key) {
            return Err(ApiError::bad_request("duplicate_file", "each file may appear once"));
        }
        let file = live_file(&state, &key).await?.ok_or_else(ApiError::file_not_found)?;
        check_file(&state, &user, &file, FileAction::Share).await?;
        keys.push(key);
    }
    let now = handoff_core::now();
    let share = Share {
        id: ShareId::generate(),
        owner: user.id,
        files: keys,
        note: note(req.note)?,
        password_hash: password_hash(&state, req.password).await?,
        expires_at: link_expiry(req.expires_at.as_deref(), req.expires_in)?,
        max_downloads: positive(req.max_downloads, "max_downloads")?,
        downloads: 0,
        revoked: false,
        created_at: now,
        updated_at: now,
    };
    let token = LinkToken::generate();
    let max_live = state.config.sharing.max_links_per_user as u64;
    if !state
        .meta
        .create_share_within(&share, &hash(token.expose()), max_live, now)
        .await?
    {
        return Err(too_many_links(&state));
    }
    for key in &share.files {
        if let Some(file) = state.meta.file_by_key(key).await? {
            // The sharer sees the events of their link, whoever owns the file.
            state
                .audit
                .record(
                    Event::new("share.create")
                        .by(&user)
                        .on_file(&file)
                        .owner(user.id)
                        .with("share_id", share.id.to_string()),
                )
                .await;
        }
    }
    let view = share_view(&state, &share).await?;
    Ok((
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(ShareCreated {
            share: view,
            url: format!("/s/{}", token.expose()),
            token: token.expose().to_owned(),
        }),
    ))
}

/// Your share links, newest first.
#[utoipa::path(get, path = "/shares", tag = "shares", security(("bearer" = [])),
    responses((status = 200, description = "Your share links", body = ShareList)))]
async fn list_shares(State(state): State<AppState>, AuthUser(user): AuthUser) -> ApiResult<Json<ShareList>> {
    let mut shares = Vec::new();
    for share in state.meta.shares_of(user.id).await? {
        shares.push(share_view(&state, &share).await?);
    }
    Ok(Json(ShareList { shares }))
}

/// One of your share links.
#[utoipa::path(get, path = "/shares/{id}", tag = "shares", security(("bearer" = [])),
    params(("id" = String, Path, description = "Share link id")),
    responses(
        (status = 200, description = "The link", body = ShareView),
        (status = 404, description = "No such link among yours", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_share(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<ShareView>> {
    let share = my_share(&state, &user, &id).await?;
    Ok(Json(share_view(&state, &share).await?))
}

/// Change a share link's note, password, expiry or download limit (`null` clears one).
#[utoipa::path(patch, path = "/shares/{id}", tag = "shares", security(("bearer" = [])), request_body = ShareUpdate,
    params(("id" = String, Path, description = "Share link id")),
    responses(
        (status = 200, description = "The updated link", body = ShareView),
        (status = 400, description = "Invalid value", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such link among yours", body = Problem, content_type = "application/problem+json"),
    ))]
async fn update_share(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ShareUpdate>,
) -> ApiResult<Json<ShareView>> {
    let share = my_share(&state, &user, &id).await?;
    let patch = SharePatch {
        note: req.note.map(note).transpose()?,
        password_hash: match req.password {
            None => None,
            Some(None) => Some(None),
            Some(Some(p)) => Some(password_hash(&state, Some(p)).await?),
        },
        expires_at: match (req.expires_at, req.expires_in) {
            (None, None) => None,
            (Some(None), None) => Some(None),
            (Some(Some(raw)), None) => Some(link_expiry(Some(&raw), None)?),
            (None, Some(secs)) => Some(link_expiry(None, Some(secs))?),
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "invalid_expiry",
                    "give expires_at or expires_in, not both",
                ));
            }
        },
        max_downloads: req.max_downloads.map(|m| positive(m, "max_downloads")).transpose()?,
    };
    let updated = state
        .meta
        .update_share(share.id, &patch, handoff_core::now())
        .await?
        .ok_or_else(share_not_found)?;
    state
        .audit
        .record(
            Event::new("share.update")
                .by(&user)
                .owner(user.id)
                .with("share_id", share.id.to_string()),
        )
        .await;
    Ok(Json(share_view(&state, &updated).await?))
}

/// Revoke a share link: it stops working at once, including downloads in progress.
#[utoipa::path(delete, path = "/shares/{id}", tag = "shares", security(("bearer" = [])),
    params(("id" = String, Path, description = "Share link id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such link among yours", body = Problem, content_type = "application/problem+json"),
    ))]
async fn revoke_share(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let share = my_share(&state, &user, &id).await?;
    state.meta.revoke_share(share.id, handoff_core::now()).await?;
    state
        .audit
        .record(
            Event::new("share.revoke")
                .by(&user)
                .owner(user.id)
                .with("share_id", share.id.to_string()),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------------------------
// Share links: the public side.

#[derive(Debug, Serialize, ToSchema)]
pub struct PublicFileView {
    /// Position in the link, from 0.
    index: usize,
    name: String,
    size: u64,
    content_type: String,
    /// `GET` it to download (counts one download, then redirects to a resumable URL).
    download_url: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PublicShareView {
    /// Who shared it (their username).
    shared_by: String,
    note: Option<String>,
    files: Vec<PublicFileView>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<OffsetDateTime>,
    /// `null`: unlimited.
    downloads_left: Option<u64>,
}

/// A live link and the sharer, or the answer to give instead.
async fn live_share(state: &AppState, raw_token: &str) -> ApiResult<(Share, User)> {
    let token = LinkToken::parse(raw_token).ok_or_else(link_not_found)?;
    let share = state
        .meta
        .share_by_token(&hash(token.expose()))
        .await?
        .ok_or_else(link_not_found)?;
    if !share.is_live(handoff_core::now()) {
        return Err(link_unavailable());
    }
    let owner = state
        .meta
        .user_by_id(share.owner)
        .await?
        .filter(|u| !u.disabled)
        .ok_or_else(link_unavailable)?;
    Ok((share, owner))
}

/// File `index` of a link, if it still exists and the sharer may still share it (a sharer who left the team, or
/// lost the file, no longer shares it).
async fn shared_file(state: &AppState, share: &Share, sharer: &User, index: usize) -> ApiResult<FileRecord> {
    let key = share.files.get(index).ok_or_else(ApiError::file_not_found)?;
    let file = live_file(state, key).await?.ok_or_else(ApiError::file_not_found)?;
    check_file(state, sharer, &file, FileAction::Share)
        .await
        .map_err(|_| ApiError::file_not_found())?;
    match file_access(Actor::LinkHolder, &file, FileAction::Download) {
        Access::Allowed => Ok(file),
        Access::Forbidden | Access::Hidden => Err(ApiError::file_not_found()),
    }
}

/// Open a share link: what it contains (no account needed; a password-protected link needs `X-Link-Password`).
#[utoipa::path(get, path = "/s/{token}", tag = "public links",
    params(
        ("token" = String, Path, description = "The link's token"),
        ("X-Link-Password" = Option<String>, Header, description = "The link's password, if it has one"),
    ),
    responses(
        (status = 200, description = "The link's files", body = PublicShareView),
        (status = 401, description = "Password required or wrong (`password_required`, `password_invalid`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such link", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "Expired, revoked or out of downloads", body = Problem, content_type = "application/problem+json"),
    ))]
async fn open_share(
    State(state): State<AppState>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (share, sharer) = live_share(&state, &token).await?;
    check_password(&state, &headers, share.password_hash.as_deref()).await?;
    let mut files = Vec::new();
    for index in 0..share.files.len() {
        if let Ok(file) = shared_file(&state, &share, &sharer, index).await {
            files.push(PublicFileView {
                index,
                name: file.name.as_str().to_owned(),
                size: file.size,
                content_type: file.content_type.clone(),
                download_url: format!("/s/{token}/files/{index}"),
            });
        }
    }
    let view = PublicShareView {
        shared_by: sharer.username.to_string(),
        note: share.note.clone(),
        files,
        expires_at: share.expires_at,
        downloads_left: share.max_downloads.map(|m| m.saturating_sub(share.downloads)),
    };
    Ok((
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(view),
    )
        .into_response())
}

/// Download file `index` of a share link: counts one download, then redirects (`302`) to a URL where this
/// download can be fetched and resumed with `Range` without counting again.
#[utoipa::path(get, path = "/s/{token}/files/{index}", tag = "public links",
    params(
        ("token" = String, Path, description = "The link's token"),
        ("index" = usize, Path, description = "The file's position in the link"),
        ("X-Link-Password" = Option<String>, Header, description = "The link's password, if it has one"),
    ),
    responses(
        (status = 302, description = "Counted; `Location` is the download URL"),
        (status = 401, description = "Password required or wrong", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such link or file", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "Expired, revoked or out of downloads", body = Problem, content_type = "application/problem+json"),
    ))]
async fn start_download(
    State(state): State<AppState>,
    Path((token, index)): Path<(String, String)>,
    method: axum::http::Method,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (share, sharer) = live_share(&state, &token).await?;
    check_password(&state, &headers, share.password_hash.as_deref()).await?;
    let index: usize = index.parse().map_err(|_| ApiError::file_not_found())?;
    let file = shared_file(&state, &share, &sharer, index).await?;
    if method == axum::http::Method::HEAD {
        // Link checkers and previews probe with HEAD: answer without spending a download.
        return Ok(([(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))], ()).into_response());
    }
    let now = handoff_core::now();
    if !state.meta.count_share_download(share.id, now).await? {
        return Err(link_unavailable());
    }
    let grant = LinkToken::generate();
    let ttl = time::Duration::seconds(i64::try_from(state.config.sharing.download_grant_ttl_secs).unwrap_or(3600));
    state
        .meta
        .insert_share_grant(
            &hash(grant.expose()),
            share.id,
            u32::try_from(index).unwrap_or(u32::MAX),
            now + ttl,
        )
        .await?;
    state
        .audit
        .record(
            Event::new("share.download")
                .on_file(&file)
                .owner(share.owner)
                .with("share_id", share.id.to_string()),
        )
        .await;
    let location =
        HeaderValue::from_str(&format!("/s/{token}/files/{index}/{}", grant.expose())).map_err(ApiError::internal)?;
    Ok((
        StatusCode::FOUND,
        [
            (header::LOCATION, location),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
    )
        .into_response())
}

/// The bytes of a counted share-link download. Supports `Range`, `If-None-Match` and `If-Range`; stops working
/// when the link is revoked or expires, or the grant does.
#[utoipa::path(get, path = "/s/{token}/files/{index}/{grant}", tag = "public links",
    params(
        ("token" = String, Path, description = "The link's token"),
        ("index" = usize, Path, description = "The file's position in the link"),
        ("grant" = String, Path, description = "From the redirect of `/s/{token}/files/{index}`"),
    ),
    responses(
        (status = 200, description = "The bytes", content_type = "application/octet-stream", body = Binary),
        (status = 206, description = "The requested range", content_type = "application/octet-stream", body = Binary),
        (status = 404, description = "No such link, file or grant", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "The link was revoked or expired", body = Problem, content_type = "application/problem+json"),
    ))]
async fn granted_download(
    State(state): State<AppState>,
    Path((token, index, grant)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let token = LinkToken::parse(&token).ok_or_else(link_not_found)?;
    let share = state
        .meta
        .share_by_token(&hash(token.expose()))
        .await?
        .ok_or_else(link_not_found)?;
    let now = handoff_core::now();
    // A counted download survives the link running out of downloads, but not revocation or expiry.
    if share.revoked || share.expires_at.is_some_and(|at| at <= now) {
        return Err(link_unavailable());
    }
    let index: usize = index.parse().map_err(|_| link_not_found())?;
    let grant = LinkToken::parse(&grant).ok_or_else(link_not_found)?;
    match state.meta.share_grant(&hash(grant.expose()), now).await? {
        Some((id, position)) if id == share.id && position as usize == index => {}
        _ => return Err(link_not_found()),
    }
    let sharer = state
        .meta
        .user_by_id(share.owner)
        .await?
        .filter(|u| !u.disabled)
        .ok_or_else(link_unavailable)?;
    let file = shared_file(&state, &share, &sharer, index).await?;
    download::respond(&state, &file, &headers).await
}

// ---------------------------------------------------------------------------------------------------------------
// Upload links.

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadLinkCreate {
    /// Receive into this team (you need the `member` role or higher); otherwise into your own space.
    team: Option<String>,
    note: Option<String>,
    password: Option<String>,
    expires_at: Option<String>,
    expires_in: Option<u64>,
    max_files: Option<u64>,
    max_bytes: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UploadLinkView {
    id: String,
    team_id: Option<String>,
    note: Option<String>,
    has_password: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<OffsetDateTime>,
    max_files: Option<u64>,
    max_bytes: Option<u64>,
    files_received: u64,
    bytes_received: u64,
    #[schema(schema_with = status_schema)]
    status: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    created_at: OffsetDateTime,
}

impl From<&UploadLink> for UploadLinkView {
    fn from(l: &UploadLink) -> Self {
        Self {
            id: l.id.to_string(),
            team_id: l.team.map(|t| t.to_string()),
            note: l.note.clone(),
            has_password: l.password_hash.is_some(),
            expires_at: l.expires_at,
            max_files: l.max_files,
            max_bytes: l.max_bytes,
            files_received: l.files_received,
            bytes_received: l.bytes_received,
            status: status(
                l.revoked,
                l.expires_at,
                l.max_files.is_some_and(|m| l.files_received >= m)
                    || l.max_bytes.is_some_and(|m| l.bytes_received >= m),
            ),
            created_at: l.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UploadLinkCreated {
    #[serde(flatten)]
    link: UploadLinkView,
    /// The link's secret, shown only now.
    token: String,
    /// Path of the public page: `GET` it for its limits, `POST` files to it (no account needed).
    url: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UploadLinkList {
    upload_links: Vec<UploadLinkView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UploadLinkDetail {
    #[serde(flatten)]
    link: UploadLinkView,
    /// What arrived, newest first (up to 1000).
    files: FileList,
}

async fn my_upload_link(state: &AppState, user: &User, raw_id: &str) -> ApiResult<UploadLink> {
    let id = uuid::Uuid::parse_str(raw_id)
        .map(UploadLinkId)
        .map_err(|_| upload_link_not_found())?;
    let link = state
        .meta
        .upload_link(id)
        .await?
        .filter(|l| l.owner == user.id)
        .ok_or_else(upload_link_not_found)?;
    if !still_receives(state, &link, user).await? {
        return Err(upload_link_not_found());
    }
    Ok(link)
}

/// A team upload link belongs to its creator only while they may still upload into the team: someone who left
/// (or became a viewer) no longer sees it, nor what arrived through it.
async fn still_receives(state: &AppState, link: &UploadLink, owner: &User) -> ApiResult<bool> {
    match link.team {
        None => Ok(true),
        Some(team) => Ok(matches!(state.meta.role_in(team, owner.id).await?, Some(r) if r != TeamRole::Viewer)),
    }
}

/// Create an upload link: people without an account can send files into your space (or a team's) through it.
#[utoipa::path(post, path = "/upload-links", tag = "upload links", security(("bearer" = [])),
    request_body = UploadLinkCreate,
    responses(
        (status = 201, description = "Created; the token is shown only now", body = UploadLinkCreated),
        (status = 400, description = "Bad expiry, limit or password", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Viewers cannot receive into a team", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such team among yours", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Too many links", body = Problem, content_type = "application/problem+json"),
    ))]
async fn create_upload_link(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiJson(req): ApiJson<UploadLinkCreate>,
) -> ApiResult<impl IntoResponse> {
    let team = match &req.team {
        Some(raw) => {
            let team = parse_team_id(raw)?;
            if team_role(&state, team, &user).await? == TeamRole::Viewer {
                return Err(role_insufficient("viewers cannot receive files into the team"));
            }
            Some(team)
        }
        None => None,
    };
    let link = UploadLink {
        id: UploadLinkId::generate(),
        owner: user.id,
        team,
        note: note(req.note)?,
        password_hash: password_hash(&state, req.password).await?,
        expires_at: link_expiry(req.expires_at.as_deref(), req.expires_in)?,
        max_files: positive(req.max_files, "max_files")?,
        max_bytes: positive(req.max_bytes, "max_bytes")?,
        files_received: 0,
        bytes_received: 0,
        revoked: false,
        created_at: handoff_core::now(),
    };
    let token = LinkToken::generate();
    let max_live = state.config.sharing.max_links_per_user as u64;
    if !state
        .meta
        .create_upload_link_within(&link, &hash(token.expose()), max_live, link.created_at)
        .await?
    {
        return Err(too_many_links(&state));
    }
    let mut event = Event::new("upload_link.create")
        .by(&user)
        .owner(user.id)
        .with("upload_link_id", link.id.to_string());
    if let Some(team) = team {
        event = event.team(team);
    }
    state.audit.record(event).await;
    Ok((
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(UploadLinkCreated {
            link: UploadLinkView::from(&link),
            url: format!("/u/{}", token.expose()),
            token: token.expose().to_owned(),
        }),
    ))
}

/// Your upload links, newest first.
#[utoipa::path(get, path = "/upload-links", tag = "upload links", security(("bearer" = [])),
    responses((status = 200, description = "Your upload links", body = UploadLinkList)))]
async fn list_upload_links(State(state): State<AppState>, AuthUser(user): AuthUser) -> ApiResult<Json<UploadLinkList>> {
    let mut upload_links = Vec::new();
    for link in state.meta.upload_links_of(user.id).await? {
        if still_receives(&state, &link, &user).await? {
            upload_links.push(UploadLinkView::from(&link));
        }
    }
    Ok(Json(UploadLinkList { upload_links }))
}

/// One of your upload links, with the files that arrived through it.
#[utoipa::path(get, path = "/upload-links/{id}", tag = "upload links", security(("bearer" = [])),
    params(("id" = String, Path, description = "Upload link id")),
    responses(
        (status = 200, description = "The link and what arrived", body = UploadLinkDetail),
        (status = 404, description = "No such link among yours", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_upload_link(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<UploadLinkDetail>> {
    let link = my_upload_link(&state, &user, &id).await?;
    let files = state.meta.list_upload_link_files(link.id, 1000).await?;
    Ok(Json(UploadLinkDetail {
        link: UploadLinkView::from(&link),
        files: FileList::page(files, 1000),
    }))
}

/// Revoke an upload link: it accepts nothing more.
#[utoipa::path(delete, path = "/upload-links/{id}", tag = "upload links", security(("bearer" = [])),
    params(("id" = String, Path, description = "Upload link id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such link among yours", body = Problem, content_type = "application/problem+json"),
    ))]
async fn revoke_upload_link(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let link = my_upload_link(&state, &user, &id).await?;
    state.meta.revoke_upload_link(link.id).await?;
    state
        .audit
        .record(
            Event::new("upload_link.revoke")
                .by(&user)
                .owner(user.id)
                .with("upload_link_id", link.id.to_string()),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PublicUploadLinkView {
    /// Who receives the files (their username).
    receiver: String,
    note: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<OffsetDateTime>,
    /// `null`: unlimited.
    files_left: Option<u64>,
    bytes_left: Option<u64>,
    max_file_size: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReceivedFile {
    name: String,
    size: u64,
    sha256: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReceivedFiles {
    files: Vec<ReceivedFile>,
}

/// A live upload link, its owner (who must still be allowed to receive where it points), and the room left: the
/// link's limits and the receiver's quota, each less what open resumable uploads already reserve (through this
/// link, and into the same space), so that uploads allowed to start can also finish.
async fn live_upload_link(state: &AppState, raw_token: &str) -> ApiResult<(UploadLink, User, Destination)> {
    let token = LinkToken::parse(raw_token).ok_or_else(link_not_found)?;
    let link = state
        .meta
        .upload_link_by_token(&hash(token.expose()))
        .await?
        .ok_or_else(link_not_found)?;
    let now = handoff_core::now();
    if !link.is_live(now) {
        return Err(link_unavailable());
    }
    let owner = state
        .meta
        .user_by_id(link.owner)
        .await?
        .filter(|u| !u.disabled)
        .ok_or_else(link_unavailable)?;
    if !still_receives(state, &link, &owner).await? {
        return Err(link_unavailable());
    }
    let account: Account = link.account();
    let usage = state
        .meta
        .usage(account, state.config.quotas.default_for(account))
        .await?;
    let quota_bytes = match usage.bytes_left() {
        None => None,
        Some(left) => Some(left.saturating_sub(state.meta.open_upload_bytes(account).await?)),
    };
    let open = state.meta.open_link_uploads(link.id, now).await?;
    let link_bytes = link
        .max_bytes
        .map(|m| m.saturating_sub(link.bytes_received).saturating_sub(open.bytes));
    let link_files = link
        .max_files
        .map(|m| m.saturating_sub(link.files_received).saturating_sub(open.files));
    let min = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    // The tighter limit decides which error a sender sees when they run into it.
    let quota_tighter = match (quota_bytes, link_bytes) {
        (Some(q), Some(l)) => q < l,
        (Some(_), None) => true,
        _ => false,
    };
    let dest = Destination {
        uploader: link.owner,
        team: link.team,
        upload_link: Some(link.id),
        expires_at: crate::files::expiry(state, None)?,
        bytes_left: min(quota_bytes, link_bytes),
        files_left: min(usage.files_left(), link_files),
        room_error: if quota_tighter {
            quota_exceeded
        } else {
            link_limit_exceeded
        },
    };
    Ok((link, owner, dest))
}

/// A live upload link whose password (if any) the request presented, and where its files go: what the tus
/// endpoint under `/u/{token}/uploads` checks on every request.
pub(crate) async fn usable_upload_link(
    state: &AppState,
    raw_token: &str,
    headers: &HeaderMap,
) -> ApiResult<(UploadLink, Destination)> {
    let (link, _owner, dest) = live_upload_link(state, raw_token).await?;
    check_password(state, headers, link.password_hash.as_deref()).await?;
    Ok((link, dest))
}

/// Open an upload link: who receives and how much room is left (no account needed).
#[utoipa::path(get, path = "/u/{token}", tag = "public links",
    params(
        ("token" = String, Path, description = "The link's token"),
        ("X-Link-Password" = Option<String>, Header, description = "The link's password, if it has one"),
    ),
    responses(
        (status = 200, description = "The link", body = PublicUploadLinkView),
        (status = 401, description = "Password required or wrong", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such link", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "Expired, revoked or full", body = Problem, content_type = "application/problem+json"),
    ))]
async fn open_upload_link(
    State(state): State<AppState>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<PublicUploadLinkView>> {
    let (link, owner, dest) = live_upload_link(&state, &token).await?;
    check_password(&state, &headers, link.password_hash.as_deref()).await?;
    Ok(Json(PublicUploadLinkView {
        receiver: owner.username.to_string(),
        note: link.note,
        expires_at: link.expires_at,
        files_left: dest.files_left,
        bytes_left: dest.bytes_left,
        max_file_size: state.config.limits.max_file_size,
    }))
}

/// Send files through an upload link: a raw body (`?fileName=` or `X-File-Name`) or `multipart/form-data` with
/// `file` parts. The files become private files of the link's owner (or team); the sender learns no keys.
#[utoipa::path(post, path = "/u/{token}", tag = "public links",
    params(
        ("token" = String, Path, description = "The link's token"),
        ("fileName" = Option<String>, Query, description = "Name of a raw-body upload"),
        ("X-Link-Password" = Option<String>, Header, description = "The link's password, if it has one"),
    ),
    request_body(description = "The file, or multipart/form-data with `file` parts",
        content((Binary = "application/octet-stream"), (Object = "multipart/form-data"))),
    responses(
        (status = 201, description = "Received", body = ReceivedFiles),
        (status = 400, description = "Missing name, malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Password required or wrong", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such link", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "Expired, revoked or full", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "File too large (`file_too_large`), or more than the link still accepts (`link_limit_exceeded`)", body = Problem, content_type = "application/problem+json"),
        (status = 507, description = "The receiver's quota is full", body = Problem, content_type = "application/problem+json"),
    ))]
async fn upload_through_link(
    State(state): State<AppState>,
    Path(token): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let (link, _owner, dest) = live_upload_link(&state, &token).await?;
    check_password(&state, &headers, link.password_hash.as_deref()).await?;
    let file_name = query.as_deref().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "fileName")
            .map(|(_, v)| v.into_owned())
    });
    let records = upload::store_upload(
        &state,
        &dest,
        &headers,
        file_name.as_deref(),
        Some(Visibility::Private),
        body,
    )
    .await?;
    for record in &records {
        state
            .audit
            .record(
                Event::new("upload_link.upload")
                    .on_file(record)
                    .with("upload_link_id", link.id.to_string())
                    .with("size", record.size),
            )
            .await;
    }
    Ok((
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(ReceivedFiles {
            files: records
                .iter()
                .map(|r| ReceivedFile {
                    name: r.name.as_str().to_owned(),
                    size: r.size,
                    sha256: r.sha256.clone(),
                })
                .collect(),
        }),
    )
        .into_response())
}
