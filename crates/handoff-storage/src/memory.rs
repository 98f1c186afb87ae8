//! In-memory blob store: same contract as the others, nothing persists. For tests and throwaway instances.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use handoff_core::{BlobId, BlobReader, BlobStore, BlobWriter, StoreError, StoreResult};

#[path = "memory_direct.rs"]
mod direct;
#[path = "memory_resumable.rs"]
mod resumable;

#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    blobs: Arc<Mutex<HashMap<BlobId, (Bytes, Instant)>>>,
    /// Resumable uploads' checkpointed bytes.
    partials: Arc<Mutex<HashMap<BlobId, Bytes>>>,
    /// Direct uploads' parts: blob → number → (etag, bytes).
    direct: Arc<Mutex<direct::Parts>>,
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BlobId, (Bytes, Instant)>> {
        self.blobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl BlobStore for MemoryStore {
    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn create(&self) -> StoreResult<Box<dyn BlobWriter>> {
        Ok(Box::new(MemoryWriter {
            id: BlobId::generate(),
            store: self.clone(),
            buffer: BytesMut::new(),
        }))
    }

    async fn open(&self, id: BlobId, range: Option<Range<u64>>) -> StoreResult<BlobReader> {
        let bytes = self
            .lock()
            .get(&id)
            .map(|(b, _)| b.clone())
            .ok_or(StoreError::NotFound)?;
        let total = bytes.len() as u64;
        let range = range.unwrap_or(0..total);
        if range.end > total || range.start > range.end {
            return Err(StoreError::Corrupt("range beyond blob".into()));
        }
        // Ranges are bounded by the blob length, which fits in memory, so these casts cannot truncate.
        let slice = bytes.slice(range.start as usize..range.end as usize);
        Ok(BlobReader {
            len: slice.len() as u64,
            stream: Box::pin(futures::stream::iter([Ok(slice)])),
        })
    }

    async fn delete(&self, id: BlobId) -> StoreResult<()> {
        self.lock().remove(&id);
        Ok(())
    }

    async fn list_older_than(&self, min_age: Duration) -> StoreResult<Vec<BlobId>> {
        Ok(self
            .lock()
            .iter()
            .filter(|(_, (_, at))| at.elapsed() >= min_age)
            .map(|(id, _)| *id)
            .collect())
    }

    async fn sweep_incomplete(&self, _min_age: Duration) -> StoreResult<u64> {
        // Partial writes live in their writer and vanish with it.
        Ok(0)
    }
}

struct MemoryWriter {
    id: BlobId,
    store: MemoryStore,
    buffer: BytesMut,
}

#[async_trait]
impl BlobWriter for MemoryWriter {
    fn id(&self) -> BlobId {
        self.id
    }

    async fn write(&mut self, chunk: Bytes) -> StoreResult<()> {
        self.buffer.extend_from_slice(&chunk);
        Ok(())
    }

    async fn commit(self: Box<Self>) -> StoreResult<()> {
        let Self { id, store, buffer } = *self;
        store.lock().insert(id, (buffer.freeze(), Instant::now()));
        Ok(())
    }
}
