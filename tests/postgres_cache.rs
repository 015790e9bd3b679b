//! The PostgreSQL store's local cache (`cache = N`) against a real server: it must behave as
//! the store without it does (the conformance suite), spare the round trips it exists to
//! spare, and never keep what another instance changed. Run through `scripts/test`, or with
//! DATABASE_URL set.

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pg::{self, fresh_database};
use common::*;
use rocket::serde::json::json;
use rocket_db_pools::sqlx;
use rocket_server_sessions::store::{ChangeSet, PostgresStore, SessionRecord, SessionStore};
use rocket_server_sessions::store_conformance;
use rocket_server_sessions::testing::{key, TTL};

/// A store on `url` with a cache of `cache` sessions (0: none), listening once it returns.
async fn store_on(url: &str, cache: usize) -> PostgresStore {
    let mut config = pg::config(TTL);
    config.cache = cache;
    let store = PostgresStore::new(pg::pool(url).await, &config)
        .await
        .unwrap();
    if cache > 0 {
        eventually("the cache listens", || async {
            store.cache_stats().unwrap().listening
        })
        .await;
    }
    store
}

/// A store on `url` with a cache of `cache` sessions, and one session in it: `key(1)`, its
/// `a` set to `old`.
async fn store_with_one(url: &str, cache: usize) -> PostgresStore {
    let store = store_on(url, cache).await;
    assert!(store
        .create(&key(1), START, &set("a", b"old"), START)
        .await
        .unwrap());
    store
}

async fn cached() -> Arc<dyn SessionStore> {
    Arc::new(store_on(&fresh_database().await, 1000).await)
}

store_conformance!(cached);

/// Asserts that what began at `since` took less than 3 s: room for a loaded machine, and still
/// below the waits the tests tell it from (a claim held 30 s, a statement's 5-s timeout).
fn assert_no_wait(since: Instant) {
    assert!(
        since.elapsed() < Duration::from_secs(3),
        "{:?}",
        since.elapsed()
    );
}

fn set(name: &str, value: &[u8]) -> ChangeSet {
    let mut changes = ChangeSet::new();
    changes.set(name, value.to_vec());
    changes
}

