//! Receiving files: `POST /files` with a raw body or `multipart/form-data`. Bytes stream from the socket into the
//! blob store while they are counted and hashed; nothing is buffered beyond one write buffer. The metadata row —
//! the only thing that makes a file visible — is written after every blob of the request is durable, in one
//! transaction, so a request either adds all its files or none.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use handoff_core::{
    Account, BlobId, BlobStore, CommitOutcome, CommitRules, FileKey, FileName, FileRecord, TeamId, UploadLinkId,
    UserId, Visibility,
};
use percent_encoding::percent_decode_str;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// A blob that is durable but not yet referenced by any row.
struct Received {
    blob: BlobId,
    size: u64,
    sha256: String,
}

/// One file of an upload, ready to become visible.
struct Incoming {
    name: FileName,
    content_type: String,
    received: Received,
}

pub fn too_large(max: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "file_too_large",
        format!("a file may be at most {max} bytes"),
    )
}

/// `POST /files` bodies are bounded (`limits.max_inline_upload`, e.g. a Lambda's payload limit): larger files
/// go through the upload-session API.
pub fn use_upload_session(max: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "use_upload_session",
        format!(
            "POST /files accepts at most {max} bytes here; send larger files through an upload session: \
             POST /upload-sessions, PUT the parts to the URLs it gives, then POST /upload-sessions/{{id}}/complete"
        ),
    )
}

/// `body`, cut off with an error once more than `max` bytes went through (and `exceeded` set, so the caller can
/// tell this apart from other failures).
pub fn limit_body(body: Body, max: u64, exceeded: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Body {
    let mut seen: u64 = 0;
    Body::from_stream(body.into_data_stream().map(move |chunk| {
        let chunk = chunk?;
        seen += chunk.len() as u64;
        if seen > max {
            exceeded.store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(axum::Error::new(std::io::Error::other("inline upload limit exceeded")));
        }
        Ok(chunk)
    }))
}

pub fn quota_exceeded() -> ApiError {
    ApiError::new(
        StatusCode::INSUFFICIENT_STORAGE,
        "quota_exceeded",
        "this upload would exceed the storage quota",
    )
}

pub fn link_unavailable() -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "link_unavailable",
        "this link has expired, was revoked, or has no room left",
    )
}

/// Where an upload goes and how much room it has. The room is checked while bytes stream (so an upload over
/// quota stops after at most one write buffer) and again, atomically, when the files are committed.
#[derive(Clone, Debug)]
pub struct Destination {
    pub uploader: UserId,
    pub team: Option<TeamId>,
    pub upload_link: Option<UploadLinkId>,
    pub expires_at: Option<OffsetDateTime>,
    /// Bytes the account (and link) may still take; `None` is unlimited.
    pub bytes_left: Option<u64>,
    pub files_left: Option<u64>,
    /// What exceeding the room means to the client: a quota, or an upload link's limits.
    pub room_error: fn() -> ApiError,
}

impl Destination {
    pub fn account(&self) -> Account {
        self.team.map_or(Account::User(self.uploader), Account::Team)
    }
}

/// The size limit of the next file, and the error for going past it.
fn file_limit(
    max_file_size: u64,
    bytes_left: Option<u64>,
    room_error: fn() -> ApiError,
) -> (u64, Box<dyn Fn() -> ApiError + Send + Sync>) {
    match bytes_left {
        Some(left) if left < max_file_size => (left, Box::new(room_error)),
        _ => (max_file_size, Box::new(move || too_large(max_file_size))),
    }
}

fn interrupted(cause: impl std::fmt::Display) -> ApiError {
    tracing::info!(%cause, "upload body ended early");
    ApiError::bad_request("upload_interrupted", "the upload body ended before it was complete")
}

