//! Prometheus's text exposition format (version 0.0.4), the few parts the metrics use.

use std::fmt::{Display, Write};

/// The `Content-Type` of the text format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Writes a family's `# HELP` and `# TYPE` lines; its samples follow.
pub(crate) fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape(help, false));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes one sample: `name{label="value",…} value`.
pub(crate) fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl Display) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, text)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{label}=\"{}\"", escape(text, true));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// `text` as the format wants it in a label value (`\`, `"` and line feeds escaped) or in a
/// help text (`\` and line feeds).
fn escape(text: &str, quoted: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quoted => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(labels: &[(&str, &str)], value: f64, expected: &str) {
        let mut out = String::new();
        sample(&mut out, "m", labels, value);
        assert_eq!(out, expected);
    }

    #[test]
    fn writes_samples() {
        check(&[], 0.0, "m 0\n");
        check(
            &[("plan", "p"), ("step", "s")],
            1.5,
            "m{plan=\"p\",step=\"s\"} 1.5\n",
        );
        check(
            &[("step", "a\"b\\c\nd")],
            3.0,
            "m{step=\"a\\\"b\\\\c\\nd\"} 3\n",
        );
    }

    #[test]
    fn writes_help_and_type() {
        let mut out = String::new();
        family(&mut out, "m_total", "counter", "Things \"counted\"\\here");
        assert_eq!(
            out,
            "# HELP m_total Things \"counted\"\\\\here\n# TYPE m_total counter\n"
        );
    }
}
