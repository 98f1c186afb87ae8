//! The file API: uploads (raw and multipart), downloads through the origin and REST routes, listing, metadata,
//! rename, visibility, deletion, access between users, limits and hostile names.

use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem, random_bytes, sha256_hex};

#[tokio::test]
async fn raw_upload_then_download_both_ways() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bytes = random_bytes(3 * 1024 * 1024 + 17, 1);
    let response = app.upload(&alice.token, "report.pdf", bytes.clone()).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let file: Value = response.json().await.unwrap();
    let key = file["key"].as_str().unwrap();
    assert_eq!(location, format!("/files/{key}"));
    assert_eq!(key.len(), 32, "192-bit URL-safe key");
    assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    assert_eq!(file["name"], "report.pdf");
    assert_eq!(file["size"], bytes.len());
    assert_eq!(file["sha256"], sha256_hex(&bytes));
    assert_eq!(
        file["content_type"], "application/pdf",
        "guessed from the name when the client sent none"
    );
    assert_eq!(file["visibility"], "key");
    assert!(file["created_at"].as_str().is_some_and(|t| t.ends_with('Z')));

    for response in [
        app.origin_download(&alice.token, key).await,
        app.content(&alice.token, key).await,
    ] {
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers().clone();
        assert_eq!(headers["content-length"], bytes.len().to_string().as_str());
        assert_eq!(headers["etag"], format!("\"{}\"", sha256_hex(&bytes)).as_str());
        assert_eq!(headers["accept-ranges"], "bytes");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(
            headers["content-disposition"],
            "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf"
        );
        let body = response.bytes().await.unwrap();
        assert_eq!(sha256_hex(&body), sha256_hex(&bytes));
    }
}

#[tokio::test]
async fn file_names_from_header_and_declared_content_types() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let response = app
        .client
        .post(app.url("/files"))
        .bearer_auth(&alice.token)
        .header("x-file-name", "r%C3%A9sum%C3%A9%20v2.txt")
        .header("content-type", "text/plain; charset=utf-8")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let file: Value = response.json().await.unwrap();
    assert_eq!(file["name"], "résumé v2.txt");
    assert_eq!(file["content_type"], "text/plain; charset=utf-8");
    let download = app.content(&alice.token, file["key"].as_str().unwrap()).await;
    assert_eq!(
        download.headers()["content-disposition"],
        "attachment; filename=\"r_sum_ v2.txt\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20v2.txt"
    );

    let response = app
        .client
        .post(app.url("/files"))
        .bearer_auth(&alice.token)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::BAD_REQUEST, "missing_file_name").await;
    let response = app.upload(&alice.token, &"n".repeat(10_000), "x").await;
    assert_problem(response, StatusCode::BAD_REQUEST, "invalid_file_name").await;
    let response = app.upload(&alice.token, "   ", "x").await;
    assert_problem(response, StatusCode::BAD_REQUEST, "invalid_file_name").await;
}

