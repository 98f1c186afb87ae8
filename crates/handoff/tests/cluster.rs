//! Cluster tests: several real `handoff serve` processes sharing one PostgreSQL database and one S3 bucket, driven
//! over HTTP the way users and operators meet a scaled-out deployment. The S3 server is s3s-fs (SigV4 and presigned
//! URLs really verified) running inside this test process on a runtime of its own, so that an outage test can kill
//! it completely. Every test gets a fresh database and bucket; without `HANDOFF_TEST_POSTGRES_URL` the tests return
//! early (in CI they fail instead).

#[allow(dead_code)] // shared with tests/process.rs, which uses more of it
#[path = "process/support.rs"]
mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use base64::Engine as _;
use handoff_db::testing::{TestDatabase, postgres_admin_url};
use handoff_storage::testing::TestS3;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use sqlx::Connection as _;

use support::{Api, Server, handoff_command, random_bytes, run_with_timeout, sha256_hex, wait_until};

const PASSWORD: &str = "correct horse battery staple";
/// The object prefix of every node's storage URL: objects live at `<bucket>/cluster/blobs/<id>`.
const PREFIX: &str = "cluster";

// ---------------------------------------------------------------------------------------------------------------
// Backends

/// [`TestS3`] on a thread and runtime of its own. `kill` shuts that runtime down, which closes the listener and
/// every connection (`TestS3::stop` only ends the accept loop; keep-alive connections would survive it).
struct KillableS3 {
    address: SocketAddr,
    storage_url: String,
    /// `<root>/<bucket>`: s3s-fs keeps an object `K` of the bucket at `<root>/<bucket>/K`.
    bucket_dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KillableS3 {
    fn start() -> Self {
        let (info_tx, info_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime for the S3 server");
            let s3 = runtime.block_on(TestS3::start());
            let _ = info_tx.send((s3.address, s3.storage_url(PREFIX), s3.root.path().join(&s3.bucket)));
            runtime.block_on(async {
                let _ = stop_rx.await;
            });
            // Drops every task of the server: the listener and all connections close.
            runtime.shutdown_timeout(Duration::from_secs(5));
            drop(s3);
        });
        let (address, storage_url, bucket_dir) = info_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the S3 server did not start");
        Self {
            address,
            storage_url,
            bucket_dir,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Ends the server for good: afterwards its port refuses connections.
    fn kill(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the S3 server thread panicked");
        }
    }

    /// The objects stored under `<prefix>/blobs/`.
    fn blob_objects(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(self.bucket_dir.join(PREFIX).join("blobs")) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .collect()
    }
}

impl Drop for KillableS3 {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One fresh PostgreSQL database and one fresh S3 bucket, shared by the nodes of a test.
struct Cluster {
    admin_url: String,
    db: TestDatabase,
    s3: KillableS3,
}

/// A `handoff serve` process of the cluster. Drop order: the process first, then its (unused) data directory.
struct Node {
    server: Server,
    _data: tempfile::TempDir,
}

impl std::ops::Deref for Node {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

impl Cluster {
    /// `None` when no PostgreSQL server is configured for tests.
    async fn create() -> Option<Self> {
        let admin_url = postgres_admin_url()?;
        let db = TestDatabase::create(&admin_url).await;
        let s3 = KillableS3::start();
        Some(Self { admin_url, db, s3 })
    }

    fn start_node(&self, extra_env: &[(&str, &str)]) -> Node {
        let data = tempfile::tempdir().expect("a data directory");
        let mut env = vec![
            ("HANDOFF_DATABASE_URL", self.db.url.as_str()),
            ("HANDOFF_STORAGE_URL", self.s3.storage_url.as_str()),
        ];
        env.extend_from_slice(extra_env);
        Node {
            server: Server::start(data.path(), &env),
            _data: data,
        }
    }

