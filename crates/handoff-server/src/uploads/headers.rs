//! The tus 1.0 request headers, parsed once into types. Every malformed value is a 4xx with a stable code;
//! nothing a client sends here can reach a 5xx (`every_parser_maps_random_input_to_a_4xx` below fuzzes them, and
//! `tests/api/tus.rs` sends random headers over HTTP).

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::error::ApiError;

pub const TUS_VERSION: &str = "1.0.0";
pub const TUS_EXTENSIONS: &str = "creation,creation-with-upload,creation-defer-length,termination,checksum,expiration";
pub const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";
/// Most `Upload-Metadata` we accept (it is stored and echoed).
pub const MAX_METADATA_BYTES: usize = 4096;
const MAX_METADATA_PAIRS: usize = 32;

/// 412 for a request that does not speak our tus version; it names the one we do.
pub fn version_unsupported() -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        "tus_version_unsupported",
        "this server speaks tus 1.0.0: send `Tus-Resumable: 1.0.0`",
    )
    .with_header(
        axum::http::HeaderName::from_static("tus-version"),
        HeaderValue::from_static(TUS_VERSION),
    )
}

pub fn require_tus_resumable(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get("tus-resumable").map(HeaderValue::as_bytes) {
        Some(b"1.0.0") => Ok(()),
        _ => Err(version_unsupported()),
    }
}

/// A non-negative decimal integer as tus requires: digits only, no sign, no spaces, fitting in a u64.
fn parse_u64(value: &HeaderValue) -> Option<u64> {
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > 20 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

fn optional_u64(headers: &HeaderMap, name: &str, code: &'static str) -> Result<Option<u64>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            parse_u64(v).ok_or_else(|| ApiError::bad_request(code, format!("{name} must be a non-negative integer")))
        })
        .transpose()
}

pub fn upload_offset(headers: &HeaderMap) -> Result<u64, ApiError> {
    optional_u64(headers, "upload-offset", "invalid_upload_offset")?
        .ok_or_else(|| ApiError::bad_request("invalid_upload_offset", "Upload-Offset is required"))
}

pub fn upload_length(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    optional_u64(headers, "upload-length", "invalid_upload_length")
}

/// The length a creation declares: `Some(n)`, or `None` when deferred (`Upload-Defer-Length: 1`).
pub fn creation_length(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let length = upload_length(headers)?;
    let deferred = match headers.get("upload-defer-length") {
        None => false,
        Some(v) if v.as_bytes() == b"1" => true,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_upload_defer_length",
                "Upload-Defer-Length must be 1",
            ));
        }
    };
    match (length, deferred) {
        (Some(_), true) => Err(ApiError::bad_request(
            "invalid_upload_length",
            "send either Upload-Length or Upload-Defer-Length, not both",
        )),
        (None, false) => Err(ApiError::bad_request(
            "invalid_upload_length",
            "Upload-Length (or Upload-Defer-Length: 1) is required",
        )),
        (length, _) => Ok(length),
    }
}

/// A parsed `Upload-Checksum`: the algorithm's expected digest of this request's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    pub sha256: [u8; 32],
}

pub fn upload_checksum(headers: &HeaderMap) -> Result<Option<Checksum>, ApiError> {
    let Some(value) = headers.get("upload-checksum") else {
        return Ok(None);
    };
    let invalid = || ApiError::bad_request("invalid_upload_checksum", "Upload-Checksum must be `sha256 <base64>`");
    let text = value.to_str().map_err(|_| invalid())?;
    let (algorithm, digest) = text.trim().split_once(' ').ok_or_else(invalid)?;
    if !algorithm.eq_ignore_ascii_case("sha256") {
        return Err(ApiError::bad_request(
            "checksum_algorithm_unsupported",
            "the only supported checksum algorithm is sha256",
        ));
    }
    let digest = STANDARD.decode(digest.trim()).map_err(|_| invalid())?;
    let sha256 = <[u8; 32]>::try_from(digest.as_slice()).map_err(|_| invalid())?;
    Ok(Some(Checksum { sha256 }))
}

/// PATCH bodies must say they are tus chunks.
pub fn require_offset_octet_stream(headers: &HeaderMap) -> Result<(), ApiError> {
    let is_tus = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(OFFSET_OCTET_STREAM));
    if is_tus {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "upload chunks need Content-Type: application/offset+octet-stream",
        ))
    }
}

