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

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use godwit_driver::{
    quote_ident, rewrite_params, ColumnInfo, Conflict, Conn, DbUrl, Dialect, Error, RawRows,
    SqlForms, SqlType, TableInfo, Value,
};
use godwit_plan::{Convert, CopySpec, OnConflict, OnRowError, Step, StepKind};
use godwit_transform::{Outcome, Rows, Transform};
use tokio::sync::OnceCell;

use crate::error::BatchError;
use crate::fit::{selected, Columns};
use crate::key::existing_table;
use crate::refused::{key_text, refuse_row, DeadLetter};
use crate::savepoint;
use crate::slices::{self, row_bytes, Slicer};
use crate::transform::MAX_PARAMS;
use crate::work::build_transform;
use godwit_db::ConnPool;

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

/// The name under which godwit's own read of a source selects the walked key.
const SLICE_KEY: &str = "godwit_slice_key";

/// Where a slice of a batch starts.
enum Slice {
    /// At the batch's first key.
    First(Value),
    /// After the last key the previous slice read.
    After(Value),
}

/// How the source is read.
struct Read {
    /// The first slice of a range (or a user's whole `query`).
    first_sql: String,
    /// The slices after it.
    next_sql: String,
    /// The source's column types by name, for reading values in the form transforms see.
    types: Columns,
    /// The columns godwit's own read selects after the key (`None` for a user's `query`).
    copied: Option<Vec<ColumnInfo>>,
    /// How the source database writes SQL.
    forms: &'static dyn SqlForms,
}

/// What the target looks like.
struct Write {
    columns: Columns,
    /// How the target database writes its inserts.
    forms: &'static dyn SqlForms,
    /// Whether `COPY` may load the target (`TableInfo::bulk_load`).
    bulk_load: bool,
    /// The columns of the target's unique key used for `on_conflict = "update"`.
    conflict_key: Vec<String>,
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
            slicer: Slicer::new(step.settings.max_batch_bytes, step.settings.batch_size),
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

