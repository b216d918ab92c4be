//! The report as one self-contained HTML page: the style inline, the charts inline SVG drawn
//! by [`crate::svg`], no script, and a content security policy that forbids fetching
//! anything, so the page reads the same attached to a ticket, opened offline or archived.

use std::fmt::Write;

use crate::svg;
use crate::text::{
    date_time, duration, html_escape, rate, same_day, thousands, time_of_day, versus,
};
use crate::{Report, StepReport};

const STYLE: &str = r#"
:root { --bg: #f6f7f9; --panel: #fff; --line: #e3e6eb; --text: #1d2330; --quiet: #667085;
  --accent: #2563eb; --ok: #059669; --warn: #d97706; --bad: #dc2626;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color-scheme: light dark; }
@media (prefers-color-scheme: dark) { :root { --bg: #0f1216; --panel: #171b21; --line: #2a313b;
  --text: #dfe3ea; --quiet: #8a93a3; } }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--text); }
main { max-width: 1060px; margin: 0 auto; padding: 2rem 1.5rem 3rem; }
.brand { color: var(--quiet); font-size: .8rem; letter-spacing: .08em; text-transform: uppercase; font-weight: 600; }
.brand b { color: var(--accent); }
h1 { margin: .2rem 0 .3rem; font-size: 1.8rem; display: flex; align-items: center; gap: .8rem; flex-wrap: wrap; overflow-wrap: anywhere; }
h2 { font-size: .8rem; text-transform: uppercase; letter-spacing: .08em; color: var(--quiet); margin: 0 0 .8rem; font-weight: 600; }
.sub { color: var(--quiet); margin: 0; }
.state { font-size: .8rem; font-weight: 600; border-radius: 999px; padding: .15rem .7rem; background: var(--line); color: var(--quiet); }
.state.done { background: rgba(5,150,105,.14); color: var(--ok); }
.state.running, .state.pending { background: rgba(37,99,235,.12); color: var(--accent); }
.state.paused { background: rgba(217,119,6,.14); color: var(--warn); }
.state.failed, .state.cancelled { background: rgba(220,38,38,.12); color: var(--bad); }
.banner { margin: 1.2rem 0 0; padding: .8rem 1rem; border-radius: 8px; border: 1px solid var(--line); background: var(--panel); overflow-wrap: anywhere; }
.banner.failed, .banner.cancelled { border-color: var(--bad); }
.banner.running, .banner.paused, .banner.pending { border-color: var(--accent); }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(9.5rem, 1fr)); gap: .8rem; margin: 1.5rem 0 0; }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: 10px; padding: .8rem 1rem; }
.card .k { color: var(--quiet); font-size: .78rem; text-transform: uppercase; letter-spacing: .06em; }
.card .v { font-size: 1.45rem; font-weight: 650; font-variant-numeric: tabular-nums; margin-top: .15rem; }
.card .s { color: var(--quiet); font-size: .8rem; }
section { background: var(--panel); border: 1px solid var(--line); border-radius: 10px; padding: 1.1rem 1.2rem; margin-top: 1.2rem; overflow-x: auto; }
table { width: 100%; border-collapse: collapse; font-size: .88rem; }
th { text-align: left; color: var(--quiet); font-weight: 500; font-size: .78rem; padding: .35rem .4rem; border-bottom: 1px solid var(--line); vertical-align: bottom; }
td { padding: .45rem .4rem; border-bottom: 1px solid var(--line); vertical-align: top; }
tr:last-child td { border-bottom: 0; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.name { font-weight: 600; overflow-wrap: anywhere; }
#steps td.name, td.when { white-space: nowrap; }
.quiet { color: var(--quiet); }
.small { font-size: .85rem; margin: 0 0 .5rem; }
.over { color: var(--bad); } .under { color: var(--ok); }
.swatch { display: inline-block; width: .75rem; height: .75rem; border-radius: 3px; margin-right: .4rem; vertical-align: -1px; }
.legend { display: flex; flex-wrap: wrap; gap: .4rem 1.2rem; margin: 0 0 .6rem; font-size: .85rem; }
.legend .dash { display: inline-block; width: 1.4rem; border-top: 2px dashed var(--quiet); margin-right: .4rem; vertical-align: 3px; }
.chart { width: 100%; height: auto; display: block; }
.chart text { fill: var(--quiet); font-size: 11px; font-family: inherit; }
.chart text.label { fill: var(--text); font-size: 12px; }
.chart .grid { stroke: var(--line); stroke-width: 1; }
.chart .axis { stroke: var(--quiet); stroke-width: 1; opacity: .5; }
.chart .series { fill: none; stroke-width: 2.2; stroke-linejoin: round; stroke-linecap: round; }
.chart .actual { fill: none; stroke: var(--quiet); stroke-width: 1.6; stroke-dasharray: 5 4; }
.chart rect.span.failed { opacity: .55; }
.etas { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); gap: 1rem 1.5rem; }
tr:has(+ .error-row) td { border-bottom: 0; }
.error-row td { padding-top: 0; }
figure { margin: 0; }
figcaption { font-size: .85rem; margin-bottom: .3rem; }
.error { color: var(--bad); overflow-wrap: anywhere; font-size: .85rem; }
footer { color: var(--quiet); font-size: .8rem; margin-top: 1.5rem; text-align: center; }
@media print { body { background: #fff; } section, .card { break-inside: avoid; } }
"#;

/// The report as one HTML page that fetches nothing (see the module's doc).
pub fn html(report: &Report) -> String {
    let mut out = String::with_capacity(32 * 1024);
    let plan = html_escape(&report.plan);
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n\
         <title>{plan}: godwit run report</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n"
    );
    header(&mut out, report);
    cards(&mut out, report);
    steps_table(&mut out, report);
    charts(&mut out, report);
    workers(&mut out, report);
    let _ = write!(
        out,
        "<footer>Made by <b>godwit report</b> at {} UTC from the run's state tables.</footer>\n\
         </main>\n</body>\n</html>\n",
        date_time(report.clock.now_ms)
    );
    out
}

fn header(out: &mut String, report: &Report) {
    let state = html_escape(&report.state);
    let _ = write!(
        out,
        "<header><div class=\"brand\"><b>godwit</b> run report</div>\
         <h1 id=\"plan\">{} <span class=\"state {state}\" id=\"state\">{state}</span></h1>",
        html_escape(&report.plan)
    );
    let when = match (report.clock.started_ms, report.clock.finished_ms) {
        (Some(a), Some(b)) if same_day(a, b) => {
            format!("Ran from {} to {} UTC", date_time(a), time_of_day(b))
        }
        (Some(a), Some(b)) => format!("Ran from {} to {} UTC", date_time(a), date_time(b)),
        (Some(a), None) => format!("Started {} UTC", date_time(a)),
        (None, _) => "Not started yet".to_string(),
    };
    let _ = write!(out, "<p class=\"sub\">{when}</p></header>");
    let banner = match report.state.as_str() {
        "done" => None,
        "running" | "paused" => Some(format!(
            "The run is {}: these are its figures as of {} UTC.",
            report.state,
            date_time(report.clock.now_ms)
        )),
        "pending" => Some("No worker has taken the run up yet.".to_string()),
        other => Some(format!(
            "The run {other}; these are its figures up to then."
        )),
    };
    if let Some(banner) = banner {
        let _ = write!(
            out,
            "<div class=\"banner {}\" id=\"banner\">{}",
            html_escape(&report.state),
            html_escape(&banner)
        );
        if let Some(error) = &report.error {
            let _ = write!(out, "<div class=\"error\">{}</div>", html_escape(error));
        }
        out.push_str("</div>");
    }
}

fn card(out: &mut String, key: &str, value: &str, sub: &str) {
    let _ = write!(
        out,
        "<div class=\"card\"><div class=\"k\">{key}</div><div class=\"v\">{value}</div>\
         <div class=\"s\">{sub}</div></div>"
    );
}

fn cards(out: &mut String, report: &Report) {
    out.push_str("<div class=\"cards\">");
    let duration_text = report.duration_seconds.map_or("–".to_string(), duration);
    let estimate = match (&report.estimate, report.duration_seconds) {
        (Some(e), Some(d)) if report.state == "done" => format!(
            "estimated {}{}",
            duration(e.projected_seconds),
            versus(d, e.projected_seconds)
                .map(|v| format!(" ({v})"))
                .unwrap_or_default()
        ),
        (Some(e), _) => format!("estimated {}", duration(e.projected_seconds)),
        (None, _) => "no estimate recorded".to_string(),
    };
    card(out, "Duration", &duration_text, &html_escape(&estimate));
    let rows: i64 = report.steps.iter().map(|s| s.rows).sum();
    let overall = report
        .duration_seconds
        .filter(|d| *d > 0.0)
        .map_or("–".to_string(), |d| {
            format!("{} rows/s", rate(rows as f64 / d))
        });
    card(out, "Rows", &thousands(rows), &overall);
    let batches: i64 = report.steps.iter().map(|s| s.batches).sum();
    let retries: i64 = report.steps.iter().map(|s| s.retries).sum();
    let failed: i64 = report.steps.iter().map(|s| s.batches_failed).sum();
    let retried = match retries {
        1 => "1 retry".to_string(),
        n => format!("{} retries", thousands(n)),
    };
    let batch_note = match failed {
        0 => retried,
        n => format!("{retried}, {} failed", thousands(n)),
    };
    card(out, "Batches", &thousands(batches), &batch_note);
    let skipped: i64 = report.steps.iter().map(|s| s.rows_skipped).sum();
    card(
        out,
        "Skipped rows",
        &thousands(skipped),
        if skipped > 0 {
            "see godwit dead-letters"
        } else {
            "none set aside"
        },
    );
    let mut names: Vec<&str> = report
        .steps
        .iter()
        .flat_map(|s| s.workers.iter().map(|w| w.worker.as_str()))
        .collect();
    names.sort_unstable();
    names.dedup();
    let longest = report
        .steps
        .iter()
        .filter_map(|s| s.longest_batch_seconds)
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    card(
        out,
        "Workers",
        &names.len().to_string(),
        &format!(
            "longest batch {}",
            longest.map_or("–".to_string(), duration)
        ),
    );
    out.push_str("</div>");
}

fn steps_table(out: &mut String, report: &Report) {
    let one_day = report.clock.one_day();
    out.push_str(
        "<section id=\"steps\"><h2>Steps</h2><table><thead><tr><th>Step</th><th>State</th>\
         <th>Ran (UTC)</th><th class=\"num\">Duration</th><th class=\"num\">Estimated</th>\
         <th class=\"num\">Rows</th><th class=\"num\">Rows/s</th><th class=\"num\">Batches</th>\
         <th class=\"num\">Retries</th><th class=\"num\">Skipped</th><th class=\"num\">Longest batch</th>\
         <th class=\"num\">Workers</th></tr></thead><tbody>",
    );
    for (i, step) in report.steps.iter().enumerate() {
        step_row(out, step, i, one_day);
    }
    out.push_str("</tbody></table></section>");
}

fn step_row(out: &mut String, step: &StepReport, i: usize, one_day: bool) {
    let c = step.cells(one_day);
    let estimated = match (step.estimated_seconds, step.against_estimate()) {
        (Some(e), Some((over, v))) => format!(
            "{} <span class=\"{}\">{v}</span>",
            duration(e),
            if over { "over" } else { "under" }
        ),
        (Some(e), None) => duration(e),
        (None, _) => "<span class=\"quiet\">–</span>".to_string(),
    };
    let state = html_escape(&step.state);
    let _ = write!(
        out,
        "<tr data-step=\"{name}\"><td class=\"name\"><span class=\"swatch\" style=\"background:{color}\"></span>{name}",
        name = html_escape(&step.name),
        color = svg::color(i)
    );
    let _ = write!(
        out,
        "</td><td><span class=\"state {state}\">{state}</span></td><td class=\"when\">{}–{}</td>\
         <td class=\"num\">{}</td><td class=\"num\">{estimated}</td><td class=\"num rows\">{}</td>\
         <td class=\"num\">{}</td><td class=\"num batches\">{}</td><td class=\"num retries\">{}</td>\
         <td class=\"num skipped\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
        c.start, c.end, c.duration, c.rows, c.rate, c.batches, c.retries, c.skipped, c.longest, c.workers
    );
    // Below the step's row, across the table: a long message would squeeze the columns.
    if let Some(error) = &step.error {
        let _ = write!(
            out,
            "<tr class=\"error-row\"><td colspan=\"12\" class=\"error\">{}</td></tr>",
            html_escape(error)
        );
    }
}

fn legend(out: &mut String, report: &Report, only: impl Fn(&StepReport) -> bool) {
    out.push_str("<div class=\"legend\">");
    for (i, step) in report.steps.iter().enumerate().filter(|(_, s)| only(s)) {
        let _ = write!(
            out,
            "<span><span class=\"swatch\" style=\"background:{}\"></span>{}</span>",
            svg::color(i),
            html_escape(&step.name)
        );
    }
    out.push_str("</div>");
}

fn charts(out: &mut String, report: &Report) {
    if report.clock.started_ms.is_none() {
        return;
    }
    out.push_str("<section id=\"timeline\"><h2>Timeline</h2>");
    out.push_str(&svg::timeline(report));
    out.push_str("</section><section id=\"throughput\"><h2>Rows per second</h2>");
    if report.throughput.is_empty() {
        out.push_str("<p class=\"quiet\">No batch is done yet.</p>");
    } else {
        legend(out, report, |s| {
            report.throughput.iter().any(|m| m.step == s.name)
        });
        out.push_str(&svg::throughput(report));
    }
    out.push_str("</section>");
    let with_eta: Vec<(usize, &StepReport)> = report
        .steps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.eta_history.iter().any(|p| p.eta_seconds.is_some()))
        .collect();
    if with_eta.is_empty() {
        return;
    }
    out.push_str(
        "<section id=\"eta\"><h2>How the ETA moved</h2><p class=\"quiet small\">At regular times, \
         the ETA <code>status</code> and the progress bars showed then: the rows left over the \
         rate of the last 30 seconds.",
    );
    out.push_str(
        "</p><div class=\"legend\"><span><span class=\"dash\"></span>time it really took</span>\
         </div><div class=\"etas\">",
    );
    let width = if with_eta.len() == 1 { 960.0 } else { 480.0 };
    for (i, step) in with_eta {
        let _ = write!(
            out,
            "<figure><figcaption><span class=\"swatch\" style=\"background:{}\"></span>{}</figcaption>{}</figure>",
            svg::color(i),
            html_escape(&step.name),
            svg::eta(step, i, width)
        );
    }
    out.push_str("</div></section>");
}

fn workers(out: &mut String, report: &Report) {
    if report.steps.iter().all(|s| s.workers.is_empty()) {
        return;
    }
    out.push_str(
        "<section id=\"workers\"><h2>Workers</h2><table><thead><tr><th>Step</th><th>Worker</th>\
         <th class=\"num\">Batches</th><th class=\"num\">Rows</th></tr></thead><tbody>",
    );
    for step in &report.steps {
        for (n, w) in step.workers.iter().enumerate() {
            let name = if n == 0 {
                html_escape(&step.name)
            } else {
                String::new()
            };
            let _ = write!(
                out,
                "<tr><td class=\"name\">{name}</td><td class=\"worker\">{}</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                html_escape(&w.worker),
                thousands(w.batches),
                thousands(w.rows)
            );
        }
    }
    out.push_str("</tbody></table></section>");
}
