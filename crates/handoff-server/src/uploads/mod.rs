//! Resumable uploads: tus 1.0.0 at `/uploads` with the `creation`, `creation-with-upload`,
//! `creation-defer-length`, `termination`, `checksum` (sha256) and `expiration` extensions, plus
//! `GET /uploads/{id}` for the upload's status and, once complete, its file.
//!
//! Session state lives in the metadata store ([`handoff_core::UploadStore`]) and bytes in the blob store's
//! resumable writer ([`handoff_core::ResumableBlobStore`]), so an upload survives a restart and continues on any
//! node. Every request but `OPTIONS` needs a bearer token; an upload of another user answers 404 exactly like
//! one that does not exist. `headers` parses the tus headers; `append` streams, checkpoints and completes.

pub mod append;
pub mod expiry;
pub mod headers;

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use handoff_core::{BlobId, FileKey, FileName, UploadId, UploadSession, User, Visibility};
use serde::Serialize;
use time::OffsetDateTime;
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use self::append::{AppendRequest, Appended, Lease};
use self::headers::{Metadata, TUS_EXTENSIONS, TUS_VERSION};
use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult, Problem};
use crate::files::FileView;
use crate::state::AppState;

/// The response header that carries a completed upload's file key.
pub const FILE_KEY_HEADER: &str = "handoff-file-key";

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(options_collection, create))
        .routes(routes!(
            options_upload,
            head_upload,
            patch_upload,
            delete_upload,
            status
        ))
        .layer(SetResponseHeaderLayer::overriding(
            HeaderName::from_static("tus-resumable"),
            HeaderValue::from_static(TUS_VERSION),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
}

fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "upload_not_found",
        "no upload with this id is available to you",
    )
}

fn expired() -> ApiError {
    ApiError::new(StatusCode::GONE, "upload_expired", "this upload has expired")
}

fn offset_mismatch(offset: u64) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "offset_mismatch",
        format!("Upload-Offset does not match the upload's offset ({offset})"),
    )
    .with_header(HeaderName::from_static("upload-offset"), HeaderValue::from(offset))
}

fn locked() -> ApiError {
    ApiError::new(
        StatusCode::LOCKED,
        "upload_locked",
        "another request is appending to this upload; retry shortly",
    )
    .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
}

/// The session `raw_id` names, if it exists and belongs to `user` (anything else is the same 404).
async fn owned_session(state: &AppState, user: &User, raw_id: &str) -> ApiResult<UploadSession> {
    let id = UploadId::parse(raw_id).ok_or_else(not_found)?;
    match state.meta.upload_by_id(&id).await? {
        Some(session) if session.owner == user.id => Ok(session),
        _ => Err(not_found()),
    }
}

/// `Upload-Expires` is an HTTP date (RFC 9110 IMF-fixdate).
fn http_date(t: OffsetDateTime) -> HeaderValue {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(&format)
        .ok()
        .and_then(|s| HeaderValue::from_str(&s).ok())
        .unwrap_or_else(|| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"))
}

fn set(response: &mut Response, name: &'static str, value: HeaderValue) {
    response.headers_mut().insert(HeaderName::from_static(name), value);
}

fn with_progress(mut response: Response, offset: u64, expires_at: OffsetDateTime, file: Option<&FileKey>) -> Response {
    set(&mut response, "upload-offset", HeaderValue::from(offset));
    match file {
        Some(key) => {
            if let Ok(value) = HeaderValue::from_str(key.as_str()) {
                set(&mut response, FILE_KEY_HEADER, value);
            }
        }
        None => set(&mut response, "upload-expires", http_date(expires_at)),
    }
    response
}

/// What this server supports (no authentication needed).
async fn capabilities(state: &AppState) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    set(&mut response, "tus-version", HeaderValue::from_static(TUS_VERSION));
    set(&mut response, "tus-extension", HeaderValue::from_static(TUS_EXTENSIONS));
    set(
        &mut response,
        "tus-checksum-algorithm",
        HeaderValue::from_static("sha256"),
    );
    set(
        &mut response,
        "tus-max-size",
        HeaderValue::from(state.config.limits.max_file_size),
    );
    response
}

/// tus capabilities: version, extensions, checksum algorithms, maximum size.
#[utoipa::path(options, path = "/uploads", tag = "uploads",
    responses((status = 204, description = "`Tus-Version`, `Tus-Extension`, `Tus-Checksum-Algorithm`, `Tus-Max-Size`")))]
async fn options_collection(State(state): State<AppState>) -> Response {
    capabilities(&state).await
}

/// tus capabilities (as for `/uploads`).
#[utoipa::path(options, path = "/uploads/{id}", tag = "uploads",
    params(("id" = String, Path, description = "The upload's id")),
    responses((status = 204, description = "`Tus-Version`, `Tus-Extension`, `Tus-Checksum-Algorithm`, `Tus-Max-Size`")))]
