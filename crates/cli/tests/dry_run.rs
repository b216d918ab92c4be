//! `godwit run PLAN --dry-run` (issue 15) on each database, through the real binary: it changes
//! no row and writes no progress (no state table is even created), its counts are what the
//! run then changes, one-off statements a rollback cannot undo are not run, a failing batch
//! fails it as it fails a run, and flags that mean nothing in a dry run are refused.

mod common;

use std::path::{Path, PathBuf};

use common::{id_type, insert, own_db, path_str, run_cmd, status_json, text, Backend, TestDb};
use godwit_driver::Value;
use serde_json::Value as Json;

/// Every row of `table`, as text, sorted: what a user compares before and after.
async fn rows_of(db: &TestDb, table: &str) -> Vec<String> {
    let mut rows: Vec<String> = db
        .query(&format!("SELECT * FROM {table}"))
        .await
        .into_iter()
        .map(|row| format!("{row:?}"))
        .collect();
    rows.sort();
    rows
}

/// Fails the test with the rows that differ (a few of them) when `now` is not `before`.
fn assert_unchanged<T: std::fmt::Debug + PartialEq>(before: &[T], now: &[T], what: &str) {
    if before == now {
        return;
    }
    let gone: Vec<&T> = before.iter().filter(|r| !now.contains(r)).take(5).collect();
    let new: Vec<&T> = now.iter().filter(|r| !before.contains(r)).take(5).collect();
    panic!("{what}: rows gone (a few): {gone:?}; rows new (a few): {new:?}");
}

/// The names of the `godwit_*` tables (and views) in the test's own database.
async fn state_tables(db: &TestDb) -> Vec<String> {
    let sql = match db.backend {
        Backend::Postgres => {
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name LIKE 'godwit%' ORDER BY 1"
        }
        Backend::MySql => {
            "SELECT CAST(table_name AS CHAR) FROM information_schema.tables \
             WHERE table_schema = DATABASE() AND table_name LIKE 'godwit%' ORDER BY 1"
        }
        Backend::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') \
             AND name LIKE 'godwit%' ORDER BY 1"
        }
    };
    db.query(sql)
        .await
        .into_iter()
        .map(|row| match &row[0] {
            Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
            v => v.as_str().unwrap_or_default().to_string(),
        })
        .collect()
}

/// Every row of every `godwit_*` table: the whole of what godwit records.
async fn state_rows(db: &TestDb) -> Vec<(String, Vec<String>)> {
    let mut all = Vec::new();
    for table in state_tables(db).await {
        let rows = rows_of(db, &table).await;
        all.push((table, rows));
    }
    all
}

/// Runs `godwit run PLAN --dry-run --json` and returns its exit code, its last line (the
/// `dry_run_done` object) and its stderr.
fn dry_run(plan: &Path) -> (Option<i32>, Json, String) {
    let out = run_cmd(&["run", path_str(plan), "--dry-run", "--json"]);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    let last = stdout.lines().last().unwrap_or_default();
    let done: Json = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("no JSON on the last line ({e}): {stdout}\n{stderr}"));
    assert_eq!(done["event"], "dry_run_done", "{stdout}");
    for line in stdout.lines() {
        let event: Json = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("--json printed a line that is no JSON ({e}): {line}"));
        assert!(event["event"].is_string(), "{line}");
    }
    (out.status.code(), done, stderr)
}

/// The step named `name` of a `dry_run_done` object.
fn step<'a>(done: &'a Json, name: &str) -> &'a Json {
    done["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["step"] == name))
        .unwrap_or_else(|| panic!("no step {name:?} in {done}"))
}

fn count(value: &Json) -> i64 {
    value
        .as_i64()
        .unwrap_or_else(|| panic!("{value} is no count"))
}

/// The tables of the main test: counters, phone numbers, a copy's target, a setting.
struct Tables {
    counters: String,
    phones: String,
    copy: String,
    settings: String,
    extra: String,
}

