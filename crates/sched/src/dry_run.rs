//! `godwit run --dry-run`: every step walked by its key as a run walks it, each batch run in a
//! transaction opened as a run opens it (`commit::rehearse`) and rolled back, and what would
//! change counted per step.
//!
//! Nothing is recorded: the state store is never opened, so no `godwit_*` table is created,
//! read for progress or written, and no notification is sent. Batches are sized and paced as
//! in a run (`target_batch_time`, `max_rows_per_second`, `throttle_query`, replica lag), in
//! `concurrency` slots; the latency guard, which keeps its baseline with the run, is not.
//!
//! Steps are rehearsed one after another in an order their `after` allows, each on the tables
//! as they are: a step does not see what the steps before it would change. A one-off statement
//! that a rollback would not undo (`SqlForms::outlives_rollback`) is not run. A step after a
//! one-off step that finds a table or column missing (what that step would create) is reported
//! as not rehearsed, naming the one-off step, rather than as a failure.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use godwit_batch::{open_walker, BatchError, DeadLetter, KeyRange, RowChange, Work, Written};
use godwit_db::ConnPool;
use godwit_driver::{Conn, Dialect, KeyKind, Value};
use godwit_plan::{Plan, Step, StepKind};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::commit::rehearse;
use crate::ctx::{describe_batch, POLL};
use crate::failure::{Failure, FailureKind};
use crate::pace::{between, RunPace, Slots, StepPace};
use crate::retry::{backoff, yield_backoff};
use crate::run::{prepare, Prepared, MAX_CLAIM_AHEAD};
use crate::step::{batch_failure, key_kind};
use crate::stop::{StopLevel, StopSignal};
use crate::{default_concurrency, Error};

/// Batches rehearsed one at a time from the start of a sampled step before its sample, for
/// adaptive sizing to settle as it does at the start of a run.
const SETTLING_BATCHES: usize = 3;

/// The most of a step's rows an estimate's sample rehearses (besides the settling batches).
const SAMPLE_SHARE: f64 = 0.02;

/// How many changed rows a step's report shows as examples, and how many rows set aside.
const EXAMPLES: usize = 3;
const SET_ASIDE_SHOWN: usize = 5;

/// How often a step's progress is reported at most.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// How a dry run goes in this process.
#[derive(Debug, Clone, Default)]
pub struct DryRunOptions {
    /// Batches in flight at once; `None` picks the database's default, as a run does.
    pub concurrency: Option<usize>,
    /// Rehearse only about this many batches per step, spread over its key range, in waves of
    /// `concurrency` (what `godwit estimate` times), instead of every batch.
    pub sample: Option<usize>,
}

/// What a dry run found.
#[derive(Debug, Clone)]
pub struct DryRun {
    /// The plan's name.
    pub plan: String,
    /// The plan's database, as users know it (`PostgreSQL`, `MySQL/MariaDB`, `SQLite`).
    pub database: &'static str,
    /// Every step of the plan, in the plan's order.
    pub steps: Vec<StepRehearsal>,
    /// How the rehearsal ended.
    pub outcome: DryRunOutcome,
    /// How long it took.
    pub duration: Duration,
}

/// How a dry run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DryRunOutcome {
    /// Every step was rehearsed, or said why it could not be.
    Done,
    /// A batch failed as it would fail in the run; the failure names the step, the key range
    /// and the database's code.
    Failed(Failure),
    /// Stopped on request (a signal, `--max-duration`) with steps or batches left.
    Stopped,
}

/// What a step's rehearsal found.
#[derive(Debug, Clone)]
pub struct StepRehearsal {
    /// The step's name.
    pub name: String,
    /// `sql` (chunked), `one-off`, `transform` or `copy`.
    pub kind: &'static str,
    /// How its rehearsal ended.
    pub ended: Rehearsed,
    /// Batches rehearsed.
    pub batches: u64,
    /// Rows in the rehearsed batches' key ranges (rows matching `where`; a copy's source
    /// rows): what `status` counts as a run's rows done.
    pub rows_matched: i64,
    /// Rows the batches' statements changed, or a copy inserted, as the database counted
    /// them (MySQL and MariaDB count rows matched by an `UPDATE`, changed or not).
    pub rows_changed: u64,
    /// Rows a transform or copy would set aside as dead letters (`on_row_error = "skip"`).
    pub rows_set_aside: u64,
    /// How long the step's rehearsal took.
    pub duration: Duration,
    /// The longest batch transaction.
    pub longest_batch: Duration,
    /// A transform's first few changed rows, before and after.
    pub examples: Vec<RowChange>,
    /// The first few rows set aside, with why.
    pub set_aside: Vec<DeadLetter>,
    /// What the run would do besides (dropping an invalid index an interrupted build left).
    pub notes: Vec<String>,
    /// With [`DryRunOptions::sample`]: the rows the run would cover (what `status` counts as
    /// the step's total).
    pub rows_total: Option<i64>,
    /// With [`DryRunOptions::sample`]: each wave of sampled batches, run side by side, as
    /// (rows, how long the wave took).
    pub waves: Vec<(i64, Duration)>,
}

