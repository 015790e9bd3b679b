//! One suite, every store: `store_conformance!(make)` runs each behaviour below against the
//! stores `make()` returns (each with a `ttl` of [`TTL`] seconds, empty).

use std::sync::Arc;

use rocket::http::Status;
use rocket::serde::json::json;
use rocket_server_sessions::store::{ChangeSet, SessionRecord, SessionStore};
use rocket_server_sessions::{SessionId, StoreKey};

use super::{client_with, get_with, id_of, post_with, START};

/// The `ttl` the suite's stores must be made with.
pub const TTL: u64 = 100;

/// Writes one test per behaviour, for the stores `$make` (an async fn) returns.
#[macro_export]
macro_rules! store_conformance {
    ($make:path; $($name:ident),* $(,)?) => {
        $(
            #[rocket::async_test]
            async fn $name() {
                common::conformance::$name($make().await).await
            }
        )*
    };
    ($make:path) => {
        store_conformance!($make;
            create_then_load_returns_data_and_creation_time,
            create_refuses_a_key_with_a_live_session,
            update_applies_per_key_changes_and_keeps_other_keys,
            update_of_a_missing_session_changes_nothing,
            sessions_expire_ttl_after_their_last_write,
            update_extends_the_expiry,
            cycle_moves_the_session_and_keeps_its_creation_time,
            cycle_refuses_a_missing_session_or_a_taken_id,
            destroy_deletes_the_session,
            destroy_where_deletes_exactly_the_matching_sessions,
            sweep_deletes_only_expired_sessions,
            first_visit_counts_one_and_the_cookie_brings_the_count_back,
            a_guard_and_the_handler_share_one_session,
            a_session_nothing_was_written_to_is_not_stored,
            concurrent_requests_changing_different_keys_both_persist,
            a_destroyed_session_cannot_be_replayed,
            cycled_id_keeps_data_and_kills_the_old_cookie,
            an_in_flight_request_cannot_revive_a_destroyed_session,
            a_signed_cookie_whose_session_is_gone_gets_a_new_id,
            an_idle_session_expires_after_the_store_ttl,
            the_manager_reaches_a_session_by_its_id,
        );
    };
}

/// The store key of the session id made of bytes `n`.
pub fn key(n: u8) -> StoreKey {
    SessionId::from_bytes([n; 32]).store_key()
}

fn changes(pairs: &[(&str, Option<&[u8]>)]) -> ChangeSet {
    let mut c = ChangeSet::new();
    for (k, v) in pairs {
        match v {
            Some(v) => c.set(*k, v.to_vec()),
            None => c.remove(*k),
        }
    }
    c
}

fn sorted(record: Option<SessionRecord>) -> Option<SessionRecord> {
    record.map(|mut r| {
        r.data.sort();
        r
    })
}

pub async fn create_then_load_returns_data_and_creation_time(
    store: Arc<impl SessionStore + ?Sized>,
) {
    let c = changes(&[("a", Some(b"1")), ("b", Some(b"\x00\xff"))]);
    assert!(store.create(&key(1), START - 5, &c, START).await.unwrap());
    let loaded = sorted(store.load(&key(1), START).await.unwrap());
    assert_eq!(
        loaded,
        Some(SessionRecord {
            created: START - 5,
            data: vec![
                ("a".into(), b"1".to_vec()),
                ("b".into(), b"\x00\xff".to_vec())
            ],
        })
    );
    assert_eq!(store.load(&key(2), START).await.unwrap(), None);
}

pub async fn create_refuses_a_key_with_a_live_session(store: Arc<impl SessionStore + ?Sized>) {
    let first = changes(&[("who", Some(b"first"))]);
    let second = changes(&[("who", Some(b"second"))]);
    assert!(store.create(&key(1), START, &first, START).await.unwrap());
    assert!(!store.create(&key(1), START, &second, START).await.unwrap());
    let loaded = store.load(&key(1), START).await.unwrap().unwrap();
    assert_eq!(loaded.data, vec![("who".into(), b"first".to_vec())]);
}

