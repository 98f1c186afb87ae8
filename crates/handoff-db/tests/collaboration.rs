//! The collaboration contract (`CollaborationStore`: quotas and usage, upload links, teams, listings, share links,
//! retention, the audit log and account flags): every backend must pass these same tests. SQLite always runs;
//! PostgreSQL joins when `HANDOFF_TEST_POSTGRES_URL` is set (CI sets it, and with `CI` set a missing URL is a
//! failure, not a skip). Each test gets its own freshly created PostgreSQL database, dropped again when it ends.
//!
//! Concurrency tests run on a multi-threaded runtime and spawn their calls on the shared `Arc`'d store, so that on
//! PostgreSQL they really race on several pooled connections (row locks), and on SQLite they queue on its writer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeSet, HashSet};
use std::future::Future;

use handoff_core::model::NewRefreshToken;
use handoff_core::{
    Account, AuditEvent, AuditId, AuditScope, BlobId, CommitOutcome, CommitRules, FileCursor, FileKey, FileName,
    FileRecord, MembershipChange, MetadataStore, NewUser, Quota, RefreshOutcome, Share, ShareId, SharePatch,
    StoreError, Team, TeamId, TeamRole, UploadLink, UploadLinkId, Usage, User, UserId, Username, Visibility,
};
use handoff_db::testing::{TestDatabase, postgres_admin_url};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

/// Runs every future on its own task at once and returns their outputs in order (`join_all` over spawned tasks,
/// so that a multi-threaded runtime runs them in parallel).
async fn join_all<F>(futures: Vec<F>) -> Vec<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    for handle in handles {
        outputs.push(handle.await.unwrap());
    }
    outputs
}

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

/// A personal file of `owner`; set `team`, `expires_at` or `upload_link` on the result as needed.
fn file(owner: &User, name: &str, size: u64, created_at: OffsetDateTime) -> FileRecord {
    FileRecord {
        key: FileKey::generate(),
        blob: BlobId::generate(),
        owner: owner.id,
        name: FileName::parse(name, 255).unwrap(),
        size,
        sha256: "cd".repeat(32),
        content_type: "application/octet-stream".into(),
        visibility: Visibility::Key,
        created_at,
        updated_at: created_at,
        team: None,
        expires_at: None,
        upload_link: None,
    }
}

fn team_file(team: TeamId, uploader: &User, name: &str, size: u64, created_at: OffsetDateTime) -> FileRecord {
    FileRecord {
        team: Some(team),
        ..file(uploader, name, size, created_at)
    }
}

/// A key whose first character is `first`: for tests of byte-order tie-breaking.
fn key_starting(first: &str, fill: char) -> FileKey {
    FileKey::parse(&format!("{first}{}", fill.to_string().repeat(31))).unwrap()
}

/// An upload's rules: the quota is checked (each file is charged to its own account: its team's or uploader's).
fn rules(default_quota: Quota) -> CommitRules {
    CommitRules {
        default_quota,
        upload_link: None,
        now: handoff_core::now(),
        enforce_quota: true,
    }
}

fn quota(bytes: Option<u64>, files: Option<u64>) -> Quota {
    Quota { bytes, files }
}

fn usage(bytes: u64, files: u64, quota: Quota) -> Usage {
    Usage { bytes, files, quota }
}

async fn new_team(store: &dyn MetadataStore, name: &str, owner: &User) -> Team {
    let team = Team {
        id: TeamId::generate(),
        name: name.to_owned(),
        created_at: handoff_core::now(),
    };
    store.create_team(&team, owner.id, team.created_at).await.unwrap();
    team
}

fn new_share(owner: &User, files: Vec<FileKey>, created_at: OffsetDateTime) -> Share {
    Share {
        id: ShareId::generate(),
        owner: owner.id,
        files,
        note: None,
        password_hash: None,
        expires_at: None,
        max_downloads: None,
        downloads: 0,
        revoked: false,
        created_at,
        updated_at: created_at,
    }
}

fn new_link(owner: &User, created_at: OffsetDateTime) -> UploadLink {
    UploadLink {
        id: UploadLinkId::generate(),
        owner: owner.id,
        team: None,
        note: None,
        password_hash: None,
        expires_at: None,
        max_files: None,
        max_bytes: None,
        files_received: 0,
        bytes_received: 0,
        revoked: false,
        created_at,
    }
}

/// Every field of an account, for comparisons (`User` has no `PartialEq`).
fn fields(
    u: &User,
) -> (
    UserId,
    String,
    Option<String>,
    Option<String>,
    bool,
    bool,
    OffsetDateTime,
) {
    (
        u.id,
        u.username.as_str().to_owned(),
        u.email.clone(),
        u.password_hash.clone(),
        u.is_admin,
        u.disabled,
        u.created_at,
    )
}

fn keys(files: &[FileRecord]) -> Vec<FileKey> {
    files.iter().map(|f| f.key.clone()).collect()
}

fn key_set(files: &[FileRecord]) -> BTreeSet<String> {
    files.iter().map(|f| f.key.as_str().to_owned()).collect()
}

/// One step of a share update: what it does, the patch, and its effect on the expected link.
type PatchStep = (&'static str, SharePatch, fn(&mut Share));

/// `files` in listing order: newest first, then key in descending byte order.
fn newest_first(files: &[FileRecord]) -> Vec<FileKey> {
    let mut sorted = files.to_vec();
    sorted.sort_by(|a, b| (b.created_at, b.key.as_str()).cmp(&(a.created_at, a.key.as_str())));
    keys(&sorted)
}

/// Walks a keyset-paginated listing to its end, checking every page respects `limit`.
async fn walk<F, Fut>(limit: u32, mut page: F) -> Vec<FileKey>
where
    F: FnMut(Option<FileCursor>) -> Fut,
    Fut: Future<Output = Vec<FileRecord>>,
{
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let files = page(cursor.clone()).await;
        assert!(files.len() <= limit as usize, "a page longer than its limit");
        let Some(last) = files.last() else { break };
        cursor = Some(FileCursor::after(last));
        seen.extend(keys(&files));
    }
    seen
}

// ---------------------------------------------------------------------------------------------------------------
// Quotas and usage
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn commits_charge_usage_and_quotas_refuse_all_or_nothing() {
    for (backend, store, _scratch) in common::backends("collaboration.db").await {
        let alice = user(store.as_ref(), "alice").await;
        let bob = user(store.as_ref(), "bob").await;
        let me = Account::User(alice.id);
        let at = handoff_core::now();
        let default = quota(Some(100), Some(3));

        assert_eq!(
            store.usage(me, Quota::UNLIMITED).await.unwrap(),
            usage(0, 0, Quota::UNLIMITED),
            "{backend}"
        );
        assert_eq!(
            store.usage(me, default).await.unwrap(),
            usage(0, 0, default),
            "{backend}: no own quota, so the default applies"
        );

        let first = [file(&alice, "a", 10, at), file(&alice, "b", 20, at)];
        assert_eq!(
            store.commit_files(&first, &rules(default)).await.unwrap(),
            CommitOutcome::Committed,
            "{backend}"
        );
        assert_eq!(
            store.usage(me, default).await.unwrap(),
            usage(30, 2, default),
            "{backend}"
        );

        // 30 + 71 > 100 bytes: refused, and nothing of it is visible or charged.
        let too_big = file(&alice, "too-big", 71, at);
        assert_eq!(
            store
                .commit_files(std::slice::from_ref(&too_big), &rules(default))
                .await
                .unwrap(),
            CommitOutcome::QuotaExceeded,
            "{backend}"
        );
        assert!(store.file_by_key(&too_big.key).await.unwrap().is_none(), "{backend}");
        assert_eq!(
            store.usage(me, default).await.unwrap(),
            usage(30, 2, default),
            "{backend}"
        );

        // A batch that would fit file by file but not as a whole is refused whole.
        let batch = [file(&alice, "c", 35, at), file(&alice, "d", 36, at)];
        assert_eq!(
            store.commit_files(&batch, &rules(default)).await.unwrap(),
            CommitOutcome::QuotaExceeded,
            "{backend}"
        );
        for f in &batch {
            assert!(
                store.file_by_key(&f.key).await.unwrap().is_none(),
                "{backend}: all or nothing"
            );
        }

        // Exactly at the byte limit is allowed.
        let exact = file(&alice, "exact", 70, at);
        assert_eq!(
            store
                .commit_files(std::slice::from_ref(&exact), &rules(default))
                .await
                .unwrap(),
            CommitOutcome::Committed,
            "{backend}"
        );
        assert_eq!(
            store.usage(me, default).await.unwrap(),
            usage(100, 3, default),
            "{backend}"
        );
        assert_eq!(store.usage(me, default).await.unwrap().bytes_left(), Some(0));

        // The file-count limit: even an empty file is refused now.
        let empty = file(&alice, "empty", 0, at);
        assert_eq!(
            store
                .commit_files(std::slice::from_ref(&empty), &rules(default))
                .await
                .unwrap(),
            CommitOutcome::QuotaExceeded,
            "{backend}"
        );
        assert_eq!(
            store
                .commit_files(&[file(&alice, "e", 0, at)], &rules(quota(Some(100), None)))
                .await
                .unwrap(),
            CommitOutcome::Committed,
            "{backend}: only the byte limit is left"
        );
        assert_eq!(
            store.usage(me, default).await.unwrap(),
            usage(100, 4, default),
            "{backend}"
        );

        // enforce_quota = false bypasses the quota (imports), but still charges.
        let imported = file(&alice, "imported", 500, at);
        let unchecked = CommitRules {
            enforce_quota: false,
            ..rules(default)
        };
        assert_eq!(
            store
                .commit_files(std::slice::from_ref(&imported), &unchecked)
                .await
                .unwrap(),
            CommitOutcome::Committed,
            "{backend}"
        );
        assert_eq!(
            store.usage(me, default).await.unwrap(),
            usage(600, 5, default),
            "{backend}"
        );
        // `insert_files` is the same unchecked commit.
        let inserted = file(&alice, "inserted", 5, at);
        store.insert_files(std::slice::from_ref(&inserted)).await.unwrap();
        assert_eq!(
            store.usage(me, default).await.unwrap(),
            usage(605, 6, default),
            "{backend}"
        );

        // delete_file refunds exactly once.
        let deleted = store.delete_file(&imported.key).await.unwrap().unwrap();
        assert_eq!((deleted.key, deleted.size), (imported.key.clone(), 500), "{backend}");
        assert_eq!(
            store.usage(me, default).await.unwrap(),
            usage(105, 5, default),
            "{backend}"
        );
        assert!(store.delete_file(&imported.key).await.unwrap().is_none(), "{backend}");
        assert_eq!(
            store.usage(me, default).await.unwrap(),
            usage(105, 5, default),
            "{backend}"
        );

        // An own quota replaces the default field by field: its `None` fields fall back to the default's.
        assert!(store.set_quota(me, quota(Some(1000), None)).await.unwrap(), "{backend}");
        assert_eq!(
            store.usage(me, default).await.unwrap(),
            usage(105, 5, quota(Some(1000), Some(3))),
            "{backend}"
        );
        assert_eq!(
            store.usage(me, Quota::UNLIMITED).await.unwrap(),
            usage(105, 5, quota(Some(1000), None)),
            "{backend}"
        );
        assert_eq!(
            store
                .commit_files(&[file(&alice, "f", 10, at)], &rules(default))
                .await
                .unwrap(),
            CommitOutcome::QuotaExceeded,
            "{backend}: the default's file limit still applies"
        );
        let fits = file(&alice, "fits", 10, at);
        assert_eq!(
            store
                .commit_files(std::slice::from_ref(&fits), &rules(quota(Some(100), None)))
                .await
                .unwrap(),
            CommitOutcome::Committed,
            "{backend}: the own byte quota (1000) overrides the default's 100"
        );
        assert_eq!(
            store.usage(me, Quota::UNLIMITED).await.unwrap(),
            usage(115, 6, quota(Some(1000), None)),
            "{backend}"
        );
        // A quota below the current usage refuses everything, even an empty file.
        assert!(store.set_quota(me, quota(Some(50), Some(100))).await.unwrap());
        assert_eq!(
            store
                .commit_files(&[file(&alice, "g", 0, at)], &rules(Quota::UNLIMITED))
                .await
                .unwrap(),
            CommitOutcome::QuotaExceeded,
            "{backend}"
        );
        // Clearing the own quota falls back to the default again.
        assert!(store.set_quota(me, Quota::UNLIMITED).await.unwrap());
        assert_eq!(
            store.usage(me, default).await.unwrap(),
            usage(115, 6, default),
            "{backend}"
        );
        assert_eq!(
            store.usage(me, Quota::UNLIMITED).await.unwrap(),
            usage(115, 6, Quota::UNLIMITED),
            "{backend}"
        );

        // Others are not charged.
        assert_eq!(
            store.usage(Account::User(bob.id), default).await.unwrap(),
            usage(0, 0, default),
            "{backend}"
        );

        // Unknown accounts.
        for unknown in [Account::User(UserId::generate()), Account::Team(TeamId::generate())] {
            let result = store.usage(unknown, default).await;
            assert!(matches!(result, Err(StoreError::NotFound)), "{backend}: {result:?}");
            assert!(!store.set_quota(unknown, default).await.unwrap(), "{backend}");
        }

        // A commit may carry files of several accounts (an import): each is charged to its own account, and one
        // account's refusal refuses the whole commit.
        let bobs = Account::User(bob.id);
        assert!(store.set_quota(bobs, quota(Some(1), None)).await.unwrap());
        let refused = [file(&alice, "mine", 1, at), file(&bob, "bobs", 2, at)];
        assert_eq!(
            store.commit_files(&refused, &rules(Quota::UNLIMITED)).await.unwrap(),
            CommitOutcome::QuotaExceeded,
            "{backend}"
        );
        for f in &refused {
            assert!(store.file_by_key(&f.key).await.unwrap().is_none(), "{backend}");
        }
        assert_eq!(
            store.usage(me, Quota::UNLIMITED).await.unwrap(),
            usage(115, 6, Quota::UNLIMITED),
            "{backend}: alice's part of the refused commit is not charged"
        );
        let mixed = [
            file(&alice, "mine", 1, at),
            file(&bob, "bobs", 1, at),
            file(&alice, "mine-too", 2, at),
        ];
        assert_eq!(
            store.commit_files(&mixed, &rules(Quota::UNLIMITED)).await.unwrap(),
            CommitOutcome::Committed,
            "{backend}"
        );
        assert_eq!(
            store.usage(me, Quota::UNLIMITED).await.unwrap(),
            usage(118, 8, Quota::UNLIMITED),
            "{backend}"
        );
        assert_eq!(
            store.usage(bobs, Quota::UNLIMITED).await.unwrap(),
            usage(1, 1, quota(Some(1), None)),
            "{backend}"
        );
    }
}

