//! The metrics of one process, counted from the scheduler's events.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use godwit_sched::Event;

use crate::text::{family, sample};

/// The upper bounds (seconds) of `godwit_batch_duration_seconds`'s buckets. Batches are sized
/// to `target_batch_time` (100 ms by default, 20 ms beside latency-bound traffic), so the
/// buckets are finest there; they reach a minute for statements with a large fixed cost.
pub const DURATION_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The metrics of this process: what its runs' steps did since it started.
///
/// Cloning gives another handle on the same figures. [`Metrics::observe`] is called on the
/// scheduler's tasks for every event and [`Metrics::render`] by the HTTP endpoint; both hold
/// the lock only to count or to copy a few numbers, so a scrape never holds up a batch.
#[derive(Clone, Default)]
pub struct Metrics(Arc<Mutex<Registry>>);

#[derive(Clone, Default)]
struct Registry {
    /// By plan and step.
    steps: BTreeMap<(String, String), StepMetrics>,
    /// Batches between their `BatchStarted` and `BatchEnded`, over every run.
    in_flight: u64,
}

#[derive(Clone, Default)]
struct StepMetrics {
    rows: u64,
    done: u64,
    failed: u64,
    retried: u64,
    durations: Histogram,
    /// Throttled time that ended.
    throttled: Duration,
    /// Since when the step is throttled now, if it is.
    throttled_since: Option<Instant>,
}

#[derive(Clone, Default)]
struct Histogram {
    /// Observations per bucket, not cumulative (rendering adds them up); the last counts
    /// those above every bound.
    buckets: [u64; DURATION_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        let bucket = DURATION_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[bucket] += 1;
        self.sum += seconds;
        self.count += 1;
    }
}

impl Metrics {
    /// No run seen yet.
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Counts what `event`, of the run of the plan named `plan`, says.
    pub fn observe(&self, plan: &str, event: &Event) {
        self.observe_at(plan, event, Instant::now());
    }

    fn observe_at(&self, plan: &str, event: &Event, now: Instant) {
        // Counting goes on after a panic elsewhere held the lock: a few numbers cannot be
        // left half-written.
        let mut registry = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // A step is made present at its start, so that each of its series reads 0 until it
        // counts something (a rate over a series that appears later misses its first value).
        let step = match event {
            Event::StepStarted { step, .. }
            | Event::BatchDone { step, .. }
            | Event::BatchRetry { step, .. }
            | Event::BatchFailed { step, .. }
            | Event::StepThrottled { step, .. }
            | Event::StepUnthrottled { step, .. } => registry.step_mut(plan, step),
            Event::BatchStarted { .. } => {
                registry.in_flight += 1;
                return;
            }
            Event::BatchEnded { .. } => {
                registry.in_flight = registry.in_flight.saturating_sub(1);
                return;
            }
            Event::RunStarted { .. }
            | Event::StepEstimate { .. }
            | Event::StepDone { .. }
            | Event::StepFailed { .. } => return,
        };
        match event {
            Event::BatchDone { rows, duration, .. } => {
                // The rows of the batch's range, as `status` counts `rows_done`; what the
                // statement reported as affected may be fewer (a `WHERE` in the SQL).
                step.rows += u64::try_from(*rows).unwrap_or(0);
                step.done += 1;
                step.durations.observe(duration.as_secs_f64());
            }
            Event::BatchRetry { .. } => step.retried += 1,
            Event::BatchFailed { .. } => step.failed += 1,
            Event::StepThrottled { .. } => {
                step.throttled_since.get_or_insert(now);
            }
            Event::StepUnthrottled { .. } => {
                // Timed here rather than by the event's own figure, so that what a scrape
                // showed of a throttle still going on is never taken back.
                if let Some(since) = step.throttled_since.take() {
                    step.throttled += now.saturating_duration_since(since);
                }
            }
            _ => {}
        }
    }

    /// The metrics in Prometheus's text format.
    pub fn render(&self) -> String {
        self.render_at(Instant::now())
    }

