//! Rows a batch cannot write: the batch's error, or a row set aside (a dead letter).

use godwit_driver::{KeyKind, Value};
use godwit_plan::OnRowError;
use godwit_transform::json::row_line;

use crate::error::BatchError;

/// A row a batch set aside (`on_row_error = "skip"`), for the state store to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The row's key, encoded as batch keys are (see [`KeyKind::encode`]).
    pub key: String,
    /// Why the row was not handled.
    pub error: String,
    /// The row as JSON text.
    pub row: String,
}

/// A row a step cannot write: with `on_row_error = "fail"` the batch's error, naming the row's
/// key; with `"skip"` its dead letter.
pub(crate) fn refuse_row(
    on_row_error: OnRowError,
    key: String,
    problem: String,
    names: &[String],
    values: &[Value],
) -> Result<DeadLetter, BatchError> {
    // A script's error may be megabytes long: printed and stored, only its start.
    let problem = godwit_driver::cap_message(problem);
    match on_row_error {
        OnRowError::Fail => Err(BatchError::row(format!(
            "the row with key {key}: {problem} (on_row_error = \"skip\" records such rows and goes on)"
        ))),
        OnRowError::Skip => Ok(DeadLetter {
            key,
            error: problem,
            row: row_line(names, values),
        }),
    }
}

/// A key as the state tables and messages show it.
pub(crate) fn key_text(key: &Value) -> String {
    // As `start_key`/`end_key` hold keys, so a letter's key can be compared with its batch's.
    if let Some(text) = KeyKind::of(key).and_then(|kind| kind.encode(key).ok()) {
        return text;
    }
    match key {
        Value::Int(n) => n.to_string(),
        Value::Text(s) => s.clone(),
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        other => other.text_form().unwrap_or_else(|| format!("{other:?}")),
    }
}
