use std::fmt;

/// A database URL whose password never reaches a message: `Display` and `Debug` redact it.
/// The full text is reachable only through [`DbUrl::expose`], for the driver that connects.
#[derive(Clone, PartialEq, Eq)]
pub struct DbUrl(String);

impl DbUrl {
    /// Wraps a URL as written by the user.
    pub fn new(url: impl Into<String>) -> DbUrl {
        DbUrl(url.into())
    }

    /// The URL with its password, for connecting only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The scheme (`postgres`, `mysql`, `sqlite`, …), lower case, if the URL has one.
    pub fn scheme(&self) -> Option<String> {
        self.0
            .split_once(':')
            .map(|(scheme, _)| scheme.to_ascii_lowercase())
    }

    /// The dialect its scheme names, before connecting.
    pub fn dialect(&self) -> Option<crate::Dialect> {
        match self.scheme()?.as_str() {
            "postgres" | "postgresql" => Some(crate::Dialect::Postgres),
            "mysql" | "mariadb" => Some(crate::Dialect::MySql),
            "sqlite" => Some(crate::Dialect::Sqlite),
            _ => None,
        }
    }
}

impl fmt::Display for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DbUrl({})", redact_url(&self.0))
    }
}

/// Replaces the password of a URL with `***`, and every `password=` parameter too.
///
/// Text that does not parse as a URL with a host, or whose last `@` lies outside the part the
/// parser took for the host (a password holding an unescaped `?`, `#` or `/` ends the host
/// early), may still carry credentials, so it is hidden conservatively: everything between
/// `://` (or else the first `:`) and the last `@`, and the value of every `password=` keyword,
/// as in libpq's `host=… password=…` form. `postgres://u:pw?x@h/d` shows as `postgres://***@h/d`.
pub fn redact_url(text: &str) -> String {
    match parsed(text) {
        Some(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let secret = is_secret_param(&k);
                    (
                        k.into_owned(),
                        if secret { "***".into() } else { v.into_owned() },
                    )
                })
                .collect();
            if !pairs.is_empty() {
                url.query_pairs_mut().clear().extend_pairs(pairs);
            }
            url.to_string()
        }
        None => redact_unparsed(text),
    }
}

/// Whether `text` may carry a password: a URL's own, a non-empty `password=` value, or, for
/// text that does not parse, anything the conservative redaction of [`redact_url`] would hide.
pub fn has_password(text: &str) -> bool {
    // A SQLite URL names a file; an `@` in its path is no user info.
    if text
        .get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("sqlite:"))
    {
        return false;
    }
    match parsed(text) {
        Some(url) => {
            url.password().is_some_and(|p| !p.is_empty())
                || url
                    .query_pairs()
                    .any(|(k, v)| is_secret_param(&k) && !v.is_empty())
        }
        None => redact_unparsed(text) != text,
    }
}

/// `text` as a URL with a host, when its last `@` (if any) belongs to its user info.
fn parsed(text: &str) -> Option<::url::Url> {
    let url = ::url::Url::parse(text).ok()?;
    if url.host_str().is_none_or(|h| h.is_empty()) {
        return None;
    }
    // An unescaped `?`, `#` or `/` in a password ends the authority early and leaves the rest
    // of the password, up to its `@`, in the path, query or fragment.
    let after_host = [Some(url.path()), url.query(), url.fragment()];
    if after_host.iter().flatten().any(|part| part.contains('@')) {
        return None;
    }
    Some(url)
}

fn is_secret_param(name: &str) -> bool {
    name.eq_ignore_ascii_case("password") || name.eq_ignore_ascii_case("sslpassword")
}

fn redact_unparsed(text: &str) -> String {
    // The user info ends at the last `@`, wherever it is: the part after `://` (or after the
    // scheme's `:`) up to there is hidden whole, user name included.
    let start = match text.find("://") {
        Some(i) => Some(i + 3),
        None => text.find(':').map(|i| i + 1),
    };
    let mut out = match (start, text.rfind('@')) {
        (Some(start), Some(at)) if at > start => {
            format!("{}***{}", &text[..start], &text[at..])
        }
        _ => text.to_string(),
    };
    hide_password_values(&mut out);
    out
}

