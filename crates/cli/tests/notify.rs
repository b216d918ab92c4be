//! Notifications (`notify`): messages received by a small HTTP server of the test's own, from
//! real runs on PostgreSQL. One message per event for a whole fleet (two processes here),
//! retried when the webhook fails, never holding a run up, and never printing the webhook's
//! secret.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{path_str, run_cmd, spawn_watched, text, Backend, KillOnDrop, TestDb};
use serde_json::Value as Json;

/// A request the webhook received.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    content_type: String,
    body: Json,
    at: Instant,
}

/// A webhook on 127.0.0.1 that answers 500 to its first `failures` requests, then 200, and
/// keeps every request.
struct Hook {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Hook {
    fn start(failures: usize) -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the webhook");
        let addr = listener.local_addr().expect("address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let kept = received.clone();
        std::thread::spawn(move || {
            let mut seen = 0;
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Some(request) = read_request(&mut stream) else {
                    continue;
                };
                seen += 1;
                let status = if seen <= failures {
                    "500 Internal Server Error"
                } else {
                    "200 OK"
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                );
                kept.lock().expect("lock").push(request);
            }
        });
        Hook { addr, received }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    /// The messages received whose `event` is `event`.
    fn events(&self, event: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.body["event"] == event)
            .collect()
    }

    /// Waits until `n` messages of `event` arrived; fails after `limit`.
    fn wait_for(&self, event: &str, n: usize, limit: Duration) -> Vec<Received> {
        let started = Instant::now();
        loop {
            let got = self.events(event);
            if got.len() >= n {
                return got;
            }
            assert!(
                started.elapsed() < limit,
                "gave up waiting for {n} {event:?} messages: {:?}",
                self.received()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn read_request(stream: &mut std::net::TcpStream) -> Option<Received> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split(' ').nth(1)?.to_string();
    let (mut length, mut content_type) = (0, String::new());
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().ok()?,
            "content-type" => content_type = value.trim().to_string(),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Received {
        path,
        content_type,
        body: serde_json::from_slice(&body).ok()?,
        at: Instant::now(),
    })
}

/// A plan over `rows` rows of a counter table, 20 rows a batch, that notifies `hooks`; `extra`
/// is added to the plan's top and `[defaults]` body is `defaults`.
async fn plan(
    db: &TestDb,
    rows: i64,
    hooks: &[String],
    top: &str,
    defaults: &str,
    fail_at: Option<i64>,
) -> (std::path::PathBuf, String) {
    let table = db.table("notified");
    db.counter_table(&table, 1..=rows).await;
    let fail = match fail_at {
        Some(id) => format!(" + CASE WHEN id = {id} THEN NULL ELSE 0 END"),
        None => String::new(),
    };
    let hooks: Vec<String> = hooks.iter().map(|h| format!("{h:?}")).collect();
    let plan = db.plan(
        "notified.toml",
        &format!(
            r#"name = "{table}"
database = "{url}"
notify = [{hooks}]
{top}

[defaults]
batch_size = 20
adaptive = false
max_attempts = 1
{defaults}

[[steps]]
name = "count"
table = "{table}"
key = "id"
sql = "UPDATE {table} SET hits = hits + 1{fail} WHERE id BETWEEN :start AND :end"
"#,
            url = db.url,
            hooks = hooks.join(", ")
        ),
    );
    (plan, table)
}

/// Two processes finish one run: one "done" message, with the plan, the rows and a text for
/// Slack, as JSON; a webhook that fails twice gets it on the third attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_run_is_announced_once_and_retried() {
    let db = TestDb::new(Backend::Postgres).await;
    let (steady, flaky) = (Hook::start(0), Hook::start(2));
    let (plan, table) = plan(
        &db,
        400,
        &[steady.url("/hook/a"), flaky.url("/hook/b")],
        "",
        "",
        None,
    )
    .await;
    let mut a = KillOnDrop(spawn_watched(&["run", path_str(&plan), "--quiet"]));
    let mut b = KillOnDrop(spawn_watched(&["run", path_str(&plan), "--quiet"]));
    assert_eq!(
        a.finish(Duration::from_secs(120)),
        Some(0),
        "{}",
        a.stderr_text()
    );
    assert_eq!(
        b.finish(Duration::from_secs(120)),
        Some(0),
        "{}",
        b.stderr_text()
    );

    let done = steady.wait_for("done", 1, Duration::from_secs(30));
    let message = &done[0];
    assert_eq!(message.path, "/hook/a");
    assert!(
        message.content_type.starts_with("application/json"),
        "{message:?}"
    );
    assert_eq!(message.body["plan"], table.as_str());
    assert_eq!(message.body["state"], "done");
    assert_eq!(message.body["rows_done"], 400);
    let text = message.body["text"].as_str().unwrap_or_default();
    assert!(text.contains(&table) && text.contains("400 rows"), "{text}");
    // Both processes have exited: nothing more comes.
    assert_eq!(steady.received().len(), 1, "{:?}", steady.received());
    let flaky_done = flaky.events("done");
    assert_eq!(
        flaky_done.len(),
        3,
        "two failures, then delivered: {flaky_done:?}"
    );
}

/// A failed run says why, with the database's code; an unreachable webhook does not hold the
/// run up, and its secret path is never printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_is_announced_and_a_dead_webhook_holds_nothing_up() {
    let db = TestDb::new(Backend::Postgres).await;
    let hook = Hook::start(0);
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let (plan, _) = plan(
        &db,
        100,
        &[
            hook.url("/hook"),
            format!("http://{dead}/services/T0/SECRETPATH"),
        ],
        "",
        "",
        Some(42),
    )
    .await;
    let started = Instant::now();
    let out = run_cmd(&["run", path_str(&plan)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let took = started.elapsed();
    let failed = hook.wait_for("failed", 1, Duration::from_secs(5));
    let error = failed[0].body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("23502") && error.contains("41..=60"),
        "{error}"
    );
    assert!(failed[0].body["text"]
        .as_str()
        .unwrap_or_default()
        .contains("failed"));
    // Retries of the dead address end within the flush limit, and say so without the path.
    assert!(
        took < Duration::from_secs(40),
        "the run waited {took:?} for a dead webhook"
    );
    let stderr = text(&out.stderr);
    assert!(stderr.contains("notification not delivered"), "{stderr}");
    assert!(
        !stderr.contains("SECRETPATH"),
        "the webhook's secret was printed: {stderr}"
    );
}

/// A run throttled longer than `notify_throttled_after` is announced with the reason, by one of
/// its two processes at a time (never both at once), and its end once the throttle clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_throttled_too_long_is_announced_by_one_process() {
    let db = TestDb::new(Backend::Postgres).await;
    let hook = Hook::start(0);
    let flag = db.table("hold");
    db.exec(&format!(
        "CREATE TABLE {flag} (hold BOOLEAN NOT NULL); INSERT INTO {flag} VALUES (true)"
    ))
    .await;
    let (plan, _) = plan(
        &db,
        100,
        &[hook.url("/hook")],
        "notify_throttled_after = \"2s\"",
        &format!("throttle_query = \"SELECT hold FROM {flag}\""),
        None,
    )
    .await;
    let mut a = KillOnDrop(spawn_watched(&["run", path_str(&plan), "--quiet"]));
    let mut b = KillOnDrop(spawn_watched(&["run", path_str(&plan), "--quiet"]));
    let throttled = hook.wait_for("throttled", 2, Duration::from_secs(60));
    let reason = throttled[0].body["throttled"].as_str().unwrap_or_default();
    assert!(reason.contains("throttle_query"), "{:?}", throttled[0].body);
    assert!(throttled[0].body["text"]
        .as_str()
        .unwrap_or_default()
        .contains("throttled for"));
    let gap = throttled[1].at.duration_since(throttled[0].at);
    assert!(
        gap > Duration::from_millis(1500),
        "two processes both said it: {gap:?} apart"
    );
    assert_eq!(hook.events("done").len(), 0);

