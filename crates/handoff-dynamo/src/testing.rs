//! Test support (feature `testing`): DynamoDB served by moto's server, for suites that must run on every backend.
//!
//! `HANDOFF_TEST_MOTO_SERVER` names the `moto_server` executable (`.ci/run` installs a pinned moto into a cached
//! venv). One server is started per test process on a free loopback port, and every store gets a table of its
//! own, so tests stay independent. The server is started through a small shell wrapper that kills it when the
//! test process's end of its stdin pipe closes, so no server outlives the tests.
//!
//! moto applies a conditional write as "check, then write" without a lock, and its server handles requests on
//! several threads, so two racing conditional writes could both pass their check there, which DynamoDB never
//! allows (it applies writes to an item one at a time). The server is therefore run (with the Python beside
//! `moto_server`) as moto's own WSGI app behind one lock: requests still arrive concurrently, are applied one at
//! a time, as DynamoDB applies writes to one item.

#![allow(clippy::expect_used)] // test support: a failure here is a broken test environment

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use handoff_core::MetadataStore;

/// The running server: the wrapper process (and its stdin, whose closing stops the server) and its endpoint.
#[derive(Debug)]
struct Server {
    _wrapper: Mutex<Child>,
    endpoint: String,
}

static SERVER: OnceLock<Server> = OnceLock::new();

/// moto's server (as `moto_server` builds it) with requests applied one at a time.
const SERIALISED_MOTO: &str = r#"
import sys, threading
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
app = DomainDispatcherApplication(create_backend_app)
lock = threading.Lock()
def serialised(environ, start_response):
    with lock:
        return list(app(environ, start_response))
run_simple("127.0.0.1", int(sys.argv[1]), serialised, threaded=True, request_handler=MotoRequestHandler)
"#;

/// The `moto_server` executable to test against, if any. A CI run that would silently skip DynamoDB is a failure.
pub fn moto_server() -> Option<String> {
    match std::env::var("HANDOFF_TEST_MOTO_SERVER") {
        Ok(path) if !path.is_empty() => Some(path),
        _ if std::env::var_os("CI").is_some() => panic!(
            "DynamoDB suite would be skipped in CI: set HANDOFF_TEST_MOTO_SERVER to moto's moto_server \
             (.ci/run installs it)"
        ),
        _ => None,
    }
}

fn start(executable: &str) -> Server {
    assert!(
        std::path::Path::new(executable).is_file(),
        "HANDOFF_TEST_MOTO_SERVER={executable}: no such file (.ci/run installs moto)"
    );
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port();
    let python = std::path::Path::new(executable)
        .parent()
        .map(|bin| bin.join("python"))
        .filter(|p| p.exists())
        .map_or_else(|| "python3".to_owned(), |p| p.display().to_string());
    // `read` returns when the test process exits (its end of the pipe closes); then the server is stopped.
    let mut wrapper = Command::new("sh")
        .arg("-c")
        .arg(r#""$0" -c "$2" "$1" >/dev/null 2>&1 & server=$!; read -r _; kill "$server""#)
        .arg(python)
        .arg(port.to_string())
        .arg(SERIALISED_MOTO)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {executable}: {e}"));
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let started = Instant::now();
    while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
        if let Ok(Some(status)) = wrapper.try_wait() {
            panic!("{executable} exited at start: {status}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{executable} did not listen on {address} within a minute"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Keep the pipe open (never written to) for the life of the process.
    if let Some(stdin) = wrapper.stdin.as_mut() {
        stdin.flush().expect("moto wrapper stdin");
    }
    Server {
        _wrapper: Mutex::new(wrapper),
        endpoint: format!("http://{address}"),
    }
}

/// The shared moto server's endpoint (`http://127.0.0.1:PORT`), started on first use. moto serves every AWS API
/// it emulates on this one port (Cognito user pools too, for the Lambda end-to-end run).
pub fn endpoint(executable: &str) -> &'static str {
    &SERVER.get_or_init(|| start(executable)).endpoint
}

/// A table of its own on the shared moto server (left behind when the test ends; moto keeps tables in memory).
#[derive(Debug)]
pub struct TestTable {
    pub name: String,
    /// `dynamodb://<name>?endpoint=…`
    pub url: String,
}

impl TestTable {
    /// A fresh table name on the moto server `executable` (started on first use).
    pub fn create(executable: &str) -> Self {
        let name = format!("handoff-test-{}", uuid::Uuid::new_v4().simple());
        let url = format!("dynamodb://{name}?region=us-east-1&endpoint={}", endpoint(executable));
        Self { name, url }
    }

    /// Opens a store on this table (creating the table).
    pub async fn store(&self) -> Arc<dyn MetadataStore> {
        crate::connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.url))
    }
}
