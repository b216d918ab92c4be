//! Column types as godwit sorts them, and fitting a value to a column without losing it.
//!
//! A transform returns plain values (a Lua string, a JSON number); before they are bound, each
//! is fitted to the type of the column it goes into. A fit that would lose data (a fraction
//! into an integer column, text that is not a number, bytes that are not UTF-8 into text) is
//! an error naming the problem, never a silent rounding.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};

use crate::Value;

/// The family of a column's type, from the database's own type name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SqlType {
    /// Integers of any width.
    Int,
    /// Exact decimals (`numeric`, `decimal`).
    Decimal,
    /// Binary floating point.
    Float,
    /// Booleans.
    Bool,
    /// Text of any length.
    Text,
    /// Bytes.
    Bytes,
    /// JSON documents.
    Json,
    /// UUIDs.
    Uuid,
    /// Dates.
    Date,
    /// Times of day.
    Time,
    /// Timestamps without time zone (MySQL's `DATETIME` too).
    Timestamp,
    /// Timestamps with time zone.
    TimestampTz,
    /// Anything else (enums, arrays, network types…): handed over as text, which the
    /// database converts.
    Other,
}

impl SqlType {
    /// Sorts a type name as [`crate::ColumnInfo::data_type`] gives it (any case; a length or
    /// precision in brackets is ignored), with SQLite's rules for declared types it does not
    /// know by name (`…INT…` is an integer, `…CHAR…` text).
    pub fn of(data_type: &str) -> SqlType {
        let t = data_type.trim().to_ascii_lowercase();
        SqlType::known(&t).unwrap_or_else(|| SqlType::of_affinity(&t))
    }

    /// [`SqlType::of`] without SQLite's rules: a name godwit does not know is
    /// [`SqlType::Other`] (a PostgreSQL `int4range` is no integer).
    pub fn of_name(data_type: &str) -> SqlType {
        SqlType::known(&data_type.trim().to_ascii_lowercase()).unwrap_or(SqlType::Other)
    }

    /// The family of a lower-case type name godwit knows.
    fn known(t: &str) -> Option<SqlType> {
        // Arrays (`integer[]`, internally `_int4`) and times with a zone are godwit's
        // "other": read as their text.
        let time_with_zone =
            !t.starts_with("timestamp") && t.starts_with("time") && t.contains("with time zone");
        if t.ends_with(']') || t.starts_with('_') || t == "timetz" || time_with_zone {
            return Some(SqlType::Other);
        }
        let base = t.split(['(', ' ']).next().unwrap_or("");
        Some(match base {
            "int" | "integer" | "bigint" | "smallint" | "tinyint" | "mediumint" | "int2"
            | "int4" | "int8" | "serial" | "bigserial" | "smallserial" | "year" => SqlType::Int,
            "numeric" | "decimal" | "dec" | "number" | "fixed" => SqlType::Decimal,
            "real" | "float" | "double" | "float4" | "float8" => SqlType::Float,
            "bool" | "boolean" => SqlType::Bool,
            "text" | "tinytext" | "mediumtext" | "longtext" | "char" | "varchar" | "character"
            | "nchar" | "nvarchar" | "clob" | "citext" | "bpchar" | "name" | "enum" | "set" => {
                SqlType::Text
            }
            "bytea" | "blob" | "tinyblob" | "mediumblob" | "longblob" | "binary" | "varbinary" => {
                SqlType::Bytes
            }
            "json" | "jsonb" => SqlType::Json,
            "uuid" => SqlType::Uuid,
            "date" => SqlType::Date,
            "time" => SqlType::Time,
            "datetime" => SqlType::Timestamp,
            "timestamptz" => SqlType::TimestampTz,
            "timestamp" if t.contains("with time zone") && !t.contains("without") => {
                SqlType::TimestampTz
            }
            "timestamp" => SqlType::Timestamp,
            _ => return None,
        })
    }

    fn of_affinity(t: &str) -> SqlType {
        match t {
            // SQLite's affinity rules for declared types godwit does not know by name.
            _ if t.contains("int") && !t.contains("interval") && !t.contains("point") => {
                SqlType::Int
            }
            _ if t.contains("char") || t.contains("text") || t.contains("clob") => SqlType::Text,
            _ => SqlType::Other,
        }
    }

