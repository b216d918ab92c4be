//! A statement's shape, read from its tokens: what it does (its verb), which table it writes,
//! which columns it sets, the names its tables go by, and whether it pages by `OFFSET`.

use godwit_driver::tokens::{tokens, Token};
use godwit_driver::Dialect;

/// What a statement does to its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verb {
    Update,
    Delete,
    Insert,
    Other,
}

/// What `check` reads from a statement's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shape {
    pub(crate) verb: Verb,
    /// The table the statement writes, its name parts joined by dots.
    pub(crate) target: Option<String>,
    /// The columns an `UPDATE` sets.
    pub(crate) set_columns: Vec<String>,
    /// Whether the statement skips rows by `OFFSET` (or MySQL's `LIMIT skip, count`).
    pub(crate) offset: bool,
    /// (alias, table) for every table named with an alias.
    pub(crate) aliases: Vec<(String, String)>,
    /// The columns compared with a parameter (`col BETWEEN :start AND :end`, `col >= :start`).
    pub(crate) range_columns: Vec<String>,
    /// Every name in the statement, and every `qualifier.column` pair.
    names: Vec<String>,
    qualified: Vec<(String, String)>,
}

/// Words after which a name is a table: `FROM t`, `JOIN t`, `UPDATE t`, `INTO t`.
const TABLE_BEFORE: &[&str] = &["FROM", "JOIN", "UPDATE", "INTO"];

/// Words that end a table reference, so never read as its alias.
const NOT_ALIAS: &[&str] = &[
    "WHERE",
    "SET",
    "ON",
    "JOIN",
    "LEFT",
    "RIGHT",
    "INNER",
    "OUTER",
    "CROSS",
    "FULL",
    "NATURAL",
    "USING",
    "GROUP",
    "ORDER",
    "LIMIT",
    "VALUES",
    "SELECT",
    "RETURNING",
    "UNION",
    "HAVING",
    "WINDOW",
    "LATERAL",
    "FOR",
    "USE",
    "FORCE",
    "IGNORE",
    "STRAIGHT_JOIN",
    "PARTITION",
    "WITH",
    "DEFAULT",
    "AS",
    "EXCEPT",
    "INTERSECT",
    "OFFSET",
    "FETCH",
    "TABLESAMPLE",
    "ONLY",
    "AND",
    "OR",
    "NOT",
    "IN",
    "IS",
    "BETWEEN",
];

impl Shape {
    pub(crate) fn of(sql: &str, dialect: Dialect) -> Shape {
        let toks = tokens(sql, dialect);
        let depths = depths(&toks);
        let verb_at = toks.iter().zip(&depths).position(|(t, d)| {
            *d == 0
                && ["UPDATE", "DELETE", "INSERT", "REPLACE"]
                    .iter()
                    .any(|w| t.is(w))
        });
        let verb = match verb_at.map(|i| &toks[i]) {
            Some(t) if t.is("UPDATE") => Verb::Update,
            Some(t) if t.is("DELETE") => Verb::Delete,
            Some(_) => Verb::Insert,
            None => Verb::Other,
        };
        let target = verb_at.and_then(|i| {
            let mut j = i + 1;
            // DELETE FROM, INSERT [IGNORE] INTO, UPDATE [ONLY] [LOW_PRIORITY]
            while toks.get(j).is_some_and(|t| {
                [
                    "FROM",
                    "INTO",
                    "ONLY",
                    "IGNORE",
                    "LOW_PRIORITY",
                    "QUICK",
                    "DELAYED",
                ]
                .iter()
                .any(|w| t.is(w))
            }) {
                j += 1;
            }
            qualified_name(&toks, j).map(|(name, _)| name)
        });
        let set_columns = match (verb, verb_at) {
            (Verb::Update, Some(i)) => set_columns(&toks, &depths, i),
            _ => Vec::new(),
        };
        let offset = toks.iter().any(|t| t.is("OFFSET"))
            || toks.windows(4).any(|w| {
                w[0].is("LIMIT")
                    && matches!(w[1], Token::Number(_) | Token::Param)
                    && w[2].is_punct(",")
                    && matches!(w[3], Token::Number(_) | Token::Param)
            });
        let compares = ["BETWEEN", ">=", ">", "<=", "<", "="];
        let mut range_columns: Vec<String> = Vec::new();
        for (i, t) in toks.iter().enumerate() {
            let is_compare = compares.iter().any(|c| t.is(c) || t.is_punct(c))
                || (t.is_punct("<") && toks.get(i + 1).is_some_and(|n| n.is_punct("=")))
                || (t.is_punct(">") && toks.get(i + 1).is_some_and(|n| n.is_punct("=")));
            let param_follows = toks[i + 1..]
                .iter()
                .take(2)
                .any(|n| matches!(n, Token::Param));
            if is_compare && param_follows && i > 0 {
                if let Some(name) = toks[i - 1].name() {
                    if !range_columns.iter().any(|c| c.eq_ignore_ascii_case(name)) {
                        range_columns.push(name.to_string());
                    }
                }
            }
        }
        let names = toks
            .iter()
            .filter_map(|t| t.name().map(str::to_string))
            .collect();
        // `q.column` compared with another table's `r.column`: a join or lookup condition
        // (not `SET c = q.column`).
        let compare =
            |t: Option<&Token>| t.is_some_and(|t| ["=", "<", ">"].iter().any(|p| t.is_punct(p)));
        let dot = |i: usize| toks.get(i).is_some_and(|t| t.is_punct("."));
        let qualified = (0..toks.len().saturating_sub(2))
            .filter(|&i| dot(i + 1))
            .filter(|&i| {
                (compare(toks.get(i + 3)) && dot(i + 5))
                    || (i >= 4 && compare(toks.get(i - 1)) && dot(i - 3))
            })
            .filter_map(|i| Some((toks[i].name()?.to_string(), toks[i + 2].name()?.to_string())))
            .collect();
        Shape {
            verb,
            target,
            set_columns,
            offset,
            aliases: aliases(&toks),
            range_columns,
            names,
            qualified,
        }
    }