/// How a step's rehearsal ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rehearsed {
    /// Every batch ran and was rolled back.
    Done,
    /// Not run, or not past its start, and why: a one-off statement a rollback would not
    /// undo, or what a one-off step before it would create is missing.
    NotRehearsed(String),
    /// A batch failed for good.
    Failed(Failure),
    /// Stopped on request before its last batch.
    Stopped,
    /// Not started: an earlier step failed, or the dry run was stopped.
    NotStarted,
}

/// What a dry run reports while it goes.
#[derive(Debug, Clone)]
pub enum DryRunEvent {
    /// A step's rehearsal began.
    StepStarted {
        /// The step's name.
        step: String,
    },
    /// A step's batches so far (at most one a second per step).
    Progress {
        /// The step's name.
        step: String,
        /// Batches rehearsed.
        batches: u64,
        /// Rows in their key ranges.
        rows_matched: i64,
        /// Rows their statements changed.
        rows_changed: u64,
    },
    /// A batch met a transient error or a lock, and is tried again.
    BatchRetry {
        /// The step's name.
        step: String,
        /// The error, with the key range and the database's code.
        error: String,
        /// How long before it is tried again.
        delay: Duration,
    },
    /// No batch of the step starts while a throttle signal says so.
    StepThrottled {
        /// The step's name.
        step: String,
        /// Why.
        reason: String,
    },
    /// A step's rehearsal ended.
    StepEnded(Box<StepRehearsal>),
}

/// Rehearses `plan`: judged as `run` judges it, then every step's batches run and rolled
/// back, nothing recorded. `events` is called on the rehearsal's tasks: it must be quick.
///
/// # Errors
/// As [`crate::run`] before it records anything: the plan cannot run
/// ([`crate::ErrorKind::Invalid`]) or its database cannot be reached.
pub async fn dry_run(
    plan: &Plan,
    options: DryRunOptions,
    stop: StopSignal,
    events: impl Fn(DryRunEvent) + Send + Sync + 'static,
) -> Result<DryRun, Error> {
    let started = Instant::now();
    let Prepared { pool, dialect, .. } = prepare(plan).await?;
    let mut works = Vec::with_capacity(plan.steps.len());
    for step in &plan.steps {
        let work = Work::for_step(step, pool.url(), dialect, &plan.path)
            .map_err(|e| Error::invalid(e.to_string()))?;
        works.push(Arc::new(work));
    }
    let concurrency = options
        .concurrency
        .unwrap_or_else(|| default_concurrency(dialect))
        .max(1);
    let permits = Arc::new(Semaphore::new(concurrency));
    let ctx = Arc::new(DryCtx {
        pool,
        dialect,
        pace: RunPace::new(Slots::new(permits.clone(), concurrency), concurrency),
        permits,
        claim_ahead: concurrency.clamp(1, MAX_CLAIM_AHEAD),
        sample: options.sample.map(|n| n.max(1)),
        concurrency,
        stop,
        events: Arc::new(events),
    });
    let _replicas = ctx.pace.watch_replicas(plan);
    let mut ended: HashMap<String, StepRehearsal> = HashMap::new();
    let mut outcome = DryRunOutcome::Done;
    for i in order(plan) {
        let (step, work) = (&plan.steps[i], &works[i]);
        let rehearsal = if outcome != DryRunOutcome::Done {
            StepRehearsal::new(step, Rehearsed::NotStarted)
        } else if ctx.stop.level() >= StopLevel::Drain {
            outcome = DryRunOutcome::Stopped;
            StepRehearsal::new(step, Rehearsed::NotStarted)
        } else {
            let before = OneOffsBefore::of(plan, step, &ended);
            let rehearsal = StepRun::rehearse(&ctx, step, work.clone(), before).await;
            match &rehearsal.ended {
                Rehearsed::Failed(failure) => outcome = DryRunOutcome::Failed(failure.clone()),
                Rehearsed::Stopped => outcome = DryRunOutcome::Stopped,
                _ => {}
            }
            (ctx.events)(DryRunEvent::StepEnded(Box::new(rehearsal.clone())));
            rehearsal
        };
        ended.insert(step.name.clone(), rehearsal);
    }
    let steps = plan
        .steps
        .iter()
        .filter_map(|s| ended.remove(&s.name))
        .collect();
    Ok(DryRun {
        plan: plan.name.clone(),
        database: dialect.name(),
        steps,
        outcome,
        duration: started.elapsed(),
    })
}

