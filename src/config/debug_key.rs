//! The debug profile's secret key, kept in a file so that sessions survive restarts.

use std::path::{Path, PathBuf};

use super::values::check_key;

/// The debug profile's key: read from `path`, or generated there with mode 0600.
///
/// Instances starting together agree on one key: the file appears whole or not at all (a
/// hard link of a finished temporary file), and whoever loses the race reads the winner's.
pub(super) fn debug_key(path: &Path) -> Result<Vec<u8>, String> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let key = String::from_utf8(bytes)
                .map_err(|_| format!("{} is not a text key", path.display()))?;
            let key = key.trim();
            check_key(key).map_err(|r| format!("key in {}: {r}", path.display()))?;
            Ok(key.as_bytes().to_vec())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = crate::id::random_hex(32).map_err(|e| e.to_string())?;
            match publish_private(path, key.as_bytes()) {
                Ok(()) => {
                    rocket::warn!(
                        "session: no `secret_key` configured; generated one for the debug \
                         profile in {}. Set `secret_key` for any other profile.",
                        path.display()
                    );
                    Ok(key.into_bytes())
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => debug_key(path),
                Err(e) => Err(format!("cannot write {}: {e}", path.display())),
            }
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Creates `path` holding `bytes`, mode 0600, all at once; `AlreadyExists` if it exists.
fn publish_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = PathBuf::from(format!(
        "{}.{}-{}.tmp",
        path.display(),
        std::process::id(),
        crate::id::random_hex(8).map_err(std::io::Error::other)?
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&tmp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    let published = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    published
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_starting_together_agree_on_one_debug_key() {
        let dir = std::env::temp_dir().join(format!("rss-key-race-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("key");
        let keys: Vec<Vec<u8>> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..8).map(|_| s.spawn(|| debug_key(&path))).collect();
            threads
                .into_iter()
                .map(|t| t.join().unwrap().unwrap())
                .collect()
        });
        assert!(keys.iter().all(|k| k == &keys[0]), "{keys:?}");
        let leftovers = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary files left");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
