//! Chunking keys of every supported kind, walked on each database through the real binary.

mod common;

use common::{path_str, run_cmd, text, Backend, TestDb};

/// Creates `table (k <key_type> PRIMARY KEY, hits INT)` holding `keys` (SQL literals), runs a
/// counting step over it in batches of 3 and returns the `(key text, hits)` rows.
async fn walk(db: &TestDb, table: &str, key_type: &str, keys: &[String]) -> Vec<(String, i64)> {
    db.exec(&format!(
        "CREATE TABLE {table} (k {key_type} NOT NULL PRIMARY KEY, hits INT NOT NULL DEFAULT 0)"
    ))
    .await;
    let values: Vec<String> = keys.iter().map(|k| format!("({k})")).collect();
    db.exec(&format!(
        "INSERT INTO {table} (k) VALUES {}",
        values.join(", ")
    ))
    .await;
    let plan_text = format!(
        r#"name = "{table}"
database = "{url}"

[defaults]
batch_size = 3

[[steps]]
name = "count"
table = "{table}"
key = "k"
sql = "UPDATE {table} SET hits = hits + 1 WHERE k BETWEEN :start AND :end"
"#,
        url = db.url
    );
    let plan = db.plan("plan.toml", &plan_text);
    let out = run_cmd(&["run", path_str(&plan), "--concurrency", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let cast = match db.backend {
        Backend::Postgres => "k::text",
        Backend::MySql => "CAST(k AS CHAR)",
        Backend::Sqlite => "CAST(k AS TEXT)",
    };
    db.query(&format!("SELECT {cast}, hits FROM {table} ORDER BY k"))
        .await
        .into_iter()
        .map(|r| {
            (
                r[0].as_str().unwrap_or_default().to_string(),
                r[1].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

fn assert_each_once(rows: &[(String, i64)], expected_rows: usize) {
    assert_eq!(rows.len(), expected_rows);
    let wrong: Vec<_> = rows.iter().filter(|(_, hits)| *hits != 1).collect();
    assert!(wrong.is_empty(), "rows not updated exactly once: {wrong:?}");
}

/// Text keys in the database's own order: mixed case, accents, spaces, quotes. On MariaDB the
/// default collation ignores case; batches must still cover every row once.
async fn text_keys(backend: Backend) {
    let db = TestDb::new(backend).await;
    let table = db.table("textkeys");
    let keys: Vec<String> = [
        "a",
        "B",
        "c",
        "D",
        "ébène",
        "Zoë",
        "o'brien",
        "with space",
        "ω",
        "日本",
        "0",
        "-1",
        "~",
    ]
    .iter()
    .map(|k| format!("'{}'", k.replace('\'', "''")))
    .collect();
    let key_type = match backend {
        Backend::MySql => "VARCHAR(64)",
        _ => "TEXT",
    };
    let rows = walk(&db, &table, key_type, &keys).await;
    assert_each_once(&rows, keys.len());
}

/// UUID keys: native on PostgreSQL, text elsewhere.
async fn uuid_keys(backend: Backend) {
    let db = TestDb::new(backend).await;
    let table = db.table("uuidkeys");
    let keys: Vec<String> = (0..20)
        .map(|i| {
            let n: u128 = rand::random::<u128>() ^ i;
            let s = format!("{n:032x}");
            format!(
                "'{}-{}-{}-{}-{}'",
                &s[..8],
                &s[8..12],
                &s[12..16],
                &s[16..20],
                &s[20..]
            )
        })
        .collect();
    let key_type = match backend {
        Backend::Postgres => "UUID",
        Backend::MySql => "CHAR(36)",
        Backend::Sqlite => "TEXT",
    };
    let rows = walk(&db, &table, key_type, &keys).await;
    assert_each_once(&rows, keys.len());
}

/// Timestamp keys with microseconds, which must survive the trip through the state tables.
async fn timestamp_keys(backend: Backend) {
    let db = TestDb::new(backend).await;
    let table = db.table("tskeys");
    let keys: Vec<String> = (0..17)
        .map(|i| {
            format!(
                "'2024-02-{:02} 10:{:02}:{:02}.{:06}'",
                1 + i,
                i * 3,
                i,
                123_456 + i * 7
            )
        })
        .collect();
    let key_type = match backend {
        Backend::Postgres => "TIMESTAMP",
        Backend::MySql => "DATETIME(6)",
        Backend::Sqlite => "TEXT",
    };
    let rows = walk(&db, &table, key_type, &keys).await;
    assert_each_once(&rows, keys.len());
}

/// PostgreSQL's `timestamptz` and `date` keys.
async fn timestamptz_and_date_keys(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (ts_type, date_type) = match backend {
        Backend::Postgres => ("TIMESTAMPTZ", "DATE"),
        Backend::MySql => ("TIMESTAMP(6)", "DATE"),
        Backend::Sqlite => ("TEXT", "TEXT"),
    };
    let ts: Vec<String> = (0..10)
        .map(|i| format!("'2023-06-{:02} 0{}:00:00.5{i}'", 1 + i, i % 9))
        .collect();
    let rows = walk(&db, &db.table("tzkeys"), ts_type, &ts).await;
    assert_each_once(&rows, ts.len());
    let dates: Vec<String> = (0..10)
        .map(|i| format!("'20{:02}-01-31'", 10 + i))
        .collect();
    let rows = walk(&db, &db.table("datekeys"), date_type, &dates).await;
    assert_each_once(&rows, dates.len());
}

per_backend!(
    text_keys,
    uuid_keys,
    timestamp_keys,
    timestamptz_and_date_keys
);
