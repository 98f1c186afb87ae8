//! `handoff migrate-storage`: copies an instance from one pair of backends to another (typically SQLite + local
//! disk → PostgreSQL or DynamoDB, + S3) without losing a file.
//!
//! Order: signing keys (so access tokens already handed out keep verifying), accounts (ids, password hashes,
//! flags and creation times preserved, so everyone signs in with the same password), then files. Each file's
//! bytes stream from the source blob store into a new blob of the target (whose writer chooses the id), are
//! hashed on the way and checked against the row's SHA-256 before the blob is committed; only then is the row
//! inserted, pointing at the new blob. External identity links and API tokens follow their accounts
//! (`migrate/identity.rs`). Refresh tokens are not copied: users sign in again.
//!
//! Idempotent and resumable: signing keys whose kid, accounts whose id and files whose key already exist in the
//! target are skipped, so an interrupted run is simply started again. A run cut short between a blob's commit and
//! its row's insert leaves an unreferenced blob in the target, which the target's collector removes after its
//! grace period.

mod identity;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use handoff_core::{BlobStore, FileKey, FileRecord, MetadataStore, StoreError, UserId};
use sha2::{Digest as _, Sha256};

use crate::config::Config;
use crate::state::{StartError, connect_metadata};

/// Rows read from the source per query.
const PAGE: u32 = 200;
/// A progress line at most this often while files are copied (and at the end).
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// The four stores of a migration.
#[derive(Debug, Clone)]
pub struct Stores {
    pub source_meta: Arc<dyn MetadataStore>,
    pub source_blobs: Arc<dyn BlobStore>,
    pub target_meta: Arc<dyn MetadataStore>,
    pub target_blobs: Arc<dyn BlobStore>,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("the source and the target {0} are the same: nothing to migrate")]
    SameBackend(&'static str),
    #[error("the source data directory {0} does not exist")]
    NoSource(std::path::PathBuf),
    #[error("could not open the source stores")]
    OpenSource(#[source] StartError),
    #[error("could not open the target stores")]
    OpenTarget(#[source] StartError),
    #[error("{what}")]
    Store {
        what: String,
        #[source]
        source: StoreError,
    },
    #[error(
        "the account {username} ({id}) cannot be imported: the target already has an account with that username \
         but another id"
    )]
    UsernameTaken { id: UserId, username: String },
    #[error(
        "file with blob {blob} ({name:?}): the copied bytes do not match the stored record \
         (expected {expected_size} bytes with SHA-256 {expected_sha256}, read {actual_size} bytes with SHA-256 \
         {actual_sha256}); nothing was stored for it in the target"
    )]
    Mismatch {
        blob: handoff_core::BlobId,
        name: String,
        expected_size: u64,
        expected_sha256: String,
        actual_size: u64,
        actual_sha256: String,
    },
}

fn store(what: impl Into<String>) -> impl FnOnce(StoreError) -> MigrateError {
    let what = what.into();
    move |source| MigrateError::Store { what, source }
}

/// What a migration did. Counts of "skipped" items were already in the target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub signing_keys_copied: u64,
    pub signing_keys_skipped: u64,
    pub users_copied: u64,
    pub users_skipped: u64,
    pub files_copied: u64,
    pub files_skipped: u64,
    pub bytes_copied: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "migration complete: {} signing keys copied ({} already present), {} users copied ({} already \
             present), {} files copied ({} already present), {} bytes copied. Refresh tokens were not copied: \
             users sign in again (access tokens stay valid until they expire).",
            self.signing_keys_copied,
            self.signing_keys_skipped,
            self.users_copied,
            self.users_skipped,
            self.files_copied,
            self.files_skipped,
            self.bytes_copied
        )
    }
}

