//! One session's lifetime: the configured one, a browser session, or its own length ("remember
//! me"), and what each means for the cookie, the store and the refresh.

use std::time::Duration;

use crate::config::SessionConfig;

/// How long one session lasts, set by a handler with
/// [`Session::set_lifetime`](crate::Session::set_lifetime): a browser session for one user,
/// thirty days for another who ticked "remember me".
///
/// The signed cookie states a lifetime other than [`Configured`](Lifetime::Configured), so
/// every later request of the session (even one whose handler never takes the `Session`) keeps
/// it; the store's expiry for the session follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lifetime {
    /// As the configuration says: the cookie lasts `shelf_life` (or the browser session, with
    /// `expire_on_browser_close`), the stored session the store's `ttl` after its last request.
    #[default]
    Configured,
    /// The cookie has no `Max-Age`, so the browser drops it when it closes; on the server
    /// `shelf_life` and the store's `ttl` still apply.
    BrowserSession,
    /// The session lasts this long after its last request: the cookie's `Max-Age`, how old the
    /// cookie may be, and the store's expiry. Whole seconds, within the configuration's
    /// `shortest_lifetime` and `longest_lifetime`.
    Idle(Duration),
}

impl Lifetime {
    /// The lifetime a cookie states (see `cookie::Verified::life`).
    pub(crate) fn from_cookie(life: Option<u32>) -> Lifetime {
        match life {
            None => Lifetime::Configured,
            Some(0) => Lifetime::BrowserSession,
            Some(secs) => Lifetime::Idle(Duration::from_secs(secs.into())),
        }
    }

    /// What the cookie states for this lifetime (seconds within `longest_lifetime`, which
    /// the configuration keeps below `u32::MAX`).
    pub(crate) fn to_cookie(self, config: &SessionConfig) -> Option<u32> {
        match self {
            Lifetime::Configured => None,
            Lifetime::BrowserSession => Some(0),
            Lifetime::Idle(_) => Some(self.seconds(config) as u32),
        }
    }

    /// The length of an `Idle` lifetime in seconds, within the configured bounds (a cookie
    /// issued under a longer bound counts as the longest now allowed).
    fn seconds(self, config: &SessionConfig) -> u64 {
        match self {
            Lifetime::Idle(d) => d
                .as_secs()
                .clamp(config.shortest_lifetime, config.longest_lifetime),
            _ => 0,
        }
    }

    /// The cookie's `Max-Age`: `None` for a browser-session cookie.
    pub(crate) fn max_age(self, config: &SessionConfig) -> Option<u64> {
        match self {
            Lifetime::Configured => (!config.expire_on_browser_close).then_some(config.shelf_life),
            Lifetime::BrowserSession => None,
            Lifetime::Idle(_) => Some(self.seconds(config)),
        }
    }

    /// The stored session's idle lifetime, when it is not the store's `ttl`.
    pub(crate) fn store_ttl(self, config: &SessionConfig) -> Option<u64> {
        match self {
            Lifetime::Idle(_) => Some(self.seconds(config)),
            _ => None,
        }
    }

    /// How often the cookie is re-issued and the stored session's life extended: the
    /// configured interval, and at least twice within a short `Idle` lifetime.
    pub(crate) fn refresh_interval(self, config: &SessionConfig) -> u64 {
        match self {
            Lifetime::Idle(_) => config.refresh_interval.min(self.seconds(config) / 2),
            _ => config.refresh_interval,
        }
    }

    /// Whether a handler may set this lifetime under `config`: `Err` names the bounds.
    pub(crate) fn check(self, config: &SessionConfig) -> Result<(), (u64, u64)> {
        match self {
            Lifetime::Idle(d)
                if d.as_secs() < config.shortest_lifetime
                    || d.as_secs() > config.longest_lifetime =>
            {
                Err((config.shortest_lifetime, config.longest_lifetime))
            }
            _ => Ok(()),
        }
    }
}
