//! Upload links (reverse shares): people without an account send files into a user's or a team's space through
//! `/u/{token}`, within the link's expiry and limits; the owner sees what arrived; the senders learn no keys. A
//! link that is expired, revoked or full answers `410 link_unavailable`; an upload that does not fit what the link
//! still accepts answers `413 link_limit_exceeded` (the link stays open for smaller ones).

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

use crate::helpers::{TestApp, all_backends, assert_problem, random_bytes, sha256_hex};

const UNKNOWN_TOKEN: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

fn token(link: &Value) -> String {
    link["token"].as_str().unwrap().to_owned()
}

async fn send(app: &TestApp, link: &str, name: &str, bytes: Vec<u8>, password: Option<&str>) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url(&format!("/u/{link}")))
        .query(&[("fileName", name)])
        .body(bytes);
    if let Some(password) = password {
        request = request.header("x-link-password", password);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn receive_files_through_an_upload_link() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        app.user("root").await;
        let alice = app.user("alice").await;
        let bob = app.user("bob").await;
        let alice_id = app.get_json(&alice.token, "/auth/me").await["id"]
            .as_str()
            .unwrap()
            .to_owned();

        let response = app
            .post_as(
                &alice.token,
                "/upload-links",
                json!({ "note": "send me the photos", "max_files": 3, "max_bytes": 100_000 }),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "{backend:?}");
        assert_eq!(response.headers()["cache-control"], "no-store");
        let link: Value = response.json().await.unwrap();
        let secret = token(&link);
        assert_eq!(secret.len(), 32);
        assert_eq!(link["url"], format!("/u/{secret}"));
        assert_eq!(link["status"], "active");
        assert_eq!(link["files_received"], 0);
        assert!(link["team_id"].is_null());
        let id = link["id"].as_str().unwrap().to_owned();

        // The public page: who receives and how much room is left; no ids.
        let response = app.public_get(&format!("/u/{secret}"), None).await;
        assert_eq!(response.status(), StatusCode::OK, "{backend:?}");
        let text = response.text().await.unwrap();
        let public: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(public["receiver"], "alice");
        assert_eq!(public["note"], "send me the photos");
        assert_eq!(public["files_left"], 3);
        assert_eq!(public["bytes_left"], 100_000);
        assert!(!text.contains(&alice_id) && !text.contains(&id), "{text}");

        // A raw upload.
        let photo = random_bytes(20_000, 71);
        let response = send(&app, &secret, "photo.jpg", photo.clone(), None).await;
        assert_eq!(response.status(), StatusCode::CREATED, "{backend:?}");
        let text = response.text().await.unwrap();
        let received: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            received,
            json!({ "files": [{ "name": "photo.jpg", "size": 20_000, "sha256": sha256_hex(&photo) }] }),
            "{backend:?}: name, size and hash, no key"
        );

        // The owner sees it, and it is private.
        let detail = app.get_json(&alice.token, &format!("/upload-links/{id}")).await;
        assert_eq!(detail["files_received"], 1, "{backend:?}");
        assert_eq!(detail["bytes_received"], 20_000);
        assert!(detail.get("token").is_none());
        let files = detail["files"]["files"].as_array().unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0]["name"], "photo.jpg");
        assert_eq!(files[0]["visibility"], "private");
        let key = files[0]["key"].as_str().unwrap().to_owned();
        assert!(!text.contains(&key));
        let body = app.content(&alice.token, &key).await.bytes().await.unwrap();
        assert_eq!(sha256_hex(&body), sha256_hex(&photo), "{backend:?}");
        assert_problem(
            app.content(&bob.token, &key).await,
            StatusCode::NOT_FOUND,
            "file_not_found",
        )
        .await;
        assert_eq!(
            app.usage(&alice.token).await["bytes"],
            20_000,
            "{backend:?}: charged to the receiver"
        );
        let mine = app.get_json(&alice.token, "/files").await;
        assert_eq!(mine["files"][0]["key"], key.as_str());

        // Multipart with two files.
        let form = Form::new()
            .part("file", Part::bytes(b"first".to_vec()).file_name("one.txt"))
            .part("file", Part::bytes(b"second".to_vec()).file_name("two.txt"));
        let response = app
            .client
            .post(app.url(&format!("/u/{secret}")))
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "{backend:?}");
        let received: Value = response.json().await.unwrap();
        assert_eq!(received["files"].as_array().unwrap().len(), 2);
        assert_eq!(received["files"][1]["name"], "two.txt");
        assert!(received["files"][0].get("key").is_none());
        let detail = app.get_json(&alice.token, &format!("/upload-links/{id}")).await;
        assert_eq!(detail["files_received"], 3);
        assert_eq!(detail["status"], "exhausted");
        assert_eq!(detail["files"]["files"].as_array().unwrap().len(), 3);

        // max_files reached: the link is used up.
        assert_problem(
            app.public_get(&format!("/u/{secret}"), None).await,
            StatusCode::GONE,
            "link_unavailable",
        )
        .await;
        let blobs = app.blob_count().await;
        assert_problem(
            send(&app, &secret, "more.txt", b"more".to_vec(), None).await,
            StatusCode::GONE,
            "link_unavailable",
        )
        .await;
        assert_eq!(app.blob_count().await, blobs);

        // Lists and ownership.
        let list = app.get_json(&alice.token, "/upload-links").await;
        assert_eq!(list["upload_links"].as_array().unwrap().len(), 1);
        assert!(!list.to_string().contains(&secret));
        assert_eq!(
            app.get_json(&bob.token, "/upload-links").await["upload_links"],
            json!([])
        );
        assert_problem(
            app.get_as(&bob.token, &format!("/upload-links/{id}")).await,
            StatusCode::NOT_FOUND,
            "upload_link_not_found",
        )
        .await;
        assert_problem(
            app.delete_as(&bob.token, &format!("/upload-links/{id}")).await,
            StatusCode::NOT_FOUND,
            "upload_link_not_found",
        )
        .await;
    }
}

