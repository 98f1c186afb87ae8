//! Serving file bytes: conditional requests (`If-None-Match`, `If-Range`), single byte ranges, and the headers
//! that keep user content inert in a browser (attachment disposition, `nosniff`, a sandboxing CSP).

use std::ops::Range;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use handoff_core::{BlobId, FileName, FileRecord, StoreError};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use time::OffsetDateTime;
use time::macros::format_description;

use crate::config::DownloadMode;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// RFC 8187 `attr-char`: everything else in a `filename*` value is percent-encoded.
const ATTR_CHAR_ESCAPES: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// What a `Range` header asks of a file of a given size.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range (absent, malformed, multiple ranges, or another unit): send everything with `200`.
    Full,
    Partial(Range<u64>),
    /// Syntactically fine but outside the file: `416`.
    Unsatisfiable,
}

/// Parses a single `bytes=` range (RFC 9110 §14.1.2). Several ranges are answered with the whole file, which the
/// RFC allows and which keeps multipart/byteranges out of the attack surface.
pub fn parse_range(value: &str, size: u64) -> RangeRequest {
    let Some((unit, spec)) = value.trim().split_once('=') else {
        return RangeRequest::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let number = |s: &str| {
        (!s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match (first.trim(), last.trim()) {
        ("", suffix) => match number(suffix) {
            None => RangeRequest::Full,
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if size == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Partial(size.saturating_sub(n)..size),
        },
        (start, "") => match number(start) {
            None => RangeRequest::Full,
            Some(start) if start >= size => RangeRequest::Unsatisfiable,
            Some(start) => RangeRequest::Partial(start..size),
        },
        (start, end) => match (number(start), number(end)) {
            (Some(start), Some(end)) if start <= end => {
                if start >= size {
                    RangeRequest::Unsatisfiable
                } else {
                    RangeRequest::Partial(start..end.saturating_add(1).min(size))
                }
            }
            _ => RangeRequest::Full,
        },
    }
}

pub fn etag(file: &FileRecord) -> String {
    format!("\"{}\"", file.sha256)
}

/// `If-None-Match` (weak comparison, RFC 9110 §13.1.2).
fn none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim())
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

/// `If-Range` with an entity tag (strong comparison); a date or anything else means "send it all".
fn if_range_allows(headers: &HeaderMap, etag: &str) -> bool {
    match headers.get(header::IF_RANGE) {
        None => true,
        Some(value) => value.to_str().is_ok_and(|v| v.trim() == etag),
    }
}

pub fn http_date(t: OffsetDateTime) -> String {
    let format =
        format_description!("[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT");
    t.to_offset(time::UtcOffset::UTC).format(&format).unwrap_or_default()
}

/// `attachment; filename="<ascii stand-in>"; filename*=UTF-8''<percent-encoded>`: every byte of a hostile name
/// ends up either replaced or percent-encoded, so it can never split or extend the header.
pub fn content_disposition(name: &FileName) -> HeaderValue {
    let value = format!(
        "attachment; filename=\"{}\"; filename*=UTF-8''{}",
        name.ascii_fallback(),
        utf8_percent_encode(name.as_str(), ATTR_CHAR_ESCAPES)
    );
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
}

/// What a download serves: a file's bytes and the attributes its response carries.
#[derive(Debug)]
pub struct Served<'a> {
    pub blob: BlobId,
    pub size: u64,
    pub sha256: &'a str,
    pub name: &'a FileName,
    pub content_type: &'a str,
    pub modified: OffsetDateTime,
}

impl<'a> From<&'a FileRecord> for Served<'a> {
    fn from(file: &'a FileRecord) -> Self {
        Self {
            blob: file.blob,
            size: file.size,
            sha256: &file.sha256,
            name: &file.name,
            content_type: &file.content_type,
            modified: file.created_at,
        }
    }
}

/// The response for a download the caller is allowed to make.
pub async fn respond(state: &AppState, file: &FileRecord, headers: &HeaderMap) -> ApiResult<Response> {
    let redirect = state.config.downloads.mode == DownloadMode::Redirect;
    respond_served(state, &Served::from(file), headers, redirect).await
}

