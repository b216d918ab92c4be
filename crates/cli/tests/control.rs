//! Runs controlled through the state database: `godwit submit`, `godwit worker`, `pause`,
//! `resume`, `cancel`, `retry`, and the live workers `godwit status` lists, through the real
//! binary against real servers.
//!
//! A worker joins every unfinished run of its state database, so every test here keeps its
//! state on its own: a schema of its own on PostgreSQL, its own file on SQLite.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::restart::{assert_rows_as_plan_b_leaves_them, restart_plan, restart_table};
use common::{
    godwit, isolated_db, path_str, poll_until, run_cmd, send_signal, spawn_watched,
    spawn_watched_cmd, status_json, text, Backend, KillOnDrop, TestDb, Watched,
};
use serde_json::Value as Json;

/// A one-step plan named `name` adding 1 to `hits` of each row of `table` once, in batches of
/// `batch_size`; `extra` is added to the increment (a sleep, a division by zero) and must be
/// 0 when it lets the row through.
fn plan_text(name: &str, url: &str, table: &str, batch_size: i64, extra: &str) -> String {
    // Through `${VAR}`: `submit` refuses a password written in the plan.
    let url = common::plan_url(url);
    format!(
        r#"name = "{name}"
database = "{url}"

[defaults]
batch_size = {batch_size}
adaptive = false

[[steps]]
name = "count"
table = "{table}"
key = "id"
sql = "UPDATE {table} SET hits = hits + 1{extra} WHERE id BETWEEN :start AND :end"
"#
    )
}

/// On PostgreSQL, an increment of 0 that sleeps `seconds` for each row updated (in the SET
/// list, so only the batch's own rows sleep whatever plan the server picks).
fn pg_sleep_per_row(seconds: &str) -> String {
    format!(" + CASE WHEN pg_sleep({seconds}) IS NOT NULL THEN 0 ELSE 1000 END")
}

/// Writes the plan for `table` into the test's directory as `{table}.toml`.
fn write_plan(db: &TestDb, table: &str, batch_size: i64, extra: &str) -> PathBuf {
    db.plan(
        &format!("{table}.toml"),
        &plan_text(table, &db.url, table, batch_size, extra),
    )
}

