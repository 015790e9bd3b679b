//! One server per mode, all with the same two routes on 127.0.0.1:
//! `GET /counter` reads a u64 from the session, increments it and writes it back, and
//! `GET /read` only reads it.
//!
//! `server MODE PORT` with MODE one of `bare`, `bare-cookie` (bare, with a 96-character cookie
//! going back and forth), `floor` (that cookie, read by a guard that leaves a value in Rocket's
//! request-local cache for a response fairing: the least a guard-and-fairing session layer
//! does), `ours-memory`, `ours-postgres` (`cache = 0`, the default),
//! `ours-postgres-cache` (a local cache of 10,000 sessions; off by default), `rss-memory`
//! (rocket-session-store), `flex-memory`, `flex-postgres` (rocket_flex_session),
//! `ours-redis`, `flex-redis`, `flex-sqlite`,
//! `private-cookie` (Rocket's private cookies, no store). The PostgreSQL modes take
//! `DATABASE_URL`, and each makes and uses a database of its own on that server; the Redis
//! modes take `REDIS_URL` (each under a key prefix of its own), the SQLite modes
//! `BENCH_SQLITE_DIR` (a file each). Ours on SQLite is `../load-sqlite`'s server: sqlx 0.7's
//! SQLite (ours, through rocket_db_pools) and sqlx 0.8's (rocket_flex_session's) cannot link
//! into one binary. Rocket's runtime has `ROCKET_WORKERS` workers (scripts/bench sets two, or
//! two divided among several instances), logging off. With `BENCH_COUNT_ALLOCS` set, it counts
//! heap allocations and reports the count for each line read on stdin.

#[path = "../common.rs"]
mod common;
#[path = "../ours.rs"]
mod ours;

use common::*;
use ours::Store;
use rocket::figment::Figment;
use rocket::{get, routes, Build, Rocket};

/// A database of `mode`'s own on the server of `DATABASE_URL`, made if missing: its URL.
///
/// Every PostgreSQL mode is an application of its own, as it would be deployed: sharing one
/// database, the modes' servers would count as instances of one application (and a caching
/// one would not serve from its cache while another is alive).
async fn database_url(mode: &str) -> String {
    use sqlx::Connection;

    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL for the PostgreSQL modes");
    // BENCH_DATABASE: several instances of one mode share a database of their own.
    let name = std::env::var("BENCH_DATABASE")
        .unwrap_or_else(|_| format!("bench_{}", mode.replace('-', "_")));
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
    let made = sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await;
    match made {
        Ok(_) => {}
        // 42P04: it exists already (an earlier server of this mode made it).
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
        Err(e) => panic!("CREATE DATABASE {name}: {e}"),
    }
    let _ = conn.close().await;
    with_database(&url, &name)
}

/// The Redis server of the Redis modes (`REDIS_URL`).
fn redis_url() -> String {
    std::env::var("REDIS_URL").expect("REDIS_URL for the Redis modes")
}

/// The key prefix of `mode`'s sessions in Redis: every mode an application of its own.
fn prefix(mode: &str) -> String {
    format!("bench:{mode}:")
}

/// The SQLite file of `mode` (in `BENCH_SQLITE_DIR`, one file per mode), created when missing.
fn sqlite_url(mode: &str) -> String {
    let dir = std::env::var("BENCH_SQLITE_DIR").expect("BENCH_SQLITE_DIR for the SQLite modes");
    format!("sqlite://{dir}/{mode}.sqlite")
}

/// `url` naming database `db` instead of its own (the tests' `common::pg` does the same).
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let host = base.find("://").map_or(0, |i| i + 3);
    let base = match base[host..].find('/') {
        Some(i) => &base[..host + i],
        None => base,
    };
    match query {
        "" => format!("{base}/{db}"),
        q => format!("{base}/{db}?{q}"),
    }
}

/// The cookie value the bare-cookie and floor rows hand out: as long as our signed cookie's
/// (96 characters), so that Rocket parses as much in every row that carries a cookie.
fn stand_in_cookie() -> String {
    "x".repeat(96)
}

