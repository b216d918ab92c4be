//! How fast a run goes, decided before each batch starts: how many keys it takes (`size.rs`:
//! sized by time), when it may start (`rate.rs`: `max_rows_per_second`), whether anything
//! starts at all (`health.rs`: throttling on a step's `throttle_query` and on the run's
//! replicas' lag), how many run at once (`slots.rs`), and how far all of it is lowered while
//! the application's latency suffers (`guard.rs`: `max_latency_increase`). What a user changes
//! on a running run with `godwit set` arrives in [`RunPace`].

mod guard;
mod health;
mod rate;
mod size;
mod slots;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use godwit_driver::DbUrl;
use godwit_plan::{Plan, Settings, StepKind};
use godwit_state::{RunSettings, StateStore};
use tokio::task::JoinHandle;

pub(crate) use crate::pace::guard::between;
use crate::pace::guard::{Guarding, Lowered, Probe};
use crate::pace::health::{watch, Health, Signal};
use crate::pace::rate::Rate;
use crate::pace::size::Sizer;
pub(crate) use crate::pace::slots::Slots;

/// How often a step's pace (its batch size, why it is throttled) is written for `status` at
/// most, while it changes.
const RECORD_EVERY: Duration = Duration::from_secs(1);

/// The most of its rate budget one batch takes: with `max_rows_per_second`, batches hold at
/// most a quarter of a second's rows, so the rate holds over short spans too.
const RATE_SLICES_PER_SECOND: f64 = 4.0;

/// What a run's steps share of their pace in this process: what `godwit set` changed, how
/// many workers share the run's rate, and the run's replicas' lag.
pub(crate) struct RunPace {
    /// A batch size set with `godwit set`, pinning every step's; 0 when none.
    batch_size: AtomicU64,
    /// A rate set with `godwit set`, over the whole run, instead of the steps' own.
    max_rows_per_second: Mutex<Option<f64>>,
    /// The run-wide rate's bookings.
    rate: Rate,
    /// Live workers of the run, this one included: each takes its share of a rate.
    workers: AtomicU64,
    slots: Slots,
    /// The settings applied last, so that only a change acts.
    applied: Mutex<RunSettings>,
    /// Why every step of the run is throttled: its replicas lag, or cannot tell, or the
    /// latency guard paused it.
    health: Arc<Health>,
    /// The run's concurrency in this process as the plan or the command line says.
    concurrency: usize,
    /// The slots there are now, once the latency guard has lowered them.
    slots_now: AtomicUsize,
    /// How far the latency guard lowers concurrency and batch sizes now.
    lowered: Arc<Lowered>,
}

impl RunPace {
    pub(crate) fn new(slots: Slots, concurrency: usize) -> RunPace {
        RunPace {
            concurrency,
            slots_now: AtomicUsize::new(concurrency),
            lowered: Arc::new(Lowered::default()),
            batch_size: AtomicU64::new(0),
            max_rows_per_second: Mutex::new(None),
            rate: Rate::default(),
            workers: AtomicU64::new(1),
            slots,
            applied: Mutex::new(RunSettings::default()),
            health: Arc::new(Health::default()),
        }
    }

    /// Starts watching the replicas of `plan` (its `replicas`, or else those its database
    /// lists as a primary), when it sets a lag limit, until the guard is dropped. Until each
    /// has answered once, every step is throttled.
    pub(crate) fn watch_replicas(&self, plan: &Plan) -> Watching {
        let Some(limit) = plan.replica_lag_limit() else {
            return Watching(Vec::new());
        };
        let signals: Vec<Signal> = if plan.replicas.is_empty() {
            let url = DbUrl::new(plan.database.clone());
            vec![Signal::Primary { url, limit }]
        } else {
            plan.replicas
                .iter()
                .map(|url| Signal::Replica {
                    url: DbUrl::new(url.clone()),
                    limit,
                })
                .collect()
        };
        Watching(
            signals
                .into_iter()
                .map(|signal| watch(signal, self.health.clone()))
                .collect(),
        )
    }

