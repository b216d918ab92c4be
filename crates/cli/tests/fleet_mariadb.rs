//! A fleet of `godwit worker` processes on one submitted run while the MariaDB server that
//! holds both the data and the `godwit_*` tables is shut down and started again mid-run, and a
//! worker is killed with SIGKILL and replaced: every batch is applied exactly once and the run
//! finishes.
//!
//! The server is private to the test (its own data directory, socket and free port), so that
//! restarting it disturbs no other test.

mod common;

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::fleet::{rows_done, running_as_root, status, tail, try_status, worker_entry, Fleet};
use common::{path_str, poll_until, run_cmd, text};
use godwit_driver::{Conn, DbUrl};

/// Rows in `t`, and rows per batch.
const ROWS: i64 = 10_000;
const BATCH: i64 = 100;
/// Seconds each batch sleeps once on the server, so that the run lasts about 20 s.
const SLEEP: f64 = 0.5;

// ---------------------------------------------------------------------------------------------
// The test's own MariaDB server
// ---------------------------------------------------------------------------------------------

/// A numeric id printed by `id ARGS` (`-u mysql`, `-g mysql`).
fn os_id(args: &[&str]) -> u32 {
    let out = Command::new("id").args(args).output().expect("run id");
    assert!(
        out.status.success(),
        "id {args:?}: {} (is MariaDB installed? run scripts/test-services.sh)",
        text(&out.stderr)
    );
    text(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("id {args:?} printed no number: {e}"))
}

/// The first of `names` found in the usual places (MariaDB renamed its tools from `mysql*`).
fn find_tool(names: &[&str]) -> PathBuf {
    for name in names {
        for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
            let path = Path::new(dir).join(name);
            if path.exists() {
                return path;
            }
        }
    }
    panic!("none of {names:?} is installed: run scripts/test-services.sh, which installs MariaDB");
}

/// A MariaDB server of this test's own, on a free port, which it may restart at will. Killed
/// and deleted when dropped, pass or fail.
struct PrivateMariaDb {
    dir: tempfile::TempDir,
    port: u16,
    as_root: bool,
    server: Option<Child>,
}

impl PrivateMariaDb {
    fn start() -> PrivateMariaDb {
        let dir = tempfile::Builder::new()
            .prefix("godwit-fleet-mariadb")
            .tempdir()
            .expect("temp dir");
        let mut db = PrivateMariaDb {
            dir,
            port: 0,
            as_root: running_as_root(),
            server: None,
        };
        if db.as_root {
            // mariadbd will not run as root: the data directory belongs to the mysql user.
            let chown = Command::new("chown")
                .args(["-R", "mysql:mysql"])
                .arg(db.dir.path())
                .output()
                .expect("run chown");
            assert!(
                chown.status.success(),
                "chown mysql {}: {}",
                db.dir.path().display(),
                text(&chown.stderr)
            );
        }
        let data = db.data();
        let install = db.tool(
            &find_tool(&["mariadb-install-db", "mysql_install_db"]),
            &[
                "--no-defaults",
                &format!("--datadir={}", path_str(&data)),
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
        );
        assert!(
            install.status.success(),
            "mariadb-install-db failed: {}{}",
            text(&install.stdout),
            text(&install.stderr)
        );
        // A free port now may be taken by the time the server binds it: try a few.
        for _ in 0..5 {
            db.port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            if db.launch() {
                db.root_sql(
                    "CREATE USER godwit@'%' IDENTIFIED BY 'godwit'; \
                     GRANT ALL PRIVILEGES ON *.* TO godwit@'%'; \
                     CREATE DATABASE fleet CHARACTER SET utf8mb4;",
                );
                return db;
            }
        }
        panic!(
            "the private MariaDB server did not start; its log:\n{}",
            db.log()
        );
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("mariadb.sock")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn log(&self) -> String {
        tail(&self.log_path())
    }

    fn url(&self, database: &str) -> String {
        format!("mysql://godwit:godwit@127.0.0.1:{}/{database}", self.port)
    }

    /// A command that runs the tool `program` as the data directory's owner.
    fn command(&self, program: &Path) -> Command {
        if self.as_root {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "mysql", "--"]).arg(program);
            cmd
        } else {
            Command::new(program)
        }
    }