#[tokio::test]
async fn team_files_charge_the_team_not_the_uploader() {
    for (backend, store, _scratch) in common::backends("collaboration.db").await {
        let alice = user(store.as_ref(), "alice").await;
        let team = new_team(store.as_ref(), "crew", &alice).await;
        let account = Account::Team(team.id);
        let at = handoff_core::now();
        assert_eq!(
            store.usage(account, Quota::UNLIMITED).await.unwrap(),
            usage(0, 0, Quota::UNLIMITED),
            "{backend}"
        );
        let files = [
            team_file(team.id, &alice, "t1", 40, at),
            team_file(team.id, &alice, "t2", 2, at),
        ];
        assert_eq!(
            store.commit_files(&files, &rules(Quota::UNLIMITED)).await.unwrap(),
            CommitOutcome::Committed,
            "{backend}"
        );
        assert_eq!(
            store.usage(account, Quota::UNLIMITED).await.unwrap(),
            usage(42, 2, Quota::UNLIMITED),
            "{backend}"
        );
        assert_eq!(
            store.usage(Account::User(alice.id), Quota::UNLIMITED).await.unwrap(),
            usage(0, 0, Quota::UNLIMITED),
            "{backend}: the uploader pays nothing for team files"
        );
        // A team's own quota.
        assert!(store.set_quota(account, quota(Some(50), None)).await.unwrap());
        assert_eq!(
            store.usage(account, quota(None, Some(9))).await.unwrap(),
            usage(42, 2, quota(Some(50), Some(9))),
            "{backend}"
        );
        let over = team_file(team.id, &alice, "over", 9, at);
        assert_eq!(
            store
                .commit_files(std::slice::from_ref(&over), &rules(Quota::UNLIMITED))
                .await
                .unwrap(),
            CommitOutcome::QuotaExceeded,
            "{backend}"
        );
        assert!(store.file_by_key(&over.key).await.unwrap().is_none());
        let fits = team_file(team.id, &alice, "fits", 8, at);
        assert_eq!(
            store
                .commit_files(std::slice::from_ref(&fits), &rules(Quota::UNLIMITED))
                .await
                .unwrap(),
            CommitOutcome::Committed,
            "{backend}"
        );
        // Deleting a team file refunds the team.
        store.delete_file(&files[0].key).await.unwrap().unwrap();
        assert_eq!(
            store.usage(account, Quota::UNLIMITED).await.unwrap(),
            usage(10, 2, quota(Some(50), None)),
            "{backend}"
        );
        assert_eq!(
            store.usage(Account::User(alice.id), Quota::UNLIMITED).await.unwrap(),
            usage(0, 0, Quota::UNLIMITED),
            "{backend}"
        );
        // One commit mixing a team file and a personal file charges each to its own account.
        let both = [
            team_file(team.id, &alice, "team-half", 1, at),
            file(&alice, "personal-half", 3, at),
        ];
        assert_eq!(
            store.commit_files(&both, &rules(Quota::UNLIMITED)).await.unwrap(),
            CommitOutcome::Committed,
            "{backend}"
        );
        assert_eq!(
            store.usage(account, Quota::UNLIMITED).await.unwrap(),
            usage(11, 3, quota(Some(50), None)),
            "{backend}"
        );
        assert_eq!(
            store.usage(Account::User(alice.id), Quota::UNLIMITED).await.unwrap(),
            usage(3, 1, Quota::UNLIMITED),
            "{backend}"
        );
    }
}

/// Twenty uploads racing for a quota with room for exactly five: exactly five win, and usage is what they charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_commits_never_overrun_a_quota() {
    for (backend, store, _scratch) in common::backends("collaboration.db").await {
        let alice = user(store.as_ref(), "alice").await;
        let at = handoff_core::now();

        // By bytes: twenty 1-byte files against a 5-byte quota.
        let me = Account::User(alice.id);
        let by_bytes = quota(Some(5), None);
        let files: Vec<FileRecord> = (0..20).map(|i| file(&alice, &format!("b{i}"), 1, at)).collect();
        let outcomes = join_all(
            files
                .iter()
                .map(|f| {
                    let (store, f) = (store.clone(), f.clone());
                    async move {
                        store
                            .commit_files(std::slice::from_ref(&f), &rules(by_bytes))
                            .await
                            .unwrap()
                    }
                })
                .collect(),
        )
        .await;
        let committed: Vec<&FileRecord> = files
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| **o == CommitOutcome::Committed)
            .map(|(f, _)| f)
            .collect();
        assert_eq!(committed.len(), 5, "{backend}: {outcomes:?}");
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, CommitOutcome::Committed | CommitOutcome::QuotaExceeded)),
            "{backend}: {outcomes:?}"
        );
        assert_eq!(
            store.usage(me, by_bytes).await.unwrap(),
            usage(5, 5, by_bytes),
            "{backend}"
        );
        let listed = store.list_files(alice.id, None, 100).await.unwrap();
        assert_eq!(
            key_set(&listed),
            committed.iter().map(|f| f.key.as_str().to_owned()).collect(),
            "{backend}: exactly the winners are visible"
        );

        // By file count: files of 1..=20 bytes against a 5-file quota (on a team account).
        let team = new_team(store.as_ref(), "racers", &alice).await;
        let account = Account::Team(team.id);
        let by_files = quota(None, Some(5));
        let files: Vec<FileRecord> = (1..=20u64)
            .map(|size| team_file(team.id, &alice, &format!("f{size}"), size, at))
            .collect();
        let outcomes = join_all(
            files
                .iter()
                .map(|f| {
                    let (store, f) = (store.clone(), f.clone());
                    async move {
                        store
                            .commit_files(std::slice::from_ref(&f), &rules(by_files))
                            .await
                            .unwrap()
                    }
                })
                .collect(),
        )
        .await;
        let committed: Vec<&FileRecord> = files
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| **o == CommitOutcome::Committed)
            .map(|(f, _)| f)
            .collect();
        assert_eq!(committed.len(), 5, "{backend}: {outcomes:?}");
        let charged: u64 = committed.iter().map(|f| f.size).sum();
        assert_eq!(
            store.usage(account, by_files).await.unwrap(),
            usage(charged, 5, by_files),
            "{backend}"
        );
        let listed = store.list_team_files(team.id, None, 100).await.unwrap();
        assert_eq!(
            key_set(&listed),
            committed.iter().map(|f| f.key.as_str().to_owned()).collect(),
            "{backend}"
        );
    }
}

/// Imports of several accounts at once, listing the accounts in opposite orders: all of them go through (on
/// PostgreSQL the accounts' rows are locked as they are charged, so the order of those locks matters).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_multi_account_commits_all_go_through() {
    for (backend, store, _scratch) in common::backends("collaboration.db").await {
        let alice = user(store.as_ref(), "alice").await;
        let bob = user(store.as_ref(), "bob").await;
        let at = handoff_core::now();
        let batches: Vec<Vec<FileRecord>> = (0..16)
            .map(|i| {
                let (a, b) = (
                    file(&alice, &format!("a{i}"), 1, at),
                    file(&bob, &format!("b{i}"), 1, at),
                );
                if i % 2 == 0 { vec![a, b] } else { vec![b, a] }
            })
            .collect();
        let outcomes = join_all(
            batches
                .iter()
                .map(|batch| {
                    let (store, batch) = (store.clone(), batch.clone());
                    async move {
                        store
                            .commit_files(&batch, &rules(Quota::UNLIMITED))
                            .await
                            .map_err(|e| e.to_string())
                    }
                })
                .collect(),
        )
        .await;
        for outcome in &outcomes {
            assert_eq!(outcome, &Ok(CommitOutcome::Committed), "{backend}: {outcomes:?}");
        }
        for who in [&alice, &bob] {
            assert_eq!(
                store.usage(Account::User(who.id), Quota::UNLIMITED).await.unwrap(),
                usage(16, 16, Quota::UNLIMITED),
                "{backend}"
            );
        }
    }
}

