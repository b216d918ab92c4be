//! `--metrics ADDR`: Prometheus text scraped over real HTTP from a real `godwit run` and
//! `godwit worker` while they work, parsed, and checked against the state database; an address
//! that cannot be had; and `--log-format json`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{
    free_port, godwit, isolated_db, path_str, plan_url, run_cmd, runs_stored, send_signal,
    spawn_watched, spawn_watched_cmd, status_json, text, Backend, KillOnDrop, TestDb, Watched,
};
use serde_json::Value as Json;

// ---------------------------------------------------------------------------------------
// The text format, read back

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// One scrape: its samples, and each family's `# TYPE`.
#[derive(Debug, Clone, Default)]
struct Scrape {
    samples: Vec<Sample>,
    types: HashMap<String, String>,
}

/// Parses Prometheus's text format, failing the test on anything malformed: a sample before
/// its family's `# HELP` and `# TYPE`, a family announced twice, a label or value that does not
/// parse.
fn parse(body: &str) -> Scrape {
    let mut scrape = Scrape::default();
    let mut helped: Vec<String> = Vec::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("# HELP name text");
            assert!(!help.is_empty(), "empty help: {line}");
            assert!(!helped.contains(&name.to_string()), "HELP twice: {line}");
            helped.push(name.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "type: {line}"
            );
            let before = scrape.types.insert(name.to_string(), kind.to_string());
            assert!(before.is_none(), "TYPE twice: {line}");
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "line: {line:?}");
        let sample = parse_sample(line);
        let family = family_of(&sample.name, &scrape.types);
        assert!(
            scrape.types.contains_key(&family) && helped.contains(&family),
            "a sample before its family's HELP and TYPE: {line}"
        );
        scrape.samples.push(sample);
    }
    scrape
}

fn parse_sample(line: &str) -> Sample {
    let name_end = line.find(['{', ' ']).expect("a name");
    let name = line[..name_end].to_string();
    assert!(
        name.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        "name: {line}"
    );
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            rest = rest.strip_prefix(',').unwrap_or(rest);
            let (label, quoted) = rest
                .split_once("=\"")
                .unwrap_or_else(|| panic!("label=\"value\": {line}"));
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                let (i, c) = chars
                    .next()
                    .unwrap_or_else(|| panic!("a closing quote: {line}"));
                match c {
                    '"' => break i + 1,
                    '\\' => match chars.next().map(|(_, c)| c) {
                        Some('n') => value.push('\n'),
                        Some(c @ ('\\' | '"')) => value.push(c),
                        c => panic!("escape {c:?}: {line}"),
                    },
                    c => value.push(c),
                }
            };
            assert!(
                labels.insert(label.to_string(), value).is_none(),
                "label twice: {line}"
            );
            rest = &quoted[end..];
        }
    }
    let value = rest
        .strip_prefix(' ')
        .unwrap_or_else(|| panic!("a space before the value: {line}"));
    let value: f64 = value
        .parse()
        .unwrap_or_else(|e| panic!("value {value:?}: {e}: {line}"));
    Sample {
        name,
        labels,
        value,
    }
}

/// The family a sample belongs to: a histogram's `_bucket`, `_sum` and `_count` are its own.
fn family_of(name: &str, types: &HashMap<String, String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).map(String::as_str) == Some("histogram") {
                return base.to_string();
            }
        }
    }
    name.to_string()
}

