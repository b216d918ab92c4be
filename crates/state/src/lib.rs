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
//!   by advancing the cursor with a compare-and-set on `next_batch` and inserting the batch row
//!   in the same short transaction, so two workers never claim overlapping ranges;
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

mod digest;
mod schema;
mod status;

use std::collections::HashMap;
use std::time::Duration;

use godwit_driver::{Conn, DbUrl, Dialect, Error, ErrorKind, Result, Value};

pub use crate::schema::SCHEMA_VERSION;
pub use crate::status::{RunStatus, StepStatus, WorkerStatus, LIVE_WINDOW_MS};

/// The database code of the error a process gets when the run it works on was restarted by
/// another process (`--restart`): its claims and records belong to a generation that is gone.
pub const RESTARTED: &str = "godwit-restarted";

/// Whether `error` says that the run was restarted by another process since this one began it
/// (see [`RESTARTED`]).
pub fn is_restarted(error: &Error) -> bool {
    error.code() == Some(RESTARTED)
}

fn restarted(run: &str) -> Error {
    Error::new(
        ErrorKind::Permanent,
        Some(RESTARTED.to_string()),
        format!(
            "the run {run:?} was restarted by another process (--restart); this process stopped \
             and applied nothing of the old plan since"
        ),
    )
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
    /// Rows per batch when the step was stored (1 for a one-off step), for the queue view.
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

/// Converts `?` placeholders to the dialect's; the SQL in this crate has no `?` elsewhere.
pub(crate) fn sql(dialect: Dialect, text: &str) -> String {
    if dialect != Dialect::Postgres {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    let mut n = 0;
    for c in text.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

/// `=` that is true for two NULLs: a cursor that has not moved yet is NULL.
fn null_safe_eq(d: Dialect) -> &'static str {
    match d {
        Dialect::Postgres => "IS NOT DISTINCT FROM",
        Dialect::MySql => "<=>",
        Dialect::Sqlite => "IS",
    }
}

fn text(v: impl Into<String>) -> Value {
    Value::Text(v.into())
}

fn opt_text(v: Option<&str>) -> Value {
    v.map_or(Value::Null, |s| Value::Text(s.to_string()))
}

fn get_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::Text(s) | Value::Decimal(s) => Some(s.clone()),
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::Int(n) => Some(n.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn lease_ms(lease: Duration) -> Value {
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

    /// Creates the run or resumes it. A stored run whose steps differ from `spec` is refused
    /// unless `restart` forgets its progress.
    ///
    /// # Errors
    /// [`ErrorKind::Config`] when the stored plan differs, naming the first step that changed.
    ///
    /// From then on this store works on the generation of the run it found or made: once
    /// another process restarts the run, this store's claims and records match nothing and
    /// fail with [`RESTARTED`].
    pub async fn begin_run(&self, spec: &RunSpec, restart: Restart) -> Result<RunStart> {
        let (name, spec) = (spec.name.clone(), spec.clone());
        let (start, generation) = self
            .with_conn(move |conn| {
                Box::pin(begin_run(conn, spec, restart, RunState::Running, false))
            })
            .await?;
        self.set_generation(&name, generation);
        Ok(start)
    }

    /// Stores a run for workers without starting it (`godwit submit`): created `pending`, or
    /// left as it is when a run of the same plan exists. Submitting twice, even at once,
    /// makes one run.
    ///
    /// # Errors
    /// [`ErrorKind::Config`] when a stored run of that name has different steps.
    pub async fn submit(&self, spec: &RunSpec) -> Result<RunStart> {
        let spec = spec.clone();
        self.with_conn(move |conn| {
            Box::pin(async move {
                let (start, _) =
                    begin_run(conn, spec, Restart::Resume, RunState::Pending, false).await?;
                Ok(start)
            })
        })
        .await
    }

    /// Marks a submitted run as started, when a worker first takes it up.
    pub async fn start_run(&self, run: &str) -> Result<()> {
        let run = run.to_string();
        self.with_conn(move |conn| {
            Box::pin(async move {
                let d = conn.dialect();
                let q = format!(
                    "UPDATE godwit_runs SET state = 'running', started_ms = COALESCE(started_ms, {}) \
                     WHERE run = ? AND state = 'pending'",
                    schema::now_ms(d)
                );
                conn.execute(&sql(d, &q), &[text(run)]).await?;
                Ok(())
            })
        })
        .await
    }

    /// Writes a marker row into `godwit_meta` and returns its name, so that another connection
    /// can tell whether it sees these very tables.
    pub async fn write_marker(&self) -> Result<String> {
        let name = format!("probe:{}", uuid::Uuid::new_v4().simple());
        let marker = name.clone();
        self.with_conn(move |conn| {
            Box::pin(async move {
                let d = conn.dialect();
                conn.execute(
                    &sql(d, "INSERT INTO godwit_meta (name, value) VALUES (?, ?)"),
                    &[text(marker.clone()), text(marker)],
                )
                .await
                .map(drop)
            })
        })
        .await?;
        Ok(name)
    }

    /// Removes a marker written by [`StateStore::write_marker`].
    pub async fn remove_marker(&self, name: &str) -> Result<()> {
        let name = name.to_string();
        self.with_conn(move |conn| {
            Box::pin(async move {
                let d = conn.dialect();
                conn.execute(
                    &sql(d, "DELETE FROM godwit_meta WHERE name = ?"),
                    &[text(name)],
                )
                .await
                .map(drop)
            })
        })
        .await
    }

    /// The names of every stored run, oldest first.
    pub async fn run_names(&self) -> Result<Vec<String>> {
        self.with_conn(|conn| {
            Box::pin(async move {
                let rows = conn
                    .query("SELECT run FROM godwit_runs ORDER BY created_ms, run", &[])
                    .await?;
                Ok(rows.iter().filter_map(|r| get_text(r.get(0))).collect())
            })
        })
        .await
    }

    /// The runs workers should look at: pending, running or paused, oldest first.
    pub async fn unfinished_runs(&self) -> Result<Vec<StoredRun>> {
        self.with_conn(|conn| {
            Box::pin(async move {
                let rows = conn
                    .query(
                        "SELECT run, state, plan_text FROM godwit_runs \
                         WHERE state IN ('pending', 'running', 'paused') ORDER BY created_ms, run",
                        &[],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| StoredRun {
                        name: get_text(r.get(0)).unwrap_or_default(),
                        state: RunState::parse(&get_text(r.get(1)).unwrap_or_default()),
                        plan_text: get_text(r.get(2)).unwrap_or_default(),
                    })
                    .collect())
            })
        })
        .await
    }

    /// Pauses, resumes or cancels a run, or re-queues its failed batches, on behalf of a user.
    /// Returns the run's state before, or `None` when no such run is stored. Workers notice
    /// the new state when they next read it (every few hundred milliseconds).
    pub async fn control(&self, run: &str, action: Control) -> Result<Option<RunState>> {
        let run = run.to_string();
        let before = self.run_state(&run).await?;
        let Some(before) = before else {
            return Ok(None);
        };
        if action == Control::Retry {
            // A done or cancelled run keeps its batches as they are.
            if matches!(
                before,
                RunState::Failed | RunState::Running | RunState::Pending | RunState::Paused
            ) {
                self.requeue_failed(&run).await?;
            }
            return Ok(Some(before));
        }
        self.with_conn(move |conn| {
            Box::pin(async move {
                let d = conn.dialect();
                let now = schema::now_ms(d);
                let q = match action {
                    Control::Pause => "UPDATE godwit_runs SET state = 'paused' \
                         WHERE run = ? AND state IN ('pending', 'running')"
                        .to_string(),
                    // A run no worker ever started goes back to waiting for one.
                    Control::Resume => "UPDATE godwit_runs SET state = \
                         CASE WHEN started_ms IS NULL THEN 'pending' ELSE 'running' END \
                         WHERE run = ? AND state = 'paused'"
                        .to_string(),
                    Control::Cancel => format!(
                        "UPDATE godwit_runs SET state = 'cancelled', finished_ms = {now} \
                         WHERE run = ? AND state IN ('pending', 'running', 'paused', 'failed')"
                    ),
                    Control::Retry => unreachable!("handled above"),
                };
                conn.execute(&sql(d, &q), &[text(run)]).await?;
                Ok(Some(before))
            })
        })
        .await
    }

    /// Records that `beat.worker` is alive and what it holds; called every second or so.
    pub async fn heartbeat(&self, beat: &WorkerBeat) -> Result<()> {
        let beat = beat.clone();
        self.with_conn(move |conn| {
            Box::pin(async move {
                let d = conn.dialect();
                let now = schema::now_ms(d);
                let updated = conn
                    .execute(
                        &sql(
                            d,
                            &format!(
                                "UPDATE godwit_workers SET heartbeat_ms = {now}, batches = ?, state = ? \
                                 WHERE worker = ?"
                            ),
                        ),
                        &[
                            Value::Int(beat.batches),
                            text(beat.state.clone()),
                            text(beat.worker.clone()),
                        ],
                    )
                    .await?;
                if updated == 0 {
                    // A worker's first beat. Rows of workers silent for a day go at the same
                    // time, so the table does not grow with every pod that ever ran.
                    conn.execute(
                        &sql(
                            d,
                            &format!("DELETE FROM godwit_workers WHERE heartbeat_ms < {now} - 86400000"),
                        ),
                        &[],
                    )
                    .await?;
                    conn.execute(
                        &sql(
                            d,
                            &format!(
                                "INSERT INTO godwit_workers (worker, run, host, pid, version, started_ms, \
                                 heartbeat_ms, batches, state) VALUES (?, ?, ?, ?, ?, {now}, {now}, ?, ?)"
                            ),
                        ),
                        &[
                            text(beat.worker),
                            text(beat.run),
                            text(beat.host),
                            Value::Int(beat.pid),
                            text(beat.version),
                            Value::Int(beat.batches),
                            text(beat.state),
                        ],
                    )
                    .await?;
                }
                Ok(())
            })
        })
        .await
    }

    /// Forgets a worker that is leaving.
    pub async fn remove_worker(&self, worker: &str) -> Result<()> {
        let worker = worker.to_string();
        self.with_conn(move |conn| {
            Box::pin(async move {
                let d = conn.dialect();
                conn.execute(
                    &sql(d, "DELETE FROM godwit_workers WHERE worker = ?"),
                    &[text(worker)],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    /// Reads a run's state.
    ///
    /// # Errors
    /// [`RESTARTED`] when this store began the run and another process restarted it since.
    pub async fn run_state(&self, run: &str) -> Result<Option<RunState>> {
        let (run, mine) = (run.to_string(), self.generation(run));
        self.with_conn(move |conn| {
            Box::pin(async move {
                let d = conn.dialect();
                let rows = conn
                    .query(
                        &sql(d, "SELECT state, generation FROM godwit_runs WHERE run = ?"),
                        &[text(run.clone())],
                    )
                    .await?;
                let Some(row) = rows.first() else {
                    return match mine {
                        Some(_) => Err(restarted(&run)),
                        None => Ok(None),
                    };
                };
                if mine.is_some() && get_text(row.get(1)) != mine {
                    return Err(restarted(&run));
                }
                Ok(get_text(row.get(0)).map(|s| RunState::parse(&s)))
            })
        })
        .await
    }

    /// Sets a run's state; `error` is kept for `failed`.
    pub async fn set_run_state(
        &self,
        run: &str,
        state: RunState,
        error: Option<&str>,
    ) -> Result<()> {
        let (run, error) = (run.to_string(), error.map(str::to_string));
        let mine = self.generation(&run);
        self.with_conn(move |conn| {
            Box::pin(async move {
                let d = conn.dialect();
                let now = schema::now_ms(d);
                let finished = matches!(
                    state,
                    RunState::Done | RunState::Failed | RunState::Cancelled
                );
                let fence = if mine.is_some() { " AND generation = ?" } else { "" };
                let q = format!(
                    "UPDATE godwit_runs SET state = ?, error = ?, finished_ms = {} WHERE run = ?{fence}",
                    if finished { now } else { "NULL" }
                );
                let mut params = vec![text(state.as_str()), opt_text(error.as_deref()), text(run.clone())];
                params.extend(mine.clone().map(text));
                if conn.execute(&sql(d, &q), &params).await? == 0 && mine.is_some() {
                    ensure_generation(conn, &run, mine.as_deref()).await?;
                }
                Ok(())
            })
        })
        .await
    }

    /// Reads a step's cursor record.
    pub async fn step_record(&self, run: &str, step: &str) -> Result<StepRecord> {
        let (run, step) = (run.to_string(), step.to_string());
        self.with_conn(move |conn| Box::pin(read_step(conn, run, step)))
            .await
    }

    /// Fixes a step's key kind and upper key once; whoever comes first wins and everyone reads
    /// the winner's values back. Also marks the step running. `empty` marks a chunked step with
    /// no matching row as walked already.
    pub async fn init_step(
        &self,
        run: &str,
        step: &str,
        key_kind: Option<&str>,
        upper_key: Option<&str>,
        empty: bool,
    ) -> Result<StepRecord> {
        let (run, step) = (run.to_string(), step.to_string());
        let (key_kind, upper_key) = (key_kind.map(str::to_string), upper_key.map(str::to_string));
        let mine = self.generation(&run);
        self.with_conn(move |conn| {
            Box::pin(async move {
                let d = conn.dialect();
                // The upper key comes from this process's plan (its filter): never fix it for
                // a generation that runs another plan.
                let q = format!(
                    "UPDATE godwit_steps SET initialized = 1, key_kind = ?, upper_key = ?, \
                     exhausted = ?, state = 'running', started_ms = {} \
                     WHERE run = ? AND step = ? AND initialized = 0{}",
                    schema::now_ms(d),
                    fence(mine.is_some())
                );
                let exhausted = Value::Int(i64::from(empty));
                let mut params = vec![
                    opt_text(key_kind.as_deref()),
                    opt_text(upper_key.as_deref()),
                    exhausted,
                    text(run.clone()),
                    text(step.clone()),
                ];
                params.extend(fence_params(&run, mine.as_deref()));
                conn.execute(&sql(d, &q), &params).await?;
                ensure_generation(conn, &run, mine.as_deref()).await?;
                read_step(conn, run, step).await
            })
        })
        .await
    }

    /// Stores a step's row-count estimate for progress and ETA.
    pub async fn set_rows_total(&self, run: &str, step: &str, rows_total: i64) -> Result<()> {
        let (run, step) = (run.to_string(), step.to_string());
        let mine = self.generation(&run);
        self.with_conn(move |conn| {
            Box::pin(async move {
                let d = conn.dialect();
                let q = format!(
                    "UPDATE godwit_steps SET rows_total = ? WHERE run = ? AND step = ?{}",
                    fence(mine.is_some())
                );
                let mut params = vec![Value::Int(rows_total), text(run.clone()), text(step)];
                params.extend(fence_params(&run, mine.as_deref()));
                conn.execute(&sql(d, &q), &params).await?;
                Ok(())
            })
        })
        .await
    }

    /// Takes over a batch that was released, or whose holder's lease ran out. Returns `None`
    /// when there is none.
    pub async fn claim_abandoned(
        &self,
        run: &str,
        step: &str,
        worker: &str,
        lease: Duration,
    ) -> Result<Option<ClaimedBatch>> {
        let (run, step, worker) = (run.to_string(), step.to_string(), worker.to_string());
        let mine = self.generation(&run);
        self.with_conn(move |conn| Box::pin(claim_abandoned(conn, run, mine, step, worker, lease)))
            .await
    }

    /// Claims a new batch by advancing the step's cursor from `record` (which must be the
    /// state just read) to `batch.end_key`. Returns `None` when another worker advanced it first;
    /// read the record again and retry.
    pub async fn claim_new(
        &self,
        run: &str,
        step: &str,
        record: &StepRecord,
        batch: NewBatch,
        worker: &str,
        lease: Duration,
    ) -> Result<Option<ClaimedBatch>> {
        let claimed = self
            .claim_new_batches(run, step, record, vec![batch], worker, lease)
            .await?;
        Ok(claimed.and_then(|mut batches| batches.pop()))
    }

    /// Claims the consecutive ranges `batches` at once, advancing the step's cursor past the
    /// last of them in one compare-and-set: one claim, one commit and one race for the cursor
    /// row for several batches. Returns `None` when another worker advanced the cursor first.
    ///
    /// On PostgreSQL the claim commits asynchronously: a claim lost in a server crash loses
    /// nothing that committed after it, since the write-ahead log replays in order; its batch
    /// is then claimed again.
    pub async fn claim_new_batches(
        &self,
        run: &str,
        step: &str,
        record: &StepRecord,
        batches: Vec<NewBatch>,
        worker: &str,
        lease: Duration,
    ) -> Result<Option<Vec<ClaimedBatch>>> {
        if batches.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let (run, step, worker) = (run.to_string(), step.to_string(), worker.to_string());
        let (expected, expected_cursor) = (record.next_batch, record.cursor_key.clone());
        let mine = self.generation(&run);
        self.with_conn(move |conn| {
            Box::pin(async move {
                let exhausts = batches.last().is_some_and(|b| b.last);
                let claims: Vec<ClaimedBatch> = batches
                    .into_iter()
                    .enumerate()
                    .map(|(i, batch)| ClaimedBatch {
                        run: run.clone(),
                        generation: mine.clone(),
                        step: step.clone(),
                        batch: expected + i as i64,
                        token: uuid::Uuid::new_v4().simple().to_string(),
                        start_key: batch.start_key,
                        end_key: batch.end_key,
                        n_rows: batch.n_rows,
                        attempts: 0,
                    })
                    .collect();
                let claimed = claim_in_one_transaction(
                    conn,
                    &run,
                    mine.as_deref(),
                    &step,
                    expected,
                    expected_cursor.as_deref(),
                    &claims,
                    exhausts,
                    &worker,
                    lease,
                )
                .await?;
                Ok(claimed.then_some(claims))
            })
        })
        .await
    }

    /// Marks the walk of a step finished, if the cursor is still where `record` saw it.
    pub async fn mark_exhausted(&self, run: &str, step: &str, record: &StepRecord) -> Result<()> {
        let (run, step, expected) = (run.to_string(), step.to_string(), record.next_batch);
        let cursor = record.cursor_key.clone();
        let mine = self.generation(&run);
        self.with_conn(move |conn| {
            Box::pin(async move {
                let d = conn.dialect();
                let q = format!(
                    "UPDATE godwit_steps SET exhausted = 1 \
                     WHERE run = ? AND step = ? AND next_batch = ? AND cursor_key {} ?{}",
                    null_safe_eq(d),
                    fence(mine.is_some())
                );
                let mut params = vec![
                    text(run.clone()),
                    text(step),
                    Value::Int(expected),
                    opt_text(cursor.as_deref()),
                ];
                params.extend(fence_params(&run, mine.as_deref()));
                if conn.execute(&sql(d, &q), &params).await? == 0 {
                    ensure_generation(conn, &run, mine.as_deref()).await?;
                }
                Ok(())
            })
        })
        .await
    }

    /// Extends the lease of a batch this worker still holds. Returns `false` when the batch was
    /// taken over (its done record will then be refused).
    pub async fn extend_lease(&self, batch: &ClaimedBatch, lease: Duration) -> Result<bool> {
        Ok(self.extend_leases(&[batch], lease).await? == 1)
    }

    /// Extends the leases of `batches` (claims of one step) that still carry their tokens, in
    /// one statement: what the heartbeat does for the batches a process runs and has claimed
    /// ahead. Returns how many were extended.
    pub async fn extend_leases(&self, batches: &[&ClaimedBatch], lease: Duration) -> Result<u64> {
        let Some(first) = batches.first() else {
            return Ok(0);
        };
        let (run, step) = (first.run.clone(), first.step.clone());
        let tokens: Vec<String> = batches.iter().map(|b| b.token.clone()).collect();
        self.with_conn(move |conn| {
            Box::pin(async move {
                let d = conn.dialect();
                let marks = vec!["?"; tokens.len()].join(", ");
                let q = format!(
                    "UPDATE godwit_batches SET lease_until_ms = {} + ? \
                     WHERE run = ? AND step = ? AND state = 'claimed' AND token IN ({marks})",
                    schema::now_ms(d)
                );
                let mut params = vec![lease_ms(lease), text(run), text(step)];
                params.extend(tokens.into_iter().map(text));
                conn.execute(&sql(d, &q), &params).await
            })
        })
        .await
    }

    /// Records a batch done on `conn`, inside the transaction the caller holds open there, so
    /// that the record commits with the batch's writes. Returns `false` when the batch no longer
    /// carries this worker's token (its lease ran out and another worker took it): the caller
    /// must then roll back.
    ///
    /// Pass the batch's own connection when the state lives in the plan's database, or
    /// [`StateStore::record_done_here`] otherwise.
    pub async fn record_done(
        conn: &mut dyn Conn,
        batch: &ClaimedBatch,
        outcome: BatchOutcome,
    ) -> Result<bool> {
        let d = conn.dialect();
        let q = format!(
            "UPDATE godwit_batches SET state = 'done', finished_ms = {}, duration_ms = ?, \
             rows_affected = ?, rows_skipped = ?, error = NULL, error_code = NULL \
             WHERE run = ? AND step = ? AND batch = ? AND token = ? AND state = 'claimed'{}",
            schema::now_ms(d),
            fence(batch.generation.is_some())
        );
        let mut params = vec![
            Value::Int(i64::try_from(outcome.duration.as_millis()).unwrap_or(i64::MAX)),
            Value::Int(i64::try_from(outcome.rows_affected).unwrap_or(i64::MAX)),
            Value::Int(i64::try_from(outcome.rows_skipped).unwrap_or(i64::MAX)),
            text(batch.run.clone()),
            text(batch.step.clone()),
            Value::Int(batch.batch),
            text(batch.token.clone()),
        ];
        params.extend(fence_params(&batch.run, batch.generation.as_deref()));
        let n = conn.execute(&sql(d, &q), &params).await?;
        Ok(n == 1)
    }

    /// Records a batch done on the state store's own connection, in its own transaction: the
    /// at-least-once path for a state database separate from the plan's.
    pub async fn record_done_here(
        &self,
        batch: &ClaimedBatch,
        outcome: BatchOutcome,
    ) -> Result<bool> {
        let batch = batch.clone();
        self.with_conn(move |conn| {
            Box::pin(async move { Self::record_done(conn, &batch, outcome).await })
        })
        .await
    }

    /// Records rows a batch's transform could not handle ("dead letters") on `conn`, inside the
    /// transaction the caller holds open there, so that they commit (or roll back) with the
    /// batch's writes and its done record: pass the batch's own connection when the state lives
    /// in the plan's database, or use [`StateStore::record_dead_letters_here`] otherwise.
    ///
    /// A key already recorded for the run and step (a batch run again after a crash or a retry)
    /// has its letter replaced: error, row, batch and time. Within `letters` the last letter for
    /// a key wins. Fencing is [`StateStore::record_done`]'s: a worker that lost its batch finds
    /// out there and rolls these back with the rest.
    ///
    /// One multi-row statement per 8,191 letters (4,095 on SQLite) or per MiB of text (two on
    /// MySQL, which first looks for digest clashes); nothing at all for no letters.
    ///
    /// # Errors
    /// Database errors, and a key whose SHA-256 digest is already held by a different key's
    /// letter (never overwritten).
    pub async fn record_dead_letters(
        conn: &mut dyn Conn,
        batch: &ClaimedBatch,
        letters: &[DeadLetter],
    ) -> Result<()> {
        // The last letter for each key, in the order given: PostgreSQL refuses to update one
        // row twice in a statement, and the latest recording is the one kept anyway.
        let mut last = HashMap::with_capacity(letters.len());
        for (i, letter) in letters.iter().enumerate() {
            last.insert(letter.key.as_str(), i);
        }
        let letters: Vec<Letter> = letters
            .iter()
            .enumerate()
            .filter(|(i, letter)| last.get(letter.key.as_str()) == Some(i))
            .map(|(i, letter)| Letter {
                seq: i as i64,
                digest: digest::sha256_hex(letter.key.as_bytes()),
                letter,
            })
            .collect();
        let max_rows = match conn.dialect() {
            Dialect::Sqlite => 32_766,
            Dialect::Postgres | Dialect::MySql => 65_535,
        } / LETTER_PARAMS;
        let mut rest = &letters[..];
        while !rest.is_empty() {
            let (mut n, mut bytes) = (0, 0);
            while n < rest.len() && n < max_rows {
                let size = rest[n].size();
                if n > 0 && bytes + size > LETTER_BYTES {
                    break;
                }
                bytes += size;
                n += 1;
            }
            let (chunk, tail) = rest.split_at(n);
            write_letters(conn, batch, chunk).await?;
            rest = tail;
        }
        Ok(())
    }

    /// [`StateStore::record_dead_letters`] on the state store's own connection, in a
    /// transaction of its own: the at-least-once path for a state database separate from the
    /// plan's (call it once the batch has committed).
    pub async fn record_dead_letters_here(
        &self,
        batch: &ClaimedBatch,
        letters: &[DeadLetter],
    ) -> Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        let (batch, letters) = (batch.clone(), letters.to_vec());
        self.with_conn(move |conn| {
            Box::pin(async move {
                conn.begin(Default::default()).await?;
                Self::record_dead_letters(conn, &batch, &letters).await?;
                conn.commit().await
            })
        })
        .await
    }

    /// Records a failed attempt. With `retry_after` the batch is released for anyone to claim
    /// once that delay has passed (the backoff); without, it is failed for good.
    pub async fn record_failure(
        &self,
        batch: &ClaimedBatch,
        error: &Error,
        retry_after: Option<Duration>,
    ) -> Result<()> {
        let batch = batch.clone();
        let (code, message) = (
            error.code().map(str::to_string),
            error.message().to_string(),
        );
        self.with_conn(move |conn| {
            Box::pin(async move {
                let d = conn.dialect();
                let now = schema::now_ms(d);
                let (state, not_before) = match retry_after {
                    Some(delay) => ("pending", lease_ms(delay)),
                    None => ("failed", Value::Int(0)),
                };
                let q = format!(
                    "UPDATE godwit_batches SET state = ?, token = NULL, lease_until_ms = {now} + ?, \
                     attempts = attempts + 1, error_code = ?, error = ?, finished_ms = {now} \
                     WHERE run = ? AND step = ? AND batch = ? AND token = ? AND state = 'claimed'{}",
                    fence(batch.generation.is_some())
                );
                let mut params = vec![
                    text(state),
                    not_before,
                    opt_text(code.as_deref()),
                    text(message),
                    text(batch.run.clone()),
                    text(batch.step),
                    Value::Int(batch.batch),
                    text(batch.token),
                ];
                params.extend(fence_params(&batch.run, batch.generation.as_deref()));
                conn.execute(&sql(d, &q), &params).await?;
                Ok(())
            })
        })
        .await
    }

    /// Gives a claimed batch back without counting an attempt, so another worker (or a re-run)
    /// takes it at once instead of waiting for the lease.
    pub async fn release(&self, batch: &ClaimedBatch) -> Result<()> {
        let batch = batch.clone();
        self.with_conn(move |conn| {
            Box::pin(async move {
                let d = conn.dialect();
                let q = format!(
                    "UPDATE godwit_batches SET state = 'pending', token = NULL, lease_until_ms = NULL \
                     WHERE run = ? AND step = ? AND batch = ? AND token = ? AND state = 'claimed'{}",
                    fence(batch.generation.is_some())
                );
                let mut params = vec![
                    text(batch.run.clone()),
                    text(batch.step),
                    Value::Int(batch.batch),
                    text(batch.token),
                ];
                params.extend(fence_params(&batch.run, batch.generation.as_deref()));
                conn.execute(&sql(d, &q), &params).await?;
                Ok(())
            })
        })
        .await
    }

    /// Gives back every batch of the run that `worker` still holds. Called when the worker's
    /// batches have all ended (committed, rolled back or abandoned), so that nothing it claimed
    /// waits for a lease to run out.
    pub async fn release_worker(&self, run: &str, worker: &str) -> Result<u64> {
        let (run, worker) = (run.to_string(), worker.to_string());
        self.with_conn(move |conn| {
            Box::pin(async move {
                let d = conn.dialect();
                conn.execute(
                    &sql(
                        d,
                        "UPDATE godwit_batches SET state = 'pending', token = NULL, lease_until_ms = NULL \
                         WHERE run = ? AND worker = ? AND state = 'claimed'",
                    ),
                    &[text(run), text(worker)],
                )
                .await
            })
        })
        .await
    }

    /// Decides whether a step whose walk is exhausted is finished, and marks it done or failed.
    pub async fn complete_step(&self, run: &str, step: &str) -> Result<StepCompletion> {
        let (run, step) = (run.to_string(), step.to_string());
        self.with_conn(move |conn| Box::pin(complete_step(conn, run, step)))
            .await
    }

    /// Marks a step failed with the message of the batch that failed it.
    pub async fn fail_step(&self, run: &str, step: &str, message: &str) -> Result<()> {
        let (run, step, message) = (run.to_string(), step.to_string(), message.to_string());
        let mine = self.generation(&run);
        self.with_conn(move |conn| {
            Box::pin(async move {
                let d = conn.dialect();
                let q = format!(
                    "UPDATE godwit_steps SET state = 'failed', error = ?, finished_ms = {} \
                     WHERE run = ? AND step = ? AND state <> 'done'{}",
                    schema::now_ms(d),
                    fence(mine.is_some())
                );
                let mut params = vec![text(message), text(run.clone()), text(step)];
                params.extend(fence_params(&run, mine.as_deref()));
                conn.execute(&sql(d, &q), &params).await?;
                Ok(())
            })
        })
        .await
    }

    /// Puts failed batches of a run back in the queue and the run back to running; a re-run
    /// of a failed plan retries what failed.
    pub async fn requeue_failed(&self, run: &str) -> Result<u64> {
        let run = run.to_string();
        self.with_conn(move |conn| {
            Box::pin(async move {
                let d = conn.dialect();
                let n = conn
                    .execute(
                        &sql(d, "UPDATE godwit_batches SET state = 'pending', attempts = 0, lease_until_ms = NULL WHERE run = ? AND state = 'failed'"),
                        &[text(run.clone())],
                    )
                    .await?;
                conn.execute(
                    &sql(d, "UPDATE godwit_steps SET state = 'running', error = NULL WHERE run = ? AND state = 'failed'"),
                    &[text(run.clone())],
                )
                .await?;
                conn.execute(
                    &sql(d, "UPDATE godwit_runs SET state = 'running', error = NULL, finished_ms = NULL WHERE run = ? AND state = 'failed'"),
                    &[text(run)],
                )
                .await?;
                Ok(n)
            })
        })
        .await
    }

    /// The progress of a run, as `godwit status` shows it; `None` when no such run is stored.
    pub async fn status(&self, run: &str) -> Result<Option<RunStatus>> {
        let (run, known) = (run.to_string(), self.version);
        self.with_conn(move |conn| {
            Box::pin(async move {
                // Tables from before version 3 have no skipped rows to sum.
                let skipped = schema::at_least(conn, known, 3).await?;
                status::read(conn, run, skipped).await
            })
        })
        .await
    }

    /// The dead letters of `run` (of one step, with `step`), at most `limit` of them, ordered
    /// by step name, then by batch number, then in the order they were recorded (within one
    /// call to [`StateStore::record_dead_letters`], the order of its slice). A letter recorded
    /// again takes the place of its latest recording. Tables from before version 3 have none:
    /// a reader of them gets an empty list.
    pub async fn dead_letters(
        &self,
        run: &str,
        step: Option<&str>,
        limit: Option<u64>,
    ) -> Result<Vec<DeadLetterRow>> {
        let (run, step, known) = (run.to_string(), step.map(str::to_string), self.version);
        self.with_conn(move |conn| {
            Box::pin(async move {
                // A reader creates nothing; older tables have no letters.
                if !schema::at_least(conn, known, 3).await? {
                    return Ok(Vec::new());
                }
                let d = conn.dialect();
                let mut q = "SELECT step, batch, key_text, error, row_json, created_ms \
                             FROM godwit_dead_letters WHERE run = ?"
                    .to_string();
                let mut params = vec![text(run)];
                if let Some(step) = step {
                    q.push_str(" AND step = ?");
                    params.push(text(step));
                }
                // The order of the godwit_dead_letters_order index, so that a limit reads no
                // more than it returns; the digest breaks the last ties.
                q.push_str(" ORDER BY step, batch, created_ms, seq, key_digest");
                if let Some(limit) = limit {
                    q.push_str(&format!(" LIMIT {}", limit.min(i64::MAX as u64)));
                }
                let rows = conn.query(&sql(d, &q), &params).await?;
                Ok(rows
                    .iter()
                    .map(|r| DeadLetterRow {
                        step: get_text(r.get(0)).unwrap_or_default(),
                        batch: r.get(1).as_i64().unwrap_or_default(),
                        key: get_text(r.get(2)).unwrap_or_default(),
                        error: get_text(r.get(3)).unwrap_or_default(),
                        row: get_text(r.get(4)).unwrap_or_default(),
                        created_ms: r.get(5).as_i64().unwrap_or_default(),
                    })
                    .collect())
            })
        })
        .await
    }

    /// Whether every step in `steps` is done.
    pub async fn steps_done(&self, run: &str) -> Result<Vec<(String, String)>> {
        let run = run.to_string();
        self.with_conn(move |conn| {
            Box::pin(async move {
                let d = conn.dialect();
                let rows = conn
                    .query(
                        &sql(
                            d,
                            "SELECT step, state FROM godwit_steps WHERE run = ? ORDER BY position",
                        ),
                        &[text(run)],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| {
                        (
                            get_text(r.get(0)).unwrap_or_default(),
                            get_text(r.get(1)).unwrap_or_default(),
                        )
                    })
                    .collect())
            })
        })
        .await
    }
}

async fn reconnect(url: &DbUrl, options: &godwit_driver::ConnectOptions) -> Result<Box<dyn Conn>> {
    godwit_db::connect(url, options).await
}

/// Parameters a dead letter binds: run, step, batch, key digest, key, seq, error, row.
const LETTER_PARAMS: usize = 8;

/// The most text bound in one statement of dead letters (one larger letter goes alone): MySQL
/// sends a statement's parameters in one packet, and `max_allowed_packet` can be as small as
/// 4 MiB.
const LETTER_BYTES: usize = 1 << 20;

/// A dead letter about to be written: its position in the caller's slice, for the listing's
/// order, and its key's digest.
struct Letter<'a> {
    seq: i64,
    digest: String,
    letter: &'a DeadLetter,
}

impl Letter<'_> {
    fn size(&self) -> usize {
        self.letter.key.len() + self.letter.error.len() + self.letter.row.len()
    }
}

fn digest_clash(batch: &ClaimedBatch, key: Option<&str>) -> Error {
    let key = key.map(|k| format!(" {k:?}")).unwrap_or_default();
    Error::permanent(format!(
        "step {:?}: the dead letter of key{key} was not recorded: the SHA-256 digest of its key \
         is held by another key's letter in godwit_dead_letters",
        batch.step
    ))
}

/// Writes one chunk of dead letters in one multi-row upsert that replaces a key's earlier
/// letter only when the stored key is the same text, not merely the same digest.
async fn write_letters(
    conn: &mut dyn Conn,
    batch: &ClaimedBatch,
    chunk: &[Letter<'_>],
) -> Result<()> {
    let d = conn.dialect();
    if d == Dialect::MySql {
        // MySQL counts a row its ON DUPLICATE KEY UPDATE left alone as found, like an insert,
        // so a clash cannot be told from the count: look for one first. Usually nothing is
        // stored yet and nothing comes back.
        let q = format!(
            "SELECT key_digest, key_text FROM godwit_dead_letters \
             WHERE run = ? AND step = ? AND key_digest IN ({})",
            vec!["?"; chunk.len()].join(", ")
        );
        let mut params = vec![text(batch.run.clone()), text(batch.step.clone())];
        params.extend(chunk.iter().map(|l| text(l.digest.clone())));
        for row in conn.query(&q, &params).await? {
            let (digest, key) = (get_text(row.get(0)), get_text(row.get(1)));
            if let Some(l) = chunk.iter().find(|l| Some(&l.digest) == digest.as_ref()) {
                if Some(&l.letter.key) != key.as_ref() {
                    return Err(digest_clash(batch, Some(&l.letter.key)));
                }
            }
        }
    }
    let now = schema::now_ms(d);
    let upsert = match d {
        Dialect::Postgres | Dialect::Sqlite => {
            "ON CONFLICT (run, step, key_digest) DO UPDATE SET batch = excluded.batch, \
             seq = excluded.seq, error = excluded.error, row_json = excluded.row_json, \
             created_ms = excluded.created_ms \
             WHERE godwit_dead_letters.key_text = excluded.key_text"
        }
        // key_text is never assigned, so every condition reads the stored key.
        Dialect::MySql => {
            "ON DUPLICATE KEY UPDATE \
             batch = IF(key_text = VALUES(key_text), VALUES(batch), batch), \
             seq = IF(key_text = VALUES(key_text), VALUES(seq), seq), \
             error = IF(key_text = VALUES(key_text), VALUES(error), error), \
             row_json = IF(key_text = VALUES(key_text), VALUES(row_json), row_json), \
             created_ms = IF(key_text = VALUES(key_text), VALUES(created_ms), created_ms)"
        }
    };
    let q = format!(
        "INSERT INTO godwit_dead_letters (run, step, batch, key_digest, key_text, seq, error, \
         row_json, created_ms) VALUES {} {upsert}",
        vec![format!("(?, ?, ?, ?, ?, ?, ?, ?, {now})"); chunk.len()].join(", ")
    );
    let mut params = Vec::with_capacity(chunk.len() * LETTER_PARAMS);
    for l in chunk {
        params.extend([
            text(batch.run.clone()),
            text(batch.step.clone()),
            Value::Int(batch.batch),
            text(l.digest.clone()),
            text(l.letter.key.clone()),
            Value::Int(l.seq),
            text(l.letter.error.clone()),
            text(l.letter.row.clone()),
        ]);
    }
    let written = conn.execute(&sql(d, &q), &params).await?;
    // PostgreSQL and SQLite count inserted and replaced rows, not those the key check kept.
    if d != Dialect::MySql && written != chunk.len() as u64 {
        return Err(digest_clash(batch, None));
    }
    Ok(())
}

/// Advances the cursor past `claims` if it is still at `expected`, and inserts their rows, in
/// one transaction: one statement on PostgreSQL (committed asynchronously), an UPDATE and a
/// multi-row INSERT elsewhere (MySQL has no data-modifying CTE).
#[allow(clippy::too_many_arguments)]
async fn claim_in_one_transaction(
    conn: &mut dyn Conn,
    run: &str,
    generation: Option<&str>,
    step: &str,
    expected: i64,
    expected_cursor: Option<&str>,
    claims: &[ClaimedBatch],
    exhausts: bool,
    worker: &str,
    lease: Duration,
) -> Result<bool> {
    let d = conn.dialect();
    let now = schema::now_ms(d);
    let n = claims.len() as i64;
    let cursor = claims.last().and_then(|c| c.end_key.clone());
    // Parameters: the cursor update's, then the rows'.
    let mut params = vec![
        opt_text(cursor.as_deref()),
        Value::Int(n),
        Value::Int(i64::from(exhausts)),
        text(run),
        text(step),
        Value::Int(expected),
        text(worker),
        lease_ms(lease),
        opt_text(expected_cursor),
    ];
    // On PostgreSQL the cursor moves only while the run is still of this generation (one
    // statement); elsewhere a locking read of the run's row comes first, which a restart's
    // delete of that row waits for (and the other way round).
    let fenced = match (d, generation) {
        (Dialect::Postgres, Some(generation)) => {
            params.push(text(generation));
            " AND EXISTS (SELECT 1 FROM godwit_runs g WHERE g.run = $4 AND g.generation = $10)"
        }
        _ => "",
    };
    // PostgreSQL's VALUES rows, numbered after the parameters before them.
    let mut rows = Vec::with_capacity(claims.len());
    for claim in claims {
        if d == Dialect::Postgres {
            let at = params.len();
            rows.push(format!(
                "(${}::bigint, ${}, ${}, ${}::bigint, ${})",
                at + 1,
                at + 2,
                at + 3,
                at + 4,
                at + 5
            ));
        }
        match d {
            Dialect::Postgres => params.extend([
                Value::Int(claim.batch),
                opt_text(claim.start_key.as_deref()),
                opt_text(claim.end_key.as_deref()),
                Value::Int(claim.n_rows),
                text(claim.token.clone()),
            ]),
            Dialect::MySql | Dialect::Sqlite => params.extend([
                text(run),
                text(step),
                Value::Int(claim.batch),
                text(claim.token.clone()),
                text(worker),
                lease_ms(lease),
                opt_text(claim.start_key.as_deref()),
                opt_text(claim.end_key.as_deref()),
                Value::Int(claim.n_rows),
            ]),
        }
    }
    if d == Dialect::Postgres {
        let q = format!(
            "WITH moved AS ( \
               UPDATE godwit_steps SET cursor_key = $1, next_batch = next_batch + $2, exhausted = $3 \
               WHERE run = $4 AND step = $5 AND next_batch = $6 AND exhausted = 0 \
                 AND cursor_key IS NOT DISTINCT FROM $9::text{fenced} RETURNING run) \
             INSERT INTO godwit_batches (run, step, batch, start_key, end_key, n_rows, state, token, \
               worker, lease_until_ms, attempts, claimed_ms) \
             SELECT $4, $5, v.batch, v.start_key, v.end_key, v.n_rows, 'claimed', v.token, $7, \
               {now} + $8, 0, {now} \
             FROM moved, (VALUES {}) AS v (batch, start_key, end_key, n_rows, token)",
            rows.join(", ")
        );
        // The cursor row stays locked until the commit returns: waiting for the disk there
        // would make every other claimer wait too. The claim that ends the walk commits
        // synchronously (once per step), flushing the others: a step is never found walked
        // to its end while some of its batches can still vanish in a crash.
        conn.begin(godwit_driver::TxOptions {
            async_commit: !exhausts,
            ..Default::default()
        })
        .await?;
        let inserted = conn.execute(&q, &params).await?;
        conn.commit().await?;
        if inserted == 0 {
            ensure_generation(conn, run, generation).await?;
        }
        return Ok(inserted == n as u64);
    }
    conn.begin(godwit_driver::TxOptions::default()).await?;
    if let Some(generation) = generation {
        let q = match d {
            Dialect::MySql => "SELECT generation FROM godwit_runs WHERE run = ? LOCK IN SHARE MODE",
            // The transaction holds SQLite's write lock already.
            Dialect::Postgres | Dialect::Sqlite => {
                "SELECT generation FROM godwit_runs WHERE run = ?"
            }
        };
        let rows = conn.query(&sql(d, q), &[text(run)]).await?;
        if rows.first().and_then(|r| get_text(r.get(0))).as_deref() != Some(generation) {
            conn.rollback().await?;
            return Err(restarted(run));
        }
    }
    let moved = conn
        .execute(
            &sql(
                d,
                &format!(
                    "UPDATE godwit_steps SET cursor_key = ?, next_batch = next_batch + ?, exhausted = ? \
                     WHERE run = ? AND step = ? AND next_batch = ? AND exhausted = 0 \
                     AND cursor_key {} ?",
                    null_safe_eq(d)
                ),
            ),
            &[&params[..6], &params[8..9]].concat(),
        )
        .await?;
    if moved != 1 {
        conn.rollback().await?;
        return Ok(false);
    }
    let q = format!(
        "INSERT INTO godwit_batches (run, step, batch, token, worker, state, lease_until_ms, \
         attempts, claimed_ms, start_key, end_key, n_rows) VALUES {}",
        claims
            .iter()
            .map(|_| format!("(?, ?, ?, ?, ?, 'claimed', {now} + ?, 0, {now}, ?, ?, ?)"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    conn.execute(&q, &params[9..]).await?;
    conn.commit().await?;
    Ok(true)
}

async fn read_step(conn: &mut dyn Conn, run: String, step: String) -> Result<StepRecord> {
    let d = conn.dialect();
    let rows = conn
        .query(
            &sql(
                d,
                "SELECT state, initialized, key_kind, upper_key, cursor_key, next_batch, exhausted, rows_total \
                 FROM godwit_steps WHERE run = ? AND step = ?",
            ),
            &[text(run.clone()), text(step.clone())],
        )
        .await?;
    let Some(r) = rows.first() else {
        return Err(Error::permanent(format!(
            "run {run:?} has no step {step:?} in the state tables"
        )));
    };
    Ok(StepRecord {
        state: get_text(r.get(0)).unwrap_or_default(),
        initialized: r.get(1).as_i64() == Some(1),
        key_kind: get_text(r.get(2)),
        upper_key: get_text(r.get(3)),
        cursor_key: get_text(r.get(4)),
        next_batch: r.get(5).as_i64().unwrap_or_default(),
        exhausted: r.get(6).as_i64() == Some(1),
        rows_total: r.get(7).as_i64(),
    })
}

/// Creates, resumes or restarts a run; returns how, and the generation the caller works on.
async fn begin_run(
    conn: &mut dyn Conn,
    spec: RunSpec,
    restart: Restart,
    initial: RunState,
    raced: bool,
) -> Result<(RunStart, String)> {
    let d = conn.dialect();
    let run = spec.name.clone();
    let existing = conn
        .query(
            &sql(d, "SELECT state, generation FROM godwit_runs WHERE run = ?"),
            &[text(run.clone())],
        )
        .await?;
    if let Some(row) = existing.first() {
        if restart == Restart::Forget {
            // A new generation. The run's row goes first: on MySQL a claim reads it with a
            // share lock, so the restart waits for claims under way and they for it. The
            // steps go before the batches: on PostgreSQL a claim moving a step's cursor holds
            // its row, so once the step is deleted the batches that claim inserted are
            // committed and visible to the delete of the batches. Processes still working on
            // the old generation then find their claims and records refused.
            conn.begin(Default::default()).await?;
            for table in [
                "godwit_runs",
                "godwit_steps",
                "godwit_batches",
                "godwit_dead_letters",
            ] {
                conn.execute(
                    &sql(d, &format!("DELETE FROM {table} WHERE run = ?")),
                    &[text(run.clone())],
                )
                .await?;
            }
            let generation = insert_run(conn, &spec, initial).await?;
            conn.commit().await?;
            return Ok((RunStart::Created, generation));
        }
        let stored = conn
            .query(
                &sql(
                    d,
                    "SELECT step, definition FROM godwit_steps WHERE run = ? ORDER BY position",
                ),
                &[text(run.clone())],
            )
            .await?;
        let stored: Vec<StepSpec> = stored
            .iter()
            .map(|r| StepSpec {
                name: get_text(r.get(0)).unwrap_or_default(),
                definition: get_text(r.get(1)).unwrap_or_default(),
                batch_size: 0,
            })
            .collect();
        if let Some(problem) = plan_difference(&stored, &spec.steps) {
            return Err(Error::config(format!(
                "the run {run:?} stored in the state database was started from a different plan: {problem}; \
                 finish it with the plan it started with, or start over with `godwit run --restart` \
                 (rows already changed stay changed)"
            )));
        }
        let state = get_text(row.get(0)).map(|s| RunState::parse(&s));
        // Read before the steps were compared: if the run was restarted since, this process
        // works on a generation already gone and is refused at its first claim.
        let generation = get_text(row.get(1)).unwrap_or_default();
        let start = if state == Some(RunState::Done) {
            RunStart::AlreadyDone
        } else {
            RunStart::Resumed
        };
        return Ok((start, generation));
    }
    conn.begin(Default::default()).await?;
    match insert_run(conn, &spec, initial).await {
        Ok(generation) => {
            conn.commit().await?;
            Ok((RunStart::Created, generation))
        }
        Err(e) if e.kind() == ErrorKind::Permanent && !raced => {
            // Most likely another process created the run between our read and insert: resume
            // theirs. Only once: a second failure is a real error (a name too long, no rights).
            conn.rollback().await?;
            Box::pin(begin_run(conn, spec, Restart::Resume, initial, true)).await
        }
        Err(e) => Err(e),
    }
}

/// Inserts a run and its steps; returns the run's new generation.
async fn insert_run(conn: &mut dyn Conn, spec: &RunSpec, initial: RunState) -> Result<String> {
    let d = conn.dialect();
    let generation = uuid::Uuid::new_v4().simple().to_string();
    let now = schema::now_ms(d);
    let started = if initial == RunState::Pending {
        "NULL"
    } else {
        now
    };
    conn.execute(
        &sql(
            d,
            &format!(
                "INSERT INTO godwit_runs (run, state, plan_text, created_ms, started_ms, generation) \
                 VALUES (?, ?, ?, {now}, {started}, ?)"
            ),
        ),
        &[
            text(spec.name.clone()),
            text(initial.as_str()),
            text(spec.plan_text.clone()),
            text(generation.clone()),
        ],
    )
    .await?;
    for (position, step) in spec.steps.iter().enumerate() {
        conn.execute(
            &sql(
                d,
                "INSERT INTO godwit_steps (run, step, position, definition, state, initialized, next_batch, exhausted, batch_size) \
                 VALUES (?, ?, ?, ?, 'pending', 0, 0, 0, ?)",
            ),
            &[
                text(spec.name.clone()),
                text(step.name.clone()),
                Value::Int(position as i64),
                text(step.definition.clone()),
                Value::Int(step.batch_size),
            ],
        )
        .await?;
    }
    Ok(generation)
}

/// The first difference between the stored steps and the plan's, in words.
fn plan_difference(stored: &[StepSpec], planned: &[StepSpec]) -> Option<String> {
    for step in planned {
        match stored.iter().find(|s| s.name == step.name) {
            None => return Some(format!("step {:?} is new", step.name)),
            Some(s) if s.definition != step.definition => {
                return Some(format!("step {:?} changed", step.name))
            }
            Some(_) => {}
        }
    }
    stored
        .iter()
        .find(|s| !planned.iter().any(|p| p.name == s.name))
        .map(|s| format!("step {:?} was removed", s.name))
}

async fn claim_abandoned(
    conn: &mut dyn Conn,
    run: String,
    generation: Option<String>,
    step: String,
    worker: String,
    lease: Duration,
) -> Result<Option<ClaimedBatch>> {
    let d = conn.dialect();
    let now = schema::now_ms(d);
    // The (run, step, state) index keeps this away from the done batches.
    let q = format!(
        "SELECT batch, token, start_key, end_key, n_rows, attempts FROM godwit_batches \
         WHERE run = ? AND step = ? AND state IN ('pending', 'claimed') \
           AND (lease_until_ms IS NULL OR lease_until_ms < {now}) \
         ORDER BY batch LIMIT 8"
    );
    let candidates = conn
        .query(&sql(d, &q), &[text(run.clone()), text(step.clone())])
        .await?;
    let found = !candidates.is_empty();
    for c in candidates {
        let batch = c.get(0).as_i64().unwrap_or_default();
        let old_token = get_text(c.get(1));
        let token = uuid::Uuid::new_v4().simple().to_string();
        // Compare-and-set on the old token: of two workers taking the same batch, one wins.
        let q = format!(
            "UPDATE godwit_batches SET state = 'claimed', token = ?, worker = ?, \
             lease_until_ms = {now} + ?, claimed_ms = {now} \
             WHERE run = ? AND step = ? AND batch = ? AND {} \
             AND state IN ('pending', 'claimed') AND (lease_until_ms IS NULL OR lease_until_ms < {now}){}",
            if old_token.is_some() { "token = ?" } else { "token IS NULL" },
            fence(generation.is_some())
        );
        let mut params = vec![
            text(token.clone()),
            text(worker.clone()),
            lease_ms(lease),
            text(run.clone()),
            text(step.clone()),
            Value::Int(batch),
        ];
        if let Some(old) = &old_token {
            params.push(text(old.clone()));
        }
        params.extend(fence_params(&run, generation.as_deref()));
        if conn.execute(&sql(d, &q), &params).await? == 1 {
            return Ok(Some(ClaimedBatch {
                run,
                generation,
                step,
                batch,
                token,
                start_key: get_text(c.get(2)),
                end_key: get_text(c.get(3)),
                n_rows: c.get(4).as_i64().unwrap_or_default(),
                attempts: c.get(5).as_i64().unwrap_or_default(),
            }));
        }
    }
    if found {
        // Candidates were there but none could be taken: others were faster, or the run was
        // restarted and they belong to a generation this process does not run.
        ensure_generation(conn, &run, generation.as_deref()).await?;
    }
    Ok(None)
}

/// A condition limiting an UPDATE to rows of a run still of the generation this process
/// began, or nothing for a store that never began the run; its parameters come from
/// [`fence_params`], after the statement's others.
fn fence(fenced: bool) -> &'static str {
    if fenced {
        " AND EXISTS (SELECT 1 FROM godwit_runs g WHERE g.run = ? AND g.generation = ?)"
    } else {
        ""
    }
}

fn fence_params(run: &str, generation: Option<&str>) -> Vec<Value> {
    match generation {
        Some(generation) => vec![text(run), text(generation)],
        None => Vec::new(),
    }
}

/// Errs with [`RESTARTED`] when the run is no longer of `generation` (restarted, or its
/// progress forgotten); does nothing for `None`.
async fn ensure_generation(conn: &mut dyn Conn, run: &str, generation: Option<&str>) -> Result<()> {
    let Some(generation) = generation else {
        return Ok(());
    };
    let d = conn.dialect();
    let rows = conn
        .query(
            &sql(d, "SELECT generation FROM godwit_runs WHERE run = ?"),
            &[text(run)],
        )
        .await?;
    if rows.first().and_then(|r| get_text(r.get(0))).as_deref() == Some(generation) {
        Ok(())
    } else {
        Err(restarted(run))
    }
}

async fn complete_step(conn: &mut dyn Conn, run: String, step: String) -> Result<StepCompletion> {
    let d = conn.dialect();
    let rows = conn
        .query(
            &sql(
                d,
                "SELECT state, error_code, error, start_key, end_key FROM godwit_batches \
                 WHERE run = ? AND step = ? AND state <> 'done' \
                 ORDER BY CASE WHEN state = 'failed' THEN 0 ELSE 1 END, batch LIMIT 1",
            ),
            &[text(run.clone()), text(step.clone())],
        )
        .await?;
    let now = schema::now_ms(d);
    match rows.first() {
        None => {
            // Only a walk that really ended, with every batch it numbered present: a worker's
            // idea of the cursor can be stale (a claim lost in a server crash rewinds it).
            conn.execute(
                &sql(
                    d,
                    &format!(
                        "UPDATE godwit_steps SET state = 'done', finished_ms = {now} \
                         WHERE run = ? AND step = ? AND state <> 'done' AND exhausted = 1 \
                         AND next_batch = (SELECT COUNT(*) FROM godwit_batches b \
                                           WHERE b.run = ? AND b.step = ?)"
                    ),
                ),
                &[
                    text(run.clone()),
                    text(step.clone()),
                    text(run.clone()),
                    text(step.clone()),
                ],
            )
            .await?;
            let record = read_step(conn, run, step).await?;
            Ok(if record.state == "done" {
                StepCompletion::Done
            } else {
                StepCompletion::Waiting
            })
        }
        Some(r) if get_text(r.get(0)).as_deref() == Some("failed") => {
            let code = get_text(r.get(1))
                .map(|c| format!(" [{c}]"))
                .unwrap_or_default();
            let range = match (get_text(r.get(3)), get_text(r.get(4))) {
                (Some(a), Some(b)) => format!(" in key range {a}..={b}"),
                _ => String::new(),
            };
            let message = format!(
                "step {step:?} failed{range}:{code} {}",
                get_text(r.get(2)).unwrap_or_default()
            );
            conn.execute(
                &sql(
                    d,
                    &format!(
                        "UPDATE godwit_steps SET state = 'failed', error = ?, finished_ms = {now} \
                         WHERE run = ? AND step = ?"
                    ),
                ),
                &[text(message.clone()), text(run), text(step)],
            )
            .await?;
            Ok(StepCompletion::Failed(message))
        }
        Some(_) => Ok(StepCompletion::Waiting),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_placeholders_for_postgres_only() {
        assert_eq!(
            sql(Dialect::Postgres, "a = ? AND b = ?"),
            "a = $1 AND b = $2"
        );
        assert_eq!(sql(Dialect::MySql, "a = ?"), "a = ?");
    }

    #[test]
    fn names_the_first_changed_step() {
        let s = |n: &str, d: &str| StepSpec {
            name: n.into(),
            definition: d.into(),
            batch_size: 1,
        };
        assert_eq!(plan_difference(&[s("a", "1")], &[s("a", "1")]), None);
        assert_eq!(
            plan_difference(&[s("a", "1")], &[s("a", "2")]).as_deref(),
            Some("step \"a\" changed")
        );
        assert_eq!(
            plan_difference(&[s("a", "1")], &[s("a", "1"), s("b", "1")]).as_deref(),
            Some("step \"b\" is new")
        );
        assert_eq!(
            plan_difference(&[s("a", "1"), s("b", "1")], &[s("a", "1")]).as_deref(),
            Some("step \"b\" was removed")
        );
    }
}
