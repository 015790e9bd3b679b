//! The `Sessions` fairing: builds the manager at ignite, flushes every response, persists at
//! shutdown.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rocket::fairing::{self, Fairing, Info, Kind};
use rocket::http::{Cookie, Header};
use rocket::{Build, Orbit, Request, Response, Rocket};

use crate::clock::{Clock, SystemClock};
use crate::config::{SameSite, SessionConfig, StoreConfig};
use crate::error::{SessionError, StoreError, StoreErrorKind};
use crate::flush::{CookieAction, Flush};
use crate::manager::SessionManager;
use crate::store::{MemoryStore, SessionStore};
use crate::working::RequestSession;

/// The fairing that gives a Rocket application sessions.
///
/// ```no_run
/// # use rocket::launch;
/// #[launch]
/// fn rocket() -> _ {
///     rocket::build().attach(rocket_server_sessions::Sessions::fairing())
/// }
/// ```
///
/// At ignite it reads `[<profile>.session]` (see [`SessionConfig`]), opens the store and puts a
/// [`SessionManager`] in managed state; Rocket refuses to launch on an invalid configuration
/// or a store that cannot be opened. After liftoff it sweeps expired sessions and, for the
/// memory store, writes snapshots periodically. On every response it flushes the request's
/// session changes and sets the cookie. At shutdown it waits for requests in flight that
/// loaded a session (up to Rocket's grace and mercy periods), then persists the store.
pub struct Sessions {
    /// `None`: the system clock.
    clock: Option<Arc<dyn Clock>>,
    store: Mutex<Option<Arc<dyn SessionStore>>>,
    #[cfg(any(feature = "postgres", feature = "redis", feature = "sqlite"))]
    app_pool: Option<pools::FindPool>,
    /// A pool the fairing made itself, closed once the last flush is done.
    #[cfg(any(feature = "postgres", feature = "redis", feature = "sqlite"))]
    own_pool: OnceLock<pools::AnyPool>,
    manager: OnceLock<SessionManager>,
}

/// The pools the stores run on, the app's own or the fairing's.
#[cfg(any(feature = "postgres", feature = "redis", feature = "sqlite"))]
mod pools {
    use rocket::{Build, Rocket};

    /// A pool of one of the stores, whichever the build has.
    #[derive(Clone)]
    pub enum AnyPool {
        #[cfg(feature = "postgres")]
        Postgres(rocket_db_pools::sqlx::PgPool),
        #[cfg(feature = "redis")]
        Redis(rocket_db_pools::deadpool_redis::Pool),
        #[cfg(feature = "sqlite")]
        Sqlite(rocket_db_pools::sqlx::SqlitePool),
    }

    impl AnyPool {
        pub fn kind(&self) -> &'static str {
            match self {
                #[cfg(feature = "postgres")]
                AnyPool::Postgres(_) => "postgres",
                #[cfg(feature = "redis")]
                AnyPool::Redis(_) => "redis",
                #[cfg(feature = "sqlite")]
                AnyPool::Sqlite(_) => "sqlite",
            }
        }

        #[cfg(feature = "postgres")]
        #[allow(irrefutable_let_patterns)]
        pub fn postgres(self) -> Option<rocket_db_pools::sqlx::PgPool> {
            if let AnyPool::Postgres(pool) = self {
                return Some(pool);
            }
            None
        }

        #[cfg(feature = "redis")]
        #[allow(irrefutable_let_patterns)]
        pub fn redis(self) -> Option<rocket_db_pools::deadpool_redis::Pool> {
            if let AnyPool::Redis(pool) = self {
                return Some(pool);
            }
            None
        }

        #[cfg(feature = "sqlite")]
        #[allow(irrefutable_let_patterns)]
        pub fn sqlite(self) -> Option<rocket_db_pools::sqlx::SqlitePool> {
            if let AnyPool::Sqlite(pool) = self {
                return Some(pool);
            }
            None
        }

