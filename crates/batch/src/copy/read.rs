//! Reading a copy's slices from the source, and the statement that copies a batch without a
//! row leaving the database.

use std::sync::Arc;

use godwit_driver::{
    quote_ident, ColumnInfo, Conn, Error, RawRows, Row, SqlForms, SqlType, TableInfo, Value,
};
use godwit_plan::OnConflict;
use godwit_transform::{Outcome, Rows, Transform};

use super::{key_of, write::Write, Copied, CopyStep, Slice, SliceRead};
use crate::error::BatchError;
use crate::fit::{selected, Columns};
use crate::refused::{key_text, refuse_row, DeadLetter};
use crate::slices::{self, row_bytes};

/// The name under which godwit's own read of a source selects the walked key.
const SLICE_KEY: &str = "godwit_slice_key";

/// How the source is read.
pub(super) struct Read {
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

impl CopyStep {
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
    pub(super) async fn read(
        &self,
        slice: &Slice,
        end: &Value,
        passthrough: bool,
    ) -> Result<SliceRead, BatchError> {
        let (plan, fetched, limit) = self.fetch(slice, end, passthrough).await?;
        let rows = match fetched {
            Fetched::Rows(rows) => rows,
            Fetched::Raw(names, rows) => {
                self.slicer.observe(rows.rows, rows.data.len() as u64);
                let full = rows.rows as i64 >= limit;
                let next = if full { rows.last_key.clone() } else { None };
                return Ok((Copied::Raw { names, rows }, Vec::new(), next));
            }
        };
        let Some(Decoded { input, keys, next }) = self.decode(plan, rows, limit) else {
            return Ok((Copied::Named(Vec::new()), Vec::new(), None));
        };
        let Some(transform) = &self.transform else {
            // Copied as they are: the column names are shared by every row.
            let copied = Copied::Positional {
                names: input.columns,
                rows: input.rows,
            };
            return Ok((copied, Vec::new(), next));
        };
        let (rows, dead_letters) = self.transformed(transform, input, &keys).await?;
        Ok((rows, dead_letters, next))
    }

    /// Runs a slice's query on a source connection: the read plan, the rows (undecoded when
    /// `passthrough` allows and the columns match exactly) and the slice's `LIMIT`.
    async fn fetch(
        &self,
        slice: &Slice,
        end: &Value,
        passthrough: bool,
    ) -> Result<(&Read, Fetched, i64), Error> {
        let mut conn = self.source.take().await?;
        let limit = self.slicer.rows();
        let read = async {
            let plan = self.read_plan(conn.as_mut()).await?;
            let (sql, params) = self.slice_query(plan, slice, end, limit);
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
        // A connection that failed mid-query is not given back.
        let (plan, rows) = read?;
        self.source.give(conn);
        Ok((plan, rows, limit))
    }

    /// The statement and parameters that read `slice` up to `end`, at most `limit` rows.
    fn slice_query<'r>(
        &self,
        plan: &'r Read,
        slice: &Slice,
        end: &Value,
        limit: i64,
    ) -> (&'r str, Vec<Value>) {
        match (&self.query, slice) {
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
        }
    }

    /// A slice's rows in the form transforms see, with the walked key of each and where the
    /// next slice starts (`None` for a slice with no rows).
    fn decode(&self, plan: &Read, rows: Vec<Row>, limit: i64) -> Option<Decoded> {
        let full = self.query.is_none() && rows.len() as i64 >= limit;
        // godwit's own read puts the walked key first, for the next slice; it is not copied.
        let skip = usize::from(self.query.is_none());
        let names: Arc<[String]> = rows.first()?.columns()[skip..].to_vec().into();
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
            columns: names,
            rows,
            bytes_columns: self
                .write
                .get()
                .map_or_else(|| Arc::from([]), |w| w.columns.bytes_columns()),
        };
        Some(Decoded { input, keys, next })
    }

    /// Runs `transform` over a slice's rows: the rows to write and the rows it
    /// refused, each named by its walked key (`keys`, in the rows' order) when there is one.
    async fn transformed(
        &self,
        transform: &Transform,
        input: Rows,
        keys: &[Option<Value>],
    ) -> Result<(Copied, Vec<DeadLetter>), BatchError> {
        let outcomes = transform
            .apply(input.clone())
            .await
            .map_err(BatchError::Transform)?;
        let names = &input.columns;
        let mut out = Vec::with_capacity(input.rows.len());
        let mut dead_letters = Vec::new();
        for ((values, outcome), key) in input.rows.iter().zip(outcomes).zip(keys) {
            let refused = match outcome {
                Outcome::Keep => continue,
                Outcome::Row(row) if row.is_empty() => {
                    "the transform returned an empty row; return nil to skip a row".to_string()
                }
                Outcome::Row(mut row) => {
                    self.keep_nulls(names, values, &mut row);
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
                None => key_of(names, &self.key, values),
            };
            let letter = refuse_row(self.on_row_error, key, refused, names, values)?;
            dead_letters.push(letter);
        }
        Ok((Copied::Named(out), dead_letters))
    }

    /// NULL reaches Lua as nil, which a table cannot hold: a column that was NULL and that the
    /// transform did not set stays NULL in the copy, rather than taking the target's default
    /// (or, on update, its old value).
    fn keep_nulls(&self, names: &[String], values: &[Value], row: &mut Vec<(String, Value)>) {
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
    }
}

/// A slice's rows decoded for a transform or the target.
struct Decoded {
    input: Rows,
    /// The walked key of each row, when godwit's own read selected it.
    keys: Vec<Option<Value>>,
    /// Where the next slice starts, when this one was full.
    next: Option<Value>,
}

impl Read {
    pub(super) fn new(forms: &'static dyn SqlForms, step: &CopyStep, info: &TableInfo) -> Read {
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

/// A copy that runs inside its one database (`CopyStep::in_database`).
pub(crate) struct InDatabase {
    /// A batch: `INSERT … SELECT` of the key range `$1..=$2`.
    pub(super) insert: String,
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
