//! The MySQL and MariaDB backend of godwit's driver interface, over sqlx.
//!
//! Errors are classified by the server's error number: deadlocks (1213), lock wait timeouts
//! (1205) and too many connections (1040, 1203) are transient; statement timeouts (MySQL 3024,
//! MariaDB 1969) are timeouts; lost connections (2006, 2013, 1927, 1053) mean connect again.
//!
//! A connection opened for a plan that copies into the database (`ConnectOptions::bulk_load`)
//! runs over mysql_async instead of sqlx (`bulk.rs`), alike in every statement, so that a
//! copy's slices can be sent with `LOAD DATA LOCAL INFILE` in the batch's transaction.
//!
//! The batch time limit uses MariaDB's `max_statement_time`, which covers every statement. MySQL's
//! `max_execution_time` only covers `SELECT`, so on MySQL a stuck `UPDATE` ends at
//! `innodb_lock_wait_timeout` instead.
#![deny(missing_docs)]

mod bulk;
mod forms;
mod replication;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use godwit_driver::sqlx_conn::{self, database_error, Backend, Location, SqlxConn};
use godwit_driver::{
    ColumnInfo, Conn, ConnectOptions, DbUrl, Dialect, Error, ErrorKind, IndexInfo, Replication,
    Result, Row, SqlForms, TableInfo, TxOptions, Value,
};
use sqlx::error::DatabaseError;
use sqlx::mysql::{MySqlConnectOptions, MySqlDatabaseError, MySqlQueryResult, MySqlRow};
use sqlx::{Column, ConnectOptions as _, MySql, Row as _, TypeInfo, ValueRef};

use crate::forms::MySqlForms;

/// MySQL's and MariaDB's forms of godwit's statements.
pub fn forms() -> &'static dyn SqlForms {
    &MySqlForms
}

/// A connection to a MySQL or MariaDB server.
pub struct MySqlConn {
    conn: Engine,
    mariadb: bool,
    /// The statement time limit last set on the session, to avoid setting it per batch.
    statement_timeout: Option<Duration>,
    /// The lock wait limit last set on the session (None: the server's own).
    lock_timeout: Option<Duration>,
    /// The server's connection id.
    id: Option<i64>,
}

/// The client a connection runs on.
enum Engine {
    Sqlx(SqlxConn<MySqlBackend>),
    /// mysql_async, which can also send `LOAD DATA LOCAL INFILE`.
    Async(bulk::AsyncConn),
}

impl Engine {
    async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        match self {
            Engine::Sqlx(c) => c.execute(sql, params).await,
            Engine::Async(c) => c.execute(sql, params).await,
        }
    }

    async fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        match self {
            Engine::Sqlx(c) => c.query(sql, params).await,
            Engine::Async(c) => c.query(sql, params).await,
        }
    }

    async fn execute_unprepared(&mut self, sql: &str) -> Result<u64> {
        match self {
            Engine::Sqlx(c) => c.execute_unprepared(sql).await,
            Engine::Async(c) => c.execute_unprepared(sql).await,
        }
    }

    async fn prepare(&mut self, sql: &str) -> Result<()> {
        match self {
            Engine::Sqlx(c) => c.prepare(sql).await,
            Engine::Async(c) => c.prepare(sql).await,
        }
    }

    async fn begin(&mut self, sql: &str) -> Result<()> {
        match self {
            Engine::Sqlx(c) => c.begin(sql).await,
            Engine::Async(c) => c.begin(sql).await,
        }
    }

    async fn commit(&mut self) -> Result<()> {
        match self {
            Engine::Sqlx(c) => c.commit().await,
            Engine::Async(c) => c.commit().await,
        }
    }

    async fn rollback(&mut self) -> Result<()> {
        match self {
            Engine::Sqlx(c) => c.rollback().await,
            Engine::Async(c) => c.rollback().await,
        }
    }
}