/// A commit that fails (here: a key already taken) among many concurrent ones fails alone and leaves nothing
/// behind, while the others go through: on SQLite concurrent commits share one transaction (group commit), each
/// inside its own savepoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_commit_among_concurrent_ones_fails_alone() {
    for (backend, store, _scratch) in common::backends("collaboration.db").await {
        let alice = user(store.as_ref(), "alice").await;
        let at = handoff_core::now();
        let taken = file(&alice, "taken", 1, at);
        assert_eq!(
            store
                .commit_files(std::slice::from_ref(&taken), &rules(Quota::UNLIMITED))
                .await
                .unwrap(),
            CommitOutcome::Committed
        );
        let mut clash = file(&alice, "clash", 1, at);
        clash.key = taken.key.clone();
        let doomed = vec![file(&alice, "innocent", 1, at), clash];
        let mut batches: Vec<Vec<FileRecord>> = (0..24).map(|i| vec![file(&alice, &format!("ok{i}"), 1, at)]).collect();
        batches.insert(12, doomed.clone());
        let outcomes = join_all(
            batches
                .iter()
                .map(|batch| {
                    let (store, batch) = (store.clone(), batch.clone());
                    async move { store.commit_files(&batch, &rules(Quota::UNLIMITED)).await }
                })
                .collect(),
        )
        .await;
        for (i, outcome) in outcomes.iter().enumerate() {
            if i == 12 {
                assert!(matches!(outcome, Err(StoreError::Conflict)), "{backend}: {outcome:?}");
            } else {
                assert!(
                    matches!(outcome, Ok(CommitOutcome::Committed)),
                    "{backend}: {outcome:?}"
                );
            }
        }
        let listed = store.list_files(alice.id, None, 100).await.unwrap();
        assert_eq!(listed.len(), 25, "{backend}: the 24 and the first file");
        assert!(!listed.iter().any(|f| f.name.as_str() == "innocent"), "{backend}");
        assert_eq!(
            store.usage(Account::User(alice.id), Quota::UNLIMITED).await.unwrap(),
            usage(25, 25, Quota::UNLIMITED),
            "{backend}: only committed files are charged"
        );
    }
}

