//! One step in one process: fix its walk, keep `concurrency` of its batches in flight
//! (claimed in `claim.rs`, committed in `commit.rs`), and decide when it is finished.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use godwit_batch::{open_walker, BatchError};
use godwit_driver::{Conn, KeyKind, Value};
use godwit_state::{ClaimedBatch, StepCompletion, StepRecord};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinSet;

use crate::claim::{claim_next, release, release_queued, still_ours, ClaimCache, Claimed};
use crate::commit::{execute, Executed};
use crate::ctx::{RunCtx, StepCtx, POLL};
use crate::ensure::ensure_holds;
use crate::failure::{Failure, FailureKind};
use crate::retry::{backoff, with_retries, yield_backoff};
use crate::stop::{StopLevel, StopSignal};
use crate::Event;

/// How often a process with nothing to claim looks again, while other processes hold the
/// step's last batches (their leases may run out).
const IDLE_POLL: Duration = Duration::from_millis(250);

/// How a step ended in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StepResult {
    Done,
    Failed(Failure),
    Stopped,
}

/// Why a step's walk could not start.
enum StartError {
    /// The plan cannot run as written (the key, found once a one-off step made the table).
    Plan(String),
    Database(godwit_driver::Error),
}

impl From<godwit_driver::Error> for StartError {
    fn from(e: godwit_driver::Error) -> StartError {
        StartError::Database(e)
    }
}

/// Works on a step until it is done, fails, or the run is asked to stop.
pub(crate) async fn drive(ctx: Arc<StepCtx>) -> StepResult {
    let (walker, record) = match start_walk(&ctx).await {
        Ok(started) => started,
        Err(ended) => return ended,
    };
    announce(&ctx, &record).await;
    let _watching = ctx.pace().watch(ctx.run().pool().url());
    let mut flight = Flight {
        ctx: ctx.clone(),
        stop: ctx.run().stop().clone(),
        walker: Some(walker),
        cache: ClaimCache::default(),
        tasks: JoinSet::new(),
        result: None,
        consecutive_errors: 0,
        throttled_since: None,
    };
    flight.fly().await;
    let result = flight.land().await;
    record_end(&ctx, &result).await;
    result
}

/// Opens the step's key walk and fixes its range, riding out a short outage (a database
/// restart) as claims do. `Err` is how the step ends instead.
///
/// The key walk has a connection of its own: it runs one query at a time, and on PostgreSQL
/// it carries planner settings that must not touch the batches' statements.
async fn start_walk(ctx: &StepCtx) -> Result<(Box<dyn Conn>, StepRecord), StepResult> {
    let run = ctx.run();
    let mut stop = run.stop().clone();
    let mut attempt = 0;
    loop {
        let starting = async {
            let mut conn = open_walker(ctx.work().walk_url(), ctx.settings().batch_timeout).await?;
            let record = init(ctx, conn.as_mut()).await?;
            Ok::<_, StartError>((conn, record))
        };
        let started = tokio::select! {
            started = starting => started,
            _ = stop.reached(StopLevel::Abort) => return Err(StepResult::Stopped),
        };
        let context = format!("step {:?}: cannot start its key walk", ctx.name());
        let e = match started {
            Ok(started) => return Ok(started),
            Err(StartError::Plan(problem)) => {
                let failure = Failure::new(FailureKind::Plan, format!("{context}: {problem}"));
                return Err(StepResult::Failed(failure));
            }
            Err(StartError::Database(e)) => e,
        };
        if godwit_state::is_restarted(&e) {
            run.mark_restarted();
            return Err(StepResult::Stopped);
        }
        let again = e.kind().is_retryable() && attempt < 6 && stop.level() == StopLevel::Run;
        if !again {
            let failure = Failure::from_error(FailureKind::Database, context, &e);
            return Err(StepResult::Failed(failure));
        }
        tracing::warn!(step = ctx.name(), error = %e, "cannot start the step yet; trying again");
        tokio::time::sleep(backoff(attempt)).await;
        attempt += 1;
    }
}

