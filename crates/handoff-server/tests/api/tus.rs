//! tus 1.0 resumable uploads over real HTTP, on every backend (SQLite + local disk, PostgreSQL + S3): the core
//! protocol and its extensions, durability across restarts, one winner among concurrent appends (also across
//! two nodes sharing the stores), ownership, expiry, limits, and a fuzz of the header parsers.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{Backend, TestApp, all_backends, assert_problem, random_bytes, sha256_hex};

const TUS: (&str, &str) = ("tus-resumable", "1.0.0");
const CHUNK_TYPE: (&str, &str) = ("content-type", "application/offset+octet-stream");

fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

fn metadata(name: &str, file_type: &str) -> String {
    format!(
        "filename {},filetype {}",
        STANDARD.encode(name),
        STANDARD.encode(file_type)
    )
}

impl TestApp {
    async fn tus_create(&self, token: &str, length: Option<u64>, meta: &str) -> Response {
        let mut request = self
            .client
            .post(self.url("/uploads"))
            .bearer_auth(token)
            .header(TUS.0, TUS.1)
            .header("upload-metadata", meta);
        request = match length {
            Some(n) => request.header("upload-length", n.to_string()),
            None => request.header("upload-defer-length", "1"),
        };
        request.send().await.expect("create request")
    }

    /// Creates an upload and returns its path (`/uploads/<id>`).
    async fn tus_new(&self, token: &str, length: Option<u64>) -> String {
        let response = self
            .tus_create(token, length, &metadata("data.bin", "application/x-test"))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "{:?}", response.text().await);
        let location = header(&response, "location").expect("Location").to_owned();
        assert!(location.starts_with("/uploads/"), "{location}");
        location
    }

    async fn tus_head(&self, token: &str, path: &str) -> Response {
        self.client
            .head(self.url(path))
            .bearer_auth(token)
            .header(TUS.0, TUS.1)
            .send()
            .await
            .expect("head request")
    }

    async fn tus_offset(&self, token: &str, path: &str) -> u64 {
        let response = self.tus_head(token, path).await;
        assert_eq!(response.status(), StatusCode::OK);
        header(&response, "upload-offset")
            .expect("Upload-Offset")
            .parse()
            .expect("number")
    }

    async fn tus_patch(&self, token: &str, path: &str, offset: u64, body: impl Into<reqwest::Body>) -> Response {
        self.client
            .patch(self.url(path))
            .bearer_auth(token)
            .header(TUS.0, TUS.1)
            .header(CHUNK_TYPE.0, CHUNK_TYPE.1)
            .header("upload-offset", offset.to_string())
            .body(body)
            .send()
            .await
            .expect("patch request")
    }

    async fn tus_delete(&self, token: &str, path: &str) -> Response {
        self.client
            .delete(self.url(path))
            .bearer_auth(token)
            .header(TUS.0, TUS.1)
            .send()
            .await
            .expect("delete request")
    }

    async fn tus_status(&self, token: &str, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("status request")
    }

    /// Sends `bytes` in chunks of the given sizes (the last takes the rest); returns the file key.
    async fn tus_upload_chunks(&self, token: &str, path: &str, bytes: &[u8], sizes: &[usize]) -> String {
        let mut offset = 0;
        let mut sizes = sizes.iter().copied();
        loop {
            let size = sizes.next().unwrap_or(bytes.len() - offset).min(bytes.len() - offset);
            let response = self
                .tus_patch(token, path, offset as u64, bytes[offset..offset + size].to_vec())
                .await;
            assert_eq!(response.status(), StatusCode::NO_CONTENT, "{:?}", response.text().await);
            offset += size;
            assert_eq!(header(&response, "upload-offset"), Some(offset.to_string().as_str()));
            assert_eq!(header(&response, "tus-resumable"), Some("1.0.0"));
            if offset == bytes.len() {
                return header(&response, "handoff-file-key")
                    .expect("file key on completion")
                    .to_owned();
            }
            assert!(header(&response, "handoff-file-key").is_none());
            assert!(header(&response, "upload-expires").is_some_and(|v| v.ends_with(" GMT")));
        }
    }

    /// The file's bytes, checked against `expected` by SHA-256 and the record's `sha256`.
    async fn assert_file(&self, token: &str, key: &str, expected: &[u8]) {
        let meta: Value = self.metadata(token, key).await.json().await.expect("metadata");
        assert_eq!(meta["sha256"], sha256_hex(expected));
        assert_eq!(meta["size"], expected.len() as u64);
        let body = self.content(token, key).await.bytes().await.expect("content");
        assert_eq!(sha256_hex(&body), sha256_hex(expected));
    }
}

