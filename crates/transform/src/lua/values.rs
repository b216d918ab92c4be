//! Values across the border: database values and JSON documents as Lua sees them, and back.

use godwit_driver::{exact_float, Value};
use mlua::{Lua, LuaSerdeExt};

use super::first_part;

/// A database value as Lua sees it (the contract's mapping).
pub(super) fn to_lua(lua: &Lua, value: &Value) -> mlua::Result<mlua::Value> {
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
pub(super) fn from_lua(lua: &Lua, value: mlua::Value) -> Result<Value, String> {
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
pub(super) const BIG_NUMBER: &str = "$godwit_number";

/// A JSON document as Lua tables: arrays keep the array marker (so `[]` stays `[]`), `null` is
/// `godwit.null`, integers are integers, numbers a float holds exactly are floats, and any
/// other number (more digits than a float keeps) a `godwit.json.number` that keeps its digits,
/// so that fields a script does not touch are written back as they were.
pub(super) fn json_to_lua(lua: &Lua, json: &serde_json::Value) -> mlua::Result<mlua::Value> {
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

pub(super) fn big_number(lua: &Lua, digits: &str) -> mlua::Result<mlua::Value> {
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
pub(super) fn lua_to_json(lua: &Lua, value: mlua::Value) -> mlua::Result<serde_json::Value> {
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
