//! `GET /` counts the visitor's page loads in their session: "1" on a first visit.
//!
//! Run it with `cargo run --example counter`, then `curl -c jar -b jar http://127.0.0.1:8000/`.

use rocket::{get, launch, routes};
use rocket_server_sessions::{Session, SessionError, Sessions};

#[get("/")]
fn index(session: Session<'_>) -> Result<String, SessionError> {
    let count = session.update_or("count", 0u64, |n| n + 1)?;
    Ok(count.to_string())
}

#[launch]
pub fn rocket() -> _ {
    rocket::build()
        .attach(Sessions::fairing())
        .mount("/", routes![index])
}
