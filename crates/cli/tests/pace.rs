//! How fast a run goes, through the real binary against real servers: batches sized by time
//! on rows that get slower halfway, `max_rows_per_second` held over a run, `throttle_query`
//! pausing claims while it says so (or fails), and `godwit set` changing a running run.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{
    assert_finishes_each_row_once, path_str, poll_until, run_cmd, spawn_watched, status_json, text,
    Backend, KillOnDrop, TestDb,
};
use serde_json::Value as Json;

/// `(n_rows, start_ms, duration_ms)` of every committed batch of `run`, in the order they
/// started (a batch's start is its end less its duration).
async fn batches(db: &TestDb, run: &str) -> Vec<(i64, i64, i64)> {
    let rows = db
        .query(&format!(
            "SELECT n_rows, finished_ms - duration_ms, duration_ms FROM godwit_batches \
             WHERE run = '{run}' AND state = 'done' ORDER BY finished_ms - duration_ms, batch"
        ))
        .await;
    rows.iter()
        .map(|r| {
            let int = |i: usize| r[i].as_i64().expect("an integer");
            (int(0), int(1), int(2))
        })
        .collect()
}

/// The first step's entry in `status --json`.
fn step_status(plan: &Path) -> Json {
    status_json(plan)["steps"][0].clone()
}

/// Runs `godwit run PLAN` plus `args` to its end and asserts that it exits 0.
fn run_to_end(plan: &Path, args: &[&str]) {
    let mut all = vec!["run", path_str(plan), "--quiet"];
    all.extend_from_slice(args);
    let out = run_cmd(&all);
    assert_eq!(
        out.status.code(),
        Some(0),
        "run failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Adaptive sizing on rows that get twenty times slower halfway (a sleep per row in the second
/// half only): the batches grow over the fast half and, once the rows get slow, shrink so that
/// each lasts about the target again. What a user checks: no batch of the slow half, after
/// the first three that met it, lasts more than twice the target; and the last batches last
/// about the target, neither far shorter (claims and commits would dominate) nor longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_sizes_follow_rows_that_get_slower_halfway() {
    let db = TestDb::new(Backend::Postgres).await;
    let t = db.table("skew");
    db.counter_table(&t, 1..=8000).await;
    let slow = "CASE WHEN id <= 3000 THEN 0 WHEN pg_sleep(0.0005) IS NULL THEN 1 ELSE 0 END";
    // At most 1,000 keys a batch: the batches that meet the slow rows first were sized for
    // fast ones, and must leave slow rows for the sizing to show on.
    let plan = db.step_plan(
        &t,
        "batch_size = 50\ntarget_batch_time = \"200ms\"\nmax_batch_size = 1000",
        &format!(
            "name = \"s\"\ntable = \"{t}\"\nkey = \"id\"\n\
             sql = \"UPDATE {t} SET hits = hits + 1 + {slow} WHERE id BETWEEN :start AND :end\""
        ),
    );
    run_to_end(&plan, &["--concurrency", "1"]);
    assert_eq!(
        db.scalar(&format!("SELECT count(*) FROM {t} WHERE hits <> 1"))
            .await,
        0
    );
    let done = batches(&db, &t).await;
    let sizes: Vec<i64> = done.iter().map(|b| b.0).collect();
    let durations: Vec<i64> = done.iter().map(|b| b.2).collect();
    let seen = format!("sizes {sizes:?}, durations (ms) {durations:?}");
    assert!(
        sizes.iter().max() == Some(&1000),
        "the fast half grew the batches to the largest: {seen}"
    );
    // The batches that met the slow rows first: the first may last long (it was sized for
    // fast rows), and so may the next, claimed while it ran, and the one after it, sized from
    // the first, which was slow only in part; none after those.
    let keys: Vec<i64> = sizes
        .iter()
        .scan(0, |total, n| {
            *total += n;
            Some(*total)
        })
        .collect();
    let first_slow = keys
        .iter()
        .position(|k| *k > 3000)
        .expect("a batch reached the slow half");
    for (i, took) in durations.iter().enumerate().skip(first_slow + 3) {
        assert!(*took <= 400, "batch {i} lasted {took} ms: {seen}");
    }
    let last: Vec<i64> = durations.iter().rev().skip(1).take(4).copied().collect();
    assert!(
        last.iter().all(|d| (70..=400).contains(d)),
        "the last batches last about the target of 200 ms: {seen}"
    );
    let status = step_status(&plan);
    assert!(
        status["batch_size"].as_i64().is_some_and(|n| n < 500),
        "status shows the size the slow rows led to: {status}; {seen}"
    );
}

/// `max_rows_per_second` over a run: batches start at the rate, each holding at most a quarter
/// second's rows, and the rows started per second over the run stay within 10% of the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_rows_per_second_holds_over_a_run() {
    let db = TestDb::new(Backend::Sqlite).await;
    let t = db.table("rate");
    db.counter_table(&t, 1..=4000).await;
    let plan = db.step_plan(
        &t,
        "batch_size = 1000\nmax_rows_per_second = 1000",
        &format!(
            "name = \"s\"\ntable = \"{t}\"\nkey = \"id\"\n\
             sql = \"UPDATE {t} SET hits = hits + 1 WHERE id BETWEEN :start AND :end\""
        ),
    );
    run_to_end(&plan, &[]);
    let done = batches(&db, &t).await;
    assert_eq!(done.iter().map(|b| b.0).sum::<i64>(), 4000);
    assert!(
        done.iter().all(|b| b.0 <= 250),
        "batches hold a quarter second of rows: {done:?}"
    );
    // Rows of every batch but the last, over the time from the first start to the last.
    let (first, last) = (done[0].1, done[done.len() - 1].1);
    let rows: i64 = done[..done.len() - 1].iter().map(|b| b.0).sum();
    let per_second = rows as f64 * 1000.0 / (last - first) as f64;
    assert!(
        (900.0..=1100.0).contains(&per_second),
        "{per_second:.0} rows/s against a limit of 1000: {done:?}"
    );
}

