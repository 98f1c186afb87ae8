//! Direct transfers (`/upload-sessions`, `GET /files/{key}/download-url`) on every backend: SQLite + local disk
//! (URLs signed and served by the server), and PostgreSQL + S3 and DynamoDB + S3 (URLs presigned for s3s-fs,
//! which checks SigV4 signatures and expiry itself). The bytes go to the URLs with a plain HTTP client (no token) and with curl.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, assert_problem, every_deployment, random_bytes, sha256_hex};

const MIB: usize = 1 << 20;

/// S3's smallest part; the local backend uses the same plan so both legs run the same story.
fn five_mib_parts(c: &mut handoff_server::Config) {
    c.direct.part_size = 5 << 20;
}

impl TestApp {
    /// A URL from the API: absolute (S3, or `direct.public_url`) or a path on this server.
    fn absolute(&self, url: &str) -> String {
        if url.starts_with("http") {
            url.to_owned()
        } else {
            self.url(url)
        }
    }

    async fn session(&self, token: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url("/upload-sessions"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn session_ok(&self, token: &str, body: Value) -> Value {
        let response = self.session(token, body).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(response.headers()["cache-control"], "no-store");
        response.json().await.unwrap()
    }

    async fn part_urls(&self, token: &str, id: &str, numbers: &[u32]) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/upload-sessions/{id}/parts")))
            .bearer_auth(token)
            .json(&json!({ "part_numbers": numbers }))
            .send()
            .await
            .unwrap()
    }

    async fn part_url(&self, token: &str, id: &str, number: u32) -> String {
        let response = self.part_urls(token, id, &[number]).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        self.absolute(body["parts"][0]["url"].as_str().unwrap())
    }

    /// `PUT`s bytes to a signed URL with a client that holds no token; returns the status and ETag.
    async fn put_bytes(&self, url: &str, bytes: Vec<u8>) -> (StatusCode, Option<String>) {
        let response = reqwest::Client::new().put(url).body(bytes).send().await.unwrap();
        let etag = response.headers().get("etag").map(|v| v.to_str().unwrap().to_owned());
        (response.status(), etag)
    }

    async fn session_status(&self, token: &str, id: &str) -> reqwest::Response {
        self.get_as(token, &format!("/upload-sessions/{id}")).await
    }

    async fn complete(&self, token: &str, id: &str, body: Option<Value>) -> reqwest::Response {
        let request = self
            .client
            .post(self.url(&format!("/upload-sessions/{id}/complete")))
            .bearer_auth(token);
        let request = match body {
            Some(body) => request.json(&body),
            None => request,
        };
        request.send().await.unwrap()
    }

    async fn download_url(&self, token: &str, key: &str) -> reqwest::Response {
        self.get_as(token, &format!("/files/{key}/download-url")).await
    }

    async fn file_count(&self, token: &str) -> usize {
        let list: Value = self.list(token, &[]).await.json().await.unwrap();
        list["files"].as_array().unwrap().len()
    }
}

/// Changes one character of the signature (the value after `marker`) to another valid one.
fn tamper(url: &str, marker: &str) -> String {
    let at = url.find(marker).unwrap() + marker.len();
    // Hex (S3) and base64url (ours) both contain `0` and `1`: the result stays well-formed, just wrong.
    let flipped = if &url[at..=at] == "0" { "1" } else { "0" };
    format!("{}{flipped}{}", &url[..at], &url[at + 1..])
}

fn signature_marker(backend: Backend) -> &'static str {
    match backend {
        Backend::Embedded => "&sig=",
        Backend::Scaled | Backend::Serverless => "X-Amz-Signature=",
    }
}

/// curl, the real client for presigned URLs (required when `CI` is set).
fn curl() -> Option<&'static str> {
    let found = std::process::Command::new("curl").arg("--version").output().is_ok();
    if !found && std::env::var_os("CI").is_some() {
        panic!("curl is required when CI is set");
    }
    found.then_some("curl")
}

