//! One-off statements: DDL that blocks writers on a large table, and statements that run
//! outside a transaction without being safe to run twice.

use godwit_driver::tokens::{tokens, Token};
use godwit_driver::Dialect;

/// A one-off statement that holds a lock blocking writes (or reads) while it works through
/// a table: what it does and the statement to run instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Blocking {
    pub(crate) table: String,
    pub(crate) why: String,
    pub(crate) fix: String,
}

/// Volatile functions: a column added with one of these as its default is filled by
/// rewriting the table (PostgreSQL fills a constant default without touching rows).
const VOLATILE: &[&str] = &[
    "random",
    "clock_timestamp",
    "gen_random_uuid",
    "uuid_generate_v4",
    "uuid_generate_v1",
    "nextval",
    "timeofday",
];

/// What in `sql` blocks writers, if anything (PostgreSQL and MariaDB/MySQL; SQLite has one
/// writer at a time whatever the statement).
pub(crate) fn blocking(sql: &str, dialect: Dialect) -> Option<Blocking> {
    let toks = tokens(sql, dialect);
    let at = |i: usize| toks.get(i);
    let is = |i: usize, w: &str| at(i).is_some_and(|t| t.is(w));
    match dialect {
        Dialect::Postgres => {
            // CREATE [UNIQUE] INDEX [CONCURRENTLY] [IF NOT EXISTS] [name] ON [ONLY] table
            if is(0, "CREATE") && (is(1, "INDEX") || (is(1, "UNIQUE") && is(2, "INDEX"))) {
                if toks.iter().any(|t| t.is("CONCURRENTLY")) {
                    return None;
                }
                let on = toks.iter().position(|t| t.is("ON"))?;
                let table = name_at(&toks, on + 1 + usize::from(is(on + 1, "ONLY")))?;
                let index_word = if is(1, "INDEX") { 1 } else { 2 };
                return Some(Blocking {
                    why: format!("CREATE INDEX without CONCURRENTLY blocks every write to {table} until the index is built"),
                    fix: insert_after_word(sql, dialect, index_word, "CONCURRENTLY"),
                    table,
                });
            }
            if is(0, "ALTER") && is(1, "TABLE") {
                let mut i = 2;
                while is(i, "IF") || is(i, "EXISTS") || is(i, "ONLY") {
                    i += 1;
                }
                let table = name_at(&toks, i)?;
                return pg_alter(&toks, table);
            }
            if (is(0, "VACUUM") && is(1, "FULL")) || is(0, "CLUSTER") {
                let table = toks.iter().skip(1).find_map(|t| match t {
                    Token::Word(w)
                        if !["FULL", "VERBOSE", "ANALYZE", "FREEZE"]
                            .iter()
                            .any(|k| w.eq_ignore_ascii_case(k)) =>
                    {
                        Some(w.clone())
                    }
                    Token::Quoted(q) => Some(q.clone()),
                    _ => None,
                })?;
                return Some(Blocking {
                    why: format!("{} rewrites {table} while holding a lock that blocks its reads and writes", if is(0, "CLUSTER") { "CLUSTER" } else { "VACUUM FULL" }),
                    fix: "a plain VACUUM (which blocks nothing), or an online rebuild such as pg_repack".into(),
                    table,
                });
            }
            None
        }
        Dialect::MySql => {
            if is(0, "ALTER") && (is(1, "TABLE") || (is(1, "IGNORE") && is(2, "TABLE"))) {
                let table = name_at(&toks, if is(1, "TABLE") { 2 } else { 3 })?;
                let online =
                    toks.iter().any(|t| t.is("ALGORITHM")) && toks.iter().any(|t| t.is("LOCK"));
                let copies = toks.windows(2).any(|w| {
                    (w[0].is("MODIFY") || w[0].is("CHANGE"))
                        || (w[0].is("ADD") && w[1].is("PRIMARY"))
                        || (w[0].is("DROP") && w[1].is("PRIMARY"))
                        || (w[0].is("CONVERT") && w[1].is("TO"))
                });
                if copies && !online {
                    return Some(Blocking {
                        why: format!("this ALTER TABLE may copy {table} row by row while blocking its writes (changing a column's type, the primary key or the character set cannot be done in place)"),
                        fix: format!("{}, ALGORITHM=INPLACE, LOCK=NONE (the server then refuses rather than blocks, and says why); where it refuses, add a new column, fill it with a godwit step and switch to it", sql.trim().trim_end_matches(';')),
                        table,
                    });
                }
            }
            if is(0, "OPTIMIZE") && is(1, "TABLE") {
                let table = name_at(&toks, 2)?;
                return Some(Blocking {
                    why: format!("OPTIMIZE TABLE rebuilds {table}; on MyISAM tables it blocks writes throughout"),
                    fix: "ALTER TABLE … FORCE, ALGORITHM=INPLACE, LOCK=NONE".into(),
                    table,
                });
            }
            None
        }
        Dialect::Sqlite => None,
    }
}

