//! Teams through HTTP: creation, members and roles, what each role may do to team files, leaving, the last
//! owner, transfer, and deleting a team with its files. Non-members see nothing (`404 team_not_found`).

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestUser, all_backends, assert_problem, random_bytes, sha256_hex};

fn key(file: &Value) -> String {
    file["key"].as_str().unwrap().to_owned()
}

/// Role of `username` in the members list of a team view.
fn role_of(team: &Value, username: &str) -> Option<String> {
    team["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["username"] == username)
        .map(|m| m["role"].as_str().unwrap().to_owned())
}

struct Team {
    id: String,
    owner: TestUser,
    admin: TestUser,
    member: TestUser,
    member2: TestUser,
    viewer: TestUser,
    outsider: TestUser,
}

/// `root` (server admin, not in the team), then a team with one user per role and an outsider.
async fn team(app: &TestApp) -> Team {
    app.user("root").await;
    let owner = app.user("olga").await;
    let admin = app.user("adam").await;
    let member = app.user("mia").await;
    let member2 = app.user("moe").await;
    let viewer = app.user("vic").await;
    let outsider = app.user("nora").await;
    let id = app.team_ok(&owner.token, "Design").await;
    app.add_member_ok(&owner.token, &id, "adam", "admin").await;
    app.add_member_ok(&owner.token, &id, "mia", "member").await;
    app.add_member_ok(&owner.token, &id, "moe", "member").await;
    app.add_member_ok(&owner.token, &id, "vic", "viewer").await;
    Team {
        id,
        owner,
        admin,
        member,
        member2,
        viewer,
        outsider,
    }
}

async fn team_upload(app: &TestApp, user: &TestUser, team: &str, name: &str, bytes: Vec<u8>) -> Value {
    let response = app
        .upload_with(&user.token, name, &[("team", team), ("visibility", "private")], bytes)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED, "{:?}", response.text().await);
    response.json().await.unwrap()
}