async fn options_upload(State(state): State<AppState>) -> Response {
    capabilities(&state).await
}

/// Whether the request carries a body to append (creation-with-upload).
fn has_body(headers: &HeaderMap) -> bool {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match length {
        Some(n) => n > 0,
        None => headers.contains_key(header::TRANSFER_ENCODING),
    }
}

fn declared_body_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Name, type and visibility from `Upload-Metadata` (`filename`/`name`, `filetype`/`type`/`contentType`,
/// `visibility`). A missing name becomes `upload`.
fn file_attributes(state: &AppState, metadata: &Metadata) -> ApiResult<(FileName, String, Visibility)> {
    let name = FileName::parse(
        metadata.get(&["filename", "name", "fileName"]).unwrap_or("upload"),
        state.config.limits.max_file_name_bytes,
    )?;
    let declared_type = metadata.get(&["filetype", "type", "contentType", "content_type"]);
    let content_type = crate::files::upload::content_type(declared_type, &name);
    let visibility = match metadata.get(&["visibility"]) {
        None => state.config.default_visibility,
        Some(v) => Visibility::parse(v)
            .ok_or_else(|| ApiError::bad_request("invalid_upload_metadata", "visibility must be `private` or `key`"))?,
    };
    Ok((name, content_type, visibility))
}

/// Create an upload (tus `creation`); with a body, also its first chunk (`creation-with-upload`).
#[utoipa::path(post, path = "/uploads", tag = "uploads", security(("bearer" = [])),
    params(
        ("Tus-Resumable" = String, Header, description = "`1.0.0`"),
        ("Upload-Length" = Option<u64>, Header, description = "Total size in bytes"),
        ("Upload-Defer-Length" = Option<String>, Header, description = "`1` when the size is not known yet"),
        ("Upload-Metadata" = Option<String>, Header, description = "`filename <base64>,filetype <base64>[,visibility <base64>]`"),
        ("Upload-Checksum" = Option<String>, Header, description = "`sha256 <base64>` of the body, if any"),
    ),
    request_body(description = "Optional first chunk (`Content-Type: application/offset+octet-stream`)",
        content((crate::files::Binary = "application/offset+octet-stream"))),
    responses(
        (status = 201, description = "Created: `Location` is the upload URL; `Upload-Offset` when a body was sent; `Handoff-File-Key` if that completed it"),
        (status = 400, description = "Malformed tus headers", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "Missing or unsupported `Tus-Resumable`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than `Tus-Max-Size`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many incomplete uploads open", body = Problem, content_type = "application/problem+json"),
        (status = 460, description = "Checksum mismatch", body = Problem, content_type = "application/problem+json"),
    ))]
async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    headers::require_tus_resumable(&headers)?;
    let length = headers::creation_length(&headers)?;
    let max = state.config.limits.max_file_size;
    if length.is_some_and(|n| n > max) {
        return Err(crate::files::upload::too_large(max));
    }
    let metadata = headers::upload_metadata(&headers)?;
    let (name, content_type, visibility) = file_attributes(&state, &metadata)?;
    let with_body = has_body(&headers);
    let checksum = headers::upload_checksum(&headers)?;
    if with_body {
        headers::require_offset_octet_stream(&headers)?;
        if let (Some(length), Some(declared)) = (length, declared_body_length(&headers))
            && declared > length
        {
            return Err(append::length_exceeded());
        }
    }
    // A declared length the owner has no room for is refused now rather than after the bytes arrived; the commit
    // checks the quota again, atomically.
    let room = crate::files::own_space(&state, &user).await?;
    if length.is_some_and(|n| room.bytes_left.is_some_and(|left| n > left)) || room.files_left == Some(0) {
        return Err(crate::files::upload::quota_exceeded());
    }
    let now = handoff_core::now();
    let session = UploadSession {
        id: UploadId::generate(),
        owner: user.id,
        blob: BlobId::generate(),
        file_key: FileKey::generate(),
        length,
        offset: 0,
        metadata: metadata.raw,
        name,
        content_type,
        visibility,
        store_state: String::new(),
        hash_state: Vec::new(),
        completed: false,
        created_at: now,
        expires_at: now + Duration::from_secs(state.config.tus.expiry_secs),
    };
    let max_open = state.config.tus.max_open_per_user;
    if !state.meta.create_upload(&session, max_open, now).await? {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_open_uploads",
            format!("at most {max_open} incomplete uploads may be open at once; finish or delete one"),
        ));
    }
    let location = format!("/uploads/{}", session.id);
    tracing::info!(owner = %user.id, blob = %session.blob, "upload created");
    let (offset, expires_at, file) = if with_body || length == Some(0) {
        let id = session.id.clone();
        let appended = match Lease::acquire(&state, &id).await? {
            Some((lease, leased)) => {
                let request = AppendRequest { checksum, length: None };
                append::append(&state, &user, lease, leased, request, body).await
            }
            None => Err(ApiError::internal("a new upload was leased by someone else")),
        };
        match appended {
            Ok(Appended {
                offset,
                expires_at,
                file,
            }) => (offset, expires_at, file.map(|f| f.key)),
            Err(e) => {
                // The client never learns this upload's URL: remove it rather than leave it to expire.
                terminate(&state, &session.id).await;
                return Err(e);
            }
        }
    } else {
        (0, session.expires_at, None)
    };
    let mut response = (StatusCode::CREATED, [(header::LOCATION, location)]).into_response();
    response = with_progress(response, offset, expires_at, file.as_ref());
    Ok(response)
}