/// The steps' indexes in an order their `after` allows, the plan's order where it is free.
fn order(plan: &Plan) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::with_capacity(plan.steps.len());
    while out.len() < plan.steps.len() {
        let placed = |name: &String| out.iter().any(|&i| plan.steps[i].name == *name);
        let next = (0..plan.steps.len())
            .find(|i| !out.contains(i) && plan.steps[*i].after.iter().all(placed));
        // The plan refuses a cycle through `after`; should one slip through, the rest follow
        // in the plan's order.
        let next = next.or_else(|| (0..plan.steps.len()).find(|i| !out.contains(i)));
        out.extend(next);
    }
    out
}

/// What the batches of a dry run share.
struct DryCtx {
    pool: ConnPool,
    /// The plan's database's dialect: a one-off step acts there.
    dialect: Dialect,
    pace: RunPace,
    permits: Arc<Semaphore>,
    claim_ahead: usize,
    /// Batches per step to sample (`godwit estimate`), or `None` for all of them.
    sample: Option<usize>,
    concurrency: usize,
    stop: StopSignal,
    events: Arc<dyn Fn(DryRunEvent) + Send + Sync>,
}

impl DryCtx {
    fn send(&self, event: DryRunEvent) {
        (self.events)(event);
    }
}

impl StepRehearsal {
    fn new(step: &Step, ended: Rehearsed) -> StepRehearsal {
        StepRehearsal::named(&step.name, kind_name(step), ended)
    }

    fn named(name: &str, kind: &'static str, ended: Rehearsed) -> StepRehearsal {
        StepRehearsal {
            name: name.to_string(),
            kind,
            ended,
            batches: 0,
            rows_matched: 0,
            rows_changed: 0,
            rows_set_aside: 0,
            duration: Duration::ZERO,
            longest_batch: Duration::ZERO,
            examples: Vec::new(),
            set_aside: Vec::new(),
            notes: Vec::new(),
            rows_total: None,
            waves: Vec::new(),
        }
    }
}

/// A step's rehearsal with nothing in it yet, for tests of what is made of rehearsals.
#[cfg(test)]
pub(crate) fn test_rehearsal(name: &str) -> StepRehearsal {
    StepRehearsal::named(name, "sql", Rehearsed::Done)
}

fn kind_name(step: &Step) -> &'static str {
    match step.kind {
        StepKind::Once { .. } => "one-off",
        StepKind::Chunked { .. } => "sql",
        StepKind::Transform { .. } => "transform",
        StepKind::Copy(_) => "copy",
    }
}

/// The one-off steps a step comes after (through `after`, at any depth), each with what the
/// dry run did with it: what they create is not there while the step is rehearsed.
struct OneOffsBefore(Vec<String>);

impl OneOffsBefore {
    fn of(plan: &Plan, step: &Step, ended: &HashMap<String, StepRehearsal>) -> OneOffsBefore {
        let mut seen: Vec<&str> = Vec::new();
        let mut todo: Vec<&str> = step.after.iter().map(String::as_str).collect();
        let mut found = Vec::new();
        while let Some(name) = todo.pop() {
            if seen.contains(&name) {
                continue;
            }
            seen.push(name);
            let Some(before) = plan.steps.iter().find(|s| s.name == name) else {
                continue;
            };
            if matches!(before.kind, StepKind::Once { .. }) {
                let what = match ended.get(name).map(|r| &r.ended) {
                    Some(Rehearsed::Done) => "whose changes this dry run rolled back",
                    _ => "which this dry run did not run",
                };
                found.push(format!("the one-off step {name:?}, {what}"));
            }
            todo.extend(before.after.iter().map(String::as_str));
        }
        found.sort();
        OneOffsBefore(found)
    }

    /// Says why `missing` (a table or column that does not exist) is expected, when the step
    /// comes after a one-off step; `None` when it comes after none, and so is a real problem.
    fn explain(&self, missing: &str) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        Some(format!(
            "{missing}; the step comes after {}: what a one-off step would create is not \
             there during a dry run",
            self.0.join(" and ")
        ))
    }
}

/// One step's rehearsal: its batches in flight, and what they found.
struct StepRun {
    ctx: Arc<DryCtx>,
    step: Step,
    work: Arc<Work>,
    before: OneOffsBefore,
    out: StepRehearsal,
    /// Examples and rows set aside, by batch number, so that the report shows the first ones
    /// in key order whatever order batches end in.
    examples: Vec<(u64, RowChange)>,
    set_aside: Vec<(u64, DeadLetter)>,
    last_progress: Instant,
}

/// One batch's rehearsal, as its task returns it.
struct BatchRun {
    number: u64,
    n_rows: i64,
    range: Option<(String, String)>,
    result: Result<(Written, Duration), (BatchError, i64)>,
}

