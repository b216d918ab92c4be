//! The pace of a run: the settings a user changes on a running run (`godwit set`), which every
//! worker reads with the run's state ([`StateStore::run_control`]), and each step's current
//! batch size and throttle reason, which workers record for `godwit status`.

use godwit_driver::{number_placeholders, Result, Row, Value};
use serde::Serialize;

use crate::fence::{fence, fence_params, read_run, restarted, RunRead};
use crate::{get_text, opt_text, schema, text, RunState, StateStore};

/// Settings changed on a running run with `godwit set`; `None` leaves the plan's own.
///
/// Workers apply them: `concurrency` is the batches in flight in each worker process,
/// `batch_size` pins the batch size of every chunked step (adaptive sizing stops for the run),
/// `max_rows_per_second` is the run's limit over all its workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct RunSettings {
    /// Batches in flight per worker process.
    pub concurrency: Option<u64>,
    /// Rows per batch for every chunked step, fixed.
    pub batch_size: Option<u64>,
    /// The run's limit on rows per second, over all its workers.
    pub max_rows_per_second: Option<f64>,
}

impl RunSettings {
    /// Whether no setting is changed.
    pub fn is_empty(&self) -> bool {
        *self == RunSettings::default()
    }

    /// The settings in the three columns of `row` from `first` on (`set_concurrency`,
    /// `set_batch_size`, `set_max_rows_per_second`).
    pub(crate) fn read(row: &Row, first: usize) -> RunSettings {
        let count = |v: &Value| v.as_i64().and_then(|n| u64::try_from(n).ok());
        RunSettings {
            concurrency: count(row.get(first)),
            batch_size: count(row.get(first + 1)),
            max_rows_per_second: get_f64(row.get(first + 2)),
        }
    }
}

/// What a worker reads of its run every few hundred milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct RunControl {
    /// Where the run stands (paused, cancelled, …).
    pub state: RunState,
    /// What `godwit set` changed.
    pub settings: RunSettings,
}