    db.exec(&format!("UPDATE {flag} SET hold = false")).await;
    assert_eq!(
        a.finish(Duration::from_secs(120)),
        Some(0),
        "{}",
        a.stderr_text()
    );
    assert_eq!(
        b.finish(Duration::from_secs(120)),
        Some(0),
        "{}",
        b.stderr_text()
    );
    assert_eq!(hook.events("done").len(), 1, "{:?}", hook.received());
}

/// `notify` takes a list of http(s) addresses; `notify_throttled_after` needs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_notify_keys_are_refused_where_they_are() {
    let db = TestDb::new(Backend::Sqlite).await;
    for (top, wanted) in [
        (
            "notify = \"http://127.0.0.1/hook\"",
            "`notify` must be an array",
        ),
        ("notify = [\"ftp://127.0.0.1/hook\"]", "http:// or https://"),
        (
            "notify_throttled_after = \"5m\"",
            "does nothing without `notify`",
        ),
        (
            "notify = [\"http://h/x\"]\nnotify_throttled_after = \"soon\"",
            "notify_throttled_after",
        ),
    ] {
        let plan = db.plan(
            "bad.toml",
            &format!(
                "name = \"bad\"\ndatabase = \"{}\"\n{top}\n\n[[steps]]\nname = \"s\"\nsql = \"SELECT 1\"\n",
                db.url
            ),
        );
        let out = run_cmd(&["check", path_str(&plan)]);
        // `check` lists its findings on stdout.
        let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(2), "{top}: {said}");
        assert!(
            said.contains(wanted) && said.contains("bad.toml:"),
            "{top}: {said}"
        );
    }
}
