//! What judging asks the database about a step's table: its key, its columns, its `where`,
//! and its batch statement on an empty range.

use godwit_driver::{quote_ident, rewrite_params, Conn, Row, Value};

use crate::judgement::Depth;
use crate::judgement::StepJudgement;

/// The rows a step walks: its table and key, the columns it names, its `where`.
pub(crate) struct Walked<'a> {
    pub(crate) table: &'a str,
    pub(crate) key: &'a str,
    pub(crate) columns: &'a [String],
    pub(crate) filter: Option<&'a str>,
}

/// Reports a table or key that cannot be walked; `false` when it was reported.
pub(crate) async fn key_ok(
    judged: &mut StepJudgement<'_>,
    conn: &mut dyn Conn,
    table: &str,
    key: &str,
    filter: Option<&str>,
) -> bool {
    match godwit_batch::key_problem(conn, table, key, filter).await {
        Ok(None) => true,
        Ok(Some(p)) => {
            judged.problem(p.code, p.plan_key, &p.message, p.fix);
            false
        }
        Err(e) => {
            judged.database_problem("table", &format!("cannot inspect table {table}"), e);
            false
        }
    }
}

/// Reports columns the table lacks and a `where` the database refuses.
pub(crate) async fn rows_ok(
    judged: &mut StepJudgement<'_>,
    conn: &mut dyn Conn,
    walked: &Walked<'_>,
) {
    let table = walked.table;
    if let Ok(Some(info)) = conn.table_info(table).await {
        for column in walked.columns.iter().filter(|c| info.column(c).is_none()) {
            let what = format!("table {table} has no column {column}");
            judged.problem("missing-column", "columns", &what, None);
        }
    }
    let Some(filter) = walked.filter.filter(|_| judged.depth == Depth::Full) else {
        return;
    };
    if let Err(what) = first_key(conn, table, walked.key, Some(filter)).await {
        judged.problem("invalid-sql", "where", &what, None);
    }
}

/// The walk's first query, the lowest key that `filter` lets through; an error says what to
/// check.
async fn first_key(
    conn: &mut dyn Conn,
    table: &str,
    key: &str,
    filter: Option<&str>,
) -> Result<Vec<Row>, String> {
    let dialect = conn.dialect();
    let k = quote_ident(dialect, key);
    let filter_sql = filter.map(|f| format!(" WHERE ({f})")).unwrap_or_default();
    let probe = format!(
        "SELECT {k} FROM {}{filter_sql} ORDER BY {k} LIMIT 1",
        quote_ident(dialect, table)
    );
    conn.query(&probe, &[])
        .await
        .map_err(|e| format!("the key walk fails (check `where`): {e}"))
}

/// Runs the walk's first query, prepares the batch statement, and with an integer key runs it on
/// an empty range (below the lowest key) inside a transaction that is rolled back, so that a
/// typo in `where` or `sql` shows now rather than at the first batch. An error names the plan
/// key that caused it.
pub(crate) async fn try_batch(
    conn: &mut dyn Conn,
    table: &str,
    key: &str,
    filter: Option<&str>,
    sql: &str,
) -> Result<(), (&'static str, String)> {
    let first = first_key(conn, table, key, filter)
        .await
        .map_err(|what| ("where", what))?;
    let dialect = conn.dialect();
    let rewritten = rewrite_params(sql, dialect, &["start", "end"]);
    let sql_error = |e| ("sql", format!("the batch statement fails: {e}"));
    conn.prepare(&rewritten.sql).await.map_err(sql_error)?;
    // Preparing finds syntax and names; running finds what only execution does (a type the
    // database infers differently, a function that exists for other argument types). That
    // needs a range known to be empty, which only integer arithmetic gives.
    let Some(Value::Int(lowest)) = first.first().map(|row| row.get(0).clone()) else {
        return Ok(());
    };
    let (start, end) = (
        Value::Int(lowest.saturating_sub(1)),
        Value::Int(lowest.saturating_sub(2)),
    );
    let params: Vec<Value> = rewritten
        .order
        .iter()
        .map(|&i| if i == 0 { start.clone() } else { end.clone() })
        .collect();
    conn.begin(Default::default())
        .await
        .map_err(|e| ("sql", e.to_string()))?;
    let result = conn.execute(&rewritten.sql, &params).await;
    let _ = conn.rollback().await;
    result.map(drop).map_err(sql_error)
}
