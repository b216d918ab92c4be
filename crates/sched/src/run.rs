//! The life of a run in one process: open the state, order the steps, keep leases alive.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use godwit_check::Refusal;
use godwit_db::ConnPool;
use godwit_driver::{DbUrl, Dialect};
use godwit_plan::{Place, Plan};
use godwit_state::{RunStart, RunState, StateStore};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::ctx::{RunCtx, RunSetup, StepCtx, POLL};
use crate::failure::{Failure, FailureKind};
use crate::heartbeat::heartbeat;
use crate::notify::{self, Notifier};
use crate::retry::with_retries;
use crate::spec::{literal_passwords, run_spec};
use crate::step::{self, StepResult};
use crate::stop::{StopLevel, StopSignal};
use crate::{default_concurrency, Error, Event, EventSink, RunOptions, RunOutcome};

/// The most new batches one claim takes.
pub(crate) const MAX_CLAIM_AHEAD: usize = 16;

/// The plan's databases and what checking them found, before anything is recorded.
pub(crate) struct Prepared {
    pub(crate) pool: ConnPool,
    pub(crate) dialect: Dialect,
    state_url: DbUrl,
    exactly_once: bool,
}

/// Judges the plan against its database as `check` does (`godwit_check`), and refuses it on
/// any problem, before anything is recorded. Steps after a one-off step are judged on what the
/// plan says; their tables are checked when they start (`step::init`).
pub(crate) async fn prepare(plan: &Plan) -> Result<Prepared, Error> {
    let data_url = DbUrl::new(plan.database.clone());
    let state_url = DbUrl::new(plan.state_url());
    let exactly_once = state_url == data_url;
    let longest_lease = plan
        .steps
        .iter()
        .map(|s| s.settings.lease)
        .max()
        .unwrap_or(Duration::from_secs(30));
    // A copy writes into the plan's database: its connections can then bulk-load.
    let copies = plan
        .steps
        .iter()
        .any(|s| matches!(s.kind, godwit_plan::StepKind::Copy(_)));
    let pool = ConnPool::new(data_url.clone(), longest_lease).with_bulk_load(copies);
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
            "{}: `{}` holds a password written in the plan, which the state database would \
             keep for anyone to read; write it as ${{VARIABLE}} (workers read their own \
             environment)",
            Place {
                file: &plan.path,
                location: url.location
            },
            url.key
        )));
    }
    let prepared = prepare(plan).await?;
    let state = open_state(&prepared.state_url).await?;
    state
        .submit(&run_spec(plan)?)
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
    let ctx = Arc::new(RunCtx::new(RunSetup {
        name: plan.name.clone(),
        state,
        pool,
        exactly_once,
        permits: options
            .permits
            .clone()
            .unwrap_or_else(|| Arc::new(Semaphore::new(concurrency))),
        concurrency,
        // One claim for as many batches as run at once here: claims, commits and races for
        // the step's cursor row divide by that, while a process never holds more than one
        // round of batches it has not started.
        claim_ahead: concurrency.clamp(1, MAX_CLAIM_AHEAD),
        stop,
        events,
    }));
    let mut steps = Vec::with_capacity(plan.steps.len());
    for step in &plan.steps {
        let step_ctx = StepCtx::new(ctx.clone(), step.clone(), dialect, &plan.path);
        steps.push(Arc::new(step_ctx.map_err(Error::invalid)?));
    }
    if join(&ctx, plan, &options).await? == RunStart::AlreadyDone {
        return Ok(RunOutcome::AlreadyDone);
    }
    let _replicas = ctx.pace().watch_replicas(plan);
    let _guard = ctx
        .pace()
        .guard(plan, ctx.state())
        .await
        .map_err(Error::invalid)?;
    let heartbeat = tokio::spawn(heartbeat(ctx.clone()));
    let notifier = Notifier::new(plan);
    let throttle_watch = notifier.as_ref().map(|n| {
        tokio::spawn(notify::watch_throttle(
            n.clone(),
            ctx.clone(),
            steps.clone(),
            plan.notify_throttled_after,
        ))
    });
    let mut outcome = schedule(&ctx, plan, &steps, notifier.as_deref()).await;
    if let Some(watch) = throttle_watch {
        watch.abort();
    }
    if let Some(notifier) = &notifier {
        // The run has ended here: its last messages may take a moment to go out.
        notifier.flush(notify::FLUSH).await;
    }
    if ctx.is_restarted() {
        // Whatever the steps made of it (a refused record reads as a lost lease or a failure):
        // the run this process worked on is gone.
        outcome = Err(Error::restarted(ctx.name()));
    }
    heartbeat.abort();
    leave(&ctx).await;
    outcome
}

