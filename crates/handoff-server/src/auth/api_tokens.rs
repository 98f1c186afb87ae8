//! API tokens for scripts and CI: named, expiring, scoped, revocable bearer secrets.
//!
//! A token is `hnd_` followed by 256 random bits (base64url), shown once at creation. Only its SHA-256 is stored:
//! the secret has full entropy, so a fast hash is enough (a slow password hash would only cost every request),
//! and lookup by hash means no secret comparison happens in our code at all. Each request with a token looks it
//! up, so revocation and expiry take effect at once, and its account must still be enabled.
//!
//! Scopes are enforced for every route, centrally, by [`permits`] (called from the `AuthUser` extractor): a
//! restricted token may do only what its scope lists, and anything not listed is refused (default deny).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::IntoResponse;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use handoff_core::{ApiTokenRecord, ApiTokenScope, NewApiToken, User};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::AuthUser;
use crate::error::{ApiError, ApiJson, ApiResult, Problem};
use crate::state::AppState;

/// Every API token starts with this, so secret scanners and people can recognise one.
pub const PREFIX: &str = "hnd_";
const SECRET_BYTES: usize = 32;
const MAX_NAME_CHARS: usize = 100;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_token, list_tokens))
        .routes(routes!(delete_token))
}

/// Whether a token with `scope` may make this request. Default deny: a restricted scope allows only what is
/// listed here, so a route added later is closed to it until someone decides otherwise.
pub fn permits(scope: ApiTokenScope, method: &Method, path: &str) -> bool {
    match scope {
        ApiTokenScope::Full => true,
        ApiTokenScope::ReadOnly => method == Method::GET || method == Method::HEAD,
        ApiTokenScope::UploadOnly => {
            let uploads = path == "/uploads" || path.starts_with("/uploads/");
            let sessions = path == "/upload-sessions" || path.starts_with("/upload-sessions/");
            (method == Method::POST && path == "/files")
                || (uploads && (method == Method::POST || method == Method::PATCH || method == Method::HEAD))
                || (sessions && (method == Method::POST || method == Method::GET))
        }
    }
}

fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn invalid() -> ApiError {
    ApiError::unauthorized("invalid_token", super::tokens::TokenError::Invalid.to_string(), true)
}

/// The account and scope of a presented API token (anything starting with [`PREFIX`]).
pub async fn authenticate(state: &AppState, token: &str) -> ApiResult<(User, ApiTokenScope)> {
    let well_formed = token
        .strip_prefix(PREFIX)
        .is_some_and(|rest| URL_SAFE_NO_PAD.decode(rest).is_ok_and(|b| b.len() == SECRET_BYTES));
    if !well_formed {
        return Err(invalid());
    }
    let found = state.meta.api_token_by_hash(&hash(token), handoff_core::now()).await?;
    let (record, user) = found.ok_or_else(invalid)?;
    Ok((user, record.scope))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// What the token is for, shown in listings (1–100 characters).
    #[schema(example = "nightly backup job")]
    name: String,
    /// `full`, `read_only` (GET/HEAD only) or `upload_only` (create files and uploads, nothing else).
    #[schema(value_type = String, example = "upload_only")]
    scope: ApiTokenScope,
    /// Lifetime in days (default 90, at most `auth.api_tokens.max_ttl_days`). Give this or `expires_at`.
    #[schema(example = 30)]
    expires_in_days: Option<u32>,
    /// Expiry as an RFC 3339 time.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<OffsetDateTime>,
}

/// A token as its owner sees it: never its secret, except once in the creation response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiTokenView {
    id: Uuid,
    name: String,
    #[schema(value_type = String, example = "read_only")]
    scope: ApiTokenScope,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    expires_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    last_used_at: Option<OffsetDateTime>,
    expired: bool,
}

impl From<&ApiTokenRecord> for ApiTokenView {
    fn from(t: &ApiTokenRecord) -> Self {
        Self {
            id: t.id,
            name: t.name.clone(),
            scope: t.scope,
            created_at: t.created_at,
            expires_at: t.expires_at,
            last_used_at: t.last_used_at,
            expired: t.expires_at <= handoff_core::now(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    view: ApiTokenView,
    /// The secret, shown only now: send it as `Authorization: Bearer <token>`.
    #[schema(example = "hnd_3q2-7wEXAMPLEexampleEXAMPLEexampleEXAMPLE00")]
    token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenList {
    tokens: Vec<ApiTokenView>,
}

fn expiry(state: &AppState, req: &CreateTokenRequest, now: OffsetDateTime) -> ApiResult<OffsetDateTime> {
    let limits = &state.config.auth.api_tokens;
    let latest = now + time::Duration::days(i64::from(limits.max_ttl_days));
    let too_long = || {
        ApiError::bad_request(
            "invalid_expiry",
            format!("a token lives at most {} days", limits.max_ttl_days),
        )
    };
    match (req.expires_in_days, req.expires_at) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "invalid_expiry",
            "give expires_in_days or expires_at, not both",
        )),
        (Some(0), None) => Err(ApiError::bad_request(
            "invalid_expiry",
            "expires_in_days must be at least 1",
        )),
        (Some(days), None) if days > limits.max_ttl_days => Err(too_long()),
        (Some(days), None) => Ok(now + time::Duration::days(i64::from(days))),
        (None, Some(at)) if at <= now => Err(ApiError::bad_request("invalid_expiry", "expires_at is in the past")),
        (None, Some(at)) if at > latest => Err(too_long()),
        (None, Some(at)) => Ok(at),
        (None, None) => Ok(now + time::Duration::days(i64::from(limits.default_ttl_days.min(limits.max_ttl_days)))),
    }
}

/// Create an API token. The secret is in this response only.
#[utoipa::path(post, path = "/auth/tokens", tag = "auth", security(("bearer" = [])), request_body = CreateTokenRequest,
    responses(
        (status = 201, description = "Token created; `token` is the secret, shown only once", body = CreatedToken),
        (status = 400, description = "Invalid name, scope or expiry", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Called with a restricted API token", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The account holds the maximum number of tokens", body = Problem, content_type = "application/problem+json"),
    ))]
