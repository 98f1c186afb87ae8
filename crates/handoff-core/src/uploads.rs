//! Resumable uploads (tus 1.0): the session record, its identifier, and the two ports that keep it —
//! [`UploadStore`] (session state in the metadata store) and [`ResumableBlobStore`] (bytes appended across
//! requests, processes and nodes).
//!
//! An upload session is owned by one user (for an upload through an upload link: the link's owner, with the link
//! and its team recorded) and reaches a durable `offset` one checkpoint at a time. Whoever
//! appends must first hold the session's *lease*: a token and an expiry written by a conditional update in the
//! metadata store, so that of two concurrent appends — on one node or on two — exactly one proceeds. A lease is
//! renewed while its holder works and simply runs out when its holder dies, so a crashed process blocks an
//! upload only for one lease period.

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use time::OffsetDateTime;

use crate::ids::{BlobId, FileKey, TeamId, UploadLinkId, UserId, is_token_of, random_token};
use crate::model::Visibility;
use crate::names::FileName;
use crate::ports::StoreResult;
use crate::sharing::Account;

/// The id in an upload URL: 192 random bits as 32 URL-safe characters. It is unguessable, but not the access
/// check: every request is also checked against the session's owner.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct UploadId(String);

impl UploadId {
    const BYTES: usize = 24;

    pub fn generate() -> Self {
        Self(random_token::<{ Self::BYTES }>())
    }

    /// The only way in from client text.
    pub fn parse(s: &str) -> Option<Self> {
        is_token_of(s, Self::BYTES).then(|| Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UploadId({}…)", &self.0[..4])
    }
}

/// Proof of holding a session's lease: 128 random bits, never shown to clients.
#[derive(Clone, PartialEq, Eq)]
pub struct LeaseToken(String);

impl LeaseToken {
    pub fn generate() -> Self {
        Self(random_token::<16>())
    }

    pub fn from_trusted(stored: String) -> Self {
        Self(stored)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LeaseToken(..)")
    }
}

/// One resumable upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadSession {
    pub id: UploadId,
    pub owner: UserId,
    /// The team the file goes to, if any (today only through a team's upload link).
    pub team: Option<TeamId>,
    /// The upload link the session was created through: only a holder of that link may continue it, and the file
    /// is committed through the link's counters. `None` for a signed-in user's own upload.
    pub upload_link: Option<UploadLinkId>,
    /// Where the bytes go; the blob becomes the file's blob on completion.
    pub blob: BlobId,
    /// The file's secret key, chosen at creation (so that completing twice makes one file) and revealed only
    /// once the upload is complete.
    pub file_key: FileKey,
    /// `None` while the length is deferred (`Upload-Defer-Length: 1`).
    pub length: Option<u64>,
    /// Bytes durably stored: never more than what a crash would keep.
    pub offset: u64,
    /// `Upload-Metadata` as the client sent it (validated), echoed by `HEAD`.
    pub metadata: String,
    pub name: FileName,
    pub content_type: String,
    pub visibility: Visibility,
    /// The blob store's resumable state at `offset` (opaque to the metadata store).
    pub store_state: String,
    /// The running SHA-256 of the first `offset` bytes, serialised (empty at offset 0).
    pub hash_state: Vec<u8>,
    pub completed: bool,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

impl UploadSession {
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        self.expires_at <= now
    }
}

/// What an append changes, recorded only while holding the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadProgress {
    pub offset: u64,
    pub length: Option<u64>,
    pub store_state: String,
    pub hash_state: Vec<u8>,
    pub expires_at: OffsetDateTime,
}

/// What a link's open resumable uploads hold back from its limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkReservation {
    pub files: u64,
    pub bytes: u64,
}

/// Upload sessions in the metadata store. Every state change after creation is conditional on the lease
/// token, so a process that lost its lease (it stalled, or another node took over after it died) cannot
/// overwrite newer progress.
#[async_trait]
pub trait UploadStore: Send + Sync {
    /// Inserts the session unless `max_open` incomplete, unexpired sessions already exist in its scope (then
    /// `false`): the owner's own sessions for a session without an upload link, the link's sessions for one with
    /// a link (so that people sending through a link cannot use up the owner's allowance). The count and the
    /// insert are atomic across nodes.
    async fn create_upload(&self, session: &UploadSession, max_open: u32, now: OffsetDateTime) -> StoreResult<bool>;

    async fn upload_by_id(&self, id: &UploadId) -> StoreResult<Option<UploadSession>>;