fn submit(plan: &Path) {
    let out = run_cmd(&["submit", path_str(plan)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "submit failed: {}",
        text(&out.stderr)
    );
}

/// Runs `godwit <action> PLAN` and returns its exit code and stderr.
fn control(action: &str, plan: &Path) -> (Option<i32>, String) {
    let out = run_cmd(&[action, path_str(plan)]);
    (out.status.code(), text(&out.stderr))
}

/// `godwit worker --database URL --json` plus `args`, killed if the test ends first.
fn worker(db: &TestDb, args: &[&str]) -> KillOnDrop {
    let mut all = vec!["worker", "--database", db.url.as_str(), "--json"];
    all.extend_from_slice(args);
    KillOnDrop(spawn_watched(&all))
}

/// Waits for a JSON event matching `wanted`, among the lines already read too.
fn wait_event(
    w: &mut Watched,
    what: &str,
    limit: Duration,
    wanted: impl Fn(&Json) -> bool,
) -> Json {
    if let Some(e) = w.events().into_iter().find(|e| wanted(e)) {
        return e;
    }
    let line = w.wait_stdout(what, limit, |l| {
        serde_json::from_str::<Json>(l).is_ok_and(|e| wanted(&e))
    });
    serde_json::from_str(&line).expect("JSON event")
}

fn is_event(e: &Json, event: &str, plan: &str) -> bool {
    e["event"] == event && e["plan"] == plan
}

/// Waits for a stderr line matching `wanted`, among the lines already read too.
fn wait_stderr_seen(
    w: &mut Watched,
    what: &str,
    limit: Duration,
    wanted: impl Fn(&str) -> bool,
) -> String {
    if let Some(l) = w.stderr_lines.iter().find(|l| wanted(l)) {
        return l.clone();
    }
    w.wait_stderr(what, limit, wanted)
}

/// Starts godwit with `args` twice at once; the exit code and stderr of each.
fn twice_at_once(args: &[&str]) -> Vec<(Option<i32>, String)> {
    let mut pair = [
        KillOnDrop(spawn_watched(args)),
        KillOnDrop(spawn_watched(args)),
    ];
    pair.iter_mut()
        .map(|p| (p.finish(Duration::from_secs(60)), p.stderr_text()))
        .collect()
}

/// Sends SIGTERM to a worker with nothing in flight and expects exit 75.
fn stop_worker(w: &mut Watched) {
    send_signal(w.child.id(), "TERM");
    let code = w.finish(Duration::from_secs(30));
    assert_eq!(code, Some(75), "{}", w.stderr_text());
}

/// `SELECT {what} FROM godwit_batches WHERE run = '{run}' AND {filter}` as an integer.
/// 0 while no process has created the state tables yet.
async fn batches(db: &TestDb, what: &str, run: &str, filter: &str) -> i64 {
    if !has_table(db, "godwit_batches").await {
        return 0;
    }
    db.scalar(&format!(
        "SELECT CAST(COALESCE({what}, 0) AS BIGINT) FROM godwit_batches WHERE run = '{run}' AND {filter}"
    ))
    .await
}

async fn claimed(db: &TestDb, run: &str) -> i64 {
    batches(db, "COUNT(*)", run, "state = 'claimed'").await
}

async fn rows_where(db: &TestDb, table: &str, filter: &str) -> i64 {
    db.scalar(&format!("SELECT COUNT(*) FROM {table} WHERE {filter}"))
        .await
}

/// Every row updated exactly once.
async fn assert_all_once(db: &TestDb, table: &str, rows: i64) {
    let summary = db
        .query(&format!(
            "SELECT COUNT(*), MIN(hits), MAX(hits) FROM {table}"
        ))
        .await;
    let got = (
        summary[0][0].as_i64(),
        summary[0][1].as_i64(),
        summary[0][2].as_i64(),
    );
    assert_eq!(
        got,
        (Some(rows), Some(1), Some(1)),
        "(rows, min, max) of {table}"
    );
}

/// The state database's clock, in the milliseconds the state tables hold.
async fn pg_now_ms(db: &TestDb) -> i64 {
    db.scalar("SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint")
        .await
}

/// Statements on `table` running on the PostgreSQL server, other than ours; `and` narrows
/// them down (`AND wait_event = ...`).
async fn pg_running_on(db: &TestDb, table: &str, and: &str) -> i64 {
    db.scalar(&format!(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE state = 'active' \
         AND pid <> pg_backend_pid() AND starts_with(query, 'UPDATE {table} ') {and}"
    ))
    .await
}

fn plan_stem(plan: &Path) -> String {
    plan.file_stem()
        .expect("plan file name")
        .to_string_lossy()
        .into_owned()
}

async fn has_table(db: &TestDb, table: &str) -> bool {
    let mut conn = db.conn().await;
    conn.table_info(table).await.expect("table info").is_some()
}

/// Whether the state tables exist.
async fn has_state_tables(db: &TestDb) -> bool {
    has_table(db, "godwit_runs").await
}

// ----------------------------------------------------------------------------------------
// 1. submit
// ----------------------------------------------------------------------------------------

/// Two `submit` processes started together on one plan make one run, pending, and both exit
/// 0; three plans in a row, for three chances at the race.
async fn submit_twice_at_once_makes_one_run(backend: Backend) {
    let db = isolated_db(backend).await;
    // The state tables exist already (another plan is stored): the race is on the run.
    let other = db.table("other");
    db.counter_table(&other, 1..=5).await;
    submit(&write_plan(&db, &other, 10, ""));
    for round in 0..3 {
        let table = db.table(&format!("twice{round}"));
        db.counter_table(&table, 1..=30).await;
        let plan = write_plan(&db, &table, 10, "");
        for (code, err) in twice_at_once(&["submit", path_str(&plan)]) {
            assert_eq!(code, Some(0), "round {round}: {err}");
        }
        let runs = db
            .scalar(&format!(
                "SELECT COUNT(*) FROM godwit_runs WHERE run = '{table}'"
            ))
            .await;
        assert_eq!(runs, 1, "round {round}");
        let steps = db
            .scalar(&format!(
                "SELECT COUNT(*) FROM godwit_steps WHERE run = '{table}'"
            ))
            .await;
        assert_eq!(steps, 1, "round {round}");
        let status = status_json(&plan);
        assert_eq!(status["state"], "pending", "{status}");
        assert_eq!(status["workers"], serde_json::json!([]), "{status}");
        assert_eq!(status["steps"][0]["state"], "pending", "{status}");
        assert_eq!(status["steps"][0]["batches_done"], 0, "{status}");
        // Submitting changes no data.
        assert_eq!(rows_where(&db, &table, "hits <> 0").await, 0);
    }
}

/// The first two processes on a fresh state database (pods started together) both get going.
async fn first_processes_on_a_fresh_state_database(backend: Backend) {
    // Each round on a schema of its own, with no state tables yet.
    for round in 0..6 {
        let db = isolated_db(backend).await;
        let table = db.table("fresh");
        db.counter_table(&table, 1..=10).await;
        let plan = write_plan(&db, &table, 10, "");
        let submit = ["submit", path_str(&plan)];
        let worker = ["worker", "--database", &db.url, "--exit-when-idle"];
        let args: &[&str] = if round % 2 == 0 { &submit } else { &worker };
        for (code, err) in twice_at_once(args) {
            assert_eq!(code, Some(0), "round {round}, {}: {err}", args[0]);
        }
    }
}

// ----------------------------------------------------------------------------------------
// 2. worker: waiting, joining, exiting when idle
// ----------------------------------------------------------------------------------------

/// A worker on an empty state database waits, then takes up a plan submitted later and
/// finishes it. The plan's URL is `${VAR}` from the worker's own environment and the state URL
/// comes from GODWIT_DATABASE; a run whose plan needs a variable a worker lacks is refused by
/// that worker, which lives on.
async fn worker_waits_and_takes_up_a_later_plan(backend: Backend) {
    let db = isolated_db(backend).await;
    let table = db.table("later");
    db.counter_table(&table, 1..=120).await;
    assert!(!has_state_tables(&db).await, "the database is not empty");
    let (var, missing) = ("GODWIT_CONTROL_TEST_URL", "GODWIT_CONTROL_TEST_NOWHERE");
    let plan = db.plan(
        "later.toml",
        &plan_text(&table, &format!("${{{var}}}"), &table, 10, ""),
    );
    // A plan no worker here can run: its variable is set for `submit` only.
    let orphan = db.table("orphan");
    db.counter_table(&orphan, 1..=10).await;
    let orphan_plan = db.plan(
        "orphan.toml",
        &plan_text(&orphan, &format!("${{{missing}}}"), &orphan, 10, ""),
    );

    let mut cmd = godwit();
    cmd.arg("worker")
        .env("GODWIT_DATABASE", &db.url)
        .env(var, &db.url)
        .env_remove(missing);
    let mut w = KillOnDrop(spawn_watched_cmd(cmd));
    w.wait_stderr(
        "the worker to start looking",
        Duration::from_secs(30),
        |l| l.starts_with("worker: looking for runs"),
    );
    // It looked (the state tables are there, down to the version it writes last) and waits.
    // Submitting before that would race the worker's creation of the tables (see
    // first_processes_on_a_fresh_state_database).
    poll_until(
        "the worker to prepare the state tables",
        Duration::from_secs(30),
        async || {
            has_table(&db, "godwit_meta").await
                && db
                    .scalar("SELECT COUNT(*) FROM godwit_meta WHERE name = 'schema_version'")
                    .await
                    == 1
        },
    )
    .await;
    assert!(w.alive(), "{}", w.output_so_far());

    for (plan, var) in [(&orphan_plan, missing), (&plan, var)] {
        let mut cmd = godwit();
        cmd.args(["submit", path_str(plan)]).env(var, &db.url);
        let out = cmd.output().expect("submit");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    wait_stderr_seen(&mut w, "the worker to join", Duration::from_secs(30), |l| {
        l == format!("worker: working on \"{table}\"")
    });
    wait_stderr_seen(&mut w, "the run to be done", Duration::from_secs(60), |l| {
        l == format!("worker: \"{table}\" done")
    });
    assert_all_once(&db, &table, 120).await;
    let status = status_json(&plan_with_url(&db, &plan, var));
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["steps"][0]["rows_done"], 120, "{status}");

    // The other run: refused, saying why; still pending, untouched.
    let refusal = wait_stderr_seen(
        &mut w,
        "the other run to be refused",
        Duration::from_secs(30),
        |l| l.starts_with(&format!("error: run \"{orphan}\"")),
    );
    assert!(refusal.contains(missing), "{refusal}");
    let status = status_json(&plan_with_url(&db, &orphan_plan, missing));
    assert_eq!(status["state"], "pending", "{status}");
    assert_eq!(rows_where(&db, &orphan, "hits <> 0").await, 0);
    let mut json = worker(&db, &[]);
    let refused = wait_event(&mut json, "a JSON refusal", Duration::from_secs(30), |e| {
        is_event(e, "run_refused", &orphan)
    });
    assert!(
        refused["error"].as_str().unwrap_or("").contains(missing),
        "{refused}"
    );

    // Both still wait for more work; a stop ends them with 75.
    assert!(w.alive(), "{}", w.output_so_far());
    assert!(json.alive(), "{}", json.output_so_far());
    stop_worker(&mut w);
    stop_worker(&mut json);
}

/// The plan with `${var}` replaced by the database's URL, for `status` run by the test.
fn plan_with_url(db: &TestDb, plan: &Path, var: &str) -> PathBuf {
    let text = std::fs::read_to_string(plan).expect("read plan");
    db.plan(
        &format!("{}-expanded.toml", plan_stem(plan)),
        &text.replace(&format!("${{{var}}}"), &db.url),
    )
}

/// `--exit-when-idle`: on an empty state database the worker exits 0 at once; on one with a
/// submitted run it finishes the run, then exits 0.
async fn exit_when_idle(backend: Backend) {
    let empty = isolated_db(backend).await;
    let mut idle = worker(&empty, &["--exit-when-idle"]);
    assert_eq!(
        idle.finish(Duration::from_secs(30)),
        Some(0),
        "{}",
        idle.stderr_text()
    );
    assert!(idle.events().is_empty(), "{:?}", idle.events());

    let db = isolated_db(backend).await;
    let table = db.table("idle");
    db.counter_table(&table, 1..=200).await;
    let plan = write_plan(&db, &table, 15, "");
    submit(&plan);
    let mut w = worker(&db, &["--exit-when-idle"]);
    assert_eq!(
        w.finish(Duration::from_secs(60)),
        Some(0),
        "{}",
        w.stderr_text()
    );
    let events = w.events();
    assert!(
        events.iter().any(|e| is_event(e, "run_joined", &table)),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| is_event(e, "run_left", &table) && e["outcome"] == "done"),
        "{events:?}"
    );
    assert_all_once(&db, &table, 200).await;
    let status = status_json(&plan);
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["workers"], serde_json::json!([]), "{status}");
}

