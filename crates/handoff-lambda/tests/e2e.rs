//! The end-to-end local run of the AWS deployment (issue 7): the real `handoff-lambda` binary behind cargo-lambda's
//! emulator (`cargo lambda watch`: the Lambda Runtime API and a Function URL), configured with the SAM template's
//! own environment, against local stand-ins for the AWS services:
//!
//! - **DynamoDB and Cognito**: moto's server (`handoff_dynamo::testing`). A user pool, a public app client and a
//!   user are made through the Cognito API over HTTP, and the user signs in with `USER_PASSWORD_AUTH` for a real
//!   Cognito access token (signed by moto's pool key, issuer `https://cognito-idp.<region>.amazonaws.com/<pool>`).
//!   That issuer cannot be reached here, so the function is given the pool's JWKS on moto's server through
//!   `auth.oidc[].jwks_url` (an existing setting); the issuer, `client_id` and `token_use` are checked as on AWS.
//! - **S3**: s3s-fs in this process (`handoff_storage::testing::TestS3`), which checks SigV4 signatures of
//!   requests and presigned URLs, so a tampered URL is really refused.
//!
//! The story: an anonymous request is `401` problem+json; the Cognito token signs in (`/auth/me`); a 12 MiB file
//! goes up as a direct upload session in three parts that curl `PUT`s straight to the presigned S3 URLs; the
//! session completes in steps (one invocation each, the progress kept in DynamoDB) and answers the same file when
//! asked again; the file comes back through `GET /files/{key}/download-url` and curl, byte for byte.
//!
//! The emulator runs with `--only-lambda-apis`, and the function is the binary cargo built for this test
//! (`CARGO_BIN_EXE_handoff-lambda`), started with the Runtime API's address: nothing is compiled a second time.
//! `HANDOFF_TEST_CARGO_LAMBDA` names the `cargo-lambda` executable and `HANDOFF_TEST_MOTO_SERVER` moto's server;
//! without them the test is skipped, unless `CI` is set (`.ci/run` installs both).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use handoff_dynamo::testing::{TestTable, moto_server};
use handoff_storage::testing::{ACCESS_KEY, REGION, SECRET_KEY, TestS3};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

const MIB: usize = 1 << 20;
/// The file: two full parts of 5 MiB (S3's smallest) and a shorter last one.
const FILE_SIZE: usize = 12 * MIB + 4321;
const PART_SIZE: usize = 5 * MIB;
const STACK: &str = "handoff-e2e";

/// The `cargo-lambda` executable to run the emulator with. A CI run that would silently skip this is a failure.
fn cargo_lambda() -> Option<String> {
    match std::env::var("HANDOFF_TEST_CARGO_LAMBDA") {
        Ok(path) if !path.is_empty() => Some(path),
        _ if std::env::var_os("CI").is_some() => panic!(
            "the Lambda end-to-end run would be skipped in CI: set HANDOFF_TEST_CARGO_LAMBDA to cargo-lambda \
             (.ci/run installs it)"
        ),
        _ => None,
    }
}

/// curl, the real client of the presigned URLs (required when `CI` is set).
fn curl_available() -> bool {
    let found = Command::new("curl").arg("--version").output().is_ok();
    assert!(
        found || std::env::var_os("CI").is_none(),
        "curl is required when CI is set"
    );
    found
}

/// A process of this test, in a process group of its own: dropping it (also when the test panics) kills the
/// group, so nothing it started outlives the test, and shows the end of its log if the test failed.
struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(name: &'static str, mut command: Command, log: PathBuf) -> Self {
        use std::os::unix::process::CommandExt as _;
        let out = File::create(&log).unwrap();
        command
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0);
        let child = command.spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self { name, child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics (with the log) if the process has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("{} exited: {status} (its log follows)", self.name);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // The group id is the child's pid, which stays reserved until the child is reaped below.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: String = log.chars().skip(log.chars().count().saturating_sub(6000)).collect();
            eprintln!("---- {} (last lines of its log) ----\n{tail}", self.name);
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

/// The Cognito user-pool API of moto's server (JSON over HTTP, as the AWS CLI speaks it).
struct Cognito {
    http: reqwest::Client,
    endpoint: String,
}

impl Cognito {
    async fn call(&self, action: &str, body: Value) -> Value {
        let response = self
            .http
            .post(format!("{}/", self.endpoint))
            .header("x-amz-target", format!("AWSCognitoIdentityProviderService.{action}"))
            .header("content-type", "application/x-amz-json-1.1")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "Cognito {action}: {status} {text}");
        serde_json::from_str(&text).unwrap()
    }
}

