//! The byte side of direct transfers on stores that cannot sign URLs: this server plays the object store at
//! `/direct/…`, behind URLs it signed itself (`signed`). No bearer token: the URL is the credential, bound to its
//! method and path, checked before anything else happens.
//!
//! - `PUT /direct/uploads/{id}/parts/{n}`: one part, exactly as long as the plan says (`Content-Length` is
//!   checked first, the stream is counted; a short or long body stores nothing); answers the part's `ETag`.
//! - `GET /direct/blobs/{blob}`: a file's bytes as `GET /files/{key}/content` serves them (`Range`, `ETag`,
//!   `If-None-Match`, the inert-content headers), described by the URL's signed parameters.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use handoff_core::{BlobId, FileName, FileRecord, StoreError, UploadId};
use time::OffsetDateTime;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::signed::{self, SignedUrl};
use crate::error::{ApiError, ApiResult, Problem};
use crate::files::download::{Served, content_disposition, respond_served};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(put_part)).routes(routes!(get_blob))
}

/// The path of a part's URL (the one place it is built).
pub fn part_path(id: &UploadId, number: u32) -> String {
    format!("/direct/uploads/{id}/parts/{number}")
}

fn blob_path(blob: BlobId) -> String {
    format!("/direct/blobs/{}", blob.0.simple())
}

/// A download URL for `file`: presigned by the store if it can, else signed by this server.
pub async fn download_url(state: &AppState, file: &FileRecord, ttl: Duration) -> ApiResult<SignedUrl> {
    let disposition = content_disposition(&file.name);
    let disposition = disposition.to_str().unwrap_or("attachment");
    let now = handoff_core::now();
    if let Some(url) = state
        .blobs
        .presigned_get(file.blob, ttl, disposition, &file.content_type)
        .await?
    {
        return Ok(SignedUrl {
            url,
            expires_at: now + ttl,
        });
    }
    let size = file.size.to_string();
    let modified = file.created_at.unix_timestamp().to_string();
    let params = [
        ("name", file.name.as_str()),
        ("type", file.content_type.as_str()),
        ("size", size.as_str()),
        ("sha256", file.sha256.as_str()),
        ("modified", modified.as_str()),
    ];
    signed::sign(state, &Method::GET, &blob_path(file.blob), &params, ttl).await
}

fn session_gone() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "upload_session_not_found",
        "this upload session no longer exists",
    )
}

fn wrong_length(want: u64) -> ApiError {
    ApiError::bad_request("part_size_mismatch", format!("this part must be exactly {want} bytes"))
}

/// Receive one part of a direct upload (URL from `POST /upload-sessions…`, signed by this server).
#[utoipa::path(put, path = "/direct/uploads/{id}/parts/{number}", tag = "direct uploads",
    params(
        ("id" = String, Path, description = "The session's id"),
        ("number" = u32, Path, description = "The part's number"),
        ("exp" = i64, Query, description = "Signed: expiry (Unix seconds)"),
        ("kid" = String, Query, description = "Signed: key id"),
        ("sig" = String, Query, description = "The signature"),
    ),
    request_body(content = crate::files::Binary, content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "Stored; `ETag` is the part's tag"),
        (status = 400, description = "Not exactly the part's size", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Expired or tampered URL", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The session no longer exists", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The parts are joined already (completion started)", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "The session expired", body = Problem, content_type = "application/problem+json"),
    ))]
