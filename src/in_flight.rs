//! Counting the requests whose session changes are not written yet, so that shutdown can wait
//! for them.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;
use rocket::tokio::sync::Notify;

/// Slots per counter: more than Rocket's worker threads on most machines. Threads beyond it
/// share slots, which stays correct (the slots are atomic) and only costs contention.
const SLOTS: usize = 16;

/// Requests started and finished, counted per thread: a request then writes only its own
/// thread's cache line, never one the other cores write too (a single shared counter made
/// every request wait for that line to come over from the core that wrote it last).
///
/// The counts only grow. A request may finish on another thread than it started on, so no
/// slot says anything alone; [`InFlight::is_idle`] reads all `finished` counts and then all
/// `started` ones: every request counted as finished started before it finished, so its start
/// is counted too, and equal sums mean none of the requests seen is still running.
///
/// Once [`drain`](InFlight::drain) has begun, each finishing request wakes it.
pub(crate) struct InFlight {
    slots: Box<[CachePadded<Slot>]>,
    idle: Notify,
    shutting_down: AtomicBool,
}

#[derive(Default)]
struct Slot {
    started: AtomicU64,
    finished: AtomicU64,
}

impl Default for InFlight {
    fn default() -> Self {
        InFlight {
            slots: (0..SLOTS).map(|_| CachePadded::default()).collect(),
            idle: Notify::new(),
            shutting_down: AtomicBool::new(false),
        }
    }
}

impl InFlight {
    fn slot(&self) -> &Slot {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SLOTS;
        }
        &self.slots[INDEX.with(|i| *i)]
    }

    pub fn start(&self) {
        self.slot().started.fetch_add(1, Ordering::SeqCst);
    }

    /// Counts a request as finished. True when it finished after shutdown began: its changes
    /// came after the shutdown's persist, and the caller persists again.
    pub fn finish(&self) -> bool {
        self.slot().finished.fetch_add(1, Ordering::SeqCst);
        // Only `drain` waits, and only once `shutting_down` is set: before that, a request
        // ends without touching the `Notify` (a lock). Both sides use SeqCst, so either this
        // load sees the flag, or `drain`'s later check of the counts sees this request end.
        if !self.shutting_down.load(Ordering::SeqCst) {
            return false;
        }
        self.idle.notify_waiters();
        true
    }

    /// Marks the start of shutdown and waits, at most `limit`, for requests in flight to end.
    pub async fn drain(&self, limit: std::time::Duration) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let wait = async {
            loop {
                let idle = self.idle.notified();
                if self.is_idle() {
                    return;
                }
                idle.await;
            }
        };
        let _ = rocket::tokio::time::timeout(limit, wait).await;
    }

    /// Whether every request that started (as far as this call can see) has finished.
    fn is_idle(&self) -> bool {
        let sum = |count: fn(&Slot) -> &AtomicU64| {
            self.slots
                .iter()
                .map(|s| count(s).load(Ordering::SeqCst))
                .fold(0u64, u64::wrapping_add)
        };
        let finished = sum(|s| &s.finished);
        let started = sum(|s| &s.started);
        started == finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn idle_only_when_every_request_finished_whatever_thread_ends_it() {
        let counts = Arc::new(InFlight::default());
        assert!(counts.is_idle());
        counts.start();
        assert!(!counts.is_idle());
        // Finished on other threads than the one that started it, as a task can move.
        let other = counts.clone();
        std::thread::spawn(move || {
            other.start();
            other.finish();
            other.finish();
        })
        .join()
        .unwrap();
        assert!(counts.is_idle());
    }

    #[test]
    fn concurrent_requests_on_many_threads_leave_it_idle_and_never_look_idle_while_running() {
        let counts = Arc::new(InFlight::default());
        counts.start(); // One request that stays running throughout.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let workers: Vec<_> = (0..2 * SLOTS)
            .map(|_| {
                let counts = counts.clone();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) || n < 1000 {
                        counts.start();
                        counts.finish();
                        n += 1;
                    }
                })
            })
            .collect();
        for _ in 0..200_000 {
            assert!(!counts.is_idle(), "idle while a request is running");
        }
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
        assert!(!counts.is_idle());
        counts.finish();
        assert!(counts.is_idle());
    }
}
