//! Numbers, times and names as the Markdown and HTML forms write them.

use chrono::{DateTime, SecondsFormat, Utc};

/// Milliseconds since the Unix epoch as RFC 3339 in UTC, to the millisecond.
pub(crate) fn timestamp(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.to_rfc3339_opts(SecondsFormat::Millis, true),
    )
}

/// A time for people: `2025-03-01 14:05:09` (UTC, as the heading says).
pub(crate) fn date_time(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

/// The time of day alone, `14:05:09`, when the date goes without saying.
pub(crate) fn time_of_day(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map_or_else(|| ms.to_string(), |t| t.format("%H:%M:%S").to_string())
}

/// A time in a table: the time of day when the run's times lie within one day (`one_day`), the
/// date and time otherwise; a dash for none.
pub(crate) fn table_time(ms: Option<i64>, one_day: bool) -> String {
    match ms {
        Some(ms) if one_day => time_of_day(ms),
        Some(ms) => date_time(ms),
        None => "–".to_string(),
    }
}

/// Whether two times fall on the same UTC day.
pub(crate) fn same_day(a: i64, b: i64) -> bool {
    a.div_euclid(86_400_000) == b.div_euclid(86_400_000)
}

/// A duration for people: `0.41 s`, `39.8 s`, `12 min 05 s`, `2 h 03 min`, `3 d 04 h`.
pub(crate) fn duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "–".to_string();
    }
    if seconds < 10.0 {
        return format!("{seconds:.2} s");
    }
    if seconds < 60.0 {
        return format!("{seconds:.1} s");
    }
    let whole = seconds.round() as u64;
    let (d, h, m, s) = (
        whole / 86_400,
        whole / 3600 % 24,
        whole / 60 % 60,
        whole % 60,
    );
    if d > 0 {
        format!("{d} d {h:02} h")
    } else if h > 0 {
        format!("{h} h {m:02} min")
    } else {
        format!("{m} min {s:02} s")
    }
}

/// A short axis label for seconds: `0`, `45s`, `2m`, `1h30`, `2d`.
pub(crate) fn short_duration(seconds: f64) -> String {
    let s = seconds.round() as i64;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        if s % 60 == 0 {
            format!("{}m", s / 60)
        } else {
            format!("{}m{:02}", s / 60, s % 60)
        }
    } else if s < 86_400 {
        if s % 3600 == 0 {
            format!("{}h", s / 3600)
        } else {
            format!("{}h{:02}", s / 3600, s / 60 % 60)
        }
    } else {
        format!("{:.1}d", seconds / 86_400.0)
    }
}

pub use godwit_driver::thousands;

/// A rate: whole numbers with thousands separators from 100 up, one decimal below.
pub(crate) fn rate(rows_per_second: f64) -> String {
    if rows_per_second >= 100.0 {
        thousands(rows_per_second.round() as i64)
    } else {
        format!("{rows_per_second:.1}")
    }
}

/// How the actual duration compares with the estimate: `+12%`, `−3%`.
pub(crate) fn versus(actual: f64, estimated: f64) -> Option<String> {
    if estimated <= 0.0 || !actual.is_finite() {
        return None;
    }
    let change = ((actual / estimated - 1.0) * 100.0).round() as i64;
    Some(match change {
        0 => "±0%".to_string(),
        c if c > 0 => format!("+{c}%"),
        c => format!("−{}%", -c),
    })
}

/// Text made safe inside HTML elements and quoted attributes.
pub(crate) fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// Text made safe inside a Markdown table cell or paragraph: its punctuation taken literally,
/// no line break (which would end the row), no HTML. An underscore inside a word
/// (`customer_phones`) emphasizes nothing and stays as it is, for names to read well.
pub(crate) fn md_escape(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let in_word = |i: usize| {
        let word = |c: Option<&char>| c.is_some_and(|c| c.is_alphanumeric());
        i > 0 && word(chars.get(i - 1)) && word(chars.get(i + 1))
    };
    let mut out = String::with_capacity(s.len());
    for (i, &c) in chars.iter().enumerate() {
        match c {
            '_' if in_word(i) => out.push(c),
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '#' | '~' | '!' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' | '\t' => out.push(' '),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(0.41), "0.41 s");
        assert_eq!(duration(39.84), "39.8 s");
        assert_eq!(duration(725.0), "12 min 05 s");
        assert_eq!(duration(7380.0), "2 h 03 min");
        assert_eq!(duration(3.0 * 86_400.0 + 4.0 * 3600.0), "3 d 04 h");
        assert_eq!(short_duration(0.0), "0s");
        assert_eq!(short_duration(90.0), "1m30");
        assert_eq!(short_duration(5400.0), "1h30");
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(date_time(1_700_000_000_123), "2023-11-14 22:13:20");
        assert!(same_day(1_700_000_000_000, 1_700_000_000_000 + 3_600_000));
    }

    #[test]
    fn groups_thousands() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(-1234567), "-1,234,567");
    }

    #[test]
    fn estimates_compare_in_percent() {
        assert_eq!(versus(39.8, 41.0).as_deref(), Some("−3%"));
        assert_eq!(versus(50.0, 40.0).as_deref(), Some("+25%"));
        assert_eq!(versus(1.0, 0.0), None);
    }

    #[test]
    fn names_cannot_break_out() {
        assert_eq!(
            html_escape("<script>'a' & \"b\"</script>"),
            "&lt;script&gt;&#39;a&#39; &amp; &quot;b&quot;&lt;/script&gt;"
        );
        assert_eq!(md_escape("a|b\n*c*"), "a\\|b \\*c\\*");
        assert_eq!(md_escape("customer_phones _x_"), "customer_phones \\_x\\_");
    }
}
