//! The life of a run in one process: open the state, order the steps, keep leases alive.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use godwit_check::Refusal;
use godwit_driver::{DbUrl, Dialect};
use godwit_plan::{Plan, StepKind};
use godwit_state::{ClaimedBatch, RunSpec, RunStart, RunState, StateStore, StepSpec, WorkerBeat};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::batch;
use crate::step::{self, StepCtx, StepResult};
use crate::stop::{stop_pair, StopHandle, StopLevel, StopSignal};
use crate::{
    default_concurrency, step_definition, Error, Event, EventSink, RunOptions, RunOutcome,
};
use godwit_db::ConnPool;

/// How often the scheduler looks at the stored run (other processes' progress, a failure, a
/// pause or a cancel asked from elsewhere).
pub(crate) const POLL: Duration = Duration::from_millis(250);

/// The most new batches one claim takes.
const MAX_CLAIM_AHEAD: usize = 16;

/// How often a worker records its heartbeat in `godwit_workers`.
const BEAT_EVERY: Duration = Duration::from_secs(1);

/// Everything the steps of one run share in this process.
pub(crate) struct RunCtx {
    name: String,
    state: StateStore,
    pool: ConnPool,
    exactly_once: bool,
    worker: String,
    permits: Arc<Semaphore>,
    /// How many new batches one claim takes at most.
    claim_ahead: usize,
    /// This run's own stop: raised by the caller's signal, and by a cancel from elsewhere.
    stop: StopSignal,
    stop_handle: StopHandle,
    events: EventSink,
    failed: AtomicBool,
    /// Another process restarted the run: this one claims nothing more and stops.
    restarted: AtomicBool,
    /// Paused from elsewhere: claim nothing new until resumed.
    paused: AtomicBool,
    cancelled: AtomicBool,
    /// Batches claimed here, with their lease, for the heartbeat to extend: those running and
    /// the one claimed ahead, waiting for a free slot.
    in_flight: Mutex<HashMap<(String, i64), (ClaimedBatch, Duration)>>,
    /// Batches running now, for the heartbeat record.
    running: Arc<AtomicUsize>,
}

/// Counts a running batch until dropped.
pub(crate) struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl RunCtx {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
    pub(crate) fn state(&self) -> &StateStore {
        &self.state
    }
    pub(crate) fn pool(&self) -> &ConnPool {
        &self.pool
    }
    /// Whether the state lives in the plan's database, so a batch and its record commit
    /// together.
    pub(crate) fn exactly_once(&self) -> bool {
        self.exactly_once
    }
    pub(crate) fn worker(&self) -> &str {
        &self.worker
    }
    pub(crate) fn claim_ahead(&self) -> usize {
        self.claim_ahead
    }
    pub(crate) fn permits(&self) -> Arc<Semaphore> {
        self.permits.clone()
    }
    pub(crate) fn stop(&self) -> &StopSignal {
        &self.stop
    }
    pub(crate) fn events(&self) -> &EventSink {
        &self.events
    }
    pub(crate) fn is_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }
    pub(crate) fn mark_failed(&self) {
        self.failed.store(true, Ordering::SeqCst);
    }
    /// Notes that another process restarted the run, and stops this one at once: the batches
    /// in flight belong to the old generation, whose records the state store refuses, so they
    /// are rolled back rather than finished.
    pub(crate) fn mark_restarted(&self) {
        if !self.restarted.swap(true, Ordering::SeqCst) {
            tracing::warn!(run = %self.name, "the run was restarted by another process; stopping");
        }
        self.stop_handle.request(StopLevel::Abort);
    }
    pub(crate) fn is_restarted(&self) -> bool {
        self.restarted.load(Ordering::SeqCst)
    }
    pub(crate) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }
    /// Marks a batch as running until the returned guard is dropped.
    pub(crate) fn running(&self) -> Running {
        self.running.fetch_add(1, Ordering::SeqCst);
        Running(self.running.clone())
    }
    pub(crate) fn track(&self, batch: &ClaimedBatch, lease: Duration) {
        if let Ok(mut map) = self.in_flight.lock() {
            map.insert(
                (batch.step().to_string(), batch.number()),
                (batch.clone(), lease),
            );
        }
    }
    pub(crate) fn untrack(&self, batch: &ClaimedBatch) {
        // Only this claim: the same batch may have been claimed again here since.
        if let Ok(mut map) = self.in_flight.lock() {
            let key = (batch.step().to_string(), batch.number());
            if map.get(&key).is_some_and(|(held, _)| held == batch) {
                map.remove(&key);
            }
        }
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "localhost".into())
}

