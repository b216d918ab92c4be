//! A connection over mysql_async, for plans that copy into MySQL/MariaDB: it runs every
//! statement as the sqlx connection does (same session settings, prepared statements, the same
//! values decoded), and can also send `LOAD DATA LOCAL INFILE`, which sqlx cannot. A copy's
//! slice is loaded with it inside the batch's transaction, so the rows and the batch's done
//! record still commit together.
//!
//! With `LOCAL`, the server turns duplicate keys and values it cannot store exactly into
//! warnings and skips or clamps the row (as `IGNORE` does): a load that reports a warning or
//! loads fewer rows than it was sent is rolled back to a savepoint, and the caller writes the
//! slice with `INSERT`, which fails with the database's exact error as before.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chrono::{Datelike, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use futures_util::StreamExt;
use godwit_driver::{quote_ident, DbUrl, Dialect, Error, ErrorKind, Result, Row, Value};
use mysql_async::consts::{ColumnFlags, ColumnType};
use mysql_async::prelude::Queryable;
use mysql_async::{DriverError, OptsBuilder, Params, SslOpts};

/// The URL options this client reads; a URL with any other (a CA to verify, a client
/// certificate) keeps the sqlx connection, which reads them all.
const OPTIONS: &[&str] = &["ssl-mode", "sslmode", "local-infile", "local_infile"];

/// The session sqlx sets up on connecting, so that both connections behave alike: `||` as
/// concatenation, TIMESTAMP values in UTC, utf8mb4 with sqlx's collation.
const SESSION: &str =
    "SET sql_mode = (SELECT CONCAT(@@sql_mode, ',PIPES_AS_CONCAT,NO_ENGINE_SUBSTITUTION')), \
     time_zone = '+00:00', NAMES utf8mb4 COLLATE utf8mb4_unicode_ci";

/// Server errors that mean `LOAD DATA LOCAL` is not allowed: MariaDB's and MySQL 5's "The
/// used command is not allowed", MySQL 8's "Loading local data is disabled".
const REFUSED: &[u16] = &[1148, 3948, 4166];

/// How many bytes of a load go in one protocol packet.
const CHUNK: usize = 1 << 20;

/// A connection to MySQL/MariaDB over mysql_async.
pub(crate) struct AsyncConn {
    conn: mysql_async::Conn,
    /// Whether a transaction is open (a `ROLLBACK` outside one is skipped).
    in_tx: bool,
    /// Whether `LOAD DATA LOCAL` may be sent: neither the URL nor the server refuses it.
    local_infile: bool,
    /// The server, without its password, for the log line when loads are refused.
    server: String,
}