impl StepRun {
    async fn rehearse(
        ctx: &Arc<DryCtx>,
        step: &Step,
        work: Arc<Work>,
        before: OneOffsBefore,
    ) -> StepRehearsal {
        ctx.send(DryRunEvent::StepStarted {
            step: step.name.clone(),
        });
        let started = Instant::now();
        let mut run = StepRun {
            ctx: ctx.clone(),
            step: step.clone(),
            work,
            before,
            out: StepRehearsal::new(step, Rehearsed::Done),
            examples: Vec::new(),
            set_aside: Vec::new(),
            last_progress: Instant::now(),
        };
        let ended = match (&step.kind, ctx.sample) {
            (StepKind::Once { sql }, _) => run.once(sql).await,
            (_, Some(n)) => run.sampled(n).await,
            _ => run.walked().await,
        };
        let mut out = run.out;
        out.examples = run.examples.into_iter().map(|(_, e)| e).collect();
        out.set_aside = run.set_aside.into_iter().map(|(_, l)| l).collect();
        out.ended = ended;
        out.duration = started.elapsed();
        out
    }

    /// A one-off step: its statement in a transaction rolled back, or, when a rollback would
    /// not undo it, not run at all.
    async fn once(&mut self, sql: &str) -> Rehearsed {
        let mut conn = match self.ctx.pool.take().await {
            Ok(conn) => conn,
            Err(e) => return self.start_failed(&e),
        };
        let outlives = conn.forms().outlives_rollback(sql);
        if let Some(reason) = outlives {
            self.invalid_index_note(conn.as_mut(), sql).await;
            self.ctx.pool.give(conn);
            return Rehearsed::NotRehearsed(reason.to_string());
        }
        self.ctx.pool.give(conn);
        let done = rehearse_batch(self.batch_job(0, None), None).await;
        self.note(done).unwrap_or(Rehearsed::Done)
    }

