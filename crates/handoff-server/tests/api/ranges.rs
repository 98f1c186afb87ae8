//! Range and conditional requests on downloads, checked byte for byte.

use reqwest::StatusCode;

use crate::helpers::{TestApp, assert_problem, random_bytes};

async fn get(app: &TestApp, token: &str, key: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = app
        .client
        .get(app.url(&format!("/files/{key}/content")))
        .bearer_auth(token);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn single_ranges_return_exact_bytes() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bytes = random_bytes(1_000_000, 9);
    let file = app.upload_ok(&alice.token, "r.bin", bytes.clone()).await;
    let key = file["key"].as_str().unwrap();
    let n = bytes.len();
    let cases = [
        ("bytes=0-0", 0..1),
        ("bytes=10-19", 10..20),
        ("bytes=999990-", 999_990..n),
        ("bytes=-25", n - 25..n),
        ("bytes=500000-2000000", 500_000..n),
        ("bytes=0-", 0..n),
    ];
    for (range, expected) in cases {
        let response = get(&app, &alice.token, key, &[("range", range)]).await;
        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            response.headers()["content-range"],
            format!("bytes {}-{}/{n}", expected.start, expected.end - 1).as_str(),
            "{range}"
        );
        assert_eq!(
            response.headers()["content-length"],
            (expected.end - expected.start).to_string().as_str()
        );
        let body = response.bytes().await.unwrap();
        assert_eq!(&body[..], &bytes[expected], "{range}");
    }
    // The origin route honours ranges too.
    let response = app
        .client
        .get(app.url("/files"))
        .query(&[("fileName", key)])
        .bearer_auth(&alice.token)
        .header("range", "bytes=1-2")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&response.bytes().await.unwrap()[..], &bytes[1..3]);
}

#[tokio::test]
async fn unsatisfiable_ignored_and_conditional_ranges() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bytes = random_bytes(100, 10);
    let file = app.upload_ok(&alice.token, "r.bin", bytes.clone()).await;
    let key = file["key"].as_str().unwrap();
    let etag = format!("\"{}\"", file["sha256"].as_str().unwrap());

    for range in ["bytes=100-", "bytes=200-300", "bytes=-0"] {
        let response = get(&app, &alice.token, key, &[("range", range)]).await;
        assert_eq!(response.headers()["content-range"], "bytes */100", "{range}");
        assert_problem(response, StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable").await;
    }
    // Malformed, multiple or foreign-unit ranges are ignored: the whole file.
    for range in ["bytes=5-1", "bytes=0-1,5-6", "lines=1-2", "bytes=x-y", "garbage"] {
        let response = get(&app, &alice.token, key, &[("range", range)]).await;
        assert_eq!(response.status(), StatusCode::OK, "{range}");
        assert_eq!(&response.bytes().await.unwrap()[..], &bytes[..], "{range}");
    }
    // If-Range: a matching tag honours the range, a stale one sends everything.
    let response = get(&app, &alice.token, key, &[("range", "bytes=0-9"), ("if-range", &etag)]).await;
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    let response = get(
        &app,
        &alice.token,
        key,
        &[("range", "bytes=0-9"), ("if-range", "\"stale\"")],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await.unwrap().len(), 100);

    // If-None-Match: 304 with the tag and no body; a different tag gets the file.
    for value in [etag.as_str(), "*", &format!("\"other\", W/{etag}")] {
        let response = get(&app, &alice.token, key, &[("if-none-match", value)]).await;
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED, "{value}");
        assert_eq!(response.headers()["etag"], etag.as_str());
        assert!(response.bytes().await.unwrap().is_empty());
    }
    let response = get(&app, &alice.token, key, &[("if-none-match", "\"other\"")]).await;
    assert_eq!(response.status(), StatusCode::OK);

    // HEAD: headers, no body.
    let response = app
        .client
        .head(app.url(&format!("/files/{key}/content")))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-length"], "100");
    assert!(response.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn ranges_of_an_empty_file_are_unsatisfiable() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let file = app.upload_ok(&alice.token, "empty", Vec::new()).await;
    let key = file["key"].as_str().unwrap();
    let response = get(&app, &alice.token, key, &[("range", "bytes=0-")]).await;
    assert_eq!(response.headers()["content-range"], "bytes */0");
    assert_problem(response, StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable").await;
}
