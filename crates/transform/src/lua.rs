//! Lua transforms in a sandbox.
//!
//! Each interpreter loads only the `table`, `string`, `math` and `utf8` libraries and a pruned
//! base library: no `io`, `os`, `require`, `debug`, `dofile` or `loadfile`, `load` accepts text
//! only (bytecode can crash the interpreter) and `string.dump` is gone. `print` goes to godwit's
//! log on stderr, never to stdout, which `--json` keeps for events. Every row runs under a
//! deadline checked by an instruction hook, and the interpreter under a memory limit, so a
//! runaway script fails its step with a clear message instead of hanging the run.
//!
//! A step keeps one interpreter per batch running at once; each compiles the script once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use godwit_driver::{exact_float, Error, Value};
use mlua::chunk::ChunkMode;
use mlua::{HookTriggers, Lua, LuaOptions, LuaSerdeExt, StdLib, VmState};

use crate::{Limits, Outcome, Rows, Source};

/// How many VM instructions run between two looks at the clock: about 0.1 ms of Lua.
const HOOK_EVERY: u32 = 10_000;

/// The most one row's `print` calls show, in bytes.
const PRINT_PER_ROW: usize = 64 * 1024;

/// Compiled interpreters for one step, handed to one batch at a time.
pub struct LuaPool {
    source: Source,
    limits: Limits,
    idle: Mutex<Vec<Interp>>,
}

impl LuaPool {
    /// Compiles the script once to find its mistakes before any batch runs.
    ///
    /// # Errors
    /// Permanent: the code does not compile, fails while loading, or defines no `transform`.
    pub fn new(source: Source, limits: Limits) -> Result<LuaPool, Error> {
        let first = load_bounded(&source, limits)?;
        Ok(LuaPool {
            source,
            limits,
            idle: Mutex::new(vec![first]),
        })
    }

    pub(crate) async fn apply(&self, rows: Rows) -> Result<Vec<Outcome>, Error> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let clock = idle
            .as_ref()
            .map_or_else(|| Arc::new(Clock::new()), |i| i.clock.clone());
        let (source, limits, thread_clock) = (self.source.clone(), self.limits, clock.clone());
        // Lua runs on a blocking thread, building a new interpreter included (its top-level
        // code may take a while): a slow row must not hold up the runtime's other tasks
        // (heartbeats, claims).
        let mut task = tokio::task::spawn_blocking(move || {
            let interp = match idle {
                Some(interp) => interp,
                None => Interp::new(&source, limits, thread_clock)?,
            };
            let result = interp.run(&rows);
            Ok::<_, Error>((interp, result))
        });
        // The instruction hook cannot stop a long call into a C function (a pathological
        // `string.find`): past the deadline and a grace second, give up on the interpreter.
        let grace = GRACE;
        let joined = loop {
            tokio::select! {
                joined = &mut task => break joined,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if clock.overdue(grace) {
                        return Err(Error::permanent(format!(
                            "the Lua transform ran longer than row_timeout ({:?}) inside a library call (such as a string pattern) and could not be stopped; the step stops here",
                            self.limits.row_timeout
                        )));
                    }
                }
            }
        };
        let (interp, result) =
            joined.map_err(|e| Error::permanent(format!("the Lua transform panicked: {e}")))??;
        // An interpreter that hit a limit is dropped: its state may hold the runaway's garbage.
        if result.is_ok() {
            if let Ok(mut idle) = self.idle.lock() {
                idle.push(interp);
            }
        }
        result
    }
}

/// How long past `row_timeout` a call stuck in a library function is waited for before the
/// interpreter is given up.
const GRACE: Duration = Duration::from_secs(1);

/// Builds the first interpreter on a thread of its own and waits for it at most `row_timeout`
/// and [`GRACE`]. The hook stops top-level code looping in Lua, but not one long call into a
/// library function (a pathological `string.find`); the thread left in that call belongs to
/// no runtime, so neither `check` nor `run` waits for it when the process exits.
fn load_bounded(source: &Source, limits: Limits) -> Result<Interp, Error> {
    let (sender, receiver) = std::sync::mpsc::channel();
    let thread_source = source.clone();
    std::thread::Builder::new()
        .name("godwit-lua-load".into())
        .spawn(move || {
            let loaded = Interp::new(&thread_source, limits, Arc::new(Clock::new()));
            // The receiver is gone when loading took too long: nothing left to tell.
            let _ = sender.send(loaded);
        })
        .map_err(|e| {
            Error::permanent(format!("cannot start a thread to load the Lua script: {e}"))
        })?;
    match receiver.recv_timeout(limits.row_timeout + GRACE) {
        Ok(loaded) => loaded,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(Error::permanent(format!(
            "the Lua script in {} ran longer than row_timeout ({:?}) while loading, inside a library call (such as a string pattern) that could not be stopped",
            source.file.display(),
            limits.row_timeout
        ))),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(Error::permanent(format!(
            "loading the Lua script in {} panicked",
            source.file.display()
        ))),
    }
}