impl Tables {
    async fn create(db: &TestDb) -> Tables {
        let t = Tables {
            counters: db.table("counters"),
            phones: db.table("phones"),
            copy: db.table("copy"),
            settings: db.table("settings"),
            extra: db.table("extra"),
        };
        let id = id_type(db.backend);
        db.counter_table(&t.counters, 1..=500).await;
        db.exec(&format!(
            "CREATE TABLE {} (id {id} PRIMARY KEY, phone VARCHAR(20) NOT NULL)",
            t.phones
        ))
        .await;
        // Two numbers in three have the old 11 digits.
        let phones: Vec<String> = (1..=300)
            .map(|i| match i % 3 {
                0 => format!("({i}, '0{}')", 900_000_000 + i),
                _ => format!("({i}, '84{}')", 900_000_000 + i),
            })
            .collect();
        insert(db, &t.phones, "id, phone", &phones).await;
        db.exec(&format!(
            "CREATE TABLE {} (id {id} PRIMARY KEY, hits INT NOT NULL, grp INT NOT NULL)",
            t.copy
        ))
        .await;
        db.exec(&format!(
            "CREATE TABLE {} (k VARCHAR(20) PRIMARY KEY, v VARCHAR(20) NOT NULL)",
            t.settings
        ))
        .await;
        db.exec(&format!(
            "INSERT INTO {} (k, v) VALUES ('mode', 'old'), ('other', 'old')",
            t.settings
        ))
        .await;
        t
    }

    fn data(&self) -> [&str; 4] {
        [&self.counters, &self.phones, &self.copy, &self.settings]
    }

    /// Every row of each table, by table.
    async fn snapshot(&self, db: &TestDb) -> Vec<Vec<String>> {
        let mut all = Vec::new();
        for table in self.data() {
            all.push(rows_of(db, table).await);
        }
        all
    }

    /// Every row of every table, each after its table's name.
    async fn all_rows(&self, db: &TestDb) -> Vec<String> {
        let mut all = Vec::new();
        for (table, rows) in self.data().iter().zip(self.snapshot(db).await) {
            all.extend(rows.into_iter().map(|row| format!("{table}: {row}")));
        }
        all
    }

    /// A plan of every kind of step over these tables: one-off DML, one-off DDL and a step on
    /// what it creates, chunked SQL, a Lua transform that sets rows aside, a copy.
    fn plan(&self, db: &TestDb, name: &str) -> PathBuf {
        let id = id_type(db.backend);
        let Tables {
            counters,
            phones,
            copy,
            settings,
            extra,
        } = self;
        db.plan(
            "plan.toml",
            &format!(
                r#"name = "{name}"
database = "{url}"

[defaults]
batch_size = 40
adaptive = false

[[steps]]
name = "settings"
sql = "UPDATE {settings} SET v = 'new' WHERE k = 'mode'"

[[steps]]
name = "extra"
sql = "CREATE TABLE IF NOT EXISTS {extra} (id {id} PRIMARY KEY, n INT NOT NULL)"

[[steps]]
name = "fill-extra"
after = ["extra"]
table = "{extra}"
key = "id"
sql = "UPDATE {extra} SET n = n + 1 WHERE id BETWEEN :start AND :end"

[[steps]]
name = "bump"
table = "{counters}"
key = "id"
sql = "UPDATE {counters} SET hits = hits + 1 WHERE id BETWEEN :start AND :end AND grp = 0"

[[steps]]
name = "phones"
table = "{phones}"
key = "id"
columns = ["phone"]
where = "length(phone) = 11"
on_row_error = "skip"
lua = '''
function transform(row)
  if row.id % 50 == 7 then error("no rule for this number") end
  return {{ phone = "0" .. row.phone:sub(3) }}
end
'''

[[steps]]
name = "copy"
table = "{counters}"
key = "id"
columns = ["id", "hits", "grp"]
into = "{copy}"
on_conflict = "ignore"
"#,
                url = db.url
            ),
        )
    }
}

