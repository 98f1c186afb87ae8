//! The `UploadStore` contract (resumable upload sessions), on SQLite always and on PostgreSQL when
//! `HANDOFF_TEST_POSTGRES_URL` is set (required when `CI` is set): creation with a per-user limit, one lease
//! holder at a time, progress only under the lease, completion, expiry and termination.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use handoff_core::{
    Account, BlobId, FileKey, FileName, LeaseToken, LinkReservation, MetadataStore, NewUser, TeamId, UploadId,
    UploadLinkId, UploadProgress, UploadSession, User, Username, Visibility,
};
use time::OffsetDateTime;

async fn user(store: &dyn MetadataStore, name: &str) -> User {
    store
        .create_user(NewUser {
            username: Username::parse(name).unwrap(),
            email: None,
            password_hash: "$argon2id$fake".into(),
        })
        .await
        .unwrap()
}

fn session(owner: &User, now: OffsetDateTime, length: Option<u64>) -> UploadSession {
    UploadSession {
        id: UploadId::generate(),
        owner: owner.id,
        team: None,
        upload_link: None,
        blob: BlobId::generate(),
        file_key: FileKey::generate(),
        length,
        offset: 0,
        metadata: "filename ZGF0YQ==".into(),
        name: FileName::parse("data", 255).unwrap(),
        content_type: "text/plain".into(),
        visibility: Visibility::Key,
        store_state: String::new(),
        hash_state: Vec::new(),
        completed: false,
        created_at: now,
        expires_at: now + Duration::from_secs(3600),
    }
}

fn progress(offset: u64, expires_at: OffsetDateTime) -> UploadProgress {
    UploadProgress {
        offset,
        length: Some(100),
        store_state: format!("{{\"at\":{offset}}}"),
        hash_state: vec![offset as u8; 3],
        expires_at,
    }
}

