//! Accounts and tokens through HTTP: sign-up rules, sign-in, refresh rotation and reuse detection, sign-out,
//! JWKS, and problem+json for malformed requests.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem};

#[tokio::test]
async fn signup_signin_and_me() {
    let app = TestApp::spawn().await;
    let response = app.signup("Alice", "correct horse").await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let account: Value = response.json().await.unwrap();
    assert_eq!(
        account["username"], "alice",
        "usernames are case-insensitive and stored lower-case"
    );
    assert!(account.get("password_hash").is_none());

    let response = app.signin("ALICE", "correct horse").await;
    assert_eq!(response.status(), StatusCode::OK);
    let tokens: Value = response.json().await.unwrap();
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 900);
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(access.split('.').count(), 3, "a JWT");
    assert!(tokens["refresh_token"].as_str().is_some_and(|t| t.len() >= 43));

    let me: Value = app.me(access).await.json().await.unwrap();
    assert_eq!(me["username"], "alice");
    assert_eq!(me["id"], account["id"]);
}

#[tokio::test]
async fn duplicate_usernames_conflict_case_insensitively() {
    let app = TestApp::spawn().await;
    assert_eq!(app.signup("bob", "password one").await.status(), StatusCode::CREATED);
    assert_problem(
        app.signup("bob", "password two").await,
        StatusCode::CONFLICT,
        "username_taken",
    )
    .await;
    assert_problem(
        app.signup("BOB", "password two").await,
        StatusCode::CONFLICT,
        "username_taken",
    )
    .await;
}

#[tokio::test]
async fn signup_rules_are_enforced() {
    let app = TestApp::spawn().await;
    for bad in ["ab", "-bob", "bob smith", "bob/../x", &"a".repeat(33), ""] {
        assert_problem(
            app.signup(bad, "long enough").await,
            StatusCode::BAD_REQUEST,
            "invalid_username",
        )
        .await;
    }
    assert_problem(
        app.signup("carol", "short").await,
        StatusCode::BAD_REQUEST,
        "invalid_password",
    )
    .await;
    let huge = "x".repeat(1025);
    assert_problem(
        app.signup("carol", &huge).await,
        StatusCode::BAD_REQUEST,
        "invalid_password",
    )
    .await;
    let response = app
        .client
        .post(app.url("/auth/signup"))
        .json(&json!({"username": "carol", "password": "long enough", "email": "not an email"}))
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::BAD_REQUEST, "invalid_email").await;
    let response = app
        .client
        .post(app.url("/auth/signup"))
        .json(&json!({"username": "carol", "password": "long enough", "is_admin": true}))
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::BAD_REQUEST, "invalid_body").await;
}

#[tokio::test]
async fn signup_can_be_disabled() {
    let app = TestApp::spawn_with(|c| c.auth.signup_enabled = false).await;
    assert_problem(
        app.signup("dave", "long enough").await,
        StatusCode::FORBIDDEN,
        "signup_disabled",
    )
    .await;
}

