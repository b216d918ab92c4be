//! Progress output: bars on a terminal, a plain line every few seconds otherwise, JSON events
//! with `--json`, nothing but errors with `--quiet`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use godwit::state::{RunSettings, RunStatus, StepStatus};
use godwit::{Event, RunError, RunOutcome};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

/// How often a plain progress line is printed when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);
/// At most one `batch_done` JSON event per step this often; the others are counted in it.
const JSON_BATCH_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Human,
    Plain,
    Json,
    Quiet,
}

impl Mode {
    pub(crate) fn pick(json: bool, quiet: bool) -> Mode {
        if json {
            Mode::Json
        } else if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() && !crate::logs_as_json() {
            // Bars are no JSON: with `--log-format json` a terminal gets the plain lines.
            Mode::Human
        } else {
            Mode::Plain
        }
    }
}

#[derive(Default)]
struct StepProgress {
    rows_done: i64,
    rows_total: Option<i64>,
    batches: i64,
    started: Option<Instant>,
    rows_at_start: i64,
    bar: Option<ProgressBar>,
    last_json: Option<Instant>,
    unreported_batches: i64,
    unreported_rows: i64,
    unreported_redone: u64,
    done: bool,
}

pub(crate) struct Renderer {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    mode: Mode,
}

impl Renderer {
    pub(crate) fn spawn(mode: Mode, mut rx: mpsc::UnboundedReceiver<Event>) -> Renderer {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let mut steps: HashMap<String, StepProgress> = HashMap::new();
            let mut order: Vec<String> = Vec::new();
            let mut tick = tokio::time::interval(PLAIN_EVERY);
            tick.tick().await;
            loop {
                tokio::select! {
                    event = rx.recv() => match event {
                        Some(event) => handle(mode, &multi, &mut steps, &mut order, event),
                        None => break,
                    },
                    _ = tick.tick() => {
                        if mode == Mode::Plain {
                            for name in &order {
                                if let Some(p) = steps.get(name).filter(|p| !p.done) {
                                    eprintln!("{}", plain_line(name, p));
                                }
                            }
                        }
                    }
                    _ = &mut stopped => {
                        while let Ok(event) = rx.try_recv() {
                            handle(mode, &multi, &mut steps, &mut order, event);
                        }
                        break;
                    }
                }
            }
            for p in steps.values() {
                if let Some(bar) = &p.bar {
                    if !bar.is_finished() {
                        bar.abandon();
                    }
                }
            }
        });
        Renderer { stop, task, mode }
    }

    pub(crate) async fn finish(self, outcome: &Result<RunOutcome, RunError>) {
        let _ = self.stop.send(());
        let _ = self.task.await;
        if self.mode == Mode::Json {
            let (state, error) = match outcome {
                Ok(RunOutcome::Done) | Ok(RunOutcome::AlreadyDone) => ("done", None),
                Ok(RunOutcome::Stopped) => ("stopped", None),
                Ok(RunOutcome::Cancelled) => ("cancelled", None),
                Ok(RunOutcome::Failed(failure)) => ("failed", Some(failure.to_string())),
                Err(e) => ("error", Some(e.to_string())),
            };
            outln!(
                "{}",
                json!({"event": "run_done", "state": state, "error": error})
            );
        }
    }
}

fn rate(p: &StepProgress) -> f64 {
    let secs = p.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    if secs > 0.0 {
        (p.rows_done - p.rows_at_start) as f64 / secs
    } else {
        0.0
    }
}

fn plain_line(name: &str, p: &StepProgress) -> String {
    let r = rate(p);
    match p.rows_total {
        Some(total) if total > 0 => {
            let eta = if r > 0.0 {
                format!(", ETA {:.0}s", (total - p.rows_done).max(0) as f64 / r)
            } else {
                String::new()
            };
            format!(
                "{name}: {}/{} rows ({:.0}%), {} rows/s{eta}",
                thousands(p.rows_done),
                thousands(total),
                p.rows_done as f64 * 100.0 / total as f64,
                thousands(r as i64)
            )
        }
        _ => format!(
            "{name}: {} rows, {} rows/s",
            thousands(p.rows_done),
            thousands(r as i64)
        ),
    }
}

