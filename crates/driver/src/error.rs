use std::fmt;

/// The result type of every driver call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure an [`Error`] is, so that callers can decide what to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Worth retrying the same work: serialization failure, deadlock, lock timeout, too many
    /// connections, SQLite busy.
    Transient,
    /// The statement ran past its time limit and the database cancelled it. Retrying is
    /// reasonable; the batch may simply be too large.
    Timeout,
    /// The connection is gone (server restart, network). Connect again, then retry.
    Connection,
    /// The URL or the connection settings are wrong; retrying will not help.
    Config,
    /// Anything else: syntax errors, constraint violations, missing tables. Retrying will not
    /// help.
    Permanent,
}

impl ErrorKind {
    /// Whether the same work may succeed when tried again.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Transient | ErrorKind::Timeout | ErrorKind::Connection
        )
    }
}

/// A database error with the database's own code where it gave one.
#[derive(Debug, Clone)]
pub struct Error {
    kind: ErrorKind,
    code: Option<String>,
    message: String,
    /// The database refused a row's values (a constraint, a value out of range) rather than
    /// the statement: the same statement without that row may succeed.
    row_refused: bool,
}

impl Error {
    /// Builds an error; backends call this after classifying the database's code.
    pub fn new(kind: ErrorKind, code: Option<String>, message: impl Into<String>) -> Error {
        Error {
            kind,
            code,
            message: message.into(),
            row_refused: false,
        }
    }

    /// The same error, marked as the database refusing a row's values (a constraint, a value
    /// out of range) rather than the statement; backends mark it by the database's code.
    pub fn refusing_row(self) -> Error {
        Error {
            row_refused: true,
            ..self
        }
    }

    /// Whether the database refused a row's values rather than the statement (SQLSTATE
    /// classes 22 and 23; SQLite's constraint, mismatch and too-big codes): writing the
    /// statement's rows one at a time finds the rows it refuses.
    pub fn refuses_row(&self) -> bool {
        self.row_refused
    }

    /// A configuration error (bad URL, unsupported scheme).
    pub fn config(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Config, None, message)
    }

    /// A permanent error raised by godwit itself about data it cannot handle.
    pub fn permanent(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Permanent, None, message)
    }

    /// The same error with `context` in front of its message (`column v: …`).
    pub fn context(self, context: impl std::fmt::Display) -> Error {
        Error {
            message: format!("{context}: {}", self.message),
            ..self
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The database's own error code (a SQLSTATE on PostgreSQL, the error number on MySQL, the
    /// extended result code on SQLite), when it gave one.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// The database's message, without the code.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.code {
            Some(code) => write!(f, "[{code}] {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for Error {}
