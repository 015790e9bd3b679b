//! Server-side sessions for Rocket 0.5, after the session module of koyo (Racket).
//!
//! The cookie carries only a signed session id; the data stays on the server, in memory
//! (durable in a snapshot file), in PostgreSQL, in Redis or in SQLite, chosen per configuration
//! profile.
//!
//! # Quick start
//!
//! 1. Add the dependency:
//!
//!    ```toml
//!    [dependencies]
//!    rocket_server_sessions = "0.1"
//!    ```
//!
//!    Features: `postgres` (default) is the PostgreSQL store, `redis` the Redis store and
//!    `sqlite` the SQLite store; `testing` exports the store conformance suite. A memory-only
//!    app sets `default-features = false`.
//!
//! 2. Configure it in `Rocket.toml` (every key has a default; only non-debug profiles need a
//!    `secret_key`, see [`SessionConfig`] for all keys):
//!
//!    ```toml
//!    [default.session]
//!    cookie_name = "session"
//!    shelf_life = 604800
//!
//!    [release.session]
//!    secret_key = "at least 32 bytes, e.g. from `openssl rand -base64 32`"
//!    store = { kind = "postgres", database = "sessions" }
//!
//!    [release.databases.sessions]
//!    url = "postgres://app@db.internal/app"
//!    ```
//!
//! 3. Attach the fairing:
//!
//!    ```rust,no_run
//!    # use rocket::launch;
//!    use rocket_server_sessions::Sessions;
//!
//!    #[launch]
//!    fn rocket() -> _ {
//!        rocket::build().attach(Sessions::fairing())
//!    }
//!    ```
//!
//! 4. Take the [`Session`] guard in a handler:
//!
//!    ```rust
//!    use rocket_server_sessions::{Session, SessionError};
//!
//!    #[rocket::get("/")]
//!    fn index(session: Session<'_>) -> Result<String, SessionError> {
//!        let n: u64 = session.get_or("count", 0)?;   // koyo: (session-ref 'count 0)
//!        session.set("count", n + 1)?;               // koyo: (session-set! 'count ...)
//!        Ok((n + 1).to_string())
//!    }
//!    ```
//!
//! # How a request goes
//!
//! Each step is one file, in the order a request meets them:
//!
//! 1. `config/`: at ignite, `[<profile>.session]` becomes a validated [`SessionConfig`];
//!    the [`Sessions`] fairing (`fairing.rs`) opens the store and builds the
//!    [`SessionManager`] (`manager.rs`), which every request shares.
//! 2. `session.rs`: a handler that takes the [`Session`] guard has the cookie verified
//!    (`cookie.rs`: HMAC-SHA256, constant time; no store call for a bad one) and its id's
//!    session loaded (`id.rs` turns the id into the [`StoreKey`] stores file it under) through
//!    the [`SessionStore`](store::SessionStore) trait (`store/`); while the store is found
//!    unavailable, `breaker.rs` makes requests fail at once instead of waiting for it.
//! 3. `working.rs`: the handler's reads and writes work on the request's copy of the session;
//!    `value.rs` encodes and decodes values (MessagePack).
//! 4. `flush.rs`: when the response leaves, the fairing writes the changed keys in one store
//!    call and sets the cookie on the response. A new session that nothing was written to is
//!    neither stored nor sent. `in_flight.rs` counts the requests not flushed yet, for shutdown.
//!
//! Outside requests, the [`SessionManager`] in managed state reaches any session by id.
//! The stores are `store/memory/`, `store/postgres/`, `store/redis.rs` and `store/sqlite.rs`
//! (`store/coalesce.rs` batches the concurrent calls of the SQL ones, and `store/sql.rs` holds what
//! they share); `error.rs` holds the errors and
//! `clock.rs` where "now" comes from. With the `testing` feature, `testing/` exports the
//! store conformance suite.
//!
//! # koyo → Rust
//!
//! | koyo | Rust |
//! |---|---|
//! | `make-session-manager-factory` | [`Sessions::fairing`] + `[<profile>.session]` ([`SessionConfig`]) |
//! | `wrap-session` | the [`Sessions`] fairing |
//! | `current-session-manager` | `&State<SessionManager>` ([`SessionManager`]) |
//! | `current-session-id` | [`Session::id`] |
//! | `session-ref k` / `session-ref k d` | [`Session::get`] / [`Session::get_or`] |
//! | `session-set!` | [`Session::set`] |
//! | `session-update! k p` / `session-update! k p d` | [`Session::update`] / [`Session::update_or`] |
//! | `session-remove!` | [`Session::remove`] |
//! | `session-manager-ref`, `-set!`, `-update!`, `-remove!` | [`SessionManager::get`], [`set`](SessionManager::set), [`update`](SessionManager::update), [`remove`](SessionManager::remove) |
//! | `make-memory-session-store` | [`store::MemoryStore`] (`store = { kind = "memory" }`) |
//! | `make-postgres-session-store` | [`store::PostgresStore`] (`store = { kind = "postgres" }`) |
//! | — | `store::RedisStore` (`store = { kind = "redis" }`), `store::SqliteStore` (`store = { kind = "sqlite" }`) |
//! | — | [`Session::cycle_id`], [`Session::destroy`], [`SessionManager::destroy_where`] |
#![deny(missing_docs)]
// Some docs link to the items of optional features (the stores, `testing`). Those links resolve
// in the documentation built with every feature, which is docs.rs's and the one CI checks with
// `-D warnings`; a build that leaves a feature out would only warn about them.
#![cfg_attr(
    not(all(
        feature = "postgres",
        feature = "redis",
        feature = "sqlite",
        feature = "testing"
    )),
    allow(rustdoc::broken_intra_doc_links)
)]

