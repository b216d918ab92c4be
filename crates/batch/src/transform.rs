//! A transform step's batch: read the batch's rows, run the transform, write back only the
//! rows it changed, in the batch's transaction.
//!
//! No application write is lost, in either of two ways (`locking`). With `"rows"` the rows are
//! read under lock in the transaction (`FOR UPDATE` on PostgreSQL and MySQL), so a concurrent
//! writer waits for the batch's commit, transform included, and then applies its change on top;
//! SQLite's `BEGIN IMMEDIATE` already holds the only write lock. A batch of wide rows locks its
//! keys first and is then read in slices between them (`slices.rs`). With `"optimistic"` the
//! rows are read and transformed before the transaction, and each write updates only rows that
//! still hold what was read (`optimistic.rs`). The write is one set-based statement per group of
//! rows changing the same columns, in the database's own form (`SqlForms::update_from_rows`),
//! split only where a statement would pass the database's limit on bound parameters.

mod optimistic;

use std::collections::BTreeMap;
use std::sync::Arc;

use godwit_driver::{
    quote_ident, ColumnInfo, Conn, Error, Row, SqlForms, SqlType, TableInfo, UpdateFromRows, Value,
};
use godwit_plan::{Convert, Locking, OnRowError, Step, StepKind};
use godwit_transform::json::row_line;
use godwit_transform::{Outcome, Rows, Transform};
use tokio::sync::OnceCell;

use crate::error::BatchError;
use crate::fit::{selected, Columns};
use crate::key::existing_table;
use crate::refused::{key_text, refuse_row, DeadLetter};
use crate::savepoint;
use crate::slices::{row_bytes, Slicer};

pub(crate) use self::optimistic::ReadAhead;

/// Bound parameters per statement: under SQLite's 32,766 and the 65,535 of the others.
pub(crate) const MAX_PARAMS: usize = 30_000;

/// A transform step, prepared once per process.
pub(crate) struct RowStep {
    table: String,
    key: String,
    /// Columns read besides the key; empty means all.
    columns: Vec<String>,
    filter: Option<String>,
    transform: Transform,
    on_row_error: OnRowError,
    convert: BTreeMap<String, Convert>,
    locking: Locking,
    slicer: Slicer,
    shape: OnceCell<Shape>,
}

/// What the table looks like, learned from the database on the first batch.
struct Shape {
    /// The whole batch's rows, locked.
    read_sql: String,
    /// The batch's keys, locking their rows.
    lock_sql: String,
    /// The rows between two keys, already locked.
    slice_sql: String,
    /// The rows between two keys, not locked, each with its version where the database has
    /// one: an optimistic read of a batch or a slice.
    free_sql: String,
    /// The batch's keys, not locked.
    keys_sql: String,
    /// The rows of some keys, locked, each with its version: what an optimistic write that
    /// found rows changed reads again. The condition on the key goes between the two parts.
    relock_sql: (String, String),
    /// Whether the database reads a version beside each row (see `SqlForms::row_version`).
    versioned: bool,
    /// The columns read besides the key, for an optimistic write's check.
    read_infos: Vec<ColumnInfo>,
    /// Names of the columns read, the key first.
    names: Arc<[String]>,
    /// The type of each column read, for reading it in the form transforms see.
    read_types: Vec<SqlType>,
    /// Every column of the table.
    columns: Columns,
    /// The key's name as stored.
    key: String,
    /// How the database writes the update.
    forms: &'static dyn SqlForms,
}

/// What one batch did.
#[derive(Default)]
pub(crate) struct RowsDone {
    pub(crate) rows_written: u64,
    pub(crate) dead_letters: Vec<DeadLetter>,
    /// Rows an optimistic write found changed since they were read, and transformed again.
    pub(crate) rows_redone: u64,
    /// The batch's first few changed rows, as examples.
    pub(crate) examples: Vec<RowChange>,
}

/// How many changed rows a batch keeps as examples: a few show what a transform does, and
/// keeping them costs nothing worth counting.
const EXAMPLES: usize = 3;

/// A row a transform changes, as an example of what it does: its key, and the columns it
/// changes as they were and as they become, each as a JSON object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowChange {
    /// The row's key, as messages show keys.
    pub key: String,
    /// The changed columns before, as a JSON object.
    pub before: String,
    /// The same columns after, as a JSON object.
    pub after: String,
}

/// Keeps `change` as an example while `examples` holds fewer than [`EXAMPLES`].
fn keep_example(examples: &mut Vec<RowChange>, change: impl FnOnce() -> RowChange) {
    if examples.len() < EXAMPLES {
        examples.push(change());
    }
}

