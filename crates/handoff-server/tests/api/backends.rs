//! The same user story on every deployment: SQLite + local disk, PostgreSQL + S3 (a real SigV4-checking S3
//! server), and the serverless stores, DynamoDB (moto's server) + S3. Upload (raw and multipart, small and multi-part sized), download whole and in ranges, list, rename,
//! delete with its bytes collected, and everything still there after a restart. Plus S3-only behaviour:
//! presigned-redirect downloads minted after the access check.

use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, all_backends, assert_problem, every_deployment, random_bytes, sha256_hex};

#[tokio::test]
async fn the_whole_story_on_every_backend() {
    for backend in every_deployment() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        let alice = app.user("alice").await;
        let bob = app.user("bob").await;

        // 20 MiB: several S3 multipart parts, streamed.
        let big = random_bytes(20 * 1024 * 1024 + 3, 11);
        let big_file = app.upload_ok(&alice.token, "big.bin", big.clone()).await;
        assert_eq!(big_file["sha256"], sha256_hex(&big), "{backend:?}");
        let small = b"hello from a small file".to_vec();
        let form = Form::new()
            .part("file", Part::bytes(small.clone()).file_name("small.txt"))
            .part("file", Part::bytes(Vec::new()).file_name("empty.txt"));
        let response = app
            .client
            .post(app.url("/files"))
            .bearer_auth(&alice.token)
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "{backend:?}");
        let many: Value = response.json().await.unwrap();
        let small_key = many["files"][0]["key"].as_str().unwrap().to_owned();
        let big_key = big_file["key"].as_str().unwrap().to_owned();

        let body = app.content(&bob.token, &big_key).await.bytes().await.unwrap();
        assert_eq!(sha256_hex(&body), sha256_hex(&big), "{backend:?}: key holders download");
        let ranged = app
            .client
            .get(app.url(&format!("/files/{big_key}/content")))
            .bearer_auth(&alice.token)
            .header("range", "bytes=9000000-9000099")
            .send()
            .await
            .unwrap();
        assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(
            &ranged.bytes().await.unwrap()[..],
            &big[9_000_000..9_000_100],
            "{backend:?}"
        );
        assert_eq!(
            app.origin_download(&alice.token, &small_key)
                .await
                .bytes()
                .await
                .unwrap(),
            small
        );

        let renamed: Value = app
            .patch(
                &alice.token,
                &small_key,
                json!({"name": "greeting.txt", "visibility": "private"}),
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(renamed["name"], "greeting.txt");
        assert_problem(
            app.content(&bob.token, &small_key).await,
            StatusCode::NOT_FOUND,
            "file_not_found",
        )
        .await;

        assert_eq!(app.blob_count().await, 3, "{backend:?}");
        assert_eq!(
            app.delete(&alice.token, &big_key).await.status(),
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            app.blob_count().await,
            2,
            "{backend:?}: the deleted file's bytes are collected"
        );

        let app = app.restart().await;
        let list: Value = app.list(&alice.token, &[]).await.json().await.unwrap();
        let names: Vec<&str> = list["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{backend:?}: {names:?}");
        assert!(names.contains(&"greeting.txt") && names.contains(&"empty.txt"));
        assert_eq!(
            app.content(&alice.token, &small_key).await.bytes().await.unwrap(),
            small,
            "{backend:?}"
        );
        assert_eq!(
            app.me(&alice.token).await.status(),
            StatusCode::OK,
            "{backend:?}: signing keys persist"
        );
        for path in ["/readyz", "/healthz"] {
            assert_eq!(
                app.client.get(app.url(path)).send().await.unwrap().status(),
                StatusCode::OK
            );
        }
    }
}

