//! godwit's plan file: TOML into a validated [`Plan`].
//!
//! The plan says what to change (steps of SQL, per-row transforms, copies) and where (database
//! URLs). Parsing keeps the span of every key and value, so that every error names the file,
//! line and column, and validation collects every problem rather than stopping at the first.
//!
//! `${VAR}` is expanded from the environment in URL fields only (`database`, `[state]
//! database`, a step's `source`, `replicas`): SQL and scripts are taken literally, so a `$` in
//! them never changes meaning.
#![deny(missing_docs)]

mod model;
mod parse;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::model::{OnConflict, OnRowError, Plan, Script, Settings, Step, StepKind};

/// A 1-based line and column in the plan file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Location {
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub column: usize,
}

impl Location {
    /// The location of byte offset `offset` in `text`.
    pub fn of_offset(text: &str, offset: usize) -> Location {
        let offset = offset.min(text.len());
        let before = &text[..text.floor_char_boundary(offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Location {
            line,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

/// One problem in a plan file.
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
            Some(loc) => write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                loc.line,
                loc.column,
                self.message
            ),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Every problem found in a plan file, in file order.
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
/// Every problem in the file, each with its location.
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
/// # Errors
/// Every problem in the text, each with its location.
pub fn parse(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Plan, PlanErrors> {
    parse::parse(text, path, env)
}

/// Parses a duration as plans and flags write it: `500ms`, `30s`, `10m`, `2h`, `1h30m`.
///
/// # Errors
/// A message saying what was expected.
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
