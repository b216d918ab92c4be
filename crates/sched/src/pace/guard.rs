//! The latency guard (`max_latency_increase`, `probe_query`): godwit times a probe of the
//! plan's database, learns how fast it answers before the run, and while it runs lowers the
//! run's concurrency, then its batch sizes, then pauses, while the probe's recent p99 is over
//! the factor; it climbs back one step at a time when the probe is fast again.
//!
//! The default probe reads one row of a table a step changes, by its key, the way an
//! application about to write that row would (`FOR UPDATE`, in its own short transaction): a
//! plain read on PostgreSQL or MySQL never waits for a row lock, so it would miss what hurts an
//! application most beside a backfill. The probe runs every [`EVERY`] on a thread and a
//! connection of its own, so that the run's own work in this process does not delay it.
//!
//! The controller ([`Control`]) is a pure state machine over probe timings: down fast (the
//! application suffers now), up slowly, and more slowly each time a climb had to be undone,
//! so that on a steady load the time spent at a level that is too fast stays well under 1%.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::TimeDelta;
use godwit_driver::{quote_ident, Conn, DbUrl, Value};
use rand::Rng;
use tokio::sync::oneshot;

use crate::pace::health::Health;

/// How often the probe runs during a run.
const EVERY: Duration = Duration::from_millis(50);

/// How many timings make the idle baseline, and how far apart they are taken.
const BASELINE_SAMPLES: usize = 100;
const BASELINE_EVERY: Duration = Duration::from_millis(25);

/// Probes run before the baseline and not counted: the first ones pay for connecting and
/// planning.
const WARM_UP: usize = 5;

/// The longest a probe may take; one that takes longer counts as this slow and its
/// connection is replaced.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How many slow timings at one level, at least, show it is too fast: few, since a probe
/// that waits for a batch's rows takes as long as the batch, so timings come slowly exactly
/// when they are bad.
const DOWN_SLOW: usize = 3;

/// Where the guard starts: one batch at a time, of 1/2^this the size sizing asks for. It
/// climbs from there as the probe allows; starting at full speed would cost the application
/// the seconds the guard takes to come down.
const START_SIZE_SHIFT: u32 = 3;

/// How many good timings at one level, at first, before climbing to the next (10 s).
const UP_SAMPLES: usize = 200;

/// The most good timings ever asked for before a climb (5 min): each climb that has to be
/// undone doubles the wait, up to this.
const MAX_UP_SAMPLES: usize = 6_000;

/// The most a batch is shrunk: 1/2^7 of the size the sizer asks for.
const MAX_SIZE_SHIFT: u32 = 7;

/// The most levels one look goes down: far over the limit goes down faster.
const MAX_DOWN_STEPS: u32 = 3;

/// What the guard tells the scheduler, shared with the probe's thread.
#[derive(Default)]
pub(crate) struct Lowered {
    /// Concurrency is the run's divided by 2^this (at least one).
    conc_shift: AtomicU32,
    /// Batch sizes are the sizer's divided by 2^this (at least the step's smallest).
    size_shift: AtomicU32,
    /// The run's concurrency before the guard lowers it, as the plan or `godwit set` says.
    base_concurrency: AtomicUsize,
    /// The limit on a probe's p99, in nanoseconds: the factor times the idle p99.
    limit_nanos: AtomicU64,
    stop: AtomicBool,
}

impl Lowered {
    /// The concurrency to run at, from the run's own.
    pub(crate) fn concurrency(&self, base: usize) -> usize {
        self.base_concurrency.store(base, Ordering::Relaxed);
        let shift = self.conc_shift.load(Ordering::Relaxed).min(63);
        (base >> shift).max(1)
    }

    /// The batch size to take, from what the sizer asks for.
    pub(crate) fn batch_size(&self, size: u64, min: u64) -> u64 {
        let shift = self.size_shift.load(Ordering::Relaxed).min(63);
        (size >> shift).max(min).min(size)
    }

