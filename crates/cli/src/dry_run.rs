//! `godwit run PLAN --dry-run`: the flags it refuses, its progress on stderr, its report on
//! stdout (or JSON lines), and its exit code.
//!
//! `--json` prints one JSON object per line: `step_started`, `step_progress` (at most one a
//! second per step), `batch_retry`, `step_throttled`, `step_rehearsed` (a step's whole result)
//! and, last, `dry_run_done`, which holds every step's result again, so that a script may read
//! only the last line.

use std::time::Duration;

use godwit::plan::{Plan, StepKind};
use godwit::{DryRun, DryRunEvent, DryRunOutcome, Rehearsed, StepRehearsal};
use serde_json::{json, Value as Json};

use crate::args::RunArgs;
use crate::commands::{run_failed_to_start, stop_after, watch_signals};
use crate::exit;
use crate::progress::{thousands, Mode};

/// How often a progress line is printed at most, per step, on stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Rehearses `plan` as `args` ask and returns the exit code: 0 when the rehearsal went
/// through, 1 when a batch failed, 2 when the plan or the command line is invalid, 75 when
/// stopped with steps left.
pub(crate) async fn dry_run(plan: &Plan, args: &RunArgs, mode: Mode) -> anyhow::Result<u8> {
    if let Some(refused) = refused_flag(args) {
        eprintln!("error: {refused}");
        return Ok(exit::INVALID);
    }
    let stored = stored_run(plan).await;
    if let (Some(state), Mode::Human | Mode::Plain) = (&stored, mode) {
        eprintln!(
            "note: the run {:?} is stored as {state}; a dry run neither reads nor changes its \
             progress: it rehearses every step from its first key, as `godwit run --restart` \
             would run them",
            plan.name
        );
    }
    let (stop, signal) = godwit::stop_pair();
    watch_signals(stop.clone(), mode == Mode::Quiet, args.work.grace);
    stop_after(&stop, args.max_duration);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let printer = tokio::spawn(print_events(mode, rx, plan.clone()));
    let options = godwit::DryRunOptions {
        concurrency: args.concurrency.map(|n| n as usize),
        sample: None,
    };
    let rehearsal = godwit::dry_run(plan, options, signal, move |event| {
        let _ = tx.send(event);
    })
    .await;
    let _ = printer.await;
    let rehearsal = match rehearsal {
        Ok(rehearsal) => rehearsal,
        Err(e) => return Ok(run_failed_to_start(&plan.path, &e)),
    };
    match mode {
        Mode::Json => outln!("{}", done_json(plan, &rehearsal, stored.as_deref())),
        Mode::Human | Mode::Plain => print_report(plan, &rehearsal),
        Mode::Quiet => {}
    }
    Ok(match &rehearsal.outcome {
        DryRunOutcome::Done => exit::DONE,
        DryRunOutcome::Failed(failure) => {
            eprintln!("error: {}: {failure}", plan.path.display());
            exit::FAILED
        }
        DryRunOutcome::Stopped => {
            if mode != Mode::Quiet && mode != Mode::Json {
                eprintln!(
                    "stopped after {:.1}s with steps left; a dry run does not resume: run it again to rehearse from the start",
                    rehearsal.duration.as_secs_f64()
                );
            }
            exit::STOPPED
        }
    })
}

/// A flag of `run` that means nothing in a dry run, with why: refused rather than ignored.
fn refused_flag(args: &RunArgs) -> Option<&'static str> {
    if args.restart {
        return Some(
            "--restart cannot be used with --dry-run: --restart forgets a run's stored progress, and a dry run reads and writes none (it always rehearses every step from its first key)",
        );
    }
    if args.work.metrics.is_some() {
        return Some(
            "--metrics cannot be used with --dry-run: the metrics count a run's committed rows and batches, and a dry run commits none; its counts are in its report (--json for a machine)",
        );
    }
    None
}

/// The state of the plan's stored run, if one is stored: read only, so that the dry run can
/// say it leaves that run alone. Nothing is created when there are no state tables.
async fn stored_run(plan: &Plan) -> Option<String> {
    match godwit::status(plan).await {
        Ok(status) => status.map(|s| s.state.as_str().to_string()),
        Err(e) => {
            tracing::debug!(error = %e, "could not read the plan's stored run");
            None
        }
    }
}