    /// A value read from a column of this type, in the form transforms see: UTF-8 bytes from
    /// a text column are text (MariaDB sends `_bin` text as bytes), JSON stored as text is a
    /// document (MySQL and SQLite hand JSON over as text).
    pub fn read(self, value: Value) -> Value {
        match (self, value) {
            (SqlType::Text, Value::Bytes(b)) => match String::from_utf8(b) {
                Ok(s) => Value::Text(s),
                Err(e) => Value::Bytes(e.into_bytes()),
            },
            (SqlType::Json, Value::Text(s)) => match serde_json::from_str(&s) {
                Ok(json) => Value::Json(json),
                Err(_) => Value::Text(s),
            },
            // MariaDB's UUID type arrives as the bytes of its text.
            (SqlType::Uuid, Value::Bytes(b)) => match String::from_utf8(b) {
                Ok(s) => s.parse().map_or(Value::Text(s), Value::Uuid),
                Err(e) => Value::Bytes(e.into_bytes()),
            },
            (SqlType::Json, Value::Bytes(b)) => match serde_json::from_slice(&b) {
                Ok(json) => Value::Json(json),
                Err(_) => Value::Bytes(b),
            },
            (_, value) => value,
        }
    }

    /// Fits `value` to a column of this type, or says why it cannot without losing data.
    ///
    /// Dates, times, timestamps, UUIDs and other types given as text stay text: the database
    /// parses them (and refuses a bad one with its own error).
    pub fn fit(self, value: Value) -> Result<Value, String> {
        if value.is_null() {
            return Ok(Value::Null);
        }
        match self {
            SqlType::Int => fit_int(value),
            SqlType::Decimal => fit_decimal(value),
            SqlType::Float => fit_float(value),
            SqlType::Bool => fit_bool(value),
            SqlType::Text => fit_text(value),
            SqlType::Bytes => fit_bytes(value),
            SqlType::Json => fit_json(value),
            SqlType::Date
            | SqlType::Time
            | SqlType::Timestamp
            | SqlType::TimestampTz
            | SqlType::Uuid
            | SqlType::Other => self.fit_parsed(value),
        }
    }

    /// Fits `value` to a type the database parses from text (dates, times, timestamps, UUIDs
    /// and types godwit does not know).
    fn fit_parsed(self, value: Value) -> Result<Value, String> {
        use Value as V;
        Ok(match (self, value) {
            (SqlType::Date | SqlType::Timestamp | SqlType::TimestampTz, V::Text(s))
                if s.starts_with("0000-00-00") =>
            {
                return Err(format!(
                    "{s:?} is MySQL's zero date, which is no date; say what to write instead with `convert = {{ <column> = \"null\" }}`"
                ))
            }
            // MariaDB keeps dates with a zero month or day (`2024-00-15`), read as their text:
            // no other database holds them, and they are no date to guess at.
            (SqlType::Date | SqlType::Timestamp | SqlType::TimestampTz, V::Text(s))
                if is_invalid_date(&s) =>
            {
                return Err(format!(
                    "{s:?} is no valid date; say what to write instead with `convert = {{ <column> = \"null\" }}`"
                ))
            }
            // Text a transform wrote (Lua sees dates as text) becomes the typed value when it
            // reads as one, so every database gets the same instant; other text is left to
            // the database to parse (PostgreSQL's `infinity`) or refuse.
            (SqlType::Date, V::Text(s)) => match (parse_date(&s), parse_timestamp(&s)) {
                (Some(d), _) => V::Date(d),
                (None, Some(t)) => date_of(t.naive_utc(), &s)?,
                (None, None) => V::Text(s),
            },
            // A date column would drop a time of day: only midnight goes in.
            (SqlType::Date, V::Timestamp(t)) => date_of(t, &t.to_string())?,
            (SqlType::Date, V::TimestampTz(t)) => date_of(t.naive_utc(), &t.to_string())?,
            (SqlType::Time, v @ (V::Timestamp(_) | V::TimestampTz(_))) => {
                return Err(format!(
                    "{} cannot go into a time column: its date would be dropped",
                    v.text_form().unwrap_or_default()
                ))
            }
            (SqlType::Time, V::Text(s)) => parse_time(&s).map_or(V::Text(s), V::Time),
            (SqlType::Timestamp, V::Text(s)) => parse_timestamp(&s)
                .map(|t| V::Timestamp(t.naive_utc()))
                .unwrap_or(V::Text(s)),
            (SqlType::TimestampTz, V::Text(s)) => parse_timestamp(&s).map_or(V::Text(s), V::TimestampTz),
            (SqlType::Uuid, V::Text(s)) => s.trim().parse().map_or(V::Text(s), V::Uuid),
            // A time-zone-less timestamp is taken as UTC, as godwit's sessions are.
            (SqlType::TimestampTz, V::Timestamp(t)) => V::TimestampTz(t.and_utc()),
            (SqlType::Timestamp, V::TimestampTz(t)) => V::Timestamp(t.naive_utc()),
            (_, V::Json(j)) => V::Text(j.to_string()),
            (_, value @ (V::Bytes(_) | V::Float(_) | V::Bool(_)))
                if !matches!(self, SqlType::Other) =>
            {
                return Err(format!("{} cannot go into a {self:?} column", kind(&value)))
            }
            (_, value) => value,
        })
    }
}

