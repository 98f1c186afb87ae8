//! tus through upload links, over real HTTP on every backend: `/u/{token}/uploads` speaks the same protocol as
//! `/uploads` without an account; a session belongs to the link it was created through (another link, or a
//! signed-in user, gets 404); the link's password, expiry, revocation and limits apply to every request; the room
//! a link (or a quota) offers excludes what its open tus uploads reserve, for `POST /u/{token}` too; the file
//! arrives private in the link owner's space (or team) through the link's counters; the sender never sees its key.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, all_backends, assert_problem, random_bytes, sha256_hex};

const TUS: (&str, &str) = ("tus-resumable", "1.0.0");
const CHUNK_TYPE: (&str, &str) = ("content-type", "application/offset+octet-stream");
const PASSWORD: &str = "through the letterbox 9";

fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

fn metadata(name: &str) -> String {
    format!(
        "filename {},filetype {},visibility {}",
        STANDARD.encode(name),
        STANDARD.encode("application/x-test"),
        // A sender cannot make a link's file public by key.
        STANDARD.encode("key")
    )
}

/// A request to a link's tus endpoint, with the link's password when given.
fn link_request(app: &TestApp, method: Method, path: &str, password: Option<&str>) -> reqwest::RequestBuilder {
    let mut request = app.client.request(method, app.url(path)).header(TUS.0, TUS.1);
    if let Some(password) = password {
        request = request.header("x-link-password", password);
    }
    request
}

async fn create(app: &TestApp, link: &str, length: Option<u64>, password: Option<&str>) -> Response {
    let mut request = link_request(app, Method::POST, &format!("/u/{link}/uploads"), password)
        .header("upload-metadata", metadata("letter.bin"));
    request = match length {
        Some(n) => request.header("upload-length", n.to_string()),
        None => request.header("upload-defer-length", "1"),
    };
    request.send().await.unwrap()
}

async fn create_ok(app: &TestApp, link: &str, length: Option<u64>, password: Option<&str>) -> String {
    let response = create(app, link, length, password).await;
    assert_eq!(response.status(), StatusCode::CREATED, "{:?}", response.text().await);
    let location = header(&response, "location").unwrap().to_owned();
    assert!(location.starts_with(&format!("/u/{link}/uploads/")), "{location}");
    assert!(header(&response, "handoff-file-key").is_none());
    location
}

