//! Process-level tests: the real `handoff` binary as a child process, driven over HTTP, raw TCP, signals and the
//! command line, the way an operator and a user meet it. Every server listens on 127.0.0.1:0 with a fresh data
//! directory, and is killed and reaped when its test ends, also on failure.

#[path = "process/support.rs"]
mod support;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;

use support::{
    Api, Server, blob_count, connect, handoff_command, has_nonempty_part, random_bytes, read_until_closed,
    run_with_timeout, sha256_hex, spawn_endless_upload, tmp_entries, wait_until,
};

const PASSWORD: &str = "correct horse battery staple";

/// Uploads the files and returns key → original bytes.
async fn upload_all(api: &Api, files: &[(&str, Vec<u8>)]) -> BTreeMap<String, Vec<u8>> {
    let mut stored = BTreeMap::new();
    for (name, data) in files {
        let record = api.upload(name, data).await;
        let key = record["key"].as_str().expect("the record has a key").to_owned();
        stored.insert(key, data.clone());
    }
    stored
}

/// Every stored file downloads with its original bytes, and the list shows exactly these files.
async fn assert_files_intact(api: &Api, expected: &BTreeMap<String, Vec<u8>>) {
    let listed: BTreeMap<String, Value> = api
        .list()
        .await
        .into_iter()
        .map(|f| (f["key"].as_str().expect("listed key").to_owned(), f))
        .collect();
    assert_eq!(
        listed.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "the listed files are not exactly the acknowledged ones"
    );
    for (key, data) in expected {
        let record = &listed[key];
        assert_eq!(record["size"], data.len() as u64, "listed size of {key}");
        assert_eq!(record["sha256"], sha256_hex(data), "listed sha256 of {key}");
        let downloaded = api.download(key).await;
        assert_eq!(sha256_hex(&downloaded), sha256_hex(data), "downloaded sha256 of {key}");
        assert!(downloaded == *data, "downloaded bytes of {key} differ");
    }
}

/// 1. Files, accounts and the token signing key survive a graceful restart.
#[tokio::test]
async fn files_and_accounts_survive_a_graceful_restart() {
    let data = tempfile::tempdir().expect("data dir");
    let mut first = Server::start(data.path(), &[]);
    let anonymous = first.client();
    let alice = anonymous.signup_and_signin("alice", PASSWORD).await;
    let old_token = alice.token.clone().expect("signed in");
    let files = [
        ("empty.txt", Vec::new()),
        ("small.txt", b"hello, handoff\n".repeat(100)),
        ("big.bin", random_bytes(5 * 1024 * 1024 + 17, 1)),
    ];
    let stored = upload_all(&alice, &files).await;
    assert_files_intact(&alice, &stored).await;

    let stop = Instant::now();
    first.signal("TERM");
    let status = first.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "SIGTERM must end the server cleanly: {status}");
    eprintln!("graceful stop took {:?}", stop.elapsed());
    assert_eq!(
        first.later_stdout_lines(),
        Vec::<String>::new(),
        "stdout must hold only the listening line"
    );
    drop(first);

    let second = Server::start(data.path(), &[]);
    let anonymous = second.client();
    // The access token signed by the first process is still valid: the signing key is persisted.
    let with_old_token = anonymous.with_token(&old_token);
    assert_files_intact(&with_old_token, &stored).await;
    // And the account itself survived.
    let alice = anonymous.signin("alice", PASSWORD).await;
    assert_files_intact(&alice, &stored).await;
}

