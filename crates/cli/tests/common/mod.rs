//! Test helpers: a database per backend, plan files in a temp dir, and the real binary.
//!
//! PostgreSQL and MariaDB come from `GODWIT_TEST_PG` and `GODWIT_TEST_MYSQL` (set by
//! `scripts/test.sh`); a missing variable or server fails the test, it never skips.
#![allow(dead_code)]

pub mod browser;
pub mod fleet;
pub mod http;
pub mod pg_cluster;
pub mod replica;
pub mod restart;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use godwit_driver::{Conn, ConnectOptions, DbUrl, Dialect, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    MySql,
    Sqlite,
}

/// One test's database, with names unique to the test so tests can share a server.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    pub dir: tempfile::TempDir,
    /// A prefix for this test's tables and plan names.
    pub tag: String,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let tag = format!("t{}", &uuid_like()[..10]);
        let url = match backend {
            Backend::Postgres => std::env::var("GODWIT_TEST_PG").expect(
                "GODWIT_TEST_PG is not set: run the tests with scripts/test.sh, which starts PostgreSQL",
            ),
            Backend::MySql => std::env::var("GODWIT_TEST_MYSQL").expect(
                "GODWIT_TEST_MYSQL is not set: run the tests with scripts/test.sh, which starts MariaDB",
            ),
            Backend::Sqlite => format!("sqlite://{}/test.db", dir.path().display()),
        };
        let db = TestDb {
            backend,
            url,
            dir,
            tag,
        };
        // Creates the SQLite file; proves the servers answer.
        let _ = db.connect_creating().await;
        db
    }

    async fn connect_creating(&self) -> Box<dyn Conn> {
        godwit_db::connect(
            &DbUrl::new(self.url.clone()),
            &ConnectOptions {
                create_if_missing: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", DbUrl::new(self.url.clone())))
    }

    pub async fn conn(&self) -> Box<dyn Conn> {
        self.connect_creating().await
    }

    pub fn dialect(&self) -> Dialect {
        match self.backend {
            Backend::Postgres => Dialect::Postgres,
            Backend::MySql => Dialect::MySql,
            Backend::Sqlite => Dialect::Sqlite,
        }
    }

    /// A table name unique to this test.
    pub fn table(&self, name: &str) -> String {
        format!("{}_{name}", self.tag)
    }

    pub async fn exec(&self, sql: &str) {
        let mut conn = self.conn().await;
        conn.execute_unprepared(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    pub async fn query(&self, sql: &str) -> Vec<Vec<Value>> {
        let mut conn = self.conn().await;
        conn.query(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .into_iter()
            .map(|r| r.into_values())
            .collect()
    }

    pub async fn scalar(&self, sql: &str) -> i64 {
        self.query(sql).await[0][0]
            .as_i64()
            .unwrap_or_else(|| panic!("{sql} gave no integer"))
    }

    /// Creates `name (id, hits, grp)` with one row per key in `keys`, `hits = 0` and
    /// `grp = key % 3`.
    pub async fn counter_table(&self, name: &str, keys: impl IntoIterator<Item = i64>) {
        let id_type = match self.backend {
            Backend::Sqlite => "INTEGER",
            _ => "BIGINT",
        };
        self.exec(&format!(
            "CREATE TABLE {name} (id {id_type} PRIMARY KEY, hits INT NOT NULL DEFAULT 0, grp INT NOT NULL)"
        ))
        .await;
        let keys: Vec<i64> = keys.into_iter().collect();
        for chunk in keys.chunks(5000) {
            let values: Vec<String> = chunk
                .iter()
                .map(|k| format!("({k}, 0, {})", k % 3))
                .collect();
            self.exec(&format!(
                "INSERT INTO {name} (id, hits, grp) VALUES {}",
                values.join(", ")
            ))
            .await;
        }
    }

    /// Writes `plan.toml` for a plan named after `table` on this database: `defaults` is the
    /// body of `[defaults]` and `step` the body of its one `[[steps]]`.
    pub fn step_plan(&self, table: &str, defaults: &str, step: &str) -> PathBuf {
        self.plan(
            "plan.toml",
            &format!(
                "name = \"{table}\"\ndatabase = \"{}\"\n\n[defaults]\n{defaults}\n\n[[steps]]\n{step}\n",
                self.url
            ),
        )
    }

    /// Writes a plan file into the test's directory.
    pub fn plan(&self, file: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(file);
        std::fs::write(&path, text).expect("write plan");
        path
    }
}

pub fn uuid_like() -> String {
    format!("{:032x}", rand::random::<u128>())
}

pub fn godwit() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_godwit"));
    cmd.env_remove("RUST_LOG");
    for (var, url_var) in PASSWORD_VARS {
        if let Some(password) = std::env::var(url_var).ok().as_deref().and_then(password_of) {
            cmd.env(var, password);
        }
    }
    cmd
}

/// For each test server, the variable through which plans given to `submit` reach its
/// password, and the variable holding its URL. `submit` refuses a password written in the
/// plan, which the state database would keep (issue 11); [`godwit`] sets these.
const PASSWORD_VARS: [(&str, &str); 2] = [
    ("GODWIT_TEST_PG_PASSWORD", "GODWIT_TEST_PG"),
    ("GODWIT_TEST_MYSQL_PASSWORD", "GODWIT_TEST_MYSQL"),
];

/// The password of `scheme://user:password@host/…`, if it has one.
pub fn password_of(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let (user_info, _) = rest.rsplit_once('@')?;
    user_info.split_once(':').map(|(_, password)| password)
}

/// `url` as a plan for `submit` and workers writes it: its password, if any, as the
/// `${VAR}` that [`godwit`] sets to the test server's password.
pub fn plan_url(url: &str) -> String {
    let Some(password) = password_of(url) else {
        return url.to_string();
    };
    let var = if url.starts_with("mysql") || url.starts_with("mariadb") {
        PASSWORD_VARS[1]
    } else {
        PASSWORD_VARS[0]
    };
    let server = std::env::var(var.1).unwrap_or_else(|_| panic!("{} is not set", var.1));
    assert_eq!(
        password_of(&server),
        Some(password),
        "{url} has another password than {}",
        var.1
    );
    url.replacen(&format!(":{password}@"), &format!(":${{{}}}@", var.0), 1)
}

pub fn run_cmd(args: &[&str]) -> Output {
    godwit().args(args).output().expect("run godwit")
}

pub fn spawn(args: &[&str]) -> Child {
    godwit()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn godwit")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A port of 127.0.0.1 that nothing listens on now (another process may take it later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Declares one test per backend from an `async fn(Backend)`.
#[macro_export]
macro_rules! per_backend {
    ($($name:ident),* $(,)?) => {
        mod pg { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name($crate::common::Backend::Postgres).await } )* }
        mod mysql { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name($crate::common::Backend::MySql).await } )* }
        mod sqlite { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name($crate::common::Backend::Sqlite).await } )* }
    };
}

