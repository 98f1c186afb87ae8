//! The metadata-store contract: every backend must pass these same tests. SQLite always runs; PostgreSQL joins
//! when `HANDOFF_TEST_POSTGRES_URL` is set (CI sets it, and with `CI` set a missing URL is a failure, not a skip).
//! Each test gets its own freshly created PostgreSQL database, dropped again when the test ends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use handoff_core::model::NewRefreshToken;
use handoff_core::{
    BlobId, FileCursor, FileKey, FileName, FilePatch, FileRecord, MetadataStore, NewUser, RefreshOutcome,
    SigningKeyRecord, StoreError, User, Username, Visibility,
};
use handoff_db::testing::{TestDatabase, postgres_admin_url};
use time::Duration;
use uuid::Uuid;

async fn user(store: &dyn MetadataStore, name: &str) -> User {
    store
        .create_user(NewUser {
            username: Username::parse(name).unwrap(),
            email: Some(format!("{name}@example.com")),
            password_hash: "$argon2id$fake".into(),
        })
        .await
        .unwrap()
}

fn file(owner: &User, name: &str, created_at: time::OffsetDateTime) -> FileRecord {
    FileRecord {
        key: FileKey::generate(),
        blob: BlobId::generate(),
        owner: owner.id,
        name: FileName::parse(name, 255).unwrap(),
        size: 42,
        sha256: "ab".repeat(32),
        content_type: "text/plain".into(),
        visibility: Visibility::Key,
        created_at,
        updated_at: created_at,
        team: None,
        expires_at: None,
        upload_link: None,
    }
}

#[tokio::test]
async fn users_are_unique_and_round_trip() {
    for (backend, store, _dir) in common::backends("contract.db").await {
        let alice = user(store.as_ref(), "alice").await;
        let again = store
            .create_user(NewUser {
                username: Username::parse("ALICE").unwrap(),
                email: None,
                password_hash: "x".into(),
            })
            .await;
        assert!(matches!(again, Err(StoreError::Conflict)), "{backend}: {again:?}");
        let by_name = store.user_by_username(&alice.username).await.unwrap().unwrap();
        let by_id = store.user_by_id(alice.id).await.unwrap().unwrap();
        for found in [by_name, by_id] {
            assert_eq!(found.id, alice.id, "{backend}");
            assert_eq!(found.username, alice.username);
            assert_eq!(found.email.as_deref(), Some("alice@example.com"));
            assert_eq!(
                found.created_at, alice.created_at,
                "{backend}: timestamps round-trip exactly"
            );
            // The first account of a store administers it.
            assert!(found.is_admin && !found.disabled, "{backend}");
        }
        assert!(
            store
                .user_by_username(&Username::parse("nobody").unwrap())
                .await
                .unwrap()
                .is_none()
        );
        store.ping().await.unwrap();
    }
}