/// 2. SIGKILL while uploads run: acknowledged files are intact, the interrupted one never appears and its partial
/// bytes are swept at the next start.
#[tokio::test]
async fn sigkill_mid_upload_keeps_acknowledged_files_and_drops_the_partial_one() {
    let data = tempfile::tempdir().expect("data dir");
    let mut first = Server::start(data.path(), &[]);
    let bob = first.client().signup_and_signin("bob", PASSWORD).await;
    let files = [
        ("a.txt", b"acknowledged a".to_vec()),
        ("b.bin", random_bytes(1_500_000, 2)),
        ("c.bin", random_bytes(300_000, 3)),
    ];
    let stored = upload_all(&bob, &files).await;

    let sent = Arc::new(AtomicU64::new(0));
    let upload = spawn_endless_upload(&bob, "interrupted.bin", sent.clone());
    wait_until(Duration::from_secs(15), "a non-empty .part file", || {
        has_nonempty_part(data.path())
    })
    .await;
    first.signal("KILL");
    let status = first.wait_exit(Duration::from_secs(10));
    assert_eq!(
        status.signal(),
        Some(9),
        "the server should have died of SIGKILL: {status}"
    );
    let outcome = tokio::time::timeout(Duration::from_secs(10), upload)
        .await
        .expect("the interrupted upload should fail promptly")
        .expect("upload task");
    assert!(outcome.starts_with("error"), "the killed upload got {outcome}");
    eprintln!("killed after {} bytes sent; {outcome}", sent.load(Ordering::SeqCst));
    // SIGKILL runs no clean-up: the partial upload is still on disk, for the start-up sweep to find.
    assert!(
        has_nonempty_part(data.path()),
        "expected the partial upload to survive SIGKILL: {:?}",
        tmp_entries(data.path())
    );
    drop(first);

    let second = Server::start(data.path(), &[]);
    let bob = second.client().signin("bob", PASSWORD).await;
    assert_files_intact(&bob, &stored).await;
    assert!(
        bob.list().await.iter().all(|f| f["name"] != "interrupted.bin"),
        "the interrupted upload is visible"
    );
    let path = data.path().to_owned();
    wait_until(Duration::from_secs(5), "storage/tmp to be swept", || {
        tmp_entries(&path).is_empty()
    })
    .await;
    assert_eq!(
        blob_count(data.path()),
        stored.len(),
        "only the acknowledged files may have blobs"
    );
}

/// 1b. SIGTERM while clients hold connections — one that never sent a byte, an idle keep-alive one and a stalled
/// upload — still ends the process with status 0 within the shutdown grace, and the cut-off upload leaves no
/// partial bytes and no file.
#[tokio::test]
async fn sigterm_is_bounded_by_the_grace_period_and_drops_unfinished_uploads() {
    let data = tempfile::tempdir().expect("data dir");
    let mut server = Server::start(data.path(), &[("HANDOFF_LIMITS__SHUTDOWN_GRACE_SECS", "2")]);
    let erin = server.client().signup_and_signin("erin", PASSWORD).await;
    let stored = upload_all(&erin, &[("before.txt", b"stored before the stop".to_vec())]).await;
    // Keep-alive: the pooled connection of `erin` stays open and idle.
    assert_eq!(erin.get_status("/healthz").await, StatusCode::OK);
    let _silent = connect(server.addr).await;
    let sent = Arc::new(AtomicU64::new(0));
    let upload = spawn_endless_upload(&erin, "cut-off.bin", sent);
    let path = data.path().to_owned();
    wait_until(Duration::from_secs(10), "a non-empty .part file", || {
        has_nonempty_part(&path)
    })
    .await;

    let stop = Instant::now();
    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(10));
    let took = stop.elapsed();
    eprintln!("stop with busy connections took {took:?}: {status}");
    assert_eq!(status.code(), Some(0), "SIGTERM must end the server cleanly: {status}");
    assert!(took < Duration::from_secs(6), "shutdown took {took:?} with a 2 s grace");
    let outcome = tokio::time::timeout(Duration::from_secs(10), upload)
        .await
        .expect("the cut-off upload should end")
        .expect("upload task");
    assert!(
        !outcome.contains("201"),
        "the cut-off upload was acknowledged: {outcome}"
    );
    assert!(
        tmp_entries(data.path()).is_empty(),
        "a clean stop left partial uploads: {:?}",
        tmp_entries(data.path())
    );
    drop(server);

    let server = Server::start(data.path(), &[]);
    let erin = server.client().signin("erin", PASSWORD).await;
    assert_files_intact(&erin, &stored).await;
}