/// Where the local backend keeps partial uploads.
fn local_partials(app: &TestApp) -> usize {
    std::fs::read_dir(app.storage_dir().join("uploads")).map_or(0, |d| d.count())
}

#[tokio::test]
async fn options_advertise_the_protocol_without_a_token() {
    let app = TestApp::spawn().await;
    for path in ["/uploads", "/uploads/anything"] {
        let response = app.client.request(Method::OPTIONS, app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        assert_eq!(header(&response, "tus-resumable"), Some("1.0.0"));
        assert_eq!(header(&response, "tus-version"), Some("1.0.0"));
        let extensions: Vec<&str> = header(&response, "tus-extension").unwrap().split(',').collect();
        for wanted in [
            "creation",
            "creation-with-upload",
            "creation-defer-length",
            "termination",
            "checksum",
            "expiration",
        ] {
            assert!(extensions.contains(&wanted), "{wanted}");
        }
        assert_eq!(header(&response, "tus-checksum-algorithm"), Some("sha256"));
        assert_eq!(
            header(&response, "tus-max-size"),
            Some(app.config.limits.max_file_size.to_string().as_str())
        );
    }
}

#[tokio::test]
async fn chunked_upload_becomes_a_normal_file_on_every_backend() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        let alice = app.user("alice").await;
        // Chunks that cross S3 part boundaries (8 MiB) and leave odd tails in between.
        let bytes = random_bytes(25 * 1024 * 1024 + 17, 5);
        let path = app.tus_new(&alice.token, Some(bytes.len() as u64)).await;

        let head = app.tus_head(&alice.token, &path).await;
        assert_eq!(head.status(), StatusCode::OK);
        assert_eq!(header(&head, "upload-offset"), Some("0"));
        assert_eq!(header(&head, "upload-length"), Some(bytes.len().to_string().as_str()));
        assert_eq!(
            header(&head, "upload-metadata"),
            Some(metadata("data.bin", "application/x-test").as_str())
        );
        assert_eq!(header(&head, "cache-control"), Some("no-store"));

        let sizes = [1 << 20, 9 << 20, 3, 12 << 20, 100];
        let key = app.tus_upload_chunks(&alice.token, &path, &bytes, &sizes).await;
        app.assert_file(&alice.token, &key, &bytes).await;
        let meta: Value = app.metadata(&alice.token, &key).await.json().await.unwrap();
        assert_eq!(meta["name"], "data.bin", "{backend:?}");
        assert_eq!(meta["content_type"], "application/x-test");

        // The status resource and HEAD both report the finished upload and its key.
        let status: Value = app.tus_status(&alice.token, &path).await.json().await.unwrap();
        assert_eq!(status["complete"], true);
        assert_eq!(status["offset"], bytes.len() as u64);
        assert_eq!(status["file"]["key"], key.as_str());
        let head = app.tus_head(&alice.token, &path).await;
        assert_eq!(header(&head, "handoff-file-key"), Some(key.as_str()));
        assert_eq!(header(&head, "upload-offset"), Some(bytes.len().to_string().as_str()));
        // The file is listed like any other, and nothing partial is left behind.
        let list: Value = app.list(&alice.token, &[]).await.json().await.unwrap();
        assert_eq!(list["files"].as_array().unwrap().len(), 1);
        if backend == Backend::Embedded {
            assert_eq!(local_partials(&app), 0);
        }
        assert_eq!(app.blob_count().await, 1);
    }
}

#[tokio::test]
async fn an_upload_survives_a_restart_on_every_backend() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        let alice = app.user("alice").await;
        let bytes = random_bytes(11 * 1024 * 1024 + 5, 9);
        let path = app.tus_new(&alice.token, Some(bytes.len() as u64)).await;
        let first = 10 * 1024 * 1024 + 1;
        let response = app.tus_patch(&alice.token, &path, 0, bytes[..first].to_vec()).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);

        let app = app.restart().await;
        assert_eq!(app.tus_offset(&alice.token, &path).await, first as u64, "{backend:?}");
        let response = app
            .tus_patch(&alice.token, &path, first as u64, bytes[first..].to_vec())
            .await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let key = header(&response, "handoff-file-key").unwrap().to_owned();
        app.assert_file(&alice.token, &key, &bytes).await;
    }
}

