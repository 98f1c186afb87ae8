//! Direct transfers: bytes go straight between the client and the blob store, never through this server's
//! request bodies (behind API Gateway and Lambda they could not), with one protocol on every backend.
//!
//! - `POST /upload-sessions` plans the upload (size, parts of `part_size`), reserves the declared size against the
//!   destination's quota, and for a one-part file returns its `PUT` URL at once;
//! - `POST /upload-sessions/{id}/parts` mints part URLs (a bounded number per call, each for minutes);
//! - `GET /upload-sessions/{id}` lists the parts the store holds, so a client that lost its state can resume;
//! - `POST /upload-sessions/{id}/complete` joins the parts, verifies the result (size, SHA-256 read once from the
//!   store, the client's declared SHA-256 if any) and makes it a file through [`commit_files`], the same commit as
//!   `POST /files` (quota, audit); on a mismatch the bytes are deleted and nothing becomes visible. Reading is
//!   bounded per request (`direct.complete_budget_secs`): past the budget the answer is `202` with the progress,
//!   kept in the session (offset and SHA-256 state), and the client calls again; a completion repeated after the
//!   file exists answers the file again (the session stays, marked completed, until it expires);
//! - `DELETE /upload-sessions/{id}` aborts; the maintenance task reclaims expired sessions ([`reclaim`]);
//! - `GET /files/{key}/download-url` answers a short-lived download URL after the access check.
//!
//! On S3 the URLs are presigned by the store; elsewhere the server signs its own (`signed`) and serves them at
//! `/direct/…` (`transfer`). Completion, abort and reclaim each first *claim* the session (a conditional update in
//! the metadata store), so two of them never work on one session at once, on any number of nodes.

pub mod signed;
pub mod transfer;

use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use handoff_core::{
    BlobId, DirectUpload, FileAction, FileKey, FileName, FileRecord, LeaseToken, StoreError, UploadId, User,
    Verification, Visibility,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use self::signed::SignedUrl;
use crate::audit::Event;
use crate::auth::AuthUser;
use crate::error::{ApiError, ApiJson, ApiResult, Problem};
use crate::files::FileView;
use crate::files::upload::{Destination, FinishedBlob, commit_files, quota_exceeded, too_large};
use crate::state::AppState;
use crate::uploads::append::{resume_sha256, sha256_state};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create))
        .routes(routes!(status, abort))
        .routes(routes!(part_urls))
        .routes(routes!(complete))
        .routes(routes!(download_url))
        .merge(transfer::routes())
}

fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "upload_session_not_found",
        "no upload session with this id is available to you",
    )
}

fn expired() -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "upload_session_expired",
        "this upload session has expired",
    )
}

fn busy() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "upload_session_busy",
        "another request is completing or aborting this upload session",
    )
    .with_header(header::RETRY_AFTER, HeaderValue::from_static("5"))
}

/// Parts can no longer change once they are joined (completion started) or the file exists.
fn joined(s: &DirectUpload) -> ApiError {
    let (code, detail) = if s.completed_at.is_some() {
        (
            "upload_session_completed",
            "this upload session is complete: its file exists",
        )
    } else {
        (
            "upload_session_completing",
            "this upload session's parts are joined and being verified; call /complete to finish",
        )
    };
    ApiError::new(StatusCode::CONFLICT, code, detail)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// The file's name (metadata only).
    #[schema(example = "video.mp4")]
    name: String,
    /// Exact size in bytes.
    #[schema(example = 52428800)]
    size: u64,
    /// Media type to serve the file with; guessed from the name when absent.
    content_type: Option<String>,
    /// Lower-case hex SHA-256 of the whole file: completion refuses other bytes.
    sha256: Option<String>,
    /// `private` or `key`; default from the server configuration.
    #[schema(value_type = Option<String>)]
    visibility: Option<Visibility>,
    /// Upload into this team (its id); you need the `member` role or higher. The team's quota applies.
    team: Option<String>,
    /// Delete the file automatically this many seconds after it is complete (at most the server's maximum).
    expires_in: Option<u64>,
}

