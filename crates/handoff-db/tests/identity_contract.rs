//! The `IdentityStore` contract (external identities, API tokens): every backend passes the same tests. SQLite
//! always runs; PostgreSQL joins when `HANDOFF_TEST_POSTGRES_URL` is set (required when `CI` is set).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use handoff_core::{
    ApiTokenRecord, ApiTokenScope, MetadataStore, NewApiToken, NewExternalUser, NewUser, StoreError, User, UserId,
    Username,
};
use time::Duration;
use uuid::Uuid;

fn external(issuer: &str, subject: &str, names: &[&str]) -> NewExternalUser {
    NewExternalUser {
        issuer: issuer.into(),
        subject: subject.into(),
        usernames: names.iter().map(|n| Username::parse(n).unwrap()).collect(),
        email: Some(format!("{subject}@example.com")),
        is_admin: false,
    }
}

async fn local(store: &dyn MetadataStore, name: &str) -> User {
    store
        .create_user(NewUser {
            username: Username::parse_local(name).unwrap(),
            email: None,
            password_hash: "$argon2id$fake".into(),
        })
        .await
        .unwrap()
}

fn token(user: UserId, name: &str, scope: ApiTokenScope, expires_in: Duration) -> NewApiToken {
    let now = handoff_core::now();
    let mut hash = [0u8; 32];
    hash[..16].copy_from_slice(Uuid::new_v4().as_bytes());
    NewApiToken {
        record: ApiTokenRecord {
            id: Uuid::now_v7(),
            user,
            name: name.into(),
            scope,
            created_at: now,
            expires_at: now + expires_in,
            last_used_at: None,
        },
        hash,
    }
}

#[tokio::test]
async fn external_users_are_keyed_by_issuer_and_subject() {
    for (backend, store, _scratch) in common::backends("identity.db").await {
        let iss = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_X";
        assert!(store.user_by_identity(iss, "sub-1").await.unwrap().is_none());
        let user = store
            .create_external_user(&external(iss, "sub-1", &["cognito:alice", "cognito:alice-2"]))
            .await
            .unwrap();
        assert_eq!(user.username.as_str(), "cognito:alice", "{backend}");
        assert!(user.password_hash.is_none());
        let found = store.user_by_identity(iss, "sub-1").await.unwrap().unwrap();
        assert_eq!(found.id, user.id);
        assert_eq!(found.email.as_deref(), Some("sub-1@example.com"));

        // The same identity again is a conflict; the same subject at another issuer is another person.
        let again = store
            .create_external_user(&external(iss, "sub-1", &["cognito:zed"]))
            .await;
        assert!(matches!(again, Err(StoreError::Conflict)), "{backend}: {again:?}");
        let other = store
            .create_external_user(&external("https://other.example", "sub-1", &["other:alice"]))
            .await
            .unwrap();
        assert_ne!(other.id, user.id);

        // A taken name is skipped; when all are taken, nothing is created.
        let second = store
            .create_external_user(&external(iss, "sub-2", &["cognito:alice", "cognito:alice-2"]))
            .await
            .unwrap();
        assert_eq!(second.username.as_str(), "cognito:alice-2");
        let none = store
            .create_external_user(&external(iss, "sub-3", &["cognito:alice"]))
            .await;
        assert!(matches!(none, Err(StoreError::Conflict)), "{backend}");
        assert!(store.user_by_identity(iss, "sub-3").await.unwrap().is_none());

        // Profile updates: e-mail always, the admin flag only when given.
        store.update_external_profile(user.id, None, Some(true)).await.unwrap();
        let updated = store.user_by_id(user.id).await.unwrap().unwrap();
        assert_eq!((updated.email, updated.is_admin), (None, true));
        store
            .update_external_profile(user.id, Some("new@example.com"), None)
            .await
            .unwrap();
        let updated = store.user_by_id(user.id).await.unwrap().unwrap();
        assert_eq!(
            (updated.email.as_deref(), updated.is_admin),
            (Some("new@example.com"), true)
        );
    }
}