#[tokio::test]
async fn files_insert_list_update_delete() {
    for (backend, store, _dir) in common::backends("contract.db").await {
        let alice = user(store.as_ref(), "alice").await;
        let bob = user(store.as_ref(), "bob").await;
        let base = handoff_core::now();
        // Five files, two sharing a timestamp, so the key breaks ties.
        let files: Vec<FileRecord> = (0..5)
            .map(|i| file(&alice, &format!("f{i}"), base + Duration::seconds(i.min(3))))
            .collect();
        store.insert_files(&files).await.unwrap();
        store.insert_files(&[file(&bob, "bobs", base)]).await.unwrap();

        let mut seen = Vec::new();
        let mut cursor: Option<FileCursor> = None;
        loop {
            let page = store.list_files(alice.id, cursor.as_ref(), 2).await.unwrap();
            if page.is_empty() {
                break;
            }
            cursor = page.last().map(FileCursor::after);
            seen.extend(page.into_iter().map(|f| f.key));
        }
        let mut expected = files.clone();
        expected.sort_by(|a, b| (b.created_at, b.key.as_str()).cmp(&(a.created_at, a.key.as_str())));
        assert_eq!(
            seen,
            expected.iter().map(|f| f.key.clone()).collect::<Vec<_>>(),
            "{backend}"
        );

        let first = &files[0];
        let stored = store.file_by_key(&first.key).await.unwrap().unwrap();
        assert_eq!(
            (stored.size, &stored.sha256, stored.blob),
            (42, &first.sha256, first.blob),
            "{backend}"
        );
        assert!(store.blob_is_referenced(first.blob).await.unwrap());
        assert!(!store.blob_is_referenced(BlobId::generate()).await.unwrap());

        let later = base + Duration::minutes(5);
        let patch = FilePatch {
            name: Some(FileName::parse("renamed", 255).unwrap()),
            visibility: Some(Visibility::Private),
        };
        let updated = store.update_file(&first.key, &patch, later).await.unwrap().unwrap();
        assert_eq!(updated.name.as_str(), "renamed");
        assert_eq!(updated.visibility, Visibility::Private);
        assert_eq!(updated.updated_at, later);
        assert_eq!(updated.created_at, first.created_at);
        let name_only = FilePatch {
            name: Some(FileName::parse("again", 255).unwrap()),
            visibility: None,
        };
        let updated = store.update_file(&first.key, &name_only, later).await.unwrap().unwrap();
        assert_eq!(
            updated.visibility,
            Visibility::Private,
            "{backend}: unset fields are kept"
        );
        assert!(
            store
                .update_file(&FileKey::generate(), &patch, later)
                .await
                .unwrap()
                .is_none()
        );

        let deleted = store.delete_file(&first.key).await.unwrap().unwrap();
        assert_eq!(deleted.blob, first.blob);
        assert!(store.file_by_key(&first.key).await.unwrap().is_none());
        assert!(
            store.delete_file(&first.key).await.unwrap().is_none(),
            "{backend}: delete is idempotent"
        );
        assert!(!store.blob_is_referenced(first.blob).await.unwrap());
    }
}

#[tokio::test]
async fn a_batch_of_files_is_all_or_nothing() {
    for (backend, store, _dir) in common::backends("contract.db").await {
        let alice = user(store.as_ref(), "alice").await;
        let existing = file(&alice, "existing", handoff_core::now());
        store.insert_files(std::slice::from_ref(&existing)).await.unwrap();
        let fresh = file(&alice, "fresh", handoff_core::now());
        let mut clash = file(&alice, "clash", handoff_core::now());
        clash.key = existing.key.clone();
        assert!(store.insert_files(&[fresh.clone(), clash]).await.is_err(), "{backend}");
        assert!(
            store.file_by_key(&fresh.key).await.unwrap().is_none(),
            "{backend}: nothing of a failed batch"
        );
    }
}

#[tokio::test]
async fn refresh_tokens_rotate_once_and_reuse_revokes_the_family() {
    for (backend, store, _dir) in common::backends("contract.db").await {
        let alice = user(store.as_ref(), "alice").await;
        let now = handoff_core::now();
        let expires = now + Duration::days(1);
        let family = Uuid::now_v7();
        store
            .insert_refresh_token(&NewRefreshToken {
                hash: [1; 32],
                family,
                user: alice.id,
                expires_at: expires,
            })
            .await
            .unwrap();
        let rotated = store
            .rotate_refresh_token(&[1; 32], &[2; 32], expires, now)
            .await
            .unwrap();
        assert_eq!(rotated, RefreshOutcome::Rotated { user: alice.id }, "{backend}");
        let reused = store
            .rotate_refresh_token(&[1; 32], &[3; 32], expires, now)
            .await
            .unwrap();
        assert_eq!(reused, RefreshOutcome::Reused, "{backend}");
        let successor = store
            .rotate_refresh_token(&[2; 32], &[4; 32], expires, now)
            .await
            .unwrap();
        assert_eq!(successor, RefreshOutcome::Invalid, "{backend}: the family is revoked");
        let replay = store
            .rotate_refresh_token(&[1; 32], &[3; 32], expires, now)
            .await
            .unwrap();
        assert_eq!(
            replay,
            RefreshOutcome::Invalid,
            "{backend}: revoked tokens stay invalid"
        );
        assert_eq!(
            store
                .rotate_refresh_token(&[9; 32], &[5; 32], expires, now)
                .await
                .unwrap(),
            RefreshOutcome::Invalid
        );

        // Expiry, and sign-out revoking a live family.
        store
            .insert_refresh_token(&NewRefreshToken {
                hash: [6; 32],
                family: Uuid::now_v7(),
                user: alice.id,
                expires_at: now - Duration::seconds(1),
            })
            .await
            .unwrap();
        assert_eq!(
            store
                .rotate_refresh_token(&[6; 32], &[7; 32], expires, now)
                .await
                .unwrap(),
            RefreshOutcome::Invalid,
            "{backend}: expired"
        );
        store
            .insert_refresh_token(&NewRefreshToken {
                hash: [8; 32],
                family: Uuid::now_v7(),
                user: alice.id,
                expires_at: expires,
            })
            .await
            .unwrap();
        assert!(store.revoke_refresh_family(&[8; 32]).await.unwrap());
        assert!(!store.revoke_refresh_family(&[10; 32]).await.unwrap());
        assert_eq!(
            store
                .rotate_refresh_token(&[8; 32], &[11; 32], expires, now)
                .await
                .unwrap(),
            RefreshOutcome::Invalid,
            "{backend}: a signed-out token is invalid, not a theft signal"
        );
    }
}

