//! Local-directory blob store.
//!
//! Layout under the root: `tmp/<id>.part` while an upload streams, `blobs/<shard>/<id>` once committed, where
//! `<shard>` is the last two hex digits of the id (UUIDv7 starts with the time, so the tail spreads evenly).
//! Commit = write everything, `fdatasync` the file, rename into place, `fsync` the directory: after `commit`
//! returns the blob survives a crash or power loss, and before it nothing exists under its final name.
//! A blob of at most 64 KiB is committed as a row of `small.sqlite3` instead (`local_small.rs`: one sync per
//! batch of uploads instead of two per file); reads, deletes and listings look in both places.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use handoff_core::{BlobId, BlobReader, BlobStore, BlobWriter, StoreError, StoreResult};
use tokio::task::{JoinHandle, spawn_blocking};
use uuid::Uuid;

use crate::OpenError;

#[path = "local_direct.rs"]
mod direct;
#[path = "local_resumable.rs"]
mod resumable;
#[path = "local_small.rs"]
mod small;

use small::{SMALL_BLOB, SmallBlobs};

/// Bytes gathered before each write system call: large enough that syscall and thread-hop overhead vanish,
/// small enough to keep per-upload memory trivial.
const WRITE_BUFFER: usize = 1 << 20;
/// Size of each chunk a download yields, each one read on the blocking pool: 1 MiB cuts a 1 GiB download's thread
/// hops and socket writes from 4,096 (at 256 KiB) to 1,024 (bench/RESULTS.md, "Downloads").
const READ_CHUNK: usize = 1 << 20;
/// Blobs (or ranges) up to this size are read in one go without leaving the async worker.
const INLINE_READ: u64 = 64 << 10;
/// Bytes written between background `fdatasync`s of a big blob while it streams. Without them the kernel writes
/// nothing back until the commit's sync (its own threshold is a tenth of memory), so the `201` of a 1 GiB upload
/// waited for most of the gigabyte to reach the disk after the last byte arrived.
const SYNC_EVERY: u64 = 64 << 20;

#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    small: Arc<SmallBlobs>,
}

