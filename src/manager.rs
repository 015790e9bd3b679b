//! The session manager: loads a request's session, keeps its changes, and flushes them.
//!
//! The data path of a request is: the cookie is verified ([`CookieCodec`]) → its id's session
//! is loaded from the store (only when a handler asks for the [`Session`](crate::Session)) →
//! the handler's edits are buffered in [`Working`] → [`SessionManager::flush`] writes them in
//! one store call and says which cookie the response carries.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rocket::tokio::sync::Notify;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::clock::Clock;
use crate::config::SessionConfig;
use crate::cookie::{CookieCodec, Verified};
use crate::error::SessionError;
use crate::id::{SessionId, StoreKey};
use crate::in_flight::InFlight;
use crate::store::{ChangeSet, MemoryStore, SessionRecord, SessionStore, StoreHandle};

/// Longest cookie value looked at; longer ones are treated as absent (RFC 6265 asks browsers
/// for 4096 bytes per cookie, and ours are 96).
pub(crate) const MAX_COOKIE_VALUE: usize = 4096;

/// Creates the session manager's state and reaches sessions by explicit id, like koyo's
/// `session-manager-*` functions.
///
/// The [`Sessions`](crate::Sessions) fairing builds one at ignite and puts it in managed state,
/// so handlers, background jobs and other fairings can reach it with `&State<SessionManager>`
/// or `rocket.state::<SessionManager>()`. Cloning is cheap and clones share everything.
///
/// Unlike the [`Session`](crate::Session) guard, whose changes wait for the end of the request,
/// each call here goes to the store at once.
#[derive(Clone)]
pub struct SessionManager {
    inner: Arc<Inner>,
}

struct Inner {
    config: SessionConfig,
    codec: CookieCodec,
    store: Arc<dyn SessionStore>,
    /// The same store when it is the built-in memory store, for the request path's direct calls.
    memory: Option<Arc<MemoryStore>>,
    clock: Arc<dyn Clock>,
    /// Requests that loaded a session and have not flushed it yet.
    in_flight: InFlight,
    idle: Notify,
    shutting_down: AtomicBool,
}

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
    id: Option<SessionId>,
    pub origin: Origin,
    pub created: u64,
    pub data: SessionData,
    /// The id this session had in the store before `cycle_id`, if it was cycled.
    pub cycled_from: Option<StoreKey>,
    /// A stored session destroyed in this request.
    pub destroyed: Option<StoreKey>,
    /// When the request loaded it (Unix seconds): its flush writes as of then too, so a
    /// request reads the clock once.
    at: u64,
    pub size: usize,
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

/// A request's session once its cookie is checked.
pub(crate) enum Loading {
    /// Known without awaiting anything.
    Ready(Working),
    /// Known after a call to the store.
    Store(PendingLoad),
}

/// A verified cookie whose session is still to be loaded from the store.
pub(crate) struct PendingLoad {
    verified: Verified,
    key: StoreKey,
    now: u64,
}

/// What a flush writes, decided before any store call.
enum Plan {
    /// Nothing to write.
    Done(CookieAction),
    /// No handler loaded the session, and its cookie is due for a refresh: extend its life.
    Refresh(SessionId),
    /// Write a loaded session: delete the one destroyed in the request, if any, then `step`.
    Write {
        destroy: Option<StoreKey>,
        changes: ChangeSet,
        /// The session's id, if it has one yet.
        id: Option<SessionId>,
        step: Step,
    },
}

enum Step {
    Nothing(CookieAction),
    /// Move the stored session `old` to the id, applying the changes.
    Cycle {
        old: StoreKey,
    },
    Create {
        created: u64,
    },
    Update {
        key: StoreKey,
        refresh: bool,
    },
}

/// What the response does with the session cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CookieAction {
    Keep,
    Set(String),
    Remove,
}

/// A flush: done at once, or store calls still to make (what the response does with the
/// cookie, once they are made).
pub(crate) enum Flush<'a> {
    Done(Result<CookieAction, SessionError>),
    Pending(Pin<Box<dyn Future<Output = Result<CookieAction, SessionError>> + Send + 'a>>),
}

