//! The examples are smoke tests: each runs as shipped, on the repository's Rocket.toml (debug
//! profile, memory store), except that the snapshot and the debug key go to a temporary folder.

mod common;

#[allow(dead_code)]
#[path = "../examples/counter.rs"]
mod counter;

#[allow(dead_code)]
#[path = "../examples/login.rs"]
mod login;

use common::*;
use rocket::http::{ContentType, Status};
use rocket::local::asynchronous::Client;

/// The example's Rocket, keeping its snapshot and its debug key in `dir`, never in the
/// repository.
async fn launch(rocket: rocket::Rocket<rocket::Build>, dir: &TempDir) -> Client {
    let figment = rocket
        .figment()
        .clone()
        .merge(("session.store.file_path", dir.path("sessions.snapshot")))
        .merge(("session.secret_key_file", dir.path("session_secret.key")))
        .merge(("log_level", "off"));
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
