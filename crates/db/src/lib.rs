//! Opens a connection from a URL, choosing the backend by its scheme at run time.
//!
//! This is godwit's counterpart of sqlx's `Any` driver: everything above it holds a
//! `Box<dyn Conn>` and never names a backend. Each backend is a cargo feature, all on by default.
#![deny(missing_docs)]

use godwit_driver::{Conn, ConnectOptions, DbUrl, Dialect, Error, Result, SqlForms};

/// Connects to the database named by `url`: `postgres://` or `postgresql://`, `mysql://` or
/// `mariadb://`, `sqlite://path`.
///
/// # Errors
/// When the scheme is unknown or its backend was left out of the build, or the connection fails.
pub async fn connect(url: &DbUrl, options: &ConnectOptions) -> Result<Box<dyn Conn>> {
    let scheme = url.scheme().unwrap_or_default();
    match scheme.as_str() {
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Ok(Box::new(godwit_driver_pg::connect(url, options).await?)),
        #[cfg(feature = "mysql")]
        "mysql" | "mariadb" => Ok(Box::new(godwit_driver_mysql::connect(url, options).await?)),
        #[cfg(feature = "sqlite")]
        "sqlite" => Ok(Box::new(godwit_driver_sqlite::connect(url, options).await?)),
        _ => Err(Error::config(format!(
            "unsupported database URL {url}: expected postgres://, mysql:// or sqlite://"
        ))),
    }
}

/// The statements a database of `dialect` writes in forms of its own, for judging SQL before
/// a connection is open (a connection's own are [`Conn::forms`]); `None` when its backend was
/// left out of the build.
pub fn forms(dialect: Dialect) -> Option<&'static dyn SqlForms> {
    match dialect {
        #[cfg(feature = "postgres")]
        Dialect::Postgres => Some(godwit_driver_pg::forms()),
        #[cfg(feature = "mysql")]
        Dialect::MySql => Some(godwit_driver_mysql::forms()),
        #[cfg(feature = "sqlite")]
        Dialect::Sqlite => Some(godwit_driver_sqlite::forms()),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

mod pool;

pub use crate::pool::ConnPool;
