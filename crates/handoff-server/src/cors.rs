//! Cross-origin requests from browsers (`[cors]` in the configuration), on tower-http's `CorsLayer`.
//!
//! With no allowed origins nothing changes: no CORS header is sent and browsers keep other origins out. With
//! some, a listed origin gets `Access-Control-Allow-Origin` on every answer (errors included), preflights allow
//! the methods and request headers the API and tus clients use, and the response headers tus clients read are
//! exposed. Credentials are never allowed: the API authenticates with bearer tokens and the `X-Link-Password`
//! header, not cookies.
//!
//! One wrinkle: tower-http answers every `OPTIONS` itself as a preflight, but tus uses a plain `OPTIONS` (without
//! `Access-Control-Request-Method`) for its capabilities. Such a request goes to the router as usual and only has
//! the origin headers added here.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::response::Response;
use tower::{Layer as _, ServiceExt as _};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::Cors;

/// Methods a cross-origin page may use.
const METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// Request headers a cross-origin page may send: the API's own and every tus request header we understand.
const REQUEST_HEADERS: [&str; 14] = [
    "authorization",
    "content-type",
    "x-link-password",
    "x-file-name",
    "range",
    "if-none-match",
    "if-range",
    "tus-resumable",
    "upload-length",
    "upload-offset",
    "upload-metadata",
    "upload-defer-length",
    "upload-checksum",
    "x-requested-with",
];

/// Response headers a cross-origin page may read: what tus clients look at, the completed upload's file key, and
/// what a download answers with.
const EXPOSED_HEADERS: [&str; 18] = [
    "location",
    "upload-offset",
    "upload-length",
    "upload-expires",
    "upload-metadata",
    "upload-defer-length",
    "tus-resumable",
    "tus-version",
    "tus-extension",
    "tus-max-size",
    "tus-checksum-algorithm",
    crate::uploads::FILE_KEY_HEADER,
    "retry-after",
    "content-disposition",
    "content-range",
    "accept-ranges",
    "etag",
    "www-authenticate",
];

/// A `[cors]` section that cannot be applied.
#[derive(Debug, thiserror::Error)]
#[error("cors.allowed_origins: {0:?} is not an origin (scheme://host[:port], no path) or `*`")]
pub struct CorsConfigError(pub String);

#[derive(Clone, Debug)]
enum Origins {
    Any,
    List(Vec<HeaderValue>),
}

impl Origins {
    /// The `Access-Control-Allow-Origin` value for a request from `origin`, if it is allowed.
    fn allow(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        match self {
            Self::Any => Some(HeaderValue::from_static("*")),
            Self::List(list) => origin.filter(|o| list.contains(o)).cloned(),
        }
    }
}

/// The CORS policy of a configuration; `None` when no origin is allowed.
#[derive(Clone, Debug)]
pub struct Policy {
    origins: Origins,
    layer: CorsLayer,
}

fn parse_origin(raw: &str) -> Result<HeaderValue, CorsConfigError> {
    let invalid = || CorsConfigError(raw.to_owned());
    let url = url::Url::parse(raw).map_err(|_| invalid())?;
    let origin = url.origin().ascii_serialization();
    // `https://a.example/` and `https://a.example` are the same origin; anything with a path, query or
    // credentials is not an origin.
    if !matches!(url.scheme(), "http" | "https") || origin != raw.trim_end_matches('/') {
        return Err(invalid());
    }
    HeaderValue::from_str(&origin).map_err(|_| invalid())
}

impl Policy {
    pub fn new(config: &Cors) -> Result<Option<Self>, CorsConfigError> {
        if config.allowed_origins.is_empty() {
            return Ok(None);
        }
        let origins = if config.allowed_origins.iter().any(|o| o == "*") {
            Origins::Any
        } else {
            Origins::List(
                config
                    .allowed_origins
                    .iter()
                    .map(|o| parse_origin(o))
                    .collect::<Result<_, _>>()?,
            )
        };
        let allow_origin = match &origins {
            Origins::Any => AllowOrigin::any(),
            Origins::List(list) => AllowOrigin::list(list.clone()),
        };
        let layer = CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods(METHODS)
            .allow_headers(REQUEST_HEADERS.map(HeaderName::from_static))
            .expose_headers(EXPOSED_HEADERS.map(HeaderName::from_static))
            .max_age(Duration::from_secs(config.max_age_secs));
        Ok(Some(Self { origins, layer }))
    }

    /// `app` answering cross-origin requests by this policy.
    pub fn wrap(self, app: Router) -> Router {
        let with_cors = self.layer.clone().layer(app.clone());
        // What the layer would send, for the plain `OPTIONS` it never sees (the names are static ASCII).
        let exposed = HeaderValue::from_str(&EXPOSED_HEADERS.join(", "))
            .unwrap_or_else(|_| HeaderValue::from_static("location, upload-offset"));
        let service = tower::service_fn(move |req: Request| {
            let (app, with_cors, origins, exposed) =
                (app.clone(), with_cors.clone(), self.origins.clone(), exposed.clone());
            async move {
                let plain_options = req.method() == Method::OPTIONS
                    && !req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
                if !plain_options {
                    return with_cors.oneshot(req).await;
                }
                let origin = req.headers().get(header::ORIGIN).cloned();
                let mut response: Response = app.oneshot(req).await?;
                let headers = response.headers_mut();
                headers.append(header::VARY, HeaderValue::from_static("origin"));
                if let Some(allowed) = origins.allow(origin.as_ref()) {
                    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
                    headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, exposed);
                }
                Ok::<_, Infallible>(response)
            }
        });
        Router::new().fallback_service(service)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked_at_start_up() {
        let config = |origins: &[&str]| Cors {
            allowed_origins: origins.iter().map(|o| (*o).to_owned()).collect(),
            ..Cors::default()
        };
        assert!(Policy::new(&config(&[])).unwrap().is_none());
        assert!(
            Policy::new(&config(&["https://app.example", "http://127.0.0.1:8081/"]))
                .unwrap()
                .is_some()
        );
        assert!(Policy::new(&config(&["*"])).unwrap().is_some());
        for bad in [
            "app.example",
            "https://app.example/path",
            "ftp://app.example",
            "https://u:p@app.example",
            "",
        ] {
            assert!(Policy::new(&config(&[bad])).is_err(), "{bad}");
        }
    }
}
