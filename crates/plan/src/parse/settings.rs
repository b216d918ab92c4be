//! Batch settings (`[defaults]` and a step's own), and the values they are written in:
//! durations, sizes in bytes, factors.

use std::time::Duration;

use toml::de::{DeTable, DeValue};

use super::context::{type_name, Ctx};
use crate::model::{Locking, OnRowError, Settings};
use crate::parse_duration;

const DURATION_EXAMPLES: &str = "\"500ms\", \"30s\", \"10m\" or \"2h\"";

/// The longest time limit every database takes: PostgreSQL's `statement_timeout` and
/// `idle_in_transaction_session_timeout` are whole milliseconds in an `int`; MariaDB's
/// `max_statement_time` and `wait_timeout` go to a year, and MySQL's `max_execution_time` further.
pub(crate) const LONGEST_SESSION_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

/// Parses a factor such as `2x`, `1.5x` or `2`.
fn parse_factor(text: &str) -> Option<f64> {
    let number = text.trim().strip_suffix(['x', 'X']).unwrap_or(text.trim());
    number.trim().parse::<f64>().ok()
}

/// A factor written as "2x" or as a number, greater than 1.
pub(super) fn read_factor(cx: &mut Ctx<'_>, table: &DeTable<'_>, key: &str) -> Option<f64> {
    let value = table.get(key)?;
    let factor = match value.get_ref() {
        DeValue::String(s) => parse_factor(s),
        DeValue::Integer(i) => i.as_str().replace('_', "").parse::<f64>().ok(),
        DeValue::Float(f) => f.as_str().replace('_', "").parse::<f64>().ok(),
        _ => None,
    };
    match factor {
        Some(f) if f.is_finite() && f > 1.0 => Some(f),
        _ => {
            cx.error(
                &value.span(),
                format!("`{key}` must be a factor greater than 1, such as \"2x\""),
            );
            None
        }
    }
}

/// `"64MiB"`, `"512 KB"`, `"1GB"` or `"1000"` in bytes; `None` when it is none of these.
fn parse_byte_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" | "k" => 1 << 10,
        "mb" => 1_000_000,
        "mib" | "m" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" | "g" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(factor)
}