#[tokio::test]
async fn upload_link_byte_limit() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        app.user("root").await;
        let alice = app.user("alice").await;
        let link = app
            .post_json(
                &alice.token,
                "/upload-links",
                json!({ "max_bytes": 1000 }),
                StatusCode::CREATED,
            )
            .await;
        let secret = token(&link);
        let blobs = app.blob_count().await;
        assert_problem(
            send(&app, &secret, "big.bin", random_bytes(1500, 72), None).await,
            StatusCode::PAYLOAD_TOO_LARGE,
            "link_limit_exceeded",
        )
        .await;
        assert_eq!(app.blob_count().await, blobs, "{backend:?}: nothing stored");
        assert_eq!(app.get_json(&alice.token, "/files").await["files"], json!([]));

        let response = send(&app, &secret, "a.bin", random_bytes(600, 73), None).await;
        assert_eq!(response.status(), StatusCode::CREATED, "{backend:?}");
        let public: Value = app
            .public_get(&format!("/u/{secret}"), None)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(public["bytes_left"], 400);
        assert_problem(
            send(&app, &secret, "b.bin", random_bytes(500, 74), None).await,
            StatusCode::PAYLOAD_TOO_LARGE,
            "link_limit_exceeded",
        )
        .await;
        // Streaming, no Content-Length: found while streaming.
        let stream = futures::stream::iter((0..5).map(|_| Ok::<_, std::io::Error>(vec![7u8; 100])));
        let response = app
            .client
            .post(app.url(&format!("/u/{secret}")))
            .query(&[("fileName", "stream.bin")])
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .unwrap();
        assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "link_limit_exceeded").await;
        let response = send(&app, &secret, "c.bin", random_bytes(400, 75), None).await;
        assert_eq!(response.status(), StatusCode::CREATED, "{backend:?}");
        assert_problem(
            app.public_get(&format!("/u/{secret}"), None).await,
            StatusCode::GONE,
            "link_unavailable",
        )
        .await;
        let detail = app
            .get_json(&alice.token, &format!("/upload-links/{}", link["id"].as_str().unwrap()))
            .await;
        assert_eq!(detail["bytes_received"], 1000, "{backend:?}");
        assert_eq!(detail["files_received"], 2);
        assert_eq!(app.usage(&alice.token).await["bytes"], 1000);
    }
}

#[tokio::test]
async fn upload_link_races_respect_max_files() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        app.user("root").await;
        let alice = app.user("alice").await;
        let link = app
            .post_json(
                &alice.token,
                "/upload-links",
                json!({ "max_files": 3 }),
                StatusCode::CREATED,
            )
            .await;
        let secret = token(&link);
        let tasks: Vec<_> = (0..12u64)
            .map(|i| {
                let client = app.client.clone();
                let url = app.url(&format!("/u/{secret}"));
                tokio::spawn(async move {
                    client
                        .post(url)
                        .query(&[("fileName", format!("f{i}"))])
                        .body(random_bytes(100, i + 1))
                        .send()
                        .await
                        .unwrap()
                        .status()
                })
            })
            .collect();
        let mut created = 0;
        for task in tasks {
            match task.await.unwrap() {
                StatusCode::CREATED => created += 1,
                StatusCode::GONE => {}
                other => panic!("{backend:?}: unexpected {other}"),
            }
        }
        assert_eq!(created, 3, "{backend:?}");
        let detail = app
            .get_json(&alice.token, &format!("/upload-links/{}", link["id"].as_str().unwrap()))
            .await;
        assert_eq!(detail["files_received"], 3);
        assert_eq!(detail["files"]["files"].as_array().unwrap().len(), 3);
    }
}

