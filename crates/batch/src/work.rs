//! What one batch of a step does to rows: the one interface the scheduler calls for every kind
//! of step.
//!
//! A batch runs in two parts around the transaction the scheduler opens: [`Work::start`] does
//! what must come before it (a statement that refuses transactions, a copy's first read from
//! its source, an optimistic transform's read and transform), then [`Work::write`] writes in
//! the open transaction and says what was written and what was set aside. The scheduler then
//! records the batch and commits.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use godwit_driver::{rewrite_params, Conn, DbUrl, Dialect, Error, KeyKind, Result, Value};
use godwit_plan::{Step, StepKind};

use crate::copy::{CopyStart, CopyStep};
use crate::error::BatchError;
use crate::refused::DeadLetter;
use crate::script::build_transform;
use crate::transform::{ReadAhead, RowChange, RowStep};
use crate::walk::KeyWalk;

/// A step's batches, prepared once per process.
pub struct Work {
    what: What,
    /// How the step's key is walked (`None` for a one-off step).
    walk: Option<KeyWalk>,
    /// The database whose key is walked: a copy's source, else the plan's database.
    walk_url: DbUrl,
    /// The key's kind, fixed when the step's walk starts.
    key_kind: OnceLock<KeyKind>,
}

/// What each batch of a step does.
enum What {
    /// A one-off statement; `outside_tx` when it refuses a transaction.
    Once { sql: String, outside_tx: bool },
    /// A chunked step's statement, and for each positional parameter 0 for `:start` and 1
    /// for `:end`.
    Sql { sql: String, order: Vec<usize> },
    /// Reads the rows, transforms them and writes back the changed ones.
    Rows(Box<RowStep>),
    /// Reads the rows from the source, transforms them and inserts them into the target.
    Copy(Box<CopyStep>),
}

/// A batch between [`Work::start`] and [`Work::write`].
pub struct Started(Begun);

enum Begun {
    /// A one-off statement already ran (outside a transaction), touching this many rows.
    Ran(u64),
    /// Nothing ran yet; the batch's key range, if it has one.
    Range(Option<(Value, Value)>),
    /// A copy read its first slice.
    Copy(CopyStart, Value),
    /// A transform step read its rows without locks and transformed them.
    Ahead(Box<ReadAhead>),
}

/// What a batch wrote.
#[derive(Debug, Default)]
pub struct Written {
    /// Rows the batch's statements changed or inserted.
    pub rows: u64,
    /// Rows set aside (`on_row_error = "skip"`), one per key.
    pub refused: Vec<DeadLetter>,
    /// Rows an optimistic transform found changed since it read them, and transformed again
    /// under lock.
    pub rows_redone: u64,
    /// A transform step's first few changed rows, before and after, as examples.
    pub examples: Vec<RowChange>,
}

impl Work {
    /// Prepares `step` for this process: rewrites its parameters for `dialect`, compiles its
    /// transform, and fixes where its key is walked.
    pub fn for_step(
        step: &Step,
        plan_database: &DbUrl,
        dialect: Dialect,
        plan_path: &Path,
    ) -> Result<Work> {
        let mut walk_url = plan_database.clone();
        let mut walk_dialect = dialect;
        let named = |e: Error| Error::permanent(format!("step {:?}: {e}", step.name));
        let what = match &step.kind {
            StepKind::Once { sql } => What::Once {
                outside_tx: needs_autocommit(sql, dialect),
                sql: sql.clone(),
            },
            StepKind::Chunked { sql, .. } => {
                let rewritten = rewrite_params(sql, dialect, &["start", "end"]);
                What::Sql {
                    sql: rewritten.sql,
                    order: rewritten.order,
                }
            }
            StepKind::Transform { script, .. } => {
                let transform =
                    build_transform(script, &step.settings, plan_path).map_err(named)?;
                let rows = RowStep::for_step(step, transform)
                    .ok_or_else(|| Error::permanent("a transform step without a transform"))?;
                What::Rows(Box::new(rows))
            }
            StepKind::Copy(_) => {
                // A copy walks its source.
                let source_url = CopyStep::source_url(step, plan_database);
                walk_dialect = source_url.dialect().unwrap_or(dialect);
                walk_url = source_url.clone();
                let copy = CopyStep::for_step(step, source_url, walk_dialect, plan_path)
                    .map_err(named)?
                    .ok_or_else(|| Error::permanent("a copy step without a copy"))?;
                What::Copy(Box::new(copy))
            }
        };
        let walk =
            (step.kind.walked()).map(|w| KeyWalk::new(walk_dialect, w.table, w.key, w.filter));
        Ok(Work {
            what,
            walk,
            walk_url,
            key_kind: OnceLock::new(),
        })
    }

