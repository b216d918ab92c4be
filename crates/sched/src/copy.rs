//! A copy step's batch: read a key range from the source, optionally transform it, and insert
//! the rows into the target table in the batch's transaction on the plan's database, so the
//! rows and the batch's done record commit together.
//!
//! A batch is read in slices (`slices.rs`); the first is read before the target's transaction
//! opens. Each slice is written with one `INSERT` per group of rows with the same columns:
//! `INSERT … SELECT … FROM unnest(text[], …)` on PostgreSQL, multi-row `VALUES` elsewhere
//! (split only at the database's parameter limit), with `on_conflict`: `error` (plain insert),
//! `ignore` (`ON CONFLICT DO NOTHING`; on MySQL an update that changes nothing, since
//! `INSERT IGNORE` would also hide truncations) or `update` (an upsert on the target's primary
//! key or first unique index).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use godwit_driver::{
    quote_ident, rewrite_params, Conn, DbUrl, Dialect, Error, SqlType, TableInfo, TxOptions, Value,
};
use godwit_plan::{Convert, OnConflict, OnRowError, Step, StepKind};
use godwit_state::DeadLetter;
use godwit_transform::{Outcome, Rows, Transform};
use tokio::sync::OnceCell;

use crate::pool::ConnPool;
use crate::rows::{key_text, pg_text, refuse_row, selected, Columns, MAX_PARAMS};
use crate::slices::{self, row_bytes, Slicer};
use crate::step::build_transform;

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
        }
    }
}

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
}

