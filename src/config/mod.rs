//! `[<profile>.session]` in Rocket.toml → validated settings.
//!
//! Reading is layered the way Rocket layers its own configuration: `[default.session]`, then
//! the selected profile's `[<profile>.session]` (tables merge key by key), then
//! `ROCKET_SESSION={...}` and finally `ROCKET_SESSION_<KEY>=...` from the environment (a double
//! underscore reaches into the store table: `ROCKET_SESSION_STORE__TTL=60`).

use std::path::PathBuf;

use rocket::figment::providers::Env;
use rocket::figment::{self, Figment};
use serde::Deserialize;

use crate::error::ConfigError;

mod debug_key;
mod values;

use debug_key::debug_key;
use values::{check_cookie_name, check_domain, check_key, check_path, check_seconds, Secret};

/// The `SameSite` attribute of the session cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SameSite {
    /// `SameSite=Strict`, koyo's default: the cookie is never sent on cross-site requests.
    Strict,
    /// `SameSite=Lax`: sent on top-level cross-site navigations.
    Lax,
    /// `SameSite=None`: sent everywhere; only allowed together with `cookie_secure = true`.
    None,
}

/// Validated session settings, read from `[<profile>.session]`.
///
/// | key | type | default | meaning | koyo |
/// |---|---|---|---|---|
/// | `cookie_name` | string | `"session"` | name of the session cookie | `#:cookie-name` |
/// | `cookie_path` | string | `"/"` | `Path` attribute | `#:cookie-path` |
/// | `cookie_domain` | string | none | `Domain` attribute | — |
/// | `cookie_secure` | bool | `true` | `Secure` attribute | `#:cookie-secure?` |
/// | `cookie_http_only` | bool | `true` | `HttpOnly` attribute | `#:cookie-http-only?` |
/// | `expire_on_browser_close` | bool | `false` | no `Max-Age`: a browser-session cookie (`shelf_life` and `ttl` still apply on the server) | — |
/// | `cookie_same_site` | `"strict"`, `"lax"`, `"none"` | `"strict"` | `SameSite` attribute | `#:cookie-same-site` |
/// | `shelf_life` | seconds | 604800 | cookie lifetime (`Max-Age`) | `#:shelf-life` |
/// | `refresh_interval` | seconds | 60 | re-issue the cookie and extend the stored session at most this often (0: every response, as koyo); unset, at most half of `shelf_life` and of `store.ttl` | — |
/// | `max_lifetime` | seconds | none | absolute lifetime from creation, whatever the activity | — |
/// | `shortest_lifetime` | seconds | 60 | the shortest lifetime a handler may give one session ([`Session::set_lifetime`](crate::Session::set_lifetime)) | — |
/// | `longest_lifetime` | seconds | 2592000 (30 days) | the longest one ("remember me") | — |
/// | `secret_key` | string, ≥ 32 bytes | none (see below) | signs the cookie | `#:secret-key` |
/// | `previous_secret_keys` | list of strings | `[]` | still verify, for key rotation | — |
/// | `secret_key_file` | path | `"session_secret.key"` | where the debug profile keeps a generated key | — |
/// | `max_session_size` | bytes | 65536 | cap on a session's encoded size | — |
/// | `store` | table | `{ kind = "memory" }` | the store, see [`StoreConfig`] | `#:store` |
///
/// Without a `secret_key`, the `debug` profile reads the key from `secret_key_file`, generating
/// it there (mode 0600) on first use, and logs a warning; every other profile refuses to launch.
#[derive(Clone)]
pub struct SessionConfig {
    /// The profile this was read from.
    pub profile: String,
    /// Name of the session cookie.
    pub cookie_name: String,
    /// `Path` attribute of the cookie.
    pub cookie_path: String,
    /// `Domain` attribute of the cookie, if any.
    pub cookie_domain: Option<String>,
    /// `Secure` attribute.
    pub cookie_secure: bool,
    /// `HttpOnly` attribute.
    pub cookie_http_only: bool,
    /// `SameSite` attribute.
    pub cookie_same_site: SameSite,
    /// Cookie lifetime in seconds: its `Max-Age`, and how old a cookie's issue time may be.
    pub shelf_life: u64,
    /// Send the cookie without `Max-Age`, so that the browser drops it when it closes
    /// (`shelf_life` still bounds its age on the server, and the store's `ttl` still applies).
    pub expire_on_browser_close: bool,
    /// Re-issue the cookie and touch the store at most every this many seconds (0: always).
    pub refresh_interval: u64,
    /// Absolute session lifetime in seconds, counted from creation, if any.
    pub max_lifetime: Option<u64>,
    /// The shortest lifetime, in seconds, a handler may give one session.
    pub shortest_lifetime: u64,
    /// The longest lifetime, in seconds, a handler may give one session.
    pub longest_lifetime: u64,
    /// The key that signs cookies.
    pub secret_key: Vec<u8>,
    /// Older keys that still verify cookies (which are then re-issued under `secret_key`).
    pub previous_secret_keys: Vec<Vec<u8>>,
    /// Cap on a session's encoded size, in bytes.
    pub max_session_size: usize,
    /// The store to build.
    pub store: StoreConfig,
}

