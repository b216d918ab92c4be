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

/// Replaces the password of a URL with `***`, and every `password=` query parameter too.
///
/// Text that does not parse as a URL with a host (a missing `//`, a missing scheme, a stray
/// character) may still carry credentials, so everything from the first `:` to the last `@` is
/// hidden: `postgres//u:pw@h` shows as `postgres//u:***@h`, `u:pw@h` as `u:***@h`.
pub fn redact_url(text: &str) -> String {
    match ::url::Url::parse(text) {
        Ok(mut url) if url.host_str().is_some_and(|h| !h.is_empty()) => {
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
        _ => redact_unparsed(text),
    }
}

fn is_secret_param(name: &str) -> bool {
    name.eq_ignore_ascii_case("password") || name.eq_ignore_ascii_case("sslpassword")
}

fn redact_unparsed(text: &str) -> String {
    let (head, query) = match text.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (text, None),
    };
    let mut out = match (head.find(':'), head.rfind('@')) {
        (Some(colon), Some(at)) if at > colon => format!("{}:***{}", &head[..colon], &head[at..]),
        _ => head.to_string(),
    };
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if is_secret_param(k) => format!("{k}=***"),
                _ => pair.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
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
}
