//! TOML text → [`Plan`], collecting every problem with its location.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::model::{OnConflict, OnRowError, Plan, Script, Settings, Step, StepKind};
use crate::{parse_duration, Location, PlanError, PlanErrors};

const TOP_KEYS: &[&str] = &[
    "name",
    "database",
    "state",
    "defaults",
    "steps",
    "expect",
    "replicas",
    "max_replica_lag",
];
const SETTING_KEYS: &[&str] = &[
    "batch_size",
    "max_attempts",
    "lease",
    "batch_timeout",
    "on_row_error",
    "target_batch_time",
    "adaptive",
    "min_batch_size",
    "max_batch_size",
    "max_rows_per_second",
    "throttle_query",
];
const STEP_KEYS: &[&str] = &[
    "name",
    "after",
    "table",
    "key",
    "where",
    "sql",
    "lua",
    "lua_file",
    "command",
    "columns",
    "source",
    "query",
    "into",
    "on_conflict",
];

type Table<'i> = DeTable<'i>;

struct Ctx<'a> {
    text: &'a str,
    path: &'a Path,
    env: &'a dyn Fn(&str) -> Option<String>,
    errors: Vec<PlanError>,
}

impl Ctx<'_> {
    fn loc(&self, span: &Range<usize>) -> Location {
        Location::of_offset(self.text, span.start)
    }

    fn error(&mut self, span: &Range<usize>, message: impl Into<String>) {
        self.errors.push(PlanError {
            file: self.path.to_path_buf(),
            location: Some(self.loc(span)),
            message: message.into(),
        });
    }

    /// Rejects keys of `table` not in `known`, suggesting the closest known key.
    fn unknown_keys(&mut self, table: &Table<'_>, known: &[&[&str]], what: &str) {
        for key in table.keys() {
            let name = key.get_ref().as_ref();
            if known.iter().any(|set| set.contains(&name)) {
                continue;
            }
            let suggestion = known
                .iter()
                .flat_map(|set| set.iter())
                .map(|k| (strsim::jaro_winkler(name, k), *k))
                .filter(|(score, _)| *score > 0.8)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, k)| format!("; did you mean `{k}`?"))
                .unwrap_or_default();
            self.error(
                &key.span(),
                format!("unknown key `{name}` in {what}{suggestion}"),
            );
        }
    }

    fn string(&mut self, table: &Table<'_>, key: &str) -> Option<(String, Range<usize>)> {
        let value = table.get(key)?;
        match value.get_ref() {
            DeValue::String(s) => Some((s.to_string(), value.span())),
            other => {
                self.error(
                    &value.span(),
                    format!("`{key}` must be a string, not {}", type_name(other)),
                );
                None
            }
        }
    }

    fn strings(&mut self, table: &Table<'_>, key: &str) -> Option<(Vec<String>, Range<usize>)> {
        let value = table.get(key)?;
        let DeValue::Array(items) = value.get_ref() else {
            self.error(
                &value.span(),
                format!("`{key}` must be an array of strings, such as [\"a\", \"b\"]"),
            );
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items.iter() {
            match item.get_ref() {
                DeValue::String(s) => out.push(s.to_string()),
                other => {
                    self.error(
                        &item.span(),
                        format!("`{key}` must hold strings, not {}", type_name(other)),
                    );
                    return None;
                }
            }
        }
        Some((out, value.span()))
    }

    fn integer(&mut self, table: &Table<'_>, key: &str, min: i64) -> Option<i64> {
        let value = table.get(key)?;
        let DeValue::Integer(i) = value.get_ref() else {
            self.error(
                &value.span(),
                format!(
                    "`{key}` must be an integer, not {}",
                    type_name(value.get_ref())
                ),
            );
            return None;
        };
        let digits = i.as_str().replace('_', "");
        let digits = digits
            .trim_start_matches("0x")
            .trim_start_matches("0o")
            .trim_start_matches("0b");
        match i64::from_str_radix(digits, i.radix()) {
            Ok(n) if n >= min => Some(n),
            _ => {
                self.error(&value.span(), format!("`{key}` must be at least {min}"));
                None
            }
        }
    }

    fn number(&mut self, table: &Table<'_>, key: &str) -> Option<f64> {
        let value = table.get(key)?;
        let n = match value.get_ref() {
            DeValue::Integer(i) => i.as_str().replace('_', "").parse::<f64>().ok(),
            DeValue::Float(f) => f.as_str().replace('_', "").parse::<f64>().ok(),
            _ => None,
        };
        match n {
            Some(n) if n > 0.0 => Some(n),
            _ => {
                self.error(&value.span(), format!("`{key}` must be a positive number"));
                None
            }
        }
    }

    fn boolean(&mut self, table: &Table<'_>, key: &str) -> Option<bool> {
        let value = table.get(key)?;
        match value.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                self.error(
                    &value.span(),
                    format!("`{key}` must be true or false, not {}", type_name(other)),
                );
                None
            }
        }
    }

    fn duration(&mut self, table: &Table<'_>, key: &str) -> Option<Duration> {
        let (text, span) = self.string(table, key)?;
        match parse_duration(&text) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                self.error(&span, format!("`{key}` must be longer than zero"));
                None
            }
            Err(e) => {
                self.error(&span, format!("`{key}`: {e}"));
                None
            }
        }
    }

    /// A URL with `${VAR}` expanded from the environment.
    fn url(&mut self, table: &Table<'_>, key: &str) -> Option<(String, Range<usize>)> {
        let (text, span) = self.string(table, key)?;
        let mut out = String::with_capacity(text.len());
        let mut rest = text.as_str();
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let Some(len) = rest[start + 2..].find('}') else {
                self.error(&span, format!("`{key}` has an unclosed `${{`"));
                return None;
            };
            let name = &rest[start + 2..start + 2 + len];
            match (self.env)(name) {
                Some(value) => out.push_str(&value),
                None => {
                    self.error(
                        &span,
                        format!("`{key}` uses ${{{name}}}, but the environment variable {name} is not set"),
                    );
                    return None;
                }
            }
            rest = &rest[start + 2 + len + 1..];
        }
        out.push_str(rest);
        Some((out, span))
    }

    fn table<'t, 'i>(&mut self, parent: &'t Table<'i>, key: &str) -> Option<&'t Table<'i>> {
        let value = parent.get(key)?;
        match value.get_ref() {
            DeValue::Table(t) => Some(t),
            other => {
                self.error(
                    &value.span(),
                    format!(
                        "`{key}` must be a table ([{key}]), not {}",
                        type_name(other)
                    ),
                );
                None
            }
        }
    }

    fn settings(&mut self, table: &Table<'_>, base: &Settings) -> Settings {
        let mut s = base.clone();
        if let Some(n) = self.integer(table, "batch_size", 1) {
            s.batch_size = n as u64;
        }
        if let Some(n) = self.integer(table, "max_attempts", 1) {
            s.max_attempts = u32::try_from(n).unwrap_or(u32::MAX);
        }
        if let Some(d) = self.duration(table, "lease") {
            s.lease = d;
        }
        if let Some(d) = self.duration(table, "batch_timeout") {
            s.batch_timeout = d;
        }
        if let Some((v, span)) = self.string(table, "on_row_error") {
            match v.as_str() {
                "fail" => s.on_row_error = OnRowError::Fail,
                "skip" => s.on_row_error = OnRowError::Skip,
                _ => self.error(&span, "`on_row_error` must be \"fail\" or \"skip\""),
            }
        }
        if let Some(d) = self.duration(table, "target_batch_time") {
            s.target_batch_time = Some(d);
        }
        if let Some(b) = self.boolean(table, "adaptive") {
            s.adaptive = b;
        }
        if let Some(n) = self.integer(table, "min_batch_size", 1) {
            s.min_batch_size = Some(n as u64);
        }
        if let Some(n) = self.integer(table, "max_batch_size", 1) {
            s.max_batch_size = Some(n as u64);
        }
        if let Some(n) = self.number(table, "max_rows_per_second") {
            s.max_rows_per_second = Some(n);
        }
        if let Some((q, _)) = self.string(table, "throttle_query") {
            s.throttle_query = Some(q);
        }
        s
    }
}

