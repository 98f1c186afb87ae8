//! `handoff migrate-storage`, end to end with the real binary: an instance on SQLite + local disk, filled over
//! HTTP, is stopped and copied to PostgreSQL + S3 (an in-process s3s-fs with SigV4), and to DynamoDB (moto's
//! server) + S3, twice each; a server on the target backends then serves the same accounts, tokens and files.
//! Without `HANDOFF_TEST_POSTGRES_URL` or `HANDOFF_TEST_MOTO_SERVER` that leg returns early (in CI it fails
//! instead).

#[allow(dead_code)] // shared with tests/process.rs, which uses more of it
#[path = "process/support.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use handoff_db::testing::{TestDatabase, postgres_admin_url};
use handoff_storage::testing::TestS3;
use reqwest::StatusCode;
use serde_json::{Value, json};

use support::{Api, Server, handoff_command, random_bytes, run_with_timeout, sha256_hex};

const PASSWORD_ALICE: &str = "correct horse battery staple";
const PASSWORD_BOB: &str = "another long passphrase";
const PREFIX: &str = "migrated";

/// Uploads one file with an explicit visibility; returns its record.
async fn upload(api: &Api, name: &str, data: &[u8], visibility: &str) -> Value {
    let response = api
        .http
        .post(api.url("/files"))
        .query(&[("fileName", name), ("visibility", visibility)])
        .header(
            "authorization",
            format!("Bearer {}", api.token.as_deref().expect("signed in")),
        )
        .body(data.to_vec())
        .send()
        .await
        .expect("POST /files");
    let status = response.status();
    let body: Value = response.json().await.expect("upload answers JSON");
    assert_eq!(status, StatusCode::CREATED, "upload of {name} failed: {body}");
    assert_eq!(body["name"], name, "{body}");
    assert_eq!(body["sha256"], sha256_hex(data), "{body}");
    assert_eq!(body["visibility"], visibility, "{body}");
    body
}

/// Signs in and returns the client and the whole token response.
async fn signin(anonymous: &Api, username: &str, password: &str) -> (Api, Value) {
    let response = anonymous
        .http
        .post(anonymous.url("/auth/signin"))
        .json(&json!({ "username": username, "password": password }))
        .send()
        .await
        .expect("POST /auth/signin");
    let status = response.status();
    let body: Value = response.json().await.expect("signin answers JSON");
    assert_eq!(status, StatusCode::OK, "signin of {username} failed: {body}");
    let token = body["access_token"].as_str().expect("an access token");
    (anonymous.with_token(token), body)
}

async fn me(api: &Api) -> Value {
    let response = api
        .http
        .get(api.url("/auth/me"))
        .header(
            "authorization",
            format!("Bearer {}", api.token.as_deref().expect("signed in")),
        )
        .send()
        .await
        .expect("GET /auth/me");
    assert_eq!(response.status(), StatusCode::OK, "GET /auth/me with the token");
    response.json().await.expect("/auth/me answers JSON")
}

/// Key → listed record (without anything that names a location), of the user's files.
async fn listing(api: &Api) -> BTreeMap<String, Value> {
    api.list()
        .await
        .into_iter()
        .map(|f| (f["key"].as_str().expect("a listed key").to_owned(), f))
        .collect()
}

/// Runs `handoff migrate-storage` from `source` (the data directory) to the target URLs, off the async runtime
/// (the S3 server lives on it).
async fn migrate_storage(source: &Path, database_url: &str, storage_url: &str) -> Output {
    let mut command = handoff_command();
    command
        .arg("migrate-storage")
        .arg("--data-dir")
        .arg(source)
        .arg("--to-database-url")
        .arg(database_url)
        .env("HANDOFF_TO_STORAGE_URL", storage_url);
    tokio::task::spawn_blocking(move || run_with_timeout(command, Duration::from_secs(120)))
        .await
        .expect("the migrate-storage runner")
}

