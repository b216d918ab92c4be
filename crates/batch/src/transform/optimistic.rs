//! A transform step's batch written optimistically (`locking = "optimistic"`): the rows are
//! read without locks and transformed before the batch's transaction, so an application that
//! writes them meanwhile never waits for the transform.
//!
//! In the transaction each write updates a row only while it still holds what was read (its
//! version on PostgreSQL, every column read on MySQL: `UpdateFromRows::read`), inside a
//! savepoint. A write that updates fewer rows than it carries found one changed: it is undone,
//! and its rows are read again, this time under lock; those still as read are written with
//! the values already computed, the others go through the transform again and are written
//! as a locking batch writes them. No row is written from a stale read, and an application's
//! write is never overwritten: it is either seen by the read, or makes the write miss its row.
//!
//! A batch of wide rows reads its keys, then slices between them, before the transaction, until
//! the changed rows it holds reach `max_batch_bytes`; the rest of its slices are read (still
//! without locks), transformed and written in the transaction, so memory stays bounded.

use std::collections::{BTreeMap, HashMap};

use godwit_driver::{ColumnInfo, Conn, Error, Row, Value};
use godwit_plan::{Locking, OnRowError};
use godwit_transform::Rows;

use super::{keep_example, RowChange, RowStep, RowsDone, Shape, MAX_PARAMS};
use crate::error::BatchError;
use crate::refused::{key_text, refuse_row, DeadLetter};
use crate::savepoint;
use crate::slices::row_bytes;

/// Rows changing the same columns, grouped by those columns: each row's key, then its new
/// values, then what its write checks (see `UpdateFromRows::read`).
type Groups = BTreeMap<Vec<String>, Vec<(Value, Vec<Value>)>>;

/// A batch read and transformed before its transaction: what `Work::start` hands to
/// `Work::write`.
pub(crate) struct ReadAhead {
    planned: Planned,
    /// A sliced batch's keys; those from `next` on are read and written in the transaction.
    keys: Vec<Value>,
    next: usize,
}

/// Changed rows waiting for the transaction, and the rows set aside.
#[derive(Default)]
struct Planned {
    groups: Groups,
    dead_letters: Vec<DeadLetter>,
    /// About how much memory the changed rows hold.
    bytes: u64,
    /// The first few changed rows, as examples.
    examples: Vec<RowChange>,
}

/// Rows read without locks: as the transform sees them, and what a write checks for each.
struct Read {
    rows: Vec<Vec<Value>>,
    checks: Vec<Vec<Value>>,
}

impl Shape {
    /// Rows as the database returned them, each split into what the transform sees and what
    /// a write checks: the version read last, or else the columns read besides the key, as
    /// returned (a read the transform sees may be decoded further, a JSON text into a
    /// document, and would no longer compare byte for byte).
    fn split(&self, read: Vec<Row>) -> Read {
        let mut out = Read {
            rows: Vec::with_capacity(read.len()),
            checks: Vec::with_capacity(read.len()),
        };
        for row in read {
            let mut values = row.into_values();
            let checks = if self.versioned {
                vec![values.pop().unwrap_or(Value::Null)]
            } else {
                values.get(1..).unwrap_or_default().to_vec()
            };
            out.rows.push(self.normalise(values));
            out.checks.push(checks);
        }
        out
    }

    /// The column infos a write checks: the columns read besides the key.
    fn read_refs(&self) -> Vec<&ColumnInfo> {
        self.read_infos.iter().collect()
    }
}

impl RowStep {
    /// Before the batch's transaction: reads the rows between `start` and `end` (inclusive)
    /// without locks and transforms them. `None` when the step's rows are read under lock in
    /// the transaction instead: `locking = "rows"`, or a database whose transaction holds its
    /// only write lock (SQLite), where reading ahead would spare no one a wait.
    ///
    /// # Errors
    /// The database's, the transform's, or a bad row's under `on_row_error = "fail"`.
    pub(crate) async fn read_ahead(
        &self,
        conn: &mut dyn Conn,
        start: &Value,
        end: &Value,
    ) -> Result<Option<ReadAhead>, BatchError> {
        let shape = self.shape(conn).await?;
        if self.locking == Locking::Rows || shape.forms.single_writer() {
            return Ok(None);
        }
        let mut ahead = ReadAhead {
            planned: Planned::default(),
            keys: Vec::new(),
            next: 0,
        };
        let range = [start.clone(), end.clone()];
        if self.slicer.whole_batch() {
            let read = self.read_free(conn, shape, &range).await?;
            self.plan(shape, read, &mut ahead.planned).await?;
            return Ok(Some(ahead));
        }
        // Wide rows, or a step's first batch while their width is unknown: slices between
        // the keys, as many as the changed rows' budget allows before the transaction.
        ahead.keys = conn
            .query(&shape.keys_sql, &range)
            .await?
            .into_iter()
            .filter_map(|row| row.into_values().into_iter().next())
            .map(|key| shape.read_types[0].read(key))
            .collect();
        while ahead.next < ahead.keys.len() && ahead.planned.bytes < self.slicer.max_bytes() {
            let read = self.next_slice(conn, shape, &mut ahead).await?;
            self.plan(shape, read, &mut ahead.planned).await?;
        }
        Ok(Some(ahead))
    }

