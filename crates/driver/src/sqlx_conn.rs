//! What every backend over sqlx does alike, written once: running statements, fetching rows,
//! the transaction bookkeeping, the classification of errors that are not the database's own,
//! and binding the values every database takes in the same form.
//!
//! A backend crate implements [`Backend`] for a marker type (its database's error codes, the
//! values it binds in a form of its own, how it decodes a result) and holds a [`SqlxConn`];
//! what is genuinely its own (how a transaction opens, bulk paths, `table_info`) stays in it.
//! Only backend crates see these generics; everything above holds a `dyn Conn`.

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;

use sqlx::database::Database;
use sqlx::error::DatabaseError;
use sqlx::query::Query as SqlxQuery;
use sqlx::{Column, ConnectOptions, Connection, Encode, Executor, IntoArguments, Type};

use crate::{Error, ErrorKind, Result, Row, Value};

/// A statement of database `DB` with its parameters being bound.
pub type Query<'q, DB> = SqlxQuery<'q, DB, <DB as Database>::Arguments<'q>>;

/// A row of a result as sqlx returns it, before decoding.
pub type DbRow<B> = <<B as Backend>::Db as Database>::Row;

/// sqlx's connection to a backend's database.
pub type DbConnection<B> = <<B as Backend>::Db as Database>::Connection;

/// Where a database runs, which decides what a TLS or protocol error from sqlx means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// A server reached over a connection: a TLS or protocol error means the connection is gone.
    Server,
    /// A library inside this process (SQLite): a "protocol" error is sqlx refusing the
    /// statement (a NUL byte in it, say), which retrying does not mend.
    InProcess,
}

/// What one database supplies to [`SqlxConn`].
pub trait Backend {
    /// sqlx's database type.
    type Db: CommonTypes;

    /// What decoding a result learns once, from its first row: PostgreSQL picks each
    /// column's decoder there; `()` where each value is decoded by its own type.
    type Decoder;

    /// Where the database runs.
    const LOCATION: Location;

    /// Turns the database's own error into a driver error, by its code.
    fn classify_database(err: Box<dyn DatabaseError>) -> Error;

    /// Binds one parameter. By default in the form every database takes ([`bind_common`]);
    /// a database with types of its own for some values binds those itself.
    fn bind<'q>(query: Query<'q, Self::Db>, value: &'q Value) -> Query<'q, Self::Db> {
        <Self::Db as CommonTypes>::bind_common(query, value)
    }

    /// The decoder of a result whose first row is `first`.
    fn decoder(first: &DbRow<Self>) -> Self::Decoder;

    /// Decodes one row of a result into values; `columns` are its column names.
    fn decode_row(
        row: &DbRow<Self>,
        columns: &Arc<[String]>,
        decoder: &Self::Decoder,
    ) -> Result<Row>;

    /// The number of rows a statement's result reports as affected.
    fn rows_affected(result: &<Self::Db as Database>::QueryResult) -> u64;

    /// Runs before a transaction ends (its `COMMIT` or `ROLLBACK`, also when none is open).
    /// Nothing by default; SQLite removes the batch's deadline there, so that it cannot
    /// interrupt the end.
    fn before_end(conn: &mut DbConnection<Self>) -> impl Future<Output = Result<()>> + Send {
        let _ = conn;
        std::future::ready(Ok(()))
    }
}

/// A database that takes every [`Value`] in the form of [`bind_common`].
pub trait CommonTypes: Database {
    /// Binds `value` by [`bind_common`].
    fn bind_common<'q>(query: Query<'q, Self>, value: &'q Value) -> Query<'q, Self>;
}

impl<DB> CommonTypes for DB
where
    DB: Database,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> f64: Encode<'q, DB> + Type<DB>,
    for<'q> chrono::NaiveDate: Encode<'q, DB> + Type<DB>,
    for<'q> chrono::NaiveTime: Encode<'q, DB> + Type<DB>,
    for<'q> chrono::NaiveDateTime: Encode<'q, DB> + Type<DB>,
    for<'q> chrono::DateTime<chrono::Utc>: Encode<'q, DB> + Type<DB>,
{
    fn bind_common<'q>(query: Query<'q, DB>, value: &'q Value) -> Query<'q, DB> {
        bind_common(query, value)
    }
}

