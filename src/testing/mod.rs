//! A store conformance suite and the test kit it runs on, for anyone writing a
//! [`SessionStore`]: behind the `testing` cargo feature.
//!
//! [`store_conformance!`](crate::store_conformance) writes one test per behaviour the crate
//! relies on, against the stores a function of yours makes. The crate runs this same suite,
//! unchanged, against its memory store, its PostgreSQL store with and without the cache, and
//! the [toy store](crate::store#a-complete-store) of the store docs; a store that passes it
//! keeps every promise the [`Session`] guard makes (per-key merging of
//! concurrent requests, no revival of a destroyed session, atomic id cycling, expiry).
//!
//! ```toml
//! [dev-dependencies]
//! rocket_server_sessions = { version = "0.1", features = ["testing"] }
//! ```
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use rocket_server_sessions::store::MemoryStore as MyStore;
//! use rocket_server_sessions::store_conformance;
//! use rocket_server_sessions::testing::TTL;
//!
//! /// An empty store whose sessions live `TTL` seconds after their last write.
//! async fn my_store() -> Arc<MyStore> {
//!     Arc::new(MyStore::new(TTL))
//! }
//!
//! store_conformance!(my_store);
//! ```
//!
//! The helpers the suite runs on ([`app`], [`client_with`], [`get_with`], [`post_with`]) are
//! public too, for an app's own tests over HTTP.

use std::sync::Arc;

use rocket::figment::Figment;
use rocket::http::{Cookie, Status};
use rocket::local::asynchronous::{Client, LocalResponse};
use rocket::request::{FromRequest, Outcome, Request};
use rocket::{get, post, routes, Build, Rocket, Route, State};

use crate::store::SessionStore;
use crate::{
    Lifetime, ManualClock, Session, SessionError, SessionHandle, SessionId, SessionManager,
    Sessions, StoreKey,
};

pub mod http;
pub mod store;

/// The `ttl` the suite's stores must be made with, in seconds.
pub const TTL: u64 = 100;

/// The time, in Unix seconds, at which the suite's clocks start.
pub const START: u64 = 1_700_000_000;

/// The secret key of the suite's app.
pub const KEY: &str = "0123456789abcdef0123456789abcdef-test-key";

/// Writes one `#[rocket::async_test]` per behaviour of the conformance suite, each on a store
/// `$make()` returns: an `async fn` giving an empty `Arc<impl SessionStore>` whose sessions
/// live [`TTL`](crate::testing::TTL) seconds after their last write. Name behaviours after the
/// `;` to write only those. See [`testing`](crate::testing).
#[macro_export]
macro_rules! store_conformance {
    ($make:path; $($name:ident),* $(,)?) => {
        $(
            #[::rocket::async_test]
            async fn $name() {
                $crate::testing::conformance::$name($make().await).await
            }
        )*
    };
    ($make:path) => {
        $crate::store_conformance!($make;
            create_then_load_returns_data_and_creation_time,
            create_refuses_a_key_with_a_live_session,
            update_applies_per_key_changes_and_keeps_other_keys,
            update_of_a_missing_session_changes_nothing,
            sessions_expire_ttl_after_their_last_write,
            update_extends_the_expiry,
            cycle_moves_the_session_and_keeps_its_creation_time,
            cycle_refuses_a_missing_session_or_a_taken_id,
            destroy_deletes_the_session,
            destroy_where_deletes_exactly_the_matching_sessions,
            sweep_deletes_only_expired_sessions,
            a_session_of_its_own_ttl_expires_that_long_after_its_last_write,
            list_where_lists_exactly_the_live_matching_sessions,
            first_visit_counts_one_and_the_cookie_brings_the_count_back,
            a_guard_and_the_handler_share_one_session,
            a_session_nothing_was_written_to_is_not_stored,
            concurrent_requests_changing_different_keys_both_persist,
            a_destroyed_session_cannot_be_replayed,
            cycled_id_keeps_data_and_kills_the_old_cookie,
            an_in_flight_request_cannot_revive_a_destroyed_session,
            a_signed_cookie_whose_session_is_gone_gets_a_new_id,
            an_idle_session_expires_after_the_store_ttl,
            the_manager_reaches_a_session_by_its_id,
            a_session_given_its_own_lifetime_lasts_that_long_in_cookie_and_store,
            a_browser_session_cookie_has_no_max_age_and_the_store_ttl_applies,
            a_user_lists_their_sessions_and_revokes_one,
        );
    };
}

/// Every behaviour of the suite, store-level and over HTTP, by the name
/// [`store_conformance!`](crate::store_conformance) gives its test.
pub mod conformance {
    pub use super::http::*;
    pub use super::store::*;
}