#[tokio::test]
async fn empty_files_are_files() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let file = app.upload_ok(&alice.token, "empty.txt", Vec::new()).await;
    assert_eq!(file["size"], 0);
    assert_eq!(file["sha256"], sha256_hex(b""));
    let response = app.content(&alice.token, file["key"].as_str().unwrap()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-length"], "0");
    assert!(response.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn multipart_with_one_and_with_several_files() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let a = random_bytes(200_000, 2);
    let form = Form::new().part(
        "file",
        Part::bytes(a.clone()).file_name("a.bin").mime_str("image/png").unwrap(),
    );
    let response = app
        .client
        .post(app.url("/files"))
        .bearer_auth(&alice.token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let one: Value = response.json().await.unwrap();
    assert_eq!(one["name"], "a.bin");
    assert_eq!(one["sha256"], sha256_hex(&a));
    assert_eq!(one["content_type"], "image/png");

    let b = random_bytes(5_000, 3);
    let form = Form::new()
        .text("comment", "ignored")
        .part("file", Part::bytes(a.clone()).file_name("first.bin"))
        .part("file", Part::bytes(b.clone()).file_name("second.txt"));
    let response = app
        .client
        .post(app.url("/files?visibility=private"))
        .bearer_auth(&alice.token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let many: Value = response.json().await.unwrap();
    let files = many["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0]["name"], "first.bin");
    assert_eq!(files[1]["name"], "second.txt");
    assert_eq!(files[1]["content_type"], "text/plain");
    assert!(files.iter().all(|f| f["visibility"] == "private"));
    for (file, bytes) in files.iter().zip([&a, &b]) {
        let body = app
            .content(&alice.token, file["key"].as_str().unwrap())
            .await
            .bytes()
            .await
            .unwrap();
        assert_eq!(&body[..], &bytes[..]);
    }

    let form = Form::new().text("note", "no file here");
    let response = app
        .client
        .post(app.url("/files"))
        .bearer_auth(&alice.token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::BAD_REQUEST, "no_file").await;
    let response = app
        .client
        .post(app.url("/files"))
        .bearer_auth(&alice.token)
        .header("content-type", "multipart/form-data; boundary=xyz")
        .body("this is not multipart at all")
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::BAD_REQUEST, "malformed_multipart").await;
}

#[tokio::test]
async fn a_failing_part_discards_the_whole_multipart_request() {
    let app = TestApp::spawn_with(|c| c.limits.max_file_size = 1000).await;
    let alice = app.user("alice").await;
    let form = Form::new()
        .part("file", Part::bytes(vec![1; 500]).file_name("fits.bin"))
        .part("file", Part::bytes(vec![2; 1500]).file_name("too-big.bin"));
    let response = app
        .client
        .post(app.url("/files"))
        .bearer_auth(&alice.token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "file_too_large").await;
    let list: Value = app.list(&alice.token, &[]).await.json().await.unwrap();
    assert_eq!(list["files"].as_array().unwrap().len(), 0, "all or nothing");
    assert!(
        app.stored_blobs().await.is_empty(),
        "no stray bytes: {:?}",
        app.stored_blobs().await
    );
}

#[tokio::test]
async fn max_file_size_is_enforced_while_streaming() {
    let app = TestApp::spawn_with(|c| c.limits.max_file_size = 1000).await;
    let alice = app.user("alice").await;
    assert_eq!(
        app.upload(&alice.token, "ok.bin", vec![0; 1000]).await.status(),
        StatusCode::CREATED
    );
    assert_problem(
        app.upload(&alice.token, "big.bin", vec![0; 1001]).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "file_too_large",
    )
    .await;
    // Without a Content-Length the limit is found while streaming.
    let stream = futures::stream::iter((0..20).map(|_| Ok::<_, std::io::Error>(vec![0u8; 100])));
    let response = app
        .upload(&alice.token, "chunked.bin", reqwest::Body::wrap_stream(stream))
        .await;
    assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "file_too_large").await;
    let list: Value = app.list(&alice.token, &[]).await.json().await.unwrap();
    assert_eq!(list["files"].as_array().unwrap().len(), 1);
    assert_eq!(app.stored_blobs().await.len(), 1, "only the accepted blob remains");
}

#[tokio::test]
async fn key_holders_download_private_files_stay_private() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let shared = app
        .upload_ok(&alice.token, "shared.txt", b"for anyone with the key".to_vec())
        .await;
    let key = shared["key"].as_str().unwrap();

    // Origin behaviour: any signed-in user holding the key downloads.
    let response = app.origin_download(&bob.token, key).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "for anyone with the key");
    assert_eq!(app.metadata(&bob.token, key).await.status(), StatusCode::OK);
    // ...but only the owner changes or deletes.
    assert_problem(
        app.patch(&bob.token, key, json!({"name": "mine"})).await,
        StatusCode::FORBIDDEN,
        "not_file_owner",
    )
    .await;
    assert_problem(
        app.delete(&bob.token, key).await,
        StatusCode::FORBIDDEN,
        "not_file_owner",
    )
    .await;
    // Not listed for Bob.
    let list: Value = app.list(&bob.token, &[]).await.json().await.unwrap();
    assert!(list["files"].as_array().unwrap().is_empty());

    // Made private, the key is no longer enough, and Bob cannot tell it exists.
    let updated: Value = app
        .patch(&alice.token, key, json!({"visibility": "private"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(updated["visibility"], "private");
    for response in [
        app.origin_download(&bob.token, key).await,
        app.content(&bob.token, key).await,
        app.metadata(&bob.token, key).await,
        app.patch(&bob.token, key, json!({"name": "x"})).await,
        app.delete(&bob.token, key).await,
    ] {
        assert_problem(response, StatusCode::NOT_FOUND, "file_not_found").await;
    }
    assert_eq!(app.content(&alice.token, key).await.status(), StatusCode::OK);

    // A private upload from the start.
    let response = app
        .client
        .post(app.url("/files"))
        .query(&[("fileName", "secret.txt"), ("visibility", "private")])
        .bearer_auth(&alice.token)
        .body("s")
        .send()
        .await
        .unwrap();
    let private: Value = response.json().await.unwrap();
    assert_eq!(private["visibility"], "private");
    assert_eq!(
        app.content(&bob.token, private["key"].as_str().unwrap()).await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn default_visibility_is_configurable() {
    let app = TestApp::spawn_with(|c| c.default_visibility = handoff_core::Visibility::Private).await;
    let alice = app.user("alice").await;
    let file = app.upload_ok(&alice.token, "a.txt", b"a".to_vec()).await;
    assert_eq!(file["visibility"], "private");
}

#[tokio::test]
async fn unknown_and_malformed_keys_are_not_found() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    for key in [
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "short",
        "..%2F..%2Fetc%2Fpasswd",
        "%00",
    ] {
        assert_problem(
            app.content(&alice.token, key).await,
            StatusCode::NOT_FOUND,
            "file_not_found",
        )
        .await;
        assert_problem(
            app.origin_download(&alice.token, key).await,
            StatusCode::NOT_FOUND,
            "file_not_found",
        )
        .await;
    }
}

#[tokio::test]
async fn listing_pages_with_cursors() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    app.upload_ok(&bob.token, "bobs.txt", b"b".to_vec()).await;
    let mut uploaded = Vec::new();
    for i in 0..5 {
        let file = app.upload_ok(&alice.token, &format!("f{i}.txt"), vec![b'x'; i]).await;
        uploaded.push(file["key"].as_str().unwrap().to_owned());
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut query = vec![("limit", "2".to_owned())];
        if let Some(c) = &cursor {
            query.push(("cursor", c.clone()));
        }
        let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let page: Value = app.list(&alice.token, &query).await.json().await.unwrap();
        let files = page["files"].as_array().unwrap();
        assert!(files.len() <= 2);
        seen.extend(files.iter().map(|f| f["key"].as_str().unwrap().to_owned()));
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    uploaded.reverse();
    assert_eq!(seen, uploaded, "every file once, newest first");

    assert_problem(
        app.list(&alice.token, &[("limit", "0")]).await,
        StatusCode::BAD_REQUEST,
        "invalid_limit",
    )
    .await;
    assert_problem(
        app.list(&alice.token, &[("limit", "5000")]).await,
        StatusCode::BAD_REQUEST,
        "invalid_limit",
    )
    .await;
    assert_problem(
        app.list(&alice.token, &[("limit", "lots")]).await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
    assert_problem(
        app.list(&alice.token, &[("cursor", "forged")]).await,
        StatusCode::BAD_REQUEST,
        "invalid_cursor",
    )
    .await;
    assert_problem(
        app.list(&alice.token, &[("bogus", "1")]).await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
}

#[tokio::test]
async fn rename_and_mass_assignment() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let file = app.upload_ok(&alice.token, "old.txt", b"abc".to_vec()).await;
    let key = file["key"].as_str().unwrap();
    let renamed: Value = app
        .patch(&alice.token, key, json!({"name": "new name.txt"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(renamed["name"], "new name.txt");
    assert_eq!(renamed["sha256"], file["sha256"]);
    assert_eq!(renamed["created_at"], file["created_at"]);
    let download = app.content(&alice.token, key).await;
    assert!(
        download.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("new%20name.txt")
    );

    for body in [
        json!({"size": 1}),
        json!({"owner": "x"}),
        json!({"sha256": "00"}),
        json!({"key": "x"}),
    ] {
        assert_problem(
            app.patch(&alice.token, key, body).await,
            StatusCode::BAD_REQUEST,
            "invalid_body",
        )
        .await;
    }
    assert_problem(
        app.patch(&alice.token, key, json!({"visibility": "public"})).await,
        StatusCode::BAD_REQUEST,
        "invalid_body",
    )
    .await;
    assert_problem(
        app.patch(&alice.token, key, json!({"name": ""})).await,
        StatusCode::BAD_REQUEST,
        "invalid_file_name",
    )
    .await;
    let unchanged: Value = app.metadata(&alice.token, key).await.json().await.unwrap();
    assert_eq!(unchanged["name"], "new name.txt");
    assert_eq!(unchanged["size"], 3);
}

#[tokio::test]
async fn delete_removes_the_file_and_its_bytes() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let keep = app.upload_ok(&alice.token, "keep.bin", random_bytes(1000, 4)).await;
    let gone = app.upload_ok(&alice.token, "gone.bin", random_bytes(1000, 5)).await;
    assert_eq!(app.stored_blobs().await.len(), 2);
    let key = gone["key"].as_str().unwrap();
    assert_eq!(app.delete(&alice.token, key).await.status(), StatusCode::NO_CONTENT);
    assert_problem(
        app.content(&alice.token, key).await,
        StatusCode::NOT_FOUND,
        "file_not_found",
    )
    .await;
    assert_problem(
        app.delete(&alice.token, key).await,
        StatusCode::NOT_FOUND,
        "file_not_found",
    )
    .await;
    assert_eq!(
        app.stored_blobs().await.len(),
        1,
        "the deleted file's bytes are collected"
    );
    assert_eq!(
        app.content(&alice.token, keep["key"].as_str().unwrap()).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn hostile_names_are_metadata_only() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let names = [
        ("../../etc/passwd", "../../etc/passwd"),
        ("nul\0byte.txt", "nul_byte.txt"),
        ("a\r\nSet-Cookie: x=y", "a__Set-Cookie: x=y"),
        ("invoice\u{202E}fdp.exe", "invoice_fdp.exe"),
        ("\"quoted\"; filename=evil.sh", "\"quoted\"; filename=evil.sh"),
        ("/absolute/path", "/absolute/path"),
        ("..\\..\\windows\\win.ini", "..\\..\\windows\\win.ini"),
        ("日本語のファイル.txt", "日本語のファイル.txt"),
        ("%2e%2e%2f", "%2e%2e%2f"),
    ];
    for (raw, stored) in names {
        // Every name through the percent-encoded header; those a multipart header can carry through multipart too
        // (a NUL or CR/LF inside a part header is malformed multipart: a 400, never a 5xx).
        let encoded = percent_encoding::utf8_percent_encode(raw, percent_encoding::NON_ALPHANUMERIC).to_string();
        let by_header = app
            .client
            .post(app.url("/files"))
            .bearer_auth(&alice.token)
            .header("x-file-name", encoded)
            .body("content")
            .send()
            .await
            .unwrap();
        let form = Form::new().part("file", Part::bytes(b"content".to_vec()).file_name(raw.to_owned()));
        let by_multipart = app
            .client
            .post(app.url("/files"))
            .bearer_auth(&alice.token)
            .multipart(form)
            .send()
            .await
            .unwrap();
        let mut responses = vec![by_header];
        if raw.chars().any(char::is_control) {
            assert_problem(by_multipart, StatusCode::BAD_REQUEST, "malformed_multipart").await;
        } else if !raw.contains('\\') {
            // (Backslashes are skipped here: clients disagree on quoted-string escaping inside part headers.)
            responses.push(by_multipart);
        }
        for response in responses {
            assert_eq!(response.status(), StatusCode::CREATED, "{raw:?}");
            let file: Value = response.json().await.unwrap();
            assert_eq!(file["name"], stored, "{raw:?}");
            let download = app.content(&alice.token, file["key"].as_str().unwrap()).await;
            assert_eq!(download.status(), StatusCode::OK);
            let disposition = download.headers()["content-disposition"].to_str().unwrap().to_owned();
            assert!(disposition.starts_with("attachment; filename=\""), "{disposition}");
            assert_eq!(disposition.matches('"').count(), 2, "{disposition}");
            assert!(download.headers().get("set-cookie").is_none());
            assert!(download.headers().get("x").is_none());
            assert_eq!(download.text().await.unwrap(), "content");
        }
    }
    // Nothing was written outside the blob store's own server-named layout: every path under the storage
    // directory is its small-blob database or made of server-made names.
    let mut paths = vec![app.storage_dir()];
    while let Some(dir) = paths.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let (path, name) = (entry.path(), entry.file_name().into_string().unwrap());
            if entry.file_type().unwrap().is_dir() {
                paths.push(path);
                continue;
            }
            let database = dir == app.storage_dir() && name.starts_with("small.sqlite3");
            let hex = name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit());
            assert!(database || hex, "blob files carry server-made names only: {path:?}");
        }
    }
    assert!(!app.data_dir.path().join("etc").exists());
}

#[tokio::test]
async fn bad_upload_queries_are_rejected() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let response = app
        .client
        .post(app.url("/files?fileName=a.txt&visibility=public"))
        .bearer_auth(&alice.token)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::BAD_REQUEST, "invalid_query").await;
    assert!(app.stored_blobs().await.is_empty());
}

#[tokio::test]
async fn files_survive_a_restart() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bytes = random_bytes(700_000, 6);
    let file = app.upload_ok(&alice.token, "persist.bin", bytes.clone()).await;
    let app = app.restart().await;
    let body = app
        .content(&alice.token, file["key"].as_str().unwrap())
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256_hex(&body), sha256_hex(&bytes));
}

#[tokio::test]
async fn concurrent_uploads_never_hit_database_locks() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let statuses = futures::future::join_all((0..64).map(|i| {
        let (app, token) = (&app, alice.token.clone());
        async move {
            app.upload(&token, &format!("c{i}.bin"), random_bytes(4096, i))
                .await
                .status()
        }
    }))
    .await;
    assert!(statuses.iter().all(|s| *s == StatusCode::CREATED), "{statuses:?}");
    let list: Value = app.list(&alice.token, &[("limit", "1000")]).await.json().await.unwrap();
    assert_eq!(list["files"].as_array().unwrap().len(), 64);
}

