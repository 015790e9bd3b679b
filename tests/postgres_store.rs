//! The PostgreSQL store against a real server: the conformance suite, then what only a shared
//! database shows. Run through `scripts/test`, or with DATABASE_URL set.

#[macro_use]
mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;

use common::pg::{self, fresh_database, fresh_store, Cluster};
use common::*;
use rocket::http::Status;
use rocket::local::asynchronous::Client;
use rocket::serde::json::json;
use rocket_db_pools::sqlx::{self, Row};
use rocket_db_pools::Database;
use rocket_server_sessions::store::{ChangeSet, PostgresStore, SessionStore};
use rocket_server_sessions::store_conformance;
use rocket_server_sessions::testing::{key, TTL};
use rocket_server_sessions::{ManualClock, SessionId, Sessions, StoreErrorKind, StoreKey};

/// How many files `migrations/` holds: the store applies each once.
fn migrations() -> i64 {
    std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .filter(|f| f.as_ref().unwrap().path().extension() == Some("sql".as_ref()))
        .count() as i64
}

async fn postgres() -> Arc<dyn SessionStore> {
    Arc::new(fresh_store(TTL).await)
}

store_conformance!(postgres);

/// The same suite on a store whose `user_id` (the key the suite finds sessions by) is indexed.
mod indexed_keys {
    use super::*;

    async fn indexed() -> Arc<dyn SessionStore> {
        let mut config = pg::config(TTL);
        config.indexed_keys = vec!["user_id".into()];
        Arc::new(
            PostgresStore::new(pg::pool(&fresh_database().await).await, &config)
                .await
                .unwrap(),
        )
    }

    store_conformance!(indexed);
}

/// The test app on `url`, its store chosen by configuration alone.
fn configured(url: &str, store: rocket::serde::json::Value) -> rocket::figment::Figment {
    let mut table = json!({ "kind": "postgres", "database": "sessions", "ttl": TTL });
    for (k, v) in store.as_object().unwrap() {
        table[k] = v.clone();
    }
    figment(json!({ "store": table }))
        .merge(("databases.sessions.url", url))
        .merge(("databases.sessions.connect_timeout", 2))
}

async fn configured_client(url: &str, clock: &ManualClock) -> Client {
    Client::untracked(app(configured(url, json!({})), clock))
        .await
        .expect("launches on PostgreSQL")
}

async fn count(url: &str, sql: &str) -> i64 {
    let pool = pg::pool(url).await;
    sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap()
}

#[rocket::async_test]
async fn the_postgres_store_is_chosen_by_configuration_alone() {
    let url = fresh_database().await;
    let clock = ManualClock::new(START);
    let client = configured_client(&url, &clock).await;
    let cookie = get_with(&client, "/count", None).await.cookie.unwrap();
    assert_eq!(get_with(&client, "/count", Some(&cookie)).await.body, "2");
    assert_eq!(count(&url, "SELECT count(*) FROM rocket_sessions").await, 1);
    assert_eq!(
        count(&url, "SELECT count(*) FROM rocket_session_data").await,
        1
    );
}

#[derive(Database)]
#[database("app")]
struct AppDb(sqlx::PgPool);

#[rocket::async_test]
async fn the_store_can_run_on_the_apps_own_pool() {
    let url = fresh_database().await;
    let clock = ManualClock::new(START);
    let figment = figment(json!({ "store": { "kind": "postgres", "database": "unused" } }))
        .merge(("databases.app.url", &url));
    let rocket = rocket::custom(figment)
        .attach(AppDb::init())
        .attach(
            Sessions::fairing()
                .with_clock(clock)
                .with_database::<AppDb>(),
        )
        .mount("/", rocket::routes![]);
    let rocket = rocket.ignite().await.expect("launches on the app's pool");
    let mode: String = sqlx::query_scalar("SHOW plan_cache_mode")
        .fetch_one(&**AppDb::fetch(&rocket).unwrap())
        .await
        .unwrap();
    assert_eq!(
        mode, "auto",
        "the app's own connections are left as the app made them"
    );
    drop(rocket);
    assert_eq!(
        count(&url, "SELECT count(*) FROM rocket_sessions_schema").await,
        migrations()
    );
}

#[rocket::async_test]
async fn without_the_apps_database_attached_first_launch_is_refused() {
    let url = fresh_database().await;
    let figment =
        figment(json!({ "store": { "kind": "postgres" } })).merge(("databases.app.url", &url));
    let rocket = rocket::custom(figment)
        .attach(Sessions::fairing().with_database::<AppDb>())
        .attach(AppDb::init());
    launch_error(rocket).await;
}

#[rocket::async_test]
async fn launch_is_refused_when_the_database_is_unreachable() {
    let port = free_port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/nothing");
    let rocket = app(configured(&url, json!({})), &ManualClock::new(START));
    launch_error(rocket).await;
}

#[rocket::async_test]
async fn a_missing_or_unparsable_database_url_is_refused_naming_its_key() {
    async fn refusal(figment: &rocket::figment::Figment) -> String {
        let pool = PostgresStore::pool_from_figment(figment, "sessions").await;
        pool.unwrap_err().to_string()
    }
    let figment = rocket::figment::Figment::new();
    let missing = refusal(&figment).await;
    assert!(
        missing.contains("databases.sessions") && missing.contains("url"),
        "{missing}"
    );
    let figment = figment.merge(("databases.sessions.url", "postgres://u@h:no-port/db"));
    let unparsable = refusal(&figment).await;
    assert!(
        unparsable.contains("databases.sessions.url") && unparsable.contains("port"),
        "{unparsable}"
    );
}

#[rocket::async_test]
async fn migrations_are_idempotent_and_safe_when_instances_start_together() {
    let url = fresh_database().await;
    let starts = (0..4).map(|_| async {
        PostgresStore::new(pg::pool(&url).await, &pg::config(TTL))
            .await
            .unwrap()
    });
    rocket::futures::future::join_all(starts).await;
    PostgresStore::new(pg::pool(&url).await, &pg::config(TTL))
        .await
        .unwrap();
    assert_eq!(
        count(&url, "SELECT count(*) FROM rocket_sessions_schema").await,
        migrations()
    );
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM pg_tables WHERE tablename = '_sqlx_migrations'"
        )
        .await,
        0,
        "sqlx's own bookkeeping is not touched"
    );
}

