//! Files: the origin-compatible surface (`POST /files`, `GET /files?fileName=<key>`) and its REST twins
//! (`GET/PATCH/DELETE /files/{key}`, `GET /files/{key}/content`). Every decision about who may do what is
//! delegated to [`handoff_core::file_access`].

pub mod download;
pub mod upload;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use handoff_core::{
    Access, Actor, FileAction, FileCursor, FileKey, FileName, FilePatch, FileRecord, TeamId, TeamRole, User,
    Visibility, file_access,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::audit::Event;
use crate::auth::AuthUser;
use crate::error::{ApiError, ApiJson, ApiQuery, ApiResult, Problem};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_or_download, upload))
        .routes(routes!(metadata, update, delete))
        .routes(routes!(content))
}

fn visibility_schema() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["private", "key"]))
        .description(Some(
            "`private`: only the owner; `key`: any signed-in user who holds the key",
        ))
        .into()
}

/// A stored file as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileView {
    /// The secret key: anyone signed in who holds it may download the file unless it is private.
    #[schema(example = "q3Vh0xJY0bQm3mC7b4d2nKkzv1Zs9eAa")]
    key: String,
    #[schema(example = "report.pdf")]
    name: String,
    size: u64,
    /// Lower-case hex SHA-256 of the content.
    sha256: String,
    #[schema(example = "application/pdf")]
    content_type: String,
    #[schema(schema_with = visibility_schema)]
    visibility: Visibility,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    updated_at: OffsetDateTime,
    /// Where the bytes are: `GET` it with the same bearer token.
    #[schema(example = "/files/q3Vh0xJY0bQm3mC7b4d2nKkzv1Zs9eAa/content")]
    download_url: String,
    /// The team the file belongs to, if any.
    team_id: Option<String>,
    /// When the file will be deleted, if it has an expiry.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<OffsetDateTime>,
}

impl From<&FileRecord> for FileView {
    fn from(f: &FileRecord) -> Self {
        Self {
            key: f.key.to_string(),
            name: f.name.as_str().to_owned(),
            size: f.size,
            sha256: f.sha256.clone(),
            content_type: f.content_type.clone(),
            visibility: f.visibility,
            created_at: f.created_at,
            updated_at: f.updated_at,
            download_url: format!("/files/{}/content", f.key),
            team_id: f.team.map(|t| t.to_string()),
            expires_at: f.expires_at,
        }
    }
}

/// Several files uploaded in one multipart request.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadedFiles {
    files: Vec<FileView>,
}

/// What `POST /files` answers: the file's record for a single file (origin compatible), or `{"files": [...]}`
/// when a multipart request carried several.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum UploadResponse {
    One(FileView),
    Many(UploadedFiles),
}

/// Raw file bytes, for the OpenAPI document.
#[derive(Debug, ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct Binary(#[allow(dead_code)] Vec<u8>);

#[derive(Debug, Serialize, ToSchema)]
pub struct FileList {
    files: Vec<FileView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FilesQuery {
    /// Origin compatibility: the secret key of a file to download. Without it, the caller's files are listed.
    #[serde(rename = "fileName")]
    #[param(rename = "fileName")]
    file_name: Option<String>,
    /// From `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Page size, 1 to the server's maximum (1000 by default); default 100.
    limit: Option<u32>,
}

impl FileList {
    /// One page from `files`, which holds up to `limit + 1` rows (the extra one only says there is a next page).
    pub fn page(mut files: Vec<FileRecord>, limit: u32) -> Self {
        let next_cursor = if files.len() > limit as usize {
            files.truncate(limit as usize);
            files.last().map(|f| FileCursor::after(f).encode())
        } else {
            None
        };
        // Expired files are gone for clients at once, even before the retention task deletes them.
        let now = handoff_core::now();
        Self {
            files: files
                .iter()
                .filter(|f| f.expires_at.is_none_or(|at| at > now))
                .map(FileView::from)
                .collect(),
            next_cursor,
        }
    }
}

/// Paging of a file listing.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// From `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Page size, 1 to the server's maximum (1000 by default); default 100.
    limit: Option<u32>,
}

impl ListQuery {
    pub fn page(&self, state: &AppState) -> ApiResult<(u32, Option<FileCursor>)> {
        page_params(state, self.cursor.as_deref(), self.limit)
    }
}

