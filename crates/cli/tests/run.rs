//! `godwit run` and `godwit status` end to end, on each database, through the real binary.

mod common;

use std::time::Duration;

use common::restart::{assert_rows_as_plan_b_leaves_them, restart_plan, restart_table};
use common::{path_str, run_cmd, spawn, text, Backend, TestDb};
use rand::Rng;

fn counter_plan(db: &TestDb, table: &str, extra_defaults: &str, filter: Option<&str>) -> String {
    let filter_line = filter
        .map(|f| format!("where = \"{f}\"\n"))
        .unwrap_or_default();
    let and_filter = filter.map(|f| format!(" AND {f}")).unwrap_or_default();
    format!(
        r#"name = "{table}"
database = "{url}"

[defaults]
batch_size = 7
adaptive = false
{extra_defaults}

[[steps]]
name = "count"
table = "{table}"
key = "id"
{filter_line}sql = "UPDATE {table} SET hits = hits + 1 WHERE id BETWEEN :start AND :end{and_filter}"
"#,
        url = db.url
    )
}

/// A condition that holds for every row and makes each batch statement take at least
/// `seconds` (on SQLite, which has no sleep, a recursive count of about that long), so that a
/// run's length does not depend on how fast the machine applies a batch.
fn slow_batch(backend: Backend, seconds: &str) -> String {
    match backend {
        Backend::Postgres => format!("(SELECT pg_sleep({seconds})) IS NOT NULL"),
        Backend::MySql => format!("SLEEP({seconds}) = 0"),
        Backend::Sqlite => "(WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s \
                            WHERE i < 50000) SELECT COUNT(*) FROM s) > 0"
            .to_string(),
    }
}

/// [`counter_plan`] with each batch made slow by [`slow_batch`]: a plan that kill -9 tests can
/// interrupt on any machine.
fn slow_counter_plan(db: &TestDb, table: &str, extra_defaults: &str) -> String {
    let slow = slow_batch(db.backend, "0.01");
    counter_plan(db, table, extra_defaults, None).replace(
        " WHERE id BETWEEN :start AND :end\"",
        &format!(" WHERE id BETWEEN :start AND :end AND {slow}\""),
    )
}

