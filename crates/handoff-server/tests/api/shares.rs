//! Share links: the owner's side (`/shares`) and the public side without an account (`/s/{token}`): what the
//! link shows and hides, downloads through grant URLs with `Range`, exact download limits under concurrency,
//! expiry, exhaustion, revocation, passwords, edits, and who may share what.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, all_backends, assert_problem, random_bytes, sha256_hex};

/// A token of the right shape that no link has.
const UNKNOWN_TOKEN: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

fn key(file: &Value) -> String {
    file["key"].as_str().unwrap().to_owned()
}

fn token(share: &Value) -> String {
    share["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn create_open_and_download_through_a_share_link() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        app.user("root").await;
        let alice = app.user("alice").await;
        let report = random_bytes(300 * 1024 + 5, 21);
        let notes = b"some notes".to_vec();
        let report_file = app.upload_ok(&alice.token, "report.pdf", report.clone()).await;
        let notes_file = app.upload_ok(&alice.token, "notes.txt", notes.clone()).await;
        let alice_id = app.get_json(&alice.token, "/auth/me").await["id"]
            .as_str()
            .unwrap()
            .to_owned();

        let response = app
            .post_as(
                &alice.token,
                "/shares",
                json!({ "files": [key(&report_file), key(&notes_file)], "note": "for the board" }),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "{backend:?}");
        assert_eq!(response.headers()["cache-control"], "no-store");
        let share: Value = response.json().await.unwrap();
        let link = token(&share);
        assert_eq!(link.len(), 32, "{backend:?}: 192-bit token");
        assert_ne!(link, key(&report_file));
        assert_eq!(share["url"], format!("/s/{link}"));
        assert_eq!(share["status"], "active");
        assert_eq!(share["downloads"], 0);
        assert_eq!(share["has_password"], false);
        assert_eq!(share["note"], "for the board");
        assert_eq!(share["files"].as_array().unwrap().len(), 2);
        let share_id = share["id"].as_str().unwrap().to_owned();

        // The token is shown once: neither the link's page nor the list repeats it.
        let owner_view = app.get_json(&alice.token, &format!("/shares/{share_id}")).await;
        assert!(owner_view.get("token").is_none(), "{owner_view}");
        assert!(!owner_view.to_string().contains(&link));
        let list = app.get_json(&alice.token, "/shares").await;
        assert_eq!(list["shares"].as_array().unwrap().len(), 1);
        assert!(!list.to_string().contains(&link));

        // The public page: names and sizes, no keys, no ids.
        let response = app.public_get(&format!("/s/{link}"), None).await;
        assert_eq!(response.status(), StatusCode::OK, "{backend:?}");
        let text = response.text().await.unwrap();
        let public: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(public["shared_by"], "alice");
        assert_eq!(public["note"], "for the board");
        assert_eq!(public["files"][0]["name"], "report.pdf");
        assert_eq!(public["files"][0]["size"], report.len());
        assert_eq!(public["files"][0]["index"], 0);
        assert_eq!(public["files"][0]["download_url"], format!("/s/{link}/files/0"));
        assert_eq!(public["files"][1]["name"], "notes.txt");
        assert!(public["downloads_left"].is_null());
        for secret in [key(&report_file), key(&notes_file), alice_id.clone(), share_id.clone()] {
            assert!(
                !text.contains(&secret),
                "{backend:?}: the public page leaks {secret}: {text}"
            );
        }
        for field in ["key", "id", "owner", "owner_id", "sha256"] {
            assert!(
                public["files"][0].get(field).is_none(),
                "{backend:?}: {field} in {text}"
            );
            assert!(public.get(field).is_none(), "{backend:?}: {field} in {text}");
        }

        // Download: counted once, redirected to a grant URL that serves the bytes.
        let grant = app.share_grant(&link, 0, None).await;
        assert!(grant.starts_with(&format!("/s/{link}/files/0/")), "{grant}");
        let response = app.public_get(&grant, None).await;
        assert_eq!(response.status(), StatusCode::OK, "{backend:?}");
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        assert!(
            response.headers()["content-disposition"]
                .to_str()
                .unwrap()
                .starts_with("attachment")
        );
        let body = response.bytes().await.unwrap();
        assert_eq!(sha256_hex(&body), sha256_hex(&report), "{backend:?}");

        // Range requests on the grant URL resume the same download without counting again.
        for (start, end) in [(0usize, 99usize), (1000, 1999), (report.len() - 10, report.len() - 1)] {
            let response = app
                .client
                .get(app.url(&grant))
                .header("range", format!("bytes={start}-{end}"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT, "{backend:?}");
            assert_eq!(
                &response.bytes().await.unwrap()[..],
                &report[start..=end],
                "{backend:?}"
            );
        }
        let owner_view = app.get_json(&alice.token, &format!("/shares/{share_id}")).await;
        assert_eq!(
            owner_view["downloads"], 1,
            "{backend:?}: Range requests are not downloads"
        );

        // The second file, through its own counted download.
        let grant = app.share_grant(&link, 1, None).await;
        let body = app.public_get(&grant, None).await.bytes().await.unwrap();
        assert_eq!(sha256_hex(&body), sha256_hex(&notes));
        let owner_view = app.get_json(&alice.token, &format!("/shares/{share_id}")).await;
        assert_eq!(owner_view["downloads"], 2, "{backend:?}");

        // A position the link does not have, and a made-up grant.
        assert_problem(
            app.public_get(&format!("/s/{link}/files/2"), None).await,
            StatusCode::NOT_FOUND,
            "file_not_found",
        )
        .await;
        assert_eq!(
            app.public_get(&format!("/s/{link}/files/0/{UNKNOWN_TOKEN}"), None)
                .await
                .status(),
            StatusCode::NOT_FOUND
        );
        // A grant is bound to its position.
        let grant0 = app.share_grant(&link, 0, None).await;
        let grant_secret = grant0.rsplit('/').next().unwrap();
        assert_eq!(
            app.public_get(&format!("/s/{link}/files/1/{grant_secret}"), None)
                .await
                .status(),
            StatusCode::NOT_FOUND,
            "{backend:?}: a grant for file 0 does not open file 1"
        );
    }
}

#[tokio::test]
async fn download_limit_is_exact_under_concurrency() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        app.user("root").await;
        let alice = app.user("alice").await;
        let bytes = random_bytes(4096, 22);
        let file = app.upload_ok(&alice.token, "a.bin", bytes.clone()).await;
        let share = app
            .share_ok(&alice.token, json!({ "files": [key(&file)], "max_downloads": 5 }))
            .await;
        let link = token(&share);
        let public: Value = app.public_get(&format!("/s/{link}"), None).await.json().await.unwrap();
        assert_eq!(public["downloads_left"], 5);

        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let client = app.client.clone();
                let url = app.url(&format!("/s/{link}/files/0"));
                tokio::spawn(async move {
                    let response = client.get(url).send().await.unwrap();
                    let status = response.status();
                    let location = response
                        .headers()
                        .get("location")
                        .map(|l| l.to_str().unwrap().to_owned());
                    let body = response.text().await.unwrap();
                    (status, location, body)
                })
            })
            .collect();
        let mut grants = Vec::new();
        let mut gone = 0;
        for task in tasks {
            let (status, location, body) = task.await.unwrap();
            match status {
                StatusCode::FOUND => grants.push(location.unwrap()),
                StatusCode::GONE => {
                    let problem: Value = serde_json::from_str(&body).unwrap();
                    assert_eq!(problem["code"], "link_unavailable");
                    gone += 1;
                }
                other => panic!("{backend:?}: unexpected {other}: {body}"),
            }
        }
        assert_eq!(
            grants.len(),
            5,
            "{backend:?}: exactly max_downloads downloads are granted"
        );
        assert_eq!(gone, 95, "{backend:?}");

        let owner_view = app
            .get_json(&alice.token, &format!("/shares/{}", share["id"].as_str().unwrap()))
            .await;
        assert_eq!(owner_view["downloads"], 5, "{backend:?}");
        assert_eq!(owner_view["status"], "exhausted");
        assert_problem(
            app.public_get(&format!("/s/{link}"), None).await,
            StatusCode::GONE,
            "link_unavailable",
        )
        .await;
        // Downloads already counted still complete.
        for grant in &grants {
            let body = app.public_get(grant, None).await.bytes().await.unwrap();
            assert_eq!(sha256_hex(&body), sha256_hex(&bytes), "{backend:?}");
        }
    }
}

