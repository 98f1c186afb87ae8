//! The Lambda entry point, fed event JSON written in this repository (`tests/fixtures/`): API Gateway HTTP API
//! (payload 2.0, with the JWT authorizer's claims), Function URL (payload 2.0, no authorizer), REST API (payload
//! 1.0 through a named stage) and an EventBridge scheduled event. Every event goes through `Handler::handle`, the
//! function the runtime calls, and every assertion is on the response JSON the runtime would send back to AWS.
//!
//! The stores are SQLite and a local directory in a temporary directory (a function would use /tmp the same way);
//! Cognito is an in-process JWKS server publishing the server tests' fixture keys, with tokens shaped like Cognito
//! access tokens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::Json;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use handoff_lambda::Handler;
use handoff_server::config::OidcProviderConfig;
use handoff_server::{AppState, Config};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use lambda_http::lambda_runtime::{Context, LambdaEvent};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

const POOL: &str = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_HandoffT1";
const CLIENT_ID: &str = "5tests0client0id0handoff0";
/// SHA-256 of the bytes in `http-api-v2-upload-binary.json` (1,040 bytes: every byte value, CR LF, NUL, 0xFF…).
const UPLOAD_SHA256: &str = "404bbea3269c4fd252559000d77226915aa7d6f770e2dff8b5635391fa6ce4f2";

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A fixture event with `{{NAME}}` placeholders replaced.
fn event(name: &str, values: &[(&str, &str)]) -> Value {
    let mut text = read(&format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR")));
    for (key, value) in values {
        text = text.replace(&format!("{{{{{key}}}}}"), value);
    }
    assert!(!text.contains("{{"), "{name}: a placeholder was left unfilled");
    serde_json::from_str(&text).unwrap()
}

/// The server tests' key pairs (crates/handoff-server/tests/api/fixtures), reused rather than copied.
fn server_fixture(name: &str) -> String {
    read(&format!(
        "{}/../handoff-server/tests/api/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A Cognito user-pool access token for `sub`, signed with fixture key `key` under key id `kid`.
fn cognito_token(key: &str, kid: &str, sub: &str, username: &str, changes: Value) -> String {
    let mut claims = json!({
        "sub": sub,
        "iss": POOL,
        "client_id": CLIENT_ID,
        "token_use": "access",
        "scope": "aws.cognito.signin.user.admin",
        "auth_time": now(),
        "iat": now(),
        "exp": now() + 3600,
        "jti": uuid::Uuid::new_v4().to_string(),
        "username": username,
    });
    for (k, v) in changes.as_object().unwrap() {
        claims[k] = v.clone();
    }
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    let encoding = EncodingKey::from_rsa_pem(server_fixture(&format!("{key}.pem")).as_bytes()).unwrap();
    jsonwebtoken::encode(&header, &claims, &encoding).unwrap()
}

/// The user pool's JWKS on 127.0.0.1, publishing fixture key `rsa-a`.
struct Jwks {
    url: String,
    server: tokio::task::JoinHandle<()>,
}

impl Jwks {
    async fn start() -> Self {
        let all: Value = serde_json::from_str(&server_fixture("public-jwks.json")).unwrap();
        let keys = Arc::new(json!({ "keys": [all["rsa-a"].clone()] }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
        let app = axum::Router::new().route(
            "/.well-known/jwks.json",
            get(move || {
                let keys = keys.clone();
                async move { Json((*keys).clone()) }
            }),
        );
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, server }
    }
}

impl Drop for Jwks {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A function instance: the handler as `main.rs` builds it, over stores in a temporary directory.
struct Function {
    handler: Handler,
    _jwks: Jwks,
    _dir: Option<tempfile::TempDir>,
}

impl Function {
    async fn start(configure: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut function = Self::start_in(dir.path(), configure).await;
        function._dir = Some(dir);
        function
    }

    /// Configured like the template's function: the user pool as the only external issuer.
    async fn start_in(dir: &std::path::Path, configure: impl FnOnce(&mut Config)) -> Self {
        let jwks = Jwks::start().await;
        let mut config = Config {
            data_dir: dir.to_owned(),
            ..Config::default()
        };
        let mut cognito = OidcProviderConfig::new("cognito", POOL, &[CLIENT_ID]);
        cognito.jwks_url = Some(jwks.url.clone());
        cognito.username_claim = "username".into();
        cognito.groups_claim = "cognito:groups".into();
        config.auth.oidc = vec![cognito];
        config.auth.password_hash_concurrency = 2;
        configure(&mut config);
        let state = AppState::build(config).await.unwrap();
        Self {
            handler: Handler::new(state),
            _jwks: jwks,
            _dir: None,
        }
    }

    /// One invocation, exactly as the runtime makes it.
    async fn invoke(&self, event: Value) -> Value {
        self.handler
            .handle(LambdaEvent::new(event, Context::default()))
            .await
            .unwrap()
    }

    /// An HTTP API event like `http-api-v2-download.json` for another method and path.
    fn v2(&self, method: &str, path_and_query: &str, token: &str) -> Value {
        let mut event = event(
            "http-api-v2-download.json",
            &[("TOKEN", token), ("KEY", "x"), ("SUB", "s"), ("USERNAME", "u")],
        );
        let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
        event["rawPath"] = json!(path);
        event["rawQueryString"] = json!(query);
        event["requestContext"]["http"]["method"] = json!(method);
        event["requestContext"]["http"]["path"] = json!(path);
        event
    }

    /// Uploads the binary fixture as `sub`/`username` with `token`; returns the file's JSON.
    async fn upload_fixture(&self, token: &str, query: Option<&str>) -> Value {
        let mut upload = event(
            "http-api-v2-upload-binary.json",
            &[("TOKEN", token), ("SUB", "sub-carol"), ("USERNAME", "carol")],
        );
        if let Some(query) = query {
            upload["rawQueryString"] = json!(query);
        }
        let response = self.invoke(upload).await;
        assert_eq!(response["statusCode"], 201, "{response}");
        json_body(&response)
    }
}

/// The decoded body of a response event.
fn body_bytes(response: &Value) -> Vec<u8> {
    match response.get("body").and_then(Value::as_str) {
        None => Vec::new(),
        Some(body) if response["isBase64Encoded"] == true => STANDARD.decode(body).unwrap(),
        Some(body) => body.as_bytes().to_vec(),
    }
}

fn json_body(response: &Value) -> Value {
    serde_json::from_slice(&body_bytes(response)).unwrap_or_else(|e| panic!("{e}: {response}"))
}

/// A payload 2.0 response is problem+json with `status` and `code`.
fn assert_problem_v2(response: &Value, status: u16, code: &str) {
    assert_eq!(response["statusCode"], status, "{response}");
    assert_eq!(
        response["headers"]["content-type"], "application/problem+json",
        "{response}"
    );
    assert_eq!(response["isBase64Encoded"], false);
    let problem = json_body(response);
    assert_eq!(problem["status"], status);
    assert_eq!(problem["code"], code, "{problem}");
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[tokio::test]
async fn http_api_binary_upload_and_download_are_byte_exact() {
    let function = Function::start(|_| {}).await;
    let token = cognito_token("rsa-a", "rsa-a", "sub-carol", "carol", json!({}));

    let file = function.upload_fixture(&token, None).await;
    assert_eq!(file["size"], 1040);
    assert_eq!(
        file["sha256"], UPLOAD_SHA256,
        "the base64 body was not decoded exactly: {file}"
    );
    assert_eq!(file["name"], "photo.bin");
    let key = file["key"].as_str().unwrap().to_owned();

    let response = function
        .invoke(event(
            "http-api-v2-download.json",
            &[
                ("TOKEN", &token),
                ("KEY", &key),
                ("SUB", "sub-carol"),
                ("USERNAME", "carol"),
            ],
        ))
        .await;
    assert_eq!(response["statusCode"], 200, "{response}");
    assert_eq!(response["isBase64Encoded"], true, "file bytes must travel as base64");
    let bytes = body_bytes(&response);
    assert_eq!(bytes.len(), 1040);
    assert_eq!(sha256_hex(&bytes), UPLOAD_SHA256);
    let headers = &response["headers"];
    assert_eq!(headers["etag"], format!("\"{UPLOAD_SHA256}\""));
    assert_eq!(headers["content-length"], "1040");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(
        headers["content-disposition"]
            .as_str()
            .unwrap()
            .starts_with("attachment; filename=\"photo.bin\""),
        "{headers}"
    );
    assert_eq!(response["cookies"], json!([]));

    // The account is the user pool's, provisioned by the app from the verified token.
    let me = function.invoke(function.v2("GET", "/auth/me", &token)).await;
    assert_eq!(me["statusCode"], 200, "{me}");
    assert_eq!(json_body(&me)["username"], "cognito:carol");

    // A byte range of the same file: 206 with exactly those bytes.
    let mut ranged = function.v2("GET", &format!("/files/{key}/content"), &token);
    ranged["headers"]["range"] = json!("bytes=250-259");
    let response = function.invoke(ranged).await;
    assert_eq!(response["statusCode"], 206, "{response}");
    assert_eq!(body_bytes(&response), (250u8..=255).chain(0..=3).collect::<Vec<u8>>());
}

#[tokio::test]
async fn a_text_file_in_another_charset_downloads_unchanged() {
    let function = Function::start(|_| {}).await;
    let token = cognito_token("rsa-a", "rsa-a", "sub-carol", "carol", json!({}));
    let latin1 = b"caf\xe9 cr\xe8me br\xfbl\xe9e\n".to_vec();
    let mut upload = function.v2("POST", "/files?fileName=menu.txt", &token);
    upload["headers"]["content-type"] = json!("text/plain; charset=iso-8859-1");
    upload["body"] = json!(STANDARD.encode(&latin1));
    upload["isBase64Encoded"] = json!(true);
    let response = function.invoke(upload).await;
    assert_eq!(response["statusCode"], 201, "{response}");
    let key = json_body(&response)["key"].as_str().unwrap().to_owned();

    let response = function
        .invoke(function.v2("GET", &format!("/files/{key}/content"), &token))
        .await;
    assert_eq!(response["statusCode"], 200, "{response}");
    assert!(
        response["headers"]["content-type"]
            .as_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(
        body_bytes(&response),
        latin1,
        "a text/* download was re-encoded on its way out"
    );
}

#[tokio::test]
async fn the_gateway_authorizer_is_honoured_but_not_trusted() {
    let function = Function::start(|_| {}).await;
    let carol = cognito_token("rsa-a", "rsa-a", "sub-carol", "carol", json!({}));
    function.upload_fixture(&carol, None).await;

    // The authorizer's claims name carol, but there is no token: the claims alone get nobody in.
    let mut bare = event(
        "http-api-v2-download.json",
        &[
            ("TOKEN", "x"),
            ("KEY", "x"),
            ("SUB", "sub-carol"),
            ("USERNAME", "carol"),
        ],
    );
    bare["headers"].as_object_mut().unwrap().remove("authorization");
    bare["rawPath"] = json!("/files");
    let response = function.invoke(bare).await;
    assert_problem_v2(&response, 401, "missing_token");
    assert!(response["headers"]["www-authenticate"].is_string(), "{response}");

    // Tokens the gateway might let through (it checks neither token_use nor who signed a known kid after a key
    // mix-up), each with carol's claims in requestContext: all refused by the app's own verification.
    let forged = [
        (
            "signed by another key under the pool's kid",
            cognito_token("rsa-attacker", "rsa-a", "sub-carol", "carol", json!({})),
        ),
        (
            "an ID token",
            cognito_token(
                "rsa-a",
                "rsa-a",
                "sub-carol",
                "carol",
                json!({"token_use": "id", "aud": CLIENT_ID}),
            ),
        ),
        (
            "another app client",
            cognito_token(
                "rsa-a",
                "rsa-a",
                "sub-carol",
                "carol",
                json!({"client_id": "other-client"}),
            ),
        ),
        (
            "expired",
            cognito_token("rsa-a", "rsa-a", "sub-carol", "carol", json!({"exp": now() - 600})),
        ),
    ];
    for (what, token) in forged {
        let response = function.invoke(function.v2("GET", "/files", &token)).await;
        assert_eq!(response["statusCode"], 401, "{what} was accepted: {response}");
        assert_problem_v2(&response, 401, "invalid_token");
    }

    // And carol's real token lists her file.
    let response = function.invoke(function.v2("GET", "/files", &carol)).await;
    assert_eq!(response["statusCode"], 200);
    assert_eq!(json_body(&response)["files"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn function_url_events_sign_up_sign_in_and_answer() {
    let function = Function::start(|_| {}).await;
    let response = function.invoke(event("function-url-signup.json", &[])).await;
    assert_eq!(response["statusCode"], 201, "{response}");
    assert_eq!(response["headers"]["content-type"], "application/json");
    assert_eq!(response["isBase64Encoded"], false, "our JSON travels as text");

    let response = function.invoke(event("function-url-signin.json", &[])).await;
    assert_eq!(response["statusCode"], 200, "{response}");
    let signin = json_body(&response);
    let token = signin["access_token"].as_str().unwrap();

    let response = function
        .invoke(event("function-url-me.json", &[("TOKEN", token)]))
        .await;
    assert_eq!(response["statusCode"], 200, "{response}");
    assert_eq!(json_body(&response)["username"], "alice");

    // The same password again is a conflict, in problem+json.
    let response = function.invoke(event("function-url-signup.json", &[])).await;
    assert_problem_v2(&response, 409, "username_taken");
}

#[tokio::test]
async fn rest_api_events_through_a_named_stage() {
    let function = Function::start(|_| {}).await;
    let token = cognito_token("rsa-a", "rsa-a", "sub-carol", "carol", json!({}));
    let file = function.upload_fixture(&token, None).await;
    let key = file["key"].as_str().unwrap();

    let rest = |path: &str| {
        event(
            "rest-api-v1-get.json",
            &[
                ("TOKEN", &token),
                ("PATH", path),
                ("PROXY", path.trim_start_matches('/')),
                ("SUB", "sub-carol"),
                ("USERNAME", "carol"),
            ],
        )
    };
    // The path reaches the router without the stage name ("/prod").
    let response = function.invoke(rest("/files")).await;
    assert_eq!(response["statusCode"], 200, "{response}");
    assert_eq!(
        response["multiValueHeaders"]["content-type"],
        json!(["application/json"])
    );
    assert_eq!(
        response["headers"],
        json!({}),
        "payload 1.0 answers in multiValueHeaders only"
    );
    assert_eq!(json_body(&response)["files"][0]["key"], key);

    let response = function.invoke(rest(&format!("/files/{key}/content"))).await;
    assert_eq!(response["statusCode"], 200, "{response}");
    assert_eq!(response["isBase64Encoded"], true);
    assert_eq!(sha256_hex(&body_bytes(&response)), UPLOAD_SHA256);
    assert_eq!(
        response["multiValueHeaders"]["etag"],
        json!([format!("\"{UPLOAD_SHA256}\"")])
    );

    let response = function.invoke(rest("/files/not-a-key")).await;
    assert_eq!(response["statusCode"], 404, "{response}");
    assert_eq!(
        response["multiValueHeaders"]["content-type"],
        json!(["application/problem+json"])
    );
    assert_eq!(json_body(&response)["code"], "file_not_found");
}

#[tokio::test]
async fn errors_are_problem_json() {
    let function = Function::start(|_| {}).await;
    let token = cognito_token("rsa-a", "rsa-a", "sub-carol", "carol", json!({}));
    assert_problem_v2(
        &function.invoke(function.v2("GET", "/no/such/route", &token)).await,
        404,
        "route_not_found",
    );
    assert_problem_v2(
        &function.invoke(function.v2("DELETE", "/healthz", &token)).await,
        405,
        "method_not_allowed",
    );
    let mut malformed = function.v2("POST", "/shares", &token);
    malformed["headers"]["content-type"] = json!("application/json");
    malformed["body"] = json!("{\"files\": [");
    let response = function.invoke(malformed).await;
    assert_eq!(response["statusCode"], 400, "{response}");
    assert_eq!(response["headers"]["content-type"], "application/problem+json");

    // An event that is neither HTTP nor scheduled is an invocation error, not a response.
    let error = function
        .handler
        .handle(LambdaEvent::new(json!({"hello": "world"}), Context::default()))
        .await;
    assert!(error.is_err());
}

#[tokio::test]
async fn responses_beyond_the_lambda_payload_limit_are_refused_with_a_problem() {
    let function = Function::start(|_| {}).await;
    let token = cognito_token("rsa-a", "rsa-a", "sub-carol", "carol", json!({}));
    let big: Vec<u8> = (0..handoff_lambda::MAX_RESPONSE_BODY + 1)
        .map(|i| (i % 251) as u8)
        .collect();
    let mut upload = function.v2("POST", "/files?fileName=big.bin", &token);
    upload["headers"]["content-type"] = json!("application/octet-stream");
    upload["body"] = json!(STANDARD.encode(&big));
    upload["isBase64Encoded"] = json!(true);
    let response = function.invoke(upload).await;
    assert_eq!(response["statusCode"], 201, "{response}");
    let key = json_body(&response)["key"].as_str().unwrap().to_owned();

    let response = function
        .invoke(function.v2("GET", &format!("/files/{key}/content"), &token))
        .await;
    assert_problem_v2(&response, 500, "response_too_large");
    // A range within the limit works.
    let mut ranged = function.v2("GET", &format!("/files/{key}/content"), &token);
    ranged["headers"]["range"] = json!("bytes=0-1048575");
    let response = function.invoke(ranged).await;
    assert_eq!(response["statusCode"], 206);
    assert_eq!(body_bytes(&response), big[..1 << 20]);
}

#[tokio::test]
async fn a_scheduled_event_runs_maintenance() {
    let function = Function::start(|_| {}).await;
    let token = cognito_token("rsa-a", "rsa-a", "sub-carol", "carol", json!({}));
    let file = function
        .upload_fixture(&token, Some("fileName=photo.bin&expires_in=1"))
        .await;
    let key = file["key"].as_str().unwrap().to_owned();
    let kept = function.upload_fixture(&token, None).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;

    let report = function.invoke(event("eventbridge-scheduled.json", &[])).await;
    assert_eq!(report["completed"], true, "{report}");
    assert_eq!(report["maintenance"]["expired_files"], 1, "{report}");
    assert_eq!(report["maintenance"]["reclaimed_uploads"], 0, "{report}");
    assert_eq!(report["maintenance"]["reclaimed_direct_uploads"], 0, "{report}");

    let response = function
        .invoke(function.v2("GET", &format!("/files/{key}/content"), &token))
        .await;
    assert_problem_v2(&response, 404, "file_not_found");
    let response = function.invoke(function.v2("GET", "/files", &token)).await;
    assert_eq!(json_body(&response)["files"][0]["key"], kept["key"]);

    // The expiry is in the audit log already: the pass flushed before it reported done.
    let events = function
        .handler
        .state()
        .meta
        .audit_page(handoff_core::AuditScope::Everything, None, 100)
        .await
        .unwrap();
    assert!(events.iter().any(|e| e.action == "file.expire"), "{events:?}");

    // `aws lambda invoke --payload '{"handoff":"maintenance"}'` runs the same pass.
    let report = function.invoke(json!({"handoff": "maintenance"})).await;
    assert_eq!(report["maintenance"]["expired_files"], 0, "{report}");
}

/// Lambda freezes the process as soon as a response is returned, and may never thaw it. Simulated here by
/// stopping the runtime the invocations ran on: whatever the audit writer still had queued is lost. Every event of
/// an answered request must already be in the store.
#[test]
fn audit_events_are_written_before_the_response_returns() {
    let dir = tempfile::tempdir().unwrap();
    let frozen = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let key = frozen.block_on(async {
        let function = Function::start_in(dir.path(), |_| {}).await;
        let token = cognito_token("rsa-a", "rsa-a", "sub-carol", "carol", json!({}));
        let file = function.upload_fixture(&token, None).await;
        let key = file["key"].as_str().unwrap().to_owned();
        let response = function
            .invoke(function.v2("GET", &format!("/files/{key}/content"), &token))
            .await;
        assert_eq!(response["statusCode"], 200);
        std::mem::forget(function); // never dropped: no graceful flush on the way out either
        key
    });
    frozen.shutdown_background();

    let thawed = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    thawed.block_on(async {
        let config = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        let meta = handoff_server::open_metadata(&config).await.unwrap();
        let events = meta
            .audit_page(handoff_core::AuditScope::Everything, None, 100)
            .await
            .unwrap();
        let actions: Vec<(&str, Option<String>)> = events
            .iter()
            .map(|e| (e.action.as_str(), e.file.as_ref().map(ToString::to_string)))
            .collect();
        assert!(actions.contains(&("file.upload", Some(key.clone()))), "{actions:?}");
        assert!(actions.contains(&("file.download", Some(key.clone()))), "{actions:?}");
    });
}
