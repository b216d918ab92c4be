//! Invalid plans and `godwit check`: exit 2 with every problem named by file, line and column;
//! nothing is changed; passwords never appear.

mod common;

use common::{own_db, path_str, run_cmd, text, Backend, TestDb};

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

/// Issue 11: a password in a URL that does not parse (an unescaped `?` in it, or libpq's
/// `key=value` form) was printed whole by every command naming the URL.
#[test]
fn r11_passwords_of_unparsable_urls_never_appear() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("p.toml");
    for url in [
        "postgres://u:S3cr3t?Q@127.0.0.1/db",
        "mysql://u:S3cr3t?Q@127.0.0.1/db",
        "host=127.0.0.1 password=S3cr3tV dbname=x",
    ] {
        std::fs::write(
            &path,
            format!(
                "name = \"x\"\ndatabase = \"{url}\"\n[[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n"
            ),
        )
        .expect("write plan");
        let plan = path_str(&path);
        for args in [
            vec!["check", plan],
            vec!["run", plan],
            vec!["run", "--json", plan],
            vec!["submit", plan],
            vec!["status", "--database", url],
            vec!["worker", "--database", url, "--exit-when-idle"],
        ] {
            let out = common::godwit()
                .args(&args)
                .env("RUST_LOG", "debug")
                .output()
                .expect("run");
            let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
            assert_ne!(out.status.code(), Some(0), "{args:?}: {all}");
            assert!(
                !all.contains("S3cr3t"),
                "{args:?} printed the password: {all}"
            );
            // `submit` refuses the plan before naming its URL.
            assert!(
                all.contains("***") || args[0] == "submit",
                "{args:?}: {all}"
            );
        }
    }
}

/// A text column's value: MariaDB may hand it over as bytes.
fn stored_text(value: &godwit_driver::Value) -> String {
    match value {
        godwit_driver::Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        other => other
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("{other:?}")),
    }
}

/// Issue 11: a URL that does not parse never shows its password, and a plan refused for any
/// reason stores nothing: here `replicas` on SQLite, which has none (issue 13). A run that
/// goes on with such replica URLs, storing its plan and showing them in `status`, is
/// `replicas.rs`'s `a_replica_that_cannot_answer_throttles_every_step`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_unparsable_urls_are_never_shown_or_stored() {
    let db = TestDb::new(Backend::Sqlite).await;
    let plan = db.plan(
        "plan.toml",
        &format!(
            "name = \"rep\"\ndatabase = \"{}\"\n\
             replicas = [\"postgres://u:S3cr3t?Q@127.0.0.1/db\", \"host=h password=S3cr3tV dbname=x\"]\n\
             max_replica_lag = \"10s\"\n[[steps]]\nname = \"s\"\nsql = \"SELECT 1\"\n",
            db.url
        ),
    );
    let out = run_cmd(&["run", path_str(&plan)]);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(
        all.contains("plan.toml:3:1: `replicas` cannot work on SQLite, which has no replicas"),
        "{all}"
    );
    assert!(!all.contains("S3cr3t"), "{all}");
    let stored = db
        .query("SELECT count(*) FROM sqlite_master WHERE name LIKE 'godwit%'")
        .await;
    assert_eq!(
        stored[0][0].as_i64(),
        Some(0),
        "a refused plan stored state"
    );
}

