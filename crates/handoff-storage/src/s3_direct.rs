//! Direct uploads on S3: one S3 multipart upload *at the blob's final key* (`<prefix>/blobs/<id>`), whose parts
//! clients `PUT` to presigned `UploadPart` URLs (SigV4 query signing, bound to method, key, `uploadId` and
//! `partNumber`). Nothing is copied: `CompleteMultipartUpload` makes the object appear, atomically, where
//! [`handoff_core::BlobStore::open`] reads it. Even a one-part ("single PUT") upload is a multipart upload, so
//! that its URL dies with the upload id when the session is completed or aborted: a URL still inside its
//! lifetime can never overwrite a blob that has become a file.
//!
//! The parts stored so far come from S3 itself (`ListParts`, which object_store does not offer: we presign a
//! `GET ?uploadId=…` and send it with our own client), so a client that lost its state can resume, and a
//! completion is checked against what S3 holds before S3 is asked to complete. The state string is the upload id.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use handoff_core::{BlobId, DirectBlobStore, StoreError, StoreResult, StoredPart};
use object_store::ObjectStoreExt as _;
use object_store::multipart::{MultipartStore, PartId};
use object_store::signer::{SignedUrlOptions, Signer as _};
use serde::Deserialize;

use super::{S3Store, s3_error};

