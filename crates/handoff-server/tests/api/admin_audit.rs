//! Server administration (the first account, or one named in `auth.admins`): accounts, disabling and enabling,
//! every file; and the audit log as owners, team admins and server admins see it, newest first, in pages.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, all_backends, assert_problem, random_bytes};

fn key(file: &Value) -> String {
    file["key"].as_str().unwrap().to_owned()
}

fn actions(events: &Value) -> Vec<String> {
    events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_first_account_is_admin_and_admin_routes_are_guarded() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        let root = app.user("root").await;
        let alice = app.user("alice").await;
        app.user("bob").await;
        assert_eq!(
            app.get_json(&root.token, "/auth/me").await["is_admin"],
            true,
            "{backend:?}"
        );
        assert_eq!(
            app.get_json(&alice.token, "/auth/me").await["is_admin"],
            false,
            "{backend:?}"
        );

        for response in [
            app.get_as(&alice.token, "/admin/users").await,
            app.get_as(&alice.token, "/admin/files").await,
            app.get_as(&alice.token, "/admin/audit").await,
            app.patch_as(&alice.token, "/admin/users/bob", json!({ "disabled": true }))
                .await,
            app.patch_as(&alice.token, "/admin/users/alice", json!({ "is_admin": true }))
                .await,
            app.patch_as(
                &alice.token,
                "/admin/teams/00000000-0000-0000-0000-000000000000",
                json!({ "quota": { "bytes": 1, "files": 1 } }),
            )
            .await,
        ] {
            assert_problem(response, StatusCode::FORBIDDEN, "admin_only").await;
        }
        assert_eq!(app.get_json(&alice.token, "/auth/me").await["is_admin"], false);
        let response = app.client.get(app.url("/admin/users")).send().await.unwrap();
        assert_problem(response, StatusCode::UNAUTHORIZED, "missing_token").await;

        let users = app.get_json(&root.token, "/admin/users").await;
        let mut names: Vec<&str> = users["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["username"].as_str().unwrap())
            .collect();
        names.sort_unstable();
        assert_eq!(names, vec!["alice", "bob", "root"], "{backend:?}");
        let alice_view = users["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["username"] == "alice")
            .unwrap();
        assert_eq!(alice_view["is_admin"], false);
        assert_eq!(alice_view["disabled"], false);
        assert_eq!(alice_view["usage"]["bytes"], 0);
        assert!(alice_view.get("password_hash").is_none());
        // Pages.
        let first = app.get_json(&root.token, "/admin/users?limit=2").await;
        assert_eq!(first["users"].as_array().unwrap().len(), 2);
        let cursor = first["next_cursor"].as_str().unwrap();
        let second = app
            .get_json(&root.token, &format!("/admin/users?limit=2&cursor={cursor}"))
            .await;
        assert_eq!(second["users"].as_array().unwrap().len(), 1);
        assert!(second["next_cursor"].is_null());

        // Admins cannot lock themselves out.
        for body in [json!({ "disabled": true }), json!({ "is_admin": false })] {
            assert_problem(
                app.patch_as(&root.token, "/admin/users/root", body).await,
                StatusCode::CONFLICT,
                "cannot_change_self",
            )
            .await;
        }
        assert_eq!(app.get_json(&root.token, "/auth/me").await["is_admin"], true);
        assert_problem(
            app.patch_as(&root.token, "/admin/users/nobody", json!({ "disabled": true }))
                .await,
            StatusCode::NOT_FOUND,
            "user_not_found",
        )
        .await;

        // Promotion and demotion.
        let response = app
            .patch_as(&root.token, "/admin/users/alice", json!({ "is_admin": true }))
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{backend:?}");
        assert_eq!(app.get_json(&alice.token, "/auth/me").await["is_admin"], true);
        assert_eq!(app.get_as(&alice.token, "/admin/users").await.status(), StatusCode::OK);
        let response = app
            .patch_as(&alice.token, "/admin/users/alice", json!({ "is_admin": false }))
            .await;
        assert_problem(response, StatusCode::CONFLICT, "cannot_change_self").await;
        let response = app
            .patch_as(&root.token, "/admin/users/alice", json!({ "is_admin": false }))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_problem(
            app.get_as(&alice.token, "/admin/users").await,
            StatusCode::FORBIDDEN,
            "admin_only",
        )
        .await;
    }
}

#[tokio::test]
async fn disabled_accounts_stop_at_once() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        let root = app.user("root").await;
        let alice = app.user("alice").await;
        let bob = app.user("bob").await;
        let file = app.upload_ok(&alice.token, "a.txt", b"hello".to_vec()).await;
        let share = app.share_ok(&alice.token, json!({ "files": [key(&file)] })).await;
        let upload_link = app
            .post_json(&alice.token, "/upload-links", json!({}), StatusCode::CREATED)
            .await;
        assert_eq!(app.me(&alice.token).await.status(), StatusCode::OK);

        let response = app
            .patch_as(&root.token, "/admin/users/alice", json!({ "disabled": true }))
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{backend:?}");
        let view: Value = response.json().await.unwrap();
        assert_eq!(view["disabled"], true);

        // The existing access token is refused on the very next request.
        assert_problem(app.me(&alice.token).await, StatusCode::UNAUTHORIZED, "invalid_token").await;
        assert_problem(
            app.content(&alice.token, &key(&file)).await,
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        )
        .await;
        assert_problem(
            app.upload(&alice.token, "b.txt", b"b".to_vec()).await,
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        )
        .await;
        assert_problem(
            app.signin("alice", &alice.password).await,
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
        )
        .await;
        assert_eq!(
            app.refresh(&alice.refresh_token).await.status(),
            StatusCode::UNAUTHORIZED,
            "{backend:?}"
        );
        // Their links stop too.
        let link = share["token"].as_str().unwrap();
        assert_problem(
            app.public_get(&format!("/s/{link}"), None).await,
            StatusCode::GONE,
            "link_unavailable",
        )
        .await;
        let upload_secret = upload_link["token"].as_str().unwrap();
        assert_problem(
            app.public_get(&format!("/u/{upload_secret}"), None).await,
            StatusCode::GONE,
            "link_unavailable",
        )
        .await;
        // Others are unaffected.
        assert_eq!(app.me(&bob.token).await.status(), StatusCode::OK);
        let users = app.get_json(&root.token, "/admin/users").await;
        let alice_view = users["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["username"] == "alice")
            .unwrap()
            .clone();
        assert_eq!(alice_view["disabled"], true);

        // Enabled again: signing in works, and so do the links.
        let response = app
            .patch_as(&root.token, "/admin/users/alice", json!({ "disabled": false }))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let response = app.signin("alice", &alice.password).await;
        assert_eq!(response.status(), StatusCode::OK, "{backend:?}");
        let tokens: Value = response.json().await.unwrap();
        let fresh = tokens["access_token"].as_str().unwrap();
        assert_eq!(app.content(fresh, &key(&file)).await.status(), StatusCode::OK);
        assert_eq!(
            app.public_get(&format!("/s/{link}"), None).await.status(),
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn admins_moderate_files_without_reading_private_ones() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        let root = app.user("root").await;
        let alice = app.user("alice").await;
        let bob = app.user("bob").await;
        let private: Value = app
            .upload_with(
                &alice.token,
                "diary.txt",
                &[("visibility", "private")],
                b"dear diary".to_vec(),
            )
            .await
            .json()
            .await
            .unwrap();
        let public = app.upload_ok(&alice.token, "public.txt", b"hello".to_vec()).await;
        let bobs = app.upload_ok(&bob.token, "bob.txt", b"bob".to_vec()).await;
        let olga_team = app.team_ok(&bob.token, "Bob's team").await;
        let team_file: Value = app
            .upload_with(
                &bob.token,
                "team.txt",
                &[("team", olga_team.as_str()), ("visibility", "private")],
                b"t".to_vec(),
            )
            .await
            .json()
            .await
            .unwrap();

        let all = app.get_json(&root.token, "/admin/files").await;
        let mut keys: Vec<String> = all["files"].as_array().unwrap().iter().map(key).collect();
        keys.sort();
        let mut expected = vec![key(&private), key(&public), key(&bobs), key(&team_file)];
        expected.sort();
        assert_eq!(keys, expected, "{backend:?}: everyone's files");
        let page = app.get_json(&root.token, "/admin/files?limit=3").await;
        assert_eq!(page["files"].as_array().unwrap().len(), 3);
        assert!(page["next_cursor"].as_str().is_some());

        // Not the bytes of private files (personal or team).
        for file in [&private, &team_file] {
            assert_problem(
                app.content(&root.token, &key(file)).await,
                StatusCode::NOT_FOUND,
                "file_not_found",
            )
            .await;
            assert_problem(
                app.origin_download(&root.token, &key(file)).await,
                StatusCode::NOT_FOUND,
                "file_not_found",
            )
            .await;
        }
        // Nor may they rename or share them.
        assert_eq!(
            app.patch(&root.token, &key(&private), json!({ "name": "x.txt" }))
                .await
                .status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            app.post_as(&root.token, "/shares", json!({ "files": [key(&private)] }))
                .await
                .status(),
            StatusCode::NOT_FOUND
        );
        // But they delete anything.
        let blobs = app.blob_count().await;
        assert_eq!(
            app.delete(&root.token, &key(&private)).await.status(),
            StatusCode::NO_CONTENT,
            "{backend:?}"
        );
        assert_eq!(
            app.delete(&root.token, &key(&team_file)).await.status(),
            StatusCode::NO_CONTENT
        );
        assert_problem(
            app.content(&alice.token, &key(&private)).await,
            StatusCode::NOT_FOUND,
            "file_not_found",
        )
        .await;
        assert_problem(
            app.content(&bob.token, &key(&team_file)).await,
            StatusCode::NOT_FOUND,
            "file_not_found",
        )
        .await;
        assert_eq!(app.blob_count().await, blobs - 2, "{backend:?}");
        assert_eq!(
            app.usage(&alice.token).await["bytes"],
            5,
            "{backend:?}: the owner is refunded"
        );
        // Ordinary users cannot delete others' files.
        assert_problem(
            app.delete(&alice.token, &key(&bobs)).await,
            StatusCode::FORBIDDEN,
            "not_file_owner",
        )
        .await;
    }
}

#[tokio::test]
async fn configured_admins_are_admins() {
    let app = TestApp::spawn_with(|c| c.auth.admins = vec!["Carol".into()]).await;
    app.user("root").await;
    let alice = app.user("alice").await;
    let carol = app.user("carol").await;
    assert_eq!(app.get_json(&alice.token, "/auth/me").await["is_admin"], false);
    assert_eq!(app.get_json(&carol.token, "/auth/me").await["is_admin"], true);
    assert_eq!(app.get_as(&carol.token, "/admin/users").await.status(), StatusCode::OK);
    let response = app
        .patch_as(&carol.token, "/admin/users/alice", json!({ "disabled": true }))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(app.me(&alice.token).await.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn owners_see_the_events_on_their_things() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        app.user("root").await;
        let alice = app.user("alice").await;
        let bob = app.user("bob").await;
        let file = app.upload_ok(&alice.token, "report.pdf", random_bytes(2000, 91)).await;
        assert_eq!(app.content(&alice.token, &key(&file)).await.status(), StatusCode::OK);
        let share = app.share_ok(&alice.token, json!({ "files": [key(&file)] })).await;
        let grant = app.share_grant(share["token"].as_str().unwrap(), 0, None).await;
        assert_eq!(app.public_get(&grant, None).await.status(), StatusCode::OK);

        let mine = app.get_json(&alice.token, "/audit").await;
        let got = actions(&mine);
        assert_eq!(
            got,
            vec![
                "share.download",
                "share.create",
                "file.download",
                "file.upload",
                "auth.signin"
            ],
            "{backend:?}: newest first"
        );
        let events = mine["events"].as_array().unwrap();
        for event in &events[..4] {
            assert_eq!(event["file_key"], key(&file).as_str(), "{backend:?}: {event}");
            assert_eq!(event["detail"]["file_name"], "report.pdf");
        }
        assert_eq!(events[1]["detail"]["actor"], "alice");
        assert!(
            events[0]["detail"].get("actor").is_none(),
            "a link holder has no account"
        );
        assert_eq!(events[1]["detail"]["share_id"], share["id"]);
        let times: Vec<&str> = events.iter().map(|e| e["at"].as_str().unwrap()).collect();
        let mut sorted = times.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(times, sorted);

        // Bob sees none of it.
        let bobs = app.get_json(&bob.token, "/audit").await;
        assert_eq!(actions(&bobs), vec!["auth.signin"], "{backend:?}");
        assert!(!bobs.to_string().contains(&key(&file)));

        // Bob downloading alice's key file is an event on alice's file: alice sees it.
        assert_eq!(app.content(&bob.token, &key(&file)).await.status(), StatusCode::OK);
        let mine = app.get_json(&alice.token, "/audit").await;
        assert_eq!(mine["events"][0]["action"], "file.download");
        assert_eq!(mine["events"][0]["detail"]["actor"], "bob");

        // Revocations, renames and deletes are recorded too.
        app.delete_as(&alice.token, &format!("/shares/{}", share["id"].as_str().unwrap()))
            .await;
        app.patch(&alice.token, &key(&file), json!({ "name": "final.pdf" }))
            .await;
        app.delete(&alice.token, &key(&file)).await;
        let mine = app.get_json(&alice.token, "/audit?limit=3").await;
        assert_eq!(
            actions(&mine),
            vec!["file.delete", "file.update", "share.revoke"],
            "{backend:?}"
        );
        assert_problem(
            app.get_as(&alice.token, "/audit?limit=0").await,
            StatusCode::BAD_REQUEST,
            "invalid_limit",
        )
        .await;
        assert_problem(
            app.get_as(&alice.token, "/audit?before=not-an-id").await,
            StatusCode::BAD_REQUEST,
            "invalid_cursor",
        )
        .await;
    }
}

#[tokio::test]
async fn team_admins_and_server_admins_read_their_logs_in_pages() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        let root = app.user("root").await;
        let olga = app.user("olga").await;
        let adam = app.user("adam").await;
        let mia = app.user("mia").await;
        let vic = app.user("vic").await;
        let nora = app.user("nora").await;
        let team = app.team_ok(&olga.token, "Design").await;
        app.add_member_ok(&olga.token, &team, "adam", "admin").await;
        app.add_member_ok(&olga.token, &team, "mia", "member").await;
        app.add_member_ok(&adam.token, &team, "vic", "viewer").await;
        let response = app
            .upload_with(&mia.token, "plan.txt", &[("team", team.as_str())], b"plan".to_vec())
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let team_file: Value = response.json().await.unwrap();
        let personal = app.upload_ok(&nora.token, "nora.txt", b"nora".to_vec()).await;

        let path = format!("/teams/{team}/audit");
        for user in [&olga, &adam] {
            let log = app.get_json(&user.token, &path).await;
            assert_eq!(
                actions(&log),
                vec![
                    "file.upload",
                    "team.member_add",
                    "team.member_add",
                    "team.member_add",
                    "team.create"
                ],
                "{backend:?}"
            );
            assert_eq!(log["events"][0]["file_key"], key(&team_file).as_str());
            assert_eq!(log["events"][0]["team_id"], team.as_str());
            assert_eq!(log["events"][1]["detail"]["username"], "vic");
            assert_eq!(log["events"][1]["detail"]["actor"], "adam");
            assert!(!log.to_string().contains(&key(&personal)));
        }
        for user in [&mia, &vic] {
            assert_problem(
                app.get_as(&user.token, &path).await,
                StatusCode::FORBIDDEN,
                "team_role_insufficient",
            )
            .await;
        }
        assert_problem(
            app.get_as(&nora.token, &path).await,
            StatusCode::NOT_FOUND,
            "team_not_found",
        )
        .await;

        // The server admin sees everything; pages with `before` walk it without gaps or repeats.
        let everything = app.get_json(&root.token, "/admin/audit?limit=1000").await;
        let all: Vec<String> = everything["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
        let text = everything.to_string();
        assert!(
            text.contains(&key(&personal)) && text.contains(&key(&team_file)),
            "{backend:?}"
        );
        assert_eq!(
            actions(&everything).iter().filter(|a| *a == "auth.signin").count(),
            6,
            "{backend:?}"
        );
        assert!(everything["next_before"].is_null());
        let mut walked = Vec::new();
        let mut before: Option<String> = None;
        loop {
            let path = match &before {
                Some(b) => format!("/admin/audit?limit=3&before={b}"),
                None => "/admin/audit?limit=3".to_owned(),
            };
            let page = app.get_json(&root.token, &path).await;
            let events = page["events"].as_array().unwrap();
            assert!(events.len() <= 3);
            walked.extend(events.iter().map(|e| e["id"].as_str().unwrap().to_owned()));
            match page["next_before"].as_str() {
                Some(next) => before = Some(next.to_owned()),
                None => break,
            }
        }
        assert_eq!(walked, all, "{backend:?}: the pages are the whole log, in order");
        assert_problem(
            app.get_as(&olga.token, "/admin/audit").await,
            StatusCode::FORBIDDEN,
            "admin_only",
        )
        .await;
    }
}