/// 3. A client that vanishes mid-body leaves nothing behind, and the server keeps serving — no restart needed.
#[tokio::test]
async fn aborted_uploads_leave_nothing_behind() {
    let data = tempfile::tempdir().expect("data dir");
    let server = Server::start(data.path(), &[]);
    let carol = server.client().signup_and_signin("carol", PASSWORD).await;
    let stored = upload_all(&carol, &[("kept.txt", b"kept".to_vec())]).await;
    let path = data.path().to_owned();

    // (a) Raw TCP with a Content-Length of 64 MiB: send 3 MiB, then close the socket.
    let mut stream = connect(server.addr).await;
    let head = format!(
        "POST /files?fileName=raw-aborted.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        carol.token.as_deref().expect("token"),
        64 << 20
    );
    stream.write_all(head.as_bytes()).await.expect("writing the head");
    for i in 0..48 {
        stream
            .write_all(&random_bytes(64 << 10, 100 + i))
            .await
            .expect("writing the body");
    }
    wait_until(Duration::from_secs(10), "a non-empty .part file (raw)", || {
        has_nonempty_part(&path)
    })
    .await;
    drop(stream);
    wait_until(
        Duration::from_secs(5),
        "storage/tmp to be emptied after the raw abort",
        || tmp_entries(&path).is_empty(),
    )
    .await;

    // (b) A chunked reqwest upload whose request future is aborted mid-body.
    let sent = Arc::new(AtomicU64::new(0));
    let upload = spawn_endless_upload(&carol, "chunked-aborted.bin", sent);
    wait_until(Duration::from_secs(10), "a non-empty .part file (chunked)", || {
        has_nonempty_part(&path)
    })
    .await;
    upload.abort();
    let _ = upload.await;
    wait_until(
        Duration::from_secs(5),
        "storage/tmp to be emptied after the chunked abort",
        || tmp_entries(&path).is_empty(),
    )
    .await;

    // (c) A multipart upload: the first file part is complete (its blob is committed), the second is cut off.
    let boundary = "XbOuNdArYx";
    let mut stream = connect(server.addr).await;
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"first.txt\"\r\n\r\nfirst file\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"second.bin\"\r\n\r\n"
    )
    .into_bytes();
    body.extend(random_bytes(3 << 20, 200));
    let head = format!(
        "POST /files HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
         Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\n\r\n",
        carol.token.as_deref().expect("token"),
        64 << 20
    );
    stream.write_all(head.as_bytes()).await.expect("writing the head");
    stream.write_all(&body).await.expect("writing the body");
    // The first part committed (a second blob) while the second streams into a non-empty .part file.
    wait_until(
        Duration::from_secs(10),
        "the first part committed and the second one streaming",
        || blob_count(&path) == 2 && has_nonempty_part(&path),
    )
    .await;
    drop(stream);
    wait_until(
        Duration::from_secs(5),
        "storage/tmp to be emptied after the multipart abort",
        || tmp_entries(&path).is_empty(),
    )
    .await;
    wait_until(
        Duration::from_secs(5),
        "the committed first part of the aborted multipart upload to be removed",
        || blob_count(&path) == 1,
    )
    .await;

    assert_files_intact(&carol, &stored).await;
    assert_eq!(blob_count(data.path()), 1, "no blob may remain of the aborted uploads");
    assert_eq!(carol.get_status("/readyz").await, StatusCode::OK);
}

/// 4a. Slowloris: a request head that never completes is cut off after the header-read timeout, whether the
/// client goes silent or keeps dribbling bytes, and other clients are served meanwhile.
#[tokio::test]
async fn slow_request_heads_are_cut_off() {
    let data = tempfile::tempdir().expect("data dir");
    let server = Server::start(data.path(), &[("HANDOFF_LIMITS__HEADER_READ_TIMEOUT_SECS", "1")]);
    // No connection reuse: hyper applies the header-read timeout to idle keep-alive connections too, so a pooled
    // connection would be closed by the server after 1 s and race with its reuse.
    let api = server.client().without_keep_alive();
    let opened = Instant::now();

    // Silent after part of the head.
    let mut silent = connect(server.addr).await;
    silent
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("writing a partial head");
    // Dribbling: one header byte every 200 ms, forever (each byte resets any per-read idle timer).
    let dribbling = connect(server.addr).await;
    let (mut dribble_read, mut dribble_write) = dribbling.into_split();
    let dribbler = tokio::spawn(async move {
        if dribble_write
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .is_err()
        {
            return;
        }
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if dribble_write.write_all(b"a").await.is_err() {
                return;
            }
        }
    });

    // Meanwhile a normal client is served.
    assert_eq!(api.get_status("/healthz").await, StatusCode::OK);

    let (closed, dribbled) = tokio::join!(
        read_until_closed(&mut silent, Duration::from_secs(5)),
        read_until_closed(&mut dribble_read, Duration::from_secs(5)),
    );
    dribbler.abort();
    let closed = closed.expect("a silent partial head must be closed within 5 s");
    let answer = String::from_utf8_lossy(&closed.received);
    assert!(
        closed.received.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "unexpected answer to a slow head: {answer:?}"
    );
    let dribbled = dribbled.expect("a dribbled head must be closed within 5 s (the timeout covers the whole head)");
    let answer = String::from_utf8_lossy(&dribbled.received);
    assert!(
        dribbled.received.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "unexpected answer to a dribbled head: {answer:?}"
    );
    eprintln!(
        "silent head closed after {:?}, dribbled head after {:?} (since the connections opened: {:?})",
        closed.after,
        dribbled.after,
        opened.elapsed()
    );
    for after in [closed.after, dribbled.after] {
        assert!(
            after >= Duration::from_millis(500),
            "closed after {after:?}: before the 1 s header timeout could have run"
        );
    }

    assert_eq!(api.get_status("/healthz").await, StatusCode::OK);
    assert_eq!(api.get_status("/readyz").await, StatusCode::OK);
}

