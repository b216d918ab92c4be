//! Fleets of `godwit worker` processes on one submitted run, under chaos: workers killed with
//! SIGKILL at random moments and replaced, a worker frozen (SIGSTOP) past its lease and thawed,
//! and a PostgreSQL restart mid-run. Whatever happens, every batch is applied once (state in
//! the plan's database) or at least once (a separate state database), and the run finishes.
//!
//! A worker joins every unfinished run in its state database, so no test here shares one with
//! another test: each works in a PostgreSQL schema of its own on the shared server (a URL with
//! `options=-c search_path=…` puts both the data and the `godwit_*` tables there), or in a
//! private PostgreSQL cluster that it may restart without disturbing anyone.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::fleet::{rows_done, status, try_status, worker_entry, Fleet};
use common::pg_cluster::PgCluster;
use common::{path_str, poll_until, run_cmd, send_signal, text, uuid_like};
use godwit_driver::{Conn, DbUrl};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

// ---------------------------------------------------------------------------------------------
// Databases
// ---------------------------------------------------------------------------------------------

/// A database the test reads and writes itself, not through godwit.
#[derive(Clone)]
struct Db {
    url: String,
}

impl Db {
    fn new(url: impl Into<String>) -> Db {
        Db { url: url.into() }
    }

    async fn try_conn(&self) -> godwit_driver::Result<Box<dyn Conn>> {
        godwit_db::connect(&DbUrl::new(self.url.clone()), &Default::default()).await
    }

