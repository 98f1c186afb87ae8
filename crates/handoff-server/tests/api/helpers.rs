//! `TestApp`: a Handoff server on an ephemeral port with its own data directory, and one method per endpoint.

use std::path::{Path, PathBuf};

use handoff_server::{AppState, Config};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Where a test server keeps its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The self-hosted default: SQLite and a local directory.
    Embedded,
    /// The scaled-out deployment: PostgreSQL and S3 (a real SigV4-checking server, in-process).
    Scaled,
    /// The serverless deployment's stores: DynamoDB (moto's server) and S3 (the same SigV4-checking server).
    Serverless,
}

/// External resources a scaled test server uses, dropped with the last `TestApp` that shares them.
#[allow(dead_code)] // held for their `Drop`
pub struct ScaledResources {
    pub database: Option<handoff_db::testing::TestDatabase>,
    pub table: Option<handoff_dynamo::testing::TestTable>,
    pub s3: handoff_storage::testing::TestS3,
}

/// The backends a suite should cover: always the embedded one, and the scaled one when PostgreSQL is configured
/// (`HANDOFF_TEST_POSTGRES_URL`; required when `CI` is set).
pub fn all_backends() -> Vec<Backend> {
    let mut all = vec![Backend::Embedded];
    if handoff_db::testing::postgres_admin_url().is_some() {
        all.push(Backend::Scaled);
    } else {
        eprintln!("HANDOFF_TEST_POSTGRES_URL is not set: skipping the PostgreSQL + S3 backend");
    }
    all
}

