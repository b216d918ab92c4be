//! Values as JSON: what an external program reads and writes, and what a dead letter keeps.

use base64::Engine as _;
use godwit_driver::{exact_float, Value};
use serde_json::Value as Json;

/// A value as JSON for an external program: bytes as base64 text, non-finite floats as the
/// strings `"NaN"`, `"Infinity"` and `"-Infinity"` (JSON has no such numbers).
pub fn to_json(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(n) => Json::from(*n),
        Value::Float(f) => match serde_json::Number::from_f64(*f) {
            Some(n) => Json::Number(n),
            None if f.is_nan() => Json::from("NaN"),
            None if *f > 0.0 => Json::from("Infinity"),
            None => Json::from("-Infinity"),
        },
        Value::Text(s) => Json::from(s.as_str()),
        Value::Bytes(b) => Json::from(base64::engine::general_purpose::STANDARD.encode(b)),
        Value::Json(j) => j.clone(),
        other => Json::from(other.text_form().unwrap_or_default()),
    }
}

/// A value a program wrote, as godwit binds it: integers that fit stay integers, larger ones
/// keep their exact digits as a decimal, strings are text, objects and arrays are JSON.
pub fn from_json(json: Json) -> Value {
    match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => {
                // A float when one holds it exactly, else its digits as an exact decimal.
                let text = n.to_string();
                match text.parse::<f64>() {
                    Ok(f) if exact_float(f, &text) => Value::Float(f),
                    _ => Value::Decimal(text),
                }
            }
        },
        Json::String(s) => Value::Text(s),
        other => Value::Json(other),
    }
}

/// Bytes a program wrote back as base64 text.
pub fn decode_bytes(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

/// A row as one line of JSON, its columns in order (the line an external program reads, and
/// the row a dead letter keeps).
pub fn row_line(columns: &[String], values: &[Value]) -> String {
    let mut line = String::from("{");
    for (i, (column, value)) in columns.iter().zip(values).enumerate() {
        if i > 0 {
            line.push(',');
        }
        line.push_str(&Json::from(column.as_str()).to_string());
        line.push(':');
        line.push_str(&to_json(value).to_string());
    }
    line.push('}');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, TimeZone, Utc};

    #[test]
    fn rows_become_json_lines_in_column_order() {
        let columns = ["id", "b", "a", "bytes", "nan", "when", "price"].map(String::from);
        let values = [
            Value::Int(7),
            Value::Null,
            Value::Text("é \"q\"".into()),
            Value::Bytes(vec![0, 255]),
            Value::Float(f64::NAN),
            Value::TimestampTz(Utc.with_ymd_and_hms(2024, 2, 29, 23, 59, 58).unwrap()),
            Value::Decimal("-0.000000000000000000001".into()),
        ];
        assert_eq!(
            row_line(&columns, &values),
            r#"{"id":7,"b":null,"a":"é \"q\"","bytes":"AP8=","nan":"NaN","when":"2024-02-29 23:59:58+00:00","price":"-0.000000000000000000001"}"#
        );
    }

    #[test]
    fn json_values_come_back_without_loss() {
        assert_eq!(from_json(serde_json::json!(i64::MIN)), Value::Int(i64::MIN));
        assert_eq!(
            from_json(serde_json::json!(u64::MAX)),
            Value::Decimal("18446744073709551615".into())
        );
        assert_eq!(from_json(serde_json::json!(1.5)), Value::Float(1.5));
        assert_eq!(
            from_json(serde_json::from_str("12345678901234567890.0123456789").unwrap()),
            Value::Decimal("12345678901234567890.0123456789".into())
        );
        assert_eq!(
            from_json(serde_json::json!({"a": []})),
            Value::Json(serde_json::json!({"a": []}))
        );
        assert_eq!(decode_bytes("AP8="), Some(vec![0, 255]));
        let d = NaiveDate::from_ymd_opt(1999, 12, 31).unwrap();
        assert_eq!(
            Value::Timestamp(d.and_hms_micro_opt(1, 2, 3, 450_000).unwrap()).text_form(),
            Some("1999-12-31 01:02:03.450".into())
        );
    }
}
