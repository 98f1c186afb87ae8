//! Server-made identifiers. Every one comes from the operating system's CSPRNG or a UUID generator; none is ever
//! derived from anything a client chose. Each has a `parse` that is the only way to build one from outside text.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::TryRngCore as _;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Random bytes from the OS. Failing to read the OS RNG is unrecoverable for a service that mints secrets.
fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    #[allow(clippy::expect_used)]
    OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random number generator failed");
    bytes
}

/// `N` random bytes as URL-safe base64 without padding.
pub(crate) fn random_token<const N: usize>() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<N>())
}

/// True when `s` is exactly the unpadded URL-safe base64 text of `bytes` bytes.
pub(crate) fn is_token_of(s: &str, bytes: usize) -> bool {
    s.len() == (bytes * 4).div_ceil(3)
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && URL_SAFE_NO_PAD.decode(s).is_ok_and(|decoded| decoded.len() == bytes)
}

/// The secret key of a file (the origin design's `fileName`): 192 random bits as 32 URL-safe characters.
/// Holding it is what lets a signed-in user download a file whose visibility is `key`.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FileKey(String);

impl FileKey {
    const BYTES: usize = 24;

    pub fn generate() -> Self {
        Self(random_token::<{ Self::BYTES }>())
    }

    /// The only way in from client text. Anything that is not exactly a key we could have made is refused,
    /// so a lookup never sees path separators, wildcards or oversized input.
    pub fn parse(s: &str) -> Option<Self> {
        is_token_of(s, Self::BYTES).then(|| Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Keys are secrets: `Debug` shows only a prefix, so a stray `{:?}` in a log line cannot leak one.
impl fmt::Debug for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileKey({}…)", &self.0[..4])
    }
}

/// A refresh token as handed to the client: 256 random bits. Only its SHA-256 is stored.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshTokenSecret(String);

impl RefreshTokenSecret {
    const BYTES: usize = 32;

    pub fn generate() -> Self {
        Self(random_token::<{ Self::BYTES }>())
    }

    pub fn parse(s: &str) -> Option<Self> {
        is_token_of(s, Self::BYTES).then(|| Self(s.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RefreshTokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefreshTokenSecret(<redacted>)")
    }
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// Time-ordered (UUIDv7), so new rows append to indexes.
            pub fn generate() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(
    /// An account.
    UserId
);
uuid_id!(
    /// The name of a stored object in the blob store. Made by the server, never reused, never overwritten; the
    /// only thing a blob store turns into a path or object key.
    BlobId
);

uuid_id!(
    /// A team: a shared space with members and roles.
    TeamId
);
uuid_id!(
    /// A share link (its public face is a [`LinkToken`], never this id).
    ShareId
);
uuid_id!(
    /// An upload link (reverse share).
    UploadLinkId
);
uuid_id!(
    /// An audit-log entry; time-ordered, so it is also the log's sort key.
    AuditId
);

/// The secret in a share or upload link URL: 192 random bits as 32 URL-safe characters. Only its SHA-256 is
/// stored, so a leaked database does not hand out working links.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkToken(String);

impl LinkToken {
    const BYTES: usize = 24;

    pub fn generate() -> Self {
        Self(random_token::<{ Self::BYTES }>())
    }

    pub fn parse(s: &str) -> Option<Self> {
        is_token_of(s, Self::BYTES).then(|| Self(s.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for LinkToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LinkToken(<redacted>)")
    }
}

/// Random bytes for other crates (signing-key seeds), from the same OS source as every identifier here.
pub fn os_random<const N: usize>() -> [u8; N] {
    random_bytes::<N>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_back_and_are_distinct() {
        let a = FileKey::generate();
        let b = FileKey::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert_eq!(FileKey::parse(a.as_str()), Some(a));
    }

    #[test]
    fn keys_reject_anything_we_could_not_have_made() {
        for bad in [
            "",
            "../../etc/passwd",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",   // 31
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", // 33
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA%",
        ] {
            assert!(FileKey::parse(bad).is_none(), "{bad:?} parsed");
        }
    }

    #[test]
    fn debug_never_prints_a_whole_secret() {
        let key = FileKey::generate();
        assert!(!format!("{key:?}").contains(key.as_str()));
        let token = RefreshTokenSecret::generate();
        assert!(!format!("{token:?}").contains(token.expose()));
    }
}
