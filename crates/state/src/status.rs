//! The progress of a run, computed from the state tables on demand.
//!
//! Counters are aggregated from `godwit_batches` when asked rather than kept in a row that every
//! batch would update: such a row would serialize every batch commit behind its lock.

use godwit_driver::{number_placeholders, Conn, Result, Row, Value};
use serde::Serialize;

use crate::rate::{eta_seconds, RATE_WINDOW_MS};
use crate::{get_text, schema, RunSettings};

/// How far a run has come: the object `godwit status --json` prints.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunStatus {
    /// The plan's name.
    pub plan: String,
    /// `pending`, `running`, `paused`, `done`, `failed` or `cancelled`.
    pub state: String,
    /// Why the run failed, when it did.
    pub error: Option<String>,
    /// Seconds from the run's start to its end (or to now while it runs).
    pub elapsed_seconds: f64,
    /// What `godwit set` changed on the run; `null` fields follow the plan.
    pub settings: RunSettings,
    /// The steps in plan order.
    pub steps: Vec<StepStatus>,
    /// Workers that sent a heartbeat for this run in the last [`LIVE_WINDOW_MS`] milliseconds.
    pub workers: Vec<WorkerStatus>,
}

/// A live worker, from its heartbeat.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WorkerStatus {
    /// Its name as its claims carry it: host, pid and a random suffix.
    pub worker: String,
    /// The machine it runs on.
    pub host: String,
    /// Its process id there.
    pub pid: i64,
    /// The godwit version it runs.
    pub version: String,
    /// Batches it has in flight.
    pub batches_in_flight: i64,
    /// `running`, `paused` or `stopping`.
    pub state: String,
    /// Seconds since its last heartbeat.
    pub last_seen_seconds: f64,
}

/// A worker silent for longer than this is not listed: heartbeats come every second, so it
/// has missed several (killed, frozen or cut off). Its batches return after their lease.
pub const LIVE_WINDOW_MS: i64 = 10_000;

/// How far a step has come.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StepStatus {
    /// The step's name.
    pub name: String,
    /// `pending`, `running`, `done` or `failed`.
    pub state: String,
    /// Batches committed.
    pub batches_done: i64,
    /// Batches that failed for good.
    pub batches_failed: i64,
    /// Rows in the committed batches (rows matching `where`, for a chunked step).
    pub rows_done: i64,
    /// Rows a transform skipped.
    pub rows_skipped: i64,
    /// Rows the step will cover, counted when it started; `null` until counted.
    pub rows_total_estimate: Option<i64>,
    /// Recent rate over the last 30 seconds of work ([`RecentRate`](crate::RecentRate)'s
    /// definition, over every worker's batches); the whole step's once done.
    pub rows_per_second: f64,
    /// Seconds left: the rows left at the recent rate; `null` when unknown.
    pub eta_seconds: Option<f64>,
    /// Rows per batch now (adaptive sizing changes it); `null` for a one-off step, and for a
    /// chunked step that found no row to walk.
    pub batch_size: Option<i64>,
    /// Why the step claims no new batch now (`null`: it is not throttled). Only while the step
    /// and its run are running.
    pub throttled: Option<String>,
    /// Why the step failed, with the key range and the database's code.
    pub error: Option<String>,
}

/// What the state tables hold, by their version.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Columns {
    /// `godwit_steps.batch_size` (version 2).
    pub(crate) sized: bool,
    /// `godwit_batches.rows_skipped` (version 3).
    pub(crate) skipped: bool,
    /// `godwit set`'s settings and `godwit_steps.throttled` (version 5).
    pub(crate) pace: bool,
}

impl Columns {
    /// What the tables hold: those of version `known` when the store was opened, or of a
    /// later one if another process has migrated them since. Older tables lack what later
    /// versions added, and readers read around it.
    pub(crate) async fn read(conn: &mut dyn Conn, known: i64) -> Result<Columns> {
        Ok(Columns {
            sized: schema::at_least(conn, known, 2).await?,
            skipped: schema::at_least(conn, known, 3).await?,
            pace: schema::at_least(conn, known, 5).await?,
        })
    }
}