#[tokio::test]
async fn a_single_put_becomes_a_file_on_every_backend() {
    for backend in every_deployment() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        let alice = app.user("alice").await;
        let bob = app.user("bob").await;
        let bytes = random_bytes(300_000, 21);
        let session = app
            .session_ok(
                &alice.token,
                json!({"name": "photo.jpg", "size": bytes.len(), "sha256": sha256_hex(&bytes)}),
            )
            .await;
        assert_eq!(session["part_count"], 1, "{backend:?}");
        let url = app.absolute(session["upload_url"]["url"].as_str().unwrap());
        assert_eq!(session["upload_url"]["method"], "PUT");
        let id = session["id"].as_str().unwrap().to_owned();
        // Nobody else can see or use the session.
        for response in [
            app.session_status(&bob.token, &id).await,
            app.complete(&bob.token, &id, None).await,
            app.part_urls(&bob.token, &id, &[1]).await,
            app.delete_as(&bob.token, &format!("/upload-sessions/{id}")).await,
        ] {
            assert_problem(response, StatusCode::NOT_FOUND, "upload_session_not_found").await;
        }

        // The bytes go with curl, straight to the URL (no token).
        let file = app.data_dir.path().join("photo.jpg");
        std::fs::write(&file, &bytes).unwrap();
        if let Some(curl) = curl() {
            // tokio's Command: the server runs on this test's (single) thread and must keep serving.
            let out = tokio::process::Command::new(curl)
                .args(["-sS", "-f", "-o", "/dev/null", "-w", "%{http_code}", "-T"])
                .arg(&file)
                .arg(&url)
                .output()
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "{backend:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
        } else {
            assert_eq!(app.put_bytes(&url, bytes.clone()).await.0, StatusCode::OK);
        }
        assert_eq!(
            app.file_count(&alice.token).await,
            0,
            "nothing visible before completion"
        );

        let response = app.complete(&alice.token, &id, None).await;
        assert_eq!(response.status(), StatusCode::CREATED, "{backend:?}");
        let created: Value = response.json().await.unwrap();
        assert_eq!(created["sha256"], sha256_hex(&bytes));
        assert_eq!(created["size"], bytes.len());
        assert_eq!(created["name"], "photo.jpg");
        assert_eq!(created["content_type"], "image/jpeg");
        let key = created["key"].as_str().unwrap().to_owned();
        let status: Value = app.session_status(&alice.token, &id).await.json().await.unwrap();
        assert_eq!(status["state"], "completed", "{status}");
        assert_eq!(status["file_key"], key.as_str());
        // The URL dies with the completion: the file's bytes can never be replaced through it.
        let (status, _) = app.put_bytes(&url, random_bytes(300_000, 22)).await;
        assert!(status.is_client_error(), "{backend:?}: {status}");

        // Downloads: through the server, and through a short-lived URL fetched without a token.
        let body = app.content(&bob.token, &key).await.bytes().await.unwrap();
        assert_eq!(sha256_hex(&body), sha256_hex(&bytes), "{backend:?}");
        let response = app.download_url(&bob.token, &key).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["cache-control"], "no-store");
        let link: Value = response.json().await.unwrap();
        assert!(link["expires_at"].is_string());
        let download = app.absolute(link["url"].as_str().unwrap());
        let plain = reqwest::Client::new();
        let fetched = plain.get(&download).send().await.unwrap();
        assert_eq!(fetched.status(), StatusCode::OK, "{backend:?}");
        assert!(
            fetched.headers()["content-disposition"]
                .to_str()
                .unwrap()
                .starts_with("attachment"),
            "{backend:?}"
        );
        assert_eq!(sha256_hex(&fetched.bytes().await.unwrap()), sha256_hex(&bytes));
        let ranged = plain
            .get(&download)
            .header("range", "bytes=100-199")
            .send()
            .await
            .unwrap();
        assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT, "{backend:?}");
        assert_eq!(&ranged.bytes().await.unwrap()[..], &bytes[100..200]);
        let forged = tamper(&download, signature_marker(backend));
        assert_eq!(
            plain.get(&forged).send().await.unwrap().status(),
            StatusCode::FORBIDDEN,
            "{backend:?}"
        );

        // No URL for someone the policy refuses; a deleted file's URL stops working.
        app.patch(&alice.token, &key, json!({"visibility": "private"})).await;
        assert_problem(
            app.download_url(&bob.token, &key).await,
            StatusCode::NOT_FOUND,
            "file_not_found",
        )
        .await;
        assert_eq!(app.delete(&alice.token, &key).await.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            plain.get(&download).send().await.unwrap().status(),
            StatusCode::NOT_FOUND,
            "{backend:?}"
        );
    }
}