        pub async fn close(&self) {
            match self {
                #[cfg(feature = "postgres")]
                AnyPool::Postgres(pool) => pool.close().await,
                #[cfg(feature = "redis")]
                AnyPool::Redis(pool) => pool.close(),
                #[cfg(feature = "sqlite")]
                AnyPool::Sqlite(pool) => pool.close().await,
            }
        }
    }

    /// Finds the app's own `rocket_db_pools` pool in managed state.
    pub type FindPool = Box<dyn Fn(&Rocket<Build>) -> Option<AnyPool> + Send + Sync>;

    /// A `rocket_db_pools` pool a store of this crate runs on.
    pub trait StorePool: rocket_db_pools::Pool + Clone {
        #[doc(hidden)]
        fn into_any(self) -> AnyPool;
    }

    #[cfg(feature = "postgres")]
    impl StorePool for rocket_db_pools::sqlx::PgPool {
        fn into_any(self) -> AnyPool {
            AnyPool::Postgres(self)
        }
    }

    #[cfg(feature = "redis")]
    impl StorePool for rocket_db_pools::deadpool_redis::Pool {
        fn into_any(self) -> AnyPool {
            AnyPool::Redis(self)
        }
    }

    #[cfg(feature = "sqlite")]
    impl StorePool for rocket_db_pools::sqlx::SqlitePool {
        fn into_any(self) -> AnyPool {
            AnyPool::Sqlite(self)
        }
    }
}

#[cfg(any(feature = "postgres", feature = "redis", feature = "sqlite"))]
pub use pools::StorePool;

impl Sessions {
    /// The fairing, with the store chosen by configuration and the system clock.
    pub fn fairing() -> Sessions {
        Sessions {
            clock: None,
            store: Mutex::new(None),
            #[cfg(any(feature = "postgres", feature = "redis", feature = "sqlite"))]
            app_pool: None,
            #[cfg(any(feature = "postgres", feature = "redis", feature = "sqlite"))]
            own_pool: OnceLock::new(),
            manager: OnceLock::new(),
        }
    }

    /// Runs the configured store on the app's own `#[derive(Database)]` pool `D` instead of
    /// initialising one from `[<profile>.databases.<database>]`: a PostgreSQL, SQLite or Redis
    /// pool (see [`StorePool`]), which must be the configured store's kind. Attach `D::init()`
    /// before this fairing. Rocket closes that pool at shutdown on its own schedule, so
    /// requests still in flight then may answer 503. For PostgreSQL, add
    /// `?options[plan_cache_mode]=force_generic_plan&options[random_page_cost]=1.1` to the
    /// database's `url` to plan the store's statements once, and to find sessions by index
    /// while the sessions table is small, as its own pool does (these apply to the app's own
    /// queries on that pool too; see
    /// [`PostgresStore::pool_from_figment`](crate::store::PostgresStore::pool_from_figment)).
    /// For SQLite, the app's pool keeps its own settings: its journal mode, `synchronous` and
    /// busy timeout are the app's to choose (see
    /// [`SqliteStore::pool_from_figment`](crate::store::SqliteStore::pool_from_figment) for the
    /// store's).
    ///
    #[cfg_attr(feature = "postgres", doc = "```no_run")]
    // The example's pool is PostgreSQL's: a build without that store cannot compile it.
    #[cfg_attr(not(feature = "postgres"), doc = "```ignore")]
    /// use rocket_db_pools::{sqlx, Database};
    /// use rocket_server_sessions::Sessions;
    ///
    /// #[derive(Database)]
    /// #[database("app")]
    /// struct Db(sqlx::PgPool);
    ///
    /// #[rocket::launch]
    /// fn rocket() -> _ {
    ///     rocket::build()
    ///         .attach(Db::init())
    ///         .attach(Sessions::fairing().with_database::<Db>())
    /// }
    /// ```
    #[cfg(any(feature = "postgres", feature = "redis", feature = "sqlite"))]
    pub fn with_database<D>(mut self) -> Sessions
    where
        D: rocket_db_pools::Database,
        D::Pool: StorePool,
    {
        self.app_pool = Some(Box::new(|rocket| {
            D::fetch(rocket).map(|db| (**db).clone().into_any())
        }));
        self
    }

