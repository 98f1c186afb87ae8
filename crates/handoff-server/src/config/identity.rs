//! Configuration of external identity providers (OpenID Connect: Amazon Cognito, Keycloak, Entra ID, Google,
//! Okta, Authentik, ...) and of API tokens: part of `[auth]`.

use serde::{Deserialize, Serialize};

/// Which kind of token from a provider is accepted as a bearer token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenUse {
    /// OAuth access tokens (Cognito: `token_use: "access"`, `client_id`, no `aud`).
    Access,
    /// OpenID Connect ID tokens (`aud` is the client id; Cognito adds `token_use: "id"`).
    Id,
}

impl TokenUse {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Access => "access",
            Self::Id => "id",
        }
    }
}

/// One trusted OpenID Connect issuer (`[[auth.oidc]]` in the TOML file).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcProviderConfig {
    /// Short label (1–16 of a–z, 0–9, `-`): the namespace of this provider's usernames (`cognito:alice`).
    pub name: String,
    /// The exact `iss` of its tokens, e.g. `https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbCdEf123`.
    pub issuer: String,
    /// Where its signing keys are. Default: `jwks_uri` of `{issuer}/.well-known/openid-configuration`. Set it when
    /// the issuer is not reachable at its own address (an emulator, a private network).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Accepted `aud` values, or for access tokens also `client_id` values (Cognito app client ids).
    pub audiences: Vec<String>,
    /// Which tokens are accepted. A token that carries a `token_use` claim must match it.
    #[serde(default = "default_token_use")]
    pub token_use: TokenUse,
    /// Signature algorithms accepted (asymmetric only: RS*, PS*, ES256, ES384, EdDSA).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Create an account on a user's first request (just-in-time provisioning). When false, only identities
    /// already linked are accepted.
    #[serde(default = "default_true")]
    pub provision: bool,
    /// Claim that names the user; falls back to `sub`. Cognito: `username` (access) or `cognito:username` (ID).
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    #[serde(default = "default_email_claim")]
    pub email_claim: String,
    /// Claim holding the user's groups (a list of strings). Cognito: `cognito:groups`.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Members of this group are administrators, others are not (checked on every sign-in). Unset: the provider
    /// does not manage the admin flag.
    #[serde(default)]
    pub admin_group: Option<String>,
    /// Signing keys are re-fetched after this long even if nothing asks for it.
    #[serde(default = "default_jwks_ttl")]
    pub jwks_ttl_secs: u64,
    /// A token signed with an unknown key triggers a re-fetch at most this often, so forged `kid`s cannot flood
    /// the provider.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_min_refresh_secs: u64,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
}

/// API tokens for scripts and CI (`[auth.api_tokens]`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiTokensConfig {
    /// Tokens one account may hold (expired ones count until deleted).
    pub max_per_user: u32,
    /// Lifetime of a token whose request names none.
    pub default_ttl_days: u32,
    /// Longest lifetime a token may be given.
    pub max_ttl_days: u32,
}

impl Default for ApiTokensConfig {
    fn default() -> Self {
        Self {
            max_per_user: 50,
            default_ttl_days: 90,
            max_ttl_days: 366,
        }
    }
}

fn default_token_use() -> TokenUse {
    TokenUse::Access
}
fn default_algorithms() -> Vec<String> {
    vec!["RS256".into()]
}
fn default_true() -> bool {
    true
}
fn default_username_claim() -> String {
    "preferred_username".into()
}
fn default_email_claim() -> String {
    "email".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_jwks_ttl() -> u64 {
    3600
}
fn default_jwks_refresh() -> u64 {
    60
}
fn default_leeway() -> u64 {
    30
}

impl OidcProviderConfig {
    /// A provider with every optional setting at its default.
    pub fn new(name: &str, issuer: &str, audiences: &[&str]) -> Self {
        Self {
            name: name.into(),
            issuer: issuer.into(),
            jwks_url: None,
            audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
            token_use: default_token_use(),
            algorithms: default_algorithms(),
            provision: true,
            username_claim: default_username_claim(),
            email_claim: default_email_claim(),
            groups_claim: default_groups_claim(),
            admin_group: None,
            jwks_ttl_secs: default_jwks_ttl(),
            jwks_min_refresh_secs: default_jwks_refresh(),
            leeway_secs: default_leeway(),
        }
    }
}
