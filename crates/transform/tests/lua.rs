//! Lua transforms as a step's author meets them: how values look inside the script and what
//! comes back, where errors point, what the sandbox refuses, and how runaway scripts end.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{NaiveDate, TimeZone, Utc};
use godwit_driver::{Error, ErrorKind, KeyKind, Value};
use godwit_transform::{Limits, Outcome, Rows, Source, Transform};
use serde_json::json;

const MIB: u64 = 1 << 20;

fn limits() -> Limits {
    Limits {
        row_timeout: Duration::from_secs(10),
        lua_memory: 64 * MIB,
        max_line_bytes: 16 * MIB,
    }
}

fn source_at(code: &str, first_line: usize) -> Source {
    Source {
        code: code.to_string(),
        file: PathBuf::from("plan.toml"),
        first_line,
    }
}

fn compile_with(code: &str, limits: Limits) -> Transform {
    match Transform::lua(source_at(code, 1), limits) {
        Ok(t) => t,
        Err(e) => panic!("the script should compile, got: {e}"),
    }
}

fn compile(code: &str) -> Transform {
    compile_with(code, limits())
}

/// The error of a script `Transform::lua` must refuse.
fn refused(source: Source, limits: Limits) -> Error {
    match Transform::lua(source, limits) {
        Ok(_) => panic!("Transform::lua should have refused the script"),
        Err(e) => e,
    }
}

fn batch(columns: &[&str], rows: Vec<Vec<Value>>) -> Rows {
    Rows {
        columns: columns.iter().map(|c| c.to_string()).collect(),
        rows,
        bytes_columns: Arc::from([]),
    }
}

async fn apply_one(t: &Transform, columns: &[&str], values: Vec<Value>) -> Outcome {
    let mut out = t
        .apply(batch(columns, vec![values]))
        .await
        .unwrap_or_else(|e| panic!("apply failed: {e}"));
    assert_eq!(out.len(), 1, "one outcome per row");
    out.remove(0)
}

fn row_of(outcome: Outcome) -> Vec<(String, Value)> {
    match outcome {
        Outcome::Row(row) => row,
        other => panic!("expected Outcome::Row, got {other:?}"),
    }
}

fn row_error(outcome: Outcome) -> String {
    match outcome {
        Outcome::Error(message) => message,
        other => panic!("expected Outcome::Error, got {other:?}"),
    }
}

fn get<'a>(row: &'a [(String, Value)], name: &str) -> &'a Value {
    &row.iter()
        .find(|(c, _)| c == name)
        .unwrap_or_else(|| panic!("no column {name} in {row:?}"))
        .1
}

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

/// Runs `fut` on a runtime of its own and gives up after `limit`, leaving behind any blocking
/// thread still stuck in Lua (a `#[tokio::test]` runtime would wait for it forever on drop).
fn within<T>(limit: Duration, fut: impl Future<Output = T>) -> Option<T> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let out = rt.block_on(async { tokio::time::timeout(limit, fut).await.ok() });
    rt.shutdown_background();
    out
}

