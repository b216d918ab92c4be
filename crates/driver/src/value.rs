use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use uuid::Uuid;

use crate::{Error, Result};

/// A value read from or bound into a database.
///
/// Decimals keep their exact text: they never pass through a float.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A boolean.
    Bool(bool),
    /// Any integer type that fits in 64 bits.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// An exact decimal in its SQL text form.
    Decimal(String),
    /// Text.
    Text(String),
    /// Bytes.
    Bytes(Vec<u8>),
    /// A JSON document.
    Json(serde_json::Value),
    /// A UUID.
    Uuid(Uuid),
    /// A date without time.
    Date(NaiveDate),
    /// A time of day.
    Time(NaiveTime),
    /// A timestamp without time zone.
    Timestamp(NaiveDateTime),
    /// A timestamp with time zone, in UTC.
    TimestampTz(DateTime<Utc>),
    /// A PostgreSQL `text[]` parameter: one column of a batch's values in their text form, for
    /// set-based writes (`unnest`). Other databases bind it as its JSON text.
    TextArray(Vec<Option<String>>),
}

impl Value {
    /// The integer in this value, if it holds one (or a text of one, as SQLite may return).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            Value::Decimal(s) | Value::Text(s) => s.parse().ok(),
            Value::Float(f) if f.fract() == 0.0 => Some(*f as i64),
            Value::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    /// The text in this value, if it holds text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) | Value::Decimal(s) => Some(s),
            _ => None,
        }
    }

    /// The SQL text form of values that transforms and messages show as text: decimals exactly
    /// as the database gave them, UUIDs hyphenated, dates and times as ISO 8601 with a space
    /// before the time (as the databases print them; time-zone timestamps in UTC with
    /// `+00:00`), fractional seconds only when there are some. `None` for other values.
    pub fn text_form(&self) -> Option<String> {
        Some(match self {
            Value::Decimal(s) => s.clone(),
            Value::Uuid(u) => u.hyphenated().to_string(),
            Value::Date(d) => d.format("%Y-%m-%d").to_string(),
            Value::Time(t) => t.format("%H:%M:%S%.f").to_string(),
            Value::Timestamp(t) => t.format("%Y-%m-%d %H:%M:%S%.f").to_string(),
            Value::TimestampTz(t) => t.format("%Y-%m-%d %H:%M:%S%.f+00:00").to_string(),
            _ => return None,
        })
    }

    /// Whether this is SQL NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

/// The kinds of chunking key godwit can walk, and how a key is kept as text in the state tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// Integers of any width.
    Int,
    /// Text, ordered by the database's collation.
    Text,
    /// UUIDs, ordered as the database orders them.
    Uuid,
    /// Timestamps without time zone.
    Timestamp,
    /// Timestamps with time zone.
    TimestampTz,
    /// Dates.
    Date,
}

