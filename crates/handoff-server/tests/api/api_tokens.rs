//! API tokens: created once (secret shown once), listed without secrets, revoked at once, scoped, bounded.
//! Runs on every backend (SQLite + local, and PostgreSQL + S3 when configured).

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, all_backends, assert_problem};

async fn create(app: &TestApp, bearer: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url("/auth/tokens"))
        .bearer_auth(bearer)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn create_ok(app: &TestApp, bearer: &str, name: &str, scope: &str) -> Value {
    let response = create(
        app,
        bearer,
        json!({ "name": name, "scope": scope, "expires_in_days": 7 }),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["cache-control"], "no-store");
    response.json().await.unwrap()
}

async fn list(app: &TestApp, bearer: &str) -> reqwest::Response {
    app.client
        .get(app.url("/auth/tokens"))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap()
}

async fn revoke(app: &TestApp, bearer: &str, id: &str) -> reqwest::Response {
    app.client
        .delete(app.url(&format!("/auth/tokens/{id}")))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_token_is_shown_once_listed_without_its_secret_and_revoked_at_once() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        let alice = app.user("alice").await;
        let created = create_ok(&app, &alice.token, "ci upload job", "full").await;
        let secret = created["token"].as_str().unwrap().to_owned();
        assert!(secret.starts_with("hnd_") && secret.len() >= 4 + 43, "{secret}");
        assert_eq!(created["scope"], "full");
        assert_eq!(created["expired"], false);

        // Usable as a bearer token anywhere.
        let me: Value = app.me(&secret).await.json().await.unwrap();
        assert_eq!(me["username"], "alice");
        let file = app.upload_ok(&secret, "build.tar", b"artifact".to_vec()).await;
        let got = app.content(&alice.token, file["key"].as_str().unwrap()).await;
        assert_eq!(got.bytes().await.unwrap().as_ref(), b"artifact");

        // Listed, never with the secret, and marked used.
        let listing = list(&app, &alice.token).await;
        assert_eq!(listing.status(), StatusCode::OK);
        let text = listing.text().await.unwrap();
        assert!(!text.contains(&secret[4..]), "the secret is listed");
        let listing: Value = serde_json::from_str(&text).unwrap();
        let tokens = listing["tokens"].as_array().unwrap();
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens[0]["id"], created["id"]);
        assert_eq!(tokens[0]["name"], "ci upload job");
        assert!(tokens[0]["last_used_at"].is_string(), "{listing}");
        assert!(tokens[0].get("token").is_none());

        // Another user can neither see nor revoke it.
        let bob = app.user("bob").await;
        let theirs: Value = list(&app, &bob.token).await.json().await.unwrap();
        assert_eq!(theirs["tokens"].as_array().unwrap().len(), 0);
        let response = revoke(&app, &bob.token, created["id"].as_str().unwrap()).await;
        assert_problem(response, StatusCode::NOT_FOUND, "api_token_not_found").await;
        assert_eq!(app.me(&secret).await.status(), StatusCode::OK);

        // Revoked: the very next request fails, and it survives a restart revoked.
        let response = revoke(&app, &alice.token, created["id"].as_str().unwrap()).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        assert_problem(app.me(&secret).await, StatusCode::UNAUTHORIZED, "invalid_token").await;
        let response = revoke(&app, &alice.token, created["id"].as_str().unwrap()).await;
        assert_problem(response, StatusCode::NOT_FOUND, "api_token_not_found").await;
        let response = revoke(&app, &alice.token, "not-a-uuid").await;
        assert_problem(response, StatusCode::NOT_FOUND, "api_token_not_found").await;

        let kept = create_ok(&app, &alice.token, "kept", "read_only").await;
        let app = app.restart().await;
        assert_problem(app.me(&secret).await, StatusCode::UNAUTHORIZED, "invalid_token").await;
        assert_eq!(app.me(kept["token"].as_str().unwrap()).await.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn scopes_are_enforced_on_every_route() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let existing = app.upload_ok(&alice.token, "old.txt", b"old".to_vec()).await;
    let key = existing["key"].as_str().unwrap();
    let read = create_ok(&app, &alice.token, "reader", "read_only").await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let upload = create_ok(&app, &alice.token, "uploader", "upload_only").await["token"]
        .as_str()
        .unwrap()
        .to_owned();

    // read_only: reads work, nothing that writes does.
    assert_eq!(app.list(&read, &[]).await.status(), StatusCode::OK);
    assert_eq!(app.content(&read, key).await.status(), StatusCode::OK);
    assert_eq!(app.metadata(&read, key).await.status(), StatusCode::OK);
    for response in [
        app.upload(&read, "new.txt", b"x".to_vec()).await,
        app.patch(&read, key, json!({ "name": "renamed.txt" })).await,
        app.delete(&read, key).await,
        create(&app, &read, json!({ "name": "more", "scope": "full" })).await,
        revoke(&app, &read, "00000000-0000-0000-0000-000000000000").await,
    ] {
        assert_eq!(
            response.headers()["www-authenticate"],
            r#"Bearer realm="handoff", error="insufficient_scope""#
        );
        assert_problem(response, StatusCode::FORBIDDEN, "insufficient_scope").await;
    }

    // upload_only: uploads work; it cannot read, list, change, delete, or mint tokens.
    let uploaded = app.upload_ok(&upload, "drop.bin", b"dropped".to_vec()).await;
    for response in [
        app.list(&upload, &[]).await,
        app.content(&upload, key).await,
        app.content(&upload, uploaded["key"].as_str().unwrap()).await,
        app.origin_download(&upload, key).await,
        app.metadata(&upload, key).await,
        app.patch(&upload, key, json!({ "visibility": "private" })).await,
        app.delete(&upload, key).await,
        app.me(&upload).await,
        list(&app, &upload).await,
        create(&app, &upload, json!({ "name": "escalate", "scope": "full" })).await,
    ] {
        assert_problem(response, StatusCode::FORBIDDEN, "insufficient_scope").await;
    }

    // Nothing the restricted tokens tried changed anything.
    let meta: Value = app.metadata(&alice.token, key).await.json().await.unwrap();
    assert_eq!(meta["name"], "old.txt");
    assert_eq!(meta["visibility"], "key");
    let tokens: Value = list(&app, &alice.token).await.json().await.unwrap();
    assert_eq!(tokens["tokens"].as_array().unwrap().len(), 2);

    // A full-scope token may manage tokens.
    let full = create_ok(&app, &alice.token, "admin script", "full").await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let child = create(&app, &full, json!({ "name": "child", "scope": "read_only" })).await;
    assert_eq!(child.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn expiry_is_checked_on_every_request_and_requests_are_validated() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bad = [
        json!({ "name": "", "scope": "full" }),
        json!({ "name": "x".repeat(101), "scope": "full" }),
        json!({ "name": "a\nb", "scope": "full" }),
        json!({ "name": "n", "scope": "admin" }),
        json!({ "name": "n", "scope": "full", "expires_in_days": 0 }),
        json!({ "name": "n", "scope": "full", "expires_in_days": 10_000 }),
        json!({ "name": "n", "scope": "full", "expires_at": "2001-01-01T00:00:00Z" }),
        json!({ "name": "n", "scope": "full", "expires_at": "2999-01-01T00:00:00Z" }),
        json!({ "name": "n", "scope": "full", "expires_in_days": 1, "expires_at": "2999-01-01T00:00:00Z" }),
        json!({ "name": "n", "scope": "full", "owner": "bob" }),
    ];
    for body in bad {
        let response = create(&app, &alice.token, body.clone()).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
    }

    let soon = (time::OffsetDateTime::now_utc() + time::Duration::seconds(2))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let response = create(
        &app,
        &alice.token,
        json!({ "name": "short", "scope": "full", "expires_at": soon }),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let short: Value = response.json().await.unwrap();
    let secret = short["token"].as_str().unwrap();
    assert_eq!(app.me(secret).await.status(), StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_problem(app.me(secret).await, StatusCode::UNAUTHORIZED, "invalid_token").await;
    let listing: Value = list(&app, &alice.token).await.json().await.unwrap();
    assert_eq!(listing["tokens"][0]["expired"], true);

    // Forged and malformed secrets.
    for forged in [
        "hnd_",
        "hnd_short",
        &format!("hnd_{}", "A".repeat(43)),
        &format!("{secret}x"),
    ] {
        assert_problem(app.me(forged).await, StatusCode::UNAUTHORIZED, "invalid_token").await;
    }
}

#[tokio::test]
async fn tokens_per_user_are_limited_and_die_with_a_disabled_account() {
    let app = TestApp::spawn_with(|c| c.auth.api_tokens.max_per_user = 3).await;
    let alice = app.user("alice").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(create_ok(&app, &alice.token, &format!("t{i}"), "read_only").await);
    }
    let response = create(&app, &alice.token, json!({ "name": "one too many", "scope": "full" })).await;
    assert_problem(response, StatusCode::CONFLICT, "api_token_limit").await;
    // Revoking one frees a place.
    assert_eq!(
        revoke(&app, &alice.token, ids[0]["id"].as_str().unwrap())
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let last = create_ok(&app, &alice.token, "replacement", "full").await;
    let secret = last["token"].as_str().unwrap();
    assert_eq!(app.me(secret).await.status(), StatusCode::OK);

    let pool = sqlx::SqlitePool::connect(&app.config.database_url()).await.unwrap();
    sqlx::query("UPDATE users SET disabled = 1 WHERE username = 'alice'")
        .execute(&pool)
        .await
        .unwrap();
    assert_problem(app.me(secret).await, StatusCode::UNAUTHORIZED, "invalid_token").await;
}

#[tokio::test]
async fn concurrent_creation_never_exceeds_the_limit() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |c| c.auth.api_tokens.max_per_user = 5).await;
        let alice = app.user("alice").await;
        let attempts = (0..20).map(|i| create(&app, &alice.token, json!({ "name": format!("t{i}"), "scope": "full" })));
        let statuses: Vec<StatusCode> = futures::future::join_all(attempts)
            .await
            .iter()
            .map(reqwest::Response::status)
            .collect();
        assert_eq!(
            statuses.iter().filter(|s| **s == StatusCode::CREATED).count(),
            5,
            "{statuses:?}"
        );
        assert_eq!(
            statuses.iter().filter(|s| **s == StatusCode::CONFLICT).count(),
            15,
            "{statuses:?}"
        );
    }
}
