//! The session manager: the settings, the store and the clock a Rocket instance's sessions
//! share; loading a request's session; and koyo's `session-manager-*` operations on sessions
//! reached by id.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::breaker::{Breaker, FIRST_PROBE, LAST_PROBE};
use crate::clock::Clock;
use crate::config::SessionConfig;
use crate::cookie::{CookieCodec, Verified};
use crate::error::{SessionError, StoreError};
use crate::id::{SessionId, StoreKey};
use crate::in_flight::InFlight;
use crate::store::{SessionRecord, SessionStore};
use crate::value::Encoded;
use crate::working::Working;

/// Longest cookie value looked at; longer ones are refused undecoded (RFC 6265 asks browsers
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
    clock: Arc<dyn Clock>,
    /// Requests that loaded a session and have not flushed it yet.
    in_flight: InFlight,
    /// Open while the store is unavailable: requests then fail at once.
    breaker: Breaker,
    /// Why the store could not persist at shutdown, if it could not.
    shutdown_failure: std::sync::Mutex<Option<StoreError>>,
}

/// A request's session once its cookie is checked.
pub(crate) enum Loading {
    /// Known without awaiting anything.
    Ready(Working),
    /// Known after awaiting the store.
    Store(PendingLoad),
}

/// A verified cookie whose session is still to be loaded from the store.
pub(crate) struct PendingLoad {
    verified: Verified,
    key: StoreKey,
    now: u64,
}

