//! `godwit estimate` on real databases (issue 15): it changes no data, gives the contract's
//! JSON with a range around its projection, turns a threshold into a go/no-go (exit 3), keeps
//! its projection for `godwit report`, and on a 1M-row table is compared with the real run
//! that follows (the error is printed, not asserted: timings belong to benchmarks).

mod common;

use std::time::Instant;

use common::{own_db, path_str, run_cmd, text, Backend, OwnDb};
use serde_json::Value as Json;

/// `rows` customers, a third with an old 11-digit number.
async fn customers(db: &OwnDb, rows: i64) {
    let (create, fill) = match db.backend {
        Backend::Postgres => (
            "CREATE TABLE customers (id bigint PRIMARY KEY, phone text NOT NULL)",
            format!("INSERT INTO customers SELECT g, CASE WHEN g % 3 = 0 THEN '0162' || lpad(g::text, 7, '0') ELSE '09' || lpad(g::text, 8, '0') END FROM generate_series(1, {rows}) g"),
        ),
        Backend::MySql => (
            "CREATE TABLE customers (id BIGINT PRIMARY KEY, phone VARCHAR(16) NOT NULL)",
            format!("INSERT INTO customers SELECT seq, CASE WHEN seq % 3 = 0 THEN CONCAT('0162', LPAD(seq, 7, '0')) ELSE CONCAT('09', LPAD(seq, 8, '0')) END FROM seq_1_to_{rows}"),
        ),
        Backend::Sqlite => (
            "CREATE TABLE customers (id INTEGER PRIMARY KEY, phone TEXT NOT NULL)",
            format!("WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {rows}) INSERT INTO customers SELECT n, CASE WHEN n % 3 = 0 THEN '0162' || substr('0000000' || n, -7) ELSE '09' || substr('00000000' || n, -8) END FROM g"),
        ),
    };
    db.exec(create).await;
    db.exec(&fill).await;
}

fn plan(db: &OwnDb, expect: &str) -> std::path::PathBuf {
    let concat = match db.backend {
        Backend::MySql => "CONCAT('03', SUBSTRING(phone, 5))",
        _ => "'03' || substr(phone, 5)",
    };
    db.plan(
        "plan.toml",
        &format!(
            "name = \"{}_phones\"\ndatabase = \"{}\"\n{expect}\n[[steps]]\nname = \"phones\"\ntable = \"customers\"\nkey = \"id\"\nsql = \"UPDATE customers SET phone = {concat} WHERE id BETWEEN :start AND :end AND LENGTH(phone) = 11\"\n",
            db.tag, db.url
        ),
    )
}

async fn old_numbers(db: &OwnDb) -> i64 {
    db.scalar("SELECT COUNT(*) FROM customers WHERE LENGTH(phone) = 11")
        .await
}