#[tokio::test]
async fn teams_members_and_roles() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        app.user("root").await;
        let olga = app.user("olga").await;
        let adam = app.user("adam").await;
        let mia = app.user("mia").await;
        let vic = app.user("vic").await;
        let nora = app.user("nora").await;
        app.user("ada").await;

        let created = app
            .post_json(&olga.token, "/teams", json!({ "name": "Design" }), StatusCode::CREATED)
            .await;
        assert_eq!(created["name"], "Design");
        assert_eq!(created["role"], "owner");
        assert_eq!(role_of(&created, "olga").as_deref(), Some("owner"));
        assert_eq!(created["members"].as_array().unwrap().len(), 1);
        let id = created["id"].as_str().unwrap().to_owned();
        let path = format!("/teams/{id}");

        // Adding members by username, with roles (default: member).
        app.add_member_ok(&olga.token, &id, "adam", "admin").await;
        let response = app
            .post_as(&olga.token, &format!("{path}/members"), json!({ "username": "mia" }))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let view: Value = response.json().await.unwrap();
        assert_eq!(
            role_of(&view, "mia").as_deref(),
            Some("member"),
            "{backend:?}: default role"
        );
        app.add_member_ok(&olga.token, &id, "VIC", "viewer").await;
        assert_problem(
            app.post_as(&olga.token, &format!("{path}/members"), json!({ "username": "mia" }))
                .await,
            StatusCode::CONFLICT,
            "already_member",
        )
        .await;
        assert_problem(
            app.post_as(&olga.token, &format!("{path}/members"), json!({ "username": "nobody" }))
                .await,
            StatusCode::NOT_FOUND,
            "user_not_found",
        )
        .await;
        assert_problem(
            app.post_as(
                &olga.token,
                &format!("{path}/members"),
                json!({ "username": "nora", "role": "superuser" }),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "invalid_role",
        )
        .await;

        // Everyone sees the team with their own role.
        for (user, role) in [(&olga, "owner"), (&adam, "admin"), (&mia, "member"), (&vic, "viewer")] {
            let teams = app.get_json(&user.token, "/teams").await;
            assert_eq!(teams["teams"].as_array().unwrap().len(), 1, "{backend:?}");
            assert_eq!(teams["teams"][0]["id"], id.as_str());
            assert_eq!(teams["teams"][0]["role"], role, "{backend:?}");
            let view = app.get_json(&user.token, &path).await;
            assert_eq!(view["role"], role);
            assert_eq!(view["members"].as_array().unwrap().len(), 4);
            assert_eq!(role_of(&view, "vic").as_deref(), Some("viewer"));
            assert_eq!(role_of(&view, "adam").as_deref(), Some("admin"));
        }

        // A non-member: the team does not exist, whatever the request.
        assert_eq!(app.get_json(&nora.token, "/teams").await["teams"], json!([]));
        for response in [
            app.get_as(&nora.token, &path).await,
            app.get_as(&nora.token, &format!("{path}/files")).await,
            app.get_as(&nora.token, &format!("{path}/audit")).await,
            app.patch_as(&nora.token, &path, json!({ "name": "Mine" })).await,
            app.delete_as(&nora.token, &path).await,
            app.post_as(&nora.token, &format!("{path}/members"), json!({ "username": "nora" }))
                .await,
            app.patch_as(&nora.token, &format!("{path}/members/mia"), json!({ "role": "viewer" }))
                .await,
            app.delete_as(&nora.token, &format!("{path}/members/mia")).await,
            app.post_as(&nora.token, &format!("{path}/transfer"), json!({ "username": "nora" }))
                .await,
            app.upload_with(&nora.token, "x.txt", &[("team", id.as_str())], b"x".to_vec())
                .await,
            app.get_as(&nora.token, "/teams/not-a-uuid").await,
        ] {
            assert_problem(response, StatusCode::NOT_FOUND, "team_not_found").await;
        }

        // Members and viewers manage no one; admins manage members and viewers only.
        for user in [&mia, &vic] {
            assert_problem(
                app.post_as(
                    &user.token,
                    &format!("{path}/members"),
                    json!({ "username": "nora", "role": "viewer" }),
                )
                .await,
                StatusCode::FORBIDDEN,
                "team_role_insufficient",
            )
            .await;
            assert_problem(
                app.patch_as(&user.token, &path, json!({ "name": "Renamed" })).await,
                StatusCode::FORBIDDEN,
                "team_role_insufficient",
            )
            .await;
        }
        for role in ["owner", "admin"] {
            assert_problem(
                app.post_as(
                    &adam.token,
                    &format!("{path}/members"),
                    json!({ "username": "nora", "role": role }),
                )
                .await,
                StatusCode::FORBIDDEN,
                "team_role_insufficient",
            )
            .await;
        }
        app.add_member_ok(&olga.token, &id, "ada", "admin").await;
        assert_problem(
            app.patch_as(&adam.token, &format!("{path}/members/ada"), json!({ "role": "member" }))
                .await,
            StatusCode::FORBIDDEN,
            "team_role_insufficient",
        )
        .await;
        assert_problem(
            app.patch_as(
                &adam.token,
                &format!("{path}/members/olga"),
                json!({ "role": "viewer" }),
            )
            .await,
            StatusCode::FORBIDDEN,
            "team_role_insufficient",
        )
        .await;
        assert_problem(
            app.patch_as(&adam.token, &format!("{path}/members/mia"), json!({ "role": "admin" }))
                .await,
            StatusCode::FORBIDDEN,
            "team_role_insufficient",
        )
        .await;
        assert_problem(
            app.delete_as(&adam.token, &format!("{path}/members/ada")).await,
            StatusCode::FORBIDDEN,
            "team_role_insufficient",
        )
        .await;
        assert_problem(
            app.delete_as(&adam.token, &format!("{path}/members/olga")).await,
            StatusCode::FORBIDDEN,
            "team_role_insufficient",
        )
        .await;
        let response = app
            .patch_as(&adam.token, &format!("{path}/members/vic"), json!({ "role": "member" }))
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{backend:?}");
        let view: Value = response.json().await.unwrap();
        assert_eq!(role_of(&view, "vic").as_deref(), Some("member"));
        let response = app
            .patch_as(&adam.token, &format!("{path}/members/vic"), json!({ "role": "viewer" }))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let response = app.patch_as(&adam.token, &path, json!({ "name": "Design 2" })).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(app.get_json(&vic.token, &path).await["name"], "Design 2");
        assert_problem(
            app.patch_as(
                &olga.token,
                &format!("{path}/members/nora"),
                json!({ "role": "member" }),
            )
            .await,
            StatusCode::NOT_FOUND,
            "member_not_found",
        )
        .await;

        // The last owner can neither leave nor be demoted.
        assert_problem(
            app.delete_as(&olga.token, &format!("{path}/members/olga")).await,
            StatusCode::CONFLICT,
            "last_owner",
        )
        .await;
        assert_problem(
            app.patch_as(&olga.token, &format!("{path}/members/olga"), json!({ "role": "admin" }))
                .await,
            StatusCode::CONFLICT,
            "last_owner",
        )
        .await;
        assert_eq!(
            role_of(&app.get_json(&olga.token, &path).await, "olga").as_deref(),
            Some("owner")
        );

        // Transfer: adam becomes owner, olga admin.
        assert_problem(
            app.post_as(&adam.token, &format!("{path}/transfer"), json!({ "username": "adam" }))
                .await,
            StatusCode::FORBIDDEN,
            "team_role_insufficient",
        )
        .await;
        assert_problem(
            app.post_as(&olga.token, &format!("{path}/transfer"), json!({ "username": "nora" }))
                .await,
            StatusCode::NOT_FOUND,
            "member_not_found",
        )
        .await;
        let response = app
            .post_as(&olga.token, &format!("{path}/transfer"), json!({ "username": "adam" }))
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{backend:?}");
        let view: Value = response.json().await.unwrap();
        assert_eq!(view["role"], "admin");
        assert_eq!(role_of(&view, "adam").as_deref(), Some("owner"));
        assert_eq!(role_of(&view, "olga").as_deref(), Some("admin"));
        assert_eq!(app.get_json(&olga.token, "/teams").await["teams"][0]["role"], "admin");
        // olga, now an admin, may not delete the team; adam, the only owner, may not leave.
        assert_problem(
            app.delete_as(&olga.token, &path).await,
            StatusCode::FORBIDDEN,
            "team_role_insufficient",
        )
        .await;
        assert_problem(
            app.delete_as(&adam.token, &format!("{path}/members/adam")).await,
            StatusCode::CONFLICT,
            "last_owner",
        )
        .await;

        // Leaving: mia removes herself and loses the team.
        assert_eq!(
            app.delete_as(&mia.token, &format!("{path}/members/mia")).await.status(),
            StatusCode::NO_CONTENT
        );
        assert_problem(
            app.get_as(&mia.token, &path).await,
            StatusCode::NOT_FOUND,
            "team_not_found",
        )
        .await;
        assert_eq!(app.get_json(&mia.token, "/teams").await["teams"], json!([]));
        // An admin removes a viewer.
        assert_eq!(
            app.delete_as(&olga.token, &format!("{path}/members/vic"))
                .await
                .status(),
            StatusCode::NO_CONTENT
        );
        assert_problem(
            app.get_as(&vic.token, &path).await,
            StatusCode::NOT_FOUND,
            "team_not_found",
        )
        .await;
        let view = app.get_json(&adam.token, &path).await;
        assert_eq!(
            view["members"].as_array().unwrap().len(),
            3,
            "{backend:?}: adam, olga, ada"
        );

        // Team names are validated.
        assert_problem(
            app.post_as(&olga.token, "/teams", json!({ "name": "" })).await,
            StatusCode::BAD_REQUEST,
            "invalid_team_name",
        )
        .await;
        assert_problem(
            app.post_as(&olga.token, "/teams", json!({ "name": "x".repeat(101) }))
                .await,
            StatusCode::BAD_REQUEST,
            "invalid_team_name",
        )
        .await;
    }
}

