//! Writing a copy's slice into the target in the batch's transaction: multi-row inserts, the
//! `COPY` paths, and rows one by one when the database refuses one and `on_row_error = "skip"`.

use std::collections::BTreeMap;

use godwit_driver::{Conflict, Conn, Dialect, Error, SqlForms, TableInfo, Value};
use godwit_plan::OnConflict;

use super::{key_of, Copied, CopyStep};
use crate::error::BatchError;
use crate::fit::{Column, Columns};
use crate::refused::{key_text, refuse_row, DeadLetter};
use crate::savepoint;
use crate::transform::MAX_PARAMS;

/// What the target looks like.
pub(super) struct Write {
    pub(super) columns: Columns,
    /// How the target database writes its inserts.
    pub(super) forms: &'static dyn SqlForms,
    /// Whether `COPY` may load the target (`TableInfo::bulk_load`).
    pub(super) bulk_load: bool,
    /// The columns of the target's unique key used for `on_conflict = "update"`.
    conflict_key: Vec<String>,
}

impl CopyStep {
    /// Writes `rows` into the target in the open transaction on `conn`. A row that does not
    /// fit the target (a column it lacks, a value its type cannot hold) fails the batch or
    /// becomes a dead letter, as `on_row_error` says.
    pub(crate) async fn write(
        &self,
        conn: &mut dyn Conn,
        rows: Copied,
        dead_letters: &mut Vec<DeadLetter>,
    ) -> Result<u64, BatchError> {
        let write = self.write_plan(conn).await?;
        let rows = match rows {
            Copied::Positional { names, rows } => {
                match self.write_positional(write, &names, rows, dead_letters)? {
                    Ok((stored, fitted)) => {
                        return self
                            .insert_rows(conn, write, &stored, &fitted, dead_letters)
                            .await
                    }
                    // A column the target lacks: each row is refused by name below.
                    Err(rows) => rows,
                }
            }
            Copied::Named(rows) => rows,
            Copied::Raw { names, rows } => {
                self.took("rows undecoded, binary COPY");
                return match conn.copy_in_raw(&self.into, &names, &rows).await? {
                    Some(written) => Ok(written),
                    None => Err(Error::permanent(format!(
                        "{} cannot load the rows read from the source",
                        write.forms.dialect().name()
                    ))
                    .into()),
                };
            }
        };
        let mut groups: BTreeMap<Vec<String>, Vec<Vec<Value>>> = BTreeMap::new();
        for row in rows {
            match write.columns.fit(row.clone(), &self.convert) {
                Ok(fitted) => {
                    let (names, values): (Vec<String>, Vec<Value>) = fitted.into_iter().unzip();
                    groups.entry(names).or_default().push(values);
                }
                Err(problem) => {
                    let names: Vec<String> = row.iter().map(|(n, _)| n.clone()).collect();
                    let values: Vec<Value> = row.into_iter().map(|(_, v)| v).collect();
                    let key = key_of(&names, &self.key, &values);
                    let problem = format!("target table {}: {problem}", self.into);
                    let letter = refuse_row(self.on_row_error, key, problem, &names, &values)?;
                    dead_letters.push(letter);
                }
            }
        }
        let mut written = 0;
        for (names, rows) in &groups {
            written += self
                .insert_rows(conn, write, names, rows, dead_letters)
                .await?;
        }
        Ok(written)
    }

    /// Inserts `rows` as `insert_all` does. With `on_row_error = "skip"` the insert runs in a
    /// savepoint: when the database refuses a row (a constraint, a value out of range) it is
    /// undone and the rows are inserted one at a time, and each row the database still
    /// refuses becomes a dead letter carrying the database's error.
    async fn insert_rows(
        &self,
        conn: &mut dyn Conn,
        write: &Write,
        names: &[String],
        rows: &[Vec<Value>],
        dead_letters: &mut Vec<DeadLetter>,
    ) -> Result<u64, BatchError> {
        if !self.skips_bad_rows() || rows.is_empty() {
            return Ok(self.insert_all(conn, write, names, rows).await?);
        }
        let mut writer = Inserts {
            step: self,
            write,
            names,
            dead_letters,
        };
        savepoint::each_refused_row(conn, rows, &mut writer).await
    }

    /// Rows copied as they are, with the same columns: each value fitted to its column by
    /// position, without a name per value. `Ok(Err(rows))` when the target lacks one of the
    /// columns (the rows then go the way of transformed rows, refused one by one).
    #[allow(clippy::type_complexity)]
    fn write_positional(
        &self,
        write: &Write,
        names: &[String],
        rows: Vec<Vec<Value>>,
        dead_letters: &mut Vec<DeadLetter>,
    ) -> Result<Result<(Vec<String>, Vec<Vec<Value>>), Vec<Vec<(String, Value)>>>, BatchError> {
        let columns: Option<Vec<&Column>> = names.iter().map(|n| write.columns.get(n)).collect();
        let Some(columns) = columns else {
            let named = rows
                .into_iter()
                .map(|values| names.iter().cloned().zip(values).collect())
                .collect();
            return Ok(Err(named));
        };
        let key_at = names
            .iter()
            .position(|n| n.eq_ignore_ascii_case(&self.key))
            .unwrap_or(0);
        let stored: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
        let mut fitted = Vec::with_capacity(rows.len());
        for mut values in rows {
            // Fitted in place: no second vector per row. The key is kept aside in case its
            // own value is the one that does not fit.
            let key = values.get(key_at).cloned();
            let mut problem = None;
            for (at, (value, column)) in values.iter_mut().zip(&columns).enumerate() {
                match column.fit(std::mem::replace(value, Value::Null), &self.convert) {
                    Ok(v) => *value = v,
                    Err(p) => {
                        problem = Some((at, p));
                        break;
                    }
                }
            }
            match problem {
                None => fitted.push(values),
                Some((at, problem)) => {
                    // The row as far as it was fitted; the error names the value that was not.
                    let key = key.as_ref().map_or_else(String::new, key_text);
                    let problem = format!("target table {}: {problem}", self.into);
                    let (shown, values) = (&stored[..at], &values[..at]);
                    let letter = refuse_row(self.on_row_error, key, problem, shown, values)?;
                    dead_letters.push(letter);
                }
            }
        }
        Ok(Ok((stored, fitted)))
    }

