//! Resumable uploads on the local directory: `uploads/<id>.part`, appended across requests. A checkpoint is
//! `fdatasync`; resuming truncates the file back to the durable offset the metadata store recorded, so bytes
//! from an append that never checkpointed (a crash, a bad checksum) are dropped. Finishing renames the file
//! into `blobs/` exactly like a committed one-shot upload. The state string is unused (always empty): the
//! offset alone says everything.

use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use handoff_core::{BlobId, ResumableBlobStore, ResumableWriter, StoreError, StoreResult};

use super::{LocalStore, WRITE_BUFFER, blocking, sync_dir};

/// Unsynced bytes after which a checkpoint is suggested: a dropped connection then loses at most this much.
const CHECKPOINT_EVERY: u64 = 32 << 20;

impl LocalStore {
    fn uploads_dir(&self) -> PathBuf {
        self.root.join("uploads")
    }

    /// The one place a resumable upload's blob id becomes a path.
    fn upload_path(&self, id: BlobId) -> PathBuf {
        self.uploads_dir().join(format!("{}.part", id.0.simple()))
    }
}

#[async_trait]
impl ResumableBlobStore for LocalStore {
    async fn resume(&self, blob: BlobId, _state: &str, offset: u64) -> StoreResult<Box<dyn ResumableWriter>> {
        let (dir, path) = (self.uploads_dir(), self.upload_path(blob));
        let file = blocking(move || {
            if offset == 0 {
                fs::create_dir_all(&dir)?;
            }
            let mut file = File::options().write(true).create(offset == 0).open(&path)?;
            let len = file.metadata()?.len();
            if len < offset {
                return Err(io::Error::other(format!(
                    "upload file has {len} bytes, {offset} were durable"
                )));
            }
            if len > offset {
                // An append that never checkpointed: its bytes are not part of the upload.
                file.set_len(offset)?;
            }
            file.seek(SeekFrom::Start(offset))?;
            Ok(file)
        })
        .await
        .map_err(|e| match e {
            StoreError::NotFound => StoreError::Corrupt("upload file missing".into()),
            other => other,
        })?;
        Ok(Box::new(LocalAppender {
            file: Some(file),
            buffer: BytesMut::new(),
            unsynced: 0,
        }))
    }

    async fn finish_resumable(&self, blob: BlobId, _state: &str) -> StoreResult<()> {
        let (part, dest) = (self.upload_path(blob), self.blob_path(blob));
        blocking(move || {
            if !part.exists() && dest.exists() {
                return Ok(()); // finished before, by a request that did not get to record it
            }
            let shard = dest.parent().unwrap_or(Path::new("."));
            if !shard.exists() {
                fs::create_dir_all(shard)?;
                if let Some(blobs) = shard.parent() {
                    sync_dir(blobs)?;
                }
            }
            fs::rename(&part, &dest)?;
            sync_dir(shard)
        })
        .await
    }

    async fn abort_resumable(&self, blob: BlobId, _state: &str) -> StoreResult<()> {
        let part = self.upload_path(blob);
        blocking(move || match fs::remove_file(&part) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        })
        .await
    }
}

struct LocalAppender {
    /// `None` only while a blocking write owns it.
    file: Option<File>,
    buffer: BytesMut,
    unsynced: u64,
}

impl LocalAppender {
    async fn flush(&mut self, sync: bool) -> StoreResult<()> {
        let mut file = self
            .file
            .take()
            .ok_or_else(|| StoreError::Corrupt("upload file lost by an earlier failure".into()))?;
        let data = std::mem::take(&mut self.buffer).freeze();
        let file = blocking(move || {
            file.write_all(&data)?;
            if sync {
                file.sync_data()?;
            }
            Ok(file)
        })
        .await?;
        self.file = Some(file);
        if sync {
            self.unsynced = 0;
        }
        Ok(())
    }
}

#[async_trait]
impl ResumableWriter for LocalAppender {
    async fn write(&mut self, chunk: Bytes) -> StoreResult<()> {
        self.unsynced += chunk.len() as u64;
        self.buffer.extend_from_slice(&chunk);
        if self.buffer.len() >= WRITE_BUFFER {
            self.flush(false).await?;
        }
        Ok(())
    }

    fn checkpoint_due(&self) -> bool {
        self.unsynced >= CHECKPOINT_EVERY
    }

    async fn checkpoint(&mut self) -> StoreResult<String> {
        self.flush(true).await?;
        Ok(String::new())
    }

    async fn seal(&mut self) -> StoreResult<String> {
        self.checkpoint().await
    }

    async fn persisted(&mut self) {}
}
