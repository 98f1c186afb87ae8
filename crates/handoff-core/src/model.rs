//! The records the service keeps: accounts, files, refresh tokens and signing keys.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::ids::{BlobId, FileKey, TeamId, UploadLinkId, UserId};
use crate::names::{FileName, Username};

#[derive(Clone, Debug)]
pub struct User {
    pub id: UserId,
    pub username: Username,
    pub email: Option<String>,
    /// PHC string (argon2id). `None` for identities that cannot sign in with a password.
    pub password_hash: Option<String>,
    pub is_admin: bool,
    pub disabled: bool,
    pub created_at: OffsetDateTime,
}

#[derive(Clone, Debug)]
pub struct NewUser {
    pub username: Username,
    pub email: Option<String>,
    pub password_hash: String,
}

/// Who may fetch a file with its key alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    /// Only the owner.
    Private,
    /// Any signed-in user who holds the secret key (the origin design's behaviour).
    Key,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Private => "private",
            Self::Key => "key",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "private" => Some(Self::Private),
            "key" => Some(Self::Key),
            _ => None,
        }
    }
}

/// A stored, complete file. A row exists only once every byte is durable and the hash is known.
#[derive(Clone, Debug)]
pub struct FileRecord {
    pub key: FileKey,
    pub blob: BlobId,
    pub owner: UserId,
    pub name: FileName,
    pub size: u64,
    /// Lower-case hex SHA-256 of the content, computed while the bytes streamed in.
    pub sha256: String,
    pub content_type: String,
    pub visibility: Visibility,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    /// The team the file belongs to; then `owner` is only its uploader, and rights come from team roles.
    pub team: Option<TeamId>,
    /// When the retention task removes the file.
    pub expires_at: Option<OffsetDateTime>,
    /// The upload link it arrived through, if any.
    pub upload_link: Option<UploadLinkId>,
}

impl FileRecord {
    pub fn account(&self) -> crate::sharing::Account {
        self.team
            .map_or(crate::sharing::Account::User(self.owner), crate::sharing::Account::Team)
    }
}

/// Changes an owner may make to a file. Everything else (size, hash, owner) is not changeable by construction.
#[derive(Clone, Debug, Default)]
pub struct FilePatch {
    pub name: Option<FileName>,
    pub visibility: Option<Visibility>,
}

impl FilePatch {
    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.visibility.is_none()
    }
}

/// Position in a newest-first listing: the last row of the previous page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileCursor {
    pub created_at: OffsetDateTime,
    pub key: FileKey,
}

impl FileCursor {
    pub fn after(file: &FileRecord) -> Self {
        Self {
            created_at: file.created_at,
            key: file.key.clone(),
        }
    }

    /// Opaque to clients: base64 of `<unix nanos>.<key>`.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}.{}", self.created_at.unix_timestamp_nanos(), self.key))
    }

    /// `None` for anything we did not produce; the listing is filtered by owner anyway, so a forged cursor can
    /// only move within the caller's own files.
    pub fn decode(s: &str) -> Option<Self> {
        if s.len() > 128 {
            return None;
        }
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(s).ok()?).ok()?;
        let (nanos, key) = raw.split_once('.')?;
        let created_at = OffsetDateTime::from_unix_timestamp_nanos(nanos.parse().ok()?).ok()?;
        Some(Self {
            created_at,
            key: FileKey::parse(key)?,
        })
    }
}

#[derive(Clone, Debug)]
pub struct FilePage {
    pub files: Vec<FileRecord>,
    pub next: Option<FileCursor>,
}

/// A new refresh token in a rotation family. Only the SHA-256 of the secret is kept.
#[derive(Clone, Debug)]
pub struct NewRefreshToken {
    pub hash: [u8; 32],
    pub family: Uuid,
    pub user: UserId,
    pub expires_at: OffsetDateTime,
}

/// What presenting a refresh token did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The token was current: it is now spent and its successor stored.
    Rotated { user: UserId },
    /// The token had already been spent: someone is replaying it, so the whole family is now revoked
    /// (RFC 6819 §5.2.2.3).
    Reused,
    /// Unknown, expired or revoked (signed out, or its family was revoked after a reuse).
    Invalid,
}

/// A JWT signing key pair, shared by every node through the metadata store.
#[derive(Clone)]
pub struct SigningKeyRecord {
    pub kid: String,
    pub algorithm: String,
    /// PKCS#8 DER of the private key.
    pub private_der: Vec<u8>,
    /// Raw public key bytes.
    pub public_raw: Vec<u8>,
    pub created_at: OffsetDateTime,
}

impl std::fmt::Debug for SigningKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyRecord")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// The current time at the precision every metadata backend can store (microseconds), so that a value read back
/// equals the value written and keyset cursors compare exactly.
pub fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(t.nanosecond() / 1_000 * 1_000).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_forgeries() {
        let cursor = FileCursor {
            created_at: OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_000).expect("valid"),
            key: FileKey::generate(),
        };
        assert_eq!(FileCursor::decode(&cursor.encode()), Some(cursor));
        for bad in ["", "!!", "bm90LWEtY3Vyc29y", &"A".repeat(500)] {
            assert!(FileCursor::decode(bad).is_none(), "{bad:?} decoded");
        }
    }
}
