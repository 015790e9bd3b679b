//! The PostgreSQL store's local cache: sessions this instance has read or written, kept in
//! memory so that a request whose session is cached makes no round trip to load it.
//!
//! The cache serves only while its instance holds the database's cache claim (see
//! `claim` in the store): while it does, no other instance alive on the database changes a
//! session, so what this instance wrote is what the database holds. It starts empty each time
//! the claim is newly taken, and stops serving, as this instance counts time, before the claim
//! could lapse in the database's.
//!
//! Changes are not announced: while a change gets through the claim's fence, no other instance
//! serves from a cache, and one that takes the claim afterwards starts empty. An instance with
//! a cache listens on one connection of its pool ([`CHANNEL`]) for the others' requests to let
//! go of the claim, and for the announcements of changes that earlier builds still send, which
//! it drops from the cache; while that connection is down the cache is emptied and serves
//! nothing until it listens again.
//!
//! Two counters keep a slow load from filing what was true before a change: each shard counts
//! its changes (`seq`), and the cache counts its new starts (`epoch`: a listening connection,
//! a claim). A load takes both before it asks the database and files its answer only if
//! neither moved meanwhile.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use super::skew::wall_ms;
use crate::id::StoreKey;
use crate::store::{ChangeSet, DigestHasher, SessionRecord};

/// The channel of requests to let go of the claim (and of the changes earlier builds announced).
pub(crate) const CHANNEL: &str = "rocket_sessions";

const SHARDS: usize = 64;

/// The first 8 bytes of a store key: what announcements name (8 bytes keep a batch of 256 in
/// one announcement; two sessions that share them only cost each other a reload).
pub(crate) fn prefix(key: &StoreKey) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&key.0[..8]);
    u64::from_be_bytes(word)
}

struct Entry {
    key: StoreKey,
    created: u64,
    expires: u64,
    data: Vec<(String, Vec<u8>)>,
}

#[derive(Default)]
struct Shard {
    seq: u64,
    entries: HashMap<u64, Entry, BuildHasherDefault<DigestHasher>>,
}

/// What a load must show to file its answer: the counters as they were before it asked.
#[derive(Clone, Copy)]
pub(crate) struct Ticket {
    epoch: u64,
    seq: u64,
}

/// Counts of what the cache did, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Loads answered from the cache.
    pub hits: u64,
    /// Loads that went to the database.
    pub misses: u64,
    /// Sessions dropped because another instance announced a change to them (builds before
    /// this one announced every change; this one announces none).
    pub invalidations: u64,
    /// Whether the cache is listening for announcements now (it serves nothing while not).
    pub listening: bool,
    /// Times the listening connection was (re)established.
    pub connections: u64,
    /// Whether this instance holds the database's cache claim now (it serves nothing while
    /// not): it is the only instance alive on the database.
    pub holding: bool,
    /// Times this instance newly took the claim (each time with an empty cache).
    pub claims: u64,
}

pub(crate) struct Cache {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    /// Announcements carrying this tag are this instance's own.
    pub(crate) instance: u64,
    epoch: AtomicU64,
    listening: AtomicBool,
    /// Until when the claim is held, in nanoseconds after `base`; 0 when it is not.
    lease: AtomicU64,
    /// The same moment by the wall clock, in milliseconds after the Unix epoch. `Instant` does
    /// not count a suspended machine's (or a frozen VM's) time, the wall clock does: a holder
    /// that resumes believing its lease still runs has its wall clock past this.
    lease_wall: AtomicU64,
    /// The wall clock, in milliseconds after the Unix epoch (injected in tests).
    wall: fn() -> u64,
    base: Instant,
    claims: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
    connections: AtomicU64,
}

impl Cache {
    pub(crate) fn new(capacity: usize, instance: u64) -> Cache {
        Cache {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            instance,
            epoch: AtomicU64::new(0),
            listening: AtomicBool::new(false),
            lease: AtomicU64::new(0),
            lease_wall: AtomicU64::new(0),
            wall: wall_ms,
            base: Instant::now(),
            claims: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        }
    }

