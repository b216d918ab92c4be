//! The key walk covers every row matching `where` exactly once, and no other row, for random
//! key sets, batch sizes, concurrencies and filters, on each real database; and stays exactly
//! once while an application inserts and deletes rows during the walk.

use std::collections::BTreeMap;
use std::path::Path;

use godwit::driver::{Conn, DbUrl};
use godwit::{EventSink, RunOptions, RunOutcome};
use proptest::prelude::*;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Postgres,
    MySql,
    Sqlite,
}

struct Db {
    url: String,
    _dir: tempfile::TempDir,
}

fn db(backend: Backend) -> Db {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = match backend {
        Backend::Postgres => std::env::var("GODWIT_TEST_PG")
            .expect("GODWIT_TEST_PG is not set: run the tests with scripts/test.sh"),
        Backend::MySql => std::env::var("GODWIT_TEST_MYSQL")
            .expect("GODWIT_TEST_MYSQL is not set: run the tests with scripts/test.sh"),
        Backend::Sqlite => format!("sqlite://{}/walk.db", dir.path().display()),
    };
    Db { url, _dir: dir }
}

async fn connect(db: &Db) -> Box<dyn Conn> {
    // godwit never creates a database file by itself; an empty file is an empty SQLite database.
    if let Some(path) = db.url.strip_prefix("sqlite://") {
        if !Path::new(path).exists() {
            std::fs::write(path, b"").expect("create the SQLite file");
        }
    }
    let url = DbUrl::new(db.url.clone());
    godwit::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{:012x}", rand::random::<u64>() >> 16)
}

/// Creates the table with `keys`, `grp = key mod 5` and `hits = 0`.
async fn create(conn: &mut dyn Conn, backend: Backend, table: &str, keys: &[i64]) {
    let id_type = match backend {
        Backend::Sqlite => "INTEGER",
        _ => "BIGINT",
    };
    conn.execute_unprepared(&format!(
        "CREATE TABLE {table} (id {id_type} PRIMARY KEY, hits INT NOT NULL DEFAULT 0, grp INT NOT NULL)"
    ))
    .await
    .expect("create table");
    for chunk in keys.chunks(500) {
        let values: Vec<String> = chunk
            .iter()
            .map(|k| format!("({k}, {})", k.rem_euclid(5)))
            .collect();
        if !values.is_empty() {
            conn.execute_unprepared(&format!(
                "INSERT INTO {table} (id, grp) VALUES {}",
                values.join(", ")
            ))
            .await
            .expect("insert");
        }
    }
}