async fn patch(app: &TestApp, path: &str, offset: u64, body: Vec<u8>, password: Option<&str>) -> Response {
    link_request(app, Method::PATCH, path, password)
        .header(CHUNK_TYPE.0, CHUNK_TYPE.1)
        .header("upload-offset", offset.to_string())
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn link(app: &TestApp, token: &str, body: Value) -> (String, String) {
    let link = app.post_json(token, "/upload-links", body, StatusCode::CREATED).await;
    (
        link["token"].as_str().unwrap().to_owned(),
        link["id"].as_str().unwrap().to_owned(),
    )
}

/// The id at the end of an upload URL.
fn upload_id(path: &str) -> &str {
    path.rsplit('/').next().unwrap()
}

#[tokio::test]
async fn tus_through_an_upload_link_on_every_backend() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        let alice = app.user("alice").await;
        let bob = app.user("bob").await;
        let (secret, id) = link(
            &app,
            &alice.token,
            json!({ "max_files": 3, "max_bytes": 1_000_000, "password": PASSWORD }),
        )
        .await;
        let (other_secret, _) = link(&app, &alice.token, json!({})).await;

        // Capabilities need nothing; everything else needs the link's password.
        let response = app
            .client
            .request(Method::OPTIONS, app.url(&format!("/u/{secret}/uploads")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT, "{backend:?}");
        assert_eq!(header(&response, "tus-version"), Some("1.0.0"));
        assert!(
            header(&response, "tus-extension")
                .unwrap()
                .contains("creation-with-upload")
        );
        assert_problem(
            create(&app, &secret, Some(10), None).await,
            StatusCode::UNAUTHORIZED,
            "password_required",
        )
        .await;
        assert_problem(
            create(&app, &secret, Some(10), Some("wrong")).await,
            StatusCode::UNAUTHORIZED,
            "password_invalid",
        )
        .await;
        let unknown = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert_problem(
            create(&app, unknown, Some(10), None).await,
            StatusCode::NOT_FOUND,
            "link_not_found",
        )
        .await;

        // A chunked upload, the way a tus client sends it.
        let bytes = random_bytes(300_000, 5);
        let path = create_ok(&app, &secret, Some(bytes.len() as u64), Some(PASSWORD)).await;
        let mut offset = 0;
        for chunk in bytes.chunks(128 * 1024) {
            let response = patch(&app, &path, offset, chunk.to_vec(), Some(PASSWORD)).await;
            assert_eq!(
                response.status(),
                StatusCode::NO_CONTENT,
                "{backend:?}: {:?}",
                response.text().await
            );
            offset += chunk.len() as u64;
            assert_eq!(header(&response, "upload-offset"), Some(offset.to_string().as_str()));
            assert_eq!(header(&response, "tus-resumable"), Some("1.0.0"));
            assert!(
                header(&response, "handoff-file-key").is_none(),
                "{backend:?}: no key for a link sender"
            );
        }
        let response = link_request(&app, Method::HEAD, &path, Some(PASSWORD))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "upload-offset"), Some("300000"));
        assert!(header(&response, "handoff-file-key").is_none());
        let response = link_request(&app, Method::GET, &path, Some(PASSWORD))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let text = response.text().await.unwrap();
        let status: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(status["complete"], true, "{backend:?}: {status}");
        assert_eq!(status["sha256"], sha256_hex(&bytes));
        assert!(status["file"].is_null(), "{backend:?}: {status}");

        // The owner has it, private, counted by the link, charged to her, audited as a link upload.
        let detail = app.get_json(&alice.token, &format!("/upload-links/{id}")).await;
        assert_eq!(detail["files_received"], 1, "{backend:?}");
        assert_eq!(detail["bytes_received"], 300_000);
        let file = &detail["files"]["files"][0];
        assert_eq!(file["name"], "letter.bin");
        assert_eq!(file["visibility"], "private", "{backend:?}");
        let key = file["key"].as_str().unwrap().to_owned();
        assert!(!text.contains(&key), "{backend:?}: the sender saw the key");
        let body = app.content(&alice.token, &key).await.bytes().await.unwrap();
        assert_eq!(sha256_hex(&body), sha256_hex(&bytes), "{backend:?}");
        assert_eq!(app.usage(&alice.token).await["bytes"], 300_000);
        let log = app.get_json(&alice.token, "/audit").await;
        let event = log["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["action"] == "upload_link.upload")
            .unwrap_or_else(|| panic!("{backend:?}: no upload_link.upload event in {log}"));
        assert_eq!(event["file_key"], key.as_str());
        assert_eq!(event["detail"]["upload_link_id"], id.as_str());
        assert_eq!(event["detail"]["size"], 300_000);

        // The session belongs to its link: not to another link, not to the owner's or anyone's bearer token.
        let open = create_ok(&app, &secret, Some(100), Some(PASSWORD)).await;
        let elsewhere = format!("/u/{other_secret}/uploads/{}", upload_id(&open));
        for method in [Method::HEAD, Method::GET, Method::DELETE] {
            let response = link_request(&app, method.clone(), &elsewhere, None)
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                StatusCode::NOT_FOUND,
                "{backend:?}: {method} through another link"
            );
        }
        assert_problem(
            patch(&app, &elsewhere, 0, vec![1; 10], None).await,
            StatusCode::NOT_FOUND,
            "upload_not_found",
        )
        .await;
        for user in [&alice, &bob] {
            let as_user = format!("/uploads/{}", upload_id(&open));
            let response = app
                .client
                .head(app.url(&as_user))
                .bearer_auth(&user.token)
                .header(TUS.0, TUS.1)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{backend:?}: bearer HEAD");
            let response = app
                .client
                .patch(app.url(&as_user))
                .bearer_auth(&user.token)
                .header(TUS.0, TUS.1)
                .header(CHUNK_TYPE.0, CHUNK_TYPE.1)
                .header("upload-offset", "0")
                .body(vec![1u8; 10])
                .send()
                .await
                .unwrap();
            assert_problem(response, StatusCode::NOT_FOUND, "upload_not_found").await;
        }
        // And a signed-in user's own session is not reachable through a link.
        let response = app
            .client
            .post(app.url("/uploads"))
            .bearer_auth(&alice.token)
            .header(TUS.0, TUS.1)
            .header("upload-length", "5")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let own = header(&response, "location").unwrap().to_owned();
        let through_link = format!("/u/{secret}/uploads/{}", upload_id(&own));
        assert_problem(
            patch(&app, &through_link, 0, vec![1; 5], Some(PASSWORD)).await,
            StatusCode::NOT_FOUND,
            "upload_not_found",
        )
        .await;
        // Every request on the session needs the password too.
        assert_problem(
            patch(&app, &open, 0, vec![1; 10], None).await,
            StatusCode::UNAUTHORIZED,
            "password_required",
        )
        .await;

        // Termination through the link.
        let response = link_request(&app, Method::DELETE, &open, Some(PASSWORD))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT, "{backend:?}");
        let response = link_request(&app, Method::HEAD, &open, Some(PASSWORD))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
}

