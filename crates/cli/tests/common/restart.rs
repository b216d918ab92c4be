//! The issue 11 restart scenario, shared by `run.rs` (`run --restart` fences the process still
//! running the old plan) and `control.rs` (a worker leaves the restarted run for its new plan):
//! a table that plan A and then plan B mark, a batch at a time, each batch slow enough that B
//! restarts the run while A is at work.

use super::{id_type, insert, plan_url, Backend, TestDb};

/// Creates `table` with 800 rows: `id`, `v` (the letters of the plans that changed the row, in
/// order) and `a_ms` (when plan A changed it, by the database's clock).
pub async fn restart_table(db: &TestDb, table: &str) {
    db.exec(&format!(
        "CREATE TABLE {table} (id {} PRIMARY KEY, v VARCHAR(16) NOT NULL, a_ms BIGINT)",
        id_type(db.backend)
    ))
    .await;
    let rows: Vec<String> = (1..=800).map(|i| format!("({i}, '')")).collect();
    insert(db, table, "id, v", &rows).await;
}

/// The plan of the restart scenario: the same name, batches of 10 that append `letter` to `v`
/// and sleep, and (for plan A) stamp `a_ms` with the database's clock; its progress in `state`
/// when given. The URL is written as [`plan_url`] writes it, so `submit` takes the plan too.
pub fn restart_plan(db: &TestDb, table: &str, state: Option<&str>, letter: &str) -> String {
    let (append, now, slow) = match db.backend {
        Backend::Postgres => (
            format!("v || '{letter}'"),
            "(extract(epoch from clock_timestamp()) * 1000)::bigint",
            "pg_sleep(0.05) IS NOT NULL",
        ),
        Backend::MySql => (
            format!("CONCAT(v, '{letter}')"),
            "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)",
            "SLEEP(0.05) = 0",
        ),
        Backend::Sqlite => (
            format!("v || '{letter}'"),
            "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
            "(WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 300000) SELECT COUNT(*) FROM s) > 0",
        ),
    };
    let stamp = if letter == "A" {
        format!(", a_ms = {now}")
    } else {
        String::new()
    };
    let state = state
        .map(|url| format!("[state]\ndatabase = \"{url}\"\n\n"))
        .unwrap_or_default();
    format!(
        "name = \"{table}\"\ndatabase = \"{url}\"\n\n{state}[defaults]\nbatch_size = 10\nadaptive = false\n\n\
         [[steps]]\nname = \"mark\"\ntable = \"{table}\"\nkey = \"id\"\n\
         sql = \"UPDATE {table} SET v = {append}{stamp} WHERE id BETWEEN :start AND :end AND {slow}\"\n",
        url = plan_url(&db.url)
    )
}

/// Every row got plan B's change exactly once, and plan A's, if at all, before B's.
pub async fn assert_rows_as_plan_b_leaves_them(db: &TestDb, table: &str) {
    let wrong = db
        .query(&format!(
            "SELECT id, v FROM {table} WHERE v NOT IN ('B', 'AB') ORDER BY id"
        ))
        .await;
    assert!(
        wrong.is_empty(),
        "rows not as plan B alone leaves them: {wrong:?}"
    );
}