/// "The first account is admin": when several people sign up at once on a fresh server, exactly one of them is.
#[tokio::test]
async fn concurrent_first_signups_make_exactly_one_admin() {
    for backend in all_backends() {
        for round in 0..2 {
            let app = TestApp::spawn_on(backend, |c| c.auth.password_hash_concurrency = 8).await;
            let tasks: Vec<_> = (0..8)
                .map(|i| {
                    let client = app.client.clone();
                    let url = app.url("/auth/signup");
                    tokio::spawn(async move {
                        let response = client
                            .post(url)
                            .json(&json!({ "username": format!("user{i}"), "password": "password-123" }))
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(response.status(), StatusCode::CREATED);
                        response.json::<Value>().await.unwrap()["is_admin"] == true
                    })
                })
                .collect();
            let mut admins = 0;
            for task in tasks {
                if task.await.unwrap() {
                    admins += 1;
                }
            }
            assert_eq!(
                admins, 1,
                "{backend:?} round {round}: {admins} accounts became the first admin"
            );
        }
    }
}

/// An account named in `auth.admins` is an admin even when it existed before the configuration named it.
#[tokio::test]
async fn configured_admins_apply_to_existing_accounts() {
    let app = TestApp::spawn().await;
    app.user("root").await;
    let carol = app.user("carol").await;
    assert_eq!(app.get_json(&carol.token, "/auth/me").await["is_admin"], false);
    let mut app = app;
    app.config.auth.admins = vec!["carol".into()];
    let app = app.restart().await;
    let response = app.signin("carol", &carol.password).await;
    assert_eq!(response.status(), StatusCode::OK);
    let tokens: Value = response.json().await.unwrap();
    let token = tokens["access_token"].as_str().unwrap();
    assert_eq!(
        app.get_json(token, "/auth/me").await["is_admin"],
        true,
        "carol is named in auth.admins but is not an admin"
    );
}

