//! The latency guard (`max_latency_increase`, `probe_query`): what it can probe. A run learns
//! the probe's idle timing when it starts; `check` runs a `probe_query` once, so that a
//! mistake in it shows before the run.

use std::time::Duration;

use godwit_driver::Conn;
use godwit_plan::{Plan, StepKind};

use crate::judgement::{Depth, Judgement};

/// How long `check` waits for the probe query.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Reports a guard with nothing to probe (no `probe_query`, and no step changing a table in
/// place for the default probe to read), and at [`Depth::Full`] a `probe_query` that fails.
pub(crate) async fn guard_ok(
    judgement: &mut Judgement,
    plan: &Plan,
    conn: &mut dyn Conn,
    depth: Depth,
) {
    if plan.max_latency_increase.is_none() {
        return;
    }
    let Some(probe) = &plan.probe_query else {
        let in_place = plan.steps.iter().any(|s| {
            matches!(
                s.kind,
                StepKind::Chunked { .. } | StepKind::Transform { .. }
            )
        });
        if !in_place {
            judgement.plan_problem(
                plan,
                "no-probe",
                ("max_latency_increase", None),
                "the latency guard's default probe reads a row of a table that a step changes in place, and no step does here; write a `probe_query` that stands for the application's queries",
            );
        }
        return;
    };
    if depth != Depth::Full {
        return;
    }
    let asked = tokio::time::timeout(PROBE_TIMEOUT, conn.execute(probe, &[])).await;
    let error = match asked {
        Ok(Ok(_)) => return,
        Ok(Err(e)) => e,
        Err(_) => godwit_driver::Error::new(
            godwit_driver::ErrorKind::Timeout,
            None,
            format!("no answer within {}s", PROBE_TIMEOUT.as_secs()),
        ),
    };
    judgement.plan_database_problem(
        plan,
        ("probe_query", None),
        "the latency guard's probe_query fails",
        error,
    );
}
