//! The reading context: where problems are collected with their locations, and the reading of
//! one key's value as a string, a number, a boolean or a table, reporting a value of the wrong
//! type where it was written.

use std::path::Path;

use toml::de::{DeTable, DeValue};

use super::Span;
use crate::model::WrittenUrl;
use crate::{LineIndex, Location, PlanError};

/// What becomes of the keys `not_yet.rs` lists: every command refuses them; the parser's
/// own tests read them into the model, so their reading stays tested for the version that acts
/// on them.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum NotYet {
    Refuse,
    #[cfg(test)]
    Accept,
}

/// How a value's type is named in messages.
pub(super) fn type_name(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// Reading state: the text for locations, and the problems found so far.
pub(super) struct Ctx<'a> {
    pub(super) text: &'a str,
    pub(super) lines: LineIndex<'a>,
    pub(super) path: &'a Path,
    pub(super) env: &'a dyn Fn(&str) -> Option<String>,
    pub(super) errors: Vec<PlanError>,
    /// The step being read, named in front of its problems.
    pub(super) step: Option<String>,
    /// The database URLs read so far, as written.
    pub(super) urls: Vec<WrittenUrl>,
    pub(super) not_yet: NotYet,
}

impl Ctx<'_> {
    pub(super) fn loc(&self, span: &Span) -> Location {
        self.lines.location(span.start)
    }

    /// Records `message` at `span` as it is.
    pub(super) fn push(&mut self, span: &Span, message: String) {
        self.errors.push(PlanError {
            file: self.path.to_path_buf(),
            location: Some(self.loc(span)),
            message,
        });
    }

    /// Records a problem at `span`, naming the step being read, if any.
    pub(super) fn error(&mut self, span: &Span, message: impl Into<String>) {
        let message = message.into();
        let message = match &self.step {
            Some(step) => format!("step {step:?}: {message}"),
            None => message,
        };
        self.push(span, message);
    }

    /// Records a problem without a place in the file, such as a missing key.
    pub(super) fn error_unlocated(&mut self, message: impl Into<String>) {
        self.errors.push(PlanError {
            file: self.path.to_path_buf(),
            location: None,
            message: message.into(),
        });
    }

    pub(super) fn string(&mut self, table: &DeTable<'_>, key: &str) -> Option<(String, Span)> {
        let value = table.get(key)?;
        match value.get_ref() {
            DeValue::String(s) => Some((s.to_string(), value.span())),
            other => {
                let message = format!("`{key}` must be a string, not {}", type_name(other));
                self.error(&value.span(), message);
                None
            }
        }
    }

    /// A string that must not be blank.
    pub(super) fn text(&mut self, table: &DeTable<'_>, key: &str) -> Option<(String, Span)> {
        let (text, span) = self.string(table, key)?;
        if text.trim().is_empty() {
            self.error(&span, format!("`{key}` must not be empty"));
            return None;
        }
        Some((text, span))
    }

    /// An array of strings, each with its span.
    pub(super) fn strings(
        &mut self,
        table: &DeTable<'_>,
        key: &str,
    ) -> Option<Vec<(String, Span)>> {
        let value = table.get(key)?;
        let DeValue::Array(items) = value.get_ref() else {
            let message = format!(
                "`{key}` must be an array of strings, such as [\"a\", \"b\"], not {}",
                type_name(value.get_ref())
            );
            self.error(&value.span(), message);
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut all_strings = true;
        for item in items.iter() {
            match item.get_ref() {
                DeValue::String(s) => out.push((s.to_string(), item.span())),
                other => {
                    let message = format!("`{key}` must hold strings, not {}", type_name(other));
                    self.error(&item.span(), message);
                    all_strings = false;
                }
            }
        }
        all_strings.then_some(out)
    }

    pub(super) fn integer(
        &mut self,
        table: &DeTable<'_>,
        key: &str,
        min: i64,
    ) -> Option<(i64, Span)> {
        let value = table.get(key)?;
        let span = value.span();
        let DeValue::Integer(i) = value.get_ref() else {
            let message = format!(
                "`{key}` must be an integer, not {}",
                type_name(value.get_ref())
            );
            self.error(&span, message);
            return None;
        };
        let digits = i.as_str().replace('_', "");
        let digits = digits
            .trim_start_matches("0x")
            .trim_start_matches("0o")
            .trim_start_matches("0b");
        match i64::from_str_radix(digits, i.radix()) {
            Ok(n) if n >= min => Some((n, span)),
            Ok(_) => {
                self.error(&span, format!("`{key}` must be at least {min}"));
                None
            }
            Err(_) => {
                self.error(&span, format!("`{key}` is too large"));
                None
            }
        }
    }

    /// A count that must be at least 1.
    pub(super) fn count(&mut self, table: &DeTable<'_>, key: &str) -> Option<(u64, Span)> {
        let (n, span) = self.integer(table, key, 1)?;
        u64::try_from(n).ok().map(|n| (n, span))
    }

    pub(super) fn positive_number(&mut self, table: &DeTable<'_>, key: &str) -> Option<f64> {
        let value = table.get(key)?;
        let n = match value.get_ref() {
            DeValue::Integer(i) => i.as_str().replace('_', "").parse::<f64>().ok(),
            DeValue::Float(f) => f.as_str().replace('_', "").parse::<f64>().ok(),
            other => {
                let message = format!("`{key}` must be a number, not {}", type_name(other));
                self.error(&value.span(), message);
                return None;
            }
        };
        match n {
            Some(n) if n.is_finite() && n > 0.0 => Some(n),
            _ => {
                self.error(&value.span(), format!("`{key}` must be a positive number"));
                None
            }
        }
    }

    pub(super) fn boolean(&mut self, table: &DeTable<'_>, key: &str) -> Option<bool> {
        let value = table.get(key)?;
        match value.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                let message = format!("`{key}` must be true or false, not {}", type_name(other));
                self.error(&value.span(), message);
                None
            }
        }
    }

    pub(super) fn table<'t, 'i>(
        &mut self,
        parent: &'t DeTable<'i>,
        key: &str,
    ) -> Option<&'t DeTable<'i>> {
        let value = parent.get(key)?;
        match value.get_ref() {
            DeValue::Table(t) => Some(t),
            other => {
                let message = format!(
                    "`{key}` must be a table ([{key}]), not {}",
                    type_name(other)
                );
                self.error(&value.span(), message);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::check;

    #[test]
    fn rejects_values_of_the_wrong_type_at_the_value() {
        check(
            "name = 5\ndatabase = \"sqlite://a\"\nstate = \"sqlite://s\"\n\
             [defaults]\nbatch_size = \"big\"\nmax_attempts = 0\nlease = \"soon\"\nbatch_timeout = 30\nadaptive = \"yes\"\n\
             max_rows_per_second = -1\nmin_batch_size = 1.5\non_row_error = \"ignore\"\ntarget_batch_time = \"0s\"\n\
             [[steps]]\nname = \"a\"\nafter = \"x\"\nsql = \"SELECT 1\"\nbatch_size = 0\nthrottle_query = \"\"\n\
             [[steps]]\nname = \"b\"\nafter = [\"a\", 2]\ntable = \"t\"\nkey = \"id\"\ncolumns = [[\"x\"]]\nlua = \"x\"\non_conflict = \"merge\"\nmax_batch_size = 99999999999999999999\n\
             [[steps]]\nname = \"c\"\ntable = \"t\"\nkey = \"id\"\ninto = \"u\"\non_conflict = \"merge\"\nmax_rows_per_second = \"fast\"\n",
            "p.toml:1:8: `name` must be a string, not an integer\n\
             p.toml:3:9: `state` must be a table ([state]), not a string\n\
             p.toml:5:14: `batch_size` must be an integer, not a string\n\
             p.toml:6:16: `max_attempts` must be at least 1\n\
             p.toml:7:9: `lease` must be a duration such as \"500ms\", \"30s\", \"10m\" or \"2h\", not \"soon\"\n\
             p.toml:8:17: `batch_timeout` must be a duration such as \"500ms\", \"30s\", \"10m\" or \"2h\", not an integer\n\
             p.toml:9:12: `adaptive` must be true or false, not a string\n\
             p.toml:10:23: `max_rows_per_second` must be a positive number\n\
             p.toml:11:18: `min_batch_size` must be an integer, not a float\n\
             p.toml:12:16: `on_row_error` must be \"fail\" or \"skip\", not \"ignore\"\n\
             p.toml:13:21: `target_batch_time` must be longer than zero\n\
             p.toml:16:9: step \"a\": `after` must be an array of strings, such as [\"a\", \"b\"], not a string\n\
             p.toml:18:14: step \"a\": `batch_size` must be at least 1\n\
             p.toml:19:18: step \"a\": `throttle_query` must not be empty\n\
             p.toml:22:15: step \"b\": `after` must hold strings, not an integer\n\
             p.toml:25:12: step \"b\": `columns` must hold strings, not an array\n\
             p.toml:27:1: step \"b\": `on_conflict` only applies to copies (steps with `into`)\n\
             p.toml:27:15: step \"b\": `on_conflict` must be \"update\", \"ignore\" or \"error\", not \"merge\"\n\
             p.toml:28:18: step \"b\": `max_batch_size` is too large\n\
             p.toml:34:15: step \"c\": `on_conflict` must be \"update\", \"ignore\" or \"error\", not \"merge\"\n\
             p.toml:35:23: step \"c\": `max_rows_per_second` must be a number, not a string",
        );
    }
}
