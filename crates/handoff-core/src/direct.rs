//! Direct transfers: an upload session whose bytes go straight from the client to the blob store, through URLs
//! that are signed for one method and one part and live for minutes, so that they never pass through the API
//! (essential behind API Gateway and Lambda, useful everywhere).
//!
//! The protocol is the same on every backend: the session is planned as `part_count` parts of `part_size` bytes
//! (the last one shorter), the client `PUT`s each part to a URL it asks for, and completion joins the parts into
//! the session's blob, which is then verified (size, SHA-256) before it becomes a file. Two ports keep it:
//!
//! - [`DirectUploadStore`] (metadata): the session rows, with a *claim* — a token and an expiry written by a
//!   conditional update — so that of two requests completing or aborting the same session, on one node or on
//!   two, exactly one proceeds;
//! - [`DirectBlobStore`] (bytes): start an upload, sign a part URL (S3) or receive a part through the server
//!   (stores that cannot sign: the server signs its own URLs), list the stored parts, complete, abort.

use std::io;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use time::OffsetDateTime;

use crate::ids::{BlobId, FileKey, TeamId, UserId};
use crate::model::Visibility;
use crate::names::FileName;
use crate::ports::StoreResult;
use crate::sharing::Account;
use crate::uploads::{LeaseToken, UploadId};

/// One direct upload session. Everything the file will be (name, type, visibility, team, expiry) is decided at
/// creation, so completion only has to check the bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectUpload {
    /// 192 random bits; unguessable, but every request is also checked against `owner`.
    pub id: UploadId,
    pub owner: UserId,
    /// The team the file goes to (its quota pays), or `None` for the owner's own space.
    pub team: Option<TeamId>,
    /// Where the bytes go; becomes the file's blob on completion.
    pub blob: BlobId,
    /// The file's key, chosen at creation so that a completion retried after a crash makes one file.
    pub file_key: FileKey,
    pub name: FileName,
    pub content_type: String,
    pub visibility: Visibility,
    /// When the finished file is deleted (retention), if ever.
    pub file_expires_at: Option<OffsetDateTime>,
    /// The declared size: reserved against the quota while the session is open, checked at completion.
    pub size: u64,
    /// The declared SHA-256 (lower-case hex), checked at completion when given.
    pub sha256: Option<String>,
    pub part_size: u64,
    pub part_count: u32,
    /// The blob store's state for this upload (S3: the multipart upload id), opaque to the metadata store.
    pub store_state: String,
    pub created_at: OffsetDateTime,
    /// After this the session can no longer be used, and the maintenance task reclaims its parts (or, once
    /// completed, only its row).
    pub expires_at: OffsetDateTime,
    /// How far verification got: `Some` once the parts are joined into the blob. A completion stops after a
    /// time budget (API Gateway gives a request 30 s; reading many gigabytes takes longer) and the next one
    /// resumes here.
    pub verification: Option<Verification>,
    /// When the session made its file. The row stays until `expires_at`, so a completion retried after its
    /// answer was lost finds the file instead of a missing session; it no longer counts as open.
    pub completed_at: Option<OffsetDateTime>,
}

/// A completion's progress through the joined blob.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verification {
    /// Bytes read (and hashed) so far, from the start of the blob.
    pub verified: u64,
    /// The serialized SHA-256 state after those bytes (opaque to stores).
    pub hash_state: Vec<u8>,
}

impl DirectUpload {
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        self.expires_at <= now
    }

    /// The account whose quota the session reserves and the file is charged to.
    pub fn account(&self) -> Account {
        self.team.map_or(Account::User(self.owner), Account::Team)
    }

    /// The exact size of part `number` (1-based), or `None` outside `1..=part_count`.
    pub fn part_len(&self, number: u32) -> Option<u64> {
        if number == 0 || number > self.part_count {
            return None;
        }
        let before = u64::from(number - 1) * self.part_size;
        Some(self.size.saturating_sub(before).min(self.part_size))
    }
}

/// A part as the blob store holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPart {
    /// 1-based.
    pub number: u32,
    pub size: u64,
    /// The store's entity tag of the part, without quotes; `None` when the store does not report one in its
    /// listing (then the store itself checks tags at completion, or does not use them).
    pub etag: Option<String>,
}

/// Direct upload sessions in the metadata store. Sessions are never updated after creation except for the
/// claim; they are deleted when completed, aborted or reclaimed.
#[async_trait]
pub trait DirectUploadStore: Send + Sync {
    /// Inserts the session unless its owner already has `max_open` unexpired sessions (then `false`). The count
    /// and the insert are atomic across nodes.
    async fn create_direct_upload(
        &self,
        session: &DirectUpload,
        max_open: u32,
        now: OffsetDateTime,
    ) -> StoreResult<bool>;