/// Connects to the server named by a `mysql://` or `mariadb://` URL; over mysql_async when
/// `options.bulk_load` asks for the bulk path and the URL has no option only sqlx reads.
///
/// # Errors
/// When the URL is malformed or the server cannot be reached.
pub async fn connect(url: &DbUrl, options: &ConnectOptions) -> Result<MySqlConn> {
    // sqlx only knows the `mysql` scheme; MariaDB users often write `mariadb://`.
    let raw = url.expose();
    let normalized = match raw.strip_prefix("mariadb://") {
        Some(rest) => format!("mysql://{rest}"),
        None => raw.to_string(),
    };
    let bulk = match options.bulk_load {
        true => bulk::connect(url, &normalized).await?,
        false => None,
    };
    let conn = match bulk {
        Some(conn) => Engine::Async(conn),
        None => {
            let opts = MySqlConnectOptions::from_str(&normalized)
                .map_err(|e| Error::config(format!("invalid MySQL URL {url}: {e}")))?
                .disable_statement_logging();
            Engine::Sqlx(SqlxConn::connect(&opts, format!("cannot connect to {url}")).await?)
        }
    };
    let mut conn = MySqlConn {
        conn,
        mariadb: false,
        statement_timeout: None,
        lock_timeout: None,
        id: None,
    };
    let rows = conn
        .query(
            "SELECT VERSION(), CAST(CONNECTION_ID() AS SIGNED), CAST(@@log_bin AS SIGNED), \
             @@binlog_format",
            &[],
        )
        .await?;
    conn.mariadb = rows
        .first()
        .is_some_and(|r| text(r.get(0)).contains("MariaDB"));
    // READ COMMITTED, as on PostgreSQL: under REPEATABLE READ a range UPDATE also locks the
    // first row past its range (a next-key lock), so two batches side by side collide, and
    // with batches that never wait for a lock one of them fails and is retried. Under READ
    // COMMITTED InnoDB releases rows that do not match and reads past a locked one that
    // cannot. A server that logs statements (binlog_format STATEMENT) refuses writes under
    // READ COMMITTED: there batches keep the server's level.
    let statement_log = rows.first().is_some_and(|r| {
        r.get(2).as_i64() == Some(1) && text(r.get(3)).eq_ignore_ascii_case("STATEMENT")
    });
    if !statement_log {
        conn.execute_unprepared("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            .await?;
    }
    // A server without strict mode truncates a value too long or too large with a warning:
    // godwit must never lose data without an error.
    conn.execute_unprepared(
        "SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), 'STRICT_ALL_TABLES')",
    )
    .await?;
    conn.id = rows.first().and_then(|r| r.get(1).as_i64());
    Ok(conn)
}

/// Whether a date value has a time of day.
#[derive(Clone, Copy)]
enum DateForm {
    Date,
    DateTime,
}

/// A DATE, DATETIME or TIMESTAMP that is no date chrono holds, as its text: MariaDB keeps
/// `2024-00-15` when `sql_mode` allows a zero month or day (and any day of any month with
/// `ALLOW_INVALID_DATES`). As text it reaches fitting, which refuses it for the row (naming
/// the key and column), or `convert` replaces it, rather than failing the whole read.
/// `None` when the value is not in a form this reads.
fn invalid_date(row: &MySqlRow, idx: usize, form: DateForm) -> Option<Value> {
    let raw: Vec<u8> = row.try_get_unchecked(idx).ok()?;
    date_text(&raw, form).map(Value::Text)
}

/// The text of a date in the protocol's form: binary (a length, then year, month, day, hour,
/// minute, second, microseconds) or the text protocol's own text.
fn date_text(raw: &[u8], form: DateForm) -> Option<String> {
    let binary = matches!(raw.first(), Some(&n @ (4 | 7 | 11)) if raw.len() == usize::from(n) + 1);
    if !binary {
        return std::str::from_utf8(raw).ok().map(str::to_string);
    }
    let body = &raw[1..];
    let year = u16::from_le_bytes([body[0], body[1]]);
    let mut text = format!("{year:04}-{:02}-{:02}", body[2], body[3]);
    if let DateForm::DateTime = form {
        let (h, m, s) = body.get(4..7).map_or((0, 0, 0), |t| (t[0], t[1], t[2]));
        text.push_str(&format!(" {h:02}:{m:02}:{s:02}"));
        if let Some(micros) = body.get(7..11) {
            let micros = u32::from_le_bytes([micros[0], micros[1], micros[2], micros[3]]);
            if micros != 0 {
                text.push_str(&format!(".{micros:06}"));
            }
        }
    }
    Some(text)
}

/// A MySQL TIME, which is a duration (-838:59:59.999999 to 838:59:59.999999): a time of day
/// when it is one, else its text (`-01:30:00`, `100:00:00`). Read from the protocol's own
/// form, since sqlx's type refuses part of the range MariaDB allows.
fn mysql_time(raw: &[u8]) -> Result<Value> {
    let bad = || Error::permanent("a TIME value godwit cannot decode");
    if raw.contains(&b':') {
        // The text protocol sends the text itself.
        let text = std::str::from_utf8(raw).map_err(|_| bad())?;
        return Ok(chrono::NaiveTime::parse_from_str(text, "%H:%M:%S%.f")
            .map_or_else(|_| Value::Text(text.to_string()), Value::Time));
    }
    // Binary: length, sign, days (4 bytes), hours, minutes, seconds, microseconds (4 bytes).
    let body = raw.get(1..).unwrap_or_default();
    if body.is_empty() {
        return Ok(Value::Time(chrono::NaiveTime::MIN));
    }
    let byte = |i: usize| body.get(i).copied().ok_or_else(bad);
    let u32_at = |i: usize| -> Result<u32> {
        Ok(u32::from_le_bytes([
            byte(i)?,
            byte(i + 1)?,
            byte(i + 2)?,
            byte(i + 3)?,
        ]))
    };
    let negative = byte(0)? == 1;
    let hours = u64::from(u32_at(1)?) * 24 + u64::from(byte(5)?);
    let (minutes, seconds) = (byte(6)?, byte(7)?);
    let micros = if body.len() >= 12 { u32_at(8)? } else { 0 };
    if !negative && hours < 24 {
        if let Some(t) = chrono::NaiveTime::from_hms_micro_opt(
            hours as u32,
            minutes.into(),
            seconds.into(),
            micros,
        ) {
            return Ok(Value::Time(t));
        }
    }
    let sign = if negative { "-" } else { "" };
    let fraction = if micros == 0 {
        String::new()
    } else {
        format!(".{micros:06}")
    };
    Ok(Value::Text(format!(
        "{sign}{hours:02}:{minutes:02}:{seconds:02}{fraction}"
    )))
}

/// MySQL's part of [`SqlxConn`].
struct MySqlBackend;

impl Backend for MySqlBackend {
    type Db = MySql;
    type Decoder = ();

    const LOCATION: Location = Location::Server;

    /// By the server's error number; see the crate documentation.
    fn classify_database(db: Box<dyn DatabaseError>) -> Error {
        let mysql = db.try_downcast_ref::<MySqlDatabaseError>();
        let number = mysql.map(MySqlDatabaseError::number);
        let state = mysql.and_then(MySqlDatabaseError::code);
        server_error(number, state, db.message())
    }

    // MySQL has no UUID or array type (MariaDB's UUID accepts text): every value is bound in
    // the common form, `bind`'s default.

    fn decoder(_: &MySqlRow) {}

    /// By each column's type name, with MySQL's zero dates kept as their text.
    fn decode_row(row: &MySqlRow, columns: &Arc<[String]>, (): &()) -> Result<Row> {
        decode_row(row, columns)
    }

    fn rows_affected(result: &MySqlQueryResult) -> u64 {
        result.rows_affected()
    }
}

/// An error the server sent, by its number and SQLSTATE, whichever client received it.
fn server_error(number: Option<u16>, state: Option<&str>, message: &str) -> Error {
    // The SQLSTATE: classes 22 (data) and 23 (constraints) are a row's values refused.
    let refused = state.is_some_and(|s| s.starts_with("22") || s.starts_with("23"));
    let kind = match number {
        // 1467: InnoDB could not take a table's AUTO-INC lock within the lock wait (a bulk
        // load beside another holds it to its statement's end), retried like a lock timeout.
        Some(1213 | 1205 | 1040 | 1203 | 1614 | 1467) => ErrorKind::Transient,
        Some(3024 | 1969 | 1317) => ErrorKind::Timeout,
        Some(2006 | 2013 | 1927 | 1053 | 2002 | 2003) => ErrorKind::Connection,
        _ => ErrorKind::Permanent,
    };
    database_error(kind, number.map(|n| n.to_string()), message, refused)
}

/// Classifies by the server's error number ([`MySqlBackend`]).
fn classify(err: sqlx::Error) -> Error {
    sqlx_conn::classify::<MySqlBackend>(err)
}

fn decode_row(row: &MySqlRow, columns: &Arc<[String]>) -> Result<Row> {
    let mut values = Vec::with_capacity(columns.len());
    for (idx, column) in row.columns().iter().enumerate() {
        let raw = row.try_get_raw(idx).map_err(classify)?;
        let type_name = column.type_info().name();
        if raw.is_null() {
            // sqlx reports MySQL's zero dates (`0000-00-00`) as NULL; they are not, and no
            // other database can hold them: keep them as their text, for the writer to refuse.
            let zero_date = matches!(type_name, "DATE" | "DATETIME" | "TIMESTAMP")
                && row.try_get_unchecked::<Vec<u8>, _>(idx).is_ok();
            values.push(match (zero_date, type_name) {
                (false, _) => Value::Null,
                (true, "DATE") => Value::Text("0000-00-00".into()),
                (true, _) => Value::Text("0000-00-00 00:00:00".into()),
            });
            continue;
        }
        let unsigned = type_name.ends_with("UNSIGNED");
        let base = type_name.trim_end_matches(" UNSIGNED");
        let decoded = (|| -> Result<Value> {
            Ok(match base {
                "TINYINT" | "SMALLINT" | "MEDIUMINT" | "INT" | "BIGINT" | "YEAR" if unsigned => {
                    let n: u64 = row.try_get_unchecked(idx).map_err(classify)?;
                    i64::try_from(n).map_or_else(|_| Value::Decimal(n.to_string()), Value::Int)
                }
                "TINYINT" | "SMALLINT" | "MEDIUMINT" | "INT" | "BIGINT" | "YEAR" => {
                    Value::Int(row.try_get_unchecked(idx).map_err(classify)?)
                }
                // `TINYINT(1)`: MySQL keeps any small integer there, so it is read as one
                // (reading a boolean would turn 2 into true).
                "BOOLEAN" => Value::Int(
                    row.try_get_unchecked::<i8, _>(idx)
                        .map_err(classify)?
                        .into(),
                ),
                "FLOAT" => Value::Float(
                    row.try_get_unchecked::<f32, _>(idx)
                        .map_err(classify)?
                        .into(),
                ),
                "DOUBLE" => Value::Float(row.try_get_unchecked(idx).map_err(classify)?),
                // DECIMAL travels as text in both protocols: keep it exact.
                "DECIMAL" => Value::Decimal(row.try_get_unchecked(idx).map_err(classify)?),
                "DATE" => match row.try_get(idx) {
                    Ok(date) => Value::Date(date),
                    Err(e) => invalid_date(row, idx, DateForm::Date).ok_or_else(|| classify(e))?,
                },
                "TIME" => {
                    let raw: Vec<u8> = row.try_get_unchecked(idx).map_err(classify)?;
                    mysql_time(&raw)?
                }
                "DATETIME" => match row.try_get(idx) {
                    Ok(t) => Value::Timestamp(t),
                    Err(e) => {
                        invalid_date(row, idx, DateForm::DateTime).ok_or_else(|| classify(e))?
                    }
                },
                "TIMESTAMP" => match row.try_get(idx) {
                    Ok(t) => Value::TimestampTz(t),
                    Err(e) => {
                        invalid_date(row, idx, DateForm::DateTime).ok_or_else(|| classify(e))?
                    }
                },
                "BINARY" | "VARBINARY" | "BLOB" | "TINYBLOB" | "MEDIUMBLOB" | "LONGBLOB"
                | "BIT" | "GEOMETRY" => Value::Bytes(row.try_get_unchecked(idx).map_err(classify)?),
                _ => Value::Text(row.try_get_unchecked(idx).map_err(classify)?),
            })
        })();
        let value = decoded.map_err(|e| e.context(format_args!("column {}", column.name())))?;
        values.push(value);
    }
    Ok(Row::new(columns.clone(), values))
}

fn text(value: &Value) -> String {
    match value {
        Value::Text(s) | Value::Decimal(s) => s.clone(),
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        Value::Int(n) => n.to_string(),
        _ => String::new(),
    }
}

/// Splits `db.table` into the schema (the connection's database when absent) and the table.
fn schema_and_table(table: &str) -> (Value, Value) {
    match table.split_once('.') {
        Some((schema, name)) => (Value::Text(schema.into()), Value::Text(name.into())),
        None => (Value::Null, Value::Text(table.into())),
    }
}

#[godwit_driver::async_trait]
impl Conn for MySqlConn {
    fn dialect(&self) -> Dialect {
        Dialect::MySql
    }

    fn forms(&self) -> &'static dyn SqlForms {
        forms()
    }

    async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        self.conn.execute(sql, params).await
    }

    async fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        self.conn.query(sql, params).await
    }

    async fn execute_unprepared(&mut self, sql: &str) -> Result<u64> {
        self.conn.execute_unprepared(sql).await
    }

    async fn commit(&mut self) -> Result<()> {
        self.conn.commit().await
    }

    async fn rollback(&mut self) -> Result<()> {
        self.conn.rollback().await
    }

    /// `LOAD DATA LOCAL INFILE` from memory, on a connection opened for it (`bulk.rs`);
    /// `Ok(None)` when the rows were not loaded exactly or the bulk path is off.
    async fn copy_in(
        &mut self,
        table: &str,
        columns: &[String],
        rows: &[Vec<Value>],
    ) -> Result<Option<u64>> {
        match &mut self.conn {
            Engine::Async(c) => c.load(table, columns, rows).await,
            Engine::Sqlx(_) => Ok(None),
        }
    }

    fn session_id(&self) -> Option<i64> {
        self.id
    }

    async fn end_session(&mut self, session: i64) -> Result<()> {
        // KILL takes no placeholder; the id is an integer the server gave us.
        match self.execute_unprepared(&format!("KILL {session}")).await {
            Ok(_) => Ok(()),
            // ER_NO_SUCH_THREAD: it ended already.
            Err(e) if e.code() == Some("1094") => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn prepare(&mut self, sql: &str) -> Result<()> {
        self.conn.prepare(sql).await
    }

    async fn replica_lag(&mut self) -> Result<Replication> {
        let [current, older] = replication::SHOW_STATUS;
        let rows = match self.conn.query(current, &[]).await {
            Err(e) if e.code() == Some(replication::PARSE_ERROR) => {
                self.conn.query(older, &[]).await?
            }
            rows => rows?,
        };
        Ok(replication::replica_lag(&rows))
    }

    async fn begin(&mut self, options: TxOptions) -> Result<()> {
        if options.statement_timeout != self.statement_timeout {
            // Rounded up, never to zero, which would mean no limit at all: MariaDB takes
            // seconds to the microsecond, MySQL whole milliseconds.
            let set = match options.statement_timeout {
                None if self.mariadb => "SET SESSION max_statement_time = 0".to_string(),
                None => "SET SESSION max_execution_time = 0".to_string(),
                Some(d) if self.mariadb => {
                    let micros = d.as_nanos().div_ceil(1_000).max(1);
                    format!(
                        "SET SESSION max_statement_time = {}.{:06}",
                        micros / 1_000_000,
                        micros % 1_000_000
                    )
                }
                Some(d) => format!(
                    "SET SESSION max_execution_time = {}",
                    d.as_nanos().div_ceil(1_000_000).max(1)
                ),
            };
            self.execute_unprepared(&set).await?;
            self.statement_timeout = options.statement_timeout;
        }
        if options.lock_timeout != self.lock_timeout {
            let seconds = match options.lock_timeout {
                // MariaDB counts whole seconds and takes 0 for "do not wait": a wait shorter
                // than a second asks to give way, and a statement that never waits is never
                // in a lock cycle, where InnoDB would roll back the side that changed fewer
                // rows, often the application.
                Some(wait) if self.mariadb && wait < Duration::from_secs(1) => "0".to_string(),
                // MySQL's least is one second.
                Some(wait) => wait.as_nanos().div_ceil(1_000_000_000).max(1).to_string(),
                None => "DEFAULT".to_string(),
            };
            self.execute_unprepared(&format!("SET SESSION innodb_lock_wait_timeout = {seconds}"))
                .await?;
            self.lock_timeout = options.lock_timeout;
        }
        self.conn.begin("START TRANSACTION").await
    }

    async fn table_info(&mut self, table: &str) -> Result<Option<TableInfo>> {
        let (schema, name) = schema_and_table(table);
        let params = [schema.clone(), name.clone()];
        let rows = self
            .query(
                "SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLLATION_NAME FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? \
                 ORDER BY ORDINAL_POSITION",
                &params,
            )
            .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        // MariaDB's JSON is LONGTEXT with a json_valid() check; MySQL's CHECK_CONSTRAINTS has
        // no TABLE_NAME, and there JSON is its own type anyway, so a failure here is ignored.
        let checks = self
            .query(
                "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS \
                 WHERE CONSTRAINT_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ?",
                &params,
            )
            .await
            .unwrap_or_default();
        let is_json = |column: &str| {
            checks.iter().any(|c| {
                let clause = text(c.get(0)).replace(['`', ' '], "").to_ascii_lowercase();
                clause == format!("json_valid({})", column.to_ascii_lowercase())
            })
        };
        let columns = rows
            .iter()
            .map(|r| {
                let name = text(r.get(0));
                let mut data_type = text(r.get(1)).to_ascii_lowercase();
                if data_type == "longtext" && is_json(&name) {
                    data_type = "json".to_string();
                }
                ColumnInfo {
                    name,
                    data_type,
                    nullable: text(r.get(2)) == "YES",
                    cast: None,
                    collation: r.get(3).as_str().map(str::to_string),
                }
            })
            .collect();
        let stats = self
            .query(
                "SELECT INDEX_NAME, NON_UNIQUE, COLUMN_NAME FROM information_schema.STATISTICS \
                 WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? \
                 ORDER BY INDEX_NAME, SEQ_IN_INDEX",
                &params,
            )
            .await?;
        let mut indexes: Vec<IndexInfo> = Vec::new();
        for r in stats {
            let index_name = text(r.get(0));
            let column = text(r.get(2));
            match indexes.last_mut() {
                Some(last) if last.name == index_name => last.columns.push(column),
                _ => indexes.push(IndexInfo {
                    name: index_name,
                    columns: vec![column],
                    unique: r.get(1).as_i64() == Some(0),
                    primary: text(r.get(0)) == "PRIMARY",
                }),
            }
        }
        // LOAD DATA into a base table only (a view may not take it as an INSERT would).
        let kind = self
            .query(
                "SELECT TABLE_TYPE FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ?",
                &params,
            )
            .await?;
        Ok(Some(TableInfo {
            columns,
            indexes,
            bulk_load: kind.first().is_some_and(|r| text(r.get(0)) == "BASE TABLE"),
        }))
    }

    async fn server_version(&mut self) -> Result<String> {
        let rows = self.query("SELECT VERSION()", &[]).await?;
        Ok(rows.first().map(|r| text(r.get(0))).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r11_dates_chrono_cannot_hold_read_as_their_text() {
        // Binary protocol: a length, then year (little-endian), month, day, time, micros.
        assert_eq!(
            date_text(&[4, 0xe8, 0x07, 0, 15], DateForm::Date).as_deref(),
            Some("2024-00-15")
        );
        assert_eq!(
            date_text(&[7, 0xe8, 0x07, 2, 30, 10, 11, 12], DateForm::DateTime).as_deref(),
            Some("2024-02-30 10:11:12")
        );
        assert_eq!(
            date_text(
                &[11, 0xe8, 0x07, 2, 0, 10, 11, 12, 5, 0, 0, 0],
                DateForm::DateTime
            )
            .as_deref(),
            Some("2024-02-00 10:11:12.000005")
        );
        // The text protocol sends the text itself.
        assert_eq!(
            date_text(b"2024-00-15", DateForm::Date).as_deref(),
            Some("2024-00-15")
        );
    }
}
