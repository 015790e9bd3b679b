//! The memory store: the conformance suite, then its snapshot file.

#[macro_use]
mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use rocket::local::asynchronous::Client;
use rocket::serde::json::json;
use rocket_server_sessions::store::{MemoryStore, SessionStore};
use rocket_server_sessions::store_conformance;
use rocket_server_sessions::testing::{key, TTL};
use rocket_server_sessions::{ManualClock, SessionId, SessionManager};

/// By its type, so the app calls it directly, as it does the memory store it builds itself.
async fn memory() -> Arc<MemoryStore> {
    Arc::new(MemoryStore::new(TTL))
}

store_conformance!(memory);

/// A client whose memory store keeps its snapshot in `file`.
async fn client_on(file: &Path, extra: rocket::serde::json::Value) -> Client {
    let mut session = json!({ "store": { "kind": "memory", "file_path": file } });
    if let (Some(s), Some(e)) = (session.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            if k == "store" {
                for (sk, sv) in v.as_object().unwrap() {
                    s["store"][sk] = sv.clone();
                }
            } else {
                s.insert(k.clone(), v.clone());
            }
        }
    }
    let clock = ManualClock::new(START);
    Client::untracked(app(figment(session), &clock))
        .await
        .expect("launches")
}

/// A snapshot location where no file can be made (here, under a regular file: permissions
/// would not stop root) stops the launch, naming the path, instead of failing at shutdown.
#[rocket::async_test]
async fn a_snapshot_location_that_cannot_take_a_file_stops_the_launch_naming_it() {
    let dir = TempDir::new("unwritable");
    std::fs::write(dir.path("a-file"), b"").unwrap();
    let file = dir.path("a-file").join("sessions.snapshot");
    let config = rocket_server_sessions::config::MemoryStoreConfig {
        ttl: TTL,
        file_path: Some(file.clone()),
        snapshot_interval: 0,
        sweep_interval: 60,
    };
    let error = MemoryStore::open(&config).err().expect("refused");
    assert!(
        error
            .to_string()
            .contains(&*dir.path("a-file").to_string_lossy()),
        "{error}"
    );
    let session = json!({ "store": { "kind": "memory", "file_path": file } });
    let refused = launch_error(app(figment(session), &ManualClock::new(START))).await;
    assert!(matches!(
        refused.kind(),
        rocket::error::ErrorKind::FailedFairings(_)
    ));
}

/// A final snapshot that cannot be written (its folder replaced by a file after launch) is
/// reported: at error level in the log, and to `main` through the manager, with how many
/// sessions were lost.
#[rocket::async_test]
async fn a_final_snapshot_that_cannot_be_written_is_reported_to_main() {
    let dir = TempDir::new("lost");
    let folder = dir.path("snapshots");
    let client = client_on(&folder.join("sessions.snapshot"), json!({})).await;
    post_with(&client, "/set/cart/socks", None).await;
    std::fs::remove_dir_all(&folder).unwrap();
    std::fs::write(&folder, b"now a file").unwrap();
    let rocket = client.terminate().await;
    let manager = rocket.state::<SessionManager>().unwrap();
    let failure = manager.shutdown_failure().expect("reported");
    assert_eq!(failure.kind(), rocket_server_sessions::StoreErrorKind::Io);
    assert!(failure.to_string().contains("(1 sessions)"), "{failure}");
}

#[rocket::async_test]
async fn sessions_survive_a_restart_through_the_snapshot() {
    let dir = TempDir::new("restart");
    let file = dir.path("sessions.snapshot");
    let first = client_on(&file, json!({})).await;
    let cookie = get_with(&first, "/count", None).await.cookie.unwrap();
    get_with(&first, "/count", Some(&cookie)).await;
    let stopped = first.terminate().await;
    assert!(file.exists(), "written at shutdown");
    let manager = stopped.state::<SessionManager>().unwrap();
    assert!(manager.shutdown_failure().is_none());

    let second = client_on(&file, json!({})).await;
    assert_eq!(get_with(&second, "/count", Some(&cookie)).await.body, "3");
}

#[rocket::async_test]
async fn the_snapshot_holds_no_session_id() {
    let dir = TempDir::new("no-id");
    let file = dir.path("sessions.snapshot");
    let client = client_on(&file, json!({})).await;
    let cookie = post_with(&client, "/set/a/1", None).await.cookie.unwrap();
    let id: SessionId = id_of(&client, &cookie).await;
    client.terminate().await;
    let bytes = std::fs::read(&file).unwrap();
    assert!(!bytes.windows(32).any(|w| w == id.as_bytes()));
    let text = id.to_string();
    assert!(!bytes.windows(text.len()).any(|w| w == text.as_bytes()));
    assert!(
        bytes.windows(32).any(|w| w == id.store_key().0),
        "filed by digest"
    );
}

#[rocket::async_test]
async fn the_snapshot_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("mode");
    let file = dir.path("sessions.snapshot");
    let client = client_on(&file, json!({})).await;
    post_with(&client, "/set/a/1", None).await;
    client.terminate().await;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[rocket::async_test]
async fn a_leftover_temporary_file_is_discarded_and_the_snapshot_loads() {
    let dir = TempDir::new("leftover");
    let file = dir.path("sessions.snapshot");
    let first = client_on(&file, json!({})).await;
    let cookie = post_with(&first, "/set/a/kept", None).await.cookie.unwrap();
    first.terminate().await;
    // A crash in the middle of the next snapshot leaves a partial temporary file.
    let tmp = dir.path("sessions.snapshot.tmp");
    std::fs::write(&tmp, b"RSSNAP\x00\x01 half a snapsh").unwrap();

    let second = client_on(&file, json!({})).await;
    assert_eq!(
        get_with(&second, "/get/a", Some(&cookie)).await.body,
        "kept"
    );
    assert!(!tmp.exists());
}