fn type_name(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

pub(crate) fn parse(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Plan, PlanErrors> {
    let root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(e) => {
            let location = e.span().map(|s| Location::of_offset(text, s.start));
            return Err(PlanErrors(vec![PlanError {
                file: path.to_path_buf(),
                location,
                message: format!("invalid TOML: {}", e.message().trim_end_matches('\n')),
            }]));
        }
    };
    let root_span = root.span();
    let root = root.into_inner();
    let mut cx = Ctx {
        text,
        path,
        env,
        errors: Vec::new(),
    };
    cx.unknown_keys(&root, &[TOP_KEYS], "the plan");

    let name = match cx.string(&root, "name") {
        Some((n, span)) if n.trim().is_empty() => {
            cx.error(&span, "`name` must not be empty");
            None
        }
        Some((n, _)) => Some(n),
        None if root.contains_key("name") => None,
        None => {
            cx.error(&(0..0), "the plan needs a `name` (it identifies the run)");
            None
        }
    };
    let database = cx.url(&root, "database").map(|(u, _)| u);
    if !root.contains_key("database") {
        cx.error(&(0..0), "the plan needs a `database` URL");
    }
    let state_database = match cx.table(&root, "state") {
        Some(state) => {
            cx.unknown_keys(state, &[&["database"]], "[state]");
            cx.url(state, "database").map(|(u, _)| u)
        }
        None => None,
    };
    let defaults = match cx.table(&root, "defaults") {
        Some(t) => {
            cx.unknown_keys(t, &[SETTING_KEYS], "[defaults]");
            cx.settings(t, &Settings::default())
        }
        None => Settings::default(),
    };
    let expect_max_duration = match cx.table(&root, "expect") {
        Some(t) => {
            cx.unknown_keys(t, &[&["max_duration"]], "[expect]");
            cx.duration(t, "max_duration")
        }
        None => None,
    };
    let mut replicas = Vec::new();
    if let Some(value) = root.get("replicas") {
        match value.get_ref() {
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let mut one = Table::new();
                    one.insert(Spanned::new(item.span(), "replica".into()), item.clone());
                    if let Some((url, _)) = cx.url(&one, "replica") {
                        replicas.push(url);
                    } else if !matches!(item.get_ref(), DeValue::String(_)) {
                        let _ = i;
                    }
                }
            }
            _ => cx.error(&value.span(), "`replicas` must be an array of URLs"),
        }
    }
    let max_replica_lag = cx.duration(&root, "max_replica_lag");

    let mut steps = Vec::new();
    match root.get("steps") {
        Some(value) => match value.get_ref() {
            DeValue::Array(items) if !items.is_empty() => {
                for item in items.iter() {
                    match item.get_ref() {
                        DeValue::Table(t) => {
                            if let Some(step) = parse_step(&mut cx, t, item.span(), &defaults) {
                                steps.push(step);
                            }
                        }
                        _ => cx.error(&item.span(), "each step must be a table ([[steps]])"),
                    }
                }
            }
            _ => cx.error(&value.span(), "`steps` must be a list of [[steps]] tables"),
        },
        None => cx.error(&root_span, "the plan has no steps; add a [[steps]] table"),
    }
    check_names_and_order(&mut cx, &steps);

    if !cx.errors.is_empty() {
        cx.errors.sort_by_key(|e| e.location);
        return Err(PlanErrors(cx.errors));
    }
    Ok(Plan {
        name: name.unwrap_or_default(),
        database: database.unwrap_or_default(),
        state_database,
        defaults,
        steps,
        expect_max_duration,
        replicas,
        max_replica_lag,
        path: path.to_path_buf(),
        text: text.to_string(),
    })
}