// ----------------------------------------------------------------------------------------
// 3. pause, resume, cancel
// ----------------------------------------------------------------------------------------

/// Two workers on two runs: `pause` stops the claims of one run within 2 s while the other
/// goes on; `cancel` of the other makes both workers leave it with its unprocessed ranges
/// untouched; `resume` lets the first finish.
async fn pause_resume_cancel_reach_running_workers(backend: Backend) {
    let db = isolated_db(backend).await;
    let (a, b) = (db.table("a"), db.table("b"));
    const A_ROWS: i64 = 1200;
    db.counter_table(&a, 1..=A_ROWS).await;
    db.counter_table(&b, 1..=2000).await;
    // 0.2 s per batch of 10.
    let plan_a = write_plan(&db, &a, 10, &pg_sleep_per_row("0.02"));
    let plan_b = write_plan(&db, &b, 10, &pg_sleep_per_row("0.02"));
    submit(&plan_a);
    submit(&plan_b);
    let mut workers = [
        worker(&db, &["--concurrency", "2"]),
        worker(&db, &["--concurrency", "2"]),
    ];
    for w in workers.iter_mut() {
        for run in [&a, &b] {
            wait_event(w, "the worker to join", Duration::from_secs(30), |e| {
                is_event(e, "run_joined", run)
            });
        }
    }
    poll_until("a few batches of a", Duration::from_secs(30), async || {
        batches(&db, "COUNT(*)", &a, "state = 'done'").await >= 4
    })
    .await;

    // Pause a.
    let paused_at = pg_now_ms(&db).await;
    let (code, err) = control("pause", &plan_a);
    assert_eq!(code, Some(0), "{err}");
    let mut status = Json::Null;
    poll_until(
        "a paused, both workers paused on it, nothing of a in flight",
        Duration::from_secs(5),
        async || {
            status = status_json(&plan_a);
            let workers = status["workers"].as_array().cloned().unwrap_or_default();
            status["state"] == "paused"
                && workers.len() == 2
                && workers.iter().all(|w| w["state"] == "paused")
                && claimed(&db, &a).await == 0
        },
    )
    .await;
    let last_claim = batches(&db, "MAX(claimed_ms)", &a, "TRUE").await;
    assert!(
        last_claim <= paused_at + 2000,
        "a batch was claimed {} ms after the pause",
        last_claim - paused_at
    );
    let (a_batches, a_rows) = (
        batches(&db, "COUNT(*)", &a, "TRUE").await,
        rows_where(&db, &a, "hits > 0").await,
    );
    assert!(a_rows < A_ROWS, "a finished before the pause");
    // Over a further window in which b keeps going, a stays where it is.
    let window = Instant::now();
    let b_done = batches(&db, "COUNT(*)", &b, "state = 'done'").await;
    poll_until(
        "b to go on while a is paused",
        Duration::from_secs(20),
        async || {
            window.elapsed() >= Duration::from_millis(1500)
                && batches(&db, "COUNT(*)", &b, "state = 'done'").await >= b_done + 5
        },
    )
    .await;
    assert_eq!(batches(&db, "COUNT(*)", &a, "TRUE").await, a_batches);
    assert_eq!(rows_where(&db, &a, "hits > 0").await, a_rows);
    let status = status_json(&plan_a);
    assert_eq!(status["state"], "paused", "{status}");
    assert_eq!(status["steps"][0]["rows_done"], a_rows, "{status}");

    // Cancel b.
    let (code, err) = control("cancel", &plan_b);
    assert_eq!(code, Some(0), "{err}");
    for w in workers.iter_mut() {
        let left = wait_event(w, "the worker to leave b", Duration::from_secs(10), |e| {
            is_event(e, "run_left", &b)
        });
        assert_eq!(left["outcome"], "cancelled", "{left}");
    }
    let status = status_json(&plan_b);
    assert_eq!(status["state"], "cancelled", "{status}");
    assert_eq!(status["workers"], serde_json::json!([]), "{status}");
    assert_eq!(claimed(&db, &b).await, 0, "no batch of b may stay claimed");
    // Exactly the rows of b's committed batches changed, once; the rest is untouched.
    let in_done_batch = format!(
        "EXISTS (SELECT 1 FROM godwit_batches g WHERE g.run = '{b}' AND g.state = 'done' \
         AND {b}.id BETWEEN CAST(g.start_key AS BIGINT) AND CAST(g.end_key AS BIGINT))"
    );
    assert_eq!(
        rows_where(&db, &b, &format!("NOT (hits = 1) AND {in_done_batch}")).await,
        0
    );
    assert_eq!(
        rows_where(&db, &b, &format!("hits <> 0 AND NOT {in_done_batch}")).await,
        0
    );
    let untouched = rows_where(&db, &b, "hits = 0").await;
    assert!(untouched > 0, "b finished before the cancel");
    assert_eq!(
        status["steps"][0]["rows_done"],
        2000 - untouched,
        "{status}"
    );

    // Resume a: the workers claim again and finish it.
    let (code, err) = control("resume", &plan_a);
    assert_eq!(code, Some(0), "{err}");
    poll_until(
        "a to run again on both workers",
        Duration::from_secs(5),
        async || {
            let status = status_json(&plan_a);
            let workers = status["workers"].as_array().cloned().unwrap_or_default();
            (status["state"] == "running"
                && workers.len() == 2
                && workers.iter().all(|w| w["state"] == "running"))
                || status["state"] == "done"
        },
    )
    .await;
    for w in workers.iter_mut() {
        let left = wait_event(w, "a to be done", Duration::from_secs(60), |e| {
            is_event(e, "run_left", &a)
        });
        assert_eq!(left["outcome"], "done", "{left}");
    }
    assert_all_once(&db, &a, A_ROWS).await;
    let status = status_json(&plan_a);
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["steps"][0]["rows_done"], A_ROWS, "{status}");
    // b stays cancelled and untouched.
    assert_eq!(rows_where(&db, &b, "hits = 0").await, untouched);
    assert_eq!(status_json(&plan_b)["state"], "cancelled");
    for w in workers.iter_mut() {
        stop_worker(w);
    }
}

