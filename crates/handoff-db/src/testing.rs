//! Test support (feature `testing`): throwaway PostgreSQL databases for suites that must run on every backend.

#![allow(clippy::expect_used)] // test support: a failure here is a broken test environment

use sqlx::{Connection as _, PgConnection};
use uuid::Uuid;

/// The admin URL of the PostgreSQL server to test against, if any. A CI run that would silently skip PostgreSQL
/// is a failure.
pub fn postgres_admin_url() -> Option<String> {
    match std::env::var("HANDOFF_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => panic!(
            "PostgreSQL suite would be skipped in CI: set HANDOFF_TEST_POSTGRES_URL \
             (e.g. postgres://postgres@127.0.0.1:5432/test)"
        ),
        _ => None,
    }
}

/// A uniquely named database on the test server, created empty and dropped (connections and all) on `Drop`.
#[derive(Debug)]
pub struct TestDatabase {
    admin_url: String,
    pub name: String,
    /// The URL of this database: the admin URL with its database name replaced.
    pub url: String,
}

impl TestDatabase {
    pub async fn create(admin_url: &str) -> Self {
        let name = format!("handoff_test_{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(admin_url)
            .await
            .unwrap_or_else(|e| panic!("HANDOFF_TEST_POSTGRES_URL: cannot connect: {e}"));
        // A locale-aware default collation (ICU en-US orders `a` before `B`), so that the store's byte-order
        // keyset pagination is really tested; servers without ICU get a plain database.
        let icu = format!(
            "CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LOCALE_PROVIDER icu ICU_LOCALE 'en-US' \
             LOCALE 'C.UTF-8'"
        );
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(icu)).execute(&mut admin).await {
            eprintln!("no ICU database ({e}); using the server's default collation");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut admin)
                .await
                .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        }
        admin.close().await.expect("closing the admin connection");
        let url = with_database(admin_url, &name);
        Self {
            admin_url: admin_url.to_owned(),
            name,
            url,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop is synchronous and may run inside the test's runtime: do the async work on a thread of its own.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || -> Result<(), sqlx::Error> {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&admin_url).await?;
                let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await?;
                admin.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}

/// `postgres://user@host:port/db?params` with `db` replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let (location, query) = rest.split_once('?').map_or((rest, None), |(l, q)| (l, Some(q)));
    let authority = location.split_once('/').map_or(location, |(a, _)| a);
    match query {
        Some(query) => format!("{scheme}://{authority}/{name}?{query}"),
        None => format!("{scheme}://{authority}/{name}"),
    }
}
