//! The toy store of the `store` module's documentation, run through the conformance suite
//! the crate exports: what a third-party store does to prove itself.

use std::sync::Arc;

use rocket_server_sessions::store_conformance;
use rocket_server_sessions::testing::TTL;

use std::collections::HashMap;
use std::sync::Mutex;

use rocket_server_sessions::store::{ChangeSet, SessionRecord, SessionStore, SessionSummary};
use rocket_server_sessions::{StoreError, StoreKey};

struct Stored {
    created: u64,
    active: u64,
    expires: u64,
    data: HashMap<String, Vec<u8>>,
}

struct Toy {
    ttl: u64,
    sessions: Mutex<HashMap<StoreKey, Stored>>,
}

#[rocket::async_trait]
impl SessionStore for Toy {
    async fn load(&self, key: &StoreKey, now: u64) -> Result<Option<SessionRecord>, StoreError> {
        let sessions = self.sessions.lock().unwrap();
        Ok(sessions
            .get(key)
            .filter(|s| s.expires > now)
            .map(|s| SessionRecord {
                created: s.created,
                expires: s.expires,
                data: s.data.clone().into_iter().collect(),
            }))
    }

    async fn create(
        &self,
        key: &StoreKey,
        created: u64,
        changes: &ChangeSet,
        now: u64,
    ) -> Result<bool, StoreError> {
        let mut sessions = self.sessions.lock().unwrap();
        if sessions.get(key).is_some_and(|s| s.expires > now) {
            return Ok(false); // never adopt a live session
        }
        let mut data = HashMap::new();
        changes.apply_to(&mut data);
        let expires = changes.expiry(now, self.ttl);
        sessions.insert(
            *key,
            Stored {
                created,
                active: now,
                expires,
                data,
            },
        );
        Ok(true)
    }

    async fn update(
        &self,
        key: &StoreKey,
        changes: &ChangeSet,
        now: u64,
    ) -> Result<bool, StoreError> {
        let mut sessions = self.sessions.lock().unwrap();
        match sessions.get_mut(key).filter(|s| s.expires > now) {
            Some(s) => {
                changes.apply_to(&mut s.data);
                (s.active, s.expires) = (now, changes.expiry(now, self.ttl));
                Ok(true)
            }
            None => Ok(false), // destroyed or expired: do not bring it back
        }
    }

    async fn cycle(
        &self,
        old: &StoreKey,
        new: &StoreKey,
        changes: &ChangeSet,
        now: u64,
    ) -> Result<bool, StoreError> {
        let mut sessions = self.sessions.lock().unwrap();
        if sessions.contains_key(new) {
            return Ok(false);
        }
        match sessions.remove(old).filter(|s| s.expires > now) {
            Some(mut s) => {
                changes.apply_to(&mut s.data);
                (s.active, s.expires) = (now, changes.expiry(now, self.ttl));
                sessions.insert(*new, s);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn destroy(&self, key: &StoreKey) -> Result<(), StoreError> {
        self.sessions.lock().unwrap().remove(key);
        Ok(())
    }

    async fn destroy_where(&self, name: &str, value: &[u8]) -> Result<u64, StoreError> {
        let mut sessions = self.sessions.lock().unwrap();
        let before = sessions.len();
        sessions.retain(|_, s| s.data.get(name).map(Vec::as_slice) != Some(value));
        Ok((before - sessions.len()) as u64)
    }

    async fn list_where(
        &self,
        name: &str,
        value: &[u8],
        now: u64,
    ) -> Result<Vec<SessionSummary>, StoreError> {
        let sessions = self.sessions.lock().unwrap();
        Ok(sessions
            .iter()
            .filter(|(_, s)| s.expires > now && s.data.get(name).map(Vec::as_slice) == Some(value))
            .map(|(key, s)| SessionSummary {
                key: *key,
                created: s.created,
                active: s.active,
                expires: s.expires,
            })
            .collect())
    }

    async fn sweep(&self, now: u64) -> Result<u64, StoreError> {
        let mut sessions = self.sessions.lock().unwrap();
        let before = sessions.len();
        sessions.retain(|_, s| s.expires > now);
        Ok((before - sessions.len()) as u64)
    }
}
async fn toy() -> Arc<Toy> {
    Arc::new(Toy {
        ttl: TTL,
        sessions: Mutex::default(),
    })
}

store_conformance!(toy);