#[tokio::test]
async fn creation_with_upload_and_empty_uploads_complete_at_once() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        let alice = app.user("alice").await;
        let bytes = b"all in the creation request".to_vec();
        let response = app
            .client
            .post(app.url("/uploads"))
            .bearer_auth(&alice.token)
            .header(TUS.0, TUS.1)
            .header(CHUNK_TYPE.0, CHUNK_TYPE.1)
            .header("upload-length", bytes.len().to_string())
            .header("upload-metadata", metadata("note.txt", "text/plain"))
            .body(bytes.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(
            header(&response, "upload-offset"),
            Some(bytes.len().to_string().as_str())
        );
        let key = header(&response, "handoff-file-key").expect("key").to_owned();
        app.assert_file(&alice.token, &key, &bytes).await;

        // A first chunk only: the rest follows with PATCH.
        let response = app
            .client
            .post(app.url("/uploads"))
            .bearer_auth(&alice.token)
            .header(TUS.0, TUS.1)
            .header(CHUNK_TYPE.0, CHUNK_TYPE.1)
            .header("upload-length", "10")
            .body(b"01234".to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(header(&response, "upload-offset"), Some("5"));
        let path = header(&response, "location").unwrap().to_owned();
        let response = app.tus_patch(&alice.token, &path, 5, b"56789".to_vec()).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let key = header(&response, "handoff-file-key").expect("key").to_owned();
        app.assert_file(&alice.token, &key, b"0123456789").await;

        let response = app
            .tus_create(&alice.token, Some(0), &metadata("empty", "text/plain"))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let key = header(&response, "handoff-file-key")
            .expect("empty upload completes at once")
            .to_owned();
        app.assert_file(&alice.token, &key, b"").await;
        let meta: Value = app.metadata(&alice.token, &key).await.json().await.unwrap();
        assert_eq!(meta["name"], "empty");
        // Without a name in the metadata, the file is called `upload`.
        let response = app.tus_create(&alice.token, Some(0), "").await;
        let key = header(&response, "handoff-file-key").expect("key").to_owned();
        let meta: Value = app.metadata(&alice.token, &key).await.json().await.unwrap();
        assert_eq!(meta["name"], "upload");
    }
}

#[tokio::test]
async fn deferred_length_is_set_by_a_later_patch() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        let alice = app.user("alice").await;
        let path = app.tus_new(&alice.token, None).await;
        let head = app.tus_head(&alice.token, &path).await;
        assert_eq!(header(&head, "upload-defer-length"), Some("1"));
        assert!(header(&head, "upload-length").is_none());
        let bytes = random_bytes(3000, 4);
        let response = app.tus_patch(&alice.token, &path, 0, bytes[..1000].to_vec()).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let response = app
            .client
            .patch(app.url(&path))
            .bearer_auth(&alice.token)
            .header(TUS.0, TUS.1)
            .header(CHUNK_TYPE.0, CHUNK_TYPE.1)
            .header("upload-offset", "1000")
            .header("upload-length", "3000")
            .body(bytes[1000..].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT, "{backend:?}");
        let key = header(&response, "handoff-file-key").expect("completed").to_owned();
        app.assert_file(&alice.token, &key, &bytes).await;
    }
}