    /// Takes time from `clock` instead of the system clock (tests move a
    /// [`ManualClock`](crate::ManualClock) instead of sleeping).
    pub fn with_clock(mut self, clock: impl Clock) -> Sessions {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Uses `store` instead of building the configured one; the `store` table's `kind` is then
    /// ignored, and its intervals still apply.
    pub fn with_store<S: SessionStore>(self, store: S) -> Sessions {
        *self.store.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(store));
        self
    }

    /// The app's own pool when one was given, else a pool of the fairing's from `figment`
    /// (`open` makes it), closed at shutdown; `take` finds in it the pool of the store `kind`.
    #[cfg(any(feature = "postgres", feature = "redis", feature = "sqlite"))]
    async fn pool<F, P>(
        &self,
        rocket: &Rocket<Build>,
        kind: &str,
        open: F,
        take: fn(pools::AnyPool) -> Option<P>,
    ) -> Result<P, StoreError>
    where
        F: Future<Output = Result<pools::AnyPool, StoreError>>,
    {
        let pool = match &self.app_pool {
            Some(find) => find(rocket).ok_or_else(|| {
                StoreError::new(
                    StoreErrorKind::Other,
                    "the app's database is not attached before the Sessions fairing",
                )
            })?,
            None => {
                let pool = open.await?;
                let _ = self.own_pool.set(pool.clone());
                pool
            }
        };
        let found = pool.kind();
        take(pool).ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::Other,
                format!(
                    "store.kind = \"{kind}\", but the app's database given to \
                     Sessions::with_database is a {found} pool"
                ),
            )
        })
    }

    async fn open_store(
        &self,
        rocket: &Rocket<Build>,
        config: &SessionConfig,
    ) -> Result<Arc<dyn SessionStore>, StoreError> {
        if let Some(store) = self.store.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Ok(store);
        }
        // A build with no store on a pool never reads `rocket`.
        let _ = rocket;
        match &config.store {
            StoreConfig::Memory(memory) => {
                let memory = memory.clone();
                let store = rocket::tokio::task::spawn_blocking(move || MemoryStore::open(&memory))
                    .await
                    .map_err(|e| {
                        StoreError::new(StoreErrorKind::Other, "opening the store").with_source(e)
                    })??;
                Ok(Arc::new(store))
            }
            #[cfg(not(feature = "postgres"))]
            StoreConfig::Postgres(_) => left_out("postgres"),
            #[cfg(feature = "postgres")]
            StoreConfig::Postgres(postgres) => {
                use crate::store::PostgresStore;
                let open = async {
                    PostgresStore::pool_from_figment(rocket.figment(), &postgres.database)
                        .await
                        .map(pools::AnyPool::Postgres)
                };
                let pool = self
                    .pool(rocket, "postgres", open, pools::AnyPool::postgres)
                    .await?;
                Ok(Arc::new(PostgresStore::new(pool, postgres).await?))
            }
            #[cfg(not(feature = "redis"))]
            StoreConfig::Redis(_) => left_out("redis"),
            #[cfg(feature = "redis")]
            StoreConfig::Redis(redis) => {
                use crate::store::RedisStore;
                let open = async {
                    RedisStore::pool_from_figment(rocket.figment(), &redis.database)
                        .await
                        .map(pools::AnyPool::Redis)
                };
                let pool = self
                    .pool(rocket, "redis", open, pools::AnyPool::redis)
                    .await?;
                Ok(Arc::new(RedisStore::new(pool, redis).await?))
            }
            #[cfg(not(feature = "sqlite"))]
            StoreConfig::Sqlite(_) => left_out("sqlite"),
            #[cfg(feature = "sqlite")]
            StoreConfig::Sqlite(sqlite) => {
                use crate::store::SqliteStore;
                let open = async {
                    SqliteStore::pool_from_figment(rocket.figment(), sqlite)
                        .await
                        .map(pools::AnyPool::Sqlite)
                };
                let pool = self
                    .pool(rocket, "sqlite", open, pools::AnyPool::sqlite)
                    .await?;
                Ok(Arc::new(SqliteStore::new(pool, sqlite).await?))
            }
        }
    }
}