pub(crate) async fn read(
    conn: &mut dyn Conn,
    run: String,
    columns: Columns,
) -> Result<Option<RunStatus>> {
    let Some(run_row) = read_run(conn, &run, columns.pace).await? else {
        return Ok(None);
    };
    let steps = read_steps(conn, &run, columns).await?;
    let counts = count_batches(conn, &run, run_row.now_ms, columns.skipped).await?;
    // A throttle reason is what a running worker found; once the run stops, it is history.
    let running = run_row.state == "running";
    let steps = steps
        .iter()
        .map(|step| step_status(step, &counts, run_row.now_ms, running))
        .collect();
    // Tables from before version 2 have no heartbeats; a reader does not create them.
    let workers = read_workers(conn, &run, run_row.now_ms)
        .await
        .unwrap_or_default();
    Ok(Some(RunStatus {
        workers,
        plan: run,
        state: run_row.state,
        error: run_row.error,
        elapsed_seconds: (run_row.elapsed_ms.max(0) as f64 / 100.0).round() / 10.0,
        settings: run_row.settings,
        steps,
    }))
}

/// The run's own row, read with the state database's clock.
pub(crate) struct RunRow {
    pub(crate) state: String,
    pub(crate) error: Option<String>,
    /// When a worker first took the run up; `None` for a run only submitted.
    pub(crate) started_ms: Option<i64>,
    /// When it ended (done, failed, cancelled); `None` while it goes on.
    pub(crate) finished_ms: Option<i64>,
    elapsed_ms: i64,
    /// "Now" on the state database's clock, which every rate and age here is measured by.
    pub(crate) now_ms: i64,
    settings: RunSettings,
}

/// `pace`: whether the tables have `godwit set`'s settings (version 5).
pub(crate) async fn read_run(conn: &mut dyn Conn, run: &str, pace: bool) -> Result<Option<RunRow>> {
    let d = conn.dialect();
    let now = schema::now_ms(d);
    let settings = if pace {
        ", set_concurrency, set_batch_size, set_max_rows_per_second"
    } else {
        ""
    };
    let runs = conn
        .query(
            &number_placeholders(
                &format!(
                    "SELECT state, error, started_ms, COALESCE(finished_ms, {now}), {now}, \
                     finished_ms{settings} \
                     FROM godwit_runs WHERE run = ?"
                ),
                d,
            ),
            &[Value::Text(run.to_string())],
        )
        .await?;
    let Some(run_row) = runs.first() else {
        return Ok(None);
    };
    // A submitted run that no worker took up yet has no start.
    let elapsed_ms = match run_row.get(2).as_i64() {
        Some(started) => run_row.get(3).as_i64().unwrap_or(started) - started,
        None => 0,
    };
    Ok(Some(RunRow {
        state: get_text(run_row.get(0)).unwrap_or_default(),
        error: get_text(run_row.get(1)),
        started_ms: run_row.get(2).as_i64(),
        finished_ms: run_row.get(5).as_i64(),
        elapsed_ms,
        now_ms: run_row.get(4).as_i64().unwrap_or_default(),
        settings: RunSettings::read(run_row, 6),
    }))
}

/// The run's steps in plan order: name, state, rows_total, started_ms, finished_ms, error,
/// batch_size, whether it walks no key (a one-off step, or nothing to walk), throttled; NULL
/// for what older tables lack.
pub(crate) async fn read_steps(
    conn: &mut dyn Conn,
    run: &str,
    columns: Columns,
) -> Result<Vec<Row>> {
    let d = conn.dialect();
    let batch_size = if columns.sized { "batch_size" } else { "NULL" };
    let throttled = if columns.pace { "throttled" } else { "NULL" };
    conn.query(
        &number_placeholders(
            &format!(
                "SELECT step, state, rows_total, started_ms, finished_ms, error, {batch_size}, \
                 CASE WHEN initialized = 1 AND key_kind IS NULL THEN 1 ELSE 0 END, {throttled} \
                 FROM godwit_steps WHERE run = ? ORDER BY position"
            ),
            d,
        ),
        &[Value::Text(run.to_string())],
    )
    .await
}

