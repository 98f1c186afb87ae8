//! Retention: files with an expiry (asked for per upload, bounded by an admin maximum, or the default), gone for
//! users the moment they expire, and removed with their bytes (and their usage refunded) by the retention pass.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::helpers::{TestApp, all_backends, assert_problem, random_bytes};

fn expires_in_secs(file: &Value) -> i64 {
    let at = OffsetDateTime::parse(file["expires_at"].as_str().expect("expires_at"), &Rfc3339).unwrap();
    (at - OffsetDateTime::now_utc()).whole_seconds()
}

#[tokio::test]
async fn files_expire() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |c| {
            c.retention.max_file_ttl_secs = Some(60);
            c.retention.default_file_ttl_secs = Some(30);
        })
        .await;
        app.user("root").await;
        let alice = app.user("alice").await;
        let bob = app.user("bob").await;

        assert_problem(
            app.upload_with(&alice.token, "long.txt", &[("expires_in", "120")], b"x".to_vec())
                .await,
            StatusCode::BAD_REQUEST,
            "expiry_too_long",
        )
        .await;
        assert_problem(
            app.upload_with(&alice.token, "zero.txt", &[("expires_in", "0")], b"x".to_vec())
                .await,
            StatusCode::BAD_REQUEST,
            "invalid_expiry",
        )
        .await;
        let blobs = app.blob_count().await;
        assert_eq!(
            app.get_json(&alice.token, "/files").await["files"],
            json!([]),
            "{backend:?}"
        );

        // The default applies when the upload does not ask.
        let default = app.upload_ok(&alice.token, "default.txt", b"default".to_vec()).await;
        let left = expires_in_secs(&default);
        assert!((25..=30).contains(&left), "{backend:?}: default TTL 30 s, got {left}");
        let sixty: Value = app
            .upload_with(&alice.token, "sixty.txt", &[("expires_in", "60")], b"60".to_vec())
            .await
            .json()
            .await
            .unwrap();
        assert!((55..=60).contains(&expires_in_secs(&sixty)));

        let bytes = random_bytes(1234, 81);
        let response = app
            .upload_with(&alice.token, "short.bin", &[("expires_in", "1")], bytes.clone())
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "{backend:?}");
        let short: Value = response.json().await.unwrap();
        assert!(expires_in_secs(&short) <= 1);
        let key = short["key"].as_str().unwrap().to_owned();
        let share = app.share_ok(&alice.token, json!({ "files": [key] })).await;
        assert_eq!(app.content(&bob.token, &key).await.status(), StatusCode::OK);
        assert_eq!(app.usage(&alice.token).await["bytes"], 7 + 2 + 1234);
        assert_eq!(app.blob_count().await, blobs + 3);

        tokio::time::sleep(Duration::from_millis(1500)).await;

        // Gone for everyone before any cleanup ran.
        for response in [
            app.content(&alice.token, &key).await,
            app.origin_download(&alice.token, &key).await,
            app.metadata(&alice.token, &key).await,
            app.content(&bob.token, &key).await,
            app.patch(&alice.token, &key, json!({ "name": "renamed.txt" })).await,
        ] {
            assert_problem(response, StatusCode::NOT_FOUND, "file_not_found").await;
        }
        let link = share["token"].as_str().unwrap();
        let public: Value = app.public_get(&format!("/s/{link}"), None).await.json().await.unwrap();
        assert_eq!(public["files"], json!([]), "{backend:?}");

        // The retention pass removes the file and its bytes, and refunds the usage.
        let removed = handoff_server::maintenance::expire(&app.state).await.unwrap();
        assert_eq!(removed, 1, "{backend:?}");
        assert_eq!(app.blob_count().await, blobs + 2, "{backend:?}: the blob is gone");
        assert_eq!(
            app.usage(&alice.token).await,
            json!({ "bytes": 9, "files": 2, "quota_bytes": null, "quota_files": null }),
            "{backend:?}"
        );
        // Idempotent: a second pass (another node) finds nothing.
        assert_eq!(handoff_server::maintenance::expire(&app.state).await.unwrap(), 0);
        assert_eq!(
            app.content(&alice.token, default["key"].as_str().unwrap())
                .await
                .status(),
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn expiry_passes_on_several_nodes_at_once_remove_each_file_once() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        app.user("root").await;
        let alice = app.user("alice").await;
        for i in 0..20 {
            let response = app
                .upload_with(
                    &alice.token,
                    &format!("f{i}"),
                    &[("expires_in", "1")],
                    random_bytes(10, i),
                )
                .await;
            assert_eq!(response.status(), StatusCode::CREATED);
        }
        app.upload_ok(&alice.token, "keep.txt", b"keep".to_vec()).await;
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let passes: Vec<_> = (0..4)
            .map(|_| {
                let state = app.state.clone();
                tokio::spawn(async move { handoff_server::maintenance::expire(&state).await.unwrap() })
            })
            .collect();
        let mut removed = 0;
        for pass in passes {
            removed += pass.await.unwrap();
        }
        assert_eq!(removed, 20, "{backend:?}: each expired file removed exactly once");
        assert_eq!(app.blob_count().await, 1, "{backend:?}");
        assert_eq!(
            app.usage(&alice.token).await,
            json!({ "bytes": 4, "files": 1, "quota_bytes": null, "quota_files": null }),
            "{backend:?}"
        );
    }
}