    fn render_at(&self, now: Instant) -> String {
        // A copy, so that the lock is not held while the text is written.
        let registry = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut out = String::new();
        let steps: Vec<([(&str, &str); 2], &StepMetrics)> = registry
            .steps
            .iter()
            .map(|((plan, step), m)| ([("plan", plan.as_str()), ("step", step.as_str())], m))
            .collect();

        family(
            &mut out,
            "godwit_rows_total",
            "counter",
            "Rows of the batches this process committed: each batch's key range as walked, \
             as status counts rows_done.",
        );
        for (labels, m) in &steps {
            sample(&mut out, "godwit_rows_total", labels, m.rows);
        }

        family(
            &mut out,
            "godwit_batches_total",
            "counter",
            "Batches this process ran, by outcome: done (committed), failed (for good: a \
             permanent error or the last attempt), retried (a transient error or a lock it \
             yielded to; tried again later, by any worker).",
        );
        for (labels, m) in &steps {
            for (outcome, n) in [
                ("done", m.done),
                ("failed", m.failed),
                ("retried", m.retried),
            ] {
                let labels = [labels[0], labels[1], ("outcome", outcome)];
                sample(&mut out, "godwit_batches_total", &labels, n);
            }
        }

        family(
            &mut out,
            "godwit_batch_duration_seconds",
            "histogram",
            "Time in the transaction of each batch this process committed.",
        );
        for (labels, m) in &steps {
            let h = &m.durations;
            let mut cumulative = 0;
            for (i, n) in h.buckets.iter().enumerate() {
                cumulative += n;
                let bound = DURATION_BUCKETS
                    .get(i)
                    .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
                let labels = [labels[0], labels[1], ("le", bound.as_str())];
                sample(
                    &mut out,
                    "godwit_batch_duration_seconds_bucket",
                    &labels,
                    cumulative,
                );
            }
            sample(&mut out, "godwit_batch_duration_seconds_sum", labels, h.sum);
            sample(
                &mut out,
                "godwit_batch_duration_seconds_count",
                labels,
                h.count,
            );
        }

        family(
            &mut out,
            "godwit_batches_in_flight",
            "gauge",
            "Batches running in this process now, over every run it works on (as status shows \
             per worker); not those claimed ahead and waiting for a slot.",
        );
        sample(
            &mut out,
            "godwit_batches_in_flight",
            &[],
            registry.in_flight,
        );

        family(
            &mut out,
            "godwit_throttled_seconds_total",
            "counter",
            "Seconds during which no new batch of the step started in this process because a \
             throttle signal said so: its throttle_query, the replicas' lag, the latency \
             guard's pause. Waits for max_rows_per_second are not counted.",
        );
        for (labels, m) in &steps {
            let open = m
                .throttled_since
                .map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
            let seconds = (m.throttled + open).as_secs_f64();
            sample(&mut out, "godwit_throttled_seconds_total", labels, seconds);
        }
        out
    }
}