    /// How the step's key is walked; `None` for a one-off step, which is one batch.
    pub fn walk(&self) -> Option<&KeyWalk> {
        self.walk.as_ref()
    }

    /// The database whose key is walked.
    pub fn walk_url(&self) -> &DbUrl {
        &self.walk_url
    }

    /// Whether the step is a one-off statement that runs outside a transaction (it refuses
    /// one, or the database commits it on its own): [`Work::start`] runs it.
    pub fn runs_outside_transaction(&self) -> bool {
        matches!(
            self.what,
            What::Once {
                outside_tx: true,
                ..
            }
        )
    }

    /// The kind of the step's key, once its walk started.
    pub fn key_kind(&self) -> Option<KeyKind> {
        self.key_kind.get().copied()
    }

    /// Fixes the kind of the step's key (as the state tables recorded it).
    pub fn set_key_kind(&self, kind: KeyKind) {
        let _ = self.key_kind.set(kind);
    }

    /// Does what comes before the batch's transaction: runs a statement that refuses one,
    /// reads a copy's first slice, or reads an optimistic transform step's rows without locks
    /// and transforms them. `start` and `end` are the batch's keys as the state tables hold
    /// them (`None` for a one-off step).
    ///
    /// # Errors
    /// Which part failed: the database, the transform (a copy's transform runs here on the
    /// first slice, an optimistic transform on the batch), or a row the step cannot write.
    pub async fn start(
        &self,
        conn: &mut dyn Conn,
        start: Option<&str>,
        end: Option<&str>,
    ) -> Result<Started, BatchError> {
        let range = match (start, end) {
            (Some(start), Some(end)) => {
                let kind = self.key_kind().ok_or_else(|| {
                    Error::permanent("the step's key kind is unknown; its walk was not started")
                })?;
                Some((kind.decode(start)?, kind.decode(end)?))
            }
            _ => None,
        };
        let begun = match (&self.what, range) {
            // CREATE INDEX CONCURRENTLY and VACUUM refuse transactions: run, then record.
            // `check` tells users such statements must be idempotent.
            (What::Once { sql, outside_tx }, _) if *outside_tx => {
                clear_interrupted_build(conn, sql).await?;
                Begun::Ran(conn.execute_unprepared(sql).await?)
            }
            (What::Copy(copy), Some((start, end))) => {
                Begun::Copy(copy.start(conn, start, &end).await?, end)
            }
            (What::Rows(step), Some((start, end))) => {
                match step.read_ahead(conn, &start, &end).await? {
                    Some(ahead) => Begun::Ahead(Box::new(ahead)),
                    None => Begun::Range(Some((start, end))),
                }
            }
            (_, range) => Begun::Range(range),
        };
        Ok(Started(begun))
    }