fn template() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/aws/template.yaml");
    serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The template's one resource of type `kind`.
fn resource<'a>(template: &'a Value, kind: &str) -> &'a Value {
    let mut all = template["Resources"]
        .as_object()
        .unwrap()
        .values()
        .filter(|r| r["Type"] == kind);
    let first = all.next().unwrap_or_else(|| panic!("no {kind} in the template"));
    assert!(all.next().is_none(), "more than one {kind} in the template");
    first
}

/// The stack's values in the local run, for the template's `Ref`s and `${…}`s.
struct Stack<'a> {
    table: &'a str,
    bucket: &'a str,
    pool: &'a str,
    client: &'a str,
}

impl Stack<'_> {
    fn value(&self, name: &str, template: &Value) -> Option<String> {
        Some(match name {
            "AWS::Region" => REGION.to_owned(),
            "AWS::StackName" => STACK.to_owned(),
            "AWS::NoValue" => return None,
            "Table" => self.table.to_owned(),
            "Bucket" => self.bucket.to_owned(),
            "UserPool" => self.pool.to_owned(),
            "UserPoolClient" => self.client.to_owned(),
            parameter => match &template["Parameters"][parameter]["Default"] {
                Value::String(s) => s.clone(),
                Value::Null => panic!("the template refers to {parameter}: give the local run a value for it"),
                other => other.to_string(),
            },
        })
    }

    /// A parameter's default in the template.
    fn parameter(&self, name: &str) -> String {
        self.value(name, &template()).unwrap()
    }

    /// One value of the function's `Environment`, as CloudFormation would resolve it for this stack with the
    /// parameters at their defaults (`None`: left out).
    fn resolve(&self, template: &Value, value: &Value) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Object(map) => {
                if let Some(name) = map.get("Ref").and_then(Value::as_str) {
                    return self.value(name, template);
                }
                if let Some(sub) = map.get("Fn::Sub").and_then(Value::as_str) {
                    let mut out = String::new();
                    let mut rest = sub;
                    while let Some((before, after)) = rest.split_once("${") {
                        let (name, tail) = after.split_once('}').unwrap();
                        out.push_str(before);
                        out.push_str(&self.value(name, template).unwrap());
                        rest = tail;
                    }
                    out.push_str(rest);
                    return Some(out);
                }
                if let Some([condition, _, otherwise]) = map.get("Fn::If").and_then(Value::as_array).map(Vec::as_slice)
                {
                    // The conditions are "a parameter differs from its default": false here.
                    assert!(condition.is_string(), "{value}");
                    return self.resolve(template, otherwise);
                }
                panic!("unexpected intrinsic in the function's environment: {value}")
            }
            other => panic!("unexpected environment value {other}"),
        }
    }

    /// The function's environment from `deploy/aws/template.yaml`.
    fn environment(&self) -> Vec<(String, String)> {
        let template = template();
        let function = resource(&template, "AWS::Serverless::Function");
        function["Properties"]["Environment"]["Variables"]
            .as_object()
            .unwrap()
            .iter()
            .filter_map(|(name, value)| self.resolve(&template, value).map(|v| (name.clone(), v)))
            .collect()
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Deterministic bytes that do not compress.
fn file_bytes() -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    (0..FILE_SIZE)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[3]
        })
        .collect()
}

