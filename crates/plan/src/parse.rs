//! TOML text → [`Plan`], collecting every problem with its location.
//!
//! The text is parsed into `toml`'s spanned document tree ([`DeTable`]), which keeps the byte
//! span of every key and value; each section is then read key by key so that a wrong value is
//! reported where it was written, and reading goes on after a problem so that one run lists them
//! all.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::de::{DeTable, DeValue};

use crate::model::{
    Convert, OnConflict, OnRowError, Plan, Script, Settings, Step, StepKind, WrittenUrl,
};
use crate::order::{self, NamedStep};
use crate::{parse_duration, LineIndex, Location, PlanError, PlanErrors};

/// A byte range in the plan text.
pub(crate) type Span = Range<usize>;

const TOP_KEYS: &[&str] = &[
    "name",
    "database",
    "state",
    "defaults",
    "steps",
    "expect",
    "replicas",
    "max_replica_lag",
    "max_latency_increase",
    "probe_query",
];
/// Top-level keys that make no sense in `[defaults]` or a step.
const TOP_ONLY_KEYS: &[&str] = &[
    "database",
    "state",
    "defaults",
    "steps",
    "expect",
    "replicas",
    "max_replica_lag",
    "max_latency_increase",
    "probe_query",
];
const STATE_KEYS: &[&str] = &["database"];
const EXPECT_KEYS: &[&str] = &["max_duration"];
const SETTING_KEYS: &[&str] = &[
    "batch_size",
    "max_attempts",
    "lease",
    "batch_timeout",
    "on_row_error",
    "target_batch_time",
    "adaptive",
    "min_batch_size",
    "max_batch_size",
    "max_rows_per_second",
    "throttle_query",
    "row_timeout",
    "lua_memory",
    "max_batch_bytes",
];
const STEP_KEYS: &[&str] = &[
    "name",
    "after",
    "table",
    "key",
    "where",
    "sql",
    "lua",
    "lua_file",
    "command",
    "columns",
    "source",
    "query",
    "into",
    "target_key",
    "on_conflict",
    "convert",
];
/// Every key of every section, for suggestions across sections.
const ALL_KEYS: &[&str] = &[
    "name",
    "database",
    "state",
    "defaults",
    "steps",
    "expect",
    "replicas",
    "max_replica_lag",
    "max_latency_increase",
    "probe_query",
    "max_duration",
    "batch_size",
    "max_attempts",
    "lease",
    "batch_timeout",
    "on_row_error",
    "target_batch_time",
    "adaptive",
    "min_batch_size",
    "max_batch_size",
    "max_rows_per_second",
    "throttle_query",
    "row_timeout",
    "lua_memory",
    "max_batch_bytes",
    "after",
    "table",
    "key",
    "where",
    "sql",
    "lua",
    "lua_file",
    "command",
    "columns",
    "source",
    "query",
    "into",
    "target_key",
    "on_conflict",
    "convert",
];
const SCRIPT_KEYS: &[&str] = &["lua", "lua_file", "command"];
const DURATION_EXAMPLES: &str = "\"500ms\", \"30s\", \"10m\" or \"2h\"";

/// Keys of the plan format that this version reads and checks but does not act on yet. A key
/// that is accepted and then ignored is worse than an error: a user who writes
/// `max_rows_per_second = 500` believes the database is protected. Each leaves this list in the
/// version that makes it work.
const NOT_SUPPORTED_YET: &[&str] = &[
    "target_batch_time",
    "adaptive",
    "min_batch_size",
    "max_batch_size",
    "max_rows_per_second",
    "throttle_query",
    "replicas",
    "max_replica_lag",
    "max_latency_increase",
    "probe_query",
    "max_duration",
];

/// What becomes of the keys in [`NOT_SUPPORTED_YET`]: every command refuses them; the parser's
/// own tests read them into the model, so their reading stays tested for the version that acts
/// on them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NotYet {
    Refuse,
    #[cfg(test)]
    Accept,
}

/// The parts of a plan file whose keys are checked.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    Top,
    State,
    Defaults,
    Expect,
    Step,
}

impl Section {
    fn known(self) -> Vec<&'static str> {
        match self {
            Section::Top => TOP_KEYS.to_vec(),
            Section::State => STATE_KEYS.to_vec(),
            Section::Defaults => SETTING_KEYS.to_vec(),
            Section::Expect => EXPECT_KEYS.to_vec(),
            Section::Step => [STEP_KEYS, SETTING_KEYS].concat(),
        }
    }

    /// Where `key` belongs when it is a known key of another section.
    fn elsewhere(self, key: &str) -> Option<String> {
        let in_steps = STEP_KEYS.contains(&key);
        let in_settings = SETTING_KEYS.contains(&key);
        let top_only = TOP_ONLY_KEYS.contains(&key);
        let hint = match self {
            Section::Top if in_settings => "settings go in [defaults] or in a step".to_string(),
            Section::Top if in_steps => format!("`{key}` belongs in a [[steps]] table"),
            Section::Top if EXPECT_KEYS.contains(&key) => format!("`{key}` belongs in [expect]"),
            Section::Defaults if in_steps => {
                format!("`{key}` belongs in a [[steps]] table, not in [defaults]")
            }
            Section::Defaults if top_only => format!("`{key}` belongs at the top of the plan"),
            Section::Step if key == "database" => {
                "a step reads another database with `source`".to_string()
            }
            Section::Step if top_only => {
                format!("`{key}` belongs at the top of the plan, not in a step")
            }
            Section::State | Section::Expect if key == "name" || top_only => {
                format!("`{key}` belongs at the top of the plan")
            }
            _ => return None,
        };
        Some(hint)
    }
}

/// The known key closest to `unknown`, if any is close enough to be a likely typo.
pub(crate) fn closest<'k>(
    unknown: &str,
    known: impl IntoIterator<Item = &'k str>,
) -> Option<&'k str> {
    let normalize = |s: &str| s.to_lowercase().replace('-', "_");
    let unknown = normalize(unknown);
    known
        .into_iter()
        .map(|k| {
            let candidate = normalize(k);
            // Jaro-Winkler favours a shared beginning, which catches most typos in longer
            // keys; one edit (such as two letters swapped) catches them in short keys like `lua`.
            let score = if candidate == unknown {
                2.0
            } else if strsim::osa_distance(&unknown, &candidate) == 1 {
                1.0
            } else {
                strsim::jaro_winkler(&unknown, &candidate)
            };
            (score, k)
        })
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

