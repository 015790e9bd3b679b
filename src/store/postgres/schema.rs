//! The store's schema: the migrations in `migrations/`, applied at launch under an advisory
//! lock, and the tables' persistence (`unlogged`).

use rocket_db_pools::sqlx::{self, Executor};

use super::pool::classify;
use super::PostgresStore;
use crate::error::{StoreError, StoreErrorKind};

/// The schema, as `(version, description, SQL)`, in the order it is applied.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        20261125000000,
        "rocket_sessions",
        include_str!("../../../migrations/20261125000000_rocket_sessions.sql"),
    ),
    (
        20261126000000,
        "rocket_sessions_claim",
        include_str!("../../../migrations/20261126000000_rocket_sessions_claim.sql"),
    ),
    (
        20261202000000,
        "rocket_sessions_active",
        include_str!("../../../migrations/20261202000000_rocket_sessions_active.sql"),
    ),
    (
        20261206000000,
        "rocket_sessions_edit_by_hand",
        include_str!("../../../migrations/20261206000000_rocket_sessions_edit_by_hand.sql"),
    ),
    (
        20261206000001,
        "rocket_sessions_fence",
        include_str!("../../../migrations/20261206000001_rocket_sessions_fence.sql"),
    ),
];

/// The store's tables, whose persistence follows `unlogged`.
const TABLES: &[&str] = &[
    "rocket_sessions",
    "rocket_session_data",
    "rocket_sessions_claim",
    "rocket_sessions_instances",
];

/// Serialises concurrent migrations across instances (any constant no other app uses).
pub(super) const MIGRATION_LOCK: i64 = 0x726f_636b_6573_7373;

impl PostgresStore {
    /// Applies what `migrations/` holds and is not yet applied, under an advisory lock so that
    /// instances starting together do it once, and sets the tables' persistence.
    pub(super) async fn migrate(&self, unlogged: bool) -> Result<(), StoreError> {
        let mut tx = self.db.pool.begin().await.map_err(classify)?;
        // "already exists, skipping" notices of a second start are noise in the app's log.
        tx.execute("SET LOCAL client_min_messages = warning")
            .await
            .map_err(classify)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        tx.execute(
            "CREATE TABLE IF NOT EXISTS rocket_sessions_schema (
                version     bigint PRIMARY KEY,
                description text NOT NULL,
                applied_at  timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(classify)?;
        // The tables that this launch's migrations create (those missing now).
        let created: Vec<String> =
            sqlx::query_scalar("SELECT t FROM unnest($1::text[]) t WHERE to_regclass(t) IS NULL")
                .bind(TABLES)
                .fetch_all(&mut *tx)
                .await
                .map_err(classify)?;
        let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM rocket_sessions_schema")
            .fetch_all(&mut *tx)
            .await
            .map_err(classify)?;
        for (version, description, sql) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            tx.execute(*sql).await.map_err(|e| {
                StoreError::new(
                    StoreErrorKind::Other,
                    format!("applying migration {version}_{description}"),
                )
                .with_source(e)
            })?;
            sqlx::query(
                "INSERT INTO rocket_sessions_schema (version, description) VALUES ($1, $2)",
            )
            .bind(version)
            .bind(description)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        }
        // A table referenced by a logged table cannot be unlogged, and a logged table cannot
        // reference an unlogged one, hence the orders. The claim's tables follow the sessions':
        // a change locks the claim's row, which in a logged table writes to the WAL, and would
        // make every change of an unlogged store wait for a WAL flush.
        let tables = persistence_order(unlogged);
        let mut differ = Vec::new();
        for table in tables {
            let persistence: String = sqlx::query_scalar(
                "SELECT relpersistence::text FROM pg_class WHERE oid = $1::regclass",
            )
            .bind(table)
            .fetch_one(&mut *tx)
            .await
            .map_err(classify)?;
            if (persistence == "u") != unlogged {
                differ.push(*table);
            }
        }
        // Tables this launch created are empty: giving them the configured persistence costs
        // nothing. Existing ones would be rewritten under an exclusive lock, holding every
        // instance's requests (in the middle of a rolling deploy, say): never implicitly.
        match differ.iter().all(|t| created.iter().any(|c| c == t)) {
            true => {
                for table in &differ {
                    let sql = format!("ALTER TABLE {table} SET {}", persistence_word(unlogged));
                    tx.execute(sql.as_str()).await.map_err(classify)?;
                }
            }
            false => return Err(persistence_differs(unlogged, &differ)),
        }
        tx.commit().await.map_err(classify)
    }
}

/// The tables in the order their persistence can be changed to `unlogged`'s.
fn persistence_order(unlogged: bool) -> &'static [&'static str] {
    match unlogged {
        true => &[
            "rocket_session_data",
            "rocket_sessions",
            "rocket_sessions_claim",
            "rocket_sessions_instances",
        ],
        false => TABLES,
    }
}

fn persistence_word(unlogged: bool) -> &'static str {
    match unlogged {
        true => "UNLOGGED",
        false => "LOGGED",
    }
}

/// The launch error for existing tables whose persistence is not what `store.unlogged` says:
/// what to run to change them deliberately, or which setting keeps them as they are.
fn persistence_differs(unlogged: bool, differ: &[&str]) -> StoreError {
    let statements: Vec<String> = persistence_order(unlogged)
        .iter()
        .filter(|t| differ.contains(t))
        .map(|t| format!("ALTER TABLE {t} SET {};", persistence_word(unlogged)))
        .collect();
    StoreError::new(
        StoreErrorKind::Other,
        format!(
            "`store.unlogged` is {unlogged}, but the session tables are {}; the store never \
             changes that itself, since it rewrites the tables under an exclusive lock that \
             holds every instance's requests. Either set `store.unlogged = {}`, or change them \
             deliberately at a quiet moment with: {}",
            persistence_word(!unlogged),
            !unlogged,
            statements.join(" ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::super::claim::{FENCE_LOCK, PROTOCOL};
    use super::MIGRATIONS;

    #[test]
    fn the_migrations_lock_the_fence_under_the_stores_key_and_protocol() {
        for (_, name, sql) in MIGRATIONS {
            if sql.contains("pg_advisory_xact_lock") {
                assert!(sql.contains(&FENCE_LOCK.to_string()), "{name}");
            }
            if sql.contains("FUNCTION rocket_sessions_fence") {
                assert!(sql.contains(&format!("protocol < {PROTOCOL}")), "{name}");
            }
        }
    }
}
