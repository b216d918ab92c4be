//! `godwit check PLAN [--json]` against real databases: a runnable plan passes, every problem
//! is listed at once with its plan location, and nothing is ever changed.

mod common;

use std::path::Path;

use common::{path_str, run_cmd, text, Backend, TestDb};
use godwit_driver::Value;
use serde_json::Value as Json;

/// One `[[steps]]` table of a test plan.
struct Step<'a> {
    name: &'a str,
    table: &'a str,
    key: &'a str,
    filter: Option<&'a str>,
    sql: String,
}

impl Step<'_> {
    fn toml(&self) -> String {
        let filter = self
            .filter
            .map(|f| format!("where = \"{f}\"\n"))
            .unwrap_or_default();
        format!(
            "[[steps]]\nname = \"{}\"\ntable = \"{}\"\nkey = \"{}\"\n{filter}sql = \"{}\"\n",
            self.name, self.table, self.key, self.sql
        )
    }
}

fn plan_text(db: &TestDb, name: &str, steps: &[Step]) -> String {
    let steps: Vec<String> = steps.iter().map(Step::toml).collect();
    format!(
        "name = \"{name}\"\ndatabase = \"{}\"\n\n{}",
        db.url,
        steps.join("\n")
    )
}

/// `FILE:LINE:1` of the first line of `plan` that starts with `line_start`: where a plan error
/// about that key must point.
fn location(file: &Path, plan: &str, line_start: &str) -> String {
    let line = plan
        .lines()
        .position(|l| l.starts_with(line_start))
        .unwrap_or_else(|| panic!("no line starts with {line_start:?} in {plan}"));
    format!("{}:{}:1", file.display(), line + 1)
}

/// Fails unless `message` starts with `FILE:LINE:COLUMN: ` for the plan file `file`.
fn assert_located(file: &Path, message: &str) {
    let rest = message
        .strip_prefix(&format!("{}:", file.display()))
        .unwrap_or_else(|| panic!("no plan file at the start of {message}"));
    let mut parts = rest.splitn(3, ':');
    let numbers = [parts.next(), parts.next()];
    assert!(
        numbers
            .iter()
            .all(|n| n.is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))),
        "no line and column after the plan file in {message}"
    );
}

fn counting_sql(table: &str) -> String {
    format!("UPDATE {table} SET hits = hits + 1 WHERE id BETWEEN :start AND :end")
}

/// `check PLAN --json`: the exit code and the report, which must be JSON whatever the code.
fn check_json(plan: &Path) -> (Option<i32>, Json) {
    let out = run_cmd(&["check", path_str(plan), "--json"]);
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check --json printed no JSON ({e}): {}{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    });
    (out.status.code(), report)
}

fn problems(report: &Json) -> &Vec<Json> {
    report["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("no problems array in {report}"))
}

/// The one problem of `report` with `code`; fails unless there is exactly one.
fn problem<'r>(report: &'r Json, code: &str) -> &'r Json {
    let found: Vec<&Json> = problems(report)
        .iter()
        .filter(|p| p["code"] == code)
        .collect();
    assert_eq!(found.len(), 1, "one {code} problem expected in {report}");
    found[0]
}

/// Creates `table` keyed by `id` with no index at all: the `missing-index-key` case.
async fn table_without_index(db: &TestDb, table: &str) {
    db.exec(&format!(
        "CREATE TABLE {table} (id INT NOT NULL, hits INT NOT NULL DEFAULT 0, grp INT NOT NULL DEFAULT 0)"
    ))
    .await;
}

/// Every row of `table`, in key order: what `check` must leave exactly as it found.
async fn rows(db: &TestDb, table: &str) -> Vec<Vec<Value>> {
    db.query(&format!("SELECT id, hits, grp FROM {table} ORDER BY id"))
        .await
}

/// Rows about the run `name` in the state tables (those that exist).
async fn progress_rows(db: &TestDb, name: &str) -> i64 {
    let mut conn = db.conn().await;
    let mut n = 0;
    for table in ["godwit_runs", "godwit_steps", "godwit_batches"] {
        let exists = conn
            .table_info(table)
            .await
            .unwrap_or_else(|e| panic!("table info of {table}: {e}"))
            .is_some();
        if exists {
            n += db
                .scalar(&format!(
                    "SELECT COUNT(*) FROM {table} WHERE run = '{name}'"
                ))
                .await;
        }
    }
    n
}

