//! Indexed keys (`indexed_keys = ["user_id"]`): a partial hash index per configured key on the
//! values it holds, so that finding a user's sessions (log out everywhere, a "your devices"
//! page) is an index lookup instead of a scan of every session's data. A hash index keeps a
//! 4-byte hash code per value, whatever the value's size, and only rows of that key enter it;
//! other keys' writes pay nothing for it.

use rocket_db_pools::sqlx::{self, Executor, PgPool};
use sha2::{Digest, Sha256};

use super::pool::classify;
use crate::error::{StoreError, StoreErrorKind};
use crate::store::sql::{literal, WhereStatements};

/// Finds the sessions whose key `$1` holds the value `$2`, and deletes them when the claim's
/// fence lets the statement through (`$3` is this instance); the deleted sessions' keys and
/// whether the fence let it through.
pub(super) const DESTROY_WHERE: &str = concat!(
    "WITH ",
    fence!(3),
    ", d AS (
        DELETE FROM rocket_sessions s USING rocket_session_data d
         WHERE d.session_id = s.id AND d.name = $1 AND d.value = $2
           AND EXISTS (SELECT FROM fence)
        RETURNING s.key
     ) SELECT array(SELECT key FROM d), EXISTS (SELECT FROM fence)"
);

/// The live sessions (at `$3`) whose key `$1` holds the value `$2`, with their times.
pub(super) const LIST_WHERE: &str =
    "SELECT s.key, s.created_at, COALESCE(s.active_at, s.created_at), s.expires_at
       FROM rocket_sessions s JOIN rocket_session_data d ON d.session_id = s.id
      WHERE d.name = $1 AND d.value = $2 AND s.expires_at > $3";

/// The statements that find sessions by a key's value, narrowed for each configured indexed
/// key (see [`WhereStatements`]).
pub(super) fn statements(keys: &[String]) -> WhereStatements {
    WhereStatements::new(keys, DESTROY_WHERE, LIST_WHERE, "d.name = $1")
}

/// Creates the index of every indexed key of `statements` that has none (or whose build a crash
/// left invalid), without blocking writes (`CREATE INDEX CONCURRENTLY`), one instance at a
/// time. An index of a key no longer configured is left in place.
pub(super) async fn create_indexes(
    statements: &WhereStatements,
    pool: &PgPool,
    lock: i64,
) -> Result<(), StoreError> {
    let keys: Vec<&str> = statements.keys().collect();
    if keys.is_empty() {
        return Ok(());
    }
    // A connection of its own: CONCURRENTLY runs outside any transaction, and the advisory
    // lock is the session's until released.
    let mut conn = pool.acquire().await.map_err(classify)?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(lock)
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
    let created = async {
        for key in keys {
            let name = index_name(key);
            let valid: Option<bool> = sqlx::query_scalar(
                "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass($1)",
            )
            .bind(&name)
            .fetch_optional(&mut *conn)
            .await
            .map_err(classify)?;
            let mut ddl = Vec::new();
            if valid == Some(false) {
                ddl.push(format!("DROP INDEX CONCURRENTLY IF EXISTS {name}"));
            }
            if valid != Some(true) {
                ddl.push(format!(
                    "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON rocket_session_data \
                         USING hash (value) WHERE name = {}",
                    literal(key)
                ));
            }
            for sql in ddl {
                conn.execute(sql.as_str()).await.map_err(|e| {
                    StoreError::new(
                        StoreErrorKind::Other,
                        format!("creating the index of `store.indexed_keys` key `{key}` ({name})"),
                    )
                    .with_source(e)
                })?;
            }
        }
        Ok::<_, StoreError>(())
    }
    .await;
    // Unlocked whether or not the indexes were made.
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(lock)
        .execute(&mut *conn)
        .await;
    created?;
    unlocked.map(|_| ()).map_err(classify)
}

/// The index of `key`'s values: named by a digest of the key, which may hold any character.
pub(super) fn index_name(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    format!("rocket_session_data_key_{}", hex::encode(&digest[..8]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_indexed_key_narrows_the_statements_by_a_literal_and_others_keep_the_general_ones() {
        let keys = statements(&["user_id".into(), "it's".into()]);
        assert!(keys
            .destroy_where("user_id")
            .contains("d.name = $1 AND d.name = 'user_id' AND d.value = $2"));
        assert!(keys
            .list_where("it's")
            .contains("d.name = $1 AND d.name = 'it''s' AND d.value = $2"));
        assert_eq!(keys.destroy_where("theme"), DESTROY_WHERE);
        assert_eq!(keys.list_where("theme"), LIST_WHERE);
        assert_ne!(index_name("user_id"), index_name("it's"));
    }
}
