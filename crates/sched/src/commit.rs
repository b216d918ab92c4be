//! Where a batch commits: its transaction opens here, the batch's work (`godwit_batch::Work`)
//! writes in it, and the batch's done record and dead letters are recorded with it (or just
//! after it, with a separate state database) before it commits. A dry run's batch opens the
//! same transaction here and rolls it back (`rehearse`).

use std::time::{Duration, Instant};

use godwit_batch::{BatchError, Work, Written};
use godwit_driver::{Conn, TxOptions};
use godwit_plan::Settings;
use godwit_state::{BatchOutcome, ClaimedBatch, DeadLetter, StateStore};

use crate::ctx::StepCtx;
use crate::retry::with_retries;

/// How long a batch waits for a row lock held by someone else before it yields: well under
/// PostgreSQL's `deadlock_timeout` (1 s), so a batch in a lock cycle with an application gives
/// up before the application could be chosen as the deadlock's victim. MariaDB counts whole
/// seconds and detects a cycle at once: there the batch does not wait at all. MySQL: one
/// second.
pub(crate) const LOCK_TIMEOUT: Duration = Duration::from_millis(100);

/// How a batch's transaction is opened.
fn batch_tx(settings: &Settings, async_commit: bool) -> TxOptions {
    TxOptions {
        statement_timeout: Some(settings.batch_timeout),
        // Yield to the application: a batch that meets a row lock gives up soon, rolls back
        // (freeing the rows it holds for whoever waits on them) and tries again later, so it
        // never sits in a lock queue, or a deadlock, with an application's transaction.
        lock_timeout: Some(LOCK_TIMEOUT),
        async_commit,
    }
}

/// Rehearses a batch (`godwit run --dry-run`): what [`execute`] does, in a transaction opened
/// the same way, rolled back instead of recorded and committed. `start` and `end` are the
/// batch's keys as the state tables would hold them (`None` for a one-off step). A one-off
/// statement that runs outside a transaction is refused here, never run: nothing could undo it.
/// On error the transaction may still be open: the caller rolls back or drops the connection.
pub(crate) async fn rehearse(
    work: &Work,
    settings: &Settings,
    conn: &mut dyn Conn,
    start: Option<&str>,
    end: Option<&str>,
) -> Result<Written, BatchError> {
    if work.runs_outside_transaction() {
        return Err(godwit_driver::Error::permanent(
            "a statement that runs outside a transaction cannot be rehearsed: nothing would undo it",
        )
        .into());
    }
    let begun = work.start(conn, start, end).await?;
    conn.begin(batch_tx(settings, false)).await?;
    let written = work.write(conn, begun).await?;
    conn.rollback().await?;
    Ok(written)
}

/// How a batch ended when it did not fail.
pub(crate) enum Executed {
    /// Committed with its done record; the rows an optimistic transform transformed again.
    Committed(BatchOutcome, u64),
    /// Another worker took the batch over after this one's lease ran out; with the default
    /// state location nothing was committed.
    Fenced,
}

/// Runs `batch` on `conn`. On error the transaction may still be open: the caller rolls back
/// or drops the connection. The error says which part failed (the database, the transform, a
/// row), and a state write in the batch's transaction counts as the database's.
pub(crate) async fn execute(
    ctx: &StepCtx,
    conn: &mut dyn Conn,
    batch: &ClaimedBatch,
) -> Result<Executed, BatchError> {
    let run = ctx.run();
    // Committing asynchronously is safe only when the done record shares the batch's
    // transaction: a crash then loses the batch and its record together. The step's final
    // record commits synchronously, which flushes every earlier commit.
    let tx = batch_tx(ctx.settings(), run.exactly_once());
    let started = Instant::now();
    // The transaction opens here and only here, for every kind of step: what must come
    // before it (a statement that refuses one, a copy's first read) runs first.
    let work = ctx.work();
    let begun = work.start(conn, batch.start_key(), batch.end_key()).await?;
    conn.begin(tx).await?;
    let written = work.write(conn, begun).await?;
    let rows_affected = written.rows;
    let rows_redone = written.rows_redone;
    if rows_redone > 0 {
        tracing::debug!(
            step = batch.step(),
            batch = batch.number(),
            rows_redone,
            "rows changed since the batch read them were read again under lock and transformed again"
        );
    }
    let dead_letters: Vec<DeadLetter> = written
        .refused
        .into_iter()
        .map(|l| DeadLetter {
            key: l.key,
            error: l.error,
            row: l.row,
        })
        .collect();
    let outcome = BatchOutcome {
        rows_affected,
        rows_skipped: dead_letters.len() as u64,
        duration: started.elapsed(),
    };
    if run.exactly_once() {
        if !dead_letters.is_empty() {
            StateStore::record_dead_letters(conn, batch, &dead_letters).await?;
        }
        if !StateStore::record_done(conn, batch, outcome).await? {
            conn.rollback().await?;
            return Ok(Executed::Fenced);
        }
        conn.commit().await?;
        return Ok(Executed::Committed(outcome, rows_redone));
    }
    // The batch commits before its record here, so the record cannot fence it: confirm the
    // claim just before the commit instead (a lease taken over, or a run restarted by another
    // process, leaves this claim's token on no row). Only a stop between this check and the
    // commit can still apply a batch someone else owns (at-least-once).
    if !run
        .state()
        .extend_lease(batch, ctx.settings().lease)
        .await?
    {
        conn.rollback().await?;
        return Ok(Executed::Fenced);
    }
    conn.commit().await?;
    if !dead_letters.is_empty() {
        // Keyed by row, so writing them again (the batch re-run after a crash) replaces rather
        // than adds. A state database that stays unreachable loses these letters, not the
        // batch: failing it here would apply it again.
        if let Err(e) =
            with_retries(|| run.state().record_dead_letters_here(batch, &dead_letters)).await
        {
            tracing::error!(step = batch.step(), batch = batch.number(), error = %e,
                "the batch committed but its skipped rows could not be recorded");
        }
    }
    // At-least-once: the batch is committed; only a crash before this record re-applies it.
    // A failing state database is waited out rather than reported as a batch failure, which
    // would run the batch again.
    match with_retries(|| run.state().record_done_here(batch, outcome)).await {
        Ok(true) => Ok(Executed::Committed(outcome, rows_redone)),
        Ok(false) => Ok(Executed::Fenced),
        Err(e) => {
            tracing::error!(step = batch.step(), batch = batch.number(), error = %e,
                "the batch committed but its record could not be written; it runs again when its lease ends");
            Ok(Executed::Committed(outcome, rows_redone))
        }
    }
}
