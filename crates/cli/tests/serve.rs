//! `godwit serve`: the dashboard's JSON API over a real state database, through the real
//! binary and plain HTTP. The page itself is driven in a browser in `dashboard.rs`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::http::{get, request, serve, Answer};
use common::{isolated_db, path_str, run_cmd, status_json, text, Backend, IsolatedDb};
use serde_json::Value as Json;

/// A one-step plan named after `table`: adds 1 to `hits` of every row, 10 rows a batch; the
/// row with id `fail_at` (if any) fails its batch for good.
fn plan(db: &IsolatedDb, table: &str, fail_at: Option<i64>) -> PathBuf {
    let url = common::plan_url(&db.url);
    let extra = match fail_at {
        // NULL into a NOT NULL column: an error on every database, not worth a retry.
        Some(id) => format!(" + CASE WHEN id = {id} THEN NULL ELSE 0 END"),
        None => String::new(),
    };
    db.plan(
        &format!("{table}.toml"),
        &format!(
            r#"name = "{table}"
database = "{url}"

[defaults]
batch_size = 10
adaptive = false
max_attempts = 1

[[steps]]
name = "count"
table = "{table}"
key = "id"
sql = "UPDATE {table} SET hits = hits + 1{extra} WHERE id BETWEEN :start AND :end"
"#
        ),
    )
}

fn post(addr: SocketAddr, path: &str, token: Option<&str>) -> Answer {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| vec![("Authorization", b)])
        .unwrap_or_default();
    request(addr, "POST", path, &headers)
}

fn state_of(plan: &Path) -> String {
    status_json(plan)["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The parts of a run's status that do not move with the clock.
fn settled(status: &Json) -> Json {
    let steps: Vec<Json> = status["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .map(|s| {
                    serde_json::json!([
                        s["name"],
                        s["state"],
                        s["batches_done"],
                        s["batches_failed"],
                        s["rows_done"],
                        s["rows_total_estimate"],
                        s["batch_size"],
                        s["error"]
                    ])
                })
                .collect()
        })
        .unwrap_or_default();
    serde_json::json!([status["plan"], status["state"], status["error"], steps])
}

