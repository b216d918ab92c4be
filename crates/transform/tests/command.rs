//! Transforms run as external programs fed JSON lines: real Python programs written to a
//! temporary directory, driven through the public API as a step would drive them.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use godwit_driver::{Error, ErrorKind, Value};
use godwit_transform::{Limits, Outcome, Rows, Transform};
use serde_json::json;
use tempfile::TempDir;

fn limits(row_timeout: Duration) -> Limits {
    Limits {
        row_timeout,
        lua_memory: 64 << 20,
        max_line_bytes: 16 << 20,
    }
}

/// Writes `code` as `name` in `dir` and gives the command line that runs it, the script named
/// relative to `dir` (where the program runs).
fn python(dir: &TempDir, name: &str, code: &str) -> Vec<String> {
    std::fs::write(dir.path().join(name), code).unwrap();
    vec!["python3".to_string(), name.to_string()]
}

/// The Python interpreter itself, for tests with a tight `row_timeout` (which also covers the
/// program's start-up): `python3` on PATH may be a slow wrapper script (pyenv's shim).
fn python_exe() -> String {
    static EXE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    EXE.get_or_init(|| {
        let out = std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 runs");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    })
    .clone()
}

fn command(dir: &TempDir, name: &str, code: &str, row_timeout: Duration) -> Transform {
    Transform::command(
        python(dir, name, code),
        dir.path().to_path_buf(),
        limits(row_timeout),
    )
}

fn batch(columns: &[&str], rows: Vec<Vec<Value>>) -> Rows {
    Rows {
        columns: columns.iter().map(|c| c.to_string()).collect(),
        rows,
        bytes_columns: Arc::from([]),
    }
}

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

fn row_of(outcome: &Outcome) -> &[(String, Value)] {
    match outcome {
        Outcome::Row(row) => row,
        other => panic!("expected Outcome::Row, got {other:?}"),
    }
}

fn get<'a>(row: &'a [(String, Value)], name: &str) -> &'a Value {
    &row.iter()
        .find(|(c, _)| c == name)
        .unwrap_or_else(|| panic!("no column {name} in {row:?}"))
        .1
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Whether `pid` is a live process: not gone, and not a zombie waiting to be reaped (a killed
/// grandchild may linger as one until init collects it).
fn process_exists(pid: i64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) state …": the state follows the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

const SLOW: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// 1. A realistic program, kept across batches
// ---------------------------------------------------------------------------------------------

const PHONES: &str = r#"
import json
import os
import sys

pid = os.getpid()
# Relative to the directory godwit runs the program in.
with open("starts.log", "a") as log:
    log.write("%d\n" % pid)

for line in sys.stdin:
    row = json.loads(line)
    phone = row["phone"]
    if phone == "bad":
        answer = {"error": "bad phone for id %d" % row["id"]}
    elif phone is not None and len(phone) == 11 and phone.isdigit():
        answer = {"phone": "0" + phone[2:], "pid": pid}
    else:
        answer = None
    print(json.dumps(answer))
"#;

fn phone_of(i: i64) -> Value {
    match i % 10 {
        3 => text("bad"),
        5 => Value::Null,
        7 => text("0612"),
        _ => text(&format!("336{:08}", i)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_program_rewrites_phones_across_batches_started_once() {
    let dir = TempDir::new().unwrap();
    let t = command(&dir, "phones.py", PHONES, SLOW);
    let mut pids = Vec::new();
    for b in 0..4i64 {
        let ids: Vec<i64> = (b * 250..(b + 1) * 250).collect();
        let rows = ids
            .iter()
            .map(|&i| vec![Value::Int(i), phone_of(i)])
            .collect();
        let out = t.apply(batch(&["id", "phone"], rows)).await.unwrap();
        assert_eq!(out.len(), 250);
        for (&i, outcome) in ids.iter().zip(&out) {
            match i % 10 {
                3 => assert_eq!(
                    outcome,
                    &Outcome::Error(format!("bad phone for id {i}")),
                    "id {i}"
                ),
                5 | 7 => assert_eq!(outcome, &Outcome::Keep, "id {i}"),
                _ => {
                    let row = row_of(outcome);
                    let names: Vec<&str> = row.iter().map(|(c, _)| c.as_str()).collect();
                    assert_eq!(names, ["phone", "pid"], "columns in name order");
                    assert_eq!(get(row, "phone"), &text(&format!("06{:08}", i)), "id {i}");
                    let Value::Int(pid) = get(row, "pid") else {
                        panic!("pid is an integer: {row:?}");
                    };
                    pids.push(*pid);
                }
            }
        }
    }
    assert_eq!(pids.len(), 700);
    assert!(
        pids.iter().all(|p| *p == pids[0]),
        "one program served every batch"
    );
    let starts = lines(&dir.path().join("starts.log"));
    assert_eq!(starts, [pids[0].to_string()], "the program started once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_batch_gives_no_outcomes() {
    let dir = TempDir::new().unwrap();
    let t = command(&dir, "phones.py", PHONES, SLOW);
    let out = t.apply(batch(&["id", "phone"], vec![])).await.unwrap();
    assert!(out.is_empty());
    // And the program still answers the next batch.
    let out = t
        .apply(batch(
            &["id", "phone"],
            vec![vec![Value::Int(1), text("bad")]],
        ))
        .await
        .unwrap();
    assert_eq!(out, vec![Outcome::Error("bad phone for id 1".into())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_batches_each_get_their_own_program() {
    let dir = TempDir::new().unwrap();
    let t = Arc::new(command(&dir, "phones.py", PHONES, SLOW));
    let mut set = tokio::task::JoinSet::new();
    for b in 0..4i64 {
        let t = t.clone();
        set.spawn(async move {
            let ids: Vec<i64> = (b * 100..(b + 1) * 100).collect();
            let rows = ids
                .iter()
                .map(|&i| vec![Value::Int(i), phone_of(i)])
                .collect();
            (ids, t.apply(batch(&["id", "phone"], rows)).await)
        });
    }
    while let Some(joined) = set.join_next().await {
        let (ids, out) = joined.unwrap();
        let out = out.unwrap();
        assert_eq!(out.len(), ids.len());
        for (i, outcome) in ids.into_iter().zip(out) {
            match i % 10 {
                3 => assert_eq!(outcome, Outcome::Error(format!("bad phone for id {i}"))),
                5 | 7 => assert_eq!(outcome, Outcome::Keep),
                _ => assert_eq!(
                    get(row_of(&outcome), "phone"),
                    &text(&format!("06{:08}", i))
                ),
            }
        }
    }
    let starts = lines(&dir.path().join("starts.log"));
    assert!(
        (1..=4).contains(&starts.len()),
        "at most one program per batch in flight: {starts:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Values on the wire
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_travel_as_base64_and_come_back_as_bytes() {
    let dir = TempDir::new().unwrap();
    let t = command(
        &dir,
        "bytes.py",
        r#"
import base64, json, sys
for line in sys.stdin:
    row = json.loads(line)
    if row["id"] == 3:
        print(json.dumps({"b": "not base64!"}))
        continue
    b = base64.b64decode(row["b"])
    print(json.dumps({
        "b": base64.b64encode(b[::-1]).decode(),
        "len": len(b),
        "t": row["t"],
        "t_b64": base64.b64encode(row["t"].encode()).decode(),
        "other": row["other"],
    }))
"#,
        SLOW,
    );
    let tricky = "a\nb\r\u{2028}😀\"\\\te\u{301}";
    let out = t
        .apply(batch(
            &["id", "b", "t", "other"],
            vec![
                vec![
                    Value::Int(1),
                    Value::Bytes(vec![0, 255, b'\n', 13]),
                    text(tricky),
                    Value::Null,
                ],
                vec![Value::Int(2), Value::Bytes(vec![]), text(""), Value::Null],
                vec![Value::Int(3), Value::Bytes(vec![1]), text(""), Value::Null],
            ],
        ))
        .await
        .unwrap();
    assert_eq!(out.len(), 3);
    let first = row_of(&out[0]);
    assert_eq!(get(first, "b"), &Value::Bytes(vec![13, b'\n', 255, 0]));
    assert_eq!(get(first, "len"), &Value::Int(4));
    assert_eq!(
        get(first, "t"),
        &text(tricky),
        "text survives the JSON lines"
    );
    // Base64 in a column that did not arrive as bytes stays text.
    assert_eq!(
        get(first, "t_b64"),
        &text("YQpiDeKAqPCfmIAiXAllzIE="),
        "{first:?}"
    );
    assert_eq!(get(first, "other"), &Value::Null);
    let second = row_of(&out[1]);
    assert_eq!(get(second, "b"), &Value::Bytes(vec![]));
    assert_eq!(get(second, "len"), &Value::Int(0));
    match &out[2] {
        Outcome::Error(message) => assert!(
            message.contains("column b") && message.contains("base64"),
            "{message}"
        ),
        other => panic!("bad base64 for a bytes column is a row error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_reach_the_program_and_come_back_as_documented() {
    let dir = TempDir::new().unwrap();
    let t = command(
        &dir,
        "echo.py",
        r#"
import json, sys
for line in sys.stdin:
    row = json.loads(line)
    row.pop("id")
    row["big"] = 2**64 - 1
    row["types"] = ",".join(type(row[k]).__name__ for k in ["n", "f", "dec", "nan", "doc"])
    print(json.dumps(row))
"#,
        SLOW,
    );
    let doc = json!({"a": [], "b": {}, "c": [1, {"d": null}]});
    let out = t
        .apply(batch(
            &["id", "n", "f", "dec", "nan", "doc", "flag"],
            vec![vec![
                Value::Int(1),
                Value::Int(i64::MIN),
                Value::Float(1.5),
                Value::Decimal("12345678901234567890.000000000000000001".into()),
                Value::Float(f64::NAN),
                Value::Json(doc.clone()),
                Value::Bool(true),
            ]],
        ))
        .await
        .unwrap();
    let row = row_of(&out[0]);
    assert_eq!(get(row, "n"), &Value::Int(i64::MIN));
    assert_eq!(get(row, "f"), &Value::Float(1.5));
    assert_eq!(
        get(row, "dec"),
        &text("12345678901234567890.000000000000000001"),
        "a decimal travels as its exact text"
    );
    assert_eq!(get(row, "nan"), &text("NaN"));
    assert_eq!(get(row, "doc"), &Value::Json(doc));
    assert_eq!(get(row, "flag"), &Value::Bool(true));
    assert_eq!(
        get(row, "big"),
        &Value::Decimal("18446744073709551615".into())
    );
    assert_eq!(get(row, "types"), &text("int,float,str,str,dict"));
}

// As in Lua: a bare string or number document comes back as a document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scalar_json_documents_survive_an_echoing_program() {
    let dir = TempDir::new().unwrap();
    let t = command(
        &dir,
        "echo.py",
        "import sys\nfor line in sys.stdin:\n    print(line.replace('\"id\":1,', ''), end='')\n",
        SLOW,
    );
    for doc in [json!("x"), json!(5)] {
        let out = t
            .apply(batch(
                &["id", "doc"],
                vec![vec![Value::Int(1), Value::Json(doc.clone())]],
            ))
            .await
            .unwrap();
        assert_eq!(
            out,
            vec![Outcome::Row(vec![("doc".into(), Value::Json(doc))])]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Crashes
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_program_fails_the_batch_with_its_stderr() {
    let dir = TempDir::new().unwrap();
    let t = command(
        &dir,
        "crash.py",
        r#"
import json, sys
n = 0
for line in sys.stdin:
    n += 1
    if n > 2:
        sys.stderr.write("boom\n")
        sys.exit(3)
    print(json.dumps({"n": n}))
"#,
        SLOW,
    );
    let rows = (1..=5).map(|i| vec![Value::Int(i)]).collect();
    let e = t
        .apply(batch(&["id"], rows))
        .await
        .expect_err("a crash fails the batch");
    assert_eq!(e.kind(), ErrorKind::Transient, "{e}");
    let m = e.message();
    assert!(m.contains("python3 crash.py"), "{m}");
    assert!(m.contains("exited"), "{m}");
    assert!(m.contains("exit status: 3"), "{m}");
    assert!(m.contains("after answering 2 of 5 rows"), "{m}");
    assert!(m.contains("boom"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_the_next_batch_gets_a_new_program() {
    let dir = TempDir::new().unwrap();
    let t = command(
        &dir,
        "crash_on_13.py",
        r#"
import json, os, sys
with open("starts.log", "a") as log:
    log.write("%d\n" % os.getpid())
for line in sys.stdin:
    row = json.loads(line)
    if row["id"] == 13:
        sys.stderr.write("cannot handle 13\n")
        sys.exit(1)
    print(json.dumps({"pid": os.getpid()}))
"#,
        SLOW,
    );
    let e = t
        .apply(batch(
            &["id"],
            (10..16).map(|i| vec![Value::Int(i)]).collect(),
        ))
        .await
        .expect_err("key 13 crashes the program");
    assert_eq!(e.kind(), ErrorKind::Transient);
    assert!(e.message().contains("cannot handle 13"), "{e}");
    let out = t
        .apply(batch(
            &["id"],
            (20..26).map(|i| vec![Value::Int(i)]).collect(),
        ))
        .await
        .expect("a new program serves the next batch");
    assert_eq!(out.len(), 6);
    let starts = lines(&dir.path().join("starts.log"));
    assert_eq!(starts.len(), 2, "a second program started: {starts:?}");
    assert_ne!(starts[0], starts[1]);
    for outcome in &out {
        assert_eq!(
            get(row_of(outcome), "pid"),
            &Value::Int(starts[1].parse().unwrap())
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Hangs
// ---------------------------------------------------------------------------------------------

/// Answers every row with its pid, except the row with key "hang", after which it sleeps.
const HANG: &str = r#"
import json, os, sys, time
for line in sys.stdin:
    row = json.loads(line)
    if row["id"] == "hang":
        time.sleep(3600)
    print(json.dumps({"pid": os.getpid()}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_program_is_killed_after_row_timeout() {
    let dir = TempDir::new().unwrap();
    python(&dir, "hang.py", HANG);
    let exe = python_exe();
    let t = Transform::command(
        vec![exe.clone(), "hang.py".into()],
        dir.path().to_path_buf(),
        limits(Duration::from_millis(300)),
    );
    // Start the program with a row it answers; the limit also covers its start-up, so allow a
    // slow start on a loaded machine a few tries (each failed try starts a new program).
    let mut pid = None;
    for _ in 0..10 {
        if let Ok(out) = t.apply(batch(&["id"], vec![vec![text("warm")]])).await {
            let Value::Int(p) = get(row_of(&out[0]), "pid") else {
                panic!("pid is an integer: {out:?}");
            };
            pid = Some(*p);
            break;
        }
    }
    let pid = pid.expect("the program answers a row within 300 ms");
    assert!(process_exists(pid));

    let started = Instant::now();
    let e = t
        .apply(batch(
            &["id"],
            vec![vec![text("first")], vec![text("hang")], vec![text("last")]],
        ))
        .await
        .expect_err("a hung program fails the batch");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert_eq!(e.kind(), ErrorKind::Transient);
    let m = e.message();
    assert!(m.contains("row_timeout"), "{m}");
    assert!(m.contains("\"hang\""), "names the key: {m}");
    assert!(m.contains(&format!("{exe} hang.py")), "{m}");

    let deadline = Instant::now() + Duration::from_secs(2);
    while process_exists(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if process_exists(pid) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        panic!("the hung program {pid} is still running 2 s after the batch failed");
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Nonsense and missing programs
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_json_answer_fails_the_batch_naming_the_line() {
    let dir = TempDir::new().unwrap();
    let t = command(
        &dir,
        "chatty.py",
        "import sys\nfor line in sys.stdin:\n    print('hello there')\n",
        SLOW,
    );
    let e = t
        .apply(batch(
            &["id"],
            vec![vec![Value::Int(41)], vec![Value::Int(42)]],
        ))
        .await
        .expect_err("a non-JSON line fails the batch");
    assert_eq!(e.kind(), ErrorKind::Transient);
    let m = e.message();
    assert!(m.contains("\"hello there\""), "{m}");
    assert!(m.contains("not a JSON line"), "{m}");
    assert!(m.contains("key 41"), "{m}");
    assert!(m.contains("python3 chatty.py"), "{m}");

    let t = command(
        &dir,
        "number.py",
        "import sys\nfor line in sys.stdin:\n    print(5)\n",
        SLOW,
    );
    let e = t
        .apply(batch(&["id"], vec![vec![Value::Int(1)]]))
        .await
        .expect_err("a bare number is not an answer");
    assert!(e.message().contains("answered 5"), "{e}");
}

/// Issue 11: an answer line is bounded by the step's `max_batch_bytes`: a longer line, or one
/// that never ends, fails the batch naming the limit and the program, and reading stops at
/// the limit instead of taking the whole line into memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_an_answer_line_longer_than_max_batch_bytes_fails_the_batch() {
    let dir = TempDir::new().unwrap();
    let programs = [
        (
            "long.py",
            "import sys\nfor line in sys.stdin:\n    print('{\"v\": \"' + 'x' * (4 << 20) + '\"}')\n",
        ),
        (
            "endless.py",
            "import sys\nsys.stdin.readline()\nchunk = 'x' * 65536\nwhile True:\n    sys.stdout.write(chunk)\n",
        ),
    ];
    for (name, code) in programs {
        let t = Transform::command(
            python(&dir, name, code),
            dir.path().to_path_buf(),
            Limits {
                max_line_bytes: 64 << 10,
                ..limits(SLOW)
            },
        );
        let Err(e) = t.apply(batch(&["id"], vec![vec![Value::Int(7)]])).await else {
            panic!("{name}: an over-long line was accepted");
        };
        assert_eq!(e.kind(), ErrorKind::Permanent, "{name}: {e}");
        let m = e.message();
        assert!(
            m.contains("longer than 65536 bytes (max_batch_bytes"),
            "{name}: {m}"
        );
        assert!(m.contains(&format!("python3 {name}")), "{name}: {m}");
        assert!(m.contains("key 7"), "{name}: {m}");
    }

    // A line up to the limit is read as usual.
    let t = Transform::command(
        python(
            &dir,
            "fits.py",
            "import sys\nfor line in sys.stdin:\n    print('{\"v\": \"' + 'x' * 60000 + '\"}')\n",
        ),
        dir.path().to_path_buf(),
        Limits {
            max_line_bytes: 64 << 10,
            ..limits(SLOW)
        },
    );
    let out = t
        .apply(batch(&["id"], vec![vec![Value::Int(7)]]))
        .await
        .unwrap();
    assert_eq!(get(row_of(&out[0]), "v"), &text(&"x".repeat(60000)));

    // A row wider than the budget may come back as wide.
    let t = Transform::command(
        python(
            &dir,
            "echo.py",
            "import sys\nfor line in sys.stdin:\n    print(line.replace('\"id\": 7, ', '').replace('\"id\":7,', ''), end='')\n",
        ),
        dir.path().to_path_buf(),
        Limits {
            max_line_bytes: 64 << 10,
            ..limits(SLOW)
        },
    );
    let wide = "y".repeat(100_000);
    let out = t
        .apply(batch(&["id", "v"], vec![vec![Value::Int(7), text(&wide)]]))
        .await
        .unwrap();
    assert_eq!(get(row_of(&out[0]), "v"), &text(&wide));
}

/// Issue 11: as in Lua, a string a program returns for a JSON column is JSON text for the
/// writer to parse (`json.dumps(doc)`), not a JSON string holding it; the string a JSON-string
/// document arrived as, given back unchanged, stays that document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_a_string_a_program_returns_for_a_json_column_is_json_text() {
    let dir = TempDir::new().unwrap();
    let t = command(
        &dir,
        "dumps.py",
        r#"
import json, sys
for line in sys.stdin:
    row = json.loads(line)
    if row["id"] == 1:
        print(json.dumps({"doc": json.dumps({"a": 2})}))
    else:
        print(json.dumps({"doc": row["doc"]}))
"#,
        SLOW,
    );
    let out = t
        .apply(batch(
            &["id", "doc"],
            vec![
                vec![Value::Int(1), Value::Json(json!({"a": 1}))],
                vec![Value::Int(2), Value::Json(json!("{\"a\":2}"))],
            ],
        ))
        .await
        .unwrap();
    assert_eq!(get(row_of(&out[0]), "doc"), &text("{\"a\": 2}"));
    assert_eq!(
        get(row_of(&out[1]), "doc"),
        &Value::Json(json!("{\"a\":2}"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_program_is_a_permanent_error_naming_the_command() {
    let dir = TempDir::new().unwrap();
    let t = Transform::command(
        vec!["godwit-no-such-transform-program".into(), "--flag".into()],
        dir.path().to_path_buf(),
        limits(SLOW),
    );
    let e = t
        .apply(batch(&["id"], vec![vec![Value::Int(1)]]))
        .await
        .expect_err("nothing to run");
    assert_eq!(e.kind(), ErrorKind::Permanent);
    assert!(
        e.message()
            .contains("godwit-no-such-transform-program --flag"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_command_line_is_an_error_not_a_panic() {
    let dir = TempDir::new().unwrap();
    let t = Transform::command(Vec::new(), dir.path().to_path_buf(), limits(SLOW));
    let t = Arc::new(t);
    let result = tokio::spawn({
        let t = t.clone();
        async move { t.apply(batch(&["id"], vec![vec![Value::Int(1)]])).await }
    })
    .await;
    let result: Result<Vec<Outcome>, Error> = result.expect("apply does not panic");
    let e = result.expect_err("nothing to run");
    assert_eq!(e.kind(), ErrorKind::Permanent);
}

// ---------------------------------------------------------------------------------------------
// 6. Fan-out
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_of_objects_fans_out() {
    let dir = TempDir::new().unwrap();
    let t = command(
        &dir,
        "fan.py",
        r#"
import json, sys
for line in sys.stdin:
    row = json.loads(line)
    i = row["id"]
    if i == 1:
        print(json.dumps([{"part": n, "id": i} for n in range(3)]))
    elif i == 2:
        print(json.dumps([]))
    else:
        print(json.dumps([{"id": i}, 5]))
"#,
        SLOW,
    );
    let out = t
        .apply(batch(
            &["id"],
            (1..=3).map(|i| vec![Value::Int(i)]).collect(),
        ))
        .await
        .unwrap();
    assert_eq!(
        out[0],
        Outcome::Rows(
            (0..3)
                .map(|n| vec![("id".into(), Value::Int(1)), ("part".into(), Value::Int(n))])
                .collect()
        )
    );
    assert_eq!(out[1], Outcome::Rows(vec![]));
    match &out[2] {
        Outcome::Error(message) => assert!(message.contains("not all objects"), "{message}"),
        other => panic!("a list with a non-object is a row error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Volume
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_batch_streams_both_ways_without_deadlock() {
    let dir = TempDir::new().unwrap();
    let t = command(
        &dir,
        "upper.py",
        r#"
import json, sys
for line in sys.stdin:
    row = json.loads(line)
    # Every answer leaves at once, while godwit is still writing the batch.
    sys.stdout.write(json.dumps({"t": row["t"].upper(), "id2": row["id"]}) + "\n")
"#,
        SLOW,
    );
    let filler = "abcdefghij".repeat(100);
    let rows: Vec<Vec<Value>> = (0..20_000i64)
        .map(|i| vec![Value::Int(i), text(&format!("{i:08}{filler}"))])
        .collect();
    let out = tokio::time::timeout(Duration::from_secs(120), t.apply(batch(&["id", "t"], rows)))
        .await
        .expect("no deadlock")
        .unwrap();
    assert_eq!(out.len(), 20_000);
    let upper = filler.to_uppercase();
    for (i, outcome) in out.iter().enumerate() {
        assert_eq!(
            outcome,
            &Outcome::Row(vec![
                ("id2".into(), Value::Int(i as i64)),
                ("t".into(), text(&format!("{i:08}{upper}"))),
            ])
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_logging_heavily_to_stderr_does_not_stall() {
    let dir = TempDir::new().unwrap();
    let t = command(
        &dir,
        "noisy.py",
        r#"
import json, sys
for line in sys.stdin:
    sys.stderr.write("x" * (1 << 20) + "\n")
    print(json.dumps(None))
"#,
        SLOW,
    );
    let rows = (0..8).map(|i| vec![Value::Int(i)]).collect();
    let out = tokio::time::timeout(Duration::from_secs(60), t.apply(batch(&["id"], rows)))
        .await
        .expect("stderr is drained while rows are answered")
        .unwrap();
    assert_eq!(out, vec![Outcome::Keep; 8]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_program_behind_a_wrapper_is_killed_too() {
    let dir = TempDir::new().unwrap();
    python(&dir, "hang.py", HANG);
    // `; exit` keeps sh from exec-ing python: python is sh's child, as under most wrappers.
    let t = Transform::command(
        vec![
            "sh".into(),
            "-c".into(),
            format!("'{}' hang.py; exit $?", python_exe()),
        ],
        dir.path().to_path_buf(),
        limits(Duration::from_millis(500)),
    );
    let mut pid = None;
    for _ in 0..10 {
        if let Ok(out) = t.apply(batch(&["id"], vec![vec![text("warm")]])).await {
            let Value::Int(p) = get(row_of(&out[0]), "pid") else {
                panic!("pid is an integer: {out:?}");
            };
            pid = Some(*p);
            break;
        }
    }
    let pid = pid.expect("the program answers a row within 500 ms");
    let e = t
        .apply(batch(&["id"], vec![vec![text("hang")]]))
        .await
        .expect_err("a hung program fails the batch");
    assert!(e.message().contains("row_timeout"), "{e}");

    let deadline = Instant::now() + Duration::from_secs(2);
    while process_exists(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if process_exists(pid) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        panic!("the hung program {pid} is still running 2 s after the batch failed");
    }
}