    /// Whether the statement names `table` (by its last name part) anywhere.
    pub(crate) fn names_table(&self, table: &str) -> bool {
        let last = table.rsplit('.').next().unwrap_or(table);
        self.names.iter().any(|n| n.eq_ignore_ascii_case(last))
    }

    /// The columns the statement compares as `q.column` where `q` stands for `table`.
    pub(crate) fn qualified_columns(&self, table: &str) -> Vec<String> {
        let last = table.rsplit('.').next().unwrap_or(table);
        let mut out: Vec<String> = Vec::new();
        for (q, column) in &self.qualified {
            let stands_for = self.table_of(q);
            let stands_last = stands_for.rsplit('.').next().unwrap_or(stands_for);
            if stands_last.eq_ignore_ascii_case(last)
                && !out.iter().any(|c| c.eq_ignore_ascii_case(column))
            {
                out.push(column.clone());
            }
        }
        out
    }

    /// The table `name` (an alias or a table's own name) stands for in this statement.
    pub(crate) fn table_of<'a>(&'a self, name: &'a str) -> &'a str {
        self.aliases
            .iter()
            .find(|(alias, _)| alias.eq_ignore_ascii_case(name))
            .map_or(name, |(_, table)| table.as_str())
    }
}

/// The parenthesis depth of each token (a `(` is at the depth outside it).
fn depths(toks: &[Token]) -> Vec<usize> {
    let mut depth = 0usize;
    toks.iter()
        .map(|t| {
            if t.is_punct(")") {
                depth = depth.saturating_sub(1);
            }
            let here = depth;
            if t.is_punct("(") {
                depth += 1;
            }
            here
        })
        .collect()
}

/// The dotted name starting at `at`, and the index just past it.
fn qualified_name(toks: &[Token], at: usize) -> Option<(String, usize)> {
    let mut parts = vec![toks.get(at)?.name()?.to_string()];
    let mut i = at + 1;
    while toks.get(i).is_some_and(|t| t.is_punct(".")) {
        let Some(part) = toks.get(i + 1).and_then(Token::name) else {
            break;
        };
        parts.push(part.to_string());
        i += 2;
    }
    Some((parts.join("."), i))
}

/// The columns set by the `UPDATE` at `update`: `SET a = …, b = …` and `SET (a, b) = …`.
fn set_columns(toks: &[Token], depths: &[usize], update: usize) -> Vec<String> {
    let Some(set) = (update..toks.len()).find(|&i| depths[i] == 0 && toks[i].is("SET")) else {
        return Vec::new();
    };
    let ends = ["WHERE", "FROM", "RETURNING", "ORDER", "LIMIT"];
    let mut columns = Vec::new();
    let mut i = set + 1;
    let mut expecting = true;
    while i < toks.len() {
        let t = &toks[i];
        if depths[i] == 0 && ends.iter().any(|w| t.is(w)) {
            break;
        }
        if expecting {
            if t.is_punct("(") {
                // SET (a, b) = (…)
                let mut j = i + 1;
                while j < toks.len() && !toks[j].is_punct(")") {
                    if let Some(name) = toks[j].name() {
                        columns.push(name.to_string());
                    }
                    j += 1;
                }
                i = j;
            } else if let Some((name, next)) = qualified_name(toks, i) {
                // t.a = …: the column is the last part.
                columns.push(name.rsplit('.').next().unwrap_or(&name).to_string());
                i = next - 1;
            }
            expecting = false;
        } else if depths[i] == 0 && t.is_punct(",") {
            expecting = true;
        }
        i += 1;
    }
    columns
}

