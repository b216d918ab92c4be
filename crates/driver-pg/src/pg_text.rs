//! Values in the text form PostgreSQL's input functions read: what godwit's PostgreSQL writes
//! send, as `text[]` elements for `unnest` and as the fields of `COPY … FROM STDIN`.
//!
//! Written into a caller's buffer, because a copy writes millions of them: dates and times are
//! formatted by hand (chrono's `Display` goes through the formatting machinery, a visible share
//! of a copy's CPU) and fall back to chrono outside years 0–9999.

use std::fmt::Write as _;

use chrono::{Datelike, NaiveDate, NaiveDateTime, NaiveTime, Timelike};

use godwit_driver::Value;

/// Appends `value`'s PostgreSQL text form to `out`; `false` (and nothing appended) for NULL.
/// Floats print as the shortest text that reads back as the same float; bytes as `\x` hex;
/// time-zone timestamps in UTC with `+00`.
pub(crate) fn write_pg_text(value: &Value, out: &mut String) -> bool {
    match value {
        Value::Null => return false,
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Float(f) if f.is_nan() => out.push_str("NaN"),
        Value::Float(f) if f.is_infinite() => {
            out.push_str(if *f > 0.0 { "Infinity" } else { "-Infinity" })
        }
        Value::Float(f) => {
            let _ = write!(out, "{f}");
        }
        Value::Text(s) | Value::Decimal(s) => out.push_str(s),
        Value::Bytes(b) => {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            out.reserve(2 + b.len() * 2);
            out.push_str("\\x");
            for byte in b {
                out.push(char::from(DIGITS[usize::from(byte >> 4)]));
                out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
            }
        }
        Value::Json(j) => {
            let _ = write!(out, "{j}");
        }
        Value::Uuid(u) => {
            let _ = write!(out, "{}", u.hyphenated());
        }
        Value::Date(d) => {
            let bc = push_date(out, *d);
            push_era(out, bc);
        }
        Value::Time(t) => push_time(out, *t),
        Value::Timestamp(t) => {
            let bc = push_datetime(out, *t);
            push_era(out, bc);
        }
        Value::TimestampTz(t) => {
            let bc = push_datetime(out, t.naive_utc());
            out.push_str("+00");
            push_era(out, bc);
        }
        Value::TextArray(items) => {
            let _ = write!(out, "{}", serde_json::json!(items));
        }
    }
    true
}

/// `value` in the text form PostgreSQL's writers send it in: every value goes as text into a
/// cast to its column's type (inside a `text[]` for `unnest`), so the statement's parameter
/// types never depend on the values, and a prepared statement fits every batch.
pub(crate) fn pg_text(value: &Value) -> Option<String> {
    let mut out = String::new();
    write_pg_text(value, &mut out).then_some(out)
}

/// `digits` decimal digits of `n`, zero padded.
fn push_digits(out: &mut String, n: u32, digits: u32) {
    let mut buf = [b'0'; 10];
    let mut n = n;
    for slot in buf[..digits as usize].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    // Only ASCII digits were written.
    out.push_str(std::str::from_utf8(&buf[..digits as usize]).unwrap_or_default());
}

/// The date as PostgreSQL reads it; `true` when it is before the common era, which
/// PostgreSQL writes as the year counted back from 1 with ` BC` after the whole value (chrono's
/// year 0 is 1 BC, its -43 is 44 BC). Years past 9999 have more digits, without a sign.
fn push_date(out: &mut String, d: NaiveDate) -> bool {
    let bc = d.year() <= 0;
    let year = if bc { 1 - d.year() } else { d.year() }.unsigned_abs();
    if year <= 9999 {
        push_digits(out, year, 4);
    } else {
        let _ = write!(out, "{year}");
    }
    out.push('-');
    push_digits(out, d.month(), 2);
    out.push('-');
    push_digits(out, d.day(), 2);
    bc
}

fn push_era(out: &mut String, bc: bool) {
    if bc {
        out.push_str(" BC");
    }
}

