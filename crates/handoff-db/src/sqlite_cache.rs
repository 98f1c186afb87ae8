//! The two lookups every authenticated download makes (`user_by_id`, `file_by_key`), and the account quotas every
//! upload checks (`usage_if_limited`), kept in memory by the SQLite store.
//!
//! Coherent because this process is the database's only writer: every statement that changes a cached row calls
//! [`RowCache::forget`] (or [`RowCache::forget_all`]) once it has committed, and a read that raced such a change does
//! not cache what it read (the generation it started with is no longer current). A disabled account, a deleted
//! file or one made private is therefore refused at its very next request. Entries also expire after [`TTL`], so a
//! change made to the file by another process (by hand, say) is seen within that time. Only rows that exist are
//! cached.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const TTL: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct RowCache<K, V> {
    inner: Mutex<Inner<K, V>>,
    /// Beyond this many rows the cache starts over rather than grow.
    capacity: usize,
}

#[derive(Debug)]
struct Inner<K, V> {
    /// Bumped by every change to a row of this kind.
    generation: u64,
    rows: HashMap<K, (V, Instant)>,
}

/// What a lookup found: the row, or the generation to hand back to [`RowCache::put`] after reading it.
pub(crate) enum Cached<V> {
    Hit(V),
    Miss(u64),
}

impl<K: Eq + Hash, V: Clone> RowCache<K, V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                generation: 0,
                rows: HashMap::new(),
            }),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K, V>> {
        // Nothing in here can be left half-done by a panic: a poisoned lock still holds a consistent map.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn get(&self, key: &K) -> Cached<V> {
        let inner = self.lock();
        match inner.rows.get(key) {
            Some((row, at)) if at.elapsed() < TTL => Cached::Hit(row.clone()),
            _ => Cached::Miss(inner.generation),
        }
    }

    /// Keeps `row`, read after [`RowCache::get`] answered `generation`, unless a row changed since.
    pub(crate) fn put(&self, key: K, row: &V, generation: u64) {
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        if inner.rows.len() >= self.capacity {
            inner.rows.clear();
        }
        inner.rows.insert(key, (row.clone(), Instant::now()));
    }

    /// Called after a change to `key`'s row has committed.
    pub(crate) fn forget(&self, key: &K) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.rows.remove(key);
    }

    /// Called after a change to any number of rows has committed.
    pub(crate) fn forget_all(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.rows.clear();
    }
}
