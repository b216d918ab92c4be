//! The run generation fence: what makes a process whose run was restarted (`--restart`) apply
//! nothing more.
//!
//! A run has a generation, a random id that a restart replaces. Every claim and every done,
//! failure and release record of a process carries the generation it began ([`fence`] and
//! [`fence_params`]), so that it matches nothing once the run was restarted; a write that
//! matched nothing asks [`ensure_generation`] whether the run is gone, and fails with
//! [`RESTARTED`] when it is.

use godwit_driver::{Conn, Error, ErrorKind, Result, Value};

use crate::{get_text, sql, text, RESTARTED};

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
    let d = conn.dialect();
    let rows = conn
        .query(
            &sql(d, "SELECT generation FROM godwit_runs WHERE run = ?"),
            &[text(run)],
        )
        .await?;
    if rows.first().and_then(|r| get_text(r.get(0))).as_deref() == Some(generation) {
        Ok(())
    } else {
        Err(restarted(run))
    }
}
