//! S3-compatible blob store (AWS S3, Garage, MinIO, Ceph RGW, s3s-fs, ...) on `object_store`.
//!
//! Objects live at `<prefix>/blobs/<id>`. Small files are one `PutObject`; larger ones stream as a multipart
//! upload whose parts are sent while the body arrives (one part uploading while the next fills, so memory per
//! upload is about two parts). Either way the object appears atomically when the upload completes, so nothing
//! partial is ever visible. An upload dropped before `commit` aborts its multipart upload in the background;
//! uploads cut short by a crash are left to the bucket's lifecycle rule (`AbortIncompleteMultipartUpload`).
//!
//! Configuration: `s3://BUCKET[/PREFIX]?endpoint=URL&region=R&path_style=true|false` — credentials, region and
//! endpoint may also come from the standard `AWS_*` environment variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL`); explicit
//! `access_key_id`/`secret_access_key` query parameters are accepted too and redacted wherever the URL is shown.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt as _;
use handoff_core::{BlobId, BlobReader, BlobStore, BlobWriter, StoreError, StoreResult};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::signer::{SignedUrlOptions, Signer as _};
use object_store::{
    ClientOptions, GetOptions, GetRange, MultipartUpload, ObjectStore, ObjectStoreExt as _, PutPayload, PutPayloadMut,
    RetryConfig, UploadPart,
};
use uuid::Uuid;

use crate::OpenError;

#[path = "s3_direct.rs"]
mod direct;
#[path = "s3_resumable.rs"]
mod resumable;

/// The first part size; S3 requires at least 5 MiB for every part but the last.
const FIRST_PART: usize = 8 << 20;
/// Part size doubles every this many parts, so that S3's 10,000-part limit allows ~500 GiB objects while small
/// and medium uploads keep small parts (and little memory).
const PARTS_PER_DOUBLING: usize = 2_000;

#[derive(Debug, Clone)]
pub struct S3Store {
    store: Arc<AmazonS3>,
    prefix: String,
    /// For the one S3 call object_store does not offer (ListParts), sent as a request we sign ourselves.
    http: reqwest::Client,
}

/// Never echoes the URL: it may carry credentials.
fn open_error(message: impl std::fmt::Display) -> OpenError {
    OpenError::Invalid(format!("S3 storage URL: {message}"))
}

fn is_true(v: &str) -> bool {
    matches!(v, "1" | "true" | "yes")
}

impl S3Store {
    pub fn open(raw: &str) -> Result<Self, OpenError> {
        crate::install_tls_provider();
        let url = url::Url::parse(raw).map_err(open_error)?;
        let bucket = url
            .host_str()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| open_error("no bucket"))?;
        let prefix = url.path().trim_matches('/').to_owned();
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        let mut endpoint = std::env::var("AWS_ENDPOINT_URL").ok();
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "endpoint" => endpoint = Some(value.into_owned()),
                "region" => builder = builder.with_region(value.as_ref()),
                "path_style" => builder = builder.with_virtual_hosted_style_request(!is_true(&value)),
                "access_key_id" => builder = builder.with_access_key_id(value.as_ref()),
                "secret_access_key" => builder = builder.with_secret_access_key(value.as_ref()),
                "session_token" => builder = builder.with_token(value.as_ref()),
                other => return Err(open_error(format!("unknown parameter {other:?}"))),
            }
        }
        let allow_http = endpoint.as_deref().is_some_and(|e| e.starts_with("http://"));
        if let Some(endpoint) = endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        // Bounded retries: a store that stays down turns into a fast 503, not a hung request.
        let retry = RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(10),
            ..RetryConfig::default()
        };
        let client = ClientOptions::new()
            .with_allow_http(allow_http)
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(300));
        let store = builder
            .with_retry(retry)
            .with_client_options(client)
            .build()
            .map_err(open_error)?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(open_error)?;
        Ok(Self {
            store: Arc::new(store),
            prefix,
            http,
        })
    }

    fn blobs_prefix(&self) -> Path {
        if self.prefix.is_empty() {
            Path::from("blobs")
        } else {
            Path::from(format!("{}/blobs", self.prefix))
        }
    }

    /// The one place a blob id becomes an object key.
    fn object_path(&self, id: BlobId) -> Path {
        self.blobs_prefix().join(id.0.simple().to_string())
    }
}

fn s3_error(e: object_store::Error) -> StoreError {
    match e {
        object_store::Error::NotFound { .. } => StoreError::NotFound,
        object_store::Error::Generic { .. } => StoreError::Unavailable(e.to_string()),
        other => StoreError::other(other),
    }
}