pub async fn update_applies_per_key_changes_and_keeps_other_keys(
    store: Arc<impl SessionStore + ?Sized>,
) {
    let c = changes(&[("a", Some(b"1")), ("b", Some(b"2")), ("c", Some(b"3"))]);
    assert!(store.create(&key(1), START, &c, START).await.unwrap());
    // `a` gets a longer value, `c` one of the same length, `b` goes, `d` comes.
    let c = changes(&[
        ("a", Some(b"one")),
        ("b", None),
        ("c", Some(b"9")),
        ("d", Some(b"4")),
        ("zz", None),
    ]);
    assert!(store.update(&key(1), &c, START + 1).await.unwrap());
    let loaded = sorted(store.load(&key(1), START + 1).await.unwrap()).unwrap();
    assert_eq!(
        loaded.data,
        vec![
            ("a".into(), b"one".to_vec()),
            ("c".into(), b"9".to_vec()),
            ("d".into(), b"4".to_vec())
        ]
    );
    let c = changes(&[("a", Some(b"two")), ("c", Some(b""))]);
    assert!(store.update(&key(1), &c, START + 2).await.unwrap());
    let loaded = sorted(store.load(&key(1), START + 2).await.unwrap()).unwrap();
    assert_eq!(
        loaded.data,
        vec![
            ("a".into(), b"two".to_vec()),
            ("c".into(), b"".to_vec()),
            ("d".into(), b"4".to_vec())
        ]
    );
}

pub async fn update_of_a_missing_session_changes_nothing(store: Arc<impl SessionStore + ?Sized>) {
    let c = changes(&[("a", Some(b"1"))]);
    assert!(!store.update(&key(1), &c, START).await.unwrap());
    assert_eq!(store.load(&key(1), START).await.unwrap(), None);
}

pub async fn sessions_expire_ttl_after_their_last_write(store: Arc<impl SessionStore + ?Sized>) {
    let c = changes(&[("a", Some(b"1"))]);
    assert!(store.create(&key(1), START, &c, START).await.unwrap());
    assert!(store
        .load(&key(1), START + TTL - 1)
        .await
        .unwrap()
        .is_some());
    assert_eq!(store.load(&key(1), START + TTL).await.unwrap(), None);
    assert!(!store.update(&key(1), &c, START + TTL).await.unwrap());
    // An expired session's key may be reused by a new session.
    assert!(store
        .create(&key(1), START + TTL, &c, START + TTL)
        .await
        .unwrap());
}

pub async fn update_extends_the_expiry(store: Arc<impl SessionStore + ?Sized>) {
    let c = changes(&[("a", Some(b"1"))]);
    assert!(store.create(&key(1), START, &c, START).await.unwrap());
    assert!(store
        .update(&key(1), &ChangeSet::new(), START + 60)
        .await
        .unwrap());
    assert!(store
        .load(&key(1), START + 60 + TTL - 1)
        .await
        .unwrap()
        .is_some());
    assert_eq!(store.load(&key(1), START + 60 + TTL).await.unwrap(), None);
}

pub async fn cycle_moves_the_session_and_keeps_its_creation_time(
    store: Arc<impl SessionStore + ?Sized>,
) {
    let c = changes(&[("a", Some(b"1")), ("b", Some(b"2"))]);
    assert!(store.create(&key(1), START - 9, &c, START).await.unwrap());
    let c = changes(&[("b", None), ("user", Some(b"ada"))]);
    assert!(store.cycle(&key(1), &key(2), &c, START + 1).await.unwrap());
    assert_eq!(store.load(&key(1), START + 1).await.unwrap(), None);
    let moved = sorted(store.load(&key(2), START + 1).await.unwrap()).unwrap();
    assert_eq!(moved.created, START - 9);
    assert_eq!(
        moved.data,
        vec![
            ("a".into(), b"1".to_vec()),
            ("user".into(), b"ada".to_vec())
        ]
    );
}