fn parse_step(
    cx: &mut Ctx<'_>,
    t: &Table<'_>,
    span: Range<usize>,
    defaults: &Settings,
) -> Option<Step> {
    cx.unknown_keys(t, &[STEP_KEYS, SETTING_KEYS], "a step");
    let key_locations: BTreeMap<String, Location> = t
        .iter()
        .map(|(k, _)| (k.get_ref().to_string(), cx.loc(&k.span())))
        .collect();
    let first_key = t.keys().map(|k| k.span()).min_by_key(|s| s.start);
    let location = cx.loc(first_key.as_ref().unwrap_or(&span));
    let here = first_key.unwrap_or(span);
    let name = match cx.string(t, "name") {
        Some((n, s)) if n.trim().is_empty() => {
            cx.error(&s, "a step's `name` must not be empty");
            return None;
        }
        Some((n, _)) => n,
        None => {
            if !t.contains_key("name") {
                cx.error(&here, "this step has no `name`");
            }
            return None;
        }
    };
    let after = cx.strings(t, "after").map(|(a, _)| a).unwrap_or_default();
    let settings = cx.settings(t, defaults);
    let sql = cx.string(t, "sql").map(|(s, _)| s);
    let table = cx.string(t, "table").map(|(s, _)| s);
    let key = cx.string(t, "key").map(|(s, _)| s);
    let filter = cx.string(t, "where").map(|(s, _)| s);
    let into = cx.string(t, "into").map(|(s, _)| s);
    let source = cx.url(t, "source").map(|(s, _)| s);
    let query = cx.string(t, "query").map(|(s, _)| s);
    let columns = cx.strings(t, "columns").map(|(c, _)| c);
    let on_conflict = match cx.string(t, "on_conflict") {
        Some((v, s)) => match v.as_str() {
            "update" => OnConflict::Update,
            "ignore" => OnConflict::Ignore,
            "error" => OnConflict::Error,
            _ => {
                cx.error(
                    &s,
                    "`on_conflict` must be \"update\", \"ignore\" or \"error\"",
                );
                OnConflict::Error
            }
        },
        None => OnConflict::Error,
    };
    let script = step_script(cx, t, &name)?;
    let at = |key: &str| t.keys().find(|k| k.get_ref() == key).map(|k| k.span());

    let shape_error = |cx: &mut Ctx<'_>, key: &str, message: String| {
        let span = at(key).unwrap_or_else(|| here.clone());
        cx.error(&span, format!("step {name:?}: {message}"));
    };
    if table.is_some() && key.is_none() {
        shape_error(
            cx,
            "table",
            "chunked steps need `key`: the unique, indexed column batches are cut along".into(),
        );
        return None;
    }
    if key.is_some() && table.is_none() {
        shape_error(cx, "key", "`key` needs `table`".into());
        return None;
    }
    if filter.is_some() && table.is_none() {
        shape_error(cx, "where", "`where` needs `table` and `key`".into());
        return None;
    }
    if sql.is_some() && script.is_some() {
        shape_error(
            cx,
            "sql",
            "a step has either `sql` or a transform (`lua`, `lua_file`, `command`), not both"
                .into(),
        );
        return None;
    }
    if query.is_some() && columns.is_some() {
        shape_error(
            cx,
            "query",
            "`query` replaces `columns`; give one of them".into(),
        );
        return None;
    }
    let kind = match (into, table, key) {
        (Some(into), Some(table), Some(key)) => StepKind::Copy {
            source,
            table,
            key,
            columns,
            query,
            filter,
            into,
            on_conflict,
            script,
        },
        (Some(_), _, _) => {
            shape_error(
                cx,
                "into",
                "a copy (`into`) needs `table` and `key` to read from".into(),
            );
            return None;
        }
        (None, Some(table), Some(key)) => match (sql, script) {
            (Some(sql), None) => StepKind::Chunked {
                table,
                key,
                filter,
                sql,
            },
            (None, Some(script)) => StepKind::Transform {
                table,
                key,
                columns: columns.unwrap_or_default(),
                filter,
                script,
            },
            _ => {
                shape_error(
                    cx,
                    "table",
                    "a chunked step needs `sql` (or a transform: `lua`, `lua_file`, `command`)"
                        .into(),
                );
                return None;
            }
        },
        (None, _, _) => match sql {
            Some(sql) => StepKind::Once { sql },
            None => {
                shape_error(cx, "name", "a step needs `sql` (run once), `table` + `key` + `sql` (run per batch), a transform, or `into` (a copy)".into());
                return None;
            }
        },
    };
    Some(Step {
        name,
        after,
        settings,
        kind,
        location,
        key_locations,
    })
}

