//! What the state store's tests share: a database per backend (the real servers, or a SQLite
//! file of the test's own), stores on it, run specs and unique run names.
#![allow(dead_code)] // each test binary uses its own part

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use godwit_driver::{Conn, ConnectOptions, DbUrl};
use godwit_state::{ClaimedBatch, NewBatch, Restart, RunSpec, StateStore, StepRecord, StepSpec};

pub struct Db {
    pub url: DbUrl,
    _dir: tempfile::TempDir,
}

/// The URL of the shared test database of `backend` (`pg`, `mysql`); a missing variable fails
/// the test rather than skipping it.
pub fn server_url(backend: &str) -> String {
    match backend {
        "pg" => std::env::var("GODWIT_TEST_PG")
            .expect("GODWIT_TEST_PG is not set: run the tests with scripts/test.sh"),
        "mysql" => std::env::var("GODWIT_TEST_MYSQL")
            .expect("GODWIT_TEST_MYSQL is not set: run the tests with scripts/test.sh"),
        other => panic!("no server for {other}"),
    }
}

pub async fn db(backend: &str) -> Db {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = match backend {
        "pg" | "mysql" => server_url(backend),
        _ => format!("sqlite://{}/state.db", dir.path().display()),
    };
    Db {
        url: DbUrl::new(url),
        _dir: dir,
    }
}

/// A database of the test's own on a server: a schema on PostgreSQL (put first on the search
/// path by the URL), a database on MariaDB, the test's file on SQLite. For tests that change
/// the state tables themselves, which other tests share on a server. Dropped with it.
pub struct Isolated {
    pub db: Db,
    /// The server's URL and the statement that drops what was made.
    drop: Option<(DbUrl, String)>,
}

pub async fn isolated(backend: &str) -> Isolated {
    if backend == "sqlite" {
        return Isolated {
            db: db(backend).await,
            drop: None,
        };
    }
    let base = server_url(backend);
    let name = format!("godwit_state_{:016x}", rand_u64());
    let mut server = connect_url(&DbUrl::new(base.clone())).await;
    let (url, drop, made) = if backend == "pg" {
        server
            .execute_unprepared(&format!("CREATE SCHEMA {name}"))
            .await
            .expect("create schema");
        let separator = if base.contains('?') { '&' } else { '?' };
        (
            format!("{base}{separator}options=-c%20search_path%3D{name}"),
            format!("DROP SCHEMA IF EXISTS {name} CASCADE"),
            "SELECT current_schema()",
        )
    } else {
        server
            .execute_unprepared(&format!("CREATE DATABASE {name} CHARACTER SET utf8mb4"))
            .await
            .expect("create database");
        // mysql://user@host:port/database?options: the same server, another database.
        let path = base.find("://").map_or(0, |i| i + 3);
        let db_at = base[path..].find('/').map_or(base.len(), |i| path + i);
        let query = base[db_at..].find('?').map_or("", |i| &base[db_at + i..]);
        (
            format!("{}/{name}{query}", &base[..db_at]),
            format!("DROP DATABASE IF EXISTS {name}"),
            "SELECT DATABASE()",
        )
    };
    let isolated = Isolated {
        db: Db {
            url: DbUrl::new(url),
            _dir: tempfile::tempdir().expect("temp dir"),
        },
        drop: Some((DbUrl::new(base), drop)),
    };
    // What the test does there must not reach the shared tables.
    let rows = connect(&isolated.db)
        .await
        .query(made, &[])
        .await
        .expect("where new tables go");
    assert_eq!(
        rows[0].get(0).as_str(),
        Some(name.as_str()),
        "the URL does not put new tables in {name}"
    );
    isolated
}