pub async fn cycle_refuses_a_missing_session_or_a_taken_id(store: Arc<impl SessionStore + ?Sized>) {
    let c = changes(&[("a", Some(b"1"))]);
    assert!(!store.cycle(&key(1), &key(2), &c, START).await.unwrap());
    assert_eq!(store.load(&key(2), START).await.unwrap(), None);
    assert!(store.create(&key(1), START, &c, START).await.unwrap());
    assert!(store.create(&key(2), START, &c, START).await.unwrap());
    assert!(!store
        .cycle(&key(1), &key(2), &ChangeSet::new(), START)
        .await
        .unwrap());
    assert!(store.load(&key(1), START).await.unwrap().is_some());
}

pub async fn destroy_deletes_the_session(store: Arc<impl SessionStore + ?Sized>) {
    let c = changes(&[("a", Some(b"1"))]);
    assert!(store.create(&key(1), START, &c, START).await.unwrap());
    store.destroy(&key(1)).await.unwrap();
    assert_eq!(store.load(&key(1), START).await.unwrap(), None);
    store.destroy(&key(1)).await.unwrap();
}

pub async fn destroy_where_deletes_exactly_the_matching_sessions(
    store: Arc<impl SessionStore + ?Sized>,
) {
    let user = |id: &[u8]| changes(&[("user_id", Some(id)), ("theme", Some(b"dark"))]);
    assert!(store
        .create(&key(1), START, &user(b"42"), START)
        .await
        .unwrap());
    assert!(store
        .create(&key(2), START, &user(b"42"), START)
        .await
        .unwrap());
    assert!(store
        .create(&key(3), START, &user(b"7"), START)
        .await
        .unwrap());
    let other = changes(&[("other", Some(b"42"))]);
    assert!(store.create(&key(4), START, &other, START).await.unwrap());
    assert_eq!(store.destroy_where("user_id", b"42").await.unwrap(), 2);
    assert_eq!(store.load(&key(1), START).await.unwrap(), None);
    assert_eq!(store.load(&key(2), START).await.unwrap(), None);
    assert!(store.load(&key(3), START).await.unwrap().is_some());
    assert!(store.load(&key(4), START).await.unwrap().is_some());
}

pub async fn sweep_deletes_only_expired_sessions(store: Arc<impl SessionStore + ?Sized>) {
    let c = changes(&[("a", Some(b"1"))]);
    assert!(store.create(&key(1), START, &c, START).await.unwrap());
    assert!(store.create(&key(2), START, &c, START + 50).await.unwrap());
    assert_eq!(store.sweep(START + TTL).await.unwrap(), 1);
    assert_eq!(store.sweep(START + TTL).await.unwrap(), 0);
    // Swept means gone for good, even for a clock that goes back.
    assert_eq!(store.load(&key(1), START).await.unwrap(), None);
    assert!(store.load(&key(2), START + TTL).await.unwrap().is_some());
}

pub async fn first_visit_counts_one_and_the_cookie_brings_the_count_back(
    store: Arc<impl SessionStore + ?Sized>,
) {
    let (client, _) = client_with(store, json!({})).await;
    let first = get_with(&client, "/count", None).await;
    assert_eq!((first.status, first.body.as_str()), (Status::Ok, "1"));
    let cookie = first
        .cookie
        .expect("a session that was written to gets a cookie");
    let second = get_with(&client, "/count", Some(&cookie)).await;
    assert_eq!(second.body, "2");
    let third = get_with(&client, "/count", Some(&cookie)).await;
    assert_eq!(third.body, "3");
}

