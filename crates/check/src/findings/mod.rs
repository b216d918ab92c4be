//! Findings: what makes a valid plan slow, or hard on the application beside it, found
//! before anything is written.
//!
//! The principle behind most of them: a batch's cost must grow with the batch, not with the
//! table. `check` asks the database for the plan of each batch statement on a real key range
//! of the step's batch size ([`explain`]) and reports every table the plan reads in full,
//! once per batch or once per row of it; it reads the catalogs ([`catalog`]) for what each
//! written row costs besides itself (indexes, row triggers, foreign keys pointing at the
//! table); and it reads the statements' text ([`shape`], [`ddl`]) for OFFSET paging and DDL
//! that blocks writers. Small tables are never reported: reading them whole is cheap.

mod catalog;
mod ddl;
mod explain;
mod shape;

use std::collections::HashMap;

use godwit_batch::KeyWalk;
use godwit_driver::{quote_ident, rewrite_params, Conn, Dialect, KeyKind, TableInfo, Value};

use crate::findings::explain::{FullRead, Runs};
use crate::findings::shape::Shape;
pub(crate) use crate::findings::shape::Verb;
use crate::judgement::StepJudgement;

/// Tables with fewer rows than this are read whole without a finding.
const SMALL_TABLE: f64 = 10_000.0;

/// A plan node that reads more than this many times the batch's rows is reported.
const READS_PER_BATCH_ROW: f64 = 20.0;

/// A one-off statement on a table with fewer rows than this is not reported as blocking.
const LARGE_TABLE: f64 = 100_000.0;

/// The findings of a one-off statement.
pub(crate) async fn once_findings(judged: &mut StepJudgement<'_>, conn: &mut dyn Conn, sql: &str) {
    let dialect = conn.dialect();
    if godwit_batch::needs_autocommit(sql, dialect) && ddl::unsafe_twice(sql, dialect) {
        judged.finding(
            "non-transactional",
            "this statement runs outside a transaction (the database refuses it inside one, or commits it on its own), so a crash between it and godwit's record of it runs it again, and a second run fails: make it idempotent".into(),
            Some(format!("{} (without IF EXISTS / IF NOT EXISTS)", excerpt(sql, 0))),
            Some("add IF NOT EXISTS (or IF EXISTS to a DROP)".into()),
        );
    }
    let Some(blocking) = ddl::blocking(sql, dialect) else {
        return;
    };
    let rows = catalog::rows(conn, &blocking.table).await.ok().flatten();
    // A table that does not exist yet (created by an earlier step) or is small is no concern.
    if rows.is_some_and(|r| r >= LARGE_TABLE) {
        let rows = rows.unwrap_or_default();
        judged.finding(
            "blocking-ddl",
            format!("{} (about {} rows)", blocking.why, count(rows)),
            Some(format!("{} has about {} rows", blocking.table, count(rows))),
            Some(blocking.fix),
        );
    }
}

/// What a step writes, for the findings about each written row's cost.
pub(crate) struct Writes<'a> {
    pub(crate) table: &'a str,
    pub(crate) verb: Verb,
    /// The columns it changes (an `UPDATE`'s or a transform's).
    pub(crate) columns: Vec<String>,
}