    async fn direct_upload(&self, id: &UploadId) -> StoreResult<Option<DirectUpload>>;

    /// Claims the session until `until` for whoever holds `token` (to complete, abort or reclaim it), unless an
    /// unexpired claim is held already. Returns the session, or `None` when it does not exist or is claimed.
    async fn claim_direct_upload(
        &self,
        id: &UploadId,
        token: &LeaseToken,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> StoreResult<Option<DirectUpload>>;

    /// Gives a claim up (no-op when `token` no longer holds it), e.g. after a completion the client can retry.
    async fn release_direct_upload(&self, id: &UploadId, token: &LeaseToken) -> StoreResult<()>;

    /// Records how far verification got, if `token` holds the claim (else `false`, nothing written).
    async fn record_direct_verification(
        &self,
        id: &UploadId,
        token: &LeaseToken,
        progress: &Verification,
    ) -> StoreResult<bool>;

    /// Marks the session completed (its file exists) and gives the claim up, if `token` holds it: it no longer
    /// counts against the owner's open sessions, its reservation or its blob (the file owns that now). The row
    /// stays until it expires, for completions retried after a lost answer.
    async fn mark_direct_upload_completed(
        &self,
        id: &UploadId,
        token: &LeaseToken,
        now: OffsetDateTime,
    ) -> StoreResult<bool>;

    /// Removes the session if `token` holds its claim; returns whether a row was removed.
    async fn delete_direct_upload(&self, id: &UploadId, token: &LeaseToken) -> StoreResult<bool>;

    /// Sessions (completed ones too) whose expiry has passed and that nobody holds a live claim on, oldest first.
    async fn expired_direct_uploads(&self, now: OffsetDateTime, limit: u32) -> StoreResult<Vec<DirectUpload>>;

    /// The declared sizes of `account`'s sessions (`Account::User`: the user's sessions into their own space;
    /// `Account::Team`: sessions into the team) that are still open at `now`: what a quota must keep free for
    /// them. Completed sessions reserve nothing.
    async fn open_direct_bytes(&self, account: Account, now: OffsetDateTime) -> StoreResult<u64>;

    /// Whether a session that has not completed names `blob`: a joined-but-not-yet-committed upload's object
    /// already sits among the committed blobs, and the orphan collector must leave it alone.
    async fn blob_in_direct_upload(&self, blob: BlobId) -> StoreResult<bool>;
}

/// Blob stores that can take a blob's bytes as numbered parts sent straight by clients.
#[async_trait]
pub trait DirectBlobStore: Send + Sync {
    /// The smallest size every part but the last must have (S3: 5 MiB).
    fn min_part_size(&self) -> u64 {
        1
    }

    /// Starts receiving parts for `blob`; returns the state to keep with the session.
    async fn begin_direct(&self, blob: BlobId) -> StoreResult<String>;

    /// A URL that lets its holder `PUT` part `number` (1-based) of `blob` for `ttl`, and nothing else; `None`
    /// when this store cannot sign URLs: the server then signs its own and passes the bytes to
    /// [`DirectBlobStore::put_direct_part`]. Only ever minted after the access check.
    async fn direct_part_url(
        &self,
        blob: BlobId,
        state: &str,
        number: u32,
        ttl: Duration,
    ) -> StoreResult<Option<String>>;

    /// Stores part `number` from `body`, replacing an earlier upload of that part; returns its entity tag.
    /// Nothing of a body that fails midway is kept. Bounding the body is the caller's job.
    async fn put_direct_part(
        &self,
        blob: BlobId,
        state: &str,
        number: u32,
        body: BoxStream<'static, io::Result<Bytes>>,
    ) -> StoreResult<String>;

    /// The parts stored so far, by number.
    async fn direct_parts(&self, blob: BlobId, state: &str) -> StoreResult<Vec<StoredPart>>;

    /// Joins `parts` (numbers `1..=n` in order, with their entity tags) into `blob`, which then reads like a
    /// committed blob. `Conflict` when a part is missing or its tag does not match what is stored. Idempotent: a
    /// retry after the blob appeared succeeds.
    async fn complete_direct(&self, blob: BlobId, state: &str, parts: &[(u32, String)]) -> StoreResult<()>;

    /// Discards the parts of an unfinished upload (idempotent).
    async fn abort_direct(&self, blob: BlobId, state: &str) -> StoreResult<()>;
}
