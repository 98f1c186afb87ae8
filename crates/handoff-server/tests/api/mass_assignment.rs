//! Mass assignment: no body sets an owner, a counter, a role, a size or a quota it should not. Every JSON body
//! refuses unknown fields (`400 invalid_body`), and the refused request changes nothing.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, all_backends, assert_problem};

#[tokio::test]
async fn unknown_fields_are_refused_everywhere() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        let root = app.user("root").await;
        let alice = app.user("alice").await;
        let bob = app.user("bob").await;
        let bob_id = app.get_json(&bob.token, "/auth/me").await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let file = app.upload_ok(&alice.token, "a.txt", b"hello".to_vec()).await;
        let key = file["key"].as_str().unwrap().to_owned();
        let share = app.share_ok(&alice.token, json!({ "files": [key] })).await;
        let share_path = format!("/shares/{}", share["id"].as_str().unwrap());
        let team = app.team_ok(&alice.token, "T").await;
        let upload_link = app
            .post_json(
                &alice.token,
                "/upload-links",
                json!({ "max_files": 1 }),
                StatusCode::CREATED,
            )
            .await;

        let (a, b, r) = (alice.token.as_str(), bob.token.as_str(), root.token.as_str());
        let cases: Vec<(&str, &str, String, Value)> = vec![
            ("POST", a, "/shares".into(), json!({ "files": [key], "owner": bob_id })),
            (
                "POST",
                a,
                "/shares".into(),
                json!({ "files": [key], "downloads": 0, "max_downloads": 1 }),
            ),
            ("POST", a, "/shares".into(), json!({ "files": [key], "revoked": false })),
            (
                "POST",
                a,
                "/shares".into(),
                json!({ "files": [key], "token": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" }),
            ),
            ("PATCH", a, share_path.clone(), json!({ "downloads": 0 })),
            ("PATCH", a, share_path.clone(), json!({ "owner": bob_id })),
            ("PATCH", a, share_path.clone(), json!({ "files": [] })),
            ("POST", a, "/upload-links".into(), json!({ "owner": bob_id })),
            (
                "POST",
                a,
                "/upload-links".into(),
                json!({ "files_received": 0, "max_files": 1 }),
            ),
            ("POST", a, "/upload-links".into(), json!({ "bytes_received": 0 })),
            ("POST", a, "/upload-links".into(), json!({ "team_id": team })),
            ("POST", b, "/teams".into(), json!({ "name": "X", "owner": bob_id })),
            ("POST", b, "/teams".into(), json!({ "name": "X", "role": "owner" })),
            ("POST", b, "/teams".into(), json!({ "name": "X", "used_bytes": 0 })),
            (
                "PATCH",
                a,
                format!("/teams/{team}"),
                json!({ "name": "Y", "quota_bytes": 1 }),
            ),
            (
                "POST",
                a,
                format!("/teams/{team}/members"),
                json!({ "username": "bob", "role": "member", "is_admin": true }),
            ),
            (
                "PATCH",
                a,
                format!("/teams/{team}/members/alice"),
                json!({ "role": "owner", "user_id": bob_id }),
            ),
            (
                "POST",
                a,
                format!("/teams/{team}/transfer"),
                json!({ "username": "alice", "role": "viewer" }),
            ),
            ("PATCH", r, "/admin/users/alice".into(), json!({ "used_bytes": 0 })),
            (
                "PATCH",
                r,
                "/admin/users/alice".into(),
                json!({ "username": "mallory" }),
            ),
            (
                "PATCH",
                r,
                "/admin/users/alice".into(),
                json!({ "quota": { "bytes": 10, "files": null, "used_bytes": 0 } }),
            ),
            (
                "PATCH",
                r,
                format!("/admin/teams/{team}"),
                json!({ "quota": { "bytes": 10, "files": null }, "owner": bob_id }),
            ),
            (
                "PATCH",
                a,
                format!("/files/{key}"),
                json!({ "name": "b.txt", "owner": bob_id }),
            ),
            (
                "PATCH",
                a,
                format!("/files/{key}"),
                json!({ "size": 1, "sha256": "00" }),
            ),
            ("PATCH", a, format!("/files/{key}"), json!({ "team_id": team })),
            ("PATCH", a, format!("/files/{key}"), json!({ "expires_at": null })),
        ];
        for (method, token, path, body) in cases {
            let response = match method {
                "POST" => app.post_as(token, &path, body.clone()).await,
                _ => app.patch_as(token, &path, body.clone()).await,
            };
            assert_eq!(
                response.status(),
                StatusCode::BAD_REQUEST,
                "{backend:?}: {method} {path} {body} was not refused"
            );
            assert_problem(response, StatusCode::BAD_REQUEST, "invalid_body").await;
        }

        // Nothing changed.
        assert_eq!(
            app.get_json(&alice.token, "/shares").await["shares"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(app.get_json(&bob.token, "/shares").await["shares"], json!([]));
        assert_eq!(app.get_json(&bob.token, "/teams").await["teams"], json!([]));
        assert_eq!(
            app.get_json(&alice.token, "/upload-links").await["upload_links"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        let team_view = app.get_json(&alice.token, &format!("/teams/{team}")).await;
        assert_eq!(team_view["name"], "T");
        assert_eq!(team_view["members"].as_array().unwrap().len(), 1);
        assert_eq!(team_view["usage"]["quota_bytes"], Value::Null);
        let me = app.get_json(&alice.token, "/auth/me").await;
        assert_eq!(me["username"], "alice");
        assert_eq!(me["usage"]["quota_bytes"], Value::Null);
        assert_eq!(me["is_admin"], false);
        let meta = app.get_json(&alice.token, &format!("/files/{key}")).await;
        assert_eq!(meta["name"], "a.txt");
        assert_eq!(meta["size"], 5);
        assert!(meta["team_id"].is_null());
        let view = app.get_json(&alice.token, &share_path).await;
        assert_eq!(view["files"].as_array().unwrap().len(), 1);
        assert_eq!(view["downloads"], 0);
        let link = app
            .get_json(
                &alice.token,
                &format!("/upload-links/{}", upload_link["id"].as_str().unwrap()),
            )
            .await;
        assert_eq!(link["files_received"], 0);
        assert_eq!(link["max_files"], 1);

        // Upload queries refuse unknown parameters too (no `owner=`, `size=`, `sha256=` in the query).
        for query in [("owner", bob_id.as_str()), ("size", "1"), ("sha256", "00")] {
            assert_problem(
                app.upload_with(&alice.token, "q.txt", &[query], b"q".to_vec()).await,
                StatusCode::BAD_REQUEST,
                "invalid_query",
            )
            .await;
        }
    }
}