#[tokio::test]
async fn wrong_offsets_bad_checksums_and_overlong_bodies_leave_the_prefix_intact() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        let alice = app.user("alice").await;
        let bytes = random_bytes(9 * 1024 * 1024, 12);
        let path = app.tus_new(&alice.token, Some(bytes.len() as u64)).await;
        let first = 4 * 1024 * 1024;
        assert_eq!(
            app.tus_patch(&alice.token, &path, 0, bytes[..first].to_vec())
                .await
                .status(),
            StatusCode::NO_CONTENT
        );

        // Wrong offset: 409, with the real offset.
        let response = app.tus_patch(&alice.token, &path, 7, bytes[7..100].to_vec()).await;
        assert_eq!(header(&response, "upload-offset"), Some(first.to_string().as_str()));
        assert_problem(response, StatusCode::CONFLICT, "offset_mismatch").await;

        // Bad checksum (over a part-sized chunk): 460, and the chunk is gone.
        let wrong = STANDARD.encode(Sha256::digest(b"something else"));
        let response = app
            .client
            .patch(app.url(&path))
            .bearer_auth(&alice.token)
            .header(TUS.0, TUS.1)
            .header(CHUNK_TYPE.0, CHUNK_TYPE.1)
            .header("upload-offset", first.to_string())
            .header("upload-checksum", format!("sha256 {wrong}"))
            .body(bytes[first..].to_vec())
            .send()
            .await
            .unwrap();
        assert_problem(response, StatusCode::from_u16(460).unwrap(), "checksum_mismatch").await;
        assert_eq!(app.tus_offset(&alice.token, &path).await, first as u64, "{backend:?}");

        // An algorithm we do not offer: 400.
        let response = app
            .client
            .patch(app.url(&path))
            .bearer_auth(&alice.token)
            .header(TUS.0, TUS.1)
            .header(CHUNK_TYPE.0, CHUNK_TYPE.1)
            .header("upload-offset", first.to_string())
            .header("upload-checksum", "md5 1B2M2Y8AsgTpgAmY7PhCfg==")
            .body(bytes[first..first + 10].to_vec())
            .send()
            .await
            .unwrap();
        assert_problem(response, StatusCode::BAD_REQUEST, "checksum_algorithm_unsupported").await;

        // More than Upload-Length, declared up front: 413 before anything is read.
        let mut too_long = bytes[first..].to_vec();
        too_long.extend_from_slice(b"one byte too many... or a few");
        let response = app.tus_patch(&alice.token, &path, first as u64, too_long.clone()).await;
        assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "upload_length_exceeded").await;
        assert_eq!(app.tus_offset(&alice.token, &path).await, first as u64);
        // Streamed without a length: refused when it goes past; a checkpoint taken on the way may have kept a
        // prefix of it, but never a byte past the length and never a wrong byte (the final hash checks that).
        let pieces: Vec<_> = too_long
            .chunks(64 * 1024)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect();
        let response = app
            .tus_patch(
                &alice.token,
                &path,
                first as u64,
                reqwest::Body::wrap_stream(futures::stream::iter(pieces)),
            )
            .await;
        assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "upload_length_exceeded").await;
        let first = app.tus_offset(&alice.token, &path).await as usize;
        assert!(first < bytes.len(), "{backend:?}: {first}");

        // The right chunk with the right checksum completes the upload with exactly the right bytes.
        let right = STANDARD.encode(Sha256::digest(&bytes[first..]));
        let response = app
            .client
            .patch(app.url(&path))
            .bearer_auth(&alice.token)
            .header(TUS.0, TUS.1)
            .header(CHUNK_TYPE.0, CHUNK_TYPE.1)
            .header("upload-offset", first.to_string())
            .header("upload-checksum", format!("sha256 {right}"))
            .body(bytes[first..].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let key = header(&response, "handoff-file-key").unwrap().to_owned();
        app.assert_file(&alice.token, &key, &bytes).await;

        // A finished upload takes no more bytes.
        let response = app
            .tus_patch(&alice.token, &path, bytes.len() as u64, b"x".to_vec())
            .await;
        assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "upload_length_exceeded").await;
    }
}

#[tokio::test]
async fn an_interrupted_chunk_keeps_what_arrived() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bytes = random_bytes(1 << 20, 8);
    let path = app.tus_new(&alice.token, Some(bytes.len() as u64)).await;
    // A body that fails half-way: the client connection is cut.
    let half = bytes[..512 * 1024].to_vec();
    let stream = futures::stream::iter(vec![
        Ok::<_, std::io::Error>(half),
        Err(std::io::Error::other("cable pulled")),
    ]);
    let _ = app
        .client
        .patch(app.url(&path))
        .bearer_auth(&alice.token)
        .header(TUS.0, TUS.1)
        .header(CHUNK_TYPE.0, CHUNK_TYPE.1)
        .header("upload-offset", "0")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    // The server records the arrived prefix (once it has noticed the broken body).
    let mut offset = 0;
    for _ in 0..50 {
        offset = app.tus_offset(&alice.token, &path).await;
        if offset > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(offset, 512 * 1024);
    let key = loop {
        let response = app
            .tus_patch(&alice.token, &path, offset, bytes[offset as usize..].to_vec())
            .await;
        if response.status() == StatusCode::LOCKED {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        break header(&response, "handoff-file-key").unwrap().to_owned();
    };
    app.assert_file(&alice.token, &key, &bytes).await;
}

/// A PATCH whose body the test feeds by hand, so that it stays in flight.
struct SlowPatch {
    sender: tokio::sync::mpsc::Sender<Vec<u8>>,
    response: tokio::task::JoinHandle<Response>,
}

fn slow_patch(app: &TestApp, token: &str, path: &str, offset: u64) -> SlowPatch {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|chunk| (Ok::<_, std::io::Error>(chunk), receiver))
    });
    let request = app
        .client
        .patch(app.url(path))
        .bearer_auth(token)
        .header(TUS.0, TUS.1)
        .header(CHUNK_TYPE.0, CHUNK_TYPE.1)
        .header("upload-offset", offset.to_string())
        .body(reqwest::Body::wrap_stream(stream));
    SlowPatch {
        sender,
        response: tokio::spawn(async move { request.send().await.expect("slow patch") }),
    }
}

