//! The Redis store against a real server: the conformance suite, its configuration, what it
//! keeps in Redis, and what it does when Redis goes away. `scripts/test` starts a throwaway
//! `redis-server` and sets `REDIS_URL`; each test writes under a key prefix of its own.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{
    app, assert_store_refused, figment, free_port, get_with, launch_error, post_with, store_config,
    TempDir, START,
};
use rocket::local::asynchronous::Client;
use rocket::serde::json::json;
use rocket_db_pools::deadpool_redis::redis::{self, AsyncCommands};
use rocket_db_pools::deadpool_redis::Pool;
use rocket_db_pools::Database;
use rocket_server_sessions::config::{RedisStoreConfig, StoreConfig};
use rocket_server_sessions::store::{ChangeSet, RedisStore, SessionStore};
use rocket_server_sessions::store_conformance;
use rocket_server_sessions::testing::{id_of, key, TTL};
use rocket_server_sessions::{ManualClock, StoreErrorKind};

/// The server the tests use. Without one, the tests fail and say how to get one.
fn server_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| {
        panic!(
            "the Redis tests need a server: run `scripts/test` (it installs redis-server if \
             needed and starts a throwaway one), or set REDIS_URL to a server they may write to"
        )
    })
}

/// A key prefix no other test uses.
fn fresh_prefix() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "rss-test-{}-{}:",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

fn config(prefix: &str, indexed_keys: &[&str]) -> RedisStoreConfig {
    RedisStoreConfig {
        database: "sessions".into(),
        ttl: TTL,
        key_prefix: prefix.into(),
        indexed_keys: indexed_keys.iter().map(|k| k.to_string()).collect(),
    }
}

async fn pool(url: &str) -> Pool {
    let figment = rocket::figment::Figment::new().merge(("databases.sessions.url", url));
    RedisStore::pool_from_figment(&figment, "sessions")
        .await
        .expect("the pool is made")
}

async fn store(prefix: &str, indexed_keys: &[&str]) -> RedisStore {
    RedisStore::new(pool(&server_url()).await, &config(prefix, indexed_keys))
        .await
        .expect("the store opens")
}

/// A direct connection to the test server, to look at what the store wrote.
async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(server_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("connects to REDIS_URL")
}

async fn plain() -> Arc<dyn SessionStore> {
    Arc::new(store(&fresh_prefix(), &[]).await)
}

store_conformance!(plain);

/// The same suite on a store whose `user_id` (the key the suite finds sessions by) is indexed.
mod indexed_keys {
    use super::*;

    async fn indexed() -> Arc<dyn SessionStore> {
        Arc::new(store(&fresh_prefix(), &["user_id"]).await)
    }

    store_conformance!(indexed);
}

/// The test app's configuration with the Redis store at `url` under `prefix`.
fn configured(url: &str, prefix: &str) -> rocket::figment::Figment {
    figment(json!({ "store": {
        "kind": "redis", "database": "sessions", "ttl": TTL, "key_prefix": prefix
    } }))
    .merge(("databases.sessions.url", url))
    .merge(("databases.sessions.connect_timeout", 1))
}

/// Every key under `prefix`.
async fn keys(prefix: &str) -> Vec<String> {
    let mut found: Vec<String> = redis().await.keys(format!("{prefix}*")).await.unwrap();
    found.sort();
    found
}

