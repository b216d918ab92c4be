//! SQL as a list of tokens: words, quoted names, literals and punctuation, with comments
//! dropped. Enough for `check` to read a statement's shape (its verb, the table it writes, the
//! columns it sets, an `OFFSET`) without a parser of every dialect's grammar.

use crate::placeholders::{dollar_quote_end, end_of_quoted};
use crate::Dialect;

/// One token of a SQL statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// An unquoted word (a keyword or a name), as written.
    Word(String),
    /// A quoted name, without its quotes.
    Quoted(String),
    /// A string literal (its text is not kept).
    Literal,
    /// A number.
    Number(String),
    /// A `:name` parameter or a `?`/`$n` placeholder.
    Param,
    /// Any other character (`(`, `,`, `=`, `.`, …); `::` is one token.
    Punct(String),
}

impl Token {
    /// Whether this is the unquoted word `word`, compared without case.
    pub fn is(&self, word: &str) -> bool {
        matches!(self, Token::Word(w) if w.eq_ignore_ascii_case(word))
    }

    /// Whether this is the punctuation `p`.
    pub fn is_punct(&self, p: &str) -> bool {
        matches!(self, Token::Punct(x) if x == p)
    }

    /// The name this token spells, if it is a word or a quoted name: unquoted words as the
    /// database folds them is left to the caller (compare without case).
    pub fn name(&self) -> Option<&str> {
        match self {
            Token::Word(w) | Token::Quoted(w) => Some(w),
            _ => None,
        }
    }
}

/// The tokens of `sql` in `dialect`, comments left out.
pub fn tokens(sql: &str, dialect: Dialect) -> Vec<Token> {
    let bytes = sql.as_bytes();
    let mysql = dialect == Dialect::MySql;
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &sql[i..];
        let b = bytes[i];
        if b.is_ascii_whitespace() {
            i += 1;
        } else if rest.starts_with("--") || (mysql && b == b'#') {
            i = rest.find('\n').map_or(sql.len(), |n| i + n);
        } else if let Some(comment) = rest.strip_prefix("/*") {
            i = comment.find("*/").map_or(sql.len(), |n| i + 2 + n + 2);
        } else if b == b'\'' {
            i = end_of_quoted(sql, i, b'\'', mysql);
            out.push(Token::Literal);
        } else if b == b'"' && mysql {
            // MySQL reads "…" as a string unless ANSI_QUOTES is set.
            i = end_of_quoted(sql, i, b'"', true);
            out.push(Token::Literal);
        } else if b == b'"' || b == b'`' {
            let end = end_of_quoted(sql, i, b, false);
            let inner = &sql[i + 1..end.saturating_sub(1).max(i + 1)];
            let quote = char::from(b).to_string();
            out.push(Token::Quoted(inner.replace(&quote.repeat(2), &quote)));
            i = end;
        } else if b == b'$' && dialect == Dialect::Postgres {
            match dollar_quote_end(sql, i) {
                Some(end) => {
                    out.push(Token::Literal);
                    i = end;
                }
                None => {
                    let digits = rest[1..].bytes().take_while(u8::is_ascii_digit).count();
                    out.push(Token::Param);
                    i += 1 + digits;
                }
            }
        } else if b == b'?' {
            out.push(Token::Param);
            i += 1;
        } else if b == b':' && rest.starts_with("::") {
            out.push(Token::Punct("::".into()));
            i += 2;
        } else if b == b':' && rest[1..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        {
            let len = word_len(&rest[1..]);
            out.push(Token::Param);
            i += 1 + len;
        } else if b.is_ascii_digit() {
            let len = rest
                .bytes()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == b'.' || *c == b'_')
                .count();
            out.push(Token::Number(rest[..len].to_string()));
            i += len;
        } else if b.is_ascii_alphabetic() || b == b'_' || !b.is_ascii() {
            let len = word_len(rest);
            out.push(Token::Word(rest[..len].to_string()));
            i += len;
        } else {
            out.push(Token::Punct(char::from(b).to_string()));
            i += 1;
        }
    }
    out
}

/// The length in bytes of the name at the start of `s`.
fn word_len(s: &str) -> usize {
    s.char_indices()
        .find(|(_, c)| !(c.is_alphanumeric() || *c == '_' || *c == '$'))
        .map_or(s.len(), |(n, _)| n)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(sql: &str, dialect: Dialect) -> Vec<String> {
        tokens(sql, dialect)
            .into_iter()
            .map(|t| match t {
                Token::Word(w) => w,
                Token::Quoted(q) => format!("<{q}>"),
                Token::Literal => "'…'".into(),
                Token::Number(n) => n,
                Token::Param => "?".into(),
                Token::Punct(p) => p,
            })
            .collect()
    }

    #[test]
    fn splits_statements_and_drops_comments() {
        assert_eq!(
            words(
                "UPDATE \"my \"\"t\"\"\" SET a = 'x -- y' /* z */ -- w\n WHERE id BETWEEN :start AND $2::int",
                Dialect::Postgres
            ),
            [
                "UPDATE", "<my \"t\">", "SET", "a", "=", "'…'", "WHERE", "id", "BETWEEN", "?",
                "AND", "?", "::", "int"
            ]
        );
        assert_eq!(
            words("select `a``b` from t # note\n limit 1, 2", Dialect::MySql),
            ["select", "<a`b>", "from", "t", "limit", "1", ",", "2"]
        );
        assert_eq!(
            words("SELECT $$x$$, $1", Dialect::Postgres),
            ["SELECT", "'…'", ",", "?"]
        );
    }
}
