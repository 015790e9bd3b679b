//! Graceful shutdown of a real server: requests in flight when it begins are still persisted.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use rocket::fairing::{Fairing, Info, Kind};
use rocket::serde::json::json;
use rocket::tokio::sync::Notify;
use rocket::{post, routes, State};
use rocket_server_sessions::{ManualClock, Session, SessionError};

/// What the gated request and the shutdown tell the test, and the gate the test opens.
#[derive(Default)]
struct Signals {
    /// The gated request has loaded its session.
    arrived: Notify,
    /// Opened by the test: the gated request may go on.
    gate: Notify,
    /// The shutdown fairings have begun, the sessions fairing's first: it waits for the
    /// requests in flight.
    shutting_down: Notify,
}

/// Loads the session, says so, then waits for the test to open the gate before changing it.
#[post("/gated/<key>/<value>")]
async fn gated(
    session: Session<'_>,
    signals: &State<Arc<Signals>>,
    key: &str,
    value: &str,
) -> Result<&'static str, SessionError> {
    signals.arrived.notify_one();
    signals.gate.notified().await;
    session.set(key, value)?;
    Ok("ok")
}

/// Attached after the sessions fairing: Rocket polls shutdown fairings in order, so when this
/// one runs, the sessions fairing is already waiting for the requests in flight.
struct ShutdownBegun(Arc<Signals>);

#[rocket::async_trait]
impl Fairing for ShutdownBegun {
    fn info(&self) -> Info {
        Info {
            name: "shutdown begun",
            kind: Kind::Shutdown,
        }
    }

    async fn on_shutdown(&self, _: &rocket::Rocket<rocket::Orbit>) {
        self.0.shutting_down.notify_one();
    }
}

/// Launches `rocket` on a real socket at `port` and returns once it accepts connections,
/// with its shutdown handle and the task running it.
async fn serve(
    rocket: rocket::Rocket<rocket::Build>,
    port: u16,
) -> (
    rocket::Shutdown,
    rocket::tokio::task::JoinHandle<Result<rocket::Rocket<rocket::Ignite>, rocket::Error>>,
) {
    let rocket = rocket.ignite().await.unwrap();
    let shutdown = rocket.shutdown();
    let server = rocket::tokio::spawn(rocket.launch());
    rocket::tokio::task::spawn_blocking(move || wait_for_port(port))
        .await
        .unwrap();
    (shutdown, server)
}

/// A server with a snapshot file whose shutdown has begun while `POST /gated/during/2` waits
/// at its gate, in the session that `POST /set/before/1` made.
struct GatedShutdown {
    _dir: TempDir,
    file: std::path::PathBuf,
    signals: Arc<Signals>,
    cookie: String,
    in_flight: rocket::tokio::task::JoinHandle<(u16, Option<String>, String)>,
    server: rocket::tokio::task::JoinHandle<Result<rocket::Rocket<rocket::Ignite>, rocket::Error>>,
}

/// Starts the server (Rocket's `shutdown` settings from `settings`), makes the session, sends
/// the gated request, and begins the shutdown once the request has reached the gate.
async fn shut_down_while_gated(name: &str, settings: &[(&str, u32)]) -> GatedShutdown {
    let dir = TempDir::new(name);
    let file = dir.path("sessions.snapshot");
    let port = free_port();
    let signals = Arc::new(Signals::default());
    let clock = ManualClock::new(START);
    let mut figment = figment(json!({ "store": { "file_path": &file, "snapshot_interval": 0 } }))
        .merge(("port", port))
        .merge(("shutdown.ctrlc", false));
    for &(key, value) in settings {
        figment = figment.merge((key, value));
    }
    let rocket = app(figment, &clock)
        .attach(ShutdownBegun(signals.clone()))
        .manage(signals.clone())
        .mount("/", routes![gated]);
    let (shutdown, server) = serve(rocket, port).await;
    let cookie =
        rocket::tokio::task::spawn_blocking(move || http(port, "POST", "/set/before/1", None))
            .await
            .unwrap()
            .1
            .unwrap();
    let c = cookie.clone();
    let in_flight = rocket::tokio::task::spawn_blocking(move || {
        http(port, "POST", "/gated/during/2", Some(&c))
    });
    // Once the request has loaded its session, start the shutdown.
    signals.arrived.notified().await;
    shutdown.clone().notify();
    signals.shutting_down.notified().await;
    GatedShutdown {
        _dir: dir,
        file,
        signals,
        cookie,
        in_flight,
        server,
    }
}

