//! A step's record (`godwit_steps`): reading it, fixing its key kind and upper key once, its row
//! count, and deciding at the end of its walk whether it is done or failed.

use godwit_driver::{number_placeholders, Conn, Error, Result, Value};

use crate::fence::{ensure_generation, fence, fence_params};
use crate::{get_text, opt_text, schema, text, StateStore, StepCompletion, StepRecord};

impl StateStore {
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
                conn.execute(&number_placeholders(&q, d), &params).await?;
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
                conn.execute(&number_placeholders(&q, d), &params).await?;
                Ok(())
            })
        })
        .await
    }

    /// Decides whether a step whose walk is exhausted is finished, and marks it done or failed.
    pub async fn complete_step(&self, run: &str, step: &str) -> Result<StepCompletion> {
        let (run, step) = (run.to_string(), step.to_string());
        self.with_conn(move |conn| Box::pin(complete_step(conn, run, step, true)))
            .await
    }

    /// What [`StateStore::complete_step`] would decide, without marking the step done:
    /// `Done` here means every batch is done and the step may be marked done once its
    /// post-conditions (`ensure`) hold. A failed batch marks the step failed all the same.
    pub async fn step_finishing(&self, run: &str, step: &str) -> Result<StepCompletion> {
        let (run, step) = (run.to_string(), step.to_string());
        self.with_conn(move |conn| Box::pin(complete_step(conn, run, step, false)))
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
                conn.execute(&number_placeholders(&q, d), &params).await?;
                Ok(())
            })
        })
        .await
    }

    /// Each step of `run` with its state (`pending`, `running`, `done`, `failed`), in plan order.
    pub async fn steps_done(&self, run: &str) -> Result<Vec<(String, String)>> {
        let rows = self
            .query(
                "SELECT step, state FROM godwit_steps WHERE run = ? ORDER BY position",
                vec![text(run)],
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
    }
}

async fn read_step(conn: &mut dyn Conn, run: String, step: String) -> Result<StepRecord> {
    let d = conn.dialect();
    let rows = conn
        .query(
            &number_placeholders(
                "SELECT state, initialized, key_kind, upper_key, cursor_key, next_batch, exhausted, rows_total \
                 FROM godwit_steps WHERE run = ? AND step = ?",
                d,
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

async fn complete_step(
    conn: &mut dyn Conn,
    run: String,
    step: String,
    mark: bool,
) -> Result<StepCompletion> {
    let d = conn.dialect();
    let rows = conn
        .query(
            &number_placeholders(
                "SELECT state, error_code, error, start_key, end_key FROM godwit_batches \
                 WHERE run = ? AND step = ? AND state <> 'done' \
                 ORDER BY CASE WHEN state = 'failed' THEN 0 ELSE 1 END, batch LIMIT 1",
                d,
            ),
            &[text(run.clone()), text(step.clone())],
        )
        .await?;
    let now = schema::now_ms(d);
    match rows.first() {
        None => {
            // Only a walk that really ended, with every batch it numbered present: a worker's
            // idea of the cursor can be stale (a claim lost in a server crash rewinds it).
            let finished = "exhausted = 1 AND next_batch = (SELECT COUNT(*) FROM godwit_batches b \
                            WHERE b.run = ? AND b.step = ?)";
            let params = [
                text(run.clone()),
                text(step.clone()),
                text(run.clone()),
                text(step.clone()),
            ];
            if !mark {
                let q = format!(
                    "SELECT 1 FROM godwit_steps \
                     WHERE run = ? AND step = ? AND (state = 'done' OR ({finished}))"
                );
                let rows = conn.query(&number_placeholders(&q, d), &params).await?;
                return Ok(if rows.is_empty() {
                    StepCompletion::Waiting
                } else {
                    StepCompletion::Done
                });
            }
            let q = format!(
                "UPDATE godwit_steps SET state = 'done', finished_ms = {now} \
                 WHERE run = ? AND step = ? AND state <> 'done' AND {finished}"
            );
            conn.execute(&number_placeholders(&q, d), &params).await?;
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
                &number_placeholders(
                    &format!(
                        "UPDATE godwit_steps SET state = 'failed', error = ?, finished_ms = {now} \
                         WHERE run = ? AND step = ?"
                    ),
                    d,
                ),
                &[text(message.clone()), text(run), text(step)],
            )
            .await?;
            Ok(StepCompletion::Failed(message))
        }
        Some(_) => Ok(StepCompletion::Waiting),
    }
}
