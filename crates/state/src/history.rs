//! What a run did over time, for the dashboard: rows done per step in time buckets, and the
//! batches that met errors. Read-only, like `status`; aggregated in the database, so that a
//! run of millions of batches answers in one pass over its rows of `godwit_batches`.

use godwit_driver::{number_placeholders, Dialect, Result, Value};
use serde::Serialize;

use crate::{get_text, schema, text, StateStore};

/// The most buckets a throughput series has, whatever the run's length.
const MAX_BUCKETS: i64 = 120;

/// Rows done per step over the run, in buckets of equal length.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Throughput {
    /// Each bucket's length, in seconds (at least one).
    pub bucket_seconds: f64,
    /// One point per step and bucket that had batches finish in it, oldest first.
    pub points: Vec<ThroughputPoint>,
}

/// Rows of the batches of one step that finished in one bucket.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ThroughputPoint {
    /// The step's name.
    pub step: String,
    /// The bucket's start, in milliseconds since the Unix epoch on the state database's clock.
    pub at_ms: i64,
    /// Rows in the batches done in the bucket.
    pub rows: i64,
}

/// A batch that met an error: failed for good, or waiting to be tried again.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BatchError {
    /// The step's name.
    pub step: String,
    /// The batch's number.
    pub batch: i64,
    /// The first key of its range, as stored (`null`: the step's start).
    pub start_key: Option<String>,
    /// The last key of its range, as stored.
    pub end_key: Option<String>,
    /// `failed` (retries exhausted, `godwit retry` re-queues it) or `pending` (retried soon).
    pub state: String,
    /// Attempts so far.
    pub attempts: i64,
    /// The database's own error code, when it gave one.
    pub error_code: Option<String>,
    /// The last error, with the key range.
    pub error: String,
}

impl StateStore {
    /// Rows done per step of `run` over time, in at most [`MAX_BUCKETS`] buckets spanning the
    /// batches done so far.
    ///
    /// # Errors
    /// Database errors.
    pub async fn throughput(&self, run: &str) -> Result<Throughput> {
        let run = run.to_string();
        self.with_conn(move |conn| {
            Box::pin(async move {
                let d = conn.dialect();
                let span = conn
                    .query(
                        &number_placeholders(
                            "SELECT MIN(finished_ms), MAX(finished_ms) FROM godwit_batches \
                             WHERE run = ? AND state = 'done'",
                            d,
                        ),
                        &[text(run.clone())],
                    )
                    .await?;
                let row = span.first();
                let (Some(first), Some(last)) = (
                    row.and_then(|r| r.get(0).as_i64()),
                    row.and_then(|r| r.get(1).as_i64()),
                ) else {
                    return Ok(Throughput {
                        bucket_seconds: 1.0,
                        points: Vec::new(),
                    });
                };
                // Whole seconds, so that a bucket's rate reads as rows per second.
                let bucket_ms = ((last - first) / MAX_BUCKETS / 1000 + 1) * 1000;
                // Integer division on every backend: MySQL's `/` is exact division.
                let bucket = match d {
                    Dialect::MySql => "finished_ms DIV ?",
                    Dialect::Postgres | Dialect::Sqlite => "finished_ms / ?",
                };
                let int = schema::int_type(d);
                let rows = conn
                    .query(
                        &number_placeholders(
                            &format!(
                                "SELECT step, b, CAST(SUM(n_rows) AS {int}) FROM \
                                 (SELECT step, {bucket} AS b, n_rows FROM godwit_batches \
                                  WHERE run = ? AND state = 'done') done \
                                 GROUP BY step, b ORDER BY b, step"
                            ),
                            d,
                        ),
                        &[Value::Int(bucket_ms), text(run)],
                    )
                    .await?;
                let points = rows
                    .iter()
                    .map(|r| ThroughputPoint {
                        step: get_text(r.get(0)).unwrap_or_default(),
                        at_ms: r.get(1).as_i64().unwrap_or_default() * bucket_ms,
                        rows: r.get(2).as_i64().unwrap_or_default(),
                    })
                    .collect();
                Ok(Throughput {
                    bucket_seconds: bucket_ms as f64 / 1000.0,
                    points,
                })
            })
        })
        .await
    }

    /// The batches of `run` that met an error and are not done: failed for good or waiting to
    /// be tried again, the latest first; at most `limit`.
    ///
    /// # Errors
    /// Database errors.
    pub async fn batch_errors(&self, run: &str, limit: u64) -> Result<Vec<BatchError>> {
        let run = run.to_string();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_conn(move |conn| {
            Box::pin(async move {
                let d = conn.dialect();
                let rows = conn
                    .query(
                        &number_placeholders(
                            "SELECT step, batch, start_key, end_key, state, attempts, \
                             error_code, error FROM godwit_batches \
                             WHERE run = ? AND state <> 'done' AND error IS NOT NULL \
                             ORDER BY COALESCE(finished_ms, claimed_ms) DESC, step, batch \
                             LIMIT ?",
                            d,
                        ),
                        &[text(run), Value::Int(limit)],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| BatchError {
                        step: get_text(r.get(0)).unwrap_or_default(),
                        batch: r.get(1).as_i64().unwrap_or_default(),
                        start_key: get_text(r.get(2)),
                        end_key: get_text(r.get(3)),
                        state: get_text(r.get(4)).unwrap_or_default(),
                        attempts: r.get(5).as_i64().unwrap_or_default(),
                        error_code: get_text(r.get(6)),
                        error: get_text(r.get(7)).unwrap_or_default(),
                    })
                    .collect())
            })
        })
        .await
    }
}
