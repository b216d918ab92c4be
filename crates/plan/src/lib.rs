//! godwit's plan file: TOML into a validated [`Plan`].
//!
//! The plan says what to change (steps of SQL, per-row transforms, copies) and where (database
//! URLs). This crate turns its text into a [`Plan`] whose every step has a definite
//! [`StepKind`], or into [`PlanErrors`] listing every problem at once, each with the file, line
//! and column, so a user fixes a plan in one pass rather than one error per run. It does no I/O
//! beyond reading the plan (in [`load`]) and the `lua_file`s it names, and imports no other
//! godwit crate: whether tables, keys and indexes exist is for `godwit check` to ask the
//! database.
//!
//! Parsing goes through `toml`'s spanned document tree rather than `serde` derive, because
//! derive stops at the first problem and loses the position of keys; reading key by key keeps
//! both, at the price of some hand-written code.
//!
//! `${VAR}` is expanded from the environment in URL fields only (`database`, `[state]
//! database`, a step's `source`, `replicas` entries), so a password need not be written in the
//! plan. SQL, `where`, scripts and every other value are taken literally: a `$` in them never
//! changes meaning, and a plan stored with its run means the same when read again. An unset
//! variable is an error, never an empty string. A `$` not followed by `{` stays as it is.
//!
//! `Plan`'s `Debug` replaces the passwords of its URLs with `***`, so a plan can be logged.
#![deny(missing_docs)]

mod model;
mod order;
mod parse;
mod suggest;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::model::{
    Convert, CopySpec, Ensure, Locking, OnConflict, OnRowError, Plan, Script, Settings, Step,
    StepKind, Walked, WrittenUrl, DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_REPLICA_LAG,
    DEFAULT_MIN_BATCH_SIZE, DEFAULT_NOTIFY_THROTTLED_AFTER, DEFAULT_TARGET_BATCH_TIME,
};

/// A byte range in the plan text.
pub(crate) type Span = std::ops::Range<usize>;

/// A 1-based line and column in the plan file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Location {
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub column: usize,
}

impl Location {
    /// The location of byte offset `offset` in `text` (an offset inside a character counts as
    /// that character; one past the end as the end).
    pub fn of_offset(text: &str, offset: usize) -> Location {
        LineIndex::new(text).location(offset)
    }
}

/// A place in a plan file, displayed as `FILE:LINE:COLUMN`: how every message about a plan
/// points at what it is about, so that editors and terminals can jump there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place<'a> {
    /// The plan file.
    pub file: &'a Path,
    /// The line and column in it.
    pub location: Location,
}

impl fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Place { file, location } = self;
        write!(
            f,
            "{}:{}:{}",
            file.display(),
            location.line,
            location.column
        )
    }
}

/// Where each line of a text starts, so that locating an offset costs a binary search and a
/// walk over its own line, not a walk from the start of the text: a plan of many steps asks
/// for a location per key, and scanning from the start each time made `check` quadratic.
pub(crate) struct LineIndex<'t> {
    text: &'t str,
    /// The byte offset of each line's first character; the first is 0.
    starts: Vec<usize>,
}

impl<'t> LineIndex<'t> {
    pub(crate) fn new(text: &'t str) -> LineIndex<'t> {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { text, starts }
    }

    /// As [`Location::of_offset`].
    pub(crate) fn location(&self, offset: usize) -> Location {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        // The number of lines starting at or before `offset`; at least 1, as line 1 starts at 0.
        let line = self.starts.partition_point(|&start| start <= offset);
        let line_start = self.starts[line - 1];
        Location {
            line,
            column: self.text[line_start..offset].chars().count() + 1,
        }
    }
}

/// One problem in a plan file.
///
/// It displays as `FILE:LINE:COLUMN: MESSAGE`, or `FILE: MESSAGE` when the problem has no place
/// in the file (a missing `name`, say). Messages start lowercase and end without a period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanError {
    /// The plan file.
    pub file: PathBuf,
    /// Where in it, when known.
    pub location: Option<Location>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some(location) => {
                let place = Place {
                    file: &self.file,
                    location,
                };
                write!(f, "{place}: {}", self.message)
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Every problem found in a plan file, in file order (those without a location first); it
/// displays one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanErrors(pub Vec<PlanError>);

impl fmt::Display for PlanErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PlanErrors {}

/// Reads and validates the plan at `path`, expanding `${VAR}` from the process environment.
///
/// # Errors
///
/// Every problem in the file, each with its location; or the one error of not being able to
/// read it.
pub fn load(path: &Path) -> Result<Plan, PlanErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        PlanErrors(vec![PlanError {
            file: path.to_path_buf(),
            location: None,
            message: format!("cannot read the plan: {e}"),
        }])
    })?;
    parse(&text, path, &|name| std::env::var(name).ok())
}