/// A name for this process in the claims it makes: host, pid and a random suffix.
fn worker_name() -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{}:{}:{}", host_name(), std::process::id(), &suffix[..8])
}

/// The plan's databases and what checking them found, before anything is recorded.
struct Prepared {
    pool: ConnPool,
    dialect: Dialect,
    state_url: DbUrl,
    exactly_once: bool,
}

/// Judges the plan against its database as `check` does (`godwit_check`), and refuses it on
/// any problem, before anything is recorded. Steps after a one-off step are judged on what the
/// plan says; their tables are checked when they start (`step::init`).
async fn prepare(plan: &Plan) -> Result<Prepared, Error> {
    let data_url = DbUrl::new(plan.database.clone());
    let state_url = DbUrl::new(plan.state_url());
    let exactly_once = state_url == data_url;
    let longest_lease = plan
        .steps
        .iter()
        .map(|s| s.settings.lease)
        .max()
        .unwrap_or(Duration::from_secs(30));
    let pool = ConnPool::new(data_url.clone(), longest_lease);
    let mut probe = pool
        .take()
        .await
        .map_err(|e| Error::database("cannot connect to the plan's database", &e))?;
    let dialect = probe.dialect();
    let judgement = godwit_check::judge_before_run(plan, probe.as_mut()).await;
    pool.give(probe);
    match judgement.refusal() {
        None => Ok(Prepared {
            pool,
            dialect,
            state_url,
            exactly_once,
        }),
        Some(Refusal::Invalid(problems)) => Err(Error::invalid(problems)),
        Some(Refusal::Database { context, error }) => Err(Error::database(&context, &error)),
    }
}

pub(crate) async fn open_state(url: &DbUrl) -> Result<StateStore, Error> {
    let state_conn = godwit_db::connect(url, &Default::default())
        .await
        .map_err(|e| Error::database("cannot connect to the state database", &e))?;
    StateStore::open(url, state_conn)
        .await
        .map_err(|e| Error::database("cannot prepare the state tables", &e))
}

/// Whether the plan's database connections see the state store's own tables: a marker row
/// written through the state store is looked for through a batch connection. Anything that
/// fails means no (at-least-once, the safe side).
async fn same_database(state: &StateStore, pool: &ConnPool) -> bool {
    let Ok(marker) = state.write_marker().await else {
        return false;
    };
    let seen = async {
        let mut conn = pool.take().await.ok()?;
        let q = format!(
            "SELECT value FROM godwit_meta WHERE name = {}",
            conn.dialect().param(1)
        );
        let rows = conn
            .query(&q, &[godwit_driver::Value::Text(marker.clone())])
            .await
            .ok()?;
        pool.give(conn);
        Some(!rows.is_empty())
    }
    .await
    .unwrap_or(false);
    if let Err(e) = state.remove_marker(&marker).await {
        tracing::debug!(error = %e, "could not remove the identity marker");
    }
    seen
}

/// What the state store keeps of a plan.
fn run_spec(plan: &Plan) -> RunSpec {
    RunSpec {
        name: plan.name.clone(),
        plan_text: stored_plan_text(plan),
        steps: plan
            .steps
            .iter()
            .map(|s| StepSpec {
                name: s.name.clone(),
                definition: step_definition(s),
                batch_size: match s.kind {
                    StepKind::Once { .. } => 1,
                    _ => i64::try_from(s.settings.batch_size).unwrap_or(i64::MAX),
                },
            })
            .collect(),
    }
}

/// The URLs of `plan` that hold a password written literally, not through `${VAR}`.
fn literal_passwords(plan: &Plan) -> impl Iterator<Item = &godwit_plan::WrittenUrl> {
    plan.written_urls
        .iter()
        .filter(|url| godwit_driver::has_password(&url.literal()))
}

/// The plan's text as the state database keeps it: every URL holding a password written
/// literally is replaced by its redacted form, since anyone reading the state tables would
/// read it. Such a stored plan cannot connect, so workers cannot take it up; `submit` refuses
/// it for that reason and `run`, whose own process has the plan, stores it anyway.
fn stored_plan_text(plan: &Plan) -> String {
    let mut text = plan.text.clone();
    let mut literal: Vec<_> = literal_passwords(plan).collect();
    // From the end, so the spans still to replace stay valid.
    literal.sort_by_key(|url| std::cmp::Reverse(url.span.start));
    for url in literal {
        if text.get(url.span.clone()).is_none() {
            continue;
        }
        let redacted = godwit_driver::redact_url(&url.text);
        text.replace_range(url.span.clone(), &toml_string(&redacted));
    }
    text
}

