//! `godwit report`: the durations of a plan's run, for release notes.
//!
//! Every number comes from the state tables the run already writes (see
//! [`StateStore::run_timings`], [`StateStore::throughput`] and [`StateStore::eta_history`]):
//! nothing is recorded for the report while the run goes, so it costs the run nothing. The
//! estimate shown beside each step is the last one `godwit estimate` recorded before the run
//! started ([`StateStore::estimate_before`]).
//!
//! A [`Report`] is built once ([`build`]) and written in one of three forms: [`json`] (the
//! shape the contract fixes, with more fields), [`markdown`] (a table to paste into release
//! notes) and [`html`] (one self-contained page: inline style and SVG charts drawn here, no
//! script, nothing fetched from anywhere). A run that still goes, failed or was cancelled gets
//! a report too; its `state` says so.
#![deny(missing_docs)]

mod html;
mod markdown;
mod svg;
mod text;

use godwit_driver::Result;
use godwit_state::{RecordedEstimate, StateStore, StepTimings, Throughput, WorkerShare};
use serde::Serialize;

pub use crate::html::html;
pub use crate::markdown::markdown;
pub use crate::text::thousands;

/// A run's durations and counts, per step, with the estimate made beforehand.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    /// The plan's name.
    pub plan: String,
    /// `pending`, `running`, `paused`, `done`, `failed` or `cancelled` when the report was made.
    pub state: String,
    /// Why the run failed, when it did.
    pub error: Option<String>,
    /// When the run started (RFC 3339, UTC); `null` for a run only submitted.
    pub started_at: Option<String>,
    /// When it ended; `null` while it goes on.
    pub finished_at: Option<String>,
    /// From start to end (or to when the report was made, while it goes on), in seconds.
    pub duration_seconds: Option<f64>,
    /// The whole plan's projected duration from the estimate made before the run started;
    /// `null` when none was recorded.
    pub estimated_seconds: Option<f64>,
    /// That estimate: when it was recorded and its range.
    pub estimate: Option<EstimateSummary>,
    /// When the report was made, on the state database's clock.
    pub generated_at: String,
    /// The steps, in plan order.
    pub steps: Vec<StepReport>,
    /// Rows per second per step over the run, the chart's data.
    pub throughput: Vec<ThroughputMark>,
    /// Each bucket's length in seconds.
    pub throughput_bucket_seconds: f64,
    #[serde(skip)]
    clock: Clock,
}

/// The run's times in milliseconds, for the charts.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Clock {
    started_ms: Option<i64>,
    finished_ms: Option<i64>,
    now_ms: i64,
}

impl Clock {
    /// Where the run's time ends: its finish, or now.
    fn end_ms(&self) -> i64 {
        self.finished_ms.unwrap_or(self.now_ms)
    }

    /// Whether the run's time lies within one UTC day, so that its times go without a date.
    fn one_day(&self) -> bool {
        self.started_ms
            .is_none_or(|start| text::same_day(start, self.end_ms()))
    }
}

impl StepReport {
    /// How the step's duration compares with its estimate, once it is done: whether it took
    /// longer, and by how much (`+12%`).
    fn against_estimate(&self) -> Option<(bool, String)> {
        let estimated = self.estimated_seconds?;
        let actual = self.duration_seconds.filter(|_| self.state == "done")?;
        text::versus(actual, estimated).map(|v| (actual > estimated, v))
    }

    /// The step's figures as both tables write them; `one_day`: times without their date.
    fn cells(&self, one_day: bool) -> StepCells {
        let dash = || "–".to_string();
        StepCells {
            start: text::table_time(self.started_ms, one_day),
            end: text::table_time(self.finished_ms, one_day),
            duration: self.duration_seconds.map_or_else(dash, text::duration),
            rows: text::thousands(self.rows),
            rate: self.rows_per_second.map_or_else(dash, text::rate),
            batches: text::thousands(self.batches),
            retries: text::thousands(self.retries),
            skipped: text::thousands(self.rows_skipped),
            longest: self.longest_batch_seconds.map_or_else(dash, text::duration),
            workers: self.workers.len().to_string(),
        }
    }
}

