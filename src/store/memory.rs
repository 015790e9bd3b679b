//! The embedded store: sessions in memory, kept durable in a snapshot file.
//!
//! Sessions are spread over shards, each behind its own lock, so a request waits at most for
//! one shard and a sweep or snapshot never holds the whole store. The snapshot is written to
//! a temporary file in the same folder, synced, renamed over the old one and the folder synced,
//! so a crash at any point leaves either the old snapshot or the new one, whole.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use sha2::{Digest, Sha256};

use super::{ChangeSet, DigestHasher, SessionRecord, SessionStore};
use crate::config::MemoryStoreConfig;
use crate::error::StoreError;
use crate::id::StoreKey;
use crossbeam_utils::CachePadded;

const SHARDS: usize = 1024;
const MAGIC: &[u8; 8] = b"RSSNAP\x00\x01";

/// A session's data as a load returns it: each name and its value, copied out of the entry.
fn copy_out(data: &[u8]) -> Vec<(String, Vec<u8>)> {
    // Names are UTF-8: written from `&str`, or checked when a snapshot is read.
    pairs(data)
        .map(|(name, value)| {
            let name = std::str::from_utf8(name).unwrap_or_default();
            (name.to_string(), value.to_vec())
        })
        .collect()
}

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

/// One session. Its data is one buffer laid out as the snapshot holds it (see
/// [`encode_snapshot`]): a u32 count of keys, then per key its name and its value, each
/// u32-length-prefixed. With the 32-byte key, a bucket is 64 bytes, and a load reads the
/// bucket and this one buffer; a vector of boxed names and values took three more cache lines
/// to read, and as many allocations, per session.
#[derive(Clone)]
struct Entry {
    created: u64,
    expires: u64,
    data: Box<[u8]>,
}

/// The data of a session without keys.
const NO_DATA: [u8; 4] = [0; 4];

/// The byte range of a u32-length-prefixed field of `data` starting at `at`, which moves past
/// it; `None` when `data` ends before the field does.
fn field(data: &[u8], at: &mut usize) -> Option<std::ops::Range<usize>> {
    let len = u32::from_be_bytes(data.get(*at..*at + 4)?.try_into().ok()?) as usize;
    let start = *at + 4;
    let end = start.checked_add(len).filter(|&end| end <= data.len())?;
    *at = end;
    Some(start..end)
}

/// The byte ranges of each name and its value in a session's data, in order.
fn spans(
    data: &[u8],
) -> impl Iterator<Item = (std::ops::Range<usize>, std::ops::Range<usize>)> + '_ {
    let mut at = NO_DATA.len();
    std::iter::from_fn(move || Some((field(data, &mut at)?, field(data, &mut at)?)))
}

/// Each name and its value in a session's data, in order.
fn pairs(data: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
    spans(data).map(move |(name, value)| (&data[name], &data[value]))
}

/// `changes` as lengths of the entry layout can hold them: every name and value under 4 GiB.
fn fits(changes: &ChangeSet) -> Result<(), StoreError> {
    let too_long = |bytes: usize| u32::try_from(bytes).is_err();
    match changes
        .iter()
        .find(|(k, v)| too_long(k.len()) || v.is_some_and(|v| too_long(v.len())))
    {
        Some((key, _)) => {
            // The name itself may be the long part: it is shown cut short.
            let shown: String = key.chars().take(64).collect();
            Err(StoreError::Other(format!(
                "the memory store holds names and values under 4 GiB; `{shown}` is larger"
            )))
        }
        None => Ok(()),
    }
}

/// `data` with `changes` applied (which [`fits`] has checked), in a buffer of its exact size.
fn rebuilt(data: &[u8], changes: &ChangeSet) -> Box<[u8]> {
    let kept = || pairs(data).filter(|(name, _)| !changes.touches(name));
    let set = || changes.iter().filter_map(|(k, v)| Some((k.as_bytes(), v?)));
    let size: usize = kept()
        .chain(set())
        .map(|(name, value)| 8 + name.len() + value.len())
        .sum();
    let mut out = Vec::with_capacity(NO_DATA.len() + size);
    out.extend_from_slice(&NO_DATA);
    let mut count = 0u32;
    for (name, value) in kept().chain(set()) {
        for part in [name, value] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
        // Reaching 2^32 keys would take a session of over 32 GiB.
        count = count.saturating_add(1);
    }
    out[..NO_DATA.len()].copy_from_slice(&count.to_be_bytes());
    out.into_boxed_slice()
}

impl Entry {
    fn new(created: u64, expires: u64, changes: &ChangeSet) -> Entry {
        Entry {
            created,
            expires,
            data: rebuilt(&NO_DATA, changes),
        }
    }