/// A plan the database can run passes: exit 0, `valid: true`, no problems, in JSON and in
/// the human form.
async fn valid_plan_passes(backend: Backend) {
    let db = TestDb::new(backend).await;
    let table = db.table("valid");
    db.counter_table(&table, 1..=20).await;
    let name = db.table("valid_plan");
    let plan = db.plan(
        "valid.toml",
        &plan_text(
            &db,
            &name,
            &[Step {
                name: "count",
                table: &table,
                key: "id",
                filter: Some("grp <> 0"),
                sql: format!("{} AND grp <> 0", counting_sql(&table)),
            }],
        ),
    );
    let (code, report) = check_json(&plan);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["plan"], name.as_str(), "{report}");
    assert_eq!(report["valid"], true, "{report}");
    assert_eq!(problems(&report).len(), 0, "{report}");
    assert!(report["findings"].is_array(), "{report}");

    let out = run_cmd(&["check", path_str(&plan)]);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("is valid"), "{all}");
    assert!(!all.contains("problem"), "{all}");
}

/// Each kind of problem on its own: exit 2, `valid: false`, the problem's code, its step and
/// the location of the plan key at fault; the human form lists it too.
async fn each_problem_exits_2_at_its_location(backend: Backend) {
    let db = TestDb::new(backend).await;
    let table = db.table("target");
    db.counter_table(&table, 1..=20).await;
    let noindex = db.table("noindex");
    table_without_index(&db, &noindex).await;
    db.exec(&format!("INSERT INTO {noindex} (id) VALUES (1), (2), (3)"))
        .await;
    let dupes = db.table("dupes");
    db.exec(&format!(
        "CREATE TABLE {dupes} (id INT NOT NULL, hits INT NOT NULL DEFAULT 0, grp INT NOT NULL DEFAULT 0)"
    ))
    .await;
    db.exec(&format!("CREATE INDEX {dupes}_plain ON {dupes} (id)"))
        .await;
    db.exec(&format!("INSERT INTO {dupes} (id) VALUES (1), (2), (3)"))
        .await;

    struct Case<'a> {
        code: &'a str,
        step: Step<'a>,
        /// The start of the plan line the message must point at; `None`: some line and column.
        at: Option<&'a str>,
        /// Text the message must carry.
        says: &'a str,
    }
    let missing = db.table("missing");
    let cases = [
        Case {
            code: "missing-table",
            step: Step {
                name: "no-table",
                table: &missing,
                key: "id",
                filter: None,
                sql: counting_sql(&missing),
            },
            at: Some("table = "),
            says: &missing,
        },
        Case {
            code: "missing-column",
            step: Step {
                name: "no-column",
                table: &table,
                key: "nope",
                filter: None,
                sql: counting_sql(&table),
            },
            at: Some("key = "),
            says: "nope",
        },
        Case {
            code: "missing-index-key",
            step: Step {
                name: "no-index",
                table: &noindex,
                key: "id",
                filter: None,
                sql: counting_sql(&noindex),
            },
            at: Some("key = "),
            says: "no index",
        },
        Case {
            code: "key-not-unique",
            step: Step {
                name: "not-unique",
                table: &dupes,
                key: "id",
                filter: None,
                sql: counting_sql(&dupes),
            },
            at: Some("key = "),
            says: "unique",
        },
        Case {
            code: "missing-range-parameter",
            step: Step {
                name: "no-end",
                table: &table,
                key: "id",
                filter: None,
                sql: format!("UPDATE {table} SET hits = hits + 1 WHERE id >= :start"),
            },
            at: Some("sql = "),
            says: ":end",
        },
        Case {
            code: "invalid-sql",
            step: Step {
                name: "bad-where",
                table: &table,
                key: "id",
                filter: Some("no_such_column = 1"),
                sql: counting_sql(&table),
            },
            // Where exactly is `broken_where_points_at_the_where_key`'s business.
            at: None,
            says: "no_such_column",
        },
    ];
    for case in cases {
        let name = db.table(&case.code.replace('-', "_"));
        let plan_text = plan_text(&db, &name, std::slice::from_ref(&case.step));
        let plan = db.plan(&format!("{}.toml", case.code), &plan_text);
        let (code, report) = check_json(&plan);
        assert_eq!(code, Some(2), "{}: {report}", case.code);
        assert_eq!(report["valid"], false, "{report}");
        assert_eq!(report["plan"], name.as_str(), "{report}");
        let p = problem(&report, case.code);
        assert_eq!(p["step"], case.step.name, "{report}");
        let message = p["message"].as_str().unwrap_or_default();
        match case.at {
            Some(line_start) => {
                let at = location(&plan, &plan_text, line_start);
                assert!(
                    message.starts_with(&format!("{at}: ")),
                    "{}: the message must start with {at}: {message}",
                    case.code
                );
            }
            None => assert_located(&plan, message),
        }
        assert!(message.contains(case.says), "{}: {message}", case.code);

        let out = run_cmd(&["check", path_str(&plan)]);
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(2), "{}: {all}", case.code);
        assert!(all.contains(message), "{}: {all}", case.code);
    }
}