fn stdout_of(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "migrate-storage failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Committed objects of the target bucket (s3s-fs keeps object `K` of bucket `B` at `<root>/B/K`).
fn objects(s3: &TestS3) -> Vec<String> {
    let dir = s3.root.path().join(&s3.bucket).join(PREFIX).join("blobs");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrate_storage_moves_an_instance_to_postgres_and_s3_without_losing_anything() {
    let Some(admin_url) = postgres_admin_url() else {
        eprintln!("HANDOFF_TEST_POSTGRES_URL unset: skipping");
        return;
    };
    let database = TestDatabase::create(&admin_url).await;
    moves_an_instance_without_losing_anything(&database.url, &[]).await;
}

/// The serverless deployment's metadata store as the target: DynamoDB (moto's server), with S3.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrate_storage_moves_an_instance_to_dynamodb_and_s3_without_losing_anything() {
    let Some(moto) = handoff_dynamo::testing::moto_server() else {
        eprintln!("HANDOFF_TEST_MOTO_SERVER unset: skipping");
        return;
    };
    let table = handoff_dynamo::testing::TestTable::create(&moto);
    // A server on DynamoDB holds one upload in one transaction: at most 48 files per request.
    let max_files = handoff_dynamo::MAX_FILES_PER_COMMIT.to_string();
    moves_an_instance_without_losing_anything(
        &table.url,
        &[("HANDOFF_LIMITS__MAX_FILES_PER_REQUEST", max_files.as_str())],
    )
    .await;
}

/// Fills an instance on the defaults, copies it to `database_url` + S3 twice (the second run copies nothing),
/// and checks a server on the target serves the same accounts, tokens and files.
async fn moves_an_instance_without_losing_anything(database_url: &str, target_env: &[(&str, &str)]) {
    let s3 = TestS3::start().await;
    let storage_url = s3.storage_url(PREFIX);

    // 1. An instance on the self-hosted defaults: SQLite and local files.
    let source = tempfile::tempdir().expect("source data dir");
    let big = random_bytes(21 * 1024 * 1024 + 7, 42);
    let alice_files: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.txt", Vec::new(), "key"),
        ("big.bin", big, "key"),
        (
            "Grüße aus Köln – 日本語 📦.txt",
            "non-ASCII name\n".repeat(50).into_bytes(),
            "key",
        ),
        ("diary.txt", b"private thoughts".to_vec(), "private"),
    ];
    let bob_files: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bob.bin", random_bytes(300_001, 7), "key"),
        ("bob-private.txt", b"bob only".to_vec(), "private"),
    ];
    let mut contents: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let (old_alice, old_bob, alice_before, bob_before, alice_me, bob_me, refresh_token) = {
        let mut server = Server::start(source.path(), &[]);
        let anonymous = server.client();
        anonymous.signup("alice", PASSWORD_ALICE).await;
        anonymous.signup("bob", PASSWORD_BOB).await;
        let (alice, alice_tokens) = signin(&anonymous, "alice", PASSWORD_ALICE).await;
        let (bob, _) = signin(&anonymous, "bob", PASSWORD_BOB).await;
        for (api, files) in [(&alice, &alice_files), (&bob, &bob_files)] {
            for (name, data, visibility) in files {
                let record = upload(api, name, data, visibility).await;
                contents.insert(record["key"].as_str().expect("a key").to_owned(), data.clone());
            }
        }
        let listed = (listing(&alice).await, listing(&bob).await);
        assert_eq!(listed.0.len() + listed.1.len(), 6);
        let refresh = alice_tokens["refresh_token"]
            .as_str()
            .expect("a refresh token")
            .to_owned();
        let accounts = (me(&alice).await, me(&bob).await);
        // The copy runs with the source stopped.
        server.signal("TERM");
        let status = server.wait_exit(Duration::from_secs(15));
        assert!(status.success(), "the source server stops cleanly: {status}");
        (
            alice.token.clone().expect("alice's token"),
            bob.token.clone().expect("bob's token"),
            listed.0,
            listed.1,
            accounts.0,
            accounts.1,
            refresh,
        )
    };

    // 2. Copy to the target database + S3.
    let first = stdout_of(&migrate_storage(source.path(), database_url, &storage_url).await);
    eprintln!("first run:\n{first}");
    assert!(first.contains("copied 6 files, "), "{first}");
    assert!(
        first.contains("2 users copied (0 already present)"),
        "the summary counts both accounts: {first}"
    );
    assert!(
        first.contains("6 files copied (0 already present)"),
        "the summary counts every file: {first}"
    );
    assert!(first.contains("Refresh tokens were not copied"), "{first}");
    let total: usize = contents.values().map(Vec::len).sum();
    assert!(first.contains(&format!("{total} bytes copied")), "{first}");
    let after_first = objects(&s3);
    assert_eq!(after_first.len(), 6, "one object per file: {after_first:?}");

    // 3. Again: nothing is copied twice.
    let second = stdout_of(&migrate_storage(source.path(), database_url, &storage_url).await);
    eprintln!("second run:\n{second}");
    assert!(second.contains("0 signing keys copied (1 already present)"), "{second}");
    assert!(second.contains("0 users copied (2 already present)"), "{second}");
    assert!(
        second.contains("0 files copied (6 already present), 0 bytes copied"),
        "{second}"
    );
    assert_eq!(objects(&s3), after_first, "the second run stored no new objects");

    // The target must really be different from the source: the same command towards the source is refused.
    let source_db = format!("sqlite://{}", source.path().join("handoff.db").display());
    let refused = migrate_storage(source.path(), &source_db, &storage_url).await;
    assert!(!refused.status.success(), "migrating onto itself must fail");

    // 4. A server on the target backends (its own, empty data directory) serves everything.
    let target_dir = tempfile::tempdir().expect("target data dir");
    let mut env = vec![
        ("HANDOFF_DATABASE_URL", database_url),
        ("HANDOFF_STORAGE_URL", storage_url.as_str()),
    ];
    env.extend_from_slice(target_env);
    let target = Server::start(target_dir.path(), &env);
    let anonymous = target.client();

    // Access tokens signed by the old instance still verify: the signing keys moved along.
    let alice_old = anonymous.with_token(&old_alice);
    let bob_old = anonymous.with_token(&old_bob);
    assert_eq!(
        me(&alice_old).await,
        alice_me,
        "same account, id, email and creation time"
    );
    assert_eq!(me(&bob_old).await, bob_me);

    // Both sign in with their old passwords.
    let (alice_new, _) = signin(&anonymous, "alice", PASSWORD_ALICE).await;
    let (bob_new, _) = signin(&anonymous, "bob", PASSWORD_BOB).await;
    assert_eq!(me(&alice_new).await["id"], alice_me["id"]);
    assert_eq!(me(&bob_new).await["id"], bob_me["id"]);

    // Refresh tokens were not copied.
    let refreshed = anonymous
        .http
        .post(anonymous.url("/auth/refresh"))
        .json(&json!({ "refresh_token": refresh_token }))
        .send()
        .await
        .expect("POST /auth/refresh");
    assert_eq!(
        refreshed.status(),
        StatusCode::UNAUTHORIZED,
        "old refresh tokens are gone"
    );

    // Every file: same key, name, size, hash, visibility (and times), and the same bytes.
    for (api, before) in [(&alice_old, &alice_before), (&bob_new, &bob_before)] {
        let after = listing(api).await;
        assert_eq!(&after, before, "the listing is exactly the one before the move");
        for (key, record) in &after {
            let data = &contents[key];
            assert_eq!(record["size"], data.len() as u64);
            let downloaded = api.download(key).await;
            assert_eq!(
                sha256_hex(&downloaded),
                sha256_hex(data),
                "download of {}",
                record["name"]
            );
        }
    }
    // Privacy survived too: bob cannot fetch alice's private file, but can fetch her key-visible one.
    let alice_private = alice_before
        .iter()
        .find(|(_, r)| r["visibility"] == "private")
        .map(|(k, _)| k.clone())
        .expect("alice has a private file");
    let status = bob_new
        .http
        .get(bob_new.url(&format!("/files/{alice_private}/content")))
        .header(
            "authorization",
            format!("Bearer {}", bob_new.token.as_deref().expect("signed in")),
        )
        .send()
        .await
        .expect("GET a private file")
        .status();
    assert_eq!(status, StatusCode::NOT_FOUND, "a private file stays private");
    let alice_shared = alice_before
        .iter()
        .find(|(_, r)| r["name"] == "big.bin")
        .map(|(k, _)| k.clone())
        .expect("alice's big file");
    assert_eq!(
        sha256_hex(&bob_new.download(&alice_shared).await),
        sha256_hex(&contents[&alice_shared])
    );
    drop(target);
}

