//! Why a plan-level job of this crate (`verify`) could not be done.

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
