//! What the SQL stores (PostgreSQL, SQLite) share: times as SQL integers, key names as SQL
//! literals, and the statements that find sessions by a key's value.

use std::collections::HashMap;

/// Unix seconds as an SQL `bigint`/`INTEGER` (past `i64::MAX`, `i64::MAX`).
pub(crate) fn secs(t: u64) -> i64 {
    t.min(i64::MAX as u64) as i64
}

/// Unix seconds read back from SQL (a negative value, which the stores never write, as 0).
pub(crate) fn unsigned(t: i64) -> u64 {
    t.max(0) as u64
}

/// `key` as an SQL string literal (standard-conforming strings, PostgreSQL's default since 9.1
/// and SQLite's only kind: only a quote needs doubling).
pub(crate) fn literal(key: &str) -> String {
    format!("'{}'", key.replace('\'', "''"))
}

/// The statements that delete and list the sessions where a key holds a value, and for each
/// indexed key the same statements with the key also written as a literal
/// (`d.name = $1 AND d.name = 'user_id'`): a prepared statement's plan can then use that key's
/// partial index, which it cannot prove usable from a parameter.
pub(crate) struct WhereStatements {
    destroy: &'static str,
    list: &'static str,
    narrowed: HashMap<String, (String, String)>,
}

impl WhereStatements {
    /// The statements `destroy` and `list`, which name the key by `name_term` (`d.name = $1`),
    /// narrowed for each of `keys`.
    pub(crate) fn new(
        keys: &[String],
        destroy: &'static str,
        list: &'static str,
        name_term: &str,
    ) -> WhereStatements {
        let narrowed = keys
            .iter()
            .map(|key| {
                let narrowed = format!("{name_term} AND d.name = {}", literal(key));
                let statements = (
                    destroy.replace(name_term, &narrowed),
                    list.replace(name_term, &narrowed),
                );
                (key.clone(), statements)
            })
            .collect();
        WhereStatements {
            destroy,
            list,
            narrowed,
        }
    }

    /// The statement deleting the sessions where `key` holds a value.
    pub(crate) fn destroy_where(&self, key: &str) -> &str {
        self.narrowed.get(key).map_or(self.destroy, |s| &s.0)
    }

    /// The statement listing the sessions where `key` holds a value.
    pub(crate) fn list_where(&self, key: &str) -> &str {
        self.narrowed.get(key).map_or(self.list, |s| &s.1)
    }

    /// The indexed keys.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &str> {
        self.narrowed.keys().map(String::as_str)
    }
}
