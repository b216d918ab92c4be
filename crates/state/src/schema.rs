//! The `godwit_*` tables and their version.
//!
//! Times are integer milliseconds since the Unix epoch taken from the state database's own clock
//! ([`now_ms`]), so that leases compare one clock even when workers' clocks disagree.

use godwit_driver::{number_placeholders, Conn, Dialect, Error, Result, Value};

/// The version of the state tables this build writes. A later release that changes them
/// migrates from this number; an older release refuses newer tables.
pub const SCHEMA_VERSION: i64 = 8;

/// SQL for "now" in milliseconds on the state database's clock.
pub(crate) fn now_ms(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Postgres => "(extract(epoch from clock_timestamp()) * 1000)::bigint",
        Dialect::MySql => "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)",
        Dialect::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
    }
}

/// The `CREATE` statements of the state tables, in the order they run. The schema is
/// versioned: their text changes only with [`SCHEMA_VERSION`] and a step in [`migrate`].
fn ddl(dialect: Dialect) -> Vec<String> {
    let forms = TableForms::of(dialect);
    let mut statements = vec![
        meta_table(&forms),
        runs_table(&forms),
        steps_table(&forms),
        batches_table(&forms),
        workers_table(&forms),
        dead_letters_table(&forms),
        estimates_table(&forms),
    ];
    if !forms.inline_indexes {
        statements.extend(separate_indexes());
    }
    statements
}

/// What differs between the backends in a `CREATE TABLE`.
struct TableForms {
    /// The type of a long text: TEXT, MEDIUMTEXT on MySQL (where TEXT stops at 64 KiB).
    long_text: &'static str,
    /// The table options after the closing parenthesis.
    engine: &'static str,
    /// MySQL declares indexes inside `CREATE TABLE`; the others after it
    /// ([`separate_indexes`]).
    inline_indexes: bool,
}

impl TableForms {
    // Names are VARCHAR(191) so that the composite primary keys fit MySQL's index limit in
    // utf8mb4.
    fn of(dialect: Dialect) -> TableForms {
        match dialect {
            Dialect::MySql => TableForms {
                long_text: "MEDIUMTEXT",
                engine: " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
                inline_indexes: true,
            },
            Dialect::Postgres | Dialect::Sqlite => TableForms {
                long_text: "TEXT",
                engine: "",
                inline_indexes: false,
            },
        }
    }

    /// `index` as a line of the `CREATE TABLE`, where this backend declares it there.
    fn inline_index(&self, index: &'static str) -> &'static str {
        if self.inline_indexes {
            index
        } else {
            ""
        }
    }
}

fn meta_table(forms: &TableForms) -> String {
    let TableForms { engine, .. } = forms;
    format!(
        "CREATE TABLE IF NOT EXISTS godwit_meta (\n  name VARCHAR(64) NOT NULL PRIMARY KEY,\n  value VARCHAR(255) NOT NULL\n){engine}"
    )
}

fn runs_table(forms: &TableForms) -> String {
    let TableForms {
        long_text, engine, ..
    } = forms;
    format!(
        "CREATE TABLE IF NOT EXISTS godwit_runs (
  run VARCHAR(191) NOT NULL PRIMARY KEY,
  state VARCHAR(16) NOT NULL,
  plan_text {long_text} NOT NULL,
  created_ms BIGINT NOT NULL,
  started_ms BIGINT,
  finished_ms BIGINT,
  error {long_text},
  generation VARCHAR(64),
  set_concurrency BIGINT,
  set_batch_size BIGINT,
  set_max_rows_per_second DOUBLE PRECISION,
  probe_baseline {long_text},
  throttle_notified_ms BIGINT
){engine}"
    )
}

fn steps_table(forms: &TableForms) -> String {
    let TableForms {
        long_text, engine, ..
    } = forms;
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
  batch_size BIGINT,
  started_ms BIGINT,
  finished_ms BIGINT,
  error {long_text},
  throttled {long_text},
  PRIMARY KEY (run, step)
){engine}"
    )
}

fn batches_table(forms: &TableForms) -> String {
    let TableForms {
        long_text, engine, ..
    } = forms;
    let batches_index = forms.inline_index(",\n  INDEX godwit_batches_open (run, step, state)");
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
  rows_skipped BIGINT,
  error_code VARCHAR(32),
  error {long_text},
  PRIMARY KEY (run, step, batch){batches_index}
){engine}"
    )
}