impl std::fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionConfig")
            .field("profile", &self.profile)
            .field("cookie_name", &self.cookie_name)
            .field("cookie_path", &self.cookie_path)
            .field("cookie_domain", &self.cookie_domain)
            .field("cookie_secure", &self.cookie_secure)
            .field("cookie_http_only", &self.cookie_http_only)
            .field("expire_on_browser_close", &self.expire_on_browser_close)
            .field("cookie_same_site", &self.cookie_same_site)
            .field("shelf_life", &self.shelf_life)
            .field("refresh_interval", &self.refresh_interval)
            .field("max_lifetime", &self.max_lifetime)
            .field("shortest_lifetime", &self.shortest_lifetime)
            .field("longest_lifetime", &self.longest_lifetime)
            .field("secret_key", &"<redacted>")
            .field("previous_secret_keys", &self.previous_secret_keys.len())
            .field("max_session_size", &self.max_session_size)
            .field("store", &self.store)
            .finish()
    }
}

/// Which store runs, from the `store` table; `kind` picks the variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// `kind = "memory"`: the embedded default.
    Memory(MemoryStoreConfig),
    /// `kind = "postgres"`.
    Postgres(PostgresStoreConfig),
    /// `kind = "redis"`.
    Redis(RedisStoreConfig),
    /// `kind = "sqlite"`.
    Sqlite(SqliteStoreConfig),
}

impl StoreConfig {
    /// The store's idle lifetime of a session, in seconds.
    pub fn ttl(&self) -> u64 {
        match self {
            StoreConfig::Memory(m) => m.ttl,
            StoreConfig::Postgres(p) => p.ttl,
            StoreConfig::Redis(r) => r.ttl,
            StoreConfig::Sqlite(s) => s.ttl,
        }
    }
}

/// Settings of the Redis store (`store = { kind = "redis", ... }`).
///
/// | key | type | default | meaning |
/// |---|---|---|---|
/// | `database` | string | `"sessions"` | name under `[<profile>.databases]` of the pool to use (`url = "redis://..."`) |
/// | `ttl` | seconds | 604800 | a session untouched this long expires (koyo `#:ttl`); Redis deletes it then itself |
/// | `key_prefix` | string | `"rocket_sessions:"` | the start of every Redis key the store writes |
/// | `indexed_keys` | list of strings | `[]` | keys whose values are indexed (a sorted set per value), so that [`destroy_where`](crate::SessionManager::destroy_where) and [`list_where`](crate::SessionManager::list_where) on them read the index instead of scanning the keyspace |
///
/// A session is one hash, `<key_prefix>s:<hex digest of the id>`, whose Redis TTL is its
/// expiry: nothing is swept. Each load is one round trip (`HGETALL`) and each write one (a
/// script applying the change set atomically). Values of an indexed key are filed in
/// `<key_prefix>i:<key>:<SHA-1 of the value>`, kept by the same scripts. The scripts reach keys
/// they compute themselves, so the store runs on one Redis server (or a primary with replicas),
/// not on Redis Cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisStoreConfig {
    /// Name of the database under `[<profile>.databases]`.
    pub database: String,
    /// Idle lifetime of a session in the store, in seconds.
    pub ttl: u64,
    /// The start of every key the store writes.
    pub key_prefix: String,
    /// Keys whose values are indexed, for `destroy_where` and `list_where`.
    pub indexed_keys: Vec<String>,
}