impl Scrape {
    /// The value of the one series of `name` with exactly `labels`, if served.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name && s.labels == wanted)
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?} served twice");
        found.first().map(|s| s.value)
    }

    /// Like [`Scrape::get`], failing the test when the series is not served.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("{name} {labels:?} is not served: {self:#?}"))
    }

    /// A step's counter: `godwit_rows_total`, `godwit_throttled_seconds_total`.
    fn step(&self, name: &str, plan: &str, step: &str) -> f64 {
        self.value(name, &[("plan", plan), ("step", step)])
    }

    fn batches(&self, plan: &str, step: &str, outcome: &str) -> f64 {
        self.value(
            "godwit_batches_total",
            &[("plan", plan), ("step", step), ("outcome", outcome)],
        )
    }

    fn in_flight(&self) -> f64 {
        self.value("godwit_batches_in_flight", &[])
    }

    /// Checks a step's histogram: a bucket for every bound, cumulative, the last (`+Inf`) equal
    /// to the count; returns the count.
    fn histogram_count(&self, plan: &str, step: &str) -> f64 {
        let mut buckets: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter(|s| {
                s.name == "godwit_batch_duration_seconds_bucket"
                    && s.labels.get("plan").map(String::as_str) == Some(plan)
                    && s.labels.get("step").map(String::as_str) == Some(step)
            })
            .map(|s| {
                let le: f64 = s.labels["le"].parse().expect("le is a number");
                (le, s.value)
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(buckets.len() >= 10, "buckets of {step}: {buckets:?}");
        let bounds: Vec<f64> = buckets.iter().map(|b| b.0).collect();
        assert!(
            bounds[0] <= 0.005 && bounds[bounds.len() - 2] >= 60.0,
            "the buckets reach from 5 ms to 60 s: {bounds:?}"
        );
        assert_eq!(bounds.last(), Some(&f64::INFINITY), "{bounds:?}");
        for pair in buckets.windows(2) {
            assert!(
                pair[0].1 <= pair[1].1,
                "buckets not cumulative: {buckets:?}"
            );
        }
        let labels = [("plan", plan), ("step", step)];
        let count = self.value("godwit_batch_duration_seconds_count", &labels);
        assert_eq!(
            buckets.last().map(|b| b.1),
            Some(count),
            "+Inf bucket and count"
        );
        let sum = self.value("godwit_batch_duration_seconds_sum", &labels);
        assert!(
            sum >= 0.0 && (count == 0.0) == (sum == 0.0),
            "sum {sum}, count {count}"
        );
        count
    }
}

/// Fails unless no counter (nor histogram series) went down or vanished from `before` to
/// `after`, and the in-flight gauge stays within `0..=concurrency`.
fn assert_monotonic(before: &Scrape, after: &Scrape, concurrency: f64) {
    for s in &before.samples {
        let family = family_of(&s.name, &before.types);
        if before.types[&family] == "gauge" {
            continue;
        }
        let labels: Vec<(&str, &str)> = s
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let now = after.get(&s.name, &labels);
        assert!(
            now.is_some_and(|now| now >= s.value),
            "{} {:?} went from {} to {now:?}",
            s.name,
            s.labels,
            s.value
        );
    }
    let in_flight = after.in_flight();
    assert!(
        (0.0..=concurrency).contains(&in_flight),
        "{in_flight} batches in flight"
    );
}

/// `GET /metrics` on `addr`, over a plain TCP connection; `None` while nothing listens there.
fn try_scrape(addr: &str) -> Option<Scrape> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not HTTP: {response:?}"));
    let mut head = head.lines();
    assert_eq!(head.next(), Some("HTTP/1.1 200 OK"), "{response}");
    let headers: HashMap<String, String> = head
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert_eq!(
        headers.get("content-length").map(String::as_str),
        Some(body.len().to_string().as_str()),
        "a whole body, not chunked"
    );
    Some(parse(body))
}

fn scrape(addr: &str) -> Scrape {
    try_scrape(addr).unwrap_or_else(|| panic!("nothing serves {addr}"))
}