/// The bar's look: a bar with ETA once the step's rows are counted, a counter until then.
fn bar_style(counted: bool) -> ProgressStyle {
    let template = if counted {
        "{prefix:<20} [{bar:30}] {human_pos}/{human_len} rows  {rate}  ETA {eta}"
    } else {
        "{prefix:<20} {spinner} {human_pos} rows  {rate}  (counting rows…)"
    };
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key(
            "rate",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{} rows/s", thousands(state.per_sec() as i64));
            },
        )
        .progress_chars("=> ")
}

fn bar_for(multi: &MultiProgress, name: &str, p: &StepProgress) -> ProgressBar {
    let bar = multi.add(ProgressBar::new(p.rows_total.unwrap_or(0).max(0) as u64));
    bar.set_style(bar_style(p.rows_total.is_some()));
    bar.set_prefix(crate::escape_controls(name).into_owned());
    bar.set_position(p.rows_done.max(0) as u64);
    bar.reset_eta();
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn handle(
    mode: Mode,
    multi: &MultiProgress,
    steps: &mut HashMap<String, StepProgress>,
    order: &mut Vec<String>,
    event: Event,
) {
    if mode == Mode::Json {
        json_event(steps, &event);
    }
    match event {
        Event::RunStarted {
            plan,
            resumed,
            exactly_once,
        } => {
            if mode == Mode::Plain {
                eprintln!(
                    "{} {plan:?} ({})",
                    if resumed { "resuming" } else { "starting" },
                    delivery(exactly_once)
                );
            }
        }
        Event::StepStarted {
            step,
            rows_total,
            rows_done,
        } => {
            let mut p = StepProgress {
                rows_done,
                rows_total,
                rows_at_start: rows_done,
                started: Some(Instant::now()),
                ..StepProgress::default()
            };
            if mode == Mode::Human {
                p.bar = Some(bar_for(multi, &step, &p));
            }
            if mode == Mode::Plain {
                eprintln!("{step}: started");
            }
            if !order.contains(&step) {
                order.push(step.clone());
            }
            steps.insert(step, p);
        }
        Event::StepEstimate { step, rows_total } => {
            if let Some(p) = steps.get_mut(&step) {
                p.rows_total = Some(rows_total);
                if let Some(bar) = &p.bar {
                    bar.set_length(rows_total.max(0) as u64);
                    bar.set_style(bar_style(true));
                }
            }
        }
        Event::BatchDone { step, rows, .. } => {
            if let Some(p) = steps.get_mut(&step) {
                p.rows_done += rows;
                p.batches += 1;
                if let Some(bar) = &p.bar {
                    bar.inc(rows.max(0) as u64);
                }
            }
        }
        Event::BatchRetry { error, delay, .. } => {
            let line = format!("retrying in {:.1}s: {error}", delay.as_secs_f64());
            say(mode, multi, &line);
        }
        Event::StepThrottled { step, reason } => {
            say(mode, multi, &format!("{step}: throttled: {reason}"));
        }
        Event::StepUnthrottled {
            step,
            throttled_for,
        } => {
            let line = format!(
                "{step}: no longer throttled, after {:.1}s",
                throttled_for.as_secs_f64()
            );
            say(mode, multi, &line);
        }
        // Counted by the metrics; the step's failure says the rest.
        Event::BatchStarted { .. } | Event::BatchEnded { .. } | Event::BatchFailed { .. } => {}
        Event::StepDone { step } => {
            if let Some(p) = steps.get_mut(&step) {
                p.done = true;
                if let Some(bar) = &p.bar {
                    let total = p.rows_total.unwrap_or(p.rows_done).max(p.rows_done);
                    bar.set_style(bar_style(true));
                    bar.set_length(total.max(0) as u64);
                    bar.finish();
                }
                if mode == Mode::Plain {
                    eprintln!("{step}: done, {} rows", thousands(p.rows_done));
                }
            }
        }
        Event::StepFailed { step, .. } => {
            if let Some(p) = steps.get_mut(&step) {
                p.done = true;
                if let Some(bar) = &p.bar {
                    bar.abandon();
                }
            }
        }
    }
}

/// Prints a line between the bars, or as a plain line.
fn say(mode: Mode, multi: &MultiProgress, line: &str) {
    match mode {
        Mode::Human => {
            let _ = multi.println(crate::escape_controls(line));
        }
        Mode::Plain => eprintln!("{line}"),
        Mode::Json | Mode::Quiet => {}
    }
}

/// How often each batch is applied, in words.
fn delivery(exactly_once: bool) -> &'static str {
    if exactly_once {
        "exactly-once"
    } else {
        "at-least-once"
    }
}

