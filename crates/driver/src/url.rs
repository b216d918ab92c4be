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

/// Replaces the password of a URL with `***`, and every `password=` query parameter too. Text
/// that does not parse as a URL is returned with anything between `://` and `@` hidden, since a
/// malformed URL may still carry credentials.
pub fn redact_url(text: &str) -> String {
    match ::url::Url::parse(text) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let secret =
                        k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("sslpassword");
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
        Err(_) => match (text.find("://"), text.rfind('@')) {
            (Some(start), Some(at)) if at > start => {
                format!("{}://***{}", &text[..start], &text[at..])
            }
            _ => text.to_string(),
        },
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
        let url = DbUrl::new("postgres://u:pw@h/d");
        assert!(!format!("{url} {url:?}").contains("pw"));
    }
}
