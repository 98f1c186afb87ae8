//! URLs the server signs itself, for blob stores that cannot (the local directory, memory): the same protocol as
//! S3's presigned URLs, served by this server at `/direct/…`.
//!
//! A URL is `PATH?<params>&exp=<unix seconds>&kid=<key id>&sig=<HMAC>`, where the HMAC-SHA256 covers the method,
//! the path and every byte of the query before `&sig=`; so every parameter a handler reads from the signed part
//! was written by this server. The key is derived from the metadata store's signing key named by `kid`
//! ([`crate::auth::tokens::TokenService::url_key`]), so every node sharing the store verifies every node's URLs,
//! and a key rotation keeps the URLs already handed out valid until they expire. Verification compares in
//! constant time (`Mac::verify_slice`); an expired or tampered URL is `403` problem+json. Signed URLs are bearer
//! credentials for minutes: request spans never carry them (they log the route template only).

use std::time::Duration;

use axum::http::{Method, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit as _, Mac as _};
use time::OffsetDateTime;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// A URL handed to a client, with the moment it stops working.
#[derive(Debug, Clone)]
pub struct SignedUrl {
    pub url: String,
    pub expires_at: OffsetDateTime,
}

fn mac(key: &[u8; 32], method: &Method, path: &str, query: &str) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(method.as_str().as_bytes());
    mac.update(b"\n");
    mac.update(path.as_bytes());
    mac.update(b"\n");
    mac.update(query.as_bytes());
    mac
}

fn key_error(e: crate::auth::tokens::TokenError) -> ApiError {
    match e {
        crate::auth::tokens::TokenError::Store(e) => e.into(),
        crate::auth::tokens::TokenError::Invalid => ApiError::internal("no URL signing key"),
    }
}

/// Signs `method path?params` for `ttl`. `path` must be the path the router sees.
pub async fn sign(
    state: &AppState,
    method: &Method,
    path: &str,
    params: &[(&str, &str)],
    ttl: Duration,
) -> ApiResult<SignedUrl> {
    let expires_at = handoff_core::now() + ttl;
    let (kid, key) = state.tokens.url_signing_key().await.map_err(key_error)?;
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in params {
        query.append_pair(name, value);
    }
    query.append_pair("exp", &expires_at.unix_timestamp().to_string());
    query.append_pair("kid", &kid);
    let query = query.finish();
    let sig = URL_SAFE_NO_PAD.encode(mac(&key, method, path, &query).finalize().into_bytes());
    let base = state
        .config
        .direct
        .public_url
        .as_deref()
        .unwrap_or("")
        .trim_end_matches('/');
    Ok(SignedUrl {
        url: format!("{base}{path}?{query}&sig={sig}"),
        expires_at,
    })
}

fn refused(code: &'static str, detail: &'static str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, code, detail)
}

/// Checks a signed URL (HEAD is checked as the GET it stands for) and returns its signed parameters.
pub async fn verify(
    state: &AppState,
    method: &Method,
    path: &str,
    query: Option<&str>,
) -> ApiResult<Vec<(String, String)>> {
    let tampered = || refused("invalid_signature", "this URL's signature is not valid");
    let (signed, sig) = query.and_then(|q| q.rsplit_once("&sig=")).ok_or_else(tampered)?;
    let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| tampered())?;
    let params: Vec<(String, String)> = url::form_urlencoded::parse(signed.as_bytes()).into_owned().collect();
    let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let kid = param("kid").ok_or_else(tampered)?;
    let exp: i64 = param("exp").and_then(|v| v.parse().ok()).ok_or_else(tampered)?;
    let key = state
        .tokens
        .url_key(kid)
        .await
        .map_err(key_error)?
        .ok_or_else(tampered)?;
    let method = if method == Method::HEAD { &Method::GET } else { method };
    mac(&key, method, path, signed)
        .verify_slice(&sig)
        .map_err(|_| tampered())?;
    // Only a URL we signed gets this far, so its expiry is ours.
    if exp <= handoff_core::now().unix_timestamp() {
        return Err(refused(
            "url_expired",
            "this URL has expired; ask the API for a new one",
        ));
    }
    Ok(params)
}
