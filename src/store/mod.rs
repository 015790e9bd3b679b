//! Session stores: where sessions live between requests.
//!
//! A store keeps, under a [`StoreKey`] (the digest of a session id), a session's creation
//! time, its expiry, and its data as one value per key. Changes arrive per key
//! ([`ChangeSet`]), so two requests of one session that change different keys never undo each
//! other; when they change the same key, the request that flushes last wins.
//!
//! The crate ships [`MemoryStore`] and, with the `postgres` feature (on by default),
//! `PostgresStore`, with the `redis` feature `RedisStore` and with the `sqlite` feature
//! `SqliteStore`; anything implementing
//! [`SessionStore`] can be plugged in with [`Sessions::with_store`](crate::Sessions::with_store).
//!
//! # A complete store
//!
//! A complete (if naive) store, to show what each method must do:
//!
//! ```
//! use std::collections::HashMap;
//! use std::sync::Mutex;
//!
//! use rocket_server_sessions::store::{ChangeSet, SessionRecord, SessionStore, SessionSummary};
//! use rocket_server_sessions::{StoreError, StoreKey};
//!
//! struct Stored {
//!     created: u64,
//!     active: u64,
//!     expires: u64,
//!     data: HashMap<String, Vec<u8>>,
//! }
//!
//! struct Toy {
//!     ttl: u64,
//!     sessions: Mutex<HashMap<StoreKey, Stored>>,
//! }
//!
//! #[rocket::async_trait]
//! impl SessionStore for Toy {
//!     async fn load(&self, key: &StoreKey, now: u64) -> Result<Option<SessionRecord>, StoreError> {
//!         let sessions = self.sessions.lock().unwrap();
//!         Ok(sessions.get(key).filter(|s| s.expires > now).map(|s| SessionRecord {
//!             created: s.created,
//!             expires: s.expires,
//!             data: s.data.clone().into_iter().collect(),
//!         }))
//!     }
//!
//!     async fn create(&self, key: &StoreKey, created: u64, changes: &ChangeSet, now: u64)
//!         -> Result<bool, StoreError>
//!     {
//!         let mut sessions = self.sessions.lock().unwrap();
//!         if sessions.get(key).is_some_and(|s| s.expires > now) {
//!             return Ok(false); // never adopt a live session
//!         }
//!         let mut data = HashMap::new();
//!         changes.apply_to(&mut data);
//!         let expires = changes.expiry(now, self.ttl);
//!         sessions.insert(*key, Stored { created, active: now, expires, data });
//!         Ok(true)
//!     }
//!
//!     async fn update(&self, key: &StoreKey, changes: &ChangeSet, now: u64) -> Result<bool, StoreError> {
//!         let mut sessions = self.sessions.lock().unwrap();
//!         match sessions.get_mut(key).filter(|s| s.expires > now) {
//!             Some(s) => {
//!                 changes.apply_to(&mut s.data);
//!                 (s.active, s.expires) = (now, changes.expiry(now, self.ttl));
//!                 Ok(true)
//!             }
//!             None => Ok(false), // destroyed or expired: do not bring it back
//!         }
//!     }
//!
//!     async fn cycle(&self, old: &StoreKey, new: &StoreKey, changes: &ChangeSet, now: u64)
//!         -> Result<bool, StoreError>
//!     {
//!         let mut sessions = self.sessions.lock().unwrap();
//!         if sessions.contains_key(new) {
//!             return Ok(false);
//!         }
//!         match sessions.remove(old).filter(|s| s.expires > now) {
//!             Some(mut s) => {
//!                 changes.apply_to(&mut s.data);
//!                 (s.active, s.expires) = (now, changes.expiry(now, self.ttl));
//!                 sessions.insert(*new, s);
//!                 Ok(true)
//!             }
//!             None => Ok(false),
//!         }
//!     }
//!
//!     async fn destroy(&self, key: &StoreKey) -> Result<(), StoreError> {
//!         self.sessions.lock().unwrap().remove(key);
//!         Ok(())
//!     }
//!
//!     async fn destroy_where(&self, name: &str, value: &[u8]) -> Result<u64, StoreError> {
//!         let mut sessions = self.sessions.lock().unwrap();
//!         let before = sessions.len();
//!         sessions.retain(|_, s| s.data.get(name).map(Vec::as_slice) != Some(value));
//!         Ok((before - sessions.len()) as u64)
//!     }
//!
//!     async fn list_where(&self, name: &str, value: &[u8], now: u64)
//!         -> Result<Vec<SessionSummary>, StoreError>
//!     {
//!         let sessions = self.sessions.lock().unwrap();
//!         Ok(sessions
//!             .iter()
//!             .filter(|(_, s)| s.expires > now && s.data.get(name).map(Vec::as_slice) == Some(value))
//!             .map(|(key, s)| SessionSummary {
//!                 key: *key,
//!                 created: s.created,
//!                 active: s.active,
//!                 expires: s.expires,
//!             })
//!             .collect())
//!     }
//!
//!     async fn sweep(&self, now: u64) -> Result<u64, StoreError> {
//!         let mut sessions = self.sessions.lock().unwrap();
//!         let before = sessions.len();
//!         sessions.retain(|_, s| s.expires > now);
//!         Ok((before - sessions.len()) as u64)
//!     }
//! }
//! ```
//!
//! This very store passes the crate's conformance suite (`tests/toy_store.rs`): with the
//! `testing` feature, [`store_conformance!`](crate::store_conformance) runs the suite the
//! crate's own stores pass against any store, unchanged (see `testing`).

