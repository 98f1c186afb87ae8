//! External identity with Cognito-shaped tokens: an in-process identity provider (discovery document and JWKS
//! over real HTTP on 127.0.0.1) serving keys made for the tests, tokens signed here with `jsonwebtoken`, and the
//! whole rejection matrix of the issue: every forged, stale or misdirected token is a 401 problem+json.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::Json;
use axum::http::StatusCode as AxumStatus;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use handoff_server::config::{OidcProviderConfig, TokenUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem};

pub const REGION_POOL: &str = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_HandoffT1";
pub const CLIENT_ID: &str = "5tests0client0id0handoff0";

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/api/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The public JWK of a fixture key pair (`rsa-a`, `rsa-b`, `rsa-attacker`, `ec-p256`).
pub fn public_jwk(name: &str) -> Value {
    let all: Value = serde_json::from_str(&fixture("public-jwks.json")).unwrap();
    all[name].clone()
}

/// Signs `claims` with fixture key `key` (its own name is the `kid` unless `header` says otherwise).
pub fn sign_with(key: &str, header: Header, claims: &Value) -> String {
    let pem = fixture(&format!("{key}.pem"));
    let encoding = if key.starts_with("ec") {
        EncodingKey::from_ec_pem(pem.as_bytes()).unwrap()
    } else {
        EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()
    };
    jsonwebtoken::encode(&header, claims, &encoding).unwrap()
}

pub fn rs256(kid: &str) -> Header {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    header
}

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A Cognito user-pool access token's claims: `client_id` and `token_use: access`, no `aud`.
pub fn cognito_access(sub: &str, username: &str) -> Value {
    json!({
        "sub": sub,
        "iss": REGION_POOL,
        "client_id": CLIENT_ID,
        "token_use": "access",
        "scope": "aws.cognito.signin.user.admin",
        "auth_time": now(),
        "iat": now(),
        "exp": now() + 3600,
        "jti": uuid::Uuid::new_v4().to_string(),
        "username": username,
    })
}

/// A Cognito ID token's claims: `aud` is the app client, `token_use: id`.
pub fn cognito_id(sub: &str, username: &str) -> Value {
    json!({
        "sub": sub,
        "iss": REGION_POOL,
        "aud": CLIENT_ID,
        "token_use": "id",
        "auth_time": now(),
        "iat": now(),
        "exp": now() + 3600,
        "cognito:username": username,
        "email": format!("{username}@example.com"),
        "email_verified": true,
    })
}

/// An identity provider on 127.0.0.1: discovery document and JWKS, with switchable keys and outage.
pub struct FakeIdp {
    pub base: String,
    keys: Arc<std::sync::Mutex<Vec<Value>>>,
    jwks_hits: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeIdp {
    /// Serves `keys` (fixture names). The discovery document names `issuer`, or the server's own address.
    pub async fn start(issuer: Option<&str>, keys: &[&str]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let issuer = issuer.map_or_else(|| base.clone(), str::to_owned);
        let keys = Arc::new(std::sync::Mutex::new(
            keys.iter().map(|k| public_jwk(k)).collect::<Vec<_>>(),
        ));
        let jwks_hits = Arc::new(AtomicUsize::new(0));
        let failing = Arc::new(AtomicBool::new(false));
        let discovery = json!({ "issuer": issuer, "jwks_uri": format!("{base}/jwks") });
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                get({
                    let failing = failing.clone();
                    move || async move {
                        if failing.load(Ordering::SeqCst) {
                            Err(AxumStatus::SERVICE_UNAVAILABLE)
                        } else {
                            Ok(Json(discovery))
                        }
                    }
                }),
            )
            .route(
                "/jwks",
                get({
                    let (keys, hits, failing) = (keys.clone(), jwks_hits.clone(), failing.clone());
                    move || async move {
                        hits.fetch_add(1, Ordering::SeqCst);
                        if failing.load(Ordering::SeqCst) {
                            return Err(AxumStatus::SERVICE_UNAVAILABLE);
                        }
                        let keys = keys.lock().unwrap().clone();
                        Ok(Json(json!({ "keys": keys })))
                    }
                }),
            );
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            base,
            keys,
            jwks_hits,
            failing,
            server,
        }
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/jwks", self.base)
    }

    pub fn set_keys(&self, names: &[&str]) {
        *self.keys.lock().unwrap() = names.iter().map(|k| public_jwk(k)).collect();
    }

    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    pub fn jwks_hits(&self) -> usize {
        self.jwks_hits.load(Ordering::SeqCst)
    }
}