/// Opens a connection over mysql_async to `url` (scheme already `mysql://`), or `Ok(None)`
/// when the URL carries an option only the sqlx connection reads.
pub(crate) async fn connect(url: &DbUrl, normalized: &str) -> Result<Option<AsyncConn>> {
    let parsed = url::Url::parse(normalized)
        .map_err(|e| Error::config(format!("invalid MySQL URL {url}: {e}")))?;
    let mut local_infile = true;
    let mut ssl = Ssl::Preferred;
    for (key, value) in parsed.query_pairs() {
        if !OPTIONS.contains(&key.as_ref()) {
            once(
                &format!("option:{url}"),
                &format!(
                    "copies into {url} write with INSERT, not LOAD DATA: the URL option {key} is \
                     read by the connection without the bulk path"
                ),
            );
            return Ok(None);
        }
        let value = value.to_ascii_lowercase();
        match key.as_ref() {
            "local-infile" | "local_infile" => {
                local_infile = !matches!(value.as_str(), "0" | "false" | "off" | "no")
            }
            _ => {
                ssl = match value.as_str() {
                    "disabled" | "disable" => Ssl::Disabled,
                    "preferred" | "prefer" => Ssl::Preferred,
                    "required" | "require" => Ssl::Required,
                    // Verifying modes need the certificates sqlx reads.
                    _ => return Ok(None),
                }
            }
        }
    }
    let decode = |s: &str| -> Result<String> {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|e| Error::config(format!("invalid MySQL URL {url}: {e}")))
    };
    let host = parsed
        .host_str()
        .unwrap_or("localhost")
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let user = decode(parsed.username())?;
    let password = parsed.password().map(decode).transpose()?;
    let database = decode(parsed.path().trim_start_matches('/'))?;
    let options = OptsBuilder::default()
        .ip_or_hostname(host)
        .tcp_port(parsed.port().unwrap_or(3306))
        .user(Some(if user.is_empty() { "root".into() } else { user }))
        .pass(password)
        .db_name((!database.is_empty()).then_some(database))
        // As sqlx: an UPDATE reports the rows it matched, not only those it changed.
        .client_found_rows(true)
        .prefer_socket(false)
        .stmt_cache_size(100);
    // sqlx's default, `PREFERRED`: TLS when the server offers it, certificates unchecked.
    let tls = SslOpts::default()
        .with_danger_accept_invalid_certs(true)
        .with_danger_skip_domain_validation(true);
    let opened = match ssl {
        Ssl::Disabled => mysql_async::Conn::new(options).await,
        Ssl::Required => mysql_async::Conn::new(options.ssl_opts(tls)).await,
        Ssl::Preferred => match mysql_async::Conn::new(options.clone().ssl_opts(tls)).await {
            Err(mysql_async::Error::Driver(DriverError::NoClientSslFlagFromServer)) => {
                mysql_async::Conn::new(options).await
            }
            other => other,
        },
    };
    let conn = opened.map_err(|e| {
        let err = classify(e);
        Error::new(
            err.kind(),
            err.code().map(str::to_string),
            format!("cannot connect to {url}: {}", err.message()),
        )
    })?;
    let server = format!("{url}");
    let mut conn = AsyncConn {
        conn,
        in_tx: false,
        local_infile,
        server,
    };
    conn.execute_unprepared(SESSION).await?;
    if !local_infile {
        once(
            &format!("client:{url}"),
            &format!(
                "copies into {url} write with INSERT, not LOAD DATA: the URL sets local-infile off"
            ),
        );
    } else {
        // The server's switch (global only): read once per connection, logged once.
        let on = conn
            .query("SELECT CAST(@@local_infile AS SIGNED)", &[])
            .await?;
        if on.first().and_then(|r| r.get(0).as_i64()) == Some(0) {
            conn.refused("the server's local_infile is OFF");
        }
    }
    Ok(Some(conn))
}

#[derive(Clone, Copy)]
enum Ssl {
    Disabled,
    Preferred,
    Required,
}

/// Logs `message` once per process for `key`.
fn once(key: &str, message: &str) {
    static LOGGED: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let first = LOGGED
        .lock()
        .map(|mut seen| {
            seen.get_or_insert_with(HashSet::new)
                .insert(key.to_string())
        })
        .unwrap_or(true);
    if first {
        tracing::warn!("{message}");
    }
}

impl AsyncConn {
    /// Turns the bulk path off for this connection, saying so once per server.
    fn refused(&mut self, why: &str) {
        self.local_infile = false;
        once(
            &format!("server:{}", self.server),
            &format!(
                "copies into {} write with INSERT, not LOAD DATA LOCAL INFILE: {why}",
                self.server
            ),
        );
    }

