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
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Username(String);

impl Username {
    pub const MIN_CHARS: usize = 3;
    pub const MAX_CHARS: usize = 32;

    pub fn parse(raw: &str) -> Result<Self, NameError> {
        let name = raw.to_ascii_lowercase();
        let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-');
        let first_ok = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if (Self::MIN_CHARS..=Self::MAX_CHARS).contains(&name.len()) && first_ok && name.chars().all(allowed) {
            Ok(Self(name))
        } else {
            Err(NameError::InvalidUsername)
        }
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