/// Many concurrent one-file commits (on SQLite they share a transaction and are decided together): quotas are
/// exact per account — an account's own quota over the default, a team's apart from its members' —, a key clash
/// fails only its own caller, and usage counts exactly the committed files.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_single_file_commits_are_decided_exactly() {
    async fn commit_each(
        store: &std::sync::Arc<dyn MetadataStore>,
        batches: &[Vec<FileRecord>],
        rules: CommitRules,
    ) -> Vec<handoff_core::StoreResult<CommitOutcome>> {
        join_all(
            batches
                .iter()
                .map(|batch| {
                    let (store, batch) = (store.clone(), batch.clone());
                    async move { store.commit_files(&batch, &rules).await }
                })
                .collect(),
        )
        .await
    }
    fn committed(
        batches: &[Vec<FileRecord>],
        outcomes: &[handoff_core::StoreResult<CommitOutcome>],
        prefix: char,
    ) -> usize {
        batches
            .iter()
            .zip(outcomes)
            .filter(|(b, o)| b[0].name.as_str().starts_with(prefix) && matches!(o, Ok(CommitOutcome::Committed)))
            .count()
    }
    for (backend, store, _scratch) in common::backends("collaboration.db").await {
        let alice = user(store.as_ref(), "alice").await;
        let bob = user(store.as_ref(), "bob").await;
        let carol = user(store.as_ref(), "carol").await;
        let team = new_team(store.as_ref(), "crew", &alice).await;
        // Default: 7 files. Bob's own quota: 40 bytes (4 files of 10). The team: its own quota of 3 files.
        let default = quota(None, Some(7));
        assert!(
            store
                .set_quota(Account::User(bob.id), quota(Some(40), None))
                .await
                .unwrap()
        );
        assert!(
            store
                .set_quota(Account::Team(team.id), quota(None, Some(3)))
                .await
                .unwrap()
        );
        let at = handoff_core::now();
        let one = |f: FileRecord| vec![f];
        let taken = file(&alice, "taken", 1, at);
        assert_eq!(
            store.commit_files(&one(taken.clone()), &rules(default)).await.unwrap(),
            CommitOutcome::Committed
        );
        let mut batches = Vec::new();
        for i in 0..10 {
            batches.push(one(file(&alice, &format!("a{i}"), 1, at)));
            batches.push(one(file(&bob, &format!("b{i}"), 10, at)));
            let mut in_team = file(&alice, &format!("t{i}"), 1, at);
            in_team.team = Some(team.id);
            batches.push(one(in_team));
        }
        let outcomes = commit_each(&store, &batches, rules(default)).await;
        for outcome in &outcomes {
            assert!(
                matches!(outcome, Ok(CommitOutcome::Committed | CommitOutcome::QuotaExceeded)),
                "{backend}: {outcome:?}"
            );
        }
        assert_eq!(
            committed(&batches, &outcomes, 'a'),
            6,
            "{backend}: alice had 1 of her 7 files"
        );
        assert_eq!(committed(&batches, &outcomes, 'b'), 4, "{backend}: bob's own 40 bytes");
        assert_eq!(
            committed(&batches, &outcomes, 't'),
            3,
            "{backend}: the team's own 3 files"
        );
        assert_eq!(
            store.usage(Account::User(alice.id), default).await.unwrap(),
            usage(7, 7, default),
            "{backend}"
        );
        assert_eq!(
            store.usage(Account::User(bob.id), default).await.unwrap(),
            usage(40, 4, quota(Some(40), Some(7))),
            "{backend}"
        );
        assert_eq!(
            store.usage(Account::Team(team.id), default).await.unwrap(),
            usage(3, 3, quota(None, Some(3))),
            "{backend}"
        );
        assert_eq!(
            store.list_files(alice.id, None, 100).await.unwrap().len(),
            7,
            "{backend}"
        );

        // A key clash among them fails only its own caller, and nothing of it is stored or charged.
        let mut clash = file(&carol, "clash", 1, at);
        clash.key = taken.key.clone();
        let mut batches: Vec<Vec<FileRecord>> = (0..12).map(|i| one(file(&carol, &format!("c{i}"), 1, at))).collect();
        batches.insert(1, one(clash));
        let outcomes = commit_each(&store, &batches, rules(Quota::UNLIMITED)).await;
        assert!(
            matches!(outcomes[1], Err(StoreError::Conflict)),
            "{backend}: {:?}",
            outcomes[1]
        );
        assert_eq!(committed(&batches, &outcomes, 'c'), 12, "{backend}: {outcomes:?}");
        assert_eq!(
            store.usage(Account::User(carol.id), Quota::UNLIMITED).await.unwrap(),
            usage(12, 12, Quota::UNLIMITED),
            "{backend}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Upload links
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn upload_links_round_trip_and_list_newest_first() {
    for (backend, store, _scratch) in common::backends("collaboration.db").await {
        let alice = user(store.as_ref(), "alice").await;
        let bob = user(store.as_ref(), "bob").await;
        let team = new_team(store.as_ref(), "crew", &alice).await;
        let base = handoff_core::now();
        let full = UploadLink {
            team: Some(team.id),
            note: Some("drop your invoices here".into()),
            password_hash: Some("$argon2id$link".into()),
            expires_at: Some(base + Duration::days(7)),
            max_files: Some(10),
            max_bytes: Some(1 << 40),
            ..new_link(&alice, base)
        };
        let plain = new_link(&alice, base + Duration::seconds(1));
        store.create_upload_link(&full, &[1; 32]).await.unwrap();
        store.create_upload_link(&plain, &[2; 32]).await.unwrap();
        assert_eq!(
            store.upload_link(full.id).await.unwrap().as_ref(),
            Some(&full),
            "{backend}"
        );
        assert_eq!(
            store.upload_link(plain.id).await.unwrap().as_ref(),
            Some(&plain),
            "{backend}"
        );
        assert_eq!(
            store.upload_link_by_token(&[1; 32]).await.unwrap().as_ref(),
            Some(&full),
            "{backend}"
        );
        assert_eq!(
            store.upload_link_by_token(&[2; 32]).await.unwrap().as_ref(),
            Some(&plain),
            "{backend}"
        );
        assert!(
            store.upload_link_by_token(&[3; 32]).await.unwrap().is_none(),
            "{backend}"
        );
        assert!(
            store.upload_link(UploadLinkId::generate()).await.unwrap().is_none(),
            "{backend}"
        );
        assert_eq!(full.account(), Account::Team(team.id));

        let same_token = new_link(&bob, base);
        let result = store.create_upload_link(&same_token, &[1; 32]).await;
        assert!(matches!(result, Err(StoreError::Conflict)), "{backend}: {result:?}");

        assert_eq!(
            store.upload_links_of(alice.id).await.unwrap(),
            vec![plain.clone(), full.clone()],
            "{backend}: newest first"
        );
        assert!(store.upload_links_of(bob.id).await.unwrap().is_empty(), "{backend}");

        assert!(store.revoke_upload_link(plain.id).await.unwrap(), "{backend}");
        assert!(
            !store.revoke_upload_link(UploadLinkId::generate()).await.unwrap(),
            "{backend}"
        );
        let revoked = store.upload_link(plain.id).await.unwrap().unwrap();
        assert!(revoked.revoked, "{backend}");
        assert!(!revoked.is_live(handoff_core::now()), "{backend}");
        assert_eq!(
            UploadLink {
                revoked: false,
                ..revoked
            },
            plain,
            "{backend}: nothing else changes"
        );
    }
}

#[tokio::test]
async fn upload_link_limits_apply_in_the_commit() {
    for (backend, store, _scratch) in common::backends("collaboration.db").await {
        let alice = user(store.as_ref(), "alice").await;
        let me = Account::User(alice.id);
        let base = handoff_core::now();
        let link = UploadLink {
            max_files: Some(3),
            max_bytes: Some(100),
            expires_at: Some(base + Duration::hours(1)),
            ..new_link(&alice, base)
        };
        store.create_upload_link(&link, &[1; 32]).await.unwrap();
        let via = |link: UploadLinkId| CommitRules {
            upload_link: Some(link),
            now: base,
            ..rules(Quota::UNLIMITED)
        };
        let through = |name: &str, size: u64, secs: i64| FileRecord {
            upload_link: Some(link.id),
            ..file(&alice, name, size, base + Duration::seconds(secs))
        };
        let counters = async |id| {
            let l = store.upload_link(id).await.unwrap().unwrap();
            (l.files_received, l.bytes_received)
        };

        let first = [through("a", 40, 1), through("b", 40, 2)];
        assert_eq!(
            store.commit_files(&first, &via(link.id)).await.unwrap(),
            CommitOutcome::Committed,
            "{backend}"
        );
        assert_eq!(counters(link.id).await, (2, 80), "{backend}");

        // Over the byte limit (80 + 30 > 100).
        let over_bytes = through("c", 30, 3);
        assert_eq!(
            store
                .commit_files(std::slice::from_ref(&over_bytes), &via(link.id))
                .await
                .unwrap(),
            CommitOutcome::LinkExhausted,
            "{backend}"
        );
        assert!(store.file_by_key(&over_bytes.key).await.unwrap().is_none(), "{backend}");
        assert_eq!(counters(link.id).await, (2, 80), "{backend}: not charged on refusal");
        // Over the file limit (2 + 2 > 3), although the bytes would fit.
        let over_files = [through("d", 5, 4), through("e", 5, 5)];
        assert_eq!(
            store.commit_files(&over_files, &via(link.id)).await.unwrap(),
            CommitOutcome::LinkExhausted,
            "{backend}"
        );
        assert_eq!(counters(link.id).await, (2, 80), "{backend}");
        assert_eq!(
            store.usage(me, Quota::UNLIMITED).await.unwrap(),
            usage(80, 2, Quota::UNLIMITED),
            "{backend}: the account is not charged for refused files either"
        );
        // Exactly at both limits.
        let last = through("f", 20, 6);
        assert_eq!(
            store
                .commit_files(std::slice::from_ref(&last), &via(link.id))
                .await
                .unwrap(),
            CommitOutcome::Committed,
            "{backend}"
        );
        assert_eq!(counters(link.id).await, (3, 100), "{backend}");
        assert!(
            !store.upload_link(link.id).await.unwrap().unwrap().is_live(base),
            "{backend}"
        );
        assert_eq!(
            store.commit_files(&[through("g", 0, 7)], &via(link.id)).await.unwrap(),
            CommitOutcome::LinkExhausted,
            "{backend}: no file left, even an empty one"
        );
        assert_eq!(
            store.usage(me, Quota::UNLIMITED).await.unwrap(),
            usage(100, 3, Quota::UNLIMITED),
            "{backend}"
        );

        // The files that arrived through the link, newest first, within the limit.
        assert_eq!(
            keys(&store.list_upload_link_files(link.id, 10).await.unwrap()),
            vec![last.key.clone(), first[1].key.clone(), first[0].key.clone()],
            "{backend}"
        );
        assert_eq!(
            keys(&store.list_upload_link_files(link.id, 2).await.unwrap()),
            vec![last.key.clone(), first[1].key.clone()],
            "{backend}"
        );
        let stored = store.file_by_key(&last.key).await.unwrap().unwrap();
        assert_eq!(stored.upload_link, Some(link.id), "{backend}");
        assert!(
            store
                .list_upload_link_files(UploadLinkId::generate(), 10)
                .await
                .unwrap()
                .is_empty(),
            "{backend}"
        );

        // A quota refusal after the link's limits passed leaves the link's counters untouched.
        let open = new_link(&alice, base);
        store.create_upload_link(&open, &[2; 32]).await.unwrap();
        let big = FileRecord {
            upload_link: Some(open.id),
            ..file(&alice, "big", 1, base)
        };
        let tight = CommitRules {
            default_quota: quota(Some(100), None),
            ..via(open.id)
        };
        assert_eq!(
            store.commit_files(std::slice::from_ref(&big), &tight).await.unwrap(),
            CommitOutcome::QuotaExceeded,
            "{backend}"
        );
        assert_eq!(
            counters(open.id).await,
            (0, 0),
            "{backend}: the link charge was rolled back"
        );
        assert!(store.file_by_key(&big.key).await.unwrap().is_none(), "{backend}");

        // Expired (strictly before, and exactly at, its expiry), revoked and unknown links.
        let expired = UploadLink {
            expires_at: Some(base - Duration::seconds(1)),
            ..new_link(&alice, base - Duration::hours(1))
        };
        let expiring_now = UploadLink {
            expires_at: Some(base),
            ..new_link(&alice, base - Duration::hours(1))
        };
        let revoked = new_link(&alice, base);
        store.create_upload_link(&expired, &[3; 32]).await.unwrap();
        store.create_upload_link(&expiring_now, &[4; 32]).await.unwrap();
        store.create_upload_link(&revoked, &[5; 32]).await.unwrap();
        assert!(store.revoke_upload_link(revoked.id).await.unwrap());
        for (what, id) in [
            ("expired", expired.id),
            ("expiring now", expiring_now.id),
            ("revoked", revoked.id),
            ("unknown", UploadLinkId::generate()),
        ] {
            let f = FileRecord {
                upload_link: Some(id),
                ..file(&alice, "late", 1, base)
            };
            assert_eq!(
                store.commit_files(std::slice::from_ref(&f), &via(id)).await.unwrap(),
                CommitOutcome::LinkExhausted,
                "{backend}: {what}"
            );
            assert!(store.file_by_key(&f.key).await.unwrap().is_none(), "{backend}: {what}");
        }
        for id in [expired.id, expiring_now.id, revoked.id] {
            assert_eq!(counters(id).await, (0, 0), "{backend}");
        }
        assert_eq!(
            store.usage(me, Quota::UNLIMITED).await.unwrap(),
            usage(100, 3, Quota::UNLIMITED),
            "{backend}"
        );

        // A link into a team charges the link and the team.
        let team = new_team(store.as_ref(), "crew", &alice).await;
        let team_link = UploadLink {
            team: Some(team.id),
            max_files: Some(1),
            ..new_link(&alice, base)
        };
        store.create_upload_link(&team_link, &[6; 32]).await.unwrap();
        let into_team = FileRecord {
            upload_link: Some(team_link.id),
            ..team_file(team.id, &alice, "for-the-team", 7, base)
        };
        let team_rules = CommitRules {
            upload_link: Some(team_link.id),
            now: base,
            ..rules(Quota::UNLIMITED)
        };
        assert_eq!(
            store
                .commit_files(std::slice::from_ref(&into_team), &team_rules)
                .await
                .unwrap(),
            CommitOutcome::Committed,
            "{backend}"
        );
        assert_eq!(counters(team_link.id).await, (1, 7), "{backend}");
        assert_eq!(
            store.usage(Account::Team(team.id), Quota::UNLIMITED).await.unwrap(),
            usage(7, 1, Quota::UNLIMITED),
            "{backend}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Teams
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn teams_members_and_roles() {
    for (backend, store, _scratch) in common::backends("collaboration.db").await {
        let alice = user(store.as_ref(), "alice").await;
        let bob = user(store.as_ref(), "bob").await;
        let carol = user(store.as_ref(), "carol").await;
        let dave = user(store.as_ref(), "dave").await;
        let eve = user(store.as_ref(), "eve").await;
        let created = handoff_core::now() - Duration::minutes(1);
        let team = Team {
            id: TeamId::generate(),
            name: "Research & Development".into(),
            created_at: created,
        };
        let joined = handoff_core::now();
        store.create_team(&team, alice.id, joined).await.unwrap();
        assert_eq!(store.team(team.id).await.unwrap().as_ref(), Some(&team), "{backend}");
        assert!(store.team(TeamId::generate()).await.unwrap().is_none(), "{backend}");
        assert_eq!(
            store.role_in(team.id, alice.id).await.unwrap(),
            Some(TeamRole::Owner),
            "{backend}: the creator owns the team"
        );
        let members = store.members(team.id).await.unwrap();
        assert_eq!(members.len(), 1, "{backend}");
        assert_eq!(
            (
                members[0].user,
                &members[0].username,
                members[0].role,
                members[0].added_at
            ),
            (alice.id, &alice.username, TeamRole::Owner, joined),
            "{backend}"
        );
        let again = store.create_team(&team, bob.id, joined).await;
        assert!(matches!(again, Err(StoreError::Conflict)), "{backend}: {again:?}");

        // Added out of name order; listed by username.
        let added = joined + Duration::seconds(5);
        store
            .add_member(team.id, dave.id, TeamRole::Viewer, added)
            .await
            .unwrap();
        store.add_member(team.id, bob.id, TeamRole::Admin, added).await.unwrap();
        store
            .add_member(team.id, carol.id, TeamRole::Member, added)
            .await
            .unwrap();
        let duplicate = store.add_member(team.id, bob.id, TeamRole::Viewer, added).await;
        assert!(
            matches!(duplicate, Err(StoreError::Conflict)),
            "{backend}: {duplicate:?}"
        );
        assert_eq!(
            store.role_in(team.id, bob.id).await.unwrap(),
            Some(TeamRole::Admin),
            "{backend}"
        );
        let members = store.members(team.id).await.unwrap();
        assert_eq!(
            members
                .iter()
                .map(|m| (m.username.as_str(), m.role, m.added_at))
                .collect::<Vec<_>>(),
            vec![
                ("alice", TeamRole::Owner, joined),
                ("bob", TeamRole::Admin, added),
                ("carol", TeamRole::Member, added),
                ("dave", TeamRole::Viewer, added),
            ],
            "{backend}"
        );
        assert_eq!(
            store.teams_of(bob.id).await.unwrap(),
            vec![(team.clone(), TeamRole::Admin)],
            "{backend}"
        );
        assert!(store.teams_of(eve.id).await.unwrap().is_empty(), "{backend}");
        assert!(store.role_in(team.id, eve.id).await.unwrap().is_none(), "{backend}");

        // The last owner can be neither demoted nor removed.
        assert_eq!(
            store.set_role(team.id, alice.id, TeamRole::Admin).await.unwrap(),
            MembershipChange::LastOwner,
            "{backend}"
        );
        assert_eq!(
            store.remove_member(team.id, alice.id).await.unwrap(),
            MembershipChange::LastOwner,
            "{backend}"
        );
        assert_eq!(
            store.set_role(team.id, alice.id, TeamRole::Owner).await.unwrap(),
            MembershipChange::Done,
            "{backend}: owner to owner is harmless"
        );
        assert_eq!(
            store.role_in(team.id, alice.id).await.unwrap(),
            Some(TeamRole::Owner),
            "{backend}"
        );

        // With a second owner, either may step down, but not both.
        assert_eq!(
            store.set_role(team.id, bob.id, TeamRole::Owner).await.unwrap(),
            MembershipChange::Done,
            "{backend}"
        );
        assert_eq!(
            store.set_role(team.id, alice.id, TeamRole::Member).await.unwrap(),
            MembershipChange::Done,
            "{backend}"
        );
        assert_eq!(
            store.set_role(team.id, bob.id, TeamRole::Viewer).await.unwrap(),
            MembershipChange::LastOwner,
            "{backend}"
        );
        assert_eq!(
            store.remove_member(team.id, bob.id).await.unwrap(),
            MembershipChange::LastOwner,
            "{backend}"
        );
        assert_eq!(
            store.role_in(team.id, bob.id).await.unwrap(),
            Some(TeamRole::Owner),
            "{backend}"
        );
        assert_eq!(
            store.role_in(team.id, alice.id).await.unwrap(),
            Some(TeamRole::Member),
            "{backend}"
        );

        // Non-owners come and go freely.
        assert_eq!(
            store.remove_member(team.id, carol.id).await.unwrap(),
            MembershipChange::Done,
            "{backend}"
        );
        assert!(store.role_in(team.id, carol.id).await.unwrap().is_none(), "{backend}");
        assert!(store.teams_of(carol.id).await.unwrap().is_empty(), "{backend}");
        assert_eq!(
            store.remove_member(team.id, carol.id).await.unwrap(),
            MembershipChange::NotMember,
            "{backend}"
        );
        assert_eq!(
            store.set_role(team.id, carol.id, TeamRole::Viewer).await.unwrap(),
            MembershipChange::NotMember,
            "{backend}"
        );
        assert_eq!(
            store
                .set_role(TeamId::generate(), bob.id, TeamRole::Viewer)
                .await
                .unwrap(),
            MembershipChange::NotMember,
            "{backend}: unknown team"
        );
        assert_eq!(
            store.set_role(team.id, dave.id, TeamRole::Member).await.unwrap(),
            MembershipChange::Done,
            "{backend}"
        );
        assert_eq!(
            store
                .members(team.id)
                .await
                .unwrap()
                .iter()
                .map(|m| (m.user, m.role))
                .collect::<Vec<_>>(),
            vec![
                (alice.id, TeamRole::Member),
                (bob.id, TeamRole::Owner),
                (dave.id, TeamRole::Member),
            ],
            "{backend}"
        );
        store
            .add_member(team.id, carol.id, TeamRole::Viewer, added)
            .await
            .unwrap();
        assert_eq!(
            store.role_in(team.id, carol.id).await.unwrap(),
            Some(TeamRole::Viewer),
            "{backend}"
        );

        // Renaming.
        let renamed = store.rename_team(team.id, "R&D").await.unwrap().unwrap();
        assert_eq!(
            renamed,
            Team {
                name: "R&D".into(),
                ..team.clone()
            },
            "{backend}"
        );
        assert_eq!(store.team(team.id).await.unwrap(), Some(renamed.clone()), "{backend}");
        assert!(
            store.rename_team(TeamId::generate(), "x").await.unwrap().is_none(),
            "{backend}"
        );
        assert_eq!(
            store.teams_of(alice.id).await.unwrap(),
            vec![(renamed, TeamRole::Member)],
            "{backend}"
        );
    }
}

/// `members` lists by username and `teams_of` by team name, both in byte order on every backend (as the file
/// listings are), whatever the database's collation.
#[tokio::test]
async fn members_and_teams_are_listed_in_byte_order() {
    for (backend, store, _scratch) in common::backends("collaboration.db").await {
        let owner = user(store.as_ref(), "owner").await;
        let team = new_team(store.as_ref(), "punctuation", &owner).await;
        let now = handoff_core::now();
        for name in ["a_z", "a.z", "a-z", "a0z", "abz"] {
            let u = user(store.as_ref(), name).await;
            store.add_member(team.id, u.id, TeamRole::Member, now).await.unwrap();
        }
        let names: Vec<String> = store
            .members(team.id)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.username.as_str().to_owned())
            .collect();
        assert_eq!(
            names,
            ["a-z", "a.z", "a0z", "a_z", "abz", "owner"],
            "{backend}: usernames"
        );

        let member = user(store.as_ref(), "member").await;
        for name in ["beta", "alpha", "Alpha", "_x", "Beta"] {
            let t = new_team(store.as_ref(), name, &owner).await;
            store.add_member(t.id, member.id, TeamRole::Viewer, now).await.unwrap();
        }
        let names: Vec<String> = store
            .teams_of(member.id)
            .await
            .unwrap()
            .into_iter()
            .map(|(t, _)| t.name)
            .collect();
        assert_eq!(names, ["Alpha", "Beta", "_x", "alpha", "beta"], "{backend}: team names");
    }
}

/// Two owners demoting (or removing) each other at the same moment: exactly one succeeds, one owner is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn owners_demoting_each_other_leave_exactly_one_owner() {
    for (backend, store, _scratch) in common::backends("collaboration.db").await {
        let alice = user(store.as_ref(), "alice").await;
        let bob = user(store.as_ref(), "bob").await;
        for round in 0..12 {
            let team = new_team(store.as_ref(), &format!("round-{round}"), &alice).await;
            store
                .add_member(team.id, bob.id, TeamRole::Owner, handoff_core::now())
                .await
                .unwrap();
            let remove = round % 2 == 1;
            let team_id = team.id;
            let outcomes = join_all(
                [bob.id, alice.id]
                    .into_iter()
                    .map(|target| {
                        let store = store.clone();
                        async move {
                            if remove {
                                store.remove_member(team_id, target).await.unwrap()
                            } else {
                                store.set_role(team_id, target, TeamRole::Admin).await.unwrap()
                            }
                        }
                    })
                    .collect(),
            )
            .await;
            let done = outcomes.iter().filter(|o| **o == MembershipChange::Done).count();
            let refused = outcomes.iter().filter(|o| **o == MembershipChange::LastOwner).count();
            assert_eq!((done, refused), (1, 1), "{backend} round {round}: {outcomes:?}");
            let owners = store
                .members(team.id)
                .await
                .unwrap()
                .into_iter()
                .filter(|m| m.role == TeamRole::Owner)
                .count();
            assert_eq!(owners, 1, "{backend} round {round}");
            assert_eq!(
                store.members(team.id).await.unwrap().len(),
                if remove { 1 } else { 2 },
                "{backend} round {round}"
            );
        }
    }
}

#[tokio::test]
async fn deleting_a_team_returns_its_files_and_removes_everything_of_it() {
    for (backend, store, _scratch) in common::backends("collaboration.db").await {
        let alice = user(store.as_ref(), "alice").await;
        let bob = user(store.as_ref(), "bob").await;
        let team = new_team(store.as_ref(), "doomed", &alice).await;
        let other = new_team(store.as_ref(), "survivor", &alice).await;
        store
            .add_member(team.id, bob.id, TeamRole::Member, handoff_core::now())
            .await
            .unwrap();
        store
            .add_member(other.id, bob.id, TeamRole::Viewer, handoff_core::now())
            .await
            .unwrap();
        let at = handoff_core::now();
        let link = UploadLink {
            team: Some(team.id),
            ..new_link(&alice, at)
        };
        store.create_upload_link(&link, &[1; 32]).await.unwrap();
        let team_files = vec![
            team_file(team.id, &alice, "t1", 1, at),
            team_file(team.id, &bob, "t2", 2, at),
            FileRecord {
                upload_link: Some(link.id),
                ..team_file(team.id, &alice, "t3", 3, at)
            },
        ];
        store
            .commit_files(&team_files[..2], &rules(Quota::UNLIMITED))
            .await
            .unwrap();
        let via_link = CommitRules {
            upload_link: Some(link.id),
            ..rules(Quota::UNLIMITED)
        };
        assert_eq!(
            store.commit_files(&team_files[2..], &via_link).await.unwrap(),
            CommitOutcome::Committed,
            "{backend}"
        );
        let kept_team_file = team_file(other.id, &alice, "kept", 4, at);
        store.insert_files(std::slice::from_ref(&kept_team_file)).await.unwrap();
        let personal = file(&alice, "personal", 5, at);
        store.insert_files(std::slice::from_ref(&personal)).await.unwrap();
        let share = new_share(&alice, vec![team_files[0].key.clone(), personal.key.clone()], at);
        store.create_share(&share, &[2; 32]).await.unwrap();

        let deleted = store.delete_team(team.id).await.unwrap();
        assert_eq!(key_set(&deleted), key_set(&team_files), "{backend}");
        for f in &deleted {
            let original = team_files.iter().find(|t| t.key == f.key).unwrap();
            assert_eq!(
                (f.blob, f.size, f.team),
                (original.blob, original.size, Some(team.id)),
                "{backend}"
            );
        }
        assert!(store.team(team.id).await.unwrap().is_none(), "{backend}");
        assert!(store.members(team.id).await.unwrap().is_empty(), "{backend}");
        assert!(store.role_in(team.id, bob.id).await.unwrap().is_none(), "{backend}");
        assert_eq!(
            store.teams_of(bob.id).await.unwrap(),
            vec![(other.clone(), TeamRole::Viewer)],
            "{backend}"
        );
        for f in &team_files {
            assert!(store.file_by_key(&f.key).await.unwrap().is_none(), "{backend}");
        }
        assert!(
            store.list_team_files(team.id, None, 10).await.unwrap().is_empty(),
            "{backend}"
        );
        assert!(
            store.upload_link(link.id).await.unwrap().is_none(),
            "{backend}: the team's links go too"
        );
        assert!(matches!(
            store.usage(Account::Team(team.id), Quota::UNLIMITED).await,
            Err(StoreError::NotFound)
        ));
        assert_eq!(
            store.share(share.id).await.unwrap().unwrap().files,
            vec![personal.key.clone()],
            "{backend}: the team's files leave the shares"
        );
        assert!(store.file_by_key(&personal.key).await.unwrap().is_some(), "{backend}");
        assert!(
            store.file_by_key(&kept_team_file.key).await.unwrap().is_some(),
            "{backend}"
        );
        assert!(
            store.delete_team(team.id).await.unwrap().is_empty(),
            "{backend}: deleting again is harmless"
        );
        assert!(
            store.blob_is_referenced(personal.blob).await.unwrap()
                && !store.blob_is_referenced(team_files[0].blob).await.unwrap(),
            "{backend}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Listings
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn team_all_and_personal_listings_page_newest_first() {
    for (backend, store, _scratch) in common::backends("collaboration.db").await {
        let alice = user(store.as_ref(), "alice").await;
        let bob = user(store.as_ref(), "bob").await;
        let team = new_team(store.as_ref(), "crew", &alice).await;
        let other = new_team(store.as_ref(), "others", &bob).await;
        let base = handoff_core::now();
        // Several files share a timestamp, with keys whose byte order differs from a locale's, so that the key
        // breaks ties in byte order.
        let mut team_files = Vec::new();
        for (i, first) in ["a", "B", "_", "-", "0", "b"].into_iter().enumerate() {
            let uploader = if i % 3 == 0 { &bob } else { &alice };
            let at = base + Duration::seconds(i64::try_from(i).unwrap().min(2));
            team_files.push(FileRecord {
                key: key_starting(first, 't'),
                ..team_file(team.id, uploader, &format!("t{i}"), 1, at)
            });
        }
        let mut personal = Vec::new();
        for (i, first) in ["A", "z", "Z", "9"].into_iter().enumerate() {
            let at = base + Duration::seconds(i64::try_from(i).unwrap() % 2);
            personal.push(FileRecord {
                key: key_starting(first, 'p'),
                ..file(&alice, &format!("p{i}"), 1, at)
            });
        }
        let bobs = FileRecord {
            key: key_starting("c", 'q'),
            ..file(&bob, "bobs", 1, base)
        };
        let others = FileRecord {
            key: key_starting("d", 'r'),
            ..team_file(other.id, &bob, "others", 1, base + Duration::seconds(1))
        };
        // One batch: every file of it is on the team's account, whoever uploaded it.
        store.insert_files(&team_files).await.unwrap();
        store.insert_files(&personal).await.unwrap();
        store.insert_files(std::slice::from_ref(&bobs)).await.unwrap();
        store.insert_files(std::slice::from_ref(&others)).await.unwrap();

        let (team_id, alice_id) = (team.id, alice.id);
        let seen = walk(2, |after| {
            let store = store.clone();
            async move { store.list_team_files(team_id, after.as_ref(), 2).await.unwrap() }
        })
        .await;
        assert_eq!(seen, newest_first(&team_files), "{backend}: team files");

        let everything: Vec<FileRecord> = team_files
            .iter()
            .chain(&personal)
            .chain([&bobs, &others])
            .cloned()
            .collect();
        let seen = walk(3, |after| {
            let store = store.clone();
            async move { store.list_all_files(after.as_ref(), 3).await.unwrap() }
        })
        .await;
        assert_eq!(seen, newest_first(&everything), "{backend}: every file");

        // `list_files` is the personal space: the owner's files outside any team. Team files name their uploader
        // as `owner`, yet never show up there (alice uploaded four of the team's six).
        assert!(team_files.iter().filter(|f| f.owner == alice.id).count() == 4);
        let seen = walk(2, |after| {
            let store = store.clone();
            async move { store.list_files(alice_id, after.as_ref(), 2).await.unwrap() }
        })
        .await;
        assert_eq!(seen, newest_first(&personal), "{backend}: alice's personal files only");
        assert_eq!(
            keys(&store.list_files(bob.id, None, 100).await.unwrap()),
            vec![bobs.key.clone()],
            "{backend}: bob's personal files only"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Share links
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn shares_round_trip_update_and_revoke() {
    for (backend, store, _scratch) in common::backends("collaboration.db").await {
        let alice = user(store.as_ref(), "alice").await;
        let bob = user(store.as_ref(), "bob").await;
        let base = handoff_core::now();
        let files: Vec<FileRecord> = (0..3).map(|i| file(&alice, &format!("s{i}"), 1, base)).collect();
        store.insert_files(&files).await.unwrap();
        let share = Share {
            note: Some("for the auditors".into()),
            password_hash: Some("$argon2id$share".into()),
            expires_at: Some(base + Duration::days(1)),
            max_downloads: Some(5),
            ..new_share(
                &alice,
                vec![files[2].key.clone(), files[0].key.clone(), files[1].key.clone()],
                base,
            )
        };
        store.create_share(&share, &[1; 32]).await.unwrap();
        assert_eq!(
            store.share(share.id).await.unwrap().as_ref(),
            Some(&share),
            "{backend}: files keep their order"
        );
        assert_eq!(
            store.share_by_token(&[1; 32]).await.unwrap().as_ref(),
            Some(&share),
            "{backend}"
        );
        assert!(store.share_by_token(&[9; 32]).await.unwrap().is_none(), "{backend}");
        assert!(store.share(ShareId::generate()).await.unwrap().is_none(), "{backend}");
        let result = store.create_share(&new_share(&bob, vec![], base), &[1; 32]).await;
        assert!(
            matches!(result, Err(StoreError::Conflict)),
            "{backend}: same token: {result:?}"
        );

        let later = new_share(&alice, vec![files[1].key.clone()], base + Duration::seconds(1));
        store.create_share(&later, &[2; 32]).await.unwrap();
        assert_eq!(
            store.shares_of(alice.id).await.unwrap(),
            vec![later.clone(), share.clone()],
            "{backend}: newest first"
        );
        assert!(store.shares_of(bob.id).await.unwrap().is_empty(), "{backend}");

        // Each field on its own: set, then cleared with Some(None); absent fields are kept.
        let t1 = base + Duration::minutes(1);
        let updated = store
            .update_share(
                share.id,
                &SharePatch {
                    note: Some(Some("new note".into())),
                    ..SharePatch::default()
                },
                t1,
            )
            .await
            .unwrap()
            .unwrap();
        let mut expected = Share {
            note: Some("new note".into()),
            updated_at: t1,
            ..share.clone()
        };
        assert_eq!(updated, expected, "{backend}: note set");
        let steps: [PatchStep; 8] = [
            (
                "note cleared",
                SharePatch {
                    note: Some(None),
                    ..SharePatch::default()
                },
                |s| s.note = None,
            ),
            (
                "password cleared",
                SharePatch {
                    password_hash: Some(None),
                    ..SharePatch::default()
                },
                |s| s.password_hash = None,
            ),
            (
                "password set",
                SharePatch {
                    password_hash: Some(Some("$argon2id$other".into())),
                    ..SharePatch::default()
                },
                |s| s.password_hash = Some("$argon2id$other".into()),
            ),
            (
                "expiry cleared",
                SharePatch {
                    expires_at: Some(None),
                    ..SharePatch::default()
                },
                |s| s.expires_at = None,
            ),
            (
                "expiry set",
                SharePatch {
                    expires_at: Some(Some(base + Duration::days(30))),
                    ..SharePatch::default()
                },
                |s| s.expires_at = Some(s.created_at + Duration::days(30)),
            ),
            (
                "max downloads cleared",
                SharePatch {
                    max_downloads: Some(None),
                    ..SharePatch::default()
                },
                |s| s.max_downloads = None,
            ),
            (
                "max downloads set",
                SharePatch {
                    max_downloads: Some(Some(7)),
                    ..SharePatch::default()
                },
                |s| s.max_downloads = Some(7),
            ),
            ("nothing", SharePatch::default(), |_| {}),
        ];
        for (i, (what, patch, apply)) in steps.into_iter().enumerate() {
            let now = t1 + Duration::seconds(i64::try_from(i).unwrap() + 1);
            apply(&mut expected);
            expected.updated_at = now;
            let updated = store.update_share(share.id, &patch, now).await.unwrap();
            assert_eq!(updated.as_ref(), Some(&expected), "{backend}: {what}");
            assert_eq!(
                store.share(share.id).await.unwrap().as_ref(),
                Some(&expected),
                "{backend}: {what}"
            );
        }
        // Everything at once.
        let all = SharePatch {
            note: Some(Some("all".into())),
            password_hash: Some(None),
            expires_at: Some(None),
            max_downloads: Some(None),
        };
        let t2 = t1 + Duration::minutes(1);
        let updated = store.update_share(share.id, &all, t2).await.unwrap().unwrap();
        assert_eq!(
            updated,
            Share {
                note: Some("all".into()),
                password_hash: None,
                expires_at: None,
                max_downloads: None,
                updated_at: t2,
                ..share.clone()
            },
            "{backend}"
        );
        assert!(
            store
                .update_share(ShareId::generate(), &all, t2)
                .await
                .unwrap()
                .is_none(),
            "{backend}"
        );

        // Revoking.
        let t3 = t2 + Duration::minutes(1);
        assert!(store.revoke_share(share.id, t3).await.unwrap(), "{backend}");
        assert!(!store.revoke_share(ShareId::generate(), t3).await.unwrap(), "{backend}");
        let revoked = store.share(share.id).await.unwrap().unwrap();
        assert!(revoked.revoked && revoked.updated_at == t3, "{backend}: {revoked:?}");
        assert!(!revoked.is_live(t3), "{backend}");
        assert!(
            !store.count_share_download(share.id, t3).await.unwrap(),
            "{backend}: revoked"
        );
        assert_eq!(store.share(share.id).await.unwrap().unwrap().downloads, 0, "{backend}");

        // Deleting a file takes it out of its shares, keeping the others' order.
        store.delete_file(&files[0].key).await.unwrap().unwrap();
        assert_eq!(
            store.share(share.id).await.unwrap().unwrap().files,
            vec![files[2].key.clone(), files[1].key.clone()],
            "{backend}"
        );
        store.delete_file(&files[1].key).await.unwrap().unwrap();
        assert_eq!(
            store.share(later.id).await.unwrap().unwrap().files,
            Vec::<FileKey>::new(),
            "{backend}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn share_downloads_are_counted_exactly() {
    for (backend, store, _scratch) in common::backends("collaboration.db").await {
        let alice = user(store.as_ref(), "alice").await;
        let now = handoff_core::now();
        let f = file(&alice, "popular", 1, now);
        store.insert_files(std::slice::from_ref(&f)).await.unwrap();

        // A hundred simultaneous downloads of a five-download link: exactly five count.
        let limited = Share {
            max_downloads: Some(5),
            expires_at: Some(now + Duration::hours(1)),
            ..new_share(&alice, vec![f.key.clone()], now)
        };
        store.create_share(&limited, &[1; 32]).await.unwrap();
        let limited_id = limited.id;
        let counted = join_all(
            (0..100)
                .map(|_| {
                    let store = store.clone();
                    async move { store.count_share_download(limited_id, now).await.unwrap() }
                })
                .collect(),
        )
        .await;
        assert_eq!(counted.iter().filter(|c| **c).count(), 5, "{backend}");
        let after = store.share(limited.id).await.unwrap().unwrap();
        assert_eq!(after.downloads, 5, "{backend}");
        assert!(!after.is_live(now), "{backend}");
        assert!(!store.count_share_download(limited.id, now).await.unwrap(), "{backend}");

        // Unlimited links count every download.
        let unlimited = new_share(&alice, vec![f.key.clone()], now);
        store.create_share(&unlimited, &[2; 32]).await.unwrap();
        for _ in 0..7 {
            assert!(
                store.count_share_download(unlimited.id, now).await.unwrap(),
                "{backend}"
            );
        }
        assert_eq!(
            store.share(unlimited.id).await.unwrap().unwrap().downloads,
            7,
            "{backend}"
        );

        // Expired links (at or after their expiry) count nothing; unknown links neither.
        let expiring = Share {
            expires_at: Some(now),
            ..new_share(&alice, vec![f.key.clone()], now - Duration::hours(1))
        };
        store.create_share(&expiring, &[3; 32]).await.unwrap();
        assert!(
            store
                .count_share_download(expiring.id, now - Duration::seconds(1))
                .await
                .unwrap(),
            "{backend}: still live a second earlier"
        );
        assert!(
            !store.count_share_download(expiring.id, now).await.unwrap(),
            "{backend}"
        );
        assert!(
            !store
                .count_share_download(expiring.id, now + Duration::days(1))
                .await
                .unwrap(),
            "{backend}"
        );
        assert_eq!(
            store.share(expiring.id).await.unwrap().unwrap().downloads,
            1,
            "{backend}"
        );
        assert!(
            !store.count_share_download(ShareId::generate(), now).await.unwrap(),
            "{backend}"
        );
    }
}

#[tokio::test]
async fn share_grants_and_pruning() {
    for (backend, store, _scratch) in common::backends("collaboration.db").await {
        let alice = user(store.as_ref(), "alice").await;
        let now = handoff_core::now();
        let f = file(&alice, "granted", 1, now);
        store.insert_files(std::slice::from_ref(&f)).await.unwrap();
        let share = new_share(&alice, vec![f.key.clone()], now);
        store.create_share(&share, &[1; 32]).await.unwrap();

        let expires = now + Duration::minutes(10);
        store.insert_share_grant(&[10; 32], share.id, 2, expires).await.unwrap();
        assert_eq!(
            store.share_grant(&[10; 32], now).await.unwrap(),
            Some((share.id, 2)),
            "{backend}"
        );
        assert_eq!(
            store
                .share_grant(&[10; 32], expires - Duration::seconds(1))
                .await
                .unwrap(),
            Some((share.id, 2)),
            "{backend}"
        );
        assert!(
            store.share_grant(&[10; 32], expires).await.unwrap().is_none(),
            "{backend}: expired"
        );
        assert!(
            store.share_grant(&[11; 32], now).await.unwrap().is_none(),
            "{backend}: unknown"
        );
        let duplicate = store.insert_share_grant(&[10; 32], share.id, 0, expires).await;
        assert!(
            matches!(duplicate, Err(StoreError::Conflict)),
            "{backend}: {duplicate:?}"
        );

        // Pruning at `cutoff`: links that expired or were revoked at or before it go (with their grants), and
        // expired grants go; live links and live grants stay.
        let cutoff = now + Duration::hours(1);
        let expired = Share {
            expires_at: Some(cutoff - Duration::seconds(1)),
            ..new_share(&alice, vec![f.key.clone()], now)
        };
        let expiring_at_cutoff = Share {
            expires_at: Some(cutoff),
            ..new_share(&alice, vec![f.key.clone()], now)
        };
        let revoked = new_share(&alice, vec![f.key.clone()], now);
        let revoked_later = new_share(&alice, vec![f.key.clone()], now);
        let future = Share {
            expires_at: Some(cutoff + Duration::seconds(1)),
            ..new_share(&alice, vec![f.key.clone()], now)
        };
        for (i, s) in [&expired, &expiring_at_cutoff, &revoked, &revoked_later, &future]
            .into_iter()
            .enumerate()
        {
            store
                .create_share(s, &[20 + u8::try_from(i).unwrap(); 32])
                .await
                .unwrap();
        }
        assert!(
            store
                .revoke_share(revoked.id, now + Duration::minutes(1))
                .await
                .unwrap()
        );
        assert!(
            store
                .revoke_share(revoked_later.id, cutoff + Duration::minutes(1))
                .await
                .unwrap()
        );
        let far = cutoff + Duration::days(1);
        store.insert_share_grant(&[12; 32], expired.id, 0, far).await.unwrap();
        store.insert_share_grant(&[13; 32], future.id, 0, far).await.unwrap();
        store.insert_share_grant(&[14; 32], future.id, 0, cutoff).await.unwrap();

        assert_eq!(store.prune_shares(cutoff).await.unwrap(), 3, "{backend}");
        for (what, id, kept) in [
            ("expired", expired.id, false),
            ("expiring at cutoff", expiring_at_cutoff.id, false),
            ("revoked", revoked.id, false),
            ("revoked after cutoff", revoked_later.id, true),
            ("future", future.id, true),
            ("unlimited", share.id, true),
        ] {
            assert_eq!(store.share(id).await.unwrap().is_some(), kept, "{backend}: {what}");
        }
        let before_cutoff = now;
        assert!(
            store.share_grant(&[12; 32], before_cutoff).await.unwrap().is_none(),
            "{backend}: a pruned link's grants go with it"
        );
        assert!(
            store.share_grant(&[10; 32], before_cutoff).await.unwrap().is_none(),
            "{backend}: expired grants are forgotten"
        );
        assert!(
            store.share_grant(&[14; 32], before_cutoff).await.unwrap().is_none(),
            "{backend}: a grant expiring at the cutoff is forgotten"
        );
        assert_eq!(
            store.share_grant(&[13; 32], before_cutoff).await.unwrap(),
            Some((future.id, 0)),
            "{backend}"
        );
        assert_eq!(
            store.prune_shares(cutoff).await.unwrap(),
            0,
            "{backend}: nothing left to prune"
        );
        assert!(
            store.file_by_key(&f.key).await.unwrap().is_some(),
            "{backend}: files stay"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Retention
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn expired_files_are_deleted_and_refunded() {
    for (backend, store, _scratch) in common::backends("collaboration.db").await {
        let alice = user(store.as_ref(), "alice").await;
        let bob = user(store.as_ref(), "bob").await;
        let team = new_team(store.as_ref(), "crew", &alice).await;
        let now = handoff_core::now();
        let expiring = |f: FileRecord, expires_at: Option<OffsetDateTime>| FileRecord { expires_at, ..f };
        let alice_expired = vec![
            expiring(file(&alice, "a1", 1, now), Some(now - Duration::days(2))),
            expiring(file(&alice, "a2", 2, now), Some(now - Duration::seconds(1))),
            expiring(file(&alice, "a3", 4, now), Some(now)),
        ];
        let alice_kept = vec![
            expiring(file(&alice, "a4", 8, now), Some(now + Duration::seconds(1))),
            expiring(file(&alice, "a5", 16, now), None),
        ];
        let bob_expired = vec![expiring(file(&bob, "b1", 32, now), Some(now - Duration::days(1)))];
        let team_expired = vec![expiring(
            team_file(team.id, &bob, "t1", 64, now),
            Some(now - Duration::hours(1)),
        )];
        let team_kept = vec![expiring(team_file(team.id, &alice, "t2", 128, now), None)];
        for batch in [&alice_expired, &alice_kept, &bob_expired, &team_expired, &team_kept] {
            store.insert_files(batch).await.unwrap();
        }
        let share = new_share(
            &alice,
            vec![alice_expired[0].key.clone(), alice_kept[0].key.clone()],
            now,
        );
        store.create_share(&share, &[1; 32]).await.unwrap();

        // A limit takes the earliest expiries first.
        let first = store.delete_expired_files(now, 2).await.unwrap();
        assert_eq!(
            key_set(&first),
            key_set(&[alice_expired[0].clone(), bob_expired[0].clone()]),
            "{backend}: the two earliest expiries"
        );
        let rest = store.delete_expired_files(now, 100).await.unwrap();
        assert_eq!(
            key_set(&rest),
            key_set(&[
                alice_expired[1].clone(),
                alice_expired[2].clone(),
                team_expired[0].clone()
            ]),
            "{backend}"
        );
        assert!(
            store.delete_expired_files(now, 100).await.unwrap().is_empty(),
            "{backend}"
        );
        for f in first.iter().chain(&rest) {
            let original = alice_expired
                .iter()
                .chain(&bob_expired)
                .chain(&team_expired)
                .find(|o| o.key == f.key)
                .unwrap();
            assert_eq!(
                (f.blob, f.size, f.expires_at),
                (original.blob, original.size, original.expires_at)
            );
            assert!(store.file_by_key(&f.key).await.unwrap().is_none(), "{backend}");
        }
        for f in alice_kept.iter().chain(&team_kept) {
            assert!(store.file_by_key(&f.key).await.unwrap().is_some(), "{backend}");
        }
        assert_eq!(
            store.usage(Account::User(alice.id), Quota::UNLIMITED).await.unwrap(),
            usage(24, 2, Quota::UNLIMITED),
            "{backend}"
        );
        assert_eq!(
            store.usage(Account::User(bob.id), Quota::UNLIMITED).await.unwrap(),
            usage(0, 0, Quota::UNLIMITED),
            "{backend}"
        );
        assert_eq!(
            store.usage(Account::Team(team.id), Quota::UNLIMITED).await.unwrap(),
            usage(128, 1, Quota::UNLIMITED),
            "{backend}"
        );
        assert_eq!(
            store.share(share.id).await.unwrap().unwrap().files,
            vec![alice_kept[0].key.clone()],
            "{backend}"
        );
        // Later, the next one expires.
        let later = store
            .delete_expired_files(now + Duration::seconds(1), 100)
            .await
            .unwrap();
        assert_eq!(keys(&later), vec![alice_kept[0].key.clone()], "{backend}");
    }
}

/// Several retention sweeps at once (several nodes): every expired file is returned exactly once, and usage is
/// refunded exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_retention_sweeps_never_share_a_file() {
    for (backend, store, _scratch) in common::backends("collaboration.db").await {
        let alice = user(store.as_ref(), "alice").await;
        let bob = user(store.as_ref(), "bob").await;
        let team = new_team(store.as_ref(), "crew", &alice).await;
        // Several rounds: a lost race shows up only now and then.
        for round in 0..4 {
            let now = handoff_core::now();
            let mut expired = Vec::new();
            for i in 0..60i64 {
                // Interleave the accounts, so that each sweep refunds several accounts.
                let f = match i % 3 {
                    0 => file(&alice, &format!("a{round}-{i}"), 1, now),
                    1 => file(&bob, &format!("b{round}-{i}"), 1, now),
                    _ => team_file(team.id, &bob, &format!("t{round}-{i}"), 1, now),
                };
                let f = FileRecord {
                    expires_at: Some(now - Duration::seconds(60 - i)),
                    ..f
                };
                store.insert_files(std::slice::from_ref(&f)).await.unwrap();
                expired.push(f);
            }
            let sweeps = join_all(
                (0..4)
                    .map(|_| {
                        let store = store.clone();
                        async move {
                            let mut mine = Vec::new();
                            loop {
                                match store.delete_expired_files(now, 4).await {
                                    Ok(batch) if batch.is_empty() => return Ok(mine),
                                    Ok(batch) => mine.extend(batch),
                                    Err(e) => return Err(format!("{e}")),
                                }
                            }
                        }
                    })
                    .collect(),
            )
            .await;
            let mut all = Vec::new();
            for sweep in sweeps {
                all.extend(sweep.unwrap_or_else(|e| panic!("{backend} round {round}: a sweep failed: {e}")));
            }
            let unique: HashSet<&str> = all.iter().map(|f| f.key.as_str()).collect();
            assert_eq!(
                unique.len(),
                all.len(),
                "{backend} round {round}: a file was returned twice"
            );
            assert_eq!(key_set(&all), key_set(&expired), "{backend} round {round}");
            for account in [Account::User(alice.id), Account::User(bob.id), Account::Team(team.id)] {
                assert_eq!(
                    store.usage(account, Quota::UNLIMITED).await.unwrap(),
                    usage(0, 0, Quota::UNLIMITED),
                    "{backend} round {round}: {account:?}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Audit log
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn audit_log_pages_by_scope_newest_first() {
    for (backend, store, _scratch) in common::backends("collaboration.db").await {
        let alice = user(store.as_ref(), "alice").await;
        let bob = user(store.as_ref(), "bob").await;
        let team = new_team(store.as_ref(), "crew", &alice).await;
        store.append_audit(&[]).await.unwrap();
        let base = handoff_core::now();
        let key = FileKey::generate();
        let event = |i: i64, action: &str, owner: Option<UserId>, team: Option<TeamId>| AuditEvent {
            id: AuditId::generate(),
            at: base + Duration::milliseconds(i),
            action: action.to_owned(),
            actor: Some(alice.id),
            owner,
            team,
            file: None,
            detail: None,
        };
        let events = [
            AuditEvent {
                file: Some(key.clone()),
                detail: Some(r#"{"name":"report.pdf"}"#.into()),
                ..event(0, "file.upload", Some(alice.id), None)
            },
            AuditEvent {
                actor: None,
                ..event(1, "share.download", Some(alice.id), None)
            },
            event(2, "team.member_add", None, Some(team.id)),
            event(3, "file.upload", Some(bob.id), Some(team.id)),
            AuditEvent {
                actor: None,
                ..event(4, "server.start", None, None)
            },
            event(5, "file.delete", Some(alice.id), Some(team.id)),
        ];
        // Two batches.
        store.append_audit(&events[..2]).await.unwrap();
        store.append_audit(&events[2..]).await.unwrap();

        let scoped = |filter: &dyn Fn(&AuditEvent) -> bool| -> Vec<AuditEvent> {
            let mut chosen: Vec<AuditEvent> = events.iter().filter(|e| filter(e)).cloned().collect();
            chosen.sort_by_key(|e| std::cmp::Reverse(e.id));
            chosen
        };
        assert_eq!(
            store.audit_page(AuditScope::Owner(alice.id), None, 100).await.unwrap(),
            scoped(&|e| e.owner == Some(alice.id)),
            "{backend}: alice's"
        );
        assert_eq!(
            store.audit_page(AuditScope::Owner(bob.id), None, 100).await.unwrap(),
            scoped(&|e| e.owner == Some(bob.id)),
            "{backend}: bob's"
        );
        assert_eq!(
            store.audit_page(AuditScope::Team(team.id), None, 100).await.unwrap(),
            scoped(&|e| e.team == Some(team.id)),
            "{backend}: the team's"
        );
        let everything = scoped(&|_| true);
        assert_eq!(
            store.audit_page(AuditScope::Everything, None, 100).await.unwrap(),
            everything,
            "{backend}: everything"
        );
        assert!(
            store
                .audit_page(AuditScope::Team(TeamId::generate()), None, 100)
                .await
                .unwrap()
                .is_empty(),
            "{backend}"
        );

        // The `before` cursor walks every scope, page by page.
        for (what, scope, expected) in [
            ("everything", AuditScope::Everything, everything.clone()),
            (
                "owner",
                AuditScope::Owner(alice.id),
                scoped(&|e| e.owner == Some(alice.id)),
            ),
            ("team", AuditScope::Team(team.id), scoped(&|e| e.team == Some(team.id))),
        ] {
            let mut seen = Vec::new();
            let mut before = None;
            loop {
                let page = store.audit_page(scope, before, 2).await.unwrap();
                assert!(page.len() <= 2, "{backend}");
                let Some(last) = page.last() else { break };
                before = Some(last.id);
                seen.extend(page);
            }
            assert_eq!(seen, expected, "{backend}: {what}");
        }
        assert_eq!(
            store
                .audit_page(AuditScope::Everything, Some(everything[2].id), 100)
                .await
                .unwrap(),
            everything[3..].to_vec(),
            "{backend}: strictly before"
        );

        // A batch is all or nothing.
        let fresh = event(6, "file.upload", Some(bob.id), None);
        let result = store.append_audit(&[fresh.clone(), events[0].clone()]).await;
        assert!(matches!(result, Err(StoreError::Conflict)), "{backend}: {result:?}");
        assert_eq!(
            store.audit_page(AuditScope::Everything, None, 100).await.unwrap(),
            everything,
            "{backend}: nothing of the failed batch"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Accounts
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn first_account_is_admin_and_flags_change() {
    for (backend, store, _scratch) in common::backends("collaboration.db").await {
        let root = user(store.as_ref(), "root").await;
        let bob = user(store.as_ref(), "bob").await;
        assert!(
            root.is_admin && !root.disabled,
            "{backend}: the first account administers"
        );
        assert!(!bob.is_admin && !bob.disabled, "{backend}: the second does not");
        assert!(store.user_by_id(root.id).await.unwrap().unwrap().is_admin, "{backend}");
        assert!(!store.user_by_id(bob.id).await.unwrap().unwrap().is_admin, "{backend}");

        let now = handoff_core::now();
        let expires = now + Duration::days(1);
        for (hash, owner) in [([1; 32], bob.id), ([2; 32], bob.id), ([3; 32], root.id)] {
            store
                .insert_refresh_token(&NewRefreshToken {
                    hash,
                    family: Uuid::now_v7(),
                    user: owner,
                    expires_at: expires,
                })
                .await
                .unwrap();
        }

        let disabled = store.set_user_flags(bob.id, Some(true), None).await.unwrap().unwrap();
        assert_eq!(
            fields(&disabled),
            fields(&User {
                disabled: true,
                ..bob.clone()
            }),
            "{backend}"
        );
        assert_eq!(
            fields(&store.user_by_id(bob.id).await.unwrap().unwrap()),
            fields(&disabled),
            "{backend}"
        );
        for hash in [[1; 32], [2; 32]] {
            assert_eq!(
                store.rotate_refresh_token(&hash, &[9; 32], expires, now).await.unwrap(),
                RefreshOutcome::Invalid,
                "{backend}: a disabled account's refresh tokens are revoked"
            );
        }
        assert_eq!(
            store
                .rotate_refresh_token(&[3; 32], &[4; 32], expires, now)
                .await
                .unwrap(),
            RefreshOutcome::Rotated { user: root.id },
            "{backend}: other accounts keep theirs"
        );

        let unchanged = store.set_user_flags(bob.id, None, None).await.unwrap().unwrap();
        assert_eq!(fields(&unchanged), fields(&disabled), "{backend}");
        let promoted = store
            .set_user_flags(bob.id, Some(false), Some(true))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            fields(&promoted),
            fields(&User {
                is_admin: true,
                ..bob.clone()
            }),
            "{backend}"
        );
        assert_eq!(
            fields(&store.user_by_id(bob.id).await.unwrap().unwrap()),
            fields(&promoted),
            "{backend}"
        );
        assert_eq!(
            store
                .rotate_refresh_token(&[1; 32], &[10; 32], expires, now)
                .await
                .unwrap(),
            RefreshOutcome::Invalid,
            "{backend}: re-enabling does not bring tokens back"
        );
        // Enabling (Some(false)) revokes nothing.
        store
            .insert_refresh_token(&NewRefreshToken {
                hash: [5; 32],
                family: Uuid::now_v7(),
                user: bob.id,
                expires_at: expires,
            })
            .await
            .unwrap();
        store.set_user_flags(bob.id, Some(false), None).await.unwrap().unwrap();
        assert_eq!(
            store
                .rotate_refresh_token(&[5; 32], &[6; 32], expires, now)
                .await
                .unwrap(),
            RefreshOutcome::Rotated { user: bob.id },
            "{backend}"
        );
        let demoted = store.set_user_flags(root.id, None, Some(false)).await.unwrap().unwrap();
        assert!(!demoted.is_admin && !demoted.disabled, "{backend}");
        assert!(
            store
                .set_user_flags(UserId::generate(), Some(true), Some(true))
                .await
                .unwrap()
                .is_none()
        );

        // Admin status comes from being first, not from the store being without admins now.
        let carol = user(store.as_ref(), "carol").await;
        assert!(!carol.is_admin, "{backend}");
    }
}

/// Accounts created at the same moment on a fresh store: exactly one is the first, and the admin.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_first_accounts_make_exactly_one_admin() {
    for (backend, store, _scratch) in common::backends("collaboration.db").await {
        let created = join_all(
            (0..8)
                .map(|i| {
                    let store = store.clone();
                    async move { user(store.as_ref(), &format!("user{i}")).await }
                })
                .collect(),
        )
        .await;
        let admins = created.iter().filter(|u| u.is_admin).count();
        assert_eq!(admins, 1, "{backend}");
        let mut stored_admins = 0;
        for u in &created {
            stored_admins += usize::from(store.user_by_id(u.id).await.unwrap().unwrap().is_admin);
        }
        assert_eq!(stored_admins, 1, "{backend}");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Upgrading
// ---------------------------------------------------------------------------------------------------------------

/// A store created before the sharing migration, with files in it: upgrading starts every account's usage at what
/// it already stores.
#[tokio::test]
async fn upgrading_backfills_usage_from_existing_files() {
    use sqlx::SqlSafeStr as _;
    use sqlx::migrate::{Migration, MigrationType, Migrator};

    fn only_init(sql: &'static str) -> Migrator {
        Migrator {
            migrations: std::borrow::Cow::Owned(vec![Migration::new(
                1,
                std::borrow::Cow::Borrowed("init"),
                MigrationType::Simple,
                sql.into_sql_str(),
                false,
            )]),
            ..Migrator::DEFAULT
        }
    }
    let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let rows = [(alice, 10i64), (alice, 20), (bob, 5)];

    // SQLite.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("old.db").display());
    {
        let options = <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(&url)
            .unwrap()
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        only_init(include_str!("../migrations/sqlite/0001_init.sql"))
            .run(&pool)
            .await
            .unwrap();
        for (id, name) in [(alice, "alice"), (bob, "bob")] {
            sqlx::query("INSERT INTO users (id, username, created_at) VALUES (?, ?, 0)")
                .bind(id.to_string())
                .bind(name)
                .execute(&pool)
                .await
                .unwrap();
        }
        for (owner, size) in rows {
            sqlx::query(
                "INSERT INTO files (key, blob_id, owner_id, name, size, sha256, content_type, visibility, created_at,
                     updated_at) VALUES (?, ?, ?, 'old', ?, '', 'text/plain', 'key', 0, 0)",
            )
            .bind(FileKey::generate().as_str())
            .bind(Uuid::now_v7().to_string())
            .bind(owner.to_string())
            .bind(size)
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;
    }
    let mut stores = vec![("sqlite", handoff_db::connect(&url).await.unwrap(), None)];

    // PostgreSQL.
    if let Some(admin_url) = postgres_admin_url() {
        let db = TestDatabase::create(&admin_url).await;
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        only_init(include_str!("../migrations/postgres/0001_init.sql"))
            .run(&pool)
            .await
            .unwrap();
        for (id, name) in [(alice, "alice"), (bob, "bob")] {
            sqlx::query("INSERT INTO users (id, username, created_at) VALUES ($1::uuid, $2, 0)")
                .bind(id.to_string())
                .bind(name)
                .execute(&pool)
                .await
                .unwrap();
        }
        for (owner, size) in rows {
            sqlx::query(
                "INSERT INTO files (key, blob_id, owner_id, name, size, sha256, content_type, visibility, created_at,
                     updated_at) VALUES ($1, $2::uuid, $3::uuid, 'old', $4, '', 'text/plain', 'key', 0, 0)",
            )
            .bind(FileKey::generate().as_str())
            .bind(Uuid::now_v7().to_string())
            .bind(owner.to_string())
            .bind(size)
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;
        let store = handoff_db::connect(&db.url).await.unwrap();
        stores.push(("postgres", store, Some(db)));
    }

    for (backend, store, _db) in stores {
        assert_eq!(
            store
                .usage(Account::User(UserId(alice)), Quota::UNLIMITED)
                .await
                .unwrap(),
            usage(30, 2, Quota::UNLIMITED),
            "{backend}"
        );
        assert_eq!(
            store.usage(Account::User(UserId(bob)), Quota::UNLIMITED).await.unwrap(),
            usage(5, 1, Quota::UNLIMITED),
            "{backend}"
        );
        let old = store.list_files(UserId(alice), None, 10).await.unwrap();
        assert_eq!(old.len(), 2, "{backend}");
        assert!(
            old.iter()
                .all(|f| f.team.is_none() && f.expires_at.is_none() && f.upload_link.is_none())
        );
        store.delete_file(&old[0].key).await.unwrap().unwrap();
        assert_eq!(
            store
                .usage(Account::User(UserId(alice)), Quota::UNLIMITED)
                .await
                .unwrap(),
            usage(30 - old[0].size, 1, Quota::UNLIMITED),
            "{backend}: refunds stay exact after the upgrade"
        );
    }
    drop(dir);
}
