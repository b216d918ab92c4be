//! A run operated from anywhere through the real binary on real servers: `godwit set` stores
//! settings that `status` shows and refuses what it cannot do; `godwit wait` exits as the run
//! ends (0 done, 1 failed or cancelled, 75 when its timeout passes first, 2 for no run).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{
    db_for, path_str, run_cmd, runs_stored, spawn_watched, status_json, text, Backend, KillOnDrop,
    TestDb,
};
use serde_json::json;

/// A plan named `name` adding 1 to `hits` of each row of `table` in batches of 10; `defaults`
/// goes into `[defaults]` and `extra` is added to the increment (a division by zero).
fn write_plan(db: &TestDb, name: &str, table: &str, defaults: &str, extra: &str) -> PathBuf {
    // Through `${VAR}`: `submit` refuses a password written in the plan.
    let url = common::plan_url(&db.url);
    db.plan(
        &format!("{name}.toml"),
        &format!(
            r#"name = "{name}"
database = "{url}"

[defaults]
batch_size = 10
{defaults}

[[steps]]
name = "count"
table = "{table}"
key = "id"
sql = "UPDATE {table} SET hits = hits + 1{extra} WHERE id BETWEEN :start AND :end"
"#
        ),
    )
}

/// Runs godwit with `args`; its exit code and stderr.
fn godwit(args: &[&str]) -> (Option<i32>, String) {
    let out = run_cmd(args);
    (out.status.code(), text(&out.stderr))
}

/// Runs godwit with `args` and expects exit 0; its stderr.
fn ok(args: &[&str]) -> String {
    let (code, err) = godwit(args);
    assert_eq!(code, Some(0), "godwit {args:?}: {err}");
    err
}

fn submit(plan: &Path) {
    ok(&["submit", path_str(plan)]);
}

/// `set` writes the settings asked for and keeps the others, by plan file or by name, with a
/// decimal rate; `status` shows them (JSON and text) beside each step's batch size, and the
/// run still runs to the end.
async fn set_is_stored_and_shown(backend: Backend) {
    let db = db_for(backend).await;
    let table = db.table("set");
    db.counter_table(&table, 1..=30).await;
    let plan = write_plan(&db, &table, &table, "", "");
    let p = path_str(&plan);
    submit(&plan);

    let err = ok(&["set", p, "--concurrency", "3", "--batch-size", "500"]);
    assert!(
        err.contains(&format!(
            "{table}: concurrency 3, batch size 500 (workers pick it up within a second)"
        )),
        "{err}"
    );
    let status = status_json(&plan);
    assert_eq!(
        status["settings"],
        json!({"concurrency": 3, "batch_size": 500, "max_rows_per_second": null}),
        "{status}"
    );
    let step = &status["steps"][0];
    assert_eq!(
        step["batch_size"], 10,
        "the plan's, until a worker changes it: {status}"
    );
    assert_eq!(step.get("throttled"), Some(&json!(null)), "{status}");

    let err = ok(&[
        "set",
        "--database",
        &db.url,
        "--run",
        &table,
        "--max-rows-per-second",
        "2.5",
    ]);
    assert!(err.contains("at most 2.5 rows/s"), "{err}");
    let status = status_json(&plan);
    assert_eq!(
        status["settings"],
        json!({"concurrency": 3, "batch_size": 500, "max_rows_per_second": 2.5}),
        "{status}"
    );
    let out = run_cmd(&["status", p]);
    let table_text = text(&out.stdout);
    assert!(
        table_text
            .contains("set with `godwit set`: concurrency 3, batch size 500, at most 2.5 rows/s"),
        "{table_text}"
    );
    assert!(table_text.contains("BATCH SIZE"), "{table_text}");

    ok(&["run", p, "--quiet"]);
    let done = status_json(&plan);
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["steps"][0]["rows_done"], 30, "{done}");
    assert_eq!(done["settings"]["batch_size"], 500, "{done}");
}

/// `set` exits 2, changing nothing, without a setting, with a setting of 0 or no number, for
/// a run that is not stored, and for a run that is done or cancelled.
async fn set_refusals(backend: Backend) {
    let db = db_for(backend).await;
    let table = db.table("refused");
    db.counter_table(&table, 1..=20).await;
    let plan = write_plan(&db, &table, &table, "", "");
    let p = path_str(&plan);
    let refused = |args: &[&str], says: &str| {
        let (code, err) = godwit(args);
        assert_eq!(code, Some(2), "godwit {args:?}: {err}");
        assert!(
            err.contains(says),
            "godwit {args:?} should say {says:?}: {err}"
        );
    };
    refused(&["set", p], "--concurrency");
    refused(&["set", p, "--concurrency", "0"], "--concurrency");
    refused(&["set", p, "--batch-size", "0"], "--batch-size");
    for rate in ["0", "-1", "fast", "NaN", "inf"] {
        let arg = format!("--max-rows-per-second={rate}");
        refused(&["set", p, &arg], "is not a rate");
    }
    refused(
        &["set", p, "--concurrency", "2"],
        &format!("no run of \"{table}\" is stored"),
    );
    assert_eq!(runs_stored(&db, &table).await, 0);

    ok(&["run", p, "--quiet"]);
    refused(
        &["set", p, "--batch-size", "100"],
        &format!("\"{table}\" is done"),
    );
    let done = status_json(&plan);
    assert_eq!(done["settings"]["batch_size"], json!(null), "{done}");

    let cancelled = db.table("cancelled");
    let plan = write_plan(&db, &cancelled, &table, "", "");
    submit(&plan);
    ok(&["cancel", path_str(&plan)]);
    refused(
        &["set", path_str(&plan), "--concurrency", "2"],
        &format!("\"{cancelled}\" is cancelled"),
    );
}