impl LocalStore {
    pub async fn open(root: PathBuf) -> Result<Self, OpenError> {
        for dir in [root.join("tmp"), root.join("blobs")] {
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|source| OpenError::Io { path: dir, source })?;
        }
        let small_root = root.clone();
        let small = spawn_blocking(move || SmallBlobs::open(&small_root))
            .await
            .map_err(std::io::Error::other)
            .and_then(|opened| opened)
            .map_err(|source| OpenError::Io {
                path: root.join(small::DATABASE),
                source,
            })?;
        Ok(Self {
            root,
            small: Arc::new(small),
        })
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs")
    }

    /// The one place a blob id becomes a path.
    fn blob_path(&self, id: BlobId) -> PathBuf {
        let hex = id.0.simple().to_string();
        self.blobs_dir().join(&hex[hex.len() - 2..]).join(hex)
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> StoreResult<T> {
    spawn_blocking(f)
        .await
        .map_err(StoreError::other)?
        .map_err(StoreError::from)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn modified_before(entry: &fs::DirEntry, cutoff: SystemTime) -> bool {
    entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t <= cutoff)
}

#[async_trait]
impl BlobStore for LocalStore {
    async fn ping(&self) -> StoreResult<()> {
        let tmp = self.tmp_dir();
        blocking(move || fs::metadata(tmp).map(drop)).await
    }

    async fn create(&self) -> StoreResult<Box<dyn BlobWriter>> {
        let id = BlobId::generate();
        let tmp_path = self.tmp_dir().join(format!("{}.part", id.0.simple()));
        let final_path = self.blob_path(id);
        Ok(Box::new(LocalWriter {
            id,
            tmp_path,
            final_path,
            small: self.small.clone(),
            file: None,
            in_flight: None,
            written: 0,
            synced_at: 0,
            background_sync: None,
            buffer: BytesMut::new(),
            spare: None,
            committed: false,
        }))
    }

    async fn open(&self, id: BlobId, range: Option<Range<u64>>) -> StoreResult<BlobReader> {
        // Opening, and reading a small blob, happen right here on the async worker, as nginx does on its event
        // loop: they take microseconds from the page cache, less than the hand-off to the blocking pool and back
        // (two thread switches, the largest cost of a small download). Larger reads stream from the pool.
        if let Some(bytes) = self.small.read(id)? {
            let range = checked_range(range, bytes.len() as u64).map_err(StoreError::from)?;
            let bytes = bytes.slice(range.start as usize..range.end as usize);
            return Ok(BlobReader {
                len: bytes.len() as u64,
                stream: Box::pin(futures::stream::iter([Ok(bytes)])),
            });
        }
        let path = self.blob_path(id);
        let opened = (|| -> io::Result<Opened> {
            let mut file = File::open(path)?;
            let range = checked_range(range, file.metadata()?.len())?;
            file.seek(SeekFrom::Start(range.start))?;
            let len = range.end - range.start;
            if len <= INLINE_READ {
                let mut bytes = vec![0; len as usize];
                file.read_exact(&mut bytes)?;
                return Ok(Opened::Read(Bytes::from(bytes)));
            }
            Ok(Opened::Stream(file, len))
        })()
        .map_err(StoreError::from)?;
        Ok(match opened {
            Opened::Read(bytes) => BlobReader {
                len: bytes.len() as u64,
                stream: Box::pin(futures::stream::iter([Ok(bytes)])),
            },
            Opened::Stream(file, len) => {
                let reader = tokio::io::AsyncReadExt::take(tokio::fs::File::from_std(file), len);
                BlobReader {
                    len,
                    stream: Box::pin(tokio_util::io::ReaderStream::with_capacity(reader, READ_CHUNK)),
                }
            }
        })
    }

    async fn delete(&self, id: BlobId) -> StoreResult<()> {
        if self.small.delete(id).await? {
            return Ok(());
        }
        let path = self.blob_path(id);
        blocking(move || match fs::remove_file(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        })
        .await
    }

    async fn list_older_than(&self, min_age: Duration) -> StoreResult<Vec<BlobId>> {
        let blobs = self.blobs_dir();
        let small = self.small.clone();
        let cutoff = SystemTime::now() - min_age;
        let mut ids = spawn_blocking(move || small.list_older_than(cutoff))
            .await
            .map_err(StoreError::other)??;
        let files = blocking(move || {
            let mut ids = Vec::new();
            for shard in fs::read_dir(blobs)? {
                let shard = shard?;
                if !shard.file_type()?.is_dir() {
                    continue;
                }
                for entry in fs::read_dir(shard.path())? {
                    let entry = entry?;
                    let parsed = entry.file_name().to_str().and_then(|n| Uuid::try_parse(n).ok());
                    if let Some(uuid) = parsed
                        && modified_before(&entry, cutoff)
                    {
                        ids.push(BlobId(uuid));
                    }
                }
            }
            Ok(ids)
        })
        .await?;
        ids.extend(files);
        Ok(ids)
    }

    async fn sweep_incomplete(&self, min_age: Duration) -> StoreResult<u64> {
        let tmp = self.tmp_dir();
        blocking(move || {
            let cutoff = SystemTime::now() - min_age;
            let mut removed = 0;
            for entry in fs::read_dir(tmp)? {
                let entry = entry?;
                if modified_before(&entry, cutoff) && fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
    }
}

/// `range` (the whole blob if `None`) if it lies within a blob of `total` bytes.
fn checked_range(range: Option<Range<u64>>, total: u64) -> io::Result<Range<u64>> {
    let range = range.unwrap_or(0..total);
    if range.end > total || range.start > range.end {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "range beyond blob"));
    }
    Ok(range)
}

enum Opened {
    Read(Bytes),
    Stream(File, u64),
}

struct LocalWriter {
    id: BlobId,
    tmp_path: PathBuf,
    final_path: PathBuf,
    small: Arc<SmallBlobs>,
    /// Held here between writes; owned by `in_flight` while a write runs. Opened at the first write that
    /// reaches the disk: a small file is opened, written, synced and renamed in one blocking call at commit.
    file: Option<File>,
    /// The previous buffer's write, running on the blocking pool while the next buffer fills (and is hashed by
    /// the caller): disk and CPU work overlap instead of taking turns. It hands the buffer back when done.
    in_flight: Option<JoinHandle<io::Result<(File, Bytes)>>>,
    /// Bytes handed to writes so far, and how many of them the last background sync started at.
    written: u64,
    synced_at: u64,
    /// A `fdatasync` running on a duplicate of the file's descriptor while writes go on: the disk catches up
    /// during the upload instead of after it. The commit waits for it and syncs the rest.
    background_sync: Option<JoinHandle<io::Result<()>>>,
    buffer: BytesMut,
    /// The buffer of the last finished write, to fill again: a fresh 1 MiB allocation per write would be new
    /// pages for the kernel to fault in and zero each time (about 8 % of a big upload's CPU in `perf`).
    spare: Option<Bytes>,
    committed: bool,
}

impl LocalWriter {
    /// Waits for the write in flight, if any, and takes the file back (`None` if nothing was written yet).
    async fn settle(&mut self) -> StoreResult<Option<File>> {
        match self.in_flight.take() {
            Some(write) => {
                let (file, written) = write.await.map_err(StoreError::other)?.map_err(StoreError::from)?;
                self.spare = Some(written);
                Ok(Some(file))
            }
            None => Ok(self.file.take()),
        }
    }

    /// An empty buffer of `WRITE_BUFFER` bytes, reusing the last written one when nothing else holds it.
    fn next_buffer(&mut self) -> BytesMut {
        match self.spare.take().map(Bytes::try_into_mut) {
            Some(Ok(mut reused)) => {
                reused.clear();
                reused
            }
            _ => BytesMut::with_capacity(WRITE_BUFFER),
        }
    }

    /// Starts writing the buffer (after the previous write finished) without waiting for it.
    async fn flush_buffer(&mut self) -> StoreResult<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let file = self.settle().await?;
        if let Some(file) = &file
            && self.written - self.synced_at >= SYNC_EVERY
        {
            self.start_background_sync(file).await?;
        }
        let tmp = self.tmp_path.clone();
        let next = self.next_buffer();
        let data = std::mem::replace(&mut self.buffer, next).freeze();
        self.written += data.len() as u64;
        self.in_flight = Some(spawn_blocking(move || {
            let mut file = match file {
                Some(file) => file,
                None => create_part(&tmp)?,
            };
            file.write_all(&data)?;
            Ok((file, data))
        }));
        Ok(())
    }

    /// Starts syncing what was written so far, unless the previous background sync is still running.
    async fn start_background_sync(&mut self, file: &File) -> StoreResult<()> {
        if self.background_sync.as_ref().is_some_and(|sync| !sync.is_finished()) {
            return Ok(());
        }
        self.finish_background_sync().await?;
        let duplicate = file.try_clone().map_err(StoreError::from)?;
        self.synced_at = self.written;
        self.background_sync = Some(spawn_blocking(move || duplicate.sync_data()));
        Ok(())
    }

    /// Waits for the background sync, if any; its failure is the blob's.
    async fn finish_background_sync(&mut self) -> StoreResult<()> {
        match self.background_sync.take() {
            Some(sync) => sync.await.map_err(StoreError::other)?.map_err(StoreError::from),
            None => Ok(()),
        }
    }
}

fn create_part(path: &Path) -> io::Result<File> {
    File::options().write(true).create_new(true).open(path)
}

#[async_trait]
impl BlobWriter for LocalWriter {
    fn id(&self) -> BlobId {
        self.id
    }

    async fn write(&mut self, chunk: Bytes) -> StoreResult<()> {
        // Fill the buffer exactly to `WRITE_BUFFER`: letting a chunk overflow it would make `BytesMut` grow, i.e.
        // copy the whole megabyte once more.
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            let take = (WRITE_BUFFER - self.buffer.len()).min(rest.len());
            self.buffer.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buffer.len() >= WRITE_BUFFER {
                self.flush_buffer().await?;
            }
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> StoreResult<()> {
        if self.file.is_none() && self.in_flight.is_none() && self.buffer.len() <= SMALL_BLOB {
            // Nothing reached the disk yet and it all fits: a row, synced with the rest of its batch.
            let bytes = std::mem::take(&mut self.buffer).freeze();
            self.small.put(self.id, bytes).await?;
            self.committed = true;
            return Ok(());
        }
        // Whatever is still buffered is written by the same blocking call that syncs and renames.
        let file = self.settle().await?;
        self.finish_background_sync().await?;
        let rest = std::mem::take(&mut self.buffer).freeze();
        let (tmp, dest) = (self.tmp_path.clone(), self.final_path.clone());
        blocking(move || {
            let mut file = match file {
                Some(file) => file,
                None => create_part(&tmp)?,
            };
            file.write_all(&rest)?;
            file.sync_data()?;
            drop(file);
            let shard = dest.parent().unwrap_or(Path::new("."));
            if !shard.exists() {
                fs::create_dir_all(shard)?;
                if let Some(blobs) = shard.parent() {
                    sync_dir(blobs)?;
                }
            }
            fs::rename(&tmp, &dest)?;
            sync_dir(shard)
        })
        .await?;
        self.committed = true;
        Ok(())
    }
}

/// An upload that ends any way but `commit` (error, client gone, handler cancelled) leaves no bytes behind.
impl Drop for LocalWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}