#[tokio::test]
async fn redirect_downloads_are_presigned_after_the_access_check() {
    if !all_backends().contains(&Backend::Scaled) {
        return;
    }
    let app = TestApp::spawn_on(Backend::Scaled, |c| {
        c.downloads.mode = handoff_server::config::DownloadMode::Redirect;
        c.downloads.presigned_ttl_secs = 60;
    })
    .await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let bytes = random_bytes(300_000, 12);
    let file = app.upload_ok(&alice.token, "direct.bin", bytes.clone()).await;
    let key = file["key"].as_str().unwrap();

    for response in [
        app.content(&bob.token, key).await,
        app.origin_download(&bob.token, key).await,
    ] {
        assert_eq!(response.status(), StatusCode::FOUND);
        assert_eq!(response.headers()["cache-control"], "no-store");
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        assert!(location.contains("X-Amz-Signature="), "{location}");
        assert!(!location.contains(handoff_storage::testing::SECRET_KEY));
        // A plain client, no token: the URL itself is the (short-lived) credential.
        let plain = reqwest::Client::new();
        let fetched = plain.get(&location).send().await.unwrap();
        assert_eq!(fetched.status(), StatusCode::OK);
        assert_eq!(sha256_hex(&fetched.bytes().await.unwrap()), sha256_hex(&bytes));
        let ranged = plain.get(&location).header("range", "bytes=5-9").send().await.unwrap();
        assert_eq!(&ranged.bytes().await.unwrap()[..], &bytes[5..10]);
        // Same length, one hex digit changed: a well-formed but wrong signature.
        let at = location.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
        let flipped = if &location[at..=at] == "0" { "1" } else { "0" };
        let forged = format!("{}{flipped}{}", &location[..at], &location[at + 1..]);
        assert_eq!(plain.get(&forged).send().await.unwrap().status(), StatusCode::FORBIDDEN);
    }

    // No URL is minted for someone the policy refuses.
    app.patch(&alice.token, key, json!({"visibility": "private"})).await;
    let refused = app.content(&bob.token, key).await;
    assert!(refused.headers().get("location").is_none());
    assert_problem(refused, StatusCode::NOT_FOUND, "file_not_found").await;
    // Conditional requests are still answered by the server.
    let etag = format!("\"{}\"", file["sha256"].as_str().unwrap());
    let cached = app
        .client
        .get(app.url(&format!("/files/{key}/content")))
        .bearer_auth(&alice.token)
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn redirect_mode_falls_back_to_streaming_on_local_storage() {
    let app = TestApp::spawn_with(|c| c.downloads.mode = handoff_server::config::DownloadMode::Redirect).await;
    let alice = app.user("alice").await;
    let file = app.upload_ok(&alice.token, "local.txt", b"local bytes".to_vec()).await;
    let response = app.content(&alice.token, file["key"].as_str().unwrap()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "local bytes");
}

/// One upload is one DynamoDB transaction: a server on DynamoDB refuses to start with a per-request file limit a
/// transaction cannot hold, and at the limit a form with one file too many is refused whole, while a full form
/// commits every file.
#[tokio::test]
async fn dynamodb_uploads_hold_at_most_one_transaction_of_files() {
    if !every_deployment().contains(&Backend::Serverless) {
        return;
    }
    let app = TestApp::spawn_on(Backend::Serverless, |_| {}).await;
    let max = handoff_dynamo::MAX_FILES_PER_COMMIT;

    let mut too_many = app.config.clone();
    too_many.limits.max_files_per_request = max + 1;
    let refused = handoff_server::AppState::build(too_many)
        .await
        .expect_err("a DynamoDB server with more files per request than a transaction holds must not start");
    let message = refused.to_string();
    assert!(
        message.contains("max_files_per_request") && message.contains(&max.to_string()),
        "{message}"
    );

    let alice = app.user("alice").await;
    let form = |count: usize| {
        (0..count).fold(Form::new(), |form, i| {
            form.part(
                "file",
                Part::bytes(format!("file {i}").into_bytes()).file_name(format!("f{i}.txt")),
            )
        })
    };
    let post = |form: Form| {
        app.client
            .post(app.url("/files"))
            .bearer_auth(&alice.token)
            .multipart(form)
            .send()
    };
    let problem = assert_problem(
        post(form(max + 1)).await.unwrap(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_many_files",
    )
    .await;
    assert!(
        problem["detail"].as_str().unwrap().contains(&max.to_string()),
        "{problem}"
    );
    let listed: Value = app.list(&alice.token, &[]).await.json().await.unwrap();
    assert_eq!(
        listed["files"].as_array().unwrap().len(),
        0,
        "a refused form stores nothing"
    );

    let response = post(form(max)).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let stored: Value = response.json().await.unwrap();
    assert_eq!(stored["files"].as_array().unwrap().len(), max);
    let last = stored["files"][max - 1]["key"].as_str().unwrap();
    assert_eq!(
        app.content(&alice.token, last).await.text().await.unwrap(),
        format!("file {}", max - 1)
    );
    assert_eq!(app.usage(&alice.token).await["files"], max);
}
