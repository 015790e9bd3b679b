//! PostgreSQL's batches: concurrent loads run as one statement, and concurrent updates as one
//! statement (one round trip, one commit), through the store module's coalescer.

use rocket_db_pools::sqlx::{self, Row};

use super::pool::{after_failed_read, classify, failed, Kept};
use super::{split, Db};
use crate::error::{StoreError, StoreErrorKind};
use crate::id::StoreKey;
pub(super) use crate::store::coalesce::Coalescer;
use crate::store::coalesce::{answer_each, take_front, Answer, Batch};
use crate::store::sql::{secs, unsigned};
use crate::store::{ChangeSet, SessionRecord};

/// A live session as a load finds it (its record carries its expiry).
pub(super) type Found = Option<SessionRecord>;

/// A `load` waiting for its batch.
pub(super) struct PendingLoad {
    pub key: StoreKey,
    pub now: u64,
    pub done: Answer<Found>,
}

/// An `update` waiting for its batch.
pub(super) struct PendingUpdate {
    pub key: StoreKey,
    pub changes: ChangeSet,
    pub now: u64,
    pub expires: u64,
    pub done: Answer<bool>,
}

/// Batches in flight at once: loads do not conflict; updates of two batches could lock the
/// same sessions, so fewer of them.
pub(super) const LOAD_LEADERS: usize = 1;
pub(super) const UPDATE_LEADERS: usize = 1;

/// Up to `MAX_BATCH` items, each session at most once, sorted by session; the rest stay
/// queued, in order. A session's later items go back to the head of the queue, so its items
/// still run in the order they came. The queue keeps its memory, so that the items queued
/// while this batch runs need no allocation.
fn take_distinct<T>(queue: &mut Vec<T>, key: impl Fn(&T) -> StoreKey) -> Vec<T> {
    let mut batch = take_front(queue);
    // Sessions in one order in every batch: batches that lock them do not deadlock. The sort
    // is stable: a session's items stay in the order they came.
    batch.sort_by_key(|item| key(item));
    if batch.windows(2).any(|w| key(&w[0]) == key(&w[1])) {
        let mut later = Vec::new();
        let mut distinct = Vec::with_capacity(batch.len());
        for item in batch {
            match distinct.last() {
                Some(last) if key(last) == key(&item) => later.push(item),
                _ => distinct.push(item),
            }
        }
        queue.splice(0..0, later);
        batch = distinct;
    }
    batch
}

/// The answer slot of the batch item at position `n`, counted from 1 as `WITH ORDINALITY`
/// counts; a position outside the batch is an error, never a panic.
fn at_position<T>(answers: &mut [T], n: i64) -> Result<&mut T, StoreError> {
    usize::try_from(n)
        .ok()
        .and_then(|n| answers.get_mut(n.wrapping_sub(1)))
        .ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::Corrupt,
                format!("a row names batch position {n}"),
            )
        })
}

impl Batch<PendingLoad> for Db {
    type Kept = Kept;

    fn take(&self, queue: &mut Vec<PendingLoad>) -> Vec<PendingLoad> {
        take_distinct(queue, |p| p.key)
    }

    fn may_keep(&self, kept: &Kept) -> bool {
        Db::may_keep(self, kept)
    }

    async fn run(&self, batch: Vec<PendingLoad>, kept: &mut Kept) {
        let found = self.load_many(&batch, kept).await;
        answer_each(batch.into_iter().map(|p| p.done), found);
    }
}

impl Batch<PendingUpdate> for Db {
    type Kept = Kept;

    fn take(&self, queue: &mut Vec<PendingUpdate>) -> Vec<PendingUpdate> {
        take_distinct(queue, |p| p.key)
    }

    fn may_keep(&self, kept: &Kept) -> bool {
        Db::may_keep(self, kept)
    }

