//! Row transforms (`lua`, `lua_file`, `command`) end to end, through the real binary, on each
//! database: what a user checks after `godwit run` (the rows, `status`, `dead-letters`), what
//! survives `kill -9`, concurrent application writes, and what is refused before anything runs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    db_for, dead_letters_by_key, id_type, insert, isolated_db, path_str, runs_stored, spawn,
    spawn_watched_cmd, status_json, text, Backend, KillOnDrop, TestDb,
};
use godwit_driver::Value;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// --- helpers ----------------------------------------------------------------------------------

/// What one finished godwit command printed.
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Runs godwit with `args` to its end; fails the test (killing it) after `limit`.
fn gw_within(args: &[&str], limit: Duration) -> Out {
    let mut cmd = common::godwit();
    cmd.args(args);
    gw_cmd(cmd, limit)
}

/// Runs godwit with `args` to its end, within 90 s.
fn gw(args: &[&str]) -> Out {
    gw_within(args, Duration::from_secs(90))
}

fn gw_cmd(cmd: Command, limit: Duration) -> Out {
    let started = Instant::now();
    let mut watched = KillOnDrop(spawn_watched_cmd(cmd));
    let code = watched.finish(limit);
    Out {
        code,
        stdout: watched.stdout_lines.join("\n"),
        stderr: watched.stderr_text(),
        took: started.elapsed(),
    }
}

/// Waits for a child without blocking the test's runtime (writers run on it meanwhile).
async fn wait_exit(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            panic!(
                "godwit did not exit within {limit:?}; stderr: {}",
                text(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.wait_with_output().expect("wait")
}

/// Writes `file` into the test's directory: a plan named `name` on `db` with `[defaults]`
/// and one step (its TOML body, `name` included).
fn write_plan(db: &TestDb, file: &str, name: &str, defaults: &str, step: &str) -> PathBuf {
    db.plan(
        file,
        &format!(
            "name = \"{name}\"\ndatabase = \"{}\"\n\n[defaults]\n{defaults}\n\n[[steps]]\n{step}\n",
            db.url
        ),
    )
}

/// The 1-based line of `file` holding `needle`, for checking the lines messages name.
fn line_of(file: &Path, needle: &str) -> usize {
    let text = std::fs::read_to_string(file).expect("read plan");
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line holds {needle:?} in {text}"))
        + 1
}

/// A value as text, `None` for NULL.
fn cell(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::Int(n) => Some(n.to_string()),
        Value::Text(s) | Value::Decimal(s) => Some(s.clone()),
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        other => Some(format!("{other:?}")),
    }
}

/// The result of `sql`, every value as its text (`None` for NULL), for comparing tables.
async fn snapshot(db: &TestDb, sql: &str) -> Vec<Vec<Option<String>>> {
    db.query(sql)
        .await
        .iter()
        .map(|row| row.iter().map(cell).collect())
        .collect()
}

/// A text value as an SQL literal.
fn sql_text(v: &Option<String>) -> String {
    match v {
        Some(s) => format!("'{}'", s.replace('\'', "''")),
        None => "NULL".into(),
    }
}

/// Creates `table (id, log)` with `rows` rows and an empty `log`: each transform appends a
/// letter, so the letters count how often each row was changed.
async fn log_table(db: &TestDb, table: &str, rows: i64) {
    db.exec(&format!(
        "CREATE TABLE {table} (id {} PRIMARY KEY, log VARCHAR(4000) NOT NULL DEFAULT '')",
        id_type(db.backend)
    ))
    .await;
    let values: Vec<String> = (1..=rows).map(|i| format!("({i}, '')")).collect();
    insert(db, table, "id, log", &values).await;
}

/// A Lua step appending "T" to `log`, after about `spin` loop turns of busy work; with
/// `refuse_every`, the rows whose key it divides raise an error instead.
fn append_t_step(table: &str, spin: u32, refuse_every: Option<i64>) -> String {
    let refuse = refuse_every
        .map(|n| format!("if row.id % {n} == 0 then error(\"refused\") end\n  "))
        .unwrap_or_default();
    format!(
        "name = \"append\"\ntable = \"{table}\"\nkey = \"id\"\ncolumns = [\"log\"]\nlua = '''\n\
         function transform(row)\n  local x = 0\n  for i = 1, {spin} do x = x + i end\n  \
         {refuse}return {{log = row.log .. \"T\"}}\nend\n'''"
    )
}

// --- the 2018 Vietnamese renumbering, computed independently of godwit -----------------------

/// The demo's table of prefix changes: data, not the code under test (that is the example
/// plans' SQL, Lua and Python).
const RULES: [(&str, &str); 21] = godwit::demo::PREFIXES;

/// An 11-digit prefix no rule knows.
const UNKNOWN_PREFIXES: [&str; 5] = ["0170", "0111", "0160", "0190", "0999"];

/// The new number for an old 11-digit one, `None` when no rule applies.
fn renumbered(phone: &str) -> Option<String> {
    if phone.len() != 11 || !phone.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    RULES
        .iter()
        .find(|(old, _)| phone.starts_with(old))
        .map(|(_, new)| format!("{new}{}", &phone[4..]))
}

/// `n` random decimal digits.
fn digits(rng: &mut StdRng, n: usize) -> String {
    (0..n)
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect()
}

/// A phone column's value: mostly old numbers the rules know, then 11-digit numbers with
/// unknown prefixes, new 10-digit numbers, 12-digit international ones and NULLs.
fn generated_phone(rng: &mut StdRng) -> Option<String> {
    Some(match rng.random_range(0..100) {
        0..=59 => {
            let (old, _) = RULES[rng.random_range(0..RULES.len())];
            format!("{old}{}", digits(rng, 7))
        }
        60..=74 => {
            let old = UNKNOWN_PREFIXES[rng.random_range(0..UNKNOWN_PREFIXES.len())];
            format!("{old}{}", digits(rng, 7))
        }
        75..=89 => format!("09{}", digits(rng, 8)),
        90..=95 => format!("84{}", digits(rng, 10)),
        _ => return None,
    })
}

/// The repository's `examples/` directory.
fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

// --- 1. Lua phone rewrite ----------------------------------------------------------------------

/// The example's `phones.lua` through `lua_file`: every row ends as the rules say (computed
/// here, not by godwit), rows outside `where` or without a rule are untouched, and `status`
/// counts the rows matching `where`.
async fn lua_rewrites_phones_as_the_rules_say(backend: Backend) {
    let db = db_for(backend).await;
    let table = db.table("customers");
    let seed: u64 = rand::random();
    let mut rng = StdRng::seed_from_u64(seed);
    db.exec(&format!(
        "CREATE TABLE {table} (id {} PRIMARY KEY, name VARCHAR(40) NOT NULL, phone VARCHAR(20))",
        id_type(backend)
    ))
    .await;
    let rows: Vec<(i64, Option<String>)> = (1..=3000)
        .map(|i| (i * 3 + 7, generated_phone(&mut rng)))
        .collect();
    let values: Vec<String> = rows
        .iter()
        .map(|(id, phone)| format!("({id}, 'name {id}', {})", sql_text(phone)))
        .collect();
    insert(&db, &table, "id, name, phone", &values).await;
    let expected: Vec<Vec<Option<String>>> = rows
        .iter()
        .map(|(id, phone)| {
            let new = phone.as_deref().and_then(renumbered).or(phone.clone());
            vec![Some(id.to_string()), Some(format!("name {id}")), new]
        })
        .collect();
    let matching = rows
        .iter()
        .filter(|(_, p)| p.as_ref().is_some_and(|p| p.len() == 11))
        .count();

    std::fs::create_dir_all(db.dir.path().join("transforms")).expect("mkdir");
    std::fs::copy(
        examples_dir().join("transforms/phones.lua"),
        db.dir.path().join("transforms/phones.lua"),
    )
    .expect("copy phones.lua");
    let plan = write_plan(
        &db,
        "plan.toml",
        &table,
        "batch_size = 250",
        &format!(
            "name = \"rewrite-phones\"\ntable = \"{table}\"\nkey = \"id\"\ncolumns = [\"phone\"]\n\
             where = \"length(phone) = 11\"\nlua_file = \"transforms/phones.lua\""
        ),
    );
    let out = gw(&["run", path_str(&plan), "--concurrency", "3", "--quiet"]);
    assert_eq!(out.code, Some(0), "seed {seed}: {}", out.stderr);

    let after = snapshot(
        &db,
        &format!("SELECT id, name, phone FROM {table} ORDER BY id"),
    )
    .await;
    let wrong: Vec<_> = after
        .iter()
        .zip(&expected)
        .filter(|(a, e)| a != e)
        .take(5)
        .collect();
    assert!(
        wrong.is_empty() && after.len() == expected.len(),
        "seed {seed}: rows differ from the rules (got, expected): {wrong:?}"
    );
    let status = status_json(&plan);
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["steps"][0]["rows_done"], matching as i64, "{status}");
    assert_eq!(status["steps"][0]["rows_skipped"], 0, "{status}");
}

// --- 2. No lost update -------------------------------------------------------------------------