    async fn exec(&self, sql: &str) {
        let mut conn = self
            .try_conn()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", DbUrl::new(self.url.clone())));
        conn.execute_unprepared(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The first column of every row, as integers.
    async fn try_ints(&self, sql: &str) -> godwit_driver::Result<Vec<i64>> {
        let mut conn = self.try_conn().await?;
        let rows = conn.query(sql, &[]).await?;
        Ok(rows
            .iter()
            .map(|r| {
                r.get(0)
                    .as_i64()
                    .unwrap_or_else(|| panic!("{sql} gave {:?}, not an integer", r.get(0)))
            })
            .collect())
    }

    async fn ints(&self, sql: &str) -> Vec<i64> {
        self.try_ints(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Every column of the first row, as integers.
    async fn row(&self, sql: &str) -> Vec<i64> {
        let mut conn = self
            .try_conn()
            .await
            .unwrap_or_else(|e| panic!("cannot connect: {e}"));
        let rows = conn
            .query(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows[0]
            .clone()
            .into_values()
            .iter()
            .map(|v| {
                v.as_i64()
                    .unwrap_or_else(|| panic!("{sql} gave {v:?}, not an integer"))
            })
            .collect()
    }

    async fn try_scalar(&self, sql: &str) -> godwit_driver::Result<i64> {
        Ok(self.try_ints(sql).await?[0])
    }

    async fn scalar(&self, sql: &str) -> i64 {
        self.ints(sql).await[0]
    }

    async fn texts(&self, sql: &str) -> Vec<String> {
        let mut conn = self
            .try_conn()
            .await
            .unwrap_or_else(|e| panic!("cannot connect: {e}"));
        conn.query(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .iter()
            .map(|r| match r.get(0) {
                godwit_driver::Value::Text(s) => s.clone(),
                other => panic!("{sql} gave {other:?}, not text"),
            })
            .collect()
    }
}

/// A schema of this test's own on the shared PostgreSQL server (`GODWIT_TEST_PG`), dropped
/// with everything in it when the test ends, pass or fail.
struct Schema {
    base: String,
    name: String,
}

impl Schema {
    async fn create(label: &str) -> Schema {
        let base = std::env::var("GODWIT_TEST_PG").expect(
            "GODWIT_TEST_PG is not set: run the tests with `eval \"$(scripts/test-services.sh)\"`, which starts PostgreSQL",
        );
        let name = format!("fleet_{label}_{}", &uuid_like()[..10]);
        Db::new(base.clone())
            .exec(&format!("CREATE SCHEMA {name}"))
            .await;
        Schema { base, name }
    }

    /// A URL whose connections see this schema only: tables created through it land here.
    fn url(&self) -> String {
        let sep = if self.base.contains('?') { '&' } else { '?' };
        format!("{}{sep}options=-c%20search_path%3D{}", self.base, self.name)
    }

    fn db(&self) -> Db {
        Db::new(self.url())
    }

    /// Fails the test unless godwit's state tables were created in this schema.
    async fn assert_holds_state_tables(&self) {
        let n = Db::new(self.base.clone())
            .scalar(&format!(
                "SELECT COUNT(*) FROM information_schema.tables \
                 WHERE table_schema = '{}' AND table_name IN ('godwit_runs', 'godwit_batches')",
                self.name
            ))
            .await;
        assert_eq!(
            n, 2,
            "the godwit_* tables were not created in the schema {} named by the URL's search_path",
            self.name
        );
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (url, name) = (self.base.clone(), self.name.clone());
        // Drop runs inside the test's runtime, which cannot block on itself: use a thread.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let mut conn = Db::new(url).try_conn().await?;
                conn.execute_unprepared(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                    .await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(_))) {
            eprintln!("could not drop the schema {}: {dropped:?}", self.name);
        }
    }
}

/// A PostgreSQL cluster of this test's own, which it may restart at will.
fn private_pg() -> PgCluster {
    let mut cluster = PgCluster::init("godwit-fleet-pg");
    cluster.start(&["fsync=off", "max_connections=200"]);
    cluster
}

// ---------------------------------------------------------------------------------------------
// Workers
// ---------------------------------------------------------------------------------------------

/// `worker` values of godwit's claims carry `host:pid:suffix`.
fn held_by(pid: u32) -> String {
    format!("worker LIKE '%:{pid}:%'")
}

const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

// ---------------------------------------------------------------------------------------------
// The chaos run shared by the first two tests
// ---------------------------------------------------------------------------------------------

/// Rows in the table the chaos tests migrate.
const ROWS: i64 = 20_000;
const BATCH: i64 = 100;
const LEASE: Duration = Duration::from_secs(3);

/// Creates `t (id, v)` with `ROWS` rows and `hist (id)`, which has no unique constraint so
/// that a batch inserted twice shows.
async fn chaos_tables(data: &Db) {
    data.exec("CREATE TABLE t (id BIGINT PRIMARY KEY, v INT NOT NULL DEFAULT 0)")
        .await;
    data.exec(&format!(
        "INSERT INTO t (id) SELECT g FROM generate_series(1, {ROWS}) g"
    ))
    .await;
    data.exec("CREATE TABLE hist (id BIGINT NOT NULL)").await;
}

/// Two steps over `t`: a non-idempotent update, then a copy of the ids into `hist`; each
/// batch sleeps `sleep` seconds once, so that the run lasts and chaos finds batches in flight.
/// The sleep is a fixed cost per batch, which the sizer answers with larger batches (keys as
/// cheap as these would get as long): `max_batch_size` keeps them at `BATCH`.
fn chaos_plan(name: &str, data_url: &str, state_url: Option<&str>, sleep: f64) -> String {
    // Through `${VAR}`: `submit` refuses a password written in the plan.
    let data_url = common::plan_url(data_url);
    let state = state_url
        .map(|url| format!("[state]\ndatabase = \"{}\"\n\n", common::plan_url(url)))
        .unwrap_or_default();
    format!(
        r#"name = "{name}"
database = "{data_url}"

{state}[defaults]
batch_size = {BATCH}
max_batch_size = {BATCH}
lease = "{lease}s"

[[steps]]
name = "bump"
table = "t"
key = "id"
sql = "UPDATE t SET v = v + 1 WHERE id BETWEEN :start AND :end AND (SELECT pg_sleep({sleep})) IS NOT NULL"

[[steps]]
name = "history"
after = ["bump"]
table = "t"
key = "id"
sql = "INSERT INTO hist (id) SELECT id FROM t WHERE id BETWEEN :start AND :end AND (SELECT pg_sleep({sleep})) IS NOT NULL"
"#,
        lease = LEASE.as_secs()
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chaos {
    /// kill -9 a random worker and start a new one.
    Kill,
    /// SIGSTOP a worker holding a batch until its lease ran out and others finished its
    /// batches (the server ends its idle transaction and frees its locks), then SIGCONT.
    Freeze,
    /// Crash-restart PostgreSQL (`pg_ctl restart -m immediate`).
    Restart,
}

struct ChaosRun<'a> {
    plan: &'a Path,
    /// Where the `godwit_*` tables live: what workers are given.
    state: Db,
    /// Restarted by [`Chaos::Restart`].
    cluster: Option<&'a PgCluster>,
    workers: usize,
    concurrency: u32,
    actions: Vec<Chaos>,
}

/// Submits the plan, runs a fleet of workers on it, applies `actions` in a random order at
/// random moments while the run is under way, waits for the run to be done and stops the
/// workers (each must exit 75). Returns what was done, for messages.
async fn run_with_chaos(c: ChaosRun<'_>, rng: &mut StdRng, dir: &Path) -> Vec<String> {
    let out = run_cmd(&["submit", path_str(c.plan)]);
    assert_eq!(out.status.code(), Some(0), "submit: {}", text(&out.stderr));
    let st = status(c.plan).await;
    assert_eq!(st["state"], "pending", "a submitted run waits for workers");

    let started = Instant::now();
    let concurrency = c.concurrency.to_string();
    let worker_args = ["--concurrency", concurrency.as_str(), "--grace", "10s"];
    let mut fleet = Fleet::new(&c.state.url, dir);
    for _ in 0..c.workers {
        fleet.spawn(&worker_args);
    }
    // Mid-run: every worker has joined and batches are being done.
    let mut st = serde_json::Value::Null;
    poll_until(
        "every worker to show in status and the first batches to be done",
        Duration::from_secs(30),
        async || {
            st = status(c.plan).await;
            let workers = st["workers"].as_array().map_or(0, Vec::len);
            workers >= c.workers && rows_done(&st).first().copied().unwrap_or(0) > 0
        },
    )
    .await;
    assert_eq!(st["state"], "running");

    let mut actions = c.actions.clone();
    actions.shuffle(rng);
    // A freeze goes in the first half, on the update: its row locks are what the server must
    // free from a frozen worker (an insert into `hist` locks nothing others wait for).
    let half = actions.len() / 2;
    if let Some(at) = actions.iter().position(|&a| a == Chaos::Freeze) {
        if at >= half && half > 0 {
            actions.swap(at, rng.random_range(0..half));
        }
    }
    let mut done = Vec::new();
    for (i, action) in actions.into_iter().enumerate() {
        if i == c.actions.len() / 2 {
            // The second half of the chaos hits the second step.
            poll_until(
                "the second step to be under way",
                Duration::from_secs(60),
                async || {
                    rows_done(&status(c.plan).await)
                        .get(1)
                        .is_some_and(|&n| n > 0)
                },
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..2000))).await;
        let st = status(c.plan).await;
        assert_eq!(
            st["state"], "running",
            "the run ended before all the chaos ({done:?}) was applied; make it last longer"
        );
        let at = format!(
            "{action:?} at {:.1}s, rows done {:?}",
            started.elapsed().as_secs_f64(),
            rows_done(&st)
        );
        match action {
            Chaos::Kill => {
                let pids = fleet.pids();
                let victim = pids[rng.random_range(0..pids.len())];
                fleet.kill(victim);
                fleet.spawn(&worker_args);
            }
            Chaos::Freeze => freeze_one(&fleet, &c, rng).await,
            Chaos::Restart => c
                .cluster
                .expect("a restart needs the private cluster")
                .restart("immediate"),
        }
        let at = format!("{at}, over at {:.1}s", started.elapsed().as_secs_f64());
        // What a user checks after each blow: every worker of the fleet is back at work,
        // beating in `status` (a replacement has joined, the thawed worker and those that
        // lost their connections to the restart are beating again).
        let pids = fleet.pids();
        poll_until(
            &format!("every worker {pids:?} to beat again after {action:?}"),
            Duration::from_secs(20),
            async || {
                let Ok(st) = try_status(c.plan) else {
                    return false;
                };
                st["state"] == "done"
                    || pids.iter().all(|&pid| {
                        worker_entry(&st, pid).is_some_and(|w| {
                            w["last_seen_seconds"].as_f64().is_some_and(|s| s < 2.0)
                        })
                    })
            },
        )
        .await;
        done.push(format!(
            "{at}, every worker beating at {:.1}s",
            started.elapsed().as_secs_f64()
        ));
    }

    poll_until(
        "the run to be done",
        Duration::from_secs(150).saturating_sub(started.elapsed()),
        async || status(c.plan).await["state"] == "done",
    )
    .await;
    let codes = fleet.stop_all(Duration::from_secs(30)).await;
    assert!(
        codes.iter().all(|&c| c == Some(75)),
        "every worker stopped by SIGTERM exits 75, got {codes:?}:\n{}",
        fleet.logs_text()
    );
    done.push(format!("done at {:.1}s", started.elapsed().as_secs_f64()));
    done
}

/// Freezes a worker that holds a batch, waits until its heartbeat is stale in `status` and
/// every batch it held was finished by other workers, then thaws it.
async fn freeze_one(fleet: &Fleet, c: &ChaosRun<'_>, rng: &mut StdRng) {
    // A random worker among those with a batch in hand; they nearly always have one.
    let mut pid = 0;
    poll_until(
        "a worker holding a batch",
        Duration::from_secs(10),
        async || {
            let mut candidates = fleet.pids();
            candidates.shuffle(rng);
            for candidate in candidates {
                let held = c
                    .state
                    .try_scalar(&format!(
                        "SELECT COUNT(*) FROM godwit_batches WHERE state = 'claimed' AND {}",
                        held_by(candidate)
                    ))
                    .await
                    .unwrap_or(0);
                if held > 0 {
                    pid = candidate;
                    return true;
                }
            }
            false
        },
    )
    .await;
    send_signal(pid, "STOP");
    let frozen = Instant::now();
    // What it holds now stays held until its lease runs out; whatever it had begun stays
    // locked until the server ends its idle transaction.
    let held: Vec<String> = c
        .state
        .texts(&format!(
            "SELECT quote_literal(step || ':' || batch) FROM godwit_batches \
             WHERE state = 'claimed' AND {}",
            held_by(pid)
        ))
        .await;
    let unfinished = if held.is_empty() {
        "SELECT 0".to_string()
    } else {
        format!(
            "SELECT COUNT(*) FROM godwit_batches WHERE state <> 'done' AND step || ':' || batch IN ({})",
            held.join(", ")
        )
    };
    poll_until(
        "the frozen worker's heartbeat to go stale and other workers to finish its batches",
        // Generous on a loaded machine: how soon a dead worker's batches are taken over is
        // checked by `a_killed_workers_batches_are_taken_over_when_its_lease_ends`.
        Duration::from_secs(45),
        async || {
            let Ok(st) = try_status(c.plan) else {
                return false;
            };
            let stale = worker_entry(&st, pid).is_none_or(|w| {
                w["last_seen_seconds"].as_f64().unwrap_or(0.0) > LEASE.as_secs_f64()
            });
            let left = c.state.try_scalar(&unfinished).await;
            frozen.elapsed() > LEASE && stale && left.is_ok_and(|n| n == 0)
        },
    )
    .await;
    send_signal(pid, "CONT");
}

/// Fails unless status says the run and both its steps are done with every row counted once.
fn assert_status_done(st: &serde_json::Value) {
    assert_eq!(st["state"], "done", "{st}");
    for step in st["steps"].as_array().expect("steps") {
        assert_eq!(step["state"], "done", "{st}");
        assert_eq!(step["rows_done"], ROWS, "{st}");
        assert_eq!(step["batches_failed"], 0, "{st}");
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// A fleet of workers, several killed with SIGKILL at random moments and replaced, one frozen
/// past its lease and thawed, and PostgreSQL crash-restarted mid-run: the non-idempotent
/// update is applied to every row exactly once and the history holds every id exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_survive_kills_freezes_and_a_database_restart() {
    let seed: u64 = rand::random();
    eprintln!("chaos seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let cluster = private_pg();
    let url = cluster.url("postgres");
    let db = Db::new(url.clone());
    chaos_tables(&db).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = dir.path().join("plan.toml");
    std::fs::write(&plan, chaos_plan("fleet-chaos", &url, None, 0.5)).expect("write plan");

    let timeline = run_with_chaos(
        ChaosRun {
            plan: &plan,
            state: db.clone(),
            cluster: Some(&cluster),
            workers: 3,
            concurrency: 2,
            actions: vec![
                Chaos::Kill,
                Chaos::Kill,
                Chaos::Kill,
                Chaos::Kill,
                Chaos::Freeze,
                Chaos::Restart,
            ],
        },
        &mut rng,
        dir.path(),
    )
    .await;
    eprintln!("timeline (seed {seed}): {timeline:?}");

    let bumped = db.row("SELECT COUNT(*), MIN(v), MAX(v) FROM t").await;
    assert_eq!(
        bumped,
        vec![ROWS, 1, 1],
        "(rows, min v, max v) after {timeline:?}"
    );
    let hist = db
        .row("SELECT COUNT(*), COUNT(DISTINCT id), COUNT(*) FILTER (WHERE id NOT IN (SELECT id FROM t)) FROM hist")
        .await;
    assert_eq!(
        hist,
        vec![ROWS, ROWS, 0],
        "(history rows, distinct ids, unknown ids) after {timeline:?}"
    );
    assert_status_done(&status(&plan).await);
    let not_done = db
        .scalar("SELECT COUNT(*) FROM godwit_batches WHERE state <> 'done'")
        .await;
    assert_eq!(not_done, 0, "batches not done after {timeline:?}");
}

/// With `[state] database` elsewhere than the data, a batch and its record commit apart: the
/// same chaos may apply a batch twice, but none is left undone and the run finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_state_database_is_at_least_once_and_finishes() {
    let seed: u64 = rand::random();
    eprintln!("chaos seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let data_schema = Schema::create("data").await;
    let state_schema = Schema::create("state").await;
    let (data, state) = (data_schema.db(), state_schema.db());
    chaos_tables(&data).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = dir.path().join("plan.toml");
    let name = format!("fleet-{}", state_schema.name);
    std::fs::write(&plan, chaos_plan(&name, &data.url, Some(&state.url), 0.5)).expect("write plan");

    let timeline = run_with_chaos(
        ChaosRun {
            plan: &plan,
            state: state.clone(),
            cluster: None,
            workers: 3,
            concurrency: 2,
            actions: vec![Chaos::Kill, Chaos::Kill, Chaos::Kill, Chaos::Freeze],
        },
        &mut rng,
        dir.path(),
    )
    .await;
    eprintln!("timeline (seed {seed}): {timeline:?}");
    state_schema.assert_holds_state_tables().await;
    let stray = Db::new(data_schema.base.clone())
        .scalar(&format!(
            "SELECT COUNT(*) FROM information_schema.tables \
             WHERE table_schema = '{}' AND table_name LIKE 'godwit%'",
            data_schema.name
        ))
        .await;
    assert_eq!(stray, 0, "state tables in the data schema");

    let bumped = data
        .row("SELECT COUNT(*), COUNT(*) FILTER (WHERE v >= 1) FROM t")
        .await;
    assert_eq!(
        bumped,
        vec![ROWS, ROWS],
        "(rows, rows updated) after {timeline:?}"
    );
    let hist = data
        .row("SELECT COUNT(DISTINCT id), COUNT(*) FILTER (WHERE id NOT IN (SELECT id FROM t)) FROM hist")
        .await;
    assert_eq!(
        hist,
        vec![ROWS, 0],
        "(distinct ids in the history, unknown ids) after {timeline:?}"
    );
    let again = data.scalar("SELECT COUNT(*) FROM t WHERE v > 1").await;
    eprintln!("rows updated more than once (allowed here): {again}");
    assert_status_done(&status(&plan).await);
    let not_done = state
        .scalar("SELECT COUNT(*) FROM godwit_batches WHERE state <> 'done'")
        .await;
    assert_eq!(not_done, 0, "batches not done after {timeline:?}");
}

/// A worker killed mid-run loses its batches when its lease ends, not when the walk does: the
/// other workers take them over within a few seconds of the lease, while the step is still
/// being walked, as `status` and docs/fleets.md promise ("a worker silent that long loses its
/// batches").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_batches_are_taken_over_when_its_lease_ends() {
    let schema = Schema::create("takeover").await;
    let db = schema.db();
    db.exec("CREATE TABLE t (id BIGINT PRIMARY KEY, v INT NOT NULL DEFAULT 0)")
        .await;
    db.exec(&format!(
        "INSERT INTO t (id) SELECT g FROM generate_series(1, {ROWS}) g"
    ))
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = dir.path().join("plan.toml");
    // `max_batch_size`: the sleep is a fixed cost the sizer would grow batches past (see
    // `chaos_plan`), and the step must outlast the takeover.
    std::fs::write(
        &plan,
        format!(
            r#"name = "takeover"
database = "{url}"

[defaults]
batch_size = {BATCH}
max_batch_size = {BATCH}
lease = "{lease}s"

[[steps]]
name = "bump"
table = "t"
key = "id"
sql = "UPDATE t SET v = v + 1 WHERE id BETWEEN :start AND :end AND (SELECT pg_sleep(0.5)) IS NOT NULL"
"#,
            url = common::plan_url(&db.url),
            lease = LEASE.as_secs()
        ),
    )
    .expect("write plan");
    let out = run_cmd(&["submit", path_str(&plan)]);
    assert_eq!(out.status.code(), Some(0), "submit: {}", text(&out.stderr));
    schema.assert_holds_state_tables().await;

    let mut fleet = Fleet::new(&db.url, dir.path());
    for _ in 0..3 {
        fleet.spawn(&["--concurrency", "2"]);
    }
    poll_until(
        "three workers beating and the first batches done",
        Duration::from_secs(30),
        async || {
            let st = status(&plan).await;
            st["workers"].as_array().map_or(0, Vec::len) >= 3
                && rows_done(&st).first().is_some_and(|&n| n > 0)
        },
    )
    .await;
    // kill -9 a worker that holds batches; what it held stays claimed by it.
    let mut victim = 0;
    poll_until(
        "a worker holding batches",
        Duration::from_secs(10),
        async || {
            for pid in fleet.pids() {
                let held = db
                    .scalar(&format!(
                        "SELECT COUNT(*) FROM godwit_batches WHERE state = 'claimed' AND {}",
                        held_by(pid)
                    ))
                    .await;
                if held > 0 {
                    victim = pid;
                    return true;
                }
            }
            false
        },
    )
    .await;
    fleet.kill(victim);
    let killed = Instant::now();
    let held = db
        .ints(&format!(
            "SELECT batch FROM godwit_batches WHERE state = 'claimed' AND {} ORDER BY batch",
            held_by(victim)
        ))
        .await;
    let list = held
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ");

    // Taken over (claimed again by another worker, or done) a few seconds after the lease.
    let limit = LEASE + Duration::from_secs(5);
    let deadline = killed + limit;
    let (left, walked) = loop {
        let left = db
            .ints(&format!(
                "SELECT batch FROM godwit_batches WHERE batch IN ({list}) AND state = 'claimed' \
                 AND {} ORDER BY batch",
                held_by(victim)
            ))
            .await;
        let walked = db
            .scalar("SELECT COUNT(*) FROM godwit_steps WHERE exhausted = 1")
            .await
            > 0;
        if left.is_empty() || Instant::now() >= deadline {
            break (left, walked);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let st = status(&plan).await;
    assert!(
        left.is_empty(),
        "{:.1}s after the kill (lease {LEASE:?}) the killed worker still holds batches {left:?} \
         of {held:?}; the step's walk exhausted: {walked}; rows done {:?}",
        killed.elapsed().as_secs_f64(),
        rows_done(&st)
    );
    assert!(
        !walked,
        "the step was walked to its end before the takeover: this test proved nothing; \
         make the step longer"
    );
    let codes = fleet.stop_all(Duration::from_secs(30)).await;
    assert!(
        codes.iter().all(|&c| c == Some(75)),
        "workers stopped by SIGTERM exit 75: {codes:?}"
    );
}

/// Issue 11: the done record's token check, end to end. A worker is frozen (SIGSTOP) while its
/// long batch statement runs on the server; its lease runs out and a second worker takes the
/// batch over; the first is thawed while its session still runs that statement (long before
/// the server would end it), so its done record is tried for real, with the batch now carrying
/// the second worker's token. It must be refused: every row is changed once, and only by the
/// second worker's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_a_thawed_worker_is_fenced_by_its_done_record() {
    let schema = Schema::create("thawed").await;
    let db = schema.db();
    let table = format!("thawed_{}", &uuid_like()[..10]);
    let applied = format!("{table}_applied");
    db.exec(&format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, v INT NOT NULL DEFAULT 0)"
    ))
    .await;
    db.exec(&format!(
        "INSERT INTO {table} (id) SELECT g FROM generate_series(1, 10) g"
    ))
    .await;
    db.exec(&format!(
        "CREATE TABLE {applied} (id BIGINT NOT NULL, backend INT NOT NULL)"
    ))
    .await;
    // One batch. Its statement sleeps 6 s before it takes any row lock (the sleep is an
    // uncorrelated subquery, run once first), longer than the 2 s lease: the first worker's
    // session is still running it when the second worker claims the batch and the first is
    // thawed, so the server has no reason to end that session.
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        format!(
            r#"name = "{table}"
database = "{url}"

[defaults]
batch_size = 10
lease = "2s"

[[steps]]
name = "bump"
table = "{table}"
key = "id"
sql = "WITH bumped AS (UPDATE {table} SET v = v + 1 WHERE id BETWEEN :start AND :end AND (SELECT pg_sleep(6)) IS NOT NULL RETURNING id) INSERT INTO {applied} (id, backend) SELECT id, pg_backend_pid() FROM bumped"
"#,
            url = common::plan_url(&db.url)
        ),
    )
    .expect("write plan");
    let out = run_cmd(&["submit", path_str(&plan)]);
    assert_eq!(out.status.code(), Some(0), "submit: {}", text(&out.stderr));
    let statements = format!(
        "SELECT pid FROM pg_stat_activity WHERE state = 'active' \
         AND query LIKE 'WITH bumped AS (UPDATE {table} %' ORDER BY backend_start"
    );

    let mut fleet = Fleet::new(&db.url, dir.path());
    let first = fleet.spawn(&["--concurrency", "1", "--exit-when-idle"]);
    let mut first_backend = 0;
    poll_until(
        "the first worker's statement to run",
        Duration::from_secs(30),
        async || {
            let running = db.try_ints(&statements).await.unwrap_or_default();
            if running.len() == 1 {
                first_backend = running[0];
                return true;
            }
            false
        },
    )
    .await;
    send_signal(first, "STOP");
    poll_until(
        "the frozen worker's lease to run out",
        Duration::from_secs(15),
        async || {
            db.scalar(&format!(
                "SELECT COUNT(*) FROM godwit_batches WHERE state = 'claimed' AND {} \
                 AND lease_until_ms < {NOW_MS}",
                held_by(first)
            ))
            .await
                == 1
        },
    )
    .await;
    let second = fleet.spawn(&["--concurrency", "1", "--exit-when-idle"]);
    poll_until(
        "the second worker to take the batch over and run its statement",
        Duration::from_secs(15),
        async || {
            let claimed = db
                .scalar(&format!(
                    "SELECT COUNT(*) FROM godwit_batches WHERE state = 'claimed' AND {}",
                    held_by(second)
                ))
                .await;
            claimed == 1 && db.try_ints(&statements).await.unwrap_or_default().len() == 2
        },
    )
    .await;
    // Thawed while its session still runs the statement: its done record is what stops it.
    send_signal(first, "CONT");
    assert_eq!(
        db.try_ints(&statements).await.unwrap_or_default().first(),
        Some(&first_backend),
        "the first worker's session still runs its statement when thawed"
    );
    let first_code = fleet.wait_exit(first, Duration::from_secs(60)).await;
    let second_code = fleet.wait_exit(second, Duration::from_secs(60)).await;
    assert_eq!(
        (first_code, second_code),
        (Some(0), Some(0)),
        "{}",
        fleet.logs_text()
    );
    let rows = db
        .row(&format!("SELECT COUNT(*), MIN(v), MAX(v) FROM {table}"))
        .await;
    assert_eq!(rows, vec![10, 1, 1], "{}", fleet.logs_text());
    let log = db
        .row(&format!(
            "SELECT COUNT(*), COUNT(DISTINCT id), COUNT(*) FILTER (WHERE backend = {first_backend}) FROM {applied}"
        ))
        .await;
    assert_eq!(
        log,
        vec![10, 10, 0],
        "(applications, distinct rows, applications by the thawed worker's session):\n{}",
        fleet.logs_text()
    );
    let owners = db.texts("SELECT DISTINCT worker FROM godwit_batches").await;
    assert!(
        owners.iter().all(|w| w.contains(&format!(":{second}:"))),
        "the second worker recorded the batch: {owners:?}"
    );
    assert_eq!(status(&plan).await["state"], "done");
}

/// One worker is frozen (SIGSTOP) while its batch runs on the server; its lease runs out, the
/// server rolls its transaction back, a second worker takes the batch over and finishes the
/// run. Thawed (SIGCONT), the first worker commits nothing: every row is updated once, by the
/// second worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_worker_cannot_apply_its_batch_twice() {
    frozen_worker_commits_nothing(false).await;
}

/// The same with `[state] database` apart from the data. The first worker is frozen before
/// any commit, so the at-least-once window (a worker stopped between the batch's commit and
/// its record) is not open: it must apply nothing once thawed either ("if it comes back, its
/// commit is refused", docs/guarantees.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_worker_cannot_apply_its_batch_twice_with_separate_state() {
    frozen_worker_commits_nothing(true).await;
}

/// One worker (concurrency 1) is frozen mid-batch past its lease, a second finishes the run,
/// then the first is thawed: no row may be applied twice, nor by the frozen worker's session.
async fn frozen_worker_commits_nothing(separate_state: bool) {
    let schema = Schema::create("frozen").await;
    let db = schema.db();
    let state_schema = if separate_state {
        Some(Schema::create("frozen_state").await)
    } else {
        None
    };
    // Where godwit keeps its progress, and what the workers are given.
    let state = state_schema.as_ref().map_or_else(|| db.clone(), Schema::db);
    // Names unique on the server, to find this test's statement in pg_stat_activity.
    let table = format!("frozen_{}", &uuid_like()[..10]);
    let applied = format!("{table}_applied");
    db.exec(&format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, v INT NOT NULL DEFAULT 0)"
    ))
    .await;
    db.exec(&format!(
        "INSERT INTO {table} (id) SELECT g FROM generate_series(1, 20) g"
    ))
    .await;
    // Which server session applied each row: a frozen worker's would show here if it committed.
    db.exec(&format!(
        "CREATE TABLE {applied} (id BIGINT NOT NULL, backend INT NOT NULL)"
    ))
    .await;
    let state_section = if separate_state {
        format!(
            "[state]\ndatabase = \"{}\"\n\n",
            common::plan_url(&state.url)
        )
    } else {
        String::new()
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        format!(
            r#"name = "{table}"
database = "{url}"

{state_section}[defaults]
batch_size = 10
lease = "2s"

[[steps]]
name = "bump"
table = "{table}"
key = "id"
sql = "WITH bumped AS (UPDATE {table} SET v = v + 1 WHERE id BETWEEN :start AND :end AND (SELECT pg_sleep(2)) IS NOT NULL RETURNING id) INSERT INTO {applied} (id, backend) SELECT id, pg_backend_pid() FROM bumped"
"#,
            url = common::plan_url(&db.url)
        ),
    )
    .expect("write plan");
    let out = run_cmd(&["submit", path_str(&plan)]);
    assert_eq!(out.status.code(), Some(0), "submit: {}", text(&out.stderr));
    state_schema
        .as_ref()
        .unwrap_or(&schema)
        .assert_holds_state_tables()
        .await;

