//! What a run did over time, for the dashboard: rows done per step in time buckets, and the
//! batches that met errors. Read-only, like `status`; aggregated in the database, so that a
//! run of millions of batches answers in one pass over its rows of `godwit_batches`.

use godwit_driver::{number_placeholders, Conn, Dialect, Result, Value};
use serde::Serialize;

use crate::rate::{eta_seconds, RecentRate, RATE_WINDOW_MS};
use crate::status::{read_run, read_steps, Columns};
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

/// How the ETA of one step moved while it ran, as reconstructed by [`StateStore::eta_history`].
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StepEtaHistory {
    /// The step's name.
    pub step: String,
    /// Points at regular times between the step's start and end (or now), oldest first.
    pub points: Vec<EtaPoint>,
}

/// The ETA a step had at one point in time: the rows left then at the recent rate then
/// ([`RecentRate`]), as `status` would have shown it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EtaPoint {
    /// When, in milliseconds since the Unix epoch on the state database's clock.
    pub at_ms: i64,
    /// Rows left: the step's row count less the rows of the batches done by then.
    pub rows_left: i64,
    /// The recent rate then, rows per second.
    pub rows_per_second: f64,
    /// Seconds left at that rate; `None` when no batch had finished in the rate window.
    pub eta_seconds: Option<f64>,
    /// Seconds the step really took from then on; `None` while it has not ended.
    pub actual_seconds_left: Option<f64>,
}

/// The most points of a step's ETA history.
const ETA_POINTS: i64 = 60;