#[tokio::test]
async fn expired_exhausted_and_revoked_links_answer_alike() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        app.user("root").await;
        let alice = app.user("alice").await;
        let file = app.upload_ok(&alice.token, "a.txt", b"hello".to_vec()).await;
        let files = json!([key(&file)]);

        let expiring = app
            .share_ok(&alice.token, json!({ "files": files, "expires_in": 1 }))
            .await;
        assert!(expiring["expires_at"].as_str().is_some());
        let expiring_grant = app.share_grant(&token(&expiring), 0, None).await;
        let exhausted = app
            .share_ok(&alice.token, json!({ "files": files, "max_downloads": 1 }))
            .await;
        app.share_grant(&token(&exhausted), 0, None).await;
        let revoked = app.share_ok(&alice.token, json!({ "files": files })).await;
        let response = app
            .delete_as(&alice.token, &format!("/shares/{}", revoked["id"].as_str().unwrap()))
            .await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);

        tokio::time::sleep(Duration::from_millis(1500)).await;

        for (what, share) in [("expired", &expiring), ("exhausted", &exhausted), ("revoked", &revoked)] {
            let link = token(share);
            for path in [format!("/s/{link}"), format!("/s/{link}/files/0")] {
                let response = app.public_get(&path, None).await;
                assert_eq!(response.status(), StatusCode::GONE, "{backend:?}: {what} {path}");
                let problem = assert_problem(response, StatusCode::GONE, "link_unavailable").await;
                assert!(!problem.to_string().contains("a.txt"), "{problem}");
            }
            let view = app
                .get_json(&alice.token, &format!("/shares/{}", share["id"].as_str().unwrap()))
                .await;
            assert_eq!(view["status"], what, "{backend:?}");
        }
        // A grant does not outlive its link's expiry.
        assert_problem(
            app.public_get(&expiring_grant, None).await,
            StatusCode::GONE,
            "link_unavailable",
        )
        .await;

        // Unknown and malformed tokens are simply not found.
        for path in [
            format!("/s/{UNKNOWN_TOKEN}"),
            format!("/s/{UNKNOWN_TOKEN}/files/0"),
            "/s/short".to_owned(),
            "/s/short/files/0".to_owned(),
        ] {
            assert_problem(
                app.public_get(&path, None).await,
                StatusCode::NOT_FOUND,
                "link_not_found",
            )
            .await;
        }
    }
}