/// How SQLite makes a commit durable (its `synchronous` setting, with the WAL journal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// `FULL`: a commit is on disk before the response goes out.
    Full,
    /// `NORMAL`: a commit survives the app's crash; the machine's crash or power loss can take
    /// the last commits back (the file stays consistent).
    Normal,
}

/// Settings of the SQLite store (`store = { kind = "sqlite", ... }`).
///
/// | key | type | default | meaning |
/// |---|---|---|---|
/// | `database` | string | `"sessions"` | name under `[<profile>.databases]` of the pool to use (`url = "sqlite://path/to/file.db"`, created when missing) |
/// | `ttl` | seconds | 604800 | a session untouched this long expires (koyo `#:ttl`) |
/// | `migrate` | bool | `true` | apply the schema at ignite |
/// | `synchronous` | `"full"`, `"normal"` | `"full"` | durability of a commit (see [`Synchronous`]) |
/// | `busy_timeout` | seconds | 5 | how long a write waits for another process's write before the request answers 503 |
/// | `sweep_interval` | seconds | 60 | delete expired sessions this often |
/// | `sweep_batch` | rows | 1000 | at most this many sessions deleted per statement |
/// | `indexed_keys` | list of strings | `[]` | keys whose values are indexed (a partial index each), so that [`destroy_where`](crate::SessionManager::destroy_where) and [`list_where`](crate::SessionManager::list_where) on them are index lookups, not scans |
///
/// The store's own pool opens the file in WAL mode, so that several processes on one machine
/// share it: reads never wait, and writes take turns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteStoreConfig {
    /// Name of the database under `[<profile>.databases]`.
    pub database: String,
    /// Idle lifetime of a session in the store, in seconds.
    pub ttl: u64,
    /// Whether to apply the schema at ignite.
    pub migrate: bool,
    /// SQLite's `synchronous` setting on the store's own pool.
    pub synchronous: Synchronous,
    /// Seconds a write waits for the file's write lock.
    pub busy_timeout: u64,
    /// Seconds between sweeps of expired sessions.
    pub sweep_interval: u64,
    /// Most sessions deleted by one sweep statement.
    pub sweep_batch: u32,
    /// Keys whose values are indexed, for `destroy_where` and `list_where`.
    pub indexed_keys: Vec<String>,
}

/// Settings of the memory store (`store = { kind = "memory", ... }`).
///
/// | key | type | default | meaning |
/// |---|---|---|---|
/// | `ttl` | seconds | 604800 | a session untouched this long expires (koyo `#:ttl`) |
/// | `file_path` | path or `""` | `"sessions.snapshot"` | snapshot file (koyo `#:file-path`); `""` keeps nothing on disk |
/// | `snapshot_interval` | seconds | 30 | write the snapshot this often when something changed (0: only at shutdown) |
/// | `sweep_interval` | seconds | 60 | remove expired sessions this often |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryStoreConfig {
    /// Idle lifetime of a session in the store, in seconds.
    pub ttl: u64,
    /// The snapshot file, if any.
    pub file_path: Option<PathBuf>,
    /// Seconds between periodic snapshots; 0 writes only at shutdown.
    pub snapshot_interval: u64,
    /// Seconds between sweeps of expired sessions.
    pub sweep_interval: u64,
}

