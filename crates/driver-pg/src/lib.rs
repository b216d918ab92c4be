//! The PostgreSQL backend of godwit's driver interface, over sqlx.
//!
//! Errors are classified by SQLSTATE: serialization failures, deadlocks, lock timeouts and
//! too-many-connections are transient; a cancelled statement (our `statement_timeout`) is a
//! timeout; class 08 and the shutdown codes mean the connection is gone.
#![deny(missing_docs)]

mod forms;
mod invalid_index;
mod pg_text;
mod replication;

use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::Arc;

use godwit_driver::sqlx_conn::{
    self, bind_common, database_error, Backend, Location, Query, SqlxConn,
};
use godwit_driver::{
    quote_ident, ColumnInfo, Conn, ConnectOptions, DbUrl, Dialect, Error, ErrorKind, IndexInfo,
    InvalidIndex, RawRows, Replication, Result, Row, SqlForms, TableInfo, TxOptions, Value,
};
use sqlx::error::DatabaseError;
use sqlx::postgres::{PgConnectOptions, PgQueryResult, PgRow, PgValueRef};
use sqlx::{Column, ConnectOptions as _, Postgres, Row as _, TypeInfo, ValueRef};

use crate::forms::PgForms;
use crate::pg_text::write_pg_text;

/// PostgreSQL's forms of godwit's statements.
pub fn forms() -> &'static dyn SqlForms {
    &PgForms
}

/// A connection to a PostgreSQL server.
pub struct PgConn {
    conn: SqlxConn<PgBackend>,
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
    let conn = SqlxConn::connect(&opts, format!("cannot connect to {url}")).await?;
    let mut conn = PgConn { conn, pid: None };
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
    if bytes.len() != 8 + 2 * ndigits {
        return None;
    }
    let digits = |i: usize| word(4 + i).unwrap_or(0);
    if (0..ndigits).any(|i| digits(i) > 9999) {
        return None;
    }
    // Digit i is worth 10000^(weight - i).
    let digit = |power: i32| -> u16 {
        usize::try_from(weight - power)
            .ok()
            .filter(|&i| i < ndigits)
            .map_or(0, digits)
    };
    let push4 = |out: &mut String, d: u16| {
        for unit in [1000, 100, 10, 1] {
            out.push(char::from(b'0' + (d / unit % 10) as u8));
        }
    };
    let mut out = String::with_capacity(4 * (weight.max(0) as usize + 1) + dscale + 2);
    out.push('-');
    let mut leading = true;
    for power in (0..=weight.max(0)).rev() {
        let d = digit(power);
        if leading {
            if d != 0 || power == 0 {
                let _ = write!(out, "{d}");
                leading = false;
            }
        } else {
            push4(&mut out, d);
        }
    }
    if dscale > 0 {
        out.push('.');
        let end = out.len() + dscale;
        let mut power = -1;
        while out.len() < end {
            push4(&mut out, digit(power));
            power -= 1;
        }
        out.truncate(end);
    }
    // The sign was written first; it stays only on a negative number that is not zero.
    let zero = out[1..].bytes().all(|b| b == b'0' || b == b'.');
    if sign != 0x4000 || zero {
        out.remove(0);
    }
    Some(out)
}

/// PostgreSQL's dates and times that chrono cannot hold, as their text: `infinity` and
/// `-infinity` (which sqlx's decoding would panic on) and the time `24:00:00` (which it would
/// read as midnight). Written back as text, the server reads them again.
fn special_temporal(raw: &PgValueRef<'_>, kind: Kind) -> Option<Value> {
    if raw.format() != sqlx::postgres::PgValueFormat::Binary {
        return None;
    }
    let bytes = raw.as_bytes().ok()?;
    let text = match kind {
        Kind::Date => match i32::from_be_bytes(bytes.try_into().ok()?) {
            i32::MAX => "infinity",
            i32::MIN => "-infinity",
            _ => return None,
        },
        Kind::Timestamp | Kind::TimestampTz => match i64::from_be_bytes(bytes.try_into().ok()?) {
            i64::MAX => "infinity",
            i64::MIN => "-infinity",
            _ => return None,
        },
        Kind::Time => match i64::from_be_bytes(bytes.try_into().ok()?) {
            86_400_000_000 => "24:00:00",
            _ => return None,
        },
        _ => return None,
    };
    Some(Value::Text(text.to_string()))
}

/// PostgreSQL's part of [`SqlxConn`].
struct PgBackend;

impl Backend for PgBackend {
    type Db = Postgres;
    type Decoder = Vec<Kind>;