impl SessionManager {
    pub(crate) fn new(
        config: SessionConfig,
        store: Arc<dyn SessionStore>,
        clock: Arc<dyn Clock>,
    ) -> SessionManager {
        let codec = CookieCodec::new(
            &config.cookie_name,
            &config.secret_key,
            &config.previous_secret_keys,
            config.shelf_life,
        )
        .with_longest(config.longest_lifetime);
        SessionManager {
            inner: Arc::new(Inner {
                config,
                codec,
                store,
                clock,
                in_flight: InFlight::default(),
                breaker: Breaker::default(),
                shutdown_failure: Default::default(),
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

    /// The store as its own type, to reach what only that store offers (say
    /// [`PostgresStore::begin_edit_by_hand`](crate::store::PostgresStore::begin_edit_by_hand));
    /// `None` when the store is of another type.
    pub fn store_as<S: SessionStore>(&self) -> Option<&S> {
        let store: &dyn std::any::Any = &*self.inner.store;
        store.downcast_ref::<S>()
    }

    /// The current time by the manager's clock, in Unix seconds.
    pub fn now(&self) -> u64 {
        self.inner.clock.now()
    }

    pub(crate) fn codec(&self) -> &CookieCodec {
        &self.inner.codec
    }

    /// The session id a cookie value carries, if the value verifies now.
    pub(crate) fn verify(&self, value: Option<&str>, now: u64) -> Option<Verified> {
        let value = value.filter(|v| v.len() <= MAX_COOKIE_VALUE)?;
        self.inner.codec.verify(value.as_bytes(), now).ok()
    }

    /// Starts loading the session a request's cookie names, or starts a new one. A cookie that
    /// does not verify costs no store call (and the response removes it, however long it is);
    /// a verified one whose session is gone is never adopted. `cookie` is the jar's value;
    /// when it does not verify, the first of `others` (every value the request sent under the
    /// cookie's name: a browser may send two) that does is used instead. The result is ready
    /// at once when the store answers [`load_now`](SessionStore::load_now); otherwise
    /// [`finish_load`](Self::finish_load) awaits the store.
    pub(crate) fn start_load<'c>(
        &self,
        cookie: Option<&str>,
        mut others: impl Iterator<Item = &'c str>,
    ) -> Loading {
        let now = self.now();
        let verified = self
            .verify(cookie, now)
            .or_else(|| others.find_map(|value| self.verify(Some(value), now)));
        let Some(verified) = verified else {
            return Loading::Ready(Working::new(cookie.is_some(), now));
        };
        let key = verified.id.store_key();
        match self.store().load_now(&key, now) {
            // A session past its maximum lifetime is left to `finish_load` to destroy.
            Some(Ok(record)) if !self.is_past_max_lifetime(&record, now) => {
                Loading::Ready(self.adopt(verified, key, record, now))
            }
            _ => Loading::Store(PendingLoad { verified, key, now }),
        }
    }

    /// Runs a request's store calls, unless the store was found unavailable a moment ago:
    /// then the request fails at once, and a call that finds it unavailable starts the probe
    /// that notices its return.
    pub(crate) async fn guarded<T>(
        &self,
        calls: impl std::future::Future<Output = Result<T, SessionError>>,
    ) -> Result<T, SessionError> {
        if let Some(refused) = self.inner.breaker.refuse() {
            return Err(refused.into());
        }
        let result = calls.await;
        let store_result = match &result {
            Err(SessionError::Store(e)) => Err(e.clone()),
            _ => Ok(()),
        };
        if self.inner.breaker.after(&store_result) {
            rocket::warn!("session store: unavailable; requests fail at once until it answers");
            rocket::tokio::spawn(self.clone().probe());
        }
        result
    }

    /// Asks the store, pausing longer each time (up to a second), until it answers; then
    /// requests call it again. A load of a key no session has is the question.
    async fn probe(self) {
        let mut pause = FIRST_PROBE;
        loop {
            rocket::tokio::time::sleep(pause).await;
            match self.store().load(&StoreKey([0; 32]), self.now()).await {
                Err(e) if e.is_unavailable() => pause = (pause * 2).min(LAST_PROBE),
                _ => break,
            }
        }
        rocket::info!("session store: available again");
        self.inner.breaker.close();
    }

    /// Whether the store was found unavailable a moment ago (requests fail at once).
    pub(crate) fn store_is_down(&self) -> bool {
        self.inner.breaker.refuse().is_some()
    }

    /// The store call [`start_load`](Self::start_load) left to make.
    pub(crate) async fn finish_load(&self, load: PendingLoad) -> Result<Working, SessionError> {
        self.guarded(self.finish_loading(load)).await
    }

    async fn finish_loading(&self, load: PendingLoad) -> Result<Working, SessionError> {
        let PendingLoad { verified, key, now } = load;
        let record = self.store().load(&key, now).await?;
        if self.is_past_max_lifetime(&record, now) {
            self.store().destroy(&key).await?;
            return Ok(Working::new(true, now));
        }
        Ok(self.adopt(verified, key, record, now))
    }

    /// The request's session for what the store returned (within its maximum lifetime).
    fn adopt(
        &self,
        verified: Verified,
        key: StoreKey,
        record: Option<SessionRecord>,
        now: u64,
    ) -> Working {
        match record {
            Some(record) => Working::stored(verified, key, record, now),
            None => Working::new(true, now),
        }
    }

    fn is_past_max_lifetime(&self, record: &Option<SessionRecord>, now: u64) -> bool {
        let (Some(record), Some(max)) = (record, self.inner.config.max_lifetime) else {
            return false;
        };
        now.saturating_sub(record.created) >= max
    }

    /// Counts a request that loaded a session as started: shutdown waits for its flush.
    pub(crate) fn request_started(&self) {
        self.inner.in_flight.start();
    }

    /// Counts a request that loaded a session as finished. True when it finished after
    /// shutdown began: its changes came after the shutdown's persist, and the caller makes
    /// them durable with [`persist_late`](Self::persist_late).
    pub(crate) fn request_finished(&self) -> bool {
        self.inner.in_flight.finish()
    }

    /// Persists the store at shutdown; a failure is logged and kept for
    /// [`shutdown_failure`](Self::shutdown_failure).
    pub(crate) async fn persist_at_shutdown(&self) {
        if let Err(e) = self.store().persist().await {
            rocket::error!(
                "session store: sessions were not saved at shutdown: {e} (`main` can learn it \
                 from SessionManager::shutdown_failure)"
            );
            *self
                .inner
                .shutdown_failure
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(e);
        }
    }

    /// Persists the store for a request that outlived the shutdown's persist.
    pub(crate) async fn persist_late(&self) {
        self.persist_at_shutdown().await
    }

    /// Why the store could not persist at shutdown, if it could not: with the memory store, a
    /// final snapshot that could not be written, so that sessions acknowledged to clients are
    /// lost. The fairing logs it at error level; Rocket still ends as after any shutdown, so an
    /// app that must exit with an error then asks here:
    ///
    /// ```no_run
    /// use rocket_server_sessions::{SessionManager, Sessions};
    ///
    /// #[rocket::main]
    /// async fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     let rocket = rocket::build().attach(Sessions::fairing()).launch().await?;
    ///     if let Some(e) = rocket.state::<SessionManager>().and_then(|m| m.shutdown_failure()) {
    ///         return Err(e.into());
    ///     }
    ///     Ok(())
    /// }
    /// ```
    pub fn shutdown_failure(&self) -> Option<StoreError> {
        self.inner
            .shutdown_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Marks the start of shutdown and waits, at most `limit`, for requests in flight to end.
    pub(crate) async fn drain(&self, limit: std::time::Duration) {
        self.inner.in_flight.drain(limit).await
    }

    /// The session `id` as a request would hold it, and its expiry.
    async fn load_by_id(&self, id: &SessionId) -> Result<Option<(Working, u64)>, SessionError> {
        let now = self.now();
        let key = id.store_key();
        let record = self.store().load(&key, now).await?;
        if self.is_past_max_lifetime(&record, now) {
            return Ok(None);
        }
        let verified = Verified {
            id: *id,
            issued: now,
            current_key: true,
            life: None,
        };
        Ok(record.map(|record| {
            let expires = record.expires;
            (Working::stored(verified, key, record, now), expires)
        }))
    }

    /// Writes the changes made to `w` since [`load_by_id`](Self::load_by_id), keeping the
    /// session's expiry as it was (`expires`): a change by id is not activity of the session's
    /// user, and keeps a lifetime the session has of its own.
    async fn write_by_id(
        &self,
        id: &SessionId,
        (mut w, expires): (Working, u64),
    ) -> Result<(), SessionError> {
        let mut changes = w.take_changes();
        if changes.is_empty() {
            return Ok(());
        }
        let now = w.at;
        changes.set_ttl(Some(expires.saturating_sub(now)));
        match self.store().update(&id.store_key(), &changes, now).await? {
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
            Some((w, _)) => w.get(key),
            None => Ok(None),
        }
    }

    /// Sets `key` in the existing session `id` (koyo: `session-manager-set!`).
    /// [`SessionError::UnknownSession`] if there is no such live session. Like every change
    /// by id, it keeps the session's expiry as it was: it is not the user's activity.
    pub async fn set<T: Serialize>(
        &self,
        id: &SessionId,
        key: &str,
        value: T,
    ) -> Result<(), SessionError> {
        let (mut w, expires) = self
            .load_by_id(id)
            .await?
            .ok_or(SessionError::UnknownSession)?;
        let bytes = Encoded::new(&value)?;
        w.set_encoded(key, bytes.as_bytes(), self.inner.config.max_session_size)?;
        self.write_by_id(id, (w, expires)).await
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
        let (mut w, expires) = self
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
        self.write_by_id(id, (w, expires)).await?;
        Ok(new)
    }

    /// Removes `key` from session `id`; nothing happens if either is missing
    /// (koyo: `session-manager-remove!`).
    pub async fn remove(&self, id: &SessionId, key: &str) -> Result<(), SessionError> {
        match self.load_by_id(id).await? {
            Some((mut w, expires)) => {
                w.remove(key);
                self.write_by_id(id, (w, expires)).await
            }
            None => Ok(()),
        }
    }

    /// Deletes session `id` from the store. Its cookie then leads to a new, empty session.
    pub async fn destroy(&self, id: &SessionId) -> Result<(), SessionError> {
        Ok(self.store().destroy(&id.store_key()).await?)
    }

    /// Deletes every session whose `key` holds `value`, e.g. all sessions of one user
    /// ("log out everywhere"); returns how many were deleted. Values compare by their
    /// MessagePack encoding, so pass the same type the sessions were given. The memory store
    /// scans for it; PostgreSQL too, unless `key` is one of its `indexed_keys`, when it is an
    /// index lookup.
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