    /// In the batch's open transaction: writes what [`RowStep::read_ahead`] planned, then
    /// reads, transforms and writes the slices it left.
    ///
    /// # Errors
    /// As [`RowStep::read_ahead`]; the transaction is left open for the caller to roll back.
    pub(crate) async fn write_ahead(
        &self,
        conn: &mut dyn Conn,
        mut ahead: ReadAhead,
    ) -> Result<RowsDone, BatchError> {
        let shape = self.shape(conn).await?;
        let mut done = RowsDone::default();
        let planned = std::mem::take(&mut ahead.planned);
        self.write_planned(conn, shape, planned, &mut done).await?;
        while ahead.next < ahead.keys.len() {
            let read = self.next_slice(conn, shape, &mut ahead).await?;
            let mut planned = Planned::default();
            self.plan(shape, read, &mut planned).await?;
            self.write_planned(conn, shape, planned, &mut done).await?;
        }
        Ok(done)
    }

    /// Reads the next slice of a sliced batch's keys, without locks.
    async fn next_slice(
        &self,
        conn: &mut dyn Conn,
        shape: &Shape,
        ahead: &mut ReadAhead,
    ) -> Result<Read, BatchError> {
        let take = usize::try_from(self.slicer.rows()).unwrap_or(1).max(1);
        let end = ahead.keys.len().min(ahead.next + take);
        let bounds = [ahead.keys[ahead.next].clone(), ahead.keys[end - 1].clone()];
        ahead.next = end;
        self.read_free(conn, shape, &bounds).await
    }

    /// The rows between two keys (inclusive), without locks, with what a write checks.
    async fn read_free(
        &self,
        conn: &mut dyn Conn,
        shape: &Shape,
        bounds: &[Value],
    ) -> Result<Read, BatchError> {
        let read = shape.split(conn.query(&shape.free_sql, bounds).await?);
        self.slicer.observe(
            read.rows.len(),
            read.rows.iter().map(|r| row_bytes(r)).sum(),
        );
        Ok(read)
    }

    /// Transforms `read` and adds the rows it changes to `planned`, each carrying what its
    /// write checks; a bad row becomes a dead letter (or, with `on_row_error = "fail"`, the
    /// batch's error).
    async fn plan(
        &self,
        shape: &Shape,
        read: Read,
        planned: &mut Planned,
    ) -> Result<(), BatchError> {
        let input = Rows {
            columns: shape.names.clone(),
            rows: read.rows,
            bytes_columns: shape.columns.bytes_columns(),
        };
        let outcomes = self
            .transform
            .apply(input.clone())
            .await
            .map_err(BatchError::Transform)?;
        for ((values, checks), outcome) in input.rows.iter().zip(read.checks).zip(outcomes) {
            match shape.changes(values, outcome, &self.convert) {
                Ok(None) => {}
                Ok(Some((names, mut new_values))) => {
                    keep_example(&mut planned.examples, || {
                        shape.example(values, &names, &new_values)
                    });
                    new_values.extend(checks);
                    planned.bytes += row_bytes(&new_values);
                    planned
                        .groups
                        .entry(names)
                        .or_default()
                        .push((values[0].clone(), new_values));
                }
                Err(problem) => {
                    let key = key_text(&values[0]);
                    let letter =
                        refuse_row(self.on_row_error, key, problem, &input.columns, values)?;
                    planned.dead_letters.push(letter);
                }
            }
        }
        Ok(())
    }

    /// Writes `planned` in the open transaction, each statement checking its rows.
    async fn write_planned(
        &self,
        conn: &mut dyn Conn,
        shape: &Shape,
        planned: Planned,
        done: &mut RowsDone,
    ) -> Result<(), BatchError> {
        done.dead_letters.extend(planned.dead_letters);
        for example in planned.examples {
            keep_example(&mut done.examples, || example);
        }
        for (names, rows) in &planned.groups {
            let width = rows.first().map_or(1, |(_, values)| values.len() + 1);
            for chunk in rows.chunks((MAX_PARAMS / width).max(1)) {
                self.write_checked(conn, shape, names, chunk, done).await?;
            }
        }
        Ok(())
    }

