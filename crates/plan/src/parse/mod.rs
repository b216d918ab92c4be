//! TOML text → [`Plan`], collecting every problem with its location.
//!
//! The text is parsed into `toml`'s spanned document tree ([`DeTable`]), which keeps the byte
//! span of every key and value; each section is then read key by key so that a wrong value is
//! reported where it was written, and reading goes on after a problem so that one run lists them
//! all.
//!
//! This file walks the document: the top-level keys, `[state]`, `[defaults]`, `[expect]` and the
//! list of steps. Beside it: `context.rs` (where problems are collected, and reading one key's
//! value as a string, number, boolean or table), `keys.rs` (which keys each section knows, and
//! the suggestion for an unknown one), `not_yet.rs` (the keys refused as not supported yet),
//! `urls.rs` (`${VAR}` in URLs), `settings.rs` (batch settings, durations, sizes) and `step.rs`
//! (a `[[steps]]` table into its `StepKind`).

mod context;
mod keys;
mod not_yet;
mod settings;
mod step;
mod urls;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use toml::de::{DeTable, DeValue};

use crate::model::{Plan, Settings, Step, DEFAULT_NOTIFY_THROTTLED_AFTER};
use crate::order::{self, NamedStep};
use crate::{LineIndex, Location, PlanError, PlanErrors};

use self::context::NotYet;
use self::context::{type_name, Ctx};
use self::keys::Section;
use self::settings::read_factor;
use self::step::read_step;
use self::urls::{read_notify, read_replicas};

pub(crate) use crate::Span;

/// The span of `key` itself (not its value) in `table`.
fn key_span(table: &DeTable<'_>, key: &str) -> Option<Span> {
    table.get_key_value(key).map(|(k, _)| k.span())
}

