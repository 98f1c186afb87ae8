//! Validated text that comes from clients: usernames, passwords and file names. Parse, don't validate: each type
//! has a `parse` that is the only way to build it, so holding one means the rules were applied.

use std::fmt;

use serde::Serialize;

/// Why a piece of client text was refused. The `Display` text is safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "username must be 3 to 32 characters: letters a-z, digits, '.', '_' or '-', starting with a letter or digit"
    )]
    InvalidUsername,
    #[error("password must be at least {min} characters and at most {max} bytes")]
    InvalidPassword { min: usize, max: usize },
    #[error("file name must not be empty")]
    EmptyFileName,
    #[error("file name is longer than {max} bytes")]
    FileNameTooLong { max: usize },
}

/// An account name. Case-insensitive: stored and compared in lower case.
///
/// Two namespaces that can never collide: local names (`alice`, what sign-up accepts, see [`Username::parse_local`])
/// and external names (`cognito:alice`: the label of a trusted identity provider, a colon, then a name derived
/// from the provider's claims, see [`Username::external`]). A local name never contains `:`, so a user of an
/// external provider can never be mistaken for, or take over, a local account of the same name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Username(String);

impl Username {
    pub const MIN_CHARS: usize = 3;
    pub const MAX_CHARS: usize = 32;
    /// Longest provider label in an external name.
    pub const MAX_LABEL_CHARS: usize = 16;