    async fn run(&self, batch: Vec<PendingUpdate>, kept: &mut Kept) {
        let mut result = self.update_many(&batch, kept).await;
        // Should two batches deadlock anyway, PostgreSQL fails one of them: run it again.
        for _ in 0..3 {
            match &result {
                Err(e) if e.kind() == StoreErrorKind::Conflict => {
                    result = self.update_many(&batch, kept).await
                }
                _ => break,
            }
        }
        for (i, pending) in batch.into_iter().enumerate() {
            let answer = match &result {
                Ok(live) => Ok(live[i]),
                Err(e) => Err(e.clone()),
            };
            // Before the answer, and before the next batch: the cache sees commits in order.
            if let Some(cache) = &self.cache {
                let live = matches!(answer, Ok(true));
                cache.record_update(
                    &pending.key,
                    live.then_some((&pending.changes, pending.expires)),
                );
            }
            let _ = pending.done.send(answer);
        }
    }
}

/// The batched update: extends each live session and applies its per-key changes, in one
/// statement, unless another instance holds the claim ($9 is this instance). Nothing is
/// announced: while the claim lets a change through, no other instance serves from a cache,
/// and one that takes the claim later starts with an empty one. Answers the positions in the
/// batch of the sessions that were live, and whether the claim let the statement through.
const UPDATE_MANY: &str = concat!(
    "WITH ",
    fence!(9),
    ", input AS (
        SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::bigint[])
          WITH ORDINALITY AS i(key, expires, now, n)
     ), s AS (
        UPDATE rocket_sessions t SET expires_at = i.expires, active_at = i.now
          FROM input i
         WHERE t.key = i.key AND t.expires_at > i.now AND EXISTS (SELECT FROM fence)
        RETURNING t.id, t.key, i.n
     ), removed AS (
        DELETE FROM rocket_session_data d
         USING s, unnest($4::bytea[], $5::text[]) AS r(key, name)
         WHERE r.key = s.key AND d.session_id = s.id AND d.name = r.name
     ), upserted AS (
        INSERT INTO rocket_session_data (session_id, name, value)
        SELECT s.id, u.name, u.value
          FROM s JOIN unnest($6::bytea[], $7::text[], $8::bytea[]) AS u(key, name, value)
            ON u.key = s.key
        ON CONFLICT (session_id, name) DO UPDATE SET value = excluded.value
     ) SELECT array(SELECT n FROM s), EXISTS (SELECT FROM fence)"
);

impl Db {
    /// What one query finds for each of the batch's sessions, in the batch's order: the
    /// record and expiry of a live session, `None` for any other. Rows name their session by
    /// its position in the batch rather than by its key, and come in any order.
    async fn load_many(
        &self,
        batch: &[PendingLoad],
        kept: &mut Kept,
    ) -> Result<Vec<Found>, StoreError> {
        let keys: Vec<&[u8]> = batch.iter().map(|p| &p.key.0[..]).collect();
        let nows: Vec<i64> = batch.iter().map(|p| secs(p.now)).collect();
        let mut attempt = 0;
        let rows = loop {
            self.count();
            let conn = self.kept_connection(kept, attempt > 0).await?;
            let rows = sqlx::query(
                "SELECT i.n, s.created_at, s.expires_at, d.name, d.value
               FROM unnest($1::bytea[], $2::bigint[]) WITH ORDINALITY AS i(key, now, n)
               JOIN rocket_sessions s ON s.key = i.key AND s.expires_at > i.now
               LEFT JOIN rocket_session_data d ON d.session_id = s.id",
            )
            .bind(&keys)
            .bind(&nows)
            .fetch_all(conn)
            .await;
            match rows {
                Ok(rows) => break rows,
                Err(e) => after_failed_read(kept, attempt, e)?,
            }
            attempt += 1;
        };
        let mut found: Vec<Found> = vec![None; batch.len()];
        for row in &rows {
            let slot = at_position(&mut found, row.try_get(0).map_err(classify)?)?;
            let record = match slot {
                Some(live) => live,
                None => {
                    let created: i64 = row.try_get(1).map_err(classify)?;
                    let expires: i64 = row.try_get(2).map_err(classify)?;
                    slot.insert(SessionRecord {
                        created: unsigned(created),
                        expires: unsigned(expires),
                        data: Vec::new(),
                    })
                }
            };
            let name: Option<String> = row.try_get(3).map_err(classify)?;
            let value: Option<Vec<u8>> = row.try_get(4).map_err(classify)?;
            if let (Some(name), Some(value)) = (name, value) {
                record.data.push((name, value));
            }
        }
        Ok(found)
    }

