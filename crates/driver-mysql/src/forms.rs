//! MySQL's and MariaDB's own forms of godwit's statements: an update joins the table to its
//! rows as a derived table of `SELECT … UNION ALL SELECT …`, an upsert is
//! `ON DUPLICATE KEY UPDATE`.

use std::time::Duration;

use godwit_driver::forms::{aliases, flat_params, leading_words, outside_key, values_source};
use godwit_driver::{ColumnInfo, Conflict, Dialect, SqlForms, UpdateFromRows, Value};

/// MySQL's forms.
pub(crate) struct MySqlForms;

/// `expr` converted to the character set and collation of a text column, so that a value sent
/// in the connection's character set compares with the column's values (a mix of collations is
/// otherwise refused). `None` for a collation name that is not a plain word.
fn convert_to(collation: &str, expr: &str) -> Option<String> {
    let plain = !collation.is_empty()
        && collation
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !plain {
        return None;
    }
    let charset = collation.split('_').next().unwrap_or(collation);
    Some(format!(
        "CONVERT({expr} USING {charset}) COLLATE {collation}"
    ))
}

impl SqlForms for MySqlForms {
    fn dialect(&self) -> Dialect {
        Dialect::MySql
    }

    fn update_from_rows(
        &self,
        update: &UpdateFromRows<'_>,
        rows: &[(Value, Vec<Value>)],
    ) -> (String, Vec<Value>) {
        // The first row names the derived table's columns.
        let n = update.columns.len();
        let first: Vec<String> = std::iter::once("? AS godwit_k".to_string())
            .chain(aliases(n).iter().map(|a| format!("? AS {a}")))
            .collect();
        let mut tuples = vec![first.join(", ")];
        tuples.extend((1..rows.len()).map(|_| vec!["?"; n + 1].join(", ")));
        // A parameter arrives in the connection's character set; a key of another one must be
        // compared in its own, or MySQL refuses the mix of collations.
        let joined = update
            .key
            .collation
            .as_deref()
            .and_then(|collation| convert_to(collation, "godwit_v.godwit_k"))
            .unwrap_or_else(|| "godwit_v.godwit_k".to_string());
        let t = self.quote(update.table);
        let sql = format!(
            "UPDATE {t} JOIN (SELECT {}) AS godwit_v ON {t}.{} = {joined} SET {}",
            tuples.join(" UNION ALL SELECT "),
            self.quote(&update.key.name),
            update.set_list(Dialect::MySql, |_| String::new())
        );
        (sql, flat_params(rows))
    }

    fn insert_source(&self, _columns: &[&ColumnInfo], rows: &[Vec<Value>]) -> (String, Vec<Value>) {
        values_source(rows)
    }

    /// `INSERT IGNORE` would also hide truncations: an ignored row is an update that changes
    /// nothing.
    fn conflict_clause(&self, conflict: Conflict<'_>, names: &[String]) -> Option<String> {
        if conflict == Conflict::Error {
            return Some(String::new());
        }
        let first = self.quote(names.first().map_or("", String::as_str));
        let set: Vec<String> = match conflict {
            Conflict::Error => Vec::new(),
            Conflict::Ignore => vec![format!("{first} = {first}")],
            Conflict::Update(key) => {
                let others = outside_key(names, key);
                if others.is_empty() {
                    vec![format!("{first} = {first}")]
                } else {
                    others
                        .iter()
                        .map(|n| format!("{} = VALUES({})", self.quote(n), self.quote(n)))
                        .collect()
                }
            }
        };
        Some(format!(" ON DUPLICATE KEY UPDATE {}", set.join(", ")))
    }

    /// MySQL's only idle limit, `wait_timeout`, covers idle sessions too: the pool leaves
    /// connections idle for longer behind.
    fn lease_session(&self, lease: Duration) -> Option<String> {
        Some(format!(
            "SET SESSION wait_timeout = {}",
            lease.as_millis().div_ceil(1000)
        ))
    }

    /// MySQL commits DDL on its own, inside a transaction or not: it runs as what it is.
    fn needs_autocommit(&self, sql: &str) -> bool {
        let words = leading_words(sql);
        matches!(
            words.first().map(String::as_str).unwrap_or(""),
            "CREATE" | "ALTER" | "DROP" | "RENAME" | "TRUNCATE"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_to_plain_collations_only() {
        assert_eq!(
            convert_to("utf8mb4_bin", "k").as_deref(),
            Some("CONVERT(k USING utf8mb4) COLLATE utf8mb4_bin")
        );
        assert_eq!(convert_to("bad name", "k"), None);
    }
}