/// The fix offered for a key without a unique index is a `CREATE UNIQUE INDEX` on that table
/// and key that the database accepts, after which the plan is valid.
async fn index_fix_is_a_working_statement(backend: Backend) {
    let db = TestDb::new(backend).await;
    for (tag, plain_index) in [("bare", false), ("plain", true)] {
        let table = db.table(tag);
        db.exec(&format!(
            "CREATE TABLE {table} (id INT NOT NULL, hits INT NOT NULL DEFAULT 0, grp INT NOT NULL DEFAULT 0)"
        ))
        .await;
        if plain_index {
            db.exec(&format!("CREATE INDEX {table}_plain ON {table} (id)"))
                .await;
        }
        db.exec(&format!("INSERT INTO {table} (id) VALUES (1), (2), (3)"))
            .await;
        let name = db.table(&format!("{tag}_plan"));
        let plan = db.plan(
            &format!("{tag}.toml"),
            &plan_text(
                &db,
                &name,
                &[Step {
                    name: "count",
                    table: &table,
                    key: "id",
                    filter: None,
                    sql: counting_sql(&table),
                }],
            ),
        );
        let (code, report) = check_json(&plan);
        assert_eq!(code, Some(2), "{report}");
        let expected = if plain_index {
            "key-not-unique"
        } else {
            "missing-index-key"
        };
        let fix = problem(&report, expected)["fix"]
            .as_str()
            .unwrap_or_else(|| panic!("{expected} has no fix: {report}"))
            .to_string();
        assert!(fix.starts_with("CREATE UNIQUE INDEX"), "{fix}");
        assert!(fix.contains(&table) && fix.contains("id"), "{fix}");
        db.exec(&fix).await;
        let (code, report) = check_json(&plan);
        assert_eq!(code, Some(0), "after {fix}: {report}");
        assert_eq!(report["valid"], true, "{report}");
    }
}