    fn shard(&self, prefix: u64) -> MutexGuard<'_, Shard> {
        // Bits the shard's own hash table does not use: it indexes buckets by the low bits of
        // the prefix and tags them with the top seven, so a shard chosen by either would crowd
        // all its sessions into a fraction of the buckets or of the tags.
        self.shards[((prefix >> 32) % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the cache may serve now: it listens, and the claim's lease has not run out.
    fn serving(&self) -> bool {
        self.listening.load(Ordering::Acquire) && self.holding()
    }

    /// Whether the claim's lease, as this instance counts it, has not run out: by the monotonic
    /// clock, and by the wall clock, which counts the time the machine was suspended or frozen.
    fn holding(&self) -> bool {
        let lease = self.lease.load(Ordering::Acquire);
        lease != 0
            && (self.base.elapsed().as_nanos() as u64) < lease
            && (self.wall)() < self.lease_wall.load(Ordering::Acquire)
    }

    fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_nanos().max(1) as u64
    }

    /// This instance newly took the claim, valid here until `until`: what the cache held
    /// before may be stale, so it starts empty, and no load that began before can file.
    pub(crate) fn claimed(&self, until: Instant) {
        self.unclaimed();
        self.claims.fetch_add(1, Ordering::Relaxed);
        self.renewed(until);
    }

    /// The claim this instance holds was renewed without a break, valid here until `until`.
    pub(crate) fn renewed(&self, until: Instant) {
        let left = until.saturating_duration_since(Instant::now()).as_millis() as u64;
        // The wall clock's bound first: `holding` reads the monotonic one first.
        self.lease_wall
            .store((self.wall)().saturating_add(left), Ordering::Release);
        self.lease.store(self.nanos(until), Ordering::Release);
    }

    /// This instance is about to give up the claim (or has lost it): the cache stops serving,
    /// before anyone else may change a session, and is emptied.
    pub(crate) fn unclaimed(&self) {
        self.lease.store(0, Ordering::Release);
        self.clear();
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// The live session under `key`, if cached; a hit or a miss is counted.
    pub(crate) fn get(&self, key: &StoreKey, now: u64) -> Option<SessionRecord> {
        let found = self.hit(key, now);
        if found.is_none() {
            self.misses.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// The live session under `key`, if cached; only a hit is counted (a miss goes on to
    /// [`get`](Self::get) through the store's `load`).
    pub(crate) fn hit(&self, key: &StoreKey, now: u64) -> Option<SessionRecord> {
        if !self.serving() {
            return None;
        }
        let shard = self.shard(prefix(key));
        let found = shard
            .entries
            .get(&prefix(key))
            .filter(|e| e.key == *key && e.expires > now)
            .map(|e| SessionRecord {
                created: e.created,
                expires: e.expires,
                data: e.data.clone(),
            })?;
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(found)
    }

    /// The counters a load of `key` takes before it asks the database.
    pub(crate) fn ticket(&self, key: &StoreKey) -> Option<Ticket> {
        let epoch = self.epoch.load(Ordering::Acquire);
        if !self.serving() {
            return None;
        }
        let seq = self.shard(prefix(key)).seq;
        Some(Ticket { epoch, seq })
    }

    /// Files what a load found, unless `key` changed or the listener reconnected since the
    /// load took `ticket`.
    pub(crate) fn fill(&self, ticket: Ticket, key: &StoreKey, record: &SessionRecord) {
        let mut shard = self.shard(prefix(key));
        if shard.seq != ticket.seq
            || self.epoch.load(Ordering::Acquire) != ticket.epoch
            || !self.serving()
        {
            return;
        }
        self.insert(
            &mut shard,
            key,
            record.created,
            record.expires,
            record.data.clone(),
        );
    }

    fn insert(
        &self,
        shard: &mut Shard,
        key: &StoreKey,
        created: u64,
        expires: u64,
        data: Vec<(String, Vec<u8>)>,
    ) {
        if shard.entries.len() >= self.per_shard && !shard.entries.contains_key(&prefix(key)) {
            // Full: make room. Any entry will do; a miss costs one load.
            if let Some(victim) = shard.entries.keys().next().copied() {
                shard.entries.remove(&victim);
            }
        }
        let entry = Entry {
            key: *key,
            created,
            expires,
            data,
        };
        shard.entries.insert(prefix(key), entry);
    }

    /// Files a session this instance has just created.
    pub(crate) fn record_created(
        &self,
        key: &StoreKey,
        created: u64,
        expires: u64,
        changes: &ChangeSet,
    ) {
        let mut shard = self.shard(prefix(key));
        shard.seq += 1;
        if self.serving() {
            let data = changes
                .iter()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_vec())))
                .collect();
            self.insert(&mut shard, key, created, expires, data);
        }
    }

    /// Applies an update this instance has just committed: `Some` with the changes and the new
    /// expiry when the session was live, `None` when it was not (or the outcome is unknown).
    pub(crate) fn record_update(&self, key: &StoreKey, outcome: Option<(&ChangeSet, u64)>) {
        let mut shard = self.shard(prefix(key));
        shard.seq += 1;
        let p = prefix(key);
        match (outcome, shard.entries.get_mut(&p)) {
            (Some((changes, expires)), Some(entry)) if entry.key == *key => {
                for (name, value) in changes.iter() {
                    let at = entry.data.iter().position(|(k, _)| k == name);
                    match (value, at) {
                        (Some(v), Some(i)) => entry.data[i].1 = v.to_vec(),
                        (Some(v), None) => entry.data.push((name.to_owned(), v.to_vec())),
                        (None, Some(i)) => {
                            entry.data.swap_remove(i);
                        }
                        (None, None) => {}
                    }
                }
                entry.expires = expires;
            }
            (_, Some(entry)) if entry.key == *key => {
                shard.entries.remove(&p);
            }
            _ => {}
        }
    }

    /// Drops the session under `key` (destroyed, moved, or changed elsewhere).
    pub(crate) fn drop_key(&self, key: &StoreKey) {
        self.drop_prefix(prefix(key));
    }

    fn drop_prefix(&self, p: u64) {
        let mut shard = self.shard(p);
        shard.seq += 1;
        shard.entries.remove(&p);
    }

    /// Drops the sessions whose expiry is at or before `t` (swept, here or elsewhere).
    pub(crate) fn drop_expired(&self, t: u64) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            shard.seq += 1;
            shard.entries.retain(|_, e| e.expires > t);
        }
    }

    /// Drops everything.
    pub(crate) fn clear(&self) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            shard.seq += 1;
            shard.entries.clear();
        }
    }

    /// The listening connection is up (after `LISTEN` has run) or down.
    pub(crate) fn set_listening(&self, up: bool) {
        // Down first, then empty, then a new epoch: a load that began before cannot file.
        self.listening.store(false, Ordering::Release);
        self.clear();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if up {
            self.connections.fetch_add(1, Ordering::Relaxed);
            self.listening.store(true, Ordering::Release);
        }
    }

    /// Handles one announcement: `<instance>` then words, all numbers in hex: a key prefix (that
    /// session changed), `<t` (sessions expiring at or before `t` were swept) or `*` (any
    /// session may have changed). This instance's own are skipped; a word it cannot read
    /// empties the cache, to be safe.
    pub(crate) fn announced(&self, payload: &str) {
        let mut words = payload.split(' ');
        let from = words.next().and_then(|w| u64::from_str_radix(w, 16).ok());
        if from == Some(self.instance) {
            return;
        }
        if from.is_none() {
            self.clear();
            return;
        }
        for word in words {
            let swept = word.strip_prefix('<').map(|t| u64::from_str_radix(t, 16));
            match (swept, u64::from_str_radix(word, 16)) {
                (Some(Ok(t)), _) => self.drop_expired(t),
                (None, Ok(p)) => self.drop_prefix(p),
                _ => self.clear(), // `*`, or unreadable
            }
            self.invalidations.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            listening: self.listening.load(Ordering::Acquire),
            connections: self.connections.load(Ordering::Relaxed),
            holding: self.holding(),
            claims: self.claims.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An announcement of changes to `keys` by `instance`, as earlier builds made one on
    /// every change.
    fn announcement<'a>(instance: u64, keys: impl Iterator<Item = &'a StoreKey>) -> String {
        let mut payload = format!("{instance:016x}");
        for key in keys {
            payload += &format!(" {:016x}", prefix(key));
        }
        payload
    }

    /// The announcement that the sessions expiring at or before `t` were swept, likewise.
    fn announcement_swept(instance: u64, t: u64) -> String {
        format!("{instance:016x} <{t:x}")
    }

    fn key(n: u8) -> StoreKey {
        StoreKey([n; 32])
    }

    fn record(v: &[u8]) -> SessionRecord {
        SessionRecord {
            created: 1,
            expires: 100,
            data: vec![("a".into(), v.to_vec())],
        }
    }

    fn in_a_minute() -> Instant {
        Instant::now() + std::time::Duration::from_secs(60)
    }

    /// A cache that listens and holds the claim.
    fn listening() -> Cache {
        let cache = Cache::new(100, 7);
        cache.set_listening(true);
        cache.claimed(in_a_minute());
        cache
    }

    /// A wall clock the test moves: milliseconds since the epoch.
    static WALL: AtomicU64 = AtomicU64::new(1_800_000_000_000);

    #[test]
    fn a_holder_that_was_suspended_past_its_lease_stops_serving_though_instant_did_not_move() {
        let mut cache = Cache::new(100, 7);
        cache.wall = || WALL.load(Ordering::SeqCst);
        cache.set_listening(true);
        cache.claimed(in_a_minute());
        let ticket = cache.ticket(&key(1)).unwrap();
        cache.fill(ticket, &key(1), &record(b"x"));
        assert!(cache.get(&key(1), 10).is_some());

        // Suspended for two minutes: `Instant` says the lease runs for a minute more.
        WALL.fetch_add(120_000, Ordering::SeqCst);
        assert!(cache.get(&key(1), 10).is_none());
        assert!(!cache.stats().holding);
        // Renewed after it resumed (the claim never lapsed in the database): it serves again.
        cache.renewed(in_a_minute());
        assert!(cache.get(&key(1), 10).is_some());
    }

    #[test]
    fn a_cache_serves_only_while_its_claim_lasts_and_starts_empty_on_a_new_one() {
        let cache = listening();
        let ticket = cache.ticket(&key(1)).unwrap();
        cache.fill(ticket, &key(1), &record(b"x"));
        assert!(cache.get(&key(1), 10).is_some());

        // The lease runs out: nothing is served, nothing filed; a renewal serves it again.
        cache.renewed(Instant::now());
        assert!(cache.get(&key(1), 10).is_none());
        assert!(cache.ticket(&key(1)).is_none());
        assert!(!cache.stats().holding);
        cache.renewed(in_a_minute());
        assert!(cache.get(&key(1), 10).is_some());

        // A load that began under the last claim files nothing under the next.
        let ticket = cache.ticket(&key(2)).unwrap();
        cache.unclaimed();
        assert!(cache.get(&key(1), 10).is_none());
        cache.claimed(in_a_minute());
        cache.fill(ticket, &key(2), &record(b"old"));
        assert!(cache.get(&key(1), 10).is_none(), "emptied");
        assert!(cache.get(&key(2), 10).is_none(), "a load from before");
        assert_eq!(cache.stats().claims, 2);
    }

    #[test]
    fn a_load_that_raced_a_change_files_nothing() {
        let cache = listening();
        let ticket = cache.ticket(&key(1)).unwrap();
        cache.announced(&announcement(8, [key(1)].iter()));
        cache.fill(ticket, &key(1), &record(b"old"));
        assert_eq!(cache.get(&key(1), 10), None);

        let ticket = cache.ticket(&key(1)).unwrap();
        cache.record_update(&key(1), None);
        cache.fill(ticket, &key(1), &record(b"old"));
        assert_eq!(cache.get(&key(1), 10), None);

        let ticket = cache.ticket(&key(1)).unwrap();
        cache.fill(ticket, &key(1), &record(b"now"));
        assert_eq!(cache.get(&key(1), 10), Some(record(b"now")));
    }

    #[test]
    fn a_load_that_raced_a_reconnection_files_nothing() {
        let cache = listening();
        let ticket = cache.ticket(&key(1)).unwrap();
        cache.set_listening(false);
        cache.set_listening(true);
        cache.fill(ticket, &key(1), &record(b"old"));
        assert_eq!(cache.get(&key(1), 10), None);

        cache.set_listening(false);
        assert!(cache.ticket(&key(1)).is_none(), "no filling while deaf");
    }

    #[test]
    fn announcements_drop_what_they_name_and_skip_their_own() {
        let cache = listening();
        for n in 1..=4 {
            let ticket = cache.ticket(&key(n)).unwrap();
            let expires = 100 + u64::from(n);
            cache.fill(
                ticket,
                &key(n),
                &SessionRecord {
                    expires,
                    ..record(b"x")
                },
            );
        }
        cache.announced(&announcement(7, [key(1)].iter()));
        assert!(cache.get(&key(1), 10).is_some(), "its own announcement");
        cache.announced(&announcement(8, [key(1)].iter()));
        assert!(cache.get(&key(1), 10).is_none());
        cache.announced(&announcement_swept(8, 102));
        assert!(cache.get(&key(2), 10).is_none());
        assert!(cache.get(&key(3), 10).is_some());
        cache.announced("0000000000000008 *");
        assert!(cache.get(&key(3), 10).is_none() && cache.get(&key(4), 10).is_none());

        let ticket = cache.ticket(&key(5)).unwrap();
        cache.fill(ticket, &key(5), &record(b"x"));
        cache.announced("garbage");
        assert!(
            cache.get(&key(5), 10).is_none(),
            "unreadable: everything goes"
        );
    }

    #[test]
    fn the_cache_holds_at_most_its_capacity() {
        let cache = Cache::new(SHARDS, 7);
        cache.set_listening(true);
        cache.claimed(in_a_minute());
        // 256 sessions, room for one per shard.
        for n in 0..=255u8 {
            let mut k = key(0);
            k.0[7] = n;
            let ticket = cache.ticket(&k).unwrap();
            cache.fill(ticket, &k, &record(b"x"));
        }
        let held: usize = cache
            .shards
            .iter()
            .map(|s| s.lock().unwrap().entries.len())
            .sum();
        assert!(held <= SHARDS, "{held}");
    }
}
