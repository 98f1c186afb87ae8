//! Resumable uploads: tus 1.0.0 at `/uploads` with the `creation`, `creation-with-upload`,
//! `creation-defer-length`, `termination`, `checksum` (sha256) and `expiration` extensions, plus
//! `GET /uploads/{id}` for the upload's status and, once complete, its file.
//!
//! The same protocol is served to holders of an upload link at `/u/{token}/uploads` (no account needed): such a
//! session records its link (and team), every request on it must present that link's token (and password, if it
//! has one), and its file is committed through the link like a `POST /u/{token}` upload, so the link's limits and
//! the receiver's quota apply and the sender never learns the file's key.
//!
//! Session state lives in the metadata store ([`handoff_core::UploadStore`]) and bytes in the blob store's
//! resumable writer ([`handoff_core::ResumableBlobStore`]), so an upload survives a restart and continues on any
//! node. Every request but `OPTIONS` needs a bearer token (or, under `/u/{token}`, a live link); an upload
//! created by someone else answers 404 exactly like one that does not exist. `headers` parses the tus headers;
//! `append` streams, checkpoints and completes.

pub mod append;
pub mod expiry;
pub mod headers;

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use handoff_core::{BlobId, FileKey, FileName, UploadId, UploadLink, UploadSession, User, UserId, Visibility};
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
use crate::files::upload::Destination;
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
        .routes(routes!(options_link_collection, create_via_link))
        .routes(routes!(
            options_link_upload,
            head_link_upload,
            patch_link_upload,
            delete_link_upload,
            link_status
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

/// Who is uploading: a signed-in user into their own space, or someone holding a live upload link (who gets the
/// link's destination and never a file key). Its `Debug` leaves out the link's token.
#[derive(Clone)]
pub enum Uploader {
    User(User),
    Link {
        link: Box<UploadLink>,
        /// The token as presented (already matched against the stored hash), for the upload URLs we answer.
        token: String,
        /// The link's destination, with its room less what its open uploads reserve.
        dest: Box<Destination>,
    },
}

impl std::fmt::Debug for Uploader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::User(user) => f.debug_tuple("User").field(&user.id).finish(),
            Self::Link { link, .. } => f.debug_struct("Link").field("id", &link.id).finish_non_exhaustive(),
        }
    }
}

impl Uploader {
    /// Whose space the bytes count against while the upload is open.
    fn owner(&self) -> UserId {
        match self {
            Self::User(user) => user.id,
            Self::Link { link, .. } => link.owner,
        }
    }

    /// Whether this uploader may see and continue `session`: a user only their own sessions made with a bearer
    /// token, a link holder only the sessions made through the same link.
    fn may_continue(&self, session: &UploadSession) -> bool {
        match self {
            Self::User(user) => session.owner == user.id && session.upload_link.is_none(),
            Self::Link { link, .. } => session.upload_link == Some(link.id),
        }
    }

    fn upload_url(&self, id: &UploadId) -> String {
        match self {
            Self::User(_) => format!("/uploads/{id}"),
            Self::Link { token, .. } => format!("/u/{token}/uploads/{id}"),
        }
    }

    /// The file's key goes only to a signed-in uploader; a link's sender learns no key (as with `POST /u/{token}`).
    fn sees_key(&self) -> bool {
        matches!(self, Self::User(_))
    }

    /// Where a completed upload goes, and the room it has there now.
    pub async fn destination(&self, state: &AppState) -> ApiResult<Destination> {
        match self {
            Self::User(user) => crate::files::own_space(state, user).await,
            Self::Link { dest, .. } => Ok(dest.as_ref().clone()),
        }
    }
}

