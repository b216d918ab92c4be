//! Copy steps (`into`) end to end, through the real binary, between every pair of
//! PostgreSQL, MariaDB and SQLite: what a user checks after `godwit run` and `godwit verify`
//! (the target's values next to the source's, `dead-letters`, the exit codes and messages),
//! what survives `kill -9`, and what is refused before anything runs.
//!
//! Values are compared as each database prints them (`::text`, `CAST(… AS CHAR)`, `hex()`),
//! not through godwit's own decoding, and only representation is normalised (trailing zeros
//! of a decimal's fraction, JSON key order and spacing, a boolean's spelling); a value that
//! changed fails the test.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{
    db_for, dead_letters_by_key, godwit, id_type, insert, path_str, runs_stored, spawn_watched,
    spawn_watched_cmd, status_json, Backend, Db, KillOnDrop, TestDb,
};
use godwit_driver::Value;
use rand::Rng;

// --- helpers ----------------------------------------------------------------------------------

/// The source and target databases of a copy: one database when both are the same backend
/// (the copy then has no `source`), else one of each.
struct Dbs {
    source: Db,
    target: Option<Db>,
    /// Within one database, name it as the step's `source` anyway (a copy "between"
    /// databases that happen to be one).
    named_source: bool,
}

impl Dbs {
    async fn new(source: Backend, target: Backend) -> Dbs {
        let src = db_for(source).await;
        let target = if source == target {
            None
        } else {
            Some(db_for(target).await)
        };
        Dbs {
            source: src,
            target,
            named_source: false,
        }
    }

    /// One database of `backend`, named as the copy's `source`.
    async fn named(backend: Backend) -> Dbs {
        Dbs {
            named_source: true,
            ..Dbs::new(backend, backend).await
        }
    }

    fn source(&self) -> &TestDb {
        &self.source
    }

    fn target(&self) -> &TestDb {
        self.target.as_deref().unwrap_or(&self.source)
    }

    /// The step's `source = "…"` line (with its newline), empty for a copy within one database
    /// that does not name it.
    fn source_line(&self) -> String {
        match (&self.target, self.named_source) {
            (None, false) => String::new(),
            _ => format!("source = \"{}\"\n", self.source.url),
        }
    }
}

/// Writes `{name}.toml`: a plan named `name` on `db` (the copy's target) with `[defaults]`
/// and the given `[[steps]]` bodies.
fn copy_plan(db: &TestDb, name: &str, defaults: &str, steps: &[String]) -> PathBuf {
    let mut text = format!(
        "name = \"{name}\"\ndatabase = \"{}\"\n\n[defaults]\n{defaults}\n",
        db.url
    );
    for step in steps {
        text.push_str(&format!("\n[[steps]]\n{step}\n"));
    }
    db.plan(&format!("{name}.toml"), &text)
}

/// The 1-based line of `file` holding `needle`, for checking the locations messages name.
fn line_of(file: &Path, needle: &str) -> usize {
    let text = std::fs::read_to_string(file).expect("read plan");
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line holds {needle:?} in {text}"))
        + 1
}

/// What one finished godwit command printed.
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs godwit with `args` to its end; fails the test (killing it) after 90 s.
fn gw(args: &[&str]) -> Out {
    let mut watched = KillOnDrop(spawn_watched(args));
    let code = watched.finish(Duration::from_secs(90));
    Out {
        code,
        stdout: watched.stdout_lines.join("\n"),
        stderr: watched.stderr_text(),
    }
}

fn run_plan(plan: &Path) -> Out {
    gw(&["run", path_str(plan)])
}

/// `godwit verify PLAN --json`, parsed.
fn verify_json(plan: &Path) -> (Option<i32>, serde_json::Value) {
    let out = gw(&["verify", path_str(plan), "--json"]);
    let json = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("verify --json printed no JSON ({e}): {out}"));
    (out.code, json)
}

/// A value as text (`None` for NULL); text a database sent as bytes must be UTF-8.
fn cell(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::Int(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Text(s) | Value::Decimal(s) => Some(s.clone()),
        Value::Bytes(b) => Some(
            String::from_utf8(b.clone())
                .unwrap_or_else(|_| panic!("the database sent text that is not UTF-8: {b:?}")),
        ),
        other => Some(format!("{other:?}")),
    }
}

/// The result of `sql`, every value as text, for comparing tables.
async fn snapshot(db: &TestDb, sql: &str) -> Vec<Vec<Option<String>>> {
    db.query(sql)
        .await
        .iter()
        .map(|row| row.iter().map(cell).collect())
        .collect()
}

/// A quoted SQL string literal for `backend` (MariaDB also treats backslashes as escapes).
fn quoted(backend: Backend, s: &str) -> String {
    let s = s.replace('\'', "''");
    match backend {
        Backend::MySql => format!("'{}'", s.replace('\\', "\\\\")),
        _ => format!("'{s}'"),
    }
}

/// MariaDB tables of these tests hold any Unicode text.
fn table_options(backend: Backend) -> &'static str {
    match backend {
        Backend::MySql => " DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
        _ => "",
    }
}

/// A decimal's value as text: no `+`, no leading zeros, no trailing fractional zeros, `-0`
/// is `0`. Text that is not a decimal is returned as it is, so that it fails a comparison.
fn decimal(s: &str) -> String {
    let t = s.trim();
    let (neg, digits) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let is_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !is_digits(int) || !is_digits(frac) {
        return s.to_string();
    }
    let int = match int.trim_start_matches('0') {
        "" => "0",
        rest => rest,
    };
    let frac = frac.trim_end_matches('0');
    let body = if frac.is_empty() {
        int.to_string()
    } else {
        format!("{int}.{frac}")
    };
    if neg && body != "0" {
        format!("-{body}")
    } else {
        body
    }
}

/// A JSON document with its keys sorted and no spacing; text that is not JSON is marked.
fn json_text(s: &str) -> String {
    fn sorted(v: &serde_json::Value) -> String {
        match v {
            serde_json::Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                let items: Vec<String> = keys
                    .into_iter()
                    .map(|k| {
                        format!(
                            "{}:{}",
                            serde_json::Value::from(k.as_str()),
                            sorted(&map[k])
                        )
                    })
                    .collect();
                format!("{{{}}}", items.join(","))
            }
            serde_json::Value::Array(items) => {
                let items: Vec<String> = items.iter().map(sorted).collect();
                format!("[{}]", items.join(","))
            }
            other => other.to_string(),
        }
    }
    match serde_json::from_str::<serde_json::Value>(s) {
        Ok(v) => sorted(&v),
        Err(_) => format!("not JSON: {s}"),
    }
}

// --- 1. types: every pair of databases ----------------------------------------------------------

/// What a column of the type table holds, for writing literals and comparing values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Dec,
    Text,
    Bytes,
    Bool,
    Json,
    Date,
    Ts,
    Uuid,
}

/// The type table's columns after `id`.
const TYPED: [(&str, Kind); 10] = [
    ("i", Kind::Int),
    ("n", Kind::Int),
    ("d", Kind::Dec),
    ("t", Kind::Text),
    ("b", Kind::Bytes),
    ("f", Kind::Bool),
    ("j", Kind::Json),
    ("dt", Kind::Date),
    ("ts", Kind::Ts),
    ("u", Kind::Uuid),
];

/// The type table on each database: `i` BIGINT, `n` INT, `d` DECIMAL(30,10), `t` text, `b`
/// bytes, `f` boolean, `j` JSON, `dt` date, `ts` timestamp with microseconds, `u` UUID.
///
/// What a database cannot hold, and how it is stored instead:
/// * SQLite has no decimal type: a column declared DECIMAL has NUMERIC affinity and keeps
///   only 15 significant digits (as REAL), so decimals are stored as TEXT, exactly.
/// * SQLite has no JSON, date, timestamp, UUID or boolean type: JSON is TEXT; dates,
///   timestamps and UUIDs are text in columns declared DATE, TIMESTAMP and UUID (which tells
///   godwit what they are; TEXT columns: test `temporal_and_uuid_into_sqlite_text_columns`);
///   booleans are the integers 0 and 1 in a column declared BOOLEAN.
/// * MariaDB's BOOLEAN is TINYINT(1), holding 0 and 1; its JSON is LONGTEXT with a
///   `json_valid` check. UUIDs are MariaDB's UUID type in a target and CHAR(36) in a source:
///   godwit cannot read the UUID type (test `mariadb_uuid_column_into_postgres`) nor write a
///   PostgreSQL uuid into CHAR(36) (test `uuid_into_mariadb_char_column`).
/// * PostgreSQL's JSONB does not keep key order or spacing (compared as documents).
fn typed_table(backend: Backend, name: &str, target: bool) -> String {
    let columns = match backend {
        Backend::Postgres => {
            "id BIGINT PRIMARY KEY, i BIGINT, n INTEGER, d NUMERIC(30,10), t TEXT, b BYTEA, \
             f BOOLEAN, j JSONB, dt DATE, ts TIMESTAMP(6), u UUID"
        }
        Backend::MySql if target => {
            "id BIGINT PRIMARY KEY, i BIGINT, n INT, d DECIMAL(30,10), t TEXT, b BLOB, \
             f BOOLEAN, j JSON, dt DATE, ts DATETIME(6), u UUID"
        }
        Backend::MySql => {
            "id BIGINT PRIMARY KEY, i BIGINT, n INT, d DECIMAL(30,10), t TEXT, b BLOB, \
             f BOOLEAN, j JSON, dt DATE, ts DATETIME(6), u CHAR(36)"
        }
        Backend::Sqlite => {
            "id INTEGER PRIMARY KEY, i INTEGER, n INTEGER, d TEXT, t TEXT, b BLOB, \
             f BOOLEAN, j TEXT, dt DATE, ts TIMESTAMP, u UUID"
        }
    };
    format!("CREATE TABLE {name} ({columns}){}", table_options(backend))
}

/// One row of the type table: `id` and a value per column of [`TYPED`] (bytes in hex,
/// booleans as `true`/`false`), `None` for NULL.
type Sample = (i64, [Option<String>; 10]);

