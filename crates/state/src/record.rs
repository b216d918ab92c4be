//! What became of a claimed batch: done (in the batch's own transaction when the state lives in
//! the plan's database), failed, or given back. Each record matches only the batch row that
//! still carries the worker's token and the run's generation.

use std::time::Duration;

use godwit_driver::{number_placeholders, Conn, Error, Result, Value};

use crate::fence::{fence, fence_params};
use crate::{lease_ms, opt_text, schema, text, BatchOutcome, ClaimedBatch, StateStore};

impl StateStore {
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
        let set = format!(
            "state = 'done', finished_ms = {}, duration_ms = ?, rows_affected = ?, \
             rows_skipped = ?, error = NULL, error_code = NULL",
            schema::now_ms(conn.dialect())
        );
        let params = vec![
            Value::Int(i64::try_from(outcome.duration.as_millis()).unwrap_or(i64::MAX)),
            Value::Int(i64::try_from(outcome.rows_affected).unwrap_or(i64::MAX)),
            Value::Int(i64::try_from(outcome.rows_skipped).unwrap_or(i64::MAX)),
        ];
        let n = update_claimed(conn, batch, &set, params).await?;
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

    /// Records a failed attempt. With `retry_after` the batch is released for anyone to claim
    /// once that delay has passed (the backoff); without, it is failed for good.
    pub async fn record_failure(
        &self,
        batch: &ClaimedBatch,
        error: &Error,
        retry_after: Option<Duration>,
    ) -> Result<()> {
        self.record_setback(batch, error, retry_after, true).await
    }

    /// Records a batch that yielded to a lock someone else holds: released for anyone to claim
    /// after `retry_after`, with the error kept for `status`, and no attempt counted, since the
    /// batch did nothing wrong and a long-held lock must not fail the run.
    pub async fn record_yield(
        &self,
        batch: &ClaimedBatch,
        error: &Error,
        retry_after: Duration,
    ) -> Result<()> {
        self.record_setback(batch, error, Some(retry_after), false)
            .await
    }

    async fn record_setback(
        &self,
        batch: &ClaimedBatch,
        error: &Error,
        retry_after: Option<Duration>,
        count_attempt: bool,
    ) -> Result<()> {
        let batch = batch.clone();
        let (code, message) = (
            error.code().map(str::to_string),
            error.message().to_string(),
        );
        self.with_conn(move |conn| {
            Box::pin(async move {
                let now = schema::now_ms(conn.dialect());
                let (state, not_before) = match retry_after {
                    Some(delay) => ("pending", lease_ms(delay)),
                    None => ("failed", Value::Int(0)),
                };
                let attempts = if count_attempt {
                    "attempts + 1"
                } else {
                    "attempts"
                };
                let set = format!(
                    "state = ?, token = NULL, lease_until_ms = {now} + ?, \
                     attempts = {attempts}, error_code = ?, error = ?, finished_ms = {now}"
                );
                let params = vec![
                    text(state),
                    not_before,
                    opt_text(code.as_deref()),
                    text(message),
                ];
                update_claimed(conn, &batch, &set, params).await.map(drop)
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
                let set = "state = 'pending', token = NULL, lease_until_ms = NULL";
                update_claimed(conn, &batch, set, Vec::new())
                    .await
                    .map(drop)
            })
        })
        .await
    }

    /// Gives back every batch of the run that `worker` still holds. Called when the worker's
    /// batches have all ended (committed, rolled back or abandoned), so that nothing it claimed
    /// waits for a lease to run out.
    pub async fn release_worker(&self, run: &str, worker: &str) -> Result<u64> {
        self.execute(
            "UPDATE godwit_batches SET state = 'pending', token = NULL, lease_until_ms = NULL \
             WHERE run = ? AND worker = ? AND state = 'claimed'",
            vec![text(run), text(worker)],
        )
        .await
    }
}

/// Updates the batch row only while it is still this claim's: claimed, with the claim's token,
/// in the run's generation (the fence). `set` is the statement's `SET` list and `params` its
/// parameters; returns the number of rows updated, 0 or 1.
async fn update_claimed(
    conn: &mut dyn Conn,
    batch: &ClaimedBatch,
    set: &str,
    mut params: Vec<Value>,
) -> Result<u64> {
    let q = format!(
        "UPDATE godwit_batches SET {set} \
         WHERE run = ? AND step = ? AND batch = ? AND token = ? AND state = 'claimed'{}",
        fence(batch.generation.is_some())
    );
    params.extend([
        text(batch.run.clone()),
        text(batch.step.clone()),
        Value::Int(batch.batch),
        text(batch.token.clone()),
    ]);
    params.extend(fence_params(&batch.run, batch.generation.as_deref()));
    conn.execute(&number_placeholders(&q, conn.dialect()), &params)
        .await
}