/// The most buckets the batches' finishes are summed in for the ETA history: fine enough for a
/// rate over [`RATE_WINDOW_MS`] in runs of up to 30 hours, few enough to read at once.
const FINE_BUCKETS: i64 = 3600;

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
                let Some((first, last)) = done_span(conn, &run).await? else {
                    return Ok(Throughput {
                        bucket_seconds: 1.0,
                        points: Vec::new(),
                    });
                };
                // Whole seconds, so that a bucket's rate reads as rows per second.
                let bucket_ms = ((last - first) / MAX_BUCKETS / 1000 + 1) * 1000;
                let points = done_buckets(conn, &run, bucket_ms)
                    .await?
                    .into_iter()
                    .map(|b| ThroughputPoint {
                        at_ms: b.index * bucket_ms,
                        step: b.step,
                        rows: b.rows,
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

    /// How each step's ETA moved while `run` ran, reconstructed from the batches done
    /// (nothing is recorded for it while the run goes): at up to 60 regular points in each
    /// step's time, the rows left then over the recent rate then, by [`RecentRate`]'s
    /// definition. Batch finishes are summed per step in whole-second buckets that divide
    /// [`RATE_WINDOW_MS`] (longer ones for runs over an hour), so each point's window is
    /// exact; in a run of over 30 hours a bucket outgrows the window, and the rate at a point
    /// is that of the last bucket. A step whose rows were never counted has no points.
    ///
    /// # Errors
    /// Database errors.
    pub async fn eta_history(&self, run: &str) -> Result<Vec<StepEtaHistory>> {
        let (run, known) = (run.to_string(), self.version);
        self.with_conn(move |conn| {
            Box::pin(async move {
                let columns = Columns::read(conn, known).await?;
                let Some(run_row) = read_run(conn, &run, columns.pace).await? else {
                    return Ok(Vec::new());
                };
                let steps = read_steps(conn, &run, columns).await?;
                let Some((first, last)) = done_span(conn, &run).await? else {
                    return Ok(Vec::new());
                };
                let bucket_ms = fine_bucket_ms(last - first);
                let buckets = done_buckets(conn, &run, bucket_ms).await?;
                Ok(steps
                    .iter()
                    .map(|step| {
                        let name = get_text(step.get(0)).unwrap_or_default();
                        let span = StepSpan {
                            started_ms: step.get(3).as_i64(),
                            finished_ms: step.get(4).as_i64(),
                            rows_total: step.get(2).as_i64(),
                        };
                        let mine: Vec<&DoneBucket> =
                            buckets.iter().filter(|b| b.step == name).collect();
                        StepEtaHistory {
                            points: eta_points(&span, &mine, bucket_ms, run_row.now_ms),
                            step: name,
                        }
                    })
                    .collect())
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

/// The first and last finish of the run's done batches, or `None` before the first.
async fn done_span(conn: &mut dyn Conn, run: &str) -> Result<Option<(i64, i64)>> {
    let span = conn
        .query(
            &number_placeholders(
                "SELECT MIN(finished_ms), MAX(finished_ms) FROM godwit_batches \
                 WHERE run = ? AND state = 'done'",
                conn.dialect(),
            ),
            &[text(run)],
        )
        .await?;
    let row = span.first();
    Ok(
        match (
            row.and_then(|r| r.get(0).as_i64()),
            row.and_then(|r| r.get(1).as_i64()),
        ) {
            (Some(first), Some(last)) => Some((first, last)),
            _ => None,
        },
    )
}

/// The done batches of one step that finished in one bucket of time.
pub(crate) struct DoneBucket {
    pub(crate) step: String,
    /// The bucket's number: it spans `[index * bucket_ms, (index + 1) * bucket_ms)`.
    pub(crate) index: i64,
    /// Rows of the batches.
    pub(crate) rows: i64,
    /// When the first of them was claimed.
    pub(crate) first_claimed_ms: Option<i64>,
}

/// The run's done batches summed per step and bucket of `bucket_ms` by their finish, in the
/// database (one pass, however many batches), ordered by bucket.
pub(crate) async fn done_buckets(
    conn: &mut dyn Conn,
    run: &str,
    bucket_ms: i64,
) -> Result<Vec<DoneBucket>> {
    let d = conn.dialect();
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
                    "SELECT step, b, CAST(SUM(n_rows) AS {int}), MIN(claimed_ms) FROM \
                     (SELECT step, {bucket} AS b, n_rows, claimed_ms FROM godwit_batches \
                      WHERE run = ? AND state = 'done') done \
                     GROUP BY step, b ORDER BY b, step"
                ),
                d,
            ),
            &[Value::Int(bucket_ms), text(run)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| DoneBucket {
            step: get_text(r.get(0)).unwrap_or_default(),
            index: r.get(1).as_i64().unwrap_or_default(),
            rows: r.get(2).as_i64().unwrap_or_default(),
            first_claimed_ms: r.get(3).as_i64(),
        })
        .collect())
}

/// The length of the buckets the ETA history sums batch finishes in, for a run whose done
/// batches span `span_ms`: the shortest whole number of seconds dividing the rate window (or,
/// past it, a multiple of it) that makes at most [`FINE_BUCKETS`] buckets.
fn fine_bucket_ms(span_ms: i64) -> i64 {
    const DIVIDING: [i64; 8] = [1, 2, 3, 5, 6, 10, 15, 30];
    let needed = span_ms / FINE_BUCKETS + 1;
    DIVIDING
        .iter()
        .map(|s| s * 1000)
        .find(|&ms| ms >= needed)
        .unwrap_or_else(|| (needed + RATE_WINDOW_MS - 1) / RATE_WINDOW_MS * RATE_WINDOW_MS)
}

/// What a step's ETA history needs of its row.
struct StepSpan {
    started_ms: Option<i64>,
    finished_ms: Option<i64>,
    rows_total: Option<i64>,
}

/// The ETA at up to [`ETA_POINTS`] bucket boundaries strictly inside the step's time (from its
/// start to its end, or `now_ms`), from its done batches summed in `buckets` (its own, in
/// order) of `bucket_ms`.
fn eta_points(
    step: &StepSpan,
    buckets: &[&DoneBucket],
    bucket_ms: i64,
    now_ms: i64,
) -> Vec<EtaPoint> {
    let (Some(started), Some(total)) = (step.started_ms, step.rows_total) else {
        return Vec::new();
    };
    let end = step.finished_ms.unwrap_or(now_ms);
    let first = (started / bucket_ms + 1) * bucket_ms;
    if first >= end {
        return Vec::new();
    }
    let boundaries = (end - 1 - first) / bucket_ms + 1;
    let stride = (boundaries + ETA_POINTS - 1) / ETA_POINTS * bucket_ms;
    // A bucket is entered at its start: the rate at a boundary then counts exactly the
    // buckets that start in the window before it, which the window's length is a multiple of.
    let mut rate = RecentRate::with_window(RATE_WINDOW_MS.max(bucket_ms));
    let mut rows_done = 0;
    let mut next = 0;
    let mut points = Vec::new();
    let mut at = first;
    while at < end {
        while let Some(b) = buckets.get(next).filter(|b| b.index * bucket_ms < at) {
            let start = b.index * bucket_ms;
            rate.record(b.first_claimed_ms.unwrap_or(start), start, b.rows);
            rows_done += b.rows;
            next += 1;
        }
        let rows_per_second = rate.rows_per_second(at);
        let rows_left = (total - rows_done).max(0);
        points.push(EtaPoint {
            at_ms: at,
            rows_left,
            rows_per_second: (rows_per_second * 10.0).round() / 10.0,
            eta_seconds: eta_seconds(rows_left, rows_per_second),
            actual_seconds_left: step.finished_ms.map(|f| (f - at) as f64 / 1000.0),
        });
        at += stride;
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(index: i64, rows: i64, first_claimed_ms: i64) -> DoneBucket {
        DoneBucket {
            step: "s".into(),
            index,
            rows,
            first_claimed_ms: Some(first_claimed_ms),
        }
    }

    #[test]
    fn buckets_divide_the_window_or_are_multiples_of_it() {
        assert_eq!(fine_bucket_ms(0), 1000);
        assert_eq!(fine_bucket_ms(3_599_000), 1000);
        assert_eq!(fine_bucket_ms(3_600_000), 2000);
        assert_eq!(fine_bucket_ms(4 * 3_600_000), 5000);
        assert_eq!(fine_bucket_ms(29 * 3_600_000), 30_000);
        assert_eq!(fine_bucket_ms(31 * 3_600_000), 60_000);
        for span in [0, 7_777_777, 50 * 3_600_000, 900 * 3_600_000] {
            let ms = fine_bucket_ms(span);
            assert!(ms % 1000 == 0 && span / ms < FINE_BUCKETS, "{span}: {ms}");
            assert!(
                RATE_WINDOW_MS % ms == 0 || ms % RATE_WINDOW_MS == 0,
                "{span}: {ms}"
            );
        }
    }

    /// 1,000 rows to do from t = 10 s: 100 rows a second for 4 s, then 20 rows a second. The
    /// ETA follows the recent rate: 6 s while fast, later once the window holds only the slow
    /// batches.
    #[test]
    fn the_eta_follows_the_recent_rate() {
        let mut buckets = Vec::new();
        for s in 10..14 {
            buckets.push(bucket(s, 100, s * 1000));
        }
        for s in 14..44 {
            buckets.push(bucket(s, 20, s * 1000));
        }
        let refs: Vec<&DoneBucket> = buckets.iter().collect();
        let step = StepSpan {
            started_ms: Some(10_000),
            finished_ms: Some(44_000),
            rows_total: Some(1000),
        };
        let points = eta_points(&step, &refs, 1000, 50_000);
        assert_eq!(points.len(), 33, "{points:?}");
        let at = |ms: i64| {
            points
                .iter()
                .find(|p| p.at_ms == ms)
                .unwrap_or_else(|| panic!("no point at {ms}: {points:?}"))
        };
        // At 14 s: 400 rows in 4 s, 600 left.
        assert_eq!(at(14_000).rows_left, 600);
        assert_eq!(at(14_000).rows_per_second, 100.0);
        assert_eq!(at(14_000).eta_seconds, Some(6.0));
        assert_eq!(at(14_000).actual_seconds_left, Some(30.0));
        // At 43 s, the last point before the end, the window (13 s..43 s) holds one fast
        // second and 29 slow ones.
        let late = at(43_000);
        assert_eq!(late.rows_left, 20);
        assert_eq!(late.rows_per_second, 22.7);
        // The ETA while slow is later than the fast phase's projection for the same rows.
        let mid = at(24_000);
        assert_eq!(mid.rows_left, 400);
        assert!(mid.eta_seconds.unwrap_or_default() > 400.0 / 100.0);
    }

    #[test]
    fn at_most_sixty_points_and_none_without_a_row_count() {
        let buckets: Vec<DoneBucket> = (0..1000).map(|s| bucket(s, 1, s * 1000)).collect();
        let refs: Vec<&DoneBucket> = buckets.iter().collect();
        let step = StepSpan {
            started_ms: Some(0),
            finished_ms: None,
            rows_total: Some(1000),
        };
        let points = eta_points(&step, &refs, 1000, 1_000_000);
        assert!(points.len() <= 60 && points.len() >= 50, "{}", points.len());
        assert!(points.windows(2).all(|w| w[0].at_ms < w[1].at_ms));
        assert!(points.iter().all(|p| p.actual_seconds_left.is_none()));
        let uncounted = StepSpan {
            rows_total: None,
            ..step
        };
        assert!(eta_points(&uncounted, &refs, 1000, 1_000_000).is_empty());
    }
}