#[rocket::async_test]
async fn the_redis_store_is_chosen_by_configuration_alone_one_hash_per_session_with_its_ttl() {
    let prefix = fresh_prefix();
    let clock = ManualClock::new(START);
    let client = Client::untracked(app(configured(&server_url(), &prefix), &clock))
        .await
        .expect("launches on Redis");
    let cookie = get_with(&client, "/count", None).await.cookie.unwrap();
    assert_eq!(get_with(&client, "/count", Some(&cookie)).await.body, "2");
    let id = id_of(&client, &cookie).await;
    // One hash, filed under the digest of the id (never the id), expiring by Redis's TTL.
    let hash = format!("{prefix}s:{}", hex(&id.store_key().0));
    assert_eq!(keys(&prefix).await, [hash.as_str()]);
    let mut conn = redis().await;
    let ttl: i64 = conn.ttl(&hash).await.unwrap();
    assert!(ttl > 0 && ttl <= TTL as i64, "TTL {ttl}");
    let mut fields: Vec<String> = conn.hkeys(&hash).await.unwrap();
    fields.sort();
    assert_eq!(fields, ["=count", "active", "created", "expires"]);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[rocket::async_test]
async fn index_sets_follow_values_cycles_destruction_and_expiry() {
    let prefix = fresh_prefix();
    let store = store(&prefix, &["user_id"]).await;
    let mut conn = redis().await;
    let set_of = |value: &str| {
        let prefix = prefix.clone();
        let value = value.to_string();
        async move {
            let mut conn = redis().await;
            let digest: String = redis::cmd("EVAL")
                .arg("return redis.sha1hex(ARGV[1])")
                .arg(0)
                .arg(&value)
                .query_async(&mut conn)
                .await
                .unwrap();
            let set = format!("{prefix}i:user_id:{digest}");
            let mut members: Vec<String> = conn.zrange(&set, 0, -1).await.unwrap();
            members.sort();
            let ttl: i64 = conn.ttl(&set).await.unwrap();
            (members, ttl)
        }
    };
    let user = |id: &str| {
        let mut c = ChangeSet::new();
        c.set("user_id", id.as_bytes().to_vec());
        c
    };
    let (one, two) = (hex(&key(1).0), hex(&key(2).0));
    assert!(store
        .create(&key(1), START, &user("42"), START)
        .await
        .unwrap());
    let (members, ttl) = set_of("42").await;
    assert_eq!(members, [one.as_str()]);
    assert!(
        ttl > 0 && ttl <= TTL as i64,
        "the set expires with its sessions: {ttl}"
    );
    // A new value moves the session to that value's set.
    assert!(store.update(&key(1), &user("7"), START + 1).await.unwrap());
    assert_eq!(set_of("42").await.0, Vec::<String>::new());
    assert_eq!(set_of("7").await.0, [one.as_str()]);
    // A cycle files it under its new key.
    assert!(store
        .cycle(&key(1), &key(2), &ChangeSet::new(), START + 2)
        .await
        .unwrap());
    assert_eq!(set_of("7").await.0, [two.as_str()]);
    // A session Redis expired leaves the set at the next lookup.
    assert!(store
        .create(&key(3), START, &user("7"), START)
        .await
        .unwrap());
    let _: () = conn
        .del(format!("{prefix}s:{}", hex(&key(3).0)))
        .await
        .unwrap();
    let listed = store.list_where("user_id", b"7", START + 2).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(set_of("7").await.0, [two.as_str()]);
    // Destroyed: out of the set.
    store.destroy(&key(2)).await.unwrap();
    assert_eq!(set_of("7").await.0, Vec::<String>::new());
    assert_eq!(keys(&prefix).await, Vec::<String>::new());
}

#[rocket::async_test]
async fn stored_bytes_that_are_not_the_stores_are_an_error_not_a_session() {
    let prefix = fresh_prefix();
    let store = store(&prefix, &[]).await;
    let mut c = ChangeSet::new();
    c.set("a", vec![1]);
    assert!(store.create(&key(1), START, &c, START).await.unwrap());
    let hash = format!("{prefix}s:{}", hex(&key(1).0));
    let mut conn = redis().await;
    let _: () = conn.hset(&hash, "expires", "soon").await.unwrap();
    let e = store.load(&key(1), START).await.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Corrupt);
    // A key of another type under the session's name.
    let _: () = conn.del(&hash).await.unwrap();
    // With an expiry, as the store's own keys have, so that it does not outlive the test.
    let _: () = conn.set_ex(&hash, "a string", TTL).await.unwrap();
    assert!(store.load(&key(1), START).await.is_err());
    assert!(store.update(&key(1), &c, START).await.is_err());
}

#[rocket::async_test]
async fn scripts_flushed_from_redis_are_sent_again() {
    let prefix = fresh_prefix();
    let store = store(&prefix, &[]).await;
    let mut c = ChangeSet::new();
    c.set("a", vec![1]);
    assert!(store.create(&key(1), START, &c, START).await.unwrap());
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut redis().await)
        .await
        .unwrap();
    c.set("b", vec![2]);
    assert!(store.update(&key(1), &c, START + 1).await.unwrap());
    let found = store.load(&key(1), START + 1).await.unwrap().unwrap();
    assert_eq!(found.data.len(), 2);
}

