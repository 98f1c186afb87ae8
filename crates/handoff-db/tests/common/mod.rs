//! The backends every metadata-store suite runs on: SQLite always; PostgreSQL when `HANDOFF_TEST_POSTGRES_URL`
//! is set (required under `CI`); DynamoDB on moto's server when `HANDOFF_TEST_MOTO_SERVER` is set (required under
//! `CI`). Each call makes fresh, empty stores.

use std::sync::Arc;

use handoff_core::MetadataStore;
use handoff_db::testing::{TestDatabase, postgres_admin_url};

/// What keeps a backend's storage alive for the test, and removes it afterwards.
#[allow(dead_code)] // held only for its `Drop`
pub enum Scratch {
    Dir(tempfile::TempDir),
    Postgres(TestDatabase),
    Dynamo(handoff_dynamo::testing::TestTable),
}

/// A fresh, empty store per backend; `sqlite_file` names the SQLite database inside its temporary directory.
pub async fn backends(sqlite_file: &str) -> Vec<(String, Arc<dyn MetadataStore>, Scratch)> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join(sqlite_file).display());
    let mut all = vec![(
        "sqlite".to_owned(),
        handoff_db::connect(&url).await.unwrap(),
        Scratch::Dir(dir),
    )];
    if let Some(admin_url) = postgres_admin_url() {
        let db = TestDatabase::create(&admin_url).await;
        let store = handoff_db::connect(&db.url)
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", db.name));
        all.push(("postgres".to_owned(), store, Scratch::Postgres(db)));
    }
    if let Some(moto) = handoff_dynamo::testing::moto_server() {
        let table = handoff_dynamo::testing::TestTable::create(&moto);
        all.push(("dynamodb".to_owned(), table.store().await, Scratch::Dynamo(table)));
    }
    all
}
