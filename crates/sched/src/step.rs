//! One step in one process: fix its walk, claim batches, keep `concurrency` of them in flight,
//! and decide when it is finished.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use godwit_batch::{open_walker, Work};
use godwit_driver::{Conn, Dialect, Error, ErrorKind, KeyKind, Value};
use godwit_plan::{Settings, Step, StepKind};
use godwit_state::{ClaimedBatch, NewBatch, StepCompletion, StepRecord};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinSet;

use crate::batch::{self, Executed};
use crate::run::RunCtx;
use crate::stop::StopLevel;
use crate::Event;

/// How often a process with nothing to claim looks again, while other processes hold the
/// step's last batches (their leases may run out).
const IDLE_POLL: Duration = Duration::from_millis(250);

pub(crate) struct StepCtx {
    run: Arc<RunCtx>,
    step: Step,
    work: Work,
}

/// How a step ended in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StepResult {
    Done,
    Failed(String),
    Stopped,
}

impl StepCtx {
    pub(crate) fn new(
        run: Arc<RunCtx>,
        step: Step,
        dialect: Dialect,
        plan_path: &Path,
    ) -> Result<StepCtx, String> {
        let work = Work::for_step(&step, run.pool().url(), dialect, plan_path)
            .map_err(|e| e.to_string())?;
        Ok(StepCtx { run, step, work })
    }

    pub(crate) fn run(&self) -> &RunCtx {
        &self.run
    }

    pub(crate) fn work(&self) -> &Work {
        &self.work
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.step.settings
    }

    pub(crate) fn name(&self) -> &str {
        &self.step.name
    }

    /// Names the batch in messages: step, key range and attempt.
    fn describe(&self, batch: &ClaimedBatch) -> String {
        let range = match (batch.start_key(), batch.end_key()) {
            (Some(a), Some(b)) => format!(", keys {a}..={b}"),
            _ => String::new(),
        };
        format!(
            "step {:?}{range}, attempt {}/{}",
            self.step.name,
            batch.attempts() + 1,
            self.step.settings.max_attempts
        )
    }
}