/// Fits `value` to an integer column.
fn fit_int(value: Value) -> Result<Value, String> {
    use Value as V;
    Ok(match value {
        V::Int(n) => V::Int(n),
        V::Bool(b) => V::Int(i64::from(b)),
        V::Float(f) => {
            if f.fract() == 0.0 && f >= -(2f64.powi(63)) && f < 2f64.powi(63) {
                V::Int(f as i64)
            } else {
                return Err(format!("{f} is not an integer"));
            }
        }
        V::Text(s) | V::Decimal(s) => {
            // `5.00` is the integer 5; `5.5` is no integer.
            let t = normalize_decimal(&s).unwrap_or_else(|| s.trim().to_string());
            match t.parse::<i64>() {
                Ok(n) => V::Int(n),
                // Wider than 64 bits (MySQL's BIGINT UNSIGNED): the database checks range.
                Err(_) if is_integer_text(&t) => V::Decimal(t),
                Err(_) => return Err(format!("{s:?} is not an integer")),
            }
        }
        value => return Err(cannot_go_into(SqlType::Int, &value)),
    })
}

/// Fits `value` to a decimal column.
fn fit_decimal(value: Value) -> Result<Value, String> {
    use Value as V;
    Ok(match value {
        V::Int(n) => V::Decimal(n.to_string()),
        V::Float(f) if f.is_finite() => V::Decimal(f.to_string()),
        V::Text(s) | V::Decimal(s) => {
            let t = s.trim();
            if is_decimal_text(t) {
                V::Decimal(t.to_string())
            } else {
                return Err(format!("{s:?} is not a decimal number"));
            }
        }
        value => return Err(cannot_go_into(SqlType::Decimal, &value)),
    })
}

/// Fits `value` to a float column, which holds 53 bits of mantissa: what it would round is
/// refused.
fn fit_float(value: Value) -> Result<Value, String> {
    use Value as V;
    Ok(match value {
        V::Int(n) => {
            if n.unsigned_abs() <= 1 << 53 {
                V::Float(n as f64)
            } else {
                return Err(format!("{n} has more digits than a float column keeps"));
            }
        }
        V::Float(f) => V::Float(f),
        V::Text(s) | V::Decimal(s) => match s.trim().parse::<f64>() {
            Ok(f) if !f.is_finite() => V::Float(f),
            Ok(f) if exact_float(f, &s) => V::Float(f),
            Ok(_) => return Err(format!("{s} has more digits than a float column keeps")),
            Err(_) => return Err(format!("{s:?} is not a number")),
        },
        value => return Err(cannot_go_into(SqlType::Float, &value)),
    })
}

/// Fits `value` to a boolean column.
fn fit_bool(value: Value) -> Result<Value, String> {
    use Value as V;
    Ok(match value {
        V::Bool(b) => V::Bool(b),
        V::Int(n @ (0 | 1)) => V::Bool(n == 1),
        V::Text(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "t" | "1" | "yes" | "on" => V::Bool(true),
            "false" | "f" | "0" | "no" | "off" => V::Bool(false),
            _ => return Err(format!("{s:?} is not a boolean")),
        },
        value => return Err(cannot_go_into(SqlType::Bool, &value)),
    })
}

/// Fits `value` to a text column.
fn fit_text(value: Value) -> Result<Value, String> {
    use Value as V;
    Ok(match value {
        V::Text(s) => V::Text(s),
        V::Bytes(b) => match String::from_utf8(b) {
            Ok(s) => V::Text(s),
            Err(_) => return Err("bytes that are not UTF-8 cannot go into a text column".into()),
        },
        V::Json(j) => V::Text(j.to_string()),
        V::Int(n) => V::Text(n.to_string()),
        V::Float(f) => V::Text(f.to_string()),
        V::Decimal(s) => V::Text(s),
        V::Bool(b) => V::Text(b.to_string()),
        v @ (V::Uuid(_) | V::Date(_) | V::Time(_) | V::Timestamp(_) | V::TimestampTz(_)) => {
            V::Text(v.text_form().unwrap_or_default())
        }
        value => return Err(cannot_go_into(SqlType::Text, &value)),
    })
}