impl Drop for FakeIdp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Amazon Cognito as the README configures it: access tokens, app client id, `username`, `cognito:groups`.
pub fn cognito_config(idp: &FakeIdp) -> OidcProviderConfig {
    let mut config = OidcProviderConfig::new("cognito", REGION_POOL, &[CLIENT_ID]);
    // Cognito's real JWKS lives at {issuer}/.well-known/jwks.json; the emulated pool's is elsewhere.
    config.jwks_url = Some(idp.jwks_url());
    config.username_claim = "username".into();
    config.groups_claim = "cognito:groups".into();
    config.admin_group = Some("handoff-admins".into());
    config
}

async fn cognito_app(idp: &FakeIdp) -> TestApp {
    let config = cognito_config(idp);
    TestApp::spawn_with(move |c| c.auth.oidc = vec![config]).await
}

async fn me_ok(app: &TestApp, token: &str) -> Value {
    let response = app.me(token).await;
    assert_eq!(response.status(), StatusCode::OK, "{:?}", response.text().await);
    response.json().await.unwrap()
}

async fn assert_refused(app: &TestApp, token: &str, what: &str) {
    let response = app.me(token).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what} was accepted");
    assert_problem(response, StatusCode::UNAUTHORIZED, "invalid_token").await;
}

#[tokio::test]
async fn cognito_access_token_provisions_an_account_once_keyed_by_issuer_and_sub() {
    let idp = FakeIdp::start(None, &["rsa-a"]).await;
    let app = cognito_app(&idp).await;
    let token = sign_with("rsa-a", rs256("rsa-a"), &cognito_access("sub-alice-1", "Alice"));
    let first = me_ok(&app, &token).await;
    assert_eq!(first["username"], "cognito:alice");
    assert_eq!(first["is_admin"], false);

    // Same (issuer, sub), new token and even a new preferred name: the same account, its name kept stable.
    let renamed = sign_with("rsa-a", rs256("rsa-a"), &cognito_access("sub-alice-1", "alice.renamed"));
    let again = me_ok(&app, &renamed).await;
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["username"], "cognito:alice");

    // A different sub who prefers the same name gets a different account with a suffix.
    let other = sign_with("rsa-a", rs256("rsa-a"), &cognito_access("sub-alice-2", "alice"));
    let second = me_ok(&app, &other).await;
    assert_ne!(second["id"], first["id"]);
    assert_eq!(second["username"], "cognito:alice-2");

    // The external user is a first-class user: uploads and downloads with the provider's token.
    let file = app.upload_ok(&token, "report.txt", b"from cognito".to_vec()).await;
    let download = app.content(&token, file["key"].as_str().unwrap()).await;
    assert_eq!(download.status(), StatusCode::OK);
    assert_eq!(download.bytes().await.unwrap().as_ref(), b"from cognito");

    // And it survives a restart: the link (issuer, sub) → account is persistent.
    let app = app.restart().await;
    assert_eq!(me_ok(&app, &token).await["id"], first["id"]);
}