    /// Writes the batch in the transaction open on `conn`.
    ///
    /// # Errors
    /// As [`Work::start`]; the transaction is left open for the caller to roll back.
    pub async fn write(
        &self,
        conn: &mut dyn Conn,
        started: Started,
    ) -> Result<Written, BatchError> {
        let missing = || Error::permanent("a chunked batch has no key range in the state tables");
        let mut rows_redone = 0;
        let mut examples = Vec::new();
        let (rows, mut refused) = match (&self.what, started.0) {
            (_, Begun::Ran(rows)) => (rows, Vec::new()),
            (What::Once { sql, .. }, Begun::Range(_)) => {
                (conn.execute_unprepared(sql).await?, Vec::new())
            }
            (What::Sql { sql, order }, Begun::Range(range)) => {
                let (start, end) = range.ok_or_else(missing)?;
                let params: Vec<Value> = order
                    .iter()
                    .map(|&i| if i == 0 { start.clone() } else { end.clone() })
                    .collect();
                (conn.execute(sql, &params).await?, Vec::new())
            }
            (What::Rows(step), Begun::Range(range)) => {
                let (start, end) = range.ok_or_else(missing)?;
                let done = step.run(conn, start, end).await?;
                examples = done.examples;
                (done.rows_written, done.dead_letters)
            }
            (What::Rows(step), Begun::Ahead(ahead)) => {
                let done = step.write_ahead(conn, *ahead).await?;
                rows_redone = done.rows_redone;
                examples = done.examples;
                (done.rows_written, done.dead_letters)
            }
            (What::Copy(copy), Begun::Copy(first, end)) => {
                copy.write_batch(conn, first, end).await?
            }
            (What::Copy(_), Begun::Range(_)) => return Err(missing().into()),
            (_, Begun::Copy(..)) => {
                return Err(Error::permanent("a copy's read reached another step").into())
            }
            (_, Begun::Ahead(_)) => {
                return Err(Error::permanent("a transform's read reached another step").into())
            }
        };
        // One letter per key: the rows a fan-out made of one source row are refused together.
        let mut seen = std::collections::HashSet::new();
        refused.retain(|l| seen.insert(l.key.clone()));
        Ok(Written {
            rows,
            refused,
            rows_redone,
            examples,
        })
    }
}

/// How often a one-off build waits to see whether another session's build of its index ended.
const BUILD_POLL: Duration = Duration::from_secs(1);

/// Before a one-off statement that builds an index outside a transaction runs (again: the step
/// is not recorded done): drops the INVALID index an interrupted earlier run of it left, which
/// `IF NOT EXISTS` would skip (recording the step done with an index no query uses) and a
/// statement without it would fail on. An invalid index holds nothing a query could use, so
/// dropping it loses nothing. While another session still builds it (a process killed while
/// its server session went on), this waits for that build to end instead: it may yet make
/// the index valid, and then the statement finds it there.
async fn clear_interrupted_build(conn: &mut dyn Conn, sql: &str) -> Result<()> {
    let mut waiting = None;
    loop {
        let Some(index) = conn.invalid_index(sql).await? else {
            return Ok(());
        };
        let Some(session) = index.building else {
            tracing::warn!(
                index = %format!("{}.{}", index.schema, index.name),
                table = %index.table,
                "an interrupted build left this index invalid: dropping it (DROP INDEX CONCURRENTLY) and building it again"
            );
            return conn.drop_invalid_index(&index).await;
        };
        if waiting != Some(session) {
            tracing::warn!(
                index = %format!("{}.{}", index.schema, index.name),
                session,
                "the index is invalid while another session still builds it; waiting for that build to end"
            );
            waiting = Some(session);
        }
        tokio::time::sleep(BUILD_POLL).await;
    }
}

/// Whether `sql` cannot run atomically inside a transaction: PostgreSQL and SQLite refuse some
/// statements there (`CREATE INDEX CONCURRENTLY`, `VACUUM`), MySQL commits DDL on its own. A
/// one-off step runs such a statement outside one, so it is not atomic with its progress
/// record and must be idempotent.
pub fn needs_autocommit(sql: &str, dialect: Dialect) -> bool {
    godwit_db::forms(dialect).is_some_and(|forms| forms.needs_autocommit(sql))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_statements_that_refuse_transactions() {
        let pg = Dialect::Postgres;
        assert!(needs_autocommit("CREATE INDEX CONCURRENTLY i ON t (a)", pg));
        assert!(needs_autocommit(
            "create unique index concurrently i on t (a)",
            pg
        ));
        assert!(needs_autocommit("VACUUM ANALYZE t", pg));
        assert!(!needs_autocommit("CREATE INDEX i ON t (a)", pg));
        assert!(needs_autocommit("VACUUM", Dialect::Sqlite));
        assert!(!needs_autocommit("UPDATE t SET a = 1", Dialect::MySql));
        assert!(needs_autocommit(
            "alter table t add column c int",
            Dialect::MySql
        ));
    }
}