/// Fixes the step's walk (once per run, whoever comes first) and returns its record.
async fn init(ctx: &StepCtx, conn: &mut dyn Conn) -> Result<StepRecord, StartError> {
    let run = ctx.run();
    let mut record = run.state().step_record(run.name(), ctx.name()).await?;
    if !record.initialized {
        record = match ctx.work().walk() {
            None => {
                run.state()
                    .init_step(run.name(), ctx.name(), None, None, false)
                    .await?
            }
            Some(walk) => {
                // Checked before the run when the table existed then; a table made by a
                // one-off step of the plan is checked now.
                if let Some(w) = ctx.step().kind.walked() {
                    if let Some(p) =
                        godwit_batch::key_problem(conn, w.table, w.key, w.filter).await?
                    {
                        return Err(StartError::Plan(format!("{} ({})", p.message, p.code)));
                    }
                }
                let upper = walk.upper_key(conn).await?;
                let (kind, encoded) = match &upper {
                    None | Some(Value::Null) => (None, None),
                    Some(v) => {
                        let kind = key_kind(ctx.name(), v).map_err(StartError::Plan)?;
                        (Some(kind), Some(kind.encode(v)?))
                    }
                };
                run.state()
                    .init_step(
                        run.name(),
                        ctx.name(),
                        kind.map(KeyKind::as_str),
                        encoded.as_deref(),
                        encoded.is_none(),
                    )
                    .await?
            }
        };
    }
    if let Some(kind) = record.key_kind.as_deref().and_then(KeyKind::parse) {
        ctx.work().set_key_kind(kind);
    }
    Ok(record)
}

/// The kind of the key of `step`, from a value of it (its highest); why not when it holds no
/// key that can be walked.
pub(crate) fn key_kind(step: &str, value: &Value) -> Result<KeyKind, String> {
    KeyKind::of(value).ok_or_else(|| {
        format!(
            "step {step:?}: the key column holds {value:?}; keys must be integers, text, UUIDs, dates or timestamps"
        )
    })
}

/// Counts the step's rows in the background so that the first batch does not wait for it.
fn spawn_count(ctx: Arc<StepCtx>, record: &StepRecord) {
    let Some(walk) = ctx.work().walk() else {
        return;
    };
    let (Some(kind), Some(upper)) = (ctx.work().key_kind(), record.upper_key.clone()) else {
        return;
    };
    let walk = walk.clone();
    tokio::spawn(async move {
        let run = ctx.run();
        let counted = async {
            let upper = kind.decode(&upper)?;
            // A fresh connection: pooled ones may carry the batches' time limit.
            let mut conn = godwit_db::connect(ctx.work().walk_url(), &Default::default()).await?;
            let n = walk.count(conn.as_mut(), &upper).await?;
            run.state()
                .set_rows_total(run.name(), ctx.name(), n)
                .await?;
            Ok::<i64, godwit_driver::Error>(n)
        };
        match counted.await {
            Ok(n) => run.events().send(Event::StepEstimate {
                step: ctx.name().to_string(),
                rows_total: n,
            }),
            Err(e) => {
                tracing::warn!(step = ctx.name(), error = %e, "could not count the step's rows")
            }
        }
    });
}

/// Tells the front end the step started, with the rows done before, and counts its rows when
/// they are not known yet.
async fn announce(ctx: &Arc<StepCtx>, record: &StepRecord) {
    let run = ctx.run();
    let rows_done = run
        .state()
        .status(run.name())
        .await
        .ok()
        .flatten()
        .and_then(|s| s.steps.into_iter().find(|s| s.name == ctx.name()))
        .map_or(0, |s| s.rows_done);
    run.events().send(Event::StepStarted {
        step: ctx.name().to_string(),
        rows_total: record.rows_total,
        rows_done,
    });
    if record.rows_total.is_none() {
        spawn_count(ctx.clone(), record);
    }
}

/// One step's batches in this process: what its claim loop keeps between claims.
struct Flight {
    ctx: Arc<StepCtx>,
    stop: StopSignal,
    /// The key walk's connection; `None` after it was lost, until opened again.
    walker: Option<Box<dyn Conn>>,
    cache: ClaimCache,
    tasks: JoinSet<Result<(), Failure>>,
    /// How the step ended, once it did: done, or its first failure.
    result: Option<StepResult>,
    /// Claims that failed in a row.
    consecutive_errors: u32,
    /// Since when the step is throttled here, as last reported.
    throttled_since: Option<Instant>,
}