    pub(crate) async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        self.conn
            .exec_drop(sql, bind(params))
            .await
            .map_err(classify)?;
        Ok(self.conn.affected_rows())
    }

    pub(crate) async fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let rows: Vec<mysql_async::Row> =
            self.conn.exec(sql, bind(params)).await.map_err(classify)?;
        let Some(first) = rows.first() else {
            return Ok(Vec::new());
        };
        let columns: Arc<[String]> = first
            .columns_ref()
            .iter()
            .map(|c| c.name_str().into_owned())
            .collect();
        rows.into_iter()
            .map(|row| decode_row(row, &columns))
            .collect()
    }

    pub(crate) async fn prepare(&mut self, sql: &str) -> Result<()> {
        self.conn.prep(sql).await.map(drop).map_err(classify)
    }

    pub(crate) async fn execute_unprepared(&mut self, sql: &str) -> Result<u64> {
        self.conn.query_drop(sql).await.map_err(classify)?;
        Ok(self.conn.affected_rows())
    }

    pub(crate) async fn begin(&mut self, sql: &str) -> Result<()> {
        // Set first: if the statement fails half-way, a rollback must still be sent.
        self.in_tx = true;
        self.execute_unprepared(sql).await.map(drop)
    }

    pub(crate) async fn commit(&mut self) -> Result<()> {
        let result = self.execute_unprepared("COMMIT").await.map(drop);
        self.end_transaction(&result);
        result
    }

    pub(crate) async fn rollback(&mut self) -> Result<()> {
        if !self.in_tx {
            return Ok(());
        }
        let result = self.execute_unprepared("ROLLBACK").await.map(drop);
        self.end_transaction(&result);
        result
    }

    /// After COMMIT or ROLLBACK (see [`godwit_driver::transaction_ended`]).
    fn end_transaction(&mut self, result: &Result<()>) {
        if godwit_driver::transaction_ended(result) {
            self.in_tx = false;
        }
    }

    /// Loads `rows` (values in `columns` order) into `table` with `LOAD DATA LOCAL INFILE`,
    /// in the open transaction. `Ok(None)` when the rows were not all loaded exactly (nothing
    /// of them is kept) or the bulk path is refused: the caller then inserts them.
    pub(crate) async fn load(
        &mut self,
        table: &str,
        columns: &[String],
        rows: &[Vec<Value>],
    ) -> Result<Option<u64>> {
        if !self.local_infile || rows.is_empty() || columns.is_empty() {
            return Ok(None);
        }
        let statement = load_statement(table, columns, rows);
        let data = Bytes::from(encode(columns.len(), rows));
        self.execute_unprepared("SAVEPOINT godwit_load").await?;
        // Streamed from memory, in packets of at most CHUNK bytes.
        let chunks: Vec<std::io::Result<Bytes>> = (0..data.len())
            .step_by(CHUNK)
            .map(|at| Ok(data.slice(at..data.len().min(at + CHUNK))))
            .collect();
        self.conn.set_infile_handler(async move {
            Ok::<_, mysql_async::Error>(futures_util::stream::iter(chunks).boxed())
        });
        let loaded = self.conn.query_drop(&statement).await;
        let (affected, warnings) = (self.conn.affected_rows(), self.conn.get_warnings());
        let refused = match loaded {
            Ok(()) => None,
            Err(e) => {
                let code = server_code(&e);
                let err = classify(e);
                match code {
                    Some(code) if REFUSED.contains(&code) => {
                        self.refused(err.message());
                        Some(err)
                    }
                    // A row refused as an error, not a warning: the INSERT says which.
                    _ if err.refuses_row() => Some(err),
                    _ => return Err(err),
                }
            }
        };
        let exact = refused.is_none() && warnings == 0 && affected == rows.len() as u64;
        if !exact {
            self.execute_unprepared("ROLLBACK TO SAVEPOINT godwit_load")
                .await?;
            tracing::debug!(
                table,
                sent = rows.len(),
                loaded = affected,
                warnings,
                "LOAD DATA did not load the rows exactly; writing them with INSERT"
            );
            return Ok(None);
        }
        self.execute_unprepared("RELEASE SAVEPOINT godwit_load")
            .await?;
        Ok(Some(affected))
    }
}

