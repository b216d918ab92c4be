use crate::Dialect;

/// Quotes an identifier for `dialect`, part by part when it is qualified (`schema.table`), doubling
/// any quote character inside so that no name can end the quoting early.
pub fn quote_ident(dialect: Dialect, name: &str) -> String {
    let quote = match dialect {
        Dialect::MySql => '`',
        Dialect::Postgres | Dialect::Sqlite => '"',
    };
    let mut out = String::with_capacity(name.len() + 2);
    for (i, part) in name.split('.').enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push(quote);
        for c in part.chars() {
            if c == quote {
                out.push(quote);
            }
            out.push(c);
        }
        out.push(quote);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_each_part_and_doubles_quotes() {
        assert_eq!(quote_ident(Dialect::Postgres, "customers"), "\"customers\"");
        assert_eq!(
            quote_ident(Dialect::Postgres, "app.customers"),
            "\"app\".\"customers\""
        );
        assert_eq!(quote_ident(Dialect::MySql, "we`ird"), "`we``ird`");
        assert_eq!(quote_ident(Dialect::Sqlite, "a\"b"), "\"a\"\"b\"");
    }
}
