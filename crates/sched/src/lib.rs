//! godwit's scheduler and workers: split each step into batches, claim, run, commit, retry.
//!
//! [`run`] is the whole life of a run in one process: it opens the state store, starts each step
//! when the steps it comes `after` are done, and for each step keeps up to `concurrency`
//! batches in flight. Any number of processes may call [`run`] on the same plan at once; they
//! coordinate only through the state store's claims (see `godwit-state`).
//!
//! Where a batch lives, by file: `run.rs` orders the steps, `step.rs` keeps a step's batches in
//! flight, `claim.rs` claims each (the key walk in `godwit-batch` finds its range), and
//! `commit.rs` opens its transaction, has `godwit_batch::Work` write its rows, and commits it
//! with its done record. `pace/` decides how large each batch is, when it may start and
//! whether anything starts (throttling). `ctx.rs` holds what they share, `retry.rs` the
//! backoff, `heartbeat.rs` keeps the leases alive, and `failure.rs` says what failed.
#![deny(missing_docs)]

mod claim;
mod commit;
mod ctx;
mod dry_run;
mod ensure;
mod estimate;
mod events;
mod failure;
mod heartbeat;
mod notify;
mod pace;
mod retry;
mod run;
mod spec;
mod step;
mod stop;
mod verify;
mod worker;

use std::fmt;
use std::sync::Arc;

pub use crate::dry_run::{
    dry_run, DryRun, DryRunEvent, DryRunOptions, DryRunOutcome, Rehearsed, StepRehearsal,
};
pub use crate::estimate::{estimate, EstimateOptions, Estimated};
pub use crate::events::{Event, EventSink};
pub use crate::failure::{Failure, FailureKind};
pub use crate::run::{run, submit};
pub use crate::stop::{stop_pair, StopHandle, StopLevel, StopSignal};
pub use crate::verify::verify;
pub use crate::worker::{work, WorkerEvent, WorkerOptions, WorkerOutcome};
pub use godwit_batch::{RangeDifference, StepCheck};
pub use godwit_state::{Restart, RunStart};

/// How this process takes part in a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Batches in flight in this process; `None` picks a default for the database.
    pub concurrency: Option<usize>,
    /// Resume the stored run, or forget its progress first.
    pub restart: Restart,
    /// Re-queue the run's failed batches on joining it (what `godwit run` does; a worker
    /// leaves that to `godwit retry`).
    pub requeue_failed: bool,
    /// Slots shared with other runs in this process (a worker's `--concurrency` over every
    /// run it works on); `None` gives the run `concurrency` slots of its own.
    pub permits: Option<Arc<tokio::sync::Semaphore>>,
}

impl Default for RunOptions {
    fn default() -> RunOptions {
        RunOptions {
            concurrency: None,
            restart: Restart::Resume,
            requeue_failed: true,
            permits: None,
        }
    }
}

/// How a run ended in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// Every step is done.
    Done,
    /// The run was already done before this process started; nothing was changed.
    AlreadyDone,
    /// Stopped on request with work left; running again resumes.
    Stopped,
    /// A batch failed for good; the failure says which part failed, and its message names the
    /// step, key range and database code.
    Failed(Failure),
    /// Cancelled from elsewhere (`godwit cancel`); the batches in flight finished.
    Cancelled,
}

/// Why a run could not be worked on at all.
#[derive(Debug)]
pub struct Error(Reason);

#[derive(Debug)]
enum Reason {
    /// The plan cannot run, or a database failed, as the batch crate words it for its own
    /// jobs too (`verify`).
    Work(godwit_batch::Error),
    /// Another process restarted the run; the message says so.
    Restarted(String),
}

/// What kind of [`Error`] this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The plan cannot run as written, or differs from the stored run: nothing was changed.
    Invalid,
    /// A database could not be reached or refused the state store's work.
    Database,
    /// Another process restarted the run (`--restart`) while this one worked on it: this
    /// process stopped, and nothing of its plan was applied after the restart.
    Restarted,
}

impl Error {
    pub(crate) fn invalid(message: impl Into<String>) -> Error {
        Error(Reason::Work(godwit_batch::Error::invalid(message)))
    }

    pub(crate) fn database(context: &str, err: &godwit_driver::Error) -> Error {
        if godwit_state::is_restarted(err) {
            return Error(Reason::Restarted(err.message().to_string()));
        }
        Error(Reason::Work(godwit_batch::Error::database(context, err)))
    }

    pub(crate) fn restarted(run: &str) -> Error {
        Error(Reason::Restarted(format!(
            "the run {run:?} was restarted by another process (--restart); this process \
             stopped and applied nothing of the old plan since"
        )))
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        match &self.0 {
            Reason::Work(e) => match e.kind() {
                godwit_batch::ErrorKind::Invalid => ErrorKind::Invalid,
                godwit_batch::ErrorKind::Database => ErrorKind::Database,
            },
            Reason::Restarted(_) => ErrorKind::Restarted,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Reason::Work(e) => e.fmt(f),
            Reason::Restarted(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Error {}

impl From<godwit_batch::Error> for Error {
    fn from(e: godwit_batch::Error) -> Error {
        Error(Reason::Work(e))
    }
}

/// The default number of batches in flight for a database.
///
/// SQLite has a single writer, so a second batch can only overlap its key walk with the first's
/// write. Servers take more; four keeps two cores busy without making batches wait on each
/// other's locks.
pub fn default_concurrency(dialect: godwit_driver::Dialect) -> usize {
    match dialect {
        godwit_driver::Dialect::Sqlite => 2,
        godwit_driver::Dialect::Postgres | godwit_driver::Dialect::MySql => 4,
    }
}

/// A transform as it is compared between runs: its code or command, not where it was read.
fn script_definition(script: &godwit_plan::Script) -> serde_json::Value {
    match script {
        godwit_plan::Script::Lua { code, .. } => serde_json::json!({ "lua": code }),
        godwit_plan::Script::Command(argv) => serde_json::json!({ "command": argv }),
    }
}

/// The text that identifies what a step changes; a stored run is resumed only when every
/// step's definition is the same.
pub fn step_definition(step: &godwit_plan::Step) -> String {
    use godwit_plan::StepKind;
    let mut value = match &step.kind {
        StepKind::Once { sql } => serde_json::json!({ "kind": "once", "sql": sql }),
        StepKind::Chunked {
            table,
            key,
            filter,
            sql,
        } => serde_json::json!({
            "kind": "chunked", "table": table, "key": key, "where": filter, "sql": sql,
        }),
        StepKind::Transform {
            table,
            key,
            columns,
            filter,
            script,
        } => serde_json::json!({
            "kind": "transform", "table": table, "key": key, "columns": columns,
            "where": filter, "script": script_definition(script),
        }),
        StepKind::Copy(c) => serde_json::json!({
            "kind": "copy",
            // Redacted: the definition is stored, and a changed password changes no data.
            "source": c.source.as_ref().map(|s| godwit_driver::redact_url(s)),
            "table": c.table, "key": c.key, "columns": c.columns, "query": c.query,
            "where": c.filter, "into": c.into, "on_conflict": format!("{:?}", c.on_conflict),
            "script": c.script.as_ref().map(script_definition),
        }),
    };
    if !step.convert.is_empty() {
        let rules: serde_json::Map<String, serde_json::Value> = step
            .convert
            .iter()
            .map(|(column, rule)| (column.clone(), format!("{rule:?}").into()))
            .collect();
        value["convert"] = rules.into();
    }
    value.to_string()
}
