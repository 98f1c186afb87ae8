//! A small JWKS cache for one external issuer. Keys come only from the configured `jwks_url` or from the
//! `jwks_uri` of the issuer's own discovery document — never from a token's `jku`, `x5u` or `jwk` header. The set
//! is re-fetched when older than its TTL, or when a token names a key we do not have, but never more often than
//! the configured minimum interval (forged `kid`s cannot flood the provider); when a fetch fails, the last good
//! set stays in use, so a provider outage does not sign everyone out. Symmetric (`oct`) keys are never used.

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};

/// Largest discovery or JWKS document we read; real ones are a few kB.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// Keys kept from one set; a provider publishes a handful.
const MAX_KEYS: usize = 64;
/// While we have no keys at all (first use, or the provider was down at first use), fetch attempts are spaced
/// by at least this much.
const FIRST_FETCH_RETRY: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A public key usable for `alg` values of its family (or only its own `alg`, when the JWK names one).
pub struct VerifyingKey {
    pub kid: Option<String>,
    pub alg: Option<Algorithm>,
    kty: Kty,
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kty {
    Rsa,
    Ec,
    Okp,
}

impl VerifyingKey {
    /// Whether this key may verify a signature made with `alg`.
    pub fn fits(&self, alg: Algorithm) -> bool {
        let family_ok = match self.kty {
            Kty::Rsa => matches!(
                alg,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ),
            Kty::Ec => matches!(alg, Algorithm::ES256 | Algorithm::ES384),
            Kty::Okp => alg == Algorithm::EdDSA,
        };
        family_ok && self.alg.is_none_or(|a| a == alg)
    }
}

/// Why no key set is available.
#[derive(Debug, thiserror::Error)]
#[error("the identity provider's signing keys could not be fetched: {0}")]
pub struct JwksUnavailable(pub String);

/// When the caller wants the set refreshed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// The current set, refreshed first if its TTL has passed.
    Current,
    /// A token names a key we lack (or no key verified it): refresh unless one happened too recently.
    UnknownKey,
}

#[derive(Default)]
struct State {
    keys: Arc<Vec<VerifyingKey>>,
    fetched_at: Option<Instant>,
    last_attempt: Option<Instant>,
    last_error: Option<String>,
    discovered_url: Option<String>,
    /// Bumped on every successful fetch, so a caller can tell whether a refresh gave it anything new.
    generation: u64,
}

pub struct Jwks {
    http: reqwest::Client,
    issuer: String,
    jwks_url: Option<String>,
    ttl: Duration,
    min_refresh: Duration,
    state: RwLock<State>,
    /// One fetch at a time per issuer; others wait for its result instead of fetching too.
    fetching: Mutex<()>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("issuer", &self.issuer)
            .field("jwks_url", &self.jwks_url)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

/// The HTTP client for discovery and JWKS: no redirects (a redirect could point anywhere), short timeouts.
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    handoff_storage::install_tls_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .build()
}

impl Jwks {
    pub fn new(
        http: reqwest::Client,
        issuer: &str,
        jwks_url: Option<&str>,
        ttl: Duration,
        min_refresh: Duration,
    ) -> Self {
        Self {
            http,
            issuer: issuer.to_owned(),
            jwks_url: jwks_url.map(str::to_owned),
            ttl,
            min_refresh,
            state: RwLock::new(State::default()),
            fetching: Mutex::new(()),
        }
    }

    /// The key set and its generation. `Err` only when there is no set at all and fetching one failed.
    pub async fn keys(&self, need: Need) -> Result<(Arc<Vec<VerifyingKey>>, u64), JwksUnavailable> {
        let seen = {
            let state = self.state.read().await;
            if !self.should_fetch(&state, need) {
                return Self::answer(&state);
            }
            state.generation
        };
        let _fetching = self.fetching.lock().await;
        {
            // Someone else may have fetched while we waited for the lock.
            let state = self.state.read().await;
            if state.generation != seen || !self.should_fetch(&state, need) {
                return Self::answer(&state);
            }
        }
        let discovered = self.state.read().await.discovered_url.clone();
        let result = self.fetch(discovered).await;
        let mut state = self.state.write().await;
        state.last_attempt = Some(Instant::now());
        match result {
            Ok((keys, discovered_url)) => {
                tracing::info!(issuer = %self.issuer, keys = keys.len(), "fetched the identity provider's keys");
                state.keys = Arc::new(keys);
                state.fetched_at = state.last_attempt;
                state.discovered_url = discovered_url;
                state.last_error = None;
                state.generation += 1;
            }
            Err(e) => {
                tracing::warn!(issuer = %self.issuer, error = %e, kept = state.keys.len(),
                    "could not fetch the identity provider's keys; keeping the last good set");
                state.last_error = Some(e);
            }
        }
        Self::answer(&state)
    }

