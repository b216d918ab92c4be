//! Transient errors are retried and permanent ones are not, provoked for real: a row lock held
//! by another transaction (PostgreSQL, MariaDB), SQLite's write lock, a statement past its
//! time limit, CHECK and NOT NULL violations.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{path_str, run_cmd, spawn_watched, status_json, text, Backend, TestDb, Watched};
use godwit_driver::{TxOptions, Value};
use serde_json::Value as Json;

const ROWS: i64 = 30;
/// The row another transaction locks; with batches of 10 it falls in the second batch (1).
const LOCKED_ID: i64 = 15;
const LOCKED_KEYS: &str = "keys 11..=20";
const LOCKED_BATCH: i64 = 1;

/// The codes a batch that waits on a row lock past `batch_timeout` may fail with: PostgreSQL's
/// statement_timeout (57014), MariaDB's max_statement_time (1969) or lock wait timeout (1205),
/// and SQLite's interrupt (9) from its time-limit handler.
fn timeout_codes(backend: Backend) -> &'static [&'static str] {
    match backend {
        Backend::Postgres => &["[57014]"],
        Backend::MySql => &["[1969]", "[1205]"],
        Backend::Sqlite => &["[9]"],
    }
}

/// The codes of a statement that gave up waiting for a row lock.
fn lock_codes(backend: Backend) -> &'static [&'static str] {
    match backend {
        Backend::Postgres => &["[55P03]"],
        Backend::MySql => &["[1205]"],
        Backend::Sqlite => &[],
    }
}

fn count_plan(db: &TestDb, table: &str, defaults: &str, sql: &str) -> std::path::PathBuf {
    db.step_plan(
        table,
        &format!("batch_size = 10\n{defaults}"),
        &format!("name = \"count\"\ntable = \"{table}\"\nkey = \"id\"\nsql = \"{sql}\""),
    )
}

fn counting_sql(table: &str) -> String {
    format!("UPDATE {table} SET hits = hits + 1 WHERE id BETWEEN :start AND :end")
}

/// Fails unless every row of `table` was updated exactly once.
async fn assert_each_row_once(db: &TestDb, table: &str, rows: i64) {
    let summary = db
        .query(&format!(
            "SELECT COUNT(*), MIN(hits), MAX(hits) FROM {table}"
        ))
        .await;
    assert_eq!(
        (
            summary[0][0].as_i64(),
            summary[0][1].as_i64(),
            summary[0][2].as_i64()
        ),
        (Some(rows), Some(1), Some(1)),
        "rows, least and most updates of {table}"
    );
}

fn events_named<'e>(events: &'e [Json], name: &str) -> Vec<&'e Json> {
    events.iter().filter(|e| e["event"] == name).collect()
}

/// `(batch, state, attempts, error_code)` of every batch of the run, in order.
async fn batches(db: &TestDb, run: &str) -> Vec<(i64, String, i64, Option<String>)> {
    db.query(&format!(
        "SELECT batch, state, attempts, error_code FROM godwit_batches WHERE run = '{run}' ORDER BY batch"
    ))
    .await
    .into_iter()
    .map(|r| {
        (
            r[0].as_i64().unwrap_or(-1),
            value_text(&r[1]).unwrap_or_default(),
            r[2].as_i64().unwrap_or(-1),
            value_text(&r[3]),
        )
    })
    .collect()
}