#[rocket::async_test]
async fn an_app_with_its_own_sqlx_migrations_still_migrates() {
    let url = fresh_database().await;
    let dir = TempDir::new("app-migrations");
    std::fs::write(
        dir.path("20250101000000_users.sql"),
        "CREATE TABLE users (id bigint PRIMARY KEY);",
    )
    .unwrap();
    let pool = pg::pool(&url).await;
    let migrator = sqlx::migrate::Migrator::new(dir.0.as_path()).await.unwrap();
    migrator.run(&pool).await.unwrap();
    PostgresStore::new(pool.clone(), &pg::config(TTL))
        .await
        .unwrap();
    std::fs::write(
        dir.path("20250102000000_posts.sql"),
        "CREATE TABLE posts (id bigint PRIMARY KEY);",
    )
    .unwrap();
    let migrator = sqlx::migrate::Migrator::new(dir.0.as_path()).await.unwrap();
    migrator
        .run(&pool)
        .await
        .expect("our schema is not an unknown sqlx migration");
    assert_eq!(
        count(&url, "SELECT count(*) FROM _sqlx_migrations").await,
        2
    );
}

/// The persistence of the store's four tables, in name order: `p` logged, `u` unlogged.
async fn persistence(url: &str) -> String {
    let pool = pg::pool(url).await;
    let rows = sqlx::query(
        "SELECT relname::text, relpersistence::text FROM pg_class
          WHERE relname IN ('rocket_sessions', 'rocket_session_data',
                            'rocket_sessions_claim', 'rocket_sessions_instances')
          ORDER BY relname",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    rows.iter()
        .map(|r| r.get::<String, _>(1))
        .collect::<Vec<_>>()
        .join("")
}

fn unlogged_config() -> rocket_server_sessions::config::PostgresStoreConfig {
    let mut unlogged = pg::config(TTL);
    unlogged.unlogged = true;
    unlogged
}

#[rocket::async_test]
async fn tables_are_created_logged_by_default_and_unlogged_on_request() {
    let logged = fresh_database().await;
    PostgresStore::new(pg::pool(&logged).await, &pg::config(TTL))
        .await
        .unwrap();
    assert_eq!(persistence(&logged).await, "pppp");
    let unlogged = fresh_database().await;
    PostgresStore::new(pg::pool(&unlogged).await, &unlogged_config())
        .await
        .unwrap();
    // The claim's tables too: a change locks the claim's row.
    assert_eq!(persistence(&unlogged).await, "uuuu");
}

#[rocket::async_test]
async fn a_launch_never_rewrites_existing_tables_to_change_their_persistence() {
    let url = fresh_database().await;
    PostgresStore::new(pg::pool(&url).await, &pg::config(TTL))
        .await
        .unwrap();
    let e = PostgresStore::new(pg::pool(&url).await, &unlogged_config())
        .await
        .err()
        .expect("a launch with unlogged = true on logged tables is refused");
    let message = e.to_string();
    assert!(message.contains("`store.unlogged` is true"), "{message}");
    assert!(
        message.contains("set `store.unlogged = false`"),
        "{message}"
    );
    assert_eq!(persistence(&url).await, "pppp", "nothing was rewritten");

    // The statements the message gives change them, and the launch then goes through.
    let statements = &message[message.find("ALTER TABLE").unwrap()..];
    let pool = pg::pool(&url).await;
    for statement in statements.split_terminator(';') {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    assert_eq!(persistence(&url).await, "uuuu");
    PostgresStore::new(pg::pool(&url).await, &unlogged_config())
        .await
        .unwrap();
    let e = PostgresStore::new(pg::pool(&url).await, &pg::config(TTL))
        .await
        .err()
        .expect("and back: a launch with unlogged = false on unlogged tables is refused");
    assert!(e.to_string().contains("SET LOGGED"), "{e}");
    assert_eq!(persistence(&url).await, "uuuu");
}

#[rocket::async_test]
async fn the_database_holds_digests_of_ids_never_the_ids() {
    let url = fresh_database().await;
    let clock = ManualClock::new(START);
    let client = configured_client(&url, &clock).await;
    let cookie = post_with(&client, "/set/a/1", None).await.cookie.unwrap();
    let id: SessionId = id_of(&client, &cookie).await;
    let pool = pg::pool(&url).await;
    let keys: Vec<Vec<u8>> = sqlx::query_scalar("SELECT key FROM rocket_sessions")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(keys, vec![id.store_key().0.to_vec()]);
    let dump: String = sqlx::query_scalar(
        "SELECT string_agg(s::text || d::text, '') FROM rocket_sessions s JOIN rocket_session_data d ON d.session_id = s.id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let hex: String = id.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert!(!dump.contains(&hex), "{dump}");
    assert!(!dump.contains(&id.to_string()), "{dump}");
}

/// A pool on `url` made as the fairing makes its own, with `settings` of
/// `[databases.sessions]` over the defaults.
async fn own_pool(url: &str, settings: &[(&str, u64)]) -> sqlx::PgPool {
    let mut figment = rocket::figment::Figment::new().merge(("databases.sessions.url", url));
    for (key, value) in settings {
        figment = figment.merge((format!("databases.sessions.{key}"), value));
    }
    PostgresStore::pool_from_figment(&figment, "sessions")
        .await
        .unwrap()
}

/// A session created in `store` under the key of an id of bytes `byte`, holding `n`; its key,
/// and that change set, to write again.
async fn created(store: &PostgresStore, byte: u8) -> (StoreKey, ChangeSet) {
    let key = key(byte);
    let mut changes = ChangeSet::new();
    changes.set("n", vec![1]);
    assert!(store.create(&key, START, &changes, START).await.unwrap());
    (key, changes)
}

/// This machine's wall clock an hour ahead, in milliseconds: an instance whose clock runs
/// ahead of the database's.
fn an_hour_ahead() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.unwrap().as_millis() as u64 + 3_600_000
}

/// Expiry is judged by the database's clock: an instance whose clock runs an hour ahead, and
/// passes that clock's time, neither finds expired nor sweeps a session another instance
/// wrote a minute's lifetime to, and what it writes lives by the database's clock too.
#[rocket::async_test]
async fn an_instance_whose_clock_runs_ahead_judges_expiry_by_the_databases_clock() {
    let url = fresh_database().await;
    let on_time = PostgresStore::new(pg::pool(&url).await, &pg::config(60))
        .await
        .unwrap();
    let ahead =
        PostgresStore::with_wall_clock(pg::pool(&url).await, &pg::config(60), an_hour_ahead)
            .await
            .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let later = now + 3600; // the time by the clock that runs ahead
    let mut changes = ChangeSet::new();
    changes.set("n", vec![1]);
    assert!(on_time.create(&key(1), now, &changes, now).await.unwrap());
    assert!(ahead.load(&key(1), later).await.unwrap().is_some(), "live");
    assert_eq!(ahead.sweep(later).await.unwrap(), 0, "and not swept");
    assert!(ahead.update(&key(1), &changes, later).await.unwrap());

    assert!(ahead.create(&key(2), later, &changes, later).await.unwrap());
    let record = on_time.load(&key(2), now).await.unwrap().unwrap();
    assert!(
        record.expires <= now + 61,
        "a minute by the database's clock: {record:?}"
    );
    let record = ahead.load(&key(2), later).await.unwrap().unwrap();
    assert!(
        record.expires >= later + 59,
        "as the instance ahead counts it: {record:?}"
    );
    assert_eq!(on_time.sweep(now + 120).await.unwrap(), 2);
}

/// The fence leaves the claim's row alone: a change does not lock it (a row lock is a WAL
/// record, and with several instances' changes at once a MultiXact), unless an instance of an
/// earlier build, whose fence that lock is, may be running. That a claim held by another
/// instance still stops every kind of change is `postgres_cache`'s to show.
#[rocket::async_test]
async fn changes_pass_the_fence_without_locking_the_claims_row() {
    let url = fresh_database().await;
    let store = PostgresStore::new(pg::pool(&url).await, &pg::config(TTL))
        .await
        .unwrap();
    let (key, changes) = created(&store, 1).await;
    let admin = pg::pool(&url).await;
    let xmax = || async {
        sqlx::query_scalar::<_, String>("SELECT xmax::text FROM rocket_sessions_claim")
            .fetch_one(&admin)
            .await
            .unwrap()
    };
    let before = xmax().await;
    assert!(store.update(&key, &changes, START).await.unwrap());
    assert!(store
        .cycle(&key, &self::key(2), &changes, START)
        .await
        .unwrap());
    store.destroy(&self::key(2)).await.unwrap();
    assert_eq!(xmax().await, before, "no change locked the claim's row");

    // An instance of an earlier build ticks (it names no protocol): changes now take its fence,
    // the row lock its claim waits for, as well.
    sqlx::query(
        "INSERT INTO rocket_sessions_instances (instance, alive_until)
         VALUES (42, clock_timestamp() + interval '1 minute')",
    )
    .execute(&admin)
    .await
    .unwrap();
    let (key, changes) = created(&store, 3).await;
    assert!(store.update(&key, &changes, START).await.unwrap());
    assert_ne!(xmax().await, before, "the change locked the claim's row");
}

/// No change is announced (`NOTIFY`): PostgreSQL serialises the commits of notifying
/// transactions, and the claim alone keeps caches from serving what changed. Notifications
/// arrive in commit order, so a marker sent after the changes is the first one heard.
#[rocket::async_test]
async fn changes_commit_without_a_notification() {
    let url = fresh_database().await;
    let store = PostgresStore::new(pg::pool(&url).await, &pg::config(TTL))
        .await
        .unwrap();
    let mut listener = sqlx::postgres::PgListener::connect(&url).await.unwrap();
    listener.listen("rocket_sessions").await.unwrap();
    let (key, changes) = created(&store, 1).await;
    assert!(store.update(&key, &changes, START).await.unwrap());
    assert!(store
        .cycle(&key, &self::key(2), &changes, START)
        .await
        .unwrap());
    store.destroy(&self::key(2)).await.unwrap();
    created(&store, 3).await;
    assert_eq!(store.destroy_where("n", &[1]).await.unwrap(), 1);
    created(&store, 4).await;
    assert_eq!(store.sweep(START + 10 * TTL).await.unwrap(), 1);

    sqlx::query("SELECT pg_notify('rocket_sessions', 'marker')")
        .execute(&pg::pool(&url).await)
        .await
        .unwrap();
    let first = listener.recv().await.unwrap();
    assert_eq!(first.payload(), "marker");
}

/// A database that cannot be reached stops the launch with where it was (host and port,
/// database, user) and why (here: nothing listens, then nothing answers), never the password.
#[rocket::async_test]
async fn an_unreachable_database_is_named_with_its_cause_and_never_its_password() {
    let closed = free_port();
    // Accepts connections and never answers: a server that hangs.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hanging = silent.local_addr().unwrap().port();
    for (port, cause) in [(closed, "refused"), (hanging, "no answer within")] {
        let url = format!("postgres://app:hunter2-secret@127.0.0.1:{port}/shop");
        let figment = rocket::figment::Figment::new()
            .merge(("databases.sessions.url", &url))
            .merge(("databases.sessions.connect_timeout", 1));
        let error = PostgresStore::pool_from_figment(&figment, "sessions")
            .await
            .unwrap_err();
        let text = error.to_string();
        let place = format!("127.0.0.1:{port}");
        for part in [place.as_str(), "database `shop`", "user `app`", cause] {
            assert!(text.contains(part), "{part}: {text}");
        }
        assert!(!text.contains("hunter2"), "{text}");
        assert!(error.is_unavailable(), "{text}");
    }
}

/// Two requests of one session, each on its own instance (its own manager and store) over one
/// database, both load the session before either writes, then change different keys: both
/// changes persist, whichever instance is asked.
#[rocket::async_test]
async fn two_instances_changing_different_keys_of_one_session_at_once_both_persist() {
    let url = fresh_database().await;
    let barrier = Arc::new(rocket::tokio::sync::Barrier::new(2));
    let clock = ManualClock::new(START);
    let mut instances = Vec::new();
    for _ in 0..2 {
        let store = PostgresStore::new(pg::pool(&url).await, &pg::config(TTL))
            .await
            .unwrap();
        let sessions = Sessions::fairing()
            .with_clock(clock.clone())
            .with_store(store);
        let app = rocket_server_sessions::testing::app_with_barrier(
            figment(json!({})),
            sessions,
            barrier.clone(),
        );
        instances.push(Client::untracked(app).await.unwrap());
    }
    let (a, b) = (&instances[0], &instances[1]);
    let cookie = post_with(a, "/set/base/0", None).await.cookie.unwrap();
    let (on_a, on_b) = rocket::tokio::join!(
        post_with(a, "/set-together/a/1", Some(&cookie)),
        post_with(b, "/set-together/b/2", Some(&cookie)),
    );
    assert_eq!((on_a.status, on_b.status), (Status::Ok, Status::Ok));
    for client in [a, b] {
        for (name, value) in [("a", "1"), ("b", "2"), ("base", "0")] {
            let reply = get_with(client, &format!("/get/{name}"), Some(&cookie)).await;
            assert_eq!(reply.body, value, "{name}");
        }
    }
}

/// When PostgreSQL aborts a batched update to break a deadlock (SQLSTATE 40P01), the batch
/// runs again and its callers never see the error. The deadlock is made on purpose: another
/// transaction holds a data row the update needs, then asks for the session row the update
/// holds; the update's connections look for deadlocks first, so the update is the one aborted.
#[rocket::async_test]
async fn a_batched_update_aborted_to_break_a_deadlock_runs_again() {
    use rocket_db_pools::sqlx::{Connection, Executor, PgConnection};

    let url = fresh_database().await;
    let database = url.rsplit('/').next().unwrap().to_string();
    let mut admin = PgConnection::connect(&url).await.unwrap();
    let timeout = format!("ALTER DATABASE {database} SET deadlock_timeout = '20ms'");
    admin.execute(timeout.as_str()).await.unwrap();
    let store = PostgresStore::new(pg::pool(&url).await, &pg::config(TTL))
        .await
        .unwrap();
    let (k, _) = created(&store, 1).await;

    let mut other = PgConnection::connect(&url).await.unwrap();
    other
        .execute("SET deadlock_timeout = '1min'")
        .await
        .unwrap();
    let other_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut other)
        .await
        .unwrap();
    other.execute("BEGIN").await.unwrap();
    sqlx::query(
        "SELECT 1 FROM rocket_session_data d JOIN rocket_sessions s ON s.id = d.session_id
          WHERE s.key = $1 AND d.name = 'n' FOR UPDATE OF d",
    )
    .bind(&k.0[..])
    .execute(&mut other)
    .await
    .unwrap();

    let mut two = ChangeSet::new();
    two.set("n", vec![2]);
    let store = Arc::new(store);
    let update = rocket::tokio::spawn({
        let store = store.clone();
        async move { store.update(&k, &two, START + 1).await }
    });
    // The update holds the session row and waits for the data row...
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> $1",
        )
        .bind(other_pid)
        .fetch_one(&mut admin)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        rocket::tokio::task::yield_now().await;
    }
    // ...and now the other transaction asks for the session row: each waits for the other.
    sqlx::query("UPDATE rocket_sessions SET expires_at = expires_at WHERE key = $1")
        .bind(&k.0[..])
        .execute(&mut other)
        .await
        .unwrap();
    other.execute("COMMIT").await.unwrap();

    // The other transaction went through: PostgreSQL broke the deadlock by aborting the
    // update's transaction, and the update ran again.
    assert!(update.await.unwrap().unwrap(), "live, and updated");
    let loaded = store.load(&k, START + 1).await.unwrap().unwrap();
    assert_eq!(loaded.data, [("n".to_string(), vec![2])]);
}

