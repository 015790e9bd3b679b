//! The session layer over HTTP: cookies, lifetimes, laziness and errors (memory store).

#[macro_use]
mod common;

use std::sync::Arc;

use common::*;
use rocket::error::ErrorKind;
use rocket::http::Status;
use rocket::local::asynchronous::Client;
use rocket::serde::json::json;
use rocket_server_sessions::store::MemoryStore;
use rocket_server_sessions::{ManualClock, Session, Sessions};

const TTL: u64 = 1000;

async fn counted(
    session: rocket::serde::json::Value,
) -> (Client, ManualClock, Arc<Counting<MemoryStore>>) {
    let store = Counting::new(MemoryStore::new(TTL));
    let (client, clock) = client_with(store.clone(), session).await;
    (client, clock, store)
}

/// A store that answers loads and updates at once (`load_now`, `update_now`), as the memory
/// store does, is never awaited for them: the manager reaches it through the trait alone, so
/// any store can take the path the built-in one takes.
#[rocket::async_test]
async fn a_store_that_answers_at_once_is_never_awaited_for_loads_and_updates() {
    let (client, _, store) = counted(json!({})).await;
    let cookie = get_with(&client, "/count", None).await.cookie.unwrap();
    for n in 2..=5 {
        let reply = get_with(&client, "/count", Some(&cookie)).await;
        assert_eq!(reply.body, n.to_string());
    }
    assert_eq!(
        store.calls(),
        1 + 4 * 2,
        "a create, then a load and an update each"
    );
    assert_eq!(store.awaited(), 0);
}

/// Handlers returning `Status` or `status::Custom` use `?` on session calls: a missing key
/// answers 500 (Rocket's catcher, or the custom's empty body; no details of the error), a
/// present one its value.
#[rocket::async_test]
async fn question_mark_works_in_handlers_returning_status_or_custom() {
    let (client, _, _) = counted(json!({})).await;
    let cookie = post_with(&client, "/set/user/ada", None)
        .await
        .cookie
        .unwrap();
    for route in ["/status/get", "/custom/get"] {
        let found = get_with(&client, &format!("{route}/user"), Some(&cookie)).await;
        assert_eq!((found.status, found.body.as_str()), (Status::Ok, "ada"));
        let missing = get_with(&client, &format!("{route}/nobody"), Some(&cookie)).await;
        assert_eq!(missing.status, Status::InternalServerError, "{route}");
        assert!(
            !missing.body.contains("nobody"),
            "{route}: {}",
            missing.body
        );
    }
}

fn attributes(set_cookie: &str) -> Vec<String> {
    let mut attrs: Vec<String> = set_cookie.split("; ").skip(1).map(String::from).collect();
    attrs.sort();
    attrs
}

#[rocket::async_test]
async fn cookie_attributes_default_to_koyos() {
    let (client, _, _) = counted(json!({})).await;
    let reply = get_with(&client, "/count", None).await;
    assert_eq!(reply.set_cookies.len(), 1);
    assert_eq!(
        attributes(&reply.set_cookies[0]),
        [
            "HttpOnly",
            "Max-Age=604800",
            "Path=/",
            "SameSite=Strict",
            "Secure"
        ]
    );
}

#[rocket::async_test]
async fn cookie_attributes_are_exactly_as_configured() {
    let (client, _, _) = counted(json!({
        "cookie_path": "/app",
        "cookie_domain": "example.com",
        "cookie_secure": false,
        "cookie_http_only": false,
        "cookie_same_site": "lax",
        "shelf_life": 60,
    }))
    .await;
    let reply = get_with(&client, "/count", None).await;
    assert_eq!(
        attributes(&reply.set_cookies[0]),
        [
            "Domain=example.com",
            "Max-Age=60",
            "Path=/app",
            "SameSite=Lax"
        ]
    );
}