/// As [`respond`], for bytes described by `file`; `redirect` allows answering with a presigned URL.
pub async fn respond_served(
    state: &AppState,
    file: &Served<'_>,
    headers: &HeaderMap,
    redirect: bool,
) -> ApiResult<Response> {
    let etag = format!("\"{}\"", file.sha256);
    let mut common = HeaderMap::new();
    common.insert(header::ETAG, header_value(&etag));
    common.insert(header::LAST_MODIFIED, header_value(&http_date(file.modified)));
    common.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-cache"));
    common.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));

    if none_match(headers, &etag) {
        return Ok((StatusCode::NOT_MODIFIED, common).into_response());
    }

    if redirect && let Some(redirect) = presigned_redirect(state, file).await? {
        return Ok(redirect);
    }

    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(value) if if_range_allows(headers, &etag) => parse_range(value, file.size),
        _ => RangeRequest::Full,
    };
    let (status, range) = match range {
        RangeRequest::Full => (StatusCode::OK, None),
        RangeRequest::Partial(r) => (StatusCode::PARTIAL_CONTENT, Some(r)),
        RangeRequest::Unsatisfiable => {
            return Err(ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("the file is {} bytes long", file.size),
            )
            .with_header(header::CONTENT_RANGE, header_value(&format!("bytes */{}", file.size))));
        }
    };

    let reader = state.blobs.open(file.blob, range.clone()).await.map_err(|e| match e {
        // The row says the bytes exist: a missing blob is an integrity failure, not a 404.
        StoreError::NotFound => StoreError::Corrupt(format!("blob {} of a stored file is missing", file.blob)),
        other => other,
    })?;

    let mut response = Response::new(Body::from_stream(reader.stream));
    *response.status_mut() = status;
    let out = response.headers_mut();
    out.extend(common);
    out.insert(header::CONTENT_TYPE, header_value(file.content_type));
    out.insert(header::CONTENT_LENGTH, HeaderValue::from(reader.len));
    out.insert(header::CONTENT_DISPOSITION, content_disposition(file.name));
    out.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    out.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    if let Some(r) = range {
        out.insert(
            header::CONTENT_RANGE,
            header_value(&format!("bytes {}-{}/{}", r.start, r.end - 1, file.size)),
        );
    }
    Ok(response)
}

/// `302` to a presigned URL of the blob, minted now, after the caller's access was checked; `None` when the
/// store cannot sign. The store serves the bytes with our `Content-Disposition` and type, and handles `Range`.
async fn presigned_redirect(state: &AppState, file: &Served<'_>) -> ApiResult<Option<Response>> {
    let ttl = std::time::Duration::from_secs(state.config.downloads.presigned_ttl_secs);
    let disposition = content_disposition(file.name);
    let disposition = disposition.to_str().unwrap_or("attachment");
    let Some(url) = state
        .blobs
        .presigned_get(file.blob, ttl, disposition, file.content_type)
        .await?
    else {
        return Ok(None);
    };
    let location = HeaderValue::from_str(&url).map_err(ApiError::internal)?;
    let mut response = StatusCode::FOUND.into_response();
    let out = response.headers_mut();
    out.insert(header::LOCATION, location);
    // The URL is a bearer credential for a few minutes: never cache it, never leak it as a referrer.
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    out.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    Ok(Some(response))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeRequest::*;
        let cases: &[(&str, u64, RangeRequest)] = &[
            ("bytes=0-0", 10, Partial(0..1)),
            ("bytes=2-5", 10, Partial(2..6)),
            ("bytes=5-", 10, Partial(5..10)),
            ("bytes=-3", 10, Partial(7..10)),
            ("bytes=-30", 10, Partial(0..10)),
            ("bytes=8-100", 10, Partial(8..10)),
            ("BYTES=1-2", 10, Partial(1..3)),
            ("bytes=10-", 10, Unsatisfiable),
            ("bytes=10-12", 10, Unsatisfiable),
            ("bytes=-0", 10, Unsatisfiable),
            ("bytes=0-", 0, Unsatisfiable),
            ("bytes=-5", 0, Unsatisfiable),
            ("bytes=5-2", 10, Full),
            ("bytes=0-1,3-4", 10, Full),
            ("items=0-1", 10, Full),
            ("bytes=abc", 10, Full),
            ("bytes=-", 10, Full),
            ("bytes=+1-2", 10, Full),
            ("bytes=99999999999999999999999-", 10, Full),
            ("", 10, Full),
        ];
        for (header, size, want) in cases {
            assert_eq!(&parse_range(header, *size), want, "{header:?} of {size}");
        }
    }

    #[test]
    fn content_disposition_survives_hostile_names() {
        for raw in [
            "a\"b.txt",
            "../../etc/passwd",
            "x\r\ny",
            "日本語 ファイル.pdf",
            "a;b=c%20d",
        ] {
            let name = FileName::parse(raw, 255).expect("valid");
            let value = content_disposition(&name);
            let text = value.to_str().expect("ascii header");
            assert!(text.starts_with("attachment; filename=\""));
            assert_eq!(text.matches('"').count(), 2, "{text}");
            assert!(!text.contains('\r') && !text.contains('\n'));
        }
    }

    #[test]
    fn http_dates_use_imf_fixdate() {
        let t = OffsetDateTime::from_unix_timestamp(784_111_777).expect("valid");
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
    }
}