/// Turns a sqlx error into a driver error: the database's own errors by [`Backend::classify_database`],
/// I/O and pool errors as a lost connection, TLS and protocol errors by [`Backend::LOCATION`],
/// the rest permanent.
pub fn classify<B: Backend>(err: sqlx::Error) -> Error {
    let server = B::LOCATION == Location::Server;
    match err {
        sqlx::Error::Database(db) => B::classify_database(db),
        sqlx::Error::Io(e) => Error::new(ErrorKind::Connection, None, e.to_string()),
        sqlx::Error::Tls(e) if server => Error::new(ErrorKind::Connection, None, e.to_string()),
        sqlx::Error::Protocol(e) if server => Error::new(ErrorKind::Connection, None, e),
        sqlx::Error::Configuration(e) => Error::config(e.to_string()),
        sqlx::Error::WorkerCrashed | sqlx::Error::PoolClosed | sqlx::Error::PoolTimedOut => {
            Error::new(ErrorKind::Connection, None, err.to_string())
        }
        other => Error::permanent(other.to_string()),
    }
}

/// An error the database gave, marked as refusing a row's values when `refused` (a
/// constraint, a value out of range) so that the caller can write the rows one at a time.
pub fn database_error(
    kind: ErrorKind,
    code: Option<String>,
    message: &str,
    refused: bool,
) -> Error {
    let err = Error::new(kind, code, message);
    if refused {
        err.refusing_row()
    } else {
        err
    }
}

/// Binds `value` in the form every backend takes; JSON, UUIDs and text arrays as their text,
/// for databases with no such types.
pub fn bind_common<'q, DB>(query: Query<'q, DB>, value: &'q Value) -> Query<'q, DB>
where
    DB: Database,
    Option<String>: Encode<'q, DB> + Type<DB>,
    String: Encode<'q, DB> + Type<DB>,
    &'q str: Encode<'q, DB> + Type<DB>,
    &'q [u8]: Encode<'q, DB> + Type<DB>,
    bool: Encode<'q, DB> + Type<DB>,
    i64: Encode<'q, DB> + Type<DB>,
    f64: Encode<'q, DB> + Type<DB>,
    chrono::NaiveDate: Encode<'q, DB> + Type<DB>,
    chrono::NaiveTime: Encode<'q, DB> + Type<DB>,
    chrono::NaiveDateTime: Encode<'q, DB> + Type<DB>,
    chrono::DateTime<chrono::Utc>: Encode<'q, DB> + Type<DB>,
{
    match value {
        Value::Null => query.bind(None::<String>),
        Value::Bool(b) => query.bind(*b),
        Value::Int(n) => query.bind(*n),
        Value::Float(f) => query.bind(*f),
        Value::Decimal(s) | Value::Text(s) => query.bind(s.as_str()),
        Value::Bytes(b) => query.bind(b.as_slice()),
        Value::Json(j) => query.bind(j.to_string()),
        Value::Uuid(u) => query.bind(u.hyphenated().to_string()),
        Value::Date(d) => query.bind(*d),
        Value::Time(t) => query.bind(*t),
        Value::Timestamp(t) => query.bind(*t),
        Value::TimestampTz(t) => query.bind(*t),
        Value::TextArray(items) => query.bind(serde_json::json!(items).to_string()),
    }
}

/// One sqlx connection and whether a transaction is open on it.
pub struct SqlxConn<B: Backend> {
    conn: DbConnection<B>,
    /// Whether a transaction is open, so that `rollback` outside one is a no-op rather than a
    /// warning (PostgreSQL) or an error (SQLite).
    in_tx: bool,
}