/// A store on a fresh database and on a pool of its own made as the fairing makes it, of one
/// connection, so that the statements the store prepared are on the connection a test asks.
async fn store_on_its_own_pool_of_one_connection() -> (PostgresStore, sqlx::PgPool) {
    let pool = own_pool(&fresh_database().await, &[("max_connections", 1)]).await;
    let store = PostgresStore::new(pool.clone(), &pg::config(TTL))
        .await
        .unwrap();
    (store, pool)
}

/// Runs `sql` (rows made in bulk, its parameters `args` as bigints) on `pool`, then `ANALYZE`s
/// the store's tables, so that the planner plans for the rows as they now are.
async fn seed(pool: &sqlx::PgPool, sql: &str, args: &[u64]) {
    let mut query = sqlx::query(sql);
    for &arg in args {
        query = query.bind(arg as i64);
    }
    query.execute(pool).await.unwrap();
    sqlx::query("ANALYZE rocket_sessions, rocket_session_data")
        .execute(pool)
        .await
        .unwrap();
}

/// The plan of the statement prepared on the one connection of `pool` whose text is `LIKE`
/// `text`, as it runs with `args` (SQL literals): the generic plan, as for any arguments.
async fn prepared_plan(pool: &sqlx::PgPool, text: &str, args: &str) -> String {
    let name: String =
        sqlx::query_scalar("SELECT name FROM pg_prepared_statements WHERE statement LIKE $1")
            .bind(text)
            .fetch_one(pool)
            .await
            .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN EXECUTE {name}({args})"))
        .fetch_all(pool)
        .await
        .unwrap();
    plan.join("\n")
}

