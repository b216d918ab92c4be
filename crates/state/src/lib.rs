//! godwit's progress records: runs, steps, batches and their claims, in `godwit_*` tables.
//!
//! The state lives in a database, never in a worker: by default the plan's own database, so that
//! a batch's writes and the record that it is done commit in one transaction
//! ([`StateStore::record_done`] takes the batch's connection for that reason). With a separate
//! state database the record commits after the batch and a crash in between re-applies the batch
//! (at-least-once).
//!
//! Claims follow one protocol across processes and machines:
//!
//! * each step has a cursor row (`godwit_steps.next_batch`, `cursor_key`); a new batch is claimed
//!   by advancing the cursor and inserting the batch row in the same short transaction, under
//!   the row's lock (one statement that also walks, where the state lives in the walked
//!   PostgreSQL database) or with a compare-and-set on `next_batch`, so two workers never claim
//!   overlapping ranges;
//! * a claim carries a random token and a lease on the state database's clock; a batch whose
//!   lease ran out (its worker died or froze) is claimed again with a new token;
//! * the done record only matches the batch row that still carries the worker's token, so a
//!   worker that lost its lease cannot record (nor, with the default state location, commit)
//!   the batch;
//! * a run has a generation, a random id that `--restart` replaces: every claim and every done,
//!   failure and release record of a process names the generation it began, and matches
//!   nothing once the run was restarted, so a process still running the replaced plan applies
//!   nothing more and finds out ([`is_restarted`]).
#![deny(missing_docs)]

mod claim;
mod control;
mod dead_letters;
mod digest;
mod estimates;
mod fence;
mod history;
mod pace;
mod rate;
mod record;
mod runs;
mod schema;
mod status;
mod steps;
mod timings;
mod workers;

use std::collections::HashMap;
use std::time::Duration;

use godwit_driver::{
    number_placeholders, Conn, DbUrl, Dialect, Error, ErrorKind, Result, Row, Value,
};

pub use crate::claim::WalkedClaim;
pub use crate::estimates::{Estimate, RecordedEstimate, StepEstimate};
pub use crate::history::{BatchError, EtaPoint, StepEtaHistory, Throughput, ThroughputPoint};
pub use crate::pace::{RunControl, RunSettings};
pub use crate::rate::{eta_seconds, RecentRate, RATE_WINDOW_MS};
pub use crate::schema::SCHEMA_VERSION;
pub use crate::status::{RunStatus, StepStatus, WorkerStatus, LIVE_WINDOW_MS};
pub use crate::timings::{RunTimings, StepTimings, WorkerShare};

/// The database code of the error a process gets when the run it works on was restarted by
/// another process (`--restart`): its claims and records belong to a generation that is gone.
pub const RESTARTED: &str = "godwit-restarted";

/// Whether `error` says that the run was restarted by another process since this one began it
/// (see [`RESTARTED`]).
pub fn is_restarted(error: &Error) -> bool {
    error.code() == Some(RESTARTED)
}

/// The life of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Stored, no worker has started it.
    Pending,
    /// Some worker is working on it (or was, and died).
    Running,
    /// Paused: no new batch is claimed.
    Paused,
    /// Every step is done.
    Done,
    /// A batch failed for good.
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

impl RunState {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Pending => "pending",
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Done => "done",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> RunState {
        match s {
            "running" => RunState::Running,
            "paused" => RunState::Paused,
            "done" => RunState::Done,
            "failed" => RunState::Failed,
            "cancelled" => RunState::Cancelled,
            _ => RunState::Pending,
        }
    }
}

/// What a run is made of, as the state store needs to know it.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The plan's name: the run's identity.
    pub name: String,
    /// The plan file's text, stored with the run.
    pub plan_text: String,
    /// The steps in plan order.
    pub steps: Vec<StepSpec>,
}

/// A step as the state store sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepSpec {
    /// The step's name.
    pub name: String,
    /// Everything that decides what the step changes (SQL, table, key, filter), as stable text.
    /// A stored run whose definitions differ from the plan's is not resumed.
    pub definition: String,
    /// Rows per batch when the step was stored, for the queue view and as the step's current
    /// batch size until a worker records another ([`StateStore::set_step_pace`]). A one-off
    /// step's is 0 (or 1), and `status` shows none once the step started, or at all for 0.
    pub batch_size: i64,
}

/// How [`StateStore::begin_run`] found the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunStart {
    /// No such run existed; it was created.
    Created,
    /// The run existed with the same steps and is resumed.
    Resumed,
    /// The run had already finished.
    AlreadyDone,
}

/// A run as stored for workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRun {
    /// The plan's name.
    pub name: String,
    /// Where it stands.
    pub state: RunState,
    /// The plan file's text as submitted.
    pub plan_text: String,
}

/// What a user asks of a run from anywhere (`godwit pause|resume|cancel|retry`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Claim no new batch until resumed; batches in flight finish.
    Pause,
    /// Claim again after a pause.
    Resume,
    /// Stop the run for good: no new batch; batches in flight finish.
    Cancel,
    /// Re-queue the failed batches and set the run running again.
    Retry,
}