/// Fits `value` to a bytes column.
fn fit_bytes(value: Value) -> Result<Value, String> {
    match value {
        Value::Bytes(b) => Ok(Value::Bytes(b)),
        Value::Text(s) => Ok(Value::Bytes(s.into_bytes())),
        value => Err(cannot_go_into(SqlType::Bytes, &value)),
    }
}

/// Fits `value` to a JSON column.
fn fit_json(value: Value) -> Result<Value, String> {
    use Value as V;
    Ok(match value {
        V::Json(j) => V::Json(j),
        V::Text(s) => match serde_json::from_str(&s) {
            Ok(j) => V::Json(j),
            Err(_) => {
                return Err(format!(
                    "{s:?} is not JSON text; return a table for a document"
                ))
            }
        },
        V::Int(n) => V::Json(n.into()),
        V::Bool(b) => V::Json(b.into()),
        V::Float(f) => match serde_json::Number::from_f64(f) {
            Some(n) => V::Json(n.into()),
            None => return Err(format!("{f} cannot be written as JSON")),
        },
        value => return Err(cannot_go_into(SqlType::Json, &value)),
    })
}

/// Why `value` cannot go into a column of type `to` at all.
fn cannot_go_into(to: SqlType, value: &Value) -> String {
    format!(
        "{} cannot go into a {} column",
        kind(value),
        format!("{to:?}").to_lowercase()
    )
}

/// What a value is, for messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "NULL",
        Value::Bool(_) => "a boolean",
        Value::Int(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Decimal(_) => "a decimal",
        Value::Text(_) => "text",
        Value::Bytes(_) => "bytes",
        Value::Json(_) => "a JSON document",
        Value::Uuid(_) => "a UUID",
        Value::Date(_) => "a date",
        Value::Time(_) => "a time",
        Value::Timestamp(_) | Value::TimestampTz(_) => "a timestamp",
        Value::TextArray(_) => "an array",
    }
}

/// Whether `s` is written as a date (`YYYY-MM-DD`, alone or before a time) that is none: a
/// zero month or day, or a day the month lacks.
fn is_invalid_date(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let shaped = digits(0..4)
        && b.get(4) == Some(&b'-')
        && digits(5..7)
        && b.get(7) == Some(&b'-')
        && digits(8..10)
        && matches!(b.get(10), None | Some(b' ' | b'T'));
    shaped && NaiveDate::parse_from_str(&s[..10], "%Y-%m-%d").is_err()
}

/// The date of a timestamp at midnight; any other time of day would be dropped by a date
/// column, which is refused.
fn date_of(t: NaiveDateTime, shown: &str) -> Result<Value, String> {
    if t.time() == NaiveTime::MIN {
        Ok(Value::Date(t.date()))
    } else {
        Err(format!(
            "{shown} has a time of day, which a date column would drop"
        ))
    }
}

fn parse_date(s: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").ok()
}

fn parse_time(s: &str) -> Option<NaiveTime> {
    NaiveTime::parse_from_str(s.trim(), "%H:%M:%S%.f").ok()
}

/// `2024-02-29 23:59:58.5`, with `T` or a space, with or without an offset (`Z`, `+02:00`,
/// `+0200`, `+02`); without one it is UTC.
fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    for format in [
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%dT%H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%z",
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%d %H:%M:%S%.f%#z",
        "%Y-%m-%dT%H:%M:%S%.f%#z",
    ] {
        if let Ok(t) = DateTime::parse_from_str(s, format) {
            return Some(t.with_timezone(&Utc));
        }
    }
    let naive = s.strip_suffix('Z').unwrap_or(s);
    for format in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(naive, format) {
            return Some(t.and_utc());
        }
    }
    None
}

/// Whether the float `f` read from `text` is exactly the number written there (finite, and
/// no digit of `text` lost to the float's 53 bits).
pub fn exact_float(f: f64, text: &str) -> bool {
    f.is_finite() && normalize_decimal(&f.to_string()) == normalize_decimal(text)
}