#[tokio::test]
async fn external_and_local_users_never_collide() {
    let idp = FakeIdp::start(None, &["rsa-a"]).await;
    let app = cognito_app(&idp).await;
    let local = app.user("alice").await;
    let local_file = app.upload_ok(&local.token, "local.txt", b"local".to_vec()).await;

    let token = sign_with("rsa-a", rs256("rsa-a"), &cognito_access("sub-x", "alice"));
    let external = me_ok(&app, &token).await;
    assert_eq!(external["username"], "cognito:alice");
    let local_me: Value = app.me(&local.token).await.json().await.unwrap();
    assert_ne!(external["id"], local_me["id"]);

    // The external alice does not see the local alice's files.
    let listing: Value = app.list(&token, &[]).await.json().await.unwrap();
    assert_eq!(listing["files"].as_array().unwrap().len(), 0, "{listing}");
    let _ = local_file;

    // No one can sign up into the external namespace, nor sign in to an external account with a password.
    let response = app.signup("cognito:bob", "long enough password").await;
    assert_problem(response, StatusCode::BAD_REQUEST, "invalid_username").await;
    let response = app.signin("cognito:alice", "anything at all").await;
    assert_problem(response, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
}

#[tokio::test]
async fn cognito_groups_make_admins_and_follow_the_provider() {
    let idp = FakeIdp::start(None, &["rsa-a"]).await;
    let app = cognito_app(&idp).await;
    let mut claims = cognito_access("sub-admin", "root");
    claims["cognito:groups"] = json!(["staff", "handoff-admins"]);
    let admin = me_ok(&app, &sign_with("rsa-a", rs256("rsa-a"), &claims)).await;
    assert_eq!(admin["is_admin"], true);
    claims["cognito:groups"] = json!(["staff"]);
    let demoted = me_ok(&app, &sign_with("rsa-a", rs256("rsa-a"), &claims)).await;
    assert_eq!(demoted["id"], admin["id"]);
    assert_eq!(demoted["is_admin"], false);
}

#[tokio::test]
async fn cognito_id_tokens_are_accepted_only_when_configured() {
    let idp = FakeIdp::start(None, &["rsa-a"]).await;
    let mut config = cognito_config(&idp);
    config.token_use = TokenUse::Id;
    config.username_claim = "cognito:username".into();
    let app = TestApp::spawn_with(move |c| c.auth.oidc = vec![config]).await;
    let id_token = sign_with("rsa-a", rs256("rsa-a"), &cognito_id("sub-carol", "carol"));
    let me = me_ok(&app, &id_token).await;
    assert_eq!(me["username"], "cognito:carol");
    assert_eq!(me["email"], "carol@example.com");
    // An access token is refused where ID tokens are configured.
    let access = sign_with("rsa-a", rs256("rsa-a"), &cognito_access("sub-carol", "carol"));
    assert_refused(&app, &access, "an access token (ID tokens configured)").await;
}

#[tokio::test]
async fn every_forged_stale_or_misdirected_token_is_refused() {
    let idp = FakeIdp::start(None, &["rsa-a", "ec-p256"]).await;
    let app = cognito_app(&idp).await;
    let good = cognito_access("sub-m", "mallory");
    let valid = sign_with("rsa-a", rs256("rsa-a"), &good);
    me_ok(&app, &valid).await;

    let with = |changes: Value| {
        let mut claims = good.clone();
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        sign_with("rsa-a", rs256("rsa-a"), &claims)
    };
    let parts: Vec<&str> = valid.split('.').collect();
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());

    let mut tampered = good.clone();
    tampered["sub"] = json!("sub-someone-else");
    let mut cases: Vec<(&str, String)> = vec![
        (
            "unsigned (alg none)",
            format!("{}.{}.", b64(&json!({"alg": "none", "kid": "rsa-a"})), parts[1]),
        ),
        (
            "tampered payload",
            format!("{}.{}.{}", parts[0], b64(&tampered), parts[2]),
        ),
        (
            "truncated signature",
            format!("{}.{}.{}", parts[0], parts[1], &parts[2][..parts[2].len() - 8]),
        ),
        ("no signature", format!("{}.{}", parts[0], parts[1])),
        ("expired", with(json!({"exp": now() - 3600}))),
        ("not yet valid", with(json!({"nbf": now() + 3600}))),
        ("string-typed exp", with(json!({"exp": (now() + 3600).to_string()}))),
        ("string-typed nbf", with(json!({"nbf": (now() + 3600).to_string()}))),
        ("missing exp", with(json!({"exp": null}))),
        ("missing sub", with(json!({"sub": null}))),
        ("wrong client_id", with(json!({"client_id": "someone-elses-app"}))),
        ("no client_id and no aud", with(json!({"client_id": null}))),
        (
            "wrong aud, no client_id",
            with(json!({"client_id": null, "aud": "someone-elses-app"})),
        ),
        ("wrong token_use", with(json!({"token_use": "id"}))),
        ("non-string token_use", with(json!({"token_use": ["access"]}))),
        (
            "unconfigured issuer",
            with(json!({"iss": "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Other"})),
        ),
        (
            "issuer with a trailing slash",
            with(json!({"iss": format!("{REGION_POOL}/")})),
        ),
        (
            "our own issuer, signed by someone else",
            with(json!({"iss": "handoff", "aud": "handoff"})),
        ),
    ];
    // An algorithm outside the allow-list, with a key the JWKS does publish (ES256, allow-list RS256).
    let mut es = Header::new(Algorithm::ES256);
    es.kid = Some("ec-p256".into());
    cases.push(("ES256 outside the allow-list", sign_with("ec-p256", es, &good)));
    // HS/RS confusion: HS256 keyed with the RSA public key, in PEM and as the JWK modulus.
    for (what, secret) in [
        ("HS256 keyed with the public PEM", fixture("rsa-a.pub.pem").into_bytes()),
        (
            "HS256 keyed with the modulus",
            public_jwk("rsa-a")["n"].as_str().unwrap().as_bytes().to_vec(),
        ),
    ] {
        let mut hs = Header::new(Algorithm::HS256);
        hs.kid = Some("rsa-a".into());
        let token = jsonwebtoken::encode(&hs, &good, &EncodingKey::from_secret(&secret)).unwrap();
        cases.push((what, token));
    }
    // A key the provider never published, named as if it were one of its keys, or with no kid at all.
    cases.push((
        "attacker key, known kid",
        sign_with("rsa-attacker", rs256("rsa-a"), &good),
    ));
    cases.push((
        "attacker key, no kid",
        sign_with("rsa-attacker", Header::new(Algorithm::RS256), &good),
    ));
    cases.push(("garbage", "not.a.jwt".into()));

    for (what, token) in &cases {
        assert_refused(&app, token, what).await;
    }
    // The valid token still works after all that.
    me_ok(&app, &valid).await;
}

