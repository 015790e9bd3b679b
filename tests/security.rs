//! Session lifecycle and security requirements, one test each (OWASP Session Management Cheat
//! Sheet, ASVS 5 V7 and V3.3). The README's security table points here.

mod common;

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use rocket::http::Status;
use rocket::serde::json::json;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Mutex;

use rocket_server_sessions::store::{
    ChangeSet, MemoryStore, SessionRecord, SessionStore, SessionSummary,
};
use rocket_server_sessions::{SessionId, SessionManager, StoreError, StoreKey};

const TTL: u64 = 10_000;

fn store() -> Arc<MemoryStore> {
    Arc::new(MemoryStore::new(TTL))
}

#[rocket::async_test]
async fn fixation_an_attacker_chosen_id_is_replaced_and_nothing_is_stored_under_it() {
    let store = store();
    let (client, _) = client_with(store.clone(), json!({})).await;
    // A well-formed value around an id of the attacker's choosing, with a forged tag.
    let chosen = SessionId::from_bytes([7; 32]);
    let mut raw = chosen.as_bytes().to_vec();
    raw.extend_from_slice(&START.to_be_bytes());
    raw.extend_from_slice(&[0u8; 32]);
    let forged = URL_SAFE_NO_PAD.encode(&raw);
    assert_eq!(forged.len(), 96, "the shape of a real cookie value");
    for value in [forged.as_str(), &chosen.to_string()] {
        let reply = post_with(&client, "/set/user/victim", Some(value)).await;
        let issued = reply.cookie.expect("a session of our own making");
        let id = get_with(&client, "/id", Some(&issued)).await.body;
        assert_ne!(id, chosen.to_string());
    }
    assert_eq!(store.load(&chosen.store_key(), START).await.unwrap(), None);
}

#[rocket::async_test]
async fn logout_removal_cookie_matches_name_path_and_domain() {
    let (client, _) = client_with(
        store(),
        json!({ "cookie_path": "/app", "cookie_domain": "example.com" }),
    )
    .await;
    // Routes are mounted at `/`; the cookie's path is only an attribute here.
    let cookie = post_with(&client, "/set/user/ada", None)
        .await
        .cookie
        .unwrap();
    let out = post_with(&client, "/destroy", Some(&cookie)).await;
    let removal = &out.set_cookies[0];
    assert!(removal.starts_with("session=;"), "{removal}");
    for attribute in ["Max-Age=0", "Path=/app", "Domain=example.com"] {
        assert!(removal.contains(attribute), "{removal} lacks {attribute}");
    }
    assert_eq!(out.header("Cache-Control"), ["no-store"]);
    assert_eq!(out.header("Vary"), ["Cookie"]);
}

#[rocket::async_test]
async fn log_out_everywhere_ends_every_session_of_one_user() {
    let store = store();
    let (client, _) = client_with(store.clone(), json!({})).await;
    let manager = client.rocket().state::<SessionManager>().unwrap();
    let mut cookies = Vec::new();
    for user in ["42", "42", "42", "7"] {
        let cookie = post_with(&client, "/set/theme/dark", None)
            .await
            .cookie
            .unwrap();
        let id: SessionId = id_of(&client, &cookie).await;
        manager
            .set(&id, "user_id", user.parse::<u64>().unwrap())
            .await
            .unwrap();
        cookies.push(cookie);
    }
    assert_eq!(manager.destroy_where("user_id", &42u64).await.unwrap(), 3);
    for (cookie, alive) in cookies.iter().zip([false, false, false, true]) {
        let reply = get_with(&client, "/get/theme", Some(cookie)).await;
        assert_eq!(reply.status == Status::Ok, alive);
    }
}

#[rocket::async_test]
async fn max_lifetime_ends_a_session_however_active_it_is() {
    let (client, clock) = client_with(store(), json!({ "max_lifetime": 100 })).await;
    let cookie = get_with(&client, "/count", None).await.cookie.unwrap();
    let mut current = cookie;
    for _ in 0..9 {
        clock.advance(10);
        let reply = get_with(&client, "/count", Some(&current)).await;
        // Re-issued when a refresh is due (once a minute by default).
        current = reply.cookie.unwrap_or(current);
    }
    assert_eq!(get_with(&client, "/peek", Some(&current)).await.body, "10");
    clock.advance(10);
    let reply = get_with(&client, "/peek", Some(&current)).await;
    assert_eq!(reply.body, "0", "100 s after creation, activity or not");
    assert_eq!(
        reply.cookie.as_deref(),
        Some(""),
        "and the cookie is removed"
    );
}

#[rocket::async_test]
async fn max_lifetime_survives_cycling_the_id() {
    let (client, clock) = client_with(store(), json!({ "max_lifetime": 100 })).await;
    let cookie = get_with(&client, "/count", None).await.cookie.unwrap();
    clock.advance(60);
    let cycled = post_with(&client, "/cycle", Some(&cookie))
        .await
        .cookie
        .unwrap();
    clock.advance(39);
    assert_eq!(get_with(&client, "/peek", Some(&cycled)).await.body, "1");
    clock.advance(1);
    assert_eq!(get_with(&client, "/peek", Some(&cycled)).await.body, "0");
}

