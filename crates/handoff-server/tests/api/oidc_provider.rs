//! Against a real OpenID provider: PyPI's `oidc-provider-mock` (authlib underneath), started by the test as a
//! process on 127.0.0.1. Handoff discovers its JWKS from `/.well-known/openid-configuration`, accepts the ID
//! tokens it issues through the authorization-code flow, keeps the last good keys while it is down, and picks
//! up its new key after it comes back with one (a rotation), without a restart.
//!
//! `.ci/run` installs the provider; with `CI` set a missing provider fails the test, locally it skips.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use handoff_server::config::{OidcProviderConfig, TokenUse};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem};

const CLIENT_ID: &str = "handoff-test";

/// The provider's executable: `HANDOFF_TEST_OIDC_PROVIDER_MOCK`, else `oidc-provider-mock` on `PATH`.
fn executable() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("HANDOFF_TEST_OIDC_PROVIDER_MOCK") {
        return Some(PathBuf::from(path));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("oidc-provider-mock"))
        .find(|p| p.is_file())
}

fn required_executable() -> Option<PathBuf> {
    let found = executable().filter(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "oidc-provider-mock is required when CI is set (.ci/run installs it and sets \
             HANDOFF_TEST_OIDC_PROVIDER_MOCK)"
        );
        eprintln!("skipping: oidc-provider-mock not found (pip install oidc-provider-mock, or run .ci/run)");
    }
    found
}

struct Provider {
    exe: PathBuf,
    port: u16,
    child: Option<tokio::process::Child>,
    http: reqwest::Client,
}

impl Provider {
    async fn start(exe: PathBuf) -> Self {
        handoff_server::install_tls_provider();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut provider = Self {
            exe,
            port,
            child: None,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        };
        provider.launch().await;
        provider
    }

    fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the process (a fresh one has a fresh signing key) and waits until discovery answers.
    async fn launch(&mut self) {
        let child = tokio::process::Command::new(&self.exe)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.exe.display()));
        self.child = Some(child);
        let url = format!("{}/.well-known/openid-configuration", self.issuer());
        for _ in 0..300 {
            if let Ok(response) = self.http.get(&url).send().await
                && response.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("oidc-provider-mock did not answer on {url}");
    }

    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
            child.wait().await.unwrap();
        }
    }

    /// Signs `sub` in through the authorization-code flow, as a browser and an app would, and returns the ID
    /// token. `claims` become the user's claims at the provider.
    async fn id_token(&self, sub: &str, claims: Value, client_id: &str) -> String {
        let base = self.issuer();
        let response = self
            .http
            .put(format!("{base}/users/{sub}"))
            .json(&claims)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let redirect_uri = "http://localhost/callback";
        let response = self
            .http
            .post(format!("{base}/oauth2/authorize"))
            .query(&[
                ("client_id", client_id),
                ("redirect_uri", redirect_uri),
                ("response_type", "code"),
                ("scope", "openid profile email"),
                ("state", "s"),
            ])
            .form(&[("sub", sub)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FOUND);
        let location = url::Url::parse(response.headers()["location"].to_str().unwrap()).unwrap();
        let code = location
            .query_pairs()
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
            .expect("authorization code");
        let tokens: Value = self
            .http
            .post(format!("{base}/oauth2/token"))
            .basic_auth(client_id, Some("client-secret"))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", redirect_uri),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tokens["id_token"].as_str().expect("id_token").to_owned()
    }
}

fn alice_claims() -> Value {
    json!({
        "preferred_username": "Alice",
        "email": "alice@example.com",
        "groups": ["staff", "handoff-admins"],
    })
}

#[tokio::test]
async fn real_provider_discovery_outage_and_rotation() {
    let Some(exe) = required_executable() else {
        return;
    };
    let mut provider = Provider::start(exe).await;
    let mut config = OidcProviderConfig::new("mock", &provider.issuer(), &[CLIENT_ID]);
    config.token_use = TokenUse::Id;
    config.admin_group = Some("handoff-admins".into());
    config.jwks_ttl_secs = 1;
    config.jwks_min_refresh_secs = 1;
    let app = TestApp::spawn_with(move |c| c.auth.oidc = vec![config]).await;

    // Discovery → JWKS → verified ID token → provisioned account.
    let first = provider.id_token("alice-sub", alice_claims(), CLIENT_ID).await;
    let response = app.me(&first).await;
    assert_eq!(response.status(), StatusCode::OK);
    let me: Value = response.json().await.unwrap();
    assert_eq!(me["username"], "mock:alice");
    assert_eq!(me["email"], "alice@example.com");
    assert_eq!(me["is_admin"], true);
    let file = app.upload_ok(&first, "hello.txt", b"hello".to_vec()).await;

    // A token the provider issued to another client is not for us.
    let foreign = provider.id_token("alice-sub", alice_claims(), "another-app").await;
    assert_problem(app.me(&foreign).await, StatusCode::UNAUTHORIZED, "invalid_token").await;

    // Outage: the provider is gone, the key set's TTL passes, and its tokens still work on the last good keys.
    provider.stop().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let response = app.content(&first, file["key"].as_str().unwrap()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await.unwrap().as_ref(), b"hello");

    // It comes back with a new signing key (a rotation, and its tokens carry no `kid`): picked up at once.
    provider.launch().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = provider.id_token("alice-sub", alice_claims(), CLIENT_ID).await;
    let response = app.me(&second).await;
    assert_eq!(response.status(), StatusCode::OK);
    let again: Value = response.json().await.unwrap();
    assert_eq!(again["id"], me["id"], "the same (issuer, sub) is the same account");
    // The retired key is gone from the set: tokens it signed stop working.
    assert_problem(app.me(&first).await, StatusCode::UNAUTHORIZED, "invalid_token").await;
    provider.stop().await;
}