impl RowStep {
    /// The transform step `step` describes (`None` for another kind of step).
    pub(crate) fn for_step(step: &Step, transform: Transform) -> Option<RowStep> {
        let StepKind::Transform {
            table,
            key,
            columns,
            filter,
            ..
        } = &step.kind
        else {
            return None;
        };
        Some(RowStep {
            table: table.clone(),
            key: key.clone(),
            columns: columns.clone(),
            filter: filter.clone(),
            transform,
            on_row_error: step.settings.on_row_error,
            convert: step.convert.clone(),
            locking: step.settings.locking(),
            slicer: Slicer::new(
                step.settings.max_batch_bytes,
                step.settings.batch_size_bounds().1,
            ),
            shape: OnceCell::new(),
        })
    }

    async fn shape(&self, conn: &mut dyn Conn) -> Result<&Shape, Error> {
        self.shape
            .get_or_try_init(|| async {
                let info = existing_table(conn, "table", &self.table).await?;
                Shape::new(conn.forms(), self, &info)
            })
            .await
    }

    /// Runs the batch between `start` and `end` (inclusive) in the open transaction on `conn`.
    /// Row errors become dead letters or, with `on_row_error = "fail"`, a permanent error
    /// naming the row's key.
    pub(crate) async fn run(
        &self,
        conn: &mut dyn Conn,
        start: Value,
        end: Value,
    ) -> Result<RowsDone, BatchError> {
        let shape = self.shape(conn).await?;
        let mut done = RowsDone::default();
        let normalise = |read: Vec<Row>| -> Vec<Vec<Value>> {
            read.into_iter()
                .map(|row| shape.normalise(row.into_values()))
                .collect()
        };
        if self.slicer.whole_batch() {
            // Rows of known, ordinary width: the whole batch in one locking read.
            let rows = normalise(conn.query(&shape.read_sql, &[start, end]).await?);
            self.slicer
                .observe(rows.len(), rows.iter().map(|r| row_bytes(r)).sum());
            self.slice(conn, shape, rows, &mut done).await?;
            return Ok(done);
        }
        // Wide rows (or a step's first batch, while their width is unknown): lock the batch's
        // keys first, then read, transform and write the rows in slices of those keys. With
        // the rows locked, no concurrent change can move a key between slices.
        let keys: Vec<Value> = normalise(conn.query(&shape.lock_sql, &[start, end]).await?)
            .into_iter()
            .filter_map(|r| r.into_iter().next())
            .collect();
        let mut at = 0;
        while at < keys.len() {
            let take = usize::try_from(self.slicer.rows()).unwrap_or(1).max(1);
            let slice = &keys[at..keys.len().min(at + take)];
            at += slice.len();
            let (first, last) = (slice[0].clone(), slice[slice.len() - 1].clone());
            let rows = normalise(conn.query(&shape.slice_sql, &[first, last]).await?);
            self.slicer
                .observe(rows.len(), rows.iter().map(|r| row_bytes(r)).sum());
            self.slice(conn, shape, rows, &mut done).await?;
        }
        Ok(done)
    }

    /// Transforms one slice's rows and writes back those that changed.
    async fn slice(
        &self,
        conn: &mut dyn Conn,
        shape: &Shape,
        rows: Vec<Vec<Value>>,
        done: &mut RowsDone,
    ) -> Result<(), BatchError> {
        let input = Rows {
            columns: shape.names.clone(),
            rows,
            bytes_columns: shape.columns.bytes_columns(),
        };
        let outcomes = self
            .transform
            .apply(input.clone())
            .await
            .map_err(BatchError::Transform)?;
        let mut dead_letters = Vec::new();
        // Changed rows grouped by the columns they change, so each group is one statement.
        let mut groups: BTreeMap<Vec<String>, Vec<(Value, Vec<Value>)>> = BTreeMap::new();
        for (values, outcome) in input.rows.iter().zip(outcomes) {
            match shape.changes(values, outcome, &self.convert) {
                Ok(None) => {}
                Ok(Some((names, new_values))) => {
                    keep_example(&mut done.examples, || {
                        shape.example(values, &names, &new_values)
                    });
                    groups
                        .entry(names)
                        .or_default()
                        .push((values[0].clone(), new_values));
                }
                Err(problem) => {
                    let key = key_text(&values[0]);
                    let letter =
                        refuse_row(self.on_row_error, key, problem, &input.columns, values)?;
                    dead_letters.push(letter);
                }
            }
        }
        for (names, rows) in &groups {
            let per_statement = (MAX_PARAMS / (names.len() + 1)).max(1);
            for chunk in rows.chunks(per_statement) {
                done.rows_written += self
                    .update_rows(conn, shape, names, chunk, &mut dead_letters)
                    .await?;
            }
        }
        done.dead_letters.extend(dead_letters);
        Ok(())
    }

