//! Cross-origin access (`[cors] allowed_origins`), over real HTTP: preflights allow the tus request headers and
//! methods for a listed origin, actual answers (errors too) carry `Access-Control-Allow-Origin` and expose the
//! headers tus clients read, tus's own plain `OPTIONS` still answers with its capabilities, credentials are never
//! allowed, and an origin that is not listed (or a server with no origins configured) gets no CORS header at all.

use reqwest::{Method, Response, StatusCode};

use crate::helpers::{TestApp, all_backends};

const ALLOWED: &str = "http://127.0.0.1:8123";
const OTHER: &str = "http://127.0.0.2:8123";

fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The comma-separated list in `name`, lower-cased.
fn list(response: &Response, name: &str) -> Vec<String> {
    header(response, name)
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

async fn preflight(app: &TestApp, path: &str, origin: &str, method: &str, headers: &str) -> Response {
    app.client
        .request(Method::OPTIONS, app.url(path))
        .header("origin", origin)
        .header("access-control-request-method", method)
        .header("access-control-request-headers", headers)
        .send()
        .await
        .unwrap()
}

const TUS_REQUEST_HEADERS: &str = "authorization,content-type,tus-resumable,upload-length,upload-offset,\
                                   upload-metadata,upload-defer-length,upload-checksum,x-link-password";

#[tokio::test]
async fn listed_origins_may_speak_tus_from_a_browser() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |c| c.cors.allowed_origins = vec![ALLOWED.into()]).await;
        let alice = app.user("alice").await;

        for (path, method) in [
            ("/uploads", "POST"),
            ("/uploads/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "PATCH"),
            ("/uploads/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "HEAD"),
            ("/uploads/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "DELETE"),
            ("/u/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/uploads", "POST"),
            ("/files", "POST"),
        ] {
            let response = preflight(&app, path, ALLOWED, method, TUS_REQUEST_HEADERS).await;
            assert!(response.status().is_success(), "{backend:?}: preflight {method} {path}");
            assert_eq!(
                header(&response, "access-control-allow-origin"),
                Some(ALLOWED),
                "{method} {path}"
            );
            assert!(list(&response, "access-control-allow-methods").contains(&method.to_ascii_lowercase()));
            let allowed = list(&response, "access-control-allow-headers");
            for wanted in TUS_REQUEST_HEADERS.split(',') {
                assert!(
                    allowed.contains(&wanted.to_owned()),
                    "{wanted} not allowed: {allowed:?}"
                );
            }
            assert!(header(&response, "access-control-allow-credentials").is_none());
            assert!(header(&response, "access-control-max-age").is_some());

            // Another origin's preflight is not approved.
            let response = preflight(&app, path, OTHER, method, TUS_REQUEST_HEADERS).await;
            assert!(
                header(&response, "access-control-allow-origin").is_none(),
                "{backend:?}: {path}"
            );
        }

        // The actual creation: allowed, with the headers a tus client must read exposed.
        let response = app
            .client
            .post(app.url("/uploads"))
            .header("origin", ALLOWED)
            .bearer_auth(&alice.token)
            .header("tus-resumable", "1.0.0")
            .header("upload-length", "3")
            .header("content-type", "application/offset+octet-stream")
            .body("abc")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "{backend:?}");
        assert_eq!(header(&response, "access-control-allow-origin"), Some(ALLOWED));
        let exposed = list(&response, "access-control-expose-headers");
        for wanted in [
            "location",
            "upload-offset",
            "upload-length",
            "upload-expires",
            "tus-resumable",
            "tus-version",
            "tus-extension",
            "tus-max-size",
            "tus-checksum-algorithm",
            "handoff-file-key",
        ] {
            assert!(
                exposed.contains(&wanted.to_owned()),
                "{backend:?}: {wanted} not exposed: {exposed:?}"
            );
        }
        assert!(header(&response, "handoff-file-key").is_some());
        assert!(header(&response, "access-control-allow-credentials").is_none());

        // Errors are readable cross-origin too (a page must see why it failed).
        let response = app
            .client
            .post(app.url("/uploads"))
            .header("origin", ALLOWED)
            .header("tus-resumable", "1.0.0")
            .header("upload-length", "3")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(header(&response, "access-control-allow-origin"), Some(ALLOWED));

        // tus's capabilities request is a plain OPTIONS: it is answered by tus, with the origin headers added.
        let response = app
            .client
            .request(Method::OPTIONS, app.url("/uploads"))
            .header("origin", ALLOWED)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT, "{backend:?}");
        assert_eq!(header(&response, "tus-version"), Some("1.0.0"));
        assert_eq!(header(&response, "access-control-allow-origin"), Some(ALLOWED));
        assert!(list(&response, "access-control-expose-headers").contains(&"tus-extension".to_owned()));
        let response = app
            .client
            .request(Method::OPTIONS, app.url("/uploads"))
            .header("origin", OTHER)
            .send()
            .await
            .unwrap();
        assert_eq!(header(&response, "tus-version"), Some("1.0.0"));
        assert!(header(&response, "access-control-allow-origin").is_none());

        // An unlisted origin's actual request gets its answer but no permission to read it.
        let response = app
            .client
            .get(app.url("/auth/me"))
            .header("origin", OTHER)
            .bearer_auth(&alice.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            header(&response, "access-control-allow-origin").is_none(),
            "{backend:?}"
        );
    }
}

#[tokio::test]
async fn no_cors_headers_unless_configured() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let response = preflight(&app, "/uploads", ALLOWED, "POST", TUS_REQUEST_HEADERS).await;
    assert!(header(&response, "access-control-allow-origin").is_none());
    assert!(header(&response, "access-control-allow-methods").is_none());
    let response = app
        .client
        .get(app.url("/auth/me"))
        .header("origin", ALLOWED)
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(header(&response, "access-control-allow-origin").is_none());
}

#[tokio::test]
async fn a_wildcard_allows_any_origin_without_credentials() {
    let app = TestApp::spawn_with(|c| c.cors.allowed_origins = vec!["*".into()]).await;
    let response = preflight(&app, "/uploads", OTHER, "PATCH", TUS_REQUEST_HEADERS).await;
    assert_eq!(header(&response, "access-control-allow-origin"), Some("*"));
    assert!(header(&response, "access-control-allow-credentials").is_none());
}