/// Server admins delete any file; being a viewer or member of the file's team must not take that away.
#[tokio::test]
async fn server_admins_in_a_team_still_moderate_its_files() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        let root = app.user("root").await;
        let olga = app.user("olga").await;
        let team = app.team_ok(&olga.token, "Design").await;
        let file: Value = app
            .upload_with(&olga.token, "a.txt", &[("team", team.as_str())], b"a".to_vec())
            .await
            .json()
            .await
            .unwrap();
        let other_team = app.team_ok(&olga.token, "Other").await;
        let other: Value = app
            .upload_with(&olga.token, "b.txt", &[("team", other_team.as_str())], b"b".to_vec())
            .await
            .json()
            .await
            .unwrap();
        app.add_member_ok(&olga.token, &team, "root", "viewer").await;
        app.add_member_ok(&olga.token, &other_team, "root", "member").await;
        for file in [&file, &other] {
            assert_eq!(
                app.delete(&root.token, &key(file)).await.status(),
                StatusCode::NO_CONTENT,
                "{backend:?}: a server admin who is a viewer/member of the team cannot delete its file"
            );
        }
    }
}

/// `GET /audit` is "events on your files, your links and your account": a member who shares a teammate's file
/// sees the link's creation and its downloads.
#[tokio::test]
async fn sharers_see_the_events_on_their_links() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        app.user("root").await;
        let olga = app.user("olga").await;
        let mia = app.user("mia").await;
        let team = app.team_ok(&olga.token, "Design").await;
        app.add_member_ok(&olga.token, &team, "mia", "member").await;
        let file: Value = app
            .upload_with(&olga.token, "deck.pdf", &[("team", team.as_str())], b"deck".to_vec())
            .await
            .json()
            .await
            .unwrap();
        let share = app.share_ok(&mia.token, json!({ "files": [key(&file)] })).await;
        let grant = app.share_grant(share["token"].as_str().unwrap(), 0, None).await;
        assert_eq!(app.public_get(&grant, None).await.status(), StatusCode::OK);

        let mine = actions(&app.get_json(&mia.token, "/audit").await);
        assert!(
            mine.iter().any(|a| a == "share.create") && mine.iter().any(|a| a == "share.download"),
            "{backend:?}: mia's own link's events are missing from her /audit: {mine:?}"
        );
    }
}

