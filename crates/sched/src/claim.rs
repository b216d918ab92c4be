//! Where a batch is claimed: the next key range walked and claimed in the state store (several
//! at once, the rest kept for later), a batch abandoned or released by others taken over, and
//! the claim checked again just before the batch starts.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use godwit_batch::open_walker;
use godwit_driver::{Conn, Error, ErrorKind, KeyKind};
use godwit_state::{ClaimedBatch, NewBatch, StepRecord, WalkedClaim};

use crate::ctx::StepCtx;
use crate::retry::with_retries;

/// How often a worker that is still walking looks for batches released by retries or left by
/// dead workers. Once the walk is exhausted it looks at every claim.
const ABANDONED_CHECK_EVERY: Duration = Duration::from_secs(1);

/// What one step's claim loop remembers between claims, to save state round trips: the cursor
/// it advanced last (valid until a compare-and-set fails), whether the walk is still going,
/// when it last looked for abandoned batches, and the batches it claimed ahead.
#[derive(Default)]
pub(crate) struct ClaimCache {
    record: Option<StepRecord>,
    exhausted: bool,
    abandoned_checked: Option<Instant>,
    queue: VecDeque<(ClaimedBatch, Instant)>,
}

impl ClaimCache {
    /// Forgets the cursor: it may have moved back (a claim lost in a server crash) or been
    /// re-walked by someone else.
    pub(crate) fn forget_cursor(&mut self) {
        self.record = None;
        self.exhausted = false;
    }
}

/// A batch claimed by this process, with a connection of the plan's database to run it on.
pub(crate) struct Claimed {
    pub(crate) batch: ClaimedBatch,
    /// When the batch was claimed.
    pub(crate) claimed_at: Instant,
    pub(crate) conn: Box<dyn Conn>,
}

/// Claims the step's next batch and takes a connection for it; `None` when nothing is left
/// to claim now. `walker` is the key walk's own connection, opened again when it was lost.
pub(crate) async fn claim_next(
    ctx: &StepCtx,
    walker: &mut Option<Box<dyn Conn>>,
    cache: &mut ClaimCache,
) -> Result<Option<Claimed>, Error> {
    let claimed = async {
        if walker.is_none() {
            let work = ctx.work();
            *walker = Some(open_walker(work.walk_url(), ctx.settings().batch_timeout).await?);
        }
        match walker.as_mut() {
            Some(conn) => claim(ctx, conn.as_mut(), cache).await,
            None => Err(Error::permanent("the walker connection vanished")),
        }
    }
    .await;
    if claimed
        .as_ref()
        .is_err_and(|e| e.kind() == ErrorKind::Connection)
    {
        *walker = None;
    }
    let Some((batch, claimed_at)) = claimed? else {
        return Ok(None);
    };
    let run = ctx.run();
    match run.pool().take().await {
        Ok(conn) => Ok(Some(Claimed {
            batch,
            claimed_at,
            conn,
        })),
        Err(e) => {
            release(ctx, &batch).await;
            Err(e)
        }
    }
}

/// Gives back a batch claimed here that will not run here, so that others take it at once.
pub(crate) async fn release(ctx: &StepCtx, batch: &ClaimedBatch) {
    let run = ctx.run();
    run.untrack(batch);
    if let Err(e) = run.state().release(batch).await {
        tracing::warn!(step = ctx.name(), error = %e, "could not release a claimed batch; it returns when its lease ends");
    }
}

/// Claims the next batch: one claimed ahead, then one that was abandoned or released,
/// otherwise new ranges (several at once: one walk, one claim and one commit for up to
/// `claim_ahead` batches). `None` when nothing is left to claim now. The instant is when the
/// batch was claimed.
///
/// Where the state lives in the database the walk reads (PostgreSQL, integer keys) the claim
/// is one statement that waits for the step's cursor row and walks from it
/// ([`walked_claim`]); elsewhere it reads the cursor, walks, and advances the cursor only if
/// no other worker did meanwhile, reading it again when one did.
async fn claim(
    ctx: &StepCtx,
    conn: &mut dyn Conn,
    cache: &mut ClaimCache,
) -> Result<Option<(ClaimedBatch, Instant)>, Error> {
    if let Some(ahead) = cache.queue.pop_front() {
        return Ok(Some(ahead));
    }
    let run = ctx.run();
    let (state, name, worker) = (run.state(), ctx.name(), run.worker());
    let lease = ctx.settings().lease;
    // Whether the one-statement claim may be tried (it steps aside once per call when the
    // cursor row was not there to take, for the record to say why).
    let mut walk_in_claim = walks_state_database(ctx);
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
        if walk_in_claim {
            match walked_claim(ctx, conn, &record).await? {
                Some(WalkedClaim::Claimed { batches, exhausted }) => {
                    let last = batches
                        .last()
                        .map(|b| (b.number(), b.end_key().map(str::to_string)));
                    if let Some((number, end_key)) = last {
                        cache.record = Some(StepRecord {
                            cursor_key: end_key,
                            next_batch: number + 1,
                            exhausted,
                            ..record
                        });
                    }
                    return Ok(queue_ahead(ctx, cache, batches));
                }
                Some(WalkedClaim::Exhausted) => {
                    // Look for abandoned batches, then find the record exhausted.
                    cache.exhausted = true;
                    cache.record = Some(StepRecord {
                        exhausted: true,
                        ..record
                    });
                    continue;
                }
                Some(WalkedClaim::NotHere) | None => {
                    // Walked to its end by another worker, or restarted: read it again.
                    walk_in_claim = false;
                    continue;
                }
            }
        }
        let Some(new) = next_ranges(ctx, conn, &record).await? else {
            state.mark_exhausted(run.name(), name, &record).await?;
            continue;
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
            return Ok(queue_ahead(ctx, cache, claimed));
        }
        // Another worker advanced the cursor first: read it again (and nothing else: the
        // abandoned batches keep their own schedule).
        tracing::debug!(
            step = name,
            "another worker claimed the range first; reading the cursor again"
        );
    }
}