pub async fn a_guard_and_the_handler_share_one_session(store: Arc<impl SessionStore + ?Sized>) {
    let (client, _) = client_with(store, json!({})).await;
    // The handler's guard sees the change an earlier guard made, for a new session and a
    // stored one.
    let first = get_with(&client, "/count-twice", None).await;
    assert_eq!((first.status, first.body.as_str()), (Status::Ok, "2"));
    assert_eq!(first.set_cookies.len(), 1, "{:?}", first.set_cookies);
    let cookie = first.cookie.expect("the session was written to");
    let second = get_with(&client, "/count-twice", Some(&cookie)).await;
    assert_eq!(second.body, "4");
    assert_eq!(get_with(&client, "/peek", Some(&cookie)).await.body, "4");
}

pub async fn a_session_nothing_was_written_to_is_not_stored(
    store: Arc<impl SessionStore + ?Sized>,
) {
    let (client, _) = client_with(store.clone(), json!({})).await;
    let reply = get_with(&client, "/id", None).await;
    assert_eq!(reply.status, Status::Ok);
    assert!(reply.set_cookies.is_empty(), "{:?}", reply.set_cookies);
    let id: SessionId = reply.body.parse().unwrap();
    assert_eq!(store.load(&id.store_key(), START).await.unwrap(), None);
}

pub async fn concurrent_requests_changing_different_keys_both_persist(
    store: Arc<impl SessionStore + ?Sized>,
) {
    let (client, _) = client_with(store, json!({})).await;
    let cookie = post_with(&client, "/set/base/0", None)
        .await
        .cookie
        .unwrap();
    // Both requests load the session before either changes it (they meet at a barrier).
    let (a, b) = rocket::tokio::join!(
        post_with(&client, "/set-together/a/1", Some(&cookie)),
        post_with(&client, "/set-together/b/2", Some(&cookie)),
    );
    assert_eq!((a.status, b.status), (Status::Ok, Status::Ok));
    assert_eq!(get_with(&client, "/get/a", Some(&cookie)).await.body, "1");
    assert_eq!(get_with(&client, "/get/b", Some(&cookie)).await.body, "2");
    assert_eq!(
        get_with(&client, "/get/base", Some(&cookie)).await.body,
        "0"
    );
}

pub async fn a_destroyed_session_cannot_be_replayed(store: Arc<impl SessionStore + ?Sized>) {
    let (client, _) = client_with(store, json!({})).await;
    let cookie = post_with(&client, "/set/user/ada", None)
        .await
        .cookie
        .unwrap();
    let out = post_with(&client, "/destroy", Some(&cookie)).await;
    assert_eq!(out.cookie.as_deref(), Some(""), "a removal cookie");
    let removal = &out.set_cookies[0];
    assert!(removal.contains("Max-Age=0"), "{removal}");
    assert!(removal.contains("Path=/"), "{removal}");
    let replay = get_with(&client, "/get/user", Some(&cookie)).await;
    assert_eq!(
        replay.status,
        Status::InternalServerError,
        "the key is gone"
    );
    assert_eq!(
        get_with(&client, "/untouched", Some(&cookie)).await.body,
        "true"
    );
}

pub async fn cycled_id_keeps_data_and_kills_the_old_cookie(store: Arc<impl SessionStore + ?Sized>) {
    let (client, _) = client_with(store, json!({})).await;
    let first = post_with(&client, "/set/user/ada", None).await;
    let old = first.cookie.unwrap();
    let old_id = get_with(&client, "/id", Some(&old)).await.body;
    let cycled = post_with(&client, "/cycle", Some(&old)).await;
    let new = cycled.cookie.expect("cycling sets a new cookie");
    assert_ne!(cycled.body, old_id);
    assert_eq!(get_with(&client, "/id", Some(&new)).await.body, cycled.body);
    assert_eq!(get_with(&client, "/get/user", Some(&new)).await.body, "ada");
    let replay = get_with(&client, "/untouched", Some(&old)).await;
    assert_eq!(replay.body, "true", "the old cookie leads to a new session");
}

