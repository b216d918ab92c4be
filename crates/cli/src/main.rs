//! The `godwit` command: flags, progress output and exit codes over the `godwit` library.

/// `println!` for stdout that tolerates a closed pipe; see [`out`].
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::out(format_args!($($arg)*))
    };
}

// Every line this binary prints may carry text from a plan, a database or a script (step
// names, errors): a control character in it (an ANSI escape sequence, a NUL) would reach the
// terminal raw and could rewrite what the user sees. These shadow the standard macros in every
// module below, so that no line is printed unescaped, including ones added later.
/// `eprintln!` with control characters escaped; see [`escape_controls`].
macro_rules! eprintln {
    () => {
        eprintln!("")
    };
    ($($arg:tt)*) => {{
        use std::io::Write;
        let line = $crate::escape_controls(&format!($($arg)*)).into_owned();
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }};
}

/// `println!` with control characters escaped; see [`escape_controls`].
macro_rules! println {
    () => {
        println!("")
    };
    ($($arg:tt)*) => {{
        use std::io::Write;
        let line = $crate::escape_controls(&format!($($arg)*)).into_owned();
        let _ = writeln!(std::io::stdout().lock(), "{line}");
    }};
}

/// `print!` with control characters escaped; see [`escape_controls`].
macro_rules! print {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let text = $crate::escape_controls(&format!($($arg)*)).into_owned();
        let _ = write!(std::io::stdout().lock(), "{text}");
    }};
}

mod args;
mod commands;
mod ops;
mod progress;
mod serve;

use std::process::ExitCode;

use clap::Parser;

/// Exit codes shared by every command (see the README).
pub(crate) mod exit {
    /// Done.
    pub const DONE: u8 = 0;
    /// The run failed: a batch exhausted its retries or hit a permanent error.
    pub const FAILED: u8 = 1;
    /// The plan or the command line is invalid; nothing was changed.
    pub const INVALID: u8 = 2;
    /// Stopped with work left (time budget or signal); running again resumes. For `wait`: its
    /// timeout passed before the run ended.
    pub const STOPPED: u8 = 75;
}

/// Prints a line on stdout. A closed pipe (`godwit status --json | head -1`) is not an error:
/// the reader has what it wanted, so the line is dropped instead of panicking.
pub(crate) fn out(line: impl std::fmt::Display) {
    use std::io::Write;
    let line = escape_controls(&line.to_string()).into_owned();
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// `text` with every control character but line feed and tab written as Rust writes it in a
/// string (`\u{1b}`, `\0`, `\r`), so that text from a plan, a database or a script cannot
/// drive the terminal. JSON output needs none of this: serde escapes control characters.
pub(crate) fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    let is_raw = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.contains(is_raw) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_raw(c) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

fn main() -> ExitCode {
    let args = match args::Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::from(exit::DONE)
                }
                _ => ExitCode::from(exit::INVALID),
            };
        }
    };
    init_logging(&args);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    let outcome = runtime.block_on(commands::dispatch(args));
    // The outcome is recorded by now. A Lua call stuck in a library function (a pathological
    // string pattern) cannot be interrupted, and dropping the runtime would wait for its
    // blocking thread forever: give other blocking work a moment, then let the exit end it.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit::FAILED)
        }
    }
}

/// Logs go to stderr, warnings and errors only unless `RUST_LOG` says otherwise. Nothing logged
/// carries a password: URLs are `DbUrl`s, which redact themselves.
fn init_logging(args: &args::Args) {
    // A Lua transform's `print` is logged at info under `godwit::lua`: shown unless quiet.
    let default = if args.quiet() {
        "error"
    } else {
        "warn,godwit::lua=info"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours are escape sequences: only for a terminal, never into a log file or pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
