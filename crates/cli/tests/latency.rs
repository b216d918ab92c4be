//! The latency guard (`max_latency_increase`, `probe_query`), through the real binary against
//! real servers: a probe made slow from another session lowers the run's pace down to a pause
//! that `status` explains, and the run goes on by itself once the probe is fast again; the
//! default probe (a row of the step's table read by its key) on each database; what `check`
//! and `run` refuse.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{
    assert_finishes_each_row_once, path_str, poll_until, run_cmd, spawn_watched, status_json, text,
    Backend, KillOnDrop, TestDb,
};
use godwit_driver::Value;
use serde_json::Value as Json;

/// The run's kept latency-guard baseline, as JSON.
async fn kept_baseline(db: &TestDb, run: &str) -> Json {
    let rows = db
        .query(&format!(
            "SELECT probe_baseline FROM godwit_runs WHERE run = '{run}'"
        ))
        .await;
    let text = match &rows[0][0] {
        Value::Text(s) => s.clone(),
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        other => panic!("no kept baseline: {other:?}"),
    };
    serde_json::from_str(&text).expect("the baseline is JSON")
}

/// The first step's entry in `status --json`.
fn step_status(plan: &Path) -> Json {
    status_json(plan)["steps"][0].clone()
}

/// A plan over `table` (a counter table) whose batches of 100 rows sleep 0.1 s while
/// `brake.slow` is true, guarded at 2x by a probe that sleeps 50 ms while `probe.slow` is.
fn guarded_plan(db: &TestDb, table: &str, probe: &str, brake: &str) -> PathBuf {
    db.plan(
        "plan.toml",
        &format!(
            "name = \"{table}\"\ndatabase = \"{url}\"\n\
             max_latency_increase = \"2x\"\n\
             probe_query = \"SELECT pg_sleep(CASE WHEN slow THEN 0.05 ELSE 0 END) FROM {probe}\"\n\n\
             [[steps]]\nname = \"s\"\ntable = \"{table}\"\nkey = \"id\"\n\
             batch_size = 100\nadaptive = false\n\
             sql = \"UPDATE {table} SET hits = hits + 1 WHERE id BETWEEN :start AND :end \
             AND (SELECT pg_sleep(CASE WHEN slow THEN 0.1 ELSE 0 END) FROM {brake}) IS NOT NULL\"\n",
            url = db.url
        ),
    )
}

async fn switch(db: &TestDb, name: &str, slow: bool) {
    db.exec(&format!("CREATE TABLE {name} (slow BOOLEAN NOT NULL)"))
        .await;
    db.exec(&format!("INSERT INTO {name} (slow) VALUES ({slow})"))
        .await;
}

async fn flip(db: &TestDb, name: &str, slow: bool) {
    db.exec(&format!("UPDATE {name} SET slow = {slow}")).await;
}

/// The guard learns the probe's idle timing, then, once the probe gets 100 times slower (a
/// sleep switched on from another session), lowers the run's pace until it pauses: `status`
/// says why, the batch size shown is the smallest, and no batch starts. Once the probe is fast
/// again the run goes on by itself and finishes, every row once. The baseline is kept with the
/// run for workers that join later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_lowers_the_pace_to_a_pause_and_recovers() {
    let db = TestDb::new(Backend::Postgres).await;
    let t = db.table("guarded");
    let (probe, brake) = (db.table("probe"), db.table("brake"));
    db.counter_table(&t, 1..=20_000).await;
    switch(&db, &probe, false).await;
    switch(&db, &brake, true).await;
    let plan = guarded_plan(&db, &t, &probe, &brake);
    let mut run = KillOnDrop(spawn_watched(&[
        "run",
        path_str(&plan),
        "--json",
        "--concurrency",
        "2",
    ]));
    poll_until(
        "some rows to be done",
        Duration::from_secs(60),
        async || step_status(&plan)["rows_done"].as_i64().unwrap_or(0) >= 300,
    )
    .await;
    let kept = kept_baseline(&db, &t).await;
    assert!(
        kept["probe"].as_str().unwrap_or_default().contains(&probe),
        "{kept}"
    );
    let idle = kept["idle_p99_seconds"].as_f64().expect("a p99");
    assert!(
        idle > 0.0 && idle < 0.025,
        "the idle p99 is the fast probe's: {idle}"
    );

    flip(&db, &probe, true).await;
    let mut reason = String::new();
    poll_until(
        "the guard to pause the run",
        Duration::from_secs(60),
        async || {
            reason = step_status(&plan)["throttled"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            reason.contains("latency guard")
        },
    )
    .await;
    assert!(reason.contains("2x"), "{reason}");
    assert_eq!(
        step_status(&plan)["batch_size"],
        10,
        "the batch size is lowered to the smallest before a pause"
    );
    poll_until(
        "the batches in flight to end",
        Duration::from_secs(10),
        async || status_json(&plan)["workers"][0]["batches_in_flight"].as_i64() == Some(0),
    )
    .await;
    let count = async || {
        db.scalar(&format!("SELECT count(*) FROM {t} WHERE hits > 0"))
            .await
    };
    let before = count().await;
    assert!(before < 20_000, "the run ended before the guard paused it");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(count().await, before, "batches started while paused");
    assert!(run.alive(), "the run waits while paused");

    flip(&db, &probe, false).await;
    flip(&db, &brake, false).await;
    assert_finishes_each_row_once(&mut run, &db, &t, Duration::from_secs(120)).await;
    assert_eq!(step_status(&plan)["throttled"], Json::Null);
}