#[tokio::test]
async fn concurrent_patches_have_one_winner_across_nodes() {
    for backend in all_backends() {
        let node_a = TestApp::spawn_on(backend, |_| {}).await;
        // A second node on the same stores.
        let (database_url, storage_url, data_dir) = (
            node_a.config.database_url.clone(),
            node_a.config.storage_url.clone(),
            node_a.config.data_dir.clone(),
        );
        let node_b = TestApp::spawn_on(Backend::Embedded, |c| {
            c.database_url =
                database_url.or_else(|| Some(format!("sqlite://{}", data_dir.join("handoff.db").display())));
            c.storage_url = storage_url.or_else(|| Some(format!("file://{}", data_dir.join("storage").display())));
            c.data_dir = data_dir.clone();
        })
        .await;
        let alice = node_a.user("alice").await;
        let bytes = random_bytes(2 * 1024 * 1024, 21);
        let path = node_a.tus_new(&alice.token, Some(bytes.len() as u64)).await;

        let slow = slow_patch(&node_a, &alice.token, &path, 0);
        slow.sender.send(bytes[..1024 * 1024].to_vec()).await.unwrap();
        // Give node A time to take the lease (it does so before reading the body), then contend from node B.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let contender = node_b.tus_patch(&alice.token, &path, 0, bytes.clone()).await;
        assert_problem(contender, StatusCode::LOCKED, "upload_locked").await;

        slow.sender
            .send(bytes[1024 * 1024..1536 * 1024].to_vec())
            .await
            .unwrap();
        drop(slow.sender);
        let response = slow.response.await.unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT, "{backend:?}");
        assert_eq!(header(&response, "upload-offset"), Some("1572864"));
        // The other node continues where the winner stopped.
        assert_eq!(node_b.tus_offset(&alice.token, &path).await, 1_572_864);
        let response = node_b
            .tus_patch(&alice.token, &path, 1_572_864, bytes[1_572_864..].to_vec())
            .await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let key = header(&response, "handoff-file-key").unwrap().to_owned();
        node_a.assert_file(&alice.token, &key, &bytes).await;
    }
}

