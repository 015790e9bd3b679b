//! Session ids and the digests stores keep instead of them.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// Length of a session id in bytes: 256 bits from the OS CSPRNG.
pub const ID_LEN: usize = 32;

/// A session id: 256 random bits from the operating system's CSPRNG.
///
/// It is the bearer token of a session, so `Debug` does not print it; `Display` does (43
/// URL-safe base64 characters), for apps that keep ids to reach sessions through the
/// [`SessionManager`](crate::SessionManager), and `FromStr` parses that form back.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId([u8; ID_LEN]);

impl SessionId {
    /// A fresh id from the OS CSPRNG.
    ///
    /// # Panics
    /// Only if the operating system cannot provide random bytes at all, in which case no
    /// session can be made safe; Rocket turns a panic in a handler into a 500.
    pub fn generate() -> SessionId {
        let mut bytes = [0u8; ID_LEN];
        getrandom::getrandom(&mut bytes).expect("the OS CSPRNG is unavailable");
        SessionId(bytes)
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8; ID_LEN] {
        &self.0
    }

    /// An id from its bytes.
    pub fn from_bytes(bytes: [u8; ID_LEN]) -> SessionId {
        SessionId(bytes)
    }

    /// The key a store files this session under: the SHA-256 digest of the id, so that a
    /// store's contents (a snapshot file, a database dump) hold no usable session token.
    pub fn store_key(&self) -> StoreKey {
        StoreKey(Sha256::digest(self.0).into())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId(<redacted>)")
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&URL_SAFE_NO_PAD.encode(self.0))
    }
}

/// The text is not a session id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSessionId;

impl fmt::Display for InvalidSessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a session id")
    }
}

impl std::error::Error for InvalidSessionId {}

impl FromStr for SessionId {
    type Err = InvalidSessionId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        crate::cookie::decode_exact(s.as_bytes())
            .map(SessionId)
            .ok_or(InvalidSessionId)
    }
}

/// What a store files a session under: SHA-256 of its [`SessionId`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreKey(pub [u8; 32]);

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A digest is no token, but a short prefix is all a reader needs to tell them apart.
        write!(f, "StoreKey({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

/// `len` random bytes from the OS CSPRNG as lowercase hex.
pub(crate) fn random_hex(len: usize) -> Result<String, getrandom::Error> {
    let mut bytes = vec![0u8; len];
    getrandom::getrandom(&mut bytes)?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_round_trip_through_text() {
        let a = SessionId::generate();
        let b = SessionId::generate();
        assert_ne!(a, b);
        let text = a.to_string();
        assert_eq!(text.len(), 43);
        assert_eq!(text.parse::<SessionId>(), Ok(a));
        assert_eq!("nope".parse::<SessionId>(), Err(InvalidSessionId));
    }

    #[test]
    fn debug_never_prints_the_id() {
        let id = SessionId::generate();
        assert!(!format!("{id:?}").contains(&id.to_string()));
    }

    #[test]
    fn store_key_is_the_sha256_of_the_id() {
        let id = SessionId::from_bytes([7; 32]);
        let digest: [u8; 32] = Sha256::digest([7u8; 32]).into();
        assert_eq!(id.store_key().0, digest);
    }
}
