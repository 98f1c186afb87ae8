//! The blob-store contract: local directory, memory and S3 (a real SigV4-checking server in-process) pass the
//! same tests. The S3 suite always runs: nothing external needs to be configured for it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt as _;
use handoff_core::{BlobId, BlobStore, StoreError};
use handoff_storage::testing::TestS3;

struct Backend {
    name: &'static str,
    store: Arc<dyn BlobStore>,
    _dir: Option<tempfile::TempDir>,
    _s3: Option<TestS3>,
}

async fn backends() -> Vec<Backend> {
    handoff_storage::install_tls_provider();
    let dir = tempfile::tempdir().unwrap();
    let local = handoff_storage::open(&format!("file://{}", dir.path().display()))
        .await
        .unwrap();
    let s3 = TestS3::start().await;
    let remote = handoff_storage::open(&s3.storage_url("contract")).await.unwrap();
    vec![
        Backend {
            name: "local",
            store: local,
            _dir: Some(dir),
            _s3: None,
        },
        Backend {
            name: "memory",
            store: handoff_storage::open("memory://").await.unwrap(),
            _dir: None,
            _s3: None,
        },
        Backend {
            name: "s3",
            store: remote,
            _dir: None,
            _s3: Some(s3),
        },
    ]
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

async fn put(store: &dyn BlobStore, bytes: &[u8], chunk: usize) -> BlobId {
    let mut writer = store.create().await.unwrap();
    for piece in bytes.chunks(chunk.max(1)) {
        writer.write(Bytes::copy_from_slice(piece)).await.unwrap();
    }
    let id = writer.id();
    writer.commit().await.unwrap();
    id
}

async fn read(store: &dyn BlobStore, id: BlobId, range: Option<std::ops::Range<u64>>) -> Vec<u8> {
    let reader = store.open(id, range).await.unwrap();
    let len = reader.len;
    let chunks: Vec<Bytes> = reader.stream.try_collect().await.unwrap();
    let bytes = chunks.concat();
    assert_eq!(bytes.len() as u64, len, "declared length matches the bytes");
    bytes
}

#[tokio::test]
async fn blobs_round_trip_whole_and_in_ranges() {
    for backend in backends().await {
        let store = backend.store.as_ref();
        // Empty, tiny, both sides of the local store's small-blob bound (64 KiB: a database row, else a file),
        // large enough for several S3 multipart parts, and chunks that straddle the local store's 1 MiB write
        // buffer (each one split across two writes).
        for (len, chunk) in [
            (0, 1),
            (1, 1),
            (4096, 1000),
            (64 << 10, 64 << 10),
            ((64 << 10) + 1, 4096),
            (100_000, 7_000),
            (20 * 1024 * 1024 + 5, 1 << 20),
            (3 * 1024 * 1024 + 17, 300_007),
        ] {
            let bytes = pattern(len);
            let id = put(store, &bytes, chunk).await;
            assert_eq!(read(store, id, None).await, bytes, "{} {len}", backend.name);
            if len > 10 {
                let r = (len as u64 / 3)..(len as u64 - 2);
                assert_eq!(
                    read(store, id, Some(r.clone())).await,
                    bytes[r.start as usize..r.end as usize]
                );
                assert_eq!(read(store, id, Some(0..1)).await, bytes[..1], "{}", backend.name);
            }
            assert!(read(store, id, Some(0..0)).await.is_empty());
        }
        store.ping().await.unwrap();
    }
}

#[tokio::test]
async fn nothing_is_visible_before_commit_and_abandoned_writes_vanish() {
    for backend in backends().await {
        let store = backend.store.as_ref();
        let mut writer = store.create().await.unwrap();
        // More than one S3 part, so a multipart upload is really in progress.
        for _ in 0..10 {
            writer.write(Bytes::from(vec![7u8; 1 << 20])).await.unwrap();
        }
        let id = writer.id();
        assert!(
            matches!(store.open(id, None).await, Err(StoreError::NotFound)),
            "{}",
            backend.name
        );
        assert!(!store.list_older_than(Duration::ZERO).await.unwrap().contains(&id));
        drop(writer);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            matches!(store.open(id, None).await, Err(StoreError::NotFound)),
            "{}",
            backend.name
        );
        store.sweep_incomplete(Duration::ZERO).await.unwrap();
        assert!(
            store.list_older_than(Duration::ZERO).await.unwrap().is_empty(),
            "{}",
            backend.name
        );
    }
}

