//! Progress output: bars on a terminal, a plain line every few seconds otherwise, JSON events
//! with `--json`, nothing but errors with `--quiet`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use godwit::state::{RecentRate, RunSettings, RunStatus, StepStatus};
use godwit::{Event, RunError, RunOutcome};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

/// How often a plain progress line is printed when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);
/// At most one `batch_done` JSON event per step this often; the others are counted in it.
const JSON_BATCH_EVERY: Duration = Duration::from_secs(1);
/// How often the bars' rate and ETA are computed again between batches.
const BAR_REFRESH_EVERY: Duration = Duration::from_secs(1);

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
    /// This process's batches of the last 30 seconds, which the rate and ETA shown come
    /// from (as `status` takes them from every worker's): not indicatif's own estimate, nor
    /// the average since the start, which lags behind a run that slows down or speeds up.
    recent: RecentRate,
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
            let origin = Instant::now();
            let mut tick = tokio::time::interval(PLAIN_EVERY);
            tick.tick().await;
            // The bars' rate and ETA age between batches too: a step that stalls must not
            // keep showing the rate it had.
            let mut refresh = tokio::time::interval(BAR_REFRESH_EVERY);
            loop {
                tokio::select! {
                    event = rx.recv() => match event {
                        Some(event) => handle(mode, &multi, &mut steps, &mut order, event, ms_since(origin)),
                        None => break,
                    },
                    _ = tick.tick() => {
                        if mode == Mode::Plain {
                            let now_ms = ms_since(origin);
                            for name in &order {
                                if let Some(p) = steps.get_mut(name).filter(|p| !p.done) {
                                    eprintln!("{}", plain_line(name, p, now_ms));
                                }
                            }
                        }
                    }
                    _ = refresh.tick(), if mode == Mode::Human => {
                        let now_ms = ms_since(origin);
                        for p in steps.values_mut().filter(|p| !p.done) {
                            p.refresh_bar(now_ms);
                        }
                    }
                    _ = &mut stopped => {
                        while let Ok(event) = rx.try_recv() {
                            handle(mode, &multi, &mut steps, &mut order, event, ms_since(origin));
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

impl StepProgress {
    /// Counts a batch of `rows` that ended at `now_ms` (on the renderer's clock) after
    /// `duration`.
    fn batch_done(&mut self, rows: i64, duration: Duration, now_ms: i64) {
        self.rows_done += rows;
        self.batches += 1;
        let took = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        self.recent
            .record(now_ms.saturating_sub(took), now_ms, rows);
    }

    /// The recent rate at `now_ms`, and the ETA it gives for the rows left of the step's
    /// count (`None` before the rows are counted, or with no batch done in the window).
    fn projection(&mut self, now_ms: i64) -> (f64, Option<f64>) {
        let rate = self.recent.rows_per_second(now_ms);
        let eta = self
            .rows_total
            .and_then(|total| godwit::state::eta_seconds(total - self.rows_done, rate));
        (rate, eta)
    }

    /// Writes the rate and ETA at `now_ms` into the bar, if there is one.
    fn refresh_bar(&mut self, now_ms: i64) {
        let (rate, eta) = self.projection(now_ms);
        if let Some(bar) = &self.bar {
            let mut message = format!("{} rows/s", thousands(rate as i64));
            if self.rows_total.is_some() {
                message.push_str(&format!("  ETA {}", eta.map_or("?".to_string(), eta_text)));
            }
            bar.set_message(message);
        }
    }
}

/// Milliseconds since `origin`, the renderer's clock for rates.
fn ms_since(origin: Instant) -> i64 {
    i64::try_from(origin.elapsed().as_millis()).unwrap_or(i64::MAX)
}

/// An ETA for people: `45s`, `12m 05s`, `2h 03m`.
fn eta_text(seconds: f64) -> String {
    let s = seconds.round() as u64;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{}h {:02}m", s / 3600, s / 60 % 60)
    }
}

fn plain_line(name: &str, p: &mut StepProgress, now_ms: i64) -> String {
    let (r, eta) = p.projection(now_ms);
    match p.rows_total {
        Some(total) if total > 0 => {
            let eta = eta.map_or(String::new(), |e| format!(", ETA {e:.0}s"));
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

/// The bar's look: a bar with the rate and ETA once the step's rows are counted, a counter
/// until then. Both come in the message ([`StepProgress::refresh_bar`]), not from indicatif's
/// `{eta}` and `{per_sec}`, so that the bars project as `status` does.
fn bar_style(counted: bool) -> ProgressStyle {
    let template = if counted {
        "{prefix:<20} [{bar:30}] {human_pos}/{human_len} rows  {msg}"
    } else {
        "{prefix:<20} {spinner} {human_pos} rows  {msg}  (counting rows…)"
    };
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

fn bar_for(multi: &MultiProgress, name: &str, p: &StepProgress) -> ProgressBar {
    let bar = multi.add(ProgressBar::new(p.rows_total.unwrap_or(0).max(0) as u64));
    bar.set_style(bar_style(p.rows_total.is_some()));
    bar.set_prefix(crate::escape_controls(name).into_owned());
    bar.set_position(p.rows_done.max(0) as u64);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn handle(
    mode: Mode,
    multi: &MultiProgress,
    steps: &mut HashMap<String, StepProgress>,
    order: &mut Vec<String>,
    event: Event,
    now_ms: i64,
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
                ..StepProgress::default()
            };
            if mode == Mode::Human {
                p.bar = Some(bar_for(multi, &step, &p));
                p.refresh_bar(now_ms);
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
                p.refresh_bar(now_ms);
            }
        }
        Event::BatchDone {
            step,
            rows,
            duration,
            ..
        } => {
            if let Some(p) = steps.get_mut(&step) {
                p.batch_done(rows, duration, now_ms);
                if let Some(bar) = &p.bar {
                    bar.inc(rows.max(0) as u64);
                }
                p.refresh_bar(now_ms);
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

/// 1234567 → "1,234,567", as the report writes counts.
pub(crate) use godwit::report::thousands;

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

    /// 60 s at 1,000 rows/s, then 60 s at 250 rows/s: the ETA follows the slower rate at
    /// once the window holds only slow batches, where the average since the start (625
    /// rows/s) would still promise 72 s.
    #[test]
    fn the_eta_follows_the_recent_rate_not_the_average() {
        let mut p = StepProgress {
            rows_total: Some(120_000),
            ..StepProgress::default()
        };
        for s in 1..=60 {
            p.batch_done(1000, Duration::from_secs(1), s * 1000);
        }
        assert_eq!(p.projection(60_000), (1000.0, Some(60.0)));
        for s in 61..=120 {
            p.batch_done(250, Duration::from_secs(1), s * 1000);
        }
        assert_eq!(p.rows_done, 75_000);
        assert_eq!(p.projection(120_000), (250.0, Some(180.0)));
        // Half-way through the slow part the window holds both: the ETA is already later
        // than the fast part's.
        let mut halfway = StepProgress {
            rows_total: Some(120_000),
            ..StepProgress::default()
        };
        for s in 1..=75 {
            halfway.batch_done(
                if s <= 60 { 1000 } else { 250 },
                Duration::from_secs(1),
                s * 1000,
            );
        }
        // The window (from 45 s, inclusive) holds 16 fast batches and 15 slow ones, from
        // the start of the first of them at 44 s.
        let (rate, eta) = halfway.projection(75_000);
        assert_eq!(rate, (16.0 * 1000.0 + 15.0 * 250.0) / 31.0);
        // 56,250 rows left: later than the 60 s the fast part promised 15 s ago.
        assert_eq!(eta, Some(88.3));
        // A stall: no batch in the window, no ETA (the bar shows `?`).
        assert_eq!(p.projection(200_000), (0.0, None));
    }

    #[test]
    fn etas_read_naturally() {
        assert_eq!(eta_text(45.4), "45s");
        assert_eq!(eta_text(725.0), "12m 05s");
        assert_eq!(eta_text(7380.0), "2h 03m");
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