// ---------------------------------------------------------------------------------------------
// 1. Values into Lua and back
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integers_floats_booleans_and_null_keep_their_lua_types() {
    let t = compile(
        r#"
function transform(row)
  return {
    n = row.n, ntype = math.type(row.n),
    f = row.f, ftype = math.type(row.f),
    b = row.b, btype = type(row.b),
    z_is_nil = row.z == nil, ztype = type(row.z),
  }
end
"#,
    );
    let cols = ["id", "n", "f", "b", "z"];
    for (n, f) in [
        (i64::MIN, 1.5),
        (i64::MAX, -0.25),
        (0, 2.0),
        (-1, 1e300),
        (9_007_199_254_740_993, f64::MIN_POSITIVE),
    ] {
        let row = row_of(
            apply_one(
                &t,
                &cols,
                vec![
                    Value::Int(1),
                    Value::Int(n),
                    Value::Float(f),
                    Value::Bool(true),
                    Value::Null,
                ],
            )
            .await,
        );
        assert_eq!(
            get(&row, "n"),
            &Value::Int(n),
            "an integer survives exactly"
        );
        assert_eq!(get(&row, "ntype"), &text("integer"));
        assert_eq!(get(&row, "f"), &Value::Float(f), "a float stays a float");
        assert_eq!(get(&row, "ftype"), &text("float"));
        assert_eq!(get(&row, "b"), &Value::Bool(true));
        assert_eq!(get(&row, "btype"), &text("boolean"));
        assert_eq!(get(&row, "z_is_nil"), &Value::Bool(true), "NULL is nil");
        assert_eq!(get(&row, "ztype"), &text("nil"));
    }
    // A NaN goes in and comes out as a float NaN.
    let row = row_of(
        apply_one(
            &t,
            &cols,
            vec![
                Value::Int(1),
                Value::Int(0),
                Value::Float(f64::NAN),
                Value::Bool(false),
                Value::Null,
            ],
        )
        .await,
    );
    assert!(matches!(get(&row, "f"), Value::Float(f) if f.is_nan()));
    assert_eq!(get(&row, "b"), &Value::Bool(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_typed_values_arrive_as_strings_in_their_text_form() {
    let t = compile(
        r#"
function transform(row)
  local out = {}
  for _, c in ipairs({"dec", "date", "time", "ts", "tstz", "uuid"}) do
    out[c] = row[c]
    out[c .. "_type"] = type(row[c])
  end
  return out
end
"#,
    );
    let date = NaiveDate::from_ymd_opt(1999, 12, 31).unwrap();
    let uuid = KeyKind::Uuid
        .decode("67E55044-10B1-426F-9247-BB680E5FE0C8")
        .unwrap();
    assert!(matches!(uuid, Value::Uuid(_)));
    let cols = ["id", "dec", "date", "time", "ts", "tstz", "uuid"];
    let rows = vec![
        vec![
            Value::Int(1),
            Value::Decimal("12345678901234567890.000000000000000001".into()),
            Value::Date(date),
            Value::Time(date.and_hms_opt(1, 2, 3).unwrap().time()),
            Value::Timestamp(date.and_hms_opt(23, 59, 59).unwrap()),
            Value::TimestampTz(Utc.with_ymd_and_hms(2024, 2, 29, 23, 59, 58).unwrap()),
            uuid.clone(),
        ],
        vec![
            Value::Int(2),
            Value::Decimal("-0.000000000000000000001".into()),
            Value::Date(NaiveDate::from_ymd_opt(2000, 1, 2).unwrap()),
            Value::Time(date.and_hms_micro_opt(1, 2, 3, 450_000).unwrap().time()),
            Value::Timestamp(date.and_hms_micro_opt(1, 2, 3, 123_456).unwrap()),
            Value::TimestampTz(
                Utc.with_ymd_and_hms(2024, 2, 29, 23, 59, 58).unwrap()
                    + chrono::Duration::microseconds(5),
            ),
            uuid,
        ],
    ];
    let out = t.apply(batch(&cols, rows)).await.unwrap();
    let expected = [
        [
            "12345678901234567890.000000000000000001",
            "1999-12-31",
            "01:02:03",
            "1999-12-31 23:59:59",
            "2024-02-29 23:59:58+00:00",
            "67e55044-10b1-426f-9247-bb680e5fe0c8",
        ],
        [
            "-0.000000000000000000001",
            "2000-01-02",
            "01:02:03.450",
            "1999-12-31 01:02:03.123456",
            "2024-02-29 23:59:58.000005+00:00",
            "67e55044-10b1-426f-9247-bb680e5fe0c8",
        ],
    ];
    for (outcome, expected) in out.into_iter().zip(expected) {
        let row = row_of(outcome);
        for (column, want) in cols[1..].iter().zip(expected) {
            assert_eq!(get(&row, column), &text(want), "column {column}");
            assert_eq!(get(&row, &format!("{column}_type")), &text("string"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_are_binary_lua_strings_and_text_is_utf8() {
    let t = compile(
        r#"
function transform(row)
  return {
    b = row.b, len = #row.b, first = row.b:byte(1), second = row.b:byte(2),
    made = "\255\254\0",
    ascii_bytes = row.ascii,
    t = row.t, t_bytes = #row.t, t_chars = utf8.len(row.t),
    upper = row.t:upper(),
  }
end
"#,
    );
    let emoji = "😀 e\u{301} 日本";
    let row = row_of(
        apply_one(
            &t,
            &["id", "b", "ascii", "t"],
            vec![
                Value::Int(1),
                Value::Bytes(vec![0, 255]),
                Value::Bytes(b"abc".to_vec()),
                text(emoji),
            ],
        )
        .await,
    );
    assert_eq!(get(&row, "len"), &Value::Int(2), "#row.b counts bytes");
    assert_eq!(get(&row, "first"), &Value::Int(0));
    assert_eq!(get(&row, "second"), &Value::Int(255));
    assert_eq!(get(&row, "b"), &Value::Bytes(vec![0, 255]));
    assert_eq!(get(&row, "made"), &Value::Bytes(vec![255, 254, 0]));
    // Bytes that happen to be UTF-8 come back as text; the writer fits them to the column.
    assert_eq!(get(&row, "ascii_bytes"), &text("abc"));
    assert_eq!(get(&row, "t"), &text(emoji));
    assert_eq!(get(&row, "t_bytes"), &Value::Int(emoji.len() as i64));
    assert_eq!(get(&row, "t_chars"), &Value::Int(7));
    assert_eq!(get(&row, "upper"), &text("😀 E\u{301} 日本"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_documents_arrive_as_tables_and_come_back_unchanged() {
    let t = compile(
        r#"
function transform(row)
  local doc = row.doc
  return {
    doc = doc,
    d_is_null = doc.c[2].d == godwit.null,
    a_len = #doc.a,
    c1 = doc.c[1],
    e = doc.e,
    built = {list = godwit.json.array({}), obj = {}, n = godwit.null, nested = {1, "two", {x = 3}}},
  }
end
"#,
    );
    let docs = [
        json!({"a": [], "b": {}, "c": [1, {"d": null}], "e": "x"}),
        json!({"a": [[], {}, [[]]], "b": {"k": {"l": []}}, "c": [1.5, {"d": null}, null, true], "e": "é😀"}),
    ];
    for doc in docs {
        let row = row_of(
            apply_one(
                &t,
                &["id", "doc"],
                vec![Value::Int(1), Value::Json(doc.clone())],
            )
            .await,
        );
        assert_eq!(get(&row, "doc"), &Value::Json(doc.clone()));
        assert_eq!(get(&row, "d_is_null"), &Value::Bool(true));
        assert_eq!(
            get(&row, "a_len"),
            &Value::Int(doc["a"].as_array().unwrap().len() as i64)
        );
        assert_eq!(
            get(&row, "e"),
            &Value::Text(doc["e"].as_str().unwrap().into())
        );
        assert_eq!(
            get(&row, "built"),
            &Value::Json(json!({"list": [], "obj": {}, "n": null, "nested": [1, "two", {"x": 3}]}))
        );
    }
}

// A JSON document that is a bare string, number or boolean comes back as a document. A document
// that is JSON `null` reaches Lua as godwit.null, which means SQL NULL when written back (the
// docs/limitations.md names this limitation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scalar_json_documents_survive_the_identity_transform() {
    let t = compile("function transform(row) return {doc = row.doc} end");
    for doc in [json!("x"), json!(5), json!(true), json!(1.5)] {
        let row = row_of(
            apply_one(
                &t,
                &["id", "doc"],
                vec![Value::Int(1), Value::Json(doc.clone())],
            )
            .await,
        );
        assert_eq!(
            get(&row, "doc"),
            &Value::Json(doc),
            "identity on a JSON column"
        );
    }
}

/// Issue 11: a table is written as JSON only when it is clearly an array (the array marker, or
/// keys exactly 1..n) or an object (string keys); anything else is a row error naming the
/// column, never a guess that drops keys. `{}` is an object, `godwit.json.array()` an array.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_tables_neither_array_nor_object_are_row_errors_naming_the_column() {
    let t = compile(
        r#"
local cases = {
  index_on_object = function(d) d[1] = "first" return d end,
  mixed = function() return {[1] = "a", x = "b"} end,
  holes = function() return {[1] = "a", [3] = "c"} end,
  from_zero = function() return {[0] = "z", [1] = "a"} end,
  marked_with_name = function() local a = godwit.json.array({1}) a.x = 2 return a end,
  bool_key = function() return {[true] = 1} end,
  nested = function(d) return {outer = {inner = {[2] = "b"}}} end,
  nan = function() return {x = 0/0} end,
  fn = function() return {f = print} end,
  encoded = function() return godwit.json.encode({[1] = "a", x = "b"}) end,
}
function transform(row)
  return {doc = cases[row.case](row.doc)}
end
"#,
    );
    let wanted = [
        (
            "index_on_object",
            "both integer keys (1) and string keys (\"a\")",
        ),
        ("mixed", "both integer keys (1) and string keys (\"x\")"),
        ("holes", "integer keys 1, 3 is not a JSON array"),
        ("from_zero", "integer keys 0, 1 is not a JSON array"),
        (
            "marked_with_name",
            "marked as a JSON array has a string key (\"x\")",
        ),
        ("bool_key", "a boolean key"),
        ("nested", "integer keys 2 is not a JSON array"),
        ("nan", "cannot be written as JSON"),
        ("fn", "a function cannot be written as JSON"),
        (
            "encoded",
            "godwit.json.encode: a table with both integer keys",
        ),
    ];
    for (case, message) in wanted {
        let error = row_error(
            apply_one(
                &t,
                &["id", "case", "doc"],
                vec![Value::Int(1), text(case), Value::Json(json!({"a": 1}))],
            )
            .await,
        );
        assert!(error.contains(message), "{case}: {error}");
        if case != "encoded" {
            assert!(error.starts_with("column doc: "), "{case}: {error}");
        }
    }

    let t = compile(
        r#"
function transform(row)
  local d = row.doc
  d.list[#d.list + 1] = "appended"
  d.added = {}
  return {
    doc = d,
    empty = {},
    empty_array = godwit.json.array(),
    list = {"a", godwit.null, "c"},
    untouched_list = row.list,
  }
end
"#,
    );
    let row = row_of(
        apply_one(
            &t,
            &["id", "doc", "list"],
            vec![
                Value::Int(1),
                Value::Json(json!({"a": 1, "1": "string key", "list": [], "obj": {}})),
                Value::Json(json!([])),
            ],
        )
        .await,
    );
    assert_eq!(
        get(&row, "doc"),
        &Value::Json(
            json!({"a": 1, "1": "string key", "list": ["appended"], "obj": {}, "added": {}})
        )
    );
    assert_eq!(get(&row, "empty"), &Value::Json(json!({})));
    assert_eq!(get(&row, "empty_array"), &Value::Json(json!([])));
    assert_eq!(get(&row, "list"), &Value::Json(json!(["a", null, "c"])));
    assert_eq!(get(&row, "untouched_list"), &Value::Json(json!([])));
}

/// Issue 11: a string returned for a JSON column is JSON text for the writer to parse (what
/// `godwit.json.encode` gives), not a JSON string holding it; the string a JSON-string
/// document arrived as, given back unchanged, stays that document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_a_string_for_a_json_column_is_json_text() {
    let t = compile(
        r#"
function transform(row)
  if row.id == 1 then return {doc = '{"a":2}'} end
  if row.id == 2 then return {doc = godwit.json.encode({a = 3})} end
  return {doc = row.doc}
end
"#,
    );
    let doc = Value::Json(json!({"a": 1}));
    let row = row_of(apply_one(&t, &["id", "doc"], vec![Value::Int(1), doc.clone()]).await);
    assert_eq!(get(&row, "doc"), &text("{\"a\":2}"));
    let row = row_of(apply_one(&t, &["id", "doc"], vec![Value::Int(2), doc]).await);
    assert_eq!(get(&row, "doc"), &text("{\"a\":3}"));
    let row = row_of(
        apply_one(
            &t,
            &["id", "doc"],
            vec![Value::Int(3), Value::Json(json!("{\"a\":2}"))],
        )
        .await,
    );
    assert_eq!(get(&row, "doc"), &Value::Json(json!("{\"a\":2}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn return_values_map_to_outcomes() {
    let t = compile(
        r#"
function transform(row)
  if row.id == 1 then return {x = godwit.null, y = row.v} end
  if row.id == 2 then return nil end
  if row.id == 3 then return {{b = 1, a = "one"}, {a = "two", b = 2}} end
  if row.id == 4 then return 42 end
  if row.id == 5 then return "text" end
  if row.id == 6 then return {f = print} end
  if row.id == 7 then return {[1] = {a = 1}, x = 1} end
  if row.id == 8 then return true end
end
"#,
    );
    let rows = (1..=8).map(|id| vec![Value::Int(id), text("v")]).collect();
    let out = t.apply(batch(&["id", "v"], rows)).await.unwrap();
    assert_eq!(out.len(), 8);
    let mut out = out.into_iter();
    assert_eq!(
        out.next().unwrap(),
        Outcome::Row(vec![("x".into(), Value::Null), ("y".into(), text("v"))]),
        "godwit.null is NULL"
    );
    assert_eq!(out.next().unwrap(), Outcome::Keep, "nil keeps the row");
    assert_eq!(
        out.next().unwrap(),
        Outcome::Rows(vec![
            vec![("a".into(), text("one")), ("b".into(), Value::Int(1))],
            vec![("a".into(), text("two")), ("b".into(), Value::Int(2))],
        ]),
        "a list of tables fans out, each row's columns in name order"
    );
    let number = row_error(out.next().unwrap());
    assert!(number.contains("returned an integer"), "{number}");
    let string = row_error(out.next().unwrap());
    assert!(string.contains("returned a string"), "{string}");
    let function = row_error(out.next().unwrap());
    assert!(
        function.contains("column f") && function.contains("function"),
        "{function}"
    );
    let mixed = row_error(out.next().unwrap());
    assert!(mixed.contains("key"), "{mixed}");
    let boolean = row_error(out.next().unwrap());
    assert!(boolean.contains("returned a boolean"), "{boolean}");
}

// ---------------------------------------------------------------------------------------------
// 2. Errors point at the plan's lines
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_error_names_the_plan_file_and_line_and_spares_the_other_rows() {
    // The script starts on line 10 of plan.toml: its 3rd line is the file's 12th.
    let code = r#"function transform(row)
  if row.phone == "bad" then
    error("bad phone")
  end
  return {phone = "0" .. row.phone:sub(3)}
end
"#;
    let t = Transform::lua(source_at(code, 10), limits()).unwrap();
    let out = t
        .apply(batch(
            &["id", "phone"],
            vec![
                vec![Value::Int(1), text("33612345678")],
                vec![Value::Int(2), text("bad")],
                vec![Value::Int(3), text("33698765432")],
            ],
        ))
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![
            Outcome::Row(vec![("phone".into(), text("0612345678"))]),
            Outcome::Error("plan.toml:12: bad phone".into()),
            Outcome::Row(vec![("phone".into(), text("0698765432"))]),
        ]
    );
    // A runtime error raised by Lua itself points at its line too, without a traceback.
    let t = Transform::lua(
        source_at(
            "function transform(row)\n  return {n = row.missing + 1}\nend",
            10,
        ),
        limits(),
    )
    .unwrap();
    let message = row_error(apply_one(&t, &["id"], vec![Value::Int(1)]).await);
    assert!(message.starts_with("plan.toml:11:"), "{message}");
    assert!(message.contains("arithmetic"), "{message}");
    assert!(!message.contains("traceback"), "{message}");
}

#[test]
fn a_syntax_error_fails_the_load_with_file_and_line() {
    let e = refused(
        source_at("function transform(row)\n  return {x = = 1}\nend\n", 10),
        limits(),
    );
    assert_eq!(e.kind(), ErrorKind::Permanent);
    assert!(e.message().contains("plan.toml:11:"), "{e}");
    assert!(!e.message().contains("traceback"), "{e}");
}

#[test]
fn an_error_while_loading_names_file_and_line() {
    let e = refused(
        source_at("local x = 1\nerror('setup failed')\n", 10),
        limits(),
    );
    assert_eq!(e.kind(), ErrorKind::Permanent);
    assert!(e.message().contains("plan.toml:11: setup failed"), "{e}");
}

#[test]
fn a_script_without_transform_is_refused() {
    for code in [
        "local x = 1",
        "transform = 5",
        "function transfrom(row) end",
    ] {
        let e = refused(source_at(code, 1), limits());
        assert_eq!(e.kind(), ErrorKind::Permanent);
        assert!(
            e.message().contains("plan.toml")
                && e.message().contains("defines no function transform"),
            "{code}: {e}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. The sandbox
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_refuses_escapes_per_row() {
    // Each body runs inside transform(row): the row gets an error, the batch goes on.
    let cases: &[(&str, &str)] = &[
        ("io.open('/etc/passwd')", "global 'io'"),
        ("os.execute('true')", "global 'os'"),
        ("os.exit(1)", "global 'os'"),
        ("require('os')", "global 'require'"),
        ("dofile('/etc/passwd')", "global 'dofile'"),
        ("loadfile('/etc/passwd')", "global 'loadfile'"),
        ("debug.getinfo(1)", "global 'debug'"),
        ("package.loadlib('libc.so.6', 'system')", "global 'package'"),
        ("string.dump(function() end)", "field 'dump'"),
        ("(''):dump(function() end)", "method 'dump'"),
        ("load(string.dump(function() end))", "field 'dump'"),
        ("collectgarbage('count')", "global 'collectgarbage'"),
        (
            "assert(load('\\27Lua\\84\\0\\25\\147\\13\\10\\26\\10'))",
            "attempt to load a binary chunk (mode is 't')",
        ),
        (
            "assert(load('\\27Lua\\84\\0', 'x', 'b'))",
            "attempt to load a binary chunk (mode is 't')",
        ),
        (
            "assert(load('\\27Lua\\84\\0', 'x', 'bt', {}))",
            "attempt to load a binary chunk (mode is 't')",
        ),
        (
            "setmetatable({}, {__gc = function() while true do end end})",
            "__gc finalizers are not allowed",
        ),
    ];
    let mut code = String::from("function transform(row)\n");
    for (i, (body, _)) in cases.iter().enumerate() {
        code.push_str(&format!(
            "  if row.id == {i} then {body}; return {{escaped = true}} end\n"
        ));
    }
    code.push_str("end\n");
    let t = compile(&code);
    let rows = (0..cases.len())
        .map(|i| vec![Value::Int(i as i64)])
        .collect();
    let out = t.apply(batch(&["id"], rows)).await.unwrap();
    for ((body, expected), outcome) in cases.iter().zip(out) {
        match outcome {
            Outcome::Error(message) => {
                assert!(message.contains(expected), "{body}: {message}")
            }
            other => panic!("{body} should fail the row, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_keeps_what_transforms_need() {
    let t = compile(
        r#"
function transform(row)
  return {
    loaded = load("return 1 + 1")(),
    with_env = load("return x", "chunk", "t", {x = 5})(),
    fmt = string.format("%05.1f|%s", 3.14159, row.id),
    floor = math.floor(2.7),
    sorted = (function() local t = {3, 1, 2}; table.sort(t); return table.concat(t, ",") end)(),
    chars = utf8.char(233, 128512),
    caught = select(2, pcall(error, "inner", 0)),
    dump_gone = getmetatable("").__index.dump == nil,
    printed = (function() print("printed from a transform", 1, nil, {}) return true end)(),
  }
end
"#,
    );
    let row = row_of(apply_one(&t, &["id"], vec![Value::Int(7)]).await);
    assert_eq!(get(&row, "loaded"), &Value::Int(2));
    assert_eq!(get(&row, "with_env"), &Value::Int(5));
    assert_eq!(get(&row, "fmt"), &text("003.1|7"));
    assert_eq!(get(&row, "floor"), &Value::Int(2));
    assert_eq!(get(&row, "sorted"), &text("1,2,3"));
    assert_eq!(get(&row, "chars"), &text("é😀"));
    assert_eq!(get(&row, "caught"), &text("inner"));
    assert_eq!(get(&row, "dump_gone"), &Value::Bool(true));
    assert_eq!(get(&row, "printed"), &Value::Bool(true));
}

#[test]
fn the_sandbox_applies_to_top_level_code() {
    for (code, expected) in [
        ("os.execute('true')", "global 'os'"),
        ("io.write('x')", "global 'io'"),
        ("local f = require", ""),
    ] {
        let code = format!("{code}\nfunction transform(row) end\n");
        if expected.is_empty() {
            // Reading a missing global is not an error; the script loads.
            assert!(Transform::lua(source_at(&code, 1), limits()).is_ok());
            continue;
        }
        let e = refused(source_at(&code, 1), limits());
        assert!(
            e.message().contains("plan.toml:1:") && e.message().contains(expected),
            "{code}: {e}"
        );
    }
}

const PRINT_MARKER: &str = "GODWIT-LUA-PRINT-MARKER";

/// Runs a script that prints; also run by `print_does_not_write_to_stdout` in a child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn print_does_not_fail_the_row() {
    let t = compile(&format!(
        "function transform(row) print('{PRINT_MARKER}', row.id) return {{ok = true}} end"
    ));
    let row = row_of(apply_one(&t, &["id"], vec![Value::Int(1)]).await);
    assert_eq!(get(&row, "ok"), &Value::Bool(true));
}

#[test]
fn print_does_not_write_to_stdout() {
    let exe = std::env::current_exe().unwrap();
    let child = std::process::Command::new(exe)
        .args([
            "print_does_not_fail_the_row",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&child.stdout);
    assert!(child.status.success(), "child failed: {stdout}");
    assert!(
        stdout.contains("1 passed"),
        "the child ran the test: {stdout}"
    );
    assert!(
        !stdout.contains(PRINT_MARKER),
        "Lua's print reached stdout: {stdout}"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Runaway scripts
// ---------------------------------------------------------------------------------------------

fn short_limits() -> Limits {
    Limits {
        row_timeout: Duration::from_millis(200),
        lua_memory: 16 * MIB,
        max_line_bytes: 16 * MIB,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_loop_fails_the_batch_after_row_timeout_and_the_pool_recovers() {
    let t = compile_with(
        r#"
function transform(row)
  if row.id == "k-7" then while true do end end
  return {ok = row.id}
end
"#,
        short_limits(),
    );
    let started = Instant::now();
    let e = t
        .apply(batch(
            &["id"],
            vec![vec![text("k-1")], vec![text("k-7")], vec![text("k-9")]],
        ))
        .await
        .expect_err("the runaway row fails the batch");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(took >= Duration::from_millis(200), "took {took:?}");
    assert_eq!(e.kind(), ErrorKind::Permanent);
    assert!(e.message().contains("row_timeout"), "{e}");
    assert!(e.message().contains("k-7"), "{e}");

    // The next batch on the same Transform gets a working interpreter.
    let out = t
        .apply(batch(&["id"], vec![vec![text("k-1")], vec![text("k-2")]]))
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![
            Outcome::Row(vec![("ok".into(), text("k-1"))]),
            Outcome::Row(vec![("ok".into(), text("k-2"))]),
        ]
    );
}

#[test]
fn an_endless_loop_at_top_level_fails_the_load() {
    let started = Instant::now();
    let e = refused(
        source_at("while true do end\nfunction transform(row) end", 1),
        short_limits(),
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(e.kind(), ErrorKind::Permanent);
    assert!(
        e.message().contains("row_timeout") && e.message().contains("plan.toml"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_allocation_fails_the_batch_naming_lua_memory() {
    let t = compile_with(
        r#"
function transform(row)
  if row.id == 2 then
    local t = {} for i = 1, 1e9 do t[i] = ("x"):rep(1000) .. i end
  end
  return {ok = true}
end
"#,
        Limits {
            row_timeout: Duration::from_secs(30),
            lua_memory: 16 * MIB,
            max_line_bytes: 16 * MIB,
        },
    );
    let started = Instant::now();
    let e = t
        .apply(batch(
            &["id"],
            vec![vec![Value::Int(1)], vec![Value::Int(2)]],
        ))
        .await
        .expect_err("the row over lua_memory fails the batch");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(e.kind(), ErrorKind::Permanent);
    assert!(e.message().contains("lua_memory"), "{e}");
    assert!(e.message().contains("key 2"), "{e}");
    // The pool recovers.
    let out = t
        .apply(batch(&["id"], vec![vec![Value::Int(1)]]))
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![Outcome::Row(vec![("ok".into(), Value::Bool(true))])]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_string_rep_fails_cleanly_instead_of_aborting() {
    let t = compile_with(
        r#"
function transform(row)
  if row.id == 1 then return {n = #string.rep("x", 1e10)} end
  if row.id == 2 then return {n = #("x"):rep(1e9)} end
  local ok, err = pcall(string.rep, "x", 1e9)
  return {ok = ok, err = tostring(err)}
end
"#,
        short_limits(),
    );
    // Beyond what Lua's string library accepts at all: an ordinary error for the row.
    let message = row_error(apply_one(&t, &["id"], vec![Value::Int(1)]).await);
    assert_eq!(message, "plan.toml:3: resulting string too large");
    // 1 GB is accepted by Lua and refused by the memory limit: the batch fails.
    let e = t
        .apply(batch(&["id"], vec![vec![Value::Int(2)]]))
        .await
        .expect_err("over lua_memory");
    assert_eq!(e.kind(), ErrorKind::Permanent);
    assert!(
        e.message().contains("lua_memory") && e.message().contains("key 2"),
        "{e}"
    );
    // Caught by the script, passing the memory limit still fails the batch (issue 11).
    let e = t
        .apply(batch(&["id"], vec![vec![Value::Int(3)]]))
        .await
        .expect_err("over lua_memory, caught by pcall");
    assert!(
        e.message().contains("lua_memory") && e.message().contains("key 3"),
        "{e}"
    );
}

/// Issue 11: `pcall` and `xpcall` catch the memory error, but passing `lua_memory` fails the
/// batch whatever the script does, per row and while loading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_a_memory_error_caught_by_pcall_still_fails_the_batch() {
    let t = compile_with(
        r#"
function transform(row)
  local ok, err
  if row.id == 1 then
    ok, err = pcall(string.rep, "x", 100 * 1024 * 1024)
  elseif row.id == 2 then
    ok, err = xpcall(string.rep, function(e) return "handled" end, "x", 100 * 1024 * 1024)
  elseif row.id == 3 then
    -- Over the limit inside a Rust helper: 300,000 tables from 2.4 MB of JSON.
    ok, err = pcall(godwit.json.decode, "[" .. ('{"a":1},'):rep(300 * 1000) .. "1]")
  elseif row.id == 4 then
    -- The handler sees that error first and replaces it.
    local big = "[" .. ('{"a":1},'):rep(300 * 1000) .. "1]"
    ok, err = xpcall(godwit.json.decode, function(e) return "handled" end, big)
  elseif row.id == 5 then
    ok, err = pcall(error, "an ordinary error")
  else
    ok, err = xpcall(error, function(e) return "handled: " .. e end, "an ordinary error", 0)
  end
  return {ok = ok, err = tostring(err)}
end
"#,
        Limits {
            row_timeout: Duration::from_secs(20),
            lua_memory: 16 * MIB,
            max_line_bytes: 16 * MIB,
        },
    );
    for id in 1..=4 {
        let e = t
            .apply(batch(&["id"], vec![vec![Value::Int(id)]]))
            .await
            .expect_err("over lua_memory, caught by the script");
        assert_eq!(e.kind(), ErrorKind::Permanent);
        assert!(
            e.message().contains("lua_memory") && e.message().contains(&format!("key {id}")),
            "row {id}: {e}"
        );
    }
    // Other errors stay the script's to catch, on the same pool.
    let row = row_of(apply_one(&t, &["id"], vec![Value::Int(5)]).await);
    assert_eq!(get(&row, "ok"), &Value::Bool(false));
    assert_eq!(get(&row, "err"), &text("an ordinary error"));
    let row = row_of(apply_one(&t, &["id"], vec![Value::Int(6)]).await);
    assert_eq!(get(&row, "ok"), &Value::Bool(false));
    assert_eq!(get(&row, "err"), &text("handled: an ordinary error"));

    let e = refused(
        source_at(
            "local ok = pcall(string.rep, 'x', 100 * 1024 * 1024)\nfunction transform(row) end",
            1,
        ),
        short_limits(),
    );
    assert!(e.message().contains("lua_memory"), "{e}");
}

#[test]
fn a_runaway_that_catches_the_timeout_error_still_ends() {
    let t = compile_with(
        r#"
function transform(row)
  while true do pcall(function() while true do end end) end
end
"#,
        short_limits(),
    );
    let result = within(
        Duration::from_secs(5),
        t.apply(batch(&["id"], vec![vec![Value::Int(1)]])),
    );
    let e = result
        .expect("apply returns within 5 s")
        .expect_err("the runaway fails the batch");
    assert!(e.message().contains("row_timeout"), "{e}");
}

#[test]
fn a_runaway_pattern_match_ends_at_row_timeout() {
    let t = compile_with(
        r#"
function transform(row)
  local s = ("a"):rep(3000)
  return {found = s:find(".-.-.-.-b") ~= nil}
end
"#,
        short_limits(),
    );
    let result = within(
        Duration::from_secs(5),
        t.apply(batch(&["id"], vec![vec![Value::Int(1)]])),
    );
    let e = result
        .expect("apply returns within 5 s")
        .expect_err("the runaway fails the batch");
    assert!(e.message().contains("row_timeout"), "{e}");
}

/// Issue 11: the time limit holds inside `xpcall` too (the wrapper's check, not the watchdog a
/// second later): a handler that swallows `row_timeout` does not keep the row running.
#[test]
fn r11_a_runaway_that_catches_the_timeout_with_xpcall_ends_at_row_timeout() {
    let t = compile_with(
        r#"
function transform(row)
  while true do xpcall(function() while true do end end, function(e) return e end) end
end
"#,
        short_limits(),
    );
    let started = Instant::now();
    let result = within(
        Duration::from_secs(5),
        t.apply(batch(&["id"], vec![vec![Value::Int(1)]])),
    );
    let took = started.elapsed();
    let e = result
        .expect("apply returns within 5 s")
        .expect_err("the runaway fails the batch");
    assert!(
        e.message().contains("row_timeout") && e.message().contains("key 1"),
        "{e}"
    );
    assert!(
        !e.message().contains("could not be stopped"),
        "stopped by the watchdog, not the time limit: {e}"
    );
    assert!(took < Duration::from_millis(900), "took {took:?}");
}

/// Issue 11: top-level code stuck in one library call (a pattern the hook cannot interrupt)
/// fails the load at about `row_timeout`, naming the limit, instead of hanging `check` and
/// `run`.
#[test]
fn r11_a_runaway_pattern_at_load_time_fails_the_load_at_row_timeout() {
    let started = Instant::now();
    // On a thread of its own, so that a load that never returns fails the test instead of
    // hanging it.
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(refused(
            source_at(
                "local found = string.find(string.rep('a', 40), string.rep('a*', 40) .. 'b')\n\
                 function transform(row) end",
                1,
            ),
            short_limits(),
        ));
    });
    let e = receiver
        .recv_timeout(Duration::from_secs(5))
        .expect("the load fails within 5 s");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_eq!(e.kind(), ErrorKind::Permanent);
    assert!(
        e.message().contains("row_timeout (200ms)")
            && e.message().contains("while loading")
            && e.message().contains("plan.toml"),
        "{e}"
    );
}

#[test]
fn a_script_over_lua_memory_while_loading_is_refused_naming_lua_memory() {
    let e = refused(
        source_at(
            "local big = ('x'):rep(64 * 1024 * 1024)\nfunction transform(row) end",
            1,
        ),
        short_limits(),
    );
    assert_eq!(e.kind(), ErrorKind::Permanent);
    assert!(e.message().contains("lua_memory"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_too_big_for_lua_memory_fails_naming_lua_memory() {
    let t = compile_with("function transform(row) return nil end", short_limits());
    let e = t
        .apply(batch(
            &["id", "blob"],
            vec![vec![
                Value::Int(5),
                Value::Bytes(vec![7; 32 * MIB as usize]),
            ]],
        ))
        .await
        .expect_err("a 32 MiB value does not fit in 16 MiB");
    assert_eq!(e.kind(), ErrorKind::Permanent);
    assert!(e.message().contains("key 5"), "{e}");
    assert!(e.message().contains("lua_memory"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// 5. The godwit helper library
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helpers_do_what_they_say() {
    let t = compile(
        r#"
function transform(row)
  local j = godwit.json
  local doc = j.decode(row.doc)
  return {
    roundtrip = j.encode(doc),
    decoded_null = doc.c[3].d == godwit.null,
    decoded_len = #doc.c,
    empty_array = j.encode(j.array({})),
    no_arg_array = j.encode(j.array()),
    filled_array = j.encode(j.array({1, 2})),
    empty_object = j.encode({}),
    scalar = j.encode("é\n"),
    trim = godwit.trim("  \t a b \n "),
    trim_blank = godwit.trim(" \t\n"),
    split_n = #godwit.split("a,,b", ","),
    split = table.concat(godwit.split("a,,b", ","), "|"),
    split_plain = table.concat(godwit.split("1.2.3", "."), "|"),
    split_multi = table.concat(godwit.split("a<>b<>", "<>"), "|"),
    split_none = table.concat(godwit.split("abc", ";"), "|"),
    starts = godwit.starts_with("+33612", "+33"),
    starts_no = godwit.starts_with("0612", "+33"),
    starts_empty = godwit.starts_with("x", ""),
    ends = godwit.ends_with("file.csv", ".csv"),
    ends_no = godwit.ends_with("v", "csv"),
    ends_empty = godwit.ends_with("x", ""),
    digits = godwit.digits("+33 (0)6-12.34"),
    digits_none = godwit.digits("abc"),
  }
end
"#,
    );
    let doc = r#"{"a":{"b":[]},"c":[1,"two",{"d":null}],"e":{}}"#;
    let row = row_of(apply_one(&t, &["id", "doc"], vec![Value::Int(1), text(doc)]).await);
    let Value::Text(roundtrip) = get(&row, "roundtrip") else {
        panic!("encode gives text: {row:?}");
    };
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(roundtrip).unwrap(),
        serde_json::from_str::<serde_json::Value>(doc).unwrap()
    );
    assert_eq!(get(&row, "decoded_null"), &Value::Bool(true));
    assert_eq!(get(&row, "decoded_len"), &Value::Int(3));
    assert_eq!(get(&row, "empty_array"), &text("[]"));
    assert_eq!(get(&row, "no_arg_array"), &text("[]"));
    assert_eq!(get(&row, "filled_array"), &text("[1,2]"));
    assert_eq!(get(&row, "empty_object"), &text("{}"));
    assert_eq!(get(&row, "scalar"), &text("\"é\\n\""));
    assert_eq!(get(&row, "trim"), &text("a b"));
    assert_eq!(get(&row, "trim_blank"), &text(""));
    assert_eq!(get(&row, "split_n"), &Value::Int(3));
    assert_eq!(get(&row, "split"), &text("a||b"));
    assert_eq!(get(&row, "split_plain"), &text("1|2|3"));
    assert_eq!(get(&row, "split_multi"), &text("a|b|"));
    assert_eq!(get(&row, "split_none"), &text("abc"));
    assert_eq!(get(&row, "starts"), &Value::Bool(true));
    assert_eq!(get(&row, "starts_no"), &Value::Bool(false));
    assert_eq!(get(&row, "starts_empty"), &Value::Bool(true));
    assert_eq!(get(&row, "ends"), &Value::Bool(true));
    assert_eq!(get(&row, "ends_no"), &Value::Bool(false));
    assert_eq!(get(&row, "ends_empty"), &Value::Bool(true));
    assert_eq!(get(&row, "digits"), &text("33061234"));
    assert_eq!(get(&row, "digits_none"), &text(""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helper_misuse_is_a_row_error_pointing_at_the_callers_line() {
    let t = Transform::lua(
        source_at(
            r#"function transform(row)
  if row.id == 1 then return {x = godwit.json.decode("{not json")} end
  if row.id == 2 then return {x = godwit.split("a,b", "")} end
  return {x = godwit.json.encode({f = print})}
end"#,
            20,
        ),
        limits(),
    )
    .unwrap();
    let out = t
        .apply(batch(
            &["id"],
            (1..=3).map(|id| vec![Value::Int(id)]).collect(),
        ))
        .await
        .unwrap();
    let mut out = out.into_iter().map(row_error);
    let decode = out.next().unwrap();
    assert!(decode.contains("godwit.json.decode"), "{decode}");
    let split = out.next().unwrap();
    assert!(
        split.contains("plan.toml:22:") && split.contains("empty separator"),
        "{split}"
    );
    let encode = out.next().unwrap();
    assert!(!encode.is_empty(), "{encode}");
}

// ---------------------------------------------------------------------------------------------
// 6. Concurrency
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_batches_on_one_transform_get_their_own_answers() {
    let t = Arc::new(compile(
        r#"
calls = 0
function transform(row)
  local mine = row.id
  calls = calls + 1
  local acc = 0
  for i = 1, 20000 do acc = acc + i % 7 end
  return {id_seen = mine, double = row.n * 2, tag = row.batch .. ":" .. mine, acc = acc}
end
"#,
    ));
    let mut set = tokio::task::JoinSet::new();
    for b in 0..8i64 {
        let t = t.clone();
        set.spawn(async move {
            let rows = (0..200i64)
                .map(|i| {
                    vec![
                        Value::Int(b * 1000 + i),
                        Value::Int(i * b),
                        text(&format!("b{b}")),
                    ]
                })
                .collect();
            let out = t.apply(batch(&["id", "n", "batch"], rows)).await;
            (b, out)
        });
    }
    let expected_acc: i64 = (1..=20000i64).map(|i| i % 7).sum();
    let mut seen = 0;
    while let Some(joined) = set.join_next().await {
        let (b, out) = joined.unwrap();
        let out = out.unwrap();
        assert_eq!(out.len(), 200);
        for (i, outcome) in out.into_iter().enumerate() {
            let i = i as i64;
            let id = b * 1000 + i;
            assert_eq!(
                outcome,
                Outcome::Row(vec![
                    ("acc".into(), Value::Int(expected_acc)),
                    ("double".into(), Value::Int(i * b * 2)),
                    ("id_seen".into(), Value::Int(id)),
                    ("tag".into(), text(&format!("b{b}:{id}"))),
                ])
            );
        }
        seen += 1;
    }
    assert_eq!(seen, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_in_a_deep_directory_keeps_its_file_name_in_messages() {
    let file = PathBuf::from("/builds/acme/data-platform/migrations/2024-06-customers/plan.toml");
    assert!(file.as_os_str().len() > 60);
    let code = "function transform(row)\n  if row.id then\n    error('bad phone')\n  end\nend\n";
    let source = Source {
        code: code.to_string(),
        file: file.clone(),
        first_line: 10,
    };
    let t = Transform::lua(source, limits()).unwrap();
    let message = row_error(apply_one(&t, &["id"], vec![Value::Int(1)]).await);
    assert!(message.contains("plan.toml:12: bad phone"), "{message}");

    let e = refused(
        Source {
            code: "function transform(row)\n  return {x = = 1}\nend\n".to_string(),
            file,
            first_line: 10,
        },
        limits(),
    );
    assert!(e.message().contains("plan.toml:11:"), "{e}");
}

#[test]
fn building_an_interpreter_does_not_stall_the_runtime() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    let code = r#"
local acc = 0
for i = 1, 3e7 do acc = acc + i % 3 end
function transform(row) return {acc = acc} end
"#;
    let limits = Limits {
        row_timeout: Duration::from_secs(30),
        lua_memory: 64 * MIB,
        max_line_bytes: 16 * MIB,
    };
    let started = Instant::now();
    let t = Arc::new(compile_with(code, limits));
    let load_time = started.elapsed();
    assert!(
        load_time >= Duration::from_millis(150),
        "the top-level code must take a while to show a stall: {load_time:?}"
    );

    // One worker thread: anything blocking it stops the ticker.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let max_gap = rt.block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        let max_gap = Arc::new(Mutex::new(Duration::ZERO));
        let ticker = tokio::spawn({
            let stop = stop.clone();
            let max_gap = max_gap.clone();
            async move {
                let mut last = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let gap = last.elapsed();
                    last = Instant::now();
                    let mut max = max_gap.lock().unwrap();
                    *max = (*max).max(gap);
                }
            }
        });
        // Two batches at once: the second needs a second interpreter.
        let mut set = tokio::task::JoinSet::new();
        for id in 0..2 {
            let t = t.clone();
            set.spawn(async move { t.apply(batch(&["id"], vec![vec![Value::Int(id)]])).await });
        }
        while let Some(joined) = set.join_next().await {
            let out = joined.unwrap().unwrap();
            assert!(matches!(&out[..], [Outcome::Row(_)]), "{out:?}");
        }
        stop.store(true, Ordering::Relaxed);
        ticker.await.unwrap();
        let gap = *max_gap.lock().unwrap();
        gap
    });
    rt.shutdown_background();
    assert!(
        max_gap < load_time / 2,
        "the runtime stalled for {max_gap:?} (loading the script takes {load_time:?})"
    );
}