#[tokio::test]
async fn orphaned_blobs_are_collected_after_the_grace_period() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let kept = app.upload_ok(&alice.token, "kept.bin", random_bytes(100, 7)).await;
    // An orphan: durable bytes that no row references (as after a crash between commit and insert).
    let mut writer = app.state.blobs.create().await.unwrap();
    writer.write(bytes::Bytes::from_static(b"orphan")).await.unwrap();
    writer.commit().await.unwrap();
    assert_eq!(app.stored_blobs().await.len(), 2);
    let young = handoff_server::maintenance::collect(&app.state, std::time::Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(young, 0, "nothing younger than the grace period is touched");
    let removed = handoff_server::maintenance::collect(&app.state, std::time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(removed, 1);
    assert_eq!(app.stored_blobs().await.len(), 1);
    assert_eq!(
        app.content(&alice.token, kept["key"].as_str().unwrap()).await.status(),
        StatusCode::OK
    );
}

/// The log lines of everything that runs on this thread (the test's current-thread runtime runs the server too).
#[derive(Clone, Default)]
struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_file_whose_bytes_are_gone_is_an_integrity_error_logged_with_its_route() {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);

    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    // Larger than a small blob, so that its bytes are a file of their own.
    let file = app
        .upload_ok(&alice.token, "gone.bin", random_bytes(100 * 1024, 7))
        .await;
    let key = file["key"].as_str().unwrap();
    let mut removed = 0;
    for shard in std::fs::read_dir(app.storage_dir().join("blobs")).unwrap() {
        for blob in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            std::fs::remove_file(blob.unwrap().path()).unwrap();
            removed += 1;
        }
    }
    assert_eq!(removed, 1, "the upload's one blob file");

    // The row says the bytes exist: not a 404, and no cause in the answer.
    let problem = assert_problem(
        app.content(&alice.token, key).await,
        StatusCode::INTERNAL_SERVER_ERROR,
        "integrity_error",
    )
    .await;
    assert!(!problem.to_string().contains("missing"), "{problem}");

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let failed = logs
        .lines()
        .find(|line| line.contains("request failed"))
        .unwrap_or_else(|| panic!("no failure line in:\n{logs}"));
    for part in ["ERROR", "method=GET", r#"route="/files/{key}/content""#, "status=500"] {
        assert!(failed.contains(part), "{part} in {failed}");
    }
    assert!(
        logs.contains("stored data is inconsistent"),
        "the cause is logged:\n{logs}"
    );
    assert!(!logs.contains(key), "a file key reached the log:\n{logs}");
}
