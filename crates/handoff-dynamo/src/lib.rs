//! Handoff's metadata store on Amazon DynamoDB, for the serverless deployment: every port of
//! [`handoff_core::MetadataStore`] on **one table** with on-demand capacity, chosen by the URL
//! `dynamodb://TABLE?region=REGION[&endpoint=http://127.0.0.1:PORT][&ensure=false]` (`endpoint` only for local
//! emulators; `ensure=false` skips the start-up check that creates the table when it is missing).
//!
//! # Key schema
//!
//! Every item has a string partition key `PK` and sort key `SK`. Five global secondary indexes with string keys
//! (`GSI1PK`/`GSI1SK` … `GSI5PK`/`GSI5SK`, all projecting every attribute) serve the listings; an item sets only
//! the index attributes it needs, so it appears only in the indexes that list it. Times in sort keys are 20
//! digits (`ts`, see [`item::sortable`]) so that string order is time order; `id`s are lower-case UUIDs, whose
//! text order is their order; hashes are lower-case hex.
//!
//! | item | PK | SK | indexes |
//! |---|---|---|---|
//! | account | `USER#<id>` | `USER` | GSI3 `USERS` / `<id>` (export in id order) |
//! | username claim | `UNAME#<username>` | `UNAME` | |
//! | "some account exists" | `META` | `FIRSTUSER` | |
//! | API token | `USER#<id>` | `APITOKEN#<token id>` | |
//! | API token by hash | `APITOK#<hash>` | `APITOK` | |
//! | external identity | `EXTID#<len(issuer)>#<issuer><subject>` | `EXTID` | |
//! | signing key | `SIGNKEYS` | `KEY#<ts>#<kid>` (newest first: query backwards) | |
//! | "a signing key exists" | `SIGNKEYS` | `FIRST` | |
//! | refresh token | `RT#<hash>` | `RT` | |
//! | refresh family | `RTFAM#<family>` | `RTFAM` | GSI1 `RTFAMS#<user>` / `<family>` (revoke on disable) |
//! | file | `FILE#<key>` | `FILE` | GSI1 `OWNER#<user>` or `TEAM#<team>` / `<ts>#<key>` (personal and team listings, newest first); GSI2 `FILES` / `<ts>#<key>` (admin listing); GSI3 `FILEKEYS` / `<key>` (export in key order); GSI4 `LINKFILES#<link>` / `<ts>#<key>`; GSI5 `FILEEXP` / `<expiry ts>#<key>` (retention sweep) |
//! | blob reference | `BLOB#<blob>` | `FILE` (a file row names it), `UPLOAD` (an open tus session does) or `DIRECT` (a direct upload session does) | |
//! | team | `TEAM#<id>` | `TEAM` (name, usage, quota, `owner_count`) | |
//! | membership | `TEAM#<id>` | `MEMBER#<user>` | GSI1 `USERTEAMS#<user>` / `<team>` |
//! | share link | `SHARE#<id>` | `SHARE` | GSI1 `SHARES#<owner>` / `<ts>#<id>`; GSI5 `SHARESWEEP` / `<ts>#<id>` (prune) |
//! | share token | `SHARETOK#<hash>` | `SHARETOK` | |
//! | share grant | `GRANT#<hash>` | `GRANT` | GSI5 `GRANTEXP` / `<ts>#<hash>` |
//! | upload link | `ULINK#<id>` | `ULINK` | GSI1 `ULINKS#<owner>` / `<ts>#<id>`; GSI2 `TEAMLINKS#<team>` / `<id>` |
//! | upload link token | `ULTOK#<hash>` | `ULTOK` | |
//! | live-link roster | `USER#<id>` | `ROSTER#LINKS` | |
//! | open-upload roster (the cap) | `USER#<id>` (own uploads) or `ULINK#<id>` (uploads through the link) | `ROSTER#UPLOADS` | |
//! | reserved-bytes roster | `USER#<id>` or `TEAM#<id>` (the paying account) | `ROSTER#RESERVED` (tus), `ROSTER#DIRECTBYTES` (direct) | |
//! | tus session | `UPLOAD#<id>` | `UPLOAD` | GSI5 `UPLOADEXP` / `<expiry ts>#<id>` |
//! | direct upload session | `DIRECT#<id>` | `DIRECT` (blob reference: `BLOB#<blob>` / `DIRECT`; cap roster `USER#<id>` / `ROSTER#DIRECT`) | GSI5 `DIRECTEXP` / `<expiry ts>#<id>` |
//! | audit event | `AUDIT#<id>` | `AUDIT` | GSI1 `AUDOWNER#<owner>` / `<id>`; GSI2 `AUDTEAM#<team>` / `<id>`; GSI3 `AUDIT` / `<id>` |
//!
//! # How the invariants hold
//!
//! - **Uniqueness** (usernames, token hashes, external identities, file keys, blob ids) is a claim item written
//!   with `attribute_not_exists(PK)` in the same `TransactWriteItems` as the record.
//! - **Limits are conditions of the write that spends them.** A commit is one transaction: the files, their blob
//!   references, the account's usage (`ADD`, conditioned on the usage read and the quota it was checked
//!   against) and the upload link's counters (`files_left`/`bytes_left`, conditioned `>=` what the commit
//!   takes). A share download is `ADD download_count 1` conditioned on `download_count < max_downloads`.
//!   The last-owner rule is a condition on the team's `owner_count`. Counts that depend on the clock (live links
//!   per owner, open uploads per owner) are read from a *roster* item listing the candidates, and the insert is
//!   conditioned on the roster's version being the one that was counted.
//! - A cancelled transaction is re-read and decided again (a bounded number of times); throttling, 5xx, timeouts
//!   and connection failures are [`StoreError::Unavailable`] (HTTP 503 with `Retry-After`).
//! - Point reads and base-table queries are strongly consistent. Index queries are not (DynamoDB offers only
//!   eventual consistency on GSIs): listings may lag a write by the index's propagation delay, typically well
//!   under a second. No decision that protects data or a limit reads an index.
//!
//! # Limits
//!
//! `TransactWriteItems` takes at most 100 items, so a commit holds at most [`MAX_FILES_PER_COMMIT`] files (two
//! items each, plus the account and the upload link); the server refuses to start with a larger
//! `limits.max_files_per_request`. A share's file list lives in its item (400 KB item limit: thousands of keys).
//! The `FILES`, `FILEKEYS`, `USERS` and `AUDIT` index partitions take every write of their kind: one partition
//! sustains about 1,000 writes per second, far above what one deployment's uploads need.

use std::sync::Arc;

use handoff_core::MetadataStore;

mod client;
mod collab;
mod core;
mod direct;
mod identity;
pub mod item;
mod links;
mod roster;
pub mod table;
mod teams;
#[cfg(feature = "testing")]
pub mod testing;
mod uploads;

pub use client::{ConnectError, DynamoStore};

/// The most files one commit may make visible (two items each, within the 100 items of one transaction).
pub const MAX_FILES_PER_COMMIT: usize = 48;

/// Opens the store named by `dynamodb://TABLE?…`, creating the table first when it is missing (unless
/// `ensure=false`).
pub async fn connect(url: &str) -> Result<Arc<dyn MetadataStore>, ConnectError> {
    Ok(Arc::new(DynamoStore::open(url).await?))
}
