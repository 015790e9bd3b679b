//! The conformance suite's store-level behaviours: each calls the store's methods directly.

use std::sync::Arc;

use super::{key, START, TTL};
use crate::store::{ChangeSet, SessionRecord, SessionStore, SessionSummary};

fn changes(pairs: &[(&str, Option<&[u8]>)]) -> ChangeSet {
    let mut c = ChangeSet::new();
    for (k, v) in pairs {
        match v {
            Some(v) => c.set(*k, v.to_vec()),
            None => c.remove(*k),
        }
    }
    c
}

fn sorted(record: Option<SessionRecord>) -> Option<SessionRecord> {
    record.map(|mut r| {
        r.data.sort();
        r
    })
}

/// Create then load returns data and creation time.
pub async fn create_then_load_returns_data_and_creation_time(
    store: Arc<impl SessionStore + ?Sized>,
) {
    let c = changes(&[("a", Some(b"1")), ("b", Some(b"\x00\xff"))]);
    assert!(store.create(&key(1), START - 5, &c, START).await.unwrap());
    let loaded = sorted(store.load(&key(1), START).await.unwrap());
    assert_eq!(
        loaded,
        Some(SessionRecord {
            created: START - 5,
            expires: START + TTL,
            data: vec![
                ("a".into(), b"1".to_vec()),
                ("b".into(), b"\x00\xff".to_vec())
            ],
        })
    );
    assert_eq!(store.load(&key(2), START).await.unwrap(), None);
}

/// Create refuses a key with a live session.
pub async fn create_refuses_a_key_with_a_live_session(store: Arc<impl SessionStore + ?Sized>) {
    let first = changes(&[("who", Some(b"first"))]);
    let second = changes(&[("who", Some(b"second"))]);
    assert!(store.create(&key(1), START, &first, START).await.unwrap());
    assert!(!store.create(&key(1), START, &second, START).await.unwrap());
    let loaded = store.load(&key(1), START).await.unwrap().unwrap();
    assert_eq!(loaded.data, vec![("who".into(), b"first".to_vec())]);
}

/// Update applies per key changes and keeps other keys.
pub async fn update_applies_per_key_changes_and_keeps_other_keys(
    store: Arc<impl SessionStore + ?Sized>,
) {
    let c = changes(&[("a", Some(b"1")), ("b", Some(b"2")), ("c", Some(b"3"))]);
    assert!(store.create(&key(1), START, &c, START).await.unwrap());
    // `a` gets a longer value, `c` one of the same length, `b` goes, `d` comes.
    let c = changes(&[
        ("a", Some(b"one")),
        ("b", None),
        ("c", Some(b"9")),
        ("d", Some(b"4")),
        ("zz", None),
    ]);
    assert!(store.update(&key(1), &c, START + 1).await.unwrap());
    let loaded = sorted(store.load(&key(1), START + 1).await.unwrap()).unwrap();
    assert_eq!(
        loaded.data,
        vec![
            ("a".into(), b"one".to_vec()),
            ("c".into(), b"9".to_vec()),
            ("d".into(), b"4".to_vec())
        ]
    );
    let c = changes(&[("a", Some(b"two")), ("c", Some(b""))]);
    assert!(store.update(&key(1), &c, START + 2).await.unwrap());
    let loaded = sorted(store.load(&key(1), START + 2).await.unwrap()).unwrap();
    assert_eq!(
        loaded.data,
        vec![
            ("a".into(), b"two".to_vec()),
            ("c".into(), b"".to_vec()),
            ("d".into(), b"4".to_vec())
        ]
    );
}

/// Update of a missing session changes nothing.
pub async fn update_of_a_missing_session_changes_nothing(store: Arc<impl SessionStore + ?Sized>) {
    let c = changes(&[("a", Some(b"1"))]);
    assert!(!store.update(&key(1), &c, START).await.unwrap());
    assert_eq!(store.load(&key(1), START).await.unwrap(), None);
}

/// Sessions expire ttl after their last write.
pub async fn sessions_expire_ttl_after_their_last_write(store: Arc<impl SessionStore + ?Sized>) {
    let c = changes(&[("a", Some(b"1"))]);
    assert!(store.create(&key(1), START, &c, START).await.unwrap());
    assert!(store
        .load(&key(1), START + TTL - 1)
        .await
        .unwrap()
        .is_some());
    assert_eq!(store.load(&key(1), START + TTL).await.unwrap(), None);
    assert!(!store.update(&key(1), &c, START + TTL).await.unwrap());
    // An expired session's key may be reused by a new session.
    assert!(store
        .create(&key(1), START + TTL, &c, START + TTL)
        .await
        .unwrap());
}

