//! The memory store at scale: 1,000,000 sessions (or the count given as the first argument).
//!
//! Reports resident memory per session beyond its data, snapshot write and load time, the
//! time to sweep them all once expired, and the p99 latency of loads made while that sweep
//! runs against the p99 without it. `cargo bench --bench scale [-- COUNT]`; prints one line
//! per figure, `name: value`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rocket_server_sessions::config::MemoryStoreConfig;
use rocket_server_sessions::store::{ChangeSet, MemoryStore, SessionStore};
use rocket_server_sessions::SessionId;

const NOW: u64 = 1_700_000_000;
const TTL: u64 = 3600;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn p99(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() * 99 / 100]
}

/// Loads of random live sessions, one after another, until `stop`; their latencies.
async fn probe(
    store: Arc<MemoryStore>,
    ids: Arc<Vec<SessionId>>,
    stop: Arc<AtomicBool>,
) -> Vec<Duration> {
    let mut samples = Vec::new();
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) || samples.len() < 1000 {
        i = (i + 7919) % ids.len();
        let start = Instant::now();
        let _ = store.load(&ids[i].store_key(), NOW).await.unwrap();
        samples.push(start.elapsed());
        rocket::tokio::task::yield_now().await;
    }
    samples
}

fn main() {
    let count: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = rocket::tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("rss-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = MemoryStoreConfig {
        ttl: TTL,
        file_path: Some(dir.join("sessions.snapshot")),
        snapshot_interval: 0,
        sweep_interval: 60,
    };
    runtime.block_on(async {
        let ids: Vec<SessionId> = (0..count).map(|_| SessionId::generate()).collect();
        let mut changes = ChangeSet::new();
        changes.set("count", vec![0x2a]); // MessagePack for 42: one byte of data
        let data_bytes = "count".len() + 1;

        let before = resident_bytes();
        let store = Arc::new(MemoryStore::open(&config).unwrap());
        for id in &ids {
            store
                .create(&id.store_key(), NOW, &changes, NOW)
                .await
                .unwrap();
        }
        let grown = resident_bytes().saturating_sub(before);
        let per_session = grown as f64 / count as f64;
        println!("sessions: {count}");
        println!("resident_bytes_per_session: {per_session:.0}");
        println!(
            "overhead_bytes_per_session: {:.0}",
            per_session - data_bytes as f64
        );

        let start = Instant::now();
        store.persist().await.unwrap();
        println!(
            "snapshot_write_seconds: {:.3}",
            start.elapsed().as_secs_f64()
        );
        let size = std::fs::metadata(dir.join("sessions.snapshot"))
            .unwrap()
            .len();
        println!("snapshot_bytes: {size}");

        let start = Instant::now();
        let reloaded = MemoryStore::open(&config).unwrap();
        println!(
            "snapshot_load_seconds: {:.3}",
            start.elapsed().as_secs_f64()
        );
        assert_eq!(reloaded.len(), count);
        drop(reloaded);

        let ids = Arc::new(ids);
        let stop = Arc::new(AtomicBool::new(true));
        let quiet = p99(probe(store.clone(), ids.clone(), stop.clone()).await);

        // Half the sessions touched later, so the sweep removes the other half.
        let later = NOW + TTL / 2;
        for id in ids.iter().step_by(2) {
            store
                .update(&id.store_key(), &ChangeSet::new(), later)
                .await
                .unwrap();
        }
        stop.store(false, Ordering::Relaxed);
        let prober = rocket::tokio::spawn(probe(store.clone(), ids.clone(), stop.clone()));
        let start = Instant::now();
        let swept = store.sweep(NOW + TTL).await.unwrap();
        let sweep = start.elapsed();
        stop.store(true, Ordering::Relaxed);
        let during = p99(prober.await.unwrap());
        println!("swept_sessions: {swept}");
        println!("sweep_seconds: {:.3}", sweep.as_secs_f64());
        println!("load_p99_us_quiet: {:.1}", quiet.as_secs_f64() * 1e6);
        println!(
            "load_p99_us_during_sweep: {:.1}",
            during.as_secs_f64() * 1e6
        );
        println!(
            "p99_ratio_during_sweep: {:.2}",
            during.as_secs_f64() / quiet.as_secs_f64()
        );
    });
    let _ = std::fs::remove_dir_all(&dir);
}