#[tokio::test]
async fn concurrent_rotation_of_one_token_has_one_winner() {
    for (backend, store, _dir) in common::backends("contract.db").await {
        let alice = user(store.as_ref(), "alice").await;
        let now = handoff_core::now();
        let expires = now + Duration::days(1);
        store
            .insert_refresh_token(&NewRefreshToken {
                hash: [1; 32],
                family: Uuid::now_v7(),
                user: alice.id,
                expires_at: expires,
            })
            .await
            .unwrap();
        let outcomes = futures_join(store.clone(), expires, now).await;
        let winners = outcomes
            .iter()
            .filter(|o| matches!(o, RefreshOutcome::Rotated { .. }))
            .count();
        assert_eq!(winners, 1, "{backend}: {outcomes:?}");
    }
}

async fn futures_join(
    store: Arc<dyn MetadataStore>,
    expires: time::OffsetDateTime,
    now: time::OffsetDateTime,
) -> Vec<RefreshOutcome> {
    let tasks: Vec<_> = (0..16u8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.rotate_refresh_token(&[1; 32], &[100 + i; 32], expires, now).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap().unwrap());
    }
    outcomes
}

#[tokio::test]
async fn signing_keys_newest_first() {
    for (backend, store, _dir) in common::backends("contract.db").await {
        assert!(store.signing_keys().await.unwrap().is_empty());
        let base = handoff_core::now();
        for (i, kid) in ["old", "new"].into_iter().enumerate() {
            store
                .insert_signing_key(&SigningKeyRecord {
                    kid: kid.into(),
                    algorithm: "EdDSA".into(),
                    private_der: vec![1, 2, 3],
                    public_raw: vec![4, 5, 6],
                    created_at: base + Duration::seconds(i as i64),
                })
                .await
                .unwrap();
        }
        let keys = store.signing_keys().await.unwrap();
        assert_eq!(
            keys.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>(),
            ["new", "old"],
            "{backend}"
        );
        assert_eq!(keys[0].private_der, vec![1, 2, 3]);
        assert_eq!(keys[0].public_raw, vec![4, 5, 6]);
    }
}

#[tokio::test]
async fn listing_orders_keys_by_bytes_not_by_locale() {
    for (backend, store, _dir) in common::backends("contract.db").await {
        let alice = user(store.as_ref(), "alice").await;
        let at = handoff_core::now();
        // Same timestamp, so only the key orders them. Byte order: '-' < '0' < 'B' < '_' < 'a'; a locale-aware
        // collation would put 'a' before 'B' and the punctuation elsewhere.
        let files: Vec<FileRecord> = ["a", "B", "_", "-", "0", "b", "A"]
            .iter()
            .map(|first| {
                let mut f = file(&alice, "same-time", at);
                f.key = FileKey::parse(&format!("{first}{}", "x".repeat(31))).unwrap();
                f
            })
            .collect();
        store.insert_files(&files).await.unwrap();
        let mut seen = Vec::new();
        let mut cursor: Option<FileCursor> = None;
        loop {
            let page = store.list_files(alice.id, cursor.as_ref(), 1).await.unwrap();
            let Some(last) = page.last() else { break };
            cursor = Some(FileCursor::after(last));
            seen.extend(page.into_iter().map(|f| f.key.as_str().to_owned()));
        }
        let mut expected: Vec<String> = files.iter().map(|f| f.key.as_str().to_owned()).collect();
        expected.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(
            seen, expected,
            "{backend}: newest first, then key in descending byte order"
        );
    }
}