/// A step's figures in the words of the Markdown and HTML tables.
struct StepCells {
    start: String,
    end: String,
    duration: String,
    rows: String,
    rate: String,
    batches: String,
    retries: String,
    skipped: String,
    longest: String,
    workers: String,
}

/// The estimate made before the run started.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EstimateSummary {
    /// When it was recorded (RFC 3339, UTC).
    pub recorded_at: String,
    /// The plan's projected duration, in seconds.
    pub projected_seconds: f64,
    /// The low end of the range.
    pub low_seconds: f64,
    /// The high end of the range.
    pub high_seconds: f64,
}

/// One step's durations and counts.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StepReport {
    /// The step's name.
    pub name: String,
    /// `pending`, `running`, `done` or `failed`.
    pub state: String,
    /// Why it failed, with the key range and the database's code.
    pub error: Option<String>,
    /// When it started (RFC 3339, UTC); `null` before.
    pub started_at: Option<String>,
    /// When it ended; `null` before.
    pub finished_at: Option<String>,
    /// From start to end (or to when the report was made), in seconds.
    pub duration_seconds: Option<f64>,
    /// Rows of the done batches (rows matching `where`, for a chunked step).
    pub rows: i64,
    /// Rows the statements reported as changed.
    pub rows_affected: i64,
    /// The step's row count when it started; `null` until counted.
    pub rows_total_estimate: Option<i64>,
    /// `rows` over `duration_seconds`.
    pub rows_per_second: Option<f64>,
    /// Batches done.
    pub batches: i64,
    /// Batches failed for good.
    pub batches_failed: i64,
    /// Failed attempts that were tried again.
    pub retries: i64,
    /// Rows a transform skipped (see `godwit dead-letters`).
    pub rows_skipped: i64,
    /// The longest time a batch spent in its transaction, in seconds.
    pub longest_batch_seconds: Option<f64>,
    /// The estimate made before the run started; `null` when none was recorded.
    pub estimated_seconds: Option<f64>,
    /// The low end of its range.
    pub estimated_low_seconds: Option<f64>,
    /// The high end of its range.
    pub estimated_high_seconds: Option<f64>,
    /// The workers that took part: the batches each finished and their rows.
    pub workers: Vec<WorkerShare>,
    /// How the step's ETA moved while it ran: at regular times, the rows left over the
    /// recent rate, beside the time it really took from there.
    pub eta_history: Vec<EtaMark>,
    #[serde(skip)]
    started_ms: Option<i64>,
    #[serde(skip)]
    finished_ms: Option<i64>,
}

/// The ETA a step had at one time.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EtaMark {
    /// When (RFC 3339, UTC).
    pub at: String,
    /// Seconds since the run started.
    pub at_seconds: f64,
    /// Rows left then.
    pub rows_left: i64,
    /// The recent rate then.
    pub rows_per_second: f64,
    /// Seconds left at that rate; `null` when nothing had finished in the rate window.
    pub eta_seconds: Option<f64>,
    /// Seconds the step really took from then on; `null` while it goes on.
    pub actual_seconds_left: Option<f64>,
}

/// Rows per second of one step in one bucket of time.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ThroughputMark {
    /// The step's name.
    pub step: String,
    /// Where the bucket starts, or the step if it started later (RFC 3339, UTC).
    pub at: String,
    /// The same in seconds since the run started.
    pub at_seconds: f64,
    /// How long the step ran in the bucket, in seconds.
    pub span_seconds: f64,
    /// Rows of the batches done in the bucket over the time the step ran in it.
    pub rows_per_second: f64,
}