fn push_time(out: &mut String, t: NaiveTime) {
    let nanos = t.nanosecond();
    if nanos >= 1_000_000_000 {
        // A leap second: chrono's own form.
        let _ = write!(out, "{t}");
        return;
    }
    push_digits(out, t.hour(), 2);
    out.push(':');
    push_digits(out, t.minute(), 2);
    out.push(':');
    push_digits(out, t.second(), 2);
    if nanos > 0 {
        // Milli-, micro- or nanoseconds, as chrono prints them: the exact fraction.
        out.push('.');
        if nanos.is_multiple_of(1_000_000) {
            push_digits(out, nanos / 1_000_000, 3);
        } else if nanos.is_multiple_of(1_000) {
            push_digits(out, nanos / 1_000, 6);
        } else {
            push_digits(out, nanos, 9);
        }
    }
}

fn push_datetime(out: &mut String, t: NaiveDateTime) -> bool {
    let bc = push_date(out, t.date());
    out.push(' ');
    push_time(out, t.time());
    bc
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;

    fn text(v: &Value) -> Option<String> {
        pg_text(v)
    }

    #[test]
    fn temporal_values_read_back_as_chrono_reads_them() {
        // Spread over years 1–9999 and every fraction length, including none.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for i in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let secs = (seed % 315_506_361_600) as i64 - 62_135_596_800;
            let nanos = match i % 4 {
                0 => 0,
                1 => (seed % 1_000) as u32 * 1_000_000,
                2 => (seed % 1_000_000) as u32 * 1_000,
                _ => (seed % 1_000_000_000) as u32,
            };
            let t: DateTime<Utc> = DateTime::from_timestamp(secs, nanos).unwrap();
            let naive = t.naive_utc();
            let written = text(&Value::Timestamp(naive)).unwrap();
            assert_eq!(
                NaiveDateTime::parse_from_str(&written, "%Y-%m-%d %H:%M:%S%.f").unwrap(),
                naive,
                "{written}"
            );
            assert_eq!(written, naive.to_string());
            assert_eq!(text(&Value::TimestampTz(t)).unwrap(), format!("{naive}+00"));
            assert_eq!(
                text(&Value::Date(naive.date())).unwrap(),
                naive.date().to_string()
            );
            assert_eq!(
                text(&Value::Time(naive.time())).unwrap(),
                naive.time().to_string()
            );
        }
    }

    #[test]
    fn years_outside_four_digits_as_postgresql_reads_them() {
        let far = NaiveDate::from_ymd_opt(12345, 1, 2).unwrap();
        assert_eq!(text(&Value::Date(far)).unwrap(), "12345-01-02");
        // chrono's year -43 is 44 BC; its year 0 is 1 BC.
        let bc = NaiveDate::from_ymd_opt(-43, 3, 15).unwrap();
        assert_eq!(text(&Value::Date(bc)).unwrap(), "0044-03-15 BC");
        let noon = bc.and_hms_micro_opt(12, 0, 0, 500_000).unwrap();
        assert_eq!(
            text(&Value::Timestamp(noon)).unwrap(),
            "0044-03-15 12:00:00.500 BC"
        );
        assert_eq!(
            text(&Value::TimestampTz(noon.and_utc())).unwrap(),
            "0044-03-15 12:00:00.500+00 BC"
        );
        let one_bc = NaiveDate::from_ymd_opt(0, 12, 31).unwrap();
        assert_eq!(text(&Value::Date(one_bc)).unwrap(), "0001-12-31 BC");
    }

    #[test]
    fn other_values() {
        assert_eq!(text(&Value::Null), None);
        assert_eq!(text(&Value::Bool(true)).unwrap(), "true");
        assert_eq!(text(&Value::Int(i64::MIN)).unwrap(), i64::MIN.to_string());
        assert_eq!(text(&Value::Float(0.1)).unwrap(), "0.1");
        assert_eq!(text(&Value::Float(f64::NEG_INFINITY)).unwrap(), "-Infinity");
        assert_eq!(text(&Value::Float(f64::NAN)).unwrap(), "NaN");
        assert_eq!(
            text(&Value::Bytes(vec![0, 0xab, 0xff])).unwrap(),
            "\\x00abff"
        );
        assert_eq!(text(&Value::Decimal("-0.10".into())).unwrap(), "-0.10");
    }
}