/// While a slow transform appends "T" to every row, writers append "A" to random rows on
/// their own connections: no write of either side is lost, with either `locking`.
async fn concurrent_writes_are_never_lost(backend: Backend, locking: &str) {
    const ROWS: i64 = 2000;
    let db = db_for(backend).await;
    let table = db.table("log");
    log_table(&db, &table, ROWS).await;
    // About a millisecond of Lua per row: with `locking = "rows"` a batch holds its 100 rows'
    // locks a while; optimistic, the writers change rows between a batch's read and its write.
    let plan = write_plan(
        &db,
        "plan.toml",
        &table,
        &format!("batch_size = 100\nlocking = \"{locking}\""),
        &append_t_step(&table, 40_000, None),
    );
    let append = match backend {
        Backend::MySql => format!("UPDATE {table} SET log = CONCAT(log, 'A') WHERE id = ?"),
        _ => format!("UPDATE {table} SET log = log || 'A' WHERE id = $1"),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for _ in 0..3 {
        let mut conn = db.conn().await;
        let (stop, append) = (stop.clone(), append.clone());
        writers.push(tokio::spawn(async move {
            let mut rng = StdRng::from_os_rng();
            let mut committed = vec![0usize; ROWS as usize + 1];
            let mut slowest = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                let id = rng.random_range(1..=ROWS);
                let started = Instant::now();
                let n = conn
                    .execute(&append, &[Value::Int(id)])
                    .await
                    .unwrap_or_else(|e| panic!("writer on row {id}: {e}"));
                assert_eq!(n, 1, "writer on row {id}");
                committed[id as usize] += 1;
                slowest = slowest.max(started.elapsed());
            }
            (committed, slowest)
        }));
    }
    let mut run = common::godwit();
    run.args(["run", path_str(&plan), "--concurrency", "3", "--quiet"])
        .env("RUST_LOG", "godwit_sched=debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = run.spawn().expect("spawn godwit");
    let out = wait_exit(child, Duration::from_secs(60)).await;
    stop.store(true, Ordering::Relaxed);
    let mut committed = vec![0usize; ROWS as usize + 1];
    let mut slowest = Duration::ZERO;
    for w in writers {
        let (counts, slow) = w.await.expect("writer");
        for (total, n) in committed.iter_mut().zip(counts) {
            *total += n;
        }
        slowest = slowest.max(slow);
    }
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let rows = db
        .query(&format!("SELECT id, log FROM {table} ORDER BY id"))
        .await;
    assert_eq!(rows.len(), ROWS as usize);
    let mut wrong = Vec::new();
    let (mut a_before_t, mut a_after_t) = (0, 0);
    for row in &rows {
        let id = row[0].as_i64().expect("id") as usize;
        let log = cell(&row[1]).unwrap_or_default();
        let ts = log.matches('T').count();
        let as_ = log.matches('A').count();
        if ts != 1 || as_ != committed[id] {
            wrong.push(format!(
                "row {id}: {log:?}, the writers committed {} A",
                committed[id]
            ));
        }
        if let Some(t) = log.find('T') {
            a_before_t += usize::from(log[..t].contains('A'));
            a_after_t += usize::from(log[t..].contains('A'));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} rows lost a write, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    // The writes overlapped the run (rows written before and after their batch), and some
    // waited for a batch's row locks: the test exercised what it claims to.
    let total: usize = committed.iter().sum();
    assert!(
        a_before_t > 0 && a_after_t > 0,
        "the writers ({total} writes) did not overlap the run: {a_before_t} rows written before their batch, {a_after_t} after"
    );
    if locking == "rows" {
        assert!(
            slowest >= Duration::from_millis(20),
            "no write waited for a batch's locks (slowest {slowest:?} of {total})"
        );
    } else {
        assert!(
            text(&out.stderr).contains("rows_redone"),
            "no batch found a row changed since it read it ({total} writes)"
        );
    }
}

// --- 3. kill -9 --------------------------------------------------------------------------------

/// Starts `godwit run PLAN` up to ten times and kills each with SIGKILL: every other round once
/// `progress` (a count of transformed rows) has grown, so that most kills land mid-transform,
/// the others at any moment (start-up and claims included). Fails unless at least three kills
/// interrupted a run at work before it was done. Returns the number of kills.
async fn kill_repeatedly(db: &TestDb, plan: &Path, progress: &str, rows: i64) -> usize {
    let mut rng = rand::rng();
    let mut seen = 0;
    let (mut kills, mut kills_mid_transform) = (0, 0);
    for round in 0..10 {
        let mut child = spawn(&["run", path_str(plan), "--concurrency", "3", "--quiet"]);
        let after_progress = round % 2 == 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut ended = false;
        if after_progress {
            loop {
                if child.try_wait().expect("try_wait").is_some() {
                    ended = true;
                    break;
                }
                let n = db.scalar(progress).await;
                if n > seen {
                    seen = n;
                    break;
                }
                assert!(Instant::now() < deadline, "no progress within 30 s");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        if !ended {
            let pause = if after_progress { 0..120 } else { 0..400 };
            tokio::time::sleep(Duration::from_millis(rng.random_range(pause))).await;
            ended = child.try_wait().expect("try_wait").is_some();
        }
        if ended {
            let out = child.wait_with_output().expect("wait");
            assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
            break;
        }
        child.kill().expect("kill -9");
        let _ = child.wait();
        kills += 1;
        kills_mid_transform += usize::from(after_progress);
    }
    // The kills must have interrupted a run at work, or the test proved nothing.
    assert!(
        kills_mid_transform >= 3 && seen < rows,
        "only {kills_mid_transform} kills after progress ({kills} in all, {seen} rows done): \
         the run finished too soon to be interrupted"
    );
    kills
}

/// `godwit run` killed with SIGKILL at random moments during a transform, then run to the end:
/// every row is transformed exactly once, and every refused row has exactly one dead letter.
async fn exactly_once_across_kill_9(backend: Backend) {
    const ROWS: i64 = 6000;
    const REFUSE_EVERY: i64 = 250;
    let db = db_for(backend).await;
    let table = db.table("killed");
    log_table(&db, &table, ROWS).await;
    common::slow_writes(
        &db,
        &table,
        common::RowCost {
            mysql_sleep: "0.0005",
            sqlite_spin: 100,
        },
    )
    .await;
    let plan = write_plan(
        &db,
        "plan.toml",
        &table,
        "batch_size = 100\nlease = \"1s\"\non_row_error = \"skip\"",
        &append_t_step(&table, 20_000, Some(REFUSE_EVERY)),
    );
    let transformed = format!("SELECT COUNT(*) FROM {table} WHERE log <> ''");
    let kills = kill_repeatedly(&db, &plan, &transformed, ROWS).await;
    let out = gw(&["run", path_str(&plan), "--quiet"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let refused = ROWS / REFUSE_EVERY;
    let wrong = db
        .query(&format!(
            "SELECT id, log FROM {table} \
             WHERE log <> CASE WHEN id % {REFUSE_EVERY} = 0 THEN '' ELSE 'T' END \
             ORDER BY id LIMIT 5"
        ))
        .await;
    assert!(
        wrong.is_empty(),
        "after {kills} kills, rows not transformed exactly once: {wrong:?}"
    );
    assert_eq!(
        db.scalar(&format!("SELECT COUNT(*) FROM {table}")).await,
        ROWS
    );
    let status = status_json(&plan);
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["steps"][0]["rows_done"], ROWS, "{status}");
    assert_eq!(status["steps"][0]["rows_skipped"], refused, "{status}");
    let out = gw(&["dead-letters", path_str(&plan), "--json"]);
    let mut keys: Vec<i64> = out
        .stdout
        .lines()
        .map(|l| {
            let letter: serde_json::Value = serde_json::from_str(l).expect("JSON line");
            letter["key"]
                .as_str()
                .expect("key")
                .parse()
                .expect("numeric key")
        })
        .collect();
    keys.sort();
    let expected: Vec<i64> = (1..=refused).map(|i| i * REFUSE_EVERY).collect();
    assert_eq!(keys, expected, "dead letters after {kills} kills");
}

/// The same with a transform program: killed with godwit at random moments, then run to the
/// end, every row is changed exactly once, and no program outlives the godwit that started it.
async fn command_exactly_once_across_kill_9(backend: Backend) {
    const ROWS: i64 = 2000;
    let db = db_for(backend).await;
    let table = db.table("cmdkilled");
    log_table(&db, &table, ROWS).await;
    let pids = db.dir.path().join("pids");
    program(
        &db,
        "append.py",
        &format!(
            r#"import json, os, sys, time
with open({pids:?}, "a") as f:
    f.write(f"{{os.getpid()}}\n")
for line in sys.stdin:
    row = json.loads(line)
    time.sleep(0.001)
    print(json.dumps({{"log": row["log"] + "T"}}))
"#,
            pids = path_str(&pids)
        ),
    );
    let plan = write_plan(
        &db,
        "plan.toml",
        &table,
        "batch_size = 100\nlease = \"1s\"",
        &format!(
            "name = \"append\"\ntable = \"{table}\"\nkey = \"id\"\ncolumns = [\"log\"]\n\
             command = [\"python3\", \"append.py\"]"
        ),
    );
    let progress = format!("SELECT COUNT(*) FROM {table} WHERE log <> ''");
    let kills = kill_repeatedly(&db, &plan, &progress, ROWS).await;
    let out = gw(&["run", path_str(&plan), "--quiet"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let wrong = db
        .query(&format!(
            "SELECT id, log FROM {table} WHERE log <> 'T' ORDER BY id LIMIT 5"
        ))
        .await;
    assert!(
        wrong.is_empty(),
        "after {kills} kills, rows not transformed exactly once: {wrong:?}"
    );
    let status = status_json(&plan);
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["steps"][0]["rows_done"], ROWS, "{status}");
    let pids: Vec<u32> = std::fs::read_to_string(&pids)
        .expect("the program ran")
        .lines()
        .map(|l| l.parse().expect("pid"))
        .collect();
    common::poll_until(
        "every transform program to end",
        Duration::from_secs(10),
        async || pids.iter().all(|p| gone(*p)),
    )
    .await;
}

// --- 4. on_row_error ---------------------------------------------------------------------------

/// A Lua step writing `note` from `phone`, raising an error for every 97th key.
fn bad_rows_step(table: &str) -> String {
    format!(
        "name = \"tag-rows\"\ntable = \"{table}\"\nkey = \"id\"\ncolumns = [\"phone\"]\nlua = '''\n\
         function transform(row)\n  if row.id % 97 == 0 then\n    error(\"no rule for \" .. row.phone)\n  end\n  \
         return {{note = \"ok \" .. row.phone}}\nend\n'''"
    )
}

/// Creates `table (id, phone, note)` with keys 1..=`rows`, old numbers and no note.
async fn phone_table(db: &TestDb, table: &str, rows: i64) {
    db.exec(&format!(
        "CREATE TABLE {table} (id {} PRIMARY KEY, phone VARCHAR(20) NOT NULL, note VARCHAR(40))",
        id_type(db.backend)
    ))
    .await;
    let values: Vec<String> = (1..=rows)
        .map(|i| format!("({i}, '0162{i:07}', NULL)"))
        .collect();
    insert(db, table, "id, phone, note", &values).await;
}

/// The key range `keys A..=B` a failure message names.
fn failed_range(stderr: &str) -> (i64, i64) {
    let at = stderr
        .find("keys ")
        .unwrap_or_else(|| panic!("no key range in {stderr}"));
    let rest = &stderr[at + 5..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '=' || c == '-'))
        .unwrap_or(rest.len());
    let (a, b) = rest[..end]
        .split_once("..=")
        .unwrap_or_else(|| panic!("no range in {stderr}"));
    (a.parse().expect("start"), b.parse().expect("end"))
}

/// `on_row_error = "fail"`: exit 1 naming the step, the row's key and the script's line;
/// nothing of the failing batch is written.
async fn a_bad_row_fails_the_run(backend: Backend) {
    let db = db_for(backend).await;
    let table = db.table("fail");
    phone_table(&db, &table, 300).await;
    let plan = write_plan(
        &db,
        "fail.toml",
        &table,
        "batch_size = 50\non_row_error = \"fail\"",
        &bad_rows_step(&table),
    );
    let line = line_of(&plan, "error(\"no rule");
    let out = gw(&["run", path_str(&plan), "--concurrency", "1"]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let wanted = [
        "step \"tag-rows\"".to_string(),
        "key 97".to_string(),
        format!("{}:{line}: no rule for 01620000097", plan.display()),
    ];
    for w in &wanted {
        assert!(
            out.stderr.contains(w.as_str()),
            "no {w:?} in {}",
            out.stderr
        );
    }
    let (start, end) = failed_range(&out.stderr);
    assert!(start <= 97 && 97 <= end, "{}", out.stderr);
    let written = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM {table} WHERE id BETWEEN {start} AND {end} AND note IS NOT NULL"
        ))
        .await;
    assert_eq!(
        written, 0,
        "rows of the failed batch {start}..={end} were written"
    );
    // The batches before it are done: the run really ran.
    let done = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM {table} WHERE id < {start} AND note LIKE 'ok 0162%'"
        ))
        .await;
    assert_eq!(done, start - 1);
    let status = status_json(&plan);
    assert_eq!(status["state"], "failed", "{status}");
}

/// `on_row_error = "skip"`: the run ends, bad rows stay as they were, and `status` and
/// `dead-letters` tell which rows and why, once each, however often the plan is run.
async fn bad_rows_are_skipped_into_dead_letters(backend: Backend) {
    let db = db_for(backend).await;
    let table = db.table("skip");
    phone_table(&db, &table, 600).await;
    let plan = write_plan(
        &db,
        "skip.toml",
        &table,
        "batch_size = 50\non_row_error = \"skip\"",
        &bad_rows_step(&table),
    );
    let line = line_of(&plan, "error(\"no rule");
    let bad: Vec<i64> = (1..=600).filter(|i| i % 97 == 0).collect();
    let out = gw(&["run", path_str(&plan), "--concurrency", "3"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let rows = db
        .query(&format!("SELECT id, phone, note FROM {table} ORDER BY id"))
        .await;
    for row in &rows {
        let id = row[0].as_i64().expect("id");
        let (phone, note) = (cell(&row[1]).expect("phone"), cell(&row[2]));
        let expected = (!bad.contains(&id)).then(|| format!("ok {phone}"));
        assert_eq!(note, expected, "row {id}");
    }

    let check_letters = |when: &str| {
        let status = status_json(&plan);
        assert_eq!(status["state"], "done", "{when}: {status}");
        assert_eq!(status["steps"][0]["rows_done"], 600, "{when}: {status}");
        assert_eq!(
            status["steps"][0]["rows_skipped"],
            bad.len(),
            "{when}: {status}"
        );
        let out = gw(&["dead-letters", path_str(&plan), "--json"]);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        let letters: Vec<serde_json::Value> = out
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        let mut keys: Vec<i64> = letters
            .iter()
            .map(|l| {
                l["key"]
                    .as_str()
                    .expect("key")
                    .parse()
                    .expect("numeric key")
            })
            .collect();
        keys.sort();
        assert_eq!(keys, bad, "{when}: {}", out.stdout);
        for l in &letters {
            let key: i64 = l["key"].as_str().expect("key").parse().expect("key");
            let phone = format!("0162{key:07}");
            assert_eq!(l["step"], "tag-rows", "{l}");
            assert_eq!(
                l["error"],
                format!("{}:{line}: no rule for {phone}", plan.display()),
                "{l}"
            );
            assert_eq!(
                l["row"],
                serde_json::json!({"id": key, "phone": phone}),
                "{l}"
            );
            assert!(l["batch"].is_number() && l["created_ms"].is_number(), "{l}");
        }
    };
    check_letters("first run");

    let out = gw(&["dead-letters", path_str(&plan)]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for key in &bad {
        let shown = format!("key {key} ");
        assert!(
            out.stdout.contains(&shown),
            "no {shown:?} in {}",
            out.stdout
        );
        let error = format!("no rule for 0162{key:07}");
        assert!(
            out.stdout.contains(&error),
            "no {error:?} in {}",
            out.stdout
        );
    }
    let out = gw(&[
        "dead-letters",
        path_str(&plan),
        "--json",
        "--step",
        "tag-rows",
        "--limit",
        "2",
    ]);
    assert_eq!(out.stdout.lines().count(), 2, "{}", out.stdout);

    // A done plan run again, and run over from the start: still one letter per bad row.
    let out = gw(&["run", path_str(&plan)]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    check_letters("second run");
    let out = gw(&["run", path_str(&plan), "--restart"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    check_letters("run with --restart");
}

// --- 5. Command transforms ---------------------------------------------------------------------

/// Three identical SQLite copies of one generated customers table (the demo's schema), through
/// the example plans: SQL, Lua and Python give the same rows, the rows the rules say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_plans_sql_lua_and_python_agree() {
    let seed: u64 = rand::random();
    let mut rng = StdRng::seed_from_u64(seed);
    let rows: Vec<(i64, String)> = (1..=3000)
        .map(|i| (i, generated_phone(&mut rng).unwrap_or_default()))
        .collect();
    let values: Vec<String> = rows
        .iter()
        .map(|(id, phone)| format!("({id}, 'customer {id}', '{phone}')"))
        .collect();
    let expected: Vec<Vec<Option<String>>> = rows
        .iter()
        .map(|(id, phone)| {
            vec![
                Some(id.to_string()),
                Some(format!("customer {id}")),
                Some(renumbered(phone).unwrap_or(phone.clone())),
            ]
        })
        .collect();
    let mut results = Vec::new();
    for plan in [
        "vn-phones.toml",
        "vn-phones-lua.toml",
        "vn-phones-python.toml",
    ] {
        let db = TestDb::new(Backend::Sqlite).await;
        db.exec("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, phone TEXT NOT NULL)")
            .await;
        insert(&db, "customers", "id, name, phone", &values).await;
        let path = examples_dir().join(plan);
        let mut cmd = common::godwit();
        cmd.args(["run", path_str(&path), "--quiet"])
            .env("DEMO_DATABASE_URL", &db.url);
        let out = gw_cmd(cmd, Duration::from_secs(60));
        assert_eq!(out.code, Some(0), "{plan}: {}", out.stderr);
        let after = snapshot(&db, "SELECT id, name, phone FROM customers ORDER BY id").await;
        let wrong: Vec<_> = after
            .iter()
            .zip(&expected)
            .filter(|(a, e)| a != e)
            .take(5)
            .collect();
        assert!(
            wrong.is_empty() && after.len() == expected.len(),
            "seed {seed}: {plan} differs from the rules (got, expected): {wrong:?}"
        );
        let mut cmd = common::godwit();
        cmd.args(["status", path_str(&path), "--json"])
            .env("DEMO_DATABASE_URL", &db.url);
        let out = gw_cmd(cmd, Duration::from_secs(30));
        let status: serde_json::Value = serde_json::from_str(&out.stdout).expect("status JSON");
        assert_eq!(status["state"], "done", "{plan}: {status}");
        results.push(after);
    }
    assert!(results.windows(2).all(|w| w[0] == w[1]));
}

/// An 11-character number with a separator ("0162-123456", only ten digits) is the same row to
/// the three example plans that claim to be one migration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_plans_agree_on_numbers_with_separators() {
    let values = "(1, 'a', '0162-123456'), (2, 'b', '0162 123456'), (3, 'c', '01621234567')";
    let mut results = Vec::new();
    for plan in [
        "vn-phones.toml",
        "vn-phones-lua.toml",
        "vn-phones-python.toml",
    ] {
        let db = TestDb::new(Backend::Sqlite).await;
        db.exec("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, phone TEXT NOT NULL)")
            .await;
        db.exec(&format!(
            "INSERT INTO customers (id, name, phone) VALUES {values}"
        ))
        .await;
        let mut cmd = common::godwit();
        cmd.args(["run", path_str(&examples_dir().join(plan)), "--quiet"])
            .env("DEMO_DATABASE_URL", &db.url);
        let out = gw_cmd(cmd, Duration::from_secs(60));
        assert_eq!(out.code, Some(0), "{plan}: {}", out.stderr);
        results.push((
            plan,
            snapshot(&db, "SELECT id, phone FROM customers ORDER BY id").await,
        ));
    }
    assert!(results.windows(2).all(|w| w[0].1 == w[1].1), "{results:?}");
}

/// Writes `name` (a Python transform program) into the test's directory.
fn program(db: &TestDb, name: &str, body: &str) -> PathBuf {
    let path = db.dir.path().join(name);
    std::fs::write(&path, body).expect("write program");
    path
}

/// A program that crashes on one row fails the run after `max_attempts`, and the message
/// carries what the program said on stderr; nothing of that batch is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_program_fails_after_max_attempts() {
    let db = TestDb::new(Backend::Sqlite).await;
    let table = db.table("crash");
    phone_table(&db, &table, 200).await;
    program(
        &db,
        "crash.py",
        r#"import json, sys
for line in sys.stdin:
    row = json.loads(line)
    if row["id"] == 42:
        sys.stderr.write("crash.py: cannot make sense of the row with id 42\n")
        sys.exit(3)
    print(json.dumps({"note": "seen"}))
"#,
    );
    let plan = write_plan(
        &db,
        "plan.toml",
        &table,
        "batch_size = 50\nmax_attempts = 2",
        &format!(
            "name = \"py\"\ntable = \"{table}\"\nkey = \"id\"\ncommand = [\"python3\", \"crash.py\"]"
        ),
    );
    let out = gw(&["run", path_str(&plan), "--concurrency", "1"]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    for wanted in [
        "step \"py\"",
        "keys 1..=50",
        "attempt 2/2",
        "crash.py: cannot make sense of the row with id 42",
    ] {
        assert!(
            out.stderr.contains(wanted),
            "no {wanted:?} in {}",
            out.stderr
        );
    }
    let written = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM {table} WHERE id <= 50 AND note IS NOT NULL"
        ))
        .await;
    assert_eq!(written, 0);
}

/// Whether the process `pid` has ended.
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie has ended; only its exit status waits to be collected.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// A program that stops answering is killed after `row_timeout`: the run fails within a
/// bounded time, naming `row_timeout`, and no program is left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_program_is_killed_after_row_timeout() {
    let db = TestDb::new(Backend::Sqlite).await;
    let table = db.table("hang");
    phone_table(&db, &table, 200).await;
    let pids = db.dir.path().join("pids");
    program(
        &db,
        "hang.py",
        &format!(
            r#"import json, os, sys, time
with open({pids:?}, "a") as f:
    f.write(f"{{os.getpid()}}\n")
for line in sys.stdin:
    row = json.loads(line)
    if row["id"] == 42:
        time.sleep(3600)
    print(json.dumps({{"note": "seen"}}))
"#,
            pids = path_str(&pids)
        ),
    );
    let plan = write_plan(
        &db,
        "plan.toml",
        &table,
        "batch_size = 50\nmax_attempts = 2\nrow_timeout = \"500ms\"",
        &format!(
            "name = \"py\"\ntable = \"{table}\"\nkey = \"id\"\ncommand = [\"python3\", \"hang.py\"]"
        ),
    );
    let out = gw_within(
        &["run", path_str(&plan), "--concurrency", "1"],
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("row_timeout") && out.stderr.contains("key 42"),
        "{}",
        out.stderr
    );
    // Two attempts of 500 ms and one backoff: far from the hour the program sleeps.
    assert!(out.took < Duration::from_secs(20), "took {:?}", out.took);
    let pids: Vec<u32> = std::fs::read_to_string(&pids)
        .expect("the program ran")
        .lines()
        .map(|l| l.parse().expect("pid"))
        .collect();
    assert!(!pids.is_empty());
    common::poll_until(
        "the hung programs to end",
        Duration::from_secs(10),
        async || pids.iter().all(|p| gone(*p)),
    )
    .await;
}

// --- 6. Refusals before anything runs ----------------------------------------------------------

/// Plans whose script cannot run are refused by `run` (exit 2, nothing changed, no run stored)
/// and by `check`, with the place to fix.
async fn broken_scripts_are_refused_before_anything_runs(backend: Backend) {
    let db = db_for(backend).await;
    let table = db.table("refused");
    phone_table(&db, &table, 50).await;
    let before = snapshot(&db, &format!("SELECT * FROM {table} ORDER BY id")).await;
    let step = |columns: &str, lua: &str| {
        format!(
            "name = \"s\"\ntable = \"{table}\"\nkey = \"id\"\ncolumns = {columns}\nlua = '''\n{lua}\n'''"
        )
    };
    let cases = [
        (
            "syntax",
            step(
                "[\"phone\"]",
                "function transform(row)\n  return {phone = }\nend",
            ),
            "return {phone = }",
        ),
        (
            "column",
            step(
                "[\"phone\", \"no_such_col\"]",
                "function transform(row)\n  return nil\nend",
            ),
            "columns = ",
        ),
        (
            "nofunction",
            step("[\"phone\"]", "function transfrom(row)\n  return nil\nend"),
            "",
        ),
    ];
    for (case, step, marker) in &cases {
        let name = format!("{table}_{case}");
        let plan = write_plan(&db, &format!("{case}.toml"), &name, "", step);
        let wanted = match *case {
            "syntax" => format!(
                "{}:{}: unexpected symbol",
                plan.display(),
                line_of(&plan, marker)
            ),
            "column" => format!(
                "{}:{}:1: step \"s\": table {table} has no column no_such_col",
                plan.display(),
                line_of(&plan, marker)
            ),
            _ => "defines no function transform".to_string(),
        };
        let run = gw(&["run", path_str(&plan)]);
        assert_eq!(run.code, Some(2), "{case}: {}", run.stderr);
        assert!(
            run.stderr.contains(&wanted),
            "{case}: run: no {wanted:?} in {}",
            run.stderr
        );
        let check = gw(&["check", path_str(&plan)]);
        assert_eq!(
            check.code,
            Some(2),
            "{case}: {}{}",
            check.stdout,
            check.stderr
        );
        let said = format!("{}{}", check.stdout, check.stderr);
        assert!(
            said.contains(&wanted),
            "{case}: check: no {wanted:?} in {said}"
        );
        assert_eq!(runs_stored(&db, &name).await, 0, "{case}: a run was stored");
    }
    let after = snapshot(&db, &format!("SELECT * FROM {table} ORDER BY id")).await;
    assert_eq!(before, after);
}

/// A runaway script (an endless loop, or memory without end) fails the run within a bounded
/// time, naming the limit it hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_lua_is_stopped_by_its_limits() {
    let db = TestDb::new(Backend::Sqlite).await;
    let table = db.table("runaway");
    phone_table(&db, &table, 20).await;
    let cases = [
        (
            "loop",
            "row_timeout = \"300ms\"",
            "function transform(row)\n  while true do end\nend",
            "row_timeout (300ms)",
        ),
        (
            "memory",
            "lua_memory = \"16MiB\"",
            "function transform(row)\n  local t = {}\n  for i = 1, 1e9 do t[i] = string.rep(\"x\", 64) .. i end\nend",
            "lua_memory",
        ),
    ];
    for (case, defaults, lua, wanted) in cases {
        let plan = write_plan(
            &db,
            &format!("{case}.toml"),
            &format!("{table}_{case}"),
            defaults,
            &format!("name = \"s\"\ntable = \"{table}\"\nkey = \"id\"\nlua = '''\n{lua}\n'''"),
        );
        let out = gw_within(&["run", path_str(&plan)], Duration::from_secs(30));
        assert_eq!(out.code, Some(1), "{case}: {}", out.stderr);
        assert!(
            out.stderr.contains(wanted) && out.stderr.contains("key 1"),
            "{case}: no {wanted:?} in {}",
            out.stderr
        );
        assert!(
            out.took < Duration::from_secs(15),
            "{case}: took {:?}",
            out.took
        );
    }
}

/// Issue 11: a pattern the instruction hook cannot interrupt (one long call into
/// `string.find`) no longer holds the process: `run` fails the step and exits about a second
/// after `row_timeout`; SIGTERM stops a run stuck that way; the same pattern in the script's
/// top-level code fails `check` and `run` at the limit, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_a_runaway_pattern_does_not_hang_run_or_check() {
    let db = TestDb::new(Backend::Sqlite).await;
    let table = db.table("pattern");
    phone_table(&db, &table, 3).await;
    let pattern = r#"string.find(string.rep("a", 40), string.rep("a*", 40) .. "b")"#;
    let step = |lua: &str| {
        format!("name = \"s\"\ntable = \"{table}\"\nkey = \"id\"\nlua = '''\n{lua}\n'''")
    };

    let per_row = write_plan(
        &db,
        "row.toml",
        &format!("{table}_row"),
        "row_timeout = \"1s\"",
        &step(&format!(
            "function transform(row)\n  return {{note = tostring({pattern})}}\nend"
        )),
    );
    let out = gw_within(&["run", path_str(&per_row)], Duration::from_secs(30));
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("row_timeout (1s)") && out.stderr.contains("could not be stopped"),
        "{}",
        out.stderr
    );
    assert!(out.took < Duration::from_secs(8), "took {:?}", out.took);

    let at_load = write_plan(
        &db,
        "load.toml",
        &format!("{table}_load"),
        "row_timeout = \"1s\"",
        &step(&format!(
            "local found = {pattern}\nfunction transform(row) return nil end"
        )),
    );
    for command in ["check", "run"] {
        let out = gw_within(&[command, path_str(&at_load)], Duration::from_secs(30));
        // `check` lists its problems on stdout, `run` its error on stderr.
        let printed = format!("{}{}", out.stdout, out.stderr);
        assert_eq!(out.code, Some(2), "{command}: {printed}");
        assert!(
            printed.contains("row_timeout (1s) while loading"),
            "{command}: {printed}"
        );
        assert!(
            out.took < Duration::from_secs(8),
            "{command} took {:?}",
            out.took
        );
    }

    // A long limit: SIGTERM, not the limit, ends this run.
    let stuck = write_plan(
        &db,
        "term.toml",
        &format!("{table}_term"),
        "row_timeout = \"120s\"",
        &step(&format!(
            "function transform(row)\n  print(\"row started\")\n  return {{note = tostring({pattern})}}\nend"
        )),
    );
    let mut cmd = common::godwit();
    cmd.args(["run", "--grace", "1s", path_str(&stuck)]);
    let mut watched = KillOnDrop(spawn_watched_cmd(cmd));
    watched.wait_stderr("the row to start", Duration::from_secs(30), |l| {
        l.contains("row started")
    });
    let signalled = Instant::now();
    common::send_signal(watched.child.id(), "TERM");
    let code = watched.finish(Duration::from_secs(20));
    assert_eq!(code, Some(75), "{}", watched.stderr_text());
    assert!(
        signalled.elapsed() < Duration::from_secs(8),
        "SIGTERM took {:?}",
        signalled.elapsed()
    );
}

