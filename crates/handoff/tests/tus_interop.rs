//! Interoperability with the standard tus clients, unmodified: tus-js-client under Node and tuspy, each with
//! chunked and one-request uploads against the real `handoff serve`, and each resuming an upload after the
//! server was killed with SIGKILL mid-upload and restarted on the same address (tus-js-client also with
//! PostgreSQL + S3 as the stores). Both run with their default settings (tus-js-client's retry delays too) against
//! the server's defaults (its `tus.lease_secs`). Every upload is checked by the SHA-256 of what the server serves.
//!
//! The clients are installed by `.ci/run` (`npm ci` in `tests/interop/`, `pip install tuspy`). Without them
//! these tests fail when `CI` is set and are skipped with a message otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)] // shared with tests/process.rs, which uses more of it
#[path = "process/support.rs"]
mod support;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Api, Server, random_bytes, sha256_hex};

const PASSWORD: &str = "correct horse battery staple";
const MIB: usize = 1024 * 1024;

#[derive(Clone, Copy, Debug)]
enum Tool {
    TusJsClient,
    Tuspy,
}

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

fn succeeds(command: &mut Command) -> bool {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `tool` can run here; fails the test under CI when it cannot.
fn available(tool: Tool) -> bool {
    let ready = match tool {
        Tool::TusJsClient => {
            interop_dir().join("node_modules/tus-js-client/package.json").exists()
                && succeeds(Command::new("node").arg("--version"))
        }
        Tool::Tuspy => succeeds(Command::new("python3").args(["-c", "import tusclient"])),
    };
    if !ready {
        let how = "run `npm ci` in crates/handoff/tests/interop and `pip install tuspy==1.1.0` (as .ci/run does)";
        assert!(std::env::var_os("CI").is_none(), "{tool:?} is missing under CI: {how}");
        eprintln!("skipping: {tool:?} is not installed; {how}");
    }
    ready
}

/// A client process whose stdout lines arrive on a channel; killed and reaped when dropped.
struct ClientProcess {
    tool: Tool,
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    stderr: tempfile::NamedTempFile,
}

impl ClientProcess {
    fn spawn(tool: Tool, base: &str, token: &str, file: &Path, chunk_size: usize, delay_ms: u64) -> Self {
        let mut command = match tool {
            Tool::TusJsClient => {
                let mut c = Command::new("node");
                c.arg(interop_dir().join("tus_node.mjs"));
                c
            }
            Tool::Tuspy => {
                let mut c = Command::new("python3");
                c.arg(interop_dir().join("tus_py.py"));
                c
            }
        };
        let stderr = tempfile::NamedTempFile::new().expect("stderr file");
        command
            .arg(base)
            .arg(token)
            .arg(file)
            .arg(chunk_size.to_string())
            .arg(delay_ms.to_string())
            .current_dir(interop_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr.reopen().expect("stderr handle")));
        let mut child = command.spawn().unwrap_or_else(|e| panic!("spawning {tool:?}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            tool,
            child: Some(child),
            lines,
            stderr,
        }
    }

    fn failure(&mut self, what: &str) -> ! {
        let status = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
        let stderr = std::fs::read_to_string(self.stderr.path()).unwrap_or_default();
        panic!("{:?}: {what} (exit {status:?}); stderr:\n{stderr}", self.tool);
    }

    /// Reads lines until one starts with `prefix` and satisfies `accept`.
    fn wait_for(&mut self, prefix: &str, timeout: Duration, accept: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix)
                        && accept(rest)
                    {
                        return rest.to_owned();
                    }
                }
                Err(_) => self.failure(&format!("no `{prefix}` line within {timeout:?}")),
            }
        }
    }

    /// Waits for `done` and a successful exit; returns the upload URL and, if the client reported one, the key.
    fn finish(mut self, timeout: Duration) -> (String, Option<String>) {
        let done = self.wait_for("done ", timeout, |_| true);
        let mut child = self.child.take().expect("child");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().expect("polling the client") {
                break status;
            }
            if Instant::now() > deadline {
                self.child = Some(child);
                self.failure("did not exit after `done`");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !status.success() {
            self.child = Some(child);
            self.failure("exited with failure");
        }
        let mut parts = done.split_whitespace();
        let url = parts.next().expect("done line has the URL").to_owned();
        let key = parts.next().filter(|k| *k != "null").map(str::to_owned);
        (url, key)
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The upload's status must name a complete file whose bytes hash like `expected`.
async fn assert_uploaded(api: &Api, url: &str, reported_key: Option<&str>, expected: &[u8]) {
    let path = url.find("/uploads/").map(|i| &url[i..]).expect("an /uploads/ URL");
    let response = api
        .http
        .get(api.url(path))
        .bearer_auth(api.token.as_deref().expect("signed in"))
        .send()
        .await
        .expect("GET /uploads/{id}");
    let status: Value = response.json().await.expect("status JSON");
    assert_eq!(status["complete"], true, "{status}");
    let key = status["file"]["key"].as_str().expect("the file's key").to_owned();
    if let Some(reported) = reported_key {
        assert_eq!(reported, key, "the key in Handoff-File-Key is the file's key");
    }
    assert_eq!(status["file"]["sha256"], sha256_hex(expected));
    assert_eq!(status["file"]["name"], "payload.bin");
    let bytes = api.download(&key).await;
    assert_eq!(sha256_hex(&bytes), sha256_hex(expected));
}

fn write_payload(dir: &Path, len: usize, seed: u64) -> (PathBuf, Vec<u8>) {
    let bytes = random_bytes(len, seed);
    let path = dir.join("payload.bin");
    std::fs::write(&path, &bytes).expect("writing the payload");
    (path, bytes)
}

async fn chunked_and_whole(tool: Tool) {
    if !available(tool) {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let api = server.client().signup_and_signin("interop", PASSWORD).await;
    let token = api.token.clone().unwrap();
    let files = tempfile::tempdir().unwrap();
    for (chunk, len) in [(MIB, 5 * MIB + 123), (0, 3 * MIB + 7), (64 * 1024, 200_000), (MIB, 0)] {
        let (path, bytes) = write_payload(files.path(), len, len as u64 + 1);
        let client = ClientProcess::spawn(tool, &server.base, &token, &path, chunk, 0);
        let (url, key) = client.finish(Duration::from_secs(60));
        assert_uploaded(&api, &url, key.as_deref(), &bytes).await;
    }
}

/// Where the killed server keeps its state: the self-hosted default, or PostgreSQL and S3 (s3s-fs in this process).
enum Stores {
    Embedded,
    Scaled {
        database: handoff_db::testing::TestDatabase,
        s3: handoff_storage::testing::TestS3,
    },
}

/// Reads an upload's lease straight from the metadata store the server uses, to time a SIGKILL.
enum LeaseProbe {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

fn now_micros() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970");
    i64::try_from(since.as_micros()).expect("micros fit i64")
}

impl LeaseProbe {
    async fn open(stores: &Stores, data_dir: &Path) -> Self {
        use sqlx::Connection as _;
        match stores {
            Stores::Embedded => {
                let options = sqlx::sqlite::SqliteConnectOptions::new().filename(data_dir.join("handoff.db"));
                Self::Sqlite(
                    sqlx::SqliteConnection::connect_with(&options)
                        .await
                        .expect("opening the SQLite file"),
                )
            }
            Stores::Scaled { database, .. } => Self::Postgres(
                sqlx::PgConnection::connect(&database.url)
                    .await
                    .expect("connecting to PostgreSQL"),
            ),
        }
    }

    /// The upload's `lease_until` (Unix microseconds), if a lease is recorded.
    async fn lease_until(&mut self, id: &str) -> Option<i64> {
        let sql = "SELECT lease_until FROM upload_sessions WHERE id = $1";
        let until: Option<Option<i64>> = match self {
            Self::Sqlite(c) => sqlx::query_scalar(sql).bind(id).fetch_optional(c).await,
            Self::Postgres(c) => sqlx::query_scalar(sql).bind(id).fetch_optional(c).await,
        }
        .expect("reading the upload's lease");
        until.flatten()
    }

    /// Polls until an append has just taken the lease, SIGKILLs the server, and says whether the lease was still
    /// held when the process died.
    async fn kill_while_leased(&mut self, server: &mut Server, id: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // A fresh lease (most of its period left) is one an append holds right now.
            if self
                .lease_until(id)
                .await
                .is_some_and(|until| until > now_micros() + 1_000_000)
            {
                server.kill_now();
                break;
            }
            assert!(Instant::now() < deadline, "no append took the lease within a minute");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.lease_until(id).await.is_some_and(|until| until > now_micros())
    }
}

async fn resume_after_sigkill(tool: Tool, scaled: bool) {
    if !available(tool) {
        return;
    }
    let stores = match scaled {
        false => Stores::Embedded,
        true => {
            let Some(admin) = handoff_db::testing::postgres_admin_url() else {
                eprintln!("skipping: HANDOFF_TEST_POSTGRES_URL is not set");
                return;
            };
            Stores::Scaled {
                database: handoff_db::testing::TestDatabase::create(&admin).await,
                s3: handoff_storage::testing::TestS3::start().await,
            }
        }
    };
    let data = tempfile::tempdir().unwrap();
    // The default lease and, for tus-js-client, its default retries: the killed process's lease must run out
    // before an unmodified client's retries give up.
    let mut env: Vec<(String, String)> = Vec::new();
    if let Stores::Scaled { database, s3 } = &stores {
        env.push(("HANDOFF_DATABASE_URL".to_owned(), database.url.clone()));
        env.push(("HANDOFF_STORAGE_URL".to_owned(), s3.storage_url("tus")));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut server = Server::start(data.path(), &env);
    let listen = server.addr.to_string();
    let api = server.client().signup_and_signin("interop", PASSWORD).await;
    let token = api.token.clone().unwrap();
    let files = tempfile::tempdir().unwrap();
    let (path, bytes) = write_payload(files.path(), 24 * MIB + 321, 77);
    let mut client = ClientProcess::spawn(tool, &server.base, &token, &path, MIB, 150);
    let started = client.wait_for("url ", Duration::from_secs(30), |u| u.contains("/uploads/"));
    client.wait_for("progress ", Duration::from_secs(60), |n| {
        n.parse::<usize>().is_ok_and(|n| n >= 3 * MIB)
    });
    // Kill the server while an append holds the upload's lease, so that the restarted server finds the dead
    // process's lease and the client's retries must outlast it. A kill that raced the lease's release proves
    // nothing: then restart and try again on a later chunk.
    let id = started.rsplit('/').next().expect("an upload id").to_owned();
    let mut probe = LeaseProbe::open(&stores, data.path()).await;
    let mut caught = false;
    for _ in 0..8 {
        caught = probe.kill_while_leased(&mut server, &id).await;
        server.wait_exit(Duration::from_secs(10));
        drop(server);
        std::thread::sleep(Duration::from_millis(300));
        server = Server::start_on(data.path(), &listen, &env);
        if caught {
            break;
        }
    }
    assert!(
        caught,
        "{tool:?}: the server was never killed while an append held the lease"
    );
    let (url, key) = client.finish(Duration::from_secs(120));
    assert_eq!(
        url, started,
        "the client resumed its upload rather than starting another"
    );
    let api = Api::new(&server.base).with_token(&token);
    assert_uploaded(&api, &url, key.as_deref(), &bytes).await;
    if let Stores::Scaled { s3, .. } = &stores {
        assert!(
            !data.path().join("storage").exists(),
            "the scaled server used no local storage"
        );
        assert!(std::fs::read_dir(s3.root.path().join(&s3.bucket)).unwrap().count() > 0);
    }
    drop(server);
    drop(stores);
}

#[tokio::test]
async fn tus_js_client_uploads_chunked_and_whole() {
    chunked_and_whole(Tool::TusJsClient).await;
}

#[tokio::test]
async fn tuspy_uploads_chunked_and_whole() {
    chunked_and_whole(Tool::Tuspy).await;
}

#[tokio::test]
async fn tus_js_client_resumes_after_the_server_is_killed() {
    resume_after_sigkill(Tool::TusJsClient, false).await;
}

#[tokio::test]
async fn tuspy_resumes_after_the_server_is_killed() {
    resume_after_sigkill(Tool::Tuspy, false).await;
}

// Multi-threaded: the in-process S3 server must keep answering while the test waits on the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_js_client_resumes_on_s3_after_the_server_is_killed() {
    resume_after_sigkill(Tool::TusJsClient, true).await;
}
