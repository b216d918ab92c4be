//! The `godwit` command: flags, progress output and exit codes over the `godwit` library.

/// `println!` for stdout that tolerates a closed pipe; see [`out`].
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::out(format_args!($($arg)*))
    };
}

mod args;
mod commands;
mod progress;

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
    /// Stopped with work left (time budget or signal); running again resumes.
    pub const STOPPED: u8 = 75;
}

/// Prints a line on stdout. A closed pipe (`godwit status --json | head -1`) is not an error:
/// the reader has what it wanted, so the line is dropped instead of panicking.
pub(crate) fn out(line: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
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
        .try_init();
}