/// A URL to send bytes to (or fetch them from), valid until `expires_at`.
#[derive(Debug, Serialize, ToSchema)]
pub struct UrlView {
    /// Absolute (a presigned store URL, or this server's when `direct.public_url` is set) or a path on this
    /// server. A bearer credential: keep it secret.
    url: String,
    #[schema(example = "PUT")]
    method: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    expires_at: OffsetDateTime,
}

impl UrlView {
    fn new(signed: SignedUrl, method: &'static str) -> Self {
        Self {
            url: signed.url,
            method,
            expires_at: signed.expires_at,
        }
    }
}

/// A part the store holds.
#[derive(Debug, Serialize, ToSchema)]
pub struct PartView {
    number: u32,
    size: u64,
    /// The part's entity tag, as its `PUT` answered it (`null` when the store does not list tags).
    etag: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    id: String,
    name: String,
    size: u64,
    sha256: Option<String>,
    content_type: String,
    /// Every part but the last has this size.
    part_size: u64,
    /// Parts are numbered `1..=part_count`.
    part_count: u32,
    team_id: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    expires_at: OffsetDateTime,
    /// For a one-part file (`part_count == 1`): where to `PUT` it, answered at creation only.
    #[serde(skip_serializing_if = "Option::is_none")]
    upload_url: Option<UrlView>,
    /// `open` (parts can be sent), `verifying` (parts joined; `/complete` goes on reading them) or `completed`
    /// (the file is `file_key`).
    #[schema(example = "open")]
    state: &'static str,
    /// While `verifying`: the bytes checked so far, of `size`.
    #[serde(skip_serializing_if = "Option::is_none")]
    verified_bytes: Option<u64>,
    /// Once `completed`: the file's secret key.
    #[serde(skip_serializing_if = "Option::is_none")]
    file_key: Option<String>,
    /// The parts stored so far (status of an `open` session only).
    #[serde(skip_serializing_if = "Option::is_none")]
    parts: Option<Vec<PartView>>,
}

impl SessionView {
    fn new(s: &DirectUpload) -> Self {
        Self {
            id: s.id.to_string(),
            name: s.name.as_str().to_owned(),
            size: s.size,
            sha256: s.sha256.clone(),
            content_type: s.content_type.clone(),
            part_size: s.part_size,
            part_count: s.part_count,
            team_id: s.team.map(|t| t.to_string()),
            expires_at: s.expires_at,
            upload_url: None,
            state: match (&s.completed_at, &s.verification) {
                (Some(_), _) => "completed",
                (None, Some(_)) => "verifying",
                (None, None) => "open",
            },
            verified_bytes: s.verification.as_ref().map(|v| v.verified),
            file_key: s.completed_at.map(|_| s.file_key.to_string()),
            parts: None,
        }
    }
}

/// Parts of `size` bytes: the configured part size, raised (in whole MiB) until `max_parts` parts suffice.
pub fn plan(size: u64, part_size: u64, max_parts: u32) -> (u64, u32) {
    let mut part_size = part_size.max(1);
    let max_parts = u64::from(max_parts.max(1));
    if size.div_ceil(part_size) > max_parts {
        part_size = size.div_ceil(max_parts).div_ceil(1 << 20) * (1 << 20);
    }
    let count = size.div_ceil(part_size).max(1);
    (part_size, u32::try_from(count).unwrap_or(u32::MAX))
}

fn parse_sha256(raw: Option<String>) -> ApiResult<Option<String>> {
    raw.map(|s| {
        let s = s.to_ascii_lowercase();
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(s)
        } else {
            Err(ApiError::bad_request("invalid_sha256", "sha256 must be 64 hex digits"))
        }
    })
    .transpose()
}

/// The part URL: presigned by the store, or signed by this server.
async fn part_url(state: &AppState, s: &DirectUpload, number: u32, now: OffsetDateTime) -> ApiResult<SignedUrl> {
    // Never beyond the session itself.
    let left = (s.expires_at - now).max(time::Duration::ZERO);
    let ttl = secs(state.config.direct.url_ttl_secs).min(Duration::try_from(left).unwrap_or_default());
    match state.blobs.direct_part_url(s.blob, &s.store_state, number, ttl).await? {
        Some(url) => Ok(SignedUrl {
            url,
            expires_at: now + ttl,
        }),
        None => {
            let path = transfer::part_path(&s.id, number);
            signed::sign(state, &Method::PUT, &path, &[], ttl).await
        }
    }
}

