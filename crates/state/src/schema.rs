//! The `godwit_*` tables and their version.
//!
//! Times are integer milliseconds since the Unix epoch taken from the state database's own clock
//! ([`now_ms`]), so that leases compare one clock even when workers' clocks disagree.

use godwit_driver::{Conn, Dialect, Error, Result, Value};

/// The version of the state tables this build writes. A later release that changes them
/// migrates from this number; an older release refuses newer tables.
pub const SCHEMA_VERSION: i64 = 1;

/// SQL for "now" in milliseconds on the state database's clock.
pub(crate) fn now_ms(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Postgres => "(extract(epoch from clock_timestamp()) * 1000)::bigint",
        Dialect::MySql => "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)",
        Dialect::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
    }
}

fn ddl(dialect: Dialect) -> Vec<String> {
    // Names are VARCHAR(191) so that the composite primary keys fit MySQL's index limit in
    // utf8mb4; long texts are TEXT (MEDIUMTEXT on MySQL, where TEXT stops at 64 KiB).
    let (long_text, engine) = match dialect {
        Dialect::MySql => (
            "MEDIUMTEXT",
            " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
        ),
        Dialect::Postgres | Dialect::Sqlite => ("TEXT", ""),
    };
    let batches_index = match dialect {
        Dialect::MySql => ",\n  INDEX godwit_batches_open (run, step, state)",
        Dialect::Postgres | Dialect::Sqlite => "",
    };
    let mut statements = vec![
        format!(
            "CREATE TABLE IF NOT EXISTS godwit_meta (\n  name VARCHAR(64) NOT NULL PRIMARY KEY,\n  value VARCHAR(255) NOT NULL\n){engine}"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS godwit_runs (
  run VARCHAR(191) NOT NULL PRIMARY KEY,
  state VARCHAR(16) NOT NULL,
  plan_text {long_text} NOT NULL,
  created_ms BIGINT NOT NULL,
  started_ms BIGINT,
  finished_ms BIGINT,
  error {long_text}
){engine}"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS godwit_steps (
  run VARCHAR(191) NOT NULL,
  step VARCHAR(191) NOT NULL,
  position INT NOT NULL,
  definition {long_text} NOT NULL,
  state VARCHAR(16) NOT NULL,
  initialized INT NOT NULL,
  key_kind VARCHAR(16),
  upper_key TEXT,
  cursor_key TEXT,
  next_batch BIGINT NOT NULL,
  exhausted INT NOT NULL,
  rows_total BIGINT,
  started_ms BIGINT,
  finished_ms BIGINT,
  error {long_text},
  PRIMARY KEY (run, step)
){engine}"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS godwit_batches (
  run VARCHAR(191) NOT NULL,
  step VARCHAR(191) NOT NULL,
  batch BIGINT NOT NULL,
  start_key TEXT,
  end_key TEXT,
  n_rows BIGINT NOT NULL,
  state VARCHAR(16) NOT NULL,
  token VARCHAR(64),
  worker VARCHAR(255),
  lease_until_ms BIGINT,
  attempts INT NOT NULL,
  claimed_ms BIGINT,
  finished_ms BIGINT,
  duration_ms BIGINT,
  rows_affected BIGINT,
  error_code VARCHAR(32),
  error {long_text},
  PRIMARY KEY (run, step, batch){batches_index}
){engine}"
        ),
    ];
    if dialect != Dialect::MySql {
        statements.push(
            "CREATE INDEX IF NOT EXISTS godwit_batches_open ON godwit_batches (run, step, state)"
                .to_string(),
        );
    }
    statements
}

/// Creates the state tables when missing and checks their version.
///
/// Two processes may do this at once; PostgreSQL can then report a duplicate catalog entry for
/// `CREATE TABLE IF NOT EXISTS`, so a failure is retried once after the other has finished.
pub(crate) async fn ensure(conn: &mut dyn Conn) -> Result<()> {
    match try_ensure(conn).await {
        Ok(()) => Ok(()),
        Err(first) if first.kind() == godwit_driver::ErrorKind::Permanent => {
            try_ensure(conn).await.map_err(|_| first)
        }
        Err(e) => Err(e),
    }
}

async fn try_ensure(conn: &mut dyn Conn) -> Result<()> {
    let dialect = conn.dialect();
    // Every statement, every time: a process killed half-way through creating the tables, or
    // racing another one, must not leave some of them missing for good.
    for statement in ddl(dialect) {
        conn.execute_unprepared(&statement).await?;
    }
    let insert = match dialect {
        Dialect::MySql => "INSERT IGNORE INTO godwit_meta (name, value) VALUES ('schema_version', ?)",
        Dialect::Postgres => {
            "INSERT INTO godwit_meta (name, value) VALUES ('schema_version', $1) ON CONFLICT DO NOTHING"
        }
        Dialect::Sqlite => {
            "INSERT INTO godwit_meta (name, value) VALUES ('schema_version', ?) ON CONFLICT DO NOTHING"
        }
    };
    conn.execute(insert, &[Value::Text(SCHEMA_VERSION.to_string())])
        .await?;
    check_version(conn).await
}

/// Refuses state tables written by a newer godwit. Reads only.
pub(crate) async fn check_version(conn: &mut dyn Conn) -> Result<()> {
    let rows = conn
        .query(
            "SELECT value FROM godwit_meta WHERE name = 'schema_version'",
            &[],
        )
        .await?;
    let found = rows
        .first()
        .and_then(|r| r.get(0).as_i64())
        .unwrap_or_default();
    if found > SCHEMA_VERSION {
        return Err(Error::config(format!(
            "the godwit_* state tables are version {found}, newer than this godwit understands ({SCHEMA_VERSION}); use a newer godwit"
        )));
    }
    Ok(())
}