/// Joins the plan's run in the state store: begins or resumes it, refuses a cancelled one,
/// starts a submitted one, and re-queues its failed batches when asked to.
async fn join(ctx: &RunCtx, plan: &Plan, options: &RunOptions) -> Result<RunStart, Error> {
    let state = ctx.state();
    let start = state
        .begin_run(&run_spec(plan)?, options.restart)
        .await
        .map_err(|e| Error::database("cannot start the run", &e))?;
    if start == RunStart::AlreadyDone {
        return Ok(start);
    }
    match state.run_state(&plan.name).await {
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
    state
        .start_run(&plan.name)
        .await
        .map_err(|e| Error::database("cannot start the run", &e))?;
    if options.requeue_failed {
        // Running a plan again retries what failed, whether or not the failing process lived
        // to mark the whole run failed.
        state
            .requeue_failed(&plan.name)
            .await
            .map_err(|e| Error::database("cannot re-queue the failed batches", &e))?;
    }
    ctx.events().send(Event::RunStarted {
        plan: plan.name.clone(),
        resumed: start == RunStart::Resumed,
        exactly_once: ctx.exactly_once(),
    });
    Ok(start)
}

/// Leaves the run once every step task has ended here. A claim whose future was dropped by an
/// abort may still be recorded as ours: give it back now rather than when its lease ends.
async fn leave(ctx: &RunCtx) {
    let state = ctx.state();
    let released = with_retries(|| state.release_worker(ctx.name(), ctx.worker())).await;
    if let Err(e) = released {
        tracing::warn!(error = %e, "could not release this worker's claims; they return when their leases end");
    }
    if let Err(e) = state.remove_worker(ctx.worker()).await {
        tracing::debug!(error = %e, "could not remove this worker's heartbeat; it ages out");
    }
}

/// Starts each step once the steps it comes after are done, until all are done.
async fn schedule(
    ctx: &Arc<RunCtx>,
    plan: &Plan,
    steps: &[Arc<StepCtx>],
    notifier: Option<&Notifier>,
) -> Result<RunOutcome, Error> {
    let mut tasks = StepTasks {
        running: JoinSet::new(),
        here: HashSet::new(),
        failure: None,
    };
    let mut stop = ctx.stop().clone();
    loop {
        if ctx.is_restarted() {
            // The batches in flight were aborted: wait for them to end, then leave.
            while let Some(joined) = tasks.running.join_next().await {
                tasks.ended(joined);
            }
            return Err(Error::restarted(ctx.name()));
        }
        // Before anything read here is acted on: the steps below may be another plan's.
        if follow_run_state(ctx).await.is_break() {
            continue;
        }
        let stored = ctx
            .state()
            .steps_done(ctx.name())
            .await
            .map_err(|e| Error::database("cannot read the run's steps", &e));
        let stored: HashMap<String, String> = match stored {
            Ok(rows) => rows.into_iter().collect(),
            Err(e) if tasks.running.is_empty() => return Err(e),
            Err(_) => {
                // A short outage (a restart): knowing nothing of the steps, start none; the
                // running ones carry on. Look again after a while.
                tasks.wait(None).await;
                continue;
            }
        };
        if let Some(outcome) = run_ended(ctx, &stored, &tasks, &stop, notifier).await {
            return outcome;
        }
        if !ctx.is_failed() && stop.level() == StopLevel::Run {
            tasks.start_ready(plan, steps, &stored);
        }
        tasks.wait(Some(&mut stop)).await;
    }
}

/// Follows the run's state and settings as other processes set them: a pause, a cancel,
/// `godwit set`. Breaks when another process restarted the run.
async fn follow_run_state(ctx: &RunCtx) -> ControlFlow<()> {
    let control = match ctx.state().run_control(ctx.name()).await {
        Err(e) if godwit_state::is_restarted(&e) => {
            ctx.mark_restarted();
            return ControlFlow::Break(());
        }
        Err(e) => {
            tracing::debug!(error = %e, "could not read the run's state");
            return ControlFlow::Continue(());
        }
        Ok(control) => control,
    };
    match control.as_ref().map(|c| c.state) {
        Some(RunState::Paused) => ctx.set_paused(true),
        Some(RunState::Cancelled) => ctx.mark_cancelled(),
        _ => ctx.set_paused(false),
    }
    if let Some(control) = control {
        ctx.pace().apply(control.settings);
    }
    ControlFlow::Continue(())
}

/// How the run ends in this process, once no step runs here any more: failed (here or
/// elsewhere), cancelled, done, or stopped. `None` while it goes on.
async fn run_ended(
    ctx: &RunCtx,
    stored: &HashMap<String, String>,
    tasks: &StepTasks,
    stop: &StopSignal,
    notifier: Option<&Notifier>,
) -> Option<Result<RunOutcome, Error>> {
    let idle = tasks.running.is_empty();
    if let Some(failure) = tasks.failure.clone().or_else(|| stored_failure(stored)) {
        ctx.mark_failed();
        if idle {
            let recorded = ctx
                .state()
                .set_run_state(ctx.name(), RunState::Failed, Some(failure.message()))
                .await;
            if recorded.as_ref().is_err_and(godwit_state::is_restarted) {
                ctx.mark_restarted();
                return Some(Err(Error::restarted(ctx.name())));
            }
            if matches!(recorded, Ok(true)) {
                announce(ctx, notifier, "failed", Some(failure.message())).await;
            }
            return Some(Ok(RunOutcome::Failed(failure)));
        }
    }
    if ctx.is_cancelled() && idle {
        return Some(Ok(RunOutcome::Cancelled));
    }
    let all_done = !stored.is_empty() && stored.values().all(|s| s == "done");
    if all_done && idle {
        let recorded = ctx
            .state()
            .set_run_state(ctx.name(), RunState::Done, None)
            .await
            .map_err(|e| Error::database("cannot record the run as done", &e));
        if matches!(recorded, Ok(true)) {
            announce(ctx, notifier, "done", None).await;
        }
        return Some(recorded.map(|_| RunOutcome::Done));
    }
    if stop.level() >= StopLevel::Drain && idle {
        return Some(Ok(RunOutcome::Stopped));
    }
    None
}

/// Tells the plan's `notify` addresses that the run ended (this process recorded it, so no
/// other will), with its final status.
async fn announce(ctx: &RunCtx, notifier: Option<&Notifier>, state: &str, error: Option<&str>) {
    let Some(notifier) = notifier else {
        return;
    };
    let status = ctx.state().status(ctx.name()).await.ok().flatten();
    notifier.ended(status.as_ref(), state, error);
}

/// The steps running in this process.
struct StepTasks {
    running: JoinSet<(String, StepResult)>,
    /// The steps started here that are running, or failed (and so are not started again).
    here: HashSet<String>,
    /// The first step that failed here.
    failure: Option<Failure>,
}

impl StepTasks {
    /// Starts each step of `plan` whose `after` steps are all done, unless it is done itself
    /// or was started here.
    fn start_ready(
        &mut self,
        plan: &Plan,
        steps: &[Arc<StepCtx>],
        stored: &HashMap<String, String>,
    ) {
        let done = |name: &str| stored.get(name).map(String::as_str) == Some("done");
        for (step, step_ctx) in plan.steps.iter().zip(steps) {
            let ready = !done(&step.name)
                && !self.here.contains(&step.name)
                && step.after.iter().all(|a| done(a));
            if ready {
                self.here.insert(step.name.clone());
                let step_ctx = step_ctx.clone();
                let name = step.name.clone();
                self.running
                    .spawn(async move { (name, step::drive(step_ctx).await) });
            }
        }
    }

    /// Waits for a step to end here, for [`POLL`], or (given `stop`) for a request to stop.
    async fn wait(&mut self, stop: Option<&mut StopSignal>) {
        let running = !self.running.is_empty();
        let joined = match stop {
            Some(stop) => tokio::select! {
                Some(joined) = self.running.join_next(), if running => Some(joined),
                _ = tokio::time::sleep(POLL) => None,
                _ = stop.reached(StopLevel::Drain), if stop.level() < StopLevel::Drain => None,
            },
            None => tokio::select! {
                Some(joined) = self.running.join_next(), if running => Some(joined),
                _ = tokio::time::sleep(POLL) => None,
            },
        };
        if let Some(joined) = joined {
            self.ended(joined);
        }
    }

    /// Notes a step task that ended: done or stopped here, or the first failure.
    fn ended(&mut self, joined: Result<(String, StepResult), tokio::task::JoinError>) {
        match joined {
            Ok((name, StepResult::Done | StepResult::Stopped)) => {
                self.here.remove(&name);
            }
            Ok((_, StepResult::Failed(failure))) => {
                self.failure.get_or_insert(failure);
            }
            Err(e) => {
                let failure = Failure::new(
                    FailureKind::Internal,
                    format!("a step task ended unexpectedly: {e}"),
                );
                self.failure.get_or_insert(failure);
            }
        }
    }
}

/// A step that another process recorded as failed.
fn stored_failure(stored: &HashMap<String, String>) -> Option<Failure> {
    let (name, _) = stored.iter().find(|(_, state)| *state == "failed")?;
    Some(Failure::new(
        FailureKind::Elsewhere,
        format!("step {name:?} failed in another process; see `godwit status`"),
    ))
}