/// What the target looks like.
struct Write {
    columns: Columns,
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
        let StepKind::Copy {
            table,
            key,
            columns,
            query,
            filter,
            into,
            on_conflict,
            script,
            ..
        } = &step.kind
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
        }))
    }

    /// Where a copy reads: its `source`, or else the plan's database.
    pub(crate) fn source_url(step: &Step, plan_database: &DbUrl) -> DbUrl {
        match &step.kind {
            StepKind::Copy {
                source: Some(url), ..
            } => DbUrl::new(url.clone()),
            _ => plan_database.clone(),
        }
    }

    async fn read_plan(&self, conn: &mut dyn Conn) -> Result<&Read, Error> {
        self.read
            .get_or_try_init(|| async {
                let info = conn.table_info(&self.table).await?.ok_or_else(|| {
                    Error::permanent(format!("source table {} does not exist", self.table))
                })?;
                Ok(Read::new(conn.dialect(), self, &info))
            })
            .await
    }

    async fn write_plan(&self, conn: &mut dyn Conn) -> Result<&Write, Error> {
        self.write
            .get_or_try_init(|| async {
                let info = conn.table_info(&self.into).await?.ok_or_else(|| {
                    Error::permanent(format!("target table {} does not exist", self.into))
                })?;
                Ok(Write::new(&info, conn.dialect()))
            })
            .await
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

    /// Copies the batch between `start` and `end` (inclusive) into the target on `conn`, slice
    /// by slice: each slice is read from the source, transformed and written before the next
    /// is read. The target's transaction opens (with `tx`) after the first read, so it is not
    /// held while a slow source answers its first query. Returns the rows written and the
    /// refused rows.
    pub(crate) async fn run(
        &self,
        conn: &mut dyn Conn,
        tx: TxOptions,
        start: Value,
        end: Value,
    ) -> Result<(u64, Vec<DeadLetter>), Error> {
        // Known before the first read: which columns the target has.
        self.write_plan(conn).await?;
        let mut written = 0;
        let mut letters = Vec::new();
        let mut began = false;
        let mut slice = Slice::First(start);
        loop {
            let (rows, refused, next) = self.read(&slice, &end).await?;
            letters.extend(refused);
            if !began {
                conn.begin(tx).await?;
                began = true;
            }
            written += self.write(conn, rows, &mut letters).await?;
            match next {
                Some(after) => slice = Slice::After(after),
                None => return Ok((written, letters)),
            }
        }
    }

    /// Reads the whole range between `start` and `end` (inclusive), as `verify` compares it.
    pub(crate) async fn read_range(
        &self,
        start: Value,
        end: Value,
    ) -> Result<(Vec<Vec<(String, Value)>>, Vec<DeadLetter>), Error> {
        let (mut all, mut letters) = (Vec::new(), Vec::new());
        let mut slice = Slice::First(start);
        loop {
            let (rows, refused, next) = self.read(&slice, &end).await?;
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
    async fn read(
        &self,
        slice: &Slice,
        end: &Value,
    ) -> Result<(Copied, Vec<DeadLetter>, Option<Value>), Error> {
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
            let rows = conn.query(sql, &params).await?;
            Ok::<_, Error>((plan, rows))
        }
        .await;
        let (plan, rows) = match read {
            Ok(found) => {
                self.source.give(conn);
                found
            }
            // A connection that failed mid-query is not given back.
            Err(e) => return Err(e),
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
        let outcomes = transform.apply(input.clone()).await?;
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
    ) -> Result<u64, Error> {
        let dialect = conn.dialect();
        let write = self.write_plan(conn).await?;
        let rows = match rows {
            Copied::Positional { names, rows } => {
                match self.write_positional(write, &names, rows, dead_letters)? {
                    Ok((stored, fitted)) => {
                        return self
                            .insert_all(conn, dialect, write, &stored, &fitted)
                            .await
                    }
                    // A column the target lacks: each row is refused by name below.
                    Err(rows) => rows,
                }
            }
            Copied::Named(rows) => rows,
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
            written += self.insert_all(conn, dialect, write, names, rows).await?;
        }
        Ok(written)
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
    ) -> Result<Result<(Vec<String>, Vec<Vec<Value>>), Vec<Vec<(String, Value)>>>, Error> {
        let columns: Option<Vec<&crate::rows::Column>> =
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
        for values in rows {
            let key = values.get(key_at).map_or_else(String::new, key_text);
            let mut out = Vec::with_capacity(values.len());
            let mut problem = None;
            for (value, column) in values.into_iter().zip(&columns) {
                match column.fit(value, &self.convert) {
                    Ok(v) => out.push(v),
                    Err(p) => {
                        problem = Some(p);
                        break;
                    }
                }
            }
            match problem {
                None => fitted.push(out),
                Some(problem) => {
                    // The row as far as it was fitted; the error names the value that was not.
                    let problem = format!("target table {}: {problem}", self.into);
                    let shown = &stored[..out.len()];
                    let letter = refuse_row(self.on_row_error, key, problem, shown, &out)?;
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
        dialect: Dialect,
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
        let per_statement = (MAX_PARAMS / names.len().max(1)).max(1);
        let mut written = 0;
        for chunk in rows.chunks(per_statement) {
            let (sql, params) =
                write.insert(dialect, &self.into, self.on_conflict, names, chunk)?;
            written += conn.execute(&sql, &params).await?;
        }
        Ok(written)
    }
}

impl Read {
    fn new(dialect: Dialect, step: &CopyStep, info: &TableInfo) -> Read {
        let types = Columns::new(info, dialect);
        if let Some((sql, _)) = &step.query {
            return Read {
                first_sql: sql.clone(),
                next_sql: sql.clone(),
                types,
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
        }
    }
}

impl Write {
    fn new(info: &TableInfo, dialect: Dialect) -> Write {
        // The primary key if there is one, else the first unique index.
        let chosen = info
            .indexes
            .iter()
            .find(|i| i.primary)
            .or_else(|| info.indexes.iter().find(|i| i.unique));
        Write {
            columns: Columns::new(info, dialect),
            conflict_key: chosen.map(|i| i.columns.clone()).unwrap_or_default(),
        }
    }

    /// One multi-row insert of `rows` (values in `names` order).
    fn insert(
        &self,
        dialect: Dialect,
        table: &str,
        on_conflict: OnConflict,
        names: &[String],
        rows: &[Vec<Value>],
    ) -> Result<(String, Vec<Value>), Error> {
        let q = |n: &str| quote_ident(dialect, n);
        let (source, params) = if dialect == Dialect::Postgres {
            // One text[] parameter per column, cast to the column's type: the statement's text
            // depends only on the columns, so it is prepared once, whatever the rows.
            let mut columns: Vec<Vec<Option<String>>> =
                vec![Vec::with_capacity(rows.len()); names.len()];
            for values in rows {
                for (column, value) in columns.iter_mut().zip(values) {
                    column.push(pg_text(value));
                }
            }
            let aliases: Vec<String> = (1..=names.len()).map(|i| format!("godwit_{i}")).collect();
            let selected: Vec<String> = names
                .iter()
                .zip(&aliases)
                .map(|(n, a)| format!("{a}{}", self.columns.cast(dialect, n)))
                .collect();
            let arrays: Vec<String> = (1..=names.len()).map(|i| format!("${i}::text[]")).collect();
            (
                format!(
                    " SELECT {} FROM unnest({}) AS godwit_v({})",
                    selected.join(", "),
                    arrays.join(", "),
                    aliases.join(", ")
                ),
                columns.into_iter().map(Value::TextArray).collect(),
            )
        } else {
            let mut params = Vec::with_capacity(rows.len() * names.len());
            let mut tuples = Vec::with_capacity(rows.len());
            for values in rows {
                let mut cells = Vec::with_capacity(names.len());
                for value in values {
                    params.push(value.clone());
                    cells.push(dialect.param(params.len()));
                }
                tuples.push(format!("({})", cells.join(", ")));
            }
            (format!(" VALUES {}", tuples.join(", ")), params)
        };
        let in_key = |n: &String| self.conflict_key.iter().any(|k| k.eq_ignore_ascii_case(n));
        let others: Vec<&String> = names.iter().filter(|n| !in_key(n)).collect();
        let clause = match (on_conflict, dialect) {
            (OnConflict::Error, _) => String::new(),
            (OnConflict::Ignore, Dialect::Postgres | Dialect::Sqlite) => {
                " ON CONFLICT DO NOTHING".to_string()
            }
            (OnConflict::Ignore, Dialect::MySql) => {
                let first = q(&names[0]);
                format!(" ON DUPLICATE KEY UPDATE {first} = {first}")
            }
            (OnConflict::Update, Dialect::Postgres | Dialect::Sqlite) => {
                if self.conflict_key.is_empty() {
                    return Err(Error::permanent(format!(
                        "on_conflict = \"update\" needs a primary key or unique index on {table}"
                    )));
                }
                let target: Vec<String> = self.conflict_key.iter().map(|k| q(k)).collect();
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
            (OnConflict::Update, Dialect::MySql) => {
                let set: Vec<String> = if others.is_empty() {
                    vec![format!("{} = {}", q(&names[0]), q(&names[0]))]
                } else {
                    others
                        .iter()
                        .map(|n| format!("{} = VALUES({})", q(n), q(n)))
                        .collect()
                };
                format!(" ON DUPLICATE KEY UPDATE {}", set.join(", "))
            }
        };
        let columns: Vec<String> = names.iter().map(|n| q(n)).collect();
        let sql = format!(
            "INSERT INTO {} ({}){source}{clause}",
            quote_ident(dialect, table),
            columns.join(", "),
        );
        Ok((sql, params))
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