/// Runs curl with `args`, writing the body to `output` (off the async threads: the S3 server runs on them);
/// returns the HTTP status it got.
async fn curl(args: Vec<String>, output: Option<&Path>) -> u16 {
    let output = output.map_or_else(|| "/dev/null".into(), |p| p.display().to_string());
    tokio::task::spawn_blocking(move || {
        let out = Command::new("curl")
            .args(["-sS", "-w", "%{http_code}", "-o", &output])
            .args(&args)
            .output()
            .unwrap();
        let status = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            !status.is_empty() && status != "000",
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        status.parse().unwrap()
    })
    .await
    .unwrap()
}

/// Changes one hex digit of the URL's SigV4 signature (it stays well-formed, just wrong).
fn tamper(url: &str) -> String {
    let marker = "X-Amz-Signature=";
    let at = url.find(marker).unwrap_or_else(|| panic!("not a presigned URL")) + marker.len();
    let flipped = if &url[at..=at] == "0" { "1" } else { "0" };
    format!("{}{flipped}{}", &url[..at], &url[at + 1..])
}

/// The function behind the emulator, reached as a Function URL.
struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn send(&self, request: reqwest::RequestBuilder) -> (reqwest::StatusCode, String, Value) {
        let response = request.send().await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = response.bytes().await.unwrap();
        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (status, content_type, json)
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (reqwest::StatusCode, String, Value) {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        self.send(request).await
    }

    async fn post(&self, path: &str, token: &str, body: Option<Value>) -> (reqwest::StatusCode, Value) {
        let mut request = self.http.post(format!("{}{path}", self.base)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let (status, _, json) = self.send(request).await;
        (status, json)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lambda_function_serves_a_direct_upload_under_the_emulator() {
    let started = Instant::now();
    let (Some(moto), Some(cargo_lambda)) = (moto_server(), cargo_lambda()) else {
        eprintln!("skipping: set HANDOFF_TEST_MOTO_SERVER and HANDOFF_TEST_CARGO_LAMBDA (.ci/run installs both)");
        return;
    };
    if !curl_available() {
        eprintln!("skipping: curl not found");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    handoff_storage::install_tls_provider(); // reqwest is built without a default one in this workspace
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();

    // The stack's resources. The table is made by `connect`, with the key schema of the template's table
    // (tests/template.rs checks they agree); the function opens it with `ensure=false`, as deployed.
    let s3 = TestS3::start().await;
    let table = TestTable::create(&moto);
    drop(table.store().await);
    let cognito = Cognito {
        http: http.clone(),
        endpoint: handoff_dynamo::testing::endpoint(&moto).to_owned(),
    };
    // The pool and its client with the template's password policy, usernames and auth flows.
    let template = template();
    let properties = |kind: &str| resource(&template, kind)["Properties"].clone();
    let pool_properties = properties("AWS::Cognito::UserPool");
    let pool = json!({
        "PoolName": STACK,
        "Policies": pool_properties["Policies"],
        "UsernameConfiguration": pool_properties["UsernameConfiguration"],
        "AutoVerifiedAttributes": pool_properties["AutoVerifiedAttributes"],
    });
    let pool = cognito.call("CreateUserPool", pool).await["UserPool"]["Id"]
        .as_str()
        .unwrap()
        .to_owned();
    let client_properties = properties("AWS::Cognito::UserPoolClient");
    let mut client = json!({"UserPoolId": pool, "ClientName": "handoff"});
    for name in [
        "GenerateSecret",
        "ExplicitAuthFlows",
        "AccessTokenValidity",
        "TokenValidityUnits",
    ] {
        client[name] = client_properties[name].clone();
    }
    let client = cognito.call("CreateUserPoolClient", client).await["UserPoolClient"]["ClientId"]
        .as_str()
        .unwrap()
        .to_owned();
    let password = "a long passphrase";
    cognito
        .call(
            "SignUp",
            json!({"ClientId": client, "Username": "alice", "Password": password,
                   "UserAttributes": [{"Name": "email", "Value": "alice@example.com"}]}),
        )
        .await;
    cognito
        .call("AdminConfirmSignUp", json!({"UserPoolId": pool, "Username": "alice"}))
        .await;
    let signed_in = cognito
        .call(
            "InitiateAuth",
            json!({"ClientId": client, "AuthFlow": "USER_PASSWORD_AUTH",
                   "AuthParameters": {"USERNAME": "alice", "PASSWORD": password}}),
        )
        .await;
    let token = signed_in["AuthenticationResult"]["AccessToken"]
        .as_str()
        .unwrap()
        .to_owned();

    // The emulator: the Runtime API the function polls, and the Function URL clients call.
    let port = free_port();
    let mut emulator_command = Command::new(&cargo_lambda);
    emulator_command
        .args([
            "lambda",
            "watch",
            "--only-lambda-apis",
            "--ignore-changes",
            "-A",
            "127.0.0.1",
            "-P",
        ])
        .arg(port.to_string())
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    let mut emulator = Process::spawn("cargo lambda watch", emulator_command, work.path().join("emulator.log"));
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
        emulator.assert_running();
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the emulator did not listen on {address}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The function, configured by the template's environment for this stack, plus what only the local run needs:
    // the emulators' endpoints, the pool's JWKS (its issuer URL is AWS's), and 5 MiB parts for a small file.
    let stack = Stack {
        table: &table.name,
        bucket: &s3.bucket,
        pool: &pool,
        client: &client,
    };
    let moto_endpoint = handoff_dynamo::testing::endpoint(&moto);
    let mut environment = stack.environment();
    for (name, value) in &mut environment {
        match name.as_str() {
            "HANDOFF_DATABASE_URL" => value.push_str(&format!("&endpoint={moto_endpoint}")),
            "HANDOFF_STORAGE_URL" => value.push_str(&format!("&endpoint={}&path_style=true", s3.endpoint())),
            "HANDOFF_DATA_DIR" => *value = work.path().join("data").display().to_string(),
            _ => {}
        }
    }
    assert!(
        environment
            .iter()
            .any(|(n, v)| n == "HANDOFF_DATABASE_URL" && v.contains("ensure=false"))
    );
    environment.extend(
        [
            (
                "HANDOFF_AUTH__OIDC__0__JWKS_URL",
                format!("{moto_endpoint}/{pool}/.well-known/jwks.json"),
            ),
            ("HANDOFF_DIRECT__PART_SIZE", PART_SIZE.to_string()),
            // Completion in steps of about 1 MiB, as a file far beyond one request's 20 s of reading would go.
            ("HANDOFF_DIRECT__COMPLETE_BUDGET_SECS", "0".to_owned()),
            // What Lambda gives every function: its identity, and the role's credentials (here the S3 server's
            // keys; moto takes any).
            ("AWS_LAMBDA_RUNTIME_API", format!("http://{address}/.rt")),
            ("AWS_LAMBDA_FUNCTION_NAME", "_".to_owned()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "1".to_owned()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512".to_owned()),
            ("AWS_REGION", REGION.to_owned()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ]
        .map(|(n, v)| (n.to_owned(), v)),
    );
    let mut function_command = Command::new(env!("CARGO_BIN_EXE_handoff-lambda"));
    function_command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(environment);
    let mut function = Process::spawn("handoff-lambda", function_command, work.path().join("function.log"));
    let api = Api {
        http: http.clone(),
        base: format!("http://{address}"),
    };

    // The first request waits in the emulator until the function has initialised and asks for work (or, if its
    // init fails, until we notice that it exited).
    let init = Instant::now();
    let ready = api.get("/healthz", None);
    tokio::pin!(ready);
    let (status, _, health) = loop {
        tokio::select! {
            answer = &mut ready => break answer,
            () = tokio::time::sleep(Duration::from_millis(100)) => function.assert_running(),
        }
    };
    assert_eq!(status, 200, "{health}");
    eprintln!(
        "function ready {:?} after start (cold start, through the emulator)",
        init.elapsed()
    );

    // Anonymous: refused as problem+json. Then the Cognito token signs alice in.
    let (status, content_type, problem) = api.get("/auth/me", None).await;
    assert_eq!(status, 401, "{problem}");
    assert_eq!(content_type, "application/problem+json");
    assert_eq!(problem["code"], "missing_token");
    let (status, _, me) = api.get("/auth/me", Some(&token)).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["username"], "cognito:alice");

    // A direct upload session of three parts.
    let bytes = file_bytes();
    let sha256 = sha256_hex(&bytes);
    let (status, session) = api
        .post(
            "/upload-sessions",
            &token,
            Some(json!({"name": "video.bin", "size": FILE_SIZE, "sha256": sha256})),
        )
        .await;
    assert_eq!(status, 201, "{session}");
    assert_eq!(session["part_count"], 3);
    assert_eq!(session["part_size"], PART_SIZE);
    let id = session["id"].as_str().unwrap();
    let (status, urls) = api
        .post(
            &format!("/upload-sessions/{id}/parts"),
            &token,
            Some(json!({"part_numbers": [1, 2, 3]})),
        )
        .await;
    assert_eq!(status, 200, "{urls}");
    let urls: Vec<String> = urls["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["url"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(urls.len(), 3);
    assert!(urls.iter().all(|u| u.starts_with(&s3.endpoint())), "{urls:?}");

    // curl PUTs each part straight to S3; a URL with one wrong signature digit is refused by S3 itself.
    let mut parts = Vec::new();
    for (n, chunk) in bytes.chunks(PART_SIZE).enumerate() {
        let part = work.path().join(format!("part-{}", n + 1));
        std::fs::write(&part, chunk).unwrap();
        parts.push(part.display().to_string());
    }
    assert_eq!(parts.len(), 3);
    let forged = curl(vec!["-T".into(), parts[0].clone(), tamper(&urls[0])], None).await;
    assert_eq!(forged, 403, "a tampered part URL was accepted");
    for (part, url) in parts.iter().zip(&urls) {
        assert_eq!(curl(vec!["-T".into(), part.clone(), url.clone()], None).await, 200);
    }

    // Completion: one invocation per step (202 with the progress, kept in DynamoDB), until 201.
    let complete = format!("/upload-sessions/{id}/complete");
    let mut steps = Vec::new();
    let file = loop {
        let (status, body) = api.post(&complete, &token, None).await;
        if status == 201 {
            break body;
        }
        assert_eq!(status, 202, "{body}");
        steps.push(body["verified_bytes"].as_u64().unwrap());
        assert!(steps.len() < 100, "completion does not move forward: {steps:?}");
    };
    assert!(steps.len() >= 2 && steps.is_sorted(), "{steps:?}");
    assert_eq!(file["sha256"], sha256);
    assert_eq!(file["size"], FILE_SIZE);
    let key = file["key"].as_str().unwrap();
    // Asked again, as after a lost answer: the same file.
    let (status, again) = api.post(&complete, &token, None).await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(again["key"], file["key"]);

    // The download: a presigned GET minted by the function after the access check, fetched by curl.
    let (status, _, link) = api.get(&format!("/files/{key}/download-url"), Some(&token)).await;
    assert_eq!(status, 200, "{link}");
    let url = link["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with(&s3.endpoint()), "{url}");
    let copy = work.path().join("copy");
    assert_eq!(curl(vec![url.clone()], Some(&copy)).await, 200);
    assert_eq!(
        sha256_hex(&std::fs::read(&copy).unwrap()),
        sha256,
        "other bytes came back"
    );
    assert_eq!(
        curl(vec![tamper(&url)], None).await,
        403,
        "a tampered download URL was accepted"
    );
    // It lives as long as the template's PresignedUrlTtlSeconds says a presigned download URL lives.
    let ttl = stack.parameter("PresignedUrlTtlSeconds");
    let expires = reqwest::Url::parse(&url)
        .unwrap()
        .query_pairs()
        .find(|(name, _)| name == "X-Amz-Expires")
        .map(|(_, value)| value.into_owned());
    assert_eq!(expires, Some(ttl), "the download URL's lifetime");
    // Downloads through the API answer with a redirect to S3 (downloads.mode = "redirect"), not with the bytes.
    let (status, _, _) = api.get(&format!("/files/{key}/content"), Some(&token)).await;
    assert_eq!(status, 302);

    function.assert_running();
    emulator.assert_running();
    eprintln!("end-to-end run took {:?}", started.elapsed());
}