/// A dry run changes no row, creates no state table, and counts per step what the run then
/// changes; run again over the run's records, it leaves them as they are.
async fn writes_nothing_and_counts_what_the_run_changes(backend: Backend) {
    let db = own_db(backend).await;
    let tables = Tables::create(&db).await;
    let name = db.table("dry");
    let plan = tables.plan(&db, &name);
    let before = tables.snapshot(&db).await;
    let before_rows = tables.all_rows(&db).await;

    let (code, done, stderr) = dry_run(&plan);
    assert_eq!(code, Some(0), "{done}\n{stderr}");
    assert_eq!(done["outcome"], "done", "{done}");
    assert_unchanged(
        &before_rows,
        &tables.all_rows(&db).await,
        "the dry run changed rows",
    );
    assert_eq!(
        state_tables(&db).await,
        Vec::<String>::new(),
        "the dry run created state tables"
    );
    assert!(
        db.conn()
            .await
            .table_info(&tables.extra)
            .await
            .expect("table info")
            .is_none(),
        "the one-off CREATE TABLE was kept"
    );
    let status = status_json(&plan);
    assert_eq!(status["state"], "pending", "status shows no run: {status}");
    assert_eq!(
        state_tables(&db).await,
        Vec::<String>::new(),
        "status created state tables"
    );

    // What each step reports, against the data.
    let settings = step(&done, "settings");
    assert_eq!(settings["state"], "rehearsed", "{settings}");
    assert_eq!(count(&settings["rows_changed"]), 1, "{settings}");
    let extra = step(&done, "extra");
    match backend {
        Backend::MySql => {
            assert_eq!(extra["state"], "not_rehearsed", "{extra}");
            assert!(
                extra["reason"].as_str().unwrap_or_default().contains("DDL"),
                "{extra}"
            );
        }
        _ => assert_eq!(extra["state"], "rehearsed", "{extra}"),
    }
    let fill = step(&done, "fill-extra");
    assert_eq!(fill["state"], "not_rehearsed", "{fill}");
    let reason = fill["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("does not exist") && reason.contains("\"extra\""),
        "names what is missing and the one-off step that creates it: {fill}"
    );
    let bump = step(&done, "bump");
    assert_eq!(bump["state"], "rehearsed", "{bump}");
    assert_eq!(count(&bump["rows_matched"]), 500, "{bump}");
    assert_eq!(
        count(&bump["batches"]),
        13,
        "500 keys in batches of 40: {bump}"
    );
    let phones = step(&done, "phones");
    let old_numbers = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM {} WHERE length(phone) = 11",
            tables.phones
        ))
        .await;
    assert_eq!(count(&phones["rows_matched"]), old_numbers, "{phones}");
    assert!(count(&phones["rows_set_aside"]) > 0, "{phones}");
    assert_eq!(phones["set_aside"][0]["key"], "7", "{phones}");
    assert!(
        phones["set_aside"][0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("no rule"),
        "{phones}"
    );
    let example = &phones["examples"][0];
    assert_eq!(example["key"], "1", "{phones}");
    assert_eq!(example["before"]["phone"], "84900000001", "{phones}");
    assert_eq!(example["after"]["phone"], "0900000001", "{phones}");
    let copy = step(&done, "copy");
    assert_eq!(count(&copy["rows_matched"]), 500, "{copy}");

    // The run changes what the dry run counted.
    let out = run_cmd(&["run", path_str(&plan)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let after = tables.snapshot(&db).await;
    let changed = |i: usize| {
        after[i]
            .iter()
            .filter(|row| !before[i].contains(row))
            .count() as i64
    };
    assert_eq!(count(&settings["rows_changed"]), changed(3), "settings");
    assert_eq!(count(&bump["rows_changed"]), changed(0), "bump");
    assert_eq!(count(&phones["rows_changed"]), changed(1), "phones");
    assert_eq!(count(&copy["rows_changed"]), changed(2), "copy");
    let key_1 = db
        .query(&format!("SELECT phone FROM {} WHERE id = 1", tables.phones))
        .await;
    assert_eq!(
        key_1[0][0].as_str(),
        example["after"]["phone"].as_str(),
        "the example shows what the run wrote"
    );
    let status = status_json(&plan);
    for name in ["bump", "phones", "copy"] {
        let ran = status["steps"]
            .as_array()
            .and_then(|steps| steps.iter().find(|s| s["name"] == name))
            .unwrap_or_else(|| panic!("no step {name} in {status}"));
        let rehearsed = step(&done, name);
        assert_eq!(
            ran["rows_done"], rehearsed["rows_matched"],
            "{name}: {ran} vs {rehearsed}"
        );
        assert_eq!(
            ran["rows_skipped"], rehearsed["rows_set_aside"],
            "{name}: {ran} vs {rehearsed}"
        );
    }

    // Over a run that is done, a dry run rehearses every step again (as `run --restart`
    // would run them) and leaves the run's records and the rows as they are.
    let records = state_rows(&db).await;
    assert!(!records.is_empty());
    let data = tables.all_rows(&db).await;
    let (code, again, stderr) = dry_run(&plan);
    assert_eq!(code, Some(0), "{again}\n{stderr}");
    assert_eq!(again["stored_run"], "done", "{again}");
    let phones_now = step(&again, "phones");
    assert_eq!(
        phones_now["rows_matched"], phones["rows_set_aside"],
        "only the rows set aside still have 11 digits: {phones_now}"
    );
    assert_eq!(count(&phones_now["rows_changed"]), 0, "{phones_now}");
    assert_unchanged(
        &records,
        &state_rows(&db).await,
        "the dry run changed godwit's records",
    );
    assert_unchanged(
        &data,
        &tables.all_rows(&db).await,
        "the dry run changed rows",
    );
    db.drop_mysql().await;
}

/// A batch that fails fails the dry run as it would fail the run: exit 1, naming the plan file,
/// the step, the key range and the database's code; nothing is changed or recorded.
async fn a_failing_batch_fails_it_as_in_a_run(backend: Backend) {
    let db = own_db(backend).await;
    let table = db.table("counters");
    db.counter_table(&table, 1..=100).await;
    let plan = db.step_plan(
        &table,
        "batch_size = 30\nadaptive = false\nmax_attempts = 1",
        &format!(
            "name = \"nulls\"\ntable = \"{table}\"\nkey = \"id\"\n\
             sql = \"UPDATE {table} SET grp = NULL WHERE id BETWEEN :start AND :end AND id > 70 AND id <= 90\""
        ),
    );
    let before = rows_of(&db, &table).await;
    let (code, done, stderr) = dry_run(&plan);
    assert_eq!(code, Some(1), "{done}\n{stderr}");
    assert_eq!(done["outcome"], "failed", "{done}");
    let code_of_db = match backend {
        Backend::Postgres => "[23502]",
        Backend::MySql => "[1048]",
        Backend::Sqlite => "[1299]",
    };
    assert!(
        stderr.contains("plan.toml")
            && stderr.contains("step \"nulls\", keys 61..=90")
            && stderr.contains(code_of_db),
        "{stderr}"
    );
    let failed = step(&done, "nulls");
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_unchanged(
        &before,
        &rows_of(&db, &table).await,
        "the dry run changed rows",
    );
    assert_eq!(
        state_tables(&db).await,
        Vec::<String>::new(),
        "the dry run created state tables"
    );
    db.drop_mysql().await;
}

per_backend!(
    writes_nothing_and_counts_what_the_run_changes,
    a_failing_batch_fails_it_as_in_a_run,
);

/// PostgreSQL builds an index concurrently only outside a transaction: the dry run does not
/// run such a statement, says so, and says what the run would do first with the invalid index
/// an interrupted build left (which it leaves as it is).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_index_build_is_not_run() {
    let db = own_db(Backend::Postgres).await;
    let table = db.table("refs");
    let index = db.table("refs_ref");
    db.exec(&format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, ref TEXT NOT NULL); \
         INSERT INTO {table} SELECT g, 'r' || g FROM generate_series(1, 100) g"
    ))
    .await;
    // A unique build that met a duplicate leaves its index invalid.
    db.exec(&format!("UPDATE {table} SET ref = 'r1' WHERE id = 2"))
        .await;
    let sql = format!("CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {index} ON {table} (ref)");
    let mut conn = db.conn().await;
    assert!(conn.execute_unprepared(&sql).await.is_err());
    db.exec(&format!("UPDATE {table} SET ref = 'r2' WHERE id = 2"))
        .await;
    let invalid = format!(
        "SELECT COUNT(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         WHERE c.relname = '{index}' AND NOT i.indisvalid"
    );
    assert_eq!(db.scalar(&invalid).await, 1);

    let plan = db.step_plan(&table, "", &format!("name = \"index\"\nsql = \"{sql}\""));
    let (code, done, stderr) = dry_run(&plan);
    assert_eq!(code, Some(0), "{done}\n{stderr}");
    let index_step = step(&done, "index");
    assert_eq!(index_step["state"], "not_rehearsed", "{index_step}");
    assert_eq!(index_step["statement"], sql.as_str(), "{index_step}");
    assert!(
        index_step["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("CONCURRENTLY"),
        "{index_step}"
    );
    assert!(
        index_step["notes"][0]
            .as_str()
            .unwrap_or_default()
            .contains("would drop it"),
        "{index_step}"
    );
    assert_eq!(
        db.scalar(&invalid).await,
        1,
        "the dry run left the index as it was"
    );
    assert_eq!(
        state_tables(&db).await,
        Vec::<String>::new(),
        "the dry run created state tables"
    );

    // Printed for people: the statement and why it was not run.
    let out = run_cmd(&["run", path_str(&plan), "--dry-run"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(&format!("would run: {sql}"))
            && stdout.contains("not rehearsed because PostgreSQL refuses CONCURRENTLY"),
        "{stdout}"
    );
}

/// A transform program runs for real on the rows: what it does outside the database stays
/// done (the docs say so), while its rows are rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_transform_runs_for_real_and_its_rows_roll_back() {
    let db = own_db(Backend::Sqlite).await;
    let table = db.table("people");
    db.exec(&format!(
        "CREATE TABLE {table} (id INTEGER PRIMARY KEY, name TEXT NOT NULL)"
    ))
    .await;
    let rows: Vec<String> = (1..=20).map(|i| format!("({i}, 'n{i}')")).collect();
    insert(&db, &table, "id, name", &rows).await;
    let seen = db.dir.path().join("seen.txt");
    let program = db.dir.path().join("upper.py");
    std::fs::write(
        &program,
        format!(
            "import json, sys\n\
             for line in sys.stdin:\n\
             \x20   row = json.loads(line)\n\
             \x20   open({seen:?}, 'a').write(str(row['id']) + '\\n')\n\
             \x20   print(json.dumps({{'name': row['name'].upper()}}), flush=True)\n",
            seen = seen.display().to_string()
        ),
    )
    .expect("write the program");
    let plan = db.step_plan(
        &table,
        "batch_size = 8",
        &format!(
            "name = \"upper\"\ntable = \"{table}\"\nkey = \"id\"\ncolumns = [\"name\"]\n\
             command = [\"python3\", {:?}]",
            program.display().to_string()
        ),
    );
    let before = rows_of(&db, &table).await;
    let (code, done, stderr) = dry_run(&plan);
    assert_eq!(code, Some(0), "{done}\n{stderr}");
    assert_eq!(count(&step(&done, "upper")["rows_changed"]), 20, "{done}");
    assert_unchanged(
        &before,
        &rows_of(&db, &table).await,
        "the rows did not roll back",
    );
    let lines = std::fs::read_to_string(&seen).expect("the program wrote its file");
    assert_eq!(
        lines.lines().count(),
        20,
        "the program saw every row: {lines}"
    );
}

