//! Appending to an upload and completing it. The caller holds the session's lease (see [`Lease`]); this module
//! streams the body into the blob store's resumable writer while counting and hashing, records durable
//! progress (offset, store state, running SHA-256) under the lease, and turns a finished upload into a file
//! through the same [`commit_files`] that `POST /files` uses.
//!
//! Durability rule: the offset recorded in the metadata store — the one `HEAD` reports — only ever moves after
//! a checkpoint of the blob store returned, so it never exceeds what a crash would keep. Bytes written after the
//! last checkpoint are dropped when the upload is next resumed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;
use futures::StreamExt as _;
use handoff_core::{FileRecord, LeaseToken, ResumableWriter, StoreError, UploadId, UploadProgress, UploadSession};
use sha2::digest::common::hazmat::SerializableState;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::Uploader;
use super::headers::Checksum;
use crate::audit::Event;
use crate::error::{ApiError, ApiResult};
use crate::files::upload::{FinishedBlob, commit_files};
use crate::state::AppState;

/// A held lease on one upload, renewed in the background until dropped. Renewal runs beside the I/O, so a
/// slow disk or a slow client does not lose the lease; only a dead process (or a metadata store unreachable
/// for a whole lease period) does, and then the append stops before writing more.
#[derive(Debug)]
pub struct Lease {
    pub id: UploadId,
    pub token: LeaseToken,
    lost: Arc<AtomicBool>,
    renewal: tokio::task::JoinHandle<()>,
}

impl Lease {
    pub fn until(state: &AppState, now: OffsetDateTime) -> OffsetDateTime {
        now + Duration::from_secs(state.config.tus.lease_secs.max(1))
    }

    /// Tries to take the lease; `None` when the session is busy, complete, expired or gone.
    pub async fn acquire(state: &AppState, id: &UploadId) -> ApiResult<Option<(Self, UploadSession)>> {
        let token = LeaseToken::generate();
        let now = handoff_core::now();
        let Some(session) = state
            .meta
            .lease_upload(id, &token, Self::until(state, now), now)
            .await?
        else {
            return Ok(None);
        };
        let lost = Arc::new(AtomicBool::new(false));
        let renewal = tokio::spawn({
            let (state, id, token, lost) = (state.clone(), id.clone(), token.clone(), lost.clone());
            async move {
                let every = Duration::from_secs(state.config.tus.lease_secs.max(1)) / 3;
                loop {
                    tokio::time::sleep(every).await;
                    let until = Lease::until(&state, handoff_core::now());
                    match state.meta.renew_upload_lease(&id, &token, until).await {
                        Ok(true) => {}
                        Ok(false) => {
                            lost.store(true, Ordering::SeqCst);
                            return;
                        }
                        Err(e) => tracing::warn!(error = %e, "could not renew an upload lease"),
                    }
                }
            }
        });
        Ok(Some((
            Self {
                id: id.clone(),
                token,
                lost,
                renewal,
            },
            session,
        )))
    }

    fn check(&self) -> ApiResult<()> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(lease_lost());
        }
        Ok(())
    }

    /// Stops renewing and gives the lease up (best effort: it runs out by itself otherwise).
    pub async fn release(self, state: &AppState) {
        self.renewal.abort();
        if let Err(e) = state.meta.release_upload(&self.id, &self.token).await {
            tracing::warn!(error = %e, "could not release an upload lease");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewal.abort();
    }
}

fn lease_lost() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "upload_lease_lost",
        "another request took this upload over; check its offset with HEAD and resume",
    )
}

pub fn length_exceeded() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "upload_length_exceeded",
        "the body goes past the upload's declared length",
    )
}

fn interrupted(cause: impl std::fmt::Display) -> ApiError {
    tracing::info!(%cause, "upload chunk ended early");
    ApiError::bad_request("upload_interrupted", "the chunk ended before it was complete")
}

fn restore_hasher(session: &UploadSession) -> ApiResult<Sha256> {
    Ok(resume_sha256(&session.hash_state, session.offset)?)
}

/// A SHA-256 hasher as [`sha256_state`] saved it after `offset` bytes (an empty state only at offset 0), for
/// hashing that spans requests: tus appends, direct-upload verification.
pub(crate) fn resume_sha256(state: &[u8], offset: u64) -> Result<Sha256, StoreError> {
    if state.is_empty() {
        if offset == 0 {
            return Ok(Sha256::new());
        }
        return Err(StoreError::Corrupt("upload without hash state".into()));
    }
    let serialized = state
        .try_into()
        .map_err(|_| StoreError::Corrupt("upload hash state has the wrong size".into()))?;
    Sha256::deserialize(serialized).map_err(|_| StoreError::Corrupt("upload hash state is invalid".into()))
}