fn samples() -> Vec<Sample> {
    let s = |v: &str| Some(v.to_string());
    let all_bytes: String = (0..=255u8).map(|b| format!("{b:02x}")).collect();
    let mut rows: Vec<Sample> = vec![
        (
            1,
            [
                s(&i64::MIN.to_string()),
                s(&i32::MIN.to_string()),
                s("12345678901234567890.0123456789"),
                // Precomposed and combining accents, an emoji, a ZWJ family, CJK.
                s("h\u{e9}llo \u{1F600} e\u{301} \u{6F22}\u{5B57} \u{1F469}\u{200D}\u{1F469}\u{200D}\u{1F467}"),
                s("00ff10"),
                s("true"),
                s(r#"{"a":[],"b":{},"c":[1,{"d":null,"e":"\u00fc"}],"big":9007199254740993,"s":"x\"y"}"#),
                s("2024-02-29"),
                s("2024-02-29 23:59:59.123456"),
                s("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            ],
        ),
        (
            2,
            [
                s(&i64::MAX.to_string()),
                s(&i32::MAX.to_string()),
                s("-0.0000000001"),
                s(""),
                s(""),
                s("false"),
                s("[]"),
                s("1970-01-01"),
                s("1970-01-01 00:00:00.000001"),
                s("00000000-0000-0000-0000-000000000000"),
            ],
        ),
        // NULL in every nullable column.
        (3, Default::default()),
        (
            4,
            [
                s("0"),
                s("0"),
                s("0"),
                s("it's \"quoted\" \\ back\nslash\ttab"),
                Some(all_bytes),
                s("true"),
                s("{}"),
                s("9999-12-31"),
                s("2000-01-01 00:00:00"),
                s("ffffffff-ffff-ffff-ffff-ffffffffffff"),
            ],
        ),
        (
            5,
            [
                None,
                s("-1"),
                s("-99999999999999999999.9999999999"),
                s("ab"),
                None,
                None,
                s(r#"[[],[{}],{"x":[[]]}]"#),
                None,
                None,
                None,
            ],
        ),
    ];
    // Enough ordinary rows for several batches.
    for k in 10..=260i64 {
        rows.push((
            k,
            [
                s(&(k * 1_000_003 - 130_000_000).to_string()),
                s(&(-k).to_string()),
                s(&format!("{k}.{:02}", k % 100)),
                s(&format!("row {k} \u{2713} \u{fc}")),
                s(&format!("{:02x}00ff", k % 256)),
                s(if k % 2 == 0 { "true" } else { "false" }),
                s(&format!(r#"{{"k":{k},"tags":["x{k}"],"o":{{}}}}"#)),
                s(&format!("2001-{:02}-{:02}", k % 12 + 1, k % 28 + 1)),
                s(&format!(
                    "2001-{:02}-{:02} {:02}:{:02}:{:02}.{:06}",
                    k % 12 + 1,
                    k % 28 + 1,
                    k % 24,
                    k % 60,
                    (k * 7) % 60,
                    (k * 3797) % 1_000_000
                )),
                s(&format!("{k:08x}-1234-4abc-8def-{:012x}", k * 7)),
            ],
        ));
    }
    rows
}

/// A sample value as an SQL literal on `backend`.
fn literal(backend: Backend, kind: Kind, value: Option<&str>) -> String {
    let Some(v) = value else {
        return "NULL".to_string();
    };
    match kind {
        // i64::MIN has no literal of its own (9223372036854775808 is out of range).
        Kind::Int if v == i64::MIN.to_string() => "(-9223372036854775807 - 1)".to_string(),
        Kind::Int => v.to_string(),
        Kind::Dec if backend == Backend::Sqlite => quoted(backend, v),
        Kind::Dec => v.to_string(),
        Kind::Bool => v.to_uppercase(),
        Kind::Bytes if backend == Backend::Postgres => format!("decode('{v}', 'hex')"),
        Kind::Bytes => format!("X'{v}'"),
        Kind::Text | Kind::Json | Kind::Date | Kind::Ts | Kind::Uuid => quoted(backend, v),
    }
}

/// The type table's rows as the database prints them, ordered by `id`. On SQLite a value
/// stored in another storage class than expected (a decimal as REAL, bytes as text) shows
/// as `stored as …`.
async fn typed_rows(db: &TestDb, table: &str) -> Vec<Vec<Option<String>>> {
    let backend = db.backend;
    let list: Vec<String> = TYPED
        .iter()
        .map(|&(c, kind)| match (backend, kind) {
            (Backend::Postgres, Kind::Bytes) => format!("encode({c}, 'hex')"),
            (Backend::Postgres, Kind::Text) => c.to_string(),
            (Backend::Postgres, _) => format!("{c}::text"),
            (Backend::MySql, Kind::Bytes) => format!("LOWER(HEX({c}))"),
            (Backend::MySql, Kind::Text | Kind::Json) => c.to_string(),
            (Backend::MySql, _) => format!("CAST({c} AS CHAR)"),
            (Backend::Sqlite, kind) => {
                let class = match kind {
                    Kind::Int | Kind::Bool => "integer",
                    Kind::Bytes => "blob",
                    _ => "text",
                };
                let shown = if kind == Kind::Bytes {
                    format!("lower(hex({c}))")
                } else {
                    format!("CAST({c} AS TEXT)")
                };
                format!(
                    "CASE typeof({c}) WHEN 'null' THEN NULL WHEN '{class}' THEN {shown} \
                     ELSE 'stored as ' || typeof({c}) || ': ' || CAST({c} AS TEXT) END"
                )
            }
        })
        .collect();
    let id = match backend {
        Backend::Postgres => "id::text",
        Backend::MySql => "CAST(id AS CHAR)",
        Backend::Sqlite => "CAST(id AS TEXT)",
    };
    snapshot(
        db,
        &format!(
            "SELECT {id}, {} FROM {table} ORDER BY {table}.id",
            list.join(", ")
        ),
    )
    .await
}

/// A printed value in a form equal for equal values on every database.
fn normal(kind: Kind, value: Option<String>) -> Option<String> {
    let v = value?;
    Some(match kind {
        Kind::Dec => decimal(&v),
        Kind::Bool => match v.as_str() {
            "1" | "t" | "true" => "true".to_string(),
            "0" | "f" | "false" => "false".to_string(),
            _ => v,
        },
        Kind::Json => json_text(&v),
        // PostgreSQL prints no fractional zeros, MariaDB's DATETIME(6) always six digits.
        Kind::Ts => match v.split_once('.') {
            Some((whole, frac)) => match frac.trim_end_matches('0') {
                "" => whole.to_string(),
                frac => format!("{whole}.{frac}"),
            },
            None => v,
        },
        Kind::Bytes => v.to_lowercase(),
        Kind::Int | Kind::Text | Kind::Date | Kind::Uuid => v,
    })
}

fn normalised(rows: Vec<Vec<Option<String>>>) -> Vec<Vec<Option<String>>> {
    rows.into_iter()
        .map(|row| {
            let mut row = row.into_iter();
            let mut out = vec![row.next().flatten()];
            out.extend(TYPED.iter().zip(row).map(|(&(_, kind), v)| normal(kind, v)));
            out
        })
        .collect()
}

/// Fails with the first value that differs, naming its key and column.
fn assert_same_rows(what: &str, got: &[Vec<Option<String>>], wanted: &[Vec<Option<String>>]) {
    for (g, w) in got.iter().zip(wanted) {
        for (i, (a, b)) in g.iter().zip(w).enumerate() {
            let column = if i == 0 { "id" } else { TYPED[i - 1].0 };
            assert_eq!(a, b, "{what}: key {:?}, column {column}", w[0]);
        }
    }
    assert_eq!(got.len(), wanted.len(), "{what}: row count");
}

/// Creates the type table on both sides, fills the source and copies it with no transform.
async fn copy_typed(dbs: &Dbs) -> (String, String, PathBuf) {
    let (s, t) = (dbs.source(), dbs.target());
    let source = s.table("types_src");
    let target = t.table("types_dst");
    s.exec(&typed_table(s.backend, &source, false)).await;
    t.exec(&typed_table(t.backend, &target, true)).await;
    let columns: Vec<&str> = TYPED.iter().map(|(c, _)| *c).collect();
    let rows: Vec<String> = samples()
        .iter()
        .map(|(id, values)| {
            let cells: Vec<String> = TYPED
                .iter()
                .zip(values)
                .map(|(&(_, kind), v)| literal(s.backend, kind, v.as_deref()))
                .collect();
            format!("({id}, {})", cells.join(", "))
        })
        .collect();
    insert(s, &source, &format!("id, {}", columns.join(", ")), &rows).await;
    let plan = copy_plan(
        t,
        &format!("{}_types", t.tag),
        "batch_size = 100",
        &[format!(
            "name = \"copy\"\n{}table = \"{source}\"\nkey = \"id\"\ninto = \"{target}\"",
            dbs.source_line()
        )],
    );
    let out = run_plan(&plan);
    assert_eq!(out.code, Some(0), "copy failed: {out}");
    (source, target, plan)
}

/// Every value arrives unchanged: the target, printed by its database, equals the source.
async fn types_round_trip(source: Backend, target: Backend) {
    let dbs = Dbs::new(source, target).await;
    let (src_table, dst_table, _) = copy_typed(&dbs).await;
    let wanted: Vec<Vec<Option<String>>> = samples()
        .into_iter()
        .map(|(id, values)| {
            let mut row = vec![Some(id.to_string())];
            row.extend(
                TYPED
                    .iter()
                    .zip(values)
                    .map(|(&(_, kind), v)| normal(kind, v)),
            );
            row
        })
        .collect();
    // The source holds what was written (else the comparison below proves nothing).
    let src = normalised(typed_rows(dbs.source(), &src_table).await);
    assert_same_rows(&format!("source {source:?}"), &src, &wanted);
    let dst = normalised(typed_rows(dbs.target(), &dst_table).await);
    assert_same_rows(&format!("{source:?} -> {target:?}"), &dst, &wanted);
}

/// After the same copy `verify` finds nothing to report.
async fn types_verify(source: Backend, target: Backend) {
    let dbs = Dbs::new(source, target).await;
    let (_, _, plan) = copy_typed(&dbs).await;
    let out = gw(&["verify", path_str(&plan)]);
    assert_eq!(out.code, Some(0), "{source:?} -> {target:?}: {out}");
    let (code, json) = verify_json(&plan);
    assert_eq!(code, Some(0), "{json}");
    assert_eq!(json["ok"], true, "{json}");
    assert_eq!(json["steps"][0]["source_rows"], samples().len(), "{json}");
    assert_eq!(json["steps"][0]["target_rows"], samples().len(), "{json}");
}

macro_rules! pairs {
    ($run:ident: $($(#[$meta:meta])* $name:ident: $src:ident -> $dst:ident),* $(,)?) => {
        $(
            $(#[$meta])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$run(super::Backend::$src, super::Backend::$dst).await
            }
        )*
    };
}

mod types {
    pairs!(types_round_trip:
        pg_to_pg: Postgres -> Postgres,
        pg_to_mysql: Postgres -> MySql,
        pg_to_sqlite: Postgres -> Sqlite,
        mysql_to_pg: MySql -> Postgres,
        mysql_to_mysql: MySql -> MySql,
        mysql_to_sqlite: MySql -> Sqlite,
        sqlite_to_pg: Sqlite -> Postgres,
        sqlite_to_mysql: Sqlite -> MySql,
        sqlite_to_sqlite: Sqlite -> Sqlite,
    );
}

mod types_verify {
    pairs!(types_verify:
        pg_to_pg: Postgres -> Postgres,
        pg_to_mysql: Postgres -> MySql,
        pg_to_sqlite: Postgres -> Sqlite,
        mysql_to_pg: MySql -> Postgres,
        mysql_to_mysql: MySql -> MySql,
        mysql_to_sqlite: MySql -> Sqlite,
        sqlite_to_pg: Sqlite -> Postgres,
        sqlite_to_mysql: Sqlite -> MySql,
        sqlite_to_sqlite: Sqlite -> Sqlite,
    );
}

/// UUIDs, dates and timestamps from PostgreSQL into text columns arrive as their text:
/// SQLite has no such types and TEXT is the usual column for them; CHAR(36) is MariaDB's
/// usual column for a UUID.
async fn temporal_and_uuid_into_text_columns(target: Backend) {
    let dbs = Dbs::new(Backend::Postgres, target).await;
    let (s, t) = (dbs.source(), dbs.target());
    let source = s.table("temporal");
    let target_table = t.table("temporal");
    s.exec(&format!(
        "CREATE TABLE {source} (id BIGINT PRIMARY KEY, u UUID, dt DATE, ts TIMESTAMP(6))"
    ))
    .await;
    s.exec(&format!(
        "INSERT INTO {source} VALUES (1, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2024-02-29', \
         '2024-02-29 23:59:59.123456'), (2, NULL, NULL, NULL)"
    ))
    .await;
    let columns = match target {
        Backend::MySql => "u CHAR(36), dt VARCHAR(10), ts VARCHAR(26)",
        _ => "u TEXT, dt TEXT, ts TEXT",
    };
    t.exec(&format!(
        "CREATE TABLE {target_table} (id {} PRIMARY KEY, {columns}){}",
        id_type(target),
        table_options(target)
    ))
    .await;
    let plan = copy_plan(
        t,
        &format!("{}_temporal", t.tag),
        "",
        &[format!(
            "name = \"copy\"\n{}table = \"{source}\"\nkey = \"id\"\ninto = \"{target_table}\"",
            dbs.source_line()
        )],
    );
    let out = run_plan(&plan);
    assert_eq!(out.code, Some(0), "{out}");
    let rows = snapshot(
        t,
        &format!("SELECT u, dt, ts FROM {target_table} ORDER BY id"),
    )
    .await;
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        rows,
        vec![
            vec![
                s("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
                s("2024-02-29"),
                s("2024-02-29 23:59:59.123456")
            ],
            vec![None, None, None],
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporal_and_uuid_into_sqlite_text_columns() {
    temporal_and_uuid_into_text_columns(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uuid_into_mariadb_char_column() {
    temporal_and_uuid_into_text_columns(Backend::MySql).await
}

/// MariaDB's own UUID type copies into a PostgreSQL uuid column, and `verify` agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_uuid_column_into_postgres() {
    let dbs = Dbs::new(Backend::MySql, Backend::Postgres).await;
    let (s, t) = (dbs.source(), dbs.target());
    let source = s.table("uuids");
    let target = t.table("uuids");
    s.exec(&format!(
        "CREATE TABLE {source} (id BIGINT PRIMARY KEY, u UUID)"
    ))
    .await;
    s.exec(&format!(
        "INSERT INTO {source} VALUES (1, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'), (2, NULL)"
    ))
    .await;
    t.exec(&format!(
        "CREATE TABLE {target} (id BIGINT PRIMARY KEY, u UUID)"
    ))
    .await;
    let plan = copy_plan(
        t,
        &format!("{}_uuids", t.tag),
        "",
        &[format!(
            "name = \"copy\"\n{}table = \"{source}\"\nkey = \"id\"\ninto = \"{target}\"",
            dbs.source_line()
        )],
    );
    let out = run_plan(&plan);
    assert_eq!(out.code, Some(0), "{out}");
    let rows = snapshot(t, &format!("SELECT u::text FROM {target} ORDER BY id")).await;
    assert_eq!(
        rows,
        vec![
            vec![Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".to_string())],
            vec![None]
        ]
    );
    let out = gw(&["verify", path_str(&plan)]);
    assert_eq!(out.code, Some(0), "{out}");
}

// --- 2. loss is refused -----------------------------------------------------------------------

/// Creates `{tag}_{name}_src (id, amount DECIMAL(30,10))` holding `amounts` (keys 1, 2, …)
/// and an empty `{tag}_{name}_dst (id, amount {target_type})`, and a plan copying one into
/// the other; SQLite's source column is TEXT (it has no decimal type).
async fn decimal_copy(
    db: &TestDb,
    name: &str,
    amounts: &[&str],
    target_type: &str,
) -> (String, PathBuf) {
    let (src, dst) = (
        db.table(&format!("{name}_src")),
        db.table(&format!("{name}_dst")),
    );
    let source_type = match db.backend {
        Backend::Sqlite => "TEXT",
        _ => "DECIMAL(30,10)",
    };
    let id = id_type(db.backend);
    db.exec(&format!(
        "CREATE TABLE {src} (id {id} PRIMARY KEY, amount {source_type})"
    ))
    .await;
    db.exec(&format!(
        "CREATE TABLE {dst} (id {id} PRIMARY KEY, amount {target_type})"
    ))
    .await;
    let rows: Vec<String> = amounts
        .iter()
        .enumerate()
        .map(|(i, a)| format!("({}, {})", i + 1, literal(db.backend, Kind::Dec, Some(a))))
        .collect();
    insert(db, &src, "id, amount", &rows).await;
    let plan = copy_plan(
        db,
        &format!("{}_{name}", db.tag),
        "",
        &[format!(
            "name = \"copy\"\ntable = \"{src}\"\nkey = \"id\"\ninto = \"{dst}\""
        )],
    );
    (dst, plan)
}

/// A decimal wider than the target's precision fails the run, named by godwit before the
/// database would round or refuse it,
/// naming the step and key range; nothing of its batch is written.
/// (SQLite is left out: it has no decimal precision to exceed.)
async fn decimal_overflow_fails(backend: Backend) {
    let db = db_for(backend).await;
    let (dst, plan) =
        decimal_copy(&db, "overflow", &["1.5", "123456.123", "2"], "NUMERIC(5,2)").await;
    let out = run_plan(&plan);
    assert_eq!(out.code, Some(1), "{out}");
    // godwit refuses the value before the database would round or refuse it.
    assert!(
        out.stderr.contains("column amount") && out.stderr.contains("does not fit numeric(5,2)"),
        "{out}"
    );
    assert!(
        out.stderr.contains("step \"copy\"") && out.stderr.contains("keys 1..=3"),
        "{out}"
    );
    assert_eq!(db.scalar(&format!("SELECT COUNT(*) FROM {dst}")).await, 0);
    assert_eq!(status_json(&plan)["state"], "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decimal_overflow_fails_on_postgres() {
    decimal_overflow_fails(Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decimal_overflow_fails_on_mariadb() {
    decimal_overflow_fails(Backend::MySql).await
}

/// With `on_row_error = "skip"`, the row whose decimal the target cannot hold becomes a dead
/// letter and the other rows are copied.
async fn decimal_overflow_skipped(backend: Backend) {
    let db = db_for(backend).await;
    let (dst, plan) = decimal_copy(
        &db,
        "overflow_skip",
        &["1.5", "123456.123", "2"],
        "NUMERIC(5,2)",
    )
    .await;
    let text = std::fs::read_to_string(&plan).expect("plan");
    std::fs::write(
        &plan,
        text.replace("[defaults]\n", "[defaults]\non_row_error = \"skip\"\n"),
    )
    .expect("plan");
    let out = run_plan(&plan);
    assert_eq!(out.code, Some(0), "{out}");
    let ids = snapshot(&db, &format!("SELECT id FROM {dst} ORDER BY id")).await;
    assert_eq!(
        ids,
        vec![vec![Some("1".to_string())], vec![Some("3".to_string())]]
    );
    let out = gw(&["dead-letters", path_str(&plan), "--json"]);
    let letters: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(letters.len(), 1, "{out}");
    assert_eq!(letters[0]["key"], "2", "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decimal_overflow_skipped_on_postgres() {
    decimal_overflow_skipped(Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decimal_overflow_skipped_on_mariadb() {
    decimal_overflow_skipped(Backend::MySql).await
}

/// A decimal with more fractional digits than the target column keeps is refused rather
/// than rounded: 123.456 into NUMERIC(5,2) would become 123.46; on SQLite a column declared
/// DECIMAL has NUMERIC affinity and would keep 12345678901234567890.0123456789 as the REAL
/// 1.23456789012346e+19.
async fn decimal_rounding_refused(backend: Backend) {
    let db = db_for(backend).await;
    let (amount, target_type) = match backend {
        Backend::Sqlite => ("12345678901234567890.0123456789", "DECIMAL(30,10)"),
        _ => ("123.456", "NUMERIC(5,2)"),
    };
    let (dst, plan) = decimal_copy(&db, "rounding", &["1.5", amount], target_type).await;
    let out = run_plan(&plan);
    let stored = snapshot(
        &db,
        &format!(
            "SELECT CAST(amount AS {}) FROM {dst} WHERE id = 2",
            if backend == Backend::MySql {
                "CHAR"
            } else {
                "TEXT"
            }
        ),
    )
    .await;
    assert_eq!(
        out.code,
        Some(1),
        "{amount} was stored as {stored:?}: {out}"
    );
    assert!(stored.is_empty(), "{stored:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decimal_rounding_refused_on_postgres() {
    decimal_rounding_refused(Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decimal_rounding_refused_on_mariadb() {
    decimal_rounding_refused(Backend::MySql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decimal_rounding_refused_on_sqlite() {
    decimal_rounding_refused(Backend::Sqlite).await
}

/// The tables of the row-error tests: `nums (id, n INT, label)` with keys 1..=6 and
/// `blobs (id, payload bytes)` with keys 1..=4, key 3 not UTF-8; the targets `{name}_dst`
/// have the same columns with `payload` as text.
async fn row_error_tables(db: &TestDb) -> (String, String) {
    let backend = db.backend;
    let (nums, blobs) = (db.table("nums"), db.table("blobs"));
    let id = id_type(backend);
    let bytes = match backend {
        Backend::Postgres => "BYTEA",
        _ => "BLOB",
    };
    let opts = table_options(backend);
    db.exec(&format!(
        "CREATE TABLE {nums} (id {id} PRIMARY KEY, n INT, label VARCHAR(20)){opts}"
    ))
    .await;
    let rows: Vec<String> = (1..=6)
        .map(|k| format!("({k}, {}, 'n{k}')", k * 10))
        .collect();
    insert(db, &nums, "id, n, label", &rows).await;
    db.exec(&format!(
        "CREATE TABLE {blobs} (id {id} PRIMARY KEY, payload {bytes}){opts}"
    ))
    .await;
    // "plain", "é", 0xff 0xfe (not UTF-8), "ok".
    let rows: Vec<String> = ["706c61696e", "c3a9", "fffe", "6f6b"]
        .iter()
        .enumerate()
        .map(|(i, hex)| format!("({}, {})", i + 1, literal(backend, Kind::Bytes, Some(hex))))
        .collect();
    insert(db, &blobs, "id, payload", &rows).await;
    (nums, blobs)
}

/// Creates the targets `{nums}_{suffix}` and `{blobs}_{suffix}`.
async fn row_error_targets(db: &TestDb, nums: &str, blobs: &str, suffix: &str) {
    let id = id_type(db.backend);
    let opts = table_options(db.backend);
    db.exec(&format!(
        "CREATE TABLE {nums}_{suffix} (id {id} PRIMARY KEY, n INT, label VARCHAR(20)){opts}"
    ))
    .await;
    db.exec(&format!(
        "CREATE TABLE {blobs}_{suffix} (id {id} PRIMARY KEY, payload TEXT){opts}"
    ))
    .await;
}

const ABC_FOR_KEY_4: &str = "lua = '''\nfunction transform(row)\n  if row.id == 4 then row.n = \"abc\" end\n  return row\nend\n'''";

/// Text into an integer column fails the run naming the column and the key; so do bytes that
/// are not UTF-8 into a text column. With `on_row_error = "skip"` those rows are listed by
/// `dead-letters` and every other row is copied.
async fn row_errors_fail_or_become_dead_letters(backend: Backend) {
    let db = db_for(backend).await;
    let (nums, blobs) = row_error_tables(&db).await;
    row_error_targets(&db, &nums, &blobs, "fail").await;
    row_error_targets(&db, &nums, &blobs, "skip").await;

    // Text returned for an integer column.
    let plan = copy_plan(
        &db,
        &format!("{}_abc", db.tag),
        "",
        &[format!(
            "name = \"numbers\"\ntable = \"{nums}\"\nkey = \"id\"\ninto = \"{nums}_fail\"\n{ABC_FOR_KEY_4}"
        )],
    );
    let out = run_plan(&plan);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr.contains("key 4")
            && out.stderr.contains("column n")
            && out.stderr.contains("abc"),
        "the error names neither the key nor the column: {out}"
    );
    assert_eq!(
        db.scalar(&format!("SELECT COUNT(*) FROM {nums}_fail"))
            .await,
        0
    );

    // Bytes that are not UTF-8 into a text column.
    let plan = copy_plan(
        &db,
        &format!("{}_utf8", db.tag),
        "",
        &[format!(
            "name = \"bytes\"\ntable = \"{blobs}\"\nkey = \"id\"\ninto = \"{blobs}_fail\""
        )],
    );
    let out = run_plan(&plan);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr.contains("key 3")
            && out.stderr.contains("column payload")
            && out.stderr.contains("UTF-8"),
        "{out}"
    );
    assert_eq!(
        db.scalar(&format!("SELECT COUNT(*) FROM {blobs}_fail"))
            .await,
        0
    );

    // The same with on_row_error = "skip": the rest is copied, the refused rows are listed.
    let plan = copy_plan(
        &db,
        &format!("{}_skip", db.tag),
        "on_row_error = \"skip\"",
        &[
            format!(
                "name = \"numbers\"\ntable = \"{nums}\"\nkey = \"id\"\ninto = \"{nums}_skip\"\n{ABC_FOR_KEY_4}"
            ),
            format!("name = \"bytes\"\ntable = \"{blobs}\"\nkey = \"id\"\ninto = \"{blobs}_skip\""),
        ],
    );
    let out = run_plan(&plan);
    assert_eq!(out.code, Some(0), "{out}");
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        snapshot(
            &db,
            &format!("SELECT id, n, label FROM {nums}_skip ORDER BY id")
        )
        .await,
        [1, 2, 3, 5, 6]
            .iter()
            .map(|k| vec![
                s(&k.to_string()),
                s(&(k * 10).to_string()),
                s(&format!("n{k}"))
            ])
            .collect::<Vec<_>>()
    );
    assert_eq!(
        snapshot(
            &db,
            &format!("SELECT id, payload FROM {blobs}_skip ORDER BY id")
        )
        .await,
        vec![
            vec![s("1"), s("plain")],
            vec![s("2"), s("\u{e9}")],
            vec![s("4"), s("ok")]
        ]
    );
    let out = gw(&["dead-letters", path_str(&plan), "--json"]);
    assert_eq!(out.code, Some(0), "{out}");
    let mut letters: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    letters.sort_by_key(|l| l["step"].as_str().unwrap_or_default().to_string());
    assert_eq!(letters.len(), 2, "{out}");
    assert_eq!(letters[0]["step"], "bytes", "{out}");
    assert_eq!(letters[0]["key"], "3", "{out}");
    let error = letters[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("payload") && error.contains("UTF-8"),
        "{out}"
    );
    assert_eq!(letters[1]["step"], "numbers", "{out}");
    assert_eq!(letters[1]["key"], "4", "{out}");
    let error = letters[1]["error"].as_str().unwrap_or_default();
    assert!(error.contains("column n") && error.contains("abc"), "{out}");
    let status = status_json(&plan);
    assert_eq!(status["state"], "done", "{status}");
    for step in status["steps"].as_array().expect("steps") {
        assert_eq!(step["rows_skipped"], 1, "{status}");
    }
}

// --- 3. on_conflict ---------------------------------------------------------------------------

/// `on_conflict` on a target already holding key 5 (`old`) and key 100 (`theirs`): "error"
/// fails with the database's duplicate-key code and writes nothing of the batch holding 5,
/// "ignore" keeps the old row, "update" overwrites it; rows the source lacks stay.
async fn on_conflict_modes(backend: Backend) {
    let db = db_for(backend).await;
    let src = db.table("conflict_src");
    let id = id_type(backend);
    let opts = table_options(backend);
    db.exec(&format!(
        "CREATE TABLE {src} (id {id} PRIMARY KEY, v VARCHAR(20) NOT NULL){opts}"
    ))
    .await;
    let rows: Vec<String> = (1..=10).map(|k| format!("({k}, 'new{k}')")).collect();
    insert(&db, &src, "id, v", &rows).await;
    let s = |v: &str| Some(v.to_string());
    for mode in ["error", "ignore", "update"] {
        let dst = db.table(&format!("conflict_{mode}"));
        db.exec(&format!(
            "CREATE TABLE {dst} (id {id} PRIMARY KEY, v VARCHAR(20) NOT NULL){opts}"
        ))
        .await;
        db.exec(&format!(
            "INSERT INTO {dst} (id, v) VALUES (5, 'old'), (100, 'theirs')"
        ))
        .await;
        let plan = copy_plan(
            &db,
            &format!("{}_{mode}", db.tag),
            "batch_size = 4",
            &[format!(
                "name = \"copy\"\ntable = \"{src}\"\nkey = \"id\"\ninto = \"{dst}\"\non_conflict = \"{mode}\""
            )],
        );
        let out = run_plan(&plan);
        let rows = snapshot(&db, &format!("SELECT id, v FROM {dst} ORDER BY id")).await;
        let get = |k: i64| {
            rows.iter()
                .find(|r| r[0] == s(&k.to_string()))
                .map(|r| r[1].clone().unwrap_or_default())
        };
        assert_eq!(get(100).as_deref(), Some("theirs"), "{mode}: {rows:?}");
        match mode {
            "error" => {
                assert_eq!(out.code, Some(1), "{out}");
                let codes: &[&str] = match backend {
                    Backend::Postgres => &["[23505]"],
                    Backend::MySql => &["[1062]"],
                    // SQLITE_CONSTRAINT_PRIMARYKEY, or _UNIQUE.
                    Backend::Sqlite => &["[1555]", "[2067]"],
                };
                assert!(codes.iter().any(|c| out.stderr.contains(c)), "{out}");
                assert!(out.stderr.contains("keys 5..=8"), "{out}");
                assert_eq!(get(5).as_deref(), Some("old"), "{rows:?}");
                // The batch holding key 5 rolled back whole.
                for k in 6..=8 {
                    assert_eq!(get(k), None, "key {k} of the failed batch: {rows:?}");
                }
            }
            _ => {
                assert_eq!(out.code, Some(0), "{mode}: {out}");
                let five = if mode == "ignore" { "old" } else { "new5" };
                let mut wanted: Vec<Vec<Option<String>>> = (1..=10)
                    .map(|k| {
                        let v = if k == 5 {
                            five.to_string()
                        } else {
                            format!("new{k}")
                        };
                        vec![s(&k.to_string()), Some(v)]
                    })
                    .collect();
                wanted.push(vec![s("100"), s("theirs")]);
                assert_eq!(rows, wanted, "{mode}");
                // Verify agrees: the target keeps its own key 100, and "ignore" kept a row
                // that differs from the source.
                let (code, json) = verify_json(&plan);
                assert_eq!(code, Some(1), "{json}");
                let found: Vec<&str> = json["steps"][0]["differences"]
                    .as_array()
                    .expect("differences")
                    .iter()
                    .filter_map(|d| d["first_difference"].as_str())
                    .collect();
                let mut wanted = vec!["key 100: in the target only"];
                if mode == "ignore" {
                    wanted.insert(0, "key 5: v: source \"new5\", target \"old\"");
                }
                assert_eq!(found, wanted, "{json}");
            }
        }
    }
}

// --- 4. kill -9 ---------------------------------------------------------------------------------

/// A copy killed with SIGKILL at random moments, again and again, then resumed until it
/// exits 0: the target equals the source, no key is there twice, and `verify` agrees.
async fn kill_9_during_copy(source: Backend, target: Backend) {
    kill_9_during(Dbs::new(source, target).await).await
}

async fn kill_9_during(dbs: Dbs) {
    const ROWS: i64 = 4000;
    let (s, t) = (dbs.source(), dbs.target());
    let (source, target) = (s.backend, t.backend);
    let (src, dst) = (s.table("killed_src"), t.table("killed_dst"));
    let table = |db: &TestDb, name: &str| {
        let amount = match db.backend {
            Backend::Sqlite => "TEXT",
            _ => "DECIMAL(12,2)",
        };
        format!(
            "CREATE TABLE {name} (id {} PRIMARY KEY, v VARCHAR(40) NOT NULL, amount {amount}){}",
            id_type(db.backend),
            table_options(db.backend)
        )
    };
    s.exec(&table(s, &src)).await;
    t.exec(&table(t, &dst)).await;
    // A fast machine must not finish the copy between two kills.
    // Slow writes, whatever path the copy takes (an in-database `INSERT … SELECT`, binary
    // COPY, multi-row inserts).
    common::slow_writes(
        t,
        &dst,
        common::RowCost {
            mysql_sleep: "0.002",
            sqlite_spin: 150,
        },
    )
    .await;
    // Sparse keys, so that a batch's range is not its row count.
    let rows: Vec<String> = (1..=ROWS)
        .map(|k| {
            let amount = format!("{}.{:02}", k * 7, k % 100);
            format!(
                "({}, 'v{k} \u{e9}', {})",
                k * 3,
                literal(s.backend, Kind::Dec, Some(&amount))
            )
        })
        .collect();
    insert(s, &src, "id, v, amount", &rows).await;
    let plan = copy_plan(
        t,
        &format!("{}_killed", t.tag),
        "batch_size = 20\nlease = \"1s\"",
        &[format!(
            "name = \"copy\"\n{}table = \"{src}\"\nkey = \"id\"\ninto = \"{dst}\"",
            dbs.source_line()
        )],
    );
    let args = ["run", path_str(&plan), "--concurrency", "2", "--quiet"];
    let mut watch = t.conn().await;
    let count_sql = format!("SELECT COUNT(*) FROM {dst}");
    let mut rng = rand::rng();
    let mut kills = 0;
    let mut killed_at = Vec::new();
    let mut finished = false;
    for _ in 0..12 {
        let before = watch.query(&count_sql, &[]).await.expect("count")[0]
            .get(0)
            .as_i64();
        let mut child = KillOnDrop(spawn_watched(&args));
        let deadline = Instant::now() + Duration::from_secs(30);
        if rng.random_bool(0.3) {
            // Anywhere, startup and claims included.
            let until = Instant::now() + Duration::from_millis(rng.random_range(0..250));
            while Instant::now() < until && child.alive() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        } else {
            // After at least one more batch committed, a little later.
            loop {
                let now = watch.query(&count_sql, &[]).await.expect("count")[0]
                    .get(0)
                    .as_i64();
                if now > before || !child.alive() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "no batch committed in 30 s: {}",
                    child.output_so_far()
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..30))).await;
        }
        if !child.alive() {
            let code = child.finish(Duration::from_secs(5));
            assert_eq!(code, Some(0), "{}", child.output_so_far());
            finished = true;
            break;
        }
        child.0.child.kill().expect("kill -9");
        let _ = child.0.child.wait();
        kills += 1;
        killed_at.push(
            watch.query(&count_sql, &[]).await.expect("count")[0]
                .get(0)
                .as_i64(),
        );
    }
    assert!(
        kills >= 3,
        "only {kills} kills: the copy finished too soon to be interrupted"
    );
    eprintln!("{source:?} -> {target:?}: rows copied at each kill: {killed_at:?}");
    // Some kills hit a copy under way, or this test proved nothing.
    assert!(
        killed_at
            .iter()
            .filter(|n| n.is_some_and(|n| n > 0 && n < ROWS))
            .count()
            >= 2,
        "rows copied at each kill: {killed_at:?}"
    );
    if !finished {
        let out = gw(&["run", path_str(&plan), "--quiet"]);
        assert_eq!(out.code, Some(0), "after {kills} kills: {out}");
    }
    let got = t
        .query(&format!("SELECT COUNT(*), COUNT(DISTINCT id) FROM {dst}"))
        .await;
    assert_eq!(
        (got[0][0].as_i64(), got[0][1].as_i64()),
        (Some(ROWS), Some(ROWS)),
        "after kills at {killed_at:?}"
    );
    let contents = |db: &TestDb, table: &str| {
        let (id, amount) = match db.backend {
            Backend::Postgres => ("id::text".to_string(), "amount::text".to_string()),
            Backend::MySql => (
                "CAST(id AS CHAR)".to_string(),
                "CAST(amount AS CHAR)".to_string(),
            ),
            Backend::Sqlite => ("CAST(id AS TEXT)".to_string(), "amount".to_string()),
        };
        format!("SELECT {id}, v, {amount} FROM {table} ORDER BY {table}.id")
    };
    let normal_rows = |rows: Vec<Vec<Option<String>>>| -> Vec<Vec<Option<String>>> {
        rows.into_iter()
            .map(|mut r| {
                r[2] = r[2].take().map(|a| decimal(&a));
                r
            })
            .collect()
    };
    let from = normal_rows(snapshot(s, &contents(s, &src)).await);
    let into = normal_rows(snapshot(t, &contents(t, &dst)).await);
    assert_eq!(from.len(), ROWS as usize);
    if let Some(i) = (0..from.len()).find(|&i| from.get(i) != into.get(i)) {
        panic!(
            "after {kills} kills, row {i} differs: source {:?}, target {:?}",
            from.get(i),
            into.get(i)
        );
    }
    let out = gw(&["verify", path_str(&plan)]);
    assert_eq!(out.code, Some(0), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mariadb_to_postgres() {
    kill_9_during_copy(Backend::MySql, Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_sqlite_to_sqlite() {
    kill_9_during_copy(Backend::Sqlite, Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_postgres_to_mariadb() {
    kill_9_during_copy(Backend::Postgres, Backend::MySql).await
}

/// Within one PostgreSQL database: one `INSERT … SELECT` per batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_within_postgres() {
    kill_9_during_copy(Backend::Postgres, Backend::Postgres).await
}

/// PostgreSQL named as its own source: rows undecoded through binary COPY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_postgres_to_postgres_binary() {
    kill_9_during(Dbs::named(Backend::Postgres).await).await
}

// --- 5. verify ------------------------------------------------------------------------------------

/// `verify` after a good copy exits 0; after one target row changed, one deleted and rows
/// added below and above the source's keys it exits 1 and names each range that differs and
/// its first difference, in text and in JSON.
async fn verify_reports_each_difference(source: Backend, target: Backend) {
    let dbs = Dbs::new(source, target).await;
    let (s, t) = (dbs.source(), dbs.target());
    let (src, dst) = (s.table("verify_src"), t.table("verify_dst"));
    for (db, name) in [(s, &src), (t, &dst)] {
        let amount = match db.backend {
            Backend::Sqlite => "TEXT",
            _ => "DECIMAL(12,2)",
        };
        db.exec(&format!(
            "CREATE TABLE {name} (id {} PRIMARY KEY, v VARCHAR(40) NOT NULL, amount {amount}){}",
            id_type(db.backend),
            table_options(db.backend)
        ))
        .await;
    }
    let rows: Vec<String> = (1..=1000)
        .map(|k| {
            format!(
                "({k}, 'v{k}', {})",
                literal(s.backend, Kind::Dec, Some(&format!("{k}.25")))
            )
        })
        .collect();
    insert(s, &src, "id, v, amount", &rows).await;
    let plan = copy_plan(
        t,
        &format!("{}_verify", t.tag),
        "batch_size = 100",
        &[format!(
            "name = \"copy\"\n{}table = \"{src}\"\nkey = \"id\"\ninto = \"{dst}\"",
            dbs.source_line()
        )],
    );
    let out = run_plan(&plan);
    assert_eq!(out.code, Some(0), "{out}");
    let out = gw(&["verify", path_str(&plan)]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("same"), "{out}");
    let (code, json) = verify_json(&plan);
    assert_eq!(code, Some(0), "{json}");
    assert_eq!(json["ok"], true, "{json}");
    assert_eq!(json["plan"], format!("{}_verify", t.tag), "{json}");
    let step = &json["steps"][0];
    assert_eq!(step["step"], "copy", "{json}");
    assert_eq!(step["ranges"], 10, "{json}");
    assert_eq!(step["source_rows"], 1000, "{json}");
    assert_eq!(step["target_rows"], 1000, "{json}");
    assert_eq!(step["differences"], serde_json::json!([]), "{json}");

    let amount = |a: &str| literal(t.backend, Kind::Dec, Some(a));
    t.exec(&format!("UPDATE {dst} SET v = 'tampered' WHERE id = 150"))
        .await;
    t.exec(&format!("DELETE FROM {dst} WHERE id = 720")).await;
    t.exec(&format!(
        "INSERT INTO {dst} (id, v, amount) VALUES (5000, 'above', {}), (-3, 'below', {})",
        amount("1"),
        amount("2")
    ))
    .await;

    let out = gw(&["verify", path_str(&plan)]);
    assert_eq!(out.code, Some(1), "{out}");
    for wanted in [
        "keys up to 100",
        "key -3: in the target only",
        "after 100 up to 200",
        "key 150: v: source \"v150\", target \"tampered\"",
        "after 700 up to 800",
        "key 720: missing in the target",
        "after 900",
        "key 5000: in the target only",
    ] {
        assert!(out.stdout.contains(wanted), "no {wanted:?} in: {out}");
    }
    let (code, json) = verify_json(&plan);
    assert_eq!(code, Some(1), "{json}");
    assert_eq!(json["ok"], false, "{json}");
    let step = &json["steps"][0];
    assert_eq!(step["source_rows"], 1000, "{json}");
    assert_eq!(step["target_rows"], 1001, "{json}");
    let found: Vec<(serde_json::Value, serde_json::Value, serde_json::Value)> = step["differences"]
        .as_array()
        .expect("differences")
        .iter()
        .map(|d| {
            (
                d["after"].clone(),
                d["through"].clone(),
                d["first_difference"].clone(),
            )
        })
        .collect();
    use serde_json::json;
    assert_eq!(
        found,
        vec![
            (
                json!(null),
                json!("100"),
                json!("key -3: in the target only")
            ),
            (
                json!("100"),
                json!("200"),
                json!("key 150: v: source \"v150\", target \"tampered\"")
            ),
            (
                json!("700"),
                json!("800"),
                json!("key 720: missing in the target")
            ),
            (
                json!("900"),
                json!(null),
                json!("key 5000: in the target only")
            ),
        ],
        "{json}"
    );
    for d in step["differences"].as_array().expect("differences") {
        assert_ne!(d["source_hash"], d["target_hash"], "{d}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_each_difference_postgres() {
    verify_reports_each_difference(Backend::Postgres, Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_each_difference_mariadb_to_sqlite() {
    verify_reports_each_difference(Backend::MySql, Backend::Sqlite).await
}

/// A copy that failed on a row the target cannot hold left that row out of the target; the
/// source and the target differ, and `verify` must say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_counts_rows_the_copy_could_not_write() {
    let db = db_for(Backend::Postgres).await;
    let (nums, blobs) = row_error_tables(&db).await;
    row_error_targets(&db, &nums, &blobs, "dst").await;
    // Key 3, not UTF-8, is the last key: it is alone in its batch.
    db.exec(&format!("DELETE FROM {blobs} WHERE id = 4")).await;
    let plan = copy_plan(
        &db,
        &format!("{}_unfit", db.tag),
        "batch_size = 2",
        &[format!(
            "name = \"bytes\"\ntable = \"{blobs}\"\nkey = \"id\"\ninto = \"{blobs}_dst\""
        )],
    );
    let out = run_plan(&plan);
    assert_eq!(out.code, Some(1), "{out}");
    // Keys 1 and 2 were copied; the batch of key 3 failed.
    assert_eq!(
        db.scalar(&format!("SELECT COUNT(*) FROM {blobs}_dst"))
            .await,
        2
    );
    let (code, json) = verify_json(&plan);
    assert_eq!(code, Some(1), "{json}");
    assert_eq!(json["ok"], false, "{json}");
}

/// Issue 11: SQL NULL and the text `'NULL'` swapped between two rows of the target is a
/// difference, on PostgreSQL's in-database hash path and on the row-by-row path.
async fn r11_verify_tells_null_from_text(source: Backend, target: Backend) {
    let dbs = Dbs::new(source, target).await;
    let (s, t) = (dbs.source(), dbs.target());
    let (src, dst) = (s.table("nulltext_src"), t.table("nulltext_dst"));
    for (db, name) in [(s, &src), (t, &dst)] {
        db.exec(&format!(
            "CREATE TABLE {name} (id {} PRIMARY KEY, v TEXT){}",
            id_type(db.backend),
            table_options(db.backend)
        ))
        .await;
    }
    insert(
        s,
        &src,
        "id, v",
        &["(1, 'NULL')".into(), "(2, NULL)".into()],
    )
    .await;
    let plan = copy_plan(
        t,
        &format!("{}_nulltext", t.tag),
        "",
        &[format!(
            "name = \"copy\"\n{}table = \"{src}\"\nkey = \"id\"\ninto = \"{dst}\"",
            dbs.source_line()
        )],
    );
    let out = run_plan(&plan);
    assert_eq!(out.code, Some(0), "{out}");
    let out = gw(&["verify", path_str(&plan)]);
    assert_eq!(out.code, Some(0), "{out}");
    t.exec(&format!("UPDATE {dst} SET v = NULL WHERE id = 1"))
        .await;
    t.exec(&format!("UPDATE {dst} SET v = 'NULL' WHERE id = 2"))
        .await;
    let out = gw(&["verify", path_str(&plan)]);
    assert_eq!(out.code, Some(1), "NULL and 'NULL' swapped places: {out}");
    assert!(
        out.stdout
            .contains("key 1: v: source \"NULL\", target NULL"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_verify_tells_null_from_text_within_postgres() {
    r11_verify_tells_null_from_text(Backend::Postgres, Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_verify_tells_null_from_text_sqlite_to_postgres() {
    r11_verify_tells_null_from_text(Backend::Sqlite, Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_verify_tells_null_from_text_mariadb_to_sqlite() {
    r11_verify_tells_null_from_text(Backend::MySql, Backend::Sqlite).await
}

/// Issue 11: a change to any one copied column of one target row is found, and named, on
/// the row-by-row path and on PostgreSQL's in-database path (where the database hashes the
/// rows): no column is left out of the comparison. Each change is undone before the next, and
/// `verify` then agrees again.
async fn r11_verify_names_each_changed_column(source: Backend, target: Backend) {
    let dbs = Dbs::new(source, target).await;
    let (s, t) = (dbs.source(), dbs.target());
    let (src, dst) = (s.table("eachcol_src"), t.table("eachcol_dst"));
    let types = |b: Backend| match b {
        Backend::Sqlite => ("INTEGER", "TEXT", "TEXT", "TEXT"),
        _ => ("INT", "VARCHAR(20)", "DECIMAL(10,2)", "DATE"),
    };
    for (db, name) in [(s, &src), (t, &dst)] {
        let (a, b, c, d) = types(db.backend);
        db.exec(&format!(
            "CREATE TABLE {name} (id {} PRIMARY KEY, a {a}, b {b}, c {c}, d {d}){}",
            id_type(db.backend),
            table_options(db.backend)
        ))
        .await;
    }
    let rows: Vec<String> = (1..=3)
        .map(|k| format!("({k}, {k}0, 'b{k}', '{k}.50', '2024-01-0{k}')"))
        .collect();
    insert(s, &src, "id, a, b, c, d", &rows).await;
    let plan = copy_plan(
        t,
        &format!("{}_eachcol", t.tag),
        "",
        &[format!(
            "name = \"copy\"\n{}table = \"{src}\"\nkey = \"id\"\ninto = \"{dst}\"",
            dbs.source_line()
        )],
    );
    let out = run_plan(&plan);
    assert_eq!(out.code, Some(0), "{out}");
    let out = gw(&["verify", path_str(&plan)]);
    assert_eq!(out.code, Some(0), "{out}");
    for (column, changed, original) in [
        ("a", "21", "20"),
        ("b", "'b2x'", "'b2'"),
        ("c", "'2.51'", "'2.50'"),
        ("d", "'2024-02-02'", "'2024-01-02'"),
    ] {
        t.exec(&format!(
            "UPDATE {dst} SET {column} = {changed} WHERE id = 2"
        ))
        .await;
        let out = gw(&["verify", path_str(&plan)]);
        assert_eq!(out.code, Some(1), "column {column} changed: {out}");
        assert!(
            out.stdout.contains(&format!("key 2: {column}: source ")),
            "column {column} is not named: {out}"
        );
        t.exec(&format!(
            "UPDATE {dst} SET {column} = {original} WHERE id = 2"
        ))
        .await;
    }
    let out = gw(&["verify", path_str(&plan)]);
    assert_eq!(out.code, Some(0), "every change undone: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_verify_names_each_changed_column_within_postgres() {
    r11_verify_names_each_changed_column(Backend::Postgres, Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_verify_names_each_changed_column_row_by_row() {
    r11_verify_names_each_changed_column(Backend::MySql, Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_verify_names_each_changed_column_within_sqlite() {
    r11_verify_names_each_changed_column(Backend::Sqlite, Backend::Sqlite).await
}

/// Issue 11: rows a copy with `on_row_error = "skip"` set aside did not arrive: `verify`
/// counts them with the source's rows, apart, lists their keys, and exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_verify_lists_rows_set_aside() {
    let db = db_for(Backend::Postgres).await;
    let (src, dst) = (db.table("aside_src"), db.table("aside_dst"));
    db.exec(&format!(
        "CREATE TABLE {src} (id BIGINT PRIMARY KEY, v TEXT)"
    ))
    .await;
    db.exec(&format!(
        "CREATE TABLE {dst} (id BIGINT PRIMARY KEY, v VARCHAR(3))"
    ))
    .await;
    insert(
        &db,
        &src,
        "id, v",
        &[
            "(1, 'a')".into(),
            "(2, 'too long')".into(),
            "(3, 'c')".into(),
        ],
    )
    .await;
    let plan = copy_plan(
        &db,
        &format!("{}_aside", db.tag),
        "on_row_error = \"skip\"",
        &[format!(
            "name = \"copy\"\ntable = \"{src}\"\nkey = \"id\"\ninto = \"{dst}\""
        )],
    );
    let out = run_plan(&plan);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(db.scalar(&format!("SELECT COUNT(*) FROM {dst}")).await, 2);
    let out = gw(&["verify", path_str(&plan)]);
    assert_eq!(out.code, Some(1), "a row set aside did not arrive: {out}");
    assert!(
        out.stdout.contains(
            "1 ranges, 3 rows in the source (1 set aside as a dead letter), 2 in the target"
        ),
        "{out}"
    );
    assert!(
        out.stdout
            .contains("set aside: key 2: cannot be written: column v"),
        "{out}"
    );
    let (code, json) = verify_json(&plan);
    assert_eq!(code, Some(1), "{json}");
    assert_eq!(json["ok"], false, "{json}");
    let step = &json["steps"][0];
    assert_eq!(step["source_rows"], 3, "{json}");
    assert_eq!(step["set_aside"], 1, "{json}");
    assert_eq!(step["target_rows"], 2, "{json}");
    assert!(
        out.stdout
            .contains("all keys: 3 source rows (1 set aside), 2 target rows"),
        "{out}"
    );
    // The rows written agree; the row set aside is listed on its own.
    assert_eq!(
        step["differences"][0]["first_difference"],
        serde_json::Value::Null,
        "{json}"
    );
    let aside = &step["differences"][0]["set_aside"];
    assert_eq!(aside.as_array().map(Vec::len), Some(1), "{json}");
    assert_eq!(aside[0]["key"], "2", "{json}");
    assert!(
        aside[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("column v")),
        "{json}"
    );
}

// --- issue 11: bad source values are row errors ----------------------------------------------

/// A copy from `source` into `target` of `(id, {column})` rows (`values` are the source's SQL
/// literals for keys 1, 2, 3; the target column is `target_type`), run three ways: failing
/// (exit 1 naming key 2 and the column), skipping (key 2 a dead letter, keys 1 and 3 copied)
/// and, when given, with `convert` (exit 0, every row copied). Returns the rows the converting
/// copy wrote, `(id, value as text)`.
#[allow(clippy::too_many_arguments)]
async fn bad_source_value(
    source: Backend,
    target: Backend,
    column: &str,
    source_type: &str,
    values: [&str; 3],
    target_type: &str,
    problem: &str,
    convert: Option<&str>,
) -> Vec<Vec<Option<String>>> {
    let dbs = Dbs::new(source, target).await;
    let (s, t) = (dbs.source(), dbs.target());
    let src = s.table("badval_src");
    s.exec(&format!(
        "CREATE TABLE {src} (id {} PRIMARY KEY, {column} {source_type}){}",
        id_type(s.backend),
        table_options(s.backend)
    ))
    .await;
    let rows: Vec<String> = (1..=3)
        .map(|k| format!("({k}, {})", values[k - 1]))
        .collect();
    insert(s, &src, &format!("id, {column}"), &rows).await;
    let mut modes = vec![("fail", "on_row_error = \"fail\"".to_string())];
    modes.push(("skip", "on_row_error = \"skip\"".to_string()));
    if let Some(rule) = convert {
        modes.push(("convert", format!("convert = {{ {column} = \"{rule}\" }}")));
    }
    let mut converted = Vec::new();
    for (mode, setting) in modes {
        let dst = t.table(&format!("badval_{mode}"));
        t.exec(&format!(
            "CREATE TABLE {dst} (id {} PRIMARY KEY, {column} {target_type}){}",
            id_type(t.backend),
            table_options(t.backend)
        ))
        .await;
        let plan = copy_plan(
            t,
            &format!("{}_badval_{mode}", t.tag),
            "",
            &[format!(
                "name = \"copy\"\n{}table = \"{src}\"\nkey = \"id\"\ninto = \"{dst}\"\n{setting}",
                dbs.source_line()
            )],
        );
        let out = run_plan(&plan);
        let ids = format!("SELECT id FROM {dst} ORDER BY id");
        match mode {
            "fail" => {
                assert_eq!(out.code, Some(1), "{out}");
                assert!(
                    out.stderr.contains("key 2")
                        && out.stderr.contains(&format!("column {column}"))
                        && out.stderr.contains(problem),
                    "the error names neither the key, the column nor {problem:?}: {out}"
                );
            }
            "skip" => {
                assert_eq!(out.code, Some(0), "{out}");
                let s = |v: &str| Some(v.to_string());
                assert_eq!(snapshot(t, &ids).await, vec![vec![s("1")], vec![s("3")]]);
                let letters = dead_letters_by_key(&plan);
                assert_eq!(letters.len(), 1, "{letters:?}");
                assert_eq!(letters[0].0, 2, "{letters:?}");
                assert!(
                    letters[0].1.contains(&format!("column {column}"))
                        && letters[0].1.contains(problem),
                    "{letters:?}"
                );
                // `verify` reads the source as the copy does: the row set aside is listed.
                let (code, json) = verify_json(&plan);
                assert_eq!(code, Some(1), "{json}");
                assert_eq!(json["steps"][0]["set_aside"], 1, "{json}");
                assert_eq!(
                    json["steps"][0]["differences"][0]["set_aside"][0]["key"], "2",
                    "{json}"
                );
            }
            _ => {
                assert_eq!(out.code, Some(0), "{out}");
                let out = gw(&["verify", path_str(&plan)]);
                assert_eq!(out.code, Some(0), "{out}");
                let cast = match t.backend {
                    Backend::MySql => format!("CAST({column} AS CHAR)"),
                    Backend::Postgres => format!("{column}::text"),
                    Backend::Sqlite => column.to_string(),
                };
                converted = snapshot(t, &format!("SELECT id, {cast} FROM {dst} ORDER BY id")).await;
            }
        }
    }
    converted
}

/// Issue 11: a PostgreSQL BC date, which MariaDB's `DATE` cannot hold, is a row error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_bc_date_into_mariadb_is_a_row_error() {
    let converted = bad_source_value(
        Backend::Postgres,
        Backend::MySql,
        "d",
        "DATE",
        ["'2024-01-02'", "'0044-03-15 BC'", "'2024-01-03'"],
        "DATE",
        "years 1 to 9999",
        Some("null"),
    )
    .await;
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        converted,
        vec![
            vec![s("1"), s("2024-01-02")],
            vec![s("2"), None],
            vec![s("3"), s("2024-01-03")]
        ]
    );
}

/// Issue 11: a MariaDB date with a zero month (`2024-00-15`), which no other database holds,
/// is a row error; `convert = { d = "null" }` writes NULL instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_mariadb_zero_month_date_is_a_row_error() {
    let converted = bad_source_value(
        Backend::MySql,
        Backend::Postgres,
        "d",
        "DATE",
        ["'2024-01-02'", "'2024-00-15'", "'2024-01-03'"],
        "DATE",
        "2024-00-15",
        Some("null"),
    )
    .await;
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        converted,
        vec![
            vec![s("1"), s("2024-01-02")],
            vec![s("2"), None],
            vec![s("3"), s("2024-01-03")]
        ]
    );
}

/// Issue 11: SQLite text that is not UTF-8 is a row error into PostgreSQL `text`, and
/// `convert = { v = "replace" }` (the remedy docs/copies.md gives) writes it with U+FFFD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_sqlite_text_not_utf8_is_a_row_error() {
    let converted = bad_source_value(
        Backend::Sqlite,
        Backend::Postgres,
        "v",
        "TEXT",
        ["'a'", "CAST(X'61FF62' AS TEXT)", "'c'"],
        "TEXT",
        "UTF-8",
        Some("replace"),
    )
    .await;
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        converted,
        vec![
            vec![s("1"), s("a")],
            vec![s("2"), s("a\u{fffd}b")],
            vec![s("3"), s("c")]
        ]
    );
}

/// Issue 11: a NaN into a SQLite `REAL` column, which SQLite would store as NULL, is a row
/// error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_nan_into_sqlite_real_is_a_row_error() {
    bad_source_value(
        Backend::Postgres,
        Backend::Sqlite,
        "f",
        "DOUBLE PRECISION",
        ["1.5", "'NaN'", "2.5"],
        "REAL",
        "NaN",
        None,
    )
    .await;
}

// --- 6. query with a join; fan-out and skip ---------------------------------------------------

/// The history-building story on PostgreSQL: `orders (id, status)`, `order_items (id,
/// order_id, sku, qty)` with 0 to 3 items per order, an empty `history` with its own identity
/// key, and a plan copying the join of paid and shipped orders with their items into it.
/// Returns the plan, the history table and the join's rows (order_id, status, sku, qty),
/// sorted.
async fn history_plan(db: &TestDb) -> (PathBuf, String, Vec<Vec<Option<String>>>) {
    let (orders, items, history) = (
        db.table("orders"),
        db.table("order_items"),
        db.table("history"),
    );
    db.exec(&format!(
        "CREATE TABLE {orders} (id BIGINT PRIMARY KEY, status TEXT NOT NULL)"
    ))
    .await;
    db.exec(&format!(
        "CREATE TABLE {items} (id BIGINT PRIMARY KEY, order_id BIGINT NOT NULL REFERENCES {orders} (id), \
         sku TEXT NOT NULL, qty INT NOT NULL)"
    ))
    .await;
    db.exec(&format!(
        "CREATE TABLE {history} (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
         order_id BIGINT NOT NULL, status TEXT NOT NULL, sku TEXT NOT NULL, qty INT NOT NULL)"
    ))
    .await;
    const STATUSES: [&str; 4] = ["paid", "shipped", "cancelled", "pending"];
    let order_rows: Vec<String> = (1..=400)
        .map(|o| format!("({o}, '{}')", STATUSES[o % 4]))
        .collect();
    insert(db, &orders, "id, status", &order_rows).await;
    // 0 to 3 items per order; item ids in another order than the orders'.
    let mut item_rows = Vec::new();
    let mut wanted = Vec::new();
    for o in 1..=400usize {
        for n in 0..(o * 7 % 4) {
            let id = 100_000 - (o * 4 + n);
            let (sku, qty) = (format!("sku-{o}-{n}"), (o + n) % 9 + 1);
            item_rows.push(format!("({id}, {o}, '{sku}', {qty})"));
            if matches!(STATUSES[o % 4], "paid" | "shipped") {
                wanted.push(vec![
                    Some(o.to_string()),
                    Some(STATUSES[o % 4].to_string()),
                    Some(sku),
                    Some(qty.to_string()),
                ]);
            }
        }
    }
    insert(db, &items, "id, order_id, sku, qty", &item_rows).await;
    wanted.sort();
    let plan = copy_plan(
        db,
        &format!("{}_history", db.tag),
        "batch_size = 50",
        &[format!(
            "name = \"history\"\ntable = \"{orders}\"\nkey = \"id\"\ninto = \"{history}\"\n\
             query = \"SELECT o.id AS order_id, o.status, i.sku, i.qty FROM {orders} o JOIN {items} i \
             ON i.order_id = o.id WHERE o.id BETWEEN :start AND :end AND o.status IN ('paid','shipped')\""
        )],
    );
    (plan, history, wanted)
}

/// A `query` joining orders and their items fills a history table with its own identity key:
/// the history holds exactly the join's rows, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_with_a_join_builds_history() {
    let db = db_for(Backend::Postgres).await;
    let (plan, history, wanted) = history_plan(&db).await;
    let (orders, items) = (db.table("orders"), db.table("order_items"));
    let out = run_plan(&plan);
    assert_eq!(out.code, Some(0), "{out}");
    let mut got = snapshot(
        &db,
        &format!("SELECT order_id::text, status, sku, qty::text FROM {history}"),
    )
    .await;
    got.sort();
    assert!(!wanted.is_empty());
    assert_eq!(got.len(), wanted.len(), "rows in the history");
    assert_eq!(got, wanted);
    // The same join computed by the database.
    let mut joined = snapshot(
        &db,
        &format!(
            "SELECT o.id::text, o.status, i.sku, i.qty::text FROM {orders} o JOIN {items} i \
             ON i.order_id = o.id WHERE o.status IN ('paid','shipped')"
        ),
    )
    .await;
    joined.sort();
    assert_eq!(got, joined);
    // Running the finished plan again adds nothing.
    let out = run_plan(&plan);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        db.scalar(&format!("SELECT COUNT(*) FROM {history}")).await,
        wanted.len() as i64
    );
}

/// `verify` after the history copy: the history's rows do not carry `id`, so verify refuses
/// the step (exit 2) and says to name the column that does; with `target_key = "order_id"`
/// it compares the history with the join and finds them equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_query_copy_into_its_own_key() {
    let db = db_for(Backend::Postgres).await;
    let (plan, _, _) = history_plan(&db).await;
    let out = run_plan(&plan);
    assert_eq!(out.code, Some(0), "{out}");
    let out = gw(&["verify", path_str(&plan)]);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stderr.contains("step \"history\""), "{out}");
    assert!(out.stderr.contains("target_key"), "{out}");
    let text = std::fs::read_to_string(&plan).unwrap();
    let keyed = text.replacen("into = ", "target_key = \"order_id\"\ninto = ", 1);
    std::fs::write(&plan, keyed).unwrap();
    let out = gw(&["verify", path_str(&plan)]);
    assert_eq!(out.code, Some(0), "{out}");
}

/// A Lua transform fans one source row out into two target rows and skips others (nil):
/// SQLite orders into MariaDB order lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lua_fans_out_and_skips() {
    let dbs = Dbs::new(Backend::Sqlite, Backend::MySql).await;
    let (s, t) = (dbs.source(), dbs.target());
    let (orders, lines) = (s.table("orders"), t.table("lines"));
    s.exec(&format!(
        "CREATE TABLE {orders} (id INTEGER PRIMARY KEY, status TEXT NOT NULL, a_sku TEXT NOT NULL, b_sku TEXT NOT NULL)"
    ))
    .await;
    t.exec(&format!(
        "CREATE TABLE {lines} (id BIGINT AUTO_INCREMENT PRIMARY KEY, order_id BIGINT NOT NULL, \
         sku VARCHAR(40) NOT NULL){}",
        table_options(Backend::MySql)
    ))
    .await;
    let rows: Vec<String> = (1..=300)
        .map(|o| {
            let status = if o % 5 == 0 { "cancelled" } else { "paid" };
            format!("({o}, '{status}', 'a-{o}', 'b-{o}')")
        })
        .collect();
    insert(s, &orders, "id, status, a_sku, b_sku", &rows).await;
    let plan = copy_plan(
        t,
        &format!("{}_lines", t.tag),
        "batch_size = 64",
        &[format!(
            "name = \"lines\"\n{}table = \"{orders}\"\nkey = \"id\"\ninto = \"{lines}\"\nlua = '''\n\
             function transform(row)\n  if row.status == \"cancelled\" then return nil end\n  \
             return {{ {{order_id = row.id, sku = row.a_sku}}, {{order_id = row.id, sku = row.b_sku}} }}\n\
             end\n'''",
            dbs.source_line()
        )],
    );
    let out = run_plan(&plan);
    assert_eq!(out.code, Some(0), "{out}");
    let mut got = snapshot(
        t,
        &format!("SELECT CAST(order_id AS CHAR), sku FROM {lines}"),
    )
    .await;
    got.sort();
    let mut wanted: Vec<Vec<Option<String>>> = (1..=300)
        .filter(|o| o % 5 != 0)
        .flat_map(|o| ["a", "b"].map(|p| vec![Some(o.to_string()), Some(format!("{p}-{o}"))]))
        .collect();
    wanted.sort();
    assert_eq!(got.len(), 480);
    assert_eq!(got, wanted);
    let status = status_json(&plan);
    assert_eq!(status["state"], "done", "{status}");
    // A skipped row is not a refused one.
    assert_eq!(status["steps"][0]["rows_skipped"], 0, "{status}");
}

// --- 7. refusals before anything runs -----------------------------------------------------------

/// A missing target table, a source key without an index and a `columns` entry the source
/// lacks are refused with exit 2 before anything runs, each message naming the plan file,
/// line and column of the setting; nothing is copied and no run is stored.
async fn refusals_before_anything_runs(source: Backend, target: Backend) {
    let dbs = Dbs::new(source, target).await;
    let (s, t) = (dbs.source(), dbs.target());
    let (src, noidx, dst) = (s.table("ref_src"), s.table("ref_noidx"), t.table("ref_dst"));
    let id = id_type(source);
    s.exec(&format!(
        "CREATE TABLE {src} (id {id} PRIMARY KEY, v VARCHAR(20))"
    ))
    .await;
    s.exec(&format!(
        "CREATE TABLE {noidx} (code INT NOT NULL, v VARCHAR(20))"
    ))
    .await;
    for table in [&src, &noidx] {
        let key = if table == &src { "id" } else { "code" };
        s.exec(&format!(
            "INSERT INTO {table} ({key}, v) VALUES (1, 'a'), (2, 'b'), (3, 'c')"
        ))
        .await;
    }
    t.exec(&format!(
        "CREATE TABLE {dst} (id {} PRIMARY KEY, v VARCHAR(20))",
        id_type(target)
    ))
    .await;
    let absent = t.table("absent");
    let cases = [
        (
            "missing_target",
            format!("table = \"{src}\"\nkey = \"id\"\ninto = \"{absent}\""),
            "into = ",
            vec![absent.clone(), "does not exist".to_string()],
        ),
        (
            "missing_index",
            format!("table = \"{noidx}\"\nkey = \"code\"\ninto = \"{dst}\""),
            "key = ",
            vec!["code".to_string(), "index".to_string()],
        ),
        (
            "missing_column",
            format!(
                "table = \"{src}\"\nkey = \"id\"\ncolumns = [\"id\", \"nope\"]\ninto = \"{dst}\""
            ),
            "columns = ",
            vec!["nope".to_string()],
        ),
    ];
    for (case, body, setting, words) in cases {
        let name = format!("{}_{case}", t.tag);
        let plan = copy_plan(
            t,
            &name,
            "",
            &[format!("name = \"copy\"\n{}{body}", dbs.source_line())],
        );
        let out = run_plan(&plan);
        assert_eq!(out.code, Some(2), "{case}: {out}");
        let at = format!("{}:{}:", path_str(&plan), line_of(&plan, setting));
        assert!(out.stderr.contains(&at), "{case}: no {at:?} in: {out}");
        assert!(out.stderr.contains("step \"copy\""), "{case}: {out}");
        for word in words {
            assert!(out.stderr.contains(&word), "{case}: no {word:?} in: {out}");
        }
        assert_eq!(
            t.scalar(&format!("SELECT COUNT(*) FROM {dst}")).await,
            0,
            "{case}"
        );
        assert_eq!(runs_stored(t, &name).await, 0, "{case}: a run was stored");
    }
}

/// A copy whose source rows have a column the target table lacks is refused before anything
/// runs, like a missing target table, rather than failing (or, with `on_row_error = "skip"`,
/// turning every row into a dead letter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_lacking_a_source_column_is_refused() {
    let db = db_for(Backend::Postgres).await;
    let (src, dst) = (db.table("wide"), db.table("narrow"));
    db.exec(&format!(
        "CREATE TABLE {src} (id BIGINT PRIMARY KEY, v TEXT, extra TEXT)"
    ))
    .await;
    db.exec(&format!(
        "INSERT INTO {src} VALUES (1, 'a', 'x'), (2, 'b', 'y')"
    ))
    .await;
    db.exec(&format!(
        "CREATE TABLE {dst} (id BIGINT PRIMARY KEY, v TEXT)"
    ))
    .await;
    let name = format!("{}_narrow", db.tag);
    let plan = copy_plan(
        &db,
        &name,
        "on_row_error = \"skip\"",
        &[format!(
            "name = \"copy\"\ntable = \"{src}\"\nkey = \"id\"\ninto = \"{dst}\""
        )],
    );
    let out = run_plan(&plan);
    assert_eq!(out.code, Some(2), "{out}");
    let at = format!("{}:{}:", path_str(&plan), line_of(&plan, "into = "));
    assert!(
        out.stderr.contains(&at) && out.stderr.contains("extra"),
        "{out}"
    );
    assert_eq!(runs_stored(&db, &name).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_mariadb_to_postgres() {
    refusals_before_anything_runs(Backend::MySql, Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_sqlite_to_mariadb() {
    refusals_before_anything_runs(Backend::Sqlite, Backend::MySql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_postgres_to_sqlite() {
    refusals_before_anything_runs(Backend::Postgres, Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_within_postgres() {
    refusals_before_anything_runs(Backend::Postgres, Backend::Postgres).await
}

per_backend!(
    row_errors_fail_or_become_dead_letters,
    on_conflict_modes,
    rows_the_database_refuses_are_skipped
);

/// Rows the target database itself refuses (a CHECK constraint, a second value for a UNIQUE
/// column) with `on_row_error = "skip"`: the batch is written again row by row in savepoints,
/// the refused rows become dead letters with the database's own error code, the others are
/// copied. (On PostgreSQL this copy runs as `INSERT … SELECT` until a batch is refused.)
async fn rows_the_database_refuses_are_skipped(backend: Backend) {
    let db = db_for(backend).await;
    let (src, dst) = (db.table("refused_src"), db.table("refused_dst"));
    let id = id_type(backend);
    let opts = table_options(backend);
    db.exec(&format!(
        "CREATE TABLE {src} (id {id} PRIMARY KEY, v INTEGER NOT NULL, u VARCHAR(20)){opts}"
    ))
    .await;
    db.exec(&format!(
        "CREATE TABLE {dst} (id {id} PRIMARY KEY, v INTEGER NOT NULL CHECK (v >= 0), \
         u VARCHAR(20) UNIQUE){opts}"
    ))
    .await;
    let rows: Vec<String> = (1..=20i64)
        .map(|k| {
            let v = if k == 5 || k == 13 { -k } else { k };
            let u = if k == 7 || k == 8 {
                "dup".to_string()
            } else {
                format!("u{k}")
            };
            format!("({k}, {v}, '{u}')")
        })
        .collect();
    insert(&db, &src, "id, v, u", &rows).await;
    let plan = copy_plan(
        &db,
        &format!("{}_refused", db.tag),
        "batch_size = 6\non_row_error = \"skip\"",
        &[format!(
            "name = \"copy\"\ntable = \"{src}\"\nkey = \"id\"\ninto = \"{dst}\""
        )],
    );
    let out = run_plan(&plan);
    assert_eq!(out.code, Some(0), "{out}");
    let kept: Vec<i64> = (1..=20).filter(|k| ![5, 8, 13].contains(k)).collect();
    let got = snapshot(&db, &format!("SELECT id FROM {dst} ORDER BY id")).await;
    let wanted: Vec<Vec<Option<String>>> = kept.iter().map(|k| vec![Some(k.to_string())]).collect();
    assert_eq!(got, wanted);
    let (check, unique): (&[&str], &[&str]) = match backend {
        Backend::Postgres => (&["[23514]"], &["[23505]"]),
        // MariaDB's CHECK failure, MySQL 8's; a duplicate entry.
        Backend::MySql => (&["[4025]", "[3819]"], &["[1062]"]),
        // SQLITE_CONSTRAINT_CHECK; SQLITE_CONSTRAINT_UNIQUE.
        Backend::Sqlite => (&["[275]"], &["[2067]"]),
    };
    let letters = dead_letters_by_key(&plan);
    let keys: Vec<i64> = letters.iter().map(|(k, _)| *k).collect();
    assert_eq!(keys, [5, 8, 13], "{letters:?}");
    for (key, error) in &letters {
        let codes = if *key == 8 { unique } else { check };
        assert!(
            codes.iter().any(|c| error.contains(c)) && error.contains(&dst),
            "key {key}: {error}"
        );
    }
    let status = status_json(&plan);
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["steps"][0]["rows_skipped"], 3, "{status}");
}

/// A text longer than the target's `varchar(n)` is a bad row: with `on_row_error = "skip"`
/// it becomes a dead letter naming the column, and the other rows are copied.
async fn text_too_long_skipped(backend: Backend) {
    let db = db_for(backend).await;
    let (src, dst) = (db.table("long_src"), db.table("long_dst"));
    let id = id_type(db.backend);
    db.exec(&format!(
        "CREATE TABLE {src} (id {id} PRIMARY KEY, name VARCHAR(50))"
    ))
    .await;
    db.exec(&format!(
        "CREATE TABLE {dst} (id {id} PRIMARY KEY, name VARCHAR(5))"
    ))
    .await;
    insert(
        &db,
        &src,
        "id, name",
        &[
            "(1, 'Anh')".into(),
            "(2, 'Nguyễn Văn')".into(),
            "(3, 'Zoë')".into(),
        ],
    )
    .await;
    let plan = copy_plan(
        &db,
        &format!("{}_long", db.tag),
        "on_row_error = \"skip\"",
        &[format!(
            "name = \"copy\"\ntable = \"{src}\"\nkey = \"id\"\ninto = \"{dst}\""
        )],
    );
    let out = run_plan(&plan);
    assert_eq!(out.code, Some(0), "{out}");
    let ids = snapshot(&db, &format!("SELECT id FROM {dst} ORDER BY id")).await;
    assert_eq!(
        ids,
        vec![vec![Some("1".to_string())], vec![Some("3".to_string())]]
    );
    let out = gw(&["dead-letters", path_str(&plan), "--json"]);
    let letters: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(letters.len(), 1, "{out}");
    assert_eq!(letters[0]["key"], "2", "{out}");
    let error = letters[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("column name") && error.contains("10 characters"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_too_long_skipped_on_postgres() {
    text_too_long_skipped(Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_too_long_skipped_on_mariadb() {
    text_too_long_skipped(Backend::MySql).await
}

/// Rows far wider than `max_batch_bytes` are read and written in slices: a batch of 40 rows of
/// 200 KB each under a 1 MiB cap arrives whole and exact, and `verify` agrees.
async fn wide_rows_are_copied_in_slices(backend: Backend) {
    let db = db_for(backend).await;
    let (src, dst) = (db.table("wide_src"), db.table("wide_dst"));
    let id = id_type(db.backend);
    let text = match backend {
        Backend::MySql => "LONGTEXT",
        _ => "TEXT",
    };
    for t in [&src, &dst] {
        db.exec(&format!(
            "CREATE TABLE {t} (id {id} PRIMARY KEY, body {text})"
        ))
        .await;
    }
    let repeat = match backend {
        Backend::Postgres => "repeat",
        Backend::MySql => "REPEAT",
        Backend::Sqlite => "",
    };
    for i in 1..=40 {
        let body = match backend {
            // SQLite has no repeat(): a blob of zeros, replaced by the digit, cast to text.
            Backend::Sqlite => format!("replace(hex(zeroblob(100000)), '0', '{}')", i % 10),
            _ => format!("{repeat}('{}', 200000)", i % 10),
        };
        db.exec(&format!(
            "INSERT INTO {src} (id, body) VALUES ({i}, {body})"
        ))
        .await;
    }
    let plan = copy_plan(
        &db,
        &format!("{}_wide", db.tag),
        "batch_size = 40\nmax_batch_bytes = \"1MiB\"",
        &[format!(
            "name = \"copy\"\ntable = \"{src}\"\nkey = \"id\"\ninto = \"{dst}\""
        )],
    );
    let out = run_plan(&plan);
    assert_eq!(out.code, Some(0), "{out}");
    let length = match backend {
        Backend::MySql => "CHAR_LENGTH",
        _ => "LENGTH",
    };
    let same = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM {src} s JOIN {dst} d ON d.id = s.id \
             WHERE d.body = s.body AND {length}(d.body) = 200000"
        ))
        .await;
    assert_eq!(same, 40);
    let out = gw(&["verify", path_str(&plan)]);
    assert_eq!(out.code, Some(0), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide_rows_are_copied_in_slices_on_postgres() {
    wide_rows_are_copied_in_slices(Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide_rows_are_copied_in_slices_on_mariadb() {
    wide_rows_are_copied_in_slices(Backend::MySql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide_rows_are_copied_in_slices_on_sqlite() {
    wide_rows_are_copied_in_slices(Backend::Sqlite).await
}

/// NULL reaches Lua as nil, which a table cannot hold: `return row` still copies the NULL,
/// rather than leaving the column to the target's default or, on update, its old value.
async fn nulls_survive_a_lua_copy(backend: Backend) {
    let db = db_for(backend).await;
    let (src, dst) = (db.table("nulls_src"), db.table("nulls_dst"));
    let id = id_type(db.backend);
    db.exec(&format!(
        "CREATE TABLE {src} (id {id} PRIMARY KEY, note VARCHAR(20), legacy VARCHAR(20))"
    ))
    .await;
    db.exec(&format!(
        "CREATE TABLE {dst} (id {id} PRIMARY KEY, note VARCHAR(20) DEFAULT 'default')"
    ))
    .await;
    insert(
        &db,
        &src,
        "id, note, legacy",
        &["(1, NULL, NULL)".into(), "(2, 'b', NULL)".into()],
    )
    .await;
    insert(&db, &dst, "id, note", &["(2, 'old')".into()]).await;
    let plan = copy_plan(
        &db,
        &format!("{}_nulls", db.tag),
        "",
        &[format!(
            "name = \"copy\"\ntable = \"{src}\"\nkey = \"id\"\ninto = \"{dst}\"\n\
             on_conflict = \"update\"\n\
             lua = '''function transform(row) return {{ id = row.id, note = row.note }} end'''"
        )],
    );
    let out = run_plan(&plan);
    assert_eq!(out.code, Some(0), "{out}");
    let rows = snapshot(&db, &format!("SELECT id, note FROM {dst} ORDER BY id")).await;
    assert_eq!(
        rows,
        vec![
            vec![Some("1".to_string()), None],
            vec![Some("2".to_string()), Some("b".to_string())],
        ],
        "a NULL is copied as NULL, not the default; `legacy`, which the target lacks, is not asked for"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nulls_survive_a_lua_copy_on_postgres() {
    nulls_survive_a_lua_copy(Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nulls_survive_a_lua_copy_on_mariadb() {
    nulls_survive_a_lua_copy(Backend::MySql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nulls_survive_a_lua_copy_on_sqlite() {
    nulls_survive_a_lua_copy(Backend::Sqlite).await
}

// --- 5. PostgreSQL's bulk paths ---------------------------------------------------------------

/// A plain copy into PostgreSQL takes one of three paths: within one database into columns
/// of exactly the source's types, one `INSERT … SELECT` per batch; from another database
/// (here the same one named as `source`), rows undecoded through binary COPY; when a column
/// differs, rows decoded, fitted and written with text COPY. All three keep every value:
/// those chrono cannot hold (`infinity`, `24:00:00`), NaN and infinite numerics, and the
/// characters COPY's text format escapes (a literal `\N` is text, not NULL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bulk_paths_keep_every_value() {
    let db = db_for(Backend::Postgres).await;
    let src = db.table("bulk_src");
    let columns = |text: &str| {
        format!(
            "id BIGINT PRIMARY KEY, ts TIMESTAMPTZ, d DATE, t TIME, n NUMERIC, \
             f DOUBLE PRECISION, s {text}, j JSONB, b BYTEA"
        )
    };
    db.exec(&format!("CREATE TABLE {src} ({})", columns("TEXT")))
        .await;
    let mut rows = vec![
        r#"(1, 'infinity', 'infinity', '24:00:00', 'NaN', 'NaN', E'carriage\rreturn',
            '{"a":[1,{"b":null}],"big":12345678901234567890}', '\x00ff')"#
            .to_string(),
        r#"(2, '-infinity', '-infinity', '00:00:00', '-0.000000000000000000000000000001', '-0',
            '\N', '[]', '\x')"#
            .to_string(),
        r#"(3, '2024-02-29 23:59:59.999999+00', '0001-01-01', '23:59:59.999999',
            '123456789012345678901234567890.5', 1e308, E'tab\there\\back\nline\\N', '{}', NULL)"#
            .to_string(),
        "(4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)".to_string(),
        r#"(5, '1999-12-31 23:59:59+00', '2000-01-01', '12:00:00.5', 'Infinity', '-Infinity',
            '', '"text"', '\x5c4e')"#
            .to_string(),
        r#"(6, '0001-01-01 00:00:00+00', '1900-02-28', '00:00:00.000001', '-Infinity', 'Infinity',
            'h\u00e9llo \u{1F600}', 'null', '\x0a09')"#
            .replace("\\u00e9", "\u{e9}")
            .replace("\\u{1F600}", "\u{1F600}"),
        // Before the common era, and past year 9999.
        r#"(7, '0044-03-15 12:00:00.5+00 BC', '0001-12-31 BC', '01:02:03', '0', '1', 'bc',
            '1', '\x00')"#
            .to_string(),
        r#"(8, '12345-06-07 08:09:10+00', '10000-01-01', '23:59:59', '1', '2', 'far', '2',
            '\x01')"#
            .to_string(),
    ];
    for k in 10..=40 {
        rows.push(format!(
            "({k}, timestamptz '2001-01-01 00:00:00+00' + {k} * interval '1 day 1.25 s', \
             date '2001-01-01' + {k}, time '00:00:00' + {k} * interval '1 minute', \
             {k}.{k}, {k}.5, 'row {k}', '{{\"k\":{k}}}', '\\x{k:02x}')"
        ));
    }
    insert(&db, &src, "id, ts, d, t, n, f, s, j, b", &rows).await;
    let shown = |table: &str| {
        format!(
            "SELECT id, ts::text, d::text, t::text, n::text, f::text, s, j::text, \
             encode(b, 'hex') FROM {table} ORDER BY id"
        )
    };
    let wanted = snapshot(&db, &shown(&src)).await;
    let source = format!("source = \"{}\"\n", db.url);
    for (name, text, source, path) in [
        (
            "in_database",
            "TEXT",
            "",
            "one INSERT ... SELECT per batch, within the database",
        ),
        (
            "binary",
            "TEXT",
            source.as_str(),
            "rows undecoded, binary COPY",
        ),
        (
            "text",
            "VARCHAR(100)",
            source.as_str(),
            "rows decoded and fitted, text COPY",
        ),
    ] {
        let dst = db.table(&format!("bulk_{name}"));
        db.exec(&format!("CREATE TABLE {dst} ({})", columns(text)))
            .await;
        let plan = copy_plan(
            &db,
            &format!("{}_bulk_{name}", db.tag),
            "batch_size = 7",
            &[format!(
                "name = \"copy\"\n{source}table = \"{src}\"\nkey = \"id\"\ninto = \"{dst}\""
            )],
        );
        // The debug log names the path the copy took.
        let mut cmd = godwit();
        cmd.args(["run", path_str(&plan)])
            .env("RUST_LOG", "godwit_batch=debug");
        let mut watched = KillOnDrop(spawn_watched_cmd(cmd));
        let code = watched.finish(Duration::from_secs(90));
        let stderr = watched.stderr_text();
        assert_eq!(code, Some(0), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("copy: {path}")),
            "{name}: {stderr}"
        );
        assert_same_rows(name, &snapshot(&db, &shown(&dst)).await, &wanted);
        let (code, json) = verify_json(&plan);
        assert_eq!(code, Some(0), "{name}: {json}");
        assert_eq!(
            json["steps"][0]["source_rows"],
            rows.len(),
            "{name}: {json}"
        );
        assert_eq!(
            json["steps"][0]["target_rows"],
            rows.len(),
            "{name}: {json}"
        );
        // Within one database the databases hash each side; then one changed value (a NaN
        // for an infinity) is still found, in its range, with its column.
        if name == "in_database" {
            let mut cmd = godwit();
            cmd.args(["verify", path_str(&plan)])
                .env("RUST_LOG", "godwit_batch=debug");
            let mut watched = KillOnDrop(spawn_watched_cmd(cmd));
            assert_eq!(watched.finish(Duration::from_secs(90)), Some(0));
            let stderr = watched.stderr_text();
            assert!(
                stderr.contains("verify: counts and hashes computed by the database"),
                "{stderr}"
            );
            db.exec(&format!("UPDATE {dst} SET n = 'NaN' WHERE id = 5"))
                .await;
            let (code, json) = verify_json(&plan);
            assert_eq!(code, Some(1), "{json}");
            let differences = json["steps"][0]["differences"].as_array().unwrap();
            assert_eq!(differences.len(), 1, "{json}");
            assert_eq!(
                differences[0]["first_difference"], "key 5: n: source \"Infinity\", target \"NaN\"",
                "{json}"
            );
        }
    }
}

/// `where` and `columns` hold on every PostgreSQL path: only the matching rows, only the
/// named columns (the target's other columns take their defaults).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_copies_keep_to_where_and_columns() {
    let db = db_for(Backend::Postgres).await;
    let src = db.table("subset_src");
    db.exec(&format!(
        "CREATE TABLE {src} (id BIGINT PRIMARY KEY, s TEXT NOT NULL, secret TEXT)"
    ))
    .await;
    // Batches of 150 matching rows: read in slices (64 rows first, then the rest).
    let rows: Vec<String> = (1..=600)
        .map(|k| format!("({k}, 's{k}', 'x{k}')"))
        .collect();
    insert(&db, &src, "id, s, secret", &rows).await;
    let wanted = snapshot(
        &db,
        &format!("SELECT id, s, 'none' FROM {src} WHERE id % 3 = 0 ORDER BY id"),
    )
    .await;
    assert_eq!(wanted.len(), 200);
    let source = format!("source = \"{}\"\n", db.url);
    for (name, text, source) in [
        ("in_database", "TEXT", ""),
        ("binary", "TEXT", source.as_str()),
        ("text", "VARCHAR(10)", source.as_str()),
    ] {
        let dst = db.table(&format!("subset_{name}"));
        db.exec(&format!(
            "CREATE TABLE {dst} (id BIGINT PRIMARY KEY, s {text} NOT NULL, \
             secret TEXT NOT NULL DEFAULT 'none')"
        ))
        .await;
        let plan = copy_plan(
            &db,
            &format!("{}_subset_{name}", db.tag),
            "batch_size = 150",
            &[format!(
                "name = \"copy\"\n{source}table = \"{src}\"\nkey = \"id\"\n\
                 columns = [\"id\", \"s\"]\nwhere = \"id % 3 = 0\"\ninto = \"{dst}\""
            )],
        );
        let out = run_plan(&plan);
        assert_eq!(out.code, Some(0), "{name}: {out}");
        let got = snapshot(&db, &format!("SELECT id, s, secret FROM {dst} ORDER BY id")).await;
        assert_eq!(got, wanted, "{name}");
    }
}

/// `COPY` writes neither into a view nor through `INSERT` rules (it ignores them): a copy into
/// an updatable view, or into a table whose rule sends rows elsewhere, inserts, whichever path
/// its types would allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_copies_into_views_and_ruled_tables_insert() {
    let db = db_for(Backend::Postgres).await;
    let src = db.table("viewed_src");
    db.exec(&format!(
        "CREATE TABLE {src} (id BIGINT PRIMARY KEY, v TEXT)"
    ))
    .await;
    let rows: Vec<String> = (1..=30).map(|k| format!("({k}, 'v{k}')")).collect();
    insert(&db, &src, "id, v", &rows).await;
    let wanted = snapshot(&db, &format!("SELECT id, v FROM {src} ORDER BY id")).await;
    let source = format!("source = \"{}\"\n", db.url);
    for (name, source) in [("in_database", ""), ("other", source.as_str())] {
        let (base, view) = (
            db.table(&format!("viewed_base_{name}")),
            db.table(&format!("viewed_view_{name}")),
        );
        let (ruled, redirected) = (
            db.table(&format!("ruled_{name}")),
            db.table(&format!("redirected_{name}")),
        );
        for table in [&base, &ruled, &redirected] {
            db.exec(&format!(
                "CREATE TABLE {table} (id BIGINT PRIMARY KEY, v TEXT)"
            ))
            .await;
        }
        db.exec(&format!("CREATE VIEW {view} AS SELECT id, v FROM {base}"))
            .await;
        db.exec(&format!(
            "CREATE RULE {ruled}_redirect AS ON INSERT TO {ruled} \
             DO INSTEAD INSERT INTO {redirected} VALUES (NEW.id, NEW.v)"
        ))
        .await;
        for (into, lands) in [(&view, &base), (&ruled, &redirected)] {
            let plan = copy_plan(
                &db,
                &format!("{}_{}", db.tag, into),
                "batch_size = 7",
                &[format!(
                    "name = \"copy\"\n{source}table = \"{src}\"\nkey = \"id\"\ninto = \"{into}\""
                )],
            );
            let out = run_plan(&plan);
            assert_eq!(out.code, Some(0), "{name} into {into}: {out}");
            let got = snapshot(&db, &format!("SELECT id, v FROM {lands} ORDER BY id")).await;
            assert_eq!(
                got, wanted,
                "{name}: rows copied into {into} land in {lands}"
            );
        }
        assert_eq!(db.scalar(&format!("SELECT COUNT(*) FROM {ruled}")).await, 0);
    }
}

// --- 9. MySQL/MariaDB's bulk path ------------------------------------------------------------

/// Runs godwit with `RUST_LOG` set (the copy's path is logged at debug level).
fn gw_logged(args: &[&str], log: &str) -> Out {
    let mut cmd = godwit();
    cmd.args(args).env("RUST_LOG", log);
    let mut watched = KillOnDrop(spawn_watched_cmd(cmd));
    let code = watched.finish(Duration::from_secs(90));
    Out {
        code,
        stdout: watched.stdout_lines.join("\n"),
        stderr: watched.stderr_text(),
    }
}

const LOAD_DATA: &str = "rows decoded and fitted, LOAD DATA LOCAL INFILE";

/// A MariaDB table of every type the bulk path writes, with the values that its text format
/// must escape (tab, newline, carriage return, backslash, NUL, Ctrl-Z, a literal `\N`), NULLs,
/// extremes and fractions; and how each column is printed for comparing (by the database:
/// hex for bytes, CAST for the rest, the instant of a TIMESTAMP in seconds since 1970).
fn mariadb_bulk_table(name: &str) -> (String, Vec<String>, &'static str) {
    let create = format!(
        "CREATE TABLE {name} (id BIGINT PRIMARY KEY, i BIGINT, u BIGINT UNSIGNED, \
         d DECIMAL(30,10), f DOUBLE, t TEXT, v VARCHAR(20), b BLOB, vb VARBINARY(8), \
         j JSON, dt DATE, tm TIME(6), ts DATETIME(6), tz TIMESTAMP(6) NULL, flag BOOLEAN) \
         ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
    );
    let rows = vec![
        "(1, -9223372036854775808, 18446744073709551615, 12345678901234567890.0123456789, \
         1.7976931348623157e308, CONCAT('tab\\there', CHAR(10), 'nl\\rcr\\\\bs', CHAR(0), 'nul', \
         CHAR(26), 'z \\\\N \u{1F600}'), '\\\\N', X'00FF090A5C4E', X'', \
         '{\"a\":[1,{\"b\":null}],\"big\":12345678901234567890,\"s\":\"x\\\\\"y\\\\ttab\"}', \
         '2024-02-29', '838:59:59.999999', '2024-02-29 23:59:59.999999', \
         '2038-01-19 03:14:07.999999', 1)"
            .to_string(),
        "(2, 9223372036854775807, 0, -0.0000000001, -0.1, '', '', X'', X'00', '[]', \
         '1000-01-01', '-838:59:59.000001', '1000-01-01 00:00:00.000001', \
         '1970-01-01 00:00:01.000001', 0)"
            .to_string(),
        "(3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"
            .to_string(),
        "(4, 0, 1, 99999999999999999999.9999999999, 5e-324, 'N', 'h\u{e9}llo \u{1F469}\u{200D}\u{1F467}', \
         X'5C', X'0D0A1A', 'null', '9999-12-31', '00:00:00', '9999-12-31 23:59:59.999999', \
         '2000-06-01 12:00:00', 2)"
            .to_string(),
    ];
    let shown = "CAST(id AS CHAR), CAST(i AS CHAR), CAST(u AS CHAR), CAST(d AS CHAR), \
                 CAST(f AS CHAR), HEX(t), HEX(v), HEX(b), HEX(vb), JSON_COMPACT(j), CAST(dt AS CHAR), \
                 CAST(tm AS CHAR), CAST(ts AS CHAR), CAST(UNIX_TIMESTAMP(tz) AS CHAR), \
                 CAST(flag AS CHAR)";
    (create, rows, shown)
}

/// Into MariaDB, a copy whose rows pass through godwit is written with `LOAD DATA LOCAL
/// INFILE`, and every value arrives exactly as it was: escaped text, NUL and emoji, bytes,
/// NULLs, decimals with their scale, `DATETIME(6)` and `TIMESTAMP(6)` fractions (the same
/// instant), JSON, the extremes of BIGINT and BIGINT UNSIGNED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_bulk_path_keeps_every_value() {
    let db = db_for(Backend::MySql).await;
    let (src, dst) = (db.table("load_src"), db.table("load_dst"));
    let (create, rows, shown) = mariadb_bulk_table(&src);
    db.exec(&create).await;
    db.exec(&mariadb_bulk_table(&dst).0).await;
    db.exec(&format!("INSERT INTO {src} VALUES {}", rows.join(", ")))
        .await;
    // Ordinary rows enough for several batches and slices.
    db.exec(&format!(
        "INSERT INTO {src} (id, i, d, t, b, j, ts) SELECT seq, seq * 7, seq / 7, \
         CONCAT('row ', seq, '\\t\\\\'), UNHEX(HEX(seq)), JSON_OBJECT('k', seq), \
         TIMESTAMP('2001-01-01') + INTERVAL seq * 1001 MICROSECOND FROM seq_10_to_2000"
    ))
    .await;
    let plan = copy_plan(
        &db,
        &format!("{}_load", db.tag),
        "batch_size = 500",
        &[format!(
            "name = \"copy\"\ntable = \"{src}\"\nkey = \"id\"\ninto = \"{dst}\""
        )],
    );
    let out = gw_logged(&["run", path_str(&plan)], "godwit_batch=debug");
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stderr.contains(LOAD_DATA), "{out}");
    let from = snapshot(&db, &format!("SELECT {shown} FROM {src} ORDER BY id")).await;
    let into = snapshot(&db, &format!("SELECT {shown} FROM {dst} ORDER BY id")).await;
    assert_eq!(from.len(), 1995);
    // Some values the escaping must keep, as stored.
    assert_eq!(
        from[0][5].as_deref(),
        Some(
            "7461620968657265\
              0A6E6C0D63725C6273006E75\
              6C1A7A205C4E20F09F9880"
        )
    );
    assert_eq!(from[0][6].as_deref(), Some("5C4E"));
    for (i, (a, b)) in from.iter().zip(&into).enumerate() {
        assert_eq!(a, b, "row {i}");
    }
    assert_eq!(from.len(), into.len());
    let out = gw(&["verify", path_str(&plan)]);
    assert_eq!(out.code, Some(0), "{out}");
}

/// The first lines of `text` that hold `needle`, with the timing and progress left out.
fn lines_with<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.contains(needle)).collect()
}

/// A batch that LOAD DATA cannot write exactly (it would turn a duplicate key or an
/// out-of-range value into a warning and skip or clamp the row) is rolled back and written
/// with INSERT, which fails with the database's own error, the same as where the bulk path
/// is off (`local-infile=false`); nothing of the batch stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_bulk_bad_value_fails_as_insert_does() {
    let db = db_for(Backend::MySql).await;
    for (case, target, existing, needle) in [
        ("dup", "v INT", "(2, 0)", "1062"),
        ("range", "v TINYINT", "", "1264"),
    ] {
        let src = db.table(&format!("bad_{case}_src"));
        let dst = db.table(&format!("bad_{case}_dst"));
        db.exec(&format!(
            "CREATE TABLE {src} (id BIGINT PRIMARY KEY, v INT) ENGINE=InnoDB"
        ))
        .await;
        db.exec(&format!(
            "INSERT INTO {src} VALUES (1, 1), (2, 1000), (3, 3)"
        ))
        .await;
        let mut errors = Vec::new();
        for url in [db.url.clone(), format!("{}?local-infile=false", db.url)] {
            db.exec(&format!("DROP TABLE IF EXISTS {dst}")).await;
            db.exec(&format!(
                "CREATE TABLE {dst} (id BIGINT PRIMARY KEY, {target}) ENGINE=InnoDB"
            ))
            .await;
            if !existing.is_empty() {
                db.exec(&format!("INSERT INTO {dst} VALUES {existing}"))
                    .await;
            }
            let name = format!("{}_bad_{case}_{}", db.tag, errors.len());
            let plan = db.plan(
                &format!("{name}.toml"),
                &format!(
                    "name = \"{name}\"\ndatabase = \"{url}\"\n\n[[steps]]\nname = \"copy\"\n\
                     table = \"{src}\"\nkey = \"id\"\ninto = \"{dst}\"\n"
                ),
            );
            let out = gw_logged(
                &["run", path_str(&plan)],
                "warn,godwit_batch=debug,godwit_driver_mysql=debug",
            );
            assert_eq!(out.code, Some(1), "{case}: {out}");
            let bulk = !url.contains('?');
            // With the bulk path on, LOAD DATA ran and gave the slice back.
            assert_eq!(
                out.stderr
                    .contains("LOAD DATA did not load the rows exactly"),
                bulk,
                "{case}: {out}"
            );
            // The load was given back: the slice was written with INSERT.
            assert!(!out.stderr.contains(LOAD_DATA), "{case}: {out}");
            assert!(
                out.stderr
                    .contains("rows decoded and fitted, multi-row INSERT"),
                "{case}: {out}"
            );
            // The failed batch left nothing behind.
            let rows = db.scalar(&format!("SELECT COUNT(*) FROM {dst}")).await;
            assert_eq!(rows, i64::from(!existing.is_empty()), "{case}: {out}");
            let error: Vec<String> = lines_with(&out.stderr, needle)
                .into_iter()
                .map(|l| l.replace(&name, "PLAN"))
                .collect();
            assert!(!error.is_empty(), "{case} (bulk {bulk}): {out}");
            errors.push(error);
        }
        assert_eq!(errors[0], errors[1], "{case}: the same error either way");
    }
}

/// With the bulk path turned off on the client (`local-infile=false` in the URL), a copy into
/// MariaDB says so once, at warning level and without the password, and writes with INSERT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_bulk_path_refused_falls_back_to_insert() {
    let db = db_for(Backend::MySql).await;
    let (src, dst) = (db.table("refused_src"), db.table("refused_dst"));
    for t in [&src, &dst] {
        db.exec(&format!(
            "CREATE TABLE {t} (id BIGINT PRIMARY KEY, s TEXT, d DECIMAL(10,3)) ENGINE=InnoDB"
        ))
        .await;
    }
    db.exec(&format!(
        "INSERT INTO {src} SELECT seq, CONCAT('a\\tb', seq), seq / 1000 FROM seq_1_to_900"
    ))
    .await;
    let name = format!("{}_refused", db.tag);
    let url = format!("{}?local-infile=false", db.url);
    let plan = db.plan(
        &format!("{name}.toml"),
        &format!(
            "name = \"{name}\"\ndatabase = \"{url}\"\n\n[defaults]\nbatch_size = 100\n\n[[steps]]\nname = \"copy\"\ntable = \"{src}\"\nkey = \"id\"\n\
             into = \"{dst}\"\n"
        ),
    );
    // Several connections, one line.
    let out = gw_logged(
        &["run", path_str(&plan), "--concurrency", "3"],
        "warn,godwit_batch=debug",
    );
    assert_eq!(out.code, Some(0), "{out}");
    let said = lines_with(&out.stderr, "write with INSERT, not LOAD DATA");
    assert_eq!(said.len(), 1, "{out}");
    assert!(said[0].contains("local-infile off"), "{out}");
    if let Some(password) = common::password_of(&db.url) {
        assert!(!out.stderr.contains(&format!(":{password}@")), "{out}");
    }
    assert!(!out.stderr.contains(LOAD_DATA), "{out}");
    let same = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM {src} s JOIN {dst} d ON d.id = s.id AND d.s = s.s AND d.d = s.d"
        ))
        .await;
    assert_eq!(same, 900);
}