/// A memory store whose next `refusals` creates and cycles answer "taken", as a store does
/// when a drawn id collides with a live session; it records the keys they were asked for.
struct Colliding {
    inner: MemoryStore,
    refusals: AtomicUsize,
    asked: Mutex<Vec<StoreKey>>,
}

impl Colliding {
    fn new(refusals: usize) -> Arc<Colliding> {
        Arc::new(Colliding {
            inner: MemoryStore::new(TTL),
            refusals: AtomicUsize::new(refusals),
            asked: Mutex::default(),
        })
    }

    /// Whether this call is refused, after recording `key`.
    fn refuses(&self, key: &StoreKey) -> bool {
        self.asked.lock().unwrap().push(*key);
        let take = |n: usize| n.checked_sub(1);
        self.refusals.fetch_update(SeqCst, SeqCst, take).is_ok()
    }

    fn asked(&self) -> Vec<StoreKey> {
        self.asked.lock().unwrap().clone()
    }
}

#[rocket::async_trait]
impl SessionStore for Colliding {
    async fn load(&self, key: &StoreKey, now: u64) -> Result<Option<SessionRecord>, StoreError> {
        self.inner.load(key, now).await
    }
    async fn create(
        &self,
        key: &StoreKey,
        created: u64,
        changes: &ChangeSet,
        now: u64,
    ) -> Result<bool, StoreError> {
        if self.refuses(key) {
            return Ok(false);
        }
        self.inner.create(key, created, changes, now).await
    }
    async fn update(
        &self,
        key: &StoreKey,
        changes: &ChangeSet,
        now: u64,
    ) -> Result<bool, StoreError> {
        self.inner.update(key, changes, now).await
    }
    async fn cycle(
        &self,
        old: &StoreKey,
        new: &StoreKey,
        changes: &ChangeSet,
        now: u64,
    ) -> Result<bool, StoreError> {
        if self.refuses(new) {
            return Ok(false);
        }
        self.inner.cycle(old, new, changes, now).await
    }
    async fn destroy(&self, key: &StoreKey) -> Result<(), StoreError> {
        self.inner.destroy(key).await
    }
    async fn destroy_where(&self, name: &str, value: &[u8]) -> Result<u64, StoreError> {
        self.inner.destroy_where(name, value).await
    }
    async fn list_where(
        &self,
        name: &str,
        value: &[u8],
        now: u64,
    ) -> Result<Vec<SessionSummary>, StoreError> {
        self.inner.list_where(name, value, now).await
    }
    async fn sweep(&self, now: u64) -> Result<u64, StoreError> {
        self.inner.sweep(now).await
    }
}

#[rocket::async_test]
async fn a_new_session_whose_id_collides_is_stored_under_a_newly_drawn_one() {
    let store = Colliding::new(2);
    let (client, _) = client_with(store.clone(), json!({})).await;
    let reply = post_with(&client, "/set/user/ada", None).await;
    assert_eq!(reply.status, Status::Ok);
    let id = id_of(&client, &reply.cookie.expect("a cookie")).await;
    let asked = store.asked();
    assert_eq!(asked.len(), 3, "two ids taken, the third free");
    assert_eq!(
        asked.iter().collect::<HashSet<_>>().len(),
        3,
        "each drawn anew"
    );
    assert_eq!(asked[2], id.store_key(), "the cookie names the stored one");
    assert!(store.inner.load(&asked[2], START).await.unwrap().is_some());
}

#[rocket::async_test]
async fn a_new_session_whose_ids_keep_colliding_fails_and_stores_nothing() {
    let store = Colliding::new(3);
    let (client, _) = client_with(store.clone(), json!({})).await;
    let reply = post_with(&client, "/set/user/ada", None).await;
    assert_eq!(reply.status, Status::InternalServerError);
    assert_eq!(reply.cookie, None);
    assert_eq!(store.asked().len(), 3);
    assert!(store.inner.is_empty());
}

#[rocket::async_test]
async fn a_cycled_session_whose_new_id_collides_moves_to_a_newly_drawn_one() {
    let store = Colliding::new(0);
    let (client, _) = client_with(store.clone(), json!({})).await;
    let old = post_with(&client, "/set/user/ada", None)
        .await
        .cookie
        .unwrap();
    store.refusals.store(1, SeqCst);
    let cycled = post_with(&client, "/cycle", Some(&old)).await;
    let new = cycled.cookie.expect("a new cookie");
    let asked = store.asked();
    assert_eq!(asked.len(), 3, "one create, then two cycles");
    assert_ne!(asked[1], asked[2], "drawn anew");
    assert_eq!(id_of(&client, &new).await.store_key(), asked[2]);
    assert_eq!(get_with(&client, "/get/user", Some(&new)).await.body, "ada");
    let replay = get_with(&client, "/untouched", Some(&old)).await;
    assert_eq!(replay.body, "true", "the old cookie leads nowhere");
}

