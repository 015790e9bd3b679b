//! The SQLite store: the conformance suite, its configuration, and what one file shared by
//! several pools (as several processes share it) does. Files live in temporary folders.

mod common;

use std::sync::Arc;

use common::{
    app, assert_store_refused, figment, get_with, launch_error, post_with, store_config, TempDir,
    START,
};
use rocket::local::asynchronous::Client;
use rocket::serde::json::json;
use rocket_db_pools::sqlx::{self, SqlitePool};
use rocket_db_pools::Database;
use rocket_server_sessions::config::{SqliteStoreConfig, StoreConfig, Synchronous};
use rocket_server_sessions::store::{ChangeSet, SessionStore, SqliteStore};
use rocket_server_sessions::store_conformance;
use rocket_server_sessions::testing::{id_of, key, TTL};
use rocket_server_sessions::{ManualClock, Sessions, StoreErrorKind};

fn config(indexed_keys: &[&str]) -> SqliteStoreConfig {
    SqliteStoreConfig {
        database: "sessions".into(),
        ttl: TTL,
        migrate: true,
        synchronous: Synchronous::Full,
        busy_timeout: 5,
        sweep_interval: 60,
        sweep_batch: 1000,
        indexed_keys: indexed_keys.iter().map(|k| k.to_string()).collect(),
    }
}

/// The store's own pool on `file`, as the fairing opens it.
async fn pool(file: &std::path::Path, config: &SqliteStoreConfig) -> SqlitePool {
    let figment = rocket::figment::Figment::new().merge((
        "databases.sessions.url",
        format!("sqlite://{}", file.display()),
    ));
    SqliteStore::pool_from_figment(&figment, config)
        .await
        .expect("the pool opens")
}

async fn store_on(file: &std::path::Path, config: &SqliteStoreConfig) -> SqliteStore {
    SqliteStore::new(pool(file, config).await, config)
        .await
        .expect("the store opens")
}

/// A store on a new file, whose folder lasts as long as the test.
async fn fresh(indexed_keys: &[&str]) -> SqliteStore {
    let file = TempDir::for_this_test("sqlite").join("sessions.db");
    store_on(&file, &config(indexed_keys)).await
}

async fn sqlite() -> Arc<dyn SessionStore> {
    Arc::new(fresh(&[]).await)
}

store_conformance!(sqlite);

/// The same suite on a store whose `user_id` (the key the suite finds sessions by) is indexed.
mod indexed_keys {
    use super::*;

    async fn indexed() -> Arc<dyn SessionStore> {
        Arc::new(fresh(&["user_id"]).await)
    }

    store_conformance!(indexed);
}

/// The test app's configuration with the SQLite store on `file`.
fn configured(
    file: &std::path::Path,
    store: rocket::serde::json::Value,
) -> rocket::figment::Figment {
    let mut table = json!({ "kind": "sqlite", "database": "sessions", "ttl": TTL });
    for (k, v) in store.as_object().unwrap() {
        table[k] = v.clone();
    }
    figment(json!({ "store": table })).merge((
        "databases.sessions.url",
        format!("sqlite://{}", file.display()),
    ))
}

async fn count(pool: &SqlitePool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[rocket::async_test]
async fn the_sqlite_store_is_chosen_by_configuration_alone_and_outlives_the_app() {
    let dir = TempDir::new("sqlite-config");
    let file = dir.path("sessions.db");
    let clock = ManualClock::new(START);
    let client = Client::untracked(app(configured(&file, json!({})), &clock))
        .await
        .expect("launches on SQLite");
    let cookie = get_with(&client, "/count", None).await.cookie.unwrap();
    assert_eq!(get_with(&client, "/count", Some(&cookie)).await.body, "2");
    // Ids are hashed at rest: the file holds the digest of the cookie's id, never the id.
    let id = id_of(&client, &cookie).await;
    client.terminate().await;

    let pool = pool(&file, &config(&[])).await;
    let keys: Vec<Vec<u8>> = sqlx::query_scalar("SELECT key FROM rocket_sessions")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(keys, [id.store_key().0.to_vec()]);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM rocket_session_data").await,
        1
    );

    // A new app on the same file finds the session.
    let client = Client::untracked(app(configured(&file, json!({})), &clock))
        .await
        .expect("launches again");
    assert_eq!(get_with(&client, "/count", Some(&cookie)).await.body, "3");
}

