//! The OpenAPI document: the committed `openapi.json` at the repository root must equal what the server serves
//! (regenerate with `UPDATE_OPENAPI=1 cargo test -p handoff-server --test api openapi`), every documented
//! operation must exist, and the interactive page must work offline.

use std::path::PathBuf;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::TestApp;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../openapi.json")
}

#[tokio::test]
async fn committed_document_is_current() {
    let app = TestApp::spawn().await;
    let served: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served["openapi"], "3.1.0");
    let rendered = format!("{}\n", serde_json::to_string_pretty(&served).unwrap());
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(committed_path(), &rendered).unwrap();
    }
    let committed = std::fs::read_to_string(committed_path()).unwrap_or_default();
    assert!(
        committed == rendered,
        "openapi.json is stale: run `UPDATE_OPENAPI=1 cargo test -p handoff-server --test api openapi` and commit it"
    );
}

#[tokio::test]
async fn every_documented_operation_is_routed() {
    let app = TestApp::spawn().await;
    let document = handoff_server::openapi_document();
    let mut checked = 0;
    for (path, item) in &document.paths.paths {
        let concrete = path.replace("{key}", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
        let operations = [
            (Method::GET, item.get.is_some()),
            (Method::POST, item.post.is_some()),
            (Method::PATCH, item.patch.is_some()),
            (Method::DELETE, item.delete.is_some()),
            (Method::PUT, item.put.is_some()),
        ];
        for (method, documented) in operations {
            let response = app
                .client
                .request(method.clone(), app.url(&concrete))
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let routed = !matches!(body["code"].as_str(), Some("route_not_found" | "method_not_allowed"));
            assert_eq!(routed, documented, "{method} {path}: {status} {body}");
            checked += usize::from(documented);
        }
    }
    assert!(checked >= 12, "only {checked} operations documented");
}

#[tokio::test]
async fn interactive_page_is_self_contained() {
    let app = TestApp::spawn().await;
    let page = app.client.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.to_lowercase().contains("swagger"));
    assert!(
        !html.contains("https://") && !html.contains("http://"),
        "no external assets: {html}"
    );
    for asset in ["swagger-ui-bundle.js", "swagger-ui.css", "swagger-initializer.js"] {
        let response = app.client.get(app.url(&format!("/docs/{asset}"))).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
        let body = response.text().await.unwrap();
        assert!(body.len() > 100, "{asset}");
        if asset == "swagger-initializer.js" {
            assert!(body.contains("/openapi.json"), "the page loads our document");
        }
    }
}
