//! Items as plain attribute maps: encoding helpers for writing, a typed reader ([`Row`]) for reading back, and the
//! sortable encodings that make DynamoDB's byte-ordered sort keys agree with the SQL backends' orderings.

use std::collections::HashMap;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use handoff_core::{StoreError, StoreResult};
use time::OffsetDateTime;
use uuid::Uuid;

pub type Item = HashMap<String, AttributeValue>;

pub fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub fn b(v: &[u8]) -> AttributeValue {
    AttributeValue::B(Blob::new(v.to_vec()))
}

pub fn flag(v: bool) -> AttributeValue {
    AttributeValue::Bool(v)
}

pub fn time(t: OffsetDateTime) -> AttributeValue {
    n(micros(t))
}

/// Unix microseconds: the precision every backend stores (see `handoff_core::now`).
pub fn micros(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

/// A time as 20 digits that sort as strings in time order (the offset makes negative times sort too).
pub fn sortable(t: OffsetDateTime) -> String {
    let shifted = i128::from(micros(t)) - i128::from(i64::MIN);
    format!("{shifted:020}")
}

/// Sort key of newest-first listings: time, then the id, so ties break by id in byte order as in SQL.
pub fn ts_key(t: OffsetDateTime, id: &str) -> String {
    format!("{}#{id}", sortable(t))
}

/// An upper bound of every `ts_key(t', id)` with `t' <= t`: ids use URL-safe characters or hex and hyphens, all
/// below `~`.
pub fn ts_upto(t: OffsetDateTime) -> String {
    format!("{}#~", sortable(t))
}

pub fn hash_hex(h: &[u8; 32]) -> String {
    hex::encode(h)
}

/// Builds an item attribute by attribute; `opt_*` skip absent values (DynamoDB has no NULL worth storing).
#[derive(Debug, Default)]
pub struct ItemBuilder(Item);

impl ItemBuilder {
    pub fn new(pk: impl Into<String>, sk: impl Into<String>) -> Self {
        let mut item = Item::new();
        item.insert("PK".into(), s(pk));
        item.insert("SK".into(), s(sk));
        Self(item)
    }

    pub fn set(mut self, name: &str, v: AttributeValue) -> Self {
        self.0.insert(name.into(), v);
        self
    }

    pub fn str(self, name: &str, v: impl Into<String>) -> Self {
        self.set(name, s(v))
    }

    pub fn num(self, name: &str, v: impl ToString) -> Self {
        self.set(name, n(v))
    }

    pub fn at(self, name: &str, t: OffsetDateTime) -> Self {
        self.set(name, time(t))
    }

    pub fn flag(self, name: &str, v: bool) -> Self {
        self.set(name, flag(v))
    }

    pub fn bytes(self, name: &str, v: &[u8]) -> Self {
        self.set(name, b(v))
    }

    pub fn opt_str(self, name: &str, v: Option<impl Into<String>>) -> Self {
        match v {
            Some(v) => self.str(name, v),
            None => self,
        }
    }

    pub fn opt_bytes(self, name: &str, v: Option<&[u8]>) -> Self {
        match v {
            Some(v) => self.bytes(name, v),
            None => self,
        }
    }

    pub fn opt_num(self, name: &str, v: Option<impl ToString>) -> Self {
        match v {
            Some(v) => self.num(name, v),
            None => self,
        }
    }

    pub fn opt_at(self, name: &str, t: Option<OffsetDateTime>) -> Self {
        match t {
            Some(t) => self.at(name, t),
            None => self,
        }
    }

    pub fn build(self) -> Item {
        self.0
    }
}

/// The primary key of an item.
pub fn key(pk: impl Into<String>, sk: impl Into<String>) -> Item {
    HashMap::from([("PK".to_owned(), s(pk)), ("SK".to_owned(), s(sk))])
}

/// Typed access to an item read back; a missing or mistyped attribute is [`StoreError::Corrupt`].
#[derive(Debug, Clone, Copy)]
pub struct Row<'a>(pub &'a Item);

