//! `locking` of transform steps, through the real binary on PostgreSQL and MariaDB: with
//! `"optimistic"` a batch's rows are read and transformed before its transaction and written
//! only where they still hold what was read; with `"rows"` they are read under lock and held
//! while the transform runs. Either way no application write is lost.
//!
//! The interleavings are made by the transform itself: a program that, at the first row it
//! reads, says so (a file) and waits until the test lets it go (another file). The test acts
//! in between, and tells a waiting application by the database's own lock views, never by
//! sleeping.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{
    db_for, dead_letters_by_key, godwit, insert, path_str, poll_until, spawn_watched_cmd, text,
    Backend, KillOnDrop, TestDb,
};
use godwit_driver::{Conn, Value};

/// How a step locks, as the plan writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Locking {
    Optimistic,
    Rows,
}

impl Locking {
    fn as_str(self) -> &'static str {
        match self {
            Locking::Optimistic => "optimistic",
            Locking::Rows => "rows",
        }
    }
}

/// The transform: `v` gains a "!", except that a `v` starting with "bad" is a bad row and one
/// starting with "big" sets `n` to a value the table's CHECK refuses. At the first row it
/// reads (or the row whose key is its third argument) it creates the file named by its first
/// argument, then answers nothing until the file named by its second exists.
const GATED: &str = r#"import json, os, sys, time
read, go = sys.argv[1], sys.argv[2]
at = int(sys.argv[3]) if len(sys.argv) > 3 else None
for line in sys.stdin:
    row = json.loads(line)
    if (at is None or row["id"] == at) and not os.path.exists(go):
        open(read, "a").close()
        deadline = time.time() + 120
        while not os.path.exists(go):
            if time.time() > deadline:
                sys.exit("the test never let the transform go")
            time.sleep(0.01)
    v = row["v"]
    if v.startswith("bad"):
        answer = {"error": "bad row " + v}
    elif v.startswith("big"):
        answer = {"n": 1000}
    else:
        answer = {"v": v + "!"}
    print(json.dumps(answer), flush=True)
"#;

/// The gated transform's files in the test's directory.
struct Gate {
    read: PathBuf,
    go: PathBuf,
    program: PathBuf,
}

impl Gate {
    fn new(db: &TestDb) -> Gate {
        let program = db.dir.path().join("gated.py");
        std::fs::write(&program, GATED).expect("write the transform");
        Gate {
            read: db.dir.path().join("read"),
            go: db.dir.path().join("go"),
            program,
        }
    }

    /// The step's `command`, stopping at its first row.
    fn command(&self) -> String {
        let quoted = |p: &Path| format!("\"{}\"", p.display());
        format!(
            "command = [\"python3\", {}, {}, {}]",
            quoted(&self.program),
            quoted(&self.read),
            quoted(&self.go)
        )
    }

    /// The step's `command`, stopping at the row whose key is `key`.
    fn command_at(&self, key: i64) -> String {
        let all = self.command();
        format!("{}, \"{key}\"]", all.trim_end_matches(']'))
    }

    /// Waits until the transform has read its first row (the batch has read its rows).
    async fn wait_read(&self, run: &mut KillOnDrop) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.read.exists() {
            assert!(
                run.alive(),
                "the run ended before its transform read a row: {}",
                run.output_so_far()
            );
            assert!(
                Instant::now() < deadline,
                "the transform read no row in 60 s: {}",
                run.output_so_far()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Lets the transform go on.
    fn open(&self) {
        std::fs::write(&self.go, "").expect("let the transform go");
    }
}

/// Creates `table (id, v, n)` with rows 1 to 20, `v` from `v_of` and `n = 0`, and a CHECK
/// that `n` stays under 100.
async fn gated_table(db: &TestDb, table: &str, v_of: impl Fn(i64) -> String) {
    db.exec(&format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, v VARCHAR(40) NOT NULL, \
         n INT NOT NULL DEFAULT 0, CONSTRAINT {table}_small CHECK (n < 100))"
    ))
    .await;
    let rows: Vec<String> = (1..=20).map(|i| format!("({i}, '{}')", v_of(i))).collect();
    insert(db, table, "id, v", &rows).await;
}

/// A plan whose one step runs the gated transform over `table`'s `v`, as one batch.
fn gated_plan(db: &TestDb, table: &str, gate: &Gate, locking: Locking, extra: &str) -> PathBuf {
    db.step_plan(
        table,
        "batch_size = 100\nadaptive = false",
        &format!(
            "name = \"gated\"\ntable = \"{table}\"\nkey = \"id\"\ncolumns = [\"v\"]\n\
             locking = \"{}\"\n{extra}\n{}",
            locking.as_str(),
            gate.command()
        ),
    )
}