/// A `DOUBLE PRECISION` column as a float, `None` for NULL. Each backend decodes it as a float;
/// an integer or a decimal text is taken too, as SQLite may store a whole number so.
pub(crate) fn get_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Float(f) => Some(*f),
        Value::Int(n) => Some(*n as f64),
        Value::Decimal(s) | Value::Text(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A count as a BIGINT parameter.
fn int(n: u64) -> Value {
    Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

impl StateStore {
    /// Writes the fields of `changes` that are `Some`; returns the run's settings after, or
    /// `None` when no such run is stored. Workers pick them up at their next look at the run
    /// ([`StateStore::run_control`]). A restart (`--restart`) forgets them with the run's
    /// progress.
    pub async fn set_run_settings(
        &self,
        run: &str,
        changes: RunSettings,
    ) -> Result<Option<RunSettings>> {
        let run = run.to_string();
        self.with_conn(move |conn| {
            Box::pin(async move {
                let mut columns = Vec::new();
                let mut params = Vec::new();
                if let Some(n) = changes.concurrency {
                    columns.push("set_concurrency = ?");
                    params.push(int(n));
                }
                if let Some(n) = changes.batch_size {
                    columns.push("set_batch_size = ?");
                    params.push(int(n));
                }
                if let Some(rate) = changes.max_rows_per_second {
                    columns.push("set_max_rows_per_second = ?");
                    params.push(Value::Float(rate));
                }
                if !columns.is_empty() {
                    let q = format!(
                        "UPDATE godwit_runs SET {} WHERE run = ?",
                        columns.join(", ")
                    );
                    params.push(text(run.clone()));
                    let d = conn.dialect();
                    conn.execute(&number_placeholders(&q, d), &params).await?;
                }
                let row = read_run(conn, &run, RunRead::Settings).await?;
                Ok(row.map(|r| r.settings))
            })
        })
        .await
    }

    /// The run's state and settings in one query; `None` when no such run is stored.
    ///
    /// # Errors
    /// [`RESTARTED`](crate::RESTARTED) when this store began the run and another process
    /// restarted it since, as [`StateStore::run_state`].
    pub async fn run_control(&self, run: &str) -> Result<Option<RunControl>> {
        let (run, mine, known) = (run.to_string(), self.generation(run), self.version);
        self.with_conn(move |conn| {
            Box::pin(async move {
                // A reader of tables older than version 5 has no settings to read.
                let read = if schema::at_least(conn, known, 5).await? {
                    RunRead::Settings
                } else {
                    RunRead::Plain
                };
                let Some(row) = read_run(conn, &run, read).await? else {
                    return match mine {
                        Some(_) => Err(restarted(&run)),
                        None => Ok(None),
                    };
                };
                if mine.is_some() && row.generation != mine {
                    return Err(restarted(&run));
                }
                Ok(row.state.map(|state| RunControl {
                    state,
                    settings: row.settings,
                }))
            })
        })
        .await
    }

    /// Keeps `baseline` as the run's latency-guard baseline, unless another process kept one
    /// first, and returns the one kept. `replacing` is the baseline read before, which this one
    /// replaces (one learned for another probe); `None` keeps it only where none is kept. The
    /// first process to learn a baseline sets it for every worker of the run, so that one
    /// joining later does not take the run's own load for idle. A restart forgets it with the
    /// run.
    pub async fn keep_probe_baseline(
        &self,
        run: &str,
        baseline: &str,
        replacing: Option<&str>,
    ) -> Result<Option<String>> {
        let (run, baseline) = (run.to_string(), baseline.to_string());
        let replacing = replacing.map(str::to_string);
        self.with_conn(move |conn| {
            Box::pin(async move {
                let d = conn.dialect();
                let (held, mut params) = match replacing {
                    Some(old) => ("probe_baseline = ?", vec![text(old)]),
                    None => ("probe_baseline IS NULL", Vec::new()),
                };
                params.splice(0..0, [text(baseline), text(run.clone())]);
                conn.execute(
                    &number_placeholders(
                        &format!(
                            "UPDATE godwit_runs SET probe_baseline = ? WHERE run = ? AND {held}"
                        ),
                        d,
                    ),
                    &params,
                )
                .await?;
                Self::read_probe_baseline(conn, &run).await
            })
        })
        .await
    }

    /// The run's latency-guard baseline, as [`StateStore::keep_probe_baseline`] kept it.
    pub async fn probe_baseline(&self, run: &str) -> Result<Option<String>> {
        let run = run.to_string();
        self.with_conn(move |conn| {
            Box::pin(async move { Self::read_probe_baseline(conn, &run).await })
        })
        .await
    }

    async fn read_probe_baseline(
        conn: &mut dyn godwit_driver::Conn,
        run: &str,
    ) -> Result<Option<String>> {
        let rows = conn
            .query(
                &number_placeholders(
                    "SELECT probe_baseline FROM godwit_runs WHERE run = ?",
                    conn.dialect(),
                ),
                &[text(run)],
            )
            .await?;
        Ok(rows.first().and_then(|r| get_text(r.get(0))))
    }

    /// Records a step's current batch size and why it is throttled now (`None`: it is not),
    /// for `godwit status`, in one UPDATE. Meant for when either changes, not for every batch.
    /// A process whose run was restarted changes nothing of the new generation's steps.
    pub async fn set_step_pace(
        &self,
        run: &str,
        step: &str,
        batch_size: u64,
        throttled: Option<&str>,
    ) -> Result<()> {
        let (run, step) = (run.to_string(), step.to_string());
        let throttled = opt_text(throttled);
        let mine = self.generation(&run);
        self.with_conn(move |conn| {
            Box::pin(async move {
                let d = conn.dialect();
                let q = format!(
                    "UPDATE godwit_steps SET batch_size = ?, throttled = ? \
                     WHERE run = ? AND step = ?{}",
                    fence(mine.is_some())
                );
                let mut params = vec![int(batch_size), throttled, text(run.clone()), text(step)];
                params.extend(fence_params(&run, mine.as_deref()));
                conn.execute(&number_placeholders(&q, d), &params).await?;
                Ok(())
            })
        })
        .await
    }

    /// Claims the right to say that `run` has stayed throttled: `true` for one caller per
    /// `every` (on the state database's clock), whichever worker of the fleet asks first, so
    /// that a fleet sends one notification, not one per worker.
    pub async fn claim_throttle_notice(
        &self,
        run: &str,
        every: std::time::Duration,
    ) -> Result<bool> {
        let run = run.to_string();
        let every = crate::lease_ms(every);
        self.with_conn(move |conn| {
            Box::pin(async move {
                let d = conn.dialect();
                let now = schema::now_ms(d);
                let q = format!(
                    "UPDATE godwit_runs SET throttle_notified_ms = {now} WHERE run = ? AND \
                     (throttle_notified_ms IS NULL OR throttle_notified_ms <= {now} - ?)"
                );
                let changed = conn
                    .execute(&number_placeholders(&q, d), &[text(run), every])
                    .await?;
                Ok(changed > 0)
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_settings_as_the_backends_give_them() {
        let columns: Vec<String> = vec!["a".into(), "b".into(), "c".into()];
        let row = |values: Vec<Value>| Row::new(columns.clone().into(), values);
        assert_eq!(
            RunSettings::read(&row(vec![Value::Int(4), Value::Null, Value::Float(2.5)]), 0),
            RunSettings {
                concurrency: Some(4),
                batch_size: None,
                max_rows_per_second: Some(2.5),
            }
        );
        let whole = row(vec![Value::Null, Value::Int(500), Value::Int(100)]);
        assert_eq!(
            RunSettings::read(&whole, 0).max_rows_per_second,
            Some(100.0)
        );
        assert!(RunSettings::read(&row(vec![]), 0).is_empty());
    }
}