#[tokio::test]
async fn api_tokens_round_trip_expire_and_are_bounded_per_user() {
    for (backend, store, _scratch) in common::backends("identity.db").await {
        let alice = local(store.as_ref(), "alice").await;
        let bob = local(store.as_ref(), "bob").await;
        let live = token(alice.id, "live", ApiTokenScope::ReadOnly, Duration::days(1));
        let expired = token(alice.id, "expired", ApiTokenScope::Full, Duration::seconds(-1));
        assert!(store.insert_api_token(&live, 3).await.unwrap());
        assert!(store.insert_api_token(&expired, 3).await.unwrap());

        let now = handoff_core::now();
        let (found, owner) = store.api_token_by_hash(&live.hash, now).await.unwrap().unwrap();
        assert_eq!(owner.id, alice.id, "{backend}");
        assert_eq!((found.id, found.scope), (live.record.id, ApiTokenScope::ReadOnly));
        assert!(store.api_token_by_hash(&expired.hash, now).await.unwrap().is_none());
        assert!(store.api_token_by_hash(&[7u8; 32], now).await.unwrap().is_none());

        let listed = store.api_tokens(alice.id).await.unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].name, "live");
        assert!(listed[0].last_used_at.is_some(), "{backend}: use was not recorded");
        assert!(store.api_tokens(bob.id).await.unwrap().is_empty());

        // The third fits, the fourth does not; bob's limit is his own.
        assert!(
            store
                .insert_api_token(&token(alice.id, "3", ApiTokenScope::Full, Duration::days(1)), 3)
                .await
                .unwrap()
        );
        assert!(
            !store
                .insert_api_token(&token(alice.id, "4", ApiTokenScope::Full, Duration::days(1)), 3)
                .await
                .unwrap()
        );
        assert!(
            store
                .insert_api_token(&token(bob.id, "b", ApiTokenScope::UploadOnly, Duration::days(1)), 3)
                .await
                .unwrap()
        );

        // Only the owner deletes; deleted means gone.
        assert!(!store.delete_api_token(bob.id, live.record.id).await.unwrap());
        assert!(store.delete_api_token(alice.id, live.record.id).await.unwrap());
        assert!(!store.delete_api_token(alice.id, live.record.id).await.unwrap());
        assert!(store.api_token_by_hash(&live.hash, now).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn racing_provisioning_of_one_identity_makes_one_account() {
    for (backend, store, _scratch) in common::backends("identity.db").await {
        let iss = "https://idp.example";
        let attempts = (0..8).map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .create_external_user(&external(iss, "racer", &["idp:racer", "idp:racer-2", "idp:racer-3"]))
                    .await
            })
        });
        let mut created = 0;
        for attempt in attempts {
            match attempt.await.unwrap() {
                Ok(_) => created += 1,
                Err(StoreError::Conflict) => {}
                Err(e) => panic!("{backend}: {e}"),
            }
        }
        assert_eq!(created, 1, "{backend}");
        assert!(store.user_by_identity(iss, "racer").await.unwrap().is_some());
    }
}

#[tokio::test]
async fn identities_and_tokens_export_and_import_exactly() {
    for (backend, store, _scratch) in common::backends("identity.db").await {
        let iss = "https://idp.example";
        let user = store
            .create_external_user(&external(iss, "exp", &["idp:exp"]))
            .await
            .unwrap();
        assert_eq!(
            store.external_identity_of(user.id).await.unwrap(),
            Some((iss.to_owned(), "exp".to_owned())),
            "{backend}"
        );
        let plain = local(store.as_ref(), "plain").await;
        assert_eq!(store.external_identity_of(plain.id).await.unwrap(), None);
        // Already linked: not linked again, to anyone.
        assert!(!store.import_external_identity(iss, "exp", plain.id).await.unwrap());
        assert!(store.import_external_identity(iss, "other", plain.id).await.unwrap());
        assert_eq!(
            store.user_by_identity(iss, "other").await.unwrap().unwrap().id,
            plain.id
        );

        let original = token(user.id, "t", ApiTokenScope::UploadOnly, Duration::days(3));
        assert!(store.insert_api_token(&original, 5).await.unwrap());
        let exported = store.export_api_tokens(user.id).await.unwrap();
        assert_eq!(exported.len(), 1);
        assert_eq!(exported[0].hash, original.hash);
        assert_eq!(exported[0].record, original.record);
        assert!(
            !store.import_api_token(&exported[0]).await.unwrap(),
            "{backend}: imported twice"
        );
        assert!(store.delete_api_token(user.id, original.record.id).await.unwrap());
        assert!(store.import_api_token(&exported[0]).await.unwrap());
        let (found, owner) = store
            .api_token_by_hash(&original.hash, handoff_core::now())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((found.id, owner.id), (original.record.id, user.id));
    }
}