/// The API shows every run as `status --json` does, their batches over time and their errors;
/// control answers 403 on a read-only dashboard, changing nothing.
async fn the_api_shows_runs_as_status_does(backend: Backend) {
    let db = isolated_db(backend).await;
    let failing = db.table("failing");
    let pending = db.table("pending");
    db.counter_table(&failing, 1..=100).await;
    db.counter_table(&pending, 1..=20).await;
    let failing_plan = plan(&db, &failing, Some(57));
    let pending_plan = plan(&db, &pending, None);
    let out = run_cmd(&[
        "run",
        path_str(&failing_plan),
        "--concurrency",
        "1",
        "--quiet",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let out = run_cmd(&["submit", path_str(&pending_plan)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let (mut server, addr) = serve(&db.url, &[]);
    let runs = get(addr, "/api/runs");
    assert_eq!(runs.status, 200, "{}", runs.body);
    let runs = runs.json();
    let listed: Vec<Json> = runs
        .as_array()
        .expect("a list")
        .iter()
        .map(settled)
        .collect();
    let expected = vec![
        settled(&status_json(&failing_plan)),
        settled(&status_json(&pending_plan)),
    ];
    assert_eq!(listed, expected, "{runs}");

    let one = get(addr, &format!("/api/runs/{failing}"));
    assert_eq!(one.status, 200, "{}", one.body);
    let one = one.json();
    assert_eq!(settled(&one), expected[0]);
    assert_eq!(one["state"], "failed");
    let missing = get(addr, "/api/runs/no-such-run");
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"]
        .as_str()
        .unwrap_or_default()
        .contains("no-such-run"));

    // Rows over time add up to the rows done.
    let t = get(addr, &format!("/api/runs/{failing}/throughput"));
    assert_eq!(t.status, 200, "{}", t.body);
    let t = t.json();
    let points = t["points"].as_array().expect("points");
    let summed: i64 = points.iter().map(|p| p["rows"].as_i64().unwrap_or(0)).sum();
    assert_eq!(
        summed,
        one["steps"][0]["rows_done"].as_i64().unwrap_or(-1),
        "{t}"
    );
    assert!(summed >= 50, "the batches before id 57 were done: {t}");
    assert!(t["bucket_seconds"].as_f64().unwrap_or(0.0) >= 1.0, "{t}");

    // The failed batch, with its keys and the database's message.
    let errors = get(addr, &format!("/api/runs/{failing}/errors")).json();
    let errors = errors.as_array().expect("a list");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["state"], "failed");
    assert_eq!(errors[0]["step"], "count");
    assert_eq!(
        (
            errors[0]["start_key"].as_str(),
            errors[0]["end_key"].as_str()
        ),
        (Some("51"), Some("60")),
        "{errors:?}"
    );
    let code = errors[0]["error_code"].as_str().unwrap_or_default();
    assert!(
        code == "23502" || code == "1299",
        "the database's own code: {errors:?}"
    );
    let none = get(addr, &format!("/api/runs/{pending}/errors")).json();
    assert_eq!(none, serde_json::json!([]));

    // Read-only: control is refused and changes nothing.
    let refused = post(
        addr,
        &format!("/api/runs/{pending}/pause"),
        Some("anything"),
    );
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains("--token-file"), "{}", refused.body);
    assert_eq!(state_of(&pending_plan), "pending");
    assert_eq!(get(addr, "/api/info").json()["control"], false);

    // The page and its parts, from the binary, with a policy that keeps them to themselves.
    let page = get(addr, "/");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<title>godwit</title>") && page.body.contains("/app.js"));
    assert!(page
        .header("content-security-policy")
        .unwrap_or_default()
        .contains("default-src 'self'"));
    let script = get(addr, "/app.js");
    assert_eq!(
        script.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert!(script.body.contains("/api/runs"));
    assert_eq!(get(addr, "/style.css").status, 200);
    assert_eq!(get(addr, "/nothing-here").status, 404);

    // Loopback answers loopback names only: a rebound name is refused.
    let rebound = request(addr, "GET", "/api/runs", &[("Host", "evil.example:8080")]);
    assert_eq!(rebound.status, 421, "{}", rebound.body);
    assert_eq!(
        request(addr, "GET", "/api/info", &[("Host", "localhost:1")]).status,
        200
    );

    // No password anywhere: not in what the API answers, nor in what serve printed.
    let info = get(addr, "/api/info").body;
    let everything = [runs.to_string(), info, page.body, server.output_so_far()].join("\n");
    assert_no_password(&db.url, &everything);
}

/// Fails when the password of `url` (if it has one) appears in `shown`.
fn assert_no_password(url: &str, shown: &str) {
    let Some((_, rest)) = url.split_once("://") else {
        return;
    };
    let Some((user_info, _)) = rest.rsplit_once('@') else {
        return;
    };
    let Some((_, password)) = user_info.split_once(':') else {
        return;
    };
    assert!(
        !shown.contains(&format!(":{password}@")),
        "the password of the state database was shown: {shown}"
    );
}

/// With a token file: a missing or wrong token answers 401 and changes nothing; the right one
/// pauses, resumes, retries; an action that cannot apply answers 409, an unknown one 404.
async fn control_needs_the_token(backend: Backend) {
    let db = isolated_db(backend).await;
    let failing = db.table("failing");
    let pending = db.table("pending");
    db.counter_table(&failing, 1..=30).await;
    db.counter_table(&pending, 1..=20).await;
    let failing_plan = plan(&db, &failing, Some(5));
    let pending_plan = plan(&db, &pending, None);
    let out = run_cmd(&["run", path_str(&failing_plan), "--quiet"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let out = run_cmd(&["submit", path_str(&pending_plan)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let token_file = db.dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").expect("write token");

    let (_server, addr) = serve(&db.url, &["--token-file", path_str(&token_file)]);
    assert_eq!(get(addr, "/api/info").json()["control"], true);
    let pause = format!("/api/runs/{pending}/pause");
    let missing = post(addr, &pause, None);
    assert_eq!(missing.status, 401, "{}", missing.body);
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    assert_eq!(post(addr, &pause, Some("s3cret")).status, 401);
    assert_eq!(
        post(addr, &pause, Some("s3cret-token-and-more")).status,
        401
    );
    assert_eq!(
        state_of(&pending_plan),
        "pending",
        "a refused pause changed the run"
    );

    let paused = post(addr, &pause, Some("s3cret-token"));
    assert_eq!(paused.status, 200, "{}", paused.body);
    assert_eq!(paused.json()["applied"], true);
    assert_eq!(state_of(&pending_plan), "paused");
    let resumed = post(
        addr,
        &format!("/api/runs/{pending}/resume"),
        Some("s3cret-token"),
    );
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    assert_ne!(state_of(&pending_plan), "paused");

    // A failed run cannot be paused (409, nothing changes); retry re-queues its batch.
    let conflict = post(
        addr,
        &format!("/api/runs/{failing}/pause"),
        Some("s3cret-token"),
    );
    assert_eq!(conflict.status, 409, "{}", conflict.body);
    assert_eq!(conflict.json()["applied"], false);
    assert_eq!(state_of(&failing_plan), "failed");
    let retried = post(
        addr,
        &format!("/api/runs/{failing}/retry"),
        Some("s3cret-token"),
    );
    assert_eq!(retried.status, 200, "{}", retried.body);
    assert_eq!(status_json(&failing_plan)["steps"][0]["batches_failed"], 0);

    assert_eq!(
        post(
            addr,
            &format!("/api/runs/{pending}/explode"),
            Some("s3cret-token")
        )
        .status,
        404
    );
    assert_eq!(
        post(addr, "/api/runs/no-such-run/pause", Some("s3cret-token")).status,
        404
    );
}

mod pg {
    use super::*;
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_api_shows_runs_as_status_does() {
        super::the_api_shows_runs_as_status_does(Backend::Postgres).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn control_needs_the_token() {
        super::control_needs_the_token(Backend::Postgres).await
    }
}

mod sqlite {
    use super::*;
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_api_shows_runs_as_status_does() {
        super::the_api_shows_runs_as_status_does(Backend::Sqlite).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn control_needs_the_token() {
        super::control_needs_the_token(Backend::Sqlite).await
    }
}

/// Bad command lines are refused before anything is served: an empty or missing token file,
/// an address taken.
#[test]
fn refuses_a_bad_token_file_or_a_taken_address() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}/state.db", dir.path().display());
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "  \n").expect("write");
    let out = run_cmd(&[
        "serve",
        "--database",
        &db,
        "--listen",
        "127.0.0.1:0",
        "--token-file",
        path_str(&empty),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("empty"), "{}", text(&out.stderr));
    let missing = dir.path().join("missing");
    let out = run_cmd(&[
        "serve",
        "--database",
        &db,
        "--listen",
        "127.0.0.1:0",
        "--token-file",
        path_str(&missing),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = run_cmd(&["serve", "--database", &db, "--listen", &addr]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("cannot listen on"),
        "{}",
        text(&out.stderr)
    );
}
