//! The store handle: opening it from its URL (HTTPS client on rustls + ring, timeouts, region, endpoint), and the
//! few request shapes every port uses — strongly consistent point reads, conditional writes, transactions whose
//! cancellation reasons are returned for the caller to decide, index and partition queries, batch reads — with
//! the one translation of SDK errors into [`StoreError`].

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::{Credentials, Region};
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, TransactWriteItem};
use handoff_core::{StoreError, StoreResult};

use crate::item::{Item, Row, key, ts_upto};

/// Errors opening a store; once open, operations report [`StoreError`].
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid DynamoDB URL (expected dynamodb://TABLE?region=…): {0}")]
    InvalidUrl(String),
    #[error("DynamoDB table {table}: {source}")]
    Table {
        table: String,
        #[source]
        source: StoreError,
    },
}

/// The metadata store on one DynamoDB table.
#[derive(Clone)]
pub struct DynamoStore {
    pub(crate) client: Client,
    pub(crate) table: String,
}

impl std::fmt::Debug for DynamoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoStore")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// What `dynamodb://TABLE?…` says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub table: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub ensure: bool,
}

impl Target {
    pub fn parse(raw: &str) -> Result<Self, ConnectError> {
        let bad = |why: &str| ConnectError::InvalidUrl(format!("{why}: {raw}"));
        let url = url::Url::parse(raw).map_err(|e| bad(&e.to_string()))?;
        if url.scheme() != "dynamodb" {
            return Err(bad("scheme must be dynamodb"));
        }
        let table = url.host_str().unwrap_or_default().to_owned();
        // DynamoDB table names: 3–255 of a–z, A–Z, 0–9, `_`, `-`, `.`.
        let valid = (3..=255).contains(&table.len())
            && table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !valid || !matches!(url.path(), "" | "/") {
            return Err(bad("the table name is the host part: dynamodb://TABLE"));
        }
        let mut target = Self {
            table,
            region: None,
            endpoint: None,
            ensure: true,
        };
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "region" => target.region = Some(v.into_owned()),
                "endpoint" => target.endpoint = Some(v.into_owned()),
                "ensure" => {
                    target.ensure = v.parse().map_err(|_| bad("ensure must be true or false"))?;
                }
                other => return Err(bad(&format!("unknown parameter {other}"))),
            }
        }
        Ok(target)
    }
}

