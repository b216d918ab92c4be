//! Named parameters (`:start`, `:end`) in user SQL, and the `?` placeholders of godwit's own
//! SQL, turned into the dialect's placeholders.
//!
//! The scan skips string literals, quoted identifiers, comments, PostgreSQL dollar quotes and
//! `::` casts, so `':start'` in a string or `x::text` is never touched.

use crate::Dialect;

/// SQL whose named parameters became positional ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    /// The SQL in the dialect's placeholder style.
    pub sql: String,
    /// For each positional parameter in order, the index into the names given to
    /// [`rewrite_params`] of the value to bind there.
    pub order: Vec<usize>,
}

/// Replaces every `:name` for `name` in `names` with the dialect's placeholder. Other `:words`
/// are left alone (MySQL's `:=`, array slices).
pub fn rewrite_params(sql: &str, dialect: Dialect, names: &[&str]) -> Rewritten {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut order = Vec::new();
    scan(sql, dialect, |piece| match piece {
        Piece::Text(text) | Piece::Mark(text) => out.push_str(text),
        Piece::Param(name, text) => match names.iter().position(|n| *n == name) {
            Some(idx) => match dialect {
                Dialect::Postgres => {
                    let n = match order.iter().position(|&o| o == idx) {
                        Some(pos) => pos + 1,
                        None => {
                            order.push(idx);
                            order.len()
                        }
                    };
                    out.push_str(&dialect.param(n));
                }
                Dialect::MySql | Dialect::Sqlite => {
                    order.push(idx);
                    out.push('?');
                }
            },
            None => out.push_str(text),
        },
    });
    Rewritten { sql: out, order }
}

