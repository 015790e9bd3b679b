//! A request's session: what the handler loaded, read and changed, kept in the request until
//! the response flushes it. Pure bookkeeping: no I/O, no clock.

use std::sync::{Mutex, MutexGuard};

use serde::de::DeserializeOwned;

use crate::cookie::Verified;
use crate::error::SessionError;
use crate::id::{SessionId, StoreKey};
use crate::lifetime::Lifetime;
use crate::store::{ChangeSet, SessionRecord};
use crate::value::decode;

/// Where the request's session came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Made in this request. `stale_cookie` is set when the request carried a session cookie
    /// that led nowhere (invalid, expired or its session gone): the response then removes it.
    New { stale_cookie: bool },
    /// Loaded from the store.
    Stored {
        key: StoreKey,
        issued: u64,
        current_key: bool,
    },
}

/// A request's session: what was loaded and what the handler changed.
pub(crate) struct Working {
    /// Drawn when first needed: a request that only reads a new session costs no CSPRNG call.
    pub id: Option<SessionId>,
    pub origin: Origin,
    pub created: u64,
    pub data: SessionData,
    /// The id this session had in the store before `cycle_id`, if it was cycled.
    pub cycled_from: Option<StoreKey>,
    /// A stored session destroyed in this request.
    pub destroyed: Option<StoreKey>,
    /// When the request loaded it (Unix seconds): its flush writes as of then too, so a
    /// request reads the clock once.
    pub at: u64,
    pub size: usize,
    /// The session's lifetime, as its cookie stated it or the handler set it.
    pub lifetime: Lifetime,
    /// Whether the handler set the lifetime: the response then re-issues the cookie.
    pub lifetime_changed: bool,
}

/// The per-request slot, in `Request::local_cache` under this private type.
#[derive(Default)]
pub(crate) struct RequestSession {
    working: Mutex<Option<Working>>,
}

impl RequestSession {
    pub fn lock(&self) -> MutexGuard<'_, Option<Working>> {
        self.working.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A session's keys and encoded values, and which of them this request changed. Sessions
/// hold a handful of keys: a vector searched in order beats hashing every key of every
/// request. The vector is the one the store returned (no copy), and changes are tracked by
/// position in a bit set, not by copying keys.
#[derive(Default)]
pub(crate) struct SessionData {
    entries: Vec<(String, Vec<u8>)>,
    /// Bit `i` set: `entries[i]` was set in this request.
    changed: Bits,
    /// Keys removed in this request (and not set again since).
    removed: Vec<String>,
}

/// A bit set whose first 64 bits need no allocation.
#[derive(Default)]
struct Bits {
    low: u64,
    high: Vec<u64>,
}

impl Bits {
    fn is_empty(&self) -> bool {
        self.low == 0 && self.high.iter().all(|&w| w == 0)
    }

    fn get(&self, i: usize) -> bool {
        match i {
            0..=63 => (self.low >> i) & 1 == 1,
            _ => self
                .high
                .get(i / 64 - 1)
                .is_some_and(|w| (w >> (i % 64)) & 1 == 1),
        }
    }

    fn put(&mut self, i: usize, on: bool) {
        let word = match i {
            0..=63 => &mut self.low,
            _ => {
                let at = i / 64 - 1;
                if at >= self.high.len() {
                    if !on {
                        return;
                    }
                    self.high.resize(at + 1, 0);
                }
                &mut self.high[at]
            }
        };
        match on {
            true => *word |= 1 << (i % 64),
            false => *word &= !(1 << (i % 64)),
        }
    }
}

impl SessionData {
    fn loaded(entries: Vec<(String, Vec<u8>)>) -> SessionData {
        SessionData {
            entries,
            ..SessionData::default()
        }
    }

    pub fn get(&self, key: &str) -> Option<&Vec<u8>> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.entries.iter().map(|(k, _)| k)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sets `key` and marks it changed.
    fn insert(&mut self, key: &str, value: &[u8]) {
        let at = match self.entries.iter().position(|(k, _)| k == key) {
            Some(at) => {
                // The old value's buffer takes the new one: no allocation unless it grows.
                let old = &mut self.entries[at].1;
                old.clear();
                old.extend_from_slice(value);
                at
            }
            None => {
                self.removed.retain(|k| k != key);
                self.entries.push((key.to_string(), value.to_vec()));
                self.entries.len() - 1
            }
        };
        self.changed.put(at, true);
    }

    /// Removes `key`, if set, and remembers the removal.
    fn remove(&mut self, key: &str) -> Option<Vec<u8>> {
        let at = self.entries.iter().position(|(k, _)| k == key)?;
        // `swap_remove` moves the last entry to `at`: its bit moves with it.
        let last = self.entries.len() - 1;
        self.changed.put(at, self.changed.get(last));
        self.changed.put(last, false);
        let (key, value) = self.entries.swap_remove(at);
        self.removed.push(key);
        Some(value)
    }