/// 4b. Oversized request heads (a 64 KiB header, a 64 KiB URL) are refused with 431/414 or a closed connection,
/// never a hang, and the server keeps serving.
#[tokio::test]
async fn oversized_request_heads_are_refused() {
    let data = tempfile::tempdir().expect("data dir");
    let server = Server::start(data.path(), &[]);
    let api = server.client();
    let big = "a".repeat(64 << 10);
    let requests = [
        (
            "64 KiB header",
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n"),
            &["HTTP/1.1 431"][..],
        ),
        (
            "64 KiB URL",
            format!("GET /healthz?q={big} HTTP/1.1\r\nHost: x\r\n\r\n"),
            &["HTTP/1.1 431", "HTTP/1.1 414"][..],
        ),
    ];
    for (what, request, allowed) in requests {
        let mut stream = connect(server.addr).await;
        // The server may close before it has read everything: a failed write is a refusal too.
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(request.as_bytes())).await;
        let closed = read_until_closed(&mut stream, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("{what}: the connection hung instead of being refused"));
        let answer = String::from_utf8_lossy(&closed.received);
        assert!(
            closed.received.is_empty() || allowed.iter().any(|a| answer.starts_with(a)),
            "{what}: unexpected answer {:?}",
            answer.chars().take(200).collect::<String>()
        );
        eprintln!(
            "{what}: {:?} after {:?}",
            answer.lines().next().unwrap_or("<closed>"),
            closed.after
        );
        assert_eq!(api.get_status("/healthz").await, StatusCode::OK, "after the {what}");
    }
}

fn config_output(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = handoff_command();
    command.arg("config").args(args).envs(env.iter().copied());
    run_with_timeout(command, Duration::from_secs(20))
}

fn effective_config(args: &[&str], env: &[(&str, &str)]) -> toml::Value {
    let output = config_output(args, env);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "handoff config {args:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    toml::from_str(&stdout).unwrap_or_else(|e| panic!("handoff config printed invalid TOML ({e}):\n{stdout}"))
}