/// Writes each `?` placeholder of `sql` (outside strings and comments) in the dialect's form:
/// `$1`, `$2`, … on PostgreSQL, `?` elsewhere. For SQL written with `?` for every dialect.
pub fn number_placeholders(sql: &str, dialect: Dialect) -> String {
    if dialect != Dialect::Postgres {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    scan(sql, dialect, |piece| match piece {
        Piece::Text(text) | Piece::Param(_, text) => out.push_str(text),
        Piece::Mark(_) => {
            n += 1;
            out.push_str(&dialect.param(n));
        }
    });
    out
}

/// Whether `sql` uses the named parameter `:name` outside strings and comments.
pub fn references_param(sql: &str, dialect: Dialect, name: &str) -> bool {
    let mut found = false;
    scan(sql, dialect, |piece| {
        if let Piece::Param(n, _) = piece {
            found |= n == name;
        }
    });
    found
}

enum Piece<'a> {
    Text(&'a str),
    /// A `:name`: the name, and the text including the colon.
    Param(&'a str, &'a str),
    /// A `?`, its text.
    Mark(&'a str),
}

fn scan<'a>(sql: &'a str, dialect: Dialect, mut emit: impl FnMut(Piece<'a>)) {
    let bytes = sql.as_bytes();
    let mut i = 0;
    let mut text_start = 0;
    while i < bytes.len() {
        let rest = &sql[i..];
        let skip_to = match bytes[i] {
            b'\'' => Some(end_of_quoted(sql, i, b'\'', dialect == Dialect::MySql)),
            b'"' => Some(end_of_quoted(sql, i, b'"', dialect == Dialect::MySql)),
            b'`' => Some(end_of_quoted(sql, i, b'`', false)),
            b'-' if rest.starts_with("--") => Some(rest.find('\n').map_or(sql.len(), |n| i + n)),
            b'#' if dialect == Dialect::MySql => Some(rest.find('\n').map_or(sql.len(), |n| i + n)),
            b'/' if rest.starts_with("/*") => {
                Some(rest[2..].find("*/").map_or(sql.len(), |n| i + 2 + n + 2))
            }
            b'$' if dialect == Dialect::Postgres => dollar_quote_end(sql, i),
            b':' if rest.starts_with("::") => Some(i + 2),
            b'?' => {
                if text_start < i {
                    emit(Piece::Text(&sql[text_start..i]));
                }
                emit(Piece::Mark(&sql[i..i + 1]));
                text_start = i + 1;
                i += 1;
                continue;
            }
            b':' => {
                let name_len = rest[1..]
                    .bytes()
                    .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                    .count();
                let starts_ident = rest[1..]
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
                if name_len > 0 && starts_ident {
                    if text_start < i {
                        emit(Piece::Text(&sql[text_start..i]));
                    }
                    let end = i + 1 + name_len;
                    emit(Piece::Param(&sql[i + 1..end], &sql[i..end]));
                    text_start = end;
                    i = end;
                    continue;
                }
                None
            }
            _ => None,
        };
        i = match skip_to {
            Some(end) => end.max(i + 1),
            None => i + rest.chars().next().map_or(1, char::len_utf8),
        };
    }
    if text_start < sql.len() {
        emit(Piece::Text(&sql[text_start..]));
    }
}

/// The index just past a quoted run starting at `start`; a doubled quote stays inside, and so
/// does a backslash-escaped one where the dialect allows backslash escapes.
pub(crate) fn end_of_quoted(sql: &str, start: usize, quote: u8, backslash: bool) -> usize {
    let bytes = sql.as_bytes();
    let mut i = start + 1;
    while i < bytes.len() {
        if backslash && bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if bytes[i] == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    bytes.len()
}

/// The index just past a PostgreSQL dollar-quoted string (`$tag$ … $tag$`) starting at `start`,
/// or `None` when the `$` does not open one (`$1`).
pub(crate) fn dollar_quote_end(sql: &str, start: usize) -> Option<usize> {
    let rest = &sql[start + 1..];
    let tag_len = rest
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .count();
    let tag_is_number = rest[..tag_len]
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_digit());
    if tag_is_number || rest.as_bytes().get(tag_len) != Some(&b'$') {
        return None;
    }
    let delimiter = &sql[start..start + tag_len + 2];
    let body_start = start + delimiter.len();
    Some(
        sql[body_start..]
            .find(delimiter)
            .map_or(sql.len(), |n| body_start + n + delimiter.len()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&str] = &["start", "end"];

    fn check(dialect: Dialect, sql: &str, expected: &str, order: &[usize]) {
        let got = rewrite_params(sql, dialect, NAMES);
        assert_eq!(got.sql, expected);
        assert_eq!(got.order, order);
    }

    #[test]
    fn numbers_postgres_params_once_each() {
        check(
            Dialect::Postgres,
            "UPDATE t SET x = 1 WHERE id BETWEEN :start AND :end AND :start > 0",
            "UPDATE t SET x = 1 WHERE id BETWEEN $1 AND $2 AND $1 > 0",
            &[0, 1],
        );
    }

    #[test]
    fn repeats_positional_params_per_use() {
        check(
            Dialect::MySql,
            "WHERE id >= :start AND id <= :end OR id = :start",
            "WHERE id >= ? AND id <= ? OR id = ?",
            &[0, 1, 0],
        );
    }

    #[test]
    fn leaves_strings_comments_and_casts_alone() {
        check(
            Dialect::Postgres,
            "SELECT ':start', \":end\", x::text, $q$ :start $q$ -- :end\n /* :start */ FROM t WHERE k = :end",
            "SELECT ':start', \":end\", x::text, $q$ :start $q$ -- :end\n /* :start */ FROM t WHERE k = $1",
            &[1],
        );
        check(
            Dialect::MySql,
            "SELECT 'it\\'s :start', @a := 1 # :end\nFROM t WHERE k = :start",
            "SELECT 'it\\'s :start', @a := 1 # :end\nFROM t WHERE k = ?",
            &[0],
        );
    }

    #[test]
    fn numbers_placeholders_for_postgres_only() {
        assert_eq!(
            number_placeholders("a = ? AND b = ?", Dialect::Postgres),
            "a = $1 AND b = $2"
        );
        assert_eq!(number_placeholders("a = ?", Dialect::MySql), "a = ?");
    }

    #[test]
    fn leaves_question_marks_in_strings_and_named_params_alone() {
        check(
            Dialect::Postgres,
            "SELECT j ? 'k', '?' FROM t WHERE k = :start",
            "SELECT j ? 'k', '?' FROM t WHERE k = $1",
            &[0],
        );
        assert_eq!(
            number_placeholders("SELECT '?', :start FROM t WHERE k = ?", Dialect::Postgres),
            "SELECT '?', :start FROM t WHERE k = $1"
        );
    }

    #[test]
    fn unknown_names_stay() {
        check(
            Dialect::Sqlite,
            "SELECT :other, :end",
            "SELECT :other, ?",
            &[1],
        );
        assert!(references_param("x = :start", Dialect::Sqlite, "start"));
        assert!(!references_param("x = ':start'", Dialect::Sqlite, "start"));
        assert!(!references_param("x = :started", Dialect::Sqlite, "start"));
    }
}
