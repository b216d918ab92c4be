//! The HTML report's charts, drawn here as inline SVG: the steps on a timeline, rows per
//! second over time, and each step's ETA against the time it really took. No script draws
//! them, so the page shows the same in any browser, printed, or saved.

use std::fmt::Write;

use crate::text::{html_escape, short_duration, thousands};
use crate::{Report, StepReport, ThroughputMark};

/// The colour of the `i`th step, in the timeline, the throughput chart and the legend.
pub(crate) fn color(i: usize) -> &'static str {
    const PALETTE: [&str; 8] = [
        "#2563eb", "#059669", "#d97706", "#dc2626", "#7c3aed", "#0891b2", "#db2777", "#65a30d",
    ];
    PALETTE[i % PALETTE.len()]
}

/// A chart's drawing area: value ranges mapped onto a box of pixels inside margins.
struct Frame {
    width: f64,
    height: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    x_max: f64,
    y_max: f64,
}

impl Frame {
    fn x(&self, v: f64) -> f64 {
        let inner = self.width - self.left - self.right;
        round(self.left + (v / self.x_max).clamp(0.0, 1.0) * inner)
    }

    fn y(&self, v: f64) -> f64 {
        let inner = self.height - self.top - self.bottom;
        round(self.height - self.bottom - (v / self.y_max).clamp(0.0, 1.0) * inner)
    }

    /// The `<svg>` element's opening, scaled to its container's width.
    fn open(&self, class: &str, label: &str) -> String {
        format!(
            "<svg class=\"chart {class}\" viewBox=\"0 0 {} {}\" role=\"img\" aria-label=\"{}\" \
             preserveAspectRatio=\"xMidYMid meet\">",
            self.width,
            self.height,
            html_escape(label)
        )
    }

    /// Grid lines and labels: time since the run's start along x, `y_label` up the side.
    fn axes(&self, out: &mut String, x_ticks: &[f64], y_ticks: &[f64], y_label: fn(f64) -> String) {
        for &t in y_ticks {
            let y = self.y(t);
            let _ = write!(
                out,
                "<line class=\"grid\" x1=\"{}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\"/>\
                 <text class=\"tick\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
                self.left,
                self.width - self.right,
                self.left - 6.0,
                y + 4.0,
                y_label(t)
            );
        }
        let base = self.height - self.bottom;
        let _ = write!(
            out,
            "<line class=\"axis\" x1=\"{}\" x2=\"{}\" y1=\"{base}\" y2=\"{base}\"/>",
            self.left,
            self.width - self.right
        );
        for &t in x_ticks {
            let x = self.x(t);
            let _ = write!(
                out,
                "<line class=\"axis\" x1=\"{x}\" x2=\"{x}\" y1=\"{base}\" y2=\"{}\"/>\
                 <text class=\"tick\" x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                base + 4.0,
                base + 17.0,
                short_duration(t)
            );
        }
    }
}

fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Up to about `count` round values (1, 2 or 5 times a power of ten) from 0 to past `max`,
/// and the last of them, which becomes the axis's end.
fn ticks(max: f64, count: usize) -> (f64, Vec<f64>) {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let rough = max / count.max(1) as f64;
    let power = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|s| *s >= rough)
        .unwrap_or(10.0 * power);
    let n = (max / step).ceil().max(1.0) as usize;
    let values: Vec<f64> = (0..=n).map(|i| i as f64 * step).collect();
    (n as f64 * step, values)
}

/// Time ticks: round numbers of seconds, minutes or hours.
fn time_ticks(max: f64, count: usize) -> (f64, Vec<f64>) {
    const STEPS: [f64; 16] = [
        1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
        21_600.0, 86_400.0,
    ];
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let rough = max / count.max(1) as f64;
    let step = STEPS
        .iter()
        .copied()
        .find(|s| *s >= rough)
        .unwrap_or_else(|| (rough / 86_400.0).ceil() * 86_400.0);
    let n = (max / step).floor() as usize;
    (max, (0..=n).map(|i| i as f64 * step).collect())
}

/// [`time_ticks`] for a value axis: the last tick at or past `max`, and the axis ending there.
fn time_ticks_past(max: f64, count: usize) -> (f64, Vec<f64>) {
    let (_, mut values) = time_ticks(max, count);
    let step = values.get(1).copied().unwrap_or(1.0);
    if let Some(&last) = values.last() {
        if last < max {
            values.push(last + step);
        }
    }
    (values.last().copied().unwrap_or(1.0), values)
}

/// The run's length in seconds, the x axis of every chart.
fn run_seconds(report: &Report) -> f64 {
    match report.clock.started_ms {
        Some(start) => ((report.clock.end_ms() - start) as f64 / 1000.0).max(1.0),
        None => 1.0,
    }
}

/// Seconds since the run's start of a time in milliseconds.
fn since_start(report: &Report, ms: i64) -> f64 {
    (ms - report.clock.started_ms.unwrap_or(ms)) as f64 / 1000.0
}