/// The time limit of the row an interpreter is running, shared with its hook, its `pcall`
/// and the pool's watchdog.
struct Clock {
    epoch: Instant,
    /// Nanoseconds after `epoch` when the current row's time is up; 0 when none runs.
    deadline: AtomicU64,
    /// Set by the hook when it stopped a row, so that `pcall` cannot swallow the stop.
    timed_out: AtomicBool,
    /// Set when `pcall` or `xpcall` caught a memory error: passing `lua_memory` fails the
    /// row's batch even when the script catches it.
    out_of_memory: AtomicBool,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            epoch: Instant::now(),
            deadline: AtomicU64::new(0),
            timed_out: AtomicBool::new(false),
            out_of_memory: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn start(&self, limit: Duration) {
        self.timed_out.store(false, Ordering::Relaxed);
        self.out_of_memory.store(false, Ordering::Relaxed);
        let due = self.now() + limit.as_nanos() as u64;
        self.deadline.store(due.max(1), Ordering::Relaxed);
    }

    fn stop(&self) {
        self.deadline.store(0, Ordering::Relaxed);
    }

    /// Whether the running row's time is up (and remembers it).
    fn expired(&self) -> bool {
        if self.timed_out.load(Ordering::Relaxed) {
            return true;
        }
        let due = self.deadline.load(Ordering::Relaxed);
        let over = due != 0 && self.now() > due;
        if over {
            self.timed_out.store(true, Ordering::Relaxed);
        }
        over
    }

    /// Whether the running row hit `lua_memory` (even if the script caught the error).
    fn memory_hit(&self) -> bool {
        self.out_of_memory.load(Ordering::Relaxed)
    }

    /// Whether the running row is past its deadline by more than `grace`.
    fn overdue(&self, grace: Duration) -> bool {
        let due = self.deadline.load(Ordering::Relaxed);
        due != 0 && self.now() > due + grace.as_nanos() as u64
    }
}

/// One sandboxed interpreter with the script loaded.
struct Interp {
    lua: Lua,
    transform: mlua::Function,
    clock: Arc<Clock>,
    limits: Limits,
}

impl Interp {
    fn new(source: &Source, limits: Limits, clock: Arc<Clock>) -> Result<Interp, Error> {
        let name = source.file.display().to_string();
        let fail = |e: mlua::Error| {
            if is_memory_error(&e) {
                Error::permanent(format!(
                    "the Lua script in {name} used more than lua_memory ({} bytes) while loading",
                    limits.lua_memory
                ))
            } else {
                Error::permanent(first_part(&e))
            }
        };
        let lua = Lua::new_with(
            StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::UTF8,
            LuaOptions::new(),
        )
        .map_err(fail)?;
        install_sandbox(&lua, clock.clone()).map_err(fail)?;
        lua.set_memory_limit(usize::try_from(limits.lua_memory).unwrap_or(usize::MAX))
            .map_err(fail)?;
        {
            let clock = clock.clone();
            lua.set_hook(
                HookTriggers::new().every_nth_instruction(HOOK_EVERY),
                move |_, _| {
                    if clock.expired() {
                        return Err(mlua::Error::runtime("row_timeout"));
                    }
                    Ok(VmState::Continue)
                },
            )
            .map_err(fail)?;
        }
        // Lua counts lines from the start of the chunk: pad so they are the file's lines.
        let padded = format!(
            "{}{}",
            "\n".repeat(source.first_line.saturating_sub(1)),
            source.code
        );
        // Top-level code runs under the same limit as a row.
        clock.start(limits.row_timeout);
        // `@` names a file: Lua keeps the end of a long path in its messages.
        let loaded = lua
            .load(padded.as_str())
            .set_name(format!("@{name}"))
            .set_mode(ChunkMode::Text)
            .exec();
        let timed_out = clock.expired();
        let memory_hit = clock.memory_hit();
        clock.stop();
        if timed_out {
            return Err(Error::permanent(format!(
                "the Lua script in {name} ran longer than row_timeout ({:?}) while loading",
                limits.row_timeout
            )));
        }
        if memory_hit {
            return Err(fail(mlua::Error::MemoryError("caught by pcall".into())));
        }
        loaded.map_err(fail)?;
        let transform = match lua.globals().get::<mlua::Value>("transform") {
            Ok(mlua::Value::Function(f)) => f,
            _ => {
                return Err(Error::permanent(format!(
                    "the Lua script in {name} defines no function transform(row)"
                )))
            }
        };
        Ok(Interp {
            lua,
            transform,
            clock,
            limits,
        })
    }

