//! Why a step, and so its run, failed for good: which part failed, and the message shown.

use std::fmt;

/// Why a run failed for good ([`RunOutcome::Failed`](crate::RunOutcome::Failed)): which part
/// failed, the database's code when it was the database, and the message shown to users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    kind: FailureKind,
    code: Option<String>,
    message: String,
}

/// Which part of a run failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// A database failed or refused a batch's statements for good (or kept failing past the
    /// step's `max_attempts`); [`Failure::code`] holds its code when it gave one.
    Database,
    /// The step's transform failed as a whole: a Lua row over its time or memory limit, a
    /// program that crashed, hung or answered nonsense (past `max_attempts`), or whose answer
    /// was too long.
    Transform,
    /// A row the step cannot write, with `on_row_error = "fail"`: the transform's error for
    /// it, or a value its column cannot hold.
    Row,
    /// The plan cannot run as written, found once the step started: its key has no usable
    /// index or holds values that are not keys.
    Plan,
    /// The state store's work failed for good: claiming a batch (with the key walk that finds
    /// its range).
    State,
    /// A post-condition (`ensure`) did not hold once every batch of the step was done, or
    /// could not be asked.
    Ensure,
    /// A step failed in another process; only the message it recorded is known here.
    Elsewhere,
    /// A task of this process ended unexpectedly: a bug.
    Internal,
}

impl Failure {
    pub(crate) fn new(kind: FailureKind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            code: None,
            message: message.into(),
        }
    }

    /// `err` of `kind`, its message after `context`, keeping its database code.
    pub(crate) fn from_error(
        kind: FailureKind,
        context: impl fmt::Display,
        err: &godwit_driver::Error,
    ) -> Failure {
        Failure {
            kind,
            code: err.code().map(str::to_string),
            message: format!("{context}: {err}"),
        }
    }

    /// Which part failed.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// The database's error code, when a database failed and gave one.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// The message, naming the step, the batch's key range and the database's code.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}
