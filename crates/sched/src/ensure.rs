//! A step's post-conditions (`ensure`): asked on the plan's database once every batch of the
//! step is done, before the step is marked done, so that a crash in between asks them again.

use godwit_check::ensure::ask;

use crate::ctx::StepCtx;
use crate::failure::{Failure, FailureKind};
use crate::retry::with_retries;

/// Asks each of the step's `ensure` queries in turn; the first that does not hold (or cannot
/// be asked) is the step's failure, with what it returned or the database's error.
pub(crate) async fn ensure_holds(ctx: &StepCtx) -> Result<(), Failure> {
    let step = ctx.step();
    let run = ctx.run();
    for (i, ensure) in step.ensure.iter().enumerate() {
        let index = i + 1;
        let answer = with_retries(|| async {
            let mut conn = run.pool().take().await?;
            let answer = ask(conn.as_mut(), ensure).await;
            run.pool().give(conn);
            answer
        })
        .await;
        match answer {
            Ok(answer) if answer.holds => {
                tracing::info!(step = ctx.name(), ensure = index, returned = %answer.shown, "ensure holds");
            }
            Ok(answer) => {
                let message = answer.failure(ctx.name(), index, ensure);
                return Err(Failure::new(FailureKind::Ensure, message));
            }
            Err(e) => {
                let context = format!(
                    "step {:?}: ensure {index} (line {}) could not be asked",
                    ctx.name(),
                    ensure.location.line
                );
                return Err(Failure::from_error(FailureKind::Ensure, context, &e));
            }
        }
    }
    Ok(())
}