/// Issue 11: what a Lua transform writes into JSON and text columns follows one rule: a table
/// is written only when it is clearly a JSON array or object (else the row fails, naming the
/// column), a string for a JSON column is JSON text that must parse, a table for a text
/// column is written as its JSON text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_json_and_text_columns_take_what_lua_returns_by_one_rule_on_postgres() {
    let db = isolated_db(Backend::Postgres).await;
    let table = db.table("docs");
    db.exec(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, doc jsonb NOT NULL, note text)"
    ))
    .await;
    let values: Vec<String> = (1..=6)
        .map(|i| format!("({i}, '{{\"a\": 1}}', NULL)"))
        .collect();
    insert(&db, &table, "id, doc, note", &values).await;
    let lua = r#"
function transform(row)
  local d = row.doc
  if row.id == 1 then d.b = {1, 2} return {doc = d, note = {x = 1}} end
  if row.id == 2 then return {doc = '{"a": 2}'} end
  if row.id == 3 then d[1] = "first" return {doc = d} end
  if row.id == 4 then return {doc = {[1] = "a", [3] = "c"}} end
  if row.id == 5 then return {doc = "hello"} end
  return {doc = {}, note = godwit.json.array()}
end
"#;
    let plan = write_plan(
        &db,
        "plan.toml",
        &table,
        "on_row_error = \"skip\"",
        &format!("name = \"docs\"\ntable = \"{table}\"\nkey = \"id\"\nlua = '''{lua}'''"),
    );
    let out = gw(&["run", path_str(&plan)]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let rows = snapshot(
        &db,
        &format!("SELECT id, doc::text, note FROM {table} ORDER BY id"),
    )
    .await;
    let row = |id: &str, doc: &str, note: Option<&str>| {
        vec![
            Some(id.to_string()),
            Some(doc.to_string()),
            note.map(str::to_string),
        ]
    };
    assert_eq!(
        rows,
        vec![
            row("1", r#"{"a": 1, "b": [1, 2]}"#, Some(r#"{"x":1}"#)),
            row("2", r#"{"a": 2}"#, None),
            row("3", r#"{"a": 1}"#, None),
            row("4", r#"{"a": 1}"#, None),
            row("5", r#"{"a": 1}"#, None),
            row("6", "{}", Some("[]")),
        ]
    );
    let letters = dead_letters_by_key(&plan);
    assert_eq!(
        letters.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        [3, 4, 5],
        "{letters:?}"
    );
    for (key, error) in &letters {
        assert!(error.contains("column doc"), "key {key}: {error}");
    }
    assert!(
        letters[0].1.contains("both integer keys"),
        "{}",
        letters[0].1
    );
    assert!(
        letters[1].1.contains("not a JSON array"),
        "{}",
        letters[1].1
    );
    assert!(letters[2].1.contains("not JSON text"), "{}", letters[2].1);
}

/// Issue 11: a program's answer line is bounded by the step's `max_batch_bytes`; a longer
/// line fails the run naming the limit and the program.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_a_program_line_over_max_batch_bytes_fails_the_run() {
    let db = TestDb::new(Backend::Sqlite).await;
    let table = db.table("longline");
    phone_table(&db, &table, 3).await;
    let script = program(
        &db,
        "long.py",
        "import sys\nfor line in sys.stdin:\n    print('{\"note\": \"' + 'x' * (1 << 20) + '\"}')\n",
    );
    let plan = write_plan(
        &db,
        "plan.toml",
        &table,
        "max_batch_bytes = \"64KiB\"",
        &format!(
            "name = \"s\"\ntable = \"{table}\"\nkey = \"id\"\ncommand = [\"python3\", \"{}\"]",
            path_str(&script)
        ),
    );
    let out = gw(&["run", path_str(&plan)]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("longer than 65536 bytes (max_batch_bytes")
            && out.stderr.contains("long.py"),
        "{}",
        out.stderr
    );
}

/// The sandbox has no `os` or `io`: a script reaching for them fails its row, and the file it
/// tried to create does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lua_cannot_reach_the_system() {
    let db = TestDb::new(Backend::Sqlite).await;
    let table = db.table("sandbox");
    phone_table(&db, &table, 20).await;
    let touched = db.dir.path().join("touched");
    let opened = db.dir.path().join("opened");
    let cases = [
        (
            "os",
            format!("os.execute(\"touch {}\")", touched.display()),
            "global 'os'",
        ),
        (
            "io",
            format!(
                "local f = io.open(\"{}\", \"w\")\n  f:write(\"x\")\n  f:close()",
                opened.display()
            ),
            "global 'io'",
        ),
        (
            "require",
            "local os = require(\"os\")\n  os.execute(\"true\")".to_string(),
            "global 'require'",
        ),
    ];
    for (case, call, wanted) in &cases {
        let plan = write_plan(
            &db,
            &format!("{case}.toml"),
            &format!("{table}_{case}"),
            "on_row_error = \"fail\"",
            &format!(
                "name = \"s\"\ntable = \"{table}\"\nkey = \"id\"\nlua = '''\nfunction transform(row)\n  {call}\n  return {{note = \"reached\"}}\nend\n'''"
            ),
        );
        let out = gw(&["run", path_str(&plan)]);
        assert_eq!(out.code, Some(1), "{case}: {}", out.stderr);
        assert!(
            out.stderr.contains(wanted) && out.stderr.contains("key 1"),
            "{case}: no {wanted:?} in {}",
            out.stderr
        );
    }
    assert!(!touched.exists(), "os.execute ran");
    assert!(!opened.exists(), "io.open ran");
    let reached = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM {table} WHERE note IS NOT NULL"
        ))
        .await;
    assert_eq!(reached, 0);
}

// --- 7. A changed script ----------------------------------------------------------------------

/// A stored run is not resumed with other Lua code, inline or in a `lua_file`: `run` refuses
/// (exit 2, nothing changed) until `--restart`, which runs the new code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_lua_is_refused_until_restart() {
    let db = TestDb::new(Backend::Sqlite).await;
    let script = |letter: &str| {
        format!("function transform(row)\n  return {{log = row.log .. \"{letter}\"}}\nend\n")
    };
    for variant in ["inline", "file"] {
        let table = db.table(variant);
        log_table(&db, &table, 120).await;
        let lua_path = db.dir.path().join(format!("{variant}.lua"));
        let write = |letter: &str| {
            let source = if variant == "inline" {
                format!("lua = '''\n{}'''", script(letter))
            } else {
                std::fs::write(&lua_path, script(letter)).expect("write lua");
                format!("lua_file = \"{variant}.lua\"")
            };
            write_plan(
                &db,
                &format!("{variant}.toml"),
                &table,
                "batch_size = 50",
                &format!("name = \"append\"\ntable = \"{table}\"\nkey = \"id\"\n{source}"),
            )
        };
        let plan = write("T");
        let out = gw(&["run", path_str(&plan)]);
        assert_eq!(out.code, Some(0), "{variant}: {}", out.stderr);
        let plan = write("U");
        let out = gw(&["run", path_str(&plan)]);
        assert_eq!(out.code, Some(2), "{variant}: {}", out.stderr);
        assert!(
            out.stderr.contains("step \"append\" changed") && out.stderr.contains("--restart"),
            "{variant}: {}",
            out.stderr
        );
        let logs = |expected: &'static str| {
            let db = &db;
            let table = table.clone();
            async move {
                let wrong = db
                    .scalar(&format!(
                        "SELECT COUNT(*) FROM {table} WHERE log <> '{expected}'"
                    ))
                    .await;
                assert_eq!(wrong, 0, "{variant}: rows whose log is not {expected:?}");
            }
        };
        logs("T").await;
        let out = gw(&["run", path_str(&plan), "--restart"]);
        assert_eq!(out.code, Some(0), "{variant}: {}", out.stderr);
        logs("TU").await;
    }
}