    /// Lowers the pace to `level`.
    fn show(&self, level: Level) {
        self.conc_shift.store(level.conc_shift, Ordering::Relaxed);
        self.size_shift.store(level.size_shift, Ordering::Relaxed);
    }

    fn limit(&self) -> Duration {
        Duration::from_nanos(self.limit_nanos.load(Ordering::Relaxed))
    }
}

/// What is probed.
#[derive(Debug, Clone)]
pub(crate) enum Probe {
    /// The user's `probe_query`, run as it is.
    Query(String),
    /// One row of a table by its key, at a random point between the keys `low` and `high`
    /// that the table held when the run started.
    Row {
        table: String,
        key: String,
        low: Value,
        high: Value,
    },
}

impl Probe {
    /// The probes' description, which names the baseline they share.
    pub(crate) fn describe(probes: &[Probe]) -> String {
        let parts: Vec<String> = probes
            .iter()
            .map(|p| match p {
                Probe::Query(sql) => format!("probe_query {sql}"),
                Probe::Row { table, key, .. } => format!("a row of {table} by {key}"),
            })
            .collect();
        parts.join(", ")
    }
}

/// The tables the default probe reads: `(table, key)` of each step that changes rows in
/// place, once each. Finds each one's lowest and highest key on `conn`; an empty table is
/// left out.
pub(crate) async fn row_probes(
    conn: &mut dyn Conn,
    tables: &[(String, String)],
) -> Result<Vec<Probe>, String> {
    let d = conn.dialect();
    let mut probes = Vec::new();
    for (table, key) in tables {
        let (t, k) = (quote_ident(d, table), quote_ident(d, key));
        let end = |order: &str| {
            format!("SELECT {k} FROM {t} WHERE {k} IS NOT NULL ORDER BY {k} {order} LIMIT 1")
        };
        let first = |rows: Vec<godwit_driver::Row>| {
            rows.into_iter()
                .next()
                .and_then(|r| r.into_values().into_iter().next())
        };
        let read = |e: godwit_driver::Error| {
            format!("the latency guard cannot read the keys of {table}: {e}")
        };
        let low = first(conn.query(&end("ASC"), &[]).await.map_err(read)?);
        let high = first(conn.query(&end("DESC"), &[]).await.map_err(read)?);
        let (Some(low), Some(high)) = (low, high) else {
            continue;
        };
        if between(&low, &high, 0.5).is_none() {
            return Err(format!(
                "the latency guard's default probe picks keys between the lowest and the highest, \
                 which it cannot do for the key {key} of {table} ({low:?}); write a `probe_query`"
            ));
        }
        probes.push(Probe::Row {
            table: table.clone(),
            key: key.clone(),
            low,
            high,
        });
    }
    Ok(probes)
}

/// The key `at` (0 to 1) of the way from `low` to `high`, for the key types that have one.
pub(crate) fn between(low: &Value, high: &Value, at: f64) -> Option<Value> {
    let at = at.clamp(0.0, 1.0);
    Some(match (low, high) {
        (Value::Int(a), Value::Int(b)) => {
            let span = (i128::from(*b) - i128::from(*a)) as f64;
            let key = i128::from(*a) + (span * at) as i128;
            Value::Int(i64::try_from(key.min(i128::from(*b))).unwrap_or(*b))
        }
        // Version 4 UUIDs fill the space evenly; where keys are not random, the read lands
        // on the next key, which is still one row by the key index.
        (Value::Uuid(_), Value::Uuid(_)) => Value::Uuid(uuid::Uuid::new_v4()),
        (Value::Date(a), Value::Date(b)) => {
            let days = (*b - *a).num_days() as f64;
            Value::Date(*a + TimeDelta::days((days * at) as i64))
        }
        (Value::Timestamp(a), Value::Timestamp(b)) => Value::Timestamp(*a + scaled(*b - *a, at)),
        (Value::TimestampTz(a), Value::TimestampTz(b)) => {
            Value::TimestampTz(*a + scaled(*b - *a, at))
        }
        _ => return None,
    })
}