/// Replaces the value of every `password=` (any case, `sslpassword=` too) with `***`: up to
/// the next `&`, `#` or white space, or the closing quote of a quoted value.
fn hide_password_values(out: &mut String) {
    const KEY: &str = "password=";
    let mut from = 0;
    while let Some(found) = out[from..].to_ascii_lowercase().find(KEY) {
        let start = from + found + KEY.len();
        let rest = &out[start..];
        let len = match rest.chars().next() {
            Some(quote @ ('\'' | '"')) => rest[1..].find(quote).map_or(rest.len(), |i| i + 2),
            _ => rest
                .find(|c: char| c == '&' || c == '#' || c.is_whitespace())
                .unwrap_or(rest.len()),
        };
        if len > 0 {
            out.replace_range(start..start + len, "***");
            from = start + 3;
        } else {
            from = start;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_passwords() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/shop"),
            "postgres://app:***@db:5432/shop"
        );
        assert_eq!(
            redact_url("mysql://root@127.0.0.1/test"),
            "mysql://root@127.0.0.1/test"
        );
        assert_eq!(
            redact_url("postgres://db/shop?user=a&password=hunter2"),
            "postgres://db/shop?user=a&password=***"
        );
        assert!(!redact_url("postgres://a:p%40ss@[bad/x").contains("p%40ss"));
        assert_eq!(redact_url("sqlite://demo.db"), "sqlite://demo.db");
        for mistyped in [
            "postgres//u:pw@h/d",
            "u:pw@h/d",
            "postgres:/u:pw@h/d",
            "postgres:u:pw@h/d",
            "postgres://u:pw@h:notaport/d",
            "postgres:/h/d?password=pw",
        ] {
            assert!(!redact_url(mistyped).contains("pw"), "{mistyped}");
        }
        assert_eq!(redact_url("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
        assert_eq!(redact_url("sqlite:demo.db"), "sqlite:demo.db");
        let url = DbUrl::new("postgres://u:pw@h/d");
        assert!(!format!("{url} {url:?}").contains("pw"));
    }

    #[test]
    fn r11_hides_passwords_of_urls_that_do_not_parse() {
        for (url, shown) in [
            (
                "postgres://u:S3cr3t?Q@127.0.0.1/db",
                "postgres://***@127.0.0.1/db",
            ),
            (
                "mysql://u:S3cr3t?Q@127.0.0.1/db",
                "mysql://***@127.0.0.1/db",
            ),
            // The parser takes `u:12` for a host and port, and the rest for a fragment.
            ("postgres://u:12#S3cr3t@h/db", "postgres://***@h/db"),
            ("postgres://u:a/S3cr3t@h/db", "postgres://***@h/db"),
            (
                "host=127.0.0.1 password=S3cr3tV dbname=x",
                "host=127.0.0.1 password=*** dbname=x",
            ),
            (
                "host=h PASSWORD='S3cr 3tV' dbname=x",
                "host=h PASSWORD=*** dbname=x",
            ),
            (
                "postgres://h/db?sslpassword=S3cr3t&x=1",
                "postgres://h/db?sslpassword=***&x=1",
            ),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
            assert!(!format!("{}", DbUrl::new(url)).contains("S3cr"), "{url}");
            assert!(has_password(url), "{url}");
        }
    }

    #[test]
    fn r11_tells_urls_with_passwords() {
        for url in [
            "postgres://u@h/db",
            "postgres://u:@h/db",
            "postgres://h/db?password=",
            "mysql://root@127.0.0.1/test",
            "sqlite://demo.db",
            "sqlite:///tmp/a@b.db",
            "",
        ] {
            assert!(!has_password(url), "{url}");
        }
        assert!(has_password("postgres://u:p@h/db"));
        assert!(has_password("postgres://h/db?password=p"));
    }
}
