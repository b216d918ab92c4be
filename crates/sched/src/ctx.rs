//! What the steps of a run share in this process ([`RunCtx`]: the state store, the
//! connections, the stop, the batches in flight) and what one step's batches share
//! ([`StepCtx`]: the step and its prepared work).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use godwit_batch::Work;
use godwit_db::ConnPool;
use godwit_driver::Dialect;
use godwit_plan::{Settings, Step};
use godwit_state::{ClaimedBatch, StateStore};
use tokio::sync::Semaphore;

use crate::pace::{RunPace, Slots, StepPace};
use crate::stop::{stop_pair, StopHandle, StopLevel, StopSignal};
use crate::EventSink;

/// How often the scheduler looks at the stored run (other processes' progress, a failure, a
/// pause or a cancel asked from elsewhere).
pub(crate) const POLL: Duration = Duration::from_millis(250);

/// Everything the steps of one run share in this process.
pub(crate) struct RunCtx {
    name: String,
    state: StateStore,
    pool: ConnPool,
    exactly_once: bool,
    worker: String,
    /// The slots batches run in, the rate, and what `godwit set` changed.
    pace: RunPace,
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

/// What a run starts from in this process, for [`RunCtx::new`].
pub(crate) struct RunSetup {
    pub(crate) name: String,
    pub(crate) state: StateStore,
    pub(crate) pool: ConnPool,
    pub(crate) exactly_once: bool,
    pub(crate) permits: Arc<Semaphore>,
    /// How many slots `permits` holds.
    pub(crate) concurrency: usize,
    pub(crate) claim_ahead: usize,
    /// The caller's stop, passed on to the run's own.
    pub(crate) stop: StopSignal,
    pub(crate) events: EventSink,
}

/// Counts a running batch until dropped.
pub(crate) struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl RunCtx {
    pub(crate) fn new(setup: RunSetup) -> RunCtx {
        let (stop_handle, own_stop) = stop_pair();
        forward_stop(setup.stop, stop_handle.clone());
        RunCtx {
            name: setup.name,
            state: setup.state,
            pool: setup.pool,
            exactly_once: setup.exactly_once,
            worker: worker_name(),
            pace: RunPace::new(
                Slots::new(setup.permits, setup.concurrency),
                setup.concurrency,
            ),
            claim_ahead: setup.claim_ahead,
            stop: own_stop,
            stop_handle,
            events: setup.events,
            failed: AtomicBool::new(false),
            restarted: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            cancelled: AtomicBool::new(false),
            in_flight: Mutex::new(HashMap::new()),
            running: Arc::new(AtomicUsize::new(0)),
        }
    }
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
        self.pace.slots().permits()
    }
    pub(crate) fn pace(&self) -> &RunPace {
        &self.pace
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
    /// Notes whether the run is paused from elsewhere.
    pub(crate) fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }
    /// Notes a cancel from elsewhere and drains the run: the batches in flight finish.
    pub(crate) fn mark_cancelled(&self) {
        if !self.cancelled.swap(true, Ordering::SeqCst) {
            tracing::warn!(run = %self.name, "the run was cancelled; finishing the batches in flight");
        }
        self.stop_handle.request(StopLevel::Drain);
    }
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
    /// How many batches run now.
    pub(crate) fn n_running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }
    /// The batches claimed here, with their leases: running, or claimed ahead.
    pub(crate) fn tracked(&self) -> Vec<(ClaimedBatch, Duration)> {
        self.in_flight
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
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

pub(crate) fn host_name() -> String {
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

/// What the batches of one step share in this process.
pub(crate) struct StepCtx {
    run: Arc<RunCtx>,
    step: Step,
    work: Work,
    pace: StepPace,
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
        let pace = StepPace::new(&step.settings);
        Ok(StepCtx {
            run,
            step,
            work,
            pace,
        })
    }

    pub(crate) fn run(&self) -> &RunCtx {
        &self.run
    }

    pub(crate) fn work(&self) -> &Work {
        &self.work
    }

    pub(crate) fn pace(&self) -> &StepPace {
        &self.pace
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.step.settings
    }

    pub(crate) fn name(&self) -> &str {
        &self.step.name
    }

    pub(crate) fn step(&self) -> &Step {
        &self.step
    }

    /// Names the batch in messages: step, key range and attempt.
    pub(crate) fn describe(&self, batch: &ClaimedBatch) -> String {
        describe_batch(
            &self.step,
            batch.start_key().zip(batch.end_key()),
            batch.attempts(),
        )
    }
}

/// Names a batch of `step` in messages: the step, the key range (none for a one-off step) and
/// the attempt, after `failed_attempts` attempts failed.
pub(crate) fn describe_batch(
    step: &Step,
    range: Option<(&str, &str)>,
    failed_attempts: i64,
) -> String {
    let range = match range {
        Some((a, b)) => format!(", keys {a}..={b}"),
        None => String::new(),
    };
    format!(
        "step {:?}{range}, attempt {}/{}",
        step.name,
        failed_attempts + 1,
        step.settings.max_attempts
    )
}