fn value_of(record: Option<SessionRecord>, name: &str) -> Option<Vec<u8>> {
    record?
        .data
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

#[rocket::async_test]
async fn a_cached_session_is_loaded_without_a_statement() {
    let store = store_on(&fresh_database().await, 1000).await;
    assert!(store
        .create(&key(1), START, &set("a", b"1"), START)
        .await
        .unwrap());

    let before = store.statements();
    for _ in 0..3 {
        let loaded = store.load(&key(1), START).await.unwrap();
        assert_eq!(value_of(loaded, "a"), Some(b"1".to_vec()));
    }
    assert_eq!(store.statements(), before, "a created session is cached");

    // Its own update is applied to the cache as it commits.
    assert!(store.update(&key(1), &set("a", b"2"), START).await.unwrap());
    let before = store.statements();
    let loaded = store.load(&key(1), START).await.unwrap();
    assert_eq!(value_of(loaded, "a"), Some(b"2".to_vec()));
    assert_eq!(store.statements(), before);
    assert!(store.cache_stats().unwrap().hits >= 4);

    // A cached session still expires.
    assert_eq!(store.load(&key(1), START + TTL).await.unwrap(), None);
}

#[rocket::async_test]
async fn without_a_cache_every_load_is_a_statement() {
    let store = store_on(&fresh_database().await, 0).await;
    assert_eq!(store.cache_stats(), None);
    assert!(store
        .create(&key(1), START, &set("a", b"1"), START)
        .await
        .unwrap());
    let before = store.statements();
    store.load(&key(1), START).await.unwrap();
    store.load(&key(1), START).await.unwrap();
    assert_eq!(store.statements() - before, 2);
}

async fn a_of(store: &PostgresStore, n: u8) -> Option<Vec<u8>> {
    value_of(store.load(&key(n), START).await.unwrap(), "a")
}

async fn gone(store: &PostgresStore, n: u8) -> bool {
    store.load(&key(n), START).await.unwrap().is_none()
}

#[rocket::async_test]
async fn a_cache_serves_only_while_no_other_instance_is_alive_and_never_anything_stale() {
    let url = fresh_database().await;
    let cached = &store_on(&url, 1000).await;
    assert!(
        cached.cache_stats().unwrap().holding,
        "alone: it holds the claim"
    );

    for n in 1..=4 {
        assert!(cached
            .create(&key(n), START, &set("a", b"old"), START)
            .await
            .unwrap());
    }
    cached
        .create(&key(9), START, &set("role", b"admin"), START)
        .await
        .unwrap();
    let before = cached.statements();
    assert_eq!(a_of(cached, 1).await, Some(b"old".to_vec()));
    assert_eq!(cached.statements(), before, "served from the cache");

    // Another instance starts, and changes sessions at once. Its changes wait until the
    // cache has stopped serving; after each, the cached instance reads what it wrote.
    let other = store_on(&url, 0).await;
    assert!(other
        .update(&key(1), &set("a", b"new"), START)
        .await
        .unwrap());
    assert!(!cached.cache_stats().unwrap().holding);
    assert_eq!(a_of(cached, 1).await, Some(b"new".to_vec()));

    other.destroy(&key(2)).await.unwrap();
    assert!(gone(cached, 2).await);

    assert!(other
        .cycle(&key(3), &key(33), &ChangeSet::new(), START)
        .await
        .unwrap());
    assert!(gone(cached, 3).await);
    assert_eq!(a_of(cached, 33).await, Some(b"old".to_vec()));

    assert_eq!(other.destroy_where("role", b"admin").await.unwrap(), 1);
    assert!(gone(cached, 9).await);

    // While both run, neither serves from a cache: every load is a statement.
    let before = cached.statements();
    assert_eq!(a_of(cached, 4).await, Some(b"old".to_vec()));
    assert_eq!(cached.statements(), before + 1);

    // The other instance shuts down: the cache takes the claim again, starting empty.
    other.close().await.unwrap();
    eventually("the claim is taken again", || async {
        cached.cache_stats().unwrap().holding
    })
    .await;
    assert_eq!(cached.cache_stats().unwrap().claims, 2);
    assert_eq!(a_of(cached, 4).await, Some(b"old".to_vec()));
    let before = cached.statements();
    assert_eq!(a_of(cached, 4).await, Some(b"old".to_vec()));
    assert_eq!(cached.statements(), before, "served from the cache again");
}

/// Makes a claim as an instance that does not exist would: holding for `secs` more seconds.
async fn foreign_claim(url: &str, secs: f64) {
    sqlx::query(
        "UPDATE rocket_sessions_claim
            SET holder = 42, until = clock_timestamp() + $1 * interval '1 second',
                epoch = epoch + 1",
    )
    .bind(secs)
    .execute(&pg::pool(url).await)
    .await
    .unwrap();
}

#[rocket::async_test]
async fn a_change_waits_until_another_instances_claim_lapses() {
    let url = fresh_database().await;
    let store = store_with_one(&url, 0).await;
    // A holder that went away without giving its claim up: nobody answers the request to.
    foreign_claim(&url, 2.0).await;
    let started = Instant::now();
    assert!(store
        .update(&key(1), &set("a", b"new"), START)
        .await
        .unwrap());
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "the change was made while the claim was valid ({:?})",
        started.elapsed()
    );
    assert_eq!(a_of(&store, 1).await, Some(b"new".to_vec()));

    // Creating a session needs no wait: nobody can have cached a session that did not exist.
    foreign_claim(&url, 30.0).await;
    let started = Instant::now();
    assert!(store
        .create(&key(2), START, &set("a", b"x"), START)
        .await
        .unwrap());
    assert_no_wait(started);
    // A sweep leaves the sessions to the claim's holder.
    assert_eq!(store.sweep(START + 10 * TTL).await.unwrap(), 0);
    assert_eq!(a_of(&store, 2).await, Some(b"x".to_vec()));
}

/// A change held at the fence asks the holder to let go on the connection it already holds:
/// on a pool of 2 (the least a cache accepts, one of them listening) it needs no other, and
/// goes through once the claim lapses, instead of failing when the pool has none to give.
#[rocket::async_test]
async fn a_change_held_at_the_fence_needs_no_second_connection_from_a_pool_of_two() {
    let url = fresh_database().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(1))
        .connect(&url)
        .await
        .unwrap();
    let mut config = pg::config(TTL);
    config.cache = 1000;
    let store = PostgresStore::new(pool, &config).await.unwrap();
    eventually("the cache listens", || async {
        store.cache_stats().unwrap().listening
    })
    .await;
    assert!(store
        .create(&key(1), START, &set("a", b"old"), START)
        .await
        .unwrap());
    // Held longer than the pool's acquire timeout, by an instance that never lets go.
    foreign_claim(&url, 2.0).await;
    assert!(store
        .update(&key(1), &set("a", b"new"), START)
        .await
        .unwrap());
    assert_eq!(a_of(&store, 1).await, Some(b"new".to_vec()));
}

