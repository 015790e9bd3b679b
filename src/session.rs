//! The `Session` request guard: koyo's session operations on the current request's session.

use rocket::http::Status;
use rocket::request::{FromRequest, Outcome, Request};
use rocket::{Ignite, Rocket, Sentinel};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::SessionError;
use crate::id::SessionId;
use crate::lifetime::Lifetime;
use crate::manager::{Loading, SessionManager};
use crate::value::{decode, Encoded};
use crate::working::{Origin, RequestSession, Working};

/// The current request's session.
///
/// Taking it as a guard loads the session (one store call when the request carries a valid
/// cookie, none otherwise); requests whose handlers do not take it cost no store call. Reads
/// see this request's own changes at once. Changes are buffered and written in one store call
/// when the response leaves, by the [`Sessions`](crate::Sessions) fairing, which then sets the
/// cookie. A new session that nothing was written to is not stored and gets no cookie.
///
/// | koyo | `Session` |
/// |---|---|
/// | `(session-ref k)` | [`get`](Self::get) |
/// | `(session-ref k d)` | [`get_or`](Self::get_or) |
/// | `(session-set! k v)` | [`set`](Self::set) |
/// | `(session-update! k p)` | [`update`](Self::update) |
/// | `(session-update! k p d)` | [`update_or`](Self::update_or) |
/// | `(session-remove! k)` | [`remove`](Self::remove) |
/// | `(current-session-id)` | [`id`](Self::id) |
///
/// ```
/// use rocket_server_sessions::{Session, SessionError};
///
/// #[rocket::get("/")]
/// fn index(session: Session<'_>) -> Result<String, SessionError> {
///     let n: u64 = session.get_or("count", 0)?;
///     session.set("count", n + 1)?;
///     Ok((n + 1).to_string())
/// }
/// ```
///
/// The guard fails with 503 when the store is unavailable, and with 500 when the fairing is
/// not attached (which [`Sentinel`] already refuses at launch).
pub struct Session<'r> {
    manager: &'r SessionManager,
    slot: &'r RequestSession,
}

#[rocket::async_trait]
impl<'r> FromRequest<'r> for Session<'r> {
    type Error = SessionError;

    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        let Some(manager) = req.rocket().state::<SessionManager>() else {
            rocket::error!("the Session guard needs the Sessions fairing attached");
            return Outcome::Error((Status::InternalServerError, SessionError::NotAttached));
        };
        let slot = req.local_cache(RequestSession::default);
        let pending = {
            let mut held = slot.lock();
            if held.is_some() {
                return Outcome::Success(Session { manager, slot });
            }
            let name = &manager.config().cookie_name;
            let cookie = req.cookies().get(name).map(|c| c.value());
            let others = crate::cookie::values_named(req.headers().get("Cookie"), name);
            match manager.start_load(cookie, others) {
                Loading::Ready(working) => {
                    *held = Some(working);
                    // Its changes are now in flight: shutdown waits for them.
                    manager.request_started();
                    return Outcome::Success(Session { manager, slot });
                }
                Loading::Store(pending) => pending,
            }
        };
        // Boxed: only loads the store could not answer at once get here, and the guard's own
        // future, which Rocket boxes for every request, stays small.
        match Box::pin(manager.finish_load(pending)).await {
            Ok(working) => {
                let mut held = slot.lock();
                // Another guard of this request may have loaded it meanwhile: keep that one.
                if held.is_none() {
                    *held = Some(working);
                    manager.request_started();
                }
            }
            Err(e) => {
                rocket::error!("session: cannot load the session: {e}");
                return Outcome::Error((e.status(), e));
            }
        }
        Outcome::Success(Session { manager, slot })
    }
}

impl Sentinel for Session<'_> {
    fn abort(rocket: &Rocket<Ignite>) -> bool {
        if rocket.state::<SessionManager>().is_none() {
            rocket::error!("a route takes a `Session`, but the `Sessions` fairing is not attached");
            return true;
        }
        false
    }
}

