//! Tokens of external OpenID Connect providers (Amazon Cognito, Keycloak, Entra ID, Google, Okta, Authentik, ...).
//!
//! A bearer token is routed by its (unverified) `iss` claim to exactly one configured provider; a token whose
//! `iss` names none of them goes to our own [`super::tokens::TokenService`], which refuses any issuer but ours.
//! The provider then verifies everything itself: signature with a key of its JWKS ([`super::jwks`]), algorithm
//! from its allow-list (asymmetric only), `exp`/`nbf` (numbers only: a string-typed one is refused), exact `iss`,
//! audience (`aud`, or for access tokens Cognito's `client_id`), and `token_use` when the token carries one.
//!
//! The account is found by `(issuer, sub)`, never by e-mail, and created on first use when the provider allows
//! it, named `label:name` — a namespace local sign-ups cannot register, so external and local users never meet.

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use handoff_core::{MetadataStore, NewExternalUser, StoreError, User, Username};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::jwks::{Jwks, Need};
use crate::config::{OidcProviderConfig, TokenUse};
use crate::error::ApiError;

/// Numbered suffixes tried when a provider's preferred name is taken, before random ones.
const NUMBERED_SUFFIXES: u32 = 9;
const MAX_SUBJECT_BYTES: usize = 255;

/// Every configured provider.
#[derive(Debug, Default)]
pub struct OidcProviders {
    providers: Vec<Arc<OidcProvider>>,
}

/// Why a configuration of `[[auth.oidc]]` was refused at start-up.
#[derive(Debug, thiserror::Error)]
#[error("auth.oidc: {0}")]
pub struct OidcConfigError(String);

impl OidcProviders {
    /// Checks the configuration (distinct labels and issuers, none equal to ours, usable URLs, audiences and
    /// algorithms) and prepares one verifier per provider. Does no I/O: keys are fetched on first use.
    pub fn new(configs: &[OidcProviderConfig], own_issuer: &str) -> Result<Self, OidcConfigError> {
        let err = |m: String| OidcConfigError(m);
        let http = if configs.is_empty() {
            None
        } else {
            Some(super::jwks::http_client().map_err(|e| err(format!("HTTP client: {e}")))?)
        };
        let mut providers: Vec<Arc<OidcProvider>> = Vec::new();
        for config in configs {
            let name = &config.name;
            if !Username::is_valid_label(name) {
                return Err(err(format!(
                    "name {name:?} must be 1-16 characters of a-z, 0-9 and '-', starting with a letter or digit"
                )));
            }
            if providers.iter().any(|p| p.config.name == *name) {
                return Err(err(format!("two providers are named {name:?}")));
            }
            if providers.iter().any(|p| p.config.issuer == config.issuer) || config.issuer == own_issuer {
                return Err(err(format!("issuer {:?} is configured twice", config.issuer)));
            }
            for url in std::iter::once(&config.issuer).chain(config.jwks_url.as_ref()) {
                let ok = url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "https" | "http"));
                if !ok {
                    return Err(err(format!("{name}: {url:?} is not an http(s) URL")));
                }
            }
            if config.audiences.is_empty() || config.audiences.iter().any(String::is_empty) {
                return Err(err(format!(
                    "{name}: audiences must list the accepted aud / client_id values"
                )));
            }
            let mut algorithms = Vec::new();
            for alg in &config.algorithms {
                let parsed = Algorithm::from_str(alg)
                    .ok()
                    .filter(|a| !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
                    .ok_or_else(|| {
                        err(format!(
                            "{name}: algorithm {alg:?} is not an asymmetric JWS algorithm we support"
                        ))
                    })?;
                algorithms.push(parsed);
            }
            let Some(first) = algorithms.first().copied() else {
                return Err(err(format!("{name}: algorithms must not be empty")));
            };
            let mut validation = Validation::new(first);
            validation.algorithms = algorithms.clone();
            validation.set_issuer(&[&config.issuer]);
            validation.set_required_spec_claims(&["exp", "iss", "sub"]);
            validation.validate_exp = true;
            validation.validate_nbf = true;
            // Checked by `audience_ok`, which also knows Cognito's `client_id`.
            validation.validate_aud = false;
            validation.leeway = config.leeway_secs;
            let jwks = Jwks::new(
                http.clone().ok_or_else(|| err("no HTTP client".into()))?,
                &config.issuer,
                config.jwks_url.as_deref(),
                Duration::from_secs(config.jwks_ttl_secs),
                Duration::from_secs(config.jwks_min_refresh_secs),
            );
            providers.push(Arc::new(OidcProvider {
                config: config.clone(),
                algorithms,
                validation,
                jwks,
            }));
        }
        Ok(Self { providers })
    }

    /// The provider whose issuer is the token's `iss`, read without verification (only to choose who
    /// verifies). `None` for anything else, including tokens that are not JWTs at all.
    pub fn route(&self, token: &str) -> Option<&OidcProvider> {
        if self.providers.is_empty() {
            return None;
        }
        let iss = unverified_issuer(token)?;
        self.providers
            .iter()
            .find(|p| p.config.issuer == iss)
            .map(AsRef::as_ref)
    }
}