/// A member who leaves a team keeps nothing of its files: not the stream of events about the files they uploaded
/// (who downloads them, what they are renamed to), and not the listing of what arrived through their team upload
/// link (keys, current names).
#[tokio::test]
async fn former_members_keep_nothing_of_team_files() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        app.user("root").await;
        let olga = app.user("olga").await;
        let mia = app.user("mia").await;
        let team = app.team_ok(&olga.token, "Design").await;
        app.add_member_ok(&olga.token, &team, "mia", "member").await;
        let file: Value = app
            .upload_with(
                &mia.token,
                "draft.txt",
                &[("team", team.as_str()), ("visibility", "private")],
                b"d".to_vec(),
            )
            .await
            .json()
            .await
            .unwrap();
        let link = app
            .post_json(
                &mia.token,
                "/upload-links",
                json!({ "team": team }),
                StatusCode::CREATED,
            )
            .await;
        let response = app
            .client
            .post(app.url(&format!("/u/{}", link["token"].as_str().unwrap())))
            .query(&[("fileName", "received.txt")])
            .body("r")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let received = app.get_json(&olga.token, &format!("/teams/{team}/files")).await["files"][0].clone();
        assert_eq!(received["name"], "received.txt");

        assert_eq!(
            app.delete_as(&mia.token, &format!("/teams/{team}/members/mia"))
                .await
                .status(),
            StatusCode::NO_CONTENT
        );
        for file in [&file, &received] {
            assert_problem(
                app.metadata(&mia.token, &key(file)).await,
                StatusCode::NOT_FOUND,
                "file_not_found",
            )
            .await;
            let response = app
                .patch(&olga.token, &key(file), json!({ "name": "acquisition-target.txt" }))
                .await;
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(app.content(&olga.token, &key(file)).await.status(), StatusCode::OK);
        }

        let mut leaks = Vec::new();
        let log = app.get_json(&mia.token, "/audit").await;
        if log.to_string().contains("acquisition-target") {
            leaks.push(format!(
                "GET /audit shows the team's later activity: {:?}",
                actions(&log)
            ));
        }
        let response = app
            .get_as(&mia.token, &format!("/upload-links/{}", link["id"].as_str().unwrap()))
            .await;
        let text = response.text().await.unwrap();
        if text.contains("acquisition-target") || text.contains(&key(&received)) {
            leaks.push(format!(
                "GET /upload-links/{{id}} lists the team file (key and current name): {text}"
            ));
        }
        assert!(
            leaks.is_empty(),
            "{backend:?}: a former member still reads team files' metadata: {leaks:#?}"
        );
    }
}