/// The session `raw_id` names, if it exists and belongs to `user` (anything else is the same 404).
async fn owned(state: &AppState, user: &User, raw_id: &str) -> ApiResult<DirectUpload> {
    let id = UploadId::parse(raw_id).ok_or_else(not_found)?;
    match state.meta.direct_upload(&id).await? {
        Some(s) if s.owner == user.id => Ok(s),
        _ => Err(not_found()),
    }
}

fn owned_live(s: DirectUpload) -> ApiResult<DirectUpload> {
    if s.is_expired(handoff_core::now()) {
        return Err(expired());
    }
    Ok(s)
}

/// Start a direct upload: the bytes go to URLs this answer (or `/parts`) gives, then `/complete` makes the file.
#[utoipa::path(post, path = "/upload-sessions", tag = "direct uploads", security(("bearer" = [])),
    request_body = CreateSession,
    responses(
        (status = 201, description = "Created. `part_count == 1`: `upload_url` is where to `PUT` the file", body = SessionView),
        (status = 400, description = "Invalid name, size, checksum or option", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Your team role does not allow uploads", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such team among yours", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than the server accepts", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many open sessions", body = Problem, content_type = "application/problem+json"),
        (status = 507, description = "The quota has no room for this size", body = Problem, content_type = "application/problem+json"),
    ))]
async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiJson(request): ApiJson<CreateSession>,
) -> ApiResult<Response> {
    let config = &state.config.direct;
    let max = state.config.limits.max_file_size;
    if request.size > max {
        return Err(too_large(max));
    }
    let name = FileName::parse(&request.name, state.config.limits.max_file_name_bytes)?;
    let sha256 = parse_sha256(request.sha256)?;
    let content_type = crate::files::upload::content_type(request.content_type.as_deref(), &name);
    let dest = crate::files::destination_for(&state, &user, request.team.as_deref(), request.expires_in).await?;
    // The commit checks the quota again, atomically; this refuses early what it would refuse anyway.
    if dest.bytes_left.is_some_and(|left| request.size > left) || dest.files_left == Some(0) {
        return Err(quota_exceeded());
    }
    let part_size = config.part_size.max(state.blobs.min_part_size());
    let (part_size, part_count) = plan(request.size, part_size, config.max_parts);
    if part_count > config.max_parts {
        return Err(too_large(part_size.saturating_mul(u64::from(config.max_parts))));
    }
    let blob = BlobId::generate();
    let store_state = state.blobs.begin_direct(blob).await?;
    let now = handoff_core::now();
    let session = DirectUpload {
        id: UploadId::generate(),
        owner: user.id,
        team: dest.team,
        blob,
        file_key: FileKey::generate(),
        name,
        content_type,
        visibility: request.visibility.unwrap_or(state.config.default_visibility),
        file_expires_at: dest.expires_at,
        size: request.size,
        sha256,
        part_size,
        part_count,
        store_state,
        created_at: now,
        expires_at: now + secs(config.expiry_secs),
        verification: None,
        completed_at: None,
    };
    if !state
        .meta
        .create_direct_upload(&session, config.max_open_per_user, now)
        .await?
    {
        if let Err(e) = state.blobs.abort_direct(blob, &session.store_state).await {
            tracing::warn!(error = %e, "could not discard a refused direct upload");
        }
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_open_upload_sessions",
            format!(
                "at most {} upload sessions may be open at once; complete or delete one",
                config.max_open_per_user
            ),
        ));
    }
    tracing::info!(owner = %user.id, blob = %blob, size = session.size, parts = part_count, "upload session created");
    let mut view = SessionView::new(&session);
    if part_count == 1 {
        view.upload_url = Some(UrlView::new(part_url(&state, &session, 1, now).await?, "PUT"));
    }
    let location = HeaderValue::from_str(&format!("/upload-sessions/{}", session.id)).map_err(ApiError::internal)?;
    Ok((
        StatusCode::CREATED,
        [
            (header::LOCATION, location),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        Json(view),
    )
        .into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PartsRequest {
    /// Part numbers (1-based), at most `direct.max_urls_per_request` of them.
    #[schema(example = json!([1, 2, 3]))]
    part_numbers: Vec<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PartUrl {
    number: u32,
    /// Exactly this many bytes must be sent.
    size: u64,
    url: String,
    #[schema(example = "PUT")]
    method: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    expires_at: OffsetDateTime,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PartUrls {
    parts: Vec<PartUrl>,
}

/// URLs to `PUT` parts to. Each answer carries the part's `ETag` header, which `/complete` takes.
#[utoipa::path(post, path = "/upload-sessions/{id}/parts", tag = "direct uploads", security(("bearer" = [])),
    params(("id" = String, Path, description = "The session's id")),
    request_body = PartsRequest,
    responses(
        (status = 200, description = "One URL per part asked for", body = PartUrls),
        (status = 400, description = "A part number outside `1..=part_count`, or too many", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such session available to you", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "The session expired", body = Problem, content_type = "application/problem+json"),
    ))]
async fn part_urls(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<PartsRequest>,
) -> ApiResult<Response> {
    let session = owned_live(owned(&state, &user, &id).await?)?;
    if session.verification.is_some() || session.completed_at.is_some() {
        return Err(joined(&session));
    }
    let max = state.config.direct.max_urls_per_request;
    if request.part_numbers.is_empty() || request.part_numbers.len() > max as usize {
        return Err(ApiError::bad_request(
            "invalid_part_numbers",
            format!("ask for 1 to {max} part URLs at a time"),
        ));
    }
    let now = handoff_core::now();
    let mut parts = Vec::with_capacity(request.part_numbers.len());
    for number in request.part_numbers {
        let size = session.part_len(number).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_part_numbers",
                format!("part numbers run from 1 to {}", session.part_count),
            )
        })?;
        let signed = part_url(&state, &session, number, now).await?;
        parts.push(PartUrl {
            number,
            size,
            url: signed.url,
            method: "PUT",
            expires_at: signed.expires_at,
        });
    }
    Ok((
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(PartUrls { parts }),
    )
        .into_response())
}

