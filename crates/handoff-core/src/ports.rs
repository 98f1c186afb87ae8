//! The ports: what the service needs from a metadata store and a blob store, in domain terms. Adapters live in
//! `handoff-db` and `handoff-storage`; the server holds them as `Arc<dyn …>`.

use std::io;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use time::OffsetDateTime;

use crate::ids::{AuditId, BlobId, FileKey, ShareId, TeamId, UploadLinkId, UserId};
use crate::model::{
    FileCursor, FilePatch, FileRecord, NewRefreshToken, NewUser, RefreshOutcome, SigningKeyRecord, User,
};
use crate::names::Username;
use crate::sharing::{
    Account, AuditEvent, AuditScope, CommitOutcome, CommitRules, Membership, MembershipChange, Quota, Share,
    SharePatch, Team, TeamRole, UploadLink, Usage,
};

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
pub trait MetadataStore:
    CollaborationStore
    + crate::identity::IdentityStore
    + crate::uploads::UploadStore
    + crate::direct::DirectUploadStore
    + Send
    + Sync
    + std::fmt::Debug
{
    /// Cheap round trip, for readiness.
    async fn ping(&self) -> StoreResult<()>;

    /// `Conflict` when the username is taken. The very first account of a store becomes an admin.
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

    /// Makes the files visible, all or none, in one transaction, charging their account without a quota check
    /// (for imports; uploads use [`CollaborationStore::commit_files`]).
    async fn insert_files(&self, files: &[FileRecord]) -> StoreResult<()> {
        if files.is_empty() {
            return Ok(());
        }
        let rules = CommitRules {
            default_quota: Quota::UNLIMITED,
            upload_link: None,
            now: crate::model::now(),
            enforce_quota: false,
        };
        match self.commit_files(files, &rules).await? {
            CommitOutcome::Committed => Ok(()),
            CommitOutcome::QuotaExceeded | CommitOutcome::LinkExhausted => {
                Err(StoreError::Corrupt("an unchecked insert was refused".into()))
            }
        }
    }
    async fn file_by_key(&self, key: &FileKey) -> StoreResult<Option<FileRecord>>;
    /// Every file of every owner, ordered by key (byte order), strictly after `after`: for exports.
    async fn files_page(&self, after: Option<&FileKey>, limit: u32) -> StoreResult<Vec<FileRecord>>;
    /// The owner's personal files (not those they uploaded into a team), newest first, strictly after `after`.
    async fn list_files(&self, owner: UserId, after: Option<&FileCursor>, limit: u32) -> StoreResult<Vec<FileRecord>>;
    async fn update_file(
        &self,
        key: &FileKey,
        patch: &FilePatch,
        now: OffsetDateTime,
    ) -> StoreResult<Option<FileRecord>>;
    /// Removes the row (refunding its account's usage) and returns it, so the caller can collect the blob.
    async fn delete_file(&self, key: &FileKey) -> StoreResult<Option<FileRecord>>;
    /// Whether any file row points at `blob` (the orphan collector's question).
    async fn blob_is_referenced(&self, blob: BlobId) -> StoreResult<bool>;
}

/// Teams, quotas, share and upload links, retention and the audit log.
#[async_trait]
pub trait CollaborationStore: Send + Sync {
    /// Makes `files` visible, all or none, if the account's quota and the upload link's limits allow them,
    /// charging both in the same transaction (so concurrent uploads can never push an account past its quota).
    async fn commit_files(&self, files: &[FileRecord], rules: &CommitRules) -> StoreResult<CommitOutcome>;
    /// `NotFound` when the account does not exist.
    async fn usage(&self, account: Account, default_quota: Quota) -> StoreResult<Usage>;
    /// [`usage`](Self::usage), or `None` when neither the account's own quota nor `default_quota` limits it: an
    /// upload into an unlimited account has no room to check, so a backend that knows the account's quota from
    /// memory answers without a query (and then without `NotFound` for an account deleted meanwhile: the commit
    /// decides).
    async fn usage_if_limited(&self, account: Account, default_quota: Quota) -> StoreResult<Option<Usage>> {
        let usage = self.usage(account, default_quota).await?;
        Ok((usage.quota != Quota::UNLIMITED).then_some(usage))
    }
    /// Sets the account's own quota (`None` fields fall back to the default); `false` when there is no such account.
    async fn set_quota(&self, account: Account, quota: Quota) -> StoreResult<bool>;
    /// A team's files, newest first, strictly after `after`.
    async fn list_team_files(
        &self,
        team: TeamId,
        after: Option<&FileCursor>,
        limit: u32,
    ) -> StoreResult<Vec<FileRecord>>;
    /// Every file of every owner, newest first (the admin's view).
    async fn list_all_files(&self, after: Option<&FileCursor>, limit: u32) -> StoreResult<Vec<FileRecord>>;
    /// Files that arrived through an upload link, newest first.
    async fn list_upload_link_files(&self, link: UploadLinkId, limit: u32) -> StoreResult<Vec<FileRecord>>;
    /// Deletes up to `limit` files whose expiry is at or before `now`, refunding usage, and returns them so their
    /// blobs can be removed. Safe on several nodes at once: each row is returned to exactly one caller.
    async fn delete_expired_files(&self, now: OffsetDateTime, limit: u32) -> StoreResult<Vec<FileRecord>>;

