//! `godwit estimate PLAN [--sample N] [--threshold DUR] [--json]`: the projection as a table or
//! the contract's JSON object, the go/no-go, and its exit code (0 go or no threshold, 3 no-go,
//! 1 when a sampled batch fails, 2 for an invalid plan).

use std::time::Duration;

use godwit::plan::Plan;
use godwit::state::Estimate;
use godwit::{DryRunOutcome, Estimated};
use serde_json::{json, Value as Json};

use crate::args::EstimateArgs;
use crate::commands::{run_failed_to_start, watch_signals};
use crate::exit;
use crate::progress::thousands;
use crate::target::load;

pub(crate) async fn estimate(args: EstimateArgs) -> anyhow::Result<u8> {
    let plan = match load(&args.plan) {
        Ok(plan) => plan,
        Err(code) => return Ok(code),
    };
    let (stop, signal) = godwit::stop_pair();
    watch_signals(stop, args.json, Duration::from_secs(5));
    if !args.json {
        eprintln!(
            "estimating {:?}: rehearsing {} batches per step, each rolled back…",
            plan.name, args.sample
        );
    }
    let options = godwit::EstimateOptions {
        sample: args.sample as usize,
        concurrency: args.concurrency.map(|n| n as usize),
    };
    let estimated = match godwit::estimate(&plan, options, signal).await {
        Ok(estimated) => estimated,
        Err(e) => return Ok(run_failed_to_start(&plan.path, &e)),
    };
    match &estimated.outcome {
        DryRunOutcome::Done => {}
        DryRunOutcome::Failed(failure) => {
            eprintln!("error: {}: {failure}", plan.path.display());
            return Ok(exit::FAILED);
        }
        DryRunOutcome::Stopped => {
            eprintln!("stopped before the sample was rehearsed: no estimate");
            return Ok(exit::STOPPED);
        }
    }
    let threshold = args.threshold.or(plan.expect_max_duration);
    let verdict = threshold.map(|t| {
        if estimated.estimate.projected_seconds <= t.as_secs_f64() {
            "go"
        } else {
            "no-go"
        }
    });
    if !args.no_record {
        if let Err(e) = godwit::record_estimate(&plan, &estimated.estimate).await {
            eprintln!(
                "warning: the estimate could not be kept in the state database ({e}); `godwit report` will not show it"
            );
        }
    }
    if args.json {
        outln!("{}", to_json(&plan, &estimated, threshold, verdict));
    } else {
        print_table(&plan, &estimated, threshold, verdict);
    }
    Ok(match verdict {
        Some("no-go") => exit::NO_GO,
        _ => exit::DONE,
    })
}

/// The contract's object, with the notes besides.
fn to_json(
    plan: &Plan,
    estimated: &Estimated,
    threshold: Option<Duration>,
    verdict: Option<&str>,
) -> Json {
    let Estimate {
        projected_seconds,
        low_seconds,
        high_seconds,
        steps,
    } = &estimated.estimate;
    let steps: Vec<Json> = steps
        .iter()
        .map(|s| {
            let notes: Vec<&str> = estimated
                .notes
                .iter()
                .filter(|(step, _)| *step == s.name)
                .map(|(_, n)| n.as_str())
                .collect();
            json!({
                "name": s.name,
                "projected_seconds": s.projected_seconds,
                "low_seconds": s.low_seconds,
                "high_seconds": s.high_seconds,
                "rows_estimate": s.rows_estimate,
                "sampled_batches": s.sampled_batches,
                "notes": notes,
            })
        })
        .collect();
    json!({
        "plan": plan.name,
        "projected_seconds": projected_seconds,
        "low_seconds": low_seconds,
        "high_seconds": high_seconds,
        "threshold_seconds": threshold.map(|t| t.as_secs_f64()),
        "verdict": verdict,
        "estimated_in_seconds": (estimated.took.as_secs_f64() * 1000.0).round() / 1000.0,
        "steps": steps,
    })
}

fn print_table(
    plan: &Plan,
    estimated: &Estimated,
    threshold: Option<Duration>,
    verdict: Option<&str>,
) {
    let e = &estimated.estimate;
    outln!(
        "{:<24} {:>14} {:>8} {:>12} {:>20}",
        "step",
        "rows",
        "sampled",
        "projected",
        "range"
    );
    for s in &e.steps {
        outln!(
            "{:<24} {:>14} {:>8} {:>12} {:>20}",
            s.name,
            s.rows_estimate.map(thousands).unwrap_or_else(|| "-".into()),
            s.sampled_batches.unwrap_or(0),
            human(s.projected_seconds),
            format!("{} – {}", human(s.low_seconds), human(s.high_seconds)),
        );
    }
    for (step, note) in &estimated.notes {
        outln!("note: step {step:?}: {note}");
    }
    outln!(
        "plan {:?}: about {} ({} – {}), estimated in {}",
        plan.name,
        human(e.projected_seconds),
        human(e.low_seconds),
        human(e.high_seconds),
        human(estimated.took.as_secs_f64())
    );
    if let (Some(t), Some(v)) = (threshold, verdict) {
        outln!("threshold {}: {v}", human(t.as_secs_f64()));
    }
}

/// 41.2s, 12m 5s, 3h 20m.
fn human(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, _) => format!("{seconds:.1}s"),
        (0, m, sec) => format!("{m}m {sec}s"),
        (h, m, _) => format!("{h}h {m}m"),
    }
}