/// Settings of the PostgreSQL store (`store = { kind = "postgres", ... }`).
///
/// | key | type | default | meaning |
/// |---|---|---|---|
/// | `database` | string | `"sessions"` | name under `[<profile>.databases]` of the pool to use |
/// | `ttl` | seconds | 604800 | a session untouched this long expires (koyo `#:ttl`) |
/// | `migrate` | bool | `true` | apply the schema at ignite |
/// | `unlogged` | bool | `false` | create the tables UNLOGGED (faster, emptied after a crash); a launch never changes existing tables, and refuses if theirs differs |
/// | `sweep_interval` | seconds | 60 | delete expired sessions this often |
/// | `sweep_batch` | rows | 1000 | at most this many sessions deleted per statement |
/// | `cache` | sessions | 0 (off) | keep up to this many sessions in this instance's memory, served only while no other instance uses the database (see below); `10000` suits one instance |
/// | `indexed_keys` | list of strings | `[]` | keys whose values are indexed (a partial hash index each, made at launch with `migrate`), so that [`destroy_where`](crate::SessionManager::destroy_where) and [`list_where`](crate::SessionManager::list_where) on them are index lookups, not scans |
///
/// The cache is off unless configured: it serves only while one instance uses the database,
/// and it becomes the default only once several instances are shown to lose nothing by it
/// (the README says what remains). With the cache on, a request whose session is cached makes
/// no round trip to load it, and what the cache serves is always what the database holds. Every instance on the database
/// says four times a second that it is alive (`rocket_sessions_instances`), and a caching
/// instance serves from its cache only while it holds the database's cache claim
/// (`rocket_sessions_claim`), which it may take only while no other instance is alive. Every
/// statement that changes or deletes an existing session, from any instance, checks the claim
/// (under an advisory lock that claiming waits for) and waits while another instance holds
/// it, asking it to let go (`NOTIFY rocket_sessions`). So a single instance serves from its
/// cache, and its own changes update it as they commit; when a second instance starts, its
/// first change makes the holder stop serving from its cache and give the claim up, and while
/// two or more run, none serves from a cache. The claim is a lease of 1.5 seconds renewed
/// every quarter second on a connection of its own; the holder stops serving half a second
/// before the lease could lapse by the database's clock (counting by the monotonic and the
/// wall clock, so a suspended machine resumes not serving), and gives the claim up at
/// shutdown. A holder that vanishes without giving it up delays other instances' changes until
/// its lease lapses (at most 1.5 seconds; after 10 seconds a change fails as unavailable). The
/// cache listens for requests to let go on one connection of the pool, and serves nothing
/// while that connection is down, so it needs a pool of at least 2 connections. To change
/// sessions by hand in SQL, see
/// [`PostgresStore::begin_edit_by_hand`](crate::store::PostgresStore::begin_edit_by_hand)
/// (`SELECT rocket_sessions_edit_by_hand()` first in the transaction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresStoreConfig {
    /// Name of the database under `[<profile>.databases]`.
    pub database: String,
    /// Idle lifetime of a session in the store, in seconds.
    pub ttl: u64,
    /// Whether to apply the schema at ignite.
    pub migrate: bool,
    /// Whether new tables are created UNLOGGED.
    pub unlogged: bool,
    /// Seconds between sweeps of expired sessions.
    pub sweep_interval: u64,
    /// Most sessions deleted by one sweep statement.
    pub sweep_batch: u32,
    /// Most sessions kept in this instance's memory; 0 turns the cache off.
    pub cache: usize,
    /// Keys whose values are indexed, for `destroy_where` and `list_where`.
    pub indexed_keys: Vec<String>,
}

