//! Listening for the other instances' announcements (`LISTEN rocket_sessions`) on one
//! connection of the pool, for the cache: a request for the claim makes the claim's task tick
//! at once; changes that earlier builds announce are dropped from the cache.

use std::sync::Arc;
use std::time::Duration;

use rocket::tokio::sync::{watch, Notify};
use rocket_db_pools::sqlx;
use rocket_db_pools::sqlx::postgres::{PgListener, PgPool};

use super::cache::{Cache, CHANNEL};

/// Keeps `cache` listening for announcements on a connection of `pool`, reconnecting when the
/// connection is lost, until `stop` changes or the pool is closed. The cache serves only
/// while the connection is up. Another instance asking for the claim makes the claim's task
/// tick at once (`tick_now`).
pub(super) async fn listen(
    pool: PgPool,
    cache: Arc<Cache>,
    tick_now: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    use rocket::tokio::{select, time::sleep};

    let mut pause = Duration::from_millis(100);
    loop {
        let connect = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let failed = select! {
            _ = stop.changed() => return,
            connected = connect => match connected {
                Ok(mut listener) => {
                    cache.set_listening(true);
                    pause = Duration::from_millis(100);
                    let end = loop {
                        select! {
                            _ = stop.changed() => break None,
                            next = listener.try_recv() => match next {
                                Ok(Some(note)) if asks_for_claim(note.payload()) => {
                                    tick_now.notify_one()
                                }
                                Ok(Some(note)) => cache.announced(note.payload()),
                                Ok(None) => break Some("the connection was lost".to_string()),
                                Err(sqlx::Error::PoolClosed) => break None,
                                Err(e) => break Some(e.to_string()),
                            },
                        }
                    };
                    cache.set_listening(false);
                    match end {
                        None => return,
                        Some(reason) => reason,
                    }
                }
                Err(sqlx::Error::PoolClosed) => return,
                Err(e) => e.to_string(),
            },
        };
        rocket::warn!("session store: the cache is off until it listens again: {failed}");
        select! {
            _ = stop.changed() => return,
            _ = sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Whether an announcement is another instance asking for the claim (see `Db::fenced`).
pub(super) fn asks_for_claim(payload: &str) -> bool {
    payload.ends_with(" ?")
}