    /// Writes `rows` with one statement. With `on_row_error = "skip"` the statement runs in a
    /// savepoint: when the database refuses a row (a constraint, a value out of range) it is
    /// undone and the rows are written one at a time, and each row the database still refuses
    /// becomes a dead letter carrying the database's error (its key and new values).
    async fn update_rows(
        &self,
        conn: &mut dyn Conn,
        shape: &Shape,
        names: &[String],
        rows: &[(Value, Vec<Value>)],
        dead_letters: &mut Vec<DeadLetter>,
    ) -> Result<u64, BatchError> {
        let mut writer = Updates {
            step: self,
            shape,
            names,
            dead_letters,
        };
        if self.on_row_error != OnRowError::Skip {
            return Ok(savepoint::Write::write(&mut writer, conn, rows).await?);
        }
        savepoint::each_refused_row(conn, rows, &mut writer).await
    }
}

/// A transform step's updates, for writing them row by row when the database refuses one.
struct Updates<'a> {
    step: &'a RowStep,
    shape: &'a Shape,
    names: &'a [String],
    dead_letters: &'a mut Vec<DeadLetter>,
}

impl savepoint::Write<(Value, Vec<Value>)> for Updates<'_> {
    async fn write(
        &mut self,
        conn: &mut dyn Conn,
        rows: &[(Value, Vec<Value>)],
    ) -> Result<u64, Error> {
        let (sql, params) = self.shape.update(&self.step.table, self.names, rows)?;
        conn.execute(&sql, &params).await
    }

    fn refused(&mut self, (key, values): &(Value, Vec<Value>), e: Error) -> Result<(), BatchError> {
        let shown: Vec<String> = std::iter::once(self.shape.key.clone())
            .chain(self.names.iter().cloned())
            .collect();
        let values: Vec<Value> = std::iter::once(key.clone())
            .chain(values.iter().cloned())
            .collect();
        let problem = format!("the database refused the new values: {e}");
        let letter = refuse_row(
            self.step.on_row_error,
            key_text(key),
            problem,
            &shown,
            &values,
        )?;
        self.dead_letters.push(letter);
        Ok(())
    }
}

impl Shape {
    fn new(forms: &'static dyn SqlForms, step: &RowStep, info: &TableInfo) -> Result<Shape, Error> {
        let dialect = forms.dialect();
        let key = info
            .column(&step.key)
            .ok_or_else(|| {
                Error::permanent(format!("table {} has no column {}", step.table, step.key))
            })?
            .name
            .clone();
        let mut names = vec![key.clone()];
        if step.columns.is_empty() {
            names.extend(
                info.columns
                    .iter()
                    .filter(|c| c.name != key)
                    .map(|c| c.name.clone()),
            );
        } else {
            for wanted in &step.columns {
                let column = info.column(wanted).ok_or_else(|| {
                    Error::permanent(format!("table {} has no column {wanted}", step.table))
                })?;
                if !names.contains(&column.name) {
                    names.push(column.name.clone());
                }
            }
        }
        let columns = Columns::new(info, dialect);
        let read_types: Vec<SqlType> = names
            .iter()
            .map(|n| columns.get(n).map_or(SqlType::Other, |c| c.sql_type))
            .collect();
        let list: Vec<String> = names.iter().map(|n| selected(dialect, info, n)).collect();
        let k = quote_ident(dialect, &key);
        let filter = step
            .filter
            .as_deref()
            .map(|f| format!(" AND ({f})"))
            .unwrap_or_default();
        let lock = forms.lock_clause();
        let range = format!(
            "{k} >= {} AND {k} <= {}{filter}",
            dialect.param(1),
            dialect.param(2)
        );
        let t = quote_ident(dialect, &step.table);
        let selected = list.join(", ");
        // The version is read last, after the columns the transform sees.
        let with_version = match forms.row_version() {
            Some(version) => format!("{selected}, {version}"),
            None => selected.clone(),
        };
        let read_infos = names[1..]
            .iter()
            .map(|n| columns.get(n).map(|c| c.info.clone()))
            .collect::<Option<Vec<ColumnInfo>>>()
            .ok_or_else(|| {
                Error::permanent(format!("table {}: a column read vanished", step.table))
            })?;
        Ok(Shape {
            read_sql: format!("SELECT {selected} FROM {t} WHERE {range} ORDER BY {k}{lock}"),
            lock_sql: format!("SELECT {k} FROM {t} WHERE {range} ORDER BY {k}{lock}"),
            slice_sql: format!("SELECT {selected} FROM {t} WHERE {range} ORDER BY {k}"),
            free_sql: format!("SELECT {with_version} FROM {t} WHERE {range} ORDER BY {k}"),
            keys_sql: format!("SELECT {k} FROM {t} WHERE {range} ORDER BY {k}"),
            relock_sql: (
                format!("SELECT {with_version} FROM {t} WHERE "),
                format!("{filter} ORDER BY {k}{lock}"),
            ),
            versioned: forms.row_version().is_some(),
            read_infos,
            names: names.into(),
            read_types,
            columns,
            key,
            forms,
        })
    }