/// The session `raw_id` names, if it exists and `who` may continue it (anything else is the same 404).
async fn owned_session(state: &AppState, who: &Uploader, raw_id: &str) -> ApiResult<UploadSession> {
    let id = UploadId::parse(raw_id).ok_or_else(not_found)?;
    match state.meta.upload_by_id(&id).await? {
        Some(session) if who.may_continue(&session) => Ok(session),
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

/// `Upload-Offset`, and either `Upload-Expires` (still open) or, once complete, the file key for an uploader who
/// may see it.
fn with_progress(
    mut response: Response,
    who: &Uploader,
    offset: u64,
    expires_at: OffsetDateTime,
    file: Option<&FileKey>,
) -> Response {
    set(&mut response, "upload-offset", HeaderValue::from(offset));
    match file {
        Some(key) => {
            if who.sees_key()
                && let Ok(value) = HeaderValue::from_str(key.as_str())
            {
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
/// `visibility`). A missing name becomes `upload`. Files that arrive through a link are always private.
fn file_attributes(state: &AppState, who: &Uploader, metadata: &Metadata) -> ApiResult<(FileName, String, Visibility)> {
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
    let visibility = match who {
        Uploader::User(_) => visibility,
        Uploader::Link { .. } => Visibility::Private,
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
        (status = 507, description = "The declared length does not fit your quota", body = Problem, content_type = "application/problem+json"),
    ))]
async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    create_for(&state, &Uploader::User(user), &headers, body).await
}

async fn create_for(state: &AppState, who: &Uploader, headers: &HeaderMap, body: Body) -> ApiResult<Response> {
    headers::require_tus_resumable(headers)?;
    let length = headers::creation_length(headers)?;
    let max = state.config.limits.max_file_size;
    if length.is_some_and(|n| n > max) {
        return Err(crate::files::upload::too_large(max));
    }
    let metadata = headers::upload_metadata(headers)?;
    let (name, content_type, visibility) = file_attributes(state, who, &metadata)?;
    let with_body = has_body(headers);
    let checksum = headers::upload_checksum(headers)?;
    if with_body {
        headers::require_offset_octet_stream(headers)?;
        if let (Some(length), Some(declared)) = (length, declared_body_length(headers))
            && declared > length
        {
            return Err(append::length_exceeded());
        }
    }
    // A declared length there is no room for is refused now rather than after the bytes arrived; the commit
    // checks the quota (and the link's limits) again, atomically. The room already excludes what other open
    // uploads into the same space (and through the same link) reserve.
    let room = who.destination(state).await?;
    if length.is_some_and(|n| room.bytes_left.is_some_and(|left| n > left)) || room.files_left == Some(0) {
        return Err((room.room_error)());
    }
    let now = handoff_core::now();
    let (team, upload_link) = match who {
        Uploader::User(_) => (None, None),
        Uploader::Link { link, .. } => (link.team, Some(link.id)),
    };
    let session = UploadSession {
        id: UploadId::generate(),
        owner: who.owner(),
        team,
        upload_link,
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
    let location = who.upload_url(&session.id);
    tracing::info!(owner = %session.owner, blob = %session.blob, link = upload_link.is_some(), "upload created");
    let (offset, expires_at, file) = if with_body || length == Some(0) {
        let id = session.id.clone();
        let appended = match Lease::acquire(state, &id).await? {
            Some((lease, leased)) => {
                let request = AppendRequest { checksum, length: None };
                append::append(state, who, lease, leased, request, body).await
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
                terminate(state, &session.id).await;
                return Err(e);
            }
        }
    } else {
        (0, session.expires_at, None)
    };
    let mut response = (StatusCode::CREATED, [(header::LOCATION, location)]).into_response();
    response = with_progress(response, who, offset, expires_at, file.as_ref());
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
    head_for(&state, &Uploader::User(user), &id, &headers).await
}

async fn head_for(state: &AppState, who: &Uploader, id: &str, headers: &HeaderMap) -> ApiResult<Response> {
    headers::require_tus_resumable(headers)?;
    let session = owned_session(state, who, id).await?;
    if session.is_expired(handoff_core::now()) {
        return Err(expired());
    }
    let session = append::settle(state, who, session).await?;
    let file = session.completed.then_some(&session.file_key);
    let mut response = with_progress(
        StatusCode::OK.into_response(),
        who,
        session.offset,
        session.expires_at,
        file,
    );
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
        (status = 423, description = "Another request is appending right now (`Retry-After` says when to try again)", body = Problem, content_type = "application/problem+json"),
        (status = 460, description = "Checksum mismatch: the chunk was discarded", body = Problem, content_type = "application/problem+json"),
    ))]
async fn patch_upload(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    patch_for(&state, &Uploader::User(user), &id, &headers, body).await
}

async fn patch_for(state: &AppState, who: &Uploader, id: &str, headers: &HeaderMap, body: Body) -> ApiResult<Response> {
    headers::require_tus_resumable(headers)?;
    headers::require_offset_octet_stream(headers)?;
    let offset = headers::upload_offset(headers)?;
    let checksum = headers::upload_checksum(headers)?;
    let length = headers::upload_length(headers)?;
    let session = owned_session(state, who, id).await?;
    let session = precheck(state, who, session, offset).await?;
    if session.completed {
        if has_body(headers) {
            return Err(append::length_exceeded());
        }
        let response = StatusCode::NO_CONTENT.into_response();
        return Ok(with_progress(
            response,
            who,
            session.offset,
            session.expires_at,
            Some(&session.file_key),
        ));
    }
    if let (None, Some(total), Uploader::Link { dest, .. }) = (session.length, length, who) {
        // A deferred length, now declared: it must fit what the link has left (the room already excludes this
        // upload's own bytes so far).
        if dest
            .bytes_left
            .is_some_and(|left| total.saturating_sub(session.offset) > left)
        {
            return Err((dest.room_error)());
        }
    }
    let known_length = session.length.or(length);
    if let (Some(total), Some(declared)) = (known_length, declared_body_length(headers))
        && offset.saturating_add(declared) > total
    {
        return Err(append::length_exceeded());
    }
    let Some((lease, leased)) = Lease::acquire(state, &session.id).await? else {
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
        lease.release(state).await;
        return Err(offset_mismatch(current));
    }
    let appended = append::append(state, who, lease, leased, AppendRequest { checksum, length }, body).await?;
    let response = StatusCode::NO_CONTENT.into_response();
    Ok(with_progress(
        response,
        who,
        appended.offset,
        appended.expires_at,
        appended.file.as_ref().map(|f| &f.key),
    ))
}

/// Checks that do not need the lease: expiry and the client's offset.
async fn precheck(state: &AppState, who: &Uploader, session: UploadSession, offset: u64) -> ApiResult<UploadSession> {
    if session.is_expired(handoff_core::now()) {
        return Err(expired());
    }
    let session = append::settle(state, who, session).await?;
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
    delete_for(&state, &Uploader::User(user), &id, &headers).await
}

async fn delete_for(state: &AppState, who: &Uploader, id: &str, headers: &HeaderMap) -> ApiResult<Response> {
    headers::require_tus_resumable(headers)?;
    let session = owned_session(state, who, id).await?;
    if session.completed {
        state.meta.delete_upload(&session.id, None).await?;
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    // Expired or not, an unleased session can be taken: expiry is only refused for appends.
    let now = handoff_core::now();
    let token = handoff_core::LeaseToken::generate();
    let until = Lease::until(state, now);
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
    tracing::info!(owner = %leased.owner, blob = %leased.blob, "upload terminated");
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
    /// The SHA-256 (hex) of the whole file, once complete.
    sha256: Option<String>,
    /// The file (with its secret key) once complete; never shown through an upload link.
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
    status_for(&state, &Uploader::User(user), &id).await
}

async fn status_for(state: &AppState, who: &Uploader, id: &str) -> ApiResult<Json<UploadStatus>> {
    let session = owned_session(state, who, id).await?;
    let session = append::settle(state, who, session).await?;
    let file = if session.completed {
        state.meta.file_by_key(&session.file_key).await?
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
        sha256: file.as_ref().map(|f| f.sha256.clone()),
        file: file.as_ref().filter(|_| who.sees_key()).map(FileView::from),
    }))
}

// ---- The same protocol through an upload link: `/u/{token}/uploads`. Every request presents the link (and its
// password); the link must be live (not expired, revoked or full) for every one of them.

async fn link_uploader(state: &AppState, token: &str, headers: &HeaderMap) -> ApiResult<Uploader> {
    let (link, dest) = crate::links::usable_upload_link(state, token, headers).await?;
    Ok(Uploader::Link {
        link: Box::new(link),
        token: token.to_owned(),
        dest: Box::new(dest),
    })
}

/// tus capabilities for uploads through an upload link (no password needed).
#[utoipa::path(options, path = "/u/{token}/uploads", tag = "public links",
    params(("token" = String, Path, description = "The link's token")),
    responses((status = 204, description = "`Tus-Version`, `Tus-Extension`, `Tus-Checksum-Algorithm`, `Tus-Max-Size`")))]