// --- 8. Type fidelity on PostgreSQL ------------------------------------------------------------

const TYPED_COLUMNS: &str = "amount, big, doc, at, u, b, t";

/// A PostgreSQL table of awkward values: numeric(30,10) extremes, bigint extremes, nested
/// jsonb with empty arrays and objects, timestamptz with microseconds, uuid, bytea (UTF-8 and
/// not), text with emoji and quotes, and NULLs. Each column has an empty twin `<name>2`.
async fn typed_table(db: &TestDb, table: &str) {
    db.exec(&format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, \
         amount NUMERIC(30,10), amount2 NUMERIC(30,10), big BIGINT, big2 BIGINT, \
         doc JSONB, doc2 JSONB, at TIMESTAMPTZ, at2 TIMESTAMPTZ, u UUID, u2 UUID, \
         b BYTEA, b2 BYTEA, t TEXT, t2 TEXT, n INT, note TEXT)"
    ))
    .await;
    db.exec(&format!(
        r#"INSERT INTO {table} (id, amount, big, doc, at, u, b, t, n, note) VALUES
        (1, 12345678901234567890.0123456789, 9223372036854775807,
         '{{"a": [], "b": {{}}, "c": [1, {{"d": []}}, null, 3], "e": null, "f": 1.5, "g": "é🙂", "h": [[]], "i": true, "j": -7}}',
         '2024-02-29 23:59:58.123456+07', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\x00ff10', 'emoji 🦤 and ünïcödé', 1, 'x'),
        (2, -0.0000000001, -9223372036854775808, '[]', '1970-01-01 00:00:00+00',
         '00000000-0000-0000-0000-000000000000', 'hello', '', 0, 'x'),
        (3, 0, 0, '{{}}', '2262-04-11 23:47:16.854775+00', 'ffffffff-ffff-ffff-ffff-ffffffffffff',
         '\x', 'line
break "quoted" \ back', -2147483648, 'x'),
        (4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'x'),
        (5, 99999999999999999999.9999999999, 1, '[{{"x": {{"y": [[], {{}}]}}}}]', '0001-01-01 00:00:00+00',
         '123e4567-e89b-12d3-a456-426614174000', '\xc328', 'tab	and nul-free', 2147483647, 'x')"#
    ))
    .await;
}

fn typed_snapshot_sql(table: &str, columns: &str) -> String {
    let list: Vec<String> = columns.split(", ").map(|c| format!("{c}::text")).collect();
    format!(
        "SELECT id, {}, n::text, note FROM {table} ORDER BY id",
        list.join(", ")
    )
}

/// `return row` changes nothing on PostgreSQL's awkward types: the table reads the same, and
/// not one row was even written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_transform_changes_nothing_on_postgres() {
    let db = isolated_db(Backend::Postgres).await;
    let table = db.table("typed");
    typed_table(&db, &table).await;
    let sql = typed_snapshot_sql(&table, TYPED_COLUMNS);
    let before = snapshot(&db, &sql).await;
    let versions = format!("SELECT id, xmin::text FROM {table} ORDER BY id");
    let versions_before = snapshot(&db, &versions).await;
    let plan = write_plan(
        &db,
        "plan.toml",
        &table,
        "on_row_error = \"fail\"",
        &format!(
            "name = \"identity\"\ntable = \"{table}\"\nkey = \"id\"\n\
             lua = '''function transform(row) return row end'''"
        ),
    );
    let out = gw(&["run", path_str(&plan)]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(before, snapshot(&db, &sql).await);
    assert_eq!(
        versions_before,
        snapshot(&db, &versions).await,
        "rows were rewritten with their own values"
    );
}

/// Every value copied by Lua into the twin column arrives exactly (the numeric from its
/// decimal text), and `godwit.null` writes NULL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_written_by_lua_keep_their_exact_value_on_postgres() {
    let db = isolated_db(Backend::Postgres).await;
    let table = db.table("typed");
    typed_table(&db, &table).await;
    let plan = write_plan(
        &db,
        "plan.toml",
        &table,
        "on_row_error = \"fail\"",
        &format!(
            "name = \"twins\"\ntable = \"{table}\"\nkey = \"id\"\n\
             columns = [\"amount\", \"big\", \"doc\", \"at\", \"u\", \"b\", \"t\"]\nlua = '''\n\
             function transform(row)\n\
               assert(row.amount == nil or type(row.amount) == \"string\", \"amount is not text\")\n\
               return {{amount = row.amount, amount2 = row.amount, big2 = row.big, doc2 = row.doc,\n\
                       at2 = row.at, u2 = row.u, b2 = row.b, t2 = row.t, note = godwit.null}}\n\
             end\n'''"
        ),
    );
    let out = gw(&["run", path_str(&plan)]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let originals = snapshot(&db, &typed_snapshot_sql(&table, TYPED_COLUMNS)).await;
    let twins = snapshot(
        &db,
        &typed_snapshot_sql(&table, "amount2, big2, doc2, at2, u2, b2, t2"),
    )
    .await;
    for (o, t) in originals.iter().zip(&twins) {
        // id and the columns; `n` is not copied and `note` became NULL.
        assert_eq!(o[..8], t[..8], "twin differs from original");
        assert_eq!(t[9], None, "godwit.null did not write NULL");
    }
    // The numeric written back from its own text is still exact.
    let amount = snapshot(
        &db,
        &format!("SELECT amount::text FROM {table} WHERE id = 1"),
    )
    .await;
    assert_eq!(
        amount[0][0].as_deref(),
        Some("12345678901234567890.0123456789")
    );
}

/// A value that does not fit its column fails the row, naming the column and the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_that_does_not_fit_names_column_and_key() {
    let db = isolated_db(Backend::Postgres).await;
    let table = db.table("typed");
    typed_table(&db, &table).await;
    let before = snapshot(&db, &typed_snapshot_sql(&table, TYPED_COLUMNS)).await;
    let plan = write_plan(
        &db,
        "plan.toml",
        &table,
        "on_row_error = \"fail\"",
        &format!(
            "name = \"bad-int\"\ntable = \"{table}\"\nkey = \"id\"\ncolumns = [\"n\"]\n\
             lua = '''function transform(row) if row.id == 3 then return {{n = \"abc\"}} end return nil end'''"
        ),
    );
    let out = gw(&["run", path_str(&plan)]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("key 3")
            && out.stderr.contains("column n")
            && out.stderr.contains("\"abc\""),
        "{}",
        out.stderr
    );
    assert_eq!(
        before,
        snapshot(&db, &typed_snapshot_sql(&table, TYPED_COLUMNS)).await
    );
}

