//! A batch of wide rows read in slices, so that a transform or copy never holds much more than
//! `max_batch_bytes` of row data at once, whatever the rows' width.
//!
//! A copy reads each slice as the next rows of the batch's key range in key order (`LIMIT`,
//! continuing after the last key read); a transform locks the batch's keys first and reads the
//! rows between every `n`th of them. The step learns its rows' average size from the slices it
//! reads: its first slice is a small probe, later ones as many rows as fit in
//! `max_batch_bytes`, which for ordinary rows is the whole batch in one read.

use std::sync::atomic::{AtomicU64, Ordering};

use godwit_driver::{Dialect, Value};

/// Rows read by the first slice of a step, before their size is known.
const PROBE_ROWS: u64 = 64;

/// How many rows the next slice of a step reads.
pub(crate) struct Slicer {
    max_bytes: u64,
    batch_size: u64,
    /// The average size of the rows read so far, in bytes; 0 before the first slice.
    row_bytes: AtomicU64,
}

impl Slicer {
    pub(crate) fn new(max_bytes: u64, batch_size: u64) -> Slicer {
        Slicer {
            max_bytes: max_bytes.max(1),
            batch_size: batch_size.max(1),
            row_bytes: AtomicU64::new(0),
        }
    }

    /// The `LIMIT` of the next slice.
    pub(crate) fn rows(&self) -> i64 {
        let rows = match self.row_bytes.load(Ordering::Relaxed) {
            0 => self.batch_size.min(PROBE_ROWS),
            size => (self.max_bytes / size).clamp(1, self.batch_size),
        };
        i64::try_from(rows).unwrap_or(i64::MAX)
    }

    /// About the most row data a batch holds at once (`max_batch_bytes`).
    pub(crate) fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Whether a whole batch fits in one slice (the rows' width is known and small).
    pub(crate) fn whole_batch(&self) -> bool {
        self.row_bytes.load(Ordering::Relaxed) != 0 && self.rows() as u64 >= self.batch_size
    }

    /// Learns from a slice of `rows` rows holding `bytes` bytes. A wider slice counts at
    /// once; a narrower one only halfway, so one narrow slice does not let the next grow
    /// past the cap.
    pub(crate) fn observe(&self, rows: usize, bytes: u64) {
        if rows == 0 {
            return;
        }
        let seen = (bytes / rows as u64).max(1);
        let known = self.row_bytes.load(Ordering::Relaxed);
        let next = if known == 0 || seen >= known {
            seen
        } else {
            (known + seen) / 2
        };
        self.row_bytes.store(next, Ordering::Relaxed);
    }
}

/// About how much memory a row's values take.
pub(crate) fn row_bytes(values: &[Value]) -> u64 {
    values
        .iter()
        .map(|v| match v {
            Value::Text(s) | Value::Decimal(s) => s.len() as u64 + 24,
            Value::Bytes(b) => b.len() as u64 + 24,
            // A document's text is a fair measure of its tree.
            Value::Json(j) => j.to_string().len() as u64 * 2 + 24,
            _ => 16,
        })
        .sum()
}

/// `WHERE` and `LIMIT` of a slice: the first from `start` (inclusive), the next ones after the
/// last key read; always up to `end` (inclusive).
pub(crate) fn bounds(dialect: Dialect, key: &str, first: bool) -> (String, String) {
    let op = if first { ">=" } else { ">" };
    (
        format!(
            "{key} {op} {} AND {key} <= {}",
            dialect.param(1),
            dialect.param(2)
        ),
        format!(" LIMIT {}", dialect.param(3)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_start_small_then_fit_the_cap() {
        let s = Slicer::new(1 << 20, 1000);
        assert_eq!(s.rows(), 64);
        assert!(!s.whole_batch());
        // Narrow rows: the whole batch in one slice.
        s.observe(64, 64 * 100);
        assert_eq!(s.rows(), 1000);
        assert!(s.whole_batch());
        // 100 KiB rows: ten at a time.
        s.observe(10, 10 * 100 * 1024);
        assert_eq!(s.rows(), 10);
        // One narrow slice does not let the next grow past the cap at once.
        s.observe(10, 10 * 100);
        assert!(s.rows() <= 21, "{}", s.rows());
        // Rows wider than the cap: one at a time.
        s.observe(1, 8 << 20);
        assert_eq!(s.rows(), 1);
    }
}