#[tokio::test]
async fn expired_revoked_and_password_protected_upload_links() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        app.user("root").await;
        let alice = app.user("alice").await;
        let expiring = app
            .post_json(
                &alice.token,
                "/upload-links",
                json!({ "expires_in": 1 }),
                StatusCode::CREATED,
            )
            .await;
        let revoked = app
            .post_json(&alice.token, "/upload-links", json!({}), StatusCode::CREATED)
            .await;
        let protected = app
            .post_json(
                &alice.token,
                "/upload-links",
                json!({ "password": "drop it here 7" }),
                StatusCode::CREATED,
            )
            .await;
        assert_eq!(protected["has_password"], true);
        assert!(!protected.to_string().contains("drop it here"));
        let revoked_id = revoked["id"].as_str().unwrap();
        assert_eq!(
            app.delete_as(&alice.token, &format!("/upload-links/{revoked_id}"))
                .await
                .status(),
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            app.get_json(&alice.token, &format!("/upload-links/{revoked_id}")).await["status"],
            "revoked"
        );

        // Password rules, as for share links; the 401s say nothing about the receiver.
        let secret = token(&protected);
        let blobs = app.blob_count().await;
        for (password, code) in [
            (None, "password_required"),
            (Some("drop it here 8"), "password_invalid"),
        ] {
            for response in [
                app.public_get(&format!("/u/{secret}"), password).await,
                send(&app, &secret, "x.txt", b"x".to_vec(), password).await,
            ] {
                let problem = assert_problem(response, StatusCode::UNAUTHORIZED, code).await;
                assert!(!problem.to_string().contains("alice"), "{backend:?}: {problem}");
            }
        }
        assert_eq!(
            app.blob_count().await,
            blobs,
            "{backend:?}: refused uploads store nothing"
        );
        let public: Value = app
            .public_get(&format!("/u/{secret}"), Some("drop it here 7"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(public["receiver"], "alice");
        let response = send(&app, &secret, "x.txt", b"x".to_vec(), Some("drop it here 7")).await;
        assert_eq!(response.status(), StatusCode::CREATED, "{backend:?}");

        tokio::time::sleep(Duration::from_millis(1500)).await;
        for link in [&expiring, &revoked] {
            let secret = token(link);
            assert_problem(
                app.public_get(&format!("/u/{secret}"), None).await,
                StatusCode::GONE,
                "link_unavailable",
            )
            .await;
            assert_problem(
                send(&app, &secret, "late.txt", b"late".to_vec(), None).await,
                StatusCode::GONE,
                "link_unavailable",
            )
            .await;
        }
        assert_eq!(
            app.get_json(
                &alice.token,
                &format!("/upload-links/{}", expiring["id"].as_str().unwrap())
            )
            .await["status"],
            "expired"
        );
        for path in [format!("/u/{UNKNOWN_TOKEN}"), "/u/nope".to_owned()] {
            assert_problem(
                app.public_get(&path, None).await,
                StatusCode::NOT_FOUND,
                "link_not_found",
            )
            .await;
        }
        assert_problem(
            send(&app, UNKNOWN_TOKEN, "x.txt", b"x".to_vec(), None).await,
            StatusCode::NOT_FOUND,
            "link_not_found",
        )
        .await;
        // Only the protected link's one file arrived.
        assert_eq!(
            app.get_json(&alice.token, "/files").await["files"]
                .as_array()
                .unwrap()
                .len(),
            1
        );

        // Invalid settings.
        for (body, code) in [
            (json!({ "max_files": 0 }), "invalid_limit"),
            (json!({ "max_bytes": 0 }), "invalid_limit"),
            (json!({ "expires_at": "2001-01-01T00:00:00Z" }), "invalid_expiry"),
            (json!({ "password": "short" }), "invalid_password"),
        ] {
            assert_problem(
                app.post_as(&alice.token, "/upload-links", body).await,
                StatusCode::BAD_REQUEST,
                code,
            )
            .await;
        }
    }
}

