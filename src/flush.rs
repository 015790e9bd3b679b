//! What a response does with its request's session: which store call it makes (none, an
//! update, a create, a cycle, a destroy) and which cookie it sends. Decided first, as a
//! [`Plan`], without I/O; then carried out.

use std::future::Future;
use std::pin::Pin;

use crate::error::{SessionError, StoreError, StoreErrorKind};
use crate::id::{SessionId, StoreKey};
use crate::lifetime::Lifetime;
use crate::manager::SessionManager;
use crate::store::ChangeSet;
use crate::working::{Origin, Working};

/// What the response does with the session cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CookieAction {
    Keep,
    /// Set this value, with this `Max-Age` (`None`: a browser-session cookie).
    Set(String, Option<u64>),
    Remove,
}

/// A flush: answered at once, or store calls still to await (then what the response does
/// with the cookie).
pub(crate) enum Flush<'a> {
    Ready(Result<CookieAction, SessionError>),
    Pending(Pin<Box<dyn Future<Output = Result<CookieAction, SessionError>> + Send + 'a>>),
}

/// What a flush writes, decided before any store call.
enum Plan {
    /// No store call: only this cookie action.
    CookieOnly(CookieAction),
    /// No handler loaded the session, and its cookie is due for a refresh: extend its life.
    Refresh(SessionId, Lifetime),
    /// Write a loaded session: delete the one destroyed in the request, if any, then `step`.
    Write {
        destroy: Option<StoreKey>,
        changes: ChangeSet,
        /// The session's id, if it has one yet.
        id: Option<SessionId>,
        lifetime: Lifetime,
        step: Step,
    },
}

enum Step {
    CookieOnly(CookieAction),
    /// Move the stored session `old` to the id, applying the changes.
    Cycle {
        old: StoreKey,
    },
    Create {
        created: u64,
    },
    Update {
        key: StoreKey,
        refresh: bool,
    },
}

/// How many ids a create or a cycle draws before it gives up: with 256-bit ids a second
/// draw is already never needed, short of a broken random source.
const ID_DRAWS: usize = 3;

impl SessionManager {
    fn refresh_due(&self, issued: u64, current_key: bool, lifetime: Lifetime, now: u64) -> bool {
        !current_key || now.saturating_sub(issued) >= lifetime.refresh_interval(self.config())
    }

    /// The session whose life a request that never loaded it extends: the cookie's, if it
    /// verifies and is due for a refresh. Whether a cookie is recent shows without verifying
    /// it, and a forged one gains nothing from being let be.
    fn refresh_for(&self, cookie: Option<&str>, now: u64) -> Option<(SessionId, Lifetime)> {
        let cookie = cookie?;
        // Only a value on the configured lifetime states its issue time here.
        if let Some(issued) = self.codec().stated_issue(cookie.as_bytes()) {
            if !self.refresh_due(issued, true, Lifetime::Configured, now) {
                return None;
            }
        }
        let v = self.verify(Some(cookie), now)?;
        let lifetime = Lifetime::from_cookie(v.life);
        self.refresh_due(v.issued, v.current_key, lifetime, now)
            .then_some((v.id, lifetime))
    }

    fn signed(&self, id: &SessionId, lifetime: Lifetime, now: u64) -> CookieAction {
        let config = self.config();
        let value = self.codec().sign_with(id, now, lifetime.to_cookie(config));
        CookieAction::Set(value, lifetime.max_age(config))
    }