/// What the caller is told while a migration runs: one line each when printed with `Display`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    SigningKeys { copied: u64, skipped: u64 },
    Users { copied: u64, skipped: u64 },
    Files { copied: u64, skipped: u64, bytes: u64 },
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SigningKeys { copied, skipped } => {
                write!(f, "copied {copied} signing keys ({skipped} already present)")
            }
            Self::Users { copied, skipped } => write!(f, "copied {copied} users ({skipped} already present)"),
            Self::Files { copied, skipped, bytes } => {
                write!(f, "copied {copied} files, {bytes} bytes ({skipped} already present)")
            }
        }
    }
}

impl Stores {
    /// Opens the source named by `source` and the target named by the two URLs (applying migrations to both
    /// databases). Refuses a source without data and a target that is the source.
    pub async fn open(source: &Config, to_database_url: &str, to_storage_url: &str) -> Result<Self, MigrateError> {
        if source.database_url() == to_database_url {
            return Err(MigrateError::SameBackend("database"));
        }
        if source.storage_url() == to_storage_url {
            return Err(MigrateError::SameBackend("blob store"));
        }
        // The defaults live in the data directory: opening them must not conjure up an empty instance.
        if (source.database_url.is_none() || source.storage_url.is_none())
            && !tokio::fs::try_exists(&source.data_dir).await.unwrap_or(false)
        {
            return Err(MigrateError::NoSource(source.data_dir.clone()));
        }
        let source_meta = connect_metadata(&source.database_url())
            .await
            .map_err(MigrateError::OpenSource)?;
        let source_blobs = handoff_storage::open(&source.storage_url())
            .await
            .map_err(|e| MigrateError::OpenSource(e.into()))?;
        let target_meta = connect_metadata(to_database_url)
            .await
            .map_err(MigrateError::OpenTarget)?;
        let target_blobs = handoff_storage::open(to_storage_url)
            .await
            .map_err(|e| MigrateError::OpenTarget(e.into()))?;
        Ok(Self {
            source_meta,
            source_blobs,
            target_meta,
            target_blobs,
        })
    }

    /// Copies signing keys, accounts and files (see the module documentation), reporting progress as it goes.
    pub async fn migrate(&self, progress: &mut (dyn FnMut(Progress) + Send)) -> Result<Summary, MigrateError> {
        let mut summary = Summary::default();
        self.copy_signing_keys(&mut summary).await?;
        progress(Progress::SigningKeys {
            copied: summary.signing_keys_copied,
            skipped: summary.signing_keys_skipped,
        });
        self.copy_users(&mut summary).await?;
        self.copy_identities_and_api_tokens().await?;
        progress(Progress::Users {
            copied: summary.users_copied,
            skipped: summary.users_skipped,
        });
        self.copy_files(&mut summary, progress).await?;
        Ok(summary)
    }

    async fn copy_signing_keys(&self, summary: &mut Summary) -> Result<(), MigrateError> {
        let present: HashSet<String> = self
            .target_meta
            .signing_keys()
            .await
            .map_err(store("reading the target's signing keys"))?
            .into_iter()
            .map(|k| k.kid)
            .collect();
        let keys = self
            .source_meta
            .signing_keys()
            .await
            .map_err(store("reading the source's signing keys"))?;
        // Oldest first, so that the target's newest key (the one it signs with) is the source's newest.
        for key in keys.iter().rev() {
            if present.contains(&key.kid) {
                summary.signing_keys_skipped += 1;
                continue;
            }
            self.target_meta
                .insert_signing_key(key)
                .await
                .map_err(store(format!("storing signing key {}", key.kid)))?;
            summary.signing_keys_copied += 1;
        }
        Ok(())
    }

    async fn copy_users(&self, summary: &mut Summary) -> Result<(), MigrateError> {
        let mut after = None;
        loop {
            let page = self
                .source_meta
                .users_page(after, PAGE)
                .await
                .map_err(store("reading the source's accounts"))?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            for user in &page {
                let existing = self
                    .target_meta
                    .user_by_id(user.id)
                    .await
                    .map_err(store(format!("looking up account {}", user.id)))?;
                if existing.is_some() {
                    summary.users_skipped += 1;
                    continue;
                }
                match self.target_meta.import_user(user).await {
                    Ok(()) => summary.users_copied += 1,
                    Err(StoreError::Conflict) => {
                        // Not the id (checked above), so the username (or a concurrent run: look again).
                        match self.target_meta.user_by_id(user.id).await {
                            Ok(Some(_)) => summary.users_skipped += 1,
                            _ => {
                                return Err(MigrateError::UsernameTaken {
                                    id: user.id,
                                    username: user.username.to_string(),
                                });
                            }
                        }
                    }
                    Err(e) => return Err(store(format!("storing account {}", user.id))(e)),
                }
            }
        }
        Ok(())
    }

