//! Quotas: per user and per team, bytes and files, from the configuration or set by an admin; enforced while the
//! upload streams and atomically at commit (a race of uploads never exceeds the quota); visible in
//! `GET /auth/me`; refunded by deletes.

use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

use crate::helpers::{TestApp, all_backends, assert_problem, random_bytes};

fn key(file: &Value) -> String {
    file["key"].as_str().unwrap().to_owned()
}

async fn file_count(app: &TestApp, token: &str) -> usize {
    app.get_json(token, "/files").await["files"].as_array().unwrap().len()
}

#[tokio::test]
async fn user_quota_is_enforced_visible_and_refunded() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |c| c.quotas.user_bytes = Some(1000)).await;
        app.user("root").await;
        let alice = app.user("alice").await;
        assert_eq!(
            app.usage(&alice.token).await,
            json!({ "bytes": 0, "files": 0, "quota_bytes": 1000, "quota_files": null }),
            "{backend:?}"
        );

        let blobs = app.blob_count().await;
        assert_problem(
            app.upload(&alice.token, "big.bin", random_bytes(1500, 41)).await,
            StatusCode::INSUFFICIENT_STORAGE,
            "quota_exceeded",
        )
        .await;
        assert_eq!(app.blob_count().await, blobs, "{backend:?}: nothing stored");
        assert_eq!(file_count(&app, &alice.token).await, 0);
        assert_eq!(app.usage(&alice.token).await["bytes"], 0);

        let first = app.upload_ok(&alice.token, "a.bin", random_bytes(600, 42)).await;
        assert_eq!(
            app.usage(&alice.token).await,
            json!({ "bytes": 600, "files": 1, "quota_bytes": 1000, "quota_files": null })
        );
        assert_problem(
            app.upload(&alice.token, "b.bin", random_bytes(500, 43)).await,
            StatusCode::INSUFFICIENT_STORAGE,
            "quota_exceeded",
        )
        .await;
        app.upload_ok(&alice.token, "c.bin", random_bytes(400, 44)).await;
        assert_eq!(
            app.usage(&alice.token).await["bytes"],
            1000,
            "{backend:?}: exactly full"
        );
        assert_problem(
            app.upload(&alice.token, "d.bin", vec![1]).await,
            StatusCode::INSUFFICIENT_STORAGE,
            "quota_exceeded",
        )
        .await;

        // Without a Content-Length the quota is found while streaming.
        let blobs = app.blob_count().await;
        assert_eq!(
            app.delete(&alice.token, &key(&first)).await.status(),
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            app.usage(&alice.token).await,
            json!({ "bytes": 400, "files": 1, "quota_bytes": 1000, "quota_files": null }),
            "{backend:?}: a delete refunds"
        );
        let stream = futures::stream::iter((0..20).map(|_| Ok::<_, std::io::Error>(vec![7u8; 100])));
        let response = app
            .upload(&alice.token, "chunked.bin", reqwest::Body::wrap_stream(stream))
            .await;
        assert_problem(response, StatusCode::INSUFFICIENT_STORAGE, "quota_exceeded").await;
        assert_eq!(app.blob_count().await, blobs - 1, "{backend:?}: no partial blob kept");
        assert_eq!(file_count(&app, &alice.token).await, 1);
        // A streamed upload that fits is fine.
        let stream = futures::stream::iter((0..6).map(|_| Ok::<_, std::io::Error>(vec![7u8; 100])));
        let response = app
            .upload(&alice.token, "chunked.bin", reqwest::Body::wrap_stream(stream))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "{backend:?}");
        assert_eq!(app.usage(&alice.token).await["bytes"], 1000);

        // A multipart request over quota stores none of its files.
        let last: Value = app.get_json(&alice.token, "/files").await["files"][0].clone();
        app.delete(&alice.token, &key(&last)).await;
        let form = Form::new()
            .part("file", Part::bytes(vec![1u8; 400]).file_name("one.bin"))
            .part("file", Part::bytes(vec![2u8; 400]).file_name("two.bin"));
        let response = app
            .client
            .post(app.url("/files"))
            .bearer_auth(&alice.token)
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_problem(response, StatusCode::INSUFFICIENT_STORAGE, "quota_exceeded").await;
        assert_eq!(file_count(&app, &alice.token).await, 1, "{backend:?}");
        assert_eq!(app.usage(&alice.token).await["bytes"], 400);

        // Another user has their own quota.
        let bob = app.user("bob").await;
        app.upload_ok(&bob.token, "b.bin", random_bytes(1000, 45)).await;
    }
}