/// A worker's heartbeat: who it is and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerBeat {
    /// The worker's name (host:pid:suffix), as its claims carry it.
    pub worker: String,
    /// The run it works on.
    pub run: String,
    /// The machine it runs on.
    pub host: String,
    /// Its process id.
    pub pid: i64,
    /// The godwit version it runs.
    pub version: String,
    /// Batches in flight.
    pub batches: i64,
    /// `running`, `paused` or `stopping`.
    pub state: String,
}

/// Whether to keep or forget a stored run's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Resume the stored run.
    Resume,
    /// Forget its progress and start over (the data is not rolled back).
    Forget,
}

/// A step's cursor and initialization, read from the state tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRecord {
    /// `pending`, `running`, `done` or `failed`.
    pub state: String,
    /// Whether the key kind and upper bound were fixed.
    pub initialized: bool,
    /// The key's kind, once initialized.
    pub key_kind: Option<String>,
    /// The highest key to walk to (inclusive), fixed when the step started; `None` once
    /// initialized means no row matched.
    pub upper_key: Option<String>,
    /// The last key of the last batch claimed; the next batch starts after it.
    pub cursor_key: Option<String>,
    /// The number of the next batch to create; the compare-and-set token of the cursor.
    pub next_batch: i64,
    /// Whether the walk reached the upper key.
    pub exhausted: bool,
    /// The step's row count, once counted.
    pub rows_total: Option<i64>,
}

/// The key range and size of a batch to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBatch {
    /// First key, encoded.
    pub start_key: Option<String>,
    /// Last key, encoded.
    pub end_key: Option<String>,
    /// The number of rows in the range (matching the step's filter).
    pub n_rows: i64,
    /// Whether this batch ends the walk (its end is the step's upper key, or the step runs once).
    pub last: bool,
}

/// A batch this worker holds. Only [`StateStore`] makes one, and recording it done or failed
/// consumes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedBatch {
    run: String,
    /// The run's generation when claimed (`None` from a store that never began the run).
    generation: Option<String>,
    step: String,
    batch: i64,
    token: String,
    start_key: Option<String>,
    end_key: Option<String>,
    n_rows: i64,
    attempts: i64,
}

impl ClaimedBatch {
    /// The step this batch belongs to.
    pub fn step(&self) -> &str {
        &self.step
    }
    /// The batch's number within its step.
    pub fn number(&self) -> i64 {
        self.batch
    }
    /// The first key (encoded), or `None` for a one-off step.
    pub fn start_key(&self) -> Option<&str> {
        self.start_key.as_deref()
    }
    /// The last key (encoded), or `None` for a one-off step.
    pub fn end_key(&self) -> Option<&str> {
        self.end_key.as_deref()
    }
    /// The number of rows in the range.
    pub fn n_rows(&self) -> i64 {
        self.n_rows
    }
    /// How many attempts at this batch failed before this claim.
    pub fn attempts(&self) -> i64 {
        self.attempts
    }
}

/// What a batch did, for its done record.
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchOutcome {
    /// Rows the statement reported as affected.
    pub rows_affected: u64,
    /// Time spent in the batch's transaction.
    pub duration: Duration,
    /// Rows a transform skipped in this batch (summed per step by [`StateStore::status`]).
    pub rows_skipped: u64,
}

/// A row a transform could not handle, kept for a person to look at ("dead letter").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The row's key, encoded as batch keys are (see [`godwit_driver::KeyKind::encode`]). A
    /// key has at most one letter per run and step: recording it again replaces it.
    pub key: String,
    /// Why the row was not handled.
    pub error: String,
    /// The row as JSON text.
    pub row: String,
}

/// A stored dead letter, as [`StateStore::dead_letters`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterRow {
    /// The step whose transform refused the row.
    pub step: String,
    /// The number of the batch that recorded it last.
    pub batch: i64,
    /// The row's key, encoded.
    pub key: String,
    /// Why the row was not handled.
    pub error: String,
    /// The row as JSON text.
    pub row: String,
    /// When it was recorded, in milliseconds on the state database's clock.
    pub created_ms: i64,
}

/// Where a step stands once nothing is left to claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepCompletion {
    /// Every batch is done; the step is marked done.
    Done,
    /// A batch failed for good; the message and the database's code.
    Failed(String),
    /// Other workers still hold batches; look again later.
    Waiting,
}

/// The connection to the state database and the operations of the claim protocol.
pub struct StateStore {
    url: DbUrl,
    conn: tokio::sync::Mutex<Option<Box<dyn Conn>>>,
    dialect: Dialect,
    /// The tables' version when opened: a reader of older tables reads around what they lack.
    version: i64,
    /// The generation of each run this store began ([`StateStore::begin_run`]): its claims and
    /// records match only that generation. A run not in here (a reader, `godwit pause`) is
    /// written to unfenced.
    generations: std::sync::Mutex<HashMap<String, String>>,
}

/// A text parameter.
pub(crate) fn text(v: impl Into<String>) -> Value {
    Value::Text(v.into())
}

