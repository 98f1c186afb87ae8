//! tus from a real browser: Debian's Chromium, driven by playwright-core, runs tus-js-client's browser bundle in a
//! page served from another loopback origin than the API (so the server's CORS answers are what lets it work),
//! and uploads a generated file of several MiB in 1 MiB chunks, pausing past the middle and resuming. Once with a
//! bearer token through `/uploads` (the key arrives in the exposed `Handoff-File-Key` header), once through an
//! upload link's tus endpoint with the link's password (no key for the sender). Each file is then downloaded
//! through the API by its owner and checked by SHA-256.
//!
//! Needs /usr/bin/chromium (`apt-get install chromium`) and `npm ci` in `tests/interop/`, as `.ci/run` does.
//! Without them this test fails when `CI` is set and is skipped with a message otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)] // shared with tests/process.rs, which uses more of it
#[path = "process/support.rs"]
mod support;

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use support::{Server, random_bytes, sha256_hex};

const PASSWORD: &str = "correct horse battery staple";
const LINK_PASSWORD: &str = "browser drop box 4";
const CHROMIUM: &str = "/usr/bin/chromium";
const MIB: usize = 1024 * 1024;

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Whether Chromium, Node and the npm packages are here; fails the test under CI when they are not.
fn available() -> bool {
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let ready = node
        && Path::new(CHROMIUM).exists()
        && interop_dir().join("node_modules/playwright-core/package.json").exists()
        && interop_dir()
            .join("node_modules/tus-js-client/dist/tus.min.js")
            .exists();
    if !ready {
        let how = "run `apt-get install chromium` and `npm ci` in crates/handoff/tests/interop (as .ci/run does)";
        assert!(
            std::env::var_os("CI").is_none(),
            "Chromium or playwright-core is missing under CI: {how}"
        );
        eprintln!("skipping: Chromium, node or playwright-core is not installed; {how}");
    }
    ready
}

/// The page's origin: a minimal static HTTP server on its own loopback port serving the test page, tus-js-client's
/// browser bundle and the payload. Its thread ends with the test process.
struct PageServer {
    origin: String,
}

impl PageServer {
    fn start(payload: Arc<Vec<u8>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the page server");
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let page = std::fs::read(interop_dir().join("browser_page.html")).expect("the test page");
        let bundle = std::fs::read(interop_dir().join("node_modules/tus-js-client/dist/tus.min.js"))
            .expect("tus-js-client's browser bundle");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (page, bundle, payload) = (page.clone(), bundle.clone(), payload.clone());
                std::thread::spawn(move || serve_one(stream, &page, &bundle, &payload));
            }
        });
        Self { origin }
    }
}

fn serve_one(mut stream: TcpStream, page: &[u8], bundle: &[u8], payload: &[u8]) {
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut request = Vec::new();
    let mut buffer = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buffer[..n]),
        }
        if request.len() > 64 * 1024 {
            return;
        }
    }
    let line = String::from_utf8_lossy(&request);
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    let (status, content_type, body) = match path {
        "/" => ("200 OK", "text/html; charset=utf-8", page),
        "/tus.min.js" => ("200 OK", "text/javascript", bundle),
        "/payload.bin" => ("200 OK", "application/octet-stream", payload),
        _ => ("404 Not Found", "text/plain", &b"not found"[..]),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

/// Runs one upload in Chromium; returns what the page reported.
fn browser_upload(page: &PageServer, endpoint: &str, headers: &Value) -> Value {
    let stderr = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new("node")
        .arg(interop_dir().join("tus_browser.mjs"))
        .arg(format!("{}/", page.origin))
        .arg(endpoint)
        .arg(headers.to_string())
        .current_dir(interop_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr.reopen().unwrap()))
        .spawn()
        .expect("spawning node tus_browser.mjs");
    let mut stdout = String::new();
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(stderr.path()).unwrap_or_default();
    assert!(
        status.success(),
        "the browser upload failed ({status}):\n{log}\nstdout:\n{stdout}"
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("result "))
        .unwrap_or_else(|| panic!("no result line; stdout:\n{stdout}\nstderr:\n{log}"));
    serde_json::from_str(line).unwrap()
}