#[tokio::test]
async fn team_files_follow_roles() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        let t = team(&app).await;
        let id = t.id.as_str();
        let plan_bytes = random_bytes(5000, 31);
        let plan = team_upload(&app, &t.member, id, "plan.txt", plan_bytes.clone()).await;
        assert_eq!(plan["team_id"], id, "{backend:?}");
        let other = team_upload(&app, &t.member2, id, "mo.txt", b"mo's".to_vec()).await;
        let by_owner = team_upload(&app, &t.owner, id, "owner.txt", b"owner's".to_vec()).await;
        assert_problem(
            app.upload_with(&t.viewer.token, "v.txt", &[("team", id)], b"v".to_vec())
                .await,
            StatusCode::FORBIDDEN,
            "team_role_insufficient",
        )
        .await;

        // Every role lists the team's files; they are not in the uploader's personal list.
        for user in [&t.owner, &t.admin, &t.member, &t.viewer] {
            let files = app.get_json(&user.token, &format!("/teams/{id}/files")).await;
            let names: Vec<&str> = files["files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["name"].as_str().unwrap())
                .collect();
            assert_eq!(
                names,
                vec!["owner.txt", "mo.txt", "plan.txt"],
                "{backend:?}: newest first"
            );
        }
        assert_eq!(
            app.get_json(&t.member.token, "/files").await["files"],
            json!([]),
            "{backend:?}"
        );
        assert_eq!(
            app.usage(&t.member.token).await["bytes"],
            0,
            "{backend:?}: the team pays"
        );
        let team_view = app.get_json(&t.owner.token, &format!("/teams/{id}")).await;
        assert_eq!(team_view["usage"]["files"], 3, "{backend:?}");
        assert_eq!(team_view["usage"]["bytes"], 5000 + 4 + 7);

        // Everyone in the team downloads; the outsider sees nothing of a private team file.
        for user in [&t.owner, &t.admin, &t.member, &t.member2, &t.viewer] {
            let response = app.content(&user.token, &key(&plan)).await;
            assert_eq!(response.status(), StatusCode::OK, "{backend:?}");
            assert_eq!(sha256_hex(&response.bytes().await.unwrap()), sha256_hex(&plan_bytes));
            assert_eq!(app.metadata(&user.token, &key(&plan)).await.status(), StatusCode::OK);
        }
        for response in [
            app.content(&t.outsider.token, &key(&plan)).await,
            app.metadata(&t.outsider.token, &key(&plan)).await,
            app.patch(&t.outsider.token, &key(&plan), json!({ "name": "x" })).await,
            app.delete(&t.outsider.token, &key(&plan)).await,
        ] {
            assert_problem(response, StatusCode::NOT_FOUND, "file_not_found").await;
        }

        // Viewers change nothing.
        assert_problem(
            app.patch(&t.viewer.token, &key(&plan), json!({ "name": "viewer.txt" }))
                .await,
            StatusCode::FORBIDDEN,
            "not_file_owner",
        )
        .await;
        assert_problem(
            app.delete(&t.viewer.token, &key(&plan)).await,
            StatusCode::FORBIDDEN,
            "not_file_owner",
        )
        .await;
        assert_problem(
            app.post_as(&t.viewer.token, "/shares", json!({ "files": [key(&plan)] }))
                .await,
            StatusCode::FORBIDDEN,
            "not_file_owner",
        )
        .await;
        // Members change their own uploads only.
        let response = app
            .patch(&t.member.token, &key(&plan), json!({ "name": "plan v2.txt" }))
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{backend:?}");
        assert_problem(
            app.patch(&t.member.token, &key(&other), json!({ "name": "mine now.txt" }))
                .await,
            StatusCode::FORBIDDEN,
            "not_file_owner",
        )
        .await;
        assert_problem(
            app.delete(&t.member.token, &key(&other)).await,
            StatusCode::FORBIDDEN,
            "not_file_owner",
        )
        .await;
        assert_problem(
            app.delete(&t.member.token, &key(&by_owner)).await,
            StatusCode::FORBIDDEN,
            "not_file_owner",
        )
        .await;
        // ...but may share any team file.
        let share = app.share_ok(&t.member.token, json!({ "files": [key(&other)] })).await;
        // Admins and owners change everything.
        let response = app
            .patch(&t.admin.token, &key(&other), json!({ "name": "renamed by admin.txt" }))
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{backend:?}");
        let response = app
            .patch(&t.owner.token, &key(&plan), json!({ "name": "renamed by owner.txt" }))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            app.delete(&t.admin.token, &key(&by_owner)).await.status(),
            StatusCode::NO_CONTENT
        );
        assert_problem(
            app.content(&t.owner.token, &key(&by_owner)).await,
            StatusCode::NOT_FOUND,
            "file_not_found",
        )
        .await;
        // A member deletes their own upload.
        let scratch = team_upload(&app, &t.member, id, "scratch.txt", b"s".to_vec()).await;
        assert_eq!(
            app.delete(&t.member.token, &key(&scratch)).await.status(),
            StatusCode::NO_CONTENT
        );
        let team_view = app.get_json(&t.owner.token, &format!("/teams/{id}")).await;
        assert_eq!(team_view["usage"]["files"], 2, "{backend:?}: deletes refund the team");
        assert_eq!(team_view["usage"]["bytes"], 5000 + 4);

        // A member who leaves loses access to everything, including what they uploaded and shared.
        assert_eq!(
            app.delete_as(&t.member.token, &format!("/teams/{id}/members/mia"))
                .await
                .status(),
            StatusCode::NO_CONTENT
        );
        assert_problem(
            app.content(&t.member.token, &key(&plan)).await,
            StatusCode::NOT_FOUND,
            "file_not_found",
        )
        .await;
        assert_problem(
            app.patch(&t.member.token, &key(&plan), json!({ "name": "gone.txt" }))
                .await,
            StatusCode::NOT_FOUND,
            "file_not_found",
        )
        .await;
        assert_problem(
            app.get_as(&t.member.token, &format!("/teams/{id}/files")).await,
            StatusCode::NOT_FOUND,
            "team_not_found",
        )
        .await;
        let link = share["token"].as_str().unwrap();
        let public: Value = app.public_get(&format!("/s/{link}"), None).await.json().await.unwrap();
        assert_eq!(
            public["files"],
            json!([]),
            "{backend:?}: a former member's link shares nothing"
        );
        assert_problem(
            app.public_get(&format!("/s/{link}/files/0"), None).await,
            StatusCode::NOT_FOUND,
            "file_not_found",
        )
        .await;
    }
}

