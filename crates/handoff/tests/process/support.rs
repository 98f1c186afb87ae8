//! Helpers for the process-level tests: a guard around a real `handoff serve` child process, a small HTTP client
//! for the API, raw-TCP helpers and polling with deadlines. Everything talks to 127.0.0.1 only.

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

pub const BIN: &str = env!("CARGO_BIN_EXE_handoff");
/// How long a server may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A `handoff` command with an environment free of the caller's `HANDOFF_*` settings and log filters, so that
/// only what a test sets applies.
pub fn handoff_command() -> Command {
    let mut command = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("HANDOFF_") || key == "RUST_LOG" {
            command.env_remove(key);
        }
    }
    command.stdin(Stdio::null());
    command
}

/// Runs a one-shot `handoff` command (such as `handoff config`) with a deadline.
pub fn run_with_timeout(mut command: Command, timeout: Duration) -> Output {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawning handoff");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let guard = ChildGuard(Some(child));
    let (mut guard, status) = guard.wait_timeout(timeout);
    let _ = guard.0.take();
    Output {
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    }
}

/// Kills and reaps the child when dropped (also while unwinding from a failed assertion).
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn wait_timeout(mut self, timeout: Duration) -> (Self, ExitStatus) {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.0.as_mut().expect("child still owned");
            if let Some(status) = child.try_wait().expect("polling the child") {
                return (self, status);
            }
            assert!(Instant::now() < deadline, "handoff did not exit within {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running `handoff serve`. Dropping it kills and reaps the process; if the test is failing, the server's log
/// is printed to help.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub base: String,
    log_path: PathBuf,
    _log_dir: tempfile::TempDir,
    stdout_lines: mpsc::Receiver<String>,
}

impl Server {
    /// `handoff serve --listen 127.0.0.1:0 --data-dir DATA_DIR` with extra environment variables.
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_on(data_dir, "127.0.0.1:0", env)
    }

    /// As [`Server::start`], on a given loopback address (to restart a server where its clients expect it).
    pub fn start_on(data_dir: &Path, listen: &str, env: &[(&str, &str)]) -> Self {
        let log_dir = tempfile::tempdir().expect("creating a log directory");
        let log_path = log_dir.path().join("handoff.log");
        let log = std::fs::File::create(&log_path).expect("creating the log file");
        let mut command = handoff_command();
        command
            .arg("serve")
            .arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(data_dir)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = command.spawn().expect("spawning handoff serve");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (lines_tx, lines_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Self {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            base: String::new(),
            log_path,
            _log_dir: log_dir,
            stdout_lines: lines_rx,
        };
        let line = match server.stdout_lines.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(e) => panic!(
                "handoff serve printed no listening line ({e}); exit: {:?}; log:\n{}",
                server.child_mut().try_wait(),
                server.log()
            ),
        };
        let address = line
            .strip_prefix("handoff listening on http://")
            .unwrap_or_else(|| panic!("unexpected first stdout line {line:?}"));
        server.addr = address
            .parse()
            .unwrap_or_else(|e| panic!("unparsable address in {line:?}: {e}"));
        assert!(server.addr.ip().is_loopback(), "server must listen on loopback: {line}");
        server.base = format!("http://{}", server.addr);
        server
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("the server process is still owned")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server process is still owned").id()
    }

    /// SIGKILLs the process at once, without spawning a `kill` command first: for tests that must hit a narrow
    /// window.
    #[allow(dead_code)] // used by tests/tus_interop.rs
    pub fn kill_now(&mut self) {
        self.child_mut().kill().expect("killing the server");
    }

    /// Sends a signal by name (`TERM`, `KILL`) with the `kill` command.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{name} failed: {status}");
    }

    /// Waits for the process to exit, failing the test after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child_mut().try_wait().expect("polling the server process") {
                return status;
            }
            if Instant::now() >= deadline {
                panic!("handoff serve did not exit within {timeout:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lines the server printed on stdout after the listening line (read once the process has exited).
    pub fn later_stdout_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        while let Ok(line) = self.stdout_lines.recv_timeout(Duration::from_secs(2)) {
            lines.push(line);
        }
        lines
    }

    /// Everything the server wrote on stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn client(&self) -> Api {
        Api::new(&self.base)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- handoff serve log ({}) ----\n{}", self.base, self.log());
        }
    }
}