    fn run(&self, rows: &Rows) -> Result<Vec<Outcome>, Error> {
        let mut out = Vec::with_capacity(rows.rows.len());
        let over_memory = |values: &[Value]| {
            Error::permanent(format!(
                "the Lua transform used more than lua_memory ({} bytes) on the row with key {}",
                self.limits.lua_memory,
                key_text(values)
            ))
        };
        for values in &rows.rows {
            let table = self.row_table(&rows.columns, values).map_err(|e| {
                if is_memory_error(&e) {
                    return over_memory(values);
                }
                Error::permanent(format!(
                    "cannot hand the row with key {} to Lua: {}",
                    key_text(values),
                    first_part(&e)
                ))
            })?;
            self.clock.start(self.limits.row_timeout);
            let result = self.transform.call::<mlua::Value>(table);
            let timed_out = self.clock.expired();
            let memory_hit = self.clock.memory_hit();
            self.clock.stop();
            if memory_hit {
                return Err(over_memory(values));
            }
            if timed_out {
                return Err(Error::permanent(format!(
                    "the Lua transform ran longer than row_timeout ({:?}) on the row with key {}",
                    self.limits.row_timeout,
                    key_text(values)
                )));
            }
            let outcome = match result {
                Ok(value) => self.outcome(value),
                Err(e) if is_memory_error(&e) => return Err(over_memory(values)),
                Err(e) => Outcome::Error(first_part(&e)),
            };
            out.push(crate::keep_json_scalars(&rows.columns, values, outcome));
        }
        Ok(out)
    }

    fn row_table(&self, columns: &[String], values: &[Value]) -> mlua::Result<mlua::Table> {
        let table = self.lua.create_table_with_capacity(0, columns.len())?;
        for (column, value) in columns.iter().zip(values) {
            table.raw_set(column.as_str(), to_lua(&self.lua, value)?)?;
        }
        Ok(table)
    }

    fn outcome(&self, value: mlua::Value) -> Outcome {
        match value {
            mlua::Value::Nil => Outcome::Keep,
            mlua::Value::Table(t) => {
                let len = t.raw_len();
                let is_list = len > 0 && t.pairs::<mlua::Value, mlua::Value>().count() == len;
                if is_list {
                    let mut rows = Vec::with_capacity(len);
                    for item in t.sequence_values::<mlua::Value>() {
                        match item {
                            Ok(mlua::Value::Table(row)) => match self.columns(row) {
                                Ok(row) => rows.push(row),
                                Err(e) => return Outcome::Error(e),
                            },
                            _ => {
                                return Outcome::Error(
                                    "transform returned a list whose items are not all tables of columns"
                                        .into(),
                                )
                            }
                        }
                    }
                    Outcome::Rows(rows)
                } else {
                    match self.columns(t) {
                        Ok(row) => Outcome::Row(row),
                        Err(e) => Outcome::Error(e),
                    }
                }
            }
            other => Outcome::Error(format!(
                "transform returned {} {}; return a table of columns, nil to leave the row, or a list of tables",
                if other.type_name().starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" },
                other.type_name()
            )),
        }
    }

    /// A table of column values, sorted by column so rows changing the same columns group.
    fn columns(&self, table: mlua::Table) -> Result<Vec<(String, Value)>, String> {
        let mut row = Vec::new();
        for pair in table.pairs::<mlua::Value, mlua::Value>() {
            let (k, v) = pair.map_err(|e| first_part(&e))?;
            let mlua::Value::String(name) = k else {
                return Err(format!(
                    "transform returned a table with a {} key; name columns with strings",
                    k.type_name()
                ));
            };
            let name = name.to_str().map_err(|e| first_part(&e))?.to_string();
            let value =
                from_lua(&self.lua, v).map_err(|problem| format!("column {name}: {problem}"))?;
            row.push((name, value));
        }
        row.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(row)
    }
}