#[tokio::test]
async fn multipart_uploads_resume_from_the_stored_parts_on_every_backend() {
    for backend in every_deployment() {
        let app = TestApp::spawn_on(backend, five_mib_parts).await;
        let alice = app.user("alice").await;
        let bytes = random_bytes(10 * MIB + 1234, 23);
        let session = app
            .session_ok(
                &alice.token,
                json!({"name": "big.bin", "size": bytes.len(), "sha256": sha256_hex(&bytes), "visibility": "private"}),
            )
            .await;
        assert_eq!(session["part_count"], 3, "{backend:?}");
        assert_eq!(session["part_size"], 5 * MIB);
        assert!(session.get("upload_url").is_none());
        let id = session["id"].as_str().unwrap().to_owned();
        let chunk = |n: usize| bytes[(n - 1) * 5 * MIB..(n * 5 * MIB).min(bytes.len())].to_vec();

        let response = app.part_urls(&alice.token, &id, &[1, 2, 3]).await;
        assert_eq!(response.status(), StatusCode::OK);
        let urls: Value = response.json().await.unwrap();
        assert_eq!(urls["parts"][2]["size"], 1234);
        let url = |n: usize| app.absolute(urls["parts"][n - 1]["url"].as_str().unwrap());
        let (status, etag1) = app.put_bytes(&url(1), chunk(1)).await;
        assert_eq!(status, StatusCode::OK, "{backend:?}");
        assert!(etag1.is_some());
        assert_eq!(app.put_bytes(&url(3), chunk(3)).await.0, StatusCode::OK);

        // The client "loses" its state: the status lists what the store holds.
        let status: Value = app.session_status(&alice.token, &id).await.json().await.unwrap();
        let stored: Vec<(u64, u64)> = status["parts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["number"].as_u64().unwrap(), p["size"].as_u64().unwrap()))
            .collect();
        assert_eq!(stored, vec![(1, 5 * MIB as u64), (3, 1234)], "{backend:?}");
        assert_problem(
            app.complete(&alice.token, &id, None).await,
            StatusCode::CONFLICT,
            "part_missing",
        )
        .await;
        assert_eq!(app.file_count(&alice.token).await, 0);

        // Resume with a fresh URL for the missing part only.
        let (status, etag2) = app.put_bytes(&app.part_url(&alice.token, &id, 2).await, chunk(2)).await;
        assert_eq!(status, StatusCode::OK);
        let status: Value = app.session_status(&alice.token, &id).await.json().await.unwrap();
        let parts = status["parts"].as_array().unwrap();
        assert_eq!(parts.len(), 3);
        // Where the store lists tags (local; AWS S3), a wrong one is refused and nothing becomes visible.
        if let Some(listed) = parts[1]["etag"].as_str() {
            assert_eq!(Some(format!("\"{listed}\"")), etag2);
            let wrong = json!({"parts": [
                {"number": 1, "etag": etag1.clone().unwrap()},
                {"number": 2, "etag": "\"0123456789abcdef0123456789abcdef\""},
                {"number": 3, "etag": parts[2]["etag"]},
            ]});
            assert_problem(
                app.complete(&alice.token, &id, Some(wrong)).await,
                StatusCode::CONFLICT,
                "part_etag_mismatch",
            )
            .await;
            assert_eq!(app.file_count(&alice.token).await, 0);
        }
        let listed = json!({"parts": parts.iter().map(|p| json!({
            "number": p["number"],
            "etag": p["etag"].as_str().map_or_else(|| etag2.clone().unwrap(), str::to_owned),
        })).collect::<Vec<_>>()});
        let malformed = json!({"parts": [{"number": 1, "etag": "x"}]});
        assert_problem(
            app.complete(&alice.token, &id, Some(malformed)).await,
            StatusCode::BAD_REQUEST,
            "invalid_parts",
        )
        .await;
        let response = app.complete(&alice.token, &id, Some(listed)).await;
        assert_eq!(response.status(), StatusCode::CREATED, "{backend:?}");
        let file: Value = response.json().await.unwrap();
        assert_eq!(file["sha256"], sha256_hex(&bytes));
        assert_eq!(file["visibility"], "private");
        let key = file["key"].as_str().unwrap();
        let link: Value = app.download_url(&alice.token, key).await.json().await.unwrap();
        let fetched = reqwest::get(app.absolute(link["url"].as_str().unwrap())).await.unwrap();
        assert_eq!(
            sha256_hex(&fetched.bytes().await.unwrap()),
            sha256_hex(&bytes),
            "{backend:?}"
        );
        assert_eq!(app.blob_count().await, 1, "{backend:?}");
    }
}

#[tokio::test]
async fn size_and_checksum_mismatches_leave_nothing_on_every_backend() {
    for backend in every_deployment() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        let alice = app.user("alice").await;
        let bytes = random_bytes(100_000, 24);

        // Declared SHA-256 of other bytes: the joined object is deleted, the session is over.
        let session = app
            .session_ok(
                &alice.token,
                json!({"name": "a.bin", "size": bytes.len(), "sha256": sha256_hex(b"something else")}),
            )
            .await;
        let id = session["id"].as_str().unwrap();
        let url = app.absolute(session["upload_url"]["url"].as_str().unwrap());
        assert_eq!(app.put_bytes(&url, bytes.clone()).await.0, StatusCode::OK);
        assert_problem(
            app.complete(&alice.token, id, None).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "checksum_mismatch",
        )
        .await;
        assert_problem(
            app.session_status(&alice.token, id).await,
            StatusCode::NOT_FOUND,
            "upload_session_not_found",
        )
        .await;
        assert_eq!(app.file_count(&alice.token).await, 0);
        assert_eq!(app.blob_count().await, 0, "{backend:?}: the joined bytes are deleted");

        // Fewer bytes than declared: our server refuses the PUT; S3 takes it and completion refuses the part.
        let session = app
            .session_ok(&alice.token, json!({"name": "b.bin", "size": bytes.len()}))
            .await;
        let id = session["id"].as_str().unwrap();
        let url = app.absolute(session["upload_url"]["url"].as_str().unwrap());
        let (status, _) = app.put_bytes(&url, bytes[..1000].to_vec()).await;
        match backend {
            Backend::Embedded => assert_eq!(status, StatusCode::BAD_REQUEST),
            Backend::Scaled | Backend::Serverless => assert_eq!(status, StatusCode::OK),
        }
        let long = [bytes.clone(), b"x".to_vec()].concat();
        let (status, _) = app.put_bytes(&url, long).await;
        if backend == Backend::Embedded {
            assert_eq!(status, StatusCode::BAD_REQUEST, "too long is refused too");
        }
        if backend == Backend::Embedded {
            assert_problem(
                app.complete(&alice.token, id, None).await,
                StatusCode::CONFLICT,
                "part_missing",
            )
            .await;
        } else {
            assert_problem(
                app.complete(&alice.token, id, None).await,
                StatusCode::CONFLICT,
                "part_size_mismatch",
            )
            .await;
        }
        assert_eq!(app.file_count(&alice.token).await, 0);
        assert_eq!(app.blob_count().await, 0, "{backend:?}");
        // The session survives a refusal the client can fix.
        assert_eq!(app.put_bytes(&url, bytes.clone()).await.0, StatusCode::OK);
        assert_eq!(app.complete(&alice.token, id, None).await.status(), StatusCode::CREATED);
    }
}