/// Update extends the expiry.
pub async fn update_extends_the_expiry(store: Arc<impl SessionStore + ?Sized>) {
    let c = changes(&[("a", Some(b"1"))]);
    assert!(store.create(&key(1), START, &c, START).await.unwrap());
    assert!(store
        .update(&key(1), &ChangeSet::new(), START + 60)
        .await
        .unwrap());
    assert!(store
        .load(&key(1), START + 60 + TTL - 1)
        .await
        .unwrap()
        .is_some());
    assert_eq!(store.load(&key(1), START + 60 + TTL).await.unwrap(), None);
}

/// Cycle moves the session and keeps its creation time.
pub async fn cycle_moves_the_session_and_keeps_its_creation_time(
    store: Arc<impl SessionStore + ?Sized>,
) {
    let c = changes(&[("a", Some(b"1")), ("b", Some(b"2"))]);
    assert!(store.create(&key(1), START - 9, &c, START).await.unwrap());
    let c = changes(&[("b", None), ("user", Some(b"ada"))]);
    assert!(store.cycle(&key(1), &key(2), &c, START + 1).await.unwrap());
    assert_eq!(store.load(&key(1), START + 1).await.unwrap(), None);
    let moved = sorted(store.load(&key(2), START + 1).await.unwrap()).unwrap();
    assert_eq!(moved.created, START - 9);
    assert_eq!(
        moved.data,
        vec![
            ("a".into(), b"1".to_vec()),
            ("user".into(), b"ada".to_vec())
        ]
    );
}

/// Cycle refuses a missing session or a taken id.
pub async fn cycle_refuses_a_missing_session_or_a_taken_id(store: Arc<impl SessionStore + ?Sized>) {
    let c = changes(&[("a", Some(b"1"))]);
    assert!(!store.cycle(&key(1), &key(2), &c, START).await.unwrap());
    assert_eq!(store.load(&key(2), START).await.unwrap(), None);
    assert!(store.create(&key(1), START, &c, START).await.unwrap());
    assert!(store.create(&key(2), START, &c, START).await.unwrap());
    assert!(!store
        .cycle(&key(1), &key(2), &ChangeSet::new(), START)
        .await
        .unwrap());
    assert!(store.load(&key(1), START).await.unwrap().is_some());
}

/// Destroy deletes the session.
pub async fn destroy_deletes_the_session(store: Arc<impl SessionStore + ?Sized>) {
    let c = changes(&[("a", Some(b"1"))]);
    assert!(store.create(&key(1), START, &c, START).await.unwrap());
    store.destroy(&key(1)).await.unwrap();
    assert_eq!(store.load(&key(1), START).await.unwrap(), None);
    store.destroy(&key(1)).await.unwrap();
}

/// Destroy where deletes exactly the matching sessions.
pub async fn destroy_where_deletes_exactly_the_matching_sessions(
    store: Arc<impl SessionStore + ?Sized>,
) {
    let user = |id: &[u8]| changes(&[("user_id", Some(id)), ("theme", Some(b"dark"))]);
    assert!(store
        .create(&key(1), START, &user(b"42"), START)
        .await
        .unwrap());
    assert!(store
        .create(&key(2), START, &user(b"42"), START)
        .await
        .unwrap());
    assert!(store
        .create(&key(3), START, &user(b"7"), START)
        .await
        .unwrap());
    let other = changes(&[("other", Some(b"42"))]);
    assert!(store.create(&key(4), START, &other, START).await.unwrap());
    assert_eq!(store.destroy_where("user_id", b"42").await.unwrap(), 2);
    assert_eq!(store.load(&key(1), START).await.unwrap(), None);
    assert_eq!(store.load(&key(2), START).await.unwrap(), None);
    assert!(store.load(&key(3), START).await.unwrap().is_some());
    assert!(store.load(&key(4), START).await.unwrap().is_some());
}