/// S3 refuses parts below 5 MiB, except the last.
const MIN_PART: u64 = 5 << 20;
/// Lifetime of the URL of our own `ListParts` request.
const LIST_TTL: Duration = Duration::from_secs(60);
/// Pages of `ListParts` followed at most (S3 lists up to 1,000 parts per page and allows 10,000 parts).
const MAX_LIST_PAGES: usize = 11;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListPartsResult {
    #[serde(default)]
    is_truncated: bool,
    #[serde(default)]
    next_part_number_marker: Option<u32>,
    #[serde(default, rename = "Part")]
    parts: Vec<ListedPart>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedPart {
    part_number: u32,
    #[serde(default, rename = "ETag")]
    etag: Option<String>,
    size: u64,
}

/// Entity tags are compared without their quotes (S3 sends `"…"`, clients may strip them).
pub(crate) fn bare_etag(tag: &str) -> &str {
    tag.trim().trim_start_matches("W/").trim_matches('"')
}

impl S3Store {
    async fn list_parts(&self, blob: BlobId, upload_id: &str) -> StoreResult<Vec<StoredPart>> {
        let path = self.object_path(blob);
        let mut parts = Vec::new();
        let mut marker: Option<u32> = None;
        for _ in 0..MAX_LIST_PAGES {
            let mut query = vec![("uploadId".to_owned(), upload_id.to_owned())];
            if let Some(marker) = marker {
                query.push(("part-number-marker".to_owned(), marker.to_string()));
            }
            let url = self
                .store
                .signed_url_opts(
                    http::Method::GET,
                    &path,
                    LIST_TTL,
                    &SignedUrlOptions::new().with_query(query),
                )
                .await
                .map_err(s3_error)?;
            let response = self
                .http
                .get(url)
                .send()
                .await
                .map_err(|e| StoreError::Unavailable(e.without_url().to_string()))?;
            let status = response.status();
            let body = response
                .bytes()
                .await
                .map_err(|e| StoreError::Unavailable(e.without_url().to_string()))?;
            if status == reqwest::StatusCode::NOT_FOUND {
                // NoSuchUpload: completed or aborted.
                return Err(StoreError::NotFound);
            }
            if status.is_server_error() {
                return Err(StoreError::Unavailable(format!("ListParts answered {status}")));
            }
            if !status.is_success() {
                return Err(StoreError::Other(format!("ListParts answered {status}").into()));
            }
            let page: ListPartsResult = quick_xml::de::from_reader(body.as_ref())
                .map_err(|e| StoreError::Corrupt(format!("ListParts answer: {e}")))?;
            parts.extend(page.parts.into_iter().map(|p| StoredPart {
                number: p.part_number,
                size: p.size,
                etag: p.etag.map(|t| bare_etag(&t).to_owned()),
            }));
            match (page.is_truncated, page.next_part_number_marker) {
                (true, Some(next)) if Some(next) != marker => marker = Some(next),
                _ => break,
            }
        }
        parts.sort_by_key(|p| p.number);
        parts.dedup_by_key(|p| p.number);
        Ok(parts)
    }
}

#[async_trait]
impl DirectBlobStore for S3Store {
    fn min_part_size(&self) -> u64 {
        MIN_PART
    }

    async fn begin_direct(&self, blob: BlobId) -> StoreResult<String> {
        self.store
            .create_multipart(&self.object_path(blob))
            .await
            .map_err(s3_error)
    }

    async fn direct_part_url(
        &self,
        blob: BlobId,
        state: &str,
        number: u32,
        ttl: Duration,
    ) -> StoreResult<Option<String>> {
        let options =
            SignedUrlOptions::new().with_query([("partNumber", number.to_string()), ("uploadId", state.to_owned())]);
        let url = self
            .store
            .signed_url_opts(http::Method::PUT, &self.object_path(blob), ttl, &options)
            .await
            .map_err(s3_error)?;
        Ok(Some(url.to_string()))
    }

    async fn put_direct_part(
        &self,
        _blob: BlobId,
        _state: &str,
        _number: u32,
        _body: BoxStream<'static, std::io::Result<Bytes>>,
    ) -> StoreResult<String> {
        // Never called: this store signs its own part URLs, so part bytes never pass through the server.
        Err(StoreError::Other(
            "parts of an S3 direct upload go to presigned URLs".into(),
        ))
    }

    async fn direct_parts(&self, blob: BlobId, state: &str) -> StoreResult<Vec<StoredPart>> {
        self.list_parts(blob, state).await
    }

    async fn complete_direct(&self, blob: BlobId, state: &str, parts: &[(u32, String)]) -> StoreResult<()> {
        let path = self.object_path(blob);
        // Blob ids are never reused: if the object exists, an earlier attempt completed it.
        if self.store.head(&path).await.is_ok() {
            return Ok(());
        }
        let stored = self.list_parts(blob, state).await.map_err(|e| match e {
            StoreError::NotFound => StoreError::Conflict,
            other => other,
        })?;
        for (i, (number, etag)) in parts.iter().enumerate() {
            let matches = stored.iter().any(|p| {
                p.number == *number
                    && *number as usize == i + 1
                    && p.etag.as_deref().is_none_or(|stored| stored == bare_etag(etag))
            });
            if !matches {
                return Err(StoreError::Conflict);
            }
        }
        let ids = parts
            .iter()
            .map(|(_, etag)| PartId {
                content_id: format!("\"{}\"", bare_etag(etag)),
            })
            .collect();
        if let Err(e) = self.store.complete_multipart(&path, &state.to_owned(), ids).await {
            // A completion that went through but whose answer was lost leaves the object behind.
            if self.store.head(&path).await.is_ok() {
                return Ok(());
            }
            return Err(match e {
                // S3 refused the parts (InvalidPart, InvalidPartOrder, EntityTooSmall): the client's to fix.
                object_store::Error::Generic { ref source, .. } if source.to_string().contains("400") => {
                    StoreError::Conflict
                }
                other => s3_error(other),
            });
        }
        Ok(())
    }

    async fn abort_direct(&self, blob: BlobId, state: &str) -> StoreResult<()> {
        match self
            .store
            .abort_multipart(&self.object_path(blob), &state.to_owned())
            .await
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            // S3 answers an unknown (already aborted or completed) upload id with 404 NoSuchUpload, but some
            // S3-compatible servers (s3s-fs) answer 403. Nothing is left to discard when no part can be listed any
            // more; if parts are still there, the refusal was real.
            Err(e @ object_store::Error::PermissionDenied { .. }) => match self.direct_parts(blob, state).await {
                Ok(parts) if !parts.is_empty() => Err(s3_error(e)),
                _ => Ok(()),
            },
            Err(e) => Err(s3_error(e)),
        }
    }
}