impl Flight {
    /// Claims batches and starts them until the step is done, fails or the run stops.
    async fn fly(&mut self) {
        loop {
            while let Some(joined) = self.tasks.try_join_next() {
                self.note(joined);
            }
            let run = self.ctx.run();
            if self.result.is_some() || run.is_failed() || self.stop.level() >= StopLevel::Drain {
                return;
            }
            if run.is_paused() {
                // A paused run is not throttled, as `status` says.
                self.note_throttle(None);
                self.pause().await;
                continue;
            }
            record_pace(&self.ctx).await;
            let throttled = self.ctx.pace().throttled(run.pace());
            let is_throttled = throttled.is_some();
            self.note_throttle(throttled);
            if is_throttled {
                // As paused: batches in flight finish, nothing new starts, and workers go on
                // by themselves once the signal clears.
                self.pause().await;
                continue;
            }
            // Claim before waiting for a free slot, so that the next batch's key walk and
            // claim overlap the batches in flight instead of adding to each slot's idle time.
            // A second signal must not wait for a slow walk or an unreachable state database.
            let claimed = tokio::select! {
                claimed = claim_next(&self.ctx, &mut self.walker, &mut self.cache) => claimed,
                _ = self.stop.reached(StopLevel::Abort) => return,
            };
            let next = match claimed {
                Ok(Some(claimed)) => {
                    self.consecutive_errors = 0;
                    self.start(claimed).await
                }
                Ok(None) => {
                    self.consecutive_errors = 0;
                    self.nothing_to_claim().await;
                    ControlFlow::Continue(())
                }
                Err(e) => self.claim_failed(e).await,
            };
            if next.is_break() {
                return;
            }
        }
    }

