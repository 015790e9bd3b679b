//! The session cookie's value: signing and verifying, no I/O and no clock of its own.
//!
//! A value is the URL-safe base64 (no padding) of 72 bytes: the 32-byte session id, the issue
//! time as 8 big-endian bytes of Unix seconds, and an HMAC-SHA256 tag over the cookie name, the
//! id and the issue time. Binding the name means a value cannot be moved to another cookie.
//!
//! A session given its own lifetime ([`Session::set_lifetime`](crate::Session::set_lifetime))
//! has a value of 76 bytes: 4 more, before the tag and covered by it, hold the lifetime (0 for a
//! browser session, else seconds). Sessions on the configured lifetime keep the short value.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::id::{SessionId, ID_LEN};

type HmacSha256 = Hmac<Sha256>;

const RAW_LEN: usize = ID_LEN + 8 + 32;
/// The raw length of a value that states its session's own lifetime.
const RAW_LONG: usize = RAW_LEN + 4;
/// Length of every valid cookie value of a session on the configured lifetime, in characters.
pub(crate) const VALUE_LEN: usize = (RAW_LEN * 4).div_ceil(3);
/// Length of a value that states its session's own lifetime, in characters.
pub(crate) const LONG_VALUE_LEN: usize = (RAW_LONG * 4).div_ceil(3);

/// The whole groups of four characters that hold the issue time: bytes `ISSUED_FROM ..
/// ISSUED_FROM + 12` of the raw value, from character `ISSUED_FROM / 3 * 4` on.
const ISSUED_FROM: usize = ID_LEN / 3 * 3;
const ISSUED_CHARS: std::ops::Range<usize> = ISSUED_FROM / 3 * 4..ISSUED_FROM / 3 * 4 + 16;

/// A cookie value that verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verified {
    pub id: SessionId,
    /// Unix seconds at which the value was issued.
    pub issued: u64,
    /// Whether the current key signed it (else a previous key did: re-issue it).
    pub current_key: bool,
    /// The session's own lifetime as the value states it: `None` on the configured one,
    /// `Some(0)` a browser session, `Some(n)` `n` seconds.
    pub life: Option<u32>,
}

/// Why a cookie value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejected {
    /// Not the shape of a value this crate writes.
    Malformed,
    /// No configured key made this tag.
    BadSignature,
    /// Issued longer ago than its lifetime (`shelf_life` unless it states its own).
    Expired,
}

/// Signs and verifies session cookie values for one cookie name.
#[derive(Clone)]
pub(crate) struct CookieCodec {
    name: Vec<u8>,
    /// Keyed MACs, the current key first; cloned per use so the key schedule runs once.
    macs: Vec<HmacSha256>,
    shelf_life: u64,
    /// The longest lifetime a value may state (longer ones count as this long).
    longest: u64,
}

impl CookieCodec {
    pub fn new(name: &str, current: &[u8], previous: &[Vec<u8>], shelf_life: u64) -> Self {
        let macs = std::iter::once(current)
            .chain(previous.iter().map(Vec::as_slice))
            .map(|k| HmacSha256::new_from_slice(k).expect("HMAC takes keys of any length"))
            .collect();
        CookieCodec {
            name: name.as_bytes().to_vec(),
            macs,
            shelf_life,
            longest: shelf_life,
        }
    }

    /// The same codec, accepting values that state lifetimes up to `longest` seconds.
    pub fn with_longest(mut self, longest: u64) -> Self {
        self.longest = longest;
        self
    }

    /// The MAC of a value's signed part: the id, the issue time and, in a long value, the
    /// lifetime. (A short value's input is a prefix of a long one's; HMAC makes neither tag
    /// from the other.)
    fn mac(&self, key: &HmacSha256, signed: &[u8]) -> HmacSha256 {
        let mut mac = key.clone();
        mac.update(&(self.name.len() as u64).to_be_bytes());
        mac.update(&self.name);
        mac.update(signed);
        mac
    }