fn json_event(steps: &mut HashMap<String, StepProgress>, event: &Event) {
    let line = match event {
        Event::RunStarted {
            plan,
            resumed,
            exactly_once,
        } => {
            json!({"event": "run_started", "plan": plan, "resumed": resumed,
                   "delivery": delivery(*exactly_once)})
        }
        Event::StepStarted {
            step,
            rows_total,
            rows_done,
        } => json!({
            "event": "step_started", "step": step, "rows_total_estimate": rows_total, "rows_done": rows_done,
        }),
        Event::StepEstimate { step, rows_total } => {
            json!({"event": "step_estimate", "step": step, "rows_total_estimate": rows_total})
        }
        Event::BatchDone {
            step,
            batch,
            rows,
            rows_affected,
            rows_redone,
            duration,
        } => {
            let Some(p) = steps.get_mut(step) else {
                return;
            };
            p.unreported_batches += 1;
            p.unreported_rows += rows;
            p.unreported_redone += rows_redone;
            let due = p.last_json.is_none_or(|t| t.elapsed() >= JSON_BATCH_EVERY);
            if !due {
                return;
            }
            p.last_json = Some(Instant::now());
            let line = json!({
                "event": "batch_done", "step": step, "batch": batch, "rows": rows,
                "rows_affected": rows_affected, "duration_seconds": duration.as_secs_f64(),
                "batches_since_last": p.unreported_batches, "rows_since_last": p.unreported_rows,
                "rows_redone_since_last": p.unreported_redone, "rows_done": p.rows_done + rows,
            });
            p.unreported_batches = 0;
            p.unreported_rows = 0;
            p.unreported_redone = 0;
            line
        }
        Event::BatchRetry {
            step,
            batch,
            attempt,
            error,
            delay,
        } => json!({
            "event": "batch_retry", "step": step, "batch": batch, "attempt": attempt,
            "error": error, "delay_seconds": delay.as_secs_f64(),
        }),
        Event::BatchFailed { step, batch, error } => json!({
            "event": "batch_failed", "step": step, "batch": batch, "error": error,
        }),
        Event::StepThrottled { step, reason } => {
            json!({"event": "step_throttled", "step": step, "reason": reason})
        }
        Event::StepUnthrottled {
            step,
            throttled_for,
        } => json!({
            "event": "step_unthrottled", "step": step,
            "throttled_seconds": throttled_for.as_secs_f64(),
        }),
        // One per batch, for the metrics: too many for the event stream.
        Event::BatchStarted { .. } | Event::BatchEnded { .. } => return,
        Event::StepDone { step } => {
            let rows = steps.get(step).map_or(0, |p| p.rows_done);
            json!({"event": "step_done", "step": step, "rows_done": rows})
        }
        Event::StepFailed { step, error } => {
            json!({"event": "error", "step": step, "error": error})
        }
    };
    outln!("{line}");
}

/// 1234567 → "1,234,567".
pub(crate) fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The status of a plan whose run was never started.
pub(crate) fn not_started(plan: &godwit::plan::Plan) -> RunStatus {
    RunStatus {
        plan: plan.name.clone(),
        state: "pending".into(),
        error: None,
        elapsed_seconds: 0.0,
        settings: RunSettings::default(),
        workers: Vec::new(),
        steps: plan
            .steps
            .iter()
            .map(|s| StepStatus {
                name: s.name.clone(),
                state: "pending".into(),
                batches_done: 0,
                batches_failed: 0,
                rows_done: 0,
                rows_skipped: 0,
                rows_total_estimate: None,
                rows_per_second: 0.0,
                eta_seconds: None,
                batch_size: None,
                throttled: None,
                error: None,
            })
            .collect(),
    }
}