/// `godwit run PLAN --json`, logging each batch's rows transformed again.
fn spawn_run(plan: &Path) -> KillOnDrop {
    let mut cmd = godwit();
    cmd.args(["run", path_str(plan), "--json", "--concurrency", "1"])
        .env("RUST_LOG", "godwit_sched=debug,godwit_batch=debug");
    KillOnDrop(spawn_watched_cmd(cmd))
}

/// Waits for the run to end with exit 0; returns the rows it transformed again, as its
/// `batch_done` events count them (a one-batch step reports its batch).
fn finish(run: &mut KillOnDrop) -> u64 {
    let code = run.finish(Duration::from_secs(90));
    assert_eq!(code, Some(0), "{}", run.stderr_text());
    run.events()
        .iter()
        .filter(|e| e["event"] == "batch_done")
        .map(|e| {
            e["rows_redone_since_last"]
                .as_u64()
                .expect("rows_redone_since_last")
        })
        .sum()
}

/// SQL appending `suffix` to row `id`'s `v`.
fn append(backend: Backend, table: &str, id: i64, suffix: &str) -> String {
    match backend {
        Backend::MySql => format!("UPDATE {table} SET v = CONCAT(v, '{suffix}') WHERE id = {id}"),
        _ => format!("UPDATE {table} SET v = v || '{suffix}' WHERE id = {id}"),
    }
}

/// The server's id of `conn`'s session.
async fn session_of(conn: &mut dyn Conn, backend: Backend) -> i64 {
    let sql = match backend {
        Backend::MySql => "SELECT CAST(CONNECTION_ID() AS SIGNED)",
        _ => "SELECT pg_backend_pid()::bigint",
    };
    conn.query(sql, &[]).await.expect("session id")[0]
        .get(0)
        .as_i64()
        .expect("an integer id")
}

/// Whether session `id` waits for a row lock now, by the server's own view of its locks.
async fn waits_for_a_lock(db: &TestDb, id: i64) -> bool {
    let sql = match db.backend {
        Backend::MySql => format!(
            "SELECT COUNT(*) FROM information_schema.INNODB_TRX \
             WHERE trx_mysql_thread_id = {id} AND trx_state = 'LOCK WAIT'"
        ),
        _ => format!(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE pid = {id} AND wait_event_type = 'Lock'"
        ),
    };
    db.scalar(&sql).await > 0
}

/// Every row's `v`, by key.
async fn values(db: &TestDb, table: &str) -> Vec<(i64, String)> {
    db.query(&format!("SELECT id, v FROM {table} ORDER BY id"))
        .await
        .iter()
        .map(|r| {
            let v = match &r[1] {
                Value::Text(s) => s.clone(),
                Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
                other => panic!("v is {other:?}"),
            };
            (r[0].as_i64().expect("id"), v)
        })
        .collect()
}

/// What every row of a gated table should hold: `v_of(id)` transformed, except `id`s in
/// `own`, given as they should end.
fn expected(v_of: impl Fn(i64) -> String, own: &[(i64, &str)]) -> Vec<(i64, String)> {
    (1..=20)
        .map(|i| match own.iter().find(|(id, _)| *id == i) {
            Some((_, v)) => (i, v.to_string()),
            None => (i, format!("{}!", v_of(i))),
        })
        .collect()
}

fn plain(i: i64) -> String {
    format!("r{i}")
}