/// Two nodes: two independent pools on one database, started at the same time (both run the migrations, which
/// must serialise on the migrator's advisory lock), racing to rotate the same refresh token.
#[tokio::test]
async fn postgres_two_nodes_rotating_one_token_have_one_winner() {
    let Some(admin_url) = postgres_admin_url() else {
        eprintln!("HANDOFF_TEST_POSTGRES_URL unset: skipping");
        return;
    };
    let db = TestDatabase::create(&admin_url).await;
    let (a, b) = tokio::join!(handoff_db::connect(&db.url), handoff_db::connect(&db.url));
    let nodes = [a.unwrap(), b.unwrap()];
    let alice = user(nodes[0].as_ref(), "alice").await;
    let now = handoff_core::now();
    let expires = now + Duration::days(1);
    for round in 0..5u8 {
        let presented = [round; 32];
        nodes[1]
            .insert_refresh_token(&NewRefreshToken {
                hash: presented,
                family: Uuid::now_v7(),
                user: alice.id,
                expires_at: expires,
            })
            .await
            .unwrap();
        let tasks: Vec<_> = (0..16u8)
            .map(|i| {
                let node = nodes[usize::from(i % 2)].clone();
                let successor = [
                    round, i, 0xAA, 0x55, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                    0, 1,
                ];
                tokio::spawn(async move { node.rotate_refresh_token(&presented, &successor, expires, now).await })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap().unwrap());
        }
        let winners = outcomes
            .iter()
            .filter(|o| **o == RefreshOutcome::Rotated { user: alice.id })
            .count();
        assert_eq!(winners, 1, "round {round}: {outcomes:?}");
        assert!(
            outcomes.iter().all(|o| matches!(
                o,
                RefreshOutcome::Rotated { .. } | RefreshOutcome::Reused | RefreshOutcome::Invalid
            )),
            "{outcomes:?}"
        );
        // The losers presented a spent token: the family is revoked, seen alike from both nodes.
        for node in &nodes {
            assert_eq!(
                node.rotate_refresh_token(&presented, &[0xEE; 32], expires, now)
                    .await
                    .unwrap(),
                RefreshOutcome::Invalid
            );
        }
    }
}

/// An unreachable server is a quick, classified failure, not a hang.
#[tokio::test]
async fn postgres_unreachable_fails_fast() {
    let started = std::time::Instant::now();
    // Port 1 on loopback: nothing listens, so connections are refused until the acquire timeout.
    let result = handoff_db::connect("postgres://handoff@127.0.0.1:1/handoff").await;
    let elapsed = started.elapsed();
    assert!(
        matches!(result, Err(handoff_db::ConnectError::Open(sqlx::Error::PoolTimedOut))),
        "{result:?}"
    );
    assert!(elapsed < std::time::Duration::from_secs(10), "took {elapsed:?}");
}

/// `import_user` keeps every field as given, refuses a taken id or username, and `users_page` walks every account
/// in id order.
#[tokio::test]
async fn users_import_exactly_and_page_by_id() {
    for (backend, store, _dir) in common::backends("contract.db").await {
        let created = user(store.as_ref(), "created").await;
        let base = handoff_core::now() - Duration::days(400);
        let imported: Vec<User> = (0..5)
            .map(|i| User {
                id: handoff_core::UserId(Uuid::new_v4()),
                username: Username::parse(&format!("imported{i}")).unwrap(),
                email: (i % 2 == 0).then(|| format!("u{i}@example.com")),
                password_hash: (i != 3).then(|| format!("$argon2id$v=19$m=19456,t=2,p=1$salt{i}$hash{i}")),
                is_admin: i == 1,
                disabled: i == 2,
                created_at: base + Duration::microseconds(i * 1_234_567),
            })
            .collect();
        for u in &imported {
            store.import_user(u).await.unwrap();
        }
        for u in &imported {
            let found = store.user_by_id(u.id).await.unwrap().unwrap();
            assert_eq!(found.username, u.username, "{backend}");
            assert_eq!(found.email, u.email, "{backend}");
            assert_eq!(found.password_hash, u.password_hash, "{backend}");
            assert_eq!((found.is_admin, found.disabled), (u.is_admin, u.disabled), "{backend}");
            assert_eq!(found.created_at, u.created_at, "{backend}: created_at is kept exactly");
        }

        let same_id = User {
            username: Username::parse("someoneelse").unwrap(),
            ..imported[0].clone()
        };
        let result = store.import_user(&same_id).await;
        assert!(matches!(result, Err(StoreError::Conflict)), "{backend}: {result:?}");
        let same_name = User {
            id: handoff_core::UserId(Uuid::new_v4()),
            ..created.clone()
        };
        let result = store.import_user(&same_name).await;
        assert!(matches!(result, Err(StoreError::Conflict)), "{backend}: {result:?}");

        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = store.users_page(after, 2).await.unwrap();
            assert!(page.len() <= 2, "{backend}");
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            seen.extend(page.into_iter().map(|u| u.id));
        }
        let mut expected: Vec<_> = imported.iter().map(|u| u.id).chain([created.id]).collect();
        expected.sort();
        assert_eq!(seen, expected, "{backend}: every account once, in id order");
    }
}

