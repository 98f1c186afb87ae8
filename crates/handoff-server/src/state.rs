//! The application state every handler receives: configuration, the two stores (as trait objects, so any
//! backend plugs in), the token service and the password hasher.

use std::ops::Deref;
use std::sync::Arc;

use handoff_core::{BlobStore, MetadataStore};

use crate::audit::AuditLog;
use crate::auth::oidc::{OidcConfigError, OidcProviders};
use crate::auth::password::Passwords;
use crate::auth::tokens::TokenService;
use crate::config::Config;

#[derive(Clone, Debug)]
pub struct AppState(Arc<Inner>);

#[derive(Debug)]
pub struct Inner {
    pub config: Config,
    pub meta: Arc<dyn MetadataStore>,
    pub blobs: Arc<dyn BlobStore>,
    pub tokens: TokenService,
    pub passwords: Passwords,
    pub audit: AuditLog,
    /// Trusted external identity providers (`auth.oidc`).
    pub oidc: OidcProviders,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("metadata store")]
    Database(#[from] handoff_db::ConnectError),
    #[error("metadata store")]
    Dynamo(#[from] handoff_dynamo::ConnectError),
    #[error(
        "limits.max_files_per_request is {0}, but a DynamoDB commit holds at most {max} files",
        max = handoff_dynamo::MAX_FILES_PER_COMMIT
    )]
    TooManyFilesPerCommit(usize),
    #[error("blob store")]
    Storage(#[from] handoff_storage::OpenError),
    #[error("could not create the data directory {0}: {1}")]
    DataDir(std::path::PathBuf, #[source] std::io::Error),
    #[error("could not load signing keys")]
    Keys(#[source] handoff_core::StoreError),
    #[error("could not apply auth.admins")]
    Admins(#[source] handoff_core::StoreError),
    #[error("could not prepare password hashing: {0:?}")]
    Passwords(crate::error::ApiError),
    #[error(transparent)]
    Oidc(#[from] OidcConfigError),
    #[error(transparent)]
    Cors(#[from] crate::cors::CorsConfigError),
}

/// Opens the metadata store named by `config` (applying migrations), creating the default data directory first.
pub async fn open_metadata(config: &Config) -> Result<Arc<dyn MetadataStore>, StartError> {
    if config.database_url.is_none() {
        tokio::fs::create_dir_all(&config.data_dir)
            .await
            .map_err(|e| StartError::DataDir(config.data_dir.clone(), e))?;
    }
    let url = config.database_url();
    // One upload request is one DynamoDB transaction, which holds a bounded number of items.
    if is_dynamodb(&url) && config.limits.max_files_per_request > handoff_dynamo::MAX_FILES_PER_COMMIT {
        return Err(StartError::TooManyFilesPerCommit(config.limits.max_files_per_request));
    }
    connect_metadata(&url).await
}

fn is_dynamodb(url: &str) -> bool {
    url.starts_with("dynamodb:")
}

/// Opens the metadata store at `url`, whichever backend it names (SQLite, PostgreSQL or DynamoDB), applying
/// migrations or creating the table as that backend does. No server limits are checked: for tools such as
/// `migrate-storage`, which write rows one at a time.
pub async fn connect_metadata(url: &str) -> Result<Arc<dyn MetadataStore>, StartError> {
    if is_dynamodb(url) {
        return Ok(handoff_dynamo::connect(url).await?);
    }
    Ok(handoff_db::connect(url).await?)
}

impl AppState {
    /// Opens the backends named by `config` (creating the default data directory if needed).
    pub async fn build(config: Config) -> Result<Self, StartError> {
        if config.database_url.is_none() || config.storage_url.is_none() {
            tokio::fs::create_dir_all(&config.data_dir)
                .await
                .map_err(|e| StartError::DataDir(config.data_dir.clone(), e))?;
        }
        let meta = open_metadata(&config).await?;
        let blobs = handoff_storage::open(&config.storage_url()).await?;
        Self::with_stores(config, meta, blobs).await
    }

    pub async fn with_stores(
        config: Config,
        meta: Arc<dyn MetadataStore>,
        blobs: Arc<dyn BlobStore>,
    ) -> Result<Self, StartError> {
        let tokens = TokenService::load(
            meta.clone(),
            &config.auth.issuer,
            &config.auth.audience,
            config.access_token_ttl(),
            std::time::Duration::from_secs(config.auth.signing_key_activation_secs),
        )
        .await
        .map_err(StartError::Keys)?;
        let oidc = OidcProviders::new(&config.auth.oidc, &config.auth.issuer)?;
        crate::cors::Policy::new(&config.cors)?;
        let passwords = Passwords::new(config.auth.password_hash_concurrency)
            .await
            .map_err(StartError::Passwords)?;
        promote_admins(meta.as_ref(), &config.auth.admins)
            .await
            .map_err(StartError::Admins)?;
        let audit = AuditLog::start(meta.clone());
        Ok(Self(Arc::new(Inner {
            config,
            meta,
            blobs,
            tokens,
            passwords,
            audit,
            oidc,
        })))
    }
}

/// Makes the accounts named in `auth.admins` server admins (those that exist; sign-up promotes later ones).
async fn promote_admins(meta: &dyn MetadataStore, admins: &[String]) -> Result<(), handoff_core::StoreError> {
    for name in admins {
        let Ok(username) = handoff_core::Username::parse(name) else {
            tracing::warn!(%name, "auth.admins names an impossible username");
            continue;
        };
        if let Some(user) = meta.user_by_username(&username).await?
            && !user.is_admin
        {
            meta.set_user_flags(user.id, None, Some(true)).await?;
            tracing::info!(%name, "promoted to server admin by configuration");
        }
    }
    Ok(())
}
