//! The SQLite backend of godwit's driver interface, over sqlx.
//!
//! SQLite has one writer at a time. Connections open in WAL mode with a busy timeout, and
//! transactions start with `BEGIN IMMEDIATE`, so concurrent batches queue for the write lock
//! instead of failing with `SQLITE_BUSY` when a read lock cannot be upgraded. A batch's time
//! limit is a progress handler that interrupts its statements past the deadline.
#![deny(missing_docs)]

mod forms;

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use godwit_driver::sqlx_conn::{self, database_error, Backend, Location, SqlxConn};
use godwit_driver::{
    ColumnInfo, ConnectOptions, DbUrl, Dialect, Error, ErrorKind, IndexInfo, Result, Row, SqlForms,
    TableInfo, TxOptions, Value,
};
use sqlx::error::DatabaseError;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteQueryResult, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions as _, Row as _, Sqlite, TypeInfo, ValueRef};

use crate::forms::SqliteForms;

/// SQLite's forms of godwit's statements.
pub fn forms() -> &'static dyn SqlForms {
    &SqliteForms
}

/// How long a writer waits for the lock before SQLite reports busy. Long, because with one
/// writer every other batch waits its turn here.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection to a SQLite database file.
pub struct SqliteConn {
    conn: SqlxConn<SqliteBackend>,
}

/// Opens the database named by a `sqlite://path` URL.
///
/// # Errors
/// When the URL is malformed, or the file is missing and `create_if_missing` is off.
pub async fn connect(url: &DbUrl, options: &ConnectOptions) -> Result<SqliteConn> {
    let opts = SqliteConnectOptions::from_str(url.expose())
        .map_err(|e| Error::config(format!("invalid SQLite URL {url}: {e}")))?
        .create_if_missing(options.create_if_missing)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(BUSY_TIMEOUT)
        .disable_statement_logging();
    let conn = SqlxConn::connect(&opts, format!("cannot open {url}")).await?;
    Ok(SqliteConn { conn })
}

/// SQLite's part of [`SqlxConn`].
struct SqliteBackend;

impl Backend for SqliteBackend {
    type Db = Sqlite;
    type Decoder = ();

    const LOCATION: Location = Location::InProcess;

    /// By the primary result code: `SQLITE_BUSY` and `SQLITE_LOCKED` are transient, an
    /// interrupt is the batch deadline, the rest is permanent.
    fn classify_database(db: Box<dyn DatabaseError>) -> Error {
        let code = db.code().map(|c| c.into_owned());
        let primary = code
            .as_deref()
            .and_then(|c| c.parse::<i64>().ok())
            .map(|c| c & 0xff);
        let kind = match primary {
            Some(5) | Some(6) => ErrorKind::Transient,
            // Interrupted by the batch deadline set in `begin`.
            Some(9) => ErrorKind::Timeout,
            _ => ErrorKind::Permanent,
        };
        // SQLITE_TOOBIG, SQLITE_CONSTRAINT, SQLITE_MISMATCH: a row's values refused.
        let refused = matches!(primary, Some(18..=20));
        database_error(kind, code, db.message(), refused)
    }

    // SQLite has no UUID or array type; applications store them as text, so every value is
    // bound in the common form, `bind`'s default.

    /// Each value by its own storage class: SQLite types values, not columns.
    fn decoder(_: &SqliteRow) {}

    fn decode_row(row: &SqliteRow, columns: &Arc<[String]>, (): &()) -> Result<Row> {
        decode_row(row, columns)
    }

    fn rows_affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }

    /// Removes the batch deadline so that it cannot interrupt the commit, the rollback or
    /// whatever runs on this connection next.
    async fn before_end(conn: &mut SqliteConnection) -> Result<()> {
        let mut handle = conn.lock_handle().await.map_err(classify)?;
        handle.remove_progress_handler();
        Ok(())
    }
}

/// Classifies by SQLite's result codes ([`SqliteBackend`]).
fn classify(err: sqlx::Error) -> Error {
    sqlx_conn::classify::<SqliteBackend>(err)
}