impl Drop for Isolated {
    fn drop(&mut self) {
        let Some((server, statement)) = self.drop.take() else {
            return;
        };
        // A runtime of its own on a thread of its own: drop runs inside the test's runtime,
        // and after a failed assertion too.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let mut conn = godwit_db::connect(&server, &ConnectOptions::default())
                    .await
                    .map_err(|e| e.to_string())?;
                conn.execute_unprepared(&statement)
                    .await
                    .map_err(|e| format!("{statement}: {e}"))
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("cleaning up: {e}");
        }
    }
}

pub async fn connect_url(url: &DbUrl) -> Box<dyn Conn> {
    godwit_db::connect(
        url,
        &ConnectOptions {
            create_if_missing: true,
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

pub async fn connect(db: &Db) -> Box<dyn Conn> {
    connect_url(&db.url).await
}

pub async fn store(db: &Db) -> StateStore {
    StateStore::open(&db.url, connect(db).await)
        .await
        .expect("open state")
}

/// A run of one step `s`.
pub fn spec(name: &str, definition: &str) -> RunSpec {
    spec_of(name, definition, &["s"])
}

/// A run of the steps `steps`, in that order.
pub fn spec_of(name: &str, definition: &str, steps: &[&str]) -> RunSpec {
    RunSpec {
        name: name.into(),
        plan_text: "name = \"x\"".into(),
        steps: steps
            .iter()
            .map(|step| StepSpec {
                name: (*step).into(),
                definition: definition.into(),
                batch_size: 10,
            })
            .collect(),
    }
}

pub fn range(a: i64, b: i64, last: bool) -> NewBatch {
    NewBatch {
        start_key: Some(a.to_string()),
        end_key: Some(b.to_string()),
        n_rows: b - a + 1,
        last,
    }
}

pub fn run_name() -> String {
    format!("claims-{:016x}", rand_u64())
}

/// Different in every call of every test process, so that tests sharing a server do not meet.
pub fn rand_u64() -> u64 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    (t as u64) ^ u64::from(std::process::id()).rotate_left(32) ^ call.rotate_left(48)
}

pub const LEASE: Duration = Duration::from_secs(30);

/// A new run whose one step `s`, keyed by integers up to `upper`, has started its walk.
pub async fn started_step(state: &StateStore, upper: &str) -> (String, StepRecord) {
    let run = run_name();
    state
        .begin_run(&spec(&run, "v1"), Restart::Resume)
        .await
        .unwrap();
    let record = state
        .init_step(&run, "s", Some("int"), Some(upper), false)
        .await
        .unwrap();
    (run, record)
}

/// One batch claimed as workers claim several (`claim_new_batches`), for the tests that follow
/// a single batch through the protocol.
#[allow(async_fn_in_trait)] // used by these tests alone, never across threads
pub trait ClaimOne {
    /// Claims `batch` by advancing the step's cursor from `record`; `None` when another worker
    /// advanced it first.
    async fn claim_new(
        &self,
        run: &str,
        step: &str,
        record: &StepRecord,
        batch: NewBatch,
        worker: &str,
        lease: Duration,
    ) -> godwit_driver::Result<Option<ClaimedBatch>>;
}

impl ClaimOne for StateStore {
    async fn claim_new(
        &self,
        run: &str,
        step: &str,
        record: &StepRecord,
        batch: NewBatch,
        worker: &str,
        lease: Duration,
    ) -> godwit_driver::Result<Option<ClaimedBatch>> {
        let claimed = self
            .claim_new_batches(run, step, record, vec![batch], worker, lease)
            .await?;
        Ok(claimed.and_then(|mut batches| batches.pop()))
    }
}

/// Declares one test per backend (`pg`, `mysql`, `sqlite`) from an `async fn(&str)`.
#[macro_export]
macro_rules! per_backend {
    ($($name:ident),* $(,)?) => {
        mod pg { $( #[tokio::test] async fn $name() { super::$name("pg").await } )* }
        mod mysql { $( #[tokio::test] async fn $name() { super::$name("mysql").await } )* }
        mod sqlite { $( #[tokio::test] async fn $name() { super::$name("sqlite").await } )* }
    };
}
