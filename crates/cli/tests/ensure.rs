//! Post-conditions (`ensure`): asked once every batch of a step is done, before the step is
//! marked done; one that does not hold fails the step with what it returned, and steps after
//! it do not start. `check` asks them beforehand. See docs/plans.md ("Post-conditions").

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{path_str, poll_until, run_cmd, spawn_watched, status_json, text, Backend, TestDb};

/// A plan of two steps on `table`: `touch` adds 1 to `hits` of the rows whose `grp` is not 0
/// and carries `ensure` (TOML, as written); `after` adds 10 to every row once `touch` is done.
fn two_steps(db: &TestDb, table: &str, ensure: &str) -> PathBuf {
    db.plan(
        "plan.toml",
        &format!(
            "name = \"{table}\"\ndatabase = \"{url}\"\n\n[defaults]\nbatch_size = 25\n\n\
             [[steps]]\nname = \"touch\"\ntable = \"{table}\"\nkey = \"id\"\n\
             sql = \"UPDATE {table} SET hits = hits + 1 WHERE id BETWEEN :start AND :end AND grp <> 0\"\n\
             ensure = {ensure}\n\n\
             [[steps]]\nname = \"after\"\nafter = [\"touch\"]\ntable = \"{table}\"\nkey = \"id\"\n\
             sql = \"UPDATE {table} SET hits = hits + 10 WHERE id BETWEEN :start AND :end\"\n",
            url = db.url
        ),
    )
}

