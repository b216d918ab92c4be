//! Invalid plans and `godwit check`: exit 2 with every problem named by file, line and column;
//! nothing is changed; passwords never appear.

mod common;

use common::{path_str, run_cmd, text, Backend, TestDb};

/// Every problem in a plan is listed with file, line and column, for `run` and `check` alike.
#[test]
fn invalid_plans_exit_2_with_locations() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases: &[(&str, &str)] = &[
        ("name = \"x\"\ndatabase = \n", "bad.toml:2:"),
        (
            "name = \"x\"\ndatabase = \"sqlite://x.db\"\n[defaults]\nbatchsize = 5\n[[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n",
            "bad.toml:4:1: unknown key `batchsize` in [defaults]; did you mean `batch_size`?",
        ),
        (
            "name = \"x\"\ndatabase = \"${GODWIT_SURELY_UNSET}\"\n[[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n",
            "the environment variable GODWIT_SURELY_UNSET is not set",
        ),
        (
            "name = \"x\"\ndatabase = \"sqlite://x.db\"\n[[steps]]\nname = \"a\"\nafter = [\"b\"]\nsql = \"SELECT 1\"\n[[steps]]\nname = \"b\"\nafter = [\"a\"]\nsql = \"SELECT 1\"\n",
            "bad.toml:5:1: steps form a cycle through `after`: a -> b -> a",
        ),
    ];
    for (plan, expected) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, plan).expect("write plan");
        for command in ["run", "check"] {
            let out = run_cmd(&[command, path_str(&path)]);
            let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
            assert_eq!(out.status.code(), Some(2), "{command}: {all}");
            assert!(
                all.contains(expected),
                "{command}: expected {expected:?} in {all}"
            );
        }
    }
}

/// `run` refuses chunked SQL without `:start` and `:end`, which would touch every row in every
/// batch, before changing anything.
#[test]
fn run_refuses_sql_without_range_parameters() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("x.db");
    std::fs::write(&db, b"").expect("create db");
    let path = dir.path().join("p.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"x\"\ndatabase = \"sqlite://{}\"\n[[steps]]\nname = \"all\"\ntable = \"t\"\nkey = \"id\"\nsql = \"UPDATE t SET a = 1 WHERE id >= :start\"\n",
            db.display()
        ),
    )
    .expect("write plan");
    let out = run_cmd(&["run", path_str(&path)]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("p.toml:7:1:") && err.contains("lacks :end"),
        "{err}"
    );
}