    /// Writes `rows` with one statement that updates each only while it holds what was read.
    /// When it updates fewer, or (with `on_row_error = "skip"`) the database refuses one, it
    /// is undone and the rows are written under lock instead.
    async fn write_checked(
        &self,
        conn: &mut dyn Conn,
        shape: &Shape,
        names: &[String],
        rows: &[(Value, Vec<Value>)],
        done: &mut RowsDone,
    ) -> Result<(), BatchError> {
        let read = shape.read_refs();
        let (sql, params) = shape.update_checked(&self.table, names, &read, rows)?;
        savepoint::open(conn, savepoint::CHECKED).await?;
        match conn.execute(&sql, &params).await {
            // MySQL counts rows matched, not changed (sqlx asks for CLIENT_FOUND_ROWS), so a
            // row written with the values it holds counts too.
            Ok(n) if n == rows.len() as u64 => {
                savepoint::keep(conn, savepoint::CHECKED).await?;
                done.rows_written += n;
                return Ok(());
            }
            Ok(_) => {}
            // Which row the database refuses is found under lock, one row at a time.
            Err(e) if e.refuses_row() && self.on_row_error == OnRowError::Skip => {}
            Err(e) => return Err(e.into()),
        }
        savepoint::undo(conn, savepoint::CHECKED).await?;
        self.relock(conn, shape, names, rows, done).await
    }

    /// Rows a checked write did not find as read: reads them again under lock, writes those
    /// still as read with their planned values, and transforms again those that changed
    /// (counted in `rows_redone`). A row gone, or no longer matching `where`, is left alone.
    async fn relock(
        &self,
        conn: &mut dyn Conn,
        shape: &Shape,
        names: &[String],
        rows: &[(Value, Vec<Value>)],
        done: &mut RowsDone,
    ) -> Result<(), BatchError> {
        let key = shape
            .columns
            .get(&shape.key)
            .map(|c| &c.info)
            .ok_or_else(|| Error::permanent(format!("table {} has no key column", self.table)))?;
        let keys: Vec<Value> = rows.iter().map(|(k, _)| k.clone()).collect();
        let (condition, params) = shape.forms.key_in(key, &keys, 1);
        let (head, tail) = &shape.relock_sql;
        let read = shape.split(
            conn.query(&format!("{head}{condition}{tail}"), &params)
                .await?,
        );
        let planned: HashMap<String, &(Value, Vec<Value>)> =
            rows.iter().map(|row| (key_text(&row.0), row)).collect();
        let n = names.len();
        let mut groups = Groups::new();
        let mut changed = Read {
            rows: Vec::new(),
            checks: Vec::new(),
        };
        for (values, checks) in read.rows.into_iter().zip(read.checks) {
            match planned.get(&key_text(&values[0])) {
                Some((key, planned)) if planned[n..] == checks[..] => groups
                    .entry(names.to_vec())
                    .or_default()
                    .push((key.clone(), planned[..n].to_vec())),
                _ => {
                    changed.rows.push(values);
                    changed.checks.push(checks);
                }
            }
        }
        // A row found as read here was refused by the database (and is set aside below, by
        // the write that tries rows one at a time), or the checked write's comparison saw a
        // change where there was none (a MySQL type it cannot compare exactly): that costs
        // this locked read, but no second transform.
        tracing::debug!(
            table = %self.table,
            rows = rows.len(),
            rows_changed = changed.rows.len(),
            "an optimistic write did not find every row as read; read them again under lock"
        );
        done.rows_redone += changed.rows.len() as u64;
        let mut again = Planned::default();
        if !changed.rows.is_empty() {
            self.plan(shape, changed, &mut again).await?;
        }
        done.dead_letters.extend(again.dead_letters);
        for (names, rows) in again.groups {
            // Locked now: what the write would check goes.
            let n = names.len();
            let rows = rows.into_iter().map(|(key, mut values)| {
                values.truncate(n);
                (key, values)
            });
            groups.entry(names).or_default().extend(rows);
        }
        for (names, rows) in &groups {
            for chunk in rows.chunks((MAX_PARAMS / (names.len() + 1)).max(1)) {
                done.rows_written += self
                    .update_rows(conn, shape, names, chunk, &mut done.dead_letters)
                    .await?;
            }
        }
        Ok(())
    }
}
