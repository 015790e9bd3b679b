//! Where "now" comes from. Everything time-dependent takes it from a [`Clock`], so tests move
//! time forward instead of sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A source of the current time in Unix seconds.
pub trait Clock: Send + Sync + 'static {
    /// Seconds since the Unix epoch.
    fn now(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// The system clock as the request path reads it: Unix seconds kept in an atomic by a thread
/// that wakes just after each second turns, so a request loads a number instead of asking
/// the OS (~20–30 ns a read on a VM). The reading lags the system clock by the thread's
/// wake-up delay, a millisecond or so. A thread rather than a task: a runtime that is not
/// driven between requests (Rocket's blocking local client) would leave a task's time stale.
/// The thread ends within a second of the clock being dropped.
#[derive(Debug, Clone)]
pub(crate) struct TickingClock(Arc<AtomicU64>);

impl TickingClock {
    /// Starts the clock's thread; `None` if the OS refuses a thread.
    pub fn start() -> Option<TickingClock> {
        let now = Arc::new(AtomicU64::new(SystemClock.now()));
        let clock = Arc::downgrade(&now);
        std::thread::Builder::new()
            .name("session-clock".into())
            .stack_size(64 * 1024)
            .spawn(move || loop {
                let since_epoch = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                let Some(now) = clock.upgrade() else {
                    return;
                };
                now.store(since_epoch.as_secs(), Ordering::Relaxed);
                drop(now);
                let next = std::time::Duration::from_secs(1).saturating_sub(
                    std::time::Duration::from_nanos(since_epoch.subsec_nanos().into()),
                );
                std::thread::sleep(next + std::time::Duration::from_millis(1));
            })
            .ok()?;
        Some(TickingClock(now))
    }
}

impl Clock for TickingClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A clock that only moves when told to; clones share one time. For tests.
///
/// ```
/// use rocket_server_sessions::{Clock, ManualClock};
///
/// let clock = ManualClock::new(1_000);
/// let seen_by_the_app = clock.clone();
/// clock.advance(60);
/// assert_eq!(seen_by_the_app.now(), 1_060);
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock that reads `now` until moved.
    pub fn new(now: u64) -> ManualClock {
        ManualClock(Arc::new(AtomicU64::new(now)))
    }

    /// Moves the clock `seconds` forward.
    pub fn advance(&self, seconds: u64) {
        self.0.fetch_add(seconds, Ordering::SeqCst);
    }

    /// Sets the clock to `now`.
    pub fn set(&self, now: u64) {
        self.0.store(now, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_tells_unix_seconds() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        let now = SystemClock.now();
        assert!(now >= before && now <= before + 1, "{now} vs {before}");
    }

    #[test]
    fn the_ticking_clock_follows_the_system_clock_and_its_thread_ends_with_it() {
        let clock = TickingClock::start().expect("a thread");
        let seen = |c: &TickingClock| (SystemClock.now(), c.now());
        let (system, ticking) = seen(&clock);
        assert!(
            ticking <= system && system <= ticking + 1,
            "{ticking} vs {system}"
        );
        // Across two turns of the second, it catches up within its wake-up delay (a loaded
        // machine may delay the thread; half a second is far beyond that).
        for _ in 0..2 {
            let turned = SystemClock.now() + 1;
            while SystemClock.now() < turned {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
            while clock.now() < turned && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let (system, ticking) = seen(&clock);
            assert!(
                ticking >= turned && ticking <= system,
                "{ticking} vs {system}"
            );
        }
        let time = Arc::downgrade(&clock.0);
        drop(clock);
        assert_eq!(time.strong_count(), 0, "only the clock holds its time");
    }
}