/// Text of a column that MariaDB may hand over as bytes (binary collations).
fn value_text(value: &Value) -> Option<String> {
    match value {
        Value::Text(s) => Some(s.clone()),
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

fn finish(run: &mut Watched) -> Option<i32> {
    run.finish(Duration::from_secs(60))
}

/// A row locked by another transaction makes the batch around it yield (a short lock
/// timeout) and try again later, without counting an attempt (a `batch_retry` event naming
/// step, key range and the database's lock code); once the lock goes the run ends 0 with every
/// row updated once. On SQLite, a second connection holding the write lock for a moment only
/// makes the run wait.
async fn held_lock_is_waited_out_or_retried(backend: Backend) {
    if backend == Backend::Sqlite {
        sqlite_write_lock_is_waited_out().await;
        return;
    }
    let db = TestDb::new(backend).await;
    let table = db.table("locked");
    db.counter_table(&table, 1..=ROWS).await;
    let plan = count_plan(
        &db,
        &table,
        // Longer than the lock waits (MySQL's is one second), so the batch yields first.
        "batch_timeout = \"5s\"\nmax_attempts = 10",
        &counting_sql(&table),
    );
    let mut holder = db.conn().await;
    holder.begin(TxOptions::default()).await.expect("begin");
    holder
        .query(
            &format!("SELECT id FROM {table} WHERE id = {LOCKED_ID} FOR UPDATE"),
            &[],
        )
        .await
        .expect("lock a row");
    let mut run = spawn_watched(&["run", path_str(&plan), "--json"]);
    let first = run.wait_stdout("a batch_retry event", Duration::from_secs(30), |line| {
        serde_json::from_str::<Json>(line).is_ok_and(|e| e["event"] == "batch_retry")
    });
    holder.rollback().await.expect("release the lock");
    let code = finish(&mut run);
    assert_eq!(code, Some(0), "{}", run.stderr_text());
    assert_each_row_once(&db, &table, ROWS).await;

    let first: Json = serde_json::from_str(&first).expect("JSON");
    assert_eq!(first["step"], "count", "{first}");
    assert_eq!(first["batch"], LOCKED_BATCH, "{first}");
    assert_eq!(first["attempt"], 1, "{first}");
    assert!(
        first["delay_seconds"].as_f64().unwrap_or(0.0) > 0.0,
        "{first}"
    );
    let error = first["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("step \"count\"") && error.contains(LOCKED_KEYS),
        "the retry must name step and key range: {error}"
    );
    assert!(
        lock_codes(backend).iter().any(|c| error.contains(c)) && error.contains("yielded"),
        "the retry must say it yielded, with the database's code: {error}"
    );

    // Only the locked batch was retried, and it ended done; yielding counted no attempt.
    let events = run.events();
    let retries = events_named(&events, "batch_retry");
    assert!(
        retries.iter().all(|e| e["batch"] == LOCKED_BATCH),
        "{retries:?}"
    );
    let stored = batches(&db, &table).await;
    for (batch, state, attempts, _) in &stored {
        assert_eq!(state, "done", "{stored:?}");
        assert_eq!(*attempts, 0, "failed attempts of batch {batch}");
    }
    let last = events.last().expect("events");
    assert_eq!(
        (&last["event"], &last["state"]),
        (&Json::from("run_done"), &Json::from("done"))
    );
    let status = status_json(&plan);
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["steps"][0]["batches_done"], 3, "{status}");
    assert_eq!(status["steps"][0]["batches_failed"], 0, "{status}");
}

/// SQLite: another connection takes the write lock (`BEGIN IMMEDIATE`) mid-run and keeps it a
/// moment; godwit waits on its busy timeout instead of failing or retrying.
async fn sqlite_write_lock_is_waited_out() {
    let db = TestDb::new(Backend::Sqlite).await;
    let table = db.table("busy");
    let rows = 500;
    db.counter_table(&table, 1..=rows).await;
    // About 0.05 s per batch, 50 batches: the run is still going when the lock is taken.
    let sql = format!(
        "{} AND (WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 150000) SELECT COUNT(*) FROM s) > 0",
        counting_sql(&table)
    );
    let plan = count_plan(&db, &table, "", &sql);
    let mut run = spawn_watched(&["run", path_str(&plan), "--json"]);
    run.wait_stdout("the first batch", Duration::from_secs(30), |line| {
        line.contains("\"batch_done\"")
    });
    let mut holder = db.conn().await;
    // The driver's `begin` is `BEGIN IMMEDIATE` on SQLite: the write lock, held until rollback.
    holder
        .begin(TxOptions::default())
        .await
        .expect("BEGIN IMMEDIATE");
    let held_at = db
        .scalar(&format!("SELECT COUNT(*) FROM {table} WHERE hits > 0"))
        .await;
    // The stimulus is a lock held for a fixed moment, not a wait for a state.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let held_until = db
        .scalar(&format!("SELECT COUNT(*) FROM {table} WHERE hits > 0"))
        .await;
    assert_eq!(held_at, held_until, "a batch committed past the write lock");
    assert!(
        held_until < rows,
        "the run finished before the lock was taken"
    );
    assert!(
        run.child.try_wait().expect("try_wait").is_none(),
        "godwit gave up while the lock was held: {}",
        run.stderr_text()
    );
    holder.rollback().await.expect("release the write lock");
    let code = finish(&mut run);
    assert_eq!(code, Some(0), "{}", run.stderr_text());
    assert_each_row_once(&db, &table, rows).await;
    let events = run.events();
    assert!(
        events_named(&events, "batch_retry").is_empty()
            && events_named(&events, "error").is_empty(),
        "busy waiting is not a failed attempt: {events:?}"
    );
}

