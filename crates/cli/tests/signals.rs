//! SIGTERM and a double SIGINT sent to a real `godwit run` mid-way: the first lets the batches
//! in flight commit, the second rolls them back; either way the process exits 75 and a
//! re-run applies every row exactly once.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    path_str, poll_until, run_cmd, send_signal, spawn_watched, status_json, text, Backend, TestDb,
};

const ROWS: i64 = 100;
const BATCH: i64 = 10;
const CONCURRENCY: i64 = 2;
/// Batches up to this key are slow (1.5 s on the servers, a second or more on SQLite), so that
/// a signal finds them in flight; the rest are quick, so that the re-run is.
const SLOW_UP_TO: i64 = 60;

/// A one-step plan counting each row of `table` once, in batches of `BATCH`.
fn slow_plan(db: &TestDb, table: &str) -> String {
    // The condition is evaluated per row on the servers (10 rows x 0.15 s); SQLite computes
    // the uncorrelated count once per statement.
    let slow = match db.backend {
        Backend::Postgres => format!(
            "CASE WHEN id <= {SLOW_UP_TO} THEN pg_sleep(0.15) IS NOT NULL ELSE TRUE END"
        ),
        Backend::MySql => {
            format!("CASE WHEN id <= {SLOW_UP_TO} THEN SLEEP(0.15) = 0 ELSE TRUE END")
        }
        Backend::Sqlite => format!(
            "CASE WHEN id <= {SLOW_UP_TO} THEN (WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 5000000) SELECT COUNT(*) FROM s) > 0 ELSE 1 END"
        ),
    };
    format!(
        r#"name = "{table}"
database = "{url}"

[defaults]
batch_size = {BATCH}

[[steps]]
name = "slow"
table = "{table}"
key = "id"
sql = "UPDATE {table} SET hits = hits + 1 WHERE id BETWEEN :start AND :end AND {slow}"
"#,
        url = db.url
    )
}

/// Rows whose update has committed.
async fn rows_committed(db: &TestDb, table: &str) -> i64 {
    db.scalar(&format!("SELECT COUNT(*) FROM {table} WHERE hits > 0"))
        .await
}

/// `SELECT {what} FROM godwit_batches WHERE run = '{run}' AND {filter}` as an integer, or 0
/// while the run has not created the state tables yet.
async fn from_batches(db: &TestDb, what: &str, run: &str, filter: &str) -> i64 {
    let mut conn = db.conn().await;
    let exists = conn
        .table_info("godwit_batches")
        .await
        .expect("table info")
        .is_some();
    if !exists {
        return 0;
    }
    db.scalar(&format!(
        "SELECT {what} FROM godwit_batches WHERE run = '{run}' AND {filter}"
    ))
    .await
}

/// Whether some connection holds SQLite's write lock: a batch inside its transaction, or a
/// claim in its short one.
async fn sqlite_write_locked(db: &TestDb) -> bool {
    let mut conn = db.conn().await;
    conn.execute_unprepared("PRAGMA busy_timeout = 0")
        .await
        .expect("busy timeout");
    if conn.execute_unprepared("BEGIN IMMEDIATE").await.is_err() {
        return true;
    }
    conn.execute_unprepared("ROLLBACK").await.expect("rollback");
    false
}

/// Waits until the run is mid-way, the first two batches done and later ones running, and
/// returns the rows committed then: every batch that commits after that was in flight.
async fn wait_mid_way(db: &TestDb, table: &str, plan: &Path) -> i64 {
    let mut before = 0;
    poll_until(
        "the first batches to be done and the next in flight",
        Duration::from_secs(30),
        async || {
            if db.backend != Backend::Sqlite {
                // Later batches were claimed while the first ran and started as they ended.
                let status = status_json(plan);
                before = rows_committed(db, table).await;
                return status["steps"][0]["rows_done"].as_i64().unwrap_or(0)
                    >= CONCURRENCY * BATCH;
            }
            // SQLite commits batch and record together, so the tables tell the exact moment.
            // On SQLite a claim waits for the running batch, so the next batch starts only
            // after a moment: in flight means claimed with the write lock taken since, and no
            // commit between the first count and the last.
            let committed = rows_committed(db, table).await;
            let in_flight = committed >= CONCURRENCY * BATCH
                && from_batches(db, "COUNT(*)", table, "state = 'claimed'").await > 0
                && sqlite_write_locked(db).await;
            before = rows_committed(db, table).await;
            in_flight && before == committed
        },
    )
    .await;
    before
}

/// What a stopped run must leave: no claim held, and progress records that agree with the
/// rows changed.
async fn assert_consistent_after_stop(db: &TestDb, table: &str, plan: &Path) {
    let claimed = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM godwit_batches WHERE run = '{table}' AND state = 'claimed'"
        ))
        .await;
    assert_eq!(claimed, 0, "a stopped run must release its claims");
    let committed = rows_committed(db, table).await;
    let status = status_json(plan);
    assert_eq!(
        status["steps"][0]["rows_done"], committed,
        "progress and data disagree: {status}"
    );
    let twice = db
        .scalar(&format!("SELECT COUNT(*) FROM {table} WHERE hits > 1"))
        .await;
    assert_eq!(twice, 0);
}