/// Streams `body` into a new blob, hashing and counting on the way. Any error drops the writer, which discards
/// the partial bytes.
async fn receive<E>(
    blobs: &dyn BlobStore,
    mut body: impl Stream<Item = Result<Bytes, E>> + Unpin,
    max_size: u64,
    on_too_large: &(dyn Fn() -> ApiError + Send + Sync),
    on_body_error: impl Fn(E) -> ApiError,
) -> ApiResult<Received> {
    let mut writer = blobs.create().await?;
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(&on_body_error)?;
        size += chunk.len() as u64;
        if size > max_size {
            return Err(on_too_large());
        }
        hasher.update(&chunk);
        writer.write(chunk).await?;
    }
    let blob = writer.id();
    writer.commit().await?;
    Ok(Received {
        blob,
        size,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// The stored content type: the client's if it is a well-formed media type that says something, otherwise a guess
/// from the file name. It is only ever served with `nosniff` and as an attachment.
pub(crate) fn content_type(declared: Option<&str>, name: &FileName) -> String {
    let declared = declared
        .and_then(|v| v.parse::<mime::Mime>().ok())
        .filter(|m| m.as_ref().len() <= 255)
        .filter(|m| *m != mime::APPLICATION_OCTET_STREAM && *m != mime::APPLICATION_WWW_FORM_URLENCODED);
    match declared {
        Some(m) => m.to_string(),
        None => mime_guess::from_path(name.as_str()).first_or_octet_stream().to_string(),
    }
}

/// The file name of a raw upload: `?fileName=` or `X-File-Name` (percent-encoded UTF-8 allowed, since header
/// values are ASCII).
fn raw_file_name(query: Option<&str>, headers: &HeaderMap, max: usize) -> ApiResult<FileName> {
    let from_header = headers
        .get("x-file-name")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| percent_decode_str(s).decode_utf8().ok())
                .map(|s| s.into_owned())
                .ok_or_else(|| ApiError::bad_request("invalid_file_name", "X-File-Name must be percent-encoded UTF-8"))
        })
        .transpose()?;
    let raw = query.map(str::to_owned).or(from_header).ok_or_else(|| {
        ApiError::bad_request(
            "missing_file_name",
            "name the file with ?fileName=NAME, an X-File-Name header, or send multipart/form-data",
        )
    })?;
    Ok(FileName::parse(&raw, max)?)
}

async fn receive_raw(
    state: &AppState,
    dest: &Destination,
    headers: &HeaderMap,
    name: FileName,
    body: Body,
) -> ApiResult<Incoming> {
    let (limit, on_too_large) = file_limit(state.config.limits.max_file_size, dest.bytes_left, dest.room_error);
    let declared_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_length.is_some_and(|n| n > limit) {
        return Err(on_too_large());
    }
    let declared_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let received = receive(
        state.blobs.as_ref(),
        body.into_data_stream(),
        limit,
        on_too_large.as_ref(),
        interrupted,
    )
    .await?;
    Ok(Incoming {
        content_type: content_type(declared_type, &name),
        name,
        received,
    })
}

fn multipart_error(e: multer::Error, max_file_size: u64) -> ApiError {
    match e {
        multer::Error::FieldSizeExceeded { .. } | multer::Error::StreamSizeExceeded { .. } => too_large(max_file_size),
        multer::Error::StreamReadFailed(cause) => interrupted(cause),
        other => ApiError::bad_request("malformed_multipart", other.to_string()),
    }
}

/// Every part named `file` (or `files`) is a file; other parts are skipped. Received files are pushed to `files`
/// as they complete, so that the caller can discard them if a later part fails.
async fn receive_multipart(
    state: &AppState,
    dest: &Destination,
    boundary: String,
    body: Body,
    files: &mut Vec<Incoming>,
) -> ApiResult<()> {
    let limits = &state.config.limits;
    let max = limits.max_file_size;
    let constraints = multer::Constraints::new().size_limit(
        multer::SizeLimit::new()
            .per_field(max)
            .whole_stream(max.saturating_mul(limits.max_files_per_request as u64)),
    );
    let mut multipart = multer::Multipart::with_constraints(body.into_data_stream(), boundary, constraints);
    while let Some(field) = multipart.next_field().await.map_err(|e| multipart_error(e, max))? {
        if !matches!(field.name(), Some("file" | "files")) {
            continue;
        }
        if files.len() == limits.max_files_per_request {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_files",
                format!("at most {} files per request", limits.max_files_per_request),
            ));
        }
        let name = FileName::parse(
            field.file_name().ok_or_else(|| {
                ApiError::bad_request("missing_file_name", "each `file` part needs a filename parameter")
            })?,
            limits.max_file_name_bytes,
        )?;
        if dest.files_left.is_some_and(|left| files.len() as u64 >= left) {
            return Err((dest.room_error)());
        }
        let declared_type = field.content_type().map(ToString::to_string);
        let used: u64 = files.iter().map(|f| f.received.size).sum();
        let (limit, on_too_large) = file_limit(
            max,
            dest.bytes_left.map(|left| left.saturating_sub(used)),
            dest.room_error,
        );
        let received = receive(state.blobs.as_ref(), field, limit, on_too_large.as_ref(), |e| {
            multipart_error(e, max)
        })
        .await?;
        files.push(Incoming {
            content_type: content_type(declared_type.as_deref(), &name),
            name,
            received,
        });
    }
    if files.is_empty() {
        return Err(ApiError::bad_request(
            "no_file",
            "the multipart body has no part named `file`",
        ));
    }
    Ok(())
}

