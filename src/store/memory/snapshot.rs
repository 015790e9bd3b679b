//! The memory store's snapshot file: its format, and writing it so that a crash at any point
//! leaves either the old file or the new one, whole.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::entry::Entry;
use super::{lock, MemoryStore};
use crate::error::{StoreError, StoreErrorKind};
use crate::id::StoreKey;

const MAGIC: &[u8; 8] = b"RSSNAP\x00\x02";
/// The first format's, still read.
const FIRST_MAGIC: &[u8; 8] = b"RSSNAP\x00\x01";

/// The sessions of the snapshot at `path`, if there is one. A leftover temporary file (from a
/// crash while writing) is removed. A snapshot that does not read back whole is never
/// overwritten: it is renamed to `<file>.corrupt-<unix time>`, an error is logged, and no
/// sessions are returned.
pub(super) fn load(path: &Path) -> Result<Vec<(StoreKey, Entry)>, StoreError> {
    let tmp = temp_path(path);
    match std::fs::remove_file(&tmp) {
        Ok(()) => rocket::warn!(
            "session store: removed {}, left by an interrupted snapshot",
            tmp.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("remove", &tmp, e)),
    }
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error("read", path, e)),
    };
    match decode(&bytes) {
        Ok(entries) => {
            rocket::info!(
                "session store: loaded {} sessions from {}",
                entries.len(),
                path.display()
            );
            Ok(entries)
        }
        Err(reason) => {
            let now = crate::clock::Clock::now(&crate::clock::SystemClock);
            let aside = PathBuf::from(format!("{}.corrupt-{now}", path.display()));
            std::fs::rename(path, &aside).map_err(|e| io_error("rename", path, e))?;
            rocket::error!(
                "session store: {} is not a valid snapshot ({reason}); kept it as {} and \
                 started with no sessions",
                path.display(),
                aside.display()
            );
            Ok(Vec::new())
        }
    }
}

pub(super) fn temp_path(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.tmp", path.display()))
}

pub(super) fn io_error(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::new(
        StoreErrorKind::Io,
        format!("cannot {what} {}", path.display()),
    )
    .with_source(e)
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one.
pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = temp_path(path);
    let dir = folder_of(path);
    std::fs::create_dir_all(&dir).map_err(|e| io_error("create", &dir, e))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&tmp)
        .map_err(|e| io_error("create", &tmp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error("write", &tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| io_error("rename", &tmp, e))?;
    #[cfg(unix)]
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("sync", &dir, e))?;
    Ok(())
}

/// The snapshot format: `MAGIC`, a u64 count, then per session its 32-byte key, `created`,
/// `active` and `expires` (u64 each), a u32 count of keys and per key a u32-length-prefixed name and value;
/// last, the SHA-256 of everything before it. Integers are big-endian. Also returns the
/// store's generation as of what was encoded, and how many sessions it holds.
pub(super) fn encode(store: &MemoryStore) -> (Vec<u8>, u64, u64) {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&0u64.to_be_bytes());
    let mut count = 0u64;
    let mut generation = 0u64;
    for shard in store.shards.iter() {
        // Encode under the shard's lock: it is one pass of memcpy, shorter than a clone would be.
        let shard = lock(shard);
        generation = generation.wrapping_add(shard.changes);
        for (key, e) in shard.iter() {
            count += 1;
            out.extend_from_slice(&key.0);
            out.extend_from_slice(&e.created.to_be_bytes());
            out.extend_from_slice(&e.active.to_be_bytes());
            out.extend_from_slice(&e.expires.to_be_bytes());
            // The entry's data is already in the snapshot's layout.
            out.extend_from_slice(&e.data);
        }
    }
    out[8..16].copy_from_slice(&count.to_be_bytes());
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    (out, generation, count)
}