fn corrupt(name: &str, what: &str) -> StoreError {
    StoreError::Corrupt(format!("attribute {name}: {what}"))
}

impl<'a> Row<'a> {
    pub fn opt_str(&self, name: &str) -> StoreResult<Option<&'a str>> {
        match self.0.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::S(v)) => Ok(Some(v)),
            Some(_) => Err(corrupt(name, "not a string")),
        }
    }

    pub fn str(&self, name: &str) -> StoreResult<&'a str> {
        self.opt_str(name)?.ok_or_else(|| corrupt(name, "missing"))
    }

    pub fn opt_i64(&self, name: &str) -> StoreResult<Option<i64>> {
        match self.0.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::N(v)) => v.parse().map(Some).map_err(|_| corrupt(name, "not an integer")),
            Some(_) => Err(corrupt(name, "not a number")),
        }
    }

    pub fn opt_u64(&self, name: &str) -> StoreResult<Option<u64>> {
        self.opt_i64(name)?
            .map(|v| u64::try_from(v).map_err(|_| corrupt(name, "negative")))
            .transpose()
    }

    pub fn u64(&self, name: &str) -> StoreResult<u64> {
        self.opt_u64(name)?.ok_or_else(|| corrupt(name, "missing"))
    }

    /// A counter that may not have been written yet.
    pub fn count(&self, name: &str) -> StoreResult<u64> {
        Ok(self.opt_u64(name)?.unwrap_or(0))
    }

    pub fn opt_time(&self, name: &str) -> StoreResult<Option<OffsetDateTime>> {
        self.opt_i64(name)?
            .map(|us| {
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000)
                    .map_err(|e| corrupt(name, &e.to_string()))
            })
            .transpose()
    }

    pub fn time(&self, name: &str) -> StoreResult<OffsetDateTime> {
        self.opt_time(name)?.ok_or_else(|| corrupt(name, "missing"))
    }

    pub fn flag(&self, name: &str) -> StoreResult<bool> {
        match self.0.get(name) {
            None => Ok(false),
            Some(AttributeValue::Bool(v)) => Ok(*v),
            Some(_) => Err(corrupt(name, "not a boolean")),
        }
    }

    pub fn bytes(&self, name: &str) -> StoreResult<Vec<u8>> {
        match self.0.get(name) {
            None => Ok(Vec::new()),
            Some(AttributeValue::B(v)) => Ok(v.as_ref().to_vec()),
            Some(_) => Err(corrupt(name, "not binary")),
        }
    }

    pub fn strings(&self, name: &str) -> StoreResult<Vec<String>> {
        match self.0.get(name) {
            None => Ok(Vec::new()),
            Some(AttributeValue::Ss(v)) => Ok(v.clone()),
            Some(AttributeValue::L(list)) => list
                .iter()
                .map(|v| match v {
                    AttributeValue::S(s) => Ok(s.clone()),
                    _ => Err(corrupt(name, "not a list of strings")),
                })
                .collect(),
            Some(_) => Err(corrupt(name, "not a string set")),
        }
    }

    pub fn uuid(&self, name: &str) -> StoreResult<Uuid> {
        Uuid::parse_str(self.str(name)?).map_err(|e| corrupt(name, &e.to_string()))
    }

    pub fn opt_uuid(&self, name: &str) -> StoreResult<Option<Uuid>> {
        self.opt_str(name)?
            .map(|v| Uuid::parse_str(v).map_err(|e| corrupt(name, &e.to_string())))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sortable_times_sort_as_strings() {
        let times = [-5_000_000i64, -1, 0, 1, 1_700_000_000_000_000, i64::MAX / 1_000];
        let encoded: Vec<String> = times
            .iter()
            .map(|us| sortable(OffsetDateTime::from_unix_timestamp_nanos(i128::from(*us) * 1_000).expect("time")))
            .collect();
        let mut sorted = encoded.clone();
        sorted.sort();
        assert_eq!(encoded, sorted);
        assert!(encoded.iter().all(|e| e.len() == 20));
    }
}
