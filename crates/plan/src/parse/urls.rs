//! Database URLs: `${VAR}` expanded from the environment (in URLs only), each URL kept as
//! written for `check` to point at.

use toml::de::DeTable;

use super::context::Ctx;
use super::{key_span, Span};
use crate::model::WrittenUrl;

/// Expands `${VAR}` in `text`; on failure, every problem as a message naming `key`.
pub(crate) fn expand_vars(
    key: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after_open = &rest[start + 2..];
        let Some(len) = after_open.find('}') else {
            problems.push(format!("`{key}` has `${{` without a closing `}}`"));
            rest = "";
            break;
        };
        let name = &after_open[..len];
        if name.is_empty() {
            problems.push(format!("`{key}` has an empty `${{}}`; write ${{VARIABLE}}"));
        } else {
            match env(name) {
                Some(value) => out.push_str(&value),
                None => problems.push(format!(
                    "`{key}` uses ${{{name}}}, but the environment variable {name} is not set"
                )),
            }
        }
        rest = &after_open[len + 1..];
    }
    out.push_str(rest);
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

pub(super) fn read_replicas(cx: &mut Ctx<'_>, root: &DeTable<'_>) -> Vec<String> {
    let Some(entries) = cx.strings(root, "replicas") else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|(text, span)| cx.expand("replicas", &text, &span))
        .collect()
}

/// `notify`: the HTTP(S) addresses that get a message when the run ends or stays throttled.
pub(super) fn read_notify(cx: &mut Ctx<'_>, root: &DeTable<'_>) -> Vec<String> {
    let Some(entries) = cx.strings(root, "notify") else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(entries.len());
    for (text, span) in entries {
        let Some(url) = cx.expand("notify", &text, &span) else {
            continue;
        };
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        if !matches!(scheme.as_deref(), Some("http" | "https")) {
            cx.error(
                &span,
                "`notify` takes http:// or https:// addresses (a webhook, such as Slack's)",
            );
            continue;
        }
        out.push(url);
    }
    out
}

impl Ctx<'_> {
    /// Expands `${VAR}` in a URL written at `span`, reporting problems at `at`.
    pub(super) fn expand(&mut self, key: &str, text: &str, at: &Span) -> Option<String> {
        self.urls.push(WrittenUrl {
            key: key.to_string(),
            text: text.to_string(),
            span: at.clone(),
            location: self.loc(at),
        });
        match expand_vars(key, text, self.env) {
            Ok(url) if url.trim().is_empty() => {
                self.error(at, format!("`{key}` must not be empty"));
                None
            }
            Ok(url) => Some(url),
            Err(problems) => {
                for problem in problems {
                    self.error(at, problem);
                }
                None
            }
        }
    }

    /// A URL with `${VAR}` expanded; problems point at the key.
    pub(super) fn url(&mut self, table: &DeTable<'_>, key: &str) -> Option<String> {
        let (text, value_at) = self.string(table, key)?;
        let at = key_span(table, key)?;
        let url = self.expand(key, &text, &at);
        // The value's own span, for finding it in the text again; problems point at the key.
        if let Some(written) = self.urls.last_mut() {
            written.span = value_at;
        }
        url
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::test_support::{check, env, parse_ok};
    use super::*;
    use crate::model::{CopySpec, StepKind};

    #[test]
    fn r11_keeps_each_url_as_written() {
        let plan = parse_ok(
            "name = \"x\"\ndatabase = \"postgres://u:${DB}@h/d\"\n\
             [state]\ndatabase = \"postgres://u:p\\u0040w@h/d\"\n\
             [[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n",
        );
        let urls: Vec<(&str, &str, String, usize)> = plan
            .written_urls
            .iter()
            .map(|u| {
                (
                    u.key.as_str(),
                    u.text.as_str(),
                    u.literal(),
                    u.location.line,
                )
            })
            .collect();
        assert_eq!(
            urls,
            [
                (
                    "database",
                    "postgres://u:${DB}@h/d",
                    "postgres://u:@h/d".to_string(),
                    2
                ),
                (
                    "database",
                    "postgres://u:p@w@h/d",
                    "postgres://u:p@w@h/d".to_string(),
                    4
                ),
            ]
        );
        assert_eq!(
            &plan.text[plan.written_urls[1].span.clone()],
            "\"postgres://u:p\\u0040w@h/d\""
        );
    }

    #[test]
    fn expands_variables_in_urls_only() {
        let plan = parse_ok(
            "name = \"x\"\ndatabase = \"${DB}\"\nreplicas = [\"postgres://r@${HOST}/d\", \"postgres://$HOST/d\"]\nmax_replica_lag = \"10s\"\n\
             [state]\ndatabase = \"sqlite://${HOST}.db\"\n\
             [[steps]]\nname = \"a\"\nsql = \"SELECT '${DB}'\"\n\
             [[steps]]\nname = \"c\"\nsource = \"mysql://${HOST}/shop\"\ntable = \"t\"\nkey = \"id\"\ninto = \"u\"\n",
        );
        assert_eq!(plan.database, "postgres://u:pw@h/d");
        assert_eq!(
            plan.state_database.as_deref(),
            Some("sqlite://db.internal.db")
        );
        assert_eq!(
            plan.replicas,
            ["postgres://r@db.internal/d", "postgres://$HOST/d"]
        );
        assert_eq!(plan.max_replica_lag, Some(Duration::from_secs(10)));
        assert_eq!(
            plan.steps[0].kind,
            StepKind::Once {
                sql: "SELECT '${DB}'".into()
            }
        );
        assert!(
            matches!(&plan.steps[1].kind, StepKind::Copy(CopySpec { source: Some(s), .. }) if s == "mysql://db.internal/shop")
        );
    }

    #[test]
    fn names_unset_variables_at_the_key() {
        check(
            "name = \"x\"\ndatabase = \"${NOPE}\"\nreplicas = [\"a\", \"pg://${R1}@${R2}/x\"]\n\
             [state]\n  database = \"${EMPTY}\"\n\
             [[steps]]\nname = \"c\"\nsource = \"mysql://${HOST}/${SHOP\"\ntable = \"t\"\nkey = \"id\"\ninto = \"u\"\n\
             [[steps]]\nname = \"d\"\nsource = \"mysql://${}/shop\"\ntable = \"t\"\nkey = \"id\"\ninto = \"u\"\n",
            "p.toml:2:1: `database` uses ${NOPE}, but the environment variable NOPE is not set\n\
             p.toml:3:18: `replicas` uses ${R1}, but the environment variable R1 is not set\n\
             p.toml:3:18: `replicas` uses ${R2}, but the environment variable R2 is not set\n\
             p.toml:5:3: `database` must not be empty\n\
             p.toml:8:1: step \"c\": `source` has `${` without a closing `}`\n\
             p.toml:14:1: step \"d\": `source` has an empty `${}`; write ${VARIABLE}",
        );
    }

    #[test]
    fn expands_nothing_but_variables() {
        assert_eq!(
            expand_vars("k", "a$b${HOST}$${HOST}c$", &env),
            Ok("a$bdb.internal$db.internalc$".to_string())
        );
        assert_eq!(expand_vars("k", "", &env), Ok(String::new()));
    }
}