/// `wait` exits 0 for a done run, 1 for a failed one (with its error) and a cancelled one,
/// 75 when its timeout passes while the run is paused or pending (saying how far it came), 2
/// for a run that is not stored.
async fn wait_exit_codes(backend: Backend) {
    let db = db_for(backend).await;
    let table = db.table("waited");
    db.counter_table(&table, 1..=20).await;
    let done = write_plan(&db, &table, &table, "", "");
    let (code, err) = godwit(&["wait", path_str(&done)]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!("no run of \"{table}\" is stored"))
            && err.contains("submit or run it first"),
        "{err}"
    );
    ok(&["run", path_str(&done), "--quiet"]);
    let err = ok(&["wait", path_str(&done)]);
    assert!(
        err.contains(&format!("{table}: done in")) && err.contains("20 rows"),
        "{err}"
    );

    // A division by zero: PostgreSQL's error, MariaDB's in strict mode, SQLite's NULL into a
    // NOT NULL column.
    let failing = db.table("failing");
    let failed = write_plan(&db, &failing, &table, "max_attempts = 1", " + 1/0");
    let (code, err) = godwit(&["run", path_str(&failed), "--quiet"]);
    assert_eq!(code, Some(1), "{err}");
    let (code, err) = godwit(&["wait", path_str(&failed)]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("\"{failing}\" failed: ")) && err.contains("1..=10"),
        "{err}"
    );

    let cancelling = db.table("cancelling");
    let cancelled = write_plan(&db, &cancelling, &table, "", "");
    submit(&cancelled);
    ok(&["cancel", path_str(&cancelled)]);
    let (code, err) = godwit(&["wait", path_str(&cancelled)]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("was cancelled"), "{err}");

    let pausing = db.table("pausing");
    let paused = write_plan(&db, &pausing, &table, "", "");
    submit(&paused);
    ok(&["pause", path_str(&paused)]);
    let started = Instant::now();
    let (code, err) = godwit(&["wait", path_str(&paused), "--timeout", "1s"]);
    let waited = started.elapsed();
    assert_eq!(code, Some(75), "{err}");
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(20),
        "waited {waited:?}"
    );
    assert!(
        err.contains(&format!("{pausing}: still paused after waiting 1s")),
        "{err}"
    );
    assert!(err.contains("count  pending  0 rows in 0 batches"), "{err}");

    // Pending, named without a plan file.
    let pending = db.table("pending");
    submit(&write_plan(&db, &pending, &table, "", ""));
    let (code, err) = godwit(&[
        "wait",
        "--database",
        &db.url,
        "--run",
        &pending,
        "--timeout",
        "1s",
    ]);
    assert_eq!(code, Some(75), "{err}");
    assert!(err.contains("still pending"), "{err}");
}

/// `wait` started on a stored run that no process works on yet keeps waiting, and exits 0
/// once a real `godwit run` has finished the run.
async fn wait_sees_a_run_finish(backend: Backend) {
    let db = db_for(backend).await;
    let table = db.table("finish");
    db.counter_table(&table, 1..=50).await;
    let plan = write_plan(&db, &table, &table, "", "");
    submit(&plan);
    let mut waiting = KillOnDrop(spawn_watched(&["wait", path_str(&plan)]));
    let watched_from = Instant::now();
    while watched_from.elapsed() < Duration::from_millis(1500) {
        assert!(waiting.alive(), "wait ended: {}", waiting.output_so_far());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ok(&["run", path_str(&plan), "--quiet"]);
    assert_eq!(
        waiting.finish(Duration::from_secs(30)),
        Some(0),
        "{}",
        waiting.stderr_text()
    );
    let err = waiting.stderr_text();
    assert!(
        err.contains(&format!("{table}: done in")) && err.contains("50 rows"),
        "{err}"
    );
}

per_backend!(
    set_is_stored_and_shown,
    set_refusals,
    wait_exit_codes,
    wait_sees_a_run_finish,
);