/// The findings of a chunked SQL step: its text, its plan on a real key range, and what it
/// writes.
pub(crate) async fn chunked_findings(
    judged: &mut StepJudgement<'_>,
    conn: &mut dyn Conn,
    (table, key, filter): (&str, &str, Option<&str>),
    sql: &str,
) {
    let dialect = conn.dialect();
    let shape = Shape::of(sql, dialect);
    for (text, plan_key) in [(Some(sql), "sql"), (filter, "where")] {
        let Some(text) = text.filter(|t| Shape::of(t, dialect).offset) else {
            continue;
        };
        let at = text
            .to_ascii_uppercase()
            .find("OFFSET")
            .or_else(|| text.to_ascii_uppercase().find("LIMIT"))
            .unwrap_or(0);
        {
            judged.finding(
                "offset-pagination",
                format!("the step's `{plan_key}` pages with OFFSET: the database reads and throws away every row before the offset, so each batch costs more than the one before and the whole run grows with the square of the table"),
                Some(excerpt(text, at)),
                Some("godwit already gives each batch its key range: drop OFFSET/LIMIT and select the batch's rows by `:start` and `:end`".into()),
            );
        }
    }
    if let Some(sample) =
        Sample::take(conn, table, key, filter, judged.step.settings.batch_size).await
    {
        let rewritten = rewrite_params(sql, dialect, &["start", "end"]);
        let params: Vec<Value> = rewritten
            .order
            .iter()
            .map(|&i| {
                if i == 0 {
                    sample.first.clone()
                } else {
                    sample.last.clone()
                }
            })
            .collect();
        // A statement the database cannot plan cannot run either: the batch statement's own
        // check reports that, with the database's error.
        if let Ok(reads) = explain::full_reads(conn, &rewritten.sql, &params).await {
            let mut tables = Tables::default();
            for read in &reads {
                judge_read(
                    judged,
                    conn,
                    &mut tables,
                    &shape,
                    read,
                    (table, key),
                    &sample,
                )
                .await;
            }
        }
    }
    let writes = Writes {
        table: shape.target.as_deref().unwrap_or(table),
        verb: shape.verb,
        columns: shape.set_columns.clone(),
    };
    write_findings(judged, conn, &writes).await;
}

/// The findings about what each written row costs besides itself.
pub(crate) async fn write_findings(
    judged: &mut StepJudgement<'_>,
    conn: &mut dyn Conn,
    writes: &Writes<'_>,
) {
    let table = writes.table;
    if writes.verb == Verb::Update && !writes.columns.is_empty() {
        if let Ok(indexes) = catalog::indexes(conn, table).await {
            // InnoDB keeps the primary key in every secondary index: changing it rewrites all.
            let pk_changed = conn.dialect() == Dialect::MySql
                && indexes
                    .iter()
                    .any(|i| i.primary && writes.columns.iter().any(|c| i.mentions(c)));
            let touched: Vec<_> = indexes
                .iter()
                .filter(|i| pk_changed || writes.columns.iter().any(|c| i.mentions(c)))
                .collect();
            let heavy = touched.iter().any(|i| i.heavy);
            if touched.len() >= 2 || heavy {
                let names: Vec<&str> = touched.iter().map(|i| i.name.as_str()).collect();
                let hot = if conn.dialect() == Dialect::Postgres {
                    " (and on PostgreSQL a change to an indexed column rules out the cheap in-place HOT update)"
                } else {
                    ""
                };
                let heavy_note = if heavy {
                    ", some with many entries per row (GIN/GiST/full-text)"
                } else {
                    ""
                };
                judged.finding(
                    "index-churn",
                    format!(
                        "each changed row also rewrites its entries in {} indexes of {table}{heavy_note}: {}{hot}",
                        touched.len(),
                        names.join(", ")
                    ),
                    Some(format!("columns changed: {}", writes.columns.join(", "))),
                    Some(format!("drop the indexes on {} that nothing needs while the migration runs and build them again after it (CREATE INDEX CONCURRENTLY on PostgreSQL), and write only the rows that change (`where`)", writes.columns.join(", "))),
                );
            }
        }
    }
    if let Ok(triggers) = catalog::row_triggers(conn, table, writes.verb).await {
        if !triggers.is_empty() {
            let verb = match writes.verb {
                Verb::Update => "updated",
                Verb::Delete => "deleted",
                _ => "inserted",
            };
            let disable = match conn.dialect() {
                Dialect::Postgres => "disable it for the migration (ALTER TABLE … DISABLE TRIGGER …) and enable it after",
                _ => "drop it for the migration and create it again after",
            };
            judged.finding(
                "row-triggers",
                format!("each {verb} row of {table} fires {}: their work runs once per row inside each batch's transaction and may write other tables", triggers.join(", ")),
                Some(format!("row triggers on {table}: {}", triggers.join(", "))),
                Some(format!("measure the step with `godwit estimate`; if what a trigger does is not needed for migrated rows, or is done in bulk by another step, {disable}")),
            );
        }
    }
    let keys_change = |r: &catalog::Referencing| {
        writes.verb == Verb::Delete
            || (writes.verb == Verb::Update
                && r.referenced
                    .iter()
                    .any(|c| writes.columns.iter().any(|w| w.eq_ignore_ascii_case(c))))
    };
    if let Ok(references) = catalog::referencing(conn, table).await {
        for r in references.iter().filter(|r| !r.indexed && keys_change(r)) {
            let rows = catalog::rows(conn, &r.table)
                .await
                .ok()
                .flatten()
                .unwrap_or(0.0);
            let verb = if writes.verb == Verb::Delete {
                "deleted"
            } else {
                "re-keyed"
            };
            let dialect = conn.dialect();
            judged.finding(
                "unindexed-foreign-key",
                format!(
                    "for each {verb} row of {table} the database looks for rows of {} that reference it by ({}), and no index of {} starts with those columns: a read of all of {} (about {} rows) per row",
                    r.table, r.columns.join(", "), r.table, r.table, count(rows)
                ),
                Some(format!("foreign key {} on {} ({}) references {table}", r.name, r.table, r.columns.join(", "))),
                Some(create_index(dialect, &r.table, &r.columns)),
            );
        }
    }
}

