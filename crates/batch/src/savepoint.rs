//! Savepoints inside a batch's transaction, so that a write the database refuses because of
//! one row (`Error::refuses_row`) can be undone alone and its rows written one at a time:
//! with `on_row_error = "skip"` the rows it still refuses become dead letters and the others
//! are written. An optimistic write (`transform/optimistic.rs`) runs in one too, undone when
//! it finds a row changed since it was read.

use godwit_driver::{Conn, Error};

use crate::error::BatchError;

/// Around a statement of several rows.
pub(crate) const ROWS: &str = "godwit_rows";
/// Around one row's statement.
pub(crate) const ROW: &str = "godwit_row";
/// Around an optimistic write, undone when it finds a row changed since it was read.
pub(crate) const CHECKED: &str = "godwit_checked";

/// Opens savepoint `name`.
pub(crate) async fn open(conn: &mut dyn Conn, name: &str) -> Result<(), Error> {
    conn.execute_unprepared(&format!("SAVEPOINT {name}"))
        .await
        .map(drop)
}

/// Keeps what was done since savepoint `name` and forgets the savepoint.
pub(crate) async fn keep(conn: &mut dyn Conn, name: &str) -> Result<(), Error> {
    conn.execute_unprepared(&format!("RELEASE SAVEPOINT {name}"))
        .await
        .map(drop)
}

/// Undoes what was done since savepoint `name` (which ends a PostgreSQL transaction's failed
/// state) and forgets the savepoint.
pub(crate) async fn undo(conn: &mut dyn Conn, name: &str) -> Result<(), Error> {
    conn.execute_unprepared(&format!("ROLLBACK TO SAVEPOINT {name}"))
        .await?;
    keep(conn, name).await
}

/// A write of several rows in one statement, for [`each_refused_row`].
pub(crate) trait Write<R> {
    /// Writes `rows` in the open transaction on `conn`; returns the rows written.
    async fn write(&mut self, conn: &mut dyn Conn, rows: &[R]) -> Result<u64, Error>;

    /// A row the database refused even alone: a dead letter, or the batch's error.
    fn refused(&mut self, row: &R, error: Error) -> Result<(), BatchError>;
}

/// Writes `rows` in one go inside a savepoint; when the database refuses a row, undoes it and
/// writes the rows one at a time, each in its own savepoint, handing each row the database
/// still refuses to `Write::refused`. Returns the rows written.
pub(crate) async fn each_refused_row<R>(
    conn: &mut dyn Conn,
    rows: &[R],
    writer: &mut impl Write<R>,
) -> Result<u64, BatchError> {
    open(conn, ROWS).await?;
    match writer.write(conn, rows).await {
        Ok(written) => {
            keep(conn, ROWS).await?;
            return Ok(written);
        }
        Err(e) if e.refuses_row() => undo(conn, ROWS).await?,
        Err(e) => return Err(e.into()),
    }
    let mut written = 0;
    for row in rows {
        open(conn, ROW).await?;
        match writer.write(conn, std::slice::from_ref(row)).await {
            Ok(n) => {
                keep(conn, ROW).await?;
                written += n;
            }
            Err(e) if e.refuses_row() => {
                undo(conn, ROW).await?;
                writer.refused(row, e)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(written)
}
