//! Failing fast while the store is unavailable. After a store call of a request fails because
//! the store cannot be reached, requests answer 503 at once instead of each waiting out the
//! store's timeout, while one probe in the background asks the store until it answers again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::error::{StoreError, StoreErrorKind};

/// Whether requests may call the store now.
#[derive(Default)]
pub(crate) struct Breaker {
    /// Set by a call that found the store unavailable; cleared by the probe.
    open: AtomicBool,
}

/// The first and the longest pause between two probes.
pub(crate) const FIRST_PROBE: Duration = Duration::from_millis(100);
pub(crate) const LAST_PROBE: Duration = Duration::from_secs(1);

impl Breaker {
    /// The error a request gets at once while the breaker is open, or `None`.
    pub fn refuse(&self) -> Option<StoreError> {
        self.open.load(Ordering::Acquire).then(|| {
            StoreError::new(
                StoreErrorKind::Unavailable,
                "the store did not answer a moment ago; requests fail at once until it does",
            )
        })
    }

    /// Notes how a call went. True when it opened the breaker: the caller starts the probe.
    pub fn after<T>(&self, result: &Result<T, StoreError>) -> bool {
        match result {
            Err(e) if e.is_unavailable() => !self.open.swap(true, Ordering::AcqRel),
            _ => false,
        }
    }

    /// The store answered the probe: requests call it again.
    pub fn close(&self) {
        self.open.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unavailable_store_opens_it_once_and_only_the_probe_closes_it() {
        let breaker = Breaker::default();
        let down = || Err::<(), _>(StoreError::new(StoreErrorKind::Unavailable, "down"));
        let other = Err::<(), _>(StoreError::new(StoreErrorKind::Corrupt, "bad row"));
        assert!(breaker.refuse().is_none());
        assert!(
            !breaker.after(&other),
            "a store that answers, wrongly, is not down"
        );
        assert!(!breaker.after(&Ok(())));
        assert!(breaker.after(&down()), "opened: start the probe");
        assert!(!breaker.after(&down()), "already open: one probe");
        assert!(breaker.refuse().unwrap().is_unavailable());
        assert!(!breaker.after(&Ok(())));
        assert!(
            breaker.refuse().is_some(),
            "a request's success does not close it"
        );
        breaker.close();
        assert!(breaker.refuse().is_none());
    }
}
