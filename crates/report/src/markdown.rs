//! The report as Markdown to paste into release notes: a heading, a sentence of times and the
//! estimate, a table of steps, and who worked on them.

use std::fmt::Write;

use crate::text::{date_time, duration, md_escape, same_day, thousands, time_of_day, versus};
use crate::{Report, StepReport};

/// The report as Markdown (GitHub-flavoured: a pipe table). Names and messages are escaped,
/// so a step named `a|b` keeps the table whole.
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let plan = md_escape(&report.plan);
    let headline = match (report.state.as_str(), report.duration_seconds) {
        ("done", Some(d)) => format!("done in {}", duration(d)),
        ("running" | "paused", Some(d)) => format!("{}, {} so far", report.state, duration(d)),
        (state, Some(d)) => format!("{state} after {}", duration(d)),
        (state, None) => state.to_string(),
    };
    let _ = writeln!(out, "### Migration {plan}: {headline}\n");
    let mut facts = Vec::new();
    if let Some(start) = report.clock.started_ms {
        facts.push(match report.clock.finished_ms {
            Some(end) if same_day(start, end) => {
                format!("Ran from {} to {} UTC.", date_time(start), time_of_day(end))
            }
            Some(end) => format!("Ran from {} to {} UTC.", date_time(start), date_time(end)),
            None => format!(
                "Started {} UTC; figures as of {} UTC.",
                date_time(start),
                date_time(report.clock.now_ms)
            ),
        });
    }
    if let Some(e) = &report.estimate {
        let mut said = format!(
            "Estimated beforehand: {} ({} – {})",
            duration(e.projected_seconds),
            duration(e.low_seconds),
            duration(e.high_seconds)
        );
        if let (Some(actual), "done") = (report.duration_seconds, report.state.as_str()) {
            if let Some(v) = versus(actual, e.projected_seconds) {
                let _ = write!(said, "; actual {v}");
            }
        }
        said.push('.');
        facts.push(said);
    } else {
        facts.push("No estimate was recorded before the run.".to_string());
    }
    let _ = writeln!(out, "{}\n", facts.join(" "));
    if let Some(error) = &report.error {
        let _ = writeln!(out, "**{}:** {}\n", report.state, md_escape(error));
    }
    out.push_str(
        "| Step | State | Start (UTC) | End | Duration | Estimated | Rows | Rows/s | Batches | Retries \
         | Skipped rows | Longest batch | Workers |\n\
         | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let one_day = report.clock.one_day();
    for step in &report.steps {
        let _ = writeln!(out, "{}", step_row(step, one_day));
    }
    let worked: Vec<&StepReport> = report
        .steps
        .iter()
        .filter(|s| !s.workers.is_empty())
        .collect();
    if !worked.is_empty() {
        out.push_str("\nWorkers:\n\n");
        for step in worked {
            let names: Vec<String> = step
                .workers
                .iter()
                .map(|w| {
                    format!(
                        "{} ({} batches, {} rows)",
                        md_escape(&w.worker),
                        thousands(w.batches),
                        thousands(w.rows)
                    )
                })
                .collect();
            let _ = writeln!(out, "- {}: {}", md_escape(&step.name), names.join(", "));
        }
    }
    for step in report.steps.iter().filter(|s| s.error.is_some()) {
        let _ = writeln!(
            out,
            "\n{} failed: {}",
            md_escape(&step.name),
            md_escape(step.error.as_deref().unwrap_or_default())
        );
    }
    out
}

fn step_row(step: &StepReport, one_day: bool) -> String {
    let c = step.cells(one_day);
    let estimated = match (step.estimated_seconds, step.against_estimate()) {
        (Some(e), Some((_, v))) => format!("{} ({v})", duration(e)),
        (Some(e), None) => duration(e),
        (None, _) => "–".to_string(),
    };
    let cells = [
        md_escape(&step.name),
        step.state.clone(),
        c.start,
        c.end,
        c.duration,
        estimated,
        c.rows,
        c.rate,
        c.batches,
        c.retries,
        c.skipped,
        c.longest,
        c.workers,
    ];
    format!("| {} |", cells.join(" | "))
}
