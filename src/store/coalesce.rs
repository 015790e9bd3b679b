//! Coalescing concurrent store calls: callers queue their work, and a leader task takes all
//! that is queued and runs it as one batch (one statement, one round trip, one commit).
//!
//! A lone call does not wait: the first caller starts a leader at once. Under load, batches
//! grow by themselves with the calls that arrive while the previous batch runs.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use rocket::tokio::sync::Semaphore;

/// How a kind of queued work is batched and run.
pub(crate) trait Batch<T>: Send + Sync + 'static {
    /// What a leader keeps from one batch to the next (a database connection), dropped when
    /// the queue runs dry.
    type Held: Default + Send;

    /// Moves the items of the next batch out of `queue`.
    fn take(&self, queue: &mut Vec<T>) -> Vec<T>;

    /// Runs one batch, answering each of its items.
    fn run(&self, batch: Vec<T>, held: &mut Self::Held) -> impl Future<Output = ()> + Send;
}

/// A queue of `T` with at most `leaders` batches of it in flight.
pub(crate) struct Coalescer<T, B> {
    queue: Mutex<Vec<T>>,
    leaders: Arc<Semaphore>,
    runner: B,
}

impl<T: Send + 'static, B: Batch<T>> Coalescer<T, B> {
    pub fn new(runner: B, leaders: usize) -> Arc<Self> {
        Arc::new(Coalescer {
            queue: Mutex::new(Vec::new()),
            leaders: Arc::new(Semaphore::new(leaders)),
            runner,
        })
    }

    fn queue(&self) -> MutexGuard<'_, Vec<T>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `item`; some leader runs it soon. The item carries its own way to answer.
    pub fn submit(self: &Arc<Self>, item: T) {
        self.queue().push(item);
        self.lead_if_free();
    }

    /// Starts a leader unless enough run already. A leader runs batches until the queue is
    /// empty and looks again once it has stopped, so no item is left without a leader.
    fn lead_if_free(self: &Arc<Self>) {
        let Ok(permit) = self.leaders.clone().try_acquire_owned() else {
            return;
        };
        let this = self.clone();
        // A task of its own: a request that goes away does not take the batch with it.
        rocket::tokio::spawn(async move {
            let mut held = B::Held::default();
            loop {
                let batch = this.runner.take(&mut this.queue());
                if batch.is_empty() {
                    break;
                }
                this.runner.run(batch, &mut held).await;
            }
            drop(held);
            drop(permit);
            if !this.queue().is_empty() {
                this.lead_if_free();
            }
        });
    }
}