#[tokio::test]
async fn a_lease_left_by_a_dead_process_runs_out() {
    let app = TestApp::spawn_with(|c| c.tus.lease_secs = 1).await;
    let alice = app.user("alice").await;
    let path = app.tus_new(&alice.token, Some(4)).await;
    let id = handoff_core::UploadId::parse(path.trim_start_matches("/uploads/")).unwrap();
    // A process that took the lease and died: nobody renews or releases it.
    let now = handoff_core::now();
    let token = handoff_core::LeaseToken::generate();
    let taken = app
        .state
        .meta
        .lease_upload(&id, &token, now + Duration::from_secs(1), now)
        .await
        .unwrap();
    assert!(taken.is_some());
    assert_problem(
        app.tus_patch(&alice.token, &path, 0, b"data".to_vec()).await,
        StatusCode::LOCKED,
        "upload_locked",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = app.tus_patch(&alice.token, &path, 0, b"data".to_vec()).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    // The dead process's late write is refused: its lease is gone.
    let progress = handoff_core::UploadProgress {
        offset: 4,
        length: Some(4),
        store_state: String::new(),
        hash_state: Vec::new(),
        expires_at: now,
    };
    assert!(
        !app.state
            .meta
            .record_upload_progress(&id, &token, &progress)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn uploads_are_private_to_their_owner() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        let alice = app.user("alice").await;
        let mallory = app.user("mallory").await;
        let path = app.tus_new(&alice.token, Some(10)).await;
        assert_eq!(path.len(), "/uploads/".len() + 32, "192-bit ids");
        for response in [
            app.tus_patch(&mallory.token, &path, 0, b"0123456789".to_vec()).await,
            app.tus_status(&mallory.token, &path).await,
            app.tus_delete(&mallory.token, &path).await,
            app.tus_status(&alice.token, "/uploads/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
                .await,
            app.tus_status(&alice.token, "/uploads/..%2f..%2fetc").await,
        ] {
            assert_problem(response, StatusCode::NOT_FOUND, "upload_not_found").await;
        }
        assert_eq!(
            app.tus_head(&mallory.token, &path).await.status(),
            StatusCode::NOT_FOUND
        );
        // Without a token: 401.
        let response = app
            .client
            .head(app.url(&path))
            .header(TUS.0, TUS.1)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        // Still intact for its owner.
        assert_eq!(app.tus_offset(&alice.token, &path).await, 0);
    }
}

#[tokio::test]
async fn termination_discards_the_bytes() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        let alice = app.user("alice").await;
        let bytes = random_bytes(9 * 1024 * 1024, 2);
        let path = app.tus_new(&alice.token, Some(bytes.len() as u64 + 1)).await;
        let response = app.tus_patch(&alice.token, &path, 0, bytes).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let response = app.tus_delete(&alice.token, &path).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        assert_eq!(app.tus_head(&alice.token, &path).await.status(), StatusCode::NOT_FOUND);
        assert_problem(
            app.tus_patch(&alice.token, &path, 0, b"x".to_vec()).await,
            StatusCode::NOT_FOUND,
            "upload_not_found",
        )
        .await;
        if backend == Backend::Embedded {
            assert_eq!(local_partials(&app), 0);
        }
        assert_eq!(app.blob_count().await, 0);
    }
}

#[tokio::test]
async fn expired_uploads_are_refused_and_reclaimed() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |c| c.tus.expiry_secs = 1).await;
        let alice = app.user("alice").await;
        let bytes = random_bytes(9 * 1024 * 1024, 3);
        let path = app.tus_new(&alice.token, Some(bytes.len() as u64 * 2)).await;
        let response = app.tus_patch(&alice.token, &path, 0, bytes.clone()).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let expires = header(&response, "upload-expires").unwrap().to_owned();
        assert!(httpdate_like(&expires), "{expires}");
        if backend == Backend::Embedded {
            assert_eq!(local_partials(&app), 1);
        }
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(app.tus_head(&alice.token, &path).await.status(), StatusCode::GONE);
        assert_problem(
            app.tus_patch(&alice.token, &path, bytes.len() as u64, bytes.clone())
                .await,
            StatusCode::GONE,
            "upload_expired",
        )
        .await;
        let reclaimed = handoff_server::uploads::expiry::reclaim(&app.state).await.unwrap();
        assert_eq!(reclaimed, 1, "{backend:?}");
        assert_eq!(app.tus_head(&alice.token, &path).await.status(), StatusCode::NOT_FOUND);
        if backend == Backend::Embedded {
            assert_eq!(local_partials(&app), 0);
        }
        assert_eq!(handoff_server::uploads::expiry::reclaim(&app.state).await.unwrap(), 0);
    }
}

fn httpdate_like(value: &str) -> bool {
    // e.g. "Sat, 28 Nov 2026 05:30:00 GMT"
    value.len() == 29 && value.ends_with(" GMT") && value.as_bytes()[3] == b','
}

#[tokio::test]
async fn open_uploads_per_user_are_bounded() {
    let app = TestApp::spawn_with(|c| c.tus.max_open_per_user = 2).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let first = app.tus_new(&alice.token, Some(10)).await;
    app.tus_new(&alice.token, Some(10)).await;
    let response = app.tus_create(&alice.token, Some(10), "").await;
    assert_problem(response, StatusCode::TOO_MANY_REQUESTS, "too_many_open_uploads").await;
    app.tus_new(&bob.token, Some(10)).await;
    // Finishing one frees a place.
    app.tus_upload_chunks(&alice.token, &first, b"0123456789", &[]).await;
    app.tus_new(&alice.token, Some(10)).await;
}