/// `expire_on_browser_close` sends a browser-session cookie (no `Max-Age`, no `Expires`);
/// `shelf_life` still bounds how old a cookie the server accepts, and logout still removes it.
#[rocket::async_test]
async fn a_browser_session_cookie_has_no_max_age_and_still_ages_on_the_server() {
    let session = json!({ "expire_on_browser_close": true, "shelf_life": 100 });
    let (client, clock, _) = counted(session).await;
    let first = get_with(&client, "/count", None).await;
    assert_eq!(
        attributes(&first.set_cookies[0]),
        ["HttpOnly", "Path=/", "SameSite=Strict", "Secure"]
    );
    let cookie = first.cookie.unwrap();
    clock.advance(99);
    assert_eq!(get_with(&client, "/count", Some(&cookie)).await.body, "2");
    clock.advance(1);
    let aged = get_with(&client, "/count", Some(&cookie)).await;
    assert_eq!(
        aged.body, "1",
        "older than shelf_life: refused on the server"
    );
    let out = post_with(&client, "/destroy", aged.cookie.as_deref()).await;
    assert!(
        out.set_cookies[0].contains("Max-Age=0"),
        "{:?}",
        out.set_cookies
    );
}

#[rocket::async_test]
async fn same_site_none_is_sent_with_secure() {
    let (client, _, _) = counted(json!({ "cookie_same_site": "none" })).await;
    let reply = get_with(&client, "/count", None).await;
    let attrs = attributes(&reply.set_cookies[0]);
    assert!(attrs.contains(&"SameSite=None".to_string()), "{attrs:?}");
    assert!(attrs.contains(&"Secure".to_string()), "{attrs:?}");
}

#[rocket::async_test]
async fn responses_that_set_the_cookie_are_not_cacheable() {
    let (client, _, _) = counted(json!({})).await;
    let reply = get_with(&client, "/count", None).await;
    assert_eq!(reply.header("Cache-Control"), ["no-store"]);
    assert_eq!(reply.header("Vary"), ["Cookie"]);
}

#[rocket::async_test]
async fn the_cookie_holds_a_signed_id_and_no_data() {
    let (client, _, _) = counted(json!({})).await;
    let cookie = post_with(&client, "/set/secret/hunter2", None)
        .await
        .cookie
        .unwrap();
    assert_eq!(cookie.len(), 96);
    assert!(cookie
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    assert!(!cookie.contains("hunter2"));
}

#[rocket::async_test]
async fn tampered_cookie_starts_a_new_session_without_a_store_lookup() {
    let (client, _, store) = counted(json!({})).await;
    let cookie = get_with(&client, "/count", None).await.cookie.unwrap();
    let mut bytes = cookie.into_bytes();
    bytes[10] = if bytes[10] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).unwrap();
    let before = store.calls();
    let reply = get_with(&client, "/peek", Some(&tampered)).await;
    assert_eq!((reply.status, reply.body.as_str()), (Status::Ok, "0"));
    assert_eq!(store.calls(), before, "no store call for a bad cookie");
    assert_eq!(
        reply.cookie.as_deref(),
        Some(""),
        "the bad cookie is removed"
    );
}

#[rocket::async_test]
async fn malformed_truncated_and_oversized_cookies_start_a_new_session() {
    let (client, _, store) = counted(json!({})).await;
    let good = get_with(&client, "/count", None).await.cookie.unwrap();
    let values = [
        String::new(),
        "garbage".to_string(),
        good[..good.len() - 1].to_string(),
        format!("{good}A"),
        good.replace(|c: char| c.is_ascii_digit(), "+"),
        "é".repeat(48),
        "A".repeat(5000),
        "%00%ff".repeat(16),
    ];
    for value in values {
        let before = store.calls();
        let reply = get_with(&client, "/count", Some(&value)).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (Status::Ok, "1"),
            "{value:?}"
        );
        // One call: creating the new session; none for looking the bad one up.
        assert_eq!(store.calls(), before + 1, "{value:?}");
    }
}

#[rocket::async_test]
async fn a_cookie_signed_with_another_key_is_refused() {
    let (client, _, _) = counted(json!({})).await;
    let (other, _) =
        client_on_config(json!({ "secret_key": "another key that is long enough!!" })).await;
    let foreign = get_with(&other, "/count", None).await.cookie.unwrap();
    let reply = get_with(&client, "/count", Some(&foreign)).await;
    assert_eq!(reply.body, "1");
    assert_ne!(reply.cookie.as_deref(), Some(foreign.as_str()));
}

