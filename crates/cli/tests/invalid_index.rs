//! Issue 15: a one-off `CREATE INDEX CONCURRENTLY` that was interrupted leaves an INVALID index,
//! which `IF NOT EXISTS` would then skip, recording the step done with an index no query uses.
//! Run again, godwit drops that index and builds it again; an index another session still
//! builds is waited for, not dropped. PostgreSQL only: the other databases build an index in one
//! piece or not at all.

mod common;

use std::time::Duration;

use common::{path_str, poll_until, run_cmd, spawn, text, Backend, TestDb};

/// The plan of one one-off step, `sql`, with a lease short enough for a resumed run to take
/// over the step of a killed process at once.
fn index_plan(db: &TestDb, sql: &str) -> std::path::PathBuf {
    db.step_plan(
        &db.table("plan"),
        "lease = \"2s\"",
        &format!("name = \"index\"\nsql = \"{sql}\""),
    )
}

/// `(oid, indisvalid)` of the index named `name`, if it exists.
async fn index_state(db: &TestDb, name: &str) -> Option<(i64, bool)> {
    let rows = db
        .query(&format!(
            "SELECT i.indexrelid::bigint, i.indisvalid FROM pg_index i \
             JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = '{name}'"
        ))
        .await;
    let row = rows.first()?;
    let valid = matches!(row[1], godwit_driver::Value::Bool(true));
    Some((row[0].as_i64().expect("an oid"), valid))
}

/// A unique build that met a duplicate fails and leaves an invalid index; once the duplicate is
/// gone, running the plan again builds a valid one. Without dropping the invalid index first,
/// the second run would succeed through `IF NOT EXISTS` and leave it invalid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r15_unique_build_that_met_a_duplicate_is_built_again_once_fixed() {
    unique_build_is_built_again("IF NOT EXISTS").await;
}

/// The same without `IF NOT EXISTS`, where the second run would fail on the index's name: the
/// invalid index holds nothing a query uses, so dropping it is as safe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r15_build_without_if_not_exists_is_built_again_once_fixed() {
    unique_build_is_built_again("").await;
}

async fn unique_build_is_built_again(if_not_exists: &str) {
    let db = TestDb::new(Backend::Postgres).await;
    let table = db.table("refs");
    let index = db.table("refs_ref");
    db.exec(&format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, ref TEXT NOT NULL); \
         INSERT INTO {table} SELECT g, 'r' || g FROM generate_series(1, 2000) g; \
         UPDATE {table} SET ref = 'r1' WHERE id = 1500"
    ))
    .await;
    let plan = index_plan(
        &db,
        &format!("CREATE UNIQUE INDEX CONCURRENTLY {if_not_exists} {index} ON {table} (ref)"),
    );

    let out = run_cmd(&["run", path_str(&plan)]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("23505") && stderr.contains("\"index\""),
        "the failure names the step and the database's code: {stderr}"
    );
    let (_, valid) = index_state(&db, &index)
        .await
        .expect("the failed build left its index");
    assert!(!valid, "the failed build's index is invalid");

    db.exec(&format!("UPDATE {table} SET ref = 'r1500' WHERE id = 1500"))
        .await;
    let out = run_cmd(&["run", path_str(&plan)]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let (_, valid) = index_state(&db, &index).await.expect("the index");
    assert!(valid, "the index was built again and is valid: {stderr}");
    assert!(
        stderr.contains("left this index invalid") && stderr.contains(&index),
        "the run says what it dropped: {stderr}"
    );
}

/// A table whose index on `{tag}_slow(id)` takes a few seconds to build whatever the machine:
/// the function sleeps 2 ms per row.
async fn slow_index_table(db: &TestDb) -> (String, String) {
    let table = db.table("slow");
    let slow = db.table("slow_fn");
    db.exec(&format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY); \
         INSERT INTO {table} SELECT g FROM generate_series(1, 4000) g; \
         CREATE FUNCTION {slow}(x BIGINT) RETURNS BIGINT LANGUAGE plpgsql IMMUTABLE \
         AS $$ BEGIN PERFORM pg_sleep(0.002); RETURN x; END $$"
    ))
    .await;
    let sql = format!(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {table} ({slow}(id))",
        db.table("slow_idx")
    );
    (table, sql)
}

/// The server session building an index on `table`, once one is.
async fn builder(db: &TestDb, table: &str) -> i64 {
    let mut pid = None;
    poll_until(
        "the index build to start",
        Duration::from_secs(30),
        async || {
            let rows = db
                .query(&format!(
                    "SELECT pid::bigint FROM pg_stat_progress_create_index \
                 WHERE relid = '{table}'::regclass AND index_relid <> 0"
                ))
                .await;
            pid = rows.first().and_then(|r| r[0].as_i64());
            pid.is_some()
        },
    )
    .await;
    pid.expect("a builder")
}

/// Runs the plan of a slow concurrent build and kills godwit with SIGKILL once the build is
/// under way; returns the index's name, the plan, and the server session that builds it.
async fn kill_during_build(db: &TestDb) -> (String, std::path::PathBuf, i64) {
    let (table, sql) = slow_index_table(db).await;
    let plan = index_plan(db, &sql);
    let mut run = spawn(&["run", path_str(&plan)]);
    let session = builder(db, &table).await;
    run.kill().expect("kill -9");
    let _ = run.wait();
    (db.table("slow_idx"), plan, session)
}

/// kill -9 while the index builds, and the server session ended too (a server restart, an
/// administrator): the index is left invalid, and the resumed run builds it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r15_build_killed_with_its_session_is_built_again_on_resume() {
    let db = TestDb::new(Backend::Postgres).await;
    let (index, plan, session) = kill_during_build(&db).await;
    // A killed client does not stop its server session's build: end it as a crash would.
    db.exec(&format!("SELECT pg_terminate_backend({session})"))
        .await;
    poll_until("the session to end", Duration::from_secs(30), async || {
        db.query(&format!(
            "SELECT 1 FROM pg_stat_activity WHERE pid = {session}"
        ))
        .await
        .is_empty()
    })
    .await;
    let (_, valid) = index_state(&db, &index)
        .await
        .expect("the interrupted build left its index");
    assert!(!valid, "the interrupted build's index is invalid");

    let out = run_cmd(&["run", path_str(&plan)]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let (_, valid) = index_state(&db, &index).await.expect("the index");
    assert!(valid, "the resumed run built a valid index: {stderr}");
}

/// kill -9 while the index builds, its server session still building: the resumed run waits
/// for that build, which makes the index valid, rather than dropping it under the builder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r15_build_still_running_after_a_kill_is_waited_for() {
    let db = TestDb::new(Backend::Postgres).await;
    let (index, plan, session) = kill_during_build(&db).await;
    let (oid, valid) = index_state(&db, &index)
        .await
        .expect("the build in progress has its index");
    assert!(
        !valid,
        "an index being built is invalid until its build ends"
    );

    let out = run_cmd(&["run", path_str(&plan)]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let (oid_after, valid) = index_state(&db, &index).await.expect("the index");
    assert!(valid, "the build the killed run started finished: {stderr}");
    assert_eq!(
        oid_after, oid,
        "the index being built was left to its builder, not dropped and built again: {stderr}"
    );
    assert!(
        stderr.contains("waiting for that build to end") && stderr.contains(&session.to_string()),
        "the run says it waits for the other session: {stderr}"
    );
}