    fn tool(&self, program: &Path, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
    }

    /// `mariadb -uroot` through the socket; fails the test unless `sql` succeeds.
    fn root_sql(&self, sql: &str) {
        let out = Command::new(find_tool(&["mariadb", "mysql"]))
            .arg("--no-defaults")
            .arg("-uroot")
            .arg(format!("--socket={}", path_str(&self.socket())))
            .args(["-e", sql])
            .stdin(Stdio::null())
            .output()
            .expect("run mariadb");
        assert!(
            out.status.success(),
            "{sql}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }

    /// Whether the server answers on its socket.
    fn answers(&self) -> bool {
        Command::new(find_tool(&["mariadb-admin", "mysqladmin"]))
            .arg("--no-defaults")
            .arg("-uroot")
            .arg(format!("--socket={}", path_str(&self.socket())))
            .args(["--connect-timeout=2", "ping"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts the server on `self.port` and waits until it answers; false if it exited.
    fn launch(&mut self) -> bool {
        assert!(self.server.is_none(), "the server is already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("server log");
        // Not through runuser, which would stand between the test and the server: the test
        // must be the server's parent to kill it and reap it.
        let mut cmd = Command::new(find_tool(&["mariadbd", "mysqld"]));
        if self.as_root {
            cmd.uid(os_id(&["-u", "mysql"]))
                .gid(os_id(&["-g", "mysql"]));
        }
        let child = cmd
            .arg("--no-defaults")
            .arg(format!("--datadir={}", path_str(&self.data())))
            .arg(format!("--socket={}", path_str(&self.socket())))
            .arg(format!(
                "--pid-file={}",
                path_str(&self.dir.path().join("mariadb.pid"))
            ))
            .arg(format!("--port={}", self.port))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--skip-log-bin",
                "--max-connections=300",
                "--innodb-flush-log-at-trx-commit=2",
                "--innodb-buffer-pool-size=64M",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn mariadbd");
        self.server = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.answers() {
                return true;
            }
            if let Some(status) = self
                .server
                .as_mut()
                .and_then(|c| c.try_wait().expect("try_wait"))
            {
                eprintln!("mariadbd exited ({status}) on port {}", self.port);
                self.server = None;
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the private MariaDB server did not answer within 60 s; its log:\n{}",
            self.log()
        );
    }

    /// A clean shutdown (`mariadb-admin shutdown`: SIGTERM's path), then a start on the same
    /// port and data directory.
    fn restart(&mut self) {
        let out = Command::new(find_tool(&["mariadb-admin", "mysqladmin"]))
            .arg("--no-defaults")
            .arg("-uroot")
            .arg(format!("--socket={}", path_str(&self.socket())))
            .arg("shutdown")
            .stdin(Stdio::null())
            .output()
            .expect("run mariadb-admin");
        assert!(
            out.status.success(),
            "mariadb-admin shutdown failed: {}{}\nserver log:\n{}",
            text(&out.stdout),
            text(&out.stderr),
            self.log()
        );
        let mut server = self.server.take().expect("a running server");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if server.try_wait().expect("try_wait").is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "mariadbd did not exit within 60 s of its shutdown; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            self.launch(),
            "the private MariaDB server did not start again on port {}; its log:\n{}",
            self.port,
            self.log()
        );
    }
}

impl Drop for PrivateMariaDb {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
        if std::thread::panicking() {
            eprintln!("MariaDB server log:\n{}", self.log());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the database
// ---------------------------------------------------------------------------------------------

/// A database the test reads and writes itself, not through godwit.
struct Db {
    url: String,
}

impl Db {
    async fn conn(&self) -> Box<dyn Conn> {
        godwit_db::connect(&DbUrl::new(self.url.clone()), &Default::default())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", DbUrl::new(self.url.clone())))
    }

    async fn exec(&self, sql: &str) {
        self.conn()
            .await
            .execute_unprepared(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Every column of the first row, as integers.
    async fn row(&self, sql: &str) -> Vec<i64> {
        let rows = self
            .conn()
            .await
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
}

// ---------------------------------------------------------------------------------------------
// Workers
// ---------------------------------------------------------------------------------------------

/// Waits until every worker in `pids` has beaten in `status` since `since` (or the run is done).
async fn every_worker_beating(plan: &Path, pids: &[u32], after: &str, since: Instant) {
    poll_until(
        &format!("every worker {pids:?} to beat again after {after}"),
        Duration::from_secs(30),
        async || {
            let Ok(st) = try_status(plan) else {
                return false;
            };
            st["state"] == "done"
                || pids.iter().all(|&pid| {
                    worker_entry(&st, pid).is_some_and(|w| {
                        w["last_seen_seconds"]
                            .as_f64()
                            .is_some_and(|s| s < 2.0 && s < since.elapsed().as_secs_f64())
                    })
                })
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

/// Two steps over `t`: a non-idempotent update, then a copy of the ids into `hist`, which has
/// no unique key so that a batch inserted twice shows. Each batch sleeps once on the server (a
/// derived table is evaluated once per statement; `AND SLEEP(x) = 0` would sleep per row). The
/// sleep is a fixed cost per batch, which the sizer answers with larger batches: the largest
/// is `BATCH`, so that the run lasts.
fn plan_text(url: &str) -> String {
    format!(
        r#"name = "fleet-mariadb"
database = "{url}"

[defaults]
batch_size = {BATCH}
max_batch_size = {BATCH}
lease = "3s"

[[steps]]
name = "bump"
table = "t"
key = "id"
sql = "UPDATE t SET v = v + 1 + (SELECT 0 FROM (SELECT SLEEP({SLEEP})) s) WHERE id BETWEEN :start AND :end"

[[steps]]
name = "history"
after = ["bump"]
table = "t"
key = "id"
sql = "INSERT INTO hist (id) SELECT t.id FROM t, (SELECT SLEEP({SLEEP}) AS z) s WHERE t.id BETWEEN :start AND :end"
"#
    )
}

/// A fleet of three workers (two batches at a time each) on a private MariaDB server that is
/// shut down and started again while the first step runs; a worker is killed with SIGKILL and
/// replaced while the second runs. The update is applied to every row exactly once, the
/// history holds every id exactly once, and the run finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_survive_a_mariadb_restart() {
    let mut server = PrivateMariaDb::start();
    let url = server.url("fleet");
    let db = Db { url: url.clone() };
    db.exec("CREATE TABLE t (id BIGINT PRIMARY KEY, v INT NOT NULL DEFAULT 0)")
        .await;
    db.exec(&format!(
        "INSERT INTO t (id) SELECT seq FROM seq_1_to_{ROWS}"
    ))
    .await;
    db.exec("CREATE TABLE hist (id BIGINT NOT NULL)").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = dir.path().join("plan.toml");
    std::fs::write(&plan, plan_text(&common::plan_url(&url))).expect("write plan");

    let out = run_cmd(&["submit", path_str(&plan)]);
    assert_eq!(out.status.code(), Some(0), "submit: {}", text(&out.stderr));
    let st = status(&plan).await;
    assert_eq!(st["state"], "pending", "a submitted run waits for workers");

    let started = Instant::now();
    let since = || format!("{:.1}s", started.elapsed().as_secs_f64());
    let mut timeline = Vec::new();
    let worker_args = ["--concurrency", "2", "--grace", "10s"];
    let mut fleet = Fleet::new(&url, dir.path());
    for _ in 0..3 {
        fleet.spawn(&worker_args);
    }
    let mut st = serde_json::Value::Null;
    poll_until(
        "every worker to show in status and the first batches to be done",
        Duration::from_secs(30),
        async || {
            st = status(&plan).await;
            st["workers"].as_array().map_or(0, Vec::len) >= 3
                && rows_done(&st).first().is_some_and(|&n| n > 0)
        },
    )
    .await;
    assert_eq!(st["state"], "running");
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Restart the server mid-step: batches are in flight in every worker.
    let st = status(&plan).await;
    assert_eq!(
        st["state"], "running",
        "the run ended before the restart; make it last longer"
    );
    timeline.push(format!(
        "restart at {}, rows done {:?}",
        since(),
        rows_done(&st)
    ));
    server.restart();
    let back = Instant::now();
    timeline.push(format!("server back at {}", since()));
    assert_eq!(
        std::fs::read_to_string(server.log_path())
            .unwrap_or_default()
            .matches("ready for connections")
            .count(),
        2,
        "the server was started twice"
    );
    fleet.assert_all_alive("after the MariaDB restart");
    every_worker_beating(&plan, &fleet.pids(), "the restart", back).await;
    fleet.assert_all_alive("after the MariaDB restart");
    timeline.push(format!("every worker beating at {}", since()));

    // kill -9 a worker while the second step runs, and start another.
    poll_until(
        "the second step to be under way",
        Duration::from_secs(60),
        async || {
            rows_done(&status(&plan).await)
                .get(1)
                .is_some_and(|&n| n > 0)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let st = status(&plan).await;
    assert_eq!(
        st["state"], "running",
        "the run ended before the kill; make it last longer"
    );
    timeline.push(format!(
        "kill -9 at {}, rows done {:?}",
        since(),
        rows_done(&st)
    ));
    let victim = fleet.pids()[0];
    fleet.kill(victim);
    fleet.spawn(&worker_args);
    let killed = Instant::now();
    every_worker_beating(&plan, &fleet.pids(), "the kill", killed).await;
    timeline.push(format!("every worker beating at {}", since()));

    poll_until(
        "the run to be done",
        Duration::from_secs(90).saturating_sub(started.elapsed()),
        async || status(&plan).await["state"] == "done",
    )
    .await;
    timeline.push(format!("done at {}", since()));
    fleet.assert_all_alive("before they were stopped");
    let codes = fleet.stop_all(Duration::from_secs(30)).await;
    assert!(
        codes.iter().all(|&c| c == Some(75)),
        "every worker stopped by SIGTERM exits 75, got {codes:?}:\n{}",
        fleet.logs_text()
    );
    eprintln!("timeline: {timeline:?}");

    let bumped = db.row("SELECT COUNT(*), MIN(v), MAX(v) FROM t").await;
    assert_eq!(
        bumped,
        vec![ROWS, 1, 1],
        "(rows, min v, max v) after {timeline:?}"
    );
    let hist = db
        .row(
            "SELECT COUNT(*), COUNT(DISTINCT id), \
             COUNT(CASE WHEN id NOT IN (SELECT id FROM t) THEN 1 END) FROM hist",
        )
        .await;
    assert_eq!(
        hist,
        vec![ROWS, ROWS, 0],
        "(history rows, distinct ids, unknown ids) after {timeline:?}"
    );
    let st = status(&plan).await;
    assert_eq!(st["state"], "done", "{st}");
    let steps = st["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "{st}");
    for step in steps {
        assert_eq!(step["state"], "done", "{st}");
        assert_eq!(step["rows_done"], ROWS, "{st}");
        assert_eq!(step["batches_failed"], 0, "{st}");
    }
    let not_done = db
        .row("SELECT COUNT(*) FROM godwit_batches WHERE state <> 'done'")
        .await;
    assert_eq!(not_done, vec![0], "batches not done after {timeline:?}");
}
