//! Control of a run from anywhere (`godwit pause|resume|cancel|retry`): a user's request written
//! to the run's row, which workers read every few hundred milliseconds.

use godwit_driver::{number_placeholders, Result};

use crate::{schema, text, Control, RunState, StateStore};

impl StateStore {
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
                conn.execute(&number_placeholders(&q, d), &[text(run)])
                    .await?;
                Ok(Some(before))
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
                        &number_placeholders(
                            "UPDATE godwit_batches SET state = 'pending', attempts = 0, lease_until_ms = NULL WHERE run = ? AND state = 'failed'",
                            d,
                        ),
                        &[text(run.clone())],
                    )
                    .await?;
                conn.execute(
                    &number_placeholders(
                        "UPDATE godwit_steps SET state = 'running', error = NULL WHERE run = ? AND state = 'failed'",
                        d,
                    ),
                    &[text(run.clone())],
                )
                .await?;
                conn.execute(
                    &number_placeholders(
                        "UPDATE godwit_runs SET state = 'running', error = NULL, finished_ms = NULL WHERE run = ? AND state = 'failed'",
                        d,
                    ),
                    &[text(run)],
                )
                .await?;
                Ok(n)
            })
        })
        .await
    }
}