/// A `godwit run` process on a run that gets cancelled lets its batches in flight finish and
/// exits 1.
async fn cancel_ends_a_run_process_with_1(backend: Backend) {
    let db = isolated_db(backend).await;
    let table = db.table("cancelled");
    db.counter_table(&table, 1..=400).await;
    let plan = write_plan(&db, &table, 10, &pg_sleep_per_row("0.02"));
    let mut run = KillOnDrop(spawn_watched(&[
        "run",
        path_str(&plan),
        "--json",
        "--concurrency",
        "2",
    ]));
    poll_until("a few batches", Duration::from_secs(30), async || {
        batches(&db, "COUNT(*)", &table, "state = 'done'").await >= 3
    })
    .await;
    let (code, err) = control("cancel", &plan);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("cancelled"), "{err}");
    let code = run.finish(Duration::from_secs(15));
    assert_eq!(code, Some(1), "{}", run.stderr_text());
    assert!(
        run.stderr_text().contains("was cancelled"),
        "{}",
        run.stderr_text()
    );
    let events = run.events();
    let last = events.last().expect("events");
    assert_eq!(last["event"], "run_done", "{events:?}");
    assert_eq!(last["state"], "cancelled", "{events:?}");
    let status = status_json(&plan);
    assert_eq!(status["state"], "cancelled", "{status}");
    assert_eq!(claimed(&db, &table).await, 0);
    let changed = rows_where(&db, &table, "hits = 1").await;
    assert_eq!(status["steps"][0]["rows_done"], changed, "{status}");
    assert_eq!(rows_where(&db, &table, "hits > 1").await, 0);
    assert!(changed < 400, "the run finished before the cancel");
}