/// The answer for a configured store whose cargo feature this build leaves out.
#[cfg(not(all(feature = "postgres", feature = "redis", feature = "sqlite")))]
fn left_out(kind: &str) -> Result<Arc<dyn SessionStore>, StoreError> {
    Err(StoreError::new(
        StoreErrorKind::Other,
        format!("store.kind = \"{kind}\" needs this crate's `{kind}` feature, which this build leaves out"),
    ))
}

/// The `Set-Cookie` header for `value`; `max_age` `None` makes a browser-session cookie.
fn cookie_header(config: &SessionConfig, value: String, max_age: Option<u64>) -> Header<'static> {
    let mut cookie = Cookie::build((config.cookie_name.clone(), value))
        .path(config.cookie_path.clone())
        .secure(config.cookie_secure)
        .http_only(config.cookie_http_only)
        .same_site(match config.cookie_same_site {
            SameSite::Strict => rocket::http::SameSite::Strict,
            SameSite::Lax => rocket::http::SameSite::Lax,
            SameSite::None => rocket::http::SameSite::None,
        });
    if let Some(max_age) = max_age {
        cookie = cookie.max_age(time::Duration::seconds(max_age as i64));
    }
    if let Some(domain) = &config.cookie_domain {
        cookie = cookie.domain(domain.clone());
    }
    Header::from(cookie.build())
}

/// Sets the response's cookie as the flush decided, or turns the response into the error.
fn respond(
    config: &SessionConfig,
    action: Result<CookieAction, SessionError>,
    res: &mut Response<'_>,
) {
    let header = match action {
        Ok(CookieAction::Keep) => None,
        Ok(CookieAction::Set(value, max_age)) => Some(cookie_header(config, value, max_age)),
        Ok(CookieAction::Remove) => Some(cookie_header(config, String::new(), Some(0))),
        Err(e) => {
            rocket::error!("session: the session's changes were not saved: {e}");
            *res = Response::build().status(e.status()).finalize();
            None
        }
    };
    if let Some(header) = header {
        res.adjoin_header(header);
        // A shared cache must never hand one visitor's session cookie to another.
        res.set_raw_header("Cache-Control", "no-store");
        res.adjoin_raw_header("Vary", "Cookie");
    }
}

/// A future that is ready at once, and zero-sized: boxing it allocates nothing.
struct Immediate;

impl Future for Immediate {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}

/// How long shutdown waits, after the last flush, for connections to close (see `on_shutdown`).
const SETTLE_MS: u64 = 50;

/// Spawns `task` every `interval` seconds until Rocket shuts down.
fn every<F, Fut>(rocket: &Rocket<Orbit>, interval: u64, task: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    if interval == 0 {
        return;
    }
    let mut shutdown = rocket.shutdown();
    rocket::tokio::spawn(async move {
        loop {
            rocket::tokio::select! {
                _ = rocket::tokio::time::sleep(Duration::from_secs(interval)) => task().await,
                _ = &mut shutdown => break,
            }
        }
    });
}

#[rocket::async_trait]
impl Fairing for Sessions {
    fn info(&self) -> Info {
        Info {
            name: "Sessions",
            kind: Kind::Ignite | Kind::Liftoff | Kind::Response | Kind::Shutdown,
        }
    }

