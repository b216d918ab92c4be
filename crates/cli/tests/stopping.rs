//! Signals and transient errors, provoked for real: the run stops cleanly and resumes, or
//! retries and finishes, and every row is still updated exactly once.

mod common;

use std::time::{Duration, Instant};

use common::{path_str, run_cmd, spawn, text, Backend, TestDb};
use godwit_driver::{TxOptions, Value};

/// A plan over `table` whose batches are slow enough to interrupt.
fn slow_plan(db: &TestDb, table: &str, extra: &str) -> String {
    let slow = match db.backend {
        Backend::Postgres => "pg_sleep(0.03) IS NOT NULL",
        Backend::MySql => "SLEEP(0.03) = 0",
        Backend::Sqlite => "(WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 100000) SELECT COUNT(*) FROM s) > 0",
    };
    format!(
        r#"name = "{table}"
database = "{url}"

[defaults]
batch_size = 5
{extra}

[[steps]]
name = "slow"
table = "{table}"
key = "id"
sql = "UPDATE {table} SET hits = hits + 1 WHERE id BETWEEN :start AND :end AND {slow}"
"#,
        url = db.url
    )
}

/// Waits until `condition` holds, polling; fails after `limit`.
async fn wait_for(what: &str, limit: Duration, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition().await {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn rows_done(db: &TestDb, table: &str) -> i64 {
    db.scalar(&format!("SELECT COUNT(*) FROM {table} WHERE hits > 0"))
        .await
}

/// Batches of the run still claimed: a stopped process must leave none, so that the next run
/// takes them at once instead of waiting for their leases.
async fn claimed_left(db: &TestDb, run: &str) -> i64 {
    db.scalar(&format!(
        "SELECT COUNT(*) FROM godwit_batches WHERE run = '{run}' AND state = 'claimed'"
    ))
    .await
}

fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// SIGTERM: batches in flight commit, the process exits 75, a re-run finishes the rest.
async fn sigterm_drains_and_resumes(backend: Backend) {
    let db = TestDb::new(backend).await;
    let table = db.table("term");
    db.counter_table(&table, 1..=400).await;
    let plan = db.plan("plan.toml", &slow_plan(&db, &table, ""));
    let child = spawn(&["run", path_str(&plan), "--quiet"]);
    wait_for("the first batches", Duration::from_secs(30), async || {
        rows_done(&db, &table).await > 0
    })
    .await;
    signal(child.id(), "TERM");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(75), "{}", text(&out.stderr));
    let done = rows_done(&db, &table).await;
    assert!(done < 400, "the run finished before the signal: {done}");
    assert_eq!(
        claimed_left(&db, &table).await,
        0,
        "a stopped run must release its claims"
    );
    let out = run_cmd(&["run", path_str(&plan), "--quiet"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let bad = db
        .scalar(&format!("SELECT COUNT(*) FROM {table} WHERE hits <> 1"))
        .await;
    assert_eq!(bad, 0);
}

/// SIGINT twice: the batches in flight are abandoned and roll back; a re-run applies them once.
async fn second_sigint_aborts_and_resumes(backend: Backend) {
    let db = TestDb::new(backend).await;
    let table = db.table("abort");
    db.counter_table(&table, 1..=400).await;
    let plan = db.plan("plan.toml", &slow_plan(&db, &table, ""));
    let child = spawn(&["run", path_str(&plan), "--quiet", "--concurrency", "4"]);
    wait_for("the first batches", Duration::from_secs(30), async || {
        rows_done(&db, &table).await > 0
    })
    .await;
    signal(child.id(), "INT");
    signal(child.id(), "INT");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(75), "{}", text(&out.stderr));
    assert_eq!(
        claimed_left(&db, &table).await,
        0,
        "an aborted run must release its claims"
    );
    let out = run_cmd(&["run", path_str(&plan), "--quiet"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let bad = db
        .scalar(&format!("SELECT COUNT(*) FROM {table} WHERE hits <> 1"))
        .await;
    assert_eq!(bad, 0);
}

/// A row locked by another transaction makes a batch yield (a real lock wait, cut short); the
/// batch is tried again, without counting an attempt, until the lock goes, and the run finishes
/// with every row updated once.
async fn lock_wait_is_retried(backend: Backend) {
    let db = TestDb::new(backend).await;
    let table = db.table("locked");
    db.counter_table(&table, 1..=30).await;
    let plan = db.step_plan(
        &table,
        "batch_size = 10\nbatch_timeout = \"5s\"\nmax_attempts = 10",
        &format!(
            "name = \"count\"\ntable = \"{table}\"\nkey = \"id\"\n\
             sql = \"UPDATE {table} SET hits = hits + 1 WHERE id BETWEEN :start AND :end\""
        ),
    );
    let mut holder = db.conn().await;
    holder.begin(TxOptions::default()).await.expect("begin");
    let lock = match backend {
        // SQLite locks the whole database for writing.
        Backend::Sqlite => format!("UPDATE {table} SET grp = grp WHERE id = 15"),
        _ => format!("SELECT id FROM {table} WHERE id = 15 FOR UPDATE"),
    };
    holder.query(&lock, &[]).await.expect("lock a row");
    let child = spawn(&["run", path_str(&plan), "--quiet"]);
    if backend == Backend::Sqlite {
        // SQLite has no row locks: the held write lock blocks godwit entirely, and godwit
        // waits on its busy timeout instead of failing. Hold it while godwit starts; what
        // is checked is that the run still ends 0 with every row updated once.
        tokio::time::sleep(Duration::from_millis(500)).await;
    } else {
        let run = Value::Text(table.clone());
        wait_for(
            "the locked batch to yield",
            Duration::from_secs(30),
            async || {
                let mut conn = db.conn().await;
                let q = match backend {
                    Backend::Postgres => {
                        "SELECT COUNT(*) FROM godwit_batches WHERE run = $1 AND error_code IS NOT NULL"
                    }
                    _ => "SELECT COUNT(*) FROM godwit_batches WHERE run = ? AND error_code IS NOT NULL",
                };
                match conn.query(q, std::slice::from_ref(&run)).await {
                    Ok(rows) => rows[0].get(0).as_i64().unwrap_or(0) > 0,
                    Err(_) => false,
                }
            },
        )
        .await;
    }
    holder.rollback().await.expect("release the lock");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let bad = db
        .scalar(&format!("SELECT COUNT(*) FROM {table} WHERE hits <> 1"))
        .await;
    assert_eq!(bad, 0);
    if backend != Backend::Sqlite {
        // The batch holding row 15 yielded and was tried again until it was done, with no
        // attempt counted against it.
        let locked = db
            .query(&format!(
                "SELECT COUNT(*) FROM godwit_batches WHERE run = '{table}' AND start_key = '11' \
                 AND attempts = 0 AND state = 'done'"
            ))
            .await;
        assert_eq!(
            locked[0][0].as_i64(),
            Some(1),
            "the locked batch was done, yielding counted no attempt"
        );
        let open = db
            .scalar(&format!(
                "SELECT COUNT(*) FROM godwit_batches WHERE run = '{table}' AND state <> 'done'"
            ))
            .await;
        assert_eq!(open, 0, "every batch is done");
    }
}

per_backend!(
    sigterm_drains_and_resumes,
    second_sigint_aborts_and_resumes,
    lock_wait_is_retried
);
