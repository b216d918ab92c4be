//! `godwit worker` fleets for the fleet tests: spawn, kill, stop and watch real worker
//! processes, each with its own log, and read `godwit status` through a database restart.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{godwit, path_str, run_cmd, send_signal, text};

/// Whether the tests run as root (then database servers run as their own OS user).
pub fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| text(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

pub struct Worker {
    child: Child,
    log: PathBuf,
}

/// `godwit worker` processes on one state database, each writing to a log file of its own.
/// Every one still running is killed when the fleet is dropped; on a failure their logs are
/// printed.
pub struct Fleet {
    state_url: String,
    dir: PathBuf,
    live: Vec<Worker>,
    logs: Vec<PathBuf>,
}

impl Fleet {
    pub fn new(state_url: &str, dir: &Path) -> Fleet {
        Fleet {
            state_url: state_url.to_string(),
            dir: dir.to_path_buf(),
            live: Vec::new(),
            logs: Vec::new(),
        }
    }

    /// Starts a worker; returns its pid.
    pub fn spawn(&mut self, extra: &[&str]) -> u32 {
        let log = self.dir.join(format!("worker-{}.log", self.logs.len() + 1));
        let file = File::create(&log).expect("worker log");
        let child = godwit()
            .args(["worker", "--database", &self.state_url])
            .args(extra)
            .env_remove("GODWIT_DATABASE")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("spawn godwit worker");
        let pid = child.id();
        self.logs.push(log.clone());
        self.live.push(Worker { child, log });
        pid
    }

    pub fn pids(&self) -> Vec<u32> {
        self.live.iter().map(|w| w.child.id()).collect()
    }

    /// Fails the test if a worker has exited on its own.
    pub fn assert_all_alive(&mut self, when: &str) {
        for worker in &mut self.live {
            if let Some(status) = worker.child.try_wait().expect("try_wait") {
                panic!(
                    "worker {} exited ({status}) {when}:\n{}",
                    worker.child.id(),
                    tail(&worker.log)
                );
            }
        }
    }

    /// kill -9 of the worker `pid`; fails the test if it had already exited.
    pub fn kill(&mut self, pid: u32) {
        let at = self
            .live
            .iter()
            .position(|w| w.child.id() == pid)
            .expect("a live worker");
        let mut worker = self.live.remove(at);
        if let Some(status) = worker.child.try_wait().expect("try_wait") {
            panic!(
                "worker {pid} had exited ({status}) before it was killed:\n{}",
                tail(&worker.log)
            );
        }
        worker.child.kill().expect("kill -9");
        let _ = worker.child.wait();
    }

    /// Waits for the worker `pid` to exit on its own and returns its exit code.
    pub async fn wait_exit(&mut self, pid: u32, limit: Duration) -> Option<i32> {
        let at = self
            .live
            .iter()
            .position(|w| w.child.id() == pid)
            .expect("a live worker");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.live[at].child.try_wait().expect("try_wait") {
                self.live.remove(at);
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "worker {pid} did not exit within {limit:?}:\n{}",
                self.logs_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM to every live worker; returns their exit codes.
    pub async fn stop_all(&mut self, limit: Duration) -> Vec<Option<i32>> {
        for pid in self.pids() {
            send_signal(pid, "TERM");
        }
        let mut codes = Vec::new();
        for pid in self.pids() {
            codes.push(self.wait_exit(pid, limit).await);
        }
        codes
    }

    /// The end of every worker's log, for failure messages.
    pub fn logs_text(&self) -> String {
        self.logs
            .iter()
            .map(|log| format!("--- {}:\n{}", log.display(), tail(log)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for worker in &mut self.live {
            // SIGKILL ends a stopped process too.
            let _ = worker.child.kill();
            let _ = worker.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("worker logs:\n{}", self.logs_text());
        }
    }
}

/// The last few KiB of a log file.
pub fn tail(path: &Path) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(4000)));
    let mut out = String::new();
    let _ = file.read_to_string(&mut out);
    out
}

/// `godwit status PLAN --json`, or why not (the database may be restarting).
pub fn try_status(plan: &Path) -> Result<serde_json::Value, String> {
    let out = run_cmd(&["status", path_str(plan), "--json"]);
    if out.status.code() != Some(0) {
        return Err(text(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", text(&out.stdout)))
}

/// The status, waiting out a short outage.
pub async fn status(plan: &Path) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match try_status(plan) {
            Ok(status) => return status,
            Err(e) if Instant::now() >= deadline => panic!("godwit status kept failing: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

pub fn rows_done(status: &serde_json::Value) -> Vec<i64> {
    status["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .map(|s| s["rows_done"].as_i64().unwrap_or(-1))
                .collect()
        })
        .unwrap_or_default()
}

/// The live-worker entry of `pid` in a status, if listed.
pub fn worker_entry(status: &serde_json::Value, pid: u32) -> Option<&serde_json::Value> {
    status["workers"]
        .as_array()?
        .iter()
        .find(|w| w["pid"].as_i64() == Some(i64::from(pid)))
}