/// The page size a client asked for (default 100), checked against `limits.max_page_size`: every listing uses it.
pub fn page_limit(state: &AppState, limit: Option<u32>) -> ApiResult<u32> {
    let max = state.config.limits.max_page_size;
    let limit = limit.unwrap_or(DEFAULT_PAGE.min(max));
    if limit == 0 || limit > max {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be between 1 and {max}"),
        ));
    }
    Ok(limit)
}

fn page_params(state: &AppState, cursor: Option<&str>, limit: Option<u32>) -> ApiResult<(u32, Option<FileCursor>)> {
    let limit = page_limit(state, limit)?;
    let after = cursor
        .map(|c| {
            FileCursor::decode(c)
                .ok_or_else(|| ApiError::bad_request("invalid_cursor", "the cursor is not one this server issued"))
        })
        .transpose()?;
    Ok((limit, after))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// Name of a raw-body upload (alternatively the `X-File-Name` header).
    #[serde(rename = "fileName")]
    #[param(rename = "fileName")]
    file_name: Option<String>,
    /// `private` or `key`; default from the server configuration.
    #[param(value_type = Option<String>)]
    visibility: Option<Visibility>,
    /// Upload into this team (its id); you need the `member` role or higher. The team's quota applies.
    team: Option<String>,
    /// Delete the file automatically after this many seconds (at most the server's maximum).
    expires_in: Option<u64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FileUpdate {
    name: Option<String>,
    #[schema(schema_with = visibility_schema)]
    visibility: Option<Visibility>,
}

const DEFAULT_PAGE: u32 = 100;

/// The expiry of a new file: the requested lifetime (bounded by the configured maximum) or the default.
pub fn expiry(state: &AppState, requested_secs: Option<u64>) -> ApiResult<Option<OffsetDateTime>> {
    let retention = &state.config.retention;
    let secs = match (requested_secs, retention.max_file_ttl_secs) {
        (Some(0), _) => {
            return Err(ApiError::bad_request(
                "invalid_expiry",
                "expires_in must be at least 1 second",
            ));
        }
        (Some(secs), Some(max)) if secs > max => {
            return Err(ApiError::bad_request(
                "expiry_too_long",
                format!("files may live at most {max} seconds here"),
            ));
        }
        (Some(secs), _) => Some(secs),
        (None, max) => match (retention.default_file_ttl_secs, max) {
            (Some(default), Some(max)) => Some(default.min(max)),
            (default, None) => default,
            (None, Some(max)) => Some(max),
        },
    };
    secs.map(|secs| after_seconds(handoff_core::now(), secs)).transpose()
}

/// The longest lifetime anything may be given: a century.
const MAX_LIFETIME_SECS: u64 = 100 * 366 * 24 * 3600;

/// `now` plus `secs`, refusing lifetimes beyond any sensible date (the calendar ends in the year 9999).
pub fn after_seconds(now: OffsetDateTime, secs: u64) -> ApiResult<OffsetDateTime> {
    let too_far = || ApiError::bad_request("invalid_expiry", "an expiry may be at most a century away");
    if secs > MAX_LIFETIME_SECS {
        return Err(too_far());
    }
    now.checked_add(time::Duration::seconds(i64::try_from(secs).map_err(|_| too_far())?))
        .ok_or_else(too_far)
}

pub fn team_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "team_not_found", "no such team among yours")
}

pub fn role_insufficient(detail: &'static str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "team_role_insufficient", detail)
}

/// The caller's role in `team`; a team they are not in is, to them, a team that does not exist.
pub async fn team_role(state: &AppState, team: TeamId, user: &User) -> ApiResult<TeamRole> {
    state.meta.role_in(team, user.id).await?.ok_or_else(team_not_found)
}

pub fn parse_team_id(raw: &str) -> ApiResult<TeamId> {
    uuid::Uuid::parse_str(raw).map(TeamId).map_err(|_| team_not_found())
}

/// Applies the access policy to `file` for `user`, looking up their role in the file's team.
pub async fn check_file(state: &AppState, user: &User, file: &FileRecord, action: FileAction) -> ApiResult<()> {
    let team_role = match file.team {
        Some(team) => state.meta.role_in(team, user.id).await?,
        None => None,
    };
    match file_access(Actor::User { user, team_role }, file, action) {
        Access::Allowed => Ok(()),
        Access::Hidden => Err(ApiError::file_not_found()),
        Access::Forbidden => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "not_file_owner",
            "you may see this file but not do this to it",
        )),
    }
}

