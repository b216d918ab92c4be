//! The dashboard in a real browser: Debian's headless Chromium, driven through its
//! ChromeDriver, against `godwit serve` over a run in progress on PostgreSQL. It must show
//! the run's progress as it goes, refuse control without the token, pause and resume with it,
//! and offer no control at all when read-only.
//!
//! Chromium and ChromeDriver come from Debian's `chromium` and `chromium-driver` packages
//! (`scripts/test-services.sh` installs them); without them this test fails, it never skips.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::browser::browser;
use common::http::serve;
use common::{isolated_db, path_str, spawn_watched, status_json, KillOnDrop};
use fantoccini::{Client, Locator};

/// The text of the element at `css`, or "" while there is none.
async fn text_of(client: &Client, css: &str) -> String {
    match client.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Waits until the text at `css` satisfies `wanted`; returns it.
async fn wait_text(
    client: &Client,
    css: &str,
    what: &str,
    wanted: impl Fn(&str) -> bool,
) -> String {
    let started = Instant::now();
    loop {
        let text = text_of(client, css).await;
        if wanted(&text) {
            return text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "gave up waiting for {what}: {css} shows {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn click(client: &Client, css: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
}

async fn disabled(client: &Client, css: &str) -> bool {
    let e = client.find(Locator::Css(css)).await.expect("the button");
    e.prop("disabled").await.ok().flatten().as_deref() == Some("true")
}

/// The percentage the step's row shows ("12.5%" is 12.5), if any.
fn percent(text: &str) -> Option<f64> {
    text.trim().strip_suffix('%')?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_progress_and_controls_a_run_with_its_token() {
    let db = isolated_db(common::Backend::Postgres).await;
    let table = db.table("watched");
    let pace = db.table("pace");
    db.counter_table(&table, 1..=600).await;
    // Each row sleeps as long as the pace table says: slow while the browser looks, then fast.
    db.exec(&format!(
        "CREATE TABLE {pace} (secs FLOAT NOT NULL); INSERT INTO {pace} VALUES (0.05)"
    ))
    .await;
    let url = common::plan_url(&db.url);
    let plan = db.plan(
        "watched.toml",
        &format!(
            r#"name = "{table}"
database = "{url}"

[defaults]
batch_size = 10
adaptive = false

[[steps]]
name = "count"
table = "{table}"
key = "id"
sql = "UPDATE {table} SET hits = hits + 1 + CASE WHEN pg_sleep((SELECT secs FROM {pace})) IS NOT NULL THEN 0 ELSE 1 END WHERE id BETWEEN :start AND :end"
"#
        ),
    );
    let (_driver, client) = browser().await;
    let token_file = db.dir.path().join("token");
    std::fs::write(&token_file, "let-me-in\n").expect("write token");
    let (_server, addr) = serve(&db.url, &["--token-file", path_str(&token_file)]);

    let mut run = KillOnDrop(spawn_watched(&[
        "run",
        path_str(&plan),
        "--json",
        "--concurrency",
        "1",
    ]));
    run.wait_stdout("a first batch", Duration::from_secs(60), |l| {
        l.contains("\"batch_done\"")
    });

    client
        .goto(&format!("http://{addr}/#run={table}"))
        .await
        .expect("open the dashboard");
    let step = r#"tr[data-step="count"]"#;
    let shown = wait_text(&client, &format!("{step} .pct"), "progress above 0%", |t| {
        percent(t).is_some_and(|p| p > 0.0 && p < 100.0)
    })
    .await;
    let first = percent(&shown).unwrap_or_default();
    assert!(text_of(&client, &format!("{step} td:nth-child(4)"))
        .await
        .contains("/ 600"));
    assert_eq!(text_of(&client, "#run-name").await, table);
    assert_eq!(text_of(&client, "#mode").await, "control with token");
    wait_text(&client, "#workers tbody", "the run's worker", |t| {
        t.contains("running")
    })
    .await;
    // It moves by itself.
    wait_text(
        &client,
        &format!("{step} .pct"),
        "progress to move on",
        |t| percent(t).is_some_and(|p| p > first),
    )
    .await;

    // Without the token: refused, and the run goes on.
    click(&client, "#btn-pause").await;
    wait_text(&client, "#message", "the refusal", |t| t.contains("Bearer")).await;
    assert_eq!(status_json(&plan)["state"], "running");

    // With it: paused, as status says and the page shows.
    client
        .find(Locator::Css("#token"))
        .await
        .expect("the token field")
        .send_keys("let-me-in")
        .await
        .expect("type the token");
    click(&client, "#btn-pause").await;
    wait_text(&client, "#message", "the pause", |t| {
        t.starts_with("paused")
    })
    .await;
    assert_eq!(status_json(&plan)["state"], "paused");
    wait_text(&client, "#run-state", "the paused state", |t| t == "paused").await;
    let screenshot = client.screenshot().await.expect("a screenshot");
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&shot, screenshot).expect("write the screenshot");

    // Resumed, and fast: the run finishes and the page says so.
    click(&client, "#btn-resume").await;
    wait_text(&client, "#message", "the resume", |t| {
        t.starts_with("resumed")
    })
    .await;
    db.exec(&format!("UPDATE {pace} SET secs = 0")).await;
    assert_eq!(
        run.finish(Duration::from_secs(120)),
        Some(0),
        "{}",
        run.stderr_text()
    );
    wait_text(&client, "#run-state", "the done state", |t| t == "done").await;
    wait_text(&client, &format!("{step} .pct"), "100%", |t| t == "100%").await;
    assert_eq!(
        db.scalar(&format!("SELECT COUNT(*) FROM {table} WHERE hits = 1"))
            .await,
        600
    );

    // Read-only: no token field, every control disabled.
    let (_reader, read_only) = serve(&db.url, &[]);
    client
        .goto(&format!("http://{read_only}/#run={table}"))
        .await
        .expect("open the read-only dashboard");
    wait_text(&client, "#mode", "the read-only badge", |t| {
        t == "read-only"
    })
    .await;
    wait_text(&client, "#run-state", "the run", |t| t == "done").await;
    for button in ["#btn-pause", "#btn-resume", "#btn-cancel", "#btn-retry"] {
        assert!(
            disabled(&client, button).await,
            "{button} is enabled on a read-only dashboard"
        );
    }
    assert!(!client
        .find(Locator::Css("#token"))
        .await
        .expect("the token field")
        .is_displayed()
        .await
        .unwrap_or(true));
    client.close().await.expect("close the browser");
}