mod bare {
    use super::*;

    #[get("/counter")]
    fn counter() -> String {
        body(1)
    }

    #[get("/read")]
    fn read() -> String {
        body(1)
    }

    pub fn rocket(figment: Figment) -> Rocket<Build> {
        rocket::custom(figment).mount("/", routes![counter, read])
    }
}

/// Bare Rocket whose client sends back a cookie as long as ours: what Rocket itself spends on
/// a session cookie (parsing the header into the jar, one lookup), before any session layer.
mod bare_cookie {
    use super::*;
    use rocket::http::CookieJar;

    #[get("/counter")]
    fn counter(jar: &CookieJar<'_>) -> String {
        if jar.get("session").is_none() {
            jar.add(("session", stand_in_cookie()));
        }
        body(1)
    }

    pub fn rocket(figment: Figment) -> Rocket<Build> {
        rocket::custom(figment).mount("/", routes![counter])
    }
}

/// The least a Rocket session layer built as a request guard and a response fairing does,
/// with none of a session's work: the cookie row's cookie, read by a guard that keeps a value
/// in Rocket's request-local cache for the response fairing to take (and the fairing sets the
/// cookie on a response whose request had none, as ours does). No store, no signature, no
/// encoding: what this row costs over the cookie row, any such layer pays.
mod floor {
    use super::*;
    use rocket::fairing::{Fairing, Info, Kind};
    use rocket::http::Header;
    use rocket::request::{FromRequest, Outcome, Request};
    use rocket::Response;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Mutex;
    use std::task::{Context, Poll};

    /// The request's value: the cookie's length (0 without one), until the fairing takes it.
    #[derive(Default)]
    struct Slot(Mutex<Option<u64>>);

    struct Guard<'r>(&'r Slot);

    #[rocket::async_trait]
    impl<'r> FromRequest<'r> for Guard<'r> {
        type Error = ();

        async fn from_request(req: &'r Request<'_>) -> Outcome<Self, ()> {
            let slot = req.local_cache(Slot::default);
            let cookie = req.cookies().get("session");
            *slot.0.lock().unwrap() = Some(cookie.map_or(0, |c| c.value().len() as u64));
            Outcome::Success(Guard(slot))
        }
    }

    /// A ready future of no size, which `Box::pin` does not allocate (as in our fairing).
    struct Done;

    impl Future for Done {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            Poll::Ready(())
        }
    }

    struct TakeSlot;

    impl Fairing for TakeSlot {
        fn info(&self) -> Info {
            Info {
                name: "floor",
                kind: Kind::Response,
            }
        }

        fn on_response<'r, 'life0, 'life1, 'life2, 'async_trait>(
            &'life0 self,
            req: &'r Request<'life1>,
            res: &'life2 mut Response<'r>,
        ) -> Pin<Box<dyn Future<Output = ()> + Send + 'async_trait>>
        where
            'r: 'async_trait,
            'life0: 'async_trait,
            'life1: 'async_trait,
            'life2: 'async_trait,
            Self: 'async_trait,
        {
            if req.local_cache(Slot::default).0.lock().unwrap().take() == Some(0) {
                let value = format!("session={}; Path=/", stand_in_cookie());
                res.adjoin_header(Header::new("Set-Cookie", value));
            }
            Box::pin(Done)
        }
    }

    #[get("/counter")]
    fn counter(slot: Guard<'_>) -> String {
        body(slot.0 .0.lock().unwrap().unwrap_or(0))
    }

    pub fn rocket(figment: Figment) -> Rocket<Build> {
        rocket::custom(figment)
            .attach(TakeSlot)
            .mount("/", routes![counter])
    }
}

/// Rocket's private cookies: the session's data in the cookie itself, encrypted and
/// authenticated by Rocket (AES-256-GCM under its `secret_key`), the client-side alternative to
/// a session store. A changed value is a new cookie on every response.
mod private_cookie {
    use super::*;
    use rocket::http::CookieJar;

    fn count(jar: &CookieJar<'_>) -> u64 {
        jar.get_private("count")
            .and_then(|c| c.value().parse().ok())
            .unwrap_or(0)
    }