fn type_name(value: &DeValue<'_>) -> &'static str {
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

/// Expands `${VAR}` in `text`; on failure, every problem as a message naming `key`.
pub(crate) fn expand_vars(
    key: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after_open = &rest[start + 2..];
        let Some(len) = after_open.find('}') else {
            problems.push(format!("`{key}` has `${{` without a closing `}}`"));
            rest = "";
            break;
        };
        let name = &after_open[..len];
        if name.is_empty() {
            problems.push(format!("`{key}` has an empty `${{}}`; write ${{VARIABLE}}"));
        } else {
            match env(name) {
                Some(value) => out.push_str(&value),
                None => problems.push(format!(
                    "`{key}` uses ${{{name}}}, but the environment variable {name} is not set"
                )),
            }
        }
        rest = &after_open[len + 1..];
    }
    out.push_str(rest);
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// Parses a factor such as `2x`, `1.5x` or `2`.
fn parse_factor(text: &str) -> Option<f64> {
    let number = text.trim().strip_suffix(['x', 'X']).unwrap_or(text.trim());
    number.trim().parse::<f64>().ok()
}

/// The longest time limit every database takes: PostgreSQL's `statement_timeout` and
/// `idle_in_transaction_session_timeout` are whole milliseconds in an `int`; MariaDB's
/// `max_statement_time` and `wait_timeout` go to a year, and MySQL's `max_execution_time` further.
pub(crate) const LONGEST_SESSION_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

/// Reading state: the text for locations, and the problems found so far.
struct Ctx<'a> {
    text: &'a str,
    lines: LineIndex<'a>,
    path: &'a Path,
    env: &'a dyn Fn(&str) -> Option<String>,
    errors: Vec<PlanError>,
    /// The step being read, named in front of its problems.
    step: Option<String>,
    /// The database URLs read so far, as written.
    urls: Vec<WrittenUrl>,
    not_yet: NotYet,
}

impl Ctx<'_> {
    fn loc(&self, span: &Span) -> Location {
        self.lines.location(span.start)
    }

    /// Records `message` at `span` as it is.
    fn push(&mut self, span: &Span, message: String) {
        self.errors.push(PlanError {
            file: self.path.to_path_buf(),
            location: Some(self.loc(span)),
            message,
        });
    }

    /// Records a problem at `span`, naming the step being read, if any.
    fn error(&mut self, span: &Span, message: impl Into<String>) {
        let message = message.into();
        let message = match &self.step {
            Some(step) => format!("step {step:?}: {message}"),
            None => message,
        };
        self.push(span, message);
    }

    /// Records a problem without a place in the file, such as a missing key.
    fn error_unlocated(&mut self, message: impl Into<String>) {
        self.errors.push(PlanError {
            file: self.path.to_path_buf(),
            location: None,
            message: message.into(),
        });
    }

    /// Rejects keys of `table` that `section` does not know, with a hint where one helps.
    fn unknown_keys(&mut self, table: &DeTable<'_>, section: Section, what: &str) {
        let known = section.known();
        for key in table.keys() {
            let name = key.get_ref().as_ref();
            if known.contains(&name) {
                continue;
            }
            let hint = section
                .elsewhere(name)
                .or_else(|| {
                    closest(name, known.iter().copied()).map(|k| format!("did you mean `{k}`?"))
                })
                .or_else(|| {
                    // A typo of a key that belongs elsewhere: say both.
                    let misplaced = closest(name, ALL_KEYS.iter().copied())?;
                    let there = section.elsewhere(misplaced)?;
                    Some(format!("did you mean `{misplaced}`? {there}"))
                })
                .map(|h| format!("; {h}"))
                .unwrap_or_default();
            self.push(&key.span(), format!("unknown key `{name}` in {what}{hint}"));
        }
    }

    /// Refuses the keys of `table` that this version would read and then ignore.
    fn not_supported_yet(&mut self, table: &DeTable<'_>, what: &str) {
        if self.not_yet != NotYet::Refuse {
            return;
        }
        for (key, span) in keys_in_file_order(table, NOT_SUPPORTED_YET) {
            self.push(
                &span,
                format!(
                    "`{key}` in {what} is not supported yet: this version would accept it and do nothing, so the plan is refused; remove the key to run without it"
                ),
            );
        }
    }

    fn string(&mut self, table: &DeTable<'_>, key: &str) -> Option<(String, Span)> {
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
    fn text(&mut self, table: &DeTable<'_>, key: &str) -> Option<(String, Span)> {
        let (text, span) = self.string(table, key)?;
        if text.trim().is_empty() {
            self.error(&span, format!("`{key}` must not be empty"));
            return None;
        }
        Some((text, span))
    }

    /// An array of strings, each with its span.
    fn strings(&mut self, table: &DeTable<'_>, key: &str) -> Option<Vec<(String, Span)>> {
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

    fn integer(&mut self, table: &DeTable<'_>, key: &str, min: i64) -> Option<(i64, Span)> {
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
    fn count(&mut self, table: &DeTable<'_>, key: &str) -> Option<(u64, Span)> {
        let (n, span) = self.integer(table, key, 1)?;
        u64::try_from(n).ok().map(|n| (n, span))
    }

    fn positive_number(&mut self, table: &DeTable<'_>, key: &str) -> Option<f64> {
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

    fn boolean(&mut self, table: &DeTable<'_>, key: &str) -> Option<bool> {
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

    /// A duration longer than zero, written as a string such as "30s".
    fn duration(&mut self, table: &DeTable<'_>, key: &str) -> Option<Duration> {
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

    /// A size in bytes, written as a string such as "64MiB" or "512KB", or a number of bytes.
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

    /// `convert = { column = "null" | "replace" }`: what to write instead of a value a column
    /// cannot hold without loss.
    fn convert(&mut self, t: &DeTable<'_>) -> BTreeMap<String, Convert> {
        let mut out = BTreeMap::new();
        let Some(table) = self.table(t, "convert") else {
            return out;
        };
        for (column, value) in table.iter() {
            let action = match value.get_ref() {
                DeValue::String(v) if v == "null" => Convert::Null,
                DeValue::String(v) if v == "replace" => Convert::Replace,
                _ => {
                    let message = format!(
                        "`convert.{}` must be \"null\" (write NULL instead of a value the column cannot hold) or \"replace\" (replace bytes that are not UTF-8 with U+FFFD)",
                        column.get_ref()
                    );
                    self.error(&value.span(), message);
                    continue;
                }
            };
            out.insert(column.get_ref().to_string(), action);
        }
        out
    }

    /// Expands `${VAR}` in a URL written at `span`, reporting problems at `at`.
    fn expand(&mut self, key: &str, text: &str, at: &Span) -> Option<String> {
        self.urls.push(WrittenUrl {
            key: key.to_string(),
            text: text.to_string(),
            span: at.clone(),
            location: self.loc(at),
        });
        match expand_vars(key, text, self.env) {
            Ok(url) if url.trim().is_empty() => {
                self.error(at, format!("`{key}` must not be empty"));
                None
            }
            Ok(url) => Some(url),
            Err(problems) => {
                for problem in problems {
                    self.error(at, problem);
                }
                None
            }
        }
    }

    /// A URL with `${VAR}` expanded; problems point at the key.
    fn url(&mut self, table: &DeTable<'_>, key: &str) -> Option<String> {
        let (text, value_at) = self.string(table, key)?;
        let at = key_span(table, key)?;
        let url = self.expand(key, &text, &at);
        // The value's own span, for finding it in the text again; problems point at the key.
        if let Some(written) = self.urls.last_mut() {
            written.span = value_at;
        }
        url
    }

    fn table<'t, 'i>(&mut self, parent: &'t DeTable<'i>, key: &str) -> Option<&'t DeTable<'i>> {
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

    /// `base` overridden by the settings written in `table`.
    fn settings(&mut self, table: &DeTable<'_>, base: &Settings) -> Settings {
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

    /// The step's transform: `Ok(None)` when it has none, `Err` when a problem was recorded.
    fn script(&mut self, t: &DeTable<'_>) -> Result<Option<Script>, ()> {
        let given = keys_in_file_order(t, SCRIPT_KEYS);
        if let [_, second, ..] = given.as_slice() {
            let names: Vec<String> = given.iter().map(|(k, _)| format!("`{k}`")).collect();
            let message = format!(
                "give one of `lua`, `lua_file` and `command`, not {}",
                names.join(" and ")
            );
            self.error(&second.1, message);
            return Err(());
        }
        let Some((which, key_at)) = given.first().cloned() else {
            return Ok(None);
        };
        match which {
            "lua" => match self.text(t, "lua") {
                Some((code, span)) => {
                    // Lua's messages then cite lines of the plan file: a multi-line string's
                    // text starts on the line after its opening quotes.
                    let raw = &self.text[span.start..];
                    let multi_line = ["'''\n", "\"\"\"\n", "'''\r\n", "\"\"\"\r\n"]
                        .iter()
                        .any(|open| raw.starts_with(open));
                    let first_line = self.loc(&span).line + usize::from(multi_line);
                    Ok(Some(Script::Lua {
                        code,
                        file: None,
                        first_line,
                    }))
                }
                None => Err(()),
            },
            "lua_file" => {
                let Some((file, _)) = self.text(t, "lua_file") else {
                    return Err(());
                };
                let dir = self.path.parent().unwrap_or(Path::new(""));
                let full = dir.join(&file);
                match std::fs::read_to_string(&full) {
                    Ok(code) => Ok(Some(Script::Lua {
                        code,
                        file: Some(full),
                        first_line: 1,
                    })),
                    Err(e) => {
                        let message = format!("cannot read lua_file {}: {e}", full.display());
                        self.error(&key_at, message);
                        Err(())
                    }
                }
            }
            _ => {
                let Some(command) = self.strings(t, "command") else {
                    return Err(());
                };
                let names_a_program = command
                    .first()
                    .is_some_and(|(program, _)| !program.trim().is_empty());
                if !names_a_program {
                    let span = t.get("command").map_or(key_at, |v| v.span());
                    self.error(
                        &span,
                        "`command` must name a program, such as [\"python3\", \"transform.py\"]",
                    );
                    return Err(());
                }
                Ok(Some(Script::Command(
                    command.into_iter().map(|(s, _)| s).collect(),
                )))
            }
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

/// The span of `key` itself (not its value) in `table`.
fn key_span(table: &DeTable<'_>, key: &str) -> Option<Span> {
    table.get_key_value(key).map(|(k, _)| k.span())
}

/// Those of `keys` present in `table`, in the order they were written.
fn keys_in_file_order(table: &DeTable<'_>, keys: &[&'static str]) -> Vec<(&'static str, Span)> {
    let mut found: Vec<(&'static str, Span)> = keys
        .iter()
        .filter_map(|k| key_span(table, k).map(|span| (*k, span)))
        .collect();
    found.sort_by_key(|(_, span)| span.start);
    found
}

pub(crate) fn parse(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Plan, PlanErrors> {
    parse_as(text, path, env, NotYet::Refuse)
}

fn parse_as(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    not_yet: NotYet,
) -> Result<Plan, PlanErrors> {
    // After a syntax error the parser's recovery guesses, and its further errors are mostly
    // echoes of the first, so only the first is reported.
    let root = match DeTable::parse(text) {
        Ok(root) => root.into_inner(),
        Err(e) => {
            let location = e.span().map(|s| Location::of_offset(text, s.start));
            return Err(PlanErrors(vec![PlanError {
                file: path.to_path_buf(),
                location,
                message: format!("invalid TOML: {}", e.message().trim_end()),
            }]));
        }
    };
    let mut cx = Ctx {
        text,
        lines: LineIndex::new(text),
        path,
        env,
        errors: Vec::new(),
        step: None,
        urls: Vec::new(),
        not_yet,
    };
    cx.unknown_keys(&root, Section::Top, "the plan");
    cx.not_supported_yet(&root, "the plan");

    let name = cx.text(&root, "name").map(|(n, _)| n);
    if !root.contains_key("name") {
        cx.error_unlocated("the plan needs a `name`; it identifies the run in the state database");
    }
    let database = cx.url(&root, "database");
    if !root.contains_key("database") {
        cx.error_unlocated("the plan needs a `database` URL");
    }
    let state_database = match cx.table(&root, "state") {
        Some(state) => {
            cx.unknown_keys(state, Section::State, "[state]");
            if !state.contains_key("database") {
                if let Some(at) = key_span(&root, "state") {
                    cx.error(&at, "[state] needs a `database` URL");
                }
            }
            cx.url(state, "database")
        }
        None => None,
    };
    let defaults = match cx.table(&root, "defaults") {
        Some(t) => {
            cx.unknown_keys(t, Section::Defaults, "[defaults]");
            cx.not_supported_yet(t, "[defaults]");
            cx.settings(t, &Settings::default())
        }
        None => Settings::default(),
    };
    let expect_max_duration = match cx.table(&root, "expect") {
        Some(t) => {
            cx.unknown_keys(t, Section::Expect, "[expect]");
            cx.not_supported_yet(t, "[expect]");
            cx.duration(t, "max_duration")
        }
        None => None,
    };
    let replicas = read_replicas(&mut cx, &root);
    let max_replica_lag = cx.duration(&root, "max_replica_lag");
    if let (Some(at), false) = (
        key_span(&root, "max_replica_lag"),
        root.contains_key("replicas"),
    ) {
        cx.error(&at, "`max_replica_lag` does nothing without `replicas`");
    }
    let max_latency_increase = read_factor(&mut cx, &root, "max_latency_increase");
    let probe_query = cx.text(&root, "probe_query").map(|(q, _)| q);
    if let (Some(at), false) = (
        key_span(&root, "probe_query"),
        root.contains_key("max_latency_increase"),
    ) {
        cx.error(
            &at,
            "`probe_query` does nothing without `max_latency_increase`",
        );
    }

    let mut steps = Vec::new();
    let mut named = Vec::new();
    match root.get_key_value("steps") {
        Some((key, value)) => match value.get_ref() {
            DeValue::Array(items) if !items.is_empty() => {
                for item in items.iter() {
                    match item.get_ref() {
                        DeValue::Table(t) => {
                            let (name, step) = read_step(&mut cx, t, item.span(), &defaults);
                            named.extend(name);
                            steps.extend(step);
                        }
                        other => cx.error(
                            &item.span(),
                            format!(
                                "each step must be a table ([[steps]]), not {}",
                                type_name(other)
                            ),
                        ),
                    }
                }
            }
            DeValue::Array(_) => cx.error(&key.span(), "the plan has no steps"),
            other => cx.error(
                &value.span(),
                format!(
                    "`steps` must be a list of [[steps]] tables, not {}",
                    type_name(other)
                ),
            ),
        },
        None => cx.error_unlocated("the plan has no steps; add a [[steps]] table"),
    }
    for (span, message) in order::check(&cx.lines, &named) {
        cx.push(&span, message);
    }

    if !cx.errors.is_empty() {
        let mut errors = cx.errors;
        errors.sort_by_key(|e| e.location);
        return Err(PlanErrors(errors));
    }
    let (Some(name), Some(database)) = (name, database) else {
        // Unreachable: a missing or invalid `name` or `database` was reported above.
        return Err(PlanErrors(vec![PlanError {
            file: path.to_path_buf(),
            location: None,
            message: "the plan needs a `name` and a `database`".to_string(),
        }]));
    };
    Ok(Plan {
        name,
        database,
        state_database,
        defaults,
        steps,
        expect_max_duration,
        replicas,
        max_replica_lag,
        max_latency_increase,
        probe_query,
        path: path.to_path_buf(),
        text: text.to_string(),
        written_urls: cx.urls,
    })
}

fn read_replicas(cx: &mut Ctx<'_>, root: &DeTable<'_>) -> Vec<String> {
    let Some(entries) = cx.strings(root, "replicas") else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|(text, span)| cx.expand("replicas", &text, &span))
        .collect()
}

/// A factor written as "2x" or as a number, greater than 1.
fn read_factor(cx: &mut Ctx<'_>, table: &DeTable<'_>, key: &str) -> Option<f64> {
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

/// Reads one `[[steps]]` table: its name and `after` for the order checks (whenever it has a
/// name), and the step itself when it has no problem.
fn read_step(
    cx: &mut Ctx<'_>,
    t: &DeTable<'_>,
    header: Span,
    defaults: &Settings,
) -> (Option<NamedStep>, Option<Step>) {
    let errors_before = cx.errors.len();
    let name = cx.text(t, "name");
    if !t.contains_key("name") {
        cx.error(&header, "this step has no `name`");
    }
    let what = match &name {
        Some((n, _)) => format!("step {n:?}"),
        None => "a step".to_string(),
    };
    cx.unknown_keys(t, Section::Step, &what);
    cx.not_supported_yet(t, &what);
    cx.step = name.as_ref().map(|(n, _)| n.clone());

    let after = cx.strings(t, "after");
    let named = name.as_ref().map(|(n, span)| NamedStep {
        name: n.clone(),
        name_span: span.clone(),
        after: after.clone().unwrap_or_default(),
        after_key_span: key_span(t, "after"),
    });
    let settings = cx.settings(t, defaults);
    let sql = cx.text(t, "sql");
    let table = cx.text(t, "table");
    let key = cx.text(t, "key");
    let filter = cx.text(t, "where");
    let into = cx.text(t, "into");
    let target_key = cx.text(t, "target_key");
    let query = cx.text(t, "query");
    let source = cx.url(t, "source");
    let columns = cx.strings(t, "columns");
    let convert = cx.convert(t);
    let on_conflict = match cx.string(t, "on_conflict") {
        Some((v, span)) => match v.as_str() {
            "update" => OnConflict::Update,
            "ignore" => OnConflict::Ignore,
            "error" => OnConflict::Error,
            _ => {
                cx.error(
                    &span,
                    format!("`on_conflict` must be \"update\", \"ignore\" or \"error\", not {v:?}"),
                );
                OnConflict::Error
            }
        },
        None => OnConflict::Error,
    };
    let script = cx.script(t);
    check_shape(cx, t, &header);
    cx.step = None;

    let key_locations: BTreeMap<String, Location> = t
        .keys()
        .map(|k| (k.get_ref().to_string(), cx.loc(&k.span())))
        .collect();
    if cx.errors.len() > errors_before {
        return (named, None);
    }
    let value = |field: Option<(String, Span)>| field.map(|(v, _)| v);
    let plain = |list: Option<Vec<(String, Span)>>| {
        list.map(|items| items.into_iter().map(|(v, _)| v).collect::<Vec<_>>())
    };
    let (Some(name), Ok(script)) = (value(name), script) else {
        return (named, None);
    };
    let kind = match (value(into), value(table), value(key), value(sql), script) {
        (Some(into), Some(table), Some(key), None, script) => StepKind::Copy {
            source,
            table,
            key,
            columns: plain(columns),
            query: value(query),
            filter: value(filter),
            into,
            target_key: value(target_key),
            on_conflict,
            script,
        },
        (None, Some(table), Some(key), Some(sql), None) => StepKind::Chunked {
            table,
            key,
            filter: value(filter),
            sql,
        },
        (None, Some(table), Some(key), None, Some(script)) => StepKind::Transform {
            table,
            key,
            columns: plain(columns).unwrap_or_default(),
            filter: value(filter),
            script,
        },
        (None, None, None, Some(sql), None) => StepKind::Once { sql },
        // Every other shape was reported by `check_shape`.
        _ => return (named, None),
    };
    let step = Step {
        name,
        after: plain(after).unwrap_or_default(),
        settings,
        kind,
        location: cx.loc(&header),
        key_locations,
        convert,
    };
    (named, Some(step))
}

/// Reports keys that do not fit together. Only the presence of keys counts here, so a value of
/// the wrong type is reported once, as such, and not again as a missing key.
fn check_shape(cx: &mut Ctx<'_>, t: &DeTable<'_>, header: &Span) {
    let has = |key: &str| t.contains_key(key);
    let at = |key: &str| key_span(t, key).unwrap_or_else(|| header.clone());
    let script_key = keys_in_file_order(t, SCRIPT_KEYS).first().map(|(k, _)| *k);
    const NEED_KEY: &str =
        "chunked steps need `key`: the unique, indexed column that batches are cut along";

    if has("into") {
        if !has("table") {
            cx.error(
                &at("into"),
                "a copy (`into`) needs `table` and `key` to read from",
            );
        } else if !has("key") {
            cx.error(&at("table"), NEED_KEY);
        }
        if has("sql") {
            cx.error(
                &at("sql"),
                "a copy (`into`) runs no `sql`; reshape rows with `lua`, `lua_file` or `command`",
            );
        }
        if has("query") && has("columns") {
            cx.error(&at("query"), "`query` replaces `columns`; give one of them");
        }
        return;
    }
    for key in ["source", "query", "on_conflict", "target_key"] {
        if has(key) {
            cx.error(
                &at(key),
                format!("`{key}` only applies to copies (steps with `into`)"),
            );
        }
    }
    if has("sql") {
        if let Some(script_key) = script_key {
            cx.error(
                &at(script_key),
                format!("`{script_key}` and `sql` exclude each other: a step runs `sql` or transforms rows, not both"),
            );
        } else if has("columns") {
            cx.error(
                &at("columns"),
                "`columns` applies to transforms and copies, not to `sql` steps",
            );
        } else if has("convert") {
            cx.error(
                &at("convert"),
                "`convert` applies to transforms and copies, not to `sql` steps",
            );
        }
    }
    if has("table") {
        if !has("key") {
            cx.error(&at("table"), NEED_KEY);
        }
        if !has("sql") && script_key.is_none() {
            cx.error(
                &at("table"),
                "a chunked step needs `sql`, a transform (`lua`, `lua_file` or `command`) or `into` (a copy)",
            );
        }
        return;
    }
    if has("key") {
        cx.error(&at("key"), "`key` needs `table`");
    }
    if has("where") {
        cx.error(&at("where"), "`where` needs `table` and `key`");
    }
    if has("columns") && !has("sql") {
        cx.error(&at("columns"), "`columns` needs `table` and `key`");
    }
    if let Some(script_key) = script_key {
        if !has("sql") {
            cx.error(
                &at(script_key),
                format!("a transform (`{script_key}`) needs `table` and `key`"),
            );
        }
    }
    let does_nothing = !has("sql") && script_key.is_none();
    let nothing_else_reported = !has("key") && !has("where") && !has("columns");
    if does_nothing && nothing_else_reported {
        cx.error(
            header,
            "a step needs `sql` (run once), `table` + `key` + `sql` (run per batch), a transform (`lua`, `lua_file` or `command`) or `into` (a copy)",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "DB" => Some("postgres://u:pw@h/d".to_string()),
            "HOST" => Some("db.internal".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    const HEAD: &str = "name = \"x\"\ndatabase = \"sqlite://a\"\n";

    /// The parser with the keys of [`NOT_SUPPORTED_YET`] read into the model, so these tests
    /// keep testing how they are read; `refuses_keys_not_supported_yet` tests what every
    /// command does with them.
    fn parse(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Plan, PlanErrors> {
        parse_as(text, path, env, NotYet::Accept)
    }

    /// Issue 12: a key that would be read and then ignored is refused, wherever it is written,
    /// naming it at its line and column.
    #[test]
    fn refuses_keys_not_supported_yet() {
        let text = format!(
            "{HEAD}replicas = [\"postgres://r/d\"]\nmax_replica_lag = \"10s\"\n\
             max_latency_increase = \"2x\"\nprobe_query = \"SELECT 1\"\n\
             [expect]\nmax_duration = \"2h\"\n\
             [defaults]\ntarget_batch_time = \"500ms\"\nadaptive = false\nmin_batch_size = 10\n\
             [[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\nmax_batch_size = 100\n\
             max_rows_per_second = 50\nthrottle_query = \"SELECT false\"\n"
        );
        let errors = super::parse(&text, Path::new("p.toml"), &env)
            .expect_err("keys not acted on are refused")
            .to_string();
        let refused: Vec<&str> = errors
            .lines()
            .map(|line| line.split(" is not supported yet").next().unwrap_or(line))
            .collect();
        assert_eq!(
            refused,
            [
                "p.toml:3:1: `replicas` in the plan",
                "p.toml:4:1: `max_replica_lag` in the plan",
                "p.toml:5:1: `max_latency_increase` in the plan",
                "p.toml:6:1: `probe_query` in the plan",
                "p.toml:8:1: `max_duration` in [expect]",
                "p.toml:10:1: `target_batch_time` in [defaults]",
                "p.toml:11:1: `adaptive` in [defaults]",
                "p.toml:12:1: `min_batch_size` in [defaults]",
                "p.toml:16:1: `max_batch_size` in step \"a\"",
                "p.toml:17:1: `max_rows_per_second` in step \"a\"",
                "p.toml:18:1: `throttle_query` in step \"a\"",
            ],
            "{errors}"
        );
        // Every key of the list is covered above, so none is forgotten when one starts to work.
        for key in NOT_SUPPORTED_YET {
            assert!(errors.contains(&format!("`{key}`")), "{key} not refused");
        }
    }

    fn parse_ok(text: &str) -> Plan {
        parse(text, Path::new("p.toml"), &env).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Parses `text` and compares its errors, one per line, with `expected`.
    fn check(text: &str, expected: &str) {
        let got = match parse(text, Path::new("p.toml"), &env) {
            Ok(plan) => format!("ok: {plan:?}"),
            Err(errors) => errors.to_string(),
        };
        assert_eq!(got, expected.trim_end(), "\n--- input ---\n{text}");
    }

    /// Like `check`, after the two lines of `HEAD`.
    fn check_steps(steps: &str, expected: &str) {
        check(&format!("{HEAD}{steps}"), expected);
    }

    /// Where the Lua code of the contract plan's steps starts.
    const LUA_LINE: usize = 40;

    /// Issue 11: `check` took 45 s on 20,000 steps, as locating each key walked the text from
    /// its start. The locations of the last step must still be right.
    #[test]
    fn r11_parses_a_plan_of_20000_steps() {
        let mut text = HEAD.to_string();
        for i in 0..20_000 {
            text.push_str(&format!("[[steps]]\nname = \"s{i}\"\nsql = \"SELECT 1\"\n"));
            if i > 0 {
                text.push_str(&format!("after = [\"s{}\"]\n", i - 1));
            }
        }
        let plan = parse_ok(&text);
        assert_eq!(plan.steps.len(), 20_000);
        let last = &plan.steps[19_999];
        assert_eq!(last.after, ["s19998"]);
        assert_eq!(
            last.location,
            Location::of_offset(&text, text.rfind("[[steps]]").unwrap())
        );
        assert_eq!(last.location.line, 4 * 19_999 + 2);
        assert_eq!(last.key_locations["after"].line, last.location.line + 3);
        // A duplicate far down names the line of the first.
        text.push_str("[[steps]]\nname = \"s1\"\nsql = \"SELECT 1\"\n");
        let errors = parse(&text, Path::new("p.toml"), &env)
            .unwrap_err()
            .to_string();
        assert!(errors.contains("already exists at line 7;"), "{errors}");
    }

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
    fn r11_keeps_each_url_as_written() {
        let plan = parse_ok(
            "name = \"x\"\ndatabase = \"postgres://u:${DB}@h/d\"\n\
             [state]\ndatabase = \"postgres://u:p\\u0040w@h/d\"\n\
             [[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n",
        );
        let urls: Vec<(&str, &str, String, usize)> = plan
            .written_urls
            .iter()
            .map(|u| {
                (
                    u.key.as_str(),
                    u.text.as_str(),
                    u.literal(),
                    u.location.line,
                )
            })
            .collect();
        assert_eq!(
            urls,
            [
                (
                    "database",
                    "postgres://u:${DB}@h/d",
                    "postgres://u:@h/d".to_string(),
                    2
                ),
                (
                    "database",
                    "postgres://u:p@w@h/d",
                    "postgres://u:p@w@h/d".to_string(),
                    4
                ),
            ]
        );
        assert_eq!(
            &plan.text[plan.written_urls[1].span.clone()],
            "\"postgres://u:p\\u0040w@h/d\""
        );
    }
    const COPY_LUA_LINE: usize = 60;

    const CONTRACT_PLAN: &str = r#"name = "vn-phones"                     # required; identifies the run in the state database
database = "${DB}"                     # required; postgres://…, mysql://…, sqlite://path

[state]                                # optional; default: the plan's own database
database = "postgres://state:${DB_PW}@${HOST}/godwit"

[defaults]                             # optional; every step may override
batch_size = 1000
max_attempts = 5                       # per batch, for transient errors
lease = "30s"                          # a worker silent this long loses its batches to others

[expect]
max_duration = "2h"

[[steps]]
name = "create-index"                  # required, unique in the plan
sql = "CREATE INDEX IF NOT EXISTS customers_phone ON customers (phone)"

[[steps]]
name = "customers"
after = ["create-index"]
table = "customers"
key = "id"
where = "length(phone) = 11"
batch_size = 2000
target_batch_time = "500ms"
sql = """
UPDATE customers SET phone = '0' || substr(phone, 3)
WHERE id BETWEEN :start AND :end AND length(phone) = 11
"""

[[steps]]
name = "phones-lua"
table = "customers"
key = "id"
columns = ["phone"]
where = "length(phone) = 11"
on_row_error = "skip"
lua = '''
function transform(row)
  return { phone = "0" .. row.phone:sub(3) }
end
'''

[[steps]]
name = "phones-py"
after = ["phones-lua"]
table = "customers"
key = "id"
command = ["python3", "transforms/phones.py"]

[[steps]]
name = "orders"
source = "mysql://root:hunter2@127.0.0.1/shop"
table = "orders"
key = "id"
columns = ["id", "customer_id", "status", "total", "created_at"]
into = "orders_history"
on_conflict = "update"
lua = '''function transform(row) return row end'''
"#;

    fn contract_env(name: &str) -> Option<String> {
        match name {
            "DB_PW" => Some("s3cret".to_string()),
            other => env(other),
        }
    }

    #[test]
    fn parses_the_contract_plan_into_the_model() {
        let plan = parse(CONTRACT_PLAN, Path::new("p.toml"), &contract_env)
            .unwrap_or_else(|e| panic!("{e}"));
        let defaults = Settings {
            batch_size: 1000,
            max_attempts: 5,
            lease: Duration::from_secs(30),
            ..Settings::default()
        };
        assert_eq!(plan.name, "vn-phones");
        assert_eq!(plan.database, "postgres://u:pw@h/d");
        assert_eq!(
            plan.state_database.as_deref(),
            Some("postgres://state:s3cret@db.internal/godwit")
        );
        assert_eq!(plan.defaults, defaults);
        assert_eq!(plan.expect_max_duration, Some(Duration::from_secs(7200)));
        assert_eq!(plan.replicas, Vec::<String>::new());
        assert_eq!(plan.text, CONTRACT_PLAN);
        assert_eq!(plan.path, Path::new("p.toml"));

        let kinds: Vec<&StepKind> = plan.steps.iter().map(|s| &s.kind).collect();
        assert_eq!(
            kinds,
            [
                &StepKind::Once {
                    sql: "CREATE INDEX IF NOT EXISTS customers_phone ON customers (phone)".into()
                },
                &StepKind::Chunked {
                    table: "customers".into(),
                    key: "id".into(),
                    filter: Some("length(phone) = 11".into()),
                    sql: "UPDATE customers SET phone = '0' || substr(phone, 3)\nWHERE id BETWEEN :start AND :end AND length(phone) = 11\n".into(),
                },
                &StepKind::Transform {
                    table: "customers".into(),
                    key: "id".into(),
                    columns: vec!["phone".into()],
                    filter: Some("length(phone) = 11".into()),
                    script: Script::Lua {
                        code: "function transform(row)\n  return { phone = \"0\" .. row.phone:sub(3) }\nend\n".into(),
                        file: None,
                        first_line: LUA_LINE,
                    },
                },
                &StepKind::Transform {
                    table: "customers".into(),
                    key: "id".into(),
                    columns: Vec::new(),
                    filter: None,
                    script: Script::Command(vec!["python3".into(), "transforms/phones.py".into()]),
                },
                &StepKind::Copy {
                    source: Some("mysql://root:hunter2@127.0.0.1/shop".into()),
                    table: "orders".into(),
                    key: "id".into(),
                    columns: Some(
                        ["id", "customer_id", "status", "total", "created_at"]
                            .map(String::from)
                            .to_vec()
                    ),
                    query: None,
                    filter: None,
                    into: "orders_history".into(),
                    target_key: None,
                    on_conflict: OnConflict::Update,
                    script: Some(Script::Lua {
                        code: "function transform(row) return row end".into(),
                        file: None,
                        first_line: COPY_LUA_LINE,
                    }),
                },
            ]
        );
        let names: Vec<&str> = plan.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "create-index",
                "customers",
                "phones-lua",
                "phones-py",
                "orders"
            ]
        );
        assert_eq!(plan.steps[1].after, ["create-index"]);
        assert_eq!(plan.steps[0].settings, defaults);
        assert_eq!(
            plan.steps[1].settings,
            Settings {
                batch_size: 2000,
                target_batch_time: Some(Duration::from_millis(500)),
                ..defaults.clone()
            }
        );
        assert_eq!(
            plan.steps[2].settings,
            Settings {
                on_row_error: OnRowError::Skip,
                ..defaults
            }
        );
        assert_eq!(
            plan.steps[1].location,
            Location {
                line: 19,
                column: 1
            }
        );
        assert_eq!(
            plan.steps[1].key_locations["sql"],
            Location {
                line: 27,
                column: 1
            }
        );
        assert_eq!(plan.steps[1].key_locations.len(), 8);
    }

    #[test]
    fn parses_the_bundled_example_plan() {
        let text = include_str!("../../../examples/vn-phones.toml");
        let plan = parse(text, Path::new("examples/vn-phones.toml"), &|name| {
            (name == "DEMO_DATABASE_URL").then(|| "sqlite://demo.db".to_string())
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plan.name, "vn-phones");
        assert_eq!(plan.steps[0].settings.batch_size, 5000);
        assert!(matches!(plan.steps[0].kind, StepKind::Chunked { .. }));
    }

    #[test]
    fn debug_of_a_plan_hides_every_password() {
        let plan = parse(
            &format!("{CONTRACT_PLAN}\n"),
            Path::new("p.toml"),
            &contract_env,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let debug = format!("{plan:?}");
        for secret in ["pw@", "s3cret", "hunter2"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert!(debug.contains("mysql://root:***@127.0.0.1/shop"), "{debug}");
        assert!(debug.contains("postgres://u:***@h/d"), "{debug}");
    }

    #[test]
    fn steps_override_defaults_key_by_key() {
        let plan = parse_ok(&format!(
            "{HEAD}[defaults]\nbatch_size = 10\nlease = \"1m\"\nbatch_timeout = \"1h30m\"\nadaptive = false\nmax_rows_per_second = 500\nthrottle_query = \"SELECT busy()\"\nmin_batch_size = 5\n\
             [[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n\
             [[steps]]\nname = \"b\"\nsql = \"SELECT 2\"\nlease = \"5s\"\nmax_batch_size = 50\nmax_attempts = 9\nmax_rows_per_second = 2.5\n"
        ));
        let defaults = Settings {
            batch_size: 10,
            lease: Duration::from_secs(60),
            batch_timeout: Duration::from_secs(5400),
            adaptive: false,
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
        };
        assert_eq!(plan.defaults, expected);
        assert_eq!(plan.steps[0].settings, expected);
        assert_eq!(plan.state_database, None);
        assert_eq!(plan.expect_max_duration, None);
    }

    #[test]
    fn reports_toml_syntax_errors_with_line_and_column() {
        check(
            "name = \"x\"\ndatabase = \n",
            "p.toml:2:12: invalid TOML: string values must be quoted, expected literal string",
        );
        check(
            "name = \"x\"\nname = \"y\"\n",
            "p.toml:2:1: invalid TOML: duplicate key",
        );
        check(
            "name = \"é\"\nsteps = [1,\n",
            "p.toml:2:12: invalid TOML: unclosed array, expected `]`",
        );
    }

    #[test]
    fn requires_name_database_and_steps() {
        check(
            "",
            "p.toml: the plan needs a `name`; it identifies the run in the state database\n\
             p.toml: the plan needs a `database` URL\n\
             p.toml: the plan has no steps; add a [[steps]] table",
        );
        check(
            "name = \" \"\ndatabase = \"sqlite://a\"\nsteps = []\n",
            "p.toml:1:8: `name` must not be empty\n\
             p.toml:3:1: the plan has no steps",
        );
    }

    #[test]
    fn rejects_unknown_keys_everywhere_with_suggestions() {
        check(
            "name = \"x\"\ndatabse = \"sqlite://a\"\n\
             [state]\ndatabase = \"sqlite://s\"\nurl = \"x\"\n\
             [defaults]\nbatchsize = 3\n\
             [expect]\nmax_duraton = \"1h\"\n\
             [[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\ntabel = \"t\"\nBATCH-SIZE = 4\nfrobnicate = 1\n\
             [[steps]]\nsql = \"SELECT 2\"\nlau = \"x\"\n",
            "p.toml: the plan needs a `database` URL\n\
             p.toml:2:1: unknown key `databse` in the plan; did you mean `database`?\n\
             p.toml:5:1: unknown key `url` in [state]\n\
             p.toml:7:1: unknown key `batchsize` in [defaults]; did you mean `batch_size`?\n\
             p.toml:9:1: unknown key `max_duraton` in [expect]; did you mean `max_duration`?\n\
             p.toml:13:1: unknown key `tabel` in step \"a\"; did you mean `table`?\n\
             p.toml:14:1: unknown key `BATCH-SIZE` in step \"a\"; did you mean `batch_size`?\n\
             p.toml:15:1: unknown key `frobnicate` in step \"a\"\n\
             p.toml:16:1: this step has no `name`\n\
             p.toml:18:1: unknown key `lau` in a step; did you mean `lua`?",
        );
    }

    #[test]
    fn says_where_a_misplaced_key_belongs() {
        check(
            "name = \"x\"\ndatabase = \"sqlite://a\"\nbatch_size = 5\nsql = \"SELECT 1\"\nmax_duration = \"1h\"\n\
             [defaults]\ntable = \"t\"\nreplicas = []\ntabel = \"t\"\n\
             [[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\ndatabase = \"sqlite://b\"\nmax_replica_lag = \"1s\"\n",
            "p.toml:3:1: unknown key `batch_size` in the plan; settings go in [defaults] or in a step\n\
             p.toml:4:1: unknown key `sql` in the plan; `sql` belongs in a [[steps]] table\n\
             p.toml:5:1: unknown key `max_duration` in the plan; `max_duration` belongs in [expect]\n\
             p.toml:7:1: unknown key `table` in [defaults]; `table` belongs in a [[steps]] table, not in [defaults]\n\
             p.toml:8:1: unknown key `replicas` in [defaults]; `replicas` belongs at the top of the plan\n\
             p.toml:9:1: unknown key `tabel` in [defaults]; did you mean `table`? `table` belongs in a [[steps]] table, not in [defaults]\n\
             p.toml:13:1: unknown key `database` in step \"a\"; a step reads another database with `source`\n\
             p.toml:14:1: unknown key `max_replica_lag` in step \"a\"; `max_replica_lag` belongs at the top of the plan, not in a step",
        );
    }

    #[test]
    fn expands_variables_in_urls_only() {
        let plan = parse_ok(
            "name = \"x\"\ndatabase = \"${DB}\"\nreplicas = [\"postgres://r@${HOST}/d\", \"postgres://$HOST/d\"]\nmax_replica_lag = \"10s\"\n\
             [state]\ndatabase = \"sqlite://${HOST}.db\"\n\
             [[steps]]\nname = \"a\"\nsql = \"SELECT '${DB}'\"\n\
             [[steps]]\nname = \"c\"\nsource = \"mysql://${HOST}/shop\"\ntable = \"t\"\nkey = \"id\"\ninto = \"u\"\n",
        );
        assert_eq!(plan.database, "postgres://u:pw@h/d");
        assert_eq!(
            plan.state_database.as_deref(),
            Some("sqlite://db.internal.db")
        );
        assert_eq!(
            plan.replicas,
            ["postgres://r@db.internal/d", "postgres://$HOST/d"]
        );
        assert_eq!(plan.max_replica_lag, Some(Duration::from_secs(10)));
        assert_eq!(
            plan.steps[0].kind,
            StepKind::Once {
                sql: "SELECT '${DB}'".into()
            }
        );
        assert!(
            matches!(&plan.steps[1].kind, StepKind::Copy { source: Some(s), .. } if s == "mysql://db.internal/shop")
        );
    }

    #[test]
    fn names_unset_variables_at_the_key() {
        check(
            "name = \"x\"\ndatabase = \"${NOPE}\"\nreplicas = [\"a\", \"pg://${R1}@${R2}/x\"]\n\
             [state]\n  database = \"${EMPTY}\"\n\
             [[steps]]\nname = \"c\"\nsource = \"mysql://${HOST}/${SHOP\"\ntable = \"t\"\nkey = \"id\"\ninto = \"u\"\n\
             [[steps]]\nname = \"d\"\nsource = \"mysql://${}/shop\"\ntable = \"t\"\nkey = \"id\"\ninto = \"u\"\n",
            "p.toml:2:1: `database` uses ${NOPE}, but the environment variable NOPE is not set\n\
             p.toml:3:18: `replicas` uses ${R1}, but the environment variable R1 is not set\n\
             p.toml:3:18: `replicas` uses ${R2}, but the environment variable R2 is not set\n\
             p.toml:5:3: `database` must not be empty\n\
             p.toml:8:1: step \"c\": `source` has `${` without a closing `}`\n\
             p.toml:14:1: step \"d\": `source` has an empty `${}`; write ${VARIABLE}",
        );
    }

    #[test]
    fn checks_that_after_names_steps() {
        check_steps(
            "[[steps]]\nname = \"load\"\nsql = \"SELECT 1\"\n\
             [[steps]]\nname = \"index\"\nafter = [\"lod\", \"index-x\", \"zzz\"]\nsql = \"SELECT 1\"\n",
            "p.toml:8:10: step \"index\" comes after \"lod\", which is not a step of this plan; did you mean \"load\"?\n\
             p.toml:8:17: step \"index\" comes after \"index-x\", which is not a step of this plan\n\
             p.toml:8:28: step \"index\" comes after \"zzz\", which is not a step of this plan",
        );
    }

    #[test]
    fn detects_cycles_through_after() {
        check_steps(
            "[[steps]]\nname = \"a\"\nafter = [\"b\"]\nsql = \"SELECT 1\"\n\
             [[steps]]\nname = \"b\"\nafter = [\"a\"]\nsql = \"SELECT 1\"\n",
            "p.toml:5:1: steps form a cycle through `after`: a -> b -> a",
        );
        check_steps(
            "[[steps]]\nname = \"a\"\nafter = [\"a\"]\nsql = \"SELECT 1\"\n",
            "p.toml:5:1: steps form a cycle through `after`: a -> a",
        );
        check_steps(
            "[[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n\
             [[steps]]\nname = \"b\"\nafter = [\"a\", \"d\"]\nsql = \"SELECT 1\"\n\
             [[steps]]\nname = \"c\"\nafter = [\"b\"]\nsql = \"SELECT 1\"\n\
             [[steps]]\nname = \"d\"\nafter = [\"c\"]\nsql = \"SELECT 1\"\n",
            "p.toml:8:1: steps form a cycle through `after`: b -> d -> c -> b",
        );
    }

    #[test]
    fn rejects_duplicate_step_names_at_the_second() {
        check_steps(
            "[[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n\
             [[steps]]\nname = \"a\"\nsql = \"SELECT 2\"\n",
            "p.toml:7:8: a step named \"a\" already exists at line 4; step names must be unique",
        );
    }

    #[test]
    fn recognizes_step_shapes() {
        let plan = parse_ok(&format!(
            "{HEAD}[[steps]]\nname = \"once\"\nsql = \"VACUUM\"\n\
             [[steps]]\nname = \"chunked\"\ntable = \"t\"\nkey = \"id\"\nsql = \"UPDATE t SET a = 1 WHERE id BETWEEN :start AND :end\"\n\
             [[steps]]\nname = \"copy\"\ntable = \"t\"\nkey = \"id\"\nquery = \"SELECT id FROM t WHERE id BETWEEN :start AND :end\"\nwhere = \"a > 1\"\ninto = \"u\"\non_conflict = \"ignore\"\ncommand = [\"./reshape\"]\n"
        ));
        assert_eq!(
            plan.steps[1].kind,
            StepKind::Chunked {
                table: "t".into(),
                key: "id".into(),
                filter: None,
                sql: "UPDATE t SET a = 1 WHERE id BETWEEN :start AND :end".into(),
            }
        );
        assert_eq!(
            plan.steps[2].kind,
            StepKind::Copy {
                source: None,
                table: "t".into(),
                key: "id".into(),
                columns: None,
                query: Some("SELECT id FROM t WHERE id BETWEEN :start AND :end".into()),
                filter: Some("a > 1".into()),
                into: "u".into(),
                target_key: None,
                on_conflict: OnConflict::Ignore,
                script: Some(Script::Command(vec!["./reshape".into()])),
            }
        );
        let copy = parse_ok(&format!(
            "{HEAD}[[steps]]\nname = \"c\"\ntable = \"t\"\nkey = \"id\"\ninto = \"u\"\n"
        ));
        assert!(matches!(
            copy.steps[0].kind,
            StepKind::Copy {
                on_conflict: OnConflict::Error,
                script: None,
                ..
            }
        ));
    }

    #[test]
    fn rejects_steps_of_no_shape() {
        check_steps(
            "[[steps]]\nname = \"a\"\ntable = \"t\"\nsql = \"SELECT 1\"\n\
             [[steps]]\nname = \"b\"\nkey = \"id\"\nwhere = \"x > 1\"\nsql = \"SELECT 1\"\n\
             [[steps]]\nname = \"c\"\nsql = \"SELECT 1\"\nlua = \"function transform(r) end\"\ntable = \"t\"\nkey = \"id\"\n\
             [[steps]]\nname = \"d\"\n\
             [[steps]]\nname = \"e\"\ntable = \"t\"\nkey = \"id\"\n\
             [[steps]]\nname = \"f\"\nlua = \"x\"\n",
            "p.toml:5:1: step \"a\": chunked steps need `key`: the unique, indexed column that batches are cut along\n\
             p.toml:9:1: step \"b\": `key` needs `table`\n\
             p.toml:10:1: step \"b\": `where` needs `table` and `key`\n\
             p.toml:15:1: step \"c\": `lua` and `sql` exclude each other: a step runs `sql` or transforms rows, not both\n\
             p.toml:18:1: step \"d\": a step needs `sql` (run once), `table` + `key` + `sql` (run per batch), a transform (`lua`, `lua_file` or `command`) or `into` (a copy)\n\
             p.toml:22:1: step \"e\": a chunked step needs `sql`, a transform (`lua`, `lua_file` or `command`) or `into` (a copy)\n\
             p.toml:26:1: step \"f\": a transform (`lua`) needs `table` and `key`",
        );
    }

    #[test]
    fn rejects_keys_that_do_not_fit_the_step() {
        check_steps(
            "[[steps]]\nname = \"a\"\ntable = \"t\"\nkey = \"id\"\nsql = \"SELECT 1\"\ncolumns = [\"a\"]\nsource = \"sqlite://b\"\non_conflict = \"update\"\n\
             [[steps]]\nname = \"b\"\ninto = \"u\"\nquery = \"SELECT 1\"\ncolumns = [\"a\"]\n\
             [[steps]]\nname = \"c\"\ntable = \"t\"\nkey = \"id\"\ninto = \"u\"\nsql = \"SELECT 1\"\n\
             [[steps]]\nname = \"d\"\ntable = \"t\"\ninto = \"u\"\n\
             [[steps]]\nname = \"e\"\ntable = \"t\"\nkey = \"id\"\nlua = \"x\"\ncommand = [\"y\"]\nlua_file = \"z.lua\"\n\
             [[steps]]\nname = \"f\"\ntable = \"t\"\nkey = \"id\"\ncommand = []\n\
             [[steps]]\nname = \"g\"\ntable = \"t\"\nkey = \"id\"\ncommand = \"python3 x.py\"\n",
            "p.toml:8:1: step \"a\": `columns` applies to transforms and copies, not to `sql` steps\n\
             p.toml:9:1: step \"a\": `source` only applies to copies (steps with `into`)\n\
             p.toml:10:1: step \"a\": `on_conflict` only applies to copies (steps with `into`)\n\
             p.toml:13:1: step \"b\": a copy (`into`) needs `table` and `key` to read from\n\
             p.toml:14:1: step \"b\": `query` replaces `columns`; give one of them\n\
             p.toml:21:1: step \"c\": a copy (`into`) runs no `sql`; reshape rows with `lua`, `lua_file` or `command`\n\
             p.toml:24:1: step \"d\": chunked steps need `key`: the unique, indexed column that batches are cut along\n\
             p.toml:31:1: step \"e\": give one of `lua`, `lua_file` and `command`, not `lua` and `command` and `lua_file`\n\
             p.toml:37:11: step \"f\": `command` must name a program, such as [\"python3\", \"transform.py\"]\n\
             p.toml:42:11: step \"g\": `command` must be an array of strings, such as [\"a\", \"b\"], not a string",
        );
    }

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
    fn reads_lua_files_next_to_the_plan() {
        let dir = std::env::temp_dir().join(format!("godwit-plan-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("transforms")).expect("temp dir");
        let script = "function transform(row) return nil end\n";
        std::fs::write(dir.join("transforms/phones.lua"), script).expect("write lua");
        let plan_path = dir.join("plan.toml");
        let text = format!(
            "{HEAD}[[steps]]\nname = \"a\"\ntable = \"t\"\nkey = \"id\"\nlua_file = \"transforms/phones.lua\"\n\
             [[steps]]\nname = \"b\"\ntable = \"t\"\nkey = \"id\"\n  lua_file = \"transforms/missing.lua\"\n"
        );
        let errors = parse(&text, &plan_path, &env).expect_err("missing file");
        let missing = dir.join("transforms/missing.lua");
        assert_eq!(
            errors.to_string(),
            format!(
                "{}:12:3: step \"b\": cannot read lua_file {}: No such file or directory (os error 2)",
                plan_path.display(),
                missing.display()
            )
        );
        let one = text
            .split("[[steps]]\nname = \"b\"")
            .next()
            .unwrap_or_default();
        let plan = parse(one, &plan_path, &env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            plan.steps[0].kind,
            StepKind::Transform {
                table: "t".into(),
                key: "id".into(),
                columns: Vec::new(),
                filter: None,
                script: Script::Lua {
                    code: script.into(),
                    file: Some(dir.join("transforms/phones.lua")),
                    first_line: 1,
                },
            }
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn reads_replica_and_latency_guards() {
        let plan = parse_ok(&format!(
            "{HEAD}replicas = [\"postgres://r1/d\"]\nmax_replica_lag = \"10s\"\nmax_latency_increase = \"2x\"\nprobe_query = \"SELECT 1\"\n\
             [[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n"
        ));
        assert_eq!(plan.replicas, ["postgres://r1/d"]);
        assert_eq!(plan.max_replica_lag, Some(Duration::from_secs(10)));
        assert_eq!(plan.max_latency_increase, Some(2.0));
        assert_eq!(plan.probe_query.as_deref(), Some("SELECT 1"));
        assert_eq!(
            parse_ok(&format!(
                "{HEAD}max_latency_increase = 1.5\n[[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n"
            ))
            .max_latency_increase,
            Some(1.5)
        );
        check_steps(
            "max_replica_lag = \"10s\"\nmax_latency_increase = \"half\"\nprobe_query = \"SELECT 1\"\nreplicas = \"postgres://r\"\n\
             [[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n",
            "p.toml:4:24: `max_latency_increase` must be a factor greater than 1, such as \"2x\"\n\
             p.toml:6:12: `replicas` must be an array of strings, such as [\"a\", \"b\"], not a string",
        );
        check_steps(
            "max_replica_lag = \"10s\"\nprobe_query = \"SELECT 1\"\n[[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n",
            "p.toml:3:1: `max_replica_lag` does nothing without `replicas`\n\
             p.toml:4:1: `probe_query` does nothing without `max_latency_increase`",
        );
    }

    #[test]
    fn expect_max_duration_must_parse() {
        check_steps(
            "[expect]\nmax_duration = \"forever\"\n[[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n",
            "p.toml:4:16: `max_duration` must be a duration such as \"500ms\", \"30s\", \"10m\" or \"2h\", not \"forever\"",
        );
    }

    #[test]
    fn expands_nothing_but_variables() {
        assert_eq!(
            expand_vars("k", "a$b${HOST}$${HOST}c$", &env),
            Ok("a$bdb.internal$db.internalc$".to_string())
        );
        assert_eq!(expand_vars("k", "", &env), Ok(String::new()));
    }

    #[test]
    fn every_section_key_is_among_all_keys() {
        for section in [
            Section::Top,
            Section::State,
            Section::Defaults,
            Section::Expect,
            Section::Step,
        ] {
            for key in section.known() {
                assert!(ALL_KEYS.contains(&key), "{key}");
            }
        }
    }

    #[test]
    fn suggests_only_close_keys() {
        assert_eq!(
            closest("batchsize", SETTING_KEYS.iter().copied()),
            Some("batch_size")
        );
        assert_eq!(
            closest("Lease", SETTING_KEYS.iter().copied()),
            Some("lease")
        );
        assert_eq!(closest("frobnicate", STEP_KEYS.iter().copied()), None);
    }

    #[test]
    fn accepts_inline_step_tables() {
        let plan = parse_ok(&format!(
            "{HEAD}steps = [{{ name = \"a\", sql = \"SELECT 1\" }}]\n"
        ));
        assert_eq!(
            plan.steps[0].location,
            Location {
                line: 3,
                column: 10
            }
        );
        assert_eq!(
            plan.steps[0].key_locations["sql"],
            Location {
                line: 3,
                column: 24
            }
        );
    }
}

#[cfg(test)]
mod size_tests {
    use super::parse_byte_size;

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
