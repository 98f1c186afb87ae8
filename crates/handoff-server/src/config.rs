//! The one typed configuration. Layering (defaults → `--config` TOML → `HANDOFF_*` environment → flags) is done
//! by the binary; this module owns the shape, the defaults, the derived values and the redacted view.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use handoff_core::Visibility;
use serde::{Deserialize, Serialize};

mod identity;
pub use identity::{ApiTokensConfig, OidcProviderConfig, TokenUse};

#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Where the default SQLite database and local blobs live.
    pub data_dir: PathBuf,
    /// `sqlite://PATH` or `postgres://USER:PASSWORD@HOST/DB`. Default: `sqlite://<data_dir>/handoff.db`.
    pub database_url: Option<String>,
    /// `file://DIR`, `s3://BUCKET/PREFIX?endpoint=…&region=…&path_style=…` or `memory://`.
    /// Default: `file://<data_dir>/storage`.
    pub storage_url: Option<String>,
    /// Visibility of new files when the upload does not say.
    pub default_visibility: Visibility,
    pub auth: AuthConfig,
    pub limits: Limits,
    pub maintenance: Maintenance,
    pub downloads: Downloads,
    pub quotas: Quotas,
    pub retention: Retention,
    pub sharing: Sharing,
    pub tus: Tus,
    pub cors: Cors,
    pub direct: Direct,
}

/// Cross-origin requests from browsers (for example tus-js-client in a page served elsewhere). With no origins
/// listed, no CORS headers are sent and browsers keep other origins out.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cors {
    /// Origins allowed to call the API, exactly as browsers send them (`https://app.example.com`, no path), or
    /// `*` for any. Credentials are never allowed: the API uses bearer tokens and link headers, not cookies.
    pub allowed_origins: Vec<String>,
    /// How long a browser may cache a preflight answer.
    pub max_age_secs: u64,
}

impl Default for Cors {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            max_age_secs: 600,
        }
    }
}

/// Default quotas for accounts that have none of their own (an admin sets those). Unset means unlimited.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Quotas {
    pub user_bytes: Option<u64>,
    pub user_files: Option<u64>,
    pub team_bytes: Option<u64>,
    pub team_files: Option<u64>,
}

impl Quotas {
    pub fn default_for(&self, account: handoff_core::Account) -> handoff_core::Quota {
        match account {
            handoff_core::Account::User(_) => handoff_core::Quota {
                bytes: self.user_bytes,
                files: self.user_files,
            },
            handoff_core::Account::Team(_) => handoff_core::Quota {
                bytes: self.team_bytes,
                files: self.team_files,
            },
        }
    }
}

/// How long files live. An upload may ask for an expiry (`expires_in`, seconds) up to the maximum; without one it
/// gets the default. Unset means forever.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    pub default_file_ttl_secs: Option<u64>,
    pub max_file_ttl_secs: Option<u64>,
    /// Expired and revoked share links answer `410` for this long, then are forgotten (and answer `404`).
    pub expired_link_grace_secs: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            default_file_ttl_secs: None,
            max_file_ttl_secs: None,
            expired_link_grace_secs: 30 * 24 * 3600,
        }
    }
}

/// Share and upload links.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sharing {
    /// How long a counted share-link download may be resumed with `Range` requests without counting again.
    pub download_grant_ttl_secs: u64,
    pub max_files_per_share: usize,
    /// Links (share plus upload) one user may hold at once.
    pub max_links_per_user: usize,
}

impl Default for Sharing {
    fn default() -> Self {
        Self {
            download_grant_ttl_secs: 6 * 3600,
            max_files_per_share: 100,
            max_links_per_user: 1000,
        }
    }
}

/// Resumable uploads (tus 1.0 at `/uploads`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tus {
    /// An incomplete upload untouched for this long expires; the collector then removes its bytes. Each append
    /// moves the expiry forward.
    pub expiry_secs: u64,
    /// Incomplete, unexpired uploads one user may have open at once.
    pub max_open_per_user: u32,
    /// How long an append holds its upload's lease between renewals (it renews every third of this while it
    /// works). After a crash, the upload can continue elsewhere once this has passed. The default, 6 s, is
    /// shorter than the 9 s that tus-js-client's default retries (0, 1, 3 and 5 s apart) span, so that an
    /// unmodified client rides out a server killed mid-append and restarted.
    pub lease_secs: u64,
}

impl Default for Tus {
    fn default() -> Self {
        Self {
            expiry_secs: 24 * 3600,
            max_open_per_user: 20,
            lease_secs: 6,
        }
    }
}