    let mut fleet = Fleet::new(&state.url, dir.path());
    let first = fleet.spawn(&["--concurrency", "1", "--exit-when-idle"]);
    // The first batch is claimed and its statement is running on the server.
    let mut backend = 0;
    poll_until(
        "the first worker's batch to be claimed and running",
        Duration::from_secs(30),
        async || {
            let claimed = state
                .try_scalar(&format!(
                    "SELECT COUNT(*) FROM godwit_batches WHERE state = 'claimed' AND {}",
                    held_by(first)
                ))
                .await
                .unwrap_or(0);
            let running = db
                .try_ints(&format!(
                    "SELECT pid FROM pg_stat_activity WHERE state = 'active' \
                     AND query LIKE 'WITH bumped AS (UPDATE {table} %'"
                ))
                .await
                .unwrap_or_default();
            if claimed > 0 && running.len() == 1 {
                backend = running[0];
                return true;
            }
            false
        },
    )
    .await;
    send_signal(first, "STOP");
    let held = state
        .ints(&format!(
            "SELECT batch FROM godwit_batches WHERE state = 'claimed' AND {} ORDER BY batch",
            held_by(first)
        ))
        .await;
    assert!(!held.is_empty(), "the frozen worker holds its batch");

    // Its lease runs out on the state database's clock, and status shows it silent that long.
    poll_until(
        "the frozen worker's lease to run out and status to show it silent",
        Duration::from_secs(15),
        async || {
            let expired = state
                .scalar(&format!(
                    "SELECT COUNT(*) FROM godwit_batches WHERE state = 'claimed' AND {} \
                     AND lease_until_ms < {NOW_MS}",
                    held_by(first)
                ))
                .await;
            let st = status(&plan).await;
            let silent = worker_entry(&st, first)
                .is_none_or(|w| w["last_seen_seconds"].as_f64().is_some_and(|s| s >= 2.0));
            expired == held.len() as i64 && silent && st["state"] == "running"
        },
    )
    .await;

