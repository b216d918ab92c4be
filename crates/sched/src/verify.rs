//! `godwit verify` as a command: the comparing itself is `godwit_batch::verify`.

use godwit_plan::Plan;

use crate::{Error, StepCheck};

/// Compares every copy step of `plan`'s source with its target. Steps that are not copies
/// are left out.
///
/// # Errors
/// When a database cannot be reached or read, or a step cannot be verified (its target has
/// no column named like the source key).
pub async fn verify(plan: &Plan) -> Result<Vec<StepCheck>, Error> {
    godwit_batch::verify(plan).await.map_err(Error::from)
}