/// An application appends to row 5 after the batch read it and before the batch writes.
/// Optimistic: the application does not wait; the batch's write finds the row changed, reads
/// it again under lock and transforms what the application wrote (`r5a!`), one row redone.
/// Rows: the application waits for the batch's lock, then appends to what the batch wrote
/// (`r5!a`). Either way the application's write is kept.
async fn a_write_between_read_and_write_is_kept(backend: Backend, locking: Locking) {
    let db = db_for(backend).await;
    let t = db.table("kept");
    gated_table(&db, &t, plain).await;
    let gate = Gate::new(&db);
    let plan = gated_plan(&db, &t, &gate, locking, "");
    let mut run = spawn_run(&plan);
    gate.wait_read(&mut run).await;

    let mut app = db.conn().await;
    let session = session_of(app.as_mut(), backend).await;
    let sql = append(backend, &t, 5, "a");
    let write = tokio::spawn(async move { app.execute_unprepared(&sql).await });
    match locking {
        Locking::Optimistic => {
            let written = tokio::time::timeout(Duration::from_secs(20), write)
                .await
                .expect("the application's write waited for the transform")
                .expect("join");
            assert_eq!(written.expect("the application's write"), 1);
        }
        Locking::Rows => {
            poll_until(
                "the application to wait for the batch's row lock",
                Duration::from_secs(30),
                async || waits_for_a_lock(&db, session).await,
            )
            .await;
            assert!(!write.is_finished());
            gate.open();
            let written = write.await.expect("join").expect("the application's write");
            assert_eq!(written, 1);
        }
    }
    // Optimistic: only now does the batch go on to write.
    gate.open();
    let redone = finish(&mut run);
    let (row_5, wanted_redone) = match locking {
        Locking::Optimistic => ("r5a!", 1),
        Locking::Rows => ("r5!a", 0),
    };
    assert_eq!(values(&db, &t).await, expected(plain, &[(5, row_5)]));
    assert_eq!(redone, wanted_redone, "{}", run.stderr_text());
}

/// An application transaction updates row 5 while the transform runs and holds its lock.
/// Optimistic: its update returns at once, however long the transform takes (here: until the
/// test lets it go); the batch's write then meets the application's lock, yields, and once the
/// application commits, transforms what it wrote. Rows: the update waits for the batch.
async fn an_application_transaction_is_not_kept_waiting(backend: Backend, locking: Locking) {
    let db = db_for(backend).await;
    let t = db.table("waits");
    gated_table(&db, &t, plain).await;
    let gate = Gate::new(&db);
    let plan = gated_plan(&db, &t, &gate, locking, "");
    let mut run = spawn_run(&plan);
    gate.wait_read(&mut run).await;

    let mut app = db.conn().await;
    let session = session_of(app.as_mut(), backend).await;
    app.begin(Default::default()).await.expect("begin");
    let sql = append(backend, &t, 5, "a");
    let started = Instant::now();
    let update = tokio::spawn(async move {
        let updated = app.execute_unprepared(&sql).await;
        (app, updated)
    });
    let mut app = match locking {
        Locking::Optimistic => {
            let (app, updated) = tokio::time::timeout(Duration::from_secs(20), update)
                .await
                .expect("the application's update waited for the transform")
                .expect("join");
            assert_eq!(updated.expect("the application's update"), 1);
            let took = started.elapsed();
            assert!(
                took < Duration::from_secs(2),
                "the application's update took {took:?} beside a transform still running"
            );
            assert!(!gate.go.exists() && run.alive(), "the transform still runs");
            gate.open();
            run.wait_stdout(
                "the batch to yield to the application's lock",
                Duration::from_secs(60),
                |line| line.contains("batch_retry") && line.contains("yielded to a lock"),
            );
            app
        }
        Locking::Rows => {
            poll_until(
                "the application to wait for the batch's row lock",
                Duration::from_secs(30),
                async || waits_for_a_lock(&db, session).await,
            )
            .await;
            assert!(!update.is_finished());
            gate.open();
            let (app, updated) = update.await.expect("join");
            assert_eq!(updated.expect("the application's update"), 1);
            app
        }
    };
    app.commit().await.expect("the application commits");
    finish(&mut run);
    let row_5 = match locking {
        Locking::Optimistic => "r5a!",
        Locking::Rows => "r5!a",
    };
    assert_eq!(values(&db, &t).await, expected(plain, &[(5, row_5)]));
}