/// Removes what a transform must not reach and adds the `godwit` helper library.
fn install_sandbox(lua: &Lua, clock: Arc<Clock>) -> mlua::Result<()> {
    let globals = lua.globals();
    for name in ["dofile", "loadfile", "require", "collectgarbage"] {
        globals.raw_set(name, mlua::Value::Nil)?;
    }
    let string: mlua::Table = globals.get("string")?;
    string.raw_set("dump", mlua::Value::Nil)?;
    // A `print` in a loop must not flood the log: each call shows at most
    // `godwit_driver::MAX_MESSAGE` bytes, and a row at most `PRINT_PER_ROW`, then one notice.
    // The row is told apart by its deadline, which the clock sets afresh for each row.
    let printed = Mutex::new((0_u64, 0_usize));
    let print_clock = clock.clone();
    let print = lua.create_function(move |_, args: mlua::Variadic<mlua::Value>| {
        let row = print_clock.deadline.load(Ordering::Relaxed);
        let mut printed = printed.lock().unwrap_or_else(|e| e.into_inner());
        if printed.0 != row {
            *printed = (row, 0);
        }
        if printed.1 >= PRINT_PER_ROW {
            return Ok(());
        }
        let text: Vec<String> = args
            .iter()
            .map(|v| v.to_string().unwrap_or_else(|_| v.type_name().to_string()))
            .collect();
        let line = godwit_driver::cap_message(text.join("\t"));
        printed.1 += line.len();
        // The log does not escape every control character (a NUL passes): the script's text
        // must not drive the terminal.
        let mut shown = String::with_capacity(line.len());
        for c in line.chars() {
            if c.is_control() && c != '\t' {
                shown.extend(c.escape_debug());
            } else {
                shown.push(c);
            }
        }
        tracing::info!(target: "godwit::lua", "{shown}");
        if printed.1 >= PRINT_PER_ROW {
            tracing::info!(
                target: "godwit::lua",
                limit = PRINT_PER_ROW,
                "this row printed more than the limit; its further print calls are not shown"
            );
        }
        Ok(())
    })?;
    globals.raw_set("print", print)?;
    let godwit = lua.create_table()?;
    godwit.raw_set("null", mlua::Value::NULL)?;
    let json = lua.create_table()?;
    json.raw_set(
        "encode",
        lua.create_function(|lua, value: mlua::Value| match lua_to_json(lua, value) {
            Ok(json) => Ok(json.to_string()),
            Err(e) => Err(mlua::Error::runtime(format!(
                "godwit.json.encode: {}",
                first_part(&e)
            ))),
        })?,
    )?;
    json.raw_set(
        "decode",
        lua.create_function(|lua, text: mlua::LuaString| {
            let json: serde_json::Value = serde_json::from_slice(&text.as_bytes())
                .map_err(|e| mlua::Error::runtime(format!("godwit.json.decode: {e}")))?;
            json_to_lua(lua, &json)
        })?,
    )?;
    // A JSON number Lua cannot hold exactly: a table keeping its digits, printed as them.
    let number_mt = lua.create_table()?;
    number_mt.raw_set(
        "__tostring",
        lua.create_function(|_, t: mlua::Table| t.raw_get::<mlua::Value>(BIG_NUMBER))?,
    )?;
    lua.set_named_registry_value(BIG_NUMBER, number_mt)?;
    json.raw_set(
        "number",
        lua.create_function(|lua, digits: String| {
            if godwit_driver::normalize_decimal(&digits).is_none() {
                return Err(mlua::Error::runtime(format!(
                    "godwit.json.number: {digits:?} is not a decimal number"
                )));
            }
            big_number(lua, &digits)
        })?,
    )?;
    json.raw_set("array_mt", lua.array_metatable())?;
    // Told what each `pcall`/`xpcall` caught; true when the row must stop (time up, or a
    // memory error the script would otherwise swallow).
    godwit.raw_set(
        "_stopped",
        lua.create_function(move |_, (ok, caught): (bool, mlua::Value)| {
            if !ok && is_memory_value(&caught) {
                clock.out_of_memory.store(true, Ordering::Relaxed);
            }
            Ok(clock.expired() || clock.memory_hit())
        })?,
    )?;
    godwit.raw_set("json", json)?;
    globals.raw_set("godwit", godwit)?;
    lua.load(HELPERS).set_name("=godwit").exec()
}