/// Sweep deletes only expired sessions.
pub async fn sweep_deletes_only_expired_sessions(store: Arc<impl SessionStore + ?Sized>) {
    let c = changes(&[("a", Some(b"1"))]);
    assert!(store.create(&key(1), START, &c, START).await.unwrap());
    assert!(store.create(&key(2), START, &c, START + 50).await.unwrap());
    assert_eq!(store.sweep(START + TTL).await.unwrap(), 1);
    assert_eq!(store.sweep(START + TTL).await.unwrap(), 0);
    // Swept means gone for good, even for a clock that goes back.
    assert_eq!(store.load(&key(1), START).await.unwrap(), None);
    assert!(store.load(&key(2), START + TTL).await.unwrap().is_some());
}

/// A session of its own ttl expires that long after its last write.
pub async fn a_session_of_its_own_ttl_expires_that_long_after_its_last_write(
    store: Arc<impl SessionStore + ?Sized>,
) {
    let live = |key, at| {
        let store = store.clone();
        async move { store.load(&key, at).await.unwrap().is_some() }
    };
    let mut c = changes(&[("a", Some(b"1"))]);
    c.set_ttl(Some(5 * TTL));
    assert!(store.create(&key(1), START, &c, START).await.unwrap());
    assert!(
        live(key(1), START + 5 * TTL - 1).await,
        "past the store's ttl"
    );
    // Each write gives the expiry it carries: shorter, then the store's again.
    let mut shorter = ChangeSet::new();
    shorter.set_ttl(Some(TTL / 2));
    assert!(store.update(&key(1), &shorter, START + 10).await.unwrap());
    assert!(live(key(1), START + 10 + TTL / 2 - 1).await);
    assert!(!live(key(1), START + 10 + TTL / 2).await);
    assert!(store
        .update(&key(1), &ChangeSet::new(), START + 20)
        .await
        .unwrap());
    assert!(live(key(1), START + 20 + TTL - 1).await);
    assert!(!live(key(1), START + 20 + TTL).await);
    // A cycle too.
    let mut longer = ChangeSet::new();
    longer.set_ttl(Some(3 * TTL));
    assert!(store
        .cycle(&key(1), &key(2), &longer, START + 30)
        .await
        .unwrap());
    assert!(live(key(2), START + 30 + 3 * TTL - 1).await);
    assert!(!live(key(2), START + 30 + 3 * TTL).await);
}

/// List where lists exactly the live matching sessions, with their times.
pub async fn list_where_lists_exactly_the_live_matching_sessions(
    store: Arc<impl SessionStore + ?Sized>,
) {
    let user = |id: &[u8]| changes(&[("user_id", Some(id)), ("theme", Some(b"dark"))]);
    let listed = |at| {
        let store = store.clone();
        async move {
            let mut found = store.list_where("user_id", b"42", at).await.unwrap();
            found.sort_by_key(|s| s.key);
            found
        }
    };
    let summary = |key, created, active, expires| SessionSummary {
        key,
        created,
        active,
        expires,
    };
    assert!(store
        .create(&key(1), START, &user(b"42"), START)
        .await
        .unwrap());
    let mut long = user(b"42");
    long.set_ttl(Some(5 * TTL));
    assert!(store
        .create(&key(2), START + 5, &long, START + 5)
        .await
        .unwrap());
    assert!(store
        .create(&key(3), START, &user(b"7"), START)
        .await
        .unwrap());
    let other = changes(&[("other", Some(b"42"))]);
    assert!(store.create(&key(4), START, &other, START).await.unwrap());
    // Expired by the time of listing.
    let early = START + 20 - TTL;
    assert!(store
        .create(&key(5), early, &user(b"42"), early)
        .await
        .unwrap());
    assert!(store
        .update(&key(1), &ChangeSet::new(), START + 20)
        .await
        .unwrap());
    let mut expected = vec![
        summary(key(1), START, START + 20, START + 20 + TTL),
        summary(key(2), START + 5, START + 5, START + 5 + 5 * TTL),
    ];
    expected.sort_by_key(|s| s.key);
    assert_eq!(listed(START + 20).await, expected);
    // A cycled session is listed under its new key; a destroyed one no more.
    let mut keep = ChangeSet::new();
    keep.set_ttl(Some(5 * TTL));
    assert!(store
        .cycle(&key(2), &key(6), &keep, START + 30)
        .await
        .unwrap());
    store.destroy(&key(1)).await.unwrap();
    assert_eq!(
        listed(START + 30).await,
        [summary(key(6), START + 5, START + 30, START + 30 + 5 * TTL)]
    );
    assert_eq!(
        store.list_where("user_id", b"4", START + 30).await.unwrap(),
        []
    );
}