/// The report of the run named `run`, read from `store`; `None` when no such run is stored.
///
/// # Errors
/// Database errors.
pub async fn build(store: &StateStore, run: &str) -> Result<Option<Report>> {
    let Some(timings) = store.run_timings(run).await? else {
        return Ok(None);
    };
    // The estimate made for this run: before it started (a run only submitted has not).
    let estimate = store
        .estimate_before(run, timings.started_ms.unwrap_or(i64::MAX))
        .await?;
    let throughput = store.throughput(run).await?;
    let etas = store.eta_history(run).await?;
    let clock = Clock {
        started_ms: timings.started_ms,
        finished_ms: timings.finished_ms,
        now_ms: timings.now_ms,
    };
    let steps = timings
        .steps
        .iter()
        .map(|step| {
            let eta = etas
                .iter()
                .find(|e| e.step == step.name)
                .map_or(&[][..], |e| &e.points[..]);
            step_report(step, estimate.as_ref(), eta, &clock)
        })
        .collect();
    Ok(Some(Report {
        plan: timings.plan,
        state: timings.state,
        error: timings.error,
        started_at: clock.started_ms.map(text::timestamp),
        finished_at: clock.finished_ms.map(text::timestamp),
        duration_seconds: clock.started_ms.map(|s| seconds(clock.end_ms() - s)),
        estimated_seconds: estimate.as_ref().map(|e| e.estimate.projected_seconds),
        estimate: estimate.as_ref().map(|e| EstimateSummary {
            recorded_at: text::timestamp(e.recorded_ms),
            projected_seconds: e.estimate.projected_seconds,
            low_seconds: e.estimate.low_seconds,
            high_seconds: e.estimate.high_seconds,
        }),
        generated_at: text::timestamp(clock.now_ms),
        throughput: throughput_marks(&throughput, &timings.steps, &clock),
        throughput_bucket_seconds: throughput.bucket_seconds,
        steps,
        clock,
    }))
}