fn workers_table(forms: &TableForms) -> String {
    let TableForms { engine, .. } = forms;
    format!(
        "CREATE TABLE IF NOT EXISTS godwit_workers (
  worker VARCHAR(191) NOT NULL PRIMARY KEY,
  run VARCHAR(191) NOT NULL,
  host VARCHAR(255) NOT NULL,
  pid BIGINT NOT NULL,
  version VARCHAR(64) NOT NULL,
  started_ms BIGINT NOT NULL,
  heartbeat_ms BIGINT NOT NULL,
  batches BIGINT NOT NULL,
  state VARCHAR(16) NOT NULL
){engine}"
    )
}

// A row's key can be longer than an index entry may be (MySQL: 3072 bytes, PostgreSQL: about
// 2700), so the primary key holds the SHA-256 of the key and the key itself is compared on
// every write: a digest clash fails loudly rather than replacing another key's letter. The
// second index is the listing's order, so a limit reads no more than it returns.
fn dead_letters_table(forms: &TableForms) -> String {
    let TableForms {
        long_text, engine, ..
    } = forms;
    let letters_index = forms.inline_index(
        ",\n  INDEX godwit_dead_letters_order (run, step, batch, created_ms, seq, key_digest)",
    );
    format!(
        "CREATE TABLE IF NOT EXISTS godwit_dead_letters (
  run VARCHAR(191) NOT NULL,
  step VARCHAR(191) NOT NULL,
  key_digest VARCHAR(64) NOT NULL,
  key_text TEXT NOT NULL,
  batch BIGINT NOT NULL,
  seq BIGINT NOT NULL,
  error {long_text} NOT NULL,
  row_json {long_text} NOT NULL,
  created_ms BIGINT NOT NULL,
  PRIMARY KEY (run, step, key_digest){letters_index}
){engine}"
    )
}

// One row per step of each `godwit estimate`, and one (position 0, no step) for the whole
// plan, whose projection is not the sum of its steps' (steps run side by side). The estimate's
// id groups its rows; `godwit report` reads the last one recorded before the run started.
fn estimates_table(forms: &TableForms) -> String {
    let TableForms { engine, .. } = forms;
    format!(
        "CREATE TABLE IF NOT EXISTS godwit_estimates (
  run VARCHAR(191) NOT NULL,
  estimate VARCHAR(64) NOT NULL,
  position INT NOT NULL,
  step VARCHAR(191),
  recorded_ms BIGINT NOT NULL,
  projected_seconds DOUBLE PRECISION NOT NULL,
  low_seconds DOUBLE PRECISION NOT NULL,
  high_seconds DOUBLE PRECISION NOT NULL,
  rows_estimate BIGINT,
  sampled_batches BIGINT,
  PRIMARY KEY (run, estimate, position)
){engine}"
    )
}

/// The indexes PostgreSQL and SQLite create apart from their tables (MySQL's are inline).
fn separate_indexes() -> [String; 2] {
    [
        "CREATE INDEX IF NOT EXISTS godwit_batches_open ON godwit_batches (run, step, state)"
            .to_string(),
        "CREATE INDEX IF NOT EXISTS godwit_dead_letters_order \
         ON godwit_dead_letters (run, step, batch, created_ms, seq, key_digest)"
            .to_string(),
    ]
}

/// Creates the state tables when missing, migrates older ones and checks their version.
///
/// Processes that start together on a new state database (a fleet of pods) take turns under a
/// database lock: PostgreSQL's `CREATE TABLE IF NOT EXISTS` is not safe against a concurrent
/// one (it fails on a duplicate catalog entry); on SQLite a transaction does the same.
pub(crate) async fn ensure(conn: &mut dyn Conn) -> Result<()> {
    let (lock, unlock) = match conn.dialect() {
        Dialect::Postgres => (
            Some("SELECT pg_advisory_lock(7395611094235418881)"),
            "SELECT pg_advisory_unlock(7395611094235418881)",
        ),
        Dialect::MySql => (
            Some("SELECT GET_LOCK('godwit_schema', 120)"),
            "SELECT RELEASE_LOCK('godwit_schema')",
        ),
        Dialect::Sqlite => (None, ""),
    };
    let Some(lock) = lock else {
        // SQLite's DDL is transactional and `begin` takes the write lock: one at a time.
        conn.begin(Default::default()).await?;
        return match try_ensure(conn).await {
            Ok(()) => conn.commit().await,
            Err(e) => {
                let _ = conn.rollback().await;
                Err(e)
            }
        };
    };
    conn.execute(lock, &[]).await?;
    let result = try_ensure(conn).await;
    // A session lock: release it whatever happened, or the next process waits for a
    // connection that may live on in a pool.
    let released = conn.execute(unlock, &[]).await;
    result.and(released.map(drop))
}