fn scaled(span: TimeDelta, at: f64) -> TimeDelta {
    let micros = span.num_microseconds().unwrap_or(i64::MAX) as f64;
    TimeDelta::microseconds((micros * at) as i64)
}

/// Times probes on one connection.
struct Prober {
    url: DbUrl,
    probes: Vec<Probe>,
    conn: Option<Box<dyn Conn>>,
    next: usize,
    /// Why the last probe that failed did.
    failed: Option<String>,
}

impl Prober {
    /// Runs the next probe and returns how long it took (a probe that fails or takes too long
    /// counts as [`PROBE_TIMEOUT`]), or why it could not run at all (no connection).
    async fn time(&mut self) -> Result<Duration, String> {
        if self.conn.is_none() {
            let conn = tokio::time::timeout(
                PROBE_TIMEOUT,
                godwit_db::connect(&self.url, &Default::default()),
            )
            .await;
            match conn {
                Ok(Ok(c)) => self.conn = Some(c),
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err(format!("no connection within {}s", PROBE_TIMEOUT.as_secs())),
            }
        }
        let probe = self.probes[self.next % self.probes.len()].clone();
        self.next += 1;
        let Some(conn) = self.conn.as_mut() else {
            return Err("no connection".to_string());
        };
        let started = Instant::now();
        match tokio::time::timeout(PROBE_TIMEOUT, run_probe(conn.as_mut(), &probe)).await {
            Ok(Ok(())) => Ok(started.elapsed()),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "the latency guard's probe failed");
                self.failed = Some(e.to_string());
                self.conn = None;
                Ok(PROBE_TIMEOUT)
            }
            Err(_) => {
                self.failed = Some(format!("no answer within {}s", PROBE_TIMEOUT.as_secs()));
                self.conn = None;
                Ok(PROBE_TIMEOUT)
            }
        }
    }
}

/// Runs `probe` once on `conn`.
async fn run_probe(conn: &mut dyn Conn, probe: &Probe) -> godwit_driver::Result<()> {
    match probe {
        // Run, not read: what the probe returns does not matter (it may be a `void`).
        Probe::Query(sql) => {
            conn.execute(sql, &[]).await?;
        }
        Probe::Row {
            table,
            key,
            low,
            high,
        } => {
            let d = conn.dialect();
            let lock = conn.forms().lock_clause();
            let (t, k) = (quote_ident(d, table), quote_ident(d, key));
            let sql = format!(
                "SELECT {k} FROM {t} WHERE {k} >= {} ORDER BY {k} LIMIT 1{lock}",
                d.param(1)
            );
            let at = rand::rng().random::<f64>();
            let point = between(low, high, at).unwrap_or_else(|| low.clone());
            if lock.is_empty() {
                // No row locks (SQLite): a plain read, outside any transaction, which there
                // would take the database's write lock.
                conn.execute(&sql, &[point]).await?;
            } else {
                conn.begin(Default::default()).await?;
                let read = conn.execute(&sql, &[point]).await;
                let end = conn.commit().await;
                read?;
                end?;
            }
        }
    }
    Ok(())
}

/// The p99 of `samples` by nearest rank; `None` for none.
fn p99(samples: &[Duration]) -> Option<Duration> {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = (sorted.len() as f64 * 0.99).ceil() as usize;
    sorted.get(rank.saturating_sub(1)).copied()
}

/// A level of the guard: how far concurrency and batch sizes are lowered, or paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Level {
    pub(crate) conc_shift: u32,
    pub(crate) size_shift: u32,
    pub(crate) paused: bool,
}

impl Level {
    /// Where the guard starts, for a run of `concurrency` batches at once: one at a time, of
    /// 1/2^[`START_SIZE_SHIFT`] the size.
    pub(crate) fn start(concurrency: usize) -> Level {
        Level {
            conc_shift: usize::BITS - 1 - concurrency.max(1).leading_zeros(),
            size_shift: START_SIZE_SHIFT,
            paused: false,
        }
    }