/// Creates `table (id, v TYPE, v2 TYPE, note)` with one row per literal in `v`, runs a Lua step
/// (reading every column) that copies `v` into `v2`, and returns the run's output and each
/// row's `v` and `v2` as the database prints them.
async fn copy_through_lua(
    db: &TestDb,
    name: &str,
    column_type: &str,
    literals: &[&str],
) -> (Out, Vec<Vec<Option<String>>>) {
    let table = db.table(name);
    db.exec(&format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, v {column_type}, v2 {column_type}, note VARCHAR(10))"
    ))
    .await;
    let values: Vec<String> = literals
        .iter()
        .enumerate()
        .map(|(i, v)| format!("({}, {v})", i + 1))
        .collect();
    insert(db, &table, "id, v", &values).await;
    let plan = write_plan(
        db,
        &format!("{name}.toml"),
        &table,
        "on_row_error = \"fail\"",
        &format!(
            "name = \"copy\"\ntable = \"{table}\"\nkey = \"id\"\n\
             lua = '''function transform(row) return {{v2 = row.v, note = \"seen\"}} end'''"
        ),
    );
    let out = gw(&["run", path_str(&plan)]);
    let text = |c: &str| match db.backend {
        Backend::MySql => format!("CAST({c} AS CHAR)"),
        _ => format!("CAST({c} AS TEXT)"),
    };
    let rows = snapshot(
        db,
        &format!(
            "SELECT {}, {} FROM {table} ORDER BY id",
            text("v"),
            text("v2")
        ),
    )
    .await;
    (out, rows)
}