#[tokio::test]
async fn revoking_stops_a_download_in_progress() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        app.user("root").await;
        let alice = app.user("alice").await;
        let bytes = random_bytes(10_000, 23);
        let file = app.upload_ok(&alice.token, "a.bin", bytes.clone()).await;
        let share = app.share_ok(&alice.token, json!({ "files": [key(&file)] })).await;
        let grant = app.share_grant(&token(&share), 0, None).await;
        let first = app
            .client
            .get(app.url(&grant))
            .header("range", "bytes=0-4999")
            .send()
            .await
            .unwrap();
        assert_eq!(first.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(&first.bytes().await.unwrap()[..], &bytes[..5000]);

        let response = app
            .delete_as(&alice.token, &format!("/shares/{}", share["id"].as_str().unwrap()))
            .await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let rest = app
            .client
            .get(app.url(&grant))
            .header("range", "bytes=5000-")
            .send()
            .await
            .unwrap();
        assert_problem(rest, StatusCode::GONE, "link_unavailable").await;
        // Even a fresh counted download is refused.
        assert_problem(
            app.public_get(&format!("/s/{}/files/0", token(&share)), None).await,
            StatusCode::GONE,
            "link_unavailable",
        )
        .await;
    }
}

#[tokio::test]
async fn password_protected_links() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        app.user("root").await;
        let alice = app.user("alice").await;
        let bytes = b"top secret plans".to_vec();
        let file = app.upload_ok(&alice.token, "secret-plans.txt", bytes.clone()).await;
        let share = app
            .share_ok(
                &alice.token,
                json!({ "files": [key(&file)], "password": "open sesame 42" }),
            )
            .await;
        assert_eq!(share["has_password"], true);
        assert!(
            !share.to_string().contains("open sesame"),
            "the password is never echoed"
        );
        let link = token(&share);

        for path in [format!("/s/{link}"), format!("/s/{link}/files/0")] {
            let response = app.public_get(&path, None).await;
            assert!(
                response.headers().get("www-authenticate").is_none(),
                "{backend:?}: a link password is not a bearer-token challenge"
            );
            let missing = assert_problem(response, StatusCode::UNAUTHORIZED, "password_required").await;
            let wrong = assert_problem(
                app.public_get(&path, Some("open sesame 43")).await,
                StatusCode::UNAUTHORIZED,
                "password_invalid",
            )
            .await;
            for body in [missing, wrong] {
                let text = body.to_string();
                assert!(
                    !text.contains("secret-plans"),
                    "{backend:?}: a 401 reveals the file: {text}"
                );
                assert!(!text.contains("alice"), "{backend:?}: a 401 reveals the sharer: {text}");
            }
        }
        // A password in the URL is not a password.
        assert_problem(
            app.public_get(&format!("/s/{link}?password=open%20sesame%2042"), None)
                .await,
            StatusCode::UNAUTHORIZED,
            "password_required",
        )
        .await;
        let owner_view = app
            .get_json(&alice.token, &format!("/shares/{}", share["id"].as_str().unwrap()))
            .await;
        assert_eq!(owner_view["downloads"], 0, "{backend:?}: refused attempts do not count");

        let response = app.public_get(&format!("/s/{link}"), Some("open sesame 42")).await;
        assert_eq!(response.status(), StatusCode::OK);
        let public: Value = response.json().await.unwrap();
        assert_eq!(public["files"][0]["name"], "secret-plans.txt");
        let grant = app.share_grant(&link, 0, Some("open sesame 42")).await;
        let body = app.public_get(&grant, None).await.bytes().await.unwrap();
        assert_eq!(&body[..], &bytes[..], "{backend:?}");
    }
}

