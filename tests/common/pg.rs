//! PostgreSQL for the tests: a real server, from `DATABASE_URL` (scripts/test starts one).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use rocket_db_pools::sqlx::{self, Connection, Executor, PgConnection, PgPool};
use rocket_server_sessions::config::PostgresStoreConfig;
use rocket_server_sessions::store::PostgresStore;

use super::TempDir;

/// The server the tests use. Without one, the tests fail and say how to get one.
pub fn server_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "the PostgreSQL tests need a server: run `scripts/test` (it installs PostgreSQL if \
             needed and starts a throwaway cluster), or set DATABASE_URL to a server whose user \
             may create databases"
        )
    })
}

/// `url` with its database name replaced by `db`.
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

/// A new, empty database on the test server; its URL.
pub async fn fresh_database() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let url = server_url();
    let name = format!(
        "rss_test_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    start_janitor(url.clone());
    let mut conn = PgConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to DATABASE_URL ({url}): {e}"));
    conn.execute(format!("DROP DATABASE IF EXISTS {name}").as_str())
        .await
        .unwrap();
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    MADE.with(|made| made.borrow_mut().0.push(name.clone()));
    with_database(&url, &name)
}

thread_local! {
    /// The databases [`fresh_database`] made for the test on this thread.
    static MADE: RefCell<Made> = const { RefCell::new(Made(Vec::new())) };
}

/// Drops its databases as the test's thread ends, so that a run leaves none behind on a server
/// of the developer's (`DATABASE_URL`). libtest gives each test a thread and joins it before it
/// reports the test; with `--test-threads=1` the tests share the main thread, whose thread-locals
/// go at exit. A test hands its stores on (to the conformance suite, to Rocket), so no value of
/// its own lives as long as they do; its thread does.
struct Made(Vec<String>);

impl Drop for Made {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        // A thread-local's destructor must not start threads or runtimes (they use
        // thread-locals that may be gone): the janitor, started with the first database, drops
        // them, and this thread waits for it.
        let janitor = JANITOR.get().expect("started with the first database");
        let mut state = janitor.state.lock().unwrap();
        state.queue.push_back(std::mem::take(&mut self.0));
        state.queued += 1;
        let mine = state.queued;
        janitor.changed.notify_all();
        while state.done < mine {
            state = janitor.changed.wait(state).unwrap();
        }
    }
}

/// A thread with a runtime of its own that drops the databases of tests that have ended.
struct Janitor {
    state: Mutex<JanitorState>,
    changed: Condvar,
}

/// What the janitor has been given and how far it has got, counted in tests' lists.
struct JanitorState {
    queue: VecDeque<Vec<String>>,
    queued: usize,
    done: usize,
}

static JANITOR: OnceLock<Janitor> = OnceLock::new();

fn start_janitor(server: String) {
    JANITOR.get_or_init(|| {
        std::thread::spawn(move || clean_up(&server));
        Janitor {
            state: Mutex::new(JanitorState {
                queue: VecDeque::new(),
                queued: 0,
                done: 0,
            }),
            changed: Condvar::new(),
        }
    });
}

/// The janitor's thread: drops each list of databases queued, in order, on `server`.
fn clean_up(server: &str) {
    let janitor = JANITOR.wait();
    let runtime = rocket::tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the janitor");
    loop {
        let names = {
            let mut state = janitor.state.lock().unwrap();
            loop {
                match state.queue.pop_front() {
                    Some(names) => break names,
                    None => state = janitor.changed.wait(state).unwrap(),
                }
            }
        };
        for name in names {
            if let Err(e) = runtime.block_on(drop_database(server, &name)) {
                eprintln!("could not drop the test database {name}: {e}");
            }
        }
        janitor.state.lock().unwrap().done += 1;
        janitor.changed.notify_all();
    }
}

async fn drop_database(server: &str, name: &str) -> Result<(), sqlx::Error> {
    let mut conn = PgConnection::connect(server).await?;
    // FORCE (PostgreSQL 13 and later) ends connections the test's pools left behind.
    let forced = conn
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await;
    if forced.is_err() {
        conn.execute(format!("DROP DATABASE IF EXISTS {name}").as_str())
            .await?;
    }
    Ok(())
}

pub fn config(ttl: u64) -> PostgresStoreConfig {
    PostgresStoreConfig {
        database: "sessions".into(),
        ttl,
        migrate: true,
        unlogged: false,
        sweep_interval: 60,
        sweep_batch: 1000,
        cache: 0,
        indexed_keys: Vec::new(),
    }
}

pub async fn pool(url: &str) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(url)
        .await
        .unwrap()
}

/// A store with `ttl` on a fresh database.
pub async fn fresh_store(ttl: u64) -> PostgresStore {
    PostgresStore::new(pool(&fresh_database().await).await, &config(ttl))
        .await
        .unwrap()
}

/// A cluster of the test's own, to stop and start at will; stopped when dropped.
pub struct Cluster {
    pub dir: TempDir,
    pub port: u16,
    pub url: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/pg")
}