async fn hits(conn: &mut dyn Conn, table: &str) -> BTreeMap<i64, i64> {
    conn.query(&format!("SELECT id, hits FROM {table}"), &[])
        .await
        .expect("read hits")
        .iter()
        .map(|r| {
            (
                r.get(0).as_i64().unwrap_or(i64::MIN),
                r.get(1).as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

fn plan_text(db: &Db, table: &str, batch_size: u32, filter: Option<i64>) -> String {
    let (where_line, and_filter) = match filter {
        Some(r) => (
            format!("where = \"grp <> {r}\"\n"),
            format!(" AND grp <> {r}"),
        ),
        None => (String::new(), String::new()),
    };
    format!(
        "name = \"{table}\"\ndatabase = \"{url}\"\n\n[defaults]\nbatch_size = {batch_size}\n\n\
         [[steps]]\nname = \"count\"\ntable = \"{table}\"\nkey = \"id\"\n{where_line}\
         sql = \"UPDATE {table} SET hits = hits + 1 WHERE id BETWEEN :start AND :end{and_filter}\"\n",
        url = db.url
    )
}

async fn run(text: &str, concurrency: usize) -> RunOutcome {
    let plan = godwit::plan::parse(text, Path::new("walk.toml"), &|_| None).expect("valid plan");
    let (_stop, signal) = godwit::stop_pair();
    let options = RunOptions {
        concurrency: Some(concurrency),
        ..RunOptions::default()
    };
    godwit::run(&plan, options, signal, EventSink::none())
        .await
        .expect("run starts")
}

fn check_random_walk(
    backend: Backend,
    keys: Vec<i64>,
    batch_size: u32,
    concurrency: usize,
    filter: Option<i64>,
) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let db = db(backend);
        let mut conn = connect(&db).await;
        let table = unique("walk");
        create(conn.as_mut(), backend, &table, &keys).await;
        let outcome = run(&plan_text(&db, &table, batch_size, filter), concurrency).await;
        assert_eq!(outcome, RunOutcome::Done);
        let got = hits(conn.as_mut(), &table).await;
        for key in &keys {
            let expected = i64::from(filter.is_none_or(|r| key.rem_euclid(5) != r));
            assert_eq!(
                got.get(key),
                Some(&expected),
                "key {key}, batch {batch_size}, filter {filter:?}"
            );
        }
        conn.execute_unprepared(&format!("DROP TABLE {table}"))
            .await
            .expect("drop");
    });
}

fn keys() -> impl Strategy<Value = Vec<i64>> {
    // Sparse keys over a wide range, negatives and huge gaps included; sometimes none.
    prop::collection::btree_set(
        prop_oneof![-1_000_000_000_000i64..1_000_000_000_000, -50i64..50],
        0..120,
    )
    .prop_map(|set| set.into_iter().collect())
}

macro_rules! random_walks {
    ($($module:ident => $backend:expr),*) => {$(
        mod $module {
            use super::*;
            proptest! {
                #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]
                #[test]
                fn covers_each_matching_row_once(
                    keys in keys(),
                    batch_size in 1u32..25,
                    concurrency in 1usize..5,
                    filter in prop::option::of(0i64..5),
                ) {
                    check_random_walk($backend, keys, batch_size, concurrency, filter);
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn stays_exactly_once_under_concurrent_writes() {
                concurrent_writes($backend).await;
            }
        }
    )*};
}

random_walks!(pg => Backend::Postgres, mysql => Backend::MySql, sqlite => Backend::Sqlite);

/// An application inserts rows (inside and above the walked range) and deletes rows while the
/// walk runs. Rows that existed throughout are updated once; rows added above the highest key
/// seen when the step started are not walked; no row is ever updated twice.
async fn concurrent_writes(backend: Backend) {
    let db = db(backend);
    let mut conn = connect(&db).await;
    let table = unique("churn");
    let initial: Vec<i64> = (1..=600).map(|i| i * 10).collect();
    create(conn.as_mut(), backend, &table, &initial).await;
    let text = plan_text(&db, &table, 2, None);
    let walk = tokio::spawn(async move { run(&text, 2).await });

    let mut writer = connect(&db).await;
    // The walk's end is fixed before its first batch: wait for one, so that rows added from
    // now on are above it for sure.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let started = writer
            .query(&format!("SELECT COUNT(*) FROM {table} WHERE hits > 0"), &[])
            .await
            .expect("poll")[0]
            .get(0)
            .as_i64()
            > Some(0);
        if started {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the walk never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let mut deleted = Vec::new();
    let mut inserted_inside = Vec::new();
    let mut inserted_above = Vec::new();
    for i in 0..60i64 {
        let gone = 50 + i * 90;
        writer
            .execute(&format!("DELETE FROM {table} WHERE id = {gone}"), &[])
            .await
            .expect("delete");
        deleted.push(gone);
        let inside = 5 + i * 100;
        let above = 100_000 + i;
        for key in [inside, above] {
            writer
                .execute(
                    &format!("INSERT INTO {table} (id, grp) VALUES ({key}, 0)"),
                    &[],
                )
                .await
                .expect("insert");
        }
        inserted_inside.push(inside);
        inserted_above.push(above);
        tokio::task::yield_now().await;
    }
    assert!(
        !walk.is_finished(),
        "the walk ended before the writes: nothing was tested"
    );
    assert_eq!(walk.await.expect("walk task"), RunOutcome::Done);
    let got = hits(conn.as_mut(), &table).await;
    for (key, hits) in &got {
        assert!(*hits <= 1, "key {key} updated {hits} times");
    }
    for key in initial.iter().filter(|k| !deleted.contains(k)) {
        assert_eq!(got.get(key), Some(&1), "key {key} existed throughout");
    }
    for key in &inserted_above {
        assert_eq!(
            got.get(key),
            Some(&0),
            "key {key} was added above the walk's end"
        );
    }
    for key in &deleted {
        assert_eq!(got.get(key), None);
    }
}