/// A submitted run paused and resumed before any worker took it up is still a run no worker
/// has started; once a worker does, its time counts from then.
async fn pause_and_resume_before_any_worker(backend: Backend) {
    let db = isolated_db(backend).await;
    let table = db.table("early");
    db.counter_table(&table, 1..=100).await;
    // 0.05 s per batch of 10: the run takes about half a second.
    let plan = write_plan(&db, &table, 10, &pg_sleep_per_row("0.005"));
    submit(&plan);
    let (code, err) = control("pause", &plan);
    assert_eq!(code, Some(0), "{err}");
    let status = status_json(&plan);
    assert_eq!(status["state"], "paused", "{status}");
    let (code, err) = control("resume", &plan);
    assert_eq!(code, Some(0), "{err}");
    let resumed = status_json(&plan);
    assert_eq!(resumed["workers"], serde_json::json!([]), "{resumed}");

    let mut w = worker(&db, &["--exit-when-idle", "--concurrency", "1"]);
    assert_eq!(
        w.finish(Duration::from_secs(60)),
        Some(0),
        "{}",
        w.stderr_text()
    );
    assert_all_once(&db, &table, 100).await;
    let done = status_json(&plan);
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(
        resumed["state"], "pending",
        "after pause and resume: {resumed}"
    );
    assert!(
        done["elapsed_seconds"].as_f64().unwrap_or(0.0) > 0.0,
        "a run of 10 batches of 0.05 s: {done}"
    );
}

// ----------------------------------------------------------------------------------------
// 4. retry
// ----------------------------------------------------------------------------------------

/// A batch fails for good (division by zero while a flag says so): the run fails and the
/// worker stays; once the cause is fixed, `retry` makes the same worker finish the run, every
/// row updated once.
async fn retry_requeues_a_failed_run_for_running_workers(backend: Backend) {
    let db = isolated_db(backend).await;
    let table = db.table("retried");
    let flag = db.table("flag");
    db.counter_table(&table, 1..=300).await;
    db.exec(&format!(
        "CREATE TABLE {flag} (ok INT NOT NULL); INSERT INTO {flag} VALUES (0)"
    ))
    .await;
    let plan = write_plan(
        &db,
        &table,
        10,
        &format!(" + CASE WHEN id = 155 THEN 1 / (SELECT ok FROM {flag}) - 1 ELSE 0 END"),
    );
    submit(&plan);
    let mut w = worker(&db, &["--concurrency", "2"]);
    let left = wait_event(&mut w, "the run to fail", Duration::from_secs(60), |e| {
        is_event(e, "run_left", &table)
    });
    assert_eq!(left["outcome"], "failed", "{left}");
    let error = left["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("[22012]") && error.contains("151..=160"),
        "{left}"
    );
    let status = status_json(&plan);
    assert_eq!(status["state"], "failed", "{status}");
    assert_eq!(status["steps"][0]["batches_failed"], 1, "{status}");
    assert_eq!(
        rows_where(&db, &table, "id BETWEEN 151 AND 160 AND hits <> 0").await,
        0
    );
    assert_eq!(rows_where(&db, &table, "hits > 1").await, 0);
    assert!(
        w.alive(),
        "the worker left after a failed run: {}",
        w.output_so_far()
    );

    db.exec(&format!("UPDATE {flag} SET ok = 1")).await;
    let (code, err) = control("retry", &plan);
    assert_eq!(code, Some(0), "{err}");
    let left = wait_event(&mut w, "the run to be done", Duration::from_secs(60), |e| {
        is_event(e, "run_left", &table) && e["outcome"] != "failed"
    });
    assert_eq!(left["outcome"], "done", "{left}");
    let joined = w
        .events()
        .iter()
        .filter(|e| is_event(e, "run_joined", &table))
        .count();
    assert_eq!(joined, 2, "{:?}", w.events());
    assert_all_once(&db, &table, 300).await;
    let status = status_json(&plan);
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["steps"][0]["batches_failed"], 0, "{status}");
    assert_eq!(status["steps"][0]["rows_done"], 300, "{status}");
    stop_worker(&mut w);
}

// ----------------------------------------------------------------------------------------
// 5. SIGTERM on a worker
// ----------------------------------------------------------------------------------------

/// A plan whose batch statement sleeps `pace.secs` seconds per row, so that a test can slow
/// the batches down and then speed them up.
async fn paced_plan(db: &TestDb, table: &str, rows: i64, secs: &str) -> (PathBuf, String) {
    let pace = format!("{table}_pace");
    db.counter_table(table, 1..=rows).await;
    db.exec(&format!(
        "CREATE TABLE {pace} (secs FLOAT NOT NULL); INSERT INTO {pace} VALUES ({secs})"
    ))
    .await;
    let plan = write_plan(
        db,
        table,
        10,
        &pg_sleep_per_row(&format!("(SELECT secs FROM {pace})")),
    );
    (plan, pace)
}