/// `value` as a TOML basic string.
fn toml_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Stores the plan's run in its state database for workers (`godwit submit`), after the
/// same checks as [`run`]; changes no data. Submitting a plan whose run exists already
/// leaves that run as it is.
///
/// # Errors
/// As [`run`]: the plan cannot run, differs from the stored run, or a database is unreachable;
/// [`crate::ErrorKind::Invalid`] when a URL of the plan holds a password written literally,
/// which the stored plan must not keep.
pub async fn submit(plan: &Plan) -> Result<RunStart, Error> {
    if let Some(url) = literal_passwords(plan).next() {
        return Err(Error::invalid(format!(
            "line {}, column {}: `{}` holds a password written in the plan, which the state \
             database would keep for anyone to read; write it as ${{VARIABLE}} (workers read \
             their own environment)",
            url.location.line, url.location.column, url.key
        )));
    }
    let prepared = prepare(plan).await?;
    let state = open_state(&prepared.state_url).await?;
    state
        .submit(&run_spec(plan))
        .await
        .map_err(|e| Error::database("cannot store the run", &e))
}

/// Works on the plan's run until every step is done, a batch fails for good, or `stop` asks
/// to stop. Other processes may work on the same run at the same time.
///
/// # Errors
/// [`crate::ErrorKind::Invalid`] when the plan cannot run (a step kind this version lacks, a
/// stored run from a different plan); [`crate::ErrorKind::Database`] when a database cannot be
/// reached. Nothing was changed in either case.
pub async fn run(
    plan: &Plan,
    options: RunOptions,
    stop: StopSignal,
    events: EventSink,
) -> Result<RunOutcome, Error> {
    let Prepared {
        pool,
        dialect,
        state_url,
        exactly_once,
    } = prepare(plan).await?;
    let state = open_state(&state_url).await?;
    // Two spellings of one database (a host name and an address, options in the URL) are
    // still one database: ask the databases rather than compare the text.
    let exactly_once = exactly_once || same_database(&state, &pool).await;
    let concurrency = options
        .concurrency
        .unwrap_or_else(|| default_concurrency(dialect))
        .max(1);
    let (stop_handle, own_stop) = stop_pair();
    forward_stop(stop, stop_handle.clone());
    let ctx = Arc::new(RunCtx {
        name: plan.name.clone(),
        state,
        pool,
        exactly_once,
        worker: worker_name(),
        permits: options
            .permits
            .clone()
            .unwrap_or_else(|| Arc::new(Semaphore::new(concurrency))),
        // One claim for as many batches as run at once here: claims, commits and races for
        // the step's cursor row divide by that, while a process never holds more than one
        // round of batches it has not started.
        claim_ahead: concurrency.clamp(1, MAX_CLAIM_AHEAD),
        stop: own_stop,
        stop_handle,
        events,
        failed: AtomicBool::new(false),
        restarted: AtomicBool::new(false),
        paused: AtomicBool::new(false),
        cancelled: AtomicBool::new(false),
        in_flight: Mutex::new(HashMap::new()),
        running: Arc::new(AtomicUsize::new(0)),
    });
    let mut steps = Vec::with_capacity(plan.steps.len());
    for step in &plan.steps {
        steps.push(Arc::new(
            StepCtx::new(ctx.clone(), step.clone(), dialect, &plan.path).map_err(Error::invalid)?,
        ));
    }

    let start = ctx
        .state
        .begin_run(&run_spec(plan), options.restart)
        .await
        .map_err(|e| Error::database("cannot start the run", &e))?;
    if start == RunStart::AlreadyDone {
        return Ok(RunOutcome::AlreadyDone);
    }
    match ctx.state.run_state(&plan.name).await {
        Ok(Some(RunState::Cancelled)) => {
            return Err(Error::invalid(format!(
                "the run {:?} was cancelled; start it over with `godwit run --restart`",
                plan.name
            )))
        }
        Ok(_) => {}
        Err(e) => return Err(Error::database("cannot read the run", &e)),
    }
    // A submitted run starts when the first worker takes it up.
    ctx.state
        .start_run(&plan.name)
        .await
        .map_err(|e| Error::database("cannot start the run", &e))?;
    if options.requeue_failed {
        // Running a plan again retries what failed, whether or not the failing process lived
        // to mark the whole run failed.
        ctx.state
            .requeue_failed(&plan.name)
            .await
            .map_err(|e| Error::database("cannot re-queue the failed batches", &e))?;
    }
    ctx.events.send(Event::RunStarted {
        plan: plan.name.clone(),
        resumed: start == RunStart::Resumed,
        exactly_once: ctx.exactly_once,
    });

    let heartbeat = tokio::spawn(heartbeat(ctx.clone()));
    let mut outcome = schedule(&ctx, plan, &steps).await;
    if ctx.is_restarted() {
        // Whatever the steps made of it (a refused record reads as a lost lease or a failure):
        // the run this process worked on is gone.
        outcome = Err(Error::restarted(&ctx.name));
    }
    heartbeat.abort();
    // Every step task has ended here. A claim whose future was dropped by an abort may still
    // be recorded as ours: give it back now rather than when its lease ends.
    let released = batch::with_retries(|| ctx.state.release_worker(&ctx.name, &ctx.worker)).await;
    if let Err(e) = released {
        tracing::warn!(error = %e, "could not release this worker's claims; they return when their leases end");
    }
    if let Err(e) = ctx.state.remove_worker(&ctx.worker).await {
        tracing::debug!(error = %e, "could not remove this worker's heartbeat; it ages out");
    }
    outcome
}

