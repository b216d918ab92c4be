//! One `[[steps]]` table into a [`Step`]: its keys, its transform, and which of the step kinds
//! its keys make (one-off SQL, chunked SQL, a transform, a copy), reporting keys that do not
//! fit together.

use std::collections::BTreeMap;
use std::path::Path;

use toml::de::{DeTable, DeValue};

use super::context::Ctx;
use super::keys::Section;
use super::{key_span, keys_in_file_order, Span};
use crate::model::{Convert, CopySpec, Ensure, OnConflict, Script, Settings, Step, StepKind};
use crate::order::NamedStep;
use crate::Location;

const SCRIPT_KEYS: &[&str] = &["lua", "lua_file", "command"];

/// Reads one `[[steps]]` table: its name and `after` for the order checks (whenever it has a
/// name), and the step itself when it has no problem.
pub(super) fn read_step(
    cx: &mut Ctx<'_>,
    t: &DeTable<'_>,
    header: Span,
    defaults: &Settings,
) -> (Option<NamedStep>, Option<Step>) {
    let errors_before = cx.errors.len();
    let name = cx.text(t, "name");
    if !t.contains_key("name") {
        cx.error(&header, "this step has no `name`");
    }
    let what = match &name {
        Some((n, _)) => format!("step {n:?}"),
        None => "a step".to_string(),
    };
    cx.unknown_keys(t, Section::Step, &what);
    cx.not_supported_yet(t, &what);
    cx.step = name.as_ref().map(|(n, _)| n.clone());

    let after = cx.strings(t, "after");
    let named = name.as_ref().map(|(n, span)| NamedStep {
        name: n.clone(),
        name_span: span.clone(),
        after: after.clone().unwrap_or_default(),
        after_key_span: key_span(t, "after"),
    });
    let settings = cx.settings(t, defaults);
    let written = Written::read(cx, t);
    let convert = cx.convert(t);
    let on_conflict = read_on_conflict(cx, t);
    let script = cx.script(t);
    let ensure = read_ensure(cx, t);
    check_shape(cx, t, &header);
    cx.step = None;

    let key_locations: BTreeMap<String, Location> = t
        .keys()
        .map(|k| (k.get_ref().to_string(), cx.loc(&k.span())))
        .collect();
    if cx.errors.len() > errors_before {
        return (named, None);
    }
    let (Some((name, _)), Ok(script)) = (name, script) else {
        return (named, None);
    };
    // Every shape that makes no kind was reported by `check_shape`.
    let Some(kind) = written.kind(on_conflict, script) else {
        return (named, None);
    };
    let step = Step {
        name,
        after: plain(after).unwrap_or_default(),
        settings,
        kind,
        location: cx.loc(&header),
        key_locations,
        convert,
        ensure,
    };
    (named, Some(step))
}

/// `ensure`: one query, or a list of them, none empty.
fn read_ensure(cx: &mut Ctx<'_>, t: &DeTable<'_>) -> Vec<Ensure> {
    let Some(value) = t.get("ensure") else {
        return Vec::new();
    };
    let written = match value.get_ref() {
        DeValue::String(sql) => vec![(sql.to_string(), value.span())],
        DeValue::Array(_) => cx.strings(t, "ensure").unwrap_or_default(),
        _ => {
            let message = "`ensure` must be a query, or an array of queries, each returning true \
                           in its first column once the step is done";
            cx.error(&value.span(), message.to_string());
            return Vec::new();
        }
    };
    if written.is_empty() {
        cx.error(
            &value.span(),
            "`ensure` must name at least one query".to_string(),
        );
    }
    let mut out = Vec::with_capacity(written.len());
    for (sql, span) in written {
        if sql.trim().is_empty() {
            cx.error(&span, "an `ensure` query must not be empty".to_string());
            continue;
        }
        out.push(Ensure {
            sql,
            location: cx.loc(&span),
        });
    }
    out
}

/// The values of an array of strings, without their spans.
fn plain(list: Option<Vec<(String, Span)>>) -> Option<Vec<String>> {
    list.map(|items| items.into_iter().map(|(v, _)| v).collect())
}

/// The keys of a step that choose its kind and fill it, as written.
struct Written {
    sql: Option<String>,
    table: Option<String>,
    key: Option<String>,
    filter: Option<String>,
    into: Option<String>,
    target_key: Option<String>,
    query: Option<String>,
    source: Option<String>,
    columns: Option<Vec<String>>,
}