/// The step's transform, if any. `None` (the outer) means an error was recorded.
fn step_script(cx: &mut Ctx<'_>, t: &Table<'_>, name: &str) -> Option<Option<Script>> {
    let given: Vec<&str> = ["lua", "lua_file", "command"]
        .into_iter()
        .filter(|k| t.contains_key(*k))
        .collect();
    if given.len() > 1 {
        let span = t
            .keys()
            .find(|k| k.get_ref() == given[1])
            .map(|k| k.span())
            .unwrap_or(0..0);
        cx.error(
            &span,
            format!(
                "step {name:?}: give one of `lua`, `lua_file` and `command`, not {}",
                given.join(" and ")
            ),
        );
        return None;
    }
    if let Some((code, _)) = cx.string(t, "lua") {
        return Some(Some(Script::Lua { code, file: None }));
    }
    if let Some((file, span)) = cx.string(t, "lua_file") {
        let full = cx.path.parent().unwrap_or(Path::new(".")).join(&file);
        return match std::fs::read_to_string(&full) {
            Ok(code) => Some(Some(Script::Lua {
                code,
                file: Some(full),
            })),
            Err(e) => {
                cx.error(
                    &span,
                    format!(
                        "step {name:?}: cannot read lua_file {}: {e}",
                        full.display()
                    ),
                );
                None
            }
        };
    }
    if let Some((command, span)) = cx.strings(t, "command") {
        if command.is_empty() || command[0].trim().is_empty() {
            cx.error(&span, format!("step {name:?}: `command` must name a program, such as [\"python3\", \"transform.py\"]"));
            return None;
        }
        return Some(Some(Script::Command(command)));
    }
    if given.is_empty() {
        Some(None)
    } else {
        None
    }
}

