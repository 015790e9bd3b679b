//! The embedded store: sessions in memory, kept durable in a snapshot file.
//!
//! Sessions are spread over shards, each behind its own lock, so a request waits at most for
//! one shard and a sweep or snapshot never holds the whole store. The snapshot is written to
//! a temporary file in the same folder, synced, renamed over the old one and the folder synced,
//! so a crash at any point leaves either the old snapshot or the new one, whole.
//!
//! `entry.rs` holds one session's layout, `snapshot.rs` the file.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use self::entry::{copy_out, fits, pairs, Entry};
use super::{ChangeSet, DigestHasher, SessionRecord, SessionStore, SessionSummary};
use crate::config::MemoryStoreConfig;
use crate::error::{StoreError, StoreErrorKind};
use crate::id::StoreKey;
use crossbeam_utils::CachePadded;

mod entry;
pub(crate) mod snapshot;

const SHARDS: usize = 1024;

/// One shard's sessions, and how many times they changed: counted here, under the shard's
/// lock, rather than in one counter every request on every core would write.
#[derive(Default)]
struct Shard {
    sessions: HashMap<StoreKey, Entry, BuildHasherDefault<DigestHasher>>,
    changes: u64,
}

impl Shard {
    fn changed(&mut self) {
        self.changes = self.changes.wrapping_add(1);
    }
}

impl std::ops::Deref for Shard {
    type Target = HashMap<StoreKey, Entry, BuildHasherDefault<DigestHasher>>;
    fn deref(&self) -> &Self::Target {
        &self.sessions
    }
}

impl std::ops::DerefMut for Shard {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.sessions
    }
}

/// Sessions in memory, with an optional snapshot file (koyo's `make-memory-session-store`).
///
/// Built by the fairing from `store = { kind = "memory", ... }`; see
/// [`MemoryStoreConfig`] for the settings.
pub struct MemoryStore {
    /// Each shard on its own cache lines, so that requests on different shards never contend
    /// for a line.
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    ttl: u64,
    file: Option<PathBuf>,
    /// The shards' change counts summed when the last snapshot was taken: a snapshot with
    /// nothing changed since is skipped.
    persisted: AtomicU64,
    /// One snapshot write at a time.
    writing: rocket::tokio::sync::Mutex<()>,
}

impl MemoryStore {
    /// An empty store without a file.
    pub fn new(ttl: u64) -> MemoryStore {
        MemoryStore {
            shards: (0..SHARDS).map(|_| CachePadded::default()).collect(),
            ttl,
            file: None,
            persisted: AtomicU64::new(0),
            writing: Default::default(),
        }
    }

    /// Opens the store of `config`, loading its snapshot file if there is one.
    ///
    /// A snapshot that does not read back whole is never overwritten: it is renamed to
    /// `<file>.corrupt-<unix time>`, an error is logged, and the store starts empty. A folder
    /// where no snapshot can be written is an error now, not at the first snapshot.
    pub fn open(config: &MemoryStoreConfig) -> Result<MemoryStore, StoreError> {
        let mut store = MemoryStore::new(config.ttl);
        let Some(path) = &config.file_path else {
            return Ok(store);
        };
        for (key, mut entry) in snapshot::load(path)? {
            if entry.active == 0 {
                // A snapshot of the first format has no activity times: as the store's ttl
                // gives them.
                entry.active = entry.expires.saturating_sub(config.ttl).max(entry.created);
            }
            store.shard(&key).insert(key, entry);
        }
        snapshot::check_writable(path)?;
        store.file = Some(path.clone());
        Ok(store)
    }

    /// Number of sessions held, live or not yet swept.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// Whether the store holds no session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, key: &StoreKey) -> MutexGuard<'_, Shard> {
        lock(&self.shards[u16::from_le_bytes([key.0[30], key.0[31]]) as usize % SHARDS])
    }

    /// The sum of the shards' change counts: it moves whenever anything changed.
    fn generation(&self) -> u64 {
        self.shards
            .iter()
            .fold(0u64, |sum, s| sum.wrapping_add(lock(s).changes))
    }

    /// Writes the snapshot now if anything changed since the last one.
    async fn write_snapshot(&self) -> Result<(), StoreError> {
        let Some(path) = self.file.clone() else {
            return Ok(());
        };
        let _one_at_a_time = self.writing.lock().await;
        if self.generation() == self.persisted.load(Ordering::Acquire) {
            return Ok(());
        }
        let (bytes, generation, count) = snapshot::encode(self);
        let shown = path.clone();
        rocket::tokio::task::spawn_blocking(move || snapshot::write_atomically(&path, &bytes))
            .await
            .map_err(|e| {
                StoreError::new(StoreErrorKind::Other, "the snapshot task failed").with_source(e)
            })?
            .map_err(|e| {
                let context = format!(
                    "the snapshot ({count} sessions) was not written to {}",
                    shown.display()
                );
                StoreError::new(StoreErrorKind::Io, context).with_source(e)
            })?;
        self.persisted.store(generation, Ordering::Release);
        rocket::info!(
            "session store: wrote {count} sessions to {}",
            shown.display()
        );
        Ok(())
    }
}