/// A holder that vanishes without giving the claim up (a crash) holds the others' changes back
/// until its lease lapses: at most 1.5 s after it last renewed it (`scripts/torture`'s
/// `crash_holder` kills one under load).
#[rocket::async_test]
async fn a_claim_lasts_at_most_a_second_and_a_half_past_its_last_renewal() {
    let url = fresh_database().await;
    let cached = store_on(&url, 1000).await;
    assert!(cached.cache_stats().unwrap().holding);
    let left: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM until - clock_timestamp())::float8 FROM rocket_sessions_claim",
    )
    .fetch_one(&pg::pool(&url).await)
    .await
    .unwrap();
    assert!(left > 0.0 && left <= 1.5, "{left} s left");
}

#[rocket::async_test]
async fn a_claim_that_is_never_given_up_fails_changes_as_unavailable_and_changes_nothing() {
    let url = fresh_database().await;
    let store = store_with_one(&url, 0).await;
    foreign_claim(&url, 3600.0).await;
    let started = Instant::now();
    let (one, two, changes) = (key(1), key(2), set("a", b"new"));
    let (updated, destroyed, cycled, destroyed_where) = rocket::tokio::join!(
        store.update(&one, &changes, START),
        store.destroy(&one),
        store.cycle(&one, &two, &changes, START),
        store.destroy_where("a", b"old"),
    );
    assert!(
        matches!(updated, Err(ref e) if e.is_unavailable()),
        "{updated:?}"
    );
    assert!(
        matches!(destroyed, Err(ref e) if e.is_unavailable()),
        "{destroyed:?}"
    );
    assert!(
        matches!(cycled, Err(ref e) if e.is_unavailable()),
        "{cycled:?}"
    );
    assert!(
        matches!(destroyed_where, Err(ref e) if e.is_unavailable()),
        "{destroyed_where:?}"
    );
    assert!(started.elapsed() >= Duration::from_secs(9));
    assert_eq!(a_of(&store, 1).await, Some(b"old".to_vec()));
}

#[rocket::async_test]
async fn a_holder_that_cannot_renew_its_claim_stops_serving_from_its_cache_before_it_lapses() {
    let url = fresh_database().await;
    let cached = store_with_one(&url, 1000).await;
    let before = cached.statements();
    assert_eq!(a_of(&cached, 1).await, Some(b"old".to_vec()));
    assert_eq!(cached.statements(), before, "served from the cache");

    // Hold the claim's row locked: the holder's renewals wait behind the lock.
    let admin = pg::pool(&url).await;
    let mut blocker = admin.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM rocket_sessions_claim FOR SHARE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let until: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM until - clock_timestamp())::float8 FROM rocket_sessions_claim",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    let lapses = Instant::now() + Duration::from_secs_f64(until);
    eventually("the cache stops serving", || async {
        !cached.cache_stats().unwrap().holding
    })
    .await;
    assert!(
        Instant::now() < lapses,
        "it stopped only once the claim had lapsed"
    );
    let before = cached.statements();
    assert_eq!(a_of(&cached, 1).await, Some(b"old".to_vec()));
    assert_eq!(cached.statements(), before + 1, "a load from the database");
    blocker.rollback().await.unwrap();
    eventually("the claim is held again", || async {
        cached.cache_stats().unwrap().holding
    })
    .await;
}

