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
/// `eprintln!` with control characters escaped, or a JSON log line with `--log-format json`;
/// see [`err_line`].
macro_rules! eprintln {
    () => {
        eprintln!("")
    };
    ($($arg:tt)*) => {
        $crate::err_line(&format!($($arg)*))
    };
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
mod dry_run;
mod estimate;
mod ops;
mod progress;
mod report;
mod serve;
mod target;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;

/// Exit codes shared by every command (see the README).
pub(crate) mod exit {
    /// Done.
    pub const DONE: u8 = 0;
    /// The run failed: a batch exhausted its retries or hit a permanent error.
    pub const FAILED: u8 = 1;
    /// The plan or the command line is invalid; nothing was changed.
    pub const INVALID: u8 = 2;
    /// `estimate`: the projection is over the threshold (no-go).
    pub const NO_GO: u8 = 3;
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

/// Whether stderr takes JSON lines (`--log-format json`), set once at start.
static LOGS_AS_JSON: AtomicBool = AtomicBool::new(false);

/// Whether every line on stderr is a JSON object (`--log-format json`): no progress bars then.
pub(crate) fn logs_as_json() -> bool {
    LOGS_AS_JSON.load(Ordering::Relaxed)
}

/// Prints a line on stderr: escaped, or with `--log-format json` as a log event of its own
/// (level from its `error: `/`warning: ` prefix, else info), so that a log collector reads
/// every line the same way. Under the target `godwit::output`, which the log filter always
/// lets through: these lines are the command's output, which its flags already chose.
pub(crate) fn err_line(line: &str) {
    use std::io::Write;
    if !logs_as_json() {
        let line = escape_controls(line);
        let _ = writeln!(std::io::stderr().lock(), "{line}");
        return;
    }
    if let Some(message) = line.strip_prefix("error: ") {
        tracing::error!(target: "godwit::output", message);
    } else if let Some(message) = line.strip_prefix("warning: ") {
        tracing::warn!(target: "godwit::output", message);
    } else {
        tracing::info!(target: "godwit::output", message = line);
    }
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
            let asked_help = matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            );
            // The arguments did not parse, but a log collector that asked for JSON still
            // gets JSON.
            if !asked_help && json_logs_asked(std::env::args_os()) {
                init_logging(args::LogFormat::Json, false);
                err_line(e.render().to_string().trim_end());
                return ExitCode::from(exit::INVALID);
            }
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::from(exit::DONE)
                }
                _ => ExitCode::from(exit::INVALID),
            };
        }
    };
    init_logging(args.log_format, args.quiet());
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
fn init_logging(format: args::LogFormat, quiet: bool) {
    // A Lua transform's `print` is logged at info under `godwit::lua`: shown unless quiet.
    let default = if quiet {
        "error"
    } else {
        "warn,godwit::lua=info"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    if format == args::LogFormat::Text {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            // Colours are escape sequences: only for a terminal, never into a log file or pipe.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init();
        return;
    }
    let filter = match "godwit::output=info".parse() {
        Ok(output) => filter.add_directive(output),
        Err(_) => filter,
    };
    LOGS_AS_JSON.store(true, Ordering::Relaxed);
    let _ = tracing_subscriber::fmt()
        .json()
        // `message` and the event's fields at the top of each object, where collectors look.
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Whether the command line asks for `--log-format json` (read before it parses, for its own
/// errors).
fn json_logs_asked(args: impl Iterator<Item = std::ffi::OsString>) -> bool {
    let args: Vec<std::ffi::OsString> = args.collect();
    args.iter().enumerate().any(|(i, arg)| {
        arg == "--log-format=json"
            || (arg == "--log-format" && args.get(i + 1).is_some_and(|next| next == "json"))
    })
}