    /// Notes what a run would do first to the index a concurrent build names, when an
    /// interrupted build left it invalid.
    async fn invalid_index_note(&mut self, conn: &mut dyn Conn, sql: &str) {
        let index = match conn.invalid_index(sql).await {
            Ok(Some(index)) => index,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(step = %self.step.name, error = %e, "could not look for an invalid index");
                return;
            }
        };
        let name = format!("{}.{}", index.schema, index.name);
        self.out.notes.push(match index.building {
            None => format!(
                "the index {name} is INVALID (an interrupted build left it): the run would drop it (DROP INDEX CONCURRENTLY) and build it again"
            ),
            Some(session) => format!(
                "the index {name} is being built by session {session}: the run would wait for that build to end"
            ),
        });
    }

    /// A step whose key is walked: its batches, `concurrency` at a time.
    async fn walked(&mut self) -> Rehearsed {
        let settings = self.step.settings.clone();
        let Walk {
            walk,
            mut walker,
            upper,
            kind,
        } = match self.start_walk().await {
            Ok(Some(started)) => started,
            Ok(None) => return Rehearsed::Done,
            Err(ended) => return ended,
        };
        let pace = StepPace::new(&settings);
        let _watching = pace.watch(self.ctx.pool.url());
        let mut flight = Flight {
            queue: VecDeque::new(),
            after: None,
            walked_all: false,
            tasks: JoinSet::new(),
            number: 0,
            throttled: false,
        };
        let mut stop = self.ctx.stop.clone();
        let mut ended = None;
        loop {
            while let Some(joined) = flight.tasks.try_join_next() {
                ended = ended.or(self.joined(joined, &pace));
            }
            if ended.is_some() || stop.level() >= StopLevel::Drain {
                break;
            }
            if flight.queue.is_empty() && !flight.walked_all {
                let size = pace.batch_size(&self.ctx.pace);
                let walked = flight
                    .walk(
                        &walk,
                        walker.as_mut(),
                        kind,
                        &upper,
                        size,
                        self.ctx.claim_ahead,
                    )
                    .await;
                if let Err(e) = walked {
                    ended = Some(self.start_failed(&e));
                    break;
                }
            }
            let Some(range) = flight.queue.pop_front() else {
                break;
            };
            if let Some(reason) = pace.throttled(&self.ctx.pace) {
                if !flight.throttled {
                    self.ctx.send(DryRunEvent::StepThrottled {
                        step: self.step.name.clone(),
                        reason,
                    });
                }
                flight.throttled = true;
                flight.queue.push_front(range);
                let _ = unless_stopped(&mut stop, StopLevel::Drain, tokio::time::sleep(POLL)).await;
                continue;
            }
            flight.throttled = false;
            let turn = pace.book(&self.ctx.pace, u64::try_from(range.n_rows).unwrap_or(0));
            let slot = async {
                tokio::time::sleep(turn).await;
                self.ctx.permits.clone().acquire_owned().await
            };
            let Some(Ok(permit)) = unless_stopped(&mut stop, StopLevel::Drain, slot).await else {
                // Not started: the step did not finish.
                flight.queue.push_front(range);
                break;
            };
            let keys = (kind.encode(&range.first), kind.encode(&range.last));
            let (Ok(first), Ok(last)) = keys else {
                ended = Some(Rehearsed::Failed(Failure::new(
                    FailureKind::Internal,
                    format!(
                        "step {:?}: a key of the walk cannot be encoded",
                        self.step.name
                    ),
                )));
                break;
            };
            flight.number += 1;
            let mut job = self.batch_job(flight.number, Some((first, last)));
            job.n_rows = range.n_rows;
            flight.tasks.spawn(rehearse_batch(job, Some(permit)));
        }
        let aborted = self.land(&mut flight, &mut ended, &pace).await;
        let stopped = aborted || (stop.level() >= StopLevel::Drain && !flight.finished());
        ended.unwrap_or(if stopped {
            Rehearsed::Stopped
        } else {
            Rehearsed::Done
        })
    }

    /// About `n` batches of the step (fewer where they would cover more than 2% of its rows),
    /// spread evenly over its key range, rehearsed in waves of
    /// `concurrency` side by side, each wave timed (`godwit estimate`). The first batches from
    /// the start of the range come first, one at a time and not counted, so that adaptive
    /// sizing settles on the size the run would use. Keys that cannot be spread (text) are
    /// sampled as consecutive batches from the start.
    async fn sampled(&mut self, n: usize) -> Rehearsed {
        let settings = self.step.settings.clone();
        let Walk {
            walk,
            mut walker,
            upper,
            kind,
        } = match self.start_walk().await {
            Ok(Some(started)) => started,
            Ok(None) => {
                self.out.rows_total = Some(0);
                return Rehearsed::Done;
            }
            Err(ended) => return ended,
        };
        match walk.count(walker.as_mut(), &upper).await {
            Ok(total) => self.out.rows_total = Some(total),
            Err(e) => return self.start_failed(&e),
        }
        let pace = StepPace::new(&settings);
        let mut after: Option<Value> = None;
        // Settling: a run's first batches, one at a time, as the sizer learns the step.
        for _ in 0..SETTLING_BATCHES {
            let size = pace.batch_size(&self.ctx.pace);
            let range = match walk
                .next_ranges(walker.as_mut(), kind, after.as_ref(), &upper, size, 1)
                .await
            {
                Ok(ranges) => ranges.into_iter().next(),
                Err(e) => return self.start_failed(&e),
            };
            let Some(range) = range else { break };
            after = Some(range.last.clone());
            let done = match self.sample_job(kind, &range) {
                Ok(job) => rehearse_batch(job, None).await,
                Err(ended) => return ended,
            };
            if let Ok((_, took)) = &done.result {
                pace.observe(u64::try_from(done.n_rows).unwrap_or(0), *took);
            }
            if let Some(ended) = self.note(done) {
                return ended;
            }
            if range.reaches_end {
                return Rehearsed::Done;
            }
        }
        let low = after.clone().unwrap_or_else(|| upper.clone());
        let spread = between(&low, &upper, 0.5).is_some();
        if !spread {
            self.out.notes.push("keys of this type cannot be spread over their range: the batches right after the first ones were sampled".into());
        }
        // The sample is kept to a small share of the step's rows, so that estimating takes a
        // small share of the run's time: at most `n` batches, at least one wave.
        let size = pace.batch_size(&self.ctx.pace).max(1);
        let total = self.out.rows_total.unwrap_or(0).max(0) as f64;
        let per_wave = (size as f64) * self.ctx.concurrency as f64;
        let affordable = ((total * SAMPLE_SHARE) / per_wave).floor().max(1.0) as usize;
        let waves = n.div_ceil(self.ctx.concurrency).min(affordable);
        let n = n.min(waves * self.ctx.concurrency);
        let mut point = 0usize;
        let mut stop = self.ctx.stop.clone();
        for _ in 0..waves {
            if stop.level() >= StopLevel::Drain {
                return Rehearsed::Stopped;
            }
            let size = pace.batch_size(&self.ctx.pace);
            let mut ranges = Vec::new();
            for _ in 0..self.ctx.concurrency.min(n - point) {
                let at = (point as f64 + 0.5) / n as f64;
                point += 1;
                let from = if spread {
                    between(&low, &upper, at)
                } else {
                    after.clone()
                };
                let range = match walk
                    .next_ranges(walker.as_mut(), kind, from.as_ref(), &upper, size, 1)
                    .await
                {
                    Ok(ranges) => ranges.into_iter().next(),
                    Err(e) => return self.start_failed(&e),
                };
                if let Some(range) = range {
                    after = Some(range.last.clone());
                    ranges.push(range);
                }
            }
            if ranges.is_empty() {
                break;
            }
            let started = Instant::now();
            let mut tasks = JoinSet::new();
            for range in &ranges {
                match self.sample_job(kind, range) {
                    Ok(job) => {
                        tasks.spawn(rehearse_batch(job, None));
                    }
                    Err(ended) => return ended,
                }
            }
            let mut rows = 0;
            let mut ended = None;
            while let Some(joined) = unless_stopped(&mut stop, StopLevel::Abort, tasks.join_next())
                .await
                .flatten()
            {
                if let Ok(done) = &joined {
                    rows += done.n_rows;
                }
                ended = ended.or(self.joined(joined, &pace));
            }
            if let Some(ended) = ended {
                return ended;
            }
            self.out.waves.push((rows, started.elapsed()));
        }
        Rehearsed::Done
    }

    /// A sampled batch's job.
    fn sample_job(&mut self, kind: KeyKind, range: &KeyRange) -> Result<BatchJob, Rehearsed> {
        let (Ok(first), Ok(last)) = (kind.encode(&range.first), kind.encode(&range.last)) else {
            return Err(Rehearsed::Failed(Failure::new(
                FailureKind::Internal,
                format!(
                    "step {:?}: a key of the walk cannot be encoded",
                    self.step.name
                ),
            )));
        };
        let number = self.out.batches + 1;
        let mut job = self.batch_job(number, Some((first, last)));
        job.n_rows = range.n_rows;
        Ok(job)
    }

    /// Opens the step's key walk and fixes its range, as a run's first worker does. `None`
    /// when no row is in it; `Err` is how the step ends instead (what a one-off step before it
    /// would create is missing, the database failed).
    async fn start_walk(&mut self) -> Result<Option<Walk>, Rehearsed> {
        let Some(walk) = self.work.walk().cloned() else {
            return Err(Rehearsed::NotRehearsed(
                "the step has no key to walk".into(),
            ));
        };
        let timeout = self.step.settings.batch_timeout;
        let mut walker = open_walker(self.work.walk_url(), timeout)
            .await
            .map_err(|e| self.start_failed(&e))?;
        if let Some(ended) = self.missing_before(walker.as_mut()).await {
            return Err(ended);
        }
        let upper = walk
            .upper_key(walker.as_mut())
            .await
            .map_err(|e| self.start_failed(&e))?;
        let Some(upper) = upper.filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let kind = key_kind(&self.step.name, &upper)
            .map_err(|problem| Rehearsed::Failed(Failure::new(FailureKind::Plan, problem)))?;
        self.work.set_key_kind(kind);
        Ok(Some(Walk {
            walk,
            walker,
            upper,
            kind,
        }))
    }

    /// Waits for the batches in flight (they roll back either way), noting how they ended in
    /// `ended`; a second signal drops them instead, and their connections with them, which
    /// rolls them back on the server. Returns whether it dropped any.
    async fn land(
        &mut self,
        flight: &mut Flight,
        ended: &mut Option<Rehearsed>,
        pace: &StepPace,
    ) -> bool {
        let mut stop = self.ctx.stop.clone();
        loop {
            let joined =
                unless_stopped(&mut stop, StopLevel::Abort, flight.tasks.join_next()).await;
            match joined {
                Some(Some(joined)) => {
                    let end = self.joined(joined, pace);
                    *ended = ended.take().or(end);
                }
                Some(None) => return false,
                None => {
                    let aborted = !flight.tasks.is_empty();
                    flight.tasks.abort_all();
                    while flight.tasks.join_next().await.is_some() {}
                    return aborted;
                }
            }
        }
    }

    /// For a step after a one-off step: what the one-off step would create and the step needs
    /// (its table, key, key index, the columns it reads, a copy's target) that is missing.
    /// `None` when nothing is, or the step comes after no one-off step (the plan was judged).
    async fn missing_before(&mut self, walker: &mut dyn Conn) -> Option<Rehearsed> {
        let missing = self.find_missing(walker).await;
        let missing = match missing {
            Ok(None) => return None,
            Ok(Some(missing)) => missing,
            Err(e) => return Some(self.start_failed(&e)),
        };
        let ended = match self.before.explain(&missing) {
            Some(why) => Rehearsed::NotRehearsed(why),
            None => Rehearsed::Failed(Failure::new(
                FailureKind::Plan,
                format!("step {:?}: {missing}", self.step.name),
            )),
        };
        Some(ended)
    }

    async fn find_missing(
        &self,
        walker: &mut dyn Conn,
    ) -> Result<Option<String>, godwit_driver::Error> {
        let Some(walked) = self.step.kind.walked() else {
            return Ok(None);
        };
        if let Some(p) =
            godwit_batch::key_problem(walker, walked.table, walked.key, walked.filter).await?
        {
            return Ok(Some(format!("{} ({})", p.message, p.code)));
        }
        match &self.step.kind {
            StepKind::Transform { table, columns, .. } => {
                let info = walker.table_info(table).await?;
                let lacking = info.and_then(|info| {
                    columns
                        .iter()
                        .find(|c| info.column(c).is_none())
                        .map(|c| format!("table {table} has no column {c}"))
                });
                Ok(lacking)
            }
            StepKind::Copy(copy) => {
                let mut conn = self.ctx.pool.take().await?;
                let target = conn.table_info(&copy.into).await?;
                self.ctx.pool.give(conn);
                Ok(target
                    .is_none()
                    .then(|| format!("the target table {} does not exist", copy.into)))
            }
            StepKind::Once { .. } | StepKind::Chunked { .. } => Ok(None),
        }
    }

    /// A batch of this step, to run on a task of its own.
    fn batch_job(&self, number: u64, range: Option<(String, String)>) -> BatchJob {
        BatchJob {
            ctx: self.ctx.clone(),
            step: self.step.clone(),
            work: self.work.clone(),
            number,
            n_rows: 0,
            range,
        }
    }

    /// Notes a batch task that ended; `Some` when it ends the step.
    fn joined(
        &mut self,
        joined: Result<BatchRun, tokio::task::JoinError>,
        pace: &StepPace,
    ) -> Option<Rehearsed> {
        match joined {
            Ok(done) => {
                if let Ok((_, took)) = &done.result {
                    pace.observe(u64::try_from(done.n_rows).unwrap_or(0), *took);
                }
                self.note(done)
            }
            // A task aborted by a second signal: the step is reported as stopped.
            Err(e) if e.is_cancelled() => None,
            Err(e) => Some(Rehearsed::Failed(Failure::new(
                FailureKind::Internal,
                format!("a batch task ended unexpectedly: {e}"),
            ))),
        }
    }

    /// Adds a batch's counts to the step's; `Some` when the batch failed, ending the step.
    fn note(&mut self, done: BatchRun) -> Option<Rehearsed> {
        let (written, took) = match done.result {
            Ok(ok) => ok,
            Err((e, failed_attempts)) => {
                let range = done.range.as_ref().map(|(a, b)| (a.as_str(), b.as_str()));
                let context = describe_batch(&self.step, range, failed_attempts);
                return Some(self.batch_failed(context, &e));
            }
        };
        let out = &mut self.out;
        out.batches += 1;
        out.rows_matched += done.n_rows;
        out.rows_changed += written.rows;
        out.rows_set_aside += written.refused.len() as u64;
        out.longest_batch = out.longest_batch.max(took);
        self.examples
            .extend(written.examples.into_iter().map(|e| (done.number, e)));
        self.examples.sort_by_key(|(n, _)| *n);
        self.examples.truncate(EXAMPLES);
        self.set_aside
            .extend(written.refused.into_iter().map(|l| (done.number, l)));
        self.set_aside.sort_by_key(|(n, _)| *n);
        self.set_aside.truncate(SET_ASIDE_SHOWN);
        if self.last_progress.elapsed() >= PROGRESS_EVERY {
            self.last_progress = Instant::now();
            self.ctx.send(DryRunEvent::Progress {
                step: self.step.name.clone(),
                batches: out.batches,
                rows_matched: out.rows_matched,
                rows_changed: out.rows_changed,
            });
        }
        None
    }

    /// A batch that failed for good: the step's failure, unless the database says something
    /// the one-off steps before it would create is missing.
    fn batch_failed(&self, context: String, e: &BatchError) -> Rehearsed {
        if let BatchError::Database(db) = e {
            let missing =
                godwit_db::forms(self.ctx.dialect).is_some_and(|forms| forms.missing_object(db));
            let why = missing
                .then(|| self.before.explain(&format!("{context}: {db}")))
                .flatten();
            if let Some(why) = why {
                return Rehearsed::NotRehearsed(why);
            }
        }
        Rehearsed::Failed(batch_failure(context, e))
    }

    /// The step could not start: its database failed.
    fn start_failed(&self, e: &godwit_driver::Error) -> Rehearsed {
        let context = format!("step {:?}: cannot start its rehearsal", self.step.name);
        Rehearsed::Failed(Failure::from_error(FailureKind::Database, context, e))
    }
}