/// Per step: the step, batches done, batches failed, rows done, rows done in the rate window,
/// the first claim in that window, rows skipped; then, for `godwit report`, rows affected,
/// retries (failed attempts that were or will be tried again; the last attempt of a batch
/// failed for good was not) and the longest done batch's time in milliseconds.
pub(crate) async fn count_batches(
    conn: &mut dyn Conn,
    run: &str,
    now_ms: i64,
    skipped: bool,
) -> Result<Vec<Row>> {
    let d = conn.dialect();
    // One pass over the run's batches for every step's counters; the casts keep MySQL and
    // PostgreSQL from widening sums to DECIMAL/NUMERIC. Batches recorded before version 3
    // have no skipped rows (NULL).
    let int = schema::int_type(d);
    let skipped = if skipped {
        format!(
            "CAST(SUM(CASE WHEN state = 'done' THEN COALESCE(rows_skipped, 0) ELSE 0 END) AS {int})"
        )
    } else {
        "0".to_string()
    };
    conn.query(
        &number_placeholders(&format!(
                "SELECT step, \
                   CAST(SUM(CASE WHEN state = 'done' THEN 1 ELSE 0 END) AS {int}), \
                   CAST(SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END) AS {int}), \
                   CAST(SUM(CASE WHEN state = 'done' THEN n_rows ELSE 0 END) AS {int}), \
                   CAST(SUM(CASE WHEN state = 'done' AND finished_ms >= ? THEN n_rows ELSE 0 END) AS {int}), \
                   MIN(CASE WHEN state = 'done' AND finished_ms >= ? THEN claimed_ms END), \
                   {skipped}, \
                   CAST(SUM(CASE WHEN state = 'done' THEN COALESCE(rows_affected, 0) ELSE 0 END) AS {int}), \
                   CAST(SUM(CASE WHEN state = 'failed' AND attempts > 0 THEN attempts - 1 ELSE attempts END) AS {int}), \
                   MAX(CASE WHEN state = 'done' THEN duration_ms END) \
                 FROM godwit_batches WHERE run = ? GROUP BY step"
            ), d),
        &[
            Value::Int(now_ms - RATE_WINDOW_MS),
            Value::Int(now_ms - RATE_WINDOW_MS),
            Value::Text(run.to_string()),
        ],
    )
    .await
}

/// One step's progress from its row ([`read_steps`]) and its batches' counts
/// ([`count_batches`]); `run_running`: whether the run is running.
fn step_status(step: &Row, counts: &[Row], now_ms: i64, run_running: bool) -> StepStatus {
    let name = get_text(step.get(0)).unwrap_or_default();
    let c = counts
        .iter()
        .find(|c| get_text(c.get(0)).as_deref() == Some(&name));
    let n = |i: usize| c.and_then(|c| c.get(i).as_i64()).unwrap_or_default();
    let state = get_text(step.get(1)).unwrap_or_default();
    let rows_total = step.get(2).as_i64();
    let rows_done = n(3);
    let started = step.get(3).as_i64();
    let finished = step.get(4).as_i64();
    let rows_per_second = match (state.as_str(), started, finished) {
        ("done", Some(a), Some(b)) if b > a => rows_done as f64 * 1000.0 / (b - a) as f64,
        _ => {
            let window_start = c.and_then(|c| c.get(5).as_i64());
            match window_start {
                Some(w) if now_ms > w => n(4) as f64 * 1000.0 / (now_ms - w) as f64,
                _ => 0.0,
            }
        }
    };
    let eta_seconds = match (state.as_str(), rows_total) {
        ("done", _) => Some(0.0),
        (_, Some(total)) => eta_seconds(total - rows_done, rows_per_second),
        _ => None,
    };
    StepStatus {
        name,
        batches_done: n(1),
        batches_failed: n(2),
        rows_done,
        rows_skipped: n(6),
        rows_total_estimate: rows_total,
        rows_per_second: (rows_per_second * 10.0).round() / 10.0,
        eta_seconds,
        batch_size: batch_size(step),
        throttled: get_text(step.get(8)).filter(|_| run_running && state == "running"),
        state,
        error: get_text(step.get(5)),
    }
}

/// A step's current batch size from its row ([`read_steps`]): none for a step that walks no
/// key, whose one batch is its statement (stored as 1), nor for a size that is no size.
fn batch_size(step: &Row) -> Option<i64> {
    let walks_no_key = step.get(7).as_i64() == Some(1);
    step.get(6).as_i64().filter(|&n| n > 0 && !walks_no_key)
}

async fn read_workers(conn: &mut dyn Conn, run: &str, now_ms: i64) -> Result<Vec<WorkerStatus>> {
    let d = conn.dialect();
    let rows = conn
        .query(
            &number_placeholders(
                "SELECT worker, host, pid, version, batches, state, heartbeat_ms \
                 FROM godwit_workers WHERE run = ? AND heartbeat_ms >= ? ORDER BY worker",
                d,
            ),
            &[
                Value::Text(run.to_string()),
                Value::Int(now_ms - LIVE_WINDOW_MS),
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| WorkerStatus {
            worker: get_text(r.get(0)).unwrap_or_default(),
            host: get_text(r.get(1)).unwrap_or_default(),
            pid: r.get(2).as_i64().unwrap_or_default(),
            version: get_text(r.get(3)).unwrap_or_default(),
            batches_in_flight: r.get(4).as_i64().unwrap_or_default(),
            state: get_text(r.get(5)).unwrap_or_default(),
            last_seen_seconds: ((now_ms - r.get(6).as_i64().unwrap_or(now_ms)).max(0) as f64
                / 100.0)
                .round()
                / 10.0,
        })
        .collect())
}
