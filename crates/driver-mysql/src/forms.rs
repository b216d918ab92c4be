//! MySQL's and MariaDB's own forms of godwit's statements: an update joins the table to its
//! rows as a derived table of `SELECT … UNION ALL SELECT …`, an upsert is
//! `ON DUPLICATE KEY UPDATE`.

use std::time::Duration;

use godwit_driver::forms::{
    aliases, flat_params, leading_words, outside_key, read_aliases, values_source,
};
use godwit_driver::{
    ColumnInfo, Conflict, Dialect, Error, SqlForms, SqlType, UpdateFromRows, Value,
};

/// MySQL's forms.
pub(crate) struct MySqlForms;

/// `expr` converted to the character set and collation of a text column, so that a value sent
/// in the connection's character set compares with the column's values (a mix of collations is
/// otherwise refused). `None` for a collation name that is not a plain word.
fn convert_to(collation: &str, expr: &str) -> Option<String> {
    let charset = charset(collation)?;
    Some(format!(
        "CONVERT({expr} USING {charset}) COLLATE {collation}"
    ))
}

/// Whether `stored`, a value of `column`, is still `read`, the value the database returned for
/// it (bound as [`read_param`] makes it): NULL-safe (`<=>`), and byte for byte, so that a change
/// a collation ignores ('abc' to 'ABC', a trailing space) counts. Values are compared as the
/// text the server makes of both sides (text converted back into the column's character set
/// first, as it arrives in the connection's), except floats, dates and times: a float's text is
/// rounded, and a time's carries the column's fractional digits, so those compare as values of
/// their type, parsed from exact text, which for them is exact.
fn unchanged(column: &ColumnInfo, stored: &str, read: &str) -> String {
    let typed = match column.sql_type() {
        SqlType::Float => Some("DOUBLE"),
        SqlType::Date => Some("DATE"),
        SqlType::Time => Some("TIME(6)"),
        SqlType::Timestamp | SqlType::TimestampTz => Some("DATETIME(6)"),
        _ => None,
    };
    if let Some(typed) = typed {
        return format!("{stored} <=> CAST({read} AS {typed})");
    }
    // MariaDB's UUID and INET types arrive as their text but are stored (and cast to binary)
    // as their bytes.
    let stored_as_text = column.sql_type() == SqlType::Uuid || column.data_type.starts_with("inet");
    if stored_as_text {
        return format!("CAST(CAST({stored} AS CHAR) AS BINARY) <=> CAST({read} AS BINARY)");
    }
    let read = column.collation.as_deref().and_then(charset).map_or_else(
        || read.to_string(),
        |cs| format!("CONVERT({read} USING {cs})"),
    );
    format!("CAST({stored} AS BINARY) <=> CAST({read} AS BINARY)")
}

/// A value read, as an optimistic write binds it for [`unchanged`]: numbers, dates and times as
/// exact text (every digit of a float's value, six of a second's fraction). Bound as they are,
/// their types would decide the derived table's column types, and MariaDB gives a column that
/// also holds a NULL a text type, into which it writes a bound time without its fraction.
fn read_param(value: &Value) -> Value {
    let text = match value {
        Value::Int(n) => n.to_string(),
        // Rust writes the shortest text that reads back as the same float.
        Value::Float(f) => f.to_string(),
        Value::Date(d) => d.format("%Y-%m-%d").to_string(),
        Value::Time(t) => t.format("%H:%M:%S%.6f").to_string(),
        Value::Timestamp(t) => t.format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
        Value::TimestampTz(t) => t.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
        other => return other.clone(),
    };
    Value::Text(text)
}

/// The character set of a collation whose name is a plain word (`utf8mb4_general_ci`).
fn charset(collation: &str) -> Option<&str> {
    let plain = !collation.is_empty()
        && collation
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    plain.then(|| collation.split('_').next().unwrap_or(collation))
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
        let read = update.read.unwrap_or_default();
        let first: Vec<String> = std::iter::once("? AS godwit_k".to_string())
            .chain(aliases(n).iter().map(|a| format!("? AS {a}")))
            .chain(read_aliases(read.len()).iter().map(|a| format!("? AS {a}")))
            .collect();
        let width = first.len();
        let mut tuples = vec![first.join(", ")];
        tuples.extend((1..rows.len()).map(|_| vec!["?"; width].join(", ")));
        // A parameter arrives in the connection's character set; a key of another one must be
        // compared in its own, or MySQL refuses the mix of collations.
        let joined = update
            .key
            .collation
            .as_deref()
            .and_then(|collation| convert_to(collation, "godwit_v.godwit_k"))
            .unwrap_or_else(|| "godwit_v.godwit_k".to_string());
        let t = self.quote(update.table);
        let checks: String = read
            .iter()
            .zip(read_aliases(read.len()))
            .map(|(column, alias)| {
                let stored = format!("{t}.{}", self.quote(&column.name));
                format!(
                    " AND {}",
                    unchanged(column, &stored, &format!("godwit_v.{alias}"))
                )
            })
            .collect();
        let sql = format!(
            "UPDATE {t} JOIN (SELECT {}) AS godwit_v ON {t}.{} = {joined}{checks} SET {}",
            tuples.join(" UNION ALL SELECT "),
            self.quote(&update.key.name),
            update.set_list(Dialect::MySql, |_| String::new())
        );
        let mut params = flat_params(rows);
        if !read.is_empty() {
            let width = 1 + n + read.len();
            for row in params.chunks_mut(width) {
                for value in &mut row[1 + n..] {
                    *value = read_param(value);
                }
            }
        }
        (sql, params)
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

    /// Besides DDL, MySQL and MariaDB commit on their own for statements such as `GRANT`,
    /// `LOCK TABLES`, `ANALYZE TABLE` or a procedure that commits: only plain reads and
    /// writes are known to be undone by a rollback.
    fn outlives_rollback(&self, sql: &str) -> Option<&'static str> {
        if self.needs_autocommit(sql) {
            return Some("MySQL and MariaDB commit DDL on their own, so a rollback cannot undo it");
        }
        let words = leading_words(sql);
        let first = words.first().map(String::as_str).unwrap_or("");
        let undone = matches!(
            first,
            "INSERT" | "UPDATE" | "DELETE" | "REPLACE" | "SELECT" | "WITH" | "VALUES" | "TABLE"
        );
        (!undone).then_some(
            "MySQL and MariaDB commit some statements on their own (GRANT, LOCK TABLES, a procedure that commits, …); only INSERT, UPDATE, DELETE, REPLACE and SELECT are known to roll back",
        )
    }

    /// By error number: no such table, unknown column, no such function or procedure, no
    /// such database.
    fn missing_object(&self, error: &Error) -> bool {
        matches!(error.code(), Some("1146" | "1054" | "1305" | "1049"))
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