/// A step's key walk, started: its SQL, its connection, its highest key and the key's kind.
struct Walk {
    walk: godwit_batch::KeyWalk,
    walker: Box<dyn Conn>,
    upper: Value,
    kind: KeyKind,
}

/// A step's batches between walking and ending.
struct Flight {
    /// Ranges walked and not started yet.
    queue: VecDeque<KeyRange>,
    /// The last key walked.
    after: Option<Value>,
    walked_all: bool,
    tasks: JoinSet<BatchRun>,
    /// The last batch's number.
    number: u64,
    throttled: bool,
}

impl Flight {
    /// Walks the next ranges after the last one, as a run's claim walks them.
    async fn walk(
        &mut self,
        walk: &godwit_batch::KeyWalk,
        conn: &mut dyn Conn,
        kind: KeyKind,
        upper: &Value,
        batch_size: u64,
        batches: usize,
    ) -> Result<(), godwit_driver::Error> {
        let ranges = walk
            .next_ranges(conn, kind, self.after.as_ref(), upper, batch_size, batches)
            .await?;
        self.walked_all = ranges.last().is_none_or(|r| r.reaches_end);
        if let Some(last) = ranges.last() {
            self.after = Some(last.last.clone());
        }
        self.queue.extend(ranges);
        Ok(())
    }

