//! Handoff's blob stores: implementations of [`handoff_core::BlobStore`], chosen by URL.
//!
//! - `file://DIR` (or a bare path): [`LocalStore`], the self-hosted default. Durable, atomic commits.
//! - `s3://BUCKET[/PREFIX]?endpoint=…&region=…&path_style=…`: [`S3Store`], any S3-compatible service.
//! - `memory://`: [`MemoryStore`], for tests and throwaway instances.
//!
//! Object names are built in exactly one place per backend, from the server-made [`handoff_core::BlobId`].

use std::path::PathBuf;
use std::sync::Arc;

use handoff_core::BlobStore;

mod local;
mod memory;
mod s3;

pub use local::LocalStore;
pub use memory::MemoryStore;
pub use s3::S3Store;

#[cfg(feature = "test-s3")]
pub mod testing;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("unsupported storage URL scheme (expected file://, s3:// or memory://): {0}")]
    UnsupportedScheme(String),
    #[error("{0}")]
    Invalid(String),
    #[error("could not prepare the storage directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Opens the blob store named by `url`.
pub async fn open(url: &str) -> Result<Arc<dyn BlobStore>, OpenError> {
    match url.split_once("://") {
        Some(("file", path)) => Ok(Arc::new(LocalStore::open(PathBuf::from(path)).await?)),
        Some(("memory", _)) => Ok(Arc::new(MemoryStore::default())),
        Some(("s3", _)) => Ok(Arc::new(S3Store::open(url)?)),
        Some((scheme, _)) => Err(OpenError::UnsupportedScheme(scheme.to_owned())),
        None => Ok(Arc::new(LocalStore::open(PathBuf::from(url)).await?)),
    }
}

/// Installs ring as the process's TLS crypto provider (idempotent). The whole tree uses one provider; every
/// HTTPS client in the process (the S3 client, test clients) needs it installed before it is built.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