/// A larger cache than this is a mistake (it would hold gigabytes).
const MAX_CACHE: usize = 10_000_000;
/// The PostgreSQL store's cache unless configured: none (see [`PostgresStoreConfig`]).
const DEFAULT_CACHE: usize = 0;
const WEEK: u64 = 7 * 86_400;
/// How often a session's cookie is re-issued and its stored life extended, unless configured.
const DEFAULT_REFRESH: u64 = 60;
/// Durations above this are refused: they overflow nothing, and mean nothing either.
const MAX_SECONDS: u64 = 100 * 365 * 86_400;
/// The shortest secret key we accept, in bytes.
pub const MIN_KEY_LEN: usize = 32;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default = "default_cookie_name")]
    cookie_name: String,
    #[serde(default = "default_path")]
    cookie_path: String,
    #[serde(default)]
    cookie_domain: Option<String>,
    #[serde(default = "yes")]
    cookie_secure: bool,
    #[serde(default = "yes")]
    cookie_http_only: bool,
    #[serde(default = "default_same_site")]
    cookie_same_site: SameSite,
    #[serde(default)]
    expire_on_browser_close: bool,
    #[serde(default = "week")]
    shelf_life: u64,
    #[serde(default)]
    refresh_interval: Option<u64>,
    #[serde(default)]
    max_lifetime: Option<u64>,
    #[serde(default = "minute")]
    shortest_lifetime: u64,
    #[serde(default = "thirty_days")]
    longest_lifetime: u64,
    #[serde(default)]
    secret_key: Option<Secret>,
    #[serde(default)]
    previous_secret_keys: Vec<Secret>,
    #[serde(default = "default_key_file")]
    secret_key_file: PathBuf,
    #[serde(default = "default_max_size")]
    max_session_size: usize,
    #[serde(default)]
    store: RawStore,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    kind: Option<String>,
    ttl: Option<u64>,
    file_path: Option<PathBuf>,
    snapshot_interval: Option<u64>,
    sweep_interval: Option<u64>,
    database: Option<String>,
    migrate: Option<bool>,
    unlogged: Option<bool>,
    sweep_batch: Option<u32>,
    cache: Option<usize>,
    indexed_keys: Option<Vec<String>>,
    key_prefix: Option<String>,
    synchronous: Option<Synchronous>,
    busy_timeout: Option<u64>,
}

fn default_cookie_name() -> String {
    "session".into()
}
fn default_path() -> String {
    "/".into()
}
fn yes() -> bool {
    true
}
fn default_same_site() -> SameSite {
    SameSite::Strict
}
fn week() -> u64 {
    WEEK
}
fn minute() -> u64 {
    60
}
fn thirty_days() -> u64 {
    30 * 86_400
}
fn default_key_file() -> PathBuf {
    "session_secret.key".into()
}
fn default_max_size() -> usize {
    64 * 1024
}

impl SessionConfig {
    /// Reads and validates the `session` table of `figment` for its selected profile, with the
    /// `ROCKET_SESSION_*` environment variables on top.
    ///
    /// In the `debug` profile a missing `secret_key` is read from (or generated into)
    /// `secret_key_file`; that is the only I/O here.
    pub fn from_figment(figment: &Figment) -> Result<SessionConfig, ConfigError> {
        let profile = figment.profile().to_string();
        let mut figment = figment
            .focus("session")
            .merge(Env::prefixed("ROCKET_SESSION_").split("__").global());
        // Figment reads `ROCKET_SESSION_SECRET_KEY=0123...` as a number (dropping the leading
        // zero): the key is the variable's text, as written.
        let secret = std::env::vars_os().find_map(|(name, value)| {
            let name = name.to_str()?;
            name.eq_ignore_ascii_case("ROCKET_SESSION_SECRET_KEY")
                .then(|| value.into_string().ok())?
        });
        if let Some(secret) = secret {
            figment = figment.merge(("secret_key", secret));
        }
        let raw: Raw = figment
            .extract()
            .map_err(|e| from_figment_error(&profile, e))?;
        raw.validate(profile)
    }
}

