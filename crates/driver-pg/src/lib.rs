//! The PostgreSQL backend of godwit's driver interface, over sqlx.
//!
//! Errors are classified by SQLSTATE: serialization failures, deadlocks, lock timeouts and
//! too-many-connections are transient; a cancelled statement (our `statement_timeout`) is a
//! timeout; class 08 and the shutdown codes mean the connection is gone.
#![deny(missing_docs)]

use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use godwit_driver::{
    quote_ident, ColumnInfo, Conn, ConnectOptions, DbUrl, Dialect, Error, ErrorKind, IndexInfo,
    Result, Row, TableInfo, TxOptions, Value,
};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgConnection, PgRow};
use sqlx::{Column, ConnectOptions as _, Postgres, Row as _, TypeInfo, ValueRef};

/// A connection to a PostgreSQL server.
pub struct PgConn {
    conn: PgConnection,
    /// Whether a transaction is open, so that `rollback` outside one is a no-op rather than
    /// a server warning.
    in_tx: bool,
    /// The backend's process id.
    pid: Option<i64>,
}

/// Connects to the server named by a `postgres://` URL.
///
/// # Errors
/// When the URL is malformed or the server cannot be reached.
pub async fn connect(url: &DbUrl, _options: &ConnectOptions) -> Result<PgConn> {
    let opts = PgConnectOptions::from_str(url.expose())
        .map_err(|e| Error::config(format!("invalid PostgreSQL URL {url}: {e}")))?
        .application_name("godwit")
        .disable_statement_logging();
    let conn = opts.connect().await.map_err(|e| {
        let err = classify(e);
        Error::new(
            err.kind(),
            err.code().map(str::to_string),
            format!("cannot connect to {url}: {}", err.message()),
        )
    })?;
    let mut conn = PgConn {
        conn,
        in_tx: false,
        pid: None,
    };
    let rows = conn.query("SELECT pg_backend_pid()", &[]).await?;
    conn.pid = rows.first().and_then(|r| r.get(0).as_i64());
    Ok(conn)
}

/// The exact text of a NUMERIC in PostgreSQL's binary form: digit count, weight (of the first
/// base-10,000 digit), sign and display scale, then the base-10,000 digits. Never through a
/// float, so no digit is lost whatever the precision.
fn numeric_text(bytes: &[u8]) -> Option<String> {
    let word = |i: usize| -> Option<u16> {
        Some(u16::from_be_bytes([
            *bytes.get(2 * i)?,
            *bytes.get(2 * i + 1)?,
        ]))
    };
    let ndigits = usize::from(word(0)?);
    let weight = i32::from(word(1)? as i16);
    let sign = word(2)?;
    let dscale = usize::from(word(3)?);
    match sign {
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        0x0000 | 0x4000 => {}
        _ => return None,
    }
    let digits: Vec<u16> = (0..ndigits).map(|i| word(4 + i)).collect::<Option<_>>()?;
    if digits.iter().any(|&d| d > 9999) {
        return None;
    }
    // Digit i is worth 10000^(weight - i).
    let digit = |power: i32| -> u16 {
        usize::try_from(weight - power)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0)
    };
    let mut int_part = String::new();
    for power in (0..=weight.max(0)).rev() {
        if int_part.is_empty() {
            let d = digit(power);
            if d != 0 || power == 0 {
                int_part = d.to_string();
            }
        } else {
            int_part.push_str(&format!("{:04}", digit(power)));
        }
    }
    let mut frac = String::new();
    let mut power = -1;
    while frac.len() < dscale {
        frac.push_str(&format!("{:04}", digit(power)));
        power -= 1;
    }
    frac.truncate(dscale);
    let negative = sign == 0x4000 && (int_part != "0" || frac.bytes().any(|b| b != b'0'));
    let mut out = String::with_capacity(int_part.len() + frac.len() + 2);
    if negative {
        out.push('-');
    }
    out.push_str(&int_part);
    if dscale > 0 {
        out.push('.');
        out.push_str(&frac);
    }
    Some(out)
}

