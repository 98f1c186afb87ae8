//! The OpenAPI 3.1 document (generated from the handlers' annotations, served at `/openapi.json`) and the
//! interactive API page at `/docs` (Swagger UI, vendored into the binary: no CDN, no download at build time).

use axum::Router;
use utoipa::openapi::OpenApi as Document;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Handoff",
        description = "Secure file sharing. Sign up, sign in for a bearer token, upload files and share their secret keys."
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Accounts and tokens"),
        (name = "files", description = "Upload, download and manage files"),
        (name = "operations", description = "Health and readiness"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

pub fn base() -> Document {
    ApiDoc::openapi()
}

pub fn docs_router(document: Document) -> Router<AppState> {
    Router::new().merge(SwaggerUi::new("/docs").url("/openapi.json", document))
}
