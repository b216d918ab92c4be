//! What the catalogs say about a table, for findings: its size, every index (expression and
//! partial ones included), its row triggers, and the foreign keys that point at it.

use godwit_driver::{quote_ident, Conn, Dialect, Result, Value};

use crate::findings::shape::Verb;

/// One index, as the catalog describes it.
#[derive(Debug, Clone)]
pub(crate) struct Index {
    pub(crate) name: String,
    /// The names it mentions: its columns, and those in its expressions and predicate.
    pub(crate) names: Vec<String>,
    /// Whether each row has many entries in it (GIN, GiST, full-text, spatial).
    pub(crate) heavy: bool,
    pub(crate) primary: bool,
}

impl Index {
    pub(crate) fn mentions(&self, column: &str) -> bool {
        self.names.iter().any(|n| n.eq_ignore_ascii_case(column))
    }
}

/// A foreign key in another table that points at the table asked about.
#[derive(Debug, Clone)]
pub(crate) struct Referencing {
    pub(crate) name: String,
    pub(crate) table: String,
    /// The referencing table's columns.
    pub(crate) columns: Vec<String>,
    /// The referenced table's columns.
    pub(crate) referenced: Vec<String>,
    /// Whether an index of the referencing table starts with its columns.
    pub(crate) indexed: bool,
}

/// `schema.table` split in two; `None` for the schema of an unqualified name.
fn split(table: &str) -> (Value, Value) {
    match table.rsplit_once('.') {
        Some((schema, name)) => (Value::Text(schema.into()), Value::Text(name.into())),
        None => (Value::Null, Value::Text(table.into())),
    }
}

fn texts(row: &godwit_driver::Row, at: usize) -> String {
    match row.get(at) {
        Value::Text(t) => t.clone(),
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        Value::Null => String::new(),
        other => format!("{other:?}"),
    }
}

/// How many rows the database thinks `table` has: PostgreSQL's planner estimate, MySQL's
/// `TABLE_ROWS`, SQLite's count. `None` when the table is not found.
pub(crate) async fn rows(conn: &mut dyn Conn, table: &str) -> Result<Option<f64>> {
    let dialect = conn.dialect();
    let quoted = quote_ident(dialect, table);
    match dialect {
        Dialect::Postgres => {
            // The planner's own figure, which it works out for tables never analyzed too.
            let found = conn
                .query(
                    "SELECT to_regclass($1) IS NOT NULL",
                    &[Value::Text(quoted.clone())],
                )
                .await?;
            if found.first().map(|r| r.get(0)) != Some(&Value::Bool(true)) {
                return Ok(None);
            }
            let rows = conn
                .query(
                    &format!("EXPLAIN (FORMAT JSON) SELECT 1 FROM {quoted}"),
                    &[],
                )
                .await?;
            let plan = match rows.first().map(|r| r.get(0)) {
                Some(Value::Json(j)) => j.clone(),
                Some(Value::Text(t)) => serde_json::from_str(t).unwrap_or_default(),
                _ => serde_json::Value::Null,
            };
            Ok(plan[0]["Plan"]["Plan Rows"].as_f64())
        }
        Dialect::MySql => {
            let (schema, name) = split(table);
            let rows = conn
                .query(
                    "SELECT TABLE_ROWS FROM information_schema.TABLES \
                     WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ?",
                    &[schema, name],
                )
                .await?;
            Ok(rows.first().map(|r| r.get(0).as_i64().unwrap_or(0) as f64))
        }
        Dialect::Sqlite => {
            let rows = conn
                .query(&format!("SELECT count(*) FROM {quoted}"), &[])
                .await;
            match rows {
                Ok(rows) => Ok(rows
                    .first()
                    .and_then(|r| r.get(0).as_i64())
                    .map(|n| n as f64)),
                Err(_) => Ok(None),
            }
        }
    }
}