/// SIGTERM: the worker claims nothing more, lets its batches in flight commit, releases its
/// claims and exits 75; another worker finishes the run.
async fn sigterm_lets_a_workers_batches_commit(backend: Backend) {
    let db = isolated_db(backend).await;
    let table = db.table("drained");
    // 1.5 s per batch of 10.
    let (plan, pace) = paced_plan(&db, &table, 100, "0.15").await;
    submit(&plan);
    let mut w = worker(&db, &["--concurrency", "2"]);
    let mut before = 0;
    poll_until(
        "the first batches done and the next in flight",
        Duration::from_secs(30),
        async || {
            let done = batches(&db, "COUNT(*)", &table, "state = 'done'").await;
            let in_flight = claimed(&db, &table).await;
            before = rows_where(&db, &table, "hits > 0").await;
            done >= 1 && in_flight >= 2
        },
    )
    .await;
    send_signal(w.child.id(), "TERM");
    w.wait_stderr(
        "the stop to be acknowledged",
        Duration::from_secs(10),
        |l| l.starts_with("stopping:"),
    );
    let code = w.finish(Duration::from_secs(30));
    assert_eq!(code, Some(75), "{}", w.stderr_text());
    let after = rows_where(&db, &table, "hits > 0").await;
    assert!(
        after > before && after <= before + 20,
        "{before} rows committed at the signal, {after} at the exit"
    );
    assert!(after < 100, "the run finished before the signal");
    let left = w
        .events()
        .into_iter()
        .find(|e| is_event(e, "run_left", &table))
        .expect("run_left event");
    assert_eq!(left["outcome"], "stopped", "{left}");
    assert_eq!(
        claimed(&db, &table).await,
        0,
        "a stopped worker keeps no claim"
    );
    let status = status_json(&plan);
    assert_eq!(status["workers"], serde_json::json!([]), "{status}");
    assert_eq!(status["steps"][0]["rows_done"], after, "{status}");
    assert_eq!(rows_where(&db, &table, "hits > 1").await, 0);

    db.exec(&format!("UPDATE {pace} SET secs = 0")).await;
    let mut next = worker(&db, &["--exit-when-idle"]);
    assert_eq!(
        next.finish(Duration::from_secs(60)),
        Some(0),
        "{}",
        next.stderr_text()
    );
    assert_all_once(&db, &table, 100).await;
    assert_eq!(status_json(&plan)["state"], "done");
}

/// SIGTERM with `--grace 1s` while batches of about 20 s run: the worker exits 75 within a
/// few seconds, the batches roll back and are released, and a new worker takes them at once.
async fn sigterm_past_the_grace_rolls_back_and_releases(backend: Backend) {
    let db = isolated_db(backend).await;
    let table = db.table("graced");
    let pace = format!("{table}_pace");
    db.counter_table(&table, 1..=20).await;
    db.exec(&format!(
        "CREATE TABLE {pace} (secs FLOAT NOT NULL); INSERT INTO {pace} VALUES (20)"
    ))
    .await;
    // Two batches of 10 rows; each updates (and locks) its first 9 rows, then sleeps 20 s on
    // its last one.
    let plan = write_plan(
        &db,
        &table,
        10,
        &pg_sleep_per_row(&format!(
            "CASE WHEN id % 10 = 0 THEN (SELECT secs FROM {pace}) ELSE 0 END"
        )),
    );
    submit(&plan);
    let mut w = worker(&db, &["--concurrency", "2", "--grace", "1s"]);
    poll_until(
        "both batches to hold their rows and sleep",
        Duration::from_secs(30),
        async || pg_running_on(&db, &table, "AND wait_event = 'PgSleep'").await == 2,
    )
    .await;
    let old_worker = db
        .query(&format!(
            "SELECT MIN(worker) FROM godwit_batches WHERE run = '{table}'"
        ))
        .await[0][0]
        .as_str()
        .expect("worker name")
        .to_string();
    let signalled = Instant::now();
    send_signal(w.child.id(), "TERM");
    w.wait_stderr("the abort after the grace", Duration::from_secs(10), |l| {
        l.starts_with("aborting:")
    });
    let code = w.finish(Duration::from_secs(10));
    let took = signalled.elapsed();
    assert_eq!(code, Some(75), "{}", w.stderr_text());
    assert!(
        took < Duration::from_secs(6),
        "exited {took:?} after SIGTERM"
    );
    assert_eq!(rows_where(&db, &table, "hits <> 0").await, 0);
    let released = batches(
        &db,
        "COUNT(*)",
        &table,
        "state = 'pending' AND token IS NULL AND lease_until_ms IS NULL",
    )
    .await;
    assert_eq!(released, 2, "both batches must be released");
    poll_until(
        "the aborted batch statements to end on the server",
        Duration::from_secs(3),
        async || pg_running_on(&db, &table, "").await == 0,
    )
    .await;

    db.exec(&format!("UPDATE {pace} SET secs = 0")).await;
    let started = Instant::now();
    let mut next = worker(&db, &["--exit-when-idle"]);
    assert_eq!(
        next.finish(Duration::from_secs(60)),
        Some(0),
        "{}",
        next.stderr_text()
    );
    // Well inside the 30 s lease: the batches were given back, not left to expire.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the new worker took {:?}",
        started.elapsed()
    );
    let by_new = batches(
        &db,
        "COUNT(*)",
        &table,
        &format!("state = 'done' AND worker <> '{old_worker}'"),
    )
    .await;
    assert_eq!(by_new, 2);
    assert_all_once(&db, &table, 20).await;
}

