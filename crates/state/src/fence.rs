//! The run generation fence: what makes a process whose run was restarted (`--restart`) apply
//! nothing more.
//!
//! A run has a generation, a random id that a restart replaces. Every claim and every done,
//! failure and release record of a process carries the generation it began ([`fence`] and
//! [`fence_params`]), so that it matches nothing once the run was restarted; a write that
//! matched nothing asks [`ensure_generation`] whether the run is gone, and fails with
//! [`RESTARTED`] when it is. The run's row, with its generation, is read in one place
//! ([`read_run`]), with the settings `godwit set` changed when a worker asks for them.

use godwit_driver::{number_placeholders, Conn, Dialect, Error, ErrorKind, Result, Value};

use crate::{get_text, text, RunSettings, RunState, RESTARTED};

/// The error of a process whose run was restarted by another (see [`RESTARTED`]).
pub(crate) fn restarted(run: &str) -> Error {
    Error::new(
        ErrorKind::Permanent,
        Some(RESTARTED.to_string()),
        format!(
            "the run {run:?} was restarted by another process (--restart); this process stopped \
             and applied nothing of the old plan since"
        ),
    )
}

/// A condition limiting an UPDATE to rows of a run still of the generation this process
/// began, or nothing for a store that never began the run; its parameters come from
/// [`fence_params`], after the statement's others.
pub(crate) fn fence(fenced: bool) -> &'static str {
    if fenced {
        " AND EXISTS (SELECT 1 FROM godwit_runs g WHERE g.run = ? AND g.generation = ?)"
    } else {
        ""
    }
}

/// The parameters of [`fence`]: the run and the generation, or none for a store that never
/// began the run.
pub(crate) fn fence_params(run: &str, generation: Option<&str>) -> Vec<Value> {
    match generation {
        Some(generation) => vec![text(run), text(generation)],
        None => Vec::new(),
    }
}

/// Errs with [`RESTARTED`] when the run is no longer of `generation` (restarted, or its
/// progress forgotten); does nothing for `None`.
pub(crate) async fn ensure_generation(
    conn: &mut dyn Conn,
    run: &str,
    generation: Option<&str>,
) -> Result<()> {
    let Some(generation) = generation else {
        return Ok(());
    };
    if is_current(conn, run, generation, RunRead::Plain).await? {
        Ok(())
    } else {
        Err(restarted(run))
    }
}

/// Whether the run is stored and still of `generation`.
pub(crate) async fn is_current(
    conn: &mut dyn Conn,
    run: &str,
    generation: &str,
    read: RunRead,
) -> Result<bool> {
    let row = read_run(conn, run, read).await?;
    Ok(row.and_then(|r| r.generation).as_deref() == Some(generation))
}

/// How [`read_run`] reads the run's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunRead {
    /// A plain read.
    Plain,
    /// Inside a claim's transaction: on MySQL with a share lock, which a restart's delete of
    /// the row waits for (and the other way round). SQLite's transaction holds the write lock
    /// already.
    Locked,
    /// A plain read that takes the settings `godwit set` changed too (tables of version 5).
    Settings,
}

/// A run's row as the fence reads it.
pub(crate) struct RunRow {
    /// Where the run stands.
    pub(crate) state: Option<RunState>,
    /// The generation the run is of.
    pub(crate) generation: Option<String>,
    /// What `godwit set` changed; all `None` unless read with [`RunRead::Settings`].
    pub(crate) settings: RunSettings,
}

/// The run's state and generation (and settings, as `read` says); `None` when no such run is
/// stored.
pub(crate) async fn read_run(
    conn: &mut dyn Conn,
    run: &str,
    read: RunRead,
) -> Result<Option<RunRow>> {
    let d = conn.dialect();
    let q = match (read, d) {
        (RunRead::Locked, Dialect::MySql) => {
            "SELECT state, generation FROM godwit_runs WHERE run = ? LOCK IN SHARE MODE"
        }
        (RunRead::Settings, _) => {
            "SELECT state, generation, set_concurrency, set_batch_size, set_max_rows_per_second \
             FROM godwit_runs WHERE run = ?"
        }
        _ => "SELECT state, generation FROM godwit_runs WHERE run = ?",
    };
    let rows = conn.query(&number_placeholders(q, d), &[text(run)]).await?;
    Ok(rows.first().map(|row| RunRow {
        state: get_text(row.get(0)).map(|s| RunState::parse(&s)),
        generation: get_text(row.get(1)),
        // Past the end of a narrower read, `get` gives NULL: no setting.
        settings: RunSettings::read(row, 2),
    }))
}