#[async_trait]
impl BlobStore for S3Store {
    async fn ping(&self) -> StoreResult<()> {
        // A HEAD on a key that does not exist proves the bucket answers and our credentials are accepted.
        match self.store.head(&self.blobs_prefix().join(".ping")).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StoreError::Unavailable(e.to_string())),
        }
    }

    async fn create(&self) -> StoreResult<Box<dyn BlobWriter>> {
        let id = BlobId::generate();
        Ok(Box::new(S3Writer {
            id,
            path: self.object_path(id),
            store: self.store.clone(),
            buffer: PutPayloadMut::new(),
            upload: None,
            in_flight: None,
            parts: 0,
        }))
    }

    async fn open(&self, id: BlobId, range: Option<Range<u64>>) -> StoreResult<BlobReader> {
        let options = GetOptions {
            range: range.clone().filter(|r| r.start < r.end).map(GetRange::Bounded),
            ..GetOptions::default()
        };
        if range.as_ref().is_some_and(|r| r.start == r.end) {
            // An empty range needs no request (and S3 refuses zero-length ranges).
            return Ok(BlobReader {
                len: 0,
                stream: Box::pin(futures::stream::empty()),
            });
        }
        let result = self
            .store
            .get_opts(&self.object_path(id), options)
            .await
            .map_err(s3_error)?;
        let len = result.range.end - result.range.start;
        let stream = result.into_stream().map_err(std::io::Error::other);
        Ok(BlobReader {
            len,
            stream: Box::pin(stream),
        })
    }

    async fn delete(&self, id: BlobId) -> StoreResult<()> {
        match self.store.delete(&self.object_path(id)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(s3_error(e)),
        }
    }

    async fn list_older_than(&self, min_age: Duration) -> StoreResult<Vec<BlobId>> {
        let cutoff = chrono_cutoff(min_age);
        let objects: Vec<_> = self
            .store
            .list(Some(&self.blobs_prefix()))
            .try_collect()
            .await
            .map_err(s3_error)?;
        Ok(objects
            .into_iter()
            .filter(|meta| meta.last_modified.timestamp() <= cutoff)
            .filter_map(|meta| meta.location.filename().and_then(|n| Uuid::try_parse(n).ok()))
            .map(BlobId)
            .collect())
    }

    async fn sweep_incomplete(&self, _min_age: Duration) -> StoreResult<u64> {
        // Partial uploads are multipart uploads, invisible as objects: aborted when their writer is dropped, and
        // otherwise expired by the bucket's lifecycle rule.
        Ok(0)
    }

    async fn presigned_get(
        &self,
        id: BlobId,
        ttl: Duration,
        content_disposition: &str,
        content_type: &str,
    ) -> StoreResult<Option<String>> {
        let options = SignedUrlOptions::new().with_query([
            ("response-content-disposition", content_disposition),
            ("response-content-type", content_type),
        ]);
        let url = self
            .store
            .signed_url_opts(http::Method::GET, &self.object_path(id), ttl, &options)
            .await
            .map_err(s3_error)?;
        Ok(Some(url.to_string()))
    }
}

/// Unix seconds before which an object counts as old enough.
fn chrono_cutoff(min_age: Duration) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.saturating_sub(min_age).as_secs()).unwrap_or(i64::MAX)
}

struct S3Writer {
    id: BlobId,
    path: Path,
    store: Arc<AmazonS3>,
    buffer: PutPayloadMut,
    upload: Option<Box<dyn MultipartUpload>>,
    /// The part being uploaded while the next one fills.
    in_flight: Option<UploadPart>,
    parts: usize,
}

/// The size of part number `index` (0-based).
fn part_size(index: usize) -> usize {
    FIRST_PART << (index / PARTS_PER_DOUBLING).min(6)
}

impl S3Writer {
    fn part_size(&self) -> usize {
        part_size(self.parts)
    }

    /// Sends the buffered bytes as the next part, after the previous part has finished.
    async fn send_part(&mut self) -> StoreResult<()> {
        if self.upload.is_none() {
            self.upload = Some(self.store.put_multipart(&self.path).await.map_err(s3_error)?);
        }
        if let Some(previous) = self.in_flight.take() {
            previous.await.map_err(s3_error)?;
        }
        let payload: PutPayload = std::mem::take(&mut self.buffer).freeze();
        if let Some(upload) = self.upload.as_mut() {
            self.in_flight = Some(upload.put_part(payload));
        }
        self.parts += 1;
        Ok(())
    }
}

#[async_trait]
impl BlobWriter for S3Writer {
    fn id(&self) -> BlobId {
        self.id
    }

    async fn write(&mut self, chunk: Bytes) -> StoreResult<()> {
        self.buffer.push(chunk);
        if self.buffer.content_length() >= self.part_size() {
            self.send_part().await?;
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> StoreResult<()> {
        if self.upload.is_none() {
            let payload = std::mem::take(&mut self.buffer).freeze();
            self.store.put(&self.path, payload).await.map_err(s3_error)?;
            return Ok(());
        }
        if self.buffer.content_length() > 0 {
            self.send_part().await?;
        }
        if let Some(last) = self.in_flight.take() {
            last.await.map_err(s3_error)?;
        }
        let mut upload = self
            .upload
            .take()
            .ok_or_else(|| StoreError::Corrupt("multipart upload vanished".into()))?;
        if let Err(e) = upload.complete().await {
            let _ = upload.abort().await;
            return Err(s3_error(e));
        }
        Ok(())
    }
}

/// A writer dropped before completing aborts its multipart upload, so the parts stop costing storage.
impl Drop for S3Writer {
    fn drop(&mut self) {
        if let Some(mut upload) = self.upload.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                if let Err(e) = upload.abort().await {
                    tracing::warn!(error = %e, "could not abort an abandoned multipart upload");
                }
            });
        }
    }
}