#[tokio::test]
async fn requests_without_the_tus_version_or_with_oversized_lengths_are_refused() {
    let app = TestApp::spawn_with(|c| c.limits.max_file_size = 1000).await;
    let alice = app.user("alice").await;
    let response = app
        .client
        .post(app.url("/uploads"))
        .bearer_auth(&alice.token)
        .header("upload-length", "10")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&response, "tus-version"), Some("1.0.0"));
    assert_problem(response, StatusCode::PRECONDITION_FAILED, "tus_version_unsupported").await;
    let response = app.tus_create(&alice.token, Some(1001), "").await;
    assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "file_too_large").await;
    // A deferred-length upload is bounded by the same limit.
    let path = app.tus_new(&alice.token, None).await;
    let response = app.tus_patch(&alice.token, &path, 0, vec![0u8; 1001]).await;
    assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "file_too_large").await;
    // PATCH needs the tus content type.
    let response = app
        .client
        .patch(app.url(&path))
        .bearer_auth(&alice.token)
        .header(TUS.0, TUS.1)
        .header("upload-offset", "0")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type").await;
}

/// Deterministic xorshift, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, items: &[&'a [u8]]) -> &'a [u8] {
        items[(self.next() % items.len() as u64) as usize]
    }

    /// Random visible-ASCII-and-tab bytes (what a header value may hold), sometimes long.
    fn junk(&mut self) -> Vec<u8> {
        let len = match self.next() % 10 {
            0 => 3000 + (self.next() % 3000) as usize,
            _ => (self.next() % 40) as usize,
        };
        (0..len)
            .map(|_| match (self.next() % 97) as u8 {
                0 => b'\t',
                n => 0x20 + (n % 95),
            })
            .collect()
    }
}

#[tokio::test]
async fn malformed_tus_headers_never_cause_a_server_error() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let path = app.tus_new(&alice.token, Some(100)).await;
    // The same parsers behind an upload link's tus endpoint.
    let link = app
        .post_json(
            &alice.token,
            "/upload-links",
            serde_json::json!({}),
            StatusCode::CREATED,
        )
        .await;
    let link_base = format!("/u/{}/uploads", link["token"].as_str().unwrap());
    let response = app
        .client
        .post(app.url(&link_base))
        .header(TUS.0, TUS.1)
        .header("upload-length", "100")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let link_path = header(&response, "location").unwrap().to_owned();
    let interesting: &[&[u8]] = &[
        b"",
        b"0",
        b"-1",
        b"1.0.0",
        b"1.0",
        b"18446744073709551615",
        b"18446744073709551616",
        b"99999999999999999999999999",
        b"sha256",
        b"sha256 ",
        b"sha256 AAAA",
        b"sha1 2jmj7l5rSw0yVb/vlWAYkK/YBwk=",
        b"filename",
        b"filename ,",
        b",,,",
        b"a a,a a",
        b"filename \xc3\xa9",
        b"application/offset+octet-stream",
        b"application/offset+octet-stream; charset=x",
        b"1",
        b"2",
        b" 5",
        b"5 ",
        b"0x10",
    ];
    let names = [
        "tus-resumable",
        "upload-length",
        "upload-offset",
        "upload-defer-length",
        "upload-metadata",
        "upload-checksum",
        "content-type",
    ];
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for round in 0..300 {
        let method = match round % 4 {
            0 => Method::POST,
            1 => Method::PATCH,
            2 => Method::HEAD,
            _ => Method::DELETE,
        };
        let (collection, upload) = match round % 8 {
            0..4 => ("/uploads", path.as_str()),
            _ => (link_base.as_str(), link_path.as_str()),
        };
        let url = if method == Method::POST {
            app.url(collection)
        } else {
            app.url(upload)
        };
        let mut request = app.client.request(method.clone(), url).bearer_auth(&alice.token);
        let mut sent = Vec::new();
        for name in names {
            let value = match rng.next() % 4 {
                0 => continue,
                1 => rng.junk(),
                _ => rng.pick(interesting).to_vec(),
            };
            let Ok(value) = reqwest::header::HeaderValue::from_bytes(&value) else {
                continue;
            };
            sent.push((name, value.clone()));
            request = request.header(name, value);
        }
        if round % 3 == 0 {
            request = request.body(random_bytes((rng.next() % 200) as usize, round));
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        assert!(!status.is_server_error(), "{method} {sent:?} → {status}");
        if status.is_client_error() && method != Method::HEAD {
            let content_type = header(&response, "content-type").unwrap_or_default().to_owned();
            assert_eq!(content_type, "application/problem+json", "{method} {sent:?} → {status}");
        }
    }
}