/// The key range of one batch of the step's batch size: where the plan is asked for.
struct Sample {
    first: Value,
    last: Value,
    rows: f64,
}

impl Sample {
    async fn take(
        conn: &mut dyn Conn,
        table: &str,
        key: &str,
        filter: Option<&str>,
        batch_size: u64,
    ) -> Option<Sample> {
        let walk = KeyWalk::new(conn.dialect(), table, key, filter);
        let upper = walk.upper_key(conn).await.ok()??;
        let kind = KeyKind::of(&upper)?;
        let range = walk
            .next_ranges(conn, kind, None, &upper, batch_size.max(1), 1)
            .await
            .ok()?
            .into_iter()
            .next()?;
        Some(Sample {
            first: range.first,
            last: range.last,
            rows: range.n_rows.max(1) as f64,
        })
    }
}

/// Table sizes and descriptions, asked once each.
#[derive(Default)]
struct Tables {
    rows: HashMap<String, Option<f64>>,
    info: HashMap<String, Option<TableInfo>>,
}

impl Tables {
    async fn rows(&mut self, conn: &mut dyn Conn, table: &str) -> Option<f64> {
        if !self.rows.contains_key(table) {
            let rows = catalog::rows(conn, table).await.ok().flatten();
            self.rows.insert(table.to_string(), rows);
        }
        self.rows[table]
    }

    async fn info(&mut self, conn: &mut dyn Conn, table: &str) -> Option<&TableInfo> {
        if !self.info.contains_key(table) {
            let info = conn.table_info(table).await.ok().flatten();
            self.info.insert(table.to_string(), info);
        }
        self.info[table].as_ref()
    }
}