    const LOCATION: Location = Location::Server;

    /// By SQLSTATE; see the crate documentation.
    fn classify_database(db: Box<dyn DatabaseError>) -> Error {
        let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
        let kind = match code.as_str() {
            "40001" | "40P01" | "55P03" | "53300" | "53000" | "53400" => ErrorKind::Transient,
            "57014" => ErrorKind::Timeout,
            "57P01" | "57P02" | "57P03" | "25P03" => ErrorKind::Connection,
            c if c.starts_with("08") => ErrorKind::Connection,
            _ => ErrorKind::Permanent,
        };
        let refused = code.starts_with("22") || code.starts_with("23");
        database_error(kind, Some(code), db.message(), refused)
    }

    /// JSON, UUIDs and text arrays in PostgreSQL's own types.
    fn bind<'q>(query: Query<'q, Postgres>, value: &'q Value) -> Query<'q, Postgres> {
        match value {
            Value::Json(j) => query.bind(sqlx::types::Json(j)),
            Value::Uuid(u) => query.bind(*u),
            Value::TextArray(items) => query.bind(items),
            other => bind_common(query, other),
        }
    }

    /// Each column's decoder is picked once, from the first row.
    fn decoder(first: &PgRow) -> Vec<Kind> {
        Kind::of_row(first)
    }

    fn decode_row(row: &PgRow, columns: &Arc<[String]>, kinds: &Vec<Kind>) -> Result<Row> {
        decode_row(row, columns, kinds)
    }

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }
}

/// Classifies by SQLSTATE ([`PgBackend`]).
fn classify(err: sqlx::Error) -> Error {
    sqlx_conn::classify::<PgBackend>(err)
}

/// How a column's values are decoded: decided once per result from the column's type, not
/// for every value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    Int2,
    Int4,
    Int8,
    Oid,
    Float4,
    Float8,
    Text,
    Uuid,
    Date,
    Time,
    Timestamp,
    TimestampTz,
    Json,
    Bytea,
    Numeric,
    /// A type godwit does not read.
    Other,
}

impl Kind {
    fn of(column: &sqlx::postgres::PgColumn) -> Kind {
        match column.type_info().name() {
            "BOOL" => Kind::Bool,
            "INT2" => Kind::Int2,
            "INT4" => Kind::Int4,
            "INT8" => Kind::Int8,
            "OID" => Kind::Oid,
            "FLOAT4" => Kind::Float4,
            "FLOAT8" => Kind::Float8,
            "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" => Kind::Text,
            "UUID" => Kind::Uuid,
            "DATE" => Kind::Date,
            "TIME" => Kind::Time,
            "TIMESTAMP" => Kind::Timestamp,
            "TIMESTAMPTZ" => Kind::TimestampTz,
            "JSON" | "JSONB" => Kind::Json,
            "BYTEA" => Kind::Bytea,
            "NUMERIC" => Kind::Numeric,
            _ => Kind::Other,
        }
    }

    fn of_row(row: &PgRow) -> Vec<Kind> {
        row.columns().iter().map(Kind::of).collect()
    }
}

fn decode_row(row: &PgRow, columns: &Arc<[String]>, kinds: &[Kind]) -> Result<Row> {
    let values = kinds
        .iter()
        .enumerate()
        .map(|(idx, &kind)| decode_value(row, idx, kind))
        .collect::<Result<Vec<Value>>>()?;
    Ok(Row::new(columns.clone(), values))
}