    /// One step slower: fewer batches at once while there are several, then smaller ones,
    /// then none.
    fn down(self, concurrency: usize) -> Level {
        let mut next = self;
        if (concurrency >> self.conc_shift.min(63)) > 1 {
            next.conc_shift += 1;
        } else if self.size_shift < MAX_SIZE_SHIFT {
            next.size_shift += 1;
        } else {
            next.paused = true;
        }
        next
    }

    /// One step faster, undoing [`Level::down`] in reverse.
    fn up(self) -> Level {
        let mut next = self;
        if self.paused {
            next.paused = false;
        } else if self.size_shift > 0 {
            next.size_shift -= 1;
        } else if self.conc_shift > 0 {
            next.conc_shift -= 1;
        }
        next
    }

    fn is_full(self) -> bool {
        self == Level::default()
    }
}

/// The controller: probe timings in, levels out.
#[derive(Debug)]
pub(crate) struct Control {
    level: Level,
    /// Timings since the level last changed (at full speed, the last [`UP_SAMPLES`]).
    samples: Vec<Duration>,
    /// Good timings needed at a level before climbing from it.
    up_samples: usize,
    /// Whether the level was last changed by a climb, not yet confirmed by a whole window.
    climbed: bool,
}

impl Default for Control {
    fn default() -> Control {
        Control {
            level: Level::default(),
            samples: Vec::new(),
            up_samples: UP_SAMPLES,
            climbed: false,
        }
    }
}

impl Control {
    /// A controller starting at `level`.
    pub(crate) fn at(level: Level) -> Control {
        Control {
            level,
            ..Control::default()
        }
    }

    /// Takes one probe timing against `limit`, with the run's concurrency `concurrency`;
    /// returns the new level when it changes.
    pub(crate) fn observe(
        &mut self,
        took: Duration,
        limit: Duration,
        concurrency: usize,
    ) -> Option<Level> {
        self.samples.push(took);
        let n = self.samples.len();
        let over = self.samples.iter().filter(|s| **s > limit).count();
        // More than 1% over, with one outlier forgiven: the p99 is over the limit.
        if over >= DOWN_SLOW && over > 1 + n / 100 {
            let p99 = p99(&self.samples).unwrap_or(took);
            let ratio = p99.as_secs_f64() / limit.as_secs_f64().max(1e-9);
            let steps = (ratio.log2().ceil() as u32).clamp(1, MAX_DOWN_STEPS);
            let mut next = self.level;
            for _ in 0..steps {
                next = next.down(concurrency);
            }
            if self.climbed {
                // The climb was too far: wait longer before the next one.
                self.up_samples = (self.up_samples * 2).min(MAX_UP_SAMPLES);
                self.climbed = false;
            }
            return self.change(next);
        }
        if n >= self.up_samples.min(UP_SAMPLES) && self.climbed {
            // A climb that held for a whole window: the load changed, climbing may go fast
            // again.
            self.climbed = false;
            self.up_samples = UP_SAMPLES;
        }
        if self.level.is_full() {
            if n > UP_SAMPLES {
                self.samples.remove(0);
            }
            return None;
        }
        if n >= self.up_samples {
            self.climbed = true;
            return self.change(self.level.up());
        }
        None
    }

    fn change(&mut self, next: Level) -> Option<Level> {
        self.samples.clear();
        if next == self.level {
            return None;
        }
        self.level = next;
        Some(next)
    }

    pub(crate) fn level(&self) -> Level {
        self.level
    }
}

/// A guard running on its own thread until dropped.
pub(crate) struct Guarding {
    lowered: Arc<Lowered>,
}

impl Drop for Guarding {
    fn drop(&mut self) {
        self.lowered.stop.store(true, Ordering::Relaxed);
    }
}

