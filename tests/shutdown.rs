//! Graceful shutdown of a real server: requests in flight when it begins are still persisted.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use rocket::serde::json::json;
use rocket::tokio::sync::Notify;
use rocket::{post, routes, State};
use rocket_server_sessions::{ManualClock, Session, SessionError};

/// Loads the session, then waits for the test to open the gate before changing it.
#[post("/gated/<key>/<value>")]
async fn gated(
    session: Session<'_>,
    gate: &State<Arc<Notify>>,
    key: &str,
    value: &str,
) -> Result<&'static str, SessionError> {
    gate.notified().await;
    session.set(key, value)?;
    Ok("ok")
}

#[rocket::async_test]
async fn changes_of_requests_in_flight_at_shutdown_reach_the_snapshot() {
    let dir = TempDir::new("shutdown");
    let file = dir.path("sessions.snapshot");
    let port = free_port();
    let gate = Arc::new(Notify::new());
    let clock = ManualClock::new(START);
    let figment = figment(json!({ "store": { "file_path": &file, "snapshot_interval": 0 } }))
        .merge(("port", port))
        .merge(("shutdown.ctrlc", false));
    let rocket = app(figment, &clock)
        .manage(gate.clone())
        .mount("/", routes![gated])
        .ignite()
        .await
        .unwrap();
    let shutdown = rocket.shutdown();
    let server = rocket::tokio::spawn(rocket.launch());

    let cookie = rocket::tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        http(port, "POST", "/set/before/1", None).1.unwrap()
    })
    .await
    .unwrap();

    let c = cookie.clone();
    let in_flight = rocket::tokio::task::spawn_blocking(move || {
        http(port, "POST", "/gated/during/2", Some(&c))
    });
    // Let the request reach the gate, then start the shutdown, then let the request finish.
    rocket::tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown.clone().notify();
    shutdown.await;
    rocket::tokio::time::sleep(Duration::from_millis(300)).await;
    gate.notify_one();
    let (status, _, _) = in_flight.await.unwrap();
    assert_eq!(status, 200);
    let _ = server.await.unwrap();

    let store = open_snapshot(&file);
    assert_eq!(store.len(), 1);
    let (client, _) = client_with(Arc::new(store), json!({})).await;
    let during = get_with(&client, "/get/during", Some(&cookie)).await;
    assert_eq!(during.body, "2", "the in-flight change was persisted");
    assert_eq!(
        get_with(&client, "/get/before", Some(&cookie)).await.body,
        "1"
    );
}
