//! External identities and API tokens: the records and the port ([`IdentityStore`]) that let a user of a trusted
//! OpenID Connect provider (Amazon Cognito, Keycloak, ...) be an account here, and let any account hold named,
//! scoped, revocable API tokens for scripts.
//!
//! An external identity is keyed by its provider's `(issuer, subject)`, never by e-mail: two providers (or a
//! provider and a local sign-up) may well know different people under the same address.

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::ids::UserId;
use crate::model::User;
use crate::names::Username;
use crate::ports::StoreResult;

/// A first-time user of an external provider, to be created together with the link to its identity.
#[derive(Clone, Debug)]
pub struct NewExternalUser {
    /// The provider's exact `iss`.
    pub issuer: String,
    /// The provider's `sub`: stable and unique per issuer.
    pub subject: String,
    /// Names to try, in order; the first one not taken becomes the account's name. All external (`label:name`).
    pub usernames: Vec<Username>,
    pub email: Option<String>,
    pub is_admin: bool,
}

/// What an API token may do. Checked for every request made with the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiTokenScope {
    /// Everything the account may do (including managing API tokens).
    Full,
    /// Only reading requests (`GET`, `HEAD`).
    ReadOnly,
    /// Only creating files and uploads; it cannot list, download, change or delete anything.
    UploadOnly,
}

impl ApiTokenScope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::ReadOnly => "read_only",
            Self::UploadOnly => "upload_only",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "full" => Some(Self::Full),
            "read_only" => Some(Self::ReadOnly),
            "upload_only" => Some(Self::UploadOnly),
            _ => None,
        }
    }
}

/// A stored API token. The secret itself is never stored, only its SHA-256.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiTokenRecord {
    pub id: Uuid,
    pub user: UserId,
    pub name: String,
    pub scope: ApiTokenScope,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    /// Updated at most about once a minute per token, so a busy script does not turn reads into writes.
    pub last_used_at: Option<OffsetDateTime>,
}

/// A token to store: the record plus the hash of its secret.
#[derive(Clone, Debug)]
pub struct NewApiToken {
    pub record: ApiTokenRecord,
    pub hash: [u8; 32],
}

/// Storage for external identities and API tokens. Every [`crate::MetadataStore`] is one.
#[async_trait]
pub trait IdentityStore: Send + Sync {
    /// The account linked to the provider identity `(issuer, subject)`.
    async fn user_by_identity(&self, issuer: &str, subject: &str) -> StoreResult<Option<User>>;

    /// Creates an account without a password, named by the first free name of `new.usernames`, and links it to
    /// `(issuer, subject)`, in one transaction. `Conflict` when the identity is already linked (another request
    /// provisioned it first: read it with [`IdentityStore::user_by_identity`]) or when every name is taken.
    async fn create_external_user(&self, new: &NewExternalUser) -> StoreResult<User>;

    /// Updates what the provider says about an account on each sign-in: its e-mail, and its admin flag when the
    /// provider manages it (`None` leaves the flag alone).
    async fn update_external_profile(
        &self,
        user: UserId,
        email: Option<&str>,
        is_admin: Option<bool>,
    ) -> StoreResult<()>;

    /// Stores a token unless its owner already holds `max_per_user` tokens (expired ones included, until they are
    /// deleted); returns whether it was stored. Atomic per user across nodes.
    async fn insert_api_token(&self, token: &NewApiToken, max_per_user: u32) -> StoreResult<bool>;

    /// The user's tokens, oldest first.
    async fn api_tokens(&self, user: UserId) -> StoreResult<Vec<ApiTokenRecord>>;

    /// The unexpired token whose secret hashes to `hash`, with its account. Marks it used (at most about once a
    /// minute).
    async fn api_token_by_hash(
        &self,
        hash: &[u8; 32],
        now: OffsetDateTime,
    ) -> StoreResult<Option<(ApiTokenRecord, User)>>;

    /// Deletes the user's token `id`; `false` when the user has no such token.
    async fn delete_api_token(&self, user: UserId, id: Uuid) -> StoreResult<bool>;

    /// The provider identity `(issuer, subject)` linked to `user`, if any: for exports (`migrate-storage`).
    async fn external_identity_of(&self, user: UserId) -> StoreResult<Option<(String, String)>>;

    /// Links `(issuer, subject)` to the existing account `user`; `false` when that identity is already linked (to
    /// anyone). For imports.
    async fn import_external_identity(&self, issuer: &str, subject: &str, user: UserId) -> StoreResult<bool>;

    /// The user's tokens with their hashes: for exports.
    async fn export_api_tokens(&self, user: UserId) -> StoreResult<Vec<NewApiToken>>;

    /// Stores a token exactly as exported (no per-user limit); `false` when its id already exists.
    async fn import_api_token(&self, token: &NewApiToken) -> StoreResult<bool>;
}