/// The session and the parts stored so far (to resume after losing track).
#[utoipa::path(get, path = "/upload-sessions/{id}", tag = "direct uploads", security(("bearer" = [])),
    params(("id" = String, Path, description = "The session's id")),
    responses(
        (status = 200, description = "The session; `parts` while it is open", body = SessionView),
        (status = 404, description = "No such session available to you", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "The session expired", body = Problem, content_type = "application/problem+json"),
    ))]
async fn status(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<SessionView>> {
    let session = owned(&state, &user, &id).await?;
    if session.completed_at.is_some() {
        return Ok(Json(SessionView::new(&session)));
    }
    let session = owned_live(session)?;
    if session.verification.is_some() {
        return Ok(Json(SessionView::new(&session)));
    }
    let stored = state
        .blobs
        .direct_parts(session.blob, &session.store_state)
        .await
        .map_err(|e| match e {
            // The store's upload is gone: completed or aborted a moment ago.
            StoreError::NotFound => not_found(),
            other => other.into(),
        })?;
    let mut view = SessionView::new(&session);
    view.parts = Some(
        stored
            .into_iter()
            .map(|p| PartView {
                number: p.number,
                size: p.size,
                etag: p.etag,
            })
            .collect(),
    );
    Ok(Json(view))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompletedPart {
    number: u32,
    /// The `ETag` the part's `PUT` answered (quotes optional).
    etag: String,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    /// Every part, numbers `1..=part_count` in order, with their ETags. Absent (or no body at all): the parts the
    /// store holds, as listed by `GET /upload-sessions/{id}`.
    parts: Option<Vec<CompletedPart>>,
}

fn part_problem(code: &'static str, detail: String) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, code, detail)
}

/// Make the uploaded parts a file: joined, verified (size; SHA-256 against the declared one), then committed
/// (quota, audit) like `POST /files`. A mismatch deletes the bytes and ends the session. Reading stops after
/// `direct.complete_budget_secs` with `202` and the progress; call again (at once) until `201`. Calling again
/// after `201` answers the same file.
#[utoipa::path(post, path = "/upload-sessions/{id}/complete", tag = "direct uploads", security(("bearer" = [])),
    params(("id" = String, Path, description = "The session's id")),
    request_body(content = Option<CompleteRequest>, description = "Optional: the parts and their ETags"),
    responses(
        (status = 201, description = "The file (also for a completion repeated after it was made)", body = FileView),
        (status = 202, description = "Verification goes on: the session in state `verifying` with `verified_bytes`; call again", body = SessionView),
        (status = 400, description = "Malformed part list", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such session available to you", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A part is missing, has the wrong size or ETag (`part_missing`, `part_size_mismatch`, `part_etag_mismatch`), or the session is busy; fix and retry", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "The session expired, or its file was made and since deleted (`upload_session_file_deleted`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The bytes differ from the declared size or SHA-256: deleted, the session is over", body = Problem, content_type = "application/problem+json"),
        (status = 507, description = "The quota has no room left", body = Problem, content_type = "application/problem+json"),
    ))]