/// Looks up a live file by its key; expired files are gone even before the retention task removes them.
pub async fn live_file(state: &AppState, key: &FileKey) -> ApiResult<Option<FileRecord>> {
    let file = state.meta.file_by_key(key).await?;
    Ok(file.filter(|f| f.expires_at.is_none_or(|at| at > handoff_core::now())))
}

/// Looks up the file behind a client-supplied key and applies the access policy.
pub async fn authorized_file(
    state: &AppState,
    user: &User,
    raw_key: &str,
    action: FileAction,
) -> ApiResult<FileRecord> {
    let key = FileKey::parse(raw_key).ok_or_else(ApiError::file_not_found)?;
    let file = live_file(state, &key).await?.ok_or_else(ApiError::file_not_found)?;
    check_file(state, user, &file, action).await?;
    Ok(file)
}

/// A user's own space as an upload destination, with the room their quota leaves.
pub async fn own_space(state: &AppState, user: &User) -> ApiResult<upload::Destination> {
    let (bytes_left, files_left) = personal_room(state, user).await?;
    Ok(upload::Destination {
        uploader: user.id,
        team: None,
        upload_link: None,
        expires_at: expiry(state, None)?,
        bytes_left,
        files_left,
        room_error: upload::quota_exceeded,
    })
}

/// What the user's quota still allows: stored files count, and so do the bytes their unfinished resumable uploads
/// and direct upload sessions reserve, so that uploads in progress cannot together promise more than the quota.
async fn personal_room(state: &AppState, user: &User) -> ApiResult<(Option<u64>, Option<u64>)> {
    account_room(state, handoff_core::Account::User(user.id)).await
}

/// The bytes and files `account` may still take, after what its open resumable and direct uploads reserve;
/// `None` is unlimited.
async fn account_room(state: &AppState, account: handoff_core::Account) -> ApiResult<(Option<u64>, Option<u64>)> {
    let default_quota = state.config.quotas.default_for(account);
    let Some(usage) = state.meta.usage_if_limited(account, default_quota).await? else {
        return Ok((None, None));
    };
    let bytes_left = match usage.bytes_left() {
        None => None,
        Some(left) => {
            let reserved = state.meta.open_upload_bytes(account).await?
                + state.meta.open_direct_bytes(account, handoff_core::now()).await?;
            Some(left.saturating_sub(reserved))
        }
    };
    Ok((bytes_left, usage.files_left()))
}

/// Where a signed-in user's upload goes: their own space, or a team where they may upload.
async fn destination(state: &AppState, user: &User, query: &UploadQuery) -> ApiResult<upload::Destination> {
    destination_for(state, user, query.team.as_deref(), query.expires_in).await
}

/// The destination of an upload into `team` (its id; at least the `member` role) or the user's own space, with
/// the room its quota leaves after what open direct upload sessions reserve, and the file expiry asked for.
pub async fn destination_for(
    state: &AppState,
    user: &User,
    team: Option<&str>,
    expires_in: Option<u64>,
) -> ApiResult<upload::Destination> {
    let team = match team {
        Some(raw) => {
            let team = parse_team_id(raw)?;
            if team_role(state, team, user).await? == TeamRole::Viewer {
                return Err(role_insufficient("viewers cannot upload into the team"));
            }
            Some(team)
        }
        None => None,
    };
    // Resumable uploads into a team (through its upload links) reserve their declared lengths too.
    let (bytes_left, files_left) = match team {
        None => personal_room(state, user).await?,
        Some(team) => account_room(state, handoff_core::Account::Team(team)).await?,
    };
    Ok(upload::Destination {
        uploader: user.id,
        team,
        upload_link: None,
        expires_at: expiry(state, expires_in)?,
        bytes_left,
        files_left,
        room_error: upload::quota_exceeded,
    })
}

