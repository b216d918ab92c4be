//! Batches sized by time: a step's batch size grows and shrinks so that a batch's transaction
//! lasts about `target_batch_time`, between `min_batch_size` and `max_batch_size`.
//!
//! A batch's time is modelled as a fixed part, paid whatever its size (a subquery over another
//! table, planning, a round trip), plus a part per key. Dividing a batch's time by its keys
//! alone would count the fixed part as keys: the smaller the batches, the dearer each key would
//! look, and a fixed part above the target would shrink them to `min_batch_size`, where nearly
//! all of the run's time goes on fixed parts.
//!
//! The fixed part is the intercept of a least-squares line through the last few dozen batches'
//! keys and times, fitted when their sizes differ enough to tell the two parts apart (the
//! smallest at most two thirds of the largest) and the line rises with the keys; otherwise the
//! last fit stands. It is never more than the fastest of those batches took. The cost of a key
//! is the median of the last five batches' time beyond the fixed part per key, or the latest
//! batch's when that is higher: one fast batch does not grow the size, and a slow one keeps it
//! from growing.
//!
//! The keys get the target less the fixed part, but never less than the fixed part itself:
//! where the fixed part is under half the target a batch lasts the target, and where it is more
//! a batch lasts twice the fixed part, so that a run still gets at least half the throughput of
//! the largest batches rather than crawl (no size that does meets the target anyway).
//!
//! A batch that lasted more than twice the target, and more than twice as long as the recent
//! batches say one of its size takes, starts afresh: its rows got slower, and are followed at
//! once rather than after a few more long batches, which hold an application's rows that long.
//! (A smaller batch that took about as long as a larger one is a fixed part, not slower rows.)
//! The size grows at most twofold per batch: a wrong guess upwards holds locks too long, one
//! downwards only costs a few more commits.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use godwit_plan::Settings;

/// How many recent batches the cost of a key is the median of.
const WINDOW: usize = 5;

/// How many recent batches the fixed part is fitted to: more than the median looks at, since
/// a statement's fixed part changes more rarely than its rows, and a fit to few noisy batches
/// strays far.
const HISTORY: usize = 32;

/// How many times the largest of the recent batches must be the smallest for a fit.
const SPREAD: f64 = 1.5;

/// The most a size grows from one batch to the next.
const MAX_GROWTH: f64 = 2.0;

/// A batch that lasts longer than this many times the target resizes on its own.
const TOO_LONG: f64 = 2.0;

/// One step's batch size in this process.
pub(crate) struct Sizer {
    target: Duration,
    min: u64,
    max: u64,
    adaptive: bool,
    inner: Mutex<Inner>,
}

struct Inner {
    size: u64,
    /// The last [`HISTORY`] batches, oldest first.
    recent: VecDeque<Observed>,
    /// Seconds a batch takes whatever its size, as last fitted.
    fixed: f64,
}

/// What one committed batch took.
#[derive(Clone, Copy)]
struct Observed {
    keys: f64,
    secs: f64,
}

impl Sizer {
    pub(crate) fn new(settings: &Settings) -> Sizer {
        let (min, max) = settings.batch_size_bounds();
        Sizer {
            target: settings.target_batch_time(),
            min,
            max,
            adaptive: settings.adaptive,
            inner: Mutex::new(Inner {
                size: settings.first_batch_size(),
                recent: VecDeque::with_capacity(HISTORY),
                fixed: 0.0,
            }),
        }
    }

    /// The smallest size the latency guard lowers a batch to: the sizer's own, or with a
    /// fixed size, the smallest an adaptive one takes by default.
    pub(crate) fn smallest(&self) -> u64 {
        if self.adaptive {
            self.min
        } else {
            self.min.min(godwit_plan::DEFAULT_MIN_BATCH_SIZE)
        }
    }

    /// The size of the next batch.
    pub(crate) fn size(&self) -> u64 {
        self.inner.lock().map_or(self.min, |inner| inner.size)
    }