    /// Starts two nodes at the same moment (on an empty database: concurrent migrations and first signing key).
    fn start_pair_concurrently(&self, extra_env: &[(&str, &str)]) -> (Node, Node) {
        let barrier = Arc::new(Barrier::new(2));
        let (a, b) = std::thread::scope(|scope| {
            let start = || {
                let barrier = barrier.clone();
                scope.spawn(move || {
                    barrier.wait();
                    self.start_node(extra_env)
                })
            };
            let (a, b) = (start(), start());
            (a.join(), b.join())
        });
        (a.expect("node A failed to start"), b.expect("node B failed to start"))
    }
}

// ---------------------------------------------------------------------------------------------------------------
// HTTP helpers

/// What `POST /auth/signin` and `POST /auth/refresh` hand out.
#[derive(Debug, Clone)]
struct Tokens {
    access: String,
    refresh: String,
}

async fn signin(node: &Server, username: &str) -> Tokens {
    let response = node
        .client()
        .http
        .post(node.client().url("/auth/signin"))
        .json(&json!({ "username": username, "password": PASSWORD }))
        .send()
        .await
        .expect("POST /auth/signin");
    tokens_from(response, "signin").await
}

async fn tokens_from(response: reqwest::Response, what: &str) -> Tokens {
    let status = response.status();
    let body: Value = response.json().await.expect("token responses are JSON");
    assert_eq!(status, StatusCode::OK, "{what} failed: {body}");
    let field = |name: &str| {
        body[name]
            .as_str()
            .unwrap_or_else(|| panic!("no {name} in {body}"))
            .to_owned()
    };
    Tokens {
        access: field("access_token"),
        refresh: field("refresh_token"),
    }
}

async fn refresh(node: &Server, refresh_token: &str) -> reqwest::Response {
    let api = node.client();
    api.http
        .post(api.url("/auth/refresh"))
        .json(&json!({ "refresh_token": refresh_token }))
        .send()
        .await
        .expect("POST /auth/refresh")
}

/// `GET /auth/me` with `token` on `node`: the status and the body.
async fn me(node: &Server, token: &str) -> (StatusCode, Value) {
    let api = node.client();
    let response = api
        .http
        .get(api.url("/auth/me"))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET /auth/me");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn assert_me(node: &Server, token: &str, username: &str, context: &str) {
    let (status, body) = me(node, token).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{context}: GET /auth/me on {}: {body}",
        node.base
    );
    assert_eq!(body["username"], username, "{context}: {body}");
}

/// Asserts a problem+json answer with `status` and `code`; returns its headers.
async fn assert_problem(response: reqwest::Response, status: StatusCode, code: &str, context: &str) -> HeaderMap {
    let got = response.status();
    let headers = response.headers().clone();
    let body = response.text().await.unwrap_or_default();
    assert_eq!(got, status, "{context}: {body}");
    assert_problem_json(&headers, &body, context);
    let problem: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    assert_eq!(problem["code"], code, "{context}: {body}");
    headers
}

fn assert_problem_json(headers: &HeaderMap, body: &str, context: &str) -> Value {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        content_type.starts_with("application/problem+json"),
        "{context}: content-type {content_type:?}, body {body}"
    );
    let problem: Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{context}: the problem is not JSON ({e}): {body}"));
    assert!(problem["code"].is_string(), "{context}: no code in {body}");
    problem
}

/// Sends `request`, failing the test if no answer arrives within `limit`; returns the answer and how long it took.
async fn timed(what: &str, limit: Duration, request: reqwest::RequestBuilder) -> (reqwest::Response, Duration) {
    let start = Instant::now();
    let response = tokio::time::timeout(limit, request.send())
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {limit:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    (response, start.elapsed())
}

/// A client that never follows redirects, so that a `302` and its `Location` can be looked at.
fn no_redirect_client() -> reqwest::Client {
    handoff_server::install_tls_provider();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("building the HTTP client")
}

/// A client with a long timeout, for requests whose duration the test bounds itself.
fn patient_client() -> reqwest::Client {
    handoff_server::install_tls_provider();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("building the HTTP client")
}

/// The `kid` of a JWT's header (which must be EdDSA).
fn jwt_kid(token: &str) -> String {
    let header = token.split('.').next().expect("a JWT has a header");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap_or_else(|e| panic!("the JWT header is not base64url ({e}): {token}"));
    let header: Value = serde_json::from_slice(&bytes).expect("the JWT header is JSON");
    assert_eq!(header["alg"], "EdDSA", "{header}");
    header["kid"]
        .as_str()
        .unwrap_or_else(|| panic!("no kid in {header}"))
        .to_owned()
}

/// The `kid`s a node publishes at `/.well-known/jwks.json`.
async fn jwks_kids(node: &Server) -> BTreeSet<String> {
    let api = node.client();
    let response = api
        .http
        .get(api.url("/.well-known/jwks.json"))
        .send()
        .await
        .expect("GET /.well-known/jwks.json");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("the JWK set is JSON");
    body["keys"]
        .as_array()
        .unwrap_or_else(|| panic!("no keys in {body}"))
        .iter()
        .map(|k| {
            assert_eq!(k["kty"], "OKP", "{k}");
            k["kid"].as_str().unwrap_or_else(|| panic!("no kid in {k}")).to_owned()
        })
        .collect()
}

fn file_key(record: &Value) -> String {
    record["key"]
        .as_str()
        .unwrap_or_else(|| panic!("no key in {record}"))
        .to_owned()
}

async fn file_metadata(api: &Api, key: &str) -> reqwest::Response {
    api.http
        .get(api.url(&format!("/files/{key}")))
        .bearer_auth(api.token.as_deref().expect("signed in"))
        .send()
        .await
        .expect("GET /files/{key}")
}

async fn content(api: &Api, http: &reqwest::Client, key: &str) -> reqwest::Response {
    http.get(api.url(&format!("/files/{key}/content")))
        .bearer_auth(api.token.as_deref().expect("signed in"))
        .send()
        .await
        .expect("GET /files/{key}/content")
}

async fn patch(api: &Api, key: &str, change: Value) -> Value {
    let response = api
        .http
        .patch(api.url(&format!("/files/{key}")))
        .bearer_auth(api.token.as_deref().expect("signed in"))
        .json(&change)
        .send()
        .await
        .expect("PATCH /files/{key}");
    let status = response.status();
    let body: Value = response.json().await.expect("PATCH answers JSON");
    assert_eq!(status, StatusCode::OK, "PATCH {change} failed: {body}");
    body
}

// ---------------------------------------------------------------------------------------------------------------
// 1. Two nodes, one service

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_serve_one_service() {
    let Some(cluster) = Cluster::create().await else {
        return;
    };
    // Both nodes start at the same moment on an empty database: concurrent migrations and first signing key.
    let (a, b) = cluster.start_pair_concurrently(&[]);

    // An account made on A signs in on B; the tokens of either node work on the other.
    a.client().signup("alice", PASSWORD).await;
    let from_b = signin(&b, "alice").await;
    let from_a = signin(&a, "alice").await;
    assert_me(&a, &from_b.access, "alice", "a token issued by B, used on A").await;
    assert_me(&b, &from_a.access, "alice", "a token issued by A, used on B").await;
    assert_me(&a, &from_a.access, "alice", "A's own token").await;
    assert_me(&b, &from_b.access, "alice", "B's own token").await;

    // Upload through A (with B's token), read through B (with A's token).
    let alice_a = a.client().with_token(&from_b.access);
    let alice_b = b.client().with_token(&from_a.access);
    let data = random_bytes(12 * 1024 * 1024, 41);
    let record = alice_a.upload("big.bin", &data).await;
    let key = file_key(&record);
    assert_eq!(
        cluster.s3.blob_objects().len(),
        1,
        "the upload is one object in the bucket"
    );

    let listed = alice_b.list().await;
    assert_eq!(listed.len(), 1, "B lists the file uploaded through A: {listed:?}");
    assert_eq!(listed[0]["key"], key.as_str());
    assert_eq!(listed[0]["size"], data.len() as u64);
    assert_eq!(listed[0]["sha256"], sha256_hex(&data));
    let downloaded = alice_b.download(&key).await;
    assert_eq!(sha256_hex(&downloaded), sha256_hex(&data), "download through B");

    let ranged = alice_b
        .http
        .get(alice_b.url(&format!("/files/{key}/content")))
        .bearer_auth(&from_a.access)
        .header("range", "bytes=9000000-9000999")
        .send()
        .await
        .expect("ranged GET");
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        ranged.headers()["content-range"],
        format!("bytes 9000000-9000999/{}", data.len()).as_str()
    );
    let part = ranged.bytes().await.expect("reading the range");
    assert!(
        part[..] == data[9_000_000..9_001_000],
        "the range through B has other bytes"
    );

    // A rename through B is what A shows.
    let renamed = patch(&alice_b, &key, json!({ "name": "renamed.bin" })).await;
    assert_eq!(renamed["name"], "renamed.bin");
    let seen_by_a: Value = file_metadata(&alice_a, &key).await.json().await.expect("JSON");
    assert_eq!(seen_by_a["name"], "renamed.bin", "A sees B's rename: {seen_by_a}");
    assert_eq!(alice_a.list().await[0]["name"], "renamed.bin");

    // A delete through A: B answers 404 and the object leaves the bucket.
    let deleted = alice_a
        .http
        .delete(alice_a.url(&format!("/files/{key}")))
        .bearer_auth(&from_b.access)
        .send()
        .await
        .expect("DELETE /files/{key}");
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_problem(
        content(&alice_b, &alice_b.http, &key).await,
        StatusCode::NOT_FOUND,
        "file_not_found",
        "download through B after the delete through A",
    )
    .await;
    assert_problem(
        file_metadata(&alice_b, &key).await,
        StatusCode::NOT_FOUND,
        "file_not_found",
        "metadata through B after the delete through A",
    )
    .await;
    assert!(alice_b.list().await.is_empty(), "B still lists the deleted file");
    let s3 = &cluster.s3;
    wait_until(Duration::from_secs(10), "the deleted blob to leave the bucket", || {
        s3.blob_objects().is_empty()
    })
    .await;

    // Refresh-token reuse is detected across nodes: spent on A, replayed on B.
    let first = signin(&a, "alice").await;
    let second = tokens_from(refresh(&a, &first.refresh).await, "refresh on A").await;
    assert_me(&b, &second.access, "alice", "a refreshed token from A, used on B").await;
    assert_problem(
        refresh(&b, &first.refresh).await,
        StatusCode::UNAUTHORIZED,
        "refresh_token_reused",
        "replaying a spent refresh token on B",
    )
    .await;
    // The reuse revoked the whole family, on every node.
    let after = refresh(&a, &second.refresh).await;
    assert_eq!(
        after.status(),
        StatusCode::UNAUTHORIZED,
        "the successor of a reused refresh token must be revoked"
    );
}

/// Nodes starting at once on an empty database must agree on the signing keys: a race in creating the first key
/// must not leave one node signing with a key the other does not know. A few rounds, to give the race a chance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_on_an_empty_database_trust_each_other() {
    for round in 0..3 {
        let Some(cluster) = Cluster::create().await else {
            return;
        };
        let (a, b) = cluster.start_pair_concurrently(&[]);
        a.client().signup("alice", PASSWORD).await;
        let from_a = signin(&a, "alice").await;
        let from_b = signin(&b, "alice").await;
        let context = format!(
            "round {round}: A signs with {}, B with {}; A publishes {:?}, B {:?}",
            jwt_kid(&from_a.access),
            jwt_kid(&from_b.access),
            jwks_kids(&a).await,
            jwks_kids(&b).await
        );
        assert_me(&a, &from_b.access, "alice", &format!("B's token on A, {context}")).await;
        assert_me(&b, &from_a.access, "alice", &format!("A's token on B, {context}")).await;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 2. Presigned redirects across nodes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_downloads_work_across_nodes() {
    let Some(cluster) = Cluster::create().await else {
        return;
    };
    let redirect = [("HANDOFF_DOWNLOADS__MODE", "redirect")];
    // One after the other: the concurrent first start has tests of its own.
    let a = cluster.start_node(&redirect);
    let b = cluster.start_node(&redirect);
    let alice_a = a.client().signup_and_signin("alice", PASSWORD).await;
    let alice_b = b.client().with_token(alice_a.token.as_deref().expect("signed in"));
    let bob_b = b.client().signup_and_signin("bob", PASSWORD).await;

    let data = random_bytes(3 * 1024 * 1024 + 5, 42);
    let key = file_key(&alice_a.upload("direct.bin", &data).await);

    let manual = no_redirect_client();
    let plain = support::http_client();
    for (who, api) in [("alice", &alice_b), ("bob (holds the key)", &bob_b)] {
        let response = content(api, &manual, &key).await;
        assert_eq!(response.status(), StatusCode::FOUND, "{who} through B");
        assert_eq!(response.headers()["cache-control"], "no-store", "{who}");
        let location = response
            .headers()
            .get("location")
            .unwrap_or_else(|| panic!("{who}: a 302 without Location"))
            .to_str()
            .expect("an ASCII Location")
            .to_owned();
        assert!(location.contains("X-Amz-Signature="), "{who}: {location}");
        assert!(
            !location.contains(handoff_storage::testing::SECRET_KEY),
            "the presigned URL leaks the secret key: {location}"
        );
        // No Authorization: the presigned URL is the credential.
        let fetched = plain.get(&location).send().await.expect("GET the presigned URL");
        assert_eq!(fetched.status(), StatusCode::OK, "{who}: fetching {location}");
        let bytes = fetched.bytes().await.expect("reading the presigned download");
        assert_eq!(
            sha256_hex(&bytes),
            sha256_hex(&data),
            "{who}: bytes from the presigned URL"
        );
    }

    // Once the file is private, B mints no URL for bob: 404 and no Location.
    let private = patch(&alice_a, &key, json!({ "visibility": "private" })).await;
    assert_eq!(private["visibility"], "private");
    let refused = content(&bob_b, &manual, &key).await;
    assert!(
        refused.headers().get("location").is_none(),
        "a URL was minted for a user who may not see the file"
    );
    assert_problem(
        refused,
        StatusCode::NOT_FOUND,
        "file_not_found",
        "bob downloads a private file through B",
    )
    .await;
    let owner = content(&alice_b, &manual, &key).await;
    assert_eq!(
        owner.status(),
        StatusCode::FOUND,
        "the owner still gets a URL through B"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 3. Signing-key rotation across the cluster

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_key_rotation_reaches_the_cluster() {
    let Some(cluster) = Cluster::create().await else {
        return;
    };
    // One after the other, so that the cluster starts with exactly one key.
    let a = cluster.start_node(&[]);
    let mut b = cluster.start_node(&[]);
    a.client().signup("alice", PASSWORD).await;
    let old = signin(&a, "alice").await;
    let old_kid = jwt_kid(&old.access);
    let one = BTreeSet::from([old_kid.clone()]);
    assert_eq!(jwks_kids(&a).await, one, "A before the rotation");
    assert_eq!(jwks_kids(&b).await, one, "B before the rotation");

    // Rotate while both nodes run.
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let mut rotate = handoff_command();
    rotate
        .arg("rotate-signing-key")
        .arg("--database-url")
        .arg(&cluster.db.url)
        .arg("--data-dir")
        .arg(scratch.path());
    let output = run_with_timeout(rotate, Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "rotate-signing-key failed: {}\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let new_kid = stdout
        .lines()
        .find_map(|l| l.strip_prefix("new signing key "))
        .unwrap_or_else(|| panic!("no new key in {stdout:?}"))
        .trim()
        .to_owned();
    assert_ne!(new_kid, old_kid);

    // Tokens issued before the rotation keep working everywhere.
    assert_me(&a, &old.access, "alice", "the old token on A after the rotation").await;
    assert_me(&b, &old.access, "alice", "the old token on B after the rotation").await;

    // Publish before use: a rotated key signs only once it is older than the activation delay (90 s by
    // default), so that every node has loaded it first. Until then tokens still carry the old kid.
    let still_old = signin(&b, "alice").await;
    assert_eq!(
        jwt_kid(&still_old.access),
        old_kid,
        "a fresh key is published before it signs"
    );

    // B restarted with no activation delay publishes both keys and signs with the new one at once.
    drop(b);
    b = cluster.start_node(&[("HANDOFF_AUTH__SIGNING_KEY_ACTIVATION_SECS", "0")]);
    assert_eq!(
        jwks_kids(&b).await,
        BTreeSet::from([old_kid.clone(), new_kid.clone()]),
        "B after its restart"
    );
    let new = signin(&b, "alice").await;
    assert_eq!(jwt_kid(&new.access), new_kid, "B signs with the newest key");
    assert_me(&b, &new.access, "alice", "B's new token on B").await;
    assert_me(&b, &old.access, "alice", "the old token on B after B's restart").await;
    assert_me(&a, &old.access, "alice", "the old token on A after B's restart").await;

    // A (not restarted) meets an unknown kid: it reloads its key set (at most every 5 s) and then accepts it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = me(&a, &new.access).await;
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "A answered B's new token with {status}: {body}"
        );
        assert!(std::time::Instant::now() < deadline, "A never learned B's new key");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 4. Outages

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_outage_is_a_prompt_503() {
    let Some(mut cluster) = Cluster::create().await else {
        return;
    };
    let node = cluster.start_node(&[]);
    let alice = node.client().signup_and_signin("alice", PASSWORD).await;
    let before = b"uploaded before the outage".to_vec();
    let key = file_key(&alice.upload("before.txt", &before).await);
    assert_eq!(node.client().get_status("/readyz").await, StatusCode::OK);

    cluster.s3.kill();
    let address = cluster.s3.address;
    assert!(
        tokio::net::TcpStream::connect(address).await.is_err(),
        "the S3 server still accepts connections after being killed"
    );

    let http = patient_client();
    let limit = Duration::from_secs(30);
    let token = alice.token.clone().expect("signed in");
    let during = random_bytes(200_000, 43);
    let (response, took) = timed(
        "upload during the S3 outage",
        limit,
        http.post(alice.url("/files"))
            .query(&[("fileName", "during.bin")])
            .bearer_auth(&token)
            .body(during),
    )
    .await;
    eprintln!("upload during the S3 outage: {} after {took:?}", response.status());
    let headers = assert_problem(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "backend_unavailable",
        "upload during the S3 outage",
    )
    .await;
    assert!(headers.contains_key("retry-after"), "no Retry-After: {headers:?}");

    let (response, took) = timed(
        "download during the S3 outage",
        limit,
        http.get(alice.url(&format!("/files/{key}/content")))
            .bearer_auth(&token),
    )
    .await;
    eprintln!("download during the S3 outage: {} after {took:?}", response.status());
    let headers = assert_problem(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "backend_unavailable",
        "download during the S3 outage",
    )
    .await;
    assert!(headers.contains_key("retry-after"), "no Retry-After: {headers:?}");

    let (response, took) = timed("/readyz during the S3 outage", limit, http.get(alice.url("/readyz"))).await;
    eprintln!("/readyz during the S3 outage: {} after {took:?}", response.status());
    let headers = assert_problem(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
        "/readyz during the S3 outage",
    )
    .await;
    assert!(headers.contains_key("retry-after"), "no Retry-After: {headers:?}");

    // The metadata store still answers, and the failed upload left nothing behind.
    let listed = alice.list().await;
    let names: Vec<_> = listed.iter().map(|f| f["name"].clone()).collect();
    assert_eq!(names, vec![json!("before.txt")], "the failed upload became visible");
}

/// `ALTER DATABASE … ALLOW_CONNECTIONS` through an admin connection.
async fn allow_connections(admin_url: &str, database: &str, allow: bool) {
    let mut admin = sqlx::PgConnection::connect(admin_url)
        .await
        .expect("connecting as the PostgreSQL admin");
    let sql = format!("ALTER DATABASE {database} ALLOW_CONNECTIONS {allow}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut admin)
        .await
        .expect("ALTER DATABASE … ALLOW_CONNECTIONS");
    if !allow {
        let sql = format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{database}' AND pid <> pg_backend_pid()"
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await
            .expect("terminating the database's connections");
    }
    let _ = admin.close().await;
}

/// Makes the database refuse connections (and ends the open ones) until `restore`, or until dropped, so that a
/// failing test still leaves a database that can be dropped.
struct Outage {
    admin_url: String,
    database: String,
    active: bool,
}

impl Outage {
    async fn begin(admin_url: &str, database: &str) -> Self {
        let outage = Self {
            admin_url: admin_url.to_owned(),
            database: database.to_owned(),
            active: true,
        };
        allow_connections(admin_url, database, false).await;
        outage
    }

    async fn restore(mut self) {
        allow_connections(&self.admin_url, &self.database, true).await;
        self.active = false;
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        let (admin_url, database) = (self.admin_url.clone(), self.database.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(allow_connections(&admin_url, &database, true));
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_fails_fast_and_heals_without_a_restart() {
    let Some(cluster) = Cluster::create().await else {
        return;
    };
    let node = cluster.start_node(&[]);
    let alice = node.client().signup_and_signin("alice", PASSWORD).await;
    let token = alice.token.clone().expect("signed in");
    let kept = b"kept across the outage".to_vec();
    let key = file_key(&alice.upload("kept.txt", &kept).await);
    assert_eq!(node.client().get_status("/readyz").await, StatusCode::OK);

    let outage = Outage::begin(&cluster.admin_url, &cluster.db.name).await;
    let started = Instant::now();
    assert!(
        sqlx::PgConnection::connect(&cluster.db.url).await.is_err(),
        "the database still accepts connections"
    );

    // Readiness turns 503 within about ten seconds.
    let http = patient_client();
    let mut last = None;
    while started.elapsed() < Duration::from_secs(12) {
        let (response, took) = timed(
            "/readyz during the database outage",
            Duration::from_secs(12),
            http.get(alice.url("/readyz")),
        )
        .await;
        let status = response.status();
        eprintln!("/readyz during the database outage: {status} after {took:?}");
        if status == StatusCode::SERVICE_UNAVAILABLE {
            let body = response.text().await.unwrap_or_default();
            last = Some((status, body));
            break;
        }
        last = Some((status, response.text().await.unwrap_or_default()));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body) = last.expect("at least one readiness probe");
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "/readyz did not turn 503 within {:?} of the outage: {body}",
        started.elapsed()
    );

    // Requests fail fast with a problem, not a hang.
    let (response, took) = timed(
        "GET /files during the database outage",
        Duration::from_secs(10),
        http.get(alice.url("/files")).bearer_auth(&token),
    )
    .await;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.text().await.unwrap_or_default();
    eprintln!("GET /files during the database outage: {status} after {took:?}: {body}");
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "GET /files answered {status}: {body}"
    );
    assert!(headers.contains_key("retry-after"), "a 503 says when to retry");
    assert_problem_json(&headers, &body, "GET /files during the database outage");

    // Connections allowed again: the node recovers on its own.
    outage.restore().await;
    let healed = Instant::now();
    let probe = node.client();
    let mut ready = false;
    while healed.elapsed() < Duration::from_secs(20) {
        let (response, _) = timed(
            "/readyz after the outage",
            Duration::from_secs(12),
            http.get(probe.url("/readyz")),
        )
        .await;
        if response.status() == StatusCode::OK {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ready, "/readyz did not recover within 20 s of the database coming back");
    eprintln!("recovered {:?} after the database came back", healed.elapsed());
    assert_me(&node, &token, "alice", "after the database outage").await;
    let listed = alice.list().await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["key"], key.as_str());
    assert!(alice.download(&key).await == kept, "the file's bytes after the outage");
    alice.upload("after.txt", b"written after the outage").await;
}