/// A plan with several broken steps gets every problem in one report, in plan order, plus the
/// two problems of a step that has both.
async fn every_problem_is_listed_at_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let table = db.table("many");
    db.counter_table(&table, 1..=20).await;
    let noindex = db.table("many_noindex");
    table_without_index(&db, &noindex).await;
    let missing = db.table("many_missing");
    let name = db.table("many_plan");
    let steps = [
        Step {
            name: "no-table",
            table: &missing,
            key: "id",
            filter: None,
            sql: counting_sql(&missing),
        },
        Step {
            name: "no-column",
            table: &table,
            key: "nope",
            filter: None,
            sql: counting_sql(&table),
        },
        Step {
            name: "fine",
            table: &table,
            key: "id",
            filter: None,
            sql: counting_sql(&table),
        },
        Step {
            name: "no-index-no-start",
            table: &noindex,
            key: "id",
            filter: None,
            sql: format!("UPDATE {noindex} SET hits = 1 WHERE id <= :end"),
        },
        Step {
            name: "bad-where",
            table: &table,
            key: "id",
            filter: Some("no_such_column = 1"),
            sql: counting_sql(&table),
        },
    ];
    let plan = db.plan("many.toml", &plan_text(&db, &name, &steps));
    let (code, report) = check_json(&plan);
    assert_eq!(code, Some(2), "{report}");
    assert_eq!(report["valid"], false, "{report}");
    let listed: Vec<(&str, &str)> = problems(&report)
        .iter()
        .map(|p| {
            (
                p["step"].as_str().unwrap_or_default(),
                p["code"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("no-table", "missing-table"),
            ("no-column", "missing-column"),
            ("no-index-no-start", "missing-range-parameter"),
            ("no-index-no-start", "missing-index-key"),
            ("bad-where", "invalid-sql"),
        ],
        "{report}"
    );
    for p in problems(&report) {
        let message = p["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with(&format!("{}:", plan.display())),
            "no location: {message}"
        );
    }
    // The human form lists them all too, one `problem:` line each.
    let out = run_cmd(&["check", path_str(&plan)]);
    assert_eq!(out.status.code(), Some(2));
    let listed = text(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("problem: "))
        .count();
    assert_eq!(listed, 5, "{}", text(&out.stdout));
}

/// A `where` the database rejects is reported at the `where` key, not at `sql`.
async fn broken_where_points_at_the_where_key(backend: Backend) {
    let db = TestDb::new(backend).await;
    let table = db.table("where");
    db.counter_table(&table, 1..=5).await;
    let name = db.table("where_plan");
    let text_of_plan = plan_text(
        &db,
        &name,
        &[Step {
            name: "bad-where",
            table: &table,
            key: "id",
            filter: Some("no_such_column = 1"),
            sql: counting_sql(&table),
        }],
    );
    let plan = db.plan("where.toml", &text_of_plan);
    let (code, report) = check_json(&plan);
    assert_eq!(code, Some(2), "{report}");
    let message = problem(&report, "invalid-sql")["message"]
        .as_str()
        .unwrap_or_default();
    let at = location(&plan, &text_of_plan, "where = ");
    assert!(
        message.starts_with(&format!("{at}: ")),
        "the message must point at the `where` line, {at}: {message}"
    );
}

/// A typo in the batch statement is found whatever the table holds and whatever the key's
/// type: `check` promises that chunked SQL prepares.
async fn broken_batch_sql_is_found_on_any_table(backend: Backend) {
    let db = TestDb::new(backend).await;
    let full = db.table("full");
    db.counter_table(&full, 1..=5).await;
    let empty = db.table("empty");
    db.counter_table(&empty, std::iter::empty()).await;
    let texts = db.table("texts");
    db.exec(&format!(
        "CREATE TABLE {texts} (id VARCHAR(20) NOT NULL PRIMARY KEY, hits INT NOT NULL DEFAULT 0)"
    ))
    .await;
    db.exec(&format!(
        "INSERT INTO {texts} (id) VALUES ('a'), ('b'), ('c')"
    ))
    .await;
    let mut missed = Vec::new();
    for (what, table) in [
        ("an integer key", &full),
        ("an empty table", &empty),
        ("a text key", &texts),
    ] {
        let plan = db.plan(
            "typo.toml",
            &plan_text(
                &db,
                &format!("{table}_plan"),
                &[Step {
                    name: "typo",
                    table,
                    key: "id",
                    filter: None,
                    sql: format!(
                        "UPDATE {table} SET hitz = hitz + 1 WHERE id BETWEEN :start AND :end"
                    ),
                }],
            ),
        );
        let (code, report) = check_json(&plan);
        let found = problems(&report).iter().any(|p| {
            p["code"] == "invalid-sql" && p["message"].as_str().is_some_and(|m| m.contains("hitz"))
        });
        if code != Some(2) || !found {
            missed.push(format!("{what}: exit {code:?}, {report}"));
        }
    }
    assert!(missed.is_empty(), "typo not found with {missed:#?}");
}

/// `check` changes nothing: rows stay identical (with a one-off `DELETE` step, and a batch
/// statement that changes a row even when `check` tries it), and no progress is recorded under
/// the plan's name, valid plan or not.
async fn check_changes_no_data(backend: Backend) {
    let db = TestDb::new(backend).await;
    let table = db.table("kept");
    db.counter_table(&table, 1..=30).await;
    let before = rows(&db, &table).await;
    let name = db.table("kept_plan");
    let chunked = Step {
        name: "count",
        table: &table,
        key: "id",
        filter: Some("grp <> 1"),
        // Touches row 30 whatever the range: the statement `check` tries on an empty range
        // changes a row, which only its rollback undoes.
        sql: format!(
            "UPDATE {table} SET hits = hits + 1, grp = 9 WHERE id BETWEEN :start AND :end OR id = 30"
        ),
    }
    .toml();
    let valid = format!(
        "name = \"{name}\"\ndatabase = \"{url}\"\n\n\
         [[steps]]\nname = \"wipe\"\nsql = \"DELETE FROM {table}\"\n\n{chunked}",
        url = db.url
    );
    let broken = format!(
        "{valid}\n[[steps]]\nname = \"broken\"\ntable = \"{table}\"\nkey = \"id\"\nwhere = \"nope = 1\"\nsql = \"DELETE FROM {table} WHERE id BETWEEN :start AND :end\"\n"
    );
    for (file, text_of_plan, expected) in [("valid.toml", &valid, 0), ("broken.toml", &broken, 2)] {
        let plan = db.plan(file, text_of_plan);
        for json in [true, false] {
            let mut args = vec!["check", path_str(&plan)];
            if json {
                args.push("--json");
            }
            let out = run_cmd(&args);
            assert_eq!(
                out.status.code(),
                Some(expected),
                "{file}: {}{}",
                text(&out.stdout),
                text(&out.stderr)
            );
        }
    }
    assert_eq!(rows(&db, &table).await, before, "check changed rows");
    assert_eq!(
        progress_rows(&db, &name).await,
        0,
        "check recorded progress"
    );
    if backend == Backend::Sqlite {
        // A fresh database file: check must not even create the state tables.
        let tables = db
            .scalar("SELECT COUNT(*) FROM sqlite_master WHERE name LIKE 'godwit%'")
            .await;
        assert_eq!(tables, 0, "check created state tables");
    }
}

/// `run` refuses what `check` reports, by the same rules (`godwit_check`): for each kind of
/// problem, `run` on the same plan exits 2 naming the problem as `check` words it, and records
/// nothing. The one difference is by design: a statement the database refuses (`invalid-sql`)
/// `check` finds by trying it, and `run` by its first batch, which fails (exit 1) naming the
/// key range and the database's error.
async fn run_refuses_what_check_reports(backend: Backend) {
    let db = TestDb::new(backend).await;
    let table = db.table("agree");
    db.counter_table(&table, 1..=20).await;
    let noindex = db.table("agree_noindex");
    table_without_index(&db, &noindex).await;
    let nullable = db.table("agree_nullable");
    db.exec(&format!(
        "CREATE TABLE {nullable} (id INT UNIQUE, hits INT NOT NULL DEFAULT 0); \
         INSERT INTO {nullable} (id) VALUES (1), (NULL), (3)"
    ))
    .await;
    let missing = db.table("agree_missing");
    let chunked = |table: &str, key: &str, sql: String| {
        Step {
            name: "s",
            table,
            key,
            filter: None,
            sql,
        }
        .toml()
    };
    let transform = |columns: &str, lua: &str| {
        format!(
            "[[steps]]\nname = \"s\"\ntable = \"{table}\"\nkey = \"id\"\ncolumns = {columns}\nlua = '''\n{lua}\n'''\n"
        )
    };
    let copy = |into: &str| {
        format!("[[steps]]\nname = \"s\"\ntable = \"{table}\"\nkey = \"id\"\ninto = \"{into}\"\n")
    };
    // (the problem's code, the plan's step, `run`'s exit code)
    let cases = [
        (
            "missing-table",
            chunked(&missing, "id", counting_sql(&missing)),
            2,
        ),
        (
            "missing-column",
            chunked(&table, "nope", counting_sql(&table)),
            2,
        ),
        (
            "missing-index-key",
            chunked(&noindex, "id", counting_sql(&noindex)),
            2,
        ),
        (
            "nullable-key",
            chunked(&nullable, "id", counting_sql(&nullable)),
            2,
        ),
        (
            "missing-range-parameter",
            chunked(
                &table,
                "id",
                format!("UPDATE {table} SET hits = 1 WHERE id >= :start"),
            ),
            2,
        ),
        (
            "missing-column",
            transform(
                "[\"hits\", \"no_such_col\"]",
                "function transform(row) return nil end",
            ),
            2,
        ),
        (
            "invalid-transform",
            transform(
                "[\"hits\"]",
                "function transform(row) return {hits = = 1} end",
            ),
            2,
        ),
        ("missing-table", copy(&missing), 2),
        (
            "invalid-sql",
            chunked(
                &table,
                "id",
                format!(
                    "UPDATE {table} SET hits = no_such_column WHERE id BETWEEN :start AND :end"
                ),
            ),
            1,
        ),
    ];
    for (i, (code, step, run_exit)) in cases.into_iter().enumerate() {
        let name = db.table(&format!("agree_{i}"));
        let plan = db.plan(
            &format!("agree_{i}.toml"),
            &format!("name = \"{name}\"\ndatabase = \"{}\"\n\n{step}", db.url),
        );
        let (check_exit, report) = check_json(&plan);
        assert_eq!(check_exit, Some(2), "{code}: {report}");
        let message = problem(&report, code)["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let out = run_cmd(&["run", path_str(&plan)]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(run_exit), "{code}: run: {err}");
        if run_exit == 2 {
            assert!(
                err.contains(&message),
                "{code}: run does not say {message:?}: {err}"
            );
            assert_eq!(
                progress_rows(&db, &name).await,
                0,
                "{code}: run recorded progress"
            );
        } else {
            assert!(
                message.contains("no_such_column") && err.contains("no_such_column"),
                "{code}: check said {message:?}, run: {err}"
            );
        }
    }
}

per_backend!(
    valid_plan_passes,
    each_problem_exits_2_at_its_location,
    index_fix_is_a_working_statement,
    every_problem_is_listed_at_once,
    broken_where_points_at_the_where_key,
    broken_batch_sql_is_found_on_any_table,
    check_changes_no_data,
    run_refuses_what_check_reports,
);