/// How often PostgreSQL planned, and how often it reused a generic plan for, the prepared
/// statements whose text contains `text`, on the one connection of `pool`.
async fn plans(pool: &sqlx::PgPool, text: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT coalesce(sum(custom_plans), 0)::bigint, coalesce(sum(generic_plans), 0)::bigint
           FROM pg_prepared_statements WHERE statement LIKE '%' || $1 || '%'",
    )
    .bind(text)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[rocket::async_test]
async fn the_stores_own_pool_plans_its_statements_once_not_on_every_call() {
    let (store, pool) = store_on_its_own_pool_of_one_connection().await;
    let (key, changes) = created(&store, 7).await;
    // One at a time: batches of one session, for which PostgreSQL's own choice would be to
    // plan every call anew (its first five calls of a statement are planned anew anyway).
    for i in 0..8 {
        assert!(store.load(&key, START + i).await.unwrap().is_some());
        assert!(store.update(&key, &changes, START + i).await.unwrap());
    }
    for statement in [
        "FROM unnest($1::bytea[], $2::bigint[])",
        "UPDATE rocket_sessions t",
    ] {
        let (custom, generic) = plans(&pool, statement).await;
        assert_eq!(custom, 0, "{statement}: planned for its arguments");
        assert_eq!(generic, 8, "{statement}: the generic plan, every call");
    }
}