/// A transaction on `admin` that has called `rocket_sessions_edit_by_hand()`, as the README
/// says to before changing sessions by hand.
async fn edit_by_hand(admin: &sqlx::PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = admin.begin().await.unwrap();
    sqlx::query("SELECT rocket_sessions_edit_by_hand()")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

/// A change by hand in SQL made after `rocket_sessions_edit_by_hand()`, in its transaction, is
/// never served stale: right after it commits, the holder answers what the database holds,
/// for a change and for a deletion, time after time.
#[rocket::async_test]
async fn a_session_changed_or_deleted_by_hand_after_the_edit_function_is_never_served_stale() {
    let url = fresh_database().await;
    let cached = store_with_one(&url, 1000).await;
    let admin = pg::pool(&url).await;
    for (n, value) in [b"one", b"two", b"thr"].into_iter().enumerate() {
        // Served from the cache before the change.
        eventually("the claim is held", || async {
            cached.cache_stats().unwrap().holding
        })
        .await;
        assert!(cached.load(&key(1), START).await.unwrap().is_some());
        let before = cached.statements();
        assert!(cached.load(&key(1), START).await.unwrap().is_some());
        assert_eq!(
            cached.statements(),
            before,
            "served from the cache, round {n}"
        );

        let mut tx = edit_by_hand(&admin).await;
        sqlx::query("UPDATE rocket_session_data SET value = $1 WHERE name = 'a'")
            .bind(&value[..])
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(a_of(&cached, 1).await, Some(value.to_vec()), "round {n}");
    }

    let mut tx = edit_by_hand(&admin).await;
    sqlx::query("DELETE FROM rocket_sessions")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(
        gone(&cached, 1).await,
        "deleted by hand, never served again"
    );
}

/// The same through the API: the manager's store, as `PostgresStore`, hands out the
/// transaction; right after it commits, a request sees what it wrote.
#[rocket::async_test]
async fn over_http_a_session_changed_through_begin_edit_by_hand_is_never_served_stale() {
    let url = fresh_database().await;
    let clock = rocket_server_sessions::ManualClock::new(START);
    let client = cached_client(&url, &clock).await;
    let cookie = get_with(&client, "/count", None).await.cookie.unwrap();
    let manager = client
        .rocket()
        .state::<rocket_server_sessions::SessionManager>()
        .unwrap();
    let store = manager
        .store_as::<PostgresStore>()
        .expect("the configured store is PostgreSQL");
    for n in [100u8, 110, 120] {
        eventually("the claim is held", || async {
            store.cache_stats().unwrap().holding
        })
        .await;
        get_with(&client, "/peek", Some(&cookie)).await;
        let before = store.statements();
        get_with(&client, "/peek", Some(&cookie)).await;
        assert_eq!(store.statements(), before, "read from the cache");

        let mut tx = store.begin_edit_by_hand().await.unwrap();
        // A positive fixint: MessagePack's encoding of a number below 128 is that byte.
        sqlx::query("UPDATE rocket_session_data SET value = $1 WHERE name = 'count'")
            .bind(vec![n])
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(
            get_with(&client, "/peek", Some(&cookie)).await.body,
            n.to_string()
        );
    }
}

#[rocket::async_test]
async fn a_database_that_stops_answering_stops_the_cache_and_never_holds_up_shutdown() {
    let (url, frozen) = pg::freezable_proxy(&fresh_database().await).await;
    let cached = store_with_one(&url, 1000).await;
    frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    eventually("the cache stops serving", || async {
        !cached.cache_stats().unwrap().holding
    })
    .await;
    let started = Instant::now();
    let closed = cached.close().await;
    assert!(
        matches!(closed, Err(ref e) if e.is_unavailable()),
        "{closed:?}"
    );
    assert_no_wait(started);
}

#[rocket::async_test]
async fn an_instance_that_shuts_down_hands_the_claim_over_at_once() {
    let url = fresh_database().await;
    let first = store_on(&url, 1000).await;
    assert!(first.cache_stats().unwrap().holding);
    first.close().await.unwrap();
    assert!(!first.cache_stats().unwrap().holding);
    // Still answers, from the database.
    assert!(first
        .create(&key(1), START, &set("a", b"1"), START)
        .await
        .unwrap());
    let next = store_on(&url, 1000).await;
    assert!(
        next.cache_stats().unwrap().holding,
        "the next instance takes the claim as it starts"
    );
    let started = Instant::now();
    assert!(next.update(&key(1), &set("a", b"2"), START).await.unwrap());
    // Not the dead claim's lease: there is none to wait for.
    assert_no_wait(started);
}

#[rocket::async_test]
async fn a_cache_that_lost_its_listening_connection_serves_nothing_stale() {
    let url = fresh_database().await;
    let cached = store_with_one(&url, 1000).await;
    let other = store_on(&url, 0).await;
    assert!(cached.load(&key(1), START).await.unwrap().is_some());

    // Cut the cache's connection: requests to let go made until it reconnects never reach it.
    let admin = pg::pool(&url).await;
    let cut: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
          WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(cut, 1, "one listening connection");
    assert!(other
        .update(&key(1), &set("a", b"new"), START)
        .await
        .unwrap());

    eventually("the cache listens again", || async {
        let stats = cached.cache_stats().unwrap();
        stats.listening && stats.connections == 2
    })
    .await;
    let loaded = cached.load(&key(1), START).await.unwrap();
    assert_eq!(value_of(loaded, "a"), Some(b"new".to_vec()));
}

#[rocket::async_test]
async fn over_http_a_cached_read_costs_no_statement_and_a_write_one() {
    let store = Arc::new(store_on(&fresh_database().await, 1000).await);
    let (client, _clock) = client_with(store.clone(), json!({ "refresh_interval": 30 })).await;
    let cookie = get_with(&client, "/count", None).await.cookie.unwrap();

    let before = store.statements();
    assert_eq!(get_with(&client, "/count", Some(&cookie)).await.body, "2");
    assert_eq!(store.statements() - before, 1, "the flush alone");

    let before = store.statements();
    assert_eq!(get_with(&client, "/peek", Some(&cookie)).await.body, "2");
    assert_eq!(store.statements() - before, 0, "read from the cache");
}

/// The test app on `url`, its store configured as PostgreSQL with `cache = 100`, listening once
/// it returns.
async fn cached_client(
    url: &str,
    clock: &rocket_server_sessions::ManualClock,
) -> rocket::local::asynchronous::Client {
    let figment = figment(json!({ "store": {
        "kind": "postgres", "database": "sessions", "ttl": TTL, "cache": 100
    } }))
    .merge(("databases.sessions.url", url));
    let client = rocket::local::asynchronous::Client::untracked(app(figment, clock))
        .await
        .expect("launches with a cache");
    // The launch does not wait for the listener's connection, without which the cache serves
    // nothing: wait for it here, as `store_on` does.
    let store = client
        .rocket()
        .state::<rocket_server_sessions::SessionManager>()
        .and_then(|manager| manager.store_as::<PostgresStore>())
        .expect("the configured store is PostgreSQL");
    eventually("the cache listens", || async {
        store.cache_stats().unwrap().listening
    })
    .await;
    client
}

#[rocket::async_test]
async fn the_cache_is_chosen_by_configuration_and_its_claim_given_up_at_shutdown() {
    let url = fresh_database().await;
    let clock = rocket_server_sessions::ManualClock::new(START);
    let client = cached_client(&url, &clock).await;
    let cookie = get_with(&client, "/count", None).await.cookie.unwrap();
    assert_eq!(get_with(&client, "/count", Some(&cookie)).await.body, "2");
    let admin = pg::pool(&url).await;
    eventually("the configured cache listens", || async {
        let listening: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND query LIKE 'LISTEN%'",
        )
        .fetch_one(&admin)
        .await
        .unwrap();
        listening == 1
    })
    .await;
    // The claim's holder, and how many instances say they are alive.
    let state = || async {
        sqlx::query_as::<_, (Option<i64>, i64)>(
            "SELECT holder, (SELECT count(*) FROM rocket_sessions_instances)
               FROM rocket_sessions_claim",
        )
        .fetch_one(&admin)
        .await
        .unwrap()
    };
    let (holder, alive) = state().await;
    assert!(holder.is_some(), "the app holds the claim");
    assert_eq!(alive, 1);
    client.terminate().await;
    assert_eq!(state().await, (None, 0), "given up, and gone");
}