impl Written {
    fn read(cx: &mut Ctx<'_>, t: &DeTable<'_>) -> Written {
        let mut value = |key: &str| cx.text(t, key).map(|(v, _)| v);
        let sql = value("sql");
        let table = value("table");
        let key = value("key");
        let filter = value("where");
        let into = value("into");
        let target_key = value("target_key");
        let query = value("query");
        let source = cx.url(t, "source");
        let columns = plain(cx.strings(t, "columns"));
        Written {
            sql,
            table,
            key,
            filter,
            into,
            target_key,
            query,
            source,
            columns,
        }
    }

    /// The step kind these keys make, or `None` for a shape that makes none.
    fn kind(self, on_conflict: OnConflict, script: Option<Script>) -> Option<StepKind> {
        let Written {
            sql,
            table,
            key,
            filter,
            into,
            target_key,
            query,
            source,
            columns,
        } = self;
        let kind = match (into, table, key, sql, script) {
            (Some(into), Some(table), Some(key), None, script) => StepKind::Copy(CopySpec {
                source,
                table,
                key,
                columns,
                query,
                filter,
                into,
                target_key,
                on_conflict,
                script,
            }),
            (None, Some(table), Some(key), Some(sql), None) => StepKind::Chunked {
                table,
                key,
                filter,
                sql,
            },
            (None, Some(table), Some(key), None, Some(script)) => StepKind::Transform {
                table,
                key,
                columns: columns.unwrap_or_default(),
                filter,
                script,
            },
            (None, None, None, Some(sql), None) => StepKind::Once { sql },
            _ => return None,
        };
        Some(kind)
    }
}

/// `on_conflict`: what a copy does with a row whose key the target already holds.
fn read_on_conflict(cx: &mut Ctx<'_>, t: &DeTable<'_>) -> OnConflict {
    let Some((v, span)) = cx.string(t, "on_conflict") else {
        return OnConflict::Error;
    };
    match v.as_str() {
        "update" => OnConflict::Update,
        "ignore" => OnConflict::Ignore,
        "error" => OnConflict::Error,
        _ => {
            cx.error(
                &span,
                format!("`on_conflict` must be \"update\", \"ignore\" or \"error\", not {v:?}"),
            );
            OnConflict::Error
        }
    }
}

