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
mod store;
mod values;

use debug_key::debug_key;
use store::RawStore;
pub use store::{
    MemoryStoreConfig, PostgresStoreConfig, RedisStoreConfig, SqliteStoreConfig, StoreConfig,
    Synchronous,
};
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