/// Prints the rehearsal's events as they come: JSON lines, or a progress line on stderr now
/// and then.
async fn print_events(
    mode: Mode,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<DryRunEvent>,
    plan: Plan,
) {
    let mut printed: std::collections::HashMap<String, std::time::Instant> = Default::default();
    while let Some(event) = rx.recv().await {
        if mode == Mode::Json {
            outln!("{}", event_json(&plan, &event));
            continue;
        }
        if mode == Mode::Quiet {
            continue;
        }
        match &event {
            DryRunEvent::StepStarted { step } => {
                eprintln!("rehearsing {step:?}");
                printed.insert(step.clone(), std::time::Instant::now());
            }
            DryRunEvent::Progress {
                step,
                batches,
                rows_matched,
                rows_changed,
            } => {
                let due = printed
                    .get(step)
                    .is_none_or(|at| at.elapsed() >= PROGRESS_EVERY);
                if due {
                    eprintln!(
                        "  {step}: {} batches, {} rows, {} would change so far",
                        thousands(*batches as i64),
                        thousands(*rows_matched),
                        thousands(*rows_changed as i64)
                    );
                    printed.insert(step.clone(), std::time::Instant::now());
                }
            }
            DryRunEvent::BatchRetry { error, delay, .. } => {
                eprintln!("retrying in {:.1}s: {error}", delay.as_secs_f64());
            }
            DryRunEvent::StepThrottled { step, reason } => {
                eprintln!("  {step}: waiting: {reason}");
            }
            DryRunEvent::StepEnded(_) => {}
        }
    }
}

fn event_json(plan: &Plan, event: &DryRunEvent) -> Json {
    match event {
        DryRunEvent::StepStarted { step } => json!({"event": "step_started", "step": step}),
        DryRunEvent::Progress {
            step,
            batches,
            rows_matched,
            rows_changed,
        } => json!({
            "event": "step_progress", "step": step, "batches": batches,
            "rows_matched": rows_matched, "rows_changed": rows_changed,
        }),
        DryRunEvent::BatchRetry { step, error, delay } => json!({
            "event": "batch_retry", "step": step, "error": error,
            "delay_seconds": delay.as_secs_f64(),
        }),
        DryRunEvent::StepThrottled { step, reason } => {
            json!({"event": "step_throttled", "step": step, "reason": reason})
        }
        DryRunEvent::StepEnded(step) => {
            let mut object = step_json(plan, step);
            object["event"] = "step_rehearsed".into();
            object
        }
    }
}

/// The last JSON line: the whole rehearsal.
fn done_json(plan: &Plan, rehearsal: &DryRun, stored: Option<&str>) -> Json {
    let (outcome, error) = match &rehearsal.outcome {
        DryRunOutcome::Done => ("done", None),
        DryRunOutcome::Failed(failure) => ("failed", Some(failure.message())),
        DryRunOutcome::Stopped => ("stopped", None),
    };
    let steps: Vec<Json> = rehearsal.steps.iter().map(|s| step_json(plan, s)).collect();
    json!({
        "event": "dry_run_done", "plan": rehearsal.plan, "database": rehearsal.database,
        "outcome": outcome, "error": error, "stored_run": stored,
        "seconds": rehearsal.duration.as_secs_f64(), "steps": steps,
    })
}

/// A step's result as JSON: its state (`rehearsed`, `not_rehearsed`, `failed`, `stopped`,
/// `not_started`), why when it was not rehearsed or failed, and its counts.
fn step_json(plan: &Plan, step: &StepRehearsal) -> Json {
    let (state, reason, code) = match &step.ended {
        Rehearsed::Done => ("rehearsed", None, None),
        Rehearsed::NotRehearsed(why) => ("not_rehearsed", Some(why.as_str()), None),
        Rehearsed::Failed(failure) => ("failed", Some(failure.message()), failure.code()),
        Rehearsed::Stopped => ("stopped", None, None),
        Rehearsed::NotStarted => ("not_started", None, None),
    };
    let parsed = |text: &str| serde_json::from_str::<Json>(text).unwrap_or_else(|_| text.into());
    let examples: Vec<Json> = step
        .examples
        .iter()
        .map(|e| json!({"key": e.key, "before": parsed(&e.before), "after": parsed(&e.after)}))
        .collect();
    let set_aside: Vec<Json> = step
        .set_aside
        .iter()
        .map(|l| json!({"key": l.key, "error": l.error, "row": parsed(&l.row)}))
        .collect();
    json!({
        "step": step.name, "kind": step.kind, "state": state, "reason": reason, "code": code,
        "statement": one_off_sql(plan, &step.name),
        "batches": step.batches, "rows_matched": step.rows_matched,
        "rows_changed": step.rows_changed, "rows_set_aside": step.rows_set_aside,
        "seconds": step.duration.as_secs_f64(),
        "longest_batch_seconds": step.longest_batch.as_secs_f64(),
        "examples": examples, "set_aside": set_aside, "notes": step.notes,
    })
}

