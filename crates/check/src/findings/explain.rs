//! Each database's plan for a statement, read into one form: the tables it reads in full and
//! how often per statement. PostgreSQL answers `EXPLAIN (FORMAT JSON)`, MariaDB/MySQL
//! `EXPLAIN FORMAT=JSON`, SQLite `EXPLAIN QUERY PLAN`.

use godwit_driver::tokens::tokens;
use godwit_driver::{Conn, Dialect, Value};
use serde_json::Value as Json;

/// How often a read runs in one execution of the statement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Runs {
    /// Once (or once per join build, hash or buffer).
    Once,
    /// Once per row of the outer side: about `times` times in all (`None`: once per row of
    /// the batch, the database gave no estimate).
    PerRow { times: Option<f64>, subquery: bool },
}

/// A read of a whole table (or of a whole index of it) in a statement's plan.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FullRead {
    /// The table as the plan names it (an alias on SQLite; the caller resolves it).
    pub(crate) table: String,
    /// The alias the plan gives it, if any.
    pub(crate) alias: Option<String>,
    pub(crate) runs: Runs,
    /// The condition that picks its rows or joins them, as the database prints it.
    pub(crate) condition: Option<String>,
    /// The plan node, as the database named it.
    pub(crate) evidence: String,
    /// Whether the database builds a temporary index over the table for the statement
    /// (SQLite's automatic index): a full read once per statement.
    pub(crate) builds_index: bool,
}

/// The full reads in the plan of `sql` run with `params`.
pub(crate) async fn full_reads(
    conn: &mut dyn Conn,
    sql: &str,
    params: &[Value],
) -> godwit_driver::Result<Vec<FullRead>> {
    match conn.dialect() {
        Dialect::Postgres => {
            let rows = conn
                .query(&format!("EXPLAIN (FORMAT JSON, VERBOSE) {sql}"), params)
                .await?;
            let plan = json_of(rows.first().map(|r| r.get(0)));
            let mut out = Vec::new();
            if let Some(root) = plan.get(0).and_then(|p| p.get("Plan")) {
                pg_node(root, Runs::Once, None, &mut out);
            }
            Ok(out)
        }
        Dialect::MySql => {
            let rows = conn
                .query(&format!("EXPLAIN FORMAT=JSON {sql}"), params)
                .await?;
            let plan = json_of(rows.first().map(|r| r.get(0)));
            let mut out = Vec::new();
            my_node(&plan, Runs::Once, &mut out);
            Ok(out)
        }
        Dialect::Sqlite => {
            let rows = conn
                .query(&format!("EXPLAIN QUERY PLAN {sql}"), params)
                .await?;
            let lines: Vec<(i64, i64, String)> = rows
                .iter()
                .map(|r| {
                    let text = match r.get(3) {
                        Value::Text(t) => t.clone(),
                        other => format!("{other:?}"),
                    };
                    (
                        r.get(0).as_i64().unwrap_or_default(),
                        r.get(1).as_i64().unwrap_or_default(),
                        text,
                    )
                })
                .collect();
            Ok(sqlite_reads(&lines))
        }
    }
}

/// A plan returned as JSON or as its text.
fn json_of(value: Option<&Value>) -> Json {
    match value {
        Some(Value::Json(j)) => j.clone(),
        Some(Value::Text(t)) => serde_json::from_str(t).unwrap_or(Json::Null),
        Some(Value::Bytes(b)) => serde_json::from_slice(b).unwrap_or(Json::Null),
        _ => Json::Null,
    }
}

fn text<'a>(node: &'a Json, field: &str) -> Option<&'a str> {
    node.get(field).and_then(Json::as_str)
}

