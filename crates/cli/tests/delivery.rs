//! Exactly-once or at-least-once is decided by what the databases are, not by how their URLs
//! are written: a `[state]` URL spelled differently for the plan's own database keeps each
//! batch and its record in one transaction; a really separate one does not.

mod common;

use common::{path_str, run_cmd, text, Backend, TestDb};

/// Runs a one-step plan with `[state] database = state_url` and returns the `delivery` of its
/// `run_started` event, after checking that every row was updated once.
async fn delivery_with_state(db: &TestDb, tag: &str, state_url: &str) -> String {
    let table = db.table(tag);
    db.counter_table(&table, 1..=40).await;
    let plan = db.plan(
        &format!("{tag}.toml"),
        &format!(
            "name = \"{table}\"\ndatabase = \"{}\"\n\n[state]\ndatabase = \"{state_url}\"\n\n\
             [defaults]\nbatch_size = 10\n\n[[steps]]\nname = \"count\"\ntable = \"{table}\"\n\
             key = \"id\"\nsql = \"UPDATE {table} SET hits = hits + 1 WHERE id BETWEEN :start AND :end\"\n",
            db.url
        ),
    );
    let out = run_cmd(&["run", path_str(&plan), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let updated = db
        .scalar(&format!("SELECT COUNT(*) FROM {table} WHERE hits = 1"))
        .await;
    assert_eq!(updated, 40);
    let started = text(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["event"] == "run_started")
        .unwrap_or_else(|| panic!("no run_started event in {}", text(&out.stdout)));
    started["delivery"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn sqlite_delivery_follows_the_database_file() {
    let db = TestDb::new(Backend::Sqlite).await;
    let dir = db.dir.path().display().to_string();
    let same = format!("sqlite://{dir}/./test.db");
    assert_eq!(
        delivery_with_state(&db, "same", &same).await,
        "exactly-once"
    );
    let other = format!("sqlite://{dir}/state.db");
    // The state file must exist, as any database godwit connects to.
    std::fs::File::create(format!("{dir}/state.db")).expect("create the state file");
    assert_eq!(
        delivery_with_state(&db, "other", &other).await,
        "at-least-once"
    );
}

#[tokio::test]
async fn postgres_delivery_follows_the_database() {
    let db = TestDb::new(Backend::Postgres).await;
    let separator = if db.url.contains('?') { '&' } else { '?' };
    let same = format!("{}{separator}application_name=godwit_state", db.url);
    assert_eq!(
        delivery_with_state(&db, "same", &same).await,
        "exactly-once"
    );
    // Another schema of the same server is another set of state tables.
    let schema = db.table("state");
    db.exec(&format!("CREATE SCHEMA {schema}")).await;
    let other = format!("{}{separator}options=-c%20search_path%3D{schema}", db.url);
    let delivery = delivery_with_state(&db, "other", &other).await;
    db.exec(&format!("DROP SCHEMA {schema} CASCADE")).await;
    assert_eq!(delivery, "at-least-once");
}