pub(crate) fn sha256_state(hasher: &Sha256) -> Vec<u8> {
    hasher.serialize().to_vec()
}

/// Where an append left the upload.
#[derive(Debug)]
pub struct Appended {
    pub offset: u64,
    pub expires_at: OffsetDateTime,
    /// The file, when this append completed the upload.
    pub file: Option<FileRecord>,
}

/// What the request asks for beyond its body.
#[derive(Debug, Default)]
pub struct AppendRequest {
    pub checksum: Option<Checksum>,
    /// `Upload-Length` sent with a PATCH, for an upload created with a deferred length.
    pub length: Option<u64>,
}

/// Appends `body` at the session's offset (the caller checked it matches the client's) and completes the upload
/// when it reaches its length. Always releases the lease.
pub async fn append(
    state: &AppState,
    who: &Uploader,
    lease: Lease,
    session: UploadSession,
    request: AppendRequest,
    body: Body,
) -> ApiResult<Appended> {
    let result = append_leased(state, who, &lease, session, request, body).await;
    if !matches!(result, Ok(Appended { file: Some(_), .. })) {
        lease.release(state).await;
    }
    result
}

async fn append_leased(
    state: &AppState,
    who: &Uploader,
    lease: &Lease,
    mut session: UploadSession,
    request: AppendRequest,
    body: Body,
) -> ApiResult<Appended> {
    let max = state.config.limits.max_file_size;
    if let Some(length) = request.length {
        match session.length {
            Some(current) if current != length => {
                return Err(ApiError::bad_request(
                    "upload_length_mismatch",
                    "Upload-Length differs from the length the upload was created with",
                ));
            }
            Some(_) => {}
            None if length < session.offset => {
                return Err(ApiError::bad_request(
                    "invalid_upload_length",
                    "Upload-Length is smaller than what was already uploaded",
                ));
            }
            None if length > max => return Err(crate::files::upload::too_large(max)),
            None => session.length = Some(length),
        }
    }
    let limit = session.length.unwrap_or(max);
    let mut hasher = restore_hasher(&session)?;
    let mut chunk_hasher = request.checksum.as_ref().map(|_| Sha256::new());
    let start = session.offset;
    let mut writer: Option<Box<dyn ResumableWriter>> = None;
    let mut received: u64 = 0;
    let mut body = body.into_data_stream();

    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(cause) => {
                // Keep what did arrive (tus clients resume from HEAD's offset), unless it cannot be verified.
                if chunk_hasher.is_none()
                    && let Some(writer) = writer.as_mut()
                {
                    let durable = start + received;
                    checkpoint(state, lease, &mut session, writer.as_mut(), durable, &hasher, false).await?;
                }
                return Err(interrupted(cause));
            }
        };
        if chunk.is_empty() {
            continue;
        }
        if start + received + chunk.len() as u64 > limit {
            return Err(if session.length.is_some() {
                length_exceeded()
            } else {
                crate::files::upload::too_large(max)
            });
        }
        lease.check()?;
        let writer = match writer.as_mut() {
            Some(writer) => writer,
            None => writer.insert(
                state
                    .blobs
                    .resume(session.blob, &session.store_state, session.offset)
                    .await?,
            ),
        };
        received += chunk.len() as u64;
        hasher.update(&chunk);
        if let Some(h) = chunk_hasher.as_mut() {
            h.update(&chunk);
        }
        writer.write(chunk).await?;
        if chunk_hasher.is_none() && writer.checkpoint_due() {
            checkpoint(
                state,
                lease,
                &mut session,
                writer.as_mut(),
                start + received,
                &hasher,
                false,
            )
            .await?;
        }
    }

    if let (Some(expected), Some(h)) = (&request.checksum, chunk_hasher)
        && h.finalize().as_slice() != expected.sha256.as_slice()
    {
        // Nothing of this chunk was recorded; its bytes are dropped when the upload is next resumed.
        return Err(ApiError::new(
            checksum_mismatch_status(),
            "checksum_mismatch",
            "the chunk does not match its Upload-Checksum; it was discarded",
        ));
    }

    let end = start + received;
    let finished = session.length == Some(end);
    lease.check()?;
    if received > 0 || (finished && start == 0) {
        // (An empty upload still needs its writer: it creates the empty blob.)
        let writer = match writer.as_mut() {
            Some(writer) => writer,
            None => writer.insert(state.blobs.resume(session.blob, &session.store_state, start).await?),
        };
        checkpoint(state, lease, &mut session, writer.as_mut(), end, &hasher, finished).await?;
    } else if request.length.is_some() {
        let store_state = session.store_state.clone();
        record(state, lease, &mut session, end, store_state, &hasher).await?;
    }
    let file = if finished {
        Some(complete(state, who, lease, &session, hasher).await?)
    } else {
        None
    };
    Ok(Appended {
        offset: end,
        expires_at: session.expires_at,
        file,
    })
}

