//! Session values as stores keep them: MessagePack bytes, encoded on the way in and decoded on
//! the way out, no I/O.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::SessionError;

/// A value's MessagePack bytes, written on the stack while they fit (numbers, flags, short
/// strings), so setting a key allocates only when its stored value has to grow.
pub(crate) struct Encoded {
    inline: [u8; 64],
    len: usize,
    /// All the bytes, once they no longer fit `inline`.
    spilled: Vec<u8>,
}

impl Encoded {
    pub fn new<T: Serialize>(value: &T) -> Result<Encoded, SessionError> {
        let mut out = Encoded {
            inline: [0; 64],
            len: 0,
            spilled: Vec::new(),
        };
        rmp_serde::encode::write_named(&mut out, value)
            .map_err(|e| SessionError::Encode(e.to_string()))?;
        Ok(out)
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self.spilled.is_empty() {
            true => &self.inline[..self.len],
            false => &self.spilled,
        }
    }
}

impl std::io::Write for Encoded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.spilled.is_empty() {
            if let Some(room) = self.inline.get_mut(self.len..self.len + buf.len()) {
                room.copy_from_slice(buf);
                self.len += buf.len();
                return Ok(buf.len());
            }
            self.spilled.reserve(self.len + buf.len());
            self.spilled.extend_from_slice(&self.inline[..self.len]);
        }
        self.spilled.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The value stored under `key`, decoded as a `T`; a value that does not decode is an error
/// for this key alone, and is logged (without the session id).
pub(crate) fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, SessionError> {
    rmp_serde::from_slice(bytes).map_err(|e| {
        rocket::warn!("session: the stored value of `{key}` does not decode: {e}");
        SessionError::Decode {
            key: key.to_string(),
            reason: e.to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_encode_the_same_on_the_stack_and_spilled_to_the_heap() {
        for len in [0, 1, 50, 61, 62, 63, 64, 65, 200, 5000] {
            let value = "x".repeat(len);
            let encoded = Encoded::new(&value).unwrap();
            assert_eq!(
                encoded.as_bytes(),
                rmp_serde::to_vec_named(&value).unwrap(),
                "{len} characters"
            );
            assert_eq!(encoded.spilled.is_empty(), encoded.as_bytes().len() <= 64);
        }
        let nested = vec![vec![u64::MAX; 7]; 3];
        assert_eq!(
            Encoded::new(&nested).unwrap().as_bytes(),
            rmp_serde::to_vec_named(&nested).unwrap()
        );
    }
}
