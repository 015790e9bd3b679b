//! Expiry by the database's clock. Several instances that judge expiry each by its own wall
//! clock disagree when one runs ahead: its sweep deletes sessions the others still use, its
//! loads find them expired. So the store works in the database's time: it measures, at each
//! tick, how far the database's clock is from this machine's, and shifts the `now` callers pass
//! by that much on the way in (and the times it answers back on the way out). A caller whose
//! `now` is this machine's wall clock (the default) thus works in the database's time exactly;
//! one with a clock of its own (a test's `ManualClock`) keeps its own offset from it.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::SystemTime;

/// The longest round trip, in milliseconds, whose reading of the database's clock is trusted:
/// its middle is then within a tenth of a second of when the database read its clock.
const TRUSTED_ROUND_TRIP: u64 = 200;

/// How far the database's clock is ahead of this machine's, in whole seconds.
pub(super) struct Skew {
    seconds: AtomicI64,
    /// This machine's wall clock, in milliseconds since the Unix epoch (injected in tests).
    wall: fn() -> u64,
}

impl Skew {
    pub(super) fn new(wall: fn() -> u64) -> Skew {
        Skew {
            seconds: AtomicI64::new(0),
            wall,
        }
    }

    /// This machine's wall clock now, in milliseconds since the Unix epoch.
    pub(super) fn wall_ms(&self) -> u64 {
        (self.wall)()
    }

    /// A measurement: the database read `db_ms` between this machine's `before_ms` and
    /// `after_ms`. One that took longer than [`TRUSTED_ROUND_TRIP`] (a tick that waited for a
    /// lock, say) is not trusted. The skew moves only when it is off by more than a second, so a
    /// skew near a half second does not flip back and forth (each flip would move every time by
    /// a second).
    pub(super) fn measured(&self, before_ms: u64, db_ms: f64, after_ms: u64) {
        if after_ms.saturating_sub(before_ms) > TRUSTED_ROUND_TRIP {
            return;
        }
        let here = (before_ms as f64 + after_ms as f64) / 2.0;
        let off_ms = db_ms - here;
        let current = self.seconds.load(Ordering::Relaxed);
        if (off_ms - current as f64 * 1000.0).abs() > 1000.0 {
            self.seconds
                .store((off_ms / 1000.0).round() as i64, Ordering::Relaxed);
        }
    }

    /// A caller's time, in the database's.
    pub(super) fn db_time(&self, t: u64) -> u64 {
        shift(t, self.seconds.load(Ordering::Relaxed))
    }

    /// A time of the database's, in the caller's.
    pub(super) fn caller_time(&self, t: u64) -> u64 {
        shift(t, -self.seconds.load(Ordering::Relaxed))
    }
}

fn shift(t: u64, by: i64) -> u64 {
    (t.min(i64::MAX as u64) as i64).saturating_add(by).max(0) as u64
}

/// This machine's wall clock, in milliseconds since the Unix epoch (0 before it).
pub(super) fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_shift_by_the_measured_skew_which_moves_only_past_a_second() {
        let skew = Skew::new(wall_ms);
        assert_eq!((skew.db_time(100), skew.caller_time(100)), (100, 100));
        // The database reads half a second ahead: no shift.
        skew.measured(10_000, 10_600.0, 10_200);
        assert_eq!(skew.db_time(100), 100);
        // An hour behind (this machine runs an hour ahead).
        skew.measured(3_610_000, 10_050.0, 3_610_100);
        assert_eq!(
            (skew.db_time(7_200), skew.caller_time(3_600)),
            (3_600, 7_200)
        );
        // Within a second of that: it stays.
        skew.measured(3_610_000, 10_900.0, 3_610_000);
        assert_eq!(skew.db_time(7_200), 3_600);
        // A reading whose round trip took two seconds is not trusted.
        skew.measured(20_000, 20_000.0, 22_000);
        assert_eq!(skew.db_time(7_200), 3_600);
        assert_eq!(skew.db_time(10), 0, "never before the epoch");
    }
}