/// [`all_backends`] plus the serverless stores (DynamoDB on moto's server, `HANDOFF_TEST_MOTO_SERVER`; required
/// when `CI` is set): for the suites that prove a deployment end to end, not for every test, as moto is slow.
pub fn every_deployment() -> Vec<Backend> {
    let mut all = all_backends();
    if handoff_dynamo::testing::moto_server().is_some() {
        all.push(Backend::Serverless);
    } else {
        eprintln!("HANDOFF_TEST_MOTO_SERVER is not set: skipping the DynamoDB + S3 backend");
    }
    all
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub state: AppState,
    pub config: Config,
    /// Kept alive for the lifetime of the app (and across restarts).
    pub data_dir: std::sync::Arc<tempfile::TempDir>,
    pub scaled: Option<std::sync::Arc<ScaledResources>>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

/// A signed-in account.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub password: String,
    pub token: String,
    pub refresh_token: String,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// A server whose configuration `customise` may change (limits, defaults, ...).
    pub async fn spawn_with(customise: impl FnOnce(&mut Config)) -> Self {
        Self::spawn_on(Backend::Embedded, customise).await
    }

    pub async fn spawn_on(backend: Backend, customise: impl FnOnce(&mut Config)) -> Self {
        let data_dir = std::sync::Arc::new(tempfile::tempdir().expect("temp dir"));
        let mut config = Config {
            listen: "127.0.0.1:0".parse().expect("address"),
            data_dir: data_dir.path().to_path_buf(),
            ..Config::default()
        };
        config.auth.password_hash_concurrency = 4;
        let scaled = match backend {
            Backend::Embedded => None,
            Backend::Scaled => {
                let admin = handoff_db::testing::postgres_admin_url().expect("HANDOFF_TEST_POSTGRES_URL");
                let database = handoff_db::testing::TestDatabase::create(&admin).await;
                let s3 = handoff_storage::testing::TestS3::start().await;
                config.database_url = Some(database.url.clone());
                config.storage_url = Some(s3.storage_url("handoff"));
                Some(std::sync::Arc::new(ScaledResources {
                    database: Some(database),
                    table: None,
                    s3,
                }))
            }
            Backend::Serverless => {
                let moto = handoff_dynamo::testing::moto_server().expect("HANDOFF_TEST_MOTO_SERVER");
                let table = handoff_dynamo::testing::TestTable::create(&moto);
                let s3 = handoff_storage::testing::TestS3::start().await;
                config.database_url = Some(table.url.clone());
                config.storage_url = Some(s3.storage_url("handoff"));
                // One upload is one DynamoDB transaction: the deployment template's limit.
                config.limits.max_files_per_request = handoff_dynamo::MAX_FILES_PER_COMMIT;
                Some(std::sync::Arc::new(ScaledResources {
                    database: None,
                    table: Some(table),
                    s3,
                }))
            }
        };
        customise(&mut config);
        Self::start(config, data_dir, scaled).await
    }

    async fn start(
        config: Config,
        data_dir: std::sync::Arc<tempfile::TempDir>,
        scaled: Option<std::sync::Arc<ScaledResources>>,
    ) -> Self {
        handoff_server::install_tls_provider();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let state = AppState::build(config.clone()).await.expect("state");
        let (shutdown, stop) = oneshot::channel::<()>();
        let server = tokio::spawn({
            let state = state.clone();
            async move {
                handoff_server::serve(listener, state, async {
                    let _ = stop.await;
                })
                .await
                .expect("serve");
            }
        });
        Self {
            base: format!("http://{address}"),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            state,
            config,
            data_dir,
            scaled,
            shutdown: Some(shutdown),
            server: Some(server),
        }
    }

    /// Stops the server gracefully and starts a new one on the same data directory (a new port).
    pub async fn restart(mut self) -> Self {
        self.stop().await;
        let config = self.config.clone();
        let data_dir = self.data_dir.clone();
        let scaled = self.scaled.clone();
        drop(self);
        Self::start(config, data_dir, scaled).await
    }

    pub async fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn storage_dir(&self) -> PathBuf {
        self.data_dir.path().join("storage")
    }

    /// Committed blobs, on any backend.
    pub async fn blob_count(&self) -> usize {
        self.state
            .blobs
            .list_older_than(std::time::Duration::ZERO)
            .await
            .expect("list blobs")
            .len()
    }

    /// What the local store holds: every committed blob (by id, whether a file or a row of its small-blob
    /// database) and every file of an upload in progress (by path).
    pub async fn stored_blobs(&self) -> Vec<String> {
        fn walk(dir: &Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push(path.display().to_string());
                }
            }
        }
        let mut out: Vec<String> = (self.state.blobs.list_older_than(std::time::Duration::ZERO).await)
            .expect("list blobs")
            .into_iter()
            .map(|id| id.0.to_string())
            .collect();
        for entry in std::fs::read_dir(self.storage_dir()).into_iter().flatten().flatten() {
            // Committed blob files were listed above; the database files hold the small ones.
            if entry.path().is_dir() && entry.file_name() != "blobs" {
                walk(&entry.path(), &mut out);
            }
        }
        out
    }

    pub async fn signup(&self, username: &str, password: &str) -> Response {
        self.client
            .post(self.url("/auth/signup"))
            .json(&json!({ "username": username, "password": password }))
            .send()
            .await
            .expect("signup request")
    }

    pub async fn signin(&self, username: &str, password: &str) -> Response {
        self.client
            .post(self.url("/auth/signin"))
            .json(&json!({ "username": username, "password": password }))
            .send()
            .await
            .expect("signin request")
    }

    pub async fn refresh(&self, refresh_token: &str) -> Response {
        self.client
            .post(self.url("/auth/refresh"))
            .json(&json!({ "refresh_token": refresh_token }))
            .send()
            .await
            .expect("refresh request")
    }

    pub async fn signout(&self, refresh_token: &str) -> Response {
        self.client
            .post(self.url("/auth/signout"))
            .json(&json!({ "refresh_token": refresh_token }))
            .send()
            .await
            .expect("signout request")
    }

    pub async fn me(&self, token: &str) -> Response {
        self.client
            .get(self.url("/auth/me"))
            .bearer_auth(token)
            .send()
            .await
            .expect("me request")
    }

    /// Signs up and signs in a new account.
    pub async fn user(&self, username: &str) -> TestUser {
        let password = format!("{username}-password");
        assert_eq!(self.signup(username, &password).await.status(), StatusCode::CREATED);
        let response = self.signin(username, &password).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.expect("token json");
        TestUser {
            password,
            token: body["access_token"].as_str().expect("access token").to_owned(),
            refresh_token: body["refresh_token"].as_str().expect("refresh token").to_owned(),
        }
    }

    /// Raw-body upload named by `?fileName=`.
    pub async fn upload(&self, token: &str, name: &str, bytes: impl Into<reqwest::Body>) -> Response {
        self.client
            .post(self.url("/files"))
            .query(&[("fileName", name)])
            .bearer_auth(token)
            .body(bytes)
            .send()
            .await
            .expect("upload request")
    }

    /// Uploads and returns the created file's JSON, asserting `201`.
    pub async fn upload_ok(&self, token: &str, name: &str, bytes: Vec<u8>) -> Value {
        let response = self.upload(token, name, bytes).await;
        assert_eq!(response.status(), StatusCode::CREATED, "{:?}", response.text().await);
        response.json().await.expect("file json")
    }

    pub async fn content(&self, token: &str, key: &str) -> Response {
        self.client
            .get(self.url(&format!("/files/{key}/content")))
            .bearer_auth(token)
            .send()
            .await
            .expect("content request")
    }

    /// The origin design's download: `GET /files?fileName=<key>`.
    pub async fn origin_download(&self, token: &str, key: &str) -> Response {
        self.client
            .get(self.url("/files"))
            .query(&[("fileName", key)])
            .bearer_auth(token)
            .send()
            .await
            .expect("download request")
    }

    pub async fn metadata(&self, token: &str, key: &str) -> Response {
        self.client
            .get(self.url(&format!("/files/{key}")))
            .bearer_auth(token)
            .send()
            .await
            .expect("metadata request")
    }

    pub async fn list(&self, token: &str, query: &[(&str, &str)]) -> Response {
        self.client
            .get(self.url("/files"))
            .query(query)
            .bearer_auth(token)
            .send()
            .await
            .expect("list request")
    }

    pub async fn patch(&self, token: &str, key: &str, body: Value) -> Response {
        self.client
            .patch(self.url(&format!("/files/{key}")))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("patch request")
    }

    pub async fn delete(&self, token: &str, key: &str) -> Response {
        self.client
            .delete(self.url(&format!("/files/{key}")))
            .bearer_auth(token)
            .send()
            .await
            .expect("delete request")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Asserts a problem+json response with `status` and `code`, and returns its body.
pub async fn assert_problem(response: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status, "unexpected status for expected code {code}");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.expect("problem json");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status.as_u16());
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    body
}