    #[get("/counter")]
    fn counter(jar: &CookieJar<'_>) -> String {
        let n = count(jar) + 1;
        jar.add_private(("count", n.to_string()));
        body(n)
    }

    #[get("/read")]
    fn read(jar: &CookieJar<'_>) -> String {
        body(count(jar))
    }

    pub fn rocket(figment: Figment) -> Rocket<Build> {
        rocket::custom(figment).mount("/", routes![counter, read])
    }
}

mod rss {
    use super::*;
    use rocket::http::private::cookie::CookieBuilder;
    use rocket_session_store::memory::MemoryStore;
    use rocket_session_store::{Session, SessionResult, SessionStore};

    #[get("/counter")]
    async fn counter(session: Session<'_, u64>) -> SessionResult<String> {
        let n = session.get().await?.unwrap_or(0) + 1;
        session.set(n).await?;
        Ok(body(n))
    }

    #[get("/read")]
    async fn read(session: Session<'_, u64>) -> SessionResult<String> {
        Ok(body(session.get().await?.unwrap_or(0)))
    }

    pub fn rocket(figment: Figment) -> Rocket<Build> {
        let store: SessionStore<u64> = SessionStore {
            store: Box::new(MemoryStore::<u64>::default()),
            name: "token".into(),
            duration: std::time::Duration::from_secs(3600),
            cookie_builder: CookieBuilder::new("", "").path("/"),
        };
        rocket::custom(figment)
            .attach(store.fairing())
            .mount("/", routes![counter, read])
    }
}

mod flex {
    use super::*;
    use rocket_flex_session::error::SessionError;
    use rocket_flex_session::storage::redis::{
        RedisFormat, RedisFredStorage, RedisValue, SessionRedis,
    };
    use rocket_flex_session::storage::sqlx::{SessionSqlx, SqlxPostgresStorage, SqlxSqliteStorage};
    use rocket_flex_session::storage::SessionStorage;
    use rocket_flex_session::{RocketFlexSession, Session, SessionIdentifier};

    #[derive(Clone)]
    pub struct Counter(u64);

    impl SessionIdentifier for Counter {
        type Id = String;
        fn identifier(&self) -> Option<String> {
            None
        }
    }

    /// The count as text in a SQL column, on either database.
    macro_rules! counter_in_sql {
        ($($db:ty),*) => {$(
            impl SessionSqlx<$db> for Counter {
                type Error = SessionError;
                type Data = String;
                fn into_sql(self) -> Result<String, SessionError> {
                    Ok(self.0.to_string())
                }
                fn from_sql(value: String) -> Result<Self, SessionError> {
                    value
                        .parse()
                        .map(Counter)
                        .map_err(|e| SessionError::Parsing(Box::new(e)))
                }
            }
        )*};
    }

    counter_in_sql!(sqlx::Postgres, sqlx::Sqlite);

    impl SessionRedis for Counter {
        const REDIS_FORMAT: RedisFormat = RedisFormat::String;
        type Error = SessionError;
        fn into_redis(self) -> Result<RedisValue, SessionError> {
            Ok(RedisValue::String(self.0.to_string()))
        }
        fn from_redis(value: RedisValue) -> Result<Self, SessionError> {
            let text = value
                .into_string()
                .map_err(|v| SessionError::Parsing(format!("{v:?}").into()))?;
            text.parse()
                .map(Counter)
                .map_err(|e| SessionError::Parsing(Box::new(e)))
        }
    }

    #[get("/counter")]
    fn counter(mut session: Session<Counter>) -> String {
        let n = session.get().map_or(0, |c| c.0) + 1;
        session.set(Counter(n));
        body(n)
    }

    #[get("/read")]
    fn read(session: Session<Counter>) -> String {
        body(session.get().map_or(0, |c| c.0))
    }

