//! Handoff on AWS Lambda. One function, two kinds of invocation:
//!
//! - **HTTP events** from API Gateway (HTTP API payload 2.0, which is also what a Function URL sends, and REST API
//!   payload 1.0) are turned into an `http::Request` and answered by the same `handoff_server::router` that
//!   `handoff serve` runs: no route exists only on one side. The response is buffered (Lambda has no response
//!   streaming through API Gateway), written back in the event's own response shape, and returned only after the
//!   audit log is flushed, because Lambda freezes the process the moment the response is out.
//! - **Scheduled events** (an EventBridge rule or EventBridge Scheduler, or `{"handoff": "maintenance"}` from
//!   `aws lambda invoke`) run one maintenance pass (`handoff_server::maintenance::pass`): expiry, orphan
//!   collection, expired resumable uploads. `serve` does this in a background task; here that task would be frozen
//!   between invocations, so nothing runs in the background at all.
//!
//! The gateway's JWT authorizer is honoured (the template puts it in front of every private route) but not
//! trusted: the claims it copies into `requestContext` are never read. The app verifies the bearer token itself,
//! as it does behind any proxy (`auth.oidc` names the Cognito user pool).
//!
//! [`Handler::handle`] is the function the runtime calls (see `main.rs`); the tests call it with event JSON.

use std::time::{Duration, SystemTime};

use axum::Router;
use axum::response::IntoResponse as _;
use bytes::Bytes;
use handoff_server::AppState;
use handoff_server::error::ApiError;
use http::header::{CONTENT_TYPE, SET_COOKIE};
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt as _, Limited};
use lambda_http::aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayV2httpResponse};
use lambda_http::lambda_runtime::{Context, LambdaEvent};
use lambda_http::request::{LambdaRequest, RequestOrigin};
use lambda_http::{Body as LambdaBody, RequestExt as _};
use serde_json::{Value, json};
use tower::ServiceExt as _;

/// Lambda's limit on a synchronous response payload is 6 MB (6,291,456 bytes) of JSON. A body travels as base64
/// (4 characters per 3 bytes) and needs room for the status and headers around it.
pub const MAX_RESPONSE_BODY: usize = (6 * 1024 * 1024 - 64 * 1024) / 4 * 3;

/// How long before the invocation's deadline a maintenance pass stops starting new work.
const MAINTENANCE_MARGIN: Duration = Duration::from_secs(3);

/// What the runtime reports for an invocation that is not an HTTP or scheduled event.
pub type Error = lambda_http::Error;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Settings(#[from] handoff_server::settings::SettingsError),
    #[error("opening the stores")]
    Start(#[from] handoff_server::StartError),
}

/// The application, built once per execution environment (the init phase) and reused by every invocation.
#[derive(Clone, Debug)]
pub struct Handler {
    state: AppState,
    app: Router,
}

impl Handler {
    pub fn new(state: AppState) -> Self {
        let app = handoff_server::router(state.clone());
        Self { state, app }
    }

    /// Builds the application from the configuration layered exactly as `handoff serve` layers it (defaults,
    /// then the TOML file named by `HANDOFF_CONFIG` if set, then `HANDOFF_*` variables).
    pub async fn from_env() -> Result<Self, InitError> {
        let file = std::env::var_os("HANDOFF_CONFIG").map(std::path::PathBuf::from);
        let config = handoff_server::settings::load(file.as_deref(), &[])?;
        tracing::info!(config = ?config, "starting");
        Ok(Self::new(AppState::build(config).await?))
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// One invocation: the function the Lambda runtime calls with the event's JSON.
    pub async fn handle(&self, event: LambdaEvent<Value>) -> Result<Value, Error> {
        let (payload, context) = event.into_parts();
        if is_maintenance(&payload) {
            return Ok(self.maintenance(&context).await);
        }
        let request: LambdaRequest = serde_json::from_value(payload)?;
        let origin = request.request_origin();
        let response = self.http(request, context).await;
        Ok(encode(&origin, response)?)
    }

    async fn http(&self, request: LambdaRequest, context: Context) -> Buffered {
        let request: lambda_http::Request = request.into();
        let request = request.with_lambda_context(context);
        let request = match into_app_request(request) {
            Ok(request) => request,
            Err(error) => return buffer_error(error).await,
        };
        let response = match self.app.clone().oneshot(request).await {
            Ok(response) => response,
            Err(infallible) => match infallible {},
        };
        let (parts, body) = response.into_parts();
        let buffered = match Limited::new(body, MAX_RESPONSE_BODY).collect().await {
            Ok(collected) => Buffered {
                status: parts.status,
                headers: parts.headers,
                body: collected.to_bytes(),
            },
            Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                buffer_error(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "response_too_large",
                    "the response exceeds the AWS Lambda payload limit; ask for a byte range, or configure \
                 downloads.mode = \"redirect\" so that large files come straight from S3",
                ))
                .await
            }
            // The headers promised a body that could not be produced (a blob read failed halfway): nothing has
            // been sent yet, so the client gets an honest error instead of a truncated file.
            Err(error) => buffer_error(ApiError::internal(error)).await,
        };
        // Lambda freezes the process once the response is returned: queued audit events must be written first.
        self.state.audit.flush().await;
        buffered
    }

    /// One maintenance pass, stopped shortly before the invocation's deadline (the next run continues).
    async fn maintenance(&self, context: &Context) -> Value {
        let budget = (context.deadline != 0)
            .then(|| context.deadline().duration_since(SystemTime::now()).ok())
            .flatten()
            .map(|left| left.saturating_sub(MAINTENANCE_MARGIN));
        let pass = handoff_server::maintenance::pass(&self.state);
        let report = match budget {
            Some(budget) => tokio::time::timeout(budget, pass).await.ok(),
            None => Some(pass.await),
        };
        if report.is_none() {
            tracing::warn!("maintenance pass stopped at the invocation deadline; the next run continues");
            self.state.audit.flush().await;
        }
        json!({ "maintenance": report, "completed": report.is_some() })
    }
}