#[tokio::test]
async fn delete_is_idempotent_and_listing_sees_committed_blobs() {
    for backend in backends().await {
        let store = backend.store.as_ref();
        let a = put(store, b"a", 1).await;
        let b = put(store, b"b", 1).await;
        let mut listed = store.list_older_than(Duration::ZERO).await.unwrap();
        listed.sort();
        let mut expected = vec![a, b];
        expected.sort();
        assert_eq!(listed, expected, "{}", backend.name);
        assert!(
            store
                .list_older_than(Duration::from_secs(3600))
                .await
                .unwrap()
                .is_empty()
        );
        // Read first: a store that keeps what it read (the local one's small blobs) must forget it on delete.
        assert_eq!(read(store, a, None).await, b"a", "{}", backend.name);
        store.delete(a).await.unwrap();
        store.delete(a).await.unwrap();
        store.delete(BlobId::generate()).await.unwrap();
        assert!(
            matches!(store.open(a, None).await, Err(StoreError::NotFound)),
            "{}",
            backend.name
        );
        assert_eq!(read(store, b, None).await, b"b");
    }
}

/// The local store keeps small blobs as rows of one database and larger ones as files: both kinds survive the
/// store being closed and opened again, and a deletion of either kind stays deleted.
#[tokio::test]
async fn local_blobs_of_both_kinds_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let (small, large) = (pattern(4096), pattern(200_000));
    let (small_id, large_id, gone_small, gone_large) = {
        let store = handoff_storage::open(&url).await.unwrap();
        let ids = (
            put(store.as_ref(), &small, 512).await,
            put(store.as_ref(), &large, 65_536).await,
            put(store.as_ref(), b"short-lived", 4).await,
            put(store.as_ref(), &pattern(100_000), 100_000).await,
        );
        store.delete(ids.2).await.unwrap();
        store.delete(ids.3).await.unwrap();
        ids
    };
    let store = handoff_storage::open(&url).await.unwrap();
    assert_eq!(read(store.as_ref(), small_id, None).await, small);
    assert_eq!(read(store.as_ref(), large_id, None).await, large);
    assert_eq!(read(store.as_ref(), small_id, Some(100..4000)).await, small[100..4000]);
    assert!(matches!(
        store.open(small_id, Some(10..4097)).await,
        Err(StoreError::Other(_))
    ));
    for gone in [gone_small, gone_large] {
        assert!(matches!(store.open(gone, None).await, Err(StoreError::NotFound)));
    }
    let mut listed = store.list_older_than(Duration::ZERO).await.unwrap();
    listed.sort();
    let mut expected = vec![small_id, large_id];
    expected.sort();
    assert_eq!(listed, expected);
}

/// A local blob bigger than the store's background-sync interval (64 MiB: earlier bytes are synced on a duplicate
/// descriptor while later ones are written) commits and reads back intact, also after reopening.
#[tokio::test]
async fn a_big_local_blob_synced_while_streaming_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let bytes = pattern((150 << 20) + 3);
    let id = put(handoff_storage::open(&url).await.unwrap().as_ref(), &bytes, 1 << 20).await;
    let store = handoff_storage::open(&url).await.unwrap();
    assert!(read(store.as_ref(), id, None).await == bytes, "150 MiB differ");
    let tail = (bytes.len() as u64 - 10)..(bytes.len() as u64);
    assert_eq!(read(store.as_ref(), id, Some(tail)).await, bytes[bytes.len() - 10..]);
}

/// Many small blobs committed at once (they share transactions in the local store) are each durable and
/// intact, and deletions queued among them apply to exactly the blobs named.
#[tokio::test]
async fn concurrent_small_blobs_are_kept_apart() {
    for backend in backends().await {
        let store = backend.store.clone();
        let puts = (0..200_usize).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let bytes = pattern(1 + i * 37);
                let id = put(store.as_ref(), &bytes, 1000).await;
                if i % 3 == 0 {
                    store.delete(id).await.unwrap();
                }
                (i, id, bytes)
            })
        });
        for handle in futures::future::join_all(puts).await {
            let (i, id, bytes) = handle.unwrap();
            if i % 3 == 0 {
                assert!(
                    matches!(store.open(id, None).await, Err(StoreError::NotFound)),
                    "{} {i}",
                    backend.name
                );
            } else {
                assert_eq!(read(store.as_ref(), id, None).await, bytes, "{} {i}", backend.name);
            }
        }
        assert_eq!(
            store.list_older_than(Duration::ZERO).await.unwrap().len(),
            133,
            "{}",
            backend.name
        );
    }
}

