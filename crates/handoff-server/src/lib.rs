//! Handoff's HTTP service. [`router`] builds the whole application from an [`AppState`]; [`serve`] runs it on a
//! listener it is given until a shutdown future resolves. The `handoff` binary, the tests and the Lambda entry point
//! (`handoff-lambda`) are thin shells around these two functions.
//!
//! Module map: `auth` (accounts and tokens), `files` (upload, download, metadata), `health`, `openapi`, `error`
//! (problem+json), `config`, `settings` (layering the configuration), `state`, `serve` (accept loop and timeouts),
//! `maintenance` (background collection), `migrate` (copying an instance to other backends), `uploads` (resumable
//! tus uploads), `cors` (cross-origin browser access), `direct` (upload sessions and download URLs whose bytes go
//! straight to and from the blob store).

pub mod admin;
pub mod audit;
pub mod auth;
pub mod config;
pub mod cors;
pub mod direct;
pub mod error;
pub mod files;
pub mod health;
pub mod links;
pub mod maintenance;
pub mod migrate;
pub mod openapi;
pub mod serve;
pub mod settings;
pub mod state;
pub mod teams;
pub mod uploads;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::header;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;
use utoipa_axum::router::OpenApiRouter;

pub use config::Config;
pub use handoff_storage::install_tls_provider;
pub use serve::serve;
pub use state::{AppState, StartError, open_metadata};

/// Every documented route, with its OpenAPI description.
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::base())
        .merge(auth::routes())
        .merge(files::routes())
        .merge(teams::routes())
        .merge(links::routes())
        .merge(admin::routes())
        .merge(health::routes())
        .merge(uploads::routes())
        .merge(direct::routes())
}

/// The OpenAPI document of every route [`router`] serves.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    api().split_for_parts().1
}

/// The whole application.
pub fn router(state: AppState) -> Router {
    let (routes, document) = api().split_for_parts();
    let json_limit = state.config.limits.max_json_body;
    // Checked by `AppState::with_stores`; a state built otherwise with a bad `[cors]` section gets no CORS.
    let cors = cors::Policy::new(&state.config.cors).ok().flatten();
    let app = routes
        .merge(openapi::docs_router(document))
        .fallback(error::route_not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(json_limit))
        .layer(axum::middleware::from_fn(error::log_server_errors))
        .layer(
            // Spans name the route template, never the raw URI: paths and queries carry secret file keys. DEBUG
            // (`RUST_LOG=handoff_server=debug`), as tower-http's own default: at INFO, creating the span and entering
            // it on every poll cost about 2 µs of a 4 KiB download's 37 (bench/RESULTS.md). Failures are logged
            // with their route by `log_server_errors` instead of tower-http's `on_failure`.
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let route = req
                        .extensions()
                        .get::<MatchedPath>()
                        .map_or("<unmatched>", MatchedPath::as_str);
                    tracing::debug_span!("request", method = %req.method(), route)
                })
                .on_failure(()),
        )
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::COOKIE,
            header::HeaderName::from_static("x-link-password"),
        ]))
        .layer(CatchPanicLayer::custom(|_| {
            axum::response::IntoResponse::into_response(error::ApiError::internal("handler panicked"))
        }))
        .with_state(state);
    match cors {
        Some(policy) => policy.wrap(app),
        None => app,
    }
}