/// A decimal number's text in one form: no `+`, no exponent, no leading zeros before the point
/// or trailing zeros after it, `0` for every zero (`-0.00`, `0e5`). `None` for text that is
/// not a finite decimal number, or whose exponent is out of all proportion (over 1,000).
pub fn normalize_decimal(text: &str) -> Option<String> {
    let t = text.trim();
    let (negative, body) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], body[i + 1..].parse::<i64>().ok()?),
        None => (body, 0),
    };
    if exponent.abs() > 1000 {
        return None;
    }
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !all_digits(int) || !all_digits(frac) {
        return None;
    }
    let digits = format!("{int}{frac}");
    // The point sits after this many of `digits` (may be negative or past the end).
    let point = int.len() as i64 + exponent;
    let (Some(first), Some(last)) = (digits.find(|c| c != '0'), digits.rfind(|c| c != '0')) else {
        return Some("0".to_string());
    };
    let (first, last) = (first as i64, last as i64 + 1);
    let significant = &digits[first as usize..last as usize];
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    if point <= first {
        out.push_str("0.");
        out.push_str(&"0".repeat((first - point) as usize));
        out.push_str(significant);
    } else if point >= last {
        out.push_str(significant);
        out.push_str(&"0".repeat((point - last) as usize));
    } else {
        let split = (point - first) as usize;
        out.push_str(&significant[..split]);
        out.push('.');
        out.push_str(&significant[split..]);
    }
    Some(out)
}

