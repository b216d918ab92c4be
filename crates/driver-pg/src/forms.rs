//! PostgreSQL's own forms of godwit's statements: rows travel as one `text[]` parameter per
//! column, unnested and cast to each column's type, so a statement's text depends only on its
//! columns and is prepared once, whatever the number of rows.

use std::time::Duration;

use godwit_driver::forms::{aliases, leading_words, on_conflict_clause, VERSION_ALIAS};
use godwit_driver::{ColumnInfo, Conflict, Dialect, Error, SqlForms, UpdateFromRows, Value};

use crate::pg_text::pg_text;

/// PostgreSQL's forms.
pub(crate) struct PgForms;

/// What follows a value of `column`: a cast to its type, where a parameter's type would
/// otherwise be guessed.
fn cast(column: &ColumnInfo) -> String {
    column
        .cast
        .as_deref()
        .map_or_else(String::new, |cast| format!("::{cast}"))
}

/// `$1::text[], $2::text[], …` for `n` columns.
fn arrays(n: usize) -> String {
    let arrays: Vec<String> = (1..=n).map(|i| format!("${i}::text[]")).collect();
    arrays.join(", ")
}

impl SqlForms for PgForms {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn update_from_rows(
        &self,
        update: &UpdateFromRows<'_>,
        rows: &[(Value, Vec<Value>)],
    ) -> (String, Vec<Value>) {
        let n = update.columns.len();
        // An optimistic write carries each row's `xmin` as read: a row any transaction changed
        // since then has another, and is not updated.
        let versioned = update.read.is_some();
        let width = n + 1 + usize::from(versioned);
        let mut columns: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(rows.len()); width];
        for (key, values) in rows {
            columns[0].push(pg_text(key));
            for (column, value) in columns[1..].iter_mut().zip(values) {
                column.push(pg_text(value));
            }
        }
        let mut names = aliases(n);
        let mut check = String::new();
        if versioned {
            names.push(VERSION_ALIAS.to_string());
            check = format!(" AND xmin = godwit_v.{VERSION_ALIAS}::xid");
        }
        let sql = format!(
            "UPDATE {} SET {} FROM unnest({}) AS godwit_v(godwit_k, {}) WHERE {} = godwit_v.godwit_k{}{check}",
            self.quote(update.table),
            update.set_list(Dialect::Postgres, cast),
            arrays(width),
            names.join(", "),
            self.quote(&update.key.name),
            cast(update.key)
        );
        (sql, columns.into_iter().map(Value::TextArray).collect())
    }

    /// `xmin`, the transaction that wrote the row's current version: any change to the row,
    /// even one that writes the same values, gives it another (a frozen row keeps its `xmin`).
    fn row_version(&self) -> Option<&'static str> {
        Some("xmin::text")
    }

    /// One `text[]` parameter, so the statement's text is the same for any number of keys.
    fn key_in(&self, key: &ColumnInfo, keys: &[Value], first_param: usize) -> (String, Vec<Value>) {
        let sql = format!(
            "{} = ANY(${first_param}::text[]{}[])",
            self.quote(&key.name),
            cast(key)
        );
        let texts = keys.iter().map(pg_text).collect();
        (sql, vec![Value::TextArray(texts)])
    }

    fn insert_source(&self, columns: &[&ColumnInfo], rows: &[Vec<Value>]) -> (String, Vec<Value>) {
        let mut arrays_of: Vec<Vec<Option<String>>> =
            vec![Vec::with_capacity(rows.len()); columns.len()];
        for values in rows {
            for (column, value) in arrays_of.iter_mut().zip(values) {
                column.push(pg_text(value));
            }
        }
        let aliases = aliases(columns.len());
        let selected: Vec<String> = columns
            .iter()
            .zip(&aliases)
            .map(|(c, a)| format!("{a}{}", cast(c)))
            .collect();
        let sql = format!(
            " SELECT {} FROM unnest({}) AS godwit_v({})",
            selected.join(", "),
            arrays(columns.len()),
            aliases.join(", ")
        );
        (sql, arrays_of.into_iter().map(Value::TextArray).collect())
    }

    fn conflict_clause(&self, conflict: Conflict<'_>, names: &[String]) -> Option<String> {
        on_conflict_clause(Dialect::Postgres, conflict, names)
    }

    /// The planner is steered away from sequential and bitmap scans: with a `where` filter it
    /// would otherwise often judge a full scan plus sort cheaper than reading the key index in
    /// order up to the LIMIT, and every claim would read the whole table; JIT and parallel
    /// workers only add start-up time to a query that reads one batch's worth of the index.
    fn walk_session(&self, statement_timeout: Duration) -> Option<String> {
        Some(format!(
            "SET enable_seqscan = off; SET enable_bitmapscan = off; SET enable_sort = off; \
             SET jit = off; SET max_parallel_workers_per_gather = 0; \
             SET statement_timeout = {}",
            statement_timeout.as_nanos().div_ceil(1_000_000).max(1)
        ))
    }

    fn lease_session(&self, lease: Duration) -> Option<String> {
        Some(format!(
            "SET idle_in_transaction_session_timeout = {}",
            lease.as_millis()
        ))
    }

    fn needs_autocommit(&self, sql: &str) -> bool {
        let words = leading_words(sql);
        let w = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
        w(0) == "VACUUM"
            || (matches!(w(0), "CREATE" | "DROP" | "REINDEX")
                && words.iter().any(|x| x == "CONCURRENTLY"))
            || (w(0) == "CREATE" && w(1) == "UNIQUE" && w(3) == "CONCURRENTLY")
            || (w(0) == "CREATE" && w(1) == "DATABASE")
            || (w(0) == "ALTER" && w(1) == "SYSTEM")
    }

    fn outlives_rollback(&self, sql: &str) -> Option<&'static str> {
        if !self.needs_autocommit(sql) {
            return None;
        }
        let words = leading_words(sql);
        Some(if words.first().is_some_and(|w| w == "VACUUM") {
            "PostgreSQL refuses VACUUM inside a transaction"
        } else if words.iter().any(|w| w == "CONCURRENTLY") {
            "PostgreSQL refuses CONCURRENTLY inside a transaction (such a build commits in steps of its own)"
        } else {
            "PostgreSQL refuses it inside a transaction"
        })
    }

    /// By SQLSTATE: undefined table, column, object, function, schema.
    fn missing_object(&self, error: &Error) -> bool {
        matches!(
            error.code(),
            Some("42P01" | "42703" | "42704" | "42883" | "3F000")
        )
    }

    fn exact_types(&self) -> bool {
        true
    }
}