/// `--restart` and `--metrics` mean nothing in a dry run: refused (exit 2) with why, before
/// anything runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_that_mean_nothing_in_a_dry_run_are_refused() {
    let db = own_db(Backend::Sqlite).await;
    let table = db.table("counters");
    db.counter_table(&table, 1..=10).await;
    let plan = db.step_plan(
        &table,
        "",
        &format!(
            "name = \"bump\"\ntable = \"{table}\"\nkey = \"id\"\n\
             sql = \"UPDATE {table} SET hits = 1 WHERE id BETWEEN :start AND :end\""
        ),
    );
    for (flag, why) in [
        (vec!["--restart"], "forgets a run's stored progress"),
        (vec!["--metrics", "127.0.0.1:0"], "a dry run commits none"),
    ] {
        let mut args = vec!["run", path_str(&plan), "--dry-run"];
        args.extend(flag.iter().copied());
        let out = run_cmd(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag:?}: {stderr}");
        assert!(
            stderr.contains(flag[0]) && stderr.contains(why),
            "{flag:?}: {stderr}"
        );
    }
    assert_eq!(
        db.scalar(&format!("SELECT SUM(hits) FROM {table}")).await,
        0
    );
    assert_eq!(
        state_tables(&db).await,
        Vec::<String>::new(),
        "a refused dry run created state tables"
    );
}