/// Names are unique, `after` names exist, and `after` has no cycle.
fn check_names_and_order(cx: &mut Ctx<'_>, steps: &[Step]) {
    let span_of = |cx: &Ctx<'_>, step: &Step, key: &str| {
        let loc = step
            .key_locations
            .get(key)
            .copied()
            .unwrap_or(step.location);
        offset_of(cx.text, loc)
    };
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, step) in steps.iter().enumerate() {
        if seen.insert(step.name.as_str(), i).is_some() {
            let span = span_of(cx, step, "name");
            cx.error(
                &span,
                format!(
                    "a step named {:?} already exists; step names must be unique",
                    step.name
                ),
            );
        }
    }
    for step in steps {
        for dep in &step.after {
            if seen.contains_key(dep.as_str()) {
                continue;
            }
            let suggestion = steps
                .iter()
                .map(|s| (strsim::jaro_winkler(dep, &s.name), s.name.as_str()))
                .filter(|(score, _)| *score > 0.8)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, n)| format!("; did you mean {n:?}?"))
                .unwrap_or_default();
            let span = span_of(cx, step, "after");
            cx.error(
                &span,
                format!(
                    "step {:?} comes after {dep:?}, which is not a step of this plan{suggestion}",
                    step.name
                ),
            );
        }
    }
    // Depth-first search for a cycle along `after`.
    let index: HashMap<&str, usize> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut color = vec![0u8; steps.len()];
    let mut stack: Vec<usize> = Vec::new();
    fn visit(
        i: usize,
        steps: &[Step],
        index: &HashMap<&str, usize>,
        color: &mut [u8],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        color[i] = 1;
        stack.push(i);
        for dep in &steps[i].after {
            let Some(&j) = index.get(dep.as_str()) else {
                continue;
            };
            if color[j] == 1 {
                let from = stack.iter().position(|&s| s == j).unwrap_or(0);
                let mut cycle = stack[from..].to_vec();
                cycle.push(j);
                return Some(cycle);
            }
            if color[j] == 0 {
                if let Some(c) = visit(j, steps, index, color, stack) {
                    return Some(c);
                }
            }
        }
        stack.pop();
        color[i] = 2;
        None
    }
    for i in 0..steps.len() {
        if color[i] == 0 {
            if let Some(cycle) = visit(i, steps, &index, &mut color, &mut stack) {
                let names: Vec<&str> = cycle.iter().map(|&i| steps[i].name.as_str()).collect();
                let span = span_of(cx, &steps[cycle[0]], "after");
                cx.error(
                    &span,
                    format!("steps form a cycle through `after`: {}", names.join(" -> ")),
                );
                return;
            }
        }
    }
}

