//! Single values of the configuration: secret keys read as text, and the checks on
//! durations, keys, cookie names, paths and domains.

use serde::Deserialize;

use super::{MAX_SECONDS, MIN_KEY_LEN};

/// A secret key as text, whatever type its source gave the value (a TOML number, say): a
/// secret is never refused for its type, so no message prints it.
pub(super) struct Secret(pub String);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Any {
            Text(String),
            Unsigned(u64),
            Signed(i64),
            Float(f64),
        }
        Ok(Secret(
            match Any::deserialize(d).map_err(|_| {
                serde::de::Error::custom("a secret key must be a string (its value is not shown)")
            })? {
                Any::Text(text) => text,
                Any::Unsigned(n) => n.to_string(),
                Any::Signed(n) => n.to_string(),
                Any::Float(n) => n.to_string(),
            },
        ))
    }
}

pub(super) fn check_seconds(s: u64) -> Result<(), String> {
    match s {
        0 => Err("must be at least 1 second".into()),
        s if s > MAX_SECONDS => Err(format!("must be at most {MAX_SECONDS} seconds")),
        _ => Ok(()),
    }
}

pub(super) fn check_key(key: &str) -> Result<(), String> {
    if key.len() < MIN_KEY_LEN {
        return Err(format!(
            "is {} bytes long; at least {MIN_KEY_LEN} are required",
            key.len()
        ));
    }
    Ok(())
}

/// RFC 6265 `cookie-name` is an RFC 2616 token.
pub(super) fn check_cookie_name(name: &str) -> Result<(), String> {
    const SEPARATORS: &[u8] = b"()<>@,;:\\\"/[]?={} \t";
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    match name
        .bytes()
        .find(|b| !b.is_ascii_graphic() || SEPARATORS.contains(b))
    {
        Some(b) => Err(format!(
            "contains {:?}, which a cookie name cannot",
            b as char
        )),
        None => Ok(()),
    }
}

pub(super) fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("must start with `/`".into());
    }
    if path.bytes().any(|b| b == b';' || b.is_ascii_control()) {
        return Err("must not contain `;` or control characters".into());
    }
    Ok(())
}

pub(super) fn check_domain(domain: &str) -> Result<(), String> {
    let bare = domain.strip_prefix('.').unwrap_or(domain);
    if bare.is_empty()
        || !bare
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err("must be a host name such as `example.com`".into());
    }
    Ok(())
}