/// A signed-in (or not yet) API client.
#[derive(Clone, Debug)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub token: Option<String>,
}

/// A client builder for loopback tests (no proxy), with the process's TLS provider installed.
fn client_builder() -> reqwest::ClientBuilder {
    handoff_server::install_tls_provider();
    reqwest::Client::builder().no_proxy()
}

pub fn http_client() -> reqwest::Client {
    client_builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("building the HTTP client")
}

impl Api {
    pub fn new(base: &str) -> Self {
        Self {
            http: http_client(),
            base: base.to_owned(),
            token: None,
        }
    }

    /// The same client, but with a new connection for every request.
    pub fn without_keep_alive(&self) -> Self {
        Self {
            http: client_builder()
                .timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(0)
                .build()
                .expect("building the HTTP client"),
            ..self.clone()
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn with_token(&self, token: &str) -> Self {
        Self {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    fn bearer(&self) -> String {
        format!(
            "Bearer {}",
            self.token.as_deref().expect("this client is not signed in")
        )
    }

    pub async fn signup(&self, username: &str, password: &str) {
        let response = self
            .http
            .post(self.url("/auth/signup"))
            .json(&json!({ "username": username, "password": password }))
            .send()
            .await
            .expect("POST /auth/signup");
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(status, StatusCode::CREATED, "signup failed: {body}");
    }

    /// Signs in and returns a client carrying the new access token.
    pub async fn signin(&self, username: &str, password: &str) -> Self {
        let response = self
            .http
            .post(self.url("/auth/signin"))
            .json(&json!({ "username": username, "password": password }))
            .send()
            .await
            .expect("POST /auth/signin");
        let status = response.status();
        let body: Value = response.json().await.expect("signin answers JSON");
        assert_eq!(status, StatusCode::OK, "signin failed: {body}");
        let token = body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token in {body}"));
        self.with_token(token)
    }

    pub async fn signup_and_signin(&self, username: &str, password: &str) -> Self {
        self.signup(username, password).await;
        self.signin(username, password).await
    }

    /// A raw-body upload that must succeed: returns the file record.
    pub async fn upload(&self, name: &str, data: &[u8]) -> Value {
        let response = self.upload_response(name, data.to_vec()).await;
        let status = response.status();
        let body: Value = response.json().await.expect("upload answers JSON");
        assert_eq!(status, StatusCode::CREATED, "upload of {name} failed: {body}");
        assert_eq!(body["name"], name, "{body}");
        assert_eq!(body["size"], data.len() as u64, "{body}");
        assert_eq!(body["sha256"], sha256_hex(data), "{body}");
        body
    }

    pub async fn upload_response(&self, name: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.http
            .post(self.url("/files"))
            .query(&[("fileName", name)])
            .header("authorization", self.bearer())
            .body(body)
            .send()
            .await
            .expect("POST /files")
    }

    pub async fn download(&self, key: &str) -> Vec<u8> {
        let response = self
            .http
            .get(self.url(&format!("/files/{key}/content")))
            .header("authorization", self.bearer())
            .send()
            .await
            .expect("GET /files/{key}/content");
        let status = response.status();
        let bytes = response.bytes().await.expect("reading the download");
        assert_eq!(
            status,
            StatusCode::OK,
            "download of {key} failed: {}",
            String::from_utf8_lossy(&bytes)
        );
        bytes.to_vec()
    }

    /// Every file of the signed-in user, following cursors.
    pub async fn list(&self) -> Vec<Value> {
        let mut files = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..100 {
            let mut request = self.http.get(self.url("/files")).header("authorization", self.bearer());
            if let Some(c) = &cursor {
                request = request.query(&[("cursor", c)]);
            }
            let response = request.send().await.expect("GET /files");
            let status = response.status();
            let body: Value = response.json().await.expect("the list is JSON");
            assert_eq!(status, StatusCode::OK, "listing failed: {body}");
            files.extend(body["files"].as_array().expect("files is an array").iter().cloned());
            match body["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return files,
            }
        }
        panic!("the file list did not end after 100 pages");
    }

    pub async fn get_status(&self, path: &str) -> StatusCode {
        self.http
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .status()
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Deterministic pseudo-random bytes (xorshift64*): incompressible enough and no extra dependency.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Polls `condition` every 50 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn storage_tmp(data_dir: &Path) -> PathBuf {
    data_dir.join("storage").join("tmp")
}

/// Entries of `<data-dir>/storage/tmp` with their sizes.
pub fn tmp_entries(data_dir: &Path) -> Vec<(PathBuf, u64)> {
    let Ok(entries) = std::fs::read_dir(storage_tmp(data_dir)) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| (e.path(), e.metadata().map_or(0, |m| m.len())))
        .collect()
}

/// Whether some partial upload in storage/tmp already holds bytes.
pub fn has_nonempty_part(data_dir: &Path) -> bool {
    tmp_entries(data_dir)
        .iter()
        .any(|(path, len)| path.extension().is_some_and(|e| e == "part") && *len > 0)
}

/// Committed blob files under `<data-dir>/storage/blobs/<shard>/`.
pub fn blob_files(data_dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(shards) = std::fs::read_dir(data_dir.join("storage").join("blobs")) else {
        return found;
    };
    for shard in shards.filter_map(Result::ok) {
        if let Ok(entries) = std::fs::read_dir(shard.path()) {
            found.extend(entries.filter_map(Result::ok).map(|e| e.path()));
        }
    }
    found
}

/// Committed blobs of the local store under `<data-dir>/storage`: its blob files plus the small blobs, which
/// are rows of `small.sqlite3` (read here the way any SQLite client would, while the server runs).
pub fn blob_count(data_dir: &Path) -> usize {
    let database = data_dir.join("storage").join("small.sqlite3");
    let rows = if database.exists() {
        let conn = rusqlite::Connection::open_with_flags(&database, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("opening the small-blob database");
        conn.busy_timeout(Duration::from_secs(5)).expect("busy timeout");
        conn.query_row("SELECT count(*) FROM blobs", [], |row| row.get::<_, i64>(0))
            .expect("counting small blobs")
    } else {
        0
    };
    blob_files(data_dir).len() + usize::try_from(rows).expect("a row count")
}

/// A chunked upload body that never ends: 2 MiB at once (more than the store's 1 MiB write buffer, so bytes
/// reach the `.part` file), then 64 KiB every 20 ms. `sent` counts the bytes handed to the HTTP client.
pub fn endless_body(sent: Arc<AtomicU64>) -> reqwest::Body {
    const CHUNK: usize = 64 << 10;
    let stream = futures::stream::unfold(0_u64, move |index| {
        let sent = sent.clone();
        async move {
            if index >= 32 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let chunk = random_bytes(CHUNK, index + 1000);
            sent.fetch_add(CHUNK as u64, Ordering::SeqCst);
            Some((Ok::<_, std::io::Error>(chunk), index + 1))
        }
    });
    reqwest::Body::wrap_stream(stream)
}

/// Starts an upload with [`endless_body`] on its own connection; the task ends only when the request fails.
pub fn spawn_endless_upload(api: &Api, name: &str, sent: Arc<AtomicU64>) -> tokio::task::JoinHandle<String> {
    let http = client_builder().build().expect("building the HTTP client");
    let request = http
        .post(api.url("/files"))
        .query(&[("fileName", name)])
        .header("authorization", api.bearer())
        .body(endless_body(sent));
    tokio::spawn(async move {
        match request.send().await {
            Ok(response) => format!("response {}", response.status()),
            Err(e) => format!("error {e}"),
        }
    })
}

/// What a raw connection saw before the server closed it.
#[derive(Debug)]
pub struct Closed {
    pub received: Vec<u8>,
    pub after: Duration,
}

/// Reads until the server closes the connection (EOF or reset). `None` if it is still open after `timeout`.
pub async fn read_until_closed(stream: &mut (impl tokio::io::AsyncRead + Unpin), timeout: Duration) -> Option<Closed> {
    let start = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0_u8; 8192];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_elapsed) => return None,
            Ok(Ok(0) | Err(_)) => {
                return Some(Closed {
                    received,
                    after: start.elapsed(),
                });
            }
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

pub async fn connect(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .expect("connecting timed out")
        .expect("connecting to the server")
}