#[rocket::async_test]
async fn a_cookie_older_than_shelf_life_is_refused() {
    let (client, clock, _) = counted(json!({ "shelf_life": 50, "refresh_interval": 40 })).await;
    let cookie = get_with(&client, "/count", None).await.cookie.unwrap();
    clock.advance(49);
    assert_eq!(get_with(&client, "/peek", Some(&cookie)).await.body, "1");
    clock.advance(1);
    assert_eq!(get_with(&client, "/peek", Some(&cookie)).await.body, "0");
}

#[rocket::async_test]
async fn every_page_load_reissues_the_cookie_and_extends_the_session() {
    let (client, clock, _) = counted(json!({ "shelf_life": 50 })).await;
    let mut cookie = get_with(&client, "/count", None).await.cookie.unwrap();
    // Four read-only visits 40 s apart: past both the shelf life and the store's ttl in all.
    for _ in 0..30 {
        clock.advance(40);
        let reply = get_with(&client, "/peek", Some(&cookie)).await;
        assert_eq!(reply.body, "1");
        let renewed = reply.cookie.expect("each response re-issues the cookie");
        assert_ne!(renewed, cookie);
        cookie = renewed;
    }
}

#[rocket::async_test]
async fn a_page_that_does_not_use_the_session_extends_it_too() {
    let (client, clock, store) = counted(json!({ "shelf_life": 50 })).await;
    let mut cookie = get_with(&client, "/count", None).await.cookie.unwrap();
    for _ in 0..30 {
        clock.advance(40);
        let before = store.calls();
        let reply = get_with(&client, "/no-session", Some(&cookie)).await;
        assert_eq!(store.calls(), before + 1, "one touch, no load");
        cookie = reply.cookie.expect("re-issued");
    }
    assert_eq!(get_with(&client, "/peek", Some(&cookie)).await.body, "1");
}

#[rocket::async_test]
async fn refresh_interval_throttles_reissue_and_touch() {
    let (client, clock, store) = counted(json!({ "refresh_interval": 30 })).await;
    let cookie = get_with(&client, "/count", None).await.cookie.unwrap();
    clock.advance(29);
    let before = store.calls();
    let reply = get_with(&client, "/no-session", Some(&cookie)).await;
    assert!(reply.set_cookies.is_empty());
    assert_eq!(store.calls(), before, "no refresh due: no store call");
    let reply = get_with(&client, "/peek", Some(&cookie)).await;
    assert!(reply.set_cookies.is_empty());
    assert_eq!(store.calls(), before + 1, "just the load");
    clock.advance(1);
    let reply = get_with(&client, "/no-session", Some(&cookie)).await;
    assert!(reply.cookie.is_some(), "refresh due: re-issued");
}

#[rocket::async_test]
async fn a_request_that_never_asks_for_the_session_costs_no_store_call() {
    let (client, _, store) = counted(json!({ "refresh_interval": 60 })).await;
    let cookie = get_with(&client, "/count", None).await.cookie.unwrap();
    let before = store.calls();
    get_with(&client, "/no-session", None).await;
    get_with(&client, "/no-session", Some(&cookie)).await;
    get_with(&client, "/no-such-route", Some(&cookie)).await;
    assert_eq!(store.calls(), before);
}