/// What the probe's thread learned before the run: the probes' idle p99.
pub(crate) type Learned = Result<Duration, String>;

/// Starts the guard's thread. It connects to `url`, learns the idle p99 of `probes` unless
/// `baseline` is given (reported on the returned channel either way), then waits for the limit
/// to be set in `lowered` ([`Guarding::set_limit`]) and steers `lowered` and `health` until the
/// guard is dropped.
pub(crate) fn start(
    url: DbUrl,
    probes: Vec<Probe>,
    baseline: Option<Duration>,
    factor: f64,
    lowered: Arc<Lowered>,
    health: Arc<Health>,
) -> (Guarding, oneshot::Receiver<Learned>) {
    let (tx, rx) = oneshot::channel();
    let start = Level::start(lowered.base_concurrency.load(Ordering::Relaxed));
    lowered.show(start);
    let guarding = Guarding {
        lowered: lowered.clone(),
    };
    let spawned = std::thread::Builder::new()
        .name("godwit-latency-guard".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(format!("cannot start the latency guard: {e}")));
                    return;
                }
            };
            let guard = Guard {
                factor,
                lowered,
                health,
                start,
            };
            runtime.block_on(guard.run(url, probes, baseline, tx));
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the latency guard's thread");
    }
    (guarding, rx)
}

impl Guarding {
    /// Sets the limit the guard holds the probe's p99 to; until set, the guard waits.
    pub(crate) fn set_limit(&self, limit: Duration) {
        let nanos = u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.lowered.limit_nanos.store(nanos, Ordering::Relaxed);
    }
}

const SIGNAL: &str = "latency guard";

/// The guard on its thread.
struct Guard {
    factor: f64,
    lowered: Arc<Lowered>,
    health: Arc<Health>,
    start: Level,
}

impl Guard {
    async fn run(
        self,
        url: DbUrl,
        probes: Vec<Probe>,
        baseline: Option<Duration>,
        learned: oneshot::Sender<Learned>,
    ) {
        let Guard {
            factor,
            lowered,
            health,
            start,
        } = self;
        let mut prober = Prober {
            url,
            probes,
            conn: None,
            next: 0,
            failed: None,
        };
        let idle = match baseline {
            Some(b) => Ok(b),
            None => learn(&mut prober).await,
        };
        let failed = idle.is_err();
        let _ = learned.send(idle);
        if failed {
            return;
        }
        while lowered.limit_nanos.load(Ordering::Relaxed) == 0 {
            if lowered.stop.load(Ordering::Relaxed) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let limit = lowered.limit();
        let mut control = Control::at(start);
        let mut recent: Vec<Duration> = Vec::new();
        while !lowered.stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            match prober.time().await {
                Err(why) => {
                    health.set(
                        SIGNAL,
                        Some(format!(
                            "the latency guard cannot time its probe, so the run waits: {why}"
                        )),
                    );
                }
                Ok(took) => {
                    recent.push(took);
                    if recent.len() > UP_SAMPLES {
                        recent.remove(0);
                    }
                    let concurrency = lowered.base_concurrency.load(Ordering::Relaxed);
                    if let Some(level) = control.observe(took, limit, concurrency) {
                        lowered
                            .conc_shift
                            .store(level.conc_shift, Ordering::Relaxed);
                        lowered
                            .size_shift
                            .store(level.size_shift, Ordering::Relaxed);
                        let p99 = p99(&recent).unwrap_or(took);
                        tracing::info!(
                            concurrency_divided_by = 1u64 << level.conc_shift.min(63),
                            batch_size_divided_by = 1u64 << level.size_shift.min(63),
                            paused = level.paused,
                            probe_p99_ms = p99.as_secs_f64() * 1e3,
                            limit_ms = limit.as_secs_f64() * 1e3,
                            "the latency guard changed the pace"
                        );
                    }
                    let reason = control.level().paused.then(|| {
                        format!(
                            "latency guard: the probe's p99 went over {factor}x its idle {} ms",
                            millis(limit.div_f64(factor))
                        )
                    });
                    health.set(SIGNAL, reason);
                }
            }
            tokio::time::sleep(EVERY.saturating_sub(started.elapsed())).await;
        }
    }
}