mod breaker;
pub mod clock;
pub mod config;
mod cookie;
mod devices;
pub mod error;
mod fairing;
mod flush;
mod id;
mod in_flight;
mod lifetime;
mod manager;
mod session;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod value;
mod working;

/// A deterministic xorshift generator for randomised unit tests (a failure names its seed):
/// each call gives a number below its argument.
#[cfg(test)]
pub(crate) fn xorshift(mut state: u64) -> impl FnMut(u64) -> u64 {
    move |n| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    }
}

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{SessionConfig, StoreConfig};
pub use devices::{InvalidSessionHandle, SessionHandle, SessionInfo};
pub use error::{ConfigError, SessionError, StoreError, StoreErrorKind};
pub use fairing::Sessions;
#[cfg(any(feature = "postgres", feature = "redis", feature = "sqlite"))]
pub use fairing::StorePool;
pub use id::{InvalidSessionId, SessionId, StoreKey};
pub use lifetime::Lifetime;
pub use manager::SessionManager;
pub use session::Session;

/// Entry points for the fuzz targets in `fuzz/`: each takes arbitrary bytes and must never
/// panic. Not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    use std::collections::HashMap;

    /// Verifies `data` as a session cookie value.
    pub fn cookie_value(data: &[u8]) {
        let codec = crate::cookie::CookieCodec::new("session", &[0x42; 32], &[vec![7; 32]], 3600);
        let _ = codec.verify(data, 1_700_000_000);
    }

    /// Decodes `data` as a stored value, into several types.
    pub fn stored_value(data: &[u8]) {
        let _ = crate::value::decode::<u64>("k", data);
        let _ = crate::value::decode::<String>("k", data);
        let _ = crate::value::decode::<Vec<Option<i32>>>("k", data);
        let _ = crate::value::decode::<HashMap<String, (bool, f64, Vec<u8>)>>("k", data);
    }

    /// Decodes `data` as a memory store snapshot.
    pub fn snapshot(data: &[u8]) {
        let _ = crate::store::memory::snapshot::decodes(data);
    }
}

/// Internals the criterion benchmarks in `benches/` measure. Not part of the API.
#[doc(hidden)]
pub mod bench {
    /// Signs and verifies cookie values, as the fairing does.
    pub struct CookieSigner(crate::cookie::CookieCodec);

    impl CookieSigner {
        /// A signer for cookie `name` with `key`.
        pub fn new(name: &str, key: &[u8], shelf_life: u64) -> CookieSigner {
            CookieSigner(crate::cookie::CookieCodec::new(name, key, &[], shelf_life))
        }

        /// The cookie value for `id` issued at `issued`.
        pub fn sign(&self, id: &crate::SessionId, issued: u64) -> String {
            self.0.sign(id, issued)
        }

        /// Whether `value` verifies at `now`.
        pub fn verify(&self, value: &[u8], now: u64) -> bool {
            self.0.verify(value, now).is_ok()
        }

        /// The issue time `value` states, unverified (what a response for a request that
        /// never loaded its session reads first, to see whether a refresh may be due).
        pub fn stated_issue(&self, value: &[u8]) -> Option<u64> {
            self.0.stated_issue(value)
        }
    }

    /// A value encoded as the session stores it (MessagePack).
    pub fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
        crate::value::Encoded::new(value)
            .expect("encodes")
            .as_bytes()
            .to_vec()
    }
}

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
