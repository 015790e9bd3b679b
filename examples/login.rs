//! Log in and out: `POST /login` (form field `username`), `GET /`, `POST /logout`.
//!
//! Run it with `cargo run --example login`, then:
//! `curl -c jar -b jar -d username=ada http://127.0.0.1:8000/login` and
//! `curl -c jar -b jar http://127.0.0.1:8000/`.

use rocket::form::Form;
use rocket::response::Redirect;
use rocket::{get, launch, post, routes, FromForm};
use rocket_server_sessions::{Session, SessionError, Sessions};

#[derive(FromForm)]
struct Login {
    username: String,
}

#[post("/login", data = "<form>")]
fn login(session: Session<'_>, form: Form<Login>) -> Result<Redirect, SessionError> {
    // A new id on every change of privilege: an id planted before login is worth nothing after.
    session.cycle_id();
    session.set("user", &form.username)?;
    Ok(Redirect::to("/"))
}

#[get("/")]
fn index(session: Session<'_>) -> Result<String, SessionError> {
    Ok(match session.try_get::<String>("user")? {
        Some(name) => format!("Hello, {name}"),
        None => "Not logged in".to_string(),
    })
}

#[post("/logout")]
fn logout(session: Session<'_>) -> Redirect {
    session.destroy();
    Redirect::to("/")
}

#[launch]
pub fn rocket() -> _ {
    rocket::build()
        .attach(Sessions::fairing())
        .mount("/", routes![index, login, logout])
}