#[tokio::test]
async fn key_location_headers_are_never_followed() {
    let idp = FakeIdp::start(None, &["rsa-a"]).await;
    let attacker = FakeIdp::start(None, &["rsa-attacker"]).await;
    let app = cognito_app(&idp).await;
    let claims = cognito_access("sub-j", "jku");
    let mut header = rs256("rsa-attacker");
    header.jku = Some(attacker.jwks_url());
    header.x5u = Some(attacker.jwks_url());
    let token = sign_with("rsa-attacker", header, &claims);
    assert_refused(&app, &token, "a token whose jku/x5u point at the attacker's keys").await;

    // An embedded `jwk` header carrying the attacker's own public key.
    let mut header = Header::new(Algorithm::RS256);
    header.jwk = Some(serde_json::from_value(public_jwk("rsa-attacker")).unwrap());
    let token = sign_with("rsa-attacker", header, &claims);
    assert_refused(&app, &token, "a token with an embedded jwk").await;
    assert_eq!(attacker.jwks_hits(), 0, "the attacker's key set was fetched");
}

#[tokio::test]
async fn tokens_of_a_disabled_external_user_stop_at_once() {
    let idp = FakeIdp::start(None, &["rsa-a"]).await;
    let app = cognito_app(&idp).await;
    let token = sign_with("rsa-a", rs256("rsa-a"), &cognito_access("sub-d", "dave"));
    me_ok(&app, &token).await;
    let pool = sqlx::SqlitePool::connect(&app.config.database_url()).await.unwrap();
    sqlx::query("UPDATE users SET disabled = 1 WHERE username = 'cognito:dave'")
        .execute(&pool)
        .await
        .unwrap();
    assert_refused(&app, &token, "a disabled user's token").await;
}

#[tokio::test]
async fn without_provisioning_only_linked_identities_get_in() {
    let idp = FakeIdp::start(None, &["rsa-a"]).await;
    let mut config = cognito_config(&idp);
    config.provision = false;
    let app = TestApp::spawn_with(move |c| c.auth.oidc = vec![config]).await;
    let token = sign_with("rsa-a", rs256("rsa-a"), &cognito_access("sub-new", "newcomer"));
    let response = app.me(&token).await;
    assert_problem(response, StatusCode::FORBIDDEN, "account_not_provisioned").await;
}

#[tokio::test]
async fn builtin_accounts_can_be_turned_off() {
    let idp = FakeIdp::start(None, &["rsa-a"]).await;
    let config = cognito_config(&idp);
    let app = TestApp::spawn_with(move |c| {
        c.auth.oidc = vec![config];
        c.auth.builtin_accounts = false;
    })
    .await;
    for response in [
        app.signup("frank", "long enough password").await,
        app.signin("frank", "long enough password").await,
        app.refresh("whatever").await,
    ] {
        assert_problem(response, StatusCode::FORBIDDEN, "builtin_accounts_disabled").await;
    }
    let token = sign_with("rsa-a", rs256("rsa-a"), &cognito_access("sub-g", "grace"));
    assert_eq!(me_ok(&app, &token).await["username"], "cognito:grace");
}

