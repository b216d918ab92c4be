//! Whether a step's key can be walked: the table and column exist and a unique index leads with
//! the key. Both `check` and `run` ask, so a plan that would scan the table per batch never runs.

use godwit_driver::{quote_ident, Conn, Error, Result, TableInfo};
use godwit_plan::{CopySpec, Step, StepKind};

/// Why a table and key cannot be walked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyProblem {
    /// `missing-table`, `missing-column`, `nullable-key`, `missing-index-key` or
    /// `key-not-unique`.
    pub code: &'static str,
    /// What is wrong, naming the table and key.
    pub message: String,
    /// The plan key the problem is about (`table` or `key`), for its location.
    pub plan_key: &'static str,
    /// A statement that fixes it, when there is one.
    pub fix: Option<String>,
}

/// `table`'s description, or a permanent error saying that the `what` (`source table`,
/// `target table`, `table`) does not exist.
pub(crate) async fn existing_table(
    conn: &mut dyn Conn,
    what: &str,
    table: &str,
) -> Result<TableInfo> {
    conn.table_info(table)
        .await?
        .ok_or_else(|| Error::permanent(format!("{what} {table} does not exist")))
}

/// Checks that `table.key` exists and has a unique index leading with it, and that no row the
/// step walks (those matching `filter`, its `where`) has a NULL key.
///
/// # Errors
/// When the database cannot be asked.
pub async fn key_problem(
    conn: &mut dyn Conn,
    table: &str,
    key: &str,
    filter: Option<&str>,
) -> Result<Option<KeyProblem>> {
    let dialect = conn.dialect();
    let Some(info) = conn.table_info(table).await? else {
        return Ok(Some(KeyProblem {
            code: "missing-table",
            message: format!("table {table} does not exist"),
            plan_key: "table",
            fix: None,
        }));
    };
    let Some(column) = info.column(key) else {
        return Ok(Some(KeyProblem {
            code: "missing-column",
            message: format!("table {table} has no column {key}"),
            plan_key: "key",
            fix: None,
        }));
    };
    let (indexed, unique) = info.key_index(key);
    if unique {
        if column.nullable {
            return null_keys(conn, table, key, filter).await;
        }
        return Ok(None);
    }
    let fix = format!(
        "CREATE UNIQUE INDEX {} ON {} ({})",
        quote_ident(dialect, &format!("{}_{key}_key", table.replace('.', "_"))),
        quote_ident(dialect, table),
        quote_ident(dialect, key)
    );
    let (code, what) = if indexed {
        (
            "key-not-unique",
            "is indexed but not unique; batches need a key that names each row once",
        )
    } else {
        (
            "missing-index-key",
            "has no index; every batch would scan the table",
        )
    };
    Ok(Some(KeyProblem {
        code,
        message: format!("the key {table}.{key} {what}"),
        plan_key: "key",
        fix: Some(fix),
    }))
}

/// A key column that allows NULL (as SQLite's `TEXT PRIMARY KEY` does unless declared `NOT
/// NULL`) is walked when no row the step walks holds NULL in it: a unique index admits any
/// number of NULLs, and no key range contains NULL, so such rows would be left out without a
/// word. Counted through the key's index.
async fn null_keys(
    conn: &mut dyn Conn,
    table: &str,
    key: &str,
    filter: Option<&str>,
) -> Result<Option<KeyProblem>> {
    let dialect = conn.dialect();
    let column = quote_ident(dialect, key);
    let also = filter.map(|f| format!(" AND ({f})")).unwrap_or_default();
    let sql = format!(
        "SELECT COUNT(*) FROM {} WHERE {column} IS NULL{also}",
        quote_ident(dialect, table)
    );
    let rows = conn.query(&sql, &[]).await?;
    let nulls = rows
        .first()
        .and_then(|r| r.values().first())
        .and_then(godwit_driver::Value::as_i64)
        .unwrap_or(0);
    if nulls == 0 {
        return Ok(None);
    }
    let rows = if nulls == 1 { "row has" } else { "rows have" };
    Ok(Some(KeyProblem {
        code: "nullable-key",
        message: format!(
            "{} {rows} a NULL key {table}.{key}, and a NULL is in no key range: set a key on {}, leave {} out with `where = \"{key} IS NOT NULL\"`, or choose another key",
            godwit_driver::thousands(nulls),
            if nulls == 1 { "it" } else { "them" },
            if nulls == 1 { "it" } else { "them" },
        ),
        plan_key: "key",
        fix: None,
    }))
}

/// The columns a copy writes as it reads them (no transform, no `query`) that its target
/// `target` lacks; empty for any other step, and for a copy that reshapes its rows (the
/// transform or query decides their columns). `source` is the copy's source database.
///
/// # Errors
/// When the source table cannot be described.
pub async fn columns_target_lacks(
    source: &mut dyn Conn,
    step: &Step,
    target: &TableInfo,
) -> Result<Vec<String>> {
    let StepKind::Copy(CopySpec {
        table,
        columns,
        query: None,
        script: None,
        ..
    }) = &step.kind
    else {
        return Ok(Vec::new());
    };
    let copied: Vec<String> = match columns {
        Some(columns) => columns.clone(),
        None => match source.table_info(table).await? {
            Some(info) => info.columns.into_iter().map(|c| c.name).collect(),
            None => Vec::new(),
        },
    };
    Ok(copied
        .into_iter()
        .filter(|c| target.column(c).is_none())
        .collect())
}