/// What a PostgreSQL `ALTER TABLE table …` does that blocks writers for a pass over the table.
fn pg_alter(toks: &[Token], table: String) -> Option<Blocking> {
    let has = |words: &[&str]| {
        toks.windows(words.len())
            .any(|w| w.iter().zip(words).all(|(t, word)| t.is(word)))
    };
    let not_valid = has(&["NOT", "VALID"]);
    let (why, fix) = if has(&["TYPE"])
        && (has(&["ALTER", "COLUMN"])
            || has(&["SET", "DATA"])
            || toks.iter().filter(|t| t.is("ALTER")).count() > 1)
    {
        (
            format!("changing a column's type rewrites {table} (unless the new type is binary-compatible, such as a longer varchar) while blocking its reads and writes"),
            "add a column of the new type, fill it with a godwit step, then switch to it in a short transaction".to_string(),
        )
    } else if has(&["SET", "NOT", "NULL"]) {
        (
            format!("SET NOT NULL reads all of {table} while blocking its reads and writes"),
            "first ADD CONSTRAINT … CHECK (column IS NOT NULL) NOT VALID, then VALIDATE CONSTRAINT (which lets writes go on); SET NOT NULL then uses the constraint and skips the scan".to_string(),
        )
    } else if (has(&["FOREIGN", "KEY"]) || (has(&["ADD", "CONSTRAINT"]) && has(&["CHECK"])))
        && !not_valid
    {
        (
            format!("adding this constraint checks every row of {table} while blocking writes to it"),
            "add it with NOT VALID, then run ALTER TABLE … VALIDATE CONSTRAINT in a step of its own (which lets writes go on)".to_string(),
        )
    } else if (has(&["PRIMARY", "KEY"])
        || has(&["ADD", "UNIQUE"])
        || (has(&["ADD", "CONSTRAINT"]) && has(&["UNIQUE"])))
        && !has(&["USING", "INDEX"])
    {
        (
            format!("adding this key builds its index over {table} while blocking writes to it"),
            "CREATE UNIQUE INDEX CONCURRENTLY first, then ADD CONSTRAINT … USING INDEX".to_string(),
        )
    } else if has(&["ADD"]) && volatile_default(toks) {
        (
            format!("a column with a volatile default is filled by rewriting {table} while blocking its reads and writes"),
            "add the column without a default (or with a constant one), then fill it with a godwit step".to_string(),
        )
    } else {
        return None;
    };
    Some(Blocking { table, why, fix })
}

/// Whether an added column's DEFAULT calls a volatile function.
fn volatile_default(toks: &[Token]) -> bool {
    let Some(at) = toks.iter().position(|t| t.is("DEFAULT")) else {
        return toks
            .iter()
            .any(|t| t.is("SERIAL") || t.is("BIGSERIAL") || t.is("STORED"));
    };
    toks[at..].iter().any(|t| VOLATILE.iter().any(|f| t.is(f)))
}

/// The dotted name at `at`.
fn name_at(toks: &[Token], at: usize) -> Option<String> {
    let mut parts = vec![toks.get(at)?.name()?.to_string()];
    let mut i = at + 1;
    while toks.get(i).is_some_and(|t| t.is_punct(".")) {
        parts.push(toks.get(i + 1)?.name()?.to_string());
        i += 2;
    }
    Some(parts.join("."))
}

/// `sql` with `word` inserted after its `n`th word (0-based).
fn insert_after_word(sql: &str, _dialect: Dialect, n: usize, word: &str) -> String {
    let mut seen = 0;
    let mut in_word = false;
    for (i, c) in sql.char_indices() {
        let part = c.is_alphanumeric() || c == '_';
        if in_word && !part {
            if seen == n {
                return format!("{} {word}{}", &sql[..i], &sql[i..]);
            }
            seen += 1;
        }
        in_word = part;
    }
    format!("{sql} {word}")
}