/// Keeps all but the first of `claimed` in the step's queue, tracked for the heartbeat, and
/// returns the first.
fn queue_ahead(
    ctx: &StepCtx,
    cache: &mut ClaimCache,
    claimed: Vec<ClaimedBatch>,
) -> Option<(ClaimedBatch, Instant)> {
    let run = ctx.run();
    let lease = ctx.settings().lease;
    let now = Instant::now();
    let mut claimed = claimed.into_iter();
    let first = claimed.next();
    for ahead in claimed {
        // Ours until run: the heartbeat keeps their leases.
        run.track(&ahead, lease);
        cache.queue.push_back((ahead, now));
    }
    first.map(|b| (b, now))
}

/// Whether the step's claims can walk in their own statement: the state lives in the plan's
/// database, the step walks that database (not a copy's source elsewhere), on PostgreSQL,
/// by an integer key.
fn walks_state_database(ctx: &StepCtx) -> bool {
    let work = ctx.work();
    let run = ctx.run();
    run.exactly_once()
        && work.walk_url() == run.pool().url()
        && work.key_kind() == Some(KeyKind::Int)
        && work
            .walk()
            .is_some_and(|w| w.keys_from("1", "1", "1").is_some())
}

/// The claim that locks the step's cursor row, walks from it and inserts the batch rows in
/// one statement on the walker's connection (which carries the walk's planner settings).
/// `None` when the step's upper key does not say where to stop.
async fn walked_claim(
    ctx: &StepCtx,
    conn: &mut dyn Conn,
    record: &StepRecord,
) -> Result<Option<WalkedClaim>, Error> {
    let (Some(walk), Some(kind)) = (ctx.work().walk(), ctx.work().key_kind()) else {
        return Ok(None);
    };
    let Some(upper) = record.upper_key.as_deref() else {
        return Ok(None);
    };
    let Some(upper) = kind.decode(upper)?.as_i64() else {
        return Ok(None);
    };
    let run = ctx.run();
    let batch_size = ctx.pace().batch_size(run.pace());
    run.state()
        .claim_walked(
            conn,
            run.name(),
            ctx.name(),
            |from, upper, limit| walk.keys_from(from, upper, limit),
            upper,
            i64::try_from(batch_size).unwrap_or(i64::MAX),
            run.claim_ahead(),
            run.worker(),
            ctx.settings().lease,
        )
        .await
        .map(Some)
}

/// The batches after the step's cursor, as the key walk finds them: up to `claim_ahead` of
/// them, or the one batch of a one-off step. `None` when the walk reached the end.
async fn next_ranges(
    ctx: &StepCtx,
    conn: &mut dyn Conn,
    record: &StepRecord,
) -> Result<Option<Vec<NewBatch>>, Error> {
    let work = ctx.work();
    let Some(walk) = work.walk() else {
        return Ok(Some(vec![NewBatch {
            start_key: None,
            end_key: None,
            n_rows: 0,
            last: true,
        }]));
    };
    let Some(kind) = work.key_kind() else {
        return Err(Error::permanent("the step's walk was not started"));
    };
    let Some(upper) = record.upper_key.as_deref() else {
        return Ok(None);
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
            ctx.pace().batch_size(ctx.run().pace()),
            ctx.run().claim_ahead(),
        )
        .await?;
    if ranges.is_empty() {
        return Ok(None);
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
    Ok(Some(new))
}

/// Whether a batch about to start is still this worker's. A worker that stood still (frozen,
/// cut off) for longer than the lease may have lost it to another worker; with the state in
/// the plan's database its done record would be refused anyway, so only a batch that waited
/// for a third of its lease is checked there, but with a separate state database the batch
/// commits before its record, so every batch is checked (one round trip to the state).
pub(crate) async fn still_ours(ctx: &StepCtx, batch: &ClaimedBatch, claimed_at: Instant) -> bool {
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
                if let Err(e) = with_retries(|| run.state().release(batch)).await {
                    tracing::warn!(step = ctx.name(), error = %e, "could not release an unconfirmed batch; it returns when its lease ends");
                }
            }
            run.exactly_once()
        }
    }
}

/// Gives back the batches claimed ahead, so that others take them at once.
pub(crate) async fn release_queued(ctx: &StepCtx, cache: &mut ClaimCache) {
    let run = ctx.run();
    for (batch, _) in cache.queue.drain(..) {
        run.untrack(&batch);
        if let Err(e) = run.state().release(&batch).await {
            tracing::warn!(step = ctx.name(), error = %e, "could not release a batch claimed ahead; it returns when its lease ends");
        }
    }
}
