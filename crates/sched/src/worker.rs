//! `godwit worker`: join every unfinished run stored in a state database, with no plan file.
//!
//! A worker reads the runs that `godwit submit` (or `godwit run`) stored, parses each plan from
//! its stored text (expanding `${VAR}` from the worker's own environment) and works on it
//! exactly as [`run`](crate::run) does, sharing its `--concurrency` slots between the runs.
//! It looks for new runs every second until it is stopped, or until nothing is left when asked
//! to exit when idle.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use godwit_driver::DbUrl;
use godwit_state::RunState;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::retry::backoff;
use crate::stop::{StopLevel, StopSignal};
use crate::{run, Error, Event, EventSink, RunOptions, RunOutcome};

/// How often a worker looks for new or resumed runs.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// How long a worker leaves a run alone after it could not start on it: a plan that needs an
/// environment variable this worker lacks, or that its database refuses …
const REFUSED_FOR: Duration = Duration::from_secs(30);
/// … or a database it cannot reach now (a restart, most likely).
const UNREACHABLE_FOR: Duration = Duration::from_secs(3);

/// How a worker takes part.
#[derive(Debug, Clone, Default)]
pub struct WorkerOptions {
    /// Batches in flight in this worker over all its runs [default: 4].
    pub concurrency: Option<usize>,
    /// Exit when no run is left to work on, instead of waiting for new ones.
    pub exit_when_idle: bool,
}

/// How a worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerOutcome {
    /// Nothing was left to work on (only with `exit_when_idle`).
    Idle,
    /// Stopped on request; the batches in flight finished or were rolled back and released.
    Stopped,
}

/// What a worker reports about the runs it joins.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerEvent {
    /// It started working on a run.
    Joined {
        /// The plan's name.
        plan: String,
    },
    /// Its work on a run ended.
    Left {
        /// The plan's name.
        plan: String,
        /// `done`, `failed`, `cancelled`, `stopped`, or `restarted` (another process restarted
        /// the run; the worker joins its new generation at its next look).
        outcome: &'static str,
        /// Why, when the run failed.
        error: Option<String>,
    },
    /// What happened in a run it works on, as `godwit run` reports it (batches, steps,
    /// throttling), sent before the run's [`WorkerEvent::Left`].
    Progress {
        /// The plan's name.
        plan: String,
        /// What happened.
        event: Event,
    },
    /// It could not work on a run, and leaves it alone for a while.
    Refused {
        /// The plan's name.
        plan: String,
        /// Why.
        error: String,
    },
}

/// Works on every unfinished run in the state database at `state_url` until stopped (or idle,
/// with [`WorkerOptions::exit_when_idle`]). An empty state database is fine: the worker waits.
///
/// # Errors
/// When the state database cannot be reached at start.
pub async fn work(
    state_url: &DbUrl,
    options: WorkerOptions,
    stop: StopSignal,
    events: Option<mpsc::UnboundedSender<WorkerEvent>>,
) -> Result<WorkerOutcome, Error> {
    let state = run::open_state(state_url).await?;
    let send = |event: WorkerEvent| {
        if let Some(tx) = &events {
            let _ = tx.send(event);
        }
    };
    let concurrency = options.concurrency.unwrap_or(4).max(1);
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut active: JoinSet<(String, Result<RunOutcome, Error>)> = JoinSet::new();
    let mut here: HashSet<String> = HashSet::new();
    // Runs left alone until the given time, and whether for a lasting reason (the plan, this
    // worker's environment) rather than an outage.
    let mut refused: HashMap<String, (Instant, bool)> = HashMap::new();
    let mut stop_wait = stop.clone();
    let mut failures = 0;
    loop {
        while let Some(joined) = active.try_join_next() {
            left(joined, &mut here, &mut refused, &send);
        }
        if stop.level() >= StopLevel::Drain {
            // Every run got the same stop; wait for them to give their batches back.
            while let Some(joined) = active.join_next().await {
                left(joined, &mut here, &mut refused, &send);
            }
            return Ok(WorkerOutcome::Stopped);
        }
        let runs = match state.unfinished_runs().await {
            Ok(runs) => {
                failures = 0;
                runs
            }
            Err(e) => {
                // A restart of the state database: keep the runs in hand going and look again.
                tracing::warn!(error = %e, "cannot read the stored runs; trying again");
                failures += 1;
                tokio::select! {
                    _ = tokio::time::sleep(backoff(failures.min(5))) => {}
                    _ = stop_wait.reached(StopLevel::Drain) => {}
                }
                continue;
            }
        };
        refused.retain(|_, (until, _)| *until > Instant::now());
        let mut waiting = false;
        for stored in runs {
            // Paused runs are joined on resume; the ones in hand notice pauses themselves.
            if stored.state == RunState::Paused || here.contains(&stored.name) {
                continue;
            }
            match refused.get(&stored.name) {
                // Nothing this worker can do about it: an idle worker may leave.
                Some((_, true)) => continue,
                Some((_, false)) => {
                    waiting = true;
                    continue;
                }
                None => waiting = true,
            }
            let plan = match stored_plan(&stored.name, &stored.plan_text, state_url) {
                Ok(plan) => plan,
                Err(error) => {
                    refuse(&mut refused, &send, stored.name, error, true);
                    continue;
                }
            };
            here.insert(stored.name.clone());
            send(WorkerEvent::Joined {
                plan: stored.name.clone(),
            });
            let options = RunOptions {
                concurrency: Some(concurrency),
                requeue_failed: false,
                permits: Some(permits.clone()),
                ..RunOptions::default()
            };
            let stop = stop.clone();
            let sink = progress_sink(&events, &stored.name);
            active.spawn(async move {
                let outcome = run::run(&plan, options, stop, sink).await;
                (plan.name, outcome)
            });
        }
        if options.exit_when_idle && active.is_empty() && !waiting {
            return Ok(WorkerOutcome::Idle);
        }
        tokio::select! {
            Some(joined) = active.join_next(), if !active.is_empty() => {
                left(joined, &mut here, &mut refused, &send);
            }
            _ = tokio::time::sleep(LOOK_EVERY) => {}
            _ = stop_wait.reached(StopLevel::Drain) => {}
        }
    }
}