/// Direct transfers: upload sessions whose parts clients send straight to the blob store (`/upload-sessions`),
/// and download URLs (`GET /files/{key}/download-url`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Direct {
    /// Size of every part but the last. Raised for a file too large to fit in `max_parts` parts, and never below
    /// what the store requires (S3: 5 MiB). A file no larger than one part is a single `PUT`.
    pub part_size: u64,
    /// Parts one session may have (S3 allows at most 10,000).
    pub max_parts: u32,
    /// Unexpired sessions one user may have open at once.
    pub max_open_per_user: u32,
    /// A session can be used for this long after it was created; then its parts are reclaimed.
    pub expiry_secs: u64,
    /// Lifetime of each signed URL (part uploads and downloads). Short: the access check happened when it was
    /// minted.
    pub url_ttl_secs: u64,
    /// Part URLs one request may ask for.
    pub max_urls_per_request: u32,
    /// How long one completion request may spend reading the joined parts for SHA-256 before it answers
    /// `202 Accepted` with its progress (kept in the session) and the client calls `/complete` again to go on.
    /// Keeps every request under API Gateway's 30 s; never more than two thirds of `complete_timeout_secs`.
    /// `0`: steps of about 1 MiB, the least one request reads.
    pub complete_budget_secs: u64,
    /// How long a completion request may hold the session (joining the parts, then reading for at most
    /// `complete_budget_secs`) before another request may take the session over, should the first one die.
    pub complete_timeout_secs: u64,
    /// Where clients reach this server (`https://files.example.com`), for the URLs it signs itself (stores that
    /// cannot sign, like the local directory). Unset: those URLs are paths (`/direct/...`), relative to the URL
    /// the client called.
    pub public_url: Option<String>,
}

impl Default for Direct {
    fn default() -> Self {
        Self {
            part_size: 16 << 20,
            max_parts: 10_000,
            max_open_per_user: 20,
            expiry_secs: 24 * 3600,
            url_ttl_secs: 15 * 60,
            max_urls_per_request: 100,
            complete_budget_secs: 20,
            complete_timeout_secs: 3600,
            public_url: None,
        }
    }
}

/// How file bytes reach a downloader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DownloadMode {
    /// The server streams the bytes.
    Proxy,
    /// After the access check, the server answers `302` to a short-lived presigned URL of the blob store (S3),
    /// so the bytes bypass the server. Stores that cannot sign fall back to `proxy`.
    Redirect,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Downloads {
    pub mode: DownloadMode,
    /// Lifetime of a presigned download URL. Short: the access check happened when it was minted.
    pub presigned_ttl_secs: u64,
}