/// While the sessions table is small (here 1,000 sessions), PostgreSQL's default cost of a
/// random page would have it scan the whole table and hash it in every batched load and
/// update; the store's own pool finds each session of a batch by its key's index instead.
#[rocket::async_test]
async fn batches_on_the_stores_own_pool_find_sessions_by_key_even_in_a_small_table() {
    let (store, pool) = store_on_its_own_pool_of_one_connection().await;
    seed(
        &pool,
        "WITH s AS (
            INSERT INTO rocket_sessions (key, created_at, expires_at)
            SELECT sha256(g::text::bytea), 0, $1 FROM generate_series(1, 1000) g
            RETURNING id
         ) INSERT INTO rocket_session_data (session_id, name, value) SELECT id, 'n', '\\x01' FROM s",
        &[START + TTL],
    )
    .await;
    let (key, changes) = created(&store, 7).await;
    assert!(store.load(&key, START).await.unwrap().is_some());
    assert!(store.update(&key, &changes, START).await.unwrap());
    let one = "ARRAY['\\x07'::bytea], ARRAY[1::bigint]";
    for (statement, args) in [
        ("%FROM unnest($1::bytea[], $2::bigint[])%", one.to_string()),
        (
            "%UPDATE rocket_sessions t%",
            format!("{one}, ARRAY[1::bigint], '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', 1"),
        ),
    ] {
        let plan = prepared_plan(&pool, statement, &args).await;
        assert!(
            plan.contains("Index Scan using rocket_sessions_key_key"),
            "{statement}: {plan}"
        );
        assert!(
            !plan.contains("Seq Scan on rocket_sessions "),
            "{statement}: {plan}"
        );
    }
}

#[rocket::async_test]
async fn a_sweep_on_the_stores_own_pool_reaches_expired_sessions_by_index_not_by_a_table_scan() {
    let (store, pool) = store_on_its_own_pool_of_one_connection().await;
    // 20,000 live sessions and 100 expired ones.
    seed(
        &pool,
        "INSERT INTO rocket_sessions (key, created_at, expires_at)
         SELECT sha256(g::text::bytea), 0, CASE WHEN g <= 100 THEN $1 ELSE $2 END
           FROM generate_series(1, 20100) g",
        &[START - 1, START + TTL],
    )
    .await;
    assert_eq!(store.sweep(START).await.unwrap(), 100);
    // The plan the store's connection holds for the sweep, as it runs for any arguments.
    let plan = prepared_plan(
        &pool,
        "%ORDER BY expires_at LIMIT%",
        &format!("{START}, 1000, 1"),
    )
    .await;
    assert!(
        plan.contains("Index Scan using rocket_sessions_expires_at"),
        "{plan}"
    );
    // (The claim's one-row table is scanned whole: `rocket_sessions_claim`.)
    assert!(!plan.contains("Seq Scan on rocket_sessions "), "{plan}");
}

/// With `indexed_keys = ["user_id"]`, log-out-everywhere and listing a user's sessions find
/// them through that key's index, whatever the number of sessions, as the statements run for
/// any arguments (a generic plan); a key not indexed still finds them, by scanning.
#[rocket::async_test]
async fn an_indexed_key_finds_a_users_sessions_by_index_not_by_a_scan() {
    let pool = own_pool(&fresh_database().await, &[("max_connections", 1)]).await;
    let mut config = pg::config(TTL);
    config.indexed_keys = vec!["user_id".into()];
    let store = PostgresStore::new(pool.clone(), &config).await.unwrap();
    // 20,000 sessions, session g with user g and theme g.
    seed(
        &pool,
        "WITH s AS (
            INSERT INTO rocket_sessions (key, created_at, expires_at)
            SELECT sha256(g::text::bytea), 0, $1 FROM generate_series(1, 20000) g
            RETURNING id, key
         ) INSERT INTO rocket_session_data (session_id, name, value)
           SELECT s.id, n, convert_to(g::text, 'UTF8')
             FROM generate_series(1, 20000) g JOIN s ON s.key = sha256(g::text::bytea),
                  unnest(ARRAY['user_id', 'theme']) n",
        &[START + TTL],
    )
    .await;
    assert_eq!(
        store
            .list_where("user_id", b"7", START)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.destroy_where("user_id", b"7").await.unwrap(), 1);
    assert_eq!(store.destroy_where("theme", b"8").await.unwrap(), 1);

    let explain = |text: &'static str, args: &'static str| prepared_plan(&pool, text, args);
    let index = "rocket_session_data_key_";
    let listed = explain(
        "%d.name = 'user_id'%expires_at > $3%",
        "'user_id', '\\x37', 0",
    )
    .await;
    assert!(listed.contains(index), "{listed}");
    assert!(
        !listed.contains("Seq Scan on rocket_session_data"),
        "{listed}"
    );
    let deleted = explain("%DELETE%d.name = 'user_id'%", "'user_id', '\\x37', 1").await;
    assert!(deleted.contains(index), "{deleted}");
    assert!(
        !deleted.contains("Seq Scan on rocket_session_data"),
        "{deleted}"
    );
    // Not indexed: the general statement, a scan.
    let scanned = explain("%DELETE%d.name = $1 AND d.value%", "'theme', '\\x38', 1").await;
    assert!(!scanned.contains(index), "{scanned}");
}

#[rocket::async_test]
async fn back_to_back_batches_spend_no_round_trip_checking_their_connection() {
    let (url, checks) = pg::check_counting_proxy(&fresh_database().await).await;
    let pool = own_pool(&url, &[("max_connections", 4)]).await;
    let store = PostgresStore::new(pool, &pg::config(TTL)).await.unwrap();
    let (key, changes) = created(&store, 9).await;
    assert!(store.load(&key, START).await.unwrap().is_some());
    assert!(store.update(&key, &changes, START).await.unwrap());
    // One call after another, as one client's requests come: one statement each, and no
    // check of a connection handed out or given back.
    let (checks_before, statements_before) = (checks.load(SeqCst), store.statements());
    for i in 1..=10 {
        assert!(store.load(&key, START + i).await.unwrap().is_some());
        assert!(store.update(&key, &changes, START + i).await.unwrap());
    }
    assert_eq!(store.statements() - statements_before, 20);
    assert_eq!(
        checks.load(SeqCst) - checks_before,
        0,
        "no connection checked"
    );
    // Idle for over a second, the connection is back in the pool and checked before use;
    // counted once the leader has stopped lingering (100 ms) and given it back, which sqlx
    // checks too.
    rocket::tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let checks_before = checks.load(SeqCst);
    assert!(store.load(&key, START + 11).await.unwrap().is_some());
    // Given back once the leader has lingered: wait for the second check, however busy the
    // machine, then make sure there were no more.
    eventually("the connection is checked as it goes back", || async {
        checks.load(SeqCst) - checks_before >= 2
    })
    .await;
    assert_eq!(
        checks.load(SeqCst) - checks_before,
        2,
        "checked as it was handed out, and as it went back"
    );
}

