//! Background collection, safe to run while uploads are in flight: expired resumable uploads
//! (`uploads::expiry`) and direct upload sessions (`direct::reclaim`), partial uploads and orphaned blobs (bytes that
//! no file row references, left by a crash between commit and insert or a failed delete) are removed once they are
//! older than the grace period, which is far longer than any commit takes.

use std::time::Duration;

use tokio::sync::watch;

use crate::state::AppState;

/// Runs one collection at start-up (partial uploads of a previous process are swept at once: nothing of this
/// process can be in flight yet) and then every `maintenance.interval_secs` until `stop` turns true.
pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    match state.blobs.sweep_incomplete(Duration::ZERO).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "removed partial uploads left by a previous run"),
        Err(e) => tracing::warn!(error = %e, "could not sweep partial uploads"),
    }
    let mut interval = tokio::time::interval(Duration::from_secs(state.config.maintenance.interval_secs.max(1)));
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
        pass(&state).await;
    }
}

/// What one [`pass`] removed; a step that failed is logged and counted as `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PassReport {
    pub expired_files: Option<u64>,
    pub collected_blobs: Option<u64>,
    pub reclaimed_uploads: Option<u64>,
    pub reclaimed_direct_uploads: Option<u64>,
}

/// One round of every maintenance job: retention, collection of orphaned and partial blobs (older than
/// `maintenance.orphan_grace_secs`), expired resumable uploads and direct upload sessions. Safe on several nodes or invocations at once;
/// cancelling it between steps (a deadline) leaves nothing that the next pass does not finish. The background
/// task of `serve` runs it every `maintenance.interval_secs`; the Lambda function runs it on a schedule.
pub async fn pass(state: &AppState) -> PassReport {
    let grace = Duration::from_secs(state.config.maintenance.orphan_grace_secs);
    let mut report = PassReport::default();
    match expire(state).await {
        Ok(n) => report.expired_files = Some(n),
        Err(e) => tracing::warn!(error = %e, "retention pass failed"),
    }
    match collect(state, grace).await {
        Ok(n) => report.collected_blobs = Some(n),
        Err(e) => tracing::warn!(error = %e, "collection pass failed"),
    }
    match crate::uploads::expiry::reclaim(state).await {
        Ok(n) => report.reclaimed_uploads = Some(n),
        Err(e) => tracing::warn!(error = %e, "reclaiming expired uploads failed"),
    }
    match crate::direct::reclaim(state).await {
        Ok(n) => report.reclaimed_direct_uploads = Some(n),
        Err(e) => tracing::warn!(error = %e, "reclaiming expired upload sessions failed"),
    }
    // Events recorded by the pass (`file.expire`) are written before it reports done: a frozen or stopped
    // process must not hold them.
    state.audit.flush().await;
    report
}

/// Retention: deletes files past their expiry (with their bytes) and forgets share links that expired or were
/// revoked longer ago than `retention.expired_link_grace_secs`. Safe on several nodes at once: the store hands
/// each expired file to exactly one caller. Returns how many files were removed.
pub async fn expire(state: &AppState) -> Result<u64, handoff_core::StoreError> {
    let now = handoff_core::now();
    let mut removed = 0;
    loop {
        let batch = state.meta.delete_expired_files(now, 500).await?;
        for file in &batch {
            if let Err(e) = state.blobs.delete(file.blob).await {
                tracing::warn!(blob = %file.blob, error = %e, "blob of an expired file left for the collector");
            }
            state
                .audit
                .record(crate::audit::Event::new("file.expire").on_file(file))
                .await;
        }
        removed += batch.len() as u64;
        if batch.len() < 500 {
            break;
        }
    }
    let grace = time::Duration::seconds(i64::try_from(state.config.retention.expired_link_grace_secs).unwrap_or(0));
    let links = state.meta.prune_shares(now - grace).await?;
    if removed > 0 || links > 0 {
        tracing::info!(files = removed, links, "retention removed expired files and links");
    }
    Ok(removed)
}

/// One pass: returns how many blobs were removed.
pub async fn collect(state: &AppState, grace: Duration) -> Result<u64, handoff_core::StoreError> {
    let mut removed = state.blobs.sweep_incomplete(grace).await?;
    for blob in state.blobs.list_older_than(grace).await? {
        // A finished resumable or direct upload's blob waits here for its row while its session is still open.
        if !state.meta.blob_is_referenced(blob).await?
            && !state.meta.blob_in_open_upload(blob).await?
            && !state.meta.blob_in_direct_upload(blob).await?
        {
            state.blobs.delete(blob).await?;
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(removed, "collected orphaned or partial blobs");
    }
    Ok(removed)
}
