//! `max_rows_per_second`: batches start no faster than the rate allows.
//!
//! Each batch books the time its rows take at the rate, after the batches booked before it, and
//! starts when its booking begins. Time not used (the step was throttled, or slower than the
//! rate) is not saved up: a step that was idle does not burst afterwards.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A rate shared by the batches that count against it.
#[derive(Default)]
pub(crate) struct Rate {
    /// When the rows booked so far have had their time.
    booked_until: Mutex<Option<Instant>>,
}

impl Rate {
    /// How long after `now` a batch of `rows` rows starts at `per_second`, booking its time;
    /// zero when it may start now.
    pub(crate) fn book(&self, now: Instant, rows: u64, per_second: f64) -> Duration {
        let Ok(mut until) = self.booked_until.lock() else {
            return Duration::ZERO;
        };
        let start = until.map_or(now, |t| t.max(now));
        let takes = Duration::try_from_secs_f64(rows as f64 / per_second).unwrap_or(Duration::MAX);
        *until = Some(start.checked_add(takes).unwrap_or(start));
        start - now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_start_at_the_rate_without_saving_up_idle_time() {
        let rate = Rate::default();
        let t0 = Instant::now();
        assert_eq!(rate.book(t0, 100, 1000.0), Duration::ZERO);
        assert_eq!(rate.book(t0, 100, 1000.0), Duration::from_millis(100));
        assert_eq!(rate.book(t0, 50, 1000.0), Duration::from_millis(200));
        // Idle for a second: the next batch starts at once, and the one after it waits its
        // predecessor's share only.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(rate.book(t1, 100, 1000.0), Duration::ZERO);
        assert_eq!(rate.book(t1, 100, 1000.0), Duration::from_millis(100));
    }
}