    /// Paused from elsewhere: batches in flight go on, nothing new is claimed, and the
    /// batches claimed ahead go back.
    async fn pause(&mut self) {
        release_queued(&self.ctx, &mut self.cache).await;
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = self.stop.reached(StopLevel::Drain) => {}
        }
    }

    /// Starts a claimed batch once a slot is free; breaks when asked to stop meanwhile.
    ///
    /// Under a rate limit the batch first waits for its turn.
    async fn start(&mut self, claimed: Claimed) -> ControlFlow<()> {
        let Claimed {
            batch,
            claimed_at,
            conn,
        } = claimed;
        let run = self.ctx.run();
        run.track(&batch, self.ctx.settings().lease);
        let turn = self
            .ctx
            .pace()
            .book(run.pace(), u64::try_from(batch.n_rows()).unwrap_or(0));
        let permit = tokio::select! {
            // Stopping wins over a free slot: nothing new starts once asked to stop.
            biased;
            _ = self.stop.reached(StopLevel::Drain) => None,
            permit = async {
                tokio::time::sleep(turn).await;
                run.permits().acquire_owned().await
            } => permit.ok(),
        };
        let Some(permit) = permit else {
            run.pool().give(conn);
            release(&self.ctx, &batch).await;
            return ControlFlow::Break(());
        };
        if !still_ours(&self.ctx, &batch, claimed_at).await {
            run.untrack(&batch);
            run.pool().give(conn);
            return ControlFlow::Continue(());
        }
        self.tasks
            .spawn(run_batch(self.ctx.clone(), conn, batch, permit));
        ControlFlow::Continue(())
    }

    /// Nothing to claim now: wait for a batch in flight, or see whether the step is finished,
    /// or wait for other processes' batches (their leases may run out).
    async fn nothing_to_claim(&mut self) {
        if let Some(joined) = self.tasks.join_next().await {
            self.note(joined);
            return;
        }
        match self.complete().await {
            Ok(Err(unmet)) => self.result = Some(StepResult::Failed(unmet)),
            Ok(Ok(StepCompletion::Done)) => self.result = Some(StepResult::Done),
            Ok(Ok(StepCompletion::Failed(message))) => {
                let failure = Failure::new(FailureKind::Elsewhere, message);
                self.result = Some(StepResult::Failed(failure));
            }
            Ok(Ok(StepCompletion::Waiting)) => {
                self.cache.forget_cursor();
                tokio::select! {
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                    _ = self.stop.reached(StopLevel::Drain) => {}
                }
            }
            Err(e) => {
                tracing::warn!(step = self.ctx.name(), error = %e, "could not check whether the step is finished");
                tokio::time::sleep(IDLE_POLL).await;
            }
        }
    }

    /// Marks the step done when every batch is done and its `ensure` queries hold (asked
    /// first, so that a crash between the two asks them again); a post-condition that does
    /// not hold fails the step.
    async fn complete(&mut self) -> Result<Result<StepCompletion, Failure>, godwit_driver::Error> {
        let run = self.ctx.run();
        if !self.ctx.step().ensure.is_empty() {
            let finishing = run
                .state()
                .step_finishing(run.name(), self.ctx.name())
                .await?;
            if finishing != StepCompletion::Done {
                return Ok(Ok(finishing));
            }
            if let Err(unmet) = ensure_holds(&self.ctx).await {
                return Ok(Err(unmet));
            }
        }
        Ok(Ok(run
            .state()
            .complete_step(run.name(), self.ctx.name())
            .await?))
    }

    /// A claim failed: try again after a while, or fail the step; breaks when another process
    /// restarted the run.
    async fn claim_failed(&mut self, e: godwit_driver::Error) -> ControlFlow<()> {
        if godwit_state::is_restarted(&e) {
            // The run's steps are another plan's now: claim nothing more of them.
            self.ctx.run().mark_restarted();
            return ControlFlow::Break(());
        }
        if e.kind().is_retryable() && self.consecutive_errors < 30 {
            let delay = backoff(i64::from(self.consecutive_errors.min(5)));
            self.consecutive_errors += 1;
            tracing::warn!(step = self.ctx.name(), error = %e, ?delay, "claiming a batch failed; trying again");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.stop.reached(StopLevel::Drain) => {}
            }
            return ControlFlow::Continue(());
        }
        let context = format!("step {:?}: cannot claim a batch", self.ctx.name());
        let failure = Failure::from_error(FailureKind::State, context, &e);
        self.result = Some(StepResult::Failed(failure));
        ControlFlow::Continue(())
    }

    /// Reports when the step becomes throttled here and when it goes on (`reason` is `None`
    /// when it may start batches, or stops looking).
    fn note_throttle(&mut self, reason: Option<String>) {
        let step = self.ctx.name().to_string();
        match (reason, self.throttled_since) {
            (Some(reason), None) => {
                self.throttled_since = Some(Instant::now());
                self.ctx
                    .run()
                    .events()
                    .send(Event::StepThrottled { step, reason });
            }
            (None, Some(since)) => {
                self.throttled_since = None;
                let throttled_for = since.elapsed();
                self.ctx.run().events().send(Event::StepUnthrottled {
                    step,
                    throttled_for,
                });
            }
            _ => {}
        }
    }

    /// Notes a batch task that ended: its failure, if the step has none yet.
    fn note(&mut self, joined: Result<Result<(), Failure>, tokio::task::JoinError>) {
        let failure = match joined {
            Ok(Ok(())) => return,
            Ok(Err(failure)) => failure,
            Err(e) => Failure::new(
                FailureKind::Internal,
                format!("a batch task ended unexpectedly: {e}"),
            ),
        };
        self.result.get_or_insert(StepResult::Failed(failure));
    }

    /// Gives back the batches claimed ahead that will not run here now, waits for the
    /// batches in flight, and says how the step ended.
    async fn land(mut self) -> StepResult {
        self.note_throttle(None);
        release_queued(&self.ctx, &mut self.cache).await;
        while let Some(joined) = self.tasks.join_next().await {
            self.note(joined);
        }
        self.result.unwrap_or(StepResult::Stopped)
    }
}