impl KeyKind {
    /// The name stored in the state tables.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Int => "int",
            KeyKind::Text => "text",
            KeyKind::Uuid => "uuid",
            KeyKind::Timestamp => "timestamp",
            KeyKind::TimestampTz => "timestamptz",
            KeyKind::Date => "date",
        }
    }

    /// Parses a name written by [`KeyKind::as_str`].
    pub fn parse(name: &str) -> Option<KeyKind> {
        Some(match name {
            "int" => KeyKind::Int,
            "text" => KeyKind::Text,
            "uuid" => KeyKind::Uuid,
            "timestamp" => KeyKind::Timestamp,
            "timestamptz" => KeyKind::TimestampTz,
            "date" => KeyKind::Date,
            _ => return None,
        })
    }

    /// The kind of key a value read from the database is, if it can be a chunking key.
    pub fn of(value: &Value) -> Option<KeyKind> {
        Some(match value {
            Value::Int(_) => KeyKind::Int,
            Value::Text(_) => KeyKind::Text,
            // MariaDB reports `_bin`-collated text and its native UUID type as binary; such
            // keys are text to godwit, bound back as text and compared by the column's rules.
            Value::Bytes(b) if std::str::from_utf8(b).is_ok() => KeyKind::Text,
            Value::Uuid(_) => KeyKind::Uuid,
            Value::Timestamp(_) => KeyKind::Timestamp,
            Value::TimestampTz(_) => KeyKind::TimestampTz,
            Value::Date(_) => KeyKind::Date,
            _ => return None,
        })
    }

    /// Encodes a key as text for the state tables; [`KeyKind::decode`] gives it back exactly.
    ///
    /// # Errors
    /// When the value is not of this kind.
    pub fn encode(self, value: &Value) -> Result<String> {
        Ok(match (self, value) {
            (KeyKind::Int, Value::Int(n)) => n.to_string(),
            (KeyKind::Text, Value::Text(s)) => s.clone(),
            (KeyKind::Text, Value::Bytes(b)) if std::str::from_utf8(b).is_ok() => {
                String::from_utf8_lossy(b).into_owned()
            }
            (KeyKind::Uuid, Value::Uuid(u)) => u.hyphenated().to_string(),
            (KeyKind::Uuid, Value::Text(s)) => s.clone(),
            (KeyKind::Timestamp, Value::Timestamp(t)) => {
                t.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
            }
            (KeyKind::TimestampTz, Value::TimestampTz(t)) => {
                t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
            }
            (KeyKind::Date, Value::Date(d)) => d.format("%Y-%m-%d").to_string(),
            (kind, value) => {
                return Err(Error::permanent(format!(
                    "a {} key cannot hold the value {value:?}",
                    kind.as_str()
                )))
            }
        })
    }

    /// Decodes a key written by [`KeyKind::encode`].
    ///
    /// # Errors
    /// When the text is not a key of this kind (a damaged state table).
    pub fn decode(self, text: &str) -> Result<Value> {
        let bad = || {
            Error::permanent(format!(
                "the state tables hold {text:?}, which is not a {} key",
                self.as_str()
            ))
        };
        Ok(match self {
            KeyKind::Int => Value::Int(text.parse().map_err(|_| bad())?),
            KeyKind::Text => Value::Text(text.to_string()),
            KeyKind::Uuid => Value::Uuid(text.parse().map_err(|_| bad())?),
            KeyKind::Timestamp => Value::Timestamp(
                NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").map_err(|_| bad())?,
            ),
            KeyKind::TimestampTz => Value::TimestampTz(
                DateTime::parse_from_rfc3339(text)
                    .map_err(|_| bad())?
                    .with_timezone(&Utc),
            ),
            KeyKind::Date => {
                Value::Date(NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| bad())?)
            }
        })
    }
}

/// A row of a result: column names shared by every row of the result, and the values.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    columns: Arc<[String]>,
    values: Vec<Value>,
}

impl Row {
    /// Builds a row; `values` follows `columns` in order.
    pub fn new(columns: Arc<[String]>, values: Vec<Value>) -> Row {
        Row { columns, values }
    }

    /// The column names.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The values in column order.
    pub fn values(&self) -> &[Value] {
        &self.values
    }

    /// The value in column `idx`, or NULL past the end.
    pub fn get(&self, idx: usize) -> &Value {
        self.values.get(idx).unwrap_or(&Value::Null)
    }

    /// The value of the column named `name`.
    pub fn by_name(&self, name: &str) -> Option<&Value> {
        let idx = self.columns.iter().position(|c| c == name)?;
        self.values.get(idx)
    }

    /// Takes the values out.
    pub fn into_values(self) -> Vec<Value> {
        self.values
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_bytes_are_text_keys() {
        // MariaDB hands `_bin`-collated text and UUID columns over as bytes.
        let key = Value::Bytes(b"Zo\xc3\xab".to_vec());
        assert_eq!(KeyKind::of(&key), Some(KeyKind::Text));
        assert_eq!(KeyKind::Text.encode(&key).unwrap(), "Zoë");
        assert_eq!(KeyKind::of(&Value::Bytes(vec![0xff, 0xfe])), None);
    }

    #[test]
    fn keys_round_trip_through_text() {
        let keys = [
            Value::Int(-42),
            Value::Text("O'Brien ü".into()),
            Value::Uuid(Uuid::from_u128(0x1234_5678_9abc_def0_1234_5678_9abc_def0)),
            Value::Timestamp(
                NaiveDate::from_ymd_opt(2024, 2, 29)
                    .unwrap()
                    .and_hms_micro_opt(23, 59, 58, 123_456)
                    .unwrap(),
            ),
            Value::TimestampTz(DateTime::from_timestamp(1_700_000_000, 5_000).unwrap()),
            Value::Date(NaiveDate::from_ymd_opt(1999, 12, 31).unwrap()),
        ];
        for key in keys {
            let kind = KeyKind::of(&key).unwrap();
            let text = kind.encode(&key).unwrap();
            assert_eq!(kind.decode(&text).unwrap(), key, "{text}");
            assert_eq!(KeyKind::parse(kind.as_str()), Some(kind));
        }
    }
}
