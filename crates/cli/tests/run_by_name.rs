//! Status and control by state database and run name, without the plan file (as in a
//! worker's pod, which has none).

mod common;

use common::{path_str, run_cmd, text, Backend, TestDb};

#[tokio::test]
async fn status_and_control_by_database_and_run_name() {
    let db = TestDb::new(Backend::Sqlite).await;
    let table = db.table("named");
    db.counter_table(&table, 1..=50).await;
    let plan = db.step_plan(
        &table,
        "batch_size = 10",
        &format!(
            "name = \"count\"\ntable = \"{table}\"\nkey = \"id\"\n\
             sql = \"UPDATE {table} SET hits = hits + 1 WHERE id BETWEEN :start AND :end\""
        ),
    );
    let url = db.url.as_str();

    let empty = run_cmd(&["status", "--database", url, "--json"]);
    assert_eq!(empty.status.code(), Some(0), "{}", text(&empty.stderr));
    assert_eq!(text(&empty.stdout).trim(), "[]", "no run stored yet");

    let submitted = run_cmd(&["submit", path_str(&plan)]);
    assert_eq!(
        submitted.status.code(),
        Some(0),
        "{}",
        text(&submitted.stderr)
    );
    let listed = run_cmd(&["status", "--database", url, "--json"]);
    let runs: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("a JSON array");
    assert_eq!(runs.as_array().map(Vec::len), Some(1), "{runs}");
    assert_eq!(runs[0]["plan"], table.as_str());
    assert_eq!(runs[0]["state"], "pending");

    let paused = run_cmd(&["pause", "--database", url, "--run", &table]);
    assert_eq!(paused.status.code(), Some(0), "{}", text(&paused.stderr));
    let one = run_cmd(&["status", "--database", url, "--run", &table, "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&one.stdout).expect("one object");
    assert_eq!(status["state"], "paused", "{status}");
    // A paused run is not worked on: an idle worker leaves it alone and exits.
    let worker = run_cmd(&["worker", "--database", url, "--exit-when-idle", "--quiet"]);
    assert_eq!(worker.status.code(), Some(0), "{}", text(&worker.stderr));
    assert_eq!(
        db.scalar(&format!("SELECT SUM(hits) FROM {table}")).await,
        0
    );

    let resumed = run_cmd(&["resume", "--database", url, "--run", &table]);
    assert_eq!(resumed.status.code(), Some(0), "{}", text(&resumed.stderr));
    let worker = run_cmd(&["worker", "--database", url, "--exit-when-idle", "--quiet"]);
    assert_eq!(worker.status.code(), Some(0), "{}", text(&worker.stderr));
    assert_eq!(
        db.scalar(&format!("SELECT SUM(hits) FROM {table}")).await,
        50
    );
    let done = run_cmd(&["status", "--database", url, "--run", &table, "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&done.stdout).expect("one object");
    assert_eq!(status["state"], "done", "{status}");

    let unknown = run_cmd(&["cancel", "--database", url, "--run", "no-such-run"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        text(&unknown.stderr).contains("\"no-such-run\""),
        "{}",
        text(&unknown.stderr)
    );
    let unknown = run_cmd(&["status", "--database", url, "--run", "no-such-run"]);
    assert_eq!(unknown.status.code(), Some(1));
    // Half a target is a usage error.
    let half = run_cmd(&["pause", "--run", &table]);
    assert_eq!(half.status.code(), Some(2), "{}", text(&half.stderr));
}