/// 5. `handoff config`: secrets redacted, flags over environment over file over defaults, unknown keys refused.
#[test]
fn config_command_layers_redacts_and_validates() {
    // Secrets in URLs are masked, on stdout and stderr.
    let output = config_output(&[], &[("HANDOFF_DATABASE_URL", "postgres://u:hunter2@db/x")]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(!stdout.contains("hunter2"), "the password leaked:\n{stdout}");
    assert!(
        !String::from_utf8_lossy(&output.stderr).contains("hunter2"),
        "the password leaked on stderr"
    );
    let shown: toml::Value = toml::from_str(&stdout).expect("config output is TOML");
    assert_eq!(
        shown["database_url"].as_str(),
        Some("postgres://u:***@db/x"),
        "{stdout}"
    );

    // Defaults are filled in.
    let defaults = effective_config(&[], &[]);
    assert_eq!(defaults["listen"].as_str(), Some("127.0.0.1:8080"));
    assert!(
        defaults["storage_url"]
            .as_str()
            .is_some_and(|u| u.starts_with("file://"))
    );

    // Environment over defaults, flag over environment.
    let from_env = effective_config(&[], &[("HANDOFF_LISTEN", "127.0.0.1:7777")]);
    assert_eq!(from_env["listen"].as_str(), Some("127.0.0.1:7777"));
    let from_flag = effective_config(&["--listen", "127.0.0.1:9999"], &[("HANDOFF_LISTEN", "127.0.0.1:7777")]);
    assert_eq!(from_flag["listen"].as_str(), Some("127.0.0.1:9999"));

    // A file's values show up; the environment overrides the file.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("handoff.toml");
    std::fs::write(&file, "[limits]\nmax_file_size = 1234\n").expect("writing the config file");
    let file_arg = file.to_str().expect("utf-8 path");
    let from_file = effective_config(&["--config", file_arg], &[]);
    assert_eq!(from_file["limits"]["max_file_size"].as_integer(), Some(1234));
    let env_over_file = effective_config(&["--config", file_arg], &[("HANDOFF_LIMITS__MAX_FILE_SIZE", "5678")]);
    assert_eq!(env_over_file["limits"]["max_file_size"].as_integer(), Some(5678));

    // Every section is reachable from the environment, lists comma-separated.
    let sections = effective_config(
        &[],
        &[
            ("HANDOFF_TUS__LEASE_SECS", "3"),
            (
                "HANDOFF_CORS__ALLOWED_ORIGINS",
                "http://a.example,https://b.example:8443",
            ),
        ],
    );
    assert_eq!(sections["tus"]["lease_secs"].as_integer(), Some(3), "{sections}");
    let origins: Vec<&str> = sections["cors"]["allowed_origins"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(toml::Value::as_str)
        .collect();
    assert_eq!(origins, ["http://a.example", "https://b.example:8443"]);
    assert_eq!(defaults["tus"]["lease_secs"].as_integer(), Some(6));
    assert_eq!(defaults["cors"]["allowed_origins"].as_array().map(Vec::len), Some(0));

    // Unknown keys, nested or top-level, are errors, not silently ignored.
    for (contents, key) in [
        ("[limits]\nmax_file_sise = 1\n", "max_file_sise"),
        ("lisen = \"127.0.0.1:1\"\n", "lisen"),
    ] {
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, contents).expect("writing the config file");
        let output = config_output(&["--config", bad.to_str().expect("utf-8 path")], &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "unknown key {key} was accepted");
        assert!(
            output.stdout.is_empty(),
            "a configuration was printed despite the error"
        );
        assert!(
            stderr.contains("error") && stderr.contains(key),
            "the error should name {key}: {stderr}"
        );
    }
}

/// 5b. `handoff serve` never logs a database password, even when it cannot start.
#[test]
fn serve_does_not_log_database_passwords() {
    let data = tempfile::tempdir().expect("data dir");
    let mut command = handoff_command();
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .env("HANDOFF_DATABASE_URL", "postgres://u:hunter2@127.0.0.1:1/x");
    let output = run_with_timeout(command, Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "serve with an unreachable database should fail"
    );
    assert!(!stderr.contains("hunter2"), "the password leaked:\n{stderr}");
}

/// 5c. Database URLs carry passwords in more places than `user:password@`: libpq and sqlx accept
/// `?password=…`, and people write unencoded `/` in passwords. None of it may be printed or logged.
#[test]
fn passwords_outside_the_userinfo_are_redacted_too() {
    for url in [
        "postgres://u@db/x?password=hunter2",
        "postgres://db/x?sslmode=require&password=hunter2",
        "postgres://u:hun/ter2@db/x",
    ] {
        let output = config_output(&[], &[("HANDOFF_DATABASE_URL", url)]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            !stdout.contains("hunter2") && !stdout.contains("hun/ter2"),
            "`handoff config` printed the password of {url}:\n{stdout}"
        );
        let data = tempfile::tempdir().expect("data dir");
        let mut command = handoff_command();
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path())
            .env("HANDOFF_DATABASE_URL", url);
        let output = run_with_timeout(command, Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !stderr.contains("hunter2") && !stderr.contains("hun/ter2"),
            "`handoff serve` logged the password of {url}:\n{stderr}"
        );
    }
}