/// Reports keys that do not fit together. Only the presence of keys counts here, so a value of
/// the wrong type is reported once, as such, and not again as a missing key.
fn check_shape(cx: &mut Ctx<'_>, t: &DeTable<'_>, header: &Span) {
    let has = |key: &str| t.contains_key(key);
    let at = |key: &str| key_span(t, key).unwrap_or_else(|| header.clone());
    let script_key = keys_in_file_order(t, SCRIPT_KEYS).first().map(|(k, _)| *k);
    const NEED_KEY: &str =
        "chunked steps need `key`: the unique, indexed column that batches are cut along";

    if has("into") {
        if !has("table") {
            cx.error(
                &at("into"),
                "a copy (`into`) needs `table` and `key` to read from",
            );
        } else if !has("key") {
            cx.error(&at("table"), NEED_KEY);
        }
        if has("sql") {
            cx.error(
                &at("sql"),
                "a copy (`into`) runs no `sql`; reshape rows with `lua`, `lua_file` or `command`",
            );
        }
        if has("query") && has("columns") {
            cx.error(&at("query"), "`query` replaces `columns`; give one of them");
        }
        if has("locking") {
            cx.error(
                &at("locking"),
                "`locking` applies to transform steps, not to copies (steps with `into`): a copy reads its source without locks and only inserts into its target",
            );
        }
        return;
    }
    for key in ["source", "query", "on_conflict", "target_key"] {
        if has(key) {
            cx.error(
                &at(key),
                format!("`{key}` only applies to copies (steps with `into`)"),
            );
        }
    }
    if has("sql") {
        if let Some(script_key) = script_key {
            cx.error(
                &at(script_key),
                format!("`{script_key}` and `sql` exclude each other: a step runs `sql` or transforms rows, not both"),
            );
        } else if has("columns") {
            cx.error(
                &at("columns"),
                "`columns` applies to transforms and copies, not to `sql` steps",
            );
        } else if has("convert") {
            cx.error(
                &at("convert"),
                "`convert` applies to transforms and copies, not to `sql` steps",
            );
        }
        if script_key.is_none() && has("locking") {
            cx.error(
                &at("locking"),
                "`locking` applies to transform steps (`lua`, `lua_file` or `command`), not to `sql` steps: the database locks what a statement changes while it runs",
            );
        }
        // What a script does per row means nothing to a statement: accepted, it would do
        // nothing. (In [defaults] they are for the plan's transforms and copies.)
        if script_key.is_none() {
            for key in ["on_row_error", "row_timeout", "lua_memory"] {
                if has(key) {
                    cx.error(
                        &at(key),
                        format!("`{key}` applies to transforms and copies, which handle rows one by one, not to `sql` steps: a statement changes its rows all at once or fails"),
                    );
                }
            }
        }
    }
    if has("table") {
        if !has("key") {
            cx.error(&at("table"), NEED_KEY);
        }
        if !has("sql") && script_key.is_none() {
            cx.error(
                &at("table"),
                "a chunked step needs `sql`, a transform (`lua`, `lua_file` or `command`) or `into` (a copy)",
            );
        }
        return;
    }
    if has("key") {
        cx.error(&at("key"), "`key` needs `table`");
    }
    if has("where") {
        cx.error(&at("where"), "`where` needs `table` and `key`");
    }
    if has("columns") && !has("sql") {
        cx.error(&at("columns"), "`columns` needs `table` and `key`");
    }
    if let Some(script_key) = script_key {
        if !has("sql") {
            cx.error(
                &at(script_key),
                format!("a transform (`{script_key}`) needs `table` and `key`"),
            );
        }
    }
    let does_nothing = !has("sql") && script_key.is_none();
    let nothing_else_reported = !has("key") && !has("where") && !has("columns");
    if does_nothing && nothing_else_reported {
        cx.error(
            header,
            "a step needs `sql` (run once), `table` + `key` + `sql` (run per batch), a transform (`lua`, `lua_file` or `command`) or `into` (a copy)",
        );
    }
}

