//! The INVALID index an interrupted `CREATE INDEX CONCURRENTLY` leaves behind.
//!
//! A concurrent build commits the index's catalog entry first and marks it valid only at its
//! very end. A crash, a cancel, a terminated session or a unique build meeting a duplicate in
//! between leaves the index INVALID: no query uses it, yet writes still maintain it. Run again,
//! `IF NOT EXISTS` then skips the build (the step looks done, the index is useless) and a
//! statement without it fails on the name. So before such a statement runs again, the index it
//! names is looked up here; the caller drops it when no session is still building it.
//!
//! The statement is parsed only as far as its index and table names, which are then bound as
//! parameters (the table through `to_regclass`), never spliced into SQL; the drop quotes the
//! names the catalog returned.

use godwit_driver::{Conn, InvalidIndex, Result, Value};

/// The index `sql` builds and its table, when `sql` is a `CREATE [UNIQUE] INDEX CONCURRENTLY`
/// naming its index: the index name as stored, and the table as `to_regclass` reads it (each
/// part quoted). `None` for any other statement, or a build that lets PostgreSQL pick the
/// name (an interrupted one leaves `t_c_idx`, and the next picks `t_c_idx1`).
pub(crate) fn index_built(sql: &str) -> Option<(String, String)> {
    let tokens = tokens(sql);
    let mut at = Tokens(tokens.iter().peekable());
    if !at.word("create") {
        return None;
    }
    at.word("unique");
    if !(at.word("index") && at.word("concurrently")) {
        return None;
    }
    if at.word("if") && !(at.word("not") && at.word("exists")) {
        return None;
    }
    if at.word("on") {
        return None;
    }
    let index = at.name()?;
    if !at.word("on") {
        return None;
    }
    at.word("only");
    let mut table = vec![quote_part(&at.name()?)];
    while at.0.next_if_eq(&&Token::Other('.')).is_some() {
        table.push(quote_part(&at.name()?));
    }
    Some((index, table.join(".")))
}

/// A statement's tokens, read one at a time.
struct Tokens<'a>(std::iter::Peekable<std::slice::Iter<'a, Token>>);

impl Tokens<'_> {
    /// Takes the next token when it is the unquoted word `expected` (lower case).
    fn word(&mut self, expected: &str) -> bool {
        self.0
            .next_if(|t| matches!(t, Token::Word(w) if w == expected))
            .is_some()
    }

    /// Takes the next token as a name, quoted or not.
    fn name(&mut self) -> Option<String> {
        match self.0.next()? {
            Token::Word(name) | Token::Quoted(name) => Some(name.clone()),
            Token::Other(_) => None,
        }
    }
}

/// A part of a name quoted for PostgreSQL, whatever it holds (a dot included).
fn quote_part(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// An unquoted word, folded to lower case as PostgreSQL folds it.
    Word(String),
    /// A quoted identifier, as written.
    Quoted(String),
    /// Any other character.
    Other(char),
}

/// The tokens of `sql` up to the first parenthesis (or `USING`'s method, which needs none),
/// comments and white space left out.
fn tokens(sql: &str) -> Vec<Token> {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '-' && chars.get(i + 1) == Some(&'-') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            // PostgreSQL's block comments nest.
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == '"' {
            let mut name = String::new();
            i += 1;
            loop {
                match (chars.get(i), chars.get(i + 1)) {
                    (Some('"'), Some('"')) => {
                        name.push('"');
                        i += 2;
                    }
                    (Some('"'), _) => {
                        i += 1;
                        break;
                    }
                    (Some(&ch), _) => {
                        name.push(ch);
                        i += 1;
                    }
                    // An unterminated name: no index to look up.
                    (None, _) => return Vec::new(),
                }
            }
            out.push(Token::Quoted(name));
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            out.push(Token::Word(word.to_ascii_lowercase()));
        } else if c == '(' {
            break;
        } else {
            out.push(Token::Other(c));
            i += 1;
        }
    }
    out
}

/// The index `sql` builds, when it exists and is INVALID, with the session building it now if
/// one is. A session's row in `pg_stat_progress_create_index` hides its columns from a user
/// who may not see that session's statistics: such a row counts as building this index, the
/// safe side.
const LOOKUP: &str = "SELECT n.nspname::text, c.relname::text, t.relname::text, \
    (SELECT p.pid::bigint FROM pg_stat_progress_create_index p \
      WHERE p.pid <> pg_backend_pid() AND (p.index_relid = c.oid OR p.index_relid IS NULL) \
      ORDER BY p.pid LIMIT 1) \
    FROM pg_index i \
    JOIN pg_class c ON c.oid = i.indexrelid \
    JOIN pg_class t ON t.oid = i.indrelid \
    JOIN pg_namespace n ON n.oid = c.relnamespace \
    WHERE i.indrelid = to_regclass($2::text) AND c.relname::text = $1::text AND NOT i.indisvalid";

/// See [`LOOKUP`].
pub(crate) async fn find(conn: &mut dyn Conn, sql: &str) -> Result<Option<InvalidIndex>> {
    let Some((index, table)) = index_built(sql) else {
        return Ok(None);
    };
    let rows = match conn
        .query(LOOKUP, &[Value::Text(index), Value::Text(table)])
        .await
    {
        Ok(rows) => rows,
        // PostgreSQL before 12 has no `pg_stat_progress_create_index`, so cannot tell a build
        // left over from one going on: the statement runs as it is, as it always did there.
        Err(e) if e.code() == Some("42P01") => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let text = |i: usize| row.get(i).as_str().unwrap_or_default().to_string();
    Ok(Some(InvalidIndex {
        schema: text(0),
        name: text(1),
        table: text(2),
        building: row.get(3).as_i64(),
    }))
}

/// Drops `index` without taking a lock that blocks the table's readers or writers.
pub(crate) async fn drop(conn: &mut dyn Conn, index: &InvalidIndex) -> Result<()> {
    let sql = format!(
        "DROP INDEX CONCURRENTLY IF EXISTS {}.{}",
        quote_part(&index.schema),
        quote_part(&index.name)
    );
    conn.execute_unprepared(&sql).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(sql: &str, expected: Option<(&str, &str)>) {
        let found = index_built(sql);
        let found = found.as_ref().map(|(i, t)| (i.as_str(), t.as_str()));
        assert_eq!(found, expected, "{sql}");
    }

    #[test]
    fn finds_the_index_and_table_of_a_concurrent_build() {
        check(
            "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS orders_ref ON orders (ref)",
            Some(("orders_ref", "\"orders\"")),
        );
        check(
            "create index concurrently Orders_Ref on App.Orders using btree (ref)",
            Some(("orders_ref", "\"app\".\"orders\"")),
        );
        check(
            "-- why\nCREATE /* a /* nested */ note */ INDEX CONCURRENTLY \"My \"\"Idx\"\" .x\" ON ONLY \"Sch\".\"T a\"(c)",
            Some(("My \"Idx\" .x", "\"Sch\".\"T a\"")),
        );
    }

    #[test]
    fn leaves_other_statements_alone() {
        check("CREATE INDEX orders_ref ON orders (ref)", None);
        check("CREATE INDEX CONCURRENTLY ON orders (ref)", None);
        check(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS ON orders (ref)",
            None,
        );
        check("DROP INDEX CONCURRENTLY orders_ref", None);
        check("REINDEX INDEX CONCURRENTLY orders_ref", None);
        check("VACUUM orders", None);
        check("CREATE INDEX CONCURRENTLY \"unterminated ON t (c)", None);
        check("CREATE INDEX CONCURRENTLY i ON ", None);
    }
}