/// A text parameter, or NULL.
pub(crate) fn opt_text(v: Option<&str>) -> Value {
    v.map_or(Value::Null, |s| Value::Text(s.to_string()))
}

/// A column read as text, `None` for NULL.
pub(crate) fn get_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::Text(s) | Value::Decimal(s) => Some(s.clone()),
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::Int(n) => Some(n.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// A lease or delay as milliseconds to add to the state database's clock.
pub(crate) fn lease_ms(lease: Duration) -> Value {
    Value::Int(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 4))
}

impl StateStore {
    /// Opens the state database at `url`, creating the `godwit_*` tables when missing, or
    /// adopting `conn` when the caller already holds a connection to it.
    ///
    /// # Errors
    /// When the database cannot be reached or holds tables of a newer version.
    pub async fn open(url: &DbUrl, mut conn: Box<dyn Conn>) -> Result<StateStore> {
        schema::ensure(conn.as_mut()).await?;
        Ok(StateStore::new(url, conn, SCHEMA_VERSION))
    }

    /// Opens existing state tables for reading (`status`, dashboards): creates nothing and takes
    /// no write lock, so it answers at once even while a SQLite run holds the database's lock.
    pub async fn open_reader(url: &DbUrl, mut conn: Box<dyn Conn>) -> Result<StateStore> {
        let version = schema::check_version(conn.as_mut()).await?;
        Ok(StateStore::new(url, conn, version))
    }

    fn new(url: &DbUrl, conn: Box<dyn Conn>, version: i64) -> StateStore {
        StateStore {
            url: url.clone(),
            dialect: conn.dialect(),
            conn: tokio::sync::Mutex::new(Some(conn)),
            version,
            generations: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The generation this store began `run` in, if it did.
    fn generation(&self, run: &str) -> Option<String> {
        self.generations
            .lock()
            .ok()
            .and_then(|g| g.get(run).cloned())
    }

    fn set_generation(&self, run: &str, generation: String) {
        if let Ok(mut g) = self.generations.lock() {
            g.insert(run.to_string(), generation);
        }
    }

    /// The state database's dialect.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The state database's URL (redacted when displayed).
    pub fn url(&self) -> &DbUrl {
        &self.url
    }

    /// Runs `f` on the state connection, reconnecting first if an earlier call lost it, and
    /// dropping it when this call loses it.
    async fn with_conn<T>(
        &self,
        f: impl for<'c> FnOnce(
            &'c mut dyn Conn,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T>> + Send + 'c>,
        >,
    ) -> Result<T> {
        let mut guard = self.conn.lock().await;
        // The connection is taken out while in use and put back only when the operation ends.
        // If the caller drops this future half-way (an abort), the connection goes with it:
        // it may be inside a transaction that the next operation must not inherit.
        let mut conn = match guard.take() {
            Some(conn) => conn,
            None => reconnect(&self.url, &godwit_driver::ConnectOptions::default()).await?,
        };
        let result = f(conn.as_mut()).await;
        let keep = match &result {
            Ok(_) => true,
            Err(e) if e.kind() == ErrorKind::Connection => false,
            // The error may have left a transaction open; a failed rollback means the
            // connection is in a state we cannot trust.
            Err(_) => conn.rollback().await.is_ok(),
        };
        if keep {
            *guard = Some(conn);
        }
        result
    }

    /// Runs one statement, written with `?` placeholders, on the state connection; the number
    /// of rows it changed.
    async fn execute(&self, sql: impl Into<String>, params: Vec<Value>) -> Result<u64> {
        let sql = sql.into();
        self.with_conn(move |conn| {
            Box::pin(async move {
                let q = number_placeholders(&sql, conn.dialect());
                conn.execute(&q, &params).await
            })
        })
        .await
    }

    /// Runs one query, written with `?` placeholders, on the state connection.
    async fn query(&self, sql: impl Into<String>, params: Vec<Value>) -> Result<Vec<Row>> {
        let sql = sql.into();
        self.with_conn(move |conn| {
            Box::pin(async move {
                let q = number_placeholders(&sql, conn.dialect());
                conn.query(&q, &params).await
            })
        })
        .await
    }

    /// Writes a marker row into `godwit_meta` and returns its name, so that another connection
    /// can tell whether it sees these very tables.
    pub async fn write_marker(&self) -> Result<String> {
        let name = format!("probe:{}", uuid::Uuid::new_v4().simple());
        self.execute(
            "INSERT INTO godwit_meta (name, value) VALUES (?, ?)",
            vec![text(name.clone()), text(name.clone())],
        )
        .await?;
        Ok(name)
    }

    /// Removes a marker written by [`StateStore::write_marker`].
    pub async fn remove_marker(&self, name: &str) -> Result<()> {
        self.execute("DELETE FROM godwit_meta WHERE name = ?", vec![text(name)])
            .await
            .map(drop)
    }
}

async fn reconnect(url: &DbUrl, options: &godwit_driver::ConnectOptions) -> Result<Box<dyn Conn>> {
    godwit_db::connect(url, options).await
}
