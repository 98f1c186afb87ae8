//! The `AuthUser` extractor: a handler that takes one only runs for a valid, current, enabled account, and only
//! if the credential's scope allows the request (API tokens may be restricted; see `api_tokens::permits`).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use handoff_core::{ApiTokenScope, User};

use super::api_tokens;
use super::tokens::TokenError;
use crate::error::ApiError;
use crate::state::AppState;

/// Longer bearer values are refused before any parsing: ours are a few hundred bytes.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

#[derive(Debug, Clone)]
pub struct AuthUser(pub User);

/// The token of an `Authorization: Bearer <token>` header. `Ok(None)` when there is no such header.
fn bearer(parts: &Parts) -> Result<Option<&str>, ApiError> {
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || {
        ApiError::unauthorized(
            "invalid_token",
            "the Authorization header must be `Bearer <token>`",
            true,
        )
    };
    let value = value.to_str().map_err(|_| malformed())?;
    let (scheme, token) = value.split_once(' ').ok_or_else(malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return Err(malformed());
    }
    Ok(Some(token))
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    /// Three kinds of bearer token, told apart without trusting them: API tokens by their prefix, external
    /// providers' tokens by their `iss` (exactly one configured provider verifies each), and everything else by
    /// our own token service, which accepts only our issuer.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?.ok_or_else(|| {
            ApiError::unauthorized(
                "missing_token",
                "this endpoint needs `Authorization: Bearer <token>`",
                false,
            )
        })?;
        let invalid = || ApiError::unauthorized("invalid_token", TokenError::Invalid.to_string(), true);
        let (user, scope) = if token.starts_with(api_tokens::PREFIX) {
            let (user, scope) = api_tokens::authenticate(state, token).await?;
            (Some(user), scope)
        } else if let Some(provider) = state.oidc.route(token) {
            (
                Some(provider.authenticate(state.meta.as_ref(), token).await?),
                ApiTokenScope::Full,
            )
        } else {
            let user_id = state.tokens.verify(token).await.map_err(|e| match e {
                TokenError::Invalid => invalid(),
                TokenError::Store(e) => e.into(),
            })?;
            // Looked up on every request so that a disabled or deleted account stops working at once.
            (state.meta.user_by_id(user_id).await?, ApiTokenScope::Full)
        };
        let user = match user {
            Some(user) if !user.disabled => user,
            _ => return Err(invalid()),
        };
        if !state.config.auth.builtin_accounts && !user.username.is_external() {
            return Err(ApiError::unauthorized(
                "builtin_accounts_disabled",
                "built-in accounts are turned off on this server: sign in with its identity provider",
                true,
            ));
        }
        if !api_tokens::permits(scope, &parts.method, parts.uri.path()) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                format!(
                    "this API token's scope ({}) does not allow this request",
                    scope.as_str()
                ),
            )
            .with_header(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="handoff", error="insufficient_scope""#),
            ));
        }
        Ok(Self(user))
    }
}