/// Where the events of the run `plan` go: to the worker's events, each as a
/// [`WorkerEvent::Progress`] naming the run.
fn progress_sink(events: &Option<mpsc::UnboundedSender<WorkerEvent>>, plan: &str) -> EventSink {
    let Some(tx) = events.clone() else {
        return EventSink::none();
    };
    let plan = plan.to_string();
    EventSink::from_fn(move |event| {
        let _ = tx.send(WorkerEvent::Progress {
            plan: plan.clone(),
            event,
        });
    })
}

/// The plan of the stored run `name`, parsed from its stored text with this worker's
/// environment. `Err` says why this worker cannot work on it.
fn stored_plan(
    name: &str,
    plan_text: &str,
    state_url: &DbUrl,
) -> Result<godwit_plan::Plan, String> {
    let path = PathBuf::from(format!("{name} (stored plan)"));
    let plan = godwit_plan::parse(plan_text, &path, &|var| std::env::var(var).ok())
        .map_err(|errors| errors.to_string())?;
    // The plan names its state database itself (through `${VAR}`s of this worker's
    // environment); working on it elsewhere would start a second run there.
    let plan_state = plan.state_url();
    if plan_state != state_url.expose() {
        return Err(format!(
            "its state database is {} in this worker's environment, not {state_url}; \
             give the worker the plan's variables, or --database the same URL",
            DbUrl::new(plan_state)
        ));
    }
    Ok(plan)
}

/// Reports a run this worker stopped working on.
fn left(
    joined: Result<(String, Result<RunOutcome, Error>), tokio::task::JoinError>,
    here: &mut HashSet<String>,
    refused: &mut HashMap<String, (Instant, bool)>,
    send: &impl Fn(WorkerEvent),
) {
    let Ok((plan, outcome)) = joined else {
        tracing::error!("a run's task ended unexpectedly");
        return;
    };
    here.remove(&plan);
    let (outcome, error) = match outcome {
        Ok(RunOutcome::Done | RunOutcome::AlreadyDone) => ("done", None),
        Ok(RunOutcome::Failed(failure)) => ("failed", Some(failure.to_string())),
        Ok(RunOutcome::Cancelled) => ("cancelled", None),
        Ok(RunOutcome::Stopped) => ("stopped", None),
        Err(e) if e.kind() == crate::ErrorKind::Restarted => {
            // Not refused: the next look joins the new generation, with its plan text.
            tracing::warn!(plan = %plan, error = %e, "leaving a run that was restarted");
            ("restarted", None)
        }
        Err(e) => {
            let lasting = e.kind() == crate::ErrorKind::Invalid;
            refuse(refused, send, plan, e.to_string(), lasting);
            return;
        }
    };
    send(WorkerEvent::Left {
        plan,
        outcome,
        error,
    });
}

/// Leaves a run alone for a while and says why: for [`REFUSED_FOR`] when the reason lasts
/// (`lasting`: the plan, this worker's environment), for [`UNREACHABLE_FOR`] after an outage.
fn refuse(
    refused: &mut HashMap<String, (Instant, bool)>,
    send: &impl Fn(WorkerEvent),
    plan: String,
    error: String,
    lasting: bool,
) {
    let wait = if lasting {
        REFUSED_FOR
    } else {
        UNREACHABLE_FOR
    };
    refused.insert(plan.clone(), (Instant::now() + wait, lasting));
    send(WorkerEvent::Refused { plan, error });
}