    fn size(&self) -> usize {
        self.entries.iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    /// Moves this request's changes out, values and all; the data is spent afterwards, unless
    /// nothing changed.
    fn take_changes(&mut self) -> ChangeSet {
        if self.changed.is_empty() && self.removed.is_empty() {
            return ChangeSet::new();
        }
        let bits = std::mem::take(&mut self.changed);
        let mut at = 0;
        // Same layout in and out (`Option<Vec>` costs no space), so this collects in place:
        // no allocation for the usual request.
        let mut changes: Vec<(String, Option<Vec<u8>>)> = std::mem::take(&mut self.entries)
            .into_iter()
            .filter(|_| {
                at += 1;
                bits.get(at - 1)
            })
            .map(|(key, value)| (key, Some(value)))
            .collect();
        // A removed key is not among the entries: every key occurs once.
        changes.extend(self.removed.drain(..).map(|key| (key, None)));
        ChangeSet::from_distinct(changes)
    }
}

impl Working {
    pub fn new(stale_cookie: bool, now: u64) -> Working {
        Working {
            id: None,
            origin: Origin::New { stale_cookie },
            created: now,
            data: SessionData::default(),
            cycled_from: None,
            destroyed: None,
            size: 0,
            at: now,
            lifetime: Lifetime::Configured,
            lifetime_changed: false,
        }
    }

    pub fn stored(verified: Verified, key: StoreKey, record: SessionRecord, now: u64) -> Working {
        let data = SessionData::loaded(record.data);
        Working {
            id: Some(verified.id),
            origin: Origin::Stored {
                key,
                issued: verified.issued,
                current_key: verified.current_key,
            },
            created: record.created,
            size: data.size(),
            data,
            cycled_from: None,
            destroyed: None,
            at: now,
            lifetime: Lifetime::from_cookie(verified.life),
            lifetime_changed: false,
        }
    }

    /// The session's id, drawn now if it has none yet.
    pub fn id(&mut self) -> SessionId {
        *self.id.get_or_insert_with(SessionId::generate)
    }

    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        self.data.get(key).map(|b| decode(key, b)).transpose()
    }

    pub fn set_encoded(
        &mut self,
        key: &str,
        bytes: &[u8],
        limit: usize,
    ) -> Result<(), SessionError> {
        let old = self.data.get(key).map_or(0, |v| key.len() + v.len());
        let size = self.size - old + key.len() + bytes.len();
        if size > limit {
            return Err(SessionError::TooLarge { size, limit });
        }
        self.size = size;
        self.data.insert(key, bytes);
        Ok(())
    }

    pub fn remove(&mut self, key: &str) {
        if let Some(v) = self.data.remove(key) {
            self.size -= key.len() + v.len();
        }
    }

    /// Moves this request's changes out, values and all (the data is spent afterwards).
    pub fn take_changes(&mut self) -> ChangeSet {
        self.data.take_changes()
    }

    /// The store key of the session as it is stored now, if it is.
    pub fn stored_key(&self) -> Option<StoreKey> {
        match self.origin {
            Origin::Stored { key, .. } => Some(key),
            Origin::New { .. } => None,
        }
    }

    pub fn cycle_id(&mut self) {
        if let (None, Some(key)) = (self.cycled_from, self.stored_key()) {
            self.cycled_from = Some(key);
        }
        self.id = Some(SessionId::generate());
    }

    pub fn set_lifetime(&mut self, lifetime: Lifetime) {
        self.lifetime_changed |= lifetime != self.lifetime;
        self.lifetime = lifetime;
    }

    pub fn destroy(&mut self) {
        let now = self.at;
        let destroyed = self.cycled_from.or(self.stored_key()).or(self.destroyed);
        let had_cookie =
            destroyed.is_some() || matches!(self.origin, Origin::New { stale_cookie: true });
        *self = Working::new(had_cookie, now);
        self.destroyed = destroyed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session loaded from the store with `record`.
    fn stored(record: SessionRecord) -> Working {
        let verified = Verified {
            id: SessionId::from_bytes([1; 32]),
            issued: 0,
            current_key: true,
            life: None,
        };
        Working::stored(verified, StoreKey([0; 32]), record, 0)
    }

    /// The request's changes, in key order, as owned pairs.
    fn changes_of(w: &mut Working) -> Vec<(String, Option<Vec<u8>>)> {
        w.take_changes()
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(<[u8]>::to_vec)))
            .collect()
    }

