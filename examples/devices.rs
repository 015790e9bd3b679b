//! A "your devices" page: log in from several browsers, list your sessions, sign one out.
//!
//! `POST /login` (form fields `username`, and `remember=true` for thirty days instead of a
//! browser session), `GET /devices` (one line per session: its handle, when it signed in,
//! when it was last active, and which one is this browser), `POST /devices/<handle>/revoke`,
//! `POST /logout`.
//!
//! Run it with `cargo run --example devices`, then log in twice with two cookie jars:
//! `curl -c a -b a -d username=ada -d remember=true http://127.0.0.1:8000/login`,
//! `curl -c b -b b -d username=ada http://127.0.0.1:8000/login`,
//! `curl -b a http://127.0.0.1:8000/devices`, and revoke the other one with
//! `curl -b a -X POST http://127.0.0.1:8000/devices/<handle>/revoke`.

use std::time::Duration;

use rocket::form::Form;
use rocket::http::Status;
use rocket::response::Redirect;
use rocket::{get, launch, post, routes, FromForm, State};
use rocket_server_sessions::{Lifetime, Session, SessionHandle, SessionManager, Sessions};

#[derive(FromForm)]
struct Login {
    username: String,
    remember: bool,
}

#[post("/login", data = "<form>")]
fn login(session: Session<'_>, form: Form<Login>) -> Result<Redirect, Status> {
    session.cycle_id();
    session.set("user", &form.username)?;
    session.set_lifetime(match form.remember {
        true => Lifetime::Idle(Duration::from_secs(30 * 86_400)),
        false => Lifetime::BrowserSession,
    })?;
    Ok(Redirect::to("/devices"))
}

#[get("/devices")]
async fn devices(session: Session<'_>) -> Result<String, Status> {
    let user: String = session.try_get("user")?.ok_or(Status::Unauthorized)?;
    let mut page = format!("Signed in as {user} on:\n");
    for device in session.list_where("user", &user).await? {
        let this = if device.current {
            " (this browser)"
        } else {
            ""
        };
        page += &format!(
            "{} signed in at {}, last active at {}{this}\n",
            device.handle, device.created, device.last_active
        );
    }
    Ok(page)
}

#[post("/devices/<handle>/revoke")]
async fn revoke(
    session: Session<'_>,
    sessions: &State<SessionManager>,
    handle: SessionHandle,
) -> Result<Redirect, Status> {
    let user: String = session.try_get("user")?.ok_or(Status::Unauthorized)?;
    // Only among the signed-in user's own sessions.
    match sessions.revoke_where("user", &user, &handle).await? {
        true => Ok(Redirect::to("/devices")),
        false => Err(Status::NotFound),
    }
}

#[post("/logout")]
fn logout(session: Session<'_>) -> Redirect {
    session.destroy();
    Redirect::to("/devices")
}

#[launch]
pub fn rocket() -> _ {
    rocket::build()
        .attach(Sessions::fairing())
        .mount("/", routes![login, devices, revoke, logout])
}