/// A bad command line exits 2.
#[test]
fn bad_command_lines_exit_2() {
    assert_eq!(run_cmd(&["run"]).status.code(), Some(2));
    assert_eq!(
        run_cmd(&["run", "p.toml", "--no-such-flag"]).status.code(),
        Some(2)
    );
    assert_eq!(
        run_cmd(&["run", "p.toml", "--max-duration", "soon"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(run_cmd(&["frobnicate"]).status.code(), Some(2));
}

/// A password in a URL never reaches any output, even when the server cannot be reached.
#[test]
fn passwords_never_appear() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("secret.toml");
    std::fs::write(
        &path,
        "name = \"x\"\ndatabase = \"postgres://app:s3cretpw@127.0.0.1:1/shop\"\n[[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n",
    )
    .expect("write plan");
    for args in [
        vec!["run", path_str(&path)],
        vec!["status", path_str(&path), "--json"],
        vec!["check", path_str(&path), "--json"],
    ] {
        let out = common::godwit()
            .args(&args)
            .env("RUST_LOG", "debug")
            .output()
            .expect("run");
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert_ne!(out.status.code(), Some(0), "{args:?}: {all}");
        assert!(
            !all.contains("s3cretpw"),
            "{args:?} printed the password: {all}"
        );
        assert!(all.contains("app:***@127.0.0.1:1"), "{args:?}: {all}");
    }
}

fn step_plan(
    db: &TestDb,
    name: &str,
    table: &str,
    key: &str,
    filter: Option<&str>,
    sql: &str,
) -> String {
    let filter = filter
        .map(|f| format!("where = \"{f}\"\n"))
        .unwrap_or_default();
    format!(
        "name = \"{name}\"\ndatabase = \"{url}\"\n\n[[steps]]\nname = \"s\"\ntable = \"{table}\"\nkey = \"{key}\"\n{filter}sql = \"{sql}\"\n",
        url = db.url
    )
}

fn check_json(plan: &std::path::Path) -> (Option<i32>, serde_json::Value) {
    let out = run_cmd(&["check", path_str(plan), "--json"]);
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("check --json printed no JSON ({e}): {}", text(&out.stderr)));
    (out.status.code(), report)
}

/// `check` finds missing tables, columns and key indexes, SQL without `:start`/`:end`, and a
/// broken `where`; it lists the fix for an index; it changes no data and records no run.
async fn check_lists_problems_and_changes_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let table = db.table("checked");
    db.counter_table(&table, 1..=20).await;
    let noindex = db.table("noindex");
    db.exec(&format!(
        "CREATE TABLE {noindex} (code INT NOT NULL, hits INT NOT NULL DEFAULT 0)"
    ))
    .await;
    let nullable = db.table("nullable");
    db.exec(&format!(
        "CREATE TABLE {nullable} (code INT UNIQUE, hits INT NOT NULL DEFAULT 0)"
    ))
    .await;
    let good_sql = format!("UPDATE {table} SET hits = hits + 1 WHERE id BETWEEN :start AND :end");

    let good = db.plan(
        "good.toml",
        &step_plan(
            &db,
            &db.table("good"),
            &table,
            "id",
            Some("grp = 1"),
            &good_sql,
        ),
    );
    let (code, report) = check_json(&good);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["valid"], true);

    let cases = [
        (
            step_plan(&db, "p1", &db.table("nothere"), "id", None, &good_sql),
            "missing-table",
        ),
        (
            step_plan(&db, "p2", &table, "nope", None, &good_sql),
            "missing-column",
        ),
        (
            step_plan(&db, "p3", &noindex, "code", None, &good_sql),
            "missing-index-key",
        ),
        (
            step_plan(
                &db,
                "p4",
                &table,
                "id",
                None,
                &format!("UPDATE {table} SET hits = 1 WHERE id >= :start"),
            ),
            "missing-range-parameter",
        ),
        (
            step_plan(
                &db,
                "p5",
                &table,
                "id",
                Some("no_such_column = 1"),
                &good_sql,
            ),
            "invalid-sql",
        ),
    ];
    for (plan_text, expected) in cases {
        let plan = db.plan("bad.toml", &plan_text);
        let (code, report) = check_json(&plan);
        assert_eq!(code, Some(2), "{expected}: {report}");
        assert_eq!(report["valid"], false);
        let codes: Vec<&str> = report["problems"]
            .as_array()
            .expect("problems")
            .iter()
            .filter_map(|p| p["code"].as_str())
            .collect();
        assert!(codes.contains(&expected), "{expected} not in {report}");
        let message = report["problems"][0]["message"]
            .as_str()
            .unwrap_or_default();
        assert!(message.contains("bad.toml:"), "no location in {message}");
        if expected == "missing-index-key" {
            let fix = report["problems"][0]["fix"].as_str().unwrap_or_default();
            assert!(fix.starts_with("CREATE UNIQUE INDEX"), "{report}");
        }
    }
    let hits = db.scalar(&format!("SELECT SUM(hits) FROM {table}")).await;
    assert_eq!(hits, 0, "check changed data");
    if backend == Backend::Sqlite {
        // A fresh database: check must not even create the state tables.
        let tables = db
            .scalar("SELECT COUNT(*) FROM sqlite_master WHERE name LIKE 'godwit%'")
            .await;
        assert_eq!(tables, 0, "check created state tables");
        return;
    }
    let runs = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM godwit_runs WHERE run IN ('{}', 'p1', 'p2', 'p3', 'p4', 'p5', 'p6')",
            db.table("good")
        ))
        .await;
    assert_eq!(runs, 0, "check recorded a run");
}

per_backend!(check_lists_problems_and_changes_nothing);