/// Passes the caller's stop requests on to the run's own stop, which a cancel also raises.
fn forward_stop(mut from: StopSignal, to: StopHandle) {
    tokio::spawn(async move {
        for level in [StopLevel::Drain, StopLevel::Abort] {
            from.reached(level).await;
            // `reached` also returns when the caller dropped its handle: nothing to pass on.
            if from.level() < level {
                return;
            }
            to.request(level);
        }
    });
}

/// Starts each step once the steps it comes after are done, until all are done.
async fn schedule(
    ctx: &Arc<RunCtx>,
    plan: &Plan,
    steps: &[Arc<StepCtx>],
) -> Result<RunOutcome, Error> {
    let mut running: JoinSet<(String, StepResult)> = JoinSet::new();
    let mut here: HashMap<String, ()> = HashMap::new();
    let mut failure: Option<String> = None;
    let mut stop = ctx.stop.clone();
    loop {
        if ctx.is_restarted() {
            // The batches in flight were aborted: wait for them to end, then leave.
            while let Some(joined) = running.join_next().await {
                step_ended(joined, &mut here, &mut failure);
            }
            return Err(Error::restarted(&ctx.name));
        }
        // Before anything read here is acted on: the steps below may be another plan's.
        match ctx.state.run_state(&ctx.name).await {
            Err(e) if godwit_state::is_restarted(&e) => {
                ctx.mark_restarted();
                continue;
            }
            Ok(Some(RunState::Paused)) => ctx.paused.store(true, Ordering::SeqCst),
            Ok(Some(RunState::Cancelled)) => {
                if !ctx.cancelled.swap(true, Ordering::SeqCst) {
                    tracing::warn!(run = %ctx.name, "the run was cancelled; finishing the batches in flight");
                }
                ctx.stop_handle.request(StopLevel::Drain);
            }
            Ok(_) => ctx.paused.store(false, Ordering::SeqCst),
            Err(e) => tracing::debug!(error = %e, "could not read the run's state"),
        }
        let stored = ctx
            .state
            .steps_done(&ctx.name)
            .await
            .map_err(|e| Error::database("cannot read the run's steps", &e));
        let stored: HashMap<String, String> = match stored {
            Ok(rows) => rows.into_iter().collect(),
            Err(e) if running.is_empty() => return Err(e),
            Err(_) => {
                // A short outage (a restart): knowing nothing of the steps, start none; the
                // running ones carry on. Look again after a while.
                tokio::select! {
                    Some(joined) = running.join_next() => step_ended(joined, &mut here, &mut failure),
                    _ = tokio::time::sleep(POLL) => {}
                }
                continue;
            }
        };
        if let Some(message) = failure.clone().or_else(|| stored_failure(&stored)) {
            ctx.mark_failed();
            if running.is_empty() {
                let recorded = ctx
                    .state
                    .set_run_state(&ctx.name, RunState::Failed, Some(&message))
                    .await;
                if recorded.as_ref().is_err_and(godwit_state::is_restarted) {
                    ctx.mark_restarted();
                    continue;
                }
                return Ok(RunOutcome::Failed(message));
            }
        }
        if ctx.cancelled.load(Ordering::SeqCst) && running.is_empty() {
            return Ok(RunOutcome::Cancelled);
        }
        let all_done = !stored.is_empty() && stored.values().all(|s| s == "done");
        if all_done && running.is_empty() {
            ctx.state
                .set_run_state(&ctx.name, RunState::Done, None)
                .await
                .map_err(|e| Error::database("cannot record the run as done", &e))?;
            return Ok(RunOutcome::Done);
        }
        if stop.level() >= StopLevel::Drain && running.is_empty() {
            return Ok(RunOutcome::Stopped);
        }
        if !ctx.is_failed() && stop.level() == StopLevel::Run {
            for (step, step_ctx) in plan.steps.iter().zip(steps) {
                let done = |name: &str| stored.get(name).map(String::as_str) == Some("done");
                let ready = !done(&step.name)
                    && !here.contains_key(&step.name)
                    && step.after.iter().all(|a| done(a));
                if ready {
                    here.insert(step.name.clone(), ());
                    let step_ctx = step_ctx.clone();
                    let name = step.name.clone();
                    running.spawn(async move { (name, step::drive(step_ctx).await) });
                }
            }
        }
        tokio::select! {
            Some(joined) = running.join_next(), if !running.is_empty() => {
                step_ended(joined, &mut here, &mut failure);
            }
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.reached(StopLevel::Drain), if stop.level() < StopLevel::Drain => {}
        }
    }
}