fn estimate(plan: &std::path::Path, extra: &[&str]) -> (i32, Json) {
    let mut args = vec!["estimate", path_str(plan), "--json"];
    args.extend_from_slice(extra);
    let out = run_cmd(&args);
    let json = serde_json::from_str(&text(&out.stdout)).unwrap_or_else(|e| {
        panic!(
            "estimate --json printed no JSON ({e}): {}{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), json)
}

/// Checks one estimate's object as the contract shapes it.
fn assert_shape(json: &Json, rows: i64) {
    let p = json["projected_seconds"]
        .as_f64()
        .expect("projected_seconds");
    let (low, high) = (
        json["low_seconds"].as_f64().expect("low_seconds"),
        json["high_seconds"].as_f64().expect("high_seconds"),
    );
    assert!(p > 0.0 && low <= p && p <= high, "{json:#}");
    let step = &json["steps"][0];
    assert_eq!(step["name"], "phones");
    assert_eq!(step["rows_estimate"], rows, "the rows the run would cover");
    assert!(
        step["sampled_batches"].as_i64().unwrap_or(0) >= 1,
        "{json:#}"
    );
    assert_eq!(step["projected_seconds"], json["projected_seconds"]);
}

async fn estimate_changes_nothing_and_decides(backend: Backend, rows: i64) -> OwnDb {
    let db = own_db(backend).await;
    customers(&db, rows).await;
    let before = old_numbers(&db).await;
    assert_eq!(before, rows / 3);
    let path = plan(&db, "");
    let (code, json) = estimate(&path, &[]);
    assert_eq!(code, 0, "{json:#}");
    assert_shape(&json, rows);
    assert_eq!(json["verdict"], Json::Null, "no threshold, no verdict");
    assert_eq!(old_numbers(&db).await, before, "the estimate changed data");
    let runs = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM godwit_runs WHERE run = '{}_phones'",
            db.tag
        ))
        .await;
    assert_eq!(runs, 0, "the estimate recorded a run");
    // A threshold the projection passes is a no-go (exit 3); one it keeps under is a go.
    let (code, json) = estimate(&path, &["--threshold", "1ms"]);
    assert_eq!(
        (code, json["verdict"].as_str()),
        (3, Some("no-go")),
        "{json:#}"
    );
    assert_eq!(json["threshold_seconds"], 0.001);
    let (code, json) = estimate(&path, &["--threshold", "10h"]);
    assert_eq!(
        (code, json["verdict"].as_str()),
        (0, Some("go")),
        "{json:#}"
    );
    // The plan's own threshold, `[expect] max_duration`.
    let path = plan(&db, "[expect]\nmax_duration = \"1ms\"\n");
    assert_eq!(estimate(&path, &[]).0, 3);
    assert_eq!(old_numbers(&db).await, before);
    db
}

/// On 1M rows: the estimate, then the real run; the error is printed. `godwit report` shows
/// the estimate made before the run next to the run's duration.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_estimate_then_the_run() {
    let rows = 1_000_000;
    let db = estimate_changes_nothing_and_decides(Backend::Postgres, rows).await;
    let path = plan(&db, "");
    let started = Instant::now();
    let (_, json) = estimate(&path, &[]);
    let estimating = started.elapsed().as_secs_f64();
    let projected = json["projected_seconds"].as_f64().unwrap_or_default();
    let started = Instant::now();
    let out = run_cmd(&["run", path_str(&path), "--quiet"]);
    let took = started.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        old_numbers(&db).await,
        0,
        "the run rewrote every old number"
    );
    eprintln!(
        "estimate on {rows} rows: projected {projected:.1}s ({}–{}s), the run took {took:.1}s: error {:+.0}%; estimating took {estimating:.1}s ({:.0}% of the run)",
        json["low_seconds"],
        json["high_seconds"],
        (projected - took) / took * 100.0,
        estimating / took * 100.0
    );
    let report = run_cmd(&["report", path_str(&path), "--format", "json"]);
    let report: Json = serde_json::from_str(&text(&report.stdout)).expect("report JSON");
    assert_eq!(
        report["steps"][0]["estimated_seconds"], json["steps"][0]["projected_seconds"],
        "the report shows the last estimate made before the run: {report:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_estimate_changes_nothing_and_decides() {
    let db = estimate_changes_nothing_and_decides(Backend::MySql, 100_000).await;
    db.drop_mysql().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_estimate_changes_nothing_and_decides() {
    estimate_changes_nothing_and_decides(Backend::Sqlite, 100_000).await;
}

/// A one-off step a rollback would not undo is not run by the estimate, and says so.
#[tokio::test(flavor = "multi_thread")]
async fn a_one_off_statement_that_cannot_be_rolled_back_is_not_run() {
    let db = own_db(Backend::Postgres).await;
    customers(&db, 1_000).await;
    let path = db.plan(
        "once.toml",
        &format!(
            "name = \"{}_once\"\ndatabase = \"{}\"\n[[steps]]\nname = \"index\"\nsql = \"CREATE INDEX CONCURRENTLY IF NOT EXISTS customers_phone ON customers (phone)\"\n",
            db.tag, db.url
        ),
    );
    let (code, json) = estimate(&path, &[]);
    assert_eq!(code, 0, "{json:#}");
    let notes = json["steps"][0]["notes"].to_string();
    assert!(notes.contains("not in the projection"), "{json:#}");
    let indexed = db
        .scalar("SELECT COUNT(*) FROM pg_indexes WHERE indexname = 'customers_phone'")
        .await;
    assert_eq!(indexed, 0, "the estimate built the index");
}