/// The human form of `godwit status`.
pub(crate) fn status_table(status: &RunStatus) -> String {
    let mut out = format!(
        "{}: {} ({:.1}s)\n",
        status.plan, status.state, status.elapsed_seconds
    );
    if !status.settings.is_empty() {
        out.push_str(&format!(
            "set with `godwit set`: {}\n",
            describe_settings(&status.settings)
        ));
    }
    out.push_str(&format!(
        "{:<24} {:<8} {:>9} {:>23} {:>12} {:>8} {:>10}\n",
        "STEP", "STATE", "BATCHES", "ROWS", "ROWS/S", "ETA", "BATCH SIZE"
    ));
    for s in &status.steps {
        let rows = match s.rows_total_estimate {
            Some(total) => format!("{}/{}", thousands(s.rows_done), thousands(total)),
            None => thousands(s.rows_done),
        };
        let eta = s
            .eta_seconds
            .map_or("-".to_string(), |e| format!("{e:.0}s"));
        let batch_size = s.batch_size.map_or("-".to_string(), thousands);
        out.push_str(&format!(
            "{:<24} {:<8} {:>9} {:>23} {:>12} {:>8} {:>10}\n",
            s.name,
            s.state,
            s.batches_done,
            rows,
            thousands(s.rows_per_second as i64),
            eta,
            batch_size
        ));
        if let Some(reason) = &s.throttled {
            out.push_str(&format!("  throttled: {reason}\n"));
        }
        if s.rows_skipped > 0 {
            out.push_str(&format!(
                "  {} rows skipped by the transform: `godwit dead-letters` lists them\n",
                thousands(s.rows_skipped)
            ));
        }
        if let Some(error) = &s.error {
            out.push_str(&format!("  error: {error}\n"));
        }
    }
    if let Some(error) = &status.error {
        out.push_str(&format!("error: {error}\n"));
    }
    if status.workers.is_empty() && matches!(status.state.as_str(), "pending" | "running") {
        out.push_str("no live worker: start `godwit run PLAN` or `godwit worker` to carry on\n");
    }
    if !status.workers.is_empty() {
        out.push_str(&format!(
            "{:<40} {:<9} {:>9} {:>10}  {}\n",
            "WORKER", "STATE", "IN FLIGHT", "LAST SEEN", "VERSION"
        ));
        for w in &status.workers {
            out.push_str(&format!(
                "{:<40} {:<9} {:>9} {:>9.1}s  {}\n",
                w.worker, w.state, w.batches_in_flight, w.last_seen_seconds, w.version
            ));
        }
    }
    out
}

/// The settings changed with `godwit set`, in words: `concurrency 4, batch size 500`.
pub(crate) fn describe_settings(settings: &RunSettings) -> String {
    let mut parts = Vec::new();
    if let Some(n) = settings.concurrency {
        parts.push(format!("concurrency {n}"));
    }
    if let Some(n) = settings.batch_size {
        parts.push(format!("batch size {}", thousands_u64(n)));
    }
    if let Some(rate) = settings.max_rows_per_second {
        parts.push(format!("at most {rate} rows/s"));
    }
    parts.join(", ")
}

fn thousands_u64(n: u64) -> String {
    i64::try_from(n).map_or_else(|_| n.to_string(), thousands)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(-1234567), "-1,234,567");
    }

    #[test]
    fn describes_settings() {
        let settings = RunSettings {
            concurrency: Some(4),
            batch_size: Some(5000),
            max_rows_per_second: Some(0.5),
        };
        assert_eq!(
            describe_settings(&settings),
            "concurrency 4, batch size 5,000, at most 0.5 rows/s"
        );
        let rate = RunSettings {
            max_rows_per_second: Some(2000.0),
            ..RunSettings::default()
        };
        assert_eq!(describe_settings(&rate), "at most 2000 rows/s");
    }
}
