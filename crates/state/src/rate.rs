//! The recent rate and the ETA it gives: one definition for `status`, the progress bars of
//! `run` and the ETA history of `godwit report`.
//!
//! The rate is that of the last [`RATE_WINDOW_MS`] of work, not the average since the start:
//! a run that slows down (bigger rows, a busier database, a throttle) gets a later ETA within
//! half a minute, and one that speeds up an earlier one. It is the rows of the batches that
//! finished in the window divided by the time from the start of the earliest of them to now,
//! so that a step younger than the window is not taken for a slow one. `status` computes the
//! same in SQL (`status.rs`), over every worker's batches.

use std::collections::VecDeque;

/// How far back the recent rate looks, in milliseconds.
pub const RATE_WINDOW_MS: i64 = 30_000;

/// The rows of recently finished batches, to project a step's finish from.
///
/// Times are milliseconds on any one clock the caller keeps to (the state database's, or a
/// process's own since it began).
///
/// ```
/// let mut rate = godwit_state::RecentRate::new();
/// rate.record(0, 1_000, 500);
/// rate.record(1_000, 2_000, 500);
/// assert_eq!(rate.rows_per_second(2_000), 500.0);
/// assert_eq!(rate.eta_seconds(1_000, 2_000), Some(2.0));
/// ```
#[derive(Debug, Clone)]
pub struct RecentRate {
    window_ms: i64,
    /// `(started_ms, finished_ms, rows)` of the batches finished in the window, and perhaps
    /// some older ones not yet dropped.
    batches: VecDeque<(i64, i64, i64)>,
}

impl Default for RecentRate {
    fn default() -> RecentRate {
        RecentRate::new()
    }
}

impl RecentRate {
    /// A rate over the last [`RATE_WINDOW_MS`].
    pub fn new() -> RecentRate {
        RecentRate::with_window(RATE_WINDOW_MS)
    }

    /// A rate over the last `window_ms` (at least a millisecond).
    pub fn with_window(window_ms: i64) -> RecentRate {
        RecentRate {
            window_ms: window_ms.max(1),
            batches: VecDeque::new(),
        }
    }

    /// Counts a batch of `rows` that started at `started_ms` and finished at `finished_ms`
    /// (or batches summed: the rows of all, the start of the first, a time in the window
    /// they finished in).
    pub fn record(&mut self, started_ms: i64, finished_ms: i64, rows: i64) {
        self.batches
            .push_back((started_ms, finished_ms, rows.max(0)));
    }

    /// Rows per second at `now_ms`: the rows of the batches finished in the window before it,
    /// over the time since the first of them started; 0 when none finished in the window.
    pub fn rows_per_second(&mut self, now_ms: i64) -> f64 {
        let since = now_ms - self.window_ms;
        // Batches of several workers finish out of order; the window holds few of them.
        self.batches.retain(|&(_, finished, _)| finished >= since);
        let in_window = self
            .batches
            .iter()
            .filter(|&&(_, finished, _)| finished <= now_ms);
        let (rows, first_start) = in_window.fold((0i64, i64::MAX), |(rows, first), b| {
            (rows + b.2, first.min(b.0))
        });
        if rows == 0 || first_start >= now_ms {
            return 0.0;
        }
        rows as f64 * 1000.0 / (now_ms - first_start) as f64
    }

    /// Seconds until `rows_left` more rows are done at the rate at `now_ms`; `None` while no
    /// batch finished in the window (a stalled or paused step has no ETA).
    pub fn eta_seconds(&mut self, rows_left: i64, now_ms: i64) -> Option<f64> {
        eta_seconds(rows_left, self.rows_per_second(now_ms))
    }
}

/// Seconds until `rows_left` rows are done at `rows_per_second`, to a tenth of a second;
/// `None` at no rate.
pub fn eta_seconds(rows_left: i64, rows_per_second: f64) -> Option<f64> {
    if rows_per_second <= 0.0 || !rows_per_second.is_finite() {
        return None;
    }
    Some((rows_left.max(0) as f64 / rows_per_second * 10.0).round() / 10.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_younger_than_the_window_is_measured_from_its_first_batch() {
        let mut rate = RecentRate::new();
        rate.record(10_000, 11_000, 100);
        rate.record(11_000, 12_000, 100);
        assert_eq!(rate.rows_per_second(12_000), 100.0);
    }

    #[test]
    fn only_the_window_counts() {
        let mut rate = RecentRate::with_window(10_000);
        // 1,000 rows/s for 20 s, then 100 rows/s for 20 s.
        for s in 0..20 {
            rate.record(s * 1000, (s + 1) * 1000, 1000);
        }
        for s in 20..40 {
            rate.record(s * 1000, (s + 1) * 1000, 100);
        }
        assert_eq!(rate.rows_per_second(40_000), 100.0);
        assert_eq!(rate.eta_seconds(1_000, 40_000), Some(10.0));
    }

    #[test]
    fn a_stall_has_no_eta() {
        let mut rate = RecentRate::with_window(10_000);
        rate.record(0, 1_000, 100);
        assert_eq!(rate.eta_seconds(100, 5_000), Some(5.0));
        assert_eq!(rate.eta_seconds(100, 12_000), None);
        assert_eq!(rate.rows_per_second(12_000), 0.0);
    }

    #[test]
    fn batches_finished_after_now_are_not_counted_yet() {
        let mut rate = RecentRate::new();
        rate.record(0, 1_000, 100);
        rate.record(0, 5_000, 900);
        assert_eq!(rate.rows_per_second(2_000), 50.0);
    }
}