use std::any::Any;
use std::collections::HashMap;
use std::hash::Hasher;

use crate::error::StoreError;
use crate::id::StoreKey;

#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod coalesce;
pub(crate) mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::{CacheStats, PostgresStore};
#[cfg(feature = "redis")]
pub use redis::RedisStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

/// `[<profile>.databases.<name>]` of `figment`, with `rocket_db_pools`' defaults
/// (`max_connections`: 4 per worker, `connect_timeout`: 5 s), as the stores' own pools read it.
#[cfg(any(feature = "postgres", feature = "redis", feature = "sqlite"))]
pub(crate) fn database_figment(
    figment: &rocket::figment::Figment,
    name: &str,
) -> rocket::figment::Figment {
    use rocket::figment::providers::Serialized;

    let workers: usize = figment.extract_inner("workers").unwrap_or(2);
    figment
        .focus(&format!("databases.{name}"))
        .join(Serialized::default("max_connections", workers * 4))
        .join(Serialized::default("connect_timeout", 5))
}

/// [`database_figment`] read, or an error naming the table.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) fn database_config(
    figment: &rocket::figment::Figment,
    name: &str,
) -> Result<rocket_db_pools::Config, StoreError> {
    database_figment(figment, name).extract().map_err(|e| {
        StoreError::new(crate::StoreErrorKind::Other, format!("databases.{name}")).with_source(e)
    })
}

/// Store keys are SHA-256 digests, uniformly distributed already: hashing them again is waste.
#[derive(Default)]
pub(crate) struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8).take(1) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = u64::from_le_bytes(word);
        }
    }
}

/// A session as a store returns it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionRecord {
    /// Unix seconds at which the session was created; id cycling keeps it.
    pub created: u64,
    /// Unix seconds at which the session expires unless it is written again.
    pub expires: u64,
    /// The session's keys and their MessagePack-encoded values.
    pub data: Vec<(String, Vec<u8>)>,
}

/// A live session as [`SessionStore::list_where`] describes it: times, no data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    /// Where the session is filed.
    pub key: StoreKey,
    /// Unix seconds at which it was created.
    pub created: u64,
    /// Unix seconds of its last `create`, `update` or `cycle`: its last activity.
    pub active: u64,
    /// Unix seconds at which it expires.
    pub expires: u64,
}

/// Per-key changes to one session: each key is either set to new bytes or removed. It also
/// carries the session's own idle lifetime, when it has one ([`ttl`](Self::ttl)).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChangeSet {
    /// Sorted by key, each key once: a request changes a handful of keys, so a vector beats a
    /// tree (and allocates once).
    changes: Vec<(String, Option<Vec<u8>>)>,
    ttl: Option<u64>,
}

impl ChangeSet {
    /// No changes.
    pub fn new() -> ChangeSet {
        ChangeSet::default()
    }

    /// No changes, with room for `n` without reallocating.
    pub fn with_capacity(n: usize) -> ChangeSet {
        ChangeSet {
            changes: Vec::with_capacity(n),
            ttl: None,
        }
    }