impl<B: Backend> SqlxConn<B>
where
    for<'c> &'c mut DbConnection<B>: Executor<'c, Database = B::Db>,
    for<'q> <B::Db as Database>::Arguments<'q>: IntoArguments<'q, B::Db>,
{
    /// Connects with `options`; a failure's message starts with `context` (`cannot connect
    /// to …`).
    ///
    /// # Errors
    /// When the database cannot be reached or opened.
    pub async fn connect(
        options: &<DbConnection<B> as Connection>::Options,
        context: impl Display + Send,
    ) -> Result<SqlxConn<B>> {
        let conn = options.connect().await.map_err(|e| {
            let err = classify::<B>(e);
            Error::new(
                err.kind(),
                err.code().map(str::to_string),
                format!("{context}: {}", err.message()),
            )
        })?;
        Ok(SqlxConn { conn, in_tx: false })
    }

    /// sqlx's connection, for what only one backend does with it.
    pub fn raw(&mut self) -> &mut DbConnection<B> {
        &mut self.conn
    }

    /// Runs one statement with bound parameters; the number of rows it affected.
    ///
    /// # Errors
    /// The database's, classified.
    pub async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        let done = bind::<B>(sqlx::query(sql), params)
            .execute(&mut self.conn)
            .await
            .map_err(classify::<B>)?;
        Ok(B::rows_affected(&done))
    }

    /// Runs a query with bound parameters; its rows undecoded.
    ///
    /// # Errors
    /// The database's, classified.
    pub async fn fetch_all(&mut self, sql: &str, params: &[Value]) -> Result<Vec<DbRow<B>>> {
        bind::<B>(sqlx::query(sql), params)
            .fetch_all(&mut self.conn)
            .await
            .map_err(classify::<B>)
    }

    /// Runs a query with bound parameters; its rows decoded by [`Backend::decode_row`].
    ///
    /// # Errors
    /// The database's, classified, or a value that cannot be decoded.
    pub async fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let rows = self.fetch_all(sql, params).await?;
        let Some(first) = rows.first() else {
            return Ok(Vec::new());
        };
        let columns: Arc<[String]> = sqlx::Row::columns(first)
            .iter()
            .map(|c| c.name().to_string())
            .collect();
        let decoder = B::decoder(first);
        rows.iter()
            .map(|row| B::decode_row(row, &columns, &decoder))
            .collect()
    }

    /// Prepares a statement without running it.
    ///
    /// # Errors
    /// The database's, classified: a syntax error, a missing table or column.
    pub async fn prepare(&mut self, sql: &str) -> Result<()> {
        Executor::prepare(&mut self.conn, sql)
            .await
            .map(drop)
            .map_err(classify::<B>)
    }

    /// Runs SQL text without parameters.
    ///
    /// # Errors
    /// The database's, classified.
    pub async fn execute_unprepared(&mut self, sql: &str) -> Result<u64> {
        // A plain string is never prepared: PostgreSQL's simple query protocol, MySQL's text
        // protocol, a statement SQLite does not cache; it may hold several statements.
        let done = Executor::execute(&mut self.conn, sql)
            .await
            .map_err(classify::<B>)?;
        Ok(B::rows_affected(&done))
    }

    /// Opens a transaction with `sql`, the backend's own `BEGIN` and settings.
    ///
    /// # Errors
    /// The database's, classified; the caller's rollback then still reaches the database.
    pub async fn begin(&mut self, sql: &str) -> Result<()> {
        // Set first: if the statement fails half-way, a rollback must still be sent.
        self.in_tx = true;
        self.execute_unprepared(sql).await.map(drop)
    }

    /// Commits the open transaction.
    ///
    /// # Errors
    /// The database's, classified.
    pub async fn commit(&mut self) -> Result<()> {
        B::before_end(&mut self.conn).await?;
        let result = self.execute_unprepared("COMMIT").await.map(drop);
        self.end_transaction(&result);
        result
    }

    /// Rolls the open transaction back; nothing when none is open.
    ///
    /// # Errors
    /// The database's, classified.
    pub async fn rollback(&mut self) -> Result<()> {
        B::before_end(&mut self.conn).await?;
        if !self.in_tx {
            return Ok(());
        }
        let result = self.execute_unprepared("ROLLBACK").await.map(drop);
        self.end_transaction(&result);
        result
    }

    /// After COMMIT or ROLLBACK (see [`crate::transaction_ended`]).
    fn end_transaction(&mut self, result: &Result<()>) {
        if crate::transaction_ended(result) {
            self.in_tx = false;
        }
    }
}

/// Binds `params` in order, each by [`Backend::bind`].
fn bind<'q, B: Backend>(mut query: Query<'q, B::Db>, params: &'q [Value]) -> Query<'q, B::Db> {
    for param in params {
        query = B::bind(query, param);
    }
    query
}

/// Writes a backend's `impl Conn` with the methods every backend passes to its [`SqlxConn`]
/// alike (`dialect`, `forms`, `execute`, `query`, `execute_unprepared`, `commit`,
/// `rollback`), given its connection type, which holds the [`SqlxConn`] in a field `conn`, its
/// [`Dialect`](crate::Dialect) and its [`SqlForms`](crate::SqlForms). The backend's own methods
/// follow the `;`.
#[macro_export]
macro_rules! impl_sqlx_conn {
    ($conn:ty, $dialect:expr, $forms:expr; $($own:tt)*) => {
        #[$crate::async_trait]
        impl $crate::Conn for $conn {
            fn dialect(&self) -> $crate::Dialect {
                $dialect
            }

            fn forms(&self) -> &'static dyn $crate::SqlForms {
                $forms
            }

            async fn execute(
                &mut self,
                sql: &str,
                params: &[$crate::Value],
            ) -> $crate::Result<u64> {
                self.conn.execute(sql, params).await
            }

            async fn query(
                &mut self,
                sql: &str,
                params: &[$crate::Value],
            ) -> $crate::Result<Vec<$crate::Row>> {
                self.conn.query(sql, params).await
            }

            async fn execute_unprepared(&mut self, sql: &str) -> $crate::Result<u64> {
                self.conn.execute_unprepared(sql).await
            }

            async fn commit(&mut self) -> $crate::Result<()> {
                self.conn.commit().await
            }

            async fn rollback(&mut self) -> $crate::Result<()> {
                self.conn.rollback().await
            }

            $($own)*
        }
    };
}
