//! What `godwit estimate` projected, kept so that `godwit report` can put the estimate made
//! beforehand next to the actual durations (`godwit_estimates`, state schema version 8).
//!
//! An estimate is recorded whole, in one transaction: a plan row (position 0) and one row per
//! step, under a random id. Estimates are kept when a run is restarted: one made before the
//! restart is still one made before the run (as restarted) started.

use godwit_driver::{number_placeholders, Conn, Result, Value};
use serde::Serialize;

use crate::pace::get_f64;
use crate::{get_text, opt_text, schema, text, StateStore};

/// A projection of a plan's duration, as `godwit estimate` makes it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Estimate {
    /// The whole plan's projected duration, in seconds (steps side by side counted once).
    pub projected_seconds: f64,
    /// The low end of the plan's range, in seconds.
    pub low_seconds: f64,
    /// The high end of the plan's range, in seconds.
    pub high_seconds: f64,
    /// The steps, in plan order.
    pub steps: Vec<StepEstimate>,
}

/// One step's projection.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StepEstimate {
    /// The step's name.
    pub name: String,
    /// Its projected duration, in seconds.
    pub projected_seconds: f64,
    /// The low end of its range, in seconds.
    pub low_seconds: f64,
    /// The high end of its range, in seconds.
    pub high_seconds: f64,
    /// The rows it was expected to cover; `None` for a step that walks no key.
    pub rows_estimate: Option<i64>,
    /// How many batches were rehearsed for it.
    pub sampled_batches: Option<i64>,
}

/// An estimate as stored, with when it was recorded.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RecordedEstimate {
    /// When it was recorded, in milliseconds since the Unix epoch on the state database's
    /// clock (the clock of a run's start and end).
    pub recorded_ms: i64,
    /// What it projected.
    pub estimate: Estimate,
}

impl StateStore {
    /// Records `estimate` for the run named `run` (the plan's name; the run need not exist
    /// yet) and returns when it was recorded, on the state database's clock.
    ///
    /// # Errors
    /// Database errors; nothing of the estimate is stored then.
    pub async fn record_estimate(&self, run: &str, estimate: &Estimate) -> Result<i64> {
        let (run, estimate) = (run.to_string(), estimate.clone());
        self.with_conn(move |conn| Box::pin(insert_estimate(conn, run, estimate)))
            .await
    }

    /// The last estimate recorded for `run`, if any.
    ///
    /// # Errors
    /// Database errors.
    pub async fn last_estimate(&self, run: &str) -> Result<Option<RecordedEstimate>> {
        self.estimate_before(run, i64::MAX).await
    }

    /// The last estimate recorded for `run` before `before_ms` (on the state database's clock,
    /// such as a run's start), if any. State tables older than version 8 hold none.
    ///
    /// # Errors
    /// Database errors.
    pub async fn estimate_before(
        &self,
        run: &str,
        before_ms: i64,
    ) -> Result<Option<RecordedEstimate>> {
        let (run, known) = (run.to_string(), self.version);
        self.with_conn(move |conn| {
            Box::pin(async move {
                if !schema::at_least(conn, known, 8).await? {
                    return Ok(None);
                }
                read_estimate(conn, run, before_ms).await
            })
        })
        .await
    }
}

async fn insert_estimate(conn: &mut dyn Conn, run: String, estimate: Estimate) -> Result<i64> {
    let d = conn.dialect();
    let id = uuid::Uuid::new_v4().simple().to_string();
    conn.begin(Default::default()).await?;
    // The plan's row first, with the time every row of the estimate then copies.
    let now = schema::now_ms(d);
    conn.execute(
        &number_placeholders(
            &format!(
                "INSERT INTO godwit_estimates (run, estimate, position, step, recorded_ms, \
                 projected_seconds, low_seconds, high_seconds) VALUES (?, ?, 0, NULL, {now}, ?, ?, ?)"
            ),
            d,
        ),
        &[
            text(run.clone()),
            text(id.clone()),
            Value::Float(estimate.projected_seconds),
            Value::Float(estimate.low_seconds),
            Value::Float(estimate.high_seconds),
        ],
    )
    .await?;
    let recorded = conn
        .query(
            &number_placeholders(
                "SELECT recorded_ms FROM godwit_estimates WHERE run = ? AND estimate = ? AND position = 0",
                d,
            ),
            &[text(run.clone()), text(id.clone())],
        )
        .await?;
    let recorded_ms = recorded
        .first()
        .and_then(|r| r.get(0).as_i64())
        .unwrap_or_default();
    for (i, step) in estimate.steps.iter().enumerate() {
        conn.execute(
            &number_placeholders(
                "INSERT INTO godwit_estimates (run, estimate, position, step, recorded_ms, \
                 projected_seconds, low_seconds, high_seconds, rows_estimate, sampled_batches) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                d,
            ),
            &[
                text(run.clone()),
                text(id.clone()),
                Value::Int(i as i64 + 1),
                opt_text(Some(&step.name)),
                Value::Int(recorded_ms),
                Value::Float(step.projected_seconds),
                Value::Float(step.low_seconds),
                Value::Float(step.high_seconds),
                step.rows_estimate.map_or(Value::Null, Value::Int),
                step.sampled_batches.map_or(Value::Null, Value::Int),
            ],
        )
        .await?;
    }
    conn.commit().await?;
    Ok(recorded_ms)
}

async fn read_estimate(
    conn: &mut dyn Conn,
    run: String,
    before_ms: i64,
) -> Result<Option<RecordedEstimate>> {
    let d = conn.dialect();
    // The plan rows of a run are few (one per `godwit estimate`): no index beyond the key.
    let last = conn
        .query(
            &number_placeholders(
                "SELECT estimate FROM godwit_estimates \
                 WHERE run = ? AND position = 0 AND recorded_ms < ? \
                 ORDER BY recorded_ms DESC, estimate DESC LIMIT 1",
                d,
            ),
            &[text(run.clone()), Value::Int(before_ms)],
        )
        .await?;
    let Some(id) = last.first().and_then(|r| get_text(r.get(0))) else {
        return Ok(None);
    };
    let rows = conn
        .query(
            &number_placeholders(
                "SELECT position, step, recorded_ms, projected_seconds, low_seconds, \
                 high_seconds, rows_estimate, sampled_batches FROM godwit_estimates \
                 WHERE run = ? AND estimate = ? ORDER BY position",
                d,
            ),
            &[text(run), text(id)],
        )
        .await?;
    let seconds = |v: &Value| get_f64(v).unwrap_or_default();
    let mut recorded = None;
    let mut steps = Vec::new();
    for r in &rows {
        if r.get(0).as_i64() == Some(0) {
            recorded = Some(RecordedEstimate {
                recorded_ms: r.get(2).as_i64().unwrap_or_default(),
                estimate: Estimate {
                    projected_seconds: seconds(r.get(3)),
                    low_seconds: seconds(r.get(4)),
                    high_seconds: seconds(r.get(5)),
                    steps: Vec::new(),
                },
            });
        } else {
            steps.push(StepEstimate {
                name: get_text(r.get(1)).unwrap_or_default(),
                projected_seconds: seconds(r.get(3)),
                low_seconds: seconds(r.get(4)),
                high_seconds: seconds(r.get(5)),
                rows_estimate: r.get(6).as_i64(),
                sampled_batches: r.get(7).as_i64(),
            });
        }
    }
    Ok(recorded.map(|mut r| {
        r.estimate.steps = steps;
        r
    }))
}