/// A value's MessagePack bytes, written on the stack while they fit (numbers, flags, short
/// strings), so setting a key allocates only when its stored value has to grow.
pub(crate) struct Encoded {
    inline: [u8; 64],
    len: usize,
    /// All the bytes, once they no longer fit `inline`.
    spilled: Vec<u8>,
}

impl Encoded {
    pub fn new<T: Serialize>(value: &T) -> Result<Encoded, SessionError> {
        let mut out = Encoded {
            inline: [0; 64],
            len: 0,
            spilled: Vec::new(),
        };
        rmp_serde::encode::write_named(&mut out, value)
            .map_err(|e| SessionError::Encode(e.to_string()))?;
        Ok(out)
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self.spilled.is_empty() {
            true => &self.inline[..self.len],
            false => &self.spilled,
        }
    }
}

impl std::io::Write for Encoded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.spilled.is_empty() {
            if let Some(room) = self.inline.get_mut(self.len..self.len + buf.len()) {
                room.copy_from_slice(buf);
                self.len += buf.len();
                return Ok(buf.len());
            }
            self.spilled.reserve(self.len + buf.len());
            self.spilled.extend_from_slice(&self.inline[..self.len]);
        }
        self.spilled.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(crate) fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, SessionError> {
    rmp_serde::from_slice(bytes).map_err(|e| {
        rocket::warn!("session: the stored value of `{key}` does not decode: {e}");
        SessionError::Decode {
            key: key.to_string(),
            reason: e.to_string(),
        }
    })
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
    /// nothing changed: then it stays whole (for the memory store to reuse its buffers).
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
    fn new(stale_cookie: bool, now: u64) -> Working {
        Working {
            id: None,
            origin: Origin::New { stale_cookie },
            created: now,
            data: SessionData::default(),
            cycled_from: None,
            destroyed: None,
            size: 0,
            at: now,
        }
    }

    fn stored(verified: Verified, key: StoreKey, record: SessionRecord, now: u64) -> Working {
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
    fn take_changes(&mut self) -> ChangeSet {
        self.data.take_changes()
    }

    /// The store key of the session as it is stored now, if it is.
    fn stored_key(&self) -> Option<StoreKey> {
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

    pub fn destroy(&mut self) {
        let now = self.at;
        let destroyed = self.cycled_from.or(self.stored_key()).or(self.destroyed);
        let had_cookie =
            destroyed.is_some() || matches!(self.origin, Origin::New { stale_cookie: true });
        *self = Working::new(had_cookie, now);
        self.destroyed = destroyed;
    }
}

impl SessionManager {
    pub(crate) fn new(
        config: SessionConfig,
        store: StoreHandle,
        clock: Arc<dyn Clock>,
    ) -> SessionManager {
        let codec = CookieCodec::new(
            &config.cookie_name,
            &config.secret_key,
            &config.previous_secret_keys,
            config.shelf_life,
        );
        SessionManager {
            inner: Arc::new(Inner {
                config,
                codec,
                store: store.any,
                memory: store.memory,
                clock,
                in_flight: InFlight::default(),
                idle: Notify::new(),
                shutting_down: AtomicBool::new(false),
            }),
        }
    }

    /// The settings this manager was built from.
    pub fn config(&self) -> &SessionConfig {
        &self.inner.config
    }

    /// The store sessions live in.
    pub fn store(&self) -> &dyn SessionStore {
        // Calls must go through `&dyn`: on the `Arc` itself they would resolve to the `Arc`
        // forwarding impl, one more boxed future per call.
        &*self.inner.store
    }

    /// The current time by the manager's clock, in Unix seconds.
    pub fn now(&self) -> u64 {
        self.inner.clock.now()
    }

    /// The session id a cookie value carries, if the value verifies now.
    pub(crate) fn verify(&self, value: Option<&str>, now: u64) -> Option<Verified> {
        let value = value.filter(|v| v.len() <= MAX_COOKIE_VALUE)?;
        self.inner.codec.verify(value.as_bytes(), now).ok()
    }

    /// Starts loading the session a request's cookie names, or starts a new one. A cookie that
    /// does not verify costs no store call; a verified one whose session is gone is never
    /// adopted. The result is ready at once unless a store call has to be awaited (any store
    /// but the built-in memory store): then [`finish_load`](Self::finish_load) makes it.
    pub(crate) fn start_load(&self, cookie: Option<&str>) -> Loading {
        let now = self.now();
        let cookie = cookie.filter(|v| v.len() <= MAX_COOKIE_VALUE);
        let Some(verified) = self.verify(cookie, now) else {
            return Loading::Ready(Working::new(cookie.is_some(), now));
        };
        let key = verified.id.store_key();
        let Some(memory) = &self.inner.memory else {
            return Loading::Store(PendingLoad { verified, key, now });
        };
        let record = memory.load_now(&key, now);
        Loading::Ready(
            self.adopt(verified, key, record, now)
                .unwrap_or_else(|key| {
                    memory.destroy_now(&key);
                    Working::new(true, now)
                }),
        )
    }

    /// The store call [`start_load`](Self::start_load) left to make.
    pub(crate) async fn finish_load(&self, load: PendingLoad) -> Result<Working, SessionError> {
        let PendingLoad { verified, key, now } = load;
        let record = self.store().load(&key, now).await?;
        match self.adopt(verified, key, record, now) {
            Ok(working) => Ok(working),
            Err(key) => {
                self.store().destroy(&key).await?;
                Ok(Working::new(true, now))
            }
        }
    }

    /// The request's session for what the store returned. `Err` is a stored session past its
    /// maximum lifetime, for the caller to destroy; the request then starts a new one.
    fn adopt(
        &self,
        verified: Verified,
        key: StoreKey,
        record: Option<SessionRecord>,
        now: u64,
    ) -> Result<Working, StoreKey> {
        match record {
            Some(record) if !self.past_max_lifetime(record.created, now) => {
                Ok(Working::stored(verified, key, record, now))
            }
            Some(_) => Err(key),
            None => Ok(Working::new(true, now)),
        }
    }

    fn past_max_lifetime(&self, created: u64, now: u64) -> bool {
        self.inner
            .config
            .max_lifetime
            .is_some_and(|max| now.saturating_sub(created) >= max)
    }

    fn refresh_due(&self, issued: u64, current_key: bool, now: u64) -> bool {
        !current_key || now.saturating_sub(issued) >= self.inner.config.refresh_interval
    }

    /// The session whose life a request that never loaded it extends: the cookie's, if it
    /// verifies and is due for a refresh. Most such requests (assets, routes without a
    /// session) carry a recent cookie; whether one is recent shows without verifying it, and
    /// a forged one gains nothing from being let be.
    fn refresh_for(&self, cookie: Option<&str>, now: u64) -> Option<SessionId> {
        let cookie = cookie?;
        if let Some(issued) = self.inner.codec.stated_issue(cookie.as_bytes()) {
            if !self.refresh_due(issued, true, now) {
                return None;
            }
        }
        let v = self.verify(Some(cookie), now)?;
        self.refresh_due(v.issued, v.current_key, now)
            .then_some(v.id)
    }

    fn signed(&self, id: &SessionId, now: u64) -> CookieAction {
        CookieAction::Set(self.inner.codec.sign(id, now))
    }

    /// Writes a request's session to the store and says what the response does with the
    /// cookie. `working` is `None` when no handler asked for the session: then only the
    /// lifetime of the cookie's session is extended, if a refresh is due. A loaded session is
    /// written as of the time it was loaded: the request's one reading of the clock.
    ///
    /// What to write is decided at once, as a compact [`Plan`]. A plan that needs no store
    /// call, or only an update of the built-in memory store, is carried out at once; any
    /// other is returned as a boxed future, so the response fairing's own future stays small
    /// (a large one would be copied into its box on every request, and a future holding the
    /// whole session would not fit the allocator's per-thread cache).
    pub(crate) fn flush(&self, working: Option<Working>, cookie: Option<&str>) -> Flush<'_> {
        let now = working.as_ref().map_or_else(|| self.now(), |w| w.at);
        match (
            self.plan(working, cookie, now),
            self.inner.memory.as_deref(),
        ) {
            (
                Plan::Done(action)
                | Plan::Write {
                    destroy: None,
                    step: Step::Nothing(action),
                    ..
                },
                _,
            ) => Flush::Done(Ok(action)),
            (
                Plan::Write {
                    destroy: None,
                    changes,
                    id,
                    step: Step::Update { key, refresh },
                },
                Some(memory),
            ) => {
                let updated = memory.update_now(&key, &changes, now);
                MemoryStore::recycle(changes);
                Flush::Done(
                    updated
                        .map(|updated| self.updated(updated, refresh, id, now))
                        .map_err(SessionError::from),
                )
            }
            (plan, _) => Flush::Pending(Box::pin(self.write(plan, now))),
        }
    }

    /// The cookie after an update of a stored session: removed if the session was gone,
    /// re-issued if a refresh was due.
    fn updated(
        &self,
        updated: bool,
        refresh: bool,
        id: Option<SessionId>,
        now: u64,
    ) -> CookieAction {
        match (updated, refresh, id) {
            // Destroyed or expired meanwhile: it stays that way.
            (false, _, _) => CookieAction::Remove,
            (true, true, Some(id)) => self.signed(&id, now),
            (true, _, _) => CookieAction::Keep,
        }
    }

    fn plan(&self, working: Option<Working>, cookie: Option<&str>, now: u64) -> Plan {
        let Some(mut w) = working else {
            return match self.refresh_for(cookie, now) {
                Some(id) => Plan::Refresh(id),
                None => Plan::Done(CookieAction::Keep),
            };
        };
        let nothing_stored = w.data.is_empty();
        let changes = w.take_changes();
        if self.inner.memory.is_some() {
            // What the request read and left unchanged: its buffers go to this thread's next
            // load from the memory store.
            MemoryStore::recycle_entries(std::mem::take(&mut w.data.entries));
        }
        let step = match (w.cycled_from, w.origin) {
            // A cycled stored session moves to its new id.
            (Some(old), _) => Step::Cycle { old },
            (None, Origin::New { stale_cookie }) if nothing_stored => {
                Step::Nothing(match stale_cookie {
                    true => CookieAction::Remove,
                    false => CookieAction::Keep,
                })
            }
            (None, Origin::New { .. }) => Step::Create { created: w.created },
            (
                None,
                Origin::Stored {
                    key,
                    issued,
                    current_key,
                },
            ) => {
                let refresh = self.refresh_due(issued, current_key, now);
                if changes.is_empty() && !refresh {
                    Step::Nothing(CookieAction::Keep)
                } else {
                    Step::Update { key, refresh }
                }
            }
        };
        Plan::Write {
            destroy: w.destroyed,
            changes,
            id: w.id,
            step,
        }
    }

    async fn write(&self, plan: Plan, now: u64) -> Result<CookieAction, SessionError> {
        let store = self.store();
        let (destroy, changes, mut id, step) = match plan {
            Plan::Done(action) => return Ok(action),
            Plan::Refresh(id) => {
                let updated = store
                    .update(&id.store_key(), &ChangeSet::new(), now)
                    .await?;
                return Ok(self.updated(updated, true, Some(id), now));
            }
            Plan::Write {
                destroy,
                changes,
                id,
                step,
            } => (destroy, changes, id, step),
        };
        if let Some(key) = destroy {
            store.destroy(&key).await?;
        }
        // A new id is drawn only when one is needed, and again on a collision.
        let mut id = move |fresh: bool| -> SessionId {
            if fresh {
                id = None;
            }
            *id.get_or_insert_with(SessionId::generate)
        };
        match step {
            Step::Nothing(action) => Ok(action),
            Step::Cycle { old } => {
                let mut fresh = false;
                for _ in 0..3 {
                    let new = id(fresh);
                    if store.cycle(&old, &new.store_key(), &changes, now).await? {
                        return Ok(self.signed(&new, now));
                    }
                    if store.load(&old, now).await?.is_none() {
                        return Ok(CookieAction::Remove);
                    }
                    fresh = true;
                }
                Err(crate::error::StoreError::Other("no free session id".into()).into())
            }
            Step::Create { created } => {
                let mut fresh = false;
                for _ in 0..3 {
                    let new = id(fresh);
                    if store
                        .create(&new.store_key(), created, &changes, now)
                        .await?
                    {
                        return Ok(self.signed(&new, now));
                    }
                    fresh = true;
                }
                Err(crate::error::StoreError::Other("no free session id".into()).into())
            }
            Step::Update { key, refresh } => {
                let updated = store.update(&key, &changes, now).await?;
                Ok(self.updated(updated, refresh, Some(id(false)), now))
            }
        }
    }

    pub(crate) fn request_started(&self) {
        self.inner.in_flight.start();
    }

    /// Counts a request that loaded a session as finished. True when it finished after
    /// shutdown began: its changes came after the shutdown snapshot, and the caller makes
    /// them durable with [`persist_late`](Self::persist_late).
    pub(crate) fn request_finished(&self) -> bool {
        self.inner.in_flight.finish();
        // Only `drain` waits, and only once `shutting_down` is set: before that, a request
        // ends without touching the `Notify` (a lock). Both sides use SeqCst, so either this
        // load sees the flag, or `drain`'s later check of `in_flight` sees this request end.
        if !self.inner.shutting_down.load(Ordering::SeqCst) {
            return false;
        }
        self.inner.idle.notify_waiters();
        true
    }

    /// Persists the store for a request that outlived the shutdown snapshot.
    pub(crate) async fn persist_late(&self) {
        if let Err(e) = self.store().persist().await {
            rocket::error!("session store: persisting after shutdown failed: {e}");
        }
    }

    /// Marks the start of shutdown and waits, at most `limit`, for requests in flight to end.
    pub(crate) async fn drain(&self, limit: std::time::Duration) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        let wait = async {
            loop {
                let idle = self.inner.idle.notified();
                if self.inner.in_flight.is_idle() {
                    return;
                }
                idle.await;
            }
        };
        let _ = rocket::tokio::time::timeout(limit, wait).await;
    }

    async fn load_by_id(&self, id: &SessionId) -> Result<Option<Working>, SessionError> {
        let now = self.now();
        let key = id.store_key();
        Ok(match self.store().load(&key, now).await? {
            Some(record) if !self.past_max_lifetime(record.created, now) => {
                let verified = Verified {
                    id: *id,
                    issued: now,
                    current_key: true,
                };
                Some(Working::stored(verified, key, record, now))
            }
            _ => None,
        })
    }

    async fn write_by_id(&self, id: &SessionId, mut w: Working) -> Result<(), SessionError> {
        let changes = w.take_changes();
        if changes.is_empty() {
            return Ok(());
        }
        match self
            .store()
            .update(&id.store_key(), &changes, self.now())
            .await?
        {
            true => Ok(()),
            false => Err(SessionError::UnknownSession),
        }
    }

    /// The value of `key` in session `id` (koyo: `session-manager-ref` without a default).
    /// A missing key, or a session that does not exist, is [`SessionError::MissingKey`].
    pub async fn get<T: DeserializeOwned>(
        &self,
        id: &SessionId,
        key: &str,
    ) -> Result<T, SessionError> {
        self.try_get(id, key)
            .await?
            .ok_or_else(|| SessionError::MissingKey(key.to_string()))
    }

    /// The value of `key` in session `id`, or `default` (koyo: `session-manager-ref` with one).
    pub async fn get_or<T: DeserializeOwned>(
        &self,
        id: &SessionId,
        key: &str,
        default: T,
    ) -> Result<T, SessionError> {
        Ok(self.try_get(id, key).await?.unwrap_or(default))
    }

    /// The value of `key` in session `id`, if both exist.
    pub async fn try_get<T: DeserializeOwned>(
        &self,
        id: &SessionId,
        key: &str,
    ) -> Result<Option<T>, SessionError> {
        match self.load_by_id(id).await? {
            Some(w) => w.get(key),
            None => Ok(None),
        }
    }

    /// Sets `key` in the existing session `id` (koyo: `session-manager-set!`).
    /// [`SessionError::UnknownSession`] if there is no such live session.
    pub async fn set<T: Serialize>(
        &self,
        id: &SessionId,
        key: &str,
        value: T,
    ) -> Result<(), SessionError> {
        let mut w = self
            .load_by_id(id)
            .await?
            .ok_or(SessionError::UnknownSession)?;
        let bytes = Encoded::new(&value)?;
        w.set_encoded(key, bytes.as_bytes(), self.inner.config.max_session_size)?;
        self.write_by_id(id, w).await
    }

    /// Replaces the value of `key` in session `id` by `f` of it and returns the new value
    /// (koyo: `session-manager-update!` without a default). The read and the write are two
    /// store calls: a concurrent change of the same key in between is overwritten.
    pub async fn update<T, F>(&self, id: &SessionId, key: &str, f: F) -> Result<T, SessionError>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(T) -> T,
    {
        self.update_with(id, key, None, f).await
    }

    /// Like [`update`](Self::update), starting from `default` when `key` is not set
    /// (koyo: `session-manager-update!` with a default).
    pub async fn update_or<T, F>(
        &self,
        id: &SessionId,
        key: &str,
        default: T,
        f: F,
    ) -> Result<T, SessionError>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(T) -> T,
    {
        self.update_with(id, key, Some(default), f).await
    }

    async fn update_with<T, F>(
        &self,
        id: &SessionId,
        key: &str,
        default: Option<T>,
        f: F,
    ) -> Result<T, SessionError>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(T) -> T,
    {
        let mut w = self
            .load_by_id(id)
            .await?
            .ok_or(SessionError::UnknownSession)?;
        let old = w
            .get(key)?
            .or(default)
            .ok_or_else(|| SessionError::MissingKey(key.to_string()))?;
        let new = f(old);
        let bytes = Encoded::new(&new)?;
        w.set_encoded(key, bytes.as_bytes(), self.inner.config.max_session_size)?;
        self.write_by_id(id, w).await?;
        Ok(new)
    }

    /// Removes `key` from session `id`; nothing happens if either is missing
    /// (koyo: `session-manager-remove!`).
    pub async fn remove(&self, id: &SessionId, key: &str) -> Result<(), SessionError> {
        let mut changes = ChangeSet::new();
        changes.remove(key);
        self.store()
            .update(&id.store_key(), &changes, self.now())
            .await?;
        Ok(())
    }

    /// Deletes session `id` from the store. Its cookie then leads to a new, empty session.
    pub async fn destroy(&self, id: &SessionId) -> Result<(), SessionError> {
        Ok(self.store().destroy(&id.store_key()).await?)
    }

    /// Deletes every session whose `key` holds `value`, e.g. all sessions of one user
    /// ("log out everywhere"); returns how many were deleted. Values compare by their
    /// MessagePack encoding, so pass the same type the sessions were given. Both stores scan
    /// for it (no index on values, which would slow every flush): an occasional operation,
    /// not one for every request.
    pub async fn destroy_where<T: Serialize>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<u64, SessionError> {
        let bytes = Encoded::new(value)?;
        Ok(self.store().destroy_where(key, bytes.as_bytes()).await?)
    }

    /// Deletes expired sessions now; returns how many. The fairing also does this every
    /// `sweep_interval`.
    pub async fn sweep(&self) -> Result<u64, SessionError> {
        Ok(self.store().sweep(self.now()).await?)
    }

    /// Makes the store durable now (the memory store writes its snapshot).
    pub async fn persist(&self) -> Result<(), SessionError> {
        Ok(self.store().persist().await?)
    }

    /// Lets go of what this instance holds in a shared store (see [`SessionStore::close`]);
    /// the fairing calls it at shutdown, after the last persist. The store still answers.
    pub async fn close(&self) -> Result<(), SessionError> {
        Ok(self.store().close().await?)
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
    fn values_encode_the_same_on_the_stack_and_spilled_to_the_heap() {
        for len in [0, 1, 50, 61, 62, 63, 64, 65, 200, 5000] {
            let value = "x".repeat(len);
            let encoded = Encoded::new(&value).unwrap();
            assert_eq!(
                encoded.as_bytes(),
                rmp_serde::to_vec_named(&value).unwrap(),
                "{len} characters"
            );
            assert_eq!(encoded.spilled.is_empty(), encoded.as_bytes().len() <= 64);
        }
        let nested = vec![vec![u64::MAX; 7]; 3];
        assert_eq!(
            Encoded::new(&nested).unwrap().as_bytes(),
            rmp_serde::to_vec_named(&nested).unwrap()
        );
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
            data: data.clone(),
        });
        assert_eq!(w.get::<u8>("a").unwrap(), Some(1));
        assert!(changes_of(&mut w).is_empty());
        // Left whole, for the memory store to reuse its buffers.
        assert_eq!(w.data.entries, data);
    }

    #[test]
    fn only_the_keys_a_request_touched_are_changes_of_a_stored_session() {
        let record = SessionRecord {
            created: 0,
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