/// Rows the transform refuses (row 3, "bad…") and rows the database refuses (row 4: `n` past
/// the CHECK) become dead letters under `on_row_error = "skip"` as before. Meanwhile the
/// application turns row 5 into a bad row and row 6 into one the database refuses. Optimistic:
/// the batch read them before, finds them changed, transforms them again, and sets both aside
/// too. Rows: the application waits, and its values land after the batch.
async fn set_aside_rows_as_before(backend: Backend, locking: Locking) {
    let db = db_for(backend).await;
    let t = db.table("aside");
    let v_of = |i: i64| match i {
        3 => "bad3".to_string(),
        4 => "big4".to_string(),
        _ => plain(i),
    };
    gated_table(&db, &t, v_of).await;
    let gate = Gate::new(&db);
    let plan = gated_plan(&db, &t, &gate, locking, "on_row_error = \"skip\"");
    let mut run = spawn_run(&plan);
    gate.wait_read(&mut run).await;

    let mut app = db.conn().await;
    let session = session_of(app.as_mut(), backend).await;
    let sql =
        format!("UPDATE {t} SET v = CASE id WHEN 5 THEN 'bad5' ELSE 'big6' END WHERE id IN (5, 6)");
    let write = tokio::spawn(async move { app.execute_unprepared(&sql).await });
    if locking == Locking::Rows {
        poll_until(
            "the application to wait for the batch's row lock",
            Duration::from_secs(30),
            async || waits_for_a_lock(&db, session).await,
        )
        .await;
        gate.open();
    }
    let written = tokio::time::timeout(Duration::from_secs(60), write)
        .await
        .expect("the application's write never returned")
        .expect("join");
    assert_eq!(written.expect("the application's write"), 2);
    gate.open();
    let redone = finish(&mut run);
    let own = [(3, "bad3"), (4, "big4"), (5, "bad5"), (6, "big6")];
    assert_eq!(values(&db, &t).await, expected(v_of, &own));
    assert_eq!(
        db.scalar(&format!("SELECT COUNT(*) FROM {t} WHERE n <> 0"))
            .await,
        0
    );
    let letters: Vec<i64> = dead_letters_by_key(&plan)
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    let (wanted, wanted_redone) = match locking {
        Locking::Optimistic => (vec![3, 4, 5, 6], 2),
        Locking::Rows => (vec![3, 4], 0),
    };
    assert_eq!(letters, wanted, "{}", run.stderr_text());
    assert_eq!(redone, wanted_redone);
}

/// A batch of rows wider than `max_batch_bytes` allows at once reads and transforms what fits
/// before its transaction, and the rest in it, still without locks and each write checked: an
/// application that writes a row of that rest while the transform runs is not kept waiting,
/// and its write is transformed, not overwritten.
async fn wide_rows_read_in_the_transaction_are_checked_too(backend: Backend) {
    let db = db_for(backend).await;
    let t = db.table("wide");
    let wide = |i: i64| format!("r{i}{}", "x".repeat(20_000));
    db.exec(&format!(
        "CREATE TABLE {t} (id BIGINT PRIMARY KEY, v TEXT NOT NULL, n INT NOT NULL DEFAULT 0)"
    ))
    .await;
    let rows: Vec<String> = (1..=100).map(|i| format!("({i}, '{}')", wide(i))).collect();
    insert(&db, &t, "id, v", &rows).await;
    let gate = Gate::new(&db);
    // The first slice of a step is 64 rows, past the 64 KiB: the other 36 are read in the
    // transaction, a few at a time. The transform stops at row 90.
    let plan = db.step_plan(
        &t,
        "batch_size = 100\nadaptive = false\nmax_batch_bytes = \"64KiB\"",
        &format!(
            "name = \"wide\"\ntable = \"{t}\"\nkey = \"id\"\ncolumns = [\"v\"]\n{}",
            gate.command_at(90)
        ),
    );
    let mut run = spawn_run(&plan);
    gate.wait_read(&mut run).await;
    let mut app = db.conn().await;
    let sql = append(backend, &t, 90, "a");
    let written = tokio::time::timeout(Duration::from_secs(20), app.execute_unprepared(&sql))
        .await
        .expect("the application's write waited for the transform");
    assert_eq!(written.expect("the application's write"), 1);
    gate.open();
    let redone = finish(&mut run);
    let got = values(&db, &t).await;
    let wanted: Vec<(i64, String)> = (1..=100)
        .map(|i| match i {
            90 => (i, format!("{}a!", wide(i))),
            _ => (i, format!("{}!", wide(i))),
        })
        .collect();
    assert!(got == wanted, "rows differ from what was written");
    assert_eq!(redone, 1, "{}", run.stderr_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide_rows_read_in_the_transaction_are_checked_too_pg() {
    wide_rows_read_in_the_transaction_are_checked_too(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide_rows_read_in_the_transaction_are_checked_too_mariadb() {
    wide_rows_read_in_the_transaction_are_checked_too(Backend::MySql).await;
}

macro_rules! each_database_and_locking {
    ($($name:ident),* $(,)?) => {
        mod pg_optimistic { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Backend::Postgres, super::Locking::Optimistic).await } )* }
        mod pg_rows { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Backend::Postgres, super::Locking::Rows).await } )* }
        mod mariadb_optimistic { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Backend::MySql, super::Locking::Optimistic).await } )* }
        mod mariadb_rows { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Backend::MySql, super::Locking::Rows).await } )* }
    };
}