/// Notes a step task that ended in this process: done or stopped here, or the first failure.
fn step_ended(
    joined: Result<(String, StepResult), tokio::task::JoinError>,
    here: &mut HashMap<String, ()>,
    failure: &mut Option<String>,
) {
    match joined {
        Ok((name, StepResult::Done | StepResult::Stopped)) => {
            here.remove(&name);
        }
        Ok((_, StepResult::Failed(message))) => {
            failure.get_or_insert(message);
        }
        Err(e) => {
            failure.get_or_insert(format!("a step task ended unexpectedly: {e}"));
        }
    }
}

fn stored_failure(stored: &HashMap<String, String>) -> Option<String> {
    stored
        .iter()
        .find(|(_, state)| *state == "failed")
        .map(|(name, _)| format!("step {name:?} failed in another process; see `godwit status`"))
}

/// Extends the leases of the batches in flight here, three times per lease, and records this
/// worker's heartbeat every second.
async fn heartbeat(ctx: Arc<RunCtx>) {
    let mut beat = WorkerBeat {
        worker: ctx.worker.clone(),
        run: ctx.name.clone(),
        host: host_name(),
        pid: i64::from(std::process::id()),
        version: env!("CARGO_PKG_VERSION").to_string(),
        batches: 0,
        state: String::new(),
    };
    let mut last_beat: Option<std::time::Instant> = None;
    let mut last_extended = std::time::Instant::now();
    loop {
        if last_beat.is_none_or(|t| t.elapsed() >= BEAT_EVERY) {
            last_beat = Some(std::time::Instant::now());
            beat.batches = i64::try_from(ctx.running.load(Ordering::SeqCst)).unwrap_or_default();
            beat.state = if ctx.stop.level() >= StopLevel::Drain {
                "stopping"
            } else if ctx.is_paused() {
                "paused"
            } else {
                "running"
            }
            .to_string();
            if let Err(e) = ctx.state.heartbeat(&beat).await {
                tracing::debug!(error = %e, "could not record the heartbeat");
            }
        }
        let batches: Vec<(ClaimedBatch, Duration)> = ctx
            .in_flight
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        let shortest = batches
            .iter()
            .map(|(_, lease)| *lease)
            .min()
            .unwrap_or(Duration::from_secs(3));
        let every = (shortest / 3).max(Duration::from_millis(100));
        if last_extended.elapsed() >= every {
            last_extended = std::time::Instant::now();
            // One statement per step for the claims tracked there, running or ahead; by token,
            // so that a claim this process no longer tracks runs out and returns to others.
            let mut steps: HashMap<&str, (Duration, Vec<&ClaimedBatch>)> = HashMap::new();
            for (batch, lease) in &batches {
                steps
                    .entry(batch.step())
                    .or_insert((*lease, Vec::new()))
                    .1
                    .push(batch);
            }
            for (step, (lease, held)) in steps {
                if let Err(e) = ctx.state.extend_leases(&held, lease).await {
                    tracing::warn!(step, error = %e, "could not extend leases");
                }
            }
        }
        tokio::time::sleep(every.min(BEAT_EVERY)).await;
    }
}
