//! A PostgreSQL cluster of a test's own: a data directory in a temporary directory, run with
//! `pg_ctl` on a free port, so that the test may restart it or pause its replay without
//! disturbing any other test. Stopped (`-m immediate`) and deleted when dropped, pass or fail.
//! A missing server tool fails the test.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use super::fleet::running_as_root;
use super::{free_port, path_str, text};

/// The newest PostgreSQL server binaries installed (Debian's layout).
pub fn pg_bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("no PostgreSQL server in /usr/lib/postgresql: run scripts/test-services.sh, which installs it")
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .expect("no initdb under /usr/lib/postgresql/*/bin")
        .1
}

/// A temporary directory holding `data/`, `server.log` and the socket, and the server run from it.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// 0 until [`PgCluster::start`].
    port: u16,
    as_root: bool,
}

impl PgCluster {
    /// A temporary directory named `prefix…` for a cluster, with no data directory yet (fill
    /// [`PgCluster::data`] with [`PgCluster::tool`], say `pg_basebackup`).
    pub fn empty(prefix: &str) -> PgCluster {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("temp dir");
        let cluster = PgCluster {
            dir,
            bin: pg_bin_dir(),
            port: 0,
            as_root: running_as_root(),
        };
        if cluster.as_root {
            // PostgreSQL refuses to run as root: the cluster belongs to the postgres user.
            let chown = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(cluster.dir.path())
                .output()
                .expect("run chown");
            assert!(
                chown.status.success(),
                "chown postgres {}: {}",
                cluster.dir.path().display(),
                text(&chown.stderr)
            );
        }
        cluster
    }

    /// A new cluster (`initdb`) whose superuser `postgres` connects without a password; see
    /// [`PgCluster::url`].
    pub fn init(prefix: &str) -> PgCluster {
        let cluster = PgCluster::empty(prefix);
        let data = cluster.data();
        let init = cluster.tool(
            "initdb",
            &[
                "-D",
                path_str(&data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        assert!(
            init.status.success(),
            "initdb failed: {}{}",
            text(&init.stdout),
            text(&init.stderr)
        );
        cluster
    }

    /// Starts the server on a free port of 127.0.0.1, with `-c` for each `name=value` of
    /// `settings`; fails the test with the server's log if it does not start.
    pub fn start(&mut self, settings: &[&str]) {
        // A free port now may be taken by the time the server binds it: try a few.
        for _ in 0..5 {
            self.port = free_port();
            let mut options = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1",
                self.port,
                path_str(self.dir.path())
            );
            for setting in settings {
                options.push_str(&format!(" -c {setting}"));
            }
            if self.pg_ctl(&["-o", &options, "start"]).status.success() {
                return;
            }
        }
        panic!(
            "the PostgreSQL cluster in {} did not start; its log:\n{}",
            self.dir.path().display(),
            self.log()
        );
    }

    /// Restarts the server; `immediate` is a crash (no checkpoint, unflushed WAL lost).
    pub fn restart(&self, mode: &str) {
        let out = self.pg_ctl(&["-m", mode, "restart"]);
        assert!(
            out.status.success(),
            "pg_ctl restart failed: {}{}\nserver log:\n{}",
            text(&out.stdout),
            text(&out.stderr),
            self.log()
        );
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of `database` as `postgres`, for a cluster made by [`PgCluster::init`].
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Writes `file` in the data directory, owned by the server's user.
    pub fn write_config(&self, file: &str, content: &str) {
        let path = self.data().join(file);
        std::fs::write(&path, content).expect("write the cluster's configuration");
        if self.as_root {
            let chown = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&path)
                .status()
                .expect("run chown");
            assert!(chown.success(), "chown {}", path.display());
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs a server tool as the cluster's owner.
    pub fn tool(&self, name: &str, args: &[&str]) -> Output {
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

    /// pg_ctl on this cluster, waiting for the operation, the server's output in the log.
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

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "stop"]);
    }
}