    #[test]
    fn changes_hold_each_key_once_with_its_last_state() {
        let mut w = Working::new(false, 0);
        w.set_encoded("a", &[1], 100).unwrap();
        w.set_encoded("b", &[2], 100).unwrap();
        w.remove("a");
        w.set_encoded("b", &[3], 100).unwrap();
        w.remove("never-set");
        let changes = changes_of(&mut w);
        assert_eq!(
            changes,
            vec![("a".to_string(), None), ("b".to_string(), Some(vec![3]))]
        );
    }

    #[test]
    fn a_session_only_read_has_no_changes_and_keeps_its_data() {
        let data = vec![("a".to_string(), vec![1]), ("b".to_string(), vec![2, 2])];
        let mut w = stored(SessionRecord {
            created: 0,
            expires: 0,
            data: data.clone(),
        });
        assert_eq!(w.get::<u8>("a").unwrap(), Some(1));
        assert!(changes_of(&mut w).is_empty());
        assert_eq!(w.data.entries, data);
    }

    #[test]
    fn only_the_keys_a_request_touched_are_changes_of_a_stored_session() {
        let record = SessionRecord {
            created: 0,
            expires: 0,
            data: vec![
                ("a".into(), vec![1]),
                ("b".into(), vec![2]),
                ("c".into(), vec![3]),
            ],
        };
        let mut w = stored(record);
        w.remove("a");
        w.set_encoded("a", &[9], 100).unwrap();
        w.set_encoded("b", &[8], 100).unwrap();
        w.remove("b");
        assert_eq!(
            w.get::<u8>("c").unwrap(),
            Some(3),
            "c is read, never written"
        );
        let changes = changes_of(&mut w);
        assert_eq!(
            changes,
            vec![("a".to_string(), Some(vec![9])), ("b".to_string(), None)]
        );
    }

    #[test]
    fn changes_are_tracked_across_removals_beyond_64_keys() {
        let record = SessionRecord {
            created: 0,
            expires: 0,
            data: (0..150).map(|i| (format!("k{i}"), vec![i as u8])).collect(),
        };
        let mut w = stored(record);
        // Set keys on both sides of bit 64 and 128, then remove keys so that changed and
        // unchanged entries move into the removed ones' places.
        for i in [3, 63, 64, 100, 128, 149] {
            w.set_encoded(&format!("k{i}"), &[200], 10_000).unwrap();
        }
        for i in [0, 64, 5, 70] {
            w.remove(&format!("k{i}"));
        }
        let mut expected: Vec<(String, Option<Vec<u8>>)> = [3, 63, 100, 128, 149]
            .iter()
            .map(|i| (format!("k{i}"), Some(vec![200])))
            .chain([0, 5, 64, 70].iter().map(|i| (format!("k{i}"), None)))
            .collect();
        expected.sort();
        let changes = changes_of(&mut w);
        assert_eq!(changes, expected);
    }

    #[test]
    fn changes_match_a_model_over_random_edits_of_stored_sessions() {
        let mut next = crate::xorshift(0x9e37_79b9_7f4a_7c15);
        for seed in 0..500 {
            let mut model: std::collections::HashMap<String, Vec<u8>> = (0..next(100))
                .map(|i| (format!("k{}", next(150)), vec![i as u8]))
                .collect();
            let record = SessionRecord {
                created: 0,
                expires: 0,
                data: model.clone().into_iter().collect(),
            };
            let mut w = stored(record);
            let mut touched = std::collections::BTreeSet::new();
            for op in 0..next(200) {
                let key = format!("k{}", next(150));
                if next(3) == 0 {
                    if model.remove(&key).is_some() {
                        touched.insert(key.clone());
                    }
                    w.remove(&key);
                } else {
                    let value = vec![(op % 251) as u8, 7];
                    model.insert(key.clone(), value.clone());
                    touched.insert(key.clone());
                    w.set_encoded(&key, &value, usize::MAX).unwrap();
                }
            }
            let expected: Vec<(String, Option<Vec<u8>>)> = touched
                .into_iter()
                .map(|k| {
                    let v = model.get(&k).cloned();
                    (k, v)
                })
                .collect();
            assert_eq!(changes_of(&mut w), expected, "seed {seed}");
        }
    }

    #[test]
    fn a_set_past_the_size_limit_changes_nothing() {
        let mut w = Working::new(false, 0);
        w.set_encoded("a", &[0; 10], 16).unwrap();
        assert!(matches!(
            w.set_encoded("b", &[0; 10], 16),
            Err(SessionError::TooLarge {
                size: 22,
                limit: 16
            })
        ));
        assert_eq!(w.size, 11);
        assert!(w.data.get("b").is_none());
        assert_eq!(w.take_changes().len(), 1);
    }
}
