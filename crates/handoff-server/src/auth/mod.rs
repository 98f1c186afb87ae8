//! Built-in accounts: sign-up, sign-in, refresh-token rotation, sign-out, the current account, and the JWKS
//! document that lets anyone verify our access tokens. External providers' tokens (`oidc`, `jwks`) and API
//! tokens (`api_tokens`) are accepted by the same `AuthUser` extractor (`extract`).

pub mod api_tokens;
pub mod extract;
pub mod jwks;
pub mod oidc;
pub mod password;
pub mod tokens;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use handoff_core::model::NewRefreshToken;
use handoff_core::{NewUser, Password, RefreshOutcome, RefreshTokenSecret, StoreError, User, Username};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

pub use extract::AuthUser;

use crate::error::{ApiError, ApiJson, ApiResult, Problem};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(signup))
        .routes(routes!(signin))
        .routes(routes!(refresh))
        .routes(routes!(signout))
        .routes(routes!(me))
        .routes(routes!(jwks))
        .merge(api_tokens::routes())
}

/// Sign-up, sign-in and refresh answer this when `auth.builtin_accounts` is off.
fn builtin_accounts_enabled(state: &AppState) -> ApiResult<()> {
    if state.config.auth.builtin_accounts {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "builtin_accounts_disabled",
            "built-in accounts are turned off on this server: sign in with its identity provider",
        ))
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupRequest {
    /// 3–32 characters: a–z, 0–9, `.`, `_`, `-`, starting with a letter or digit. Case-insensitive.
    #[schema(example = "alice")]
    username: String,
    /// At least 8 characters, at most 1024 bytes.
    #[schema(example = "correct horse battery staple")]
    password: String,
    #[schema(example = "alice@example.com")]
    email: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SigninRequest {
    #[schema(example = "alice")]
    username: String,
    #[schema(example = "correct horse battery staple")]
    password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    refresh_token: String,
}

/// An account as its owner sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    id: Uuid,
    username: String,
    email: Option<String>,
    is_admin: bool,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    created_at: OffsetDateTime,
}

impl From<&User> for UserView {
    fn from(user: &User) -> Self {
        Self {
            id: user.id.0,
            username: user.username.to_string(),
            email: user.email.clone(),
            is_admin: user.is_admin,
            created_at: user.created_at,
        }
    }
}

/// Storage used by an account and its limits (`null`: unlimited).
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageView {
    bytes: u64,
    files: u64,
    quota_bytes: Option<u64>,
    quota_files: Option<u64>,
}

impl From<handoff_core::Usage> for UsageView {
    fn from(u: handoff_core::Usage) -> Self {
        Self {
            bytes: u.bytes,
            files: u.files,
            quota_bytes: u.quota.bytes,
            quota_files: u.quota.files,
        }
    }
}

/// The signed-in account with its storage usage.
#[derive(Debug, Serialize, ToSchema)]
pub struct MeView {
    #[serde(flatten)]
    user: UserView,
    usage: UsageView,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    /// A JWT (EdDSA) to send as `Authorization: Bearer <access_token>`.
    access_token: String,
    #[schema(example = "Bearer")]
    token_type: &'static str,
    /// Seconds until the access token expires.
    #[schema(example = 900)]
    expires_in: u64,
    /// Single-use: `POST /auth/refresh` spends it and returns a new one.
    refresh_token: String,
    /// Seconds until the refresh token expires.
    refresh_expires_in: u64,
}

fn parse_email(raw: Option<String>) -> ApiResult<Option<String>> {
    let Some(email) = raw.map(|e| e.trim().to_owned()).filter(|e| !e.is_empty()) else {
        return Ok(None);
    };
    let plausible = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.') && !domain.contains('@'));
    if plausible {
        Ok(Some(email))
    } else {
        Err(ApiError::bad_request(
            "invalid_email",
            "email must look like name@example.com",
        ))
    }
}