fn run(args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "scripts/pg {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Cluster {
    pub fn start() -> Cluster {
        let dir = TempDir::new("cluster");
        let mut perms = std::fs::metadata(&dir.0).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o777);
        std::fs::set_permissions(&dir.0, perms).unwrap();
        let port = super::free_port();
        let url = run(&["start", dir.path("db").to_str().unwrap(), &port.to_string()]);
        Cluster { dir, port, url }
    }

    fn data(&self) -> String {
        self.dir.path("db").to_string_lossy().into_owned()
    }

    pub fn stop(&self) {
        run(&["stop", &self.data()]);
    }

    pub fn resume(&self) {
        run(&["start", &self.data(), &self.port.to_string()]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["kill", &self.data()])
            .output();
    }
}

/// A listener on 127.0.0.1 to stand in for the server of `url`: the listener, the server's
/// address, and `url` through the listener.
async fn stand_in(url: &str) -> (rocket::tokio::net::TcpListener, String, String) {
    let scheme = url.find("://").map_or(0, |i| i + 3);
    let end = url[scheme..]
        .find(['/', '?'])
        .map_or(url.len(), |i| scheme + i);
    let at = url[scheme..end]
        .rfind('@')
        .map_or(scheme, |i| scheme + i + 1);
    let server = match &url[at..end] {
        hp if hp.contains(':') => hp.to_string(),
        host => format!("{host}:5432"),
    };
    let listener = rocket::tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap();
    let proxied = format!(
        "{}127.0.0.1:{}{}",
        &url[..at],
        listener.local_addr().unwrap().port(),
        &url[end..]
    );
    (listener, server, proxied)
}

/// A proxy on 127.0.0.1 in front of the server of `url` that stops passing bytes either way
/// while the returned flag is set, as a server that stopped answering would. Returns `url`
/// through the proxy, and the flag.
pub async fn freezable_proxy(url: &str) -> (String, Arc<AtomicBool>) {
    use rocket::tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use rocket::tokio::net::TcpStream;

    async fn pass(
        mut from: impl AsyncRead + Unpin,
        mut to: impl AsyncWrite + Unpin,
        frozen: Arc<AtomicBool>,
    ) {
        let mut chunk = [0u8; 8192];
        loop {
            let n = match from.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            while frozen.load(Ordering::SeqCst) {
                rocket::tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            if to.write_all(&chunk[..n]).await.is_err() {
                break;
            }
        }
    }

    let (listener, server, proxied) = stand_in(url).await;
    let frozen = Arc::new(AtomicBool::new(false));
    let flag = frozen.clone();
    rocket::tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(upstream) = TcpStream::connect(&server).await else {
                continue;
            };
            let (from_client, to_client) = client.into_split();
            let (from_server, to_server) = upstream.into_split();
            rocket::tokio::spawn(pass(from_server, to_client, flag.clone()));
            rocket::tokio::spawn(pass(from_client, to_server, flag.clone()));
        }
    });
    (proxied, frozen)
}

/// A proxy on 127.0.0.1 in front of the server of `url` that counts sqlx's checks of pooled
/// connections: a `Sync` message on its own, ending no statement (every statement of the
/// extended protocol, its preparation included, ends with a `Sync` after its own messages).
/// Returns `url` through the proxy, and the count.
pub async fn check_counting_proxy(url: &str) -> (String, Arc<AtomicUsize>) {
    use rocket::tokio::io::{AsyncReadExt, AsyncWriteExt};
    use rocket::tokio::net::TcpStream;

    let (listener, server, proxied) = stand_in(url).await;
    let checks = Arc::new(AtomicUsize::new(0));
    let counted = checks.clone();
    rocket::tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(upstream) = TcpStream::connect(&server).await else {
                continue;
            };
            let (mut from_client, mut to_client) = client.into_split();
            let (mut from_server, mut to_server) = upstream.into_split();
            rocket::tokio::spawn(async move {
                let _ = rocket::tokio::io::copy(&mut from_server, &mut to_client).await;
            });
            let counted = counted.clone();
            rocket::tokio::spawn(async move {
                // Untyped messages (SSL request, startup) until the startup message, then
                // typed ones: a type byte and a length that counts itself.
                let (mut pending, mut started, mut chunk) = (Vec::new(), false, [0u8; 8192]);
                // The type of the last typed message: a round trip ends with a `Sync` (`S`) or a
                // simple query (`Q`).
                let mut last: Option<u8> = None;
                loop {
                    let n = match from_client.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if to_server.write_all(&chunk[..n]).await.is_err() {
                        break;
                    }
                    pending.extend_from_slice(&chunk[..n]);
                    loop {
                        let skip = usize::from(started);
                        let Some(len) = pending.get(skip..skip + 4) else {
                            break;
                        };
                        let whole = skip + u32::from_be_bytes(len.try_into().unwrap()) as usize;
                        if pending.len() < whole {
                            break;
                        }
                        if started {
                            let kind = pending[0];
                            if kind == b'S' && matches!(last, None | Some(b'S') | Some(b'Q')) {
                                counted.fetch_add(1, Ordering::SeqCst);
                            }
                            last = Some(kind);
                        }
                        // Protocol 3.0 in the untyped message: the startup message.
                        started |= !started && pending.get(4..8) == Some(&[0, 3, 0, 0][..]);
                        pending.drain(..whole);
                    }
                }
            });
        }
    });
    (proxied, checks)
}