impl Registry {
    fn step_mut(&mut self, plan: &str, step: &str) -> &mut StepMetrics {
        let key = (plan.to_string(), step.to_string());
        self.steps.entry(key).or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(step: &str, rows: i64, millis: u64) -> Event {
        Event::BatchDone {
            step: step.into(),
            batch: 0,
            rows,
            rows_affected: 1,
            rows_redone: 0,
            duration: Duration::from_millis(millis),
        }
    }

    /// The sample lines of `text` that start with `prefix`.
    fn lines<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    #[test]
    fn counts_rows_of_batches_done_and_outcomes() {
        let m = Metrics::new();
        m.observe("p", &done("s", 10, 3));
        m.observe("p", &done("s", 7, 200));
        m.observe(
            "p",
            &Event::BatchRetry {
                step: "s".into(),
                batch: 2,
                attempt: 1,
                error: "e".into(),
                delay: Duration::ZERO,
            },
        );
        m.observe(
            "p",
            &Event::BatchFailed {
                step: "s".into(),
                batch: 3,
                error: "e".into(),
            },
        );
        let text = m.render();
        assert_eq!(
            lines(&text, "godwit_rows_total"),
            ["godwit_rows_total{plan=\"p\",step=\"s\"} 17"]
        );
        assert_eq!(
            lines(&text, "godwit_batches_total"),
            [
                "godwit_batches_total{plan=\"p\",step=\"s\",outcome=\"done\"} 2",
                "godwit_batches_total{plan=\"p\",step=\"s\",outcome=\"failed\"} 1",
                "godwit_batches_total{plan=\"p\",step=\"s\",outcome=\"retried\"} 1",
            ]
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::new();
        for millis in [3, 5, 6, 200, 90_000] {
            m.observe("p", &done("s", 1, millis));
        }
        let text = m.render();
        let buckets = lines(&text, "godwit_batch_duration_seconds_bucket");
        assert_eq!(buckets.len(), DURATION_BUCKETS.len() + 1);
        assert_eq!(
            buckets[0],
            "godwit_batch_duration_seconds_bucket{plan=\"p\",step=\"s\",le=\"0.005\"} 2"
        );
        assert_eq!(
            buckets[1],
            "godwit_batch_duration_seconds_bucket{plan=\"p\",step=\"s\",le=\"0.01\"} 3"
        );
        assert!(buckets[5].ends_with("le=\"0.25\"} 4"), "{}", buckets[5]);
        assert!(buckets[12].ends_with("le=\"60\"} 4"), "{}", buckets[12]);
        assert!(buckets[13].ends_with("le=\"+Inf\"} 5"), "{}", buckets[13]);
        assert_eq!(
            lines(&text, "godwit_batch_duration_seconds_count"),
            ["godwit_batch_duration_seconds_count{plan=\"p\",step=\"s\"} 5"]
        );
        assert_eq!(
            lines(&text, "godwit_batch_duration_seconds_sum"),
            ["godwit_batch_duration_seconds_sum{plan=\"p\",step=\"s\"} 90.214"]
        );
    }

    #[test]
    fn counts_batches_in_flight() {
        let m = Metrics::new();
        let started = |batch| Event::BatchStarted {
            step: "s".into(),
            batch,
        };
        let ended = |batch| Event::BatchEnded {
            step: "s".into(),
            batch,
        };
        m.observe("p", &started(1));
        m.observe("q", &started(1));
        m.observe("p", &started(2));
        m.observe("p", &ended(1));
        assert_eq!(
            lines(&m.render(), "godwit_batches_in_flight"),
            ["godwit_batches_in_flight 2"]
        );
    }

    #[test]
    fn throttled_time_grows_while_throttled_and_stops_after() {
        let m = Metrics::new();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let throttled = Event::StepThrottled {
            step: "s".into(),
            reason: "r".into(),
        };
        let unthrottled = Event::StepUnthrottled {
            step: "s".into(),
            throttled_for: Duration::from_secs(99),
        };
        m.observe_at("p", &throttled, at(0));
        let seconds = |now| lines(&m.render_at(now), "godwit_throttled_seconds_total").join("");
        assert!(seconds(at(3)).ends_with(" 3"), "{}", seconds(at(3)));
        m.observe_at("p", &unthrottled, at(4));
        assert!(seconds(at(10)).ends_with(" 4"), "{}", seconds(at(10)));
        m.observe_at("p", &throttled, at(20));
        m.observe_at("p", &unthrottled, at(21));
        assert!(seconds(at(30)).ends_with(" 5"), "{}", seconds(at(30)));
    }

    #[test]
    fn every_family_has_help_and_type_and_a_started_step_reads_zero() {
        let m = Metrics::new();
        m.observe(
            "p",
            &Event::StepStarted {
                step: "s".into(),
                rows_total: None,
                rows_done: 5,
            },
        );
        let text = m.render();
        for (name, kind) in [
            ("godwit_rows_total", "counter"),
            ("godwit_batches_total", "counter"),
            ("godwit_batch_duration_seconds", "histogram"),
            ("godwit_batches_in_flight", "gauge"),
            ("godwit_throttled_seconds_total", "counter"),
        ] {
            assert!(text.contains(&format!("# HELP {name} ")), "{text}");
            assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{text}");
        }
        assert!(text.contains("godwit_rows_total{plan=\"p\",step=\"s\"} 0\n"));
        assert!(text.contains("godwit_throttled_seconds_total{plan=\"p\",step=\"s\"} 0\n"));
    }
}