/// Validates plan text read from `path`, with `env` answering `${VAR}`.
///
/// `path` names the file in errors and locates `lua_file`s, which are read relative to its
/// directory.
///
/// # Errors
///
/// Every problem in the text, each with its location.
///
/// # Examples
///
/// ```
/// use std::path::Path;
///
/// let text = r#"
/// name = "demo"
/// database = "${DB}"
///
/// [[steps]]
/// name = "touch"
/// table = "customers"
/// key = "id"
/// sql = "UPDATE customers SET seen = 1 WHERE id BETWEEN :start AND :end"
/// "#;
/// let env = |var: &str| (var == "DB").then(|| "sqlite://demo.db".to_string());
/// let plan = godwit_plan::parse(text, Path::new("demo.toml"), &env).expect("a valid plan");
/// assert_eq!(plan.database, "sqlite://demo.db");
/// assert!(matches!(plan.steps[0].kind, godwit_plan::StepKind::Chunked { .. }));
///
/// let errors = godwit_plan::parse("name = \"demo\"\nbatchsize = 5\n", Path::new("demo.toml"), &env)
///     .expect_err("an invalid plan");
/// assert_eq!(
///     errors.to_string(),
///     "demo.toml: the plan needs a `database` URL\n\
///      demo.toml: the plan has no steps; add a [[steps]] table\n\
///      demo.toml:2:1: unknown key `batchsize` in the plan; did you mean `batch_size`? settings go in [defaults] or in a step"
/// );
/// ```
pub fn parse(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Plan, PlanErrors> {
    parse::parse(text, path, env)
}

/// Whether `step` comes, directly or through other steps, `after` a one-off `sql` step: what
/// such a step creates (a table, an index) may not exist before the run, so checks of it wait
/// for the step itself.
pub fn runs_after_one_off(plan: &Plan, step: &Step) -> bool {
    let mut seen = std::collections::BTreeSet::new();
    let mut todo: Vec<&str> = step.after.iter().map(String::as_str).collect();
    while let Some(name) = todo.pop() {
        if !seen.insert(name) {
            continue;
        }
        if let Some(before) = plan.steps.iter().find(|s| s.name == name) {
            if matches!(before.kind, StepKind::Once { .. }) {
                return true;
            }
            todo.extend(before.after.iter().map(String::as_str));
        }
    }
    false
}

/// Parses a duration as plans and flags write it: `500ms`, `30s`, `10m`, `2h`, `1h30m`
/// (any unit `humantime` knows, such as `1day`, also works).
///
/// # Errors
///
/// A message saying what was expected, such as
/// `"soon" is not a duration; expected something like 500ms, 30s, 10m or 2h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("expected a duration such as 500ms, 30s, 10m or 2h".into());
    }
    humantime::parse_duration(trimmed).map_err(|_| {
        format!("{text:?} is not a duration; expected something like 500ms, 30s, 10m or 2h")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn locates_offsets() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(
            Location::of_offset(text, 0),
            Location { line: 1, column: 1 }
        );
        assert_eq!(
            Location::of_offset(text, 6),
            Location { line: 2, column: 1 }
        );
        assert_eq!(
            Location::of_offset(text, 9),
            Location { line: 2, column: 3 }
        );
    }
}