fn is_integer_text(t: &str) -> bool {
    let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// `-12.50`, `3`, `.5`, `1e-3`: what every database accepts as an exact numeric literal; and
/// PostgreSQL's `NaN` and `±Infinity` (a database without them refuses them itself).
fn is_decimal_text(t: &str) -> bool {
    if matches!(t, "NaN" | "Infinity" | "-Infinity" | "+Infinity") {
        return true;
    }
    let body = t.strip_prefix(['-', '+']).unwrap_or(t);
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    (!int.is_empty() || !frac.is_empty())
        && digits(int)
        && digits(frac)
        && exponent.is_none_or(is_integer_text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r11_dates_that_are_none_are_refused() {
        for text in [
            "2024-00-15",
            "2024-02-30",
            "2024-01-00 10:00:00",
            "2024-13-01T00:00:00",
        ] {
            let fitted = SqlType::Date.fit(Value::Text(text.into()));
            assert!(fitted.is_err_and(|e| e.contains("no valid date")), "{text}");
            assert!(
                SqlType::Timestamp.fit(Value::Text(text.into())).is_err(),
                "{text}"
            );
        }
        // Text the database parses (or refuses) itself is left to it.
        for text in ["infinity", "0044-03-15 BC", "5874897-01-01"] {
            assert_eq!(
                SqlType::Date.fit(Value::Text(text.into())),
                Ok(Value::Text(text.into()))
            );
        }
    }

    #[test]
    fn sorts_type_names_of_the_three_databases() {
        for (name, t) in [
            ("integer", SqlType::Int),
            ("bigint(20) unsigned", SqlType::Int),
            ("tinyint(1)", SqlType::Int),
            ("numeric(10,2)", SqlType::Decimal),
            ("decimal(65,30)", SqlType::Decimal),
            ("double precision", SqlType::Float),
            ("character varying(20)", SqlType::Text),
            ("varchar(255)", SqlType::Text),
            ("longtext", SqlType::Text),
            ("bytea", SqlType::Bytes),
            ("varbinary(16)", SqlType::Bytes),
            ("jsonb", SqlType::Json),
            ("timestamp without time zone", SqlType::Timestamp),
            ("timestamp(3) with time zone", SqlType::TimestampTz),
            ("datetime(6)", SqlType::Timestamp),
            ("time without time zone", SqlType::Time),
            ("interval", SqlType::Other),
            ("integer[]", SqlType::Other),
            ("text[]", SqlType::Other),
            ("_int4", SqlType::Other),
            ("time with time zone", SqlType::Other),
            ("time(3) with time zone", SqlType::Other),
            ("time(3) without time zone", SqlType::Time),
            ("user-defined", SqlType::Other),
            ("unsigned big int", SqlType::Int),
            ("", SqlType::Other),
        ] {
            assert_eq!(SqlType::of(name), t, "{name}");
        }
    }

    #[test]
    fn fits_without_losing_data() {
        assert_eq!(SqlType::Int.fit(Value::Float(3.0)), Ok(Value::Int(3)));
        assert!(SqlType::Int.fit(Value::Float(3.5)).is_err());
        assert!(SqlType::Int.fit(Value::Text("12a".into())).is_err());
        assert_eq!(
            SqlType::Int.fit(Value::Text("18446744073709551615".into())),
            Ok(Value::Decimal("18446744073709551615".into()))
        );
        assert_eq!(
            SqlType::Decimal.fit(Value::Text("-0.000000000000000000001".into())),
            Ok(Value::Decimal("-0.000000000000000000001".into()))
        );
        assert!(SqlType::Decimal.fit(Value::Text("1,5".into())).is_err());
        assert!(SqlType::Decimal.fit(Value::Float(f64::NAN)).is_err());
        assert!(SqlType::Text.fit(Value::Bytes(vec![0xff])).is_err());
        assert_eq!(
            SqlType::Json.fit(Value::Text("[1]".into())),
            Ok(Value::Json(serde_json::json!([1])))
        );
        assert!(SqlType::Json.fit(Value::Text("nope".into())).is_err());
        assert_eq!(SqlType::Bool.fit(Value::Int(1)), Ok(Value::Bool(true)));
        assert!(SqlType::Bool.fit(Value::Int(2)).is_err());
        assert_eq!(SqlType::Date.fit(Value::Null), Ok(Value::Null));
        let noon = NaiveDate::from_ymd_opt(2024, 2, 29)
            .unwrap()
            .and_hms_micro_opt(12, 0, 0, 500_000)
            .unwrap();
        for text in [
            "2024-02-29 12:00:00.5",
            "2024-02-29T12:00:00.5Z",
            "2024-02-29 14:00:00.5+02:00",
            "2024-02-29 14:00:00.5+02",
        ] {
            assert_eq!(
                SqlType::TimestampTz.fit(Value::Text(text.into())),
                Ok(Value::TimestampTz(noon.and_utc())),
                "{text}"
            );
        }
        assert_eq!(
            SqlType::Timestamp.fit(Value::Text("2024-02-29 12:00:00.5".into())),
            Ok(Value::Timestamp(noon))
        );
        assert_eq!(
            SqlType::Date.fit(Value::Text("infinity".into())),
            Ok(Value::Text("infinity".into()))
        );
        assert!(SqlType::Date.fit(Value::Float(1.0)).is_err());
        assert!(SqlType::Date
            .fit(Value::Text("2024-01-01 10:00".into()))
            .is_err());
        assert!(SqlType::Date
            .fit(Value::Text("2024-01-01 00:00:00".into()))
            .is_ok());
        assert!(SqlType::Float.fit(Value::Int((1 << 53) + 1)).is_err());
        assert_eq!(
            SqlType::Float.fit(Value::Decimal("0.1".into())),
            Ok(Value::Float(0.1))
        );
        assert!(SqlType::Float
            .fit(Value::Decimal("12345678901234567890.5".into()))
            .is_err());
        assert_eq!(
            SqlType::Int.fit(Value::Decimal("5.00".into())),
            Ok(Value::Int(5))
        );
        assert!(SqlType::Int.fit(Value::Decimal("5.50".into())).is_err());
        assert!(SqlType::Date.fit(Value::Text("0000-00-00".into())).is_err());
        assert!(SqlType::Timestamp
            .fit(Value::Text("0000-00-00 00:00:00".into()))
            .is_err());
    }

    #[test]
    fn decimals_have_one_normal_form() {
        for (text, normal) in [
            ("12.500", "12.5"),
            ("-0.00", "0"),
            ("007", "7"),
            ("+1.0", "1"),
            ("-0.010", "-0.01"),
            ("1e3", "1000"),
            ("1.5E-3", "0.0015"),
            ("123.456e1", "1234.56"),
            ("0e5", "0"),
            (
                "12345678901234567890.0123456789",
                "12345678901234567890.0123456789",
            ),
        ] {
            assert_eq!(normalize_decimal(text).as_deref(), Some(normal), "{text}");
        }
        for text in ["NaN", "", ".", "1e", "1.2.3", "1e5000", "0x10"] {
            assert_eq!(normalize_decimal(text), None, "{text}");
        }
    }

    #[test]
    fn reads_text_and_json_in_the_form_transforms_see() {
        assert_eq!(
            SqlType::Text.read(Value::Bytes(b"caf\xc3\xa9".to_vec())),
            Value::Text("café".into())
        );
        assert_eq!(
            SqlType::Json.read(Value::Text("{\"a\":{}}".into())),
            Value::Json(serde_json::json!({"a": {}}))
        );
        assert_eq!(SqlType::Int.read(Value::Int(1)), Value::Int(1));
    }
}