#[tokio::test]
async fn owners_edit_and_list_their_shares() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        app.user("root").await;
        let alice = app.user("alice").await;
        let file = app.upload_ok(&alice.token, "a.txt", b"hello".to_vec()).await;
        let first = app.share_ok(&alice.token, json!({ "files": [key(&file)] })).await;
        let second = app
            .share_ok(&alice.token, json!({ "files": [key(&file)], "note": "second" }))
            .await;
        let id = second["id"].as_str().unwrap().to_owned();
        let link = token(&second);
        let path = format!("/shares/{id}");

        let list = app.get_json(&alice.token, "/shares").await;
        let ids: Vec<&str> = list["shares"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap())
            .collect();
        assert_eq!(
            ids,
            vec![id.as_str(), first["id"].as_str().unwrap()],
            "{backend:?}: newest first"
        );

        // Set a password, an expiry, a limit and a note.
        let expires_at = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let response = app
            .patch_as(
                &alice.token,
                &path,
                json!({ "password": "a new password", "expires_at": expires_at, "max_downloads": 3, "note": "edited" }),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{backend:?}");
        let edited: Value = response.json().await.unwrap();
        assert_eq!(edited["has_password"], true);
        assert_eq!(edited["max_downloads"], 3);
        assert_eq!(edited["note"], "edited");
        assert!(edited["expires_at"].as_str().is_some());
        assert!(edited.get("token").is_none());
        assert_eq!(app.get_json(&alice.token, &path).await, edited, "{backend:?}");
        assert_problem(
            app.public_get(&format!("/s/{link}"), None).await,
            StatusCode::UNAUTHORIZED,
            "password_required",
        )
        .await;
        let public: Value = app
            .public_get(&format!("/s/{link}"), Some("a new password"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(public["downloads_left"], 3);
        assert_eq!(public["note"], "edited");

        // A patch changes only what it names.
        let response = app
            .patch_as(&alice.token, &path, json!({ "note": "only the note" }))
            .await;
        let partly: Value = response.json().await.unwrap();
        assert_eq!(partly["note"], "only the note");
        assert_eq!(partly["has_password"], true);
        assert_eq!(partly["max_downloads"], 3);

        // `null` clears.
        let response = app
            .patch_as(
                &alice.token,
                &path,
                json!({ "password": null, "expires_at": null, "max_downloads": null, "note": null }),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let cleared: Value = response.json().await.unwrap();
        assert_eq!(cleared["has_password"], false);
        assert!(cleared["expires_at"].is_null());
        assert!(cleared["max_downloads"].is_null());
        assert!(cleared["note"].is_null());
        assert_eq!(
            app.public_get(&format!("/s/{link}"), None).await.status(),
            StatusCode::OK
        );

        // `expires_in` sets the expiry relative to now; it cannot come with `expires_at`.
        let response = app.patch_as(&alice.token, &path, json!({ "expires_in": 3600 })).await;
        assert_eq!(response.status(), StatusCode::OK, "{backend:?}");
        let relative: Value = response.json().await.unwrap();
        let at = time::OffsetDateTime::parse(
            relative["expires_at"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let left = (at - time::OffsetDateTime::now_utc()).whole_seconds();
        assert!((3500..=3600).contains(&left), "{left}");
        assert_problem(
            app.patch_as(
                &alice.token,
                &path,
                json!({ "expires_in": 60, "expires_at": expires_at }),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "invalid_expiry",
        )
        .await;
        let response = app.patch_as(&alice.token, &path, json!({ "expires_at": null })).await;
        assert!(response.json::<Value>().await.unwrap()["expires_at"].is_null());

        // Invalid values.
        assert_problem(
            app.patch_as(&alice.token, &path, json!({ "max_downloads": 0 })).await,
            StatusCode::BAD_REQUEST,
            "invalid_limit",
        )
        .await;
        assert_problem(
            app.patch_as(&alice.token, &path, json!({ "expires_at": "2001-01-01T00:00:00Z" }))
                .await,
            StatusCode::BAD_REQUEST,
            "invalid_expiry",
        )
        .await;
        assert_problem(
            app.patch_as(&alice.token, &path, json!({ "expires_at": "tomorrow" }))
                .await,
            StatusCode::BAD_REQUEST,
            "invalid_expiry",
        )
        .await;
        assert_problem(
            app.patch_as(&alice.token, &path, json!({ "note": "x".repeat(1001) }))
                .await,
            StatusCode::BAD_REQUEST,
            "note_too_long",
        )
        .await;
        assert_problem(
            app.patch_as(&alice.token, &path, json!({ "password": "short" })).await,
            StatusCode::BAD_REQUEST,
            "invalid_password",
        )
        .await;
        assert_problem(
            app.post_as(
                &alice.token,
                "/shares",
                json!({ "files": [key(&file)], "max_downloads": 0 }),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "invalid_limit",
        )
        .await;
        assert_problem(
            app.post_as(
                &alice.token,
                "/shares",
                json!({ "files": [key(&file)], "expires_in": 10, "expires_at": expires_at }),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "invalid_expiry",
        )
        .await;
        // Raising the limit of an exhausted link brings it back.
        app.patch_as(&alice.token, &path, json!({ "max_downloads": 1 })).await;
        app.share_grant(&link, 0, None).await;
        assert_eq!(
            app.public_get(&format!("/s/{link}"), None).await.status(),
            StatusCode::GONE
        );
        let response = app.patch_as(&alice.token, &path, json!({ "max_downloads": 2 })).await;
        assert_eq!(response.status(), StatusCode::OK);
        app.share_grant(&link, 0, None).await;
        assert_eq!(
            app.public_get(&format!("/s/{link}"), None).await.status(),
            StatusCode::GONE
        );
    }
}

#[tokio::test]
async fn shares_belong_to_their_owner() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        app.user("root").await;
        let alice = app.user("alice").await;
        let bob = app.user("bob").await;
        let file = app.upload_ok(&alice.token, "a.txt", b"hello".to_vec()).await;
        let share = app.share_ok(&alice.token, json!({ "files": [key(&file)] })).await;
        let path = format!("/shares/{}", share["id"].as_str().unwrap());

        assert_problem(
            app.get_as(&bob.token, &path).await,
            StatusCode::NOT_FOUND,
            "share_not_found",
        )
        .await;
        assert_problem(
            app.patch_as(&bob.token, &path, json!({ "max_downloads": 1 })).await,
            StatusCode::NOT_FOUND,
            "share_not_found",
        )
        .await;
        assert_problem(
            app.delete_as(&bob.token, &path).await,
            StatusCode::NOT_FOUND,
            "share_not_found",
        )
        .await;
        let bobs = app.get_json(&bob.token, "/shares").await;
        assert_eq!(bobs["shares"].as_array().unwrap().len(), 0, "{backend:?}");
        assert_problem(
            app.get_as(&alice.token, "/shares/not-a-uuid").await,
            StatusCode::NOT_FOUND,
            "share_not_found",
        )
        .await;
        // Untouched by bob's attempts.
        let view = app.get_json(&alice.token, &path).await;
        assert_eq!(view["status"], "active");
        assert!(view["max_downloads"].is_null());
        // Without an account, nothing.
        let response = app.client.get(app.url("/shares")).send().await.unwrap();
        assert_problem(response, StatusCode::UNAUTHORIZED, "missing_token").await;
    }
}

#[tokio::test]
async fn who_may_share_what() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        app.user("root").await;
        let alice = app.user("alice").await;
        let bob = app.user("bob").await;
        let key_file = app.upload_ok(&alice.token, "key.txt", b"k".to_vec()).await;
        let private: Value = app
            .upload_with(&alice.token, "private.txt", &[("visibility", "private")], b"p".to_vec())
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(private["visibility"], "private");

        assert_problem(
            app.post_as(&bob.token, "/shares", json!({ "files": [key(&key_file)] }))
                .await,
            StatusCode::FORBIDDEN,
            "not_file_owner",
        )
        .await;
        assert_problem(
            app.post_as(&bob.token, "/shares", json!({ "files": [key(&private)] }))
                .await,
            StatusCode::NOT_FOUND,
            "file_not_found",
        )
        .await;
        // One forbidden file spoils the whole link.
        let bobs = app.upload_ok(&bob.token, "b.txt", b"b".to_vec()).await;
        assert_problem(
            app.post_as(&bob.token, "/shares", json!({ "files": [key(&bobs), key(&private)] }))
                .await,
            StatusCode::NOT_FOUND,
            "file_not_found",
        )
        .await;
        assert_eq!(
            app.get_json(&bob.token, "/shares").await["shares"]
                .as_array()
                .unwrap()
                .len(),
            0
        );
        assert_problem(
            app.post_as(&alice.token, "/shares", json!({ "files": [UNKNOWN_TOKEN] }))
                .await,
            StatusCode::NOT_FOUND,
            "file_not_found",
        )
        .await;
        assert_problem(
            app.post_as(&alice.token, "/shares", json!({ "files": [] })).await,
            StatusCode::BAD_REQUEST,
            "invalid_files",
        )
        .await;
        assert_problem(
            app.post_as(
                &alice.token,
                "/shares",
                json!({ "files": [key(&key_file), key(&key_file)] }),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "duplicate_file",
        )
        .await;
        // Private files are shareable by their owner, and the link holder downloads them.
        let share = app.share_ok(&alice.token, json!({ "files": [key(&private)] })).await;
        let grant = app.share_grant(&token(&share), 0, None).await;
        assert_eq!(&app.public_get(&grant, None).await.bytes().await.unwrap()[..], b"p");
    }
}

#[tokio::test]
async fn deleting_the_file_empties_the_link() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        app.user("root").await;
        let alice = app.user("alice").await;
        let file = app.upload_ok(&alice.token, "a.txt", b"hello".to_vec()).await;
        let share = app.share_ok(&alice.token, json!({ "files": [key(&file)] })).await;
        let link = token(&share);
        let grant = app.share_grant(&link, 0, None).await;
        assert_eq!(
            app.delete(&alice.token, &key(&file)).await.status(),
            StatusCode::NO_CONTENT
        );

        let public: Value = app.public_get(&format!("/s/{link}"), None).await.json().await.unwrap();
        assert_eq!(public["files"], json!([]), "{backend:?}");
        assert_problem(
            app.public_get(&format!("/s/{link}/files/0"), None).await,
            StatusCode::NOT_FOUND,
            "file_not_found",
        )
        .await;
        assert_problem(
            app.public_get(&grant, None).await,
            StatusCode::NOT_FOUND,
            "file_not_found",
        )
        .await;
        let view = app
            .get_json(&alice.token, &format!("/shares/{}", share["id"].as_str().unwrap()))
            .await;
        assert_eq!(view["files"], json!([]));
        assert_eq!(view["downloads"], 1, "{backend:?}: the failed attempt did not count");
    }
}

/// `HEAD` is not a download: a link previewer or download manager probing the counting URL must not use up a
/// limited link.
#[tokio::test]
async fn head_requests_do_not_consume_downloads() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        app.user("root").await;
        let alice = app.user("alice").await;
        let file = app.upload_ok(&alice.token, "a.txt", b"hello".to_vec()).await;
        let share = app
            .share_ok(&alice.token, json!({ "files": [key(&file)], "max_downloads": 1 }))
            .await;
        let link = token(&share);
        for _ in 0..3 {
            let _ = app
                .client
                .head(app.url(&format!("/s/{link}/files/0")))
                .send()
                .await
                .unwrap();
        }
        let view = app
            .get_json(&alice.token, &format!("/shares/{}", share["id"].as_str().unwrap()))
            .await;
        assert_eq!(view["downloads"], 0, "{backend:?}: HEAD requests counted as downloads");
        let grant = app.share_grant(&link, 0, None).await;
        assert_eq!(&app.public_get(&grant, None).await.bytes().await.unwrap()[..], b"hello");
    }
}

