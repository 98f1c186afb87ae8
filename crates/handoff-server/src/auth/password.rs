//! Password hashing: argon2id (m = 19 MiB, t = 2, p = 1, the OWASP baseline), computed on the blocking pool
//! behind a semaphore so a flood of sign-ins queues instead of starving the async workers or exhausting memory.
//! Unknown users are checked against a dummy hash so that they cost the same time as a wrong password.

use std::sync::Arc;

use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use handoff_core::Password;
use tokio::sync::{OnceCell, Semaphore};

use crate::error::ApiError;

#[derive(Debug)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    /// A real hash of a random password: verifying against it costs exactly one argon2id run. Computed in the
    /// background at start-up (not before the server listens: it would add a hash's time to every cold start).
    dummy_hash: Arc<OnceCell<String>>,
}

async fn compute_dummy_hash() -> Result<String, ApiError> {
    let random = hex::encode(handoff_core::ids::os_random::<16>());
    tokio::task::spawn_blocking(move || hash_blocking(&random))
        .await
        .map_err(ApiError::internal)?
}

fn argon2() -> Argon2<'static> {
    #[allow(clippy::expect_used)]
    let params = Params::new(19 * 1024, 2, 1, None).expect("constant argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn hash_blocking(password: &str) -> Result<String, ApiError> {
    argon2()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(ApiError::internal)
}

impl Passwords {
    pub async fn new(concurrency: usize) -> Result<Self, ApiError> {
        let dummy_hash = Arc::new(OnceCell::new());
        let warm = dummy_hash.clone();
        tokio::spawn(async move {
            let _ = warm.get_or_try_init(compute_dummy_hash).await;
        });
        Ok(Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            dummy_hash,
        })
    }

    pub async fn hash(&self, password: &Password) -> Result<String, ApiError> {
        let _permit = self.permits.acquire().await.map_err(ApiError::internal)?;
        let password = password.clone();
        tokio::task::spawn_blocking(move || hash_blocking(password.expose()))
            .await
            .map_err(ApiError::internal)?
    }

    /// `true` only when `stored` exists and matches. `None` (unknown user) still costs one full verification.
    pub async fn verify(&self, password: &str, stored: Option<&str>) -> Result<bool, ApiError> {
        let _permit = self.permits.acquire().await.map_err(ApiError::internal)?;
        // An over-long password can never match (none is stored), but it still pays for one verification.
        let stored = stored.filter(|_| password.len() <= Password::MAX_BYTES);
        let known = stored.is_some();
        let hash = match stored {
            Some(hash) => hash.to_owned(),
            None => self.dummy_hash.get_or_try_init(compute_dummy_hash).await?.clone(),
        };
        let password: String = password.chars().take(Password::MAX_BYTES).collect();
        let matched =
            tokio::task::spawn_blocking(move || argon2().verify_password(password.as_bytes(), hash.as_str()).is_ok())
                .await
                .map_err(ApiError::internal)?;
        Ok(known && matched)
    }
}