#[tokio::test]
async fn wrong_password_and_unknown_user_look_the_same() {
    let app = TestApp::spawn().await;
    app.user("erin").await;
    let wrong = assert_problem(
        app.signin("erin", "not the password").await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    let unknown = assert_problem(
        app.signin("nobody", "not the password").await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    assert_eq!(wrong, unknown);
    let invalid_name = assert_problem(
        app.signin("!!", "whatever1").await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    assert_eq!(wrong, invalid_name);
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let app = TestApp::spawn().await;
    let user = app.user("frank").await;

    let response = app.refresh(&user.refresh_token).await;
    assert_eq!(response.status(), StatusCode::OK);
    let rotated: Value = response.json().await.unwrap();
    let second = rotated["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(second, user.refresh_token);
    assert_eq!(
        app.me(rotated["access_token"].as_str().unwrap()).await.status(),
        StatusCode::OK
    );

    // The first token is spent: presenting it again is treated as theft.
    assert_problem(
        app.refresh(&user.refresh_token).await,
        StatusCode::UNAUTHORIZED,
        "refresh_token_reused",
    )
    .await;
    // ...and the legitimate successor is revoked with the whole family.
    assert_problem(
        app.refresh(&second).await,
        StatusCode::UNAUTHORIZED,
        "invalid_refresh_token",
    )
    .await;

    // A separate sign-in is a separate family and still works.
    let other = app.signin("frank", &user.password).await.json::<Value>().await.unwrap();
    assert_eq!(
        app.refresh(other["refresh_token"].as_str().unwrap()).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn signout_revokes_the_refresh_token() {
    let app = TestApp::spawn().await;
    let user = app.user("grace").await;
    assert_eq!(app.signout(&user.refresh_token).await.status(), StatusCode::NO_CONTENT);
    assert_problem(
        app.refresh(&user.refresh_token).await,
        StatusCode::UNAUTHORIZED,
        "invalid_refresh_token",
    )
    .await;
    // Idempotent, and unknown tokens give nothing away.
    assert_eq!(app.signout(&user.refresh_token).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.signout("garbage").await.status(), StatusCode::NO_CONTENT);
    assert_problem(
        app.refresh("garbage").await,
        StatusCode::UNAUTHORIZED,
        "invalid_refresh_token",
    )
    .await;
}

#[tokio::test]
async fn jwks_publishes_the_key_that_signs_tokens() {
    let app = TestApp::spawn().await;
    let user = app.user("heidi").await;
    let jwks: Value = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let header = jsonwebtoken::decode_header(&user.token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    let kid = header.kid.expect("kid");
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .expect("signing key published");
    assert_eq!(key["kty"], "OKP");
    assert_eq!(key["crv"], "Ed25519");
    assert!(key.get("d").is_none(), "no private part");
    let decoding = jsonwebtoken::DecodingKey::from_ed_components(key["x"].as_str().unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&["handoff"]);
    validation.set_issuer(&["handoff"]);
    let claims = jsonwebtoken::decode::<Value>(&user.token, &decoding, &validation).expect("verifies with JWKS");
    let ttl = claims.claims["exp"].as_i64().unwrap() - claims.claims["iat"].as_i64().unwrap();
    assert_eq!(ttl, 900, "access tokens live 15 minutes by default");
}

#[tokio::test]
async fn signing_keys_and_accounts_survive_a_restart() {
    let app = TestApp::spawn().await;
    let user = app.user("ivan").await;
    let app = app.restart().await;
    assert_eq!(
        app.me(&user.token).await.status(),
        StatusCode::OK,
        "old access token still verifies"
    );
    assert_eq!(app.signin("ivan", &user.password).await.status(), StatusCode::OK);
    assert_eq!(app.refresh(&user.refresh_token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn malformed_requests_get_problem_json() {
    let app = TestApp::spawn().await;
    let post = |body: &'static str, content_type: Option<&'static str>| {
        let mut request = app.client.post(app.url("/auth/signin")).body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        request.send()
    };
    assert_problem(
        post("{oops", Some("application/json")).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "malformed_json",
    )
    .await;
    assert_problem(
        post(r#"{"username": 5}"#, Some("application/json")).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_body",
    )
    .await;
    assert_problem(
        post(r#"{"username":"a","password":"b"}"#, None).await.unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    let huge = format!(r#"{{"username":"a","password":"{}"}}"#, "x".repeat(100_000));
    let response = app
        .client
        .post(app.url("/auth/signin"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large").await;

    assert_problem(
        app.client.get(app.url("/no/such/route")).send().await.unwrap(),
        StatusCode::NOT_FOUND,
        "route_not_found",
    )
    .await;
    assert_problem(
        app.client.put(app.url("/auth/signin")).send().await.unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
}

#[tokio::test]
async fn health_and_readiness() {
    let app = TestApp::spawn().await;
    for path in ["/healthz", "/readyz"] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.json::<Value>().await.unwrap()["status"], "ok");
    }
}

#[tokio::test]
async fn concurrent_signups_all_succeed() {
    let app = TestApp::spawn().await;
    let results = futures::future::join_all((0..20).map(|i| {
        let app = &app;
        async move { app.signup(&format!("user{i:02}"), "a fine password").await.status() }
    }))
    .await;
    assert!(results.iter().all(|s| *s == StatusCode::CREATED), "{results:?}");
}