#[rocket::async_test]
async fn a_cache_on_a_pool_of_one_connection_is_refused() {
    let url = fresh_database().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    let mut config = pg::config(TTL);
    config.cache = 100;
    let refused = PostgresStore::new(pool, &config)
        .await
        .err()
        .expect("refused");
    assert!(
        refused.to_string().contains("store.cache")
            && refused.to_string().contains("store.cache = 0"),
        "the key, and how to do without: {refused}"
    );
}

#[rocket::async_test]
async fn two_caching_instances_over_http_each_see_the_others_writes() {
    let url = fresh_database().await;
    let clock = rocket_server_sessions::ManualClock::new(START);
    let (one, two) = (
        cached_client(&url, &clock).await,
        cached_client(&url, &clock).await,
    );
    let cookie = get_with(&one, "/count", None).await.cookie.unwrap();
    // Each instance counts in turn; before its turn it must have dropped its cached count.
    let mut expected = 1;
    for turn in 0..6 {
        let here = if turn % 2 == 0 { &two } else { &one };
        eventually("the other instance's write reaches this cache", || async {
            get_with(here, "/peek", Some(&cookie)).await.body == expected.to_string()
        })
        .await;
        expected += 1;
        assert_eq!(
            get_with(here, "/count", Some(&cookie)).await.body,
            expected.to_string()
        );
    }
}