    /// How the copy runs without a row leaving the database, when it can: a plain copy (no
    /// transform, no `query`) within one PostgreSQL database between columns of exactly the
    /// same types, so nothing needs fitting.
    pub(crate) async fn in_database(
        &self,
        conn: &mut dyn Conn,
    ) -> Result<Option<&InDatabase>, Error> {
        let plain = self
            .in_database
            .get_or_try_init(|| async {
                let dialect = conn.dialect();
                let plain = self.same_database
                    && self.transform.is_none()
                    && self.query.is_none()
                    && conn.forms().exact_types();
                if !plain {
                    return Ok(None);
                }
                let write = self.write_plan(conn).await?;
                let read = self.read_plan(conn).await?;
                let (Some(targets), Some(copied)) = (read.same_types(write, false), &read.copied)
                else {
                    return Ok(None);
                };
                let sources: Vec<String> = copied.iter().map(|c| c.name.clone()).collect();
                let q = |n: &str| quote_ident(dialect, n);
                let k = q(&self.key);
                let quoted = |names: &[String]| names.iter().map(|n| q(n)).collect::<Vec<_>>();
                let clause = write.conflict_clause(&self.into, self.on_conflict, &targets)?;
                let insert = format!(
                    "INSERT INTO {} ({}) SELECT {} FROM {} WHERE {k} >= {} AND {k} <= {}{}{clause}",
                    q(&self.into),
                    quoted(&targets).join(", "),
                    quoted(&sources).join(", "),
                    q(&self.table),
                    dialect.param(1),
                    dialect.param(2),
                    self.and_filter(),
                );
                Ok::<_, Error>(Some(InDatabase {
                    insert,
                    sources,
                    targets,
                }))
            })
            .await?;
        Ok(plain.as_ref())
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

    /// Reads the whole range between `start` and `end` (inclusive), as `verify` compares it.
    pub(crate) async fn read_range(
        &self,
        start: Value,
        end: Value,
    ) -> Result<(Vec<Vec<(String, Value)>>, Vec<DeadLetter>), BatchError> {
        let (mut all, mut letters) = (Vec::new(), Vec::new());
        let mut slice = Slice::First(start);
        loop {
            let (rows, refused, next) = self.read(&slice, &end, false).await?;
            all.extend(rows.named());
            letters.extend(refused);
            match next {
                Some(after) => slice = Slice::After(after),
                None => return Ok((all, letters)),
            }
        }
    }

    /// Reads one slice from the source and transforms it: the rows to write, the refused
    /// rows, and the last key read when the range may hold more rows after it.
    /// With `passthrough`, a plain copy between PostgreSQL columns of the same types reads
    /// its rows undecoded (`Copied::Raw`).
    async fn read(
        &self,
        slice: &Slice,
        end: &Value,
        passthrough: bool,
    ) -> Result<SliceRead, BatchError> {
        let mut conn = self.source.take().await?;
        let limit = self.slicer.rows();
        let read = async {
            let plan = self.read_plan(conn.as_mut()).await?;
            let (sql, params) = match (&self.query, slice) {
                // A user's query is read whole: godwit cannot add a LIMIT to it.
                (Some((_, order)), Slice::First(start) | Slice::After(start)) => (
                    &plan.first_sql,
                    order
                        .iter()
                        .map(|&i| if i == 0 { start.clone() } else { end.clone() })
                        .collect(),
                ),
                (None, Slice::First(start)) => (
                    &plan.first_sql,
                    vec![start.clone(), end.clone(), Value::Int(limit)],
                ),
                (None, Slice::After(after)) => (
                    &plan.next_sql,
                    vec![after.clone(), end.clone(), Value::Int(limit)],
                ),
            };
            // Undecoded rows can only be loaded as they are: `on_conflict` needs an INSERT.
            let raw = match (passthrough, &self.transform, self.write.get()) {
                (true, None, Some(write)) if self.on_conflict == OnConflict::Error => {
                    plan.same_types(write, true)
                }
                _ => None,
            };
            if let Some(names) = raw {
                if let Some(rows) = conn.read_raw(sql, &params).await? {
                    return Ok((plan, Fetched::Raw(names, rows)));
                }
            }
            let rows = conn.query(sql, &params).await?;
            Ok::<_, Error>((plan, Fetched::Rows(rows)))
        }
        .await;
        let (plan, rows) = match read {
            Ok(found) => {
                self.source.give(conn);
                found
            }
            // A connection that failed mid-query is not given back.
            Err(e) => return Err(e.into()),
        };
        let rows = match rows {
            Fetched::Rows(rows) => rows,
            Fetched::Raw(names, rows) => {
                self.slicer.observe(rows.rows, rows.data.len() as u64);
                let full = rows.rows as i64 >= limit;
                let next = if full { rows.last_key.clone() } else { None };
                return Ok((Copied::Raw { names, rows }, Vec::new(), next));
            }
        };
        let full = self.query.is_none() && rows.len() as i64 >= limit;
        // godwit's own read puts the walked key first, for the next slice; it is not copied.
        let skip = usize::from(self.query.is_none());
        let names: Arc<[String]> = match rows.first() {
            Some(row) => row.columns()[skip..].to_vec().into(),
            None => return Ok((Copied::Named(Vec::new()), Vec::new(), None)),
        };
        // The walked key of each row (MariaDB hands `_bin` text over as bytes; the walk binds
        // such keys as text), for the next slice and for naming refused rows.
        let keys: Vec<Option<Value>> = rows
            .iter()
            .map(|row| {
                (skip == 1).then(|| match row.get(0).clone() {
                    Value::Bytes(b) => String::from_utf8(b)
                        .map_or_else(|e| Value::Bytes(e.into_bytes()), Value::Text),
                    key => key,
                })
            })
            .collect();
        let next = if full {
            keys.last().cloned().flatten()
        } else {
            None
        };
        let types: Vec<SqlType> = names
            .iter()
            .map(|n| plan.types.get(n).map_or(SqlType::Other, |c| c.sql_type))
            .collect();
        let rows: Vec<Vec<Value>> = rows
            .into_iter()
            .map(|row| {
                row.into_values()
                    .into_iter()
                    .skip(skip)
                    .zip(&types)
                    .map(|(v, t)| t.read(v))
                    .collect()
            })
            .collect();
        self.slicer
            .observe(rows.len(), rows.iter().map(|r| row_bytes(r)).sum());
        let input = Rows {
            columns: names.clone(),
            rows,
            bytes_columns: self
                .write
                .get()
                .map_or_else(|| Arc::from([]), |w| w.columns.bytes_columns()),
        };
        let Some(transform) = &self.transform else {
            // Copied as they are: the column names are shared by every row.
            let copied = Copied::Positional {
                names,
                rows: input.rows,
            };
            return Ok((copied, Vec::new(), next));
        };
        let outcomes = transform
            .apply(input.clone())
            .await
            .map_err(BatchError::Transform)?;
        let mut out = Vec::with_capacity(input.rows.len());
        let mut dead_letters = Vec::new();
        for ((values, outcome), key) in input.rows.iter().zip(outcomes).zip(&keys) {
            let refused = match outcome {
                Outcome::Keep => continue,
                Outcome::Row(row) if row.is_empty() => {
                    "the transform returned an empty row; return nil to skip a row".to_string()
                }
                Outcome::Row(mut row) => {
                    // NULL reaches Lua as nil, which a table cannot hold: a column that was
                    // NULL and that the transform did not set stays NULL in the copy, rather
                    // than taking the target's default (or, on update, its old value).
                    let in_target = |name: &str| {
                        self.write
                            .get()
                            .is_some_and(|w| w.columns.get(name).is_some())
                    };
                    for (name, value) in names.iter().zip(values) {
                        if value.is_null()
                            && in_target(name)
                            && !row.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
                        {
                            row.push((name.clone(), Value::Null));
                        }
                    }
                    out.push(row);
                    continue;
                }
                Outcome::Rows(rows) if rows.iter().any(Vec::is_empty) => {
                    "the transform returned an empty row in its list".to_string()
                }
                Outcome::Rows(rows) => {
                    out.extend(rows);
                    continue;
                }
                Outcome::Error(e) => e,
            };
            let key = match key {
                Some(k) => key_text(k),
                None => key_of(&names, &self.key, values),
            };
            let letter = refuse_row(self.on_row_error, key, refused, &names, values)?;
            dead_letters.push(letter);
        }
        Ok((Copied::Named(out), dead_letters, next))
    }

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
        let columns: Option<Vec<&crate::fit::Column>> =
            names.iter().map(|n| write.columns.get(n)).collect();
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
            // The bulk path where the database has one (PostgreSQL's COPY): no statement to
            // plan, no parameters to bind, one pass of the server's input functions.
            if let Some(written) = conn.copy_in(&self.into, names, rows).await? {
                self.took("rows decoded and fitted, text COPY");
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

impl Read {
    fn new(forms: &'static dyn SqlForms, step: &CopyStep, info: &TableInfo) -> Read {
        let dialect = forms.dialect();
        let types = Columns::new(info, dialect);
        if let Some((sql, _)) = &step.query {
            return Read {
                first_sql: sql.clone(),
                next_sql: sql.clone(),
                types,
                copied: None,
                forms,
            };
        }
        let names: Vec<String> = match &step.columns {
            Some(columns) => columns.clone(),
            None => info.columns.iter().map(|c| c.name.clone()).collect(),
        };
        let k = quote_ident(dialect, &step.key);
        // The key comes first, under a name of its own: a slice continues after the last key
        // it read, whether or not the key is among the columns copied.
        let list: Vec<String> = std::iter::once(format!("{k} AS {SLICE_KEY}"))
            .chain(names.iter().map(|n| selected(dialect, info, n)))
            .collect();
        let filter = step
            .filter
            .as_deref()
            .map(|f| format!(" AND ({f})"))
            .unwrap_or_default();
        let sql = |first: bool| {
            let (range, limit) = slices::bounds(dialect, &k, first);
            format!(
                "SELECT {} FROM {} WHERE {range}{filter} ORDER BY {k}{limit}",
                list.join(", "),
                quote_ident(dialect, &step.table),
            )
        };
        Read {
            first_sql: sql(true),
            next_sql: sql(false),
            types,
            copied: names.iter().map(|n| info.column(n).cloned()).collect(),
            forms,
        }
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

/// A copy that runs inside its one database (`CopyStep::in_database`).
pub(crate) struct InDatabase {
    /// A batch: `INSERT … SELECT` of the key range `$1..=$2`.
    insert: String,
    /// The copied columns of the source, in order.
    pub(crate) sources: Vec<String>,
    /// The target's columns they go into, in the same order.
    pub(crate) targets: Vec<String>,
}

/// What a read of the source returned.
enum Fetched {
    Rows(Vec<godwit_driver::Row>),
    /// Undecoded, with the target's names of its columns.
    Raw(Vec<String>, RawRows),
}

impl Read {
    /// The target's names of the copied columns when each goes into a target column of
    /// exactly its type, length and precision included (a narrower `numeric` would round, a
    /// narrower `varchar` would refuse what godwit should refuse by row), PostgreSQL into
    /// PostgreSQL. Values can then go across undecoded or never leave the database. With
    /// `raw` (rows that cross undecoded), also only columns the driver reads natively (whose
    /// binary form is known), into a target `COPY` can load.
    fn same_types(&self, write: &Write, raw: bool) -> Option<Vec<String>> {
        let exact = self.forms.exact_types()
            && write.forms.exact_types()
            && self.forms.dialect() == write.forms.dialect();
        if !exact {
            return None;
        }
        // Undecoded rows can only be loaded with COPY.
        if raw && !write.bulk_load {
            return None;
        }
        self.copied
            .as_ref()?
            .iter()
            .map(|source| {
                let target = write.columns.get(&source.name)?;
                let same = (source.decodable() || !raw)
                    && target.info.data_type == source.data_type
                    && target.info.cast == source.cast;
                same.then(|| target.name.clone())
            })
            .collect()
    }
}

impl Write {
    fn new(info: &TableInfo, forms: &'static dyn SqlForms) -> Write {
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
    fn conflict_clause(
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

/// The source key of a row, for messages and dead letters: the column named like the step's
/// key, else the row's first value.
fn key_of(names: &[String], key: &str, values: &[Value]) -> String {
    let at = names
        .iter()
        .position(|n| n.eq_ignore_ascii_case(key))
        .unwrap_or(0);
    values.get(at).map_or_else(String::new, key_text)
}