/// The statement of the plan's one-off step `name`.
fn one_off_sql<'a>(plan: &'a Plan, name: &str) -> Option<&'a str> {
    plan.steps
        .iter()
        .find(|s| s.name == name)
        .and_then(|s| match &s.kind {
            StepKind::Once { sql } => Some(sql.as_str()),
            _ => None,
        })
}

/// The report for people, on stdout.
fn print_report(plan: &Plan, rehearsal: &DryRun) {
    outln!(
        "dry run of {:?} on {}: every batch was rolled back; no data and no progress were written",
        rehearsal.plan,
        rehearsal.database
    );
    for step in &rehearsal.steps {
        print_step(plan, step);
    }
    let verdict = match rehearsal.outcome {
        DryRunOutcome::Done => "rehearsed",
        DryRunOutcome::Failed(_) => "failed",
        DryRunOutcome::Stopped => "stopped",
    };
    outln!(
        "{verdict} in {:.1}s; each step saw the data as it is now, not as the steps before it would leave it",
        rehearsal.duration.as_secs_f64()
    );
}

fn print_step(plan: &Plan, step: &StepRehearsal) {
    let head = format!("{} [{}]", step.name, step.kind);
    if let Some(sql) = one_off_sql(plan, &step.name) {
        outln!("{head}: would run: {}", one_line(sql));
        match &step.ended {
            Rehearsed::Done => outln!(
                "  rehearsed: {} rows affected, rolled back ({:.1}s)",
                thousands(step.rows_changed as i64),
                step.duration.as_secs_f64()
            ),
            other => print_ended(other),
        }
    } else {
        match &step.ended {
            Rehearsed::Done | Rehearsed::Stopped | Rehearsed::Failed(_) => {
                outln!("{head}: {}", counts(step));
                print_ended(&step.ended);
            }
            other => {
                outln!("{head}:");
                print_ended(other);
            }
        }
    }
    for e in &step.examples {
        outln!("  e.g. key {}: {} -> {}", e.key, e.before, e.after);
    }
    for l in &step.set_aside {
        outln!("  set aside: key {}: {}", l.key, l.error);
    }
    if step.rows_set_aside > step.set_aside.len() as u64 {
        outln!(
            "  set aside: {} more",
            thousands((step.rows_set_aside - step.set_aside.len() as u64) as i64)
        );
    }
    for note in &step.notes {
        outln!("  note: {note}");
    }
}

/// How a step ended, when it did not end rehearsed.
fn print_ended(ended: &Rehearsed) {
    match ended {
        Rehearsed::Done => {}
        Rehearsed::NotRehearsed(why) => outln!("  not rehearsed because {why}"),
        Rehearsed::Failed(failure) => outln!("  failed: {failure}"),
        Rehearsed::Stopped => outln!("  stopped before its last batch: the counts are partial"),
        Rehearsed::NotStarted => outln!("  not rehearsed: the dry run ended before this step"),
    }
}

/// A step's counts: rows in its batches' ranges, what would change, what would be set aside.
fn counts(step: &StepRehearsal) -> String {
    let batches = match step.batches {
        1 => "1 batch".to_string(),
        n => format!("{} batches", thousands(n as i64)),
    };
    let rows = thousands(step.rows_matched);
    let changed = thousands(step.rows_changed as i64);
    let mut line = if step.kind == "copy" {
        format!("{rows} source rows in {batches}; {changed} would be written")
    } else {
        format!("{rows} rows in {batches}; {changed} would change")
    };
    if step.rows_set_aside > 0 {
        line.push_str(&format!(
            ", {} would be set aside",
            thousands(step.rows_set_aside as i64)
        ));
    }
    line.push_str(&format!(
        " ({:.1}s, longest batch {:.2}s)",
        step.duration.as_secs_f64(),
        step.longest_batch.as_secs_f64()
    ));
    line
}

/// `sql` on one line, white space folded, for the report.
fn one_line(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}