    /// Whether every range was walked and started.
    fn finished(&self) -> bool {
        self.walked_all && self.queue.is_empty()
    }
}

/// One batch to rehearse on a task of its own.
struct BatchJob {
    ctx: Arc<DryCtx>,
    step: Step,
    work: Arc<Work>,
    number: u64,
    n_rows: i64,
    range: Option<(String, String)>,
}

/// Rehearses one batch, trying it again after a transient error (up to `max_attempts`) or a
/// lock held elsewhere (without counting an attempt), as a run does. It holds `_slot` (one of
/// the `concurrency` slots) until it ends.
async fn rehearse_batch(job: BatchJob, _slot: Option<OwnedSemaphorePermit>) -> BatchRun {
    let range = job.range.as_ref().map(|(a, b)| (a.as_str(), b.as_str()));
    let mut failed_attempts = 0;
    let result = loop {
        let started = Instant::now();
        let attempt = async {
            let mut conn = job.ctx.pool.take().await?;
            let result = rehearse(
                &job.work,
                &job.step.settings,
                conn.as_mut(),
                range.map(|r| r.0),
                range.map(|r| r.1),
            )
            .await;
            if result.is_ok()
                || (!result.as_ref().is_err_and(BatchError::lost_connection)
                    && conn.rollback().await.is_ok())
            {
                job.ctx.pool.give(conn);
            }
            result
        };
        let e = match attempt.await {
            Ok(written) => break Ok((written, started.elapsed())),
            Err(e) => e,
        };
        let lock = matches!(&e, BatchError::Database(db) if db.is_lock_timeout());
        let attempts_left = failed_attempts + 1 < i64::from(job.step.settings.max_attempts);
        if !(lock || (e.is_retryable() && attempts_left)) {
            break Err((e, failed_attempts));
        }
        let delay = if lock {
            yield_backoff()
        } else {
            failed_attempts += 1;
            backoff(failed_attempts - 1)
        };
        job.ctx.send(DryRunEvent::BatchRetry {
            step: job.step.name.clone(),
            error: format!("{}: {e}", describe_batch(&job.step, range, failed_attempts)),
            delay,
        });
        tokio::time::sleep(delay).await;
    };
    BatchRun {
        number: job.number,
        n_rows: job.n_rows,
        range: job.range,
        result,
    }
}

