//! `godwit report` after real runs: its numbers in JSON, Markdown and HTML are those the state
//! tables hold (rows, batches, a retry from a batch that fails once, rows a transform
//! dead-letters, the workers of two processes, the estimate recorded before the run), its ETA
//! history agrees with the batches' times, a run still going and a failed run get one too,
//! and the HTML page renders its charts in headless Chromium without fetching anything.

mod common;

use std::path::Path;
use std::time::Duration;

use common::browser::browser;
use common::{isolated_db, path_str, run_cmd, spawn_watched, text, Backend, KillOnDrop, TestDb};
use godwit::state::{Estimate, StateStore, StepEstimate};
use godwit_driver::DbUrl;
use serde_json::Value as Json;

/// `godwit report ARGS…`, which must exit 0; its stdout.
fn report(args: &[&str]) -> String {
    let mut all = vec!["report"];
    all.extend_from_slice(args);
    let out = run_cmd(&all);
    assert_eq!(
        out.status.code(),
        Some(0),
        "godwit {all:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn report_json(plan: &Path) -> Json {
    let out = report(&[path_str(plan), "--format", "json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("no JSON ({e}): {out}"))
}

/// The estimate `godwit estimate` would record: the plan and each step.
fn estimate(projected: f64) -> Estimate {
    let step = |name: &str, seconds: f64| StepEstimate {
        name: name.into(),
        projected_seconds: seconds,
        low_seconds: seconds * 0.8,
        high_seconds: seconds * 1.3,
        rows_estimate: Some(6000),
        sampled_batches: Some(12),
    };
    Estimate {
        projected_seconds: projected,
        low_seconds: projected * 0.8,
        high_seconds: projected * 1.3,
        steps: vec![step("count", projected - 2.0), step("touch", 2.0)],
    }
}

async fn record_estimate(db: &TestDb, run: &str, projected: f64) {
    let url = DbUrl::new(db.url.clone());
    let conn = godwit::connect(&url).await.expect("connect");
    let store = StateStore::open(&url, conn).await.expect("state store");
    store
        .record_estimate(run, &estimate(projected))
        .await
        .expect("record the estimate");
}

/// One integer of `sql`, or `None` for NULL.
async fn int(db: &TestDb, sql: &str) -> Option<i64> {
    db.query(sql).await[0][0].as_i64()
}

/// Milliseconds as the report's seconds.
fn secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

const ROWS: i64 = 6000;

/// Two steps over 6,000 rows in batches of 100 on PostgreSQL: `count`, paced at 0.1 s a
/// batch, whose first batch fails once with a serialization failure (retried); then `touch`,
/// a Lua transform that dead-letters every hundredth row. Two `godwit run` processes share
/// the run. An estimate is recorded before the run and another after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_holds_what_the_state_tables_hold() {
    let db = isolated_db(Backend::Postgres).await;
    let table = db.table("reported");
    let (gate, calls) = (db.table("gate"), db.table("calls"));
    db.counter_table(&table, 1..=ROWS).await;
    // A sequence is not rolled back with the batch: its first call fails the batch once.
    db.exec(&format!(
        "CREATE SEQUENCE {calls};
         CREATE FUNCTION {gate}() RETURNS boolean LANGUAGE plpgsql AS $$
         BEGIN
           PERFORM pg_sleep(0.1);
           IF nextval('{calls}') = 1 THEN
             RAISE EXCEPTION 'the first batch fails once' USING ERRCODE = '40001';
           END IF;
           RETURN true;
         END $$"
    ))
    .await;
    let plan = db.plan(
        "reported.toml",
        &format!(
            r#"name = "{table}"
database = "{url}"

[defaults]
batch_size = 100
adaptive = false

[[steps]]
name = "count"
table = "{table}"
key = "id"
sql = "UPDATE {table} SET hits = hits + 1 WHERE id BETWEEN :start AND :end AND (SELECT {gate}())"

[[steps]]
name = "touch"
after = ["count"]
table = "{table}"
key = "id"
columns = ["hits"]
on_row_error = "skip"
lua = '''
function transform(row)
  if row.id % 100 == 0 then error("refused") end
  return {{hits = row.hits + 1}}
end
'''
"#,
            url = common::plan_url(&db.url)
        ),
    );
    let run = table.clone();
    record_estimate(&db, &run, 9.5).await;

    let args = ["run", path_str(&plan), "--json", "--concurrency", "1"];
    let mut first = KillOnDrop(spawn_watched(&args));
    first.wait_stdout(
        "the first process's first batch",
        Duration::from_secs(60),
        |l| l.contains("\"batch_done\""),
    );
    let mut second = KillOnDrop(spawn_watched(&args));
    second.wait_stdout(
        "the second process's first batch",
        Duration::from_secs(60),
        |l| l.contains("\"batch_done\""),
    );

    // While it runs: a report too, which says so.
    let going = report_json(&plan);
    assert_eq!(going["state"], "running", "{going:#}");
    assert!(going["finished_at"].is_null(), "{going:#}");
    assert!(going["duration_seconds"].as_f64().unwrap_or_default() > 0.0);

    for (name, process) in [("first", &mut first), ("second", &mut second)] {
        assert_eq!(
            process.finish(Duration::from_secs(180)),
            Some(0),
            "the {name} process: {}",
            process.output_so_far()
        );
    }
    assert!(
        first.events().iter().any(|e| e["event"] == "batch_retry"),
        "the first batch was retried: {:?}",
        first.stdout_lines
    );
    record_estimate(&db, &run, 99.0).await;

    let json = report_json(&plan);
    check_json(&db, &run, &json).await;
    check_eta_history(&db, &run, &json).await;
    check_markdown(&db, &plan, &json);
    check_html(&db, &plan, &run).await;

    // A run not stored there: exit 1, naming the database without its password.
    let missing = run_cmd(&["report", "--database", &db.url, "--run", "no-such-run"]);
    let said = text(&missing.stderr);
    assert_eq!(missing.status.code(), Some(1), "{said}");
    assert!(said.contains("no run of \"no-such-run\""), "{said}");
    assert!(!said.contains(":godwit@"), "a password printed: {said}");
}

/// Every number of the JSON report against the state tables.
async fn check_json(db: &TestDb, run: &str, json: &Json) {
    let one = |sql: String| async move { int(db, &sql).await };
    assert_eq!(json["plan"], run);
    assert_eq!(json["state"], "done");
    let started = one(format!(
        "SELECT started_ms FROM godwit_runs WHERE run = '{run}'"
    ))
    .await
    .expect("started");
    let finished = one(format!(
        "SELECT finished_ms FROM godwit_runs WHERE run = '{run}'"
    ))
    .await
    .expect("finished");
    assert_eq!(
        json["duration_seconds"].as_f64(),
        Some(secs(finished - started))
    );
    assert_eq!(
        json["started_at"].as_str().map(|s| s.len()),
        Some("2025-01-01T00:00:00.000Z".len())
    );
    // The estimate recorded before the run, not the one since.
    assert_eq!(json["estimated_seconds"], 9.5);
    assert_eq!(json["estimate"]["high_seconds"].as_f64(), Some(9.5 * 1.3));

    let steps = json["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2);
    for step in steps {
        let name = step["name"].as_str().expect("name");
        let batches = format!("FROM godwit_batches WHERE run = '{run}' AND step = '{name}'");
        let step_row = format!("FROM godwit_steps WHERE run = '{run}' AND step = '{name}'");
        let rows = one(format!("SELECT SUM(n_rows) {batches} AND state = 'done'")).await;
        assert_eq!(step["rows"].as_i64(), rows, "{name}");
        assert_eq!(rows, Some(ROWS), "{name}");
        let done = one(format!("SELECT COUNT(*) {batches} AND state = 'done'")).await;
        assert_eq!(step["batches"].as_i64(), done, "{name}");
        assert_eq!(done, Some(ROWS / 100), "{name}");
        let attempts = one(format!("SELECT SUM(attempts) {batches}")).await;
        assert_eq!(step["retries"].as_i64(), attempts, "{name}");
        let skipped = one(format!("SELECT SUM(rows_skipped) {batches}")).await;
        assert_eq!(step["rows_skipped"].as_i64(), skipped, "{name}");
        let longest = one(format!("SELECT MAX(duration_ms) {batches}")).await;
        assert_eq!(
            step["longest_batch_seconds"].as_f64(),
            longest.map(secs),
            "{name}"
        );
        let from = one(format!("SELECT started_ms {step_row}"))
            .await
            .expect("start");
        let to = one(format!("SELECT finished_ms {step_row}"))
            .await
            .expect("end");
        assert_eq!(
            step["duration_seconds"].as_f64(),
            Some(secs(to - from)),
            "{name}"
        );
        assert_eq!(
            step["rows_per_second"].as_f64(),
            Some(round1(ROWS as f64 / secs(to - from))),
            "{name}"
        );
        let workers: Vec<String> = db
            .query(&format!("SELECT DISTINCT worker {batches} ORDER BY worker"))
            .await
            .iter()
            .filter_map(|r| r[0].as_str().map(str::to_string))
            .collect();
        let reported: Vec<&str> = step["workers"]
            .as_array()
            .expect("workers")
            .iter()
            .filter_map(|w| w["worker"].as_str())
            .collect();
        assert_eq!(reported, workers, "{name}");
        assert_eq!(step["state"], "done");
    }
    let (count, touch) = (&steps[0], &steps[1]);
    assert_eq!(
        (count["name"].as_str(), count["retries"].as_i64()),
        (Some("count"), Some(1)),
        "the first batch failed once"
    );
    assert_eq!(
        count["workers"].as_array().map(Vec::len),
        Some(2),
        "two processes"
    );
    assert_eq!(
        touch["rows_skipped"].as_i64(),
        Some(ROWS / 100),
        "every hundredth row dead-lettered"
    );
    assert_eq!(count["estimated_seconds"], 7.5);
    assert_eq!(touch["estimated_seconds"], 2.0);
}

/// Each point of the ETA history: the rows left when it was taken and the rate of the
/// batches finished in the 30 seconds before, computed here from the batches' times.
async fn check_eta_history(db: &TestDb, run: &str, json: &Json) {
    let count = &json["steps"][0];
    let points = count["eta_history"].as_array().expect("an ETA history");
    assert!(points.len() >= 3, "{points:?}");
    let started = int(
        db,
        &format!("SELECT started_ms FROM godwit_runs WHERE run = '{run}'"),
    )
    .await
    .expect("started");
    let total = int(
        db,
        &format!("SELECT rows_total FROM godwit_steps WHERE run = '{run}' AND step = 'count'"),
    )
    .await
    .expect("counted");
    for point in points {
        let at = started + (point["at_seconds"].as_f64().expect("at") * 1000.0).round() as i64;
        let done = format!(
            "FROM godwit_batches WHERE run = '{run}' AND step = 'count' AND state = 'done' \
             AND finished_ms < {at}"
        );
        let rows_done = int(db, &format!("SELECT COALESCE(SUM(n_rows), 0) {done}"))
            .await
            .unwrap_or_default();
        assert_eq!(
            point["rows_left"].as_i64(),
            Some(total - rows_done),
            "{point}"
        );
        let window = format!("{done} AND finished_ms >= {}", at - 30_000);
        let rows = int(db, &format!("SELECT COALESCE(SUM(n_rows), 0) {window}"))
            .await
            .unwrap_or_default();
        let first = int(db, &format!("SELECT MIN(claimed_ms) {window}")).await;
        let rate = first.map_or(0.0, |f| rows as f64 * 1000.0 / (at - f) as f64);
        assert_eq!(
            point["rows_per_second"].as_f64(),
            Some(round1(rate)),
            "{point}"
        );
        let eta = (rate > 0.0).then(|| round1((total - rows_done) as f64 / rate));
        assert_eq!(point["eta_seconds"].as_f64(), eta, "{point}");
        let finished = int(
            db,
            &format!("SELECT finished_ms FROM godwit_steps WHERE run = '{run}' AND step = 'count'"),
        )
        .await
        .expect("finished");
        assert_eq!(
            point["actual_seconds_left"].as_f64(),
            Some(secs(finished - at)),
            "{point}"
        );
    }
    assert!(
        points.iter().any(|p| p["eta_seconds"].as_f64().is_some()),
        "{points:?}"
    );
}

/// The Markdown table's cells for each step hold the JSON's numbers, as people read them.
fn check_markdown(db: &TestDb, plan: &Path, json: &Json) {
    let md = report(&[path_str(plan)]);
    assert!(
        md.contains(&format!("### Migration {}: done in ", db.table("reported"))),
        "{md}"
    );
    assert!(md.contains("Estimated beforehand: 9.50 s"), "{md}");
    let header = md
        .lines()
        .find(|l| l.starts_with("| Step |"))
        .unwrap_or_else(|| panic!("no table: {md}"));
    let columns: Vec<&str> = header.trim_matches('|').split('|').map(str::trim).collect();
    let cell = |row: &str, column: &str| -> String {
        let at = columns
            .iter()
            .position(|c| *c == column)
            .unwrap_or_else(|| panic!("no column {column} in {header}"));
        row.trim_matches('|')
            .split('|')
            .map(str::trim)
            .nth(at)
            .unwrap_or_default()
            .to_string()
    };
    for step in json["steps"].as_array().expect("steps") {
        let name = step["name"].as_str().expect("name");
        let row = md
            .lines()
            .find(|l| l.starts_with(&format!("| {name} |")))
            .unwrap_or_else(|| panic!("no row for {name}: {md}"));
        assert_eq!(cell(row, "Rows"), "6,000", "{row}");
        assert_eq!(cell(row, "Batches"), "60", "{row}");
        assert_eq!(cell(row, "Retries"), step["retries"].to_string(), "{row}");
        assert_eq!(
            cell(row, "Skipped rows"),
            step["rows_skipped"].to_string(),
            "{row}"
        );
        assert_eq!(
            cell(row, "Workers"),
            step["workers"].as_array().map_or(0, Vec::len).to_string(),
            "{row}"
        );
        assert_eq!(cell(row, "State"), "done", "{row}");
    }
}

/// The HTML page, written with `--output`, in headless Chromium: its throughput chart has a
/// line of several points per step, its ETA chart a line, and the page fetched nothing.
async fn check_html(db: &TestDb, plan: &Path, run: &str) {
    let page = db.dir.path().join("report.html");
    let out = run_cmd(&[
        "report",
        "--database",
        &db.url,
        "--run",
        run,
        "--format",
        "html",
        "--output",
        path_str(&page),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        out.stdout.is_empty(),
        "with --output nothing goes to stdout"
    );
    let written = std::fs::read_to_string(&page).expect("the page");
    assert_eq!(
        written,
        report(&[path_str(plan), "--format", "html"]),
        "the same page from the plan file and from --database/--run"
    );
    let (_driver, client) = browser().await;
    client
        .goto(&format!("file://{}", page.display()))
        .await
        .expect("open the report");
    let seen = client
        .execute(
            r##"
            const lines = [...document.querySelectorAll("svg.throughput path.series")];
            const eta = [...document.querySelectorAll("svg.eta path.eta-line")];
            const box = document.querySelector("svg.throughput").getBoundingClientRect();
            return {
              steps: lines.map(p => p.dataset.step),
              points: lines.map(p => (p.getAttribute("d").match(/[ML]/g) || []).length),
              lengths: lines.map(p => p.getTotalLength()),
              eta_points: eta.map(p => (p.getAttribute("d").match(/[ML]/g) || []).length),
              chart_width: box.width,
              chart_height: box.height,
              fetched: performance.getEntriesByType("resource").map(e => e.name),
              state: document.querySelector("#state").textContent,
              rows: [...document.querySelectorAll("#steps td.rows")].map(td => td.textContent),
            };
            "##,
            vec![],
        )
        .await
        .expect("read the page");
    assert_eq!(
        seen["steps"],
        serde_json::json!(["count", "touch"]),
        "{seen}"
    );
    // A line of several points per step; `count`, which took seconds, drawn long.
    let points = seen["points"].as_array().expect("points");
    assert!(points.iter().all(|n| n.as_i64() >= Some(2)), "{seen}");
    assert!(points[0].as_i64() >= Some(3), "{seen}");
    assert!(seen["lengths"][0].as_f64() > Some(100.0), "{seen}");
    assert!(
        seen["eta_points"]
            .as_array()
            .is_some_and(|e| e.iter().any(|n| n.as_i64() >= Some(2))),
        "{seen}"
    );
    assert!(seen["chart_width"].as_f64() > Some(300.0), "{seen}");
    assert!(seen["chart_height"].as_f64() > Some(100.0), "{seen}");
    assert_eq!(seen["fetched"], serde_json::json!([]), "fetched nothing");
    assert_eq!(seen["state"], "done");
    assert_eq!(seen["rows"], serde_json::json!(["6,000", "6,000"]));
    let screenshot = client.screenshot().await.expect("a screenshot");
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report.png");
    std::fs::write(&shot, screenshot).expect("write the screenshot");
    client.close().await.expect("close the browser");
}

/// A run that failed gets a report that says so, with the step's error; on SQLite, named by
/// its state database and run. A run never started has none (exit 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_is_reported_as_failed() {
    let db = TestDb::new(Backend::Sqlite).await;
    let table = db.table("broken");
    db.counter_table(&table, 1..=50).await;
    let plan = db.step_plan(
        &table,
        "batch_size = 10\nadaptive = false",
        &format!(
            "name = \"nulls\"\ntable = \"{table}\"\nkey = \"id\"\n\
             sql = \"UPDATE {table} SET hits = NULL WHERE id BETWEEN :start AND :end\""
        ),
    );
    let never = run_cmd(&["report", path_str(&plan)]);
    assert_eq!(never.status.code(), Some(1), "{}", text(&never.stderr));
    assert!(
        text(&never.stderr).contains("no run of"),
        "{}",
        text(&never.stderr)
    );

    let out = run_cmd(&["run", path_str(&plan), "--quiet"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let json: Json = serde_json::from_str(&report(&[
        "--database",
        &db.url,
        "--run",
        &table,
        "--format",
        "json",
    ]))
    .expect("JSON");
    assert_eq!(json["state"], "failed", "{json:#}");
    assert!(json["finished_at"].is_string());
    assert!(
        json["estimated_seconds"].is_null(),
        "no estimate was recorded"
    );
    let step = &json["steps"][0];
    assert_eq!(step["state"], "failed");
    assert!(
        step["error"].as_str().is_some_and(|e| e.contains("1..=10")),
        "{step}"
    );
    let md = report(&[path_str(&plan)]);
    assert!(md.contains(": failed after "), "{md}");
    assert!(
        md.contains("No estimate was recorded before the run."),
        "{md}"
    );
    let html = report(&[path_str(&plan), "--format", "html"]);
    assert!(html.contains("The run failed"), "the page says so");
    assert_eq!(step["rows"].as_i64(), Some(0));
}