/// (alias, table) for every `FROM t a`, `JOIN t AS a`, `UPDATE t a`, `FROM t a, u b`.
fn aliases(toks: &[Token]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        if !TABLE_BEFORE.iter().any(|w| toks[i].is(w)) {
            i += 1;
            continue;
        }
        let mut at = i + 1;
        loop {
            while toks
                .get(at)
                .is_some_and(|t| t.is("ONLY") || t.is("LATERAL"))
            {
                at += 1;
            }
            let Some((table, mut next)) = qualified_name(toks, at) else {
                break;
            };
            if toks.get(next).is_some_and(|t| t.is("AS")) {
                next += 1;
            }
            if let Some(alias) = toks.get(next).filter(|t| match t {
                Token::Word(w) => !NOT_ALIAS.iter().any(|k| w.eq_ignore_ascii_case(k)),
                Token::Quoted(_) => true,
                _ => false,
            }) {
                out.push((alias.name().unwrap_or_default().to_string(), table));
                next += 1;
            }
            // A list of tables: FROM a x, b y
            if toks.get(next).is_some_and(|t| t.is_punct(",")) && toks[i].is("FROM") {
                at = next + 1;
                continue;
            }
            i = next.max(i + 1);
            break;
        }
        i = i.max(at);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_verb_target_and_set_columns() {
        let s = Shape::of(
            "UPDATE customers c SET phone = concat('0', substr(phone, 3, 2)), \"Note\" = NULL FROM prefixes p WHERE c.id BETWEEN :start AND :end",
            Dialect::Postgres,
        );
        assert_eq!(s.verb, Verb::Update);
        assert_eq!(s.target.as_deref(), Some("customers"));
        assert_eq!(s.set_columns, ["phone", "Note"]);
        assert!(!s.offset);
        assert_eq!(s.table_of("c"), "customers");
        assert_eq!(s.table_of("p"), "prefixes");
        assert_eq!(s.range_columns, ["id"]);
        assert_eq!(s.qualified_columns("prefixes"), Vec::<String>::new());
        assert_eq!(s.qualified_columns("customers"), Vec::<String>::new());
        let j = Shape::of(
            "SELECT 1 FROM a x JOIN b y ON y.a_id = x.id",
            Dialect::Postgres,
        );
        assert_eq!(j.qualified_columns("b"), ["a_id"]);
        assert_eq!(j.qualified_columns("a"), ["id"]);
        assert!(s.names_table("public.prefixes"));
        assert!(!s.names_table("orders"));
        let s = Shape::of(
            "UPDATE t SET a = 1 WHERE legacy >= :start AND legacy <= :end",
            Dialect::Sqlite,
        );
        assert_eq!(s.range_columns, ["legacy"]);

        let s = Shape::of(
            "UPDATE t SET (a, b) = (1, 2) WHERE id > 0",
            Dialect::Postgres,
        );
        assert_eq!(s.set_columns, ["a", "b"]);
        let s = Shape::of(
            "UPDATE a JOIN b ON a.x = b.x SET a.y = b.y, a.z = 1 WHERE a.id BETWEEN ? AND ?",
            Dialect::MySql,
        );
        assert_eq!(s.set_columns, ["y", "z"]);

        let s = Shape::of(
            "WITH x AS (SELECT 1) DELETE FROM public.orders o USING x WHERE o.id > 1",
            Dialect::Postgres,
        );
        assert_eq!(s.verb, Verb::Delete);
        assert_eq!(s.target.as_deref(), Some("public.orders"));
        assert_eq!(s.table_of("o"), "public.orders");

        let s = Shape::of(
            "INSERT INTO history (o) SELECT id FROM orders WHERE id BETWEEN ? AND ?",
            Dialect::MySql,
        );
        assert_eq!(s.verb, Verb::Insert);
        assert_eq!(s.target.as_deref(), Some("history"));
    }

    #[test]
    fn knows_offset_paging() {
        let pg = Dialect::Postgres;
        assert!(Shape::of("SELECT * FROM t ORDER BY id LIMIT 10 OFFSET 20", pg).offset);
        assert!(Shape::of("select * from t limit 20, 10", Dialect::MySql).offset);
        assert!(!Shape::of("SELECT 'OFFSET' FROM t -- offset", pg).offset);
        assert!(!Shape::of("SELECT * FROM t LIMIT 10", pg).offset);
    }
}
