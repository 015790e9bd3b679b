//! Our sessions, on the store a mode names. Included by path by `server` and by
//! `../load-sqlite`'s server.

use rocket::figment::Figment;
use rocket::{get, routes, Build, Rocket};

use crate::common::{body, KEY};
use rocket_server_sessions::{Session, SessionError, Sessions};

#[get("/counter")]
fn counter(session: Session<'_>) -> Result<String, SessionError> {
    Ok(body(session.update_or("count", 0u64, |n| n + 1)?))
}

#[get("/read")]
fn read(session: Session<'_>) -> Result<String, SessionError> {
    Ok(body(session.get_or("count", 0u64)?))
}

/// Where our sessions live.
#[allow(dead_code)] // each server builds the variants it serves
pub enum Store {
    /// The memory store, no snapshot file.
    Memory,
    /// PostgreSQL at the URL, with a local cache of that many sessions (0: none).
    Postgres(String, usize),
    /// Redis at the URL, under the key prefix.
    Redis(String, String),
    /// SQLite in the file of the URL (the defaults: WAL, `synchronous = "full"`).
    Sqlite(String),
}

/// Our sessions on `store`, the pools at 16 connections.
pub fn rocket(figment: Figment, store: Store) -> Rocket<Build> {
    let figment = figment
        .merge(("session.secret_key", KEY))
        .merge(("session.cookie_secure", false));
    let figment = match store {
        Store::Memory => figment
            .merge(("session.store.kind", "memory"))
            .merge(("session.store.file_path", "")),
        Store::Postgres(url, cache) => figment
            .merge(("session.store.kind", "postgres"))
            .merge(("session.store.cache", cache))
            .merge(("databases.sessions.url", url)),
        Store::Redis(url, prefix) => figment
            .merge(("session.store.kind", "redis"))
            .merge(("session.store.key_prefix", prefix))
            .merge(("databases.sessions.url", url)),
        Store::Sqlite(url) => figment
            .merge(("session.store.kind", "sqlite"))
            .merge(("databases.sessions.url", url)),
    };
    let figment = figment.merge(("databases.sessions.max_connections", 16));
    rocket::custom(figment)
        .attach(Sessions::fairing())
        .mount("/", routes![counter, read])
}