/// PostgreSQL's dates and times that chrono cannot hold, as their text: `infinity` and
/// `-infinity` (which sqlx's decoding would panic on) and the time `24:00:00` (which it would
/// read as midnight). Written back as text, the server reads them again.
fn special_temporal(raw: &sqlx::postgres::PgValueRef<'_>, type_name: &str) -> Option<Value> {
    if raw.format() != sqlx::postgres::PgValueFormat::Binary {
        return None;
    }
    let bytes = raw.as_bytes().ok()?;
    let text = match type_name {
        "DATE" => match i32::from_be_bytes(bytes.try_into().ok()?) {
            i32::MAX => "infinity",
            i32::MIN => "-infinity",
            _ => return None,
        },
        "TIMESTAMP" | "TIMESTAMPTZ" => match i64::from_be_bytes(bytes.try_into().ok()?) {
            i64::MAX => "infinity",
            i64::MIN => "-infinity",
            _ => return None,
        },
        "TIME" => match i64::from_be_bytes(bytes.try_into().ok()?) {
            86_400_000_000 => "24:00:00",
            _ => return None,
        },
        _ => return None,
    };
    Some(Value::Text(text.to_string()))
}

type Query<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

fn bind<'q>(mut query: Query<'q>, params: &'q [Value]) -> Query<'q> {
    for param in params {
        query = match param {
            Value::Null => query.bind(None::<String>),
            Value::Bool(b) => query.bind(*b),
            Value::Int(n) => query.bind(*n),
            Value::Float(f) => query.bind(*f),
            Value::Decimal(s) | Value::Text(s) => query.bind(s.as_str()),
            Value::Bytes(b) => query.bind(b.as_slice()),
            Value::Json(j) => query.bind(sqlx::types::Json(j)),
            Value::Uuid(u) => query.bind(*u),
            Value::Date(d) => query.bind(*d),
            Value::Time(t) => query.bind(*t),
            Value::Timestamp(t) => query.bind(*t),
            Value::TimestampTz(t) => query.bind(*t),
            Value::TextArray(items) => query.bind(items),
        };
    }
    query
}

fn decode_row(row: &PgRow, columns: &Arc<[String]>) -> Result<Row> {
    let mut values = Vec::with_capacity(columns.len());
    for (idx, column) in row.columns().iter().enumerate() {
        let raw = row.try_get_raw(idx).map_err(classify)?;
        if raw.is_null() {
            values.push(Value::Null);
            continue;
        }
        let get_err = |e| classify(e);
        let type_name = column.type_info().name();
        if let Some(special) = special_temporal(&raw, type_name) {
            values.push(special);
            continue;
        }
        let decoded = (|| -> Result<Value> {
            Ok(match type_name {
                "BOOL" => Value::Bool(row.try_get(idx).map_err(get_err)?),
                "INT2" => Value::Int(row.try_get::<i16, _>(idx).map_err(get_err)?.into()),
                "INT4" => Value::Int(row.try_get::<i32, _>(idx).map_err(get_err)?.into()),
                "INT8" => Value::Int(row.try_get::<i64, _>(idx).map_err(get_err)?),
                "OID" => Value::Int(
                    row.try_get::<sqlx::postgres::types::Oid, _>(idx)
                        .map_err(get_err)?
                        .0
                        .into(),
                ),
                "FLOAT4" => Value::Float(row.try_get::<f32, _>(idx).map_err(get_err)?.into()),
                "FLOAT8" => Value::Float(row.try_get::<f64, _>(idx).map_err(get_err)?),
                "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" => {
                    Value::Text(row.try_get(idx).map_err(get_err)?)
                }
                "UUID" => Value::Uuid(row.try_get(idx).map_err(get_err)?),
                "DATE" => Value::Date(row.try_get(idx).map_err(get_err)?),
                "TIME" => Value::Time(row.try_get(idx).map_err(get_err)?),
                "TIMESTAMP" => Value::Timestamp(row.try_get(idx).map_err(get_err)?),
                "TIMESTAMPTZ" => Value::TimestampTz(row.try_get(idx).map_err(get_err)?),
                "JSON" | "JSONB" => Value::Json(row.try_get(idx).map_err(get_err)?),
                "BYTEA" => Value::Bytes(row.try_get(idx).map_err(get_err)?),
                "NUMERIC" => {
                    let bytes = raw
                        .as_bytes()
                        .map_err(|e| Error::permanent(e.to_string()))?;
                    Value::Decimal(
                        numeric_text(bytes)
                            .ok_or_else(|| Error::permanent("a NUMERIC godwit cannot decode"))?,
                    )
                }
                other => {
                    return Err(Error::permanent(format!(
                        "type {other} cannot be read by godwit yet; cast it to text in the query"
                    )))
                }
            })
        })();
        let value = decoded.map_err(|e| e.context(format_args!("column {}", column.name())))?;
        values.push(value);
    }
    Ok(Row::new(columns.clone(), values))
}