    /// Extends each live session of the batch and applies its changes: one statement, so one
    /// transaction and one commit. Returns, in the batch's order, whether each session was live.
    async fn update_many(
        &self,
        batch: &[PendingUpdate],
        kept: &mut Kept,
    ) -> Result<Vec<bool>, StoreError> {
        let (mut keys, mut expires, mut nows) = (Vec::new(), Vec::new(), Vec::new());
        let (mut removed_keys, mut removed_names) = (Vec::new(), Vec::new());
        let (mut set_keys, mut set_names, mut set_values) = (Vec::new(), Vec::new(), Vec::new());
        for p in batch {
            let key = &p.key.0[..];
            keys.push(key);
            expires.push(secs(p.expires));
            nows.push(secs(p.now));
            let (names, values, removed) = split(&p.changes);
            set_keys.extend(std::iter::repeat_n(key, names.len()));
            set_names.extend(names);
            set_values.extend(values);
            removed_keys.extend(std::iter::repeat_n(key, removed.len()));
            removed_names.extend(removed);
        }
        let mut fenced_since = None;
        let rows = loop {
            self.count();
            let conn = self.kept_connection(kept, false).await?;
            let done: Result<(Vec<i64>, bool), _> = sqlx::query_as(UPDATE_MANY)
                .bind(&keys)
                .bind(&expires)
                .bind(&nows)
                .bind(&removed_keys)
                .bind(&removed_names)
                .bind(&set_keys)
                .bind(&set_names)
                .bind(&set_values)
                .bind(self.instance as i64)
                .fetch_one(conn)
                .await;
            match done {
                Ok((rows, true)) => break rows,
                Ok((_, false)) => self.fenced(&mut fenced_since, kept.as_deref_mut()).await?,
                Err(e) => return Err(failed(kept, e)),
            }
        };
        let mut live = vec![false; batch.len()];
        for n in rows {
            *at_position(&mut live, n)? = true;
        }
        Ok(live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::coalesce::MAX_BATCH;

    fn key(i: u8) -> StoreKey {
        StoreKey([i; 32])
    }

    #[test]
    fn a_batch_takes_each_session_once_and_its_later_items_run_next_in_order() {
        // Items (session, order of arrival): session 3 three times, session 1 twice.
        let mut queue = vec![(3, 0), (1, 1), (3, 2), (2, 3), (1, 4), (3, 5)];
        let taken = |queue: &mut Vec<(u8, u32)>| take_distinct(queue, |&(s, _)| key(s));
        assert_eq!(taken(&mut queue), [(1, 1), (2, 3), (3, 0)]);
        assert_eq!(taken(&mut queue), [(1, 4), (3, 2)]);
        queue.push((1, 6));
        assert_eq!(taken(&mut queue), [(1, 6), (3, 5)]);
        assert!(queue.is_empty());
    }

    #[test]
    fn a_batch_holds_at_most_max_batch_items_and_the_rest_keep_their_place() {
        let mut queue: Vec<(u8, u32)> = (0..MAX_BATCH as u32 + 3).map(|i| (i as u8, i)).collect();
        let batch = take_distinct(&mut queue, |&(s, _)| key(s));
        assert_eq!(batch.len(), MAX_BATCH);
        // 259 items over 256 sessions: the first 256 came in, the last three wait, in order.
        assert_eq!(queue, [(0, 256), (1, 257), (2, 258)]);
        let capacity = queue.capacity();
        let batch = take_distinct(&mut queue, |&(s, _)| key(s));
        assert_eq!(batch, [(0, 256), (1, 257), (2, 258)]);
        assert!(queue.is_empty());
        assert_eq!(queue.capacity(), capacity, "the queue keeps its memory");
    }

    #[test]
    fn a_row_naming_a_position_outside_its_batch_is_an_error_not_a_panic() {
        let mut answers = [false; 3];
        for n in [1, 3] {
            *at_position(&mut answers, n).unwrap() = true;
        }
        assert_eq!(answers, [true, false, true]);
        for n in [0, 4, -1, i64::MIN, i64::MAX] {
            assert!(matches!(
                at_position(&mut answers, n),
                Err(e) if e.kind() == StoreErrorKind::Corrupt
            ));
        }
    }
}
