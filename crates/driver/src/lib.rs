//! The one interface godwit speaks to every database through.
//!
//! A backend crate (`godwit-driver-pg`, `-mysql`, `-sqlite`) implements [`Conn`] for one
//! database; the scheduler and the state store hold a `Box<dyn Conn>` chosen from the URL at run
//! time, as sqlx's `Any` driver does. Drivers know nothing of plans, steps or progress: they run
//! statements with bound [`Value`]s, manage one transaction at a time and classify errors into a
//! matchable [`ErrorKind`] so the caller can decide whether to retry.
//!
//! Transactions are explicit (`begin`/`commit`/`rollback` on the connection) rather than a guard
//! object, because a batch's transaction is handed between the scheduler (the user's SQL) and the
//! state store (the record that the batch is done) and must stay one transaction.
#![deny(missing_docs)]

mod error;
pub mod forms;
mod ident;
mod numbers;
mod placeholders;
mod replication;
#[cfg(feature = "sqlx")]
pub mod sqlx_conn;
pub mod tokens;
mod types;
mod url;
mod value;

use std::time::Duration;

// Public for `impl_sqlx_conn!`, whose `impl Conn` the backends write through it.
#[doc(hidden)]
pub use async_trait::async_trait;

pub use crate::error::{cap_message, transaction_ended, Error, ErrorKind, Result, MAX_MESSAGE};
pub use crate::forms::{Conflict, SqlForms, UpdateFromRows};
pub use crate::ident::quote_ident;
pub use crate::numbers::thousands;
pub use crate::placeholders::{number_placeholders, references_param, rewrite_params, Rewritten};
pub use crate::replication::Replication;
pub use crate::types::{exact_float, normalize_decimal, SqlType};
pub use crate::url::{has_password, redact_url, DbUrl};
pub use crate::value::{KeyKind, Row, Value};

/// The SQL dialect of a connection: decides placeholders, quoting and DDL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// PostgreSQL: `$1` placeholders, `"ident"`.
    Postgres,
    /// MySQL and MariaDB: `?` placeholders, `` `ident` ``.
    MySql,
    /// SQLite: `?` placeholders, `"ident"`.
    Sqlite,
}

impl Dialect {
    /// The placeholder for the `n`th (1-based) bound parameter.
    pub fn param(self, n: usize) -> String {
        match self {
            Dialect::Postgres => format!("${n}"),
            Dialect::MySql | Dialect::Sqlite => "?".to_string(),
        }
    }

    /// The name users know the database by, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Postgres => "PostgreSQL",
            Dialect::MySql => "MySQL/MariaDB",
            Dialect::Sqlite => "SQLite",
        }
    }
}

/// How a transaction is opened.
#[derive(Debug, Clone, Copy, Default)]
pub struct TxOptions {
    /// A database-side limit on each statement of the transaction, so a stuck batch is cancelled
    /// by the server (and then retried) instead of hanging the run. SQLite has no such limit: its
    /// driver interrupts the transaction's statements past the deadline instead.
    pub statement_timeout: Option<Duration>,
    /// Commit without waiting for the write-ahead log to reach disk (PostgreSQL's
    /// `synchronous_commit = off`). Safe only when losing the last few commits on a server crash
    /// loses their progress records too, which is the case when a batch and its record commit
    /// together.
    pub async_commit: bool,
    /// The longest a statement waits for a row lock someone else holds before it fails with a
    /// lock timeout (PostgreSQL's `lock_timeout`; on MySQL and MariaDB
    /// `innodb_lock_wait_timeout`, whole seconds: on MariaDB a wait under a second is no wait
    /// at all, on MySQL at least one second). SQLite has no row locks.
    pub lock_timeout: Option<Duration>,
}

/// A column of a table, as the database reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    /// The column's name as stored.
    pub name: String,
    /// The database's own name of the type (`integer`, `varchar(20)`, …), lower case.
    pub data_type: String,
    /// Whether the column accepts NULL.
    pub nullable: bool,
    /// The type to cast a bound value to where the database wants one (PostgreSQL), schema
    /// qualified and without length or precision (`pg_catalog.varchar`): the column's own
    /// limits are then checked on assignment, where a cast to `varchar(20)` would cut silently.
    pub cast: Option<String>,
    /// MySQL: the text column's collation (its character set is the name up to the first
    /// `_`), for comparing values that arrive in the connection's character set.
    pub collation: Option<String>,
}

impl ColumnInfo {
    /// The family of the column's type. SQLite's rules for declared types it does not know
    /// (`…INT…` is an integer) apply to SQLite only: a PostgreSQL `int4range` is no integer.
    pub fn sql_type(&self) -> SqlType {
        match &self.cast {
            Some(_) => SqlType::of_name(&self.data_type),
            None => SqlType::of(&self.data_type),
        }
    }