/// `--max-duration` (or a signal) stops a dry run with steps left: exit 75, the counts so far,
/// and nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_duration_stops_it_with_partial_counts() {
    let db = own_db(Backend::Postgres).await;
    let table = db.table("counters");
    db.counter_table(&table, 1..=100).await;
    // Each batch sleeps 50 ms: 100 batches one at a time take 5 s at least.
    let plan = db.step_plan(
        &table,
        "batch_size = 1\nadaptive = false",
        &format!(
            "name = \"slow\"\ntable = \"{table}\"\nkey = \"id\"\n\
             sql = \"UPDATE {table} SET hits = hits + 1 WHERE id BETWEEN :start AND :end \
             AND (SELECT pg_sleep(0.05)) IS NOT NULL\""
        ),
    );
    let before = rows_of(&db, &table).await;
    let out = run_cmd(&[
        "run",
        path_str(&plan),
        "--dry-run",
        "--json",
        "--concurrency",
        "1",
        "--max-duration",
        "1s",
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(75), "{stdout}{}", text(&out.stderr));
    let done: Json = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no JSON ({e}): {stdout}"));
    assert_eq!(done["outcome"], "stopped", "{done}");
    let slow = step(&done, "slow");
    assert_eq!(slow["state"], "stopped", "{slow}");
    let batches = count(&slow["batches"]);
    assert!((1..100).contains(&batches), "{slow}");
    assert_eq!(count(&slow["rows_changed"]), batches, "{slow}");
    assert_unchanged(
        &before,
        &rows_of(&db, &table).await,
        "the dry run changed rows",
    );
}

/// A row a transform refuses with `on_row_error = "fail"` fails the dry run as it would fail
/// the run, naming the row's key and its batch's range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_a_transform_refuses_fails_it() {
    let db = own_db(Backend::Sqlite).await;
    let table = db.table("counters");
    db.counter_table(&table, 1..=30).await;
    let plan = db.step_plan(
        &table,
        "batch_size = 10\nadaptive = false",
        &format!(
            "name = \"lua\"\ntable = \"{table}\"\nkey = \"id\"\ncolumns = [\"hits\"]\n\
             lua = '''\nfunction transform(row)\n  if row.id == 17 then error(\"cannot count 17\") end\n  \
             return {{ hits = row.hits + 1 }}\nend\n'''"
        ),
    );
    let before = rows_of(&db, &table).await;
    let (code, done, stderr) = dry_run(&plan);
    assert_eq!(code, Some(1), "{done}\n{stderr}");
    assert!(
        stderr.contains("step \"lua\", keys 11..=20")
            && stderr.contains("the row with key 17")
            && stderr.contains("cannot count 17"),
        "{stderr}"
    );
    assert_unchanged(
        &before,
        &rows_of(&db, &table).await,
        "the dry run changed rows",
    );
}
