//! Environment variables override Rocket.toml. Its own test binary: it sets process-wide
//! variables, which no other test may see.

use rocket::figment::providers::{Format, Toml};
use rocket::figment::Figment;
use rocket_server_sessions::config::StoreConfig;
use rocket_server_sessions::SessionConfig;

/// The environment is the process's: one test at a time changes it, and removes what it set.
static ENVIRONMENT: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn rocket_session_variables_override_the_profile() {
    let _alone = ENVIRONMENT.lock().unwrap_or_else(|p| p.into_inner());
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
    for name in [
        "ROCKET_SESSION",
        "ROCKET_SESSION_SHELF_LIFE",
        "ROCKET_SESSION_STORE__TTL",
    ] {
        std::env::remove_var(name);
    }
}

/// Secrets are text whatever they look like: a key of digits set in the environment keeps its
/// leading zero, and one too short is refused by its length without the message showing it.
#[test]
fn a_secret_key_of_digits_from_the_environment_is_the_text_as_written() {
    let _alone = ENVIRONMENT.lock().unwrap_or_else(|p| p.into_inner());
    let figment = Figment::from(rocket::Config::default())
        .merge((
            "session.store",
            rocket::figment::util::map!["kind" => "memory", "file_path" => ""],
        ))
        .select("release");
    let digits = "01234567890123456789012345678901";
    std::env::set_var("ROCKET_SESSION_SECRET_KEY", digits);
    let config = SessionConfig::from_figment(&figment).unwrap();
    assert_eq!(config.secret_key, digits.as_bytes());

    std::env::set_var("ROCKET_SESSION_SECRET_KEY", "0123456789");
    let error = SessionConfig::from_figment(&figment).unwrap_err();
    assert_eq!(error.key, "secret_key");
    assert!(error.reason.contains("at least 32"), "{error}");
    for shown in ["0123456789", "123456789"] {
        assert!(!error.to_string().contains(shown), "{error}");
    }
    std::env::remove_var("ROCKET_SESSION_SECRET_KEY");
}

/// A secret key given as a number (an unquoted TOML value, say) is read as its digits, and
/// refused, if it is, by its length, never with its value in the message.
#[test]
fn a_secret_key_given_as_a_number_is_text_and_never_shown() {
    let figment = Figment::from(rocket::Config::default())
        .merge((
            "session.store",
            rocket::figment::util::map!["kind" => "memory", "file_path" => ""],
        ))
        .merge(("session.secret_key", 987654321u64))
        .select("release");
    let _alone = ENVIRONMENT.lock().unwrap_or_else(|p| p.into_inner());
    let error = SessionConfig::from_figment(&figment).unwrap_err();
    assert_eq!(error.key, "secret_key");
    assert!(error.reason.contains("is 9 bytes long"), "{error}");
    assert!(!error.to_string().contains("987654321"), "{error}");
}