async fn options_link_collection(State(state): State<AppState>) -> Response {
    capabilities(&state).await
}

/// tus capabilities (as for `/u/{token}/uploads`).
#[utoipa::path(options, path = "/u/{token}/uploads/{id}", tag = "public links",
    params(("token" = String, Path, description = "The link's token"),
        ("id" = String, Path, description = "The upload's id")),
    responses((status = 204, description = "`Tus-Version`, `Tus-Extension`, `Tus-Checksum-Algorithm`, `Tus-Max-Size`")))]
async fn options_link_upload(State(state): State<AppState>) -> Response {
    capabilities(&state).await
}

/// Create a resumable upload through an upload link (tus `creation`, as for `/uploads`; no account needed). The
/// file becomes a private file of the link's owner (or team) and its key is never returned.
#[utoipa::path(post, path = "/u/{token}/uploads", tag = "public links",
    params(
        ("token" = String, Path, description = "The link's token"),
        ("X-Link-Password" = Option<String>, Header, description = "The link's password, if it has one"),
        ("Tus-Resumable" = String, Header, description = "`1.0.0`"),
        ("Upload-Length" = Option<u64>, Header, description = "Total size in bytes"),
        ("Upload-Defer-Length" = Option<String>, Header, description = "`1` when the size is not known yet"),
        ("Upload-Metadata" = Option<String>, Header, description = "`filename <base64>,filetype <base64>`"),
        ("Upload-Checksum" = Option<String>, Header, description = "`sha256 <base64>` of the body, if any"),
    ),
    request_body(description = "Optional first chunk (`Content-Type: application/offset+octet-stream`)",
        content((crate::files::Binary = "application/offset+octet-stream"))),
    responses(
        (status = 201, description = "Created: `Location` is the upload URL (under `/u/{token}/uploads/`); `Upload-Offset` when a body was sent"),
        (status = 400, description = "Malformed tus headers", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Password required or wrong", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such link", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "Expired, revoked or full", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "Missing or unsupported `Tus-Resumable`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than `Tus-Max-Size` (`file_too_large`), or than the link still accepts once its other open uploads are counted (`link_limit_exceeded`)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many incomplete uploads open through this link", body = Problem, content_type = "application/problem+json"),
        (status = 460, description = "Checksum mismatch", body = Problem, content_type = "application/problem+json"),
        (status = 507, description = "The receiver's quota is full", body = Problem, content_type = "application/problem+json"),
    ))]
