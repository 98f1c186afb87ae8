//! Token attacks (RFC 8725): every forged, tampered, confused or out-of-date token gets `401` with a Bearer
//! challenge. Tokens with arbitrary claims are signed with the server's real key (read from its metadata store),
//! so each test isolates one claim check.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem};

struct Forge {
    kid: String,
    key: EncodingKey,
    public_raw: Vec<u8>,
}

async fn forge(app: &TestApp) -> Forge {
    let keys = app.state.meta.signing_keys().await.unwrap();
    let newest = keys.first().expect("a signing key");
    Forge {
        kid: newest.kid.clone(),
        key: EncodingKey::from_ed_der(&newest.private_der),
        public_raw: newest.public_raw.clone(),
    }
}

impl Forge {
    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

async fn assert_rejected(app: &TestApp, token: &str, why: &str) {
    let response = app.me(token).await;
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(challenge.starts_with("Bearer"), "{why}: challenge {challenge:?}");
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{why}: {body}");
    assert_eq!(body["code"], "invalid_token", "{why}");
}

#[tokio::test]
async fn well_formed_forged_claims_are_checked_one_by_one() {
    let app = TestApp::spawn().await;
    app.user("alice").await;
    let me: Value = app.me(&app.user("bob").await.token).await.json().await.unwrap();
    let sub = me["id"].as_str().unwrap().to_owned();
    let forge = forge(&app).await;
    let good = json!({"iss": "handoff", "aud": "handoff", "sub": sub, "iat": now(), "nbf": now(), "exp": now() + 600, "jti": "5f1d1c52-4b1f-4c8e-9d0e-1f1f1f1f1f1f"});
    assert_eq!(
        app.me(&forge.sign(&good)).await.status(),
        StatusCode::OK,
        "the control token must pass"
    );

    let with = |key: &str, value: Value| {
        let mut claims = good.clone();
        claims[key] = value;
        claims
    };
    let without = |key: &str| {
        let mut claims = good.clone();
        claims.as_object_mut().unwrap().remove(key);
        claims
    };
    let cases = [
        (with("exp", json!(now() - 120)), "expired"),
        (with("exp", json!((now() + 600).to_string())), "string exp"),
        (with("nbf", json!(now() + 600)), "not yet valid"),
        (
            with("nbf", json!((now() + 600).to_string())),
            "string nbf in the future",
        ),
        (with("iss", json!("https://evil.example")), "wrong issuer"),
        (with("aud", json!("another-service")), "wrong audience"),
        (
            with("sub", json!("00000000-0000-0000-0000-000000000000")),
            "unknown user",
        ),
        (with("sub", json!("not-a-uuid")), "malformed subject"),
        (without("exp"), "no exp"),
        (without("iss"), "no iss"),
        (without("aud"), "no aud"),
        (without("sub"), "no sub"),
    ];
    for (claims, why) in cases {
        assert_rejected(&app, &forge.sign(&claims), why).await;
    }
}

#[tokio::test]
async fn forged_and_confused_tokens_are_rejected() {
    let app = TestApp::spawn().await;
    let user = app.user("carol").await;
    let forge = forge(&app).await;
    let parts: Vec<&str> = user.token.split('.').collect();
    let payload: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();

    // alg: none, with and without a trailing signature.
    let none = b64(&json!({"alg": "none", "typ": "JWT"}));
    assert_rejected(&app, &format!("{none}.{}.", parts[1]), "alg none").await;
    assert_rejected(&app, &format!("{none}.{}", parts[1]), "alg none, two parts").await;

    // HS256 keyed with the public key (algorithm confusion), raw and as its base64 text.
    for secret in [
        forge.public_raw.clone(),
        URL_SAFE_NO_PAD.encode(&forge.public_raw).into_bytes(),
    ] {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(forge.kid.clone());
        let token = jsonwebtoken::encode(&header, &payload, &EncodingKey::from_secret(&secret)).unwrap();
        assert_rejected(&app, &token, "HS256 with the public key").await;
    }

    // Tampered payload with the original signature: promote to another subject.
    let mut tampered = payload.clone();
    tampered["sub"] = json!("00000000-0000-0000-0000-000000000001");
    assert_rejected(
        &app,
        &format!("{}.{}.{}", parts[0], b64(&tampered), parts[2]),
        "tampered payload",
    )
    .await;

    // Tampered signature.
    let mut signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    signature[0] ^= 1;
    let token = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(signature));
    assert_rejected(&app, &token, "tampered signature").await;

    // Truncated and junk.
    assert_rejected(&app, &user.token[..user.token.len() - 10], "truncated").await;
    assert_rejected(&app, "not-a-jwt", "junk").await;
    assert_rejected(&app, &"a".repeat(10_000), "oversized").await;

    // Our own key pair is only trusted by kid: an attacker's key in `jwk`/`jku` headers or an unknown kid fails.
    let attacker = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let attacker_der = ed25519_dalek::pkcs8::EncodePrivateKey::to_pkcs8_der(&attacker).unwrap();
    let attacker_key = EncodingKey::from_ed_der(attacker_der.as_bytes());
    for kid in [None, Some("unknown-kid".to_owned()), Some(forge.kid.clone())] {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = kid.clone();
        header.jku = Some("http://127.0.0.1:1/jwks.json".into());
        let token = jsonwebtoken::encode(&header, &payload, &attacker_key).unwrap();
        assert_rejected(&app, &token, &format!("attacker key, kid {kid:?}")).await;
    }
}

#[tokio::test]
async fn missing_and_malformed_authorization_headers() {
    let app = TestApp::spawn().await;
    let response = app.client.get(app.url("/auth/me")).send().await.unwrap();
    let challenge = response.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert_eq!(challenge, r#"Bearer realm="handoff""#);
    assert_problem(response, StatusCode::UNAUTHORIZED, "missing_token").await;

    let user = app.user("dave").await;
    for value in [
        format!("Basic {}", user.token),
        "Bearer".into(),
        "Bearer ".into(),
        user.token.clone(),
    ] {
        let response = app
            .client
            .get(app.url("/auth/me"))
            .header("authorization", value)
            .send()
            .await
            .unwrap();
        assert_problem(response, StatusCode::UNAUTHORIZED, "invalid_token").await;
    }
    let lower = app
        .client
        .get(app.url("/auth/me"))
        .header("authorization", format!("bearer {}", user.token))
        .send()
        .await
        .unwrap();
    assert_eq!(lower.status(), StatusCode::OK, "the scheme is case-insensitive");
    // Every protected route challenges the same way.
    for path in ["/files", "/files/abc", "/files/abc/content"] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_problem(response, StatusCode::UNAUTHORIZED, "missing_token").await;
    }
}