/// List your files, or (origin compatibility) download one with `?fileName=<key>`.
#[utoipa::path(get, path = "/files", tag = "files", params(FilesQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "Without `fileName`: a page of your files, newest first. With `fileName`: the file's bytes.",
            content((FileList = "application/json"), (Binary = "application/octet-stream"))),
        (status = 206, description = "Part of the file (with `fileName` and `Range`)"),
        (status = 302, description = "Download mode `redirect`: a short-lived presigned URL of the blob store"),
        (status = 304, description = "Not modified (`If-None-Match`)"),
        (status = 400, description = "Bad query", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such file available to you", body = Problem, content_type = "application/problem+json"),
        (status = 416, description = "Range not satisfiable", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_or_download(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiQuery(query): ApiQuery<FilesQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    if let Some(key) = query.file_name {
        let file = authorized_file(&state, &user, &key, FileAction::Download).await?;
        return download_as(&state, &user, &file, &headers).await;
    }
    let (limit, after) = page_params(&state, query.cursor.as_deref(), query.limit)?;
    let files = state
        .meta
        .list_files(user.id, after.as_ref(), limit.saturating_add(1))
        .await?;
    Ok(Json(FileList::page(files, limit)).into_response())
}

/// Upload one file (raw body) or several (`multipart/form-data`, parts named `file`).
#[utoipa::path(post, path = "/files", tag = "files", security(("bearer" = [])),
    params(
        UploadQuery,
        ("X-File-Name" = Option<String>, Header, description = "Name of a raw-body upload, percent-encoded UTF-8"),
    ),
    request_body(description = "The file itself, or multipart/form-data with one or more `file` parts",
        content((Binary = "application/octet-stream"), (Object = "multipart/form-data"))),
    responses(
        (status = 201, description = "Stored. One file: its record. Several (multipart): `{\"files\": [...]}`.",
            body = UploadResponse),
        (status = 400, description = "Missing or invalid name, malformed multipart, or interrupted body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "File too large or too many files; `use_upload_session` when the body exceeds `limits.max_inline_upload`", body = Problem, content_type = "application/problem+json"),
        (status = 507, description = "No space left", body = Problem, content_type = "application/problem+json"),
    ))]
async fn upload(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiQuery(query): ApiQuery<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let inline_max = state.config.limits.max_inline_upload;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(max) = inline_max
        && declared.is_some_and(|n| n > max)
    {
        return Err(upload::use_upload_session(max));
    }
    let dest = destination(&state, &user, &query).await?;
    let exceeded = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let body = match inline_max {
        Some(max) => upload::limit_body(body, max, exceeded.clone()),
        None => body,
    };
    let stored = upload::store_upload(
        &state,
        &dest,
        &headers,
        query.file_name.as_deref(),
        query.visibility,
        body,
    )
    .await;
    let records = match (stored, inline_max) {
        (Err(_), Some(max)) if exceeded.load(std::sync::atomic::Ordering::Relaxed) => {
            return Err(upload::use_upload_session(max));
        }
        (stored, _) => stored?,
    };
    for record in &records {
        state
            .audit
            .record(
                Event::new("file.upload")
                    .by(&user)
                    .on_file(record)
                    .with("size", record.size),
            )
            .await;
    }
    let mut response = match records.as_slice() {
        [one] => {
            let location = HeaderValue::from_str(&format!("/files/{}", one.key)).map_err(ApiError::internal)?;
            (
                StatusCode::CREATED,
                [(header::LOCATION, location)],
                Json(FileView::from(one)),
            )
                .into_response()
        }
        many => (
            StatusCode::CREATED,
            Json(UploadedFiles {
                files: many.iter().map(FileView::from).collect(),
            }),
        )
            .into_response(),
    };
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// A file's metadata.
#[utoipa::path(get, path = "/files/{key}", tag = "files", security(("bearer" = [])),
    params(("key" = String, Path, description = "The file's secret key")),
    responses(
        (status = 200, description = "The file", body = FileView),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such file available to you", body = Problem, content_type = "application/problem+json"),
    ))]
async fn metadata(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(key): Path<String>,
) -> ApiResult<Json<FileView>> {
    let file = authorized_file(&state, &user, &key, FileAction::ReadMetadata).await?;
    Ok(Json(FileView::from(&file)))
}

/// Rename a file or change its visibility (its owner, a team owner or admin, or the member who uploaded it).
#[utoipa::path(patch, path = "/files/{key}", tag = "files", security(("bearer" = [])),
    params(("key" = String, Path, description = "The file's secret key")),
    request_body = FileUpdate,
    responses(
        (status = 200, description = "The updated file", body = FileView),
        (status = 400, description = "Invalid name, visibility or unknown field", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the owner", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such file available to you", body = Problem, content_type = "application/problem+json"),
    ))]