    fn answer(state: &State) -> Result<(Arc<Vec<VerifyingKey>>, u64), JwksUnavailable> {
        if state.fetched_at.is_none() {
            return Err(JwksUnavailable(
                state.last_error.clone().unwrap_or_else(|| "not fetched yet".into()),
            ));
        }
        Ok((state.keys.clone(), state.generation))
    }

    fn should_fetch(&self, state: &State, need: Need) -> bool {
        let since_attempt = state.last_attempt.map(|t| t.elapsed());
        let Some(fetched_at) = state.fetched_at else {
            return since_attempt.is_none_or(|e| e >= FIRST_FETCH_RETRY.min(self.min_refresh));
        };
        let wanted = need == Need::UnknownKey || fetched_at.elapsed() >= self.ttl;
        wanted && since_attempt.is_none_or(|e| e >= self.min_refresh)
    }

    /// Fetches the set (discovering its URL first if it is not configured or not known yet).
    async fn fetch(&self, discovered: Option<String>) -> Result<(Vec<VerifyingKey>, Option<String>), String> {
        let url = match (&self.jwks_url, discovered) {
            (Some(configured), _) => configured.clone(),
            (None, Some(known)) => known,
            (None, None) => self.discover().await?,
        };
        let raw: RawSet = self.get_json(&url).await?;
        let keys: Vec<VerifyingKey> = raw.keys.into_iter().filter_map(parse_key).take(MAX_KEYS).collect();
        if keys.is_empty() {
            return Err(format!("{url} holds no usable signing key"));
        }
        Ok((keys, self.jwks_url.is_none().then_some(url)))
    }

    async fn discover(&self) -> Result<String, String> {
        let url = format!("{}/.well-known/openid-configuration", self.issuer.trim_end_matches('/'));
        let doc: Discovery = self.get_json(&url).await?;
        // OpenID Connect Discovery §4.3: the document must name exactly the issuer we asked about.
        if doc.issuer != self.issuer {
            return Err(format!("{url} names issuer {:?}, not {:?}", doc.issuer, self.issuer));
        }
        let scheme_ok = url::Url::parse(&doc.jwks_uri).is_ok_and(|u| matches!(u.scheme(), "https" | "http"));
        if !scheme_ok {
            return Err(format!("{url} has an unusable jwks_uri"));
        }
        Ok(doc.jwks_uri)
    }

    /// GET a JSON document, reading at most `MAX_DOCUMENT_BYTES`.
    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let mut response = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("GET {url}: status {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| format!("GET {url}: {e}"))? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(format!("GET {url}: larger than {MAX_DOCUMENT_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| format!("GET {url}: not the expected JSON: {e}"))
    }
}

/// A JWK we can verify with, or `None` (symmetric, encryption-only, unsupported or malformed keys are skipped).
fn parse_key(value: serde_json::Value) -> Option<VerifyingKey> {
    let jwk: Jwk = serde_json::from_value(value).ok()?;
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let kty = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Kty::Rsa,
        AlgorithmParameters::EllipticCurve(_) => Kty::Ec,
        AlgorithmParameters::OctetKeyPair(_) => Kty::Okp,
        // A shared secret published in a key set would let anyone sign: never.
        _ => return None,
    };
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(named) => {
            let text = serde_json::to_value(named).ok()?;
            Some(Algorithm::from_str(text.as_str()?).ok()?)
        }
    };
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    Some(VerifyingKey {
        kid: jwk.common.key_id,
        alg,
        kty,
        key,
    })
}