/// Every matching row is updated exactly once, others not at all, and `status --json` says so.
async fn updates_each_matching_row_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let table = db.table("counter");
    // Sparse keys: batches must still hold batch_size rows, not empty ranges.
    db.counter_table(&table, (1..=200).map(|i| i * 13 - 500))
        .await;
    let plan = db.plan(
        "plan.toml",
        &counter_plan(&db, &table, "", Some("grp <> 0")),
    );
    let out = run_cmd(&["run", path_str(&plan), "--concurrency", "3"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));

    let wrong = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM {table} WHERE (grp <> 0 AND hits <> 1) OR (grp = 0 AND hits <> 0)"
        ))
        .await;
    assert_eq!(wrong, 0);

    let out = run_cmd(&["status", path_str(&plan), "--json"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status is JSON");
    let matching = db
        .scalar(&format!("SELECT COUNT(*) FROM {table} WHERE grp <> 0"))
        .await;
    assert_eq!(status["state"], "done");
    assert_eq!(status["steps"][0]["state"], "done");
    assert_eq!(status["steps"][0]["rows_done"], matching);
    assert_eq!(status["steps"][0]["batches_done"], (matching + 6) / 7);

    // Running a finished plan again changes nothing.
    let out = run_cmd(&["run", path_str(&plan)]);
    assert_eq!(out.status.code(), Some(0));
    let twice = db
        .scalar(&format!("SELECT COUNT(*) FROM {table} WHERE hits > 1"))
        .await;
    assert_eq!(twice, 0);
}

/// kill -9 at random moments, again and again; every row still ends with exactly one hit.
async fn exactly_once_across_kill_9(backend: Backend) {
    let db = TestDb::new(backend).await;
    let table = db.table("killed");
    db.counter_table(&table, 1..=12000).await;
    // Each batch sleeps: a fast machine must not finish the run between two kills.
    let plan = db.plan(
        "plan.toml",
        &slow_counter_plan(&db, &table, "lease = \"1s\""),
    );
    let mut rng = rand::rng();
    let mut kills = 0;
    for _ in 0..8 {
        let mut child = spawn(&["run", path_str(&plan), "--concurrency", "4", "--quiet"]);
        std::thread::sleep(Duration::from_millis(rng.random_range(30..300)));
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        child.kill().expect("kill -9");
        let _ = child.wait();
        kills += 1;
    }
    // Some rounds must have killed a running process, or this test proved nothing.
    assert!(
        kills >= 3,
        "only {kills} kills: the run finished too soon to be interrupted"
    );
    let out = run_cmd(&["run", path_str(&plan), "--quiet"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let hits = db
        .query(&format!(
            "SELECT COUNT(*), MIN(hits), MAX(hits) FROM {table}"
        ))
        .await;
    let (n, min, max) = (
        hits[0][0].as_i64(),
        hits[0][1].as_i64(),
        hits[0][2].as_i64(),
    );
    assert_eq!(
        (n, min, max),
        (Some(12000), Some(1), Some(1)),
        "after {kills} kills"
    );
}

/// Two processes on one plan, each killed at random moments and restarted: still exactly once.
async fn exactly_once_with_two_processes_killed(backend: Backend) {
    let db = TestDb::new(backend).await;
    let table = db.table("pair");
    // Each batch sleeps, so that the run outlasts several kills on any machine.
    db.counter_table(&table, 1..=20000).await;
    let plan = db.plan(
        "plan.toml",
        &slow_counter_plan(&db, &table, "lease = \"1s\""),
    );
    let args = ["run", path_str(&plan), "--concurrency", "3", "--quiet"];
    let mut rng = rand::rng();
    let mut kills = 0;
    let mut pair = [spawn(&args), spawn(&args)];
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(rng.random_range(50..300)));
        let victim = rng.random_range(0..2);
        if pair[victim].try_wait().expect("try_wait").is_some() {
            break;
        }
        pair[victim].kill().expect("kill -9");
        let _ = pair[victim].wait();
        kills += 1;
        pair[victim] = spawn(&args);
    }
    for child in pair {
        let out = child.wait_with_output().expect("wait");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    assert!(
        kills >= 3,
        "only {kills} kills: the run finished too soon to be interrupted"
    );
    let hits = db
        .query(&format!(
            "SELECT COUNT(*), MIN(hits), MAX(hits) FROM {table}"
        ))
        .await;
    let (n, min, max) = (
        hits[0][0].as_i64(),
        hits[0][1].as_i64(),
        hits[0][2].as_i64(),
    );
    assert_eq!(
        (n, min, max),
        (Some(20000), Some(1), Some(1)),
        "after {kills} kills"
    );
}

/// Two processes on one plan at the same time split the work; no row is updated twice.
async fn two_processes_share_one_run(backend: Backend) {
    let db = TestDb::new(backend).await;
    let table = db.table("shared");
    db.counter_table(&table, 1..=2000).await;
    let plan = db.plan("plan.toml", &counter_plan(&db, &table, "", None));
    let a = spawn(&["run", path_str(&plan), "--quiet"]);
    let b = spawn(&["run", path_str(&plan), "--quiet"]);
    for child in [a, b] {
        let out = child.wait_with_output().expect("wait");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    let bad = db
        .scalar(&format!("SELECT COUNT(*) FROM {table} WHERE hits <> 1"))
        .await;
    assert_eq!(bad, 0);
}

/// Eight processes started together on one step of small batches: their claims queue on the
/// step's cursor row (PostgreSQL, state in the plan's database), so none loses a race and
/// walks again, the batches are numbered without a gap, their key ranges follow each other
/// without overlap, and every row is counted once.
async fn eight_processes_queue_on_the_cursor(backend: Backend) {
    let db = TestDb::new(backend).await;
    let table = db.table("queued");
    db.counter_table(&table, 1..=6000).await;
    let plan = db.plan(
        "plan.toml",
        &counter_plan(&db, &table, "", None).replace("batch_size = 7", "batch_size = 5"),
    );
    let fleet: Vec<_> = (0..8)
        .map(|_| {
            common::godwit()
                .args(["run", path_str(&plan), "--concurrency", "2", "--quiet"])
                // The claim loop logs each race it loses at debug level.
                .env("RUST_LOG", "godwit_sched=debug")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn godwit")
        })
        .collect();
    let mut lost = 0;
    for child in fleet {
        let out = child.wait_with_output().expect("wait");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{err}");
        lost += err.matches("claimed the range first").count();
    }
    let wrong = db
        .scalar(&format!("SELECT COUNT(*) FROM {table} WHERE hits <> 1"))
        .await;
    assert_eq!(wrong, 0, "rows not counted exactly once");
    // Batch n + 1 starts right after batch n ends: no range claimed twice, none skipped.
    let ranges = db
        .query(&format!(
            "SELECT batch, CAST(start_key AS BIGINT), CAST(end_key AS BIGINT), n_rows, worker \
             FROM godwit_batches WHERE run = '{table}' AND state = 'done' ORDER BY batch"
        ))
        .await;
    assert_eq!(ranges.len(), 1200);
    let mut workers = std::collections::BTreeSet::new();
    for (i, r) in ranges.iter().enumerate() {
        let i = i as i64;
        assert_eq!(r[0].as_i64(), Some(i), "batch numbers have a gap");
        assert_eq!(r[1].as_i64(), Some(i * 5 + 1), "batch {i} starts elsewhere");
        assert_eq!(r[2].as_i64(), Some(i * 5 + 5), "batch {i} ends elsewhere");
        assert_eq!(r[3].as_i64(), Some(5));
        workers.insert(format!("{:?}", r[4]));
    }
    assert!(
        workers.len() >= 4,
        "only {} processes ran batches: the claims did not compete",
        workers.len()
    );
    assert_eq!(
        lost, 0,
        "claims lost races for the cursor instead of waiting for it"
    );
}

/// A permanent error fails the run at once with exit 1, naming step, key range and code;
/// `status` shows the failure.
async fn permanent_error_fails_with_context(backend: Backend) {
    let db = TestDb::new(backend).await;
    let table = db.table("broken");
    db.counter_table(&table, 1..=50).await;
    let plan = db.step_plan(
        &table,
        "",
        &format!(
            "name = \"divide\"\ntable = \"{table}\"\nkey = \"id\"\n\
             sql = \"UPDATE {table} SET hits = no_such_column WHERE id BETWEEN :start AND :end\""
        ),
    );
    let out = run_cmd(&["run", path_str(&plan)]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("step \"divide\""), "{err}");
    assert!(err.contains("keys 1..=50"), "{err}");
    let code = match backend {
        Backend::Postgres => "[42703]",
        Backend::MySql => "[1054]",
        Backend::Sqlite => "[1]",
    };
    assert!(err.contains(code), "{err}");
    let out = run_cmd(&["status", path_str(&plan), "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(status["state"], "failed");
    assert_eq!(status["steps"][0]["batches_failed"], 1);
}

/// `--max-duration` stops claiming, exits 75, and the next run finishes the rest.
async fn time_budget_stops_and_resumes(backend: Backend) {
    let db = TestDb::new(backend).await;
    let table = db.table("budget");
    db.counter_table(&table, 1..=400).await;
    let slow = match backend {
        Backend::Postgres => "pg_sleep(0.05) IS NOT NULL",
        Backend::MySql => "SLEEP(0.05) = 0",
        // SQLite has no sleep: a recursive count takes a few milliseconds instead.
        Backend::Sqlite => "(WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 200000) SELECT COUNT(*) FROM s) > 0",
    };
    let plan = db.step_plan(
        &table,
        "batch_size = 10\nadaptive = false",
        &format!(
            "name = \"slow\"\ntable = \"{table}\"\nkey = \"id\"\n\
             sql = \"UPDATE {table} SET hits = hits + 1 WHERE id BETWEEN :start AND :end AND {slow}\""
        ),
    );
    let out = run_cmd(&[
        "run",
        path_str(&plan),
        "--max-duration",
        "300ms",
        "--concurrency",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(75), "{}", text(&out.stderr));
    let done = db
        .scalar(&format!("SELECT COUNT(*) FROM {table} WHERE hits = 1"))
        .await;
    assert!(done > 0 && done < 400, "{done} rows done after the budget");
    let out = run_cmd(&["run", path_str(&plan), "--concurrency", "4"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let bad = db
        .scalar(&format!("SELECT COUNT(*) FROM {table} WHERE hits <> 1"))
        .await;
    assert_eq!(bad, 0);
}

/// A stored run is not resumed with a changed plan; `--restart` starts it over.
async fn changed_plan_is_refused_until_restart(backend: Backend) {
    let db = TestDb::new(backend).await;
    let table = db.table("changed");
    db.counter_table(&table, 1..=30).await;
    let plan = db.plan("plan.toml", &counter_plan(&db, &table, "", None));
    assert_eq!(run_cmd(&["run", path_str(&plan)]).status.code(), Some(0));
    let changed = counter_plan(&db, &table, "", Some("grp = 1"));
    let plan = db.plan("plan.toml", &changed);
    let out = run_cmd(&["run", path_str(&plan)]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("step \"count\" changed") && err.contains("--restart"),
        "{err}"
    );
    let out = run_cmd(&["run", path_str(&plan), "--restart"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let twice = db
        .scalar(&format!("SELECT COUNT(*) FROM {table} WHERE hits = 2"))
        .await;
    assert_eq!(twice, 10);
}

/// `run` refuses a key without a unique index (every batch would scan the table), changing
/// nothing, and says which index would fix it.
async fn refuses_a_key_without_an_index(backend: Backend) {
    let db = TestDb::new(backend).await;
    let table = db.table("noindex");
    db.exec(&format!(
        "CREATE TABLE {table} (code INT NOT NULL, hits INT NOT NULL DEFAULT 0)"
    ))
    .await;
    db.exec(&format!("INSERT INTO {table} (code) VALUES (1), (2), (3)"))
        .await;
    let plan = db.step_plan(
        &table,
        "",
        &format!(
            "name = \"scan\"\ntable = \"{table}\"\nkey = \"code\"\n\
             sql = \"UPDATE {table} SET hits = hits + 1 WHERE code BETWEEN :start AND :end\""
        ),
    );
    let out = run_cmd(&["run", path_str(&plan)]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("has no index") && err.contains("CREATE UNIQUE INDEX"),
        "{err}"
    );
    let hits = db.scalar(&format!("SELECT SUM(hits) FROM {table}")).await;
    assert_eq!(hits, 0);
}

/// A stuck batch never hangs the run: `batch_timeout` cancels it on the database side, it is
/// retried, and after `max_attempts` the run fails naming the database's timeout code.
async fn batch_timeout_cancels_a_stuck_batch(backend: Backend) {
    let db = TestDb::new(backend).await;
    let table = db.table("stuck");
    db.counter_table(&table, 1..=5).await;
    let (stuck, code) = match backend {
        Backend::Postgres => ("pg_sleep(30) IS NOT NULL", "[57014]"),
        Backend::MySql => ("SLEEP(30) = 0", "[1969]"),
        Backend::Sqlite => (
            "(WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 1000000000) SELECT COUNT(*) FROM s) > 0",
            "[9]",
        ),
    };
    let plan = db.step_plan(
        &table,
        "batch_timeout = \"300ms\"\nmax_attempts = 2",
        &format!(
            "name = \"stuck\"\ntable = \"{table}\"\nkey = \"id\"\n\
             sql = \"UPDATE {table} SET hits = hits + 1 WHERE id BETWEEN :start AND :end AND {stuck}\""
        ),
    );
    let started = std::time::Instant::now();
    let out = run_cmd(&["run", path_str(&plan)]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(code) && err.contains("keys 1..=5") && err.contains("attempt 2/2"),
        "{err}"
    );
    // Two attempts of 300 ms and a backoff, far from the 30 s the statement asked for.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    let hits = db.scalar(&format!("SELECT SUM(hits) FROM {table}")).await;
    assert_eq!(hits, 0);
}

/// Steps run in `after` order, independent steps alongside; a one-off step runs once; a
/// statement that refuses transactions (`CREATE INDEX CONCURRENTLY`, `VACUUM`) runs outside one.
async fn steps_follow_their_dependencies(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (first, second) = (db.table("deps"), db.table("indep"));
    db.counter_table(&first, 1..=40).await;
    db.counter_table(&second, 1..=40).await;
    let maintenance = match backend {
        Backend::Postgres => {
            format!("CREATE INDEX CONCURRENTLY IF NOT EXISTS {first}_grp ON {first} (grp)")
        }
        Backend::MySql => format!("CREATE INDEX {first}_grp ON {first} (grp)"),
        Backend::Sqlite => "VACUUM".to_string(),
    };
    let plan_text = format!(
        r#"name = "{first}"
database = "{url}"

[defaults]
batch_size = 6

[[steps]]
name = "prepare"
sql = "UPDATE {first} SET grp = 7"

[[steps]]
name = "count"
after = ["prepare"]
table = "{first}"
key = "id"
sql = "UPDATE {first} SET hits = hits + grp WHERE id BETWEEN :start AND :end"

[[steps]]
name = "independent"
table = "{second}"
key = "id"
sql = "UPDATE {second} SET hits = hits + 1 WHERE id BETWEEN :start AND :end"

[[steps]]
name = "maintenance"
after = ["count"]
sql = "{maintenance}"
"#,
        url = db.url
    );
    let plan = db.plan("plan.toml", &plan_text);
    for _ in 0..2 {
        let out = run_cmd(&["run", path_str(&plan)]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    // `count` saw `prepare`'s change on every row, and nothing ran twice.
    let wrong = db
        .scalar(&format!("SELECT COUNT(*) FROM {first} WHERE hits <> 7"))
        .await;
    assert_eq!(wrong, 0);
    let wrong = db
        .scalar(&format!("SELECT COUNT(*) FROM {second} WHERE hits <> 1"))
        .await;
    assert_eq!(wrong, 0);
    if backend != Backend::Sqlite {
        let mut conn = db.conn().await;
        let info = conn
            .table_info(&first)
            .await
            .expect("table info")
            .expect("table");
        assert!(
            info.indexes
                .iter()
                .any(|i| i.name == format!("{first}_grp")),
            "{info:?}"
        );
    }
    let out = run_cmd(&["status", path_str(&plan), "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let states: Vec<&str> = status["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["state"].as_str())
        .collect();
    assert_eq!(states, ["done", "done", "done", "done"]);
}

/// Issue 11: `run --restart` with a changed plan while another process still runs the old
/// one. The restart is a new generation of the run: the old process claims and records
/// nothing more, stops with exit 1 saying why, and every row ends changed by the new plan
/// exactly once, with no batch of the old plan committed after the restart.
async fn r11_restart_fences_the_old_plan(backend: Backend) {
    restart_fences_the_old_plan(backend, false).await;
}

/// As [`r11_restart_fences_the_old_plan`], with the progress in a separate state database.
async fn r11_restart_fences_the_old_plan_with_separate_state(backend: Backend) {
    restart_fences_the_old_plan(backend, true).await;
}

async fn restart_fences_the_old_plan(backend: Backend, separate_state: bool) {
    let db = TestDb::new(backend).await;
    let table = db.table("restarted");
    restart_table(&db, &table).await;
    let state_url =
        separate_state.then(|| format!("sqlite://{}/state.db", db.dir.path().display()));
    if let Some(url) = &state_url {
        // godwit opens an existing SQLite file only.
        godwit_db::connect(
            &godwit_driver::DbUrl::new(url.clone()),
            &godwit_driver::ConnectOptions {
                create_if_missing: true,
                ..Default::default()
            },
        )
        .await
        .expect("create the state database");
    }
    let plan_a = db.plan(
        "a.toml",
        &restart_plan(&db, &table, state_url.as_deref(), "A"),
    );
    let plan_b = db.plan(
        "b.toml",
        &restart_plan(&db, &table, state_url.as_deref(), "B"),
    );
    let mut a = common::KillOnDrop(common::spawn_watched(&[
        "run",
        path_str(&plan_a),
        "--restart",
        "--concurrency",
        "1",
        "--quiet",
    ]));
    // Plan A has done three batches and has 77 left (at least 3.8 s of sleeping on the
    // servers): B restarts the run while A is at work, even on a busy machine.
    common::poll_until(
        "plan A's first batches",
        Duration::from_secs(60),
        async || {
            assert!(a.alive(), "plan A ended early: {}", a.output_so_far());
            db.scalar(&format!("SELECT COUNT(*) FROM {table} WHERE v = 'A'"))
                .await
                >= 30
        },
    )
    .await;
    let out = run_cmd(&[
        "run",
        path_str(&plan_b),
        "--restart",
        "--concurrency",
        "1",
        "--quiet",
    ]);
    assert_eq!(out.status.code(), Some(0), "B: {}", text(&out.stderr));
    let code = a.finish(Duration::from_secs(60));
    let a_err = a.stderr_text();
    assert_eq!(
        code,
        Some(1),
        "A must stop when B restarts the run: {a_err}"
    );
    assert!(
        a_err.contains("was restarted by another process (--restart)")
            && a_err.contains("applied nothing of the old plan since"),
        "{a_err}"
    );

    // Every row got B's change exactly once; A's, if at all, before B's.
    assert_rows_as_plan_b_leaves_them(&db, &table).await;
    let by_a = db
        .scalar(&format!("SELECT COUNT(*) FROM {table} WHERE v = 'AB'"))
        .await;
    assert!((30..800).contains(&by_a), "{by_a} rows were changed by A");
    // No batch of A started after B's restart made the new generation.
    let mut state = match &state_url {
        Some(url) => godwit_db::connect(
            &godwit_driver::DbUrl::new(url.clone()),
            &godwit_driver::ConnectOptions::default(),
        )
        .await
        .expect("state database"),
        None => db.conn().await,
    };
    let restarted_at = state
        .query(
            &format!("SELECT created_ms FROM godwit_runs WHERE run = '{table}'"),
            &[],
        )
        .await
        .expect("the run's row")[0]
        .get(0)
        .as_i64()
        .expect("created_ms");
    let late = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM {table} WHERE a_ms > {restarted_at}"
        ))
        .await;
    assert_eq!(late, 0, "rows changed by A after the restart");
    let status = common::status_json(&plan_b);
    assert_eq!(status["state"], "done", "{status}");
}

/// Issue 11: killed inside the done record, a batch has committed nothing. A trigger the test
/// puts on `godwit_batches` makes the done record wait for a lock the test holds; once the
/// server shows the batch's session waiting there (the batch's statement has run, its commit
/// has not), the process is killed with SIGKILL and the lock released. The batch's rows are
/// unchanged, the batch is not recorded done, and a re-run applies every batch exactly once.
/// PostgreSQL and MariaDB (SQLite has no lock a trigger could wait on).
async fn r11_killed_inside_the_done_record_commits_nothing(backend: Backend) {
    let isolated;
    let shared;
    let db: &TestDb = match backend {
        Backend::Postgres => {
            // Its own godwit_batches: the trigger must not touch other tests' runs.
            isolated = common::isolated_db(backend).await;
            &isolated
        }
        _ => {
            shared = TestDb::new(backend).await;
            &shared
        }
    };
    let table = db.table("recorded");
    db.counter_table(&table, 1..=30).await;
    let plan = db.plan(
        "plan.toml",
        // `submit` takes the password through ${VAR}, as it refuses one written in the plan.
        &counter_plan(db, &table, "lease = \"1s\"", None)
            .replace(&db.url, &common::plan_url(&db.url)),
    );
    // The state tables and the run exist before the trigger goes on them.
    let out = run_cmd(&["submit", path_str(&plan)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let key = rand::random::<u32>();
    let mut holder = db.conn().await;
    let (lock, unlock, waiting) = match backend {
        Backend::Postgres => {
            db.exec(&format!(
                "CREATE FUNCTION {table}_hold() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN IF NEW.run = '{table}' AND NEW.state = 'done' THEN \
                 PERFORM pg_advisory_xact_lock({key}); END IF; RETURN NEW; END $$"
            ))
            .await;
            db.exec(&format!(
                "CREATE TRIGGER {table}_hold BEFORE UPDATE ON godwit_batches \
                 FOR EACH ROW EXECUTE FUNCTION {table}_hold()"
            ))
            .await;
            (
                format!("SELECT pg_advisory_lock({key})::text"),
                format!("SELECT pg_advisory_unlock({key})::text"),
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                 AND wait_event = 'advisory' AND query LIKE 'UPDATE godwit_batches SET state = ''done''%'"
                    .to_string(),
            )
        }
        Backend::MySql => {
            db.exec(&format!(
                "CREATE TRIGGER {table}_hold BEFORE UPDATE ON godwit_batches FOR EACH ROW \
                 SET @godwit_hold = IF(NEW.run = '{table}' AND NEW.state = 'done', \
                 GET_LOCK('{table}', 120), NULL)"
            ))
            .await;
            (
                format!("SELECT GET_LOCK('{table}', 0)"),
                format!("SELECT RELEASE_LOCK('{table}')"),
                // The session shows the trigger's statement while it waits.
                "SELECT ID FROM information_schema.PROCESSLIST WHERE STATE = 'User lock' \
                 AND INFO LIKE 'SET @godwit_hold = %'"
                    .to_string(),
            )
        }
        Backend::Sqlite => panic!("SQLite has no lock for the trigger to wait on"),
    };
    holder.query(&lock, &[]).await.expect("take the lock");
    let mut child = common::KillOnDrop(common::spawn_watched(&[
        "run",
        path_str(&plan),
        "--concurrency",
        "1",
        "--quiet",
    ]));
    let mut session = 0;
    common::poll_until(
        "the batch's session to wait inside its done record",
        Duration::from_secs(30),
        async || {
            assert!(child.alive(), "{}", child.output_so_far());
            match db.query(&waiting).await.first() {
                Some(row) => {
                    session = row[0].as_i64().expect("session id");
                    true
                }
                None => false,
            }
        },
    )
    .await;
    child.0.child.kill().expect("kill -9");
    let _ = child.0.child.wait();
    // The server finds the client gone once the done record goes on: it rolls back.
    holder.query(&unlock, &[]).await.expect("release the lock");
    let alive = match backend {
        Backend::Postgres => format!("SELECT COUNT(*) FROM pg_stat_activity WHERE pid = {session}"),
        _ => format!("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {session}"),
    };
    common::poll_until(
        "the killed process's session to end",
        Duration::from_secs(30),
        async || db.scalar(&alive).await == 0,
    )
    .await;
    let drop_trigger = match backend {
        Backend::Postgres => format!("DROP TRIGGER {table}_hold ON godwit_batches"),
        _ => format!("DROP TRIGGER {table}_hold"),
    };
    db.exec(&drop_trigger).await;

    let changed = db
        .scalar(&format!("SELECT COUNT(*) FROM {table} WHERE hits <> 0"))
        .await;
    assert_eq!(
        changed, 0,
        "rows changed by a batch killed inside its done record"
    );
    let recorded = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM godwit_batches WHERE run = '{table}' AND state = 'done'"
        ))
        .await;
    assert_eq!(recorded, 0, "a batch recorded done by a killed process");
    let out = run_cmd(&["run", path_str(&plan), "--quiet"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let hits = db
        .query(&format!(
            "SELECT COUNT(*), MIN(hits), MAX(hits) FROM {table}"
        ))
        .await;
    assert_eq!(
        (
            hits[0][0].as_i64(),
            hits[0][1].as_i64(),
            hits[0][2].as_i64()
        ),
        (Some(30), Some(1), Some(1))
    );
}

mod eight_processes_queue_on_the_cursor {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pg() {
        super::eight_processes_queue_on_the_cursor(super::Backend::Postgres).await
    }
}

mod killed_inside_the_done_record {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pg() {
        super::r11_killed_inside_the_done_record_commits_nothing(super::Backend::Postgres).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mysql() {
        super::r11_killed_inside_the_done_record_commits_nothing(super::Backend::MySql).await
    }
}

per_backend!(
    steps_follow_their_dependencies,
    batch_timeout_cancels_a_stuck_batch,
    refuses_a_key_without_an_index,
    updates_each_matching_row_once,
    exactly_once_across_kill_9,
    exactly_once_with_two_processes_killed,
    two_processes_share_one_run,
    permanent_error_fails_with_context,
    time_budget_stops_and_resumes,
    changed_plan_is_refused_until_restart,
    r11_restart_fences_the_old_plan,
    r11_restart_fences_the_old_plan_with_separate_state,
);