/// A link's room, as `GET /u/{token}`, `POST /u/{token}` and tus creation see it, is its limits less what its
/// open tus uploads declared; the reserved upload can always finish; a revoked link stops its open uploads.
#[tokio::test]
async fn open_tus_uploads_reserve_the_links_room() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |_| {}).await;
        let alice = app.user("alice").await;
        let (secret, id) = link(&app, &alice.token, json!({ "max_files": 3, "max_bytes": 1000 })).await;
        let send = |name: &'static str, len: usize| {
            app.client
                .post(app.url(&format!("/u/{secret}")))
                .query(&[("fileName", name)])
                .body(vec![7u8; len])
                .send()
        };

        let big = create_ok(&app, &secret, Some(600), None).await;
        let page: Value = app
            .public_get(&format!("/u/{secret}"), None)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(page["bytes_left"], 400, "{backend:?}: {page}");
        assert_eq!(page["files_left"], 2, "{backend:?}: {page}");
        // Neither a one-request upload nor another tus upload may take the reserved bytes.
        assert_problem(
            send("a.bin", 401).await.unwrap(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "link_limit_exceeded",
        )
        .await;
        assert_problem(
            create(&app, &secret, Some(401), None).await,
            StatusCode::PAYLOAD_TOO_LARGE,
            "link_limit_exceeded",
        )
        .await;
        // A deferred length is checked when it is declared.
        let deferred = create_ok(&app, &secret, None, None).await;
        let response = link_request(&app, Method::PATCH, &deferred, None)
            .header(CHUNK_TYPE.0, CHUNK_TYPE.1)
            .header("upload-offset", "0")
            .header("upload-length", "401")
            .body(vec![1u8; 10])
            .send()
            .await
            .unwrap();
        assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "link_limit_exceeded").await;
        // Three files allowed: two are open, so one more fits, and then no more.
        let small = create_ok(&app, &secret, Some(100), None).await;
        let page: Value = app
            .public_get(&format!("/u/{secret}"), None)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(page["files_left"], 0, "{backend:?}: {page}");
        assert_eq!(page["bytes_left"], 300, "{backend:?}: {page}");
        assert_problem(
            send("b.bin", 1).await.unwrap(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "link_limit_exceeded",
        )
        .await;
        assert_problem(
            create(&app, &secret, Some(1), None).await,
            StatusCode::PAYLOAD_TOO_LARGE,
            "link_limit_exceeded",
        )
        .await;

        // Terminating gives the room back.
        for path in [&deferred, &small] {
            let response = link_request(&app, Method::DELETE, path, None).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::NO_CONTENT);
        }
        assert_eq!(
            send("c.bin", 400).await.unwrap().status(),
            StatusCode::CREATED,
            "{backend:?}"
        );
        // The reserved upload finishes, exactly filling the link.
        let bytes = random_bytes(600, 9);
        let response = patch(&app, &big, 0, bytes.clone(), None).await;
        assert_eq!(
            response.status(),
            StatusCode::NO_CONTENT,
            "{backend:?}: {:?}",
            response.text().await
        );
        let detail = app.get_json(&alice.token, &format!("/upload-links/{id}")).await;
        assert_eq!(detail["bytes_received"], 1000, "{backend:?}");
        assert_eq!(detail["files_received"], 2);
        assert_eq!(detail["status"], "exhausted");
        assert_problem(
            create(&app, &secret, Some(1), None).await,
            StatusCode::GONE,
            "link_unavailable",
        )
        .await;

        // Revocation stops uploads in progress.
        let (secret, id) = link(&app, &alice.token, json!({})).await;
        let path = create_ok(&app, &secret, Some(10), None).await;
        assert_eq!(
            patch(&app, &path, 0, vec![1; 4], None).await.status(),
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            app.delete_as(&alice.token, &format!("/upload-links/{id}"))
                .await
                .status(),
            StatusCode::NO_CONTENT
        );
        assert_problem(
            patch(&app, &path, 4, vec![1; 6], None).await,
            StatusCode::GONE,
            "link_unavailable",
        )
        .await;
        let response = link_request(&app, Method::HEAD, &path, None).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::GONE);
    }
}