/// The value in column `idx` of `row`, a column of `kind`.
fn decode_value(row: &PgRow, idx: usize, kind: Kind) -> Result<Value> {
    let raw = row.try_get_raw(idx).map_err(classify)?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    if matches!(
        kind,
        Kind::Date | Kind::Time | Kind::Timestamp | Kind::TimestampTz
    ) {
        if let Some(special) = special_temporal(&raw, kind) {
            return Ok(special);
        }
    }
    fn decode<'r, T: sqlx::Decode<'r, Postgres>>(raw: PgValueRef<'r>) -> Result<T> {
        T::decode(raw).map_err(|e| Error::permanent(e.to_string()))
    }
    let decoded = match kind {
        Kind::Bool => decode(raw).map(Value::Bool),
        Kind::Int2 => decode::<i16>(raw).map(|n| Value::Int(n.into())),
        Kind::Int4 => decode::<i32>(raw).map(|n| Value::Int(n.into())),
        Kind::Int8 => decode(raw).map(Value::Int),
        Kind::Oid => decode::<sqlx::postgres::types::Oid>(raw).map(|n| Value::Int(n.0.into())),
        Kind::Float4 => decode::<f32>(raw).map(|f| Value::Float(f.into())),
        Kind::Float8 => decode(raw).map(Value::Float),
        Kind::Text => decode(raw).map(Value::Text),
        Kind::Uuid => decode(raw).map(Value::Uuid),
        Kind::Date => decode(raw).map(Value::Date),
        Kind::Time => decode(raw).map(Value::Time),
        Kind::Timestamp => decode(raw).map(Value::Timestamp),
        Kind::TimestampTz => decode(raw).map(Value::TimestampTz),
        Kind::Json => decode(raw).map(Value::Json),
        Kind::Bytea => decode(raw).map(Value::Bytes),
        Kind::Numeric => raw
            .as_bytes()
            .map_err(|e| Error::permanent(e.to_string()))
            .and_then(|bytes| {
                numeric_text(bytes)
                    .map(Value::Decimal)
                    .ok_or_else(|| Error::permanent("a NUMERIC godwit cannot decode"))
            }),
        Kind::Other => Err(Error::permanent(format!(
            "type {} cannot be read by godwit yet; cast it to text in the query",
            row.columns()[idx].type_info().name()
        ))),
    };
    decoded.map_err(|e| e.context(format_args!("column {}", row.columns()[idx].name())))
}

fn text(value: &Value) -> String {
    match value {
        Value::Text(s) => s.clone(),
        _ => String::new(),
    }
}

/// `COPY table (columns) FROM STDIN` with `options`.
fn copy_statement(table: &str, columns: &[String], options: &str) -> String {
    let list: Vec<String> = columns
        .iter()
        .map(|c| quote_ident(Dialect::Postgres, c))
        .collect();
    format!(
        "COPY {} ({}) FROM STDIN{options}",
        quote_ident(Dialect::Postgres, table),
        list.join(", ")
    )
}

