//! The examples are smoke tests: each runs as shipped, on the repository's Rocket.toml (debug
//! profile, memory store), except that the snapshot and the debug key go to a temporary folder.

mod common;

#[allow(dead_code)]
#[path = "../examples/counter.rs"]
mod counter;

#[allow(dead_code)]
#[path = "../examples/login.rs"]
mod login;

#[allow(dead_code)]
#[path = "../examples/devices.rs"]
mod devices;

use common::*;
use rocket::http::{ContentType, Status};
use rocket::local::asynchronous::Client;

/// The example's Rocket on the debug profile (also in a release build of the tests, whose
/// default profile is `release`, where the examples need a secret key of the deployer's),
/// keeping its snapshot and its debug key in `dir`, never in the repository.
async fn launch(rocket: rocket::Rocket<rocket::Build>, dir: &TempDir) -> Client {
    let figment = rocket
        .figment()
        .clone()
        .merge(("session.store.file_path", dir.path("sessions.snapshot")))
        .merge(("session.secret_key_file", dir.path("session_secret.key")))
        .merge(("log_level", "off"))
        .select(rocket::Config::DEBUG_PROFILE);
    let client = Client::untracked(rocket.configure(figment)).await.unwrap();
    assert!(
        dir.path("session_secret.key").exists(),
        "the debug key is kept in `dir`"
    );
    client
}

#[rocket::async_test]
async fn counter_answers_one_on_a_first_visit_then_counts() {
    let dir = TempDir::new("counter");
    let client = launch(counter::rocket(), &dir).await;
    let first = get_with(&client, "/", None).await;
    assert_eq!((first.status, first.body.as_str()), (Status::Ok, "1"));
    let cookie = first.cookie.unwrap();
    assert_eq!(get_with(&client, "/", Some(&cookie)).await.body, "2");
    assert_eq!(get_with(&client, "/", None).await.body, "1");
}

#[rocket::async_test]
async fn login_greets_the_user_until_logout() {
    let dir = TempDir::new("login");
    let client = launch(login::rocket(), &dir).await;
    assert_eq!(get_with(&client, "/", None).await.body, "Not logged in");

    let res = client
        .post("/login")
        .header(ContentType::Form)
        .body("username=ada")
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::SeeOther);
    assert_eq!(res.headers().get_one("Location"), Some("/"));
    let cookie = session_cookie(&res).unwrap();
    assert_eq!(
        get_with(&client, "/", Some(&cookie)).await.body,
        "Hello, ada"
    );

    let out = post_with(&client, "/logout", Some(&cookie)).await;
    assert_eq!(out.status, Status::SeeOther);
    assert_eq!(out.cookie.as_deref(), Some(""), "the cookie is removed");
    assert_eq!(
        get_with(&client, "/", Some(&cookie)).await.body,
        "Not logged in"
    );
}

/// Logs in to the devices example as `user` (remembered or not); the session cookie.
async fn log_in(client: &Client, form: &str) -> (String, Vec<String>) {
    let res = client
        .post("/login")
        .header(ContentType::Form)
        .body(form)
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::SeeOther);
    (session_cookie(&res).unwrap(), set_cookies(&res))
}

#[rocket::async_test]
async fn devices_lists_a_users_sessions_and_revokes_one() {
    let dir = TempDir::new("devices");
    devices_on(launch(devices::rocket(), &dir).await).await;
}

/// The example's Rocket in `profile` of the repository's Rocket.toml, with `overrides`.
async fn launch_in(
    rocket: rocket::Rocket<rocket::Build>,
    profile: &str,
    overrides: &[(&str, String)],
) -> Client {
    let mut figment = rocket
        .figment()
        .clone()
        .select(profile)
        .merge(("log_level", "off"));
    for (key, value) in overrides {
        figment = figment.merge((*key, value));
    }
    Client::untracked(rocket.configure(figment))
        .await
        .unwrap_or_else(|e| panic!("the example launches in the `{profile}` profile: {e}"))
}

#[rocket::async_test]
async fn devices_runs_on_redis_in_the_redis_profile() {
    let url = std::env::var("REDIS_URL").expect("REDIS_URL: run scripts/test");
    let prefix = format!("rss-example-{}:", std::process::id());
    let overrides = [
        ("databases.sessions.url", url),
        ("session.store.key_prefix", prefix),
    ];
    devices_on(launch_in(devices::rocket(), "redis", &overrides).await).await;
}

#[rocket::async_test]
async fn devices_runs_on_sqlite_in_the_sqlite_profile() {
    let dir = TempDir::new("devices-sqlite");
    let url = format!("sqlite://{}", dir.path("sessions.sqlite").display());
    let overrides = [("databases.sessions.url", url)];
    devices_on(launch_in(devices::rocket(), "sqlite", &overrides).await).await;
}

/// Two users' sessions on the devices example: one user's list, and a revocation.
async fn devices_on(client: Client) {
    let (laptop, headers) = log_in(&client, "username=ada&remember=true").await;
    assert!(headers[0].contains("Max-Age=2592000"), "{headers:?}");
    let (phone, headers) = log_in(&client, "username=ada").await;
    assert!(!headers[0].contains("Max-Age"), "{headers:?}");
    log_in(&client, "username=bob").await;

    let page = get_with(&client, "/devices", Some(&laptop)).await.body;
    let lines: Vec<&str> = page.lines().skip(1).collect();
    assert!(page.starts_with("Signed in as ada on:"), "{page}");
    assert_eq!(lines.len(), 2, "ada's two sessions, not bob's: {page}");
    let other = lines
        .iter()
        .find(|l| !l.ends_with("(this browser)"))
        .expect("the phone's session");
    let handle = other.split(' ').next().unwrap();

    let revoked = post_with(&client, &format!("/devices/{handle}/revoke"), Some(&laptop)).await;
    assert_eq!(revoked.status, Status::SeeOther);
    let gone = get_with(&client, "/devices", Some(&phone)).await;
    assert_eq!(gone.status, Status::Unauthorized, "the phone is signed out");
    let page = get_with(&client, "/devices", Some(&laptop)).await.body;
    assert_eq!(page.lines().count(), 2, "{page}");
    let again = post_with(&client, &format!("/devices/{handle}/revoke"), Some(&laptop)).await;
    assert_eq!(again.status, Status::NotFound);
}