/// A scheduled event: an EventBridge rule's `Scheduled Event`, EventBridge Scheduler's default payload, or an
/// explicit `{"handoff": "maintenance"}`. API Gateway and Function URL events never have these top-level fields, and
/// only AWS services (or an operator with `lambda:InvokeFunction`) can shape the top level of an event.
fn is_maintenance(payload: &Value) -> bool {
    let source = payload.get("source").and_then(Value::as_str);
    let detail_type = payload.get("detail-type").and_then(Value::as_str);
    matches!(source, Some("aws.events" | "aws.scheduler")) && detail_type == Some("Scheduled Event")
        || payload.get("handoff").and_then(Value::as_str) == Some("maintenance")
}

/// The request as the router expects it: the path exactly as the client sent it (lambda_http prefixes the stage
/// name to REST API paths, which would match no route), and the body as bytes.
fn into_app_request(request: lambda_http::Request) -> Result<http::Request<axum::body::Body>, ApiError> {
    let raw_path = request.raw_http_path().to_owned();
    let (mut parts, body) = request.into_parts();
    if !raw_path.is_empty() && raw_path != parts.uri.path() {
        let path_and_query = match parts.uri.query() {
            Some(query) => format!("{raw_path}?{query}"),
            None => raw_path,
        };
        let mut uri = parts.uri.clone().into_parts();
        uri.path_and_query = Some(
            path_and_query
                .parse()
                .map_err(|_| ApiError::bad_request("invalid_path", "the request path is not a valid URI path"))?,
        );
        parts.uri = http::Uri::from_parts(uri)
            .map_err(|_| ApiError::bad_request("invalid_path", "the request path is not a valid URI path"))?;
    }
    let body = match body {
        LambdaBody::Text(text) => Bytes::from(text),
        LambdaBody::Binary(bytes) => Bytes::from(bytes),
        _ => Bytes::new(),
    };
    Ok(http::Request::from_parts(parts, axum::body::Body::from(body)))
}

