use godwit_driver::{ConnectOptions, DbUrl};
use godwit_plan::Plan;
use godwit_state::{Control, RunState, RunStatus, StateStore};

fn state_url(plan: &Plan) -> DbUrl {
    DbUrl::new(
        plan.state_database
            .clone()
            .unwrap_or_else(|| plan.database.clone()),
    )
}

/// Pauses, resumes, cancels or retries the plan's run through its state database, for every
/// worker at once. Returns the run's state before, or `None` when no run of the plan is stored.
///
/// # Errors
/// When the state database cannot be reached.
pub async fn control(
    plan: &Plan,
    action: Control,
) -> Result<Option<RunState>, godwit_driver::Error> {
    let url = state_url(plan);
    let mut conn = godwit_db::connect(&url, &ConnectOptions::default()).await?;
    if conn.table_info("godwit_runs").await?.is_none() {
        return Ok(None);
    }
    let store = StateStore::open(&url, conn).await?;
    store.control(&plan.name, action).await
}

/// Reads the progress of the plan's run from its state database, without joining the run.
/// `Ok(None)` when no such run is stored.
///
/// # Errors
/// When the state database cannot be reached.
pub async fn status(plan: &Plan) -> Result<Option<RunStatus>, godwit_driver::Error> {
    let url = state_url(plan);
    let mut conn = godwit_db::connect(&url, &ConnectOptions::default()).await?;
    // Reading must not create the state tables in someone's database.
    if conn.table_info("godwit_runs").await?.is_none() {
        return Ok(None);
    }
    let store = StateStore::open_reader(&url, conn).await?;
    store.status(&plan.name).await
}
