//! Liveness (`/healthz`: the process answers) and readiness (`/readyz`: both stores answer).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ApiResult, Problem};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    status: &'static str,
}

/// Liveness: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: the metadata store and the blob store both answer.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, body = Health),
        (status = 503, description = "A backend is unreachable", body = Problem, content_type = "application/problem+json"),
    ))]
async fn readyz(State(state): State<AppState>) -> ApiResult<Json<Health>> {
    let (meta, blobs) = tokio::join!(state.meta.ping(), state.blobs.ping());
    if let Err(e) = meta.and(blobs) {
        tracing::warn!(error = %e, "not ready");
        return Err(
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "a backend is unreachable")
                .with_header(header::RETRY_AFTER, HeaderValue::from_static("5")),
        );
    }
    Ok(Json(Health { status: "ok" }))
}
