//! A run's durations and counts per step, for `godwit report`: read from the rows the run
//! already writes (the run's and steps' start and end, each batch's claim, finish, time in its
//! transaction, rows, attempts and worker), aggregated in the database. Recording them costs a
//! run nothing beyond its done records.

use godwit_driver::{number_placeholders, Conn, Result, Row};
use serde::Serialize;

use crate::status::{count_batches, read_run, read_steps, Columns};
use crate::{get_text, schema, text, StateStore};

/// How long a run and each of its steps took, and what they did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunTimings {
    /// The plan's name.
    pub plan: String,
    /// `pending`, `running`, `paused`, `done`, `failed` or `cancelled`.
    pub state: String,
    /// Why the run failed, when it did.
    pub error: Option<String>,
    /// When a worker first took the run up (milliseconds since the Unix epoch on the state
    /// database's clock, as every time here); `None` for a run only submitted.
    pub started_ms: Option<i64>,
    /// When it ended; `None` while it goes on.
    pub finished_ms: Option<i64>,
    /// "Now" on the state database's clock, when this was read: the end of what is still
    /// going on.
    pub now_ms: i64,
    /// The steps, in plan order.
    pub steps: Vec<StepTimings>,
}

/// How long a step took and what its batches did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StepTimings {
    /// The step's name.
    pub name: String,
    /// `pending`, `running`, `done` or `failed`.
    pub state: String,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// When its first worker started it; `None` before.
    pub started_ms: Option<i64>,
    /// When it was done or failed; `None` before.
    pub finished_ms: Option<i64>,
    /// The rows it was counted to cover when it started; `None` until counted.
    pub rows_total_estimate: Option<i64>,
    /// Batches done.
    pub batches: i64,
    /// Batches failed for good.
    pub batches_failed: i64,
    /// Rows of the done batches (rows matching `where`, for a chunked step), as `status`
    /// counts them.
    pub rows: i64,
    /// Rows the done batches' statements reported as changed.
    pub rows_affected: i64,
    /// Rows a transform skipped (dead letters).
    pub rows_skipped: i64,
    /// Failed attempts that were (or will be) tried again. `godwit retry` starts a failed
    /// batch's count afresh; a batch that yielded to a lock counts none.
    pub retries: i64,
    /// The longest time a done batch spent in its transaction, in milliseconds.
    pub longest_batch_ms: Option<i64>,
    /// The workers that hold or last held a batch of the step, by name.
    pub workers: Vec<WorkerShare>,
}

/// What one worker did in a step: the batches it was the last to hold.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WorkerShare {
    /// Its name as its claims carry it: host, pid and a random suffix.
    pub worker: String,
    /// Batches it finished.
    pub batches: i64,
    /// Rows of those batches.
    pub rows: i64,
}

impl StateStore {
    /// The durations and counts of the run named `run`; `None` when no such run is stored.
    ///
    /// # Errors
    /// Database errors.
    pub async fn run_timings(&self, run: &str) -> Result<Option<RunTimings>> {
        let (run, known) = (run.to_string(), self.version);
        self.with_conn(move |conn| {
            Box::pin(async move {
                let columns = Columns::read(conn, known).await?;
                let Some(run_row) = read_run(conn, &run, columns.pace).await? else {
                    return Ok(None);
                };
                let steps = read_steps(conn, &run, columns).await?;
                let counts = count_batches(conn, &run, run_row.now_ms, columns.skipped).await?;
                let workers = read_workers(conn, &run).await?;
                let steps = steps
                    .iter()
                    .map(|step| step_timings(step, &counts, &workers))
                    .collect();
                Ok(Some(RunTimings {
                    plan: run,
                    state: run_row.state,
                    error: run_row.error,
                    started_ms: run_row.started_ms,
                    finished_ms: run_row.finished_ms,
                    now_ms: run_row.now_ms,
                    steps,
                }))
            })
        })
        .await
    }
}

/// One step's timings from its row ([`read_steps`]), the run's batch counts
/// ([`count_batches`]) and its workers ([`read_workers`]).
fn step_timings(step: &Row, counts: &[Row], workers: &[(String, WorkerShare)]) -> StepTimings {
    let name = get_text(step.get(0)).unwrap_or_default();
    let c = counts
        .iter()
        .find(|c| get_text(c.get(0)).as_deref() == Some(&name));
    let n = |i: usize| c.and_then(|c| c.get(i).as_i64()).unwrap_or_default();
    StepTimings {
        state: get_text(step.get(1)).unwrap_or_default(),
        error: get_text(step.get(5)),
        started_ms: step.get(3).as_i64(),
        finished_ms: step.get(4).as_i64(),
        rows_total_estimate: step.get(2).as_i64(),
        batches: n(1),
        batches_failed: n(2),
        rows: n(3),
        rows_affected: n(7),
        rows_skipped: n(6),
        retries: n(8),
        longest_batch_ms: c.and_then(|c| c.get(9).as_i64()),
        workers: workers
            .iter()
            .filter(|(s, _)| *s == name)
            .map(|(_, w)| w.clone())
            .collect(),
        name,
    }
}

/// Per step and worker: the batches it finished and their rows, over every batch a worker
/// holds or last held (a batch's row keeps its last claimer's name).
async fn read_workers(conn: &mut dyn Conn, run: &str) -> Result<Vec<(String, WorkerShare)>> {
    let d = conn.dialect();
    let int = schema::int_type(d);
    let rows = conn
        .query(
            &number_placeholders(
                &format!(
                    "SELECT step, worker, \
                       CAST(SUM(CASE WHEN state = 'done' THEN 1 ELSE 0 END) AS {int}), \
                       CAST(SUM(CASE WHEN state = 'done' THEN n_rows ELSE 0 END) AS {int}) \
                     FROM godwit_batches WHERE run = ? AND worker IS NOT NULL \
                     GROUP BY step, worker ORDER BY step, worker"
                ),
                d,
            ),
            &[text(run)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                get_text(r.get(0)).unwrap_or_default(),
                WorkerShare {
                    worker: get_text(r.get(1)).unwrap_or_default(),
                    batches: r.get(2).as_i64().unwrap_or_default(),
                    rows: r.get(3).as_i64().unwrap_or_default(),
                },
            )
        })
        .collect())
}