/// A throwaway server of this test's own, which it stops and starts again.
struct OwnServer {
    dir: TempDir,
    port: u16,
}

impl OwnServer {
    fn new() -> OwnServer {
        let server = OwnServer {
            dir: TempDir::new("redis-own"),
            port: free_port(),
        };
        server.start();
        server
    }

    fn script(&self, verb: &str) -> std::process::Output {
        let mut args = vec![verb.to_string(), self.dir.0.display().to_string()];
        if verb == "start" {
            args.push(self.port.to_string());
        }
        let done = std::process::Command::new("scripts/redis")
            .args(&args)
            .output()
            .expect("scripts/redis runs");
        assert!(
            done.status.success(),
            "{}",
            String::from_utf8_lossy(&done.stderr)
        );
        done
    }

    fn start(&self) {
        self.script("start");
    }

    /// Stops it at once, as a crash would.
    fn kill(&self) {
        self.script("kill");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = std::process::Command::new("scripts/redis")
            .args(["kill", self.dir.0.to_str().unwrap()])
            .status();
    }
}

#[rocket::async_test]
async fn a_redis_that_goes_away_gets_503_and_one_that_comes_back_is_used_without_a_restart() {
    let server = OwnServer::new();
    let prefix = fresh_prefix();
    let clock = ManualClock::new(START);
    let client = Client::untracked(app(configured(&server.url(), &prefix), &clock))
        .await
        .expect("launches on Redis");
    let cookie = get_with(&client, "/count", None).await.cookie.unwrap();
    assert_eq!(get_with(&client, "/count", Some(&cookie)).await.body, "2");

    server.kill();
    let started = std::time::Instant::now();
    let down = get_with(&client, "/count", Some(&cookie)).await;
    assert_eq!(down.status.code, 503);
    assert!(started.elapsed() < std::time::Duration::from_secs(4));

    // Back (empty: this server keeps nothing on disk): the app reconnects by itself, once the
    // breaker's probe finds Redis answering.
    server.start();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let reply = get_with(&client, "/count", None).await;
        if reply.status.code == 200 {
            assert_eq!(reply.body, "1");
            break;
        }
        assert_eq!(reply.status.code, 503);
        assert!(std::time::Instant::now() < deadline, "never recovered");
        // The probe runs on its own schedule (every 0.1 to 1 s): ask again after a while.
        rocket::tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// How many times the server has run each command so far (`INFO commandstats`), by name.
async fn command_calls(
    conn: &mut redis::aio::MultiplexedConnection,
) -> std::collections::HashMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|l| {
            let (name, stats) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

/// On a server of its own, where nothing else sends commands: a load is one `HGETALL`, and
/// each write (create, update, cycle, destroy) one `EVALSHA`, whatever its changes and indexed
/// keys; the commands a script runs inside Redis cost no round trip. Counted by Redis, less
/// the `INFO` calls that read the counts.
#[rocket::async_test]
async fn a_load_is_one_hgetall_and_a_write_one_evalsha() {
    let server = OwnServer::new();
    let store = RedisStore::new(
        pool(&server.url()).await,
        &config(&fresh_prefix(), &["user_id"]),
    )
    .await
    .unwrap();
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut c = ChangeSet::new();
    c.set("user_id", b"42".to_vec());
    c.set("theme", b"dark".to_vec());
    c.remove("cart");
    // The round-trip commands: what the client sends, never what a script runs.
    let sent = |calls: &std::collections::HashMap<String, u64>| {
        ["hgetall", "evalsha", "eval", "script|load", "ping"]
            .map(|name| calls.get(name).copied().unwrap_or(0))
    };
    let mut before = sent(&command_calls(&mut conn).await);
    let mut deltas = Vec::new();
    for step in 0..5 {
        match step {
            0 => assert!(store.create(&key(1), START, &c, START).await.unwrap()),
            1 => assert!(store.load(&key(1), START).await.unwrap().is_some()),
            2 => assert!(store.update(&key(1), &c, START + 1).await.unwrap()),
            3 => assert!(store.cycle(&key(1), &key(2), &c, START + 2).await.unwrap()),
            _ => store.destroy(&key(2)).await.unwrap(),
        }
        let after = sent(&command_calls(&mut conn).await);
        deltas.push(std::array::from_fn::<u64, 5, _>(|i| after[i] - before[i]));
        before = after;
    }
    let (load, write) = ([1, 0, 0, 0, 0], [0, 1, 0, 0, 0]);
    assert_eq!(
        deltas,
        [write, load, write, write, write],
        "create, load, update, cycle, destroy"
    );

    // An indexed key is found through its set, one script call and no SCAN; another key by
    // scanning the store's sessions.
    assert!(store.create(&key(3), START, &c, START).await.unwrap());
    let scans =
        |calls: &std::collections::HashMap<String, u64>| calls.get("scan").copied().unwrap_or(0);
    let before = command_calls(&mut conn).await;
    assert_eq!(
        store
            .list_where("user_id", b"42", START)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.destroy_where("user_id", b"42").await.unwrap(), 1);
    let after = command_calls(&mut conn).await;
    assert_eq!(scans(&after), scans(&before), "an indexed lookup scanned");
    assert_eq!(sent(&after)[1] - sent(&before)[1], 2);
    assert!(store.create(&key(4), START, &c, START).await.unwrap());
    assert_eq!(
        store
            .list_where("theme", b"dark", START)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(scans(&command_calls(&mut conn).await) > scans(&after));

    // Concurrent calls share the store's one connection (pipelined on it): the server sees
    // two clients, the store and this test.
    let store = Arc::new(store);
    let loads: Vec<_> = (0..64)
        .map(|_| {
            let store = store.clone();
            rocket::tokio::spawn(async move { store.load(&key(4), START).await })
        })
        .collect();
    for load in loads {
        assert!(load.await.unwrap().unwrap().is_some());
    }
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(clients.lines().count(), 2, "{clients}");
}

#[rocket::async_test]
async fn a_redis_that_is_not_there_is_refused_at_launch() {
    let clock = ManualClock::new(START);
    let url = format!("redis://127.0.0.1:{}", free_port());
    launch_error(app(configured(&url, &fresh_prefix()), &clock)).await;
}

#[derive(Database)]
#[database("app")]
struct AppRedis(Pool);

#[rocket::async_test]
async fn the_store_can_run_on_the_apps_own_redis_pool() {
    let prefix = fresh_prefix();
    let clock = ManualClock::new(START);
    let figment = figment(json!({ "store": {
        "kind": "redis", "database": "unused", "ttl": TTL, "key_prefix": prefix
    } }))
    .merge(("databases.app.url", server_url()));
    let client = Client::untracked(common::app_on_database::<AppRedis>(figment, &clock))
        .await
        .expect("launches on the app's pool");
    let cookie = get_with(&client, "/count", None).await.cookie.unwrap();
    assert_eq!(get_with(&client, "/count", Some(&cookie)).await.body, "2");
    assert_eq!(keys(&prefix).await.len(), 1);
    assert_eq!(
        post_with(&client, "/destroy", Some(&cookie))
            .await
            .status
            .code,
        200
    );
    assert_eq!(keys(&prefix).await.len(), 0);
}

#[rocket::async_test]
async fn the_redis_settings_are_read_and_checked() {
    let StoreConfig::Redis(redis) = store_config(json!({ "kind": "redis" })).unwrap().store else {
        panic!("not the Redis store");
    };
    assert_eq!(
        redis,
        RedisStoreConfig {
            ttl: 604_800,
            ..config("rocket_sessions:", &[])
        }
    );
    for (store, key) in [
        (
            json!({ "kind": "redis", "sweep_interval": 60 }),
            "store.sweep_interval",
        ),
        (json!({ "kind": "redis", "cache": 10 }), "store.cache"),
        (json!({ "kind": "redis", "migrate": true }), "store.migrate"),
        (
            json!({ "kind": "redis", "key_prefix": "" }),
            "store.key_prefix",
        ),
        (
            json!({ "kind": "redis", "indexed_keys": [""] }),
            "store.indexed_keys",
        ),
        (
            json!({ "kind": "postgres", "key_prefix": "x" }),
            "store.key_prefix",
        ),
        (json!({ "kind": "mongo" }), "store.kind"),
    ] {
        assert_store_refused(store, key);
    }
}