#[tokio::test]
async fn team_upload_links() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        app.user("root").await;
        let olga = app.user("olga").await;
        let mia = app.user("mia").await;
        let vic = app.user("vic").await;
        let nora = app.user("nora").await;
        let team = app.team_ok(&olga.token, "Design").await;
        app.add_member_ok(&olga.token, &team, "mia", "member").await;
        app.add_member_ok(&olga.token, &team, "vic", "viewer").await;

        assert_problem(
            app.post_as(&vic.token, "/upload-links", json!({ "team": team })).await,
            StatusCode::FORBIDDEN,
            "team_role_insufficient",
        )
        .await;
        assert_problem(
            app.post_as(&nora.token, "/upload-links", json!({ "team": team })).await,
            StatusCode::NOT_FOUND,
            "team_not_found",
        )
        .await;
        let link = app
            .post_json(
                &mia.token,
                "/upload-links",
                json!({ "team": team }),
                StatusCode::CREATED,
            )
            .await;
        assert_eq!(link["team_id"], team.as_str(), "{backend:?}");
        let secret = token(&link);
        let bytes = random_bytes(3000, 76);
        let response = send(&app, &secret, "brief.pdf", bytes.clone(), None).await;
        assert_eq!(response.status(), StatusCode::CREATED, "{backend:?}");

        let files = app.get_json(&vic.token, &format!("/teams/{team}/files")).await;
        assert_eq!(files["files"].as_array().unwrap().len(), 1, "{backend:?}");
        assert_eq!(files["files"][0]["name"], "brief.pdf");
        let key = files["files"][0]["key"].as_str().unwrap().to_owned();
        let body = app.content(&olga.token, &key).await.bytes().await.unwrap();
        assert_eq!(sha256_hex(&body), sha256_hex(&bytes));
        assert_problem(
            app.content(&nora.token, &key).await,
            StatusCode::NOT_FOUND,
            "file_not_found",
        )
        .await;
        let view = app.get_json(&olga.token, &format!("/teams/{team}")).await;
        assert_eq!(view["usage"]["bytes"], 3000, "{backend:?}: the team pays");
        assert_eq!(app.usage(&mia.token).await["bytes"], 0);

        // A link made by someone who left the team receives nothing more.
        assert_eq!(
            app.delete_as(&mia.token, &format!("/teams/{team}/members/mia"))
                .await
                .status(),
            StatusCode::NO_CONTENT
        );
        assert_problem(
            app.public_get(&format!("/u/{secret}"), None).await,
            StatusCode::GONE,
            "link_unavailable",
        )
        .await;
        assert_problem(
            send(&app, &secret, "late.pdf", b"late".to_vec(), None).await,
            StatusCode::GONE,
            "link_unavailable",
        )
        .await;
    }
}

/// When the receiver's quota is tighter than the link's own limits, senders hit the quota (`507`).
#[tokio::test]
async fn the_receivers_quota_applies_through_upload_links() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |c| c.quotas.user_bytes = Some(1000)).await;
        app.user("root").await;
        let alice = app.user("alice").await;
        app.upload_ok(&alice.token, "mine.bin", random_bytes(400, 77)).await;
        let link = app
            .post_json(
                &alice.token,
                "/upload-links",
                json!({ "max_bytes": 5000 }),
                StatusCode::CREATED,
            )
            .await;
        let secret = token(&link);
        let public: Value = app
            .public_get(&format!("/u/{secret}"), None)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(public["bytes_left"], 600, "{backend:?}");
        let blobs = app.blob_count().await;
        assert_problem(
            send(&app, &secret, "big.bin", random_bytes(700, 78), None).await,
            StatusCode::INSUFFICIENT_STORAGE,
            "quota_exceeded",
        )
        .await;
        assert_eq!(app.blob_count().await, blobs, "{backend:?}");
        let response = send(&app, &secret, "ok.bin", random_bytes(600, 79), None).await;
        assert_eq!(response.status(), StatusCode::CREATED, "{backend:?}");
        assert_eq!(app.usage(&alice.token).await["bytes"], 1000);
        assert_problem(
            send(&app, &secret, "one.bin", vec![1], None).await,
            StatusCode::INSUFFICIENT_STORAGE,
            "quota_exceeded",
        )
        .await;
    }
}

/// A multipart request with more files than the link has room for stores none of them.
#[tokio::test]
async fn multipart_beyond_max_files_stores_nothing() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        app.user("root").await;
        let alice = app.user("alice").await;
        let link = app
            .post_json(
                &alice.token,
                "/upload-links",
                json!({ "max_files": 1 }),
                StatusCode::CREATED,
            )
            .await;
        let secret = token(&link);
        let blobs = app.blob_count().await;
        let form = Form::new()
            .part("file", Part::bytes(b"first".to_vec()).file_name("one.txt"))
            .part("file", Part::bytes(b"second".to_vec()).file_name("two.txt"));
        let response = app
            .client
            .post(app.url(&format!("/u/{secret}")))
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "link_limit_exceeded").await;
        assert_eq!(app.blob_count().await, blobs, "{backend:?}");
        assert_eq!(app.get_json(&alice.token, "/files").await["files"], json!([]));
        let public: Value = app
            .public_get(&format!("/u/{secret}"), None)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(public["files_left"], 1, "{backend:?}");
    }
}