#[tokio::test]
async fn a_local_session_stops_when_builtin_accounts_are_turned_off() {
    let app = TestApp::spawn().await;
    let local = app.user("heidi").await;
    let mut config = app.config.clone();
    config.auth.builtin_accounts = false;
    let app = app_with_config(app, config).await;
    let response = app.me(&local.token).await;
    assert_problem(response, StatusCode::UNAUTHORIZED, "builtin_accounts_disabled").await;
}

/// Restarts `app` on its data directory with a changed configuration.
async fn app_with_config(mut app: TestApp, config: handoff_server::Config) -> TestApp {
    app.config = config;
    app.restart().await
}

#[tokio::test]
async fn rotation_is_picked_up_and_an_outage_keeps_the_last_good_keys() {
    let idp = FakeIdp::start(None, &["rsa-a"]).await;
    let mut config = cognito_config(&idp);
    config.jwks_min_refresh_secs = 0;
    config.jwks_ttl_secs = 0; // every request wants a fresh set: the outage below must not matter
    let app = TestApp::spawn_with(move |c| c.auth.oidc = vec![config]).await;
    let old = sign_with("rsa-a", rs256("rsa-a"), &cognito_access("sub-r", "rita"));
    let id = me_ok(&app, &old).await["id"].clone();

    // The provider rotates: publishes key b next to a, then signs with b. No restart on our side.
    idp.set_keys(&["rsa-a", "rsa-b"]);
    let new = sign_with("rsa-b", rs256("rsa-b"), &cognito_access("sub-r", "rita"));
    assert_eq!(me_ok(&app, &new).await["id"], id);

    // The provider goes down: the keys we have keep working.
    idp.set_failing(true);
    let hits = idp.jwks_hits();
    assert_eq!(me_ok(&app, &new).await["id"], id);
    assert_eq!(me_ok(&app, &old).await["id"], id);
    assert!(idp.jwks_hits() > hits, "the outage was never noticed");
    // A token with a key we never saw cannot be verified during the outage: refused, not accepted.
    assert_refused(
        &app,
        &sign_with("rsa-attacker", rs256("rsa-c"), &cognito_access("sub-r", "rita")),
        "unknown key",
    )
    .await;

    // Back up, with key a retired: a's tokens stop, b's go on.
    idp.set_failing(false);
    idp.set_keys(&["rsa-b"]);
    assert_eq!(me_ok(&app, &new).await["id"], id);
    assert_refused(&app, &old, "a token signed with a retired key").await;
}

#[tokio::test]
async fn unknown_kids_refetch_the_key_set_at_most_once_per_interval() {
    let idp = FakeIdp::start(None, &["rsa-a"]).await;
    let app = cognito_app(&idp).await; // default: at most one refetch a minute
    let valid = sign_with("rsa-a", rs256("rsa-a"), &cognito_access("sub-k", "kim"));
    me_ok(&app, &valid).await;
    let after_first = idp.jwks_hits();
    assert_eq!(after_first, 1);
    for i in 0..20 {
        let forged = sign_with(
            "rsa-attacker",
            rs256(&format!("forged-{i}")),
            &cognito_access("sub-k", "kim"),
        );
        assert_refused(&app, &forged, "a token with a forged kid").await;
    }
    assert!(
        idp.jwks_hits() <= after_first + 1,
        "{} fetches for 20 forged kids",
        idp.jwks_hits()
    );
    me_ok(&app, &valid).await;
}

#[tokio::test]
async fn provider_down_from_the_start_is_a_503_not_a_401() {
    let idp = FakeIdp::start(None, &["rsa-a"]).await;
    idp.set_failing(true);
    let app = cognito_app(&idp).await;
    let token = sign_with("rsa-a", rs256("rsa-a"), &cognito_access("sub-o", "oscar"));
    let response = app.me(&token).await;
    assert_eq!(response.headers()["retry-after"], "30");
    assert_problem(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "identity_provider_unavailable",
    )
    .await;
}