/// The default probe: one row of the step's table by its key, as an application about to
/// write it would read it, timed before and during the run, on each database. The run
/// finishes every row once and keeps the baseline of that probe.
async fn the_default_probe_reads_the_steps_table(backend: Backend) {
    let db = TestDb::new(backend).await;
    let t = db.table("probed");
    db.counter_table(&t, 1..=3_000).await;
    let plan = db.plan(
        "plan.toml",
        &format!(
            "name = \"{t}\"\ndatabase = \"{}\"\nmax_latency_increase = \"3x\"\n\n\
             [[steps]]\nname = \"s\"\ntable = \"{t}\"\nkey = \"id\"\nbatch_size = 100\n\
             sql = \"UPDATE {t} SET hits = hits + 1 WHERE id BETWEEN :start AND :end\"\n",
            db.url
        ),
    );
    let mut run = KillOnDrop(spawn_watched(&["run", path_str(&plan), "--json"]));
    assert_finishes_each_row_once(&mut run, &db, &t, Duration::from_secs(60)).await;
    let kept = kept_baseline(&db, &t).await;
    assert_eq!(kept["probe"], format!("a row of {t} by id"), "{kept}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_probe_reads_the_steps_table_pg() {
    the_default_probe_reads_the_steps_table(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_probe_reads_the_steps_table_mariadb() {
    the_default_probe_reads_the_steps_table(Backend::MySql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_probe_reads_the_steps_table_sqlite() {
    the_default_probe_reads_the_steps_table(Backend::Sqlite).await;
}

/// What cannot be guarded is refused before anything changes: `check` names a probe query
/// that fails, and a plan whose steps change no table in place has nothing for the default
/// probe to read; `run` refuses a text key, between whose ends the default probe cannot pick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_be_guarded_is_refused() {
    let db = TestDb::new(Backend::Sqlite).await;
    let t = db.table("codes");
    db.exec(&format!(
        "CREATE TABLE {t} (code TEXT PRIMARY KEY NOT NULL, n INT NOT NULL DEFAULT 0)"
    ))
    .await;
    db.exec(&format!("INSERT INTO {t} (code) VALUES ('a'), ('b')"))
        .await;
    let step = format!(
        "[[steps]]\nname = \"s\"\ntable = \"{t}\"\nkey = \"code\"\n\
         sql = \"UPDATE {t} SET n = n + 1 WHERE code BETWEEN :start AND :end\"\n"
    );
    let head = |extra: &str| {
        format!(
            "name = \"{t}\"\ndatabase = \"{}\"\nmax_latency_increase = \"2x\"\n{extra}\n",
            db.url
        )
    };

    let failing = db.plan(
        "failing.toml",
        &format!("{}{step}", head("probe_query = \"SELECT * FROM missing\"")),
    );
    let out = run_cmd(&["check", path_str(&failing)]);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_ne!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("probe_query fails"), "{all}");
    assert!(all.contains("missing"), "the database's own error: {all}");

    let nothing = db.plan(
        "nothing.toml",
        &format!(
            "{}[[steps]]\nname = \"once\"\nsql = \"SELECT 1\"\n",
            head("")
        ),
    );
    let out = run_cmd(&["run", path_str(&nothing)]);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("write a `probe_query`"), "{all}");

    let text_key = db.plan("text.toml", &format!("{}{step}", head("")));
    let out = run_cmd(&["run", path_str(&text_key)]);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_ne!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("write a `probe_query`"), "{all}");
    assert_eq!(
        db.scalar(&format!("SELECT count(*) FROM {t} WHERE n > 0"))
            .await,
        0,
        "nothing ran"
    );
}

/// A real client beside a guarded backfill of its own table: pgbench's TPC-B-like load at a
/// fixed rate on a database of its own, while godwit rewrites every row of
/// `pgbench_accounts` with the guard at 2x. What a user checks afterwards: every account
/// rewritten, no client transaction failed (pgbench's own count: no deadlock, no lock timeout
/// because of godwit), and pgbench's balances still add up. The client's p99 beside it and
/// alone is printed; the figures over a full run are bench/oltp.sh's, on a quiet machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_beside_a_guarded_backfill_stays_consistent() {
    let admin = TestDb::new(Backend::Postgres).await;
    let name = format!("{}_pgbench", admin.tag);
    admin.exec(&format!("CREATE DATABASE {name}")).await;
    let url = format!("{}/{name}", admin.url.rsplit_once('/').expect("a URL").0);
    let pgbench = common::pg_cluster::pg_bin_dir().join("pgbench");
    let dir = admin.dir.path().to_path_buf();
    let init = std::process::Command::new(&pgbench)
        .args([&url, "-i", "-q", "-s", "2", "--foreign-keys"])
        .output()
        .expect("run pgbench -i");
    assert!(init.status.success(), "pgbench -i: {}", text(&init.stderr));

    // p99 in ms of the transactions pgbench logged under `prefix`.
    let p99 = |prefix: &str| {
        let mut times: Vec<u64> = std::fs::read_dir(&dir)
            .expect("the test's directory")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .flat_map(|e| {
                std::fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.split_whitespace().nth(2)?.parse().ok())
                    .collect::<Vec<u64>>()
            })
            .collect();
        times.sort_unstable();
        assert!(!times.is_empty(), "pgbench logged no transaction");
        times[(times.len() * 99 / 100).min(times.len() - 1)] as f64 / 1000.0
    };
    let load = |prefix: &str, seconds: &str| {
        std::process::Command::new(&pgbench)
            .args([
                &url,
                "-n",
                "-R",
                "100",
                "-T",
                seconds,
                "-c",
                "2",
                "--max-tries=1",
                "--failures-detailed",
                "-l",
                &format!("--log-prefix={}", dir.join(prefix).display()),
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start pgbench")
    };
    let failed = |out: &std::process::Output| {
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "pgbench: {all}");
        all.lines()
            .find(|l| l.starts_with("number of failed transactions"))
            .and_then(|l| {
                l.split(':')
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or_else(|| panic!("pgbench's failure count: {all}"))
    };

    let idle = load("idle", "5").wait_with_output().expect("pgbench");
    assert_eq!(failed(&idle), 0);
    let plan = admin.plan(
        "pgbench.toml",
        &format!(
            "name = \"{name}\"\ndatabase = \"{url}\"\nmax_latency_increase = \"2x\"\n\n\
             [[steps]]\nname = \"accounts\"\ntable = \"pgbench_accounts\"\nkey = \"aid\"\n\
             sql = \"UPDATE pgbench_accounts SET filler = md5(aid::text) WHERE aid BETWEEN :start AND :end\"\n"
        ),
    );
    let beside = load("beside", "20");
    let started = std::time::Instant::now();
    let run = run_cmd(&["run", path_str(&plan), "--quiet"]);
    let took = started.elapsed();
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}{}",
        text(&run.stdout),
        text(&run.stderr)
    );
    let beside = beside.wait_with_output().expect("pgbench");
    assert_eq!(
        failed(&beside),
        0,
        "a client transaction failed beside godwit"
    );

    let db = TestDb {
        backend: Backend::Postgres,
        url: url.clone(),
        dir: tempfile::tempdir().expect("temp dir"),
        tag: admin.tag.clone(),
    };
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM pgbench_accounts WHERE filler IS DISTINCT FROM md5(aid::text)"
        )
        .await,
        0,
        "every account rewritten"
    );
    let sums = db
        .scalar(
            "SELECT count(*) FROM (SELECT sum(abalance) AS a FROM pgbench_accounts) acc, \
             (SELECT sum(bbalance) AS b FROM pgbench_branches) br, \
             (SELECT sum(tbalance) AS t FROM pgbench_tellers) te, \
             (SELECT coalesce(sum(delta), 0) AS h FROM pgbench_history) hi \
             WHERE a = b AND a = t AND a = h",
        )
        .await;
    assert_eq!(sums, 1, "pgbench's balances add up");
    eprintln!(
        "pgbench p99: {:.1} ms alone, {:.1} ms beside the guarded backfill (200,000 accounts in {:.1}s)",
        p99("idle"),
        p99("beside"),
        took.as_secs_f64()
    );
    drop(db);
    admin
        .exec(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await;
}