/// Fails unless the copy ran and every `v2` equals its `v`.
fn assert_copied(what: &str, out: &Out, rows: &[Vec<Option<String>>]) {
    assert_eq!(out.code, Some(0), "{what}: {}", out.stderr);
    let differ: Vec<_> = rows.iter().filter(|r| r[0] != r[1]).collect();
    assert!(
        differ.is_empty(),
        "{what}: values changed on their way through Lua (before, after): {differ:?}"
    );
}

/// PostgreSQL types godwit hands to Lua as text (interval, enum, inet, money, xml, bit
/// strings, geometry) and the floats' special values arrive in another column unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_postgres_types_copied_by_lua_arrive_unchanged() {
    let db = isolated_db(Backend::Postgres).await;
    let mood = db.table("mood");
    db.exec(&format!("CREATE TYPE {mood} AS ENUM ('sad', 'b c')"))
        .await;
    let cases: [(&str, &str, &[&str]); 10] = [
        (
            "interval",
            "INTERVAL",
            &["'1 year 2 mons 3 days 04:05:06.789'", "'-1 days'", "NULL"],
        ),
        ("enum", &mood, &["'sad'", "'b c'"]),
        ("inet", "INET", &["'10.0.0.1/8'", "'::1'"]),
        ("money", "MONEY", &["12.34", "-1"]),
        ("xml", "XML", &["'<a>x</a>'", "''"]),
        ("varbit", "BIT VARYING(8)", &["B'101'", "B''"]),
        ("point", "POINT", &["'(1,2)'", "'(-0.5,1e10)'"]),
        ("real", "REAL", &["0.1", "'Infinity'", "'NaN'", "-3.4e38"]),
        (
            "double",
            "DOUBLE PRECISION",
            &["0.1", "'-Infinity'", "'NaN'", "1.7976931348623157e308"],
        ),
        ("char", "CHAR(5)", &["'ab'", "'     '", "'é🦤'"]),
    ];
    for (name, column_type, literals) in cases {
        let (out, rows) = copy_through_lua(&db, name, column_type, literals).await;
        assert_copied(name, &out, &rows);
    }
}