/// `LOAD DATA LOCAL INFILE` of `columns` into `table`, tab-separated, backslash-escaped, in
/// utf8mb4; a column that holds bytes in these rows travels as hex into a variable, `UNHEX`ed.
fn load_statement(table: &str, columns: &[String], rows: &[Vec<Value>]) -> String {
    let q = |n: &str| quote_ident(Dialect::MySql, n);
    let (mut list, mut sets) = (Vec::new(), Vec::new());
    for (at, name) in columns.iter().enumerate() {
        if hex_column(rows, at) {
            list.push(format!("@godwit_{at}"));
            sets.push(format!("{} = UNHEX(@godwit_{at})", q(name)));
        } else {
            list.push(q(name));
        }
    }
    let set = if sets.is_empty() {
        String::new()
    } else {
        format!(" SET {}", sets.join(", "))
    };
    format!(
        "LOAD DATA LOCAL INFILE 'godwit' INTO TABLE {} CHARACTER SET utf8mb4 \
         FIELDS TERMINATED BY '\\t' ENCLOSED BY '' ESCAPED BY '\\\\' \
         LINES TERMINATED BY '\\n' STARTING BY '' ({}){set}",
        q(table),
        list.join(", ")
    )
}

/// Whether column `at` holds bytes in any of `rows`: the whole column then goes as hex.
fn hex_column(rows: &[Vec<Value>], at: usize) -> bool {
    rows.iter()
        .any(|r| matches!(r.get(at), Some(Value::Bytes(_))))
}

/// The rows in `LOAD DATA`'s default text form.
fn encode(width: usize, rows: &[Vec<Value>]) -> Vec<u8> {
    let hex: Vec<bool> = (0..width).map(|at| hex_column(rows, at)).collect();
    let mut out = Vec::with_capacity(rows.len() * 64);
    let mut scratch = String::new();
    for row in rows {
        for (at, value) in row.iter().enumerate() {
            if at > 0 {
                out.push(b'\t');
            }
            write_value(&mut out, &mut scratch, value, hex[at]);
        }
        out.push(b'\n');
    }
    out
}

/// One value: `\N` for NULL, text with its special bytes escaped, bytes (and any value of a
/// hex column) as hex digits.
fn write_value(out: &mut Vec<u8>, scratch: &mut String, value: &Value, hex: bool) {
    use std::fmt::Write as _;
    scratch.clear();
    let text: &[u8] = match value {
        Value::Null => {
            out.extend_from_slice(b"\\N");
            return;
        }
        Value::Bytes(b) => b,
        Value::Text(s) | Value::Decimal(s) => s.as_bytes(),
        Value::Bool(b) => {
            if *b {
                b"1"
            } else {
                b"0"
            }
        }
        Value::Int(n) => {
            let _ = write!(scratch, "{n}");
            scratch.as_bytes()
        }
        // The shortest text that reads back as the same double; very large and very small
        // ones with an exponent rather than hundreds of digits.
        Value::Float(f) => {
            let plain = *f == 0.0 || (1e-5..1e16).contains(&f.abs());
            let _ = if plain {
                write!(scratch, "{f}")
            } else {
                write!(scratch, "{f:e}")
            };
            scratch.as_bytes()
        }
        Value::Json(j) => {
            let _ = write!(scratch, "{j}");
            scratch.as_bytes()
        }
        Value::Uuid(u) => {
            let _ = write!(scratch, "{}", u.hyphenated());
            scratch.as_bytes()
        }
        // Written by hand: chrono's `format` parses its pattern for every value.
        Value::Date(d) => {
            push_date(scratch, *d);
            scratch.as_bytes()
        }
        Value::Time(t) => {
            push_time(scratch, *t);
            scratch.as_bytes()
        }
        Value::Timestamp(t) => {
            push_date(scratch, t.date());
            scratch.push(' ');
            push_time(scratch, t.time());
            scratch.as_bytes()
        }
        // The session's time zone is UTC, as for the INSERT's bound values.
        Value::TimestampTz(t) => {
            let t = t.naive_utc();
            push_date(scratch, t.date());
            scratch.push(' ');
            push_time(scratch, t.time());
            scratch.as_bytes()
        }
        Value::TextArray(items) => {
            let _ = write!(scratch, "{}", serde_json_text(items));
            scratch.as_bytes()
        }
    };
    if hex {
        const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
        for b in text {
            out.push(DIGITS[usize::from(b >> 4)]);
            out.push(DIGITS[usize::from(b & 15)]);
        }
        return;
    }
    for &b in text {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            0 => out.extend_from_slice(b"\\0"),
            // Ctrl-Z, which the server reads as end of file on Windows.
            26 => out.extend_from_slice(b"\\Z"),
            _ => out.push(b),
        }
    }
}

