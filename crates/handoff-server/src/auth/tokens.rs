//! Access tokens: EdDSA (Ed25519) JWTs signed with keys kept in the metadata store, so every node signs and
//! verifies with the same set. The newest key signs; every stored key verifies (rotation keeps old tokens valid
//! until they expire). Only `EdDSA` is accepted, `kid` must name a stored key, and `jku`/`x5u`/`jwk` headers are
//! never consulted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use handoff_core::{MetadataStore, SigningKeyRecord, StoreError, StoreResult, User, UserId};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;
use uuid::Uuid;

const ALGORITHM: Algorithm = Algorithm::EdDSA;
const ALGORITHM_NAME: &str = "EdDSA";
/// Signing re-reads the key set this often, so a cluster-wide rotation reaches every node.
const RELOAD_INTERVAL: Duration = Duration::from_secs(60);
/// An unknown `kid` (perhaps a key another node already signs with) triggers a reload at most this often, so
/// forged `kid`s cannot turn into a database flood.
const UNKNOWN_KID_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: Uuid,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: Uuid,
}

/// Why a token was refused. Deliberately coarse towards the client.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed, forged, expired or not meant for this service")]
    Invalid,
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct KeySet {
    signer_kid: String,
    signer: EncodingKey,
    verifiers: HashMap<String, DecodingKey>,
    public: Vec<(String, Vec<u8>)>,
    /// Keys for URLs the server signs itself (direct transfers on stores that cannot sign), derived from each
    /// signing key, so every node sharing the metadata store has them and nothing new has to be stored.
    url_keys: HashMap<String, [u8; 32]>,
    loaded_at: Instant,
}

/// `HMAC-SHA256(private key, label)`: a key for another purpose that reveals nothing about the signing key.
fn derive_url_key(private_der: &[u8]) -> [u8; 32] {
    use hmac::{KeyInit as _, Mac as _};
    let mut mac = <hmac::Hmac<sha2::Sha256>>::new_from_slice(private_der).expect("HMAC takes keys of any length");
    mac.update(b"handoff signed URLs v1");
    mac.finalize().into_bytes().into()
}

/// Tokens already verified, so that a client reusing its token pays for one signature check, not one per
/// request. Only successful verifications are kept, each until the token's own `exp`; bounded in size.
#[derive(Default)]
struct VerifiedCache {
    entries: std::sync::Mutex<HashMap<String, (UserId, i64)>>,
}

impl VerifiedCache {
    const MAX_ENTRIES: usize = 10_000;

    fn get(&self, token: &str, now: i64) -> Option<UserId> {
        let entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        entries.get(token).filter(|(_, exp)| *exp > now).map(|(user, _)| *user)
    }

    fn insert(&self, token: &str, user: UserId, exp: i64) {
        let mut entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() >= Self::MAX_ENTRIES {
            // Cheap and bounded: drop what has expired, and everything if that was not enough.
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            entries.retain(|_, (_, e)| *e > now);
            if entries.len() >= Self::MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(token.to_owned(), (user, exp));
    }
}

pub struct TokenService {
    meta: Arc<dyn MetadataStore>,
    verified: VerifiedCache,
    issuer: String,
    audience: String,
    ttl: Duration,
    activation: Duration,
    validation: Validation,
    keys: RwLock<KeySet>,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

fn generate_key() -> StoreResult<SigningKeyRecord> {
    let signing = SigningKey::from_bytes(&handoff_core::ids::os_random::<32>());
    let private_der = signing
        .to_pkcs8_der()
        .map_err(|e| StoreError::other(std::io::Error::other(e.to_string())))?;
    let public_raw = signing.verifying_key().to_bytes().to_vec();
    Ok(SigningKeyRecord {
        kid: URL_SAFE_NO_PAD.encode(handoff_core::ids::os_random::<12>()),
        algorithm: ALGORITHM_NAME.into(),
        private_der: private_der.as_bytes().to_vec(),
        public_raw,
        created_at: handoff_core::now(),
    })
}

/// Loads every key; creates the cluster's first one if there is none (atomically: racing nodes end up with the
/// same single key). The signer is the newest key that has existed for `activation` — long enough for every node
/// to have loaded it, so no node meets a token signed with a key it has not seen yet — or, right after the first
/// start, the oldest key.
async fn load_keys(meta: &dyn MetadataStore, activation: Duration) -> StoreResult<KeySet> {
    let mut records = meta.signing_keys().await?;
    records.retain(|k| k.algorithm == ALGORITHM_NAME);
    if records.is_empty() {
        meta.insert_first_signing_key(&generate_key()?).await?;
        records = meta.signing_keys().await?;
        records.retain(|k| k.algorithm == ALGORITHM_NAME);
    }
    let active_before = handoff_core::now() - time::Duration::try_from(activation).unwrap_or(time::Duration::ZERO);
    let signer = records
        .iter()
        .find(|k| k.created_at <= active_before)
        .or_else(|| records.last())
        .ok_or_else(|| StoreError::Corrupt("no signing key after inserting one".into()))?;
    Ok(KeySet {
        signer_kid: signer.kid.clone(),
        signer: EncodingKey::from_ed_der(&signer.private_der),
        verifiers: records
            .iter()
            .map(|k| (k.kid.clone(), DecodingKey::from_ed_der(&k.public_raw)))
            .collect(),
        public: records.iter().map(|k| (k.kid.clone(), k.public_raw.clone())).collect(),
        url_keys: records
            .iter()
            .map(|k| (k.kid.clone(), derive_url_key(&k.private_der)))
            .collect(),
        loaded_at: Instant::now(),
    })
}

impl TokenService {
    pub async fn load(
        meta: Arc<dyn MetadataStore>,
        issuer: &str,
        audience: &str,
        ttl: Duration,
        activation: Duration,
    ) -> StoreResult<Self> {
        let keys = load_keys(meta.as_ref(), activation).await?;
        let mut validation = Validation::new(ALGORITHM);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 30;
        Ok(Self {
            meta,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            ttl,
            activation,
            validation,
            verified: VerifiedCache::default(),
            keys: RwLock::new(keys),
        })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Adds a new signing key for the whole cluster. Nodes start signing with it once it is older than the
    /// activation delay (by then every node has loaded it) and keep verifying tokens signed with older keys.
    pub async fn rotate(meta: &dyn MetadataStore) -> StoreResult<String> {
        let key = generate_key()?;
        meta.insert_signing_key(&key).await?;
        Ok(key.kid)
    }

    pub async fn issue(&self, user: &User) -> Result<String, TokenError> {
        let stale = self.keys.read().await.loaded_at.elapsed() >= RELOAD_INTERVAL;
        if stale {
            let fresh = load_keys(self.meta.as_ref(), self.activation).await?;
            *self.keys.write().await = fresh;
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user.id.0,
            iat: now,
            nbf: now,
            exp: now + i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX / 2),
            jti: Uuid::new_v4(),
        };
        let keys = self.keys.read().await;
        let mut header = Header::new(ALGORITHM);
        header.kid = Some(keys.signer_kid.clone());
        jsonwebtoken::encode(&header, &claims, &keys.signer).map_err(|e| TokenError::Store(StoreError::other(e)))
    }

