//! `[<profile>.session]`: defaults, layering, and a refusal naming key and profile for every
//! invalid value.

mod common;

use common::*;
use rocket::error::ErrorKind;
use rocket::figment::providers::{Format, Toml};
use rocket::figment::Figment;
use rocket::serde::json::json;
use rocket_server_sessions::config::{SameSite, StoreConfig};
use rocket_server_sessions::{ConfigError, SessionConfig, Sessions};

fn from_toml(toml: &str, profile: &str) -> Result<SessionConfig, ConfigError> {
    let figment = Figment::from(Toml::string(toml).nested()).select(profile);
    SessionConfig::from_figment(&figment)
}

#[test]
fn defaults_are_koyos() {
    let config = SessionConfig::from_figment(&figment(json!({}))).unwrap();
    assert_eq!(config.cookie_name, "session");
    assert_eq!(config.cookie_path, "/");
    assert_eq!(config.cookie_domain, None);
    assert!(config.cookie_secure);
    assert!(config.cookie_http_only);
    assert_eq!(config.cookie_same_site, SameSite::Strict);
    assert_eq!(config.shelf_life, 7 * 86_400);
    assert_eq!(
        config.refresh_interval, 60,
        "once a minute, not koyo's every response"
    );
    assert_eq!(config.max_lifetime, None);
    assert_eq!(config.max_session_size, 65_536);
    let toml = format!("[release.session]\nsecret_key = \"{KEY}\"\n");
    match from_toml(&toml, "release").unwrap().store {
        StoreConfig::Memory(m) => {
            assert_eq!(m.ttl, 7 * 86_400);
            assert_eq!(m.file_path.as_deref(), Some("sessions.snapshot".as_ref()));
        }
        other => panic!("{other:?}"),
    }
}

/// A refresh interval nobody wrote adapts to short lifetimes (twice within the shorter of the
/// cookie's and the store's), where a written one must fit them or the launch is refused.
#[test]
fn an_unwritten_refresh_interval_fits_short_lifetimes() {
    for (session, refresh) in [
        (json!({ "shelf_life": 30 }), 15),
        (
            json!({ "store": { "kind": "memory", "file_path": "", "ttl": 40 } }),
            20,
        ),
        (json!({ "shelf_life": 1 }), 0),
        (json!({ "shelf_life": 3600 }), 60),
    ] {
        let config = SessionConfig::from_figment(&figment(session.clone())).unwrap();
        assert_eq!(config.refresh_interval, refresh, "{session}");
    }
    let written = json!({ "refresh_interval": 60, "store": { "kind": "memory", "file_path": "", "ttl": 60 } });
    let error = SessionConfig::from_figment(&figment(written)).unwrap_err();
    assert_eq!(error.key, "refresh_interval");
    assert!(error.reason.contains("store.ttl"), "{error}");
}

#[test]
fn the_profile_table_merges_over_the_default_table_key_by_key() {
    let toml = format!(
        r#"
        [default.session]
        cookie_name = "sid"
        secret_key = "{KEY}"
        store = {{ kind = "memory", ttl = 60, file_path = "a.snapshot" }}

        [release.session]
        shelf_life = 120
        store = {{ ttl = 90 }}
        "#
    );
    let config = from_toml(&toml, "release").unwrap();
    assert_eq!(config.profile, "release");
    assert_eq!(config.cookie_name, "sid");
    assert_eq!(config.shelf_life, 120);
    match config.store {
        StoreConfig::Memory(m) => {
            assert_eq!(m.ttl, 90);
            assert_eq!(m.file_path.as_deref(), Some("a.snapshot".as_ref()));
        }
        other => panic!("{other:?}"),
    }
    let debug = from_toml(&toml, "debug").unwrap();
    assert_eq!(debug.shelf_life, 7 * 86_400);
}