fn from_figment_error(profile: &str, e: figment::Error) -> ConfigError {
    use figment::error::Kind;
    let mut path = e.path.clone();
    let field = match &e.kind {
        Kind::UnknownField(field, _) => Some(field.as_str()),
        Kind::MissingField(field) => Some(field.as_ref()),
        _ => None,
    };
    if let Some(field) = field.filter(|f| path.last().map(String::as_str) != Some(*f)) {
        path.push(field.to_string());
    }
    let profile = e
        .profile
        .as_ref()
        .map(|p| p.to_string())
        .filter(|p| p != "global" && p != "default")
        .unwrap_or_else(|| profile.to_string());
    let mut reason = match &e.kind {
        // Figment's own wording nests backticks (found `x`, expected `one of `a`, `b``).
        Kind::UnknownField(_, known) => {
            format!("unknown key; the keys here are {}", known.join(", "))
        }
        kind => kind.to_string(),
    };
    if let Some(source) = e.metadata.as_ref().map(|m| m.name.to_string()) {
        reason.push_str(&format!(" (from {source})"));
    }
    ConfigError {
        profile,
        key: if path.is_empty() {
            "<table>".into()
        } else {
            path.join(".")
        },
        reason,
    }
}

impl Raw {
    fn validate(self, profile: String) -> Result<SessionConfig, ConfigError> {
        let err = |key: &str, reason: String| ConfigError {
            profile: profile.clone(),
            key: key.into(),
            reason,
        };
        check_cookie_name(&self.cookie_name).map_err(|r| err("cookie_name", r))?;
        check_path(&self.cookie_path).map_err(|r| err("cookie_path", r))?;
        if let Some(domain) = &self.cookie_domain {
            check_domain(domain).map_err(|r| err("cookie_domain", r))?;
        }
        if self.cookie_same_site == SameSite::None && !self.cookie_secure {
            return Err(err(
                "cookie_same_site",
                "\"none\" requires cookie_secure = true".into(),
            ));
        }
        if self.cookie_name.starts_with("__Secure-") && !self.cookie_secure {
            return Err(err(
                "cookie_name",
                "a `__Secure-` cookie requires cookie_secure = true".into(),
            ));
        }
        if self.cookie_name.starts_with("__Host-") {
            if !self.cookie_secure {
                return Err(err(
                    "cookie_name",
                    "a `__Host-` cookie requires cookie_secure = true".into(),
                ));
            }
            if self.cookie_path != "/" {
                return Err(err(
                    "cookie_name",
                    "a `__Host-` cookie requires cookie_path = \"/\"".into(),
                ));
            }
            if self.cookie_domain.is_some() {
                return Err(err(
                    "cookie_name",
                    "a `__Host-` cookie must not have a cookie_domain".into(),
                ));
            }
        }
        check_seconds(self.shelf_life).map_err(|r| err("shelf_life", r))?;
        if let Some(max) = self.max_lifetime {
            check_seconds(max).map_err(|r| err("max_lifetime", r))?;
        }
        check_seconds(self.shortest_lifetime).map_err(|r| err("shortest_lifetime", r))?;
        check_seconds(self.longest_lifetime).map_err(|r| err("longest_lifetime", r))?;
        if self.shortest_lifetime > self.longest_lifetime {
            return Err(err(
                "shortest_lifetime",
                format!(
                    "must not exceed longest_lifetime ({})",
                    self.longest_lifetime
                ),
            ));
        }
        if self.max_session_size == 0 {
            return Err(err("max_session_size", "must be at least 1".into()));
        }
        let secret_key =
            match self.secret_key {
                Some(Secret(key)) => {
                    check_key(&key).map_err(|r| err("secret_key", r))?;
                    key.into_bytes()
                }
                None if profile == "debug" => {
                    debug_key(&self.secret_key_file).map_err(|r| err("secret_key_file", r))?
                }
                None => return Err(err(
                    "secret_key",
                    "missing: every profile but `debug` needs a secret key of at least 32 bytes \
                     (e.g. the output of `openssl rand -base64 32`)"
                        .into(),
                )),
            };
        let mut previous_secret_keys = Vec::new();
        for (i, Secret(key)) in self.previous_secret_keys.into_iter().enumerate() {
            check_key(&key).map_err(|r| err(&format!("previous_secret_keys[{i}]"), r))?;
            previous_secret_keys.push(key.into_bytes());
        }
        let store = self.store.validate(&err)?;
        let ttl = store.ttl();
        let refresh_interval = match self.refresh_interval {
            Some(refresh) if refresh >= self.shelf_life => {
                return Err(err(
                    "refresh_interval",
                    format!(
                        "must be shorter than shelf_life ({}), or cookies expire before they \
                         are refreshed",
                        self.shelf_life
                    ),
                ))
            }
            Some(refresh) if refresh >= ttl => {
                return Err(err(
                    "refresh_interval",
                    format!(
                        "must be shorter than store.ttl ({ttl}), or sessions that are only read \
                         expire before they are refreshed"
                    ),
                ))
            }
            Some(refresh) => refresh,
            // Unwritten: once a minute, or twice within the shorter lifetime when that is short.
            None => DEFAULT_REFRESH.min(self.shelf_life / 2).min(ttl / 2),
        };
        Ok(SessionConfig {
            profile: profile.clone(),
            cookie_name: self.cookie_name,
            cookie_path: self.cookie_path,
            cookie_domain: self.cookie_domain,
            cookie_secure: self.cookie_secure,
            cookie_http_only: self.cookie_http_only,
            expire_on_browser_close: self.expire_on_browser_close,
            cookie_same_site: self.cookie_same_site,
            shelf_life: self.shelf_life,
            refresh_interval,
            max_lifetime: self.max_lifetime,
            shortest_lifetime: self.shortest_lifetime,
            longest_lifetime: self.longest_lifetime,
            secret_key,
            previous_secret_keys,
            max_session_size: self.max_session_size,
            store,
        })
    }
}