fn token_hash(secret: &RefreshTokenSecret) -> [u8; 32] {
    Sha256::digest(secret.expose().as_bytes()).into()
}

fn invalid_credentials() -> ApiError {
    ApiError::unauthorized("invalid_credentials", "unknown username or wrong password", false)
}

/// Issues an access token with a refresh token: `rotated`, already stored by a rotation, or else the first token
/// of a new family.
async fn issue_tokens(state: &AppState, user: &User, rotated: Option<RefreshTokenSecret>) -> ApiResult<TokenResponse> {
    let access_token = state.tokens.issue(user).await.map_err(ApiError::internal)?;
    let refresh_ttl = state.config.auth.refresh_token_ttl_secs;
    let refresh = match rotated {
        Some(already_stored) => already_stored,
        None => {
            let secret = RefreshTokenSecret::generate();
            state
                .meta
                .insert_refresh_token(&NewRefreshToken {
                    hash: token_hash(&secret),
                    family: Uuid::now_v7(),
                    user: user.id,
                    expires_at: refresh_expiry(refresh_ttl),
                })
                .await?;
            secret
        }
    };
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: state.tokens.ttl().as_secs(),
        refresh_token: refresh.expose().to_owned(),
        refresh_expires_in: refresh_ttl,
    })
}

fn refresh_expiry(ttl_secs: u64) -> OffsetDateTime {
    handoff_core::now() + time::Duration::seconds(i64::try_from(ttl_secs).unwrap_or(i64::MAX / 2))
}

/// Create an account.
#[utoipa::path(post, path = "/auth/signup", tag = "auth", request_body = SignupRequest,
    responses(
        (status = 201, description = "Account created", body = UserView),
        (status = 400, description = "Invalid username, password or email", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Sign-up or built-in accounts are disabled", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Username taken", body = Problem, content_type = "application/problem+json"),
    ))]
async fn signup(State(state): State<AppState>, ApiJson(req): ApiJson<SignupRequest>) -> ApiResult<impl IntoResponse> {
    builtin_accounts_enabled(&state)?;
    if !state.config.auth.signup_enabled {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "signup_disabled",
            "sign-up is disabled on this server",
        ));
    }
    // Never a name of an external provider's namespace (`cognito:alice`).
    let username = Username::parse_local(&req.username)?;
    let password = Password::parse(&req.password)?;
    let email = parse_email(req.email)?;
    let password_hash = state.passwords.hash(&password).await?;
    let user = state
        .meta
        .create_user(NewUser {
            username,
            email,
            password_hash,
        })
        .await
        .map_err(|e| match e {
            StoreError::Conflict => ApiError::new(StatusCode::CONFLICT, "username_taken", "this username is taken"),
            other => other.into(),
        })?;
    tracing::info!(user = %user.id, "account created");
    let mut user = user;
    if !user.is_admin
        && state
            .config
            .auth
            .admins
            .iter()
            .any(|a| a.eq_ignore_ascii_case(user.username.as_str()))
    {
        user = state
            .meta
            .set_user_flags(user.id, None, Some(true))
            .await?
            .unwrap_or(user);
    }
    Ok((StatusCode::CREATED, Json(UserView::from(&user))))
}

/// Sign in with username and password.
#[utoipa::path(post, path = "/auth/signin", tag = "auth", request_body = SigninRequest,
    responses(
        (status = 200, description = "Signed in", body = TokenResponse),
        (status = 401, description = "Unknown username or wrong password", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Built-in accounts are disabled", body = Problem, content_type = "application/problem+json"),
    ))]