each_database_and_locking!(
    a_write_between_read_and_write_is_kept,
    an_application_transaction_is_not_kept_waiting,
    set_aside_rows_as_before,
);

/// MariaDB compares text by its column's collation, where 'abc' = 'ABC' and 'abc' = 'abc '.
/// An optimistic write compares what it read byte for byte: an application's change of case,
/// or of a trailing space, counts as a change, and is transformed rather than overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_the_collation_ignores_is_a_change_on_mariadb() {
    let db = db_for(Backend::MySql).await;
    let t = db.table("case");
    gated_table(&db, &t, |_| "abc".to_string()).await;
    db.exec(&format!(
        "ALTER TABLE {t} MODIFY v VARCHAR(40) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci NOT NULL"
    ))
    .await;
    let gate = Gate::new(&db);
    let plan = gated_plan(&db, &t, &gate, Locking::Optimistic, "");
    let mut run = spawn_run(&plan);
    gate.wait_read(&mut run).await;
    db.exec(&format!("UPDATE {t} SET v = 'ABC' WHERE id = 1"))
        .await;
    db.exec(&format!("UPDATE {t} SET v = 'abc ' WHERE id = 2"))
        .await;
    gate.open();
    let redone = finish(&mut run);
    assert_eq!(
        values(&db, &t).await,
        expected(|_| "abc".to_string(), &[(1, "ABC!"), (2, "abc !")])
    );
    assert_eq!(redone, 2, "{}", run.stderr_text());
}

/// Columns of every MariaDB type, NULLs included, read whole by a transform that changes one
/// text column: an optimistic write that compares what it read must not see a change where
/// there is none, or every batch would be read twice, under lock. A second step writes a float
/// column the value it holds already (to MariaDB an unchanged row, which must still count as
/// matched). No row is redone, and no other column changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_row_of_any_type_is_redone_on_mariadb() {
    let db = db_for(Backend::MySql).await;
    let t = db.table("types");
    db.exec(&format!(
        "CREATE TABLE {t} (id BIGINT PRIMARY KEY, \
         ti TINYINT, si SMALLINT, mi MEDIUMINT, i INT, bi BIGINT, ub BIGINT UNSIGNED, \
         b1 TINYINT(1), dc DECIMAL(12,4), f FLOAT, dbl DOUBLE, \
         d DATE, dt DATETIME(6), dt0 DATETIME, tm TIME, tm6 TIME(6), ts TIMESTAMP(6) NULL, \
         yr YEAR, ch CHAR(10), vc VARCHAR(40) COLLATE utf8mb4_general_ci, tx TEXT, \
         lat VARCHAR(20) CHARACTER SET latin1, bl BLOB, bn BINARY(6), vb VARBINARY(20), \
         en ENUM('a','B','c'), st SET('x','y','z'), js JSON, bt BIT(10), uu UUID, \
         note VARCHAR(100) NOT NULL DEFAULT '')"
    ))
    .await;
    let full = "id, ti, si, mi, i, bi, ub, b1, dc, f, dbl, d, dt, dt0, tm, tm6, ts, yr, ch, vc, \
                tx, lat, bl, bn, vb, en, st, js, bt, uu";
    let rows: Vec<String> = (1..=40i64)
        .map(|i| {
            if i % 5 == 0 {
                return format!("({i}{})", ", NULL".repeat(29));
            }
            format!(
                "({i}, {}, -{i}00, {i}000, -{i}0000, {i}000000000, 18446744073709551{:03}, {}, \
                 '{i}.2500', 1.1, {i}.000000001, '2024-02-{:02}', '2024-02-{:02} 10:11:12.{:06}', \
                 '2024-02-01 23:59:59', '-{i}:30:00', '12:00:00.{:06}', '2024-03-01 00:00:{:02}.5', \
                 {}, 'ch{i}', 'Mixed Case {i} ', 'text {i} é', 'caf\u{e9} {i}', x'00ff{:02x}', \
                 x'01{:02x}', x'{:02x}2000', '{}', 'x,z', '{{\"k\": [1, 2.50, \"{i}\"], \"n\": null}}', \
                 b'10110{:05b}', '123e4567-e89b-12d3-a456-4266141740{:02}')",
                i - 100,
                i,
                i % 2,
                i % 28 + 1,
                i % 28 + 1,
                i * 1001,
                i,
                i % 60,
                1990 + i,
                i,
                i,
                i,
                ["a", "B", "c"][i as usize % 3],
                i % 32,
                i
            )
        })
        .collect();
    insert(&db, &t, full, &rows).await;
    let before = db.query(&format!("SELECT * FROM {t} ORDER BY id")).await;
    let plan = db.plan(
        "types.toml",
        &format!(
            "name = \"{t}\"\ndatabase = \"{}\"\n\n[defaults]\nbatch_size = 15\nadaptive = false\n\n\
             [[steps]]\nname = \"notes\"\ntable = \"{t}\"\nkey = \"id\"\n\
             lua = 'function transform(row) return {{ note = row.note .. \"!\" }} end'\n\n\
             [[steps]]\nname = \"floats\"\nafter = [\"notes\"]\ntable = \"{t}\"\nkey = \"id\"\n\
             where = \"f IS NOT NULL\"\n\
             lua = 'function transform(row) return {{ f = 1.1 }} end'\n",
            db.url
        ),
    );
    let mut run = spawn_run(&plan);
    finish(&mut run);
    let stderr = run.stderr_text();
    assert!(
        !stderr.contains("rows_redone") && !stderr.contains("read them again under lock"),
        "rows were read again where nothing changed them:\n{stderr}"
    );
    let after = db.query(&format!("SELECT * FROM {t} ORDER BY id")).await;
    assert_eq!(after.len(), before.len());
    let note = before[0].len() - 1;
    for (was, is) in before.iter().zip(&after) {
        assert_eq!(was[..note], is[..note], "a column other than note changed");
        assert_eq!(is[note], Value::Text("!".into()), "row {:?}: note", is[0]);
    }
}