impl RawStore {
    fn validate(
        self,
        err: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<StoreConfig, ConfigError> {
        let ttl = self.ttl.unwrap_or(WEEK);
        check_seconds(ttl).map_err(|r| err("store.ttl", r))?;
        let sweep_interval = self.sweep_interval.unwrap_or(60);
        check_seconds(sweep_interval).map_err(|r| err("store.sweep_interval", r))?;
        let kind = self.kind.as_deref().unwrap_or("memory");
        let refuse = |key: &str, present: bool| match present {
            true => Err(err(
                &format!("store.{key}"),
                format!("not a setting of the `{kind}` store"),
            )),
            false => Ok(()),
        };
        match kind {
            "memory" => {
                refuse("database", self.database.is_some())?;
                refuse("migrate", self.migrate.is_some())?;
                refuse("unlogged", self.unlogged.is_some())?;
                refuse("sweep_batch", self.sweep_batch.is_some())?;
                refuse("cache", self.cache.is_some())?;
                refuse("indexed_keys", self.indexed_keys.is_some())?;
                refuse("key_prefix", self.key_prefix.is_some())?;
                refuse("synchronous", self.synchronous.is_some())?;
                refuse("busy_timeout", self.busy_timeout.is_some())?;
                let snapshot_interval = self.snapshot_interval.unwrap_or(30);
                if snapshot_interval > MAX_SECONDS {
                    return Err(err("store.snapshot_interval", "too large".into()));
                }
                let file_path = match self.file_path {
                    None => Some(PathBuf::from("sessions.snapshot")),
                    Some(p) if p.as_os_str().is_empty() => None,
                    Some(p) => Some(p),
                };
                Ok(StoreConfig::Memory(MemoryStoreConfig {
                    ttl,
                    file_path,
                    snapshot_interval,
                    sweep_interval,
                }))
            }
            "postgres" => {
                refuse("file_path", self.file_path.is_some())?;
                refuse("snapshot_interval", self.snapshot_interval.is_some())?;
                refuse("key_prefix", self.key_prefix.is_some())?;
                refuse("synchronous", self.synchronous.is_some())?;
                refuse("busy_timeout", self.busy_timeout.is_some())?;
                let database = database(self.database, &err)?;
                let sweep_batch = sweep_batch(self.sweep_batch, &err)?;
                let cache = self.cache.unwrap_or(DEFAULT_CACHE);
                if cache > MAX_CACHE {
                    return Err(err("store.cache", format!("at most {MAX_CACHE} sessions")));
                }
                let indexed_keys = indexed_keys(self.indexed_keys, &err)?;
                Ok(StoreConfig::Postgres(PostgresStoreConfig {
                    database,
                    ttl,
                    migrate: self.migrate.unwrap_or(true),
                    unlogged: self.unlogged.unwrap_or(false),
                    sweep_interval,
                    sweep_batch,
                    cache,
                    indexed_keys,
                }))
            }
            "redis" => {
                for (key, present) in [
                    ("file_path", self.file_path.is_some()),
                    ("snapshot_interval", self.snapshot_interval.is_some()),
                    ("migrate", self.migrate.is_some()),
                    ("unlogged", self.unlogged.is_some()),
                    ("sweep_interval", self.sweep_interval.is_some()),
                    ("sweep_batch", self.sweep_batch.is_some()),
                    ("cache", self.cache.is_some()),
                    ("synchronous", self.synchronous.is_some()),
                    ("busy_timeout", self.busy_timeout.is_some()),
                ] {
                    refuse(key, present)?;
                }
                let key_prefix = self.key_prefix.unwrap_or_else(|| "rocket_sessions:".into());
                if key_prefix.is_empty() {
                    return Err(err(
                        "store.key_prefix",
                        "must not be empty: the store's keys would mix with the app's".into(),
                    ));
                }
                Ok(StoreConfig::Redis(RedisStoreConfig {
                    database: database(self.database, &err)?,
                    ttl,
                    key_prefix,
                    indexed_keys: indexed_keys(self.indexed_keys, &err)?,
                }))
            }
            "sqlite" => {
                refuse("file_path", self.file_path.is_some())?;
                refuse("snapshot_interval", self.snapshot_interval.is_some())?;
                refuse("unlogged", self.unlogged.is_some())?;
                refuse("cache", self.cache.is_some())?;
                refuse("key_prefix", self.key_prefix.is_some())?;
                let busy_timeout = self.busy_timeout.unwrap_or(5);
                check_seconds(busy_timeout).map_err(|r| err("store.busy_timeout", r))?;
                Ok(StoreConfig::Sqlite(SqliteStoreConfig {
                    database: database(self.database, &err)?,
                    ttl,
                    migrate: self.migrate.unwrap_or(true),
                    synchronous: self.synchronous.unwrap_or(Synchronous::Full),
                    busy_timeout,
                    sweep_interval,
                    sweep_batch: sweep_batch(self.sweep_batch, &err)?,
                    indexed_keys: indexed_keys(self.indexed_keys, &err)?,
                }))
            }
            other => Err(err(
                "store.kind",
                format!(
                    "unknown store `{other}`: expected \"memory\", \"postgres\", \"redis\" or \
                     \"sqlite\""
                ),
            )),
        }
    }
}

/// The `database` of a store on a pool: `"sessions"` unless set, never empty.
fn database(
    database: Option<String>,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<String, ConfigError> {
    let database = database.unwrap_or_else(|| "sessions".into());
    if database.is_empty() {
        return Err(err("store.database", "must not be empty".into()));
    }
    Ok(database)
}

/// The `sweep_batch` of a store that sweeps in statements: 1000 unless set, at least 1.
fn sweep_batch(
    batch: Option<u32>,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<u32, ConfigError> {
    match batch.unwrap_or(1000) {
        0 => Err(err("store.sweep_batch", "must be at least 1".into())),
        batch => Ok(batch),
    }
}

/// The `indexed_keys` of a store: each non-empty text without NUL.
fn indexed_keys(
    keys: Option<Vec<String>>,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Vec<String>, ConfigError> {
    let keys = keys.unwrap_or_default();
    if keys.iter().any(|key| key.is_empty() || key.contains('\0')) {
        return Err(err(
            "store.indexed_keys",
            "a key must be non-empty text without NUL".into(),
        ));
    }
    Ok(keys)
}