#[rocket::async_test]
async fn the_file_is_in_wal_mode_with_the_configured_durability() {
    let dir = TempDir::new("sqlite-pragmas");
    for (synchronous, expected) in [(Synchronous::Full, 2), (Synchronous::Normal, 1)] {
        let config = SqliteStoreConfig {
            synchronous,
            ..config(&[])
        };
        let store = store_on(&dir.path(&format!("{synchronous:?}.db")), &config).await;
        let mut conn = store.pool().acquire().await.unwrap();
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        let level: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!((journal.as_str(), level, busy), ("wal", expected, 5000));
    }
}

#[rocket::async_test]
async fn the_schema_is_bookkept_apart_from_the_apps_migrations_and_applies_once() {
    let dir = TempDir::new("sqlite-schema");
    let file = dir.path("sessions.db");
    let first = store_on(&file, &config(&["user_id"])).await;
    let second = store_on(&file, &config(&["user_id"])).await;
    let pool = second.pool();
    assert_eq!(
        count(pool, "SELECT count(*) FROM rocket_sessions_schema").await,
        1
    );
    assert_eq!(
        count(
            pool,
            "SELECT count(*) FROM sqlite_master WHERE name = '_sqlx_migrations'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            pool,
            "SELECT count(*) FROM sqlite_master WHERE type = 'index' \
             AND name LIKE 'rocket_session_data_by_%'"
        )
        .await,
        1
    );
    drop(first);
}

#[rocket::async_test]
async fn an_indexed_key_is_found_through_its_index_and_another_is_not() {
    let store = fresh(&["user_id"]).await;
    for plan in store.plans_of_where("user_id").await.unwrap() {
        assert!(
            plan.contains("rocket_session_data_by_"),
            "not through the index: {plan}"
        );
    }
    for plan in store.plans_of_where("theme").await.unwrap() {
        assert!(
            !plan.contains("rocket_session_data_by_"),
            "an unindexed key uses another key's index: {plan}"
        );
    }
}

/// Two pools on one file, as two processes of one machine have: what one writes, the other
/// reads at once, and concurrent changes of different keys from both all persist.
#[rocket::async_test]
async fn two_pools_on_one_file_share_sessions_and_merge_changes() {
    let dir = TempDir::new("sqlite-two");
    let file = dir.path("sessions.db");
    let one = Arc::new(store_on(&file, &config(&[])).await);
    let two = Arc::new(store_on(&file, &config(&[])).await);
    let mut first = ChangeSet::new();
    first.set("n", vec![0]);
    assert!(one.create(&key(1), START, &first, START).await.unwrap());
    let mut writes = Vec::new();
    for i in 0..40u8 {
        let store = if i % 2 == 0 { one.clone() } else { two.clone() };
        writes.push(rocket::tokio::spawn(async move {
            let mut c = ChangeSet::new();
            c.set(format!("k{i}"), vec![i]);
            store.update(&key(1), &c, START + 1).await.unwrap()
        }));
    }
    for w in writes {
        assert!(w.await.unwrap());
    }
    let seen = two.load(&key(1), START + 1).await.unwrap().unwrap();
    assert_eq!(seen.data.len(), 41);
    one.destroy(&key(1)).await.unwrap();
    assert_eq!(two.load(&key(1), START + 1).await.unwrap(), None);
}