impl Default for Downloads {
    fn default() -> Self {
        Self {
            mode: DownloadMode::Proxy,
            presigned_ttl_secs: 300,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `iss` of the tokens this server signs, and the only issuer it accepts for them.
    pub issuer: String,
    /// `aud` of the tokens this server signs, and the only audience it accepts.
    pub audience: String,
    pub access_token_ttl_secs: u64,
    pub refresh_token_ttl_secs: u64,
    /// Whether `POST /auth/signup` is open.
    pub signup_enabled: bool,
    /// A newly rotated signing key is used for signing only once it is this old, so that every node of a cluster
    /// (each re-reads the key set every minute) already knows it.
    pub signing_key_activation_secs: u64,
    /// Concurrent argon2id computations; more requests queue. Bounds the CPU and memory a sign-in flood can take.
    pub password_hash_concurrency: usize,
    /// Usernames that are server admins (besides the first account ever created).
    pub admins: Vec<String>,
    /// Whether accounts with a password (sign-up, sign-in) exist at all. Off when an external provider is the
    /// only source of identity.
    pub builtin_accounts: bool,
    /// Trusted OpenID Connect issuers (`[[auth.oidc]]`), whose tokens are accepted like ours.
    pub oidc: Vec<OidcProviderConfig>,
    pub api_tokens: ApiTokensConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_file_size: u64,
    /// Largest request body `POST /files` accepts (the whole request, so a multipart body counts as one); larger
    /// uploads are refused with `413 use_upload_session`. Unset: only `max_file_size` applies. A Lambda
    /// deployment sets it just under the 6 MB payload limit.
    pub max_inline_upload: Option<u64>,
    pub max_files_per_request: usize,
    pub max_json_body: usize,
    /// Upper bound on a request's header section.
    pub max_header_bytes: usize,
    pub max_file_name_bytes: usize,
    pub max_page_size: u32,
    /// A client must send its complete request head within this time (slowloris).
    pub header_read_timeout_secs: u64,
    /// A connection on which nothing is read or written for this long is closed (stalled bodies, stalled
    /// readers). Idle keep-alive connections are closed sooner, by the header-read timeout, which hyper starts
    /// while it waits for the next request.
    pub idle_timeout_secs: u64,
    /// On shutdown, in-flight requests get this long to finish.
    pub shutdown_grace_secs: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Maintenance {
    /// How often the collector looks for orphaned and partial blobs.
    pub interval_secs: u64,
    /// Blobs younger than this are never collected: they may belong to an upload being committed right now.
    pub orphan_grace_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./handoff-data"),
            database_url: None,
            storage_url: None,
            default_visibility: Visibility::Key,
            auth: AuthConfig::default(),
            limits: Limits::default(),
            maintenance: Maintenance::default(),
            downloads: Downloads::default(),
            quotas: Quotas::default(),
            retention: Retention::default(),
            sharing: Sharing::default(),
            tus: Tus::default(),
            cors: Cors::default(),
            direct: Direct::default(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuer: "handoff".into(),
            audience: "handoff".into(),
            access_token_ttl_secs: 15 * 60,
            refresh_token_ttl_secs: 30 * 24 * 3600,
            signup_enabled: true,
            signing_key_activation_secs: 90,
            password_hash_concurrency: std::thread::available_parallelism().map_or(2, usize::from),
            admins: Vec::new(),
            builtin_accounts: true,
            oidc: Vec::new(),
            api_tokens: ApiTokensConfig::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_file_size: 100 << 30,
            max_inline_upload: None,
            max_files_per_request: 100,
            max_json_body: 64 << 10,
            max_header_bytes: 16 << 10,
            max_file_name_bytes: 255,
            max_page_size: 1000,
            header_read_timeout_secs: 10,
            idle_timeout_secs: 60,
            shutdown_grace_secs: 30,
        }
    }
}

impl Default for Maintenance {
    fn default() -> Self {
        Self {
            interval_secs: 600,
            orphan_grace_secs: 3600,
        }
    }
}

impl Config {
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("handoff.db").display()))
    }

    pub fn storage_url(&self) -> String {
        self.storage_url
            .clone()
            .unwrap_or_else(|| format!("file://{}", self.data_dir.join("storage").display()))
    }

    /// The effective configuration with every derived default filled in and secrets masked: what
    /// `handoff config` prints and what start-up logs.
    pub fn redacted(&self) -> Self {
        let mut shown = self.clone();
        shown.database_url = Some(redact_url(&self.database_url()));
        shown.storage_url = Some(redact_url(&self.storage_url()));
        shown
    }

    pub fn access_token_ttl(&self) -> Duration {
        Duration::from_secs(self.auth.access_token_ttl_secs)
    }
}

/// Query parameters that carry credentials in database and storage URLs (libpq's `password`, S3 keys, ...).
const SECRET_PARAMS: &[&str] = &[
    "password",
    "secret",
    "secret_access_key",
    "session_token",
    "token",
    "sslpassword",
];

/// Masks every credential in a URL: the userinfo password and secret query parameters. A URL that cannot be
/// parsed is masked whole after its scheme, since we cannot tell where a secret might be.
fn redact_url(raw: &str) -> String {
    let Ok(mut url) = url::Url::parse(raw) else {
        return match raw.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://***"),
            None => "***".into(),
        };
    };
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let secret = SECRET_PARAMS.iter().any(|s| k.eq_ignore_ascii_case(s));
                (k.into_owned(), if secret { "***".to_owned() } else { v.into_owned() })
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = self.redacted();
        f.debug_struct("Config")
            .field("listen", &shown.listen)
            .field("data_dir", &shown.data_dir)
            .field("database_url", &shown.database_url)
            .field("storage_url", &shown.storage_url)
            .field("default_visibility", &shown.default_visibility)
            .field("auth", &shown.auth)
            .field("limits", &shown.limits)
            .field("maintenance", &shown.maintenance)
            .field("downloads", &shown.downloads)
            .field("quotas", &shown.quotas)
            .field("retention", &shown.retention)
            .field("sharing", &shown.sharing)
            .field("tus", &shown.tus)
            .field("cors", &shown.cors)
            .field("direct", &shown.direct)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_masked() {
        assert_eq!(
            redact_url("postgres://handoff:s3cret@db:5432/handoff"),
            "postgres://handoff:***@db:5432/handoff"
        );
        assert_eq!(
            redact_url("postgres://u@db/x?sslmode=require&password=hunter2"),
            "postgres://u@db/x?sslmode=require&password=***"
        );
        assert_eq!(redact_url("postgres://u:hun/ter2@db/x"), "postgres://***");
        assert_eq!(
            redact_url("s3://bucket/p?secret_access_key=abc&region=eu"),
            "s3://bucket/p?secret_access_key=***&region=eu"
        );
        assert_eq!(redact_url("sqlite://./data/handoff.db"), "sqlite://./data/handoff.db");
        let config = Config {
            database_url: Some("postgres://u:hunter2@h/db".into()),
            ..Config::default()
        };
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
