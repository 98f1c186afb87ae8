//! The `AuthUser` extractor: a handler that takes one only runs for a valid, current, enabled account.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use handoff_core::User;

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

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?.ok_or_else(|| {
            ApiError::unauthorized(
                "missing_token",
                "this endpoint needs `Authorization: Bearer <token>`",
                false,
            )
        })?;
        let invalid = || ApiError::unauthorized("invalid_token", TokenError::Invalid.to_string(), true);
        let user_id = state.tokens.verify(token).await.map_err(|e| match e {
            TokenError::Invalid => invalid(),
            TokenError::Store(e) => e.into(),
        })?;
        // Looked up on every request so that a disabled or deleted account stops working at once.
        let user = state.meta.user_by_id(user_id).await?;
        match user {
            Some(user) if !user.disabled => Ok(Self(user)),
            _ => Err(invalid()),
        }
    }
}