async fn try_ensure(conn: &mut dyn Conn) -> Result<()> {
    let dialect = conn.dialect();
    // Every statement, every time: a process killed half-way through creating the tables, or
    // racing another one, must not leave some of them missing for good.
    for statement in ddl(dialect) {
        conn.execute_unprepared(&statement).await?;
    }
    // Refuse newer tables before changing anything in them.
    check_version(conn).await?;
    migrate(conn).await?;
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
    if check_version(conn).await? < SCHEMA_VERSION {
        // Older tables were brought up to this version above; say so.
        conn.execute(
            &number_placeholders(
                "UPDATE godwit_meta SET value = ? WHERE name = 'schema_version'",
                dialect,
            ),
            &[Value::Text(SCHEMA_VERSION.to_string())],
        )
        .await?;
    }
    Ok(())
}

/// Brings tables made by an older godwit up to this version. Each change tests for itself, so
/// that running it twice, or after a crash half-way, is harmless.
async fn migrate(conn: &mut dyn Conn) -> Result<()> {
    // Version 2: the step's batch size, for the queue view.
    let steps = conn.table_info("godwit_steps").await?;
    if steps.is_some_and(|t| t.column("batch_size").is_none()) {
        conn.execute_unprepared("ALTER TABLE godwit_steps ADD COLUMN batch_size BIGINT")
            .await?;
    }
    if !view_exists(conn, "godwit_queue").await? {
        conn.execute_unprepared(&queue_view(conn.dialect())).await?;
    }
    // Version 3: rows a transform skipped, per batch (`godwit_dead_letters` is new, made with
    // the other tables above).
    let batches = conn.table_info("godwit_batches").await?;
    if batches.is_some_and(|t| t.column("rows_skipped").is_none()) {
        conn.execute_unprepared("ALTER TABLE godwit_batches ADD COLUMN rows_skipped BIGINT")
            .await?;
    }
    // Version 4: the run's generation, which `--restart` replaces so that a process still
    // working on the run it replaced claims and records nothing more. Runs stored before have
    // one generation each until restarted.
    let runs = conn.table_info("godwit_runs").await?;
    if runs.is_some_and(|t| t.column("generation").is_none()) {
        conn.execute_unprepared("ALTER TABLE godwit_runs ADD COLUMN generation VARCHAR(64)")
            .await?;
    }
    // Read first: this runs at every open, and on MariaDB an UPDATE would wait on the row
    // locks of claims in progress even where it changes nothing.
    let ungenerated = conn
        .query(
            "SELECT 1 FROM godwit_runs WHERE generation IS NULL LIMIT 1",
            &[],
        )
        .await?;
    if !ungenerated.is_empty() {
        conn.execute_unprepared(
            "UPDATE godwit_runs SET generation = 'v3' WHERE generation IS NULL",
        )
        .await?;
    }
    migrate_pace(conn).await?;
    // Version 6: the latency guard's idle timings, learned once per run.
    let runs = conn.table_info("godwit_runs").await?;
    if runs.is_some_and(|t| t.column("probe_baseline").is_none()) {
        let long_text = TableForms::of(conn.dialect()).long_text;
        conn.execute_unprepared(&format!(
            "ALTER TABLE godwit_runs ADD COLUMN probe_baseline {long_text}"
        ))
        .await?;
    }
    // Version 7: when a process last sent the run's "throttled too long" notification, so
    // that a fleet sends one, not one per worker.
    let runs = conn.table_info("godwit_runs").await?;
    if runs.is_some_and(|t| t.column("throttle_notified_ms").is_none()) {
        conn.execute_unprepared("ALTER TABLE godwit_runs ADD COLUMN throttle_notified_ms BIGINT")
            .await?;
    }
    // Version 8: `godwit_estimates` is new, made with the other tables above; nothing older
    // changes.
    Ok(())
}

/// Version 5: the settings `godwit set` changes on a running run (NULL: as the plan says) and
/// why a step is throttled now (NULL: it is not). `godwit_steps.batch_size` becomes the step's
/// current batch size, which adaptive sizing changes; its stored value stays a valid start.
async fn migrate_pace(conn: &mut dyn Conn) -> Result<()> {
    let long_text = TableForms::of(conn.dialect()).long_text;
    let runs = conn.table_info("godwit_runs").await?;
    for (column, sql_type) in [
        ("set_concurrency", "BIGINT"),
        ("set_batch_size", "BIGINT"),
        ("set_max_rows_per_second", "DOUBLE PRECISION"),
    ] {
        if runs.as_ref().is_some_and(|t| t.column(column).is_none()) {
            conn.execute_unprepared(&format!(
                "ALTER TABLE godwit_runs ADD COLUMN {column} {sql_type}"
            ))
            .await?;
        }
    }
    let steps = conn.table_info("godwit_steps").await?;
    if steps.is_some_and(|t| t.column("throttled").is_none()) {
        conn.execute_unprepared(&format!(
            "ALTER TABLE godwit_steps ADD COLUMN throttled {long_text}"
        ))
        .await?;
    }
    Ok(())
}