#[rocket::async_test]
async fn a_cookie_value_over_4_kib_is_refused_unread_and_removed() {
    let store = rocket_server_sessions::store::MemoryStore::new(TTL);
    let store = Counting::new(store);
    let (client, _) = client_with(store.clone(), json!({})).await;
    let huge = "A".repeat(4097);
    let reply = get_with(&client, "/untouched", Some(&huge)).await;
    assert_eq!((reply.status, reply.body.as_str()), (Status::Ok, "true"));
    assert_eq!(
        reply.cookie.as_deref(),
        Some(""),
        "a removal cookie, so the browser stops sending it"
    );
    assert_eq!(store.calls(), 0, "never looked up");
}

/// A browser can send two cookies of one name (one left by an older path or domain, say):
/// the one that verifies is the session, in either order, and nothing is removed.
#[rocket::async_test]
async fn of_two_cookies_of_the_sessions_name_the_one_that_verifies_wins() {
    let (client, _) = client_with(store(), json!({})).await;
    let good = get_with(&client, "/count", None).await.cookie.unwrap();
    for (n, header) in [
        format!("session={good}; session=junk"),
        format!("session=junk; session={good}"),
        format!("session=junk; other=1; session={good}"),
    ]
    .iter()
    .enumerate()
    {
        let res = client
            .get("/count")
            .header(rocket::http::Header::new("Cookie", header.clone()))
            .dispatch()
            .await;
        assert_eq!(res.status(), Status::Ok);
        assert!(
            session_cookie(&res).is_none_or(|c| !c.is_empty()),
            "{header}"
        );
        assert_eq!(
            res.into_string().await.unwrap(),
            (n + 2).to_string(),
            "{header}"
        );
    }
}

#[rocket::async_test]
async fn a_corrupt_stored_value_fails_only_its_own_key() {
    let store = store();
    let (client, _) = client_with(store.clone(), json!({})).await;
    let cookie = post_with(&client, "/set/good/fine", None)
        .await
        .cookie
        .unwrap();
    let id: SessionId = id_of(&client, &cookie).await;
    let mut corrupt = ChangeSet::new();
    corrupt.set("bad", vec![0xc1, 0xff, 0x00]); // 0xc1 is never valid MessagePack
    assert!(store
        .update(&id.store_key(), &corrupt, START)
        .await
        .unwrap());
    assert_eq!(
        get_with(&client, "/get/good", Some(&cookie)).await.body,
        "fine"
    );
    let bad = get_with(&client, "/get/bad", Some(&cookie)).await;
    assert_eq!(bad.status, Status::InternalServerError);
    let manager = client.rocket().state::<SessionManager>().unwrap();
    let error = manager.get::<String>(&id, "bad").await.unwrap_err();
    assert!(
        matches!(&error, rocket_server_sessions::SessionError::Decode { key, .. } if key == "bad"),
        "{error:?}"
    );
    assert!(!error.to_string().contains(&id.to_string()));
}

#[rocket::async_test]
async fn host_prefixed_cookies_are_served_with_their_rules() {
    let (client, _) = client_with(store(), json!({ "cookie_name": "__Host-session" })).await;
    let res = client.get("/count").dispatch().await;
    let header = res.headers().get_one("Set-Cookie").unwrap().to_string();
    assert!(header.starts_with("__Host-session="), "{header}");
    assert!(
        header.contains("Secure") && header.contains("Path=/"),
        "{header}"
    );
    assert!(!header.contains("Domain"), "{header}");
}

#[rocket::async_test]
async fn host_prefix_rules_are_enforced_at_launch() {
    for session in [
        json!({ "cookie_name": "__Host-s", "cookie_secure": false }),
        json!({ "cookie_name": "__Host-s", "cookie_path": "/app" }),
        json!({ "cookie_name": "__Host-s", "cookie_domain": "example.com" }),
        json!({ "cookie_name": "__Secure-s", "cookie_secure": false }),
        json!({ "cookie_same_site": "none", "cookie_secure": false }),
        json!({ "secret_key": "31 bytes, one short of the rule" }),
    ] {
        let rocket = app(
            figment(session.clone()),
            &rocket_server_sessions::ManualClock::new(START),
        );
        let error = launch_error(rocket).await;
        assert!(
            matches!(error.kind(), rocket::error::ErrorKind::FailedFairings(_)),
            "{session}"
        );
    }
}

#[rocket::async_test]
async fn ids_come_from_the_csprng_and_carry_256_bits() {
    // Not a test of randomness: that ids are full-width and distinct.
    let ids: Vec<SessionId> = (0..1000).map(|_| SessionId::generate()).collect();
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len());
    let ones: u32 = ids
        .iter()
        .flat_map(|id| id.as_bytes())
        .map(|b| b.count_ones())
        .sum();
    let bits = 1000 * 256;
    assert!(
        (bits * 45 / 100..bits * 55 / 100).contains(&ones),
        "{ones} of {bits}"
    );
}
