//! `godwit estimate`: a plan's duration projected from a sample of its batches, rehearsed and
//! rolled back as `run --dry-run` rehearses them (`DryRunOptions::sample`).
//!
//! For each step whose key is walked, about `sample` batches spread evenly over its key range
//! run in waves of `concurrency` side by side, each wave timed; the step's rate is the sampled
//! rows over the waves' time, and its projection the rows the run would cover (counted as
//! `status` counts them) at that rate, or at `max_rows_per_second` where that is slower. The
//! range comes from the spread of the waves' rates (their quartiles), never narrower than
//! ±15%. A one-off step counts the time its rehearsal took; one a rollback would not undo is
//! not run and counts nothing (the estimate says so). The plan's projection follows `after`:
//! steps that can run side by side share the run's batches in flight, so the walked steps' times
//! add up, and the plan takes the longer of that sum and the longest chain of `after`.

use std::collections::HashMap;
use std::time::Duration;

use godwit_plan::{Plan, StepKind};
use godwit_state::{Estimate, StepEstimate};

use crate::dry_run::{dry_run, DryRun, DryRunOptions, DryRunOutcome, Rehearsed, StepRehearsal};
use crate::stop::StopSignal;
use crate::Error;

/// The narrowest range given around a projection: a sample cannot promise more.
const MIN_SPREAD: f64 = 0.15;

/// How an estimate is made.
#[derive(Debug, Clone)]
pub struct EstimateOptions {
    /// Batches to rehearse per walked step.
    pub sample: usize,
    /// Batches in flight at once, as the run will have them; `None` picks the database's
    /// default, as a run does.
    pub concurrency: Option<usize>,
}

/// What `godwit estimate` found.
#[derive(Debug, Clone)]
pub struct Estimated {
    /// The projection, in the form the state store keeps.
    pub estimate: Estimate,
    /// What the projection leaves out or how it was made, per step (step, note).
    pub notes: Vec<(String, String)>,
    /// How the sampled rehearsal ended: a batch that fails fails the estimate.
    pub outcome: DryRunOutcome,
    /// How long estimating took.
    pub took: Duration,
}

/// Projects `plan`'s duration from a sample of its batches; changes no data.
///
/// # Errors
/// As [`crate::dry_run`]: the plan cannot run, or its database cannot be reached.
pub async fn estimate(
    plan: &Plan,
    options: EstimateOptions,
    stop: StopSignal,
) -> Result<Estimated, Error> {
    let rehearsal = dry_run(
        plan,
        DryRunOptions {
            concurrency: options.concurrency,
            sample: Some(options.sample.max(1)),
        },
        stop,
        |_| {},
    )
    .await?;
    Ok(project(plan, &rehearsal))
}

/// The projection of a sampled rehearsal.
fn project(plan: &Plan, rehearsal: &DryRun) -> Estimated {
    let mut notes = Vec::new();
    let steps: Vec<StepEstimate> = rehearsal
        .steps
        .iter()
        .map(|r| {
            let step = plan.steps.iter().find(|s| s.name == r.name);
            let max_rate = step.and_then(|s| s.settings.max_rows_per_second);
            let (estimate, note) = project_step(r, max_rate);
            if let Some(note) = note {
                notes.push((r.name.clone(), note));
            }
            estimate
        })
        .collect();
    let walked = |name: &str| {
        plan.steps
            .iter()
            .any(|s| s.name == name && !matches!(s.kind, StepKind::Once { .. }))
    };
    let total = |pick: fn(&StepEstimate) -> f64| {
        let sum: f64 = steps.iter().filter(|s| walked(&s.name)).map(pick).sum();
        sum.max(longest_chain(plan, &steps, pick))
    };
    let estimate = Estimate {
        projected_seconds: round(total(|s| s.projected_seconds)),
        low_seconds: round(total(|s| s.low_seconds)),
        high_seconds: round(total(|s| s.high_seconds)),
        steps,
    };
    Estimated {
        estimate,
        notes,
        outcome: rehearsal.outcome.clone(),
        took: rehearsal.duration,
    }
}

