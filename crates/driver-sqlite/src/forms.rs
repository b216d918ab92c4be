//! SQLite's own forms of godwit's statements: an update reads its rows from a `VALUES` list
//! named in a `WITH`, an upsert is `ON CONFLICT`.

use godwit_driver::forms::{
    aliases, flat_params, leading_words, on_conflict_clause, values_source,
};
use godwit_driver::{ColumnInfo, Conflict, Dialect, SqlForms, UpdateFromRows, Value};

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

    fn update_from_rows(
        &self,
        update: &UpdateFromRows<'_>,
        rows: &[(Value, Vec<Value>)],
    ) -> (String, Vec<Value>) {
        let n = update.columns.len();
        let tuples = vec![vec!["?"; n + 1].join(", "); rows.len()];
        let sql = format!(
            "WITH godwit_v(godwit_k, {}) AS (VALUES ({})) UPDATE {} SET {} FROM godwit_v WHERE {} = godwit_v.godwit_k",
            aliases(n).join(", "),
            tuples.join("), ("),
            self.quote(update.table),
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
}