#[rocket::async_test]
async fn a_batch_leader_never_keeps_the_last_connection_others_wait_for() {
    // One connection, and a second's patience for it.
    let settings = [("max_connections", 1), ("connect_timeout", 1)];
    let pool = own_pool(&fresh_database().await, &settings).await;
    let store = Arc::new(PostgresStore::new(pool, &pg::config(TTL)).await.unwrap());
    let (loaded, changes) = created(&store, 5).await;
    // Loads one after another for two seconds: a leader that kept its connection while it
    // waited for the next would hold the only one all along.
    let loading = store.clone();
    let (started, running) = rocket::tokio::sync::oneshot::channel();
    let loads = rocket::tokio::spawn(async move {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
        assert!(loading.load(&loaded, START).await.unwrap().is_some());
        let _ = started.send(());
        while std::time::Instant::now() < until {
            assert!(loading.load(&loaded, START).await.unwrap().is_some());
        }
    });
    // The creates start while the loads run.
    running.await.unwrap();
    for n in 0..3u8 {
        let other = key(6 + n);
        assert!(store.create(&other, START, &changes, START).await.unwrap());
        store.destroy(&other).await.unwrap();
    }
    loads.await.unwrap();
}

#[rocket::async_test]
async fn each_request_costs_at_most_one_statement_for_load_and_one_for_flush() {
    let store = Arc::new(fresh_store(TTL).await);
    let (client, clock) = client_with(store.clone(), json!({ "refresh_interval": 30 })).await;
    let statements = || store.statements();

    let before = statements();
    let cookie = get_with(&client, "/count", None).await.cookie.unwrap();
    assert_eq!(
        statements() - before,
        1,
        "a new session: one statement to create it"
    );

    let before = statements();
    assert_eq!(get_with(&client, "/count", Some(&cookie)).await.body, "2");
    assert_eq!(
        statements() - before,
        2,
        "load, then flush changes and lifetime together"
    );

    let before = statements();
    let read = get_with(&client, "/peek", Some(&cookie)).await;
    assert!(read.set_cookies.is_empty());
    assert_eq!(
        statements() - before,
        1,
        "read-only, no refresh due: just the load"
    );

    let before = statements();
    get_with(&client, "/no-session", Some(&cookie)).await;
    get_with(&client, "/no-session", None).await;
    assert_eq!(
        statements() - before,
        0,
        "no session used, no refresh due: nothing"
    );

    clock.advance(30);
    let before = statements();
    let touched = get_with(&client, "/no-session", Some(&cookie)).await;
    assert!(touched.cookie.is_some());
    assert_eq!(statements() - before, 1, "refresh due: one touch");
}

#[rocket::async_test]
async fn expired_sessions_are_swept_in_bounded_batches() {
    let url = fresh_database().await;
    let mut config = pg::config(TTL);
    config.sweep_batch = 10;
    let store = PostgresStore::new(pg::pool(&url).await, &config)
        .await
        .unwrap();
    let mut changes = ChangeSet::new();
    changes.set("a", vec![1]);
    for n in 0..25u8 {
        assert!(store.create(&key(n), START, &changes, START).await.unwrap());
    }
    let live = key(99);
    assert!(store
        .create(&live, START, &changes, START + 50)
        .await
        .unwrap());
    let before = store.statements();
    assert_eq!(store.sweep(START + TTL).await.unwrap(), 25);
    assert_eq!(store.statements() - before, 3, "batches of 10, 10 and 5");
    assert_eq!(count(&url, "SELECT count(*) FROM rocket_sessions").await, 1);
    assert_eq!(
        count(&url, "SELECT count(*) FROM rocket_session_data").await,
        1
    );
}

#[rocket::async_test]
async fn two_instances_on_one_database_share_sessions() {
    let url = fresh_database().await;
    let clock = ManualClock::new(START);
    let one = configured_client(&url, &clock).await;
    let two = configured_client(&url, &clock).await;
    let cookie = get_with(&one, "/count", None).await.cookie.unwrap();
    assert_eq!(get_with(&two, "/count", Some(&cookie)).await.body, "2");
    assert_eq!(get_with(&one, "/count", Some(&cookie)).await.body, "3");
    post_with(&two, "/destroy", Some(&cookie)).await;
    assert_eq!(get_with(&one, "/peek", Some(&cookie)).await.body, "0");
}

#[rocket::async_test]
async fn fifty_concurrent_requests_setting_their_own_keys_all_survive() {
    let url = fresh_database().await;
    let clock = ManualClock::new(START);
    let client = configured_client(&url, &clock).await;
    let cookie = post_with(&client, "/set/base/0", None)
        .await
        .cookie
        .unwrap();
    let requests = (0..50).map(|n| {
        let (client, cookie) = (&client, &cookie);
        async move {
            post_with(client, &format!("/set/key{n}/{n}"), Some(cookie))
                .await
                .status
        }
    });
    let statuses = rocket::futures::future::join_all(requests).await;
    assert!(statuses.iter().all(|s| *s == Status::Ok), "{statuses:?}");
    for n in 0..50 {
        let reply = get_with(&client, &format!("/get/key{n}"), Some(&cookie)).await;
        assert_eq!(reply.body, n.to_string());
    }
    assert_eq!(
        count(&url, "SELECT count(*) FROM rocket_session_data").await,
        51
    );
}