fn offset_of(text: &str, loc: Location) -> Range<usize> {
    let line_start: usize = text
        .split_inclusive('\n')
        .take(loc.line.saturating_sub(1))
        .map(str::len)
        .sum();
    let col: usize = text[line_start..]
        .chars()
        .take(loc.column.saturating_sub(1))
        .map(char::len_utf8)
        .sum();
    let start = line_start + col;
    start..start
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "DB").then(|| "postgres://u:pw@h/d".to_string())
    }

    fn parse_ok(text: &str) -> Plan {
        parse(text, Path::new("p.toml"), &env).unwrap_or_else(|e| panic!("{e}"))
    }

    fn check_err(text: &str, expected: &[&str]) {
        let errors = parse(text, Path::new("p.toml"), &env).expect_err("should fail");
        let got: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
        assert_eq!(got, expected);
    }

    const GOOD: &str = r#"name = "vn-phones"
database = "${DB}"

[defaults]
batch_size = 500
lease = "10s"

[[steps]]
name = "create-index"
sql = "CREATE INDEX IF NOT EXISTS customers_phone ON customers (phone)"

[[steps]]
name = "customers"
after = ["create-index"]
table = "customers"
key = "id"
where = "length(phone) = 11"
batch_size = 2000
sql = "UPDATE customers SET phone = '0' || substr(phone, 3) WHERE id BETWEEN :start AND :end"
"#;

    #[test]
    fn parses_the_contract_example() {
        let plan = parse_ok(GOOD);
        assert_eq!(plan.name, "vn-phones");
        assert_eq!(plan.database, "postgres://u:pw@h/d");
        assert!(!format!("{plan:?}").contains("pw@"));
        assert_eq!(plan.steps.len(), 2);
        assert_eq!(
            plan.steps[0].kind,
            StepKind::Once {
                sql: "CREATE INDEX IF NOT EXISTS customers_phone ON customers (phone)".into()
            }
        );
        assert_eq!(plan.steps[0].settings.batch_size, 500);
        assert_eq!(plan.steps[1].settings.batch_size, 2000);
        assert_eq!(plan.steps[1].settings.lease, Duration::from_secs(10));
        assert_eq!(plan.steps[1].after, vec!["create-index".to_string()]);
        assert!(
            matches!(&plan.steps[1].kind, StepKind::Chunked { filter: Some(f), .. } if f == "length(phone) = 11")
        );
        assert_eq!(
            plan.steps[1].location,
            Location {
                line: 13,
                column: 1
            }
        );
        assert_eq!(
            plan.steps[1].key_locations["sql"],
            Location {
                line: 19,
                column: 1
            }
        );
    }

    #[test]
    fn rejects_unknown_keys_with_a_suggestion() {
        check_err(
            "name = \"x\"\ndatabase = \"sqlite://a\"\n[defaults]\nbatchsize = 3\n[[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\ntabel = \"t\"\n",
            &[
                "p.toml:4:1: unknown key `batchsize` in [defaults]; did you mean `batch_size`?",
                "p.toml:8:1: unknown key `tabel` in a step; did you mean `table`?",
            ],
        );
    }

    #[test]
    fn reports_toml_syntax_with_line_and_column() {
        let errors =
            parse("name = \"x\"\ndatabase = \n", Path::new("p.toml"), &env).expect_err("bad");
        assert_eq!(errors.0.len(), 1);
        assert!(
            errors.0[0].to_string().starts_with("p.toml:2:"),
            "{}",
            errors.0[0]
        );
    }

    #[test]
    fn names_unset_variables() {
        check_err(
            "name = \"x\"\ndatabase = \"${NOPE}\"\n[[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n",
            &["p.toml:2:12: `database` uses ${NOPE}, but the environment variable NOPE is not set"],
        );
    }

    #[test]
    fn checks_after_names_and_cycles() {
        check_err(
            "name = \"x\"\ndatabase = \"sqlite://a\"\n[[steps]]\nname = \"load\"\nafter = [\"lod\"]\nsql = \"SELECT 1\"\n",
            &["p.toml:5:1: step \"load\" comes after \"lod\", which is not a step of this plan; did you mean \"load\"?"],
        );
        check_err(
            "name = \"x\"\ndatabase = \"sqlite://a\"\n[[steps]]\nname = \"a\"\nafter = [\"b\"]\nsql = \"SELECT 1\"\n[[steps]]\nname = \"b\"\nafter = [\"a\"]\nsql = \"SELECT 1\"\n",
            &["p.toml:5:1: steps form a cycle through `after`: a -> b -> a"],
        );
    }

    #[test]
    fn checks_step_shapes_and_types() {
        check_err(
            "name = \"x\"\ndatabase = \"sqlite://a\"\n[[steps]]\nname = \"a\"\ntable = \"t\"\nsql = \"SELECT 1\"\n",
            &["p.toml:5:1: step \"a\": chunked steps need `key`: the unique, indexed column batches are cut along"],
        );
        check_err(
            "name = \"x\"\ndatabase = \"sqlite://a\"\n[defaults]\nbatch_size = 0\n[[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\nafter = \"b\"\nlease = \"soon\"\n",
            &[
                "p.toml:4:14: `batch_size` must be at least 1",
                "p.toml:8:9: `after` must be an array of strings, such as [\"a\", \"b\"]",
                "p.toml:9:9: `lease`: \"soon\" is not a duration; expected something like 500ms, 30s, 10m or 2h",
            ],
        );
        check_err(
            "name = \"x\"\ndatabase = \"sqlite://a\"\n[[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n[[steps]]\nname = \"a\"\nsql = \"SELECT 2\"\n",
            &["p.toml:7:1: a step named \"a\" already exists; step names must be unique"],
        );
    }

    #[test]
    fn needs_name_database_and_steps() {
        let errors = parse("", Path::new("p.toml"), &env).expect_err("empty");
        let text = errors.to_string();
        assert!(text.contains("needs a `name`"), "{text}");
        assert!(text.contains("needs a `database`"), "{text}");
        assert!(text.contains("has no steps"), "{text}");
    }

    #[test]
    fn recognizes_transforms_and_copies() {
        let plan = parse_ok(
            "name = \"x\"\ndatabase = \"sqlite://a\"\n[[steps]]\nname = \"l\"\ntable = \"t\"\nkey = \"id\"\ncolumns = [\"phone\"]\nlua = \"function transform(r) return nil end\"\n[[steps]]\nname = \"c\"\nsource = \"mysql://root@h/shop\"\ntable = \"orders\"\nkey = \"id\"\ninto = \"orders_history\"\non_conflict = \"update\"\n",
        );
        assert!(
            matches!(&plan.steps[0].kind, StepKind::Transform { columns, .. } if columns == &["phone".to_string()])
        );
        assert!(
            matches!(&plan.steps[1].kind, StepKind::Copy { on_conflict: OnConflict::Update, into, .. } if into == "orders_history")
        );
    }
}