fn unverified_issuer(token: &str) -> Option<String> {
    let mut parts = token.split('.');
    let (_, payload) = (parts.next()?, parts.next()?);
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    claims.get("iss")?.as_str().map(str::to_owned)
}

/// One trusted issuer.
pub struct OidcProvider {
    config: OidcProviderConfig,
    algorithms: Vec<Algorithm>,
    validation: Validation,
    jwks: Jwks,
}

impl std::fmt::Debug for OidcProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcProvider")
            .field("name", &self.config.name)
            .field("issuer", &self.config.issuer)
            .finish_non_exhaustive()
    }
}

/// What a verified token says about its user.
#[derive(Debug, Clone)]
pub struct ExternalClaims {
    pub subject: String,
    pub preferred_name: String,
    pub email: Option<String>,
    /// `Some` when the provider manages the admin flag (`admin_group` is configured).
    pub is_admin: Option<bool>,
}

/// Why a token was refused: `Invalid` is a 401 for the client; the reason is only logged.
#[derive(Debug)]
pub enum Rejection {
    Invalid(&'static str),
    Unavailable(String),
}

fn invalid_token() -> ApiError {
    ApiError::unauthorized("invalid_token", super::tokens::TokenError::Invalid.to_string(), true)
}

impl OidcProvider {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Verifies the token completely and extracts the mapped claims.
    pub async fn verify(&self, token: &str) -> Result<ExternalClaims, Rejection> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejection::Invalid("malformed header"))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(Rejection::Invalid("algorithm not allowed"));
        }
        // `header.jku`, `header.x5u` and `header.jwk` are deliberately never read.
        let unavailable = |e: super::jwks::JwksUnavailable| Rejection::Unavailable(e.to_string());
        let (keys, generation) = self.jwks.keys(Need::Current).await.map_err(unavailable)?;
        if let Some(claims) = self.try_keys(&keys, &header, token)? {
            return Ok(claims);
        }
        // No key of ours fits or verifies: perhaps the provider rotated its keys. Look again (rate-limited inside
        // `keys`), and try once more only if that brought a new set.
        let (keys, refreshed) = self.jwks.keys(Need::UnknownKey).await.map_err(unavailable)?;
        if refreshed != generation
            && let Some(claims) = self.try_keys(&keys, &header, token)?
        {
            return Ok(claims);
        }
        Err(Rejection::Invalid("no known key verifies the signature"))
    }

    /// `Ok(None)` when no key fits the token or every fitting key fails the signature; `Err` when a key
    /// verified the signature but the claims are refused.
    fn try_keys(
        &self,
        keys: &[super::jwks::VerifyingKey],
        header: &jsonwebtoken::Header,
        token: &str,
    ) -> Result<Option<ExternalClaims>, Rejection> {
        let fitting = keys
            .iter()
            .filter(|k| k.fits(header.alg))
            .filter(|k| header.kid.is_none() || k.kid == header.kid);
        for key in fitting {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &self.validation) {
                Ok(data) => return self.check_claims(data.claims).map(Some),
                // Without a `kid` we try each fitting key; a wrong one fails here.
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => {}
                Err(e) => {
                    tracing::debug!(provider = %self.config.name, error = ?e.kind(), "external token refused");
                    return Err(Rejection::Invalid("claims or signature refused"));
                }
            }
        }
        Ok(None)
    }

    fn check_claims(&self, claims: Map<String, Value>) -> Result<ExternalClaims, Rejection> {
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= MAX_SUBJECT_BYTES)
            .ok_or(Rejection::Invalid("sub missing or unusable"))?;
        match claims.get("token_use") {
            None => {}
            Some(Value::String(used)) if used == self.config.token_use.as_str() => {}
            Some(_) => return Err(Rejection::Invalid("wrong token_use")),
        }
        if !self.audience_ok(&claims) {
            return Err(Rejection::Invalid("wrong audience or client id"));
        }
        let preferred_name = claims
            .get(&self.config.username_claim)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or(subject)
            .to_owned();
        let email = claims
            .get(&self.config.email_claim)
            .and_then(Value::as_str)
            .filter(|e| plausible_email(e))
            .map(str::to_owned);
        let is_admin = self
            .config
            .admin_group
            .as_ref()
            .map(|admin| match claims.get(&self.config.groups_claim) {
                Some(Value::Array(groups)) => groups.iter().any(|g| g.as_str() == Some(admin.as_str())),
                Some(Value::String(group)) => group == admin,
                _ => false,
            });
        Ok(ExternalClaims {
            subject: subject.to_owned(),
            preferred_name,
            email,
            is_admin,
        })
    }

    /// `aud` (a string or a list) must name an accepted audience; an access token may instead carry an accepted
    /// `client_id` (Cognito's access tokens have no `aud`).
    fn audience_ok(&self, claims: &Map<String, Value>) -> bool {
        let accepted = |v: &Value| v.as_str().is_some_and(|s| self.config.audiences.iter().any(|a| a == s));
        let by_aud = match claims.get("aud") {
            Some(Value::Array(values)) => values.iter().any(accepted),
            Some(value) => accepted(value),
            None => false,
        };
        let by_client_id = self.config.token_use == TokenUse::Access && claims.get("client_id").is_some_and(accepted);
        by_aud || by_client_id
    }

    /// The account a verified token speaks for, created on first use when provisioning is on. Its e-mail (and its
    /// admin flag, when the provider manages it) follow the provider's claims.
    pub async fn authenticate(&self, meta: &dyn MetadataStore, token: &str) -> Result<User, ApiError> {
        let claims = self.verify(token).await.map_err(|rejection| match rejection {
            Rejection::Invalid(reason) => {
                tracing::info!(provider = %self.config.name, reason, "external token refused");
                invalid_token()
            }
            Rejection::Unavailable(cause) => {
                tracing::warn!(provider = %self.config.name, %cause, "identity provider unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "identity_provider_unavailable",
                    "the identity provider's signing keys cannot be fetched right now; try again shortly",
                )
                .with_header(header::RETRY_AFTER, HeaderValue::from_static("30"))
            }
        })?;
        let issuer = &self.config.issuer;
        for _ in 0..3 {
            if let Some(mut user) = meta.user_by_identity(issuer, &claims.subject).await? {
                let admin_changed = claims.is_admin.is_some_and(|a| a != user.is_admin);
                if user.email != claims.email || admin_changed {
                    meta.update_external_profile(user.id, claims.email.as_deref(), claims.is_admin)
                        .await?;
                    user.email.clone_from(&claims.email);
                    user.is_admin = claims.is_admin.unwrap_or(user.is_admin);
                }
                return Ok(user);
            }
            if !self.config.provision {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "account_not_provisioned",
                    "this identity has no account here, and accounts are not created automatically",
                ));
            }
            let new = NewExternalUser {
                issuer: issuer.clone(),
                subject: claims.subject.clone(),
                usernames: self.candidate_names(&claims.preferred_name),
                email: claims.email.clone(),
                is_admin: claims.is_admin.unwrap_or(false),
            };
            match meta.create_external_user(&new).await {
                Ok(user) => {
                    tracing::info!(user = %user.id, provider = %self.config.name, "external account provisioned");
                    return Ok(user);
                }
                // Another request (or node) provisioned this identity or took the name first: look again.
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::new(
            StatusCode::CONFLICT,
            "provisioning_conflict",
            "the account for this identity could not be created; try again",
        ))
    }

    /// `label:name`, then `label:name-2` … `label:name-9`, then two random suffixes.
    fn candidate_names(&self, preferred: &str) -> Vec<Username> {
        let label = &self.config.name;
        let numbered = (2..=NUMBERED_SUFFIXES + 1).map(|n| format!("-{n}"));
        let random = (0..2).map(|_| format!("-{}", hex::encode(handoff_core::ids::os_random::<4>())));
        std::iter::once(None)
            .chain(numbered.chain(random).map(Some))
            .filter_map(|suffix| Username::external(label, preferred, suffix.as_deref()))
            .collect()
    }
}

fn plausible_email(email: &str) -> bool {
    email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.') && !domain.contains('@'))
}