impl Ctx<'_> {
    /// The step's transform: `Ok(None)` when it has none, `Err` when a problem was recorded.
    fn script(&mut self, t: &DeTable<'_>) -> Result<Option<Script>, ()> {
        let given = keys_in_file_order(t, SCRIPT_KEYS);
        if let [_, second, ..] = given.as_slice() {
            let names: Vec<String> = given.iter().map(|(k, _)| format!("`{k}`")).collect();
            let message = format!(
                "give one of `lua`, `lua_file` and `command`, not {}",
                names.join(" and ")
            );
            self.error(&second.1, message);
            return Err(());
        }
        let Some((which, key_at)) = given.first().cloned() else {
            return Ok(None);
        };
        match which {
            "lua" => match self.text(t, "lua") {
                Some((code, span)) => {
                    // Lua's messages then cite lines of the plan file: a multi-line string's
                    // text starts on the line after its opening quotes.
                    let raw = &self.text[span.start..];
                    let multi_line = ["'''\n", "\"\"\"\n", "'''\r\n", "\"\"\"\r\n"]
                        .iter()
                        .any(|open| raw.starts_with(open));
                    let first_line = self.loc(&span).line + usize::from(multi_line);
                    Ok(Some(Script::Lua {
                        code,
                        file: None,
                        first_line,
                    }))
                }
                None => Err(()),
            },
            "lua_file" => {
                let Some((file, _)) = self.text(t, "lua_file") else {
                    return Err(());
                };
                let dir = self.path.parent().unwrap_or(Path::new(""));
                let full = dir.join(&file);
                match std::fs::read_to_string(&full) {
                    Ok(code) => Ok(Some(Script::Lua {
                        code,
                        file: Some(full),
                        first_line: 1,
                    })),
                    Err(e) => {
                        let message = format!("cannot read lua_file {}: {e}", full.display());
                        self.error(&key_at, message);
                        Err(())
                    }
                }
            }
            _ => {
                let Some(command) = self.strings(t, "command") else {
                    return Err(());
                };
                let names_a_program = command
                    .first()
                    .is_some_and(|(program, _)| !program.trim().is_empty());
                if !names_a_program {
                    let span = t.get("command").map_or(key_at, |v| v.span());
                    self.error(
                        &span,
                        "`command` must name a program, such as [\"python3\", \"transform.py\"]",
                    );
                    return Err(());
                }
                Ok(Some(Script::Command(
                    command.into_iter().map(|(s, _)| s).collect(),
                )))
            }
        }
    }

    /// `convert = { column = "null" | "replace" }`: what to write instead of a value a column
    /// cannot hold without loss.
    fn convert(&mut self, t: &DeTable<'_>) -> BTreeMap<String, Convert> {
        let mut out = BTreeMap::new();
        let Some(table) = self.table(t, "convert") else {
            return out;
        };
        for (column, value) in table.iter() {
            let action = match value.get_ref() {
                DeValue::String(v) if v == "null" => Convert::Null,
                DeValue::String(v) if v == "replace" => Convert::Replace,
                _ => {
                    let message = format!(
                        "`convert.{}` must be \"null\" (write NULL instead of a value the column cannot hold) or \"replace\" (replace bytes that are not UTF-8 with U+FFFD)",
                        column.get_ref()
                    );
                    self.error(&value.span(), message);
                    continue;
                }
            };
            out.insert(column.get_ref().to_string(), action);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{check_steps, env, parse, parse_ok, HEAD};
    use super::*;
    use crate::model::Locking;

    #[test]
    fn recognizes_step_shapes() {
        let plan = parse_ok(&format!(
            "{HEAD}[[steps]]\nname = \"once\"\nsql = \"VACUUM\"\n\
             [[steps]]\nname = \"chunked\"\ntable = \"t\"\nkey = \"id\"\nsql = \"UPDATE t SET a = 1 WHERE id BETWEEN :start AND :end\"\n\
             [[steps]]\nname = \"copy\"\ntable = \"t\"\nkey = \"id\"\nquery = \"SELECT id FROM t WHERE id BETWEEN :start AND :end\"\nwhere = \"a > 1\"\ninto = \"u\"\non_conflict = \"ignore\"\ncommand = [\"./reshape\"]\n"
        ));
        assert_eq!(
            plan.steps[1].kind,
            StepKind::Chunked {
                table: "t".into(),
                key: "id".into(),
                filter: None,
                sql: "UPDATE t SET a = 1 WHERE id BETWEEN :start AND :end".into(),
            }
        );
        assert_eq!(
            plan.steps[2].kind,
            StepKind::Copy(CopySpec {
                source: None,
                table: "t".into(),
                key: "id".into(),
                columns: None,
                query: Some("SELECT id FROM t WHERE id BETWEEN :start AND :end".into()),
                filter: Some("a > 1".into()),
                into: "u".into(),
                target_key: None,
                on_conflict: OnConflict::Ignore,
                script: Some(Script::Command(vec!["./reshape".into()])),
            })
        );
        let copy = parse_ok(&format!(
            "{HEAD}[[steps]]\nname = \"c\"\ntable = \"t\"\nkey = \"id\"\ninto = \"u\"\n"
        ));
        assert!(matches!(
            copy.steps[0].kind,
            StepKind::Copy(CopySpec {
                on_conflict: OnConflict::Error,
                script: None,
                ..
            })
        ));
    }

    #[test]
    fn rejects_steps_of_no_shape() {
        check_steps(
            "[[steps]]\nname = \"a\"\ntable = \"t\"\nsql = \"SELECT 1\"\n\
             [[steps]]\nname = \"b\"\nkey = \"id\"\nwhere = \"x > 1\"\nsql = \"SELECT 1\"\n\
             [[steps]]\nname = \"c\"\nsql = \"SELECT 1\"\nlua = \"function transform(r) end\"\ntable = \"t\"\nkey = \"id\"\n\
             [[steps]]\nname = \"d\"\n\
             [[steps]]\nname = \"e\"\ntable = \"t\"\nkey = \"id\"\n\
             [[steps]]\nname = \"f\"\nlua = \"x\"\n",
            "p.toml:5:1: step \"a\": chunked steps need `key`: the unique, indexed column that batches are cut along\n\
             p.toml:9:1: step \"b\": `key` needs `table`\n\
             p.toml:10:1: step \"b\": `where` needs `table` and `key`\n\
             p.toml:15:1: step \"c\": `lua` and `sql` exclude each other: a step runs `sql` or transforms rows, not both\n\
             p.toml:18:1: step \"d\": a step needs `sql` (run once), `table` + `key` + `sql` (run per batch), a transform (`lua`, `lua_file` or `command`) or `into` (a copy)\n\
             p.toml:22:1: step \"e\": a chunked step needs `sql`, a transform (`lua`, `lua_file` or `command`) or `into` (a copy)\n\
             p.toml:26:1: step \"f\": a transform (`lua`) needs `table` and `key`",
        );
    }

    /// `locking` in [defaults] and on a transform step; on a `sql` step or a copy it would do
    /// nothing, and is refused where it is written.
    #[test]
    fn locking_applies_to_transform_steps_only() {
        let plan = parse_ok(&format!(
            "{HEAD}[defaults]\nlocking = \"rows\"\n\
             [[steps]]\nname = \"a\"\ntable = \"t\"\nkey = \"id\"\nlua = \"x\"\n\
             [[steps]]\nname = \"b\"\ntable = \"t\"\nkey = \"id\"\nlua = \"x\"\nlocking = \"optimistic\"\n\
             [[steps]]\nname = \"c\"\nsql = \"SELECT 1\"\n"
        ));
        assert_eq!(plan.defaults.locking, Some(Locking::Rows));
        assert_eq!(plan.steps[0].settings.locking(), Locking::Rows);
        assert_eq!(plan.steps[1].settings.locking(), Locking::Optimistic);
        assert_eq!(
            plan.default_place("locking")
                .map(|p| p.to_string())
                .as_deref(),
            Some("p.toml:4:1")
        );
        let unwritten = parse_ok(&format!(
            "{HEAD}[[steps]]\nname = \"a\"\ntable = \"t\"\nkey = \"id\"\nlua = \"x\"\n"
        ));
        assert_eq!(unwritten.steps[0].settings.locking, None);
        assert_eq!(unwritten.steps[0].settings.locking(), Locking::Optimistic);
        check_steps(
            "[defaults]\nlocking = \"none\"\n\
             [[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\nlocking = \"rows\"\n\
             [[steps]]\nname = \"b\"\ntable = \"t\"\nkey = \"id\"\nsql = \"UPDATE t SET a = 1 WHERE id BETWEEN :start AND :end\"\nlocking = \"optimistic\"\n\
             [[steps]]\nname = \"c\"\ntable = \"t\"\nkey = \"id\"\ninto = \"u\"\nlua = \"x\"\nlocking = \"rows\"\n\
             [[steps]]\nname = \"d\"\ntable = \"t\"\nkey = \"id\"\nlua = \"x\"\nlocking = true\n",
            "p.toml:4:11: `locking` must be \"optimistic\" or \"rows\", not \"none\"\n\
             p.toml:8:1: step \"a\": `locking` applies to transform steps (`lua`, `lua_file` or `command`), not to `sql` steps: the database locks what a statement changes while it runs\n\
             p.toml:14:1: step \"b\": `locking` applies to transform steps (`lua`, `lua_file` or `command`), not to `sql` steps: the database locks what a statement changes while it runs\n\
             p.toml:21:1: step \"c\": `locking` applies to transform steps, not to copies (steps with `into`): a copy reads its source without locks and only inserts into its target\n\
             p.toml:27:11: step \"d\": `locking` must be a string, not a boolean",
        );
    }

    /// Per-row keys on a `sql` step would do nothing: refused where written; in [defaults]
    /// they are for the plan's transforms.
    #[test]
    fn per_row_keys_on_sql_steps_are_refused() {
        check_steps(
            "[defaults]\non_row_error = \"skip\"\n\
             [[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\non_row_error = \"skip\"\n\
             [[steps]]\nname = \"b\"\ntable = \"t\"\nkey = \"id\"\nsql = \"UPDATE t SET a = 1 WHERE id BETWEEN :start AND :end\"\nrow_timeout = \"1s\"\nlua_memory = \"1MiB\"\n",
            "p.toml:8:1: step \"a\": `on_row_error` applies to transforms and copies, which handle rows one by one, not to `sql` steps: a statement changes its rows all at once or fails\n\
             p.toml:14:1: step \"b\": `row_timeout` applies to transforms and copies, which handle rows one by one, not to `sql` steps: a statement changes its rows all at once or fails\n\
             p.toml:15:1: step \"b\": `lua_memory` applies to transforms and copies, which handle rows one by one, not to `sql` steps: a statement changes its rows all at once or fails",
        );
    }

    #[test]
    fn rejects_keys_that_do_not_fit_the_step() {
        check_steps(
            "[[steps]]\nname = \"a\"\ntable = \"t\"\nkey = \"id\"\nsql = \"SELECT 1\"\ncolumns = [\"a\"]\nsource = \"sqlite://b\"\non_conflict = \"update\"\n\
             [[steps]]\nname = \"b\"\ninto = \"u\"\nquery = \"SELECT 1\"\ncolumns = [\"a\"]\n\
             [[steps]]\nname = \"c\"\ntable = \"t\"\nkey = \"id\"\ninto = \"u\"\nsql = \"SELECT 1\"\n\
             [[steps]]\nname = \"d\"\ntable = \"t\"\ninto = \"u\"\n\
             [[steps]]\nname = \"e\"\ntable = \"t\"\nkey = \"id\"\nlua = \"x\"\ncommand = [\"y\"]\nlua_file = \"z.lua\"\n\
             [[steps]]\nname = \"f\"\ntable = \"t\"\nkey = \"id\"\ncommand = []\n\
             [[steps]]\nname = \"g\"\ntable = \"t\"\nkey = \"id\"\ncommand = \"python3 x.py\"\n",
            "p.toml:8:1: step \"a\": `columns` applies to transforms and copies, not to `sql` steps\n\
             p.toml:9:1: step \"a\": `source` only applies to copies (steps with `into`)\n\
             p.toml:10:1: step \"a\": `on_conflict` only applies to copies (steps with `into`)\n\
             p.toml:13:1: step \"b\": a copy (`into`) needs `table` and `key` to read from\n\
             p.toml:14:1: step \"b\": `query` replaces `columns`; give one of them\n\
             p.toml:21:1: step \"c\": a copy (`into`) runs no `sql`; reshape rows with `lua`, `lua_file` or `command`\n\
             p.toml:24:1: step \"d\": chunked steps need `key`: the unique, indexed column that batches are cut along\n\
             p.toml:31:1: step \"e\": give one of `lua`, `lua_file` and `command`, not `lua` and `command` and `lua_file`\n\
             p.toml:37:11: step \"f\": `command` must name a program, such as [\"python3\", \"transform.py\"]\n\
             p.toml:42:11: step \"g\": `command` must be an array of strings, such as [\"a\", \"b\"], not a string",
        );
    }

    #[test]
    fn reads_lua_files_next_to_the_plan() {
        let dir = std::env::temp_dir().join(format!("godwit-plan-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("transforms")).expect("temp dir");
        let script = "function transform(row) return nil end\n";
        std::fs::write(dir.join("transforms/phones.lua"), script).expect("write lua");
        let plan_path = dir.join("plan.toml");
        let text = format!(
            "{HEAD}[[steps]]\nname = \"a\"\ntable = \"t\"\nkey = \"id\"\nlua_file = \"transforms/phones.lua\"\n\
             [[steps]]\nname = \"b\"\ntable = \"t\"\nkey = \"id\"\n  lua_file = \"transforms/missing.lua\"\n"
        );
        let errors = parse(&text, &plan_path, &env).expect_err("missing file");
        let missing = dir.join("transforms/missing.lua");
        assert_eq!(
            errors.to_string(),
            format!(
                "{}:12:3: step \"b\": cannot read lua_file {}: No such file or directory (os error 2)",
                plan_path.display(),
                missing.display()
            )
        );
        let one = text
            .split("[[steps]]\nname = \"b\"")
            .next()
            .unwrap_or_default();
        let plan = parse(one, &plan_path, &env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            plan.steps[0].kind,
            StepKind::Transform {
                table: "t".into(),
                key: "id".into(),
                columns: Vec::new(),
                filter: None,
                script: Script::Lua {
                    code: script.into(),
                    file: Some(dir.join("transforms/phones.lua")),
                    first_line: 1,
                },
            }
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn accepts_inline_step_tables() {
        let plan = parse_ok(&format!(
            "{HEAD}steps = [{{ name = \"a\", sql = \"SELECT 1\" }}]\n"
        ));
        assert_eq!(
            plan.steps[0].location,
            Location {
                line: 3,
                column: 10
            }
        );
        assert_eq!(
            plan.steps[0].key_locations["sql"],
            Location {
                line: 3,
                column: 24
            }
        );
    }
}
