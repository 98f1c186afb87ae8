//! Test support (feature `test-s3`): a real S3-compatible server, s3s-fs, serving a temporary directory on a
//! loopback port with SigV4 authentication enforced, so signed requests and presigned URLs are really verified.

use std::net::SocketAddr;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub const ACCESS_KEY: &str = "handoff-test-access";
pub const SECRET_KEY: &str = "handoff-test-secret-key";
pub const REGION: &str = "us-east-1";

#[derive(Debug)]
pub struct TestS3 {
    pub address: SocketAddr,
    pub bucket: String,
    pub root: tempfile::TempDir,
    server: JoinHandle<()>,
}

impl TestS3 {
    /// Starts the server with one empty bucket.
    pub async fn start() -> Self {
        let root = tempfile::tempdir().expect("temporary directory for the S3 server");
        let bucket = "handoff-test".to_owned();
        std::fs::create_dir_all(root.path().join(&bucket)).expect("bucket directory");
        let fs = s3s_fs::FileSystem::new(root.path()).expect("s3s-fs");
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the S3 server");
        let address = listener.local_addr().expect("S3 server address");
        let server = tokio::spawn(async move {
            let http = Builder::new(TokioExecutor::new());
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let connection = http
                    .serve_connection(TokioIo::new(socket), service.clone())
                    .into_owned();
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
        });
        Self {
            address,
            bucket,
            root,
            server,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// A storage URL for Handoff, with credentials inline, under `prefix`.
    pub fn storage_url(&self, prefix: &str) -> String {
        format!(
            "s3://{}/{prefix}?endpoint={}&region={REGION}&path_style=true&access_key_id={ACCESS_KEY}&secret_access_key={SECRET_KEY}",
            self.bucket,
            self.endpoint()
        )
    }

    /// Stops answering (the port closes): for outage tests.
    pub fn stop(&self) {
        self.server.abort();
    }
}

impl Drop for TestS3 {
    fn drop(&mut self) {
        self.server.abort();
    }
}