async fn complete(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let request: CompleteRequest = if body.iter().all(u8::is_ascii_whitespace) {
        CompleteRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?
    };
    let session = owned(&state, &user, &id).await?;
    if session.completed_at.is_some() {
        // A retry whose first answer was lost: the same file, or why there is none any more.
        let file = state.meta.file_by_key(&session.file_key).await?.ok_or_else(|| {
            ApiError::new(
                StatusCode::GONE,
                "upload_session_file_deleted",
                "this upload session made a file, which has since been deleted",
            )
        })?;
        return created(&file);
    }
    let session = owned_live(session)?;
    let token = LeaseToken::generate();
    let now = handoff_core::now();
    let until = now + secs(state.config.direct.complete_timeout_secs);
    let session = state
        .meta
        .claim_direct_upload(&session.id, &token, until, now)
        .await?
        .ok_or_else(busy)?;
    let config = &state.config.direct;
    // Well inside the claim (and, on Lambda, the function's timeout, which the claim is set to): the request
    // must live to record its progress.
    let budget = config.complete_budget_secs.min(config.complete_timeout_secs * 2 / 3);
    let deadline = Instant::now() + secs(budget);
    match finish(&state, &session, &token, request, deadline).await {
        Ok(file) => {
            state
                .audit
                .record(
                    Event::new("file.upload")
                        .by(&user)
                        .on_file(&file)
                        .with("size", file.size)
                        .with("via", "upload_session"),
                )
                .await;
            created(&file)
        }
        Err(Finish::Paused(progress)) => {
            release(&state, &session, &token).await;
            let mut view = SessionView::new(&DirectUpload {
                verification: Some(progress),
                ..session
            });
            view.state = "verifying";
            let location =
                HeaderValue::from_str(&format!("/upload-sessions/{}", view.id)).map_err(ApiError::internal)?;
            Ok((
                StatusCode::ACCEPTED,
                [
                    (header::LOCATION, location),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                    // Nothing to wait for: the next call continues reading where this one stopped.
                    (header::RETRY_AFTER, HeaderValue::from_static("0")),
                ],
                Json(view),
            )
                .into_response())
        }
        Err(Finish::Retry(e)) => {
            // Nothing changed that the client cannot fix: the session stays usable.
            release(&state, &session, &token).await;
            Err(e)
        }
        Err(Finish::Over(e)) => {
            discard(&state, &session, &token).await;
            Err(e)
        }
    }
}

fn created(file: &FileRecord) -> ApiResult<Response> {
    let location = HeaderValue::from_str(&format!("/files/{}", file.key)).map_err(ApiError::internal)?;
    Ok((
        StatusCode::CREATED,
        [
            (header::LOCATION, location),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        Json(FileView::from(file)),
    )
        .into_response())
}

async fn release(state: &AppState, s: &DirectUpload, token: &LeaseToken) {
    if let Err(e) = state.meta.release_direct_upload(&s.id, token).await {
        // The claim runs out by itself after `complete_timeout_secs`.
        tracing::warn!(error = %e, "could not release an upload session");
    }
}

/// How a completion ended without a file: the client may fix and retry, call again to go on verifying, or the
/// session is over (its bytes are discarded).
enum Finish {
    Retry(ApiError),
    Paused(Verification),
    Over(ApiError),
}

impl From<StoreError> for Finish {
    fn from(e: StoreError) -> Self {
        Self::Retry(e.into())
    }
}

impl From<ApiError> for Finish {
    fn from(e: ApiError) -> Self {
        Self::Retry(e)
    }
}

fn mismatch(code: &'static str, detail: String) -> Finish {
    Finish::Over(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail))
}