/// Appends one field of `COPY`'s text format: backslash, tab, newline and carriage return
/// escaped, everything else as it is.
fn push_copy_field(data: &mut String, field: &str) {
    if !field
        .bytes()
        .any(|b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r'))
    {
        data.push_str(field);
        return;
    }
    for c in field.chars() {
        match c {
            '\\' => data.push_str("\\\\"),
            '\t' => data.push_str("\\t"),
            '\n' => data.push_str("\\n"),
            '\r' => data.push_str("\\r"),
            c => data.push(c),
        }
    }
}

godwit_driver::impl_sqlx_conn! {
    PgConn, Dialect::Postgres, forms();

    fn session_id(&self) -> Option<i64> {
        self.pid
    }

    async fn replica_lag(&mut self) -> Result<Replication> {
        let rows = self.conn.query(replication::REPLICA_LAG, &[]).await?;
        Ok(replication::replica_lag(rows.first()))
    }

    async fn primary_lag(&mut self) -> Result<Replication> {
        let rows = self.conn.query(replication::PRIMARY_LAG, &[]).await?;
        Ok(replication::primary_lag(rows.first()))
    }

    async fn invalid_index(&mut self, sql: &str) -> Result<Option<InvalidIndex>> {
        invalid_index::find(self, sql).await
    }

    async fn drop_invalid_index(&mut self, index: &InvalidIndex) -> Result<()> {
        invalid_index::drop(self, index).await
    }

    async fn end_session(&mut self, session: i64) -> Result<()> {
        let pid = i32::try_from(session)
            .map_err(|_| Error::permanent(format!("{session} is not a PostgreSQL backend pid")))?;
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(self.conn.raw())
            .await
            .map(drop)
            .map_err(classify)
    }

    async fn prepare(&mut self, sql: &str) -> Result<()> {
        let prepared = self.conn.prepare(sql).await;
        // sqlx caches the statement under its text with the parameter types the server
        // inferred (int4 for an `integer` column); a later execute of the same text would then
        // send our int8 values in int4's binary format and fail. Forget it.
        sqlx::Connection::clear_cached_statements(self.conn.raw())
            .await
            .map_err(classify)?;
        prepared
    }

    async fn begin(&mut self, options: TxOptions) -> Result<()> {
        // One round trip: the settings are local to the transaction and vanish at its end.
        let mut sql = String::from("BEGIN");
        if let Some(timeout) = options.statement_timeout {
            // Whole milliseconds, rounded up: zero would mean no limit.
            sql.push_str(&format!(
                "; SET LOCAL statement_timeout = {}",
                timeout.as_nanos().div_ceil(1_000_000).max(1)
            ));
        }
        if let Some(timeout) = options.lock_timeout {
            sql.push_str(&format!(
                "; SET LOCAL lock_timeout = {}",
                timeout.as_nanos().div_ceil(1_000_000).max(1)
            ));
        }
        if options.async_commit {
            sql.push_str("; SET LOCAL synchronous_commit = off");
        }
        self.conn.begin(&sql).await
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
        let bulk = self
            .query(
                "SELECT c.relkind IN ('r', 'p') AND NOT c.relrowsecurity \
                   AND NOT EXISTS (SELECT 1 FROM pg_rewrite r \
                                   WHERE r.ev_class = c.oid AND r.ev_type = '3') \
                 FROM pg_class c WHERE c.oid = to_regclass($1)",
                std::slice::from_ref(&name),
            )
            .await?;
        Ok(Some(TableInfo {
            columns,
            indexes,
            bulk_load: bulk.first().is_some_and(|r| r.get(0) == &Value::Bool(true)),
        }))
    }

    async fn copy_in(
        &mut self,
        table: &str,
        columns: &[String],
        rows: &[Vec<Value>],
    ) -> Result<Option<u64>> {
        let mut copy = self
            .conn
            .raw()
            .copy_in_raw(&copy_statement(table, columns, ""))
            .await
            .map_err(classify)?;
        // Sent in pieces of about this size, so a slice's rows are never held twice whole.
        const PIECE: usize = 256 * 1024;
        let mut data = String::with_capacity(PIECE + 4096);
        let mut field = String::new();
        for row in rows {
            for (i, value) in row.iter().enumerate() {
                if i > 0 {
                    data.push('\t');
                }
                field.clear();
                if write_pg_text(value, &mut field) {
                    push_copy_field(&mut data, &field);
                } else {
                    data.push_str("\\N");
                }
            }
            data.push('\n');
            if data.len() >= PIECE {
                copy.send(data.as_bytes()).await.map_err(classify)?;
                data.clear();
            }
        }
        if !data.is_empty() {
            copy.send(data.as_bytes()).await.map_err(classify)?;
        }
        // The server reports bad rows (a duplicate key, a violated constraint) here.
        copy.finish().await.map(Some).map_err(classify)
    }

    async fn read_raw(&mut self, sql: &str, params: &[Value]) -> Result<Option<RawRows>> {
        let rows = self.conn.fetch_all(sql, params).await?;
        let mut raw = RawRows {
            rows: rows.len(),
            last_key: match rows.last() {
                Some(row) => Some(decode_value(row, 0, Kind::of(&row.columns()[0]))?),
                None => None,
            },
            data: Vec::new(),
        };
        // Each tuple of binary COPY: its field count, then each field's length (-1 for NULL)
        // and bytes, which are exactly the binary form the server sent the value in.
        for row in &rows {
            let fields = row.columns().len().saturating_sub(1);
            let count = i16::try_from(fields)
                .map_err(|_| Error::permanent(format!("{fields} columns are too many to copy")))?;
            raw.data.extend_from_slice(&count.to_be_bytes());
            for idx in 1..=fields {
                let value = row.try_get_raw(idx).map_err(classify)?;
                if value.is_null() {
                    raw.data.extend_from_slice(&(-1_i32).to_be_bytes());
                    continue;
                }
                let bytes = value
                    .as_bytes()
                    .map_err(|e| Error::permanent(e.to_string()))?;
                let len = i32::try_from(bytes.len())
                    .map_err(|_| Error::permanent("a value of 2 GiB or more cannot be copied"))?;
                raw.data.extend_from_slice(&len.to_be_bytes());
                raw.data.extend_from_slice(bytes);
            }
        }
        Ok(Some(raw))
    }

    async fn copy_in_raw(
        &mut self,
        table: &str,
        columns: &[String],
        rows: &RawRows,
    ) -> Result<Option<u64>> {
        let statement = copy_statement(table, columns, " (FORMAT binary)");
        let mut copy = self
            .conn
            .raw()
            .copy_in_raw(&statement)
            .await
            .map_err(classify)?;
        // The signature, no flags, no header extension; the tuples; the trailer.
        copy.send(&b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0"[..])
            .await
            .map_err(classify)?;
        copy.send(rows.data.as_slice()).await.map_err(classify)?;
        copy.send(&(-1_i16).to_be_bytes()[..])
            .await
            .map_err(classify)?;
        copy.finish().await.map(Some).map_err(classify)
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