/// Issue 11: the state database kept a password written in the plan in `godwit_runs.plan_text`.
/// `submit` refuses such a plan (nothing is stored) and takes it through `${VAR}`; `run` stores
/// the text with the password redacted.
async fn r11_no_literal_password_is_stored(backend: Backend) {
    let db = own_db(backend).await;
    let table = db.table("pwtext");
    db.counter_table(&table, 1..=3).await;
    let password = db
        .url
        .split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
        .and_then(|(user_info, _)| user_info.split_once(':'))
        .map(|(_, p)| format!(":{p}@"))
        .expect("the test URL has a password");
    let step = format!(
        "name = \"s\"\ntable = \"{table}\"\nkey = \"id\"\n\
         sql = \"UPDATE {table} SET hits = hits + 1 WHERE id BETWEEN :start AND :end\""
    );
    let literal = db.step_plan(&table, "batch_size = 2", &step);
    // None when no run is stored, or no state table was made.
    let plan_text = |name: String| {
        let db = &db;
        async move {
            let rows = db
                .conn()
                .await
                .query(
                    &format!("SELECT plan_text FROM godwit_runs WHERE run = '{name}'"),
                    &[],
                )
                .await
                .unwrap_or_default();
            rows.first().map(|r| stored_text(r.get(0)))
        }
    };

    let out = run_cmd(&["submit", path_str(&literal)]);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(
        all.contains(":2:1: `database` holds a password written in the plan")
            && all.contains("${VARIABLE}"),
        "{all}"
    );
    assert!(!all.contains(&password), "{all}");
    assert_eq!(
        plan_text(table.clone()).await,
        None,
        "submit stored the run"
    );

    let out = run_cmd(&["run", path_str(&literal)]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(":2:1: `database` holds a password written in the plan; the stored plan has it as ***, so workers cannot take this run up"),
        "{err}"
    );
    assert!(!err.contains(&password), "{err}");
    let stored = plan_text(table.clone()).await.expect("a stored run");
    assert!(!stored.contains(&password), "{stored}");
    assert!(
        stored.contains(":***@") && stored.contains(&step),
        "{stored}"
    );
    let definitions = db
        .query(&format!(
            "SELECT definition FROM godwit_steps WHERE run = '{table}'"
        ))
        .await;
    assert_eq!(definitions.len(), 1);
    assert!(!stored_text(&definitions[0][0]).contains(&password));

    // Through `${VAR}` the stored text keeps the variable, for workers to read.
    let by_var = db.plan(
        "by_var.toml",
        &format!(
            "name = \"{table}_v\"\ndatabase = \"{}\"\n[[steps]]\n{step}\n",
            common::plan_url(&db.url)
        ),
    );
    let out = common::godwit()
        .args(["submit", path_str(&by_var)])
        .output()
        .expect("submit");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stored = plan_text(format!("{table}_v")).await.expect("a stored run");
    assert!(stored.contains(":${GODWIT_TEST_"), "{stored}");
    assert!(!stored.contains(&password), "{stored}");
    db.drop_mysql().await;
}

/// Issue 11: `batch_timeout = "1ns"` was sent to MariaDB as `max_statement_time = 0`, no limit
/// at all. It rounds up to the smallest limit the database takes, so the sleeping batch fails.
async fn r11_a_batch_timeout_below_the_resolution_still_limits(backend: Backend) {
    let db = own_db(backend).await;
    let table = db.table("ns");
    db.counter_table(&table, 1..=2).await;
    let (sleep, code) = match backend {
        Backend::Postgres => ("pg_sleep(3) IS NOT NULL", "[57014]"),
        Backend::MySql => ("SLEEP(3) = 0", "[1969]"),
        Backend::Sqlite => unreachable!("SQLite has no statement time limit to round"),
    };
    let plan = db.step_plan(
        &table,
        "batch_timeout = \"1ns\"\nmax_attempts = 1",
        &format!(
            "name = \"s\"\ntable = \"{table}\"\nkey = \"id\"\n\
             sql = \"UPDATE {table} SET hits = hits + 1 WHERE id BETWEEN :start AND :end AND {sleep}\""
        ),
    );
    let out = run_cmd(&["run", path_str(&plan)]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(code), "{err}");
    assert_eq!(
        db.scalar(&format!("SELECT SUM(hits) FROM {table}")).await,
        0
    );
    db.drop_mysql().await;
}

mod r11_timeouts {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pg() {
        super::r11_a_batch_timeout_below_the_resolution_still_limits(super::Backend::Postgres).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mysql() {
        super::r11_a_batch_timeout_below_the_resolution_still_limits(super::Backend::MySql).await
    }
}

/// Issue 11: "9999999999h" passed `check`, then `run` failed on the database's "invalid value".
#[test]
fn r11_check_refuses_a_time_limit_no_database_takes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("p.toml");
    std::fs::write(
        &path,
        "name = \"x\"\ndatabase = \"sqlite://x.db\"\n[defaults]\nbatch_timeout = \"9999999999h\"\n\
         [[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\nlease = \"30days\"\n",
    )
    .expect("write plan");
    let out = run_cmd(&["check", path_str(&path)]);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(
        all.contains("p.toml:4:17: `batch_timeout` must be at most \"2147483647ms\"")
            && all.contains("p.toml:8:9: step \"a\": `lease` must be at most"),
        "{all}"
    );
}