/// Polls `condition` every 50 ms until it holds; fails the test with `what` after `limit`.
pub async fn poll_until(
    what: &str,
    limit: std::time::Duration,
    mut condition: impl AsyncFnMut() -> bool,
) {
    let deadline = std::time::Instant::now() + limit;
    while !condition().await {
        assert!(
            std::time::Instant::now() < deadline,
            "gave up after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// `godwit status PLAN --json`, parsed; fails the test when it does not exit 0 with JSON.
pub fn status_json(plan: &Path) -> serde_json::Value {
    let out = run_cmd(&["status", path_str(plan), "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "status failed: {}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json printed no JSON ({e}): {}", text(&out.stdout)))
}

/// Sends the signal `name` (`TERM`, `INT`) to `pid` through kill(1).
pub fn send_signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// A running godwit whose stdout and stderr lines are read as they come, so that a test can
/// wait for one (a JSON event, a message) before acting. Every line read is kept.
pub struct Watched {
    pub child: Child,
    stdout: std::sync::mpsc::Receiver<String>,
    stderr: std::sync::mpsc::Receiver<String>,
    pub stdout_lines: Vec<String>,
    pub stderr_lines: Vec<String>,
}

fn read_lines(stream: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Starts godwit with both output streams piped and read line by line.
pub fn spawn_watched(args: &[&str]) -> Watched {
    let mut cmd = godwit();
    cmd.args(args);
    spawn_watched_cmd(cmd)
}

impl Watched {
    /// Waits for a stdout line matching `wanted` and returns it; fails after `limit`, or when
    /// the process ends without printing one.
    pub fn wait_stdout(
        &mut self,
        what: &str,
        limit: std::time::Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> String {
        self.wait_line(true, what, limit, wanted)
    }

    /// Waits for a stderr line matching `wanted`; fails after `limit` or at the process's end.
    pub fn wait_stderr(
        &mut self,
        what: &str,
        limit: std::time::Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> String {
        self.wait_line(false, what, limit, wanted)
    }

    fn wait_line(
        &mut self,
        on_stdout: bool,
        what: &str,
        limit: std::time::Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> String {
        use std::sync::mpsc::RecvTimeoutError;
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let (rx, seen) = if on_stdout {
                (&self.stdout, &mut self.stdout_lines)
            } else {
                (&self.stderr, &mut self.stderr_lines)
            };
            let ended = match rx.recv_timeout(left) {
                Ok(line) => {
                    seen.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => "godwit ended",
                Err(RecvTimeoutError::Timeout) => "gave up",
            };
            self.stdout_lines.extend(self.stdout.try_iter());
            self.stderr_lines.extend(self.stderr.try_iter());
            panic!(
                "{ended} waiting {limit:?} for {what}; stdout: {:?}; stderr: {:?}",
                self.stdout_lines, self.stderr_lines
            );
        }
    }

    /// Waits for the process to exit (killing it and failing after `limit`) and returns its
    /// exit code; every line it printed is then in `stdout_lines` and `stderr_lines`.
    pub fn finish(&mut self, limit: std::time::Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if std::time::Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.stdout_lines.extend(self.stdout.try_iter());
                self.stderr_lines.extend(self.stderr.try_iter());
                panic!(
                    "godwit did not exit within {limit:?}; stdout: {:?}; stderr: {:?}",
                    self.stdout_lines, self.stderr_lines
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        // The reader threads end at end of file, once the process and its pipes are gone.
        self.stdout_lines.extend(self.stdout.iter());
        self.stderr_lines.extend(self.stderr.iter());
        status.code()
    }

    /// Everything printed on stderr so far, one string.
    pub fn stderr_text(&self) -> String {
        self.stderr_lines.join("\n")
    }

    /// The JSON events printed on stdout so far (lines that are not JSON are skipped).
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.stdout_lines
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// A test database whose `godwit_*` tables no other test sees: on PostgreSQL a schema of its
/// own (dropped at the end, even when the test fails, after ending the test's statements still
/// running on the server), put first on the search path by the URL; on SQLite the test's own
/// file already is. A `godwit worker` joins every unfinished run
/// of its state database, so a worker test needs one.
pub struct IsolatedDb {
    pub db: TestDb,
    /// `(server URL without the schema, schema)` on PostgreSQL.
    schema: Option<(String, String)>,
}

impl std::ops::Deref for IsolatedDb {
    type Target = TestDb;
    fn deref(&self) -> &TestDb {
        &self.db
    }
}

/// A database for a worker test; see [`IsolatedDb`]. Supports PostgreSQL and SQLite.
pub async fn isolated_db(backend: Backend) -> IsolatedDb {
    let mut db = TestDb::new(backend).await;
    let schema = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => {
            let base = db.url.clone();
            let schema = format!("{}_state", db.tag);
            db.exec(&format!("CREATE SCHEMA {schema}")).await;
            let separator = if base.contains('?') { '&' } else { '?' };
            db.url = format!("{base}{separator}options=-c%20search_path%3D{schema}");
            Some((base, schema))
        }
        Backend::MySql => panic!("isolated_db: MariaDB would need a database per test"),
    };
    let isolated = IsolatedDb { db, schema };
    if backend == Backend::Postgres {
        // The URL must really put new tables in the schema, or workers would meet other
        // tests' runs.
        let probe = isolated.table("probe");
        isolated
            .exec(&format!("CREATE TABLE {probe} (id INT)"))
            .await;
        let (_, schema) = isolated.schema.as_ref().expect("schema");
        let placed = isolated
            .scalar(&format!(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = '{probe}' AND table_schema = '{schema}'"
            ))
            .await;
        assert_eq!(placed, 1, "the search_path option did not take effect");
        isolated.exec(&format!("DROP TABLE {probe}")).await;
    }
    isolated
}

impl IsolatedDb {
    /// The schema holding this test's tables (PostgreSQL only).
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_ref().map(|(_, s)| s.as_str())
    }
}

impl Drop for IsolatedDb {
    fn drop(&mut self) {
        let Some((base, schema)) = self.schema.take() else {
            return;
        };
        // A runtime of its own on a thread of its own: drop may run inside the test's runtime,
        // and after a failed assertion.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let mut conn = godwit_db::connect(&DbUrl::new(base), &ConnectOptions::default())
                    .await
                    .map_err(|e| e.to_string())?;
                // Statements of this test that a killed process left running on the server
                // would hold the schema's tables until they end: end them first. Every name
                // of the test starts with its tag.
                let tag = schema.trim_end_matches("_state");
                conn.execute_unprepared(&format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE pid <> pg_backend_pid() AND query LIKE '%{tag}%'; \
                     SET lock_timeout = '60s'; DROP SCHEMA IF EXISTS {schema} CASCADE"
                ))
                .await
                .map_err(|e| format!("DROP SCHEMA {schema}: {e}"))
            })
        })
        .join();
        match dropped {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => eprintln!("warning: could not drop the test's schema: {e}"),
            Err(_) => eprintln!("warning: dropping the test's schema panicked"),
        }
    }
}

/// A database of the test's own for runs: no other test's `godwit_*` tables (or their version,
/// which another build may have moved on) are in it. PostgreSQL and SQLite: an [`IsolatedDb`];
/// MariaDB: a database, dropped by [`OwnDb::drop_mysql`].
pub enum OwnDb {
    Isolated(IsolatedDb),
    MySql(TestDb),
}

impl std::ops::Deref for OwnDb {
    type Target = TestDb;
    fn deref(&self) -> &TestDb {
        match self {
            OwnDb::Isolated(db) => db,
            OwnDb::MySql(db) => db,
        }
    }
}

pub async fn own_db(backend: Backend) -> OwnDb {
    match backend {
        Backend::MySql => {
            let mut db = TestDb::new(backend).await;
            db.exec(&format!("CREATE DATABASE {}", db.tag)).await;
            let (server, _) = db.url.rsplit_once('/').expect("a database in the URL");
            db.url = format!("{server}/{}", db.tag);
            OwnDb::MySql(db)
        }
        _ => OwnDb::Isolated(isolated_db(backend).await),
    }
}

impl OwnDb {
    /// Drops a MariaDB test's database; nothing for the others, whose schema or file goes
    /// with them.
    pub async fn drop_mysql(&self) {
        if let OwnDb::MySql(db) = self {
            db.exec(&format!("DROP DATABASE {}", db.tag)).await;
        }
    }
}

/// Starts `cmd` (from [`godwit`], with its own arguments and environment) with both output
/// streams read line by line, like [`spawn_watched`].
pub fn spawn_watched_cmd(mut cmd: Command) -> Watched {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn godwit");
    let stdout = read_lines(child.stdout.take().expect("stdout"));
    let stderr = read_lines(child.stderr.take().expect("stderr"));
    Watched {
        child,
        stdout,
        stderr,
        stdout_lines: Vec::new(),
        stderr_lines: Vec::new(),
    }
}

impl Watched {
    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Stdout and stderr read so far, for failure messages.
    pub fn output_so_far(&mut self) -> String {
        self.stdout_lines.extend(self.stdout.try_iter());
        self.stderr_lines.extend(self.stderr.try_iter());
        format!(
            "stdout: {:?}; stderr: {:?}",
            self.stdout_lines, self.stderr_lines
        )
    }
}

/// Kills the process (SIGKILL) when dropped, unless it has ended: a failing test must not
/// leave a worker behind working on its database.
pub struct KillOnDrop(pub Watched);

impl std::ops::Deref for KillOnDrop {
    type Target = Watched;
    fn deref(&self) -> &Watched {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Watched {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.child.try_wait().ok().flatten().is_none() {
            let _ = self.0.child.kill();
            let _ = self.0.child.wait();
        }
    }
}

/// A database for one test: on PostgreSQL a schema of its own (its `godwit_*` tables too), on
/// SQLite a file of its own, on MariaDB tables and a plan name unique to the test.
pub enum Db {
    Own(IsolatedDb),
    Shared(TestDb),
}

impl std::ops::Deref for Db {
    type Target = TestDb;
    fn deref(&self) -> &TestDb {
        match self {
            Db::Own(db) => db,
            Db::Shared(db) => db,
        }
    }
}

pub async fn db_for(backend: Backend) -> Db {
    match backend {
        Backend::MySql => Db::Shared(TestDb::new(backend).await),
        _ => Db::Own(isolated_db(backend).await),
    }
}

/// The integer key type (SQLite's rowid alias on SQLite).
pub fn id_type(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "INTEGER",
        _ => "BIGINT",
    }
}

/// Inserts `rows` (already SQL literals, one tuple each) in chunks.
pub async fn insert(db: &TestDb, table: &str, columns: &str, rows: &[String]) {
    for chunk in rows.chunks(500) {
        db.exec(&format!(
            "INSERT INTO {table} ({columns}) VALUES {}",
            chunk.join(", ")
        ))
        .await;
    }
}

/// How many runs named `name` the database holds (0 when it has no state tables yet).
pub async fn runs_stored(db: &TestDb, name: &str) -> i64 {
    let mut conn = db.conn().await;
    let has_tables = conn
        .table_info("godwit_runs")
        .await
        .expect("table info")
        .is_some();
    if !has_tables {
        return 0;
    }
    db.scalar(&format!(
        "SELECT COUNT(*) FROM godwit_runs WHERE run = '{name}'"
    ))
    .await
}

/// `godwit dead-letters PLAN --json` of a plan whose keys are integers: (key, error) per
/// letter, by key. Fails the test unless the command succeeds and prints only JSON lines.
pub fn dead_letters_by_key(plan: &Path) -> Vec<(i64, String)> {
    let out = run_cmd(&["dead-letters", path_str(plan), "--json"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let mut letters: Vec<(i64, String)> = stdout
        .lines()
        .map(|l| {
            let l: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            let key = l["key"]
                .as_str()
                .expect("key")
                .parse()
                .expect("numeric key");
            (key, l["error"].as_str().unwrap_or_default().to_string())
        })
        .collect();
    letters.sort();
    letters
}

/// What a row written into a table slowed by [`slow_writes`] costs where the database has no
/// per-statement sleep that fits: MariaDB's `SLEEP` seconds per row, and on SQLite (which has no
/// sleep) the side of a table counted against itself per row.
pub struct RowCost {
    pub mysql_sleep: &'static str,
    pub sqlite_spin: usize,
}

/// Makes every insert into and update of `table` slow, whatever statement writes it: a sleep
/// per statement on PostgreSQL, per row on MariaDB, a count over a cross join per row on SQLite.
/// A kill -9 test then interrupts its run at work on any machine, however fast the machine.
pub async fn slow_writes(db: &TestDb, table: &str, cost: RowCost) {
    match db.backend {
        Backend::Postgres => {
            db.exec(&format!(
                "CREATE FUNCTION {table}_slow() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN PERFORM pg_sleep(0.03); RETURN NULL; END $$"
            ))
            .await;
            db.exec(&format!(
                "CREATE TRIGGER {table}_slow AFTER INSERT OR UPDATE ON {table} \
                 FOR EACH STATEMENT EXECUTE FUNCTION {table}_slow()"
            ))
            .await;
        }
        Backend::MySql => {
            for event in ["INSERT", "UPDATE"] {
                db.exec(&format!(
                    "CREATE TRIGGER {table}_slow_{event} BEFORE {event} ON {table} \
                     FOR EACH ROW SET @godwit_slow = SLEEP({})",
                    cost.mysql_sleep
                ))
                .await;
            }
        }
        Backend::Sqlite => {
            db.exec(&format!("CREATE TABLE {table}_spin (i INTEGER)"))
                .await;
            let ones: Vec<String> = (0..cost.sqlite_spin).map(|i| format!("({i})")).collect();
            db.exec(&format!(
                "INSERT INTO {table}_spin (i) VALUES {}",
                ones.join(", ")
            ))
            .await;
            for event in ["INSERT", "UPDATE"] {
                db.exec(&format!(
                    "CREATE TRIGGER {table}_slow_{event} AFTER {event} ON {table} BEGIN \
                     SELECT COUNT(*) FROM {table}_spin a, {table}_spin b; END"
                ))
                .await;
            }
        }
    }
}

/// Waits up to `limit` for `run` to exit 0, then checks that every row of `table` (a
/// [`TestDb::counter_table`]) was counted exactly once.
pub async fn assert_finishes_each_row_once(
    run: &mut Watched,
    db: &TestDb,
    table: &str,
    limit: std::time::Duration,
) {
    assert_eq!(run.finish(limit), Some(0), "{}", run.stderr_text());
    let wrong = db
        .scalar(&format!("SELECT count(*) FROM {table} WHERE hits <> 1"))
        .await;
    assert_eq!(wrong, 0, "{wrong} rows of {table} not counted exactly once");
}