#[tokio::test]
async fn sessions_round_trip_and_are_limited_per_user() {
    for (backend, store, _scratch) in common::backends("uploads.db").await {
        let now = handoff_core::now();
        let alice = user(store.as_ref(), "alice").await;
        let bob = user(store.as_ref(), "bob").await;
        let first = session(&alice, now, Some(100));
        assert!(store.create_upload(&first, 2, now).await.unwrap(), "{backend}");
        assert!(store.blob_in_open_upload(first.blob).await.unwrap());
        assert!(!store.blob_in_open_upload(BlobId::generate()).await.unwrap());
        assert_eq!(
            store.upload_by_id(&first.id).await.unwrap(),
            Some(first.clone()),
            "{backend}"
        );
        let deferred = session(&alice, now, None);
        assert!(store.create_upload(&deferred, 2, now).await.unwrap());
        assert_eq!(store.upload_by_id(&deferred.id).await.unwrap().unwrap().length, None);
        assert!(
            !store
                .create_upload(&session(&alice, now, Some(1)), 2, now)
                .await
                .unwrap(),
            "{backend}"
        );
        assert!(store.create_upload(&session(&bob, now, Some(1)), 2, now).await.unwrap());
        // Expired sessions do not count.
        let later = now + Duration::from_secs(7200);
        assert!(
            store
                .create_upload(&session(&alice, later, Some(1)), 2, later)
                .await
                .unwrap()
        );
        assert!(store.upload_by_id(&UploadId::generate()).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn one_lease_holder_at_a_time_and_progress_only_under_it() {
    for (backend, store, _scratch) in common::backends("uploads.db").await {
        let now = handoff_core::now();
        let alice = user(store.as_ref(), "alice").await;
        let s = session(&alice, now, Some(100));
        store.create_upload(&s, 10, now).await.unwrap();
        let (a, b) = (LeaseToken::generate(), LeaseToken::generate());
        let until = now + Duration::from_secs(10);
        assert!(
            store.lease_upload(&s.id, &a, until, now).await.unwrap().is_some(),
            "{backend}"
        );
        assert!(
            store.lease_upload(&s.id, &b, until, now).await.unwrap().is_none(),
            "{backend}"
        );
        let expiry = now + Duration::from_secs(600);
        assert!(
            store
                .record_upload_progress(&s.id, &a, &progress(40, expiry))
                .await
                .unwrap()
        );
        assert!(
            !store
                .record_upload_progress(&s.id, &b, &progress(50, expiry))
                .await
                .unwrap()
        );
        let stored = store.upload_by_id(&s.id).await.unwrap().unwrap();
        assert_eq!((stored.offset, stored.store_state.as_str()), (40, "{\"at\":40}"));
        assert_eq!(stored.hash_state, vec![40u8; 3]);
        assert_eq!(stored.expires_at, expiry);

        // A lease runs out: after `until`, another token takes it and the old one can no longer write.
        let after = until + Duration::from_secs(1);
        assert!(store.renew_upload_lease(&s.id, &a, until).await.unwrap());
        let taken = store
            .lease_upload(&s.id, &b, after + Duration::from_secs(10), after)
            .await
            .unwrap();
        assert_eq!(taken.unwrap().offset, 40, "{backend}");
        assert!(!store.renew_upload_lease(&s.id, &a, after).await.unwrap());
        assert!(
            !store
                .record_upload_progress(&s.id, &a, &progress(90, until))
                .await
                .unwrap()
        );
        store.release_upload(&s.id, &a).await.unwrap(); // not the holder: no effect
        assert!(store.lease_upload(&s.id, &a, until, now).await.unwrap().is_none());
        store.release_upload(&s.id, &b).await.unwrap();
        assert!(store.lease_upload(&s.id, &a, until, now).await.unwrap().is_some());

        // Completion releases the lease and no lease is granted on a completed session.
        assert!(!store.complete_upload(&s.id, &b).await.unwrap());
        assert!(store.complete_upload(&s.id, &a).await.unwrap());
        let done = store.upload_by_id(&s.id).await.unwrap().unwrap();
        assert!(done.completed);
        assert!(
            !store.blob_in_open_upload(s.blob).await.unwrap(),
            "a completed upload's blob is the file's"
        );
        assert!(store.lease_upload(&s.id, &b, until, now).await.unwrap().is_none());
        assert!(
            !store
                .record_upload_progress(&s.id, &a, &progress(100, until))
                .await
                .unwrap()
        );
        assert!(store.delete_upload(&s.id, None).await.unwrap());
        assert!(store.upload_by_id(&s.id).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn concurrent_leases_have_exactly_one_winner() {
    for (backend, store, _scratch) in common::backends("uploads.db").await {
        let now = handoff_core::now();
        let alice = user(store.as_ref(), "alice").await;
        let s = session(&alice, now, Some(100));
        store.create_upload(&s, 10, now).await.unwrap();
        let attempts = (0..16).map(|_| {
            let (store, id) = (store.clone(), s.id.clone());
            tokio::spawn(async move {
                let token = LeaseToken::generate();
                store
                    .lease_upload(&id, &token, now + Duration::from_secs(30), now)
                    .await
                    .unwrap()
                    .is_some()
            })
        });
        let mut winners = 0;
        for attempt in attempts.collect::<Vec<_>>() {
            winners += usize::from(attempt.await.unwrap());
        }
        assert_eq!(winners, 1, "{backend}");
    }
}

#[tokio::test]
async fn expired_sessions_are_listed_and_removed_unless_leased() {
    for (backend, store, _scratch) in common::backends("uploads.db").await {
        let now = handoff_core::now();
        let alice = user(store.as_ref(), "alice").await;
        let old = session(&alice, now, Some(100));
        let fresh = session(&alice, now + Duration::from_secs(7200), Some(100));
        store.create_upload(&old, 10, now).await.unwrap();
        store.create_upload(&fresh, 10, now).await.unwrap();
        let token = LeaseToken::generate();
        store
            .lease_upload(&old.id, &token, now + Duration::from_secs(60), now)
            .await
            .unwrap()
            .unwrap();
        store
            .record_upload_progress(&old.id, &token, &progress(30, now + Duration::from_secs(3600)))
            .await
            .unwrap();
        // Both sessions declared 100 bytes: that is what they reserve, whatever has arrived so far.
        assert_eq!(
            store.open_upload_bytes(Account::User(alice.id)).await.unwrap(),
            200,
            "{backend}"
        );

        let later = now + Duration::from_secs(3601);
        let expired = store.expired_uploads(later, 10).await.unwrap();
        assert_eq!(
            expired.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
            vec![old.id.clone()],
            "{backend}"
        );
        // Expired sessions cannot be leased any more.
        assert!(
            store
                .lease_upload(&old.id, &LeaseToken::generate(), later, later)
                .await
                .unwrap()
                .is_none()
        );
        assert!(!store.delete_expired_upload(&fresh.id, later).await.unwrap());
        assert!(store.delete_expired_upload(&old.id, later).await.unwrap());
        assert!(!store.delete_expired_upload(&old.id, later).await.unwrap());
        // Only the fresh session's reservation is left.
        assert_eq!(store.open_upload_bytes(Account::User(alice.id)).await.unwrap(), 100);
        // Termination needs the lease.
        let holder = LeaseToken::generate();
        store
            .lease_upload(&fresh.id, &holder, later, now)
            .await
            .unwrap()
            .unwrap();
        assert!(
            !store
                .delete_upload(&fresh.id, Some(&LeaseToken::generate()))
                .await
                .unwrap()
        );
        assert!(
            !store.delete_upload(&fresh.id, None).await.unwrap(),
            "incomplete sessions need the lease"
        );
        assert!(store.delete_upload(&fresh.id, Some(&holder)).await.unwrap());
    }
}

#[tokio::test]
async fn link_sessions_have_their_own_limit_and_reserve_the_link_and_account() {
    for (backend, store, _scratch) in common::backends("uploads.db").await {
        let now = handoff_core::now();
        let alice = user(store.as_ref(), "alice").await;
        let link = UploadLinkId::generate();
        let other_link = UploadLinkId::generate();
        let team = TeamId(uuid::Uuid::now_v7());
        let through = |link: UploadLinkId, team: Option<TeamId>, length: Option<u64>| UploadSession {
            upload_link: Some(link),
            team,
            ..session(&alice, now, length)
        };

        // Alice's own allowance (1) and each link's (1) are counted apart.
        assert!(
            store
                .create_upload(&session(&alice, now, Some(10)), 1, now)
                .await
                .unwrap(),
            "{backend}"
        );
        let first = through(link, None, Some(100));
        assert!(store.create_upload(&first, 1, now).await.unwrap(), "{backend}");
        assert!(
            !store
                .create_upload(&through(link, None, Some(5)), 1, now)
                .await
                .unwrap(),
            "{backend}"
        );
        assert!(
            !store
                .create_upload(&session(&alice, now, Some(5)), 1, now)
                .await
                .unwrap(),
            "{backend}"
        );
        assert!(
            store
                .create_upload(&through(other_link, Some(team), None), 1, now)
                .await
                .unwrap(),
            "{backend}"
        );

        let read = store.upload_by_id(&first.id).await.unwrap().unwrap();
        assert_eq!(read, first, "{backend}: link and team round-trip");

        // The personal link's session reserves alice's space; the team link's the team's.
        assert_eq!(
            store.open_upload_bytes(Account::User(alice.id)).await.unwrap(),
            110,
            "{backend}"
        );
        assert_eq!(
            store.open_upload_bytes(Account::Team(team)).await.unwrap(),
            0,
            "{backend}"
        );
        let link_open = store.open_link_uploads(link, now).await.unwrap();
        assert_eq!(link_open, LinkReservation { files: 1, bytes: 100 }, "{backend}");

        // A deferred length reserves its durable offset.
        let deferred = store.open_link_uploads(other_link, now).await.unwrap();
        assert_eq!(deferred, LinkReservation { files: 1, bytes: 0 }, "{backend}");

        // Expired sessions hold nothing back from the link; completed ones neither.
        let later = now + Duration::from_secs(3601);
        assert_eq!(
            store.open_link_uploads(link, later).await.unwrap(),
            LinkReservation::default(),
            "{backend}"
        );
        let token = LeaseToken::generate();
        store
            .lease_upload(&first.id, &token, now + Duration::from_secs(60), now)
            .await
            .unwrap()
            .unwrap();
        assert!(store.complete_upload(&first.id, &token).await.unwrap(), "{backend}");
        assert_eq!(
            store.open_link_uploads(link, now).await.unwrap(),
            LinkReservation::default(),
            "{backend}"
        );
        assert_eq!(
            store.open_upload_bytes(Account::User(alice.id)).await.unwrap(),
            10,
            "{backend}"
        );
    }
}
