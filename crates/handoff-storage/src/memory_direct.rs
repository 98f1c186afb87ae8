//! Direct uploads in memory: parts are kept in a map until completion concatenates them. Like the local store it
//! cannot sign URLs, so the server signs its own and passes the bodies on.

use std::io;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::TryStreamExt as _;
use futures::stream::BoxStream;
use handoff_core::{BlobId, DirectBlobStore, StoreError, StoreResult, StoredPart};

use super::MemoryStore;

/// Blob → part number → (entity tag, bytes).
pub(super) type Parts = std::collections::HashMap<BlobId, std::collections::BTreeMap<u32, (String, Bytes)>>;

fn direct(store: &MemoryStore) -> std::sync::MutexGuard<'_, Parts> {
    store.direct.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[async_trait]
impl DirectBlobStore for MemoryStore {
    async fn begin_direct(&self, blob: BlobId) -> StoreResult<String> {
        direct(self).entry(blob).or_default();
        Ok(String::new())
    }

    async fn direct_part_url(
        &self,
        _blob: BlobId,
        _state: &str,
        _number: u32,
        _ttl: std::time::Duration,
    ) -> StoreResult<Option<String>> {
        Ok(None)
    }

    async fn put_direct_part(
        &self,
        blob: BlobId,
        _state: &str,
        number: u32,
        body: BoxStream<'static, io::Result<Bytes>>,
    ) -> StoreResult<String> {
        let bytes: BytesMut = body.try_collect().await.map_err(StoreError::other)?;
        let etag = uuid::Uuid::new_v4().simple().to_string();
        direct(self)
            .get_mut(&blob)
            .ok_or(StoreError::Conflict)?
            .insert(number, (etag.clone(), bytes.freeze()));
        Ok(etag)
    }

    async fn direct_parts(&self, blob: BlobId, _state: &str) -> StoreResult<Vec<StoredPart>> {
        Ok(direct(self)
            .get(&blob)
            .map(|parts| {
                parts
                    .iter()
                    .map(|(number, (etag, bytes))| StoredPart {
                        number: *number,
                        size: bytes.len() as u64,
                        etag: Some(etag.clone()),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn complete_direct(&self, blob: BlobId, _state: &str, parts: &[(u32, String)]) -> StoreResult<()> {
        if self.lock().contains_key(&blob) {
            return Ok(());
        }
        let mut joined = BytesMut::new();
        {
            let stored = direct(self);
            let stored = stored.get(&blob).ok_or(StoreError::Conflict)?;
            for (i, (number, etag)) in parts.iter().enumerate() {
                match stored.get(number) {
                    Some((tag, bytes)) if tag == etag && *number as usize == i + 1 => joined.extend_from_slice(bytes),
                    _ => return Err(StoreError::Conflict),
                }
            }
        }
        self.lock().insert(blob, (joined.freeze(), std::time::Instant::now()));
        direct(self).remove(&blob);
        Ok(())
    }

    async fn abort_direct(&self, blob: BlobId, _state: &str) -> StoreResult<()> {
        direct(self).remove(&blob);
        Ok(())
    }
}
