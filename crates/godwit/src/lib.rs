//! godwit runs large data migrations so that they finish: chunked by key, parallel, resumable
//! after any crash, observable while they run.
//!
//! This crate is the library behind the `godwit` command. A Rust program can load a plan and
//! run it the same way the command does:
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let plan = godwit::plan::load(std::path::Path::new("examples/vn-phones.toml"))?;
//! let (_stop, signal) = godwit::stop_pair();
//! let outcome = godwit::run(&plan, godwit::RunOptions::default(), signal, godwit::EventSink::none()).await?;
//! println!("{outcome:?}");
//! # Ok(()) }
//! ```
//!
//! The pieces live in their own crates and are re-exported here: [`plan`] (the plan file),
//! [`driver`] (one interface over PostgreSQL, MySQL/MariaDB and SQLite), [`state`] (progress
//! records and claims), the judge of a plan ([`check`]), the scheduler ([`run`]) and the
//! report of a run's durations ([`report`]).
#![deny(missing_docs)]

pub mod demo;
mod ops;
mod status;

/// Where a plan is judged against its databases: what `godwit check` prints, and what `run`
/// and `submit` refuse.
pub use godwit_check as check;
pub use godwit_driver as driver;
pub use godwit_plan as plan;
/// `godwit report`: a run's durations as Markdown, JSON or one HTML page.
pub use godwit_report as report;
pub use godwit_sched::{
    default_concurrency, run, stop_pair, submit, verify, work, Event, EventSink, RangeDifference,
    Restart, RunOptions, RunOutcome, RunStart, StepCheck, StopHandle, StopLevel, StopSignal,
    WorkerEvent, WorkerOptions, WorkerOutcome,
};

/// `godwit run --dry-run`: every batch run in a transaction that is rolled back, nothing
/// recorded, and what would change counted per step.
pub use godwit_sched::{
    dry_run, DryRun, DryRunEvent, DryRunOptions, DryRunOutcome, Rehearsed, StepRehearsal,
};
/// `godwit estimate`: a plan's duration projected from a sample of rehearsed batches.
pub use godwit_sched::{estimate, EstimateOptions, Estimated};
pub use godwit_state as state;

pub use crate::ops::{record_estimate, set_run, wait_run, SettingsChange, Waited};
pub use crate::status::{
    control, control_reply, control_run, dead_letters, list_runs, report_run, status, status_run,
    ControlReply,
};

/// The error type of the scheduler: an invalid plan (nothing changed) or an unreachable
/// database.
pub use godwit_sched::{Error as RunError, ErrorKind as RunErrorKind};

/// Why a run failed for good ([`RunOutcome::Failed`]): which part (the database, the
/// transform, a row, the plan, the state store), and the message shown.
pub use godwit_sched::{Failure as RunFailure, FailureKind as RunFailureKind};

/// Opens a connection to the database at `url` (`postgres://`, `mysql://`, `sqlite://`).
///
/// # Errors
/// When the URL is unsupported or the database cannot be reached.
pub async fn connect(url: &driver::DbUrl) -> Result<Box<dyn driver::Conn>, driver::Error> {
    godwit_db::connect(url, &driver::ConnectOptions::default()).await
}