/// The store key of the session id made of bytes `n`.
pub fn key(n: u8) -> StoreKey {
    SessionId::from_bytes([n; 32]).store_key()
}

/// The suite's configuration: Rocket quiet in profile `test`, the session's secret key
/// [`KEY`], and a memory store without a file (which [`app`]'s callers may replace).
pub fn figment() -> Figment {
    Figment::from(rocket::Config::debug_default())
        .merge(("log_level", "off"))
        .merge(("session.secret_key", KEY))
        .merge(("session.store.kind", "memory"))
        .merge(("session.store.file_path", ""))
        .select("test")
}

/// An app's own request guard that uses the session (as a "current user" guard would): it
/// counts the visit.
pub struct Counted;

#[rocket::async_trait]
impl<'r> FromRequest<'r> for Counted {
    type Error = SessionError;

    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, SessionError> {
        let session = match Session::from_request(req).await {
            Outcome::Success(session) => session,
            Outcome::Error(e) => return Outcome::Error(e),
            Outcome::Forward(status) => return Outcome::Forward(status),
        };
        match session.update_or("count", 0u64, |n| n + 1) {
            Ok(_) => Outcome::Success(Counted),
            Err(e) => Outcome::Error((Status::InternalServerError, e)),
        }
    }
}

#[get("/count")]
fn count(session: Session<'_>) -> Result<String, SessionError> {
    Ok(session.update_or("count", 0u64, |n| n + 1)?.to_string())
}

/// The visit counted twice: by the `Counted` guard, then by the handler's own `Session`.
#[get("/count-twice")]
fn count_twice(_counted: Counted, session: Session<'_>) -> Result<String, SessionError> {
    Ok(session.update_or("count", 0u64, |n| n + 1)?.to_string())
}

#[get("/peek")]
fn peek(session: Session<'_>) -> Result<String, SessionError> {
    Ok(session.get_or("count", 0u64)?.to_string())
}

#[get("/get/<key>")]
fn get(session: Session<'_>, key: &str) -> Result<String, SessionError> {
    session.get::<String>(key)
}

#[post("/set/<key>/<value>")]
fn set(session: Session<'_>, key: &str, value: &str) -> Result<&'static str, SessionError> {
    session.set(key, value)?;
    Ok("ok")
}

/// Waits at the barrier between loading the session and changing it, so that two requests
/// can be made to overlap.
#[post("/set-together/<key>/<value>")]
async fn set_together(
    session: Session<'_>,
    barrier: &State<Arc<rocket::tokio::sync::Barrier>>,
    key: &str,
    value: &str,
) -> Result<&'static str, SessionError> {
    barrier.wait().await;
    session.set(key, value)?;
    Ok("ok")
}

/// Loads the session, then meets `/sync` twice before changing it.
#[post("/set-late/<key>/<value>")]
async fn set_late(
    session: Session<'_>,
    barrier: &State<Arc<rocket::tokio::sync::Barrier>>,
    key: &str,
    value: &str,
) -> Result<&'static str, SessionError> {
    barrier.wait().await;
    barrier.wait().await;
    session.set(key, value)?;
    Ok("ok")
}

#[post("/sync")]
async fn sync(barrier: &State<Arc<rocket::tokio::sync::Barrier>>) -> &'static str {
    barrier.wait().await;
    "ok"
}

#[get("/id")]
fn id(session: Session<'_>) -> String {
    session.id().to_string()
}

#[get("/untouched")]
fn untouched(session: Session<'_>) -> String {
    session.is_new().to_string()
}

#[post("/cycle")]
fn cycle(session: Session<'_>) -> String {
    session.cycle_id();
    session.id().to_string()
}