    /// Takes the lease until `until` if the session exists, is neither complete nor expired, and nobody holds an
    /// unexpired lease on it. Returns the session as it was when the lease was taken, or `None`.
    async fn lease_upload(
        &self,
        id: &UploadId,
        token: &LeaseToken,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> StoreResult<Option<UploadSession>>;

    /// Extends a lease still held with `token`; `false` when it was lost.
    async fn renew_upload_lease(&self, id: &UploadId, token: &LeaseToken, until: OffsetDateTime) -> StoreResult<bool>;

    /// Records durable progress; `false` (and nothing written) when `token` no longer holds the lease.
    async fn record_upload_progress(
        &self,
        id: &UploadId,
        token: &LeaseToken,
        progress: &UploadProgress,
    ) -> StoreResult<bool>;

    /// Gives the lease up (no-op when it is no longer held with `token`).
    async fn release_upload(&self, id: &UploadId, token: &LeaseToken) -> StoreResult<()>;

    /// Marks the session complete and releases the lease; `false` when the lease was lost.
    async fn complete_upload(&self, id: &UploadId, token: &LeaseToken) -> StoreResult<bool>;

    /// Removes the session if `token` holds its lease, or unconditionally for a completed session when `token`
    /// is `None`. Returns whether a row was removed.
    async fn delete_upload(&self, id: &UploadId, token: Option<&LeaseToken>) -> StoreResult<bool>;

    /// Sessions whose expiry has passed and that nobody holds a live lease on, oldest first.
    async fn expired_uploads(&self, now: OffsetDateTime, limit: u32) -> StoreResult<Vec<UploadSession>>;

    /// Removes an expired session if it is still expired and unleased at `now`; returns whether it did.
    async fn delete_expired_upload(&self, id: &UploadId, now: OffsetDateTime) -> StoreResult<bool>;

    /// Whether an incomplete session names `blob`: a finished-but-not-yet-committed upload's blob may already sit
    /// among the committed blobs, and the orphan collector must leave it alone.
    async fn blob_in_open_upload(&self, blob: BlobId) -> StoreResult<bool>;

    /// Bytes the incomplete sessions bound for `account` reserve (a user's: sessions into their own space,
    /// including those through their personal upload links; a team's: sessions into the team): their declared
    /// lengths (their durable offsets while a length is deferred). A quota counts them while the uploads are in
    /// progress, so that an upload allowed to start can also finish.
    async fn open_upload_bytes(&self, account: Account) -> StoreResult<u64>;

    /// What a link's incomplete, unexpired sessions reserve: how many there are, and their declared lengths
    /// (durable offsets while deferred). An upload link's remaining room is its limits less these.
    async fn open_link_uploads(&self, link: UploadLinkId, now: OffsetDateTime) -> StoreResult<LinkReservation>;
}

/// Blob stores that can build one blob over many requests. The state string a writer returns is persisted by
/// the caller with the offset; any process can resume from it later.
#[async_trait]
pub trait ResumableBlobStore: Send + Sync {
    /// Opens `blob` for appending at `offset`, the durable offset recorded with `state` (`""` for a new upload).
    /// Bytes past `offset` left by an interrupted append are dropped.
    async fn resume(&self, blob: BlobId, state: &str, offset: u64) -> StoreResult<Box<dyn ResumableWriter>>;

    /// Makes a sealed upload visible under `blob` (as [`crate::BlobWriter::commit`] does). Idempotent: a retry
    /// after a crash, after the blob already appeared, succeeds.
    async fn finish_resumable(&self, blob: BlobId, state: &str) -> StoreResult<()>;

    /// Discards an unfinished upload's bytes (idempotent).
    async fn abort_resumable(&self, blob: BlobId, state: &str) -> StoreResult<()>;
}

/// An append in progress. Bytes written are durable only once a checkpoint has returned; dropping the writer
/// without one leaves the stored prefix exactly as it was.
#[async_trait]
pub trait ResumableWriter: Send {
    async fn write(&mut self, chunk: Bytes) -> StoreResult<()>;

    /// Whether enough has accumulated that a checkpoint is worthwhile (so that a dropped connection loses
    /// little).
    fn checkpoint_due(&self) -> bool;

    /// Makes every byte written so far durable and returns the state to persist with the new offset.
    async fn checkpoint(&mut self) -> StoreResult<String>;

    /// Like `checkpoint`, for the last bytes of the upload: afterwards only `finish_resumable` may follow.
    async fn seal(&mut self) -> StoreResult<String>;

    /// Called once the state of the last checkpoint is recorded: the store may drop what older states needed.
    async fn persisted(&mut self);
}