/// `godwit run --grace 1s`: SIGTERM while batches of about 20 s run ends the process with 75
/// within a few seconds, the batches rolled back and released.
async fn run_grace_rolls_back_and_releases(backend: Backend) {
    let db = isolated_db(backend).await;
    let table = db.table("rungrace");
    db.counter_table(&table, 1..=20).await;
    let plan = write_plan(
        &db,
        &table,
        10,
        &pg_sleep_per_row("CASE WHEN id % 10 = 0 THEN 20 ELSE 0 END"),
    );
    let mut run = KillOnDrop(spawn_watched(&[
        "run",
        path_str(&plan),
        "--concurrency",
        "2",
        "--grace",
        "1s",
    ]));
    poll_until(
        "both batches to hold their rows and sleep",
        Duration::from_secs(30),
        async || pg_running_on(&db, &table, "AND wait_event = 'PgSleep'").await == 2,
    )
    .await;
    let signalled = Instant::now();
    send_signal(run.child.id(), "TERM");
    let code = run.finish(Duration::from_secs(10));
    let took = signalled.elapsed();
    assert_eq!(code, Some(75), "{}", run.stderr_text());
    assert!(
        took < Duration::from_secs(6),
        "exited {took:?} after SIGTERM"
    );
    let err = run.stderr_text();
    assert!(
        err.contains("stopping:") && err.contains("aborting:"),
        "{err}"
    );
    assert_eq!(rows_where(&db, &table, "hits <> 0").await, 0);
    let released = batches(
        &db,
        "COUNT(*)",
        &table,
        "state = 'pending' AND token IS NULL AND lease_until_ms IS NULL",
    )
    .await;
    assert_eq!(released, 2, "both batches must be released");
}

// ----------------------------------------------------------------------------------------
// 6. live workers in status
// ----------------------------------------------------------------------------------------