#[tokio::test]
async fn presigned_urls_work_with_a_plain_client_and_only_as_signed() {
    for backend in backends().await {
        let store = backend.store.as_ref();
        let bytes = pattern(300_000);
        let id = put(store, &bytes, 65_536).await;
        let url = store
            .presigned_get(
                id,
                Duration::from_secs(60),
                "attachment; filename=\"a.bin\"",
                "application/octet-stream",
            )
            .await
            .unwrap();
        let Some(url) = url else {
            assert_ne!(backend.name, "s3", "S3 must sign URLs");
            continue;
        };
        assert!(
            !url.contains(handoff_storage::testing::SECRET_KEY),
            "the secret never appears in a URL"
        );
        let client = reqwest::Client::new();
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.bytes().await.unwrap(), bytes);
        let ranged = client.get(&url).header("range", "bytes=10-19").send().await.unwrap();
        assert_eq!(ranged.status(), 206);
        assert_eq!(ranged.bytes().await.unwrap(), bytes[10..20]);
        // Tampering with the signed query or the method is refused by the store.
        let tampered = url.replace("a.bin", "b.bin");
        assert_eq!(client.get(&tampered).send().await.unwrap().status(), 403);
        assert!(client.delete(&url).send().await.unwrap().status().is_client_error());
        assert_eq!(read(store, id, None).await, bytes, "still there");
    }
}

/// Sends part `number` the way a client would: to the store's presigned URL with a plain HTTP client, or (stores
/// that cannot sign) through `put_direct_part`, as the server does with the bodies it receives.
async fn send_part(store: &dyn BlobStore, blob: BlobId, state: &str, number: u32, bytes: Vec<u8>) -> String {
    match store
        .direct_part_url(blob, state, number, Duration::from_secs(60))
        .await
        .unwrap()
    {
        Some(url) => {
            let response = reqwest::Client::new().put(url).body(bytes).send().await.unwrap();
            assert!(response.status().is_success(), "{}", response.status());
            response.headers()["etag"].to_str().unwrap().to_owned()
        }
        None => {
            let body = futures::stream::iter([Ok(Bytes::from(bytes))]);
            store
                .put_direct_part(blob, state, number, Box::pin(body))
                .await
                .unwrap()
        }
    }
}

#[tokio::test]
async fn direct_uploads_join_parts_at_the_blob_and_only_as_listed() {
    for backend in backends().await {
        let store = backend.store.as_ref();
        let part = usize::try_from(store.min_part_size()).unwrap().max(1000);
        let bytes = pattern(2 * part + 77);
        let blob = BlobId::generate();
        let state = store.begin_direct(blob).await.unwrap();
        assert!(
            store.direct_parts(blob, &state).await.unwrap().is_empty(),
            "{}",
            backend.name
        );
        let tag3 = send_part(store, blob, &state, 3, bytes[2 * part..].to_vec()).await;
        let tag1 = send_part(store, blob, &state, 1, bytes[..part].to_vec()).await;
        // Part 2 sent twice: the second replaces the first.
        let stale = send_part(store, blob, &state, 2, pattern(part)).await;
        let tag2 = send_part(store, blob, &state, 2, bytes[part..2 * part].to_vec()).await;
        let listed = store.direct_parts(blob, &state).await.unwrap();
        let sizes: Vec<(u32, u64)> = listed.iter().map(|p| (p.number, p.size)).collect();
        assert_eq!(
            sizes,
            vec![(1, part as u64), (2, part as u64), (3, 77)],
            "{}",
            backend.name
        );
        if let Some(etag) = &listed[1].etag {
            assert_eq!(etag.as_str(), tag2.trim_matches('"'), "{}", backend.name);
            let wrong = [(1, tag1.clone()), (2, stale), (3, tag3.clone())];
            assert!(
                matches!(
                    store.complete_direct(blob, &state, &wrong).await,
                    Err(StoreError::Conflict)
                ),
                "{}",
                backend.name
            );
        }
        // Nothing is visible before completion.
        assert!(
            matches!(store.open(blob, None).await, Err(StoreError::NotFound)),
            "{}",
            backend.name
        );
        let missing = [(1, tag1.clone()), (3, tag3.clone())];
        assert!(
            store.complete_direct(blob, &state, &missing).await.is_err(),
            "{}",
            backend.name
        );
        let parts = [(1, tag1), (2, tag2), (3, tag3)];
        store.complete_direct(blob, &state, &parts).await.unwrap();
        assert_eq!(read(store, blob, None).await, bytes, "{}", backend.name);
        // Idempotent, and the blob is an ordinary committed blob.
        store.complete_direct(blob, &state, &parts).await.unwrap();
        assert!(store.list_older_than(Duration::ZERO).await.unwrap().contains(&blob));

        // Abort discards the parts and is idempotent.
        let other = BlobId::generate();
        let state = store.begin_direct(other).await.unwrap();
        send_part(store, other, &state, 1, pattern(10)).await;
        store.abort_direct(other, &state).await.unwrap();
        store.abort_direct(other, &state).await.unwrap();
        let left = store.direct_parts(other, &state).await;
        assert!(left.is_err() || left.unwrap().is_empty(), "{}", backend.name);
        assert!(matches!(store.open(other, None).await, Err(StoreError::NotFound)));
    }
}