#[tokio::test]
async fn the_collector_spares_a_finished_blob_whose_upload_is_still_open() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let path = app.tus_new(&alice.token, Some(5)).await;
    let id = handoff_core::UploadId::parse(path.trim_start_matches("/uploads/")).unwrap();
    let session = app.state.meta.upload_by_id(&id).await.unwrap().unwrap();
    // A process that finished the blob and died before committing the file row.
    let mut writer = app.state.blobs.resume(session.blob, "", 0).await.unwrap();
    writer.write(bytes::Bytes::from_static(b"12345")).await.unwrap();
    let state = writer.seal().await.unwrap();
    app.state.blobs.finish_resumable(session.blob, &state).await.unwrap();
    assert_eq!(app.blob_count().await, 1);
    handoff_server::maintenance::collect(&app.state, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(app.blob_count().await, 1, "the open upload's blob was collected");
    // Once the session is gone, the blob is an orphan like any other.
    assert_eq!(
        app.tus_delete(&alice.token, &path).await.status(),
        StatusCode::NO_CONTENT
    );
    handoff_server::maintenance::collect(&app.state, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(app.blob_count().await, 0);
}

/// An upload into an account without a quota checks no room, and the server may remember that the account has
/// none; a quota an admin sets afterwards applies from the very next upload, with what open uploads reserve.
#[tokio::test]
async fn a_quota_set_later_applies_to_the_next_upload() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        let root = app.user("root").await;
        let alice = app.user("alice").await;
        app.upload_ok(&alice.token, "before.bin", vec![1u8; 100]).await;

        let response = app
            .patch_as(
                &root.token,
                "/admin/users/alice",
                json!({ "quota": { "bytes": 1000, "files": null } }),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{backend:?}");
        app.tus_new(&alice.token, Some(800)).await;
        // 100 stored and 800 reserved: 100 bytes remain, though the stored files alone leave 900.
        let response = app.upload(&alice.token, "after.bin", vec![2u8; 101]).await;
        assert_problem(response, StatusCode::INSUFFICIENT_STORAGE, "quota_exceeded").await;
        app.upload_ok(&alice.token, "after.bin", vec![2u8; 100]).await;

        // Lifting the quota again lets the next upload through at once.
        let response = app
            .patch_as(
                &root.token,
                "/admin/users/alice",
                json!({ "quota": { "bytes": null, "files": null } }),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{backend:?}");
        app.upload_ok(&alice.token, "later.bin", vec![3u8; 2000]).await;
    }
}

/// Unfinished uploads count against the quota while they exist: a declared length beyond the room is refused at
/// creation, and the length an open upload declared is reserved, so other uploads cannot take it and the upload
/// can always finish.
#[tokio::test]
async fn open_uploads_count_against_the_quota() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |c| c.quotas.user_bytes = Some(1000)).await;
        let alice = app.user("alice").await;
        let response = app
            .tus_create(&alice.token, Some(1001), &metadata("big.bin", "application/x-test"))
            .await;
        assert_problem(response, StatusCode::INSUFFICIENT_STORAGE, "quota_exceeded").await;

        let path = app.tus_new(&alice.token, Some(800)).await;
        let response = app.tus_patch(&alice.token, &path, 0, vec![1u8; 600]).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT, "{backend:?}");
        // 800 bytes are reserved by the open upload: 200 remain for anything else.
        let response = app.upload(&alice.token, "other.bin", vec![2u8; 201]).await;
        assert_problem(response, StatusCode::INSUFFICIENT_STORAGE, "quota_exceeded").await;
        let response = app
            .tus_create(&alice.token, Some(201), &metadata("second.bin", "application/x-test"))
            .await;
        assert_problem(response, StatusCode::INSUFFICIENT_STORAGE, "quota_exceeded").await;
        app.upload_ok(&alice.token, "small.bin", vec![2u8; 200]).await;

        // The reserved upload still finishes, and the quota is exactly used up.
        let response = app.tus_patch(&alice.token, &path, 600, vec![1u8; 200]).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT, "{backend:?}");
        assert!(header(&response, "handoff-file-key").is_some(), "{backend:?}");
        let me: Value = app.me(&alice.token).await.json().await.unwrap();
        assert_eq!(me["usage"]["bytes"], 1000, "{backend:?}");
        assert_eq!(me["usage"]["files"], 2, "{backend:?}");
    }
}