/// Times the probes while the run has not started: their idle p99.
async fn learn(prober: &mut Prober) -> Learned {
    let mut samples = Vec::with_capacity(BASELINE_SAMPLES);
    for i in 0..WARM_UP + BASELINE_SAMPLES {
        let took = prober
            .time()
            .await
            .map_err(|e| format!("the latency guard cannot run its probe: {e}"))?;
        if took >= PROBE_TIMEOUT {
            let why = prober.failed.take().unwrap_or_default();
            return Err(format!(
                "the latency guard's probe failed before the run started: {why}"
            ));
        }
        if i >= WARM_UP {
            samples.push(took);
        }
        tokio::time::sleep(BASELINE_EVERY).await;
    }
    p99(&samples).ok_or_else(|| "the latency guard took no timing".to_string())
}

/// The baseline as the run keeps it: the probe it is of, and its idle p99.
pub(crate) fn write_baseline(probe: &str, idle: Duration) -> String {
    serde_json::json!({ "probe": probe, "idle_p99_seconds": idle.as_secs_f64() }).to_string()
}

/// The idle p99 in a kept baseline, if it is of `probe`.
pub(crate) fn read_baseline(kept: &str, probe: &str) -> Option<Duration> {
    let v: serde_json::Value = serde_json::from_str(kept).ok()?;
    if v.get("probe")?.as_str()? != probe {
        return None;
    }
    Duration::try_from_secs_f64(v.get("idle_p99_seconds")?.as_f64()?).ok()
}