    /// The key that signs server-made URLs now, with its id (the signing key's `kid`).
    pub async fn url_signing_key(&self) -> Result<(String, [u8; 32]), TokenError> {
        let stale = self.keys.read().await.loaded_at.elapsed() >= RELOAD_INTERVAL;
        if stale {
            let fresh = load_keys(self.meta.as_ref(), self.activation).await?;
            *self.keys.write().await = fresh;
        }
        let keys = self.keys.read().await;
        let key = keys
            .url_keys
            .get(&keys.signer_kid)
            .ok_or_else(|| TokenError::Store(StoreError::Corrupt("no URL key for the signer".into())))?;
        Ok((keys.signer_kid.clone(), *key))
    }

    /// The URL key with id `kid`, reloading the key set (at most once per interval) for a `kid` another node may
    /// have just started using; `None` for a `kid` that names no key.
    pub async fn url_key(&self, kid: &str) -> Result<Option<[u8; 32]>, TokenError> {
        if let Some(key) = self.keys.read().await.url_keys.get(kid) {
            return Ok(Some(*key));
        }
        let mut keys = self.keys.write().await;
        if keys.loaded_at.elapsed() >= UNKNOWN_KID_RELOAD_INTERVAL {
            *keys = load_keys(self.meta.as_ref(), self.activation).await?;
        }
        Ok(keys.url_keys.get(kid).copied())
    }

    /// The user id a valid token speaks for.
    pub async fn verify(&self, token: &str) -> Result<UserId, TokenError> {
        if let Some(user) = self
            .verified
            .get(token, time::OffsetDateTime::now_utc().unix_timestamp())
        {
            return Ok(user);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        if header.alg != ALGORITHM {
            return Err(TokenError::Invalid);
        }
        let kid = header.kid.ok_or(TokenError::Invalid)?;
        if let Some(user) = self.verify_with(&kid, token).await? {
            return Ok(user);
        }
        // Possibly a key another node just created: reload, but not more than once per interval.
        {
            let mut keys = self.keys.write().await;
            if keys.loaded_at.elapsed() < UNKNOWN_KID_RELOAD_INTERVAL {
                return Err(TokenError::Invalid);
            }
            *keys = load_keys(self.meta.as_ref(), self.activation).await?;
        }
        self.verify_with(&kid, token).await?.ok_or(TokenError::Invalid)
    }

    /// `Ok(None)` when `kid` is not in the current set.
    async fn verify_with(&self, kid: &str, token: &str) -> Result<Option<UserId>, TokenError> {
        let keys = self.keys.read().await;
        let Some(key) = keys.verifiers.get(kid) else {
            return Ok(None);
        };
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|_| TokenError::Invalid)?;
        let user = UserId(data.claims.sub);
        self.verified.insert(token, user, data.claims.exp);
        Ok(Some(user))
    }

    /// The public keys as a JWK Set (RFC 7517; OKP keys per RFC 8037).
    pub async fn jwks(&self) -> serde_json::Value {
        let keys = self.keys.read().await;
        let keys: Vec<_> = keys
            .public
            .iter()
            .map(|(kid, raw)| {
                serde_json::json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "alg": ALGORITHM_NAME,
                    "use": "sig",
                    "kid": kid,
                    "x": URL_SAFE_NO_PAD.encode(raw),
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }
}