/// Every index of `table`.
pub(crate) async fn indexes(conn: &mut dyn Conn, table: &str) -> Result<Vec<Index>> {
    let dialect = conn.dialect();
    match dialect {
        Dialect::Postgres => {
            let rows = conn
                .query(
                    "SELECT i.relname::text, am.amname::text, pg_get_indexdef(i.oid), ix.indisprimary \
                     FROM pg_index ix JOIN pg_class i ON i.oid = ix.indexrelid \
                     JOIN pg_am am ON am.oid = i.relam WHERE ix.indrelid = to_regclass($1) \
                     ORDER BY 1",
                    &[Value::Text(quote_ident(dialect, table))],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| {
                    let definition = texts(r, 2);
                    // What follows USING method: the columns, expressions, predicate.
                    let body = definition
                        .split_once(" USING ")
                        .map_or(definition.as_str(), |(_, b)| b);
                    Index {
                        name: texts(r, 0),
                        names: names_in(body, dialect),
                        heavy: matches!(texts(r, 1).as_str(), "gin" | "gist" | "spgist"),
                        primary: r.get(3) == &Value::Bool(true),
                    }
                })
                .collect())
        }
        Dialect::MySql => {
            let (schema, name) = split(table);
            let rows = conn
                .query(
                    "SELECT INDEX_NAME, INDEX_TYPE, \
                       GROUP_CONCAT(COALESCE(COLUMN_NAME, '') ORDER BY SEQ_IN_INDEX SEPARATOR ',') \
                     FROM information_schema.STATISTICS \
                     WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? \
                     GROUP BY INDEX_NAME, INDEX_TYPE ORDER BY INDEX_NAME",
                    &[schema, name],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| {
                    let name = texts(r, 0);
                    Index {
                        primary: name == "PRIMARY",
                        name,
                        names: texts(r, 2)
                            .split(',')
                            .filter(|c| !c.is_empty())
                            .map(str::to_string)
                            .collect(),
                        heavy: matches!(texts(r, 1).as_str(), "FULLTEXT" | "SPATIAL"),
                    }
                })
                .collect())
        }
        Dialect::Sqlite => {
            let rows = conn
                .query(
                    "SELECT l.name, l.origin, (SELECT sql FROM sqlite_master m WHERE m.name = l.name), \
                       (SELECT group_concat(coalesce(i.name, ''), ',') FROM pragma_index_info(l.name) i) \
                     FROM pragma_index_list(?) l ORDER BY l.name",
                    &[Value::Text(table.to_string())],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| {
                    let mut names: Vec<String> = texts(r, 3)
                        .split(',')
                        .filter(|c| !c.is_empty())
                        .map(str::to_string)
                        .collect();
                    // Expressions and predicates are only in the index's SQL.
                    if let Some((_, body)) = texts(r, 2).split_once('(') {
                        names.extend(names_in(body, dialect));
                    }
                    Index {
                        name: texts(r, 0),
                        names,
                        heavy: false,
                        primary: texts(r, 1) == "pk",
                    }
                })
                .collect())
        }
    }
}

/// The names in a piece of SQL (to find the columns an index definition mentions).
fn names_in(sql: &str, dialect: Dialect) -> Vec<String> {
    godwit_driver::tokens::tokens(sql, dialect)
        .iter()
        .filter_map(|t| t.name().map(str::to_string))
        .collect()
}

