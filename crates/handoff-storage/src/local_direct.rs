//! Direct uploads on the local directory. This store cannot sign URLs, so the server signs its own and hands
//! each part's body to [`DirectBlobStore::put_direct_part`].
//!
//! Parts live in `direct/<blob>/`: a body streams into `.<number>.<random>.tmp`, is `fdatasync`ed and renamed to
//! `<number>.<etag>` (the entity tag is 128 random bits, so a re-sent part gets a new tag and a completion
//! naming the old one fails), and older files of the same number are removed. Completion streams the parts in
//! order into `tmp/<blob>.part` (bounded memory: a copy buffer), syncs it and renames it into `blobs/` like any
//! committed blob, then removes the part directory. The state string is unused.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::PathBuf;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt as _;
use futures::stream::BoxStream;
use handoff_core::{BlobId, DirectBlobStore, StoreError, StoreResult, StoredPart};

use super::{LocalStore, WRITE_BUFFER, blocking, sync_dir};

impl LocalStore {
    /// The one place a direct upload's blob id becomes a directory.
    fn direct_dir(&self, blob: BlobId) -> PathBuf {
        self.root.join("direct").join(blob.0.simple().to_string())
    }
}

/// `<number>.<etag>` → (number, etag).
fn parse_part_name(name: &str) -> Option<(u32, &str)> {
    let (number, etag) = name.split_once('.')?;
    let number: u32 = number.parse().ok().filter(|n| *n > 0)?;
    (etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit())).then_some((number, etag))
}

fn list_parts(dir: &std::path::Path) -> io::Result<Vec<(StoredPart, PathBuf)>> {
    let mut parts = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(parts),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if let Some((number, etag)) = name.to_str().and_then(parse_part_name) {
            parts.push((
                StoredPart {
                    number,
                    size: entry.metadata()?.len(),
                    etag: Some(etag.to_owned()),
                },
                entry.path(),
            ));
        }
    }
    parts.sort_by_key(|(p, _)| p.number);
    Ok(parts)
}

fn remove_dir(dir: &std::path::Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[async_trait]
impl DirectBlobStore for LocalStore {
    async fn begin_direct(&self, blob: BlobId) -> StoreResult<String> {
        let dir = self.direct_dir(blob);
        blocking(move || fs::create_dir_all(dir)).await?;
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
        mut body: BoxStream<'static, io::Result<Bytes>>,
    ) -> StoreResult<String> {
        let dir = self.direct_dir(blob);
        let etag = uuid::Uuid::new_v4().simple().to_string();
        let tmp = dir.join(format!(".{number}.{etag}.tmp"));
        let path = tmp.clone();
        let mut file = blocking(move || File::options().write(true).create_new(true).open(path))
            .await
            .map_err(|e| match e {
                // The directory goes when the session is completed or aborted.
                StoreError::NotFound => StoreError::Conflict,
                other => other,
            })?;
        // Gathered into large writes, like a one-shot upload: few trips to the blocking pool.
        let written: StoreResult<File> = async {
            let mut buffer = BytesMut::new();
            loop {
                let chunk = body.next().await.transpose().map_err(StoreError::other)?;
                let last = chunk.is_none();
                if let Some(chunk) = chunk {
                    buffer.extend_from_slice(&chunk);
                }
                if buffer.len() >= WRITE_BUFFER || (last && !buffer.is_empty()) {
                    let pending = std::mem::take(&mut buffer).freeze();
                    file = blocking(move || {
                        let mut file = file;
                        file.write_all(&pending).map(|()| file)
                    })
                    .await?;
                }
                if last {
                    return Ok(file);
                }
            }
        }
        .await;
        let file = match written {
            Ok(file) => file,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        let final_path = dir.join(format!("{number}.{etag}"));
        let tag = etag.clone();
        blocking(move || {
            file.sync_data()?;
            fs::rename(&tmp, &final_path)?;
            // Earlier uploads of this part are superseded.
            for (part, path) in list_parts(&dir)? {
                if part.number == number && part.etag.as_deref() != Some(tag.as_str()) {
                    let _ = fs::remove_file(path);
                }
            }
            sync_dir(&dir)
        })
        .await?;
        Ok(etag)
    }

    async fn direct_parts(&self, blob: BlobId, _state: &str) -> StoreResult<Vec<StoredPart>> {
        let dir = self.direct_dir(blob);
        let parts = blocking(move || list_parts(&dir)).await?;
        Ok(parts.into_iter().map(|(p, _)| p).collect())
    }

    async fn complete_direct(&self, blob: BlobId, _state: &str, parts: &[(u32, String)]) -> StoreResult<()> {
        let (dir, dest) = (self.direct_dir(blob), self.blob_path(blob));
        let tmp = self.tmp_dir().join(format!("{}.part", blob.0.simple()));
        let wanted = parts.to_vec();
        let joined = blocking(move || {
            if dest.exists() {
                // Finished before, by a request that did not get to record it.
                return remove_dir(&dir).map(|()| true);
            }
            let stored = list_parts(&dir)?;
            let mut sources = Vec::with_capacity(wanted.len());
            for (i, (number, etag)) in wanted.iter().enumerate() {
                let found = stored
                    .iter()
                    .find(|(p, _)| p.number == *number && p.etag.as_deref() == Some(etag.as_str()));
                match found {
                    Some((_, path)) if *number as usize == i + 1 => sources.push(path.clone()),
                    _ => return Ok(false),
                }
            }
            let mut out = File::options().write(true).create(true).truncate(true).open(&tmp)?;
            for source in &sources {
                io::copy(&mut File::open(source)?, &mut out)?;
            }
            out.sync_data()?;
            drop(out);
            let shard = dest.parent().unwrap_or(std::path::Path::new("."));
            if !shard.exists() {
                fs::create_dir_all(shard)?;
                if let Some(blobs) = shard.parent() {
                    sync_dir(blobs)?;
                }
            }
            fs::rename(&tmp, &dest)?;
            sync_dir(shard)?;
            remove_dir(&dir).map(|()| true)
        })
        .await?;
        if joined { Ok(()) } else { Err(StoreError::Conflict) }
    }

    async fn abort_direct(&self, blob: BlobId, _state: &str) -> StoreResult<()> {
        let dir = self.direct_dir(blob);
        blocking(move || remove_dir(&dir)).await
    }
}