    /// Changes in which every key occurs once, in any order.
    pub(crate) fn from_distinct(mut changes: Vec<(String, Option<Vec<u8>>)>) -> ChangeSet {
        changes.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        ChangeSet { changes, ttl: None }
    }

    /// Gives the session its own idle lifetime in seconds (`None`: the store's `ttl`).
    pub fn set_ttl(&mut self, ttl: Option<u64>) {
        self.ttl = ttl;
    }

    /// The session's own idle lifetime in seconds, if it has one: the store then sets its
    /// expiry to `now + ttl` instead of `now` plus the store's `ttl`. The session's handler
    /// set it ([`Session::set_lifetime`](crate::Session::set_lifetime)), and every write of
    /// the session from a request carries it again.
    pub fn ttl(&self) -> Option<u64> {
        self.ttl
    }

    /// The expiry a write of the session at `now` gives it, for a store whose own idle
    /// lifetime is `store_ttl`.
    pub fn expiry(&self, now: u64, store_ttl: u64) -> u64 {
        now.saturating_add(self.ttl.unwrap_or(store_ttl))
    }

    /// Sets `key` to `value`, replacing an earlier change of the same key.
    pub fn set(&mut self, key: impl Into<String>, value: Vec<u8>) {
        self.put(key.into(), Some(value));
    }

    /// Removes `key`, replacing an earlier change of the same key.
    pub fn remove(&mut self, key: impl Into<String>) {
        self.put(key.into(), None);
    }

    fn put(&mut self, key: String, value: Option<Vec<u8>>) {
        match self.changes.binary_search_by(|(k, _)| k.as_str().cmp(&key)) {
            Ok(at) => self.changes[at].1 = value,
            Err(at) => self.changes.insert(at, (key, value)),
        }
    }

    /// Whether there are no changes.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Number of changed keys.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// Whether `key` is set or removed here.
    pub(crate) fn touches(&self, key: &[u8]) -> bool {
        // `str` orders as its bytes do, so the changes are sorted as byte strings too.
        self.changes
            .binary_search_by(|(k, _)| k.as_bytes().cmp(key))
            .is_ok()
    }

    /// The changes in key order: `Some(bytes)` sets, `None` removes.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        self.changes.iter().map(|(k, v)| (k.as_str(), v.as_deref()))
    }

    /// Applies the changes to a map of a session's data.
    pub fn apply_to(&self, data: &mut HashMap<String, Vec<u8>>) {
        for (key, value) in &self.changes {
            match value {
                Some(v) => data.insert(key.clone(), v.clone()),
                None => data.remove(key),
            };
        }
    }
}

/// Where sessions live between requests.
///
/// Every method takes `now` (Unix seconds) from the manager's clock, so stores have no clock of
/// their own. A session is live while `now` is before its expiry, which each successful
/// `create`, `update` and `cycle` sets to [`changes.expiry(now, ttl)`](ChangeSet::expiry):
/// `now` plus the session's own lifetime if the changes carry one, else plus the store's
/// `ttl`. A store must never return or update a session that is not live.
#[rocket::async_trait]
pub trait SessionStore: Any + Send + Sync {
    /// The live session filed under `key`, if any.
    async fn load(&self, key: &StoreKey, now: u64) -> Result<Option<SessionRecord>, StoreError>;

    /// Files a new session under `key` with the given changes applied to empty data.
    /// Returns `false`, changing nothing, when a live session is already filed there.
    async fn create(
        &self,
        key: &StoreKey,
        created: u64,
        changes: &ChangeSet,
        now: u64,
    ) -> Result<bool, StoreError>;

    /// Applies `changes` (possibly none) to the live session under `key` and extends its
    /// expiry. Returns `false`, changing nothing, when there is no live session there: one
    /// that was destroyed meanwhile must stay destroyed.
    async fn update(
        &self,
        key: &StoreKey,
        changes: &ChangeSet,
        now: u64,
    ) -> Result<bool, StoreError>;

    /// Moves the live session under `old` to `new` (same creation time and data, then
    /// `changes` applied), so that `old` no longer finds it. Returns `false`, changing
    /// nothing, when `old` holds no live session or `new` is taken.
    async fn cycle(
        &self,
        old: &StoreKey,
        new: &StoreKey,
        changes: &ChangeSet,
        now: u64,
    ) -> Result<bool, StoreError>;