/// The report as JSON text (indented).
pub fn json(report: &Report) -> String {
    serde_json::to_string_pretty(report).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

fn step_report(
    step: &StepTimings,
    estimate: Option<&RecordedEstimate>,
    eta: &[godwit_state::EtaPoint],
    clock: &Clock,
) -> StepReport {
    let planned = estimate.and_then(|e| e.estimate.steps.iter().find(|s| s.name == step.name));
    let duration_ms = step
        .started_ms
        .map(|s| step.finished_ms.unwrap_or(clock.now_ms) - s);
    let run_start = clock.started_ms.or(step.started_ms).unwrap_or_default();
    StepReport {
        name: step.name.clone(),
        state: step.state.clone(),
        error: step.error.clone(),
        started_at: step.started_ms.map(text::timestamp),
        finished_at: step.finished_ms.map(text::timestamp),
        duration_seconds: duration_ms.map(seconds),
        rows: step.rows,
        rows_affected: step.rows_affected,
        rows_total_estimate: step.rows_total_estimate,
        rows_per_second: duration_ms
            .filter(|&ms| ms > 0)
            .map(|ms| round1(step.rows as f64 * 1000.0 / ms as f64)),
        batches: step.batches,
        batches_failed: step.batches_failed,
        retries: step.retries,
        rows_skipped: step.rows_skipped,
        longest_batch_seconds: step.longest_batch_ms.map(seconds),
        estimated_seconds: planned.map(|p| p.projected_seconds),
        estimated_low_seconds: planned.map(|p| p.low_seconds),
        estimated_high_seconds: planned.map(|p| p.high_seconds),
        workers: step.workers.clone(),
        eta_history: eta
            .iter()
            .map(|p| EtaMark {
                at: text::timestamp(p.at_ms),
                at_seconds: seconds(p.at_ms - run_start),
                rows_left: p.rows_left,
                rows_per_second: p.rows_per_second,
                eta_seconds: p.eta_seconds,
                actual_seconds_left: p.actual_seconds_left,
            })
            .collect(),
        started_ms: step.started_ms,
        finished_ms: step.finished_ms,
    }
}

/// Each bucket's rows over the part of it the step ran in: the first and last bucket of a
/// step are partly before its start or after its end, and would otherwise read as a dip.
fn throughput_marks(
    throughput: &Throughput,
    steps: &[StepTimings],
    clock: &Clock,
) -> Vec<ThroughputMark> {
    let bucket_ms = (throughput.bucket_seconds * 1000.0).round() as i64;
    let run_start = clock.started_ms.unwrap_or_default();
    throughput
        .points
        .iter()
        .map(|p| {
            let step = steps.iter().find(|s| s.name == p.step);
            let from = step
                .and_then(|s| s.started_ms)
                .map_or(p.at_ms, |s| s.max(p.at_ms));
            let to = step
                .and_then(|s| s.finished_ms)
                .unwrap_or(clock.now_ms)
                .min(p.at_ms + bucket_ms);
            let span_ms = if to > from { to - from } else { bucket_ms };
            ThroughputMark {
                step: p.step.clone(),
                at: text::timestamp(from),
                at_seconds: seconds(from - run_start),
                span_seconds: seconds(span_ms),
                rows_per_second: round1(p.rows as f64 * 1000.0 / span_ms.max(1) as f64),
            }
        })
        .collect()
}

/// Milliseconds as seconds (exact to the millisecond).
fn seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run of two steps that started at 12:00:00 UTC: `customers` done in 40 s against an
    /// estimate of 41 s, then `orders|archive` (a name that would break a Markdown table)
    /// failed with an error that would be markup if written as it is.
    pub(crate) fn sample() -> Report {
        let t0 = 1_700_000_000_000;
        let eta = |at: i64, eta: Option<f64>| EtaMark {
            at: text::timestamp(t0 + at * 1000),
            at_seconds: at as f64,
            rows_left: 1000 - at * 10,
            rows_per_second: 10.0,
            eta_seconds: eta,
            actual_seconds_left: Some(40.0 - at as f64),
        };
        let step = |name: &str, state: &str, from: i64, to: i64| StepReport {
            name: name.into(),
            state: state.into(),
            error: None,
            started_at: Some(text::timestamp(t0 + from * 1000)),
            finished_at: Some(text::timestamp(t0 + to * 1000)),
            duration_seconds: Some((to - from) as f64),
            rows: 666_666,
            rows_affected: 666_000,
            rows_total_estimate: Some(666_666),
            rows_per_second: Some(16_750.4),
            batches: 667,
            batches_failed: 0,
            retries: 1,
            rows_skipped: 3,
            longest_batch_seconds: Some(0.41),
            estimated_seconds: None,
            estimated_low_seconds: None,
            estimated_high_seconds: None,
            workers: vec![WorkerShare {
                worker: "host-a:42:ab12".into(),
                batches: 667,
                rows: 666_666,
            }],
            eta_history: Vec::new(),
            started_ms: Some(t0 + from * 1000),
            finished_ms: Some(t0 + to * 1000),
        };
        let mut customers = step("customers", "done", 0, 40);
        customers.estimated_seconds = Some(41.0);
        customers.eta_history = (1..40)
            .map(|s| eta(s, (s != 20).then_some(40.0 - s as f64)))
            .collect();
        let mut orders = step("orders|archive", "failed", 40, 45);
        orders.error = Some("<script>alert(1)</script> | *boom*".into());
        let throughput = (0..45)
            .map(|s| ThroughputMark {
                step: if s < 40 {
                    "customers"
                } else {
                    "orders|archive"
                }
                .into(),
                at: text::timestamp(t0 + s * 1000),
                at_seconds: s as f64,
                span_seconds: 1.0,
                rows_per_second: 16_000.0 + (s % 7) as f64 * 100.0,
            })
            .collect();
        Report {
            plan: "vn-phones".into(),
            state: "failed".into(),
            error: Some("step \"orders|archive\" failed".into()),
            started_at: Some(text::timestamp(t0)),
            finished_at: Some(text::timestamp(t0 + 45_000)),
            duration_seconds: Some(45.0),
            estimated_seconds: Some(50.0),
            estimate: Some(EstimateSummary {
                recorded_at: text::timestamp(t0 - 60_000),
                projected_seconds: 50.0,
                low_seconds: 44.0,
                high_seconds: 57.5,
            }),
            generated_at: text::timestamp(t0 + 50_000),
            steps: vec![customers, orders],
            throughput,
            throughput_bucket_seconds: 1.0,
            clock: Clock {
                started_ms: Some(t0),
                finished_ms: Some(t0 + 45_000),
                now_ms: t0 + 50_000,
            },
        }
    }

    #[test]
    fn json_has_the_contract_fields() {
        let json: serde_json::Value = serde_json::from_str(&json(&sample())).expect("JSON");
        assert_eq!(json["plan"], "vn-phones");
        assert_eq!(json["state"], "failed");
        assert_eq!(json["started_at"], "2023-11-14T22:13:20.000Z");
        assert_eq!(json["duration_seconds"], 45.0);
        let step = &json["steps"][0];
        for field in [
            "name",
            "duration_seconds",
            "rows",
            "rows_per_second",
            "batches",
            "retries",
            "rows_skipped",
            "longest_batch_seconds",
            "estimated_seconds",
        ] {
            assert!(step.get(field).is_some(), "no {field} in {step}");
        }
        assert_eq!(step["estimated_seconds"], 41.0);
        assert!(json["steps"][1]["estimated_seconds"].is_null());
        assert_eq!(step["eta_history"][0]["eta_seconds"], 39.0);
        assert!(step["eta_history"][19]["eta_seconds"].is_null());
    }

    #[test]
    fn markdown_is_one_table_row_per_step() {
        let md = markdown(&sample());
        let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| ")).collect();
        // The header, its rule and the two steps.
        assert_eq!(rows.len(), 4, "{md}");
        // Unescaped pipes delimit cells: every row has as many as the header.
        let cells = |l: &str| l.replace("\\|", "").matches('|').count();
        assert!(rows.iter().all(|r| cells(r) == cells(rows[0])), "{md}");
        assert!(rows[2].starts_with("| customers | done | 22:13:20 | 22:14:00 | 40.0 s | 41.0 s (−2%) | 666,666 | 16,750 | 667 | 1 | 3 | 0.41 s | 1 |"), "{md}");
        assert!(md.contains("orders\\|archive"), "{md}");
        assert!(
            md.contains("Estimated beforehand: 50.0 s (44.0 s – 57.5 s)"),
            "{md}"
        );
        assert!(!md.contains("<script>"), "{md}");
    }

    #[test]
    fn html_is_self_contained_and_escaped() {
        let page = html(&sample());
        for fetching in [
            "src=", "href=", "url(", "@import", "http:", "https:", "<script", "<link",
        ] {
            assert!(!page.contains(fetching), "the page holds {fetching:?}");
        }
        assert!(page.contains("default-src 'none'"));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert_eq!(page.matches("<svg").count(), page.matches("</svg>").count());
        // The throughput chart: one line per step with a point per second of it.
        assert!(page.contains("class=\"series\" data-step=\"customers\" data-points=\"40\""));
        // The ETA chart breaks where the rate was unknown, and draws the actual time left.
        let eta = &page[page.find("chart eta").expect("an ETA chart")..];
        let line = &eta[eta.find("eta-line").expect("the ETA line")..];
        let d = &line[line.find(" d=\"").expect("a path") + 4..];
        let d = &d[..d.find('"').expect("path end")];
        assert_eq!(d.matches('M').count(), 2, "{d}");
        assert_eq!(d.matches('L').count(), 36, "{d}");
        assert!(eta.contains("class=\"actual\""));
    }
}
