//! One session as the memory store holds it: its times and its data in a single buffer, laid
//! out as the snapshot file holds it.

use crate::error::{StoreError, StoreErrorKind};
use crate::store::ChangeSet;

/// One session. Its data is one buffer laid out as the snapshot holds it (see
/// `snapshot::encode`): a u32 count of keys, then per key its name and its value, each
/// u32-length-prefixed. With the 32-byte key, a bucket is 72 bytes, and a load reads the
/// bucket and this one buffer; a vector of boxed names and values took three more cache lines
/// to read, and as many allocations, per session.
#[derive(Clone)]
pub(super) struct Entry {
    pub created: u64,
    /// The last write's time: the session's last activity.
    pub active: u64,
    pub expires: u64,
    pub data: Box<[u8]>,
}

/// The data of a session without keys.
pub(super) const NO_DATA: [u8; 4] = [0; 4];

/// The byte range of a u32-length-prefixed field of `data` starting at `at`, which moves past
/// it; `None` when `data` ends before the field does.
fn field(data: &[u8], at: &mut usize) -> Option<std::ops::Range<usize>> {
    let len = u32::from_be_bytes(data.get(*at..*at + 4)?.try_into().ok()?) as usize;
    let start = *at + 4;
    let end = start.checked_add(len).filter(|&end| end <= data.len())?;
    *at = end;
    Some(start..end)
}

/// The byte ranges of each name and its value in a session's data, in order.
fn spans(
    data: &[u8],
) -> impl Iterator<Item = (std::ops::Range<usize>, std::ops::Range<usize>)> + '_ {
    let mut at = NO_DATA.len();
    std::iter::from_fn(move || Some((field(data, &mut at)?, field(data, &mut at)?)))
}

/// Each name and its value in a session's data, in order.
pub(super) fn pairs(data: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
    spans(data).map(move |(name, value)| (&data[name], &data[value]))
}

/// `changes` as lengths of the entry layout can hold them: every name and value under 4 GiB.
pub(super) fn fits(changes: &ChangeSet) -> Result<(), StoreError> {
    let too_long = |bytes: usize| u32::try_from(bytes).is_err();
    match changes
        .iter()
        .find(|(k, v)| too_long(k.len()) || v.is_some_and(|v| too_long(v.len())))
    {
        Some((key, _)) => {
            // The name itself may be the long part: it is shown cut short.
            let shown: String = key.chars().take(64).collect();
            Err(StoreError::new(
                StoreErrorKind::TooLarge,
                format!("the memory store holds names and values under 4 GiB; `{shown}` is larger"),
            ))
        }
        None => Ok(()),
    }
}

/// `data` with `changes` applied (which [`fits`] has checked), in a buffer of its exact size.
fn rebuilt(data: &[u8], changes: &ChangeSet) -> Box<[u8]> {
    let kept = || pairs(data).filter(|(name, _)| !changes.touches(name));
    let set = || changes.iter().filter_map(|(k, v)| Some((k.as_bytes(), v?)));
    let size: usize = kept()
        .chain(set())
        .map(|(name, value)| 8 + name.len() + value.len())
        .sum();
    let mut out = Vec::with_capacity(NO_DATA.len() + size);
    out.extend_from_slice(&NO_DATA);
    let mut count = 0u32;
    for (name, value) in kept().chain(set()) {
        for part in [name, value] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
        // Reaching 2^32 keys would take a session of over 32 GiB.
        count = count.saturating_add(1);
    }
    out[..NO_DATA.len()].copy_from_slice(&count.to_be_bytes());
    out.into_boxed_slice()
}

impl Entry {
    pub fn new(created: u64, active: u64, expires: u64, changes: &ChangeSet) -> Entry {
        Entry {
            created,
            active,
            expires,
            data: rebuilt(&NO_DATA, changes),
        }
    }

    /// Where the value of `key` is in the data.
    fn value_of(&self, key: &str) -> Option<std::ops::Range<usize>> {
        spans(&self.data)
            .find(|(name, _)| &self.data[name.clone()] == key.as_bytes())
            .map(|(_, value)| value)
    }

    /// Applies `changes`, which [`fits`] has checked.
    pub fn apply(&mut self, changes: &ChangeSet) {
        // Values set to new ones of the same length (a counter, a flag) are written in place.
        // Anything else rebuilds the buffer, which takes every changed value from `changes`,
        // so values already written in place by then are written again, not lost.
        let mut rebuild = false;
        for (key, value) in changes.iter() {
            match (value, self.value_of(key)) {
                (Some(new), Some(old)) if new.len() == old.len() => {
                    self.data[old].copy_from_slice(new)
                }
                _ => rebuild = true,
            }
        }
        if rebuild {
            self.data = rebuilt(&self.data, changes);
        }
    }
}

/// A session's data as a load returns it: each name and its value, copied out of the entry.
pub(super) fn copy_out(data: &[u8]) -> Vec<(String, Vec<u8>)> {
    // Names are UTF-8: written from `&str`, or checked when a snapshot is read.
    pairs(data)
        .map(|(name, value)| {
            let name = std::str::from_utf8(name).unwrap_or_default();
            (name.to_string(), value.to_vec())
        })
        .collect()
}