/// Writes the step's batch size and why it is throttled for `status`, when they changed.
async fn record_pace(ctx: &StepCtx) {
    let run = ctx.run();
    let Some((size, reason)) = ctx.pace().to_record(run.pace()) else {
        return;
    };
    let recorded = run
        .state()
        .set_step_pace(run.name(), ctx.name(), size, reason.as_deref())
        .await;
    if let Err(e) = recorded {
        ctx.pace().forget_recorded();
        tracing::debug!(step = ctx.name(), error = %e, "could not record the step's pace");
    }
}

/// Reports how the step ended, and records a failure in the state store.
async fn record_end(ctx: &StepCtx, result: &StepResult) {
    let run = ctx.run();
    match result {
        StepResult::Done => run.events().send(Event::StepDone {
            step: ctx.name().to_string(),
        }),
        StepResult::Failed(failure) => {
            run.mark_failed();
            let recorded = run
                .state()
                .fail_step(run.name(), ctx.name(), failure.message())
                .await;
            if let Err(e) = recorded {
                tracing::warn!(step = ctx.name(), error = %e, "could not record the step as failed");
            }
            run.events().send(Event::StepFailed {
                step: ctx.name().to_string(),
                error: failure.to_string(),
            });
        }
        StepResult::Stopped => {}
    }
}

/// Runs one claimed batch to its end in this process. `Err` is a batch that failed for good.
async fn run_batch(
    ctx: Arc<StepCtx>,
    mut conn: Box<dyn Conn>,
    batch: ClaimedBatch,
    _permit: OwnedSemaphorePermit,
) -> Result<(), Failure> {
    let run = ctx.run();
    run.track(&batch, ctx.settings().lease);
    let _in_flight = InFlight::start(&ctx, &batch);
    let mut stop = run.stop().clone();
    let executed = {
        let _running = run.running();
        tokio::select! {
            r = execute(&ctx, conn.as_mut(), &batch) => Some(r),
            _ = stop.reached(StopLevel::Abort) => None,
        }
    };
    run.untrack(&batch);
    let Some(executed) = executed else {
        aborted(&ctx, conn, &batch).await;
        return Ok(());
    };
    match executed {
        Ok(Executed::Committed(outcome, rows_redone)) => {
            run.pool().give(conn);
            ctx.pace()
                .observe(u64::try_from(batch.n_rows()).unwrap_or(0), outcome.duration);
            run.events().send(Event::BatchDone {
                step: ctx.name().to_string(),
                batch: batch.number(),
                rows: batch.n_rows(),
                rows_affected: outcome.rows_affected,
                rows_redone,
                duration: outcome.duration,
            });
            Ok(())
        }
        Ok(Executed::Fenced) => {
            run.pool().give(conn);
            tracing::warn!(
                step = ctx.name(),
                batch = batch.number(),
                "lease lost: another worker owns this batch now"
            );
            Ok(())
        }
        Err(e) => {
            if !e.lost_connection() && conn.rollback().await.is_ok() {
                run.pool().give(conn);
            }
            failed(&ctx, &batch, e).await
        }
    }
}

/// Reports a batch as running here from [`InFlight::start`] until dropped, however the batch
/// ends (even by a panic), so that a count of batches in flight never drifts.
struct InFlight<'a> {
    ctx: &'a StepCtx,
    batch: i64,
}

impl InFlight<'_> {
    fn start<'a>(ctx: &'a StepCtx, batch: &ClaimedBatch) -> InFlight<'a> {
        ctx.run().events().send(Event::BatchStarted {
            step: ctx.name().to_string(),
            batch: batch.number(),
        });
        InFlight {
            ctx,
            batch: batch.number(),
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.ctx.run().events().send(Event::BatchEnded {
            step: self.ctx.name().to_string(),
            batch: self.batch,
        });
    }
}

/// A batch stopped by a second signal: rolled back, and given back at once.
async fn aborted(ctx: &StepCtx, conn: Box<dyn Conn>, batch: &ClaimedBatch) {
    // Dropping the connection makes the server roll the batch back, but only once its
    // statement ends, holding its row locks until then: end the session on the server so
    // that whoever takes the batch next does not wait on them.
    let run = ctx.run();
    let session = conn.session_id();
    drop(conn);
    if let Some(session) = session {
        end_session(run, session).await;
    }
    if let Err(e) = with_retries(|| run.state().release(batch)).await {
        tracing::warn!(step = ctx.name(), error = %e, "could not release an aborted batch; it returns when its lease ends");
    }
}

