//! The ports: what the service needs from a metadata store and a blob store, in domain terms. Adapters live in
//! `handoff-db` and `handoff-storage`; the server holds them as `Arc<dyn …>`.

use std::io;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use time::OffsetDateTime;

use crate::ids::{BlobId, FileKey, UserId};
use crate::model::{
    FileCursor, FilePatch, FileRecord, NewRefreshToken, NewUser, RefreshOutcome, SigningKeyRecord, User,
};
use crate::names::Username;

/// Failures of either store, classified by what the caller should do about them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule was violated (a username already taken).
    #[error("already exists")]
    Conflict,
    #[error("not found")]
    NotFound,
    /// No space left: the client may retry later or elsewhere (HTTP 507).
    #[error("storage is full")]
    Full,
    /// The backend cannot be reached right now: retrying later may work (HTTP 503).
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// Stored data failed a consistency check.
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    pub fn other(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Other(Box::new(e))
    }
}

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Self::Full,
            io::ErrorKind::NotFound => Self::NotFound,
            _ => Self::other(e),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Everything the service remembers except file bytes.
#[async_trait]
pub trait MetadataStore: crate::uploads::UploadStore + Send + Sync + std::fmt::Debug {
    /// Cheap round trip, for readiness.
    async fn ping(&self) -> StoreResult<()>;

    /// `Conflict` when the username is taken.
    async fn create_user(&self, user: NewUser) -> StoreResult<User>;
    async fn user_by_username(&self, username: &Username) -> StoreResult<Option<User>>;
    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<User>>;
    /// Every account, ordered by id, strictly after `after`: for exports such as `handoff migrate-storage`.
    async fn users_page(&self, after: Option<UserId>, limit: u32) -> StoreResult<Vec<User>>;
    /// Inserts an account exactly as given (id, password hash, flags, creation time): for imports from another
    /// store. `Conflict` when the id or the username is taken.
    async fn import_user(&self, user: &User) -> StoreResult<()>;

    /// All signing keys, newest first.
    async fn signing_keys(&self) -> StoreResult<Vec<SigningKeyRecord>>;
    async fn insert_signing_key(&self, key: &SigningKeyRecord) -> StoreResult<()>;
    /// Inserts `key` only if there is no signing key at all, atomically across every node sharing the store, so a
    /// cluster starting for the first time ends up with exactly one key. Returns whether it was inserted.
    async fn insert_first_signing_key(&self, key: &SigningKeyRecord) -> StoreResult<bool>;

    async fn insert_refresh_token(&self, token: &NewRefreshToken) -> StoreResult<()>;
    /// Atomically spends the token whose hash is `presented` and stores `successor` in its family (the
    /// successor's `family` and `user` are taken from the spent token). Presenting an already spent token
    /// revokes its whole family.
    async fn rotate_refresh_token(
        &self,
        presented: &[u8; 32],
        successor_hash: &[u8; 32],
        successor_expires_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> StoreResult<RefreshOutcome>;
    /// Revokes the family of `presented`; `false` when no such token exists.
    async fn revoke_refresh_family(&self, presented: &[u8; 32]) -> StoreResult<bool>;

    /// Makes the files visible, all or none, in one transaction.
    async fn insert_files(&self, files: &[FileRecord]) -> StoreResult<()>;
    async fn file_by_key(&self, key: &FileKey) -> StoreResult<Option<FileRecord>>;
    /// Every file of every owner, ordered by key (byte order), strictly after `after`: for exports.
    async fn files_page(&self, after: Option<&FileKey>, limit: u32) -> StoreResult<Vec<FileRecord>>;
    /// The owner's files, newest first, strictly after `after`.
    async fn list_files(&self, owner: UserId, after: Option<&FileCursor>, limit: u32) -> StoreResult<Vec<FileRecord>>;
    async fn update_file(
        &self,
        key: &FileKey,
        patch: &FilePatch,
        now: OffsetDateTime,
    ) -> StoreResult<Option<FileRecord>>;
    /// Removes the row and returns it, so the caller can collect the blob.
    async fn delete_file(&self, key: &FileKey) -> StoreResult<Option<FileRecord>>;
    /// Whether any file row points at `blob` (the orphan collector's question).
    async fn blob_is_referenced(&self, blob: BlobId) -> StoreResult<bool>;
}

/// A byte stream of a blob (or of one range of it) with its exact length.
pub struct BlobReader {
    pub len: u64,
    pub stream: BoxStream<'static, io::Result<Bytes>>,
}

impl std::fmt::Debug for BlobReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobReader")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// Where file bytes live. Objects are written once under a server-made [`BlobId`] and never overwritten.
#[async_trait]
pub trait BlobStore: crate::uploads::ResumableBlobStore + Send + Sync + std::fmt::Debug {
    async fn ping(&self) -> StoreResult<()>;

    /// Starts a new blob. Nothing is visible under its id until [`BlobWriter::commit`] returns.
    async fn create(&self) -> StoreResult<Box<dyn BlobWriter>>;

    /// Reads `range` (end exclusive) or the whole blob.
    async fn open(&self, id: BlobId, range: Option<std::ops::Range<u64>>) -> StoreResult<BlobReader>;

    /// Idempotent: deleting a missing blob succeeds.
    async fn delete(&self, id: BlobId) -> StoreResult<()>;

    /// Committed blobs last modified more than `min_age` ago: candidates for the orphan collector, which
    /// deletes those no file row references.
    async fn list_older_than(&self, min_age: Duration) -> StoreResult<Vec<BlobId>>;

    /// Removes partial writes left by crashed or abandoned uploads older than `min_age`; returns how many.
    async fn sweep_incomplete(&self, min_age: Duration) -> StoreResult<u64>;

    /// A URL that lets anyone holding it `GET` the blob for `ttl`, served with the given `Content-Disposition`
    /// and `Content-Type`; `None` when this store cannot sign URLs (then the server streams the bytes itself).
    /// Only ever minted after the access check.
    async fn presigned_get(
        &self,
        _id: BlobId,
        _ttl: Duration,
        _content_disposition: &str,
        _content_type: &str,
    ) -> StoreResult<Option<String>> {
        Ok(None)
    }
}

/// An in-progress blob. Dropping it without `commit` discards the partial bytes.
#[async_trait]
pub trait BlobWriter: Send {
    fn id(&self) -> BlobId;
    async fn write(&mut self, chunk: Bytes) -> StoreResult<()>;
    /// Makes the blob durable and readable under [`BlobWriter::id`].
    async fn commit(self: Box<Self>) -> StoreResult<()>;
}