/// Concurrent writes share a commit, and each is answered only once it has committed: when the
/// commit cannot happen, every write of the group fails and none of them is there.
#[rocket::async_test]
async fn concurrent_writes_share_one_commit_and_fail_together() {
    let dir = TempDir::new("sqlite-group");
    let file = dir.path("sessions.db");
    let config = SqliteStoreConfig {
        busy_timeout: 1,
        ..config(&[])
    };
    let store = Arc::new(store_on(&file, &config).await);
    for i in 0..32 {
        assert!(store
            .create(&key(i), START, &ChangeSet::new(), START)
            .await
            .unwrap());
    }
    let update = |i: u8| {
        let store = store.clone();
        rocket::tokio::spawn(async move {
            let mut c = ChangeSet::new();
            c.set("n", vec![i]);
            store.update(&key(i), &c, START + 1).await
        })
    };
    let before = store.commits();
    let writes: Vec<_> = (0..32).map(update).collect();
    for w in writes {
        assert!(w.await.unwrap().unwrap());
    }
    let group = store.commits() - before;
    assert!(group < 32, "32 concurrent updates took {group} commits");

    // Another process holds the write lock past the busy timeout: the whole group fails.
    let other = pool(&file, &config).await;
    let mut conn = other.acquire().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *conn)
        .await
        .unwrap();
    let failed: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            rocket::tokio::spawn(async move {
                let mut c = ChangeSet::new();
                c.set("late", vec![i]);
                store.update(&key(i), &c, START + 2).await
            })
        })
        .collect();
    for w in failed {
        let e = w.await.unwrap().unwrap_err();
        assert_eq!(e.kind(), StoreErrorKind::Unavailable);
    }
    sqlx::query("ROLLBACK").execute(&mut *conn).await.unwrap();
    for i in 0..8 {
        let found = store.load(&key(i), START + 2).await.unwrap().unwrap();
        assert!(
            found.data.iter().all(|(k, _)| k != "late"),
            "a failed write is there"
        );
    }
}

/// A write that cannot get the file's write lock within the busy timeout answers 503, and the
/// session is as it was: nothing half-written.
#[rocket::async_test]
async fn a_write_held_off_past_the_busy_timeout_answers_503_and_loses_nothing() {
    let dir = TempDir::new("sqlite-busy");
    let file = dir.path("sessions.db");
    let clock = ManualClock::new(START);
    let client = Client::untracked(app(configured(&file, json!({ "busy_timeout": 1 })), &clock))
        .await
        .expect("launches on SQLite");
    let cookie = get_with(&client, "/count", None).await.cookie.unwrap();
    let id = id_of(&client, &cookie).await;
    // Another process holds the write lock.
    let other = pool(&file, &config(&[])).await;
    let mut conn = other.acquire().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *conn)
        .await
        .unwrap();
    let held = post_with(&client, "/set/theme/dark", Some(&cookie)).await;
    assert_eq!(held.status.code, 503);
    sqlx::query("ROLLBACK").execute(&mut *conn).await.unwrap();
    drop(conn);
    // The session is as the first request left it, read by the other process.
    let store = SqliteStore::new(other, &config(&[])).await.unwrap();
    let found = store.load(&id.store_key(), START).await.unwrap().unwrap();
    assert_eq!(
        found
            .data
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>(),
        ["count"]
    );
}

#[rocket::async_test]
async fn a_file_that_is_not_sqlite_is_refused_at_launch_and_left_as_it_is() {
    let dir = TempDir::new("sqlite-corrupt");
    let file = dir.path("sessions.db");
    let garbage = vec![0x5a; 8192];
    std::fs::write(&file, &garbage).unwrap();
    let clock = ManualClock::new(START);
    let e = launch_error(app(configured(&file, json!({})), &clock)).await;
    assert!(matches!(
        e.kind(),
        rocket::error::ErrorKind::FailedFairings(_)
    ));
    assert_eq!(std::fs::read(&file).unwrap(), garbage);
    // Store-level: the error says the file is corrupt.
    let figment = rocket::figment::Figment::new().merge((
        "databases.sessions.url",
        format!("sqlite://{}", file.display()),
    ));
    let opened = match SqliteStore::pool_from_figment(&figment, &config(&[])).await {
        Err(e) => Err(e),
        Ok(pool) => SqliteStore::new(pool, &config(&[])).await.map(|_| ()),
    };
    assert_eq!(opened.unwrap_err().kind(), StoreErrorKind::Corrupt);
}

