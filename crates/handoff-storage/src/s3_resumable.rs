//! Resumable uploads on S3, with no local disk: the upload is one S3 multipart upload (object_store's
//! [`MultipartStore`], resumable from any process given its upload id) plus, between requests, a *tail object*.
//!
//! S3 wants every part but the last to be at least 5 MiB, while tus clients send chunks of any size. Bytes are
//! therefore cut into parts of [`part_size`] as they arrive; what is left over at a checkpoint (less than one
//! part) is written as a small object `<prefix>/uploads/<blob>/<random>`, and the next append — on any node —
//! reads it back as the start of its buffer. The metadata store's state string records the upload id, the
//! ETags of the parts so far and the current tail object, so the durable offset is always
//! `parts_bytes + tail.len`. Memory per active append is bounded by about two parts; a tail is never larger
//! than one part. Each checkpoint writes a *new* tail object and the superseded one is deleted only after the
//! new state is recorded, so a crash at any point leaves the recorded state readable.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::TryStreamExt as _;
use handoff_core::{BlobId, ResumableBlobStore, ResumableWriter, StoreError, StoreResult};
use object_store::aws::AmazonS3;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::{S3Store, part_size, s3_error};

/// What the metadata store keeps between appends (as JSON).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct State {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upload_id: Option<String>,
    /// ETags of parts `0..parts.len()`.
    #[serde(default)]
    parts: Vec<String>,
    #[serde(default)]
    parts_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tail: Option<Tail>,
    /// Every byte is in `parts` (or, without an upload id, in the object itself): only completion may follow.
    #[serde(default)]
    sealed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Tail {
    name: String,
    len: u64,
}

fn parse_state(state: &str) -> StoreResult<State> {
    if state.is_empty() {
        return Ok(State::default());
    }
    serde_json::from_str(state).map_err(|e| StoreError::Corrupt(format!("S3 upload state: {e}")))
}

fn state_json(state: &State) -> StoreResult<String> {
    serde_json::to_string(state).map_err(StoreError::other)
}

impl S3Store {
    /// Where the tail objects of one upload live (never under `blobs/`, so the orphan collector ignores them).
    fn tails_prefix(&self, blob: BlobId) -> Path {
        let dir = format!("uploads/{}", blob.0.simple());
        if self.prefix.is_empty() {
            Path::from(dir)
        } else {
            Path::from(format!("{}/{dir}", self.prefix))
        }
    }

    async fn read_tail(&self, blob: BlobId, tail: &Tail) -> StoreResult<Bytes> {
        let bytes = self
            .store
            .get(&self.tails_prefix(blob).join(tail.name.as_str()))
            .await
            .map_err(s3_error)?
            .bytes()
            .await
            .map_err(s3_error)?;
        if bytes.len() as u64 != tail.len {
            return Err(StoreError::Corrupt("tail object has the wrong length".into()));
        }
        Ok(bytes)
    }

    /// Best effort: a leftover tail is only wasted space, removed again when the upload ends.
    async fn delete_tails(&self, blob: BlobId) {
        let listed: Result<Vec<_>, _> = self.store.list(Some(&self.tails_prefix(blob))).try_collect().await;
        for meta in listed.unwrap_or_default() {
            if let Err(e) = self.store.delete(&meta.location).await {
                tracing::warn!(error = %e, "could not delete an upload tail object");
            }
        }
    }
}

#[async_trait]
impl ResumableBlobStore for S3Store {
    async fn resume(&self, blob: BlobId, state: &str, offset: u64) -> StoreResult<Box<dyn ResumableWriter>> {
        let state = parse_state(state)?;
        if state.sealed {
            return Err(StoreError::Corrupt("append to a sealed upload".into()));
        }
        let tail_len = state.tail.as_ref().map_or(0, |t| t.len);
        if state.parts_bytes + tail_len != offset {
            return Err(StoreError::Corrupt("S3 upload state does not match the offset".into()));
        }
        let buffer = match &state.tail {
            Some(tail) => BytesMut::from(&self.read_tail(blob, tail).await?[..]),
            None => BytesMut::new(),
        };
        Ok(Box::new(S3Appender {
            s3: self.clone(),
            blob,
            path: self.object_path(blob),
            state,
            buffer,
            in_flight: None,
            part_sent: false,
            tail_dirty: false,
            superseded: Vec::new(),
        }))
    }

    async fn finish_resumable(&self, blob: BlobId, state: &str) -> StoreResult<()> {
        let path = self.object_path(blob);
        // Blob ids are never reused: if the object exists, an earlier attempt finished it.
        if self.store.head(&path).await.is_ok() {
            self.delete_tails(blob).await;
            return Ok(());
        }
        let mut state = parse_state(state)?;
        let tail = match (&state.tail, state.sealed) {
            (Some(tail), false) => Some(self.read_tail(blob, tail).await?),
            _ => None,
        };
        match state.upload_id.clone() {
            None if state.sealed => return Err(StoreError::Corrupt("sealed upload object missing".into())),
            None => {
                let payload = PutPayload::from(tail.unwrap_or_default());
                self.store.put(&path, payload).await.map_err(s3_error)?;
            }
            Some(upload_id) => {
                if let Some(tail) = tail.filter(|t| !t.is_empty()) {
                    let part = self
                        .store
                        .put_part(&path, &upload_id, state.parts.len(), tail.into())
                        .await
                        .map_err(s3_error)?;
                    state.parts.push(part.content_id);
                }
                let parts = state
                    .parts
                    .iter()
                    .map(|etag| PartId {
                        content_id: etag.clone(),
                    })
                    .collect();
                if let Err(e) = self.store.complete_multipart(&path, &upload_id, parts).await {
                    // A completion that went through but whose answer was lost leaves the object behind.
                    if self.store.head(&path).await.is_err() {
                        return Err(s3_error(e));
                    }
                }
            }
        }
        self.delete_tails(blob).await;
        Ok(())
    }

