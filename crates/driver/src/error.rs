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

/// The most of a message that is printed or stored, in bytes; see [`cap_message`].
pub const MAX_MESSAGE: usize = 4096;

/// `text` cut to at most [`MAX_MESSAGE`] bytes (on a character boundary) and a note saying
/// how many bytes were cut; shorter text as it is.
pub fn cap_message(mut text: String) -> String {
    if text.len() <= MAX_MESSAGE {
        return text;
    }
    let mut end = MAX_MESSAGE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let cut = text.len() - end;
    text.truncate(end);
    text.push_str(&format!("… ({cut} more bytes cut)"));
    text
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
    ///
    /// A message longer than [`MAX_MESSAGE`] keeps its start and says how much was cut: a
    /// script's `error(string.rep("E", 30 * 1024 * 1024))` must neither flood the terminal nor
    /// overflow what the state database takes (MariaDB's `max_allowed_packet`).
    pub fn new(kind: ErrorKind, code: Option<String>, message: impl Into<String>) -> Error {
        Error {
            kind,
            code,
            message: cap_message(message.into()),
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

    /// Whether a statement gave up waiting for a lock someone else holds (PostgreSQL's
    /// `lock_not_available`, MySQL's and MariaDB's lock wait timeout and `NOWAIT`), rather than
    /// failing on its own: the same work succeeds once the holder is done.
    pub fn is_lock_timeout(&self) -> bool {
        matches!(self.code.as_deref(), Some("55P03" | "1205" | "3572"))
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

/// After `COMMIT` or `ROLLBACK`: whether the transaction is over, which it is when the
/// statement succeeded or the connection is gone. Otherwise (SQLite busy on `COMMIT`, say) it
/// may still be open, and the caller's rollback must reach the database.
pub fn transaction_ended(result: &Result<()>) -> bool {
    result
        .as_ref()
        .map_or_else(|e| e.kind() == ErrorKind::Connection, |_| true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r11_caps_huge_messages_on_a_char_boundary() {
        let short = "E".repeat(MAX_MESSAGE);
        assert_eq!(cap_message(short.clone()), short);
        let huge = "E".repeat(30 * 1024 * 1024);
        let err = Error::permanent(huge);
        assert!(err.message().starts_with("EEEE"));
        assert!(
            err.message().len() < MAX_MESSAGE + 64,
            "{}",
            err.message().len()
        );
        assert!(
            err.message().ends_with(&format!(
                "… ({} more bytes cut)",
                30 * 1024 * 1024 - MAX_MESSAGE
            )),
            "{}",
            &err.message()[MAX_MESSAGE - 10..]
        );
        // A three-byte character across the limit is left out whole.
        let text = format!("{}€€", "a".repeat(MAX_MESSAGE - 1));
        let capped = cap_message(text);
        assert!(
            capped.starts_with(&format!("{}…", "a".repeat(MAX_MESSAGE - 1))),
            "{capped}"
        );
        assert!(capped.ends_with("(6 more bytes cut)"), "{capped}");
    }
}
