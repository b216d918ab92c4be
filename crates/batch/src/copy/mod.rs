//! A copy step's batch: read a key range from the source, optionally transform it, and insert
//! the rows into the target table in the batch's transaction on the plan's database, so the
//! rows and the batch's done record commit together.
//!
//! A batch is read in slices (`slices.rs`); the first is read before the target's transaction
//! opens. Each slice is written with one `INSERT` per group of rows with the same columns, in
//! the target database's own form (`SqlForms::insert_rows`: `unnest` of `text[]` on PostgreSQL,
//! multi-row `VALUES` elsewhere), split only at the database's parameter limit, with
//! `on_conflict`: `error` (plain insert), `ignore` (`ON CONFLICT DO NOTHING`; on MySQL an update
//! that changes nothing, since `INSERT IGNORE` would also hide truncations) or `update` (an
//! upsert on the target's primary key or first unique index).
//!
//! Three shortcuts into PostgreSQL, because there the database must stay the bottleneck:
//! within one database between columns of exactly the same types a batch is one
//! `INSERT … SELECT` and no row passes through godwit (`CopyStep::in_database`); from another
//! PostgreSQL database into such columns rows stay in their binary wire form and are loaded
//! with binary `COPY` (`Copied::Raw`); other rows with `on_conflict = "error"` are loaded with
//! text `COPY` (`Conn::copy_in`). `COPY` only into plain tables (`TableInfo::bulk_load`).
//! Into MySQL/MariaDB, rows with `on_conflict = "error"` go through `Conn::copy_in` too
//! (`LOAD DATA LOCAL INFILE`), which hands a slice back when it could not load it exactly.

//!
//! Here: the step as prepared once, and a batch from start to end (`start`, `write_batch`).
//! Reading slices from the source and the in-database statement are in `read.rs`; writing a
//! slice into the target (inserts, `COPY`, rows one by one when one is refused) in `write.rs`.

mod read;
mod write;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use godwit_db::ConnPool;
use godwit_driver::{rewrite_params, Conn, DbUrl, Dialect, Error, RawRows, Value};
use godwit_plan::{Convert, CopySpec, OnConflict, OnRowError, Step, StepKind};
use godwit_transform::Transform;
use tokio::sync::OnceCell;

use crate::error::BatchError;
use crate::fit::Columns;
use crate::key::existing_table;
use crate::refused::{key_text, DeadLetter};
use crate::savepoint;
use crate::script::build_transform;
use crate::slices::Slicer;

pub(crate) use self::read::InDatabase;
use self::read::Read;
use self::write::Write;

/// A copy step, prepared once per process.
pub(crate) struct CopyStep {
    /// Connections to the source database (the plan's own when `source` is not given).
    source: ConnPool,
    table: String,
    key: String,
    columns: Option<Vec<String>>,
    /// `query` with `:start`/`:end` rewritten, and the order of its parameters.
    query: Option<(String, Vec<usize>)>,
    filter: Option<String>,
    into: String,
    on_conflict: OnConflict,
    transform: Option<Transform>,
    on_row_error: OnRowError,
    convert: BTreeMap<String, Convert>,
    slicer: Slicer,
    read: OnceCell<Read>,
    write: OnceCell<Write>,
    /// Whether the source is the plan's own database (no `source`), where a plain copy can
    /// be one statement that never ships a row.
    same_database: bool,
    /// That statement, when the copy can be one (decided at the first batch).
    in_database: OnceCell<Option<InDatabase>>,
    /// How rows reach the target, logged (at debug level) the first time.
    path: std::sync::OnceLock<&'static str>,
}

/// A slice's rows on their way to the target.
pub(crate) enum Copied {
    /// As a transform made them: each row with its own columns.
    Named(Vec<Vec<(String, Value)>>),
    /// As they were read: every row with the same columns.
    Positional {
        names: Arc<[String]>,
        rows: Vec<Vec<Value>>,
    },
    /// Undecoded, for the target's columns of exactly the source's types (by their names in
    /// the target).
    Raw { names: Vec<String>, rows: RawRows },
}