    /// Where the value of `key` is in the data.
    fn value_of(&self, key: &str) -> Option<std::ops::Range<usize>> {
        spans(&self.data)
            .find(|(name, _)| &self.data[name.clone()] == key.as_bytes())
            .map(|(_, value)| value)
    }

    /// Applies `changes`, which [`fits`] has checked.
    fn apply(&mut self, changes: &ChangeSet) {
        // Values set to new ones of the same length (a counter, a flag) are written in place.
        // Anything else rebuilds the buffer, which takes every changed value from `changes`,
        // so values already written in place by then are written again, not lost.
        let mut rebuild = false;
        for (key, value) in changes.iter() {
            match (value, self.value_of(key)) {
                (Some(new), Some(old)) if new.len() == old.len() => {
                    self.data[old].copy_from_slice(new)
                }
                _ => rebuild = true,
            }
        }
        if rebuild {
            self.data = rebuilt(&self.data, changes);
        }
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
    /// A leftover temporary file (from a crash while writing) is removed. A snapshot that does
    /// not read back whole is never overwritten: it is renamed to `<file>.corrupt-<unix time>`,
    /// an error is logged, and the store starts empty.
    pub fn open(config: &MemoryStoreConfig) -> Result<MemoryStore, StoreError> {
        let mut store = MemoryStore::new(config.ttl);
        let Some(path) = &config.file_path else {
            return Ok(store);
        };
        let tmp = temp_path(path);
        match std::fs::remove_file(&tmp) {
            Ok(()) => rocket::warn!(
                "session store: removed {}, left by an interrupted snapshot",
                tmp.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("remove", &tmp, e)),
        }
        match std::fs::read(path) {
            Ok(bytes) => match decode_snapshot(&bytes) {
                Ok(entries) => {
                    let count = entries.len();
                    for (key, entry) in entries {
                        store.shard(&key).insert(key, entry);
                    }
                    rocket::info!(
                        "session store: loaded {count} sessions from {}",
                        path.display()
                    );
                }
                Err(reason) => {
                    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
                    let aside = PathBuf::from(format!("{}.corrupt-{now}", path.display()));
                    std::fs::rename(path, &aside).map_err(|e| io_error("rename", path, e))?;
                    rocket::error!(
                        "session store: {} is not a valid snapshot ({reason}); kept it as {} and \
                         started with no sessions",
                        path.display(),
                        aside.display()
                    );
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("read", path, e)),
        }
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
        let (bytes, generation) = encode_snapshot(self);
        rocket::tokio::task::spawn_blocking(move || write_atomically(&path, &bytes))
            .await
            .map_err(|e| StoreError::Other(format!("snapshot task failed: {e}")))??;
        self.persisted.store(generation, Ordering::Release);
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
        // Within the same second the expiry stays as it is: not writing it leaves the entry's
        // line clean in the other core's cache.
        let expires = now.saturating_add(self.ttl);
        if entry.expires != expires {
            entry.expires = expires;
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
        let entry = Entry::new(created, now.saturating_add(self.ttl), changes);
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
        entry.expires = now.saturating_add(self.ttl);
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

fn temp_path(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.tmp", path.display()))
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Other(format!("cannot {what} {}: {e}", path.display()))
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = temp_path(path);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| io_error("create", &dir, e))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&tmp)
        .map_err(|e| io_error("create", &tmp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error("write", &tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| io_error("rename", &tmp, e))?;
    #[cfg(unix)]
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("sync", &dir, e))?;
    Ok(())
}

/// The snapshot format: `MAGIC`, a u64 count, then per session its 32-byte key, `created` and
/// `expires` (u64 each), a u32 count of keys and per key a u32-length-prefixed name and value;
/// last, the SHA-256 of everything before it. Integers are big-endian. Also returns the
/// store's generation as of what was encoded.
fn encode_snapshot(store: &MemoryStore) -> (Vec<u8>, u64) {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&0u64.to_be_bytes());
    let mut count = 0u64;
    let mut generation = 0u64;
    for shard in store.shards.iter() {
        // Encode under the shard's lock: it is one pass of memcpy, shorter than a clone would be.
        let shard = lock(shard);
        generation = generation.wrapping_add(shard.changes);
        for (key, e) in shard.iter() {
            count += 1;
            out.extend_from_slice(&key.0);
            out.extend_from_slice(&e.created.to_be_bytes());
            out.extend_from_slice(&e.expires.to_be_bytes());
            // The entry's data is already in the snapshot's layout.
            out.extend_from_slice(&e.data);
        }
    }
    out[8..16].copy_from_slice(&count.to_be_bytes());
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    (out, generation)
}

/// Whether `bytes` decode as a snapshot (for the fuzz target).
pub(super) fn snapshot_decodes(bytes: &[u8]) -> bool {
    decode_snapshot(bytes).is_ok()
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

fn decode_snapshot(bytes: &[u8]) -> Result<Vec<(StoreKey, Entry)>, String> {
    if bytes.len() < MAGIC.len() + 8 + 32 || &bytes[..MAGIC.len()] != MAGIC {
        return Err("not a session snapshot".into());
    }
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != digest {
        return Err("checksum mismatch".into());
    }
    let mut r = Reader(&body[MAGIC.len()..]);
    let count = r.u64()?;
    // Every session takes at least 52 bytes: a count beyond that is a lie.
    if count > (r.0.len() / 52) as u64 {
        return Err("session count exceeds the file".into());
    }
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let key = StoreKey(r.take(32)?.try_into().expect("32 bytes"));
        let created = r.u64()?;
        let expires = r.u64()?;
        let start = r.0;
        let n = r.u32()?;
        for _ in 0..n {
            let len = r.u32()? as usize;
            std::str::from_utf8(r.take(len)?).map_err(|_| "a key is not UTF-8")?;
            let len = r.u32()? as usize;
            r.take(len)?;
        }
        let data = start[..start.len() - r.0.len()].into();
        entries.push((
            key,
            Entry {
                created,
                expires,
                data,
            },
        ));
    }
    if !r.0.is_empty() {
        return Err("trailing bytes".into());
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with_two_sessions() -> MemoryStore {
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
        let entries = decode_snapshot(&encode_snapshot(&store).0).unwrap();
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
            Err(StoreError::Other(message)) => assert!(message.contains("`a`"), "{message}"),
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

    #[test]
    fn a_snapshot_decodes_to_what_was_encoded() {
        let store = store_with_two_sessions();
        let mut entries = decode_snapshot(&encode_snapshot(&store).0).unwrap();
        entries.sort_by_key(|(k, _)| *k);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].0, StoreKey([1; 32]));
        assert_eq!((entries[0].1.created, entries[0].1.expires), (5, 110));
        let mut data: Vec<_> = pairs(&entries[0].1.data).collect();
        data.sort();
        assert_eq!(
            data,
            [(&b"a"[..], &[1, 2, 3][..]), ("é".as_bytes(), &[][..])]
        );
        assert_eq!(pairs(&entries[1].1.data).count(), 0);
    }

    #[test]
    fn the_snapshot_format_is_the_documented_one_byte_for_byte() {
        // Written out by hand from `encode_snapshot`'s documentation, so that a change of the
        // in-memory layout cannot change the file: snapshots of earlier versions must load.
        let store = MemoryStore::new(100);
        let mut changes = ChangeSet::new();
        changes.set("a", vec![1, 2, 3]);
        changes.set("é", vec![]);
        let runtime = rocket::tokio::runtime::Runtime::new().unwrap();
        assert!(runtime
            .block_on(store.create(&StoreKey([1; 32]), 5, &changes, 10))
            .unwrap());
        let mut expected = b"RSSNAP\x00\x01".to_vec();
        expected.extend_from_slice(&1u64.to_be_bytes());
        expected.extend_from_slice(&[1; 32]);
        expected.extend_from_slice(&5u64.to_be_bytes()); // created
        expected.extend_from_slice(&110u64.to_be_bytes()); // expires: 10 + ttl
        expected.extend_from_slice(&2u32.to_be_bytes()); // keys, in the change set's order
        expected.extend_from_slice(&[0, 0, 0, 1, b'a', 0, 0, 0, 3, 1, 2, 3]);
        expected.extend_from_slice(&[0, 0, 0, 2, 0xc3, 0xa9, 0, 0, 0, 0]);
        let digest = Sha256::digest(&expected);
        expected.extend_from_slice(&digest);
        assert_eq!(encode_snapshot(&store).0, expected);
        let entries = decode_snapshot(&expected).unwrap();
        assert_eq!(entries.len(), 1);
        let (key, entry) = &entries[0];
        assert_eq!(
            (*key, entry.created, entry.expires),
            (StoreKey([1; 32]), 5, 110)
        );
        let data: Vec<_> = pairs(&entry.data).collect();
        assert_eq!(
            data,
            [(&b"a"[..], &[1, 2, 3][..]), ("é".as_bytes(), &[][..])]
        );
    }

    #[test]
    fn every_truncation_and_flipped_byte_of_a_snapshot_is_refused() {
        let (bytes, _) = encode_snapshot(&store_with_two_sessions());
        for len in 0..bytes.len() {
            assert!(decode_snapshot(&bytes[..len]).is_err(), "length {len}");
        }
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode_snapshot(&bad).is_err(), "byte {i}");
        }
    }
}
