//! URL-safe base64 without padding (RFC 4648 §5), strict: the only encoding of a value decodes.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Appends the encoding of `bytes` to `out`.
pub(crate) fn encode_into(bytes: &[u8], out: &mut String) {
    out.reserve(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = match *chunk {
            [a, b, c] => u32::from_be_bytes([0, a, b, c]),
            [a, b] => u32::from_be_bytes([0, a, b, 0]),
            [a] => u32::from_be_bytes([0, a, 0, 0]),
            _ => unreachable!("chunks(3) yields one to three bytes"),
        };
        let digits = chunk.len() + 1;
        for i in 0..digits {
            let sextet = (n >> (18 - 6 * i)) & 0x3f;
            out.push(ALPHABET[sextet as usize] as char);
        }
    }
}

/// The encoding of `bytes`.
pub(crate) fn encode(bytes: &[u8]) -> String {
    let mut s = String::new();
    encode_into(bytes, &mut s);
    s
}

/// Each byte's sextet, or `INVALID` for bytes outside the alphabet.
const INVALID: u8 = 0xff;
const SEXTETS: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 64 {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

fn sextet(c: u8) -> Option<u32> {
    match SEXTETS[c as usize] {
        INVALID => None,
        v => Some(v as u32),
    }
}

/// Decodes `text` into exactly `N` bytes, or `None` for anything else: a wrong length, a
/// character outside the alphabet, or non-zero trailing bits (a second spelling of a value).
pub(crate) fn decode_exact<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != (N * 4).div_ceil(3) {
        return None;
    }
    let mut out = [0u8; N];
    // Whole groups of four characters first, checked for strays once at the end: every
    // sextet is below 64, so `INVALID` (0xff) shows in the OR of them all.
    let (whole, tail) = text.split_at(text.len() / 4 * 4);
    let mut strays = 0u8;
    // Eight characters (six bytes) at a time in a u64, then what is left in fours.
    let (eights, fours) = whole.split_at(whole.len() / 8 * 8);
    let (out_eights, out_fours) = out.split_at_mut(eights.len() / 8 * 6);
    for (chunk, bytes) in eights.chunks_exact(8).zip(out_eights.chunks_exact_mut(6)) {
        let mut n = 0u64;
        for &c in chunk {
            let v = SEXTETS[c as usize];
            strays |= v;
            n = n << 6 | u64::from(v);
        }
        bytes.copy_from_slice(&n.to_be_bytes()[2..]);
    }
    for (chunk, bytes) in fours.chunks_exact(4).zip(out_fours.chunks_exact_mut(3)) {
        let [a, b, c, d] = [chunk[0], chunk[1], chunk[2], chunk[3]].map(|c| SEXTETS[c as usize]);
        strays |= a | b | c | d;
        let n = (a as u32) << 18 | (b as u32) << 12 | (c as u32) << 6 | d as u32;
        bytes.copy_from_slice(&n.to_be_bytes()[1..]);
    }
    if strays & 0xc0 != 0 {
        return None;
    }
    if !tail.is_empty() {
        let mut n = 0u32;
        for (i, &c) in tail.iter().enumerate() {
            n |= sextet(c)? << (18 - 6 * i);
        }
        let len = tail.len() - 1;
        // The bits below the last whole byte must be zero.
        let spare = match len {
            2 => n & 0xff,
            1 => n & 0xffff,
            _ => return None,
        };
        if spare != 0 {
            return None;
        }
        out[whole.len() / 4 * 3..].copy_from_slice(&n.to_be_bytes()[1..1 + len]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_length_class() {
        let one: [u8; 1] = [0xfb];
        assert_eq!(decode_exact::<1>(encode(&one).as_bytes()), Some(one));
        let two: [u8; 2] = [0xfb, 0xff];
        assert_eq!(decode_exact::<2>(encode(&two).as_bytes()), Some(two));
        let three: [u8; 3] = [1, 2, 3];
        assert_eq!(encode(&three), "AQID");
        assert_eq!(decode_exact::<3>(b"AQID"), Some(three));
        let long: [u8; 32] = std::array::from_fn(|i| (i * 37) as u8);
        assert_eq!(decode_exact::<32>(encode(&long).as_bytes()), Some(long));
    }

    fn round_trip<const N: usize>() {
        let bytes: [u8; N] = std::array::from_fn(|i| (i * 151 + N) as u8);
        assert_eq!(
            decode_exact::<N>(encode(&bytes).as_bytes()),
            Some(bytes),
            "{N} bytes"
        );
    }

    #[test]
    fn round_trips_across_groups_of_eight_groups_of_four_and_tails() {
        round_trip::<4>();
        round_trip::<5>();
        round_trip::<6>();
        round_trip::<7>();
        round_trip::<8>();
        round_trip::<9>();
        round_trip::<11>();
        round_trip::<12>();
        round_trip::<13>();
        round_trip::<33>();
        round_trip::<71>();
        round_trip::<72>();
        round_trip::<74>();
    }

    #[test]
    fn refuses_other_spellings_lengths_and_characters() {
        assert_eq!(encode(&[0xff]), "_w");
        assert_eq!(decode_exact::<1>(b"_x"), None, "non-zero trailing bits");
        assert_eq!(decode_exact::<1>(b"_w="), None, "padding");
        assert_eq!(decode_exact::<3>(b"AQI+"), None, "standard alphabet");
        assert_eq!(decode_exact::<3>(b"AQI"), None, "short");
        assert_eq!(decode_exact::<2>(b"\xff\xfe\xfd"), None, "non-ASCII");
    }

    #[test]
    fn a_stray_character_anywhere_is_refused() {
        let bytes: [u8; 73] = std::array::from_fn(|i| (i * 41) as u8);
        let text = encode(&bytes).into_bytes();
        assert_eq!(decode_exact::<73>(&text), Some(bytes));
        for at in 0..text.len() {
            for stray in [b'=', b'+', b'/', b'.', 0, 0x80, 0xff] {
                let mut bad = text.clone();
                bad[at] = stray;
                assert_eq!(decode_exact::<73>(&bad), None, "{stray} at {at}");
            }
        }
    }
}