#[tokio::test]
async fn concurrent_uploads_never_exceed_the_quota() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |c| c.quotas.user_bytes = Some(1000)).await;
        app.user("root").await;
        let alice = app.user("alice").await;
        let blobs = app.blob_count().await;
        let tasks: Vec<_> = (0..10u64)
            .map(|i| {
                let client = app.client.clone();
                let url = app.url("/files");
                let token = alice.token.clone();
                tokio::spawn(async move {
                    let response = client
                        .post(url)
                        .query(&[("fileName", format!("f{i}.bin"))])
                        .bearer_auth(token)
                        .body(random_bytes(300, 100 + i))
                        .send()
                        .await
                        .unwrap();
                    let status = response.status();
                    (status, response.text().await.unwrap())
                })
            })
            .collect();
        let mut created = 0;
        for task in tasks {
            let (status, body) = task.await.unwrap();
            match status {
                StatusCode::CREATED => created += 1,
                StatusCode::INSUFFICIENT_STORAGE => {
                    let problem: Value = serde_json::from_str(&body).unwrap();
                    assert_eq!(problem["code"], "quota_exceeded", "{backend:?}");
                }
                other => panic!("{backend:?}: unexpected {other}: {body}"),
            }
        }
        assert_eq!(
            created, 3,
            "{backend:?}: exactly three 300-byte files fit in 1000 bytes"
        );
        assert_eq!(
            app.usage(&alice.token).await,
            json!({ "bytes": 900, "files": 3, "quota_bytes": 1000, "quota_files": null }),
            "{backend:?}"
        );
        assert_eq!(file_count(&app, &alice.token).await, 3);
        assert_eq!(
            app.blob_count().await,
            blobs + 3,
            "{backend:?}: refused uploads leave no blobs"
        );
    }
}

#[tokio::test]
async fn file_count_quota() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |c| c.quotas.user_files = Some(2)).await;
        app.user("root").await;
        let alice = app.user("alice").await;
        let first = app.upload_ok(&alice.token, "1.txt", b"1".to_vec()).await;
        app.upload_ok(&alice.token, "2.txt", b"2".to_vec()).await;
        assert_problem(
            app.upload(&alice.token, "3.txt", b"3".to_vec()).await,
            StatusCode::INSUFFICIENT_STORAGE,
            "quota_exceeded",
        )
        .await;
        assert_eq!(
            app.usage(&alice.token).await,
            json!({ "bytes": 2, "files": 2, "quota_bytes": null, "quota_files": 2 }),
            "{backend:?}"
        );
        // A multipart request with two files when one is left: neither is stored.
        app.delete(&alice.token, &key(&first)).await;
        let form = Form::new()
            .part("file", Part::bytes(b"a".to_vec()).file_name("a.txt"))
            .part("file", Part::bytes(b"b".to_vec()).file_name("b.txt"));
        let response = app
            .client
            .post(app.url("/files"))
            .bearer_auth(&alice.token)
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_problem(response, StatusCode::INSUFFICIENT_STORAGE, "quota_exceeded").await;
        assert_eq!(file_count(&app, &alice.token).await, 1, "{backend:?}");
        app.upload_ok(&alice.token, "3.txt", b"3".to_vec()).await;
    }
}