/// Milliseconds with a precision that suits them.
fn millis(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms >= 10.0 {
        format!("{ms:.0}")
    } else {
        format!("{ms:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_millis(2);
    const FAST: Duration = Duration::from_millis(1);

    fn feed(control: &mut Control, n: usize, took: Duration, concurrency: usize) -> Vec<Level> {
        (0..n)
            .filter_map(|_| control.observe(took, LIMIT, concurrency))
            .collect()
    }

    #[test]
    fn starts_at_one_batch_at_a_time_of_an_eighth_the_size() {
        assert_eq!(
            Level::start(4),
            Level {
                conc_shift: 2,
                size_shift: START_SIZE_SHIFT,
                paused: false
            }
        );
        assert_eq!(Level::start(3).conc_shift, 1, "3 >> 1 is one batch");
        assert_eq!(Level::start(1).conc_shift, 0);
    }

    #[test]
    fn goes_down_fast_concurrency_first_then_size_then_pauses() {
        let mut control = Control::default();
        // Just over the limit: one level per look, after DOWN_SLOW slow timings.
        let just_over = LIMIT + Duration::from_micros(100);
        let moves = feed(&mut control, DOWN_SLOW, just_over, 4);
        assert_eq!(
            moves,
            [Level {
                conc_shift: 1,
                ..Level::default()
            }]
        );
        feed(&mut control, DOWN_SLOW, just_over, 4);
        assert_eq!(
            control.level().conc_shift,
            2,
            "four batches at once, then one"
        );
        feed(&mut control, DOWN_SLOW, just_over, 4);
        assert_eq!(control.level().size_shift, 1, "then smaller batches");
        // Far over (20x): three levels at one look.
        feed(&mut control, DOWN_SLOW, LIMIT * 20, 4);
        assert_eq!(control.level().size_shift, 4);
        for _ in 0..10 {
            feed(&mut control, DOWN_SLOW, LIMIT * 20, 4);
        }
        assert!(control.level().paused);
        assert_eq!(control.level().size_shift, MAX_SIZE_SHIFT);
    }

    #[test]
    fn forgives_outliers_and_stays_when_fast() {
        let mut control = Control::default();
        assert!(feed(&mut control, 1000, FAST, 2).is_empty());
        // Two slow timings among many fast ones: under 1%, one forgiven.
        control.observe(LIMIT * 50, LIMIT, 2);
        feed(&mut control, 100, FAST, 2);
        control.observe(LIMIT * 50, LIMIT, 2);
        assert!(feed(&mut control, 100, FAST, 2).is_empty());
        assert!(control.level().is_full());
        // A level just reached waits for DOWN_SLOW slow timings, not one.
        let mut control = Control::at(Level::start(2));
        assert_eq!(control.observe(LIMIT * 50, LIMIT, 2), None);
        assert_eq!(control.observe(LIMIT * 50, LIMIT, 2), None);
        assert!(control.observe(LIMIT * 50, LIMIT, 2).is_some());
    }

    #[test]
    fn climbs_back_slowly_and_more_slowly_after_a_climb_undone() {
        let mut control = Control::default();
        feed(&mut control, DOWN_SLOW, LIMIT * 3, 2);
        let low = control.level();
        assert_eq!(low.conc_shift, 1);
        assert_eq!(low.size_shift, 1, "3x over: two levels");
        // Good for a window: one level up.
        let moves = feed(&mut control, UP_SAMPLES, FAST, 2);
        assert_eq!(moves.len(), 1);
        assert_eq!(control.level().size_shift, 0);
        // That level is too fast: back down, and the next climb waits twice as long.
        feed(&mut control, DOWN_SLOW, LIMIT * 2, 2);
        assert_eq!(control.level(), low);
        assert!(feed(&mut control, UP_SAMPLES, FAST, 2).is_empty());
        assert_eq!(feed(&mut control, UP_SAMPLES, FAST, 2).len(), 1);
    }

    #[test]
    fn paused_resumes_when_the_probe_is_fast_again() {
        let mut control = Control::default();
        for _ in 0..20 {
            feed(&mut control, DOWN_SLOW, LIMIT * 20, 1);
        }
        assert!(control.level().paused);
        feed(&mut control, UP_SAMPLES, FAST, 1);
        assert!(!control.level().paused);
        assert_eq!(control.level().size_shift, MAX_SIZE_SHIFT);
    }

    #[test]
    fn lowered_divides_and_keeps_the_smallest_batch() {
        let lowered = Lowered::default();
        lowered.conc_shift.store(1, Ordering::Relaxed);
        lowered.size_shift.store(3, Ordering::Relaxed);
        assert_eq!(lowered.concurrency(4), 2);
        assert_eq!(lowered.concurrency(1), 1);
        assert_eq!(lowered.batch_size(8000, 10), 1000);
        assert_eq!(lowered.batch_size(40, 10), 10);
        assert_eq!(lowered.batch_size(5, 10), 5, "never larger than asked");
    }

    #[test]
    fn picks_keys_between_the_ends() {
        assert_eq!(
            between(&Value::Int(10), &Value::Int(20), 0.5),
            Some(Value::Int(15))
        );
        assert_eq!(
            between(&Value::Int(i64::MIN), &Value::Int(i64::MAX), 1.0),
            Some(Value::Int(i64::MAX))
        );
        let day = |d| chrono::NaiveDate::from_ymd_opt(2026, 1, d).unwrap();
        assert_eq!(
            between(&Value::Date(day(1)), &Value::Date(day(11)), 0.5),
            Some(Value::Date(day(6)))
        );
        assert_eq!(
            between(&Value::Text("a".into()), &Value::Text("b".into()), 0.5),
            None
        );
    }

    #[test]
    fn p99_is_the_nearest_rank() {
        let ms = |n: u64| Duration::from_millis(n);
        let samples: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(p99(&samples), Some(ms(99)));
        assert_eq!(p99(&[ms(3)]), Some(ms(3)));
        assert_eq!(p99(&[]), None);
    }
}
