//! SQLite's own forms of godwit's statements: an update reads its rows from a `VALUES` list
//! named in a `WITH`, an upsert is `ON CONFLICT`.

use godwit_driver::forms::{
    aliases, flat_params, leading_words, on_conflict_clause, read_aliases, values_source,
};
use godwit_driver::{ColumnInfo, Conflict, Dialect, Error, SqlForms, UpdateFromRows, Value};

/// SQLite's forms.
pub(crate) struct SqliteForms;

impl SqlForms for SqliteForms {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    /// `BEGIN IMMEDIATE` already holds the only write lock.
    fn lock_clause(&self) -> &'static str {
        ""
    }

    fn single_writer(&self) -> bool {
        true
    }

    fn update_from_rows(
        &self,
        update: &UpdateFromRows<'_>,
        rows: &[(Value, Vec<Value>)],
    ) -> (String, Vec<Value>) {
        let n = update.columns.len();
        let read = update.read.unwrap_or_default();
        let mut names = aliases(n);
        names.extend(read_aliases(read.len()));
        let tuples = vec![vec!["?"; names.len() + 1].join(", "); rows.len()];
        let t = self.quote(update.table);
        // Batches here hold the database's only write lock (`single_writer`), so they never
        // write optimistically; the check is written for the form's sake, byte for byte.
        let checks: String = read
            .iter()
            .zip(read_aliases(read.len()))
            .map(|(c, a)| {
                format!(
                    " AND {t}.{} IS godwit_v.{a} COLLATE BINARY",
                    self.quote(&c.name)
                )
            })
            .collect();
        let sql = format!(
            "WITH godwit_v(godwit_k, {}) AS (VALUES ({})) UPDATE {t} SET {} FROM godwit_v WHERE {} = godwit_v.godwit_k{checks}",
            names.join(", "),
            tuples.join("), ("),
            update.set_list(Dialect::Sqlite, |_| String::new()),
            self.quote(&update.key.name),
        );
        (sql, flat_params(rows))
    }

    fn insert_source(&self, _columns: &[&ColumnInfo], rows: &[Vec<Value>]) -> (String, Vec<Value>) {
        values_source(rows)
    }

    fn conflict_clause(&self, conflict: Conflict<'_>, names: &[String]) -> Option<String> {
        on_conflict_clause(Dialect::Sqlite, conflict, names)
    }

    fn needs_autocommit(&self, sql: &str) -> bool {
        leading_words(sql).first().is_some_and(|w| w == "VACUUM")
    }

    fn outlives_rollback(&self, sql: &str) -> Option<&'static str> {
        self.needs_autocommit(sql)
            .then_some("SQLite refuses VACUUM inside a transaction")
    }

    /// SQLite gives every such error the same code (SQLITE_ERROR): by its message.
    fn missing_object(&self, error: &Error) -> bool {
        let message = error.message();
        ["no such table", "no such column", "no such function"]
            .iter()
            .any(|m| message.contains(m))
    }
}