/// The re-run finishes, and every row was updated exactly once over both runs.
async fn assert_rerun_completes_exactly_once(db: &TestDb, table: &str, plan: &Path) {
    let out = run_cmd(&["run", path_str(plan), "--quiet"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let summary = db
        .query(&format!(
            "SELECT COUNT(*), MIN(hits), MAX(hits) FROM {table}"
        ))
        .await;
    let (n, min, max) = (
        summary[0][0].as_i64(),
        summary[0][1].as_i64(),
        summary[0][2].as_i64(),
    );
    assert_eq!((n, min, max), (Some(ROWS), Some(1), Some(1)));
    let status = status_json(plan);
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["steps"][0]["rows_done"], ROWS, "{status}");
}

/// SIGTERM: no batch is claimed any more, the batches in flight commit, exit 75; the re-run
/// does the rest.
async fn sigterm_lets_batches_in_flight_commit(backend: Backend) {
    let db = TestDb::new(backend).await;
    let table = db.table("term");
    db.counter_table(&table, 1..=ROWS).await;
    let plan = db.plan("plan.toml", &slow_plan(&db, &table));
    let mut run = spawn_watched(&[
        "run",
        path_str(&plan),
        "--json",
        "--concurrency",
        &CONCURRENCY.to_string(),
    ]);
    let before = wait_mid_way(&db, &table, &plan).await;
    send_signal(run.child.id(), "TERM");
    run.wait_stderr(
        "the stop to be acknowledged",
        Duration::from_secs(10),
        |l| l.starts_with("stopping:"),
    );
    let code = run.finish(Duration::from_secs(30));
    assert_eq!(code, Some(75), "{}", run.stderr_text());
    let after = rows_committed(&db, &table).await;
    // The batches running at the signal committed; nothing was claimed after it.
    assert!(
        after > before && after <= before + CONCURRENCY * BATCH,
        "{before} rows committed at the signal, {after} at the exit"
    );
    assert!(after < ROWS, "the run finished before the signal");
    let events = run.events();
    let last = events.last().expect("JSON events");
    assert_eq!(last["event"], "run_done", "{events:?}");
    assert_eq!(last["state"], "stopped", "{events:?}");
    assert_consistent_after_stop(&db, &table, &plan).await;
    assert_rerun_completes_exactly_once(&db, &table, &plan).await;
}

/// SIGINT twice: the batches in flight are abandoned and roll back, exit 75; the re-run
/// applies them, once.
async fn second_sigint_rolls_back_batches_in_flight(backend: Backend) {
    let db = TestDb::new(backend).await;
    let table = db.table("int");
    db.counter_table(&table, 1..=ROWS).await;
    let plan = db.plan("plan.toml", &slow_plan(&db, &table));
    let mut run = spawn_watched(&[
        "run",
        path_str(&plan),
        "--concurrency",
        &CONCURRENCY.to_string(),
    ]);
    let before = wait_mid_way(&db, &table, &plan).await;
    let pid = run.child.id();
    send_signal(pid, "INT");
    // Two signals that arrive before the first is handled are one signal (Unix does not
    // queue them), so the second follows the first's acknowledgement, at once.
    run.wait_stderr(
        "the first SIGINT to be acknowledged",
        Duration::from_secs(10),
        |l| l.starts_with("stopping:"),
    );
    send_signal(pid, "INT");
    run.wait_stderr(
        "the second SIGINT to be acknowledged",
        Duration::from_secs(10),
        |l| l.starts_with("aborting:"),
    );
    // Counted once the abort is under way, not when the first signal was sent: a batch that
    // ended while the signals were on their way committed rightly. The batches in flight now
    // are in their slow statements, a second and more from their commit.
    let at_abort = rows_committed(&db, &table).await;
    let code = run.finish(Duration::from_secs(30));
    assert_eq!(code, Some(75), "{}", run.stderr_text());
    let after = rows_committed(&db, &table).await;
    assert!(
        at_abort >= before && at_abort < ROWS,
        "{before} before, {at_abort} at the abort"
    );
    assert_eq!(
        after, at_abort,
        "batches in flight at the second signal must roll back, not commit"
    );
    assert_consistent_after_stop(&db, &table, &plan).await;
    assert_rerun_completes_exactly_once(&db, &table, &plan).await;
}

/// `status` is readable while a batch runs: it answers at once, not when the batch commits.
async fn status_answers_while_a_batch_runs(backend: Backend) {
    let db = TestDb::new(backend).await;
    let table = db.table("watched");
    db.counter_table(&table, 1..=10).await;
    // One batch of about 4 s or more.
    let slow = match backend {
        Backend::Postgres => "pg_sleep(0.4) IS NOT NULL",
        Backend::MySql => "SLEEP(0.4) = 0",
        Backend::Sqlite => "(WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 20000000) SELECT COUNT(*) FROM s) > 0",
    };
    let plan = db.step_plan(
        &table,
        "batch_size = 10",
        &format!(
            "name = \"slow\"\ntable = \"{table}\"\nkey = \"id\"\n\
             sql = \"UPDATE {table} SET hits = hits + 1 WHERE id BETWEEN :start AND :end AND {slow}\""
        ),
    );
    let mut run = spawn_watched(&["run", path_str(&plan), "--json"]);
    poll_until(
        "the batch to be claimed",
        Duration::from_secs(30),
        async || from_batches(&db, "COUNT(*)", &table, "state = 'claimed'").await == 1,
    )
    .await;
    // Several looks over the batch's first seconds: each must answer within a second.
    for _ in 0..3 {
        let asked = Instant::now();
        let status = status_json(&plan);
        let took = asked.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "status took {took:?} while a batch ran, and saw {status}"
        );
        assert_eq!(status["steps"][0]["rows_done"], 0, "{status}");
    }
    assert_eq!(
        run.finish(Duration::from_secs(60)),
        Some(0),
        "{}",
        run.stderr_text()
    );
}

per_backend!(
    status_answers_while_a_batch_runs,
    sigterm_lets_batches_in_flight_commit,
    second_sigint_rolls_back_batches_in_flight,
);