#[tokio::test]
async fn tampered_and_expired_urls_are_refused_on_every_backend() {
    for backend in every_deployment() {
        let app = TestApp::spawn_on(backend, |c| c.direct.url_ttl_secs = 1).await;
        let alice = app.user("alice").await;
        let bytes = random_bytes(1000, 25);
        let session = app
            .session_ok(&alice.token, json!({"name": "t.bin", "size": bytes.len()}))
            .await;
        let id = session["id"].as_str().unwrap();
        let url = app.absolute(session["upload_url"]["url"].as_str().unwrap());
        let forged = tamper(&url, signature_marker(backend));
        assert_eq!(
            app.put_bytes(&forged, bytes.clone()).await.0,
            StatusCode::FORBIDDEN,
            "{backend:?}"
        );
        if backend == Backend::Embedded {
            // The signature binds the method and the path, and our verifier answers problem+json.
            let other_part = url.replace("/parts/1?", "/parts/2?");
            assert_problem(
                reqwest::Client::new()
                    .put(&other_part)
                    .body(bytes.clone())
                    .send()
                    .await
                    .unwrap(),
                StatusCode::FORBIDDEN,
                "invalid_signature",
            )
            .await;
            let status = reqwest::Client::new().get(&url).send().await.unwrap().status();
            assert!(status == StatusCode::METHOD_NOT_ALLOWED || status == StatusCode::FORBIDDEN);
        }
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let response = reqwest::Client::new()
            .put(&url)
            .body(bytes.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{backend:?}: expired");
        if backend == Backend::Embedded {
            assert_problem(response, StatusCode::FORBIDDEN, "url_expired").await;
        }
        // A fresh URL works.
        let fresh = app.part_url(&alice.token, id, 1).await;
        assert_eq!(app.put_bytes(&fresh, bytes).await.0, StatusCode::OK);
        assert_eq!(app.complete(&alice.token, id, None).await.status(), StatusCode::CREATED);
    }
}

#[tokio::test]
async fn aborted_and_expired_sessions_give_their_parts_back_on_every_backend() {
    for backend in every_deployment() {
        let app = TestApp::spawn_on(backend, |c| {
            five_mib_parts(c);
            c.direct.expiry_secs = 2;
        })
        .await;
        let alice = app.user("alice").await;
        let part = random_bytes(5 * MIB, 26);
        let size = json!(12 * MIB);

        let aborted = app.session_ok(&alice.token, json!({"name": "x", "size": size})).await;
        let aborted_id = aborted["id"].as_str().unwrap();
        let url = app.part_url(&alice.token, aborted_id, 1).await;
        assert_eq!(app.put_bytes(&url, part.clone()).await.0, StatusCode::OK);
        let kept = app.session_ok(&alice.token, json!({"name": "y", "size": size})).await;
        let kept_id = kept["id"].as_str().unwrap();
        let kept_url = app.part_url(&alice.token, kept_id, 1).await;
        assert_eq!(app.put_bytes(&kept_url, part.clone()).await.0, StatusCode::OK);
        let kept_session = app
            .state
            .meta
            .direct_upload(&handoff_core::UploadId::parse(kept_id).unwrap())
            .await
            .unwrap()
            .unwrap();

        let response = app
            .delete_as(&alice.token, &format!("/upload-sessions/{aborted_id}"))
            .await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        assert_problem(
            app.session_status(&alice.token, aborted_id).await,
            StatusCode::NOT_FOUND,
            "upload_session_not_found",
        )
        .await;
        assert!(
            app.put_bytes(&url, part.clone()).await.0.is_client_error(),
            "{backend:?}"
        );

        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_problem(
            app.session_status(&alice.token, kept_id).await,
            StatusCode::GONE,
            "upload_session_expired",
        )
        .await;
        assert_eq!(
            handoff_server::direct::reclaim(&app.state).await.unwrap(),
            1,
            "{backend:?}"
        );
        assert_eq!(handoff_server::direct::reclaim(&app.state).await.unwrap(), 0);
        // The store holds nothing of either upload any more.
        let left = app
            .state
            .blobs
            .direct_parts(kept_session.blob, &kept_session.store_state)
            .await;
        assert!(left.is_err() || left.unwrap().is_empty(), "{backend:?}");
        if backend == Backend::Embedded {
            assert!(app.stored_blobs().await.is_empty(), "{:?}", app.stored_blobs().await);
        }
        assert!(app.put_bytes(&kept_url, part.clone()).await.0.is_client_error());
        assert_eq!(app.blob_count().await, 0);
    }
}

#[tokio::test]
async fn sessions_are_bounded_and_reserve_quota() {
    let app = TestApp::spawn_with(|c| {
        c.direct.max_open_per_user = 3;
        c.quotas.user_bytes = Some(10_000);
        c.limits.max_file_size = 50_000;
    })
    .await;
    let alice = app.user("alice").await;
    assert_problem(
        app.session(&alice.token, json!({"name": "big", "size": 60_000})).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "file_too_large",
    )
    .await;
    assert_problem(
        app.session(&alice.token, json!({"name": "q", "size": 10_001})).await,
        StatusCode::INSUFFICIENT_STORAGE,
        "quota_exceeded",
    )
    .await;
    for (body, code) in [
        (json!({"name": "", "size": 1}), "invalid_file_name"),
        (json!({"name": "a", "size": 1, "sha256": "xyz"}), "invalid_sha256"),
        (json!({"name": "a", "size": 1, "owner": "someone"}), "invalid_body"),
        (json!({"name": "a", "size": -1}), "invalid_body"),
    ] {
        let response = app.session(&alice.token, body).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], code, "{problem}");
    }
    // The declared size is reserved while the session is open, for sessions and `POST /files` alike.
    let first = app.session_ok(&alice.token, json!({"name": "a", "size": 6_000})).await;
    assert_problem(
        app.session(&alice.token, json!({"name": "b", "size": 5_000})).await,
        StatusCode::INSUFFICIENT_STORAGE,
        "quota_exceeded",
    )
    .await;
    assert_problem(
        app.upload(&alice.token, "c", random_bytes(5_000, 1)).await,
        StatusCode::INSUFFICIENT_STORAGE,
        "quota_exceeded",
    )
    .await;
    app.session_ok(&alice.token, json!({"name": "b", "size": 1_000})).await;
    app.session_ok(&alice.token, json!({"name": "c", "size": 1_000})).await;
    assert_problem(
        app.session(&alice.token, json!({"name": "d", "size": 1})).await,
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_open_upload_sessions",
    )
    .await;
    let response = app
        .delete_as(
            &alice.token,
            &format!("/upload-sessions/{}", first["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    app.session_ok(&alice.token, json!({"name": "e", "size": 5_000})).await;

    // Bounded URL requests and part numbers.
    let bob = app.user("bob").await;
    let many = app.session_ok(&bob.token, json!({"name": "m", "size": 100})).await;
    let id = many["id"].as_str().unwrap();
    for numbers in [vec![], vec![0], vec![2], (1..=101).map(|_| 1).collect::<Vec<u32>>()] {
        assert_problem(
            app.part_urls(&bob.token, id, &numbers).await,
            StatusCode::BAD_REQUEST,
            "invalid_part_numbers",
        )
        .await;
    }
    assert_problem(
        app.session_status(&bob.token, "not-an-id").await,
        StatusCode::NOT_FOUND,
        "upload_session_not_found",
    )
    .await;
}

#[tokio::test]
async fn team_sessions_need_an_uploading_role_and_charge_the_team() {
    let app = TestApp::spawn_with(|c| c.quotas.team_bytes = Some(1_000)).await;
    let alice = app.user("alice").await;
    let victor = app.user("victor").await;
    let team = app.team_ok(&alice.token, "crew").await;
    app.add_member_ok(&alice.token, &team, "victor", "viewer").await;
    assert_problem(
        app.session(&victor.token, json!({"name": "v", "size": 10, "team": team}))
            .await,
        StatusCode::FORBIDDEN,
        "team_role_insufficient",
    )
    .await;
    assert_problem(
        app.session(&alice.token, json!({"name": "t", "size": 1_001, "team": team}))
            .await,
        StatusCode::INSUFFICIENT_STORAGE,
        "quota_exceeded",
    )
    .await;
    let bytes = random_bytes(800, 27);
    let session = app
        .session_ok(&alice.token, json!({"name": "t", "size": 800, "team": team}))
        .await;
    assert_eq!(session["team_id"], team.as_str());
    assert_problem(
        app.session(&alice.token, json!({"name": "u", "size": 300, "team": team}))
            .await,
        StatusCode::INSUFFICIENT_STORAGE,
        "quota_exceeded",
    )
    .await;
    let url = app.absolute(session["upload_url"]["url"].as_str().unwrap());
    assert_eq!(app.put_bytes(&url, bytes).await.0, StatusCode::OK);
    let file: Value = app
        .complete(&alice.token, session["id"].as_str().unwrap(), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(file["team_id"], team.as_str());
    let files = app.get_json(&alice.token, &format!("/teams/{team}/files")).await;
    assert_eq!(files["files"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn post_files_points_large_bodies_to_upload_sessions() {
    let app = TestApp::spawn_with(|c| c.limits.max_inline_upload = Some(1_000)).await;
    let alice = app.user("alice").await;
    let problem = assert_problem(
        app.upload(&alice.token, "big.bin", random_bytes(1_001, 2)).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "use_upload_session",
    )
    .await;
    assert!(problem["detail"].as_str().unwrap().contains("/upload-sessions"));
    // No Content-Length (chunked): refused once the body passes the limit.
    let stream = futures::stream::iter((0..4).map(|_| Ok::<_, std::io::Error>(vec![7u8; 400])));
    let response = app
        .client
        .post(app.url("/files?fileName=chunked.bin"))
        .bearer_auth(&alice.token)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "use_upload_session").await;
    assert_eq!(app.blob_count().await, 0);
    assert_eq!(
        app.upload(&alice.token, "small.bin", random_bytes(1_000, 3))
            .await
            .status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn server_signed_urls_verify_across_key_rotation_and_with_a_public_url() {
    let app = TestApp::spawn_with(|c| c.direct.public_url = Some("http://files.example.test/".into())).await;
    let alice = app.user("alice").await;
    let session = app.session_ok(&alice.token, json!({"name": "p", "size": 10})).await;
    let url = session["upload_url"]["url"].as_str().unwrap();
    assert!(url.starts_with("http://files.example.test/direct/uploads/"), "{url}");
    // A key rotated in after the URL was signed does not invalidate it (the URL names its key).
    handoff_server::auth::tokens::TokenService::rotate(app.state.meta.as_ref())
        .await
        .unwrap();
    let local = url.replace("http://files.example.test", &app.base);
    assert_eq!(app.put_bytes(&local, b"0123456789".to_vec()).await.0, StatusCode::OK);
    // An unknown key id is a forgery.
    let forged = local.replace("&kid=", "&kid=x");
    assert_problem(
        reqwest::Client::new()
            .put(&forged)
            .body("0123456789")
            .send()
            .await
            .unwrap(),
        StatusCode::FORBIDDEN,
        "invalid_signature",
    )
    .await;
}

#[tokio::test]
async fn completion_goes_in_steps_that_survive_a_restart_and_answers_again_on_every_backend() {
    for backend in every_deployment() {
        let size = 5 * MIB + MIB + MIB / 2 + 77;
        let app = TestApp::spawn_on(backend, |c| {
            five_mib_parts(c);
            // The least work per request (about 1 MiB), as a file far beyond the budget would see.
            c.direct.complete_budget_secs = 0;
            c.direct.max_open_per_user = 1;
            // The file and one more small upload fit; a reservation counted twice would not.
            c.quotas.user_bytes = Some(size as u64 + MIB as u64);
        })
        .await;
        let alice = app.user("alice").await;
        let bytes = random_bytes(size, 41);
        let sha256 = sha256_hex(&bytes);
        let session = app
            .session_ok(
                &alice.token,
                json!({"name": "steps.bin", "size": size, "sha256": sha256}),
            )
            .await;
        let id = session["id"].as_str().unwrap().to_owned();
        assert_eq!(session["state"], "open");
        for (n, chunk) in bytes.chunks(5 * MIB).enumerate() {
            let url = app.part_url(&alice.token, &id, n as u32 + 1).await;
            assert_eq!(
                app.put_bytes(&url, chunk.to_vec()).await.0,
                StatusCode::OK,
                "{backend:?}"
            );
        }
        let early_url = app.part_url(&alice.token, &id, 2).await;

        // The first step joins the parts and reads some of them: 202 with the progress, no file yet.
        let response = app.complete(&alice.token, &id, None).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{backend:?}");
        assert_eq!(response.headers()["retry-after"], "0");
        let step: Value = response.json().await.unwrap();
        assert_eq!(step["state"], "verifying", "{step}");
        let mut verified = step["verified_bytes"].as_u64().unwrap();
        assert!(verified >= MIB as u64 && verified < size as u64, "{step}");
        let status: Value = app.session_status(&alice.token, &id).await.json().await.unwrap();
        assert_eq!(status["state"], "verifying");
        assert_eq!(status["verified_bytes"], verified);
        assert!(status.get("parts").is_none(), "{status}");
        assert_eq!(app.file_count(&alice.token).await, 0);
        // The parts are joined: they can no longer change, through the API or a URL minted before.
        assert_problem(
            app.part_urls(&alice.token, &id, &[1]).await,
            StatusCode::CONFLICT,
            "upload_session_completing",
        )
        .await;
        if backend == Backend::Embedded {
            let response = reqwest::Client::new()
                .put(&early_url)
                .body(vec![0u8; 5 * MIB])
                .send()
                .await
                .unwrap();
            assert_problem(response, StatusCode::CONFLICT, "upload_session_completing").await;
        }

        // The progress is in the metadata store: a new server (or another node) goes on from there.
        let app = app.restart().await;
        let mut steps = 1;
        let file = loop {
            let response = app.complete(&alice.token, &id, None).await;
            steps += 1;
            assert!(steps < 100, "completion does not move forward");
            if response.status() == StatusCode::CREATED {
                break response.json::<Value>().await.unwrap();
            }
            assert_eq!(response.status(), StatusCode::ACCEPTED, "{backend:?}");
            let step: Value = response.json().await.unwrap();
            let now = step["verified_bytes"].as_u64().unwrap();
            assert!(now > verified, "{verified} then {step}");
            verified = now;
        };
        assert!(steps >= 3, "{backend:?}: {steps} steps");
        assert_eq!(file["sha256"], sha256, "{backend:?}");
        assert_eq!(file["size"], size);
        let key = file["key"].as_str().unwrap().to_owned();
        let content = app.content(&alice.token, &key).await;
        assert_eq!(sha256_hex(&content.bytes().await.unwrap()), sha256);

        // Asked again (the answer was lost): the same file, not a missing session, and still one file.
        let again = app.complete(&alice.token, &id, None).await;
        assert_eq!(again.status(), StatusCode::CREATED, "{backend:?}");
        assert_eq!(again.json::<Value>().await.unwrap()["key"], key.as_str());
        assert_eq!(app.file_count(&alice.token).await, 1);
        let status: Value = app.session_status(&alice.token, &id).await.json().await.unwrap();
        assert_eq!(status["state"], "completed", "{status}");
        assert_eq!(status["file_key"], key.as_str());
        assert_problem(
            app.delete_as(&alice.token, &format!("/upload-sessions/{id}")).await,
            StatusCode::CONFLICT,
            "upload_session_completed",
        )
        .await;
        // A completed session is no longer open: it neither reserves quota nor counts against the one session
        // alice may have open.
        let small = app.upload(&alice.token, "small.bin", random_bytes(MIB / 2, 1)).await;
        assert_eq!(
            small.status(),
            StatusCode::CREATED,
            "{backend:?}: a reservation outlived its session"
        );
        let next = app
            .session_ok(&alice.token, json!({"name": "next.bin", "size": 10}))
            .await;
        app.delete_as(
            &alice.token,
            &format!("/upload-sessions/{}", next["id"].as_str().unwrap()),
        )
        .await;

        // Once the file is deleted, asking again says so.
        assert_eq!(app.delete(&alice.token, &key).await.status(), StatusCode::NO_CONTENT);
        assert_problem(
            app.complete(&alice.token, &id, None).await,
            StatusCode::GONE,
            "upload_session_file_deleted",
        )
        .await;

        // A mismatch found in a later step still deletes everything and ends the session.
        let wrong = app
            .session_ok(
                &alice.token,
                json!({"name": "wrong.bin", "size": 3 * MIB, "sha256": sha256_hex(b"other bytes")}),
            )
            .await;
        let wrong_id = wrong["id"].as_str().unwrap();
        let url = app.absolute(wrong["upload_url"]["url"].as_str().unwrap());
        assert_eq!(app.put_bytes(&url, random_bytes(3 * MIB, 9)).await.0, StatusCode::OK);
        let blobs_before = app.blob_count().await;
        let response = loop {
            let response = app.complete(&alice.token, wrong_id, None).await;
            if response.status() != StatusCode::ACCEPTED {
                break response;
            }
        };
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "checksum_mismatch").await;
        assert_eq!(
            app.blob_count().await,
            blobs_before,
            "{backend:?}: the joined bytes stayed"
        );
        assert_problem(
            app.session_status(&alice.token, wrong_id).await,
            StatusCode::NOT_FOUND,
            "upload_session_not_found",
        )
        .await;
    }
}