    /// Starts the latency guard of `plan`, when it sets `max_latency_increase`, until the
    /// returned guard is dropped: learns the probe's idle p99 first (or takes the one the run
    /// kept, learned by the process that started it), so this waits a few seconds. `None`
    /// when there is nothing to guard.
    pub(crate) async fn guard(
        &self,
        plan: &Plan,
        state: &StateStore,
    ) -> Result<Option<Guarding>, String> {
        let Some(factor) = plan.max_latency_increase else {
            return Ok(None);
        };
        let url = DbUrl::new(plan.database.clone());
        let probes = match &plan.probe_query {
            Some(sql) => vec![Probe::Query(sql.clone())],
            None => {
                let mut conn = godwit_db::connect(&url, &Default::default())
                    .await
                    .map_err(|e| format!("the latency guard cannot connect: {e}"))?;
                guard::row_probes(conn.as_mut(), &changed_tables(plan)).await?
            }
        };
        if probes.is_empty() {
            tracing::info!("the latency guard has no row to probe: the tables are empty");
            return Ok(None);
        }
        let name = Probe::describe(&probes);
        let kept = state
            .probe_baseline(&plan.name)
            .await
            .map_err(|e| format!("cannot read the latency guard's baseline: {e}"))?;
        let stored = kept.as_deref().and_then(|k| guard::read_baseline(k, &name));
        let settings = *self.applied.lock().unwrap_or_else(|e| e.into_inner());
        // Notes the run's concurrency, which the guard starts below.
        self.steer(&settings);
        let (guarding, learned) = guard::start(
            url,
            probes,
            stored,
            factor,
            self.lowered.clone(),
            self.health.clone(),
        );
        let mut idle = learned
            .await
            .map_err(|_| "the latency guard stopped before it began".to_string())??;
        if stored.is_none() {
            let text = guard::write_baseline(&name, idle);
            let now = state
                .keep_probe_baseline(&plan.name, &text, kept.as_deref())
                .await
                .map_err(|e| format!("cannot keep the latency guard's baseline: {e}"))?;
            // Another process kept its own first: every worker holds the run to one.
            if let Some(theirs) = now.as_deref().and_then(|k| guard::read_baseline(k, &name)) {
                idle = theirs;
            }
        }
        let limit = idle.mul_f64(factor);
        tracing::info!(
            probe = %name,
            idle_p99_ms = idle.as_secs_f64() * 1e3,
            limit_ms = limit.as_secs_f64() * 1e3,
            "the latency guard is on"
        );
        guarding.set_limit(limit);
        // The guard's first level, before any batch starts.
        self.steer(&settings);
        Ok(Some(guarding))
    }

    pub(crate) fn slots(&self) -> &Slots {
        &self.slots
    }

    /// Notes how many workers of the run are alive.
    pub(crate) fn set_workers(&self, n: u64) {
        self.workers.store(n.max(1), Ordering::Relaxed);
    }

    /// Applies what `godwit set` stored (a setting not given leaves the plan's own) and what
    /// the latency guard lowered; called every time the run's record is read.
    pub(crate) fn apply(&self, settings: RunSettings) {
        self.steer(&settings);
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        if *applied == settings {
            return;
        }
        self.batch_size
            .store(settings.batch_size.unwrap_or(0), Ordering::Relaxed);
        if let Ok(mut rate) = self.max_rows_per_second.lock() {
            *rate = settings.max_rows_per_second;
        }
        tracing::info!(?settings, "settings changed with `godwit set`");
        *applied = settings;
    }

    /// Sizes the batch slots as `settings` and the latency guard say.
    fn steer(&self, settings: &RunSettings) {
        let base = settings.concurrency.map_or(self.concurrency, |n| {
            usize::try_from(n).unwrap_or(usize::MAX)
        });
        let n = self.lowered.concurrency(base);
        if self.slots_now.swap(n, Ordering::Relaxed) != n {
            self.slots.resize(n);
        }
    }