fn number(node: &Json, field: &str) -> Option<f64> {
    let v = node.get(field)?;
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// One PostgreSQL plan node and those below it. `runs` says how often this node runs per
/// statement; `join` is the condition of the join this node is a side of.
fn pg_node(node: &Json, runs: Runs, join: Option<&str>, out: &mut Vec<FullRead>) {
    let kind = text(node, "Node Type").unwrap_or_default();
    let rows = number(node, "Plan Rows").unwrap_or(1.0).max(1.0);
    if kind == "Seq Scan" {
        let relation = text(node, "Relation Name").unwrap_or_default();
        let table = match text(node, "Schema") {
            Some(schema) => format!("{schema}.{relation}"),
            None => relation.to_string(),
        };
        let condition = text(node, "Filter").or(join).map(str::to_string);
        let mut evidence = format!("Seq Scan on {relation}");
        if let Some(c) = &condition {
            evidence.push_str(&format!(" ({c})"));
        }
        out.push(FullRead {
            table,
            alias: text(node, "Alias").map(str::to_string),
            runs,
            condition,
            evidence,
            builds_index: false,
        });
    }
    let children = node
        .get("Plans")
        .and_then(Json::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let times = |runs: Runs| match runs {
        Runs::Once => 1.0,
        Runs::PerRow { times, .. } => times.unwrap_or(1.0),
    };
    for (i, child) in children.iter().enumerate() {
        let relation = text(child, "Parent Relationship").unwrap_or_default();
        let subplan = text(child, "Subplan Name").unwrap_or_default();
        let (child_runs, condition) = match (kind, relation) {
            ("Nested Loop", "Inner") if i > 0 => {
                let outer = number(&children[0], "Plan Rows").unwrap_or(1.0).max(1.0);
                let runs = Runs::PerRow {
                    times: Some(times(runs) * outer),
                    subquery: false,
                };
                (runs, text(node, "Join Filter"))
            }
            // A sub-select run for each row (a hashed one is built once).
            (_, "SubPlan") if !subplan.starts_with("hashed") => {
                let runs = Runs::PerRow {
                    times: Some(times(runs) * rows),
                    subquery: true,
                };
                (runs, None)
            }
            (_, "InitPlan") | (_, "SubPlan") => (Runs::Once, None),
            ("Hash Join", _) => (runs, text(node, "Hash Cond")),
            ("Merge Join", _) => (runs, text(node, "Merge Cond")),
            _ => (runs, join),
        };
        pg_node(child, child_runs, condition, out);
    }
}

/// A MariaDB/MySQL plan (any JSON object in it), collecting tables read in full
/// (`access_type` `ALL`, or `index`: the whole index). A table after the first in a
/// `nested_loop` is read once per row before it unless the database buffers the join (a
/// block nested loop or hash join reads it once per buffer); a dependent sub-select runs once
/// per outer row.
fn my_node(node: &Json, runs: Runs, out: &mut Vec<FullRead>) {
    match node {
        Json::Array(items) => {
            for item in items {
                my_node(item, runs, out);
            }
        }
        Json::Object(map) => {
            for (field, value) in map {
                match field.as_str() {
                    "nested_loop" => my_nested_loop(value, runs, out),
                    "table" => my_table(value, runs, out),
                    // MySQL marks the sub-selects it runs per row; MariaDB caches their
                    // results per outer value ("expression_cache") in a SELECT, and in an
                    // UPDATE says nothing: there a condition naming an outer table shows it.
                    "subqueries" | "attached_subqueries" | "select_list_subqueries" => {
                        for sub in value.as_array().map(Vec::as_slice).unwrap_or_default() {
                            let dependent = sub.get("dependent").and_then(Json::as_bool)
                                == Some(true)
                                || sub.get("expression_cache").is_some()
                                || names_outer_table(sub);
                            let sub_runs = if dependent {
                                Runs::PerRow {
                                    times: None,
                                    subquery: true,
                                }
                            } else {
                                runs
                            };
                            my_node(sub, sub_runs, out);
                        }
                    }
                    _ => my_node(value, runs, out),
                }
            }
        }
        _ => {}
    }
}

/// Whether a MariaDB/MySQL sub-select's conditions name a table that is not its own
/// (`c.id` where `c` is read outside it): it runs once per outer row.
fn names_outer_table(sub: &Json) -> bool {
    let mut own = Vec::new();
    let mut conditions = Vec::new();
    collect(sub, &mut own, &mut conditions);
    conditions.iter().any(|condition| {
        let toks = tokens(condition, Dialect::MySql);
        toks.windows(2).any(|w| {
            w[1].is_punct(".")
                && w[0]
                    .name()
                    .is_some_and(|q| !own.iter().any(|t| t.eq_ignore_ascii_case(q)))
        })
    })
}

/// Every `table_name` and every condition in a MariaDB/MySQL plan fragment.
fn collect(node: &Json, own: &mut Vec<String>, conditions: &mut Vec<String>) {
    match node {
        Json::Array(items) => items.iter().for_each(|i| collect(i, own, conditions)),
        Json::Object(map) => {
            for (field, value) in map {
                match (field.as_str(), value.as_str()) {
                    ("table_name", Some(t)) => own.push(t.to_string()),
                    ("attached_condition" | "ref_condition" | "condition", Some(c)) => {
                        conditions.push(c.to_string())
                    }
                    _ => collect(value, own, conditions),
                }
            }
        }
        _ => {}
    }
}

fn my_nested_loop(value: &Json, runs: Runs, out: &mut Vec<FullRead>) {
    let items = value.as_array().map(Vec::as_slice).unwrap_or_default();
    let mut outer_rows: Option<f64> = None;
    for item in items {
        let table = item.get("table");
        let buffered = item.get("block-nl-join").is_some()
            || table.and_then(|t| t.get("using_join_buffer")).is_some()
            || table
                .and_then(|t| text(t, "join_type"))
                .is_some_and(|j| j.starts_with("BNL") || j.starts_with("BKA"));
        let item_runs = match (outer_rows, buffered) {
            (Some(rows), false) => Runs::PerRow {
                times: Some(rows),
                subquery: false,
            },
            _ => runs,
        };
        my_node(item, item_runs, out);
        let examined = table
            .or_else(|| item.get("block-nl-join").and_then(|b| b.get("table")))
            .and_then(|t| number(t, "rows").or_else(|| number(t, "rows_examined_per_scan")))
            .unwrap_or(1.0);
        let filtered = table.and_then(|t| number(t, "filtered")).unwrap_or(100.0);
        let produced = (examined * filtered / 100.0).max(1.0);
        outer_rows = Some(outer_rows.unwrap_or(1.0) * produced);
    }
}

fn my_table(table: &Json, runs: Runs, out: &mut Vec<FullRead>) {
    let access = text(table, "access_type").unwrap_or_default();
    if access == "ALL" || access == "index" {
        let name = text(table, "table_name").unwrap_or_default().to_string();
        let condition = text(table, "attached_condition").map(str::to_string);
        let rows = number(table, "rows").or_else(|| number(table, "rows_examined_per_scan"));
        let mut evidence = format!("table {name}: access_type {access}");
        if let Some(rows) = rows {
            evidence.push_str(&format!(", rows {rows}"));
        }
        if let Some(c) = &condition {
            evidence.push_str(&format!(", condition {c}"));
        }
        out.push(FullRead {
            table: name,
            alias: None,
            runs,
            condition,
            evidence,
            builds_index: false,
        });
    }
    // A table may hold a materialized sub-select.
    for (field, value) in table.as_object().into_iter().flatten() {
        if matches!(
            field.as_str(),
            "materialized" | "subqueries" | "attached_subqueries"
        ) {
            let mut wrapper = serde_json::Map::new();
            wrapper.insert(field.clone(), value.clone());
            my_node(&Json::Object(wrapper), runs, out);
        }
    }
}

/// SQLite's `EXPLAIN QUERY PLAN` lines (id, parent, detail): `SCAN t` reads a table in full
/// (`SCAN t USING COVERING INDEX i` a whole index); one under a `CORRELATED … SUBQUERY`, or
/// after another table under the same parent (the inner side of a join), runs once per outer
/// row; `SEARCH t USING AUTOMATIC … INDEX` builds an index over all of `t` per statement.
fn sqlite_reads(lines: &[(i64, i64, String)]) -> Vec<FullRead> {
    let mut out = Vec::new();
    for (n, (id, parent, detail)) in lines.iter().enumerate() {
        let mut words = detail.split_whitespace();
        let verb = words.next().unwrap_or_default();
        let name = words.next().unwrap_or_default();
        let full = verb == "SCAN" && !name.starts_with('(') && name != "CONSTANT";
        let automatic = verb == "SEARCH" && detail.contains("USING AUTOMATIC");
        if !full && !automatic {
            continue;
        }
        let correlated = ancestors(lines, *parent).any(|d| d.starts_with("CORRELATED"));
        let after_another = lines[..n].iter().any(|(other, p, d)| {
            p == parent && other != id && (d.starts_with("SCAN ") || d.starts_with("SEARCH "))
        });
        let runs = if automatic {
            Runs::Once
        } else if correlated || after_another {
            Runs::PerRow {
                times: None,
                subquery: correlated,
            }
        } else {
            Runs::Once
        };
        let under = ancestors(lines, *parent).next();
        let evidence = match under {
            Some(u) => format!("{detail} (under {u})"),
            None => detail.clone(),
        };
        let condition = detail
            .find('(')
            .map(|at| detail[at..].to_string())
            .filter(|_| automatic);
        out.push(FullRead {
            table: name.to_string(),
            alias: None,
            runs,
            condition,
            evidence,
            builds_index: automatic,
        });
    }
    out
}

/// The details of the lines above `parent`, nearest first.
fn ancestors(lines: &[(i64, i64, String)], mut parent: i64) -> impl Iterator<Item = &str> {
    std::iter::from_fn(move || {
        let (_, up, detail) = lines.iter().find(|(id, _, _)| *id == parent)?;
        parent = *up;
        Some(detail.as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eqp(lines: &[(i64, i64, &str)]) -> Vec<FullRead> {
        let lines: Vec<_> = lines
            .iter()
            .map(|(a, b, c)| (*a, *b, c.to_string()))
            .collect();
        sqlite_reads(&lines)
    }

    #[test]
    fn reads_sqlite_query_plans() {
        let reads = eqp(&[
            (
                4,
                0,
                "SEARCH c USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)",
            ),
            (13, 0, "CORRELATED SCALAR SUBQUERY 1"),
            (18, 13, "SCAN o"),
        ]);
        assert_eq!(reads.len(), 1);
        assert_eq!(reads[0].table, "o");
        assert!(matches!(reads[0].runs, Runs::PerRow { subquery: true, .. }));
        let reads = eqp(&[
            (
                3,
                0,
                "SEARCH c USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)",
            ),
            (19, 0, "SEARCH o USING AUTOMATIC COVERING INDEX (total=?)"),
        ]);
        assert_eq!(reads[0].runs, Runs::Once);
        assert!(reads[0].builds_index);
        let reads = eqp(&[
            (2, 0, "SEARCH c USING INTEGER PRIMARY KEY (rowid=?)"),
            (6, 0, "LIST SUBQUERY 1"),
            (8, 6, "SCAN o"),
        ]);
        assert_eq!(reads[0].runs, Runs::Once);
        assert!(eqp(&[(
            3,
            0,
            "SEARCH c USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)"
        )])
        .is_empty());
        let reads = eqp(&[
            (3, 0, "SEARCH c USING INDEX k (k>? AND k<?)"),
            (9, 0, "SCAN o"),
        ]);
        assert!(matches!(
            reads[0].runs,
            Runs::PerRow {
                subquery: false,
                ..
            }
        ));
    }

    #[test]
    fn reads_postgres_plans() {
        let plan: Json = serde_json::from_str(
            r#"[{"Plan": {"Node Type": "ModifyTable", "Plan Rows": 0, "Plans": [
                {"Node Type": "Nested Loop", "Parent Relationship": "Outer", "Plan Rows": 1000,
                 "Join Filter": "(o.customer_id = c.id)", "Plans": [
                   {"Node Type": "Index Scan", "Parent Relationship": "Outer", "Plan Rows": 1000,
                    "Relation Name": "customers", "Alias": "c"},
                   {"Node Type": "Materialize", "Parent Relationship": "Inner", "Plan Rows": 5000,
                    "Plans": [{"Node Type": "Seq Scan", "Parent Relationship": "Outer",
                               "Relation Name": "orders", "Schema": "public", "Alias": "o",
                               "Plan Rows": 5000}]}]},
                {"Node Type": "Seq Scan", "Parent Relationship": "SubPlan",
                 "Subplan Name": "hashed SubPlan 1", "Relation Name": "big", "Plan Rows": 9}]}}]"#,
        )
        .unwrap();
        let mut out = Vec::new();
        pg_node(&plan[0]["Plan"], Runs::Once, None, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].table, "public.orders");
        assert_eq!(
            out[0].runs,
            Runs::PerRow {
                times: Some(1000.0),
                subquery: false
            }
        );
        assert_eq!(out[0].condition.as_deref(), Some("(o.customer_id = c.id)"));
        assert_eq!(out[1].runs, Runs::Once);
    }
}