impl Copied {
    /// Each row with its columns named.
    pub(crate) fn named(self) -> Vec<Vec<(String, Value)>> {
        match self {
            Copied::Named(rows) => rows,
            Copied::Positional { names, rows } => rows
                .into_iter()
                .map(|values| names.iter().cloned().zip(values).collect())
                .collect(),
            // Only a copy's own reads are raw, never those `verify` compares.
            Copied::Raw { .. } => Vec::new(),
        }
    }
}

/// What a copy batch holds when its transaction opens.
pub(crate) enum CopyStart {
    /// The batch is one statement within the database, from this first key.
    InDatabase(Value),
    /// The first slice, read from the source: its rows, its refused rows and where the next
    /// slice starts.
    Read(SliceRead),
}

/// One slice read from the source: its rows, the rows refused on reading, and the key the next
/// slice starts after (`None` at the end of the batch).
pub(crate) type SliceRead = (Copied, Vec<DeadLetter>, Option<Value>);

/// Where a slice of a batch starts.
enum Slice {
    /// At the batch's first key.
    First(Value),
    /// After the last key the previous slice read.
    After(Value),
}

impl CopyStep {
    /// The copy `step` describes (`None` for another kind of step), reading from
    /// `source_url`; its transform is compiled here.
    pub(crate) fn for_step(
        step: &Step,
        source_url: DbUrl,
        source_dialect: Dialect,
        plan_path: &Path,
    ) -> Result<Option<CopyStep>, Error> {
        let StepKind::Copy(CopySpec {
            table,
            key,
            columns,
            query,
            filter,
            into,
            on_conflict,
            script,
            source,
            ..
        }) = &step.kind
        else {
            return Ok(None);
        };
        let transform = script
            .as_ref()
            .map(|s| build_transform(s, &step.settings, plan_path))
            .transpose()?;
        Ok(Some(CopyStep {
            source: ConnPool::new(source_url, step.settings.lease),
            table: table.clone(),
            key: key.clone(),
            columns: columns.clone(),
            query: query.as_deref().map(|q| {
                let rewritten = rewrite_params(q, source_dialect, &["start", "end"]);
                (rewritten.sql, rewritten.order)
            }),
            filter: filter.clone(),
            into: into.clone(),
            on_conflict: *on_conflict,
            transform,
            on_row_error: step.settings.on_row_error,
            convert: step.convert.clone(),
            slicer: Slicer::new(
                step.settings.max_batch_bytes,
                step.settings.batch_size_bounds().1,
            ),
            read: OnceCell::new(),
            write: OnceCell::new(),
            same_database: source.is_none(),
            in_database: OnceCell::new(),
            path: std::sync::OnceLock::new(),
        }))
    }

    /// Where a copy reads: its `source`, or else the plan's database.
    pub(crate) fn source_url(step: &Step, plan_database: &DbUrl) -> DbUrl {
        match &step.kind {
            StepKind::Copy(CopySpec {
                source: Some(url), ..
            }) => DbUrl::new(url.clone()),
            _ => plan_database.clone(),
        }
    }

    async fn read_plan(&self, conn: &mut dyn Conn) -> Result<&Read, Error> {
        self.read
            .get_or_try_init(|| async {
                let info = existing_table(conn, "source table", &self.table).await?;
                Ok(Read::new(conn.forms(), self, &info))
            })
            .await
    }

    async fn write_plan(&self, conn: &mut dyn Conn) -> Result<&Write, Error> {
        self.write
            .get_or_try_init(|| async {
                let info = existing_table(conn, "target table", &self.into).await?;
                Ok(Write::new(&info, conn.forms()))
            })
            .await
    }

    /// Logs how rows reach the target, the first time a batch takes a path.
    fn took(&self, path: &'static str) {
        if self.path.set(path).is_ok() {
            tracing::debug!(table = %self.table, into = %self.into, "copy: {path}");
        }
    }

    /// The target table.
    pub(crate) fn into(&self) -> &str {
        &self.into
    }

