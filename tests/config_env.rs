//! Environment variables override Rocket.toml. Its own test binary: it sets process-wide
//! variables, which no other test may see.

use rocket::figment::providers::{Format, Toml};
use rocket::figment::Figment;
use rocket_server_sessions::config::StoreConfig;
use rocket_server_sessions::SessionConfig;

#[test]
fn rocket_session_variables_override_the_profile() {
    let toml = r#"
        [default.session]
        secret_key = "0123456789abcdef0123456789abcdef"
        cookie_name = "from-toml"
        shelf_life = 100
        store = { kind = "memory", ttl = 50, file_path = "" }
    "#;
    std::env::set_var("ROCKET_SESSION", "{cookie_name=\"from-env\"}");
    std::env::set_var("ROCKET_SESSION_SHELF_LIFE", "60");
    std::env::set_var("ROCKET_SESSION_STORE__TTL", "30");
    // Rocket's own providers, as `rocket::Config::figment()` layers them, with our TOML.
    let figment = Figment::from(rocket::Config::default())
        .merge(Toml::string(toml).nested())
        .merge(
            rocket::figment::providers::Env::prefixed("ROCKET_")
                .ignore(&["PROFILE"])
                .global(),
        )
        .select("release");
    let config = SessionConfig::from_figment(&figment).unwrap();
    assert_eq!(config.cookie_name, "from-env");
    assert_eq!(config.shelf_life, 60);
    match config.store {
        StoreConfig::Memory(m) => assert_eq!((m.ttl, m.file_path), (30, None)),
        other => panic!("{other:?}"),
    }

    std::env::set_var("ROCKET_SESSION_SHELF_LIFE", "soon");
    let error = SessionConfig::from_figment(&figment).unwrap_err();
    assert_eq!(
        (error.key.as_str(), error.profile.as_str()),
        ("shelf_life", "release")
    );
}