    /// Learns from a batch of `keys` keys whose transaction took `took`.
    pub(crate) fn observe(&self, keys: u64, took: Duration) {
        if !self.adaptive || keys == 0 {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let target = self.target.as_secs_f64();
        let latest = Observed {
            keys: keys as f64,
            secs: took.as_secs_f64(),
        };
        // The longest a recent batch says a batch of these keys takes: its time beyond the
        // fixed part grown to as many keys, and never less than it took.
        let fitted = inner.fixed;
        let explained = inner
            .recent
            .iter()
            .map(|b| fitted + (b.secs - fitted).max(0.0) * (latest.keys / b.keys).max(1.0))
            .fold(0.0, f64::max);
        let too_long = latest.secs > target * TOO_LONG;
        let rows_slower = latest.secs > explained * TOO_LONG;
        if too_long && rows_slower {
            inner.recent.clear();
        }
        if inner.recent.len() == HISTORY {
            inner.recent.pop_front();
        }
        inner.recent.push_back(latest);
        if let Some(fixed) = fit_fixed(&inner.recent) {
            inner.fixed = fixed;
        }
        let fastest = inner
            .recent
            .iter()
            .map(|b| b.secs)
            .fold(f64::INFINITY, f64::min);
        let fixed = inner.fixed.min(fastest);
        inner.fixed = fixed;
        let per_key = |b: &Observed| (b.secs - fixed).max(0.0) / b.keys;
        let mut costs: Vec<f64> = inner
            .recent
            .iter()
            .rev()
            .take(WINDOW)
            .map(per_key)
            .collect();
        costs.sort_by(f64::total_cmp);
        // Never larger than the latest batch says: growth waits for batches that show it.
        let cost = costs[costs.len() / 2]
            .max(per_key(&latest))
            .max(f64::MIN_POSITIVE);
        let keys_time = (target - fixed).max(fixed);
        let ideal = keys_time / cost;
        let grown = inner.size as f64 * MAX_GROWTH;
        // Cast saturates: a cost near zero asks for more than any bound.
        let next = ideal.min(grown).round() as u64;
        inner.size = next.clamp(self.min, self.max);
    }
}

/// The fixed part of a batch's time, from a least-squares line through `recent` batches'
/// keys and times; `None` when their sizes are too close to tell it from the keys' part, or
/// the line does not rise with the keys (rows that changed, not a batch's cost).
fn fit_fixed(recent: &VecDeque<Observed>) -> Option<f64> {
    let n = recent.len() as f64;
    let smallest = recent.iter().map(|b| b.keys).fold(f64::INFINITY, f64::min);
    let largest = recent.iter().map(|b| b.keys).fold(0.0, f64::max);
    if largest < smallest * SPREAD {
        return None;
    }
    let mean_keys = recent.iter().map(|b| b.keys).sum::<f64>() / n;
    let mean_secs = recent.iter().map(|b| b.secs).sum::<f64>() / n;
    let (mut sxx, mut sxy) = (0.0, 0.0);
    for b in recent {
        sxx += (b.keys - mean_keys) * (b.keys - mean_keys);
        sxy += (b.keys - mean_keys) * (b.secs - mean_secs);
    }
    let per_key = sxy / sxx;
    if per_key <= 0.0 {
        return None;
    }
    Some((mean_secs - per_key * mean_keys).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(batch_size: u64) -> Settings {
        Settings {
            batch_size,
            target_batch_time: Some(Duration::from_millis(500)),
            min_batch_size: Some(10),
            max_batch_size: Some(1_000_000),
            ..Settings::default()
        }
    }

    /// Feeds `n` batches whose keys cost `per_key` each, at the size the sizer asks for.
    fn run(sizer: &Sizer, n: usize, per_key: Duration) {
        for _ in 0..n {
            let keys = sizer.size();
            sizer.observe(keys, per_key * u32::try_from(keys).unwrap());
        }
    }

    #[test]
    fn grows_towards_the_target_at_most_twofold_per_batch() {
        let sizer = Sizer::new(&settings(1000));
        sizer.observe(1000, Duration::from_millis(5));
        assert_eq!(sizer.size(), 2000, "one batch at most doubles the size");
        run(&sizer, 20, Duration::from_micros(5));
        // 0.5 s at 5 µs a key.
        assert_eq!(sizer.size(), 100_000);
    }

    #[test]
    fn follows_slower_rows_at_once_and_recovers_from_one_slow_batch() {
        let sizer = Sizer::new(&settings(1000));
        run(&sizer, 20, Duration::from_micros(50));
        assert_eq!(sizer.size(), 10_000);
        // One batch half again as slow as the others sizes the next by what it says; the one
        // after it, as fast as before, brings the size back.
        sizer.observe(10_000, Duration::from_millis(750));
        assert_eq!(sizer.size(), 6_667);
        sizer.observe(6_667, Duration::from_micros(50) * 6_667);
        assert_eq!(sizer.size(), 10_000);
        // Rows twenty times slower from here on: the first batch that shows it (10 s, twenty
        // times the target) resizes on its own.
        sizer.observe(10_000, Duration::from_secs(10));
        assert_eq!(sizer.size(), 500);
        run(&sizer, WINDOW, Duration::from_micros(1000));
        assert_eq!(sizer.size(), 500);
    }

    #[test]
    fn keeps_within_its_bounds_and_stays_fixed_when_not_adaptive() {
        let sizer = Sizer::new(&settings(1000));
        run(&sizer, 40, Duration::from_nanos(1));
        assert_eq!(sizer.size(), 1_000_000, "the largest batch bounds it");
        run(&sizer, 10, Duration::from_secs(1));
        assert_eq!(sizer.size(), 10, "the smallest batch bounds it");

        let fixed = Sizer::new(&Settings {
            adaptive: false,
            ..settings(1000)
        });
        run(&fixed, 10, Duration::from_nanos(1));
        assert_eq!(fixed.size(), 1000);
    }

    /// Sizes a step's batches at target 100 ms, starting at 1000 keys, for `n` batches that
    /// take `fixed` plus `per_key` a key, each off by up to `jitter` of it either way (a fixed
    /// pseudo-random sequence); returns each batch's keys and seconds.
    fn simulate(fixed: f64, per_key: f64, jitter: f64, n: usize) -> Vec<(u64, f64)> {
        let sizer = Sizer::new(&Settings {
            batch_size: 1000,
            target_batch_time: Some(Duration::from_millis(100)),
            ..Settings::default()
        });
        // xorshift64: the same noise on every run.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut noise = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        };
        (0..n)
            .map(|_| {
                let keys = sizer.size();
                let secs = (fixed + per_key * keys as f64) * (1.0 + jitter * noise());
                sizer.observe(keys, Duration::from_secs_f64(secs));
                (keys, secs)
            })
            .collect()
    }

    /// Keys per second over `batches`.
    fn throughput(batches: &[(u64, f64)]) -> f64 {
        let keys: u64 = batches.iter().map(|b| b.0).sum();
        keys as f64 / batches.iter().map(|b| b.1).sum::<f64>()
    }

    #[test]
    fn a_fixed_cost_above_the_target_keeps_batches_where_keys_get_half_the_time() {
        // 200 ms a batch whatever its size, and 100 µs a key: no batch can last the 100 ms
        // target. Dividing time by keys alone shrank these batches to 10 keys (50 keys/s).
        let batches = simulate(0.2, 100e-6, 0.0, 30);
        let sizes: Vec<u64> = batches.iter().map(|b| b.0).collect();
        assert!(
            sizes.iter().all(|&n| n >= 300),
            "the first shrink shows the fixed cost: {sizes:?}"
        );
        // 2000 keys take 200 ms beyond the fixed part: half the throughput of endless batches.
        assert!(sizes[10..].iter().all(|&n| n == 2000), "{sizes:?}");
        assert!(throughput(&batches[10..]) >= 4999.0, "{sizes:?}");
    }

    #[test]
    fn a_fixed_cost_under_the_target_is_left_out_of_the_cost_of_a_key() {
        // 20 ms a batch and 50 µs a key: 1600 keys last the target.
        let batches = simulate(0.02, 50e-6, 0.0, 30);
        let last = batches[batches.len() - 1];
        assert_eq!(last.0, 1600, "{batches:?}");
        assert!((last.1 - 0.1).abs() < 1e-9, "{batches:?}");
    }

    #[test]
    fn noisy_durations_keep_sizes_steady() {
        // Every batch 30% faster or slower than its keys and fixed part say, at random. The
        // ideal sizes: 2000 keys (fixed part 200 ms, the keys' part as long), 1600 (fixed 20
        // ms, lasting the target) and 2000 (no fixed part, 50 µs a key).
        for (fixed, per_key, ideal) in
            [(0.2, 100e-6, 2000), (0.02, 50e-6, 1600), (0.0, 50e-6, 2000)]
        {
            let batches = simulate(fixed, per_key, 0.3, 300);
            let steady = &batches[20..];
            let sizes: Vec<u64> = steady.iter().map(|b| b.0).collect();
            let ideal_secs = fixed + per_key * ideal as f64;
            // A noisy fixed part of half a batch makes the keys' part noisier still.
            let (low, high) = if fixed > 0.05 {
                (ideal / 8, ideal * 3)
            } else {
                (ideal / 2, ideal * 2)
            };
            let seen = format!("fixed {fixed}, sizes {sizes:?}");
            assert!(
                sizes.iter().all(|n| (low..=high).contains(n)),
                "sizes within {low}..={high}: {seen}"
            );
            let ideal_throughput = ideal as f64 / ideal_secs;
            assert!(
                throughput(steady) >= ideal_throughput * 0.8,
                "throughput {:.0} keys/s of an ideal {ideal_throughput:.0}: {seen}",
                throughput(steady)
            );
            let longest = steady.iter().map(|b| b.1).fold(0.0, f64::max);
            assert!(
                longest <= ideal_secs * 2.5,
                "longest batch {longest:.3} s against {ideal_secs} s: {seen}"
            );
        }
    }

    #[test]
    fn unwritten_bounds_take_in_the_written_batch_size() {
        let big = Settings {
            batch_size: 500_000,
            ..Settings::default()
        };
        assert_eq!(big.batch_size_bounds(), (10, 500_000));
        let small = Settings {
            batch_size: 5,
            ..Settings::default()
        };
        assert_eq!(small.batch_size_bounds(), (5, 100_000));
        let written = Settings {
            batch_size: 5,
            min_batch_size: Some(100),
            ..Settings::default()
        };
        assert_eq!(written.first_batch_size(), 100);
    }
}