async fn create_token(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiJson(req): ApiJson<CreateTokenRequest>,
) -> ApiResult<impl IntoResponse> {
    let name = req.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_token_name",
            format!("name must be 1 to {MAX_NAME_CHARS} characters, without control characters"),
        ));
    }
    let now = handoff_core::now();
    let expires_at = expiry(&state, &req, now)?;
    let secret = format!(
        "{PREFIX}{}",
        URL_SAFE_NO_PAD.encode(handoff_core::ids::os_random::<SECRET_BYTES>())
    );
    let record = ApiTokenRecord {
        id: Uuid::now_v7(),
        user: user.id,
        name,
        scope: req.scope,
        created_at: now,
        expires_at,
        last_used_at: None,
    };
    let max = state.config.auth.api_tokens.max_per_user;
    let stored = state
        .meta
        .insert_api_token(
            &NewApiToken {
                record: record.clone(),
                hash: hash(&secret),
            },
            max,
        )
        .await?;
    if !stored {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "api_token_limit",
            format!("an account holds at most {max} API tokens: revoke one first"),
        ));
    }
    tracing::info!(user = %user.id, token = %record.id, scope = record.scope.as_str(), "API token created");
    Ok((
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(CreatedToken {
            view: ApiTokenView::from(&record),
            token: secret,
        }),
    ))
}

/// List your API tokens (never their secrets).
#[utoipa::path(get, path = "/auth/tokens", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 200, description = "Your tokens, oldest first", body = TokenList),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_tokens(State(state): State<AppState>, AuthUser(user): AuthUser) -> ApiResult<Json<TokenList>> {
    let tokens = state.meta.api_tokens(user.id).await?;
    Ok(Json(TokenList {
        tokens: tokens.iter().map(ApiTokenView::from).collect(),
    }))
}

/// Revoke one of your API tokens, effective immediately.
#[utoipa::path(delete, path = "/auth/tokens/{id}", tag = "auth", security(("bearer" = [])),
    params(("id" = String, Path, description = "The token's id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "You have no token with this id", body = Problem, content_type = "application/problem+json"),
    ))]
async fn delete_token(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "api_token_not_found",
            "you have no API token with this id",
        )
    };
    let id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    if state.meta.delete_api_token(user.id, id).await? {
        tracing::info!(user = %user.id, token = %id, "API token revoked");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restricted_scopes_allow_only_what_they_list() {
        use ApiTokenScope::*;
        let cases = [
            (ReadOnly, Method::GET, "/files", true),
            (ReadOnly, Method::HEAD, "/files/x/content", true),
            (ReadOnly, Method::POST, "/files", false),
            (ReadOnly, Method::DELETE, "/files/x", false),
            (ReadOnly, Method::POST, "/auth/tokens", false),
            (UploadOnly, Method::POST, "/files", true),
            (UploadOnly, Method::POST, "/uploads", true),
            (UploadOnly, Method::PATCH, "/uploads/abc", true),
            (UploadOnly, Method::POST, "/upload-sessions", true),
            (UploadOnly, Method::POST, "/upload-sessions/abc/complete", true),
            (UploadOnly, Method::GET, "/upload-sessions/abc", true),
            (UploadOnly, Method::DELETE, "/upload-sessions/abc", false),
            (UploadOnly, Method::GET, "/files", false),
            (UploadOnly, Method::GET, "/files/x/content", false),
            (UploadOnly, Method::POST, "/files/x", false),
            (UploadOnly, Method::POST, "/auth/tokens", false),
            (UploadOnly, Method::POST, "/uploadsx", false),
            (UploadOnly, Method::DELETE, "/uploads/abc", false),
            (Full, Method::DELETE, "/files/x", true),
            (Full, Method::POST, "/auth/tokens", true),
        ];
        for (scope, method, path, allowed) in cases {
            assert_eq!(permits(scope, &method, path), allowed, "{scope:?} {method} {path}");
        }
    }
}
