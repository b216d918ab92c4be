//! The statements each database writes in a form of its own, behind one interface.
//!
//! A batch asks for "the statement that updates these columns of a table from N rows keyed by
//! its key" and binds the values it gets back, without knowing which database it talks to;
//! each backend crate implements [`SqlForms`] once (PostgreSQL's `unnest` of `text[]`
//! parameters, SQLite's `VALUES`, MySQL's `UNION ALL`), as sqlx keeps `COPY` inside
//! `sqlx-postgres`. The statements' texts depend only on the columns and the number of rows,
//! so that prepared statements are reused from batch to batch.

use std::time::Duration;

use crate::{quote_ident, ColumnInfo, Dialect, Error, Value};

/// What an insert does with a row whose unique key the table holds already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict<'a> {
    /// Nothing: the database refuses the row.
    Error,
    /// The stored row stays as it is.
    Ignore,
    /// The stored row takes the inserted row's other columns, matched on the given unique key
    /// (the table's primary key or first unique index; empty when it has none).
    Update(&'a [String]),
}

/// A set-based update: the columns `columns` of `table` take new values from rows matched on
/// `key`.
#[derive(Debug, Clone, Copy)]
pub struct UpdateFromRows<'a> {
    /// The table, as the plan names it.
    pub table: &'a str,
    /// The key column the rows are matched on.
    pub key: &'a ColumnInfo,
    /// The columns set, in the order of each row's values.
    pub columns: &'a [&'a ColumnInfo],
    /// For an optimistic write (of rows read without locks): the columns the rows were read
    /// with, the key aside. A row is then updated only while it still holds what was read, and
    /// each row's values carry, after its new values, what the database compares: the row's
    /// version as read where it has one ([`SqlForms::row_version`]), else each of these
    /// columns' values as the database returned them. `None`: every row is updated (the rows
    /// were read under lock).
    pub read: Option<&'a [&'a ColumnInfo]>,
}

impl UpdateFromRows<'_> {
    /// `column = godwit_v.godwit_1, …`: each column set from its alias in the rows, with
    /// `cast(column)` after it.
    pub fn set_list(&self, dialect: Dialect, cast: impl Fn(&ColumnInfo) -> String) -> String {
        let set: Vec<String> = self
            .columns
            .iter()
            .zip(aliases(self.columns.len()))
            .map(|(c, a)| {
                format!(
                    "{} = godwit_v.{a}{}",
                    quote_ident(dialect, &c.name),
                    cast(c)
                )
            })
            .collect();
        set.join(", ")
    }
}

/// Each row's key and values, one row after another: the parameters of a statement that binds
/// every value on its own.
pub fn flat_params(rows: &[(Value, Vec<Value>)]) -> Vec<Value> {
    let width = rows.first().map_or(0, |(_, values)| values.len() + 1);
    let mut params = Vec::with_capacity(rows.len() * width);
    for (key, values) in rows {
        params.push(key.clone());
        params.extend(values.iter().cloned());
    }
    params
}

/// The SQL one database writes in a form of its own. Reached from a connection
/// ([`crate::Conn::forms`]); implemented once per backend.
pub trait SqlForms: Send + Sync {
    /// The dialect the statements are written in.
    fn dialect(&self) -> Dialect;

    /// `name` quoted as an identifier.
    fn quote(&self, name: &str) -> String {
        quote_ident(self.dialect(), name)
    }