    fn pinned_batch_size(&self) -> Option<u64> {
        match self.batch_size.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    fn run_rate(&self) -> Option<f64> {
        self.max_rows_per_second.lock().ok().and_then(|r| *r)
    }

    /// `per_second` shared among the run's live workers.
    fn share(&self, per_second: f64) -> f64 {
        per_second / self.workers.load(Ordering::Relaxed).max(1) as f64
    }
}

/// The tables the steps of `plan` change in place, with their keys, once each: what the
/// latency guard's default probe reads.
fn changed_tables(plan: &Plan) -> Vec<(String, String)> {
    let mut tables: Vec<(String, String)> = Vec::new();
    for step in &plan.steps {
        if let StepKind::Chunked { table, key, .. } | StepKind::Transform { table, key, .. } =
            &step.kind
        {
            let pair = (table.clone(), key.clone());
            if !tables.contains(&pair) {
                tables.push(pair);
            }
        }
    }
    tables
}

/// One step's pace in this process.
pub(crate) struct StepPace {
    sizer: Sizer,
    rate: Rate,
    max_rows_per_second: Option<f64>,
    throttle_query: Option<String>,
    health: Arc<Health>,
    recorded: Mutex<Recorded>,
}

/// What was last written of a step's pace, and when.
#[derive(Default)]
struct Recorded {
    size: u64,
    reason: Option<String>,
    at: Option<Instant>,
}

/// Stops health watchers when dropped.
pub(crate) struct Watching(Vec<JoinHandle<()>>);

impl Drop for Watching {
    fn drop(&mut self) {
        for task in self.0.drain(..) {
            task.abort();
        }
    }
}

impl StepPace {
    pub(crate) fn new(settings: &Settings) -> StepPace {
        StepPace {
            sizer: Sizer::new(settings),
            rate: Rate::default(),
            max_rows_per_second: settings.max_rows_per_second,
            throttle_query: settings.throttle_query.clone(),
            health: Arc::new(Health::default()),
            recorded: Mutex::new(Recorded::default()),
        }
    }

    /// Starts watching what throttles the step alone (its `throttle_query`, on `url`), until
    /// the guard is dropped.
    pub(crate) fn watch(&self, url: &DbUrl) -> Watching {
        let signal = self
            .throttle_query
            .clone()
            .map(|query| Signal::ThrottleQuery {
                url: url.clone(),
                query,
            });
        Watching(
            signal
                .map(|s| watch(s, self.health.clone()))
                .into_iter()
                .collect(),
        )
    }

    /// Why no batch of the step may start now, every signal that says so (the step's own,
    /// then the run's) joined by `; `; `None` when they may.
    pub(crate) fn throttled(&self, run: &RunPace) -> Option<String> {
        let mut reasons = self.health.reasons();
        reasons.extend(run.health.reasons());
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    /// The rate the step's batches start at, per worker, and whether it is the run's.
    fn rate<'a>(&'a self, run: &'a RunPace) -> Option<(f64, &'a Rate)> {
        match (run.run_rate(), self.max_rows_per_second) {
            (Some(r), _) => Some((run.share(r), &run.rate)),
            (None, Some(r)) => Some((run.share(r), &self.rate)),
            (None, None) => None,
        }
    }

    /// How many keys the step's next batch takes.
    pub(crate) fn batch_size(&self, run: &RunPace) -> u64 {
        let size = run.pinned_batch_size().unwrap_or_else(|| {
            run.lowered
                .batch_size(self.sizer.size(), self.sizer.smallest())
        });
        match self.rate(run) {
            Some((per_second, _)) => {
                let slice = (per_second / RATE_SLICES_PER_SECOND).floor().max(1.0) as u64;
                size.min(slice)
            }
            None => size,
        }
    }

    /// Learns from a committed batch of `keys` keys whose transaction took `took`.
    pub(crate) fn observe(&self, keys: u64, took: Duration) {
        self.sizer.observe(keys, took);
    }

    /// How long a batch of `rows` rows waits for its turn under the rate; zero without one.
    pub(crate) fn book(&self, run: &RunPace, rows: u64) -> Duration {
        match self.rate(run) {
            Some((per_second, rate)) => rate.book(Instant::now(), rows, per_second),
            None => Duration::ZERO,
        }
    }

    /// Forgets what was last written, so that the next [`StepPace::to_record`] writes again
    /// (the write failed).
    pub(crate) fn forget_recorded(&self) {
        if let Ok(mut recorded) = self.recorded.lock() {
            *recorded = Recorded::default();
        }
    }

    /// What to write of the step's pace for `status`, when it changed: its batch size and why
    /// it is throttled. A new reason is written at once, a new size at most every
    /// [`RECORD_EVERY`].
    pub(crate) fn to_record(&self, run: &RunPace) -> Option<(u64, Option<String>)> {
        let size = self.batch_size(run);
        let reason = self.throttled(run);
        let mut recorded = self.recorded.lock().ok()?;
        let due = recorded.at.is_none_or(|t| t.elapsed() >= RECORD_EVERY);
        let changed = reason != recorded.reason || (size != recorded.size && due);
        if !changed {
            return None;
        }
        *recorded = Recorded {
            size,
            reason: reason.clone(),
            at: Some(Instant::now()),
        };
        Some((size, reason))
    }
}