#[rocket::async_test]
async fn a_forged_cookie_on_a_page_without_the_session_gets_nothing_whatever_its_age() {
    let (client, clock, store) = counted(json!({ "refresh_interval": 30 })).await;
    let cookie = get_with(&client, "/count", None).await.cookie.unwrap();
    // The last character is part of the tag: the stated issue time stays the real one.
    let mut forged = cookie.into_bytes();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'A' { b'Q' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let before = store.calls();
    for age in [0, 29, 1, 100] {
        clock.advance(age);
        let reply = get_with(&client, "/no-session", Some(&forged)).await;
        assert_eq!(reply.status, Status::Ok);
        assert!(
            reply.set_cookies.is_empty(),
            "{age}: {:?}",
            reply.set_cookies
        );
    }
    assert_eq!(store.calls(), before, "no store call for a forged cookie");
}

#[rocket::async_test]
async fn a_missing_key_answers_500_without_details() {
    let (client, _, _) = counted(json!({})).await;
    let reply = get_with(&client, "/get/nothing", None).await;
    assert_eq!(reply.status, Status::InternalServerError);
    assert!(!reply.body.contains("nothing"), "{}", reply.body);
}

#[rocket::async_test]
async fn a_set_past_max_session_size_fails_and_changes_nothing() {
    let (client, _, _) = counted(json!({ "max_session_size": 64 })).await;
    let cookie = post_with(&client, "/set/a/small", None)
        .await
        .cookie
        .unwrap();
    let big = "x".repeat(80);
    let reply = post_with(&client, &format!("/set/b/{big}"), Some(&cookie)).await;
    assert_eq!(reply.status, Status::InternalServerError);
    assert_eq!(
        get_with(&client, "/get/a", Some(&cookie)).await.body,
        "small"
    );
    assert_eq!(
        get_with(&client, "/get/b", Some(&cookie)).await.status,
        Status::InternalServerError
    );
}

#[rocket::async_test]
async fn remove_deletes_one_key() {
    let (client, _, _) = counted(json!({})).await;
    let cookie = post_with(&client, "/set/a/1", None).await.cookie.unwrap();
    post_with(&client, "/set/b/2", Some(&cookie)).await;
    post_with(&client, "/remove/a", Some(&cookie)).await;
    post_with(&client, "/remove/never-set", Some(&cookie)).await;
    assert_eq!(
        get_with(&client, "/get/a", Some(&cookie)).await.status,
        Status::InternalServerError
    );
    assert_eq!(get_with(&client, "/get/b", Some(&cookie)).await.body, "2");
}

#[rocket::async_test]
async fn setting_after_destroy_starts_a_new_session() {
    let (client, _, _) = counted(json!({})).await;
    let cookie = post_with(&client, "/set/user/ada", None)
        .await
        .cookie
        .unwrap();
    let reply = post_with(&client, "/destroy-then-set", Some(&cookie)).await;
    let new = reply.cookie.expect("a new session's cookie");
    assert!(!new.is_empty());
    assert_eq!(
        get_with(&client, "/get/flash", Some(&new)).await.body,
        "goodbye"
    );
    assert_eq!(
        get_with(&client, "/get/user", Some(&new)).await.status,
        Status::InternalServerError
    );
    assert_eq!(
        get_with(&client, "/untouched", Some(&cookie)).await.body,
        "true"
    );
}

/// Two apps on one store: the first signs with a key that the second, after a rotation,
/// keeps among its `previous_secret_keys`.
async fn before_and_after_a_key_rotation() -> (Client, Client) {
    let old_key = "the key we used last month, 32+ bytes";
    let store = Arc::new(MemoryStore::new(TTL));
    let (old, _) = client_with(store.clone(), json!({ "secret_key": old_key })).await;
    let (new, _) = client_with(
        store,
        json!({ "previous_secret_keys": [old_key], "refresh_interval": 60 }),
    )
    .await;
    (old, new)
}

#[rocket::async_test]
async fn a_cookie_signed_with_a_previous_key_is_accepted_and_reissued() {
    let (old, new) = before_and_after_a_key_rotation().await;
    let old_cookie = post_with(&old, "/set/a/1", None).await.cookie.unwrap();
    let reply = get_with(&new, "/get/a", Some(&old_cookie)).await;
    assert_eq!(reply.body, "1", "still verifies");
    let reissued = reply
        .cookie
        .expect("re-issued under the current key at once");
    assert_ne!(reissued, old_cookie);
    assert_eq!(get_with(&new, "/get/a", Some(&reissued)).await.body, "1");
    assert_eq!(
        get_with(&old, "/untouched", Some(&reissued)).await.body,
        "true",
        "the old key alone does not verify the new cookie"
    );
}

#[rocket::async_test]
async fn a_page_without_the_session_reissues_a_fresh_cookie_of_a_previous_key() {
    let (old, new) = before_and_after_a_key_rotation().await;
    let old_cookie = post_with(&old, "/set/a/1", None).await.cookie.unwrap();
    let reply = get_with(&new, "/no-session", Some(&old_cookie)).await;
    let reissued = reply
        .cookie
        .expect("re-issued under the current key, though issued now");
    assert_eq!(get_with(&new, "/get/a", Some(&reissued)).await.body, "1");
    let reply = get_with(&new, "/no-session", Some(&reissued)).await;
    assert!(
        reply.set_cookies.is_empty(),
        "the current key's fresh cookie is let be"
    );
}

#[rocket::async_test]
async fn a_route_with_a_session_but_no_fairing_refuses_to_launch() {
    #[rocket::get("/")]
    fn index(_session: Session<'_>) {}
    let rocket = rocket::custom(figment(json!({}))).mount("/", rocket::routes![index]);
    let error = launch_error(rocket).await;
    assert!(matches!(error.kind(), ErrorKind::SentinelAborts(_)));
}

#[rocket::async_test]
async fn the_fairing_twice_refuses_to_launch_once() {
    let rocket = rocket::custom(figment(json!({})))
        .attach(Sessions::fairing())
        .attach(Sessions::fairing());
    let error = launch_error(rocket).await;
    assert!(matches!(error.kind(), ErrorKind::FailedFairings(_)));
}

/// With the default (system) clock, time read by a request is the wall clock's whatever the
/// runtime does between requests: here a current-thread runtime whose only thread sleeps.
#[test]
fn with_the_system_clock_a_session_expires_in_real_time_on_any_runtime() {
    let runtime = rocket::tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let figment = figment(json!({ "store": { "kind": "memory", "file_path": "", "ttl": 1 } }));
        let client = Client::tracked(system_clock_app(figment)).await.unwrap();
        assert_eq!(
            client.post("/set/a/1").dispatch().await.status(),
            Status::Ok
        );
        let during = client.get("/get/a").dispatch().await;
        assert_eq!(during.into_string().await.unwrap(), "1");
        // Blocks the runtime's one thread: no task of it runs meanwhile.
        std::thread::sleep(std::time::Duration::from_millis(2200));
        let after = client.get("/get/a").dispatch().await;
        assert_ne!(
            after.status(),
            Status::Ok,
            "the session outlived its ttl of 1 s"
        );
    });
}