async fn put_part(
    State(state): State<AppState>,
    Path((id, number)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let path = format!("/direct/uploads/{id}/parts/{number}");
    signed::verify(&state, &Method::PUT, &path, query.as_deref()).await?;
    // Signed by us, so both parse; anything else was refused above.
    let id = UploadId::parse(&id).ok_or_else(session_gone)?;
    let number: u32 = number.parse().map_err(|_| session_gone())?;
    let session = state.meta.direct_upload(&id).await?.ok_or_else(session_gone)?;
    if session.is_expired(handoff_core::now()) {
        return Err(super::expired());
    }
    if session.verification.is_some() || session.completed_at.is_some() {
        return Err(super::joined(&session));
    }
    let want = session.part_len(number).ok_or_else(session_gone)?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n != want) {
        return Err(wrong_length(want));
    }
    // Counted as it streams: past the part's size, or short of it at the end, the stream fails (and says so in
    // `wrong`) and the store keeps nothing.
    let wrong = Arc::new(AtomicBool::new(false));
    let flag = wrong.clone();
    let checked = futures::stream::unfold(
        (body.into_data_stream(), 0u64, false),
        move |(mut inner, seen, done)| {
            let flag = flag.clone();
            async move {
                if done {
                    return None;
                }
                let fail = |what: &'static str| {
                    flag.store(true, Ordering::Relaxed);
                    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
                };
                match inner.next().await {
                    Some(Ok(chunk)) => {
                        let seen = seen + chunk.len() as u64;
                        if seen > want {
                            Some((Err(fail("part too long")), (inner, seen, true)))
                        } else {
                            Some((Ok(chunk), (inner, seen, false)))
                        }
                    }
                    Some(Err(e)) => Some((Err(std::io::Error::other(e)), (inner, seen, true))),
                    None if seen == want => None,
                    None => Some((Err(fail("part too short")), (inner, seen, true))),
                }
            }
        },
    );
    let stored = state
        .blobs
        .put_direct_part(session.blob, &session.store_state, number, Box::pin(checked))
        .await;
    let etag = match stored {
        Ok(etag) => etag,
        Err(_) if wrong.load(Ordering::Relaxed) => return Err(wrong_length(want)),
        Err(StoreError::Conflict) => return Err(session_gone()),
        Err(e) => return Err(e.into()),
    };
    let etag = HeaderValue::from_str(&format!("\"{etag}\"")).map_err(ApiError::internal)?;
    Ok((StatusCode::OK, [(header::ETAG, etag)]).into_response())
}

/// A file's bytes behind a download URL this server signed (from `GET /files/{key}/download-url`).
#[utoipa::path(get, path = "/direct/blobs/{blob}", tag = "direct uploads",
    params(
        ("blob" = String, Path, description = "Opaque"),
        ("sig" = String, Query, description = "The signature (the other query parameters are signed too)"),
        ("Range" = Option<String>, Header, description = "`bytes=START-END`, `bytes=START-` or `bytes=-SUFFIX`"),
    ),
    responses(
        (status = 200, description = "The bytes", content_type = "application/octet-stream", body = crate::files::Binary),
        (status = 206, description = "The requested range", content_type = "application/octet-stream", body = crate::files::Binary),
        (status = 304, description = "Not modified"),
        (status = 403, description = "Expired or tampered URL", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The file is gone", body = Problem, content_type = "application/problem+json"),
        (status = 416, description = "Range not satisfiable", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_blob(
    State(state): State<AppState>,
    Path(blob): Path<String>,
    RawQuery(query): RawQuery,
    method: Method,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let path = format!("/direct/blobs/{blob}");
    let params = signed::verify(&state, &method, &path, query.as_deref()).await?;
    let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let malformed = || ApiError::internal("a signed download URL lacks a parameter");
    let blob = uuid::Uuid::try_parse(&blob).map(BlobId).map_err(|_| malformed())?;
    let name = FileName::from_trusted(param("name").ok_or_else(malformed)?.to_owned());
    let modified = param("modified")
        .and_then(|v| v.parse::<i64>().ok())
        .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
        .ok_or_else(malformed)?;
    let served = Served {
        blob,
        size: param("size").and_then(|v| v.parse().ok()).ok_or_else(malformed)?,
        sha256: param("sha256").ok_or_else(malformed)?,
        name: &name,
        content_type: param("type").ok_or_else(malformed)?,
        modified,
    };
    // A file deleted (or expired) since the URL was minted is gone: 404, not an integrity failure.
    if let Err(StoreError::NotFound) = state.blobs.open(blob, Some(0..0)).await {
        return Err(ApiError::file_not_found());
    }
    let mut response = respond_served(&state, &served, &headers, false).await?;
    response
        .headers_mut()
        .insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    Ok(response)
}
