//! Encrypted connections: a URL that requires TLS connects over TLS, for the batches and the
//! state alike (managed PostgreSQL services accept nothing else).

mod common;

use common::{path_str, run_cmd, text, Backend, TestDb};

#[tokio::test]
async fn sslmode_require_runs_every_batch_over_tls() {
    let mut db = TestDb::new(Backend::Postgres).await;
    let table = db.table("tls");
    db.exec(&format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, tls BOOLEAN)"
    ))
    .await;
    db.exec(&format!(
        "INSERT INTO {table} (id) SELECT generate_series(1, 500)"
    ))
    .await;
    let separator = if db.url.contains('?') { '&' } else { '?' };
    db.url = format!("{}{separator}sslmode=require", db.url);
    let plan = db.step_plan(
        &table,
        "batch_size = 100",
        &format!(
            "name = \"mark\"\ntable = \"{table}\"\nkey = \"id\"\nsql = \"\"\"\n\
             UPDATE {table} SET tls = (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())\n\
             WHERE id BETWEEN :start AND :end\n\"\"\""
        ),
    );
    let out = run_cmd(&["run", path_str(&plan), "--quiet"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let plain = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM {table} WHERE tls IS DISTINCT FROM true"
        ))
        .await;
    assert_eq!(plain, 0, "every batch ran on an encrypted connection");
    let status = run_cmd(&["status", path_str(&plan), "--json"]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status.stderr));
    assert!(text(&status.stdout).contains("\"state\":\"done\""));
}