/// `YYYY-MM-DD` (a year outside 0 to 9999, which MySQL cannot hold, as chrono writes it).
fn push_date(out: &mut String, d: NaiveDate) {
    let year = d.year();
    if (0..=9999).contains(&year) {
        push_digits(out, year as u32, 4);
    } else {
        out.push_str(&d.format("%Y").to_string());
    }
    out.push('-');
    push_digits(out, d.month(), 2);
    out.push('-');
    push_digits(out, d.day(), 2);
}

/// `HH:MM:SS.ffffff`.
fn push_time(out: &mut String, t: NaiveTime) {
    push_digits(out, t.hour(), 2);
    out.push(':');
    push_digits(out, t.minute(), 2);
    out.push(':');
    push_digits(out, t.second(), 2);
    out.push('.');
    push_digits(out, (t.nanosecond() / 1_000).min(999_999), 6);
}

/// `n` in `width` decimal digits, zero-padded (`n` has at most `width` digits).
fn push_digits(out: &mut String, n: u32, width: u32) {
    for at in (0..width).rev() {
        let digit = (n / 10u32.pow(at)) % 10;
        out.push(char::from(b'0' + digit as u8));
    }
}

/// A text array as the JSON text the INSERT binds it as.
fn serde_json_text(items: &[Option<String>]) -> String {
    serde_json::json!(items).to_string()
}

/// Parameters in the binary protocol's form.
fn bind(params: &[Value]) -> Params {
    if params.is_empty() {
        return Params::Empty;
    }
    Params::Positional(params.iter().map(to_mysql).collect())
}

fn to_mysql(value: &Value) -> mysql_async::Value {
    use mysql_async::Value as V;
    let datetime = |t: &NaiveDateTime| {
        V::Date(
            t.year().clamp(0, 9999) as u16,
            t.month() as u8,
            t.day() as u8,
            t.hour() as u8,
            t.minute() as u8,
            t.second() as u8,
            (t.nanosecond() / 1_000).min(999_999),
        )
    };
    match value {
        Value::Null => V::NULL,
        Value::Bool(b) => V::Int(i64::from(*b)),
        Value::Int(n) => V::Int(*n),
        Value::Float(f) => V::Double(*f),
        Value::Decimal(s) | Value::Text(s) => V::Bytes(s.as_bytes().to_vec()),
        Value::Bytes(b) => V::Bytes(b.clone()),
        Value::Json(j) => V::Bytes(j.to_string().into_bytes()),
        Value::Uuid(u) => V::Bytes(u.hyphenated().to_string().into_bytes()),
        Value::Date(d) => V::Date(
            d.year().clamp(0, 9999) as u16,
            d.month() as u8,
            d.day() as u8,
            0,
            0,
            0,
            0,
        ),
        Value::Time(t) => V::Time(
            false,
            0,
            t.hour() as u8,
            t.minute() as u8,
            t.second() as u8,
            (t.nanosecond() / 1_000).min(999_999),
        ),
        Value::Timestamp(t) => datetime(t),
        Value::TimestampTz(t) => datetime(&t.naive_utc()),
        Value::TextArray(items) => V::Bytes(serde_json_text(items).into_bytes()),
    }
}