/// tus's own status for a failed checksum.
pub fn checksum_mismatch_status() -> StatusCode {
    StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST)
}

/// Makes the writer durable (or seals it, for the last bytes) and records the new offset under the lease.
async fn checkpoint(
    state: &AppState,
    lease: &Lease,
    session: &mut UploadSession,
    writer: &mut dyn ResumableWriter,
    offset: u64,
    hasher: &Sha256,
    seal: bool,
) -> ApiResult<()> {
    lease.check()?;
    let store_state = if seal {
        writer.seal().await?
    } else {
        writer.checkpoint().await?
    };
    record(state, lease, session, offset, store_state, hasher).await?;
    writer.persisted().await;
    Ok(())
}

async fn record(
    state: &AppState,
    lease: &Lease,
    session: &mut UploadSession,
    offset: u64,
    store_state: String,
    hasher: &Sha256,
) -> ApiResult<()> {
    let progress = UploadProgress {
        offset,
        length: session.length,
        store_state,
        hash_state: sha256_state(hasher),
        expires_at: handoff_core::now() + Duration::from_secs(state.config.tus.expiry_secs),
    };
    if !state
        .meta
        .record_upload_progress(&lease.id, &lease.token, &progress)
        .await?
    {
        return Err(lease_lost());
    }
    session.offset = progress.offset;
    session.store_state = progress.store_state;
    session.hash_state = progress.hash_state;
    session.expires_at = progress.expires_at;
    Ok(())
}

/// Turns an upload whose every byte is durable into a file. Idempotent: the blob store's finish and the file's
/// pre-chosen key make a retry after a crash at any step end with exactly one file.
pub async fn complete(
    state: &AppState,
    who: &Uploader,
    lease: &Lease,
    session: &UploadSession,
    hasher: Sha256,
) -> ApiResult<FileRecord> {
    let size = session.length.unwrap_or(session.offset);
    state.blobs.finish_resumable(session.blob, &session.store_state).await?;
    let finished = FinishedBlob {
        key: Some(session.file_key.clone()),
        blob: session.blob,
        size,
        sha256: hex::encode(hasher.finalize()),
        name: session.name.clone(),
        content_type: session.content_type.clone(),
    };
    // A link's upload goes through the link's destination, so its counters and the receiver's quota are charged
    // in the same transaction, exactly as for `POST /u/{token}`.
    let dest = who.destination(state).await?;
    let record = match commit_files(state, &dest, session.visibility, vec![finished]).await {
        Ok(mut records) => {
            let record = records.pop().ok_or_else(|| ApiError::internal("no record committed"))?;
            // The same audit events as the one-request uploads (`POST /files`, `POST /u/{token}`).
            let event = match (session.upload_link, who) {
                (Some(link), _) => Event::new("upload_link.upload").with("upload_link_id", link.to_string()),
                (None, Uploader::User(user)) => Event::new("file.upload").by(user),
                // (Unreachable: a link holder only ever continues its link's sessions.)
                (None, Uploader::Link { .. }) => Event::new("file.upload"),
            };
            let event = event.on_file(&record).with("size", record.size).with("resumable", true);
            state.audit.record(event).await;
            record
        }
        Err(e) if e.status() == StatusCode::CONFLICT => {
            // Committed by an earlier attempt that did not get to mark the session complete.
            match state.meta.file_by_key(&session.file_key).await? {
                Some(existing) if existing.blob == session.blob => existing,
                _ => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    if !state.meta.complete_upload(&lease.id, &lease.token).await? {
        tracing::warn!("upload completed after its lease was lost");
    }
    tracing::info!(owner = %record.owner, blob = %record.blob, size, "resumable upload completed");
    Ok(record)
}

/// Finishes an upload whose bytes are all durable but that is not marked complete (a crash between the last
/// checkpoint and the commit): `HEAD`, `GET` and `PATCH` call this so that a client that sees the full offset
/// also gets its file. Returns the refreshed session.
pub async fn settle(state: &AppState, who: &Uploader, session: UploadSession) -> ApiResult<UploadSession> {
    if session.completed || session.length != Some(session.offset) {
        return Ok(session);
    }
    let Some((lease, leased)) = Lease::acquire(state, &session.id).await? else {
        return Ok(session); // someone else is at it, or it expired
    };
    let hasher = restore_hasher(&leased)?;
    match complete(state, who, &lease, &leased, hasher).await {
        Ok(_) => drop(lease),
        Err(e) => {
            lease.release(state).await;
            return Err(e);
        }
    }
    Ok(state.meta.upload_by_id(&session.id).await?.unwrap_or(session))
}