/// A team's upload link: the tus upload lands in the team, counted against the team's quota (which open uploads
/// reserve), and the receiver's quota refuses a declared length that does not fit.
#[tokio::test]
async fn tus_through_a_team_link_lands_in_the_team_within_its_quota() {
    for backend in all_backends() {
        let app = TestApp::spawn_on(backend, |c| c.quotas.team_bytes = Some(1000)).await;
        let alice = app.user("alice").await;
        let team = app.team_ok(&alice.token, "post room").await;
        let (secret, _) = link(&app, &alice.token, json!({ "team": team })).await;

        assert_problem(
            create(&app, &secret, Some(1001), None).await,
            StatusCode::INSUFFICIENT_STORAGE,
            "quota_exceeded",
        )
        .await;
        let path = create_ok(&app, &secret, Some(700), None).await;
        // The team's room is reserved against its members' uploads too.
        let response = app
            .upload_with(&alice.token, "mine.bin", &[("team", team.as_str())], vec![1u8; 301])
            .await;
        assert_problem(response, StatusCode::INSUFFICIENT_STORAGE, "quota_exceeded").await;
        // But not against alice's personal space.
        app.upload_ok(&alice.token, "personal.bin", vec![1u8; 900]).await;

        let bytes = random_bytes(700, 3);
        let response = patch(&app, &path, 0, bytes.clone(), None).await;
        assert_eq!(
            response.status(),
            StatusCode::NO_CONTENT,
            "{backend:?}: {:?}",
            response.text().await
        );
        let files = app.get_json(&alice.token, &format!("/teams/{team}/files")).await;
        let file = &files["files"][0];
        assert_eq!(file["name"], "letter.bin", "{backend:?}: {files}");
        assert_eq!(file["team_id"], team.as_str());
        assert_eq!(file["visibility"], "private");
        let body = app
            .content(&alice.token, file["key"].as_str().unwrap())
            .await
            .bytes()
            .await
            .unwrap();
        assert_eq!(sha256_hex(&body), sha256_hex(&bytes));
    }
}
