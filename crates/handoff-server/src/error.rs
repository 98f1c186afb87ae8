//! The HTTP edge's one error type. Every failure leaves the server as `application/problem+json` (RFC 9457)
//! with a stable machine `code`; 5xx details are generic and their cause is logged, never echoed.
//!
//! Which error type lives where: domain and store errors are `thiserror` enums in their crates
//! (`NameError`, `StoreError`); handlers return `Result<_, ApiError>` and convert with `?` or the
//! constructors here; `anyhow` appears only in the binary.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use handoff_core::{NameError, StoreError};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// The body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// Always `about:blank`: `code` is the stable, specific identifier.
    #[schema(example = "about:blank")]
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[schema(example = "Not Found")]
    pub title: String,
    #[schema(example = 404)]
    pub status: u16,
    /// Stable machine-readable error code.
    #[schema(example = "file_not_found")]
    pub code: &'static str,
    /// Human-readable explanation.
    pub detail: String,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// 401 with the `WWW-Authenticate` challenge RFC 6750 asks for; `invalid_token` when one was presented.
    pub fn unauthorized(code: &'static str, detail: impl Into<String>, token_presented: bool) -> Self {
        let challenge = if token_presented {
            HeaderValue::from_static(r#"Bearer realm="handoff", error="invalid_token""#)
        } else {
            HeaderValue::from_static(r#"Bearer realm="handoff""#)
        };
        Self::new(StatusCode::UNAUTHORIZED, code, detail).with_header(header::WWW_AUTHENTICATE, challenge)
    }

    pub fn file_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "file_not_found",
            "no file with this key is available to you",
        )
    }

    /// A 500 whose cause goes to the log, not to the client; [`log_server_errors`] then logs its route.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "an internal error occurred",
        )
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = Problem {
            kind: "about:blank",
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            code: self.code,
            detail: self.detail,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (self.status, [(header::CONTENT_TYPE, PROBLEM_JSON)], body).into_response();
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

/// Logs every 5xx answer with its method, route template (never the URI: paths and queries carry file keys),
/// status and latency. The request span is at DEBUG (`lib.rs`), so at the default level this line is where a
/// failure's route shows; its cause was logged where it happened, just before.
pub async fn log_server_errors(request: Request, next: axum::middleware::Next) -> Response {
    let method = request.method().clone();
    let route = request.extensions().get::<axum::extract::MatchedPath>().cloned();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let status = response.status();
    if status.is_server_error() {
        tracing::error!(
            %method,
            route = route.as_ref().map_or("<unmatched>", axum::extract::MatchedPath::as_str),
            status = status.as_u16(),
            latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "request failed"
        );
    }
    response
}

/// Store failures translated once, for every handler.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => Self::new(StatusCode::CONFLICT, "conflict", "the resource already exists"),
            StoreError::NotFound => Self::new(StatusCode::NOT_FOUND, "not_found", "not found"),
            StoreError::Full => Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient_storage",
                "the server has no space left to store this file",
            ),
            StoreError::Unavailable(cause) => {
                tracing::warn!(%cause, "backend unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "backend_unavailable",
                    "a storage backend is temporarily unavailable; retry later",
                )
                .with_header(header::RETRY_AFTER, HeaderValue::from_static("5"))
            }
            StoreError::Corrupt(cause) => {
                tracing::error!(%cause, "stored data is inconsistent");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "integrity_error",
                    "stored data failed a consistency check",
                )
            }
            StoreError::Other(cause) => Self::internal(cause),
        }
    }
}

impl From<NameError> for ApiError {
    fn from(e: NameError) -> Self {
        let code = match e {
            NameError::InvalidUsername => "invalid_username",
            NameError::InvalidPassword { .. } => "invalid_password",
            NameError::EmptyFileName | NameError::FileNameTooLong { .. } => "invalid_file_name",
        };
        Self::bad_request(code, e.to_string())
    }
}

/// `Json` whose rejections speak problem+json.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => unsupported_media_type(),
        JsonRejection::JsonDataError(e) => ApiError::bad_request("invalid_body", e.body_text()),
        JsonRejection::JsonSyntaxError(e) => ApiError::bad_request("malformed_json", e.body_text()),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the JSON body is larger than the server accepts",
        ),
        other => ApiError::bad_request("invalid_body", other.body_text()),
    }
}

fn unsupported_media_type() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "expected a body with Content-Type: application/json",
    )
}

/// `Query` whose rejections speak problem+json.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Self(value))
            .map_err(|e: QueryRejection| ApiError::bad_request("invalid_query", e.body_text()))
    }
}

/// Unknown routes.
pub async fn route_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "route_not_found", "no such route")
}

/// Known routes, wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
    )
}