/// The parts of the sandbox and the helper library written in Lua.
const HELPERS: &str = r#"
local raw_load = load
-- Text only: a bytecode chunk can crash the interpreter.
load = function(chunk, name, mode, ...)
  if select('#', ...) > 0 then return raw_load(chunk, name, "t", ...) end
  return raw_load(chunk, name, "t")
end
-- A stopped row stays stopped: `pcall` must not swallow the time limit or a memory error.
local raw_pcall, raw_xpcall, pack, unpack = pcall, xpcall, table.pack, table.unpack
local stopped = godwit._stopped
godwit._stopped = nil
pcall = function(...)
  local r = pack(raw_pcall(...))
  if stopped(r[1], r[2]) then error("row stopped: row_timeout or lua_memory", 0) end
  return unpack(r, 1, r.n)
end
xpcall = function(f, handler, ...)
  if type(handler) ~= "function" then
    error("bad argument #2 to 'xpcall' (function expected, got " .. type(handler) .. ")", 2)
  end
  -- The handler sees the error first and may replace it: look at it before it does.
  local function seen(e)
    stopped(false, e)
    return handler(e)
  end
  local r = pack(raw_xpcall(f, seen, ...))
  if stopped(r[1], r[2]) then error("row stopped: row_timeout or lua_memory", 0) end
  return unpack(r, 1, r.n)