/// PostgreSQL's infinite timestamps and dates reach Lua without bringing godwit down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_timestamps_do_not_crash_a_transform_on_postgres() {
    let db = isolated_db(Backend::Postgres).await;
    for (name, column_type) in [
        ("tstz", "TIMESTAMPTZ"),
        ("ts", "TIMESTAMP"),
        ("date", "DATE"),
    ] {
        let (out, rows) =
            copy_through_lua(&db, name, column_type, &["'infinity'", "'-infinity'"]).await;
        assert!(!out.stderr.contains("panicked"), "{name}: {}", out.stderr);
        assert_copied(name, &out, &rows);
    }
}

/// Array and `timetz` columns are read (as text, as the scheduler means to) and copied exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn array_and_timetz_columns_can_be_transformed_on_postgres() {
    let db = isolated_db(Backend::Postgres).await;
    let cases: [(&str, &str, &[&str]); 3] = [
        ("ints", "INTEGER[]", &["'{1,NULL,3}'", "'{}'"]),
        ("texts", "TEXT[]", &["'{\"a b\",NULL,\"\"}'", "'{}'"]),
        ("timetz", "TIMETZ", &["'12:00:00+05:30'", "'00:00:00-12'"]),
    ];
    for (name, column_type, literals) in cases {
        let (out, rows) = copy_through_lua(&db, name, column_type, literals).await;
        assert_copied(name, &out, &rows);
    }
}

/// Numeric special values and the end of the day survive a copy through Lua.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numeric_nan_and_end_of_day_survive_lua_on_postgres() {
    let db = isolated_db(Backend::Postgres).await;
    let (out, rows) =
        copy_through_lua(&db, "time", "TIME", &["'24:00:00'", "'23:59:59.999999'"]).await;
    assert_copied("time", &out, &rows);
    let (out, rows) =
        copy_through_lua(&db, "nan", "NUMERIC", &["'NaN'", "'Infinity'", "1.5"]).await;
    assert_copied("numeric", &out, &rows);
}

/// MariaDB TIME holds durations (-838:59:59 to 838:59:59): a transform reads and copies them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_durations_survive_lua_on_mariadb() {
    let db = TestDb::new(Backend::MySql).await;
    let (out, rows) = copy_through_lua(
        &db,
        "durations",
        "TIME(3)",
        &[
            "'100:00:00'",
            "'-01:00:00'",
            "'838:59:59.999'",
            "'12:00:00'",
        ],
    )
    .await;
    assert_copied("time", &out, &rows);
}

/// A jsonb document that is a JSON string (`"123"`, `"just a string"`) survives `return row`:
/// it reaches Lua as a string and goes back as that JSON string, not as JSON text to parse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_keeps_jsonb_strings_on_postgres() {
    let db = isolated_db(Backend::Postgres).await;
    let table = db.table("strdocs");
    db.exec(&format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, doc JSONB)"
    ))
    .await;
    db.exec(&format!(
        r#"INSERT INTO {table} (id, doc) VALUES (1, '"123"'), (2, '"just a string"'), (3, '"{{}}"'), (4, '"true"')"#
    ))
    .await;
    let sql = format!("SELECT id, doc::text FROM {table} ORDER BY id");
    let before = snapshot(&db, &sql).await;
    let plan = write_plan(
        &db,
        "plan.toml",
        &table,
        "on_row_error = \"skip\"",
        &format!(
            "name = \"identity\"\ntable = \"{table}\"\nkey = \"id\"\n\
             lua = '''function transform(row) return row end'''"
        ),
    );
    let out = gw(&["run", path_str(&plan)]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let letters = gw(&["dead-letters", path_str(&plan)]);
    assert_eq!(
        before,
        snapshot(&db, &sql).await,
        "dead letters: {}",
        letters.stdout
    );
    assert_eq!(letters.stdout, "", "rows were refused");
}

/// A script that edits one field of a jsonb document keeps the other fields' numbers exactly,
/// as PostgreSQL holds them (numbers beyond a double's precision included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_jsonb_document_keeps_its_other_numbers_on_postgres() {
    let db = isolated_db(Backend::Postgres).await;
    let table = db.table("numdocs");
    db.exec(&format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, doc JSONB NOT NULL, orig JSONB)"
    ))
    .await;
    db.exec(&format!(
        r#"INSERT INTO {table} (id, doc) VALUES
        (1, '{{"big": 123456789012345678901234567890, "k": 1}}'),
        (2, '{{"pi": 3.14159265358979323846264338327950288}}'),
        (3, '{{"price": 0.1, "n": [1, 2.5, -7]}}')"#
    ))
    .await;
    db.exec(&format!("UPDATE {table} SET orig = doc")).await;
    let plan = write_plan(
        &db,
        "plan.toml",
        &table,
        "on_row_error = \"skip\"",
        &format!(
            "name = \"touch\"\ntable = \"{table}\"\nkey = \"id\"\ncolumns = [\"doc\"]\n\
             lua = '''function transform(row) row.doc.touched = true return {{doc = row.doc}} end'''"
        ),
    );
    let out = gw(&["run", path_str(&plan)]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let touched = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM {table} WHERE doc ? 'touched'"
        ))
        .await;
    assert_eq!(touched, 3, "the script ran on every row");
    let differ = snapshot(
        &db,
        &format!(
            "SELECT id, orig::text, doc::text FROM {table} \
             WHERE doc IS DISTINCT FROM orig || '{{\"touched\": true}}' ORDER BY id"
        ),
    )
    .await;
    assert!(
        differ.is_empty(),
        "numbers the script did not touch changed (id, before, after): {differ:?}"
    );
}