/// Issue 11: a huge error (a script's `error(string.rep("E", 30 MiB))`) flooded stderr, and
/// MariaDB refused to record it (`max_allowed_packet`): the run stayed `running`, the batch
/// `pending`. The error is capped where it is printed and stored, and so is a `print` flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_a_huge_error_is_recorded_capped_on_mariadb() {
    let db = own_db(Backend::MySql).await;
    let table = db.table("huge");
    db.counter_table(&table, 1..=1).await;
    let plan = db.step_plan(
        &table,
        "lua_memory = \"512MiB\"\nmax_attempts = 1",
        &format!(
            "name = \"s\"\ntable = \"{table}\"\nkey = \"id\"\ncolumns = [\"hits\"]\nlua = '''\n\
             function transform(row)\n\
               for i = 1, 2000 do print(string.rep(\"P\", 100000)) end\n\
               error(string.rep(\"E\", 30 * 1024 * 1024))\n\
             end\n'''"
        ),
    );
    let out = run_cmd(&["run", path_str(&plan)]);
    let err = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        &err[..err.len().min(2000)]
    );
    assert!(err.len() < 256 * 1024, "{} bytes on stderr", err.len());
    assert!(
        err.contains("more bytes cut)"),
        "{}",
        &err[..err.len().min(2000)]
    );
    let status = common::status_json(&plan);
    assert_eq!(status["state"], "failed", "{status}");
    let rows = db
        .query(&format!(
            "SELECT state, error FROM godwit_batches WHERE run = '{table}'"
        ))
        .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(stored_text(&rows[0][0]), "failed");
    let error = stored_text(&rows[0][1]);
    assert!(
        error.contains("EEEE") && error.contains("more bytes cut)"),
        "{}",
        &error[..200]
    );
    assert!(error.len() < 8 * 1024, "{} bytes stored", error.len());
    db.drop_mysql().await;
}

/// Issue 11: an ANSI escape sequence or a NUL in a step name or a script's error reached the
/// terminal raw through `run` and `status`. Human output escapes them; JSON has serde's escapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_control_characters_are_escaped_on_output() {
    let db = TestDb::new(Backend::Sqlite).await;
    let table = db.table("ctl");
    db.counter_table(&table, 1..=2).await;
    let plan = db.step_plan(
        &table,
        "max_attempts = 1",
        &format!(
            "name = \"red\\u001b[31m\\u0000step\"\ntable = \"{table}\"\nkey = \"id\"\ncolumns = [\"hits\"]\nlua = '''\n\
             function transform(row)\n\
               print(\"said\\27[31m\\0so\")\n\
               error(\"bad\\27[31mrow\")\n\
             end\n'''"
        ),
    );
    let raw = |bytes: &[u8]| bytes.iter().any(|b| *b == 0x1b || *b == 0);
    for args in [
        vec!["run", path_str(&plan)],
        vec!["status", path_str(&plan)],
        vec!["run", "--json", path_str(&plan)],
        vec!["status", "--json", path_str(&plan)],
    ] {
        let out = run_cmd(&args);
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(!raw(&out.stdout) && !raw(&out.stderr), "{args:?}: {all:?}");
        assert!(
            all.contains("bad") && all.contains("row"),
            "{args:?}: {all}"
        );
        if args.contains(&"--json") {
            assert!(all.contains("red\\u001b[31m\\u0000step"), "{args:?}: {all}");
        } else {
            assert!(all.contains("red\\u{1b}[31m\\0step"), "{args:?}: {all}");
            assert!(all.contains("bad\\u{1b}[31mrow"), "{args:?}: {all}");
            if args[0] == "run" {
                assert!(all.contains("said\\u{1b}[31m\\0so"), "{args:?}: {all}");
            }
        }
    }
}

mod r11_stored {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pg() {
        super::r11_no_literal_password_is_stored(super::Backend::Postgres).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mysql() {
        super::r11_no_literal_password_is_stored(super::Backend::MySql).await
    }
}