/// A complete response, ready to be written into the event's response shape.
#[derive(Debug)]
pub struct Buffered {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The problem+json response of `error`, buffered.
async fn buffer_error(error: ApiError) -> Buffered {
    let (parts, body) = error.into_response().into_parts();
    let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    Buffered {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Our own JSON documents travel as text; everything else (file bytes, whatever their declared type) as base64,
/// so that API Gateway hands the client exactly the bytes we produced. (lambda_http's own conversion decodes any
/// `text/*` body with its declared charset, which would corrupt a Latin-1 `.txt` download.)
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

/// Writes `response` in the response shape of the event it answers.
pub fn encode(origin: &RequestOrigin, response: Buffered) -> Result<Value, serde_json::Error> {
    let Buffered { status, headers, body } = response;
    let (body, is_base64_encoded) = if body.is_empty() {
        (None, false)
    } else if is_json(&headers) {
        match String::from_utf8(body.to_vec()) {
            Ok(text) => (Some(LambdaBody::Text(text)), false),
            Err(e) => (Some(LambdaBody::Binary(e.into_bytes())), true),
        }
    } else {
        (Some(LambdaBody::Binary(body.to_vec())), true)
    };
    let status_code = i64::from(status.as_u16());
    match origin {
        RequestOrigin::ApiGatewayV2 => {
            // Payload 2.0 has one value per header name (duplicates are joined with commas) and cookies apart.
            let mut single = HeaderMap::new();
            let mut cookies = Vec::new();
            for name in headers.keys() {
                let values: Vec<&str> = headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
                if name == SET_COOKIE {
                    cookies.extend(values.iter().map(|v| (*v).to_owned()));
                } else if let Ok(joined) = HeaderValue::from_str(&values.join(", ")) {
                    single.insert(name.clone(), joined);
                }
            }
            let mut out = ApiGatewayV2httpResponse::default();
            out.status_code = status_code;
            out.headers = single;
            out.cookies = cookies;
            out.body = body;
            out.is_base64_encoded = is_base64_encoded;
            serde_json::to_value(out)
        }
        // Payload 1.0 carries every value of every header in `multiValueHeaders`; `headers` stays empty because
        // API Gateway merges the two and would send duplicates.
        _ => {
            let mut out = ApiGatewayProxyResponse::default();
            out.status_code = status_code;
            out.multi_value_headers = headers;
            out.body = body;
            out.is_base64_encoded = is_base64_encoded;
            serde_json::to_value(out)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn response_with(headers: &[(&str, &str)], content_type: &str, body: &[u8]) -> Buffered {
        let mut map = HeaderMap::new();
        map.insert(CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap());
        for (name, value) in headers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        Buffered {
            status: StatusCode::OK,
            headers: map,
            body: Bytes::copy_from_slice(body),
        }
    }

    #[test]
    fn payload_2_joins_repeated_headers_and_moves_cookies_apart() {
        let response = response_with(
            &[
                ("vary", "origin"),
                ("vary", "accept"),
                ("set-cookie", "a=1"),
                ("set-cookie", "b=2"),
            ],
            "text/plain; charset=iso-8859-1",
            b"caf\xe9",
        );
        let out = encode(&RequestOrigin::ApiGatewayV2, response).unwrap();
        assert_eq!(out["headers"]["vary"], "origin, accept");
        assert!(out["headers"].get("set-cookie").is_none(), "{out}");
        assert_eq!(out["cookies"], json!(["a=1", "b=2"]));
        // Text content types still travel as base64: the bytes are not decoded with the declared charset.
        assert_eq!(out["isBase64Encoded"], true);
        assert_eq!(out["body"], "Y2Fm6Q==");
    }

    #[test]
    fn payload_1_keeps_every_header_value() {
        let response = response_with(
            &[("set-cookie", "a=1"), ("set-cookie", "b=2")],
            "application/json",
            b"{}",
        );
        let out = encode(&RequestOrigin::ApiGatewayV1, response).unwrap();
        assert_eq!(out["multiValueHeaders"]["set-cookie"], json!(["a=1", "b=2"]));
        assert_eq!(out["multiValueHeaders"]["content-type"], json!(["application/json"]));
        assert_eq!(out["headers"], json!({}));
        assert_eq!(out["isBase64Encoded"], false);
        assert_eq!(out["body"], "{}");
    }

    #[test]
    fn scheduled_events_are_told_apart_from_http_events() {
        assert!(is_maintenance(
            &json!({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}})
        ));
        assert!(is_maintenance(&json!({"handoff": "maintenance"})));
        assert!(!is_maintenance(&json!({"version": "2.0", "rawPath": "/healthz"})));
        assert!(!is_maintenance(
            &json!({"source": "aws.events", "detail-type": "Object Created"})
        ));
    }
}