/// The second of two `ensure` queries does not hold (a third of the rows were left out): the
/// step fails naming it, its line and what it returned, and the next step does not start.
/// Once the data is fixed, `retry` asks again without redoing a batch, and the plan goes on.
async fn a_failing_ensure_fails_its_step_and_a_holding_one_lets_the_plan_go_on(backend: Backend) {
    let db = TestDb::new(backend).await;
    let table = db.table("ensured");
    db.counter_table(&table, 1..=300).await;
    let plan = two_steps(
        &db,
        &table,
        &format!(
            "[\n  \"SELECT count(*) = 300 FROM {table}\",\n  \
             \"SELECT count(*) = 0, count(*) AS left_over FROM {table} WHERE hits = 0\",\n]"
        ),
    );

    let failed = run_cmd(&["run", path_str(&plan), "--quiet"]);
    let err = text(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{err}");
    assert!(
        err.contains("step \"touch\": ensure 2 (line 14) did not hold")
            && err.contains("left_over = 100"),
        "{err}"
    );
    // Every batch of the step ran, once; the next step did not start.
    assert_eq!(
        db.scalar(&format!("SELECT count(*) FROM {table} WHERE hits = 1"))
            .await,
        200
    );
    assert_eq!(
        db.scalar(&format!("SELECT count(*) FROM {table} WHERE hits > 1"))
            .await,
        0
    );
    let status = status_json(&plan);
    assert_eq!(status["state"], "failed", "{status}");
    assert_eq!(status["steps"][0]["state"], "failed", "{status}");
    assert_eq!(status["steps"][0]["batches_failed"], 0, "{status}");
    assert_eq!(status["steps"][1]["state"], "pending", "{status}");

    db.exec(&format!("UPDATE {table} SET hits = 1 WHERE hits = 0"))
        .await;
    let retried = run_cmd(&["retry", path_str(&plan)]);
    assert_eq!(retried.status.code(), Some(0), "{}", text(&retried.stderr));
    let done = run_cmd(&["run", path_str(&plan), "--quiet"]);
    assert_eq!(done.status.code(), Some(0), "{}", text(&done.stderr));
    // `touch` was not redone (its rows would hold 12), and `after` ran once over every row.
    assert_eq!(
        db.scalar(&format!("SELECT count(*) FROM {table} WHERE hits = 11"))
            .await,
        300
    );
    let status = status_json(&plan);
    assert_eq!(status["state"], "done", "{status}");
}

/// `check` asks each `ensure` now and says what it returns (an info finding, which
/// `--deny-warnings` lets pass); one that cannot run is a problem naming its line.
async fn check_shows_what_ensure_returns_now(backend: Backend) {
    let db = TestDb::new(backend).await;
    let table = db.table("checked");
    db.counter_table(&table, 1..=30).await;
    let plan = two_steps(
        &db,
        &table,
        &format!("\"SELECT count(*) = 0, count(*) AS left_over FROM {table} WHERE hits = 0\""),
    );
    let out = run_cmd(&["check", path_str(&plan), "--json", "--deny-warnings"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", text(&out.stderr)));
    assert_eq!(out.status.code(), Some(0), "{report}");
    let notes: Vec<&serde_json::Value> = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["code"] == "ensure")
        .collect();
    assert_eq!(notes.len(), 1, "{report}");
    assert_eq!(notes[0]["severity"], "info", "{report}");
    assert_eq!(notes[0]["step"], "touch", "{report}");
    let message = notes[0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("does not hold yet") && message.contains("left_over = 30"),
        "{message}"
    );
    // Nothing changed.
    assert_eq!(
        db.scalar(&format!("SELECT count(*) FROM {table} WHERE hits = 0"))
            .await,
        30
    );

    let broken = two_steps(
        &db,
        &table,
        &format!("\"SELECT count(*) = 0 FROM {table} WHERE no_such_column = 0\""),
    );
    let out = run_cmd(&["check", path_str(&broken), "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", text(&out.stderr)));
    assert_ne!(out.status.code(), Some(0), "{report}");
    let problem = report["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .find(|p| p["code"] == "invalid-ensure")
        .unwrap_or_else(|| panic!("no invalid-ensure: {report}"));
    let message = problem["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("plan.toml:12:") && message.contains("ensure 1 (line 12) fails"),
        "{message}"
    );
}

per_backend!(
    a_failing_ensure_fails_its_step_and_a_holding_one_lets_the_plan_go_on,
    check_shows_what_ensure_returns_now,
);

/// An answer that is not true or false (a count, NULL) fails the step and says why, rather
/// than being read as true.
#[tokio::test]
async fn a_count_is_not_taken_for_true() {
    let db = TestDb::new(Backend::Sqlite).await;
    let table = db.table("counted");
    db.counter_table(&table, 1..=30).await;
    let plan = two_steps(&db, &table, &format!("\"SELECT count(*) FROM {table}\""));
    let out = run_cmd(&["run", path_str(&plan), "--quiet"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("its first column is 30, not true or false"),
        "{err}"
    );
}

/// Malformed `ensure` keys are refused at their line and column before anything runs.
#[tokio::test]
async fn malformed_ensure_keys_are_refused_where_written() {
    let db = TestDb::new(Backend::Sqlite).await;
    let table = db.table("malformed");
    db.counter_table(&table, 1..=3).await;
    for (written, expected) in [
        (
            "5",
            "plan.toml:12:10: step \"touch\": `ensure` must be a query, or an array",
        ),
        (
            "[]",
            "plan.toml:12:10: step \"touch\": `ensure` must name at least one query",
        ),
        (
            "[\"  \"]",
            "plan.toml:12:11: step \"touch\": an `ensure` query must not be empty",
        ),
        (
            "[1]",
            "plan.toml:12:11: step \"touch\": `ensure` must hold strings",
        ),
    ] {
        let plan = two_steps(&db, &table, written);
        let out = run_cmd(&["check", path_str(&plan)]);
        let err = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(2), "{written}: {err}");
        assert!(err.contains(expected), "{written}: {err}");
    }
}

/// The step is marked done only after its `ensure` held: a run killed with `kill -9` while
/// the (slow) post-condition is being asked leaves the step not done, and the next run asks
/// again, here finding the data changed in between and failing the step.
#[tokio::test]
async fn a_crash_while_asking_leaves_the_step_to_be_asked_again() {
    let db = TestDb::new(Backend::Postgres).await;
    let table = db.table("asked");
    db.counter_table(&table, 1..=100).await;
    let plan = two_steps(
        &db,
        &table,
        &format!(
            "\"SELECT pg_sleep(30) IS NOT NULL AND count(*) = 0 FROM {table} WHERE hits = 0 AND grp <> 0\""
        ),
    );
    let mut run = spawn_watched(&["run", path_str(&plan), "--quiet"]);
    // Every batch of `touch` is done; the run is now asking its post-condition.
    poll_until("the step's batches to be done", Duration::from_secs(60), || async {
        let status = status_json(&plan);
        status["steps"][0]["rows_done"] == 100
            && db
                .scalar("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%' AND state = 'active'")
                .await
                == 1
    })
    .await;
    run.child.kill().expect("kill -9");
    run.child.wait().expect("reap");
    let status = status_json(&plan);
    assert_eq!(status["steps"][0]["state"], "running", "{status}");
    db.exec("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%' AND pid <> pg_backend_pid()")
        .await;

    // What the step did is undone in part behind godwit's back: asked again, it fails.
    db.exec(&format!("UPDATE {table} SET hits = 0 WHERE id = 7"))
        .await;
    let fast = db.plan(
        "plan.toml",
        &std::fs::read_to_string(&plan)
            .expect("plan")
            .replace("pg_sleep(30)", "pg_sleep(0)"),
    );
    let again = run_cmd(&["run", path_str(&fast), "--quiet"]);
    let err = text(&again.stderr);
    assert_eq!(again.status.code(), Some(1), "{err}");
    assert!(err.contains("ensure 1 (line 12) did not hold"), "{err}");
}