async fn update(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(key): Path<String>,
    ApiJson(change): ApiJson<FileUpdate>,
) -> ApiResult<Json<FileView>> {
    let file = authorized_file(&state, &user, &key, FileAction::Modify).await?;
    let patch = FilePatch {
        name: change
            .name
            .map(|n| FileName::parse(&n, state.config.limits.max_file_name_bytes))
            .transpose()?,
        visibility: change.visibility,
    };
    if patch.is_empty() {
        return Ok(Json(FileView::from(&file)));
    }
    let updated = state
        .meta
        .update_file(&file.key, &patch, handoff_core::now())
        .await?
        .ok_or_else(ApiError::file_not_found)?;
    let mut event = Event::new("file.update").by(&user).on_file(&updated);
    if updated.name != file.name {
        event = event.with("previous_name", file.name.as_str());
    }
    if updated.visibility != file.visibility {
        event = event.with("visibility", updated.visibility.as_str());
    }
    state.audit.record(event).await;
    Ok(Json(FileView::from(&updated)))
}

/// Delete a file (its owner, a team owner or admin, the member who uploaded it, or a server admin). Its bytes
/// are removed at once.
#[utoipa::path(delete, path = "/files/{key}", tag = "files", security(("bearer" = [])),
    params(("key" = String, Path, description = "The file's secret key")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the owner", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such file available to you", body = Problem, content_type = "application/problem+json"),
    ))]
async fn delete(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(key): Path<String>,
) -> ApiResult<StatusCode> {
    let file = authorized_file(&state, &user, &key, FileAction::Delete).await?;
    if let Some(deleted) = state.meta.delete_file(&file.key).await? {
        // The row is gone, so the file is gone for everyone; should this fail, the collector removes the orphan.
        if let Err(e) = state.blobs.delete(deleted.blob).await {
            tracing::warn!(blob = %deleted.blob, error = %e, "blob of a deleted file left for the collector");
        }
        tracing::info!(owner = %user.id, blob = %deleted.blob, "file deleted");
        state
            .audit
            .record(Event::new("file.delete").by(&user).on_file(&deleted))
            .await;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Download a file's bytes. Supports `Range` (one range), `If-None-Match` and `If-Range`.
#[utoipa::path(get, path = "/files/{key}/content", tag = "files", security(("bearer" = [])),
    params(
        ("key" = String, Path, description = "The file's secret key"),
        ("Range" = Option<String>, Header, description = "`bytes=START-END`, `bytes=START-` or `bytes=-SUFFIX`"),
    ),
    responses(
        (status = 200, description = "The bytes", content_type = "application/octet-stream", body = Binary),
        (status = 206, description = "The requested range", content_type = "application/octet-stream", body = Binary),
        (status = 302, description = "Download mode `redirect`: a short-lived presigned URL of the blob store"),
        (status = 304, description = "Not modified"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such file available to you", body = Problem, content_type = "application/problem+json"),
        (status = 416, description = "Range not satisfiable", body = Problem, content_type = "application/problem+json"),
    ))]
async fn content(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let file = authorized_file(&state, &user, &key, FileAction::Download).await?;
    download_as(&state, &user, &file, &headers).await
}

/// Serves the bytes and records the download; a resumed download (a `Range` that does not start at zero) is
/// not recorded again.
async fn download_as(state: &AppState, user: &User, file: &FileRecord, headers: &HeaderMap) -> ApiResult<Response> {
    let response = download::respond(state, file, headers).await?;
    // A 206 that starts past byte 0 continues a download already recorded (an `If-Range` mismatch answers 200).
    let resumed = response.status() == StatusCode::PARTIAL_CONTENT
        && headers.get(header::RANGE).and_then(|r| r.to_str().ok()).is_some_and(
            |r| matches!(download::parse_range(r, file.size), download::RangeRequest::Partial(p) if p.start > 0),
        );
    // 200, 206, or the redirect to a presigned URL; a 304 served nothing.
    let served = response.status().is_success() || response.status() == StatusCode::FOUND;
    if served && !resumed {
        state
            .audit
            .record(Event::new("file.download").by(user).on_file(file))
            .await;
    }
    Ok(response)
}
