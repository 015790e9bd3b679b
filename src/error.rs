//! The crate's errors: one enum for handlers, one for stores, one for configuration.

use std::fmt;
use std::sync::Arc;

use rocket::http::Status;
use rocket::request::Request;
use rocket::response::{self, status, Responder};

/// What went wrong with a session operation.
///
/// Handlers can return it with `?`: as a [`Responder`] it answers `500 Internal Server Error`
/// (or `503 Service Unavailable` when the store cannot be reached) with an empty body, and logs
/// the cause without the session id.
#[derive(Debug)]
#[non_exhaustive]
pub enum SessionError {
    /// The key is not in the session and no default was given (koyo raises a user error here).
    MissingKey(String),
    /// A value could not be encoded as MessagePack.
    Encode(String),
    /// The stored bytes of this key do not decode to the requested type.
    Decode {
        /// The key whose value did not decode.
        key: String,
        /// Why it did not decode.
        reason: String,
    },
    /// A `set` or `update` would make the session larger than `max_session_size`.
    TooLarge {
        /// The session's encoded size had the change been made, in bytes.
        size: usize,
        /// The configured limit, in bytes.
        limit: usize,
    },
    /// No live session has this id (for the [`SessionManager`](crate::SessionManager)'s
    /// calls on an explicit id).
    UnknownSession,
    /// [`Session::set_lifetime`](crate::Session::set_lifetime) was given a lifetime outside
    /// the configured `shortest_lifetime ..= longest_lifetime`; the lifetime is unchanged.
    LifetimeOutOfBounds {
        /// The lifetime asked for, in seconds.
        seconds: u64,
        /// `shortest_lifetime`.
        shortest: u64,
        /// `longest_lifetime`.
        longest: u64,
    },
    /// The store failed.
    Store(StoreError),
    /// The [`Sessions`](crate::Sessions) fairing is not attached to this Rocket instance.
    NotAttached,
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::MissingKey(key) => write!(f, "session key `{key}` is not set"),
            SessionError::Encode(reason) => write!(f, "session value does not encode: {reason}"),
            SessionError::Decode { key, reason } => {
                write!(f, "session value of `{key}` does not decode: {reason}")
            }
            SessionError::TooLarge { size, limit } => {
                write!(
                    f,
                    "session would be {size} bytes, over the limit of {limit}"
                )
            }
            SessionError::UnknownSession => write!(f, "no live session has this id"),
            SessionError::LifetimeOutOfBounds {
                seconds,
                shortest,
                longest,
            } => write!(
                f,
                "a session lifetime of {seconds} s is outside the configured {shortest} to \
                 {longest} s (shortest_lifetime, longest_lifetime)"
            ),
            SessionError::Store(e) => write!(f, "session store: {e}"),
            SessionError::NotAttached => write!(f, "the Sessions fairing is not attached"),
        }
    }
}

impl std::error::Error for SessionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SessionError::Store(e) => Some(e),
            _ => None,
        }
    }
}

impl From<StoreError> for SessionError {
    fn from(e: StoreError) -> Self {
        SessionError::Store(e)
    }
}

impl SessionError {
    /// The HTTP status this error answers with: 503 when the store is unavailable, else 500.
    pub fn status(&self) -> Status {
        match self {
            SessionError::Store(e) if e.is_unavailable() => Status::ServiceUnavailable,
            _ => Status::InternalServerError,
        }
    }
}

/// Lets `?` turn a session error into the [`Status`] it answers with (logged, as the
/// responder logs it), in handlers that return `Result<T, Status>`:
///
/// ```
/// use rocket::http::Status;
/// use rocket_server_sessions::Session;
///
/// #[rocket::get("/")]
/// fn index(session: Session<'_>) -> Result<String, Status> {
///     let user: String = session.get("user")?; // 500 if missing or undecodable
///     Ok(format!("Hello, {user}"))
/// }
/// ```
impl From<SessionError> for Status {
    fn from(e: SessionError) -> Status {
        rocket::error!("session error: {e}");
        e.status()
    }
}