/// Fixes the step's walk (once per run, whoever comes first) and returns its record.
async fn init(ctx: &StepCtx, conn: &mut dyn Conn) -> Result<StepRecord, godwit_driver::Error> {
    let run = ctx.run();
    let mut record = run.state().step_record(run.name(), ctx.name()).await?;
    if !record.initialized {
        record = match ctx.work.walk() {
            None => {
                run.state()
                    .init_step(run.name(), ctx.name(), None, None, false)
                    .await?
            }
            Some(walk) => {
                // Checked before the run when the table existed then; a table made by a
                // one-off step of the plan is checked now.
                if let StepKind::Chunked { table, key, .. }
                | StepKind::Transform { table, key, .. }
                | StepKind::Copy { table, key, .. } = &ctx.step.kind
                {
                    if let Some(p) = godwit_batch::key_problem(conn, table, key).await? {
                        return Err(Error::permanent(format!("{} ({})", p.message, p.code)));
                    }
                }
                let upper = walk.upper_key(conn).await?;
                let (kind, encoded) = match &upper {
                    None | Some(Value::Null) => (None, None),
                    Some(v) => {
                        let kind = KeyKind::of(v).ok_or_else(|| {
                            Error::permanent(format!(
                                "step {:?}: the key column holds {v:?}; keys must be integers, text, UUIDs, dates or timestamps",
                                ctx.name()
                            ))
                        })?;
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
        ctx.work.set_key_kind(kind);
    }
    Ok(record)
}

/// Counts the step's rows in the background so that the first batch does not wait for it.
fn spawn_count(ctx: Arc<StepCtx>, record: &StepRecord) {
    let Some(walk) = ctx.work.walk() else {
        return;
    };
    let (Some(kind), Some(upper)) = (ctx.work.key_kind(), record.upper_key.clone()) else {
        return;
    };
    let walk = walk.clone();
    tokio::spawn(async move {
        let run = ctx.run();
        let counted = async {
            let upper = kind.decode(&upper)?;
            // A fresh connection: pooled ones may carry the batches' time limit.
            let mut conn = godwit_db::connect(ctx.work.walk_url(), &Default::default()).await?;
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

/// How often a worker that is still walking looks for batches released by retries or left by
/// dead workers. Once the walk is exhausted it looks at every claim.
const ABANDONED_CHECK_EVERY: Duration = Duration::from_secs(1);

/// What one step's claim loop remembers between claims, to save state round trips: the cursor
/// it advanced last (valid until a compare-and-set fails), whether the walk is still going,
/// when it last looked for abandoned batches, and the batches it claimed ahead.
#[derive(Default)]
struct ClaimCache {
    record: Option<StepRecord>,
    exhausted: bool,
    abandoned_checked: Option<Instant>,
    queue: VecDeque<(ClaimedBatch, Instant)>,
}

/// Claims the next batch: one claimed ahead, then one that was abandoned or released,
/// otherwise new ranges (several at once: one walk, one claim and one commit for up to
/// `claim_ahead` batches). `None` when nothing is left to claim now. The instant is when the
/// batch was claimed.
async fn claim(
    ctx: &StepCtx,
    conn: &mut dyn Conn,
    cache: &mut ClaimCache,
) -> Result<Option<(ClaimedBatch, Instant)>, godwit_driver::Error> {
    if let Some(ahead) = cache.queue.pop_front() {
        return Ok(Some(ahead));
    }
    let run = ctx.run();
    let (state, name, worker) = (run.state(), ctx.name(), run.worker());
    let lease = ctx.settings().lease;
    loop {
        let check_due = cache
            .abandoned_checked
            .is_none_or(|t| t.elapsed() >= ABANDONED_CHECK_EVERY);
        if cache.exhausted || check_due {
            cache.abandoned_checked = Some(Instant::now());
            if let Some(batch) = state
                .claim_abandoned(run.name(), name, worker, lease)
                .await?
            {
                return Ok(Some((batch, Instant::now())));
            }
        }
        let record = match cache.record.take() {
            Some(record) => record,
            None => state.step_record(run.name(), name).await?,
        };
        if record.exhausted {
            cache.exhausted = true;
            cache.record = Some(record);
            return Ok(None);
        }
        let new = match ctx.work.walk() {
            None => vec![NewBatch {
                start_key: None,
                end_key: None,
                n_rows: 0,
                last: true,
            }],
            Some(walk) => {
                let Some(kind) = ctx.work.key_kind() else {
                    return Err(Error::permanent("the step's walk was not started"));
                };
                let Some(upper) = record.upper_key.as_deref() else {
                    state.mark_exhausted(run.name(), name, &record).await?;
                    continue;
                };
                let upper = kind.decode(upper)?;
                let after = record
                    .cursor_key
                    .as_deref()
                    .map(|k| kind.decode(k))
                    .transpose()?;
                let ranges = walk
                    .next_ranges(
                        conn,
                        kind,
                        after.as_ref(),
                        &upper,
                        ctx.settings().batch_size,
                        run.claim_ahead(),
                    )
                    .await?;
                if ranges.is_empty() {
                    state.mark_exhausted(run.name(), name, &record).await?;
                    continue;
                }
                let mut new = Vec::with_capacity(ranges.len());
                for range in ranges {
                    new.push(NewBatch {
                        start_key: Some(kind.encode(&range.first)?),
                        end_key: Some(kind.encode(&range.last)?),
                        n_rows: range.n_rows,
                        last: range.reaches_end,
                    });
                }
                new
            }
        };
        let count = new.len() as i64;
        let (end_key, last) = new
            .last()
            .map(|b| (b.end_key.clone(), b.last))
            .unwrap_or_default();
        let claimed = state
            .claim_new_batches(run.name(), name, &record, new, worker, lease)
            .await?;
        if let Some(claimed) = claimed {
            cache.record = Some(StepRecord {
                cursor_key: end_key,
                next_batch: record.next_batch + count,
                exhausted: last,
                ..record
            });
            let now = Instant::now();
            let mut claimed = claimed.into_iter();
            let first = claimed.next();
            for ahead in claimed {
                // Ours until run: the heartbeat keeps their leases.
                run.track(&ahead, lease);
                cache.queue.push_back((ahead, now));
            }
            return Ok(first.map(|b| (b, now)));
        }
        // Another worker advanced the cursor first: read it again.
    }
}

/// Runs one claimed batch to its end in this process. `Err` carries the message of a batch
/// that failed for good.
async fn run_batch(
    ctx: Arc<StepCtx>,
    mut conn: Box<dyn Conn>,
    batch: ClaimedBatch,
    _permit: OwnedSemaphorePermit,
) -> Result<(), String> {
    let run = ctx.run();
    run.track(&batch, ctx.settings().lease);
    let mut stop = run.stop().clone();
    let executed = {
        let _running = run.running();
        tokio::select! {
            r = batch::execute(&ctx, conn.as_mut(), &batch) => Some(r),
            _ = stop.reached(StopLevel::Abort) => None,
        }
    };
    run.untrack(&batch);
    let Some(executed) = executed else {
        // Dropping the connection makes the server roll the batch back, but only once its
        // statement ends, holding its row locks until then: end the session on the server so
        // that whoever takes the batch next does not wait on them.
        let session = conn.session_id();
        drop(conn);
        if let Some(session) = session {
            end_session(run, session).await;
        }
        if let Err(e) = batch::with_retries(|| run.state().release(&batch)).await {
            tracing::warn!(step = ctx.name(), error = %e, "could not release an aborted batch; it returns when its lease ends");
        }
        return Ok(());
    };
    match executed {
        Ok(Executed::Committed(outcome)) => {
            run.pool().give(conn);
            run.events().send(Event::BatchDone {
                step: ctx.name().to_string(),
                batch: batch.number(),
                rows: batch.n_rows(),
                rows_affected: outcome.rows_affected,
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
            if e.kind() != ErrorKind::Connection && conn.rollback().await.is_ok() {
                run.pool().give(conn);
            }
            let message = format!("{}: {e}", ctx.describe(&batch));
            let retry = e.kind().is_retryable()
                && batch.attempts() + 1 < i64::from(ctx.settings().max_attempts);
            if retry {
                let delay = batch::backoff(batch.attempts());
                tracing::warn!(step = ctx.name(), batch = batch.number(), error = %message, "retrying");
                run.events().send(Event::BatchRetry {
                    step: ctx.name().to_string(),
                    batch: batch.number(),
                    attempt: batch.attempts() + 1,
                    error: message,
                    delay,
                });
                let recorded =
                    batch::with_retries(|| run.state().record_failure(&batch, &e, Some(delay)))
                        .await;
                if let Err(e) = recorded {
                    tracing::warn!(step = ctx.name(), error = %e, "could not record a retry; the batch returns when its lease ends");
                }
                return Ok(());
            }
            let recorded =
                batch::with_retries(|| run.state().record_failure(&batch, &e, None)).await;
            if let Err(record_err) = recorded {
                tracing::error!(step = ctx.name(), error = %record_err, "could not record a failed batch");
            }
            Err(message)
        }
    }
}

/// Whether a batch about to start is still this worker's. A worker that stood still (frozen,
/// cut off) for longer than the lease may have lost it to another worker; with the state in
/// the plan's database its done record would be refused anyway, so only a batch that waited
/// for a third of its lease is checked there, but with a separate state database the batch
/// commits before its record, so every batch is checked (one round trip to the state).
async fn still_ours(ctx: &StepCtx, batch: &ClaimedBatch, claimed_at: Instant) -> bool {
    let run = ctx.run();
    let lease = ctx.settings().lease;
    if run.exactly_once() && claimed_at.elapsed() < lease / 3 {
        return true;
    }
    match run.state().extend_lease(batch, lease).await {
        Ok(true) => true,
        Ok(false) => {
            tracing::warn!(
                step = ctx.name(),
                batch = batch.number(),
                "lease lost before the batch started: another worker owns it now"
            );
            false
        }
        // Unsure: the done record still fences it where it shares the batch's transaction;
        // elsewhere, give it back rather than risk applying it twice.
        Err(e) => {
            tracing::warn!(step = ctx.name(), batch = batch.number(), error = %e, "could not confirm a claim");
            if !run.exactly_once() {
                if let Err(e) = batch::with_retries(|| run.state().release(batch)).await {
                    tracing::warn!(step = ctx.name(), error = %e, "could not release an unconfirmed batch; it returns when its lease ends");
                }
            }
            run.exactly_once()
        }
    }
}

/// Gives back the batches claimed ahead, so that others take them at once.
async fn release_queued(ctx: &StepCtx, cache: &mut ClaimCache) {
    let run = ctx.run();
    for (batch, _) in cache.queue.drain(..) {
        run.untrack(&batch);
        if let Err(e) = run.state().release(&batch).await {
            tracing::warn!(step = ctx.name(), error = %e, "could not release a batch claimed ahead; it returns when its lease ends");
        }
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

/// Works on a step until it is done, fails, or the run is asked to stop.
pub(crate) async fn drive(ctx: Arc<StepCtx>) -> StepResult {
    let run = ctx.run.clone();
    let mut stop = run.stop().clone();
    // The key walk has a connection of its own: it runs one query at a time, and on
    // PostgreSQL it carries planner settings that must not touch the batches' statements.
    // Starting rides out a short outage (a database restart) like claims do.
    let mut attempt = 0;
    let (mut walker, record) = loop {
        let starting = async {
            let mut conn = open_walker(ctx.work.walk_url(), ctx.settings().batch_timeout).await?;
            let record = init(&ctx, conn.as_mut()).await?;
            Ok::<_, godwit_driver::Error>((conn, record))
        };
        let started = tokio::select! {
            started = starting => started,
            _ = stop.reached(StopLevel::Abort) => return StepResult::Stopped,
        };
        match started {
            Ok((conn, record)) => break (Some(conn), record),
            Err(e) if godwit_state::is_restarted(&e) => {
                run.mark_restarted();
                return StepResult::Stopped;
            }
            Err(e) if e.kind().is_retryable() && attempt < 6 && stop.level() == StopLevel::Run => {
                tracing::warn!(step = ctx.name(), error = %e, "cannot start the step yet; trying again");
                tokio::time::sleep(batch::backoff(attempt)).await;
                attempt += 1;
            }
            Err(e) => {
                return StepResult::Failed(format!(
                    "step {:?}: cannot start its key walk: {e}",
                    ctx.name()
                ))
            }
        }
    };
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
        spawn_count(ctx.clone(), &record);
    }

    let mut tasks: JoinSet<Result<(), String>> = JoinSet::new();
    let mut result: Option<StepResult> = None;
    let mut consecutive_errors = 0u32;
    let mut cache = ClaimCache::default();
    loop {
        while let Some(joined) = tasks.try_join_next() {
            if let Some(failure) = batch_failure(joined) {
                result.get_or_insert(StepResult::Failed(failure));
            }
        }
        if result.is_some() || run.is_failed() || stop.level() >= StopLevel::Drain {
            break;
        }
        if run.is_paused() {
            // Paused from elsewhere: batches in flight go on, nothing new is claimed, and the
            // batches claimed ahead go back.
            release_queued(&ctx, &mut cache).await;
            tokio::select! {
                _ = tokio::time::sleep(crate::run::POLL) => {}
                _ = stop.reached(StopLevel::Drain) => {}
            }
            continue;
        }
        // Claim before waiting for a free slot, so that the next batch's key walk and claim
        // overlap the batches in flight instead of adding to each slot's idle time.
        let claiming = async {
            if walker.is_none() {
                walker =
                    Some(open_walker(ctx.work.walk_url(), ctx.settings().batch_timeout).await?);
            }
            match walker.as_mut() {
                Some(conn) => claim(&ctx, conn.as_mut(), &mut cache).await,
                None => Err(Error::permanent("the walker connection vanished")),
            }
        };
        // A second signal must not wait for a slow walk or an unreachable state database.
        let claimed = tokio::select! {
            claimed = claiming => claimed,
            _ = stop.reached(StopLevel::Abort) => break,
        };
        if let Err(e) = &claimed {
            if e.kind() == ErrorKind::Connection {
                walker = None;
            }
        }
        let claimed = match claimed {
            Ok(Some((batch, claimed_at))) => match run.pool().take().await {
                Ok(conn) => Ok((Some(conn), Some((batch, claimed_at)))),
                Err(e) => {
                    run.untrack(&batch);
                    if let Err(release) = run.state().release(&batch).await {
                        tracing::warn!(step = ctx.name(), error = %release, "could not release a claimed batch; it returns when its lease ends");
                    }
                    Err(e)
                }
            },
            Ok(None) => Ok((None, None)),
            Err(e) => Err(e),
        };
        match claimed {
            Ok((Some(conn), Some((batch, claimed_at)))) => {
                consecutive_errors = 0;
                run.track(&batch, ctx.settings().lease);
                let permit = tokio::select! {
                    // Stopping wins over a free slot: nothing new starts once asked to stop.
                    biased;
                    _ = stop.reached(StopLevel::Drain) => None,
                    permit = run.permits().acquire_owned() => permit.ok(),
                };
                let Some(permit) = permit else {
                    run.untrack(&batch);
                    run.pool().give(conn);
                    if let Err(e) = run.state().release(&batch).await {
                        tracing::warn!(step = ctx.name(), error = %e, "could not release a claimed batch; it returns when its lease ends");
                    }
                    break;
                };
                if !still_ours(&ctx, &batch, claimed_at).await {
                    run.untrack(&batch);
                    run.pool().give(conn);
                    continue;
                }
                tasks.spawn(run_batch(ctx.clone(), conn, batch, permit));
            }
            Ok(_) => {
                consecutive_errors = 0;
                if let Some(joined) = tasks.join_next().await {
                    if let Some(failure) = batch_failure(joined) {
                        result.get_or_insert(StepResult::Failed(failure));
                    }
                    continue;
                }
                match run.state().complete_step(run.name(), ctx.name()).await {
                    Ok(StepCompletion::Done) => {
                        result = Some(StepResult::Done);
                    }
                    Ok(StepCompletion::Failed(message)) => {
                        result = Some(StepResult::Failed(message));
                    }
                    Ok(StepCompletion::Waiting) => {
                        // Read the cursor again next time: it may have moved back (a claim
                        // lost in a server crash) or been re-walked by someone else.
                        cache.record = None;
                        cache.exhausted = false;
                        tokio::select! {
                            _ = tokio::time::sleep(IDLE_POLL) => {}
                            _ = stop.reached(StopLevel::Drain) => {}
                        }
                    }
                    Err(e) => {
                        tracing::warn!(step = ctx.name(), error = %e, "could not check whether the step is finished");
                        tokio::time::sleep(IDLE_POLL).await;
                    }
                }
            }
            Err(e) if godwit_state::is_restarted(&e) => {
                // The run's steps are another plan's now: claim nothing more of them.
                run.mark_restarted();
                break;
            }
            Err(e) if e.kind().is_retryable() && consecutive_errors < 30 => {
                let delay = batch::backoff(i64::from(consecutive_errors.min(5)));
                consecutive_errors += 1;
                tracing::warn!(step = ctx.name(), error = %e, ?delay, "claiming a batch failed; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.reached(StopLevel::Drain) => {}
                }
            }
            Err(e) => {
                result = Some(StepResult::Failed(format!(
                    "step {:?}: cannot claim a batch: {e}",
                    ctx.name()
                )));
            }
        }
    }
    // Batches claimed ahead that will not run here now: give them back at once.
    release_queued(&ctx, &mut cache).await;
    while let Some(joined) = tasks.join_next().await {
        if let Some(failure) = batch_failure(joined) {
            result.get_or_insert(StepResult::Failed(failure));
        }
    }
    let result = result.unwrap_or(StepResult::Stopped);
    match &result {
        StepResult::Done => run.events().send(Event::StepDone {
            step: ctx.name().to_string(),
        }),
        StepResult::Failed(error) => {
            run.mark_failed();
            if let Err(e) = run.state().fail_step(run.name(), ctx.name(), error).await {
                tracing::warn!(step = ctx.name(), error = %e, "could not record the step as failed");
            }
            run.events().send(Event::StepFailed {
                step: ctx.name().to_string(),
                error: error.clone(),
            });
        }
        StepResult::Stopped => {}
    }
    result
}

fn batch_failure(joined: Result<Result<(), String>, tokio::task::JoinError>) -> Option<String> {
    match joined {
        Ok(Ok(())) => None,
        Ok(Err(message)) => Some(message),
        Err(e) => Some(format!("a batch task ended unexpectedly: {e}")),
    }
}