/// A `lua_file` script's errors name that file and its line, both a syntax error (refused
/// before anything runs) and an error raised for a row (in the dead letter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lua_file_errors_name_the_script_and_its_line() {
    let db = TestDb::new(Backend::Sqlite).await;
    let table = db.table("file");
    phone_table(&db, &table, 30).await;
    let script = db.dir.path().join("rules.lua");
    let plan = write_plan(
        &db,
        "plan.toml",
        &table,
        "on_row_error = \"skip\"",
        &format!("name = \"rules\"\ntable = \"{table}\"\nkey = \"id\"\nlua_file = \"rules.lua\""),
    );
    std::fs::write(
        &script,
        "-- rules\nfunction transform(row)\n  return {note = = 1}\nend\n",
    )
    .expect("write script");
    let out = gw(&["run", path_str(&plan)]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    let wanted = format!("{}:3:", script.display());
    assert!(
        out.stderr.contains(&wanted),
        "no {wanted:?} in {}",
        out.stderr
    );

    std::fs::write(
        &script,
        "-- rules\nfunction transform(row)\n  if row.id == 7 then\n    error(\"seven\")\n  end\n  return {note = \"ok\"}\nend\n",
    )
    .expect("write script");
    let out = gw(&["run", path_str(&plan)]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let out = gw(&["dead-letters", path_str(&plan), "--json"]);
    let letter: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("one letter");
    assert_eq!(letter["key"], "7");
    assert_eq!(letter["error"], format!("{}:4: seven", script.display()));
}

/// A text key (on MariaDB in another character set than the connection's): every row is
/// transformed, the bad one is skipped, and its dead letter names its key as it is stored.
async fn text_keys_are_transformed_and_named(backend: Backend) {
    let db = db_for(backend).await;
    let table = db.table("textkey");
    let key_type = match backend {
        Backend::MySql => "VARCHAR(40) CHARACTER SET latin1 COLLATE latin1_swedish_ci",
        _ => "VARCHAR(40)",
    };
    db.exec(&format!(
        "CREATE TABLE {table} (code {key_type} NOT NULL PRIMARY KEY, v VARCHAR(60))"
    ))
    .await;
    let keys = [
        "", " lead", "a", "B", "é", "z z", "Zeta", "ß", "O'Brien", "ÿ end",
    ];
    let values: Vec<String> = keys
        .iter()
        .map(|k| format!("({}, 'x')", sql_text(&Some(k.to_string()))))
        .collect();
    insert(&db, &table, "code, v", &values).await;
    let plan = write_plan(
        &db,
        "plan.toml",
        &table,
        "batch_size = 2\non_row_error = \"skip\"",
        &format!(
            "name = \"seen\"\ntable = \"{table}\"\nkey = \"code\"\nlua = '''\n\
             function transform(row)\n  if row.code == \"O'Brien\" then error(\"no irish\") end\n  \
             return {{v = \"seen \" .. row.code}}\nend\n'''"
        ),
    );
    let out = gw(&["run", path_str(&plan), "--concurrency", "2"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let rows = snapshot(&db, &format!("SELECT code, v FROM {table}")).await;
    assert_eq!(rows.len(), keys.len());
    for row in &rows {
        let code = row[0].clone().expect("code");
        let expected = if code == "O'Brien" {
            "x".to_string()
        } else {
            format!("seen {code}")
        };
        assert_eq!(row[1].as_deref(), Some(expected.as_str()), "key {code:?}");
    }
    let out = gw(&["dead-letters", path_str(&plan), "--json"]);
    let letter: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("not one letter ({e}): {}", out.stdout));
    assert_eq!(letter["key"], "O'Brien", "{letter}");
    assert_eq!(
        letter["row"],
        serde_json::json!({"code": "O'Brien", "v": "x"})
    );
    let status = status_json(&plan);
    assert_eq!(status["steps"][0]["rows_done"], keys.len(), "{status}");
    assert_eq!(status["steps"][0]["rows_skipped"], 1, "{status}");
}

/// What a script prints goes to godwit's log on stderr, never into `--json`'s stdout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lua_print_never_reaches_json_stdout() {
    let db = TestDb::new(Backend::Sqlite).await;
    let table = db.table("print");
    phone_table(&db, &table, 40).await;
    let plan = write_plan(
        &db,
        "plan.toml",
        &table,
        "batch_size = 10",
        &format!(
            "name = \"chatty\"\ntable = \"{table}\"\nkey = \"id\"\n\
             lua = '''function transform(row) print(\"looking at\", row.id) return {{note = \"ok\"}} end'''"
        ),
    );
    let mut cmd = common::godwit();
    cmd.args(["run", path_str(&plan), "--json"])
        .env("RUST_LOG", "godwit::lua=info");
    let out = gw_cmd(cmd, Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for line in out.stdout.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not a JSON event on stdout: {line:?}"
        );
    }
    assert!(
        out.stderr.contains("looking at\t40"),
        "print did not reach the log: {}",
        out.stderr
    );
}

/// With `on_row_error = "skip"`, rows whose new values the database refuses (a CHECK
/// constraint) are set aside too, with the database's code, beside the rows the script
/// refuses; every other row is written.
async fn rows_the_database_refuses_are_skipped(backend: Backend) {
    let db = db_for(backend).await;
    let table = db.table("db_refuses");
    db.exec(&format!(
        "CREATE TABLE {table} (id {} PRIMARY KEY, phone VARCHAR(20) NOT NULL, note VARCHAR(40), \
         CHECK (note IS NULL OR id % 41 <> 0))",
        id_type(backend)
    ))
    .await;
    let values: Vec<String> = (1..=300)
        .map(|i| format!("({i}, '0162{i:07}', NULL)"))
        .collect();
    insert(&db, &table, "id, phone, note", &values).await;
    let plan = write_plan(
        &db,
        "db_refuses.toml",
        &table,
        "batch_size = 50\non_row_error = \"skip\"",
        &bad_rows_step(&table),
    );
    let out = gw(&["run", path_str(&plan), "--concurrency", "2"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let by_script: Vec<i64> = (1..=300).filter(|i| i % 97 == 0).collect();
    let by_database: Vec<i64> = (1..=300).filter(|i| i % 41 == 0).collect();
    let rows = db
        .query(&format!("SELECT id, phone, note FROM {table} ORDER BY id"))
        .await;
    assert_eq!(rows.len(), 300);
    for row in &rows {
        let id = row[0].as_i64().expect("id");
        let (phone, note) = (cell(&row[1]).expect("phone"), cell(&row[2]));
        let refused = by_script.contains(&id) || by_database.contains(&id);
        let expected = (!refused).then(|| format!("ok {phone}"));
        assert_eq!(note, expected, "row {id}");
    }
    let letters = dead_letters_by_key(&plan);
    let mut wanted: Vec<i64> = by_script.iter().chain(&by_database).copied().collect();
    wanted.sort();
    let keys: Vec<i64> = letters.iter().map(|(k, _)| *k).collect();
    assert_eq!(keys, wanted, "{letters:?}");
    let codes: &[&str] = match backend {
        Backend::Postgres => &["[23514]"],
        Backend::MySql => &["[4025]", "[3819]"],
        Backend::Sqlite => &["[275]"],
    };
    for (key, error) in &letters {
        if by_database.contains(key) {
            assert!(
                codes.iter().any(|c| error.contains(c)),
                "key {key}: {error}"
            );
        } else {
            assert!(error.contains("no rule for"), "key {key}: {error}");
        }
    }
    let status = status_json(&plan);
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["steps"][0]["rows_skipped"], wanted.len(), "{status}");
}

per_backend!(
    rows_the_database_refuses_are_skipped,
    lua_rewrites_phones_as_the_rules_say,
    exactly_once_across_kill_9,
    command_exactly_once_across_kill_9,
    a_bad_row_fails_the_run,
    bad_rows_are_skipped_into_dead_letters,
    broken_scripts_are_refused_before_anything_runs,
    text_keys_are_transformed_and_named,
);

mod pg_lost_update {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_are_never_lost_optimistic() {
        super::concurrent_writes_are_never_lost(super::Backend::Postgres, "optimistic").await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_are_never_lost_locking_rows() {
        super::concurrent_writes_are_never_lost(super::Backend::Postgres, "rows").await
    }
}

mod mysql_lost_update {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_are_never_lost_optimistic() {
        super::concurrent_writes_are_never_lost(super::Backend::MySql, "optimistic").await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_are_never_lost_locking_rows() {
        super::concurrent_writes_are_never_lost(super::Backend::MySql, "rows").await
    }
}

/// A transform over rows far wider than `max_batch_bytes` reads, transforms and writes them in
/// slices within each batch's transaction: every row is rewritten exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide_rows_are_transformed_in_slices() {
    let db = db_for(Backend::Postgres).await;
    let table = db.table("wide");
    db.exec(&format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, body TEXT NOT NULL); \
         INSERT INTO {table} SELECT i, repeat('x', 200000) FROM generate_series(1, 30) i"
    ))
    .await;
    let plan = write_plan(
        &db,
        "wide.toml",
        &format!("{}_wide", db.tag),
        "batch_size = 30\nmax_batch_bytes = \"1MiB\"",
        &format!(
            "name = \"wide\"\ntable = \"{table}\"\nkey = \"id\"\ncolumns = [\"body\"]\n\
             lua = '''function transform(row) return {{ body = row.body .. \"!\" }} end'''"
        ),
    );
    let out = gw(&["run", path_str(&plan), "--quiet"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let done = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM {table} WHERE body = repeat('x', 200000) || '!'"
        ))
        .await;
    assert_eq!(done, 30);
}
