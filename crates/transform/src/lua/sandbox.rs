//! What a transform may reach: the pruned libraries, `print` to the log, the `pcall` and
//! `xpcall` that cannot swallow a stopped row, and the `godwit` helper library.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use mlua::{Lua, LuaSerdeExt};

use super::values::{big_number, json_to_lua, lua_to_json, BIG_NUMBER};
use super::{first_part, is_memory_error, Clock};

/// The most one row's `print` calls show, in bytes.
const PRINT_PER_ROW: usize = 64 * 1024;

/// Removes what a transform must not reach and adds the `godwit` helper library.
pub(super) fn install_sandbox(lua: &Lua, clock: Arc<Clock>) -> mlua::Result<()> {
    let globals = lua.globals();
    prune(&globals)?;
    globals.raw_set("print", print_to_log(lua, clock.clone())?)?;
    let godwit = lua.create_table()?;
    godwit.raw_set("null", mlua::Value::NULL)?;
    godwit.raw_set("_stopped", stop_check(lua, clock)?)?;
    godwit.raw_set("json", json_library(lua)?)?;
    globals.raw_set("godwit", godwit)?;
    lua.load(HELPERS).set_name("=godwit").exec()
}

/// Takes away the base library's ways to files and modules, the collector, and
/// `string.dump`.
fn prune(globals: &mlua::Table) -> mlua::Result<()> {
    for name in ["dofile", "loadfile", "require", "collectgarbage"] {
        globals.raw_set(name, mlua::Value::Nil)?;
    }
    let string: mlua::Table = globals.get("string")?;
    string.raw_set("dump", mlua::Value::Nil)
}

/// `print` to godwit's log, never to stdout, which `--json` keeps for events.
fn print_to_log(lua: &Lua, clock: Arc<Clock>) -> mlua::Result<mlua::Function> {
    // A `print` in a loop must not flood the log: each call shows at most
    // `godwit_driver::MAX_MESSAGE` bytes, and a row at most `PRINT_PER_ROW`, then one notice.
    // The row is told apart by its deadline, which the clock sets afresh for each row.
    let printed = Mutex::new((0_u64, 0_usize));
    lua.create_function(move |_, args: mlua::Variadic<mlua::Value>| {
        let row = clock.deadline.load(Ordering::Relaxed);
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
    })
}

/// `godwit.json`: encode, decode, exact numbers, and (for the Lua part) the array marker.
fn json_library(lua: &Lua) -> mlua::Result<mlua::Table> {
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
    Ok(json)
}

/// `godwit._stopped`, which the Lua `pcall` and `xpcall` call and then take away.
fn stop_check(lua: &Lua, clock: Arc<Clock>) -> mlua::Result<mlua::Function> {
    // Told what each `pcall`/`xpcall` caught; true when the row must stop (time up, or a
    // memory error the script would otherwise swallow).
    lua.create_function(move |_, (ok, caught): (bool, mlua::Value)| {
        if !ok && is_memory_value(&caught) {
            clock.out_of_memory.store(true, Ordering::Relaxed);
        }
        Ok(clock.expired() || clock.memory_hit())
    })
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

/// Whether a value `pcall` caught is a memory error: Lua's own (its message, the string
/// Lua raises for every failed allocation) or one raised inside a Rust helper.
fn is_memory_value(caught: &mlua::Value) -> bool {
    match caught {
        mlua::Value::String(s) => s.as_bytes().as_ref() == b"not enough memory",
        mlua::Value::Error(e) => is_memory_error(e),
        _ => false,
    }
}