impl MemoryStore {
    /// The live session under `key`: [`SessionStore::load`], which never waits here.
    fn find(&self, key: &StoreKey, now: u64) -> Option<SessionRecord> {
        let shard = self.shard(key);
        shard
            .get(key)
            .filter(|e| e.expires > now)
            .map(|e| SessionRecord {
                created: e.created,
                expires: e.expires,
                data: copy_out(&e.data),
            })
    }

    /// [`SessionStore::update`], which never waits here.
    fn apply(&self, key: &StoreKey, changes: &ChangeSet, now: u64) -> Result<bool, StoreError> {
        fits(changes)?;
        let mut shard = self.shard(key);
        let Some(entry) = shard.get_mut(key).filter(|e| e.expires > now) else {
            return Ok(false);
        };
        entry.apply(changes);
        // Within the same second the times stay as they are: not writing them leaves the
        // entry's line clean in the other core's cache.
        let expires = changes.expiry(now, self.ttl);
        if entry.expires != expires {
            entry.expires = expires;
        }
        if entry.active != now {
            entry.active = now;
        }
        shard.changed();
        Ok(true)
    }
}

fn lock(shard: &CachePadded<Mutex<Shard>>) -> MutexGuard<'_, Shard> {
    // A panic while holding a shard lock cannot leave an entry half-written (every change is
    // one insert, assignment or removal), so the data behind a poisoned lock is sound.
    shard
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[rocket::async_trait]
impl SessionStore for MemoryStore {
    async fn load(&self, key: &StoreKey, now: u64) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self.find(key, now))
    }

    fn load_now(
        &self,
        key: &StoreKey,
        now: u64,
    ) -> Option<Result<Option<SessionRecord>, StoreError>> {
        Some(Ok(self.find(key, now)))
    }

    fn update_now(
        &self,
        key: &StoreKey,
        changes: &ChangeSet,
        now: u64,
    ) -> Option<Result<bool, StoreError>> {
        Some(self.apply(key, changes, now))
    }

    async fn create(
        &self,
        key: &StoreKey,
        created: u64,
        changes: &ChangeSet,
        now: u64,
    ) -> Result<bool, StoreError> {
        fits(changes)?;
        let mut shard = self.shard(key);
        if shard.get(key).is_some_and(|e| e.expires > now) {
            return Ok(false);
        }
        let entry = Entry::new(created, now, changes.expiry(now, self.ttl), changes);
        shard.insert(*key, entry);
        shard.changed();
        Ok(true)
    }

    async fn update(
        &self,
        key: &StoreKey,
        changes: &ChangeSet,
        now: u64,
    ) -> Result<bool, StoreError> {
        self.apply(key, changes, now)
    }

    async fn cycle(
        &self,
        old: &StoreKey,
        new: &StoreKey,
        changes: &ChangeSet,
        now: u64,
    ) -> Result<bool, StoreError> {
        fits(changes)?;
        if self.shard(new).contains_key(new) {
            return Ok(false);
        }
        let mut entry = {
            let mut shard = self.shard(old);
            let Some(entry) = shard.remove(old) else {
                return Ok(false);
            };
            // An expired session is removed all the same, and not moved.
            shard.changed();
            if entry.expires <= now {
                return Ok(false);
            }
            entry
        };
        entry.apply(changes);
        entry.expires = changes.expiry(now, self.ttl);
        entry.active = now;
        let mut shard = self.shard(new);
        shard.insert(*new, entry);
        shard.changed();
        Ok(true)
    }

    async fn destroy(&self, key: &StoreKey) -> Result<(), StoreError> {
        let mut shard = self.shard(key);
        if shard.remove(key).is_some() {
            shard.changed();
        }
        Ok(())
    }

    async fn destroy_where(&self, name: &str, value: &[u8]) -> Result<u64, StoreError> {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            let before = shard.len();
            shard.retain(|_, e| !pairs(&e.data).any(|(k, v)| k == name.as_bytes() && v == value));
            if shard.len() < before {
                removed += (before - shard.len()) as u64;
                shard.changed();
            }
        }
        Ok(removed)
    }

    async fn list_where(
        &self,
        name: &str,
        value: &[u8],
        now: u64,
    ) -> Result<Vec<SessionSummary>, StoreError> {
        let mut found = Vec::new();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            let holds = |e: &Entry| pairs(&e.data).any(|(k, v)| k == name.as_bytes() && v == value);
            found.extend(
                shard
                    .iter()
                    .filter(|(_, e)| e.expires > now && holds(e))
                    .map(|(key, e)| SessionSummary {
                        key: *key,
                        created: e.created,
                        active: e.active,
                        expires: e.expires,
                    }),
            );
        }
        Ok(found)
    }

    async fn sweep(&self, now: u64) -> Result<u64, StoreError> {
        let mut removed = 0;
        for shard in self.shards.iter() {
            removed += {
                let mut shard = lock(shard);
                let before = shard.len();
                shard.retain(|_, e| e.expires > now);
                if shard.len() < before {
                    shard.changed();
                }
                (before - shard.len()) as u64
            };
            // Let requests waiting on this worker run between shards.
            rocket::tokio::task::yield_now().await;
        }
        Ok(removed)
    }

    async fn persist(&self) -> Result<(), StoreError> {
        self.write_snapshot().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn store_with_two_sessions() -> MemoryStore {
        let store = MemoryStore::new(100);
        let mut changes = ChangeSet::new();
        changes.set("a", vec![1, 2, 3]);
        changes.set("é", vec![]);
        let run = |f| rocket::tokio::runtime::Runtime::new().unwrap().block_on(f);
        assert!(run(store.create(&StoreKey([1; 32]), 5, &changes, 10)).unwrap());
        assert!(run(store.create(&StoreKey([2; 32]), 6, &ChangeSet::new(), 10)).unwrap());
        store
    }

    #[test]
    fn updates_match_a_model_over_random_change_sets() {
        let mut next = crate::xorshift(0x2545_f491_4f6c_dd1d);
        let store = MemoryStore::new(100);
        let key = StoreKey([7; 32]);
        let runtime = rocket::tokio::runtime::Runtime::new().unwrap();
        assert!(runtime
            .block_on(store.create(&key, 1, &ChangeSet::new(), 10))
            .unwrap());
        let mut model = std::collections::HashMap::<String, Vec<u8>>::new();
        for seed in 0..2000 {
            // Few names and short values, so that changes often overwrite a value of the same
            // length (in place), and as often add, remove or resize one (rebuilt).
            let mut changes = ChangeSet::new();
            for _ in 0..next(4) {
                let name = ["a", "bb", "count", "é"][next(4) as usize];
                match next(4) {
                    0 => {
                        changes.remove(name);
                        model.remove(name);
                    }
                    _ => {
                        let value: Vec<u8> = (0..next(4)).map(|_| next(256) as u8).collect();
                        changes.set(name, value.clone());
                        model.insert(name.into(), value);
                    }
                }
            }
            assert!(store.apply(&key, &changes, 10).unwrap(), "seed {seed}");
            let mut got = store.find(&key, 10).unwrap().data;
            got.sort();
            let mut expected: Vec<_> = model.clone().into_iter().collect();
            expected.sort();
            assert_eq!(got, expected, "seed {seed}");
        }
        // What the updates left is also what a snapshot holds.
        let entries = snapshot::decode(&snapshot::encode(&store).0).unwrap();
        let mut got: Vec<_> = pairs(&entries[0].1.data)
            .map(|(k, v)| (String::from_utf8(k.to_vec()).unwrap(), v.to_vec()))
            .collect();
        got.sort();
        let mut expected: Vec<_> = model.into_iter().collect();
        expected.sort();
        assert_eq!(got, expected);
    }

    #[test]
    fn a_value_of_4_gib_is_refused_and_changes_nothing() {
        let store = store_with_two_sessions();
        let mut huge = ChangeSet::new();
        // Zeroed pages that are never touched: the allocation costs address space, not memory.
        huge.set("a", vec![0u8; 1 << 32]);
        let runtime = rocket::tokio::runtime::Runtime::new().unwrap();
        let refused = |result: Result<bool, StoreError>| match result {
            Err(e) if e.kind() == crate::StoreErrorKind::TooLarge => {
                assert!(e.to_string().contains("`a`"), "{e}")
            }
            other => panic!("not refused: {other:?}"),
        };
        refused(runtime.block_on(store.create(&StoreKey([3; 32]), 5, &huge, 10)));
        refused(runtime.block_on(store.update(&StoreKey([1; 32]), &huge, 10)));
        let (old, new) = (StoreKey([1; 32]), StoreKey([4; 32]));
        refused(runtime.block_on(store.cycle(&old, &new, &huge, 10)));
        assert!(store.find(&StoreKey([3; 32]), 10).is_none());
        assert!(store.find(&new, 10).is_none());
        let mut data = store.find(&old, 10).unwrap().data;
        data.sort();
        assert_eq!(data, [("a".into(), vec![1, 2, 3]), ("é".into(), vec![])]);
    }
}