    async fn abort_resumable(&self, blob: BlobId, state: &str) -> StoreResult<()> {
        let state = parse_state(state)?;
        if let Some(upload_id) = &state.upload_id {
            match self.store.abort_multipart(&self.object_path(blob), upload_id).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(s3_error(e)),
            }
        }
        self.delete_tails(blob).await;
        Ok(())
    }
}

struct S3Appender {
    s3: S3Store,
    blob: BlobId,
    path: Path,
    /// Parts sent (and settled) so far, and the tail of the last checkpoint.
    state: State,
    /// Bytes after `state.parts_bytes`, less than one part once `write` returns.
    buffer: BytesMut,
    /// The part being uploaded while the next one fills: its length and its upload.
    in_flight: Option<(u64, JoinHandle<object_store::Result<PartId>>)>,
    part_sent: bool,
    tail_dirty: bool,
    /// Tail objects that only older states refer to: deleted once the newer state is recorded.
    superseded: Vec<Path>,
}

impl S3Appender {
    fn store(&self) -> &Arc<AmazonS3> {
        &self.s3.store
    }

    /// Waits for the part in flight and records it.
    async fn settle(&mut self) -> StoreResult<()> {
        if let Some((len, upload)) = self.in_flight.take() {
            let part = upload.await.map_err(StoreError::other)?.map_err(s3_error)?;
            self.state.parts.push(part.content_id);
            self.state.parts_bytes += len;
        }
        Ok(())
    }

    async fn upload_id(&mut self) -> StoreResult<String> {
        if let Some(id) = &self.state.upload_id {
            return Ok(id.clone());
        }
        let id = self.store().create_multipart(&self.path).await.map_err(s3_error)?;
        self.state.upload_id = Some(id.clone());
        Ok(id)
    }

    /// Starts uploading `part` as the next part, after the previous one has finished.
    async fn send_part(&mut self, part: Bytes) -> StoreResult<()> {
        let upload_id = self.upload_id().await?;
        self.settle().await?;
        let (store, path, index, len) = (
            self.store().clone(),
            self.path.clone(),
            self.state.parts.len(),
            part.len(),
        );
        let upload = tokio::spawn(async move { store.put_part(&path, &upload_id, index, part.into()).await });
        self.in_flight = Some((len as u64, upload));
        self.part_sent = true;
        Ok(())
    }

    fn drop_tail(&mut self) {
        if let Some(old) = self.state.tail.take() {
            self.superseded
                .push(self.s3.tails_prefix(self.blob).join(old.name.as_str()));
        }
    }
}

#[async_trait]
impl ResumableWriter for S3Appender {
    async fn write(&mut self, chunk: Bytes) -> StoreResult<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.buffer.extend_from_slice(&chunk);
        self.tail_dirty = true;
        loop {
            let size = part_size(self.state.parts.len() + usize::from(self.in_flight.is_some()));
            if self.buffer.len() < size {
                return Ok(());
            }
            let part = self.buffer.split_to(size).freeze();
            self.send_part(part).await?;
        }
    }

    fn checkpoint_due(&self) -> bool {
        self.part_sent
    }

    async fn checkpoint(&mut self) -> StoreResult<String> {
        self.settle().await?;
        if self.tail_dirty {
            self.drop_tail();
            if !self.buffer.is_empty() {
                let name = Uuid::new_v4().simple().to_string();
                let path = self.s3.tails_prefix(self.blob).join(name.as_str());
                let payload = PutPayload::from(Bytes::copy_from_slice(&self.buffer));
                self.store().put(&path, payload).await.map_err(s3_error)?;
                self.state.tail = Some(Tail {
                    name,
                    len: self.buffer.len() as u64,
                });
            }
            self.tail_dirty = false;
        }
        self.part_sent = false;
        state_json(&self.state)
    }

    async fn seal(&mut self) -> StoreResult<String> {
        self.settle().await?;
        let rest = std::mem::take(&mut self.buffer).freeze();
        match self.state.upload_id.clone() {
            // Smaller than one part: a single PutObject, which appears atomically (and unreferenced).
            None => {
                self.store().put(&self.path, rest.into()).await.map_err(s3_error)?;
            }
            Some(upload_id) => {
                if !rest.is_empty() {
                    let index = self.state.parts.len();
                    let len = rest.len() as u64;
                    let part = self
                        .store()
                        .put_part(&self.path, &upload_id, index, rest.into())
                        .await
                        .map_err(s3_error)?;
                    self.state.parts.push(part.content_id);
                    self.state.parts_bytes += len;
                }
            }
        }
        self.drop_tail();
        self.state.sealed = true;
        self.tail_dirty = false;
        state_json(&self.state)
    }

    async fn persisted(&mut self) {
        for path in std::mem::take(&mut self.superseded) {
            if let Err(e) = self.store().delete(&path).await {
                tracing::warn!(error = %e, "could not delete a superseded upload tail");
            }
        }
    }
}
