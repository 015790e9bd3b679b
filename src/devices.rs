//! A user's sessions, for a "your devices" page: listed by a key's value, each with an opaque
//! handle by which one is revoked. Ids stay hashed at rest, and a handle is neither an id nor a
//! store key: it is derived from the store key one way.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::error::SessionError;
use crate::id::StoreKey;
use crate::manager::SessionManager;
use crate::session::Session;
use crate::store::SessionSummary;
use crate::value::Encoded;

/// An opaque name for one stored session, safe to show in a page and to put in a URL: it
/// cannot be turned back into the session's id or its store key. 32 hex digits; parses from
/// them ([`FromStr`], and as a Rocket path parameter).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionHandle([u8; 16]);

impl SessionHandle {
    /// The handle of the session filed under `key`.
    pub fn of(key: &StoreKey) -> SessionHandle {
        let digest = Sha256::new()
            .chain_update(b"rocket_server_sessions handle\0")
            .chain_update(key.0)
            .finalize();
        SessionHandle(digest[..16].try_into().expect("16 of 32 bytes"))
    }
}

impl fmt::Display for SessionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionHandle({self})")
    }
}

/// The text was not the 32 lowercase hex digits of a [`SessionHandle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSessionHandle;

impl fmt::Display for InvalidSessionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a session handle (32 lowercase hex digits)")
    }
}

impl std::error::Error for InvalidSessionHandle {}

impl FromStr for SessionHandle {
    type Err = InvalidSessionHandle;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // One spelling per handle: lowercase only.
        if s.len() != 32 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(InvalidSessionHandle);
        }
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| InvalidSessionHandle)?;
        Ok(SessionHandle(bytes))
    }
}

impl<'a> rocket::request::FromParam<'a> for SessionHandle {
    type Error = InvalidSessionHandle;

    fn from_param(param: &'a str) -> Result<Self, Self::Error> {
        param.parse()
    }
}

impl Serialize for SessionHandle {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// One live session of a listing ([`Session::list_where`], [`SessionManager::list_where`]).
/// Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionInfo {
    /// Names the session for [`SessionManager::revoke_where`].
    pub handle: SessionHandle,
    /// When the session was created (signing in; cycling the id keeps it).
    pub created: u64,
    /// The session's last activity: its last write to the store, so within the
    /// `refresh_interval` of its last request.
    pub last_active: u64,
    /// When the store lets it expire unless it is used again.
    pub expires: u64,
    /// Whether it is the session of the request that listed it.
    pub current: bool,
}

impl SessionManager {
    /// The live sessions whose `key` holds `value` (say, all sessions of one user), the most
    /// recently active first, for a "your devices" page. Values compare by their MessagePack
    /// encoding, as in [`destroy_where`](Self::destroy_where). Call
    /// [`Session::list_where`] instead to have the request's own session marked `current`.
    pub async fn list_where<T: Serialize>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<Vec<SessionInfo>, SessionError> {
        self.listed(key, value, None).await
    }

    async fn listed<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        current: Option<StoreKey>,
    ) -> Result<Vec<SessionInfo>, SessionError> {
        Ok(self
            .summaries(key, value)
            .await?
            .into_iter()
            .map(|s| SessionInfo {
                handle: SessionHandle::of(&s.key),
                created: s.created,
                last_active: s.active,
                expires: s.expires,
                current: Some(s.key) == current,
            })
            .collect())
    }

    /// The store's summaries, without sessions past `max_lifetime`, most recent first.
    async fn summaries<T: Serialize>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<Vec<SessionSummary>, SessionError> {
        let bytes = Encoded::new(value)?;
        let now = self.now();
        let mut found = self.store().list_where(key, bytes.as_bytes(), now).await?;
        if let Some(max) = self.config().max_lifetime {
            found.retain(|s| now.saturating_sub(s.created) < max);
        }
        found.sort_by(|a, b| b.active.cmp(&a.active).then(a.key.cmp(&b.key)));
        Ok(found)
    }

    /// Ends the session named by `handle` if its `key` holds `value` (so a user can revoke
    /// only their own sessions: pass the signed-in user's value, not one from the request);
    /// returns whether it did. Its cookie then leads to a new, empty session.
    pub async fn revoke_where<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        handle: &SessionHandle,
    ) -> Result<bool, SessionError> {
        let found = self.summaries(key, value).await?;
        match found.iter().find(|s| SessionHandle::of(&s.key) == *handle) {
            Some(s) => {
                self.store().destroy(&s.key).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

impl Session<'_> {
    /// [`SessionManager::list_where`], with this request's session marked `current`.
    ///
    /// ```
    /// use rocket::serde::json::Json;
    /// use rocket_server_sessions::{Session, SessionError, SessionInfo};
    ///
    /// #[rocket::get("/devices")]
    /// async fn devices(session: Session<'_>) -> Result<Json<Vec<SessionInfo>>, SessionError> {
    ///     let user: String = session.get("user")?;
    ///     Ok(Json(session.list_where("user", &user).await?))
    /// }
    /// ```
    pub async fn list_where<T: Serialize>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<Vec<SessionInfo>, SessionError> {
        self.manager().listed(key, value, self.stored_key()).await
    }

    /// The handle of this session as it is stored, if it is (a new session has none yet).
    pub fn handle(&self) -> Option<SessionHandle> {
        self.stored_key().map(|key| SessionHandle::of(&key))
    }
}