#[rocket::async_test]
async fn changes_of_requests_in_flight_at_shutdown_reach_the_snapshot() {
    let run = shut_down_while_gated("shutdown", &[]).await;
    // The shutdown is waiting for the request: let it finish.
    run.signals.gate.notify_one();
    let (status, _, _) = run.in_flight.await.unwrap();
    assert_eq!(status, 200);
    let _ = run.server.await.unwrap();

    let store = open_snapshot(&run.file);
    assert_eq!(store.len(), 1);
    let (client, _) = client_with(Arc::new(store), json!({})).await;
    let during = get_with(&client, "/get/during", Some(&run.cookie)).await;
    assert_eq!(during.body, "2", "the in-flight change was persisted");
    assert_eq!(
        get_with(&client, "/get/before", Some(&run.cookie))
            .await
            .body,
        "1"
    );
}

#[rocket::async_test]
async fn a_request_that_outlives_the_shutdown_wait_is_persisted_when_it_ends() {
    // Shutdown waits for requests in flight for grace + mercy = 2 s, then writes the snapshot.
    // The gated request's connection is closed by Rocket before it answers; its change must
    // still be kept.
    let run = shut_down_while_gated(
        "shutdown-late",
        &[("shutdown.grace", 1), ("shutdown.mercy", 1)],
    )
    .await;

    // The wait is over when the shutdown's snapshot appears, without the request's change.
    eventually_within(
        "the shutdown's snapshot",
        Duration::from_secs(30),
        || async { run.file.exists() },
    )
    .await;
    let (client, _) = client_with(Arc::new(open_snapshot(&run.file)), json!({})).await;
    assert_eq!(
        get_with(&client, "/get/before", Some(&run.cookie))
            .await
            .body,
        "1"
    );
    let during = get_with(&client, "/get/during", Some(&run.cookie)).await;
    assert_ne!(during.status, rocket::http::Status::Ok, "{}", during.body);

    // The request ends: its flush writes the snapshot again.
    run.signals.gate.notify_one();
    let _ = run.server.await.unwrap();
    let _ = run.in_flight.await;
    let (client, _) = client_with(Arc::new(open_snapshot(&run.file)), json!({})).await;
    assert_eq!(
        get_with(&client, "/get/during", Some(&run.cookie))
            .await
            .body,
        "2",
        "the late change was persisted"
    );
}

/// Signalled by `/nap` as it starts.
struct Arrived(Notify);

/// A short request that needs no session: it says it has arrived, then takes 10 ms.
#[post("/nap")]
async fn nap(arrived: &State<Arc<Arrived>>) -> &'static str {
    arrived.0.notify_one();
    rocket::tokio::time::sleep(Duration::from_millis(10)).await;
    "ok"
}

#[rocket::async_test]
async fn a_short_request_in_flight_at_shutdown_does_not_hold_it_for_the_grace_period() {
    // Rocket looks once, as the shutdown fairings end, for connections still holding on to
    // it, and waits out its whole grace period if it finds one. A request that was being
    // answered when the shutdown began must be done and its connection closed by then.
    let port = free_port();
    let arrived = Arc::new(Arrived(Notify::new()));
    let clock = ManualClock::new(START);
    let figment = figment(json!({ "store": { "file_path": "" } }))
        .merge(("port", port))
        .merge(("shutdown.ctrlc", false))
        .merge(("shutdown.grace", 5))
        .merge(("shutdown.mercy", 1));
    let rocket = app(figment, &clock)
        .manage(arrived.clone())
        .mount("/", routes![nap]);
    let (shutdown, server) = serve(rocket, port).await;

    let in_flight = rocket::tokio::task::spawn_blocking(move || http(port, "POST", "/nap", None));
    arrived.0.notified().await;
    let started = std::time::Instant::now();
    shutdown.notify();
    let _ = server.await.unwrap();
    let took = started.elapsed();
    assert_eq!(in_flight.await.unwrap().0, 200);
    assert!(
        took < Duration::from_millis(2500),
        "the server took {took:?} to stop (grace: 5 s)"
    );
}