#[tokio::test]
async fn deleting_a_team_deletes_its_files() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        let t = team(&app).await;
        let id = t.id.as_str();
        let personal = app.upload_ok(&t.member.token, "mine.txt", b"personal".to_vec()).await;
        let a = team_upload(&app, &t.member, id, "a.txt", b"a".to_vec()).await;
        let b = team_upload(&app, &t.admin, id, "b.txt", random_bytes(2000, 32)).await;
        let share = app.share_ok(&t.owner.token, json!({ "files": [key(&a)] })).await;
        // A team file anyone holding its key may download: an outsider fetches it just before the team goes.
        let keyed = app
            .upload_with(
                &t.member.token,
                "c.txt",
                &[("team", id), ("visibility", "key")],
                b"c".to_vec(),
            )
            .await;
        assert_eq!(keyed.status(), StatusCode::CREATED);
        let keyed: Value = keyed.json().await.unwrap();
        let outsider = app.user("outsider").await;
        assert_eq!(
            app.content(&outsider.token, &key(&keyed)).await.status(),
            StatusCode::OK
        );
        let blobs = app.blob_count().await;

        for user in [&t.admin, &t.member, &t.viewer] {
            assert_problem(
                app.delete_as(&user.token, &format!("/teams/{id}")).await,
                StatusCode::FORBIDDEN,
                "team_role_insufficient",
            )
            .await;
        }
        assert_eq!(app.content(&t.member.token, &key(&a)).await.status(), StatusCode::OK);

        assert_eq!(
            app.delete_as(&t.owner.token, &format!("/teams/{id}")).await.status(),
            StatusCode::NO_CONTENT,
            "{backend:?}"
        );
        assert_problem(
            app.content(&outsider.token, &key(&keyed)).await,
            StatusCode::NOT_FOUND,
            "file_not_found",
        )
        .await;
        for user in [&t.owner, &t.admin, &t.member, &t.viewer] {
            for file in [&a, &b, &keyed] {
                assert_problem(
                    app.content(&user.token, &key(file)).await,
                    StatusCode::NOT_FOUND,
                    "file_not_found",
                )
                .await;
            }
            assert_problem(
                app.get_as(&user.token, &format!("/teams/{id}")).await,
                StatusCode::NOT_FOUND,
                "team_not_found",
            )
            .await;
            assert_eq!(app.get_json(&user.token, "/teams").await["teams"], json!([]));
        }
        assert_eq!(
            app.blob_count().await,
            blobs - 3,
            "{backend:?}: the team's bytes are gone"
        );
        let link = share["token"].as_str().unwrap();
        assert_eq!(
            app.public_get(&format!("/s/{link}/files/0"), None).await.status(),
            StatusCode::NOT_FOUND,
            "{backend:?}: links to the team's files share nothing"
        );
        // Personal files of members are untouched.
        assert_eq!(
            app.content(&t.member.token, &key(&personal)).await.status(),
            StatusCode::OK
        );
        // Uploading into the deleted team fails.
        assert_problem(
            app.upload_with(&t.owner.token, "late.txt", &[("team", id)], b"x".to_vec())
                .await,
            StatusCode::NOT_FOUND,
            "team_not_found",
        )
        .await;
    }
}