    /// Inserts `rows` (values in `names` order) with as few statements as the database's limit
    /// on parameters allows.
    async fn insert_all(
        &self,
        conn: &mut dyn Conn,
        write: &Write,
        names: &[String],
        rows: &[Vec<Value>],
    ) -> Result<u64, Error> {
        if rows.is_empty() {
            return Ok(0);
        }
        if names.is_empty() {
            return Err(Error::permanent(format!(
                "a row with no columns cannot be copied into {}",
                self.into
            )));
        }
        if self.on_conflict == OnConflict::Error && write.bulk_load {
            // The bulk path where the database has one (PostgreSQL's COPY, MySQL's LOAD DATA
            // LOCAL INFILE): no statement to plan, no parameters to bind, one pass of the
            // server's input functions. MySQL's loads only what it loads exactly; else the
            // INSERT below runs and fails with the database's own error.
            if let Some(written) = conn.copy_in(&self.into, names, rows).await? {
                self.took(match write.forms.dialect() {
                    Dialect::MySql => "rows decoded and fitted, LOAD DATA LOCAL INFILE",
                    _ => "rows decoded and fitted, text COPY",
                });
                return Ok(written);
            }
        }
        self.took("rows decoded and fitted, multi-row INSERT");
        let per_statement = (MAX_PARAMS / names.len().max(1)).max(1);
        let mut written = 0;
        for chunk in rows.chunks(per_statement) {
            let (sql, params) = write.insert(&self.into, self.on_conflict, names, chunk)?;
            written += conn.execute(&sql, &params).await?;
        }
        Ok(written)
    }
}

/// A copy's inserts, for writing a slice row by row when the database refuses one.
struct Inserts<'a> {
    step: &'a CopyStep,
    write: &'a Write,
    names: &'a [String],
    dead_letters: &'a mut Vec<DeadLetter>,
}

impl savepoint::Write<Vec<Value>> for Inserts<'_> {
    async fn write(&mut self, conn: &mut dyn Conn, rows: &[Vec<Value>]) -> Result<u64, Error> {
        let Inserts {
            step, write, names, ..
        } = self;
        step.insert_all(conn, write, names, rows).await
    }

    fn refused(&mut self, row: &Vec<Value>, e: Error) -> Result<(), BatchError> {
        let step = self.step;
        let key = key_of(self.names, &step.key, row);
        let problem = format!("target table {}: {e}", step.into);
        let letter = refuse_row(step.on_row_error, key, problem, self.names, row)?;
        self.dead_letters.push(letter);
        Ok(())
    }
}

impl Write {
    pub(super) fn new(info: &TableInfo, forms: &'static dyn SqlForms) -> Write {
        // The primary key if there is one, else the first unique index.
        let chosen = info
            .indexes
            .iter()
            .find(|i| i.primary)
            .or_else(|| info.indexes.iter().find(|i| i.unique));
        Write {
            columns: Columns::new(info, forms.dialect()),
            forms,
            bulk_load: info.bulk_load,
            conflict_key: chosen.map(|i| i.columns.clone()).unwrap_or_default(),
        }
    }

    /// One multi-row insert of `rows` (values in `names` order).
    fn insert(
        &self,
        table: &str,
        on_conflict: OnConflict,
        names: &[String],
        rows: &[Vec<Value>],
    ) -> Result<(String, Vec<Value>), Error> {
        let columns = self
            .columns
            .infos(names)
            .map_err(|problem| Error::permanent(format!("target table {table}: {problem}")))?;
        self.forms
            .insert_rows(table, &columns, self.conflict(on_conflict), rows)
            .ok_or_else(|| needs_unique_key(table))
    }

    /// What an insert of `names` into `table` adds for `on_conflict`: nothing, a `DO NOTHING`
    /// or an upsert on the target's unique key.
    pub(super) fn conflict_clause(
        &self,
        table: &str,
        on_conflict: OnConflict,
        names: &[String],
    ) -> Result<String, Error> {
        self.forms
            .conflict_clause(self.conflict(on_conflict), names)
            .ok_or_else(|| needs_unique_key(table))
    }

    /// The plan's `on_conflict` as the database's forms take it.
    fn conflict(&self, on_conflict: OnConflict) -> Conflict<'_> {
        match on_conflict {
            OnConflict::Error => Conflict::Error,
            OnConflict::Ignore => Conflict::Ignore,
            OnConflict::Update => Conflict::Update(&self.conflict_key),
        }
    }
}

/// The error of an upsert into `table`, which has no unique key to name.
fn needs_unique_key(table: &str) -> Error {
    Error::permanent(format!(
        "on_conflict = \"update\" needs a primary key or unique index on {table}"
    ))
}