    /// A row as the database returned it, in the form transforms see.
    fn normalise(&self, values: Vec<Value>) -> Vec<Value> {
        values
            .into_iter()
            .zip(&self.read_types)
            .map(|(v, t)| t.read(v))
            .collect()
    }

    /// The columns a row's outcome changes and their new values, fitted to the columns'
    /// types; `None` when nothing changes; `Err` for a bad row.
    #[allow(clippy::type_complexity)]
    fn changes(
        &self,
        values: &[Value],
        outcome: Outcome,
        convert: &BTreeMap<String, Convert>,
    ) -> Result<Option<(Vec<String>, Vec<Value>)>, String> {
        let row = match outcome {
            Outcome::Keep => return Ok(None),
            Outcome::Error(e) => return Err(e),
            Outcome::Rows(_) => {
                return Err(
                    "a transform step updates the row it was given: return one table of columns (lists of rows are for copies)"
                        .into(),
                )
            }
            Outcome::Row(row) => row,
        };
        let mut names = Vec::with_capacity(row.len());
        let mut new_values = Vec::with_capacity(row.len());
        for (stored, fitted) in self.columns.fit(row, convert)? {
            let old = self
                .names
                .iter()
                .position(|n| *n == stored)
                .map(|i| &values[i]);
            if old.is_some_and(|old| same(old, &fitted)) {
                continue;
            }
            if stored == self.key {
                return Err(format!("a transform cannot change the key column {stored}"));
            }
            names.push(stored);
            new_values.push(fitted);
        }
        if names.is_empty() {
            return Ok(None);
        }
        Ok(Some((names, new_values)))
    }

    /// `values`, a row as read, as an example of a change to the columns `names`.
    fn example(&self, values: &[Value], names: &[String], new_values: &[Value]) -> RowChange {
        let old: Vec<Value> = names
            .iter()
            .map(|n| {
                self.names
                    .iter()
                    .position(|read| read == n)
                    .map_or(Value::Null, |i| values[i].clone())
            })
            .collect();
        RowChange {
            key: key_text(&values[0]),
            before: row_line(names, &old),
            after: row_line(names, new_values),
        }
    }

    /// One statement writing `rows` (key, new values in `names` order).
    fn update(
        &self,
        table: &str,
        names: &[String],
        rows: &[(Value, Vec<Value>)],
    ) -> Result<(String, Vec<Value>), Error> {
        let (key, columns) = self.written(table, names)?;
        let update = UpdateFromRows {
            table,
            key,
            columns: &columns,
            read: None,
        };
        Ok(self.forms.update_from_rows(&update, rows))
    }

    /// One statement writing `rows` (key, new values in `names` order, then what the write
    /// checks) only where a row still holds what was read of the columns `read`.
    fn update_checked(
        &self,
        table: &str,
        names: &[String],
        read: &[&ColumnInfo],
        rows: &[(Value, Vec<Value>)],
    ) -> Result<(String, Vec<Value>), Error> {
        let (key, columns) = self.written(table, names)?;
        let update = UpdateFromRows {
            table,
            key,
            columns: &columns,
            read: Some(read),
        };
        Ok(self.forms.update_from_rows(&update, rows))
    }

    /// What the database reported of the key and of the columns `names` a write sets.
    fn written(
        &self,
        table: &str,
        names: &[String],
    ) -> Result<(&ColumnInfo, Vec<&ColumnInfo>), Error> {
        let missing = |problem: String| Error::permanent(format!("table {table}: {problem}"));
        let columns = self.columns.infos(names).map_err(missing)?;
        let key = self
            .columns
            .get(&self.key)
            .map(|c| &c.info)
            .ok_or_else(|| missing(format!("the table has no column {}", self.key)))?;
        Ok((key, columns))
    }
}

/// Whether a transform's value is the one the column holds already (as the transform saw it:
/// decimals, dates and UUIDs as their text).
fn same(old: &Value, new: &Value) -> bool {
    if old == new {
        return true;
    }
    match (old.text_form(), new) {
        (Some(text), Value::Text(s) | Value::Decimal(s)) => text == *s,
        _ => false,
    }
}