impl DynamoStore {
    /// Opens the store named by `url` and, unless `ensure=false`, creates the table when it is missing (the
    /// equivalent of the SQL backends' migrations).
    pub async fn open(url: &str) -> Result<Self, ConnectError> {
        let target = Target::parse(url)?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(10))
            .operation_timeout(Duration::from_secs(30))
            .build();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http)
            .timeout_config(timeouts);
        if let Some(region) = &target.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &target.endpoint {
            loader = loader.endpoint_url(endpoint);
            // An emulator needs some credentials but checks none; real ones from the environment still win.
            if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
                loader = loader.credentials_provider(Credentials::new("local", "local", None, None, "emulator"));
            }
            if target.region.is_none() {
                loader = loader.region(Region::new("us-east-1"));
            }
        }
        let shared = loader.load().await;
        let store = Self {
            client: Client::new(&shared),
            table: target.table.clone(),
        };
        if target.ensure {
            crate::table::ensure_table(&store.client, &store.table)
                .await
                .map_err(|source| ConnectError::Table {
                    table: target.table.clone(),
                    source,
                })?;
        }
        Ok(store)
    }

    /// A strongly consistent read of one item.
    pub(crate) async fn get(&self, pk: impl Into<String>, sk: impl Into<String>) -> StoreResult<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(out.item)
    }

    /// Strongly consistent reads of many items (any order; missing ones are left out).
    pub(crate) async fn batch_get(&self, keys: Vec<Item>) -> StoreResult<Vec<Item>> {
        let mut found = Vec::with_capacity(keys.len());
        // BatchGetItem refuses a request that names one key twice.
        let mut unique = keys;
        let id = |k: &Item| {
            let part = |name: &str| match k.get(name) {
                Some(AttributeValue::S(v)) => v.clone(),
                _ => String::new(),
            };
            (part("PK"), part("SK"))
        };
        unique.sort_by_key(id);
        unique.dedup_by(|a, b| id(a) == id(b));
        for chunk in unique.chunks(100) {
            let mut pending = Some(chunk.to_vec());
            let mut rounds = 0;
            while let Some(keys) = pending.take().filter(|k| !k.is_empty()) {
                rounds += 1;
                if rounds > 10 {
                    return Err(StoreError::Unavailable("batch read kept being throttled".into()));
                }
                let request = KeysAndAttributes::builder()
                    .set_keys(Some(keys))
                    .consistent_read(true)
                    .build()
                    .map_err(other)?;
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, request)
                    .send()
                    .await
                    .map_err(sdk_error)?;
                if let Some(mut responses) = out.responses {
                    found.extend(responses.remove(&self.table).unwrap_or_default());
                }
                pending = out
                    .unprocessed_keys
                    .and_then(|mut u| u.remove(&self.table))
                    .map(|k| k.keys);
                if pending.as_ref().is_some_and(|k| !k.is_empty()) {
                    tokio::time::sleep(Duration::from_millis(20 * rounds)).await;
                }
            }
        }
        Ok(found)
    }

    /// Up to `limit` sessions due on the expiry partition `partition` of GSI5 (sort key ≤ `now`), skipping those
    /// whose `held_until` attribute is still in the future: a request holds them (an append's lease, a
    /// completion's claim), and the holder moves or removes them. Reads a margin beyond `limit` for those.
    pub(crate) async fn due_unheld<T>(
        &self,
        partition: &str,
        held_until: &str,
        now: time::OffsetDateTime,
        limit: u32,
        decode: fn(&Item) -> StoreResult<T>,
    ) -> StoreResult<Vec<T>> {
        let page = self
            .query(
                Query::index("GSI5", partition)
                    .sk(SkCondition::Le(ts_upto(now)))
                    .limit(limit as usize + 100),
            )
            .await?;
        let mut found = Vec::new();
        for item in &page {
            if found.len() >= limit as usize {
                break;
            }
            let held = Row(item).opt_time(held_until)?.is_some_and(|until| until > now);
            if !held {
                found.push(decode(item)?);
            }
        }
        Ok(found)
    }

    /// Runs a query page by page until `limit` items (or all of them) were read.
    pub(crate) async fn query(&self, q: Query<'_>) -> StoreResult<Vec<Item>> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let want = q.limit.map(|l| l.saturating_sub(items.len()));
            if want == Some(0) {
                break;
            }
            let mut values = HashMap::from([(":pk".to_owned(), AttributeValue::S(q.pk.clone()))]);
            let (pk_name, sk_name) = match q.index {
                Some(index) => (format!("{index}PK"), format!("{index}SK")),
                None => ("PK".to_owned(), "SK".to_owned()),
            };
            let mut condition = format!("{pk_name} = :pk");
            match &q.sk {
                SkCondition::Any => {}
                SkCondition::Lt(v) => {
                    condition.push_str(&format!(" AND {sk_name} < :sk"));
                    values.insert(":sk".into(), AttributeValue::S(v.clone()));
                }
                SkCondition::Le(v) => {
                    condition.push_str(&format!(" AND {sk_name} <= :sk"));
                    values.insert(":sk".into(), AttributeValue::S(v.clone()));
                }
                SkCondition::Gt(v) => {
                    condition.push_str(&format!(" AND {sk_name} > :sk"));
                    values.insert(":sk".into(), AttributeValue::S(v.clone()));
                }
                SkCondition::BeginsWith(v) => {
                    condition.push_str(&format!(" AND begins_with({sk_name}, :sk)"));
                    values.insert(":sk".into(), AttributeValue::S(v.clone()));
                }
            }
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .set_index_name(q.index.map(str::to_owned))
                .key_condition_expression(condition)
                .set_expression_attribute_values(Some(values))
                .scan_index_forward(q.forward)
                .consistent_read(q.index.is_none())
                .set_limit(want.map(|w| i32::try_from(w).unwrap_or(i32::MAX)))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(sdk_error)?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(items)
    }

    /// Runs a transaction. `Cancelled` carries one reason code per item (`"None"` for items that were fine,
    /// `"ConditionalCheckFailed"`, `"TransactionConflict"`, …) for the caller to decide what it means.
    pub(crate) async fn transact(&self, items: Vec<TransactWriteItem>) -> StoreResult<Tx> {
        if items.len() > 100 {
            return Err(StoreError::Other(
                format!("a DynamoDB transaction takes at most 100 items, not {}", items.len()).into(),
            ));
        }
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(Tx::Done),
            Err(e) => match e.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(c)) => Ok(Tx::Cancelled(
                    c.cancellation_reasons()
                        .iter()
                        .map(|r| r.code().unwrap_or("None").to_owned())
                        .collect(),
                )),
                // Another transaction on the same items: as good as a cancellation, for the caller's retry.
                _ if e.code() == Some("TransactionConflictException") => Ok(Tx::Cancelled(Vec::new())),
                _ => Err(sdk_error(e)),
            },
        }
    }
}