/// Those of `keys` present in `table`, in the order they were written.
fn keys_in_file_order(table: &DeTable<'_>, keys: &[&'static str]) -> Vec<(&'static str, Span)> {
    let mut found: Vec<(&'static str, Span)> = keys
        .iter()
        .filter_map(|k| key_span(table, k).map(|span| (*k, span)))
        .collect();
    found.sort_by_key(|(_, span)| span.start);
    found
}

pub(crate) fn parse(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Plan, PlanErrors> {
    parse_as(text, path, env, NotYet::Refuse)
}

fn parse_as(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    not_yet: NotYet,
) -> Result<Plan, PlanErrors> {
    // After a syntax error the parser's recovery guesses, and its further errors are mostly
    // echoes of the first, so only the first is reported.
    let root = match DeTable::parse(text) {
        Ok(root) => root.into_inner(),
        Err(e) => {
            let location = e.span().map(|s| Location::of_offset(text, s.start));
            return Err(PlanErrors(vec![PlanError {
                file: path.to_path_buf(),
                location,
                message: format!("invalid TOML: {}", e.message().trim_end()),
            }]));
        }
    };
    let mut cx = Ctx {
        text,
        lines: LineIndex::new(text),
        path,
        env,
        errors: Vec::new(),
        step: None,
        urls: Vec::new(),
        not_yet,
    };
    cx.unknown_keys(&root, Section::Top, "the plan");
    cx.not_supported_yet(&root, "the plan");

    let name = cx.text(&root, "name").map(|(n, _)| n);
    if !root.contains_key("name") {
        cx.error_unlocated("the plan needs a `name`; it identifies the run in the state database");
    }
    let database = cx.url(&root, "database");
    if !root.contains_key("database") {
        cx.error_unlocated("the plan needs a `database` URL");
    }
    let state_database = read_state(&mut cx, &root);
    let mut default_key_locations = BTreeMap::new();
    let defaults = match cx.table(&root, "defaults") {
        Some(t) => {
            cx.unknown_keys(t, Section::Defaults, "[defaults]");
            cx.not_supported_yet(t, "[defaults]");
            default_key_locations = t
                .keys()
                .map(|k| (k.get_ref().to_string(), cx.loc(&k.span())))
                .collect();
            cx.settings(t, &Settings::default())
        }
        None => Settings::default(),
    };
    let expect_max_duration = match cx.table(&root, "expect") {
        Some(t) => {
            cx.unknown_keys(t, Section::Expect, "[expect]");
            cx.not_supported_yet(t, "[expect]");
            cx.duration(t, "max_duration")
        }
        None => None,
    };
    let guards = read_guards(&mut cx, &root);
    let key_locations = root
        .keys()
        .map(|k| (k.get_ref().to_string(), cx.loc(&k.span())))
        .collect();
    let (named, steps) = read_steps(&mut cx, &root, &defaults);
    for (span, message) in order::check(&cx.lines, &named) {
        cx.push(&span, message);
    }

    if !cx.errors.is_empty() {
        let mut errors = cx.errors;
        errors.sort_by_key(|e| e.location);
        return Err(PlanErrors(errors));
    }
    let (Some(name), Some(database)) = (name, database) else {
        // Unreachable: a missing or invalid `name` or `database` was reported above.
        return Err(PlanErrors(vec![PlanError {
            file: path.to_path_buf(),
            location: None,
            message: "the plan needs a `name` and a `database`".to_string(),
        }]));
    };
    Ok(Plan {
        name,
        database,
        state_database,
        defaults,
        steps,
        expect_max_duration,
        replicas: guards.replicas,
        max_replica_lag: guards.max_replica_lag,
        max_latency_increase: guards.max_latency_increase,
        probe_query: guards.probe_query,
        notify: guards.notify,
        notify_throttled_after: guards.notify_throttled_after,
        path: path.to_path_buf(),
        text: text.to_string(),
        written_urls: cx.urls,
        key_locations,
        default_key_locations,
    })
}

/// `[state] database`, when the plan keeps its progress in another database.
fn read_state(cx: &mut Ctx<'_>, root: &DeTable<'_>) -> Option<String> {
    let state = cx.table(root, "state")?;
    cx.unknown_keys(state, Section::State, "[state]");
    if !state.contains_key("database") {
        if let Some(at) = key_span(root, "state") {
            cx.error(&at, "[state] needs a `database` URL");
        }
    }
    cx.url(state, "database")
}

/// The top-level keys that guard the databases while a run goes on.
struct Guards {
    replicas: Vec<String>,
    max_replica_lag: Option<Duration>,
    max_latency_increase: Option<f64>,
    probe_query: Option<String>,
    notify: Vec<String>,
    notify_throttled_after: Duration,
}

fn read_guards(cx: &mut Ctx<'_>, root: &DeTable<'_>) -> Guards {
    let replicas = read_replicas(cx, root);
    // Without `replicas`, `max_replica_lag` watches the replicas the plan's database lists
    // itself, which only PostgreSQL does: the judge refuses it on the others.
    let max_replica_lag = cx.duration(root, "max_replica_lag");
    let max_latency_increase = read_factor(cx, root, "max_latency_increase");
    let probe_query = cx.text(root, "probe_query").map(|(q, _)| q);
    if let (Some(at), false) = (
        key_span(root, "probe_query"),
        root.contains_key("max_latency_increase"),
    ) {
        cx.error(
            &at,
            "`probe_query` does nothing without `max_latency_increase`",
        );
    }
    let notify = read_notify(cx, root);
    let notify_throttled_after = cx.duration(root, "notify_throttled_after");
    if let (Some(at), false) = (
        key_span(root, "notify_throttled_after"),
        root.contains_key("notify"),
    ) {
        cx.error(
            &at,
            "`notify_throttled_after` does nothing without `notify`",
        );
    }
    Guards {
        replicas,
        max_replica_lag,
        max_latency_increase,
        probe_query,
        notify,
        notify_throttled_after: notify_throttled_after.unwrap_or(DEFAULT_NOTIFY_THROTTLED_AFTER),
    }
}

/// The `[[steps]]` tables: the name and `after` of each that has a name, for the order checks,
/// and each step without a problem.
fn read_steps(
    cx: &mut Ctx<'_>,
    root: &DeTable<'_>,
    defaults: &Settings,
) -> (Vec<NamedStep>, Vec<Step>) {
    let mut steps = Vec::new();
    let mut named = Vec::new();
    let Some((key, value)) = root.get_key_value("steps") else {
        cx.error_unlocated("the plan has no steps; add a [[steps]] table");
        return (named, steps);
    };
    match value.get_ref() {
        DeValue::Array(items) if !items.is_empty() => {
            for item in items.iter() {
                match item.get_ref() {
                    DeValue::Table(t) => {
                        let (name, step) = read_step(cx, t, item.span(), defaults);
                        named.extend(name);
                        steps.extend(step);
                    }
                    other => cx.error(
                        &item.span(),
                        format!(
                            "each step must be a table ([[steps]]), not {}",
                            type_name(other)
                        ),
                    ),
                }
            }
        }
        DeValue::Array(_) => cx.error(&key.span(), "the plan has no steps"),
        other => cx.error(
            &value.span(),
            format!(
                "`steps` must be a list of [[steps]] tables, not {}",
                type_name(other)
            ),
        ),
    }
    (named, steps)
}

#[cfg(test)]
mod test_support {
    use std::path::Path;

    use crate::model::Plan;
    use crate::PlanErrors;

    use super::{parse_as, NotYet};

    pub(super) fn env(name: &str) -> Option<String> {
        match name {
            "DB" => Some("postgres://u:pw@h/d".to_string()),
            "HOST" => Some("db.internal".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    pub(super) const HEAD: &str = "name = \"x\"\ndatabase = \"sqlite://a\"\n";

    /// The parser with the keys of `not_yet::NOT_SUPPORTED_YET` read into the model, so these tests
    /// keep testing how they are read; `refuses_keys_not_supported_yet` tests what every
    /// command does with them.
    pub(super) fn parse(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Plan, PlanErrors> {
        parse_as(text, path, env, NotYet::Accept)
    }

    pub(super) fn parse_ok(text: &str) -> Plan {
        parse(text, Path::new("p.toml"), &env).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Parses `text` and compares its errors, one per line, with `expected`.
    pub(super) fn check(text: &str, expected: &str) {
        let got = match parse(text, Path::new("p.toml"), &env) {
            Ok(plan) => format!("ok: {plan:?}"),
            Err(errors) => errors.to_string(),
        };
        assert_eq!(got, expected.trim_end(), "\n--- input ---\n{text}");
    }

    /// Like `check`, after the two lines of `HEAD`.
    pub(super) fn check_steps(steps: &str, expected: &str) {
        check(&format!("{HEAD}{steps}"), expected);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::test_support::{check, check_steps, env, parse, parse_ok, HEAD};
    use crate::model::{CopySpec, OnConflict, OnRowError, Script, Settings, StepKind};
    use crate::Location;

    /// Where the Lua code of the contract plan's steps starts.
    const LUA_LINE: usize = 40;

    /// Issue 11: `check` took 45 s on 20,000 steps, as locating each key walked the text from
    /// its start. The locations of the last step must still be right.
    #[test]
    fn r11_parses_a_plan_of_20000_steps() {
        let mut text = HEAD.to_string();
        for i in 0..20_000 {
            text.push_str(&format!("[[steps]]\nname = \"s{i}\"\nsql = \"SELECT 1\"\n"));
            if i > 0 {
                text.push_str(&format!("after = [\"s{}\"]\n", i - 1));
            }
        }
        let plan = parse_ok(&text);
        assert_eq!(plan.steps.len(), 20_000);
        let last = &plan.steps[19_999];
        assert_eq!(last.after, ["s19998"]);
        assert_eq!(
            last.location,
            Location::of_offset(&text, text.rfind("[[steps]]").unwrap())
        );
        assert_eq!(last.location.line, 4 * 19_999 + 2);
        assert_eq!(last.key_locations["after"].line, last.location.line + 3);
        // A duplicate far down names the line of the first.
        text.push_str("[[steps]]\nname = \"s1\"\nsql = \"SELECT 1\"\n");
        let errors = parse(&text, Path::new("p.toml"), &env)
            .unwrap_err()
            .to_string();
        assert!(errors.contains("already exists at line 7;"), "{errors}");
    }

    const COPY_LUA_LINE: usize = 60;

    const CONTRACT_PLAN: &str = r#"name = "vn-phones"                     # required; identifies the run in the state database
database = "${DB}"                     # required; postgres://…, mysql://…, sqlite://path

[state]                                # optional; default: the plan's own database
database = "postgres://state:${DB_PW}@${HOST}/godwit"

[defaults]                             # optional; every step may override
batch_size = 1000
max_attempts = 5                       # per batch, for transient errors
lease = "30s"                          # a worker silent this long loses its batches to others

[expect]
max_duration = "2h"

[[steps]]
name = "create-index"                  # required, unique in the plan
sql = "CREATE INDEX IF NOT EXISTS customers_phone ON customers (phone)"

[[steps]]
name = "customers"
after = ["create-index"]
table = "customers"
key = "id"
where = "length(phone) = 11"
batch_size = 2000
target_batch_time = "500ms"
sql = """
UPDATE customers SET phone = '0' || substr(phone, 3)
WHERE id BETWEEN :start AND :end AND length(phone) = 11
"""

[[steps]]
name = "phones-lua"
table = "customers"
key = "id"
columns = ["phone"]
where = "length(phone) = 11"
on_row_error = "skip"
lua = '''
function transform(row)
  return { phone = "0" .. row.phone:sub(3) }
end
'''

[[steps]]
name = "phones-py"
after = ["phones-lua"]
table = "customers"
key = "id"
command = ["python3", "transforms/phones.py"]

[[steps]]
name = "orders"
source = "mysql://root:hunter2@127.0.0.1/shop"
table = "orders"
key = "id"
columns = ["id", "customer_id", "status", "total", "created_at"]
into = "orders_history"
on_conflict = "update"
lua = '''function transform(row) return row end'''
"#;

    fn contract_env(name: &str) -> Option<String> {
        match name {
            "DB_PW" => Some("s3cret".to_string()),
            other => env(other),
        }
    }

    #[test]
    fn parses_the_contract_plan_into_the_model() {
        let plan = parse(CONTRACT_PLAN, Path::new("p.toml"), &contract_env)
            .unwrap_or_else(|e| panic!("{e}"));
        let defaults = Settings {
            batch_size: 1000,
            max_attempts: 5,
            lease: Duration::from_secs(30),
            ..Settings::default()
        };
        assert_eq!(plan.name, "vn-phones");
        assert_eq!(plan.database, "postgres://u:pw@h/d");
        assert_eq!(
            plan.state_database.as_deref(),
            Some("postgres://state:s3cret@db.internal/godwit")
        );
        assert_eq!(plan.defaults, defaults);
        assert_eq!(plan.expect_max_duration, Some(Duration::from_secs(7200)));
        assert_eq!(plan.replicas, Vec::<String>::new());
        assert_eq!(plan.text, CONTRACT_PLAN);
        assert_eq!(plan.path, Path::new("p.toml"));

        let kinds: Vec<&StepKind> = plan.steps.iter().map(|s| &s.kind).collect();
        assert_eq!(
            kinds,
            [
                &StepKind::Once {
                    sql: "CREATE INDEX IF NOT EXISTS customers_phone ON customers (phone)".into()
                },
                &StepKind::Chunked {
                    table: "customers".into(),
                    key: "id".into(),
                    filter: Some("length(phone) = 11".into()),
                    sql: "UPDATE customers SET phone = '0' || substr(phone, 3)\nWHERE id BETWEEN :start AND :end AND length(phone) = 11\n".into(),
                },
                &StepKind::Transform {
                    table: "customers".into(),
                    key: "id".into(),
                    columns: vec!["phone".into()],
                    filter: Some("length(phone) = 11".into()),
                    script: Script::Lua {
                        code: "function transform(row)\n  return { phone = \"0\" .. row.phone:sub(3) }\nend\n".into(),
                        file: None,
                        first_line: LUA_LINE,
                    },
                },
                &StepKind::Transform {
                    table: "customers".into(),
                    key: "id".into(),
                    columns: Vec::new(),
                    filter: None,
                    script: Script::Command(vec!["python3".into(), "transforms/phones.py".into()]),
                },
                &StepKind::Copy(CopySpec {
                    source: Some("mysql://root:hunter2@127.0.0.1/shop".into()),
                    table: "orders".into(),
                    key: "id".into(),
                    columns: Some(
                        ["id", "customer_id", "status", "total", "created_at"]
                            .map(String::from)
                            .to_vec()
                    ),
                    query: None,
                    filter: None,
                    into: "orders_history".into(),
                    target_key: None,
                    on_conflict: OnConflict::Update,
                    script: Some(Script::Lua {
                        code: "function transform(row) return row end".into(),
                        file: None,
                        first_line: COPY_LUA_LINE,
                    }),
                }),
            ]
        );
        let names: Vec<&str> = plan.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "create-index",
                "customers",
                "phones-lua",
                "phones-py",
                "orders"
            ]
        );
        assert_eq!(plan.steps[1].after, ["create-index"]);
        assert_eq!(plan.steps[0].settings, defaults);
        assert_eq!(
            plan.steps[1].settings,
            Settings {
                batch_size: 2000,
                target_batch_time: Some(Duration::from_millis(500)),
                ..defaults.clone()
            }
        );
        assert_eq!(
            plan.steps[2].settings,
            Settings {
                on_row_error: OnRowError::Skip,
                ..defaults
            }
        );
        assert_eq!(
            plan.steps[1].location,
            Location {
                line: 19,
                column: 1
            }
        );
        assert_eq!(
            plan.steps[1].key_locations["sql"],
            Location {
                line: 27,
                column: 1
            }
        );
        assert_eq!(plan.steps[1].key_locations.len(), 8);
    }

    #[test]
    fn parses_the_bundled_example_plan() {
        let text = include_str!("../../../../examples/vn-phones.toml");
        let plan = parse(text, Path::new("examples/vn-phones.toml"), &|name| {
            (name == "DEMO_DATABASE_URL").then(|| "sqlite://demo.db".to_string())
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plan.name, "vn-phones");
        assert_eq!(plan.steps[0].settings.batch_size, 5000);
        assert!(matches!(plan.steps[0].kind, StepKind::Chunked { .. }));
    }

    #[test]
    fn debug_of_a_plan_hides_every_password() {
        let plan = parse(
            &format!("{CONTRACT_PLAN}\n"),
            Path::new("p.toml"),
            &contract_env,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let debug = format!("{plan:?}");
        for secret in ["pw@", "s3cret", "hunter2"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert!(debug.contains("mysql://root:***@127.0.0.1/shop"), "{debug}");
        assert!(debug.contains("postgres://u:***@h/d"), "{debug}");
    }

    #[test]
    fn reports_toml_syntax_errors_with_line_and_column() {
        check(
            "name = \"x\"\ndatabase = \n",
            "p.toml:2:12: invalid TOML: string values must be quoted, expected literal string",
        );
        check(
            "name = \"x\"\nname = \"y\"\n",
            "p.toml:2:1: invalid TOML: duplicate key",
        );
        check(
            "name = \"é\"\nsteps = [1,\n",
            "p.toml:2:12: invalid TOML: unclosed array, expected `]`",
        );
    }

    #[test]
    fn requires_name_database_and_steps() {
        check(
            "",
            "p.toml: the plan needs a `name`; it identifies the run in the state database\n\
             p.toml: the plan needs a `database` URL\n\
             p.toml: the plan has no steps; add a [[steps]] table",
        );
        check(
            "name = \" \"\ndatabase = \"sqlite://a\"\nsteps = []\n",
            "p.toml:1:8: `name` must not be empty\n\
             p.toml:3:1: the plan has no steps",
        );
    }

    #[test]
    fn checks_that_after_names_steps() {
        check_steps(
            "[[steps]]\nname = \"load\"\nsql = \"SELECT 1\"\n\
             [[steps]]\nname = \"index\"\nafter = [\"lod\", \"index-x\", \"zzz\"]\nsql = \"SELECT 1\"\n",
            "p.toml:8:10: step \"index\" comes after \"lod\", which is not a step of this plan; did you mean \"load\"?\n\
             p.toml:8:17: step \"index\" comes after \"index-x\", which is not a step of this plan\n\
             p.toml:8:28: step \"index\" comes after \"zzz\", which is not a step of this plan",
        );
    }

    #[test]
    fn detects_cycles_through_after() {
        check_steps(
            "[[steps]]\nname = \"a\"\nafter = [\"b\"]\nsql = \"SELECT 1\"\n\
             [[steps]]\nname = \"b\"\nafter = [\"a\"]\nsql = \"SELECT 1\"\n",
            "p.toml:5:1: steps form a cycle through `after`: a -> b -> a",
        );
        check_steps(
            "[[steps]]\nname = \"a\"\nafter = [\"a\"]\nsql = \"SELECT 1\"\n",
            "p.toml:5:1: steps form a cycle through `after`: a -> a",
        );
        check_steps(
            "[[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n\
             [[steps]]\nname = \"b\"\nafter = [\"a\", \"d\"]\nsql = \"SELECT 1\"\n\
             [[steps]]\nname = \"c\"\nafter = [\"b\"]\nsql = \"SELECT 1\"\n\
             [[steps]]\nname = \"d\"\nafter = [\"c\"]\nsql = \"SELECT 1\"\n",
            "p.toml:8:1: steps form a cycle through `after`: b -> d -> c -> b",
        );
    }

    #[test]
    fn rejects_duplicate_step_names_at_the_second() {
        check_steps(
            "[[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n\
             [[steps]]\nname = \"a\"\nsql = \"SELECT 2\"\n",
            "p.toml:7:8: a step named \"a\" already exists at line 4; step names must be unique",
        );
    }

    #[test]
    fn reads_replica_and_latency_guards() {
        let plan = parse_ok(&format!(
            "{HEAD}replicas = [\"postgres://r1/d\"]\nmax_replica_lag = \"10s\"\nmax_latency_increase = \"2x\"\nprobe_query = \"SELECT 1\"\n\
             [[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n"
        ));
        assert_eq!(plan.replicas, ["postgres://r1/d"]);
        assert_eq!(plan.max_replica_lag, Some(Duration::from_secs(10)));
        assert_eq!(
            plan.place("max_replica_lag").map(|p| p.to_string()),
            Some("p.toml:4:1".to_string())
        );
        assert_eq!(plan.max_latency_increase, Some(2.0));
        assert_eq!(plan.probe_query.as_deref(), Some("SELECT 1"));
        assert_eq!(
            parse_ok(&format!(
                "{HEAD}max_latency_increase = 1.5\n[[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n"
            ))
            .max_latency_increase,
            Some(1.5)
        );
        check_steps(
            "max_replica_lag = \"10s\"\nmax_latency_increase = \"half\"\nprobe_query = \"SELECT 1\"\nreplicas = \"postgres://r\"\n\
             [[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n",
            "p.toml:4:24: `max_latency_increase` must be a factor greater than 1, such as \"2x\"\n\
             p.toml:6:12: `replicas` must be an array of strings, such as [\"a\", \"b\"], not a string",
        );
        check_steps(
            "probe_query = \"SELECT 1\"\n[[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n",
            "p.toml:3:1: `probe_query` does nothing without `max_latency_increase`",
        );
    }

    /// Issue 13: `replicas` alone throttles at the default lag; `max_replica_lag` alone
    /// watches the plan database's own replicas; neither watches nothing.
    #[test]
    fn replica_lag_limit_defaults_to_ten_seconds() {
        let limit = |keys: &str| {
            parse_ok(&format!(
                "{HEAD}{keys}[[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n"
            ))
            .replica_lag_limit()
        };
        assert_eq!(
            limit("replicas = [\"postgres://r/d\"]\n"),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            limit("max_replica_lag = \"1.5s\"\n"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(limit(""), None);
    }

    #[test]
    fn expect_max_duration_must_parse() {
        check_steps(
            "[expect]\nmax_duration = \"forever\"\n[[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n",
            "p.toml:4:16: `max_duration` must be a duration such as \"500ms\", \"30s\", \"10m\" or \"2h\", not \"forever\"",
        );
    }
}