/// Reports one full read of a table in a batch statement's plan, if the table is large enough
/// for it to matter against the batch.
async fn judge_read(
    judged: &mut StepJudgement<'_>,
    conn: &mut dyn Conn,
    tables: &mut Tables,
    shape: &Shape,
    read: &FullRead,
    (step_table, key): (&str, &str),
    sample: &Sample,
) {
    let table = shape.table_of(&read.table).to_string();
    // A table the statement does not name is read by the database for reasons of its own
    // (a foreign key's check): the catalog findings speak of those.
    if !shape.names_table(&table) && !shape.names_table(&read.table) {
        return;
    }
    let shown = short(&table).to_string();
    let Some(rows) = tables.rows(conn, &table).await else {
        return;
    };
    if rows < SMALL_TABLE {
        return;
    }
    let batch = sample.rows;
    let dialect = conn.dialect();
    let same_table = |a: &str, b: &str| {
        let last = |s: &str| s.rsplit('.').next().unwrap_or(s).to_ascii_lowercase();
        last(a) == last(b)
    };

    let mut columns = condition_columns(
        conn.dialect(),
        read,
        &table,
        tables.info(conn, &table).await,
    );
    if columns.is_empty() {
        // SQLite's plan has no conditions: take the statement's own words for them, its
        // range on the step's table, and `alias.column` for another.
        let named = if same_table(&table, step_table) {
            shape.range_columns.clone()
        } else {
            shape.qualified_columns(&table)
        };
        let info = tables.info(conn, &table).await;
        columns = named
            .into_iter()
            .filter(|c| info.is_some_and(|i| i.column(c).is_some()))
            .collect();
    }
    let index = tables.info(conn, &table).await.and_then(|info| {
        info.indexes
            .iter()
            .find(|i| {
                i.columns
                    .first()
                    .is_some_and(|c| columns.iter().any(|x| x.eq_ignore_ascii_case(c)))
            })
            .map(|i| i.name.clone())
    });
    let fix_index = || (!columns.is_empty()).then(|| create_index(dialect, &table, &columns));
    match read.runs {
        Runs::PerRow { times, subquery } => {
            let times = times.unwrap_or(batch).max(1.0);
            if rows * times < READS_PER_BATCH_ROW * batch {
                return;
            }
            let what = if subquery { "a sub-select" } else { "the join" };
            let fix = match (&index, fix_index()) {
                (Some(index), _) => Some(format!("an index on it exists ({index}) but the database does not use it here: compare the indexed column itself (no function or cast around it), or write the sub-select as a join")),
                (None, Some(create)) => Some(create),
                (None, None) => Some(format!("index the columns of {shown} that the sub-select or join compares with the outer row")),
            };
            judged.finding(
                "correlated-subquery",
                format!(
                    "{what} reads all of {shown} (about {} rows) once for each of about {} rows of a batch: about {} rows read per batch, so the run grows with the square of the table",
                    count(rows), count(times), count(rows * times)
                ),
                Some(read.evidence.clone()),
                fix,
            );
        }
        Runs::Once => {
            if rows < READS_PER_BATCH_ROW * batch {
                return;
            }
            if same_table(&table, step_table) && !read.builds_index {
                let key_in_condition = columns.iter().any(|c| c.eq_ignore_ascii_case(key));
                let fix = if key_in_condition || columns.is_empty() {
                    Some(format!("select the batch's rows by the key itself, as in `{} BETWEEN :start AND :end` (no function or cast around the key), so that the database reads them through the key's index", quote_ident(dialect, key)))
                } else {
                    fix_index()
                };
                judged.finding(
                    "missing-index-filter",
                    format!(
                        "each batch statement reads all of {shown} (about {} rows) to find a batch's ~{} rows: the database reaches them through no index",
                        count(rows), count(batch)
                    ),
                    Some(read.evidence.clone()),
                    fix,
                );
                return;
            }
            let why = if read.builds_index {
                format!("the database builds a temporary index over all of {shown} (about {} rows) for each batch", count(rows))
            } else {
                format!("each batch reads all of {shown} (about {} rows) to join it with the batch's ~{} rows", count(rows), count(batch))
            };
            let fix = match (&index, dialect) {
                (Some(index), Dialect::Postgres) => Some(format!(
                    "an index exists ({index}): the planner expects one full read to cost less than ~{} index lookups, which holds for large batches and not for these (measured: a 1,000-row batch joined to a 200,000-row table by its key took 26.2 ms over a full read, 6.7 ms through the index). On SSD storage lower random_page_cost for godwit's connections (ALTER ROLE … IN DATABASE … SET random_page_cost = 1.1) and ANALYZE {}, then check again; or look the rows up through a LATERAL sub-select",
                    count(batch), shown
                )),
                (Some(index), _) => Some(format!("an index exists ({index}) but the plan reads the whole table: name it in the statement (FORCE INDEX ({index}) on MariaDB/MySQL) or look rows up with a sub-select")),
                (None, _) => fix_index().or(Some(format!("index the columns of {shown} that the statement joins on"))),
            };
            judged.finding(
                "full-scan-join",
                format!("{why}: each batch's cost grows with {shown}, not with the batch"),
                Some(read.evidence.clone()),
                fix,
            );
        }
    }
}