async fn create_via_link(
    State(state): State<AppState>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let who = link_uploader(&state, &token, &headers).await?;
    create_for(&state, &who, &headers, body).await
}

/// An upload's offset (tus `HEAD`), through the upload link it was created with.
#[utoipa::path(head, path = "/u/{token}/uploads/{id}", tag = "public links",
    params(("token" = String, Path, description = "The link's token"),
        ("id" = String, Path, description = "The upload's id"),
        ("X-Link-Password" = Option<String>, Header, description = "The link's password, if it has one"),
        ("Tus-Resumable" = String, Header, description = "`1.0.0`")),
    responses(
        (status = 200, description = "`Upload-Offset`, `Upload-Length` or `Upload-Defer-Length`, `Upload-Metadata`, `Upload-Expires`"),
        (status = 401, description = "Password required or wrong"),
        (status = 404, description = "No such link, or no such upload through it"),
        (status = 410, description = "The link or the upload expired"),
    ))]
async fn head_link_upload(
    State(state): State<AppState>,
    Path((token, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let who = link_uploader(&state, &token, &headers).await?;
    head_for(&state, &who, &id, &headers).await
}

/// Append a chunk (tus `PATCH`), through the upload link the upload was created with.
#[utoipa::path(patch, path = "/u/{token}/uploads/{id}", tag = "public links",
    params(("token" = String, Path, description = "The link's token"),
        ("id" = String, Path, description = "The upload's id"),
        ("X-Link-Password" = Option<String>, Header, description = "The link's password, if it has one"),
        ("Tus-Resumable" = String, Header, description = "`1.0.0`"),
        ("Upload-Offset" = u64, Header, description = "Where this chunk starts: must equal the upload's offset"),
        ("Upload-Length" = Option<u64>, Header, description = "The total size, for an upload created with a deferred length"),
        ("Upload-Checksum" = Option<String>, Header, description = "`sha256 <base64>` of this chunk")),
    request_body(description = "The chunk", content((crate::files::Binary = "application/offset+octet-stream"))),
    responses(
        (status = 204, description = "Stored: the new `Upload-Offset` (no file key is returned through a link)"),
        (status = 400, description = "Malformed tus headers or interrupted body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Password required or wrong", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such link, or no such upload through it", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`Upload-Offset` is not the upload's offset", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "The link or the upload expired, or the link was revoked or filled up", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Past `Upload-Length`, or more than the link still accepts", body = Problem, content_type = "application/problem+json"),
        (status = 423, description = "Another request is appending right now", body = Problem, content_type = "application/problem+json"),
        (status = 460, description = "Checksum mismatch: the chunk was discarded", body = Problem, content_type = "application/problem+json"),
        (status = 507, description = "The receiver's quota is full", body = Problem, content_type = "application/problem+json"),
    ))]
async fn patch_link_upload(
    State(state): State<AppState>,
    Path((token, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let who = link_uploader(&state, &token, &headers).await?;
    patch_for(&state, &who, &id, &headers, body).await
}

/// Terminate an upload (tus `termination`), through the upload link it was created with.
#[utoipa::path(delete, path = "/u/{token}/uploads/{id}", tag = "public links",
    params(("token" = String, Path, description = "The link's token"),
        ("id" = String, Path, description = "The upload's id"),
        ("X-Link-Password" = Option<String>, Header, description = "The link's password, if it has one"),
        ("Tus-Resumable" = String, Header, description = "`1.0.0`")),
    responses(
        (status = 204, description = "Terminated"),
        (status = 401, description = "Password required or wrong", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such link, or no such upload through it", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "The link expired, was revoked or filled up", body = Problem, content_type = "application/problem+json"),
        (status = 423, description = "Another request is appending right now", body = Problem, content_type = "application/problem+json"),
    ))]
async fn delete_link_upload(
    State(state): State<AppState>,
    Path((token, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let who = link_uploader(&state, &token, &headers).await?;
    delete_for(&state, &who, &id, &headers).await
}

/// An upload's status through the upload link it was created with (name, size and SHA-256; never the key).
#[utoipa::path(get, path = "/u/{token}/uploads/{id}", tag = "public links",
    params(("token" = String, Path, description = "The link's token"),
        ("id" = String, Path, description = "The upload's id"),
        ("X-Link-Password" = Option<String>, Header, description = "The link's password, if it has one")),
    responses(
        (status = 200, description = "The upload (`file` is always null here)", body = UploadStatus),
        (status = 401, description = "Password required or wrong", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such link, or no such upload through it", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "The link expired, was revoked or filled up", body = Problem, content_type = "application/problem+json"),
    ))]
async fn link_status(
    State(state): State<AppState>,
    Path((token, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<UploadStatus>> {
    let who = link_uploader(&state, &token, &headers).await?;
    status_for(&state, &who, &id).await
}