/// The steps as bars along the run's time, each from its start to its end (or now).
pub(crate) fn timeline(report: &Report) -> String {
    let total = run_seconds(report);
    let started: Vec<(usize, &StepReport)> = report
        .steps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.started_ms.is_some())
        .collect();
    let row = 26.0;
    let frame = Frame {
        width: 960.0,
        height: 30.0 + row * started.len().max(1) as f64,
        left: 170.0,
        right: 20.0,
        top: 4.0,
        bottom: 26.0,
        x_max: total,
        y_max: 1.0,
    };
    let mut out = frame.open("timeline", "the steps along the run's time");
    let (_, x_ticks) = time_ticks(total, 8);
    frame.axes(&mut out, &x_ticks, &[], |_| String::new());
    for (row_i, (i, step)) in started.iter().enumerate() {
        let start = since_start(report, step.started_ms.unwrap_or_default());
        let end = since_start(report, step.finished_ms.unwrap_or(report.clock.end_ms()));
        let (x0, x1) = (frame.x(start), frame.x(end));
        let y = frame.top + row_i as f64 * row + 4.0;
        let _ = write!(
            out,
            "<text class=\"label\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\
             <rect class=\"span {}\" data-step=\"{}\" x=\"{x0}\" y=\"{y}\" width=\"{}\" height=\"{}\" \
             rx=\"3\" fill=\"{}\"><title>{}</title></rect>",
            frame.left - 8.0,
            y + 13.0,
            html_escape(&step.name),
            html_escape(&step.state),
            html_escape(&step.name),
            round((x1 - x0).max(2.0)),
            row - 8.0,
            color(*i),
            html_escape(&format!(
                "{}: {}",
                step.name,
                step.duration_seconds
                    .map_or("–".to_string(), crate::text::duration)
            ))
        );
    }
    out.push_str("</svg>");
    out
}

/// A step's line: its colour's index, the step, and its points (seconds, value).
type Series<'r> = (usize, &'r StepReport, Vec<(f64, f64)>);

/// Rows per second of each step over the run's time, one line per step.
pub(crate) fn throughput(report: &Report) -> String {
    let total = run_seconds(report);
    let bucket = report.throughput_bucket_seconds.max(1.0);
    let series: Vec<Series> = report
        .steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let marks: Vec<&ThroughputMark> = report
                .throughput
                .iter()
                .filter(|m| m.step == step.name)
                .collect();
            (i, step, line_points(&marks, bucket, total))
        })
        .filter(|(_, _, points)| !points.is_empty())
        .collect();
    let highest = series
        .iter()
        .flat_map(|(_, _, p)| p.iter().map(|(_, v)| *v))
        .fold(0.0, f64::max);
    let (y_max, y_ticks) = ticks(highest, 4);
    let frame = Frame {
        width: 960.0,
        height: 260.0,
        left: 70.0,
        right: 20.0,
        top: 12.0,
        bottom: 26.0,
        x_max: total,
        y_max,
    };
    let mut out = frame.open("throughput", "rows per second over the run's time");
    let (_, x_ticks) = time_ticks(total, 8);
    frame.axes(&mut out, &x_ticks, &y_ticks, axis_rate);
    for (i, step, points) in &series {
        let mut d = String::new();
        for (n, (x, y)) in points.iter().enumerate() {
            let _ = write!(
                d,
                "{}{},{}",
                if n == 0 { "M" } else { " L" },
                frame.x(*x),
                frame.y(*y)
            );
        }
        let _ = write!(
            out,
            "<path class=\"series\" data-step=\"{}\" data-points=\"{}\" stroke=\"{}\" d=\"{d}\"/>",
            html_escape(&step.name),
            points.len(),
            color(*i)
        );
        // Markers only where they stay apart; a long run's line speaks for itself.
        if points.len() <= 60 {
            for (x, y) in points {
                let _ = write!(
                    out,
                    "<circle class=\"point\" cx=\"{}\" cy=\"{}\" r=\"2.5\" fill=\"{}\"/>",
                    frame.x(*x),
                    frame.y(*y),
                    color(*i)
                );
            }
        }
    }
    out.push_str("</svg>");
    out
}

/// A rate on the axis: whole ticks as whole numbers.
fn axis_rate(v: f64) -> String {
    if v.fract() == 0.0 {
        thousands(v as i64)
    } else {
        format!("{v}")
    }
}

/// A step's line: each bucket's rate at the middle of the time the step ran in it, falling to
/// 0 across buckets in which none of its batches finished. A step done within one bucket is a
/// level line across that time, not a point no one would see.
fn line_points(marks: &[&ThroughputMark], bucket: f64, total: f64) -> Vec<(f64, f64)> {
    if let [only] = marks {
        let (from, to) = (only.at_seconds, only.at_seconds + only.span_seconds);
        return vec![(from, only.rows_per_second), (to, only.rows_per_second)];
    }
    let mut points: Vec<(f64, f64)> = Vec::new();
    let mut last_end: Option<f64> = None;
    for m in marks {
        let end = m.at_seconds + m.span_seconds;
        if let Some(prev) = last_end {
            if m.at_seconds - prev > bucket * 0.5 {
                points.push((prev + bucket * 0.5, 0.0));
                points.push((m.at_seconds - bucket * 0.5, 0.0));
            }
        }
        let middle = m.at_seconds + m.span_seconds / 2.0;
        points.push((middle.clamp(0.0, total), m.rows_per_second));
        last_end = Some(end);
    }
    points
}