    async fn on_ignite(&self, rocket: Rocket<Build>) -> fairing::Result {
        let config = match SessionConfig::from_figment(rocket.figment()) {
            Ok(config) => config,
            Err(e) => {
                rocket::error!("{e}");
                return Err(rocket);
            }
        };
        let store = match self.open_store(&rocket, &config).await {
            Ok(store) => store,
            Err(e) => {
                rocket::error!(
                    "session store of profile `{}` cannot be opened: {e}",
                    config.profile
                );
                return Err(rocket);
            }
        };
        let clock = self.clock.clone().unwrap_or_else(|| Arc::new(SystemClock));
        let manager = SessionManager::new(config, store, clock);
        if rocket.state::<SessionManager>().is_some() || self.manager.set(manager.clone()).is_err()
        {
            rocket::error!("the Sessions fairing was ignited twice; attach it once");
            return Err(rocket);
        }
        Ok(rocket.manage(manager))
    }

    async fn on_liftoff(&self, rocket: &Rocket<Orbit>) {
        let Some(manager) = self.manager.get() else {
            return;
        };
        let (sweep, snapshot) = match &manager.config().store {
            StoreConfig::Memory(m) => (m.sweep_interval, m.snapshot_interval),
            StoreConfig::Postgres(p) => (p.sweep_interval, 0),
            StoreConfig::Sqlite(s) => (s.sweep_interval, 0),
            // Redis deletes sessions as they expire.
            StoreConfig::Redis(_) => (0, 0),
        };
        let m = manager.clone();
        every(rocket, sweep, move || {
            let m = m.clone();
            async move {
                match m.store().sweep(m.now()).await {
                    Ok(0) => {}
                    Ok(n) => rocket::info!("session store: swept {n} expired sessions"),
                    Err(e) => rocket::error!("session store: sweep failed: {e}"),
                }
            }
        });
        if snapshot > 0 {
            let m = manager.clone();
            every(rocket, snapshot, move || {
                let m = m.clone();
                async move {
                    if let Err(e) = m.store().persist().await {
                        rocket::error!("session store: snapshot failed: {e}");
                    }
                }
            });
        }
    }

    // Written out, not as an `async fn`: a flush answered at once returns a zero-sized future,
    // which Rocket's `Box::pin` does not allocate.
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
        let Some(manager) = self.manager.get() else {
            return Box::pin(Immediate);
        };
        let config = manager.config();
        let working = req.local_cache(RequestSession::default).lock().take();
        let loaded = working.is_some();
        // The cookie matters only when no handler loaded the session (for a refresh).
        let cookie = match loaded {
            true => None,
            false => req.cookies().get(&config.cookie_name),
        };
        // Sets the response, then counts the request finished: true when it finished after
        // shutdown began, and the store is to be persisted again.
        let conclude = move |action, res: &mut Response<'_>| {
            respond(config, action, res);
            loaded && manager.request_finished()
        };
        match manager.flush(working, cookie.map(|c| c.value())) {
            Flush::Ready(action) => match conclude(action, res) {
                true => Box::pin(manager.persist_late()),
                false => Box::pin(Immediate),
            },
            Flush::Pending(write) => Box::pin(async move {
                if conclude(write.await, res) {
                    manager.persist_late().await;
                }
            }),
        }
    }

    async fn on_shutdown(&self, rocket: &Rocket<Orbit>) {
        let Some(manager) = self.manager.get() else {
            return;
        };
        let shutdown = &rocket.config().shutdown;
        let limit = Duration::from_secs(u64::from(shutdown.grace) + u64::from(shutdown.mercy));
        manager.drain(limit).await;
        manager.persist_at_shutdown().await;
        if let Err(e) = manager.store().close().await {
            rocket::error!("session store: closing at shutdown failed: {e}");
        }
        #[cfg(any(feature = "postgres", feature = "redis", feature = "sqlite"))]
        if let Some(pool) = self.own_pool.get() {
            pool.close().await;
        }
        // Rocket waits out its whole grace period if a connection is still open when the
        // shutdown fairings end: give the last requests' connections a moment to close.
        let settle =
            Duration::from_millis(SETTLE_MS).min(Duration::from_secs(shutdown.grace.into()));
        rocket::tokio::time::sleep(settle).await;
    }
}
