//! Coalescing concurrent store calls: callers queue their work, and a leader task takes all
//! that is queued and runs it as one batch (for PostgreSQL one statement and one round trip,
//! for SQLite one transaction; either way one commit).
//!
//! A lone call does not wait: the first caller starts a leader at once. Under load, batches
//! grow by themselves with the calls that arrive while the previous batch runs. A leader
//! whose queue runs dry waits a moment for more work before it lets go of what it holds, so
//! that calls coming one after another share its connection too.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rocket::tokio::sync::{oneshot, Notify, Semaphore};

use crate::error::{StoreError, StoreErrorKind};

/// How long a leader whose queue ran dry waits for more work, keeping what it holds.
const LINGER: Duration = Duration::from_millis(100);

/// How many more times a leader yields, after its first, while each yield still brings more
/// work.
const MORE_YIELDS: usize = 4;

/// The most items one batch takes.
pub(crate) const MAX_BATCH: usize = 256;

/// The first [`MAX_BATCH`] items of `queue`, in order; the rest stay queued.
pub(crate) fn take_front<T>(queue: &mut Vec<T>) -> Vec<T> {
    queue.drain(..queue.len().min(MAX_BATCH)).collect()
}

/// Where a queued item's answer goes.
pub(crate) type Answer<R> = oneshot::Sender<Result<R, StoreError>>;

/// Answers each item of a batch, in order: its own result, or the whole batch's error.
pub(crate) fn answer_each<R>(
    answers: impl IntoIterator<Item = Answer<R>>,
    results: Result<Vec<R>, StoreError>,
) {
    match results {
        Ok(results) => {
            for (done, result) in answers.into_iter().zip(results) {
                let _ = done.send(Ok(result));
            }
        }
        Err(e) => {
            for done in answers {
                let _ = done.send(Err(e.clone()));
            }
        }
    }
}

/// How a kind of queued work is batched and run.
pub(crate) trait Batch<T>: Send + Sync + 'static {
    /// What a leader keeps from one batch to the next (a database connection), dropped when
    /// the leader stops.
    type Kept: Default + Send;

    /// Moves the items of the next batch out of `queue`.
    fn take(&self, queue: &mut Vec<T>) -> Vec<T>;

    /// Runs one batch, answering each of its items.
    fn run(&self, batch: Vec<T>, kept: &mut Self::Kept) -> impl Future<Output = ()> + Send;

    /// Whether a leader may keep `kept` into its next batch, or, when its queue ran dry, for up
    /// to [`LINGER`] more, waiting for work: only while that deprives nobody else of it.
    fn may_keep(&self, kept: &Self::Kept) -> bool;
}

/// A queue of `T` with at most `leaders` batches of it in flight.
pub(crate) struct Coalescer<T, B> {
    queue: Mutex<Vec<T>>,
    leaders: Arc<Semaphore>,
    /// Wakes a leader waiting for more work.
    more: Notify,
    runner: B,
}

impl<T: Send + 'static, B: Batch<T>> Coalescer<T, B> {
    pub fn new(runner: B, leaders: usize) -> Arc<Self> {
        Arc::new(Coalescer {
            queue: Mutex::new(Vec::new()),
            leaders: Arc::new(Semaphore::new(leaders)),
            more: Notify::new(),
            runner,
        })
    }

    fn queue(&self) -> MutexGuard<'_, Vec<T>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues the item `make` builds around its answer slot, and waits for some leader to run
    /// it and answer.
    pub async fn call<R>(
        self: &Arc<Self>,
        make: impl FnOnce(Answer<R>) -> T,
    ) -> Result<R, StoreError> {
        let (done, answer) = oneshot::channel();
        self.submit(make(done));
        answer.await.map_err(|_| {
            StoreError::new(
                StoreErrorKind::Other,
                "the batch that carried this call was lost",
            )
        })?
    }

    /// Queues `item`; some leader runs it soon. The item carries its own way to answer.
    fn submit(self: &Arc<Self>, item: T) {
        self.queue().push(item);
        // Wakes a waiting leader; with none waiting, the next one to wait returns at once.
        self.more.notify_one();
        self.lead_if_free();
    }

    /// Starts a leader unless enough run already. A leader runs batches until the queue is
    /// empty and no more work comes while it lingers, and looks again once it has stopped,
    /// so no item is left without a leader.
    fn lead_if_free(self: &Arc<Self>) {
        let Ok(permit) = self.leaders.clone().try_acquire_owned() else {
            return;
        };
        let this = self.clone();
        // A task of its own: a request that goes away does not take the batch with it.
        rocket::tokio::spawn(async move {
            let mut kept = B::Kept::default();
            loop {
                // Lets the tasks that are ready (requests whose bytes arrived) run first, so
                // that what they queue joins this batch rather than the next; and again, a few
                // times at most, while each yield still brings more work.
                let mut queued = 0;
                for _ in 0..=MORE_YIELDS {
                    rocket::tokio::task::yield_now().await;
                    let now = this.queue().len();
                    if now == 0 || now == queued || now >= MAX_BATCH {
                        break;
                    }
                    queued = now;
                }
                let batch = this.runner.take(&mut this.queue());
                if !batch.is_empty() {
                    // Work that keeps coming never holds what others wait for: a leader lets
                    // go of it between batches too, once the pool has none to spare.
                    if !this.runner.may_keep(&kept) {
                        kept = B::Kept::default();
                    }
                    this.runner.run(batch, &mut kept).await;
                    continue;
                }
                if !this.runner.may_keep(&kept) {
                    break;
                }
                let more = rocket::tokio::time::timeout(LINGER, this.more.notified());
                if more.await.is_err() {
                    break;
                }
            }
            drop(kept);
            drop(permit);
            if !this.queue().is_empty() {
                this.lead_if_free();
            }
        });
    }
}