end
-- A finalizer (__gc) runs outside any row's time limit: refused.
local raw_setmetatable = setmetatable
setmetatable = function(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("__gc finalizers are not allowed in a transform", 2)
  end
  return raw_setmetatable(t, mt)
end
local json = godwit.json
local array_mt = json.array_mt
json.array_mt = nil
-- Marks a table as a JSON array, so that an empty one is written as [] rather than {}.
function json.array(t) return setmetatable(t or {}, array_mt) end
function godwit.trim(s) return (s:gsub("^%s+", ""):gsub("%s+$", "")) end
function godwit.starts_with(s, prefix) return s:sub(1, #prefix) == prefix end
function godwit.ends_with(s, suffix) return suffix == "" or s:sub(-#suffix) == suffix end
function godwit.digits(s) return (s:gsub("%D", "")) end
function godwit.split(s, sep)
  local out, from = {}, 1
  if sep == "" then error("godwit.split: empty separator", 2) end
  while true do
    local i, j = s:find(sep, from, true)
    if not i then out[#out + 1] = s:sub(from); return out end
    out[#out + 1] = s:sub(from, i - 1)
    from = j + 1
  end
end
"#;

/// A database value as Lua sees it (the contract's mapping).
fn to_lua(lua: &Lua, value: &Value) -> mlua::Result<mlua::Value> {
    Ok(match value {
        Value::Null => mlua::Value::Nil,
        Value::Bool(b) => mlua::Value::Boolean(*b),
        Value::Int(n) => mlua::Value::Integer(*n),
        Value::Float(f) => mlua::Value::Number(*f),
        Value::Text(s) => mlua::Value::String(lua.create_string(s)?),
        Value::Bytes(b) => mlua::Value::String(lua.create_string(b)?),
        Value::Json(j) => json_to_lua(lua, j)?,
        other => mlua::Value::String(lua.create_string(other.text_form().unwrap_or_default())?),
    })
}

/// A Lua value as godwit binds it; the writer then fits it to the column's type.
fn from_lua(lua: &Lua, value: mlua::Value) -> Result<Value, String> {
    Ok(match value {
        mlua::Value::Nil => Value::Null,
        mlua::Value::LightUserData(p) if p.0.is_null() => Value::Null,
        mlua::Value::Boolean(b) => Value::Bool(b),
        mlua::Value::Integer(n) => Value::Int(n),
        mlua::Value::Number(f) => Value::Float(f),
        mlua::Value::String(s) => match s.to_str() {
            Ok(text) => Value::Text(text.to_string()),
            Err(_) => Value::Bytes(s.as_bytes().to_vec()),
        },
        t @ mlua::Value::Table(_) => Value::Json(lua_to_json(lua, t).map_err(|e| first_part(&e))?),
        other => {
            return Err(format!(
                "a {} cannot be written to a column",
                other.type_name()
            ))
        }
    })
}

/// The key under which a JSON number Lua cannot hold exactly keeps its digits.
const BIG_NUMBER: &str = "$godwit_number";

/// A JSON document as Lua tables: arrays keep the array marker (so `[]` stays `[]`), `null` is
/// `godwit.null`, integers are integers, numbers a float holds exactly are floats, and any
/// other number (more digits than a float keeps) a `godwit.json.number` that keeps its digits,
/// so that fields a script does not touch are written back as they were.
fn json_to_lua(lua: &Lua, json: &serde_json::Value) -> mlua::Result<mlua::Value> {
    use serde_json::Value as J;
    Ok(match json {
        J::Null => mlua::Value::NULL,
        J::Bool(b) => mlua::Value::Boolean(*b),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                return Ok(mlua::Value::Integer(i));
            }
            let text = n.to_string();
            match text.parse::<f64>() {
                Ok(f) if exact_float(f, &text) => mlua::Value::Number(f),
                _ => big_number(lua, &text)?,
            }
        }
        J::String(s) => mlua::Value::String(lua.create_string(s)?),
        J::Array(items) => {
            let t = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.iter().enumerate() {
                t.raw_set(i + 1, json_to_lua(lua, item)?)?;
            }
            t.set_metatable(Some(lua.array_metatable()))?;
            mlua::Value::Table(t)
        }
        J::Object(map) => {
            let t = lua.create_table_with_capacity(0, map.len())?;
            for (k, v) in map {
                t.raw_set(k.as_str(), json_to_lua(lua, v)?)?;
            }
            mlua::Value::Table(t)
        }
    })
}

fn big_number(lua: &Lua, digits: &str) -> mlua::Result<mlua::Value> {
    let t = lua.create_table()?;
    t.raw_set(BIG_NUMBER, digits)?;
    t.set_metatable(Some(lua.named_registry_value::<mlua::Table>(BIG_NUMBER)?))?;
    Ok(mlua::Value::Table(t))
}

/// How deep tables may nest in a JSON document: deeper is taken for a table that contains
/// itself.
const MAX_JSON_DEPTH: usize = 200;

/// Lua tables as a JSON document, big numbers back to the numbers they hold.
///
/// A table is written as what it clearly is, never as a guess that drops keys: a JSON array
/// when it carries the array marker (`godwit.json.array`, every decoded array) or its keys are
/// exactly the integers 1..n; a JSON object when every key is a string; the empty table `{}`
/// is an object. Any other table (integer and string keys mixed, integer keys with holes,
/// keys of other types) is an error, as is a value JSON cannot hold (a function, NaN).
fn lua_to_json(lua: &Lua, value: mlua::Value) -> mlua::Result<serde_json::Value> {
    let marks = JsonMarks {
        array: lua.array_metatable(),
        number: lua.named_registry_value(BIG_NUMBER)?,
    };
    value_to_json(&marks, value, 0).map_err(mlua::Error::runtime)
}

/// The metatables that say what a table stands for in JSON.
struct JsonMarks {
    array: mlua::Table,
    number: mlua::Table,
}

fn value_to_json(
    marks: &JsonMarks,
    value: mlua::Value,
    depth: usize,
) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    Ok(match value {
        mlua::Value::Nil => J::Null,
        mlua::Value::LightUserData(p) if p.0.is_null() => J::Null,
        mlua::Value::Boolean(b) => J::Bool(b),
        mlua::Value::Integer(n) => J::from(n),
        mlua::Value::Number(f) => match serde_json::Number::from_f64(f) {
            Some(n) => J::Number(n),
            None => return Err(format!("{f} cannot be written as JSON")),
        },
        mlua::Value::String(s) => match s.to_str() {
            Ok(text) => J::String(text.to_string()),
            Err(_) => return Err("a string that is not UTF-8 cannot be written as JSON".into()),
        },
        mlua::Value::Table(t) => table_to_json(marks, t, depth)?,
        other => return Err(format!("a {} cannot be written as JSON", other.type_name())),
    })
}

fn table_to_json(
    marks: &JsonMarks,
    table: mlua::Table,
    depth: usize,
) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    if depth >= MAX_JSON_DEPTH {
        return Err(format!(
            "tables nested deeper than {MAX_JSON_DEPTH} levels (does a table contain itself?) cannot be written as JSON"
        ));
    }
    let metatable = table.metatable();
    if metatable.as_ref() == Some(&marks.number) {
        let digits: String = table.raw_get(BIG_NUMBER).map_err(|e| first_part(&e))?;
        return digits
            .parse::<serde_json::Number>()
            .map(J::Number)
            .map_err(|_| format!("{digits:?} is not a JSON number"));
    }
    let marked_array = metatable.as_ref() == Some(&marks.array);
    let mut items: Vec<(i64, mlua::Value)> = Vec::new();
    let mut fields = serde_json::Map::new();
    for pair in table.pairs::<mlua::Value, mlua::Value>() {
        let (key, value) = pair.map_err(|e| first_part(&e))?;
        match key {
            mlua::Value::Integer(i) => items.push((i, value)),
            mlua::Value::String(name) => {
                let name = name
                    .to_str()
                    .map_err(|_| "a table key that is not UTF-8 cannot be written as JSON")?
                    .to_string();
                let value = value_to_json(marks, value, depth + 1)?;
                fields.insert(name, value);
            }
            other => {
                return Err(format!(
                    "a table with a {} key cannot be written as JSON",
                    other.type_name()
                ))
            }
        }
    }
    if marked_array && !fields.is_empty() {
        let first_name = fields.keys().next().cloned().unwrap_or_default();
        return Err(format!(
            "a table marked as a JSON array has a string key ({first_name:?})"
        ));
    }
    if !items.is_empty() && !fields.is_empty() {
        let first_name = fields.keys().next().cloned().unwrap_or_default();
        let first_index = items.iter().map(|(i, _)| *i).min().unwrap_or_default();
        return Err(format!(
            "a table with both integer keys ({first_index}) and string keys ({first_name:?}) is neither a JSON array nor a JSON object"
        ));
    }
    if items.is_empty() && !marked_array {
        return Ok(J::Object(fields));
    }
    // An array: its keys must be exactly 1..n (godwit.null stands for a JSON null).
    items.sort_by_key(|(i, _)| *i);
    let clean = items
        .iter()
        .enumerate()
        .all(|(at, (i, _))| usize::try_from(*i).is_ok_and(|i| i == at + 1));
    if !clean {
        let shown: Vec<String> = items.iter().take(5).map(|(i, _)| i.to_string()).collect();
        let more = if items.len() > 5 { ", …" } else { "" };
        return Err(format!(
            "a table with integer keys {}{more} is not a JSON array: its keys must be 1 to {} without holes (write godwit.null for a JSON null)",
            shown.join(", "),
            items.len()
        ));
    }
    let mut array = Vec::with_capacity(items.len());
    for (_, value) in items {
        array.push(value_to_json(marks, value, depth + 1)?);
    }
    Ok(J::Array(array))
}

/// Whether a value `pcall` caught is a memory error: Lua's own (its message, the string
/// Lua raises for every failed allocation) or one raised inside a Rust helper.
fn is_memory_value(caught: &mlua::Value) -> bool {
    match caught {
        mlua::Value::String(s) => s.as_bytes().as_ref() == b"not enough memory",
        mlua::Value::Error(e) => is_memory_error(e),
        _ => false,
    }
}

fn is_memory_error(e: &mlua::Error) -> bool {
    match e {
        mlua::Error::MemoryError(_) => true,
        mlua::Error::CallbackError { cause, .. } => is_memory_error(cause),
        mlua::Error::WithContext { cause, .. } => is_memory_error(cause),
        _ => false,
    }
}

/// The message without Lua's stack traceback.
fn first_part(e: &mlua::Error) -> String {
    let text = match e {
        mlua::Error::CallbackError { cause, .. } => return first_part(cause),
        mlua::Error::RuntimeError(m) | mlua::Error::MemoryError(m) => m.clone(),
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        other => other.to_string(),
    };
    match text.find("\nstack traceback:") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// The row's key (its first value) for messages.
pub(crate) fn key_text(values: &[Value]) -> String {
    match values.first() {
        Some(Value::Int(n)) => n.to_string(),
        Some(Value::Text(s)) => format!("{s:?}"),
        Some(other) => other.text_form().unwrap_or_else(|| format!("{other:?}")),
        None => "(none)".to_string(),
    }
}