/// The outcome of [`DynamoStore::transact`].
#[derive(Debug)]
pub(crate) enum Tx {
    Done,
    Cancelled(Vec<String>),
}

impl Tx {
    /// Whether item `i`'s condition failed.
    pub fn failed(&self, i: usize) -> bool {
        match self {
            Tx::Done => false,
            Tx::Cancelled(reasons) => reasons.get(i).is_some_and(|r| r == "ConditionalCheckFailed"),
        }
    }

    pub fn done(&self) -> bool {
        matches!(self, Tx::Done)
    }
}

/// How many times a decision is re-read and retried after its transaction was cancelled by a concurrent writer.
pub(crate) const ATTEMPTS: usize = 16;

/// The answer once [`ATTEMPTS`] are used up: contention that a later retry (by the client) resolves.
pub(crate) fn contended(what: &str) -> StoreError {
    StoreError::Unavailable(format!("{what}: too much contention, retry"))
}

/// A short, growing pause between retries, so that racing writers spread out.
pub(crate) async fn backoff(attempt: usize) {
    let millis = 5 * (attempt as u64 + 1) + u64::from(uuid::Uuid::new_v4().as_bytes()[0] % 10);
    tokio::time::sleep(Duration::from_millis(millis)).await;
}

#[derive(Debug)]
pub(crate) enum SkCondition {
    Any,
    Lt(String),
    Le(String),
    Gt(String),
    BeginsWith(String),
}

/// A key-condition query on the table (`index: None`, strongly consistent) or on one of its indexes.
#[derive(Debug)]
pub(crate) struct Query<'a> {
    pub index: Option<&'a str>,
    pub pk: String,
    pub sk: SkCondition,
    pub forward: bool,
    pub limit: Option<usize>,
}

impl<'a> Query<'a> {
    pub fn table(pk: impl Into<String>) -> Self {
        Self {
            index: None,
            pk: pk.into(),
            sk: SkCondition::Any,
            forward: true,
            limit: None,
        }
    }

    pub fn index(index: &'a str, pk: impl Into<String>) -> Self {
        Self {
            index: Some(index),
            ..Self::table(pk)
        }
    }

    pub fn sk(mut self, sk: SkCondition) -> Self {
        self.sk = sk;
        self
    }

    pub fn backwards(mut self) -> Self {
        self.forward = false;
        self
    }

    pub fn limit(mut self, limit: impl TryInto<usize>) -> Self {
        self.limit = Some(limit.try_into().unwrap_or(usize::MAX));
        self
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct DynamoError(String);

pub(crate) fn other(e: impl std::fmt::Display) -> StoreError {
    StoreError::Other(Box::new(DynamoError(e.to_string())))
}

/// Translates an SDK error once, for every request: what retrying later can fix is `Unavailable`.
pub(crate) fn sdk_error<E, R>(e: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let text = DisplayErrorContext(&e).to_string();
    match &e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            StoreError::Unavailable(text)
        }
        SdkError::ServiceError(service) => match service.err().code() {
            Some(
                "ThrottlingException"
                | "ProvisionedThroughputExceededException"
                | "RequestLimitExceeded"
                | "InternalServerError"
                | "InternalFailure"
                | "ServiceUnavailable"
                | "TransactionConflictException"
                | "TransactionInProgressException"
                | "LimitExceededException",
            ) => StoreError::Unavailable(text),
            _ => other(text),
        },
        _ => other(text),
    }
}

/// `Ok(None)` for a write whose condition failed; other errors translated.
pub(crate) fn conditional<T, E, R>(result: Result<T, SdkError<E, R>>) -> StoreResult<Option<T>>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.code() == Some("ConditionalCheckFailedException") => Ok(None),
        Err(e) => Err(sdk_error(e)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_table_and_options() {
        let t = Target::parse("dynamodb://handoff-meta?region=eu-west-1&endpoint=http://127.0.0.1:5000").unwrap();
        assert_eq!(
            t,
            Target {
                table: "handoff-meta".into(),
                region: Some("eu-west-1".into()),
                endpoint: Some("http://127.0.0.1:5000".into()),
                ensure: true,
            }
        );
        assert!(!Target::parse("dynamodb://t.t?ensure=false").unwrap().ensure);
        for bad in [
            "dynamodb://",
            "dynamodb://ab",
            "dynamodb://table/path",
            "dynamodb://ta ble",
            "postgres://table",
            "dynamodb://table?colour=red",
            "dynamodb://table?ensure=maybe",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