/// `files_page` walks every file of every owner in key byte order, each exactly once.
#[tokio::test]
async fn files_page_walks_every_file_by_key() {
    for (backend, store, _dir) in common::backends("contract.db").await {
        assert!(store.files_page(None, 10).await.unwrap().is_empty(), "{backend}");
        let alice = user(store.as_ref(), "alice").await;
        let bob = user(store.as_ref(), "bob").await;
        let at = handoff_core::now();
        // Keys whose byte order differs from a locale-aware order, across two owners and several timestamps.
        let files: Vec<FileRecord> = ["a", "B", "_", "-", "0", "b", "A", "z", "Z"]
            .iter()
            .enumerate()
            .map(|(i, first)| {
                let owner = if i % 2 == 0 { &alice } else { &bob };
                let mut f = file(owner, &format!("f{i}"), at - Duration::seconds(i as i64));
                f.key = FileKey::parse(&format!("{first}{}", "y".repeat(31))).unwrap();
                f.size = i as u64;
                f
            })
            .collect();
        store.insert_files(&files).await.unwrap();
        let mut seen = Vec::new();
        let mut after: Option<FileKey> = None;
        loop {
            let page = store.files_page(after.as_ref(), 4).await.unwrap();
            assert!(page.len() <= 4, "{backend}");
            let Some(last) = page.last() else { break };
            after = Some(last.key.clone());
            seen.extend(page);
        }
        let mut expected = files.clone();
        expected.sort_by(|a, b| a.key.as_str().cmp(b.key.as_str()));
        assert_eq!(
            seen.iter().map(|f| f.key.as_str()).collect::<Vec<_>>(),
            expected.iter().map(|f| f.key.as_str()).collect::<Vec<_>>(),
            "{backend}: ascending byte order, each file once"
        );
        for (got, want) in seen.iter().zip(&expected) {
            assert_eq!(
                (
                    got.blob,
                    got.owner,
                    got.name.as_str(),
                    got.size,
                    &got.sha256,
                    got.visibility
                ),
                (
                    want.blob,
                    want.owner,
                    want.name.as_str(),
                    want.size,
                    &want.sha256,
                    want.visibility
                ),
                "{backend}"
            );
            assert_eq!(
                (got.created_at, got.updated_at),
                (want.created_at, want.updated_at),
                "{backend}"
            );
        }
    }
}

#[tokio::test]
async fn racing_first_signing_keys_leave_exactly_one() {
    for (backend, store, _scratch) in common::backends("contract.db").await {
        let tasks: Vec<_> = (0..8u8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .insert_first_signing_key(&SigningKeyRecord {
                            kid: format!("first-{i}"),
                            algorithm: "EdDSA".into(),
                            private_der: vec![i],
                            public_raw: vec![i],
                            created_at: handoff_core::now(),
                        })
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut inserted = 0;
        for task in tasks {
            inserted += usize::from(task.await.unwrap());
        }
        assert_eq!(inserted, 1, "{backend}");
        assert_eq!(store.signing_keys().await.unwrap().len(), 1, "{backend}");
    }
}