/// Best-effort removal of an incomplete upload and its bytes.
async fn terminate(state: &AppState, id: &UploadId) {
    if let Ok(Some((lease, session))) = Lease::acquire(state, id).await {
        if let Err(e) = state.blobs.abort_resumable(session.blob, &session.store_state).await {
            tracing::warn!(error = %e, "could not discard an upload's bytes");
        }
        if let Err(e) = state.meta.delete_upload(id, Some(&lease.token)).await {
            tracing::warn!(error = %e, "could not delete an upload session");
        }
    }
}

/// The upload's offset (tus `HEAD`).
#[utoipa::path(head, path = "/uploads/{id}", tag = "uploads", security(("bearer" = [])),
    params(("id" = String, Path, description = "The upload's id"),
        ("Tus-Resumable" = String, Header, description = "`1.0.0`")),
    responses(
        (status = 200, description = "`Upload-Offset`, `Upload-Length` or `Upload-Defer-Length`, `Upload-Metadata`, `Upload-Expires`; `Handoff-File-Key` once complete"),
        (status = 404, description = "No such upload available to you"),
        (status = 410, description = "Expired"),
        (status = 412, description = "Missing or unsupported `Tus-Resumable`"),
    ))]
async fn head_upload(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    headers::require_tus_resumable(&headers)?;
    let session = owned_session(&state, &user, &id).await?;
    if session.is_expired(handoff_core::now()) {
        return Err(expired());
    }
    let session = append::settle(&state, &user, session).await?;
    let file = session.completed.then_some(&session.file_key);
    let mut response = with_progress(StatusCode::OK.into_response(), session.offset, session.expires_at, file);
    match session.length {
        Some(length) => set(&mut response, "upload-length", HeaderValue::from(length)),
        None => set(&mut response, "upload-defer-length", HeaderValue::from_static("1")),
    }
    if !session.metadata.is_empty()
        && let Ok(value) = HeaderValue::from_str(&session.metadata)
    {
        set(&mut response, "upload-metadata", value);
    }
    Ok(response)
}

/// Append a chunk at `Upload-Offset` (tus `PATCH`).
#[utoipa::path(patch, path = "/uploads/{id}", tag = "uploads", security(("bearer" = [])),
    params(("id" = String, Path, description = "The upload's id"),
        ("Tus-Resumable" = String, Header, description = "`1.0.0`"),
        ("Upload-Offset" = u64, Header, description = "Where this chunk starts: must equal the upload's offset"),
        ("Upload-Length" = Option<u64>, Header, description = "The total size, for an upload created with a deferred length"),
        ("Upload-Checksum" = Option<String>, Header, description = "`sha256 <base64>` of this chunk")),
    request_body(description = "The chunk", content((crate::files::Binary = "application/offset+octet-stream"))),
    responses(
        (status = 204, description = "Stored: the new `Upload-Offset`; `Handoff-File-Key` when this completed the upload"),
        (status = 400, description = "Malformed tus headers or interrupted body", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such upload available to you", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`Upload-Offset` is not the upload's offset", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "Expired", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Past `Upload-Length`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not `application/offset+octet-stream`", body = Problem, content_type = "application/problem+json"),
        (status = 423, description = "Another request is appending right now", body = Problem, content_type = "application/problem+json"),
        (status = 460, description = "Checksum mismatch: the chunk was discarded", body = Problem, content_type = "application/problem+json"),
    ))]