impl Session<'_> {
    pub(crate) fn manager(&self) -> &SessionManager {
        self.manager
    }

    /// The store key of the session as the request loaded it, if it was stored.
    pub(crate) fn stored_key(&self) -> Option<crate::id::StoreKey> {
        self.with(|w| w.cycled_from.or(w.stored_key()))
    }

    fn with<R>(&self, f: impl FnOnce(&mut Working) -> R) -> R {
        let mut guard = self.slot.lock();
        f(guard
            .as_mut()
            .expect("a Session exists only once its slot is loaded"))
    }

    /// This session's id (koyo: `current-session-id`). A new session gets its id when first
    /// asked (then it stays for the request), though it is stored, and sent, only once
    /// something is written to it.
    pub fn id(&self) -> SessionId {
        self.with(|w| w.id())
    }

    /// Whether the session was made in this request rather than loaded from the store.
    pub fn is_new(&self) -> bool {
        self.with(|w| matches!(w.origin, Origin::New { .. }))
    }

    /// The value of `key` (koyo: `session-ref` without a default).
    /// A missing key is [`SessionError::MissingKey`].
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<T, SessionError> {
        self.try_get(key)?
            .ok_or_else(|| SessionError::MissingKey(key.to_string()))
    }

    /// The value of `key`, or `default` when it is not set (koyo: `session-ref` with a default).
    pub fn get_or<T: DeserializeOwned>(&self, key: &str, default: T) -> Result<T, SessionError> {
        Ok(self.try_get(key)?.unwrap_or(default))
    }

    /// The value of `key`, if it is set.
    pub fn try_get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        self.with(|w| w.data.get(key).map(|b| decode(key, b)).transpose())
    }

    /// Whether `key` is set.
    pub fn contains(&self, key: &str) -> bool {
        self.with(|w| w.data.contains_key(key))
    }

    /// The keys that are set, in no particular order.
    pub fn keys(&self) -> Vec<String> {
        self.with(|w| w.data.keys().cloned().collect())
    }

    /// Stores `value` under `key` (koyo: `session-set!`). [`SessionError::TooLarge`] when the
    /// session would exceed `max_session_size`; the session is then unchanged.
    pub fn set<T: Serialize>(&self, key: &str, value: T) -> Result<(), SessionError> {
        let bytes = Encoded::new(&value)?;
        let limit = self.manager.config().max_session_size;
        self.with(|w| w.set_encoded(key, bytes.as_bytes(), limit))
    }

    /// Replaces the value of `key` by `f` of it and returns the new value (koyo:
    /// `session-update!` without a default). A missing key is [`SessionError::MissingKey`].
    pub fn update<T, F>(&self, key: &str, f: F) -> Result<T, SessionError>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(T) -> T,
    {
        let new = f(self.get(key)?);
        self.set(key, &new)?;
        Ok(new)
    }

    /// Like [`update`](Self::update), starting from `default` when `key` is not set (koyo:
    /// `session-update!` with a default).
    pub fn update_or<T, F>(&self, key: &str, default: T, f: F) -> Result<T, SessionError>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(T) -> T,
    {
        let new = f(self.get_or(key, default)?);
        self.set(key, &new)?;
        Ok(new)
    }

    /// Removes `key`; nothing happens if it is not set (koyo: `session-remove!`).
    pub fn remove(&self, key: &str) {
        self.with(|w| w.remove(key))
    }

    /// Gives the session a new id, keeping its data; the old id stops working when the
    /// response leaves. Call it on login and on any change of privilege, against session
    /// fixation.
    pub fn cycle_id(&self) {
        self.with(|w| w.cycle_id())
    }

    /// Gives this session its own lifetime, from this response on: a browser session, or a
    /// length of its own ("remember me") within the configured `shortest_lifetime` and
    /// `longest_lifetime` ([`SessionError::LifetimeOutOfBounds`] otherwise, and nothing
    /// changes). The response re-issues the cookie with the matching `Max-Age`, and the store
    /// keeps the session that long after each request. [`Lifetime::Configured`] goes back to
    /// the configuration's. It lasts until changed again, through `cycle_id` too; `destroy`
    /// ends it with the session.
    ///
    /// ```
    /// use std::time::Duration;
    /// use rocket::form::Form;
    /// use rocket_server_sessions::{Lifetime, Session, SessionError};
    ///
    /// #[derive(rocket::FromForm)]
    /// struct Login<'r> {
    ///     user: &'r str,
    ///     remember: bool,
    /// }
    ///
    /// #[rocket::post("/login", data = "<form>")]
    /// fn login(session: Session<'_>, form: Form<Login<'_>>) -> Result<(), SessionError> {
    ///     session.cycle_id();
    ///     session.set("user", form.user)?;
    ///     session.set_lifetime(match form.remember {
    ///         true => Lifetime::Idle(Duration::from_secs(30 * 86_400)),
    ///         false => Lifetime::BrowserSession,
    ///     })
    /// }
    /// ```
    pub fn set_lifetime(&self, lifetime: Lifetime) -> Result<(), SessionError> {
        lifetime
            .check(self.manager.config())
            .map_err(|(shortest, longest)| {
                let seconds = match lifetime {
                    Lifetime::Idle(d) => d.as_secs(),
                    _ => 0,
                };
                SessionError::LifetimeOutOfBounds {
                    seconds,
                    shortest,
                    longest,
                }
            })?;
        self.with(|w| w.set_lifetime(lifetime));
        Ok(())
    }

    /// This session's lifetime: as its cookie states it, or as this request set it.
    pub fn lifetime(&self) -> Lifetime {
        self.with(|w| w.lifetime)
    }

    /// Ends the session (logout): its data is deleted from the store when the response leaves
    /// and the response removes the cookie. The guard then holds a new, empty session, so
    /// whatever is set afterwards (a farewell message, say) starts that one.
    pub fn destroy(&self) {
        self.with(|w| w.destroy())
    }
}