#[rocket::async_test]
async fn a_corrupt_snapshot_is_kept_aside_and_never_overwritten() {
    let dir = TempDir::new("corrupt");
    let file = dir.path("sessions.snapshot");
    let first = client_on(&file, json!({})).await;
    let cookie = post_with(&first, "/set/a/1", None).await.cookie.unwrap();
    first.terminate().await;
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();

    let second = client_on(&file, json!({})).await;
    assert_eq!(
        get_with(&second, "/untouched", Some(&cookie)).await.body,
        "true"
    );
    post_with(&second, "/set/b/2", None).await;
    second.terminate().await;

    let aside: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read(&aside[0]).unwrap(),
        bytes,
        "kept byte for byte"
    );
    assert!(file.exists(), "a new snapshot is written beside it");
}

#[rocket::async_test]
async fn snapshots_are_also_written_periodically() {
    let dir = TempDir::new("periodic");
    let file = dir.path("sessions.snapshot");
    let client = client_on(&file, json!({ "store": { "snapshot_interval": 1 } })).await;
    post_with(&client, "/set/a/1", None).await;
    // The interval runs on the real clock: wait for the file, up to a generous bound.
    eventually_within(
        "a periodic snapshot",
        std::time::Duration::from_secs(20),
        || async { file.exists() },
    )
    .await;
    let loaded = open_snapshot(&file);
    assert_eq!(loaded.len(), 1);
    drop(client);
}

#[rocket::async_test]
async fn the_manager_sweeps_expired_sessions() {
    let store = Arc::new(MemoryStore::new(TTL));
    let (client, clock) = client_with(store.clone(), json!({})).await;
    post_with(&client, "/set/a/1", None).await;
    clock.advance(50);
    post_with(&client, "/set/a/2", None).await;
    assert_eq!(store.len(), 2);
    clock.advance(TTL - 50);
    let manager = client.rocket().state::<SessionManager>().unwrap();
    assert_eq!(manager.sweep().await.unwrap(), 1);
    assert_eq!(store.len(), 1);
}

#[rocket::async_test]
async fn a_snapshot_is_written_after_every_kind_of_change_and_only_then() {
    use rocket_server_sessions::store::ChangeSet;

    let dir = TempDir::new("snapshot-changes");
    let file = dir.path("sessions.snapshot");
    let store = open_snapshot(&file);
    let mut one = ChangeSet::new();
    one.set("user", vec![1]);
    assert!(
        !persisted_anew(&store, &file).await,
        "an empty, unchanged store is not written"
    );

    let now = START;
    assert!(store.create(&key(1), now, &one, now).await.unwrap());
    assert!(persisted_anew(&store, &file).await, "create");
    assert!(
        !persisted_anew(&store, &file).await,
        "nothing changed since"
    );

    let mut two = ChangeSet::new();
    two.set("user", vec![2]);
    assert!(store.update(&key(1), &two, now).await.unwrap());
    assert!(
        persisted_anew(&store, &file).await,
        "update in the same second"
    );
    assert!(store
        .update(&key(1), &ChangeSet::new(), now + 1)
        .await
        .unwrap());
    assert!(persisted_anew(&store, &file).await, "expiry extended");

    assert!(store
        .cycle(&key(1), &key(2), &ChangeSet::new(), now + 1)
        .await
        .unwrap());
    assert!(persisted_anew(&store, &file).await, "cycle");
    assert!(!store
        .cycle(&key(1), &key(3), &ChangeSet::new(), now + 1)
        .await
        .unwrap());
    assert!(
        !persisted_anew(&store, &file).await,
        "a refused cycle changes nothing"
    );

    assert!(store.create(&key(4), now, &one, now + 1).await.unwrap());
    persisted_anew(&store, &file).await;
    assert_eq!(store.destroy_where("user", &[1]).await.unwrap(), 1);
    assert!(persisted_anew(&store, &file).await, "destroy_where");
    assert_eq!(store.destroy_where("user", &[1]).await.unwrap(), 0);
    assert!(
        !persisted_anew(&store, &file).await,
        "destroy_where that matched nothing"
    );

    store.destroy(&key(2)).await.unwrap();
    assert!(persisted_anew(&store, &file).await, "destroy");
    store.destroy(&key(2)).await.unwrap();
    assert!(
        !persisted_anew(&store, &file).await,
        "destroy of a missing session"
    );

    assert!(store.create(&key(5), now, &one, now + 1).await.unwrap());
    persisted_anew(&store, &file).await;
    assert_eq!(store.sweep(now + 1 + 604_800).await.unwrap(), 1);
    assert!(persisted_anew(&store, &file).await, "sweep");
    assert_eq!(store.sweep(now + 1 + 604_800).await.unwrap(), 0);
    assert!(
        !persisted_anew(&store, &file).await,
        "a sweep that removed nothing"
    );
}

/// Removes `file`, persists `store` (whose snapshot `file` is) and says whether it was written.
async fn persisted_anew(store: &MemoryStore, file: &Path) -> bool {
    let _ = std::fs::remove_file(file);
    store.persist().await.unwrap();
    file.exists()
}