/// The first answer to `/count` that is not 503, asked every 20 ms: requests fail at once
/// until the store's probe finds it back (within a second or so of its return).
async fn served_again(client: &Client, cookie: &str) -> Reply {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let reply = get_with(client, "/count", Some(cookie)).await;
        if reply.status != Status::ServiceUnavailable {
            return reply;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not served again in 30 s"
        );
        rocket::tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// During an outage a request waits for the store at most once (its load; its response does
/// not try to refresh the session it could not load), and the requests after it do not wait
/// at all: they answer 503 at once while a probe looks for the store's return.
#[rocket::async_test]
async fn during_an_outage_one_request_waits_for_the_store_and_the_next_ones_do_not() {
    let cluster = Cluster::start();
    let pool = own_pool(&cluster.url, &[("connect_timeout", 1)]).await;
    let store = Counting::new(PostgresStore::new(pool, &pg::config(TTL)).await.unwrap());
    let clock = ManualClock::new(START);
    let client = Client::untracked(app_with_store(figment(json!({})), &clock, store.clone()))
        .await
        .unwrap();
    let cookie = get_with(&client, "/count", None).await.cookie.unwrap();
    let key = id_of(&client, &cookie).await.store_key();
    clock.advance(61); // the cookie is due for a refresh
    cluster.stop();

    let first = get_with(&client, "/count", Some(&cookie)).await;
    assert_eq!(first.status, Status::ServiceUnavailable);
    assert_eq!(
        store.awaited_for(&key),
        2,
        "the earlier load, then this load: no refresh"
    );
    for _ in 0..5 {
        let next = get_with(&client, "/count", Some(&cookie)).await;
        assert_eq!(next.status, Status::ServiceUnavailable);
    }
    assert_eq!(
        store.awaited_for(&key),
        2,
        "the next requests never called the store"
    );

    cluster.resume();
    let back = served_again(&client, &cookie).await;
    assert_eq!((back.status, back.body.as_str()), (Status::Ok, "2"));
}

#[rocket::async_test]
async fn a_database_outage_answers_503_then_recovers_without_a_restart() {
    let cluster = Cluster::start();
    let clock = ManualClock::new(START);
    let client = configured_client(&cluster.url, &clock).await;
    let cookie = get_with(&client, "/count", None).await.cookie.unwrap();

    // Loaded while the database is up, flushed after it went down: 503 and no cookie.
    let in_flight = post_with(&client, "/set-late/a/1", Some(&cookie));
    let outage = async {
        post_with(&client, "/sync", None).await;
        cluster.stop();
        post_with(&client, "/sync", None).await;
    };
    let (late, ()) = rocket::tokio::join!(in_flight, outage);
    assert_eq!(late.status, Status::ServiceUnavailable);
    assert!(late.set_cookies.is_empty(), "{:?}", late.set_cookies);

    let down = get_with(&client, "/count", Some(&cookie)).await;
    assert_eq!(down.status, Status::ServiceUnavailable);
    assert!(down.set_cookies.is_empty());
    let fresh = get_with(&client, "/count", None).await;
    assert_eq!(
        fresh.status,
        Status::ServiceUnavailable,
        "a new session cannot be saved either"
    );
    assert_eq!(
        get_with(&client, "/no-session", None).await.status,
        Status::Ok,
        "routes without sessions are unaffected"
    );

    cluster.resume();
    let back = served_again(&client, &cookie).await;
    assert_eq!(
        (back.status, back.body.as_str()),
        (Status::Ok, "2"),
        "nothing acknowledged was lost"
    );
    assert_eq!(
        get_with(&client, "/get/a", Some(&cookie)).await.status,
        Status::InternalServerError
    );
}

#[rocket::async_test]
async fn concurrent_loads_share_a_statement_and_each_gets_its_own_session() {
    let store = fresh_store(TTL).await;
    // Missing, expired, live with one key and live with two, in turn: one batch holds all
    // four kinds, in an order (by key) that is not the order they were asked in.
    let mut expected = Vec::new();
    for i in 1..=24u8 {
        let mut changes = ChangeSet::new();
        let record = match i % 4 {
            0 => None,
            1 => {
                changes.set("n", vec![i]);
                let long_ago = START - 2 * TTL;
                assert!(store
                    .create(&key(i), long_ago, &changes, long_ago)
                    .await
                    .unwrap());
                None
            }
            kind => {
                let mut data = vec![("n".to_string(), vec![i])];
                if kind == 3 {
                    data.push(("m".to_string(), vec![i, i]));
                }
                for (name, value) in &data {
                    changes.set(name, value.clone());
                }
                assert!(store
                    .create(&key(i), START - u64::from(i), &changes, START)
                    .await
                    .unwrap());
                data.sort();
                Some((START - u64::from(i), data))
            }
        };
        expected.push(record);
    }
    let before = store.statements();
    let keys: Vec<StoreKey> = (1..=24u8).map(key).collect();
    let loads = keys.iter().map(|k| store.load(k, START + 1));
    let loaded = rocket::futures::future::join_all(loads).await;
    let statements = store.statements() - before;
    assert!(
        statements <= 2,
        "{statements} statements for 24 concurrent loads"
    );
    for (i, (found, expected)) in loaded.into_iter().zip(expected).enumerate() {
        let found = found.unwrap().map(|mut record| {
            record.data.sort();
            (record.created, record.data)
        });
        assert_eq!(found, expected, "session {}", i + 1);
    }
}

#[rocket::async_test]
async fn concurrent_updates_share_a_statement_and_each_learns_whether_its_session_lived() {
    let store = fresh_store(TTL).await;
    let mut one = ChangeSet::new();
    one.set("n", vec![0]);
    // Missing, expired and live sessions in turn, in one batch whose order (by key) is not the
    // order they were asked in.
    for i in 1..=24u8 {
        match i % 3 {
            0 => {}
            1 => {
                let long_ago = START - 2 * TTL;
                assert!(store
                    .create(&key(i), long_ago, &one, long_ago)
                    .await
                    .unwrap());
            }
            _ => assert!(store.create(&key(i), START, &one, START).await.unwrap()),
        }
    }
    let keys: Vec<StoreKey> = (1..=24u8).map(key).collect();
    let changes: Vec<ChangeSet> = (1..=24u8)
        .map(|i| {
            let mut c = ChangeSet::new();
            c.set("n", vec![i]);
            c
        })
        .collect();
    let before = store.statements();
    let updates = keys
        .iter()
        .zip(&changes)
        .map(|(k, c)| store.update(k, c, START + 1));
    let answers = rocket::futures::future::join_all(updates).await;
    let statements = store.statements() - before;
    assert!(
        statements <= 2,
        "{statements} statements for 24 concurrent updates"
    );
    for (i, answer) in (1..=24u8).zip(answers) {
        let live = i % 3 == 2;
        assert_eq!(answer.unwrap(), live, "session {i}");
        let loaded = store.load(&key(i), START + 1).await.unwrap();
        let data = loaded.map(|record| record.data);
        assert_eq!(
            data,
            live.then(|| vec![("n".to_string(), vec![i])]),
            "session {i}"
        );
    }
}

#[rocket::async_test]
async fn concurrent_flushes_share_statements() {
    let store = Arc::new(fresh_store(TTL).await);
    let (client, _) = client_with(store.clone(), json!({})).await;
    let mut cookies = Vec::new();
    for _ in 0..50 {
        cookies.push(get_with(&client, "/count", None).await.cookie.unwrap());
    }
    let before = store.statements();
    let requests = cookies.iter().map(|c| get_with(&client, "/count", Some(c)));
    let replies = rocket::futures::future::join_all(requests).await;
    assert!(replies.iter().all(|r| r.body == "2"));
    let statements = store.statements() - before;
    // 50 loads, and the 50 flushes coalesced into fewer statements (one each would be 100).
    assert!(
        statements < 100,
        "{statements} statements for 50 loads and 50 flushes"
    );
    for cookie in &cookies {
        assert_eq!(get_with(&client, "/peek", Some(cookie)).await.body, "2");
    }
}

#[rocket::async_test]
async fn launch_is_refused_when_the_schema_cannot_be_applied() {
    let url = fresh_database().await;
    // A table of the same name but another shape: the schema's index cannot be made.
    let pool = pg::pool(&url).await;
    sqlx::query("CREATE TABLE rocket_sessions (unrelated int)")
        .execute(&pool)
        .await
        .unwrap();
    let rocket = app(configured(&url, json!({})), &ManualClock::new(START));
    launch_error(rocket).await;
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'rocket_sessions_schema'"
        )
        .await,
        0,
        "the failed migration left nothing behind"
    );
}