/// Classifies by SQLSTATE; see the crate documentation.
fn classify(err: sqlx::Error) -> Error {
    match err {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let kind = match code.as_str() {
                "40001" | "40P01" | "55P03" | "53300" | "53000" | "53400" => ErrorKind::Transient,
                "57014" => ErrorKind::Timeout,
                "57P01" | "57P02" | "57P03" | "25P03" => ErrorKind::Connection,
                c if c.starts_with("08") => ErrorKind::Connection,
                _ => ErrorKind::Permanent,
            };
            Error::new(kind, Some(code), db.message())
        }
        sqlx::Error::Io(e) => Error::new(ErrorKind::Connection, None, e.to_string()),
        sqlx::Error::Tls(e) => Error::new(ErrorKind::Connection, None, e.to_string()),
        sqlx::Error::Protocol(e) => Error::new(ErrorKind::Connection, None, e),
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
        _ => String::new(),
    }
}

impl PgConn {
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
impl Conn for PgConn {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
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

    fn session_id(&self) -> Option<i64> {
        self.pid
    }

    async fn end_session(&mut self, session: i64) -> Result<()> {
        let pid = i32::try_from(session)
            .map_err(|_| Error::permanent(format!("{session} is not a PostgreSQL backend pid")))?;
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(&mut self.conn)
            .await
            .map(drop)
            .map_err(classify)
    }

    async fn prepare(&mut self, sql: &str) -> Result<()> {
        let prepared = sqlx::Executor::prepare(&mut self.conn, sql)
            .await
            .map(drop)
            .map_err(classify);
        // sqlx caches the statement under its text with the parameter types the server
        // inferred (int4 for an `integer` column); a later execute of the same text would then
        // send our int8 values in int4's binary format and fail. Forget it.
        sqlx::Connection::clear_cached_statements(&mut self.conn)
            .await
            .map_err(classify)?;
        prepared
    }

    async fn execute_unprepared(&mut self, sql: &str) -> Result<u64> {
        // A plain string runs through the simple/text protocol: unprepared, several statements.
        let done = sqlx::Executor::execute(&mut self.conn, sql)
            .await
            .map_err(classify)?;
        Ok(done.rows_affected())
    }

    async fn begin(&mut self, options: TxOptions) -> Result<()> {
        // One round trip: the settings are local to the transaction and vanish at its end.
        let mut sql = String::from("BEGIN");
        if let Some(timeout) = options.statement_timeout {
            sql.push_str(&format!(
                "; SET LOCAL statement_timeout = {}",
                timeout.as_millis().max(1)
            ));
        }
        if options.async_commit {
            sql.push_str("; SET LOCAL synchronous_commit = off");
        }
        // Set first: if the statement fails half-way, a rollback must still be sent.
        self.in_tx = true;
        self.execute_unprepared(&sql).await.map(drop)
    }

    async fn commit(&mut self) -> Result<()> {
        let result = self.execute_unprepared("COMMIT").await.map(drop);
        self.end_transaction(&result);
        result
    }

    async fn rollback(&mut self) -> Result<()> {
        if !self.in_tx {
            return Ok(());
        }
        let result = self.execute_unprepared("ROLLBACK").await.map(drop);
        self.end_transaction(&result);
        result
    }

