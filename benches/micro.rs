//! Micro benchmarks: cookie signing and verification, id generation, encoding a change set,
//! memory-store load and flush at small and large session counts.
//!
//! `cargo bench --bench micro` (add `-- --quick` for a short run).

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rocket::tokio::runtime::Runtime;
use rocket_server_sessions::bench::{encode, CookieSigner};
use rocket_server_sessions::store::{ChangeSet, MemoryStore, SessionStore};
use rocket_server_sessions::SessionId;

const NOW: u64 = 1_700_000_000;

fn cookie(c: &mut Criterion) {
    let signer = CookieSigner::new("session", &[0x42; 32], 604_800);
    let id = SessionId::generate();
    let value = signer.sign(&id, NOW);
    let mut tampered = value.clone().into_bytes();
    tampered[50] ^= 1;
    let mut group = c.benchmark_group("cookie");
    group.throughput(Throughput::Elements(1));
    group.bench_function("sign", |b| b.iter(|| signer.sign(&id, NOW)));
    group.bench_function("verify", |b| {
        b.iter(|| assert!(signer.verify(value.as_bytes(), NOW)))
    });
    group.bench_function("stated_issue", |b| {
        b.iter(|| assert_eq!(signer.stated_issue(value.as_bytes()), Some(NOW)))
    });
    group.bench_function("verify_tampered", |b| {
        b.iter(|| assert!(!signer.verify(&tampered, NOW)))
    });
    group.bench_function("verify_garbage", |b| {
        b.iter(|| assert!(!signer.verify(b"not a session cookie", NOW)))
    });
    group.finish();
}

fn id(c: &mut Criterion) {
    let mut group = c.benchmark_group("id");
    group.throughput(Throughput::Elements(1));
    group.bench_function("generate", |b| b.iter(SessionId::generate));
    group.bench_function("store_key", |b| {
        let id = SessionId::generate();
        b.iter(|| id.store_key())
    });
    group.finish();
}

#[derive(serde::Serialize)]
struct User {
    id: u64,
    name: String,
    roles: Vec<String>,
}

fn change_set(c: &mut Criterion) {
    let user = User {
        id: 42,
        name: "Ada Lovelace".into(),
        roles: vec!["admin".into(), "author".into()],
    };
    let bytes = encode(&user).len() + encode(&7u64).len() + encode(&"dark").len();
    let mut group = c.benchmark_group("change_set");
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("encode_three_keys", |b| {
        b.iter(|| {
            let mut changes = ChangeSet::new();
            changes.set("user", encode(&user));
            changes.set("count", encode(&7u64));
            changes.set("theme", encode(&"dark"));
            changes.remove("flash");
            changes
        })
    });
    group.finish();
}

fn filled(n: u32) -> (Arc<MemoryStore>, Vec<SessionId>) {
    let rt = Runtime::new().unwrap();
    let store = Arc::new(MemoryStore::new(604_800));
    let mut changes = ChangeSet::new();
    changes.set("count", encode(&1u64));
    changes.set("user", encode(&"ada"));
    let ids: Vec<SessionId> = (0..n).map(|_| SessionId::generate()).collect();
    rt.block_on(async {
        for id in &ids {
            store
                .create(&id.store_key(), NOW, &changes, NOW)
                .await
                .unwrap();
        }
    });
    (store, ids)
}

fn memory_store(c: &mut Criterion) {
    let rt = rocket::tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("memory_store");
    group.throughput(Throughput::Elements(1));
    for n in [1_000u32, 1_000_000] {
        let (store, ids) = filled(n);
        let keys: Vec<_> = ids.iter().map(|id| id.store_key()).collect();
        let mut i = 0usize;
        group.bench_with_input(BenchmarkId::new("load", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 7919) % keys.len();
                rt.block_on(store.load(&keys[i], NOW)).unwrap().unwrap()
            })
        });
        let mut changes = ChangeSet::new();
        changes.set("count", encode(&2u64));
        group.bench_with_input(BenchmarkId::new("flush", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 7919) % keys.len();
                assert!(rt.block_on(store.update(&keys[i], &changes, NOW)).unwrap())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, cookie, id, change_set, memory_store);
criterion_main!(benches);
