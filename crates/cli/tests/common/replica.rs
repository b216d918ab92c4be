//! A real PostgreSQL streaming replica of the test server (`GODWIT_TEST_PG`), of a test's own:
//! `pg_basebackup` into a temporary directory, started with `pg_ctl` on a free port. Stopped
//! (`-m immediate`) and deleted when dropped, pass or fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use godwit_driver::{Conn, DbUrl, Value};

use super::fleet::{pg_bin_dir, running_as_root};
use super::{path_str, poll_until, text};

/// What the primary must allow for a replica, said when it does not.
const PRIMARY_SETUP: &str = "the replica tests need the test PostgreSQL server to accept \
    replication connections from 127.0.0.1 for the test user: add \
    `host replication godwit 127.0.0.1/32 scram-sha-256` to its pg_hba.conf and reload \
    (SELECT pg_reload_conf()), with wal_level = replica and max_wal_senders > 0 \
    (scripts/test-services.sh adds the line on a machine it sets up)";

/// Settings a hot standby must hold at least as high as its primary.
const AT_LEAST_PRIMARY: [&str; 5] = [
    "max_connections",
    "max_worker_processes",
    "max_wal_senders",
    "max_prepared_transactions",
    "max_locks_per_transaction",
];

pub struct PgReplica {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_root: bool,
    /// The primary's URL with the replica's port.
    url: String,
}

impl PgReplica {
    /// Takes a base backup of the test server and starts it as a hot standby streaming from
    /// it; returns once it streams.
    pub async fn start() -> PgReplica {
        let primary = std::env::var("GODWIT_TEST_PG").expect(
            "GODWIT_TEST_PG is not set: run the tests with scripts/test.sh, which starts PostgreSQL",
        );
        let dir = tempfile::Builder::new()
            .prefix("godwit-replica")
            .tempdir()
            .expect("temp dir");
        let mut replica = PgReplica {
            dir,
            bin: pg_bin_dir(),
            port: 0,
            as_root: running_as_root(),
            url: String::new(),
        };
        if replica.as_root {
            // PostgreSQL refuses to run as root: the copy belongs to the postgres user.
            let chown = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(replica.dir.path())
                .output()
                .expect("run chown");
            assert!(chown.status.success(), "chown: {}", text(&chown.stderr));
        }
        let data = replica.data();
        let backup = replica.tool(
            "pg_basebackup",
            &[
                "-d",
                &primary,
                "-D",
                path_str(&data),
                "-R",
                "-X",
                "stream",
                // An immediate checkpoint: a spread one may take minutes.
                "-c",
                "fast",
                "--no-sync",
            ],
        );
        assert!(
            backup.status.success(),
            "pg_basebackup from the test server failed: {}{}\n{PRIMARY_SETUP}",
            text(&backup.stdout),
            text(&backup.stderr)
        );
        replica.configure(&primary).await;
        replica.run_on_a_free_port(&primary);
        replica.wait_streaming().await;
        replica
    }

    /// The replica's own configuration: a Debian primary keeps its files outside the data
    /// directory, so the copy has none (or the primary's, which name its port and paths).
    async fn configure(&self, primary: &str) {
        let mut conn = godwit_db::connect(&DbUrl::new(primary), &Default::default())
            .await
            .expect("connect to the primary");
        let mut conf = String::from("hot_standby = on\nfsync = off\n");
        for name in AT_LEAST_PRIMARY {
            let rows = conn
                .query(&format!("SELECT current_setting('{name}')"), &[])
                .await
                .expect("read the primary's settings");
            let value = rows[0].get(0).as_str().unwrap_or_default().to_string();
            conf.push_str(&format!("{name} = {value}\n"));
        }
        self.write(&self.data().join("postgresql.conf"), &conf);
        self.write(
            &self.data().join("pg_hba.conf"),
            "local all all trust\nhost all all 127.0.0.1/32 trust\n",
        );
        self.write(&self.data().join("pg_ident.conf"), "");
    }

    fn write(&self, path: &Path, content: &str) {
        std::fs::write(path, content).expect("write the replica's configuration");
        if self.as_root {
            let chown = Command::new("chown")
                .arg("postgres:postgres")
                .arg(path)
                .status()
                .expect("run chown");
            assert!(chown.success(), "chown {}", path.display());
        }
    }

    fn run_on_a_free_port(&mut self, primary: &str) {
        // A free port now may be taken by the time the server binds it: try a few.
        for _ in 0..5 {
            self.port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let options = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1",
                self.port,
                path_str(self.dir.path())
            );
            if self.pg_ctl(&["-o", &options, "start"]).status.success() {
                let (credentials, rest) = primary.rsplit_once('@').expect("user@host in the URL");
                let (_, database) = rest.split_once('/').expect("a database in the URL");
                self.url = format!("{credentials}@127.0.0.1:{}/{database}", self.port);
                return;
            }
        }
        panic!("the replica did not start; its log:\n{}", self.log());
    }

    async fn wait_streaming(&self) {
        poll_until(
            "the replica to stream from the test server",
            Duration::from_secs(60),
            async || {
                let Ok(mut conn) = self.try_conn().await else {
                    return false;
                };
                conn.query(
                    "SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming'",
                    &[],
                )
                .await
                .is_ok_and(|rows| !rows.is_empty())
            },
        )
        .await;
    }

    /// The replica's URL: the test server's, on the replica's port.
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn try_conn(&self) -> godwit_driver::Result<Box<dyn Conn>> {
        godwit_db::connect(&DbUrl::new(self.url.clone()), &Default::default()).await
    }

    /// Runs `sql` on the replica (`SELECT pg_wal_replay_pause()`, say).
    pub async fn exec(&self, sql: &str) {
        let mut conn = self.try_conn().await.expect("connect to the replica");
        conn.execute_unprepared(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql} on the replica: {e}"));
    }

    /// Waits until the replica has replayed everything the primary had written when called.
    pub async fn catch_up(&self) {
        let primary = std::env::var("GODWIT_TEST_PG").expect("GODWIT_TEST_PG");
        let mut conn = godwit_db::connect(&DbUrl::new(primary), &Default::default())
            .await
            .expect("connect to the primary");
        let rows = conn
            .query("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .expect("the primary's WAL position");
        let lsn = rows[0].get(0).as_str().unwrap_or_default().to_string();
        poll_until(
            "the replica to replay what the primary wrote",
            Duration::from_secs(60),
            async || {
                let Ok(mut conn) = self.try_conn().await else {
                    return false;
                };
                let sql = format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
                conn.query(&sql, &[])
                    .await
                    .is_ok_and(|rows| rows.first().map(|r| r.get(0)) == Some(&Value::Bool(true)))
            },
        )
        .await;
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs a server tool as the replica's owner.
    fn tool(&self, name: &str, args: &[&str]) -> Output {
        let program = self.bin.join(name);
        let mut cmd = if self.as_root {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(program);
            cmd
        } else {
            Command::new(program)
        };
        // The server inherits pg_ctl's output streams: keep them away from pipes we wait on.
        cmd.args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {name}: {e}"))
    }

    fn pg_ctl(&self, args: &[&str]) -> Output {
        let data = self.data();
        let log = self.log_path();
        let mut all = vec![
            "-D",
            path_str(&data),
            "-l",
            path_str(&log),
            "-w",
            "-t",
            "60",
        ];
        all.extend_from_slice(args);
        self.tool("pg_ctl", &all)
    }
}

impl Drop for PgReplica {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "stop"]);
        if std::thread::panicking() {
            eprintln!("replica log:\n{}", self.log());
        }
    }
}
