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

/// A key column that allows NULL but holds none is walked (SQLite's `TEXT PRIMARY KEY` allows
/// NULL unless declared `NOT NULL`); with NULL keys in it the run is refused, saying how many
/// rows have one, unless `where` leaves them out.
async fn nullable_keys(backend: Backend) {
    let db = TestDb::new(backend).await;
    let declared = match backend {
        // PostgreSQL and MariaDB make a primary key's columns NOT NULL: a unique key is
        // their nullable kind.
        Backend::MySql => "VARCHAR(20) UNIQUE",
        Backend::Postgres => "TEXT UNIQUE",
        Backend::Sqlite => "TEXT PRIMARY KEY",
    };
    let plan = |table: &str, filter: &str| {
        db.plan(
            "plan.toml",
            &format!(
                "name = \"{table}\"\ndatabase = \"{}\"\n\n[defaults]\nbatch_size = 3\n\n\
                 [[steps]]\nname = \"count\"\ntable = \"{table}\"\nkey = \"k\"\n{filter}\
                 sql = \"UPDATE {table} SET hits = hits + 1 WHERE k BETWEEN :start AND :end\"\n",
                db.url
            ),
        )
    };
    let keys = ["'a'", "'b'", "'c'", "'d'", "'e'", "'f'", "'g'"];
    for (name, nulls) in [("nullable", 0), ("nulls", 2)] {
        let table = db.table(name);
        db.exec(&format!(
            "CREATE TABLE {table} (k {declared}, hits INT NOT NULL DEFAULT 0)"
        ))
        .await;
        let mut values: Vec<String> = keys.iter().map(|k| format!("({k})")).collect();
        values.extend((0..nulls).map(|_| "(NULL)".to_string()));
        db.exec(&format!(
            "INSERT INTO {table} (k) VALUES {}",
            values.join(", ")
        ))
        .await;
        let out = run_cmd(&["run", path_str(&plan(&table, "")), "--quiet"]);
        let err = text(&out.stderr);
        if nulls == 0 {
            assert_eq!(out.status.code(), Some(0), "{err}");
        } else {
            assert_eq!(out.status.code(), Some(2), "{err}");
            assert!(
                err.contains(&format!("2 rows have a NULL key {table}.k")),
                "{err}"
            );
            assert_eq!(
                db.scalar(&format!("SELECT SUM(hits) FROM {table}")).await,
                0
            );
            let filtered = plan(&table, "where = \"k IS NOT NULL\"\n");
            let out = run_cmd(&["run", path_str(&filtered), "--quiet"]);
            assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        }
        let hit = db
            .scalar(&format!("SELECT COUNT(*) FROM {table} WHERE hits = 1"))
            .await;
        assert_eq!(hit, keys.len() as i64, "every non-NULL key once");
        let others = db
            .scalar(&format!("SELECT COUNT(*) FROM {table} WHERE hits <> 1"))
            .await;
        assert_eq!(others, nulls);
    }
}

per_backend!(
    text_keys,
    uuid_keys,
    timestamp_keys,
    timestamptz_and_date_keys,
    nullable_keys
);