/// A batch that keeps timing out fails the run after `max_attempts` with exit 1, naming step,
/// key range, attempt and the database's code; a re-run once the cause is gone finishes it.
/// On the servers the cause is a row lock never released; on SQLite, a statement that runs
/// past `batch_timeout` while a control row says so.
async fn retries_exhausted_fail_with_context(backend: Backend) {
    let db = TestDb::new(backend).await;
    let table = db.table("stuck");
    db.counter_table(&table, 1..=ROWS).await;
    // The batch of LOCKED_ID runs past its time limit while the control table says so: a
    // statement that outlasts `batch_timeout` (a row lock would make the batch yield instead,
    // which never fails it).
    let control = db.table("control");
    db.exec(&format!("CREATE TABLE {control} (stuck INT NOT NULL)"))
        .await;
    db.exec(&format!("INSERT INTO {control} VALUES (1)")).await;
    let slow = match backend {
        Backend::Sqlite => "(WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 1000000000) SELECT COUNT(*) FROM s) > 0",
        Backend::Postgres => "pg_sleep(5) IS NOT NULL",
        Backend::MySql => "SLEEP(5) = 0",
    };
    let sql = format!(
        "{} AND CASE WHEN id = {LOCKED_ID} AND (SELECT stuck FROM {control}) = 1 THEN {slow} ELSE 1 = 1 END",
        counting_sql(&table)
    );
    let plan = count_plan(
        &db,
        &table,
        "batch_timeout = \"1s\"\nmax_attempts = 2",
        &sql,
    );
    // One batch at a time, as the stuck batch's neighbours would otherwise run beside it.
    let out = run_cmd(&["run", path_str(&plan), "--json", "--concurrency", "1"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let codes = timeout_codes(backend);
    let has_code = |s: &str| codes.iter().any(|c| s.contains(c));
    assert!(
        err.contains("step \"count\"")
            && err.contains(LOCKED_KEYS)
            && err.contains("attempt 2/2")
            && has_code(&err),
        "stderr must name step, key range, attempt and code: {err}"
    );
    let events: Vec<Json> = text(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let retries = events_named(&events, "batch_retry");
    assert_eq!(
        retries.len(),
        1,
        "one retry before the last attempt: {events:?}"
    );
    assert_eq!(retries[0]["attempt"], 1);
    let last = events.last().expect("events");
    assert_eq!(last["event"], "run_done", "{events:?}");
    assert_eq!(last["state"], "failed", "{events:?}");

    let status = status_json(&plan);
    assert_eq!(status["state"], "failed", "{status}");
    assert_eq!(status["steps"][0]["batches_failed"], 1, "{status}");
    let step_error = status["steps"][0]["error"].as_str().unwrap_or_default();
    assert!(
        step_error.contains(LOCKED_KEYS) && has_code(step_error),
        "{status}"
    );
    let failed: Vec<_> = batches(&db, &table)
        .await
        .into_iter()
        .filter(|b| b.1 == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!((failed[0].0, failed[0].2), (LOCKED_BATCH, 2), "{failed:?}");
    let untouched = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM {table} WHERE id BETWEEN 11 AND 20 AND hits = 0"
        ))
        .await;
    assert_eq!(untouched, 10, "the failed batch must have rolled back");
    let twice = db
        .scalar(&format!("SELECT COUNT(*) FROM {table} WHERE hits > 1"))
        .await;
    assert_eq!(twice, 0);

    // The cause goes away; running the plan again re-queues the failed batch and finishes.
    db.exec(&format!("UPDATE {control} SET stuck = 0")).await;
    let out = run_cmd(&["run", path_str(&plan), "--quiet"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_each_row_once(&db, &table, ROWS).await;
    assert_eq!(status_json(&plan)["state"], "done");
}

/// A constraint violation is permanent: one failed attempt, no `batch_retry`, exit 1 naming
/// step, key range and the database's code; the batch's rows are left as they were.
async fn permanent_errors_are_not_retried(backend: Backend) {
    let db = TestDb::new(backend).await;
    let id_type = match backend {
        Backend::Sqlite => "INTEGER",
        _ => "BIGINT",
    };
    let cases = [
        (
            "check",
            "hits = hits + CASE WHEN id = 17 THEN 100 ELSE 1 END",
            match backend {
                Backend::Postgres => "[23514]",
                Backend::MySql => "[4025]",
                Backend::Sqlite => "[275]",
            },
        ),
        (
            "notnull",
            "hits = CASE WHEN id = 17 THEN NULL ELSE hits + 1 END",
            match backend {
                Backend::Postgres => "[23502]",
                Backend::MySql => "[1048]",
                Backend::Sqlite => "[1299]",
            },
        ),
    ];
    for (tag, set, code) in cases {
        let table = db.table(tag);
        db.exec(&format!(
            "CREATE TABLE {table} (id {id_type} PRIMARY KEY, hits INT NOT NULL DEFAULT 0 CHECK (hits < 100), grp INT NOT NULL DEFAULT 0)"
        ))
        .await;
        let values: Vec<String> = (1..=ROWS).map(|i| format!("({i})")).collect();
        db.exec(&format!(
            "INSERT INTO {table} (id) VALUES {}",
            values.join(", ")
        ))
        .await;
        let plan = count_plan(
            &db,
            &table,
            "max_attempts = 5",
            &format!("UPDATE {table} SET {set} WHERE id BETWEEN :start AND :end"),
        );
        let out = run_cmd(&["run", path_str(&plan), "--json"]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{tag}: {err}");
        assert!(
            err.contains("step \"count\"")
                && err.contains("keys 11..=20")
                && err.contains("attempt 1/5")
                && err.contains(code),
            "{tag}: stderr must name step, key range, attempt and {code}: {err}"
        );
        let stdout = text(&out.stdout);
        assert!(
            !stdout.contains("batch_retry"),
            "{tag}: a permanent error was retried: {stdout}"
        );
        assert_failed_once(&db, &table, &plan, code).await;
    }
}

/// The run failed on batch 1 after exactly one attempt, and its rows were not changed.
async fn assert_failed_once(db: &TestDb, table: &str, plan: &Path, code: &str) {
    let status = status_json(plan);
    assert_eq!(status["state"], "failed", "{status}");
    assert_eq!(status["steps"][0]["batches_failed"], 1, "{status}");
    let failed: Vec<_> = batches(db, table)
        .await
        .into_iter()
        .filter(|b| b.1 == "failed")
        .collect();
    let bare_code = code.trim_matches(|c| c == '[' || c == ']').to_string();
    assert_eq!(
        failed,
        [(1, "failed".to_string(), 1, Some(bare_code))],
        "{table}: one failed attempt of batch 1"
    );
    let untouched = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM {table} WHERE id BETWEEN 11 AND 20 AND hits = 0"
        ))
        .await;
    assert_eq!(
        untouched, 10,
        "{table}: the failed batch must have rolled back"
    );
    let claimed = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM godwit_batches WHERE run = '{table}' AND state = 'claimed'"
        ))
        .await;
    assert_eq!(
        claimed, 0,
        "{table}: a failed run must leave no claim behind"
    );
}

per_backend!(
    held_lock_is_waited_out_or_retried,
    retries_exhausted_fail_with_context,
    permanent_errors_are_not_retried,
);

/// MariaDB: a batch that meets a row lock gives way at once rather than waiting. If it waited,
/// an application that then asked for a row the batch holds would close a lock cycle, and
/// InnoDB rolls back the side that changed fewer rows: the application. Here the application
/// holds row 15 of batch 11..=20; whenever a batch of the run waits on a lock, or once that
/// batch has yielded three times, it asks for row 12 in the same transaction. It must get it:
/// no deadlock, no lock wait timeout; and the run then finishes with every row updated once.
#[tokio::test]
async fn the_application_is_never_a_deadlock_victim_on_mariadb() {
    let db = TestDb::new(Backend::MySql).await;
    let table = db.table("victim");
    db.counter_table(&table, 1..=ROWS).await;
    let plan = count_plan(
        &db,
        &table,
        "batch_timeout = \"5s\"\nmax_attempts = 10\nadaptive = false",
        &counting_sql(&table),
    );
    let mut app = db.conn().await;
    app.execute("SET SESSION innodb_lock_wait_timeout = 5", &[])
        .await
        .expect("the application's own lock wait");
    app.begin(TxOptions::default()).await.expect("begin");
    app.query(
        &format!("SELECT id FROM {table} WHERE id = {LOCKED_ID} FOR UPDATE"),
        &[],
    )
    .await
    .expect("lock a row");
    let mut run = spawn_watched(&["run", path_str(&plan), "--json"]);
    // A batch statement on ten rows that has run for 50 ms is waiting on the lock (the
    // process list shows it; InnoDB's own transaction list does not on MariaDB 10.11).
    let waiting = format!(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
         WHERE COMMAND <> 'Sleep' AND INFO LIKE 'UPDATE {table} %' AND TIME_MS > 50"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut godwit_waited = false;
    loop {
        if db.query(&waiting).await[0][0].as_i64() != Some(0) {
            godwit_waited = true;
            break;
        }
        run.output_so_far();
        let yielded = run
            .stdout_lines
            .iter()
            .filter(|l| l.contains("\"batch_retry\""))
            .count();
        if yielded >= 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline && run.alive(),
            "the locked batch did not yield three times: {}",
            run.output_so_far()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let asked = app
        .query(
            &format!("SELECT id FROM {table} WHERE id = 12 FOR UPDATE"),
            &[],
        )
        .await;
    assert!(
        asked.is_ok(),
        "the application lost its transaction (a batch waited on its lock: {godwit_waited}): {asked:?}"
    );
    assert!(!godwit_waited, "a batch waited on the application's lock");
    app.rollback().await.expect("release the locks");
    let code = finish(&mut run);
    assert_eq!(code, Some(0), "{}", run.stderr_text());
    assert_each_row_once(&db, &table, ROWS).await;
}