/// `work` unless a stop of `level` comes first (`None`). A stop handle dropped without asking
/// for a stop stops nothing.
async fn unless_stopped<T>(
    stop: &mut StopSignal,
    level: StopLevel,
    work: impl Future<Output = T>,
) -> Option<T> {
    tokio::pin!(work);
    if stop.level() < level {
        tokio::select! {
            biased;
            _ = stop.reached(level) => {}
            out = &mut work => return Some(out),
        }
    }
    if stop.level() >= level {
        return None;
    }
    Some(work.await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(steps: &str, expected: &[&str]) {
        let text = format!("name = \"p\"\ndatabase = \"sqlite://x.db\"\n{steps}");
        let plan = godwit_plan::parse(&text, std::path::Path::new("p.toml"), &|_| None)
            .expect("a valid plan");
        let names: Vec<&str> = order(&plan)
            .into_iter()
            .map(|i| plan.steps[i].name.as_str())
            .collect();
        assert_eq!(names, expected);
    }

    #[test]
    fn rehearses_steps_in_an_order_after_allows() {
        check(
            "[[steps]]\nname = \"a\"\nafter = [\"c\"]\nsql = \"SELECT 1\"\n\
             [[steps]]\nname = \"b\"\nsql = \"SELECT 1\"\n\
             [[steps]]\nname = \"c\"\nafter = [\"b\"]\nsql = \"SELECT 1\"\n",
            &["b", "c", "a"],
        );
        check(
            "[[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n\
             [[steps]]\nname = \"b\"\nsql = \"SELECT 1\"\n",
            &["a", "b"],
        );
    }
}