async fn view_exists(conn: &mut dyn Conn, name: &str) -> Result<bool> {
    let query = match conn.dialect() {
        Dialect::Postgres => {
            "SELECT 1 FROM pg_views WHERE viewname = $1 AND schemaname = current_schema()"
        }
        Dialect::MySql => {
            "SELECT 1 FROM information_schema.views WHERE table_name = ? AND table_schema = DATABASE()"
        }
        Dialect::Sqlite => "SELECT 1 FROM sqlite_master WHERE type = 'view' AND name = ?",
    };
    Ok(!conn
        .query(query, &[Value::Text(name.to_string())])
        .await?
        .is_empty())
}

/// `godwit_queue`: per step of every run that workers should be working on, the batches left
/// to claim (`pending_batches`: released or retrying batches, plus the rest of the key range
/// divided by the batch size, at least 1 for a step whose walk has not started) and the
/// batches being worked on (`running_batches`). Paused, cancelled, failed and done runs count
/// nothing. Autoscalers (KEDA's PostgreSQL or MySQL scaler) sum it.
fn queue_view(dialect: Dialect) -> String {
    let ceil_div = |a: &str, b: &str| match dialect {
        Dialect::MySql => format!("(({a}) + ({b}) - 1) DIV ({b})"),
        Dialect::Postgres | Dialect::Sqlite => format!("(({a}) + ({b}) - 1) / ({b})"),
    };
    let int = int_type(dialect);
    let batch_size = "CASE WHEN COALESCE(s.batch_size, 0) > 0 THEN s.batch_size ELSE 1000 END";
    // PostgreSQL sums BIGINT into NUMERIC, whose division is not integer division.
    let claimed_rows = format!(
        "(SELECT CAST(COALESCE(SUM(b.n_rows), 0) AS {int}) FROM godwit_batches b \
         WHERE b.run = s.run AND b.step = s.step)"
    );
    let remaining = format!(
        "CASE WHEN s.rows_total - {claimed_rows} > 0 THEN s.rows_total - {claimed_rows} ELSE 0 END"
    );
    let unwalked = format!(
        "CASE WHEN s.exhausted = 1 THEN 0 \
         WHEN s.initialized = 0 OR s.rows_total IS NULL THEN 1 \
         ELSE {} END",
        ceil_div(&remaining, batch_size)
    );
    let count = |state: &str| {
        format!(
            "(SELECT COUNT(*) FROM godwit_batches b \
             WHERE b.run = s.run AND b.step = s.step AND b.state = '{state}')"
        )
    };
    format!(
        "CREATE VIEW godwit_queue AS \
         SELECT s.run AS run, s.step AS step, \
         CAST({unwalked} + {pending} AS {int}) AS pending_batches, \
         CAST({running} AS {int}) AS running_batches \
         FROM godwit_steps s JOIN godwit_runs r ON r.run = s.run \
         WHERE r.state IN ('pending', 'running') AND s.state IN ('pending', 'running')",
        pending = count("pending"),
        running = count("claimed"),
    )
}

/// The type an integer is cast to: a sum cast to it stays an integer rather than MySQL's
/// DECIMAL or PostgreSQL's NUMERIC.
pub(crate) fn int_type(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::MySql => "SIGNED",
        Dialect::Postgres | Dialect::Sqlite => "BIGINT",
    }
}

/// Whether the state tables are at `version` or later: `known` (the version when the store
/// was opened) when it is, else the version read again, since another process may have
/// migrated them since. Reads only.
pub(crate) async fn at_least(conn: &mut dyn Conn, known: i64, version: i64) -> Result<bool> {
    Ok(known >= version || check_version(conn).await? >= version)
}

/// Refuses state tables written by a newer godwit and returns their version. Reads only.
pub(crate) async fn check_version(conn: &mut dyn Conn) -> Result<i64> {
    let rows = conn
        .query(
            "SELECT value FROM godwit_meta WHERE name = 'schema_version'",
            &[],
        )
        .await?;
    // Read as text: MySQL returns this utf8mb4_bin VARCHAR as bytes, which are no integer.
    let found = rows
        .first()
        .and_then(|r| crate::get_text(r.get(0)))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_default();
    if found > SCHEMA_VERSION {
        return Err(Error::config(format!(
            "the godwit_* state tables are version {found}, newer than this godwit understands ({SCHEMA_VERSION}); use a newer godwit"
        )));
    }
    Ok(found)
}
