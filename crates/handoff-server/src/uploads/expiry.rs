//! Reclaiming expired uploads, called by the maintenance task. An incomplete upload's bytes (local part file,
//! or S3 multipart parts and tail objects) are discarded before its session row goes, so a crash in between
//! only means the next pass tries again; a completed upload's row just goes (its blob is the file's now).

use handoff_core::StoreError;

use crate::state::AppState;

/// Sessions handled per pass; the rest wait for the next one.
const BATCH: u32 = 1000;

/// One pass: returns how many expired sessions were removed.
pub async fn reclaim(state: &AppState) -> Result<u64, StoreError> {
    let now = handoff_core::now();
    let mut removed = 0;
    for session in state.meta.expired_uploads(now, BATCH).await? {
        // Expired sessions cannot be leased any more (a lease needs `expires_at > now`), so nobody appends
        // while the bytes go.
        if !session.completed {
            state.blobs.abort_resumable(session.blob, &session.store_state).await?;
        }
        if state.meta.delete_expired_upload(&session.id, now).await? {
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(removed, "reclaimed expired uploads");
    }
    Ok(removed)
}
