//! What every bench server shares: the counting allocator, the keys, Rocket's configuration
//! and the routes' body. Included by path by `server` and by `../load-sqlite`'s server.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rocket::figment::Figment;

/// The system allocator, counting allocations when `BENCH_COUNT_ALLOCS` is set. Counting is a
/// separate pass of `scripts/bench`, never a timed one: in timed runs the only cost is one
/// load of a flag that is never written, the same for every mode.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        System.realloc(ptr, layout, size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// With `BENCH_COUNT_ALLOCS` set: answers each line on stdin with the number of allocations
/// (and reallocations) so far, on stdout.
pub fn count_allocations_if_asked() {
    if std::env::var_os("BENCH_COUNT_ALLOCS").is_none() {
        return;
    }
    COUNTING.store(true, Ordering::Relaxed);
    std::thread::spawn(|| {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).unwrap_or(0) > 0 {
            println!("{}", ALLOCATIONS.load(Ordering::Relaxed));
            line.clear();
        }
    });
}

pub const KEY: &str = "bench key, 32 bytes at the least, not secret";
/// Rocket's own secret key (private cookies, which rocket_flex_session uses): 64 bytes, base64.
pub const ROCKET_KEY: &str =
    "hPRYyVRiMyxpw5sBB1XeCMN1kFsDCqKvBi2QJxBVHQk5xkOzFXGOyi3DQAv9h0lELVrD9FnAo3AQc0cu5HB9Sw==";

pub fn figment(port: u16) -> Figment {
    // The worker count is the runtime's, and `#[rocket::main]` sizes the runtime from Rocket's
    // own configuration (ROCKET_WORKERS) before this figment exists: take it from there, so
    // that the figment (which sizes rocket_db_pools' default pool) agrees with the threads.
    let workers: usize = rocket::Config::figment()
        .extract_inner("workers")
        .unwrap_or(2);
    // Rocket's release defaults alone: no Rocket.toml, no environment, whatever the folder.
    Figment::from(rocket::Config::release_default())
        .merge(("port", port))
        .merge(("address", "127.0.0.1"))
        .merge(("workers", workers))
        .merge(("log_level", "off"))
        .merge(("secret_key", ROCKET_KEY))
        .merge(("cli_colors", false))
}

/// The body every counter and read route answers: a number formatted into a `String`. The bare
/// routes answer one too, so that the rows differ only in the session layer, not in the
/// handler's own work (formatting, one allocation, Rocket's `String` responder).
pub fn body(n: u64) -> String {
    std::hint::black_box(n).to_string()
}
