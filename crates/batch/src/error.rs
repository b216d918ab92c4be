//! Why a batch failed ([`BatchError`]), and why a plan-level job of this crate (`verify`)
//! could not be done ([`Error`]).

use std::fmt;

/// Why a step could not be worked on at all.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

/// What kind of [`Error`] this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The plan cannot run as written: nothing was changed.
    Invalid,
    /// A database could not be reached or refused the work.
    Database,
}

impl Error {
    /// The plan cannot run as written.
    pub fn invalid(message: impl Into<String>) -> Error {
        Error {
            kind: ErrorKind::Invalid,
            message: message.into(),
        }
    }

    /// A database failed while doing `context`; a configuration error is the plan's fault.
    pub fn database(context: &str, err: &godwit_driver::Error) -> Error {
        let kind = match err.kind() {
            godwit_driver::ErrorKind::Config => ErrorKind::Invalid,
            _ => ErrorKind::Database,
        };
        Error {
            kind,
            message: format!("{context}: {err}"),
        }
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, naming the step and the database's own error.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// Why a batch failed: which part of its work, and whether trying it again may help.
#[derive(Debug)]
pub enum BatchError {
    /// A database (the plan's, or a copy's source) failed or refused the batch's statements;
    /// the error's kind says whether trying again may help, its code what the database said.
    Database(godwit_driver::Error),
    /// The transform failed as a whole, as `godwit-transform` reports it: a Lua row over its
    /// time or memory limit (permanent: the script is at fault), a program that crashed, hung
    /// or answered nonsense (transient: a new program may do better), or answered too long a
    /// line (permanent).
    Transform(godwit_driver::Error),
    /// A row the step cannot write, with `on_row_error = "fail"`: the transform's error for
    /// it, or a value its column cannot hold. Trying again gives the same answer.
    Row(String),
}

impl BatchError {
    /// A row the step cannot write; `message` names its key.
    pub(crate) fn row(message: String) -> BatchError {
        BatchError::Row(godwit_driver::cap_message(message))
    }

    /// Whether the same batch may succeed when tried again.
    pub fn is_retryable(&self) -> bool {
        match self {
            BatchError::Database(e) | BatchError::Transform(e) => e.kind().is_retryable(),
            BatchError::Row(_) => false,
        }
    }

    /// Whether the batch's connection to the plan's database was lost (nothing to roll back).
    pub fn lost_connection(&self) -> bool {
        matches!(self, BatchError::Database(e) if e.kind() == godwit_driver::ErrorKind::Connection)
    }

    /// The database's error code, when a database failed and gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            BatchError::Database(e) => e.code(),
            BatchError::Transform(_) | BatchError::Row(_) => None,
        }
    }

    /// The error as the state store records a batch's failure: its kind, code and message.
    pub fn to_driver_error(&self) -> godwit_driver::Error {
        match self {
            BatchError::Database(e) | BatchError::Transform(e) => e.clone(),
            BatchError::Row(message) => godwit_driver::Error::permanent(message.clone()),
        }
    }
}

impl From<godwit_driver::Error> for BatchError {
    fn from(e: godwit_driver::Error) -> BatchError {
        BatchError::Database(e)
    }
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchError::Database(e) | BatchError::Transform(e) => e.fmt(f),
            BatchError::Row(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for BatchError {}