/// The throttle switch of a throttle test: a one-row table whose `paused` the test flips.
async fn throttle_switch(db: &TestDb, name: &str, paused: bool) {
    let boolean = match db.backend {
        Backend::MySql => "TINYINT",
        _ => "BOOLEAN",
    };
    db.exec(&format!("CREATE TABLE {name} (paused {boolean} NOT NULL)"))
        .await;
    db.exec(&format!("INSERT INTO {name} (paused) VALUES ({paused})"))
        .await;
}

/// How many batches the run's worker has in flight, as `status` shows.
fn in_flight(plan: &Path) -> i64 {
    status_json(plan)["workers"][0]["batches_in_flight"]
        .as_i64()
        .unwrap_or(0)
}

/// A plan adding 1 to each row of `table` in batches of 10 that take 0.4 s each, so that a
/// run at one batch at a time lasts long enough to be throttled in the middle; `throttle` is its
/// throttle query.
fn throttled_plan(db: &TestDb, table: &str, throttle: &str) -> std::path::PathBuf {
    let slow = match db.backend {
        Backend::MySql => "SLEEP(0.04)",
        _ => "CASE WHEN pg_sleep(0.04) IS NULL THEN 1 ELSE 0 END",
    };
    db.step_plan(
        table,
        &format!("batch_size = 10\nadaptive = false\nthrottle_query = \"{throttle}\""),
        &format!(
            "name = \"s\"\ntable = \"{table}\"\nkey = \"id\"\n\
             sql = \"UPDATE {table} SET hits = hits + 1 + {slow} WHERE id BETWEEN :start AND :end\""
        ),
    )
}

