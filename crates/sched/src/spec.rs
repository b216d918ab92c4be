//! What the state store keeps of a plan: its steps' definitions, and its text with every
//! password written in it redacted.

use godwit_plan::{Place, Plan, StepKind};
use godwit_state::{RunSpec, StepSpec};

use crate::{step_definition, Error};

/// What the state store keeps of a plan.
///
/// # Errors
/// When a password written in the plan cannot be redacted (see [`stored_plan_text`]).
pub(crate) fn run_spec(plan: &Plan) -> Result<RunSpec, Error> {
    Ok(RunSpec {
        name: plan.name.clone(),
        plan_text: stored_plan_text(plan)?,
        steps: plan
            .steps
            .iter()
            .map(|s| StepSpec {
                name: s.name.clone(),
                definition: step_definition(s),
                batch_size: match s.kind {
                    // No batch size: `status` shows none for a one-off step.
                    StepKind::Once { .. } => 0,
                    _ => i64::try_from(s.settings.batch_size).unwrap_or(i64::MAX),
                },
            })
            .collect(),
    })
}

/// The URLs of `plan` that hold a password written literally, not through `${VAR}`.
pub(crate) fn literal_passwords(plan: &Plan) -> impl Iterator<Item = &godwit_plan::WrittenUrl> {
    plan.written_urls
        .iter()
        .filter(|url| godwit_driver::has_password(&url.literal()))
}

/// The plan's text as the state database keeps it: every URL holding a password written
/// literally is replaced by its redacted form, since anyone reading the state tables would
/// read it. Such a stored plan cannot connect, so workers cannot take it up; `submit` refuses
/// it for that reason and `run`, whose own process has the plan, stores it anyway.
///
/// # Errors
/// When a URL's place in the text does not fit it (outside the text, inside a character, or
/// over another URL): storing the text unredacted would leak the password.
fn stored_plan_text(plan: &Plan) -> Result<String, Error> {
    let mut text = plan.text.clone();
    let mut literal: Vec<_> = literal_passwords(plan).collect();
    // From the end, so the spans still to replace stay valid.
    literal.sort_by_key(|url| std::cmp::Reverse(url.span.start));
    let mut replaced_from = text.len();
    for url in literal {
        let fits = url.span.end <= replaced_from && text.get(url.span.clone()).is_some();
        if !fits {
            return Err(Error::invalid(format!(
                "{}: cannot redact the password of `{}`: its place in the plan's text ({}..{}) \
                 does not fit the text; nothing was stored",
                Place {
                    file: &plan.path,
                    location: url.location
                },
                url.key,
                url.span.start,
                url.span.end
            )));
        }
        let redacted = godwit_driver::redact_url(&url.text);
        text.replace_range(url.span.clone(), &toml_string(&redacted));
        replaced_from = url.span.start;
    }
    Ok(text)
}

/// `value` as a TOML basic string.
fn toml_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const PLAN: &str = "name = \"p\"\ndatabase = \"postgres://u:secret@h/db\"\n\n\
                        [[steps]]\nname = \"s\"\nsql = \"SELECT 1\"\n";

    fn plan() -> Plan {
        godwit_plan::parse(PLAN, Path::new("p.toml"), &|_| None).expect("the plan parses")
    }

    #[test]
    fn redacts_a_password_written_in_the_plan() {
        let text = stored_plan_text(&plan()).expect("redacted");
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("database = \"postgres://u:"), "{text}");
    }

    #[test]
    fn refuses_a_url_whose_span_does_not_fit_the_text() {
        let mut plan = plan();
        let url = plan
            .written_urls
            .iter_mut()
            .find(|u| u.key == "database")
            .expect("the database URL is recorded");
        url.span = PLAN.len() - 2..PLAN.len() + 10;
        let err = stored_plan_text(&plan).expect_err("a span past the text is refused");
        assert_eq!(err.kind(), crate::ErrorKind::Invalid);
        assert!(
            err.to_string()
                .contains("cannot redact the password of `database`"),
            "{err}"
        );
    }
}