/// One step's ETA over its time (solid) and the time it really had left (dashed), in a chart
/// `width` wide (the page's full width for one step, half for small multiples).
pub(crate) fn eta(step: &StepReport, i: usize, width: f64) -> String {
    let points = &step.eta_history;
    let highest = points
        .iter()
        .flat_map(|p| [p.eta_seconds, p.actual_seconds_left])
        .flatten()
        .fold(0.0, f64::max);
    let (y_max, y_ticks) = time_ticks_past(highest, 4);
    let x_from = points.first().map_or(0.0, |p| p.at_seconds);
    let x_to = points
        .last()
        .map_or(1.0, |p| p.at_seconds)
        .max(x_from + 1.0);
    let frame = Frame {
        width,
        height: 200.0,
        left: 52.0,
        right: 14.0,
        top: 10.0,
        bottom: 26.0,
        x_max: x_to - x_from,
        y_max,
    };
    let mut out = frame.open("eta", &format!("how the ETA of {} moved", step.name));
    // Time since the run's start along x, as in the other charts: round values within the
    // step's time.
    let (_, x_ticks) = time_ticks(x_to - x_from, (width / 110.0) as usize);
    let spacing = x_ticks.get(1).copied().unwrap_or(x_to);
    let first = (x_from / spacing).ceil() * spacing;
    let x_ticks: Vec<f64> = (0..)
        .map(|n| first + n as f64 * spacing)
        .take_while(|t| *t <= x_to)
        .collect();
    frame.axes(&mut out, &[], &y_ticks, short_duration);
    let base = frame.height - frame.bottom;
    for t in x_ticks {
        let x = frame.x(t - x_from);
        let _ = write!(
            out,
            "<text class=\"tick\" x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            base + 17.0,
            short_duration(t)
        );
    }
    let path = |value: &dyn Fn(&crate::EtaMark) -> Option<f64>| {
        let mut d = String::new();
        let mut pen_down = false;
        for p in points {
            match value(p) {
                Some(v) => {
                    let _ = write!(
                        d,
                        "{}{},{}",
                        if pen_down { " L" } else { " M" },
                        frame.x(p.at_seconds - x_from),
                        frame.y(v)
                    );
                    pen_down = true;
                }
                // No rate then (a stall): the line breaks rather than pretend.
                None => pen_down = false,
            }
        }
        d.trim_start().to_string()
    };
    let actual = path(&|p| p.actual_seconds_left);
    if !actual.is_empty() {
        let _ = write!(out, "<path class=\"actual\" d=\"{actual}\"/>");
    }
    let projected = path(&|p| p.eta_seconds);
    let _ = write!(
        out,
        "<path class=\"series eta-line\" data-step=\"{}\" data-points=\"{}\" stroke=\"{}\" d=\"{projected}\"/>",
        html_escape(&step.name),
        points.iter().filter(|p| p.eta_seconds.is_some()).count(),
        color(i)
    );
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_maximum() {
        assert_eq!(ticks(950.0, 4), (1000.0, vec![0.0, 500.0, 1000.0]));
        assert_eq!(ticks(16_750.4, 4).0, 20_000.0);
        assert_eq!(ticks(0.0, 4).0, 1.0);
        let (max, values) = time_ticks(40.2, 8);
        assert_eq!(max, 40.2);
        assert_eq!(values, vec![0.0, 10.0, 20.0, 30.0, 40.0]);
        assert_eq!(time_ticks(7200.0, 8).1[1], 900.0);
        assert_eq!(
            time_ticks_past(7.4, 4),
            (8.0, vec![0.0, 2.0, 4.0, 6.0, 8.0])
        );
        assert_eq!(time_ticks_past(6.0, 4).0, 6.0);
    }

    #[test]
    fn a_gap_falls_to_zero() {
        let mark = |at: f64, r: f64| ThroughputMark {
            step: "s".into(),
            at: String::new(),
            at_seconds: at,
            span_seconds: 1.0,
            rows_per_second: r,
        };
        let marks = [mark(0.0, 10.0), mark(1.0, 10.0), mark(5.0, 20.0)];
        let refs: Vec<&ThroughputMark> = marks.iter().collect();
        let points = line_points(&refs, 1.0, 10.0);
        assert_eq!(
            points,
            vec![
                (0.5, 10.0),
                (1.5, 10.0),
                (2.5, 0.0),
                (4.5, 0.0),
                (5.5, 20.0)
            ]
        );
        let short = ThroughputMark {
            at_seconds: 0.25,
            span_seconds: 0.5,
            ..mark(0.0, 10.0)
        };
        assert_eq!(
            line_points(&[&short], 1.0, 10.0),
            vec![(0.25, 10.0), (0.75, 10.0)]
        );
    }
}