/// One step's projection, and what it leaves out.
fn project_step(r: &StepRehearsal, max_rate: Option<f64>) -> (StepEstimate, Option<String>) {
    let mut out = StepEstimate {
        name: r.name.clone(),
        projected_seconds: 0.0,
        low_seconds: 0.0,
        high_seconds: 0.0,
        rows_estimate: r.rows_total,
        sampled_batches: Some(i64::try_from(r.batches).unwrap_or(i64::MAX)),
    };
    let note = match &r.ended {
        Rehearsed::Done => None,
        Rehearsed::NotRehearsed(why) => Some(format!(
            "not rehearsed ({why}): its time is not in the projection"
        )),
        Rehearsed::Failed(_) | Rehearsed::Stopped | Rehearsed::NotStarted => {
            Some("not projected: the rehearsal did not get through it".into())
        }
    };
    if note.is_some() {
        return (out, note);
    }
    let rows: i64 = r.waves.iter().map(|(rows, _)| rows).sum();
    let secs: f64 = r.waves.iter().map(|(_, took)| took.as_secs_f64()).sum();
    let projected = match r.rows_total {
        // Rows left after the sample's waves, at their rate; a step the settling batches
        // covered took as long as its rehearsal.
        Some(total) if rows > 0 && secs > 0.0 => {
            let mut rates: Vec<f64> = r
                .waves
                .iter()
                .filter(|(_, t)| !t.is_zero())
                .map(|(rows, t)| *rows as f64 / t.as_secs_f64())
                .collect();
            rates.sort_by(f64::total_cmp);
            let rate = rows as f64 / secs;
            let at = |rate: f64| {
                let by_rate = total as f64 / rate.max(1e-9);
                max_rate.map_or(by_rate, |max| by_rate.max(total as f64 / max))
            };
            let (fast, slow) = (quantile(&rates, 0.75), quantile(&rates, 0.25));
            Some((at(rate), at(fast), at(slow)))
        }
        _ => None,
    };
    let (projected, low, high) = projected.unwrap_or_else(|| {
        let took = r.duration.as_secs_f64();
        (took, took, took)
    });
    out.projected_seconds = round(projected);
    out.low_seconds = round(low.min(projected * (1.0 - MIN_SPREAD)));
    out.high_seconds = round(high.max(projected * (1.0 + MIN_SPREAD)));
    (out, None)
}

/// The longest chain of steps through `after`, by `pick`.
fn longest_chain(plan: &Plan, steps: &[StepEstimate], pick: fn(&StepEstimate) -> f64) -> f64 {
    let own: HashMap<&str, f64> = steps.iter().map(|s| (s.name.as_str(), pick(s))).collect();
    let mut finish: HashMap<&str, f64> = HashMap::new();
    // The plan refuses cycles; steps are visited until every finish is known.
    for _ in 0..plan.steps.len() {
        for step in &plan.steps {
            let start = step
                .after
                .iter()
                .map(|a| finish.get(a.as_str()).copied().unwrap_or(0.0))
                .fold(0.0, f64::max);
            let end = start + own.get(step.name.as_str()).copied().unwrap_or(0.0);
            finish.insert(step.name.as_str(), end);
        }
    }
    finish.values().copied().fold(0.0, f64::max)
}

/// The `q` quantile of sorted `values` (nearest rank); 0 when empty.
fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let i = ((values.len() - 1) as f64 * q).round() as usize;
    values[i.min(values.len() - 1)]
}

/// Seconds to the millisecond: short steps (SQLite's) must not round to nothing.
fn round(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rehearsed(waves: &[(i64, u64)], total: i64) -> StepRehearsal {
        let mut r = crate::dry_run::test_rehearsal("s");
        r.rows_total = Some(total);
        r.batches = waves.len() as u64;
        r.waves = waves
            .iter()
            .map(|(rows, ms)| (*rows, Duration::from_millis(*ms)))
            .collect();
        r
    }

    #[test]
    fn projects_the_rows_left_at_the_sampled_rate() {
        // 4,000 rows a second in the sample, 1M rows: 250 s.
        let r = rehearsed(&[(4_000, 1_000), (4_000, 1_000), (4_000, 1_000)], 1_000_000);
        let (e, note) = project_step(&r, None);
        assert_eq!(note, None);
        assert_eq!(e.projected_seconds, 250.0);
        assert_eq!(e.low_seconds, 212.5, "at least 15% below");
        assert_eq!(e.high_seconds, 287.5);
        // A row rate limit slower than the sample's rate sets the pace.
        let (e, _) = project_step(&r, Some(1_000.0));
        assert_eq!(e.projected_seconds, 1_000.0);
        // Waves of uneven speed widen the range past 15%.
        let r = rehearsed(
            &[
                (4_000, 250),
                (4_000, 1_000),
                (4_000, 1_000),
                (4_000, 4_000),
                (4_000, 4_000),
            ],
            1_000_000,
        );
        let (e, _) = project_step(&r, None);
        assert!(e.low_seconds < e.projected_seconds * 0.85, "{e:?}");
        assert!(e.high_seconds > e.projected_seconds * 1.15, "{e:?}");
    }

    #[test]
    fn an_unrehearsed_step_counts_nothing_and_says_so() {
        let mut r = rehearsed(&[], 0);
        r.ended = Rehearsed::NotRehearsed("MariaDB commits DDL by itself".into());
        let (e, note) = project_step(&r, None);
        assert_eq!(e.projected_seconds, 0.0);
        assert!(note.unwrap().contains("not in the projection"));
    }
}