/// Whether a snapshot can be written at `path`: a file is made beside it and removed, so that a
/// folder that cannot take one stops the launch instead of the first snapshot, or the last.
pub(super) fn check_writable(path: &Path) -> Result<(), StoreError> {
    let dir = folder_of(path);
    std::fs::create_dir_all(&dir).map_err(|e| io_error("create", &dir, e))?;
    let probe = PathBuf::from(format!("{}.probe-{}", path.display(), std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| io_error("write a snapshot beside", path, e))?;
    std::fs::remove_file(&probe).map_err(|e| io_error("remove", &probe, e))
}

/// The folder a snapshot at `path` is written in.
fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Whether `bytes` decode as a snapshot (for the fuzz target).
pub(crate) fn decodes(bytes: &[u8]) -> bool {
    decode(bytes).is_ok()
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

pub(super) fn decode(bytes: &[u8]) -> Result<Vec<(StoreKey, Entry)>, String> {
    // The first format had no activity times (`decode` gives 0 for them).
    let with_active = match bytes.get(..MAGIC.len()) {
        Some(magic) if magic == MAGIC => true,
        Some(magic) if magic == FIRST_MAGIC => false,
        _ => return Err("not a session snapshot".into()),
    };
    if bytes.len() < MAGIC.len() + 8 + 32 {
        return Err("not a session snapshot".into());
    }
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != digest {
        return Err("checksum mismatch".into());
    }
    let mut r = Reader(&body[MAGIC.len()..]);
    let count = r.u64()?;
    // Every session takes at least 52 bytes: a count beyond that is a lie.
    if count > (r.0.len() / 52) as u64 {
        return Err("session count exceeds the file".into());
    }
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let key = StoreKey(r.take(32)?.try_into().expect("32 bytes"));
        let created = r.u64()?;
        let active = if with_active { r.u64()? } else { 0 };
        let expires = r.u64()?;
        let start = r.0;
        let n = r.u32()?;
        for _ in 0..n {
            let len = r.u32()? as usize;
            std::str::from_utf8(r.take(len)?).map_err(|_| "a key is not UTF-8")?;
            let len = r.u32()? as usize;
            r.take(len)?;
        }
        let data = start[..start.len() - r.0.len()].into();
        entries.push((
            key,
            Entry {
                created,
                active,
                expires,
                data,
            },
        ));
    }
    if !r.0.is_empty() {
        return Err("trailing bytes".into());
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::super::entry::pairs;
    use super::super::tests::store_with_two_sessions;
    use super::*;
    use crate::store::{ChangeSet, SessionStore};

    #[test]
    fn a_snapshot_decodes_to_what_was_encoded() {
        let store = store_with_two_sessions();
        let mut entries = decode(&encode(&store).0).unwrap();
        entries.sort_by_key(|(k, _)| *k);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].0, StoreKey([1; 32]));
        assert_eq!((entries[0].1.created, entries[0].1.expires), (5, 110));
        let mut data: Vec<_> = pairs(&entries[0].1.data).collect();
        data.sort();
        assert_eq!(
            data,
            [(&b"a"[..], &[1, 2, 3][..]), ("é".as_bytes(), &[][..])]
        );
        assert_eq!(pairs(&entries[1].1.data).count(), 0);
    }

    /// The bytes of a snapshot holding one session (key `[1; 32]`, created at 5, last active at
    /// 10, expiring at 110, keys `a` and `é`), written out by hand from `encode`'s
    /// documentation; `version` 1 has no activity time.
    fn by_hand(version: u8) -> Vec<u8> {
        let mut expected = b"RSSNAP\x00".to_vec();
        expected.push(version);
        expected.extend_from_slice(&1u64.to_be_bytes());
        expected.extend_from_slice(&[1; 32]);
        expected.extend_from_slice(&5u64.to_be_bytes()); // created
        if version > 1 {
            expected.extend_from_slice(&10u64.to_be_bytes()); // active
        }
        expected.extend_from_slice(&110u64.to_be_bytes()); // expires: 10 + ttl
        expected.extend_from_slice(&2u32.to_be_bytes()); // keys, in the change set's order
        expected.extend_from_slice(&[0, 0, 0, 1, b'a', 0, 0, 0, 3, 1, 2, 3]);
        expected.extend_from_slice(&[0, 0, 0, 2, 0xc3, 0xa9, 0, 0, 0, 0]);
        let digest = Sha256::digest(&expected);
        expected.extend_from_slice(&digest);
        expected
    }

    #[test]
    fn the_snapshot_format_is_the_documented_one_byte_for_byte() {
        // So that a change of the in-memory layout cannot change the file.
        let store = MemoryStore::new(100);
        let mut changes = ChangeSet::new();
        changes.set("a", vec![1, 2, 3]);
        changes.set("é", vec![]);
        let runtime = rocket::tokio::runtime::Runtime::new().unwrap();
        assert!(runtime
            .block_on(store.create(&StoreKey([1; 32]), 5, &changes, 10))
            .unwrap());
        assert_eq!(encode(&store).0, by_hand(2));
        // Snapshots of the first format load too, without activity times (0).
        for (version, active) in [(2, 10), (1, 0)] {
            let entries = decode(&by_hand(version)).unwrap();
            assert_eq!(entries.len(), 1);
            let (key, entry) = &entries[0];
            assert_eq!(
                (*key, entry.created, entry.active, entry.expires),
                (StoreKey([1; 32]), 5, active, 110)
            );
            let data: Vec<_> = pairs(&entry.data).collect();
            assert_eq!(
                data,
                [(&b"a"[..], &[1, 2, 3][..]), ("é".as_bytes(), &[][..])]
            );
        }
    }

    #[test]
    fn every_truncation_and_flipped_byte_of_a_snapshot_is_refused() {
        let (bytes, _, _) = encode(&store_with_two_sessions());
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "length {len}");
        }
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_err(), "byte {i}");
        }
    }
}
