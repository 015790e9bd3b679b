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
];

/// Serialises concurrent migrations across instances (any constant no other app uses).
const MIGRATION_LOCK: i64 = 0x726f_636b_6573_7373;

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
        let tables: &[&str] = match unlogged {
            true => &[
                "rocket_session_data",
                "rocket_sessions",
                "rocket_sessions_claim",
                "rocket_sessions_instances",
            ],
            false => &[
                "rocket_sessions",
                "rocket_session_data",
                "rocket_sessions_claim",
                "rocket_sessions_instances",
            ],
        };
        for table in tables {
            let persistence: String = sqlx::query_scalar(
                "SELECT relpersistence::text FROM pg_class WHERE oid = $1::regclass",
            )
            .bind(table)
            .fetch_one(&mut *tx)
            .await
            .map_err(classify)?;
            let sql = match (unlogged, persistence.as_str()) {
                (true, "p") => format!("ALTER TABLE {table} SET UNLOGGED"),
                (false, "u") => format!("ALTER TABLE {table} SET LOGGED"),
                _ => continue,
            };
            tx.execute(sql.as_str()).await.map_err(classify)?;
        }
        tx.commit().await.map_err(classify)
    }
}