impl Ctx<'_> {
    /// `base` overridden by the settings written in `table`.
    pub(super) fn settings(&mut self, table: &DeTable<'_>, base: &Settings) -> Settings {
        let mut s = base.clone();
        if let Some((n, _)) = self.count(table, "batch_size") {
            s.batch_size = n;
        }
        if let Some((n, span)) = self.count(table, "max_attempts") {
            match u32::try_from(n) {
                Ok(n) => s.max_attempts = n,
                Err(_) => self.error(&span, "`max_attempts` is too large"),
            }
        }
        if let Some(d) = self.session_duration(table, "lease") {
            s.lease = d;
        }
        if let Some(d) = self.session_duration(table, "batch_timeout") {
            s.batch_timeout = d;
        }
        if let Some((v, span)) = self.string(table, "on_row_error") {
            match v.as_str() {
                "fail" => s.on_row_error = OnRowError::Fail,
                "skip" => s.on_row_error = OnRowError::Skip,
                _ => self.error(
                    &span,
                    format!("`on_row_error` must be \"fail\" or \"skip\", not {v:?}"),
                ),
            }
        }
        if let Some((v, span)) = self.string(table, "locking") {
            match v.as_str() {
                "optimistic" => s.locking = Some(Locking::Optimistic),
                "rows" => s.locking = Some(Locking::Rows),
                _ => self.error(
                    &span,
                    format!("`locking` must be \"optimistic\" or \"rows\", not {v:?}"),
                ),
            }
        }
        if let Some(d) = self.duration(table, "target_batch_time") {
            s.target_batch_time = Some(d);
        }
        if let Some(b) = self.boolean(table, "adaptive") {
            s.adaptive = b;
        }
        let min = self.count(table, "min_batch_size");
        if let Some((n, _)) = &min {
            s.min_batch_size = Some(*n);
        }
        let max = self.count(table, "max_batch_size");
        if let Some((n, _)) = &max {
            s.max_batch_size = Some(*n);
        }
        if let Some(n) = self.positive_number(table, "max_rows_per_second") {
            s.max_rows_per_second = Some(n);
        }
        if let Some((q, _)) = self.text(table, "throttle_query") {
            s.throttle_query = Some(q);
        }
        if let Some(d) = self.duration(table, "row_timeout") {
            s.row_timeout = d;
        }
        if let Some(n) = self.byte_size(table, "lua_memory") {
            s.lua_memory = n;
        }
        if let Some(n) = self.byte_size(table, "max_batch_bytes") {
            s.max_batch_bytes = n;
        }
        // Sizing keys beside `adaptive = false` in one table would be read and then ignored.
        if table.get("adaptive").is_some() && !s.adaptive {
            for key in ["target_batch_time", "min_batch_size", "max_batch_size"] {
                if let Some(value) = table.get(key) {
                    self.error(
                        &value.span(),
                        format!(
                            "`{key}` sizes adaptive batches, but this table sets `adaptive = false`: \
                             remove one of them"
                        ),
                    );
                }
            }
        }
        // Only the table that writes one of the bounds is told, so a step does not repeat a
        // problem of [defaults].
        if let (Some(lo), Some(hi)) = (s.min_batch_size, s.max_batch_size) {
            let written = max.or(min);
            if let (true, Some((_, span))) = (lo > hi, written) {
                self.error(
                    &span,
                    format!("`min_batch_size` ({lo}) is larger than `max_batch_size` ({hi})"),
                );
            }
        }
        s
    }

    /// A duration longer than zero, written as a string such as "30s".
    pub(super) fn duration(&mut self, table: &DeTable<'_>, key: &str) -> Option<Duration> {
        let value = table.get(key)?;
        let span = value.span();
        let DeValue::String(text) = value.get_ref() else {
            let message = format!(
                "`{key}` must be a duration such as {DURATION_EXAMPLES}, not {}",
                type_name(value.get_ref())
            );
            self.error(&span, message);
            return None;
        };
        match parse_duration(text) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                self.error(&span, format!("`{key}` must be longer than zero"));
                None
            }
            Err(_) => {
                let message =
                    format!("`{key}` must be a duration such as {DURATION_EXAMPLES}, not {text:?}");
                self.error(&span, message);
                None
            }
        }
    }

    /// A duration a database session setting carries (`batch_timeout` is PostgreSQL's
    /// `statement_timeout` and MariaDB's `max_statement_time`; `lease` bounds an idle
    /// transaction, `idle_in_transaction_session_timeout` and `wait_timeout`): at most
    /// [`LONGEST_SESSION_TIMEOUT`], which every database takes, so that `check` refuses what
    /// `run` would fail on.
    fn session_duration(&mut self, table: &DeTable<'_>, key: &str) -> Option<Duration> {
        let d = self.duration(table, key)?;
        if d <= LONGEST_SESSION_TIMEOUT {
            return Some(d);
        }
        let at = table.get(key).map_or(0..0, |v| v.span());
        self.error(
            &at,
            format!(
                "`{key}` must be at most \"{}ms\" (about 24 days, the longest time limit \
                 PostgreSQL takes)",
                LONGEST_SESSION_TIMEOUT.as_millis()
            ),
        );
        None
    }

    /// A size in bytes, written as a string such as "64MiB" or "512KB", or a number of bytes.
    fn byte_size(&mut self, table: &DeTable<'_>, key: &str) -> Option<u64> {
        let value = table.get(key)?;
        let span = value.span();
        let parsed = match value.get_ref() {
            DeValue::String(text) => parse_byte_size(text),
            DeValue::Integer(n) => n.as_str().parse::<u64>().ok(),
            _ => None,
        };
        match parsed {
            Some(n) if n > 0 => Some(n),
            _ => {
                let message = format!(
                    "`{key}` must be a size such as \"64MiB\", \"512KB\" or \"1GB\" (larger than zero)"
                );
                self.error(&span, message);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{check_steps, env, parse_ok, HEAD};
    use super::*;

    /// Issue 11: "9999999999h" passed `check`, then `run` failed on PostgreSQL's "invalid value".
    #[test]
    fn r11_refuses_time_limits_no_database_takes() {
        check_steps(
            "[defaults]\nbatch_timeout = \"9999999999h\"\nlease = \"2147483648ms\"\n\
             [[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\nlease = \"25days\"\n",
            "p.toml:4:17: `batch_timeout` must be at most \"2147483647ms\" (about 24 days, the longest time limit PostgreSQL takes)\n\
             p.toml:5:9: `lease` must be at most \"2147483647ms\" (about 24 days, the longest time limit PostgreSQL takes)\n\
             p.toml:9:9: step \"a\": `lease` must be at most \"2147483647ms\" (about 24 days, the longest time limit PostgreSQL takes)",
        );
        let plan = parse_ok(&format!(
            "{HEAD}[defaults]\nbatch_timeout = \"2147483647ms\"\nlease = \"24days\"\n\
             [[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n"
        ));
        assert_eq!(
            plan.steps[0].settings.batch_timeout,
            LONGEST_SESSION_TIMEOUT
        );
    }

    #[test]
    fn steps_override_defaults_key_by_key() {
        let plan = parse_ok(&format!(
            "{HEAD}[defaults]\nbatch_size = 10\nlease = \"1m\"\nbatch_timeout = \"1h30m\"\nmax_rows_per_second = 500\nthrottle_query = \"SELECT busy()\"\nmin_batch_size = 5\n\
             [[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n\
             [[steps]]\nname = \"b\"\nsql = \"SELECT 2\"\nlease = \"5s\"\nmax_batch_size = 50\nmax_attempts = 9\nmax_rows_per_second = 2.5\n"
        ));
        let defaults = Settings {
            batch_size: 10,
            lease: Duration::from_secs(60),
            batch_timeout: Duration::from_secs(5400),
            max_rows_per_second: Some(500.0),
            throttle_query: Some("SELECT busy()".into()),
            min_batch_size: Some(5),
            ..Settings::default()
        };
        assert_eq!(plan.defaults, defaults);
        assert_eq!(plan.steps[0].settings, defaults);
        assert_eq!(
            plan.steps[1].settings,
            Settings {
                lease: Duration::from_secs(5),
                max_batch_size: Some(50),
                max_attempts: 9,
                max_rows_per_second: Some(2.5),
                ..defaults
            }
        );
    }

    /// Sizing keys written beside `adaptive = false` would do nothing: refused where written.
    /// A step that turns sizing off under sizing [defaults] is what a user means, and passes.
    #[test]
    fn sizing_keys_beside_adaptive_false_are_refused() {
        let errors = crate::parse::parse(
            &format!(
                "{HEAD}[defaults]\ntarget_batch_time = \"1s\"\n\
                 [[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\nadaptive = false\n\
                 [[steps]]\nname = \"b\"\nsql = \"SELECT 1\"\nadaptive = false\nmax_batch_size = 5\n"
            ),
            std::path::Path::new("p.toml"),
            &env,
        )
        .expect_err("refused")
        .to_string();
        assert_eq!(
            errors,
            "p.toml:13:18: step \"b\": `max_batch_size` sizes adaptive batches, but this table \
             sets `adaptive = false`: remove one of them"
        );
    }

    #[test]
    fn settings_default_when_not_written() {
        let plan = parse_ok(&format!(
            "{HEAD}[[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n"
        ));
        let expected = Settings {
            batch_size: 1000,
            max_attempts: 5,
            lease: Duration::from_secs(30),
            batch_timeout: Duration::from_secs(600),
            on_row_error: OnRowError::Fail,
            target_batch_time: None,
            adaptive: true,
            min_batch_size: None,
            max_batch_size: None,
            max_rows_per_second: None,
            throttle_query: None,
            row_timeout: Duration::from_secs(5),
            lua_memory: 64 << 20,
            max_batch_bytes: 16 << 20,
            locking: None,
        };
        assert_eq!(plan.defaults, expected);
        assert_eq!(plan.steps[0].settings, expected);
        assert_eq!(plan.state_database, None);
        assert_eq!(plan.expect_max_duration, None);
    }

    #[test]
    fn rejects_min_batch_size_above_max_where_written() {
        check_steps(
            "[defaults]\nmin_batch_size = 500\n\
             [[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n\
             [[steps]]\nname = \"b\"\nsql = \"SELECT 1\"\nmax_batch_size = 100\n",
            "p.toml:11:18: step \"b\": `min_batch_size` (500) is larger than `max_batch_size` (100)",
        );
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_byte_size("512 KB"), Some(512_000));
        assert_eq!(parse_byte_size("1GB"), Some(1_000_000_000));
        assert_eq!(parse_byte_size("1000"), Some(1000));
        assert_eq!(parse_byte_size("12 parsecs"), None);
        assert_eq!(parse_byte_size("MiB"), None);
        assert_eq!(parse_byte_size("99999999999999GiB"), None);
    }
}