/// Cuts every connection to the database but `admin`'s, and waits until each cut backend has
/// ended (`pg_terminate_backend` only signals), so that no call can meet a backend that is
/// still being ended (a connection checked alive a moment before it goes).
async fn cut_every_connection(admin: &mut sqlx::PgConnection) {
    let cut: Vec<i32> = sqlx::query_scalar(
        "SELECT coalesce(array_agg(pid) FILTER (WHERE pg_terminate_backend(pid)), '{}')
           FROM pg_stat_activity
          WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_one(&mut *admin)
    .await
    .unwrap();
    assert!(!cut.is_empty(), "the store's connections to cut");
    loop {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)")
                .bind(&cut)
                .fetch_one(&mut *admin)
                .await
                .unwrap();
        if left == 0 {
            break;
        }
        rocket::tokio::task::yield_now().await;
    }
}

/// An update whose connection the server has cut fails as unavailable, sent once: a write
/// whose answer is lost may have committed, and running it again could overwrite what another
/// instance wrote to the same keys in between. A load, which only reads, runs again on a fresh
/// connection; and the next update gets through.
#[rocket::async_test]
async fn an_update_on_a_cut_connection_fails_once_and_is_not_sent_again() {
    let url = fresh_database().await;
    // A pool that hands out idle connections unchecked, so the store meets a cut one.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .test_before_acquire(false)
        .connect(&url)
        .await
        .unwrap();
    let store = PostgresStore::new(pool, &pg::config(TTL)).await.unwrap();
    let (key, mut changes) = created(&store, 1).await;
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();

    cut_every_connection(&mut admin).await;
    let before = store.statements();
    changes.set("n", vec![2]);
    let e = store.update(&key, &changes, START).await.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Unavailable, "{e}");
    assert_eq!(store.statements(), before + 1, "the update was sent once");
    let loaded = store.load(&key, START).await.unwrap().unwrap();
    assert_eq!(
        loaded.data,
        [("n".to_string(), vec![1])],
        "and it changed nothing"
    );

    cut_every_connection(&mut admin).await;
    let before = store.statements();
    let loaded = store.load(&key, START).await.unwrap().unwrap();
    assert_eq!(loaded.data, [("n".to_string(), vec![1])]);
    assert_eq!(store.statements(), before + 2, "the load ran again");
    assert!(store.update(&key, &changes, START).await.unwrap());
    let loaded = store.load(&key, START).await.unwrap().unwrap();
    assert_eq!(loaded.data, [("n".to_string(), vec![2])]);
}

#[rocket::async_test]
async fn batches_cut_off_by_the_server_run_again_on_a_fresh_connection() {
    let url = fresh_database().await;
    batches_survive_the_server_cutting_every_connection(&url, pg::pool(&url).await).await;
}

#[rocket::async_test]
async fn batches_cut_off_by_the_server_run_again_on_a_fresh_connection_of_the_stores_own_pool() {
    // A pool that hands out connections used under a second ago without checking them.
    let url = fresh_database().await;
    let pool = own_pool(&url, &[]).await;
    batches_survive_the_server_cutting_every_connection(&url, pool).await;
}

/// Loads and updates from 16 tasks, in six rounds, each after the first following a cut of
/// every connection of the store by the server (the batch leaders' kept ones, the pool's idle
/// ones): not one load fails, and an update fails only as unavailable (an update that meets a
/// cut connection is not run again). Calls and cuts take turns at two barriers, and each cut waits
/// until the server has ended every backend it cut, so no call can meet a backend that is
/// still being ended (a connection checked alive a moment before it goes), whatever the
/// machine's load.
async fn batches_survive_the_server_cutting_every_connection(url: &str, pool: sqlx::PgPool) {
    const ROUNDS: usize = 6;
    let store = Arc::new(PostgresStore::new(pool, &pg::config(TTL)).await.unwrap());
    let keys: Vec<_> = (0..16u8).map(key).collect();
    let mut one = ChangeSet::new();
    one.set("n", vec![1]);
    for key in &keys {
        assert!(store.create(key, START, &one, START).await.unwrap());
    }
    let called = Arc::new(rocket::tokio::sync::Barrier::new(keys.len() + 1));
    let cut = Arc::new(rocket::tokio::sync::Barrier::new(keys.len() + 1));
    let workers: Vec<_> = keys
        .iter()
        .map(|key| {
            let (store, key, one) = (store.clone(), *key, one.clone());
            let (called, cut) = (called.clone(), cut.clone());
            rocket::tokio::spawn(async move {
                let mut failures = Vec::new();
                for _ in 0..ROUNDS {
                    for _ in 0..5 {
                        if let Err(e) = store.load(&key, START).await {
                            failures.push(e.to_string());
                        }
                        match store.update(&key, &one, START).await {
                            // Met a cut connection: reported, not run again (see below).
                            Err(e) if e.kind() == StoreErrorKind::Unavailable => {}
                            Err(e) => failures.push(e.to_string()),
                            Ok(_) => {}
                        }
                    }
                    called.wait().await;
                    cut.wait().await;
                }
                failures
            })
        })
        .collect();
    // One connection, which the cuts spare (a pool's other connections would be cut too).
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(url)
        .await
        .unwrap();
    for round in 0..ROUNDS {
        called.wait().await;
        if round + 1 < ROUNDS {
            let before = store.statements();
            cut_every_connection(&mut admin).await;
            assert_eq!(store.statements(), before, "no call ran during the cut");
        }
        cut.wait().await;
    }
    let mut failures = Vec::new();
    for worker in workers {
        failures.extend(worker.await.unwrap());
    }
    assert!(failures.is_empty(), "{failures:?}");
}