    /// The cookie value for `id`, issued at `issued`, signed with the current key.
    pub fn sign(&self, id: &SessionId, issued: u64) -> String {
        self.sign_with(id, issued, None)
    }

    /// The cookie value for `id`, issued at `issued`, stating `life` (see [`Verified::life`])
    /// when it is not `None`.
    pub fn sign_with(&self, id: &SessionId, issued: u64, life: Option<u32>) -> String {
        let mut raw = [0u8; RAW_LONG];
        raw[..ID_LEN].copy_from_slice(id.as_bytes());
        raw[ID_LEN..ID_LEN + 8].copy_from_slice(&issued.to_be_bytes());
        let signed = match life {
            Some(life) => {
                raw[ID_LEN + 8..ID_LEN + 12].copy_from_slice(&life.to_be_bytes());
                ID_LEN + 12
            }
            None => ID_LEN + 8,
        };
        let tag = self
            .mac(&self.macs[0], &raw[..signed])
            .finalize()
            .into_bytes();
        raw[signed..signed + 32].copy_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(&raw[..signed + 32])
    }

    /// The issue time `value` states, read without verifying it, when that time alone decides
    /// whether a valid value is due for a refresh: `None` when previous keys are configured (a
    /// value one of them signed is re-issued whatever its age) or `value` is not the shape of
    /// one. A value is valid only with the time it states, so a caller may skip verifying a
    /// value whose stated time needs no refresh: verified, it would need none either.
    pub fn stated_issue(&self, value: &[u8]) -> Option<u64> {
        if self.macs.len() > 1 || value.len() != VALUE_LEN {
            return None;
        }
        let bytes: [u8; 12] = decode_exact(&value[ISSUED_CHARS])?;
        let at = ID_LEN - ISSUED_FROM;
        Some(u64::from_be_bytes(
            bytes[at..at + 8].try_into().expect("eight bytes"),
        ))
    }

    /// Verifies `value` at time `now`. Any byte string gives an answer; none panics.
    pub fn verify(&self, value: &[u8], now: u64) -> Result<Verified, Rejected> {
        let mut raw = [0u8; RAW_LONG];
        let signed = match value.len() {
            VALUE_LEN => {
                raw[..RAW_LEN]
                    .copy_from_slice(&decode_exact::<RAW_LEN>(value).ok_or(Rejected::Malformed)?);
                ID_LEN + 8
            }
            LONG_VALUE_LEN => {
                raw = decode_exact(value).ok_or(Rejected::Malformed)?;
                ID_LEN + 12
            }
            _ => return Err(Rejected::Malformed),
        };
        let (signed, tag) = raw[..signed + 32].split_at(signed);
        // `verify_slice` compares in constant time.
        let signer = self
            .macs
            .iter()
            .position(|key| self.mac(key, signed).verify_slice(tag).is_ok())
            .ok_or(Rejected::BadSignature)?;
        let issued = u64::from_be_bytes(signed[ID_LEN..ID_LEN + 8].try_into().expect("8 bytes"));
        let life = (signed.len() > ID_LEN + 8)
            .then(|| u32::from_be_bytes(signed[ID_LEN + 8..].try_into().expect("4 bytes")));
        let max_age = match life {
            None | Some(0) => self.shelf_life,
            Some(secs) => u64::from(secs).min(self.longest),
        };
        if now.saturating_sub(issued) >= max_age {
            return Err(Rejected::Expired);
        }
        Ok(Verified {
            id: SessionId::from_bytes(signed[..ID_LEN].try_into().expect("ID_LEN bytes")),
            issued,
            current_key: signer == 0,
            life,
        })
    }
}

/// The values of the cookies named `name` in a request's `Cookie` header values, in order
/// (Rocket's cookie jar keeps one value per name).
pub(crate) fn values_named<'a>(
    headers: impl Iterator<Item = &'a str>,
    name: &'a str,
) -> impl Iterator<Item = &'a str> {
    headers
        .flat_map(|header| header.split(';'))
        .filter_map(move |pair| {
            let (n, value) = pair.split_once('=')?;
            (n.trim() == name).then(|| value.trim())
        })
}