    /// Sessions in memory, or in PostgreSQL at `Some(url)`.
    pub async fn rocket(figment: Figment, postgres: Option<String>) -> Rocket<Build> {
        let fairing = match postgres {
            None => RocketFlexSession::<Counter>::default(),
            Some(url) => {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(16)
                    .connect(&url)
                    .await
                    .expect("connect");
                sqlx::query(
                    "CREATE TABLE IF NOT EXISTS flex_sessions (
                        id text PRIMARY KEY, data text NOT NULL, user_id text,
                        expires timestamptz NOT NULL)",
                )
                .execute(&pool)
                .await
                .expect("table");
                let storage = SqlxPostgresStorage::builder()
                    .pool(pool)
                    .table_name("flex_sessions")
                    .build();
                on(storage)
            }
        };
        serve(figment, fairing)
    }

    /// The fairing on `storage`, the cookie allowed over plain HTTP (as ours in this bench).
    fn on<S: SessionStorage<Counter> + 'static>(storage: S) -> RocketFlexSession<Counter> {
        RocketFlexSession::<Counter>::builder()
            .with_options(|o| o.secure = false)
            .storage(storage)
            .build()
    }

    fn serve(figment: Figment, fairing: RocketFlexSession<Counter>) -> Rocket<Build> {
        rocket::custom(figment)
            .attach(fairing)
            .mount("/", routes![counter, read])
    }

    /// Sessions in Redis at `url`, under `prefix`, on a fred pool of 16 connections.
    pub async fn redis(figment: Figment, url: String, prefix: String) -> Rocket<Build> {
        use fred::prelude::{Builder, ClientLike, Config};

        let config = Config::from_url(&url).expect("a Redis URL");
        let pool = Builder::from_config(config)
            .build_pool(16)
            .expect("a fred pool");
        pool.init().await.expect("Redis answers");
        let storage = RedisFredStorage::builder()
            .pool(pool)
            .prefix(prefix.clone())
            .index_prefix(format!("{prefix}user:"))
            .build();
        serve(figment, on(storage))
    }

    /// Sessions in SQLite at `url`, with the durability of ours by default: WAL,
    /// `synchronous = FULL`, a 5-second busy timeout; a pool of 16 connections.
    pub async fn sqlite(figment: Figment, url: String) -> Rocket<Build> {
        use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
        use std::str::FromStr;

        let options = SqliteConnectOptions::from_str(&url)
            .expect("a SQLite URL")
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(16)
            .connect_with(options)
            .await
            .expect("open");
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS flex_sessions (
                id TEXT NOT NULL PRIMARY KEY, data TEXT NOT NULL, user_id TEXT,
                expires TEXT NOT NULL)",
        )
        .execute(&pool)
        .await
        .expect("table");
        let storage = SqlxSqliteStorage::builder()
            .pool(pool)
            .table_name("flex_sessions")
            .build();
        serve(figment, on(storage))
    }
}

#[rocket::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (mode, port) = match args.as_slice() {
        [_, mode, port] => (mode.as_str(), port.parse().expect("a port")),
        _ => panic!("usage: server MODE PORT"),
    };
    count_allocations_if_asked();
    let figment = figment(port);
    let rocket = match mode {
        "bare" => bare::rocket(figment),
        "bare-cookie" => bare_cookie::rocket(figment),
        "floor" => floor::rocket(figment),
        "ours-memory" => ours::rocket(figment, Store::Memory),
        "ours-postgres" => ours::rocket(figment, Store::Postgres(database_url(mode).await, 0)),
        "ours-postgres-cache" => {
            ours::rocket(figment, Store::Postgres(database_url(mode).await, 10_000))
        }
        "ours-redis" => ours::rocket(figment, Store::Redis(redis_url(), prefix(mode))),
        "rss-memory" => rss::rocket(figment),
        "private-cookie" => private_cookie::rocket(figment),
        "flex-memory" => flex::rocket(figment, None).await,
        "flex-postgres" => flex::rocket(figment, Some(database_url(mode).await)).await,
        "flex-redis" => flex::redis(figment, redis_url(), prefix(mode)).await,
        "flex-sqlite" => flex::sqlite(figment, sqlite_url(mode)).await,
        other => panic!("unknown mode {other}"),
    };
    let _ = rocket.launch().await.expect("serves");
}
