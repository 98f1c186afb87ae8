//! Receiving files: `POST /files` with a raw body or `multipart/form-data`. Bytes stream from the socket into the
//! blob store while they are counted and hashed; nothing is buffered beyond one write buffer. The metadata row —
//! the only thing that makes a file visible — is written after every blob of the request is durable, in one
//! transaction, so a request either adds all its files or none.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use handoff_core::{BlobId, BlobStore, FileKey, FileName, FileRecord, User, Visibility};
use percent_encoding::percent_decode_str;
use sha2::{Digest, Sha256};

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
    on_body_error: impl Fn(E) -> ApiError,
) -> ApiResult<Received> {
    let mut writer = blobs.create().await?;
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(&on_body_error)?;
        size += chunk.len() as u64;
        if size > max_size {
            return Err(too_large(max_size));
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

async fn receive_raw(state: &AppState, headers: &HeaderMap, name: FileName, body: Body) -> ApiResult<Incoming> {
    let limits = &state.config.limits;
    let declared_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_length.is_some_and(|n| n > limits.max_file_size) {
        return Err(too_large(limits.max_file_size));
    }
    let declared_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let received = receive(
        state.blobs.as_ref(),
        body.into_data_stream(),
        limits.max_file_size,
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
async fn receive_multipart(state: &AppState, boundary: String, body: Body, files: &mut Vec<Incoming>) -> ApiResult<()> {
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
        let declared_type = field.content_type().map(ToString::to_string);
        let received = receive(state.blobs.as_ref(), field, max, |e| multipart_error(e, max)).await?;
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
    owner: &User,
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
    let mut incoming = Vec::new();
    let received = match boundary {
        Some(boundary) => receive_multipart(state, boundary, body, &mut incoming).await,
        None => match raw_file_name(query_file_name, headers, state.config.limits.max_file_name_bytes) {
            Ok(name) => receive_raw(state, headers, name, body)
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
    match commit_files(state, owner, visibility, finished).await {
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

/// The one way finished blobs become visible files, for every upload path (`POST /files`, tus completion): one
/// transaction for all of them. On failure nothing is visible and the blobs are left to the caller.
/// Quotas and team ownership (issue 4) plug in here.
pub async fn commit_files(
    state: &AppState,
    owner: &User,
    visibility: Visibility,
    blobs: Vec<FinishedBlob>,
) -> ApiResult<Vec<FileRecord>> {
    let now = handoff_core::now();
    let records: Vec<FileRecord> = blobs
        .into_iter()
        .map(|f| FileRecord {
            key: f.key.unwrap_or_else(FileKey::generate),
            blob: f.blob,
            owner: owner.id,
            name: f.name,
            size: f.size,
            sha256: f.sha256,
            content_type: f.content_type,
            visibility,
            created_at: now,
            updated_at: now,
        })
        .collect();
    state.meta.insert_files(&records).await?;
    for record in &records {
        tracing::info!(owner = %owner.id, blob = %record.blob, size = record.size, "file stored");
    }
    Ok(records)
}