/// Decodes URL-safe base64 without padding into exactly `N` bytes (at most 76), or `None` for
/// anything else: a wrong length, a character outside the alphabet, or non-zero trailing bits
/// (a second spelling of a value).
pub(crate) fn decode_exact<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != (N * 4).div_ceil(3) {
        return None;
    }
    // The decoder asks for room for whole groups of three bytes.
    let mut room = [0u8; RAW_LONG + 3];
    let n = URL_SAFE_NO_PAD.decode_slice(text, &mut room).ok()?;
    room[..n].try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    const OLD: &[u8] = b"an older key, also 32 bytes long";

    fn codec() -> CookieCodec {
        CookieCodec::new("session", KEY, &[OLD.to_vec()], 100)
    }

    #[test]
    fn a_signed_value_verifies_until_its_shelf_life_ends() {
        let id = SessionId::generate();
        let value = codec().sign(&id, 1000);
        assert_eq!(value.len(), VALUE_LEN);
        let ok = Verified {
            id,
            issued: 1000,
            current_key: true,
            life: None,
        };
        assert_eq!(codec().verify(value.as_bytes(), 1000), Ok(ok));
        assert_eq!(codec().verify(value.as_bytes(), 1099), Ok(ok));
        assert_eq!(
            codec().verify(value.as_bytes(), 1100),
            Err(Rejected::Expired)
        );
    }

    #[test]
    fn a_value_stating_a_lifetime_verifies_for_that_long_within_the_longest() {
        let codec = codec().with_longest(500);
        let id = SessionId::generate();
        let ok = |life| Verified {
            id,
            issued: 1000,
            current_key: true,
            life,
        };
        for (life, lasts) in [
            (Some(300), 300),
            (Some(900), 500),
            (Some(0), 100),
            (None, 100),
        ] {
            let value = codec.sign_with(&id, 1000, life);
            let len = if life.is_some() {
                LONG_VALUE_LEN
            } else {
                VALUE_LEN
            };
            assert_eq!(value.len(), len);
            assert_eq!(
                codec.verify(value.as_bytes(), 1000 + lasts - 1),
                Ok(ok(life))
            );
            assert_eq!(
                codec.verify(value.as_bytes(), 1000 + lasts),
                Err(Rejected::Expired),
                "{life:?}"
            );
        }
    }

    #[test]
    fn a_stated_lifetime_cannot_be_added_changed_or_cut_off() {
        let id = SessionId::generate();
        let long = codec().sign_with(&id, 1000, Some(50));
        let mut raw: [u8; RAW_LONG] = decode_exact(long.as_bytes()).unwrap();
        raw[ID_LEN + 11] = 51;
        let changed = URL_SAFE_NO_PAD.encode(raw);
        assert_eq!(
            codec().verify(changed.as_bytes(), 1000),
            Err(Rejected::BadSignature)
        );
        // The long value's tag over the short value's part, and the reverse.
        let short = codec().sign(&id, 1000);
        let short_raw: [u8; RAW_LEN] = decode_exact(short.as_bytes()).unwrap();
        let mut cut = short_raw;
        cut[ID_LEN + 8..].copy_from_slice(&raw[ID_LEN + 12..]);
        let cut = URL_SAFE_NO_PAD.encode(cut);
        assert_eq!(
            codec().verify(cut.as_bytes(), 1000),
            Err(Rejected::BadSignature)
        );
        let mut added = [0u8; RAW_LONG];
        added[..ID_LEN + 8].copy_from_slice(&short_raw[..ID_LEN + 8]);
        added[ID_LEN + 12..].copy_from_slice(&short_raw[ID_LEN + 8..]);
        let added = URL_SAFE_NO_PAD.encode(added);
        assert_eq!(
            codec().verify(added.as_bytes(), 1000),
            Err(Rejected::BadSignature)
        );
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        for life in [None, Some(0), Some(60)] {
            let value = codec()
                .sign_with(&SessionId::generate(), 1000, life)
                .into_bytes();
            for i in 0..value.len() {
                for bit in 0..8 {
                    let mut bad = value.clone();
                    bad[i] ^= 1 << bit;
                    assert!(codec().verify(&bad, 1000).is_err(), "byte {i} bit {bit}");
                }
            }
        }
    }

    #[test]
    fn truncated_extended_and_garbage_values_are_malformed() {
        let value = codec().sign(&SessionId::generate(), 1000);
        for len in 0..value.len() {
            assert_eq!(
                codec().verify(&value.as_bytes()[..len], 1000),
                Err(Rejected::Malformed)
            );
        }
        let longer = format!("{value}A");
        assert_eq!(
            codec().verify(longer.as_bytes(), 1000),
            Err(Rejected::Malformed)
        );
        assert_eq!(
            codec().verify(&[0xff; VALUE_LEN], 1000),
            Err(Rejected::Malformed)
        );
        assert_eq!(
            codec().verify(&vec![b'A'; 10_000], 1000),
            Err(Rejected::Malformed)
        );
    }

    #[test]
    fn only_the_one_spelling_of_a_value_decodes() {
        // 43 characters spell 32 bytes with two bits to spare: they must be zero.
        let id = "A".repeat(43);
        assert_eq!(decode_exact::<32>(id.as_bytes()), Some([0; 32]));
        let second_spelling = format!("{}B", "A".repeat(42));
        assert_eq!(decode_exact::<32>(second_spelling.as_bytes()), None);
        for stray in ["+", "/", "=", " ", "\u{e9}"] {
            let text = format!("{}{stray}", "A".repeat(43 - stray.len()));
            assert_eq!(decode_exact::<32>(text.as_bytes()), None, "{stray:?}");
        }
        assert_eq!(
            decode_exact::<32>(format!("{id}=").as_bytes()),
            None,
            "padding"
        );
    }

    #[test]
    fn every_value_of_the_name_is_found_in_every_header_in_order() {
        let headers = [
            "a=1; session=first;session =second",
            "x=session; session=third",
        ];
        let found: Vec<_> = values_named(headers.into_iter(), "session").collect();
        assert_eq!(found, ["first", "second", "third"]);
        assert_eq!(
            values_named(["sessions=1"].into_iter(), "session").count(),
            0
        );
    }

    #[test]
    fn other_keys_and_cookie_names_do_not_verify() {
        let id = SessionId::generate();
        let stranger = CookieCodec::new("session", &[9; 32], &[], 100);
        let value = stranger.sign(&id, 1000);
        assert_eq!(
            codec().verify(value.as_bytes(), 1000),
            Err(Rejected::BadSignature)
        );
        let renamed = CookieCodec::new("other", KEY, &[], 100);
        let value = renamed.sign(&id, 1000);
        assert_eq!(
            codec().verify(value.as_bytes(), 1000),
            Err(Rejected::BadSignature)
        );
    }

    #[test]
    fn the_stated_issue_time_is_the_signed_one_and_only_with_one_key() {
        let alone = CookieCodec::new("session", KEY, &[], 100);
        for issued in [0, 1, 255, 256, 1_764_000_000, u64::MAX / 3, u64::MAX] {
            let value = alone.sign(&SessionId::generate(), issued);
            assert_eq!(alone.stated_issue(value.as_bytes()), Some(issued));
            assert_eq!(codec().stated_issue(value.as_bytes()), None, "two keys");
        }
        let value = alone.sign(&SessionId::generate(), 1000);
        assert_eq!(alone.stated_issue(&value.as_bytes()[1..]), None);
        assert_eq!(alone.stated_issue(format!("{value}A").as_bytes()), None);
        assert_eq!(alone.stated_issue(&[b'!'; VALUE_LEN]), None);
    }

    #[test]
    fn a_previous_key_verifies_but_asks_for_reissue() {
        let id = SessionId::generate();
        let old = CookieCodec::new("session", OLD, &[], 100);
        let value = old.sign(&id, 1000);
        let verified = codec().verify(value.as_bytes(), 1000).unwrap();
        assert_eq!(verified.id, id);
        assert!(!verified.current_key);
    }
}