    /// Any account name, local or external: what lookups by name (sign-in, team membership, ...) accept.
    /// Accounts are only ever *created* from [`Username::parse_local`] (sign-up) or [`Username::external`].
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        let name = raw.to_ascii_lowercase();
        match name.split_once(':') {
            None if is_local_name(&name) => Ok(Self(name)),
            Some((label, local)) if is_label(label) && is_external_local_part(local) => Ok(Self(name)),
            _ => Err(NameError::InvalidUsername),
        }
    }

    /// A name a local sign-up may register: never one of the external namespace.
    pub fn parse_local(raw: &str) -> Result<Self, NameError> {
        let name = raw.to_ascii_lowercase();
        if is_local_name(&name) {
            Ok(Self(name))
        } else {
            Err(NameError::InvalidUsername)
        }
    }

    /// Whether the provider label `label` is usable in external names: 1–16 of a–z, 0–9 and `-`, starting with
    /// a letter or digit.
    pub fn is_valid_label(label: &str) -> bool {
        is_label(label)
    }

    /// The external name `label:name` for a provider's user, `name` derived from `preferred` (any text from the
    /// provider's claims): lower-cased, characters outside a–z, 0–9, `.`, `_`, `-` replaced by `-`, leading
    /// punctuation dropped, cut to fit, with `suffix` (`-2`, `-7f3a`, ...) appended when given so a taken name
    /// can be made unique. `None` when `label` is not a valid label.
    pub fn external(label: &str, preferred: &str, suffix: Option<&str>) -> Option<Self> {
        if !is_label(label) {
            return None;
        }
        let suffix = suffix.unwrap_or("");
        let mut local: String = preferred
            .chars()
            .map(|c| c.to_ascii_lowercase())
            .map(|c| {
                if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .skip_while(|c| !c.is_ascii_alphanumeric())
            .collect();
        local.truncate(Self::MAX_CHARS.saturating_sub(suffix.len()));
        if local.is_empty() {
            local.push_str("user");
        }
        local.push_str(suffix);
        let name = format!("{label}:{local}");
        is_external_local_part(&local).then_some(Self(name))
    }

    /// Whether this is an external provider's user (`label:name`).
    pub fn is_external(&self) -> bool {
        self.0.contains(':')
    }

    /// For values read back from our own store, which only ever holds parsed names.
    pub fn from_trusted(stored: String) -> Self {
        Self(stored)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_local_name(name: &str) -> bool {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-');
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (Username::MIN_CHARS..=Username::MAX_CHARS).contains(&name.len()) && first_ok && name.chars().all(allowed)
}

fn is_label(label: &str) -> bool {
    (1..=Username::MAX_LABEL_CHARS).contains(&label.len())
        && label.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && label
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The part after the colon of an external name: like a local name, but one character is enough (a provider's
/// user may well be called `x`).
fn is_external_local_part(local: &str) -> bool {
    (1..=Username::MAX_CHARS).contains(&local.len())
        && local.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && local
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

/// A password as typed. Bounded above so that hashing cost is bounded; never printed.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub const MIN_CHARS: usize = 8;
    pub const MAX_BYTES: usize = 1024;

    pub fn parse(raw: &str) -> Result<Self, NameError> {
        if raw.chars().count() >= Self::MIN_CHARS && raw.len() <= Self::MAX_BYTES {
            Ok(Self(raw.to_owned()))
        } else {
            Err(NameError::InvalidPassword {
                min: Self::MIN_CHARS,
                max: Self::MAX_BYTES,
            })
        }
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// A file's display name. It is metadata only: it never becomes a path or an object key. Characters that could
/// break a header, a terminal or a reader's eye (control characters, bidirectional overrides) are replaced by `_`;
/// everything else, slashes and dots included, is kept as the user sent it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct FileName(String);

impl FileName {
    pub const DEFAULT_MAX_BYTES: usize = 255;

    pub fn parse(raw: &str, max_bytes: usize) -> Result<Self, NameError> {
        if raw.len() > max_bytes {
            return Err(NameError::FileNameTooLong { max: max_bytes });
        }
        let cleaned: String = raw
            .trim()
            .chars()
            .map(|c| if is_unsafe_in_name(c) { '_' } else { c })
            .collect();
        if cleaned.is_empty() {
            return Err(NameError::EmptyFileName);
        }
        Ok(Self(cleaned))
    }

    pub fn from_trusted(stored: String) -> Self {
        Self(stored)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A plain-ASCII stand-in for the legacy `filename="…"` parameter of `Content-Disposition`: anything that is
    /// not printable ASCII, or that has meaning inside a quoted string or a path, becomes `_`.
    pub fn ascii_fallback(&self) -> String {
        self.0
            .chars()
            .map(|c| match c {
                ' '..='~' if !matches!(c, '"' | '\\' | '/' | '%' | ';') => c,
                _ => '_',
            })
            .collect()
    }
}

/// Control characters (C0, C1, DEL) and the Unicode bidirectional/format controls used to disguise extensions
/// ("invoice\u{202E}fdp.exe").
fn is_unsafe_in_name(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_fold_case_and_follow_the_documented_rules() {
        assert_eq!(Username::parse("Alice_01").map(|u| u.0), Ok("alice_01".into()));
        for bad in ["al", "_alice", "alice bob", "ålice", "a/b", "", &"a".repeat(33)] {
            assert!(Username::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn external_names_live_in_their_own_namespace() {
        let name = Username::external("cognito", "Alice Smith", None).expect("valid");
        assert_eq!(name.as_str(), "cognito:alice-smith");
        assert!(name.is_external());
        assert_eq!(Username::parse("Cognito:Alice-Smith"), Ok(name.clone()));
        assert!(Username::parse_local("cognito:alice-smith").is_err());
        assert!(Username::parse_local("alice").is_ok_and(|u| !u.is_external()));
        assert_eq!(
            Username::external("kc", "__bob@example.com", Some("-2")).map(|u| u.0),
            Some("kc:bob-example.com-2".into())
        );
        assert_eq!(Username::external("kc", "", None).map(|u| u.0), Some("kc:user".into()));
        assert_eq!(Username::external("kc", "ñ", None).map(|u| u.0), Some("kc:user".into()));
        let long = Username::external("kc", &"x".repeat(100), Some("-abcdef")).expect("valid");
        assert_eq!(long.as_str().len(), "kc:".len() + Username::MAX_CHARS);
        assert!(long.as_str().ends_with("-abcdef"));
        for bad_label in ["", "Cognito", "-x", "a:b", &"a".repeat(17)] {
            assert!(Username::external(bad_label, "alice", None).is_none(), "{bad_label:?}");
        }
        for bad in ["a:b:c", ":alice", "cognito:", "cognito:-x", "c o:x"] {
            assert!(Username::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn passwords_are_bounded_both_ways() {
        assert!(Password::parse("short").is_err());
        assert!(Password::parse("long enough").is_ok());
        assert!(Password::parse(&"x".repeat(Password::MAX_BYTES + 1)).is_err());
    }

    #[test]
    fn hostile_file_names_are_neutralised_but_kept_as_metadata() {
        let max = FileName::DEFAULT_MAX_BYTES;
        assert_eq!(
            FileName::parse("../../etc/passwd", max).map(|n| n.0),
            Ok("../../etc/passwd".into())
        );
        assert_eq!(
            FileName::parse("a\r\nSet-Cookie: x", max).map(|n| n.0),
            Ok("a__Set-Cookie: x".into())
        );
        assert_eq!(FileName::parse("nul\0byte", max).map(|n| n.0), Ok("nul_byte".into()));
        assert_eq!(
            FileName::parse("invoice\u{202E}fdp.exe", max).map(|n| n.0),
            Ok("invoice_fdp.exe".into())
        );
        assert_eq!(FileName::parse(" \t ", max), Err(NameError::EmptyFileName));
        assert_eq!(
            FileName::parse(&"a".repeat(10_000), max),
            Err(NameError::FileNameTooLong { max })
        );
    }

    #[test]
    fn ascii_fallback_never_contains_header_or_path_metacharacters() {
        let name = FileName::parse("résumé \"final\"/v2;.pdf", 255).expect("valid");
        assert_eq!(name.ascii_fallback(), "r_sum_ _final__v2_.pdf");
    }
}