/// Lets `?` turn a session error into a [`status::Custom`] with its status and an empty body
/// (the error is logged, never sent), in handlers that return `Result<T, status::Custom<B>>`:
///
/// ```
/// use rocket::response::status;
/// use rocket_server_sessions::Session;
///
/// #[rocket::post("/cart/<item>")]
/// fn add(session: Session<'_>, item: &str) -> Result<String, status::Custom<String>> {
///     let n = session.update_or("items", 0u32, |n| n + 1)?;
///     Ok(format!("{item} added; {n} in the cart"))
/// }
/// ```
impl<B: Default> From<SessionError> for status::Custom<B> {
    fn from(e: SessionError) -> status::Custom<B> {
        status::Custom(Status::from(e), B::default())
    }
}

impl<'r> Responder<'r, 'static> for SessionError {
    fn respond_to(self, _: &'r Request<'_>) -> response::Result<'static> {
        rocket::error!("session error: {self}");
        Err(self.status())
    }
}

/// What went wrong inside a [`SessionStore`](crate::store::SessionStore): a
/// [kind](StoreErrorKind), what was being done, and the error that caused it, if any.
///
/// Its `Display` names the cause too, so that one log line says everything; the cause is also
/// [`source`](std::error::Error::source).
///
/// ```
/// use rocket_server_sessions::{StoreError, StoreErrorKind};
///
/// let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
/// let e = StoreError::new(StoreErrorKind::Unavailable, "cannot reach the database").with_source(refused);
/// assert_eq!(e.kind(), StoreErrorKind::Unavailable);
/// assert_eq!(e.to_string(), "unavailable: cannot reach the database: connection refused");
/// ```
#[derive(Debug, Clone)]
pub struct StoreError {
    kind: StoreErrorKind,
    context: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

/// The kinds of [`StoreError`]: what a caller may do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The store cannot be reached now (a database that is down, a change held back by
    /// another instance); worth retrying later. Requests answer 503.
    Unavailable,
    /// Concurrent changes collided (a deadlock) and retrying did not get through.
    Conflict,
    /// Stored bytes are not what the store wrote (a corrupt file or row).
    Corrupt,
    /// A name or value is larger than the store can hold.
    TooLarge,
    /// A file the store keeps could not be read or written.
    Io,
    /// Any other failure.
    Other,
}

impl StoreError {
    /// An error of `kind`, while doing what `context` says.
    pub fn new(kind: StoreErrorKind, context: impl Into<String>) -> StoreError {
        StoreError {
            kind,
            context: context.into(),
            source: None,
        }
    }

    /// The same error, caused by `source`.
    pub fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> StoreError {
        self.source = Some(Arc::from(source.into()));
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// Whether the store cannot be reached now (the error answers 503).
    pub fn is_unavailable(&self) -> bool {
        self.kind == StoreErrorKind::Unavailable
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            StoreErrorKind::Unavailable => f.write_str("unavailable: ")?,
            StoreErrorKind::Conflict => f.write_str("conflict: ")?,
            StoreErrorKind::Corrupt => f.write_str("corrupt data: ")?,
            _ => {}
        }
        f.write_str(&self.context)?;
        match &self.source {
            Some(source) => write!(f, ": {source}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// An invalid `session` configuration: it names the key and the profile.
///
/// The fairing logs it and Rocket refuses to launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The profile that was being read, e.g. `release`.
    pub profile: String,
    /// The offending key, relative to the `session` table, e.g. `store.ttl`.
    pub key: String,
    /// Why it was refused.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid session configuration: key `session.{}` in profile `{}`: {}",
            self.key, self.profile, self.reason
        )
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_that_cannot_be_reached_answers_503_through_question_mark_too() {
        let unavailable =
            || SessionError::Store(StoreError::new(StoreErrorKind::Unavailable, "down"));
        assert_eq!(Status::from(unavailable()), Status::ServiceUnavailable);
        let custom: status::Custom<String> = unavailable().into();
        assert_eq!(
            (custom.0, custom.1.as_str()),
            (Status::ServiceUnavailable, "")
        );
        let missing = SessionError::MissingKey("user".into());
        assert_eq!(Status::from(missing), Status::InternalServerError);
    }
}