/// The columns of `table` named in the condition of `read`: `alias.column` for its own
/// alias or name, and bare names that are columns of the table.
fn condition_columns(
    dialect: Dialect,
    read: &FullRead,
    table: &str,
    info: Option<&TableInfo>,
) -> Vec<String> {
    let Some(condition) = &read.condition else {
        return Vec::new();
    };
    let toks = godwit_driver::tokens::tokens(condition, dialect);
    let own = |q: &str| {
        read.alias
            .as_deref()
            .is_some_and(|a| a.eq_ignore_ascii_case(q))
            || table
                .rsplit('.')
                .next()
                .is_some_and(|t| t.eq_ignore_ascii_case(q))
            || read.table.eq_ignore_ascii_case(q)
    };
    let is_column = |n: &str| info.is_some_and(|i| i.column(n).is_some());
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        if let Some(name) = toks[i].name() {
            let qualified = toks.get(i + 1).is_some_and(|t| t.is_punct("."));
            let after_dot = i > 0 && toks[i - 1].is_punct(".");
            if qualified {
                if let Some(column) = toks.get(i + 2).and_then(|t| t.name()) {
                    if own(name) && is_column(column) {
                        push_unique(&mut out, column);
                    }
                }
                i += 3;
                continue;
            }
            if !after_dot && is_column(name) {
                push_unique(&mut out, name);
            }
        }
        i += 1;
    }
    out
}

fn push_unique(out: &mut Vec<String>, name: &str) {
    if !out.iter().any(|n| n.eq_ignore_ascii_case(name)) {
        out.push(name.to_string());
    }
}

/// The statement that indexes `columns` of `table`, in the form that does not block writers.
fn create_index(dialect: Dialect, table: &str, columns: &[String]) -> String {
    let list: Vec<String> = columns.iter().map(|c| quote_ident(dialect, c)).collect();
    let t = quote_ident(dialect, table);
    match dialect {
        Dialect::Postgres => format!("CREATE INDEX CONCURRENTLY ON {t} ({})", list.join(", ")),
        Dialect::MySql => format!(
            "ALTER TABLE {t} ADD INDEX ({}), ALGORITHM=INPLACE, LOCK=NONE",
            list.join(", ")
        ),
        Dialect::Sqlite => {
            let base = table.rsplit('.').next().unwrap_or(table);
            let name = format!("{base}_{}_idx", columns.join("_"));
            format!(
                "CREATE INDEX {} ON {t} ({})",
                quote_ident(dialect, &name),
                list.join(", ")
            )
        }
    }
}

/// About 60 characters of `sql` from byte `at` (moved back to a character boundary), with
/// `…` where it was cut.
fn excerpt(sql: &str, at: usize) -> String {
    let mut start = at.min(sql.len());
    while !sql.is_char_boundary(start) {
        start -= 1;
    }
    let rest = &sql[start..];
    let cut: String = rest.chars().take(60).collect();
    let mut out = if start > 0 { format!("…{cut}") } else { cut };
    if rest.chars().count() > 60 {
        out.push('…');
    }
    out
}

/// A table's name as people write it: without PostgreSQL's default schema.
fn short(table: &str) -> &str {
    table.strip_prefix("public.").unwrap_or(table)
}

/// A row count as people read it: 1,234,567.
fn count(n: f64) -> String {
    godwit_driver::thousands(n.round().max(0.0).min(i64::MAX as f64) as i64)
}