#[rocket::async_test]
async fn a_file_in_a_missing_folder_is_refused_at_launch() {
    let dir = TempDir::new("sqlite-missing");
    let file = dir.path("no/such/folder/sessions.db");
    let clock = ManualClock::new(START);
    launch_error(app(configured(&file, json!({})), &clock)).await;
    assert!(!file.exists());
}

#[derive(Database)]
#[database("app")]
struct AppDb(sqlx::SqlitePool);

#[rocket::async_test]
async fn the_store_can_run_on_the_apps_own_sqlite_pool() {
    let dir = TempDir::new("sqlite-app");
    let url = format!("sqlite://{}?mode=rwc", dir.path("app.db").display());
    let clock = ManualClock::new(START);
    let figment =
        figment(json!({ "store": { "kind": "sqlite", "database": "unused", "ttl": TTL } }))
            .merge(("databases.app.url", &url));
    let client = Client::untracked(common::app_on_database::<AppDb>(figment, &clock))
        .await
        .expect("launches on the app's pool");
    let cookie = get_with(&client, "/count", None).await.cookie.unwrap();
    assert_eq!(get_with(&client, "/count", Some(&cookie)).await.body, "2");
    let pool = &**AppDb::fetch(client.rocket()).unwrap();
    assert_eq!(count(pool, "SELECT count(*) FROM rocket_sessions").await, 1);
}

#[rocket::async_test]
async fn a_pool_of_another_kind_than_the_store_is_refused_at_launch() {
    let dir = TempDir::new("sqlite-other-kind");
    let url = format!("sqlite://{}?mode=rwc", dir.path("app.db").display());
    let figment =
        figment(json!({ "store": { "kind": "redis" } })).merge(("databases.app.url", &url));
    let rocket = rocket::custom(figment)
        .attach(AppDb::init())
        .attach(Sessions::fairing().with_database::<AppDb>());
    launch_error(rocket).await;
}

#[rocket::async_test]
async fn the_sqlite_settings_are_read_and_checked() {
    let StoreConfig::Sqlite(sqlite) = store_config(json!({ "kind": "sqlite" })).unwrap().store
    else {
        panic!("not the SQLite store");
    };
    assert_eq!(
        sqlite,
        SqliteStoreConfig {
            ttl: 604_800,
            ..config(&[])
        }
    );
    let StoreConfig::Sqlite(sqlite) = store_config(json!({
        "kind": "sqlite", "synchronous": "normal", "busy_timeout": 2, "indexed_keys": ["user_id"]
    }))
    .unwrap()
    .store
    else {
        panic!("not the SQLite store");
    };
    assert_eq!(
        (sqlite.synchronous, sqlite.busy_timeout, sqlite.indexed_keys),
        (Synchronous::Normal, 2, vec!["user_id".to_string()])
    );
    for (store, key) in [
        (json!({ "kind": "sqlite", "cache": 10 }), "store.cache"),
        (
            json!({ "kind": "sqlite", "synchronous": "off" }),
            "store.synchronous",
        ),
        (
            json!({ "kind": "sqlite", "sweep_batch": 0 }),
            "store.sweep_batch",
        ),
        (
            json!({ "kind": "sqlite", "database": "" }),
            "store.database",
        ),
        (
            json!({ "kind": "sqlite", "key_prefix": "x" }),
            "store.key_prefix",
        ),
        (
            json!({ "kind": "memory", "synchronous": "full" }),
            "store.synchronous",
        ),
    ] {
        assert_store_refused(store, key);
    }
}
