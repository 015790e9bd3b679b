//! One server per mode, all with the same two routes on 127.0.0.1:
//! `GET /counter` reads a u64 from the session, increments it and writes it back, and
//! `GET /read` only reads it.
//!
//! `server MODE PORT` with MODE one of `bare`, `bare-cookie` (bare, with a 96-character cookie
//! going back and forth), `floor` (that cookie, read by a guard that leaves a value in Rocket's
//! request-local cache for a response fairing: the least a guard-and-fairing session layer
//! does), `ours-memory`, `ours-postgres` (`cache = 0`),
//! `ours-postgres-cache` (a local cache of 10,000 sessions, the default), `rss-memory`
//! (rocket-session-store), `flex-memory`, `flex-postgres` (rocket_flex_session),
//! `private-cookie` (Rocket's private cookies, no store). The PostgreSQL modes take
//! `DATABASE_URL`, and each makes and uses a database of its own on that server. Two workers,
//! logging off. With `BENCH_COUNT_ALLOCS` set, it counts heap allocations and reports the
//! count for each line read on stdin.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rocket::figment::Figment;
use rocket::{get, routes, Build, Rocket};

/// The system allocator, counting allocations when `BENCH_COUNT_ALLOCS` is set. Counting is a
/// separate pass of `scripts/bench`, never a timed one: in timed runs the only cost is one
/// load of a flag that is never written, the same for every mode.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        System.realloc(ptr, layout, size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// With `BENCH_COUNT_ALLOCS` set: answers each line on stdin with the number of allocations
/// (and reallocations) so far, on stdout.
fn count_allocations_if_asked() {
    if std::env::var_os("BENCH_COUNT_ALLOCS").is_none() {
        return;
    }
    COUNTING.store(true, Ordering::Relaxed);
    std::thread::spawn(|| {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).unwrap_or(0) > 0 {
            println!("{}", ALLOCATIONS.load(Ordering::Relaxed));
            line.clear();
        }
    });
}

const KEY: &str = "bench key, 32 bytes at the least, not secret";
/// Rocket's own secret key (private cookies, which rocket_flex_session uses): 64 bytes, base64.
const ROCKET_KEY: &str =
    "hPRYyVRiMyxpw5sBB1XeCMN1kFsDCqKvBi2QJxBVHQk5xkOzFXGOyi3DQAv9h0lELVrD9FnAo3AQc0cu5HB9Sw==";

fn figment(port: u16) -> Figment {
    // Rocket's release defaults alone: no Rocket.toml, no environment, whatever the folder.
    Figment::from(rocket::Config::release_default())
        .merge(("port", port))
        .merge(("address", "127.0.0.1"))
        .merge(("workers", 2))
        .merge(("log_level", "off"))
        .merge(("secret_key", ROCKET_KEY))
        .merge(("cli_colors", false))
}

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

/// The body every counter and read route answers: a number formatted into a `String`. The bare
/// routes answer one too, so that the rows differ only in the session layer, not in the
/// handler's own work (formatting, one allocation, Rocket's `String` responder).
fn body(n: u64) -> String {
    std::hint::black_box(n).to_string()
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

mod ours {
    use super::*;
    use rocket_server_sessions::{Session, SessionError, Sessions};

    #[get("/counter")]
    fn counter(session: Session<'_>) -> Result<String, SessionError> {
        Ok(body(session.update_or("count", 0u64, |n| n + 1)?))
    }

    #[get("/read")]
    fn read(session: Session<'_>) -> Result<String, SessionError> {
        Ok(body(session.get_or("count", 0u64)?))
    }

    /// Where sessions live: memory, or PostgreSQL at `Some((url, n))` with a local cache of
    /// `n` sessions (0: none).
    pub fn rocket(figment: Figment, postgres: Option<(String, usize)>) -> Rocket<Build> {
        let figment = figment
            .merge(("session.secret_key", KEY))
            .merge(("session.cookie_secure", false));
        let figment = match postgres {
            None => figment
                .merge(("session.store.kind", "memory"))
                .merge(("session.store.file_path", "")),
            Some((url, cache)) => figment
                .merge(("session.store.kind", "postgres"))
                .merge(("session.store.database", "sessions"))
                .merge(("session.store.cache", cache))
                .merge(("databases.sessions.url", url))
                .merge(("databases.sessions.max_connections", 16)),
        };
        rocket::custom(figment)
            .attach(Sessions::fairing())
            .mount("/", routes![counter, read])
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
    use rocket_flex_session::storage::sqlx::{SessionSqlx, SqlxPostgresStorage};
    use rocket_flex_session::{RocketFlexSession, Session, SessionIdentifier};

    #[derive(Clone)]
    pub struct Counter(u64);

    impl SessionIdentifier for Counter {
        type Id = i32;
        fn identifier(&self) -> Option<i32> {
            None
        }
    }

    impl SessionSqlx<sqlx::Postgres> for Counter {
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
                        id text PRIMARY KEY, data text NOT NULL, user_id int,
                        expires timestamptz NOT NULL)",
                )
                .execute(&pool)
                .await
                .expect("table");
                let storage = SqlxPostgresStorage::builder()
                    .pool(pool)
                    .table_name("flex_sessions")
                    .build();
                RocketFlexSession::<Counter>::builder()
                    .with_options(|o| o.secure = false)
                    .storage(storage)
                    .build()
            }
        };
        rocket::custom(figment)
            .attach(fairing)
            .mount("/", routes![counter, read])
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
        "ours-memory" => ours::rocket(figment, None),
        "ours-postgres" => ours::rocket(figment, Some((database_url(mode).await, 0))),
        "ours-postgres-cache" => ours::rocket(figment, Some((database_url(mode).await, 10_000))),
        "rss-memory" => rss::rocket(figment),
        "private-cookie" => private_cookie::rocket(figment),
        "flex-memory" => flex::rocket(figment, None).await,
        "flex-postgres" => flex::rocket(figment, Some(database_url(mode).await)).await,
        other => panic!("unknown mode {other}"),
    };
    let _ = rocket.launch().await.expect("serves");
}