    /// What ends a read that locks the rows it returns until the transaction ends; empty where
    /// the transaction already holds the only write lock.
    fn lock_clause(&self) -> &'static str {
        " FOR UPDATE"
    }

    /// Whether a write transaction holds the database's only write lock (SQLite's `BEGIN
    /// IMMEDIATE`): its rows need no locks of their own, and reading them before the
    /// transaction would spare the application no wait.
    fn single_writer(&self) -> bool {
        false
    }

    /// An expression read beside each row, as text, whose value changes whenever the row does
    /// (PostgreSQL's `xmin`): an optimistic write compares it instead of every column read.
    /// `None`: the write compares every column read.
    fn row_version(&self) -> Option<&'static str> {
        None
    }

    /// A condition choosing the rows whose `key` is one of `keys`, its parameters numbered from
    /// `first_param`, with the parameters to bind.
    fn key_in(&self, key: &ColumnInfo, keys: &[Value], first_param: usize) -> (String, Vec<Value>) {
        let dialect = self.dialect();
        let params: Vec<String> = (0..keys.len())
            .map(|i| dialect.param(first_param + i))
            .collect();
        let sql = format!("{} IN ({})", self.quote(&key.name), params.join(", "));
        (sql, keys.to_vec())
    }

    /// One statement that writes `rows` (each a key and the new values in `update.columns`
    /// order, then what an optimistic write compares: see [`UpdateFromRows::read`]), with the
    /// parameters to bind in the form the statement takes them.
    fn update_from_rows(
        &self,
        update: &UpdateFromRows<'_>,
        rows: &[(Value, Vec<Value>)],
    ) -> (String, Vec<Value>);

    /// What follows `INSERT INTO table (columns)`: the rows (values in `columns` order) as the
    /// database takes many at once, with the parameters to bind.
    fn insert_source(&self, columns: &[&ColumnInfo], rows: &[Vec<Value>]) -> (String, Vec<Value>);

    /// What an insert of `names` adds for `conflict`: nothing, a `DO NOTHING` or an upsert.
    /// `None` when the database must name the unique key of an upsert and `conflict` has none.
    fn conflict_clause(&self, conflict: Conflict<'_>, names: &[String]) -> Option<String>;

    /// One multi-row insert of `rows` (values in `columns` order) into `table`, with
    /// `conflict`'s clause; `None` as for [`SqlForms::conflict_clause`].
    fn insert_rows(
        &self,
        table: &str,
        columns: &[&ColumnInfo],
        conflict: Conflict<'_>,
        rows: &[Vec<Value>],
    ) -> Option<(String, Vec<Value>)> {
        let dialect = self.dialect();
        let names: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
        let (source, params) = self.insert_source(columns, rows);
        let clause = self.conflict_clause(conflict, &names)?;
        let quoted: Vec<String> = names.iter().map(|n| quote_ident(dialect, n)).collect();
        let sql = format!(
            "INSERT INTO {} ({}){source}{clause}",
            quote_ident(dialect, table),
            quoted.join(", "),
        );
        Some((sql, params))
    }

    /// Settings for the connection that walks a step's keys, run once when it opens, with
    /// `statement_timeout` as each statement's limit; `None` when it needs none.
    fn walk_session(&self, _statement_timeout: Duration) -> Option<String> {
        None
    }

    /// Settings for a pooled batch connection, run once when it opens: `lease` (at least a
    /// second) as how long its transaction may sit idle; `None` when the database has no such
    /// limit.
    fn lease_session(&self, _lease: Duration) -> Option<String> {
        None
    }

    /// Whether `sql` cannot run atomically inside a transaction: the database refuses it
    /// there, or commits it on its own.
    fn needs_autocommit(&self, sql: &str) -> bool;

    /// Why a transaction that is rolled back would not undo all of `sql`: the database
    /// refuses it inside a transaction, or may commit it on its own. `None` when a rollback
    /// undoes it (what a statement does outside the database, a sequence it advances, is not
    /// the database's to say). A dry run runs only such statements.
    fn outlives_rollback(&self, sql: &str) -> Option<&'static str>;

    /// Whether `error` says that a table, column or other object the statement names does
    /// not exist.
    fn missing_object(&self, error: &Error) -> bool;

    /// Whether two columns with the same [`ColumnInfo::data_type`] and [`ColumnInfo::cast`]
    /// hold exactly the same values (length and precision included), so that a copy between
    /// them on this kind of database needs no fitting.
    fn exact_types(&self) -> bool {
        false
    }
}

/// The first four words of `sql`, upper case: enough to tell the statements that refuse a
/// transaction.
pub fn leading_words(sql: &str) -> Vec<String> {
    sql.split_whitespace()
        .take(4)
        .map(|w| w.to_ascii_uppercase())
        .collect()
}

/// `VALUES (?, ?), (?, ?)`: the rows as bound parameters of a database with `?` placeholders.
pub fn values_source(rows: &[Vec<Value>]) -> (String, Vec<Value>) {
    let width = rows.first().map_or(0, Vec::len);
    let mut params = Vec::with_capacity(rows.len() * width);
    let mut tuples = Vec::with_capacity(rows.len());
    for values in rows {
        let cells = vec!["?"; values.len()];
        params.extend(values.iter().cloned());
        tuples.push(format!("({})", cells.join(", ")));
    }
    (format!(" VALUES {}", tuples.join(", ")), params)
}

/// The columns of `names` outside the unique key `key`, compared as unquoted names are.
pub fn outside_key<'a>(names: &'a [String], key: &[String]) -> Vec<&'a String> {
    let in_key = |n: &String| key.iter().any(|k| k.eq_ignore_ascii_case(n));
    names.iter().filter(|n| !in_key(n)).collect()
}

/// The `ON CONFLICT` clause PostgreSQL and SQLite share.
pub fn on_conflict_clause(
    dialect: Dialect,
    conflict: Conflict<'_>,
    names: &[String],
) -> Option<String> {
    let q = |n: &str| quote_ident(dialect, n);
    Some(match conflict {
        Conflict::Error => String::new(),
        Conflict::Ignore => " ON CONFLICT DO NOTHING".to_string(),
        Conflict::Update([]) => return None,
        Conflict::Update(key) => {
            let target: Vec<String> = key.iter().map(|k| q(k)).collect();
            let others = outside_key(names, key);
            if others.is_empty() {
                format!(" ON CONFLICT ({}) DO NOTHING", target.join(", "))
            } else {
                let set: Vec<String> = others
                    .iter()
                    .map(|n| format!("{} = excluded.{}", q(n), q(n)))
                    .collect();
                format!(
                    " ON CONFLICT ({}) DO UPDATE SET {}",
                    target.join(", "),
                    set.join(", ")
                )
            }
        }
    })
}

/// The names `godwit_1`, `godwit_2`, … under which a statement's rows carry `n` columns.
pub fn aliases(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("godwit_{i}")).collect()
}

/// The names `godwit_read_1`, `godwit_read_2`, … under which an optimistic write's rows carry
/// the values of `n` columns as they were read.
pub fn read_aliases(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("godwit_read_{i}")).collect()
}

/// The alias under which an optimistic write's rows carry each row's version as read.
pub const VERSION_ALIAS: &str = "godwit_version";