async fn signin(State(state): State<AppState>, ApiJson(req): ApiJson<SigninRequest>) -> ApiResult<Json<TokenResponse>> {
    builtin_accounts_enabled(&state)?;
    let user = match Username::parse(&req.username) {
        Ok(username) => state.meta.user_by_username(&username).await?,
        Err(_) => None,
    }
    .filter(|u| !u.disabled);
    let stored = user.as_ref().and_then(|u| u.password_hash.as_deref());
    if !state.passwords.verify(&req.password, stored).await? {
        return Err(invalid_credentials());
    }
    let user = user.ok_or_else(invalid_credentials)?;
    tracing::info!(user = %user.id, "signed in");
    state
        .audit
        .record(crate::audit::Event::new("auth.signin").by(&user).owner(user.id))
        .await;
    Ok(Json(issue_tokens(&state, &user, None).await?))
}

/// Exchange a refresh token for new tokens. The presented token is spent; presenting a spent token again revokes
/// every token descended from the same sign-in.
#[utoipa::path(post, path = "/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses(
        (status = 200, description = "New access and refresh tokens", body = TokenResponse),
        (status = 401, description = "Unknown, expired, revoked or reused refresh token", body = Problem, content_type = "application/problem+json"),
    ))]
async fn refresh(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> ApiResult<Json<TokenResponse>> {
    builtin_accounts_enabled(&state)?;
    let invalid = || {
        ApiError::unauthorized(
            "invalid_refresh_token",
            "the refresh token is unknown, expired or revoked",
            false,
        )
    };
    let presented = RefreshTokenSecret::parse(&req.refresh_token).ok_or_else(invalid)?;
    let successor = RefreshTokenSecret::generate();
    let outcome = state
        .meta
        .rotate_refresh_token(
            &token_hash(&presented),
            &token_hash(&successor),
            refresh_expiry(state.config.auth.refresh_token_ttl_secs),
            handoff_core::now(),
        )
        .await?;
    match outcome {
        RefreshOutcome::Rotated { user } => {
            let user = state
                .meta
                .user_by_id(user)
                .await?
                .filter(|u| !u.disabled)
                .ok_or_else(invalid)?;
            Ok(Json(issue_tokens(&state, &user, Some(successor)).await?))
        }
        RefreshOutcome::Reused => {
            tracing::warn!("refresh token reused: its family is revoked");
            Err(ApiError::unauthorized(
                "refresh_token_reused",
                "this refresh token was already used; every session descended from it is now signed out",
                false,
            ))
        }
        RefreshOutcome::Invalid => Err(invalid()),
    }
}

/// Sign out: revoke the refresh token and every token rotated from the same sign-in. Idempotent.
#[utoipa::path(post, path = "/auth/signout", tag = "auth", request_body = RefreshRequest,
    responses((status = 204, description = "Signed out (also when the token was unknown)")))]
async fn signout(State(state): State<AppState>, ApiJson(req): ApiJson<RefreshRequest>) -> ApiResult<StatusCode> {
    if let Some(presented) = RefreshTokenSecret::parse(&req.refresh_token) {
        state.meta.revoke_refresh_family(&token_hash(&presented)).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The signed-in account.
#[utoipa::path(get, path = "/auth/me", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 200, description = "The account", body = MeView),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
    ))]
async fn me(State(state): State<AppState>, AuthUser(user): AuthUser) -> ApiResult<Json<MeView>> {
    let account = handoff_core::Account::User(user.id);
    let usage = state
        .meta
        .usage(account, state.config.quotas.default_for(account))
        .await?;
    Ok(Json(MeView {
        user: UserView::from(&user),
        usage: UsageView::from(usage),
    }))
}

/// Public keys that verify this server's access tokens (JWK Set).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth",
    responses((status = 200, description = "JWK Set", body = Object)))]
async fn jwks(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(state.tokens.jwks().await)
}

/// The account a client names (a team member to add, a user an admin changes). The name is parsed first, so a
/// lookup never sees text that could not be a username; local and providers' (`label:name`) names both work.
pub async fn user_named(state: &AppState, raw: &str) -> ApiResult<User> {
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "user_not_found", "no such user");
    let name = Username::parse(raw).map_err(|_| not_found())?;
    state.meta.user_by_username(&name).await?.ok_or_else(not_found)
}