/// Scrapes until the endpoint answers (the process listens before any work starts).
async fn first_scrape(addr: &str, run: &mut Watched) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(scrape) = try_scrape(addr) {
            return scrape;
        }
        assert!(
            Instant::now() < deadline && run.alive(),
            "{addr} never answered: {}",
            run.output_so_far()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Scrapes every 100 ms, each scrape checked against the one before, until `done` holds of
/// the latest scrape and the JSON events printed so far; returns that scrape.
async fn scrape_until(
    addr: &str,
    run: &mut Watched,
    last: &mut Scrape,
    what: &str,
    done: impl Fn(&Scrape, &[Json]) -> bool,
) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let now = scrape(addr);
        assert_monotonic(last, &now, CONCURRENCY as f64);
        *last = now.clone();
        run.output_so_far();
        if done(&now, &run.events()) {
            return now;
        }
        assert!(
            Instant::now() < deadline && run.alive(),
            "gave up waiting for {what}: {}",
            run.output_so_far()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn has_event(events: &[Json], event: &str, step: &str) -> bool {
    events
        .iter()
        .any(|e| e["event"] == event && (e["step"] == step || e["plan"] == step))
}

// ---------------------------------------------------------------------------------------
// `run --metrics`: during the run, and checked against the state database

const CONCURRENCY: u32 = 2;
const ROWS: i64 = 400;
/// The row whose batch (keys 11..=20) runs past `batch_timeout` until the test lets it go
/// (one of the rows the statement changes: `grp` is not 0).
const STUCK_ID: i64 = 16;
/// How long the test holds the throttle on.
const THROTTLE_FOR: Duration = Duration::from_secs(5);

/// `true`/`false` as the backend's boolean column takes it.
fn boolean(backend: Backend, on: bool) -> &'static str {
    match (backend, on) {
        (Backend::Sqlite, true) => "1",
        (Backend::Sqlite, false) => "0",
        (_, true) => "true",
        (_, false) => "false",
    }
}

/// The plan of [`run_metrics_match_the_state_database`]: step `work` adds 1 to the rows of
/// `t` whose `grp` is not 0 (so a batch's rows are more than it affects), slowly (about 0.1 s
/// a batch), the batch of [`STUCK_ID`] running past its time limit while `control.stuck` is
/// 1, throttled while `switch.paused`; then the one-off step `gate`, throttled while
/// `gate.closed`, which holds the process alive after `work` until the test opens it.
fn run_plan(db: &TestDb, t: &str, control: &str, switch: &str, gate: &str) -> PathBuf {
    let (slow, stuck) = match db.backend {
        Backend::Sqlite => (
            "(WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 300000) SELECT COUNT(*) FROM s) > 0",
            "(WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 1000000000) SELECT COUNT(*) FROM s) > 0",
        ),
        _ => ("pg_sleep(0.01) IS NOT NULL", "pg_sleep(5) IS NOT NULL"),
    };
    let text = format!(
        r#"name = "{t}"
database = "{url}"

[defaults]
batch_size = 10
adaptive = false
batch_timeout = "1s"
max_attempts = 10

[[steps]]
name = "work"
table = "{t}"
key = "id"
throttle_query = "SELECT paused FROM {switch}"
sql = "UPDATE {t} SET hits = hits + 1 WHERE id BETWEEN :start AND :end AND grp <> 0 AND {slow} AND CASE WHEN id = {STUCK_ID} AND (SELECT stuck FROM {control}) = 1 THEN {stuck} ELSE 1 = 1 END"

[[steps]]
name = "gate"
after = ["work"]
throttle_query = "SELECT closed FROM {gate}"
sql = "UPDATE {gate} SET passed = 1"
"#,
        url = db.url
    );
    db.plan("metrics.toml", &text)
}

/// `(batches, sum of n_rows, sum of rows_affected, sum of attempts)` of a step's batches in
/// `state`.
async fn stored_batches(db: &TestDb, run: &str, step: &str, state: &str) -> (i64, i64, i64, i64) {
    let row = db
        .query(&format!(
            "SELECT COUNT(*), COALESCE(SUM(n_rows), 0), COALESCE(SUM(rows_affected), 0), \
             COALESCE(SUM(attempts), 0) FROM godwit_batches \
             WHERE run = '{run}' AND step = '{step}' AND state = '{state}'"
        ))
        .await;
    let int = |i: usize| row[0][i].as_i64().expect("an integer");
    (int(0), int(1), int(2), int(3))
}

/// A step's entry in `status --json`.
fn step_status(plan: &Path, step: &str) -> Json {
    let status = status_json(plan);
    status["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["name"] == step).cloned())
        .unwrap_or_else(|| panic!("no step {step} in {status}"))
}

/// A run with `--metrics`, scraped every 100 ms from start to end: the counters never go
/// down; a batch that ran past its time limit is counted as retried as often as `--json`
/// said so; a throttle held for a measured 5 s shows as about that many throttled seconds; and
/// once `work` is done (the process held alive by the throttled `gate` step), the counters
/// equal what the state database holds of the step: rows (the batches' key ranges, not the
/// rows their statement affected), batches done and their duration histogram, retries, no
/// failure, nothing in flight.
async fn run_metrics_match_the_state_database(backend: Backend) {
    let db = TestDb::new(backend).await;
    let t = db.table("metered");
    let (control, switch, gate) = (db.table("control"), db.table("switch"), db.table("gate"));
    db.counter_table(&t, 1..=ROWS).await;
    let flag = match backend {
        Backend::Sqlite => "INTEGER",
        _ => "BOOLEAN",
    };
    db.exec(&format!("CREATE TABLE {control} (stuck INT NOT NULL)"))
        .await;
    db.exec(&format!("INSERT INTO {control} VALUES (1)")).await;
    db.exec(&format!("CREATE TABLE {switch} (paused {flag} NOT NULL)"))
        .await;
    db.exec(&format!(
        "INSERT INTO {switch} VALUES ({})",
        boolean(backend, false)
    ))
    .await;
    db.exec(&format!(
        "CREATE TABLE {gate} (closed {flag} NOT NULL, passed INT NOT NULL)"
    ))
    .await;
    db.exec(&format!(
        "INSERT INTO {gate} VALUES ({}, 0)",
        boolean(backend, true)
    ))
    .await;
    let plan = run_plan(&db, &t, &control, &switch, &gate);
    let addr = format!("127.0.0.1:{}", free_port());
    let concurrency = CONCURRENCY.to_string();
    let mut run = KillOnDrop(spawn_watched(&[
        "run",
        path_str(&plan),
        "--json",
        "--concurrency",
        &concurrency,
        "--metrics",
        &addr,
    ]));
    let mut last = first_scrape(&addr, &mut run).await;

    // A retry, counted as `--json` reports it. The stuck batch is let go only after the
    // throttle below, so that the step cannot end before it.
    scrape_until(&addr, &mut run, &mut last, "a batch_retry", |_, events| {
        has_event(events, "batch_retry", "work")
    })
    .await;

    // Throttled for a measured while, in the middle of the step. (The step also waited for
    // its throttle query's first answer, a moment, which counts too.)
    let throttled_at = Instant::now();
    db.exec(&format!(
        "UPDATE {switch} SET paused = {}",
        boolean(backend, true)
    ))
    .await;
    let throttled_before = last.step("godwit_throttled_seconds_total", &t, "work");
    let noticed = scrape_until(&addr, &mut run, &mut last, "the throttle", |_, events| {
        events.iter().any(|e| {
            e["event"] == "step_throttled"
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("throttle_query returned true"))
        })
    })
    .await;
    assert!(noticed.step("godwit_rows_total", &t, "work") < ROWS as f64);
    // While throttled, the batches in flight finish and none start.
    scrape_until(&addr, &mut run, &mut last, "no batch in flight", |s, _| {
        s.in_flight() == 0.0
    })
    .await;
    tokio::time::sleep(THROTTLE_FOR.saturating_sub(throttled_at.elapsed())).await;
    db.exec(&format!("UPDATE {control} SET stuck = 0")).await;
    db.exec(&format!(
        "UPDATE {switch} SET paused = {}",
        boolean(backend, false)
    ))
    .await;
    let held = throttled_at.elapsed().as_secs_f64();

    // `work` done: every one of its batches was counted before `step_done` was printed, and
    // the process waits at the gate.
    let at_gate = scrape_until(&addr, &mut run, &mut last, "the gate", |_, events| {
        has_event(events, "step_done", "work") && has_event(events, "step_throttled", "gate")
    })
    .await;
    let events = run.events();
    let status = step_status(&plan, "work");
    let (done, rows, affected, attempts) = stored_batches(&db, &t, "work", "done").await;
    assert_eq!(done, ROWS / 10, "every batch of work done");
    assert_eq!(rows, ROWS, "the batches' ranges cover the table");
    assert!(
        affected < rows,
        "the statement affects fewer rows ({affected}) than the batches hold ({rows})"
    );
    let rows_total = at_gate.step("godwit_rows_total", &t, "work");
    assert_eq!(rows_total, rows as f64, "rows_total and the stored n_rows");
    assert_eq!(status["rows_done"].as_f64(), Some(rows_total), "{status}");
    let done_total = at_gate.batches(&t, "work", "done");
    assert_eq!(done_total, done as f64);
    assert_eq!(
        status["batches_done"].as_f64(),
        Some(done_total),
        "{status}"
    );
    assert_eq!(at_gate.histogram_count(&t, "work"), done_total);
    let retries = events
        .iter()
        .filter(|e| e["event"] == "batch_retry" && e["step"] == "work")
        .count();
    assert!(retries >= 1);
    let retried = at_gate.batches(&t, "work", "retried");
    assert_eq!(retried, retries as f64, "retried and batch_retry events");
    assert_eq!(retried, attempts as f64, "retried and the stored attempts");
    assert_eq!(at_gate.batches(&t, "work", "failed"), 0.0);
    assert_eq!(status["batches_failed"], 0, "{status}");
    assert_eq!(at_gate.in_flight(), 0.0, "nothing runs at the gate");

    // Throttle signals are read every 2 s: noticed up to about 2 s late at either end.
    let throttled = at_gate.step("godwit_throttled_seconds_total", &t, "work");
    let measured = throttled - throttled_before;
    assert!(
        (held - 3.0..=held + 3.0).contains(&measured),
        "throttled for {measured} s while the test held the throttle {held} s"
    );
    let gated = at_gate.step("godwit_throttled_seconds_total", &t, "gate");
    let later = scrape_until(
        &addr,
        &mut run,
        &mut last,
        "the gate's time to grow",
        |s, _| s.step("godwit_throttled_seconds_total", &t, "gate") > gated,
    )
    .await;
    assert_eq!(
        later.step("godwit_throttled_seconds_total", &t, "work"),
        throttled,
        "work is no longer throttled"
    );

    db.exec(&format!(
        "UPDATE {gate} SET closed = {}",
        boolean(backend, false)
    ))
    .await;
    assert_eq!(
        run.finish(Duration::from_secs(60)),
        Some(0),
        "{}",
        run.stderr_text()
    );
    assert_eq!(
        db.scalar(&format!("SELECT passed FROM {gate}")).await,
        1,
        "the gate step ran"
    );
    let wrong = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM {t} WHERE hits <> CASE WHEN grp <> 0 THEN 1 ELSE 0 END"
        ))
        .await;
    assert_eq!(wrong, 0, "rows of {t} not updated exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_metrics_match_the_state_database_pg() {
    run_metrics_match_the_state_database(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_metrics_match_the_state_database_sqlite() {
    run_metrics_match_the_state_database(Backend::Sqlite).await;
}

// ---------------------------------------------------------------------------------------
// `worker --metrics`

/// A worker with `--metrics` serves before it has a run (nothing in flight, no step), then
/// counts a submitted run whose batch of key 37 breaks a CHECK constraint: once the worker
/// reports the run failed (and stays up, waiting for more), one batch is counted failed and
/// the batches done and their rows equal the state database's.
async fn worker_metrics_count_a_failed_batch(backend: Backend) {
    let db = isolated_db(backend).await;
    let t = db.table("doomed");
    let id_type = common::id_type(backend);
    db.exec(&format!(
        "CREATE TABLE {t} (id {id_type} PRIMARY KEY, hits INT NOT NULL DEFAULT 0 CHECK (hits < 100))"
    ))
    .await;
    let values: Vec<String> = (1..=60).map(|i| format!("({i})")).collect();
    db.exec(&format!(
        "INSERT INTO {t} (id) VALUES {}",
        values.join(", ")
    ))
    .await;
    let plan = db.plan(
        "doomed.toml",
        &format!(
            r#"name = "{t}"
database = "{url}"

[defaults]
batch_size = 10
adaptive = false

[[steps]]
name = "count"
table = "{t}"
key = "id"
sql = "UPDATE {t} SET hits = hits + CASE WHEN id = 37 THEN 100 ELSE 1 END WHERE id BETWEEN :start AND :end"
"#,
            url = plan_url(&db.url)
        ),
    );
    let addr = format!("127.0.0.1:{}", free_port());
    let mut worker = KillOnDrop(spawn_watched(&[
        "worker",
        "--database",
        &db.url,
        "--json",
        "--concurrency",
        "1",
        "--metrics",
        &addr,
    ]));
    let idle = first_scrape(&addr, &mut worker).await;
    assert_eq!(idle.in_flight(), 0.0);
    assert_eq!(
        idle.get("godwit_rows_total", &[("plan", &t), ("step", "count")]),
        None
    );

    let out = run_cmd(&["submit", path_str(&plan)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // Every event of the run reaches the metrics before the worker prints `run_left`.
    worker.wait_stdout("the run to fail", Duration::from_secs(60), |line| {
        serde_json::from_str::<Json>(line)
            .is_ok_and(|e| e["event"] == "run_left" && e["outcome"] == "failed")
    });
    let end = scrape(&addr);
    assert_monotonic(&idle, &end, 1.0);
    assert!(worker.alive(), "the worker waits for more runs");
    let status = status_json(&plan);
    let step = &status["steps"][0];
    let (failed, ..) = stored_batches(&db, &t, "count", "failed").await;
    let (done, rows, ..) = stored_batches(&db, &t, "count", "done").await;
    assert_eq!(failed, 1, "{status}");
    assert_eq!(end.batches(&t, "count", "failed"), 1.0);
    assert_eq!(step["batches_failed"], 1, "{status}");
    assert_eq!(end.batches(&t, "count", "done"), done as f64);
    assert_eq!(step["batches_done"].as_f64(), Some(done as f64), "{status}");
    assert_eq!(end.step("godwit_rows_total", &t, "count"), rows as f64);
    assert_eq!(step["rows_done"].as_f64(), Some(rows as f64), "{status}");
    assert_eq!(end.histogram_count(&t, "count"), done as f64);
    assert_eq!(end.batches(&t, "count", "retried"), 0.0);
    assert_eq!(end.in_flight(), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_metrics_count_a_failed_batch_pg() {
    worker_metrics_count_a_failed_batch(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_metrics_count_a_failed_batch_sqlite() {
    worker_metrics_count_a_failed_batch(Backend::Sqlite).await;
}

// ---------------------------------------------------------------------------------------
// An address that cannot be had

/// `--metrics` with an address that is not HOST:PORT, a port out of range, or a port another
/// process holds: exit 2 naming the option and the address, before anything is stored or
/// changed (`run`), or any state database is opened (`worker`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_cannot_be_had_exits_2_before_any_work() {
    let db = TestDb::new(Backend::Sqlite).await;
    let t = db.table("untouched");
    db.counter_table(&t, 1..=20).await;
    let plan = db.step_plan(
        &t,
        "batch_size = 10",
        &format!(
            "name = \"count\"\ntable = \"{t}\"\nkey = \"id\"\n\
             sql = \"UPDATE {t} SET hits = hits + 1 WHERE id BETWEEN :start AND :end\""
        ),
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port to hold");
    let taken = taken.local_addr().expect("its address").to_string();
    for (addr, why) in [
        ("127.0.0.1:99999", "invalid port"),
        ("nonsense", "HOST:PORT"),
        (taken.as_str(), "in use"),
    ] {
        let out = run_cmd(&["run", path_str(&plan), "--metrics", addr]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{addr}: {err}");
        assert!(
            err.starts_with("error: --metrics: cannot listen on")
                && err.contains(addr)
                && err.contains(why),
            "{addr}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");

        let worker = ["worker", "--database", &db.url, "--metrics", addr];
        let out = run_cmd(&worker);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "worker, {addr}: {err}");
        assert!(err.contains(addr) && err.contains(why), "{addr}: {err}");
    }
    assert_eq!(runs_stored(&db, &t).await, 0, "a run was stored");
    assert_eq!(
        db.scalar(&format!("SELECT COUNT(*) FROM {t} WHERE hits > 0"))
            .await,
        0
    );
}

// ---------------------------------------------------------------------------------------
// `--log-format json`

/// Fails unless every line is a JSON object with a `level` and a `message`; returns them.
fn json_lines(lines: &[String]) -> Vec<Json> {
    lines
        .iter()
        .map(|line| {
            let json: Json = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?} in {lines:#?}"));
            let level = json["level"].as_str().unwrap_or_default();
            assert!(
                ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level),
                "level: {line}"
            );
            assert!(json["message"].is_string(), "message: {line}");
            json
        })
        .collect()
}

/// With `--log-format json` every line on stderr is one JSON object with a level and a
/// message: the command's own lines (starting, a throttled step, stopping on SIGTERM, an
/// error, a usage error) and the library's logs, with their fields. The plan's database URL and a
/// replica URL both carry a password, which appears nowhere: the replica's URL is shown
/// redacted in the throttle reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_without_passwords() {
    const SECRET: &str = "hunter2-metrics-secret";
    let db = TestDb::new(Backend::Postgres).await;
    let t = db.table("logged");
    db.counter_table(&t, 1..=20).await;
    let replica = format!("postgres://spy:{SECRET}@127.0.0.1:{}/none", free_port());
    let plan = db.plan(
        "logged.toml",
        &format!(
            "name = \"{t}\"\ndatabase = \"{}\"\nreplicas = [\"{replica}\"]\nmax_replica_lag = \"1s\"\n\n\
             [[steps]]\nname = \"count\"\ntable = \"{t}\"\nkey = \"id\"\n\
             sql = \"UPDATE {t} SET hits = hits + 1 WHERE id BETWEEN :start AND :end\"\n",
            db.url
        ),
    );
    let mut cmd = godwit();
    cmd.env("RUST_LOG", "info")
        .args(["run", path_str(&plan), "--log-format", "json"]);
    let mut run = KillOnDrop(spawn_watched_cmd(cmd));
    run.wait_stderr(
        "the step to say it is throttled",
        Duration::from_secs(30),
        |line| line.contains("count: throttled"),
    );
    send_signal(run.child.id(), "TERM");
    assert_eq!(
        run.finish(Duration::from_secs(60)),
        Some(75),
        "{}",
        run.stderr_text()
    );
    let logs = json_lines(&run.stderr_lines);
    let messages: Vec<&str> = logs
        .iter()
        .map(|l| l["message"].as_str().unwrap_or_default())
        .collect();
    let said = |part: &str| messages.iter().any(|m| m.contains(part));
    assert!(said("starting") && said("stopping"), "{messages:#?}");
    assert!(
        said("spy:***@127.0.0.1"),
        "the replica, redacted: {messages:#?}"
    );
    assert!(
        logs.iter().any(|l| l["target"] != "godwit::output"
            && l["reason"].as_str().is_some_and(|r| r.contains("spy:***@"))),
        "the library's logs too, with their fields: {messages:#?}"
    );
    let all = run.stderr_text();
    assert!(!all.contains(SECRET), "the replica's password was shown");
    let plan_password = db
        .url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'));
    let user_info = plan_password
        .map(|(user_info, _)| user_info)
        .unwrap_or_default();
    assert!(
        user_info.contains(':'),
        "the test database's URL has a password"
    );
    assert!(
        !all.contains(&format!("{user_info}@")),
        "the database's password was shown"
    );

    // An error, and a command line that does not parse, are JSON too.
    let out = run_cmd(&["run", "no-such-plan.toml", "--log-format", "json"]);
    assert_eq!(out.status.code(), Some(2));
    let lines: Vec<String> = text(&out.stderr).lines().map(String::from).collect();
    let logs = json_lines(&lines);
    assert_eq!(logs.len(), 1, "{lines:?}");
    assert_eq!(logs[0]["level"], "ERROR");
    assert!(logs[0]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("no-such-plan.toml"));
    let out = run_cmd(&["--log-format=json", "run", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    let lines: Vec<String> = text(&out.stderr).lines().map(String::from).collect();
    let logs = json_lines(&lines);
    assert!(
        logs.len() == 1
            && logs[0]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("--no-such-flag"),
        "{lines:?}"
    );
}

// ---------------------------------------------------------------------------------------
// The Grafana dashboard

/// The metric names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("godwit_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// `deploy/grafana/godwit.json` is a dashboard Grafana imports (a title, a uid, a schema
/// version, panels placed on the grid, a Prometheus datasource variable that every panel and
/// query uses) and it charts exactly the families a real `--metrics` endpoint serves, each of
/// them: rows per second, outcomes, p50 and p99 from the histogram, in flight, the throttled
/// fraction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_charts_exactly_the_served_metrics() {
    let db = TestDb::new(Backend::Sqlite).await;
    let addr = format!("127.0.0.1:{}", free_port());
    let mut worker = KillOnDrop(spawn_watched(&[
        "worker",
        "--database",
        &db.url,
        "--json",
        "--metrics",
        &addr,
    ]));
    let served = first_scrape(&addr, &mut worker).await;
    let families: std::collections::BTreeSet<String> = served.types.keys().cloned().collect();
    assert_eq!(families.len(), 5, "{families:?}");

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/godwit.json");
    let text = std::fs::read_to_string(&path).expect("the dashboard");
    let dashboard: Json = serde_json::from_str(&text).expect("the dashboard is JSON");
    for key in ["title", "uid"] {
        assert!(dashboard[key].is_string(), "{key}");
    }
    assert!(dashboard["schemaVersion"].as_i64().unwrap_or(0) >= 30);
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "a Prometheus datasource variable: {variables:?}"
    );
    let on_variable = |d: &Json| d["type"] == "prometheus" && d["uid"] == "${datasource}";
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().expect("a title");
        assert!(on_variable(&panel["datasource"]), "{title}");
        for key in ["x", "y", "w", "h"] {
            assert!(panel["gridPos"][key].is_u64(), "{title}: gridPos.{key}");
        }
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}");
        for target in targets {
            assert!(on_variable(&target["datasource"]), "{title}");
            exprs.push(target["expr"].as_str().expect("an expr").to_string());
        }
    }
    let used: std::collections::BTreeSet<String> = exprs
        .iter()
        .flat_map(|e| metric_names(e))
        .map(|name| family_of(&name, &served.types))
        .collect();
    assert_eq!(
        used, families,
        "what the dashboard charts and what is served"
    );
    let charted = |part: &str| exprs.iter().any(|e| e.contains(part));
    assert!(charted("rate(godwit_rows_total"), "{exprs:?}");
    assert!(charted("rate(godwit_batches_total"), "{exprs:?}");
    assert!(charted("histogram_quantile(0.5,") && charted("histogram_quantile(0.99,"));
    assert!(charted("rate(godwit_throttled_seconds_total"), "{exprs:?}");
    assert!(charted("godwit_batches_in_flight"), "{exprs:?}");
}