/// A batch that failed: recorded for a retry after a backoff while the error is transient
/// and attempts are left, otherwise recorded as failed and returned as the step's failure.
async fn failed(ctx: &StepCtx, batch: &ClaimedBatch, e: BatchError) -> Result<(), Failure> {
    let run = ctx.run();
    if let BatchError::Database(lock) = &e {
        if lock.is_lock_timeout() {
            yielded(ctx, batch, lock).await;
            return Ok(());
        }
    }
    let failure = batch_failure(ctx.describe(batch), &e);
    let recorded_error = e.to_driver_error();
    let retry = e.is_retryable() && batch.attempts() + 1 < i64::from(ctx.settings().max_attempts);
    if !retry {
        let recorded =
            with_retries(|| run.state().record_failure(batch, &recorded_error, None)).await;
        if let Err(record_err) = recorded {
            tracing::error!(step = ctx.name(), error = %record_err, "could not record a failed batch");
        }
        run.events().send(Event::BatchFailed {
            step: ctx.name().to_string(),
            batch: batch.number(),
            error: failure.to_string(),
        });
        return Err(failure);
    }
    let delay = backoff(batch.attempts());
    tracing::warn!(step = ctx.name(), batch = batch.number(), error = %failure, "retrying");
    run.events().send(Event::BatchRetry {
        step: ctx.name().to_string(),
        batch: batch.number(),
        attempt: batch.attempts() + 1,
        error: failure.to_string(),
        delay,
    });
    let recorded = with_retries(|| {
        run.state()
            .record_failure(batch, &recorded_error, Some(delay))
    })
    .await;
    if let Err(e) = recorded {
        tracing::warn!(step = ctx.name(), error = %e, "could not record a retry; the batch returns when its lease ends");
    }
    Ok(())
}

/// A batch that met a lock someone else holds and gave up (see `commit::LOCK_TIMEOUT`): it
/// goes back for a retry after a short backoff, without counting an attempt, however long the
/// application holds its lock.
async fn yielded(ctx: &StepCtx, batch: &ClaimedBatch, lock: &godwit_driver::Error) {
    let run = ctx.run();
    let delay = yield_backoff();
    tracing::info!(step = ctx.name(), batch = batch.number(), error = %lock, ?delay, "yielded to a lock held elsewhere");
    run.events().send(Event::BatchRetry {
        step: ctx.name().to_string(),
        batch: batch.number(),
        attempt: batch.attempts() + 1,
        error: format!(
            "{}: yielded to a lock held elsewhere: {lock}",
            ctx.describe(batch)
        ),
        delay,
    });
    if let Err(e) = with_retries(|| run.state().record_yield(batch, lock, delay)).await {
        tracing::warn!(step = ctx.name(), error = %e, "could not record a yield; the batch returns when its lease ends");
    }
}

/// A batch's error as the step's failure: which part failed, after `context` (the batch).
pub(crate) fn batch_failure(context: String, e: &BatchError) -> Failure {
    match e {
        BatchError::Database(e) => Failure::from_error(FailureKind::Database, context, e),
        BatchError::Transform(e) => Failure::from_error(FailureKind::Transform, context, e),
        BatchError::Row(message) => Failure::new(FailureKind::Row, format!("{context}: {message}")),
    }
}

/// Ends a batch's session on the server from another connection; best effort, since the
/// server also ends it when its statement finishes and finds the client gone.
async fn end_session(run: &RunCtx, session: i64) {
    let ended = async {
        let mut conn = run.pool().take().await?;
        conn.end_session(session).await?;
        run.pool().give(conn);
        Ok::<(), godwit_driver::Error>(())
    };
    match tokio::time::timeout(Duration::from_secs(5), ended).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(session, error = %e, "could not end an aborted batch's session; it ends with its statement")
        }
        Err(_) => tracing::warn!(
            session,
            "ending an aborted batch's session timed out; it ends with its statement"
        ),
    }
}