#[test]
fn postgres_store_settings_are_read() {
    let toml = format!(
        "[prod.session]\nsecret_key = \"{KEY}\"\nstore = {{ kind = \"postgres\", database = \"db\", ttl = 30, migrate = false, unlogged = true, sweep_interval = 5, sweep_batch = 10, cache = 500 }}\n"
    );
    match from_toml(&toml, "prod").unwrap().store {
        StoreConfig::Postgres(p) => {
            assert_eq!(
                (
                    p.database.as_str(),
                    p.ttl,
                    p.migrate,
                    p.unlogged,
                    p.sweep_interval,
                    p.sweep_batch,
                    p.cache
                ),
                ("db", 30, false, true, 5, 10, 500)
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_postgres_store_caches_only_when_told_to() {
    let cache_of = |store: &str| {
        let toml = format!("[prod.session]\nsecret_key = \"{KEY}\"\nstore = {store}\n");
        match from_toml(&toml, "prod").unwrap().store {
            StoreConfig::Postgres(p) => p.cache,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(cache_of("{ kind = \"postgres\" }"), 0);
    assert_eq!(cache_of("{ kind = \"postgres\", cache = 10000 }"), 10_000);
}

#[test]
fn the_postgres_store_indexes_the_keys_it_is_told_to() {
    let keys_of = |store: &str| {
        let toml = format!("[prod.session]\nsecret_key = \"{KEY}\"\nstore = {store}\n");
        match from_toml(&toml, "prod").unwrap().store {
            StoreConfig::Postgres(p) => p.indexed_keys,
            other => panic!("{other:?}"),
        }
    };
    assert!(keys_of("{ kind = \"postgres\" }").is_empty());
    assert_eq!(
        keys_of("{ kind = \"postgres\", indexed_keys = [\"user_id\", \"team\"] }"),
        ["user_id", "team"]
    );
}

/// Each invalid setting, the key the error must name, and a word its reason must contain.
const INVALID: &[(&str, &str, &str)] = &[
    ("cookie_name = \"\"", "cookie_name", "empty"),
    ("cookie_name = \"a b\"", "cookie_name", "' '"),
    ("cookie_name = \"a;b\"", "cookie_name", "';'"),
    ("cookie_name = 5", "cookie_name", "invalid type"),
    ("cookie_path = \"app\"", "cookie_path", "`/`"),
    ("cookie_path = \"/a;b\"", "cookie_path", "`;`"),
    (
        "cookie_domain = \"exa mple.com\"",
        "cookie_domain",
        "host name",
    ),
    ("cookie_domain = \"\"", "cookie_domain", "host name"),
    ("cookie_secure = \"yes\"", "cookie_secure", "invalid type"),
    ("cookie_http_only = 1", "cookie_http_only", "invalid type"),
    (
        "cookie_same_site = \"sometimes\"",
        "cookie_same_site",
        "unknown variant",
    ),
    (
        "cookie_same_site = \"none\"\ncookie_secure = false",
        "cookie_same_site",
        "cookie_secure",
    ),
    (
        "cookie_name = \"__Host-s\"\ncookie_secure = false",
        "cookie_name",
        "cookie_secure",
    ),
    (
        "cookie_name = \"__Host-s\"\ncookie_path = \"/app\"",
        "cookie_name",
        "cookie_path",
    ),
    (
        "cookie_name = \"__Host-s\"\ncookie_domain = \"example.com\"",
        "cookie_name",
        "cookie_domain",
    ),
    (
        "cookie_name = \"__Secure-s\"\ncookie_secure = false",
        "cookie_name",
        "cookie_secure",
    ),
    ("shelf_life = 0", "shelf_life", "at least 1"),
    ("shelf_life = -5", "shelf_life", "invalid"),
    ("shelf_life = 99999999999999", "shelf_life", "at most"),
    (
        "refresh_interval = 604800",
        "refresh_interval",
        "shorter than shelf_life",
    ),
    ("max_lifetime = 0", "max_lifetime", "at least 1"),
    ("secret_key = \"short\"", "secret_key", "at least 32"),
    (
        "previous_secret_keys = [\"short\"]",
        "previous_secret_keys[0]",
        "at least 32",
    ),
    ("max_session_size = 0", "max_session_size", "at least 1"),
    (
        "store = { kind = \"mongodb\" }",
        "store.kind",
        "unknown store",
    ),
    (
        "store = { kind = \"sqlite\", busy_timeout = 0 }",
        "store.busy_timeout",
        "at least 1",
    ),
    (
        "store = { kind = \"redis\", sweep_interval = 60 }",
        "store.sweep_interval",
        "not a setting of the `redis` store",
    ),
    ("store = { ttl = 0 }", "store.ttl", "at least 1"),
    ("store = { ttl = \"week\" }", "store.ttl", "invalid type"),
    (
        "store = { sweep_interval = 0 }",
        "store.sweep_interval",
        "at least 1",
    ),
    (
        "store = { kind = \"memory\", database = \"x\" }",
        "store.database",
        "memory",
    ),
    (
        "store = { kind = \"postgres\", file_path = \"x\" }",
        "store.file_path",
        "postgres",
    ),
    (
        "store = { kind = \"postgres\", sweep_batch = 0 }",
        "store.sweep_batch",
        "at least 1",
    ),
    (
        "store = { kind = \"memory\", cache = 10 }",
        "store.cache",
        "memory",
    ),
    (
        "store = { kind = \"postgres\", cache = 20000000 }",
        "store.cache",
        "at most",
    ),
    (
        "store = { kind = \"postgres\", database = \"\" }",
        "store.database",
        "empty",
    ),
    (
        "store = { kind = \"memory\", indexed_keys = [\"user_id\"] }",
        "store.indexed_keys",
        "memory",
    ),
    (
        "store = { kind = \"postgres\", indexed_keys = [\"user_id\", \"\"] }",
        "store.indexed_keys",
        "non-empty",
    ),
    (
        "store = { colour = \"blue\" }",
        "store.colour",
        "unknown key; the keys here are kind, ttl,",
    ),
    (
        "cookie_colour = \"blue\"",
        "cookie_colour",
        "unknown key; the keys here are cookie_name, cookie_path,",
    ),
    ("store = 5", "store", "invalid type"),
];

#[test]
fn every_invalid_value_is_refused_naming_its_key_and_profile() {
    for (setting, key, word) in INVALID {
        let toml =
            format!("[default.session]\nsecret_key = \"{KEY}\"\n[staging.session]\n{setting}\n");
        let error = from_toml(&toml, "staging").expect_err(setting);
        assert_eq!(error.key, *key, "{setting}: {error}");
        assert_eq!(error.profile, "staging", "{setting}: {error}");
        assert!(error.reason.contains(word), "{setting}: {error}");
        let message = error.to_string();
        assert!(message.contains(&format!("`session.{key}`")), "{message}");
        if word.starts_with("unknown key") {
            assert_eq!(
                message.matches('`').count(),
                4,
                "no nested backticks: {message}"
            );
        }
        assert!(message.contains("`staging`"), "{message}");
    }
}

#[test]
fn a_profile_other_than_debug_needs_a_secret_key() {
    let error = from_toml("[release.session]\ncookie_name = \"s\"\n", "release").unwrap_err();
    assert_eq!(
        (error.key.as_str(), error.profile.as_str()),
        ("secret_key", "release")
    );
    assert!(error.reason.contains("missing"), "{error}");
}

#[test]
fn the_debug_profile_generates_a_private_key_file_and_reuses_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("debug-key");
    let file = dir.path("nested/key");
    let toml = format!(
        "[debug.session]\nsecret_key_file = {:?}\n",
        file.display().to_string()
    );
    let first = from_toml(&toml, "debug").unwrap();
    assert!(first.secret_key.len() >= 32);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let second = from_toml(&toml, "debug").unwrap();
    assert_eq!(
        first.secret_key, second.secret_key,
        "sessions survive restarts"
    );
    std::fs::write(&file, "too short").unwrap();
    let error = from_toml(&toml, "debug").unwrap_err();
    assert_eq!(error.key, "secret_key_file");
}

#[rocket::async_test]
async fn rocket_refuses_to_launch_on_an_invalid_configuration() {
    let rocket = rocket::custom(figment(json!({ "shelf_life": 0 }))).attach(Sessions::fairing());
    let error = launch_error(rocket).await;
    assert!(matches!(error.kind(), ErrorKind::FailedFairings(f) if f[0].name == "Sessions"));
}

#[rocket::async_test]
async fn rocket_refuses_to_launch_when_the_snapshot_cannot_be_read() {
    let dir = TempDir::new("unreadable");
    // A folder where the snapshot file should be: it can be neither read nor set aside as a file.
    let file = dir.path("snapshot");
    std::fs::create_dir_all(file.join("inside")).unwrap();
    let rocket = rocket::custom(figment(json!({ "store": { "file_path": file } })))
        .attach(Sessions::fairing());
    let error = launch_error(rocket).await;
    assert!(matches!(error.kind(), ErrorKind::FailedFairings(_)));
    assert!(file.join("inside").exists(), "nothing was removed");
}

/// Without the `postgres` feature, a profile that asks for the PostgreSQL store is refused at
/// launch (the configuration itself still reads: the same Rocket.toml serves every build).
#[cfg(not(feature = "postgres"))]
#[rocket::async_test]
async fn without_the_postgres_feature_a_postgres_store_is_refused_at_launch() {
    let session = json!({ "store": { "kind": "postgres", "database": "sessions" } });
    let config = SessionConfig::from_figment(&figment(session.clone()));
    assert!(config.is_ok(), "{config:?}");
    let rocket = rocket::custom(figment(session)).attach(Sessions::fairing());
    let error = launch_error(rocket).await;
    assert!(matches!(error.kind(), ErrorKind::FailedFairings(_)));
}