/// The page's log must show one creation, a pause past the middle, a HEAD that found the offset the pause left,
/// and PATCHes carrying on from there.
fn assert_paused_and_resumed(result: &Value, total: usize) {
    let events: Vec<&str> = result["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    let creations = events.iter().filter(|e| e.starts_with("POST ")).count();
    assert_eq!(creations, 1, "one upload, resumed rather than restarted: {events:?}");
    let paused_at = events
        .iter()
        .position(|e| e.starts_with("paused "))
        .unwrap_or_else(|| panic!("never paused: {events:?}"));
    let paused_offset: usize = events[paused_at]["paused ".len()..].parse().unwrap();
    assert!(paused_offset >= total / 2 && paused_offset < total, "{events:?}");
    let head = events[paused_at..]
        .iter()
        .find(|e| e.starts_with("HEAD "))
        .unwrap_or_else(|| panic!("no HEAD after the pause: {events:?}"));
    assert_eq!(*head, format!("HEAD 200 {paused_offset}"), "{events:?}");
    let last = events.iter().rev().find(|e| e.starts_with("PATCH ")).unwrap();
    assert_eq!(*last, format!("PATCH 204 {total}"), "{events:?}");
    // Every request succeeded: no retry was needed, so nothing was hidden by one.
    for event in events.iter().filter(|e| !e.starts_with("paused ")) {
        let status: u16 = event
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        assert!((200..300).contains(&status), "{event} in {events:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_js_client_in_chromium_uploads_cross_origin_with_a_token_and_through_a_link() {
    if !available() {
        return;
    }
    let payload = Arc::new(random_bytes(6 * MIB + 4321, 2024));
    let page = PageServer::start(payload.clone());
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[("HANDOFF_CORS__ALLOWED_ORIGINS", page.origin.as_str())]);
    assert_ne!(
        page.origin, server.base,
        "the page must come from another origin than the API"
    );
    let api = server.client().signup_and_signin("browser", PASSWORD).await;
    let token = api.token.clone().unwrap();

    // With a bearer token through /uploads: the page reads the key from the exposed Handoff-File-Key header.
    let endpoint = format!("{}/uploads", server.base);
    let result = browser_upload(&page, &endpoint, &json!({ "Authorization": format!("Bearer {token}") }));
    assert_paused_and_resumed(&result, payload.len());
    assert!(
        result["url"].as_str().unwrap().starts_with(&format!("{endpoint}/")),
        "{result}"
    );
    let key = result["fileKey"]
        .as_str()
        .unwrap_or_else(|| panic!("no key reached the page: {result}"));
    let bytes = api.download(key).await;
    assert_eq!(sha256_hex(&bytes), sha256_hex(&payload));

    // Through an upload link's tus endpoint, with its password: no key for the sender; the owner gets the file.
    let link: Value = api
        .http
        .post(api.url("/upload-links"))
        .bearer_auth(&token)
        .json(&json!({ "password": LINK_PASSWORD, "max_files": 1 }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let endpoint = format!("{}/u/{}/uploads", server.base, link["token"].as_str().unwrap());
    let result = browser_upload(&page, &endpoint, &json!({ "X-Link-Password": LINK_PASSWORD }));
    assert_paused_and_resumed(&result, payload.len());
    assert!(result["fileKey"].is_null(), "a link sender saw a key: {result}");
    let detail: Value = api
        .http
        .get(api.url(&format!("/upload-links/{}", link["id"].as_str().unwrap())))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(detail["files_received"], 1, "{detail}");
    let file = &detail["files"]["files"][0];
    assert_eq!(file["name"], "browser.bin");
    let bytes = api.download(file["key"].as_str().unwrap()).await;
    assert_eq!(sha256_hex(&bytes), sha256_hex(&payload));
    drop(server);
}
