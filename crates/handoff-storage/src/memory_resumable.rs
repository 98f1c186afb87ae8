//! Resumable uploads in memory: a checkpoint copies the bytes so far into the store's map of partials.
//! Quadratic in copies for many checkpoints, which is fine for the tests and throwaway instances this serves.

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use handoff_core::{BlobId, ResumableBlobStore, ResumableWriter, StoreError, StoreResult};

use super::MemoryStore;

fn partials(store: &MemoryStore) -> std::sync::MutexGuard<'_, std::collections::HashMap<BlobId, Bytes>> {
    store.partials.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[async_trait]
impl ResumableBlobStore for MemoryStore {
    async fn resume(&self, blob: BlobId, _state: &str, offset: u64) -> StoreResult<Box<dyn ResumableWriter>> {
        let stored = partials(self).get(&blob).cloned().unwrap_or_default();
        let offset = usize::try_from(offset).map_err(StoreError::other)?;
        if stored.len() < offset {
            return Err(StoreError::Corrupt("partial upload shorter than its offset".into()));
        }
        Ok(Box::new(MemoryAppender {
            store: self.clone(),
            blob,
            buffer: BytesMut::from(&stored[..offset]),
        }))
    }

    async fn finish_resumable(&self, blob: BlobId, _state: &str) -> StoreResult<()> {
        let Some(bytes) = partials(self).remove(&blob) else {
            return if self.lock().contains_key(&blob) {
                Ok(())
            } else {
                Err(StoreError::Corrupt("partial upload missing".into()))
            };
        };
        self.lock().insert(blob, (bytes, std::time::Instant::now()));
        Ok(())
    }

    async fn abort_resumable(&self, blob: BlobId, _state: &str) -> StoreResult<()> {
        partials(self).remove(&blob);
        Ok(())
    }
}

struct MemoryAppender {
    store: MemoryStore,
    blob: BlobId,
    buffer: BytesMut,
}

#[async_trait]
impl ResumableWriter for MemoryAppender {
    async fn write(&mut self, chunk: Bytes) -> StoreResult<()> {
        self.buffer.extend_from_slice(&chunk);
        Ok(())
    }

    fn checkpoint_due(&self) -> bool {
        false
    }

    async fn checkpoint(&mut self) -> StoreResult<String> {
        partials(&self.store).insert(self.blob, Bytes::copy_from_slice(&self.buffer));
        Ok(String::new())
    }

    async fn seal(&mut self) -> StoreResult<String> {
        self.checkpoint().await
    }

    async fn persisted(&mut self) {}
}
