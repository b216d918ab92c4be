//! Lua transforms in a sandbox.
//!
//! Each interpreter loads only the `table`, `string`, `math` and `utf8` libraries and a pruned
//! base library: no `io`, `os`, `require`, `debug`, `dofile` or `loadfile`, `load` accepts text
//! only (bytecode can crash the interpreter) and `string.dump` is gone. `print` goes to godwit's
//! log on stderr, never to stdout, which `--json` keeps for events. Every row runs under a
//! deadline checked by an instruction hook, and the interpreter under a memory limit, so a
//! runaway script fails its step with a clear message instead of hanging the run.
//!
//! A step keeps one interpreter per batch running at once; each compiles the script once. This
//! file holds the pool, the interpreters and the watchdog; `sandbox` what a script may reach,
//! `values` how values cross into Lua and back.

mod sandbox;
mod values;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use godwit_driver::{Error, Value};
use mlua::chunk::ChunkMode;
use mlua::{HookTriggers, Lua, LuaOptions, StdLib, VmState};

use self::sandbox::install_sandbox;
use self::values::{from_lua, to_lua};
use crate::{Limits, Outcome, Rows, Source};

/// How many VM instructions run between two looks at the clock: about 0.1 ms of Lua.
const HOOK_EVERY: u32 = 10_000;

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