/// `status` lists the live workers with their real pids; a worker killed with SIGKILL drops
/// out of the list within about 12 s; the text form has a WORKER table.
async fn status_lists_live_workers(backend: Backend) {
    let db = isolated_db(backend).await;
    let table = db.table("watched");
    db.counter_table(&table, 1..=1000).await;
    // 1 s per batch: the run lasts far longer than the test.
    let plan = write_plan(&db, &table, 10, &pg_sleep_per_row("0.1"));
    submit(&plan);
    let pair = [
        worker(&db, &["--concurrency", "1"]),
        worker(&db, &["--concurrency", "1"]),
    ];
    let pids: BTreeSet<i64> = pair.iter().map(|w| i64::from(w.child.id())).collect();
    let mut status = Json::Null;
    poll_until("two workers listed", Duration::from_secs(15), async || {
        status = status_json(&plan);
        status["workers"].as_array().is_some_and(|w| w.len() == 2)
    })
    .await;
    let listed = status["workers"].as_array().expect("workers").clone();
    let listed_pids: BTreeSet<i64> = listed.iter().filter_map(|w| w["pid"].as_i64()).collect();
    assert_eq!(listed_pids, pids, "{status}");
    for w in &listed {
        let name = w["worker"].as_str().expect("worker name");
        let host = w["host"].as_str().expect("host");
        assert!(!host.is_empty(), "{w}");
        assert!(name.starts_with(&format!("{host}:{}:", w["pid"])), "{w}");
        assert_eq!(w["version"], env!("CARGO_PKG_VERSION"), "{w}");
        assert_eq!(w["state"], "running", "{w}");
        assert!(w["batches_in_flight"].as_i64().is_some(), "{w}");
        let seen = w["last_seen_seconds"].as_f64().expect("last_seen_seconds");
        assert!((0.0..5.0).contains(&seen), "{w}");
    }
    let out = run_cmd(&["status", path_str(&plan)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let table_text = text(&out.stdout);
    assert!(
        table_text.lines().any(|l| l.starts_with("WORKER")),
        "{table_text}"
    );
    for w in &listed {
        let name = w["worker"].as_str().expect("worker name");
        assert!(
            table_text
                .lines()
                .any(|l| l.starts_with(name) && l.contains("running")),
            "{table_text}"
        );
    }

    let [mut victim, mut survivor] = pair;
    let survivor_pid = i64::from(survivor.child.id());
    victim.child.kill().expect("SIGKILL");
    let _ = victim.child.wait();
    let killed = Instant::now();
    // The survivor's heartbeats meanwhile: what it reports in flight.
    let mut in_flight_seen = BTreeSet::new();
    poll_until(
        "the killed worker to drop out of the list",
        Duration::from_secs(13),
        async || {
            status = status_json(&plan);
            let workers = status["workers"].as_array().cloned().unwrap_or_default();
            in_flight_seen.extend(
                workers
                    .iter()
                    .filter(|w| w["pid"] == survivor_pid)
                    .filter_map(|w| w["batches_in_flight"].as_i64()),
            );
            workers.len() == 1
        },
    )
    .await;
    assert_eq!(status["workers"][0]["pid"], survivor_pid, "{status}");
    // Not before it had missed heartbeats for a while.
    assert!(
        killed.elapsed() > Duration::from_secs(5),
        "{:?}",
        killed.elapsed()
    );
    assert!(survivor.alive(), "{}", survivor.output_so_far());
    assert!(
        in_flight_seen.iter().all(|n| (0..=1).contains(n)),
        "a --concurrency 1 worker reported {in_flight_seen:?} batches in flight"
    );
    stop_worker(&mut survivor);
}

// ----------------------------------------------------------------------------------------
// 7. control commands that do not apply
// ----------------------------------------------------------------------------------------

/// pause, resume, cancel and retry of a plan with no stored run exit 1 naming the plan (and
/// create nothing); cancel and pause of a done run exit 1 and leave it done.
async fn control_without_a_run_or_on_a_done_run(backend: Backend) {
    let db = isolated_db(backend).await;
    let table = db.table("absent");
    db.counter_table(&table, 1..=30).await;
    let plan = write_plan(&db, &table, 10, "");
    let actions = ["pause", "resume", "cancel", "retry"];
    for action in actions {
        let (code, err) = control(action, &plan);
        assert_eq!(code, Some(1), "{action}: {err}");
        assert!(
            err.contains(&format!("no run of \"{table}\"")),
            "{action}: {err}"
        );
    }
    assert!(
        !has_state_tables(&db).await,
        "a control command created the state tables"
    );
    // With state tables holding another run.
    let other = db.table("other");
    db.counter_table(&other, 1..=5).await;
    submit(&write_plan(&db, &other, 10, ""));
    for action in actions {
        let (code, err) = control(action, &plan);
        assert_eq!(code, Some(1), "{action}: {err}");
        assert!(
            err.contains(&format!("no run of \"{table}\"")),
            "{action}: {err}"
        );
    }
    assert_eq!(
        status_json(&write_plan(&db, &other, 10, ""))["state"],
        "pending"
    );

    // A done run.
    let out = run_cmd(&["run", path_str(&plan), "--quiet"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for action in ["cancel", "pause"] {
        let (code, err) = control(action, &plan);
        assert_eq!(code, Some(1), "{action} on a done run: {err}");
        assert!(
            err.contains(&format!("\"{table}\" is done")),
            "{action}: {err}"
        );
        assert_eq!(status_json(&plan)["state"], "done");
    }
    assert_all_once(&db, &table, 30).await;
}

/// Issue 11: a worker working on a run that another process restarts with a changed plan
/// (`run --restart`) leaves the old generation ("restarted"), joins the new one with the new
/// plan's text and finishes it: every row gets the new plan's change once, and none the old
/// plan's after the restart.
async fn r11_worker_leaves_a_restarted_run_for_its_new_plan(backend: Backend) {
    let db = isolated_db(backend).await;
    let table = db.table("regen");
    restart_table(&db, &table).await;
    let plan_a = db.plan("A.toml", &restart_plan(&db, &table, None, "A"));
    let plan_b = db.plan("B.toml", &restart_plan(&db, &table, None, "B"));
    submit(&plan_a);
    let mut w = worker(&db, &["--concurrency", "1"]);
    poll_until(
        "the worker's first batches of plan A",
        Duration::from_secs(60),
        async || {
            assert!(w.alive(), "{}", w.output_so_far());
            rows_where(&db, &table, "v = 'A'").await >= 30
        },
    )
    .await;
    // Plan B restarts the run and works on it briefly; the worker finishes it.
    let out = run_cmd(&[
        "run",
        path_str(&plan_b),
        "--restart",
        "--concurrency",
        "1",
        "--max-duration",
        "200ms",
        "--quiet",
    ]);
    assert!(
        matches!(out.status.code(), Some(0 | 75)),
        "{}",
        text(&out.stderr)
    );
    wait_event(
        &mut w,
        "the worker to leave the old generation",
        Duration::from_secs(60),
        |e| is_event(e, "run_left", &table) && e["outcome"] == "restarted",
    );
    wait_event(
        &mut w,
        "the worker to finish the new one",
        Duration::from_secs(120),
        |e| is_event(e, "run_left", &table) && e["outcome"] == "done",
    );
    assert_rows_as_plan_b_leaves_them(&db, &table).await;
    assert!(rows_where(&db, &table, "v = 'AB'").await >= 30);
    let restarted_at = db
        .scalar(&format!(
            "SELECT created_ms FROM godwit_runs WHERE run = '{table}'"
        ))
        .await;
    assert_eq!(
        rows_where(&db, &table, &format!("a_ms > {restarted_at}")).await,
        0,
        "rows changed by plan A after the restart"
    );
    assert_eq!(status_json(&plan_b)["state"], "done");
    stop_worker(&mut w);
}

// ----------------------------------------------------------------------------------------

/// One `#[tokio::test]` per function, each called with `$backend`.
macro_rules! on {
    ($backend:expr => $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name($backend).await
            }
        )*
    };
}

mod pg {
    use super::common::Backend;
    on!(Backend::Postgres =>
        submit_twice_at_once_makes_one_run,
        first_processes_on_a_fresh_state_database,
        worker_waits_and_takes_up_a_later_plan,
        exit_when_idle,
        pause_resume_cancel_reach_running_workers,
        cancel_ends_a_run_process_with_1,
        pause_and_resume_before_any_worker,
        retry_requeues_a_failed_run_for_running_workers,
        sigterm_lets_a_workers_batches_commit,
        run_grace_rolls_back_and_releases,
        sigterm_past_the_grace_rolls_back_and_releases,
        status_lists_live_workers,
        control_without_a_run_or_on_a_done_run,
        r11_worker_leaves_a_restarted_run_for_its_new_plan,
    );
}

mod sqlite {
    use super::common::Backend;
    on!(Backend::Sqlite =>
        submit_twice_at_once_makes_one_run,
        worker_waits_and_takes_up_a_later_plan,
        exit_when_idle,
        control_without_a_run_or_on_a_done_run,
        r11_worker_leaves_a_restarted_run_for_its_new_plan,
    );
}