    /// Writes a request's session to the store and says what the response does with the
    /// cookie. `working` is `None` when no handler asked for the session: then only the
    /// lifetime of the cookie's session is extended, if a refresh is due. A loaded session is
    /// written as of the time it was loaded: the request's one reading of the clock.
    ///
    /// A plan that needs no store call, or only an update the store answers at once
    /// ([`SessionStore::update_now`]), is carried out here; any other is returned as a future.
    pub(crate) fn flush(&self, working: Option<Working>, cookie: Option<&str>) -> Flush<'_> {
        let now = working.as_ref().map_or_else(|| self.now(), |w| w.at);
        let plan = match self.plan(working, cookie, now) {
            Plan::CookieOnly(action)
            | Plan::Write {
                destroy: None,
                step: Step::CookieOnly(action),
                ..
            } => return Flush::Ready(Ok(action)),
            Plan::Write {
                destroy: None,
                changes,
                id,
                lifetime,
                step: Step::Update { key, refresh },
            } => match self.store().update_now(&key, &changes, now) {
                Some(updated) => {
                    return Flush::Ready(
                        updated
                            .map(|updated| {
                                self.cookie_after_update(updated, refresh, id, lifetime, now)
                            })
                            .map_err(SessionError::from),
                    )
                }
                None => Plan::Write {
                    destroy: None,
                    changes,
                    id,
                    lifetime,
                    step: Step::Update { key, refresh },
                },
            },
            Plan::Refresh(id, lifetime) => {
                return Flush::Pending(Box::pin(self.refresh(id, lifetime, now)))
            }
            plan => plan,
        };
        Flush::Pending(Box::pin(self.guarded(self.write(plan, now))))
    }

    /// Extends the life of the session of a request that never loaded it. A failure costs
    /// the request nothing (its own data is not at stake): the cookie is kept as it is.
    async fn refresh(
        &self,
        id: SessionId,
        lifetime: Lifetime,
        now: u64,
    ) -> Result<CookieAction, SessionError> {
        let mut changes = ChangeSet::new();
        changes.set_ttl(lifetime.store_ttl(self.config()));
        match self.store().update(&id.store_key(), &changes, now).await {
            Ok(updated) => Ok(self.cookie_after_update(updated, true, Some(id), lifetime, now)),
            Err(e) => {
                rocket::warn!("session store: a session's life was not extended: {e}");
                Ok(CookieAction::Keep)
            }
        }
    }

    /// The cookie after an update of a stored session: removed if the session was gone,
    /// re-issued if a refresh was due.
    fn cookie_after_update(
        &self,
        updated: bool,
        refresh: bool,
        id: Option<SessionId>,
        lifetime: Lifetime,
        now: u64,
    ) -> CookieAction {
        match (updated, refresh, id) {
            // Destroyed or expired meanwhile: it stays that way.
            (false, _, _) => CookieAction::Remove,
            (true, true, Some(id)) => self.signed(&id, lifetime, now),
            (true, _, _) => CookieAction::Keep,
        }
    }

    fn plan(&self, working: Option<Working>, cookie: Option<&str>, now: u64) -> Plan {
        let Some(mut w) = working else {
            // No refresh while the store is down: the request would only wait for nothing.
            return match self.refresh_for(cookie, now) {
                Some((id, lifetime)) if !self.store_is_down() => Plan::Refresh(id, lifetime),
                _ => Plan::CookieOnly(CookieAction::Keep),
            };
        };
        let nothing_stored = w.data.is_empty();
        let mut changes = w.take_changes();
        changes.set_ttl(w.lifetime.store_ttl(self.config()));
        let step = match (w.cycled_from, w.origin) {
            // A cycled stored session moves to its new id.
            (Some(old), _) => Step::Cycle { old },
            (None, Origin::New { stale_cookie }) if nothing_stored => {
                Step::CookieOnly(match stale_cookie {
                    true => CookieAction::Remove,
                    false => CookieAction::Keep,
                })
            }
            (None, Origin::New { .. }) => Step::Create { created: w.created },
            (
                None,
                Origin::Stored {
                    key,
                    issued,
                    current_key,
                },
            ) => {
                // A new lifetime is sent at once, in the cookie and to the store.
                let refresh =
                    w.lifetime_changed || self.refresh_due(issued, current_key, w.lifetime, now);
                if changes.is_empty() && !refresh {
                    Step::CookieOnly(CookieAction::Keep)
                } else {
                    Step::Update { key, refresh }
                }
            }
        };
        Plan::Write {
            destroy: w.destroyed,
            changes,
            id: w.id,
            lifetime: w.lifetime,
            step,
        }
    }

    async fn write(&self, plan: Plan, now: u64) -> Result<CookieAction, SessionError> {
        let store = self.store();
        let (destroy, changes, mut id, lifetime, step) = match plan {
            Plan::CookieOnly(action) => return Ok(action),
            Plan::Refresh(id, lifetime) => return self.refresh(id, lifetime, now).await,
            Plan::Write {
                destroy,
                changes,
                id,
                lifetime,
                step,
            } => (destroy, changes, id, lifetime, step),
        };
        if let Some(key) = destroy {
            store.destroy(&key).await?;
        }
        // A new id is drawn only when one is needed, and again on a collision.
        let mut id = move |fresh: bool| -> SessionId {
            if fresh {
                id = None;
            }
            *id.get_or_insert_with(SessionId::generate)
        };
        match step {
            Step::CookieOnly(action) => Ok(action),
            Step::Cycle { old } => {
                for draw in 0..ID_DRAWS {
                    let new = id(draw > 0);
                    if store.cycle(&old, &new.store_key(), &changes, now).await? {
                        return Ok(self.signed(&new, lifetime, now));
                    }
                    if store.load(&old, now).await?.is_none() {
                        return Ok(CookieAction::Remove);
                    }
                }
                Err(no_free_id())
            }
            Step::Create { created } => {
                for draw in 0..ID_DRAWS {
                    let new = id(draw > 0);
                    if store
                        .create(&new.store_key(), created, &changes, now)
                        .await?
                    {
                        return Ok(self.signed(&new, lifetime, now));
                    }
                }
                Err(no_free_id())
            }
            Step::Update { key, refresh } => {
                let updated = store.update(&key, &changes, now).await?;
                Ok(self.cookie_after_update(updated, refresh, Some(id(false)), lifetime, now))
            }
        }
    }
}

fn no_free_id() -> SessionError {
    StoreError::new(StoreErrorKind::Conflict, "no free session id").into()
}