/// SQLite's batch holds the database's only write lock while its transform runs: an explicit
/// `locking = "optimistic"` would promise what cannot be kept, and `check` and `run` refuse
/// it where it is written (a step's, or the `[defaults]` a step takes it from), while
/// `"rows"`, which is what SQLite does, and no key at all, pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimistic_locking_is_refused_on_sqlite() {
    let db = TestDb::new(Backend::Sqlite).await;
    db.exec("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
        .await;
    let lua = "lua = 'function transform(row) return nil end'";
    let step = |name: &str, extra: &str| {
        format!("[[steps]]\nname = \"{name}\"\ntable = \"items\"\nkey = \"id\"\n{lua}\n{extra}\n")
    };
    let head = format!("name = \"sqlite-locking\"\ndatabase = \"{}\"\n", db.url);
    let checked = |file: &str, text: String| {
        let plan = db.plan(file, &text);
        let out = common::run_cmd(&["check", path_str(&plan)]);
        (out.status.code(), text_of(&out))
    };
    let said = "`locking = \"optimistic\"` cannot work on SQLite: a batch's transaction holds the database's only write lock while its transform runs, so other writers wait for it whatever `locking` says; remove the key (SQLite batches always lock, as \"rows\" does)";

    let (code, out) = checked(
        "step.toml",
        format!(
            "{head}{}{}",
            step("a", ""),
            step("b", "locking = \"optimistic\"")
        ),
    );
    assert_eq!(code, Some(2), "{out}");
    let at = format!("{}:14:1", db.dir.path().join("step.toml").display());
    assert!(
        out.contains(&format!("problem: {at}: step \"b\": {said}")),
        "{out}"
    );
    let (code, out) = checked(
        "defaults.toml",
        format!(
            "{head}[defaults]\nlocking = \"optimistic\"\n{}",
            step("a", "")
        ),
    );
    assert_eq!(code, Some(2), "{out}");
    let at = format!("{}:4:1", db.dir.path().join("defaults.toml").display());
    assert!(out.contains(&format!("problem: {at}: {said}")), "{out}");
    let plan = db.plan(
        "defaults.toml",
        &format!(
            "{head}[defaults]\nlocking = \"optimistic\"\n{}",
            step("a", "")
        ),
    );
    let ran = common::run_cmd(&["run", path_str(&plan), "--quiet"]);
    assert_eq!(ran.status.code(), Some(2), "{}", text_of(&ran));

    for (file, text) in [
        (
            "rows.toml",
            format!("{head}{}", step("a", "locking = \"rows\"")),
        ),
        ("none.toml", format!("{head}{}", step("a", ""))),
        (
            "overridden.toml",
            format!("{head}[defaults]\nlocking = \"rows\"\n{}", step("a", "")),
        ),
    ] {
        let (code, out) = checked(file, text);
        assert_eq!(code, Some(0), "{file}: {out}");
    }
}

fn text_of(out: &std::process::Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}