fn decode_row(row: &SqliteRow, columns: &Arc<[String]>) -> Result<Row> {
    let mut values = Vec::with_capacity(columns.len());
    for idx in 0..columns.len() {
        let raw = row.try_get_raw(idx).map_err(classify)?;
        if raw.is_null() {
            values.push(Value::Null);
            continue;
        }
        // SQLite types each value, not each column: decode by the value's storage class.
        let class = raw.type_info().name().to_ascii_uppercase();
        let value = match class.as_str() {
            "INTEGER" | "BOOLEAN" => Value::Int(row.try_get::<i64, _>(idx).map_err(classify)?),
            "REAL" => Value::Float(row.try_get::<f64, _>(idx).map_err(classify)?),
            "BLOB" => Value::Bytes(row.try_get::<Vec<u8>, _>(idx).map_err(classify)?),
            // SQLite stores whatever bytes it was given as text: text that is not UTF-8 is
            // kept as its bytes, for fitting to refuse per row (or `convert` to repair),
            // rather than failing the whole read.
            _ => {
                let bytes = row.try_get_unchecked::<Vec<u8>, _>(idx).map_err(classify)?;
                String::from_utf8(bytes).map_or_else(|e| Value::Bytes(e.into_bytes()), Value::Text)
            }
        };
        values.push(value);
    }
    Ok(Row::new(columns.clone(), values))
}

fn text(value: &Value) -> String {
    match value {
        Value::Text(s) => s.clone(),
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        Value::Int(n) => n.to_string(),
        _ => String::new(),
    }
}

/// Virtual machine instructions between two looks at a batch's deadline: often enough to stop
/// within milliseconds, rare enough to cost nothing measurable.
const PROGRESS_OPS: i32 = 10_000;

godwit_driver::impl_sqlx_conn! {
    SqliteConn, Dialect::Sqlite, forms();

    async fn prepare(&mut self, sql: &str) -> Result<()> {
        self.conn.prepare(sql).await
    }

    async fn begin(&mut self, options: TxOptions) -> Result<()> {
        if let Some(timeout) = options.statement_timeout {
            // SQLite has no statement timeout: a progress handler interrupts the
            // transaction's statements past the deadline (SQLITE_INTERRUPT, a timeout).
            let deadline = Instant::now() + timeout;
            let mut handle = self.conn.raw().lock_handle().await.map_err(classify)?;
            handle.set_progress_handler(PROGRESS_OPS, move || Instant::now() < deadline);
        }
        // IMMEDIATE takes the write lock now: a deferred transaction that reads first fails
        // with SQLITE_BUSY when it cannot upgrade its lock, instead of waiting.
        self.conn.begin("BEGIN IMMEDIATE").await
    }

    async fn table_info(&mut self, table: &str) -> Result<Option<TableInfo>> {
        let rows = self
            .query(
                "SELECT name, type, \"notnull\", pk FROM pragma_table_info(?) ORDER BY cid",
                &[Value::Text(table.to_string())],
            )
            .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let single_pk = rows
            .iter()
            .filter(|r| r.get(3).as_i64().unwrap_or(0) > 0)
            .count()
            == 1;
        let columns: Vec<ColumnInfo> = rows
            .iter()
            .map(|r| {
                let data_type = text(r.get(1)).to_ascii_lowercase();
                // An INTEGER PRIMARY KEY is the rowid, never NULL, though not declared so.
                let rowid = single_pk && data_type == "integer" && r.get(3).as_i64() == Some(1);
                ColumnInfo {
                    name: text(r.get(0)),
                    data_type,
                    nullable: r.get(2).as_i64() == Some(0) && !rowid,
                    cast: None,
                    collation: None,
                }
            })
            .collect();
        let mut indexes = Vec::new();
        // An INTEGER PRIMARY KEY is the rowid itself and appears in no index list.
        let pk: Vec<String> = rows
            .iter()
            .filter(|r| r.get(3).as_i64().unwrap_or(0) > 0)
            .map(|r| text(r.get(0)))
            .collect();
        if !pk.is_empty() {
            indexes.push(IndexInfo {
                name: "PRIMARY KEY".into(),
                columns: pk,
                unique: true,
                primary: true,
            });
        }
        let list = self
            .query(
                "SELECT name, \"unique\" FROM pragma_index_list(?)",
                &[Value::Text(table.to_string())],
            )
            .await?;
        for index in list {
            let name = text(index.get(0));
            let cols = self
                .query(
                    "SELECT name FROM pragma_index_info(?) ORDER BY seqno",
                    &[Value::Text(name.clone())],
                )
                .await?;
            indexes.push(IndexInfo {
                name,
                columns: cols.iter().map(|c| text(c.get(0))).collect(),
                unique: index.get(1).as_i64() == Some(1),
                primary: false,
            });
        }
        Ok(Some(TableInfo {
            columns,
            indexes,
            bulk_load: false,
        }))
    }

    async fn server_version(&mut self) -> Result<String> {
        let rows = self.query("SELECT sqlite_version()", &[]).await?;
        Ok(format!(
            "SQLite {}",
            rows.first().map(|r| text(r.get(0))).unwrap_or_default()
        ))
    }
}