/// Waits until `status` says the step is throttled for a reason containing `why`, and returns
/// the reason.
async fn until_throttled(plan: &Path, why: &str) -> String {
    let mut reason = String::new();
    poll_until(
        &format!("status to say the step is throttled ({why})"),
        Duration::from_secs(30),
        async || {
            reason = step_status(plan)["throttled"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            reason.contains(why)
        },
    )
    .await;
    reason
}

/// `throttle_query` toggled from another session: while it answers true no batch starts and
/// `status` says why; once it answers false the run goes on by itself and finishes.
async fn throttle_query_pauses_claims_until_it_clears(backend: Backend) {
    let db = TestDb::new(backend).await;
    let t = db.table("thr");
    let switch = db.table("switch");
    db.counter_table(&t, 1..=300).await;
    throttle_switch(&db, &switch, false).await;
    let plan = throttled_plan(&db, &t, &format!("SELECT paused FROM {switch}"));
    let mut run = KillOnDrop(spawn_watched(&[
        "run",
        path_str(&plan),
        "--json",
        "--concurrency",
        "1",
    ]));
    poll_until(
        "some rows to be done",
        Duration::from_secs(30),
        async || step_status(&plan)["rows_done"].as_i64().unwrap_or(0) >= 20,
    )
    .await;
    db.exec(&format!("UPDATE {switch} SET paused = true")).await;
    until_throttled(&plan, "throttle_query returned true").await;
    // The batch in flight when it said so finishes; nothing new starts.
    poll_until(
        "the batch in flight to end",
        Duration::from_secs(10),
        async || in_flight(&plan) == 0,
    )
    .await;
    let before = db
        .scalar(&format!("SELECT count(*) FROM {t} WHERE hits > 0"))
        .await;
    assert!(before < 300, "the run ended before the throttle: {before}");
    // Two more throttle checks (every 2 s), and the rows stay as they were.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = db
        .scalar(&format!("SELECT count(*) FROM {t} WHERE hits > 0"))
        .await;
    assert_eq!(after, before, "batches started while throttled");
    assert!(run.alive(), "the run waits while throttled");
    db.exec(&format!("UPDATE {switch} SET paused = false"))
        .await;
    assert_finishes_each_row_once(&mut run, &db, &t, Duration::from_secs(60)).await;
    assert_eq!(step_status(&plan)["throttled"], Json::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttle_query_pauses_claims_until_it_clears_pg() {
    throttle_query_pauses_claims_until_it_clears(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttle_query_pauses_claims_until_it_clears_mariadb() {
    throttle_query_pauses_claims_until_it_clears(Backend::MySql).await;
}

/// A throttle query that fails throttles (fail closed): no batch starts, `status` gives the
/// database's error, and once the query answers (its table made) the run finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_throttle_query_throttles() {
    let db = TestDb::new(Backend::Postgres).await;
    let t = db.table("thrfail");
    let switch = db.table("later");
    db.counter_table(&t, 1..=50).await;
    let plan = throttled_plan(&db, &t, &format!("SELECT paused FROM {switch}"));
    let mut run = KillOnDrop(spawn_watched(&["run", path_str(&plan), "--json"]));
    let reason = until_throttled(&plan, "throttle_query failed").await;
    assert!(reason.contains("42P01"), "the database's code: {reason}");
    // Longer than several batches would take, were any running.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(in_flight(&plan), 0, "a batch runs while throttled");
    assert_eq!(
        db.scalar(&format!("SELECT count(*) FROM {t} WHERE hits > 0"))
            .await,
        0,
        "nothing ran while the throttle query failed"
    );
    throttle_switch(&db, &switch, false).await;
    assert_finishes_each_row_once(&mut run, &db, &t, Duration::from_secs(60)).await;
}

/// `godwit set` on a running run, from another process: more batches in flight within
/// seconds, then a pinned batch size for the batches claimed after it; every row still once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_changes_a_running_run() {
    let db = TestDb::new(Backend::Postgres).await;
    let t = db.table("set");
    db.counter_table(&t, 1..=400).await;
    let plan = db.step_plan(
        &t,
        "batch_size = 5\nadaptive = false",
        &format!(
            "name = \"s\"\ntable = \"{t}\"\nkey = \"id\"\n\
             sql = \"UPDATE {t} SET hits = hits + 1 + CASE WHEN pg_sleep(0.04) IS NULL THEN 1 ELSE 0 END \
             WHERE id BETWEEN :start AND :end\"\n"
        ),
    );
    let mut run = KillOnDrop(spawn_watched(&[
        "run",
        path_str(&plan),
        "--json",
        "--concurrency",
        "1",
    ]));
    poll_until("a batch in flight", Duration::from_secs(30), async || {
        in_flight(&plan) == 1
    })
    .await;
    let out = run_cmd(&["set", path_str(&plan), "--concurrency", "3"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    poll_until(
        "three batches in flight",
        Duration::from_secs(15),
        async || in_flight(&plan) == 3,
    )
    .await;
    let out = run_cmd(&["set", path_str(&plan), "--batch-size", "40"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    poll_until("batches of 40 keys", Duration::from_secs(15), async || {
        batches(&db, &t).await.iter().any(|b| b.0 == 40)
    })
    .await;
    assert_finishes_each_row_once(&mut run, &db, &t, Duration::from_secs(120)).await;
    assert_eq!(step_status(&plan)["batch_size"], Json::from(40));
}
