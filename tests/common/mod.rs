//! What every test suite shares: the test app (the conformance suite's, from
//! `rocket_server_sessions::testing`, with a few routes more), temporary folders, and a store
//! that counts its calls.
#![allow(dead_code)]

#[cfg(feature = "postgres")]
pub mod pg;

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rocket::figment::providers::Serialized;
use rocket::figment::Figment;
use rocket::http::{Cookie, Status};
use rocket::local::asynchronous::{Client, LocalResponse};
use rocket::serde::json::{json, Value};
use rocket::{get, post, routes, Build, Rocket, State};
use rocket_server_sessions::store::SessionStore;
#[allow(unused_imports)]
pub use rocket_server_sessions::testing::{get_with, id_of, post_with, Reply, KEY, START};
use rocket_server_sessions::{ManualClock, Session, SessionError, SessionManager, Sessions};

/// A folder under the system's temporary folder, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rss-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

thread_local! {
    /// The folders of [`TempDir::for_this_test`], removed as the test's thread ends.
    static KEPT: RefCell<Vec<TempDir>> = const { RefCell::new(Vec::new()) };
}

impl TempDir {
    /// A new folder that lasts until the calling test's thread ends (libtest gives each test one;
    /// with `--test-threads=1`, the main thread, at exit): for a file under a value the test
    /// hands on, such as a store given to the conformance suite.
    pub fn for_this_test(name: &str) -> PathBuf {
        let dir = TempDir::new(name);
        let path = dir.0.clone();
        KEPT.with(|kept| kept.borrow_mut().push(dir));
        path
    }
}

/// Waits up to 10 s for `check` to hold, asking every 10 ms; fails the test naming `what` if it
/// never does.
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(what, std::time::Duration::from_secs(10), check).await
}

/// [`eventually`] with a bound of its own, for what runs on a slower schedule.
pub async fn eventually_within<F, Fut>(what: &str, bound: std::time::Duration, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + bound;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "never happened within {bound:?}: {what}"
        );
        rocket::tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Rocket's configuration for tests (quiet, in profile `test`) with `session` on top of a