    /// Creates the team with `owner` as its first owner.
    async fn create_team(&self, team: &Team, owner: UserId, now: OffsetDateTime) -> StoreResult<()>;
    async fn team(&self, id: TeamId) -> StoreResult<Option<Team>>;
    async fn rename_team(&self, id: TeamId, name: &str) -> StoreResult<Option<Team>>;
    /// Deletes the team with its memberships, links and files; returns the files so their blobs can be removed.
    async fn delete_team(&self, id: TeamId) -> StoreResult<Vec<FileRecord>>;
    /// The user's teams and their role in each, by name.
    async fn teams_of(&self, user: UserId) -> StoreResult<Vec<(Team, TeamRole)>>;
    async fn members(&self, team: TeamId) -> StoreResult<Vec<Membership>>;
    async fn role_in(&self, team: TeamId, user: UserId) -> StoreResult<Option<TeamRole>>;
    /// `Conflict` when the user is already a member.
    async fn add_member(&self, team: TeamId, user: UserId, role: TeamRole, now: OffsetDateTime) -> StoreResult<()>;
    /// Refuses (atomically, across nodes) to demote the team's last owner.
    async fn set_role(&self, team: TeamId, user: UserId, role: TeamRole) -> StoreResult<MembershipChange>;
    /// Refuses (atomically, across nodes) to remove the team's last owner.
    async fn remove_member(&self, team: TeamId, user: UserId) -> StoreResult<MembershipChange>;

    /// Stores a share link; only the SHA-256 of its token is kept.
    async fn create_share(&self, share: &Share, token_hash: &[u8; 32]) -> StoreResult<()>;
    /// Stores a share link unless its owner already holds `max_live` live links (share and upload links that are
    /// not revoked, expired or used up); the count and the insert are one transaction, locked per owner.
    async fn create_share_within(
        &self,
        share: &Share,
        token_hash: &[u8; 32],
        max_live: u64,
        now: OffsetDateTime,
    ) -> StoreResult<bool>;
    async fn share(&self, id: ShareId) -> StoreResult<Option<Share>>;
    async fn share_by_token(&self, token_hash: &[u8; 32]) -> StoreResult<Option<Share>>;
    /// The user's share links, newest first.
    async fn shares_of(&self, owner: UserId) -> StoreResult<Vec<Share>>;
    async fn update_share(&self, id: ShareId, patch: &SharePatch, now: OffsetDateTime) -> StoreResult<Option<Share>>;
    /// `false` when there is no such link.
    async fn revoke_share(&self, id: ShareId, now: OffsetDateTime) -> StoreResult<bool>;
    /// Counts one download if the link is live at `now`; `false` when it is not. Exact under concurrency: a link
    /// allowing n downloads grants exactly n, whatever the number of nodes and simultaneous requests.
    async fn count_share_download(&self, id: ShareId, now: OffsetDateTime) -> StoreResult<bool>;
    /// Remembers a counted download of file `position` of a link, so that its Range requests do not count again.
    async fn insert_share_grant(
        &self,
        grant_hash: &[u8; 32],
        share: ShareId,
        position: u32,
        expires_at: OffsetDateTime,
    ) -> StoreResult<()>;
    /// The link and file position of an unexpired grant.
    async fn share_grant(&self, grant_hash: &[u8; 32], now: OffsetDateTime) -> StoreResult<Option<(ShareId, u32)>>;
    /// Forgets share links that expired or were revoked before `before`, and expired grants; returns how many
    /// links went.
    async fn prune_shares(&self, before: OffsetDateTime) -> StoreResult<u64>;

    async fn create_upload_link(&self, link: &UploadLink, token_hash: &[u8; 32]) -> StoreResult<()>;
    /// As [`CollaborationStore::create_share_within`], for an upload link.
    async fn create_upload_link_within(
        &self,
        link: &UploadLink,
        token_hash: &[u8; 32],
        max_live: u64,
        now: OffsetDateTime,
    ) -> StoreResult<bool>;
    async fn upload_link(&self, id: UploadLinkId) -> StoreResult<Option<UploadLink>>;
    async fn upload_link_by_token(&self, token_hash: &[u8; 32]) -> StoreResult<Option<UploadLink>>;
    /// Links the user made, newest first.
    async fn upload_links_of(&self, owner: UserId) -> StoreResult<Vec<UploadLink>>;
    async fn revoke_upload_link(&self, id: UploadLinkId) -> StoreResult<bool>;

    async fn append_audit(&self, events: &[AuditEvent]) -> StoreResult<()>;
    /// Events in `scope`, newest first, strictly before `before`.
    async fn audit_page(&self, scope: AuditScope, before: Option<AuditId>, limit: u32) -> StoreResult<Vec<AuditEvent>>;

    /// Changes an account's flags; `None` when there is no such account.
    async fn set_user_flags(
        &self,
        user: UserId,
        disabled: Option<bool>,
        is_admin: Option<bool>,
    ) -> StoreResult<Option<User>>;
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
pub trait BlobStore:
    crate::uploads::ResumableBlobStore + crate::direct::DirectBlobStore + Send + Sync + std::fmt::Debug
{
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