/// `Upload-Metadata`: the raw header (kept to echo back) and its decoded pairs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub raw: String,
    pub pairs: Vec<(String, Option<String>)>,
}

impl Metadata {
    /// The first of `keys` that is present with a value.
    pub fn get(&self, keys: &[&str]) -> Option<&str> {
        keys.iter().find_map(|key| {
            self.pairs
                .iter()
                .find(|(k, _)| k == key)
                .and_then(|(_, v)| v.as_deref())
        })
    }
}

/// Comma-separated `key base64(value)` pairs (the value may be absent); keys are unique, non-empty, without
/// spaces or commas. Values must be UTF-8: every value we use is text.
pub fn upload_metadata(headers: &HeaderMap) -> Result<Metadata, ApiError> {
    let Some(value) = headers.get("upload-metadata") else {
        return Ok(Metadata::default());
    };
    let invalid = |why: &str| ApiError::bad_request("invalid_upload_metadata", format!("Upload-Metadata: {why}"));
    if value.len() > MAX_METADATA_BYTES {
        return Err(invalid("too long"));
    }
    let raw = value.to_str().map_err(|_| invalid("not ASCII"))?.trim();
    let mut pairs: Vec<(String, Option<String>)> = Vec::new();
    if raw.is_empty() {
        return Ok(Metadata::default());
    }
    for item in raw.split(',') {
        let item = item.trim();
        let (key, encoded) = match item.split_once(' ') {
            Some((key, encoded)) => (key, Some(encoded.trim())),
            None => (item, None),
        };
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid("each pair needs a key without spaces"));
        }
        if pairs.iter().any(|(k, _)| k == key) {
            return Err(invalid("duplicate key"));
        }
        if pairs.len() == MAX_METADATA_PAIRS {
            return Err(invalid("too many pairs"));
        }
        let decoded = match encoded.filter(|e| !e.is_empty()) {
            None => None,
            Some(encoded) => {
                let bytes = STANDARD.decode(encoded).map_err(|_| invalid("values must be base64"))?;
                Some(String::from_utf8(bytes).map_err(|_| invalid("values must be UTF-8"))?)
            }
        };
        pairs.push((key.to_owned(), decoded));
    }
    Ok(Metadata {
        raw: raw.to_owned(),
        pairs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_bytes(value).expect("valid header bytes"));
        }
        map
    }

    #[test]
    fn numbers_are_strict() {
        for good in [&b"0"[..], b"42", b"18446744073709551615"] {
            assert!(upload_offset(&headers(&[("upload-offset", good)])).is_ok());
        }
        for bad in [
            &b""[..],
            b"-1",
            b"+1",
            b" 1",
            b"1.0",
            b"0x10",
            b"18446744073709551616",
            b"99999999999999999999999",
            b"1e3",
            b"\xff",
        ] {
            let e = upload_offset(&headers(&[("upload-offset", bad)])).expect_err("refused");
            assert_eq!(e.code(), "invalid_upload_offset", "{bad:?}");
        }
    }

    #[test]
    fn creation_needs_exactly_one_length() {
        assert_eq!(
            creation_length(&headers(&[("upload-length", b"5")])).ok(),
            Some(Some(5))
        );
        assert_eq!(
            creation_length(&headers(&[("upload-defer-length", b"1")])).ok(),
            Some(None)
        );
        assert!(creation_length(&headers(&[])).is_err());
        assert!(creation_length(&headers(&[("upload-defer-length", b"0")])).is_err());
        assert!(creation_length(&headers(&[("upload-length", b"5"), ("upload-defer-length", b"1")])).is_err());
    }

    #[test]
    fn metadata_round_trips_and_rejects_garbage() {
        let parsed = upload_metadata(&headers(&[(
            "upload-metadata",
            b"filename cmVwb3J0LnBkZg==,filetype YXBwbGljYXRpb24vcGRm,is_confidential",
        )]))
        .expect("valid");
        assert_eq!(parsed.get(&["name", "filename"]), Some("report.pdf"));
        assert_eq!(parsed.get(&["filetype"]), Some("application/pdf"));
        assert_eq!(parsed.pairs.len(), 3);
        for bad in [
            &b"filename !!!"[..],
            b"a YQ==,a YQ==",
            b" ,",
            b"k /w==", // not UTF-8
            b"filename cmVwb3J0LnBkZg",
        ] {
            assert!(
                upload_metadata(&headers(&[("upload-metadata", bad)])).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn checksums_name_a_supported_algorithm_and_a_full_digest() {
        let digest = STANDARD.encode([7u8; 32]);
        let good = format!("sha256 {digest}");
        assert!(upload_checksum(&headers(&[("upload-checksum", good.as_bytes())])).is_ok());
        let e = upload_checksum(&headers(&[("upload-checksum", b"md5 AAAA")])).expect_err("refused");
        assert_eq!(e.code(), "checksum_algorithm_unsupported");
        for bad in [&b"sha256"[..], b"sha256 AAAA", b"sha256 ***", b""] {
            assert!(
                upload_checksum(&headers(&[("upload-checksum", bad)])).is_err(),
                "{bad:?}"
            );
        }
    }

    /// Deterministic xorshift, so a failure reproduces.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// Bytes a header value may hold (visible ASCII, tab, and obs-text 0x80-0xFF), biased towards the
        /// characters the parsers look at, sometimes past the length limits.
        fn value(&mut self) -> Vec<u8> {
            const SPECIAL: &[u8] = b"0123456789 ,=+/-.\tAa";
            let len = match self.next() % 16 {
                0 => MAX_METADATA_BYTES - 8 + (self.next() % 16) as usize,
                1 => (self.next() % 64) as usize,
                _ => (self.next() % 24) as usize,
            };
            (0..len)
                .map(|_| match self.next() % 4 {
                    0 => SPECIAL[(self.next() % SPECIAL.len() as u64) as usize],
                    1 => 0x80 | (self.next() % 0x80) as u8,
                    _ => match (self.next() % 96) as u8 {
                        95 => b'\t',
                        n => 0x20 + n,
                    },
                })
                .collect()
        }
    }

    /// Mutations of valid values: what a confused client is most likely to send.
    fn near_misses(rng: &mut Rng) -> Vec<u8> {
        let seeds: &[&[u8]] = &[
            b"1.0.0",
            b"18446744073709551615",
            b"application/offset+octet-stream",
            b"filename cmVwb3J0LnBkZg==,filetype YXBwbGljYXRpb24vcGRm,visibility a2V5",
            b"sha256 47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
            b"1",
        ];
        let mut value = seeds[(rng.next() % seeds.len() as u64) as usize].to_vec();
        for _ in 0..=(rng.next() % 3) {
            if value.is_empty() {
                break;
            }
            let at = (rng.next() % value.len() as u64) as usize;
            match rng.next() % 3 {
                0 => {
                    value.remove(at);
                }
                1 => value.insert(at, (rng.next() % 256) as u8),
                _ => value[at] = (rng.next() % 256) as u8,
            }
        }
        value
    }

    /// Every parser on 20,000 random and near-valid values: none panics, and every refusal is a 4xx with a code.
    #[test]
    fn every_parser_maps_random_input_to_a_4xx() {
        let names = [
            "tus-resumable",
            "upload-length",
            "upload-offset",
            "upload-defer-length",
            "upload-metadata",
            "upload-checksum",
            "content-type",
        ];
        let mut rng = Rng(0x7e57_f00d_0bad_cafe);
        let mut refused = 0;
        for _ in 0..20_000 {
            let mut map = HeaderMap::new();
            for name in names {
                let value = match rng.next() % 3 {
                    0 => continue,
                    1 => rng.value(),
                    _ => near_misses(&mut rng),
                };
                // Bytes no header can carry (control characters) never reach a parser.
                if let Ok(value) = HeaderValue::from_bytes(&value) {
                    map.insert(name, value);
                }
            }
            let outcomes = [
                require_tus_resumable(&map).err(),
                upload_offset(&map).err(),
                upload_length(&map).err(),
                creation_length(&map).err(),
                upload_checksum(&map).err(),
                require_offset_octet_stream(&map).err(),
                upload_metadata(&map).err(),
            ];
            for error in outcomes.into_iter().flatten() {
                refused += 1;
                assert!(error.status().is_client_error(), "{map:?} → {}", error.status());
                assert!(!error.code().is_empty());
            }
            if let Ok(metadata) = upload_metadata(&map) {
                assert!(metadata.raw.len() <= MAX_METADATA_BYTES);
                assert!(metadata.pairs.len() <= MAX_METADATA_PAIRS);
            }
        }
        assert!(refused > 10_000, "the fuzz hardly exercised the refusals ({refused})");
    }
}