    /// PostgreSQL: whether the driver reads this column's values itself; others are read as
    /// their text (`column::text`).
    pub fn decodable(&self) -> bool {
        let Some(cast) = &self.cast else { return true };
        // `quote_ident` quotes names that are keywords (`"numeric"`, `"char"`).
        let name = cast
            .strip_prefix("pg_catalog.")
            .unwrap_or("")
            .trim_matches('"');
        matches!(
            name,
            "bool"
                | "int2"
                | "int4"
                | "int8"
                | "oid"
                | "float4"
                | "float8"
                | "text"
                | "varchar"
                | "bpchar"
                | "name"
                | "char"
                | "uuid"
                | "date"
                | "time"
                | "timestamp"
                | "timestamptz"
                | "json"
                | "jsonb"
                | "bytea"
                | "numeric"
        )
    }
}

/// An index of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexInfo {
    /// The index's name.
    pub name: String,
    /// Its columns in order; expressions are left out.
    pub columns: Vec<String>,
    /// Whether it enforces uniqueness (a primary key counts).
    pub unique: bool,
    /// Whether it is the table's primary key.
    pub primary: bool,
}

/// What [`Conn::table_info`] found about a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// The columns in table order.
    pub columns: Vec<ColumnInfo>,
    /// Every index, primary key included.
    pub indexes: Vec<IndexInfo>,
    /// Whether rows may be loaded with the database's bulk path ([`Conn::copy_in`],
    /// [`Conn::copy_in_raw`]): a PostgreSQL table, not a view, without `INSERT` rules (which
    /// `COPY` ignores) and without row-level security (which refuses `COPY`); a MySQL/MariaDB
    /// base table. `false` where the database has no bulk path.
    pub bulk_load: bool,
}

impl TableInfo {
    /// The column named `name`, compared as the database would for unquoted names.
    pub fn column(&self, name: &str) -> Option<&ColumnInfo> {
        self.columns.iter().find(|c| c.name == name).or_else(|| {
            self.columns
                .iter()
                .find(|c| c.name.eq_ignore_ascii_case(name))
        })
    }

    /// Whether some index starts with `column` (so a keyset walk on it is an index range scan),
    /// and whether one such index is unique on that column alone.
    pub fn key_index(&self, column: &str) -> (bool, bool) {
        let leads = |i: &&IndexInfo| {
            i.columns
                .first()
                .is_some_and(|c| c.eq_ignore_ascii_case(column))
        };
        let indexed = self.indexes.iter().any(|i| leads(&i));
        let unique = self
            .indexes
            .iter()
            .filter(leads)
            .any(|i| i.unique && i.columns.len() == 1);
        (indexed, unique)
    }
}

/// One connection to one database.
///
/// Every method that talks to the database may fail with an [`Error`] whose [`ErrorKind`] says
/// whether retrying makes sense. After an error of kind [`ErrorKind::Connection`] the connection
/// is unusable: drop it and connect again.
#[async_trait]
pub trait Conn: Send {
    /// The dialect to write SQL in for this connection.
    fn dialect(&self) -> Dialect;

    /// The statements this database writes in a form of its own (bulk writes, upserts,
    /// updates from a set of rows, locking reads, session settings).
    fn forms(&self) -> &'static dyn SqlForms;

    /// Runs one statement with bound parameters and returns the number of rows it affected.
    async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64>;

    /// Runs a query with bound parameters and returns all its rows. Callers keep results small
    /// (a batch's keys, a handful of state rows); nothing here streams.
    async fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>>;

    /// Prepares a statement without running it, so the database checks its syntax and the
    /// tables and columns it names (used by `check`, which must change nothing).
    async fn prepare(&mut self, sql: &str) -> Result<()>;

    /// Runs SQL text without parameters, as the database's simple protocol would (used for
    /// one-off statements that some databases refuse to prepare, such as `VACUUM`).
    async fn execute_unprepared(&mut self, sql: &str) -> Result<u64>;

    /// Loads `rows` (values in `columns` order, already of the columns' types) into `table` in
    /// the open transaction through the database's bulk-load path: PostgreSQL's
    /// `COPY … FROM STDIN`, MySQL/MariaDB's `LOAD DATA LOCAL INFILE` (on a connection opened
    /// with [`ConnectOptions::bulk_load`]), which the server parses with far less work per row
    /// than an `INSERT`. `Ok(None)` where the database has no such path, or (MySQL) when the
    /// rows were not loaded exactly and nothing of them was kept; the caller then inserts.
    async fn copy_in(
        &mut self,
        _table: &str,
        _columns: &[String],
        _rows: &[Vec<Value>],
    ) -> Result<Option<u64>> {
        Ok(None)
    }

    /// Runs a query whose first column is a key and returns the other columns undecoded, in
    /// the form [`Conn::copy_in_raw`] of the same kind of database writes, with the last row's
    /// key decoded (where a keyset walk continues). `Ok(None)` where the database has no such
    /// form. Only for values written unchanged into columns of exactly their types.
    async fn read_raw(&mut self, _sql: &str, _params: &[Value]) -> Result<Option<RawRows>> {
        Ok(None)
    }