    /// The source key.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// Whether rows that cannot be copied become dead letters (`on_row_error = "skip"`).
    pub(crate) fn skips_bad_rows(&self) -> bool {
        self.on_row_error == OnRowError::Skip
    }

    /// The step's `convert` rules.
    pub(crate) fn convert(&self) -> &BTreeMap<String, Convert> {
        &self.convert
    }

    /// The target's columns.
    pub(crate) async fn target_columns(&self, conn: &mut dyn Conn) -> Result<&Columns, Error> {
        Ok(&self.write_plan(conn).await?.columns)
    }

    /// The part of a batch that comes before the target's transaction opens: learning the
    /// target's columns and reading the first slice from the source, so that the transaction
    /// is not held while a slow source answers its first query.
    pub(crate) async fn start(
        &self,
        conn: &mut dyn Conn,
        start: Value,
        end: &Value,
    ) -> Result<CopyStart, BatchError> {
        // Known before the first read: which columns the target has.
        self.write_plan(conn).await?;
        if self.in_database(conn).await?.is_some() {
            self.took("one INSERT ... SELECT per batch, within the database");
            return Ok(CopyStart::InDatabase(start));
        }
        let first = self
            .read(&Slice::First(start), end, self.passthrough())
            .await?;
        Ok(CopyStart::Read(first))
    }

    /// Copies the rest of the batch up to `end` (inclusive) into the target, in the open
    /// transaction on `conn`, slice by slice: each slice is read from the source, transformed
    /// and written before the next is read. Returns the rows written and the refused rows.
    pub(crate) async fn write_batch(
        &self,
        conn: &mut dyn Conn,
        started: CopyStart,
        end: Value,
    ) -> Result<(u64, Vec<DeadLetter>), BatchError> {
        let first = match started {
            CopyStart::Read(first) => first,
            CopyStart::InDatabase(start) => {
                let Some(plain) = self.in_database(conn).await? else {
                    return Err(Error::permanent("a copy lost its in-database statement").into());
                };
                let params = [start.clone(), end.clone()];
                if !self.skips_bad_rows() {
                    return Ok((conn.execute(&plain.insert, &params).await?, Vec::new()));
                }
                // With `skip`, a batch the database refuses a row of is undone and copied
                // again through godwit, which writes its rows one by one and sets the refused
                // aside.
                savepoint::open(conn, savepoint::ROWS).await?;
                match conn.execute(&plain.insert, &params).await {
                    Ok(written) => {
                        savepoint::keep(conn, savepoint::ROWS).await?;
                        return Ok((written, Vec::new()));
                    }
                    Err(e) if e.refuses_row() => savepoint::undo(conn, savepoint::ROWS).await?,
                    Err(e) => return Err(e.into()),
                }
                self.read(&Slice::First(start), &end, self.passthrough())
                    .await?
            }
        };
        let (mut written, mut letters) = (0, Vec::new());
        let (mut rows, mut refused, mut next) = first;
        loop {
            letters.extend(refused);
            written += self.write(conn, rows, &mut letters).await?;
            match next {
                Some(after) => {
                    (rows, refused, next) = self
                        .read(&Slice::After(after), &end, self.passthrough())
                        .await?;
                }
                None => return Ok((written, letters)),
            }
        }
    }

    /// Whether rows may be read undecoded: not when they must be set aside one by one.
    fn passthrough(&self) -> bool {
        !self.skips_bad_rows()
    }

    /// The step's `where` as a further condition (` AND (…)`), or nothing.
    pub(crate) fn and_filter(&self) -> String {
        self.filter
            .as_deref()
            .map(|f| format!(" AND ({f})"))
            .unwrap_or_default()
    }

    /// The source table.
    pub(crate) fn table(&self) -> &str {
        &self.table
    }
}

/// The source key of a row, for messages and dead letters: the column named like the step's
/// key, else the row's first value.
fn key_of(names: &[String], key: &str, values: &[Value]) -> String {
    let at = names
        .iter()
        .position(|n| n.eq_ignore_ascii_case(key))
        .unwrap_or(0);
    values.get(at).map_or_else(String::new, key_text)
}