    async fn table_info(&mut self, table: &str) -> Result<Option<TableInfo>> {
        let name = Value::Text(quote_ident(Dialect::Postgres, table));
        let rows = self
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull, \
                   quote_ident(n.nspname) || '.' || quote_ident(t.typname) \
                 FROM pg_attribute a \
                 JOIN pg_type t ON t.oid = a.atttypid \
                 JOIN pg_namespace n ON n.oid = t.typnamespace \
                 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
                 ORDER BY a.attnum",
                std::slice::from_ref(&name),
            )
            .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let columns = rows
            .iter()
            .map(|r| ColumnInfo {
                name: text(r.get(0)),
                data_type: text(r.get(1)),
                nullable: r.get(2) == &Value::Bool(true),
                cast: Some(text(r.get(3))),
                collation: None,
            })
            .collect();
        // Partial indexes are left out: a walk over every row cannot rely on them.
        let index_rows = self
            .query(
                "SELECT c.relname::text, ix.indisunique, \
                   (SELECT string_agg(a.attname, chr(31) ORDER BY k.ord) \
                      FROM unnest(ix.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
                      JOIN pg_attribute a ON a.attrelid = ix.indrelid AND a.attnum = k.attnum), \
                   ix.indisprimary \
                 FROM pg_index ix JOIN pg_class c ON c.oid = ix.indexrelid \
                 WHERE ix.indrelid = to_regclass($1) AND ix.indpred IS NULL AND ix.indisvalid",
                std::slice::from_ref(&name),
            )
            .await?;
        let indexes = index_rows
            .iter()
            .map(|r| IndexInfo {
                name: text(r.get(0)),
                unique: r.get(1) == &Value::Bool(true),
                primary: r.get(3) == &Value::Bool(true),
                columns: text(r.get(2))
                    .split('\u{1f}')
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
            .collect();
        Ok(Some(TableInfo { columns, indexes }))
    }

    async fn server_version(&mut self) -> Result<String> {
        let rows = self.query("SELECT version()", &[]).await?;
        Ok(rows.first().map(|r| text(r.get(0))).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::numeric_text;

    /// Builds PostgreSQL's binary NUMERIC from its parts.
    fn numeric(weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut out = Vec::new();
        for word in [digits.len() as u16, weight as u16, sign, dscale]
            .into_iter()
            .chain(digits.iter().copied())
        {
            out.extend_from_slice(&word.to_be_bytes());
        }
        out
    }

    #[test]
    fn decodes_numeric_exactly() {
        assert_eq!(numeric_text(&numeric(0, 0, 0, &[])).as_deref(), Some("0"));
        assert_eq!(
            numeric_text(&numeric(0, 0, 2, &[])).as_deref(),
            Some("0.00")
        );
        assert_eq!(
            numeric_text(&numeric(0, 0, 0, &[42])).as_deref(),
            Some("42")
        );
        // 12345.678 = 1|2345|6780 with weight 1
        assert_eq!(
            numeric_text(&numeric(1, 0, 3, &[1, 2345, 6780])).as_deref(),
            Some("12345.678")
        );
        assert_eq!(
            numeric_text(&numeric(1, 0x4000, 3, &[1, 2345, 6780])).as_deref(),
            Some("-12345.678")
        );
        // 0.0001 = digit 1 at weight -1
        assert_eq!(
            numeric_text(&numeric(-1, 0, 4, &[1])).as_deref(),
            Some("0.0001")
        );
        // 100000000 = 1|0000|0000 stored as one digit with weight 2
        assert_eq!(
            numeric_text(&numeric(2, 0, 0, &[1])).as_deref(),
            Some("100000000")
        );
        assert_eq!(
            numeric_text(&numeric(0, 0xC000, 0, &[])).as_deref(),
            Some("NaN")
        );
        assert_eq!(
            numeric_text(&numeric(0, 0xD000, 0, &[])).as_deref(),
            Some("Infinity")
        );
        assert_eq!(numeric_text(&[0, 1]), None, "truncated input");
    }
}