/// Generic requests for the collaboration endpoints (shares, upload links, teams, admin, audit).
#[allow(dead_code)]
impl TestApp {
    pub async fn get_as(&self, token: &str, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET request")
    }

    /// `GET` that asserts `200` and returns the JSON body.
    pub async fn get_json(&self, token: &str, path: &str) -> Value {
        let response = self.get_as(token, path).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "GET {path}: {:?}",
            response.text().await
        );
        response.json().await.expect("json")
    }

    pub async fn post_as(&self, token: &str, path: &str, body: Value) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("POST request")
    }

    pub async fn patch_as(&self, token: &str, path: &str, body: Value) -> Response {
        self.client
            .patch(self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("PATCH request")
    }

    pub async fn delete_as(&self, token: &str, path: &str) -> Response {
        self.client
            .delete(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("DELETE request")
    }

    /// A request without an account (public link pages), optionally with a link password.
    pub async fn public_get(&self, path: &str, password: Option<&str>) -> Response {
        let mut request = self.client.get(self.url(path));
        if let Some(password) = password {
            request = request.header("x-link-password", password);
        }
        request.send().await.expect("public GET request")
    }

    /// `POST` asserting `expected` and returning the JSON body.
    pub async fn post_json(&self, token: &str, path: &str, body: Value, expected: StatusCode) -> Value {
        let response = self.post_as(token, path, body).await;
        assert_eq!(response.status(), expected, "POST {path}: {:?}", response.text().await);
        response.json().await.expect("json")
    }

    /// Creates a share link (asserting `201`) and returns its JSON (with `token`, `url` and `id`).
    pub async fn share_ok(&self, token: &str, body: Value) -> Value {
        self.post_json(token, "/shares", body, StatusCode::CREATED).await
    }

    /// Creates a team (asserting `201`) and returns its id.
    pub async fn team_ok(&self, token: &str, name: &str) -> String {
        let team = self
            .post_json(token, "/teams", json!({ "name": name }), StatusCode::CREATED)
            .await;
        team["id"].as_str().expect("team id").to_owned()
    }

    /// Adds a member with a role (asserting `201`).
    pub async fn add_member_ok(&self, token: &str, team: &str, username: &str, role: &str) {
        let response = self
            .post_as(
                token,
                &format!("/teams/{team}/members"),
                json!({ "username": username, "role": role }),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "{:?}", response.text().await);
    }

    /// Raw-body upload with extra query parameters (`team`, `visibility`, `expires_in`).
    pub async fn upload_with(&self, token: &str, name: &str, query: &[(&str, &str)], bytes: Vec<u8>) -> Response {
        self.client
            .post(self.url("/files"))
            .query(&[("fileName", name)])
            .query(query)
            .bearer_auth(token)
            .body(bytes)
            .send()
            .await
            .expect("upload request")
    }

    /// The account's `usage` object from `GET /auth/me`.
    pub async fn usage(&self, token: &str) -> Value {
        self.get_json(token, "/auth/me").await["usage"].clone()
    }

    /// Follows a share-link download: `GET /s/{token}/files/{index}` must answer `302`; returns the grant URL.
    pub async fn share_grant(&self, link_token: &str, index: usize, password: Option<&str>) -> String {
        let response = self
            .public_get(&format!("/s/{link_token}/files/{index}"), password)
            .await;
        assert_eq!(response.status(), StatusCode::FOUND, "{:?}", response.text().await);
        response.headers()["location"].to_str().expect("location").to_owned()
    }
}