/// `too_many_links` tells the user to revoke some links first; revoking must then make room.
#[tokio::test]
async fn revoked_links_free_room_for_new_ones() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |c| c.sharing.max_links_per_user = 2).await;
        app.user("root").await;
        let alice = app.user("alice").await;
        let file = app.upload_ok(&alice.token, "a.txt", b"hello".to_vec()).await;
        let first = app.share_ok(&alice.token, json!({ "files": [key(&file)] })).await;
        let upload_link = app
            .post_json(&alice.token, "/upload-links", json!({}), StatusCode::CREATED)
            .await;
        assert_problem(
            app.post_as(&alice.token, "/shares", json!({ "files": [key(&file)] }))
                .await,
            StatusCode::CONFLICT,
            "too_many_links",
        )
        .await;
        assert_problem(
            app.post_as(&alice.token, "/upload-links", json!({})).await,
            StatusCode::CONFLICT,
            "too_many_links",
        )
        .await;

        let response = app
            .delete_as(&alice.token, &format!("/shares/{}", first["id"].as_str().unwrap()))
            .await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let response = app
            .delete_as(
                &alice.token,
                &format!("/upload-links/{}", upload_link["id"].as_str().unwrap()),
            )
            .await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let response = app
            .post_as(&alice.token, "/shares", json!({ "files": [key(&file)] }))
            .await;
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "{backend:?}: revoked links still count against max_links_per_user: {:?}",
            response.text().await
        );
        let response = app.post_as(&alice.token, "/upload-links", json!({})).await;
        assert_eq!(response.status(), StatusCode::CREATED, "{backend:?}");
    }
}

