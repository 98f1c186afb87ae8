//! Handoff's domain: the identifiers and records that every layer shares, the validation rules for everything a
//! client can send (usernames, passwords, file names), the access policy, and the two ports — [`MetadataStore`]
//! and [`BlobStore`] — that the database and storage crates implement.
//!
//! This crate knows nothing of HTTP, SQL or any cloud SDK: adapters translate to and from these types.

pub mod direct;
pub mod identity;
pub mod ids;
pub mod model;
pub mod names;
pub mod policy;
pub mod ports;
pub mod sharing;
pub mod uploads;

pub use direct::{DirectBlobStore, DirectUpload, DirectUploadStore, StoredPart, Verification};
pub use identity::{ApiTokenRecord, ApiTokenScope, IdentityStore, NewApiToken, NewExternalUser};
pub use ids::{AuditId, BlobId, FileKey, LinkToken, RefreshTokenSecret, ShareId, TeamId, UploadLinkId, UserId};
pub use model::{
    FileCursor, FilePage, FilePatch, FileRecord, NewRefreshToken, NewUser, RefreshOutcome, SigningKeyRecord, User,
    Visibility, now,
};
pub use names::{FileName, NameError, Password, Username};
pub use policy::{Access, Actor, FileAction, file_access};
pub use ports::{BlobReader, BlobStore, BlobWriter, CollaborationStore, MetadataStore, StoreError, StoreResult};
pub use sharing::{
    Account, AuditEvent, AuditScope, CommitOutcome, CommitRules, Membership, MembershipChange, Quota, Share,
    SharePatch, Team, TeamRole, UploadLink, Usage,
};
pub use uploads::{
    LeaseToken, LinkReservation, ResumableBlobStore, ResumableWriter, UploadId, UploadProgress, UploadSession,
    UploadStore,
};