fn names(list: &Value) -> Vec<String> {
    list["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_owned())
        .collect()
}

/// An expired file answers `404` before the retention pass removes it; listings must agree and not show it.
#[tokio::test]
async fn expired_files_are_not_listed() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        let root = app.user("root").await;
        let alice = app.user("alice").await;
        let team = app.team_ok(&alice.token, "T").await;
        app.upload_ok(&alice.token, "keep.txt", b"keep".to_vec()).await;
        let response = app
            .upload_with(&alice.token, "short.txt", &[("expires_in", "1")], b"short".to_vec())
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let response = app
            .upload_with(
                &alice.token,
                "team-short.txt",
                &[("expires_in", "1"), ("team", team.as_str())],
                b"short".to_vec(),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        tokio::time::sleep(Duration::from_millis(1500)).await;

        let mut leaks = Vec::new();
        let mine = names(&app.get_json(&alice.token, "/files").await);
        if mine != ["keep.txt"] {
            leaks.push(format!("GET /files lists {mine:?}"));
        }
        let team_files = names(&app.get_json(&alice.token, &format!("/teams/{team}/files")).await);
        if !team_files.is_empty() {
            leaks.push(format!("GET /teams/{{id}}/files lists {team_files:?}"));
        }
        let all = names(&app.get_json(&root.token, "/admin/files").await);
        if all != ["keep.txt"] {
            leaks.push(format!("GET /admin/files lists {all:?}"));
        }
        assert!(
            leaks.is_empty(),
            "{backend:?}: expired files (which answer 404) are still listed: {leaks:?}"
        );

        // The retention pass refunds each account: the user for the personal file, the team for the team file.
        let blobs = app.blob_count().await;
        assert_eq!(
            handoff_server::maintenance::expire(&app.state).await.unwrap(),
            2,
            "{backend:?}"
        );
        assert_eq!(app.blob_count().await, blobs - 2);
        assert_eq!(
            app.usage(&alice.token).await,
            json!({ "bytes": 4, "files": 1, "quota_bytes": null, "quota_files": null }),
            "{backend:?}"
        );
        let team_view = app.get_json(&alice.token, &format!("/teams/{team}")).await;
        assert_eq!(
            team_view["usage"],
            json!({ "bytes": 0, "files": 0, "quota_bytes": null, "quota_files": null }),
            "{backend:?}"
        );
    }
}

/// Expired share links answer `410` during the grace period, and are forgotten (`404`) after it.
#[tokio::test]
async fn expired_links_are_forgotten_after_the_grace_period() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |c| c.retention.expired_link_grace_secs = 0).await;
        app.user("root").await;
        let alice = app.user("alice").await;
        let file = app.upload_ok(&alice.token, "a.txt", b"a".to_vec()).await;
        let expiring = app
            .share_ok(&alice.token, json!({ "files": [file["key"]], "expires_in": 1 }))
            .await;
        let lasting = app.share_ok(&alice.token, json!({ "files": [file["key"]] })).await;
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let link = expiring["token"].as_str().unwrap();
        assert_problem(
            app.public_get(&format!("/s/{link}"), None).await,
            StatusCode::GONE,
            "link_unavailable",
        )
        .await;
        handoff_server::maintenance::expire(&app.state).await.unwrap();
        assert_problem(
            app.public_get(&format!("/s/{link}"), None).await,
            StatusCode::NOT_FOUND,
            "link_not_found",
        )
        .await;
        let lasting_link = lasting["token"].as_str().unwrap();
        assert_eq!(
            app.public_get(&format!("/s/{lasting_link}"), None).await.status(),
            StatusCode::OK,
            "{backend:?}"
        );
        assert_eq!(
            app.get_json(&alice.token, "/shares").await["shares"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }
}

/// Absurd lifetimes (`expires_in` near `u64::MAX`) are a client's mistake: a 4xx or an accepted far-future
/// expiry, never a 5xx.
#[tokio::test]
async fn absurd_expiries_are_never_server_errors() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        app.user("root").await;
        let alice = app.user("alice").await;
        let file = app.upload_ok(&alice.token, "a.txt", b"a".to_vec()).await;
        let key = file["key"].as_str().unwrap().to_owned();
        for secs in [u64::MAX, 1 << 40, 400 * 365 * 24 * 3600 * 100] {
            let raw = secs.to_string();
            let responses = [
                (
                    "POST /files",
                    app.upload_with(&alice.token, "b.txt", &[("expires_in", raw.as_str())], b"b".to_vec())
                        .await,
                ),
                (
                    "POST /shares",
                    app.post_as(&alice.token, "/shares", json!({ "files": [key], "expires_in": secs }))
                        .await,
                ),
                (
                    "POST /upload-links",
                    app.post_as(&alice.token, "/upload-links", json!({ "expires_in": secs }))
                        .await,
                ),
            ];
            for (what, response) in responses {
                let status = response.status();
                assert!(
                    !status.is_server_error(),
                    "{backend:?}: {what} with expires_in={secs} answered {status}: {:?}",
                    response.text().await
                );
            }
        }
        // The server is still fine.
        assert_eq!(app.content(&alice.token, &key).await.status(), StatusCode::OK);
        for expires_at in ["9999-12-31T23:59:59Z", "+10000-01-01T00:00:00Z"] {
            let response = app
                .post_as(
                    &alice.token,
                    "/shares",
                    json!({ "files": [key], "expires_at": expires_at }),
                )
                .await;
            let status = response.status();
            assert!(
                !status.is_server_error(),
                "{backend:?}: expires_at={expires_at} answered {status}"
            );
        }
    }
}
