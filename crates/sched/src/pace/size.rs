//! Batches sized by time: a step's batch size grows and shrinks so that a batch's transaction
//! lasts about `target_batch_time`, between `min_batch_size` and `max_batch_size`.
//!
//! The cost of a key is the median of the last few batches' duration per key, or the latest
//! batch's when that is higher: one fast batch does not grow the size, and a slow one keeps it
//! from growing. A batch that lasted more than twice the target starts the median afresh, so
//! rows that got slower halfway are followed at once rather than after a few more long batches,
//! which hold an application's rows that long. The size grows at most twofold per batch: a wrong
//! guess upwards holds locks too long, one downwards only costs a few more commits.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use godwit_plan::Settings;

/// How many recent batches the cost of a key is the median of.
const WINDOW: usize = 5;

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
    /// Seconds per key of the last [`WINDOW`] batches, oldest first.
    costs: VecDeque<f64>,
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
                costs: VecDeque::with_capacity(WINDOW),
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
        if took.as_secs_f64() > self.target.as_secs_f64() * TOO_LONG {
            inner.costs.clear();
        }
        if inner.costs.len() == WINDOW {
            inner.costs.pop_front();
        }
        inner.costs.push_back(took.as_secs_f64() / keys as f64);
        let latest = took.as_secs_f64() / keys as f64;
        let mut costs: Vec<f64> = inner.costs.iter().copied().collect();
        costs.sort_by(f64::total_cmp);
        // Never larger than the latest batch says: growth waits for batches that show it.
        let cost = costs[costs.len() / 2].max(latest).max(f64::MIN_POSITIVE);
        let ideal = self.target.as_secs_f64() / cost;
        let grown = inner.size as f64 * MAX_GROWTH;
        // Cast saturates: a cost near zero asks for more than any bound.
        let next = ideal.min(grown).round() as u64;
        inner.size = next.clamp(self.min, self.max);
    }
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