#[tokio::test]
async fn team_quota_is_the_teams() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |c| {
            c.quotas.team_bytes = Some(1000);
            c.quotas.team_files = Some(10);
        })
        .await;
        app.user("root").await;
        let olga = app.user("olga").await;
        let mia = app.user("mia").await;
        let team = app.team_ok(&olga.token, "Design").await;
        app.add_member_ok(&olga.token, &team, "mia", "member").await;
        let view = app.get_json(&olga.token, &format!("/teams/{team}")).await;
        assert_eq!(
            view["usage"],
            json!({ "bytes": 0, "files": 0, "quota_bytes": 1000, "quota_files": 10 }),
            "{backend:?}"
        );

        let response = app
            .upload_with(&mia.token, "a.bin", &[("team", team.as_str())], random_bytes(800, 51))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "{backend:?}");
        assert_problem(
            app.upload_with(&olga.token, "b.bin", &[("team", team.as_str())], random_bytes(300, 52))
                .await,
            StatusCode::INSUFFICIENT_STORAGE,
            "quota_exceeded",
        )
        .await;
        let stream = futures::stream::iter((0..5).map(|_| Ok::<_, std::io::Error>(vec![7u8; 100])));
        let response = app
            .client
            .post(app.url("/files"))
            .query(&[("fileName", "c.bin"), ("team", team.as_str())])
            .bearer_auth(&mia.token)
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .unwrap();
        assert_problem(response, StatusCode::INSUFFICIENT_STORAGE, "quota_exceeded").await;
        let view = app.get_json(&olga.token, &format!("/teams/{team}")).await;
        assert_eq!(view["usage"]["bytes"], 800, "{backend:?}");
        assert_eq!(view["usage"]["files"], 1);
        assert_eq!(
            app.get_json(&olga.token, &format!("/teams/{team}/files")).await["files"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        // The members' own spaces are not the team's: no user quota is configured.
        assert_eq!(app.usage(&mia.token).await["bytes"], 0);
        app.upload_ok(&mia.token, "mine.bin", random_bytes(5000, 53)).await;
        assert_eq!(
            app.usage(&mia.token).await,
            json!({ "bytes": 5000, "files": 1, "quota_bytes": null, "quota_files": null })
        );
    }
}

#[tokio::test]
async fn admins_set_quotas() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |c| c.quotas.user_bytes = Some(10_000)).await;
        let root = app.user("root").await;
        let alice = app.user("alice").await;

        let response = app
            .patch_as(
                &root.token,
                "/admin/users/alice",
                json!({ "quota": { "bytes": 500, "files": null } }),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{backend:?}");
        let view: Value = response.json().await.unwrap();
        assert_eq!(view["usage"]["quota_bytes"], 500);
        assert_eq!(
            app.usage(&alice.token).await,
            json!({ "bytes": 0, "files": 0, "quota_bytes": 500, "quota_files": null }),
            "{backend:?}"
        );
        assert_problem(
            app.upload(&alice.token, "a.bin", random_bytes(600, 61)).await,
            StatusCode::INSUFFICIENT_STORAGE,
            "quota_exceeded",
        )
        .await;
        app.upload_ok(&alice.token, "a.bin", random_bytes(500, 61)).await;

        // `null` falls back to the server's default.
        let response = app
            .patch_as(
                &root.token,
                "/admin/users/alice",
                json!({ "quota": { "bytes": null, "files": 1 } }),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            app.usage(&alice.token).await,
            json!({ "bytes": 500, "files": 1, "quota_bytes": 10_000, "quota_files": 1 }),
            "{backend:?}"
        );
        assert_problem(
            app.upload(&alice.token, "b.bin", vec![1]).await,
            StatusCode::INSUFFICIENT_STORAGE,
            "quota_exceeded",
        )
        .await;

        // Team quotas.
        let team = app.team_ok(&alice.token, "T").await;
        let response = app
            .patch_as(
                &root.token,
                &format!("/admin/teams/{team}"),
                json!({ "quota": { "bytes": 100, "files": null } }),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{backend:?}");
        let usage: Value = response.json().await.unwrap();
        assert_eq!(usage["quota_bytes"], 100);
        assert_problem(
            app.upload_with(&alice.token, "t.bin", &[("team", team.as_str())], random_bytes(101, 62))
                .await,
            StatusCode::INSUFFICIENT_STORAGE,
            "quota_exceeded",
        )
        .await;
        let response = app
            .upload_with(&alice.token, "t.bin", &[("team", team.as_str())], random_bytes(100, 62))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_problem(
            app.patch_as(
                &root.token,
                "/admin/teams/00000000-0000-0000-0000-000000000000",
                json!({ "quota": { "bytes": 1, "files": null } }),
            )
            .await,
            StatusCode::NOT_FOUND,
            "team_not_found",
        )
        .await;
        // Users cannot set their own quota.
        assert_problem(
            app.patch_as(
                &alice.token,
                "/admin/users/alice",
                json!({ "quota": { "bytes": null, "files": null } }),
            )
            .await,
            StatusCode::FORBIDDEN,
            "admin_only",
        )
        .await;
        assert_problem(
            app.patch_as(
                &alice.token,
                &format!("/admin/teams/{team}"),
                json!({ "quota": { "bytes": null, "files": null } }),
            )
            .await,
            StatusCode::FORBIDDEN,
            "admin_only",
        )
        .await;
    }
}