/// The row triggers on `table` that fire for `verb`, by name.
pub(crate) async fn row_triggers(
    conn: &mut dyn Conn,
    table: &str,
    verb: Verb,
) -> Result<Vec<String>> {
    let dialect = conn.dialect();
    let (bit, event) = match verb {
        Verb::Update => (16, "UPDATE"),
        Verb::Delete => (8, "DELETE"),
        Verb::Insert => (4, "INSERT"),
        Verb::Other => return Ok(Vec::new()),
    };
    let rows = match dialect {
        Dialect::Postgres => {
            conn.query(
                "SELECT tgname::text FROM pg_trigger WHERE tgrelid = to_regclass($1) \
                 AND NOT tgisinternal AND tgenabled <> 'D' AND (tgtype & 1) = 1 AND (tgtype & $2) <> 0 \
                 ORDER BY 1",
                &[Value::Text(quote_ident(dialect, table)), Value::Int(bit)],
            )
            .await?
        }
        Dialect::MySql => {
            let (schema, name) = split(table);
            conn.query(
                "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS \
                 WHERE EVENT_OBJECT_SCHEMA = COALESCE(?, DATABASE()) AND EVENT_OBJECT_TABLE = ? \
                 AND EVENT_MANIPULATION = ? ORDER BY 1",
                &[schema, name, Value::Text(event.into())],
            )
            .await?
        }
        Dialect::Sqlite => {
            let rows = conn
                .query(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ? \
                     COLLATE NOCASE ORDER BY name",
                    &[Value::Text(table.to_string())],
                )
                .await?;
            // SQLite's triggers are all row triggers; the event is in their SQL.
            return Ok(rows
                .iter()
                .filter(|r| {
                    let sql = texts(r, 1);
                    let toks = godwit_driver::tokens::tokens(&sql, dialect);
                    let on = toks.iter().position(|t| t.is("ON")).unwrap_or(toks.len());
                    toks[..on].iter().any(|t| t.is(event))
                })
                .map(|r| texts(r, 0))
                .collect());
        }
    };
    Ok(rows.iter().map(|r| texts(r, 0)).collect())
}

/// The foreign keys of other tables that point at `table`, and whether each is indexed on its
/// referencing side. MySQL's InnoDB indexes every foreign key itself, so there are none to
/// report there.
pub(crate) async fn referencing(conn: &mut dyn Conn, table: &str) -> Result<Vec<Referencing>> {
    let dialect = conn.dialect();
    let list = |s: String| -> Vec<String> {
        s.split(',')
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect()
    };
    match dialect {
        Dialect::Postgres => {
            let rows = conn
                .query(
                    "SELECT c.conname::text, c.conrelid::regclass::text, \
                       (SELECT string_agg(a.attname, ',' ORDER BY k.n) FROM unnest(c.conkey) WITH ORDINALITY k(att, n) \
                          JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.att), \
                       (SELECT string_agg(a.attname, ',' ORDER BY k.n) FROM unnest(c.confkey) WITH ORDINALITY k(att, n) \
                          JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.att), \
                       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.conrelid AND i.indpred IS NULL \
                          AND (string_to_array(i.indkey::text, ' ')::int2[])[1:cardinality(c.conkey)] @> c.conkey) \
                     FROM pg_constraint c WHERE c.contype = 'f' AND c.confrelid = to_regclass($1) ORDER BY 1",
                    &[Value::Text(quote_ident(dialect, table))],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| Referencing {
                    name: texts(r, 0),
                    table: texts(r, 1),
                    columns: list(texts(r, 2)),
                    referenced: list(texts(r, 3)),
                    indexed: r.get(4) == &Value::Bool(true),
                })
                .collect())
        }
        Dialect::MySql => Ok(Vec::new()),
        Dialect::Sqlite => {
            let rows = conn
                .query(
                    "SELECT m.name, f.id, group_concat(f.\"from\", ','), group_concat(coalesce(f.\"to\", ''), ',') \
                     FROM sqlite_master m, pragma_foreign_key_list(m.name) f \
                     WHERE m.type = 'table' AND f.\"table\" = ? COLLATE NOCASE \
                     GROUP BY m.name, f.id ORDER BY m.name, f.id",
                    &[Value::Text(table.to_string())],
                )
                .await?;
            let mut out = Vec::new();
            for r in &rows {
                let child = texts(r, 0);
                let columns = list(texts(r, 2));
                let indexed = indexes(conn, &child).await?.iter().any(|i| {
                    columns.iter().all(|c| {
                        i.names
                            .iter()
                            .take(columns.len())
                            .any(|n| n.eq_ignore_ascii_case(c))
                    })
                });
                out.push(Referencing {
                    name: format!("{child} foreign key {}", r.get(1).as_i64().unwrap_or(0)),
                    table: child,
                    columns,
                    referenced: list(texts(r, 3)),
                    indexed,
                });
            }
            Ok(out)
        }
    }
}