    /// Loads rows read by [`Conn::read_raw`] on the same kind of database into `columns` of
    /// `table` (in the order the query read them), in the open transaction. `Ok(None)` where
    /// the database has no such path.
    async fn copy_in_raw(
        &mut self,
        _table: &str,
        _columns: &[String],
        _rows: &RawRows,
    ) -> Result<Option<u64>> {
        Ok(None)
    }

    /// Opens a transaction. On SQLite it takes the write lock at once (`BEGIN IMMEDIATE`) so that
    /// concurrent writers wait for the busy timeout instead of failing on lock upgrade.
    async fn begin(&mut self, options: TxOptions) -> Result<()>;

    /// Commits the open transaction.
    async fn commit(&mut self) -> Result<()>;

    /// Rolls the open transaction back.
    async fn rollback(&mut self) -> Result<()>;

    /// Describes a table, or returns `None` when it does not exist. `table` may be qualified
    /// with a schema (`schema.table`).
    async fn table_info(&mut self, table: &str) -> Result<Option<TableInfo>>;

    /// The database server's version string, for messages and heartbeats.
    async fn server_version(&mut self) -> Result<String>;

    /// The server's id of this session (PostgreSQL's backend pid, MySQL's connection id), so
    /// that another connection can end it; `None` where sessions have no id (SQLite).
    fn session_id(&self) -> Option<i64> {
        None
    }

    /// Ends another session of the same server, by its [`Conn::session_id`]: the server stops
    /// its statement, rolls its transaction back and frees its locks. Dropping a connection
    /// alone leaves a running statement going until it finishes.
    async fn end_session(&mut self, _session: i64) -> Result<()> {
        Ok(())
    }

    /// The index that the statement `sql`, built outside a transaction, names, when it exists
    /// and is INVALID (see [`InvalidIndex`]): an earlier run of `sql` was interrupted, and
    /// running it again would skip the build (`IF NOT EXISTS`) or fail on the name. `None`
    /// when `sql` builds no named index that way, or the index does not exist or is valid;
    /// always `None` where an interrupted build leaves nothing behind.
    async fn invalid_index(&mut self, _sql: &str) -> Result<Option<InvalidIndex>> {
        Ok(None)
    }

    /// Drops an index found by [`Conn::invalid_index`] without blocking the table's readers
    /// and writers; outside a transaction.
    async fn drop_invalid_index(&mut self, index: &InvalidIndex) -> Result<()> {
        Err(Error::permanent(format!(
            "{} cannot drop the invalid index {}",
            self.dialect().name(),
            index.name
        )))
    }

    /// As a replica: how far this server lags behind its primary. [`Replication::Unknown`]
    /// when it is no replica, or its replication does not run.
    async fn replica_lag(&mut self) -> Result<Replication> {
        Ok(Replication::Unknown(format!(
            "is not a replica: {} has no replication",
            self.dialect().name()
        )))
    }

    /// As a primary: how far the replicas connected to it lag behind it, the most lagging
    /// one's lag. [`Replication::Unknown`] when none is connected, or the database does not
    /// tell.
    async fn primary_lag(&mut self) -> Result<Replication> {
        Ok(Replication::Unknown(format!(
            "does not tell how far its replicas lag: ask each replica ({} tells a replica's lag only on the replica)",
            self.dialect().name()
        )))
    }
}

/// An index left INVALID by a build that did not finish: PostgreSQL's `CREATE INDEX
/// CONCURRENTLY` commits the index before building it and marks it valid only at its end, so a
/// crash, a cancel or a unique build that met a duplicate leaves one that no query uses but
/// every write maintains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidIndex {
    /// The schema holding the index.
    pub schema: String,
    /// The index's name.
    pub name: String,
    /// The table it is on.
    pub table: String,
    /// The server session building it now, if one is: then it is unfinished, not left over.
    pub building: Option<i64>,
}

/// Rows in a database's own wire form, read by [`Conn::read_raw`] and written by
/// [`Conn::copy_in_raw`] without a value ever being decoded: PostgreSQL's binary `COPY` tuples.
#[derive(Debug, Clone, Default)]
pub struct RawRows {
    /// How many rows `data` holds.
    pub rows: usize,
    /// The last row's key (the query's first column), decoded.
    pub last_key: Option<Value>,
    /// The rows without their key column, in the database's bulk-load form.
    pub data: Vec<u8>,
}

/// Options for opening a connection.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// SQLite only: create the database file when it does not exist. Off by default, so a typo
    /// in a path is an error rather than a new empty database.
    pub create_if_missing: bool,
    /// MySQL/MariaDB only: open the connection on the client that can send `LOAD DATA LOCAL
    /// INFILE`, the bulk path of copies into the database ([`Conn::copy_in`]).
    pub bulk_load: bool,
}