/// Whether running `sql` a second time (after a crash between it and its progress record)
/// fails or does something twice: a CREATE without IF NOT EXISTS, a DROP without IF EXISTS,
/// an ALTER that adds or drops without them, a RENAME. Others (VACUUM, REINDEX, ANALYZE, a
/// change of type) do the same again.
pub(crate) fn unsafe_twice(sql: &str, dialect: Dialect) -> bool {
    let toks = tokens(sql, dialect);
    let has = |words: &[&str]| {
        toks.windows(words.len())
            .any(|w| w.iter().zip(words).all(|(t, word)| t.is(word)))
    };
    let first = toks.first();
    let if_not_exists = has(&["IF", "NOT", "EXISTS"]);
    let if_exists = has(&["IF", "EXISTS"]);
    match first {
        Some(t) if t.is("CREATE") => !if_not_exists && !has(&["OR", "REPLACE"]),
        Some(t) if t.is("DROP") => !if_exists,
        Some(t) if t.is("RENAME") => true,
        Some(t) if t.is("ALTER") => {
            (has(&["ADD"]) && !if_not_exists) || (has(&["DROP"]) && !if_exists) || has(&["RENAME"])
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PG: Dialect = Dialect::Postgres;

    #[test]
    fn finds_blocking_postgres_ddl() {
        let b = blocking("CREATE INDEX idx ON public.orders (customer_id)", PG).unwrap();
        assert_eq!(b.table, "public.orders");
        assert_eq!(
            b.fix,
            "CREATE INDEX CONCURRENTLY idx ON public.orders (customer_id)"
        );
        let b = blocking("create unique index if not exists u on t (a)", PG).unwrap();
        assert_eq!(
            b.fix,
            "create unique index CONCURRENTLY if not exists u on t (a)"
        );
        assert!(blocking("CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (a)", PG).is_none());
        assert!(blocking("ALTER TABLE t ALTER COLUMN a TYPE bigint", PG).is_some());
        assert!(blocking("ALTER TABLE t ALTER COLUMN a SET NOT NULL", PG).is_some());
        assert!(blocking(
            "ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES u (id)",
            PG
        )
        .is_some());
        assert!(blocking(
            "ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES u (id) NOT VALID",
            PG
        )
        .is_none());
        assert!(blocking(
            "ALTER TABLE t ADD COLUMN c uuid DEFAULT gen_random_uuid()",
            PG
        )
        .is_some());
        assert!(blocking("ALTER TABLE t ADD COLUMN c int DEFAULT 0", PG).is_none());
        assert!(blocking("ALTER TABLE t ADD COLUMN c timestamptz DEFAULT now()", PG).is_none());
        assert!(blocking("ALTER TABLE t ADD PRIMARY KEY (id)", PG).is_some());
        assert!(blocking(
            "ALTER TABLE t ADD CONSTRAINT p PRIMARY KEY USING INDEX i",
            PG
        )
        .is_none());
        assert!(blocking("VACUUM FULL t", PG).is_some());
        assert!(blocking("VACUUM t", PG).is_none());
    }

    #[test]
    fn finds_blocking_mysql_ddl() {
        let my = Dialect::MySql;
        let b = blocking("ALTER TABLE t MODIFY c BIGINT", my).unwrap();
        assert!(b
            .fix
            .starts_with("ALTER TABLE t MODIFY c BIGINT, ALGORITHM=INPLACE, LOCK=NONE"));
        assert!(blocking(
            "ALTER TABLE t MODIFY c BIGINT, ALGORITHM=INPLACE, LOCK=NONE",
            my
        )
        .is_none());
        assert!(blocking("ALTER TABLE t ADD INDEX i (c)", my).is_none());
        assert!(blocking("CREATE INDEX i ON t (c)", my).is_none());
    }

    #[test]
    fn knows_statements_safe_to_run_twice() {
        assert!(!unsafe_twice(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (a)",
            PG
        ));
        assert!(unsafe_twice("CREATE INDEX CONCURRENTLY i ON t (a)", PG));
        assert!(!unsafe_twice("DROP INDEX CONCURRENTLY IF EXISTS i", PG));
        assert!(unsafe_twice("DROP INDEX CONCURRENTLY i", PG));
        assert!(!unsafe_twice("VACUUM ANALYZE t", PG));
        assert!(!unsafe_twice("REINDEX INDEX CONCURRENTLY i", PG));
        let my = Dialect::MySql;
        assert!(unsafe_twice("ALTER TABLE t ADD COLUMN c INT", my));
        assert!(!unsafe_twice(
            "ALTER TABLE t ADD COLUMN IF NOT EXISTS c INT",
            my
        ));
        assert!(!unsafe_twice("ALTER TABLE t MODIFY c BIGINT", my));
        assert!(!unsafe_twice("CREATE TABLE IF NOT EXISTS t (a int)", my));
    }
}