/// valid default (a secret key and a memory store without a file).
pub fn figment(session: Value) -> Figment {
    let mut table = json!({ "secret_key": KEY });
    if session.get("store").is_none() {
        table["store"] = json!({ "kind": "memory", "file_path": "" });
    }
    merge(&mut table, session);
    Figment::from(rocket::Config::debug_default())
        .merge(("log_level", "off"))
        .merge(Serialized::default("session", table))
        .select("test")
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

#[post("/remove/<key>")]
fn remove(session: Session<'_>, key: &str) -> &'static str {
    session.remove(key);
    "ok"
}

#[get("/no-session")]
fn no_session() -> &'static str {
    "no session"
}

#[post("/destroy-then-set")]
fn destroy_then_set(session: Session<'_>) -> Result<&'static str, SessionError> {
    session.destroy();
    session.set("flash", "goodbye")?;
    Ok("bye")
}

#[post("/manager/set/<id>/<key>/<value>")]
async fn manager_set(
    manager: &State<SessionManager>,
    id: &str,
    key: &str,
    value: &str,
) -> Result<&'static str, SessionError> {
    let id = id.parse().map_err(|_| SessionError::UnknownSession)?;
    manager.set(&id, key, value).await?;
    Ok("ok")
}

/// `?` on a session error in a handler that returns `Status`.
#[get("/status/get/<key>")]
fn get_or_status(session: Session<'_>, key: &str) -> Result<String, Status> {
    Ok(session.get::<String>(key)?)
}

/// `?` on a session error in a handler that returns `status::Custom`.
#[get("/custom/get/<key>")]
fn get_or_custom(
    session: Session<'_>,
    key: &str,
) -> Result<String, rocket::response::status::Custom<String>> {
    Ok(session.get::<String>(key)?)
}

/// The test app: every route above and the sessions fairing with `clock`, on the store the
/// configuration names.
pub fn app(figment: Figment, clock: &ManualClock) -> Rocket<Build> {
    app_of(figment, Sessions::fairing().with_clock(clock.clone()))
}

/// The test app on the system clock (the fairing's default), for tests that wait in real time.
pub fn system_clock_app(figment: Figment) -> Rocket<Build> {
    app_of(figment, Sessions::fairing())
}

/// The test app on `store` instead of the configured one.
pub fn app_with_store(
    figment: Figment,
    clock: &ManualClock,
    store: impl SessionStore,
) -> Rocket<Build> {
    app_of(
        figment,
        Sessions::fairing()
            .with_clock(clock.clone())
            .with_store(store),
    )
}

fn app_of(figment: Figment, sessions: Sessions) -> Rocket<Build> {
    rocket_server_sessions::testing::app(figment, sessions).mount(
        "/",
        routes![
            remove,
            no_session,
            destroy_then_set,
            manager_set,
            get_or_status,
            get_or_custom
        ],
    )
}

/// The session settings of the test configuration with `store` as its store table.
pub fn store_config(
    store: Value,
) -> Result<rocket_server_sessions::SessionConfig, rocket_server_sessions::ConfigError> {
    rocket_server_sessions::SessionConfig::from_figment(&figment(json!({ "store": store })))
}

/// Asserts that `store` is refused, the message naming `key` and the profile (`test`).
pub fn assert_store_refused(store: Value, key: &str) {
    let e = store_config(store.clone())
        .expect_err(&store.to_string())
        .to_string();
    assert!(e.contains(key) && e.contains("test"), "{store}: {e}");
}

/// The conformance suite's routes and the sessions fairing with `clock`, on the app's own
/// `#[derive(Database)]` pool `D` (attached first) instead of the store's own pool.
pub fn app_on_database<D>(figment: Figment, clock: &ManualClock) -> Rocket<Build>
where
    D: rocket_db_pools::Database,
    D::Pool: rocket_server_sessions::StorePool,
{
    rocket::custom(figment)
        .attach(D::init())
        .attach(
            Sessions::fairing()
                .with_clock(clock.clone())
                .with_database::<D>(),
        )
        .manage(Arc::new(rocket::tokio::sync::Barrier::new(2)))
        .mount("/", rocket_server_sessions::testing::routes())
}

/// A client for `app` with the default test configuration and a fresh clock.
pub async fn client_with(store: impl SessionStore, session: Value) -> (Client, ManualClock) {
    let clock = ManualClock::new(START);
    let client = Client::untracked(app_with_store(figment(session), &clock, store))
        .await
        .expect("the test app launches");
    (client, clock)
}

/// A client of the test app on the configured store, and the app's clock.
pub async fn client_on_config(session: Value) -> (Client, ManualClock) {
    let clock = ManualClock::new(START);
    let client = Client::untracked(app(figment(session), &clock))
        .await
        .expect("the test app launches");
    (client, clock)
}

/// The `Set-Cookie` headers of a response.
pub fn set_cookies(res: &LocalResponse<'_>) -> Vec<String> {
    res.headers().get("Set-Cookie").map(String::from).collect()
}

/// The value of the session cookie a response sets, if it sets one.
pub fn session_cookie(res: &LocalResponse<'_>) -> Option<String> {
    set_cookies(res)
        .iter()
        .filter_map(|h| Cookie::parse(h.clone()).ok())
        .find(|c| c.name() == "session")
        .map(|c| c.value().to_string())
}

/// A real store that counts the calls made to it, to prove which requests cost store I/O,
/// and, apart, the loads and updates that were awaited rather than answered at once.
pub struct Counting<S> {
    pub inner: S,
    pub calls: AtomicUsize,
    pub awaited: AtomicUsize,
    /// The keys of the awaited loads and updates, in order.
    pub awaited_keys: std::sync::Mutex<Vec<rocket_server_sessions::StoreKey>>,
}

impl<S> Counting<S> {
    pub fn new(inner: S) -> Arc<Counting<S>> {
        Arc::new(Counting {
            inner,
            calls: AtomicUsize::new(0),
            awaited: AtomicUsize::new(0),
            awaited_keys: Default::default(),
        })
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Loads and updates made through the async methods.
    pub fn awaited(&self) -> usize {
        self.awaited.load(Ordering::SeqCst)
    }

    fn count(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }

    /// How many awaited loads and updates were of `key`.
    pub fn awaited_for(&self, key: &rocket_server_sessions::StoreKey) -> usize {
        let keys = self.awaited_keys.lock().unwrap();
        keys.iter().filter(|k| *k == key).count()
    }

    fn count_awaited(&self, key: &rocket_server_sessions::StoreKey) {
        self.count();
        self.awaited.fetch_add(1, Ordering::SeqCst);
        self.awaited_keys.lock().unwrap().push(*key);
    }
}

#[rocket::async_trait]
impl<S: SessionStore> SessionStore for Counting<S> {
    async fn load(
        &self,
        key: &rocket_server_sessions::StoreKey,
        now: u64,
    ) -> Result<
        Option<rocket_server_sessions::store::SessionRecord>,
        rocket_server_sessions::StoreError,
    > {
        self.count_awaited(key);
        self.inner.load(key, now).await
    }
    fn load_now(
        &self,
        key: &rocket_server_sessions::StoreKey,
        now: u64,
    ) -> Option<
        Result<
            Option<rocket_server_sessions::store::SessionRecord>,
            rocket_server_sessions::StoreError,
        >,
    > {
        let answer = self.inner.load_now(key, now)?;
        self.count();
        Some(answer)
    }
    fn update_now(
        &self,
        key: &rocket_server_sessions::StoreKey,
        changes: &rocket_server_sessions::store::ChangeSet,
        now: u64,
    ) -> Option<Result<bool, rocket_server_sessions::StoreError>> {
        let answer = self.inner.update_now(key, changes, now)?;
        self.count();
        Some(answer)
    }
    async fn create(
        &self,
        key: &rocket_server_sessions::StoreKey,
        created: u64,
        changes: &rocket_server_sessions::store::ChangeSet,
        now: u64,
    ) -> Result<bool, rocket_server_sessions::StoreError> {
        self.count();
        self.inner.create(key, created, changes, now).await
    }
    async fn update(
        &self,
        key: &rocket_server_sessions::StoreKey,
        changes: &rocket_server_sessions::store::ChangeSet,
        now: u64,
    ) -> Result<bool, rocket_server_sessions::StoreError> {
        self.count_awaited(key);
        self.inner.update(key, changes, now).await
    }
    async fn cycle(
        &self,
        old: &rocket_server_sessions::StoreKey,
        new: &rocket_server_sessions::StoreKey,
        changes: &rocket_server_sessions::store::ChangeSet,
        now: u64,
    ) -> Result<bool, rocket_server_sessions::StoreError> {
        self.count();
        self.inner.cycle(old, new, changes, now).await
    }
    async fn destroy(
        &self,
        key: &rocket_server_sessions::StoreKey,
    ) -> Result<(), rocket_server_sessions::StoreError> {
        self.count();
        self.inner.destroy(key).await
    }
    async fn destroy_where(
        &self,
        name: &str,
        value: &[u8],
    ) -> Result<u64, rocket_server_sessions::StoreError> {
        self.count();
        self.inner.destroy_where(name, value).await
    }
    async fn list_where(
        &self,
        name: &str,
        value: &[u8],
        now: u64,
    ) -> Result<
        Vec<rocket_server_sessions::store::SessionSummary>,
        rocket_server_sessions::StoreError,
    > {
        self.count();
        self.inner.list_where(name, value, now).await
    }
    async fn sweep(&self, now: u64) -> Result<u64, rocket_server_sessions::StoreError> {
        self.count();
        self.inner.sweep(now).await
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; tests bind it at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Blocks until something listens on 127.0.0.1:`port`; panics after 30 s.
pub fn wait_for_port(port: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "server did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// One HTTP/1.1 request over a real socket: (status, Set-Cookie session value, body).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    cookie: Option<&str>,
) -> (u16, Option<String>, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let cookie = cookie
        .map(|c| format!("Cookie: session={c}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{cookie}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let set = head
        .lines()
        .filter_map(|l| {
            l.strip_prefix("set-cookie: session=")
                .or(l.strip_prefix("Set-Cookie: session="))
        })
        .map(|v| v.split(';').next().unwrap_or("").to_string())
        .next();
    (status, set, body.to_string())
}

/// The error with which `rocket` refuses to launch; panics if it launches.
pub async fn launch_error(rocket: Rocket<Build>) -> rocket::Error {
    match Client::untracked(rocket).await {
        Ok(_) => panic!("launched, but should have been refused"),
        Err(e) => {
            // Looking at the kind marks the error handled: Rocket panics on dropping one unseen.
            let _ = e.kind();
            e
        }
    }
}

/// A memory store read from the snapshot `file`, as a restarted app would read it.
pub fn open_snapshot(file: &std::path::Path) -> rocket_server_sessions::store::MemoryStore {
    rocket_server_sessions::store::MemoryStore::open(
        &rocket_server_sessions::config::MemoryStoreConfig {
            ttl: 604_800,
            file_path: Some(file.to_path_buf()),
            snapshot_interval: 0,
            sweep_interval: 60,
        },
    )
    .expect("the snapshot opens")
}