pub async fn an_in_flight_request_cannot_revive_a_destroyed_session(
    store: Arc<impl SessionStore + ?Sized>,
) {
    let (client, _) = client_with(store, json!({})).await;
    let cookie = post_with(&client, "/set/user/ada", None)
        .await
        .cookie
        .unwrap();
    // The slow request has loaded the session when the logout happens, and flushes after it.
    let slow = post_with(&client, "/set-late/late/write", Some(&cookie));
    let logout = async {
        post_with(&client, "/sync", None).await;
        let out = post_with(&client, "/destroy", Some(&cookie)).await;
        post_with(&client, "/sync", None).await;
        out
    };
    let (slow, logout) = rocket::tokio::join!(slow, logout);
    assert_eq!(logout.cookie.as_deref(), Some(""));
    assert_eq!(
        slow.cookie.as_deref(),
        Some(""),
        "the late request removes the cookie"
    );
    assert_eq!(
        get_with(&client, "/untouched", Some(&cookie)).await.body,
        "true"
    );
}

pub async fn a_signed_cookie_whose_session_is_gone_gets_a_new_id(
    store: Arc<impl SessionStore + ?Sized>,
) {
    let (client, _) = client_with(store.clone(), json!({})).await;
    let cookie = post_with(&client, "/set/a/1", None).await.cookie.unwrap();
    let id: SessionId = id_of(&client, &cookie).await;
    store.destroy(&id.store_key()).await.unwrap();
    let after = post_with(&client, "/set/a/2", Some(&cookie)).await;
    let new = after.cookie.expect("a new cookie");
    let new_id = get_with(&client, "/id", Some(&new)).await.body;
    assert_ne!(new_id, id.to_string(), "the old id is not adopted");
    assert_eq!(store.load(&id.store_key(), START).await.unwrap(), None);
}

pub async fn an_idle_session_expires_after_the_store_ttl(store: Arc<impl SessionStore + ?Sized>) {
    let (client, clock) = client_with(store, json!({})).await;
    let cookie = get_with(&client, "/count", None).await.cookie.unwrap();
    clock.advance(TTL - 1);
    let kept = get_with(&client, "/count", Some(&cookie)).await;
    assert_eq!(kept.body, "2", "a visit within the ttl keeps the session");
    clock.advance(TTL - 1);
    assert_eq!(get_with(&client, "/count", Some(&cookie)).await.body, "3");
    clock.advance(TTL);
    assert_eq!(get_with(&client, "/count", Some(&cookie)).await.body, "1");
}

pub async fn the_manager_reaches_a_session_by_its_id(store: Arc<impl SessionStore + ?Sized>) {
    let (client, _) = client_with(store, json!({})).await;
    let cookie = post_with(&client, "/set/a/1", None).await.cookie.unwrap();
    let id: SessionId = id_of(&client, &cookie).await;
    let manager = client
        .rocket()
        .state::<rocket_server_sessions::SessionManager>()
        .unwrap();
    assert_eq!(manager.get::<String>(&id, "a").await.unwrap(), "1");
    assert_eq!(manager.get_or(&id, "nope", 5u8).await.unwrap(), 5);
    assert!(manager.get::<String>(&id, "nope").await.is_err());
    manager.set(&id, "b", "two").await.unwrap();
    let n = manager.update_or(&id, "n", 10u32, |n| n + 1).await.unwrap();
    assert_eq!(n, 11);
    assert!(manager.update(&id, "missing", |n: u32| n).await.is_err());
    manager.remove(&id, "a").await.unwrap();
    assert_eq!(get_with(&client, "/get/b", Some(&cookie)).await.body, "two");
    assert_eq!(
        get_with(&client, "/get/a", Some(&cookie)).await.status,
        Status::InternalServerError
    );
    let unknown = SessionId::generate();
    assert!(manager.set(&unknown, "b", 1).await.is_err());
    manager.destroy(&id).await.unwrap();
    assert_eq!(
        get_with(&client, "/untouched", Some(&cookie)).await.body,
        "true"
    );
}
