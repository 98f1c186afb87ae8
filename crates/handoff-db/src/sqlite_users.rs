//! The account lookup every authenticated request makes (`user_by_id`), kept in memory by the SQLite store.
//!
//! Coherent because this process is the database's only writer: every statement that changes a `users` row calls
//! [`UserCache::forget`] once it has committed, and a read that raced such a change does not cache what it read
//! (the generation it started with is no longer current). A disabled account therefore still stops at its very
//! next request. Entries also expire after [`TTL`], so a change made to the file by another process (by hand,
//! say) is seen within that time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use handoff_core::{User, UserId};

const TTL: Duration = Duration::from_secs(1);
/// Beyond this many accounts the cache starts over rather than grow.
const CAPACITY: usize = 10_000;

#[derive(Debug, Default)]
pub(crate) struct UserCache {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Bumped by every change to an account.
    generation: u64,
    users: HashMap<UserId, (User, Instant)>,
}

/// What a lookup found: the account, or the generation to hand back to [`UserCache::put`] after reading it.
pub(crate) enum Cached {
    Hit(User),
    Miss(u64),
}

impl UserCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing in here can be left half-done by a panic: a poisoned lock still holds a consistent map.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn get(&self, id: UserId) -> Cached {
        let inner = self.lock();
        match inner.users.get(&id) {
            Some((user, at)) if at.elapsed() < TTL => Cached::Hit(user.clone()),
            _ => Cached::Miss(inner.generation),
        }
    }

    /// Keeps `user`, read after [`UserCache::get`] answered `generation`, unless an account changed since.
    pub(crate) fn put(&self, user: &User, generation: u64) {
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        if inner.users.len() >= CAPACITY {
            inner.users.clear();
        }
        inner.users.insert(user.id, (user.clone(), Instant::now()));
    }

    /// Called after a change to `id`'s row has committed.
    pub(crate) fn forget(&self, id: UserId) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.users.remove(&id);
    }
}