#[post("/destroy")]
fn destroy(session: Session<'_>) -> &'static str {
    session.destroy();
    "bye"
}

/// `configured`, `browser`, or a number of seconds.
#[post("/lifetime/<which>")]
fn lifetime(session: Session<'_>, which: &str) -> Result<&'static str, SessionError> {
    session.set_lifetime(match which {
        "configured" => Lifetime::Configured,
        "browser" => Lifetime::BrowserSession,
        secs => Lifetime::Idle(std::time::Duration::from_secs(secs.parse().unwrap_or(0))),
    })?;
    Ok("ok")
}

/// One line per session whose `key` is `value`: handle, created, last active, expires, and
/// `current` for the request's own.
#[get("/devices/<key>/<value>")]
async fn devices(session: Session<'_>, key: &str, value: &str) -> Result<String, SessionError> {
    let listed = session.list_where(key, &value).await?;
    Ok(listed
        .iter()
        .map(|s| {
            let current = if s.current { " current" } else { "" };
            format!(
                "{} {} {} {}{current}\n",
                s.handle, s.created, s.last_active, s.expires
            )
        })
        .collect())
}

#[post("/revoke/<key>/<value>/<handle>")]
async fn revoke(
    manager: &State<SessionManager>,
    key: &str,
    value: &str,
    handle: SessionHandle,
) -> Result<String, SessionError> {
    Ok(manager
        .revoke_where(key, &value, &handle)
        .await?
        .to_string())
}

/// The suite's routes: `GET /count` (counts the visit), `/count-twice` (by a guard and the
/// handler), `/peek`, `/get/<key>`, `/id`, `/untouched` (whether the session is new),
/// `/devices/<key>/<value>` (the sessions where `key` is `value`, a line each: handle,
/// created, last active, expires, `current`); `POST /set/<key>/<value>`,
/// `/set-together/<key>/<value>` (meets another request at the barrier after loading),
/// `/set-late/<key>/<value>` (meets `/sync` twice after loading), `/sync`, `/cycle`,
/// `/destroy`, `/lifetime/<configured|browser|seconds>`, `/revoke/<key>/<value>/<handle>`.
pub fn routes() -> Vec<Route> {
    routes![
        count,
        count_twice,
        peek,
        get,
        set,
        set_together,
        set_late,
        sync,
        id,
        untouched,
        cycle,
        destroy,
        lifetime,
        devices,
        revoke
    ]
}

/// The suite's app: [`routes()`], a barrier of two for the routes that meet, and `sessions`.
pub fn app(figment: Figment, sessions: Sessions) -> Rocket<Build> {
    app_with_barrier(
        figment,
        sessions,
        Arc::new(rocket::tokio::sync::Barrier::new(2)),
    )
}

/// [`app`] with the barrier its routes meet at given, so that two apps (two instances on one
/// store) can share one.
pub fn app_with_barrier(
    figment: Figment,
    sessions: Sessions,
    barrier: Arc<rocket::tokio::sync::Barrier>,
) -> Rocket<Build> {
    rocket::custom(figment)
        .attach(sessions)
        .manage(barrier)
        .mount("/", routes())
}

/// A client of [`app`] on `store`, with [`figment`] and a clock of its own starting at
/// [`START`].
pub async fn client_with(store: impl SessionStore) -> (Client, ManualClock) {
    let clock = ManualClock::new(START);
    let sessions = Sessions::fairing()
        .with_clock(clock.clone())
        .with_store(store);
    let client = Client::untracked(app(figment(), sessions))
        .await
        .expect("the test app launches");
    (client, clock)
}

/// A request's outcome.
pub struct Reply {
    /// The response's status.
    pub status: Status,
    /// The response's body.
    pub body: String,
    /// The value of the session cookie the response sets, if it sets one (`""` removes it).
    pub cookie: Option<String>,
    /// The response's `Set-Cookie` headers.
    pub set_cookies: Vec<String>,
    /// Every header of the response.
    pub headers: Vec<(String, String)>,
}

impl Reply {
    /// The values of header `name`, in any case.
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    async fn of(res: LocalResponse<'_>) -> Reply {
        let status = res.status();
        let set_cookies: Vec<String> = res.headers().get("Set-Cookie").map(String::from).collect();
        let cookie = set_cookies
            .iter()
            .filter_map(|h| Cookie::parse(h.clone()).ok())
            .find(|c| c.name() == "session")
            .map(|c| c.value().to_string());
        let headers = res
            .headers()
            .iter()
            .map(|h| (h.name().to_string(), h.value().to_string()))
            .collect();
        let body = res.into_string().await.unwrap_or_default();
        Reply {
            status,
            body,
            cookie,
            set_cookies,
            headers,
        }
    }
}

/// GET `uri` with `cookie` as the raw value of the cookie `session`, if any.
pub async fn get_with(client: &Client, uri: &str, cookie: Option<&str>) -> Reply {
    let mut req = client.get(uri.to_string());
    if let Some(c) = cookie {
        req = req.cookie(Cookie::new("session", c.to_string()));
    }
    Reply::of(req.dispatch().await).await
}

/// POST `uri` with `cookie` as the raw value of the cookie `session`, if any.
pub async fn post_with(client: &Client, uri: &str, cookie: Option<&str>) -> Reply {
    let mut req = client.post(uri.to_string());
    if let Some(c) = cookie {
        req = req.cookie(Cookie::new("session", c.to_string()));
    }
    Reply::of(req.dispatch().await).await
}

/// The id of the session `cookie` (a raw cookie value) leads to, as [`app`] sees it.
pub async fn id_of(client: &Client, cookie: &str) -> SessionId {
    get_with(client, "/id", Some(cookie))
        .await
        .body
        .parse()
        .expect("a session id")
}