/// Decodes a row as the sqlx connection does (`decode_row` in the crate root): by each
/// column's type, unsigned integers past i64 as decimals, DECIMAL as its text, binary strings
/// as bytes, dates chrono cannot hold as their text.
fn decode_row(row: mysql_async::Row, columns: &Arc<[String]>) -> Result<Row> {
    let types: Vec<(ColumnType, bool, bool)> = row
        .columns_ref()
        .iter()
        .map(|c| {
            (
                c.column_type(),
                c.flags().contains(ColumnFlags::UNSIGNED_FLAG),
                c.character_set() == 63,
            )
        })
        .collect();
    let values = row.unwrap();
    let mut out = Vec::with_capacity(values.len());
    for ((value, (ty, unsigned, binary)), name) in values.into_iter().zip(types).zip(columns.iter())
    {
        let decoded = decode(value, ty, unsigned, binary)
            .map_err(|e| e.context(format_args!("column {name}")))?;
        out.push(decoded);
    }
    Ok(Row::new(columns.clone(), out))
}

fn decode(
    value: mysql_async::Value,
    ty: ColumnType,
    unsigned: bool,
    binary: bool,
) -> Result<Value> {
    use mysql_async::Value as V;
    use ColumnType as T;
    let text = |b: Vec<u8>| {
        String::from_utf8(b).map_err(|_| Error::permanent("a text value that is not UTF-8"))
    };
    Ok(match value {
        V::NULL => Value::Null,
        V::Int(n) => Value::Int(n),
        V::UInt(n) => i64::try_from(n).map_or_else(|_| Value::Decimal(n.to_string()), Value::Int),
        V::Float(f) => Value::Float(f.into()),
        V::Double(f) => Value::Float(f),
        V::Date(y, m, d, h, mi, s, us) => {
            let date = NaiveDate::from_ymd_opt(y.into(), m.into(), d.into());
            let time = NaiveTime::from_hms_micro_opt(h.into(), mi.into(), s.into(), us);
            match (ty, date, time) {
                (T::MYSQL_TYPE_DATE, Some(date), _) => Value::Date(date),
                (T::MYSQL_TYPE_DATETIME | T::MYSQL_TYPE_DATETIME2, Some(d), Some(t)) => {
                    Value::Timestamp(d.and_time(t))
                }
                (T::MYSQL_TYPE_TIMESTAMP | T::MYSQL_TYPE_TIMESTAMP2, Some(d), Some(t)) => {
                    Value::TimestampTz(d.and_time(t).and_utc())
                }
                // A zero or invalid date, kept as its text for fitting to refuse.
                (T::MYSQL_TYPE_DATE, None, _) => Value::Text(format!("{y:04}-{m:02}-{d:02}")),
                _ => {
                    let mut t = format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02}");
                    if us != 0 {
                        t.push_str(&format!(".{us:06}"));
                    }
                    Value::Text(t)
                }
            }
        }
        V::Time(negative, days, h, m, s, us) => {
            let hours = u64::from(days) * 24 + u64::from(h);
            let time = (!negative && hours < 24)
                .then(|| NaiveTime::from_hms_micro_opt(hours as u32, m.into(), s.into(), us))
                .flatten();
            match time {
                Some(t) => Value::Time(t),
                None => {
                    let sign = if negative { "-" } else { "" };
                    let fraction = if us == 0 {
                        String::new()
                    } else {
                        format!(".{us:06}")
                    };
                    Value::Text(format!("{sign}{hours:02}:{m:02}:{s:02}{fraction}"))
                }
            }
        }
        V::Bytes(b) => match ty {
            T::MYSQL_TYPE_DECIMAL | T::MYSQL_TYPE_NEWDECIMAL => Value::Decimal(text(b)?),
            // Integers as text (the text protocol): as their numbers.
            T::MYSQL_TYPE_TINY
            | T::MYSQL_TYPE_SHORT
            | T::MYSQL_TYPE_INT24
            | T::MYSQL_TYPE_LONG
            | T::MYSQL_TYPE_LONGLONG
            | T::MYSQL_TYPE_YEAR => {
                let t = text(b)?;
                match t.parse::<i64>() {
                    Ok(n) => Value::Int(n),
                    Err(_) if unsigned => Value::Decimal(t),
                    Err(_) => return Err(Error::permanent(format!("an integer {t:?}"))),
                }
            }
            T::MYSQL_TYPE_BIT | T::MYSQL_TYPE_GEOMETRY => Value::Bytes(b),
            // MySQL's JSON arrives with the binary character set: it is text.
            T::MYSQL_TYPE_JSON => Value::Text(text(b)?),
            _ if binary => Value::Bytes(b),
            _ => Value::Text(text(b)?),
        },
    })
}

