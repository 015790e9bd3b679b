//! Session lifecycle and security requirements, one test each (OWASP Session Management Cheat
//! Sheet, ASVS 5 V7 and V3.3). The README's security table points here.

mod common;

use std::sync::Arc;

use common::*;
use rocket::http::Status;
use rocket::serde::json::json;
use rocket_server_sessions::store::{ChangeSet, MemoryStore, SessionStore};
use rocket_server_sessions::{SessionId, SessionManager};

const TTL: u64 = 10_000;

/// URL-safe base64 without padding, for forging values of the right shape.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bits: Vec<bool> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| b >> i & 1 == 1))
        .collect();
    bits.chunks(6)
        .map(|c| {
            let v = c.iter().fold(0usize, |v, &b| v << 1 | b as usize) << (6 - c.len());
            ALPHABET[v] as char
        })
        .collect()
}

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
    let forged = base64url(&raw);
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
async fn fixation_an_unknown_but_validly_signed_id_is_never_adopted() {
    let store = store();
    let (client, _) = client_with(store.clone(), json!({})).await;
    let cookie = post_with(&client, "/set/a/1", None).await.cookie.unwrap();
    let id: SessionId = id_of(&client, &cookie).await;
    store.destroy(&id.store_key()).await.unwrap();
    let reply = post_with(&client, "/set/user/victim", Some(&cookie)).await;
    let new_id = get_with(&client, "/id", Some(&reply.cookie.unwrap()))
        .await
        .body;
    assert_ne!(new_id, id.to_string());
    assert_eq!(store.load(&id.store_key(), START).await.unwrap(), None);
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
        current = reply.cookie.unwrap();
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

#[rocket::async_test]
async fn new_ids_never_reuse_a_live_one() {
    let (client, _) = client_with(store(), json!({})).await;
    let mut ids = std::collections::HashSet::new();
    for _ in 0..200 {
        let cookie = get_with(&client, "/count", None).await.cookie.unwrap();
        assert!(ids.insert(get_with(&client, "/id", Some(&cookie)).await.body));
    }
}

#[rocket::async_test]
async fn a_cookie_value_over_4_kib_is_treated_as_absent() {
    let store = rocket_server_sessions::store::MemoryStore::new(TTL);
    let store = Counting::new(store);
    let (client, _) = client_with(store.clone(), json!({})).await;
    let huge = "A".repeat(4097);
    let reply = get_with(&client, "/untouched", Some(&huge)).await;
    assert_eq!((reply.status, reply.body.as_str()), (Status::Ok, "true"));
    assert!(reply.set_cookies.is_empty(), "absent: not even a removal");
    assert_eq!(store.calls(), 0);
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