    /// Deletes the session under `key`, if any.
    async fn destroy(&self, key: &StoreKey) -> Result<(), StoreError>;

    /// [`load`](Self::load), answered without waiting, for a store that can (one that holds
    /// its sessions in memory): `Some` with the answer, or `None` for "not available now", and
    /// the manager then awaits `load`. A request tries this first, so a store that answers
    /// here saves each request a boxed future. The default answers `None`.
    fn load_now(
        &self,
        key: &StoreKey,
        now: u64,
    ) -> Option<Result<Option<SessionRecord>, StoreError>> {
        let _ = (key, now);
        None
    }

    /// [`update`](Self::update), answered without waiting, as [`load_now`](Self::load_now)
    /// answers `load`. The default answers `None`.
    fn update_now(
        &self,
        key: &StoreKey,
        changes: &ChangeSet,
        now: u64,
    ) -> Option<Result<bool, StoreError>> {
        let _ = (key, changes, now);
        None
    }

    /// Deletes every session whose `name` key holds exactly the encoded `value`; returns how
    /// many were deleted.
    async fn destroy_where(&self, name: &str, value: &[u8]) -> Result<u64, StoreError>;

    /// The live sessions whose `name` key holds exactly the encoded `value` (a user's
    /// sessions, for a "your devices" page), in no particular order.
    async fn list_where(
        &self,
        name: &str,
        value: &[u8],
        now: u64,
    ) -> Result<Vec<SessionSummary>, StoreError>;

    /// Deletes sessions that are no longer live; returns how many.
    async fn sweep(&self, now: u64) -> Result<u64, StoreError>;

    /// Makes what the store holds durable, if it is not already (the memory store writes its
    /// snapshot). Called periodically and at shutdown.
    async fn persist(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Lets go of what this instance holds in a store other instances share (the PostgreSQL
    /// store gives up its cache claim and says it is gone). Called at shutdown, after the last
    /// `persist`; calls made afterwards must still be answered.
    async fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A shared store is a store: this lets one store serve several Rocket instances (and tests).
#[rocket::async_trait]
impl<S: SessionStore + ?Sized> SessionStore for std::sync::Arc<S> {
    async fn load(&self, key: &StoreKey, now: u64) -> Result<Option<SessionRecord>, StoreError> {
        (**self).load(key, now).await
    }
    async fn create(
        &self,
        key: &StoreKey,
        created: u64,
        changes: &ChangeSet,
        now: u64,
    ) -> Result<bool, StoreError> {
        (**self).create(key, created, changes, now).await
    }
    async fn update(
        &self,
        key: &StoreKey,
        changes: &ChangeSet,
        now: u64,
    ) -> Result<bool, StoreError> {
        (**self).update(key, changes, now).await
    }
    async fn cycle(
        &self,
        old: &StoreKey,
        new: &StoreKey,
        changes: &ChangeSet,
        now: u64,
    ) -> Result<bool, StoreError> {
        (**self).cycle(old, new, changes, now).await
    }
    async fn destroy(&self, key: &StoreKey) -> Result<(), StoreError> {
        (**self).destroy(key).await
    }
    fn load_now(
        &self,
        key: &StoreKey,
        now: u64,
    ) -> Option<Result<Option<SessionRecord>, StoreError>> {
        (**self).load_now(key, now)
    }
    fn update_now(
        &self,
        key: &StoreKey,
        changes: &ChangeSet,
        now: u64,
    ) -> Option<Result<bool, StoreError>> {
        (**self).update_now(key, changes, now)
    }
    async fn destroy_where(&self, name: &str, value: &[u8]) -> Result<u64, StoreError> {
        (**self).destroy_where(name, value).await
    }
    async fn list_where(
        &self,
        name: &str,
        value: &[u8],
        now: u64,
    ) -> Result<Vec<SessionSummary>, StoreError> {
        (**self).list_where(name, value, now).await
    }
    async fn sweep(&self, now: u64) -> Result<u64, StoreError> {
        (**self).sweep(now).await
    }
    async fn persist(&self) -> Result<(), StoreError> {
        (**self).persist().await
    }
    async fn close(&self) -> Result<(), StoreError> {
        (**self).close().await
    }
}
