use godwit_driver::{ConnectOptions, DbUrl};
use godwit_plan::Plan;
use godwit_state::{RunStatus, StateStore};

/// Reads the progress of the plan's run from its state database, without joining the run.
/// `Ok(None)` when no such run is stored.
///
/// # Errors
/// When the state database cannot be reached.
pub async fn status(plan: &Plan) -> Result<Option<RunStatus>, godwit_driver::Error> {
    let url = DbUrl::new(
        plan.state_database
            .clone()
            .unwrap_or_else(|| plan.database.clone()),
    );
    let mut conn = godwit_db::connect(&url, &ConnectOptions::default()).await?;
    // Reading must not create the state tables in someone's database.
    if conn.table_info("godwit_runs").await?.is_none() {
        return Ok(None);
    }
    let store = StateStore::open_reader(&url, conn).await?;
    store.status(&plan.name).await
}