/// A blob whose bytes no longer match its record stops the migration with an error, and nothing of that file
/// reaches the target. Runs on SQLite + local disk on both sides, so it needs no PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_storage_refuses_a_corrupted_blob() {
    let source = tempfile::tempdir().expect("source data dir");
    {
        let mut server = Server::start(source.path(), &[]);
        let alice = server.client().signup_and_signin("alice", PASSWORD_ALICE).await;
        upload(&alice, "precious.bin", &random_bytes(100_000, 3), "key").await;
        server.signal("TERM");
        assert!(server.wait_exit(Duration::from_secs(15)).success());
    }
    let blobs = support::blob_files(source.path());
    assert_eq!(blobs.len(), 1, "{blobs:?}");
    let mut bytes = std::fs::read(&blobs[0]).expect("reading the blob");
    bytes[50_000] ^= 0xFF; // same length, different content: bit rot
    std::fs::write(&blobs[0], bytes).expect("corrupting the blob");

    let target = tempfile::tempdir().expect("target dir");
    let database_url = format!("sqlite://{}", target.path().join("handoff.db").display());
    let storage_url = format!("file://{}", target.path().join("storage").display());
    let output = migrate_storage(source.path(), &database_url, &storage_url).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a corrupted blob must fail the migration");
    assert!(
        stderr.contains("do not match"),
        "the error names the mismatch: {stderr}"
    );
    assert_eq!(
        support::blob_count(target.path()),
        0,
        "nothing of the corrupted file is committed in the target"
    );
    // The run got as far as the accounts: the target is a valid, partly filled instance to resume into.
    assert!(String::from_utf8_lossy(&output.stdout).contains("copied 1 users"));
}