async fn discard(blobs: &dyn BlobStore, files: &[Incoming]) {
    for file in files {
        if let Err(e) = blobs.delete(file.received.blob).await {
            tracing::warn!(blob = %file.received.blob, error = %e, "could not remove blob of a failed upload");
        }
    }
}

/// Receives every file of the request and makes them visible together. On any failure the blobs already written
/// are deleted (and would be collected as orphans if that failed too).
pub async fn store_upload(
    state: &AppState,
    dest: &Destination,
    headers: &HeaderMap,
    query_file_name: Option<&str>,
    visibility: Option<Visibility>,
    body: Body,
) -> ApiResult<Vec<FileRecord>> {
    let boundary = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.trim_start().to_ascii_lowercase().starts_with("multipart/form-data"))
        .map(|v| {
            multer::parse_boundary(v).map_err(|_| {
                ApiError::bad_request("malformed_multipart", "multipart/form-data needs a boundary parameter")
            })
        })
        .transpose()?;
    if dest.files_left == Some(0) || dest.bytes_left == Some(0) {
        return Err((dest.room_error)());
    }
    let mut incoming = Vec::new();
    let received = match boundary {
        Some(boundary) => receive_multipart(state, dest, boundary, body, &mut incoming).await,
        None => match raw_file_name(query_file_name, headers, state.config.limits.max_file_name_bytes) {
            Ok(name) => receive_raw(state, dest, headers, name, body)
                .await
                .map(|file| incoming.push(file)),
            Err(e) => Err(e),
        },
    };
    if let Err(e) = received {
        discard(state.blobs.as_ref(), &incoming).await;
        return Err(e);
    }
    let visibility = visibility.unwrap_or(state.config.default_visibility);
    let finished = incoming
        .iter()
        .map(|f| FinishedBlob {
            key: None,
            blob: f.received.blob,
            size: f.received.size,
            sha256: f.received.sha256.clone(),
            name: f.name.clone(),
            content_type: f.content_type.clone(),
        })
        .collect();
    match commit_files(state, dest, visibility, finished).await {
        Ok(records) => Ok(records),
        Err(e) => {
            discard(state.blobs.as_ref(), &incoming).await;
            Err(e)
        }
    }
}

/// A blob that is durable, with its size and hash known, ready to become a file.
#[derive(Debug)]
pub struct FinishedBlob {
    /// The file's key when the caller chose it ahead (a resumable upload reserves one at creation, so that
    /// completing twice makes one file); otherwise a fresh one is generated.
    pub key: Option<FileKey>,
    pub blob: BlobId,
    pub size: u64,
    pub sha256: String,
    pub name: FileName,
    pub content_type: String,
}

/// The one way finished blobs become visible files, for every upload path (`POST /files`, upload links, tus
/// completion): one transaction for all of them, which also charges the destination's quota (and upload link).
/// On failure nothing is visible and the blobs are left to the caller.
pub async fn commit_files(
    state: &AppState,
    dest: &Destination,
    visibility: Visibility,
    blobs: Vec<FinishedBlob>,
) -> ApiResult<Vec<FileRecord>> {
    let now = handoff_core::now();
    let records: Vec<FileRecord> = blobs
        .into_iter()
        .map(|f| FileRecord {
            key: f.key.unwrap_or_else(FileKey::generate),
            blob: f.blob,
            owner: dest.uploader,
            name: f.name,
            size: f.size,
            sha256: f.sha256,
            content_type: f.content_type,
            visibility,
            created_at: now,
            updated_at: now,
            team: dest.team,
            expires_at: dest.expires_at,
            upload_link: dest.upload_link,
        })
        .collect();
    let rules = CommitRules {
        default_quota: state.config.quotas.default_for(dest.account()),
        upload_link: dest.upload_link,
        now,
        enforce_quota: true,
    };
    let outcome = match state.meta.commit_files(&records, &rules).await {
        Ok(CommitOutcome::Committed) => Ok(()),
        Ok(CommitOutcome::QuotaExceeded) => Err(quota_exceeded()),
        Ok(CommitOutcome::LinkExhausted) => Err(link_unavailable()),
        Err(e) => Err(e.into()),
    };
    outcome?;
    // DEBUG, not INFO: the audit log already keeps a `file.upload` event of every upload, and formatting and
    // writing a line per upload was about 8 % of a 4 KiB upload's CPU (bench/RESULTS.md).
    for record in &records {
        tracing::debug!(owner = %dest.uploader, blob = %record.blob, size = record.size, "file stored");
    }
    Ok(records)
}
