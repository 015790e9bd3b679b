//! The conformance suite's behaviours over HTTP: each runs [`app`](super::app) on the store
//! and makes requests with Rocket's local client.

use std::sync::Arc;

use rocket::http::Status;

use super::{client_with, get_with, id_of, post_with, START, TTL};
use crate::store::SessionStore;
use crate::SessionId;

/// First visit counts one and the cookie brings the count back.
pub async fn first_visit_counts_one_and_the_cookie_brings_the_count_back(
    store: Arc<impl SessionStore + ?Sized>,
) {
    let (client, _) = client_with(store).await;
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

/// A guard and the handler share one session.
pub async fn a_guard_and_the_handler_share_one_session(store: Arc<impl SessionStore + ?Sized>) {
    let (client, _) = client_with(store).await;
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

/// A session nothing was written to is not stored.
pub async fn a_session_nothing_was_written_to_is_not_stored(
    store: Arc<impl SessionStore + ?Sized>,
) {
    let (client, _) = client_with(store.clone()).await;
    let reply = get_with(&client, "/id", None).await;
    assert_eq!(reply.status, Status::Ok);
    assert!(reply.set_cookies.is_empty(), "{:?}", reply.set_cookies);
    let id: SessionId = reply.body.parse().unwrap();
    assert_eq!(store.load(&id.store_key(), START).await.unwrap(), None);
}

/// Concurrent requests changing different keys both persist.
pub async fn concurrent_requests_changing_different_keys_both_persist(
    store: Arc<impl SessionStore + ?Sized>,
) {
    let (client, _) = client_with(store).await;
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

/// A destroyed session cannot be replayed.
pub async fn a_destroyed_session_cannot_be_replayed(store: Arc<impl SessionStore + ?Sized>) {
    let (client, _) = client_with(store).await;
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

/// Cycled id keeps data and kills the old cookie.
pub async fn cycled_id_keeps_data_and_kills_the_old_cookie(store: Arc<impl SessionStore + ?Sized>) {
    let (client, _) = client_with(store).await;
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

/// An in flight request cannot revive a destroyed session.
pub async fn an_in_flight_request_cannot_revive_a_destroyed_session(
    store: Arc<impl SessionStore + ?Sized>,
) {
    let (client, _) = client_with(store).await;
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

/// A signed cookie whose session is gone gets a new id.
pub async fn a_signed_cookie_whose_session_is_gone_gets_a_new_id(
    store: Arc<impl SessionStore + ?Sized>,
) {
    let (client, _) = client_with(store.clone()).await;
    let cookie = post_with(&client, "/set/a/1", None).await.cookie.unwrap();
    let id: SessionId = id_of(&client, &cookie).await;
    store.destroy(&id.store_key()).await.unwrap();
    let after = post_with(&client, "/set/a/2", Some(&cookie)).await;
    let new = after.cookie.expect("a new cookie");
    let new_id = get_with(&client, "/id", Some(&new)).await.body;
    assert_ne!(new_id, id.to_string(), "the old id is not adopted");
    assert_eq!(store.load(&id.store_key(), START).await.unwrap(), None);
}

/// An idle session expires after the store ttl.
pub async fn an_idle_session_expires_after_the_store_ttl(store: Arc<impl SessionStore + ?Sized>) {
    let (client, clock) = client_with(store).await;
    let cookie = get_with(&client, "/count", None).await.cookie.unwrap();
    clock.advance(TTL - 1);
    let kept = get_with(&client, "/count", Some(&cookie)).await;
    assert_eq!(kept.body, "2", "a visit within the ttl keeps the session");
    clock.advance(TTL - 1);
    assert_eq!(get_with(&client, "/count", Some(&cookie)).await.body, "3");
    clock.advance(TTL);
    assert_eq!(get_with(&client, "/count", Some(&cookie)).await.body, "1");
}

/// The manager reaches a session by its id.
pub async fn the_manager_reaches_a_session_by_its_id(store: Arc<impl SessionStore + ?Sized>) {
    let (client, _) = client_with(store).await;
    let cookie = post_with(&client, "/set/a/1", None).await.cookie.unwrap();
    let id: SessionId = id_of(&client, &cookie).await;
    let manager = client.rocket().state::<crate::SessionManager>().unwrap();
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

/// The `Max-Age` a `Set-Cookie` header of the session cookie gives, if any.
fn max_age(reply: &super::Reply) -> Option<String> {
    let header = reply
        .set_cookies
        .iter()
        .find(|h| h.starts_with("session="))
        .expect("a session cookie");
    header
        .split(';')
        .find_map(|part| part.trim().strip_prefix("Max-Age=").map(String::from))
}

/// A session given its own lifetime lasts that long, in the cookie and in the store, and
/// back on the configured lifetime lasts the store's ttl again.
pub async fn a_session_given_its_own_lifetime_lasts_that_long_in_cookie_and_store(
    store: Arc<impl SessionStore + ?Sized>,
) {
    let (client, clock) = client_with(store).await;
    let first = post_with(&client, "/set/a/1", None).await;
    assert_eq!(max_age(&first).as_deref(), Some("604800"));
    let cookie = first.cookie.unwrap();
    let long = post_with(&client, "/lifetime/1000", Some(&cookie)).await;
    assert_eq!(long.status, Status::Ok);
    assert_eq!(
        max_age(&long).as_deref(),
        Some("1000"),
        "the cookie is re-issued"
    );
    let cookie = long.cookie.unwrap();
    // A change by id keeps the expiry the session's own lifetime gave it.
    let id = id_of(&client, &cookie).await;
    clock.advance(500);
    let manager = client.rocket().state::<crate::SessionManager>().unwrap();
    manager.set(&id, "b", "by id").await.unwrap();
    manager.remove(&id, "b").await.unwrap();
    // Far past the store's ttl, within its own lifetime.
    clock.advance(499);
    let kept = get_with(&client, "/get/a", Some(&cookie)).await;
    assert_eq!((kept.status, kept.body.as_str()), (Status::Ok, "1"));
    assert_eq!(
        max_age(&kept).as_deref(),
        Some("1000"),
        "it keeps its lifetime"
    );
    let refreshed = kept.cookie.expect("re-issued: a refresh was due");
    clock.advance(1000);
    let gone = get_with(&client, "/get/a", Some(&refreshed)).await;
    assert_eq!(
        gone.status,
        Status::InternalServerError,
        "expired after its own lifetime"
    );
    // Bounds: the configuration's 60 s to 30 days; out of them, nothing changes.
    let cookie = post_with(&client, "/set/a/2", None).await.cookie.unwrap();
    for out in ["59", "2592001"] {
        let refused = post_with(&client, &format!("/lifetime/{out}"), Some(&cookie)).await;
        assert_eq!(refused.status, Status::InternalServerError, "{out}");
        assert!(refused.cookie.is_none(), "{out}");
    }
    let back = post_with(&client, "/lifetime/configured", Some(&cookie)).await;
    assert!(
        back.cookie.is_none(),
        "already on the configured lifetime: nothing to send"
    );
    clock.advance(TTL);
    let expired = get_with(&client, "/get/a", Some(&cookie)).await;
    assert_eq!(
        expired.status,
        Status::InternalServerError,
        "the store's ttl applies"
    );
}

/// A browser-session cookie has no `Max-Age`, and the store's ttl applies.
pub async fn a_browser_session_cookie_has_no_max_age_and_the_store_ttl_applies(
    store: Arc<impl SessionStore + ?Sized>,
) {
    let (client, clock) = client_with(store).await;
    let cookie = post_with(&client, "/set/a/1", None).await.cookie.unwrap();
    let browser = post_with(&client, "/lifetime/browser", Some(&cookie)).await;
    assert_eq!(max_age(&browser), None);
    let cookie = browser.cookie.unwrap();
    clock.advance(TTL - 1);
    let kept = get_with(&client, "/get/a", Some(&cookie)).await;
    assert_eq!(kept.body, "1");
    assert_eq!(max_age(&kept), None, "a refresh keeps it a browser session");
    clock.advance(TTL);
    let gone = get_with(&client, "/get/a", Some(&cookie)).await;
    assert_eq!(gone.status, Status::InternalServerError);
}

/// A user lists their sessions (times, handles, the current one marked) and revokes one;
/// another user's session cannot be revoked through them.
pub async fn a_user_lists_their_sessions_and_revokes_one(store: Arc<impl SessionStore + ?Sized>) {
    let (client, clock) = client_with(store).await;
    let laptop = post_with(&client, "/set/user/ada", None)
        .await
        .cookie
        .unwrap();
    clock.advance(5);
    let phone = post_with(&client, "/set/user/ada", None)
        .await
        .cookie
        .unwrap();
    let other = post_with(&client, "/set/user/bob", None)
        .await
        .cookie
        .unwrap();
    let listing = |cookie| {
        let client = &client;
        async move {
            let reply = get_with(client, "/devices/user/ada", Some(cookie)).await;
            assert_eq!(reply.status, Status::Ok);
            reply.body.lines().map(String::from).collect::<Vec<_>>()
        }
    };
    let from_laptop = listing(&laptop).await;
    let (s, l) = (START, START + TTL);
    assert_eq!(from_laptop.len(), 2, "{from_laptop:?}");
    // The most recently active first.
    let handle = |line: &str| line.split(' ').next().unwrap().to_string();
    assert!(from_laptop[0].ends_with(&format!(" {} {} {}", s + 5, s + 5, l + 5)));
    assert!(from_laptop[1].ends_with(&format!(" {s} {s} {l} current")));
    let from_phone = listing(&phone).await;
    assert!(from_phone[0].ends_with(" current"), "{from_phone:?}");
    assert_eq!(handle(&from_phone[0]), handle(&from_laptop[0]));
    let phone_handle = handle(&from_laptop[0]);
    assert!(!laptop.contains(&phone_handle) && !phone.contains(&phone_handle));
    // Bob's handle, through ada: refused.
    let bobs = get_with(&client, "/devices/user/bob", Some(&other))
        .await
        .body;
    let bob_handle = handle(&bobs);
    let refused = post_with(&client, &format!("/revoke/user/ada/{bob_handle}"), None).await;
    assert_eq!(refused.body, "false");
    assert_eq!(
        get_with(&client, "/get/user", Some(&other)).await.body,
        "bob"
    );
    let revoked = post_with(&client, &format!("/revoke/user/ada/{phone_handle}"), None).await;
    assert_eq!(revoked.body, "true");
    let signed_out = get_with(&client, "/get/user", Some(&phone)).await;
    assert_eq!(signed_out.status, Status::InternalServerError);
    assert_eq!(
        get_with(&client, "/get/user", Some(&laptop)).await.body,
        "ada"
    );
    assert_eq!(listing(&laptop).await.len(), 1);
    let malformed = post_with(&client, "/revoke/user/ada/not-a-handle", None).await;
    assert_eq!(malformed.status, Status::UnprocessableEntity);
}