    async fn copy_files(
        &self,
        summary: &mut Summary,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<(), MigrateError> {
        let report = |summary: &Summary| Progress::Files {
            copied: summary.files_copied,
            skipped: summary.files_skipped,
            bytes: summary.bytes_copied,
        };
        let mut last_report = Instant::now();
        let mut after: Option<FileKey> = None;
        loop {
            let page = self
                .source_meta
                .files_page(after.as_ref(), PAGE)
                .await
                .map_err(store("reading the source's files"))?;
            let Some(last) = page.last() else { break };
            after = Some(last.key.clone());
            for file in &page {
                self.copy_file(file, summary).await?;
                if last_report.elapsed() >= PROGRESS_EVERY {
                    progress(report(summary));
                    last_report = Instant::now();
                }
            }
        }
        progress(report(summary));
        Ok(())
    }

    /// Copies one file unless its key is already in the target.
    async fn copy_file(&self, file: &FileRecord, summary: &mut Summary) -> Result<(), MigrateError> {
        // File keys are secrets: messages name the (non-secret) blob id instead.
        let blob = file.blob;
        if self
            .target_meta
            .file_by_key(&file.key)
            .await
            .map_err(store(format!("looking up the file with blob {blob} in the target")))?
            .is_some()
        {
            summary.files_skipped += 1;
            return Ok(());
        }
        let reader = self.source_blobs.open(blob, None).await.map_err(store(format!(
            "opening blob {blob} ({:?}) in the source",
            file.name.as_str()
        )))?;
        let mut writer = self
            .target_blobs
            .create()
            .await
            .map_err(store(format!("creating a blob in the target for blob {blob}")))?;
        let new_blob = writer.id();
        let mut stream = reader.stream;
        let mut hasher = Sha256::new();
        let mut copied = 0_u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| store(format!("reading blob {blob} from the source"))(e.into()))?;
            hasher.update(&chunk);
            copied += chunk.len() as u64;
            writer
                .write(chunk)
                .await
                .map_err(store(format!("writing the copy of blob {blob} to the target")))?;
        }
        let sha256 = hex::encode(hasher.finalize());
        if copied != file.size || sha256 != file.sha256 {
            // Dropping the writer discards the partial copy.
            drop(writer);
            return Err(MigrateError::Mismatch {
                blob,
                name: file.name.as_str().to_owned(),
                expected_size: file.size,
                expected_sha256: file.sha256.clone(),
                actual_size: copied,
                actual_sha256: sha256,
            });
        }
        writer
            .commit()
            .await
            .map_err(store(format!("committing the copy of blob {blob} to the target")))?;
        // Upload links are not migrated, so the link a file arrived through is forgotten.
        let row = FileRecord {
            blob: new_blob,
            upload_link: None,
            ..file.clone()
        };
        match self.target_meta.insert_files(std::slice::from_ref(&row)).await {
            Ok(()) => {
                summary.files_copied += 1;
                summary.bytes_copied += copied;
                Ok(())
            }
            Err(e) => {
                // Leave no orphan behind (the collector would get it eventually). A concurrent run that stored
                // the same key first is not an error.
                let _ = self.target_blobs.delete(new_blob).await;
                if matches!(e, StoreError::Conflict)
                    && matches!(self.target_meta.file_by_key(&file.key).await, Ok(Some(_)))
                {
                    summary.files_skipped += 1;
                    return Ok(());
                }
                Err(store(format!("storing the record of blob {blob} in the target"))(e))
            }
        }
    }
}