fn size_mismatch(held: u64, declared: u64) -> Finish {
    mismatch(
        "size_mismatch",
        format!("the parts hold {held} bytes, not the {declared} declared"),
    )
}

/// The parts to join: the client's list, checked against the plan and what the store holds (sizes), or what
/// the store holds. `None`: there are no parts because they are joined already (by a request cut off before
/// it could record that).
async fn parts_to_join(
    state: &AppState,
    s: &DirectUpload,
    request: CompleteRequest,
) -> Result<Option<Vec<(u32, String)>>, Finish> {
    let stored = match state.blobs.direct_parts(s.blob, &s.store_state).await {
        // S3 forgets a completed multipart upload; the local store lists no parts.
        Err(StoreError::NotFound) => Vec::new(),
        other => other?,
    };
    if stored.is_empty() {
        match state.blobs.open(s.blob, None).await {
            Ok(_) => return Ok(None),
            Err(StoreError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut joined = Vec::with_capacity(s.part_count as usize);
    if let Some(listed) = &request.parts
        && listed.len() != s.part_count as usize
    {
        return Err(Finish::Retry(ApiError::bad_request(
            "invalid_parts",
            format!("list all {} parts, numbered from 1, in order", s.part_count),
        )));
    }
    for number in 1..=s.part_count {
        let etag = match &request.parts {
            Some(listed) => {
                let part = &listed[(number - 1) as usize];
                if part.number != number {
                    return Err(Finish::Retry(ApiError::bad_request(
                        "invalid_parts",
                        format!("list all {} parts, numbered from 1, in order", s.part_count),
                    )));
                }
                Some(part.etag.trim().trim_matches('"').to_owned())
            }
            None => None,
        };
        let Some(held) = stored.iter().find(|p| p.number == number) else {
            return Err(Finish::Retry(part_problem(
                "part_missing",
                format!("part {number} has not been uploaded"),
            )));
        };
        let want = s.part_len(number).unwrap_or(0);
        if held.size != want {
            return Err(Finish::Retry(part_problem(
                "part_size_mismatch",
                format!("part {number} has {} bytes; it must have {want}", held.size),
            )));
        }
        if let (Some(sent), Some(known)) = (&etag, &held.etag)
            && sent != known
        {
            return Err(Finish::Retry(part_problem(
                "part_etag_mismatch",
                format!("part {number} is not the one whose ETag you sent (it was uploaded again?)"),
            )));
        }
        joined.push((number, etag.or_else(|| held.etag.clone()).unwrap_or_default()));
    }
    Ok(Some(joined))
}

/// What one completion request reads at least before its budget may stop it: every step moves forward by a
/// useful amount, whatever size of chunks the store streams.
const MIN_STEP: u64 = 1 << 20;

/// Joins the parts (once), then reads the joined blob for SHA-256 from where the last request stopped, until the
/// end or the deadline; returns the digest once every byte is read.
async fn verify(
    state: &AppState,
    s: &DirectUpload,
    token: &LeaseToken,
    request: CompleteRequest,
    deadline: Instant,
) -> Result<String, Finish> {
    let (mut hasher, mut verified) = match &s.verification {
        Some(progress) => {
            let hasher = resume_sha256(&progress.hash_state, progress.verified)?;
            (hasher, progress.verified)
        }
        None => {
            if let Some(parts) = parts_to_join(state, s, request).await? {
                state
                    .blobs
                    .complete_direct(s.blob, &s.store_state, &parts)
                    .await
                    .map_err(|e| match e {
                        StoreError::Conflict => Finish::Retry(part_problem(
                            "part_etag_mismatch",
                            "the store refused the parts: an ETag does not match, or a part changed".into(),
                        )),
                        other => other.into(),
                    })?;
            }
            let hasher = Sha256::new();
            // From here the parts are gone: what the next request resumes, and what the status shows.
            let joined = Verification {
                verified: 0,
                hash_state: sha256_state(&hasher),
            };
            if !state.meta.record_direct_verification(&s.id, token, &joined).await? {
                return Err(Finish::Retry(busy()));
            }
            (hasher, 0)
        }
    };
    if verified > s.size {
        return Err(Finish::Retry(
            StoreError::Corrupt("verified past the declared size".into()).into(),
        ));
    }
    if verified < s.size || s.size == 0 {
        let range = (verified > 0).then_some(verified..s.size);
        let reader = state.blobs.open(s.blob, range).await?;
        if verified == 0 && reader.len != s.size {
            return Err(size_mismatch(reader.len, s.size));
        }
        let mut stream = reader.stream;
        let started = verified;
        let (mut paused, mut failure) = (false, None);
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => {
                    verified += chunk.len() as u64;
                    hasher.update(&chunk);
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
            if verified > s.size {
                return Err(size_mismatch(verified, s.size));
            }
            if verified < s.size && verified - started >= MIN_STEP && Instant::now() >= deadline {
                paused = true;
                break;
            }
        }
        if verified < s.size {
            // Out of time, or the store failed mid-way: keep what was read for the next request.
            let progress = Verification {
                verified,
                hash_state: sha256_state(&hasher),
            };
            if !state.meta.record_direct_verification(&s.id, token, &progress).await? {
                return Err(Finish::Retry(busy()));
            }
            return Err(match failure {
                Some(e) => Finish::Retry(StoreError::Unavailable(e.to_string()).into()),
                None if paused => Finish::Paused(progress),
                None => Finish::Retry(StoreError::Unavailable("the blob ended early".into()).into()),
            });
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Joins, verifies and commits; the session is marked completed once the file exists.
async fn finish(
    state: &AppState,
    s: &DirectUpload,
    token: &LeaseToken,
    request: CompleteRequest,
    deadline: Instant,
) -> Result<FileRecord, Finish> {
    // A completion that crashed after the commit left the file: this one only has to record that.
    if let Some(file) = state.meta.file_by_key(&s.file_key).await? {
        mark_completed(state, s, token).await;
        return Ok(file);
    }
    let sha256 = verify(state, s, token, request, deadline).await?;
    if s.sha256.as_ref().is_some_and(|declared| *declared != sha256) {
        return Err(mismatch(
            "checksum_mismatch",
            "the bytes do not match the declared sha256".into(),
        ));
    }
    let dest = Destination {
        uploader: s.owner,
        team: s.team,
        upload_link: None,
        expires_at: s.file_expires_at,
        bytes_left: None,
        files_left: None,
        room_error: quota_exceeded,
    };
    let finished = FinishedBlob {
        key: Some(s.file_key.clone()),
        blob: s.blob,
        size: s.size,
        sha256,
        name: s.name.clone(),
        content_type: s.content_type.clone(),
    };
    let committed = commit_files(state, &dest, s.visibility, vec![finished]).await;
    let file = match committed {
        Ok(mut records) if records.len() == 1 => records.remove(0),
        Ok(_) => return Err(Finish::Retry(ApiError::internal("one file committed as several"))),
        Err(e) if e.code() == "quota_exceeded" => return Err(Finish::Over(e)),
        Err(e) => return Err(Finish::Retry(e)),
    };
    mark_completed(state, s, token).await;
    Ok(file)
}

async fn mark_completed(state: &AppState, s: &DirectUpload, token: &LeaseToken) {
    if let Err(e) = state
        .meta
        .mark_direct_upload_completed(&s.id, token, handoff_core::now())
        .await
    {
        // The file exists; once the claim runs out a retried completion (or the reclaim) sees it and tidies up.
        tracing::warn!(error = %e, "could not mark an upload session completed");
    }
}

/// Discards the store's parts. Best effort: after a completion joined them there is nothing left to abort (S3
/// then refuses the upload id), and parts an abort misses are what the bucket's lifecycle rule and the orphan
/// collector are for.
async fn abort_parts(state: &AppState, s: &DirectUpload) {
    if let Err(e) = state.blobs.abort_direct(s.blob, &s.store_state).await {
        tracing::info!(error = %e, "could not abort a direct upload's parts (already joined?)");
    }
}

/// Removes a claimed session and its bytes: the store's parts, and the joined blob unless a file owns it.
async fn discard(state: &AppState, s: &DirectUpload, token: &LeaseToken) {
    let result: Result<(), StoreError> = async {
        abort_parts(state, s).await;
        if state.meta.file_by_key(&s.file_key).await?.is_none() {
            state.blobs.delete(s.blob).await?;
        }
        state.meta.delete_direct_upload(&s.id, token).await?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        // The claim runs out and the maintenance task tries again once the session has expired.
        tracing::warn!(error = %e, "could not discard an upload session");
        let _ = state.meta.release_direct_upload(&s.id, token).await;
    }
}

/// Abort: the parts are discarded and the reserved quota freed.
#[utoipa::path(delete, path = "/upload-sessions/{id}", tag = "direct uploads", security(("bearer" = [])),
    params(("id" = String, Path, description = "The session's id")),
    responses(
        (status = 204, description = "Aborted"),
        (status = 404, description = "No such session available to you", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The session is being completed, or is complete (`upload_session_completed`: delete the file instead)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn abort(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let session = owned(&state, &user, &id).await?;
    if session.completed_at.is_some() {
        return Err(joined(&session));
    }
    let token = LeaseToken::generate();
    let now = handoff_core::now();
    let until = now + secs(state.config.direct.complete_timeout_secs);
    let session = state
        .meta
        .claim_direct_upload(&session.id, &token, until, now)
        .await?
        .ok_or_else(busy)?;
    discard(&state, &session, &token).await;
    tracing::info!(owner = %user.id, blob = %session.blob, "upload session aborted");
    Ok(StatusCode::NO_CONTENT)
}

/// Maintenance: discards expired sessions' parts and rows (a completed-but-uncommitted blob too, unless its file
/// exists). Safe on several nodes at once: each session is claimed first. Returns how many went.
pub async fn reclaim(state: &AppState) -> Result<u64, StoreError> {
    let now = handoff_core::now();
    let mut removed = 0;
    for session in state.meta.expired_direct_uploads(now, 1000).await? {
        let token = LeaseToken::generate();
        let until = now + secs(state.config.direct.complete_timeout_secs);
        let Some(session) = state.meta.claim_direct_upload(&session.id, &token, until, now).await? else {
            continue;
        };
        abort_parts(state, &session).await;
        if state.meta.file_by_key(&session.file_key).await?.is_none() {
            state.blobs.delete(session.blob).await?;
        }
        if state.meta.delete_direct_upload(&session.id, &token).await? {
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(removed, "reclaimed expired upload sessions");
    }
    Ok(removed)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DownloadUrl {
    /// `GET` it (with `Range` if you like) until `expires_at`. A bearer credential: keep it secret.
    url: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    expires_at: OffsetDateTime,
}

/// A short-lived URL for the file's bytes, minted after the access check: presigned by the store (S3), or
/// signed by this server (served at `/direct/blobs/…` with `Range` and `ETag`).
#[utoipa::path(get, path = "/files/{key}/download-url", tag = "files", security(("bearer" = [])),
    params(("key" = String, Path, description = "The file's secret key")),
    responses(
        (status = 200, description = "The URL", body = DownloadUrl),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such file available to you", body = Problem, content_type = "application/problem+json"),
    ))]
async fn download_url(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(key): Path<String>,
) -> ApiResult<Response> {
    let file = crate::files::authorized_file(&state, &user, &key, FileAction::Download).await?;
    let ttl = secs(state.config.direct.url_ttl_secs);
    let signed = transfer::download_url(&state, &file, ttl).await?;
    state
        .audit
        .record(Event::new("file.download").by(&user).on_file(&file).with("via", "url"))
        .await;
    Ok((
        [
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        ],
        Json(DownloadUrl {
            url: signed.url,
            expires_at: signed.expires_at,
        }),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::plan;

    #[test]
    fn plans_parts() {
        assert_eq!(plan(0, 16, 10), (16, 1));
        assert_eq!(plan(16, 16, 10), (16, 1));
        assert_eq!(plan(17, 16, 10), (16, 2));
        assert_eq!(plan(160, 16, 10), (16, 10));
        // Too many parts at the configured size: parts grow in whole MiB.
        let (size, count) = plan(100 << 20, 1 << 20, 10);
        assert_eq!((size, count), (10 << 20, 10));
        let (size, count) = plan((100 << 20) + 1, 1 << 20, 10);
        assert_eq!(size, 11 << 20);
        assert!(count <= 10);
    }
}