/// `sharing.max_links_per_user` holds when a client creates links concurrently.
#[tokio::test]
async fn the_link_cap_holds_under_concurrency() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |c| c.sharing.max_links_per_user = 3).await;
        app.user("root").await;
        let alice = app.user("alice").await;
        let file = app.upload_ok(&alice.token, "a.txt", b"hello".to_vec()).await;
        let tasks: Vec<_> = (0..12)
            .map(|_| {
                let client = app.client.clone();
                let url = app.url("/shares");
                let token = alice.token.clone();
                let body = json!({ "files": [key(&file)] });
                tokio::spawn(async move {
                    client
                        .post(url)
                        .bearer_auth(token)
                        .json(&body)
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
                StatusCode::CONFLICT => {}
                other => panic!("{backend:?}: unexpected {other}"),
            }
        }
        let held = app.get_json(&alice.token, "/shares").await["shares"]
            .as_array()
            .unwrap()
            .len();
        assert_eq!(held, created);
        assert!(
            created <= 3,
            "{backend:?}: {created} links created with max_links_per_user = 3"
        );
    }
}

/// With `downloads.mode = redirect` on S3, a share-link download still counts once at `/s/{token}/files/{n}`;
/// its grant URL hands out a presigned URL, and resuming (`Range`) never counts again.
#[tokio::test]
async fn share_links_in_redirect_mode() {
    if !all_backends().contains(&Backend::Scaled) {
        return;
    }
    let app = TestApp::spawn_on(Backend::Scaled, |c| {
        c.downloads.mode = handoff_server::config::DownloadMode::Redirect;
        c.downloads.presigned_ttl_secs = 60;
    })
    .await;
    app.user("root").await;
    let alice = app.user("alice").await;
    let bytes = random_bytes(200_000, 24);
    let file = app.upload_ok(&alice.token, "direct.bin", bytes.clone()).await;
    let share = app
        .share_ok(&alice.token, json!({ "files": [key(&file)], "max_downloads": 2 }))
        .await;
    let grant = app.share_grant(&token(&share), 0, None).await;
    let plain = reqwest::Client::new();
    for range in [None, Some((0usize, 99usize)), Some((150_000, 199_999))] {
        let mut request = app.client.get(app.url(&grant));
        if let Some((start, end)) = range {
            request = request.header("range", format!("bytes={start}-{end}"));
        }
        let response = request.send().await.unwrap();
        let body = if response.status() == StatusCode::FOUND {
            let location = response.headers()["location"].to_str().unwrap().to_owned();
            assert!(location.contains("X-Amz-Signature="), "{location}");
            let mut fetch = plain.get(&location);
            if let Some((start, end)) = range {
                fetch = fetch.header("range", format!("bytes={start}-{end}"));
            }
            fetch.send().await.unwrap().bytes().await.unwrap()
        } else {
            assert!(response.status().is_success(), "{}", response.status());
            response.bytes().await.unwrap()
        };
        match range {
            None => assert_eq!(sha256_hex(&body), sha256_hex(&bytes)),
            Some((start, end)) => assert_eq!(&body[..], &bytes[start..=end]),
        }
    }
    let view = app
        .get_json(&alice.token, &format!("/shares/{}", share["id"].as_str().unwrap()))
        .await;
    assert_eq!(
        view["downloads"], 1,
        "resuming a redirected download does not count again"
    );
    // Revocation stops the grant URL from minting more presigned URLs.
    app.delete_as(&alice.token, &format!("/shares/{}", share["id"].as_str().unwrap()))
        .await;
    assert_problem(app.public_get(&grant, None).await, StatusCode::GONE, "link_unavailable").await;
}