/// The server's error number, when the error is the server's.
fn server_code(err: &mysql_async::Error) -> Option<u16> {
    match err {
        mysql_async::Error::Server(e) => Some(e.code),
        _ => None,
    }
}

/// A mysql_async error as a driver error, classified as the sqlx connection's are.
pub(crate) fn classify(err: mysql_async::Error) -> Error {
    match err {
        mysql_async::Error::Server(e) => {
            crate::server_error(Some(e.code), Some(&e.state), &e.message)
        }
        mysql_async::Error::Io(e) => Error::new(ErrorKind::Connection, None, e.to_string()),
        mysql_async::Error::Driver(
            e @ (DriverError::ConnectionClosed | DriverError::PoolDisconnected),
        ) => Error::new(ErrorKind::Connection, None, e.to_string()),
        mysql_async::Error::Url(e) => Error::config(godwit_driver::redact_url(&e.to_string())),
        other => Error::permanent(godwit_driver::redact_url(&other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_for_load_data() {
        let rows = vec![
            vec![
                Value::Int(1),
                Value::Text("a\tb\nc\\d\0e\r\u{1a}😀 \\N".into()),
                Value::Null,
                Value::Bytes(vec![0, 0xff, b'\t']),
            ],
            vec![
                Value::Int(-2),
                Value::Text("N".into()),
                Value::Decimal("12.30".into()),
                Value::Null,
            ],
        ];
        let data = encode(4, &rows);
        assert_eq!(
            String::from_utf8(data).unwrap(),
            "1\ta\\tb\\nc\\\\d\\0e\\r\\Z😀 \\\\N\t\\N\t00FF09\n-2\tN\t12.30\t\\N\n"
        );
        let names: Vec<String> = ["id", "t", "d", "b`x"].map(String::from).to_vec();
        assert_eq!(
            load_statement("db.t", &names, &rows),
            "LOAD DATA LOCAL INFILE 'godwit' INTO TABLE `db`.`t` CHARACTER SET utf8mb4 \
             FIELDS TERMINATED BY '\\t' ENCLOSED BY '' ESCAPED BY '\\\\' \
             LINES TERMINATED BY '\\n' STARTING BY '' (`id`, `t`, `d`, @godwit_3) \
             SET `b``x` = UNHEX(@godwit_3)"
        );
    }

    #[test]
    fn timestamps_keep_their_microseconds() {
        let t = NaiveDate::from_ymd_opt(2024, 2, 29)
            .unwrap()
            .and_hms_micro_opt(23, 59, 58, 120)
            .unwrap();
        let mut out = Vec::new();
        write_value(&mut out, &mut String::new(), &Value::Timestamp(t), false);
        write_value(
            &mut out,
            &mut String::new(),
            &Value::TimestampTz(t.and_utc()),
            false,
        );
        for v in [
            Value::Date(NaiveDate::from_ymd_opt(987, 1, 2).unwrap()),
            Value::Time(NaiveTime::from_hms_micro_opt(7, 8, 9, 10).unwrap()),
        ] {
            out.push(b' ');
            write_value(&mut out, &mut String::new(), &v, false);
        }
        for f in [0.1, 1.7976931348623157e308, 5e-324] {
            out.push(b' ');
            write_value(&mut out, &mut String::new(), &Value::Float(f), false);
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2024-02-29 23:59:58.0001202024-02-29 23:59:58.000120 0987-01-02 07:08:09.000010 \
             0.1 1.7976931348623157e308 5e-324"
        );
    }
}
