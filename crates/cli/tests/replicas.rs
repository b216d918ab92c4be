//! Throttling on replica lag (`replicas`, `max_replica_lag`), through the real binary: a real
//! PostgreSQL streaming replica started by the test, whose replay it pauses; the primary's own
//! `pg_stat_replication`; replicas that cannot answer (down, not replicas, a URL that does
//! not parse), beside a `throttle_query`; and the plans refused for databases without
//! replicas.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::replica::PgReplica;
use common::{
    assert_finishes_each_row_once, free_port, path_str, poll_until, run_cmd, send_signal,
    spawn_watched, status_json, text, Backend, KillOnDrop, TestDb, Watched,
};
use serde_json::Value as Json;

/// The `throttled` of the step named `step` in `status --json`.
fn throttled(plan: &Path, step: &str) -> String {
    let status = status_json(plan);
    let steps = status["steps"].as_array().cloned().unwrap_or_default();
    steps
        .iter()
        .find(|s| s["name"] == step)
        .and_then(|s| s["throttled"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// Waits until `status` says the step `step` is throttled for a reason containing every one
/// of `why`, and returns the reason.
async fn until_throttled(plan: &Path, step: &str, why: &[&str]) -> String {
    let mut reason = String::new();
    poll_until(
        &format!("status to say step {step} is throttled ({why:?})"),
        Duration::from_secs(30),
        async || {
            reason = throttled(plan, step);
            why.iter().all(|w| reason.contains(w))
        },
    )
    .await;
    reason
}

/// How many batches the run's worker has in flight, as `status` shows.
fn in_flight(plan: &Path) -> i64 {
    status_json(plan)["workers"][0]["batches_in_flight"]
        .as_i64()
        .unwrap_or(0)
}

fn rows_done(plan: &Path) -> i64 {
    status_json(plan)["steps"][0]["rows_done"]
        .as_i64()
        .unwrap_or(0)
}

/// A plan adding 1 to each row of `table` in batches of 10 keys, each row sleeping `sleep`
/// seconds, with `head` (the replica keys) written at the top.
fn lag_plan(db: &TestDb, table: &str, head: &str, sleep: f64) -> PathBuf {
    db.plan(
        &format!("{table}.toml"),
        &format!(
            "name = \"{table}\"\ndatabase = \"{}\"\n{head}\n\n\
             [defaults]\nbatch_size = 10\nadaptive = false\n\n\
             [[steps]]\nname = \"s\"\ntable = \"{table}\"\nkey = \"id\"\n\
             sql = \"UPDATE {table} SET hits = hits + 1 + CASE WHEN pg_sleep({sleep}) IS NULL THEN 1 ELSE 0 END \
             WHERE id BETWEEN :start AND :end\"\n",
            db.url
        ),
    )
}

async fn rows_changed(db: &TestDb, table: &str) -> i64 {
    db.scalar(&format!("SELECT count(*) FROM {table} WHERE hits > 0"))
        .await
}

async fn assert_every_row_once(db: &TestDb, table: &str) {
    assert_eq!(
        db.scalar(&format!("SELECT count(*) FROM {table} WHERE hits <> 1"))
            .await,
        0,
        "every row of {table} once"
    );
}

/// Resumes WAL replay on `replica`, then waits up to `limit` for the throttled `run` to exit 0
/// having changed every row of `table` once.
async fn resume_and_finish(
    replica: &PgReplica,
    run: &mut Watched,
    db: &TestDb,
    table: &str,
    limit: Duration,
) {
    replica.exec("SELECT pg_wal_replay_resume()").await;
    assert_finishes_each_row_once(run, db, table, limit).await;
}

/// `godwit check PLAN`: its exit code and everything it printed.
fn check(plan: &Path) -> (Option<i32>, String) {
    let out = run_cmd(&["check", path_str(plan)]);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    (out.status.code(), all)
}

/// With a real streaming replica of the test server: first the primary's own view of its
/// replicas (`max_replica_lag` without `replicas`), then the replica listed in `replicas`.
/// Each pauses WAL replay on the replica mid-run, sees the run throttled with the lag as the
/// reason and no row change, resumes replay, and sees the run finish with every row updated
/// once. One test, as the primary's view takes in every replica connected to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_lag_throttles_until_replay_resumes() {
    let db = TestDb::new(Backend::Postgres).await;
    let replica = PgReplica::start().await;
    primary_view_throttles_while_replay_is_paused(&db, &replica).await;
    listed_replica_throttles_while_replay_is_paused(&db, &replica).await;
}

/// `max_replica_lag` alone, on PostgreSQL: the lag is the primary's `pg_stat_replication`.
/// With the replica caught up, `check` passes and a run goes on; with replay paused, the next
/// run waits until it resumes.
async fn primary_view_throttles_while_replay_is_paused(db: &TestDb, replica: &PgReplica) {
    let t = db.table("primary");
    db.counter_table(&t, 1..=40).await;
    let plan = lag_plan(db, &t, "max_replica_lag = \"1s\"", 0.0);
    let (code, all) = check(&plan);
    assert_eq!(code, Some(0), "check with a replica connected: {all}");
    let out = run_cmd(&["run", path_str(&plan), "--quiet"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_every_row_once(db, &t).await;

    let paused = db.table("primary_paused");
    db.counter_table(&paused, 1..=40).await;
    replica.exec("SELECT pg_wal_replay_pause()").await;
    // The primary sees the lag grow as WAL it sends goes unreplayed: write some, until the
    // lag it shows is past the limit, so that the run is throttled from its start.
    poll_until(
        "the primary to see its replica lag",
        Duration::from_secs(30),
        async || {
            db.exec(&format!("UPDATE {paused} SET grp = grp WHERE id = 1"))
                .await;
            db.scalar(
                "SELECT count(*) FROM pg_stat_replication WHERE replay_lag > interval '2 seconds'",
            )
            .await
                > 0
        },
    )
    .await;
    let plan = lag_plan(db, &paused, "max_replica_lag = \"1s\"", 0.0);
    let mut run = KillOnDrop(spawn_watched(&["run", path_str(&plan), "--json"]));
    let reason = until_throttled(&plan, "s", &["replica lag", "> 1s on a replica of"]).await;
    assert!(
        reason.contains("127.0.0.1:5432"),
        "names the primary: {reason}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        rows_changed(db, &paused).await,
        0,
        "a batch ran while throttled"
    );
    resume_and_finish(replica, &mut run, db, &paused, Duration::from_secs(60)).await;
}

/// The replica in `replicas`: a slow run (batches of 10 keys, half a second each, one at a
/// time) is throttled once replay pauses: the batch in flight finishes, then nothing moves.
async fn listed_replica_throttles_while_replay_is_paused(db: &TestDb, replica: &PgReplica) {
    let t = db.table("listed");
    db.counter_table(&t, 1..=300).await;
    let head = format!(
        "replicas = [\"{}\"]\nmax_replica_lag = \"1s\"",
        replica.url()
    );
    let plan = lag_plan(db, &t, &head, 0.05);
    let (code, all) = check(&plan);
    assert_eq!(code, Some(0), "check with a live replica: {all}");
    let mut run = KillOnDrop(spawn_watched(&[
        "run",
        path_str(&plan),
        "--json",
        "--concurrency",
        "1",
    ]));
    poll_until(
        "some rows to be done",
        Duration::from_secs(60),
        async || rows_done(&plan) >= 20,
    )
    .await;
    replica.exec("SELECT pg_wal_replay_pause()").await;
    let port = replica.url().rsplit_once(':').map(|(_, p)| p).unwrap_or("");
    let shown = format!("postgres://godwit:***@127.0.0.1:{port}");
    let reason = until_throttled(&plan, "s", &["replica lag ", "s > 1s on ", &shown]).await;
    // The batch in flight when it said so finishes; nothing new starts.
    poll_until(
        "the batch in flight to end",
        Duration::from_secs(10),
        async || in_flight(&plan) == 0,
    )
    .await;
    let before = (rows_changed(db, &t).await, rows_done(&plan));
    assert!(
        before.0 < 300,
        "the run ended before the throttle: {before:?}"
    );
    // Two more looks at the replica (every 2 s), and nothing moves.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = (rows_changed(db, &t).await, rows_done(&plan));
    assert_eq!(after, before, "batches ran while throttled ({reason})");
    assert!(run.alive(), "the run waits while throttled");
    resume_and_finish(replica, &mut run, db, &t, Duration::from_secs(120)).await;
    assert_eq!(status_json(&plan)["steps"][0]["throttled"], Json::Null);
}

/// Replicas that cannot answer throttle every step, one-off and chunked, each naming itself:
/// one down (a closed port), the test server itself (no replica), URLs that do not parse. A
/// `throttle_query` beside them adds its own reason and, once it clears, leaves theirs. No
/// password is shown or stored; nothing runs; SIGTERM stops the run (exit 75).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_answer_throttles_every_step() {
    let db = TestDb::new(Backend::Postgres).await;
    let t = db.table("down");
    let marker = db.table("marker");
    let switch = db.table("switch");
    db.counter_table(&t, 1..=50).await;
    db.exec(&format!("CREATE TABLE {marker} (n INT)")).await;
    db.exec(&format!("CREATE TABLE {switch} (paused BOOLEAN NOT NULL)"))
        .await;
    db.exec(&format!("INSERT INTO {switch} VALUES (true)"))
        .await;
    // Free, so nothing answers there: a replica that is down.
    let down = free_port();
    let plan = db.plan(
        "down.toml",
        &format!(
            "name = \"{t}\"\ndatabase = \"{url}\"\n\
             replicas = [\"postgres://godwit:S3cr3tDown@127.0.0.1:{down}/godwit_test\", \"{url}\", \
             \"postgres://u:S3cr3t?Q@127.0.0.1/db\", \"host=h password=S3cr3tV dbname=x\"]\n\n\
             [[steps]]\nname = \"once\"\nsql = \"INSERT INTO {marker} VALUES (1)\"\n\n\
             [[steps]]\nname = \"s\"\ntable = \"{t}\"\nkey = \"id\"\n\
             throttle_query = \"SELECT paused FROM {switch}\"\n\
             sql = \"UPDATE {t} SET hits = hits + 1 WHERE id BETWEEN :start AND :end\"\n",
            url = db.url
        ),
    );
    let (code, all) = check(&plan);
    assert_eq!(code, Some(2), "{all}");
    let server = godwit_driver::redact_url(&db.url);
    // Each problem at its URL in the list: the first at column 13, the test server's after it.
    let line = std::fs::read_to_string(&plan).expect("the plan");
    let line = line.lines().nth(2).expect("line 3");
    let primary_at = line.find(&format!("\"{}\"", db.url)).expect("the URL") + 1;
    for (place, what) in [
        (
            ":3:13: cannot read the replica lag from the replica postgres://godwit:***@127.0.0.1:"
                .to_string(),
            "the replica down",
        ),
        (
            format!(
                ":3:{primary_at}: the replica {server} is not a replica (it is not in recovery)"
            ),
            "the test server",
        ),
    ] {
        assert!(
            all.contains(&place),
            "check names {what} at its place: {all}"
        );
    }
    assert!(!all.contains("S3cr3t"), "{all}");

    let mut run = KillOnDrop(spawn_watched(&["run", path_str(&plan), "--json"]));
    let replicas_say = [
        format!("cannot read the replica lag from the replica postgres://godwit:***@127.0.0.1:{down}/godwit_test, so the step waits"),
        format!("the replica {server} is not a replica (it is not in recovery), so the step waits"),
    ];
    let replicas_say: Vec<&str> = replicas_say.iter().map(String::as_str).collect();
    let mut both = replicas_say.clone();
    both.push("throttle_query returned true; ");
    let reason = until_throttled(&plan, "s", &both).await;
    assert!(
        reason.starts_with("throttle_query returned true; "),
        "the step's own signal first, each reason once, joined by \"; \": {reason}"
    );
    assert_eq!(reason.matches("; ").count(), 4, "five signals: {reason}");
    until_throttled(&plan, "once", &replicas_say).await;
    assert!(
        !throttled(&plan, "once").contains("throttle_query"),
        "a one-off step has no throttle_query"
    );
    // The throttle query clears; the replicas still throttle.
    db.exec(&format!("UPDATE {switch} SET paused = false"))
        .await;
    poll_until(
        "the throttle query's reason to go",
        Duration::from_secs(30),
        async || !throttled(&plan, "s").contains("throttle_query"),
    )
    .await;
    let reason = until_throttled(&plan, "s", &replicas_say).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(in_flight(&plan), 0, "a batch runs while throttled");
    assert_eq!(rows_changed(&db, &t).await, 0, "nothing ran: {reason}");
    assert_eq!(
        db.scalar(&format!("SELECT count(*) FROM {marker}")).await,
        0,
        "the one-off step ran while throttled"
    );

    let status = text(&run_cmd(&["status", path_str(&plan), "--json"]).stdout);
    send_signal(run.child.id(), "TERM");
    assert_eq!(
        run.finish(Duration::from_secs(30)),
        Some(75),
        "{}",
        run.stderr_text()
    );
    let stored = db
        .query(&format!(
            "SELECT plan_text FROM godwit_runs WHERE run = '{t}'"
        ))
        .await;
    let stored = format!("{:?}", stored[0][0]);
    let output = run.output_so_far();
    for (what, seen) in [
        ("status", status.as_str()),
        ("the stored plan", stored.as_str()),
        ("the run's output", output.as_str()),
    ] {
        assert!(!seen.contains("S3cr3t"), "a password in {what}: {seen}");
    }
}

/// A MariaDB server that is no replica (the test server itself), listed in `replicas`:
/// `check` says so and a run waits, saying so, until stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mariadb_server_that_is_no_replica_throttles() {
    let db = TestDb::new(Backend::MySql).await;
    let t = db.table("notrep");
    db.counter_table(&t, 1..=20).await;
    let plan = db.plan(
        "notrep.toml",
        &format!(
            "name = \"{t}\"\ndatabase = \"{url}\"\nreplicas = [\"{url}\"]\n\n\
             [[steps]]\nname = \"s\"\ntable = \"{t}\"\nkey = \"id\"\n\
             sql = \"UPDATE {t} SET hits = hits + 1 WHERE id BETWEEN :start AND :end\"\n",
            url = db.url
        ),
    );
    let said = "is not a replica (SHOW REPLICA STATUS gives no row)";
    let (code, all) = check(&plan);
    assert_eq!(code, Some(2), "{all}");
    assert!(
        all.contains(&format!(
            ":3:13: the replica {} {said}",
            godwit_driver::redact_url(&db.url)
        )),
        "{all}"
    );
    let mut run = KillOnDrop(spawn_watched(&["run", path_str(&plan), "--json"]));
    until_throttled(&plan, "s", &[said]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rows_changed(&db, &t).await, 0, "nothing ran");
    send_signal(run.child.id(), "TERM");
    assert_eq!(
        run.finish(Duration::from_secs(30)),
        Some(75),
        "{}",
        run.stderr_text()
    );
}

/// `run` and `check` exit 2, naming the key where it is written and storing nothing, for
/// replicas a database cannot have (SQLite) or cannot list (`max_replica_lag` without
/// `replicas` on MariaDB, which tells a replica's lag only on the replica).
async fn refuses_replicas_it_cannot_watch(backend: Backend, head: &str, says: &str) {
    let db = TestDb::new(backend).await;
    let t = db.table("refused");
    db.counter_table(&t, 1..=3).await;
    let plan = db.plan(
        "refused.toml",
        &format!(
            "name = \"{t}\"\ndatabase = \"{}\"\n{head}\n\n\
             [[steps]]\nname = \"s\"\ntable = \"{t}\"\nkey = \"id\"\n\
             sql = \"UPDATE {t} SET hits = hits + 1 WHERE id BETWEEN :start AND :end\"\n",
            db.url
        ),
    );
    let expected = format!("{}:3:1: {says}", plan.display());
    for command in ["run", "check"] {
        // Bounded: a run that is not refused would wait for replicas that never answer.
        let mut ran = KillOnDrop(spawn_watched(&[command, path_str(&plan)]));
        let code = ran.finish(Duration::from_secs(30));
        let all = ran.output_so_far();
        assert_eq!(code, Some(2), "{command}: {all}");
        assert!(all.contains(&expected), "{command}: {expected:?} in {all}");
    }
    assert_eq!(
        db.scalar(&format!("SELECT count(*) FROM {t} WHERE hits > 0"))
            .await,
        0
    );
    let runs = db
        .conn()
        .await
        .query(&format!("SELECT 1 FROM godwit_runs WHERE run = '{t}'"), &[])
        .await
        .unwrap_or_default();
    assert!(runs.is_empty(), "a refused plan stored its run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_refuses_replicas() {
    refuses_replicas_it_cannot_watch(
        Backend::Sqlite,
        "replicas = [\"sqlite:///tmp/copy.db\"]",
        "`replicas` cannot work on SQLite, which has no replicas",
    )
    .await;
    refuses_replicas_it_cannot_watch(
        Backend::Sqlite,
        "max_replica_lag = \"5s\"",
        "`max_replica_lag` cannot work on SQLite, which has no replicas",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_refuses_max_replica_lag_without_replicas() {
    refuses_replicas_it_cannot_watch(
        Backend::MySql,
        "max_replica_lag = \"5s\"",
        "`max_replica_lag` without `replicas` reads the replicas' lag from the plan's database, which only PostgreSQL tells; MySQL/MariaDB tells a replica's lag on the replica itself, so list the replicas to watch",
    )
    .await;
}