#[tokio::test]
async fn two_providers_each_verify_only_their_own_tokens() {
    let cognito = FakeIdp::start(None, &["rsa-a"]).await;
    // A generic provider found by discovery: its discovery document names its own address as issuer.
    let generic = FakeIdp::start(None, &["rsa-b"]).await;
    let mut keycloak = OidcProviderConfig::new("kc", &generic.base, &["handoff"]);
    keycloak.token_use = TokenUse::Id;
    let cognito_config = cognito_config(&cognito);
    let app = TestApp::spawn_with(move |c| c.auth.oidc = vec![cognito_config, keycloak]).await;

    let kc_claims = json!({
        "iss": generic.base, "sub": "kc-1", "aud": ["handoff", "account"], "exp": now() + 600,
        "iat": now(), "preferred_username": "alice", "email": "alice@example.org",
    });
    let kc = sign_with("rsa-b", rs256("rsa-b"), &kc_claims);
    let kc_user = me_ok(&app, &kc).await;
    assert_eq!(kc_user["username"], "kc:alice");
    let cg = sign_with("rsa-a", rs256("rsa-a"), &cognito_access("kc-1", "alice"));
    let cg_user = me_ok(&app, &cg).await;
    assert_eq!(cg_user["username"], "cognito:alice");
    assert_ne!(
        kc_user["id"], cg_user["id"],
        "same sub at two issuers is two identities"
    );

    // Cognito's key cannot speak for the generic issuer, nor the other way round.
    assert_refused(
        &app,
        &sign_with("rsa-a", rs256("rsa-a"), &kc_claims),
        "kc claims, cognito key",
    )
    .await;
    let mut cross = cognito_access("kc-1", "alice");
    cross["iss"] = json!(generic.base);
    assert_refused(
        &app,
        &sign_with("rsa-b", rs256("rsa-b"), &cross),
        "access token at an id-token issuer",
    )
    .await;
}

#[tokio::test]
async fn misconfigured_providers_stop_the_start() {
    let base = |name: &str, issuer: &str| OidcProviderConfig::new(name, issuer, &["client"]);
    let mut hs = base("hs", "https://idp.example");
    hs.algorithms = vec!["HS256".into()];
    let mut no_aud = base("x", "https://idp.example");
    no_aud.audiences.clear();
    let bad: Vec<Vec<OidcProviderConfig>> = vec![
        vec![base("Bad Name", "https://idp.example")],
        vec![base("a", "https://one.example"), base("a", "https://two.example")],
        vec![base("a", "https://one.example"), base("b", "https://one.example")],
        vec![base("own", "handoff")],
        vec![base("ftp", "ftp://idp.example")],
        vec![hs],
        vec![no_aud],
    ];
    for providers in bad {
        let dir = tempfile::tempdir().unwrap();
        let mut config = handoff_server::Config {
            data_dir: dir.path().to_path_buf(),
            ..handoff_server::Config::default()
        };
        config.auth.oidc = providers.clone();
        let result = handoff_server::AppState::build(config).await;
        assert!(result.is_err(), "accepted {providers:?}");
    }
}

#[tokio::test]
async fn migrate_storage_keeps_external_identities_and_api_tokens() {
    let idp = FakeIdp::start(None, &["rsa-a"]).await;
    let mut app = cognito_app(&idp).await;
    let token = sign_with("rsa-a", rs256("rsa-a"), &cognito_access("sub-mig", "miguel"));
    let me = me_ok(&app, &token).await;
    let file = app.upload_ok(&token, "kept.txt", b"kept".to_vec()).await;
    let created: Value = app
        .client
        .post(app.url("/auth/tokens"))
        .bearer_auth(&token)
        .json(&json!({ "name": "script", "scope": "read_only" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let api_token = created["token"].as_str().unwrap().to_owned();
    app.stop().await;

    let target = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", target.path().join("moved.db").display());
    let storage = format!("file://{}", target.path().join("storage").display());
    let stores = handoff_server::migrate::Stores::open(&app.config, &database, &storage)
        .await
        .unwrap();
    stores.migrate(&mut |_| {}).await.unwrap();
    drop(stores);

    let config = cognito_config(&idp);
    let moved = TestApp::spawn_with(move |c| {
        c.database_url = Some(database);
        c.storage_url = Some(storage);
        c.auth.oidc = vec![config];
    })
    .await;
    let again = me_ok(&moved, &token).await;
    assert_eq!(
        again["id"], me["id"],
        "the provider's user got a new account on the target"
    );
    assert_eq!(again["username"], "cognito:miguel");
    let download = moved.content(&api_token, file["key"].as_str().unwrap()).await;
    assert_eq!(download.status(), StatusCode::OK);
    assert_eq!(download.bytes().await.unwrap().as_ref(), b"kept");
}