async fn patch_upload(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    headers::require_tus_resumable(&headers)?;
    headers::require_offset_octet_stream(&headers)?;
    let offset = headers::upload_offset(&headers)?;
    let checksum = headers::upload_checksum(&headers)?;
    let length = headers::upload_length(&headers)?;
    let session = owned_session(&state, &user, &id).await?;
    let session = precheck(&state, &user, session, offset).await?;
    if session.completed {
        if has_body(&headers) {
            return Err(append::length_exceeded());
        }
        let response = StatusCode::NO_CONTENT.into_response();
        return Ok(with_progress(
            response,
            session.offset,
            session.expires_at,
            Some(&session.file_key),
        ));
    }
    let known_length = session.length.or(length);
    if let (Some(total), Some(declared)) = (known_length, declared_body_length(&headers))
        && offset.saturating_add(declared) > total
    {
        return Err(append::length_exceeded());
    }
    let Some((lease, leased)) = Lease::acquire(&state, &session.id).await? else {
        // Tell the client why: somebody moved the offset, finished, or is appending right now.
        let now = handoff_core::now();
        return Err(match state.meta.upload_by_id(&session.id).await? {
            None => not_found(),
            Some(current) if current.offset != offset => offset_mismatch(current.offset),
            Some(current) if current.is_expired(now) => expired(),
            Some(current) if current.completed => offset_mismatch(current.offset),
            Some(_) => locked(),
        });
    };
    if leased.offset != offset {
        let current = leased.offset;
        lease.release(&state).await;
        return Err(offset_mismatch(current));
    }
    let appended = append::append(&state, &user, lease, leased, AppendRequest { checksum, length }, body).await?;
    let response = StatusCode::NO_CONTENT.into_response();
    Ok(with_progress(
        response,
        appended.offset,
        appended.expires_at,
        appended.file.as_ref().map(|f| &f.key),
    ))
}

/// Checks that do not need the lease: expiry and the client's offset.
async fn precheck(state: &AppState, user: &User, session: UploadSession, offset: u64) -> ApiResult<UploadSession> {
    if session.is_expired(handoff_core::now()) {
        return Err(expired());
    }
    let session = append::settle(state, user, session).await?;
    if session.offset != offset {
        return Err(offset_mismatch(session.offset));
    }
    Ok(session)
}

/// Terminate an upload (tus `termination`): its bytes are discarded. A completed upload's file is not affected.
#[utoipa::path(delete, path = "/uploads/{id}", tag = "uploads", security(("bearer" = [])),
    params(("id" = String, Path, description = "The upload's id"),
        ("Tus-Resumable" = String, Header, description = "`1.0.0`")),
    responses(
        (status = 204, description = "Terminated"),
        (status = 404, description = "No such upload available to you", body = Problem, content_type = "application/problem+json"),
        (status = 423, description = "Another request is appending right now", body = Problem, content_type = "application/problem+json"),
    ))]
async fn delete_upload(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    headers::require_tus_resumable(&headers)?;
    let session = owned_session(&state, &user, &id).await?;
    if session.completed {
        state.meta.delete_upload(&session.id, None).await?;
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    // Expired or not, an unleased session can be taken: expiry is only refused for appends.
    let now = handoff_core::now();
    let token = handoff_core::LeaseToken::generate();
    let until = Lease::until(&state, now);
    // Terminating an expired upload early is allowed: take the lease as of just before it expired.
    let as_of = now.min(session.expires_at - Duration::from_micros(1));
    let Some(leased) = state.meta.lease_upload(&session.id, &token, until, as_of).await? else {
        return Err(match state.meta.upload_by_id(&session.id).await? {
            None => not_found(),
            Some(current) if current.completed => {
                state.meta.delete_upload(&session.id, None).await?;
                return Ok(StatusCode::NO_CONTENT.into_response());
            }
            Some(_) => locked(),
        });
    };
    state.blobs.abort_resumable(leased.blob, &leased.store_state).await?;
    state.meta.delete_upload(&session.id, Some(&token)).await?;
    tracing::info!(owner = %user.id, blob = %leased.blob, "upload terminated");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// An upload's progress as JSON.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadStatus {
    id: String,
    /// Bytes durably stored.
    offset: u64,
    /// Total size; absent while deferred.
    length: Option<u64>,
    complete: bool,
    #[schema(example = "report.pdf")]
    name: String,
    /// When an incomplete upload expires.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    expires_at: OffsetDateTime,
    /// The file (with its secret key) once complete.
    file: Option<FileView>,
}

/// An upload's status and, once complete, its file and key.
#[utoipa::path(get, path = "/uploads/{id}", tag = "uploads", security(("bearer" = [])),
    params(("id" = String, Path, description = "The upload's id")),
    responses(
        (status = 200, description = "The upload", body = UploadStatus),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such upload available to you", body = Problem, content_type = "application/problem+json"),
    ))]
async fn status(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<UploadStatus>> {
    let session = owned_session(&state, &user, &id).await?;
    let session = append::settle(&state, &user, session).await?;
    let file = if session.completed {
        state
            .meta
            .file_by_key(&session.file_key)
            .await?
            .as_ref()
            .map(FileView::from)
    } else {
        None
    };
    Ok(Json(UploadStatus {
        id: session.id.to_string(),
        offset: session.offset,
        length: session.length,
        complete: session.completed,
        name: session.name.as_str().to_owned(),
        expires_at: session.expires_at,
        file,
    }))
}
