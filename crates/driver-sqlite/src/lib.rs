//! The SQLite backend of godwit's driver interface, over sqlx.
//!
//! SQLite has one writer at a time. Connections open in WAL mode with a busy timeout, and
//! transactions start with `BEGIN IMMEDIATE`, so concurrent batches queue for the write lock
//! instead of failing with `SQLITE_BUSY` when a read lock cannot be upgraded. A batch's time
//! limit is a progress handler that interrupts its statements past the deadline.
#![deny(missing_docs)]

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use godwit_driver::{
    ColumnInfo, Conn, ConnectOptions, DbUrl, Dialect, Error, ErrorKind, IndexInfo, Result, Row,
    TableInfo, TxOptions, Value,
};
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Column, ConnectOptions as _, Row as _, Sqlite, TypeInfo, ValueRef};

/// How long a writer waits for the lock before SQLite reports busy. Long, because with one
/// writer every other batch waits its turn here.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection to a SQLite database file.
pub struct SqliteConn {
    conn: SqliteConnection,
    /// Whether a transaction is open, so that `rollback` outside one is a no-op rather than
    /// a server warning.
    in_tx: bool,
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
    let conn = opts.connect().await.map_err(|e| {
        let err = classify(e);
        Error::new(
            err.kind(),
            err.code().map(str::to_string),
            format!("cannot open {url}: {}", err.message()),
        )
    })?;
    Ok(SqliteConn { conn, in_tx: false })
}

type Query<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>;

fn bind<'q>(mut query: Query<'q>, params: &'q [Value]) -> Query<'q> {
    for param in params {
        query = match param {
            Value::Null => query.bind(None::<String>),
            Value::Bool(b) => query.bind(*b),
            Value::Int(n) => query.bind(*n),
            Value::Float(f) => query.bind(*f),
            Value::Decimal(s) | Value::Text(s) => query.bind(s.as_str()),
            Value::Bytes(b) => query.bind(b.as_slice()),
            Value::Json(j) => query.bind(j.to_string()),
            // SQLite has no UUID type; applications store them as text, so bind text.
            Value::Uuid(u) => query.bind(u.hyphenated().to_string()),
            Value::Date(d) => query.bind(*d),
            Value::Time(t) => query.bind(*t),
            Value::Timestamp(t) => query.bind(*t),
            Value::TimestampTz(t) => query.bind(*t),
            Value::TextArray(items) => query.bind(serde_json::json!(items).to_string()),
        };
    }
    query
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

/// Turns a sqlx error into a driver error: `SQLITE_BUSY` and `SQLITE_LOCKED` are transient,
/// I/O errors mean the connection is gone, the rest is permanent.
fn classify(err: sqlx::Error) -> Error {
    match err {
        sqlx::Error::Database(db) => {
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
            let err = Error::new(kind, code, db.message());
            if refused {
                err.refusing_row()
            } else {
                err
            }
        }
        sqlx::Error::Io(e) => Error::new(ErrorKind::Connection, None, e.to_string()),
        sqlx::Error::Configuration(e) => Error::config(e.to_string()),
        sqlx::Error::WorkerCrashed | sqlx::Error::PoolClosed | sqlx::Error::PoolTimedOut => {
            Error::new(ErrorKind::Connection, None, err.to_string())
        }
        other => Error::permanent(other.to_string()),
    }
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

impl SqliteConn {
    /// Removes the batch deadline so that it cannot interrupt the commit, the rollback or
    /// whatever runs on this connection next.
    async fn clear_deadline(&mut self) -> Result<()> {
        let mut handle = self.conn.lock_handle().await.map_err(classify)?;
        handle.remove_progress_handler();
        Ok(())
    }
}

impl SqliteConn {
    /// After COMMIT or ROLLBACK: the transaction is over when the statement succeeded or the
    /// connection is gone. Otherwise (SQLite busy on COMMIT, say) it may still be open, and
    /// the caller's rollback must reach the server.
    fn end_transaction(&mut self, result: &Result<()>) {
        if result
            .as_ref()
            .map_or_else(|e| e.kind() == ErrorKind::Connection, |_| true)
        {
            self.in_tx = false;
        }
    }
}

#[async_trait]
impl Conn for SqliteConn {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        let done = bind(sqlx::query(sql), params)
            .execute(&mut self.conn)
            .await
            .map_err(classify)?;
        Ok(done.rows_affected())
    }

    async fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let rows = bind(sqlx::query(sql), params)
            .fetch_all(&mut self.conn)
            .await
            .map_err(classify)?;
        let Some(first) = rows.first() else {
            return Ok(Vec::new());
        };
        let columns: Arc<[String]> = first
            .columns()
            .iter()
            .map(|c| c.name().to_string())
            .collect();
        rows.iter().map(|r| decode_row(r, &columns)).collect()
    }

    async fn prepare(&mut self, sql: &str) -> Result<()> {
        sqlx::Executor::prepare(&mut self.conn, sql)
            .await
            .map(drop)
            .map_err(classify)
    }

    async fn execute_unprepared(&mut self, sql: &str) -> Result<u64> {
        // A plain string runs through the simple/text protocol: unprepared, several statements.
        let done = sqlx::Executor::execute(&mut self.conn, sql)
            .await
            .map_err(classify)?;
        Ok(done.rows_affected())
    }

    async fn begin(&mut self, options: TxOptions) -> Result<()> {
        if let Some(timeout) = options.statement_timeout {
            // SQLite has no statement timeout: a progress handler interrupts the
            // transaction's statements past the deadline (SQLITE_INTERRUPT, a timeout).
            let deadline = Instant::now() + timeout;
            let mut handle = self.conn.lock_handle().await.map_err(classify)?;
            handle.set_progress_handler(PROGRESS_OPS, move || Instant::now() < deadline);
        }
        // Set first: if the statement fails half-way, a rollback must still be sent.
        self.in_tx = true;
        self.execute_unprepared("BEGIN IMMEDIATE").await.map(drop)
    }

    async fn commit(&mut self) -> Result<()> {
        self.clear_deadline().await?;
        let result = self.execute_unprepared("COMMIT").await.map(drop);
        self.end_transaction(&result);
        result
    }

    async fn rollback(&mut self) -> Result<()> {
        self.clear_deadline().await?;
        if !self.in_tx {
            return Ok(());
        }
        let result = self.execute_unprepared("ROLLBACK").await.map(drop);
        self.end_transaction(&result);
        result
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