/// The `Max-Age` of a response's session cookie, if it sets one with it.
fn max_age_of(reply: &Reply) -> Option<String> {
    attributes(&reply.set_cookies[0])
        .iter()
        .find_map(|a| a.strip_prefix("Max-Age=").map(String::from))
}

/// A session given its own lifetime keeps it through the refresh of a page whose handler never
/// takes the `Session`: the cookie is re-issued with its `Max-Age`, and the store keeps the
/// session that long, not for its own ttl.
#[rocket::async_test]
async fn a_page_without_the_session_keeps_the_sessions_own_lifetime() {
    let (client, clock, store) = counted(json!({})).await;
    let cookie = get_with(&client, "/count", None).await.cookie.unwrap();
    let long = post_with(&client, "/lifetime/5000", Some(&cookie)).await;
    let mut cookie = long.cookie.unwrap();
    for _ in 0..3 {
        clock.advance(4000);
        let before = store.calls();
        let reply = get_with(&client, "/no-session", Some(&cookie)).await;
        assert_eq!(store.calls(), before + 1, "one touch, no load");
        assert_eq!(max_age_of(&reply).as_deref(), Some("5000"));
        cookie = reply.cookie.expect("re-issued");
    }
    assert_eq!(get_with(&client, "/peek", Some(&cookie)).await.body, "1");
}

/// A lifetime of its own overrides `expire_on_browser_close`; a cookie stating a lifetime
/// longer than today's `longest_lifetime` is accepted only that long.
#[rocket::async_test]
async fn a_remembered_session_outlasts_browser_close_within_the_longest_lifetime() {
    let store = Arc::new(MemoryStore::new(TTL));
    let session = json!({ "expire_on_browser_close": true, "longest_lifetime": 3000 });
    let (client, _) = client_with(store.clone(), session).await;
    let first = get_with(&client, "/count", None).await;
    assert_eq!(max_age_of(&first), None);
    let long = post_with(&client, "/lifetime/2000", first.cookie.as_deref()).await;
    assert_eq!(max_age_of(&long).as_deref(), Some("2000"));
    let cookie = long.cookie.unwrap();
    // The same store and key, now configured with a shorter longest lifetime.
    let (shorter, clock) = client_with(store, json!({ "longest_lifetime": 1500 })).await;
    clock.advance(1499);
    assert_eq!(get_with(&shorter, "/peek", Some(&cookie)).await.body, "1");
    clock.advance(1);
    assert_eq!(get_with(&shorter, "/peek", Some(&cookie)).await.body, "0");
}