/// 6. The file size limit from the environment: one byte over is a 413 problem and leaves nothing; exactly at the
/// limit is stored.
#[tokio::test]
async fn file_size_limit_from_the_environment() {
    let data = tempfile::tempdir().expect("data dir");
    let server = Server::start(data.path(), &[("HANDOFF_LIMITS__MAX_FILE_SIZE", "1000")]);
    let dave = server.client().signup_and_signin("dave", PASSWORD).await;

    let too_big = random_bytes(1001, 6);
    // With a Content-Length (refused up front) and chunked (refused while counting).
    let chunked = futures::stream::iter(
        too_big
            .chunks(100)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    for (how, body) in [
        ("content-length", reqwest::Body::from(too_big.clone())),
        ("chunked", reqwest::Body::wrap_stream(chunked)),
    ] {
        let response = dave.upload_response("too-big.bin", body).await;
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let problem: Value = response.json().await.expect("a JSON problem");
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{how}: {problem}");
        assert!(
            content_type.starts_with("application/problem+json"),
            "{how}: content-type {content_type:?}"
        );
        assert_eq!(problem["code"], "file_too_large", "{how}: {problem}");
        assert!(dave.list().await.is_empty(), "{how}: a refused file is listed");
    }
    // Multipart: the limit applies to each file part.
    let multipart = |data: &[u8]| {
        let mut body =
            b"--BoUnD\r\nContent-Disposition: form-data; name=\"file\"; filename=\"part.bin\"\r\n\r\n".to_vec();
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n--BoUnD--\r\n");
        body
    };
    let response = dave
        .http
        .post(dave.url("/files"))
        .header(
            "authorization",
            format!("Bearer {}", dave.token.as_deref().expect("token")),
        )
        .header("content-type", "multipart/form-data; boundary=BoUnD")
        .body(multipart(&too_big))
        .send()
        .await
        .expect("POST /files (multipart)");
    let status = response.status();
    let problem: Value = response.json().await.expect("a JSON problem");
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "multipart: {problem}");
    assert_eq!(problem["code"], "file_too_large", "multipart: {problem}");
    assert!(dave.list().await.is_empty(), "multipart: a refused file is listed");

    let path = data.path().to_owned();
    wait_until(Duration::from_secs(5), "storage/tmp to be empty", || {
        tmp_entries(&path).is_empty()
    })
    .await;
    assert_eq!(blob_count(data.path()), 0, "a refused file left a blob");

    let at_limit = random_bytes(1000, 7);
    let mut stored = upload_all(&dave, &[("at-limit.bin", at_limit.clone())]).await;
    let response = dave
        .http
        .post(dave.url("/files"))
        .header(
            "authorization",
            format!("Bearer {}", dave.token.as_deref().expect("token")),
        )
        .header("content-type", "multipart/form-data; boundary=BoUnD")
        .body(multipart(&at_limit))
        .send()
        .await
        .expect("POST /files (multipart)");
    let status = response.status();
    let record: Value = response.json().await.expect("a JSON record");
    assert_eq!(status, StatusCode::CREATED, "multipart at the limit: {record}");
    assert_eq!(record["sha256"], sha256_hex(&at_limit), "{record}");
    stored.insert(record["key"].as_str().expect("key").to_owned(), at_limit);
    assert_files_intact(&dave, &stored).await;
}

/// External identity from the TOML file: a list of `[[auth.oidc]]` issuers (the README's Cognito example) with
/// their defaults, and `auth.builtin_accounts` from the environment.
#[test]
fn config_reads_oidc_issuers_from_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("handoff.toml");
    std::fs::write(
        &file,
        r#"
[[auth.oidc]]
name = "cognito"
issuer = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbCdEf123"
audiences = ["1example23456789"]
username_claim = "username"
groups_claim = "cognito:groups"
admin_group = "handoff-admins"

[[auth.oidc]]
name = "keycloak"
issuer = "https://sso.example.com/realms/staff"
audiences = ["handoff"]
token_use = "id"
algorithms = ["RS256", "ES256"]
"#,
    )
    .expect("writing the config file");
    let file_arg = file.to_str().expect("utf-8 path");
    let shown = effective_config(&["--config", file_arg], &[("HANDOFF_AUTH__BUILTIN_ACCOUNTS", "false")]);
    let auth = &shown["auth"];
    assert_eq!(auth["builtin_accounts"].as_bool(), Some(false));
    let oidc = auth["oidc"].as_array().expect("auth.oidc is a list");
    assert_eq!(oidc.len(), 2);
    assert_eq!(oidc[0]["name"].as_str(), Some("cognito"));
    assert_eq!(oidc[0]["token_use"].as_str(), Some("access"));
    assert_eq!(oidc[0]["provision"].as_bool(), Some(true));
    assert_eq!(oidc[0]["jwks_min_refresh_secs"].as_integer(), Some(60));
    assert_eq!(oidc[1]["token_use"].as_str(), Some("id"));
    assert_eq!(oidc[1]["algorithms"].as_array().map(Vec::len), Some(2));

    // A typo inside an issuer is refused like any unknown key.
    std::fs::write(
        &file,
        "[[auth.oidc]]\nname = \"x\"\nissuer = \"https://x.example\"\naudiences = [\"a\"]\naudience = \"a\"\n",
    )
    .expect("writing the config file");
    let output = config_output(&["--config", file_arg], &[]);
    assert!(!output.status.success(), "an unknown key in [[auth.oidc]] was accepted");
}