    // A second worker takes the batch over and finishes the run while the first is frozen.
    let second = fleet.spawn(&["--concurrency", "1", "--exit-when-idle"]);
    let code = fleet.wait_exit(second, Duration::from_secs(45)).await;
    assert_eq!(
        code,
        Some(0),
        "the second worker finishes the run and exits:\n{}",
        fleet.logs_text()
    );
    let st = status(&plan).await;
    assert_eq!(st["state"], "done", "{st}");
    assert_eq!(st["steps"][0]["rows_done"], 20, "{st}");
    let gone = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE pid = {backend}"
        ))
        .await;
    assert_eq!(
        gone, 0,
        "the server ended the frozen worker's idle transaction"
    );
    let owners = state
        .texts("SELECT DISTINCT worker FROM godwit_batches")
        .await;
    assert!(
        owners.iter().all(|w| w.contains(&format!(":{second}:"))),
        "the second worker recorded every batch: {owners:?}"
    );

    // Thawed, the first worker finds its batch gone, commits nothing and leaves.
    send_signal(first, "CONT");
    let code = fleet.wait_exit(first, Duration::from_secs(30)).await;
    assert_eq!(
        code,
        Some(0),
        "the thawed worker finds the run done and exits:\n{}",
        fleet.logs_text()
    );
    let rows = db
        .row(&format!("SELECT COUNT(*), MIN(v), MAX(v) FROM {table}"))
        .await;
    assert_eq!(
        rows,
        vec![20, 1, 1],
        "(rows, min v, max v) after the frozen worker (which held batches {held:?}) was thawed:\n{}",
        fleet.logs_text()
    );
    let log = db
        .row(&format!(
            "SELECT COUNT(*), COUNT(DISTINCT id), COUNT(*) FILTER (WHERE backend = {backend}) FROM {applied}"
        ))
        .await;
    assert_eq!(
        log,
        vec![20, 20, 0],
        "(applications, distinct rows, applications by the frozen worker's session)"
    );
    assert_eq!(status(&plan).await["state"], "done");
}
