//! Per-row transforms: the code a step runs over each row of a batch.
//!
//! Two kinds, one contract. A [`Transform`] is built once per process from the step's script:
//! Lua source compiled into sandboxed interpreters ([`lua`]), or a program started once and fed
//! rows as JSON lines ([`command`]). Either way [`Transform::apply`] takes a batch of rows and
//! gives one [`Outcome`] per row, in order: leave the row (`nil`/`null`), a table of column
//! values, a list of such tables (a copy's fan-out), or an error for that row alone.
//!
//! This crate knows nothing of databases beyond [`Value`]: the scheduler reads the rows, hands
//! them over, and writes back what comes out (`godwit-sched`'s `rows` module).
#![deny(missing_docs)]

pub mod command;
pub mod json;
pub mod lua;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use godwit_driver::{Error, Value};

/// The rows of one batch, in key order: `columns` names each position of every row.
#[derive(Debug, Clone)]
pub struct Rows {
    /// Column names, the key first.
    pub columns: Arc<[String]>,
    /// The values, one `Vec` per row, in `columns` order.
    pub rows: Vec<Vec<Value>>,
    /// The columns of the table written to that hold bytes: a program writes bytes as base64
    /// text, decoded back for these columns (and for any it was given bytes in).
    pub bytes_columns: Arc<[String]>,
}

/// What a transform made of one row.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `nil`: leave the row as it is (a copy skips it).
    Keep,
    /// One table of column values: the columns to update (a transform step), or the row to
    /// write (a copy).
    Row(Vec<(String, Value)>),
    /// A list of tables: several rows to write (a copy's fan-out).
    Rows(Vec<Vec<(String, Value)>>),
    /// The script raised an error for this row (or a program answered `{"error": …}`).
    Error(String),
}

/// Limits on one row's work.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The longest one row may take.
    pub row_timeout: Duration,
    /// The most memory a Lua interpreter may hold, in bytes.
    pub lua_memory: u64,
    /// The longest line a program may answer with, in bytes (the step's `max_batch_bytes`):
    /// reading stops there, so an endless line cannot fill the memory.
    pub max_line_bytes: u64,
}

/// Where a script came from, for its error messages.
#[derive(Debug, Clone)]
pub struct Source {
    /// The Lua code.
    pub code: String,
    /// The file that holds it (the plan file for inline `lua`), named in Lua's messages.
    pub file: PathBuf,
    /// The line of `file` where `code` starts.
    pub first_line: usize,
}

/// A compiled transform, shared by every batch of a step in this process.
pub enum Transform {
    /// Sandboxed Lua interpreters, one per batch running at once.
    Lua(lua::LuaPool),
    /// One program per batch running at once, fed JSON lines.
    Command(command::CommandPool),
}

impl Transform {
    /// Compiles Lua source. Fails (permanently) when the code does not compile or defines no
    /// `transform` function.
    pub fn lua(source: Source, limits: Limits) -> Result<Transform, Error> {
        Ok(Transform::Lua(lua::LuaPool::new(source, limits)?))
    }

    /// A program started on first use. `dir` is where it runs (the plan file's directory, so
    /// relative paths in its arguments mean what they meant to the plan's author).
    pub fn command(argv: Vec<String>, dir: PathBuf, limits: Limits) -> Transform {
        Transform::Command(command::CommandPool::new(argv, dir, limits))
    }

    /// Runs the transform over `rows`: one outcome per row, in order.
    ///
    /// # Errors
    /// A failure of the transform itself rather than of a row: a Lua row over its time or
    /// memory limit (permanent: the script is at fault), a program that crashed, hung or
    /// answered nonsense (transient: the batch is retried with a new program) or answered a
    /// line longer than `max_line_bytes` (permanent).
    pub async fn apply(&self, rows: Rows) -> Result<Vec<Outcome>, Error> {
        match self {
            Transform::Lua(pool) => pool.apply(rows).await,
            Transform::Command(pool) => pool.apply(rows).await,
        }
    }
}

/// A JSON document that is a bare string, number or boolean reaches a transform as a plain
/// value; when the transform gives that column back, it is a document again. Numbers and
/// booleans are JSON as they are. A string given for a JSON column is JSON text, which the
/// writer parses (so `godwit.json.encode(t)` or a program's `json.dumps(d)` writes a document,
/// not a string holding one), except the very string the column's document was: given back
/// unchanged, that stays the JSON string it was.
pub(crate) fn keep_json_scalars(columns: &[String], input: &[Value], outcome: Outcome) -> Outcome {
    let input_json = |name: &str| {
        columns
            .iter()
            .position(|c| c == name)
            .and_then(|i| match input.get(i) {
                Some(Value::Json(j)) => Some(j),
                _ => None,
            })
    };
    let was_json = |name: &str| input_json(name).is_some();
    let fix = |row: Vec<(String, Value)>| -> Vec<(String, Value)> {
        row.into_iter()
            .map(|(name, value)| {
                let value = match value {
                    Value::Text(s)
                        if input_json(&name).and_then(|j| j.as_str()) == Some(s.as_str()) =>
                    {
                        Value::Json(s.into())
                    }
                    Value::Int(n) if was_json(&name) => Value::Json(n.into()),
                    Value::Bool(b) if was_json(&name) => Value::Json(b.into()),
                    Value::Float(f) if was_json(&name) => serde_json::Number::from_f64(f)
                        .map_or(Value::Float(f), |n| Value::Json(n.into())),
                    other => other,
                };
                (name, value)
            })
            .collect()
    };
    match outcome {
        Outcome::Row(row) => Outcome::Row(fix(row)),
        Outcome::Rows(rows) => Outcome::Rows(rows.into_iter().map(fix).collect()),
        other => other,
    }
}
